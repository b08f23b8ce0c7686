//! `target_session_attrs` and `load_balance_hosts` against a real primary and a real hot standby, on both
//! targets.
//!
//! Natively this binary starts a primary and a standby streaming from it (`Cluster::start_replicated`), runs
//! every case on tokio, then builds itself for wasm32-wasip2 and runs the same cases under the real wasmtime
//! CLI (the ports and logins travel as environment variables; the component connects over loopback). The
//! cases come in three phases: both nodes up, the primary shut down, the primary started again. The native
//! side moves the cluster from one phase to the next, and runs the guest once per phase. Each target prints
//! `<target>: N passed, M failed`; any failure fails the test.
//!
//! Every expectation is what libpq does with the same connection string: psql 15 was run by hand against the
//! same two nodes for each `target_session_attrs` case and chose the same node or failed on the same hosts,
//! and a misfit is reported in libpq's words ("session is read-only", "session is not read-only", "server is
//! in hot standby mode", "server is not in hot standby mode"). `load_balance_hosts` came with libpq 16; the cases follow its
//! documented behaviour.
//!
//! `ROLES_SERVE=1 cargo test --test roles` only starts the two nodes and prints how to reach them, until stdin
//! closes, to try another client (such as psql) against them.

#[cfg(not(target_os = "wasi"))]
#[allow(dead_code)]
mod support;
#[macro_use]
#[path = "support/two_target.rs"]
mod two_target;

use std::future::Future;
use std::pin::Pin;

use two_target::Outcome;
use wasi_pg_client::{Client, Config, SimpleQueryMessage};

/// How many connections the `load_balance_hosts=random` case makes; both nodes turn up in all but 2 of 2^40
/// runs.
const RANDOM_CONNECTS: usize = 40;
/// How many connections the cases that expect the same node every time make.
const REPEATED_CONNECTS: usize = 10;

/// Where the nodes listen and how to log in, as a case sees them.
struct Nodes {
    primary: u16,
    standby: u16,
    /// A loopback port nothing listens on: a node that is down.
    unused: u16,
    /// `user=...` (and `password=...`) of a role with no settings of its own.
    login: String,
    /// The same for a role with `default_transaction_read_only = on` set on it.
    read_only_login: String,
}

impl Nodes {
    /// A conninfo for `ports` (in that order, all on 127.0.0.1) with `extra` settings appended.
    /// connect_timeout keeps a stalled node from hanging the run.
    fn conninfo(&self, login: &str, ports: &[u16], extra: &str) -> String {
        let hosts = vec!["127.0.0.1"; ports.len()].join(",");
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        format!(
            "host={hosts} port={} {login} dbname=postgres connect_timeout=10 {extra}",
            ports.join(",")
        )
    }

    /// The two host orders every case tries: primary first, then standby first.
    fn orders(&self) -> [(&'static str, [u16; 2]); 2] {
        [
            ("primary first", [self.primary, self.standby]),
            ("standby first", [self.standby, self.primary]),
        ]
    }
}

/// Which node a session reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Primary,
    Standby,
}

/// The cluster state a case needs; the native side sets it up before the phase's cases run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    BothUp,
    PrimaryDown,
    PrimaryBack,
}

impl Phase {
    const ALL: [Phase; 3] = [Phase::BothUp, Phase::PrimaryDown, Phase::PrimaryBack];

    fn name(self) -> &'static str {
        match self {
            Phase::BothUp => "both-up",
            Phase::PrimaryDown => "primary-down",
            Phase::PrimaryBack => "primary-back",
        }
    }
}

type CaseFuture<'a> = Pin<Box<dyn Future<Output = Outcome> + 'a>>;

struct Case {
    name: &'static str,
    phase: Phase,
    run: for<'a> fn(&'a Nodes) -> CaseFuture<'a>,
}

macro_rules! cases {
    ($($phase:ident: $name:ident),* $(,)?) => {
        vec![$(Case {
            name: stringify!($name),
            phase: Phase::$phase,
            run: |nodes| Box::pin($name(nodes)),
        }),*]
    };
}

