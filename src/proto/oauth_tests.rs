//! OAUTHBEARER through the startup machine, bytes in and bytes out: the token and discovery exchanges as
//! PostgreSQL 18 runs them, the server's error object reported, and every odd answer refused without a panic
//! and without sending anything more.

use super::*;
use crate::config::{ChannelBinding, ProtocolVersion, RequireAuth};
use crate::proto::scripted::{authentication, fatal, message, parameter_status, ready, sasl_offer};
use crate::proto::{ChannelBindingPolicy, Limits, Protocol, StartupParams};
use crate::{ErrorClass, ErrorKind};

const ISSUER: &str = "https://issuer.example";
const DISCOVERY: &str = "https://issuer.example/.well-known/openid-configuration";
const TOKEN: &str = "eyJhbGciOi.token-42_~+/=";

fn params(token: Option<&str>) -> OAuthParams {
    OAuthParams {
        token: token.map(|t| BearerToken::new(t.to_string()).unwrap()),
        issuer: Some(ISSUER.to_string()),
        hook: true,
        protected: true,
        known_discovery: None,
    }
}

fn protocol_with(oauth: OAuthParams, require_auth: &str, mode: ChannelBinding) -> Protocol {
    let startup = StartupParams {
        params: vec![
            ("user".to_string(), "alice".to_string()),
            ("database".to_string(), "db".to_string()),
        ],
        password: Some(b"secret".to_vec()),
        scram_keys: None,
        require_auth: RequireAuth::parse(require_auth).unwrap(),
        channel_binding: ChannelBindingPolicy {
            mode,
            tls: Some(Ok(vec![7; 32])),
        },
        scram_max_iterations: 4096,
        min_protocol_version: ProtocolVersion::V3_0,
        max_protocol_version: ProtocolVersion::V3_0,
        oauth,
    };
    let mut p = Protocol::new(
        startup,
        Limits {
            max_message_size: 1 << 20,
        },
    )
    .unwrap();
    drain(&mut p);
    p
}

fn protocol(oauth: OAuthParams) -> Protocol {
    protocol_with(oauth, "", ChannelBinding::Prefer)
}

fn drain(p: &mut Protocol) -> Vec<u8> {
    let out = p.poll_transmit().to_vec();
    p.advance_transmit(out.len());
    out
}

/// Offers OAUTHBEARER and returns the client's SASLInitialResponse: mechanism and data.
fn offer(p: &mut Protocol) -> (String, Vec<u8>) {
    p.handle_input(&sasl_offer(&["OAUTHBEARER"]));
    assert!(!p.poll_startup().unwrap());
    initial_response(&drain(p))
}

fn initial_response(sent: &[u8]) -> (String, Vec<u8>) {
    assert_eq!(sent.first(), Some(&b'p'), "{sent:?}");
    let body = &sent[5..];
    let end = body.iter().position(|&b| b == 0).unwrap();
    let len = i32::from_be_bytes(body[end + 1..end + 5].try_into().unwrap());
    let data = body[end + 5..].to_vec();
    assert_eq!(usize::try_from(len).unwrap(), data.len());
    (String::from_utf8(body[..end].to_vec()).unwrap(), data)
}

fn challenge(json: &str) -> Vec<u8> {
    authentication(11, json.as_bytes())
}

