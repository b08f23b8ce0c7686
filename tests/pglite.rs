//! The client against PGlite, PostgreSQL 18 compiled to wasm, served over TCP by `pglite-server` (npm package
//! `@electric-sql/pglite-socket`, pinned in `tools/pglite`), on both targets.
//!
//! Natively this binary starts `pglite-server` with a fresh in-memory database (`tests/support/pglite.rs`), runs
//! every case on tokio, stops it, then starts a fresh one and runs the same cases in its own wasm32-wasip2 build
//! under the real wasmtime CLI (the port travels as an environment variable). Each target prints every case and
//! `<target>: N passed, M failed`; any failure fails the test. Last, it prints what PGlite does not support.
//!
//! The server serves one connection at a time, so the cases run one after another and each closes its clients.
//! All its connections share one PGlite backend, so a case starts its session with `DISCARD ALL` ([`session`]);
//! the case that shows why connects without it. A connection the server turns away because it has not yet seen
//! the previous client's close is retried ([`connect`]); the summary says how often that happened.
//!
//! What PGlite does not support is a case too: it asserts the precise failure PGlite gives today (and fails if
//! that changes), and carries the reason, which the summary prints. The COPY FROM STDIN case kills the backend
//! for good, so it runs last.
//!
//! `PGLITE_SERVE=1 cargo test --test pglite` only starts the server and prints how to reach it, until stdin
//! closes, to try another client (such as psql) against it.

#[cfg(not(target_os = "wasi"))]
#[allow(dead_code)]
mod support;
#[macro_use]
#[path = "support/two_target.rs"]
mod two_target;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone as _, Utc};
use two_target::{Check, Outcome, join, sleep, with_timeout};
use wasi_pg_client::config::{ProtocolVersion, QueryMode};
use wasi_pg_client::types::{Json, Kind};
use wasi_pg_client::{
    Client, Config, ErrorKind, IsolationLevel, Pipeline, PipelineMode, SimpleQueryMessage,
    TransactionStatus, sqlstate,
};

/// SQLSTATEs the cases expect that `sqlstate` does not name.
const DIVISION_BY_ZERO: &str = "22012";
const READ_ONLY_SQL_TRANSACTION: &str = "25006";
const IN_FAILED_SQL_TRANSACTION: &str = "25P02";

/// How long [`connect`] retries a connection the server turned away.
const RECONNECT_WINDOW: Duration = Duration::from_secs(10);
/// Connections [`connect`] retried because the server turned them away (the previous client's close was not
/// processed yet).
static TURNED_AWAY: AtomicUsize = AtomicUsize::new(0);

/// Where the server listens, as a case sees it.
struct Server {
    port: u16,
}

impl Server {
    /// A conninfo for the server with `extra` settings appended. Any user logs in; connect_timeout keeps a
    /// stalled server from hanging the run.
    fn conninfo(&self, extra: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=10 {extra}",
            self.port
        )
    }
}

type CaseFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + 'a>>;

struct Case {
    name: &'static str,
    /// For a case that shows something PGlite does not support: what, and why. The native side prints these.
    #[cfg_attr(target_os = "wasi", allow(dead_code))]
    unsupported: Option<&'static str>,
    run: for<'a> fn(&'a Server) -> CaseFuture<'a>,
}

macro_rules! case {
    ($name:ident) => {
        Case {
            name: stringify!($name),
            unsupported: None,
            run: |server| Box::pin($name(server)),
        }
    };
    ($name:ident, unsupported: $why:expr) => {
        Case {
            name: stringify!($name),
            unsupported: Some($why),
            run: |server| Box::pin($name(server)),
        }
    };
}

/// The cases in the order they run: what works, then what does not. COPY FROM STDIN kills the backend, so it
/// comes last.
fn all_cases() -> Vec<Case> {
    vec![
        case!(connect_trust_as_any_user),
        case!(simple_queries),
        case!(extended_binary_parameters),
        case!(prepared_statements_and_cache),
        case!(query_modes),
        case!(transactions_and_savepoints),
        case!(errors_and_recovery),
        case!(row_stream),
        case!(portals_and_cursors),
        case!(pipelines),
        case!(copy_out),
        case!(listen_notify_in_one_session),
        case!(enum_type_lookup),
        case!(sslmode_prefer_and_allow_use_plaintext),
        case!(
            one_connection_at_a_time,
            unsupported: "concurrent sessions: pglite-server serves one connection at a time \
                (--max-connections defaults to 1) and turns any other away (a reset, or the text \"Too many \
                connections\") until it has processed the close of the one before, so a second client, a \
                pool, or a NOTIFY from another session cannot work"
        ),
        case!(
            session_state_outlives_the_connection,
            unsupported: "a fresh session per connection: every connection talks to the same single PGlite \
                backend, so prepared statements, temporary tables, settings and LISTENs outlive the client \
                that made them; the next client sees them (its own statement names differ, so its cache works) \
                unless the session starts with DISCARD ALL"
        ),
        case!(
            tls_is_refused,
            unsupported: "TLS: pglite-server answers every SSLRequest with N, so sslmode=require and \
                stricter fail with \"server does not support SSL\" (prefer and allow fall back to plaintext)"
        ),
        case!(
            protocol_3_2_is_not_negotiated,
            unsupported: "protocol 3.2: pglite-server recognises only a version 3.0 startup packet; a 3.2 one \
                is taken for the start of an ordinary message and never answered (no NegotiateProtocolVersion), \
                so max_protocol_version=3.2 runs into connect_timeout, and PGlite's own PostgreSQL 18 protocol \
                code cannot be reached"
        ),
        case!(
            cancel_is_ignored,
            unsupported: "query cancellation: pglite-server drops CancelRequests (with one connection at a \
                time it even turns the cancel connection away at once), so a running query always runs to \
                its end"
        ),
        case!(
            disconnect_mid_query_blocks_the_next_client,
            unsupported: "ending a query by disconnecting: the backend is not told, so the abandoned query \
                runs to its end and the next client's startup waits for it"
        ),
        case!(
            query_timeout_waits_for_the_query,
            unsupported: "query timeouts: they cancel the query, which PGlite ignores, so the call returns \
                its timeout error only when the query has run to its end"
        ),
        case!(
            copy_in_kills_the_backend,
            unsupported: "COPY FROM STDIN: pglite-server hands PGlite one message at a time, so the backend \
                reads end-of-input where it expects CopyData (ERROR \"unexpected EOF on client \
                connection\") and ends the session with FATAL 08P01 \"terminating connection because \
                protocol synchronization was lost\"; from then on the server accepts connections but never \
                answers them"
        ),
    ]
}

