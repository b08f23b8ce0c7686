//! Transcript tests: backend bytes in, frontend bytes and responses out, no socket anywhere.
//!
//! Longer than 800 lines on purpose: one independent transcript per behaviour of the core (startup and each
//! authentication method, every response shape, each protocol violation), sharing one set of message builders.

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::message::backend::Message;

use super::*;
use crate::config::{ChannelBinding, RequireAuth};
use crate::{ErrorClass, ErrorKind};

const MAX: usize = 1 << 20;

/// Builds one backend message: tag, length, body.
fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(u32::try_from(body.len() + 4).unwrap()).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn auth(code: u32, extra: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(extra);
    msg(b'R', &body)
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn param_status(name: &str, value: &str) -> Vec<u8> {
    msg(b'S', &[cstr(name), cstr(value)].concat())
}

fn backend_key(pid: i32, key: i32) -> Vec<u8> {
    msg(b'K', &[pid.to_be_bytes(), key.to_be_bytes()].concat())
}

fn ready(status: u8) -> Vec<u8> {
    msg(b'Z', &[status])
}

fn row_description(names: &[&str]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_u16(names.len() as u16);
    for name in names {
        body.extend_from_slice(&cstr(name));
        body.put_u32(0); // table oid
        body.put_i16(0); // column id
        body.put_u32(25); // text
        body.put_i16(-1);
        body.put_i32(-1);
        body.put_i16(0);
    }
    msg(b'T', &body)
}

fn data_row(values: &[Option<&str>]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_u16(values.len() as u16);
    for value in values {
        match value {
            Some(v) => {
                body.put_i32(v.len() as i32);
                body.extend_from_slice(v.as_bytes());
            }
            None => body.put_i32(-1),
        }
    }
    msg(b'D', &body)
}

fn command_complete(tag: &str) -> Vec<u8> {
    msg(b'C', &cstr(tag))
}

fn error_response(severity: &str, code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (t, v) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(t);
        body.extend_from_slice(&cstr(v));
    }
    body.push(0);
    msg(b'E', &body)
}

fn startup_params(password: Option<&str>, require_auth: &str) -> StartupParams {
    StartupParams {
        params: vec![
            ("user".to_string(), "alice".to_string()),
            ("database".to_string(), "db".to_string()),
        ],
        password: password.map(|p| p.as_bytes().to_vec()),
        scram_keys: None,
        require_auth: if require_auth.is_empty() {
            RequireAuth::default()
        } else {
            RequireAuth::parse(require_auth).unwrap()
        },
        channel_binding: ChannelBindingPolicy {
            mode: ChannelBinding::Prefer,
            tls: None,
        },
        scram_max_iterations: 100_000,
        min_protocol_version: ProtocolVersion::V3_0,
        max_protocol_version: ProtocolVersion::V3_0,
        oauth: OAuthParams::default(),
    }
}

fn new_protocol(password: Option<&str>, require_auth: &str) -> Protocol {
    protocol_with(startup_params(password, require_auth))
}

fn protocol_with(params: StartupParams) -> Protocol {
    Protocol::new(
        params,
        Limits {
            max_message_size: MAX,
        },
    )
    .unwrap()
}

/// Takes everything the core wants to send.
fn drain(p: &mut Protocol) -> Vec<u8> {
    let out = p.poll_transmit().to_vec();
    p.advance_transmit(out.len());
    out
}

/// Splits frontend bytes into (tag, body) messages; the first message may be untagged (startup).
fn frontend_messages(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let tag = bytes[0];
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        out.push((tag, bytes[5..1 + len].to_vec()));
        bytes = &bytes[1 + len..];
    }
    out
}

fn finish_startup(p: &mut Protocol) {
    p.handle_input(
        &[
            param_status("server_version", "15.0"),
            backend_key(42, 7),
            ready(b'I'),
        ]
        .concat(),
    );
    assert!(p.poll_startup().unwrap());
}

fn ready_protocol() -> Protocol {
    let mut p = new_protocol(None, "");
    drain(&mut p);
    p.handle_input(&auth(0, &[]));
    finish_startup(&mut p);
    p
}

fn responses(p: &mut Protocol) -> Vec<Response> {
    let mut out = Vec::new();
    while let Some(r) = p.poll_response().unwrap() {
        out.push(r);
    }
    out
}

#[test]
fn startup_message_carries_parameters() {
    let mut p = new_protocol(None, "");
    let out = drain(&mut p);
    let len = u32::from_be_bytes(out[0..4].try_into().unwrap()) as usize;
    assert_eq!(len, out.len());
    assert_eq!(&out[4..8], &196608u32.to_be_bytes(), "protocol 3.0");
    assert_eq!(&out[8..], b"user\0alice\0database\0db\0\0");
}

#[test]
fn trust_startup_collects_parameters_and_key() {
    let mut p = new_protocol(None, "");
    drain(&mut p);
    p.handle_input(&auth(0, &[]));
    assert!(!p.poll_startup().unwrap(), "needs ReadyForQuery");
    finish_startup(&mut p);
    assert!(p.is_ready());
    assert_eq!(p.parameter("server_version"), Some("15.0"));
    assert_eq!(
        p.backend_key(),
        Some(&BackendKey {
            process_id: 42,
            secret_key: 7i32.to_be_bytes().into(),
        })
    );
    assert_eq!(p.transaction_status(), TransactionStatus::Idle);
}

#[test]
fn startup_survives_one_byte_at_a_time() {
    let mut p = new_protocol(None, "");
    drain(&mut p);
    let input = [
        auth(0, &[]),
        param_status("a", "b"),
        backend_key(1, 2),
        ready(b'I'),
    ]
    .concat();
    let mut done = false;
    for byte in input {
        p.handle_input(&[byte]);
        done = p.poll_startup().unwrap();
    }
    assert!(done);
}

#[test]
fn cleartext_password_is_sent_and_forgotten() {
    let mut p = new_protocol(Some("secret"), "");
    drain(&mut p);
    p.handle_input(&auth(3, &[]));
    assert!(!p.poll_startup().unwrap());
    let sent = frontend_messages(&drain(&mut p));
    assert_eq!(sent, vec![(b'p', b"secret\0".to_vec())]);
    p.handle_input(&auth(0, &[]));
    finish_startup(&mut p);
}

#[test]
fn md5_password_is_hashed_with_user_and_salt() {
    let mut p = new_protocol(Some("secret"), "");
    drain(&mut p);
    p.handle_input(&auth(5, &[1, 2, 3, 4]));
    p.poll_startup().unwrap();
    let sent = frontend_messages(&drain(&mut p));
    let expected = md5_hash(b"alice", b"secret", [1, 2, 3, 4]);
    assert_eq!(sent, vec![(b'p', cstr(&expected))]);
}

#[test]
fn scram_exchange_rejects_a_bad_server_nonce() {
    let mut p = new_protocol(Some("secret"), "");
    drain(&mut p);
    p.handle_input(&auth(10, &[cstr("SCRAM-SHA-256"), vec![0]].concat()));
    p.poll_startup().unwrap();
    let sent = frontend_messages(&drain(&mut p));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, b'p');
    assert!(sent[0].1.starts_with(b"SCRAM-SHA-256\0"));
    // A server-first message whose nonce does not extend ours must be refused.
    p.handle_input(&auth(11, b"r=forged,s=c2FsdA==,i=4096"));
    let err = p.poll_startup().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth);
    assert!(p.is_closed());
}

#[test]
fn scram_iteration_count_is_capped() {
    let mut p = new_protocol(Some("secret"), "");
    drain(&mut p);
    p.handle_input(&auth(10, &[cstr("SCRAM-SHA-256"), vec![0]].concat()));
    p.poll_startup().unwrap();
    let sent = frontend_messages(&drain(&mut p));
    // client-first is "n,,n=,r=<nonce>" after the mechanism name and a 4-byte length.
    let body = &sent[0].1[b"SCRAM-SHA-256\0".len() + 4..];
    let nonce = std::str::from_utf8(body)
        .unwrap()
        .split("r=")
        .nth(1)
        .unwrap()
        .to_string();
    let server_first = format!("r={nonce}server,s=c2FsdA==,i=100000000");
    p.handle_input(&auth(11, server_first.as_bytes()));
    assert_eq!(p.poll_startup().unwrap_err().kind(), ErrorKind::Auth);
}

#[test]
fn sasl_without_scram_is_refused() {
    let mut p = new_protocol(Some("secret"), "");
    drain(&mut p);
    p.handle_input(&auth(10, &[cstr("SCRAM-SHA-1"), vec![0]].concat()));
    let err = p.poll_startup().unwrap_err();
    assert!(err.to_string().contains("no SASL mechanism"), "{err}");
}

#[test]
fn missing_password_is_an_auth_error() {
    let mut p = new_protocol(None, "");
    drain(&mut p);
    p.handle_input(&auth(3, &[]));
    let err = p.poll_startup().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth);
    assert!(err.to_string().contains("none was given"));
}

#[test]
fn require_auth_refuses_methods_before_sending_anything() {
    for (require, server_code, extra) in [
        ("scram-sha-256", 3u32, vec![]),
        ("scram-sha-256", 5, vec![1, 2, 3, 4]),
        ("!password", 3, vec![]),
        ("md5", 10, [cstr("SCRAM-SHA-256"), vec![0]].concat()),
    ] {
        let mut p = new_protocol(Some("secret"), require);
        drain(&mut p);
        p.handle_input(&auth(server_code, &extra));
        let err = p.poll_startup().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Auth, "{require}");
        assert!(err.to_string().contains("require_auth"), "{err}");
        assert!(drain(&mut p).is_empty(), "{require}: no password may leave");
    }
}

#[test]
fn require_auth_refuses_trust_unless_none_is_allowed() {
    let mut p = new_protocol(Some("secret"), "md5");
    drain(&mut p);
    p.handle_input(&auth(0, &[]));
    assert_eq!(p.poll_startup().unwrap_err().kind(), ErrorKind::Auth);

    let mut p = new_protocol(Some("secret"), "md5,none");
    drain(&mut p);
    p.handle_input(&auth(0, &[]));
    finish_startup(&mut p);

    let mut p = new_protocol(Some("secret"), "!none");
    drain(&mut p);
    p.handle_input(&auth(0, &[]));
    assert_eq!(p.poll_startup().unwrap_err().kind(), ErrorKind::Auth);
}

#[test]
fn startup_error_response_is_fatal_with_sqlstate() {
    let mut p = new_protocol(Some("x"), "");
    drain(&mut p);
    p.handle_input(&error_response(
        "FATAL",
        "28P01",
        "password authentication failed for user \"alice\"",
    ));
    let err = p.poll_startup().unwrap_err();
    assert_eq!(err.code(), Some("28P01"));
    assert_eq!(err.class(), ErrorClass::ConnectionBroken);
    assert!(p.is_closed());
}

