//! The fuzz targets under `cargo test`: random inputs for a quick property check, every seed of
//! `fuzz/seeds/<target>/`, and every input of `fuzz/regressions/<target>/` (each crash a fuzzer found, kept
//! so that it never comes back). The seeds themselves are recorded by [`record_seeds`](super::record_seeds).

use std::path::{Path, PathBuf};

use crate::Row;

use super::try_decode;

include!("feature_types.rs");

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
        "shared" => super::shared(data),
        #[cfg(all(feature = "tokio", not(target_os = "wasi")))]
        "replication" => super::replication(data),
        other => panic!("no fuzz target {other}"),
    }
}

const TARGETS: [&str; 7] = [
    "backend_stream",
    "scram",
    "conninfo",
    "values",
    "pipeline",
    "shared",
    "replication",
];

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

#[test]
fn shared_seeds_reach_every_routing_path() {
    // The hand-written scripts of `shared` (see `shared::seeds`) between them take every way an answer can
    // go, so the fuzzer starts from all of them.
    let mut total = super::shared::Stats::default();
    for (_, script) in super::shared::seeds() {
        let stats = super::shared::run(&script);
        for (sum, add) in [
            (&mut total.handed, stats.handed),
            (&mut total.routed, stats.routed),
            (&mut total.taken, stats.taken),
            (&mut total.discarded, stats.discarded),
            (&mut total.discarded_expired, stats.discarded_expired),
            (&mut total.timeouts, stats.timeouts),
            (&mut total.completed, stats.completed),
            (&mut total.adoptions, stats.adoptions),
            (&mut total.drains, stats.drains),
            (&mut total.failed, stats.failed),
        ] {
            *sum += add;
        }
    }
    let super::shared::Stats {
        handed,
        routed,
        taken,
        discarded,
        discarded_expired,
        timeouts,
        completed,
        adoptions,
        drains,
        failed,
    } = total;
    for (what, count) in [
        ("handed", handed),
        ("routed", routed),
        ("taken", taken),
        ("discarded", discarded),
        ("discarded_expired", discarded_expired),
        ("timeouts", timeouts),
        ("completed", completed),
        ("adoptions", adoptions),
        ("drains", drains),
        ("failed", failed),
    ] {
        assert!(count > 0, "no seed reaches {what}: {total:?}");
    }
}

#[cfg(all(feature = "tokio", not(target_os = "wasi")))]
#[test]
fn replication_seeds_hold_every_message_kind() {
    // The recorded sessions (see `record_replication.rs`) between them carry every pgoutput message
    // PostgreSQL 15 sends, so the fuzzer starts from all of them.
    use crate::replication::PgOutputDecoder;
    let mut kinds = std::collections::BTreeSet::new();
    for (_, path) in inputs("seeds").iter().filter(|(t, _)| *t == "replication") {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if data.first() != Some(&1) {
            continue;
        }
        let mut decoder = PgOutputDecoder::new();
        let mut rest = &data[5..];
        while rest.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            let piece = &rest[2..2 + len];
            rest = &rest[2 + len..];
            let message = decoder
                .decode(bytes::Bytes::copy_from_slice(piece))
                .unwrap_or_else(|e| {
                    panic!(
                        "{}: a recorded message does not decode: {e}",
                        path.display()
                    )
                });
            let name = format!("{message:?}");
            kinds.insert(name[..name.find(['(', ' ']).unwrap_or(name.len())].to_string());
        }
    }
    for kind in [
        "Begin",
        "Commit",
        "Relation",
        "Type",
        "Insert",
        "Update",
        "Delete",
        "Truncate",
        "Message",
        "StreamStart",
        "StreamStop",
        "StreamCommit",
        "StreamAbort",
        "BeginPrepare",
        "Prepare",
        "CommitPrepared",
        "RollbackPrepared",
    ] {
        assert!(kinds.contains(kind), "no recorded {kind}: {kinds:?}");
    }
}

#[cfg(all(feature = "tokio", not(target_os = "wasi")))]
#[test]
fn recorded_replication_streams_play_to_their_end() {
    // Each recorded stream, whole and in 13-byte reads, reaches the client's application message by message
    // to the server's clean end, and the position the client reports is the last one acknowledged.
    let mut played = 0;
    for (_, path) in inputs("seeds").iter().filter(|(t, _)| *t == "replication") {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if data.first() != Some(&0) {
            continue;
        }
        let stats = super::replication::stream_stats(&data);
        assert!(
            stats.ended && stats.events > 20 && stats.status_updates > 0 && stats.flushed.0 > 0,
            "{}: {stats:?}",
            path.display()
        );
        played += 1;
    }
    assert_eq!(played, 4, "the recorded stream seeds");
}
