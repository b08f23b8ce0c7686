//! Fault injection, on both targets: a server that breaks off, stalls, or sends what it must not (scripted fake
//! servers), and a real PostgreSQL whose backends are terminated and which restarts.
//!
//! Every case ends in a clear error and a connection marked broken (a closed client whose next call fails at
//! once), or in a connection still usable where the protocol allows it (an ERROR inside a result) — never in a
//! hang or a panic. Each case has a client half, run natively on tokio and then, built for wasm32-wasip2, under
//! the real wasmtime CLI, and a server side: a [`Script`] for its own fake server, or the shared cluster.
//!
//! The real-server cases check what the issue asks of a server that fails: the error arrives (FATAL 57P01 when
//! a backend is terminated), the rows committed are exactly those the server acknowledged, and no response is
//! ever matched to the wrong request (every statement of a pipeline cut off by a termination, and every query
//! after a restart, gets its own value or an error). The restart is done by the host, when it sees the case's
//! session running its query.
//!
//! Each target prints one line per case, `<target>: ok <case> (<what the client saw>)`, and its totals.

#[cfg(not(target_os = "wasi"))]
#[allow(dead_code)]
#[path = "support/restart.rs"]
mod restart;
#[cfg(not(target_os = "wasi"))]
#[allow(dead_code)]
mod support;
#[macro_use]
#[path = "support/two_target.rs"]
mod two_target;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use wasi_pg_client::{
    Client, Config, Error, ErrorKind, Pipeline, PipelineMode, SimpleQueryMessage,
};

#[cfg(not(target_os = "wasi"))]
use support::fake_server::{FakeServer, Script, backend};
use two_target::{Outcome, join, sleep};

/// What a client may take to fail on its own, where a case asks for a prompt failure.
const PROMPT: Duration = Duration::from_secs(5);
/// The application_name of the session the host restarts the server under.
const RESTART_APP: &str = "faults_restart";
/// How long a client waits for the restarted server.
const RESTART_WAIT: Duration = Duration::from_secs(90);

/// Where a case's servers listen, as the client half sees them.
struct Target {
    /// The case's own fake server (0 for a real-server case).
    fake_port: u16,
    /// The shared PostgreSQL cluster.
    live_port: u16,
}

impl Target {
    /// A conninfo for the case's fake server, with `extra` settings appended.
    fn fake(&self, extra: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=alice dbname=postgres sslmode=disable connect_timeout=10 {extra}",
            self.fake_port
        )
    }

    /// A conninfo for the cluster as its trusted superuser, with `extra` settings appended.
    fn live(&self, extra: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=pgc_trust dbname=postgres sslmode=disable connect_timeout=20 {extra}",
            self.live_port
        )
    }
}

type ClientFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + 'a>>;

/// One case: its name, its client half and, natively, the script of its fake server (`None`: the cluster).
struct Case {
    name: &'static str,
    client: for<'a> fn(&'a Target) -> ClientFuture<'a>,
    #[cfg(not(target_os = "wasi"))]
    script: Option<fn() -> Script>,
}

macro_rules! fake_cases {
    ($($name:ident),* $(,)?) => {
        vec![$(Case {
            name: stringify!($name),
            client: |target| Box::pin($name::client(target)),
            #[cfg(not(target_os = "wasi"))]
            script: Some($name::script),
        }),*]
    };
}

macro_rules! live_cases {
    ($($name:ident),* $(,)?) => {
        vec![$(Case {
            name: stringify!($name),
            client: |target| Box::pin($name::client(target)),
            #[cfg(not(target_os = "wasi"))]
            script: None,
        }),*]
    };
}

fn all_cases() -> Vec<Case> {
    let mut cases = fake_cases![
        closed_mid_query,
        closed_mid_data_row,
        closed_mid_copy_out,
        closed_mid_copy_in,
        closed_mid_tls_handshake,
        silent_server_connect_timeout,
        silent_server_read_timeout,
        oversized_message,
        message_over_configured_cap,
        malformed_data_row,
        unknown_message_type,
        fatal_mid_result,
        error_mid_result_keeps_connection,
        unexpected_in_authentication,
        unexpected_after_authentication,
        unexpected_in_simple_query,
        unexpected_in_extended_query,
        unexpected_in_copy_out,
        unexpected_in_copy_in,
        unexpected_while_idle,
    ];
    cases.extend(live_cases![
        terminated_during_query,
        terminated_mid_result,
        terminated_during_copy_in,
        terminated_mid_pipeline,
        server_restart,
    ]);
    cases
}

// ---------------------------------------------------------------------------------------------------------
// Helpers of the client halves.
// ---------------------------------------------------------------------------------------------------------

async fn connect(conninfo: &str) -> Result<Client, String> {
    connect_with(conninfo, |_| {}).await
}

async fn connect_with(conninfo: &str, tweak: impl FnOnce(&mut Config)) -> Result<Client, String> {
    let mut config = Config::parse(conninfo).map_err(|e| format!("parse: {e}"))?;
    tweak(&mut config);
    Client::connect(&config)
        .await
        .map_err(|e| format!("connect: {e}"))
}

