//! Live scenarios shared by the native and the wasm32-wasip2 runs of `tests/live.rs`.
//!
//! A scenario returns `Err(description)` instead of panicking: wasm32-wasip2 aborts on panic, and one failing
//! scenario must not hide the others. [`ensure!`], [`ensure_eq!`], [`Check`] and the async helpers come from
//! `tests/support/two_target.rs`, the runner `tests/live.rs` shares with the other two-target binaries.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use wasi_pg_client::types::{Json, Type};
use wasi_pg_client::{
    Client, Config, ErrorClass, ErrorKind, IsolationLevel, SimpleQueryMessage, TransactionStatus,
    sqlstate,
};

use crate::two_target::{Check, sleep, with_timeout};

/// Where the cluster is and how to log in, passed to the wasm run as environment variables.
pub struct Env {
    pub host: String,
    pub port: u16,
    pub trust: String,
    pub password: String,
    pub md5: String,
    pub scram: String,
    pub scram_url: String,
    pub scram_password: String,
    /// A port whose listener accepts but never answers.
    pub silent_port: u16,
    /// A port nothing listens on.
    pub closed_port: u16,
    /// The server's Unix socket directory (native only).
    #[cfg_attr(target_os = "wasi", allow(dead_code))]
    pub socket_dir: Option<String>,
    /// A password file with entries for the scram and md5 roles.
    pub passfile: String,
    /// The TLS servers and certificates (`tls.rs`).
    pub tls: tls::TlsEnv,
    /// PgBouncer in transaction pooling mode in front of the main cluster (`pgbouncer.rs`).
    pub pgbouncer: pgbouncer::PgBouncerEnv,
}

impl Env {
    #[allow(dead_code)]
    pub fn to_vars(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![
            ("LIVE_HOST", self.host.clone()),
            ("LIVE_PORT", self.port.to_string()),
            ("LIVE_TRUST", self.trust.clone()),
            ("LIVE_PASSWORD", self.password.clone()),
            ("LIVE_MD5", self.md5.clone()),
            ("LIVE_SCRAM", self.scram.clone()),
            ("LIVE_SCRAM_URL", self.scram_url.clone()),
            ("LIVE_SCRAM_PASSWORD", self.scram_password.clone()),
            ("LIVE_SILENT_PORT", self.silent_port.to_string()),
            ("LIVE_CLOSED_PORT", self.closed_port.to_string()),
        ];
        vars.extend(self.tls.to_vars());
        vars.extend(self.pgbouncer.to_vars());
        vars
    }

    #[allow(dead_code)]
    pub fn from_vars() -> Env {
        use crate::two_target::{guest_port, guest_var};
        Env {
            host: guest_var("LIVE_HOST"),
            port: guest_port("LIVE_PORT"),
            trust: guest_var("LIVE_TRUST"),
            password: guest_var("LIVE_PASSWORD"),
            md5: guest_var("LIVE_MD5"),
            scram: guest_var("LIVE_SCRAM"),
            scram_url: guest_var("LIVE_SCRAM_URL"),
            scram_password: guest_var("LIVE_SCRAM_PASSWORD"),
            silent_port: guest_port("LIVE_SILENT_PORT"),
            closed_port: guest_port("LIVE_CLOSED_PORT"),
            socket_dir: None,
            passfile: guest_var("LIVE_PASSFILE"),
            tls: tls::TlsEnv::from_vars(guest_var),
            pgbouncer: pgbouncer::PgBouncerEnv::from_vars(guest_var),
        }
    }
}

/// A scenario's result: `Err` says why it failed (the runner records `Ok` with nothing seen).
pub type Outcome = Result<(), String>;
type ScenarioFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + 'a>>;
pub type Scenario = for<'a> fn(&'a Env) -> ScenarioFuture<'a>;

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), (|env| Box::pin($name(env))) as Scenario)),*]
    };
}

mod cancel;
mod copy;
mod keywords;
mod modes;
mod pgbouncer;
mod replication;
mod replication_faults;
mod session;
mod shared;
mod streams;
mod tls;
mod types;
#[allow(unused_imports)]
pub use pgbouncer::PgBouncerEnv;
#[allow(unused_imports)]
pub use tls::{Login, TlsEnv};

/// The scenarios that run natively only: [`all`] leaves them out on wasm32-wasip2. The host expects an
/// outcome from the guest for each of the others.
pub const NATIVE_ONLY: [&str; 3] = [
    "session_rebuild_after_reset_and_eof",
    "arc_client_shared_by_spawned_tasks",
    "unix_socket",
];

/// Every scenario this target runs, in order.
pub fn all() -> Vec<(&'static str, Scenario)> {
    #[allow(unused_mut)]
    let mut list: Vec<(&str, Scenario)> = scenarios![
        auth_trust,
        auth_password,
        auth_md5,
        auth_scram,
        auth_wrong_passwords,
        require_auth_allows_and_refuses,
        uri_with_percent_encoded_password,
        ipv6_loopback,
        simple_query_results,
        simple_query_error_after_rows,
        empty_query,
        extended_query_and_prepared_reuse,
        query_one_and_opt,
        query_typed_one_round_trip,
        integers_round_trip,
        floats_round_trip,
        numeric_as_text,
        text_and_bytea_round_trip,
        bool_and_nulls_round_trip,
        date_time_round_trip,
        time_crate_round_trip,
        uuid_and_json_round_trip,
        arrays_round_trip,
        enum_type_lookup,
        type_mismatch_is_an_error,
        parameter_count_mismatch,
        error_fields_and_classification,
        error_recovery_simple_and_extended,
        failed_transaction_status,
        dropped_future_mid_query,
        dropped_stream_mid_result,
        dropped_future_before_send,
        copy_from_stdin_is_refused,
        multi_host_falls_back,
        multi_host_all_fail,
        connect_timeout_fires,
        env_precedence,
        password_file,
        application_name_and_options,
        notices_and_notifications,
        listen_and_wait_for_notifications,
        statement_closed_on_drop,
        close_sends_terminate,
        transaction_commit_rollback_and_drop,
        savepoints_nest,
        commit_of_failed_transaction_is_an_error,
        transaction_builder_modes,
        dropped_futures_never_leak_a_transaction,
        terminated_backend_is_reported,
        target_session_attrs_primary,
    ];
    // Before the TLS scenarios, whose 64 MiB transfers would raise the wasm heap the stream scenario reports.
    list.extend(streams::scenarios());
    list.extend(tls::scenarios());
    list.extend(modes::scenarios());
    list.extend(copy::scenarios());
    list.extend(pgbouncer::scenarios());
    list.extend(session::scenarios());
    list.extend(cancel::scenarios());
    list.extend(shared::scenarios());
    list.extend(replication::scenarios());
    list.extend(replication_faults::scenarios());
    list.extend(keywords::scenarios());
    list.extend(types::scenarios());
    #[cfg(not(target_os = "wasi"))]
    list.push(("unix_socket", |env| Box::pin(unix_socket(env))));
    // LIVE_ONLY=fragment,fragment runs only the scenarios whose names contain one of them (on every target),
    // for working on a few scenarios without the whole suite; scripts/test.sh refuses to run with it set (a
    // filtered run is not the suite).
    if let Ok(only) = std::env::var(LIVE_ONLY)
        && !only.is_empty()
    {
        list.retain(|(name, _)| only.split(',').any(|fragment| name.contains(fragment)));
    }
    list
}

/// The variable that narrows [`all`] to some scenarios.
pub const LIVE_ONLY: &str = "LIVE_ONLY";

