//! PgBouncer in transaction pooling mode in front of a test cluster.
//!
//! Debian's PgBouncer 1.18 (`/usr/sbin/pgbouncer`, installed by scripts/setup.sh) runs in the
//! foreground as our child, with its config, auth file, Unix socket and log in a temp dir of its
//! own, on a free loopback port. Clients log in to PgBouncer with SCRAM-SHA-256 (the auth file
//! holds plain-text passwords, which 1.18 accepts for both md5 and SCRAM), and PgBouncer logs in
//! to the cluster over TCP as the same role, with the method pg_hba.conf gives that role.
//!
//! Like the cluster it is stopped twice over: by [`PgBouncer::stop`] (also run by `Drop`), and by
//! a reaper process that sends SIGTERM and deletes the dir when the test process goes away
//! without dropping it.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::child::run_with_timeout;
use super::cluster::{Cluster, Role, free_port, running_as_root};
use super::server_dir;

/// Where Debian's `pgbouncer` package puts the binary.
const PGBOUNCER: &str = "/usr/sbin/pgbouncer";
/// Loopback address PgBouncer listens on (the cluster's own address too).
const HOST: &str = "127.0.0.1";
/// Server connections per (database, user) pool: far fewer than the clients of the scenario, so
/// that their transactions really take turns on shared server connections.
const POOL_SIZE: usize = 3;
/// Client connections PgBouncer accepts in all.
const MAX_CLIENT_CONN: usize = 100;
/// How long PgBouncer may take to come up, and to exit after SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for the psql login check.
const PSQL_TIMEOUT: Duration = Duration::from_secs(60);
/// How many times to start again when another process took our port first.
const START_ATTEMPTS: u32 = 5;
/// Log lines included in panic messages.
const LOG_TAIL_LINES: usize = 40;

/// A running PgBouncer private to one test, in front of one [`Cluster`]. Stopped on drop.
pub struct PgBouncer {
    /// Always `"127.0.0.1"`.
    pub host: String,
    /// The TCP port clients connect to.
    pub port: u16,
    /// Directory of PgBouncer's Unix socket (`.s.PGSQL.<port>`).
    pub socket_dir: PathBuf,
    /// `default_pool_size`: at most this many server connections serve one role's clients.
    pub pool_size: usize,
    /// The role [`PgBouncer::conninfo`] logs in as.
    role: Role,
    /// The temp dir holding everything below; deleted by [`PgBouncer::stop`].
    root: PathBuf,
    conf_path: PathBuf,
    log_path: PathBuf,
    /// PgBouncer's stderr: the only record of errors from before it opens its log file.
    stderr_path: PathBuf,
    child: Option<Child>,
    /// A panic message already carries the log, so `Drop` need not print it again.
    log_reported: AtomicBool,
    /// Closing the reaper's stdin (even by the kernel at process exit) triggers its cleanup.
    reaper: Option<Child>,
}