/// `error` broke the connection: its kind is one of `kinds`, it says the connection broke, it came within
/// `limit` of `started`, the client is closed, and the next call fails at once with a broken error too.
/// Runs `sql` as a simple query that must fail: its error, and when the query started.
async fn failing_query(client: &mut Client, sql: &str) -> Result<(Error, Instant), String> {
    let started = Instant::now();
    match client.simple_query(sql).await {
        Ok(messages) => Err(format!("the query returned {messages:?}")),
        Err(e) => Ok((e, started)),
    }
}

async fn check_broken(
    client: &mut Client,
    error: Error,
    kinds: &[ErrorKind],
    started: Instant,
    limit: Duration,
) -> Outcome {
    let elapsed = started.elapsed();
    ensure!(
        kinds.contains(&error.kind()),
        "a {:?} error ({error}), expected one of {kinds:?}",
        error.kind()
    );
    ensure!(
        error.is_connection_broken(),
        "the error does not mark the connection broken: {error}"
    );
    ensure!(
        client.is_closed(),
        "the client is not closed after: {error}"
    );
    ensure!(elapsed < limit, "the error took {elapsed:?}: {error}");
    let again = Instant::now();
    match client.simple_query("SELECT 1").await {
        Ok(_) => Err(format!("the client answered a query after: {error}")),
        Err(next) if next.is_connection_broken() && again.elapsed() < PROMPT => Ok(format!(
            "{:?} after {elapsed:.1?}: {error}; connection closed, next call: {:?}",
            error.kind(),
            next.kind()
        )),
        Err(next) => Err(format!(
            "the next call failed with {next} after {:?}",
            again.elapsed()
        )),
    }
}

/// A connect that must fail with one of `kinds` within `limit`.
async fn check_connect_fails(
    conninfo: &str,
    kinds: &[ErrorKind],
    limit: Duration,
    tweak: impl FnOnce(&mut Config),
) -> Outcome {
    let mut config = Config::parse(conninfo).map_err(|e| format!("parse: {e}"))?;
    tweak(&mut config);
    let started = Instant::now();
    let error = match Client::connect(&config).await {
        Ok(_) => return Err("connected".to_string()),
        Err(e) => e,
    };
    let elapsed = started.elapsed();
    ensure!(
        kinds.contains(&error.kind()),
        "a {:?} error ({error}), expected one of {kinds:?}",
        error.kind()
    );
    ensure!(
        elapsed < limit,
        "the connect took {elapsed:?} to fail: {error}"
    );
    Ok(format!(
        "connect failed: {:?} after {elapsed:.1?}: {error}",
        error.kind()
    ))
}

/// The values of the first column of a simple query's rows.
fn first_column(messages: &[SimpleQueryMessage]) -> Vec<Option<String>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_string)),
            _ => None,
        })
        .collect()
}

/// A name unique to this target, for tables the real-server cases create.
fn per_target(name: &str) -> String {
    if cfg!(target_os = "wasi") {
        format!("{name}_wasm")
    } else {
        format!("{name}_native")
    }
}

/// Terminates, from `killer`, the backend of the session named `app` `after` it was first seen running a
/// query starting with `running`; fails if none does within 30 seconds.
async fn terminate_when_running(
    killer: &mut Client,
    app: &str,
    running: &str,
    after: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let sql = format!(
        "SELECT pid FROM pg_stat_activity \
         WHERE application_name = '{app}' AND state = 'active' AND query LIKE '{running}%'"
    );
    let pid = loop {
        let found = killer
            .simple_query(&sql)
            .await
            .map_err(|e| format!("the killer's query: {e}"))?;
        if let Some(Some(pid)) = first_column(&found).into_iter().next() {
            break pid;
        }
        ensure!(
            Instant::now() < deadline,
            "no session {app} ran {running}... within 30 s"
        );
        sleep(Duration::from_millis(50)).await;
    };
    sleep(after).await;
    terminate(killer, &pid).await
}

