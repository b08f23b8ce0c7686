//! A throwaway PostgreSQL cluster for one test.
//!
//! Every cluster gets its own temp dir (data dir, Unix socket dir, server log) and a free
//! loopback port, so tests in one process (or several processes) can each run their own.
//! pg_hba.conf has one role per authentication method, as pgx's test setup does, so a login
//! as [`Role::Md5`] really runs the md5 exchange and a wrong password really fails.
//! [`Cluster::start_with`] can also turn TLS on and add roles that only TLS (or only plaintext)
//! lets in, and one that logs in with a client certificate.
//!
//! [`Cluster::start_replicated`] makes a primary and a hot standby streaming from it, and
//! [`Cluster::shut_down`] / [`Cluster::start_again`] stop and restart one node in place.
//!
//! Cleanup happens twice over: [`Cluster::stop`] (also run by `Drop`, so a panicking test
//! stops its server) and a small reaper process that stops the server and deletes the dir when
//! the test process goes away without dropping the cluster (a `static`, `exit`, SIGKILL).

use std::fmt::Write as _;
use std::fs;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::child::run_with_timeout;
use super::server_dir;

/// Loopback address every cluster listens on (it also listens on `::1`).
const HOST: &str = "127.0.0.1";
/// Server binaries of the Debian `postgresql` package; see [`server_bin_dir`] for fallbacks.
const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// The real psql (Debian's version-picking wrapper).
const PSQL: &str = "/usr/bin/psql";
/// Deadline for initdb, pg_ctl and psql; generous for a loaded 2-core CI machine.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How many times to retry `pg_ctl start` when another process grabbed our port first.
const START_ATTEMPTS: u32 = 5;
/// How long a new standby may take to stream and catch up with its primary.
const STREAMING_TIMEOUT: Duration = Duration::from_secs(60);
/// Server log lines included in panic messages.
const LOG_TAIL_LINES: usize = 40;
/// Names of a TLS cluster's copies of [`ServerTls`]'s files, in [`Cluster::tls_dir`].
const SERVER_CERT_FILE: &str = "server.crt";
const SERVER_KEY_FILE: &str = "server.key";
const CLIENT_CA_FILE: &str = "client-ca.crt";

/// Serialises "pick a free port, start the server on it" within this process, so two
/// clusters starting at once never pick the same port. initdb runs outside it, in parallel.
static START_LOCK: Mutex<()> = Mutex::new(());

/// A login role of the test cluster; each one authenticates over TCP with a different method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `pgc_trust`: `trust`, no password.
    Trust,
    /// `pgc_password`: cleartext `password` method (stored as SCRAM).
    Password,
    /// `pgc_md5`: `md5` method, password stored as an md5 hash.
    Md5,
    /// `pgc_scram`: `scram-sha-256` method, password stored as a SCRAM verifier.
    Scram,
    /// `pgc_cert`: `cert` method on `hostssl` lines only (a client certificate with CN
    /// `pgc_cert`); only with [`Setup::tls_roles`].
    Cert,
    /// `pgc_sslonly`: `scram-sha-256` on `hostssl` lines, `reject` on `hostnossl` lines; only
    /// with [`Setup::tls_roles`].
    SslOnly,
    /// `pgc_nossl`: `scram-sha-256` on `hostnossl` lines, `reject` on `hostssl` lines; only
    /// with [`Setup::tls_roles`].
    NoSsl,
}

impl Role {
    /// Every role on `host` lines (with or without TLS), in a fixed order; every cluster has them.
    pub const ALL: [Role; 4] = [Role::Trust, Role::Password, Role::Md5, Role::Scram];
    /// The roles [`Setup::tls_roles`] adds, in a fixed order.
    pub const TLS: [Role; 3] = [Role::Cert, Role::SslOnly, Role::NoSsl];