#[test]
fn eof_during_startup_is_an_error_not_a_hang() {
    let mut p = new_protocol(None, "");
    drain(&mut p);
    p.handle_input(&auth(0, &[])[..3]);
    p.handle_eof();
    assert_eq!(p.poll_startup().unwrap_err().kind(), ErrorKind::Io);
}

#[test]
fn simple_query_transcript() {
    let mut p = ready_protocol();
    let id = p
        .queue_request(Flow::Simple, None, |buf| {
            postgres_protocol::message::frontend::query("SELECT a, b FROM t", buf).unwrap();
            Ok(())
        })
        .unwrap();
    assert_eq!(
        frontend_messages(&drain(&mut p)),
        vec![(b'Q', cstr("SELECT a, b FROM t"))]
    );
    p.handle_input(
        &[
            row_description(&["a", "b"]),
            data_row(&[Some("1"), None]),
            data_row(&[Some("2"), Some("x")]),
            command_complete("SELECT 2"),
            ready(b'I'),
        ]
        .concat(),
    );
    let got = responses(&mut p);
    assert!(got.iter().all(|r| r.request == id));
    assert!(matches!(
        got[0].message,
        Backend::Message(Message::RowDescription(_))
    ));
    let Backend::Row(row) = &got[1].message else {
        panic!("row expected")
    };
    assert_eq!(row.field(0), Some(&b"1"[..]));
    assert_eq!(row.field(1), None);
    assert!(matches!(
        got[3].message,
        Backend::Message(Message::CommandComplete(_))
    ));
    assert!(matches!(got[4].message, Backend::Ready));
    assert_eq!(p.transaction_status(), TransactionStatus::Idle);
    assert!(!p.has_pending());
}

#[test]
fn query_error_recovers_at_ready_for_query() {
    let mut p = ready_protocol();
    let id = p
        .queue_request(Flow::Extended(1), None, |_| Ok(()))
        .unwrap();
    p.handle_input(
        &[
            error_response("ERROR", "42P01", "relation \"t\" does not exist"),
            ready(b'I'),
        ]
        .concat(),
    );
    let got = responses(&mut p);
    assert_eq!(got.len(), 2);
    assert!(matches!(&got[0].message, Backend::Error(db) if db.code() == "42P01"));
    assert!(!p.is_closed());
    // The next request works.
    let next = p
        .queue_request(Flow::Extended(1), None, |_| Ok(()))
        .unwrap();
    assert!(next > id);
    p.handle_input(&[command_complete("SELECT 0"), ready(b'T')].concat());
    let got = responses(&mut p);
    assert_eq!(got[1].request, next);
    assert_eq!(p.transaction_status(), TransactionStatus::InTransaction);
}

#[test]
fn extended_query_uses_the_described_column_count() {
    let mut p = ready_protocol();
    p.queue_request(Flow::Extended(1), Some(2), |_| Ok(()))
        .unwrap();
    p.handle_input(
        &[
            msg(b'2', &[]),
            data_row(&[Some("1"), Some("2")]),
            command_complete("SELECT 1"),
            ready(b'I'),
        ]
        .concat(),
    );
    assert_eq!(responses(&mut p).len(), 4);

    p.queue_request(Flow::Extended(1), Some(2), |_| Ok(()))
        .unwrap();
    p.handle_input(&[msg(b'2', &[]), data_row(&[Some("1")])].concat());
    assert!(p.poll_response().unwrap().is_some());
    let err = p
        .poll_response()
        .err()
        .expect("field count mismatch must fail");
    assert_eq!(err.kind(), ErrorKind::Protocol);
    assert!(err.to_string().contains("1 fields"), "{err}");
    assert!(p.is_closed());
}

#[test]
fn data_row_field_count_must_match_row_description() {
    let mut p = ready_protocol();
    p.queue_request(Flow::Extended(1), None, |_| Ok(()))
        .unwrap();
    p.handle_input(
        &[
            row_description(&["a", "b"]),
            data_row(&[Some("1"), Some("2"), Some("3")]),
        ]
        .concat(),
    );
    assert!(p.poll_response().unwrap().is_some());
    assert_eq!(p.poll_response().err().unwrap().kind(), ErrorKind::Protocol);
}

#[test]
fn data_row_without_description_is_refused() {
    let mut p = ready_protocol();
    p.queue_request(Flow::Extended(1), None, |_| Ok(()))
        .unwrap();
    p.handle_input(&data_row(&[Some("1")]));
    assert_eq!(p.poll_response().err().unwrap().kind(), ErrorKind::Protocol);
}

#[test]
fn data_row_with_a_field_past_its_end_is_refused() {
    let mut p = ready_protocol();
    p.queue_request(Flow::Extended(1), Some(1), |_| Ok(()))
        .unwrap();
    let mut body = BytesMut::new();
    body.put_u16(1);
    body.put_i32(100); // claims 100 bytes, carries 2
    body.extend_from_slice(b"ab");
    p.handle_input(&msg(b'D', &body));
    assert_eq!(p.poll_response().err().unwrap().kind(), ErrorKind::Protocol);
}

#[test]
fn oversized_length_is_an_error_before_any_allocation() {
    let mut p = ready_protocol();
    p.queue_request(Flow::Extended(1), None, |_| Ok(()))
        .unwrap();
    // A 5-byte header claiming ~4 GiB.
    p.handle_input(&[b'D', 0xff, 0xff, 0xff, 0xf0]);
    let err = p.poll_response().err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Protocol);
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    assert!(
        p.inbound.capacity() < 1024,
        "nothing was reserved for the claimed length"
    );
}

#[test]
fn length_below_four_is_refused() {
    let mut p = ready_protocol();
    p.queue_request(Flow::Extended(1), None, |_| Ok(()))
        .unwrap();
    p.handle_input(&[b'Z', 0, 0, 0, 3]);
    assert_eq!(p.poll_response().err().unwrap().kind(), ErrorKind::Protocol);
}

#[test]
fn unknown_message_type_is_refused() {
    let mut p = ready_protocol();
    p.queue_request(Flow::Extended(1), None, |_| Ok(()))
        .unwrap();
    p.handle_input(&msg(b'!', &[]));
    let err = p.poll_response().err().unwrap();
    assert!(err.to_string().contains("unknown message type"), "{err}");
}

#[test]
fn truncated_frame_waits_then_fails_at_eof() {
    let mut p = ready_protocol();
    p.queue_request(Flow::Extended(1), None, |_| Ok(()))
        .unwrap();
    let frame = command_complete("SELECT 1");
    p.handle_input(&frame[..frame.len() - 2]);
    assert!(p.poll_response().unwrap().is_none());
    p.handle_eof();
    assert_eq!(p.poll_response().err().unwrap().kind(), ErrorKind::Io);
}

#[test]
fn truncated_body_inside_a_complete_frame_is_refused() {
    let mut p = ready_protocol();
    p.queue_request(Flow::Extended(1), None, |_| Ok(()))
        .unwrap();
    // A BackendKeyData-sized ReadyForQuery without its status byte.
    p.handle_input(&msg(b'Z', &[]));
    assert_eq!(p.poll_response().err().unwrap().kind(), ErrorKind::Protocol);
}

#[test]
fn notices_notifications_and_parameters_become_events() {
    let mut p = ready_protocol();
    p.queue_request(Flow::Extended(1), None, |_| Ok(()))
        .unwrap();
    let notification = msg(
        b'A',
        &[7i32.to_be_bytes().to_vec(), cstr("chan"), cstr("payload")].concat(),
    );
    let mut notice = error_response("NOTICE", "00000", "hello");
    notice[0] = b'N';
    p.handle_input(
        &[
            notification,
            notice,
            param_status("TimeZone", "UTC"),
            command_complete("LISTEN"),
            ready(b'I'),
        ]
        .concat(),
    );
    assert_eq!(responses(&mut p).len(), 2);
    let events: Vec<Event> = std::iter::from_fn(|| p.poll_event()).collect();
    assert!(
        matches!(&events[0], Event::Notification(n) if n.channel() == "chan" && n.payload() == "payload" && n.process_id() == 7)
    );
    assert!(
        matches!(&events[1], Event::Notice(n) if n.message() == "hello" && n.severity() == "NOTICE")
    );
    assert!(matches!(&events[2], Event::ParameterStatus(k, v) if k == "TimeZone" && v == "UTC"));
    assert_eq!(p.parameter("TimeZone"), Some("UTC"));
}

#[test]
fn notification_while_idle_is_kept() {
    let mut p = ready_protocol();
    p.handle_input(&msg(
        b'A',
        &[1i32.to_be_bytes().to_vec(), cstr("c"), cstr("")].concat(),
    ));
    assert!(p.poll_response().unwrap().is_none());
    assert!(matches!(p.poll_event(), Some(Event::Notification(_))));
}

#[test]
fn response_without_request_is_a_protocol_error() {
    let mut p = ready_protocol();
    p.handle_input(&command_complete("SELECT 1"));
    assert_eq!(p.poll_response().err().unwrap().kind(), ErrorKind::Protocol);
}

#[test]
fn fatal_error_breaks_the_connection_at_once() {
    for in_request in [false, true] {
        let mut p = ready_protocol();
        if in_request {
            p.queue_request(Flow::Extended(1), None, |_| Ok(()))
                .unwrap();
        }
        p.handle_input(&error_response(
            "FATAL",
            "57P01",
            "terminating connection due to administrator command",
        ));
        let err = p.poll_response().err().unwrap();
        assert_eq!(err.code(), Some("57P01"));
        assert!(err.is_connection_broken());
        assert!(p.is_closed());
        let again = p
            .queue_request(Flow::Extended(1), None, |_| Ok(()))
            .unwrap_err();
        assert!(again.is_connection_broken());
        assert_eq!(again.kind(), ErrorKind::Db);
    }
}

#[test]
fn responses_are_tagged_with_their_request() {
    let mut p = ready_protocol();
    let first = p
        .queue_request(Flow::Extended(1), None, |_| Ok(()))
        .unwrap();
    let second = p
        .queue_request(Flow::Extended(2), None, |_| Ok(()))
        .unwrap();
    p.handle_input(
        &[
            command_complete("A"),
            ready(b'I'),
            command_complete("B"),
            ready(b'I'),
            ready(b'I'),
        ]
        .concat(),
    );
    let got: Vec<RequestId> = responses(&mut p).iter().map(|r| r.request).collect();
    assert_eq!(got, vec![first, first, second, second, second]);
    assert!(!p.has_pending());
}

