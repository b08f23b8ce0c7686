//! A connection pool (feature `pool`) that runs on any async runtime: tokio natively, wstd on wasm32-wasip2.
//!
//! [`Pool::get`] hands out a [`PooledClient`], which derefs to [`Client`] and goes back to the pool when dropped.
//! There is no background task, so nothing needs spawning and the same code runs on WASI's single-threaded
//! runtime; the pool does its housekeeping when it is used:
//!
//! - **max_size is a hard limit.** A slot is reserved before a connection is opened, so connections being opened
//!   count too, whatever the concurrency.
//! - **A returned connection is judged on the spot** (synchronously, in `drop`): closed or broken, inside a
//!   transaction (by the status byte of its last ReadyForQuery), with requests of dropped futures still
//!   unanswered, or past `max_lifetime` means it is closed, never reused.
//! - **max_lifetime and idle_timeout** are checked when a connection is taken, when one is returned and in
//!   [`Pool::maintain`]; between those calls an expired connection simply waits, idle, to be closed.
//! - **The health check**: a connection that sat idle for `health_check_after` or longer is pinged (an empty
//!   query, one round trip) before it is handed out; if that fails it is closed and another one taken or opened.
//!   This is what notices connections the server closed (a restart, `pg_terminate_backend`, a firewall).
//! - **min_idle** is kept by [`Pool::maintain`], which opens connections until that many are idle; call it at
//!   start-up to warm the pool, and from time to time if you want spare connections ready. Timeouts never close
//!   idle connections below min_idle (max_lifetime does).
//!
//! Waiters are served in order, and every future is cancel-safe: a `get` dropped while it waits, checks or
//! opens a connection gives its slot back (to the next waiter, if any).
//!
//! Session state (settings, `LISTEN`, temporary tables, prepared statements) stays with a connection when it
//! goes back to the pool; only the transaction state is checked.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wasi_pg_client::Error> {
//! use std::time::Duration;
//! use wasi_pg_client::Config;
//! use wasi_pg_client::pool::{Pool, PoolOptions};
//!
//! let config = Config::from_conninfo_and_env("postgresql://app@localhost/app")?;
//! let options = PoolOptions::new()
//!     .max_size(8)
//!     .acquire_timeout(Some(Duration::from_secs(5)));
//! let pool = Pool::new(config, options)?;
//!
//! let mut client = pool.get().await?;
//! let row = client.query_one("SELECT $1::int + 1", &[&41i32]).await?;
//! assert_eq!(row.get::<_, i32>(0), 42);
//! drop(client); // back to the pool
//! println!("{:?}", pool.status());
//! # Ok(()) }
//! ```

#[cfg(feature = "metrics")]
mod meters;
mod state;

use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tracing::debug;

use crate::{Client, Config, Error, TransactionStatus, transport::runtime};
use state::{Aftermath, Pooled, State};

/// How a [`Pool`] sizes and ages its connections. Built by chaining setters on [`PoolOptions::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolOptions {
    max_size: usize,
    min_idle: usize,
    acquire_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
    idle_timeout: Option<Duration>,
    health_check_after: Option<Duration>,
}

impl Default for PoolOptions {
    fn default() -> PoolOptions {
        PoolOptions {
            max_size: 10,
            min_idle: 0,
            acquire_timeout: Some(Duration::from_secs(30)),
            max_lifetime: Some(Duration::from_secs(30 * 60)),
            idle_timeout: Some(Duration::from_secs(10 * 60)),
            health_check_after: Some(Duration::from_secs(30)),
        }
    }
}

impl PoolOptions {
    /// The defaults: at most 10 connections, none kept idle on purpose, 30 s to get one, connections closed
    /// after 30 minutes of life or 10 minutes idle, and a health check for those idle 30 s or longer.
    pub fn new() -> PoolOptions {
        PoolOptions::default()
    }

    /// The most connections the pool holds at once, open or being opened (at least 1).
    pub fn max_size(mut self, max_size: usize) -> PoolOptions {
        self.max_size = max_size;
        self
    }

    /// How many idle connections [`Pool::maintain`] keeps ready (at most `max_size`).
    pub fn min_idle(mut self, min_idle: usize) -> PoolOptions {
        self.min_idle = min_idle;
        self
    }

    /// How long [`Pool::get`] may take in all (waiting for a slot, health checks, opening a connection)
    /// before it fails with [`ErrorKind::Timeout`](crate::ErrorKind::Timeout); `None` waits for ever.
    pub fn acquire_timeout(mut self, acquire_timeout: Option<Duration>) -> PoolOptions {
        self.acquire_timeout = acquire_timeout;
        self
    }