/// Connects and runs a query; the client is then used under another reactor.
#[allow(dead_code)]
pub async fn client_for_next_reactor(env: &Env) -> Result<Client, String> {
    let c = connect(&env.trust).await?;
    c.query_one("SELECT 1", &[]).await.check("first reactor")?;
    Ok(c)
}

/// Uses a client made under an earlier reactor, idle while a timer runs, then for a query.
#[allow(dead_code)]
pub async fn client_from_previous_reactor(client: Result<Client, String>) -> Outcome {
    let c = client?;
    sleep(Duration::from_millis(50)).await;
    let v: i32 = c
        .query_one("SELECT $1::int4", &[&7i32])
        .await
        .check("second reactor")?
        .get(0);
    ensure_eq!(v, 7);
    c.close().await.check("close")
}

async fn connect(conninfo: &str) -> Result<Client, String> {
    let config = Config::parse(conninfo).check("parse conninfo")?;
    Client::connect(&config).await.check("connect")
}

async fn current_user(client: &mut Client) -> Result<String, String> {
    let row = client
        .query_one("SELECT current_user::text", &[])
        .await
        .check("current_user")?;
    Ok(row.get::<_, String>(0))
}

/// Polls `future` exactly once, then drops it: whatever it queued is sent, nothing is read.
async fn poll_once<F: Future>(future: F) {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        let _ = future.as_mut().poll(cx);
        std::task::Poll::Ready(())
    })
    .await
}

async fn auth_trust(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    ensure_eq!(current_user(&mut c).await?, "pgc_trust");
    c.close().await.check("close")
}

async fn auth_password(env: &Env) -> Outcome {
    let mut c = connect(&env.password).await?;
    ensure_eq!(current_user(&mut c).await?, "pgc_password");
    Ok(())
}

async fn auth_md5(env: &Env) -> Outcome {
    let mut c = connect(&env.md5).await?;
    ensure_eq!(current_user(&mut c).await?, "pgc_md5");
    Ok(())
}

async fn auth_scram(env: &Env) -> Outcome {
    let mut c = connect(&env.scram).await?;
    ensure_eq!(current_user(&mut c).await?, "pgc_scram");
    Ok(())
}

async fn auth_wrong_passwords(env: &Env) -> Outcome {
    for (conninfo, role) in [
        (&env.password, "password"),
        (&env.md5, "md5"),
        (&env.scram, "scram"),
    ] {
        let config = Config::parse(&format!("{conninfo} password=wrong-secret")).check("parse")?;
        let err = match Client::connect(&config).await {
            Ok(_) => return Err(format!("{role}: a wrong password was accepted")),
            Err(e) => e,
        };
        ensure_eq!(err.code(), Some(sqlstate::INVALID_PASSWORD));
        ensure!(
            !err.to_string().contains("wrong-secret"),
            "{role}: the password leaked into {err}"
        );
    }
    Ok(())
}

async fn require_auth_allows_and_refuses(env: &Env) -> Outcome {
    for (conninfo, require, allowed) in [
        (&env.scram, "scram-sha-256", true),
        (&env.md5, "md5", true),
        (&env.password, "password", true),
        (&env.trust, "none", true),
        (&env.md5, "scram-sha-256", false),
        (&env.password, "!password", false),
        (&env.md5, "password,scram-sha-256", false),
        (&env.trust, "scram-sha-256", false),
        (&env.trust, "!none", false),
        (&env.scram, "!md5,!password", true),
    ] {
        let config = Config::parse(&format!("{conninfo} require_auth={require}")).check("parse")?;
        match (Client::connect(&config).await, allowed) {
            (Ok(_), true) => {}
            (Err(e), false) => {
                ensure_eq!(e.kind(), ErrorKind::Auth);
                ensure!(e.to_string().contains("require_auth"), "{require}: {e}");
            }
            (Ok(_), false) => {
                return Err(format!(
                    "require_auth={require} should have refused {conninfo}"
                ));
            }
            (Err(e), true) => return Err(format!("require_auth={require} refused: {e}")),
        }
    }
    Ok(())
}

async fn uri_with_percent_encoded_password(env: &Env) -> Outcome {
    ensure!(
        env.scram_url.contains('%'),
        "the URL should percent-encode the password: {}",
        env.scram_url
    );
    let mut c = connect(&env.scram_url).await?;
    ensure_eq!(current_user(&mut c).await?, "pgc_scram");
    let debug = format!("{:?}", Config::parse(&env.scram_url).check("parse")?);
    ensure!(
        !debug.contains(&env.scram_password),
        "password in Debug output: {debug}"
    );
    Ok(())
}

async fn ipv6_loopback(env: &Env) -> Outcome {
    let c = connect(&format!(
        "host=::1 port={} user=pgc_trust dbname=postgres",
        env.port
    ))
    .await?;
    let row = c
        .query_one("SELECT host(inet_client_addr())", &[])
        .await
        .check("client address")?;
    ensure_eq!(row.get::<_, String>(0), "::1");
    let mut c = connect(&format!(
        "postgresql://pgc_trust@[::1]:{}/postgres",
        env.port
    ))
    .await?;
    ensure_eq!(current_user(&mut c).await?, "pgc_trust");
    Ok(())
}

async fn simple_query_results(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    let messages = c
        .simple_query("CREATE TEMP TABLE s (a int, b text); INSERT INTO s VALUES (1, 'x'), (2, NULL); SELECT a, b FROM s ORDER BY a")
        .await
        .check("simple query")?;
    let mut rows = Vec::new();
    let mut completes = Vec::new();
    for m in &messages {
        match m {
            SimpleQueryMessage::Row(r) => {
                rows.push((r.get(0).map(str::to_string), r.get("b").map(str::to_string)))
            }
            SimpleQueryMessage::CommandComplete(n) => completes.push(*n),
            SimpleQueryMessage::RowDescription(cols) => {
                ensure_eq!(
                    cols.iter().map(|c| c.name()).collect::<Vec<_>>(),
                    vec!["a", "b"]
                );
            }
            _ => {}
        }
    }
    ensure_eq!(
        rows,
        vec![
            (Some("1".to_string()), Some("x".to_string())),
            (Some("2".to_string()), None)
        ]
    );
    ensure_eq!(completes, vec![0, 2, 2]);
    c.batch_execute("INSERT INTO s VALUES (3, 'y'); UPDATE s SET b = 'z' WHERE a = 3")
        .await
        .check("batch_execute")?;
    let n: i64 = c
        .query_one("SELECT count(*) FROM s", &[])
        .await
        .check("count")?
        .get(0);
    ensure_eq!(n, 3);
    Ok(())
}

async fn simple_query_error_after_rows(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    let mut stream = c
        .simple_query_stream("SELECT 1; SELECT * FROM missing_table; SELECT 2")
        .await
        .check("start")?;
    let mut values = Vec::new();
    let error = loop {
        match stream.next().await {
            Ok(Some(SimpleQueryMessage::Row(r))) => values.push(r.get(0).unwrap_or("").to_string()),
            Ok(Some(_)) => {}
            Ok(None) => return Err("the error was lost".into()),
            Err(e) => break e,
        }
    };
    ensure_eq!(values, vec!["1".to_string()]);
    ensure_eq!(error.code(), Some(sqlstate::UNDEFINED_TABLE));
    ensure!(
        stream.next().await.check("after error")?.is_none(),
        "stream continues after its end"
    );
    ensure_eq!(
        c.query_one("SELECT 3", &[])
            .await
            .check("next query")?
            .get::<_, i32>(0),
        3
    );
    Ok(())
}

