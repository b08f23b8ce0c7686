//! Query cancellation, and the time limits of the driver that rely on it.
//!
//! PostgreSQL cancels a running query through a second connection: a CancelRequest carrying the session's
//! backend key, which the server answers only by closing that connection once it has signalled the session's
//! backend. A [`CancelToken`] holds everything a cancel needs (where the server is, how the session negotiated
//! TLS, and the key), so it works while the client is busy with the query: from another task natively, or as a
//! second future joined with the query on WASI's single-threaded runtime.
//!
//! The driver (`connection.rs`) enforces two time limits with the timers of `runtime.rs`; the sans-IO core
//! never sees a clock:
//! - the query timeout ([`Config::query_timeout`](crate::Config::query_timeout),
//!   [`Client::set_query_timeout`](crate::Client::set_query_timeout)): a request not answered in time is
//!   cancelled on the server and read out to its ReadyForQuery; the caller gets [`ErrorKind::Timeout`] and the
//!   connection stays usable.
//! - the read deadline ([`Config::read_timeout`](crate::Config::read_timeout)): a request that waited that long
//!   without receiving a byte fails with [`ErrorKind::Timeout`] and breaks the connection, whose protocol is out
//!   of step after a lost read.
//!
//! [`ErrorKind::Timeout`]: crate::ErrorKind::Timeout

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::conn::dial::CancelRoute;
use crate::proto::{BackendKey, RequestId};
use crate::transport::{Transport, write_all};
use crate::{Error, transport::runtime};

/// The least time a timed-out request's cancel and read-out get before the connection is given up.
const MIN_CANCEL_GRACE: Duration = Duration::from_secs(5);

/// A boxed future the driver keeps across polls: `Send` on native targets, as the client is.
#[cfg(not(target_os = "wasi"))]
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// A boxed future the driver keeps across polls: `Send` on native targets, as the client is.
#[cfg(target_os = "wasi")]
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// Cancels the query a client is running, without access to the client.
///
/// Made by [`Client::cancel_token`](crate::Client::cancel_token). It is `Clone`, and `Send + Sync` on native
/// targets, so another task can hold it while the client runs a query. On WASI, where one task runs everything,
/// join [`cancel_query`](Self::cancel_query) with the query as a second future.
///
/// ```no_run
/// # async fn demo(client: &mut wasi_pg_client::Client) -> Result<(), wasi_pg_client::Error> {
/// use std::time::Duration;
///
/// let token = client.cancel_token();
/// tokio::spawn(async move {
///     tokio::time::sleep(Duration::from_secs(1)).await;
///     token.cancel_query().await
/// });
/// let err = client.query("SELECT pg_sleep(30)", &[]).await.unwrap_err();
/// assert_eq!(err.code(), Some(wasi_pg_client::sqlstate::QUERY_CANCELED));
/// // The connection is fine: only the query was cancelled.
/// client.query_one("SELECT 1", &[]).await?;
/// # Ok(()) }
/// ```
///
/// # Across a session rebuild
///
/// With [`Config::session_rebuild`](crate::Config::session_rebuild), a token follows its client: once the
/// client has rebuilt its session on a new connection, the token cancels there, as a token taken afresh would
/// (libpq's `PQgetCancel` after `PQreset`). A token names the client's session, never a query: each cancel
/// acts on the session the client runs when the cancel starts (when [`cancel_query`](Self::cancel_query) is
/// first polled).
/// - A cancel that starts while a query runs on the lost session goes to that session, even if the client
///   rebuilds meanwhile: the rebuild only happens on the call after the one that failed, so the query it was
///   meant for never runs on the new session. Its backend is gone; the server checks the secret key as well as
///   the process id, so a backend that reuses that id is not hit.
/// - A rebuild restores the new session (settings, `LISTEN`s, prepared statements) before its tokens move to
///   it, in one step with the client, so no cancel ever hits the restore.
/// - A cancel that starts after the rebuild cancels whatever the client runs then.
#[derive(Debug, Clone)]
pub struct CancelToken {
    /// The session the token was taken on.
    taken: CancelTarget,
    /// With session rebuild, the client's current session, which supersedes `taken` once a rebuild set it.
    current: Option<CurrentSession>,
}