impl PgBouncer {
    /// Starts PgBouncer in front of `cluster`, where `role` (one with a password) can log in
    /// through it, and checks with psql that a login through it reaches the server.
    ///
    /// Panics with PgBouncer's log if anything goes wrong; it never skips.
    pub fn start(cluster: &Cluster, role: Role) -> PgBouncer {
        assert!(
            Path::new(PGBOUNCER).is_file(),
            "{PGBOUNCER} not found: PgBouncer 1.18 is needed (Debian package `pgbouncer`); \
             run scripts/setup.sh"
        );
        assert!(
            Cluster::password(role).is_some(),
            "BUG: PgBouncer needs a role with a password, not {role:?}"
        );
        let root = server_dir::create("bouncer");
        let mut bouncer = PgBouncer {
            host: HOST.to_owned(),
            port: 0,
            socket_dir: root.join("sock"),
            pool_size: POOL_SIZE,
            role,
            conf_path: root.join("pgbouncer.ini"),
            log_path: root.join("pgbouncer.log"),
            stderr_path: root.join("stderr.log"),
            root,
            child: None,
            log_reported: AtomicBool::new(false),
            reaper: None,
        };
        // From here on a panic drops `bouncer`, which stops PgBouncer and deletes the dir.
        bouncer.reaper = bouncer.spawn_reaper();
        fs::create_dir(&bouncer.socket_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", bouncer.socket_dir.display()));
        bouncer.write_auth_file();
        let as_postgres = running_as_root();
        if as_postgres {
            let mut chown = Command::new("chown");
            chown.arg("-R").arg("postgres:postgres").arg(&bouncer.root);
            let out = run_with_timeout(chown, None, PSQL_TIMEOUT);
            if !out.status.success() {
                bouncer.fail(&format!(
                    "chown failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        bouncer.start_process(cluster, as_postgres);
        bouncer.check_login(cluster);
        bouncer
    }

    /// A libpq key=value connection string through PgBouncer for the role it was started for.
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} {} dbname=postgres",
            self.host,
            self.port,
            Cluster::login(self.role)
        )
    }

    /// The last `lines` lines of PgBouncer's log; its stderr when the log is still empty.
    pub fn log_tail(&self, lines: usize) -> String {
        let log_is_empty = fs::metadata(&self.log_path).map_or(true, |meta| meta.len() == 0);
        let path = if log_is_empty {
            &self.stderr_path
        } else {
            &self.log_path
        };
        server_dir::log_tail(path, lines)
    }

    /// Stops PgBouncer (SIGTERM, then SIGKILL if it lingers) and deletes the temp dir.
    /// Idempotent; never panics (it runs from `Drop`, possibly during a panic).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
        server_dir::remove(&self.root);
        if let Some(mut reaper) = self.reaper.take() {
            // wait() closes its stdin; on that EOF the reaper finds nothing left to do.
            let _ = reaper.wait();
        }
    }

    /// Writes the config on a fresh port and starts PgBouncer, retrying when the port was
    /// taken between our probe and PgBouncer's bind (PgBouncer, like PostgreSQL, then only
    /// warns and goes on listening on its Unix socket).
    fn start_process(&mut self, cluster: &Cluster, as_postgres: bool) {
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port();
            let conf = self.config(cluster, port, as_postgres);
            fs::write(&self.conf_path, conf)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.conf_path.display()));
            // Each attempt starts with empty logs, so what they hold is about this attempt.
            let _ = fs::remove_file(&self.log_path);
            let stderr = File::create(&self.stderr_path)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", self.stderr_path.display()));
            // Started as root, PgBouncer switches to `user = postgres` itself (it refuses to run
            // as root), so the child's pid is PgBouncer's own and SIGTERM reaches it directly.
            let mut cmd = Command::new(PGBOUNCER);
            cmd.arg(&self.conf_path)
                .current_dir(&self.root)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr);
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {PGBOUNCER}: {e}"));
            self.child = Some(child);
            match self.wait_until_listening(port) {
                Listening::Yes => {
                    self.port = port;
                    return;
                }
                Listening::PortTaken if attempt < START_ATTEMPTS => {
                    eprintln!(
                        "[support] port {port} was taken before PgBouncer bound it; retrying"
                    );
                    if let Some(mut child) = self.child.take() {
                        terminate(&mut child);
                    }
                }
                Listening::PortTaken => self.fail(&format!("port {port} was taken")),
            }
        }
    }

    /// Waits for the log line saying PgBouncer listens on `port` of the loopback address.
    fn wait_until_listening(&mut self, port: u16) -> Listening {
        let listening = format!("listening on {HOST}:{port}");
        let taken = format!("cannot listen on {HOST}:{port}");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let log = fs::read_to_string(&self.log_path).unwrap_or_default();
            if log.contains(&taken) {
                return Listening::PortTaken;
            }
            // "process up" follows the listening lines once every listener is set up.
            if log.contains(&listening) && log.contains("process up") {
                return Listening::Yes;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                self.fail(&format!("PgBouncer exited during startup ({status})"));
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "PgBouncer did not listen on {HOST}:{port} within {START_TIMEOUT:?}"
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Logs in through PgBouncer with the real psql and runs a query, so that a broken auth file
    /// or server link fails here with PgBouncer's log rather than in every scenario.
    fn check_login(&self, cluster: &Cluster) {
        let mut cmd = cluster.psql_command(self.role);
        cmd.env("PGHOST", &self.host)
            .env("PGPORT", self.port.to_string())
            .args(["-X", "-q", "-A", "-t", "-c", "SELECT current_user"]);
        let out = run_with_timeout(cmd, None, PSQL_TIMEOUT);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || stdout.trim() != Cluster::user(self.role) {
            self.fail(&format!(
                "a psql login through PgBouncer failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
                out.status,
                stdout.trim_end(),
                String::from_utf8_lossy(&out.stderr).trim_end()
            ));
        }
    }

    /// pgbouncer.ini: one database entry for the cluster's `postgres` database, transaction
    /// pooling with a small pool, SCRAM for clients.
    fn config(&self, cluster: &Cluster, port: u16, as_postgres: bool) -> String {
        let mut conf = String::from("; wasi-pg-client test harness\n[databases]\n");
        let _ = writeln!(
            conf,
            "postgres = host={} port={} dbname=postgres",
            cluster.host, cluster.port
        );
        let path = |p: &Path| p.display().to_string();
        let mut settings = vec![
            ("listen_addr", HOST.to_owned()),
            ("listen_port", port.to_string()),
            ("unix_socket_dir", path(&self.socket_dir)),
            ("auth_type", "scram-sha-256".to_owned()),
            ("auth_file", path(&self.auth_file())),
            ("pool_mode", "transaction".to_owned()),
            ("default_pool_size", self.pool_size.to_string()),
            ("max_client_conn", MAX_CLIENT_CONN.to_string()),
            ("logfile", path(&self.log_path)),
            ("pidfile", path(&self.pid_path())),
        ];
        if as_postgres {
            settings.push(("user", "postgres".to_owned()));
        }
        conf.push_str("[pgbouncer]\n");
        for (key, value) in settings {
            let _ = writeln!(conf, "{key} = {value}");
        }
        conf
    }

    /// userlist.txt: every role of [`Role::ALL`] with a password, in plain text.
    fn write_auth_file(&self) {
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let mut users = String::new();
        for role in Role::ALL {
            if let Some(password) = Cluster::password(role) {
                let _ = writeln!(users, "{} {}", quote(Cluster::user(role)), quote(password));
            }
        }
        let path = self.auth_file();
        fs::write(&path, users).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    fn auth_file(&self) -> PathBuf {
        self.root.join("userlist.txt")
    }

    fn pid_path(&self) -> PathBuf {
        self.root.join("pgbouncer.pid")
    }

    /// Spawns a [`server_dir::reaper`] that sends SIGTERM to the pid in PgBouncer's pidfile
    /// (only if that process still runs our config), waits for it to go and deletes the dir.
    fn spawn_reaper(&self) -> Option<Child> {
        const SCRIPT: &str = r#"trap '' INT TERM HUP
cat >/dev/null
pid=$(cat "$REAP_PIDFILE" 2>/dev/null)
if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$REAP_CONF"; then
    kill -TERM "$pid" 2>/dev/null
    i=0
    while [ "$i" -lt 100 ] && kill -0 "$pid" 2>/dev/null; do sleep 0.1; i=$((i + 1)); done
    kill -KILL "$pid" 2>/dev/null
fi
rm -rf -- "$REAP_ROOT""#;
        server_dir::reaper(SCRIPT)
            .env("REAP_PIDFILE", self.pid_path())
            .env("REAP_CONF", &self.conf_path)
            .env("REAP_ROOT", &self.root)
            .spawn()
            .ok()
    }

    fn fail(&self, message: &str) -> ! {
        self.log_reported.store(true, Ordering::Relaxed);
        panic!(
            "PgBouncer::start: {message}\n--- PgBouncer log {} (last {LOG_TAIL_LINES} lines) ---\n{}",
            self.log_path.display(),
            self.log_tail(LOG_TAIL_LINES)
        )
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if std::thread::panicking()
            && self.child.is_some()
            && !self.log_reported.load(Ordering::Relaxed)
        {
            eprintln!(
                "[support] test panicked; PgBouncer log {} (last {LOG_TAIL_LINES} lines):\n{}",
                self.log_path.display(),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
        self.stop();
    }
}

/// What PgBouncer's log says about its TCP listener.
enum Listening {
    Yes,
    PortTaken,
}

/// SIGTERM (PgBouncer's fast shutdown), then SIGKILL after [`STOP_TIMEOUT`]; reaps the child.
fn terminate(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        // std can only send SIGKILL; kill(1) sends the polite signal.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
    // Both are no-ops on a child that already exited and was reaped.
    let _ = child.kill();
    let _ = child.wait();
}