#[test]
fn failed_encoding_leaves_nothing_queued() {
    let mut p = ready_protocol();
    let before = p.poll_transmit().len();
    let err = p
        .queue_request(Flow::Extended(1), None, |buf| {
            buf.extend_from_slice(b"half a message");
            Err(Error::config("encoding failed"))
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert_eq!(p.poll_transmit().len(), before);
    assert!(!p.has_pending());
}

#[test]
fn terminate_closes_the_protocol() {
    let mut p = ready_protocol();
    p.queue_terminate();
    assert_eq!(frontend_messages(&drain(&mut p)), vec![(b'X', vec![])]);
    assert!(p.is_closed());
    assert_eq!(
        p.queue_request(Flow::Extended(1), None, |_| Ok(()))
            .unwrap_err()
            .kind(),
        ErrorKind::Closed
    );
}

#[test]
fn negotiate_protocol_version_is_refused_clearly() {
    let mut p = new_protocol(None, "");
    drain(&mut p);
    p.handle_input(&msg(b'v', &[0, 0, 0, 0, 0, 0, 0, 0]));
    let err = p.poll_startup().unwrap_err();
    assert!(
        err.to_string().contains("NegotiateProtocolVersion"),
        "{err}"
    );
}

#[test]
fn unexpected_message_during_startup_is_refused() {
    let mut p = new_protocol(None, "");
    drain(&mut p);
    p.handle_input(&data_row(&[Some("x")]));
    let err = p.poll_startup().unwrap_err();
    assert!(
        err.to_string()
            .contains("unexpected DataRow during authentication"),
        "{err}"
    );
}

#[test]
fn copy_in_is_refused_by_the_core_in_both_flows() {
    let copy_in = msg(b'G', &[0, 0, 1, 0, 0]);
    for (flow, expect_sync) in [(Flow::Simple, false), (Flow::Extended(1), true)] {
        let mut p = ready_protocol();
        let id = p.queue_request(flow, None, |_| Ok(())).unwrap();
        drain(&mut p);
        p.handle_input(&copy_in);
        assert!(
            p.poll_response().unwrap().is_none(),
            "CopyInResponse is answered, not handed out"
        );
        let sent = frontend_messages(&drain(&mut p));
        assert_eq!(sent[0].0, b'f', "CopyFail first");
        assert_eq!(sent.len(), if expect_sync { 2 } else { 1 });
        if expect_sync {
            assert_eq!(sent[1], (b'S', vec![]));
        }
        p.handle_input(
            &[
                error_response("ERROR", "57014", "COPY from stdin failed"),
                ready(b'I'),
            ]
            .concat(),
        );
        let got = responses(&mut p);
        assert!(got.iter().all(|r| r.request == id));
        assert!(matches!(
            got.last().map(|r| &r.message),
            Some(Backend::Ready)
        ));
        assert!(!p.is_closed());
    }
}

// ---- COPY FROM STDIN / TO STDOUT ----

/// A CopyInResponse (`G`) or CopyOutResponse (`H`) body: overall format, then one format per column.
fn copy_response(tag: u8, format: u8, columns: &[u16]) -> Vec<u8> {
    let mut body = vec![format];
    body.extend_from_slice(&u16::try_from(columns.len()).unwrap().to_be_bytes());
    for column in columns {
        body.extend_from_slice(&column.to_be_bytes());
    }
    msg(tag, &body)
}

fn copy_data(data: &[u8]) -> Vec<u8> {
    msg(b'd', data)
}

fn copy_done() -> Vec<u8> {
    msg(b'c', &[])
}

/// Queues `COPY t FROM STDIN` as a request that streams its data, and has the server accept it.
fn copying_in(flow: Flow) -> (Protocol, RequestId) {
    let mut p = ready_protocol();
    let id = p
        .queue_copy(flow, |buf| {
            postgres_protocol::message::frontend::query("COPY t FROM STDIN", buf).unwrap();
            Ok(())
        })
        .unwrap();
    drain(&mut p);
    p.handle_input(&copy_response(b'G', 0, &[0, 0]));
    let got = responses(&mut p);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].request, id);
    assert!(matches!(
        got[0].message,
        Backend::Message(Message::CopyInResponse(_))
    ));
    assert!(
        p.poll_transmit().is_empty(),
        "an accepted COPY is not failed"
    );
    (p, id)
}

#[test]
fn copy_in_streams_data_and_ends_with_copy_done() {
    let (mut p, id) = copying_in(Flow::Simple);
    p.queue_copy_data(id, b"1\tone\n").unwrap();
    p.queue_copy_data(id, b"2\ttwo\n").unwrap();
    p.queue_copy_done(id).unwrap();
    assert_eq!(
        frontend_messages(&drain(&mut p)),
        vec![
            (b'd', b"1\tone\n".to_vec()),
            (b'd', b"2\ttwo\n".to_vec()),
            (b'c', vec![]),
        ],
        "a simple Query needs no Sync after CopyDone"
    );
    assert!(
        p.queue_copy_data(id, b"late").is_err(),
        "no data after CopyDone"
    );
    assert!(p.poll_transmit().is_empty());
    p.handle_input(&[command_complete("COPY 2"), ready(b'I')].concat());
    let got = responses(&mut p);
    assert!(got.iter().all(|r| r.request == id));
    assert!(matches!(
        got[0].message,
        Backend::Message(Message::CommandComplete(_))
    ));
    assert!(matches!(got[1].message, Backend::Ready));
    assert!(!p.has_pending());
    assert!(!p.is_closed());
}

#[test]
fn copy_in_through_the_extended_protocol_syncs_after_copy_done() {
    let (mut p, id) = copying_in(Flow::Extended(1));
    p.queue_copy_data(id, b"x\n").unwrap();
    p.queue_copy_done(id).unwrap();
    // The server ignored the request's own Sync in COPY mode: CopyDone needs one of its own.
    assert_eq!(
        frontend_messages(&drain(&mut p)),
        vec![(b'd', b"x\n".to_vec()), (b'c', vec![]), (b'S', vec![])]
    );
    p.handle_input(&[command_complete("COPY 1"), ready(b'I')].concat());
    assert_eq!(responses(&mut p).len(), 2);
    assert!(!p.has_pending());
}

#[test]
fn server_error_in_the_middle_of_copy_in_ends_it() {
    for (flow, expect_sync) in [(Flow::Simple, false), (Flow::Extended(1), true)] {
        let (mut p, id) = copying_in(flow);
        p.queue_copy_data(id, b"1\n").unwrap();
        drain(&mut p);
        p.handle_input(&error_response(
            "ERROR",
            "22P02",
            "invalid input syntax for type integer: \"x\"",
        ));
        let got = responses(&mut p);
        assert!(matches!(&got[0].message, Backend::Error(db) if db.code() == "22P02"));
        // After an error in the extended protocol the server skips to the next Sync, which we owe it.
        let sent = frontend_messages(&drain(&mut p));
        assert_eq!(
            sent,
            if expect_sync {
                vec![(b'S', vec![])]
            } else {
                vec![]
            }
        );
        // The COPY is over: nothing more may be queued for it, and nothing was.
        assert!(p.queue_copy_data(id, b"2\n").is_err());
        assert!(p.queue_copy_done(id).is_err());
        assert!(p.poll_transmit().is_empty());
        p.handle_input(&ready(b'I'));
        let got = responses(&mut p);
        assert!(matches!(got[0].message, Backend::Ready));
        assert!(!p.is_closed());
        assert!(!p.has_pending());
        // The next request works.
        let next = p
            .queue_request(Flow::Simple, None, |buf| {
                postgres_protocol::message::frontend::query("SELECT 1", buf).unwrap();
                Ok(())
            })
            .unwrap();
        p.handle_input(&[command_complete("SELECT 0"), ready(b'I')].concat());
        assert!(responses(&mut p).iter().all(|r| r.request == next));
    }
}

#[test]
fn abandoned_copy_in_sends_copy_fail() {
    for (flow, expect_sync) in [(Flow::Simple, false), (Flow::Extended(1), true)] {
        let (mut p, id) = copying_in(flow);
        p.queue_copy_data(id, b"1\n").unwrap();
        p.abandon_copy_in(id, "the writer was dropped");
        let sent = frontend_messages(&drain(&mut p));
        assert_eq!(sent[0], (b'd', b"1\n".to_vec()));
        assert_eq!(sent[1], (b'f', cstr("the writer was dropped")));
        assert_eq!(sent.len(), if expect_sync { 3 } else { 2 });
        // Idempotent: a second abandon (the drop after an explicit abort) sends nothing.
        p.abandon_copy_in(id, "again");
        assert!(p.poll_transmit().is_empty());
        p.handle_input(
            &[
                error_response(
                    "ERROR",
                    "57014",
                    "COPY from stdin failed: the writer was dropped",
                ),
                ready(b'I'),
            ]
            .concat(),
        );
        let got = responses(&mut p);
        assert!(matches!(&got[0].message, Backend::Error(db) if db.code() == "57014"));
        assert!(matches!(got[1].message, Backend::Ready));
        assert!(!p.has_pending());
        assert!(!p.is_closed());
    }
}

#[test]
fn copy_in_abandoned_before_it_started_is_refused_when_it_does() {
    let mut p = ready_protocol();
    let id = p
        .queue_copy(Flow::Simple, |buf| {
            postgres_protocol::message::frontend::query("COPY t FROM STDIN", buf).unwrap();
            Ok(())
        })
        .unwrap();
    drain(&mut p);
    // The caller went away before the server answered.
    p.abandon_copy_in(id, "dropped");
    assert!(p.poll_transmit().is_empty(), "nothing to fail yet");
    p.handle_input(&copy_response(b'G', 0, &[0]));
    assert!(
        p.poll_response().unwrap().is_none(),
        "refused, not handed out"
    );
    assert_eq!(drain(&mut p)[0], b'f');
}

#[test]
fn one_copy_in_per_request() {
    let (mut p, id) = copying_in(Flow::Simple);
    p.queue_copy_done(id).unwrap();
    drain(&mut p);
    // `COPY a FROM STDIN; COPY b FROM STDIN` in one Query: the second COPY has no writer.
    p.handle_input(&[command_complete("COPY 0"), copy_response(b'G', 0, &[0])].concat());
    assert!(p.poll_response().unwrap().is_some());
    assert!(p.poll_response().unwrap().is_none());
    assert_eq!(
        drain(&mut p)[0],
        b'f',
        "the second COPY is failed by the core"
    );
}

