//! Cancellation, query timeouts, read deadlines, ping and keepalives, against the real server on both targets.
//!
//! WASI has one task and no executor beyond `block_on`, so a cancel runs as a second future joined with the
//! query by hand ([`join`]); natively the same scenarios run, and one also cancels from a spawned task.

use std::time::{Duration, Instant};

use wasi_pg_client::{Client, Config, ErrorKind, TransactionStatus, sqlstate};

use super::{Check, Env, Login, Outcome, Scenario, connect, sleep, with_timeout};
use crate::two_target::join;

pub(super) fn scenarios() -> Vec<(&'static str, Scenario)> {
    scenarios![
        cancel_from_a_joined_future,
        cancel_over_tls,
        cancel_without_a_route,
        query_timeout_per_query,
        query_timeout_connection_default,
        query_timeout_in_a_transaction,
        query_timeout_reads_out_dropped_requests,
        cancel_racing_completion_never_hits_the_next_query,
        query_timeout_racing_completion_never_hits_the_next_query,
        ping_reports_the_status,
        read_deadline_closes_the_connection,
        keepalive_and_tcp_user_timeout_accepted,
    ]
}

/// Waits (on `watcher`, a second session of the same role) until backend `pid` is inside `pg_sleep`, so a
/// cancel sent now hits the query and not the round trips before it. The wait event, not `state = 'active'`
/// with the query text: those show during the Parse of the prepare too, and a cancel that lands there (then
/// idle) is ignored, leaving the sleep to run its 30 s (seen once under load).
pub(super) async fn until_sleeping(watcher: &mut Client, pid: i32) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let row = watcher
            .query_one(
                "SELECT count(*)::int4 FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'PgSleep'",
                &[&pid],
            )
            .await
            .check("pg_stat_activity")?;
        if row.get::<_, i32>(0) == 1 {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err(format!("backend {pid} never started its pg_sleep"));
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// Cancels `SELECT pg_sleep(30)` on `client` from a joined future once it runs; checks 57014 comes quickly
/// and that the next query works.
async fn cancel_sleep(client: &mut Client, watcher: &mut Client) -> Outcome {
    let pid = client.backend_pid().ok_or("no backend pid")?;
    let token = client.cancel_token();
    let started = Instant::now();
    let (query, cancel) = join(client.query("SELECT pg_sleep(30)", &[]), async {
        until_sleeping(watcher, pid).await?;
        token.cancel_query().await.check("cancel_query")
    })
    .await;
    cancel?;
    let err = query.err().ok_or("pg_sleep(30) was not cancelled")?;
    let took = started.elapsed();
    ensure_eq!(err.code(), Some(sqlstate::QUERY_CANCELED));
    ensure!(took < Duration::from_secs(10), "the cancel took {took:?}");
    ensure!(
        !client.is_closed(),
        "a cancelled query closed the connection"
    );
    let v: i32 = client
        .query_one("SELECT $1::int4 + 1", &[&41i32])
        .await
        .check("the query after the cancel")?
        .get(0);
    ensure_eq!(v, 42);
    Ok(())
}

async fn cancel_from_a_joined_future(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    let mut watcher = connect(&env.trust).await?;
    cancel_sleep(&mut c, &mut watcher).await?;
    // The token is Send natively: cancel from another task.
    #[cfg(not(target_os = "wasi"))]
    {
        let pid = c.backend_pid().ok_or("no backend pid")?;
        let token = c.cancel_token();
        let task = tokio::spawn(async move {
            until_sleeping(&mut watcher, pid).await?;
            token.cancel_query().await.check("cancel from a task")
        });
        let err = c
            .simple_query("SELECT pg_sleep(30)")
            .await
            .err()
            .ok_or("pg_sleep(30) was not cancelled from the task")?;
        ensure_eq!(err.code(), Some(sqlstate::QUERY_CANCELED));
        task.await.map_err(|e| format!("cancel task: {e}"))??;
        ensure_eq!(c.ping().await.check("ping")?, TransactionStatus::Idle);
    }
    Ok(())
}

/// A session that must use TLS (`pgc_sslonly` logs in on hostssl lines only) is cancelled over TLS too.
async fn cancel_over_tls(env: &Env) -> Outcome {
    let login = &env.tls.logins[Login::ALL
        .iter()
        .position(|l| *l == Login::SslOnly)
        .ok_or("no SslOnly login")?];
    let conninfo = format!(
        "host=127.0.0.1 port={} dbname=postgres sslmode=verify-full sslrootcert={}/root.crt {login}",
        env.tls.port, env.tls.certs
    );
    let mut c = connect(&conninfo).await?;
    ensure!(c.uses_tls(), "the session is not encrypted");
    let mut watcher = connect(&conninfo).await?;
    cancel_sleep(&mut c, &mut watcher).await
}

/// A client on a caller's transport has nowhere to send a cancel request: a clear error.
async fn cancel_without_a_route(env: &Env) -> Outcome {
    let config = Config::parse(&env.trust).check("parse")?;
    #[cfg(not(target_os = "wasi"))]
    let stream = wasi_pg_client::transport::tokio::connect_tcp(&env.host, None, env.port).await;
    #[cfg(all(target_os = "wasi", not(feature = "wasip3")))]
    let stream = wasi_pg_client::transport::wasi::connect_tcp(&env.host, None, env.port).await;
    #[cfg(all(target_os = "wasi", feature = "wasip3"))]
    let stream = wasi_pg_client::transport::wasip3::connect_tcp(&env.host, None, env.port).await;
    let stream = stream.check("open a transport")?;
    let c = Client::connect_with_transport(Box::new(stream), &config)
        .await
        .check("connect_with_transport")?;
    let err = c
        .cancel_token()
        .cancel_query()
        .await
        .err()
        .ok_or("a cancel without a route succeeded")?;
    ensure_eq!(err.kind(), ErrorKind::Unsupported);
    ensure!(
        err.to_string().contains("connect_with_transport"),
        "unclear: {err}"
    );
    ensure_eq!(c.ping().await.check("ping")?, TransactionStatus::Idle);
    Ok(())
}

/// Checks a timed-out call: a Timeout (not a broken connection) after about `limit`.
fn expect_timeout<T>(
    result: Result<T, wasi_pg_client::Error>,
    started: Instant,
    limit: Duration,
) -> Outcome {
    let took = started.elapsed();
    let err = result.err().ok_or("the query did not time out")?;
    ensure_eq!(err.kind(), ErrorKind::Timeout);
    ensure!(
        !err.is_connection_broken(),
        "the timeout broke the connection: {err}"
    );
    ensure!(
        took >= limit && took < limit + Duration::from_secs(4),
        "timed out after {took:?}, the limit was {limit:?}"
    );
    Ok(())
}

async fn query_timeout_per_query(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    ensure_eq!(c.query_timeout(), None);
    let limit = Duration::from_millis(500);
    let started = Instant::now();
    let slow = c
        .with_query_timeout(limit)
        .query("SELECT pg_sleep(10)", &[])
        .await;
    expect_timeout(slow, started, limit)?;
    ensure_eq!(c.query_timeout(), None);
    ensure!(!c.is_closed(), "the timeout closed the connection");
    let v: i32 = c
        .query_one("SELECT $1::int4 + 1", &[&41i32])
        .await
        .check("the query after the timeout")?
        .get(0);
    ensure_eq!(v, 42);
    // The limit was for that call only.
    c.query("SELECT pg_sleep(0.8)", &[])
        .await
        .check("a query longer than the earlier limit")?;
    // A scope covers every call made through it.
    let scoped = c.with_query_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let slow = scoped.simple_query("SELECT pg_sleep(10)").await;
    expect_timeout(slow, started, Duration::from_millis(300))?;
    let rows = scoped
        .query("SELECT generate_series(1, 3)", &[])
        .await
        .check("a quick query in the scope")?;
    ensure_eq!(rows.len(), 3);
    drop(scoped);
    ensure_eq!(c.query_timeout(), None);
    Ok(())
}

async fn query_timeout_connection_default(env: &Env) -> Outcome {
    let limit = Duration::from_secs(1);
    let mut config = Config::parse(&env.trust).check("parse")?;
    config.query_timeout(limit);
    let mut c = Client::connect(&config).await.check("connect")?;
    ensure_eq!(c.query_timeout(), Some(limit));
    let started = Instant::now();
    let slow = c.query("SELECT pg_sleep(5)", &[]).await;
    expect_timeout(slow, started, limit)?;
    let v: String = c
        .query_one("SELECT $1::text || '!'", &[&"next"])
        .await
        .check("the query after the timeout")?
        .get(0);
    ensure_eq!(v, "next!");
    // One call without a limit, then the connection's own again.
    c.with_query_timeout(None)
        .query("SELECT pg_sleep(1.3)", &[])
        .await
        .check("a call without a limit")?;
    ensure_eq!(c.query_timeout(), Some(limit));
    c.set_query_timeout(None);
    c.execute("SELECT pg_sleep(1.2)", &[])
        .await
        .check("no limit after set_query_timeout(None)")?;
    c.set_query_timeout(Duration::from_millis(200));
    let started = Instant::now();
    let slow = c.execute("SELECT pg_sleep(5)", &[]).await;
    expect_timeout(slow, started, Duration::from_millis(200))?;
    ensure_eq!(c.ping().await.check("ping")?, TransactionStatus::Idle);
    Ok(())
}

/// A timeout inside a transaction block fails the block (the server cancelled the statement), and the
/// status says so at once: the read-out reached ReadyForQuery.
async fn query_timeout_in_a_transaction(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    c.batch_execute("BEGIN").await.check("BEGIN")?;
    let started = Instant::now();
    let slow = c
        .with_query_timeout(Duration::from_millis(300))
        .query("SELECT pg_sleep(10)", &[])
        .await;
    expect_timeout(slow, started, Duration::from_millis(300))?;
    ensure_eq!(c.transaction_status(), TransactionStatus::Failed);
    c.batch_execute("ROLLBACK").await.check("ROLLBACK")?;
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);
    Ok(())
}

