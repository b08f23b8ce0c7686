//! The crate's single error type.
//!
//! Every fallible call returns [`Error`]. A server error keeps every field PostgreSQL sent ([`DbError`]);
//! the other kinds say which layer failed ([`ErrorKind`]). [`Error::class`] tells a caller whether the
//! connection is gone, whether a retry may succeed, or neither.

use std::fmt;
use std::io;
#[cfg(any(feature = "tokio", target_os = "wasi"))]
use std::time::Duration;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::ErrorFields;

use postgres_types::Type;

/// The SQLSTATE codes most callers match on. Compare with [`DbError::code`] or use [`Error::code`].
pub mod sqlstate {
    /// `23505`: a unique constraint was violated.
    pub const UNIQUE_VIOLATION: &str = "23505";
    /// `23503`: a foreign key constraint was violated.
    pub const FOREIGN_KEY_VIOLATION: &str = "23503";
    /// `23502`: a NOT NULL constraint was violated.
    pub const NOT_NULL_VIOLATION: &str = "23502";
    /// `23514`: a CHECK constraint was violated.
    pub const CHECK_VIOLATION: &str = "23514";
    /// `40001`: the transaction could not be serialized; retry it.
    pub const SERIALIZATION_FAILURE: &str = "40001";
    /// `40P01`: a deadlock was detected; retry the transaction.
    pub const DEADLOCK_DETECTED: &str = "40P01";
    /// `42601`: a syntax error.
    pub const SYNTAX_ERROR: &str = "42601";
    /// `42P01`: the relation does not exist.
    pub const UNDEFINED_TABLE: &str = "42P01";
    /// `42703`: the column does not exist.
    pub const UNDEFINED_COLUMN: &str = "42703";
    /// `57014`: the statement was cancelled (by a cancel request or a timeout).
    pub const QUERY_CANCELED: &str = "57014";
    /// `28P01`: password authentication failed.
    pub const INVALID_PASSWORD: &str = "28P01";
    /// `28000`: the authorization specification is invalid (for example no pg_hba.conf entry).
    pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
    /// `3D000`: the database does not exist.
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    /// `57P01`: the server is shutting down (administrator command).
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    /// `26000`: the prepared statement does not exist.
    pub const INVALID_SQL_STATEMENT_NAME: &str = "26000";
    /// `0A000`: the feature is not supported (for example "cached plan must not change result type").
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
}

/// Which layer an [`Error`] comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The server answered with an ErrorResponse; see [`Error::as_db_error`].
    Db,
    /// Reading from or writing to the transport failed.
    Io,
    /// An operation did not finish in time (connect_timeout or a caller's deadline).
    Timeout,
    /// The configuration (connection string, environment, builder) is invalid.
    Config,
    /// The server broke the protocol: a malformed, oversized or unexpected message.
    Protocol,
    /// Authentication could not proceed or was refused by `require_auth`.
    Auth,
    /// The connection was closed, by [`close`](crate::Client::close) or by the peer.
    Closed,
    /// A Rust value could not be encoded for a parameter, or its type does not match.
    ToSql,
    /// A column could not be decoded into the requested Rust type, or its type does not match.
    FromSql,
    /// A column index or name does not exist in the row.
    Column,
    /// The number of parameters does not match the statement.
    Parameters,
    /// `query_one` got no row, or more than one.
    RowCount,
    /// The requested feature is not available in this build.
    Unsupported,
    /// TLS could not be set up: the server refused it, the handshake failed, or the server's certificate
    /// did not pass verification.
    Tls,
    /// COMMIT rolled the transaction back because a statement in it had failed.
    TransactionFailed,
    /// Work was skipped because of an earlier failure: a statement of an atomic pipeline after the one that
    /// failed, or a portal fetch after an earlier fetch was dropped before it finished (its rows are lost).
    Skipped,
}

/// How a caller should react to an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorClass {
    /// The connection can no longer be used: drop it and connect again.
    ConnectionBroken,
    /// The operation failed but may succeed if retried as a whole (serialization failure, deadlock,
    /// a timeout); the connection is still usable.
    Transient,
    /// Retrying the same operation will fail the same way; the connection is still usable.
    Permanent,
}

/// The error returned by every fallible operation of this crate.
pub struct Error(Box<Inner>);