async fn empty_query(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    ensure!(
        c.simple_query("").await.check("empty")?.is_empty(),
        "empty query returned messages"
    );
    ensure!(
        c.simple_query(";").await.check("semicolon")?.is_empty(),
        "';' returned messages"
    );
    Ok(())
}

async fn extended_query_and_prepared_reuse(env: &Env) -> Outcome {
    let c = connect(&env.scram).await?;
    c.batch_execute("CREATE TEMP TABLE e (id int PRIMARY KEY, name text)")
        .await
        .check("create")?;
    let insert = c
        .prepare("INSERT INTO e VALUES ($1, $2)")
        .await
        .check("prepare")?;
    ensure_eq!(insert.params(), &[Type::INT4, Type::TEXT]);
    for i in 0..20 {
        let n = c
            .execute(&insert, &[&i, &format!("n{i}")])
            .await
            .check("insert")?;
        ensure_eq!(n, 1);
    }
    let select = c
        .prepare_typed(
            "SELECT id, name FROM e WHERE id >= $1 ORDER BY id",
            &[Type::INT8],
        )
        .await
        .check("prepare_typed")?;
    ensure_eq!(select.params(), &[Type::INT8]);
    ensure_eq!(select.columns().len(), 2);
    ensure_eq!(select.columns()[1].name(), "name");
    let rows = c.query(&select, &[&15i64]).await.check("query")?;
    ensure_eq!(rows.len(), 5);
    ensure_eq!(rows[0].get::<_, i32>("id"), 15);
    ensure_eq!(rows[4].get::<_, &str>(1), "n19");
    let rows = c.query(&select, &[&18i64]).await.check("reuse")?;
    ensure_eq!(rows.len(), 2);
    let n = c
        .execute("DELETE FROM e WHERE id < $1", &[&10i32])
        .await
        .check("delete")?;
    ensure_eq!(n, 10);
    Ok(())
}

async fn query_one_and_opt(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    let none = c
        .query_opt("SELECT 1 WHERE false", &[])
        .await
        .check("opt none")?;
    ensure!(none.is_none(), "expected no row");
    let err = c
        .query_one("SELECT 1 WHERE false", &[])
        .await
        .err()
        .ok_or("no error for zero rows")?;
    ensure_eq!(err.kind(), ErrorKind::RowCount);
    let err = c
        .query_opt("SELECT * FROM generate_series(1, 2)", &[])
        .await
        .err()
        .ok_or("no error for two rows")?;
    ensure_eq!(err.kind(), ErrorKind::RowCount);
    ensure_eq!(
        c.query_one("SELECT 7", &[])
            .await
            .check("one")?
            .get::<_, i32>(0),
        7
    );
    Ok(())
}

