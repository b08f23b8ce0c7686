//! An async PostgreSQL client for WebAssembly components on WASI Preview 2 (`wasm32-wasip2`) and for native
//! programs on tokio, from one code base.
//!
//! The protocol lives in a sans-IO core (no sockets, no async, no clock) driven by a thin async client over a
//! [`Transport`]: wasi:sockets on `wasm32-wasip2`, tokio TCP and Unix-domain sockets natively. There is no
//! background task, so the same client works on WASI's single-threaded runtime without spawning.
//!
//! TLS (rustls with the ring provider, on both targets) follows libpq's `sslmode`, `sslrootcert`, `sslcert`,
//! `sslkey`, `sslnegotiation` and `channel_binding` exactly, so a connection string means the same here as in
//! psql; SCRAM-SHA-256-PLUS binds the session to the server certificate when the server offers it.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wasi_pg_client::Error> {
//! use wasi_pg_client::{Client, Config};
//!
//! let config = Config::from_conninfo_and_env("postgresql://app@localhost/app")?;
//! let mut client = Client::connect(&config).await?;
//! client.execute("CREATE TEMP TABLE t (id int, name text)", &[]).await?;
//! client.execute("INSERT INTO t VALUES ($1, $2)", &[&1i32, &"one"]).await?;
//! for row in client.query("SELECT id, name FROM t", &[]).await? {
//!     let id: i32 = row.get(0);
//!     let name: &str = row.get("name");
//!     println!("{id} {name}");
//! }
//! client.close().await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod client;
pub mod config;
mod connect;
mod connection;
mod copy;
mod cursor;
mod error;
#[cfg(any(fuzzing, test))]
#[doc(hidden)]
#[allow(missing_docs)]
pub mod fuzzing;
mod identifier;
mod notify;
mod param_types;
mod pipeline;
mod portal;
mod proto;
mod row;
mod runtime;
mod simple_mode;
mod statement;
mod statement_cache;
mod stream;
mod tls;
mod transaction;
pub mod transport;
mod typeinfo;

pub use client::{Client, Param, SimpleQueryStream, ToStatement};
pub use config::Config;
pub use copy::{
    BinaryCopyInWriter, BinaryCopyOutReader, BinaryCopyRow, CopyInWriter, CopyOutReader,
};
pub use cursor::Cursor;
pub use error::{DbError, Error, ErrorClass, ErrorKind, ErrorPosition, sqlstate};
pub use pipeline::{Pipeline, PipelineMode, PipelineOutput};
pub use portal::Portal;
pub use proto::{Notification, TransactionStatus};
pub use row::{Row, RowIndex, SimpleColumn, SimpleQueryMessage, SimpleQueryRow, SimpleRowIndex};
pub use statement::{Column, Statement};
pub use stream::RowStream;
pub use transaction::{IsolationLevel, Transaction, TransactionBuilder};
pub use transport::Transport;

/// Re-export of postgres-types: [`ToSql`](types::ToSql), [`FromSql`](types::FromSql), [`Type`](types::Type),
/// [`Json`](types::Json) and friends. Enable the `with-*` features for chrono, time, uuid and serde_json.
pub mod types {
    pub use postgres_types::*;
}
