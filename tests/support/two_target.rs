//! The runner shared by the scenario binaries that run on every target (`attacks`, `faults`, `live`, `pglite`,
//! `roles`, `pool`): the same scenarios natively on tokio, then in the binary's own wasm32-wasip2 build under the real
//! wasmtime CLI (WASI 0.2, wstd), then in its WASI 0.3 build (`--features wasip3`, still for wasm32-wasip2)
//! under the same wasmtime.
//!
//! A scenario returns an [`Outcome`] instead of panicking (wasm32-wasip2 aborts on panic, and one failing
//! scenario must not hide the others); [`ensure!`], [`ensure_eq!`] and [`Check`] write its failures. The host
//! records each native outcome in a [`Tally`], builds the guest ([`Guest::build`] or
//! [`Guest::build_in_background`]), passes it what it needs as environment variables ([`Guest::run`]), and
//! records the outcome lines the guest printed ([`run_in_guest`]) in a second tally, and those of the WASI 0.3
//! guest ([`Guest::build_p3`]) in a third. [`Totals::finish`] prints `<what> totals:` and exits with status 1,
//! naming every failure and its target, if anything failed on any of them.
//!
//! The WASI 0.3 guest runs inside wit-bindgen's task: this file exports `wasi:cli/run@0.3` when built with the
//! feature (wasmtime runs that export rather than the 0.2 one), and its `run` calls the binary's `main`, whose
//! [`run_in_guest`] calls then drive each scenario with wit-bindgen's `block_on`.
//!
//! Also the few async helpers the scenarios need on both targets ([`sleep`], [`join`], [`with_timeout`]).
//!
//! Included by those binaries on both targets with `#[macro_use] #[path = "support/two_target.rs"] mod
//! two_target;` (it sits beside `mod.rs` without being one of its modules, like `restart.rs`); the host side
//! uses `crate::support`, which they include natively only. Each binary uses only part of it, hence the allows.

#![allow(dead_code, unreachable_pub, unused_macros)]

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

/// What a scenario saw (for the log), or why it failed.
pub type Outcome = Result<String, String>;

/// The label of each target in every line the runner prints.
pub const NATIVE: &str = "native";
pub const WASM: &str = "wasm32-wasip2";
/// The WASI 0.3 build: the same wasm32-wasip2 target with the `wasip3` feature.
pub const WASI_P3: &str = "wasm32-wasip2+p3";
/// The label of the target this code runs on, for the figures a scenario prints.
pub const THIS_TARGET: &str = if cfg!(all(target_os = "wasi", feature = "wasip3")) {
    WASI_P3
} else if cfg!(target_os = "wasi") {
    WASM
} else {
    NATIVE
};

/// The marker of the lines in which the guest reports a scenario: `outcome\t<scenario>\tok\t<seen>` or
/// `outcome\t<scenario>\tFAIL\t<reason>`.
const OUTCOME_LINE: &str = "outcome";
/// This test binary's name: the cargo target the host builds for the guest, and the one to run.
const TEST_NAME: &str = env!("CARGO_CRATE_NAME");

/// Fails the scenario with the message and where it failed.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!("{}:{}: {}", file!(), line!(), format!($($msg)+)));
        }
    };
}

/// Fails the scenario unless both sides are equal, showing both.
macro_rules! ensure_eq {
    ($left:expr, $right:expr) => {
        match (&$left, &$right) {
            (l, r) => {
                if l != r {
                    return Err(format!(
                        "{}:{}: {} == {}: {:?} != {:?}",
                        file!(),
                        line!(),
                        stringify!($left),
                        stringify!($right),
                        l,
                        r
                    ));
                }
            }
        }
    };
}

/// `?` for library errors inside scenarios: the error becomes the failure, naming the step that failed.
pub trait Check<T> {
    fn check(self, what: &str) -> Result<T, String>;
}

impl<T, E: std::fmt::Display> Check<T> for Result<T, E> {
    fn check(self, what: &str) -> Result<T, String> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Both targets: async helpers for the scenarios.
// ---------------------------------------------------------------------------------------------------------

pub async fn sleep(duration: Duration) {
    #[cfg(not(target_os = "wasi"))]
    tokio::time::sleep(duration).await;
    #[cfg(all(target_os = "wasi", not(feature = "wasip3")))]
    wstd::task::sleep(wstd::time::Duration::from(duration)).await;
    #[cfg(all(target_os = "wasi", feature = "wasip3"))]
    wasip3::clocks::monotonic_clock::wait_for(
        u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX),
    )
    .await;
}

