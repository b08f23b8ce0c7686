//! Runs every workload for every contender, each run in its own process, interleaved round by round, and
//! prints the median of each:
//!
//! ```text
//! bench <workload> <contender> ops_per_s=<n> client_cpu_s=<n> peak_rss_mb=<n>
//! ratio <workload> <a>/<b>=<x>
//! ```
//!
//! A ratio compares throughput; `<workload>:cpu` compares client CPU seconds instead, and `<b>` written
//! `<contender>@<workload>` names a run of another workload (`ratio W6 ours/ours@W3`).
//!
//! CPU time (user + sys) and peak RSS come from `wait4(2)` on each child, so they are the child's own: the
//! client process for ours and tokio-postgres, pgbench itself, and for ours-wasi the wasmtime process that
//! runs the precompiled component (ours-wasi its WASI 0.2 build, ours-wasip3 its WASI 0.3 build). Throughput is
//! the client's own timing of the workload (pgbench's "without initial connection time"; pg_recvlogical's
//! whole run, connection included, as it reports no timing). Progress goes to stderr, results to stdout.
//!
//! W8 also reports the CPU time of the server's walsender that fed the run (`walsender_cpu_s`), sampled
//! from /proc while the run lasts (every process titled `postgres: walsender`, its growth in that time), and
//! `ratio W8:cpu <contender>/walsender`: the target is a client that keeps up with the server, using well
//! under the walsender's CPU.
//!
//! ```text
//! bench-driver --client target/bench/release/bench-client --wasmtime wasmtime --cwasm bench-client.cwasm
//!              [--cwasm-p3 bench-client-p3.cwasm]
//!              --pgbench pgbench [--pg-recvlogical pg_recvlogical] --work-dir DIR --host 127.0.0.1 --port N
//!              --ca server.crt
//!              [--quick] [--rounds N] [--only W1,W3] [--contenders ours,pgbench]
//! ```

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::workload::{Target, W4_BATCH, sql};
use crate::{Contender, Outcome, Plan, Workload};

type BoxError = Box<dyn StdError>;

/// A run that takes longer than this is killed and reported as failed.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// Where the certificate directory appears inside the wasm component.
const WASI_CERT_DIR: &str = "/certs";

struct Options {
    client: PathBuf,
    wasmtime: PathBuf,
    cwasm: PathBuf,
    /// The WASI 0.3 build of the client (ours-wasip3), precompiled.
    cwasm_p3: Option<PathBuf>,
    pgbench: PathBuf,
    /// PostgreSQL's pg_recvlogical (the W8 contender of that name), if given.
    pg_recvlogical: Option<PathBuf>,
    work_dir: PathBuf,
    target: Target,
    plan: Plan,
    workloads: Vec<Workload>,
    contenders: Vec<Contender>,
}

/// What one process used and did.
#[derive(Debug, Clone, Copy)]
struct Measurement {
    rate: f64,
    cpu_seconds: f64,
    peak_rss_mb: f64,
    /// W8: the CPU seconds of the walsender that fed the run.
    walsender_cpu_seconds: Option<f64>,
}

fn parse_options() -> Result<Options, BoxError> {
    let mut values: HashMap<String, String> = HashMap::new();
    let mut quick = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            flag if flag.starts_with("--") => {
                let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
                values.insert(flag.trim_start_matches("--").to_string(), value);
            }
            other => return Err(format!("unexpected argument {other:?}").into()),
        }
    }
    let mut take = |name: &str| values.remove(name);
    let mut plan = if quick { Plan::QUICK } else { Plan::FULL };
    if let Some(rounds) = take("rounds") {
        plan.rounds = rounds.parse()?;
    }
    let workloads = match take("only") {
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => Workload::ALL.to_vec(),
    };
    let cwasm_p3 = take("cwasm-p3").map(PathBuf::from);
    let pg_recvlogical = take("pg-recvlogical").map(PathBuf::from);
    let contenders: Vec<Contender> = match take("contenders") {
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        // ours-wasip3 and pg_recvlogical run only when their programs are given.
        None => Contender::ALL
            .into_iter()
            .filter(|&c| c != Contender::OursWasip3 || cwasm_p3.is_some())
            .filter(|&c| c != Contender::PgRecvlogical || pg_recvlogical.is_some())
            .collect(),
    };
    if contenders.contains(&Contender::OursWasip3) && cwasm_p3.is_none() {
        return Err("ours-wasip3 needs --cwasm-p3".into());
    }
    if contenders.contains(&Contender::PgRecvlogical) && pg_recvlogical.is_none() {
        return Err("pg_recvlogical needs --pg-recvlogical".into());
    }
    let mut required = |name: &str| take(name).ok_or_else(|| format!("--{name} is required"));
    let options = Options {
        client: required("client")?.into(),
        wasmtime: required("wasmtime")?.into(),
        cwasm: required("cwasm")?.into(),
        cwasm_p3,
        pgbench: required("pgbench")?.into(),
        pg_recvlogical,
        work_dir: required("work-dir")?.into(),
        target: Target {
            host: required("host")?,
            port: required("port")?.parse()?,
            user: take("user").unwrap_or_else(|| "postgres".to_string()),
            dbname: take("dbname").unwrap_or_else(|| "postgres".to_string()),
            ca_file: take("ca"),
        },
        plan,
        workloads,
        contenders,
    };
    if let Some(unknown) = values.keys().next() {
        return Err(format!("unknown flag --{unknown}").into());
    }
    Ok(options)
}

