//! The connection pool against a real server, on both targets.
//!
//! Natively this binary starts a cluster and runs every case on a multi-thread tokio runtime (the load case
//! spawns its workers as tasks, so the pool is shared across threads). Then it builds itself for wasm32-wasip2
//! and runs the same cases under the real wasmtime CLI against the same cluster, where concurrency means
//! futures joined in one task. Each case opens its own pool with its own `application_name`, so the server's
//! `pg_stat_activity` can be asked what the pool really holds.
//!
//! The restart case needs the host: the guest asks for a restart by creating a file in a directory shared with
//! it (`/ctl/restart`), the harness stops and starts the cluster on the same port and answers with
//! `/ctl/restarted`. Natively the case calls the cluster directly.
//!
//! Each target prints `<target>: N passed, M failed`; any failure fails the test. The load case also prints
//! `pool: 100 tasks x 100 queries on max_size 8: opened N, peak in use P, errors E, T ms`.

#[cfg(not(target_os = "wasi"))]
#[allow(dead_code)]
mod support;
#[macro_use]
#[path = "support/two_target.rs"]
mod two_target;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use two_target::{Check, Outcome, join, sleep, with_timeout};
use wasi_pg_client::pool::{Pool, PoolOptions, PoolStatus, PooledClient};
use wasi_pg_client::transport::MaybeSend;
use wasi_pg_client::{Client, Config, ErrorKind, TransactionStatus};

/// The load case: this many tasks, each running this many queries, on a pool of `LOAD_MAX_SIZE`.
const LOAD_TASKS: i32 = 100;
const LOAD_QUERIES: i32 = 100;
const LOAD_MAX_SIZE: usize = 8;
/// How long a case may take before it counts as hung.
const CASE_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the server may take to end a backend whose client went away or was terminated.
const BACKEND_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a case gets: where the server is, and how to restart it.
struct Env {
    /// A conninfo for the trust role, without application_name.
    conninfo: String,
    /// `native` or `wasm`, to keep the application names of the two runs apart.
    target: &'static str,
    #[cfg(not(target_os = "wasi"))]
    cluster: Arc<std::sync::Mutex<support::Cluster>>,
}

impl Env {
    /// The application_name of the pool of case `case`.
    fn app(&self, case: &str) -> String {
        format!("pool_{}_{case}", self.target)
    }

    fn config(&self, case: &str) -> Result<Config, String> {
        let conninfo = format!("{} application_name={}", self.conninfo, self.app(case));
        Config::parse(&conninfo).map_err(|e| format!("config: {e}"))
    }

    fn pool(&self, case: &str, options: PoolOptions) -> Result<Pool, String> {
        Pool::new(self.config(case)?, options).map_err(|e| format!("Pool::new: {e}"))
    }

    /// A connection outside any pool, to watch and poke the pool's sessions.
    async fn monitor(&self) -> Result<Monitor, String> {
        let conninfo = format!("{} application_name=pool_monitor", self.conninfo);
        let config = Config::parse(&conninfo).map_err(|e| format!("config: {e}"))?;
        let client = Client::connect(&config)
            .await
            .map_err(|e| format!("monitor connect: {e}"))?;
        Ok(Monitor { client })
    }

    /// Stops the server (fast: sessions are terminated) and starts it again on the same port.
    #[cfg(not(target_os = "wasi"))]
    async fn restart_server(&self) -> Result<(), String> {
        let cluster = self.cluster.clone();
        tokio::task::spawn_blocking(move || {
            let mut cluster = cluster.lock().unwrap_or_else(|e| e.into_inner());
            cluster.shut_down();
            cluster.start_again();
        })
        .await
        .map_err(|e| format!("restart: {e}"))
    }

