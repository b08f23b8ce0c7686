//! The fuzz targets under `cargo test`: random inputs for a quick property check, every seed of
//! `fuzz/seeds/<target>/`, and every input of `fuzz/regressions/<target>/` (each crash a fuzzer found, kept
//! so that it never comes back). Also the recorder of the `backend_stream` and `scram` seeds, run by hand
//! against a real server (see `fuzz/README.md`).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::backend::{QUERIES, Server, drive, startup_params};
use crate::Row;

/// The Rust types of the optional features, for [`values`](super::values): the fuzz target decodes the same.
fn feature_types(row: &Row) {
    use super::try_decode;
    try_decode::<chrono::NaiveDate>(row);
    try_decode::<chrono::NaiveTime>(row);
    try_decode::<chrono::NaiveDateTime>(row);
    try_decode::<chrono::DateTime<chrono::Utc>>(row);
    try_decode::<chrono::DateTime<chrono::FixedOffset>>(row);
    try_decode::<Vec<chrono::NaiveDate>>(row);
    try_decode::<time::Date>(row);
    try_decode::<time::Time>(row);
    try_decode::<time::PrimitiveDateTime>(row);
    try_decode::<time::OffsetDateTime>(row);
    try_decode::<uuid::Uuid>(row);
    try_decode::<Vec<uuid::Uuid>>(row);
    try_decode::<serde_json::Value>(row);
    try_decode::<Vec<serde_json::Value>>(row);
}

/// Runs one target's entry point on a file's bytes.
fn run(target: &str, data: &[u8]) {
    match target {
        "backend_stream" => super::backend_stream(data),
        "scram" => super::scram(data),
        "conninfo" => {
            if let Ok(text) = std::str::from_utf8(data) {
                super::conninfo(text);
            }
        }
        "values" => super::values(data, &feature_types),
        "pipeline" => super::pipeline(data),
        other => panic!("no fuzz target {other}"),
    }
}

const TARGETS: [&str; 5] = ["backend_stream", "scram", "conninfo", "values", "pipeline"];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every file under `fuzz/<kind>/<target>/`, as (target, path).
fn inputs(kind: &str) -> Vec<(&'static str, PathBuf)> {
    let mut files = Vec::new();
    for target in TARGETS {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
                .path();
            if path.is_file() {
                files.push((target, path));
            }
        }
    }
    files.sort();
    files
}

/// The address space an input may take: each one runs in a child process limited to it. The fuzzers'
/// allocator aborts on any single allocation over 16 MiB; here, without it, a reservation a count from the
/// input asked for fails against the limit instead (reserved address space counts even if never touched, as
/// with overcommit it often is not).
#[cfg(unix)]
const MAX_ADDRESS_SPACE: u64 = 4 << 30;

/// Where a child process of [`replay`] finds its input.
const CHILD_TARGET: &str = "WASI_PG_FUZZ_REPLAY_TARGET";
const CHILD_INPUT: &str = "WASI_PG_FUZZ_REPLAY_INPUT";

/// Replays each file in a child process of this test binary (so a panic or an abort names the file, and the
/// address space is limited); fails with the list of those that fail.
fn replay(kind: &str) -> usize {
    let files = inputs(kind);
    let failed: Vec<String> = files
        .iter()
        .filter_map(|(target, path)| {
            replay_one(target, path)
                .err()
                .map(|why| format!("{}: {why}", path.display()))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} inputs failed:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
    files.len()
}

#[cfg(unix)]
fn replay_one(target: &str, path: &Path) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -v {} && exec \"$0\" \"$@\"",
            MAX_ADDRESS_SPACE / 1024
        ))
        .arg(exe)
        .args([
            "--exact",
            "fuzzing::tests::replay_child",
            "--test-threads=1",
        ])
        .env(CHILD_TARGET, target)
        .env(CHILD_INPUT, path)
        .env("RUST_BACKTRACE", "0")
        .output()
        .map_err(|e| format!("cannot run the child: {e}"))?;
    if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed") {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let why: Vec<&str> = stderr
        .lines()
        .skip_while(|line| !line.contains("panicked at") && !line.contains("memory allocation"))
        .take(2)
        .collect();
    Err(format!("{} ({})", out.status, why.join(" ")))
}