/// The connection flags of `bench-client`, with the certificate at `ca` when given.
fn target_args(target: &Target, ca: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "--host".to_string(),
        target.host.clone(),
        "--port".to_string(),
        target.port.to_string(),
        "--user".to_string(),
        target.user.clone(),
        "--dbname".to_string(),
        target.dbname.clone(),
    ];
    if let Some(ca) = ca {
        args.extend(["--ca".to_string(), ca.to_string()]);
    }
    args
}

/// The command that runs `workload` for `contender` in `round`; `w8_end` is where W8's changes end.
fn command(
    options: &Options,
    workload: Workload,
    contender: Contender,
    round: u32,
    w8_end: Option<&str>,
) -> Command {
    let count = options.plan.count(workload);
    let run_args = |name: &str| {
        let mut args = vec![
            "run".to_string(),
            name.to_string(),
            workload.name().to_string(),
            count.to_string(),
        ];
        if workload == Workload::W8 {
            args.extend(["--slot".to_string(), contender.w8_slot(round)]);
        }
        // W7's concurrent contenders share the queries among futures; ours-sequential runs them in one.
        if workload == Workload::W7 && contender != Contender::OursSequential {
            args.extend([
                "--tasks".to_string(),
                options.plan.concurrent_tasks.to_string(),
            ]);
        }
        args
    };
    match contender {
        Contender::Ours | Contender::TokioPostgres | Contender::OursSequential => {
            let mut cmd = Command::new(&options.client);
            cmd.args(run_args(contender.name()));
            cmd.args(target_args(
                &options.target,
                options.target.ca_file.as_deref(),
            ));
            cmd
        }
        Contender::OursWasi | Contender::OursWasip3 => {
            // ours-wasip3 is among the contenders only with --cwasm-p3 (checked when parsing).
            let cwasm = match (contender, &options.cwasm_p3) {
                (Contender::OursWasip3, Some(p3)) => p3,
                _ => &options.cwasm,
            };
            let mut cmd = Command::new(&options.wasmtime);
            cmd.args([
                "run",
                "-C",
                "cache=n",
                "--allow-precompiled",
                "-S",
                "inherit-network",
                "-S",
                "allow-ip-name-lookup",
            ]);
            let ca = options.target.ca_file.as_deref().map(Path::new);
            let guest_ca = ca.and_then(|ca| {
                let dir = ca.parent()?;
                let name = ca.file_name()?.to_str()?;
                cmd.arg("--dir")
                    .arg(format!("{}::{WASI_CERT_DIR}", dir.display()));
                Some(format!("{WASI_CERT_DIR}/{name}"))
            });
            cmd.arg(cwasm);
            cmd.args(run_args(contender.name()));
            cmd.args(target_args(&options.target, guest_ca.as_deref()));
            cmd
        }
        Contender::PgRecvlogical => {
            let program = options
                .pg_recvlogical
                .as_deref()
                .unwrap_or(Path::new("pg_recvlogical"));
            let mut cmd = Command::new(program);
            cmd.args(["--start", "--no-loop", "-f", "/dev/null", "-S"])
                .arg(contender.w8_slot(round))
                .arg("-E")
                .arg(w8_end.unwrap_or("0/0"))
                .arg("-d")
                .arg(&options.target.dbname);
            libpq_connection(&mut cmd, &options.target, &options.target.user);
            cmd
        }
        Contender::Pgbench => {
            let (script, mode, transactions) = pgbench_script(workload, count);
            let mut cmd = Command::new(&options.pgbench);
            cmd.args(["-n", "-c", "1", "-j", "1", "-M", mode])
                .arg("-t")
                .arg(transactions.to_string())
                .arg("-f")
                .arg(options.work_dir.join(script))
                .args(["-D", &format!("payload={}", sql::W4_PAYLOAD)])
                .arg(&options.target.dbname);
            if workload.connects() {
                // A new connection for every transaction, as the SCRAM role.
                cmd.arg("-C");
                libpq_connection(&mut cmd, &options.target, sql::W9_USER);
                cmd.env("PGPASSWORD", sql::W9_PASSWORD);
                if workload.uses_tls() {
                    cmd.env("PGSSLMODE", "verify-full");
                    if let Some(ca) = &options.target.ca_file {
                        cmd.env("PGSSLROOTCERT", ca);
                    }
                }
            } else {
                libpq_connection(&mut cmd, &options.target, &options.target.user);
            }
            cmd
        }
    }
}