    /// Asks the host for a restart through the shared directory and waits for it to be done.
    #[cfg(target_os = "wasi")]
    async fn restart_server(&self) -> Result<(), String> {
        let request = format!("{CTL_GUEST_DIR}/{CTL_RESTART}");
        let done = format!("{CTL_GUEST_DIR}/{CTL_RESTARTED}");
        std::fs::write(&request, b"").map_err(|e| format!("cannot write {request}: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while std::fs::metadata(&done).is_err() {
            ensure!(
                Instant::now() < deadline,
                "the host never restarted the server"
            );
            sleep(Duration::from_millis(20)).await;
        }
        std::fs::remove_file(&done).map_err(|e| format!("cannot remove {done}: {e}"))
    }
}

/// A plain connection that watches the server's view of the pool.
struct Monitor {
    client: Client,
}

impl Monitor {
    async fn sessions(&mut self, app: &str) -> Result<i64, String> {
        let row = self
            .client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&app],
            )
            .await
            .map_err(|e| format!("counting sessions: {e}"))?;
        Ok(row.get(0))
    }

    /// The text of the last query session `pid` ran.
    async fn last_query(&mut self, pid: i32) -> Result<String, String> {
        let row = self
            .client
            .query_one(
                "SELECT coalesce(query, '') FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .map_err(|e| format!("reading pg_stat_activity: {e}"))?;
        Ok(row.get(0))
    }

    async fn terminate(&mut self, pid: i32) -> Result<(), String> {
        let row = self
            .client
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .map_err(|e| format!("pg_terminate_backend: {e}"))?;
        ensure!(row.get::<_, bool>(0), "pg_terminate_backend({pid}) failed");
        self.wait_gone(pid).await
    }

    /// Waits until session `pid` has left pg_stat_activity.
    async fn wait_gone(&mut self, pid: i32) -> Result<(), String> {
        let deadline = Instant::now() + BACKEND_EXIT_TIMEOUT;
        loop {
            let row = self
                .client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                    &[&pid],
                )
                .await
                .map_err(|e| format!("reading pg_stat_activity: {e}"))?;
            if row.get::<_, i64>(0) == 0 {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "session {pid} still exists after {BACKEND_EXIT_TIMEOUT:?}"
            );
            sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `count` sessions of `app` run a query containing `text`.
    async fn wait_active(&mut self, app: &str, text: &str, count: i64) -> Result<(), String> {
        let deadline = Instant::now() + BACKEND_EXIT_TIMEOUT;
        loop {
            let row = self
                .client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE application_name = $1 AND state = 'active' AND strpos(query, $2) > 0",
                    &[&app, &text],
                )
                .await
                .map_err(|e| format!("reading pg_stat_activity: {e}"))?;
            if row.get::<_, i64>(0) == count {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{count} sessions of {app} never ran {text:?} at once"
            );
            sleep(Duration::from_millis(20)).await;
        }
    }
}

type CaseFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + 'a>>;

struct Case {
    name: &'static str,
    run: for<'a> fn(&'a Env) -> CaseFuture<'a>,
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        vec![$(Case { name: stringify!($name), run: |env| Box::pin($name(env)) }),*]
    };
}

fn all_cases() -> Vec<Case> {
    cases![
        load_100_tasks_x_100_queries,
        churn_with_dropped_futures,
        acquire_timeout_when_all_checked_out,
        dropped_gets_give_their_slot_back,
        returned_inside_transaction_is_discarded,
        returned_after_dropped_query_is_discarded,
        idle_timeout_closes_idle_connections,
        max_lifetime_retires_connections,
        health_check_after_idle,
        terminated_idle_connection_is_replaced,
        broken_connection_is_not_reused,
        maintain_keeps_min_idle,
        // Last: it restarts the server under every other pool.
        server_restart_while_in_use,
    ]
}

// ---------------------------------------------------------------------------------------------------------
// The cases.
// ---------------------------------------------------------------------------------------------------------

/// max_size is never exceeded: 100 concurrent tasks run 100 queries each, every query on a connection taken
/// from the pool and given back, while a monitor counts the pool's sessions on the server.
async fn load_100_tasks_x_100_queries(env: &Env) -> Outcome {
    let case = "load";
    let options = PoolOptions::new()
        .max_size(LOAD_MAX_SIZE)
        .acquire_timeout(Some(Duration::from_secs(60)));
    let pool = env.pool(case, options)?;
    let mut monitor = env.monitor().await?;
    let app = env.app(case);
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();

    let workers: Vec<_> = (0..LOAD_TASKS)
        .map(|task| load_worker(pool.clone(), task))
        .collect();
    let finish = done.clone();
    let run = async move {
        let outcomes = concurrently(workers).await;
        finish.store(true, Ordering::SeqCst);
        outcomes
    };
    let watch = async {
        let mut peak_sessions = 0;
        while !done.load(Ordering::SeqCst) {
            peak_sessions = peak_sessions.max(monitor.sessions(&app).await?);
            sleep(Duration::from_millis(5)).await;
        }
        Ok::<i64, String>(peak_sessions)
    };
    let (outcomes, peak_sessions) = join(run, watch).await;
    let elapsed = started.elapsed();
    let peak_sessions = peak_sessions?;

    let errors: usize = outcomes.iter().map(|(errors, _)| errors).sum();
    let first_error = outcomes.iter().find_map(|(_, first)| first.clone());
    let status = pool.status();
    let line = format!(
        "pool: {LOAD_TASKS} tasks x {LOAD_QUERIES} queries on max_size {LOAD_MAX_SIZE}: opened {}, \
         peak in use {}, errors {errors}, {} ms",
        status.opened,
        status.peak_in_use,
        elapsed.as_millis()
    );
    println!("{line}");
    ensure!(errors == 0, "{errors} errors, the first: {first_error:?}");
    ensure!(
        status.peak_size <= LOAD_MAX_SIZE && status.peak_in_use <= LOAD_MAX_SIZE,
        "max_size exceeded: {status:?}"
    );
    ensure!(
        status.opened <= LOAD_MAX_SIZE as u64 && status.discarded == 0,
        "connections were opened again: {status:?}"
    );
    ensure!(
        status.peak_in_use == LOAD_MAX_SIZE,
        "the pool was never saturated: {status:?}"
    );
    ensure!(
        peak_sessions <= LOAD_MAX_SIZE as i64,
        "the server saw {peak_sessions} sessions of the pool at once"
    );
    ensure!(
        status.in_use == 0 && status.waiting == 0 && status.idle == status.size,
        "after the load: {status:?}"
    );
    Ok(format!(
        "{line}; server saw at most {peak_sessions} sessions; {status:?}"
    ))
}