// ---------------------------------------------------------------------------------------------------------
// What works.
// ---------------------------------------------------------------------------------------------------------

/// PGlite lets anyone in without a password (AuthenticationOk straight away) and runs every session as
/// `postgres` in database `postgres`, whatever user and database the startup names. It says it is PostgreSQL 18.
async fn connect_trust_as_any_user(server: &Server) -> Outcome {
    let mut c = connect(&server.conninfo("require_auth=none")).await?;
    let server_version = c.parameter("server_version").unwrap_or_default();
    ensure!(
        server_version.starts_with("18."),
        "server_version {server_version}"
    );
    let row = first_row(&mut c, "SELECT current_user, version()").await?;
    ensure_eq!(row[0], "postgres");
    // "PostgreSQL 18.6 (PGlite 0.5.14) on wasm32-unknown-emscripten, compiled by ..."
    let version = row[1].split(" on ").next().unwrap_or_default().to_owned();
    ensure!(version.contains("(PGlite "), "version() = {}", row[1]);
    close(c).await?;
    let mut c = connect(&format!(
        "host=127.0.0.1 port={} user=someone_else password=ignored dbname=no_such_db connect_timeout=10",
        server.port
    ))
    .await?;
    let row = first_row(
        &mut c,
        "SELECT current_user, session_user, current_database()",
    )
    .await?;
    ensure_eq!(row, ["postgres", "postgres", "postgres"]);
    close(c).await?;
    Ok(format!(
        "{version}; trust; any user and database name lead to postgres"
    ))
}

async fn simple_queries(server: &Server) -> Outcome {
    let c = session(server).await?;
    let messages = c
        .simple_query(
            "CREATE TEMP TABLE sq (id int, name text); \
             INSERT INTO sq VALUES (1, 'one'), (2, NULL); \
             SELECT id, name FROM sq ORDER BY id",
        )
        .await
        .check("simple_query")?;
    let mut rows = Vec::new();
    let mut tags = Vec::new();
    for message in &messages {
        match message {
            SimpleQueryMessage::Row(row) => rows.push((
                row.get(0).unwrap_or_default().to_owned(),
                row.get(1).map(str::to_owned),
            )),
            SimpleQueryMessage::CommandComplete(n) => tags.push(*n),
            _ => {}
        }
    }
    ensure_eq!(
        rows,
        [
            ("1".to_owned(), Some("one".to_owned())),
            ("2".to_owned(), None)
        ]
    );
    ensure_eq!(tags, [0, 2, 2]);
    c.batch_execute("UPDATE sq SET name = 'two' WHERE id = 2; DROP TABLE sq")
        .await
        .check("batch_execute")?;
    close(c).await?;
    Ok(format!("{} messages", messages.len()))
}

async fn extended_binary_parameters(server: &Server) -> Outcome {
    let c = session(server).await?;
    let row = c
        .query_one(
            "SELECT $1::int2, $2::int4, $3::int8, $4::float8, $5::bool, $6::text, $7::bytea",
            &[
                &-7i16,
                &123_456i32,
                &-9_876_543_210i64,
                &2.5f64,
                &true,
                &"héllo 'quoted'",
                &vec![0u8, 1, 2, 255],
            ],
        )
        .await
        .check("scalars")?;
    ensure_eq!(row.get::<_, i16>(0), -7);
    ensure_eq!(row.get::<_, i32>(1), 123_456);
    ensure_eq!(row.get::<_, i64>(2), -9_876_543_210);
    ensure_eq!(row.get::<_, f64>(3), 2.5);
    ensure!(row.get::<_, bool>(4), "bool");
    ensure_eq!(row.get::<_, &str>(5), "héllo 'quoted'");
    ensure_eq!(row.get::<_, Vec<u8>>(6), vec![0u8, 1, 2, 255]);

    let at: DateTime<Utc> = Utc
        .with_ymd_and_hms(2024, 2, 29, 23, 59, 58)
        .single()
        .ok_or("timestamp")?;
    let id = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    let json = serde_json::json!({"a": [1, 2, {"b": null}], "c": "ü"});
    let row = c
        .query_one(
            "SELECT $1::timestamptz, $1::timestamptz + interval '1 second', $2::uuid, $3::jsonb, $3::json",
            &[&at, &id, &Json(&json)],
        )
        .await
        .check("timestamptz, uuid, json")?;
    ensure_eq!(row.get::<_, DateTime<Utc>>(0), at);
    ensure_eq!(
        row.get::<_, DateTime<Utc>>(1),
        at + chrono::Duration::seconds(1)
    );
    ensure_eq!(row.get::<_, uuid::Uuid>(2), id);
    ensure_eq!(row.get::<_, Json<serde_json::Value>>(3).0, json);
    ensure_eq!(row.get::<_, Json<serde_json::Value>>(4).0, json);

    let ints = vec![Some(1i32), None, Some(-3)];
    let texts = vec!["a".to_owned(), "b c".to_owned(), String::new()];
    let row = c
        .query_one(
            "SELECT $1::int4[], $2::text[], array_length($2::text[], 1), $3::int8",
            &[&ints, &texts, &None::<i64>],
        )
        .await
        .check("arrays and NULL")?;
    ensure_eq!(row.get::<_, Vec<Option<i32>>>(0), ints);
    ensure_eq!(row.get::<_, Vec<String>>(1), texts);
    ensure_eq!(row.get::<_, i32>(2), 3);
    ensure_eq!(row.get::<_, Option<i64>>(3), None);
    close(c).await?;
    Ok("int2/4/8, float8, bool, text, bytea, timestamptz, uuid, json(b), arrays, NULL".into())
}

