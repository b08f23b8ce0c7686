//! Row streams: results read and decoded one row at a time, with bounded memory.
//!
//! A [`RowStream`] reads the socket only when its consumer asks for the next row, so the server is held back
//! by TCP flow control instead of the client buffering the whole result: a million-row result streams through
//! a few socket buffers' worth of memory.
//!
//! Dropping a stream before its end is safe. Its request stays registered in the protocol core, and the
//! connection's next call reads and discards the rest of the result (every remaining row crosses the network)
//! before sending anything. To stop a large result without reading it, fetch through a portal instead
//! ([`Transaction::bind`](crate::Transaction::bind) or [`Client::cursor`]): there the server produces only
//! the rows asked for.

use std::borrow::Borrow;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use futures_core::Stream;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use postgres_types::{ToSql, Type};

use crate::client::{
    StatementRef, encode_error, rows_affected, unexpected, work_of, write_bind_portal,
};
use crate::proto::row::RowRef;
use crate::proto::statement::Column;
use crate::proto::{Backend, Flow, RawRow, RequestId};
use crate::{Client, Error, Param, Row, Statement, ToStatement};

impl Client {
    /// Runs a statement and returns a stream of its rows, read from the server as they are consumed.
    ///
    /// Use it instead of [`query`](Self::query) for results too large to hold in memory. SQL text is prepared
    /// first, as for `query`; the rows always come through the extended protocol in binary, whatever the
    /// query mode.
    ///
    /// The stream borrows the client until it is dropped. Dropped before its end, the rest of the result is
    /// read and discarded by the connection's next call, so the connection stays usable; to stop a large
    /// result without reading it, use [`cursor`](Self::cursor) or a portal.
    ///
    /// ```no_run
    /// # async fn demo(client: &mut wasi_pg_client::Client) -> Result<(), wasi_pg_client::Error> {
    /// let mut rows = client
    ///     .query_stream("SELECT g FROM generate_series(1, $1) g", &[&1_000_000i32])
    ///     .await?;
    /// let mut sum = 0i64;
    /// while let Some(row) = rows.next().await? {
    ///     sum += i64::from(row.get::<_, i32>(0));
    /// }
    /// assert_eq!(rows.rows_affected(), Some(1_000_000));
    /// # Ok(()) }
    /// ```
    pub async fn query_stream<T>(
        &mut self,
        statement: &T,
        params: &[Param<'_>],
    ) -> Result<RowStream<'_>, Error>
    where
        T: ToStatement + ?Sized,
    {
        let traced = self.telemetry("query_stream", work_of(statement));
        traced
            .run(async {
                let statement = Bindable::resolve(self, statement).await?;
                self.start_stream(&statement, params).await
            })
            .await
    }

    /// Like [`query_stream`](Self::query_stream), with the parameters given by an iterator, as in
    /// tokio-postgres's `query_raw`.
    ///
    /// ```no_run
    /// # async fn demo(client: &mut wasi_pg_client::Client) -> Result<(), wasi_pg_client::Error> {
    /// use wasi_pg_client::Param;
    /// let bounds = [1i32, 10];
    /// let mut rows = client
    ///     .query_raw("SELECT g FROM generate_series($1, $2) g", bounds.iter().map(|b| b as Param))
    ///     .await?;
    /// while let Some(row) = rows.next().await? {
    ///     println!("{}", row.get::<_, i32>(0));
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn query_raw<'p, T, I>(
        &mut self,
        statement: &T,
        params: I,
    ) -> Result<RowStream<'_>, Error>
    where
        T: ToStatement + ?Sized,
        I: IntoIterator,
        I::Item: Borrow<dyn ToSql + Sync + 'p>,
    {
        let owned: Vec<I::Item> = params.into_iter().collect();
        let params: Vec<Param<'_>> = owned.iter().map(Borrow::borrow).collect();
        let traced = self.telemetry("query_stream", work_of(statement));
        traced
            .run(async {
                let statement = Bindable::resolve(self, statement).await?;
                self.start_stream(&statement, &params).await
            })
            .await
    }

    /// Queues Bind/Execute/Sync of `statement` to the unnamed portal and returns the stream of its rows.
    async fn start_stream(
        &mut self,
        statement: &Bindable<'_>,
        params: &[Param<'_>],
    ) -> Result<RowStream<'_>, Error> {
        statement.check_params(params)?;
        self.prepare_to_send().await?;
        let columns = statement.statement.columns_arc();
        let id = self.connection_mut().protocol.queue_request(
            Flow::Extended(1),
            Some(columns.len()),
            |buf| {
                statement.write_bind(buf, "", params)?;
                frontend::execute("", 0, buf).map_err(encode_error)?;
                frontend::sync(buf);
                Ok(())
            },
        )?;
        let mut stream = RowStream::new(self, id, columns, None);
        stream.statement = Some(statement.statement.clone());
        Ok(stream)
    }
}