async fn query_typed_one_round_trip(env: &Env) -> Outcome {
    let c = connect(&env.md5).await?;
    let rows = c
        .query_typed(
            "SELECT $1 + 1 AS n, $2 AS s",
            &[(&41i64, Type::INT8), (&"hi", Type::TEXT)],
        )
        .await
        .check("query_typed")?;
    ensure_eq!(rows.len(), 1);
    ensure_eq!(rows[0].get::<_, i64>("n"), 42);
    ensure_eq!(rows[0].get::<_, &str>("s"), "hi");
    let n = c
        .execute_typed("SELECT generate_series(1, $1)", &[(&5i32, Type::INT4)])
        .await
        .check("execute_typed")?;
    ensure_eq!(n, 5);
    // Counted through query_typed too: a query() would put its own statement in the cache.
    let count: i64 = c
        .query_typed("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .check("count")?[0]
        .get(0);
    ensure_eq!(count, 0);
    Ok(())
}

async fn integers_round_trip(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    for v in [i16::MIN, -1, 0, 1, i16::MAX] {
        ensure_eq!(
            c.query_one("SELECT $1::int2", &[&v])
                .await
                .check("int2")?
                .get::<_, i16>(0),
            v
        );
    }
    for v in [i32::MIN, -7, 0, 123_456, i32::MAX] {
        ensure_eq!(
            c.query_one("SELECT $1::int4", &[&v])
                .await
                .check("int4")?
                .get::<_, i32>(0),
            v
        );
    }
    for v in [i64::MIN, -1, 0, 9_007_199_254_740_993, i64::MAX] {
        ensure_eq!(
            c.query_one("SELECT $1::int8", &[&v])
                .await
                .check("int8")?
                .get::<_, i64>(0),
            v
        );
    }
    let oid: u32 = c
        .query_one("SELECT 'pg_class'::regclass::oid", &[])
        .await
        .check("oid")?
        .get(0);
    ensure_eq!(oid, 1259);
    let ch: i8 = c
        .query_one("SELECT 'A'::\"char\"", &[])
        .await
        .check("char")?
        .get(0);
    ensure_eq!(ch, 65);
    Ok(())
}

async fn floats_round_trip(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    for v in [
        0.0f64,
        -1.5,
        1e300,
        f64::MIN_POSITIVE,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ] {
        ensure_eq!(
            c.query_one("SELECT $1::float8", &[&v])
                .await
                .check("float8")?
                .get::<_, f64>(0),
            v
        );
    }
    let nan: f64 = c
        .query_one("SELECT 'NaN'::float8", &[])
        .await
        .check("nan")?
        .get(0);
    ensure!(nan.is_nan(), "NaN came back as {nan}");
    for v in [0.25f32, -3.5, f32::MAX] {
        ensure_eq!(
            c.query_one("SELECT $1::float4", &[&v])
                .await
                .check("float4")?
                .get::<_, f32>(0),
            v
        );
    }
    Ok(())
}

async fn numeric_as_text(env: &Env) -> Outcome {
    // postgres-types has no Rust numeric type without extra crates: numeric travels as text both ways.
    let c = connect(&env.trust).await?;
    for v in [
        "0",
        "-12345678901234567890.000000000123",
        "NaN",
        "1e-20",
        "3.14159",
    ] {
        let row = c
            .query_one(
                "SELECT ($1::text::numeric)::text, pg_typeof($1::text::numeric)::text",
                &[&v],
            )
            .await
            .check("numeric")?;
        let back: String = row.get(0);
        let expected: String = c
            .query_one("SELECT $1::text::numeric::text", &[&v])
            .await
            .check("numeric text")?
            .get(0);
        ensure_eq!(back, expected);
        ensure_eq!(row.get::<_, &str>(1), "numeric");
    }
    let row = c
        .query_one("SELECT 1.50::numeric", &[])
        .await
        .check("numeric column")?;
    ensure_eq!(row.columns()[0].type_(), &Type::NUMERIC);
    ensure!(
        row.try_get::<_, f64>(0).is_err(),
        "numeric must not silently decode as f64"
    );
    Ok(())
}

async fn text_and_bytea_round_trip(env: &Env) -> Outcome {
    let c = connect(&env.password).await?;
    for v in [
        "",
        "plain",
        "ünïcødé ✓ 日本",
        "quote ' and \" and \\",
        "line\nbreak\ttab",
        "x|y",
    ] {
        ensure_eq!(
            c.query_one("SELECT $1::text", &[&v])
                .await
                .check("text")?
                .get::<_, String>(0),
            v
        );
        ensure_eq!(
            c.query_one("SELECT $1::varchar", &[&v])
                .await
                .check("varchar")?
                .get::<_, String>(0),
            v
        );
    }
    let name: String = c
        .query_one("SELECT 'abc'::name", &[])
        .await
        .check("name")?
        .get(0);
    ensure_eq!(name, "abc");
    let bytes: Vec<u8> = (0..=255u8).collect();
    let back: Vec<u8> = c
        .query_one("SELECT $1::bytea", &[&bytes])
        .await
        .check("bytea")?
        .get(0);
    ensure_eq!(back, bytes);
    let len: i32 = c
        .query_one("SELECT length($1::bytea)", &[&vec![0u8; 100_000]])
        .await
        .check("big bytea")?
        .get(0);
    ensure_eq!(len, 100_000);
    let big: String = c
        .query_one("SELECT repeat('x', 1000000)", &[])
        .await
        .check("big text")?
        .get(0);
    ensure_eq!(big.len(), 1_000_000);
    Ok(())
}

async fn bool_and_nulls_round_trip(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    for v in [true, false] {
        ensure_eq!(
            c.query_one("SELECT $1::bool", &[&v])
                .await
                .check("bool")?
                .get::<_, bool>(0),
            v
        );
    }
    let none: Option<i32> = None;
    let row = c
        .query_one(
            "SELECT $1::int4, NULL::text, NULL::bool, $2::text",
            &[&none, &Some("s")],
        )
        .await
        .check("nulls")?;
    ensure_eq!(row.get::<_, Option<i32>>(0), None);
    ensure_eq!(row.get::<_, Option<String>>(1), None);
    ensure_eq!(row.get::<_, Option<bool>>(2), None);
    ensure_eq!(row.get::<_, Option<&str>>(3), Some("s"));
    let err = row
        .try_get::<_, i32>(0)
        .err()
        .ok_or("NULL into i32 must fail")?;
    ensure_eq!(err.kind(), ErrorKind::FromSql);
    Ok(())
}

async fn date_time_round_trip(env: &Env) -> Outcome {
    use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
    let c = connect(&env.trust).await?;
    c.batch_execute("SET TimeZone = 'Europe/Berlin'")
        .await
        .check("set tz")?;
    let date = NaiveDate::from_ymd_opt(2024, 2, 29).ok_or("date")?;
    ensure_eq!(
        c.query_one("SELECT $1::date", &[&date])
            .await
            .check("date")?
            .get::<_, NaiveDate>(0),
        date
    );
    let ts = NaiveDateTime::parse_from_str("1999-12-31 23:59:59.123456", "%Y-%m-%d %H:%M:%S%.f")
        .check("parse")?;
    ensure_eq!(
        c.query_one("SELECT $1::timestamp", &[&ts])
            .await
            .check("ts")?
            .get::<_, NaiveDateTime>(0),
        ts
    );
    let tstz: DateTime<Utc> = DateTime::parse_from_rfc3339("2030-06-01T12:00:00.5+02:00")
        .check("parse")?
        .into();
    let back: DateTime<Utc> = c
        .query_one("SELECT $1::timestamptz", &[&tstz])
        .await
        .check("tstz")?
        .get(0);
    ensure_eq!(back, tstz);
    let text: String = c
        .query_one("SELECT ($1::timestamptz)::text", &[&tstz])
        .await
        .check("tstz text")?
        .get(0);
    ensure_eq!(text, "2030-06-01 12:00:00.5+02");
    let time = NaiveTime::from_hms_micro_opt(13, 14, 15, 16).ok_or("time")?;
    ensure_eq!(
        c.query_one("SELECT $1::time", &[&time])
            .await
            .check("time")?
            .get::<_, NaiveTime>(0),
        time
    );
    let infinity = c
        .query_one("SELECT 'infinity'::timestamp", &[])
        .await
        .check("infinity")?;
    ensure!(
        infinity.try_get::<_, NaiveDateTime>(0).is_err(),
        "infinity must not decode silently"
    );
    let st: std::time::SystemTime = c
        .query_one("SELECT 'epoch'::timestamptz + interval '1 second'", &[])
        .await
        .check("systemtime")?
        .get(0);
    ensure_eq!(st, std::time::UNIX_EPOCH + Duration::from_secs(1));
    Ok(())
}

async fn time_crate_round_trip(env: &Env) -> Outcome {
    use time::macros::{date, datetime};
    let c = connect(&env.trust).await?;
    let d = date!(1970 - 01 - 01);
    ensure_eq!(
        c.query_one("SELECT $1::date", &[&d])
            .await
            .check("date")?
            .get::<_, time::Date>(0),
        d
    );
    let ts = datetime!(2001-02-03 04:05:06.789);
    ensure_eq!(
        c.query_one("SELECT $1::timestamp", &[&ts])
            .await
            .check("timestamp")?
            .get::<_, time::PrimitiveDateTime>(0),
        ts
    );
    let tstz = datetime!(2030-06-01 12:00:00.5 +2);
    let back: time::OffsetDateTime = c
        .query_one("SELECT $1::timestamptz", &[&tstz])
        .await
        .check("tstz")?
        .get(0);
    ensure_eq!(back, tstz);
    Ok(())
}

async fn uuid_and_json_round_trip(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    let id = uuid::Uuid::parse_str("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").check("uuid")?;
    ensure_eq!(
        c.query_one("SELECT $1::uuid", &[&id])
            .await
            .check("uuid")?
            .get::<_, uuid::Uuid>(0),
        id
    );
    let value = serde_json::json!({"a": [1, 2.5, null, true], "b": {"c": "ünï"}});
    for ty in ["json", "jsonb"] {
        let back: serde_json::Value = c
            .query_one(&*format!("SELECT $1::{ty}"), &[&value])
            .await
            .check(ty)?
            .get(0);
        ensure_eq!(back, value);
    }
    let Json(v): Json<serde_json::Value> = c
        .query_one("SELECT '{\"k\": 1}'::jsonb", &[])
        .await
        .check("Json wrapper")?
        .get(0);
    ensure_eq!(v["k"], 1);
    Ok(())
}

async fn arrays_round_trip(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    let ints = vec![1i32, -2, 3];
    ensure_eq!(
        c.query_one("SELECT $1::int4[]", &[&ints])
            .await
            .check("int4[]")?
            .get::<_, Vec<i32>>(0),
        ints
    );
    let texts = vec![Some("a".to_string()), None, Some("c,d".to_string())];
    let back: Vec<Option<String>> = c
        .query_one("SELECT $1::text[]", &[&texts])
        .await
        .check("text[]")?
        .get(0);
    ensure_eq!(back, texts);
    let empty: Vec<i64> = c
        .query_one("SELECT '{}'::int8[]", &[])
        .await
        .check("empty")?
        .get(0);
    ensure!(empty.is_empty(), "empty array");
    // A 2-D array does not fit a Vec: an error, never a silently flattened value.
    let row = c
        .query_one("SELECT ARRAY[[1,2],[3,4]], ARRAY[[1,2],[3,4]]::text", &[])
        .await
        .check("2-D")?;
    ensure!(
        row.try_get::<_, Vec<i32>>(0).is_err(),
        "2-D array decoded as a Vec"
    );
    ensure_eq!(row.get::<_, &str>(1), "{{1,2},{3,4}}");
    let found: bool = c
        .query_one("SELECT 2 = ANY($1)", &[&vec![1i32, 2]])
        .await
        .check("ANY")?
        .get(0);
    ensure!(found, "ANY($1)");
    let null_array: Option<Vec<i32>> = c
        .query_one("SELECT NULL::int4[]", &[])
        .await
        .check("null[]")?
        .get(0);
    ensure_eq!(null_array, None);
    Ok(())
}

async fn enum_type_lookup(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    c.batch_execute(
        "DROP TYPE IF EXISTS live_mood CASCADE; CREATE TYPE live_mood AS ENUM ('sad', 'ok', 'happy'); \
         CREATE TEMP TABLE moods (m live_mood, ms live_mood[])",
    )
    .await
    .check("create type")?;
    c.batch_execute("INSERT INTO moods VALUES ('happy', '{ok,sad}')")
        .await
        .check("insert")?;
    let row = c
        .query_one("SELECT m, ms FROM moods", &[])
        .await
        .check("select")?;
    let ty = row.columns()[0].type_();
    ensure_eq!(ty.name(), "live_mood");
    ensure!(
        matches!(ty.kind(), wasi_pg_client::types::Kind::Enum(v) if v == &["sad", "ok", "happy"]),
        "kind {:?}",
        ty.kind()
    );
    ensure_eq!(row.raw(0).check("raw")?, Some(&b"happy"[..]));
    ensure!(
        matches!(row.columns()[1].type_().kind(), wasi_pg_client::types::Kind::Array(t) if t.name() == "live_mood"),
        "array kind"
    );
    c.batch_execute("DROP TABLE moods; DROP TYPE live_mood")
        .await
        .check("drop")?;
    Ok(())
}

async fn type_mismatch_is_an_error(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    let row = c
        .query_one("SELECT 1::int4, 'x'::text", &[])
        .await
        .check("select")?;
    let err = row
        .try_get::<_, String>(0)
        .err()
        .ok_or("int4 read as String")?;
    ensure_eq!(err.kind(), ErrorKind::FromSql);
    ensure!(err.to_string().contains("int4"), "{err}");
    let err = row.try_get::<_, i64>(0).err().ok_or("int4 read as i64")?;
    ensure_eq!(err.kind(), ErrorKind::FromSql);
    let err = row.try_get::<_, i32>(5).err().ok_or("column 5")?;
    ensure_eq!(err.kind(), ErrorKind::Column);
    let err = row.try_get::<_, i32>("nope").err().ok_or("column nope")?;
    ensure_eq!(err.kind(), ErrorKind::Column);
    let err = c
        .query("SELECT $1::int4", &[&"not an int"])
        .await
        .err()
        .ok_or("text for int4 param")?;
    ensure_eq!(err.kind(), ErrorKind::ToSql);
    ensure!(
        !err.to_string().contains("not an int"),
        "the parameter value leaked: {err}"
    );
    let err = c
        .query("SELECT $1::int8", &[&1i32])
        .await
        .err()
        .ok_or("i32 for int8")?;
    ensure_eq!(err.kind(), ErrorKind::ToSql);
    ensure_eq!(
        c.query_one("SELECT $1::int8", &[&1i64])
            .await
            .check("after")?
            .get::<_, i64>(0),
        1
    );
    Ok(())
}

async fn parameter_count_mismatch(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    let err = c
        .query("SELECT $1::int4, $2::int4", &[&1i32])
        .await
        .err()
        .ok_or("missing param")?;
    ensure_eq!(err.kind(), ErrorKind::Parameters);
    let err = c
        .execute("SELECT 1", &[&1i32])
        .await
        .err()
        .ok_or("extra param")?;
    ensure_eq!(err.kind(), ErrorKind::Parameters);
    ensure_eq!(
        c.query_one("SELECT 1", &[])
            .await
            .check("after")?
            .get::<_, i32>(0),
        1
    );
    Ok(())
}

async fn error_fields_and_classification(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    c.batch_execute("CREATE TEMP TABLE u (id int CONSTRAINT u_pk PRIMARY KEY)")
        .await
        .check("create")?;
    c.execute("INSERT INTO u VALUES (1)", &[])
        .await
        .check("insert")?;
    let err = c
        .execute("INSERT INTO u VALUES (1)", &[])
        .await
        .err()
        .ok_or("duplicate accepted")?;
    ensure_eq!(err.code(), Some(sqlstate::UNIQUE_VIOLATION));
    ensure_eq!(err.class(), ErrorClass::Permanent);
    let db = err.as_db_error().ok_or("not a db error")?;
    ensure_eq!(db.severity(), "ERROR");
    ensure_eq!(db.constraint(), Some("u_pk"));
    ensure_eq!(db.table(), Some("u"));
    ensure!(
        db.schema().is_some_and(|s| s.starts_with("pg_temp")),
        "schema {:?}",
        db.schema()
    );
    ensure!(
        db.detail().is_some_and(|d| d.contains("(id)=(1)")),
        "detail {:?}",
        db.detail()
    );
    let err = c
        .execute("SELECT 1 FROM nowhere", &[])
        .await
        .err()
        .ok_or("no error")?;
    ensure!(
        matches!(
            err.as_db_error().and_then(|d| d.position()),
            Some(wasi_pg_client::ErrorPosition::Original(15))
        ),
        "position {:?}",
        err.as_db_error().map(|d| d.position())
    );
    let err = c
        .batch_execute("DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40001', MESSAGE = 'retry me', HINT = 'again'; END $$")
        .await
        .err()
        .ok_or("no serialization failure")?;
    ensure_eq!(err.class(), ErrorClass::Transient);
    ensure!(err.is_transient(), "transient");
    ensure_eq!(err.as_db_error().and_then(|d| d.hint()), Some("again"));
    ensure!(!c.is_closed(), "closed after a query error");
    Ok(())
}

async fn error_recovery_simple_and_extended(env: &Env) -> Outcome {
    let c = connect(&env.scram).await?;
    for _ in 0..3 {
        let err = c
            .query("SELEC 1", &[])
            .await
            .err()
            .ok_or("syntax error accepted")?;
        ensure_eq!(err.code(), Some(sqlstate::SYNTAX_ERROR));
        let err = c
            .batch_execute("SELECT 1/0")
            .await
            .err()
            .ok_or("division accepted")?;
        ensure_eq!(err.code(), Some("22012"));
        let err = c
            .query("SELECT 1/($1::int4 - 1)", &[&1i32])
            .await
            .err()
            .ok_or("division in execute")?;
        ensure_eq!(err.code(), Some("22012"));
        ensure_eq!(
            c.query_one("SELECT 5", &[])
                .await
                .check("after errors")?
                .get::<_, i32>(0),
            5
        );
    }
    ensure!(!c.is_closed(), "closed");
    Ok(())
}

async fn failed_transaction_status(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    c.batch_execute("BEGIN").await.check("begin")?;
    ensure_eq!(c.transaction_status(), TransactionStatus::InTransaction);
    ensure!(
        c.batch_execute("SELECT nope").await.is_err(),
        "error expected"
    );
    ensure_eq!(c.transaction_status(), TransactionStatus::Failed);
    let err = c
        .query("SELECT 1", &[])
        .await
        .err()
        .ok_or("query in failed tx")?;
    ensure_eq!(err.code(), Some("25P02"));
    c.batch_execute("ROLLBACK").await.check("rollback")?;
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);
    Ok(())
}