/// Where a cancel request for one session goes, and the key it carries.
#[derive(Debug, Clone)]
struct CancelTarget {
    route: Option<CancelRoute>,
    key: Option<BackendKey>,
}

/// The session a rebuilding client runs now, shared with its cancel tokens: empty until the first rebuild
/// replaces the session the client connected with, then the latest rebuilt session.
#[derive(Debug, Clone, Default)]
pub(crate) struct CurrentSession(Arc<Mutex<Option<CancelTarget>>>);

impl CurrentSession {
    /// The client runs on `token`'s session from now on.
    pub(crate) fn take_on(&self, token: &CancelToken) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(token.taken.clone());
    }

    fn get(&self) -> Option<CancelTarget> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl CancelToken {
    /// A token for one session: its route and key.
    pub(crate) fn new(route: Option<CancelRoute>, key: Option<BackendKey>) -> CancelToken {
        CancelToken {
            taken: CancelTarget { route, key },
            current: None,
        }
    }

    /// This token, following the client to the sessions a rebuild sets in `current`.
    pub(crate) fn following(self, current: CurrentSession) -> CancelToken {
        CancelToken {
            current: Some(current),
            ..self
        }
    }

    /// The session a cancel starting now goes to.
    fn target(&self) -> CancelTarget {
        self.current
            .as_ref()
            .and_then(CurrentSession::get)
            .unwrap_or_else(|| self.taken.clone())
    }

    /// Asks the server to cancel what the session is running now, and returns once the server has taken the
    /// request: it opens a new connection to the same server (TLS negotiated exactly as the session's was,
    /// plaintext if the session is plaintext), sends a CancelRequest with the session's key, and waits until
    /// the server closes that connection.
    ///
    /// The server does not say whether anything was cancelled. A running query fails with SQLSTATE 57014
    /// ([`sqlstate::QUERY_CANCELED`](crate::sqlstate::QUERY_CANCELED)); a session that is idle by the time the
    /// signal arrives ignores it. A query sent after this returned, once the client has read the answer of the
    /// query it meant to cancel, is never hit.
    ///
    /// There is no time limit of its own (wrap it in one if the server may be unreachable). Fails with
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) for a client made with
    /// [`Client::connect_with_transport`](crate::Client::connect_with_transport), which has no address to send
    /// a cancel request to, or when the server gave the session no cancel key.
    pub async fn cancel_query(&self) -> Result<(), Error> {
        // Read once, before any await: the session a rebuild may replace meanwhile is the one this cancel is for.
        let CancelTarget { route, key } = self.target();
        let route = route.as_ref().ok_or_else(|| {
            Error::unsupported(
                "cannot cancel: the client was made with connect_with_transport, so there is no address to \
                 send a cancel request to",
            )
        })?;
        let key = key.as_ref().ok_or_else(|| {
            Error::unsupported("cannot cancel: the server sent no cancel key (BackendKeyData)")
        })?;
        let mut transport = route
            .open()
            .await
            .map_err(|e| e.context("opening the cancel connection".to_string()))?;
        let mut request = BytesMut::new();
        crate::proto::cancel_request(key, &mut request);
        write_all(transport.as_mut(), &request)
            .await
            .map_err(Error::io)?;
        wait_for_close(transport.as_mut()).await
    }
}

/// Waits until the server closes the cancel connection, which it does only after signalling the backend.
/// It sends nothing; anything it does send is read and ignored. A reset is a close too.
async fn wait_for_close(transport: &mut dyn Transport) -> Result<(), Error> {
    let mut buf = [0u8; 64];
    loop {
        match poll_fn(|cx| transport.poll_read(cx, &mut buf)).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                return Ok(());
            }
            Err(e) => return Err(Error::io(e)),
        }
    }
}

