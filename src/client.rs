//! The async client: queries, prepared statements, simple queries.
//!
//! Every method first reads out whatever requests of dropped futures still have coming, then queues its whole
//! request synchronously (bookkeeping included), then awaits responses. If the caller drops the future at any
//! await, the request stays registered in the protocol core and the next call discards its remaining responses
//! before sending its own, so the connection stays usable and no result reaches the wrong caller.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use postgres_types::{ToSql, Type};
use tracing::Instrument as _;

use crate::config::QueryMode;
use crate::connection::Connection;
use crate::proto::{Backend, Flow, Notification, RawRow, RequestId, TransactionStatus};
use crate::row::{Row, SimpleColumn, SimpleQueryMessage, SimpleQueryRow};
// Shared with the hosts' API of the sans-IO core.
pub(crate) use crate::sans_io::{encode_error, write_bind_portal};
use crate::statement::{CloseQueue, CloseUnlessPrepared, Column, Statement};
use crate::statement_cache::StatementCache;
use crate::typeinfo;
use crate::{Config, DbError, Error, sqlstate};

/// A statement to run: SQL text or a prepared [`Statement`].
pub trait ToStatement: sealed::Sealed {
    #[doc(hidden)]
    fn to_statement(&self) -> StatementRef<'_>;
}

mod sealed {
    pub trait Sealed {}
}

#[doc(hidden)]
pub enum StatementRef<'a> {
    Sql(&'a str),
    Prepared(&'a Statement),
}

impl sealed::Sealed for str {}
impl ToStatement for str {
    fn to_statement(&self) -> StatementRef<'_> {
        StatementRef::Sql(self)
    }
}
impl sealed::Sealed for String {}
impl ToStatement for String {
    fn to_statement(&self) -> StatementRef<'_> {
        StatementRef::Sql(self)
    }
}
impl sealed::Sealed for Statement {}
impl ToStatement for Statement {
    fn to_statement(&self) -> StatementRef<'_> {
        StatementRef::Prepared(self)
    }
}

/// A parameter: any [`ToSql`] value.
pub type Param<'a> = &'a (dyn ToSql + Sync);

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// A connection to a PostgreSQL server.
///
/// There is no background task: every call drives the socket itself, so the client works on WASI's
/// single-threaded runtime as on tokio. Methods take `&mut self`; one operation runs at a time.
pub struct Client {
    conn: Connection,
    id: u64,
    next_statement: u64,
    close_queue: CloseQueue,
    types: typeinfo::TypeCache,
    /// SQL to run before the next request, queued synchronously by drops that cannot await (a transaction
    /// dropped without commit leaves its ROLLBACK here).
    deferred: Vec<String>,
    /// `Transaction` values alive on this client (savepoints included). While any is, a lost connection is
    /// never rebuilt under it: its calls would otherwise run in autocommit on the new session.
    pub(crate) open_transactions: u32,
    /// How to reach the same server again for a cancel request (address and TLS settings).
    pub(crate) cancel_route: Option<crate::connect::CancelRoute>,
    /// How SQL text runs.
    mode: QueryMode,
    /// Named statements prepared for SQL text in [`QueryMode::Cached`].
    cache: StatementCache,
    /// What session rebuild restores, when [`Config::session_rebuild`] is on (see `rebuild.rs`).
    pub(crate) session: Option<Box<crate::rebuild::SessionRecord>>,
    /// Whether request spans record the statement text ([`Config::trace_statements`]).
    trace_statements: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("backend_pid", &self.backend_pid())
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// One RowDescription field, before its type is resolved.
pub(crate) struct FieldInfo {
    name: String,
    type_oid: u32,
    table_oid: Option<u32>,
    column_id: Option<i16>,
}

/// Result rows of one Execute, before their columns are resolved.
struct Collected {
    rows: Vec<RawRow>,
    description: Option<Vec<FieldInfo>>,
    affected: u64,
}

impl Collected {
    fn into_rows(self, columns: Arc<[Column]>) -> Result<Vec<Row>, Error> {
        self.rows
            .into_iter()
            .map(|raw| Row::new(columns.clone(), raw))
            .collect()
    }
}

impl Client {
    pub(crate) fn from_connection(mut conn: Connection, config: &Config) -> Client {
        conn.limits.query_timeout = config.get_query_timeout();
        conn.limits.read_timeout = config.get_read_timeout();
        Client {
            conn,
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            next_statement: 1,
            close_queue: CloseQueue::default(),
            types: typeinfo::TypeCache::default(),
            deferred: Vec::new(),
            open_transactions: 0,
            cancel_route: None,
            mode: config.get_query_mode(),
            cache: StatementCache::new(config.get_statement_cache_capacity()),
            session: crate::rebuild::SessionRecord::for_config(config),
            trace_statements: config.get_trace_statements(),
        }
    }

