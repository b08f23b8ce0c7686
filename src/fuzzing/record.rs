//! [`record_seeds`]: the seed corpora recorded from real sessions with a PostgreSQL server. The
//! `backend_stream` harness's own driver runs each session over a socket, so a seed is exactly what the server
//! said to the requests a fuzzer's input asks for; the `scram` and `values` seeds are cut from those sessions.
//! `fuzz/src/bin/record_seeds.rs` runs it, and `scripts/record-seeds.sh` starts the server for it.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;
use postgres_types::Type;

use super::backend::{PASSWORD, Server, USERS, drive, startup_params};

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

/// The authentication request each user of [`USERS`] must get first (AuthenticationOk, CleartextPassword,
/// MD5Password, SASL): a server set up otherwise would record sessions other than the ones named.
const AUTH_REQUESTS: [u32; 4] = [0, 3, 5, 10];

/// Records the seeds of `backend_stream` (one per session), `scram` and `values` (cut from those sessions)
/// from the server at `server` (`host:port`), and the hand-written ones of `conninfo`, `pipeline` and
/// `shared`, into `out/<target>/<name>`, replacing files of the same name, once every session went as planned
/// (else nothing is written). The server must authenticate each user of `backend.rs` by the method in its
/// name (`fuzz_trust`, `fuzz_password`, `fuzz_md5` with the password stored as md5, `fuzz_scram`), all
/// superusers with its password. Returns the names written, by target.
pub fn record_seeds(
    server: &str,
    out: &Path,
) -> Result<BTreeMap<&'static str, Vec<String>>, String> {
    let mut seeds = Seeds::default();
    for (name, setup, plan) in SESSIONS {
        let mut recorder = Recorder {
            stream: TcpStream::connect(server)
                .map_err(|e| format!("{name}: cannot connect to {server}: {e}"))?,
            received: Vec::new(),
            sent: Vec::new(),
        };
        drive(startup_params(*setup), plan, &mut recorder, usize::MAX);
        check_login(name, *setup, &recorder.received)?;
        // Shape 0x40: every exchange's bytes at once.
        let mut seed = vec![
            0x40,
            *setup,
            u8::try_from(plan.len()).expect("BUG: a plan over 255 steps"),
        ];
        seed.extend_from_slice(plan);
        seed.extend_from_slice(&recorder.received);
        seeds.add("backend_stream", name, &seed);
        match *name {
            "scram_startup" => scram_seeds(&recorder, &mut seeds)?,
            "trust_simple" | "password_extended" | "md5_copy" => {
                value_seeds(&recorder.received, &mut seeds)?
            }
            _ => {}
        }
    }
    for (name, text) in CONNINFO_SEEDS {
        seeds.add("conninfo", name, text.as_bytes());
    }
    for (name, scenario) in PIPELINE_SEEDS {
        seeds.add("pipeline", name, scenario);
    }
    for (name, script) in super::shared::seeds() {
        seeds.add("shared", name, &script);
    }
    #[cfg(all(feature = "tokio", not(target_os = "wasi")))]
    for (name, seed) in super::record_replication::replication_seeds(server)? {
        seeds.add("replication", &name, &seed);
    }
    seeds.write(out)
}

/// Fails unless the server asked for the user's authentication method and, with a password given, let it in.
fn check_login(name: &str, setup: u8, received: &[u8]) -> Result<(), String> {
    let user = usize::from(setup & 3);
    let with_password = setup & 4 == 0;
    let messages = split_messages(received);
    let requests: Vec<u32> = messages
        .iter()
        .filter(|(tag, body)| *tag == b'R' && body.len() >= 4)
        .map(|(_, body)| u32::from_be_bytes([body[0], body[1], body[2], body[3]]))
        .collect();
    let expected = AUTH_REQUESTS[user];
    if requests.first() == Some(&expected) && (!with_password || requests.contains(&0)) {
        return Ok(());
    }
    // The server's reason, if it refused the login: the message field of its ErrorResponse.
    let refusal = messages
        .iter()
        .find(|(tag, _)| *tag == b'E' && !requests.contains(&0))
        .and_then(|(_, body)| {
            body.split(|&b| b == 0)
                .find_map(|field| field.strip_prefix(b"M"))
        })
        .map_or(String::new(), |m| {
            format!(" (the server said: {})", String::from_utf8_lossy(m))
        });
    let wanted = match expected {
        0 => "0 (AuthenticationOk) at once".to_string(),
        code if with_password => format!("{code} first, then 0 (AuthenticationOk)"),
        code => format!("{code} first"),
    };
    Err(format!(
        "{name}: {} got the authentication requests {requests:?}{refusal}, expected {wanted}; is the server \
         set up as scripts/record-seeds.sh does it, with the password {PASSWORD:?}?",
        USERS[user],
    ))
}