    /// Connections older than this are closed instead of being handed out or taken back; `None` keeps them.
    pub fn max_lifetime(mut self, max_lifetime: Option<Duration>) -> PoolOptions {
        self.max_lifetime = max_lifetime;
        self
    }

    /// Connections idle this long are closed (unless that leaves fewer than min_idle); `None` keeps them.
    pub fn idle_timeout(mut self, idle_timeout: Option<Duration>) -> PoolOptions {
        self.idle_timeout = idle_timeout;
        self
    }

    /// Connections idle this long are pinged before they are handed out (`Some(Duration::ZERO)`: every time);
    /// `None` never checks, leaving a dead connection to fail in the caller's hands.
    pub fn health_check_after(mut self, health_check_after: Option<Duration>) -> PoolOptions {
        self.health_check_after = health_check_after;
        self
    }

    /// See [`max_size`](Self::max_size).
    pub fn get_max_size(&self) -> usize {
        self.max_size
    }

    /// See [`min_idle`](Self::min_idle).
    pub fn get_min_idle(&self) -> usize {
        self.min_idle
    }

    /// See [`acquire_timeout`](Self::acquire_timeout).
    pub fn get_acquire_timeout(&self) -> Option<Duration> {
        self.acquire_timeout
    }

    /// See [`max_lifetime`](Self::max_lifetime).
    pub fn get_max_lifetime(&self) -> Option<Duration> {
        self.max_lifetime
    }

    /// See [`idle_timeout`](Self::idle_timeout).
    pub fn get_idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    /// See [`health_check_after`](Self::health_check_after).
    pub fn get_health_check_after(&self) -> Option<Duration> {
        self.health_check_after
    }
}

/// A snapshot of a pool's state and counters, from [`Pool::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStatus {
    /// The configured maximum.
    pub max_size: usize,
    /// Connections held now: idle, in use, or being opened or checked.
    pub size: usize,
    /// Connections idle in the pool.
    pub idle: usize,
    /// Connections handed out ([`PooledClient`]s alive).
    pub in_use: usize,
    /// Callers of [`Pool::get`] waiting for a connection.
    pub waiting: usize,
    /// Connections opened since the pool was made.
    pub opened: u64,
    /// Connections closed by the pool: broken, left inside a transaction or with unanswered requests,
    /// expired, or failed a health check.
    pub discarded: u64,
    /// The most connections ever in use at once.
    pub peak_in_use: usize,
    /// The largest `size` ever; never above `max_size`.
    pub peak_size: usize,
}

/// A pool of connections to one server. Cheap to clone: clones share the pool.
///
/// Natively it is `Send + Sync`, for use from many tokio tasks; on wasm32-wasip2 it serves concurrent futures
/// of one component. See the [module documentation](self) for how connections are checked and aged.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    config: Config,
    options: PoolOptions,
    state: Mutex<State<Client>>,
    #[cfg(feature = "metrics")]
    meters: meters::PoolMeters,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State<Client>> {
        // The state is consistent between calls; a panic under the lock can only be a BUG message.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` under the lock, then wakes waiters and closes connections with the lock released.
    fn with_state<T>(&self, f: impl FnOnce(&mut State<Client>, &mut Aftermath<Client>) -> T) -> T {
        let mut after = Aftermath::new();
        let mut state = self.lock();
        let result = f(&mut state, &mut after);
        // Every change of the pool's state passes here, so the gauges follow each one.
        #[cfg(feature = "metrics")]
        let status = state.status();
        drop(state);
        after.run();
        #[cfg(feature = "metrics")]
        self.meters.publish(&status);
        result
    }
}