    /// The `tracing` span of one request: what kind of call it is, the backend it runs on, and the SQL text
    /// when [`Config::trace_statements`] is on. Parameters never enter it.
    pub(crate) fn request_span(&self, kind: &'static str, sql: Option<&str>) -> tracing::Span {
        let span = tracing::debug_span!(
            "request",
            kind,
            backend_pid = self.backend_pid(),
            statement = tracing::field::Empty,
        );
        if self.trace_statements
            && let Some(sql) = sql
        {
            span.record("statement", sql);
        }
        span
    }

    /// How SQL text runs on this connection (from [`Config::query_mode`]).
    pub fn query_mode(&self) -> QueryMode {
        self.mode
    }

    /// How many prepared statements the statement cache holds now.
    pub fn cached_statements(&self) -> usize {
        self.cache.len()
    }

    /// Whether the connection is encrypted with TLS.
    pub fn uses_tls(&self) -> bool {
        self.cancel_route.as_ref().is_some_and(|r| r.tls.is_some())
    }

    /// Records how to reach the server again for a cancel request. The driver keeps a copy: it cancels
    /// timed-out requests itself.
    pub(crate) fn set_cancel_route(&mut self, route: crate::connect::CancelRoute) {
        self.conn.cancel_route = Some(route.clone());
        self.cancel_route = Some(route);
    }

    /// A token that cancels the query running on this connection, usable without access to the client: from
    /// another task natively, or as a future joined with the query on WASI. With [`Config::session_rebuild`]
    /// it follows the client to its rebuilt sessions. See [`CancelToken`].
    ///
    /// [`CancelToken`]: crate::CancelToken
    pub fn cancel_token(&self) -> crate::CancelToken {
        let token = self.conn.cancel_token();
        match &self.session {
            Some(session) => token.following(session.current_session()),
            None => token,
        }
    }

    /// How long the server may take to answer each request before it is cancelled (see
    /// [`Config::query_timeout`]); `None` for no limit.
    pub fn query_timeout(&self) -> Option<std::time::Duration> {
        self.conn.limits.query_timeout
    }

    /// Sets the query timeout for the requests this client sends from now on (`None` or zero: no limit),
    /// replacing [`Config::query_timeout`] for this connection.
    pub fn set_query_timeout(&mut self, timeout: impl Into<Option<std::time::Duration>>) {
        self.conn.limits.query_timeout = timeout.into().filter(|t| !t.is_zero());
    }

    /// The client with another query timeout (`None`: no limit) until the returned scope is dropped: for one
    /// call, or for every call made through the scope. A request that outlives it is cancelled on the server,
    /// read out, and reported as [`ErrorKind::Timeout`](crate::ErrorKind::Timeout); the connection stays
    /// usable (see [`Config::query_timeout`]).
    ///
    /// ```no_run
    /// # async fn demo(client: &mut wasi_pg_client::Client) -> Result<(), wasi_pg_client::Error> {
    /// use std::time::Duration;
    /// use wasi_pg_client::ErrorKind;
    ///
    /// let slow = client
    ///     .with_query_timeout(Duration::from_secs(2))
    ///     .query("SELECT pg_sleep(10)", &[])
    ///     .await;
    /// assert_eq!(slow.unwrap_err().kind(), ErrorKind::Timeout);
    /// // The connection's own timeout is back, and the connection works.
    /// client.query_one("SELECT 1", &[]).await?;
    /// # Ok(()) }
    /// ```
    pub fn with_query_timeout(
        &mut self,
        timeout: impl Into<Option<std::time::Duration>>,
    ) -> crate::QueryTimeoutScope<'_> {
        crate::QueryTimeoutScope::new(self, timeout.into())
    }

    /// Checks the connection with one round trip, an empty query (EmptyQueryResponse and ReadyForQuery), and
    /// returns the transaction status that ReadyForQuery reported. Requests of dropped futures are read out
    /// first, so the status is current afterwards (see [`transaction_status`](Self::transaction_status)).
    pub async fn ping(&mut self) -> Result<TransactionStatus, Error> {
        let span = self.request_span("ping", None);
        async {
            self.prepare_to_send().await?;
            let id = self.queue_simple("")?;
            self.simple_results(id).finish().await?;
            Ok(self.transaction_status())
        }
        .instrument(span)
        .await
    }

    /// Whether the connection is closed or broken; a closed client only returns errors, unless
    /// [`Config::session_rebuild`] is on: then its next call connects again.
    pub fn is_closed(&self) -> bool {
        self.conn.protocol.is_closed()
    }

    /// The process id of the server backend (from BackendKeyData).
    pub fn backend_pid(&self) -> Option<i32> {
        self.conn.protocol.backend_key().map(|k| k.process_id)
    }

    /// The transaction status reported by the server's last ReadyForQuery.
    ///
    /// A request whose future was dropped is answered during the next call; until then this still shows the
    /// status from before that request.
    pub fn transaction_status(&self) -> TransactionStatus {
        self.conn.protocol.transaction_status()
    }

    /// Whether requests of dropped futures still await their answers, or drops left SQL to run before the next
    /// request (the ROLLBACK of a dropped transaction): until the next call settles them,
    /// [`transaction_status`](Self::transaction_status) may be out of date.
    #[cfg(feature = "pool")]
    pub(crate) fn has_unfinished_requests(&self) -> bool {
        self.conn.protocol.has_pending() || !self.deferred.is_empty()
    }