/// A prepared statement ready to bind, with its SQL text when it is the unnamed statement.
///
/// The unnamed statement is parsed again in the same request as its Bind: a statement described in an
/// earlier round trip may be gone by then (another Parse or a simple query replaced it, or a
/// transaction-pooling PgBouncer moved the session to another server connection), and one request carrying
/// Parse, Bind and Execute always stands alone.
pub(crate) struct Bindable<'s> {
    pub(crate) statement: Statement,
    sql: Option<&'s str>,
}

impl<'s> Bindable<'s> {
    /// Turns SQL text or a [`Statement`] into a described statement, as the query mode says.
    pub(crate) async fn resolve<T>(
        client: &mut Client,
        statement: &'s T,
    ) -> Result<Bindable<'s>, Error>
    where
        T: ToStatement + ?Sized,
    {
        let sql = match statement.to_statement() {
            StatementRef::Sql(sql) => Some(sql),
            StatementRef::Prepared(_) => None,
        };
        let statement = client.statement(statement).await?;
        let sql = sql.filter(|_| statement.name().is_empty());
        Ok(Bindable { statement, sql })
    }

    /// A statement prepared earlier; `sql` is its text when it is the unnamed statement.
    pub(crate) fn new(statement: Statement, sql: Option<&'s str>) -> Bindable<'s> {
        let sql = sql.filter(|_| statement.name().is_empty());
        Bindable { statement, sql }
    }

    pub(crate) fn check_params(&self, params: &[Param<'_>]) -> Result<(), Error> {
        let types = self.statement.params();
        if types.len() != params.len() {
            return Err(Error::parameters(types.len(), params.len()));
        }
        Ok(())
    }

    /// Writes Bind to `portal` (after Parse for the unnamed statement).
    pub(crate) fn write_bind(
        &self,
        buf: &mut BytesMut,
        portal: &str,
        params: &[Param<'_>],
    ) -> Result<(), Error> {
        let types = self.statement.params();
        if let Some(sql) = self.sql {
            frontend::parse("", sql, types.iter().map(Type::oid), buf).map_err(encode_error)?;
        }
        write_bind_portal(buf, portal, self.statement.name(), types, params)
    }
}

/// The rows of one Execute, decoded as they arrive and read from the socket only as they are consumed.
///
/// Read it with the inherent [`next`](Self::next) (no extra crate needed, convenient on WASI) or through its
/// [`Stream`] implementation (`Item = Result<Row, Error>`) with the combinators of `futures` or
/// `tokio-stream`. The inherent `next` takes precedence over `StreamExt::next` in method-call syntax; call
/// `StreamExt::next(&mut stream)` or `TryStreamExt::try_next` to use those.
///
/// A server error ends the stream after the rows that preceded it. Dropping the stream early is safe: the
/// connection's next call discards the rest of the result before sending its own request.
pub struct RowStream<'a> {
    /// The span of the request, entered while its rows are read.
    span: tracing::Span,
    client: &'a mut Client,
    id: RequestId,
    columns: Arc<[Column]>,
    /// A server error, returned once its ReadyForQuery arrived so the connection is in step again.
    error: Option<Error>,
    rows_affected: Option<u64>,
    /// The Execute stopped at its row limit (PortalSuspended): the portal has more rows.
    suspended: bool,
    done: bool,
    /// A portal's "fetch in flight" flag, cleared once this fetch has been read to its end.
    fetching: Option<&'a AtomicBool>,
    /// The statement bound by this request (not for a portal's fetch, which binds nothing): dropped from the
    /// cache if the server says it went stale.
    statement: Option<Statement>,
    /// The row [`next_ref`](Self::next_ref) lends when it came the general way (the buffer ended inside it),
    /// not from the connection's buffer, and where its fields are.
    held: Option<RawRow>,
    held_offsets: Vec<u32>,
}

impl std::fmt::Debug for RowStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowStream")
            .field("columns", &self.columns)
            .field("rows_affected", &self.rows_affected)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<'a> RowStream<'a> {
    /// The rows of request `id`, already queued, whose rows have `columns`; read in the span of the request that
    /// queued it (the current one).
    pub(crate) fn new(
        client: &'a mut Client,
        id: RequestId,
        columns: Arc<[Column]>,
        fetching: Option<&'a AtomicBool>,
    ) -> RowStream<'a> {
        RowStream {
            span: tracing::Span::current(),
            client,
            id,
            columns,
            error: None,
            rows_affected: None,
            suspended: false,
            done: false,
            fetching,
            statement: None,
            held: None,
            held_offsets: Vec::new(),
        }
    }

    /// The columns of the rows.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The number of rows the statement returned or affected, from its CommandComplete; `None` until the
    /// stream ended, and for a portal fetch that stopped at its row limit.
    pub fn rows_affected(&self) -> Option<u64> {
        self.rows_affected
    }

    /// Whether the stream ended because a portal fetch reached its row limit, with more rows left.
    pub(crate) fn is_suspended(&self) -> bool {
        self.suspended
    }

    /// The next row, `Ok(None)` at the end, or the server's error once the rows before it were delivered.
    ///
    /// Cancel-safe: if the future is dropped, no row is lost; the next call returns it.
    #[allow(
        clippy::should_implement_trait,
        reason = "the async counterpart of Iterator::next, for callers without a Stream extension crate"
    )]
    pub async fn next(&mut self) -> Result<Option<Row>, Error> {
        std::future::poll_fn(|cx| self.poll_row(cx)).await
    }

    /// The next row, lent until the stream's next call: `Ok(None)` at the end, or the server's error once the
    /// rows before it were delivered, as [`next`](Self::next).
    ///
    /// The row is read where it arrived in the connection's buffer: nothing is copied, allocated or
    /// reference-counted to hand it out, so this is the cheapest way through a large result. Values decode as
    /// from a [`Row`]; borrowed ones (`&str`, `&[u8]`) live as long as the row. Keep a row past the next call
    /// with [`RowRef::to_row`].
    ///
    /// Cancel-safe as `next` is.
    ///
    /// ```no_run
    /// # async fn demo(client: &mut wasi_pg_client::Client) -> Result<(), wasi_pg_client::Error> {
    /// let mut rows = client
    ///     .query_stream("SELECT g, repeat('x', g % 10) FROM generate_series(1, 1000000) g", &[])
    ///     .await?;
    /// let mut bytes = 0;
    /// while let Some(row) = rows.next_ref().await? {
    ///     let text: &str = row.get(1);
    ///     bytes += text.len();
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn next_ref(&mut self) -> Result<Option<RowRef<'_>>, Error> {
        self.held = None;
        if !std::future::poll_fn(|cx| self.poll_lend(cx)).await? {
            return Ok(None);
        }
        // A row whose field count is not the columns' breaks the connection, as `next` does (checked before
        // the row is lent, so the error can end the stream).
        let fields = match &self.held {
            Some(row) => row.len(),
            None => {
                let protocol = &self.client.connection_mut().protocol;
                protocol.lent_row().map_or(0, |view| view.len())
            }
        };
        if let Err(e) = RowRef::check(&self.columns, fields) {
            return Err(self.end_with(e.broken()));
        }
        let view = match &self.held {
            Some(row) => row.view(&mut self.held_offsets).ok_or_else(|| {
                Error::protocol("a row over 4 GiB cannot be lent: read it with next()")
            })?,
            None => self
                .client
                .connection_mut()
                .protocol
                .lent_row()
                .ok_or_else(|| Error::protocol("BUG: a row was lent but is not there"))?,
        };
        Ok(Some(RowRef::new(&self.columns, view)))
    }

    /// Calls `f` with each remaining row, lent as by [`next_ref`](Self::next_ref), until the end of the
    /// stream or the first error, which it returns: the server's (once the rows before it were handed to
    /// `f`) or the one `f` returned. After an error from `f` the stream can go on with the next row.
    ///
    /// The cheapest way through a large result: every row already in the connection's buffer is handed to
    /// `f` in one loop, without a return to the executor between rows.
    ///
    /// ```no_run
    /// # async fn demo(client: &mut wasi_pg_client::Client) -> Result<(), wasi_pg_client::Error> {
    /// let mut rows = client
    ///     .query_stream("SELECT g FROM generate_series(1, 1000000) g", &[])
    ///     .await?;
    /// let mut sum = 0i64;
    /// rows.for_each_ref(|row| {
    ///     sum += i64::from(row.try_get::<_, i32>(0)?);
    ///     Ok::<_, wasi_pg_client::Error>(())
    /// })
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub async fn for_each_ref<F, E>(&mut self, mut f: F) -> Result<(), E>
    where
        F: FnMut(RowRef<'_>) -> Result<(), E>,
        E: From<Error>,
    {
        loop {
            self.held = None;
            if !self.done {
                let protocol = &mut self.client.connection_mut().protocol;
                while let Some(view) = protocol.lend_data_row(self.id) {
                    if let Err(e) = RowRef::check(&self.columns, view.len()) {
                        return Err(self.end_with(e.broken()).into());
                    }
                    f(RowRef::new(&self.columns, view))?;
                }
            }
            match self.next_ref().await? {
                Some(row) => f(row)?,
                None => return Ok(()),
            }
        }
    }

    /// Reads to the end, keeping the rows.
    pub(crate) async fn collect_rows(&mut self) -> Result<Vec<Row>, Error> {
        let mut rows = Vec::new();
        while let Some(row) = self.next().await? {
            rows.push(row);
        }
        Ok(rows)
    }

    fn poll_row(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Row>, Error>> {
        if self.done {
            return Poll::Ready(Ok(None));
        }
        // Rows already buffered whole are taken straight from the protocol core, outside the request's span:
        // nothing is logged there, and entering a span per row costs a subscriber two calls.
        let buffered = self
            .client
            .connection_mut()
            .protocol
            .poll_data_row(self.id)
            .and_then(|raw| {
                raw.map(|raw| Row::new(self.columns.clone(), raw))
                    .transpose()
            });
        match buffered {
            Ok(Some(row)) => Poll::Ready(Ok(Some(row))),
            Ok(None) => {
                let raw = ready!(self.poll_general(cx))?;
                Poll::Ready(
                    raw.map(|raw| Row::new(self.columns.clone(), raw))
                        .transpose(),
                )
            }
            Err(e) => Poll::Ready(Err(self.end_with(e))),
        }
    }

    /// [`poll_row`](Self::poll_row) for [`next_ref`](Self::next_ref): `true` when a row is lent, by the
    /// protocol core or in `held`.
    fn poll_lend(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, Error>> {
        if self.done {
            return Poll::Ready(Ok(false));
        }
        if self
            .client
            .connection_mut()
            .protocol
            .lend_data_row(self.id)
            .is_some()
        {
            return Poll::Ready(Ok(true));
        }
        let row = ready!(self.poll_general(cx))?;
        let lent = row.is_some();
        self.held = row;
        Poll::Ready(Ok(lent))
    }

    /// Ends the stream with an error from the protocol core, marking the connection broken if it says so.
    fn end_with(&mut self, error: Error) -> Error {
        self.done = true;
        self.client.connection_mut().protocol.mark_broken(&error);
        error
    }

    /// The next row or the end when the buffer holds no whole row of this request: the general dispatch,
    /// reading the socket, in the request's span.
    fn poll_general(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<RawRow>, Error>> {
        let span = self.span.clone();
        let _entered = span.enter();
        let result = ready!(self.poll_message(cx));
        if !matches!(result, Ok(Some(_))) {
            self.done = true;
        }
        Poll::Ready(self.client.connection_mut().check(result))
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<RawRow>, Error>> {
        loop {
            // Rows already buffered whole are taken straight from the protocol core; anything else (and the
            // socket) goes through the connection's dispatch below.
            if let Some(raw) = self
                .client
                .connection_mut()
                .protocol
                .poll_data_row(self.id)?
            {
                return Poll::Ready(Ok(Some(raw)));
            }
            // A fresh future per poll: `next_response` keeps no state of its own (the connection and the
            // transport hold it), so dropping it while pending loses nothing, and this stream stays `Unpin`.
            let response = {
                let next = pin!(self.client.connection_mut().next_response(self.id));
                ready!(next.poll(cx))?
            };
            match response {
                Backend::Row(raw) => return Poll::Ready(Ok(Some(raw))),
                Backend::Ready => {
                    if let Some(fetching) = self.fetching {
                        fetching.store(false, Ordering::Release);
                    }
                    return Poll::Ready(match self.error.take() {
                        Some(e) => {
                            if let Some(statement) = &self.statement {
                                self.client.forget_if_stale(statement, &e);
                            }
                            Err(e)
                        }
                        None => Ok(None),
                    });
                }
                Backend::Message(Message::CommandComplete(body)) => {
                    self.rows_affected = Some(rows_affected(body.tag().map_err(Error::malformed)?));
                }
                Backend::Message(Message::PortalSuspended) => self.suspended = true,
                Backend::Message(Message::EmptyQueryResponse) => self.rows_affected = Some(0),
                Backend::Message(
                    Message::ParseComplete
                    | Message::BindComplete
                    | Message::CloseComplete
                    | Message::NoData
                    | Message::CopyOutResponse(_)
                    | Message::CopyDone,
                )
                | Backend::CopyData(_) => {}
                Backend::Error(db) => {
                    self.error.get_or_insert(Error::db(*db));
                }
                other => return Poll::Ready(Err(unexpected(other, "Bind/Execute"))),
            }
        }
    }
}

impl Stream for RowStream<'_> {
    type Item = Result<Row, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_row(cx).map(Result::transpose)
    }
}

/// Scripted-server tests of the lending reads (`next_ref`, `for_each_ref`) against the owned ones.
#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