async fn dropped_future_mid_query(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    for delay_ms in [0u64, 1, 5, 50] {
        let finished = with_timeout(
            Duration::from_millis(delay_ms),
            c.query("SELECT 'stale', pg_sleep(0.2)", &[]),
        )
        .await;
        ensure!(
            finished.is_none(),
            "the slow query finished within {delay_ms} ms"
        );
        let rows = c
            .query("SELECT 'fresh'::text, $1::int4", &[&(delay_ms as i32)])
            .await
            .check("after drop")?;
        ensure_eq!(rows.len(), 1);
        ensure_eq!(rows[0].get::<_, &str>(0), "fresh");
        ensure_eq!(rows[0].get::<_, i32>(1), delay_ms as i32);
    }
    let finished = with_timeout(
        Duration::from_millis(20),
        c.simple_query("SELECT pg_sleep(0.2); SELECT 'stale'"),
    )
    .await;
    ensure!(finished.is_none(), "simple query finished");
    let m = c
        .simple_query("SELECT 'fresh'")
        .await
        .check("after simple drop")?;
    let values: Vec<&str> = m
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0),
            _ => None,
        })
        .collect();
    ensure_eq!(values, vec!["fresh"]);
    Ok(())
}

async fn dropped_stream_mid_result(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    {
        let mut stream = c
            .simple_query_stream("SELECT g FROM generate_series(1, 50000) g; SELECT 'stale'")
            .await
            .check("start")?;
        let mut rows = 0;
        while rows < 3 {
            if let Some(SimpleQueryMessage::Row(_)) = stream.next().await.check("next")? {
                rows += 1;
            }
        }
    }
    let n: i64 = c
        .query_one("SELECT count(*) FROM generate_series(1, 7)", &[])
        .await
        .check("after")?
        .get(0);
    ensure_eq!(n, 7);
    Ok(())
}

