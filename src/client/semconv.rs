//! The names OpenTelemetry's semantic conventions give the server and the errors of database client
//! operations, shared by the spans (`telemetry.rs`) and the metrics (`meters.rs`).

use std::borrow::Cow;

use tracing::Span;

use crate::config::{Host, Target};
use crate::proto::operation::Operation;
use crate::{Config, Error, ErrorKind};

/// The conventions' name for this database system.
pub(crate) const DB_SYSTEM: &str = "postgresql";

/// A span with the fields the conventions share declared (tracing needs every field at creation):
/// `otel.name`, `otel.kind` = client, `otel.status_code`, `db.system.name`, `db.namespace`, `server.address`,
/// `server.port`, `error.type`, then the span's own fields. `@parent P;` first puts it under `P`.
macro_rules! client_span {
    ($(@parent $parent:expr;)? $level:expr, $name:literal, $($own:tt)*) => {
        tracing::span!(
            $(parent: $parent,)?
            $level,
            $name,
            otel.name = tracing::field::Empty,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            db.system.name = $crate::client::semconv::DB_SYSTEM,
            db.namespace = tracing::field::Empty,
            server.address = tracing::field::Empty,
            server.port = tracing::field::Empty,
            error.type = tracing::field::Empty,
            $($own)*
        )
    };
}
pub(crate) use client_span;

/// The server a client's operations go to, as the conventions name it; fixed for the client's life.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// `db.namespace`: the database (which PostgreSQL defaults to the user name).
    pub(crate) namespace: Box<str>,
    /// `server.address`: the host name or address as configured, or the Unix-domain socket's path.
    pub(crate) address: Option<Box<str>>,
    /// `server.port`: for TCP only.
    pub(crate) port: Option<u16>,
}

impl Peer {
    /// The server of `target` (`None`: a transport the caller opened, which names no server).
    pub(crate) fn of(config: &Config, target: Option<&Target>) -> Peer {
        let namespace = config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or_default()
            .into();
        let (address, port) = match target.map(|t| (&t.host, t.port)) {
            Some((Host::Tcp(name), port)) => (Some(name.as_str().into()), Some(port)),
            Some((Host::Unix(dir), port)) => (
                Some(format!("{}/.s.PGSQL.{port}", dir.display()).into()),
                None,
            ),
            None => (None, None),
        };
        Peer {
            namespace,
            address,
            port,
        }
    }

    /// Records the server's attributes on `span` (which must be enabled to be worth it).
    pub(crate) fn record(&self, span: &Span) {
        span.record("db.namespace", &*self.namespace);
        if let Some(address) = &self.address {
            span.record("server.address", &**address);
        }
        if let Some(port) = self.port {
            span.record("server.port", port);
        }
    }

    /// The span name of an operation: `{db.operation.name} {target}` with the collection or else the
    /// database as the target, or the target alone when the operation has no name.
    pub(crate) fn span_name(&self, operation: &Operation) -> String {
        let target = operation.collection.as_deref().unwrap_or(&self.namespace);
        match (&operation.name, target.is_empty()) {
            (Some(name), false) => format!("{name} {target}"),
            (Some(name), true) => name.to_string(),
            (None, false) => target.to_string(),
            (None, true) => DB_SYSTEM.to_string(),
        }
    }
}

/// The conventions' `error.type`: the SQLSTATE of a server error, else a low-cardinality class of the error
/// (`timeout`, `connection_refused`, `tls`, ...).
pub(crate) fn error_type(error: &Error) -> Cow<'static, str> {
    if let Some(code) = error.code() {
        return Cow::Owned(code.to_string());
    }
    Cow::Borrowed(match error.kind() {
        ErrorKind::Io => io_error_type(error),
        ErrorKind::Timeout => "timeout",
        ErrorKind::Config => "config",
        ErrorKind::Protocol => "protocol",
        ErrorKind::Auth => "auth",
        ErrorKind::Closed => "closed",
        ErrorKind::ToSql => "to_sql",
        ErrorKind::FromSql => "from_sql",
        ErrorKind::Column => "column",
        ErrorKind::Parameters => "parameters",
        ErrorKind::RowCount => "row_count",
        ErrorKind::Unsupported => "unsupported",
        ErrorKind::Tls => "tls",
        ErrorKind::TransactionFailed => "transaction_failed",
        ErrorKind::Skipped => "skipped",
        // A server error carries its SQLSTATE above; kinds added later get a class of their own here.
        _ => "_OTHER",
    })
}

/// The class of an I/O error, from the `std::io::Error` behind it.
fn io_error_type(error: &Error) -> &'static str {
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection_refused",
                std::io::ErrorKind::ConnectionReset => "connection_reset",
                std::io::ErrorKind::ConnectionAborted => "connection_aborted",
                std::io::ErrorKind::NotConnected => "not_connected",
                std::io::ErrorKind::TimedOut => "timeout",
                std::io::ErrorKind::UnexpectedEof => "unexpected_eof",
                std::io::ErrorKind::BrokenPipe => "broken_pipe",
                std::io::ErrorKind::NotFound => "not_found",
                std::io::ErrorKind::PermissionDenied => "permission_denied",
                std::io::ErrorKind::HostUnreachable => "host_unreachable",
                std::io::ErrorKind::NetworkUnreachable => "network_unreachable",
                std::io::ErrorKind::AddrNotAvailable => "address_not_available",
                _ => "io",
            };
        }
        source = inner.source();
    }
    "io"
}