/// A query whose future was dropped is read out by the next call; the query timeout limits that read-out too,
/// so the next call does not wait for the whole abandoned query.
async fn query_timeout_reads_out_dropped_requests(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    c.set_query_timeout(Duration::from_millis(500));
    let finished = with_timeout(
        Duration::from_millis(200),
        c.query("SELECT pg_sleep(20)", &[]),
    )
    .await;
    ensure!(finished.is_none(), "pg_sleep(20) finished early");
    let started = Instant::now();
    let v: i32 = c
        .query_one("SELECT $1::int4", &[&5i32])
        .await
        .check("the query after a dropped one")?
        .get(0);
    let took = started.elapsed();
    ensure_eq!(v, 5);
    ensure!(
        took < Duration::from_secs(5),
        "the abandoned query was waited for: {took:?}"
    );
    Ok(())
}

/// A small pseudo-random sequence, the same on every run.
struct Lcg(u32);

impl Lcg {
    fn next(&mut self, below: u32) -> u32 {
        self.0 = self.0.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        (self.0 >> 16) % below
    }
}

/// Cancels fired around the completion of fast queries, in varying order and timing: whatever the cancel
/// hits, the next query must return its own result, never 57014.
async fn cancel_racing_completion_never_hits_the_next_query(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    let token = c.cancel_token();
    let mut random = Lcg(2024);
    let (mut cancelled, mut completed) = (0, 0);
    for i in 0..200i32 {
        let delay = Duration::from_micros(u64::from(random.next(3000)));
        // Long enough for some cancels to land inside it, short enough for others to arrive after it.
        let nap = f64::from(random.next(3)) / 1000.0;
        let sql = "SELECT $1::int4 FROM pg_sleep($2::float8)";
        let (query, cancel) = if i % 2 == 0 {
            join(c.query_one(sql, &[&i, &nap]), async {
                sleep(delay).await;
                token.cancel_query().await
            })
            .await
        } else {
            let (cancel, query) = join(token.cancel_query(), async {
                sleep(delay).await;
                c.query_one(sql, &[&i, &nap]).await
            })
            .await;
            (query, cancel)
        };
        cancel.check(&format!("iteration {i}: cancel"))?;
        match query {
            Ok(row) => {
                completed += 1;
                ensure_eq!(row.get::<_, i32>(0), i);
            }
            Err(e) if e.code() == Some(sqlstate::QUERY_CANCELED) => cancelled += 1,
            Err(e) => return Err(format!("iteration {i}: the raced query failed: {e}")),
        }
        let next = c
            .query_one("SELECT $1::int4 + 1000000", &[&i])
            .await
            .map_err(|e| format!("iteration {i} ({cancelled} cancelled, {completed} completed): the next query failed: {e}"))?;
        ensure_eq!(next.get::<_, i32>(0), i + 1_000_000);
    }
    ensure!(completed > 0, "every raced query was cancelled");
    Ok(())
}

