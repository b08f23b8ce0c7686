//! Query modes and the statement cache, against the real server on both targets.

use wasi_pg_client::config::QueryMode;
use wasi_pg_client::{Client, Config, ErrorKind, SimpleQueryMessage, TransactionStatus, sqlstate};

use super::{Check, Env, Outcome, Scenario};

pub(super) fn scenarios() -> Vec<(&'static str, Scenario)> {
    scenarios![
        statement_cache_reuses_and_evicts,
        statement_cache_disabled_leaves_nothing,
        statement_cache_survives_schema_change,
        statement_cache_survives_discard_all,
        unnamed_mode_one_round_trip_and_fallback,
        simple_mode_parameters_and_results,
    ]
}

async fn connect_mode(
    conninfo: &str,
    mode: QueryMode,
    capacity: Option<usize>,
) -> Result<Client, String> {
    let mut config = Config::parse(conninfo).check("parse conninfo")?;
    config.query_mode(mode);
    if let Some(capacity) = capacity {
        config.statement_cache_capacity(capacity);
    }
    Client::connect(&config).await.check("connect")
}

/// Statements prepared on the server for this session, read through the simple protocol (which never
/// touches the cache).
async fn prepared_on_server(c: &mut Client) -> Result<i64, String> {
    let messages = c
        .simple_query("SELECT count(*) FROM pg_prepared_statements")
        .await
        .check("count prepared statements")?;
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .ok_or_else(|| "no count".to_string())
}

async fn statement_cache_reuses_and_evicts(env: &Env) -> Outcome {
    let mut c = connect_mode(&env.scram, QueryMode::Cached, Some(3)).await?;
    for i in 1..=5i32 {
        let sql = format!("SELECT $1::int4 + {i}");
        let row = c.query_one(sql.as_str(), &[&10i32]).await.check("query")?;
        ensure_eq!(row.get::<_, i32>(0), 10 + i);
    }
    ensure_eq!(c.cached_statements(), 3);
    // The two evicted statements were closed with the next request.
    ensure_eq!(prepared_on_server(&mut c).await?, 3);
    // A hit prepares nothing new.
    for _ in 0..3 {
        let row = c
            .query_one("SELECT $1::int4 + 5", &[&1i32])
            .await
            .check("hit")?;
        ensure_eq!(row.get::<_, i32>(0), 6);
    }
    ensure_eq!(prepared_on_server(&mut c).await?, 3);
    Ok(())
}

async fn statement_cache_disabled_leaves_nothing(env: &Env) -> Outcome {
    for mode in [QueryMode::Cached, QueryMode::Unnamed, QueryMode::Simple] {
        let capacity = (mode == QueryMode::Cached).then_some(0);
        let mut c = connect_mode(&env.scram, mode, capacity).await?;
        for i in 0..5i64 {
            let n = c
                .query_one("SELECT $1::int8 * 2", &[&i])
                .await
                .check("query")?
                .get::<_, i64>(0);
            ensure_eq!(n, i * 2);
        }
        ensure!(
            prepared_on_server(&mut c).await? == 0,
            "{mode:?} left statements on the server"
        );
    }
    Ok(())
}

async fn statement_cache_survives_schema_change(env: &Env) -> Outcome {
    let c = connect_mode(&env.scram, QueryMode::Cached, None).await?;
    c.batch_execute("CREATE TEMP TABLE sc (a int); INSERT INTO sc VALUES (1)")
        .await
        .check("create")?;
    let rows = c.query("SELECT * FROM sc", &[]).await.check("first")?;
    ensure_eq!(rows[0].len(), 1);
    c.batch_execute("ALTER TABLE sc ADD COLUMN b text DEFAULT 'x'")
        .await
        .check("alter")?;
    // Outside a transaction the stale plan is prepared again and the query retried once.
    let rows = c
        .query("SELECT * FROM sc", &[])
        .await
        .check("after alter")?;
    ensure_eq!(rows[0].len(), 2);
    ensure_eq!(rows[0].get::<_, &str>("b"), "x");
    // Inside a transaction the block has failed: the error is returned, and the next use after the rollback
    // prepares afresh.
    c.batch_execute("ALTER TABLE sc ADD COLUMN c int DEFAULT 7")
        .await
        .check("alter again")?;
    c.batch_execute("BEGIN").await.check("begin")?;
    let err = c
        .query("SELECT * FROM sc", &[])
        .await
        .err()
        .ok_or("a stale plan inside a transaction must fail")?;
    ensure!(
        err.kind() == ErrorKind::Db,
        "expected the server's error, got {err}"
    );
    ensure_eq!(c.transaction_status(), TransactionStatus::Failed);
    c.batch_execute("ROLLBACK").await.check("rollback")?;
    let rows = c
        .query("SELECT * FROM sc", &[])
        .await
        .check("after rollback")?;
    ensure_eq!(rows[0].len(), 3);
    Ok(())
}

async fn statement_cache_survives_discard_all(env: &Env) -> Outcome {
    let mut c = connect_mode(&env.scram, QueryMode::Cached, None).await?;
    let sql = "SELECT $1::text || 'x'";
    ensure_eq!(
        c.query_one(sql, &[&"a"])
            .await
            .check("first")?
            .get::<_, String>(0),
        "ax"
    );
    c.batch_execute("DISCARD ALL").await.check("discard")?;
    ensure_eq!(prepared_on_server(&mut c).await?, 0);
    ensure_eq!(
        c.query_one(sql, &[&"b"])
            .await
            .check("after discard")?
            .get::<_, String>(0),
        "bx"
    );
    // A row stream returns the error instead of running again, but drops the stale entry, so the next
    // stream prepares afresh instead of failing the same way forever.
    ensure_eq!(stream_count(&mut c, 3).await.check("stream")?, 3);
    c.batch_execute("DISCARD ALL")
        .await
        .check("discard again")?;
    let err = stream_count(&mut c, 3)
        .await
        .err()
        .ok_or("a stream of a discarded statement ran")?;
    ensure_eq!(err.code(), Some(sqlstate::INVALID_SQL_STATEMENT_NAME));
    ensure_eq!(
        stream_count(&mut c, 4)
            .await
            .check("stream after the error")?,
        4
    );
    Ok(())
}

