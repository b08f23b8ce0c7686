//! Runs every workload for every contender and prints the results; see the `driver` module of the crate.

use std::process::ExitCode;

#[cfg(not(target_os = "wasi"))]
fn main() -> ExitCode {
    wasi_pg_client_bench::driver::main()
}

#[cfg(target_os = "wasi")]
fn main() -> ExitCode {
    eprintln!(
        "bench-driver runs natively only: it starts wasmtime, pgbench and the native clients"
    );
    ExitCode::FAILURE
}