struct Inner {
    kind: ErrorKind,
    message: String,
    db: Option<DbError>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
    broken: bool,
    /// Where the error happened (for example which host a connection attempt went to).
    context: Option<String>,
}

impl Error {
    fn build(kind: ErrorKind, message: String) -> Error {
        Error(Box::new(Inner {
            kind,
            message,
            db: None,
            source: None,
            broken: false,
            context: None,
        }))
    }

    fn with_source(mut self, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        self.0.source = Some(source.into());
        self
    }

    /// Adds where the error happened; shown before the message.
    #[cfg(any(feature = "tokio", target_os = "wasi"))]
    pub(crate) fn context(mut self, context: String) -> Error {
        self.0.context = Some(context);
        self
    }

    /// The error of a failed connect: the last attempt's error, with every attempt listed in its context.
    #[cfg(any(feature = "tokio", target_os = "wasi"))]
    pub(crate) fn connect(mut failures: Vec<(String, Error)>) -> Error {
        let Some((last_target, last)) = failures.pop() else {
            return Error::config("no host to connect to");
        };
        let mut context = String::new();
        for (target, error) in &failures {
            context.push_str(&format!("connection to {target} failed: {error}\n"));
        }
        context.push_str(&format!("connection to {last_target} failed"));
        last.context(context)
    }

    /// Marks the error as one after which the connection cannot be used.
    pub(crate) fn broken(mut self) -> Error {
        self.0.broken = true;
        self
    }

    pub(crate) fn db(db: DbError) -> Error {
        let fatal = matches!(db.severity(), "FATAL" | "PANIC");
        let mut e = Error::build(ErrorKind::Db, String::new());
        e.0.db = Some(db);
        e.0.broken = fatal;
        e
    }

    pub(crate) fn io(err: io::Error) -> Error {
        let message = match err.kind() {
            io::ErrorKind::UnexpectedEof => {
                "the server closed the connection unexpectedly".to_string()
            }
            _ => format!("I/O error: {err}"),
        };
        Error::build(ErrorKind::Io, message)
            .with_source(err)
            .broken()
    }

    #[cfg(any(feature = "tokio", target_os = "wasi"))]
    pub(crate) fn timeout(what: &str, after: Duration) -> Error {
        Error::build(
            ErrorKind::Timeout,
            format!("{what} timed out after {after:?}"),
        )
    }

    pub(crate) fn config(message: impl Into<String>) -> Error {
        Error::build(ErrorKind::Config, message.into())
    }

    pub(crate) fn protocol(message: impl Into<String>) -> Error {
        Error::build(ErrorKind::Protocol, message.into()).broken()
    }

    /// A message whose body does not parse.
    pub(crate) fn malformed(e: io::Error) -> Error {
        Error::protocol(format!("malformed message: {e}"))
    }

    pub(crate) fn auth(message: impl Into<String>) -> Error {
        Error::build(ErrorKind::Auth, message.into()).broken()
    }

    /// An authentication failure with its cause (the server's ErrorResponse, or the application's error).
    pub(crate) fn auth_caused_by(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::auth(message).with_source(source)
    }

    /// A server that answered but does not fit `target_session_attrs`.
    #[cfg(any(feature = "tokio", target_os = "wasi"))]
    pub(crate) fn connect_rejected(message: String) -> Error {
        Error::build(ErrorKind::Config, message)
    }

    /// The error every call returns after the connection broke: same kind, the original message.
    pub(crate) fn still_broken(kind: ErrorKind, message: &str) -> Error {
        Error::build(kind, format!("the connection is broken: {message}")).broken()
    }

    /// A TLS failure; `source` keeps the underlying rustls or I/O error.
    #[cfg(any(feature = "tokio", target_os = "wasi"))]
    pub(crate) fn tls(
        message: impl Into<String>,
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        let e = Error::build(ErrorKind::Tls, message.into()).broken();
        match source {
            Some(source) => e.with_source(source),
            None => e,
        }
    }

    pub(crate) fn closed() -> Error {
        Error::build(ErrorKind::Closed, "the connection is closed".to_string()).broken()
    }

    pub(crate) fn to_sql(
        ty: &Type,
        index: usize,
        source: Box<dyn std::error::Error + Send + Sync>,
    ) -> Error {
        Error::build(
            ErrorKind::ToSql,
            format!(
                "cannot encode parameter ${} as type {}",
                index + 1,
                ty.name()
            ),
        )
        .with_source(source)
    }