/// Terminates the backend with this pid, from `killer`.
async fn terminate(killer: &mut Client, pid: &str) -> Result<(), String> {
    let done = killer
        .simple_query(&format!("SELECT pg_terminate_backend({pid})"))
        .await
        .map_err(|e| format!("pg_terminate_backend: {e}"))?;
    ensure!(
        first_column(&done) == [Some("t".to_string())],
        "pg_terminate_backend({pid}) returned {done:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Server-side helpers (native only).
// ---------------------------------------------------------------------------------------------------------

/// A trusted login: AuthenticationOk, the usual ParameterStatus messages, BackendKeyData, ReadyForQuery.
#[cfg(not(target_os = "wasi"))]
fn trusted() -> Script {
    Script::new()
        .expect_startup()
        .send(&[backend::authentication_ok(), backend::startup_complete()].concat())
}

/// The answer to a simple query of one text column and one row, ReadyForQuery included.
#[cfg(not(target_os = "wasi"))]
fn select_one() -> Vec<u8> {
    backend::one_row_result("?column?", 23, "1")
}

// ---------------------------------------------------------------------------------------------------------
// Scripted faults.
// ---------------------------------------------------------------------------------------------------------

/// The server reads the query and closes the connection without answering.
mod closed_mid_query {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        let mut client = connect(&target.fake("")).await?;
        let (error, started) = failing_query(&mut client, "SELECT 1").await?;
        check_broken(&mut client, error, &[ErrorKind::Io], started, PROMPT).await
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script() -> Script {
        trusted().expect(b'Q')
    }
}

/// The server sends the RowDescription and half a DataRow, then closes.
mod closed_mid_data_row {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        let mut client = connect(&target.fake("")).await?;
        let (error, started) = failing_query(&mut client, "SELECT 'hello'").await?;
        check_broken(&mut client, error, &[ErrorKind::Io], started, PROMPT).await
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script() -> Script {
        let row = backend::data_row(&[Some("hello")]);
        trusted().expect(b'Q').send(
            &[
                backend::row_description(&[("v", 25)]),
                row[..row.len() - 3].to_vec(),
            ]
            .concat(),
        )
    }
}

/// COPY TO STDOUT: one CopyData, then the server closes.
mod closed_mid_copy_out {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        let mut client = connect(&target.fake("")).await?;
        let started = Instant::now();
        let error = {
            let mut reader = client
                .copy_out("COPY items TO STDOUT")
                .await
                .map_err(|e| format!("copy_out: {e}"))?;
            let first = reader
                .next()
                .await
                .map_err(|e| format!("first chunk: {e}"))?;
            ensure!(
                first.as_deref() == Some(&b"1\tone\n"[..]),
                "first chunk {first:?}"
            );
            match reader.next().await {
                Ok(chunk) => return Err(format!("after the close: {chunk:?}")),
                Err(e) => e,
            }
        };
        check_broken(&mut client, error, &[ErrorKind::Io], started, PROMPT).await
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script() -> Script {
        trusted().expect(b'Q').send(
            &[
                backend::copy_out_response(2),
                backend::copy_data(b"1\tone\n"),
            ]
            .concat(),
        )
    }
}

/// COPY FROM STDIN: the server takes the first CopyData and closes.
mod closed_mid_copy_in {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        let mut client = connect(&target.fake("")).await?;
        let started = Instant::now();
        let error = {
            let mut writer = client
                .copy_in("COPY items FROM STDIN")
                .await
                .map_err(|e| format!("copy_in: {e}"))?;
            let mut sent = writer.write(b"1\tone\n").await;
            if sent.is_ok() {
                sent = writer.flush().await;
            }
            match sent {
                Ok(()) => match writer.finish().await {
                    Ok(rows) => return Err(format!("the COPY finished with {rows} rows")),
                    Err(e) => e,
                },
                Err(e) => e,
            }
        };
        check_broken(&mut client, error, &[ErrorKind::Io], started, PROMPT).await
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script() -> Script {
        trusted()
            .expect(b'Q')
            .send(&backend::copy_in_response(2))
            .expect(b'd')
    }
}

/// TLS: the server answers the SSLRequest with `S`, reads the ClientHello, sends the first bytes of a
/// ServerHello and closes.
mod closed_mid_tls_handshake {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        let conninfo = target
            .fake("")
            .replace("sslmode=disable", "sslmode=require");
        check_connect_fails(&conninfo, &[ErrorKind::Tls, ErrorKind::Io], PROMPT, |_| {}).await
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script() -> Script {
        Script::new().expect_ssl_request().send(b"S").run(
            "read the ClientHello, send part of a ServerHello",
            |session| {
                let hello = session.read_some()?;
                if hello.first() != Some(&0x16) {
                    return Err(format!("not a TLS handshake record: {hello:02x?}"));
                }
                // A handshake record of 122 bytes announced; a ServerHello begun; then nothing.
                session.send(&[
                    0x16, 0x03, 0x03, 0x00, 0x7a, 0x02, 0x00, 0x00, 0x76, 0x03, 0x03,
                ])
            },
        )
    }
}

/// The server accepts the connection and never says a word: connect_timeout fires.
mod silent_server_connect_timeout {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        let conninfo = target
            .fake("")
            .replace("connect_timeout=10", "connect_timeout=2");
        let outcome = check_connect_fails(
            &conninfo,
            &[ErrorKind::Timeout],
            Duration::from_secs(8),
            |_| {},
        )
        .await?;
        Ok(outcome)
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script() -> Script {
        Script::new().drain_to_eof()
    }
}

/// After the startup the server reads a query and never answers: the read deadline fires.
mod silent_server_read_timeout {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        let mut client = connect_with(&target.fake(""), |config| {
            config.read_timeout(Duration::from_secs(1));
        })
        .await?;
        let (error, started) = failing_query(&mut client, "SELECT 1").await?;
        ensure!(
            started.elapsed() >= Duration::from_millis(900),
            "the read deadline fired after {:?}",
            started.elapsed()
        );
        check_broken(&mut client, error, &[ErrorKind::Timeout], started, PROMPT).await
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script() -> Script {
        trusted().expect(b'Q').drain_to_eof()
    }
}

/// A DataRow header that claims 2 GiB: refused at its header, with nothing reserved for it.
mod oversized_message {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        let mut client = connect(&target.fake("")).await?;
        let (error, started) = failing_query(&mut client, "SELECT 1").await?;
        ensure!(
            error.to_string().contains("exceeds the limit"),
            "the error does not name the limit: {error}"
        );
        check_broken(&mut client, error, &[ErrorKind::Protocol], started, PROMPT).await
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script() -> Script {
        trusted()
            .expect(b'Q')
            .send(
                &[
                    backend::row_description(&[("v", 25)]),
                    vec![b'D', 0x7f, 0xff, 0xff, 0xf0, 0, 1],
                ]
                .concat(),
            )
            .drain_to_eof()
    }
}

/// A real 100 KiB DataRow to a client that accepts messages of 64 KiB at most (max_message_size).
mod message_over_configured_cap {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        let mut client = connect_with(&target.fake(""), |config| {
            config.max_message_size(64 * 1024);
        })
        .await?;
        let (error, started) = failing_query(&mut client, "SELECT repeat('x', 102400)").await?;
        ensure!(
            error.to_string().contains("max_message_size"),
            "the error does not name the setting: {error}"
        );
        check_broken(&mut client, error, &[ErrorKind::Protocol], started, PROMPT).await
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script() -> Script {
        let value = "x".repeat(100 * 1024);
        trusted()
            .expect(b'Q')
            .send(
                &[
                    backend::row_description(&[("repeat", 25)]),
                    backend::data_row(&[Some(&value)]),
                    backend::command_complete("SELECT 1"),
                    backend::ready_for_query(b'I'),
                ]
                .concat(),
            )
            .drain_to_eof()
    }
}

/// A DataRow whose field claims more bytes than the message holds.
mod malformed_data_row {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        let mut client = connect(&target.fake("")).await?;
        let (error, started) = failing_query(&mut client, "SELECT 'x'").await?;
        check_broken(&mut client, error, &[ErrorKind::Protocol], started, PROMPT).await
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script() -> Script {
        trusted()
            .expect(b'Q')
            .send(
                &[
                    backend::row_description(&[("v", 25)]),
                    backend::raw(b'D', &[0, 1, 0, 0, 0, 100, b'x']),
                    backend::command_complete("SELECT 1"),
                    backend::ready_for_query(b'I'),
                ]
                .concat(),
            )
            .drain_to_eof()
    }
}

/// A message type the protocol does not have.
mod unknown_message_type {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        let mut client = connect(&target.fake("")).await?;
        let (error, started) = failing_query(&mut client, "SELECT 1").await?;
        ensure!(
            error.to_string().contains("unknown message type"),
            "{error}"
        );
        check_broken(&mut client, error, &[ErrorKind::Protocol], started, PROMPT).await
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script() -> Script {
        trusted()
            .expect(b'Q')
            .send(&backend::raw(b'q', b"?"))
            .drain_to_eof()
    }
}

/// Rows, then FATAL 57P01 in the middle of the result, then the server closes: the error arrives, no row
/// is returned as if the query had succeeded.
mod fatal_mid_result {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        let mut client = connect(&target.fake("")).await?;
        let started = Instant::now();
        let error = match client
            .simple_query("SELECT g FROM generate_series(1, 10) g")
            .await
        {
            Ok(messages) => return Err(format!("the query returned {messages:?}")),
            Err(e) => e,
        };
        ensure!(
            error.code() == Some("57P01"),
            "SQLSTATE {:?}: {error}",
            error.code()
        );
        check_broken(&mut client, error, &[ErrorKind::Db], started, PROMPT).await
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script() -> Script {
        trusted().expect(b'Q').send(
            &[
                backend::row_description(&[("g", 23)]),
                backend::data_row(&[Some("1")]),
                backend::data_row(&[Some("2")]),
                backend::fatal(
                    "57P01",
                    "terminating connection due to administrator command",
                ),
            ]
            .concat(),
        )
    }
}

/// An ERROR (not FATAL) in the middle of a result, then ReadyForQuery: the query fails, the connection stays
/// usable, and the next query gets its own answer.
mod error_mid_result_keeps_connection {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        let client = connect(&target.fake("")).await?;
        let error = match client
            .simple_query("SELECT 1/(2-g) FROM generate_series(1, 3) g")
            .await
        {
            Ok(messages) => return Err(format!("the query returned {messages:?}")),
            Err(e) => e,
        };
        ensure!(
            error.code() == Some("22012") && !error.is_connection_broken(),
            "{error}"
        );
        ensure!(!client.is_closed(), "the client closed after {error}");
        let next = client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| format!("the next query: {e}"))?;
        ensure!(
            first_column(&next) == [Some("1".to_string())],
            "the next query returned {next:?}"
        );
        client.close().await.map_err(|e| format!("close: {e}"))?;
        Ok(format!(
            "Db {error}; connection still usable, the next query returned 1"
        ))
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script() -> Script {
        trusted()
            .expect(b'Q')
            .send(
                &[
                    backend::row_description(&[("?column?", 23)]),
                    backend::data_row(&[Some("1")]),
                    backend::error_response(&[
                        (b'S', "ERROR"),
                        (b'V', "ERROR"),
                        (b'C', "22012"),
                        (b'M', "division by zero"),
                    ]),
                    backend::ready_for_query(b'I'),
                ]
                .concat(),
            )
            .expect(b'Q')
            .send(&select_one())
            .expect(b'X')
            .expect_eof()
    }
}

/// A DataRow where an authentication request belongs.
mod unexpected_in_authentication {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        check_connect_fails(&target.fake(""), &[ErrorKind::Protocol], PROMPT, |_| {}).await
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script() -> Script {
        Script::new()
            .expect_startup()
            .send(&backend::data_row(&[Some("x")]))
            .drain_to_eof()
    }
}

/// A CommandComplete after AuthenticationOk, before the session is ready.
mod unexpected_after_authentication {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        check_connect_fails(&target.fake(""), &[ErrorKind::Protocol], PROMPT, |_| {}).await
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script() -> Script {
        Script::new()
            .expect_startup()
            .send(
                &[
                    backend::authentication_ok(),
                    backend::command_complete("SELECT 1"),
                ]
                .concat(),
            )
            .drain_to_eof()
    }
}

/// A ParseComplete in answer to a simple query.
mod unexpected_in_simple_query {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        let mut client = connect(&target.fake("")).await?;
        let (error, started) = failing_query(&mut client, "SELECT 1").await?;
        check_broken(&mut client, error, &[ErrorKind::Protocol], started, PROMPT).await
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script() -> Script {
        trusted()
            .expect(b'Q')
            .send(&[backend::parse_complete(), backend::ready_for_query(b'I')].concat())
            .drain_to_eof()
    }
}

/// CopyData in answer to the Parse, Describe and Sync of an extended query.
mod unexpected_in_extended_query {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        let mut client = connect(&target.fake("")).await?;
        let started = Instant::now();
        let error = match client.query("SELECT $1::int4", &[&1i32]).await {
            Ok(rows) => return Err(format!("the query returned {} rows", rows.len())),
            Err(e) => e,
        };
        check_broken(&mut client, error, &[ErrorKind::Protocol], started, PROMPT).await
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script() -> Script {
        trusted()
            .expect(b'P')
            .send(&backend::copy_data(b"not a COPY"))
            .drain_to_eof()
    }
}

/// A DataRow in the middle of a COPY TO STDOUT.
mod unexpected_in_copy_out {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        let mut client = connect(&target.fake("")).await?;
        let started = Instant::now();
        let error = {
            let mut reader = match client.copy_out("COPY items TO STDOUT").await {
                Ok(reader) => reader,
                Err(e) => return Err(format!("copy_out: {e}")),
            };
            loop {
                match reader.next().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Err("the COPY ended without an error".to_string()),
                    Err(e) => break e,
                }
            }
        };
        check_broken(&mut client, error, &[ErrorKind::Protocol], started, PROMPT).await
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script() -> Script {
        trusted()
            .expect(b'Q')
            .send(
                &[
                    backend::copy_out_response(1),
                    backend::copy_data(b"1\n"),
                    backend::data_row(&[Some("2")]),
                    backend::copy_done(),
                ]
                .concat(),
            )
            .drain_to_eof()
    }
}