async fn prepared_statements_and_cache(server: &Server) -> Outcome {
    let mut c = session(server).await?;
    let statement = c
        .prepare("SELECT $1::int4 * 2, $2::text")
        .await
        .check("prepare")?;
    ensure_eq!(statement.columns().len(), 2);
    for i in 0..5i32 {
        let row = c
            .query_one(&statement, &[&i, &"x"])
            .await
            .check("execute prepared")?;
        ensure_eq!(row.get::<_, i32>(0), i * 2);
    }
    // SQL text goes through the cache: prepared once, then reused.
    for i in 0..5i64 {
        let row = c
            .query_one("SELECT $1::int8 + 1", &[&i])
            .await
            .check("cached")?;
        ensure_eq!(row.get::<_, i64>(0), i + 1);
    }
    ensure_eq!(c.cached_statements(), 1);
    let on_server = prepared_on_server(&mut c).await?;
    ensure_eq!(on_server, 2);
    drop(statement);
    // The dropped statement is closed with the next request.
    c.query_one("SELECT 1", &[]).await.check("after drop")?;
    ensure_eq!(prepared_on_server(&mut c).await?, 2);
    close(c).await?;
    Ok("prepared statement reused; cache holds 1 statement".into())
}

async fn query_modes(server: &Server) -> Outcome {
    for mode in [QueryMode::Cached, QueryMode::Unnamed, QueryMode::Simple] {
        let mut config = Config::parse(&server.conninfo("")).check("parse")?;
        config.query_mode(mode);
        let mut c = connect_with(&config).await.check("connect")?;
        c.batch_execute("DISCARD ALL").await.check("DISCARD ALL")?;
        let row = c
            .query_one(
                "SELECT $1::int8 * 2, $2::text || '!', $3::bool",
                &[&21i64, &"it's", &false],
            )
            .await
            .check(&format!("{mode:?}"))?;
        ensure_eq!(row.get::<_, i64>(0), 42);
        ensure_eq!(row.get::<_, String>(1), "it's!");
        ensure!(!row.get::<_, bool>(2), "{mode:?}: bool");
        let n = c
            .execute("SELECT g FROM generate_series(1, $1::int4) g", &[&7i32])
            .await
            .check("execute")?;
        ensure_eq!(n, 7);
        let cached = prepared_on_server(&mut c).await?;
        let want = i64::from(mode == QueryMode::Cached) * 2;
        ensure!(
            cached == want,
            "{mode:?}: {cached} statements on the server"
        );
        close(c).await?;
    }
    Ok("Cached, Unnamed and Simple".into())
}

async fn transactions_and_savepoints(server: &Server) -> Outcome {
    let mut c = session(server).await?;
    c.batch_execute("CREATE TEMP TABLE tx (v int)")
        .await
        .check("create")?;
    let mut tx = c.transaction().await.check("begin")?;
    tx.execute("INSERT INTO tx VALUES (1)", &[])
        .await
        .check("1")?;
    {
        let sp = tx.transaction().await.check("savepoint")?;
        sp.execute("INSERT INTO tx VALUES (2)", &[])
            .await
            .check("2")?;
        sp.rollback().await.check("rollback to savepoint")?;
    }
    {
        let sp = tx.savepoint("named").await.check("named savepoint")?;
        sp.execute("INSERT INTO tx VALUES (3)", &[])
            .await
            .check("3")?;
        ensure!(
            sp.batch_execute("SELECT nope").await.is_err(),
            "an error was expected"
        );
        ensure_eq!(sp.transaction_status(), TransactionStatus::Failed);
    }
    // The failed savepoint was dropped, so rolled back; the transaction goes on.
    tx.execute("INSERT INTO tx VALUES (4)", &[])
        .await
        .check("4")?;
    tx.commit().await.check("commit")?;
    ensure_eq!(values(&mut c, "tx").await?, [1, 4]);
    {
        let tx = c.transaction().await.check("begin")?;
        tx.execute("INSERT INTO tx VALUES (5)", &[])
            .await
            .check("5")?;
        // Dropped without commit: rolled back before the next request.
    }
    ensure_eq!(values(&mut c, "tx").await?, [1, 4]);
    let mut tx = c
        .build_transaction()
        .isolation_level(IsolationLevel::Serializable)
        .read_only(true)
        .start()
        .await
        .check("build_transaction")?;
    let row = first_row(
        &mut tx,
        "SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only')",
    )
    .await?;
    ensure_eq!(row, ["serializable", "on"]);
    // Temporary tables are writable in a read-only transaction; a new table is not.
    let err = tx
        .execute("CREATE TABLE pgl_read_only (v int)", &[])
        .await
        .err()
        .ok_or("a read-only transaction created a table")?;
    ensure_eq!(err.code(), Some(READ_ONLY_SQL_TRANSACTION));
    tx.rollback().await.check("rollback")?;
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);
    close(c).await?;
    Ok("commit, rollback, savepoints, drop, serializable read only".into())
}

