//! An async PostgreSQL client for WebAssembly components on WASI Preview 2 (`wasm32-wasip2`) and for native
//! programs on tokio, from one code base.
//!
//! The protocol lives in a sans-IO core (no sockets, no async, no clock) driven by a thin async client over a
//! [`Transport`]: wasi:sockets on `wasm32-wasip2`, tokio TCP and Unix-domain sockets natively. One [`Client`]
//! is shared by as many tasks as you like (`&Client`, or `Arc<Client>` natively): concurrent calls are
//! pipelined on its one connection. There is no background task: the futures waiting on the client take
//! turns driving its socket, so the same client works on WASI's single-threaded runtime without spawning.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wasi_pg_client::Error> {
//! use wasi_pg_client::{Client, Config};
//!
//! let config = Config::from_conninfo_and_env("postgresql://app@localhost/app")?;
//! let client = Client::connect(&config).await?;
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
//!
//! # Targets
//!
//! | target | what is built | how it runs |
//! |---|---|---|
//! | `wasm32-wasip2` | the async client over wasi:sockets (DNS through ip-name-lookup, IPv4 and IPv6) | under any WASI 0.2 host; `wasmtime run -S inherit-network -S allow-ip-name-lookup app.wasm`. Wrap `main` in `#[wstd::main]`. The components import only `wasi:*` interfaces. |
//! | `wasm32-wasip2`, `wasip3` feature | the async client over wasi:sockets@0.3 (native-async TCP streams) | under a WASI 0.3 host (wasmtime 48: `wasmtime run -S inherit-network -S allow-ip-name-lookup app.wasm`). Export `wasi:cli/run@0.3` (`wasip3::cli::command::export!`) or a wasi:http 0.3 handler instead of `#[wstd::main]`. |
//! | native, `tokio` feature (default) | the async client over tokio TCP and Unix-domain sockets | inside a tokio runtime, current-thread or multi-threaded; `Client` and its futures are `Send` |
//! | any target, default features off (`wasm32-unknown-unknown` too) | the sans-IO core: [`sans_io`], [`Config`], [`Error`], [`Row`], [`types`] | the host moves the bytes (see [Other hosts](#other-hosts-the-sans-io-core)) |
//!
//! The code that needs a runtime (the client, connecting, transports, cancellation, the pool) is built when one
//! is present: the `tokio` feature natively, always on WASI.
//!
//! # Features
//!
//! | feature | default | what it does |
//! |---|---|---|
//! | `tokio` | yes | the client on native targets (on `wasm32-wasip2` the client is built either way) |
//! | `tls` | yes | TLS with rustls and ring, on both targets. Without it `sslmode=require`, `verify-ca` and `verify-full` fail with [`ErrorKind::Unsupported`] before anything is sent, and `prefer` and `allow` connect in plaintext. |
//! | `pool` | no | `wasi_pg_client::pool::Pool`, a connection pool with no background task, for tokio and WASI alike |
//! | `wasip3` | no | on `wasm32-wasip2`: WASI 0.3 sockets and clocks (the `wasip3` crate, 0.9.0 = WASI 0.3.0) on wit-bindgen's executor instead of WASI 0.2 and wstd |
//! | `with-chrono-0_4`, `with-time-0_3`, `with-uuid-1`, `with-serde_json-1`, `with-cidr-0_2`, `with-eui48-1`, `with-geo-types-0_7`, `with-bit-vec-0_6`, `with-jiff-0_2`, `with-smol_str-01` | no | [`ToSql`](types::ToSql) and [`FromSql`](types::FromSql) for those crates' types (postgres-types' features of the same names) |
//! | `metrics` | no | OpenTelemetry's database client metrics (`db.client.operation.duration`, the pool's `db.client.connection.*`) through the `metrics` facade |
//! | `derive` | no | `#[derive(ToSql, FromSql)]` for enums, composites and domains |
//! | `array-impls` | no | `ToSql` for arrays `[T; N]` |
//!
//! # Connection strings
//!
//! [`Config`] reads what libpq reads, so a string written for `psql` works here: a URI
//! (`postgresql://user:password@host:port/dbname?key=value`) or `key=value` pairs, plus the `PG*` environment
//! variables with libpq's precedence ([`Config::from_conninfo_and_env`]: the string wins over the variable, the
//! variable over the default). Several hosts are tried in order (`host=a,b port=5432,5433`,
//! `target_session_attrs`, `load_balance_hosts`), and the password comes from the string, `PGPASSWORD` or the
//! password file (`passfile`, `PGPASSFILE`, `~/.pgpass`).
//!
//! ```
//! use std::time::Duration;
//! use wasi_pg_client::Config;
//! use wasi_pg_client::config::{QueryMode, SslMode};
//!
//! let mut config = Config::parse(
//!     "postgresql://app@db1:5432,db2:5432/shop?sslmode=verify-full&target_session_attrs=read-write",
//! )?;
//! // What libpq has no keyword for is set through the builder.
//! config
//!     .query_mode(QueryMode::Unnamed)
//!     .query_timeout(Duration::from_secs(30));
//! assert_eq!(config.get_ssl_mode(), SslMode::VerifyFull);
//! assert_eq!(config.get_hosts().len(), 2);
//! # Ok::<(), wasi_pg_client::Error>(())
//! ```
//!
//! # TLS
//!
//! TLS (rustls with the ring provider, on both targets; feature `tls`) follows libpq's `sslmode`, `sslrootcert`,
//! `sslcert`, `sslkey`, `sslcertmode`, `sslsni`, `sslnegotiation` (including PostgreSQL 17's direct TLS) and
//! `channel_binding` exactly, so a connection string means the same here as in psql. The default is `prefer`:
//! TLS when the server offers it, plaintext otherwise. `verify-full` checks the chain and the host name;
//! `sslrootcert=system` uses Mozilla's roots (webpki-roots), the same on every target, and
//! [`Config::ssl_root_certs_pem`] passes roots in memory (useful on WASI without a preopened directory).
//! SCRAM-SHA-256-PLUS binds the session to the server certificate when the server offers it. Cancel requests
//! use TLS when the session does.
//!
//! # Query modes and PgBouncer
//!
//! SQL text runs as [`QueryMode`](config::QueryMode) says: `Cached` (the default; named statements in a
//! per-connection cache, for direct connections and PgBouncer in session mode), `Unnamed` (nothing stays
//! prepared on the server: PgBouncer in transaction or statement mode) or `Simple` (the simple query protocol,
//! for proxies that refuse the extended one). Prepared [`Statement`]s are always named statements.
//!
//! # Migrating from tokio-postgres
//!
//! Most calls keep their names and shapes; what changes is that there is no connection task to spawn.
//!
//! | tokio-postgres | wasi-pg-client |
//! |---|---|
//! | `let (client, connection) = tokio_postgres::connect(s, tls).await?; tokio::spawn(connection);` | `let client = Client::connect(&Config::parse(s)?).await?;` nothing to spawn |
//! | `Config` built or parsed | [`Config`], same builder names; [`Config::from_conninfo_and_env`] also reads `PG*` |
//! | a `MakeTlsConnect` (`postgres-openssl`, `tokio-postgres-rustls`) | built in, configured by `sslmode` and friends |
//! | `&Client`: concurrent calls pipelined by the connection task | `&Client` (or `Arc<Client>`): concurrent calls pipelined in the order their futures are first polled, driven by whichever of them is polled; no task needed on WASI or a current-thread runtime |
//! | `query_raw`, `copy_in`, `copy_out`, `transaction` on `&Client`/`&mut Client` | transactions, COPY, row streams, portals and [`Pipeline`]s take `&mut Client`: they have the connection alone (calls inside a [`Transaction`] take `&self` and are pipelined again) |
//! | `query`, `query_one`, `query_opt`, `execute`, `prepare`, `prepare_typed`, `query_typed`, `simple_query`, `batch_execute` | the same |
//! | `query_raw` returning a `RowStream` | [`Client::query_raw`] and [`Client::query_stream`]: a [`RowStream`] with an inherent `next` and `Stream`; [`RowStream::next_ref`] and [`RowStream::for_each_ref`] lend each row ([`RowRef`]) where it arrived, without a copy or an allocation |
//! | `transaction`, `build_transaction`, `savepoint` | the same; a transaction dropped without commit is rolled back before the next call |
//! | `copy_in` (a `Sink`), `copy_out` (a `Stream`), `binary_copy` | [`Client::copy_in`] and [`Client::copy_out`] with `write`/`finish` and `next`; [`BinaryCopyInWriter`], [`BinaryCopyOutReader`] |
//! | `AsyncMessage::Notification` from polling the `Connection` | [`Client::next_notification`], [`Client::notifications`] (a `Stream`), [`Client::take_notifications`], all on `&Client`: a task can wait while others query, and none are lost |
//! | notices logged through `log` | [`Client::take_notices`], [`Client::set_notice_handler`], and `tracing` events |
//! | `cancel_token()` and `CancelToken::cancel_query(tls)` | [`Client::cancel_token`] and [`CancelToken::cancel_query`], over TLS when the session uses it; like any PostgreSQL cancel it stops whatever the backend runs, which on a shared client may be a neighbour's request (it fails with 57014, never silently) |
//! | a `tokio::time::timeout` around a query (the query goes on running on the server) | [`Config::query_timeout`] or [`Client::with_query_timeout`]: a request that the server runs longer than that is cancelled there, only while it is the one running; the connection stays usable and requests behind it go on |
//! | `Row::get`, `Row::try_get`, `types::{ToSql, FromSql, Type}` | the same ([`types`] re-exports postgres-types) |
//! | `Error::code`, `Error::as_db_error` | the same, plus [`Error::kind`] and [`Error::class`] to tell broken connections and transient errors (worth a retry) from the rest |
//!
//! # Tracing
//!
//! The client reports through [`tracing`](https://docs.rs/tracing), and is quiet at INFO:
//!
//! - each connection attempt runs in an INFO span `connect` (`server.address`, `server.port`,
//!   `network.peer.address` for a hostaddr, `db.namespace`, sslmode, user; never the password), with DEBUG
//!   events for its outcome and for sslmode fallbacks;
//! - each request runs in a DEBUG span `request` with its `kind` (`query`, `execute`, `prepare`,
//!   `simple_query`, `query_stream`, `copy_in`, `pipeline`, `begin`, `commit`, ...), the backend's process id
//!   and the attributes of OpenTelemetry's conventions for PostgreSQL client spans (`otel.name`,
//!   `db.operation.name`, `db.collection.name`, `error.type`, ...; see the README's "Observability"); the
//!   statement text (`db.query.text`) is recorded only with [`Config::trace_statements`], and parameters
//!   never;
//! - a transaction is a DEBUG span `transaction`, the parent of its requests' spans;
//! - notices are events with target `wasi_pg_client::notice`: WARNING at WARN, INFO at INFO, NOTICE and below
//!   at DEBUG;
//! - a session rebuilt after a lost connection ([`Config::session_rebuild`]) is an INFO event.
//!
//! # Other hosts: the sans-IO core
//!
//! With default features off, on any target, the crate is the protocol core alone: [`sans_io::Protocol`] takes
//! the server's bytes and gives back bytes to send and typed replies, so a host that has its own sockets and
//! event loop (a wasm extension runtime, an embedded engine) can drive it. Startup and authentication (SCRAM
//! included), size limits, error recovery and the row types are the same code the client uses. On
//! `wasm32-unknown-unknown` the host also provides the randomness of SCRAM's nonce (see [`sans_io`]).
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