/// One load task: `LOAD_QUERIES` queries, each on a connection got for it. Returns the error count and the
/// first error.
async fn load_worker(pool: Pool, task: i32) -> (usize, Option<String>) {
    let mut errors = 0;
    let mut first = None;
    for i in 0..LOAD_QUERIES {
        let result = async {
            let client = pool.get().await.check("get")?;
            let row = client
                .query_one("SELECT $1::int4 * 1000 + $2::int4", &[&task, &i])
                .await
                .check("query")?;
            let got: i32 = row.get(0);
            ensure!(got == task * 1000 + i, "task {task} query {i} got {got}");
            Ok(())
        }
        .await;
        if let Err(e) = result {
            errors += 1;
            first.get_or_insert(e);
        }
    }
    (errors, first)
}

/// Cancel-safety under load: 50 tasks on max_size 4 mix plain queries with gets dropped at once, queries
/// dropped in flight and connections given back inside a transaction. max_size holds, and afterwards every
/// slot is accounted for: nothing in use or waiting, and every connection opened is either closed or idle.
async fn churn_with_dropped_futures(env: &Env) -> Outcome {
    let case = "churn";
    let max_size = 4;
    let options = PoolOptions::new()
        .max_size(max_size)
        .acquire_timeout(Some(Duration::from_secs(60)));
    let pool = env.pool(case, options)?;
    let mut monitor = env.monitor().await?;
    let workers: Vec<_> = (0..50)
        .map(|task| churn_worker(pool.clone(), task))
        .collect();
    let mut dropped = [0; 2];
    for outcome in concurrently(workers).await {
        let [gets, queries] = outcome?;
        dropped[0] += gets;
        dropped[1] += queries;
    }
    let status = pool.status();
    ensure!(
        status.peak_size <= max_size,
        "max_size exceeded: {status:?}"
    );
    ensure!(
        status.in_use == 0 && status.waiting == 0 && status.size == status.idle,
        "slots unaccounted for: {status:?}"
    );
    ensure!(
        status.opened - status.discarded == status.size as u64,
        "opened, discarded and size disagree: {status:?}"
    );
    ensure!(
        dropped[0] > 0 && dropped[1] > 0,
        "nothing was dropped: {dropped:?}"
    );
    wait_sessions(&mut monitor, &env.app(case), status.size as i64).await?;
    Ok(format!(
        "{} gets and {} queries dropped; {status:?}",
        dropped[0], dropped[1]
    ))
}

/// One churn task; how many of its gets and queries were dropped before they finished.
async fn churn_worker(pool: Pool, task: i32) -> Result<[u32; 2], String> {
    let mut dropped = [0; 2];
    for i in 0..30 {
        match (task + i) % 5 {
            0 => match with_timeout(Duration::from_millis(2), pool.get()).await {
                Some(client) => {
                    let client = client.check("get")?;
                    client.simple_query("SELECT 1").await.check("query")?;
                }
                None => dropped[0] += 1,
            },
            1 => {
                let client = pool.get().await.check("get")?;
                let query = client.simple_query("SELECT pg_sleep(0.01)");
                if with_timeout(Duration::from_millis(1), query)
                    .await
                    .is_none()
                {
                    dropped[1] += 1;
                }
            }
            2 => {
                let client = pool.get().await.check("get")?;
                client.batch_execute("BEGIN").await.check("BEGIN")?;
            }
            _ => {
                let client = pool.get().await.check("get")?;
                let row = client
                    .query_one("SELECT $1::int4", &[&i])
                    .await
                    .check("query")?;
                ensure!(row.get::<_, i32>(0) == i, "wrong answer");
            }
        }
    }
    Ok(dropped)
}

