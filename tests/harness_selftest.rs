//! Proves the shared test harness in `tests/support` against the real tools it wraps:
//! clusters start side by side, pg_hba really enforces each role's method, the conninfo and
//! URL strings are accepted by libpq (psql), clusters clean up after `stop` and after a panic,
//! and the wasm helpers build a guest and run it under wasmtime with env, dirs, stdin and
//! network access.

mod support;

/// The guest half of `native::wasm_helpers_build_and_run_a_guest`, run under wasmtime.
/// Natively (no marker variable) it does nothing.
#[test]
fn wasm_guest_echo() {
    use std::io::{Read, Write};

    let Ok(marker) = std::env::var("WASI_PG_SELFTEST_GUEST") else {
        return;
    };
    let file = std::fs::read_to_string("/data/input.txt").expect("read the preopened dir");
    let mut stdin = String::new();
    std::io::stdin()
        .read_to_string(&mut stdin)
        .expect("read stdin");

    // An SSLRequest to the cluster through a name lookup: the server (ssl = off) answers 'N'.
    let port: u16 = std::env::var("WASI_PG_SELFTEST_PORT")
        .expect("port variable")
        .parse()
        .expect("port number");
    let mut stream = std::net::TcpStream::connect(("localhost", port)).expect("connect");
    stream
        .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .expect("send SSLRequest");
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).expect("read SSL answer");

    println!(
        "guest env={marker} file={} stdin={} ssl={}",
        file.trim(),
        stdin.trim(),
        char::from(answer[0])
    );
}

#[cfg(not(target_os = "wasi"))]
mod native {
    use std::net::TcpStream;
    use std::process::Output;
    use std::sync::mpsc;
    use std::thread;
    use std::time::Duration;

    use super::support::{
        Cluster, Role, WasmBuild, build_wasm, free_port, run_with_timeout, wasmtime,
    };

