//! The `replication` seeds: logical replication sessions recorded from a real server. A replication connection
//! (the client itself, over a transport that keeps what it reads) makes a temporary slot and starts a
//! `pgoutput` stream while a second connection runs DML that makes every message kind PostgreSQL 15 sends:
//! relations and a type, inserts, updates and deletes with old and key tuples, a truncate, transactional and
//! non-transactional messages, a transaction large enough to be streamed (with an aborted subtransaction), one
//! streamed and aborted, and two-phase commits and rollbacks. A last message ends the recording; everything
//! the server sent from `START_REPLICATION` on is the seed.
//!
//! The server must run `wal_level = logical` with `max_prepared_transactions` above zero and let `fuzz_trust`
//! open replication connections (`scripts/record-seeds.sh` sets it up so).

use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use super::backend::USERS;
use crate::replication::{LogicalMessage, PgOutputOptions, SlotKind, SlotSnapshot, Streaming};
use crate::transport::tokio::TokioStream;
use crate::{Client, Config, Transport};

/// The prefix of the message that ends a recording.
const END: &str = "fuzz-end";

/// A recorded session: its name, its stream options and the DML whose changes it streams.
struct Session {
    name: &'static str,
    /// Protocol 3 in text with streaming, two-phase and messages; else protocol 1 in binary with messages.
    text: bool,
    dml: Vec<&'static str>,
}

/// Three sessions: the small changes in text and in binary, and the large transactions alone (streamed
/// blocks are big, and a small seed runs many times faster under the fuzzer). Returns (name, seed) pairs for
/// the `replication` target: each stream whole (shape 0), the small text one also in 13-byte reads
/// acknowledging every message, and every stream's pgoutput payloads alone (shape 1).
pub(super) fn replication_seeds(server: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("a runtime for the recorder: {e}"))?;
    let sessions = [
        Session {
            name: "proto3_text",
            text: true,
            dml: small_changes(),
        },
        Session {
            name: "proto3_streamed",
            text: true,
            dml: large_changes(),
        },
        Session {
            name: "proto1_binary",
            text: false,
            dml: small_changes(),
        },
    ];
    let mut seeds = Vec::new();
    for (i, session) in sessions.iter().enumerate() {
        let name = session.name;
        let stream = runtime
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(60), record(server, i, session)).await
            })
            .map_err(|_| format!("replication {name}: no end message within 60 s"))??;
        // Shape 0, every byte at once, acknowledging transaction ends, from position 0.
        seeds.push((
            format!("{name}_stream"),
            [&[0, 0, 1, 0, 0][..], &stream].concat(),
        ));
        if i == 0 {
            seeds.push((
                format!("{name}_small_reads"),
                [&[0, 13, 2, 0, 0][..], &stream].concat(),
            ));
        }
        seeds.push((format!("{name}_decoder"), decoder_seed(&stream)));
    }
    Ok(seeds)
}

/// Shape 1: the pgoutput payload of every XLogData in `stream`, each behind two bytes of length.
fn decoder_seed(mut stream: &[u8]) -> Vec<u8> {
    let mut seed = vec![1, 0, 0, 0, 0];
    while stream.len() >= 5 {
        let len = u32::from_be_bytes([stream[1], stream[2], stream[3], stream[4]]) as usize;
        let Some(body) = stream.get(5..1 + len) else {
            break;
        };
        // CopyData holding XLogData: 'w', start, end, time (25 bytes), then pgoutput's message.
        if stream[0] == b'd'
            && body.first() == Some(&b'w')
            && let Some(payload) = body.get(25..)
            && let Ok(n) = u16::try_from(payload.len())
        {
            seed.extend_from_slice(&n.to_be_bytes());
            seed.extend_from_slice(payload);
        }
        stream = &stream[1 + len..];
    }
    seed
}