/// With every connection checked out, `get` fails with a timeout after acquire_timeout, leaves no waiter
/// behind, and the next connection given back is handed out at once.
async fn acquire_timeout_when_all_checked_out(env: &Env) -> Outcome {
    let limit = Duration::from_millis(300);
    let pool = env.pool(
        "timeout",
        PoolOptions::new().max_size(2).acquire_timeout(Some(limit)),
    )?;
    let a = pool.get().await.check("get a")?;
    let _b = pool.get().await.check("get b")?;
    let started = Instant::now();
    let third = pool.get().await;
    let waited = started.elapsed();
    let Err(e) = third else {
        return Err("a third get succeeded on max_size 2".into());
    };
    ensure!(e.kind() == ErrorKind::Timeout, "not a timeout: {e}");
    ensure!(
        waited >= limit && waited < limit + Duration::from_secs(5),
        "the timeout fired after {waited:?}"
    );
    let status = pool.status();
    ensure!(
        status.waiting == 0 && status.size == 2,
        "after the timeout: {status:?}"
    );
    let pid = a.backend_pid();
    drop(a);
    let started = Instant::now();
    let again = pool.get().await.check("get after a return")?;
    ensure!(
        again.backend_pid() == pid,
        "the returned connection was not reused"
    );
    ensure!(
        started.elapsed() < limit,
        "a free connection took {:?}",
        started.elapsed()
    );
    Ok(format!("timed out after {waited:?}: {e}"))
}

/// Cancel-safety of `get`: a get dropped while queued leaves the queue, and one dropped after a connection
/// (or an empty slot) was granted to it gives that back, so nothing leaks.
async fn dropped_gets_give_their_slot_back(env: &Env) -> Outcome {
    let pool = env.pool("dropped_gets", PoolOptions::new().max_size(1))?;
    let a = pool.get().await.check("get a")?;
    let pid = a.backend_pid();

    // Queued, then dropped.
    let mut queued = Box::pin(pool.get());
    ensure!(
        poll_once(queued.as_mut()).is_pending(),
        "a second get on max_size 1 did not wait"
    );
    ensure!(
        pool.status().waiting == 1,
        "not queued: {:?}",
        pool.status()
    );
    drop(queued);
    ensure!(
        pool.status().waiting == 0,
        "still queued: {:?}",
        pool.status()
    );

    // Granted the returned connection, then dropped before it was polled again.
    let mut granted = Box::pin(pool.get());
    ensure!(
        poll_once(granted.as_mut()).is_pending(),
        "the get did not wait"
    );
    a.simple_query("SELECT 1").await.check("query on a")?;
    drop(a);
    ensure!(
        pool.status().waiting == 0 && pool.status().idle == 0,
        "the connection did not go to the waiter: {:?}",
        pool.status()
    );
    drop(granted);
    let status = pool.status();
    ensure!(
        status.idle == 1 && status.size == 1,
        "the grant was not given back: {status:?}"
    );
    let b = pool.get().await.check("get b")?;
    ensure!(b.backend_pid() == pid, "the connection was not reused");

    // Granted an empty slot (the connection was discarded), then dropped.
    let mut granted = Box::pin(pool.get());
    ensure!(
        poll_once(granted.as_mut()).is_pending(),
        "the get did not wait"
    );
    b.batch_execute("BEGIN").await.check("BEGIN")?;
    drop(b);
    drop(granted);
    let status = pool.status();
    ensure!(
        status.size == 0 && status.waiting == 0 && status.discarded == 1,
        "the empty slot was not given back: {status:?}"
    );
    let c = pool.get().await.check("get c")?;
    ensure!(
        c.backend_pid() != pid && pool.status().opened == 2,
        "{:?}",
        pool.status()
    );
    Ok(format!("{:?}", pool.status()))
}

/// A connection returned inside a transaction (open or failed, by SQL or by a dropped `Transaction`) is
/// closed, never reused; one returned after COMMIT is reused.
async fn returned_inside_transaction_is_discarded(env: &Env) -> Outcome {
    let case = "in_transaction";
    let pool = env.pool(case, PoolOptions::new().max_size(2))?;
    let mut monitor = env.monitor().await?;
    let mut pids = Vec::new();

    let client = pool.get().await.check("get")?;
    client.batch_execute("BEGIN").await.check("BEGIN")?;
    pids.push(client.backend_pid());
    drop(client);
    ensure!(
        pool.status().discarded == 1 && pool.status().size == 0,
        "kept after BEGIN: {:?}",
        pool.status()
    );

    let client = pool.get().await.check("get")?;
    ensure!(
        client.transaction_status() == TransactionStatus::Idle,
        "a fresh connection is not idle"
    );
    let failed = client.batch_execute("BEGIN; SELECT 1/0").await;
    ensure!(failed.is_err(), "1/0 succeeded");
    ensure!(
        client.transaction_status() == TransactionStatus::Failed,
        "{:?}",
        client.transaction_status()
    );
    pids.push(client.backend_pid());
    drop(client);
    ensure!(
        pool.status().discarded == 2,
        "kept in a failed transaction: {:?}",
        pool.status()
    );

    let mut client = pool.get().await.check("get")?;
    pids.push(client.backend_pid());
    let transaction = client.transaction().await.check("transaction")?;
    drop(transaction);
    drop(client);
    ensure!(
        pool.status().discarded == 3,
        "kept after a dropped Transaction: {:?}",
        pool.status()
    );

    let client = pool.get().await.check("get")?;
    client
        .batch_execute("BEGIN; SELECT 1; COMMIT")
        .await
        .check("BEGIN; COMMIT")?;
    let committed = client.backend_pid();
    drop(client);
    let client = pool.get().await.check("get")?;
    ensure!(
        client.backend_pid() == committed && pool.status().discarded == 3,
        "not reused after COMMIT: {:?}",
        pool.status()
    );
    ensure!(
        !pids.contains(&client.backend_pid()),
        "a discarded connection came back"
    );
    for pid in pids.into_iter().flatten() {
        monitor.wait_gone(pid).await?;
    }
    Ok(format!("{:?}", pool.status()))
}

