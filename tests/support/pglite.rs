//! PGlite (PostgreSQL 18 compiled to wasm) behind `pglite-server`, for one test.
//!
//! `pglite-server` comes from the npm package `@electric-sql/pglite-socket`, installed with its pinned
//! versions in `tools/pglite/node_modules` by scripts/setup.sh. It runs under Node as our child, in a process
//! group of its own, with an in-memory database (`memory://`) and the OS's choice of loopback port (`--port=0`,
//! read back from the line it prints once it listens), so there is no port to race for. Its stdout and stderr
//! go to a log in a temp dir, which is also its working directory.
//!
//! The server serves one connection at a time (`--max-connections` defaults to 1): a second connection is
//! closed as soon as it is accepted. Every connection talks to the same single PGlite backend, so session
//! state (prepared statements, temporary tables, settings, LISTEN) outlives the connection that made it.
//!
//! Like the other servers of the harness it is stopped twice over: by [`PGlite::stop`] (also run by `Drop`:
//! SIGTERM to the process group, SIGKILL if it lingers), and by a reaper process that does the same and deletes
//! the dir when the test process goes away without dropping it.
//!
//! `PGLITE_DEBUG=<0-5>` passes `--debug` to the server, which then also dumps every byte it moves into the log.

#![cfg(not(target_os = "wasi"))]
#![allow(dead_code, unreachable_pub)]

use std::fs::{self, File};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::server_dir;

/// The npm project scripts/setup.sh installs, relative to the crate root.
const TOOLS_DIR: &str = "tools/pglite";
/// The `pglite-server` entry point (the package's `bin`), relative to [`TOOLS_DIR`].
const SERVER_SCRIPT: &str = "node_modules/@electric-sql/pglite-socket/dist/scripts/server.js";
/// Loopback address the server listens on.
const HOST: &str = "127.0.0.1";
/// The log line the server prints once it listens; the JSON after it holds the port.
const LISTENING: &str = "PGLiteSocketServer listening on ";
/// How long loading PGlite may take: several seconds of CPU, far more on a loaded 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Log lines included in panic messages.
const LOG_TAIL_LINES: usize = 40;

/// A running `pglite-server` private to one test, with a fresh in-memory database. Stopped on drop.
pub struct PGlite {
    /// Always `"127.0.0.1"`.
    pub host: String,
    /// The TCP port the OS gave the server.
    pub port: u16,
    /// How long the server took to load PGlite and listen.
    pub startup: Duration,
    /// The temp dir holding the log; the server's working directory. Deleted by [`PGlite::stop`].
    root: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    /// A panic message already carries the log, so `Drop` need not print it again.
    log_reported: AtomicBool,
    /// Closing the reaper's stdin (even by the kernel at process exit) triggers its cleanup.
    reaper: Option<Child>,
}