/// Declares items that need an async runtime: tokio natively (the `tokio` feature) or wstd on WASI
/// (`target_os = "wasi"`, always). Without one only the sans-IO core is built, for hosts that bring their own
/// I/O ([`sans_io`]).
macro_rules! with_runtime {
    ($($item:item)*) => {$(
        #[cfg(any(feature = "tokio", target_os = "wasi"))]
        $item
    )*};
}

// The layers, lowest first; a file imports only its own layer and those below it (scripts/check-layers.py
// checks this, and that no files import each other in a circle):
// - `error`: the error type every layer returns.
// - `config/`: what the user asked for (connection strings, the builder, the environment, pgpass).
// - `proto/`: the sans-IO protocol core, with rows and statements; `sans_io` is its public face.
// - `transport/`: byte streams (tokio, wasi:sockets) and timers; `tls/`: TLS over any transport.
// - `conn/`: one session (connect, the poll driver, the queue of answer slots, cancellation).
// - `client/`: the query API over a session; `pool/`: connections shared among clients of the pool.
pub mod config;
mod error;
#[cfg(any(fuzzing, test))]
#[doc(hidden)]
#[allow(missing_docs)]
pub mod fuzzing;
// Without a runtime the core keeps the operations only the async client drives (COPY, the checks it runs on
// results); they are compiled so the core is the same everywhere.
#[cfg_attr(
    not(any(feature = "tokio", target_os = "wasi")),
    allow(dead_code, unused_imports)
)]
mod proto;
pub mod sans_io;