/// A DataRow while the client sends COPY FROM STDIN data (the server may send nothing but an error then).
mod unexpected_in_copy_in {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        let mut client = connect(&target.fake("")).await?;
        let started = Instant::now();
        let error = match client.copy_in("COPY items FROM STDIN").await {
            Err(e) => e,
            Ok(mut writer) => {
                let mut result = writer.write(b"1\tone\n").await;
                if result.is_ok() {
                    result = writer.flush().await;
                }
                match result {
                    Ok(()) => match writer.finish().await {
                        Ok(rows) => return Err(format!("the COPY finished with {rows} rows")),
                        Err(e) => e,
                    },
                    Err(e) => e,
                }
            }
        };
        check_broken(&mut client, error, &[ErrorKind::Protocol], started, PROMPT).await
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script() -> Script {
        trusted()
            .expect(b'Q')
            .send(
                &[
                    backend::copy_in_response(2),
                    backend::data_row(&[Some("x")]),
                ]
                .concat(),
            )
            .drain_to_eof()
    }
}

/// A DataRow while the client waits for notifications with nothing pending.
mod unexpected_while_idle {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        let mut client = connect(&target.fake("")).await?;
        let started = Instant::now();
        let error = match client.wait_for_notification(Duration::from_secs(8)).await {
            Ok(notification) => return Err(format!("got {notification:?}")),
            Err(e) => e,
        };
        check_broken(&mut client, error, &[ErrorKind::Protocol], started, PROMPT).await
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script() -> Script {
        trusted()
            .send(&backend::data_row(&[Some("unsolicited")]))
            .drain_to_eof()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Real-server faults.
// ---------------------------------------------------------------------------------------------------------

/// pg_terminate_backend from another session while the query runs: FATAL 57P01 arrives, the connection is
/// closed, a new one works.
mod terminated_during_query {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        let app = per_target("faults_victim");
        let mut victim = connect(&target.live(&format!("application_name={app}"))).await?;
        let mut killer = connect(&target.live("")).await?;
        let started = Instant::now();
        let (result, killed) = join(
            victim.simple_query("SELECT pg_sleep(60)"),
            terminate_when_running(&mut killer, &app, "SELECT pg_sleep", Duration::ZERO),
        )
        .await;
        killed?;
        let error = match result {
            Ok(messages) => return Err(format!("the query returned {messages:?}")),
            Err(e) => e,
        };
        ensure!(
            error.code() == Some("57P01"),
            "SQLSTATE {:?}: {error}",
            error.code()
        );
        let seen = check_broken(
            &mut victim,
            error,
            &[ErrorKind::Db],
            started,
            Duration::from_secs(30),
        )
        .await?;
        let again = connect(&target.live("")).await?;
        let rows = again
            .simple_query("SELECT 42")
            .await
            .map_err(|e| format!("a new connection: {e}"))?;
        ensure!(first_column(&rows) == [Some("42".to_string())], "{rows:?}");
        Ok(format!("{seen}; a new connection works"))
    }
}

/// The backend terminates itself while rows stream out: the error arrives after some rows, and the query
/// fails as a whole.
mod terminated_mid_result {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        let mut client = connect(&target.live("")).await?;
        let started = Instant::now();
        let result = client
            .query(
                "SELECT g, CASE WHEN g = 20000 THEN pg_terminate_backend(pg_backend_pid()) END \
                 FROM generate_series(1, 100000) g",
                &[],
            )
            .await;
        let error = match result {
            Ok(rows) => return Err(format!("the query returned {} rows", rows.len())),
            Err(e) => e,
        };
        ensure!(
            error.code() == Some("57P01") || error.kind() == ErrorKind::Io,
            "{error}"
        );
        check_broken(
            &mut client,
            error,
            &[ErrorKind::Db, ErrorKind::Io],
            started,
            Duration::from_secs(30),
        )
        .await
    }
}

