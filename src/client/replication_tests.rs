//! Tests of [`ReplicationStream`](super::replication_stream::ReplicationStream) over a scripted server: the end
//! of a physical stream's timeline, with the next timeline the server names.

use crate::proto::scripted::{command_complete, message, ready, text_columns, text_row};
use crate::replication::{Lsn, ServerMessage};
use crate::{ErrorKind, SimpleQueryMessage};

use super::shared_tests::{piped_client, server_sends, simple_answer};

fn keepalive(wal_end: u64) -> Vec<u8> {
    let body = [
        &[b'k'][..],
        &wal_end.to_be_bytes(),
        &0i64.to_be_bytes(),
        &[0],
    ]
    .concat();
    message(b'd', &body)
}

/// What a walsender sends for a timeline that ended: CopyBothResponse, a keepalive, its CopyDone (before ours),
/// the next timeline's result set, the command's end.
fn end_of_timeline(next: &[&str]) -> Vec<u8> {
    [
        message(b'W', &[0, 0, 0]),
        keepalive(0x3000000),
        message(b'c', b""),
        text_columns(&["next_tli", "next_tli_startpos"]),
        text_row(next),
        command_complete("SELECT"),
        command_complete("START_REPLICATION"),
        ready(),
    ]
    .concat()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

#[test]
fn the_end_of_a_timeline_names_the_next_one() {
    let (mut client, pipe) = piped_client();
    server_sends(
        &pipe,
        &[end_of_timeline(&["2", "0/3000060"]), simple_answer("1")].concat(),
    );
    runtime().block_on(async {
        let mut stream = client
            .start_physical_replication(None, Lsn(0x2000000), Some(1))
            .await
            .expect("the stream starts");
        assert_eq!(stream.next_timeline(), None);
        assert!(matches!(
            stream.next().await,
            Ok(Some(ServerMessage::Keepalive { .. }))
        ));
        assert_eq!(stream.next().await.expect("the end of the timeline"), None);
        assert_eq!(stream.next_timeline(), Some((2, Lsn(0x3000060))));
        drop(stream);
        let answer = client
            .simple_query("SELECT 1")
            .await
            .expect("the client goes on");
        assert!(matches!(
            answer.first(),
            Some(SimpleQueryMessage::RowDescription(_))
        ));
    });
}

#[test]
fn a_malformed_next_timeline_is_an_error() {
    for next in [&["two", "0/3000060"][..], &["2", "nowhere"], &["2"]] {
        let (mut client, pipe) = piped_client();
        server_sends(&pipe, &end_of_timeline(next));
        runtime().block_on(async {
            let mut stream = client
                .start_physical_replication(None, Lsn(0), None)
                .await
                .expect("the stream starts");
            assert!(stream.next().await.is_ok());
            let error = stream
                .next()
                .await
                .expect_err("a row that names no timeline");
            assert_eq!(error.kind(), ErrorKind::Protocol, "{next:?}: {error}");
        });
    }
}