with_runtime! {
    mod client;
    mod conn;
    #[cfg(feature = "pool")]
    pub mod pool;
    #[cfg(feature = "tls")]
    mod tls;
    // The same interface with every TLS mode refused, so the connection code reads the same either way.
    #[cfg(not(feature = "tls"))]
    #[path = "tls/disabled.rs"]
    mod tls;
    pub mod transport;

    pub use conn::cancel::CancelToken;
    pub use client::timeout::QueryTimeoutScope;
    pub use client::{Client, Param, ToStatement};
    pub use client::simple_query::SimpleQueryStream;
    pub use client::copy::{
        BinaryCopyInWriter, BinaryCopyOutReader, BinaryCopyRow, BinaryCopyRowRef, CopyInWriter,
        CopyOutReader, CopyRow, CopyValue,
    };
    pub use client::cursor::Cursor;
    pub use client::notify::NotificationStream;
    pub use client::pipeline::{Pipeline, PipelineMode, PipelineOutput};
    pub use client::portal::Portal;
    pub use proto::statement::Statement;
    pub use client::stream::RowStream;
    pub use client::transaction::{IsolationLevel, Transaction, TransactionBuilder};
    pub use transport::Transport;
}

pub use config::Config;
pub use error::{DbError, Error, ErrorClass, ErrorKind, ErrorPosition, sqlstate};
pub use proto::row::{
    Row, RowIndex, RowRef, SimpleColumn, SimpleQueryMessage, SimpleQueryRow, SimpleRowIndex,
};
pub use proto::statement::Column;
pub use proto::{Notification, TransactionStatus};

