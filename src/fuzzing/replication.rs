//! [`replication`]: a logical replication stream, from the server's CopyBoth bytes to typed column values.
//!
//! Two shapes, picked by the first byte:
//! - **stream** (even): a scripted server logs the client in, then answers `START_REPLICATION` with the
//!   input's bytes (a CopyBothResponse and CopyData messages, as recorded from PostgreSQL, or anything else),
//!   cut into reads of the input's size. The client reads it through [`Client::start_logical_replication`]
//!   to its end or its first error, reads every column of every change by name as text, integer, float,
//!   boolean and bytea, and acknowledges positions by one of four policies; then it stops the stream and
//!   runs a query.
//! - **decoder** (odd): the rest is pieces (two bytes of length, then the bytes), each one the payload of a
//!   CopyData: parsed as a replication message, and decoded by [`PgOutputDecoder`] on its own, with every
//!   change read through [`TupleRow`] against the relations decoded before it.
//!
//! Invariants, beyond no panic and no hang: every message the client writes once streaming is well-formed
//! (a 34-byte standby status update in CopyData, CopyDone, a Query or Terminate); the flushed position it
//! reports never goes back, and never passes both what the application acknowledged and every position the
//! server named; a closed client answers no query.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;

use super::pipeline::Scripted;
use super::{Input, message, violated};
use crate::proto::scripted::{parameter_status, ready};
use crate::replication::{
    LogicalMessage, Lsn, PgOutputDecoder, PgOutputOptions, Relation, ServerMessage, Tuple,
    TupleRow, parse_server_message,
};
use crate::{Client, Config, Transport};

/// Polls of one future before the harness calls it a hang: every poll reads, writes or fails.
const MAX_POLLS: usize = 200_000;
/// Events read from one stream at most (an input is a few KiB, so this is never the limit by accident).
const MAX_EVENTS: usize = 10_000;

/// Runs a fuzzer's input: shape, read size, acknowledgement policy, two bytes of start position, then the
/// server's bytes (stream) or the CopyData payloads (decoder).
pub fn replication(data: &[u8]) {
    let mut input = Input(data);
    if input.byte() & 1 == 1 {
        let _ = Header::read(&mut input);
        decode_pieces(input);
    } else {
        run_stream(input);
    }
}

/// What one stream-shaped input did, for the tests that check the recorded seeds go all the way.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Debug, Default)]
pub(super) struct StreamStats {
    /// Decoded messages handed to the application.
    pub(super) events: usize,
    /// The stream ended cleanly (the server's CopyDone, command end and ReadyForQuery).
    pub(super) ended: bool,
    /// Status updates the client sent, each checked.
    pub(super) status_updates: usize,
    /// The highest position the client reported flushed.
    pub(super) flushed: Lsn,
}

/// Runs a stream-shaped input (as [`replication`] does) and says what happened.
#[cfg(test)]
pub(super) fn stream_stats(data: &[u8]) -> StreamStats {
    let mut input = Input(data);
    let _shape = input.byte();
    run_stream(input)
}

/// The bytes after the shape: how the stream is read and acknowledged, and where it starts.
struct Header {
    read_size: usize,
    policy: Ack,
    start: Lsn,
}

impl Header {
    fn read(input: &mut Input<'_>) -> Header {
        Header {
            read_size: match input.byte() {
                0 => usize::MAX,
                n => usize::from(n),
            },
            policy: Ack::from(input.byte()),
            start: Lsn(u64::from(input.u16()) << 16),
        }
    }
}

/// What the harness's application acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ack {
    Never,
    /// The end of each transaction to apply (Commit, Stream Commit, Prepare, Stream Prepare, Commit Prepared).
    TransactionEnds,
    /// The start of every message (more than a careful application would).
    EveryMessage,
    /// The server's WAL end of every message.
    ServerEnd,
}

impl From<u8> for Ack {
    fn from(byte: u8) -> Ack {
        match byte % 4 {
            0 => Ack::Never,
            1 => Ack::TransactionEnds,
            2 => Ack::EveryMessage,
            _ => Ack::ServerEnd,
        }
    }
}

fn decode_pieces(mut input: Input<'_>) {
    let mut decoder = PgOutputDecoder::new();
    let mut relations: HashMap<u32, Relation> = HashMap::new();
    while !input.0.is_empty() {
        let len = usize::from(input.u16());
        let piece = Bytes::copy_from_slice(input.take(len));
        let _ = parse_server_message(piece.clone());
        if let Ok(message) = decoder.decode(piece) {
            read_message(&message, |oid| relations.get(&oid));
            if let LogicalMessage::Relation(relation) = message {
                relations.insert(relation.oid, relation);
            }
        }
    }
}