    /// The pg_hba.conf method for this role's TCP connections (over TLS for [`Role::Cert`] and
    /// [`Role::SslOnly`], in plaintext for [`Role::NoSsl`]).
    pub fn hba_method(self) -> &'static str {
        match self {
            Role::Trust => "trust",
            Role::Password => "password",
            Role::Md5 => "md5",
            Role::Scram | Role::SslOnly | Role::NoSsl => "scram-sha-256",
            Role::Cert => "cert",
        }
    }

    /// `password_encryption` in force when the password is set, and the prefix the stored
    /// hash in `pg_authid.rolpassword` must then have. `None` for the password-less role.
    fn storage(self) -> Option<(&'static str, &'static str)> {
        match self {
            Role::Trust | Role::Cert => None,
            Role::Md5 => Some(("md5", "md5")),
            Role::Password | Role::Scram | Role::SslOnly | Role::NoSsl => {
                Some(("scram-sha-256", "SCRAM-SHA-256$"))
            }
        }
    }
}

/// How [`Cluster::start_with`] sets a cluster up; the default is what [`Cluster::start`] does.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// `ssl = on` with these files; `None` leaves `ssl = off`.
    pub ssl: Option<ServerTls>,
    /// Also create [`Role::TLS`] with their `hostssl` / `hostnossl` lines (`hostssl` lines only
    /// when `ssl` is set: the server flags them as errors otherwise).
    pub tls_roles: bool,
}

/// The files a TLS server needs. [`Cluster::start_with`] copies them into the cluster's dir,
/// owned by the server's user with the key at mode 0600, as the server demands.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The server's certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// `ssl_ca_file`: when set, the server requests a client certificate and checks it against
    /// these roots (and `cert` logins need one).
    pub ca: Option<PathBuf>,
}

/// A cluster's part in streaming replication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replication {
    /// Stand-alone: what [`Cluster::start`] and [`Cluster::start_with`] make.
    None,
    /// Accepts physical replication connections from `postgres` over loopback.
    Primary,
    /// A hot standby cloned with `pg_basebackup -R` from the primary on this port.
    Standby { primary_port: u16 },
}

/// A running PostgreSQL cluster private to one test. Stopped and deleted on drop.
pub struct Cluster {
    /// Always `"127.0.0.1"`; the server also listens on `::1`.
    pub host: String,
    /// TCP port, on both loopback addresses.
    pub port: u16,
    /// Directory holding the server's Unix socket (`.s.PGSQL.<port>`).
    pub socket_dir: PathBuf,
    /// The temp dir holding everything below; deleted by [`Cluster::stop`].
    root: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    bin_dir: PathBuf,
    /// Running as root: initdb refuses root, so cluster commands run as `postgres`.
    as_postgres: bool,
    setup: Setup,
    replication: Replication,
    /// A server may be running (set before `pg_ctl start` returns, cleared by `stop` and
    /// `shut_down`).
    running: bool,
    /// The temp dir has been deleted.
    removed: bool,
    /// A panic message already carries the server log, so `Drop` need not print it again.
    log_reported: AtomicBool,
    /// Closing the reaper's stdin (even by the kernel at process exit) triggers its cleanup.
    reaper: Option<Child>,
}

impl Cluster {
    /// Creates, configures and starts a fresh cluster with the test roles ([`Role::ALL`]), with
    /// `ssl = off`.
    ///
    /// Panics with the failing command's output and the tail of the server log if anything
    /// goes wrong. It never skips: a test that asks for a cluster needs one.
    pub fn start() -> Cluster {
        Cluster::start_with(&Setup::default())
    }

    /// Like [`Cluster::start`], with TLS and the TLS roles as `setup` says.
    pub fn start_with(setup: &Setup) -> Cluster {
        let mut cluster = Cluster::prepare(setup, Replication::None);
        cluster.init_data_dir();
        cluster.start_server();
        cluster.create_roles();
        cluster.verify_roles();
        cluster
    }

    /// Starts a primary set up for streaming replication (`wal_level = replica`, WAL senders,
    /// a `replication` line in pg_hba.conf for `postgres` over loopback) and a hot standby
    /// cloned from it with `pg_basebackup -R`, each on its own loopback port, and returns
    /// `(primary, standby)` once the standby is streaming and has replayed everything the
    /// primary had written. Both have the test roles ([`Role::ALL`]; the standby's came with
    /// the copy) and `ssl = off`.
    pub fn start_replicated() -> (Cluster, Cluster) {
        let mut primary = Cluster::prepare(&Setup::default(), Replication::Primary);
        primary.init_data_dir();
        primary.start_server();
        primary.create_roles();
        primary.verify_roles();

        let primary_port = primary.port;
        let mut standby =
            Cluster::prepare(&Setup::default(), Replication::Standby { primary_port });
        standby.clone_data_dir();
        standby.start_server();
        standby.wait_until_streaming(&primary);
        standby.verify_roles();
        (primary, standby)
    }