#[test]
fn copy_out_transcript() {
    let mut p = ready_protocol();
    let id = p.queue_request(Flow::Simple, None, |_| Ok(())).unwrap();
    p.handle_input(
        &[
            copy_response(b'H', 1, &[1, 1]),
            copy_data(b"PGCOPY"),
            copy_data(b"rows"),
            copy_done(),
            command_complete("COPY 2"),
            ready(b'I'),
        ]
        .concat(),
    );
    let got = responses(&mut p);
    assert_eq!(got.len(), 6);
    assert!(got.iter().all(|r| r.request == id));
    assert!(matches!(
        got[0].message,
        Backend::Message(Message::CopyOutResponse(_))
    ));
    let Backend::CopyData(data) = &got[2].message else {
        panic!("CopyData expected")
    };
    assert_eq!(&data[..], b"rows");
    assert!(matches!(
        got[3].message,
        Backend::Message(Message::CopyDone)
    ));
    assert!(matches!(got[5].message, Backend::Ready));
    assert!(!p.has_pending());
}

#[test]
fn copy_data_fast_path_takes_only_whole_copy_data_of_its_request() {
    let mut p = ready_protocol();
    let older = p.queue_request(Flow::Simple, None, |_| Ok(())).unwrap();
    let id = p.queue_request(Flow::Simple, None, |_| Ok(())).unwrap();
    // The older request is answered first: nothing for the COPY's reader yet.
    p.handle_input(&[command_complete("SELECT 0"), ready(b'I')].concat());
    assert!(p.poll_copy_data(id).unwrap().is_none());
    assert_eq!(responses(&mut p).len(), 2);
    p.handle_input(&copy_response(b'H', 0, &[0]));
    // Before the CopyOutResponse was routed, the fast path takes nothing.
    assert!(p.poll_copy_data(id).unwrap().is_none());
    assert!(p.poll_response().unwrap().is_some());
    let second = copy_data(b"2\n");
    p.handle_input(&[copy_data(b"1\n"), second[..3].to_vec()].concat());
    assert_eq!(&p.poll_copy_data(id).unwrap().unwrap()[..], b"1\n");
    assert!(
        p.poll_copy_data(older).unwrap().is_none(),
        "another request's"
    );
    assert!(p.poll_copy_data(id).unwrap().is_none(), "a frame cut short");
    p.handle_input(&[second[3..].to_vec(), copy_done()].concat());
    assert_eq!(&p.poll_copy_data(id).unwrap().unwrap()[..], b"2\n");
    assert!(
        p.poll_copy_data(id).unwrap().is_none(),
        "CopyDone goes the general way"
    );
    assert!(matches!(
        p.poll_response().unwrap().unwrap().message,
        Backend::Message(Message::CopyDone)
    ));
    p.handle_input(&copy_data(b"3\n"));
    assert!(p.poll_copy_data(id).unwrap().is_none(), "no COPY any more");
    let Err(err) = p.poll_response() else {
        panic!("CopyData after CopyDone accepted")
    };
    assert!(
        err.to_string()
            .contains("unexpected CopyData outside a COPY"),
        "{err}"
    );
}

#[test]
fn copy_out_ended_by_an_error_recovers() {
    let mut p = ready_protocol();
    p.queue_request(Flow::Extended(1), None, |_| Ok(()))
        .unwrap();
    p.handle_input(
        &[
            copy_response(b'H', 0, &[0]),
            copy_data(b"1\n"),
            error_response("ERROR", "57014", "canceling statement due to user request"),
            ready(b'I'),
        ]
        .concat(),
    );
    let got = responses(&mut p);
    assert!(matches!(&got[2].message, Backend::Error(db) if db.code() == "57014"));
    assert!(matches!(got[3].message, Backend::Ready));
    // The request's own Sync was never consumed by COPY OUT: nothing more is owed.
    assert!(drain(&mut p).is_empty());
    assert!(!p.is_closed());
}

/// Feeds `input` to a fresh request (which streams COPY IN data when `copy_in`) and expects a protocol error
/// that closes the connection, mentioning `expect`.
fn refused_copy_transcript(copy_in: bool, input: &[Vec<u8>], expect: &str) {
    let mut p = ready_protocol();
    if copy_in {
        p.queue_copy(Flow::Simple, |_| Ok(())).unwrap();
    } else {
        p.queue_request(Flow::Simple, None, |_| Ok(())).unwrap();
    }
    p.handle_input(&input.concat());
    let err = loop {
        match p.poll_response() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("{expect}: accepted"),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::Protocol, "{expect}: {err}");
    assert!(err.to_string().contains(expect), "{expect}: {err}");
    assert!(p.is_closed(), "{expect}");
}

#[test]
fn unexpected_and_malformed_copy_messages_break_the_connection() {
    let copy_in = || copy_response(b'G', 0, &[0]);
    let copy_out = || copy_response(b'H', 0, &[0]);
    let cases: Vec<(bool, Vec<Vec<u8>>, &str)> = vec![
        (
            false,
            vec![copy_data(b"x")],
            "unexpected CopyData outside a COPY",
        ),
        (
            false,
            vec![copy_done()],
            "unexpected CopyDone outside a COPY",
        ),
        (
            false,
            vec![row_description(&["a"]), copy_data(b"x")],
            "CopyData outside a COPY",
        ),
        (
            true,
            vec![copy_in(), command_complete("COPY 1")],
            "unexpected CommandComplete during COPY FROM STDIN",
        ),
        (
            true,
            vec![copy_in(), ready(b'I')],
            "unexpected ReadyForQuery during COPY FROM STDIN",
        ),
        (
            true,
            vec![copy_in(), copy_data(b"x")],
            "unexpected CopyData during COPY FROM STDIN",
        ),
        (
            true,
            vec![copy_in(), copy_done()],
            "unexpected CopyDone during COPY FROM STDIN",
        ),
        (
            true,
            vec![copy_in(), copy_in()],
            "unexpected CopyInResponse during COPY FROM STDIN",
        ),
        (
            false,
            vec![copy_out(), data_row(&[Some("1")])],
            "unexpected DataRow during COPY TO STDOUT",
        ),
        (
            false,
            vec![copy_out(), command_complete("COPY 0")],
            "unexpected CommandComplete during COPY TO STDOUT",
        ),
        (
            false,
            vec![copy_out(), copy_out()],
            "unexpected CopyOutResponse during COPY TO STDOUT",
        ),
        (
            false,
            vec![copy_out(), ready(b'I')],
            "unexpected ReadyForQuery during COPY TO STDOUT",
        ),
        (
            false,
            vec![copy_response(b'H', 2, &[0])],
            "invalid COPY format 2",
        ),
        (
            false,
            vec![copy_response(b'H', 0, &[1])],
            "invalid COPY column format 1",
        ),
        (
            true,
            vec![copy_response(b'G', 1, &[7])],
            "invalid COPY column format 7",
        ),
        (
            true,
            // Two columns announced, one format given.
            vec![msg(b'G', &[0, 0, 2, 0, 0])],
            "malformed",
        ),
        (
            false,
            // A column format cut in half.
            vec![msg(b'H', &[0, 0, 1, 0])],
            "malformed",
        ),
    ];
    for (copy_in, input, expect) in cases {
        refused_copy_transcript(copy_in, &input, expect);
    }
}

#[test]
fn copy_data_for_a_request_not_in_copy_is_refused_without_sending() {
    let mut p = ready_protocol();
    let id = p.queue_copy(Flow::Simple, |_| Ok(())).unwrap();
    drain(&mut p);
    let err = p.queue_copy_data(id, b"early").unwrap_err();
    assert!(err.to_string().contains("BUG"), "{err}");
    assert!(p.queue_copy_done(id).is_err());
    assert!(p.poll_transmit().is_empty());
}

#[test]
fn notices_during_copy_in_are_events() {
    let (mut p, id) = copying_in(Flow::Simple);
    let mut notice = error_response("NOTICE", "00000", "hello");
    notice[0] = b'N';
    p.handle_input(&[notice, param_status("TimeZone", "UTC")].concat());
    assert!(p.poll_response().unwrap().is_none());
    assert!(matches!(p.poll_event(), Some(Event::Notice(_))));
    assert!(matches!(p.poll_event(), Some(Event::ParameterStatus(..))));
    p.queue_copy_done(id).unwrap();
}

// ---- Protocol 3.2: StartupMessage, NegotiateProtocolVersion, BackendKeyData ----

fn versions(min: ProtocolVersion, max: ProtocolVersion) -> Protocol {
    let mut params = startup_params(None, "");
    params.min_protocol_version = min;
    params.max_protocol_version = max;
    let mut p = protocol_with(params);
    drain(&mut p);
    p
}

/// A NegotiateProtocolVersion message with the given version code and option names.
fn negotiate(version: u32, options: &[&str]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    body.extend_from_slice(&u32::try_from(options.len()).unwrap().to_be_bytes());
    for option in options {
        body.extend_from_slice(&cstr(option));
    }
    msg(b'v', &body)
}

const V3_0: u32 = 196_608;
const V3_2: u32 = 196_610;

#[test]
fn startup_message_carries_the_requested_version() {
    for (max, code) in [(ProtocolVersion::V3_0, V3_0), (ProtocolVersion::V3_2, V3_2)] {
        let mut params = startup_params(None, "");
        params.max_protocol_version = max;
        let out = drain(&mut protocol_with(params));
        assert_eq!(&out[4..8], &code.to_be_bytes(), "{max:?}");
        assert_eq!(&out[8..], b"user\0alice\0database\0db\0\0");
    }
}

#[test]
fn min_above_max_is_a_config_error() {
    let mut params = startup_params(None, "");
    params.min_protocol_version = ProtocolVersion::V3_2;
    let err = Protocol::new(
        params,
        Limits {
            max_message_size: MAX,
        },
    )
    .err()
    .unwrap();
    assert_eq!(err.kind(), ErrorKind::Config);
}

#[test]
fn negotiation_down_to_3_0_is_accepted() {
    let mut p = versions(ProtocolVersion::V3_0, ProtocolVersion::V3_2);
    assert_eq!(p.protocol_version(), ProtocolVersion::V3_2);
    p.handle_input(&[negotiate(V3_0, &[]), auth(0, &[])].concat());
    assert!(!p.poll_startup().unwrap());
    assert_eq!(p.protocol_version(), ProtocolVersion::V3_0);
    finish_startup(&mut p);
    assert_eq!(p.protocol_version(), ProtocolVersion::V3_0);
}

#[test]
fn negotiated_3_0_holds_the_server_to_a_4_byte_key() {
    let mut p = versions(ProtocolVersion::V3_0, ProtocolVersion::V3_2);
    p.handle_input(
        &[
            negotiate(V3_0, &[]),
            auth(0, &[]),
            backend_key_bytes(1, &[7; 32]),
        ]
        .concat(),
    );
    let err = p.poll_startup().unwrap_err();
    assert!(err.to_string().contains("protocol 3.0"), "{err}");
}