/// A connection returned while the request of a dropped query future is unanswered is closed.
async fn returned_after_dropped_query_is_discarded(env: &Env) -> Outcome {
    let pool = env.pool("dropped_query", PoolOptions::new().max_size(2))?;
    let client = pool.get().await.check("get")?;
    let pid = client.backend_pid();
    let query = client.simple_query("SELECT pg_sleep(1)");
    ensure!(
        with_timeout(Duration::from_millis(100), query)
            .await
            .is_none(),
        "pg_sleep(1) finished within 100 ms"
    );
    drop(client);
    ensure!(
        pool.status().discarded == 1 && pool.status().size == 0,
        "kept with a dropped query pending: {:?}",
        pool.status()
    );
    let client = pool.get().await.check("get")?;
    ensure!(client.backend_pid() != pid, "the same connection came back");
    client.simple_query("SELECT 1").await.check("query")?;
    Ok(format!("{:?}", pool.status()))
}

/// Idle connections past idle_timeout are closed by `maintain` and are not handed out by `get`.
async fn idle_timeout_closes_idle_connections(env: &Env) -> Outcome {
    let case = "idle_timeout";
    let timeout = Duration::from_millis(300);
    let options = PoolOptions::new()
        .max_size(4)
        .idle_timeout(Some(timeout))
        .health_check_after(None);
    let pool = env.pool(case, options)?;
    let mut monitor = env.monitor().await?;
    let a = pool.get().await.check("get a")?;
    let b = pool.get().await.check("get b")?;
    drop((a, b));
    ensure!(pool.status().idle == 2, "{:?}", pool.status());
    sleep(timeout + Duration::from_millis(200)).await;
    pool.maintain().await.check("maintain")?;
    let status = pool.status();
    ensure!(
        status.idle == 0 && status.size == 0 && status.discarded == 2,
        "maintain kept idle connections: {status:?}"
    );
    wait_sessions(&mut monitor, &env.app(case), 0).await?;

    let c = pool.get().await.check("get c")?;
    let pid = c.backend_pid();
    drop(c);
    sleep(timeout + Duration::from_millis(200)).await;
    let d = pool.get().await.check("get d")?;
    ensure!(
        d.backend_pid() != pid,
        "a connection past idle_timeout was handed out"
    );
    let status = pool.status();
    ensure!(status.discarded == 3 && status.opened == 4, "{status:?}");
    Ok(format!("{status:?}"))
}

/// Connections past max_lifetime are closed when they come back and are not handed out.
async fn max_lifetime_retires_connections(env: &Env) -> Outcome {
    let lifetime = Duration::from_millis(500);
    let options = PoolOptions::new()
        .max_size(2)
        .max_lifetime(Some(lifetime))
        .idle_timeout(None)
        .health_check_after(None);
    let pool = env.pool("max_lifetime", options)?;
    let a = pool.get().await.check("get a")?;
    let pid = a.backend_pid();
    drop(a);
    let a = pool.get().await.check("get a again")?;
    ensure!(a.backend_pid() == pid, "a young connection was not reused");
    sleep(lifetime + Duration::from_millis(100)).await;
    drop(a);
    ensure!(
        pool.status().size == 0 && pool.status().discarded == 1,
        "an old connection was taken back: {:?}",
        pool.status()
    );

    let b = pool.get().await.check("get b")?;
    let pid = b.backend_pid();
    drop(b);
    ensure!(pool.status().idle == 1, "{:?}", pool.status());
    sleep(lifetime + Duration::from_millis(100)).await;
    let c = pool.get().await.check("get c")?;
    ensure!(
        c.backend_pid() != pid,
        "an idle connection past max_lifetime was handed out"
    );
    let status = pool.status();
    ensure!(status.discarded == 2 && status.opened == 3, "{status:?}");
    Ok(format!("{status:?}"))
}