/// The time limits of one connection's driver, and their clocks.
///
/// Clocks are instants, and a timer exists only while the driver waits: it is armed for the earliest due time
/// when a read would block, and dropped when it fires, when bytes arrive or the call returns, so an idle client
/// holds no timer (on WASI a timer is registered with the reactor that made it).
#[derive(Default)]
pub(crate) struct TimeLimits {
    /// How long the server may take to answer a request.
    pub(crate) query_timeout: Option<Duration>,
    /// How long a request may wait without receiving a byte.
    pub(crate) read_timeout: Option<Duration>,
    /// The query clock of the current wait.
    query_due: Option<QueryDue>,
    /// Since when the current wait has received no byte.
    read_since: Option<Instant>,
    /// The timer of the current wait, and the instant it fires at.
    timer: Option<(Instant, BoxFuture<()>)>,
    /// A request that timed out, while it is cancelled and read out.
    pub(crate) expiry: Option<Expiry>,
    /// The request queued right behind the last one that timed out: PostgreSQL may cancel it too (see
    /// [`TimeLimits::hit_by_stray_cancel`]).
    stray_cancel_victim: Option<RequestId>,
}

/// When the answer awaited now is due.
struct QueryDue {
    /// The awaited request; `None` while the requests of dropped futures are read out.
    request: Option<RequestId>,
    at: Instant,
    limit: Duration,
}

/// A request that outlived the query timeout: its cancel, then the read-out of its answers.
pub(crate) struct Expiry {
    /// The request that timed out.
    pub(crate) request: RequestId,
    pub(crate) limit: Duration,
    /// The cancel request in flight; `None` once the server closed the cancel connection.
    pub(crate) cancel: Option<BoxFuture<Result<(), Error>>>,
    /// When the cancel and the read-out must have finished (`None`: never, for an enormous timeout).
    pub(crate) give_up_at: Option<Instant>,
}

/// A time limit that ran out.
pub(crate) enum Due {
    /// The read deadline: no byte arrived for this long.
    Read(Duration),
    /// The query timeout of the request the server works on.
    Query(Duration),
    /// A timed-out request was neither cancelled nor ended within its grace time.
    GiveUp,
}

impl TimeLimits {
    /// A new operation starts: clocks and timers left by dropped futures do not count against it. An expiry
    /// in progress is kept: it must finish before anything else is sent.
    pub(crate) fn new_wait(&mut self) {
        self.query_due = None;
        self.read_since = None;
        self.timer = None;
    }

    /// The server works on `request` (the oldest pending one), whoever waits for it: starts its query clock,
    /// unless it is running for that request already (callers that poll a fresh future each time keep their
    /// clock, and so does a request while the futures waiting on the connection take turns to read).
    pub(crate) fn watch(&mut self, request: Option<RequestId>) {
        let Some(limit) = self.query_timeout else {
            self.query_due = None;
            return;
        };
        if self
            .query_due
            .as_ref()
            .is_some_and(|due| due.request == request)
        {
            return;
        }
        // An enormous timeout that does not fit an instant is no limit.
        self.query_due =
            Instant::now()
                .checked_add(limit)
                .map(|at| QueryDue { request, at, limit });
    }

    /// Bytes moved: the wait is over, and the read deadline starts again with the next one.
    pub(crate) fn progress(&mut self) {
        self.read_since = None;
        self.disarm();
    }

    /// Drops the timer: the wait it was armed for is over. Every call that armed one and returns `Ready`
    /// disarms it, because on WASI a timer is registered with the reactor that armed it and must not be
    /// dropped under another one (or outside any).
    pub(crate) fn disarm(&mut self) {
        self.timer = None;
    }

    /// The query clock starts again with the next wait (once COPY data went out: sending it is not waiting for
    /// the server).
    pub(crate) fn restart_query_clock(&mut self) {
        self.query_due = None;
    }

