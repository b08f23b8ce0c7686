//! Many concurrent clients through PgBouncer 1.18 in transaction pooling mode, on both targets.
//!
//! Which query mode to choose behind which pooler:
//! - a direct connection, or PgBouncer with `pool_mode = session`: `QueryMode::Cached` (the default) works and
//!   is the fastest, because a client keeps one server connection, and with it its named statements, for life;
//! - PgBouncer with `pool_mode = transaction` (or `statement`): `QueryMode::Unnamed`, or `QueryMode::Simple`
//!   (parameters rendered as literals, results as text). Each transaction of a client may run on another server
//!   connection, and PgBouncer 1.18 does not carry named statements across, so `Cached` meets "prepared
//!   statement ... does not exist" (and "already exists" when another client made the same name on that server
//!   connection). Statement pooling also refuses multi-statement transactions, so `client.transaction()` fails
//!   there whatever the mode.
//!
//! The workload: every client has its own connection and its own values; each iteration runs a parameterized
//! SELECT, an INSERT into a shared table and a read-back by parameter outside any transaction, then an INSERT
//! and a SELECT in an explicit transaction. The clients are futures joined in one task; the client has no
//! background task, so each future drives its own connection when polled.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use wasi_pg_client::config::QueryMode;
use wasi_pg_client::{Client, Config, Error};

use super::{Check, Env, Outcome, Scenario, with_timeout};
use crate::two_target::THIS_TARGET;

/// Concurrent clients: several times PgBouncer's pool size.
const CLIENTS: i32 = 24;
/// Iterations per client for `Unnamed` and `Simple`.
const ITERATIONS: i32 = 50;
/// Iterations per client for the `Cached` contrast, which is only informative.
const CACHED_ITERATIONS: i32 = 10;
/// A workload still running after this has hung.
const DEADLINE: Duration = Duration::from_secs(120);
/// Failures quoted in a scenario's error message.
const QUOTED_FAILURES: usize = 5;

/// PgBouncer in front of the main cluster; travels to the wasm run as `LIVE_PGBOUNCER*` variables.
pub struct PgBouncerEnv {
    /// key=value conninfo through PgBouncer, for a role with a password.
    pub conninfo: String,
    /// PgBouncer's `default_pool_size`: the most server connections that serve the clients of one role.
    pub pool_size: usize,
}

impl PgBouncerEnv {
    #[allow(dead_code)]
    pub fn to_vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LIVE_PGBOUNCER", self.conninfo.clone()),
            ("LIVE_PGBOUNCER_POOL_SIZE", self.pool_size.to_string()),
        ]
    }

    #[allow(dead_code)]
    pub fn from_vars(var: impl Fn(&str) -> String) -> PgBouncerEnv {
        PgBouncerEnv {
            conninfo: var("LIVE_PGBOUNCER"),
            pool_size: var("LIVE_PGBOUNCER_POOL_SIZE")
                .parse()
                .expect("LIVE_PGBOUNCER_POOL_SIZE"),
        }
    }
}

pub(super) fn scenarios() -> Vec<(&'static str, Scenario)> {
    scenarios![
        pgbouncer_transaction_pooling_unnamed,
        pgbouncer_transaction_pooling_simple,
        pgbouncer_cached_mode_contrast,
    ]
}

async fn pgbouncer_transaction_pooling_unnamed(env: &Env) -> Outcome {
    exact_workload(env, QueryMode::Unnamed, "pgb_unnamed").await
}

async fn pgbouncer_transaction_pooling_simple(env: &Env) -> Outcome {
    exact_workload(env, QueryMode::Simple, "pgb_simple").await
}

/// `Cached` behind transaction pooling, for information: how often it fails depends on timing, so nothing is
/// asserted but that the workload ends.
async fn pgbouncer_cached_mode_contrast(env: &Env) -> Outcome {
    let (c, report) = run_workload(env, QueryMode::Cached, "pgb_cached", CACHED_ITERATIONS).await?;
    let (mut missing, mut duplicate, mut wrong, mut other) = (0, 0, 0, Vec::new());
    for failure in report.failures() {
        match failure {
            Failure::Db(_, e) if e.code() == Some("26000") => missing += 1,
            Failure::Db(_, e) if e.code() == Some("42P05") => duplicate += 1,
            Failure::Wrong(_) => wrong += 1,
            Failure::Db(..) => other.push(failure.to_string()),
        }
    }
    println!(
        "{THIS_TARGET}: pgbouncer Cached (information only): {}; {missing} \"prepared statement ... does not \
         exist\", {duplicate} \"... already exists\", {wrong} wrong results, {} other errors{}",
        report.headline(CACHED_ITERATIONS),
        other.len(),
        other
            .first()
            .map(|first| format!(" (first: {first})"))
            .unwrap_or_default(),
    );
    drop_table(c, "pgb_cached").await
}

