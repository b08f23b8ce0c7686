//! Portals: a statement bound to its parameters inside a transaction, whose rows are fetched a batch at a
//! time with Execute's row limit.
//!
//! A portal is named, so other queries may run between its fetches. It lives until its [`Portal`] handle is
//! dropped (a Close is then sent with the transaction's next portal call) or the transaction ends, whichever
//! comes first: PostgreSQL closes every portal at the end of the transaction that created it.
//!
//! A fetch whose future is dropped before its rows were read leaves those rows to be discarded by the next
//! call; as they cannot be fetched again, the portal then refuses further fetches ([`ErrorKind::Skipped`])
//! rather than silently going on after the gap.
//!
//! [`ErrorKind::Skipped`]: crate::ErrorKind::Skipped

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tracing::Instrument as _;

use crate::client::stream::{Bindable, RowStream};
use crate::client::telemetry::Work;
use crate::client::{encode_error, unexpected, work_of};
use crate::proto::statement::Column;
use crate::proto::{Backend, Flow};
use crate::{Client, Error, Param, Row, Statement, ToStatement, Transaction};

/// Portal names only need to be unique per session; a process-wide counter is simplest.
static NEXT_PORTAL: AtomicU64 = AtomicU64::new(1);

/// A statement bound to parameters inside a transaction, fetched with
/// [`Transaction::query_portal`]; see [`Transaction::bind`].
pub struct Portal {
    name: String,
    /// Closing a statement on the server closes the portals made from it: the handle keeps it open.
    statement: Statement,
    /// Set when an Execute is queued, cleared when its answer was read to the end. Still set at the next
    /// fetch means a fetch was dropped and its rows discarded.
    fetching: AtomicBool,
    closes: Weak<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for Portal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Portal")
            .field("name", &self.name)
            .field("columns", &self.statement.columns())
            .finish_non_exhaustive()
    }
}

impl Portal {
    /// The columns of the rows the portal returns.
    pub fn columns(&self) -> &[Column] {
        self.statement.columns()
    }
}

impl Drop for Portal {
    fn drop(&mut self) {
        // No await in a drop: the Close goes out with the transaction's next portal call. If the transaction
        // is gone, so is the portal.
        if let Some(queue) = self.closes.upgrade()
            && let Ok(mut names) = queue.lock()
        {
            names.push(std::mem::take(&mut self.name));
        }
    }
}