/// Elsewhere: in a thread of this process, without the address space limit.
#[cfg(not(unix))]
fn replay_one(target: &str, path: &Path) -> Result<(), String> {
    let data = std::fs::read(path).map_err(|e| e.to_string())?;
    let target = target.to_string();
    std::thread::spawn(move || run(&target, &data))
        .join()
        .map_err(|_| "panicked".to_string())
}

/// The child process of [`replay_one`]: runs the input its environment names (and nothing otherwise).
#[test]
fn replay_child() {
    let (Ok(target), Ok(input)) = (std::env::var(CHILD_TARGET), std::env::var(CHILD_INPUT)) else {
        return;
    };
    let data = std::fs::read(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
    run(&target, &data);
}

#[test]
fn every_regression_input_passes() {
    replay("regressions");
}

#[test]
fn every_seed_passes() {
    let count = replay("seeds");
    assert!(count > 0, "no seeds under {}", fuzz_dir().display());
    for target in TARGETS {
        assert!(
            inputs("seeds").iter().any(|(t, _)| *t == target),
            "no seeds for {target}"
        );
    }
}

/// A deterministic xorshift stream, so failures reproduce.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[test]
fn random_inputs_never_panic() {
    for seed in 0..500 {
        for target in TARGETS {
            run(target, &bytes(seed, 64 + (seed as usize % 7) * 100));
        }
    }
}

#[test]
fn valid_prefix_then_garbage_never_panics() {
    // A trusted login (AuthenticationOk, ReadyForQuery), a plan of every kind of request, then random bytes.
    let plan: Vec<u8> = (0..8).map(|kind| kind << 4 | kind).collect();
    for seed in 0..1000u64 {
        let mut data = vec![seed as u8, 0, plan.len() as u8];
        data.extend_from_slice(&plan);
        data.extend_from_slice(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0, b'Z', 0, 0, 0, 5, b'I']);
        data.extend(bytes(seed, 256));
        super::backend_stream(&data);
    }
}

#[test]
fn random_conninfo_never_panics() {
    let alphabet = b"postgresql://user:pw@[::1]:5432,/db?=&%2F'\\ host=port=a,b;\"x";
    for seed in 0..3000 {
        let text: String = bytes(seed, 40)
            .into_iter()
            .map(|b| char::from(alphabet[usize::from(b) % alphabet.len()]))
            .collect();
        super::conninfo(&text);
    }
}

#[test]
fn correct_pipelines_give_exact_results() {
    // Every mode, size and failure pattern without a fault, with asynchronous messages everywhere, cut into
    // small reads with pauses, after an abandoned query: the harness checks the exact outcome.
    for shape in 0..12u8 {
        for failing in [0u8, 1, 2, 5, 0x3f] {
            for flags in [0u8, 1, 0x02 | 0x20, 0x1e | 0x20 | 1] {
                for read_size in [0u8, 1, 7] {
                    super::pipeline(&[shape, failing, flags, read_size, 0, 0xff, 0xff]);
                }
            }
        }
    }
}

/// What a recording connection saw: everything the server sent, everything the client sent.
struct Recorder {
    stream: TcpStream,
    received: Vec<u8>,
    sent: Vec<u8>,
}