/// COPY FROM STDIN cut off by pg_terminate_backend: the COPY fails, and the table holds exactly the rows
/// the server acknowledged before (an INSERT and an earlier COPY), not those of the open transaction nor
/// those of the cut COPY.
mod terminated_during_copy_in {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        let table = per_target("faults_copy");
        let app = per_target("faults_copier");
        let mut setup = connect(&target.live("")).await?;
        setup
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int, label text)"
            ))
            .await
            .map_err(|e| format!("create the table: {e}"))?;

        let mut victim = connect(&target.live(&format!("application_name={app}"))).await?;
        let mut acknowledged = victim
            .execute(
                &format!("INSERT INTO {table} SELECT g, 'insert' FROM generate_series(1, 10) g"),
                &[],
            )
            .await
            .map_err(|e| format!("insert: {e}"))?;
        let mut writer = victim
            .copy_in(&format!("COPY {table} FROM STDIN"))
            .await
            .map_err(|e| format!("first copy: {e}"))?;
        for i in 0..100 {
            writer
                .write(format!("{i}\tcopied\n").as_bytes())
                .await
                .map_err(|e| format!("first copy: {e}"))?;
        }
        acknowledged += writer
            .finish()
            .await
            .map_err(|e| format!("first copy: {e}"))?;

        // Not acknowledged as committed: an open transaction, then a COPY that is cut off.
        let uncommitted = per_target("faults_uncommitted");
        let cut = connect(&target.live(&format!("application_name={uncommitted}"))).await?;
        cut.batch_execute(&format!(
            "BEGIN; INSERT INTO {table} SELECT g, 'uncommitted' FROM generate_series(1, 7) g"
        ))
        .await
        .map_err(|e| format!("open transaction: {e}"))?;
        let started = Instant::now();
        let error = {
            let mut writer = victim
                .copy_in(&format!("COPY {table} FROM STDIN"))
                .await
                .map_err(|e| format!("second copy: {e}"))?;
            let mut sent = Ok(());
            for i in 0..1000 {
                sent = writer.write(format!("{i}\tcut\n").as_bytes()).await;
                if sent.is_err() {
                    break;
                }
            }
            if sent.is_ok() {
                sent = writer.flush().await;
            }
            terminate_when_running(&mut setup, &app, "COPY", Duration::ZERO).await?;
            let mut result = sent.map(|()| 0);
            for i in 0..1000 {
                if result.is_err() {
                    break;
                }
                result = writer
                    .write(format!("{i}\tafter\n").as_bytes())
                    .await
                    .map(|()| 0);
            }
            match result {
                Ok(_) => match writer.finish().await {
                    Ok(rows) => return Err(format!("the cut COPY finished with {rows} rows")),
                    Err(e) => e,
                },
                Err(e) => e,
            }
        };
        ensure!(
            error.code() == Some("57P01") || error.kind() == ErrorKind::Io,
            "{error}"
        );
        let seen = check_broken(
            &mut victim,
            error,
            &[ErrorKind::Db, ErrorKind::Io],
            started,
            Duration::from_secs(30),
        )
        .await?;
        // The session with the open transaction dies too: its rows were never acknowledged as committed.
        let cut_pid = cut.backend_pid().ok_or("no backend pid")?;
        terminate(&mut setup, &cut_pid.to_string()).await?;
        ensure!(
            cut.simple_query("SELECT 1").await.is_err(),
            "the terminated session with the open transaction still answers"
        );
        let count = setup
            .simple_query(&format!("SELECT count(*) FROM {table}"))
            .await
            .map_err(|e| format!("count: {e}"))?;
        let count = first_column(&count);
        ensure!(
            count == [Some(acknowledged.to_string())],
            "the table holds {count:?} rows, {acknowledged} were acknowledged"
        );
        setup
            .batch_execute(&format!("DROP TABLE {table}"))
            .await
            .map_err(|e| format!("drop the table: {e}"))?;
        Ok(format!(
            "{seen}; the table holds exactly the {acknowledged} acknowledged rows"
        ))
    }
}

