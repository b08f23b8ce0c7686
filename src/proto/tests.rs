//! Transcript tests: backend bytes in, frontend bytes and responses out, no socket anywhere.

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::message::backend::Message;

use super::*;
use crate::config::RequireAuth;
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
        require_auth: if require_auth.is_empty() {
            RequireAuth::default()
        } else {
            RequireAuth::parse(require_auth).unwrap()
        },
    }
}

fn new_protocol(password: Option<&str>, require_auth: &str) -> Protocol {
    Protocol::new(
        startup_params(password, require_auth),
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
        Some(BackendKey {
            process_id: 42,
            secret_key: 7
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