/// Where a libpq contender connects (host, port and user flags). libpq's defaults would use TLS
/// (sslmode=prefer, and the server has it on for W6): the libpq contenders' workloads run in plaintext, as
/// every other contender's, unless the caller sets PGSSLMODE after this. No other PG* setting of the caller
/// applies.
fn libpq_connection(cmd: &mut Command, target: &Target, user: &str) {
    cmd.arg("-h")
        .arg(&target.host)
        .arg("-p")
        .arg(target.port.to_string())
        .arg("-U")
        .arg(user);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("PGSSLMODE", "disable");
}

/// The pgbench script file, the protocol (`-M`) and the number of transactions for `count` operations.
fn pgbench_script(workload: Workload, count: u64) -> (&'static str, &'static str, u64) {
    match workload {
        Workload::W1 => ("w1.sql", "simple", count),
        Workload::W2 => ("w2.sql", "prepared", count),
        Workload::W4Pipeline => ("w4-pipeline.sql", "prepared", count / W4_BATCH),
        Workload::W4Sequential => ("w4-sequential.sql", "prepared", count),
        Workload::W9Scram | Workload::W9Tls => ("w1.sql", "simple", count),
        _ => unreachable!("BUG: pgbench does not run {workload}"),
    }
}

/// Operations per pgbench transaction.
fn pgbench_ops_per_transaction(workload: Workload) -> u64 {
    match workload {
        Workload::W4Pipeline => W4_BATCH,
        _ => 1,
    }
}

/// Writes the pgbench scripts: the same statements the Rust clients send. In prepared mode pgbench sends
/// `:i` and `:payload` as parameters, as the clients do.
fn write_pgbench_scripts(dir: &Path) -> Result<(), BoxError> {
    std::fs::write(dir.join("w1.sql"), format!("{};\n", sql::SELECT_ONE))?;
    let add_one = sql::ADD_ONE.replace("$1", ":i");
    std::fs::write(
        dir.join("w2.sql"),
        format!("\\set i random(0, 1000000)\n{add_one};\n"),
    )?;
    let insert = sql::W4_INSERT.replace("$1", ":i").replace("$2", ":payload");
    std::fs::write(
        dir.join("w4-sequential.sql"),
        format!("\\set i random(0, 1000000)\n{insert};\n"),
    )?;
    let mut pipeline = String::from("\\set i random(0, 1000000)\n\\startpipeline\n");
    for _ in 0..W4_BATCH {
        let _ = writeln!(pipeline, "{insert};");
    }
    pipeline.push_str("\\endpipeline\n");
    std::fs::write(dir.join("w4-pipeline.sql"), pipeline)?;
    Ok(())
}

/// pgbench's outcome: transactions processed and "tps = ... (without initial connection time)", or with `-C`
/// (W9) "tps = ... (including reconnection times)", where connecting is the work measured.
fn parse_pgbench(output: &str, workload: Workload) -> Option<Outcome> {
    let processed = output
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))?;
    let transactions: u64 = processed.split('/').next()?.trim().parse().ok()?;
    let tps: f64 = output.lines().find_map(|l| {
        let rest = l.strip_prefix("tps = ")?;
        (rest.contains("without initial connection time")
            || rest.contains("including reconnection times"))
        .then(|| rest.split_whitespace().next()?.parse().ok())?
    })?;
    let per = pgbench_ops_per_transaction(workload);
    Some(Outcome {
        ops: transactions * per,
        seconds: transactions as f64 / tps,
        check: transactions * per,
    })
}