/// A pipeline of statements that each take a moment, cut off by pg_terminate_backend: every statement that
/// reports a result reports its own value, those after the cut fail, and the connection is broken.
mod terminated_mid_pipeline {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        let app = per_target("faults_pipeline");
        let mut victim = connect(&target.live(&format!("application_name={app}"))).await?;
        let mut killer = connect(&target.live("")).await?;
        let values: Vec<i32> = (0..40).collect();
        let mut pipeline = Pipeline::new(PipelineMode::Independent);
        for v in &values {
            pipeline.push("SELECT $1::int4, pg_sleep(0.05)", &[v]);
        }
        let (result, killed) = join(
            victim.run_pipeline(&pipeline),
            // About ten of the statements run before the cut.
            terminate_when_running(
                &mut killer,
                &app,
                "SELECT $1::int4",
                Duration::from_millis(500),
            ),
        )
        .await;
        killed?;
        let (answered, failed) = match result {
            // The documented outcome of a broken connection: one error for the batch, no per-statement results
            // (so nothing is matched to any statement, rightly or wrongly).
            Err(e) => {
                ensure!(e.is_connection_broken(), "{e}");
                ensure!(victim.is_closed(), "the client is not closed");
                return Ok(format!(
                    "the batch failed as a whole: {:?}: {e}; connection closed",
                    e.kind()
                ));
            }
            Ok(results) => {
                ensure!(results.len() == values.len(), "{} results", results.len());
                let mut answered = 0;
                let mut failing = false;
                for (i, result) in results.iter().enumerate() {
                    match result {
                        Ok(output) => {
                            ensure!(
                                !failing,
                                "statement {i} succeeded after an earlier one failed"
                            );
                            let got: Vec<i32> = output.rows().iter().map(|r| r.get(0)).collect();
                            ensure!(got == [values[i]], "statement {i} returned {got:?}");
                            answered += 1;
                        }
                        Err(_) => failing = true,
                    }
                }
                ensure!(
                    failing,
                    "every statement succeeded: the termination came too late"
                );
                (answered, values.len() - answered)
            }
        };
        ensure!(victim.is_closed(), "the client is not closed");
        Ok(format!(
            "{answered} statements answered, each with its own value, {failed} failed; connection closed"
        ))
    }
}

