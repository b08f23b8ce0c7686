//! The async client: one connection that many futures share through `&Client`.
//!
//! [`Client`] owns a lock around its [`ClientState`] (the connection, the statement and type caches, the
//! session record) and the [`IoWaker`] of that connection. What it may touch: the connection layer
//! (`conn/connection.rs`, `conn/slots.rs`) and the protocol core below it, never a transport directly.
//!
//! Its methods by role:
//! - shared requests (`&self`: queries, prepares, simple queries, pings; files `query.rs`, `prepare.rs`,
//!   `simple_query.rs`): each queues its whole request under the lock, synchronously in its first poll, with
//!   a slot for its answers ([`Request`]); then it awaits them, and while it waits it may drive the socket for
//!   everyone (see `conn/slots.rs`). Requests go out in the order their futures were first polled, so N futures
//!   joined on one client cost about one round trip.
//! - exclusive operations (`&mut self`: transactions, COPY, row streams, portals, pipelines, notification
//!   waits): the borrow checker guarantees no shared request is in flight, except those whose futures were
//!   dropped; [`Client::prepare_to_send`] reads those out first, then the operation drives the connection
//!   alone through [`Client::connection_mut`].
//!
//! Cancel-safety: a request's bookkeeping (the protocol's pending entry and its slot) is made when it is
//! queued, never after an await. A future dropped at any await leaves its slot abandoned (see [`Request`]'s
//! drop): its answers are read and discarded by whoever reads next, and no result reaches the wrong caller.
//!
//! Longer than 800 lines on purpose: [`Client`], its lock and the shared-request machinery (slots polled,
//! the driver handed over, the [`Request`] guard) keep one invariant together: who may read the socket and
//! whose answers it holds. Each operation is in its own file.

#[cfg(all(test, not(target_os = "wasi")))]
mod cancel_tests;
pub(crate) mod connect;
pub(crate) mod copy;
pub(crate) mod cursor;
pub(crate) mod identifier;
#[cfg(feature = "metrics")]
pub(crate) mod meters;
pub(crate) mod notify;
pub(crate) mod param_types;
mod password;
pub(crate) mod pipeline;
pub(crate) mod portal;
pub(crate) mod prepare;
pub(crate) mod query;
pub(crate) mod rebuild;
pub(crate) mod replication;
pub(crate) mod replication_stream;
#[cfg(all(test, feature = "tokio", not(target_os = "wasi")))]
mod replication_tests;
pub(crate) mod semconv;
#[cfg(test)]
mod shared_tests;
pub(crate) mod simple_mode;
pub(crate) mod simple_query;
pub(crate) mod statement_cache;
pub(crate) mod stream;
pub(crate) mod telemetry;
pub(crate) mod timeout;
#[cfg(all(test, feature = "tokio", not(target_os = "wasi")))]
mod tracing_tests;
pub(crate) mod transaction;
pub(crate) mod typeinfo;

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use postgres_types::ToSql;
use tracing::Instrument as _;

use crate::config::QueryMode;
use crate::conn::connection::Connection;
use crate::proto::row::SimpleQueryMessage;
use crate::proto::{Backend, Flow, Notification, RequestId, TransactionStatus};
// Shared with the hosts' API of the sans-IO core.
use crate::client::semconv::Peer;
use crate::client::simple_query::SimpleQueryStream;
use crate::client::statement_cache::StatementCache;
use crate::client::telemetry::{Describe, Pending, Traced, Work};
use crate::conn::slots::IoWaker;
use crate::proto::statement::{CloseQueue, Statement};
pub(crate) use crate::proto::{encode_error, write_bind_portal};
use crate::{Config, DbError, Error};

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