async fn dropped_future_before_send(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    // Polled zero times: nothing was queued, nothing must be left over.
    drop(c.query("SELECT 'never'", &[]));
    // Dropped right after the first poll: the request is sent but unanswered.
    poll_once(c.query("SELECT 'stale'", &[])).await;
    poll_once(c.simple_query("SELECT 'stale'")).await;
    ensure_eq!(
        c.query_one("SELECT 'fresh'::text", &[])
            .await
            .check("after")?
            .get::<_, &str>(0),
        "fresh"
    );
    Ok(())
}

async fn copy_from_stdin_is_refused(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    c.batch_execute("CREATE TEMP TABLE cp (a int)")
        .await
        .check("create")?;
    let err = c
        .execute("COPY cp FROM STDIN", &[])
        .await
        .err()
        .ok_or("extended COPY succeeded")?;
    ensure_eq!(err.code(), Some(sqlstate::QUERY_CANCELED));
    ensure!(!err.is_connection_broken(), "{err}");
    let err = c
        .batch_execute("COPY cp FROM STDIN; SELECT 1")
        .await
        .err()
        .ok_or("simple COPY succeeded")?;
    ensure_eq!(err.code(), Some(sqlstate::QUERY_CANCELED));
    // A caller dropped right after sending COPY: the core still refuses it, so the session stays in sync.
    drop(
        c.simple_query_stream("COPY cp FROM STDIN")
            .await
            .check("start copy")?,
    );
    ensure_eq!(
        c.query_one("SELECT 42", &[])
            .await
            .check("after copy")?
            .get::<_, i32>(0),
        42
    );
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);
    Ok(())
}

async fn multi_host_falls_back(env: &Env) -> Outcome {
    let conninfo = format!(
        "host={h},{h} port={},{} user=pgc_trust dbname=postgres",
        env.closed_port,
        env.port,
        h = env.host
    );
    let mut c = connect(&conninfo).await?;
    ensure_eq!(current_user(&mut c).await?, "pgc_trust");
    let conninfo = format!(
        "postgresql://pgc_trust@no-such-host.invalid:{},{}:{}/postgres",
        env.port, env.host, env.port
    );
    let mut c = connect(&conninfo).await?;
    ensure_eq!(current_user(&mut c).await?, "pgc_trust");
    Ok(())
}

async fn multi_host_all_fail(env: &Env) -> Outcome {
    let config = Config::parse(&format!(
        "host={h},{h} port={p},{p} user=pgc_trust dbname=postgres",
        h = env.host,
        p = env.closed_port
    ))
    .check("parse")?;
    let err = Client::connect(&config)
        .await
        .err()
        .ok_or("connected to a closed port")?;
    let text = err.to_string();
    ensure_eq!(
        text.matches(&format!("port {}", env.closed_port)).count(),
        2
    );
    ensure!(err.is_connection_broken(), "{text}");
    Ok(())
}

async fn connect_timeout_fires(env: &Env) -> Outcome {
    let config = Config::parse(&format!(
        "host={} port={} user=pgc_trust connect_timeout=2",
        env.host, env.silent_port
    ))
    .check("parse")?;
    let started = std::time::Instant::now();
    let err = Client::connect(&config)
        .await
        .err()
        .ok_or("connected to a silent server")?;
    let took = started.elapsed();
    ensure_eq!(err.kind(), ErrorKind::Timeout);
    ensure!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(10),
        "took {took:?}"
    );
    Ok(())
}

async fn env_precedence(env: &Env) -> Outcome {
    let vars = [
        ("PGHOST", env.host.clone()),
        ("PGPORT", env.port.to_string()),
        ("PGUSER", "pgc_scram".to_string()),
        ("PGPASSWORD", env.scram_password.clone()),
        ("PGDATABASE", "postgres".to_string()),
        ("PGAPPNAME", "from-env".to_string()),
        ("PGCONNECT_TIMEOUT", "10".to_string()),
    ];
    let lookup = |k: &str| {
        vars.iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| v.clone())
    };
    let mut config = Config::new();
    config.apply_env_with(lookup).check("env")?;
    let mut c = Client::connect(&config).await.check("connect from env")?;
    ensure_eq!(current_user(&mut c).await?, "pgc_scram");
    let app: String = c
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .check("app")?
        .get(0);
    ensure_eq!(app, "from-env");

    let mut config =
        Config::parse("application_name=from-conninfo user=pgc_trust").check("parse")?;
    config.apply_env_with(lookup).check("env")?;
    let mut c = Client::connect(&config).await.check("connect")?;
    ensure_eq!(current_user(&mut c).await?, "pgc_trust");
    let app: String = c
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .check("app")?
        .get(0);
    ensure_eq!(app, "from-conninfo");
    ensure_eq!(config.get_connect_timeout(), Some(Duration::from_secs(10)));
    Ok(())
}

async fn password_file(env: &Env) -> Outcome {
    for user in ["pgc_scram", "pgc_md5"] {
        let mut c = connect(&format!(
            "host={} port={} user={user} dbname=postgres passfile={}",
            env.host, env.port, env.passfile
        ))
        .await?;
        ensure_eq!(current_user(&mut c).await?, user);
    }
    let config = Config::parse(&format!(
        "host={} port={} user=pgc_password dbname=postgres passfile={}",
        env.host, env.port, env.passfile
    ))
    .check("parse")?;
    let err = Client::connect(&config)
        .await
        .err()
        .ok_or("connected without a password")?;
    ensure_eq!(err.kind(), ErrorKind::Auth);
    Ok(())
}

async fn application_name_and_options(env: &Env) -> Outcome {
    let c = connect(&format!(
        "{} application_name='live test' options='-c search_path=pg_catalog -c statement_timeout=1234'",
        env.trust
    ))
    .await?;
    let row = c
        .query_one(
            "SELECT current_setting('application_name'), current_setting('search_path'), current_setting('statement_timeout')",
            &[],
        )
        .await
        .check("settings")?;
    ensure_eq!(row.get::<_, &str>(0), "live test");
    ensure_eq!(row.get::<_, &str>(1), "pg_catalog");
    ensure_eq!(row.get::<_, &str>(2), "1234ms");
    ensure!(
        c.parameter("server_version")
            .is_some_and(|v| v.starts_with("15")),
        "server_version"
    );
    ensure_eq!(c.parameter("client_encoding").as_deref(), Some("UTF8"));
    ensure!(c.backend_pid().is_some(), "backend pid");
    Ok(())
}