/// Reads every column of every tuple of a change, by name and as several types; errors are fine.
fn read_message<'r>(message: &LogicalMessage, relation: impl Fn(u32) -> Option<&'r Relation>) {
    let (oid, tuples): (u32, Vec<&Tuple>) = match message {
        LogicalMessage::Insert(insert) => (insert.relation, vec![&insert.new]),
        LogicalMessage::Update(update) => (
            update.relation,
            update
                .old
                .iter()
                .map(|old| old.tuple())
                .chain([&update.new])
                .collect(),
        ),
        LogicalMessage::Delete(delete) => (delete.relation, vec![delete.old.tuple()]),
        _ => return,
    };
    let Some(relation) = relation(oid) else {
        return;
    };
    for tuple in tuples {
        let Ok(row) = TupleRow::new(relation, tuple) else {
            continue;
        };
        for column in &relation.columns {
            let name = column.name.as_str();
            let _ = row.value(name);
            let _ = row.get::<Option<String>>(name);
            let _ = row.get::<Option<i64>>(name);
            let _ = row.get::<Option<i32>>(name);
            let _ = row.get::<Option<f64>>(name);
            let _ = row.get::<Option<bool>>(name);
            let _ = row.get::<Option<Vec<u8>>>(name);
        }
    }
}

fn run_stream(mut input: Input<'_>) -> StreamStats {
    let Header {
        read_size,
        policy,
        start,
    } = Header::read(&mut input);
    let server = input.rest();
    // The stream's status-update timer needs the runtime's clock; the harness polls by hand and never waits.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap_or_else(|e| violated(format_args!("a runtime for the harness: {e}")));
    let _entered = runtime.enter();
    let written = Written::default();
    let transport = Recording {
        server: Scripted::new(vec![startup_answer(), server.to_vec()], read_size, false),
        written: written.clone(),
        writes: 0,
    };
    let config = Config::parse("user=fuzz dbname=fuzz replication=database sslmode=disable")
        .unwrap_or_else(|e| violated(format_args!("the harness config: {e}")));
    let mut client = match block_on(Client::connect_with_transport(Box::new(transport), &config)) {
        Ok(client) => client,
        Err(e) => violated(format_args!("the scripted startup failed: {e}")),
    };
    let options = PgOutputOptions::new(["fuzz_pub"]);
    let mut acknowledged = start;
    let mut stats = StreamStats::default();
    // A refused start (any error) leaves nothing to read; the query after it still runs.
    if let Ok(mut stream) = block_on(client.start_logical_replication("fuzz_slot", start, &options))
    {
        for _ in 0..MAX_EVENTS {
            match block_on(stream.next()) {
                Ok(Some(event)) => {
                    stats.events += 1;
                    read_message(&event.message, |oid| stream.relation(oid));
                    let lsn = match (policy, &event.message) {
                        (Ack::Never, _) => None,
                        (Ack::TransactionEnds, message) => transaction_end(message),
                        (Ack::EveryMessage, _) => Some(event.wal_start),
                        (Ack::ServerEnd, _) => Some(event.wal_end),
                    };
                    if let Some(lsn) = lsn {
                        stream.acknowledge(lsn);
                        acknowledged = acknowledged.max(lsn);
                    }
                }
                Ok(None) => {
                    stats.ended = true;
                    break;
                }
                Err(_) => {
                    // A second call after an error ends or fails again; it must not panic.
                    let _ = block_on(stream.next());
                    break;
                }
            }
        }
        let _ = block_on(stream.stop());
    }
    let after = block_on(client.simple_query("SELECT 1"));
    if client.is_closed() && after.is_ok() {
        violated(format_args!("a closed client answered a query"));
    }
    (stats.status_updates, stats.flushed) =
        check_written(&written.take(), start, acknowledged, server);
    stats
}

/// The end position of a message that completes a transaction the application applies.
fn transaction_end(message: &LogicalMessage) -> Option<Lsn> {
    match message {
        LogicalMessage::Commit(commit) => Some(commit.end_lsn),
        LogicalMessage::StreamCommit(commit) => Some(commit.end_lsn),
        LogicalMessage::Prepare(prepared) | LogicalMessage::StreamPrepare(prepared) => {
            Some(prepared.end_lsn)
        }
        LogicalMessage::CommitPrepared(prepared) => Some(prepared.end_lsn),
        _ => None,
    }
}