/// The seeds recorded so far, by target and name (a later one of the same name replaces the earlier one),
/// written only once every session went as planned.
#[derive(Default)]
struct Seeds(BTreeMap<&'static str, BTreeMap<String, Vec<u8>>>);

impl Seeds {
    fn add(&mut self, target: &'static str, name: &str, data: &[u8]) {
        self.0
            .entry(target)
            .or_default()
            .insert(name.to_string(), data.to_vec());
    }

    /// Writes every seed to `out/<target>/<name>`; returns the names by target.
    fn write(self, out: &Path) -> Result<BTreeMap<&'static str, Vec<String>>, String> {
        let mut written = BTreeMap::new();
        for (target, seeds) in self.0 {
            let dir = out.join(target);
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            for (name, data) in &seeds {
                let path = dir.join(name);
                std::fs::write(&path, data)
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
            }
            written.insert(target, seeds.into_keys().collect());
        }
        Ok(written)
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
        // Idle, only notifications can come: wait briefly for them, then end the session.
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
fn value_seeds(stream: &[u8], seeds: &mut Seeds) -> Result<(), String> {
    let types = super::values::all_types();
    let index = |oid: u32| -> Option<[u8; 2]> {
        let i = types.iter().position(|t| t.oid() == oid)?;
        Some(u16::try_from(i).ok()?.to_be_bytes())
    };
    let builtin = |oid: u32| index(oid).expect("BUG: a built-in type missing from all_types");
    let mut columns: Vec<(u32, bool)> = Vec::new();
    let mut copy: Option<Vec<u8>> = None;
    for (tag, body) in split_messages(stream) {
        let len = u32::try_from(body.len() + 4).expect("BUG: a split message over 4 GiB");
        let message = [&[tag][..], &len.to_be_bytes(), body].concat();
        let Ok(Some(parsed)) = Message::parse(&mut bytes::BytesMut::from(&message[..])) else {
            continue;
        };
        match parsed {
            Message::RowDescription(body) => {
                columns = body
                    .fields()
                    .map(|f| Ok((f.type_oid(), f.format() == 1)))
                    .collect()
                    .map_err(|e| format!("a RowDescription from the server: {e}"))?;
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
                    seeds.add("values", &format!("{name}_{kind}"), &seed);
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
                    let mut seed = builtin(23).to_vec();
                    seed.push(3 | (2 << 2) | (1 << 4));
                    seed.extend(builtin(25));
                    seed.extend(builtin(17));
                    seed.extend_from_slice(&data);
                    seeds.add("values", "copy_int4_text_bytea", &seed);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The scram seeds from a recorded SCRAM login: the server's mechanism list, its server-first without the
/// client's nonce (the harness splices the new one in), its server-final, and what followed. Real servers
/// ask for 4096 iterations, above the harness's cap of 64; a second seed asks for 64 so the exchange goes on.
fn scram_seeds(recorder: &Recorder, seeds: &mut Seeds) -> Result<(), String> {
    let messages = split_messages(&recorder.received);
    let auth = |code: u32| {
        messages
            .iter()
            .find(|(tag, body)| *tag == b'R' && body.get(..4) == Some(&code.to_be_bytes()[..]))
            .map(|(_, body)| body[4..].to_vec())
            .ok_or_else(|| format!("no authentication message {code} in the SCRAM session"))
    };
    let (mechanisms, server_first, server_final) = (auth(10)?, auth(11)?, auth(12)?);
    // The SASLInitialResponse after the StartupMessage: mechanism, data length, client-first message.
    let startup_len = recorder
        .sent
        .get(..4)
        .map(|len| u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize)
        .ok_or("no StartupMessage sent")?;
    let initial = split_messages(recorder.sent.get(startup_len..).unwrap_or_default())
        .into_iter()
        .find(|(tag, _)| *tag == b'p')
        .map(|(_, body)| body)
        .ok_or("no SASLInitialResponse sent")?;
    let client_first = initial
        .iter()
        .position(|&b| b == 0)
        .and_then(|end| initial.get(end + 5..))
        .ok_or("no mechanism in the SASLInitialResponse")?;
    let at = client_first
        .windows(3)
        .position(|w| w == b",r=")
        .ok_or("no client nonce")?;
    let client_nonce = client_first[at + 3..].to_vec();
    let server_part = server_first
        .strip_prefix(b"r=".as_slice())
        .and_then(|rest| rest.strip_prefix(client_nonce.as_slice()))
        .ok_or("a server-first that does not extend the client's nonce")?;
    let final_end = recorder
        .received
        .windows(4)
        .position(|w| w == 12u32.to_be_bytes())
        .map(|at| at + 4 + server_final.len())
        .ok_or("no server-final in the stream")?;
    let after = recorder.received.get(final_end..).unwrap_or_default();
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
            seed.push(u8::try_from(piece.len()).map_err(|_| "a SCRAM message over 255 bytes")?);
            seed.extend_from_slice(piece);
        }
        seed.extend_from_slice(after);
        seeds.add("scram", name, &seed);
    }
    Ok(())
}

/// The backend messages at the start of `stream`, as (tag, body), up to the first one cut short.
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