/// Runs the workload in `mode` and requires it to be exact: no error, every value back as written, every
/// transaction on one server connection, no more server connections than the pool has, exact final counts.
async fn exact_workload(env: &Env, mode: QueryMode, table: &str) -> Outcome {
    let (c, report) = run_workload(env, mode, table, ITERATIONS).await?;
    let backends = report.backends();
    let movers = report.runs.iter().filter(|r| r.backends.len() > 1).count();
    println!(
        "{THIS_TARGET}: pgbouncer {mode:?}: {}; {} server connections served them, {movers} of {CLIENTS} clients \
         ran on more than one",
        report.headline(ITERATIONS),
        backends.len(),
    );
    let failures: Vec<String> = report.failures().map(ToString::to_string).collect();
    ensure!(
        failures.is_empty(),
        "{mode:?}: {} errors through PgBouncer, the first: {}",
        failures.len(),
        failures[..failures.len().min(QUOTED_FAILURES)].join(" | ")
    );
    ensure!(
        backends.len() <= env.pgbouncer.pool_size,
        "{mode:?}: {} server connections for a pool of {}: {backends:?}",
        backends.len(),
        env.pgbouncer.pool_size
    );

    let row = c
        .query_one(
            format!(
                "SELECT count(*), count(*) FILTER (WHERE in_tx), count(DISTINCT client), \
                 coalesce(sum(value) FILTER (WHERE NOT in_tx), 0)::int8, coalesce(sum(value), 0)::int8 \
                 FROM {table}"
            )
            .as_str(),
            &[],
        )
        .await
        .check("final counts")?;
    let expected_sum: i64 = (1..=CLIENTS)
        .flat_map(|id| (0..ITERATIONS).map(move |i| value(id, i)))
        .sum();
    let rows = i64::from(CLIENTS * ITERATIONS);
    ensure_eq!(row.try_get::<_, i64>(0).check("count")?, 2 * rows);
    ensure_eq!(row.try_get::<_, i64>(1).check("in_tx")?, rows);
    ensure_eq!(
        row.try_get::<_, i64>(2).check("clients")?,
        i64::from(CLIENTS)
    );
    ensure_eq!(row.try_get::<_, i64>(3).check("sum")?, expected_sum);
    // Every transaction inserted the negated value of its iteration.
    ensure_eq!(row.try_get::<_, i64>(4).check("sum of all")?, 0);
    drop_table(c, table).await
}

/// The value client `id` writes in iteration `i`: distinct across clients and iterations.
fn value(id: i32, i: i32) -> i64 {
    i64::from(id) * 1_000_000 + i64::from(i)
}

/// The statements of one workload, for its own table.
struct Sql {
    double: String,
    insert: String,
    read_back: String,
    insert_in_tx: String,
    count_in_tx: String,
}

impl Sql {
    fn for_table(table: &str) -> Sql {
        Sql {
            double: "SELECT $1::int8 * 2, pg_backend_pid()".to_string(),
            insert: format!(
                "INSERT INTO {table} (client, iteration, value, in_tx) VALUES ($1, $2, $3, false)"
            ),
            read_back: format!(
                "SELECT value FROM {table} WHERE client = $1 AND iteration = $2 AND NOT in_tx"
            ),
            insert_in_tx: format!(
                "INSERT INTO {table} (client, iteration, value, in_tx) VALUES ($1, $2, $3, true) \
                 RETURNING pg_backend_pid()"
            ),
            count_in_tx: format!(
                "SELECT count(*), pg_backend_pid() FROM {table} WHERE client = $1"
            ),
        }
    }
}

/// One thing that went wrong for a client.
enum Failure {
    /// An error from the client or the server, and what was being done.
    Db(&'static str, Error),
    /// A result other than the one written.
    Wrong(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Db(what, e) => write!(f, "{what}: {e}"),
            Failure::Wrong(message) => write!(f, "wrong result: {message}"),
        }
    }
}

fn db(what: &'static str) -> impl FnOnce(Error) -> Failure {
    move |e| Failure::Db(what, e)
}

fn expect<T: PartialEq + fmt::Debug>(what: &str, got: T, want: T) -> Result<(), Failure> {
    if got == want {
        Ok(())
    } else {
        Err(Failure::Wrong(format!(
            "{what}: got {got:?}, expected {want:?}"
        )))
    }
}

/// What one client saw.
#[derive(Default)]
struct ClientRun {
    /// `pg_backend_pid()` of every server connection that served it.
    backends: BTreeSet<i32>,
    /// Its rows committed so far.
    rows: i64,
    failures: Vec<Failure>,
}

/// What a whole workload saw.
struct Report {
    elapsed: Duration,
    runs: Vec<ClientRun>,
}

impl Report {
    fn failures(&self) -> impl Iterator<Item = &Failure> {
        self.runs.iter().flat_map(|r| &r.failures)
    }

