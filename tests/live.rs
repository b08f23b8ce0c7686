//! The live scenario suite, written once and run on both targets against a real PostgreSQL 15.
//!
//! Natively this binary starts throwaway clusters, runs every scenario on tokio, then runs this same file built
//! for wasm32-wasip2 under the real wasmtime CLI against the same clusters (the conninfo strings travel as
//! environment variables, the password file and the certificates through preopened directories). Each target
//! prints `<target>: N passed, M failed`; any failure fails the test.
//!
//! The clusters: the main one (`ssl = off`), and three with `ssl = on` for `scenarios/tls.rs`, each presenting
//! a different server certificate (PostgreSQL 15 has one per server). They start in parallel, while cargo
//! builds the wasm artifact. PgBouncer, in transaction pooling mode, runs in front of the main cluster for
//! `scenarios/pgbouncer.rs`.

mod scenarios;

use scenarios::Env;

#[cfg(not(target_os = "wasi"))]
#[allow(dead_code)]
mod support;

#[cfg(not(target_os = "wasi"))]
fn main() {
    use std::net::TcpListener;
    use support::tls::{ServerCert, TestCerts};
    use support::{Cluster, PgBouncer, Role, Setup, WasmBuild};

    // The build needs no cluster and the clusters need no build: overlap them.
    let wasm_build = std::thread::spawn(|| support::build_wasm(WasmBuild::Test("live")));
    let certs = TestCerts::generate();
    let tls_setup = |cert, client_ca| Setup {
        ssl: Some(certs.server_tls(cert, client_ca)),
        tls_roles: true,
    };
    let setups = [
        Setup {
            ssl: None,
            tls_roles: true,
        },
        tls_setup(ServerCert::Good, true),
        tls_setup(ServerCert::NoName, false),
        tls_setup(ServerCert::Ed25519, false),
    ];
    let [cluster, tls, no_name, ed25519] = std::thread::scope(|scope| {
        setups
            .each_ref()
            .map(|setup| scope.spawn(move || Cluster::start_with(setup)))
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
    });
    let pgbouncer = PgBouncer::start(&cluster, Role::Scram);
    // A listener that accepts connections (the kernel completes the handshake) but never answers: the
    // connect_timeout scenario needs one.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind the silent listener");
    let passfile_dir = write_passfile(&cluster);
    let passfile = passfile_dir.join("pgpass");
    let env = Env {
        host: cluster.host.clone(),
        port: cluster.port,
        trust: cluster.conninfo(Role::Trust),
        password: cluster.conninfo(Role::Password),
        md5: cluster.conninfo(Role::Md5),
        scram: cluster.conninfo(Role::Scram),
        scram_url: cluster.url(Role::Scram),
        scram_password: Cluster::password(Role::Scram)
            .unwrap_or_default()
            .to_string(),
        silent_port: silent.local_addr().expect("silent listener address").port(),
        closed_port: support::free_port(),
        socket_dir: Some(cluster.socket_dir.display().to_string()),
        passfile: passfile.display().to_string(),
        tls: scenarios::TlsEnv {
            port: tls.port,
            no_name_port: no_name.port,
            ed25519_port: ed25519.port,
            certs: certs.dir().display().to_string(),
            logins: scenarios::Login::ALL
                .iter()
                .map(|login| {
                    Cluster::login(match login {
                        scenarios::Login::Trust => Role::Trust,
                        scenarios::Login::Password => Role::Password,
                        scenarios::Login::Md5 => Role::Md5,
                        scenarios::Login::Scram => Role::Scram,
                        scenarios::Login::Cert => Role::Cert,
                        scenarios::Login::SslOnly => Role::SslOnly,
                        scenarios::Login::NoSsl => Role::NoSsl,
                    })
                })
                .collect(),
        },
        pgbouncer: scenarios::PgBouncerEnv {
            conninfo: pgbouncer.conninfo(),
            pool_size: pgbouncer.pool_size,
        },
    };

    // Wait for the build before the native run, so that it does not compete with the scenarios for CPU.
    let wasm = wasm_build
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let native = runtime.block_on(scenarios::run_all(&env, "native", Vec::new()));

    let mut vars = env.to_vars();
    // The component sees the password file and the certificates through preopened directories.
    vars.push(("LIVE_PASSFILE", "/pgpass/pgpass".to_string()));
    vars.push(("LIVE_TLS_CERTS", "/certs".to_string()));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let output = support::wasmtime(
        &wasm,
        &[],
        &vars,
        &[(passfile_dir.as_path(), "/pgpass"), (certs.dir(), "/certs")],
        None,
    );
    let _ = std::fs::remove_dir_all(&passfile_dir);
    // Kept for the failure report: the drop deletes the log. The drop comes before the clusters' and before
    // exit() below could skip it (its reaper would still stop it).
    let pgbouncer_log = pgbouncer.log_tail(20);
    drop(pgbouncer);
    // Deletes the certificate dir; exit() below would skip it.
    drop(certs);
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    let wasm_summary = stdout
        .lines()
        .find(|l| l.starts_with("wasm32-wasip2: ") && l.contains(" passed, "))
        .map(str::to_string)
        .unwrap_or_else(|| "wasm32-wasip2: no summary line (the component crashed)".to_string());

    println!(
        "\nscenario totals:\n  native: {} passed, {} failed",
        native.passed, native.failed
    );
    println!("  {wasm_summary}");
    let wasm_ok = output.status.success() && wasm_summary.ends_with(" 0 failed");
    if native.failed > 0 || !wasm_ok {
        eprintln!("PgBouncer log (last 20 lines, for the pgbouncer_* scenarios):\n{pgbouncer_log}");
        eprintln!("live scenarios failed");
        std::process::exit(1);
    }
}

/// Writes a password file (mode 0600) with entries for the scram and md5 roles, not for the password role.
#[cfg(not(target_os = "wasi"))]
fn write_passfile(cluster: &support::Cluster) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    use support::{Cluster, Role};
    let escape = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    let dir = std::env::temp_dir().join(format!("wasi-pg-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the passfile dir");
    let contents = format!(
        "# written by tests/live.rs\n{}:{}:postgres:pgc_scram:{}\n*:*:*:pgc_md5:{}\n",
        cluster.host,
        cluster.port,
        escape(Cluster::password(Role::Scram).unwrap_or_default()),
        escape(Cluster::password(Role::Md5).unwrap_or_default()),
    );
    let path = dir.join("pgpass");
    std::fs::write(&path, contents).expect("write the passfile");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .expect("chmod the passfile");
    dir
}

#[cfg(target_os = "wasi")]
fn main() {
    use wstd::runtime::block_on;
    let env = Env::from_vars();
    // A client made under one reactor must keep working under the next one: the transport leaves no wait
    // registered between calls.
    let first = block_on(scenarios::client_for_next_reactor(&env));
    let result = block_on(async {
        let carried = scenarios::client_from_previous_reactor(first).await;
        scenarios::run_all(
            &env,
            "wasm32-wasip2",
            vec![("client_survives_a_second_block_on", carried)],
        )
        .await
    });
    if result.failed > 0 {
        std::process::exit(1);
    }
}
