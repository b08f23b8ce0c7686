//! The OpenTelemetry semantic conventions for PostgreSQL client operations, on the client's `tracing` spans
//! and (feature `metrics`) its metrics.
//!
//! Each request runs in a DEBUG span `request` whose fields are the conventions' attributes: `otel.kind =
//! "client"`, `db.system.name = "postgresql"`, `db.namespace` (the database), `server.address`,
//! `server.port`, `db.operation.name` and `db.collection.name` (read from the SQL, see
//! [`Operation`]), `db.operation.batch.size` for pipelines, and on failure `db.response.status_code` (the
//! SQLSTATE), `error.type` and `otel.status_code = "ERROR"`. `otel.name` carries the name the conventions
//! give the span (`{db.operation.name} {target}`), which tracing-opentelemetry exports as the span's name.
//! `db.query.text` is recorded only with [`Config::trace_statements`](crate::Config::trace_statements);
//! parameters never enter a span.
//!
//! Nothing here costs a request anything when no subscriber wants DEBUG spans of this crate: the span is
//! created disabled and every recording below starts by checking that, so no SQL is read and no string made.

use std::borrow::Cow;
use std::future::Future;

use tracing::field::Empty;
use tracing::{Instrument as _, Span};

use crate::client::semconv::{Peer, client_span, error_type};
use crate::proto::operation::Operation;
use crate::{Error, Statement};

/// A DEBUG span `request` with every field of the conventions declared and empty, under `$parent` when one
/// is given, else under the current span.
macro_rules! request_span {
    ($(parent: $parent:expr)?) => {
        client_span!(
            $(@parent $parent;)?
            tracing::Level::DEBUG,
            "request",
            db.operation.name = Empty,
            db.collection.name = Empty,
            db.operation.batch.size = Empty,
            db.response.status_code = Empty,
            db.query.text = Empty,
            kind = Empty,
            backend_pid = Empty,
        )
    };
}

/// What a request runs, for its span and its duration metric.
#[derive(Clone, Copy)]
pub(crate) enum Work<'a> {
    /// SQL text.
    Sql(&'a str),
    /// A prepared statement (its SQL is read once per statement, when first wanted).
    Statement(&'a Statement),
    /// Several statements at once: a pipeline of `size`.
    Batch(&'a [Operation]),
    /// Nothing the conventions name (a ping, a fetch from a portal).
    Other,
}

impl Work<'_> {
    fn operation(&self) -> Cow<'_, Operation> {
        match self {
            Work::Sql(sql) => Cow::Owned(Operation::of(sql)),
            Work::Statement(statement) => Cow::Borrowed(statement.operation()),
            Work::Batch([one]) => Cow::Borrowed(one),
            Work::Batch(operations) => Cow::Owned(Operation::batch(operations.iter())),
            Work::Other => Cow::Owned(Operation::default()),
        }
    }

    fn text(&self) -> Option<&str> {
        match self {
            Work::Sql(sql) => Some(sql),
            Work::Statement(statement) => Some(statement.sql()),
            Work::Batch(_) | Work::Other => None,
        }
    }
}

/// The telemetry of one request: its span, and with the `metrics` feature the start of its duration.
pub(crate) struct Traced {
    span: Span,
    #[cfg(feature = "metrics")]
    timing: crate::client::meters::OperationTiming,
}

/// Everything a request span is given at its start.
pub(crate) struct Describe<'a> {
    pub(crate) kind: &'static str,
    pub(crate) work: Work<'a>,
    pub(crate) peer: &'a Peer,
    pub(crate) backend_pid: Option<i32>,
    pub(crate) trace_statements: bool,
    /// The span of the transaction the request runs in, if any.
    pub(crate) parent: Option<Span>,
}