    pub(crate) fn from_sql(
        column: &str,
        source: Box<dyn std::error::Error + Send + Sync>,
    ) -> Error {
        Error::build(
            ErrorKind::FromSql,
            format!("cannot decode column \"{column}\""),
        )
        .with_source(source)
    }

    pub(crate) fn from_sql_mismatch(column: &str, ty: &Type, rust_type: &str) -> Error {
        Error::build(
            ErrorKind::FromSql,
            format!(
                "column \"{column}\" has type {} which cannot be read as a {rust_type}",
                ty.name()
            ),
        )
    }

    pub(crate) fn column(what: String) -> Error {
        Error::build(ErrorKind::Column, format!("no column {what} in the row"))
    }

    pub(crate) fn parameters(expected: usize, got: usize) -> Error {
        Error::build(
            ErrorKind::Parameters,
            format!("the statement expects {expected} parameters but {got} were given"),
        )
    }

    #[cfg(any(feature = "tokio", target_os = "wasi"))]
    pub(crate) fn row_count(message: &str) -> Error {
        Error::build(ErrorKind::RowCount, message.to_string())
    }

    #[cfg(any(feature = "tokio", target_os = "wasi"))]
    pub(crate) fn transaction_failed() -> Error {
        Error::build(
            ErrorKind::TransactionFailed,
            "COMMIT rolled the transaction back because a statement in it had failed".to_string(),
        )
    }

    pub(crate) fn unsupported(message: impl Into<String>) -> Error {
        Error::build(ErrorKind::Unsupported, message.into())
    }

    #[cfg(any(feature = "tokio", target_os = "wasi"))]
    pub(crate) fn skipped(message: impl Into<String>) -> Error {
        Error::build(ErrorKind::Skipped, message.into())
    }

    /// Which layer the error comes from.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The server's error, if this is one.
    pub fn as_db_error(&self) -> Option<&DbError> {
        self.0.db.as_ref()
    }

    /// The SQLSTATE code, if this is a server error.
    ///
    /// ```
    /// # fn check(err: &wasi_pg_client::Error) -> bool {
    /// err.code() == Some(wasi_pg_client::sqlstate::UNIQUE_VIOLATION)
    /// # }
    /// ```
    pub fn code(&self) -> Option<&str> {
        self.0.db.as_ref().map(DbError::code)
    }

    /// Whether the connection that produced this error can no longer be used.
    pub fn is_connection_broken(&self) -> bool {
        self.0.broken
    }

    /// How a caller should react: reconnect, retry, or give up.
    pub fn class(&self) -> ErrorClass {
        if self.0.broken {
            return ErrorClass::ConnectionBroken;
        }
        match (self.0.kind, self.code()) {
            (ErrorKind::Timeout, _) => ErrorClass::Transient,
            // Retrying the whole transaction is the documented remedy for these two. A cancelled query
            // (57014) is not here: our own CopyFail and statement_timeout produce it, and neither goes away on
            // retry. FATAL errors (57P01 and friends) were already marked broken above.
            (ErrorKind::Db, Some(code))
                if code == sqlstate::SERIALIZATION_FAILURE
                    || code == sqlstate::DEADLOCK_DETECTED =>
            {
                ErrorClass::Transient
            }
            _ => ErrorClass::Permanent,
        }
    }

    /// Whether retrying the whole operation may succeed (see [`ErrorClass::Transient`]).
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.0.kind);
        if let Some(db) = &self.0.db {
            d.field("db", db);
        } else {
            d.field("message", &self.0.message);
        }
        if let Some(source) = &self.0.source {
            d.field("source", source);
        }
        if let Some(context) = &self.0.context {
            d.field("context", context);
        }
        d.field("broken", &self.0.broken).finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(context) = &self.0.context {
            write!(f, "{context}: ")?;
        }
        if let Some(db) = &self.0.db {
            return fmt::Display::fmt(db, f);
        }
        f.write_str(&self.0.message)?;
        if let Some(source) = &self.0.source
            && !matches!(self.0.kind, ErrorKind::Io)
        {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        if let Some(db) = &self.0.db {
            return Some(db);
        }
        self.0
            .source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// An error or notice sent by the server, with every field it carried.
///
/// Field meanings are those of PostgreSQL's "Error and Notice Message Fields".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbError {
    severity: String,
    severity_nonlocalized: Option<String>,
    code: String,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
    position: Option<ErrorPosition>,
    where_: Option<String>,
    schema: Option<String>,
    table: Option<String>,
    column: Option<String>,
    datatype: Option<String>,
    constraint: Option<String>,
    file: Option<String>,
    line: Option<u32>,
    routine: Option<String>,
}