impl Pool {
    /// Makes a pool that connects with `config`. No connection is opened yet (see [`maintain`](Self::maintain)).
    ///
    /// Fails if `max_size` is 0 or `min_idle` is above it.
    #[cfg_attr(
        target_os = "wasi",
        expect(
            clippy::arc_with_non_send_sync,
            reason = "the client is not Send on WASI's single-threaded runtime; natively the same Arc is Send + Sync"
        )
    )]
    pub fn new(config: Config, options: PoolOptions) -> Result<Pool, Error> {
        if options.max_size == 0 {
            return Err(Error::config("the pool's max_size must be at least 1"));
        }
        if options.min_idle > options.max_size {
            return Err(Error::config(format!(
                "the pool's min_idle ({}) is above its max_size ({})",
                options.min_idle, options.max_size
            )));
        }
        let state = State::new(options);
        #[cfg(feature = "metrics")]
        let meters = meters::PoolMeters::new(&config);
        #[cfg(feature = "metrics")]
        meters.publish(&state.status());
        Ok(Pool {
            shared: Arc::new(Shared {
                config,
                options,
                state: Mutex::new(state),
                #[cfg(feature = "metrics")]
                meters,
            }),
        })
    }

    /// The configuration new connections are opened with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The pool's options.
    pub fn options(&self) -> &PoolOptions {
        &self.shared.options
    }

    /// Current sizes and counters.
    pub fn status(&self) -> PoolStatus {
        self.shared.lock().status()
    }

    /// A connection: an idle one (health-checked if it idled for `health_check_after`), or a new one if the
    /// pool has room, else the first one given back. Fails with the connection error if opening fails, or with
    /// [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) after `acquire_timeout`.
    ///
    /// Cancel-safe: dropping the future gives back whatever it held.
    pub async fn get(&self) -> Result<PooledClient, Error> {
        let limit = self.shared.options.acquire_timeout;
        #[cfg(feature = "metrics")]
        let start = Instant::now();
        match runtime::timeout(limit, self.acquire()).await {
            Ok(result) => {
                #[cfg(feature = "metrics")]
                if result.is_ok() {
                    self.shared.meters.waited(start.elapsed());
                }
                result
            }
            Err(()) => {
                #[cfg(feature = "metrics")]
                self.shared.meters.timed_out();
                let status = self.status();
                let what = format!(
                    "getting a connection from the pool ({} of max_size {} open, {} in use, {} others waiting)",
                    status.size, status.max_size, status.in_use, status.waiting
                );
                Err(Error::timeout(&what, limit.unwrap_or_default()))
            }
        }
    }

    async fn acquire(&self) -> Result<PooledClient, Error> {
        let mut slot = Acquire {
            shared: &self.shared,
            waiter: None,
        }
        .await;
        let check_after = self.shared.options.health_check_after;
        while let Some(pooled) = slot.pooled.as_mut() {
            if !pooled.idle_for(Instant::now(), check_after) {
                return Ok(slot.check_out());
            }
            // Dropped during the ping, the slot discards the connection: its request is unanswered.
            match health_check(&mut pooled.conn).await {
                Ok(()) => return Ok(slot.check_out()),
                Err(e) => {
                    debug!(error = %e, "pool: an idle connection failed its health check");
                    slot.replace_failed();
                }
            }
        }
        slot.open().await?;
        Ok(slot.check_out())
    }

    /// Closes expired idle connections, then opens connections until min_idle are idle (as far as max_size
    /// allows, and only while nobody waits). Stops at the first connection error and returns it.
    pub async fn maintain(&self) -> Result<(), Error> {
        let now = Instant::now();
        self.shared
            .with_state(|state, after| state.prune(now, after));
        while self
            .shared
            .with_state(|state, _| state.reserve_for_min_idle())
        {
            let mut slot = Slot {
                shared: self.shared.clone(),
                pooled: None,
                held: true,
            };
            slot.open().await?;
            slot.put_idle();
        }
        Ok(())
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("options", &self.shared.options)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// One round trip that proves the connection still works, outside any transaction.
async fn health_check(client: &mut Client) -> Result<(), Error> {
    match client.ping().await? {
        TransactionStatus::Idle => Ok(()),
        // Never expected: only connections outside a transaction go back to the idle list.
        status => Err(Error::protocol(format!(
            "an idle pooled connection reports {status:?}"
        ))),
    }
}

/// Waits for a slot: a new caller takes one at once if it can, else joins the queue.
///
/// Cancel-safe: dropped while queued it leaves the queue; dropped after a grant but before being polled again,
/// it hands the grant on (see `State::cancel_waiter`).
struct Acquire<'a> {
    shared: &'a Arc<Shared>,
    waiter: Option<u64>,
}