/// The server restarts (`pg_ctl restart -m fast`, done by the host) while a query runs: the error arrives, the
/// old connection is closed, and after the server is back every query gets its own answer.
mod server_restart {
    use super::*;

    pub(super) async fn client(target: &Target) -> Outcome {
        let mut client = connect(&target.live(&format!("application_name={RESTART_APP}"))).await?;
        let (error, started) = failing_query(&mut client, "SELECT pg_sleep(60)").await?;
        let seen = check_broken(
            &mut client,
            error,
            &[ErrorKind::Db, ErrorKind::Io],
            started,
            Duration::from_secs(60),
        )
        .await?;
        let deadline = Instant::now() + RESTART_WAIT;
        let fresh = loop {
            match connect(&target.live("")).await {
                Ok(fresh) => break fresh,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(format!("the server did not come back: {e}")),
            }
        };
        let waited = started.elapsed();
        for i in 0..20i32 {
            let row = fresh
                .query_one("SELECT $1::int4 * 2", &[&i])
                .await
                .map_err(|e| format!("query {i}: {e}"))?;
            let got: i32 = row.get(0);
            ensure!(got == i * 2, "query {i} returned {got}");
        }
        fresh.close().await.map_err(|e| format!("close: {e}"))?;
        Ok(format!(
            "{seen}; reconnected after {waited:.1?}, 20 queries each got their own answer"
        ))
    }
}