async fn notices_and_notifications(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    c.batch_execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END $$")
        .await
        .check("notice")?;
    let notices = c.take_notices();
    let texts: Vec<(&str, &str)> = notices
        .iter()
        .map(|n| (n.severity(), n.message()))
        .collect();
    ensure_eq!(texts, vec![("NOTICE", "hello 42"), ("WARNING", "careful")]);
    c.batch_execute("LISTEN \"Live Chan\"")
        .await
        .check("listen")?;
    let other = connect(&env.trust).await?;
    other
        .batch_execute("NOTIFY \"Live Chan\", 'one'; NOTIFY \"Live Chan\", 'two'")
        .await
        .check("notify")?;
    c.batch_execute("NOTIFY \"Live Chan\", 'self'")
        .await
        .check("self notify")?;
    let mut got = c.take_notifications();
    for _ in 0..50 {
        if got.len() >= 3 {
            break;
        }
        sleep(Duration::from_millis(20)).await;
        c.batch_execute("SELECT 1").await.check("poll")?;
        got.extend(c.take_notifications());
    }
    let payloads: Vec<&str> = got.iter().map(|n| n.payload()).collect();
    ensure_eq!(payloads, vec!["one", "two", "self"]);
    ensure!(got.iter().all(|n| n.channel() == "Live Chan"), "channel");
    ensure_eq!(got[0].process_id(), other.backend_pid().unwrap_or(0));
    Ok(())
}

async fn listen_and_wait_for_notifications(env: &Env) -> Outcome {
    let channel = "Wait \"Chan\"; DROP TABLE x";
    let c = connect(&env.trust).await?;
    let other = connect(&env.trust).await?;
    c.listen(channel).await.check("listen")?;

    // Nothing sent: the wait really lasts its timeout, then reports none.
    let started = std::time::Instant::now();
    let none = c
        .wait_for_notification(Duration::from_millis(300))
        .await
        .check("empty wait")?;
    let waited = started.elapsed();
    ensure!(none.is_none(), "got {none:?}");
    ensure!(
        waited >= Duration::from_millis(280),
        "returned after {waited:?}"
    );

    // Sent while the listener is idle: the wait picks it up from the socket.
    other.notify(channel, "idle").await.check("notify")?;
    let n = c
        .wait_for_notification(Duration::from_secs(10))
        .await
        .check("wait")?
        .ok_or("no notification within 10 s")?;
    ensure_eq!((n.channel(), n.payload()), (channel, "idle"));
    ensure_eq!(n.process_id(), other.backend_pid().unwrap_or(0));

    // Sent while the listener runs other queries: kept, delivered in order.
    other.notify(channel, "one").await.check("notify one")?;
    c.query_one("SELECT pg_sleep(0.1)", &[])
        .await
        .check("busy")?;
    other.notify(channel, "two").await.check("notify two")?;
    let mut payloads = Vec::new();
    while payloads.len() < 2 {
        let n = c
            .wait_for_notification(Duration::from_secs(10))
            .await
            .check("wait")?
            .ok_or("a notification was lost")?;
        payloads.push(n.payload().to_string());
    }
    ensure_eq!(payloads, vec!["one".to_string(), "two".to_string()]);

    // A wait dropped midway loses nothing and leaves the connection usable.
    poll_once(c.next_notification()).await;
    other.notify(channel, "after drop").await.check("notify")?;
    let n = c
        .wait_for_notification(Duration::from_secs(10))
        .await
        .check("wait")?;
    ensure_eq!(
        n.map(|n| n.payload().to_string()),
        Some("after drop".to_string())
    );
    ensure_eq!(
        c.query_one("SELECT 1", &[])
            .await
            .check("query")?
            .get::<_, i32>(0),
        1
    );

    c.unlisten(channel).await.check("unlisten")?;
    other.notify(channel, "ignored").await.check("notify")?;
    let none = c
        .wait_for_notification(Duration::from_millis(200))
        .await
        .check("after unlisten")?;
    ensure!(none.is_none(), "notified after UNLISTEN: {none:?}");
    c.unlisten_all().await.check("unlisten all")?;
    Ok(())
}

async fn statement_closed_on_drop(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    let count = "SELECT count(*) FROM pg_prepared_statements";
    let before: i64 = c.query_one(count, &[]).await.check("count")?.get(0);
    let s1 = c.prepare("SELECT 1").await.check("prepare")?;
    let s2 = s1.clone();
    let during: i64 = c.query_one(count, &[]).await.check("count")?.get(0);
    ensure_eq!(during, before + 1);
    drop(s1);
    ensure_eq!(
        c.query_one(&s2, &[])
            .await
            .check("clone still works")?
            .get::<_, i32>(0),
        1
    );
    drop(s2);
    let after: i64 = c.query_one(count, &[]).await.check("count")?.get(0);
    ensure_eq!(after, before);
    // Prepares dropped mid-flight (after one poll: Parse sent, no answer read) and prepares that fail leave
    // nothing behind either.
    for _ in 0..3 {
        poll_once(c.prepare("SELECT 3")).await;
    }
    ensure!(
        c.prepare("SELEC 1").await.is_err(),
        "a bad prepare succeeded"
    );
    let after_drops: i64 = c.query_one(count, &[]).await.check("count")?.get(0);
    ensure_eq!(after_drops, before);
    let other = connect(&env.trust).await?;
    let foreign = other.prepare("SELECT 2").await.check("prepare other")?;
    ensure!(
        c.query(&foreign, &[]).await.is_err(),
        "a statement from another connection was accepted"
    );
    Ok(())
}

async fn close_sends_terminate(env: &Env) -> Outcome {
    let c = connect(&env.trust).await?;
    let pid = c.backend_pid().ok_or("pid")?;
    c.close().await.check("close")?;
    let mut other = connect(&env.trust).await?;
    until_gone(&mut other, pid)
        .await
        .map_err(|e| format!("after close: {e}"))
}

/// Waits (on `admin`) until backend `pid` has left `pg_stat_activity`, for 2 s at most.
async fn until_gone(admin: &mut Client, pid: i32) -> Outcome {
    for _ in 0..100 {
        let alive: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .check("pg_stat_activity")?
            .get(0);
        if alive == 0 {
            return Ok(());
        }
        sleep(Duration::from_millis(20)).await;
    }
    Err(format!("backend {pid} still alive after 2 s"))
}

async fn table_values(c: &mut Client, table: &str) -> Result<Vec<i32>, String> {
    let row = c
        .query_one(
            &*format!("SELECT coalesce(array_agg(v ORDER BY v), '{{}}') FROM {table}"),
            &[],
        )
        .await
        .check("values")?;
    Ok(row.get(0))
}

async fn transaction_commit_rollback_and_drop(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    c.batch_execute("CREATE TEMP TABLE txa (v int)")
        .await
        .check("create")?;
    let tx = c.transaction().await.check("begin")?;
    tx.execute("INSERT INTO txa VALUES (1)", &[])
        .await
        .check("insert")?;
    ensure_eq!(tx.transaction_status(), TransactionStatus::InTransaction);
    tx.commit().await.check("commit")?;
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);
    let tx = c.transaction().await.check("begin")?;
    tx.execute("INSERT INTO txa VALUES (2)", &[])
        .await
        .check("insert")?;
    tx.rollback().await.check("rollback")?;
    {
        let tx = c.transaction().await.check("begin")?;
        tx.execute("INSERT INTO txa VALUES (3)", &[])
            .await
            .check("insert")?;
    }
    ensure_eq!(table_values(&mut c, "txa").await?, vec![1]);
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);
    Ok(())
}