impl Future for Acquire<'_> {
    type Output = Slot;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Slot> {
        let this = &mut *self;
        let now = Instant::now();
        let waiter = &mut this.waiter;
        let grant = this.shared.with_state(|state, after| match *waiter {
            Some(id) => state.poll_waiter(id, cx.waker()),
            None => {
                let grant = state.take(now, after);
                if grant.is_none() {
                    *waiter = Some(state.enqueue(cx.waker()));
                }
                grant
            }
        });
        match grant {
            Some(pooled) => {
                // From here the slot guard owns the grant; Drop below has nothing left to give back.
                this.waiter = None;
                Poll::Ready(Slot {
                    shared: this.shared.clone(),
                    pooled,
                    held: true,
                })
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.waiter {
            let now = Instant::now();
            self.shared
                .with_state(|state, after| state.cancel_waiter(id, now, after));
        }
    }
}

/// A slot held while its connection is checked or opened. Dropped before [`check_out`](Slot::check_out) (an
/// error, a dropped future), it closes the connection it holds and frees the slot.
struct Slot {
    shared: Arc<Shared>,
    pooled: Option<Pooled<Client>>,
    held: bool,
}

impl Slot {
    /// Closes the connection that failed its health check; takes another idle one, or stays empty.
    fn replace_failed(&mut self) {
        if let Some(failed) = self.pooled.take() {
            let now = Instant::now();
            self.pooled = self
                .shared
                .with_state(|state, after| state.replace_failed(failed.conn, now, after));
        }
    }

    /// Opens a connection in this (empty) slot.
    async fn open(&mut self) -> Result<(), Error> {
        #[cfg(feature = "metrics")]
        let start = Instant::now();
        let client = Client::connect(&self.shared.config).await?;
        #[cfg(feature = "metrics")]
        self.shared.meters.created(start.elapsed());
        self.shared.with_state(|state, _| state.opened());
        debug!(backend_pid = ?client.backend_pid(), "pool: opened a connection");
        self.pooled = Some(Pooled::new(client, Instant::now()));
        Ok(())
    }

    /// Hands the connection to a caller.
    fn check_out(mut self) -> PooledClient {
        let Some(pooled) = self.pooled.take() else {
            unreachable!("BUG: checking out an empty pool slot");
        };
        self.held = false;
        self.shared.with_state(|state, _| state.checked_out());
        PooledClient {
            shared: self.shared.clone(),
            pooled: Some(pooled),
        }
    }

    /// Puts the connection into the idle list (or to the first waiter).
    fn put_idle(mut self) {
        let Some(pooled) = self.pooled.take() else {
            unreachable!("BUG: an empty pool slot made idle");
        };
        self.held = false;
        let now = Instant::now();
        self.shared
            .with_state(|state, after| state.give_back(pooled, now, after));
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        let pooled = self.pooled.take();
        self.shared.with_state(|state, after| match pooled {
            Some(pooled) => state.discard(pooled.conn, after),
            None => state.free_slot(after),
        });
    }
}

/// A connection checked out of a [`Pool`]; use it as a [`Client`]. Dropping it returns it to the pool, which
/// keeps it only if it is fit for the next caller.
pub struct PooledClient {
    shared: Arc<Shared>,
    /// `Some` until dropped.
    pooled: Option<Pooled<Client>>,
}

impl PooledClient {
    fn pooled(&self) -> &Pooled<Client> {
        self.pooled
            .as_ref()
            .expect("BUG: a PooledClient without its connection")
    }

    /// Why the connection must not go back to the pool, if it must not.
    fn unfit_for_reuse(&self, now: Instant) -> Option<&'static str> {
        let pooled = self.pooled();
        let client = &pooled.conn;
        if client.is_closed() {
            Some("it is closed or broken")
        } else if client.has_unfinished_requests() {
            // A dropped future's request: its answer (and the transaction status after it) is not known yet.
            Some("requests of dropped futures are unanswered")
        } else if client.transaction_status() != TransactionStatus::Idle {
            Some("it is inside a transaction")
        } else if pooled.outlived(now, self.shared.options.max_lifetime) {
            Some("it is past max_lifetime")
        } else {
            None
        }
    }
}

impl Deref for PooledClient {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.pooled().conn
    }
}

impl DerefMut for PooledClient {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self
            .pooled
            .as_mut()
            .expect("BUG: a PooledClient without its connection")
            .conn
    }
}

impl fmt::Debug for PooledClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PooledClient").field(&**self).finish()
    }
}

impl Drop for PooledClient {
    fn drop(&mut self) {
        let now = Instant::now();
        let unfit = self.unfit_for_reuse(now);
        let Some(pooled) = self.pooled.take() else {
            return;
        };
        if let Some(why) = unfit {
            debug!(backend_pid = ?pooled.conn.backend_pid(), "pool: closing a returned connection: {why}");
        }
        self.shared.with_state(|state, after| {
            state.checked_in();
            match unfit {
                None => state.give_back(pooled, now, after),
                Some(_) => state.discard(pooled.conn, after),
            }
        });
    }
}