impl Traced {
    /// Starts the telemetry of a request. With no subscriber listening this makes a disabled span and reads
    /// nothing.
    pub(crate) fn start(describe: Describe<'_>) -> Traced {
        let span = match &describe.parent {
            Some(parent) => request_span!(parent: parent),
            None => request_span!(),
        };
        #[cfg(feature = "metrics")]
        let operation = describe.work.operation();
        #[cfg(feature = "metrics")]
        let timing = crate::client::meters::OperationTiming::start(describe.peer, &operation);
        if !span.is_disabled() {
            #[cfg(not(feature = "metrics"))]
            let operation = describe.work.operation();
            describe.peer.record(&span);
            span.record("kind", describe.kind);
            if let Some(pid) = describe.backend_pid {
                span.record("backend_pid", pid);
            }
            if let Some(name) = &operation.name {
                span.record("db.operation.name", &**name);
            }
            if let Some(collection) = &operation.collection {
                span.record("db.collection.name", &**collection);
            }
            if let Work::Batch(operations) = describe.work
                && operations.len() > 1
            {
                span.record("db.operation.batch.size", operations.len());
            }
            span.record("otel.name", describe.peer.span_name(&operation));
            if describe.trace_statements
                && let Some(text) = describe.work.text()
            {
                span.record("db.query.text", text);
            }
        }
        Traced {
            span,
            #[cfg(feature = "metrics")]
            timing,
        }
    }

    /// The span, to enter or to keep with a stream.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// Runs `future` in the span and records how it ended.
    pub(crate) async fn run<T>(
        self,
        future: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let result = future.instrument(self.span.clone()).await;
        self.end(result.as_ref().err());
        result
    }

    /// Records the end of the request: its error, if any, on the span, and its duration.
    pub(crate) fn end(self, error: Option<&Error>) {
        if let Some(error) = error {
            record_error(&self.span, error);
        }
        #[cfg(feature = "metrics")]
        self.timing.end(error);
    }
}

/// Records `error` on `span` as the conventions say: `error.type`, the SQLSTATE as `db.response.status_code`
/// for an error from the server, and the span's status.
pub(crate) fn record_error(span: &Span, error: &Error) {
    if span.is_disabled() {
        return;
    }
    if let Some(code) = error.code() {
        span.record("db.response.status_code", code);
    }
    span.record("error.type", &*error_type(error));
    span.record("otel.status_code", "ERROR");
}

/// The span of a transaction (or savepoint): the parent of its BEGIN, its statements and its COMMIT or
/// ROLLBACK, whose `outcome` says how it ended.
pub(crate) fn transaction_span(peer: &Peer, parent: Option<&Span>, savepoint: bool) -> Span {
    // Under `parent` when given, else under the current span (an explicit `parent: None` would make a root).
    macro_rules! transaction_span {
        ($(parent: $parent:expr)?) => {
            client_span!(
                $(@parent $parent;)?
                tracing::Level::DEBUG,
                "transaction",
                savepoint,
                outcome = Empty,
            )
        };
    }
    let span = match parent {
        Some(parent) => transaction_span!(parent: parent),
        None => transaction_span!(),
    };
    if !span.is_disabled() {
        peer.record(&span);
        let what = if savepoint {
            "SAVEPOINT"
        } else {
            "TRANSACTION"
        };
        span.record("otel.name", format!("{what} {}", peer.namespace));
    }
    span
}

/// The telemetry of a request whose answer is read over several calls (a result stream, a COPY): its span
/// stays for those calls, and it ends once, at the answer's end or its first error.
pub(crate) struct Pending {
    span: Span,
    traced: Option<Traced>,
}

impl Pending {
    /// Results read in the current span, with no telemetry of their own (part of a larger operation).
    pub(crate) fn current() -> Pending {
        Pending {
            span: Span::current(),
            traced: None,
        }
    }

    pub(crate) fn new(traced: Traced) -> Pending {
        Pending {
            span: traced.span.clone(),
            traced: Some(traced),
        }
    }

    /// The request's span.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// Records how the request ended, the first time only.
    pub(crate) fn end(&mut self, error: Option<&Error>) {
        if let Some(traced) = self.traced.take() {
            traced.end(error);
        }
    }

    /// Records the end of the request if `result` ended it: an error, or (with `last`) the answer's end.
    pub(crate) fn observe<T>(&mut self, result: &Result<T, Error>, last: impl FnOnce(&T) -> bool) {
        match result {
            Err(e) => self.end(Some(e)),
            Ok(value) if last(value) => self.end(None),
            Ok(_) => {}
        }
    }
}

/// Whether telemetry wants operations described: a subscriber may take DEBUG spans, or metrics are built in.
/// One atomic load; false when nothing listens.
pub(crate) fn wanted() -> bool {
    cfg!(feature = "metrics") || tracing::level_enabled!(tracing::Level::DEBUG)
}
