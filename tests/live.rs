//! The live scenario suite, written once and run on both targets against a real PostgreSQL 15.
//!
//! Natively this binary starts throwaway clusters, runs every scenario on tokio, then runs this same file built
//! for wasm32-wasip2 under the real wasmtime CLI against the same clusters, once on WASI 0.2 and once built with
//! the `wasip3` feature on WASI 0.3 (the conninfo strings travel as
//! environment variables, the password file and the certificates through preopened directories). The runner is
//! the one the other two-target binaries share (`tests/support/two_target.rs`): each target prints
//! `<target>: N passed, M failed`; any failure fails the test, naming the scenario and the target.
//!
//! The clusters: the main one (`ssl = off`), and three with `ssl = on` for `scenarios/tls.rs`, each presenting
//! a different server certificate (PostgreSQL 15 has one per server). They start in parallel, while cargo
//! builds the wasm artifact. PgBouncer, in transaction pooling mode, runs in front of the main cluster for
//! `scenarios/pgbouncer.rs`.

#[cfg(not(target_os = "wasi"))]
#[allow(dead_code)]
mod support;
#[macro_use]
#[path = "support/two_target.rs"]
mod two_target;

mod scenarios;

use scenarios::Env;

/// The check the guest runs before the scenarios: a client made under one `block_on` used under the next.
const SECOND_BLOCK_ON: &str = "client_survives_a_second_block_on";

/// A scenario's outcome as the runner records it: a pass with nothing seen to report.
fn recorded(outcome: scenarios::Outcome) -> two_target::Outcome {
    outcome.map(|()| String::new())
}

#[cfg(not(target_os = "wasi"))]
fn main() {
    // `run` returns before the exit, so the servers are stopped and the temp dirs deleted either way.
    run().finish("scenario");
}

/// Runs every scenario natively, then under wasmtime (WASI 0.2, then 0.3), against the same servers.
#[cfg(not(target_os = "wasi"))]
fn run() -> two_target::Totals {
    use std::net::TcpListener;
    use support::tls::{ServerCert, TestCerts};
    use support::{Cluster, PgBouncer, Role, Setup};
    use two_target::{Guest, Tally, Totals};

    // The build needs no cluster and the clusters need no build: overlap them.
    let build = Guest::build_in_background();
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
    let guest = build.wait();
    let mut native = Tally::native();
    two_target::native_runtime().block_on(async {
        for (name, scenario) in scenarios::all() {
            native.record(name, recorded(scenario(&env).await));
        }
    });
    native.end();

    let mut vars = env.to_vars();
    // The component sees the password file and the certificates through preopened directories.
    vars.push(("LIVE_PASSFILE", "/pgpass/pgpass".to_string()));
    vars.push(("LIVE_TLS_CERTS", "/certs".to_string()));
    if let Ok(only) = std::env::var(scenarios::ONLY_VAR) {
        vars.push((scenarios::ONLY_VAR, only));
    }
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // The same scenarios in each guest build (WASI 0.2, then 0.3), against the same servers.
    let run_guest = |guest: Guest| {
        let mut tally = Tally::for_guest(&guest);
        let run = guest.run(
            &vars,
            &[(passfile_dir.as_path(), "/pgpass"), (certs.dir(), "/certs")],
        );
        // The figures the scenarios printed in the guest.
        for line in run.other_lines() {
            println!("{line}");
        }
        let expected = scenarios::all()
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| !scenarios::NATIVE_ONLY.contains(name));
        tally.record_guest(&run, std::iter::once(SECOND_BLOCK_ON).chain(expected));
        tally.end();
        tally
    };
    let wasm = run_guest(guest);
    let wasi_p3 = run_guest(Guest::build_p3());
    let _ = std::fs::remove_dir_all(&passfile_dir);
    if native.failed() || wasm.failed() || wasi_p3.failed() {
        eprintln!(
            "PgBouncer log (last 20 lines, for the pgbouncer_* scenarios):\n{}",
            pgbouncer.log_tail(20)
        );
    }
    Totals {
        native,
        wasm,
        wasi_p3,
        notes: Vec::new(),
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

/// Runs every scenario against the servers the host passed and prints an outcome line for each.
#[cfg(target_os = "wasi")]
fn main() {
    let env = Env::from_vars();
    let scenarios = scenarios::all();
    // The host expects no outcome for these.
    if let Some((name, _)) = scenarios
        .iter()
        .find(|(name, _)| scenarios::NATIVE_ONLY.contains(name))
    {
        panic!("{name} runs on wasm32-wasip2 too: take it out of scenarios::NATIVE_ONLY");
    }
    // A client made under one reactor must keep working under the next one: the transport leaves no wait
    // registered between calls.
    let first = two_target::block_on(scenarios::client_for_next_reactor(&env));
    two_target::run_in_guest(SECOND_BLOCK_ON, async {
        recorded(scenarios::client_from_previous_reactor(first).await)
    });
    for (name, scenario) in scenarios {
        two_target::run_in_guest(name, async { recorded(scenario(&env).await) });
    }
}