#[test]
fn negotiation_below_min_is_refused() {
    let mut p = versions(ProtocolVersion::V3_2, ProtocolVersion::V3_2);
    p.handle_input(&negotiate(V3_0, &[]));
    let err = p.poll_startup().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol);
    let text = err.to_string();
    assert!(
        text.contains("3.0") && text.contains("min_protocol_version is 3.2"),
        "{text}"
    );
    assert!(p.is_closed());
}

#[test]
fn negotiation_refusing_an_option_is_an_error() {
    // We never send `_pq_.` options, so a refusal of one is a broken (or lying) server, even with a downgrade.
    for version in [V3_2, V3_0] {
        let mut p = versions(ProtocolVersion::V3_0, ProtocolVersion::V3_2);
        p.handle_input(&negotiate(version, &["_pq_.compression"]));
        let err = p.poll_startup().unwrap_err();
        assert!(err.to_string().contains("\"_pq_.compression\""), "{err}");
    }
}

#[test]
fn negotiation_must_go_down_to_a_real_version() {
    for (version, expect) in [
        (V3_2, "asked for no change"),
        (0x0003_0003, "offers protocol 3.3"),
        (0x0003_0001, "3.1, which does not exist"),
        (0x0002_0000, "2.0, which does not exist"),
        (0x0004_0000, "offers protocol 4.0"),
    ] {
        let mut p = versions(ProtocolVersion::V3_0, ProtocolVersion::V3_2);
        p.handle_input(&negotiate(version, &[]));
        let err = p.poll_startup().unwrap_err();
        assert!(err.to_string().contains(expect), "{err}");
    }
    // A 3.0 client can only be offered a higher version, which is refused.
    let mut p = versions(ProtocolVersion::V3_0, ProtocolVersion::V3_0);
    p.handle_input(&negotiate(V3_2, &[]));
    assert!(p.poll_startup().is_err());
}

#[test]
fn negotiation_with_bad_counts_is_refused() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        // Announces a million options in 2 bytes: refused before anything is reserved.
        (
            [V3_0.to_be_bytes(), 1_000_000u32.to_be_bytes()]
                .concat()
                .into_iter()
                .chain(*b"a\0")
                .collect(),
            "1000000 options announced in 2 bytes",
        ),
        (
            [V3_0.to_be_bytes(), u32::MAX.to_be_bytes()].concat(),
            "negative option count",
        ),
        (
            [
                V3_0.to_be_bytes().to_vec(),
                1u32.to_be_bytes().to_vec(),
                b"x".to_vec(),
            ]
            .concat(),
            "without its NUL",
        ),
        (
            [
                V3_0.to_be_bytes().to_vec(),
                0u32.to_be_bytes().to_vec(),
                b"x\0".to_vec(),
            ]
            .concat(),
            "trailing bytes",
        ),
        (V3_0.to_be_bytes().to_vec(), "missing the option count"),
        (vec![0, 3], "missing the version"),
    ];
    for (body, expect) in cases {
        let mut p = versions(ProtocolVersion::V3_0, ProtocolVersion::V3_2);
        p.handle_input(&msg(b'v', &body));
        let err = p.poll_startup().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Protocol);
        assert!(err.to_string().contains(expect), "{expect}: {err}");
    }
}

#[test]
fn negotiation_after_authentication_started_is_refused() {
    let mut params = startup_params(Some("secret"), "");
    params.max_protocol_version = ProtocolVersion::V3_2;
    let mut p = protocol_with(params);
    drain(&mut p);
    p.handle_input(&auth(3, &[]));
    p.poll_startup().unwrap();
    drain(&mut p);
    p.handle_input(&negotiate(V3_0, &[]));
    let err = p.poll_startup().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol);
    assert!(
        err.to_string()
            .contains("unexpected NegotiateProtocolVersion during authentication"),
        "{err}"
    );

    // A second one, even first thing, is refused too.
    let mut p = versions(ProtocolVersion::V3_0, ProtocolVersion::V3_2);
    p.handle_input(&[negotiate(V3_0, &[]), negotiate(V3_0, &[])].concat());
    assert!(p.poll_startup().is_err());

    // And so is one after startup.
    let mut p = ready_protocol();
    p.handle_input(&negotiate(V3_0, &[]));
    let err = p.poll_response().err().unwrap();
    assert!(err.to_string().contains("after startup"), "{err}");
}

fn backend_key_bytes(pid: i32, key: &[u8]) -> Vec<u8> {
    msg(b'K', &[&pid.to_be_bytes()[..], key].concat())
}

#[test]
fn backend_key_length_depends_on_the_protocol_version() {
    for version in [ProtocolVersion::V3_0, ProtocolVersion::V3_2] {
        for len in [4usize, 32, 256, 0, 257] {
            let allowed = match version {
                ProtocolVersion::V3_0 => len == 4,
                _ => (4..=256).contains(&len),
            };
            let mut p = versions(ProtocolVersion::V3_0, version);
            let key: Vec<u8> = (0..len).map(|i| i as u8).collect();
            p.handle_input(&[auth(0, &[]), backend_key_bytes(-5, &key), ready(b'I')].concat());
            let result = p.poll_startup();
            if allowed {
                assert!(result.unwrap(), "{version:?} {len}");
                assert_eq!(
                    p.backend_key(),
                    Some(&BackendKey {
                        process_id: -5,
                        secret_key: key.into(),
                    })
                );
            } else {
                let err = result.unwrap_err();
                assert_eq!(err.kind(), ErrorKind::Protocol, "{version:?} {len}");
                assert!(err.to_string().contains("BackendKeyData"), "{err}");
                assert!(p.is_closed());
            }
        }
    }
}

#[test]
fn backend_key_data_out_of_place_is_refused() {
    // Before authentication ended.
    let mut p = versions(ProtocolVersion::V3_0, ProtocolVersion::V3_0);
    p.handle_input(&backend_key(1, 2));
    assert!(p.poll_startup().is_err());
    // After startup.
    let mut p = ready_protocol();
    p.handle_input(&backend_key(1, 2));
    let err = p.poll_response().err().unwrap();
    assert!(err.to_string().contains("after startup"), "{err}");
}

#[test]
fn backend_key_debug_hides_the_secret() {
    let key = BackendKey {
        process_id: 9,
        secret_key: vec![0x5a; 32].into(),
    };
    let shown = format!("{key:?}");
    assert!(
        shown.contains("<32 bytes>") && !shown.contains("90"),
        "{shown}"
    );
}

// ---- SCRAM and channel binding ----

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unb64(text: &str) -> Vec<u8> {
    let sextets: Vec<u32> = text
        .bytes()
        .filter(|&c| c != b'=')
        .map(|c| B64.iter().position(|&b| b == c).unwrap() as u32)
        .collect();
    let mut out = Vec::new();
    for chunk in sextets.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &s)| n | s << (18 - 6 * i));
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&key, data).as_ref().to_vec()
}

const SALT: &[u8] = b"pepper and salt!";

/// SaltedPassword = PBKDF2-HMAC-SHA-256(password, SALT, iterations), as the server stores it.
fn salted_password(password: &str, iterations: u32) -> [u8; 32] {
    let mut salted = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(iterations).unwrap(),
        SALT,
        password.as_bytes(),
        &mut salted,
    );
    salted
}

/// The server side of one SCRAM-SHA-256 exchange, computed from the password as PostgreSQL does.
struct ScramServer {
    salted_password: [u8; 32],
    client_first_bare: String,
    server_first: String,
}

impl ScramServer {
    /// Answers a client-first message (gs2 header included).
    fn start(password: &str, client_first: &str, iterations: u32) -> ScramServer {
        let bare_at = client_first.find(",,").unwrap() + 2;
        let client_first_bare = client_first[bare_at..].to_string();
        let nonce = client_first_bare.strip_prefix("n=,r=").unwrap();
        ScramServer {
            salted_password: salted_password(password, iterations),
            server_first: format!("r={nonce}SERVERNONCE,s={},i={iterations}", b64(SALT)),
            client_first_bare,
        }
    }

    /// Checks the client proof of a client-final message and returns the channel-binding input it carries and
    /// the server signature.
    fn finish(&self, client_final: &str) -> (Vec<u8>, String) {
        let (without_proof, proof) = client_final.split_once(",p=").unwrap();
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let client_key = hmac(&self.salted_password, b"Client Key");
        let stored_key = ring::digest::digest(&ring::digest::SHA256, &client_key);
        let client_signature = hmac(stored_key.as_ref(), auth_message.as_bytes());
        let expected: Vec<u8> = client_key
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        assert_eq!(unb64(proof), expected, "client proof");
        let cbind = without_proof
            .strip_prefix("c=")
            .and_then(|rest| rest.split(',').next())
            .unwrap();
        let server_key = hmac(&self.salted_password, b"Server Key");
        let signature = hmac(&server_key, auth_message.as_bytes());
        (unb64(cbind), format!("v={}", b64(&signature)))
    }
}

fn sasl_offer(mechanisms: &[&str]) -> Vec<u8> {
    let mut body: Vec<u8> = mechanisms.iter().flat_map(|m| cstr(m)).collect();
    body.push(0);
    auth(10, &body)
}

/// The mechanism and client-first message of a SASLInitialResponse.
fn initial_response(sent: &[u8]) -> (String, String) {
    let messages = frontend_messages(sent);
    assert_eq!(messages.len(), 1);
    let (tag, body) = &messages[0];
    assert_eq!(*tag, b'p');
    let end = body.iter().position(|&b| b == 0).unwrap();
    let mechanism = String::from_utf8(body[..end].to_vec()).unwrap();
    let len = i32::from_be_bytes(body[end + 1..end + 5].try_into().unwrap());
    let data = &body[end + 5..];
    assert_eq!(usize::try_from(len).unwrap(), data.len());
    (mechanism, String::from_utf8(data.to_vec()).unwrap())
}

fn sasl_response(sent: &[u8]) -> String {
    let messages = frontend_messages(sent);
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].0, b'p');
    String::from_utf8(messages[0].1.clone()).unwrap()
}

/// What the TLS layer hands the startup for channel binding.
type TlsBinding = Option<Result<Vec<u8>, String>>;

fn scram_protocol(mode: ChannelBinding, tls: TlsBinding) -> Protocol {
    let mut params = startup_params(Some("secret"), "");
    params.channel_binding = ChannelBindingPolicy { mode, tls };
    let mut p = protocol_with(params);
    drain(&mut p);
    p
}

const ITERATIONS: u32 = 64;