/// Query timeouts about as long as the query: the timeout races its completion, and the next query must
/// return its own result.
async fn query_timeout_racing_completion_never_hits_the_next_query(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    let mut random = Lcg(7);
    let mut timeouts = 0;
    for i in 0..100i32 {
        let limit = Duration::from_micros(500 + u64::from(random.next(3000)));
        let nap = f64::from(random.next(3)) / 1000.0;
        let raced = c
            .with_query_timeout(limit)
            .query_one("SELECT $1::int4 FROM pg_sleep($2::float8)", &[&i, &nap])
            .await;
        match raced {
            Ok(row) => ensure_eq!(row.get::<_, i32>(0), i),
            Err(e) if e.kind() == ErrorKind::Timeout && !e.is_connection_broken() => timeouts += 1,
            Err(e) => return Err(format!("iteration {i}: the raced query failed: {e}")),
        }
        let next = c
            .query_one("SELECT $1::int4 + 1000000", &[&i])
            .await
            .map_err(|e| {
                format!("iteration {i} ({timeouts} timeouts): the next query failed: {e}")
            })?;
        ensure_eq!(next.get::<_, i32>(0), i + 1_000_000);
    }
    Ok(())
}

async fn ping_reports_the_status(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    ensure_eq!(c.ping().await.check("ping")?, TransactionStatus::Idle);
    c.batch_execute("BEGIN").await.check("BEGIN")?;
    ensure_eq!(
        c.ping().await.check("ping")?,
        TransactionStatus::InTransaction
    );
    ensure!(c.batch_execute("SELECT 1/0").await.is_err(), "1/0 worked");
    ensure_eq!(c.ping().await.check("ping")?, TransactionStatus::Failed);
    // A ROLLBACK whose future was dropped: ping reads its answer, so the status is current again.
    super::poll_once(c.batch_execute("ROLLBACK")).await;
    ensure_eq!(c.ping().await.check("ping")?, TransactionStatus::Idle);
    c.close().await.check("close")
}