/// Streaming replication: the messages of a replication connection in CopyBoth mode and the decoder of the
/// `pgoutput` logical decoding plugin (protocol versions 1 to 4), sans-IO, for any target.
///
/// ```
/// use wasi_pg_client::replication::{LogicalMessage, PgOutputDecoder};
/// # fn demo(xlog_data: bytes::Bytes) -> Result<(), wasi_pg_client::Error> {
/// let mut decoder = PgOutputDecoder::new();
/// match decoder.decode(xlog_data)? {
///     LogicalMessage::Insert(insert) => println!("insert into {}: {:?}", insert.relation, insert.new),
///     other => println!("{other:?}"),
/// }
/// # Ok(()) }
/// ```
pub mod replication {
    #[cfg(any(feature = "tokio", target_os = "wasi"))]
    pub use crate::client::replication::{
        CreatedSlot, IdentifySystem, PgOutputOptions, SlotInfo, SlotKind, SlotSnapshot, Streaming,
    };
    #[cfg(any(feature = "tokio", target_os = "wasi"))]
    pub use crate::client::replication_stream::{
        LogicalEvent, LogicalReplicationStream, ReplicationStream, TupleRow,
    };
    pub use crate::proto::pgoutput::{
        Begin, Commit, Delete, Insert, LogicalMessage, Message, OldTuple, Origin, PgOutputDecoder,
        Prepared, Relation, RelationColumn, RollbackPrepared, StreamAbort, StreamCommit, Truncate,
        Tuple, TupleValue, TypeMessage, Update,
    };
    pub use crate::proto::replication::{
        Lsn, PgTimestamp, ServerMessage, parse_server_message, standby_status_update,
    };
}

/// Re-export of postgres-types: [`ToSql`](types::ToSql), [`FromSql`](types::FromSql), [`Type`](types::Type)
/// and friends. Enable the `with-*` features for chrono, time, uuid, serde_json (`Json` comes with it), cidr,
/// eui48, geo-types, bit-vec, jiff and smol_str.
pub mod types {
    pub use postgres_types::*;
}

// The README's Rust examples are compiled by `cargo test --doc` with the API docs, so what a user reads first
// cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
