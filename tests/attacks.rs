//! Attacks and faults from a hostile or broken server, run on both targets against scripted fake servers.
//!
//! Each case has three parts: a script for its fake server (`tests/support/fake_server.rs`), the client side
//! (which connects and checks the error it gets), and a check of what the fake server recorded (for example
//! that no PasswordMessage was ever sent). Natively this binary starts one fake server per case, runs every
//! client half on tokio, then checks the transcripts. Then it builds itself for wasm32-wasip2 and runs the
//! client halves under the real wasmtime CLI against fresh fake servers (ports and the CA file travel as
//! environment variables), and checks those transcripts too. Each target prints `<target>: N passed,
//! M failed`; any failure fails the test.
//!
//! Two controls (a plaintext and a TLS connection that must work) show the fake servers speak the protocol
//! well enough that the attacks fail for the reason they test, not because the fake is broken.
//!
//! `ATTACKS_SERVE=<case> cargo test --test attacks` runs only that case's fake server, until stdin closes, to
//! try another client against it (libpq's psql, say), then prints what each connection did.

#[cfg(not(target_os = "wasi"))]
#[allow(dead_code)]
mod support;
#[macro_use]
#[path = "support/two_target.rs"]
mod two_target;

use std::fmt::{self, Write as _};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::instrument::WithSubscriber;
use tracing::span;
use tracing::{Event, Metadata, Subscriber};
use wasi_pg_client::{Client, Config, Error, ErrorKind, SimpleQueryMessage};

#[cfg(not(target_os = "wasi"))]
use support::fake_server::{FakeCerts, FakeServer, Script, Transcript, backend, scram};

/// The OAuth (SASL OAUTHBEARER) cases.
#[path = "attacks/oauth.rs"]
mod oauth;
use oauth::*;

/// The password every case configures; it must never reach a server that did not earn it.
const PASSWORD: &str = "secret";
/// Put by a hostile server into an ErrorResponse it has no business sending; must never be shown.
const MARKER: &str = "MARKER-7f3a";
/// What a client may take to fail on its own, where a case asks for a prompt failure.
const PROMPT: Duration = Duration::from_secs(5);

/// Where a case's fake server listens, as the client half sees it.
struct Target {
    port: u16,
    /// The CA that signed the fake servers' certificate, as a path the client can open.
    ca_file: String,
}

impl Target {
    /// A conninfo for this case's server, with `extra` settings appended. connect_timeout keeps a client that
    /// waits for an answer that never comes from hanging the run.
    fn conninfo(&self, extra: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=alice dbname=postgres connect_timeout=10 {extra}",
            self.port
        )
    }
}

type Outcome = Result<(), String>;
/// A client half's result: what the client saw (for the log), or why the case failed.
type ClientOutcome = Result<String, String>;
type ClientFuture<'a> = Pin<Box<dyn Future<Output = ClientOutcome> + 'a>>;

/// One case: its name, its client half and, natively, its server script and the check of the transcripts.
struct Case {
    name: &'static str,
    client: for<'a> fn(&'a Target) -> ClientFuture<'a>,
    #[cfg(not(target_os = "wasi"))]
    script: fn(&FakeCerts) -> Script,
    #[cfg(not(target_os = "wasi"))]
    check: fn(&[Transcript]) -> Outcome,
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        vec![$(Case {
            name: stringify!($name),
            client: |target| Box::pin($name::client(target)),
            #[cfg(not(target_os = "wasi"))]
            script: $name::script,
            #[cfg(not(target_os = "wasi"))]
            check: $name::check,
        }),*]
    };
}

fn all_cases() -> Vec<Case> {
    cases![
        control_plaintext,
        control_tls_after_s,
        bytes_after_s,
        error_response_to_ssl_request_prefer,
        error_response_to_ssl_request_require,
        cleartext_after_n_with_require_auth_scram,
        cleartext_after_n_with_channel_binding_require,
        scram_iteration_count_1e9,
        scram_wrong_server_signature,
        direct_tls_with_alpn,
        direct_tls_without_alpn,
        direct_tls_with_weak_sslmode,
        nul_in_startup_parameter,
        invalid_ssl_response_byte,
        close_right_after_s,
        oauth_discovery_then_token,
        oauth_token_rejected,
        oauth_hook_error,
        oauth_issuer_mismatch,
        oauth_over_plaintext,
        oauth_without_hook,
    ]
}