fn all_cases() -> Vec<Case> {
    cases![
        BothUp: any_takes_the_first_host,
        BothUp: read_write_finds_the_primary,
        BothUp: primary_finds_the_primary,
        BothUp: read_only_finds_the_standby,
        BothUp: standby_finds_the_standby,
        BothUp: prefer_standby_finds_the_standby,
        BothUp: read_only_takes_a_primary_read_only_by_role,
        BothUp: read_only_takes_a_primary_read_only_by_options,
        BothUp: prefer_standby_falls_back_to_the_primary,
        BothUp: standby_list_fails_read_write,
        BothUp: load_balance_random_reaches_both,
        BothUp: load_balance_random_still_checks_the_session,
        BothUp: load_balance_disable_keeps_the_order,
        PrimaryDown: primary_down_read_write_fails,
        PrimaryDown: primary_down_primary_fails,
        PrimaryDown: primary_down_any_reaches_the_standby,
        PrimaryDown: primary_down_standby_reaches_the_standby,
        PrimaryDown: primary_down_prefer_standby_reaches_the_standby,
        PrimaryDown: primary_down_read_only_reaches_the_standby,
        PrimaryBack: primary_back_read_write_reaches_it,
        PrimaryBack: primary_back_primary_reaches_it,
    ]
}

// ---------------------------------------------------------------------------------------------------------
// The cases.
// ---------------------------------------------------------------------------------------------------------

/// `any` takes the first host that accepts, whatever it is.
async fn any_takes_the_first_host(nodes: &Nodes) -> Outcome {
    let [(first, primary_first), (second, standby_first)] = nodes.orders();
    let a = expect_node(
        nodes,
        &primary_first,
        "target_session_attrs=any",
        Node::Primary,
    )
    .await?;
    let b = expect_node(
        nodes,
        &standby_first,
        "target_session_attrs=any",
        Node::Standby,
    )
    .await?;
    Ok(format!("{first}: {a}; {second}: {b}"))
}

async fn read_write_finds_the_primary(nodes: &Nodes) -> Outcome {
    both_orders(nodes, "target_session_attrs=read-write", Node::Primary).await
}

async fn primary_finds_the_primary(nodes: &Nodes) -> Outcome {
    both_orders(nodes, "target_session_attrs=primary", Node::Primary).await
}

async fn read_only_finds_the_standby(nodes: &Nodes) -> Outcome {
    both_orders(nodes, "target_session_attrs=read-only", Node::Standby).await
}

async fn standby_finds_the_standby(nodes: &Nodes) -> Outcome {
    both_orders(nodes, "target_session_attrs=standby", Node::Standby).await
}

async fn prefer_standby_finds_the_standby(nodes: &Nodes) -> Outcome {
    both_orders(nodes, "target_session_attrs=prefer-standby", Node::Standby).await
}

/// read-only is about the session, not the server: a primary whose role has `default_transaction_read_only =
/// on` is read-only (libpq checks it too), so it is taken when listed first; read-write then fits no node.
async fn read_only_takes_a_primary_read_only_by_role(nodes: &Nodes) -> Outcome {
    read_only_primary(nodes, &nodes.read_only_login, "").await
}

/// The same with `default_transaction_read_only` set through the startup `options`.
async fn read_only_takes_a_primary_read_only_by_options(nodes: &Nodes) -> Outcome {
    let options = "options='-c default_transaction_read_only=on'";
    read_only_primary(nodes, &nodes.login, options).await
}

/// prefer-standby takes the primary when no standby answers (a port nothing listens on stands in for a standby
/// that is down), in either order; standby then fails.
async fn prefer_standby_falls_back_to_the_primary(nodes: &Nodes) -> Outcome {
    let attrs = "target_session_attrs=prefer-standby";
    for ports in [[nodes.unused, nodes.primary], [nodes.primary, nodes.unused]] {
        expect_node(nodes, &ports, attrs, Node::Primary).await?;
    }
    let ports = [nodes.primary, nodes.unused];
    let e = expect_failure(
        nodes,
        &nodes.login,
        &ports,
        "target_session_attrs=standby",
        &["server is not in hot standby mode", "refused"],
    )
    .await?;
    Ok(format!("primary both ways; standby: {e}"))
}

