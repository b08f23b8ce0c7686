//! OAuth (SASL OAUTHBEARER, PostgreSQL 18) against scripted servers, since the PostgreSQL the live tests run
//! has no OAuth validator. The servers speak as PostgreSQL 18 does: an empty `auth=` (discovery) gets the JSON
//! error object, the client's lone 0x01, then a FATAL ErrorResponse; a token the server takes gets
//! AuthenticationOk. Each case says what may cross the wire, and the checks read it off the transcripts.

use std::sync::atomic::AtomicUsize;

use wasi_pg_client::config::OAuthRequest;

use super::*;

/// The token the application's hook hands out; it may only ever reach a server over TLS, in a token response.
const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.oauth-attack-token.c2ln";
const ISSUER: &str = "https://issuer.example";
const DISCOVERY: &str = "https://issuer.example/.well-known/openid-configuration";
const SCOPE: &str = "openid postgres";
/// `oauth_client_secret`: handed to the hook, never sent to the server nor shown.
const CLIENT_SECRET: &str = "client-secret-7d1e";

/// The OAuth settings every case uses, over verified TLS unless `extra` says otherwise.
fn oauth_conninfo(target: &Target, extra: &str) -> String {
    target.conninfo(&format!(
        "oauth_issuer={ISSUER} oauth_client_id=app oauth_client_secret={CLIENT_SECRET} {extra}"
    ))
}

fn tls_conninfo(target: &Target) -> String {
    oauth_conninfo(
        target,
        &format!("sslmode=verify-full sslrootcert={}", target.ca_file),
    )
}

/// A hook that checks the request it gets, counts its calls, and answers `answer`.
fn install_hook(
    config: &mut Config,
    calls: &Arc<AtomicUsize>,
    answer: Result<&'static str, &'static str>,
) {
    let calls = Arc::clone(calls);
    config.oauth_bearer_token(move |request: OAuthRequest| {
        calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let expected = (
                ISSUER,
                DISCOVERY,
                Some(SCOPE),
                Some("app"),
                Some(CLIENT_SECRET),
            );
            let got = (
                request.issuer(),
                request.openid_configuration(),
                request.scope(),
                request.client_id(),
                request.client_secret(),
            );
            if got != expected {
                return Err(format!("the hook got {got:?}, expected {expected:?}").into());
            }
            if format!("{request:?}").contains(CLIENT_SECRET) {
                return Err("OAuthRequest's Debug shows the client secret".into());
            }
            answer.map(str::to_string).map_err(Into::into)
        })
    });
}

fn hook_calls(calls: &AtomicUsize, expected: usize) -> Outcome {
    let n = calls.load(Ordering::SeqCst);
    ensure!(n == expected, "the hook ran {n} times, expected {expected}");
    Ok(())
}

/// Connects to `conninfo` with a hook that answers `answer`; the connection must fail with an `Auth` error
/// after the hook ran `calls` times.
async fn refused_with_hook(
    conninfo: &str,
    answer: Result<&'static str, &'static str>,
    calls: usize,
) -> Result<Failure, String> {
    let ran = Arc::new(AtomicUsize::new(0));
    let failure = connect_err(conninfo, |config| install_hook(config, &ran, answer)).await?;
    hook_calls(&ran, calls)?;
    failure.kind(ErrorKind::Auth)?;
    Ok(failure)
}

/// The error object a PostgreSQL 18 server sends to refuse an OAUTHBEARER response.
#[cfg(not(target_os = "wasi"))]
fn error_object(discovery: &str) -> Vec<u8> {
    let json = format!(
        r#"{{"status":"invalid_token","scope":"{SCOPE}","openid-configuration":"{discovery}"}}"#
    );
    backend::authentication_sasl_continue(json.as_bytes())
}

/// The data of a SASLInitialResponse body: mechanism, then the length-prefixed response.
#[cfg(not(target_os = "wasi"))]
fn initial_response(body: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let end = body
        .iter()
        .position(|&b| b == 0)
        .ok_or("no mechanism name")?;
    let data = body.get(end + 5..).ok_or("no response length")?;
    Ok((&body[..end], data))
}

/// A TLS server that offers only OAUTHBEARER. To the empty discovery response it answers as PostgreSQL does
/// (error object naming `discovery`, then FATAL); a token response gets AuthenticationOk and `SELECT 1` if
/// `accept`, else the same refusal.
#[cfg(not(target_os = "wasi"))]
fn oauth_server(certs: &FakeCerts, discovery: &'static str, accept: bool) -> Script {
    let tls = certs.server_config(&[support::fake_server::ALPN_POSTGRESQL]);
    Script::new()
        .expect_ssl_request()
        .send(b"S")
        .start_tls(tls)
        .expect_startup()
        .send(&backend::authentication_sasl(&["OAUTHBEARER"]))
        .run("the OAUTHBEARER exchange", move |session| {
            let body = session.expect(b'p')?;
            let (mechanism, data) = initial_response(&body)?;
            if mechanism != b"OAUTHBEARER" {
                return Err(format!(
                    "mechanism {:?}",
                    String::from_utf8_lossy(mechanism)
                ));
            }
            if accept && data.starts_with(b"n,,\x01auth=Bearer ") {
                session
                    .send(&[backend::authentication_ok(), backend::startup_complete()].concat())?;
                session.expect(b'Q')?;
                session.send(&backend::one_row_result("?column?", 23, "1"))?;
                session.expect(b'X')?;
                return session.expect_eof();
            }
            session.send(&error_object(discovery))?;
            let answer = session.expect(b'p')?;
            if answer != b"\x01" {
                return Err(format!("the answer to the error was {answer:?}, not 0x01"));
            }
            session.send(&backend::fatal(
                "28000",
                "OAuth bearer authentication failed for user \"alice\"",
            ))?;
            session.expect_eof()
        })
}