/// Checks what the client wrote after `START_REPLICATION`; returns how many status updates it sent and the
/// last position they reported flushed.
fn check_written(written: &[u8], start: Lsn, acknowledged: Lsn, server: &[u8]) -> (usize, Lsn) {
    let mut updates = 0;
    let named = positions_named(server);
    let mut last_flush = Lsn(0);
    let mut rest = written;
    while !rest.is_empty() {
        let Some((tag, body, after)) = split_frame(rest) else {
            violated(format_args!("the client wrote a cut message: {rest:?}"));
        };
        rest = after;
        match tag {
            b'd' => {
                if body.len() != 34 || body[0] != b'r' {
                    violated(format_args!(
                        "the client sent CopyData other than a status update: {body:?}"
                    ));
                }
                let lsn = |at: usize| {
                    let mut word = [0u8; 8];
                    word.copy_from_slice(&body[at..at + 8]);
                    Lsn(u64::from_be_bytes(word))
                };
                let (write, flush, apply) = (lsn(1), lsn(9), lsn(17));
                if write != flush || flush != apply {
                    violated(format_args!(
                        "a status update with write {write}, flush {flush}, apply {apply}"
                    ));
                }
                if flush < last_flush {
                    violated(format_args!(
                        "the flushed position went back from {last_flush} to {flush}"
                    ));
                }
                if flush > start.max(acknowledged).max(named) {
                    violated(format_args!(
                        "flushed {flush}: past the start {start}, the application's {acknowledged} and every \
                         position the server named (up to {named})"
                    ));
                }
                last_flush = flush;
                updates += 1;
            }
            b'c' | b'Q' | b'X' => {}
            other => violated(format_args!(
                "the client sent a message {:?} while streaming",
                other as char
            )),
        }
    }
    (updates, last_flush)
}

/// The largest WAL end named by a well-formed XLogData or keepalive in the server's bytes.
fn positions_named(mut server: &[u8]) -> Lsn {
    let mut named = Lsn(0);
    while let Some((tag, body, rest)) = split_frame(server) {
        server = rest;
        if tag != b'd' {
            continue;
        }
        match parse_server_message(Bytes::copy_from_slice(body)) {
            Ok(
                ServerMessage::XLogData { wal_end, .. } | ServerMessage::Keepalive { wal_end, .. },
            ) => named = named.max(wal_end),
            Err(_) => {}
        }
    }
    named
}

/// One tagged message: tag, body, what follows; `None` if `bytes` holds no whole message.
fn split_frame(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let len = usize::try_from(u32::from_be_bytes(rest.get(..4)?.try_into().ok()?)).ok()?;
    let body = rest.get(4..len)?;
    Some((tag, body, &rest[len..]))
}

/// Trust authentication, the parameters the client needs, backend key data, ReadyForQuery.
fn startup_answer() -> Vec<u8> {
    [
        message(b'R', &0u32.to_be_bytes()),
        parameter_status("standard_conforming_strings", "on"),
        parameter_status("server_version", "15.0"),
        message(b'K', &[0, 0, 0x10, 0x92, 0, 0, 0x5e, 0xed]),
        ready(),
    ]
    .concat()
}

/// The pipeline harness's scripted server with one turn per write (the startup answer, then the whole stream),
/// keeping everything written from the third write on (after the startup and `START_REPLICATION`).
struct Recording {
    server: Scripted,
    written: Written,
    writes: usize,
}

/// What the client wrote, readable after the transport moved into the client.
#[derive(Clone, Default)]
struct Written(Arc<Mutex<Vec<u8>>>);

impl Written {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Transport for Recording {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.server.poll_read(cx, buf)
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.writes += 1;
        if self.writes > 2 {
            (self.written.0.lock().unwrap_or_else(|e| e.into_inner())).extend_from_slice(buf);
        }
        self.server.poll_write(cx, buf)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.server.poll_flush(cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.server.poll_shutdown(cx)
    }
}

/// Polls `future` to its end; [`MAX_POLLS`] polls without an end is a hang.
fn block_on<F: Future>(future: F) -> F::Output {
    super::block_on(future, MAX_POLLS)
}