// ---------------------------------------------------------------------------------------------------------
// The two harnesses.
// ---------------------------------------------------------------------------------------------------------

/// The environment variables that carry the fake servers' ports and the cluster's port to the guest.
const ENV_PORTS: &str = "FAULTS_PORTS";
const ENV_LIVE_PORT: &str = "FAULTS_LIVE_PORT";

#[cfg(not(target_os = "wasi"))]
fn main() {
    // `run` returns before the exit, so the cluster is stopped either way.
    run().finish("fault");
}

/// Runs every case natively, then under wasmtime (WASI 0.2, then 0.3), with the cluster and the restart watcher up throughout.
#[cfg(not(target_os = "wasi"))]
fn run() -> two_target::Totals {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use support::Cluster;
    use two_target::{Guest, Tally, Totals};

    let cluster = Cluster::start();
    let restarter = restart::Restarter::new(&cluster);
    let stop = Arc::new(AtomicBool::new(false));
    let cases = all_cases();
    std::thread::scope(|scope| {
        let watcher = scope.spawn(|| watch_for_restarts(&cluster, &restarter, &stop));
        let mut native = Tally::native();
        let runtime = two_target::native_runtime();
        let servers = start_servers(&cases);
        for (case, server) in cases.iter().zip(&servers) {
            let target = Target {
                fake_port: server.as_ref().map_or(0, FakeServer::port),
                live_port: cluster.port,
            };
            native.record(case.name, runtime.block_on((case.client)(&target)));
        }
        finish_servers(servers);
        native.end();

        // The same cases in each guest build (WASI 0.2, then 0.3), against fresh fake servers.
        let run_guest = |guest: Guest| {
            let mut tally = Tally::for_guest(&guest);
            let servers = start_servers(&cases);
            let ports =
                two_target::port_list(cases.iter().zip(&servers).map(|(case, server)| {
                    (case.name, server.as_ref().map_or(0, FakeServer::port))
                }));
            let live_port = cluster.port.to_string();
            let run = guest.run(&[(ENV_PORTS, &ports), (ENV_LIVE_PORT, &live_port)], &[]);
            finish_servers(servers);
            tally.record_guest(&run, cases.iter().map(|case| case.name));
            tally.end();
            tally
        };
        let wasm = run_guest(Guest::build());
        let wasi_p3 = run_guest(Guest::build_p3());
        stop.store(true, Ordering::Release);
        let restarts = watcher.join().unwrap_or(0);
        Totals {
            native,
            wasm,
            wasi_p3,
            notes: vec![format!("server restarts: {restarts}")],
        }
    })
}

/// Restarts the server whenever a session named [`RESTART_APP`] runs its query, until `stop`; the number of
/// restarts.
#[cfg(not(target_os = "wasi"))]
fn watch_for_restarts(
    cluster: &support::Cluster,
    restarter: &restart::Restarter,
    stop: &std::sync::atomic::AtomicBool,
) -> usize {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{RESTART_APP}' \
         AND state = 'active' AND query LIKE 'SELECT pg_sleep%'"
    );
    let mut restarts = 0;
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        let out = cluster.psql(&["-X", "-q", "-A", "-t", "-c", &sql], None);
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() != "0" {
            restarter.restart();
            restarts += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    restarts
}

#[cfg(not(target_os = "wasi"))]
fn start_servers(cases: &[Case]) -> Vec<Option<FakeServer>> {
    cases
        .iter()
        .map(|case| case.script.map(|script| FakeServer::start(script())))
        .collect()
}

/// Stops the fake servers; their transcripts are not checked (the client halves check the outcomes).
#[cfg(not(target_os = "wasi"))]
fn finish_servers(servers: Vec<Option<FakeServer>>) {
    for server in servers.into_iter().flatten() {
        let _ = server.finish();
    }
}

/// Runs every case's client half against the ports the host passed and prints an outcome line for each.
#[cfg(target_os = "wasi")]
fn main() {
    let ports = two_target::guest_var(ENV_PORTS);
    let live_port = two_target::guest_port(ENV_LIVE_PORT);
    for case in all_cases() {
        let fake_port = two_target::port_in(&ports, case.name);
        two_target::run_in_guest(case.name, async move {
            let fake_port =
                fake_port.ok_or_else(|| format!("no port for {} in {ENV_PORTS}", case.name))?;
            let target = Target {
                fake_port,
                live_port,
            };
            (case.client)(&target).await
        });
    }
}