/// The resources a finished child used, from `wait4`.
struct Usage {
    success: bool,
    cpu_seconds: f64,
    peak_rss_kb: i64,
}

/// Waits for `pid` with `wait4`, polling so a run that hangs can be killed after `timeout`.
#[allow(unsafe_code)]
fn wait_with_usage(
    pid: u32,
    timeout: Duration,
    mut walsenders: Option<&mut Walsenders>,
) -> Result<Usage, BoxError> {
    let pid = libc::pid_t::try_from(pid)?;
    let deadline = Instant::now() + timeout;
    let mut last_sample: Option<Instant> = None;
    loop {
        if let Some(walsenders) = walsenders.as_deref_mut()
            && last_sample.is_none_or(|at| at.elapsed() >= WALSENDER_SAMPLE)
        {
            walsenders.sample();
            last_sample = Some(Instant::now());
        }
        let mut status: libc::c_int = 0;
        // SAFETY: `rusage` is a plain C struct for which all-zero bytes are a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers point to live, writable values of the types wait4 expects.
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if reaped == pid {
            let seconds = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
            return Ok(Usage {
                success: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                cpu_seconds: seconds(usage.ru_utime) + seconds(usage.ru_stime),
                peak_rss_kb: usage.ru_maxrss,
            });
        }
        if reaped < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        if Instant::now() > deadline {
            // SAFETY: kill has no memory effects; the pid is our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// How often W8's walsenders are sampled.
const WALSENDER_SAMPLE: Duration = Duration::from_millis(20);

/// The CPU time of the server's walsenders while a run lasts: each process titled `postgres: walsender`, from
/// the first sample that saw it to the last (a walsender that exits between two samples loses at most one
/// interval; one still ending from an earlier run adds next to nothing).
#[derive(Default)]
struct Walsenders {
    /// Per process: clock ticks of user + system time at its first and its last sample.
    ticks: HashMap<u32, (u64, u64)>,
}

impl Walsenders {
    fn sample(&mut self) {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(title) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            if !title.starts_with(b"postgres: walsender") {
                continue;
            }
            let Some(ticks) = std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|stat| cpu_ticks(&stat))
            else {
                continue;
            };
            self.ticks
                .entry(pid)
                .and_modify(|(_, last)| *last = ticks)
                .or_insert((ticks, ticks));
        }
    }

    #[allow(unsafe_code)]
    fn seconds(&self) -> f64 {
        // SAFETY: sysconf has no memory effects.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let ticks: u64 = self.ticks.values().map(|(first, last)| last - first).sum();
        ticks as f64 / per_second
    }
}

/// utime + stime from /proc/PID/stat (fields 14 and 15, counted after the command name in parentheses).
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// Runs one child to its end and measures it.
fn measure(
    mut cmd: Command,
    workload: Workload,
    contender: Contender,
    count: u64,
) -> Result<Measurement, BoxError> {
    cmd.stdout(Stdio::piped()).stdin(Stdio::null());
    if contender == Contender::Pgbench {
        // pgbench writes its report to stdout and its progress to stderr; keep the terminal quiet.
        cmd.stderr(Stdio::piped());
    }
    let mut walsenders = (workload == Workload::W8).then(Walsenders::default);
    if let Some(walsenders) = walsenders.as_mut() {
        walsenders.sample();
    }
    let started = Instant::now();
    let mut child = cmd.spawn()?;
    let mut stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).map(|_| out)
    });
    let stderr = child.stderr.take().map(|mut stderr| {
        std::thread::spawn(move || {
            let mut out = String::new();
            stderr.read_to_string(&mut out).map(|_| out)
        })
    });
    // The child is reaped by wait4 here, not by std (dropping a Child neither waits nor kills).
    let usage = wait_with_usage(child.id(), RUN_TIMEOUT, walsenders.as_mut())?;
    let wall = started.elapsed().as_secs_f64();
    let output = reader.join().map_err(|_| "stdout reader panicked")??;
    let errors = match stderr {
        Some(handle) => handle.join().map_err(|_| "stderr reader panicked")??,
        None => String::new(),
    };
    let outcome = match contender {
        Contender::Pgbench => parse_pgbench(&output, workload),
        // It reports nothing, and writes the changes to /dev/null: its whole run, timed here.
        Contender::PgRecvlogical => Some(Outcome {
            ops: count,
            seconds: wall,
            check: 0,
        }),
        _ => Outcome::parse(&output),
    };
    match outcome {
        Some(outcome) if usage.success => Ok(Measurement {
            rate: outcome.rate(),
            cpu_seconds: usage.cpu_seconds,
            peak_rss_mb: usage.peak_rss_kb as f64 / 1024.0,
            walsender_cpu_seconds: walsenders.as_ref().map(Walsenders::seconds),
        }),
        _ => Err(format!(
            "{workload} {contender} failed (exit {}):\n{output}{errors}",
            if usage.success { "0" } else { "non-zero" }
        )
        .into()),
    }
}