/// Both futures' outputs, polled in turn on the current task (wstd has no spawn).
pub async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (pin!(a), pin!(b));
    let (mut a_out, mut b_out) = (None, None);
    poll_fn(move |cx| {
        if a_out.is_none()
            && let Poll::Ready(v) = a.as_mut().poll(cx)
        {
            a_out = Some(v);
        }
        if b_out.is_none()
            && let Poll::Ready(v) = b.as_mut().poll(cx)
        {
            b_out = Some(v);
        }
        match (a_out.take(), b_out.take()) {
            (Some(a), Some(b)) => Poll::Ready((a, b)),
            (a, b) => {
                a_out = a;
                b_out = b;
                Poll::Pending
            }
        }
    })
    .await
}

/// `future`'s output, or `None` if `limit` passed first (the future is dropped then).
pub async fn with_timeout<F: Future>(limit: Duration, future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut timer = pin!(sleep(limit));
    poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------
// Both targets: what travels from the host to the guest.
// ---------------------------------------------------------------------------------------------------------

/// `<scenario>=<port>,...`: the ports of the scenarios' own servers, for one environment variable.
pub fn port_list<'a>(ports: impl IntoIterator<Item = (&'a str, u16)>) -> String {
    let entries: Vec<String> = ports
        .into_iter()
        .map(|(scenario, port)| format!("{scenario}={port}"))
        .collect();
    entries.join(",")
}

/// The port of `scenario` in a [`port_list`].
pub fn port_in(list: &str, scenario: &str) -> Option<u16> {
    list.split(',').find_map(|entry| {
        let (name, port) = entry.split_once('=')?;
        (name == scenario).then(|| port.parse().ok()).flatten()
    })
}

// ---------------------------------------------------------------------------------------------------------
// The guest (wasm32-wasip2).
// ---------------------------------------------------------------------------------------------------------

/// The environment variable `name`, which the host sets; panics if it is missing (the guest was not started
/// by the host).
pub fn guest_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run through `cargo test --test {TEST_NAME}`")
    })
}

/// [`guest_var`] as a port.
pub fn guest_port(name: &str) -> u16 {
    guest_var(name)
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Runs `future` to its end on the guest's executor: wstd's reactor (WASI 0.2) or wit-bindgen's (WASI 0.3).
#[cfg(target_os = "wasi")]
pub fn block_on<F: Future>(future: F) -> F::Output {
    #[cfg(not(feature = "wasip3"))]
    return wstd::runtime::block_on(future);
    #[cfg(feature = "wasip3")]
    return wasip3::wit_bindgen::block_on(future);
}

/// The WASI 0.3 entry point: wasmtime calls the exported `wasi:cli/run@0.3` (not the 0.2 one `main` gives), so
/// everything below runs inside wit-bindgen's task, where 0.3 futures may be awaited.
#[cfg(all(target_os = "wasi", feature = "wasip3"))]
mod wasi_p3_entry {
    struct Run;

    impl wasip3::exports::cli::run::Guest for Run {
        async fn run() -> Result<(), ()> {
            #[allow(
                clippy::main_recursion,
                reason = "the 0.3 entry point runs the guest's main; nothing calls it otherwise"
            )]
            crate::main();
            Ok(())
        }
    }

    wasip3::cli::command::export!(Run);
}

/// Runs `scenario` to its end and prints its outcome line for the host.
#[cfg(target_os = "wasi")]
pub fn run_in_guest(name: &str, scenario: impl Future<Output = Outcome>) {
    let (verdict, text) = match block_on(scenario) {
        Ok(seen) => ("ok", seen),
        Err(why) => ("FAIL", why),
    };
    println!(
        "{OUTCOME_LINE}\t{name}\t{verdict}\t{}",
        text.replace(['\t', '\n'], " ")
    );
}

// ---------------------------------------------------------------------------------------------------------
// The host (native).
// ---------------------------------------------------------------------------------------------------------

#[cfg(not(target_os = "wasi"))]
pub use host::*;

#[cfg(not(target_os = "wasi"))]
mod host {
    use std::fmt::Display;
    use std::path::{Path, PathBuf};
    use std::process::ExitStatus;
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use super::{NATIVE, OUTCOME_LINE, Outcome, TEST_NAME, WASI_P3, WASM};
    use crate::support::{WASIP3_FEATURES, WasmBuild, build_wasm_with, wasmtime};

