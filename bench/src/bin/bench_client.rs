//! Runs one workload with one client library and prints `result ops=<n> seconds=<s> check=<n>`.
//!
//! ```text
//! bench-client run <ours|tokio-postgres|ours-sequential> <workload> <count> --host H --port P --user U --dbname D
//!                  [--ca FILE] [--runtime current-thread|multi-thread] [--tasks N] [--slot S]
//! bench-client setup <copy-rows> --host H --port P --user U --dbname D
//! bench-client truncate --host H --port P --user U --dbname D
//! bench-client w8-setup <changes> --pgoutput-slots A,B --test-decoding-slots C,D --host H ...
//! bench-client w8-cleanup --host H ...
//! ```
//!
//! `setup` creates the tables (and fills W5's source); `truncate` empties the insert targets, which the
//! driver does before each pgbench run of W4 (the other clients empty them themselves, untimed).
//! `w8-setup` makes W8's table, publication and one slot per run, then the changes, and prints
//! `endpos=<lsn>` (the WAL position after them); `w8-cleanup` drops the slots. W8 runs stream from `--slot`.
//!
//! `--tasks N` (W7 only) shares the `count` queries among N futures joined on one client; without it the
//! workload runs in one task.
//!
//! Natively the runtime is tokio's current-thread one unless `--runtime multi-thread` is given; on
//! wasm32-wasip2 it is wstd's (and only `ours` exists there).

use std::error::Error as StdError;
use std::process::ExitCode;

use wasi_pg_client_bench::workload::Target;
use wasi_pg_client_bench::{Contender, Workload, ours};

type BoxError = Box<dyn StdError>;

/// What the command line asks for.
enum Command {
    Run {
        contender: Contender,
        workload: Workload,
        count: u64,
        /// W7's futures sharing the client: 1 unless `--tasks` says otherwise.
        tasks: u64,
        /// W8's replication slot.
        slot: Option<String>,
    },
    Setup {
        copy_rows: u64,
    },
    Truncate,
    W8Setup {
        changes: u64,
        pgoutput_slots: Vec<String>,
        test_decoding_slots: Vec<String>,
    },
    W8Cleanup,
}

struct Args {
    command: Command,
    target: Target,
    multi_thread: bool,
}

fn parse_args(args: &[String]) -> Result<Args, BoxError> {
    let mut positional = Vec::new();
    let (mut host, mut port, mut user, mut dbname, mut ca_file) =
        (None, None, None, None, None::<String>);
    let mut multi_thread = false;
    let mut tasks = None::<u64>;
    let mut slot = None::<String>;
    let (mut pgoutput_slots, mut test_decoding_slots) = (Vec::new(), Vec::new());
    let list = |value: String| -> Vec<String> {
        value
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = || {
            iter.next()
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--host" => host = Some(value()?),
            "--port" => port = Some(value()?.parse()?),
            "--user" => user = Some(value()?),
            "--dbname" => dbname = Some(value()?),
            "--ca" => ca_file = Some(value()?),
            "--tasks" => tasks = Some(value()?.parse()?),
            "--slot" => slot = Some(value()?),
            "--pgoutput-slots" => pgoutput_slots = list(value()?),
            "--test-decoding-slots" => test_decoding_slots = list(value()?),
            "--runtime" => {
                multi_thread = match value()?.as_str() {
                    "current-thread" => false,
                    "multi-thread" => true,
                    other => return Err(format!("unknown runtime {other:?}").into()),
                }
            }
            flag if flag.starts_with("--") => return Err(format!("unknown flag {flag}").into()),
            _ => positional.push(arg.as_str()),
        }
    }
    let command = match positional.as_slice() {
        ["run", contender, workload, count] => {
            let (contender, workload) = (contender.parse()?, workload.parse()?);
            if tasks.is_some()
                && (workload != Workload::W7 || contender == Contender::OursSequential)
            {
                return Err(format!("{contender} runs {workload} in one task: no --tasks").into());
            }
            if slot.is_some() != (workload == Workload::W8) {
                return Err("W8, and only W8, streams from a --slot".into());
            }
            Command::Run {
                contender,
                workload,
                count: count.parse()?,
                tasks: tasks.unwrap_or(1),
                slot,
            }
        }
        ["w8-setup", changes] => Command::W8Setup {
            changes: changes.parse()?,
            pgoutput_slots,
            test_decoding_slots,
        },
        ["w8-cleanup"] => Command::W8Cleanup,
        ["setup", copy_rows] => Command::Setup {
            copy_rows: copy_rows.parse()?,
        },
        ["truncate"] => Command::Truncate,
        _ => return Err("usage: bench-client run <contender> <workload> <count> | setup <copy-rows> | truncate | w8-setup <changes> | w8-cleanup, then --host --port --user --dbname [--ca]".into()),
    };
    Ok(Args {
        command,
        target: Target {
            host: host.ok_or("--host is required")?,
            port: port.ok_or("--port is required")?,
            user: user.unwrap_or_else(|| "postgres".to_string()),
            dbname: dbname.unwrap_or_else(|| "postgres".to_string()),
            ca_file,
        },
        multi_thread,
    })
}