async fn errors_and_recovery(server: &Server) -> Outcome {
    let mut c = session(server).await?;
    let err = c.simple_query("SELEC 1").await.err().ok_or("bad SQL ran")?;
    ensure_eq!(err.code(), Some(sqlstate::SYNTAX_ERROR));
    let err = c
        .query_one("SELECT 1 / $1::int4", &[&0i32])
        .await
        .err()
        .ok_or("division by zero")?;
    ensure_eq!(err.code(), Some(DIVISION_BY_ZERO));
    ensure!(!err.is_connection_broken(), "{err}");
    c.batch_execute(
        "CREATE TEMP TABLE uq (v int CONSTRAINT uq_v PRIMARY KEY); INSERT INTO uq VALUES (1)",
    )
    .await
    .check("create")?;
    let err = c
        .execute("INSERT INTO uq VALUES ($1)", &[&1i32])
        .await
        .err()
        .ok_or("duplicate key")?;
    let db = err.as_db_error().ok_or("no server error")?;
    ensure_eq!(db.code(), sqlstate::UNIQUE_VIOLATION);
    ensure_eq!(db.constraint(), Some("uq_v"));
    ensure_eq!(db.table(), Some("uq"));
    // In a transaction block: the block fails, and rolls back cleanly.
    let tx = c.transaction().await.check("begin")?;
    ensure!(
        tx.execute("INSERT INTO uq VALUES (1)", &[]).await.is_err(),
        "duplicate in the block"
    );
    ensure_eq!(tx.transaction_status(), TransactionStatus::Failed);
    let err = tx
        .query_one("SELECT 1", &[])
        .await
        .err()
        .ok_or("a query ran in a failed block")?;
    ensure_eq!(err.code(), Some(IN_FAILED_SQL_TRANSACTION));
    tx.rollback().await.check("rollback")?;
    let v: i32 = c
        .query_one("SELECT $1::int4 + 1", &[&41i32])
        .await
        .check("after")?
        .get(0);
    ensure_eq!(v, 42);
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);
    close(c).await?;
    Ok("42601, 22012, 23505 with its fields, 25P02; recovered".into())
}

async fn row_stream(server: &Server) -> Outcome {
    const ROWS: i64 = 100_000;
    let mut c = session(server).await?;
    let mut stream = c
        .query_stream(
            "SELECT g::int8 FROM generate_series(1, $1::int8) g",
            &[&ROWS],
        )
        .await
        .check("start")?;
    let (mut count, mut sum) = (0i64, 0i64);
    while let Some(row) = stream.next().await.check("next")? {
        count += 1;
        sum += row.get::<_, i64>(0);
    }
    ensure_eq!(stream.rows_affected(), Some(ROWS as u64));
    drop(stream);
    ensure_eq!((count, sum), (ROWS, ROWS * (ROWS + 1) / 2));
    {
        let mut stream = c
            .query_stream("SELECT g FROM generate_series(1, 50000) g", &[])
            .await
            .check("start")?;
        for expected in 1..=10 {
            let row = stream.next().await.check("next")?.ok_or("ended early")?;
            ensure_eq!(row.get::<_, i32>(0), expected);
        }
        // Dropped with rows unread: the next call reads them out.
    }
    let v: i32 = c
        .query_one("SELECT 7", &[])
        .await
        .check("after the dropped stream")?
        .get(0);
    ensure_eq!(v, 7);
    close(c).await?;
    Ok(format!("{ROWS} rows streamed; a stream dropped midway"))
}

async fn portals_and_cursors(server: &Server) -> Outcome {
    let mut c = session(server).await?;
    let mut cursor = c
        .cursor(
            "SELECT g FROM generate_series(1, $1::int4) g",
            &[&2500i32],
            1000,
        )
        .await
        .check("cursor")?;
    let mut sizes = Vec::new();
    while let Some(batch) = cursor.next_batch().await.check("next_batch")? {
        sizes.push(batch.len());
    }
    drop(cursor);
    ensure_eq!(sizes, [1000, 1000, 500]);
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);

    let mut tx = c.transaction().await.check("begin")?;
    let portal = tx
        .bind("SELECT g FROM generate_series(1, $1) g", &[&250i32])
        .await
        .check("bind")?;
    let mut sizes = Vec::new();
    let mut next = 1;
    loop {
        let batch = tx.query_portal(&portal, 100).await.check("fetch")?;
        for row in &batch {
            ensure_eq!(row.get::<_, i32>(0), next);
            next += 1;
        }
        sizes.push(batch.len());
        if batch.len() < 100 {
            break;
        }
    }
    ensure_eq!(sizes, [100, 100, 50]);
    drop(portal);
    tx.commit().await.check("commit")?;
    close(c).await?;
    Ok("cursor batches 1000/1000/500; portal fetches 100/100/50".into())
}

async fn pipelines(server: &Server) -> Outcome {
    let mut c = session(server).await?;
    c.batch_execute("CREATE TEMP TABLE pl (v int PRIMARY KEY)")
        .await
        .check("create")?;
    let values: Vec<i32> = (1..=100).collect();
    for (mode, chunk) in [
        (PipelineMode::Atomic, &values[..50]),
        (PipelineMode::Independent, &values[50..]),
    ] {
        let mut pipeline = Pipeline::new(mode);
        for v in chunk {
            pipeline.push("INSERT INTO pl VALUES ($1)", &[v]);
        }
        for (i, result) in c
            .run_pipeline(&pipeline)
            .await
            .check("run")?
            .into_iter()
            .enumerate()
        {
            ensure_eq!(result.check(&format!("{mode:?} {i}"))?.rows_affected(), 1);
        }
    }
    ensure_eq!(count(&mut c, "pl").await?, 100);
    // A duplicate in the middle: atomic skips the rest and keeps nothing; independent keeps the others.
    let dupes = [1000i32, 1001, 1, 1002];
    let mut pipeline = Pipeline::new(PipelineMode::Atomic);
    for v in &dupes {
        pipeline.push("INSERT INTO pl VALUES ($1)", &[v]);
    }
    let results = c.run_pipeline(&pipeline).await.check("atomic")?;
    ensure_eq!(
        results[2].as_ref().err().and_then(|e| e.code()),
        Some(sqlstate::UNIQUE_VIOLATION)
    );
    ensure_eq!(
        results[3].as_ref().err().map(|e| e.kind()),
        Some(ErrorKind::Skipped)
    );
    ensure_eq!(count(&mut c, "pl").await?, 100);
    let mut pipeline = Pipeline::new(PipelineMode::Independent);
    for v in &dupes {
        pipeline.push("INSERT INTO pl VALUES ($1)", &[v]);
    }
    let results = c.run_pipeline(&pipeline).await.check("independent")?;
    ensure!(results[2].is_err() && results[3].is_ok(), "{results:?}");
    ensure_eq!(count(&mut c, "pl").await?, 103);
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);
    close(c).await?;
    Ok("100 inserts in both modes; an error in the middle of each".into())
}

