//! The private directory of a server the harness runs (PostgreSQL, PgBouncer, pglite-server): created fresh
//! under /tmp, its log read back for failure messages, deleted on stop, and deleted by a reaper process too
//! when the test process goes away without stopping the server (a `static`, `exit`, SIGKILL).

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Makes directory names unique within this process.
static DIR_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh directory named `/tmp/wasi-pg-<kind>-<pid>-<counter>-<nanos>`.
///
/// Not `std::env::temp_dir()`: TMPDIR may be somewhere the `postgres` user cannot reach, or
/// long enough to push a socket path past the 107-byte limit of `sun_path`.
pub fn create(kind: &str) -> PathBuf {
    loop {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let counter = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!(
            "/tmp/wasi-pg-{kind}-{}-{counter}-{nanos}",
            std::process::id()
        ));
        match fs::create_dir(&dir) {
            Ok(()) => return dir,
            // A leftover from an earlier process with the same pid: pick another name.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create {}: {e}", dir.display()),
        }
    }
}

/// Deletes `dir` and everything in it, if it is still there. Never panics: it runs from `Drop`,
/// possibly while a test is already panicking.
pub fn remove(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir)
        && e.kind() != ErrorKind::NotFound
    {
        eprintln!("[support] cannot remove {}: {e}", dir.display());
    }
}

/// The last `lines` lines of the log at `path` (empty if there is none yet).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let log = fs::read(path).unwrap_or_default();
    let log = String::from_utf8_lossy(&log);
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `sh -c <script> reaper`, to spawn with the variables (and arguments, as `$@`) the script needs.
///
/// The script should start with `trap '' INT TERM HUP` (so that Ctrl-C on `cargo test` still
/// cleans up) and `cat >/dev/null`: it waits for EOF on its stdin, which comes when the server's
/// owner waits for it after cleaning up itself, or from the kernel when the test process dies.
/// Spawning it is best effort: without a reaper, `Drop` still cleans up in every ordinary case.
pub fn reaper(script: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .arg("reaper")
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}