/// A connection to a PostgreSQL server, shared by as many tasks as you like.
///
/// Queries take `&self`: share a client by reference (`&Client`, or an `Arc<Client>` across spawned tasks
/// natively; it is `Send + Sync` there). Concurrent calls are pipelined on the one connection, in the order
/// their futures are first polled, and each gets its own results:
///
/// ```no_run
/// # async fn demo(client: &wasi_pg_client::Client) -> Result<(), wasi_pg_client::Error> {
/// // Two queries, one round trip.
/// let (a, b) = futures_join(
///     client.query_one("SELECT $1::int4", &[&1i32]),
///     client.query_one("SELECT $1::int4", &[&2i32]),
/// )
/// .await;
/// assert_eq!(a?.get::<_, i32>(0) + b?.get::<_, i32>(0), 3);
/// # Ok(()) }
/// # async fn futures_join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) { (a.await, b.await) }
/// ```
///
/// There is no background task: the futures waiting on the client take turns driving its socket, so the
/// client works with plain `join`/`select` on WASI's single-threaded runtime as on tokio (current-thread or
/// multi-threaded). A future that is alive must be polled or dropped: like a lock guard, one held unpolled
/// while it drives the socket stalls the others.
///
/// What needs the connection alone takes `&mut self`, so it cannot overlap shared calls: transactions
/// ([`transaction`](Self::transaction)), COPY ([`copy_in`](Self::copy_in), [`copy_out`](Self::copy_out)), row
/// streams ([`query_raw`](Self::query_raw)), portals and cursors (on a [`Transaction`](crate::Transaction)),
/// [`Pipeline`](crate::Pipeline)s, and settings of this client ([`set_query_timeout`](Self::set_query_timeout)).
/// Inside a [`Transaction`](crate::Transaction), queries take `&self` again and are pipelined the same way.
/// Waiting for notifications ([`next_notification`](Self::next_notification)) takes `&self`: a task can wait
/// while others query.
///
/// Errors belong to the request that caused them: each request has its own Sync, so one failing statement
/// does not fail its neighbours (except inside an explicit transaction block, which PostgreSQL aborts as a
/// whole). A broken connection fails every request in flight.
pub struct Client {
    state: Mutex<ClientState>,
    /// The waker the transport and the timers see; it wakes whichever future drives the socket now.
    io: Arc<IoWaker>,
    /// `io` as a waker, made once.
    io_waker: Waker,
    id: u64,
    /// How SQL text runs.
    mode: QueryMode,
    /// Whether request spans record the statement text ([`Config::trace_statements`]).
    trace_statements: bool,
    /// The server as telemetry names it (database, address, port).
    peer: Arc<Peer>,
    close_queue: CloseQueue,
}

/// What the lock of a [`Client`] guards.
pub(crate) struct ClientState {
    pub(crate) conn: Connection,
    next_statement: u64,
    pub(crate) types: typeinfo::TypeCache,
    /// SQL to run before the next request, queued synchronously by drops that cannot await (a transaction
    /// dropped without commit leaves its ROLLBACK here).
    deferred: Vec<String>,
    /// `Transaction` values alive on this client (savepoints included). While any is, a lost connection is
    /// never rebuilt under it: its calls would otherwise run in autocommit on the new session.
    pub(crate) open_transactions: u32,
    /// The spans of the open transactions and savepoints, innermost last: the parents of request spans.
    pub(crate) transaction_spans: Vec<tracing::Span>,
    /// How to reach the same server again for a cancel request (address and TLS settings).
    /// Named statements prepared for SQL text in [`QueryMode::Cached`].
    pub(crate) cache: StatementCache,
    /// What session rebuild restores, when [`Config::session_rebuild`] is on (see `rebuild.rs`).
    pub(crate) session: Option<Box<crate::client::rebuild::SessionRecord>>,
    /// The request whose future drove the socket last (see `conn/slots.rs`).
    driver: Option<Driver>,
    /// The driver waits on the socket (or was woken to read it): other futures polled meanwhile leave the
    /// socket to it instead of asking the transport again (on WASI each ask is a host call).
    armed: bool,
    /// A future queued bytes while the driver waited, and woke it to send them.
    write_wake_sent: bool,
    /// Numbers the futures that wait for notifications (see `notify.rs`).
    next_listener: u64,
    /// A session rebuild is under way (see `rebuild.rs`), and the futures waiting for it.
    pub(crate) rebuild: crate::client::rebuild::RebuildGate,
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

impl Client {
    pub(crate) fn from_connection(mut conn: Connection, config: &Config) -> Client {
        let target = conn.cancel_route.as_ref().and_then(|r| r.target.as_ref());
        let peer = Arc::new(Peer::of(config, target));
        conn.limits.query_timeout = config.get_query_timeout();
        conn.limits.read_timeout = config.get_read_timeout();
        let io = Arc::new(IoWaker::default());
        Client {
            state: Mutex::new(ClientState {
                conn,
                next_statement: 1,
                types: typeinfo::TypeCache::default(),
                deferred: Vec::new(),
                open_transactions: 0,
                transaction_spans: Vec::new(),
                cache: StatementCache::new(config.get_statement_cache_capacity()),
                session: crate::client::rebuild::SessionRecord::for_config(config),
                driver: None,
                armed: false,
                write_wake_sent: false,
                next_listener: 1,
                rebuild: crate::client::rebuild::RebuildGate::default(),
            }),
            io_waker: Waker::from(io.clone()),
            io,
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            mode: config.get_query_mode(),
            trace_statements: config.get_trace_statements(),
            peer,
            close_queue: CloseQueue::default(),
        }
    }