    /// Stops the server (`pg_ctl stop -m fast`) but keeps its data dir and port, for
    /// [`Cluster::start_again`]. Panics if the server does not stop.
    pub fn shut_down(&mut self) {
        let mut cmd = self.server_command("pg_ctl");
        cmd.args(["stop", "-m", "fast", "-w", "-t", "60", "-D"])
            .arg(&self.data_dir);
        self.check("pg_ctl stop", cmd, None);
        self.running = false;
    }

    /// Starts a server stopped with [`Cluster::shut_down`] again, on the same port. Panics if
    /// it does not come up, or if another process took the port while it was down.
    pub fn start_again(&mut self) {
        assert!(
            !self.removed,
            "start_again after stop: the cluster is deleted"
        );
        let (out, port_taken) = self.pg_ctl_start();
        if port_taken {
            self.fail_message(&format!(
                "port {} was taken while the server was down",
                self.port
            ));
        }
        if !out.status.success() {
            self.fail("pg_ctl start", &out);
        }
    }

    /// The cluster as a struct with its reaper and (empty) socket dir, owned by the server's
    /// user; no data dir yet.
    fn prepare(setup: &Setup, replication: Replication) -> Cluster {
        let bin_dir = server_bin_dir();
        let as_postgres = running_as_root();
        let root = server_dir::create("test");
        let mut cluster = Cluster {
            host: HOST.to_owned(),
            port: 0,
            socket_dir: root.join("sock"),
            data_dir: root.join("data"),
            log_path: root.join("server.log"),
            root,
            bin_dir,
            as_postgres,
            setup: setup.clone(),
            replication,
            running: false,
            removed: false,
            log_reported: AtomicBool::new(false),
            reaper: None,
        };
        // From here on a panic drops `cluster`, which stops the server and deletes the dir.
        cluster.reaper = cluster.spawn_reaper();
        fs::create_dir(&cluster.socket_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", cluster.socket_dir.display()));
        cluster.copy_tls_files();
        if as_postgres {
            let mut chown = Command::new("chown");
            chown.arg("-R").arg("postgres:postgres").arg(&cluster.root);
            cluster.check("chown", chown, None);
        }
        cluster
    }

    /// The login name of `role`.
    pub fn user(role: Role) -> &'static str {
        match role {
            Role::Trust => "pgc_trust",
            Role::Password => "pgc_password",
            Role::Md5 => "pgc_md5",
            Role::Scram => "pgc_scram",
            Role::Cert => "pgc_cert",
            Role::SslOnly => "pgc_sslonly",
            Role::NoSsl => "pgc_nossl",
        }
    }