async fn copy_out(server: &Server) -> Outcome {
    let mut c = session(server).await?;
    let mut reader = c
        .copy_out("COPY (SELECT g, 'n' || g FROM generate_series(1, 1000) g) TO STDOUT")
        .await
        .check("copy_out")?;
    let mut data = Vec::new();
    while let Some(chunk) = reader.next().await.check("next")? {
        data.extend_from_slice(&chunk);
    }
    ensure_eq!(reader.rows(), Some(1000));
    drop(reader);
    let text = String::from_utf8(data).check("utf-8")?;
    ensure_eq!(text.lines().count(), 1000);
    ensure_eq!(text.lines().last(), Some("1000\tn1000"));
    let mut reader = c
        .copy_out("COPY (SELECT 1::int4) TO STDOUT (FORMAT binary)")
        .await
        .check("binary copy_out")?;
    ensure!(reader.is_binary(), "binary COPY reported as text");
    while reader.next().await.check("next")?.is_some() {}
    drop(reader);
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);
    close(c).await?;
    Ok("1000 rows in text; binary".into())
}

/// One session listens and notifies itself (another session cannot connect at the same time).
async fn listen_notify_in_one_session(server: &Server) -> Outcome {
    let channel = "pglite \"chan\"";
    let mut c = session(server).await?;
    c.listen(channel).await.check("listen")?;
    c.notify(channel, "one").await.check("notify")?;
    let pid = c.backend_pid().unwrap_or(0);
    let got = c
        .wait_for_notification(Duration::from_secs(5))
        .await
        .check("wait")?
        .ok_or("no notification")?;
    ensure_eq!((got.channel(), got.payload()), (channel, "one"));
    ensure_eq!(got.process_id(), pid);
    let started = Instant::now();
    let none = c
        .wait_for_notification(Duration::from_millis(200))
        .await
        .check("empty wait")?;
    ensure!(none.is_none(), "got {none:?}");
    ensure!(
        started.elapsed() >= Duration::from_millis(180),
        "the empty wait returned early"
    );
    // Inside a transaction, delivered at commit.
    let tx = c.transaction().await.check("begin")?;
    tx.notify(channel, "two").await.check("notify in tx")?;
    ensure!(
        tx.take_notifications().is_empty(),
        "delivered before the commit"
    );
    tx.commit().await.check("commit")?;
    let got = c
        .wait_for_notification(Duration::from_secs(5))
        .await
        .check("wait")?
        .ok_or("no notification after the commit")?;
    ensure_eq!(got.payload(), "two");
    c.unlisten_all().await.check("unlisten")?;
    close(c).await?;
    Ok(format!("backend pid {pid}"))
}

async fn enum_type_lookup(server: &Server) -> Outcome {
    let c = session(server).await?;
    c.batch_execute(
        "DROP TYPE IF EXISTS pgl_mood CASCADE; CREATE TYPE pgl_mood AS ENUM ('sad', 'ok', 'happy')",
    )
    .await
    .check("create type")?;
    let row = c
        .query_one(
            "SELECT 'happy'::pgl_mood, ARRAY['ok', 'sad']::pgl_mood[]",
            &[],
        )
        .await
        .check("select")?;
    let ty = row.columns()[0].type_();
    ensure_eq!(ty.name(), "pgl_mood");
    ensure!(
        matches!(ty.kind(), Kind::Enum(v) if v == &["sad", "ok", "happy"]),
        "kind {:?}",
        ty.kind()
    );
    ensure_eq!(row.raw(0).check("raw")?, Some(&b"happy"[..]));
    ensure!(
        matches!(row.columns()[1].type_().kind(), Kind::Array(t) if t.name() == "pgl_mood"),
        "array kind {:?}",
        row.columns()[1].type_().kind()
    );
    c.batch_execute("DROP TYPE pgl_mood").await.check("drop")?;
    close(c).await?;
    Ok("enum and enum[] looked up".into())
}

async fn sslmode_prefer_and_allow_use_plaintext(server: &Server) -> Outcome {
    for mode in ["prefer", "allow"] {
        let mut c = connect(&server.conninfo(&format!("sslmode={mode}"))).await?;
        ensure!(
            !c.uses_tls(),
            "sslmode={mode}: TLS with a server that has none"
        );
        first_row(&mut c, "SELECT 1").await?;
        close(c).await?;
    }
    Ok("plaintext both".into())
}

// ---------------------------------------------------------------------------------------------------------
// What PGlite does not support, as it fails today.
// ---------------------------------------------------------------------------------------------------------

/// While one client is connected, a second one is closed before its startup is answered.
async fn one_connection_at_a_time(server: &Server) -> Outcome {
    let mut first = session(server).await?;
    // Long enough for the server to have seen the close of any earlier client: only `first` holds the slot.
    sleep(Duration::from_millis(300)).await;
    let config = Config::parse(&server.conninfo("")).check("parse")?;
    for attempt in 1..=3 {
        let err = match Client::connect(&config).await {
            Ok(_) => return Err(format!("second connection {attempt} was accepted")),
            Err(e) => e,
        };
        ensure!(turned_away(&err), "second connection {attempt}: {err}");
    }
    let message = short(
        &Client::connect(&config)
            .await
            .err()
            .ok_or("accepted")?
            .to_string(),
    );
    // The first connection is unharmed.
    first_row(&mut first, "SELECT 1").await?;
    close(first).await?;
    Ok(message)
}