/// Records one session (the `index`-th, which names its slot).
async fn record(server: &str, index: usize, session: &Session) -> Result<Vec<u8>, String> {
    let text = session.text;
    let (host, port) = server
        .rsplit_once(':')
        .ok_or_else(|| format!("{server}: expected HOST:PORT"))?;
    let user = USERS[0];
    let conninfo = format!("host={host} port={port} user={user} dbname=postgres sslmode=disable");
    let sql = Client::connect(&Config::parse(&conninfo).map_err(|e| e.to_string())?)
        .await
        .map_err(|e| format!("connecting to {server}: {e}"))?;
    let setup = [
        "DROP PUBLICATION IF EXISTS fuzz_pub",
        "DROP TABLE IF EXISTS fuzz_repl, fuzz_keyed",
        "DROP TYPE IF EXISTS fuzz_mood",
        "CREATE TYPE fuzz_mood AS ENUM ('calm', 'busy')",
        "CREATE TABLE fuzz_repl (id int PRIMARY KEY, name text, score float8, ok bool, data bytea, \
         at timestamptz, mood fuzz_mood, doc jsonb, tags text[])",
        "ALTER TABLE fuzz_repl REPLICA IDENTITY FULL",
        "CREATE TABLE fuzz_keyed (id int PRIMARY KEY, v text)",
        "CREATE PUBLICATION fuzz_pub FOR TABLE fuzz_repl, fuzz_keyed",
    ];
    for statement in setup {
        run(&sql, statement).await?;
    }

    let repl_conninfo =
        format!("{conninfo} replication=database options='-c logical_decoding_work_mem=64kB'");
    let tee = Tee::default();
    let socket = tokio::net::TcpStream::connect(server)
        .await
        .map_err(|e| format!("connecting to {server}: {e}"))?;
    let mut repl = Client::connect_with_transport(
        Box::new(TeeTransport {
            inner: TokioStream(socket),
            tee: tee.clone(),
        }),
        &Config::parse(&repl_conninfo).map_err(|e| e.to_string())?,
    )
    .await
    .map_err(|e| format!("a replication connection to {server}: {e}"))?;
    let slot = &format!("fuzz_slot_{index}");
    let kind = SlotKind::Logical {
        plugin: "pgoutput".into(),
        snapshot: SlotSnapshot::Nothing,
        two_phase: text,
    };
    repl.create_replication_slot(slot, true, &kind)
        .await
        .map_err(|e| format!("creating slot {slot}: {e}"))?;

    for statement in &session.dml {
        run(&sql, statement).await?;
    }
    run(
        &sql,
        &format!("SELECT pg_logical_emit_message(false, '{END}', 'end')"),
    )
    .await?;

    let mut options = PgOutputOptions::new(["fuzz_pub"]);
    options.messages = true;
    if text {
        options.proto_version = 3;
        options.streaming = Streaming::On;
        options.two_phase = true;
    } else {
        options.binary = true;
    }
    let mut stream = repl
        .start_logical_replication(slot, crate::replication::Lsn(0), &options)
        .await
        .map_err(|e| format!("START_REPLICATION on {slot}: {e}"))?;
    loop {
        let event = stream
            .next()
            .await
            .map_err(|e| format!("reading the stream of {slot}: {e}"))?
            .ok_or_else(|| format!("the stream of {slot} ended before the end message"))?;
        if let LogicalMessage::Message(message) = &event.message
            && message.prefix == END
        {
            break;
        }
    }
    stream
        .stop()
        .await
        .map_err(|e| format!("stopping the stream of {slot}: {e}"))?;
    let recorded = tee.take_from_mark();
    recorded.ok_or_else(|| "START_REPLICATION was never written".to_string())
}

/// Every kind of change in small transactions: committed, prepared then committed or rolled back.
fn small_changes() -> Vec<&'static str> {
    vec![
        "INSERT INTO fuzz_repl VALUES (1, 'one', 1.5, true, '\\x00ff', '2024-02-29 12:34:56.789+00', 'calm', \
         '{\"a\": [1, null]}', '{x,\"y z\",NULL}'), (2, NULL, 'NaN', false, '', 'infinity', 'busy', 'null', '{}')",
        "UPDATE fuzz_repl SET name = 'uno', score = -0.0 WHERE id = 1",
        "UPDATE fuzz_repl SET id = 3 WHERE id = 2",
        "DELETE FROM fuzz_repl WHERE id = 3",
        "INSERT INTO fuzz_keyed SELECT g, repeat('k', g % 7) FROM generate_series(1, 3) g",
        "UPDATE fuzz_keyed SET id = 10 WHERE id = 1",
        "DELETE FROM fuzz_keyed WHERE id = 2",
        "SELECT pg_logical_emit_message(true, 'fuzz', 'in a transaction')",
        "SELECT pg_logical_emit_message(false, 'fuzz', '\\x00fe'::bytea)",
        "TRUNCATE fuzz_keyed",
        "BEGIN",
        "INSERT INTO fuzz_repl (id, name) VALUES (20, 'prepared')",
        "PREPARE TRANSACTION 'fuzz_commit'",
        "COMMIT PREPARED 'fuzz_commit'",
        "BEGIN",
        "INSERT INTO fuzz_repl (id, name) VALUES (21, 'rolled back')",
        "PREPARE TRANSACTION 'fuzz_rollback'",
        "ROLLBACK PREPARED 'fuzz_rollback'",
    ]
}

/// Transactions just over logical_decoding_work_mem (64kB), so streamed in blocks with streaming on: one
/// committed with a subtransaction rolled back, one aborted as a whole. Rows as small as they go.
fn large_changes() -> Vec<&'static str> {
    vec![
        "DO $$ BEGIN INSERT INTO fuzz_keyed (id) SELECT g FROM generate_series(100, 620) g; \
         BEGIN INSERT INTO fuzz_keyed VALUES (621, 'gone'); RAISE EXCEPTION 'undo'; \
         EXCEPTION WHEN raise_exception THEN NULL; END; END $$",
        "DO $$ BEGIN INSERT INTO fuzz_keyed (id) SELECT g FROM generate_series(1000, 1520) g; \
         RAISE EXCEPTION 'abort'; EXCEPTION WHEN raise_exception THEN NULL; END $$",
    ]
}

async fn run(client: &Client, sql: &str) -> Result<(), String> {
    client
        .simple_query(sql)
        .await
        .map(drop)
        .map_err(|e| format!("{sql}: {e}"))
}

/// What a recording connection read, and where `START_REPLICATION` was written.
#[derive(Clone, Default)]
struct Tee(Arc<Mutex<(Vec<u8>, Option<usize>)>>);

impl Tee {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<u8>, Option<usize>)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_from_mark(&self) -> Option<Vec<u8>> {
        let (received, mark) = &*self.lock();
        mark.map(|at| received[at..].to_vec())
    }
}

struct TeeTransport {
    inner: TokioStream<tokio::net::TcpStream>,
    tee: Tee,
}

impl Transport for TeeTransport {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let polled = self.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.tee.lock().0.extend_from_slice(&buf[..n]);
        }
        polled
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.windows(17).any(|w| w == b"START_REPLICATION") {
            let mut tee = self.tee.lock();
            let at = tee.0.len();
            tee.1.get_or_insert(at);
        }
        self.inner.poll_write(cx, buf)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_flush(cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_shutdown(cx)
    }
}