/// Runs `bench-client` natively for set-up chores; returns what it printed.
fn chore(options: &Options, args: &[&str]) -> Result<String, BoxError> {
    let output = Command::new(&options.client)
        .args(args)
        .args(target_args(&options.target, None))
        .stderr(Stdio::inherit())
        .output()?;
    if !output.status.success() {
        return Err(format!("bench-client {args:?} failed").into());
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// W8's slots for every run, its table and its changes; returns where the changes end.
fn w8_setup(options: &Options) -> Result<String, BoxError> {
    let slots = |pgoutput: bool| {
        let mut names = Vec::new();
        for round in 1..=options.plan.rounds {
            for &contender in &options.contenders {
                if contender.runs(Workload::W8)
                    && (contender == Contender::PgRecvlogical) != pgoutput
                {
                    names.push(contender.w8_slot(round));
                }
            }
        }
        names.join(",")
    };
    let changes = options.plan.count(Workload::W8).to_string();
    eprintln!("bench-driver: W8 set-up: a slot per run, then {changes} changes");
    let printed = chore(
        options,
        &[
            "w8-setup",
            &changes,
            "--pgoutput-slots",
            &slots(true),
            "--test-decoding-slots",
            &slots(false),
        ],
    )?;
    printed
        .lines()
        .find_map(|line| line.strip_prefix("endpos="))
        .map(str::to_string)
        .ok_or_else(|| format!("w8-setup printed no endpos: {printed:?}").into())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// What a ratio compares.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Metric {
    Throughput,
    Cpu,
}

/// `a / b`, both medians; `b` may be a run of another workload.
struct Comparison {
    workload: Workload,
    metric: Metric,
    a: Contender,
    b: (Workload, Contender),
}

/// The comparisons issue 7 sets targets for, in output order.
fn comparisons() -> Vec<Comparison> {
    use Contender::{
        Ours, OursSequential, OursWasi, OursWasip3, PgRecvlogical, Pgbench, TokioPostgres,
    };
    use Metric::{Cpu, Throughput};
    let mut list = Vec::new();
    let mut add = |workload: Workload, metric: Metric, a: Contender, b: (Workload, Contender)| {
        list.push(Comparison {
            workload,
            metric,
            a,
            b,
        });
    };
    for w in Workload::ALL {
        if Pgbench.runs(w) {
            add(w, Throughput, Ours, (w, Pgbench));
        }
        if PgRecvlogical.runs(w) {
            add(w, Throughput, Ours, (w, PgRecvlogical));
            add(w, Cpu, Ours, (w, PgRecvlogical));
        }
        if TokioPostgres.runs(w) {
            add(w, Throughput, Ours, (w, TokioPostgres));
        }
        if matches!(w, Workload::W3 | Workload::W5CopyIn | Workload::W5CopyOut) {
            add(w, Cpu, Ours, (w, TokioPostgres));
        }
        match w {
            Workload::W4Pipeline => add(w, Throughput, Ours, (Workload::W4Sequential, Ours)),
            Workload::W6 => add(w, Throughput, Ours, (Workload::W3, Ours)),
            Workload::W7 => add(w, Throughput, Ours, (w, OursSequential)),
            _ => {}
        }
        add(w, Throughput, OursWasi, (w, Ours));
        add(w, Throughput, OursWasip3, (w, Ours));
        add(w, Throughput, OursWasip3, (w, OursWasi));
    }
    list
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_string())
}

fn run(options: &Options) -> Result<(), BoxError> {
    eprintln!(
        "bench-driver: {} round(s), load average {}",
        options.plan.rounds,
        load_average()
    );
    chore(options, &["setup", &options.plan.copy_rows.to_string()])?;
    write_pgbench_scripts(&options.work_dir)?;
    let w8_end = if options.workloads.contains(&Workload::W8) {
        Some(w8_setup(options)?)
    } else {
        None
    };

    let mut samples: HashMap<(Workload, Contender), Vec<Measurement>> = HashMap::new();
    for round in 1..=options.plan.rounds {
        for &workload in &options.workloads {
            for &contender in &options.contenders {
                if !contender.runs(workload) {
                    continue;
                }
                if contender == Contender::Pgbench
                    && matches!(workload, Workload::W4Pipeline | Workload::W4Sequential)
                {
                    chore(options, &["truncate"])?;
                }
                let cmd = command(options, workload, contender, round, w8_end.as_deref());
                let m = measure(cmd, workload, contender, options.plan.count(workload))?;
                let walsender = m
                    .walsender_cpu_seconds
                    .map_or(String::new(), |s| format!(", walsender {s:.3} s CPU"));
                eprintln!(
                    "  [{round}/{}] {workload} {contender}: {:.0} ops/s, {:.3} s CPU, {:.1} MB RSS{walsender} (load {})",
                    options.plan.rounds,
                    m.rate,
                    m.cpu_seconds,
                    m.peak_rss_mb,
                    load_average()
                );
                samples.entry((workload, contender)).or_default().push(m);
            }
        }
    }

    let mut medians: HashMap<(Workload, Contender), Measurement> = HashMap::new();
    for &workload in &options.workloads {
        for &contender in &options.contenders {
            let Some(runs) = samples.get(&(workload, contender)) else {
                continue;
            };
            let pick =
                |f: fn(&Measurement) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
            let walsender: Vec<f64> = runs
                .iter()
                .filter_map(|m| m.walsender_cpu_seconds)
                .collect();
            let m = Measurement {
                rate: pick(|m| m.rate),
                cpu_seconds: pick(|m| m.cpu_seconds),
                peak_rss_mb: pick(|m| m.peak_rss_mb),
                walsender_cpu_seconds: (!walsender.is_empty())
                    .then(|| median(&mut walsender.clone())),
            };
            let walsender = m
                .walsender_cpu_seconds
                .map_or(String::new(), |s| format!(" walsender_cpu_s={s:.3}"));
            println!(
                "bench {workload} {contender} ops_per_s={:.0} client_cpu_s={:.3} peak_rss_mb={:.1}{walsender}",
                m.rate, m.cpu_seconds, m.peak_rss_mb
            );
            medians.insert((workload, contender), m);
        }
    }
    for c in comparisons() {
        let (Some(a), Some(b)) = (medians.get(&(c.workload, c.a)), medians.get(&c.b)) else {
            continue;
        };
        let (label, value) = match c.metric {
            Metric::Throughput => (c.workload.to_string(), a.rate / b.rate),
            Metric::Cpu => (format!("{}:cpu", c.workload), a.cpu_seconds / b.cpu_seconds),
        };
        let b_name = if c.b.0 == c.workload {
            c.b.1.to_string()
        } else {
            format!("{}@{}", c.b.1, c.b.0)
        };
        println!("ratio {label} {}/{b_name}={value:.2}", c.a);
    }
    // W8's target: each client's CPU against the walsender's that fed it.
    for &contender in &options.contenders {
        if let Some(m) = medians.get(&(Workload::W8, contender))
            && let Some(server) = m.walsender_cpu_seconds.filter(|&s| s > 0.0)
        {
            println!(
                "ratio W8:cpu {contender}/walsender={:.2}",
                m.cpu_seconds / server
            );
        }
    }
    if w8_end.is_some() {
        chore(options, &["w8-cleanup"])?;
    }
    eprintln!("bench-driver: done, load average {}", load_average());
    Ok(())
}

/// Parses the command line, runs everything and prints the results.
pub fn main() -> ExitCode {
    match parse_options().and_then(|options| run(&options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-driver: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_ticks_reads_utime_and_stime() {
        // A process name with a space and a parenthesis, as /proc shows a walsender's.
        let stat =
            "4242 (postgres: wal) S 1 4242 4242 0 -1 4194560 500 0 0 0 120 35 0 0 20 0 1 0 100 0 0";
        assert_eq!(super::cpu_ticks(stat), Some(155));
        assert_eq!(super::cpu_ticks("4242 (short) S 1"), None);
    }
}