/// A prepared statement, a temporary table, a setting and a LISTEN of one client are still there for the
/// next; and the next client's statement cache reuses the previous one's statement names.
async fn session_state_outlives_the_connection(server: &Server) -> Outcome {
    let c = session(server).await?;
    c.batch_execute(
        "PREPARE pgl_kept AS SELECT 1; CREATE TEMP TABLE pgl_kept (v int); \
         SET application_name = 'pgl_kept'; LISTEN pgl_kept",
    )
    .await
    .check("leave state")?;
    // The cache names its statements per client, from the same start.
    c.query_one("SELECT $1::int4", &[&1i32])
        .await
        .check("cached")?;
    close(c).await?;

    let mut c = connect(&server.conninfo("")).await?;
    let row = first_row(
        &mut c,
        "SELECT (SELECT count(*) FROM pg_prepared_statements WHERE name = 'pgl_kept'), \
         (SELECT count(*) FROM pg_class WHERE relname = 'pgl_kept' AND relpersistence = 't'), \
         current_setting('application_name'), \
         (SELECT count(*) FROM pg_listening_channels() c WHERE c = 'pgl_kept')",
    )
    .await?;
    ensure_eq!(row, ["1", "1", "pgl_kept", "1"]);
    // The previous client's cached statement is still prepared; statement names carry the client id, so
    // this client's cache does not collide with it.
    let leftover = first_row(
        &mut c,
        "SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'wpc%'",
    )
    .await?;
    ensure!(
        leftover[0] != "0",
        "the previous client's cached statement is gone"
    );
    let v: String = c
        .query_one("SELECT $1::text", &[&"x"])
        .await
        .check("cache next to a previous client's statements")?
        .get(0);
    ensure_eq!(v, "x");
    // DISCARD ALL gives the session a clean slate.
    c.batch_execute("DISCARD ALL").await.check("DISCARD ALL")?;
    let after = first_row(&mut c, "SELECT count(*) FROM pg_prepared_statements").await?;
    ensure_eq!(after, ["0"]);
    close(c).await?;
    Ok(format!(
        "{} cached statement(s) of an earlier client were still prepared",
        leftover[0]
    ))
}

async fn tls_is_refused(server: &Server) -> Outcome {
    let mut seen = Vec::new();
    for mode in ["sslmode=require", "sslmode=verify-full sslrootcert=system"] {
        let conninfo = server.conninfo(mode);
        let err = match connect_with(&Config::parse(&conninfo).check("parse")?).await {
            Ok(_) => return Err(format!("{mode} connected")),
            Err(e) => e,
        };
        let message = err.to_string();
        ensure!(
            message.contains("server does not support SSL"),
            "{mode}: {message}"
        );
        seen.push(message);
    }
    seen.dedup();
    Ok(seen.join(" | "))
}

async fn protocol_3_2_is_not_negotiated(server: &Server) -> Outcome {
    let mut config = Config::parse(&server.conninfo("")).check("parse")?;
    config
        .max_protocol_version(ProtocolVersion::V3_2)
        .connect_timeout(Duration::from_secs(3));
    let started = Instant::now();
    let err = match connect_with(&config).await {
        Ok(_) => return Err("protocol 3.2 was accepted".into()),
        Err(e) => e,
    };
    let took = started.elapsed();
    ensure_eq!(err.kind(), ErrorKind::Timeout);
    ensure!(
        took >= Duration::from_secs(3),
        "failed after {took:?}: {err}"
    );
    // The server is not hurt: 3.0 still works.
    let mut c = connect(&server.conninfo("max_protocol_version=3.0")).await?;
    first_row(&mut c, "SELECT 1").await?;
    close(c).await?;
    Ok(err.to_string())
}

/// A cancel sent while `pg_sleep(1)` runs returns (the server closes the cancel connection), but the query
/// runs to its end and succeeds.
async fn cancel_is_ignored(server: &Server) -> Outcome {
    let mut c = session(server).await?;
    let token = c.cancel_token();
    let started = Instant::now();
    let (query, cancel) = join(c.query_one("SELECT pg_sleep(1.5)::text", &[]), async {
        sleep(Duration::from_millis(300)).await;
        token.cancel_query().await
    })
    .await;
    let took = started.elapsed();
    // The cancel connection is turned away like any second connection. Natively that is the close
    // cancel_query waits for; on WASI the reset reaches it as an I/O error instead.
    let cancel = match cancel {
        Ok(()) => "cancel_query returned".to_owned(),
        Err(e) if turned_away(&e) => format!("cancel_query failed: {}", short(&e.to_string())),
        Err(e) => return Err(format!("cancel_query: {e}")),
    };
    query.check("the query was cancelled")?;
    ensure!(took >= Duration::from_millis(1500), "took {took:?}");
    first_row(&mut c, "SELECT 1").await?;
    close(c).await?;
    Ok(format!("{cancel}; pg_sleep(1.5) finished after {took:.1?}"))
}