    /// The password of `role`; `None` for [`Role::Trust`]. They contain spaces, `@`, `:` and
    /// `/` on purpose, to exercise conninfo quoting and URL percent-encoding.
    pub fn password(role: Role) -> Option<&'static str> {
        match role {
            Role::Trust | Role::Cert => None,
            Role::Password => Some("pass_word1"),
            Role::Md5 => Some("md5 p@ss:1"),
            Role::Scram => Some("scr@m/pw:2"),
            Role::SslOnly => Some("ssl only:3"),
            Role::NoSsl => Some("no ssl:4"),
        }
    }

    /// The user (and password, if any) of `role` as conninfo pairs, e.g.
    /// `user=pgc_md5 password='md5 p@ss:1'`.
    pub fn login(role: Role) -> String {
        let mut login = format!("user={}", conninfo_value(Cluster::user(role)));
        if let Some(password) = Cluster::password(role) {
            let _ = write!(login, " password={}", conninfo_quoted(password));
        }
        login
    }

    /// A libpq key=value connection string for `role` over TCP, e.g.
    /// `host=127.0.0.1 port=5433 user=pgc_md5 password='md5 p@ss:1' dbname=postgres`.
    pub fn conninfo(&self, role: Role) -> String {
        format!(
            "host={} port={} {} dbname=postgres",
            conninfo_value(&self.host),
            self.port,
            Cluster::login(role),
        )
    }

    /// A `postgresql://` URL for `role` over TCP, with user and password percent-encoded, e.g.
    /// `postgresql://pgc_md5:md5%20p%40ss%3A1@127.0.0.1:5433/postgres`.
    pub fn url(&self, role: Role) -> String {
        let mut userinfo = percent_encode(Cluster::user(role));
        if let Some(password) = Cluster::password(role) {
            userinfo.push(':');
            userinfo.push_str(&percent_encode(password));
        }
        format!(
            "postgresql://{userinfo}@{}:{}/postgres",
            self.host, self.port
        )
    }

    /// Runs the real psql against this cluster as [`Role::Trust`] over TCP, with `args`
    /// appended (e.g. `["-X", "-q", "-A", "-t", "-c", "SELECT 1"]`) and `stdin` fed to it.
    pub fn psql(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = self.psql_command(Role::Trust);
        cmd.args(args);
        run_with_timeout(cmd, stdin, COMMAND_TIMEOUT)
    }

    /// A psql command for `role` over TCP: `PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE` and
    /// (for roles with one) `PGPASSWORD` set, every other `PG*` variable removed. Add
    /// arguments and run it with [`run_with_timeout`] or `output()`.
    pub fn psql_command(&self, role: Role) -> Command {
        let mut cmd = Command::new(psql_path());
        clear_pg_env(&mut cmd);
        cmd.env("PGHOST", &self.host)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", Cluster::user(role))
            .env("PGDATABASE", "postgres");
        if let Some(password) = Cluster::password(role) {
            cmd.env("PGPASSWORD", password);
        }
        cmd
    }

    /// The last `lines` lines of the server log (empty if there is none yet).
    pub fn log_tail(&self, lines: usize) -> String {
        server_dir::log_tail(&self.log_path, lines)
    }

    /// Stops the server (`pg_ctl stop -m immediate`) and deletes the temp dir. Idempotent;
    /// never panics (it runs from `Drop`, possibly while a test is already panicking).
    pub fn stop(&mut self) {
        // No postmaster.pid: the server never came up (or is gone), nothing to stop.
        if self.running && self.data_dir.join("postmaster.pid").exists() {
            let out = self.pg_ctl_stop();
            if !out.status.success() {
                eprintln!(
                    "[support] pg_ctl stop failed for {}:\n{}",
                    self.data_dir.display(),
                    output_text(&out)
                );
            }
        }
        self.running = false;
        if !self.removed {
            self.removed = true;
            server_dir::remove(&self.root);
        }
        if let Some(mut reaper) = self.reaper.take() {
            // wait() closes its stdin first; on that EOF the reaper repeats the cleanup above,
            // which is now a quick no-op.
            let _ = reaper.wait();
        }
    }

    /// `pg_ctl stop -m immediate`, waiting until the server is gone.
    fn pg_ctl_stop(&self) -> Output {
        let mut cmd = self.server_command("pg_ctl");
        cmd.args(["stop", "-m", "immediate", "-w", "-t", "60", "-D"])
            .arg(&self.data_dir);
        run_with_timeout(cmd, None, COMMAND_TIMEOUT)
    }

    /// Runs initdb into the (not yet existing) data dir.
    fn init_data_dir(&self) {
        let mut cmd = self.server_command("initdb");
        cmd.args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
            "-D",
        ])
        .arg(&self.data_dir);
        self.check("initdb", cmd, None);

        let hba = self.data_dir.join("pg_hba.conf");
        let mut hba_text = hba_conf(&self.setup);
        if self.replication == Replication::Primary {
            for address in ["127.0.0.1/32", "::1/128"] {
                let _ = writeln!(hba_text, "host replication postgres {address} trust");
            }
        }
        fs::write(&hba, hba_text).unwrap_or_else(|e| panic!("cannot write {}: {e}", hba.display()));
    }

    /// Copies the primary's data dir into the (not yet existing) data dir with
    /// `pg_basebackup -R`, which also writes `standby.signal` and a `primary_conninfo`
    /// pointing at the primary over TCP. The copy brings the primary's postgresql.conf;
    /// [`Cluster::start_server`] appends this node's own settings after it.
    fn clone_data_dir(&self) {
        let Replication::Standby { primary_port } = self.replication else {
            panic!("BUG: clone_data_dir on a cluster that is no standby");
        };
        let mut cmd = self.server_command("pg_basebackup");
        cmd.args([
            "-h",
            HOST,
            "-p",
            &primary_port.to_string(),
            "-U",
            "postgres",
        ])
        .args(["-X", "stream", "-c", "fast", "-R", "--no-sync", "-D"])
        .arg(&self.data_dir);
        self.check("pg_basebackup", cmd, None);
    }

    /// Waits until `primary` reports this standby as streaming, then until the standby (in
    /// recovery) has replayed the primary's WAL up to where it stood at that moment.
    fn wait_until_streaming(&self, primary: &Cluster) {
        let deadline = Instant::now() + STREAMING_TIMEOUT;
        let poll = |what: &str, node: &Cluster, sql: &str, done: &dyn Fn(&str) -> bool| loop {
            let answer = node.try_admin_sql(sql);
            if let Some(answer) = answer.as_deref().map(str::trim)
                && done(answer)
            {
                return answer.to_owned();
            }
            if Instant::now() >= deadline {
                self.fail_message(&format!(
                    "the standby on port {} was not {what} after {STREAMING_TIMEOUT:?} \
                     (last answer: {answer:?}); primary log:\n{}",
                    self.port,
                    primary.log_tail(LOG_TAIL_LINES)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let lsn = poll(
            "streaming",
            primary,
            "SELECT pg_current_wal_lsn() FROM pg_stat_replication \
             WHERE state = 'streaming' LIMIT 1;",
            &|answer| !answer.is_empty(),
        );
        poll(
            "caught up",
            self,
            &format!(
                "SELECT pg_is_in_recovery() AND pg_last_wal_replay_lsn() >= {}::pg_lsn;",
                sql_literal(&lsn)
            ),
            &|answer| answer == "t",
        );
    }

    /// Picks a free port and starts the server on it, retrying if another process took the
    /// port between our probe and the server's bind.
    ///
    /// Postgres starts as long as it can bind one listen address, so a port taken on only
    /// 127.0.0.1 would give a server that `host=127.0.0.1` never reaches: any "Address already
    /// in use" in the log counts as a failed start. (::1 missing altogether is fine.)
    fn start_server(&mut self) {
        let conf_path = self.data_dir.join("postgresql.conf");
        let initdb_conf = fs::read_to_string(&conf_path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", conf_path.display()));
        let _guard = START_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port();
            let conf = format!("{initdb_conf}\n{}", self.server_settings(port));
            fs::write(&conf_path, conf)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", conf_path.display()));
            let (out, port_taken) = self.pg_ctl_start();
            if out.status.success() && !port_taken {
                self.port = port;
                return;
            }
            if attempt < START_ATTEMPTS && port_taken {
                eprintln!("[support] port {port} was taken before the server bound it; retrying");
                if out.status.success() {
                    self.pg_ctl_stop();
                }
                continue;
            }
            self.fail("pg_ctl start", &out);
        }
    }

    /// `pg_ctl start` with the port already in postgresql.conf; also whether the server's log
    /// says a listen address was taken.
    fn pg_ctl_start(&mut self) -> (Output, bool) {
        let log_len_before = fs::metadata(&self.log_path)
            .map_or(0, |m| usize::try_from(m.len()).unwrap_or(usize::MAX));

        let mut cmd = self.server_command("pg_ctl");
        cmd.args(["-w", "-t", "60", "-D"])
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_path)
            .arg("start");
        // Set before starting: if pg_ctl times out, the server may still come up later.
        self.running = true;
        let out = run_with_timeout(cmd, None, COMMAND_TIMEOUT);
        let log = fs::read(&self.log_path).unwrap_or_default();
        let new_log = String::from_utf8_lossy(log.get(log_len_before..).unwrap_or_default());
        let port_taken = new_log.contains("Address already in use");
        (out, port_taken)
    }

    /// The settings appended to initdb's postgresql.conf (later lines win).
    fn server_settings(&self, port: u16) -> String {
        let socket_dir = self.socket_dir.to_string_lossy();
        let mut ssl = vec!["ssl = off".to_owned()];
        if let Some(tls) = &self.setup.ssl {
            let file = |name: &str| sql_literal(&self.tls_dir().join(name).to_string_lossy());
            ssl = vec![
                "ssl = on".to_owned(),
                format!("ssl_cert_file = {}", file(SERVER_CERT_FILE)),
                format!("ssl_key_file = {}", file(SERVER_KEY_FILE)),
            ];
            if tls.ca.is_some() {
                ssl.push(format!("ssl_ca_file = {}", file(CLIENT_CA_FILE)));
            }
        }
        let replication = match self.replication {
            // Logical decoding, replication connections and prepared transactions for the replication
            // scenarios.
            Replication::None => vec![
                "wal_level = logical".to_owned(),
                "max_wal_senders = 10".to_owned(),
                "max_replication_slots = 10".to_owned(),
                "max_prepared_transactions = 10".to_owned(),
            ],
            Replication::Primary => vec![
                "wal_level = replica".to_owned(),
                "max_wal_senders = 4".to_owned(),
            ],
            // Reconnect soon after the primary comes back from `shut_down`.
            Replication::Standby { .. } => vec![
                "hot_standby = on".to_owned(),
                "wal_retrieve_retry_interval = '500ms'".to_owned(),
            ],
        };
        [
            "# wasi-pg-client test harness".to_owned(),
            "listen_addresses = '127.0.0.1,::1'".to_owned(),
            format!("port = {port}"),
            format!("unix_socket_directories = {}", sql_literal(&socket_dir)),
            "password_encryption = 'scram-sha-256'".to_owned(),
            "fsync = off".to_owned(),
            "max_connections = 100".to_owned(),
            "shared_buffers = 16MB".to_owned(),
        ]
        .into_iter()
        .chain(ssl)
        .chain(replication)
        .chain([String::new()])
        .collect::<Vec<_>>()
        .join("\n")
    }

    /// Where a TLS cluster keeps its copies of the server files.
    fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }

    /// Copies the server's certificate, key and client CA into [`Cluster::tls_dir`] (the
    /// `chown -R` that follows gives them to the server's user); the key gets mode 0600.
    fn copy_tls_files(&self) {
        let Some(tls) = &self.setup.ssl else {
            return;
        };
        let dir = self.tls_dir();
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let mut files = vec![(&tls.cert, SERVER_CERT_FILE), (&tls.key, SERVER_KEY_FILE)];
        if let Some(ca) = &tls.ca {
            files.push((ca, CLIENT_CA_FILE));
        }
        for (from, name) in files {
            let to = dir.join(name);
            fs::copy(from, &to).unwrap_or_else(|e| {
                panic!("cannot copy {} to {}: {e}", from.display(), to.display())
            });
        }
        // Unix only because the harness also compiles (but never runs) for wasm32-wasip2.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let key = dir.join(SERVER_KEY_FILE);
            fs::set_permissions(&key, fs::Permissions::from_mode(0o600))
                .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", key.display()));
        }
    }

    /// The roles this cluster has: [`Role::ALL`], plus [`Role::TLS`] if the setup asks for them.
    fn roles(&self) -> Vec<Role> {
        let mut roles = Role::ALL.to_vec();
        if self.setup.tls_roles {
            roles.extend(Role::TLS);
        }
        roles
    }

    /// Creates the SUPERUSER LOGIN roles, each password hashed as its method needs.
    fn create_roles(&self) {
        let mut sql = String::new();
        for role in self.roles() {
            let user = Cluster::user(role);
            match (role.storage(), Cluster::password(role)) {
                (Some((encryption, _)), Some(password)) => {
                    let _ = writeln!(
                        sql,
                        "SET password_encryption = {};",
                        sql_literal(encryption)
                    );
                    let _ = writeln!(
                        sql,
                        "CREATE ROLE {user} SUPERUSER LOGIN PASSWORD {};",
                        sql_literal(password)
                    );
                }
                _ => {
                    let _ = writeln!(sql, "CREATE ROLE {user} SUPERUSER LOGIN;");
                }
            }
        }
        self.admin_sql("create roles", &sql);
    }

    /// Checks from pg_authid that every role's password is stored the way its method needs
    /// (an md5 login against a SCRAM verifier would fail, and vice versa would silently
    /// upgrade the md5 role to SCRAM).
    fn verify_roles(&self) {
        let found = self.admin_sql(
            "read pg_authid",
            "SELECT rolname || ' ' || coalesce(rolpassword, '<none>') \
             FROM pg_authid WHERE rolname LIKE 'pgc\\_%' ORDER BY rolname;",
        );
        for role in self.roles() {
            let user = Cluster::user(role);
            let stored = found
                .lines()
                .find_map(|line| line.strip_prefix(user)?.strip_prefix(' '));
            let ok = match (stored, role.storage()) {
                (Some(stored), Some((_, prefix))) => stored.starts_with(prefix),
                (Some(stored), None) => stored == "<none>",
                (None, _) => false,
            };
            if !ok {
                let expected = role.storage().map_or("no password", |(_, prefix)| prefix);
                self.fail_message(&format!(
                    "role {user} is stored wrongly (expected {expected}); pg_authid has:\n{found}"
                ));
            }
        }
    }

    /// Runs `sql` with psql over the Unix socket as the bootstrap superuser; returns stdout.
    fn admin_sql(&self, what: &str, sql: &str) -> String {
        let cmd = self.admin_psql();
        let out = self.check(what, cmd, Some(sql.as_bytes()));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Like [`Cluster::admin_sql`], but `None` instead of a panic when psql fails (for polling).
    fn try_admin_sql(&self, sql: &str) -> Option<String> {
        let out = run_with_timeout(self.admin_psql(), Some(sql.as_bytes()), COMMAND_TIMEOUT);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// psql over the Unix socket as the bootstrap superuser, reading SQL from stdin.
    fn admin_psql(&self) -> Command {
        let mut cmd = Command::new(psql_path());
        clear_pg_env(&mut cmd);
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-f",
                "-",
            ]);
        cmd
    }

    /// A server binary (initdb, pg_ctl) as a command: run as `postgres` when we are root,
    /// in the temp dir, with no inherited `PG*` variables (PGDATA, PGPORT would interfere).
    fn server_command(&self, program: &str) -> Command {
        let program = self.bin_dir.join(program);
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        };
        clear_pg_env(&mut cmd);
        cmd.current_dir(&self.root);
        cmd
    }

    /// Spawns a [`server_dir::reaper`] that stops the server and deletes the dir.
    fn spawn_reaper(&self) -> Option<Child> {
        const SCRIPT: &str = r#"trap '' INT TERM HUP
cat >/dev/null
"$@" stop -m immediate -w -t 60 -D "$REAP_DATA" >/dev/null 2>&1
rm -rf -- "$REAP_ROOT""#;
        let mut cmd = server_dir::reaper(SCRIPT);
        if self.as_postgres {
            cmd.args(["runuser", "-u", "postgres", "--"]);
        }
        cmd.arg(self.bin_dir.join("pg_ctl"))
            .env("REAP_DATA", &self.data_dir)
            .env("REAP_ROOT", &self.root);
        clear_pg_env(&mut cmd);
        cmd.spawn().ok()
    }

    /// Runs `cmd`; on failure panics with its output and the server log tail.
    fn check(&self, what: &str, cmd: Command, stdin: Option<&[u8]>) -> Output {
        let out = run_with_timeout(cmd, stdin, COMMAND_TIMEOUT);
        if !out.status.success() {
            self.fail(what, &out);
        }
        out
    }

    fn fail(&self, what: &str, out: &Output) -> ! {
        self.fail_message(&format!(
            "{what} failed ({})\n{}",
            out.status,
            output_text(out)
        ))
    }

    fn fail_message(&self, message: &str) -> ! {
        self.log_reported.store(true, Ordering::Relaxed);
        panic!(
            "Cluster::start: {message}\n--- server log {} (last {LOG_TAIL_LINES} lines) ---\n{}",
            self.log_path.display(),
            self.log_tail(LOG_TAIL_LINES)
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() && self.running && !self.log_reported.load(Ordering::Relaxed) {
            // The test failed: the server's view is often the explanation. Shown by the test
            // harness along with the panic, before the log is deleted below.
            eprintln!(
                "[support] test panicked; server log {} (last {LOG_TAIL_LINES} lines):\n{}",
                self.log_path.display(),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
        self.stop();
    }
}

/// A TCP port that was free on 127.0.0.1 (and not in use on ::1) a moment ago.
///
/// Binds port 0, reads the port the kernel chose and releases it. Until the caller binds it,
/// any socket may take it, including the source port of an outgoing connection (the kernel
/// draws those from the same ephemeral range), so tests making many connections do see this
/// now and then. [`Cluster::start`] retries when it happens; a test that needs a listener of
/// its own should bind `127.0.0.1:0` itself and keep the listener instead.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("cannot read the bound port: {e}"))
            .port();
        // The server also listens on ::1. A port taken there only makes it log a warning, but
        // clients resolving "localhost" could then reach someone else's server.
        match TcpListener::bind((Ipv6Addr::LOCALHOST, port)) {
            Err(e) if e.kind() == ErrorKind::AddrInUse => continue,
            _ => return port,
        }
    }
    panic!("no free loopback port found in 100 tries")
}