    /// The state, locked. Never held across an await, while waking, or while dropping user values.
    pub(crate) fn lock(&self) -> MutexGuard<'_, ClientState> {
        // A panic elsewhere while the lock was held leaves the state as consistent as any early return would:
        // every change is made in one step.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state, for an exclusive operation: no lock is needed, as `&mut self` excludes every other caller.
    pub(crate) fn state_mut(&mut self) -> &mut ClientState {
        self.state.get_mut().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection, for an exclusive operation.
    pub(crate) fn connection_mut(&mut self) -> &mut Connection {
        &mut self.state_mut().conn
    }

    /// This client's id: it keeps statement names apart when several clients share a backend.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Where dropped [`Statement`]s leave their names to be closed.
    pub(crate) fn close_queue(&self) -> &CloseQueue {
        &self.close_queue
    }

    /// The telemetry of one request (see `telemetry.rs`): its `request` span, under the innermost open
    /// transaction's span, with what kind of call it is, the backend it runs on, the conventions' attributes,
    /// and the SQL text when [`Config::trace_statements`] is on. Parameters never enter it.
    pub(crate) fn telemetry(&self, kind: &'static str, work: Work<'_>) -> Traced {
        self.telemetry_under(kind, work, None)
    }

    /// [`telemetry`](Self::telemetry) under `parent` instead of the innermost transaction's span.
    pub(crate) fn telemetry_under(
        &self,
        kind: &'static str,
        work: Work<'_>,
        parent: Option<tracing::Span>,
    ) -> Traced {
        // The level check is one atomic load: with no subscriber at DEBUG, no lock is taken.
        let (parent, backend_pid) = if tracing::level_enabled!(tracing::Level::DEBUG) {
            let state = self.lock();
            let pid = state.conn.protocol.backend_key().map(|k| k.process_id);
            (
                parent.or_else(|| state.transaction_spans.last().cloned()),
                pid,
            )
        } else {
            (None, None)
        };
        Traced::start(Describe {
            kind,
            work,
            peer: &self.peer,
            backend_pid,
            trace_statements: self.trace_statements,
            parent,
        })
    }

    /// The server as telemetry names it.
    pub(crate) fn peer(&self) -> &Peer {
        &self.peer
    }

    /// How SQL text runs on this connection (from [`Config::query_mode`]).
    pub fn query_mode(&self) -> QueryMode {
        self.mode
    }

    /// How many prepared statements the statement cache holds now.
    pub fn cached_statements(&self) -> usize {
        self.lock().cache.len()
    }

    /// Whether the connection is encrypted with TLS.
    pub fn uses_tls(&self) -> bool {
        self.lock()
            .conn
            .cancel_route
            .as_ref()
            .is_some_and(|r| r.tls.is_some())
    }

    /// A token that cancels the query running on this connection, usable without access to the client: from
    /// another task natively, or as a future joined with the query on WASI. With [`Config::session_rebuild`]
    /// it follows the client to its rebuilt sessions. See [`CancelToken`].
    ///
    /// PostgreSQL's cancel names no query: it stops whatever the backend runs when it arrives. With several
    /// requests in flight on this client, that is the oldest unfinished one, which may be a neighbour's; the
    /// request it stops fails with SQLSTATE 57014 (`query_canceled`), never silently. To stop one request of
    /// your own, prefer a query timeout ([`Config::query_timeout`]): it cancels only while that request is
    /// the one the server runs (see the README's "Sharing a client" for the one request behind it that
    /// PostgreSQL's cancel can still reach).
    ///
    /// [`CancelToken`]: crate::CancelToken
    pub fn cancel_token(&self) -> crate::CancelToken {
        let state = self.lock();
        let token = state.conn.cancel_token();
        match &state.session {
            Some(session) => token.following(session.current_session()),
            None => token,
        }
    }

    /// How long the server may take to answer each request before it is cancelled (see
    /// [`Config::query_timeout`]); `None` for no limit.
    pub fn query_timeout(&self) -> Option<std::time::Duration> {
        self.lock().conn.limits.query_timeout
    }

    /// Sets the query timeout for the requests this client sends from now on (`None` or zero: no limit),
    /// replacing [`Config::query_timeout`] for this connection.
    pub fn set_query_timeout(&mut self, timeout: impl Into<Option<std::time::Duration>>) {
        self.connection_mut().limits.query_timeout = timeout.into().filter(|t| !t.is_zero());
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
    /// returns the transaction status that ReadyForQuery reported.
    pub async fn ping(&self) -> Result<TransactionStatus, Error> {
        self.telemetry("ping", Work::Other)
            .run(async {
                self.before_request().await?;
                let mut request = self.start_simple("")?;
                let mut status = TransactionStatus::Idle;
                request
                    .read(|message, state| match message {
                        Backend::Ready => {
                            status = state.conn.protocol.transaction_status();
                            Ok(ControlFlow::Break(()))
                        }
                        _ => Ok(ControlFlow::Continue(())),
                    })
                    .await?;
                Ok(status)
            })
            .await
    }

    /// Whether the connection is closed or broken; a closed client only returns errors, unless
    /// [`Config::session_rebuild`] is on: then its next call connects again.
    pub fn is_closed(&self) -> bool {
        self.lock().conn.protocol.is_closed()
    }

    /// The process id of the server backend (from BackendKeyData).
    pub fn backend_pid(&self) -> Option<i32> {
        self.lock()
            .conn
            .protocol
            .backend_key()
            .map(|k| k.process_id)
    }

    /// The transaction status reported by the server's last ReadyForQuery.
    ///
    /// With requests in flight (several futures sharing the client, or a request whose future was dropped),
    /// this is the status after the last one answered so far.
    pub fn transaction_status(&self) -> TransactionStatus {
        self.lock().conn.protocol.transaction_status()
    }

    /// Whether requests of dropped futures still await their answers, or drops left SQL to run before the next
    /// request (the ROLLBACK of a dropped transaction): until the next call settles them,
    /// [`transaction_status`](Self::transaction_status) may be out of date.
    #[cfg(feature = "pool")]
    pub(crate) fn has_unfinished_requests(&self) -> bool {
        let state = self.lock();
        state.conn.protocol.has_pending() || !state.deferred.is_empty()
    }

    /// A run-time parameter the server reported, such as `server_version`, `TimeZone` or `DateStyle`.
    pub fn parameter(&self, name: &str) -> Option<String> {
        self.lock()
            .conn
            .protocol
            .parameter(name)
            .map(str::to_string)
    }

    /// Notifications received so far (from `LISTEN`), oldest first; they are removed from the client.
    pub fn take_notifications(&self) -> Vec<Notification> {
        self.lock().conn.take_notifications()
    }

    /// Notices and warnings received so far, oldest first; they are removed from the client. Each notice is
    /// also emitted as a `tracing` event. At most the newest 1024 are kept; none while a handler set with
    /// [`set_notice_handler`](Self::set_notice_handler) takes them instead.
    pub fn take_notices(&self) -> Vec<DbError> {
        self.lock().conn.take_notices()
    }

    /// Gets the connection ready for an exclusive operation: rebuilds a lost session if configured, reads and
    /// discards what requests of dropped futures still have coming, then queues what drops left to send.
    ///
    /// An exclusive operation never queues behind an unanswered request: if that one turned into COPY FROM
    /// STDIN, the server would read the operation's messages as COPY data. If this future is dropped while
    /// draining, nothing was queued.
    pub(crate) async fn prepare_to_send(&mut self) -> Result<(), Error> {
        self.before_request().await?;
        let close_queue = self.close_queue.clone();
        let state = self.state_mut();
        state.conn.drain_abandoned().await?;
        state.queue_housekeeping(&close_queue)
    }

    /// Asks for `sql` to run (through the simple protocol, results discarded) before the next request.
    pub(crate) fn defer(&self, sql: String) {
        self.lock().deferred.push(sql);
    }

    /// What a shared request awaits before it is queued: a lost session is rebuilt (if configured), and
    /// requests of dropped futures are read out if no other future has a request in flight.
    ///
    /// That keeps a request from being pipelined behind one whose caller went away: if that one turned into
    /// COPY FROM STDIN (which only [`copy_in`](Self::copy_in) streams; other calls refuse it), the server
    /// would read our request as COPY data. Behind the requests of live futures, requests are pipelined; a
    /// COPY FROM STDIN started there breaks the connection with an error saying so (see `proto/`).
    pub(crate) async fn before_request(&self) -> Result<(), Error> {
        self.rebuild_if_lost().await?;
        let last = {
            let mut state = self.lock();
            if state.conn.slots.has_live() {
                return Ok(());
            }
            let Some(last) = state.conn.protocol.last_pending() else {
                return Ok(());
            };
            state.conn.slots.adopt(last);
            last
        };
        // Requests finish in order: once the newest abandoned one has, all have.
        let mut request = self.request(last);
        let settled = request
            .read(|message, state| match message {
                Backend::Ready if !state.conn.protocol.is_pending(last) => {
                    Ok(ControlFlow::Break(()))
                }
                _ => Ok(ControlFlow::Continue(())),
            })
            .await;
        match settled {
            // The abandoned request outlived the query timeout and was cancelled: the connection is in step,
            // and that was nobody's error but the dropped caller's.
            Err(e) if e.kind() == crate::ErrorKind::Timeout && !e.is_connection_broken() => Ok(()),
            settled => settled,
        }
    }

    /// Queues a shared request: what drops left to send first, then the request `write` encodes, with a slot
    /// for its answers. Synchronous: called in the first poll of the caller's future, so requests go out in
    /// the order their futures were first polled.
    pub(crate) fn start(
        &self,
        flow: Flow,
        row_columns: Option<usize>,
        write: impl FnOnce(&mut BytesMut) -> Result<(), Error>,
    ) -> Result<Request<'_>, Error> {
        let mut state = self.lock();
        state.queue_housekeeping(&self.close_queue)?;
        let id = state
            .conn
            .protocol
            .queue_request(flow, row_columns, write)?;
        state.conn.slots.open(id);
        Ok(Request { client: self, id })
    }

    /// Queues one simple Query as a shared request.
    pub(crate) fn start_simple(&self, sql: &str) -> Result<Request<'_>, Error> {
        check_sql(sql)?;
        self.start(Flow::Simple, None, |buf| {
            frontend::query(sql, buf).map_err(encode_error)
        })
    }