async fn run(args: Args) -> Result<(), BoxError> {
    match args.command {
        Command::Setup { copy_rows } => ours::setup(&args.target, copy_rows).await,
        Command::Truncate => ours::truncate(&args.target).await,
        Command::W8Setup {
            changes,
            pgoutput_slots,
            test_decoding_slots,
        } => {
            let end = ours::w8_setup(&args.target, changes, &pgoutput_slots, &test_decoding_slots)
                .await?;
            println!("endpos={end}");
            Ok(())
        }
        Command::W8Cleanup => ours::w8_cleanup(&args.target).await,
        Command::Run {
            contender,
            workload,
            count,
            tasks,
            slot,
        } => {
            let outcome = match (contender, slot) {
                (Contender::Ours | Contender::OursWasi | Contender::OursWasip3, Some(slot)) => {
                    ours::w8(&args.target, count, &slot).await?
                }
                (Contender::Ours | Contender::OursWasi | Contender::OursWasip3, None) => {
                    ours::run(workload, count, tasks, &args.target).await?
                }
                (Contender::OursSequential, _) => {
                    ours::run_sequential(workload, count, &args.target).await?
                }
                #[cfg(not(target_os = "wasi"))]
                (Contender::TokioPostgres, _) => {
                    wasi_pg_client_bench::tokio_pg::run(workload, count, tasks, &args.target)
                        .await?
                }
                (other, _) => return Err(format!("bench-client cannot run {other}").into()),
            };
            println!("{outcome}");
            Ok(())
        }
    }
}

fn report(result: Result<(), BoxError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-client: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(target_os = "wasi"))]
fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&args) {
        Ok(args) => args,
        Err(e) => return report(Err(e)),
    };
    let runtime = if args.multi_thread {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    match runtime {
        Ok(runtime) => report(runtime.block_on(run(args))),
        Err(e) => report(Err(e.into())),
    }
}

#[cfg(target_os = "wasi")]
async fn wasi_main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse_args(&args) {
        Ok(args) if args.multi_thread => report(Err("wasm32-wasip2 has one thread".into())),
        Ok(args) => report(run(args).await),
        Err(e) => report(Err(e)),
    }
}

#[cfg(all(target_os = "wasi", not(feature = "wasip3")))]
#[wstd::main]
async fn main() -> ExitCode {
    wasi_main().await
}

/// WASI 0.3 (`--features wasip3`): wasmtime calls the exported `wasi:cli/run@0.3` instead of `main`.
#[cfg(all(target_os = "wasi", feature = "wasip3"))]
mod wasi_p3 {
    struct BenchClient;

    impl wasip3::exports::cli::run::Guest for BenchClient {
        async fn run() -> Result<(), ()> {
            if super::wasi_main().await == std::process::ExitCode::SUCCESS {
                Ok(())
            } else {
                Err(())
            }
        }
    }

    wasip3::cli::command::export!(BenchClient);
}

/// Never called on WASI 0.3: the host runs the exported `wasi:cli/run@0.3` instead.
#[cfg(all(target_os = "wasi", feature = "wasip3"))]
fn main() {}