async fn savepoints_nest(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    c.batch_execute("CREATE TEMP TABLE txs (v int)")
        .await
        .check("create")?;
    let mut tx = c.transaction().await.check("begin")?;
    tx.execute("INSERT INTO txs VALUES (10)", &[])
        .await
        .check("10")?;
    {
        let sp = tx.transaction().await.check("savepoint")?;
        sp.execute("INSERT INTO txs VALUES (11)", &[])
            .await
            .check("11")?;
        sp.rollback().await.check("rollback to savepoint")?;
    }
    {
        let mut sp = tx
            .savepoint("named \"sp\"")
            .await
            .check("named savepoint")?;
        sp.execute("INSERT INTO txs VALUES (12)", &[])
            .await
            .check("12")?;
        {
            let inner = sp.transaction().await.check("inner")?;
            inner
                .execute("INSERT INTO txs VALUES (13)", &[])
                .await
                .check("13")?;
        }
        sp.commit().await.check("release")?;
    }
    {
        let sp = tx.transaction().await.check("savepoint")?;
        ensure!(
            sp.batch_execute("SELECT nope").await.is_err(),
            "error expected"
        );
        ensure_eq!(sp.transaction_status(), TransactionStatus::Failed);
    }
    tx.execute("INSERT INTO txs VALUES (14)", &[])
        .await
        .check("after failed savepoint")?;
    tx.commit().await.check("commit")?;
    ensure_eq!(table_values(&mut c, "txs").await?, vec![10, 12, 14]);
    Ok(())
}

async fn commit_of_failed_transaction_is_an_error(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    c.batch_execute("CREATE TEMP TABLE txf (v int)")
        .await
        .check("create")?;
    let tx = c.transaction().await.check("begin")?;
    tx.execute("INSERT INTO txf VALUES (30)", &[])
        .await
        .check("insert")?;
    ensure!(
        tx.batch_execute("SELECT nope").await.is_err(),
        "error expected"
    );
    let err = tx
        .commit()
        .await
        .err()
        .ok_or("commit of a failed transaction succeeded")?;
    ensure_eq!(err.kind(), ErrorKind::TransactionFailed);
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);
    ensure_eq!(table_values(&mut c, "txf").await?, Vec::<i32>::new());
    Ok(())
}

async fn transaction_builder_modes(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    let tx = c
        .build_transaction()
        .isolation_level(IsolationLevel::Serializable)
        .read_only(true)
        .deferrable(true)
        .start()
        .await
        .check("begin")?;
    let row = tx
        .query_one(
            "SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only'), \
             current_setting('transaction_deferrable')",
            &[],
        )
        .await
        .check("settings")?;
    ensure_eq!(row.get::<_, &str>(0), "serializable");
    ensure_eq!(row.get::<_, &str>(1), "on");
    ensure_eq!(row.get::<_, &str>(2), "on");
    let err = tx
        .batch_execute("CREATE TEMP TABLE nope (v int)")
        .await
        .err()
        .ok_or("write in a read-only transaction")?;
    ensure_eq!(err.code(), Some("25006"));
    tx.rollback().await.check("rollback")?;
    let tx = c
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()
        .await
        .check("begin")?;
    let level: String = tx
        .query_one("SELECT current_setting('transaction_isolation')", &[])
        .await
        .check("level")?
        .get(0);
    ensure_eq!(level, "repeatable read");
    tx.commit().await.check("commit")?;
    Ok(())
}

async fn dropped_futures_never_leak_a_transaction(env: &Env) -> Outcome {
    let mut c = connect(&env.trust).await?;
    c.batch_execute("CREATE TEMP TABLE txd (v int)")
        .await
        .check("create")?;
    // BEGIN sent, its answer never read: the transaction value was dropped with it and rolls back.
    poll_once(c.transaction()).await;
    ensure_eq!(table_values(&mut c, "txd").await?, Vec::<i32>::new());
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);
    // COMMIT sent, its answer never read: it still commits, and nothing rolls it back.
    let tx = c.transaction().await.check("begin")?;
    tx.execute("INSERT INTO txd VALUES (40)", &[])
        .await
        .check("insert")?;
    poll_once(tx.commit()).await;
    ensure_eq!(table_values(&mut c, "txd").await?, vec![40]);
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);
    // A query inside the transaction dropped mid-flight, then the transaction dropped: all rolled back.
    {
        let tx = c.transaction().await.check("begin")?;
        tx.execute("INSERT INTO txd VALUES (41)", &[])
            .await
            .check("insert")?;
        poll_once(tx.execute("INSERT INTO txd VALUES (42)", &[])).await;
    }
    ensure_eq!(table_values(&mut c, "txd").await?, vec![40]);
    ensure_eq!(c.transaction_status(), TransactionStatus::Idle);
    Ok(())
}

async fn terminated_backend_is_reported(env: &Env) -> Outcome {
    let victim = connect(&env.trust).await?;
    let pid = victim.backend_pid().ok_or("pid")?;
    let admin = connect(&env.trust).await?;
    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .check("terminate")?
        .get(0);
    ensure!(killed, "pg_terminate_backend returned false");
    let err = victim
        .query("SELECT 1", &[])
        .await
        .err()
        .ok_or("query on a terminated backend succeeded")?;
    ensure!(err.is_connection_broken(), "not marked broken: {err}");
    ensure_eq!(err.class(), ErrorClass::ConnectionBroken);
    ensure!(
        err.code() == Some(sqlstate::ADMIN_SHUTDOWN) || err.kind() == ErrorKind::Io,
        "unexpected error {err:?}"
    );
    ensure!(victim.is_closed(), "is_closed after termination");
    let again = victim
        .simple_query("SELECT 1")
        .await
        .err()
        .ok_or("second query succeeded")?;
    ensure!(
        again.is_connection_broken(),
        "second error not broken: {again}"
    );
    Ok(())
}

async fn target_session_attrs_primary(env: &Env) -> Outcome {
    for (attrs, ok) in [
        ("read-write", true),
        ("primary", true),
        ("any", true),
        ("standby", false),
        ("read-only", false),
        ("prefer-standby", true),
    ] {
        let config =
            Config::parse(&format!("{} target_session_attrs={attrs}", env.trust)).check("parse")?;
        match (Client::connect(&config).await, ok) {
            (Ok(_), true) | (Err(_), false) => {}
            (Ok(_), false) => {
                return Err(format!("target_session_attrs={attrs} accepted a primary"));
            }
            (Err(e), true) => return Err(format!("target_session_attrs={attrs}: {e}")),
        }
    }
    Ok(())
}

#[cfg(not(target_os = "wasi"))]
async fn unix_socket(env: &Env) -> Outcome {
    let dir = env.socket_dir.as_deref().ok_or("no socket dir")?;
    let c = connect(&format!(
        "host={dir} port={} user=pgc_trust dbname=postgres",
        env.port
    ))
    .await?;
    let row = c
        .query_one("SELECT inet_client_addr() IS NULL", &[])
        .await
        .check("addr")?;
    ensure!(row.get::<_, bool>(0), "not a Unix socket connection");
    Ok(())
}