    /// Called when a read would block: `Ready` once a limit ran out. With no request `pending` (an idle wait for
    /// notifications) nothing is limited; `query` says whether the query timeout applies to this wait.
    pub(crate) fn poll_due(
        &mut self,
        cx: &mut Context<'_>,
        pending: bool,
        query: bool,
    ) -> Poll<Due> {
        if let Some(give_up_at) = self.expiry.as_ref().and_then(|e| e.give_up_at) {
            ready!(self.poll_timer(cx, give_up_at));
            return Poll::Ready(Due::GiveUp);
        }
        if !pending {
            self.timer = None;
            return Poll::Pending;
        }
        let read = self.read_timeout.and_then(|limit| {
            let since = *self.read_since.get_or_insert_with(Instant::now);
            since.checked_add(limit).map(|at| (at, Due::Read(limit)))
        });
        let query = self
            .query_due
            .as_ref()
            .filter(|_| query)
            .map(|due| (due.at, Due::Query(due.limit)));
        let earliest = match (read, query) {
            (Some(read), Some(query)) if query.0 < read.0 => Some(query),
            (Some(read), _) => Some(read),
            (None, query) => query,
        };
        let Some((at, due)) = earliest else {
            self.timer = None;
            return Poll::Pending;
        };
        ready!(self.poll_timer(cx, at));
        Poll::Ready(due)
    }

    /// Waits until `at`, on a timer kept across polls; `Ready` once it fired.
    pub(crate) fn poll_timer(&mut self, cx: &mut Context<'_>, at: Instant) -> Poll<()> {
        let timer = match &mut self.timer {
            Some((armed, timer)) if *armed == at => timer,
            slot => {
                let wait = at.saturating_duration_since(Instant::now());
                &mut slot.insert((at, Box::pin(runtime::sleep(wait)))).1
            }
        };
        ready!(timer.as_mut().poll(cx));
        self.timer = None;
        Poll::Ready(())
    }

    /// `request`, which the server works on, outlived `limit`: from now on the driver sends `cancel` and
    /// discards the request's answers up to its ReadyForQuery; then its owner gets the timeout.
    pub(crate) fn expire(
        &mut self,
        request: RequestId,
        limit: Duration,
        cancel: BoxFuture<Result<(), Error>>,
    ) {
        self.new_wait();
        // Request ids count up with every request queued: the next one is the first to run after this one.
        self.stray_cancel_victim = request.checked_add(1);
        self.expiry = Some(Expiry {
            request,
            limit,
            cancel: Some(cancel),
            give_up_at: Instant::now().checked_add(limit.max(MIN_CANCEL_GRACE)),
        });
    }

    /// Whether `error` of request `id` may come from the cancel of the request that timed out before it, not
    /// from anything of its own. PostgreSQL signals a cancelled backend twice (the process, then its process
    /// group); when the second signal lands after the first was handled, it stops the statement that runs
    /// next, which on a pipelined connection is the request queued behind. Such a request failed as a whole
    /// and may run again where that cannot do anything twice (outside a transaction block).
    pub(crate) fn hit_by_stray_cancel(&self, id: RequestId, error: &Error) -> bool {
        self.stray_cancel_victim == Some(id)
            && error.as_db_error().is_some_and(|db| {
                db.code() == crate::sqlstate::QUERY_CANCELED
                    && db.message().contains("user request")
            })
    }

    /// Takes over the limits set on `lost` (a session rebuild replaces the connection, not the settings).
    pub(crate) fn take_over_settings(&mut self, lost: &TimeLimits) {
        self.query_timeout = lost.query_timeout;
        self.read_timeout = lost.read_timeout;
    }
}

#[cfg(test)]
mod tests {
    #[cfg(not(target_os = "wasi"))]
    use super::*;

    #[cfg(not(target_os = "wasi"))]
    #[test]
    fn token_and_its_future_are_send() {
        fn assert_send_sync<T: Send + Sync>(_: &T) {}
        fn assert_send<T: Send>(_: &T) {}
        let token = CancelToken::new(None, None);
        assert_send_sync(&token);
        let cancel = token.cancel_query();
        assert_send(&cancel);
    }

    #[cfg(not(target_os = "wasi"))]
    #[test]
    fn debug_output_leaves_the_secret_key_out() {
        let key = BackendKey {
            process_id: 4242,
            secret_key: vec![0xde, 0xad, 0xbe, 0xef].into(),
        };
        let token = CancelToken::new(None, Some(key)).following(CurrentSession::default());
        let shown = format!("{token:?}");
        assert!(shown.contains("4242"), "{shown}");
        for secret in ["222, 173, 190, 239", "deadbeef", "DEADBEEF", "-559038737"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}