/// The OAUTHBEARER responses of a connection.
#[cfg(not(target_os = "wasi"))]
fn responses(connection: &Transcript) -> Vec<Vec<u8>> {
    connection
        .messages(b'p')
        .filter_map(|body| initial_response(body).ok().map(|(_, data)| data.to_vec()))
        .take(1)
        .collect()
}

/// Discovery went first, without the token, and the token went only over TLS.
#[cfg(not(target_os = "wasi"))]
fn discovery_then_token(connections: &[Transcript]) -> Outcome {
    ensure!(
        connections.len() == 2,
        "{} connections, expected discovery and one with the token",
        connections.len()
    );
    let (first, second) = (&connections[0], &connections[1]);
    ensure!(first.tls && second.tls, "OAuth ran without TLS");
    ensure!(
        responses(first) == [b"n,,\x01auth=\x01\x01".to_vec()],
        "discovery sent {:?}",
        responses(first)
    );
    ensure!(
        !first.received_contains(TOKEN.as_bytes()),
        "the token went out with discovery"
    );
    let token_response = format!("n,,\x01auth=Bearer {TOKEN}\x01\x01");
    ensure!(
        responses(second) == [token_response.into_bytes()],
        "the second connection sent {:?}",
        responses(second)
    );
    ensure!(
        !second
            .wire
            .windows(TOKEN.len())
            .any(|w| w == TOKEN.as_bytes()),
        "the token crossed the wire in plaintext"
    );
    for connection in connections {
        ensure!(
            !connection.received_contains(CLIENT_SECRET.as_bytes()),
            "the client secret was sent: {}",
            connection.summary()
        );
    }
    Ok(())
}

/// No connection carried any SASL response, so no token either.
#[cfg(not(target_os = "wasi"))]
fn no_token_sent(connections: &[Transcript]) -> Outcome {
    for connection in connections {
        ensure!(
            !connection.has_message(b'p'),
            "a SASL response was sent: {}",
            connection.summary()
        );
        ensure!(
            !connection.received_contains(TOKEN.as_bytes()),
            "the token was sent"
        );
    }
    Ok(())
}

/// Discovery, the hook, then a second connection with the token that the server accepts; `SELECT 1` works.
pub(super) mod oauth_discovery_then_token {
    use super::*;

    pub(in super::super) async fn client(target: &Target) -> ClientOutcome {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut config = Config::parse(&tls_conninfo(target)).map_err(|e| format!("parse: {e}"))?;
        install_hook(&mut config, &calls, Ok(TOKEN));
        let client = Client::connect(&config)
            .await
            .map_err(|e| format!("connect: {}", error_text(&e)))?;
        hook_calls(&calls, 1)?;
        select_one_and_close(client).await
    }

    #[cfg(not(target_os = "wasi"))]
    pub(in super::super) fn script(certs: &FakeCerts) -> Script {
        oauth_server(certs, DISCOVERY, true)
    }

    #[cfg(not(target_os = "wasi"))]
    pub(in super::super) fn check(connections: &[Transcript]) -> Outcome {
        discovery_then_token(connections)?;
        ensure!(
            connections.iter().all(|c| c.result.is_ok()),
            "{}",
            connections[1].summary()
        );
        check_select_one(&connections[1])
    }
}

/// The server refuses the token too: the error carries its status, scope and discovery document, never the
/// token, and there is no third connection.
pub(super) mod oauth_token_rejected {
    use super::*;

    pub(in super::super) async fn client(target: &Target) -> ClientOutcome {
        let failure = refused_with_hook(&tls_conninfo(target), Ok(TOKEN), 1).await?;
        for part in [
            "rejected the OAuth bearer token",
            "invalid_token",
            SCOPE,
            DISCOVERY,
        ] {
            ensure!(
                failure.text.contains(part),
                "no {part:?} in {}",
                failure.text
            );
        }
        ensure!(
            !failure.text.contains(TOKEN) && !failure.logs.contains(TOKEN),
            "the token was shown"
        );
        ensure!(
            !failure.text.contains(CLIENT_SECRET) && !failure.logs.contains(CLIENT_SECRET),
            "the client secret was shown"
        );
        Ok(failure.seen())
    }

    #[cfg(not(target_os = "wasi"))]
    pub(in super::super) fn script(certs: &FakeCerts) -> Script {
        oauth_server(certs, DISCOVERY, false)
    }