/// Streams `SELECT g FROM generate_series(1, n) g` through the statement cache and counts the rows.
async fn stream_count(c: &mut Client, n: i32) -> Result<usize, wasi_pg_client::Error> {
    let mut rows = c
        .query_stream("SELECT g FROM generate_series(1, $1) g", &[&n])
        .await?;
    let mut seen = 0;
    while rows.next().await?.is_some() {
        seen += 1;
    }
    Ok(seen)
}

async fn unnamed_mode_one_round_trip_and_fallback(env: &Env) -> Outcome {
    let mut c = connect_mode(&env.scram, QueryMode::Unnamed, None).await?;
    c.batch_execute(
        "DROP TYPE IF EXISTS pgc_mood CASCADE; CREATE TYPE pgc_mood AS ENUM ('sad', 'happy'); \
         CREATE TEMP TABLE um (id int8, name text, mood pgc_mood, at timestamptz, data bytea)",
    )
    .await
    .check("create")?;
    let at = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    // i32 into an int8 column and text into an enum through an explicit cast: the inferred types work.
    let n = c
        .execute(
            "INSERT INTO um VALUES ($1, $2, $3::text::pgc_mood, $4, $5)",
            &[&7i32, &"seven", &"happy", &at, &vec![0u8, 1, 2]],
        )
        .await
        .check("insert")?;
    ensure_eq!(n, 1);
    let row = c
        .query_one(
            "SELECT id, name, mood::text, at, data FROM um WHERE id = $1",
            &[&7i64],
        )
        .await
        .check("select")?;
    ensure_eq!(row.get::<_, i64>(0), 7);
    ensure_eq!(row.get::<_, &str>(1), "seven");
    ensure_eq!(row.get::<_, &str>(2), "happy");
    ensure_eq!(row.get::<_, std::time::SystemTime>(3), at);
    ensure_eq!(row.get::<_, Vec<u8>>(4), vec![0u8, 1, 2]);
    let nulls = c
        .query_one(
            "SELECT $1::int4 IS NULL, $2::text IS NULL",
            &[&None::<i32>, &None::<&str>],
        )
        .await
        .check("nulls")?;
    ensure!(nulls.get::<_, bool>(0) && nulls.get::<_, bool>(1), "NULLs");
    ensure_eq!(prepared_on_server(&mut c).await?, 0);
    Ok(())
}

async fn simple_mode_parameters_and_results(env: &Env) -> Outcome {
    let mut c = connect_mode(&env.scram, QueryMode::Simple, None).await?;
    c.batch_execute("CREATE TEMP TABLE sm (id int, note text, n numeric, at timestamp, d date)")
        .await
        .check("create")?;
    let hostile = "'); DROP TABLE sm; -- $1 \\ ''";
    let at = chrono::NaiveDate::from_ymd_opt(1999, 12, 31)
        .and_then(|d| d.and_hms_micro_opt(23, 59, 58, 123_456))
        .ok_or("date")?;
    let n = c
        .execute(
            "INSERT INTO sm VALUES ($1, $2, 12.50, $3, $4)",
            &[&-3i32, &hostile, &at, &at.date()],
        )
        .await
        .check("insert")?;
    ensure_eq!(n, 1);
    // 1-$1 with a negative value must stay arithmetic, never become a comment.
    let row = c
        .query_one(
            "SELECT 1-$1, note, n, at, d, id FROM sm WHERE id = $1",
            &[&-3i32],
        )
        .await
        .check("select")?;
    ensure_eq!(row.get::<_, i32>(0), 4);
    ensure_eq!(row.get::<_, &str>(1), hostile);
    // numeric has no text conversion: it reads as text.
    ensure_eq!(row.get::<_, String>(2), "12.50");
    ensure_eq!(row.get::<_, chrono::NaiveDateTime>(3), at);
    ensure_eq!(row.get::<_, chrono::NaiveDate>(4), at.date());
    let floats = c
        .query_one(
            "SELECT $1::float8, $2::float4, $3::bool, $4::bytea, $5::uuid",
            &[
                &0.1f64,
                &-2.5f32,
                &true,
                &vec![0u8, 255],
                &uuid::Uuid::from_u128(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff),
            ],
        )
        .await
        .check("scalars")?;
    ensure_eq!(floats.get::<_, f64>(0), 0.1);
    ensure_eq!(floats.get::<_, f32>(1), -2.5);
    ensure!(floats.get::<_, bool>(2), "bool");
    ensure_eq!(floats.get::<_, Vec<u8>>(3), vec![0u8, 255]);
    ensure_eq!(
        floats.get::<_, uuid::Uuid>(4),
        uuid::Uuid::from_u128(0x0011_2233_4455_6677_8899_aabb_ccdd_eeff)
    );
    let err = c
        .query("SELECT 1; SELECT 2", &[])
        .await
        .err()
        .ok_or("two result sets must be refused")?;
    ensure!(err.kind() == ErrorKind::Unsupported, "{err}");
    ensure_eq!(
        c.query_one("SELECT 5", &[])
            .await
            .check("after")?
            .get::<_, i32>(0),
        5
    );
    ensure_eq!(prepared_on_server(&mut c).await?, 0);
    Ok(())
}