/// A list of standbys only never fits read-write or primary, and a primary alone never fits read-only; each
/// error gives libpq's reason.
async fn standby_list_fails_read_write(nodes: &Nodes) -> Outcome {
    let standbys = [nodes.standby, nodes.standby];
    let primary = [nodes.primary];
    let mut seen = Vec::new();
    for (ports, attrs, reason) in [
        (&standbys[..], "read-write", "session is read-only"),
        (&standbys[..], "primary", "server is in hot standby mode"),
        (&primary[..], "read-only", "session is not read-only"),
    ] {
        let extra = format!("target_session_attrs={attrs}");
        seen.push(expect_failure(nodes, &nodes.login, ports, &extra, &[reason]).await?);
    }
    Ok(seen.join("; "))
}

/// `load_balance_hosts=random` spreads `any` sessions over both nodes.
async fn load_balance_random_reaches_both(nodes: &Nodes) -> Outcome {
    let extra = "target_session_attrs=any load_balance_hosts=random";
    let ports = [nodes.primary, nodes.standby];
    let mut reached = Vec::with_capacity(RANDOM_CONNECTS);
    for _ in 0..RANDOM_CONNECTS {
        reached.push(connect_and_see(nodes, &nodes.login, &ports, extra).await?);
    }
    let primary = reached.iter().filter(|&&n| n == Node::Primary).count();
    let standby = reached.len() - primary;
    ensure!(
        primary > 0 && standby > 0,
        "{RANDOM_CONNECTS} connects reached the primary {primary} times and the standby {standby} times"
    );
    Ok(format!(
        "{RANDOM_CONNECTS} connects: primary {primary}, standby {standby}"
    ))
}

/// Shuffled hosts still go through the session check: read-write always reaches the primary, standby always
/// the standby.
async fn load_balance_random_still_checks_the_session(nodes: &Nodes) -> Outcome {
    let ports = [nodes.primary, nodes.standby];
    for (attrs, want) in [("read-write", Node::Primary), ("standby", Node::Standby)] {
        let extra = format!("target_session_attrs={attrs} load_balance_hosts=random");
        for _ in 0..REPEATED_CONNECTS {
            let reached = connect_and_see(nodes, &nodes.login, &ports, &extra).await?;
            ensure!(reached == want, "{attrs} reached the {reached:?}");
        }
    }
    Ok(format!(
        "{REPEATED_CONNECTS} connects each: read-write on the primary, standby on the standby"
    ))
}

/// `load_balance_hosts=disable` (the default) always takes the first host.
async fn load_balance_disable_keeps_the_order(nodes: &Nodes) -> Outcome {
    let extra = "target_session_attrs=any load_balance_hosts=disable";
    for ((order, ports), want) in nodes
        .orders()
        .into_iter()
        .zip([Node::Primary, Node::Standby])
    {
        for _ in 0..REPEATED_CONNECTS {
            let reached = connect_and_see(nodes, &nodes.login, &ports, extra).await?;
            ensure!(reached == want, "{order}: reached the {reached:?}");
        }
    }
    Ok(format!(
        "{REPEATED_CONNECTS} connects per order, always the first"
    ))
}

/// With the primary down, read-write fits no node: the error names both hosts and why each failed.
async fn primary_down_read_write_fails(nodes: &Nodes) -> Outcome {
    primary_down_fails(nodes, "read-write", "session is read-only").await
}

async fn primary_down_primary_fails(nodes: &Nodes) -> Outcome {
    primary_down_fails(nodes, "primary", "server is in hot standby mode").await
}

async fn primary_down_any_reaches_the_standby(nodes: &Nodes) -> Outcome {
    both_orders(nodes, "target_session_attrs=any", Node::Standby).await
}

async fn primary_down_standby_reaches_the_standby(nodes: &Nodes) -> Outcome {
    both_orders(nodes, "target_session_attrs=standby", Node::Standby).await
}

