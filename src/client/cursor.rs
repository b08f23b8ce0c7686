//! Cursors: a query read a fixed number of rows at a time, in a transaction of its own.
//!
//! A [`Cursor`] is a [`Transaction`] plus a [`Portal`](crate::Portal). The transaction ends on every path:
//! COMMIT once the rows are exhausted, ROLLBACK at once on an error, and ROLLBACK before the connection's next
//! request when the cursor is dropped early (the mechanism a dropped [`Transaction`] uses, so no await is
//! needed in a drop). A BEGIN is never left open.

use std::collections::VecDeque;

use crate::client::portal::Portal;
use crate::proto::statement::Column;
use crate::{Client, Error, Param, Row, ToStatement, Transaction, TransactionStatus};

impl Client {
    /// Opens a cursor over a statement's rows, fetched `fetch_size` rows per round trip.
    ///
    /// The cursor runs in a transaction of its own (BEGIN is sent here), committed once the rows are
    /// exhausted and rolled back if the cursor fails or is dropped early; the server produces only the rows
    /// fetched. It must be called outside a transaction block: inside one, use
    /// [`Transaction::bind`] and [`Transaction::query_portal`].
    ///
    /// ```no_run
    /// # async fn demo(client: &mut wasi_pg_client::Client) -> Result<(), wasi_pg_client::Error> {
    /// let mut cursor = client.cursor("SELECT id, name FROM big ORDER BY id", &[], 500).await?;
    /// while let Some(batch) = cursor.next_batch().await? {
    ///     for row in batch {
    ///         let id: i32 = row.get(0);
    ///         # let _ = id;
    ///     }
    /// }
    /// // Exhausted: the cursor's transaction is committed.
    /// # Ok(()) }
    /// ```
    pub async fn cursor<T>(
        &mut self,
        statement: &T,
        params: &[Param<'_>],
        fetch_size: u32,
    ) -> Result<Cursor<'_>, Error>
    where
        T: ToStatement + ?Sized,
    {
        if fetch_size == 0 {
            return Err(Error::config("a cursor's fetch size must be at least 1"));
        }
        // The status must be current before it is trusted: read out every earlier request, including
        // rollbacks that dropped transactions left to run first.
        self.prepare_to_send().await?;
        self.connection_mut().drain_abandoned().await?;
        if self.transaction_status() != TransactionStatus::Idle {
            // Its COMMIT would commit the caller's transaction.
            return Err(Error::unsupported(
                "Client::cursor opens its own transaction and cannot run inside a transaction block; \
                 use Transaction::bind and Transaction::query_portal there",
            ));
        }
        let mut tx = self.transaction().await?;
        match tx.bind(statement, params).await {
            Ok(portal) => Ok(Cursor {
                portal,
                tx: Some(tx),
                fetch_size,
                buffered: VecDeque::new(),
            }),
            Err(e) => {
                // The error is what the caller needs; if the rollback cannot be sent either, the connection
                // is broken and the server ends the transaction with it.
                let _ = tx.rollback().await;
                Err(e)
            }
        }
    }
}

/// Rows of a query fetched a batch at a time, in a transaction of the cursor's own; see [`Client::cursor`].
///
/// Dropped before it is exhausted, its transaction is rolled back before the connection's next request.
#[derive(Debug)]
pub struct Cursor<'a> {
    portal: Portal,
    /// `None` once the transaction was committed or rolled back.
    tx: Option<Transaction<'a>>,
    fetch_size: u32,
    /// Rows fetched but not yet returned by [`next`](Cursor::next).
    buffered: VecDeque<Row>,
}

impl Cursor<'_> {
    /// The columns of the rows.
    pub fn columns(&self) -> &[Column] {
        self.portal.columns()
    }

    /// The next batch of at most `fetch_size` rows (never empty), or `Ok(None)` once the rows are exhausted
    /// and the transaction committed. After an error the transaction is rolled back and the cursor ends.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<Row>>, Error> {
        if !self.buffered.is_empty() {
            return Ok(Some(self.buffered.drain(..).collect()));
        }
        let Some(tx) = self.tx.as_mut() else {
            return Ok(None);
        };
        let fetched = match tx.query_portal_raw(&self.portal, self.fetch_size).await {
            Ok(mut stream) => match stream.collect_rows().await {
                Ok(rows) => Ok((rows, stream.is_suspended())),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match fetched {
            // Stopped at the row limit: more rows may follow.
            Ok((rows, true)) => Ok(Some(rows)),
            Ok((rows, false)) => {
                if let Some(tx) = self.tx.take() {
                    tx.commit().await?;
                }
                Ok((!rows.is_empty()).then_some(rows))
            }
            Err(e) => {
                if let Some(tx) = self.tx.take() {
                    // As in `Client::cursor`: the first error is the one to report.
                    let _ = tx.rollback().await;
                }
                Err(e)
            }
        }
    }

    /// The next row, fetching the next batch when the rows fetched so far are used up; `Ok(None)` once the
    /// rows are exhausted and the transaction committed.
    #[allow(
        clippy::should_implement_trait,
        reason = "the async counterpart of Iterator::next"
    )]
    pub async fn next(&mut self) -> Result<Option<Row>, Error> {
        if self.buffered.is_empty() {
            match self.next_batch().await? {
                Some(batch) => self.buffered = batch.into(),
                None => return Ok(None),
            }
        }
        Ok(self.buffered.pop_front())
    }

    /// Ends the cursor now, rolling its transaction back (a no-op once the cursor is exhausted).
    pub async fn close(mut self) -> Result<(), Error> {
        match self.tx.take() {
            Some(tx) => tx.rollback().await,
            None => Ok(()),
        }
    }
}