/// pg_hba.conf: the socket is trusted (for setup); over TCP each role may only use its own
/// method, and there is deliberately no catch-all line. The TLS roles come last, with an
/// explicit `reject` on the transport each one must not use.
fn hba_conf(setup: &Setup) -> String {
    let mut hba = String::from("local all all trust\n");
    for address in ["127.0.0.1/32", "::1/128"] {
        for role in Role::ALL {
            let _ = writeln!(
                hba,
                "host all {} {address} {}",
                Cluster::user(role),
                role.hba_method()
            );
        }
        let _ = writeln!(hba, "host all postgres {address} trust");
        let _ = writeln!(hba, "host replication postgres {address} trust");
        if !setup.tls_roles {
            continue;
        }
        let ssl = setup.ssl.is_some();
        for (role, kind, method) in [
            (Role::Cert, "hostssl", Role::Cert.hba_method()),
            (Role::SslOnly, "hostssl", Role::SslOnly.hba_method()),
            (Role::SslOnly, "hostnossl", "reject"),
            (Role::NoSsl, "hostnossl", Role::NoSsl.hba_method()),
            (Role::NoSsl, "hostssl", "reject"),
        ] {
            if kind == "hostssl" && !ssl {
                continue;
            }
            let user = Cluster::user(role);
            let _ = writeln!(hba, "{kind} all {user} {address} {method}");
        }
    }
    hba
}