async fn primary_down_prefer_standby_reaches_the_standby(nodes: &Nodes) -> Outcome {
    both_orders(nodes, "target_session_attrs=prefer-standby", Node::Standby).await
}

async fn primary_down_read_only_reaches_the_standby(nodes: &Nodes) -> Outcome {
    both_orders(nodes, "target_session_attrs=read-only", Node::Standby).await
}

/// Once the primary is back, read-write finds it again.
async fn primary_back_read_write_reaches_it(nodes: &Nodes) -> Outcome {
    both_orders(nodes, "target_session_attrs=read-write", Node::Primary).await
}

async fn primary_back_primary_reaches_it(nodes: &Nodes) -> Outcome {
    both_orders(nodes, "target_session_attrs=primary", Node::Primary).await
}

// ---------------------------------------------------------------------------------------------------------
// Client-side helpers.
// ---------------------------------------------------------------------------------------------------------

/// `extra` reaches `want` with the hosts in both orders.
async fn both_orders(nodes: &Nodes, extra: &str, want: Node) -> Outcome {
    let mut seen = Vec::new();
    for (order, ports) in nodes.orders() {
        let reached = expect_node(nodes, &ports, extra, want).await?;
        seen.push(format!("{order}: {reached}"));
    }
    Ok(seen.join("; "))
}

/// Connects as the plain login and checks the session is on `want`.
async fn expect_node(nodes: &Nodes, ports: &[u16], extra: &str, want: Node) -> Outcome {
    let reached = connect_and_see(nodes, &nodes.login, ports, extra).await?;
    ensure!(
        reached == want,
        "{extra} with ports {ports:?} reached the {reached:?}, not the {want:?}"
    );
    Ok(format!("{reached:?}").to_lowercase())
}

/// Connects and asks the server which node it is: `pg_is_in_recovery()` and `inet_server_port()` must agree.
async fn connect_and_see(
    nodes: &Nodes,
    login: &str,
    ports: &[u16],
    extra: &str,
) -> Result<Node, String> {
    let mut client = connect(&nodes.conninfo(login, ports, extra)).await?;
    let row = first_row(
        &mut client,
        "SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.inet_server_port()",
    )
    .await?;
    close(client).await?;
    let port = row[1].parse::<u16>().ok();
    match (row[0].as_str(), port) {
        ("f", Some(port)) if port == nodes.primary => Ok(Node::Primary),
        ("t", Some(port)) if port == nodes.standby => Ok(Node::Standby),
        _ => Err(format!(
            "{extra}: pg_is_in_recovery {} on port {}, but the primary is on {} and the standby on {}",
            row[0], row[1], nodes.primary, nodes.standby
        )),
    }
}

/// A session read-only through `login` or `extra` fits read-only on the primary when it comes first (and on
/// the standby when that does), and fits read-write nowhere.
async fn read_only_primary(nodes: &Nodes, login: &str, extra: &str) -> Outcome {
    let [(_, primary_first), (_, standby_first)] = nodes.orders();
    let read_only = format!("{extra} target_session_attrs=read-only");
    let conninfo = nodes.conninfo(login, &primary_first, &read_only);
    let mut client = connect(&conninfo).await?;
    let row = first_row(
        &mut client,
        "SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.current_setting('transaction_read_only')",
    )
    .await?;
    close(client).await?;
    ensure!(
        row == ["f", "on"],
        "read-only, primary first: (in recovery, transaction_read_only) = {row:?}, not the read-only primary"
    );
    let reached = connect_and_see(nodes, login, &standby_first, &read_only).await?;
    ensure!(
        reached == Node::Standby,
        "read-only, standby first: reached the {reached:?}"
    );
    let read_write = format!("{extra} target_session_attrs=read-write");
    let e = expect_failure(
        nodes,
        login,
        &primary_first,
        &read_write,
        &["session is read-only"],
    )
    .await?;
    Ok(format!(
        "read-only: the primary when first, the standby when first; read-write: {e}"
    ))
}

