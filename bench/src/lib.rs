//! The benchmark of issue 7: the same workloads run by every contender, each in its own process.
//!
//! `bench-client` runs one workload with one client library (ours natively or
//! under wasmtime, or tokio-postgres) and prints one [`Outcome`] line; `bench-driver` starts those processes
//! (and pgbench) interleaved, measures each one's CPU time and peak RSS, and prints the results.
//!
//! Throughput is timed inside the client around the workload itself, after connecting and after the
//! untimed set-up (preparing the statement, emptying the target table), as pgbench's "without initial
//! connection time" figure is.

// Only the driver's wait4 call needs unsafe code, and it is allowed there alone.
#![deny(unsafe_code)]

#[cfg(not(target_os = "wasi"))]
pub mod driver;
pub mod ours;
#[cfg(not(target_os = "wasi"))]
pub mod tokio_pg;
pub mod workload;

pub use workload::{Contender, Outcome, Plan, Workload};