    /// Queues one simple Query for an exclusive operation, which called
    /// [`prepare_to_send`](Self::prepare_to_send); read its results with
    /// [`simple_results`](Self::simple_results).
    pub(crate) fn queue_simple(&mut self, sql: &str) -> Result<RequestId, Error> {
        check_sql(sql)?;
        self.connection_mut()
            .protocol
            .queue_request(Flow::Simple, None, |buf| {
                frontend::query(sql, buf).map_err(encode_error)
            })
    }

    /// The results of a simple Query queued by an exclusive operation, read in the current span.
    pub(crate) fn simple_results(&self, id: RequestId) -> SimpleQueryStream<'_> {
        SimpleQueryStream::new(self.request(id), Pending::current())
    }

    /// The request `id`, queued by an exclusive operation, read like a shared one (it has no slot: nothing
    /// else waits on the client).
    pub(crate) fn request(&self, id: RequestId) -> Request<'_> {
        Request { client: self, id }
    }

    /// Polls for the next answer to request `id`, driving the socket if none is waiting in its slot.
    fn poll_answer(&self, id: RequestId, cx: &mut Context<'_>) -> Poll<Result<Backend, Error>> {
        let mut state = self.lock();
        let poll = state.poll_answer(id, cx, self);
        if poll.is_ready() {
            // The caller may not poll again soon (a stream handing out one row): another waiter drives.
            state.step_back(Driver::Request(id));
        }
        let wakes = state.conn.slots.take_wakes();
        drop(state);
        wakes.into_iter().for_each(Waker::wake);
        poll
    }

    /// The owner of request `id` leaves: its slot is closed (or abandoned while the server still answers it),
    /// and if it drove the socket, another waiting future is woken to take over.
    fn release(&self, id: RequestId) {
        let mut state = self.lock();
        let pending = state.conn.protocol.is_pending(id);
        state.conn.slots.close(id, pending);
        state.step_back(Driver::Request(id));
        let wakes = state.conn.slots.take_wakes();
        drop(state);
        wakes.into_iter().for_each(Waker::wake);
    }

    /// Runs one or more SQL statements through the simple query protocol, returning every result.
    ///
    /// Values come back as text. Use [`simple_query_stream`](Self::simple_query_stream) to see rows that
    /// precede an error.
    pub async fn simple_query(&self, sql: &str) -> Result<Vec<SimpleQueryMessage>, Error> {
        let mut stream = self.simple_query_stream(sql).await?;
        let mut messages = Vec::new();
        while let Some(message) = stream.next().await? {
            messages.push(message);
        }
        Ok(messages)
    }

    /// Runs one or more SQL statements through the simple query protocol, discarding their results.
    pub async fn batch_execute(&self, sql: &str) -> Result<(), Error> {
        let stream = self.simple_query_stream(sql).await?;
        stream.finish().await.map(drop)
    }

    /// Starts a simple query and returns a stream of its results in order. A server error comes out of
    /// [`SimpleQueryStream::next`] after the rows that preceded it.
    pub async fn simple_query_stream(&self, sql: &str) -> Result<SimpleQueryStream<'_>, Error> {
        let traced = self.telemetry("simple_query", Work::Sql(sql));
        let span = traced.span().clone();
        let request = async {
            self.before_request().await?;
            self.start_simple(sql)
        }
        .instrument(span)
        .await;
        match request {
            Ok(request) => Ok(SimpleQueryStream::new(request, Pending::new(traced))),
            Err(e) => {
                traced.end(Some(&e));
                Err(e)
            }
        }
    }

    /// Passes a result through; an error that broke the connection marks it broken first, and wakes every
    /// future waiting on it to see that.
    pub(crate) fn check<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        if let Err(e) = &result
            && e.is_connection_broken()
        {
            let mut state = self.lock();
            state.conn.protocol.mark_broken(e);
            state.conn.slots.wake_all();
            let wakes = state.conn.slots.take_wakes();
            drop(state);
            wakes.into_iter().for_each(Waker::wake);
        }
        result
    }

    /// Session rebuild: whether a drop left SQL to run (a dropped transaction's ROLLBACK).
    pub(crate) fn has_deferred(&self) -> bool {
        !self.lock().deferred.is_empty()
    }

    /// Session rebuild: forgets what only the lost connection had (cached statements, deferred SQL, Closes
    /// not sent yet) and returns the names of the statements whose handles are gone.
    pub(crate) fn forget_lost_connection(&self) -> Vec<String> {
        {
            let mut state = self.lock();
            state.cache.clear();
            state.deferred.clear();
        }
        match self.close_queue.lock() {
            Ok(mut names) => names.drain(..).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Session rebuild: goes on over `fresh`'s connection, restored already. This client keeps its identity, so
    /// its statement handles stay valid, and keeps what the lost connection received but nobody took yet.
    /// `then` runs under the same lock, in the same step.
    pub(crate) fn adopt_connection(&self, fresh: Client, then: impl FnOnce(&mut ClientState)) {
        let ClientState {
            mut conn, types, ..
        } = fresh
            .state
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        let mut state = self.lock();
        conn.take_over_events(&mut state.conn);
        conn.limits.take_over_settings(&state.conn.limits);
        // Futures still waiting on the lost connection were failed by its break; their slots go with it.
        state.conn.slots.wake_all();
        let wakes = state.conn.slots.take_wakes();
        state.conn = conn;
        state.types = types;
        state.driver = None;
        state.armed = false;
        then(&mut state);
        drop(state);
        wakes.into_iter().for_each(Waker::wake);
    }

    /// Sends Terminate and closes the connection.
    pub async fn close(mut self) -> Result<(), Error> {
        let conn = self.connection_mut();
        conn.protocol.queue_terminate();
        conn.flush_all().await
    }
}

impl ClientState {
    /// Queues what drops left to send before the next request: the ROLLBACK of dropped transactions, then
    /// Close for statements whose handles were all dropped. Their answers are discarded like those of an
    /// abandoned request. If the connection broke, the server ends the transaction anyway when it goes.
    pub(crate) fn queue_housekeeping(&mut self, close_queue: &CloseQueue) -> Result<(), Error> {
        for sql in std::mem::take(&mut self.deferred) {
            check_sql(&sql)?;
            self.conn
                .protocol
                .queue_request(Flow::Simple, None, |buf| {
                    frontend::query(&sql, buf).map_err(encode_error)
                })?;
        }
        let names: Vec<String> = match close_queue.lock() {
            Ok(mut names) if !names.is_empty() => names.drain(..).collect(),
            _ => return Ok(()),
        };
        if let Some(session) = &mut self.session {
            session.forget_statements(&names);
        }
        if self.conn.protocol.is_closed() {
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

    /// A name for a new named statement of client `client_id`.
    pub(crate) fn next_statement_name(&mut self, client_id: u64) -> String {
        // The client id keeps names apart when several clients of a process share a backend (session poolers,
        // PGlite).
        let name = format!("wpc{client_id}_{}", self.next_statement);
        self.next_statement += 1;
        name
    }

    /// The next answer to request `id`: one routed to its slot, a DataRow buffered whole (the fast path of
    /// results), or whatever the connection reads now, with this future as the driver.
    fn poll_answer(
        &mut self,
        id: RequestId,
        cx: &mut Context<'_>,
        client: &Client,
    ) -> Poll<Result<Backend, Error>> {
        if let Some(answer) = self.conn.slots.take(id) {
            return Poll::Ready(answer);
        }
        if self.conn.limits.expiry.is_none() {
            match self.conn.protocol.poll_data_row(id) {
                Ok(Some(row)) => return Poll::Ready(Ok(Backend::Row(row))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(self.broke(e))),
            }
        }
        self.conn.slots.register(id, cx.waker());
        let me = Driver::Request(id);
        if self.leave_to_driver(me, client) {
            return Poll::Pending;
        }
        self.start_driving(me, cx, client);
        let mut io_cx = Context::from_waker(&client.io_waker);
        match self.conn.poll_next(&mut io_cx, Some(id)) {
            Poll::Ready(Ok(Some(message))) => Poll::Ready(Ok(message)),
            Poll::Ready(Ok(None)) => Poll::Ready(Err(Error::protocol(
                "BUG: a request finished before its responses were read",
            ))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.broke(e))),
            Poll::Pending => {
                self.armed = true;
                Poll::Pending
            }
        }
    }

    /// Whether another future drives the socket and will read it: then `me` waits for its answers to be
    /// routed to it. Bytes queued meanwhile (this future's request) are the driver's to send: it is woken
    /// once to send them all in one write.
    fn leave_to_driver(&mut self, me: Driver, client: &Client) -> bool {
        if !self.armed || self.driver.is_none_or(|driver| driver == me) {
            return false;
        }
        if !self.write_wake_sent && !self.conn.protocol.poll_transmit().is_empty() {
            self.write_wake_sent = true;
            if let Some(driver) = client.io.driver_waker() {
                self.conn.slots.defer_wake(driver);
            }
        }
        true
    }

    /// `me` drives the socket now; the transport and the timers only ever see the io waker, which wakes it
    /// (see `conn/slots.rs`).
    fn start_driving(&mut self, me: Driver, cx: &Context<'_>, client: &Client) {
        self.driver = Some(me);
        self.armed = false;
        self.write_wake_sent = false;
        client.io.set_driver(cx.waker());
    }

    /// `me` stops driving the socket (it got what it waited for, or went away): a waiting future is woken to
    /// take over. Also when nobody drives: `me` may have been woken to take over and leave without driving
    /// (its answers had been routed to it meanwhile), so it passes that on.
    pub(crate) fn step_back(&mut self, me: Driver) {
        // `me` no longer waits: it must not be its own successor.
        match me {
            Driver::Request(id) => self.conn.slots.unregister(id),
            Driver::Listener(listener) => self.conn.slots.forget_listener(listener),
        }
        if self.driver.is_none_or(|driver| driver == me) {
            self.driver = None;
            self.armed = false;
            self.conn.slots.wake_successor();
        }
    }

    /// A number for a new future that waits for notifications.
    pub(crate) fn new_listener(&mut self) -> u64 {
        let id = self.next_listener;
        self.next_listener += 1;
        id
    }

    /// The next notification for listener `listener`: one received already, or, driving the socket, the
    /// next to arrive. Answers to requests in flight are routed on the way, as any driver does.
    pub(crate) fn poll_notification(
        &mut self,
        listener: u64,
        cx: &mut Context<'_>,
        client: &Client,
    ) -> Poll<Result<Notification, Error>> {
        if let Some(notification) = self.conn.take_notification() {
            return Poll::Ready(Ok(notification));
        }
        // A dropped transaction's ROLLBACK must go out: notifications are delivered outside transactions only.
        if let Err(e) = self.queue_housekeeping(client.close_queue()) {
            return Poll::Ready(Err(e));
        }
        self.conn.slots.register_listener(listener, cx.waker());
        let me = Driver::Listener(listener);
        if self.leave_to_driver(me, client) {
            return Poll::Pending;
        }
        self.start_driving(me, cx, client);
        let mut io_cx = Context::from_waker(&client.io_waker);
        match self.conn.poll_notification(&mut io_cx) {
            Poll::Ready(Ok(notification)) => Poll::Ready(Ok(notification)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.broke(e))),
            Poll::Pending => {
                self.armed = true;
                Poll::Pending
            }
        }
    }

    /// Listener `listener` goes away: it no longer gets woken, and if it drove the socket another waiting
    /// future takes over.
    pub(crate) fn release_listener(&mut self, listener: u64) {
        self.conn.slots.forget_listener(listener);
        self.step_back(Driver::Listener(listener));
    }

    /// Passes an error on; if it broke the connection, every future waiting on it is woken to see that.
    pub(crate) fn broke(&mut self, e: Error) -> Error {
        self.conn.protocol.mark_broken(&e);
        if self.conn.protocol.is_closed() {
            self.conn.slots.wake_all();
        }
        e
    }
}

/// The future that drove the socket last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Driver {
    /// The owner of this request.
    Request(RequestId),
    /// The future with this number that waits for a notification.
    Listener(u64),
}