    const TIMEOUT: Duration = Duration::from_secs(60);

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).trim().to_owned()
    }

    fn describe(out: &Output) -> String {
        format!(
            "status {}\nstdout: {}\nstderr: {}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        )
    }

    /// `SELECT current_user` with the real psql as `role` over TCP to `host`, sending
    /// `password` (or none); no password file, no prompting.
    fn current_user(cluster: &Cluster, role: Role, host: &str, password: Option<&str>) -> Output {
        let mut cmd = cluster.psql_command(role);
        cmd.env("PGHOST", host)
            .env("PGPASSFILE", "/nonexistent/pgpass")
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGPASSWORD");
        if let Some(password) = password {
            cmd.env("PGPASSWORD", password);
        }
        cmd.args(["-X", "-w", "-q", "-A", "-t", "-c", "SELECT current_user"]);
        run_with_timeout(cmd, None, TIMEOUT)
    }

    fn assert_login_fails(out: &Output, expected_error: &str, context: &str) {
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(expected_error),
            "{context}: expected a failure containing {expected_error:?}, got {}",
            describe(out)
        );
    }

    fn assert_closed(port: u16, socket_dir: &std::path::Path) {
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "a server still listens on port {port}"
        );
        assert!(
            !socket_dir.exists(),
            "{} was not removed",
            socket_dir.display()
        );
    }

    #[test]
    fn two_clusters_start_side_by_side_and_enforce_each_auth_method() {
        let clusters = thread::scope(|scope| {
            let first = scope.spawn(Cluster::start);
            let second = scope.spawn(Cluster::start);
            [first.join().unwrap(), second.join().unwrap()]
        });
        assert_ne!(clusters[0].port, clusters[1].port);
        assert_ne!(clusters[0].socket_dir, clusters[1].socket_dir);

        for cluster in &clusters {
            for role in Role::ALL {
                let user = Cluster::user(role);
                for host in ["127.0.0.1", "::1"] {
                    let out = current_user(cluster, role, host, Cluster::password(role));
                    assert!(
                        out.status.success() && text(&out.stdout) == user,
                        "{user} via {host} with its password: {}",
                        describe(&out)
                    );
                }
                if Cluster::password(role).is_some() {
                    let context = format!("{user} with a wrong password");
                    let out = current_user(cluster, role, "127.0.0.1", Some("wrong password"));
                    assert_login_fails(&out, "password authentication failed", &context);
                    let out = current_user(cluster, role, "::1", Some("wrong password"));
                    assert_login_fails(&out, "password authentication failed", &context);
                    let out = current_user(cluster, role, "127.0.0.1", None);
                    assert_login_fails(&out, "no password supplied", &context);
                }
            }
            check_hba_rules(cluster);
            check_connection_strings(cluster);
            check_psql_helper(cluster);
        }
    }

    /// The server parsed exactly the pg_hba.conf the harness promises, without errors, and
    /// a user with no line of its own is turned away (no catch-all).
    fn check_hba_rules(cluster: &Cluster) {
        let out = cluster.psql(
            &[
                "-X",
                "-q",
                "-A",
                "-t",
                "-c",
                "SELECT concat_ws(' ', type, array_to_string(database, ','), \
                 array_to_string(user_name, ','), address, auth_method, error) \
                 FROM pg_hba_file_rules ORDER BY line_number",
            ],
            None,
        );
        assert!(
            out.status.success(),
            "pg_hba_file_rules: {}",
            describe(&out)
        );
        let mut expected = vec!["local all all trust".to_owned()];
        for address in ["127.0.0.1", "::1"] {
            for (user, method) in [
                ("pgc_trust", "trust"),
                ("pgc_password", "password"),
                ("pgc_md5", "md5"),
                ("pgc_scram", "scram-sha-256"),
                ("postgres", "trust"),
            ] {
                expected.push(format!("host all {user} {address} {method}"));
            }
            // Physical replication connections of the superuser (the replication scenarios).
            expected.push(format!("host replication postgres {address} trust"));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.lines().collect::<Vec<_>>(), expected);

        let mut cmd = cluster.psql_command(Role::Trust);
        cmd.env("PGUSER", "postgres").args([
            "-X",
            "-w",
            "-q",
            "-A",
            "-t",
            "-c",
            "SELECT current_user",
        ]);
        let out = run_with_timeout(cmd, None, TIMEOUT);
        assert!(
            out.status.success() && text(&out.stdout) == "postgres",
            "postgres over TCP: {}",
            describe(&out)
        );

        let mut cmd = cluster.psql_command(Role::Trust);
        cmd.env("PGUSER", "pgc_nobody")
            .args(["-X", "-w", "-c", "SELECT 1"]);
        let out = run_with_timeout(cmd, None, TIMEOUT);
        assert_login_fails(&out, "no pg_hba.conf entry", "a user without a pg_hba line");
    }

    /// conninfo() and url() have the promised shape, and libpq itself accepts them: psql
    /// gets nothing but the string (no PG* variables, so the password comes from it).
    fn check_connection_strings(cluster: &Cluster) {
        let port = cluster.port;
        assert_eq!(
            cluster.conninfo(Role::Md5),
            format!(
                "host=127.0.0.1 port={port} user=pgc_md5 password='md5 p@ss:1' dbname=postgres"
            )
        );
        assert_eq!(
            cluster.conninfo(Role::Trust),
            format!("host=127.0.0.1 port={port} user=pgc_trust dbname=postgres")
        );
        assert_eq!(
            cluster.url(Role::Scram),
            format!("postgresql://pgc_scram:scr%40m%2Fpw%3A2@127.0.0.1:{port}/postgres")
        );
        assert_eq!(
            cluster.url(Role::Trust),
            format!("postgresql://pgc_trust@127.0.0.1:{port}/postgres")
        );

        for role in Role::ALL {
            for target in [cluster.conninfo(role), cluster.url(role)] {
                let mut cmd = cluster.psql_command(role);
                for key in ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD"] {
                    cmd.env_remove(key);
                }
                cmd.env("PGPASSFILE", "/nonexistent/pgpass").args([
                    "-X",
                    "-w",
                    "-q",
                    "-A",
                    "-t",
                    "-d",
                    &target,
                    "-c",
                    "SELECT current_user",
                ]);
                let out = run_with_timeout(cmd, None, TIMEOUT);
                assert!(
                    out.status.success() && text(&out.stdout) == Cluster::user(role),
                    "psql -d {target:?}: {}",
                    describe(&out)
                );
            }
        }
    }

    fn check_psql_helper(cluster: &Cluster) {
        let out = cluster.psql(&["-X", "-q", "-A", "-t", "-c", "SELECT current_user"], None);
        assert_eq!(text(&out.stdout), "pgc_trust", "{}", describe(&out));

        let out = cluster.psql(
            &["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"],
            Some(b"SELECT 40 + 2;\nSHOW password_encryption;\n"),
        );
        assert_eq!(text(&out.stdout), "42\nscram-sha-256", "{}", describe(&out));
    }

    #[test]
    fn stop_is_idempotent_and_drop_cleans_up_after_a_panic() {
        let mut cluster = Cluster::start();
        let (port, socket_dir) = (cluster.port, cluster.socket_dir.clone());
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
        cluster.stop();
        cluster.stop();
        assert_closed(port, &socket_dir);
        drop(cluster);

        let (tx, rx) = mpsc::channel();
        let result = thread::spawn(move || {
            let cluster = Cluster::start();
            tx.send((cluster.port, cluster.socket_dir.clone())).unwrap();
            panic!("deliberate panic: Drop must stop the cluster");
        })
        .join();
        assert!(result.is_err());
        let (port, socket_dir) = rx.recv().unwrap();
        assert_closed(port, &socket_dir);
    }

    #[test]
    fn free_port_gives_bindable_ports() {
        // Another test's client connection can take a probed port before we bind it (see
        // `free_port`), so one miss is not a failure; three in a row would be.
        let bound = (0..3).any(|_| {
            let port = free_port();
            port != 0 && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        });
        assert!(bound, "three ports from free_port() were all taken");
    }

    #[test]
    fn wasm_helpers_build_and_run_a_guest() {
        let wasm = build_wasm(WasmBuild::Test("harness_selftest"));
        assert_eq!(wasm.extension().and_then(|e| e.to_str()), Some("wasm"));
        assert!(wasm.is_file(), "{} is missing", wasm.display());
        // Built once per process: a second call must not rebuild (or move) it.
        assert_eq!(build_wasm(WasmBuild::Test("harness_selftest")), wasm);

        let cluster = Cluster::start();
        let port = cluster.port.to_string();
        let dir = cluster.socket_dir.parent().unwrap().join("guest-data");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("input.txt"), "from a file\n").unwrap();

        let out = wasmtime(
            &wasm,
            &["wasm_guest_echo", "--exact", "--nocapture"],
            &[
                ("WASI_PG_SELFTEST_GUEST", "a marker"),
                ("WASI_PG_SELFTEST_PORT", &port),
            ],
            &[(&dir, "/data")],
            Some(b"from stdin\n"),
        );
        assert!(
            out.status.success()
                && text(&out.stdout)
                    .contains("guest env=a marker file=from a file stdin=from stdin ssl=N"),
            "{}",
            describe(&out)
        );
    }
}