/// A connection idle for health_check_after is pinged (its last query on the server becomes the empty one)
/// and, healthy, handed out; one idle for less is handed out unchecked.
async fn health_check_after_idle(env: &Env) -> Outcome {
    let after = Duration::from_millis(200);
    let options = PoolOptions::new()
        .max_size(2)
        .health_check_after(Some(after));
    let pool = env.pool("health_check", options)?;
    let mut monitor = env.monitor().await?;
    let client = pool.get().await.check("get")?;
    let pid = client.backend_pid().ok_or("no backend pid")?;
    client.simple_query("SELECT 42").await.check("query")?;
    drop(client);

    let client = pool.get().await.check("get at once")?;
    ensure!(client.backend_pid() == Some(pid), "not reused");
    let last = monitor.last_query(pid).await?;
    ensure!(
        last == "SELECT 42",
        "checked though fresh: last query {last:?}"
    );
    drop(client);

    sleep(after + Duration::from_millis(100)).await;
    let client = pool.get().await.check("get after idling")?;
    ensure!(
        client.backend_pid() == Some(pid),
        "a healthy connection was replaced"
    );
    let last = monitor.last_query(pid).await?;
    ensure!(last.is_empty(), "not pinged: last query {last:?}");
    let status = pool.status();
    ensure!(status.opened == 1 && status.discarded == 0, "{status:?}");
    Ok(format!("{status:?}"))
}

/// pg_terminate_backend on a pooled idle connection: the health check finds it dead, and `get` hands out a
/// new, working one.
async fn terminated_idle_connection_is_replaced(env: &Env) -> Outcome {
    let after = Duration::from_millis(100);
    let options = PoolOptions::new()
        .max_size(2)
        .health_check_after(Some(after));
    let pool = env.pool("terminated", options)?;
    let mut monitor = env.monitor().await?;
    let client = pool.get().await.check("get")?;
    let pid = client.backend_pid().ok_or("no backend pid")?;
    drop(client);
    monitor.terminate(pid).await?;
    sleep(after + Duration::from_millis(50)).await;

    let client = pool.get().await.check("get after terminate")?;
    ensure!(
        client.backend_pid() != Some(pid),
        "the terminated connection was handed out"
    );
    let row = client
        .query_one("SELECT 1::int4", &[])
        .await
        .check("query")?;
    ensure!(row.get::<_, i32>(0) == 1, "wrong answer");
    let status = pool.status();
    ensure!(status.discarded == 1 && status.opened == 2, "{status:?}");
    Ok(format!("{status:?}"))
}

/// Without a health check, a terminated connection fails in the caller's hands; it is broken when it comes
/// back, so it is closed and the next `get` opens a new one.
async fn broken_connection_is_not_reused(env: &Env) -> Outcome {
    let options = PoolOptions::new().max_size(2).health_check_after(None);
    let pool = env.pool("broken", options)?;
    let mut monitor = env.monitor().await?;
    let client = pool.get().await.check("get")?;
    let pid = client.backend_pid().ok_or("no backend pid")?;
    drop(client);
    monitor.terminate(pid).await?;

    let client = pool.get().await.check("get the dead one")?;
    ensure!(
        client.backend_pid() == Some(pid),
        "expected the unchecked idle connection"
    );
    let failed = client.simple_query("SELECT 1").await;
    let Err(e) = failed else {
        return Err("a query on a terminated connection succeeded".into());
    };
    ensure!(e.is_connection_broken(), "not a broken connection: {e}");
    drop(client);
    ensure!(
        pool.status().size == 0 && pool.status().discarded == 1,
        "a broken connection was taken back: {:?}",
        pool.status()
    );
    let client = pool.get().await.check("get")?;
    client.simple_query("SELECT 1").await.check("query")?;
    Ok(format!("the dead one said: {e}"))
}

/// `maintain` opens connections until min_idle are idle, within max_size.
async fn maintain_keeps_min_idle(env: &Env) -> Outcome {
    let case = "min_idle";
    let options = PoolOptions::new().max_size(4).min_idle(2);
    let pool = env.pool(case, options)?;
    let mut monitor = env.monitor().await?;
    let app = env.app(case);
    pool.maintain().await.check("maintain")?;
    expect_status(&pool, 2, 2, 0)?;
    wait_sessions(&mut monitor, &app, 2).await?;

    let a = pool.get().await.check("get a")?;
    let b = pool.get().await.check("get b")?;
    expect_status(&pool, 2, 0, 2)?;
    pool.maintain().await.check("maintain")?;
    expect_status(&pool, 4, 2, 2)?;

    let c = pool.get().await.check("get c")?;
    pool.maintain().await.check("maintain at max_size")?;
    expect_status(&pool, 4, 1, 3)?;
    wait_sessions(&mut monitor, &app, 4).await?;
    drop((a, b, c));
    expect_status(&pool, 4, 4, 0)?;
    ensure!(pool.status().opened == 4, "{:?}", pool.status());
    Ok(format!("{:?}", pool.status()))
}