async fn read_deadline_closes_the_connection(env: &Env) -> Outcome {
    let limit = Duration::from_secs(1);
    let mut config = Config::parse(&env.trust).check("parse")?;
    config.read_timeout(limit);
    let c = Client::connect(&config).await.check("connect")?;
    c.query("SELECT pg_sleep(0.5)", &[])
        .await
        .check("a query within the read deadline")?;
    let started = Instant::now();
    let err = c
        .query("SELECT pg_sleep(5)", &[])
        .await
        .err()
        .ok_or("pg_sleep(5) outlived the read deadline")?;
    let took = started.elapsed();
    ensure_eq!(err.kind(), ErrorKind::Timeout);
    ensure!(err.is_connection_broken(), "not broken: {err}");
    ensure!(
        took >= limit && took < Duration::from_secs(4),
        "took {took:?}"
    );
    ensure!(c.is_closed(), "the client is not closed after a lost read");
    ensure!(
        c.query("SELECT 1", &[]).await.is_err(),
        "a closed client ran a query"
    );
    Ok(())
}

/// libpq's keepalive keywords and `tcp_user_timeout` are accepted and applied (natively unit tests read the
/// socket options back; WASI has no TCP_USER_TIMEOUT and ignores it); connections work with keepalives off, on
/// with custom values, and by default, and a cancel goes through with the options set.
async fn keepalive_and_tcp_user_timeout_accepted(env: &Env) -> Outcome {
    let off = Config::parse(&format!(
        "{} keepalives=0 tcp_user_timeout=20000",
        env.trust
    ))
    .check("parse")?;
    ensure!(!off.get_keepalives(), "keepalives=0 is on");
    ensure_eq!(off.get_tcp_user_timeout(), Some(Duration::from_secs(20)));
    let custom = Config::parse(&format!(
        "{} keepalives=1 keepalives_idle=30 keepalives_interval=5 keepalives_count=3 \
         tcp_user_timeout=15000",
        env.trust
    ))
    .check("parse")?;
    ensure!(custom.get_keepalives(), "keepalives=1 is off");
    ensure_eq!(custom.get_keepalives_idle(), Some(Duration::from_secs(30)));
    ensure_eq!(
        custom.get_keepalives_interval(),
        Some(Duration::from_secs(5))
    );
    ensure_eq!(custom.get_keepalives_count(), Some(3));
    let mut built = Config::parse(&env.trust).check("parse")?;
    built
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(60))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_count(4)
        .tcp_user_timeout(Duration::from_millis(30_500));
    ensure_eq!(built.get_keepalives_idle(), Some(Duration::from_secs(60)));
    ensure_eq!(
        built.get_tcp_user_timeout(),
        Some(Duration::from_millis(30_500))
    );
    let default = Config::parse(&env.trust).check("parse")?;
    ensure!(default.get_keepalives(), "keepalives are off by default");
    ensure_eq!(default.get_keepalives_idle(), None);
    ensure_eq!(default.get_tcp_user_timeout(), None);
    // The cancel connection is opened with the session's options.
    let mut c = Client::connect(&custom).await.check("connect custom")?;
    let mut watcher = connect(&env.trust).await?;
    cancel_sleep(&mut c, &mut watcher).await?;
    for (label, config) in [
        ("keepalives=0", off),
        ("custom", custom),
        ("built", built),
        ("default", default),
    ] {
        let c = Client::connect(&config).await.check(label)?;
        let v: i32 = c
            .query_one("SELECT $1::int4", &[&3i32])
            .await
            .check(label)?
            .get(0);
        ensure_eq!(v, 3);
    }
    Ok(())
}