impl Transaction<'_> {
    /// Binds a statement to parameters as a portal, to fetch its rows a batch at a time with
    /// [`query_portal`](Self::query_portal). SQL text is prepared first.
    ///
    /// ```no_run
    /// # async fn demo(client: &mut wasi_pg_client::Client) -> Result<(), wasi_pg_client::Error> {
    /// let mut tx = client.transaction().await?;
    /// let portal = tx.bind("SELECT g FROM generate_series(1, 10000) g", &[]).await?;
    /// loop {
    ///     let batch = tx.query_portal(&portal, 1000).await?;
    ///     // ... use the rows; a batch shorter than asked for is the last one.
    ///     if batch.len() < 1000 {
    ///         break;
    ///     }
    /// }
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn bind<T>(&mut self, statement: &T, params: &[Param<'_>]) -> Result<Portal, Error>
    where
        T: ToStatement + ?Sized,
    {
        let traced = self.telemetry("bind", work_of(statement));
        traced.run(self.bind_portal(statement, params)).await
    }

    async fn bind_portal<T>(&mut self, statement: &T, params: &[Param<'_>]) -> Result<Portal, Error>
    where
        T: ToStatement + ?Sized,
    {
        let closes = Arc::downgrade(self.portal_closes());
        let client: &mut Client = self;
        let statement = Bindable::resolve(client, statement).await?;
        statement.check_params(params)?;
        client.prepare_to_send().await?;
        queue_portal_closes(client, &closes)?;
        let name = format!("wpc_p{}", NEXT_PORTAL.fetch_add(1, Ordering::Relaxed));
        let id =
            client
                .connection_mut()
                .protocol
                .queue_request(Flow::Extended(1), None, |buf| {
                    statement.write_bind(buf, &name, params)?;
                    frontend::sync(buf);
                    Ok(())
                })?;
        // The handle exists from the moment Bind is queued: if this future is dropped below, its drop still
        // closes the portal.
        let portal = Portal {
            name,
            statement: statement.statement,
            fetching: AtomicBool::new(false),
            closes,
        };
        let mut error = None;
        loop {
            let response = client.connection_mut().next_response(id).await;
            match client.connection_mut().check(response)? {
                Backend::Ready => break,
                Backend::Message(Message::ParseComplete | Message::BindComplete) => {}
                Backend::Error(db) => {
                    error.get_or_insert(Error::db(*db));
                }
                other => {
                    let e = unexpected(other, "Bind");
                    return client.connection_mut().check(Err(e));
                }
            }
        }
        match error {
            Some(e) => {
                client.forget_if_stale(&portal.statement, &e);
                Err(e)
            }
            None => Ok(portal),
        }
    }

    /// Fetches up to `max_rows` more rows of `portal` (all remaining rows if `max_rows` is 0). A batch shorter
    /// than `max_rows` (possibly empty) means the portal is exhausted.
    pub async fn query_portal(
        &mut self,
        portal: &Portal,
        max_rows: u32,
    ) -> Result<Vec<Row>, Error> {
        self.query_portal_raw(portal, max_rows)
            .await?
            .collect_rows()
            .await
    }

    /// Like [`query_portal`](Self::query_portal), returning the batch as a stream read as it is consumed.
    ///
    /// Read the stream until [`next`](RowStream::next) returns `Ok(None)`. Dropping it before that discards
    /// the rest of the batch with the connection's next call, and the portal then refuses further fetches
    /// ([`ErrorKind::Skipped`]), since the discarded rows cannot be fetched again.
    ///
    /// [`ErrorKind::Skipped`]: crate::ErrorKind::Skipped
    pub async fn query_portal_raw<'b>(
        &'b mut self,
        portal: &'b Portal,
        max_rows: u32,
    ) -> Result<RowStream<'b>, Error> {
        let closes = Arc::downgrade(self.portal_closes());
        // Refused before anything is sent: inside a transaction block, the server's "portal does not exist"
        // would fail the caller's transaction.
        if !Weak::ptr_eq(&closes, &portal.closes) {
            return Err(Error::config(
                "the portal belongs to another transaction (a portal ends with the transaction that bound it)",
            ));
        }
        if portal.fetching.load(Ordering::Acquire) {
            return Err(Error::skipped(
                "an earlier fetch from this portal was dropped before it finished: its rows were discarded",
            ));
        }
        let max_rows = i32::try_from(max_rows)
            .map_err(|_| Error::config(format!("max_rows {max_rows} is above {}", i32::MAX)))?;
        let client: &mut Client = self;
        let span = client.telemetry("fetch", Work::Other).span().clone();
        client.prepare_to_send().instrument(span.clone()).await?;
        queue_portal_closes(client, &closes)?;
        let columns = portal.statement.columns_arc();
        let id = client.connection_mut().protocol.queue_request(
            Flow::Extended(1),
            Some(columns.len()),
            |buf| {
                frontend::execute(&portal.name, max_rows, buf).map_err(encode_error)?;
                frontend::sync(buf);
                Ok(())
            },
        )?;
        // Set when the Execute is queued, never after an await: a future dropped from here on leaves it set.
        portal.fetching.store(true, Ordering::Release);
        // The stream reads the rows in the request's span.
        let _entered = span.enter();
        Ok(RowStream::new(client, id, columns, Some(&portal.fetching)))
    }
}

/// Queues Close for the portals whose handles were dropped. Their answers are discarded like those of an
/// abandoned request.
fn queue_portal_closes(
    client: &mut Client,
    closes: &Weak<Mutex<Vec<String>>>,
) -> Result<(), Error> {
    let Some(queue) = closes.upgrade() else {
        return Ok(());
    };
    let names: Vec<String> = match queue.lock() {
        Ok(mut names) => names.drain(..).collect(),
        Err(_) => return Ok(()),
    };
    if names.is_empty() {
        return Ok(());
    }
    client
        .connection_mut()
        .protocol
        .queue_request(Flow::Extended(1), None, |buf| {
            for name in &names {
                frontend::close(b'P', name, buf).map_err(encode_error)?;
            }
            frontend::sync(buf);
            Ok(())
        })?;
    Ok(())
}