fn error_json(status: &str, scope: Option<&str>, discovery: Option<&str>) -> String {
    let mut json = format!(r#"{{"status":"{status}""#);
    if let Some(scope) = scope {
        json.push_str(&format!(r#","scope":"{scope}""#));
    }
    if let Some(uri) = discovery {
        json.push_str(&format!(r#","openid-configuration":"{uri}""#));
    }
    json.push('}');
    json
}

/// Feeds `input` and expects the startup to fail without sending anything more.
fn refused(p: &mut Protocol, input: &[u8]) -> Error {
    p.handle_input(input);
    let err = p.poll_startup().unwrap_err();
    assert!(drain(p).is_empty(), "sent something after {err}");
    assert!(err.is_connection_broken(), "{err}");
    assert!(!format!("{err} {err:?}").contains("token-42"), "{err:?}");
    err
}

fn finish(p: &mut Protocol) {
    p.handle_input(
        &[
            authentication(0, &[]),
            parameter_status("server_version", "18.0"),
            ready(),
        ]
        .concat(),
    );
    assert!(p.poll_startup().unwrap());
}

#[test]
fn a_token_is_presented_and_accepted() {
    let mut p = protocol(params(Some(TOKEN)));
    let (mechanism, data) = offer(&mut p);
    assert_eq!(mechanism, "OAUTHBEARER");
    assert_eq!(
        data,
        format!("n,,\x01auth=Bearer {TOKEN}\x01\x01").into_bytes()
    );
    finish(&mut p);
    assert_eq!(p.take_oauth_discovery(), None);
}

#[test]
fn discovery_sends_an_empty_auth_and_keeps_what_the_server_advertised() {
    let mut p = protocol(params(None));
    let (_, data) = offer(&mut p);
    assert_eq!(data, b"n,,\x01auth=\x01\x01");
    p.handle_input(&challenge(&error_json(
        "invalid_token",
        Some("openid db"),
        Some(DISCOVERY),
    )));
    assert!(!p.poll_startup().unwrap());
    // RFC 7628 section 3.2.3: the client answers an error with a lone 0x01.
    assert_eq!(drain(&mut p), message(b'p', b"\x01"));
    let err = refused(
        &mut p,
        &fatal(
            "28000",
            "OAuth bearer authentication failed for user \"alice\"",
        ),
    );
    assert_eq!(err.kind(), ErrorKind::Auth);
    let text = err.to_string();
    for part in [
        "requires an OAuth bearer token",
        "invalid_token",
        "openid db",
        DISCOVERY,
        "failed for user",
    ] {
        assert!(text.contains(part), "{part}: {text}");
    }
    assert!(std::error::Error::source(&err).is_some_and(|s| s.is::<crate::DbError>()));
    assert_eq!(
        p.take_oauth_discovery(),
        Some(OAuthDiscovery {
            openid_configuration: DISCOVERY.to_string(),
            scope: Some("openid db".to_string()),
        })
    );
}

#[test]
fn a_rejected_token_is_reported_with_the_servers_json() {
    let mut p = protocol(params(Some(TOKEN)));
    offer(&mut p);
    p.handle_input(&challenge(&error_json(
        "invalid_token",
        Some("db:read"),
        Some(DISCOVERY),
    )));
    assert!(!p.poll_startup().unwrap());
    assert_eq!(drain(&mut p), message(b'p', b"\x01"));
    let err = refused(
        &mut p,
        &fatal("28000", "OAuth bearer authentication failed"),
    );
    assert_eq!(err.kind(), ErrorKind::Auth);
    assert_eq!(err.class(), ErrorClass::ConnectionBroken);
    let text = err.to_string();
    for part in [
        "rejected the OAuth bearer token",
        "\"invalid_token\"",
        "db:read",
        DISCOVERY,
    ] {
        assert!(text.contains(part), "{part}: {text}");
    }
    assert_eq!(
        p.take_oauth_discovery(),
        None,
        "no second try after a token"
    );
}

#[test]
fn discovery_needs_invalid_token_and_a_discovery_document() {
    let mut p = protocol(params(None));
    offer(&mut p);
    p.handle_input(&challenge(&error_json(
        "insufficient_scope",
        None,
        Some(DISCOVERY),
    )));
    assert!(!p.poll_startup().unwrap());
    drain(&mut p);
    let err = refused(&mut p, &fatal("28000", "no"));
    assert!(
        err.to_string()
            .contains("refused OAuth discovery (status \"insufficient_scope\""),
        "{err}"
    );
    assert_eq!(p.take_oauth_discovery(), None);

    let mut p = protocol(params(None));
    offer(&mut p);
    p.handle_input(&challenge(&error_json("invalid_token", Some("x"), None)));
    assert!(!p.poll_startup().unwrap());
    drain(&mut p);
    let err = refused(&mut p, &fatal("28000", "no"));
    assert!(
        err.to_string().contains("named no discovery document"),
        "{err}"
    );
    assert_eq!(p.take_oauth_discovery(), None);

    // oauth_issuer given as the discovery document stands in for one the server does not name.
    let mut oauth = params(None);
    oauth.issuer = Some(DISCOVERY.to_string());
    let mut p = protocol(oauth);
    offer(&mut p);
    p.handle_input(&challenge(&error_json("invalid_token", None, None)));
    assert!(!p.poll_startup().unwrap());
    drain(&mut p);
    refused(&mut p, &fatal("28000", "no"));
    assert_eq!(
        p.take_oauth_discovery().map(|d| d.openid_configuration),
        Some(DISCOVERY.to_string())
    );
}

#[test]
fn the_servers_issuer_must_be_oauth_issuer() {
    for (uri, why) in [
        (
            "https://evil.example/.well-known/openid-configuration",
            "incompatible with oauth_issuer",
        ),
        (
            "https://issuer.example.evil/.well-known/openid-configuration",
            "incompatible with oauth_issuer",
        ),
        (
            "http://issuer.example/.well-known/openid-configuration",
            "must use HTTPS",
        ),
        (
            "https://issuer.example/.well-known/openid-configuration?x",
            "query",
        ),
        (
            "https://issuer.example/openid-configuration",
            "not a .well-known URI",
        ),
    ] {
        let mut p = protocol(params(None));
        offer(&mut p);
        let err = refused(
            &mut p,
            &challenge(&error_json("invalid_token", None, Some(uri))),
        );
        assert_eq!(err.kind(), ErrorKind::Auth, "{uri}");
        assert!(err.to_string().contains(why), "{uri}: {err}");
        assert_eq!(p.take_oauth_discovery(), None);
    }
    // The second connection's server must name the document the first one named.
    let mut oauth = params(Some(TOKEN));
    oauth.known_discovery = Some(DISCOVERY.to_string());
    let mut p = protocol(oauth);
    offer(&mut p);
    let moved = "https://issuer.example/.well-known/oauth-authorization-server";
    let err = refused(
        &mut p,
        &challenge(&error_json("invalid_token", None, Some(moved))),
    );
    assert!(err.to_string().contains("has moved"), "{err}");
}

#[test]
fn odd_server_answers_are_protocol_errors() {
    let too_long = format!(
        r#"{{"status":"invalid_token","pad":"{}"}}"#,
        "x".repeat(MAX_SERVER_ERROR_LEN)
    );
    for (input, why) in [
        (authentication(12, b""), "AuthenticationSASLFinal"),
        (authentication(12, b"v=abc"), "AuthenticationSASLFinal"),
        (challenge("not json"), "invalid OAUTHBEARER error"),
        (challenge(r#"{"scope":"a"}"#), "without a status"),
        (challenge(r#"{"status":"a","status":"b"}"#), "duplicated"),
        (challenge(&too_long), "above the limit"),
        (challenge(""), "invalid OAUTHBEARER error"),
        (authentication(10, b"OAUTHBEARER\0\0"), "unexpected"),
    ] {
        let mut p = protocol(params(Some(TOKEN)));
        offer(&mut p);
        let err = refused(&mut p, &input);
        assert_eq!(err.kind(), ErrorKind::Protocol, "{why}: {err}");
        assert!(err.to_string().contains(why), "{why}: {err}");
    }
    // After its error, the server may only end the connection.
    for input in [
        authentication(0, &[]),
        challenge(r#"{"status":"x"}"#),
        authentication(12, b""),
    ] {
        let mut p = protocol(params(Some(TOKEN)));
        offer(&mut p);
        p.handle_input(&challenge(&error_json("invalid_token", None, None)));
        assert!(!p.poll_startup().unwrap());
        drain(&mut p);
        let err = refused(&mut p, &input);
        assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
        assert!(
            err.to_string().contains("refused OAUTHBEARER exchange"),
            "{err}"
        );
    }
}

#[test]
fn oauth_runs_only_when_it_can_keep_the_token_safe() {
    let no_hook = OAuthParams {
        hook: false,
        ..params(None)
    };
    let no_issuer = OAuthParams {
        issuer: None,
        ..params(Some(TOKEN))
    };
    let plaintext = OAuthParams {
        protected: false,
        ..params(Some(TOKEN))
    };
    for (oauth, why) in [
        (no_hook, "Config::oauth_bearer_token"),
        (no_issuer, "oauth_issuer is not set"),
        (plaintext, "without TLS"),
    ] {
        let mut p = protocol(oauth);
        let err = refused(&mut p, &sasl_offer(&["OAUTHBEARER"]));
        assert_eq!(err.kind(), ErrorKind::Auth, "{why}");
        assert!(err.to_string().contains(why), "{why}: {err}");
    }
    let mut oauth = params(None);
    oauth.issuer = Some("https://issuer.example/.well-known/webfinger".to_string());
    let err = refused(&mut protocol(oauth), &sasl_offer(&["OAUTHBEARER"]));
    assert!(err.to_string().contains("invalid oauth_issuer"), "{err}");
}

#[test]
fn require_auth_and_channel_binding_know_oauth() {
    assert_eq!(
        RequireAuth::parse("oauth").unwrap().methods(),
        [crate::config::AuthMethod::OAuth]
    );
    for (require_auth, mode) in [
        ("scram-sha-256", ChannelBinding::Prefer),
        ("!oauth", ChannelBinding::Prefer),
    ] {
        let mut p = protocol_with(params(Some(TOKEN)), require_auth, mode);
        let err = refused(&mut p, &sasl_offer(&["OAUTHBEARER"]));
        assert!(
            err.to_string()
                .contains("oauth authentication, which require_auth"),
            "{err}"
        );
    }
    let mut p = protocol_with(params(Some(TOKEN)), "", ChannelBinding::Require);
    let err = refused(&mut p, &sasl_offer(&["OAUTHBEARER"]));
    assert!(err.to_string().contains("channel_binding=require"), "{err}");

    let mut p = protocol_with(params(Some(TOKEN)), "oauth", ChannelBinding::Prefer);
    offer(&mut p);
    finish(&mut p);
    let mut p = protocol_with(params(Some(TOKEN)), "oauth", ChannelBinding::Prefer);
    let err = refused(&mut p, &sasl_offer(&["SCRAM-SHA-256"]));
    assert!(err.to_string().contains("require_auth"), "{err}");
    // Discovery does not authenticate: a server that lets it in anyway fails require_auth=oauth.
    let mut p = protocol_with(params(None), "oauth", ChannelBinding::Prefer);
    offer(&mut p);
    let err = refused(&mut p, &authentication(0, &[]));
    assert!(err.to_string().contains("without a token"), "{err}");
}

#[test]
fn scram_wins_when_both_are_offered() {
    let mut p = protocol(params(Some(TOKEN)));
    p.handle_input(&sasl_offer(&["OAUTHBEARER", "SCRAM-SHA-256"]));
    assert!(!p.poll_startup().unwrap());
    let (mechanism, data) = initial_response(&drain(&mut p));
    assert_eq!(mechanism, "SCRAM-SHA-256");
    assert!(!data.windows(8).any(|w| w == b"token-42"));
}

#[test]
fn issuers_of_well_known_uris() {
    for (uri, issuer) in [
        (
            "https://example.com/.well-known/openid-configuration",
            "https://example.com",
        ),
        (
            "https://example.com/tenant/.well-known/openid-configuration",
            "https://example.com/tenant",
        ),
        (
            "https://example.com/.well-known/oauth-authorization-server/tenant",
            "https://example.com/tenant",
        ),
        (
            "HTTPS://example.com:8443/.well-known/oauth-authorization-server",
            "HTTPS://example.com:8443",
        ),
    ] {
        assert_eq!(
            issuer_from_well_known_uri(uri).as_deref(),
            Ok(issuer),
            "{uri}"
        );
    }
    for (uri, why) in [
        (
            "http://example.com/.well-known/openid-configuration",
            "HTTPS",
        ),
        (
            "https://example.com/.well-known/openid-configuration?x=1",
            "query",
        ),
        (
            "https://example.com/.well-known/openid-configuration#x",
            "fragment",
        ),
        (
            "https://example.com/openid-configuration",
            "not a .well-known",
        ),
        (
            "https://example.com/.well-known/openid-configuration-bad",
            "unsupported",
        ),
        ("https://example.com/.well-known/webfinger", "unsupported"),
        (
            "https://example.com/a/.well-known/openid-configuration/b",
            "invalid format",
        ),
        ("https:/", "HTTPS"),
        ("", "HTTPS"),
    ] {
        let err = issuer_from_well_known_uri(uri).unwrap_err();
        assert!(err.contains(why), "{uri}: {err}");
    }
}

#[test]
fn server_errors_parse_strictly() {
    let parsed = ServerError::parse(
        br#"{"status":"invalid_token","scope":"openid db","openid-configuration":"https://a/.well-known/openid-configuration","extra":[1,{"x":null}]}"#,
    )
    .unwrap();
    assert_eq!(parsed.status.as_deref(), Some("invalid_token"));
    assert_eq!(parsed.scope.as_deref(), Some("openid db"));
    assert_eq!(
        parsed.openid_configuration.as_deref(),
        Some("https://a/.well-known/openid-configuration")
    );
    for (data, why) in [
        (&br#"{"status":"a","status":"b"}"#[..], "duplicated"),
        (br#"{"status":1}"#, "must be a string"),
        (br#"{"scope":["a"]}"#, "must be a string"),
        (br#"["status"]"#, "JSON object"),
        (br#""status""#, "JSON object"),
        (br#"{"status":"a"} {}"#, "trailing"),
        (br#"{"status":"a""#, "EOF"),
        (b"{\"status\":\"\xff\"}", "UTF-8"),
        (b"{\"status\":\"a\"}\0", "NUL"),
        (b"", "EOF"),
    ] {
        let err = ServerError::parse(data).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Protocol, "{err}");
        assert!(err.to_string().contains(why), "{data:?}: {err}");
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let err = ServerError::parse(format!("{{\"x\":{deep}}}").as_bytes()).unwrap_err();
    assert!(err.to_string().contains("above the limit"), "{err}");
    // Ignored fields are skipped without recursion (serde_json keeps its own stack): the deepest nesting that
    // fits under the size limit costs no stack.
    let nested = format!(
        "{{\"status\":\"s\",\"x\":{}{}}}",
        "[".repeat(8000),
        "]".repeat(8000)
    );
    assert!(nested.len() <= MAX_SERVER_ERROR_LEN);
    let parsed = ServerError::parse(nested.as_bytes()).unwrap();
    assert_eq!(parsed.status.as_deref(), Some("s"));
    // A known field holding nested values is refused at once.
    let err =
        ServerError::parse(format!("{{\"scope\":{}", "[".repeat(8000)).as_bytes()).unwrap_err();
    assert!(err.to_string().contains("must be a string"), "{err}");
}

#[test]
fn tokens_must_be_b64token() {
    assert!(BearerToken::new("abc.DEF-123_~+/==".to_string()).is_ok());
    for bad in [
        "",
        "=",
        "secret token",
        "secret\u{1}token",
        "secret=token",
        "sécret",
    ] {
        let err = BearerToken::new(bad.to_string()).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Auth);
        if bad.len() > 1 {
            assert!(!err.to_string().contains(bad), "{err}");
        }
    }
    assert_eq!(
        format!(
            "{:?}",
            BearerToken::new("secret-token".to_string()).unwrap()
        ),
        "BearerToken(<redacted>)"
    );
}