/// The primary is down: `attrs` fails in both orders, naming both hosts, the primary's refused connection and
/// the standby's unfit session.
/// `reason`: libpq's words for why the standby does not fit.
async fn primary_down_fails(nodes: &Nodes, attrs: &str, reason: &str) -> Outcome {
    let extra = format!("target_session_attrs={attrs}");
    let mut seen = String::new();
    for (_, ports) in nodes.orders() {
        let needles = [
            format!("port {}", nodes.primary),
            format!("port {}", nodes.standby),
            "refused".to_string(),
            reason.to_string(),
        ];
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        seen = expect_failure(nodes, &nodes.login, &ports, &extra, &needles).await?;
    }
    Ok(seen)
}

/// The connect fails, and its message mentions every one of `needles` (case-insensitively).
async fn expect_failure(
    nodes: &Nodes,
    login: &str,
    ports: &[u16],
    extra: &str,
    needles: &[&str],
) -> Outcome {
    let conninfo = nodes.conninfo(login, ports, extra);
    let config = Config::parse(&conninfo).map_err(|e| format!("parse: {e}"))?;
    let error = match Client::connect(&config).await {
        Ok(mut client) => {
            let row = first_row(&mut client, "SELECT pg_catalog.inet_server_port()").await;
            return Err(format!(
                "{extra} with ports {ports:?} connected (server port {row:?}) but should have failed"
            ));
        }
        Err(e) => e.to_string(),
    };
    let lower = error.to_lowercase();
    for needle in needles {
        ensure!(
            lower.contains(&needle.to_lowercase()),
            "the error does not mention {needle:?}: {error}"
        );
    }
    Ok(error.replace('\n', " | "))
}

async fn connect(conninfo: &str) -> Result<Client, String> {
    let config = Config::parse(conninfo).map_err(|e| format!("parse: {e}"))?;
    Client::connect(&config)
        .await
        .map_err(|e| format!("connect ({conninfo}): {e}"))
}

async fn close(client: Client) -> Result<(), String> {
    client.close().await.map_err(|e| format!("close: {e}"))
}

/// The first row of `sql` as text, NULLs as empty strings.
async fn first_row(client: &mut Client, sql: &str) -> Result<Vec<String>, String> {
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|e| format!("{sql}: {e}"))?;
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or_default().to_string())
                    .collect(),
            ),
            _ => None,
        })
        .ok_or_else(|| format!("{sql}: no row"))
}

// ---------------------------------------------------------------------------------------------------------
// The two harnesses.
// ---------------------------------------------------------------------------------------------------------

/// The environment variables that carry [`Nodes`] and the phase to the guest.
const ENV_PRIMARY: &str = "ROLES_PRIMARY_PORT";
const ENV_STANDBY: &str = "ROLES_STANDBY_PORT";
const ENV_UNUSED: &str = "ROLES_UNUSED_PORT";
const ENV_LOGIN: &str = "ROLES_LOGIN";
const ENV_READ_ONLY_LOGIN: &str = "ROLES_READ_ONLY_LOGIN";
const ENV_PHASE: &str = "ROLES_PHASE";

#[cfg(not(target_os = "wasi"))]
fn main() {
    // `run` returns before the exit, so the clusters are stopped and deleted either way.
    if let Some(totals) = run() {
        totals.finish("role");
    }
}