/// The server restarts while the pool is in use: the two queries in flight fail (their connections are
/// closed when they come back), the idle connections fail their health check, and every get after the
/// restart succeeds on a fresh connection.
async fn server_restart_while_in_use(env: &Env) -> Outcome {
    let case = "restart";
    let after = Duration::from_millis(100);
    let options = PoolOptions::new()
        .max_size(4)
        .health_check_after(Some(after))
        .acquire_timeout(Some(Duration::from_secs(30)));
    let pool = env.pool(case, options)?;
    let app = env.app(case);
    let mut monitor = env.monitor().await?;

    // Four connections, all idle.
    let warm: Vec<PooledClient> = {
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(pool.get().await.check("warm up")?);
        }
        held
    };
    let old_pids: Vec<Option<i32>> = warm.iter().map(|c| c.backend_pid()).collect();
    drop(warm);
    expect_status(&pool, 4, 4, 0)?;

    // Two queries in flight when the server goes down; two connections idle.
    let in_flight = |pool: Pool| async move {
        let client = pool.get().await.check("get")?;
        let result = client.simple_query("SELECT pg_sleep(60)").await;
        Ok::<_, String>(result.err())
    };
    let restart = async {
        monitor.wait_active(&app, "pg_sleep", 2).await?;
        env.restart_server().await
    };
    let ((first, second), restarted) = join(
        join(in_flight(pool.clone()), in_flight(pool.clone())),
        restart,
    )
    .await;
    restarted?;
    let mut in_flight_errors = Vec::new();
    for outcome in [first, second] {
        match outcome? {
            Some(e) if e.is_connection_broken() => in_flight_errors.push(e.to_string()),
            Some(e) => return Err(format!("an in-flight query failed oddly: {e}")),
            None => return Err("an in-flight query survived the restart".into()),
        }
    }
    let status = pool.status();
    ensure!(
        status.discarded == 2 && status.idle == 2,
        "after the in-flight failures: {status:?}"
    );

    // After the restart: gets succeed, on new sessions only.
    sleep(after).await;
    let gets: Vec<_> = (0..8)
        .map(|i| {
            let pool = pool.clone();
            async move {
                let client = pool.get().await.check("get after the restart")?;
                let row = client
                    .query_one("SELECT $1::int4", &[&i])
                    .await
                    .check("query after the restart")?;
                ensure!(row.get::<_, i32>(0) == i, "wrong answer");
                Ok::<_, String>(client.backend_pid())
            }
        })
        .collect();
    let outcomes = concurrently(gets).await;
    let errors: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    ensure!(
        errors.is_empty(),
        "{} gets failed after the restart, the first: {}",
        errors.len(),
        errors[0]
    );
    for pid in outcomes.iter().flatten() {
        ensure!(
            !old_pids.contains(pid),
            "a connection from before the restart was handed out"
        );
    }
    let status = pool.status();
    ensure!(
        status.discarded == 4 && status.peak_size <= 4,
        "after the restart: {status:?}"
    );
    Ok(format!(
        "in-flight errors: {}; {status:?}",
        in_flight_errors.join(" | ")
    ))
}

// ---------------------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------------------

fn expect_status(pool: &Pool, size: usize, idle: usize, in_use: usize) -> Result<(), String> {
    let status: PoolStatus = pool.status();
    ensure!(
        (status.size, status.idle, status.in_use) == (size, idle, in_use),
        "expected size {size}, idle {idle}, in use {in_use}: {status:?}"
    );
    Ok(())
}