/// Where initdb and pg_ctl live: the Debian PostgreSQL 15 dir, else the newest
/// /usr/lib/postgresql/<version>/bin, else wherever `pg_config --bindir` says.
fn server_bin_dir() -> PathBuf {
    let default = PathBuf::from(DEFAULT_BIN_DIR);
    if default.join("initdb").is_file() {
        return default;
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && bin.join("initdb").is_file() {
            return bin;
        }
    }
    panic!(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in {DEFAULT_BIN_DIR}, \
         /usr/lib/postgresql/*/bin or `pg_config --bindir`; run scripts/setup.sh"
    )
}

fn psql_path() -> &'static Path {
    let psql = Path::new(PSQL);
    if psql.is_file() {
        psql
    } else {
        // Not Debian: rely on PATH.
        Path::new("psql")
    }
}

/// Whether the effective uid is 0 (std has no geteuid; Linux reports it in /proc).
pub(super) fn running_as_root() -> bool {
    if let Ok(status) = fs::read_to_string("/proc/self/status") {
        // "Uid:\t<real>\t<effective>\t<saved>\t<fs>"
        if let Some(euid) = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
        {
            return euid == "0";
        }
    }
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Removes every inherited `PG*` variable, so the developer's own settings (PGHOST,
/// PGPASSWORD, PGSSLMODE, ...) cannot leak into a test.
fn clear_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
}

/// A conninfo value, quoted only when libpq needs it.
fn conninfo_value(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\');
    if plain {
        value.to_owned()
    } else {
        conninfo_quoted(value)
    }
}

/// A conninfo value in single quotes, with `\` and `'` backslash-escaped (libpq's rules).
fn conninfo_quoted(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        if c == '\\' || c == '\'' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('\'');
    quoted
}

/// An SQL (and postgresql.conf) string literal: single quotes, embedded quotes doubled.
fn sql_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn percent_encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

fn output_text(out: &Output) -> String {
    format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}