    /// A run-time parameter the server reported, such as `server_version`, `TimeZone` or `DateStyle`.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.conn.protocol.parameter(name)
    }

    /// Notifications received so far (from `LISTEN`), oldest first; they are removed from the client.
    pub fn take_notifications(&mut self) -> Vec<Notification> {
        self.conn.take_notifications()
    }

    /// Notices and warnings received so far, oldest first; they are removed from the client. Each notice is
    /// also emitted as a `tracing` event. At most the newest 1024 are kept; none while a handler set with
    /// [`set_notice_handler`](Self::set_notice_handler) takes them instead.
    pub fn take_notices(&mut self) -> Vec<DbError> {
        self.conn.take_notices()
    }

    /// Gets the connection ready for a new request: reads and discards what requests of dropped futures still
    /// have coming, then queues Close for dropped statements.
    ///
    /// A new request is never sent behind an unanswered one: if that one turned into COPY FROM STDIN, the server
    /// would read our next messages as COPY data. If this future is dropped while draining, nothing was queued.
    pub(crate) async fn prepare_to_send(&mut self) -> Result<(), Error> {
        if self.session.is_some() && self.is_closed() {
            // Boxed: the rebuild itself runs requests, which come back here.
            Box::pin(self.rebuild_session()).await?;
        }
        self.conn.drain_abandoned().await?;
        // Deferred statements (rollbacks of dropped transactions) go first; their answers are discarded like
        // those of an abandoned request. If a drop cannot be sent because the connection broke, the server ends
        // the transaction anyway when the connection goes.
        for sql in std::mem::take(&mut self.deferred) {
            self.queue_simple(&sql)?;
        }
        self.queue_statement_closes()
    }

    /// Asks for `sql` to run (through the simple protocol, results discarded) before the next request.
    pub(crate) fn defer(&mut self, sql: String) {
        self.deferred.push(sql);
    }

    /// Queues one simple Query; the caller has called [`prepare_to_send`](Self::prepare_to_send).
    pub(crate) fn queue_simple(&mut self, sql: &str) -> Result<RequestId, Error> {
        if sql.contains('\0') {
            return Err(Error::config("the SQL text contains a NUL byte"));
        }
        self.conn.protocol.queue_request(Flow::Simple, None, |buf| {
            frontend::query(sql, buf).map_err(encode_error)
        })
    }

    /// The results of a queued simple Query, read in the span of the request that queued it (the current one).
    pub(crate) fn simple_results(&mut self, id: RequestId) -> SimpleQueryStream<'_> {
        SimpleQueryStream {
            span: tracing::Span::current(),
            client: self,
            id,
            columns: None,
            error: None,
            done: false,
            last_tag: None,
        }
    }

    /// Queues Close messages for statements whose handles were all dropped. Their responses are discarded like
    /// those of an abandoned request.
    fn queue_statement_closes(&mut self) -> Result<(), Error> {
        let names: Vec<String> = match self.close_queue.lock() {
            Ok(mut names) => names.drain(..).collect(),
            Err(_) => return Ok(()),
        };
        if let Some(session) = &mut self.session {
            session.forget_statements(&names);
        }
        if names.is_empty() || self.is_closed() {
            return Ok(());
        }
        self.conn
            .protocol
            .queue_request(Flow::Extended(1), None, |buf| {
                for name in &names {
                    frontend::close(b'S', name, buf).map_err(encode_error)?;
                }
                frontend::sync(buf);
                Ok(())
            })?;
        Ok(())
    }

    /// Prepares a statement, letting the server infer parameter types.
    pub async fn prepare(&mut self, sql: &str) -> Result<Statement, Error> {
        self.prepare_typed(sql, &[]).await
    }

    /// Prepares a statement with the given parameter types (the server infers any not given).
    pub async fn prepare_typed(
        &mut self,
        sql: &str,
        param_types: &[Type],
    ) -> Result<Statement, Error> {
        let (name, guard) = self.new_statement_name();
        let span = self.request_span("prepare", Some(sql));
        let statement = self
            .prepare_named(&name, sql, param_types)
            .instrument(span)
            .await?;
        guard.prepared();
        if let Some(session) = &mut self.session {
            session.remember_statement(&name, sql, &statement);
        }
        Ok(statement)
    }

    /// A name for a new named statement, with the guard that closes it on the server unless its prepare
    /// finishes (see [`CloseUnlessPrepared`]).
    pub(crate) fn new_statement_name(&mut self) -> (String, CloseUnlessPrepared) {
        // The client id keeps names apart when several clients of a process share a backend (session poolers,
        // PGlite).
        let name = format!("wpc{}_{}", self.id, self.next_statement);
        self.next_statement += 1;
        let guard = CloseUnlessPrepared::new(&self.close_queue, &name);
        (name, guard)
    }

    pub(crate) async fn prepare_named(
        &mut self,
        name: &str,
        sql: &str,
        param_types: &[Type],
    ) -> Result<Statement, Error> {
        self.prepare_to_send().await?;
        let id = self
            .conn
            .protocol
            .queue_request(Flow::Extended(1), None, |buf| {
                frontend::parse(name, sql, param_types.iter().map(Type::oid), buf)
                    .map_err(encode_error)?;
                frontend::describe(b'S', name, buf).map_err(encode_error)?;
                frontend::sync(buf);
                Ok(())
            })?;
        let described = self.read_statement_description(id).await;
        let (param_oids, description) = self.conn.check(described)?;
        self.described_statement(name, param_oids, description)
            .await
    }

    /// The statement `name` from the server's answer to its Parse/Describe, with its types resolved (a catalog
    /// lookup for each type postgres-types does not know, once per connection).
    pub(crate) async fn described_statement(
        &mut self,
        name: &str,
        param_oids: Vec<u32>,
        description: Option<Vec<FieldInfo>>,
    ) -> Result<Statement, Error> {
        let mut params = Vec::with_capacity(param_oids.len());
        for oid in param_oids {
            params.push(self.resolve_type(oid).await?);
        }
        let columns = match description {
            Some(description) => Some(self.resolve_columns(description).await?),
            None => None,
        };
        let close_queue = (!name.is_empty()).then_some(&self.close_queue);
        Ok(Statement::new(
            name.to_string(),
            self.id,
            params,
            columns,
            close_queue,
        ))
    }

    /// Reads the answer to Parse/Describe: parameter type OIDs and the row description, or the server's error.
    pub(crate) async fn read_statement_description(
        &mut self,
        id: RequestId,
    ) -> Result<(Vec<u32>, Option<Vec<FieldInfo>>), Error> {
        let mut param_oids = Vec::new();
        let mut description = None;
        let mut error = None;
        loop {
            match self.conn.next_response(id).await? {
                Backend::Ready => break,
                Backend::Message(Message::ParseComplete | Message::NoData) => {}
                Backend::Message(Message::ParameterDescription(body)) => {
                    param_oids = body.parameters().collect().map_err(Error::malformed)?;
                }
                Backend::Message(Message::RowDescription(body)) => {
                    description = Some(read_description(&body)?);
                }
                Backend::Error(db) => {
                    error = Some(Error::db(*db));
                }
                other => return Err(unexpected(other, "Parse/Describe")),
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok((param_oids, description)),
        }
    }

    async fn resolve_type(&mut self, oid: u32) -> Result<Type, Error> {
        if let Some(ty) = Type::from_oid(oid) {
            return Ok(ty);
        }
        if let Some(ty) = self.types.get(oid) {
            return Ok(ty);
        }
        typeinfo::lookup(self, oid).await
    }

    pub(crate) fn type_cache(&mut self) -> &mut typeinfo::TypeCache {
        &mut self.types
    }

    async fn resolve_columns(&mut self, description: Vec<FieldInfo>) -> Result<Vec<Column>, Error> {
        let mut columns = Vec::with_capacity(description.len());
        for field in description {
            let type_ = self.resolve_type(field.type_oid).await?;
            columns.push(Column::new(
                field.name,
                type_,
                field.table_oid,
                field.column_id,
            ));
        }
        Ok(columns)
    }

    pub(crate) async fn statement<T: ToStatement + ?Sized>(
        &mut self,
        statement: &T,
    ) -> Result<Statement, Error> {
        match statement.to_statement() {
            StatementRef::Prepared(s) => {
                if s.connection_id() != self.id {
                    return Err(Error::config(
                        "the statement was prepared on a different connection",
                    ));
                }
                Ok(s.clone())
            }
            StatementRef::Sql(sql) if self.mode == QueryMode::Cached && self.cache.enabled() => {
                self.cached_statement(sql).await
            }
            // SQL text goes through the unnamed statement: nothing to close, nothing left on the server.
            StatementRef::Sql(sql) => {
                let lookups = self.types.lookups();
                let statement = self.prepare_named("", sql, &[]).await?;
                if self.types.lookups() == lookups {
                    return Ok(statement);
                }
                // Looking up a custom type ran simple queries, which drop the unnamed statement: parse it again.
                // The types are cached now, so this second round trip happens once per type and connection.
                self.prepare_named("", sql, statement.params()).await
            }
        }
    }

    /// Runs a statement and returns its rows.
    ///
    /// `statement` is SQL text (prepared on the fly) or a [`Statement`]. Parameters are checked against the
    /// statement's types before anything is sent.
    pub async fn query<T>(&mut self, statement: &T, params: &[Param<'_>]) -> Result<Vec<Row>, Error>
    where
        T: ToStatement + ?Sized,
    {
        let span = self.request_span("query", sql_of(statement));
        let (collected, columns) = self.run(statement, params).instrument(span).await?;
        collected.into_rows(columns)
    }

    /// Runs a statement that must return exactly one row.
    pub async fn query_one<T>(&mut self, statement: &T, params: &[Param<'_>]) -> Result<Row, Error>
    where
        T: ToStatement + ?Sized,
    {
        let mut rows = self.query(statement, params).await?;
        match rows.len() {
            1 => Ok(rows.remove(0)),
            0 => Err(Error::row_count(
                "query returned no rows, expected exactly one",
            )),
            n => Err(Error::row_count(&format!(
                "query returned {n} rows, expected exactly one"
            ))),
        }
    }

    /// Runs a statement that returns at most one row.
    pub async fn query_opt<T>(
        &mut self,
        statement: &T,
        params: &[Param<'_>],
    ) -> Result<Option<Row>, Error>
    where
        T: ToStatement + ?Sized,
    {
        let mut rows = self.query(statement, params).await?;
        match rows.len() {
            0 => Ok(None),
            1 => Ok(Some(rows.remove(0))),
            n => Err(Error::row_count(&format!(
                "query returned {n} rows, expected at most one"
            ))),
        }
    }

    /// Runs a statement and returns the number of rows it affected (or returned).
    pub async fn execute<T>(&mut self, statement: &T, params: &[Param<'_>]) -> Result<u64, Error>
    where
        T: ToStatement + ?Sized,
    {
        let span = self.request_span("execute", sql_of(statement));
        Ok(self
            .run(statement, params)
            .instrument(span)
            .await?
            .0
            .affected)
    }

    /// Runs a statement, SQL text as the query mode says: its results and their columns.
    async fn run<T>(
        &mut self,
        statement: &T,
        params: &[Param<'_>],
    ) -> Result<(Collected, Arc<[Column]>), Error>
    where
        T: ToStatement + ?Sized,
    {
        match (statement.to_statement(), self.mode) {
            (StatementRef::Sql(sql), QueryMode::Cached) if self.cache.enabled() => {
                self.run_cached(sql, params).await
            }
            (StatementRef::Sql(sql), QueryMode::Cached | QueryMode::Unnamed) => {
                self.run_unnamed(sql, params).await
            }
            (StatementRef::Sql(sql), _) => self.run_simple(sql, params).await,
            (StatementRef::Prepared(_), _) => {
                let statement = self.statement(statement).await?;
                let collected = self.execute_statement(&statement, params).await?;
                Ok((collected, statement.columns_arc()))
            }
        }
    }

    /// Runs SQL text through the simple query protocol with the parameters rendered as literals; the text
    /// results are converted to the binary form [`Row`] decodes (see [`QueryMode::Simple`]).
    async fn run_simple(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<(Collected, Arc<[Column]>), Error> {
        let standard_strings = self.parameter("standard_conforming_strings") != Some("off");
        let text = crate::simple_mode::render(sql, params, standard_strings)?;
        self.prepare_to_send().await?;
        let id = self.queue_simple(&text)?;
        let mut collected = Collected {
            rows: Vec::new(),
            description: None,
            affected: 0,
        };
        let mut columns: Vec<Column> = Vec::new();
        let mut result_sets = 0;
        // The first problem is kept and returned once ReadyForQuery ended the request, so the connection is
        // left in step.
        let mut error = None;
        loop {
            match self.conn.next_response(id).await? {
                Backend::Ready => break,
                Backend::Message(Message::RowDescription(body)) => {
                    result_sets += 1;
                    if result_sets > 1 && error.is_none() {
                        error = Some(Error::unsupported(
                            "QueryMode::Simple: the SQL returned several result sets; use simple_query",
                        ));
                    }
                    columns = read_description(&body)?
                        .into_iter()
                        .map(|field| {
                            Column::new(
                                field.name,
                                crate::simple_mode::column_type(
                                    Type::from_oid(field.type_oid).unwrap_or(Type::TEXT),
                                ),
                                field.table_oid,
                                field.column_id,
                            )
                        })
                        .collect();
                }
                Backend::Row(raw) => {
                    let mut fields = Vec::with_capacity(raw.len());
                    for (i, column) in columns.iter().enumerate().take(raw.len()) {
                        let field = raw.field(i).map(|text| {
                            crate::simple_mode::text_to_binary(column.type_(), text).ok_or_else(
                                || {
                                    Error::unsupported(format!(
                                        "QueryMode::Simple cannot read the {} text of column {:?} \
                                         (DateStyle must be ISO and bytea_output hex)",
                                        column.type_(),
                                        column.name()
                                    ))
                                },
                            )
                        });
                        match field.transpose() {
                            Ok(field) => fields.push(field),
                            Err(e) => {
                                error.get_or_insert(e);
                                fields.push(None);
                            }
                        }
                    }
                    collected.rows.push(RawRow::from_fields(fields));
                }
                Backend::Message(Message::CommandComplete(body)) => {
                    collected.affected = rows_affected(body.tag().map_err(Error::malformed)?);
                }
                Backend::Message(
                    Message::EmptyQueryResponse | Message::CopyOutResponse(_) | Message::CopyDone,
                )
                | Backend::CopyData(_) => {}
                Backend::Error(db) => {
                    error.get_or_insert(Error::db(*db));
                }
                other => return Err(unexpected(other, "a simple query")),
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok((collected, columns.into())),
        }
    }

    /// The statement cache, when SQL text goes through it ([`QueryMode::Cached`] with a capacity).
    pub(crate) fn text_cache(&mut self) -> Option<&mut StatementCache> {
        (self.mode == QueryMode::Cached && self.cache.enabled()).then_some(&mut self.cache)
    }

    /// The cached statement for `sql`, prepared (and cached) on a miss.
    async fn cached_statement(&mut self, sql: &str) -> Result<Statement, Error> {
        if let Some(statement) = self.cache.get(sql) {
            return Ok(statement);
        }
        let statement = self.prepare(sql).await?;
        self.cache.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    /// Drops `statement` from the cache if `e` says it went stale (its plan no longer fits; after 26000, the
    /// server lost every prepared statement, so the whole cache goes), so that the next use prepares it
    /// afresh. Whether it was stale: plain queries and pipelines then run it once more where that is safe,
    /// row streams and portals return the error.
    pub(crate) fn forget_if_stale(&mut self, statement: &Statement, e: &Error) -> bool {
        match stale_statement(e) {
            Some(Stale::Plan) => self.cache.remove_statement(statement.name()),
            Some(Stale::AllGone) => self.cache.clear(),
            None => return false,
        }
        true
    }

    /// Runs SQL text through its cached statement. When the server says the cached plan no longer fits (the
    /// schema changed its result type) or the statement is gone (DISCARD ALL, DEALLOCATE), the entry is dropped
    /// and, outside a transaction block, the statement is prepared again and run once more: inside one the
    /// block has already failed, so the error is returned and the next use prepares afresh.
    async fn run_cached(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<(Collected, Arc<[Column]>), Error> {
        let statement = self.cached_statement(sql).await?;
        match self.execute_statement(&statement, params).await {
            Ok(collected) => Ok((collected, statement.columns_arc())),
            Err(e) => {
                if !self.forget_if_stale(&statement, &e) {
                    return Err(e);
                }
                drop(statement);
                if self.transaction_status() != TransactionStatus::Idle {
                    return Err(e);
                }
                tracing::debug!(error = %e, "cached statement went stale; preparing it again");
                let statement = self.cached_statement(sql).await?;
                let collected = self.execute_statement(&statement, params).await?;
                Ok((collected, statement.columns_arc()))
            }
        }
    }

    /// Runs SQL text through the unnamed statement with every round trip standing alone, so it is safe behind
    /// transaction-pooling PgBouncer: one round trip when each parameter's type follows from its Rust value,
    /// else a Describe round trip first to learn them from the server.
    async fn run_unnamed(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<(Collected, Arc<[Column]>), Error> {
        let types = match crate::param_types::infer_all(params) {
            Some(types) => types,
            None => {
                let described = self.prepare_named("", sql, &[]).await?;
                described.params().to_vec()
            }
        };
        if types.len() != params.len() {
            return Err(Error::parameters(types.len(), params.len()));
        }
        let typed: Vec<(Param<'_>, Type)> = params.iter().copied().zip(types).collect();
        let mut collected = self.run_typed(sql, &typed).await?;
        let description = collected.description.take().unwrap_or_default();
        let columns = self.resolve_columns(description).await?;
        Ok((collected, columns.into()))
    }

    async fn execute_statement(
        &mut self,
        statement: &Statement,
        params: &[Param<'_>],
    ) -> Result<Collected, Error> {
        let types = statement.params();
        if types.len() != params.len() {
            return Err(Error::parameters(types.len(), params.len()));
        }
        self.prepare_to_send().await?;
        let columns = statement.columns().len();
        let id = self
            .conn
            .protocol
            .queue_request(Flow::Extended(1), Some(columns), |buf| {
                write_bind(buf, statement.name(), types, params)?;
                frontend::execute("", 0, buf).map_err(encode_error)?;
                frontend::sync(buf);
                Ok(())
            })?;
        self.collect(id).await
    }

    /// Runs SQL with parameters of explicitly given types in one round trip, through the unnamed statement
    /// (nothing is left prepared on the server; works behind transaction-pooling PgBouncer).
    pub async fn query_typed(
        &mut self,
        sql: &str,
        params: &[(Param<'_>, Type)],
    ) -> Result<Vec<Row>, Error> {
        let span = self.request_span("query_typed", Some(sql));
        async {
            let mut collected = self.run_typed(sql, params).await?;
            let description = collected.description.take().unwrap_or_default();
            let columns = self.resolve_columns(description).await?;
            collected.into_rows(columns.into())
        }
        .instrument(span)
        .await
    }

    /// Like [`query_typed`](Self::query_typed), returning the number of rows affected.
    pub async fn execute_typed(
        &mut self,
        sql: &str,
        params: &[(Param<'_>, Type)],
    ) -> Result<u64, Error> {
        let span = self.request_span("execute_typed", Some(sql));
        Ok(self.run_typed(sql, params).instrument(span).await?.affected)
    }

    async fn run_typed(
        &mut self,
        sql: &str,
        params: &[(Param<'_>, Type)],
    ) -> Result<Collected, Error> {
        crate::proto::check_parameter_count(params.len())?;
        self.prepare_to_send().await?;
        let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
        let values: Vec<Param<'_>> = params.iter().map(|(v, _)| *v).collect();
        let id = self
            .conn
            .protocol
            .queue_request(Flow::Extended(1), None, |buf| {
                frontend::parse("", sql, types.iter().map(Type::oid), buf).map_err(encode_error)?;
                write_bind(buf, "", &types, &values)?;
                frontend::describe(b'P', "", buf).map_err(encode_error)?;
                frontend::execute("", 0, buf).map_err(encode_error)?;
                frontend::sync(buf);
                Ok(())
            })?;
        self.collect(id).await
    }

    /// Reads the responses of one Bind/Execute request to its ReadyForQuery.
    async fn collect(&mut self, id: RequestId) -> Result<Collected, Error> {
        let collected = self.read_results(id).await;
        self.conn.check(collected)
    }

    async fn read_results(&mut self, id: RequestId) -> Result<Collected, Error> {
        let mut collected = Collected {
            rows: Vec::new(),
            description: None,
            affected: 0,
        };
        let mut error = None;
        loop {
            match self.conn.next_response(id).await? {
                Backend::Ready => break,
                Backend::Row(raw) => collected.rows.push(raw),
                Backend::Message(Message::CommandComplete(body)) => {
                    collected.affected = rows_affected(body.tag().map_err(Error::malformed)?);
                }
                Backend::Message(Message::RowDescription(body)) => {
                    collected.description = Some(read_description(&body)?);
                }
                Backend::Message(
                    Message::ParseComplete
                    | Message::BindComplete
                    | Message::NoData
                    | Message::EmptyQueryResponse,
                ) => {}
                Backend::Error(db) => {
                    error = Some(Error::db(*db));
                }
                Backend::Message(Message::CopyOutResponse(_) | Message::CopyDone)
                | Backend::CopyData(_) => {}
                other => return Err(unexpected(other, "Bind/Execute")),
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(collected),
        }
    }

    /// Runs one or more SQL statements through the simple query protocol, returning every result.
    ///
    /// Values come back as text. Use [`simple_query_stream`](Self::simple_query_stream) to see rows that
    /// precede an error.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<SimpleQueryMessage>, Error> {
        let mut stream = self.simple_query_stream(sql).await?;
        let mut messages = Vec::new();
        while let Some(message) = stream.next().await? {
            messages.push(message);
        }
        Ok(messages)
    }

    /// Runs one or more SQL statements through the simple query protocol, discarding their results.
    pub async fn batch_execute(&mut self, sql: &str) -> Result<(), Error> {
        let mut stream = self.simple_query_stream(sql).await?;
        while stream.next().await?.is_some() {}
        Ok(())
    }

    /// Starts a simple query and returns a stream of its results in order. A server error comes out of
    /// [`SimpleQueryStream::next`] after the rows that preceded it.
    pub async fn simple_query_stream(&mut self, sql: &str) -> Result<SimpleQueryStream<'_>, Error> {
        let span = self.request_span("simple_query", Some(sql));
        let id = async {
            self.prepare_to_send().await?;
            self.queue_simple(sql)
        }
        .instrument(span.clone())
        .await?;
        let mut results = self.simple_results(id);
        results.span = span;
        Ok(results)
    }

    pub(crate) fn connection_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Session rebuild: whether a drop left SQL to run (a dropped transaction's ROLLBACK).
    pub(crate) fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// Session rebuild: forgets what only the lost connection had (cached statements, deferred SQL, Closes
    /// not sent yet) and returns the names of the statements whose handles are gone.
    pub(crate) fn forget_lost_connection(&mut self) -> Vec<String> {
        self.cache.clear();
        self.deferred.clear();
        match self.close_queue.lock() {
            Ok(mut names) => names.drain(..).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Session rebuild: goes on over `fresh`'s connection, restored already. This client keeps its identity, so
    /// its statement handles stay valid, and keeps what the lost connection received but nobody took yet.
    pub(crate) fn adopt_connection(&mut self, fresh: Client) {
        let Client {
            mut conn,
            cancel_route,
            types,
            ..
        } = fresh;
        conn.take_over_events(&mut self.conn);
        conn.limits.take_over_settings(&self.conn.limits);
        self.conn = conn;
        self.cancel_route = cancel_route;
        self.types = types;
    }

    /// Sends Terminate and closes the connection.
    pub async fn close(mut self) -> Result<(), Error> {
        self.conn.protocol.queue_terminate();
        self.conn.flush_all().await
    }
}

/// The results of a simple query, read one message at a time.
///
/// Dropping the stream before the end is safe: the connection discards the rest of the results on its next
/// call.
pub struct SimpleQueryStream<'a> {
    /// The span of the request, entered while its results are read.
    span: tracing::Span,
    client: &'a mut Client,
    id: RequestId,
    columns: Option<Arc<[SimpleColumn]>>,
    error: Option<Error>,
    done: bool,
    /// The tag of the last CommandComplete (`COMMIT`, `ROLLBACK`, `INSERT 0 1`, ...).
    last_tag: Option<String>,
}

impl SimpleQueryStream<'_> {
    /// Reads to the end and returns the last command tag.
    pub(crate) async fn finish(mut self) -> Result<Option<String>, Error> {
        while self.next().await?.is_some() {}
        Ok(self.last_tag)
    }

    /// The next result message, `Ok(None)` at the end, or the server's error once the statements before it
    /// were delivered.
    pub async fn next(&mut self) -> Result<Option<SimpleQueryMessage>, Error> {
        let span = self.span.clone();
        let message = self.next_message().instrument(span).await;
        if message.is_err() {
            self.done = true;
        }
        self.client.conn.check(message)
    }

    async fn next_message(&mut self) -> Result<Option<SimpleQueryMessage>, Error> {
        if self.done {
            return Ok(None);
        }
        loop {
            let message = self.client.conn.next_response(self.id).await;
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    self.done = true;
                    return Err(e);
                }
            };
            match message {
                Backend::Ready => {
                    self.done = true;
                    return match self.error.take() {
                        Some(e) => Err(e),
                        None => Ok(None),
                    };
                }
                Backend::Row(raw) => {
                    let Some(columns) = &self.columns else {
                        return Err(Error::protocol("DataRow before RowDescription"));
                    };
                    return SimpleQueryRow::new(columns.clone(), raw)
                        .map(|r| Some(SimpleQueryMessage::Row(r)));
                }
                Backend::Message(Message::RowDescription(body)) => {
                    let columns: Arc<[SimpleColumn]> = read_description(&body)?
                        .into_iter()
                        .map(|f| SimpleColumn {
                            name: f.name,
                            type_oid: f.type_oid,
                        })
                        .collect();
                    self.columns = Some(columns.clone());
                    return Ok(Some(SimpleQueryMessage::RowDescription(columns)));
                }
                Backend::Message(Message::CommandComplete(body)) => {
                    self.columns = None;
                    let tag = body.tag().map_err(Error::malformed)?;
                    self.last_tag = Some(tag.to_string());
                    return Ok(Some(SimpleQueryMessage::CommandComplete(rows_affected(
                        tag,
                    ))));
                }
                Backend::Message(Message::EmptyQueryResponse) => {}
                Backend::Error(db) => {
                    self.error = Some(Error::db(*db));
                }
                Backend::Message(Message::CopyOutResponse(_) | Message::CopyDone)
                | Backend::CopyData(_) => {}
                other => return Err(unexpected(other, "a simple query")),
            }
        }
    }
}

/// The SQL text of a statement given as text, for request spans.
pub(crate) fn sql_of<T: ToStatement + ?Sized>(statement: &T) -> Option<&str> {
    match statement.to_statement() {
        StatementRef::Sql(sql) => Some(sql),
        StatementRef::Prepared(_) => None,
    }
}

/// Why a cached statement cannot be used any more.
enum Stale {
    /// Its plan no longer fits: "cached plan must not change result type".
    Plan,
    /// The server no longer has prepared statements of ours ("prepared statement ... does not exist").
    AllGone,
}

fn stale_statement(e: &Error) -> Option<Stale> {
    let db = e.as_db_error()?;
    match db.code() {
        sqlstate::FEATURE_NOT_SUPPORTED if db.message().contains("cached plan") => {
            Some(Stale::Plan)
        }
        sqlstate::INVALID_SQL_STATEMENT_NAME => Some(Stale::AllGone),
        _ => None,
    }
}

/// Writes a Bind of `statement` to the unnamed portal with every parameter type-checked and encoded, and every
/// result column requested in binary.
fn write_bind(
    buf: &mut BytesMut,
    statement: &str,
    types: &[Type],
    params: &[Param<'_>],
) -> Result<(), Error> {
    write_bind_portal(buf, "", statement, types, params)
}

fn read_description(
    body: &postgres_protocol::message::backend::RowDescriptionBody,
) -> Result<Vec<FieldInfo>, Error> {
    body.fields()
        .map(|f| {
            Ok(FieldInfo {
                name: f.name().to_string(),
                type_oid: f.type_oid(),
                table_oid: (f.table_oid() != 0).then_some(f.table_oid()),
                column_id: (f.column_id() != 0).then_some(f.column_id()),
            })
        })
        .collect()
        .map_err(Error::malformed)
}

/// The row count in a CommandComplete tag (`INSERT 0 5`, `UPDATE 3`, `SELECT 10`, ...); 0 for other tags.
pub(crate) fn rows_affected(tag: &str) -> u64 {
    tag.rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn unexpected(message: Backend, during: &str) -> Error {
    let name = match &message {
        Backend::Message(m) => crate::proto::message_name(m),
        Backend::Row(_) => "DataRow",
        Backend::CopyData(_) => "CopyData",
        Backend::Error(_) => "ErrorResponse",
        Backend::Ready => "ReadyForQuery",
    };
    Error::protocol(format!("unexpected {name} in response to {during}"))
}