/// Runs the SCRAM exchange to AuthenticationOk after the client-first message; returns the channel-binding
/// input the client sent.
fn complete_scram(p: &mut Protocol, client_first: &str) -> Vec<u8> {
    let server = ScramServer::start("secret", client_first, ITERATIONS);
    p.handle_input(&auth(11, server.server_first.as_bytes()));
    assert!(!p.poll_startup().unwrap());
    let client_final = sasl_response(&drain(p));
    let (cbind, server_final) = server.finish(&client_final);
    p.handle_input(&[auth(12, server_final.as_bytes()), auth(0, &[])].concat());
    finish_startup(p);
    cbind
}

#[test]
fn scram_channel_binding_follows_libpq() {
    let cert_hash = vec![0xc3; 32];
    let tls_cases: [(&str, TlsBinding); 3] = [
        ("no TLS", None),
        ("TLS", Some(Ok(cert_hash.clone()))),
        (
            "TLS, undefined binding",
            Some(Err("Ed25519 certificate".to_string())),
        ),
    ];
    // The expected gs2 header, or None for an authentication error before anything is sent.
    let expect = |mode: ChannelBinding, tls: usize, plus: bool| -> Option<&'static str> {
        use ChannelBinding::*;
        match (mode, tls, plus) {
            (_, 0, true) => None,
            (Disable, _, _) => Some("n,,"),
            (Prefer, 0, false) => Some("n,,"),
            (Prefer, _, false) => Some("y,,"),
            (Prefer | Require, 1, true) => Some("p=tls-server-end-point,,"),
            (Prefer, 2, true) => None,
            (Require, _, _) => None,
            _ => unreachable!(),
        }
    };
    for mode in [
        ChannelBinding::Disable,
        ChannelBinding::Prefer,
        ChannelBinding::Require,
    ] {
        for (tls_index, (tls_name, tls)) in tls_cases.iter().enumerate() {
            for plus in [false, true] {
                let case = format!("{mode:?}, {tls_name}, server offers -PLUS: {plus}");
                let mut p = scram_protocol(mode, tls.clone());
                let offer: &[&str] = if plus {
                    &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
                } else {
                    &["SCRAM-SHA-256"]
                };
                p.handle_input(&sasl_offer(offer));
                match expect(mode, tls_index, plus) {
                    None => {
                        let err = p.poll_startup().unwrap_err();
                        assert_eq!(err.kind(), ErrorKind::Auth, "{case}: {err}");
                        assert!(drain(&mut p).is_empty(), "{case}: nothing may be sent");
                        if tls_index == 2 && plus {
                            assert!(err.to_string().contains("Ed25519 certificate"), "{err}");
                        }
                    }
                    Some(gs2) => {
                        assert!(!p.poll_startup().unwrap(), "{case}");
                        let (mechanism, client_first) = initial_response(&drain(&mut p));
                        let bound = gs2.starts_with('p');
                        let expected_mechanism = if bound {
                            "SCRAM-SHA-256-PLUS"
                        } else {
                            "SCRAM-SHA-256"
                        };
                        assert_eq!(mechanism, expected_mechanism, "{case}");
                        assert!(
                            client_first.starts_with(&format!("{gs2}n=,r=")),
                            "{case}: {client_first}"
                        );
                        // The client-final message binds the header, and with -PLUS the certificate hash.
                        let cbind = complete_scram(&mut p, &client_first);
                        let mut expected = gs2.as_bytes().to_vec();
                        if bound {
                            expected.extend_from_slice(&cert_hash);
                        }
                        assert_eq!(cbind, expected, "{case}");
                        assert!(p.is_ready(), "{case}");
                    }
                }
            }
        }
    }
}

#[test]
fn channel_binding_require_refuses_other_methods_before_sending_anything() {
    for (code, extra, what) in [
        (3u32, vec![], "password"),
        (5, vec![1, 2, 3, 4], "MD5"),
        (7, vec![], "GSSAPI"),
    ] {
        let mut p = scram_protocol(ChannelBinding::Require, Some(Ok(vec![1; 32])));
        p.handle_input(&auth(code, &extra));
        let err = p.poll_startup().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Auth);
        assert!(
            err.to_string()
                .contains(&format!("requested {what} authentication")),
            "{err}"
        );
        assert!(drain(&mut p).is_empty(), "{what}: no password may leave");
    }
}

#[test]
fn require_auth_is_checked_before_channel_binding() {
    let mut params = startup_params(Some("secret"), "scram-sha-256");
    params.channel_binding = ChannelBindingPolicy {
        mode: ChannelBinding::Require,
        tls: Some(Ok(vec![1; 32])),
    };
    let mut p = protocol_with(params);
    drain(&mut p);
    p.handle_input(&auth(5, &[1, 2, 3, 4]));
    let err = p.poll_startup().unwrap_err();
    assert!(err.to_string().contains("require_auth"), "{err}");
    assert!(drain(&mut p).is_empty());
}

#[test]
fn channel_binding_require_refuses_authentication_ok_without_exchange() {
    for require_auth in ["", "none"] {
        let mut params = startup_params(Some("secret"), require_auth);
        params.channel_binding = ChannelBindingPolicy {
            mode: ChannelBinding::Require,
            tls: Some(Ok(vec![1; 32])),
        };
        let mut p = protocol_with(params);
        drain(&mut p);
        p.handle_input(&auth(0, &[]));
        let err = p.poll_startup().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Auth);
        assert!(err.to_string().contains("without channel binding"), "{err}");
    }
}

#[test]
fn authentication_ok_before_the_scram_exchange_ends_is_refused() {
    let mut p = scram_protocol(ChannelBinding::Require, Some(Ok(vec![1; 32])));
    p.handle_input(&sasl_offer(&["SCRAM-SHA-256-PLUS"]));
    p.poll_startup().unwrap();
    drain(&mut p);
    p.handle_input(&auth(0, &[]));
    assert_eq!(p.poll_startup().unwrap_err().kind(), ErrorKind::Protocol);
}

/// Starts SCRAM and returns the protocol and the client nonce.
fn scram_started(max_iterations: u32) -> (Protocol, String) {
    let mut params = startup_params(Some("secret"), "");
    params.scram_max_iterations = max_iterations;
    let mut p = protocol_with(params);
    drain(&mut p);
    p.handle_input(&sasl_offer(&["SCRAM-SHA-256"]));
    p.poll_startup().unwrap();
    let (_, client_first) = initial_response(&drain(&mut p));
    let nonce = client_first.strip_prefix("n,,n=,r=").unwrap().to_string();
    (p, nonce)
}

#[test]
fn scram_iteration_count_above_the_cap_is_refused_before_any_work() {
    let (mut p, nonce) = scram_started(100_000);
    p.handle_input(&auth(
        11,
        format!("r={nonce}x,s=c2FsdA==,i=1000000000").as_bytes(),
    ));
    let err = p.poll_startup().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth);
    let text = err.to_string();
    assert!(
        text.contains("1000000000") && text.contains("100000"),
        "{text}"
    );
    assert!(drain(&mut p).is_empty(), "no client-final message");
}

#[test]
fn scram_iteration_cap_is_configurable() {
    let (mut p, nonce) = scram_started(ITERATIONS - 1);
    let server_first = format!("r={nonce}x,s=c2FsdA==,i={ITERATIONS}");
    p.handle_input(&auth(11, server_first.as_bytes()));
    assert!(
        p.poll_startup()
            .unwrap_err()
            .to_string()
            .contains("scram_max_iterations")
    );
    assert!(drain(&mut p).is_empty());

    let (mut p, nonce) = scram_started(ITERATIONS);
    let server_first = format!("r={nonce}x,s=c2FsdA==,i={ITERATIONS}");
    p.handle_input(&auth(11, server_first.as_bytes()));
    assert!(!p.poll_startup().unwrap());
    assert!(sasl_response(&drain(&mut p)).starts_with("c=biws,r="));
}

// ---- SCRAM with keys (scram_client_key, scram_server_key) ----

/// The ClientKey and ServerKey of `password` with the salt and count `ScramServer` uses, derived as RFC 5802
/// says: HMAC(SaltedPassword, "Client Key") and HMAC(SaltedPassword, "Server Key").
fn scram_keys_of(password: &str) -> crate::config::ScramKeys {
    let salted = salted_password(password, ITERATIONS);
    crate::config::ScramKeys {
        client_key: hmac(&salted, b"Client Key").try_into().unwrap(),
        server_key: hmac(&salted, b"Server Key").try_into().unwrap(),
    }
}

/// A protocol with SCRAM keys and no password (or a wrong one, which the keys must win over).
fn keyed_protocol(
    keys: crate::config::ScramKeys,
    password: Option<&str>,
    mode: ChannelBinding,
    tls: TlsBinding,
) -> Protocol {
    let mut params = startup_params(password, "");
    params.scram_keys = Some(keys);
    params.channel_binding = ChannelBindingPolicy { mode, tls };
    let mut p = protocol_with(params);
    drain(&mut p);
    p
}

/// The whole exchange made with keys against a server that checks the proof from the password: the same
/// proof, with and without channel binding, and no password needed.
#[test]
fn scram_with_keys_authenticates_with_and_without_channel_binding() {
    let cert_hash = vec![0x5a; 32];
    let cases: [(ChannelBinding, TlsBinding, &[&str], &str); 5] = [
        (ChannelBinding::Prefer, None, &["SCRAM-SHA-256"], "n,,"),
        (
            ChannelBinding::Disable,
            Some(Ok(cert_hash.clone())),
            &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"],
            "n,,",
        ),
        (
            ChannelBinding::Prefer,
            Some(Ok(cert_hash.clone())),
            &["SCRAM-SHA-256"],
            "y,,",
        ),
        (
            ChannelBinding::Prefer,
            Some(Ok(cert_hash.clone())),
            &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"],
            "p=tls-server-end-point,,",
        ),
        (
            ChannelBinding::Require,
            Some(Ok(cert_hash.clone())),
            &["SCRAM-SHA-256-PLUS"],
            "p=tls-server-end-point,,",
        ),
    ];
    for (mode, tls, offer, gs2) in cases {
        for password in [None, Some("not the password")] {
            let case = format!("{mode:?}, {offer:?}, password {password:?}");
            let mut p = keyed_protocol(scram_keys_of("secret"), password, mode, tls.clone());
            p.handle_input(&sasl_offer(offer));
            assert!(!p.poll_startup().unwrap(), "{case}");
            let (mechanism, client_first) = initial_response(&drain(&mut p));
            let bound = gs2.starts_with('p');
            assert_eq!(mechanism == "SCRAM-SHA-256-PLUS", bound, "{case}");
            assert!(
                client_first.starts_with(&format!("{gs2}n=,r=")),
                "{case}: {client_first}"
            );
            // ScramServer asserts that the proof is the one the password gives.
            let cbind = complete_scram(&mut p, &client_first);
            let mut expected = gs2.as_bytes().to_vec();
            if bound {
                expected.extend_from_slice(&cert_hash);
            }
            assert_eq!(cbind, expected, "{case}");
            assert!(p.is_ready(), "{case}");
        }
    }
}