/// Waits until the server counts `count` sessions of `app` (closed sessions take a moment to go).
async fn wait_sessions(monitor: &mut Monitor, app: &str, count: i64) -> Result<(), String> {
    let deadline = Instant::now() + BACKEND_EXIT_TIMEOUT;
    loop {
        let now = monitor.sessions(app).await?;
        if now == count {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the server counts {now} sessions of {app}, expected {count}"
        );
        sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `future` once, with a waker that does nothing.
fn poll_once<F: Future>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

/// Runs the futures concurrently and returns their outputs in order: natively as tasks of the multi-thread
/// runtime (so they really run on several threads), on wasm32-wasip2 joined in the current task.
async fn concurrently<F>(futures: Vec<F>) -> Vec<F::Output>
where
    F: Future + MaybeSend + 'static,
    F::Output: MaybeSend + 'static,
{
    #[cfg(not(target_os = "wasi"))]
    {
        let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
        let mut outputs = Vec::with_capacity(tasks.len());
        for task in tasks {
            outputs.push(task.await.expect("a task panicked"));
        }
        outputs
    }
    #[cfg(target_os = "wasi")]
    {
        join_all(futures).await
    }
}

/// Every future's output, in order, all polled in the current task (wstd has no spawn).
#[cfg(target_os = "wasi")]
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    let mut left = futures.len();
    std::future::poll_fn(|cx| {
        for (future, output) in futures.iter_mut().zip(&mut outputs) {
            if output.is_none()
                && let Poll::Ready(out) = future.as_mut().poll(cx)
            {
                *output = Some(out);
                left -= 1;
            }
        }
        if left == 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Runs one case with a deadline.
async fn run_case(case: &Case, env: &Env) -> Outcome {
    match with_timeout(CASE_TIMEOUT, (case.run)(env)).await {
        Some(outcome) => outcome,
        None => Err(format!("hung for {CASE_TIMEOUT:?}")),
    }
}

// ---------------------------------------------------------------------------------------------------------
// The two harnesses.
// ---------------------------------------------------------------------------------------------------------

/// The directory shared with the guest for restart requests, as the guest sees it.
const CTL_GUEST_DIR: &str = "/ctl";
/// Created by the guest to ask for a restart; the host removes it.
const CTL_RESTART: &str = "restart";
/// Created by the host once the server is back; the guest removes it.
const CTL_RESTARTED: &str = "restarted";
/// Environment variable carrying the conninfo to the guest.
const CONNINFO_VAR: &str = "POOL_CONNINFO";

/// Compile-time: the pool is shareable across threads natively.
#[cfg(not(target_os = "wasi"))]
fn assert_thread_safe() {
    fn send_sync_clone<T: Send + Sync + Clone>() {}
    fn send<T: Send>() {}
    send_sync_clone::<Pool>();
    send::<PooledClient>();
}

#[cfg(not(target_os = "wasi"))]
fn main() {
    assert_thread_safe();
    // `run` returns before the exit, so the cluster is stopped either way.
    run().finish("pool");
}

/// Runs every case natively, then under wasmtime (WASI 0.2, then 0.3), serving the guest's restart requests.
#[cfg(not(target_os = "wasi"))]
fn run() -> two_target::Totals {
    use support::{Cluster, Role};
    use two_target::{Guest, Tally, Totals};

    let cluster = Cluster::start();
    let conninfo = cluster.conninfo(Role::Trust);
    let cluster = Arc::new(std::sync::Mutex::new(cluster));
    let cases = all_cases();

    let mut native = Tally::native();
    // Multi-thread: the load case spawns its workers as tasks, so the pool is shared across threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let env = Env {
        conninfo: conninfo.clone(),
        target: "native",
        cluster: cluster.clone(),
    };
    for case in &cases {
        native.record(case.name, runtime.block_on(run_case(case, &env)));
    }
    drop(runtime);
    native.end();

    // The same cases in each guest build (WASI 0.2, then 0.3).
    let run_guest = |guest: Guest| {
        let mut tally = Tally::for_guest(&guest);
        let ctl_dir = std::env::temp_dir().join(format!(
            "wasi-pg-pool-ctl-{}-{}",
            std::process::id(),
            guest.label()
        ));
        std::fs::create_dir_all(&ctl_dir).expect("cannot create the control dir");
        let run = std::thread::scope(|scope| {
            let run = scope.spawn(|| {
                guest.run(
                    &[(CONNINFO_VAR, &conninfo)],
                    &[(ctl_dir.as_path(), CTL_GUEST_DIR)],
                )
            });
            // Serve restart requests until the guest exits.
            while !run.is_finished() {
                let request = ctl_dir.join(CTL_RESTART);
                if request.exists() {
                    let _ = std::fs::remove_file(&request);
                    let mut cluster = cluster.lock().unwrap_or_else(|e| e.into_inner());
                    cluster.shut_down();
                    cluster.start_again();
                    std::fs::write(ctl_dir.join(CTL_RESTARTED), b"")
                        .expect("cannot answer the guest");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            run.join().expect("the wasmtime thread panicked")
        });
        let _ = std::fs::remove_dir_all(&ctl_dir);
        for line in run
            .stdout()
            .lines()
            .filter(|line| line.starts_with("pool:"))
        {
            println!("{} {line}", guest.label());
        }
        tally.record_guest(&run, cases.iter().map(|case| case.name));
        tally.end();
        tally
    };
    let wasm = run_guest(Guest::build());
    let wasi_p3 = run_guest(Guest::build_p3());
    Totals {
        native,
        wasm,
        wasi_p3,
        notes: Vec::new(),
    }
}

#[cfg(target_os = "wasi")]
fn main() {
    let env = Env {
        conninfo: two_target::guest_var(CONNINFO_VAR),
        target: "wasm",
    };
    for case in all_cases() {
        two_target::run_in_guest(case.name, run_case(&case, &env));
    }
}