    /// A current-thread tokio runtime for the native scenarios.
    pub fn native_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    }

    /// One target's results. Each outcome is printed as it is recorded (`<target>: ok   <scenario> (<seen>)`,
    /// without the brackets if nothing was seen, or `<target>: FAIL <scenario>: <why>`), then [`Tally::end`] prints `<target>: N passed, M failed`.
    pub struct Tally {
        label: &'static str,
        passed: usize,
        failed: usize,
        /// What failed, for the last word of the run: each failed scenario, and what broke outside any (a guest
        /// that exited with an error).
        failures: Vec<String>,
        started: Instant,
        elapsed: Option<Duration>,
        /// Said after the time in the totals (how long a server took to load, the build, ...).
        details: Vec<String>,
    }

    impl Tally {
        /// The native tally; its clock starts now.
        pub fn native() -> Tally {
            Tally::new(NATIVE)
        }

        /// The wasm32-wasip2 tally; its clock starts now.
        pub fn wasm() -> Tally {
            Tally::new(WASM)
        }

        /// The tally of `guest`'s target (wasm32-wasip2 or its WASI 0.3 build), with its build note; its clock
        /// starts now.
        pub fn for_guest(guest: &Guest) -> Tally {
            let mut tally = Tally::new(guest.label);
            tally.detail(guest.build_note());
            tally
        }

        fn new(label: &'static str) -> Tally {
            Tally {
                label,
                passed: 0,
                failed: 0,
                failures: Vec::new(),
                started: Instant::now(),
                elapsed: None,
                details: Vec::new(),
            }
        }

        /// Counts and prints one scenario's outcome.
        pub fn record(&mut self, scenario: &str, outcome: Outcome) {
            match outcome {
                Ok(seen) if seen.is_empty() => {
                    self.passed += 1;
                    println!("{}: ok   {scenario}", self.label);
                }
                Ok(seen) => {
                    self.passed += 1;
                    println!("{}: ok   {scenario} ({seen})", self.label);
                }
                Err(why) => {
                    self.failed += 1;
                    self.failures.push(format!("FAIL {scenario}"));
                    println!("{}: FAIL {scenario}: {why}", self.label);
                }
            }
        }

        /// Records the outcome `run` reported for each of `scenarios` (a scenario it printed none for fails),
        /// then [`Tally::record_exit`].
        pub fn record_guest<'a>(
            &mut self,
            run: &GuestRun,
            scenarios: impl IntoIterator<Item = &'a str>,
        ) {
            for scenario in scenarios {
                self.record(scenario, run.outcome(scenario));
            }
            self.record_exit(run);
        }

        /// Fails the run if the guest exited with an error, even if every scenario passed, and shows its stderr.
        pub fn record_exit(&mut self, run: &GuestRun) {
            if !run.status.success() {
                let failure = format!("wasmtime exited with {}", run.status);
                eprintln!("{failure} (guest env: {}):\n{}", run.env, run.stderr);
                self.failures.push(failure);
            }
        }

        /// Adds a detail to this target's line of the totals, after its time.
        pub fn detail(&mut self, detail: impl Display) {
            self.details.push(detail.to_string());
        }

        /// Whether anything failed.
        pub fn failed(&self) -> bool {
            !self.failures.is_empty()
        }

        /// Stops the clock and prints `<target>: N passed, M failed`.
        pub fn end(&mut self) {
            self.elapsed = Some(self.started.elapsed());
            println!("{}: {}", self.label, self.counts());
        }

        fn counts(&self) -> String {
            format!("{} passed, {} failed", self.passed, self.failed)
        }

        /// `<target>: N passed, M failed (<time>; <details>)`.
        fn totals_line(&self) -> String {
            let elapsed = self.elapsed.unwrap_or_else(|| self.started.elapsed());
            let mut line = format!("{}: {} ({elapsed:.1?}", self.label, self.counts());
            for detail in &self.details {
                line.push_str("; ");
                line.push_str(detail);
            }
            line.push(')');
            line
        }
    }

    /// What a run found on every target.
    pub struct Totals {
        pub native: Tally,
        pub wasm: Tally,
        /// The WASI 0.3 build ([`Guest::build_p3`]).
        pub wasi_p3: Tally,
        /// Lines printed after the targets' totals.
        pub notes: Vec<String>,
    }

    impl Totals {
        /// Prints `<what> totals:`, a line per target and the notes; then, if anything failed on any target,
        /// names each failure and its target on stderr and exits with status 1. Call it once the servers are
        /// dropped: `exit` skips destructors.
        pub fn finish(self, what: &str) {
            println!("\n{what} totals:");
            for line in [
                self.native.totals_line(),
                self.wasm.totals_line(),
                self.wasi_p3.totals_line(),
            ]
            .iter()
            .chain(&self.notes)
            {
                println!("  {line}");
            }
            let failures: Vec<String> = [&self.native, &self.wasm, &self.wasi_p3]
                .iter()
                .flat_map(|tally| {
                    tally
                        .failures
                        .iter()
                        .map(|failure| format!("{}: {failure}", tally.label))
                })
                .collect();
            if !failures.is_empty() {
                eprintln!("{what} cases failed:\n  {}", failures.join("\n  "));
                std::process::exit(1);
            }
        }
    }

    /// This test binary, built for wasm32-wasip2 (WASI 0.2) or as its WASI 0.3 build.
    pub struct Guest {
        /// [`WASM`] or [`WASI_P3`].
        label: &'static str,
        wasm: PathBuf,
        build_time: Duration,
        /// For a build in the background: how long the host waited for it once it needed it.
        waited: Option<Duration>,
    }

    /// A build of this test binary for wasm32-wasip2 on a thread of its own.
    pub struct GuestBuild {
        label: &'static str,
        thread: JoinHandle<(PathBuf, Duration)>,
    }

    impl Guest {
        /// Builds this test binary for wasm32-wasip2 now: after the native run, the build does not compete
        /// with its scenarios for CPU. Panics if the build fails.
        pub fn build() -> Guest {
            let (wasm, build_time) = timed_build(&[]);
            Guest {
                label: WASM,
                wasm,
                build_time,
                waited: None,
            }
        }

        /// Builds the WASI 0.3 guest now (`--features wasip3`). Panics if the build fails.
        pub fn build_p3() -> Guest {
            Self::build_p3_in_background().wait()
        }

        /// Starts the build on a thread of its own, to overlap with a slow setup (servers loading).
        pub fn build_in_background() -> GuestBuild {
            GuestBuild {
                label: WASM,
                thread: std::thread::spawn(|| timed_build(&[])),
            }
        }

        /// Starts the WASI 0.3 build on a thread of its own, to overlap with the 0.2 guest's run (which mostly
        /// waits on servers).
        pub fn build_p3_in_background() -> GuestBuild {
            GuestBuild {
                label: WASI_P3,
                thread: std::thread::spawn(|| timed_build(WASIP3_FEATURES)),
            }
        }

        /// [`WASM`] or [`WASI_P3`]: the target label of this build.
        pub fn label(&self) -> &'static str {
            self.label
        }

        /// Runs the guest under wasmtime with `env` and `dirs` (`HOST::GUEST` preopens).
        pub fn run(&self, env: &[(&str, &str)], dirs: &[(&Path, &str)]) -> GuestRun {
            let output = wasmtime(&self.wasm, &[], env, dirs, None);
            let env: Vec<String> = env
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect();
            GuestRun {
                status: output.status,
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                env: env.join(" "),
            }
        }

        /// How long the build took, for the wasm32-wasip2 line of the totals.
        pub fn build_note(&self) -> String {
            match self.waited {
                None => format!("plus {:.1?} to build", self.build_time),
                Some(waited) => format!(
                    "the build took {:.1?}; the run waited {waited:.1?} for it",
                    self.build_time
                ),
            }
        }
    }

    impl GuestBuild {
        /// Waits for the build; a build that failed panics again here (its message is above).
        pub fn wait(self) -> Guest {
            let started = Instant::now();
            let (wasm, build_time) = self
                .thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            Guest {
                label: self.label,
                wasm,
                build_time,
                waited: Some(started.elapsed()),
            }
        }
    }

    fn timed_build(features: &'static [&'static str]) -> (PathBuf, Duration) {
        let started = Instant::now();
        let wasm = build_wasm_with(WasmBuild::Test(TEST_NAME), features);
        (wasm, started.elapsed())
    }

    /// What one wasmtime run of the guest printed, and how it exited.
    pub struct GuestRun {
        status: ExitStatus,
        stdout: String,
        stderr: String,
        /// `K=V` for each variable the guest got: which run this was, for a failure message.
        env: String,
    }

    impl GuestRun {
        pub fn stdout(&self) -> &str {
            &self.stdout
        }

        /// The lines the guest printed besides its outcome lines (figures its scenarios report).
        pub fn other_lines(&self) -> impl Iterator<Item = &str> {
            self.stdout
                .lines()
                .filter(|line| line.split('\t').next() != Some(OUTCOME_LINE))
        }

        /// The outcome the guest reported for `scenario`, or why there is none.
        pub fn outcome(&self, scenario: &str) -> Outcome {
            let line = self.stdout.lines().find_map(|line| {
                let mut fields = line.splitn(4, '\t');
                (fields.next() == Some(OUTCOME_LINE) && fields.next() == Some(scenario))
                    .then(|| (fields.next(), fields.next()))
            });
            match line {
                Some((Some("ok"), seen)) => Ok(seen.unwrap_or_default().to_string()),
                Some((_, reason)) => Err(reason.unwrap_or("no reason given").to_string()),
                None => {
                    let tail: Vec<&str> = self.stderr.lines().rev().take(5).collect();
                    Err(format!(
                        "no outcome from the guest (wasmtime exited with {}; stderr ends: {})",
                        self.status,
                        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                    ))
                }
            }
        }
    }
}
