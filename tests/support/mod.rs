//! Shared helpers for the integration tests.
//!
//! - [`Cluster`]: a throwaway PostgreSQL cluster per test, with one login role per
//!   authentication method (trust, password, md5, SCRAM), stopped and deleted on drop.
//! - [`build_wasm`] and [`wasmtime`]: build a target for wasm32-wasip2 and run the artifact
//!   under the real wasmtime CLI, so the wasm build itself is what gets tested.
//! - [`PgBouncer`]: PgBouncer 1.18 in transaction pooling mode in front of a [`Cluster`],
//!   stopped on drop.
//! - [`tls`]: a private CA and the server and client certificates of the TLS tests (native
//!   only: it uses rcgen).
//!
//! Beside it, not among its modules, sit files the tests that need them include with `#[path]`:
//! `two_target.rs`, the runner of the binaries whose scenarios run natively and under wasmtime
//! (it is compiled for the guest too), and `restart.rs`.
//!
//! Each test file includes this with `mod support;` and uses only part of it, hence the allows.
//! They sit on the submodules and re-exports rather than on this module, so a test file that
//! writes `#[allow(dead_code)] mod support;` does not trip clippy's `duplicated_attributes`.
//! Apart from [`tls`], only std is used, so the harness adds no dependencies and also compiles
//! for wasm32-wasip2 (where nothing in it is expected to run).

#[allow(dead_code, unreachable_pub)]
mod child;
#[allow(dead_code, unreachable_pub)]
mod cluster;
pub mod fake_server;
#[allow(dead_code, unreachable_pub)]
mod pgbouncer;
pub mod pglite;
#[allow(dead_code, unreachable_pub)]
mod server_dir;
#[allow(dead_code, unreachable_pub)]
mod wasm;
// rcgen is a native dev-dependency only.
#[cfg(not(target_os = "wasi"))]
#[allow(dead_code, unreachable_pub)]
pub mod tls;

#[allow(unused_imports, unreachable_pub)]
pub use child::run_with_timeout;
#[allow(unused_imports, unreachable_pub)]
pub use cluster::{Cluster, Role, ServerTls, Setup, free_port};
#[allow(unused_imports, unreachable_pub)]
pub use pgbouncer::PgBouncer;
#[allow(unused_imports, unreachable_pub)]
pub use wasm::{WASIP3_FEATURES, WasmBuild, build_wasm, build_wasm_with, wasmtime};