/// Where in the query (or in an internally generated query) an error occurred.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorPosition {
    /// A 1-based character offset into the query the client sent.
    Original(u32),
    /// A position in a query generated by the server (for example inside a PL/pgSQL function).
    Internal {
        /// A 1-based character offset into `query`.
        position: u32,
        /// The internally generated query.
        query: String,
    },
}

impl DbError {
    /// Parses the fields of an ErrorResponse or NoticeResponse body.
    pub(crate) fn parse(fields: &mut ErrorFields<'_>) -> Result<DbError, Error> {
        let mut e = DbError::default();
        let mut internal_position = None;
        let mut internal_query = None;
        let mut position = None;
        let bad = |what: &str| Error::protocol(format!("malformed error field: {what}"));
        while let Some(field) = fields
            .next()
            .map_err(|e| Error::protocol(format!("malformed error message: {e}")))?
        {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'S' => e.severity = value,
                b'V' => e.severity_nonlocalized = Some(value),
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                b'H' => e.hint = Some(value),
                b'P' => position = Some(value.parse::<u32>().map_err(|_| bad("position"))?),
                b'p' => {
                    internal_position =
                        Some(value.parse::<u32>().map_err(|_| bad("internal position"))?)
                }
                b'q' => internal_query = Some(value),
                b'W' => e.where_ = Some(value),
                b's' => e.schema = Some(value),
                b't' => e.table = Some(value),
                b'c' => e.column = Some(value),
                b'd' => e.datatype = Some(value),
                b'n' => e.constraint = Some(value),
                b'F' => e.file = Some(value),
                b'L' => e.line = value.parse().ok(),
                b'R' => e.routine = Some(value),
                // The protocol says unknown field types must be ignored.
                _ => {}
            }
        }
        if e.severity.is_empty() {
            e.severity = e
                .severity_nonlocalized
                .clone()
                .unwrap_or_else(|| "ERROR".to_string());
        }
        e.position = match (position, internal_position, internal_query) {
            (Some(p), _, _) => Some(ErrorPosition::Original(p)),
            (None, Some(position), Some(query)) => {
                Some(ErrorPosition::Internal { position, query })
            }
            _ => None,
        };
        Ok(e)
    }

    /// The severity, possibly localized: `ERROR`, `FATAL`, `PANIC`, or for notices `WARNING`, `NOTICE`,
    /// `DEBUG`, `INFO`, `LOG`.
    pub fn severity(&self) -> &str {
        self.severity_nonlocalized
            .as_deref()
            .unwrap_or(&self.severity)
    }

    /// The severity as the server's language setting spells it.
    pub fn localized_severity(&self) -> &str {
        &self.severity
    }

    /// The SQLSTATE code (see [`sqlstate`](crate::sqlstate)).
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The primary human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// An optional secondary message with more detail.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// An optional suggestion what to do about the problem.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// Where in the query the error occurred.
    pub fn position(&self) -> Option<&ErrorPosition> {
        self.position.as_ref()
    }

    /// The context (call stack) in which the error occurred.
    pub fn where_(&self) -> Option<&str> {
        self.where_.as_deref()
    }

    /// The schema of the object the error is about.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The table the error is about.
    pub fn table(&self) -> Option<&str> {
        self.table.as_deref()
    }

    /// The column the error is about.
    pub fn column(&self) -> Option<&str> {
        self.column.as_deref()
    }

    /// The data type the error is about.
    pub fn datatype(&self) -> Option<&str> {
        self.datatype.as_deref()
    }

    /// The constraint the error is about.
    pub fn constraint(&self) -> Option<&str> {
        self.constraint.as_deref()
    }

    /// The server source file that reported the error.
    pub fn file(&self) -> Option<&str> {
        self.file.as_deref()
    }

    /// The line in the server source file.
    pub fn line(&self) -> Option<u32> {
        self.line
    }

    /// The server routine that reported the error.
    pub fn routine(&self) -> Option<&str> {
        self.routine.as_deref()
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.severity(), self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, "\nDETAIL: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\nHINT: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DbError {}