/// Runs a keyed exchange up to the server-final message, which `server_final` writes from the real signature.
fn keyed_exchange_until_final(keys: crate::config::ScramKeys) -> (Protocol, String) {
    let mut p = keyed_protocol(keys, None, ChannelBinding::Prefer, None);
    p.handle_input(&sasl_offer(&["SCRAM-SHA-256"]));
    p.poll_startup().unwrap();
    let (_, client_first) = initial_response(&drain(&mut p));
    let server = ScramServer::start("secret", &client_first, ITERATIONS);
    p.handle_input(&auth(11, server.server_first.as_bytes()));
    assert!(!p.poll_startup().unwrap());
    let (_, server_final) = server.finish(&sasl_response(&drain(&mut p)));
    (p, server_final)
}

#[test]
fn scram_with_keys_refuses_a_wrong_server_signature() {
    // A server_key that is not this role's: the client proof is right, the server's signature cannot match.
    let mut keys = scram_keys_of("secret");
    keys.server_key = scram_keys_of("other").server_key;
    let (mut p, server_final) = keyed_exchange_until_final(keys);
    p.handle_input(&[auth(12, server_final.as_bytes()), auth(0, &[])].concat());
    let err = p.poll_startup().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth);
    assert!(err.to_string().contains("scram_server_key"), "{err}");
    assert!(!p.is_ready());

    // The right key, but the signature altered in one byte, or cut short, or an error from the server.
    let good = scram_keys_of("secret");
    let (_, server_final) = keyed_exchange_until_final(good.clone());
    let mut signature = unb64(server_final.strip_prefix("v=").unwrap());
    signature[31] ^= 1;
    for bad in [
        format!("v={}", b64(&signature)),
        format!("v={}", b64(&signature[..31])),
        "e=invalid-proof".to_string(),
        "x=1".to_string(),
        "v=".to_string(),
    ] {
        let (mut p, _) = keyed_exchange_until_final(good.clone());
        p.handle_input(&auth(12, bad.as_bytes()));
        let err = p.poll_startup().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Auth, "{bad}: {err}");
    }
}

#[test]
fn scram_with_keys_checks_the_server_first_message() {
    let keys = scram_keys_of("secret");
    let started = || {
        let mut p = keyed_protocol(keys.clone(), None, ChannelBinding::Prefer, None);
        p.handle_input(&sasl_offer(&["SCRAM-SHA-256"]));
        p.poll_startup().unwrap();
        let (_, client_first) = initial_response(&drain(&mut p));
        let nonce = client_first.strip_prefix("n,,n=,r=").unwrap().to_string();
        (p, nonce)
    };
    // NONCE stands for the client nonce of each exchange, SALT for a valid salt.
    for template in [
        // The server nonce must extend the client's.
        "r=someone-elseNONCE,s=SALT,i=4096",
        "r=NONCE,s=SALT,i=4096",
        "r=NONCE!,s=SALT,i=4096",
        // Exactly r=, s=, i=, each well formed.
        "r=NONCEx,s=SALT",
        "r=NONCEx,s=SALT,i=4096,m=ext",
        "s=SALT,r=NONCEx,i=4096",
        "r=NONCEx,s=,i=4096",
        "r=NONCEx,s=!!!,i=4096",
        "r=NONCEx,s=SALT,i=0",
        "r=NONCEx,s=SALT,i=04096",
        "r=NONCEx,s=SALT,i=12345678901",
        "r=NONCE x,s=SALT,i=4096",
    ] {
        let (mut p, nonce) = started();
        let mut short = nonce.clone();
        short.pop();
        let bad = template
            .replace("NONCE!", &short)
            .replace("NONCE", &nonce)
            .replace("SALT", &b64(SALT));
        p.handle_input(&auth(11, bad.as_bytes()));
        let err = p.poll_startup().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Auth, "{bad}: {err}");
        assert!(drain(&mut p).is_empty(), "{bad}: no client-final message");
    }
}

#[test]
fn malformed_scram_server_first_is_refused() {
    for tail in [
        "s=c2FsdA==,i=4096",                     // no nonce
        "r=NONCE,i=4096",                        // no salt
        "r=NONCE,s=c2FsdA==",                    // no count
        "r=NONCE,s=c2FsdA==,i=0",                // zero
        "r=NONCE,s=c2FsdA==,i=04096",            // leading zero
        "r=NONCE,s=c2FsdA==,i=4096,x=extension", // trailing attribute
        "r=NONCE,s=c2FsdA==,i=99999999999",      // more than ten digits
        "r=NONCE,s=c2F sdA==,i=4096",            // not base64
        "m=mandatory,r=NONCE,s=c2FsdA==,i=4096", // mandatory extension
    ] {
        let (mut p, nonce) = scram_started(100_000);
        let server_first = tail.replace("NONCE", &format!("{nonce}x"));
        p.handle_input(&auth(11, server_first.as_bytes()));
        let err = p.poll_startup().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Auth, "{tail}");
        assert!(drain(&mut p).is_empty(), "{tail}");
    }
}

#[test]
fn scram_wrong_server_signature_is_refused() {
    let (mut p, nonce) = scram_started(100_000);
    let server = ScramServer::start("secret", &format!("n,,n=,r={nonce}"), ITERATIONS);
    p.handle_input(&auth(11, server.server_first.as_bytes()));
    p.poll_startup().unwrap();
    let client_final = sasl_response(&drain(&mut p));
    let (_, good) = server.finish(&client_final);
    // A server that does not know the password (here: one bit of its signature off).
    let mut signature = unb64(good.strip_prefix("v=").unwrap());
    signature[0] ^= 1;
    p.handle_input(&auth(12, format!("v={}", b64(&signature)).as_bytes()));
    let err = p.poll_startup().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Auth);
    assert!(err.to_string().contains("verification"), "{err}");
    assert!(p.is_closed());
    // The genuine signature would have passed.
    let (mut p, nonce) = scram_started(100_000);
    let client_first = format!("n,,n=,r={nonce}");
    complete_scram(&mut p, &client_first);
}

// ---- Outbound limits ----

#[test]
fn oversized_frontend_message_is_refused_and_the_connection_stays_usable() {
    let mut p = ready_protocol();
    let before = p.poll_transmit().len();
    // A Query whose length word claims one byte more than the server accepts: only the header is written,
    // since the check reads headers (writing a real 1 GiB message would be the same path, only slower).
    let err = p
        .queue_request(Flow::Simple, None, |buf| {
            buf.put_u8(b'Q');
            buf.put_u32(0x3fff_ffff);
            Ok(())
        })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(!err.is_connection_broken());
    assert!(
        err.to_string()
            .contains("Query message of 1073741823 bytes"),
        "{err}"
    );
    assert_eq!(p.poll_transmit().len(), before, "nothing was queued");
    assert!(!p.has_pending());
    assert!(!p.is_closed());
    // The next request goes through.
    let id = p
        .queue_request(Flow::Simple, None, |buf| {
            postgres_protocol::message::frontend::query("SELECT 1", buf).unwrap();
            Ok(())
        })
        .unwrap();
    drain(&mut p);
    p.handle_input(&[command_complete("SELECT 0"), ready(b'I')].concat());
    assert!(responses(&mut p).iter().all(|r| r.request == id));
}

#[test]
fn bind_carries_up_to_65535_parameters() {
    let mut p = ready_protocol();
    p.queue_request(Flow::Extended(1), None, |buf| {
        check_parameter_count(65_535)?;
        postgres_protocol::message::frontend::bind(
            "",
            "",
            [1i16],
            std::iter::repeat_n((), 65_535),
            |(), _| Ok(postgres_protocol::IsNull::Yes),
            [1i16],
            buf,
        )
        .map_err(|_| Error::config("encoding failed"))?;
        Ok(())
    })
    .unwrap();
    let sent = frontend_messages(&drain(&mut p));
    // portal, statement, one format, then the parameter count read as unsigned.
    assert_eq!(&sent[0].1[6..8], &[0xff, 0xff]);

    // One more is refused with the limit named, before anything is encoded.
    let err = p
        .queue_request(Flow::Extended(1), None, |_| check_parameter_count(65_536))
        .unwrap_err();
    assert!(
        err.to_string().contains("at most 65535 parameters"),
        "{err}"
    );
    assert_eq!(p.pending.len(), 1, "only the first request is pending");
}

// ---- CopyBoth (replication) ----

/// Queues `START_REPLICATION ...` as a request that may stream, and has the server enter CopyBoth.
fn in_copy_both() -> (Protocol, RequestId) {
    let mut p = ready_protocol();
    let id = p
        .queue_copy(Flow::Simple, |buf| {
            frontend::query("START_REPLICATION SLOT s LOGICAL 0/0", buf).map_err(encode_error)
        })
        .unwrap();
    drain(&mut p);
    p.handle_input(&copy_response(b'W', 0, &[]));
    let got = responses(&mut p);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].request, id);
    assert!(matches!(got[0].message, Backend::CopyBoth));
    (p, id)
}

#[test]
fn copy_both_streams_both_ways_and_ends_with_both_copy_dones() {
    let (mut p, id) = in_copy_both();
    // The server streams; the client answers in the same mode.
    p.handle_input(&copy_data(b"k-keepalive"));
    let got = responses(&mut p);
    assert!(matches!(&got[0].message, Backend::CopyData(d) if &d[..] == b"k-keepalive"));
    p.queue_copy_data(id, b"r-status").unwrap();
    assert_eq!(
        frontend_messages(&drain(&mut p)),
        vec![(b'd', b"r-status".to_vec())]
    );
    // The client ends its half; the server may still send until its own CopyDone.
    p.queue_copy_done(id).unwrap();
    assert_eq!(frontend_messages(&drain(&mut p)), vec![(b'c', Vec::new())]);
    assert!(
        p.queue_copy_data(id, b"late").is_err(),
        "data after our CopyDone"
    );
    p.handle_input(
        &[
            copy_data(b"w-last"),
            copy_done(),
            command_complete("START_REPLICATION"),
            ready(b'I'),
        ]
        .concat(),
    );
    let got = responses(&mut p);
    assert_eq!(got.len(), 4);
    assert!(matches!(&got[0].message, Backend::CopyData(d) if &d[..] == b"w-last"));
    assert!(matches!(
        got[1].message,
        Backend::Message(Message::CopyDone)
    ));
    assert!(matches!(got[3].message, Backend::Ready));
    assert!(!p.has_pending());
    // The connection is back to normal requests.
    p.queue_request(Flow::Simple, None, |_| Ok(())).unwrap();
}