// ---------------------------------------------------------------------------------------------------------
// The cases. Each module: the attack in its doc comment, then `client`, `script` and `check`.
// ---------------------------------------------------------------------------------------------------------

/// Control: a plaintext trust login and `SELECT 1` work against the fake server.
mod control_plaintext {
    use super::*;

    pub(super) async fn client(target: &Target) -> ClientOutcome {
        let client = connect_ok(&target.conninfo("sslmode=disable")).await?;
        select_one_and_close(client).await
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script(_: &FakeCerts) -> Script {
        serve_select_one(Script::new().expect_startup())
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn check(connections: &[Transcript]) -> Outcome {
        let first = only_connection(connections)?;
        ensure!(first.result.is_ok(), "{}", first.summary());
        ensure!(
            !first.saw_ssl_request(),
            "sslmode=disable sent an SSLRequest"
        );
        check_select_one(first)
    }
}

/// Control: TLS after an SSLRequest answered `S`, with the certificate verified (verify-full), then `SELECT 1`.
mod control_tls_after_s {
    use super::*;

    pub(super) async fn client(target: &Target) -> ClientOutcome {
        let extra = format!("sslmode=verify-full sslrootcert={}", target.ca_file);
        let client = connect_ok(&target.conninfo(&extra)).await?;
        select_one_and_close(client).await
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script(certs: &FakeCerts) -> Script {
        let tls = certs.server_config(&[support::fake_server::ALPN_POSTGRESQL]);
        serve_select_one(
            Script::new()
                .expect_ssl_request()
                .send(b"S")
                .start_tls(tls)
                .expect_startup(),
        )
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn check(connections: &[Transcript]) -> Outcome {
        let first = only_connection(connections)?;
        ensure!(first.result.is_ok(), "{}", first.summary());
        ensure!(first.tls, "no TLS handshake: {}", first.summary());
        check_select_one(first)
    }
}

/// CVE-2021-23222: the server answers the SSLRequest with `S` and, in the same write, plaintext that a
/// man in the middle injected (AuthenticationOk, the startup parameters, ReadyForQuery). Bytes buffered with
/// the `S` must not be read as if they came over TLS: the connection fails and no query runs.
mod bytes_after_s {
    use super::*;

    pub(super) async fn client(target: &Target) -> ClientOutcome {
        let failure = connect_err(&target.conninfo("sslmode=require"), |_| {}).await?;
        failure.mentions(&["unencrypted", "plaintext", "handshake"])
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script(_: &FakeCerts) -> Script {
        let injected = [
            b"S".to_vec(),
            backend::authentication_ok(),
            backend::startup_complete(),
        ]
        .concat();
        Script::new()
            .expect_ssl_request()
            .send(&injected)
            .drain_to_eof()
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn check(connections: &[Transcript]) -> Outcome {
        let first = first_connection(connections)?;
        ensure!(first.saw_ssl_request(), "{}", first.summary());
        for connection in connections {
            // After the SSLRequest the client may only speak TLS (a handshake or an alert record), or nothing.
            let after = connection.wire.get(8..).unwrap_or_default();
            ensure!(
                after.is_empty() || matches!(after[0], 0x15 | 0x16),
                "after the SSLRequest the client sent non-TLS bytes {:02x?}",
                &after[..after.len().min(16)]
            );
            ensure!(
                connection.startup_params().is_none(),
                "a plaintext StartupMessage was sent"
            );
        }
        Ok(())
    }
}

/// CVE-2024-10977 with sslmode=prefer: see [`error_response_to_ssl_request`].
mod error_response_to_ssl_request_prefer {
    use super::*;

    pub(super) async fn client(target: &Target) -> ClientOutcome {
        error_response_to_ssl_request::client(target, "prefer").await
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) use error_response_to_ssl_request::{check, script};
}

/// CVE-2024-10977 with sslmode=require: see [`error_response_to_ssl_request`].
mod error_response_to_ssl_request_require {
    use super::*;

    pub(super) async fn client(target: &Target) -> ClientOutcome {
        error_response_to_ssl_request::client(target, "require").await
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) use error_response_to_ssl_request::{check, script};
}

/// CVE-2024-10977: the server answers the SSLRequest with an ErrorResponse. Nothing has authenticated the
/// server yet (a man in the middle can send this), so its text must not reach the user: the connection fails
/// and the marker it carries appears in no error message and in no log event.
mod error_response_to_ssl_request {
    use super::*;

    pub(super) async fn client(target: &Target, sslmode: &str) -> ClientOutcome {
        let extra = format!("sslmode={sslmode} password={PASSWORD}");
        let failure = connect_err(&target.conninfo(&extra), |_| {}).await?;
        ensure!(
            !failure.text.contains(MARKER),
            "the server's unauthenticated error text reached the error: {}",
            failure.text
        );
        ensure!(
            !failure.logs.contains(MARKER),
            "the server's unauthenticated error text reached the log: {}",
            failure.logs
        );
        Ok(failure.seen())
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script(_: &FakeCerts) -> Script {
        let text = format!("you must run \\i {MARKER}.sql first");
        let error = backend::error_response(&[
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', "28000"),
            (b'M', &text),
            (b'D', MARKER),
            (b'H', MARKER),
        ]);
        Script::new().expect_ssl_request().send(&error).expect_eof()
    }

    /// The first connection asked for TLS, got the ErrorResponse and closed without sending anything more.
    #[cfg(not(target_os = "wasi"))]
    pub(super) fn check(connections: &[Transcript]) -> Outcome {
        let first = first_connection(connections)?;
        ensure!(first.result.is_ok(), "{}", first.summary());
        no_password_sent(connections)
    }
}

/// A server (or a man in the middle) refuses TLS with `N` and asks for a cleartext password. With
/// `require_auth=scram-sha-256` the client fails and the password never leaves it.
mod cleartext_after_n_with_require_auth_scram {
    use super::*;

    pub(super) async fn client(target: &Target) -> ClientOutcome {
        let extra = format!("sslmode=prefer require_auth=scram-sha-256 password={PASSWORD}");
        let failure = connect_err(&target.conninfo(&extra), |_| {}).await?;
        failure.kind(ErrorKind::Auth)?;
        failure.mentions(&["require_auth"])
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script(_: &FakeCerts) -> Script {
        cleartext_after_n()
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn check(connections: &[Transcript]) -> Outcome {
        let first = first_connection(connections)?;
        ensure!(
            first.saw_ssl_request() && first.startup_params().is_some(),
            "the attack was not exercised: {}",
            first.summary()
        );
        no_password_sent(connections)
    }
}

/// As above with `channel_binding=require` over a connection the server kept in plaintext: no channel
/// binding is possible, so the client fails and sends no password.
mod cleartext_after_n_with_channel_binding_require {
    use super::*;

    pub(super) async fn client(target: &Target) -> ClientOutcome {
        let extra = format!("sslmode=prefer channel_binding=require password={PASSWORD}");
        let failure = connect_err(&target.conninfo(&extra), |_| {}).await?;
        failure.mentions(&["channel binding", "channel_binding"])
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script(_: &FakeCerts) -> Script {
        cleartext_after_n()
    }

    /// The client may refuse before connecting at all; if it connected, it sent no password.
    #[cfg(not(target_os = "wasi"))]
    pub(super) fn check(connections: &[Transcript]) -> Outcome {
        no_password_sent(connections)
    }
}

/// A server that offers SCRAM-SHA-256 and asks for 10^9 PBKDF2 iterations (hours of CPU): the client
/// refuses at once, naming the iteration count, and sends no client-final message.
mod scram_iteration_count_1e9 {
    use super::*;

    pub(super) async fn client(target: &Target) -> ClientOutcome {
        let extra = format!("sslmode=disable password={PASSWORD}");
        let failure = connect_err(&target.conninfo(&extra), |_| {}).await?;
        ensure!(
            failure.elapsed < PROMPT,
            "the client took {:?} to refuse",
            failure.elapsed
        );
        failure.kind(ErrorKind::Auth)?;
        failure.mentions(&["iteration"])
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script(_: &FakeCerts) -> Script {
        Script::new()
            .expect_startup()
            .send(&backend::authentication_sasl(&["SCRAM-SHA-256"]))
            .run("SCRAM server-first with i=1000000000", |session| {
                scram::begin(session, &scram::random::<16>(), 1_000_000_000)?;
                Ok(())
            })
            .expect_eof()
    }

    /// The client sent its first SCRAM message (SASLInitialResponse), then closed.
    #[cfg(not(target_os = "wasi"))]
    pub(super) fn check(connections: &[Transcript]) -> Outcome {
        let first = only_connection(connections)?;
        ensure!(first.result.is_ok(), "{}", first.summary());
        ensure!(
            first.messages(b'p').count() == 1,
            "expected only the SASLInitialResponse: {}",
            first.summary()
        );
        Ok(())
    }
}

/// A SCRAM server that runs a real exchange (random salt, 4096 iterations, the client's proof checked) but
/// cannot prove it knows the password: its server-final `v=` is wrong. AuthenticationOk and a ready session
/// follow in the same write, to tempt the client; it must fail with an authentication error and send nothing
/// more.
mod scram_wrong_server_signature {
    use super::*;

    pub(super) async fn client(target: &Target) -> ClientOutcome {
        let extra = format!("sslmode=disable password={PASSWORD}");
        let failure = connect_err(&target.conninfo(&extra), |_| {}).await?;
        failure.kind(ErrorKind::Auth)?;
        failure.mentions(&["signature", "verif"])
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script(_: &FakeCerts) -> Script {
        Script::new()
            .expect_startup()
            .send(&backend::authentication_sasl(&["SCRAM-SHA-256"]))
            .run("SCRAM exchange with a wrong server signature", |session| {
                let exchange = scram::begin(session, &scram::random::<16>(), 4096)?;
                let mut signature = scram::verify_client_final(session, &exchange, PASSWORD)?;
                signature[0] ^= 0x01;
                let server_final = format!("v={}", scram::base64(&signature));
                session.send(
                    &[
                        backend::authentication_sasl_final(server_final.as_bytes()),
                        backend::authentication_ok(),
                        backend::startup_complete(),
                    ]
                    .concat(),
                )
            })
            .expect_eof()
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn check(connections: &[Transcript]) -> Outcome {
        let first = only_connection(connections)?;
        ensure!(first.result.is_ok(), "{}", first.summary());
        ensure!(!first.has_message(b'Q'), "a query was sent");
        Ok(())
    }
}

/// `sslnegotiation=direct`: the ClientHello comes first, offering ALPN `postgresql`; the server agrees, and
/// the connection works.
mod direct_tls_with_alpn {
    use super::*;

    pub(super) async fn client(target: &Target) -> ClientOutcome {
        let extra = format!(
            "sslnegotiation=direct sslmode=require sslrootcert={}",
            target.ca_file
        );
        let client = connect_ok(&target.conninfo(&extra)).await?;
        select_one_and_close(client).await
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script(certs: &FakeCerts) -> Script {
        let tls = certs.server_config(&[support::fake_server::ALPN_POSTGRESQL]);
        serve_select_one(Script::new().start_tls(tls).expect_startup())
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn check(connections: &[Transcript]) -> Outcome {
        let first = only_connection(connections)?;
        ensure!(first.result.is_ok(), "{}", first.summary());
        ensure!(
            first.alpn.as_deref() == Some(support::fake_server::ALPN_POSTGRESQL),
            "ALPN: {}",
            first.summary()
        );
        check_select_one(first)
    }
}

/// Direct TLS to a server that negotiates no ALPN (not a PostgreSQL server that knows direct TLS, perhaps a
/// different service on a shared port): the client must give up after the handshake, before the startup.
mod direct_tls_without_alpn {
    use super::*;

    pub(super) async fn client(target: &Target) -> ClientOutcome {
        let extra = format!(
            "sslnegotiation=direct sslmode=require sslrootcert={}",
            target.ca_file
        );
        let failure = connect_err(&target.conninfo(&extra), |_| {}).await?;
        failure.mentions(&["ALPN"])
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script(certs: &FakeCerts) -> Script {
        serve_select_one(
            Script::new()
                .start_tls(certs.server_config(&[]))
                .expect_startup(),
        )
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn check(connections: &[Transcript]) -> Outcome {
        let first = first_connection(connections)?;
        ensure!(
            first.wire.first() == Some(&0x16),
            "the first bytes were not a TLS handshake: {}",
            first.summary()
        );
        for connection in connections {
            ensure!(
                connection.startup_params().is_none(),
                "the startup went out without ALPN: {}",
                connection.summary()
            );
        }
        Ok(())
    }
}

/// `sslnegotiation=direct` with a sslmode that could fall back to plaintext is a configuration error (as in
/// libpq): nothing reaches the server.
mod direct_tls_with_weak_sslmode {
    use super::*;

    pub(super) async fn client(target: &Target) -> ClientOutcome {
        let failure = connect_err(
            &target.conninfo("sslnegotiation=direct sslmode=prefer"),
            |_| {},
        )
        .await?;
        failure.kind(ErrorKind::Config)?;
        failure.mentions(&["direct"])
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script(_: &FakeCerts) -> Script {
        Script::new().drain_to_eof()
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn check(connections: &[Transcript]) -> Outcome {
        nothing_sent(connections)
    }
}

/// A NUL byte in a startup parameter given through the Config API would cut the StartupMessage short (and
/// can smuggle in another parameter): refused before anything is sent.
mod nul_in_startup_parameter {
    use super::*;

    pub(super) async fn client(target: &Target) -> ClientOutcome {
        let conninfo = target.conninfo(&format!("password={PASSWORD}"));
        type Setter = fn(&mut Config);
        let setters: [(&str, Setter); 3] = [
            ("application_name", |c| {
                c.application_name("app\0options=-c log_statement=all");
            }),
            ("options", |c| {
                c.options("-c search_path=public\0");
            }),
            ("param", |c| {
                c.param("search_path", "public\0user\0mallory");
            }),
        ];
        let mut seen = Vec::new();
        for (what, set) in setters {
            let failure = connect_err(&conninfo, set)
                .await
                .map_err(|e| format!("{what}: {e}"))?;
            failure
                .kind(ErrorKind::Config)
                .map_err(|e| format!("{what}: {e}"))?;
            seen.push(
                failure
                    .mentions(&["NUL"])
                    .map_err(|e| format!("{what}: {e}"))?,
            );
        }
        Ok(seen.join(" / "))
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script(_: &FakeCerts) -> Script {
        Script::new()
            .answer_ssl_request_if_any(b'N')
            .expect_startup()
            .send(&[backend::authentication_ok(), backend::startup_complete()].concat())
            .expect_eof()
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn check(connections: &[Transcript]) -> Outcome {
        nothing_sent(connections)
    }
}

/// The SSLRequest answered with a byte that is none of `S`, `N` or `E`: a protocol error, no fallback.
mod invalid_ssl_response_byte {
    use super::*;

    pub(super) async fn client(target: &Target) -> ClientOutcome {
        let failure = connect_err(&target.conninfo("sslmode=require"), |_| {}).await?;
        failure.kind(ErrorKind::Protocol)?;
        failure.mentions(&["SSL", "TLS"])
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script(_: &FakeCerts) -> Script {
        Script::new().expect_ssl_request().send(b"X").expect_eof()
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn check(connections: &[Transcript]) -> Outcome {
        let first = only_connection(connections)?;
        ensure!(first.result.is_ok(), "{}", first.summary());
        Ok(())
    }
}

/// The server answers `S` and closes the connection before the handshake: a prompt, clear error.
mod close_right_after_s {
    use super::*;

    pub(super) async fn client(target: &Target) -> ClientOutcome {
        let failure = connect_err(&target.conninfo("sslmode=require"), |_| {}).await?;
        ensure!(
            failure.elapsed < PROMPT,
            "the client took {:?} to notice",
            failure.elapsed
        );
        failure.mentions(&["closed", "reset", "EOF", "end of file", "handshake"])
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn script(_: &FakeCerts) -> Script {
        Script::new().expect_ssl_request().send(b"S")
    }

    #[cfg(not(target_os = "wasi"))]
    pub(super) fn check(connections: &[Transcript]) -> Outcome {
        let first = only_connection(connections)?;
        ensure!(first.result.is_ok(), "{}", first.summary());
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------
// Client-side helpers (both targets).
// ---------------------------------------------------------------------------------------------------------

/// A connection attempt that failed, with everything a check may look at.
struct Failure {
    kind: ErrorKind,
    /// The error's `Display`.
    display: String,
    /// The error's `Display`, its `Debug` and the `Display` of every source, one per line.
    text: String,
    /// Every log event and span field the library emitted during the attempt.
    logs: String,
    elapsed: Duration,
}

impl Failure {
    fn kind(&self, expected: ErrorKind) -> Outcome {
        ensure!(
            self.kind == expected,
            "expected a {expected:?} error, got {:?}: {}",
            self.kind,
            self.text
        );
        Ok(())
    }

    /// The error mentions one of `fragments` (ignoring case); the last check of a case.
    fn mentions(&self, fragments: &[&str]) -> ClientOutcome {
        let text = self.text.to_lowercase();
        ensure!(
            fragments.iter().any(|f| text.contains(&f.to_lowercase())),
            "the error mentions none of {fragments:?}: {}",
            self.text
        );
        Ok(self.seen())
    }

    /// What the client saw, for the log.
    fn seen(&self) -> String {
        format!(
            "{:?} error after {:.1?}: {}",
            self.kind, self.elapsed, self.display
        )
    }
}

/// Parses `conninfo`, lets `adjust` change the Config, connects; the attempt must fail.
async fn connect_err(conninfo: &str, adjust: impl FnOnce(&mut Config)) -> Result<Failure, String> {
    let logs = LogCapture::default();
    let started = Instant::now();
    let result = async {
        let mut config = Config::parse(conninfo)?;
        adjust(&mut config);
        Client::connect(&config).await
    }
    .with_subscriber(logs.clone())
    .await;
    let elapsed = started.elapsed();
    match result {
        Ok(client) => {
            let _ = client.close().await;
            Err(format!("the connection succeeded after {elapsed:?}"))
        }
        Err(e) => Ok(Failure {
            kind: e.kind(),
            display: e.to_string(),
            text: error_text(&e),
            logs: logs.text(),
            elapsed,
        }),
    }
}

async fn connect_ok(conninfo: &str) -> Result<Client, String> {
    let config = Config::parse(conninfo).map_err(|e| format!("parse: {e}"))?;
    Client::connect(&config)
        .await
        .map_err(|e| format!("connect: {}", error_text(&e)))
}

/// `SELECT 1` returns one row holding `1`; then the client closes (sending Terminate).
async fn select_one_and_close(client: Client) -> ClientOutcome {
    let messages = client
        .simple_query("SELECT 1")
        .await
        .map_err(|e| format!("SELECT 1: {e}"))?;
    let values: Vec<Option<String>> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_string)),
            _ => None,
        })
        .collect();
    ensure!(
        values == [Some("1".to_string())],
        "SELECT 1 returned {values:?}"
    );
    client.close().await.map_err(|e| format!("close: {e}"))?;
    Ok("connected; SELECT 1 returned 1".to_string())
}

fn error_text(e: &Error) -> String {
    let mut text = format!("{e}\n{e:?}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let _ = write!(text, "\n{s}");
        source = s.source();
    }
    text
}

/// A tracing subscriber that writes every event and span field into a string. It stands in for whatever
/// log collector an application uses: anything the library logs, a collector would show.
#[derive(Clone, Default)]
struct LogCapture {
    text: Arc<Mutex<String>>,
    next_span: Arc<AtomicU64>,
}

impl LogCapture {
    fn text(&self) -> String {
        self.text
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn append(&self, metadata: &Metadata<'_>, record: impl FnOnce(&mut dyn Visit)) {
        let mut text = self.text.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = write!(text, "{} {}:", metadata.level(), metadata.target());
        record(&mut FieldWriter(&mut text));
        text.push('\n');
    }
}

struct FieldWriter<'a>(&'a mut String);

impl Visit for FieldWriter<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, " {}={value}", field.name());
    }

    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        let _ = write!(
            self.0,
            " {}={}",
            field.name(),
            String::from_utf8_lossy(value)
        );
    }
}

impl Subscriber for LogCapture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }

    fn new_span(&self, span: &span::Attributes<'_>) -> span::Id {
        self.append(span.metadata(), |visit| span.record(visit));
        span::Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn record(&self, _: &span::Id, values: &span::Record<'_>) {
        let mut text = self.text.lock().unwrap_or_else(PoisonError::into_inner);
        text.push_str("span record:");
        values.record(&mut FieldWriter(&mut text));
        text.push('\n');
    }

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        self.append(event.metadata(), |visit| event.record(visit));
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

// ---------------------------------------------------------------------------------------------------------
// Server-side helpers (native only).
// ---------------------------------------------------------------------------------------------------------

/// After the StartupMessage: a trust login, then `SELECT 1` answered with one row, then Terminate.
#[cfg(not(target_os = "wasi"))]
fn serve_select_one(script: Script) -> Script {
    script
        .send(&[backend::authentication_ok(), backend::startup_complete()].concat())
        .expect(b'Q')
        .send(&backend::one_row_result("?column?", 23, "1"))
        .expect(b'X')
        .expect_eof()
}

/// Refuses TLS with `N`, then asks for a cleartext password.
#[cfg(not(target_os = "wasi"))]
fn cleartext_after_n() -> Script {
    Script::new()
        .expect_ssl_request()
        .send(b"N")
        .expect_startup()
        .send(&backend::authentication_cleartext_password())
        .expect_eof()
}

#[cfg(not(target_os = "wasi"))]
fn check_select_one(connection: &Transcript) -> Outcome {
    let query = connection.messages(b'Q').next();
    ensure!(
        query == Some(&b"SELECT 1\0"[..]),
        "the query was {:?}",
        query.map(String::from_utf8_lossy)
    );
    let user = connection
        .startup_params()
        .and_then(|params| params.iter().find(|(k, _)| k == "user"));
    ensure!(
        user.is_some_and(|(_, v)| v == "alice"),
        "startup user: {user:?}"
    );
    Ok(())
}

#[cfg(not(target_os = "wasi"))]
fn first_connection(connections: &[Transcript]) -> Result<&Transcript, String> {
    connections
        .first()
        .ok_or_else(|| "the client never connected to the fake server".to_string())
}

#[cfg(not(target_os = "wasi"))]
fn only_connection(connections: &[Transcript]) -> Result<&Transcript, String> {
    let first = first_connection(connections)?;
    ensure!(
        connections.len() == 1,
        "{} connections; the second: {}",
        connections.len(),
        connections[1].summary()
    );
    Ok(first)
}

/// No connection carried a PasswordMessage (or any SASL message), or the password in any form.
#[cfg(not(target_os = "wasi"))]
fn no_password_sent(connections: &[Transcript]) -> Outcome {
    for connection in connections {
        ensure!(
            !connection.has_message(b'p'),
            "a password message was sent: {}",
            connection.summary()
        );
        ensure!(
            !connection.received_contains(PASSWORD.as_bytes()),
            "the password was sent: {}",
            connection.summary()
        );
    }
    Ok(())
}

/// Connections may have been opened, but not a byte was sent on them.
#[cfg(not(target_os = "wasi"))]
fn nothing_sent(connections: &[Transcript]) -> Outcome {
    for connection in connections {
        ensure!(
            connection.wire.is_empty(),
            "the client sent {} bytes: {}",
            connection.wire.len(),
            connection.summary()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// The two harnesses.
// ---------------------------------------------------------------------------------------------------------

/// The environment variables that carry the fake servers' ports and the CA file to the guest.
const ENV_PORTS: &str = "ATTACKS_PORTS";
const ENV_CA_FILE: &str = "ATTACKS_CA_FILE";

#[cfg(not(target_os = "wasi"))]
fn main() {
    // `run` returns before the exit, so the certificates' temp dir is deleted either way.
    if let Some(totals) = run() {
        totals.finish("attack");
    }
}

/// Runs every case natively, then under wasmtime (WASI 0.2, then 0.3), each against a fresh fake server; `None` for
/// `ATTACKS_SERVE`.
#[cfg(not(target_os = "wasi"))]
fn run() -> Option<two_target::Totals> {
    use two_target::{Guest, Tally, Totals};

    let certs = FakeCerts::generate();
    let cases = all_cases();
    if let Ok(name) = std::env::var("ATTACKS_SERVE") {
        serve_one(&cases, &certs, &name);
        return None;
    }

    let mut native = Tally::native();
    let runtime = two_target::native_runtime();
    let servers = start_servers(&cases, &certs);
    let ca_file = certs.ca_file().display().to_string();
    let client_outcomes: Vec<ClientOutcome> = cases
        .iter()
        .zip(&servers)
        .map(|(case, server)| {
            let target = Target {
                port: server.port(),
                ca_file: ca_file.clone(),
            };
            runtime.block_on((case.client)(&target))
        })
        .collect();
    record(&mut native, &cases, servers, client_outcomes);
    native.end();

    // The same cases in each guest build (WASI 0.2, then 0.3), against fresh fake servers.
    let run_guest = |guest: Guest| {
        let mut tally = Tally::for_guest(&guest);
        let servers = start_servers(&cases, &certs);
        let ports = two_target::port_list(
            cases
                .iter()
                .zip(&servers)
                .map(|(case, server)| (case.name, server.port())),
        );
        let run = guest.run(
            &[(ENV_PORTS, &ports), (ENV_CA_FILE, "/certs/ca.crt")],
            &[(certs.dir(), "/certs")],
        );
        let client_outcomes: Vec<ClientOutcome> =
            cases.iter().map(|case| run.outcome(case.name)).collect();
        record(&mut tally, &cases, servers, client_outcomes);
        tally.record_exit(&run);
        tally.end();
        tally
    };
    let wasm = run_guest(Guest::build());
    let wasi_p3 = run_guest(Guest::build_p3());
    Some(Totals {
        native,
        wasm,
        wasi_p3,
        notes: Vec::new(),
    })
}

/// `ATTACKS_SERVE=<case>`: runs only that case's fake server until stdin closes, for pointing another client
/// (such as libpq's psql) at it, then prints what each connection did and the case's server-side check.
#[cfg(not(target_os = "wasi"))]
fn serve_one(cases: &[Case], certs: &FakeCerts, name: &str) {
    let Some(case) = cases.iter().find(|case| case.name == name) else {
        let names: Vec<&str> = cases.iter().map(|case| case.name).collect();
        panic!("no case {name:?}; the cases are {}", names.join(", "));
    };
    let server = FakeServer::start((case.script)(certs));
    println!(
        "{name}: listening on host=127.0.0.1 port={} (sslrootcert={}); close stdin to stop",
        server.port(),
        certs.ca_file().display()
    );
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    let transcripts = server.finish();
    for (n, transcript) in transcripts.iter().enumerate() {
        println!("connection {}: {}", n + 1, transcript.summary());
    }
    println!("server-side check: {:?}", (case.check)(&transcripts));
}

#[cfg(not(target_os = "wasi"))]
fn start_servers(cases: &[Case], certs: &FakeCerts) -> Vec<FakeServer> {
    cases
        .iter()
        .map(|case| FakeServer::start((case.script)(certs)))
        .collect()
}

/// Checks every case's transcripts against its client outcome and records the two as one outcome.
#[cfg(not(target_os = "wasi"))]
fn record(
    tally: &mut two_target::Tally,
    cases: &[Case],
    servers: Vec<FakeServer>,
    client_outcomes: Vec<ClientOutcome>,
) {
    for ((case, server), client) in cases.iter().zip(servers).zip(client_outcomes) {
        let transcripts = server.finish();
        let outcome = match (client, (case.check)(&transcripts)) {
            (Ok(seen), Ok(())) => Ok(seen),
            (client, server) => {
                let mut why = Vec::new();
                if let Err(e) = client {
                    why.push(format!("client: {e}"));
                }
                if let Err(e) = server {
                    why.push(format!("server: {e}"));
                }
                Err(why.join("; "))
            }
        };
        tally.record(case.name, outcome);
    }
}

/// Runs every case's client half against the ports the host passed and prints an outcome line for each.
#[cfg(target_os = "wasi")]
fn main() {
    let ports = two_target::guest_var(ENV_PORTS);
    let ca_file = two_target::guest_var(ENV_CA_FILE);
    for case in all_cases() {
        let port = two_target::port_in(&ports, case.name);
        let ca_file = ca_file.clone();
        two_target::run_in_guest(case.name, async move {
            let port = port.ok_or_else(|| format!("no port for {} in {ENV_PORTS}", case.name))?;
            (case.client)(&Target { port, ca_file }).await
        });
    }
}