impl Server for &mut Recorder {
    fn exchange(&mut self, sent: &[u8], idle: bool) -> Option<Vec<u8>> {
        self.sent.extend_from_slice(sent);
        self.stream.write_all(sent).ok()?;
        let wait = if idle { 300 } else { 5000 };
        self.stream
            .set_read_timeout(Some(Duration::from_millis(wait)))
            .ok()?;
        let mut buf = vec![0; 64 * 1024];
        match self.stream.read(&mut buf) {
            Ok(0) => None,
            Ok(n) => {
                self.received.extend_from_slice(&buf[..n]);
                Some(buf[..n].to_vec())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(_) => None,
        }
    }
}

/// The sessions of the `backend_stream` seed corpus: name, setup byte, plan (see `backend.rs`).
const SESSIONS: &[(&str, u8, &[u8])] = &[
    // Trust login; simple queries of rows, types, arrays, a parameter change, an empty query; Terminate.
    (
        "trust_simple",
        0x20,
        &[0x00, 0x01, 0x02, 0x03, 0x0b, 0x0e, 0x70],
    ),
    // Cleartext password; in a transaction block, extended queries with binary results, a prepared
    // statement, a portal fetched row by row, an error, a statement in the failed block.
    (
        "password_extended",
        0x21,
        &[0x0c, 0x32, 0x33, 0x41, 0x51, 0x39, 0x30, 0x70],
    ),
    // md5; COPY FROM STDIN finished and abandoned (simple), finished (extended), COPY TO STDOUT in text and
    // binary (simple and extended).
    (
        "md5_copy",
        0x22,
        &[0x06, 0x17, 0x27, 0x67, 0x0d, 0x04, 0x05, 0x35, 0x70],
    ),
    // Notifications and notices, a failed transaction block; then the idle wait.
    ("trust_notify", 0x20, &[0x08, 0x0a, 0x0c, 0x09, 0x0d, 0x08]),
    // Pipelined requests, among them a COPY FROM STDIN the core refuses.
    (
        "trust_pipelined",
        0x20,
        &[0x00, 0xb1, 0x89, 0x81, 0x87, 0xc1, 0x70],
    ),
    // Protocol 3.2 asked for: the server negotiates down (or not), then a query.
    ("trust_protocol_3_2", 0x28, &[0x00, 0x31, 0x70]),
    // The backend terminates itself in the middle of a query: FATAL.
    ("trust_terminated", 0x20, &[0x00, 0x0f, 0x00]),
    // SCRAM: replays up to the server-first (the nonce is random), and seeds the scram target.
    ("scram_startup", 0x23, &[0x00, 0x70]),
    // No password given to a server that asks for one.
    ("md5_no_password", 0x26, &[0x00]),
];

/// Records the seeds of `backend_stream` (one per session) and `scram` from a real server at
/// `FUZZ_RECORD_SERVER` (`host:port`) whose users are those of `backend.rs` with its password.
#[test]
#[ignore = "records seeds from a real server; see fuzz/README.md"]
fn record_seeds() {
    let server = std::env::var("FUZZ_RECORD_SERVER").expect("FUZZ_RECORD_SERVER=host:port");
    let _ = QUERIES;
    for (name, setup, plan) in SESSIONS {
        let mut recorder = Recorder {
            stream: TcpStream::connect(&server).expect("connect to FUZZ_RECORD_SERVER"),
            received: Vec::new(),
            sent: Vec::new(),
        };
        drive(startup_params(*setup), plan, &mut recorder, usize::MAX);
        // Shape 0x40: every exchange's bytes at once.
        let mut seed = vec![
            0x40,
            *setup,
            u8::try_from(plan.len()).expect("a short plan"),
        ];
        seed.extend_from_slice(plan);
        seed.extend_from_slice(&recorder.received);
        write_seed("backend_stream", name, &seed);
        match *name {
            "scram_startup" => record_scram_seeds(&recorder),
            "trust_simple" | "password_extended" | "md5_copy" => {
                write_value_seeds(&recorder.received)
            }
            _ => {}
        }
    }
    for (name, text) in CONNINFO_SEEDS {
        write_seed("conninfo", name, text.as_bytes());
    }
    for (name, scenario) in PIPELINE_SEEDS {
        write_seed("pipeline", name, scenario);
    }
}

/// Connection strings as users write them (the test suite's, libpq's documentation's forms).
const CONNINFO_SEEDS: &[(&str, &str)] = &[
    (
        "keywords",
        "host=127.0.0.1 port=5433 user=pgc_md5 password='md5 p@ss:1' dbname=postgres",
    ),
    (
        "url",
        "postgresql://pgc_md5:md5%20p%40ss%3A1@127.0.0.1:5433/postgres",
    ),
    (
        "multi_host_url",
        "postgresql://alice@db1:5433,db2/app?connect_timeout=10&target_session_attrs=read-write",
    ),
    (
        "tls",
        "host=db.example.com sslmode=verify-full sslrootcert=/etc/ca.pem sslnegotiation=direct \
         channel_binding=require require_auth=scram-sha-256",
    ),
    (
        "unix_and_options",
        "host=/var/run/postgresql,localhost port=5432,5433 user=app options='-c search_path=app\\ public' \
         application_name=api load_balance_hosts=random min_protocol_version=3.2",
    ),
    (
        "ipv6_url",
        "postgres://[::1]:5432,[fe80::1%25eth0]/db?sslmode=prefer&keepalives_idle=30&hostaddr=::1,127.0.0.1",
    ),
];

/// Pipeline scenarios (see `pipeline.rs`): shape, failing statements, flags, read size, fault position,
/// asynchronous-message mask, inserted bytes.
const PIPELINE_SEEDS: &[(&str, &[u8])] = &[
    ("atomic_three", &[0x04, 0, 0, 0, 0, 0, 0]),
    ("independent_second_fails", &[0x05, 0x02, 0, 0, 0, 0, 0]),
    ("atomic_second_fails", &[0x04, 0x02, 0, 0, 0, 0, 0]),
    ("atomic_commit_fails", &[0x04, 0, 0x01, 0, 0, 0, 0]),
    (
        "abandoned_query_paused_with_async",
        &[0x0b, 0x09, 0x02 | 0x0c | 0x20, 3, 0, 0xaa, 0x55],
    ),
    ("duplicated_message", &[0x04, 0, 0x80, 0, 2, 0, 0]),
    ("dropped_ready", &[0x05, 0, 0x40, 0, 4, 0, 0]),
    (
        "inserted_data_row",
        &[
            0x05, 0, 0xc0, 0, 3, 0, 0, b'D', 0, 0, 0, 10, 0, 1, 0, 0, 0, 2, b'4', b'2',
        ],
    ),
];

/// Value seeds from a recorded session: every field of every DataRow with its column's type and format, and
/// the binary COPY stream, if any.
fn write_value_seeds(stream: &[u8]) {
    use fallible_iterator::FallibleIterator;
    use postgres_types::Type;

    let types = super::values::all_types();
    let index = |oid: u32| -> Option<[u8; 2]> {
        let i = types.iter().position(|t| t.oid() == oid)?;
        Some(u16::try_from(i).ok()?.to_be_bytes())
    };
    let mut columns: Vec<(u32, bool)> = Vec::new();
    let mut copy: Option<Vec<u8>> = None;
    for (tag, body) in split_messages(stream) {
        let message = [
            &[tag][..],
            &u32::try_from(body.len() + 4).unwrap().to_be_bytes(),
            body,
        ]
        .concat();
        let Ok(Some(parsed)) = postgres_protocol::message::backend::Message::parse(
            &mut bytes::BytesMut::from(&message[..]),
        ) else {
            continue;
        };
        use postgres_protocol::message::backend::Message;
        match parsed {
            Message::RowDescription(body) => {
                columns = body
                    .fields()
                    .map(|f| Ok((f.type_oid(), f.format() == 1)))
                    .collect()
                    .unwrap();
            }
            Message::DataRow(body) => {
                let mut ranges = body.ranges();
                let mut i = 0;
                while let Ok(Some(range)) = ranges.next() {
                    let (oid, binary) = columns.get(i).copied().unwrap_or((25, false));
                    i += 1;
                    let (Some(range), Some(selector)) = (range, index(oid)) else {
                        continue;
                    };
                    let name =
                        Type::from_oid(oid).map_or(oid.to_string(), |t| t.name().to_string());
                    let mode = if binary { 0 } else { 2 };
                    let mut seed = selector.to_vec();
                    seed.push(mode);
                    seed.extend_from_slice(&body.buffer()[range]);
                    let kind = if binary { "binary" } else { "text" };
                    write_seed("values", &format!("{name}_{kind}"), &seed);
                }
            }
            Message::CopyOutResponse(body) if body.format() == 1 => copy = Some(Vec::new()),
            Message::CopyData(body) => {
                if let Some(data) = &mut copy {
                    data.extend_from_slice(body.data());
                }
            }
            Message::CopyDone => {
                if let Some(data) = copy.take() {
                    // int4, text, bytea: three columns, fed in chunks of 8 bytes.
                    let mut seed = index(23).unwrap().to_vec();
                    seed.push(3 | (2 << 2) | (1 << 4));
                    seed.extend(index(25).unwrap());
                    seed.extend(index(17).unwrap());
                    seed.extend_from_slice(&data);
                    write_seed("values", "copy_int4_text_bytea", &seed);
                }
            }
            _ => {}
        }
    }
}

/// The scram seeds from a recorded SCRAM login: the server's mechanism list, its server-first without the
/// client's nonce (the harness splices the new one in), its server-final, and what followed. Real servers
/// ask for 4096 iterations, above the harness's cap of 64; a second seed asks for 64 so the exchange goes on.
fn record_scram_seeds(recorder: &Recorder) {
    let messages = split_messages(&recorder.received);
    let auth = |code: u32| {
        messages
            .iter()
            .find(|(tag, body)| *tag == b'R' && body.get(..4) == Some(&code.to_be_bytes()[..]))
            .map(|(_, body)| body[4..].to_vec())
            .unwrap_or_else(|| panic!("no authentication message {code} in the SCRAM session"))
    };
    let (mechanisms, server_first, server_final) = (auth(10), auth(11), auth(12));
    // The SASLInitialResponse after the StartupMessage: mechanism, data length, client-first message.
    let startup_len =
        u32::from_be_bytes(recorder.sent[..4].try_into().expect("a startup")) as usize;
    let initial = split_messages(&recorder.sent[startup_len..])
        .into_iter()
        .find(|(tag, _)| *tag == b'p')
        .map(|(_, body)| body)
        .expect("a SASLInitialResponse");
    let mechanism_end = initial.iter().position(|&b| b == 0).expect("a mechanism");
    let client_first = &initial[mechanism_end + 5..];
    let at = client_first
        .windows(3)
        .position(|w| w == b",r=")
        .expect("a client nonce");
    let client_nonce = client_first[at + 3..].to_vec();
    let server_part = server_first
        .strip_prefix(b"r=".as_slice())
        .and_then(|rest| rest.strip_prefix(client_nonce.as_slice()))
        .expect("a server-first extending the client's nonce");
    let final_end = recorder
        .received
        .windows(4)
        .position(|w| w == 12u32.to_be_bytes())
        .map(|at| at + 4 + server_final.len())
        .expect("the server-final in the stream");
    let after = &recorder.received[final_end..];
    let low = String::from_utf8_lossy(server_part).replace(",i=4096", ",i=64");
    for (name, server_part) in [
        ("real_session", server_part.to_vec()),
        ("real_session_64_iterations", low.into_bytes()),
    ] {
        let mut seed = vec![0x23];
        for piece in [
            &mechanisms[..],
            &[b"r=".as_slice(), &server_part].concat(),
            &server_final[..],
        ] {
            seed.push(u8::try_from(piece.len()).expect("a short SCRAM message"));
            seed.extend_from_slice(piece);
        }
        seed.extend_from_slice(after);
        write_seed("scram", name, &seed);
    }
}

fn split_messages(mut stream: &[u8]) -> Vec<(u8, &[u8])> {
    let mut messages = Vec::new();
    while stream.len() >= 5 {
        let len = u32::from_be_bytes([stream[1], stream[2], stream[3], stream[4]]) as usize;
        let Some(body) = stream.get(5..1 + len) else {
            break;
        };
        messages.push((stream[0], body));
        stream = &stream[1 + len..];
    }
    messages
}

fn write_seed(target: &str, name: &str, data: &[u8]) {
    let dir = fuzz_dir().join("seeds").join(target);
    std::fs::create_dir_all(&dir).expect("create the seed dir");
    std::fs::write(dir.join(name), data).expect("write a seed");
}