/// A client that goes away while its query runs does not stop it: the next client's startup waits until the
/// abandoned query has ended, then gets a clean session.
async fn disconnect_mid_query_blocks_the_next_client(server: &Server) -> Outcome {
    const SLEEP: Duration = Duration::from_millis(1500);
    const RUN_BEFORE_DROP: Duration = Duration::from_millis(300);
    let c = session(server).await?;
    let started = Instant::now();
    let unfinished = with_timeout(
        RUN_BEFORE_DROP,
        c.query(&*format!("SELECT pg_sleep({})", SLEEP.as_secs_f64()), &[]),
    )
    .await;
    ensure!(
        unfinished.is_none(),
        "the sleep ended within {RUN_BEFORE_DROP:?}"
    );
    drop(c);
    let mut c = connect(&server.conninfo("")).await?;
    let row = first_row(&mut c, "SELECT 'fresh'").await?;
    let took = started.elapsed();
    ensure_eq!(row, ["fresh"]);
    ensure!(took >= SLEEP, "the next client was served after {took:?}");
    close(c).await?;
    Ok(format!(
        "dropped after {RUN_BEFORE_DROP:?}; the next client was served {took:.1?} after the sleep started"
    ))
}

/// A query timeout cannot stop a query either: the call fails with a timeout only once the query has run to its
/// end, and the connection stays usable (on both targets).
async fn query_timeout_waits_for_the_query(server: &Server) -> Outcome {
    let mut c = session(server).await?;
    let limit = Duration::from_millis(300);
    let started = Instant::now();
    let result = c
        .with_query_timeout(limit)
        .query("SELECT pg_sleep(1.5)", &[])
        .await;
    let took = started.elapsed();
    let err = result.err().ok_or("the query did not time out")?;
    let message = short(&err.to_string());
    ensure_eq!(err.kind(), ErrorKind::Timeout);
    ensure!(
        took >= Duration::from_millis(1500),
        "took {took:?}: {message}"
    );
    ensure!(
        !c.is_closed(),
        "the timeout closed the connection: {message}"
    );
    first_row(&mut c, "SELECT 1").await?;
    close(c).await?;
    Ok(format!("{message}, returned after {took:.1?}"))
}

/// COPY FROM STDIN starts (CopyInResponse), then the data ends the session with a FATAL error, and the backend is
/// gone for good: a new connection is accepted but never answered.
async fn copy_in_kills_the_backend(server: &Server) -> Outcome {
    let mut c = session(server).await?;
    c.batch_execute("CREATE TEMP TABLE cin (v int)")
        .await
        .check("create")?;
    let err = {
        let mut writer = c
            .copy_in("COPY cin FROM STDIN")
            .await
            .check("copy_in (CopyInResponse)")?;
        match writer.write(b"1\n2\n").await {
            Ok(()) => match writer.finish().await {
                Ok(n) => return Err(format!("COPY FROM STDIN wrote {n} rows")),
                Err(e) => e,
            },
            Err(e) => e,
        }
    };
    let db = err
        .as_db_error()
        .ok_or_else(|| format!("not a server error: {err}"))?;
    ensure_eq!(
        (db.severity(), db.code(), db.message()),
        (
            "FATAL",
            "08P01",
            "terminating connection because protocol synchronization was lost"
        )
    );
    ensure!(c.is_closed(), "the connection is still open");
    drop(c);
    let mut config = Config::parse(&server.conninfo("")).check("parse")?;
    config.connect_timeout(Duration::from_secs(3));
    let after = match connect_with(&config).await {
        Ok(_) => return Err("the server answered after the failed COPY".into()),
        Err(e) => e,
    };
    ensure_eq!(after.kind(), ErrorKind::Timeout);
    Ok(format!("{err}; then: {after}"))
}

// ---------------------------------------------------------------------------------------------------------
// Client-side helpers.
// ---------------------------------------------------------------------------------------------------------

/// Connects, retrying for up to [`RECONNECT_WINDOW`] while the server turns the connection away.
///
/// The server frees its one connection slot only once it has processed the previous client's close, a few
/// milliseconds after `close` returned here; until then it resets every new connection. The retries are
/// counted in [`TURNED_AWAY`], which the summary prints.
async fn connect(conninfo: &str) -> Result<Client, String> {
    let config = Config::parse(conninfo).check("parse")?;
    connect_with(&config)
        .await
        .map_err(|e| format!("connect ({conninfo}): {e}"))
}

/// [`connect`] with a [`Config`], returning the client's error as it is.
async fn connect_with(config: &Config) -> Result<Client, wasi_pg_client::Error> {
    let started = Instant::now();
    loop {
        match Client::connect(config).await {
            Err(e) if turned_away(&e) && started.elapsed() < RECONNECT_WINDOW => {
                TURNED_AWAY.fetch_add(1, Ordering::Relaxed);
                sleep(Duration::from_millis(20)).await;
            }
            result => return result,
        }
    }
}

/// Whether the server turned the connection away before answering the startup, as it does to a connection
/// beyond its one slot: Node closes or resets it at once (on WASI the reset arrives as an I/O error of kind
/// `Other` whose text names it), or, when Node has let it in but the previous client's handler is still
/// registered, pglite-server writes the text "Too many connections" and closes it, whose `T` we read as the
/// answer to our SSLRequest.
fn turned_away(e: &wasi_pg_client::Error) -> bool {
    let message = e.to_string();
    match e.kind() {
        ErrorKind::Io => {
            message.contains("closed the connection unexpectedly")
                || message.contains("reset")
                || message.contains("ConnectionReset")
        }
        ErrorKind::Protocol => message.contains("invalid response 0x54 to the SSL request"),
        _ => false,
    }
}

/// A client whose session starts clean: every connection reaches the same PGlite backend, which still holds
/// what earlier clients left (see `session_state_outlives_the_connection`).
async fn session(server: &Server) -> Result<Client, String> {
    let c = connect(&server.conninfo("")).await?;
    c.batch_execute("DISCARD ALL").await.check("DISCARD ALL")?;
    Ok(c)
}

/// `text` without the backtrace wasmtime appends to the text of a WASI socket error.
fn short(text: &str) -> String {
    match text.find("Stack backtrace:") {
        Some(at) => format!("{} [backtrace cut]", text[..at].trim_end()),
        None => text.to_owned(),
    }
}

async fn close(client: Client) -> Result<(), String> {
    client.close().await.check("close")
}