impl PGlite {
    /// Starts `pglite-server` with an in-memory database and waits until it listens.
    ///
    /// Panics with the server's log if anything goes wrong; it never skips.
    pub fn start() -> PGlite {
        let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join(TOOLS_DIR);
        let script = tools.join(SERVER_SCRIPT);
        assert!(
            script.is_file(),
            "{} not found: run scripts/setup.sh (it runs `npm ci` in {TOOLS_DIR})",
            script.display()
        );
        let root = server_dir::create("pglite");
        let log_path = root.join("pglite-server.log");
        let mut server = PGlite {
            host: HOST.to_owned(),
            port: 0,
            startup: Duration::ZERO,
            root,
            log_path,
            child: None,
            log_reported: AtomicBool::new(false),
            reaper: None,
        };
        // From here on a panic drops `server`, which stops it and deletes the dir.
        let log = File::create(&server.log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", server.log_path.display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone the log handle: {e}"));
        let debug = std::env::var("PGLITE_DEBUG").unwrap_or_else(|_| "0".to_owned());
        let mut cmd = Command::new("node");
        cmd.arg(&script)
            .args(["--db=memory://", &format!("--host={HOST}"), "--port=0"])
            .arg(format!("--debug={debug}"))
            .current_dir(&server.root)
            // Its own process group, so stopping it reaches anything it started.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let started = Instant::now();
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start node (Node.js is needed for pglite-server): {e}")
        });
        server.reaper = server.spawn_reaper(child.id());
        server.child = Some(child);
        server.port = server.wait_until_listening();
        server.startup = started.elapsed();
        server
    }

    /// A libpq key=value connection string for the server, plaintext (it has no TLS), with `extra` appended.
    /// Any user name logs in (as `postgres`); connect_timeout keeps a stalled server from hanging the run.
    pub fn conninfo(&self, extra: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres connect_timeout=10 {extra}",
            self.host, self.port
        )
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Where the server's log (stdout and stderr) is, until [`PGlite::stop`] deletes it.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the server's log (stdout and stderr).
    pub fn log_tail(&self, lines: usize) -> String {
        server_dir::log_tail(&self.log_path, lines)
    }

    /// Stops the server (SIGTERM to its process group, then SIGKILL if it lingers) and deletes the temp dir.
    /// Idempotent; never panics (it runs from `Drop`, possibly during a panic).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate_group(&mut child);
        }
        server_dir::remove(&self.root);
        if let Some(mut reaper) = self.reaper.take() {
            // wait() closes its stdin; on that EOF the reaper finds nothing left to do.
            let _ = reaper.wait();
        }
    }

    /// Waits for the line saying the server listens, and returns the port it names.
    fn wait_until_listening(&mut self) -> u16 {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = fs::read_to_string(&self.log_path).unwrap_or_default();
            if let Some(line) = log.lines().find_map(|line| line.strip_prefix(LISTENING)) {
                return port_of(line).unwrap_or_else(|| {
                    self.fail(&format!("no port in the listening line {line:?}"))
                });
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                self.fail(&format!("pglite-server exited during startup ({status})"));
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "pglite-server did not listen within {START_TIMEOUT:?}"
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Spawns a [`server_dir::reaper`] that stops process group `pgid` (only if its leader still runs in our
    /// dir, so a recycled pid is left alone) and deletes the dir.
    fn spawn_reaper(&self, pgid: u32) -> Option<Child> {
        const SCRIPT: &str = r#"trap '' INT TERM HUP
cat >/dev/null
if [ "$(readlink "/proc/$REAP_PGID/cwd" 2>/dev/null)" = "$REAP_ROOT" ]; then
    kill -TERM "-$REAP_PGID" 2>/dev/null
    i=0
    while [ "$i" -lt 100 ] && kill -0 "$REAP_PGID" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
    kill -KILL "-$REAP_PGID" 2>/dev/null
fi
rm -rf -- "$REAP_ROOT""#;
        server_dir::reaper(SCRIPT)
            .env("REAP_PGID", pgid.to_string())
            .env("REAP_ROOT", &self.root)
            .spawn()
            .ok()
    }

    fn fail(&self, message: &str) -> ! {
        self.log_reported.store(true, Ordering::Relaxed);
        panic!(
            "PGlite::start: {message}\n--- pglite-server log {} (last {LOG_TAIL_LINES} lines) ---\n{}",
            self.log_path.display(),
            self.log_tail(LOG_TAIL_LINES)
        )
    }
}

impl Drop for PGlite {
    fn drop(&mut self) {
        if std::thread::panicking()
            && self.child.is_some()
            && !self.log_reported.load(Ordering::Relaxed)
        {
            eprintln!(
                "[support] test panicked; pglite-server log {} (last {LOG_TAIL_LINES} lines):\n{}",
                self.log_path.display(),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
        self.stop();
    }
}

/// The port in the JSON the listening line ends with: `{"port":41234,"host":"127.0.0.1"}`.
fn port_of(json: &str) -> Option<u16> {
    let start = json.find(r#""port":"#)? + r#""port":"#.len();
    let digits: String = json[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok().filter(|&port| port != 0)
}

/// SIGTERM to the child's process group (the server closes its database and exits), then SIGKILL to the group
/// after [`STOP_TIMEOUT`]; reaps the child. The server starts no processes of its own (no `--run`), so a
/// leader that already exited leaves nothing behind.
fn terminate_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let signal = |name: &str| {
        // std can only signal the child itself; kill(1) reaches the whole group.
        let _ = Command::new("kill")
            .args([name, "--", &group])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    if matches!(child.try_wait(), Ok(None)) {
        signal("-TERM");
        let deadline = Instant::now() + STOP_TIMEOUT;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
    // Only while the leader is unreaped: once reaped, its pid (and so the group id) may belong to a stranger.
    if matches!(child.try_wait(), Ok(None)) {
        signal("-KILL");
    }
    let _ = child.wait();
}