/// Runs every case natively, then under wasmtime on WASI 0.2 and 0.3 (once per phase each); `None` for `ROLES_SERVE`.
#[cfg(not(target_os = "wasi"))]
fn run() -> Option<two_target::Totals> {
    use std::time::Instant;
    use support::{Cluster, Role};
    use two_target::{Guest, Tally, Totals};

    let serve_only = std::env::var_os("ROLES_SERVE").is_some();
    // The guest builds while the clusters start.
    let build = (!serve_only).then(Guest::build_in_background);
    let started = Instant::now();
    let (mut primary, standby) = Cluster::start_replicated();
    // The role of the read-only case; a role setting reaches the standby too, where it changes nothing.
    let read_only_role = Role::Scram;
    let alter = format!(
        "ALTER ROLE {} SET default_transaction_read_only = on",
        Cluster::user(read_only_role)
    );
    let out = primary.psql(&["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", &alter], None);
    assert!(
        out.status.success(),
        "{alter}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nodes = Nodes {
        primary: primary.port,
        standby: standby.port,
        unused: support::free_port(),
        login: Cluster::login(Role::Trust),
        read_only_login: Cluster::login(read_only_role),
    };
    let setup_time = started.elapsed();
    let Some(build) = build else {
        serve(&nodes);
        return None;
    };

    let cases = all_cases();
    let in_phase = |phase| cases.iter().filter(move |case: &&Case| case.phase == phase);
    let mut native = Tally::native();
    let runtime = two_target::native_runtime();
    for phase in Phase::ALL {
        enter(phase, &mut primary);
        for case in in_phase(phase) {
            native.record(case.name, runtime.block_on((case.run)(&nodes)));
        }
    }
    native.end();

    // The same phases in each guest build (WASI 0.2, then 0.3). The primary is up again after the last phase,
    // as the first expects.
    let ports = [nodes.primary, nodes.standby, nodes.unused].map(|port| port.to_string());
    let mut run_guest = |guest: Guest| {
        let mut tally = Tally::for_guest(&guest);
        for phase in Phase::ALL {
            enter(phase, &mut primary);
            let run = guest.run(
                &[
                    (ENV_PHASE, phase.name()),
                    (ENV_PRIMARY, &ports[0]),
                    (ENV_STANDBY, &ports[1]),
                    (ENV_UNUSED, &ports[2]),
                    (ENV_LOGIN, &nodes.login),
                    (ENV_READ_ONLY_LOGIN, &nodes.read_only_login),
                ],
                &[],
            );
            tally.record_guest(&run, in_phase(phase).map(|case| case.name));
        }
        tally.end();
        tally
    };
    let wasm = run_guest(build.wait());
    let wasi_p3 = run_guest(Guest::build_p3());
    drop((primary, standby));

    Some(Totals {
        native,
        wasm,
        wasi_p3,
        notes: vec![format!(
            "setup: primary and standby streaming in {setup_time:.1?}"
        )],
    })
}

/// Puts the primary in the state `phase` needs (the standby stays up throughout).
#[cfg(not(target_os = "wasi"))]
fn enter(phase: Phase, primary: &mut support::Cluster) {
    match phase {
        Phase::BothUp => {}
        Phase::PrimaryDown => primary.shut_down(),
        Phase::PrimaryBack => primary.start_again(),
    }
}

/// `ROLES_SERVE`: prints how to reach the nodes, then waits for stdin to close.
#[cfg(not(target_os = "wasi"))]
fn serve(nodes: &Nodes) {
    let both = nodes.conninfo(&nodes.login, &[nodes.primary, nodes.standby], "");
    println!(
        "primary on port {}, standby on port {}, nothing on port {}",
        nodes.primary, nodes.standby, nodes.unused
    );
    println!("try: psql \"{both}target_session_attrs=standby\" -Atc 'select pg_is_in_recovery()'");
    println!("read-only role: {}", nodes.read_only_login);
    println!("close stdin to stop");
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
}

/// Runs the cases of the phase in `ROLES_PHASE` and prints an outcome line for each.
#[cfg(target_os = "wasi")]
fn main() {
    let nodes = Nodes {
        primary: two_target::guest_port(ENV_PRIMARY),
        standby: two_target::guest_port(ENV_STANDBY),
        unused: two_target::guest_port(ENV_UNUSED),
        login: two_target::guest_var(ENV_LOGIN),
        read_only_login: two_target::guest_var(ENV_READ_ONLY_LOGIN),
    };
    let phase_name = two_target::guest_var(ENV_PHASE);
    let phase = Phase::ALL
        .into_iter()
        .find(|phase| phase.name() == phase_name)
        .unwrap_or_else(|| panic!("{ENV_PHASE}={phase_name:?} is no phase"));
    for case in all_cases().into_iter().filter(|case| case.phase == phase) {
        two_target::run_in_guest(case.name, (case.run)(&nodes));
    }
}