/// A request queued on a [`Client`], from the future that waits for its answers.
///
/// Dropping it at any point is safe: its slot is abandoned, and its remaining answers are read and discarded
/// by whoever reads next.
pub(crate) struct Request<'c> {
    client: &'c Client,
    id: RequestId,
}

impl<'c> Request<'c> {
    /// The request's id.
    pub(crate) fn id(&self) -> RequestId {
        self.id
    }

    /// The client the request was queued on.
    pub(crate) fn client(&self) -> &'c Client {
        self.client
    }

    /// The next answer.
    pub(crate) async fn next(&mut self) -> Result<Backend, Error> {
        std::future::poll_fn(|cx| self.client.poll_answer(self.id, cx)).await
    }

    /// Hands answers to `visit` as they come, under one lock for as many as are available, until it returns
    /// `Break` or fails.
    pub(crate) async fn read(
        &mut self,
        mut visit: impl FnMut(Backend, &mut ClientState) -> Result<ControlFlow<()>, Error>,
    ) -> Result<(), Error> {
        std::future::poll_fn(|cx| {
            let mut state = self.client.lock();
            let poll = loop {
                match state.poll_answer(self.id, cx, self.client) {
                    Poll::Ready(Ok(message)) => match visit(message, &mut state) {
                        Ok(ControlFlow::Continue(())) => continue,
                        Ok(ControlFlow::Break(())) => break Poll::Ready(Ok(())),
                        Err(e) => break Poll::Ready(Err(state.broke(e))),
                    },
                    Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
                    Poll::Pending => break Poll::Pending,
                }
            };
            if poll.is_ready() {
                state.step_back(Driver::Request(self.id));
            }
            let wakes = state.conn.slots.take_wakes();
            drop(state);
            wakes.into_iter().for_each(Waker::wake);
            poll
        })
        .await
    }
}

impl Drop for Request<'_> {
    fn drop(&mut self) {
        self.client.release(self.id);
    }
}

/// Refuses SQL that cannot go on the wire.
fn check_sql(sql: &str) -> Result<(), Error> {
    if sql.contains('\0') {
        return Err(Error::config("the SQL text contains a NUL byte"));
    }
    Ok(())
}

/// The SQL text of a statement given as text, for request spans.
/// What `statement` runs, for its telemetry.
pub(crate) fn work_of<T: ToStatement + ?Sized>(statement: &T) -> Work<'_> {
    match statement.to_statement() {
        StatementRef::Sql(sql) => Work::Sql(sql),
        StatementRef::Prepared(statement) => Work::Statement(statement),
    }
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
        Backend::CopyBoth => "CopyBothResponse",
        Backend::Error(_) => "ErrorResponse",
        Backend::Ready => "ReadyForQuery",
    };
    Error::protocol(format!("unexpected {name} in response to {during}"))
}