/// The first row of `sql` as text, NULLs as empty strings.
async fn first_row(client: &mut Client, sql: &str) -> Result<Vec<String>, String> {
    let messages = client.simple_query(sql).await.check(sql)?;
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or_default().to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .ok_or_else(|| format!("{sql}: no row"))
}

/// Statements prepared on the server for this session, read through the simple protocol.
async fn prepared_on_server(c: &mut Client) -> Result<i64, String> {
    first_row(c, "SELECT count(*) FROM pg_prepared_statements").await?[0]
        .parse()
        .check("count")
}

async fn count(c: &mut Client, table: &str) -> Result<i64, String> {
    first_row(c, &format!("SELECT count(*) FROM {table}")).await?[0]
        .parse()
        .check("count")
}

/// The `v` column of `table`, in order.
async fn values(c: &mut Client, table: &str) -> Result<Vec<i32>, String> {
    Ok(c.query(&*format!("SELECT v FROM {table} ORDER BY v"), &[])
        .await
        .check("values")?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

// ---------------------------------------------------------------------------------------------------------
// The two harnesses.
// ---------------------------------------------------------------------------------------------------------

/// The marker of the line in which the wasm guest reports [`TURNED_AWAY`]: `turned_away\t<n>`.
const TURNED_AWAY_LINE: &str = "turned_away";
/// The environment variable that carries the server's port to the guest.
const ENV_PORT: &str = "PGLITE_PORT";

#[cfg(not(target_os = "wasi"))]
fn main() {
    // `run` returns before the exit, so the servers are stopped either way.
    if let Some(totals) = run() {
        totals.finish("PGlite");
    }
}

/// Runs every case natively, then under wasmtime (WASI 0.2, then 0.3), each against a fresh server; `None` for `PGLITE_SERVE`.
#[cfg(not(target_os = "wasi"))]
fn run() -> Option<two_target::Totals> {
    use support::pglite::PGlite;
    use two_target::{Guest, Tally, Totals};

    let serve_only = std::env::var_os("PGLITE_SERVE").is_some();
    // The guest builds while the first server loads PGlite and the native cases run.
    let build = (!serve_only).then(Guest::build_in_background);
    let mut server = PGlite::start();
    let Some(build) = build else {
        serve(&server);
        return None;
    };

    let cases = all_cases();
    let mut native = Tally::native();
    native.detail(format_args!("the server loaded in {:.1?}", server.startup));
    let runtime = two_target::native_runtime();
    let target = Server { port: server.port };
    for case in &cases {
        native.record(case.name, runtime.block_on((case.run)(&target)));
    }
    native.end();
    let native_turned_away = TURNED_AWAY.load(Ordering::Relaxed);
    if native.failed() {
        eprintln!(
            "pglite-server log (last 40 lines):\n{}",
            server.log_tail(40)
        );
    }
    server.stop();

    // The same cases in each guest build (WASI 0.2, then 0.3), each against a fresh server; the number of
    // connects each retried.
    let run_guest = |guest: Guest| {
        let mut server = PGlite::start();
        let mut tally = Tally::for_guest(&guest);
        tally.detail(format_args!("the server loaded in {:.1?}", server.startup));
        let port = server.port.to_string();
        let run = guest.run(&[(ENV_PORT, &port)], &[]);
        tally.record_guest(&run, cases.iter().map(|case| case.name));
        tally.end();
        let turned_away = run.stdout().lines().find_map(|line| {
            line.strip_prefix(TURNED_AWAY_LINE)?
                .trim()
                .parse::<usize>()
                .ok()
        });
        if tally.failed() {
            eprintln!(
                "pglite-server log (last 40 lines):\n{}",
                server.log_tail(40)
            );
        }
        server.stop();
        (tally, turned_away)
    };
    let (wasm, guest_turned_away) = run_guest(build.wait());
    let (wasi_p3, p3_turned_away) = run_guest(Guest::build_p3());

    println!("\nPGlite does not support (each shown by the case named):");
    for case in &cases {
        if let Some(why) = case.unsupported {
            println!(
                "  - {} ({})",
                why.split_whitespace().collect::<Vec<_>>().join(" "),
                case.name
            );
        }
    }
    let retried = format!(
        "connects retried while the server still held the previous client's slot: native {native_turned_away}, \
         {} {}, {} {}",
        two_target::WASM,
        guest_turned_away.map_or("unknown".to_owned(), |n| n.to_string()),
        two_target::WASI_P3,
        p3_turned_away.map_or("unknown".to_owned(), |n| n.to_string())
    );
    Some(Totals {
        native,
        wasm,
        wasi_p3,
        notes: vec![retried],
    })
}

/// `PGLITE_SERVE`: prints how to reach the server, then waits for stdin to close.
#[cfg(not(target_os = "wasi"))]
fn serve(server: &support::pglite::PGlite) {
    println!(
        "pglite-server on 127.0.0.1:{} (loaded in {:.1?})",
        server.port, server.startup
    );
    println!(
        "try: psql \"host=127.0.0.1 port={} user=postgres sslmode=disable\" -Xc 'select version()'",
        server.port
    );
    println!("its log: {}", server.log_path().display());
    println!("close stdin to stop");
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
}

/// Runs every case and prints an outcome line for each, then the number of connects retried.
#[cfg(target_os = "wasi")]
fn main() {
    let server = Server {
        port: two_target::guest_port(ENV_PORT),
    };
    for case in all_cases() {
        // Without the backtrace wasmtime appends to the text of a WASI socket error.
        let outcome = async {
            (case.run)(&server)
                .await
                .map(|seen| short(&seen))
                .map_err(|why| short(&why))
        };
        two_target::run_in_guest(case.name, outcome);
    }
    println!(
        "{TURNED_AWAY_LINE}\t{}",
        TURNED_AWAY.load(Ordering::Relaxed)
    );
}