    #[cfg(not(target_os = "wasi"))]
    pub(in super::super) fn check(connections: &[Transcript]) -> Outcome {
        discovery_then_token(connections)
    }
}

/// The hook fails: its error is the connect's source, and no second connection is made.
pub(super) mod oauth_hook_error {
    use super::*;

    pub(in super::super) async fn client(target: &Target) -> ClientOutcome {
        let unreachable = Err("the identity provider is unreachable");
        let failure = refused_with_hook(&tls_conninfo(target), unreachable, 1).await?;
        ensure!(
            failure
                .text
                .contains("the identity provider is unreachable"),
            "{}",
            failure.text
        );
        failure.mentions(&["token hook failed"])
    }

    #[cfg(not(target_os = "wasi"))]
    pub(in super::super) fn script(certs: &FakeCerts) -> Script {
        oauth_server(certs, DISCOVERY, true)
    }

    #[cfg(not(target_os = "wasi"))]
    pub(in super::super) fn check(connections: &[Transcript]) -> Outcome {
        let first = only_connection(connections)?;
        ensure!(first.result.is_ok(), "{}", first.summary());
        ensure!(
            responses(first) == [b"n,,\x01auth=\x01\x01".to_vec()],
            "{}",
            first.summary()
        );
        Ok(())
    }
}

/// The server names a discovery document of another issuer: refused before the hook runs (a server must not
/// send the application to an authorization server it did not choose).
pub(super) mod oauth_issuer_mismatch {
    use super::*;

    pub(in super::super) async fn client(target: &Target) -> ClientOutcome {
        let failure = refused_with_hook(&tls_conninfo(target), Ok(TOKEN), 0).await?;
        failure.mentions(&["incompatible with oauth_issuer"])
    }

    #[cfg(not(target_os = "wasi"))]
    pub(in super::super) fn script(certs: &FakeCerts) -> Script {
        oauth_server(
            certs,
            "https://attacker.example/.well-known/openid-configuration",
            true,
        )
    }

    /// The client stops at the error object: it never answers it, and opens no second connection.
    #[cfg(not(target_os = "wasi"))]
    pub(in super::super) fn check(connections: &[Transcript]) -> Outcome {
        let first = only_connection(connections)?;
        ensure!(
            first.messages(b'p').count() == 1,
            "the client answered the error object: {}",
            first.summary()
        );
        no_token_in(connections)
    }
}

/// A server asks for OAuth over plaintext (sslmode=prefer, answered `N`): refused before anything is sent and
/// before the hook runs.
pub(super) mod oauth_over_plaintext {
    use super::*;

    pub(in super::super) async fn client(target: &Target) -> ClientOutcome {
        let plaintext = oauth_conninfo(target, "sslmode=prefer");
        let failure = refused_with_hook(&plaintext, Ok(TOKEN), 0).await?;
        failure.mentions(&["without TLS"])
    }

    #[cfg(not(target_os = "wasi"))]
    pub(in super::super) fn script(_: &FakeCerts) -> Script {
        Script::new()
            .expect_ssl_request()
            .send(b"N")
            .expect_startup()
            .send(&backend::authentication_sasl(&["OAUTHBEARER"]))
            .expect_eof()
    }

    #[cfg(not(target_os = "wasi"))]
    pub(in super::super) fn check(connections: &[Transcript]) -> Outcome {
        let first = only_connection(connections)?;
        ensure!(first.result.is_ok(), "{}", first.summary());
        no_token_sent(connections)
    }
}

/// A server offers only OAUTHBEARER and the application set no hook: a clear error that says how to give a
/// token, with nothing sent.
pub(super) mod oauth_without_hook {
    use super::*;

    pub(in super::super) async fn client(target: &Target) -> ClientOutcome {
        let failure = connect_err(&tls_conninfo(target), |_| {}).await?;
        failure.kind(ErrorKind::Auth)?;
        failure.mentions(&["Config::oauth_bearer_token"])
    }

    #[cfg(not(target_os = "wasi"))]
    pub(in super::super) fn script(certs: &FakeCerts) -> Script {
        let tls = certs.server_config(&[support::fake_server::ALPN_POSTGRESQL]);
        Script::new()
            .expect_ssl_request()
            .send(b"S")
            .start_tls(tls)
            .expect_startup()
            .send(&backend::authentication_sasl(&["OAUTHBEARER"]))
            .expect_eof()
    }

    #[cfg(not(target_os = "wasi"))]
    pub(in super::super) fn check(connections: &[Transcript]) -> Outcome {
        let first = only_connection(connections)?;
        ensure!(first.result.is_ok(), "{}", first.summary());
        no_token_sent(connections)
    }
}

/// The token appears in no connection.
#[cfg(not(target_os = "wasi"))]
fn no_token_in(connections: &[Transcript]) -> Outcome {
    for connection in connections {
        ensure!(
            !connection.received_contains(TOKEN.as_bytes()),
            "the token was sent"
        );
    }
    Ok(())
}