    fn backends(&self) -> BTreeSet<i32> {
        self.runs
            .iter()
            .flat_map(|r| &r.backends)
            .copied()
            .collect()
    }

    /// `24 clients x 50 iterations in 1234 ms, 0 errors`.
    fn headline(&self, iterations: i32) -> String {
        format!(
            "{CLIENTS} clients x {iterations} iterations in {} ms, {} errors",
            self.elapsed.as_millis(),
            self.failures().count()
        )
    }
}

/// Creates `table` (a real table: a temp table would belong to one server session), runs every client
/// concurrently in `mode`, and returns a connection for checks afterwards along with the report.
async fn run_workload(
    env: &Env,
    mode: QueryMode,
    table: &str,
    iterations: i32,
) -> Result<(Client, Report), String> {
    let mut config = Config::parse(&env.pgbouncer.conninfo).check("parse conninfo")?;
    config.query_mode(mode);
    let c = Client::connect(&config)
        .await
        .check("connect through PgBouncer")?;
    c.batch_execute(&format!(
        "DROP TABLE IF EXISTS {table}; \
         CREATE TABLE {table} (client int4, iteration int4, value int8 NOT NULL, in_tx bool, \
         PRIMARY KEY (client, iteration, in_tx))"
    ))
    .await
    .check("create the table")?;
    let sql = Sql::for_table(table);
    let started = Instant::now();
    let clients = (1..=CLIENTS).map(|id| run_client(&config, &sql, id, iterations));
    let runs = with_timeout(DEADLINE, join_all(clients))
        .await
        .ok_or_else(|| format!("{mode:?}: the workload did not finish within {DEADLINE:?}"))?;
    let report = Report {
        elapsed: started.elapsed(),
        runs,
    };
    Ok((c, report))
}

/// Connects and runs the iterations of client `id`, going on after errors unless the connection broke.
async fn run_client(config: &Config, sql: &Sql, id: i32, iterations: i32) -> ClientRun {
    let mut run = ClientRun::default();
    let mut client = match Client::connect(config).await {
        Ok(client) => client,
        Err(e) => {
            run.failures.push(Failure::Db("connect", e));
            return run;
        }
    };
    for i in 0..iterations {
        if let Err(failure) = iteration(&mut client, sql, id, i, &mut run).await {
            let broken = matches!(&failure, Failure::Db(_, e) if e.is_connection_broken());
            run.failures.push(failure);
            if broken {
                return run;
            }
        }
    }
    if let Err(e) = client.close().await {
        run.failures.push(Failure::Db("close", e));
    }
    run
}

async fn iteration(
    client: &mut Client,
    sql: &Sql,
    id: i32,
    i: i32,
    run: &mut ClientRun,
) -> Result<(), Failure> {
    let v = value(id, i);
    let row = client
        .query_one(sql.double.as_str(), &[&v])
        .await
        .map_err(db("select"))?;
    expect(
        "select",
        row.try_get::<_, i64>(0).map_err(db("select"))?,
        2 * v,
    )?;
    run.backends
        .insert(row.try_get::<_, i32>(1).map_err(db("select"))?);

    let inserted = client
        .execute(sql.insert.as_str(), &[&id, &i, &v])
        .await
        .map_err(db("insert"))?;
    expect("insert", inserted, 1)?;
    run.rows += 1;
    let row = client
        .query_one(sql.read_back.as_str(), &[&id, &i])
        .await
        .map_err(db("read back"))?;
    expect(
        "read back",
        row.try_get::<_, i64>(0).map_err(db("read back"))?,
        v,
    )?;

    let tx = client.transaction().await.map_err(db("begin"))?;
    let negated = -v;
    let row = tx
        .query_one(sql.insert_in_tx.as_str(), &[&id, &i, &negated])
        .await
        .map_err(db("insert in transaction"))?;
    let pid = row
        .try_get::<_, i32>(0)
        .map_err(db("insert in transaction"))?;
    let row = tx
        .query_one(sql.count_in_tx.as_str(), &[&id])
        .await
        .map_err(db("count in transaction"))?;
    // The transaction sees its own uncommitted row, on the server connection that inserted it.
    expect(
        "own rows seen in the transaction",
        row.try_get::<_, i64>(0)
            .map_err(db("count in transaction"))?,
        run.rows + 1,
    )?;
    expect(
        "server connection within one transaction",
        row.try_get::<_, i32>(1)
            .map_err(db("count in transaction"))?,
        pid,
    )?;
    tx.commit().await.map_err(db("commit"))?;
    run.rows += 1;
    Ok(())
}

async fn drop_table(c: Client, table: &str) -> Outcome {
    c.batch_execute(&format!("DROP TABLE {table}"))
        .await
        .check("drop the table")?;
    c.close().await.check("close")
}

/// Polls every future until all are done, in this one task, and returns their outputs in order.
async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<Option<Pin<Box<F>>>> =
        futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    Poll::Pending => done = false,
                }
            }
        }
        if done { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