#[test]
fn copy_both_ended_by_the_server_first_leaves_our_half_open() {
    // The end of a timeline: the server's CopyDone first. Keepalives it sends before it reads ours still go
    // to the request; our half stays open until our CopyDone.
    let (mut p, id) = in_copy_both();
    p.handle_input(&[copy_done(), copy_data(b"k-keepalive")].concat());
    let got = responses(&mut p);
    assert!(matches!(
        got[0].message,
        Backend::Message(Message::CopyDone)
    ));
    assert!(matches!(&got[1].message, Backend::CopyData(d) if &d[..] == b"k-keepalive"));
    p.queue_copy_data(id, b"still ours").unwrap();
    p.queue_copy_done(id).unwrap();
    assert_eq!(
        frontend_messages(&drain(&mut p)),
        vec![(b'd', b"still ours".to_vec()), (b'c', Vec::new())]
    );
    // The next timeline's result set, then the command's end.
    p.handle_input(
        &[
            copy_data(b"k-late"),
            row_description(&["next_tli", "next_tli_startpos"]),
            data_row(&[Some("2"), Some("0/3000000")]),
            command_complete("SELECT"),
            command_complete("START_REPLICATION"),
            ready(b'I'),
        ]
        .concat(),
    );
    assert_eq!(responses(&mut p).len(), 6);
    assert!(!p.has_pending());
    // A second CopyDone of the server is an error.
    let (mut p, _) = in_copy_both();
    p.handle_input(&[copy_done(), copy_done()].concat());
    assert!(p.poll_response().unwrap().is_some());
    assert!(p.poll_response().is_err());
    // A stream abandoned after the server's CopyDone ends with our CopyDone, not CopyFail.
    let (mut p, id) = in_copy_both();
    p.handle_input(&copy_done());
    responses(&mut p);
    p.abandon_copy_in(id, "dropped");
    assert_eq!(frontend_messages(&drain(&mut p)), vec![(b'c', Vec::new())]);
}

#[test]
fn copy_both_error_and_abandon() {
    // An error ends CopyBoth; ReadyForQuery follows.
    let (mut p, id) = in_copy_both();
    p.handle_input(&[error_response("ERROR", "XX000", "slot gone"), ready(b'I')].concat());
    let got = responses(&mut p);
    assert!(matches!(got[0].message, Backend::Error(_)));
    assert!(p.queue_copy_data(id, b"x").is_err());
    assert!(!p.has_pending());

    // A stream whose reader went away is ended with CopyDone, not CopyFail.
    let (mut p, id) = in_copy_both();
    p.abandon_copy_in(id, "dropped");
    assert_eq!(frontend_messages(&drain(&mut p)), vec![(b'c', Vec::new())]);
    p.handle_input(
        &[
            copy_data(b"w"),
            copy_done(),
            command_complete("START_REPLICATION"),
            ready(b'I'),
        ]
        .concat(),
    );
    assert_eq!(responses(&mut p).len(), 4);
    assert!(!p.has_pending());
}

#[test]
fn copy_both_only_for_a_request_that_streams() {
    // A request queued without a streaming caller (a plain query, or a stream whose caller went away before
    // the answer): our half is ended with CopyDone at once, and the request reads the rest.
    let mut p = ready_protocol();
    let id = p.queue_request(Flow::Simple, None, |_| Ok(())).unwrap();
    p.handle_input(&copy_response(b'W', 0, &[]));
    let got = responses(&mut p);
    assert_eq!(got[0].request, id);
    assert!(matches!(got[0].message, Backend::CopyBoth));
    assert_eq!(frontend_messages(&drain(&mut p)), vec![(b'c', Vec::new())]);
    p.handle_input(
        &[
            copy_data(b"w"),
            copy_done(),
            command_complete("START_REPLICATION"),
            ready(b'I'),
        ]
        .concat(),
    );
    assert_eq!(responses(&mut p).len(), 4);
    assert!(!p.has_pending());
    // Nor with requests pipelined behind it.
    let mut p = ready_protocol();
    p.queue_copy(Flow::Simple, |_| Ok(())).unwrap();
    p.queue_request(Flow::Simple, None, |_| Ok(())).unwrap();
    p.handle_input(&copy_response(b'W', 0, &[]));
    assert!(p.poll_response().is_err());
    // Malformed bodies.
    for body in [
        vec![],
        vec![0],
        vec![2, 0, 0],
        vec![0, 0, 1],
        vec![0, 0, 1, 0, 1],
        vec![0, 0xff, 0xff],
        vec![0, 0, 0, 9],
    ] {
        let mut p = ready_protocol();
        p.queue_copy(Flow::Simple, |_| Ok(())).unwrap();
        p.handle_input(&msg(b'W', &body));
        assert!(
            p.poll_response().is_err(),
            "CopyBothResponse body {body:?} accepted"
        );
    }
}

// Lending rows (`lend_data_row`): the rows stay in the inbound buffer, read ahead of it, and are taken off
// when anything else reads it; whatever is not a well-formed row of the request goes the general way.

/// The fields of the row lent now, as owned values.
fn lent_fields(p: &Protocol) -> Vec<Option<String>> {
    let view = p.lent_row().expect("a row is lent");
    (0..view.len())
        .map(|i| {
            view.field(i)
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
        })
        .collect()
}

/// A protocol with an Execute of a described statement (2 columns) queued; its id.
fn lending_protocol() -> (Protocol, RequestId) {
    let mut p = ready_protocol();
    let id = p
        .queue_request(Flow::Extended(1), Some(2), |_| Ok(()))
        .unwrap();
    p.handle_input(&msg(b'2', &[]));
    assert!(matches!(
        responses(&mut p)[..],
        [Response {
            message: Backend::Message(Message::BindComplete),
            ..
        }]
    ));
    (p, id)
}

#[test]
fn lent_rows_come_in_order_and_leave_the_buffer_together() {
    let (mut p, id) = lending_protocol();
    let wide: String = "w".repeat(200);
    p.handle_input(
        &[
            data_row(&[Some("1"), None]),
            data_row(&[Some(""), Some(&wide)]),
            command_complete("SELECT 2"),
            ready(b'I'),
        ]
        .concat(),
    );
    assert!(p.lend_data_row(id).is_some());
    assert_eq!(lent_fields(&p), [Some("1".to_string()), None]);
    assert!(p.lend_data_row(id).is_some());
    assert_eq!(lent_fields(&p), [Some(String::new()), Some(wide)]);
    // CommandComplete is not a row: the general way takes it, after both rows left the buffer.
    assert!(p.lend_data_row(id).is_none());
    assert!(
        p.lent_row().is_some(),
        "the last row stays lent until another read"
    );
    let rest = responses(&mut p);
    assert!(p.lent_row().is_none());
    assert!(matches!(
        &rest[..],
        [
            Response {
                message: Backend::Message(Message::CommandComplete(_)),
                ..
            },
            Response {
                message: Backend::Ready,
                ..
            }
        ]
    ));
    assert!(!p.has_pending());
}

#[test]
fn a_row_cut_off_is_lent_once_it_is_whole() {
    let (mut p, id) = lending_protocol();
    let rows = [
        data_row(&[Some("a"), Some("b")]),
        data_row(&[Some("c"), None]),
    ]
    .concat();
    let first = data_row(&[Some("a"), Some("b")]).len();
    // Every split of the two rows: the part that arrived is lent, the rest waits for its bytes.
    for cut in 0..=rows.len() {
        let (mut p, id) = lending_protocol();
        p.handle_input(&rows[..cut]);
        let mut seen = Vec::new();
        while p.lend_data_row(id).is_some() {
            seen.push(lent_fields(&p));
        }
        p.handle_input(&rows[cut..]);
        while p.lend_data_row(id).is_some() {
            seen.push(lent_fields(&p));
        }
        assert_eq!(
            seen,
            [
                vec![Some("a".to_string()), Some("b".to_string())],
                vec![Some("c".to_string()), None]
            ],
            "cut at {cut} of {} (first row {first} bytes)",
            rows.len()
        );
        assert!(p.all_read());
    }
    // Rows of another request are not lent to this one.
    p.handle_input(&data_row(&[Some("x"), Some("y")]));
    assert!(p.lend_data_row(id + 1).is_none());
    assert!(p.lend_data_row(id).is_some());
}

#[test]
fn malformed_lent_rows_fail_the_general_way() {
    let good = data_row(&[Some("ab"), Some("c")]);
    let wrong_count = data_row(&[Some("ab"), Some("c"), None]);
    let mut too_long = good.clone();
    too_long[10] = 99;
    let mut minus_two = good.clone();
    minus_two[7..11].copy_from_slice(&(-2i32).to_be_bytes());
    let trailing = {
        let mut row = good.clone();
        row.push(0);
        let len = u32::try_from(row.len() - 1).unwrap();
        row[1..5].copy_from_slice(&len.to_be_bytes());
        row
    };
    for (row, expected) in [
        (wrong_count, "fields but its RowDescription has 2 columns"),
        (too_long, "malformed DataRow"),
        (minus_two, "invalid field length -2"),
        (trailing, "bytes after the last field"),
    ] {
        let (mut p, id) = lending_protocol();
        p.handle_input(&[good.clone(), row].concat());
        assert!(p.lend_data_row(id).is_some(), "the good row is lent");
        assert!(
            p.lend_data_row(id).is_none(),
            "a malformed row is never lent"
        );
        let Err(err) = p.poll_response() else {
            panic!("a malformed row must fail the connection");
        };
        assert!(err.to_string().contains(expected), "{err}");
        assert!(err.is_connection_broken());
        assert!(p.is_closed());
        assert!(p.lend_data_row(id).is_none(), "nothing is lent after that");
    }
}

#[test]
fn lent_rows_leave_the_buffer_before_new_input() {
    let (mut p, id) = lending_protocol();
    p.handle_input(&data_row(&[Some("1"), Some("2")]));
    assert!(p.lend_data_row(id).is_some());
    // A read appends to the buffer: the lent row goes first, so the buffer does not grow with the result.
    for n in 0..1000 {
        p.handle_input(&data_row(&[Some(&n.to_string()), Some("2")]));
        assert!(p.lend_data_row(id).is_some());
        assert_eq!(lent_fields(&p)[0].as_deref(), Some(n.to_string().as_str()));
    }
    assert!(p.inbound.capacity() < 4096, "{}", p.inbound.capacity());
    // End of stream with every row read: closed.
    p.handle_eof();
    assert!(p.is_closed());
}
