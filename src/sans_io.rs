//! The protocol core for hosts that bring their own I/O: no sockets, no async, no clock.
//!
//! [`Protocol`] is the connection state machine the async [`Client`](crate::Client) drives, with a small request
//! API on top. It builds on every target, including `wasm32-unknown-unknown` with default features off (no
//! runtime, no TLS), so an embedding that moves bytes itself (a wasm extension runtime, an event loop, a test)
//! can speak PostgreSQL with the same code, limits and checks as the client:
//!
//! 1. Make a [`Protocol`] from a [`Config`]: the StartupMessage is queued at once.
//! 2. Send what [`poll_transmit`](Protocol::poll_transmit) holds and confirm it with
//!    [`advance_transmit`](Protocol::advance_transmit); feed what the server sends to
//!    [`handle_input`](Protocol::handle_input), and its end of stream to [`handle_eof`](Protocol::handle_eof).
//! 3. Call [`poll_startup`](Protocol::poll_startup) until it returns `true` (authentication answers are queued
//!    for transmission along the way), then queue requests and read their answers with
//!    [`poll_response`](Protocol::poll_response). Each request is answered by [`Reply`] values ending with
//!    [`Reply::ReadyForQuery`]; notices, notifications and parameter changes come out of
//!    [`poll_event`](Protocol::poll_event) whenever they arrive.
//!
//! Nothing here blocks or sleeps: when a `poll_*` call has nothing, the host waits for more input. Timeouts are
//! the host's, since only it has a clock. TLS is the host's too: negotiate it with [`ssl_request`] on the
//! socket before the startup, then start with [`Protocol::new_over_tls`] so SCRAM can bind to the channel.
//!
//! ```
//! use wasi_pg_client::Config;
//! use wasi_pg_client::sans_io::{Protocol, Reply};
//!
//! # fn message(tag: u8, body: &[u8]) -> Vec<u8> {
//! #     let mut m = vec![tag];
//! #     m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
//! #     m.extend_from_slice(body);
//! #     m
//! # }
//! # let auth_ok = message(b'R', &[0, 0, 0, 0]);
//! # let ready = message(b'Z', b"I");
//! # let mut field = b"n\0".to_vec();
//! # field.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 23, 0, 4, 255, 255, 255, 255, 0, 1]);
//! # let described = [message(b'1', &[]), message(b'2', &[]), message(b'T', &[&[0, 1][..], &field].concat())].concat();
//! # let row = message(b'D', &[0, 1, 0, 0, 0, 4, 0, 0, 0, 42]);
//! # let complete = message(b'C', b"SELECT 1\0");
//! let config = Config::parse("user=app dbname=app")?;
//! let mut pg = Protocol::new(&config)?;
//!
//! // The host writes the StartupMessage to its socket...
//! let startup = pg.poll_transmit().to_vec();
//! pg.advance_transmit(startup.len());
//! // ...and feeds the server's answer (here AuthenticationOk, then ReadyForQuery).
//! pg.handle_input(&[auth_ok, ready.clone()].concat());
//! assert!(pg.poll_startup()?);
//!
//! let id = pg.queue_query("SELECT $1::int4 AS n", &[(&42i32, wasi_pg_client::types::Type::INT4)])?;
//! let request = pg.poll_transmit().to_vec(); // Parse, Bind, Describe, Execute, Sync
//! pg.advance_transmit(request.len());
//! pg.handle_input(&[described, row, complete, ready].concat());
//!
//! let mut columns = Vec::new();
//! let mut values = Vec::new();
//! while let Some(response) = pg.poll_response()? {
//!     assert_eq!(response.request, id);
//!     match response.reply {
//!         Reply::RowDescription(fields) => {
//!             // Built-in types resolve from their OID; others need a lookup in pg_type.
//!             columns = fields
//!                 .iter()
//!                 .map(|f| f.to_column(wasi_pg_client::types::Type::from_oid(f.type_oid()).unwrap()))
//!                 .collect();
//!         }
//!         Reply::DataRow(row) => values.push(row.into_row(columns.clone().into())?.get::<_, i32>("n")),
//!         Reply::ReadyForQuery(_) => break,
//!         _ => {}
//!     }
//! }
//! assert_eq!(values, [42]);
//! # Ok::<(), wasi_pg_client::Error>(())
//! ```
//!
//! On `wasm32-unknown-unknown`, the SCRAM nonce comes from the `getrandom` crate, which has no source of
//! randomness there: build with `--cfg getrandom_backend="custom"` in `RUSTFLAGS` and define the host's source
//! as getrandom's documentation describes (this repository's `.cargo/config.toml` sets the flag for its own
//! check build).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{Message, RowDescriptionBody};
use postgres_protocol::message::frontend;
use postgres_types::{ToSql, Type};

use crate::config::{ProtocolVersion, SslMode};
use crate::proto::row::{Row, SimpleColumn, SimpleQueryRow};
use crate::proto::statement::Column;
use crate::proto::{
    self, Backend, Flow, RawRow, encode_error, limits, startup_parameters, startup_params,
    write_bind_portal,
};
use crate::{Config, DbError, Error, Notification, TransactionStatus};

/// Identifies a queued request: every [`Response`] names the request it answers.
pub type RequestId = u64;

/// A PostgreSQL connection as a state machine: bytes in, bytes and replies out.
///
/// See the [module documentation](self) for how a host drives it.
pub struct Protocol {
    inner: proto::Protocol,
}

impl std::fmt::Debug for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Protocol")
            .field("ready", &self.inner.is_ready())
            .field("closed", &self.inner.is_closed())
            .field("transaction_status", &self.inner.transaction_status())
            .finish_non_exhaustive()
    }
}

impl Protocol {
    /// Starts a connection over a plaintext channel: the StartupMessage for `config` (user, database,
    /// `application_name`, `options` and other run-time parameters) is queued for transmission.
    ///
    /// The password is `config`'s (the password file is not read: the host may have no file system).
    /// `sslmode=require` and stricter are refused with [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported):
    /// a host that runs TLS starts with [`new_over_tls`](Self::new_over_tls) instead.
    pub fn new(config: &Config) -> Result<Protocol, Error> {
        if matches!(
            config.get_ssl_mode(),
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        ) {
            return Err(Error::unsupported(format!(
                "sslmode={} needs TLS: negotiate it on the connection and start with Protocol::new_over_tls",
                config.get_ssl_mode().as_str()
            )));
        }
        Protocol::start(config, None)
    }

    /// Starts a connection over TLS that the host negotiated (see [`ssl_request`]).
    ///
    /// `channel_binding` is the `tls-server-end-point` data of the server certificate (RFC 5929: its hash with
    /// the hash function of its signature algorithm, SHA-256 for MD5 and SHA-1), used for
    /// SCRAM-SHA-256-PLUS. With `None`, the exchange is not bound to the channel, and `channel_binding=require`
    /// fails.
    pub fn new_over_tls(
        config: &Config,
        channel_binding: Option<Vec<u8>>,
    ) -> Result<Protocol, Error> {
        let binding = channel_binding.ok_or_else(|| {
            "the host gave no tls-server-end-point data for this connection".to_string()
        });
        Protocol::start(config, Some(binding))
    }

    fn start(config: &Config, tls: Option<Result<Vec<u8>, String>>) -> Result<Protocol, Error> {
        let parameters = startup_parameters(config)?;
        let password = config.get_password().map(<[u8]>::to_vec);
        let inner = proto::Protocol::new(
            startup_params(config, parameters.params, password, tls),
            limits(config),
        )?;
        Ok(Protocol { inner })
    }

    /// Feeds bytes received from the server. They are parsed by the `poll_*` calls, one message at a time.
    pub fn handle_input(&mut self, bytes: &[u8]) {
        self.inner.handle_input(bytes);
    }

    /// Records that the server closed the connection.
    pub fn handle_eof(&mut self) {
        self.inner.handle_eof();
    }

    /// Bytes waiting to be sent to the server.
    pub fn poll_transmit(&self) -> &[u8] {
        self.inner.poll_transmit()
    }

    /// Confirms that the first `n` bytes of [`poll_transmit`](Self::poll_transmit) were sent.
    pub fn advance_transmit(&mut self, n: usize) {
        self.inner.advance_transmit(n);
    }

    /// Advances the startup with the input received so far: `Ok(true)` once the server is ready for queries,
    /// `Ok(false)` when more input is needed. Answers to authentication requests are queued for transmission.
    /// An error ends the connection.
    pub fn poll_startup(&mut self) -> Result<bool, Error> {
        self.inner.poll_startup()
    }

    /// The next message that answers no request (a notice, a notification, a parameter change), if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.inner.poll_event().map(|event| match event {
            proto::Event::Notice(notice) => Event::Notice(notice),
            proto::Event::Notification(notification) => Event::Notification(notification),
            proto::Event::ParameterStatus(name, value) => Event::ParameterStatus { name, value },
        })
    }

    /// The next reply to a queued request, or `Ok(None)` when more input is needed.
    ///
    /// Replies come in the order requests were queued, each tagged with its request. An error means the
    /// connection is unusable (a malformed or unexpected message, a FATAL error); a server error that answers a
    /// request is a [`Reply::Error`] instead, followed by [`Reply::ReadyForQuery`].
    pub fn poll_response(&mut self) -> Result<Option<Response>, Error> {
        let Some(response) = self.inner.poll_response()? else {
            return Ok(None);
        };
        let reply = match response.message {
            Backend::Row(raw) => Reply::DataRow(DataRow(raw)),
            Backend::Ready => Reply::ReadyForQuery(self.inner.transaction_status()),
            Backend::Error(db) => Reply::Error(db),
            Backend::CopyData(data) => Reply::CopyData(data),
            // Requests queued here never accept CopyBoth: the core breaks the connection instead.
            Backend::CopyBoth => {
                return Err(Error::protocol("BUG: CopyBoth handed to a sans-IO request"));
            }
            Backend::Message(message) => reply(message)?,
        };
        Ok(Some(Response {
            request: response.request,
            reply,
        }))
    }

    /// Queues a simple Query: one or more statements separated by semicolons, results in text.
    ///
    /// Each statement answers [`Reply::RowDescription`], [`Reply::DataRow`]s and [`Reply::CommandComplete`]
    /// (or [`Reply::EmptyQuery`]); one [`Reply::ReadyForQuery`] ends the request.
    pub fn queue_simple_query(&mut self, sql: &str) -> Result<RequestId, Error> {
        if sql.contains('\0') {
            return Err(Error::config("the SQL text contains a NUL byte"));
        }
        self.inner.queue_request(Flow::Simple, None, |buf| {
            frontend::query(sql, buf).map_err(encode_error)
        })
    }

    /// Queues a statement with parameters of the given types, in one round trip through the unnamed
    /// statement (nothing stays prepared on the server), results in binary.
    ///
    /// Answers: ParseComplete, BindComplete, [`Reply::RowDescription`] or [`Reply::NoData`],
    /// [`Reply::DataRow`]s, [`Reply::CommandComplete`], [`Reply::ReadyForQuery`]. Parameters are encoded now;
    /// one that does not fit its type is an error and nothing is queued.
    pub fn queue_query(
        &mut self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<RequestId, Error> {
        proto::check_parameter_count(params.len())?;
        let types: Vec<Type> = params.iter().map(|(_, ty)| ty.clone()).collect();
        let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(value, _)| *value).collect();
        self.inner.queue_request(Flow::Extended(1), None, |buf| {
            frontend::parse("", sql, types.iter().map(Type::oid), buf).map_err(encode_error)?;
            write_bind_portal(buf, "", "", &types, &values)?;
            frontend::describe(b'P', "", buf).map_err(encode_error)?;
            frontend::execute("", 0, buf).map_err(encode_error)?;
            frontend::sync(buf);
            Ok(())
        })
    }

    /// Queues the preparation of a named statement (`param_types` may leave types for the server to infer).
    ///
    /// Answers: ParseComplete, [`Reply::ParameterDescription`] (every parameter's type OID),
    /// [`Reply::RowDescription`] or [`Reply::NoData`], [`Reply::ReadyForQuery`]. Run it with
    /// [`queue_execute`](Self::queue_execute) and close it with
    /// [`queue_close_statement`](Self::queue_close_statement).
    pub fn queue_prepare(
        &mut self,
        name: &str,
        sql: &str,
        param_types: &[Type],
    ) -> Result<RequestId, Error> {
        self.inner.queue_request(Flow::Extended(1), None, |buf| {
            frontend::parse(name, sql, param_types.iter().map(Type::oid), buf)
                .map_err(encode_error)?;
            frontend::describe(b'S', name, buf).map_err(encode_error)?;
            frontend::sync(buf);
            Ok(())
        })
    }

    /// Queues an execution of the prepared statement `name` with the parameter types and the result column
    /// count its preparation reported. Results come in binary. A row of another width than `columns` is a
    /// protocol error that ends the connection, so give the count from the statement's RowDescription (0 after
    /// NoData).
    ///
    /// Answers: BindComplete, [`Reply::DataRow`]s, [`Reply::CommandComplete`], [`Reply::ReadyForQuery`] (no
    /// RowDescription: the preparation described the columns).
    pub fn queue_execute(
        &mut self,
        name: &str,
        param_types: &[Type],
        params: &[&(dyn ToSql + Sync)],
        columns: usize,
    ) -> Result<RequestId, Error> {
        if param_types.len() != params.len() {
            return Err(Error::parameters(param_types.len(), params.len()));
        }
        self.inner
            .queue_request(Flow::Extended(1), Some(columns), |buf| {
                write_bind_portal(buf, "", name, param_types, params)?;
                frontend::execute("", 0, buf).map_err(encode_error)?;
                frontend::sync(buf);
                Ok(())
            })
    }

    /// Queues the Close of the prepared statement `name`. Answers: CloseComplete, [`Reply::ReadyForQuery`].
    pub fn queue_close_statement(&mut self, name: &str) -> Result<RequestId, Error> {
        self.inner.queue_request(Flow::Extended(1), None, |buf| {
            frontend::close(b'S', name, buf).map_err(encode_error)?;
            frontend::sync(buf);
            Ok(())
        })
    }

    /// Queues Terminate: the host sends it and closes the connection; nothing can be queued after it.
    pub fn queue_terminate(&mut self) {
        self.inner.queue_terminate();
    }

    /// Whether the startup finished and requests may be queued.
    pub fn is_ready(&self) -> bool {
        self.inner.is_ready()
    }

    /// Whether the connection is closed or broken.
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Whether queued requests still wait for their [`Reply::ReadyForQuery`].
    pub fn has_pending(&self) -> bool {
        self.inner.has_pending()
    }

    /// The transaction status of the last ReadyForQuery.
    pub fn transaction_status(&self) -> TransactionStatus {
        self.inner.transaction_status()
    }

    /// A run-time parameter the server reported (`server_version`, `TimeZone`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.inner.parameter(name)
    }

    /// The process id of the server backend, from BackendKeyData.
    pub fn backend_pid(&self) -> Option<i32> {
        self.inner.backend_key().map(|key| key.process_id)
    }

    /// The protocol version in use: the one asked for, or the older one the server negotiated.
    pub fn protocol_version(&self) -> ProtocolVersion {
        self.inner.protocol_version()
    }

    /// The CancelRequest for this session, once the server sent its key: the host sends it on a new
    /// connection to the same server (over TLS if the session uses TLS), and the server closes that connection
    /// once the session's backend was signalled.
    pub fn cancel_request(&self) -> Option<Vec<u8>> {
        let key = self.inner.backend_key()?;
        let mut out = BytesMut::new();
        proto::cancel_request(key, &mut out);
        Some(out.to_vec())
    }
}

/// The SSLRequest a host sends before the startup to ask for TLS. The server answers one byte: `S` (start the
/// TLS handshake; refuse the connection if more bytes came with it, they could be injected) or `N` (no TLS).
pub fn ssl_request() -> Vec<u8> {
    let mut out = BytesMut::new();
    frontend::ssl_request(&mut out);
    out.to_vec()
}

/// A message from the server that answers no request.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A notice or warning (NoticeResponse).
    Notice(Box<DbError>),
    /// A notification from LISTEN/NOTIFY.
    Notification(Notification),
    /// A run-time parameter changed (ParameterStatus).
    ParameterStatus {
        /// The parameter's name.
        name: String,
        /// Its new value.
        value: String,
    },
}

/// A reply and the request it answers.
#[derive(Debug)]
#[non_exhaustive]
pub struct Response {
    /// The request, as its `queue_*` call returned it.
    pub request: RequestId,
    /// The reply.
    pub reply: Reply,
}

/// One message in answer to a request.
#[derive(Debug)]
#[non_exhaustive]
pub enum Reply {
    /// Parse succeeded.
    ParseComplete,
    /// Bind succeeded.
    BindComplete,
    /// Close succeeded.
    CloseComplete,
    /// The statement returns no rows.
    NoData,
    /// The type OIDs of a prepared statement's parameters, in order.
    ParameterDescription(Vec<u32>),
    /// The columns of the rows that follow.
    RowDescription(Vec<Field>),
    /// A row, checked against the column count of its description.
    DataRow(DataRow),
    /// A statement finished; the tag says what it did (`INSERT 0 1`, `SELECT 5`, ...).
    CommandComplete(String),
    /// The statement text was empty.
    EmptyQuery,
    /// An Execute stopped at its row limit.
    PortalSuspended,
    /// COPY TO STDOUT starts: [`Reply::CopyData`] follows until [`Reply::CopyDone`].
    CopyOut {
        /// Whether the data is in binary COPY format.
        binary: bool,
    },
    /// COPY data.
    CopyData(Bytes),
    /// The COPY data is complete.
    CopyDone,
    /// The server's error; [`Reply::ReadyForQuery`] follows.
    Error(Box<DbError>),
    /// The end of a request (one per simple Query or Sync), with the transaction status after it.
    ReadyForQuery(TransactionStatus),
}

/// A column in a [`Reply::RowDescription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    name: String,
    type_oid: u32,
    table_oid: Option<u32>,
    column_id: Option<i16>,
    type_modifier: i32,
    binary: bool,
}

impl Field {
    /// The column name (or alias).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The OID of the column's type. [`Type::from_oid`] knows the built-in types; others need a lookup in
    /// `pg_type`.
    pub fn type_oid(&self) -> u32 {
        self.type_oid
    }

    /// The OID of the table the column comes from, if it is a plain table column.
    pub fn table_oid(&self) -> Option<u32> {
        self.table_oid
    }

    /// The column's attribute number in that table.
    pub fn column_id(&self) -> Option<i16> {
        self.column_id
    }

    /// The type modifier (`atttypmod`: a varchar's length, a numeric's precision), -1 for none.
    pub fn type_modifier(&self) -> i32 {
        self.type_modifier
    }

    /// Whether values of this column come in binary (the extended-protocol requests here ask for binary;
    /// simple queries answer in text).
    pub fn is_binary(&self) -> bool {
        self.binary
    }

    /// The column for decoding binary rows with [`DataRow::into_row`], with the type resolved from
    /// [`type_oid`](Self::type_oid).
    pub fn to_column(&self, type_: Type) -> Column {
        Column::new(self.name.clone(), type_, self.table_oid, self.column_id)
    }

    /// The column for reading text rows with [`DataRow::into_simple_row`].
    pub fn to_simple_column(&self) -> SimpleColumn {
        SimpleColumn {
            name: self.name.clone(),
            type_oid: self.type_oid,
        }
    }
}

/// A row of raw values, checked against the column count of its description.
#[derive(Debug, Clone)]
pub struct DataRow(RawRow);

impl DataRow {
    /// The number of values.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the row has no values.
    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }

    /// The raw bytes of value `index` (`None` for SQL NULL), in the format its column was sent in.
    pub fn get(&self, index: usize) -> Result<Option<&[u8]>, Error> {
        if index >= self.0.len() {
            return Err(Error::column(index.to_string()));
        }
        Ok(self.0.field(index))
    }

    /// A [`Row`] that decodes binary values with [`Row::get`]; `columns` come from
    /// [`Field::to_column`] (rows of [`Protocol::queue_query`] and [`Protocol::queue_execute`] are binary).
    pub fn into_row(self, columns: Arc<[Column]>) -> Result<Row, Error> {
        Row::new(columns, self.0)
    }

    /// A [`SimpleQueryRow`] that reads text values (the rows of [`Protocol::queue_simple_query`]); `columns`
    /// come from [`Field::to_simple_column`]. Every value is checked to be UTF-8.
    pub fn into_simple_row(self, columns: Arc<[SimpleColumn]>) -> Result<SimpleQueryRow, Error> {
        SimpleQueryRow::new(columns, self.0)
    }
}

/// Translates a backend message the core handed out as an answer.
fn reply(message: Message) -> Result<Reply, Error> {
    Ok(match message {
        Message::ParseComplete => Reply::ParseComplete,
        Message::BindComplete => Reply::BindComplete,
        Message::CloseComplete => Reply::CloseComplete,
        Message::NoData => Reply::NoData,
        Message::EmptyQueryResponse => Reply::EmptyQuery,
        Message::PortalSuspended => Reply::PortalSuspended,
        Message::CopyDone => Reply::CopyDone,
        Message::ParameterDescription(body) => {
            Reply::ParameterDescription(body.parameters().collect().map_err(Error::malformed)?)
        }
        Message::RowDescription(body) => Reply::RowDescription(fields(&body)?),
        Message::CommandComplete(body) => {
            Reply::CommandComplete(body.tag().map_err(Error::malformed)?.to_string())
        }
        Message::CopyOutResponse(body) => Reply::CopyOut {
            binary: body.format() == 1,
        },
        // The core refuses COPY FROM STDIN itself (no request here accepts one) and routes everything else.
        other => {
            return Err(Error::protocol(format!(
                "BUG: the core handed out {} as an answer",
                proto::message_name(&other)
            )));
        }
    })
}

fn fields(body: &RowDescriptionBody) -> Result<Vec<Field>, Error> {
    body.fields()
        .map(|f| {
            Ok(Field {
                name: f.name().to_string(),
                type_oid: f.type_oid(),
                table_oid: (f.table_oid() != 0).then_some(f.table_oid()),
                column_id: (f.column_id() != 0).then_some(f.column_id()),
                type_modifier: f.type_modifier(),
                binary: f.format() == 1,
            })
        })
        .collect()
        .map_err(Error::malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(u32::try_from(body.len()).unwrap() + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn ready(status: u8) -> Vec<u8> {
        message(b'Z', &[status])
    }

    /// A started protocol: the StartupMessage taken, AuthenticationOk, BackendKeyData and ReadyForQuery fed.
    fn started(config: &str) -> Protocol {
        let mut pg = Protocol::new(&Config::parse(config).unwrap()).unwrap();
        let n = pg.poll_transmit().len();
        pg.advance_transmit(n);
        let key = message(b'K', &[0, 0, 0, 7, 1, 2, 3, 4]);
        pg.handle_input(&[message(b'R', &[0, 0, 0, 0]), key, ready(b'I')].concat());
        assert!(pg.poll_startup().unwrap());
        pg
    }

    fn replies(pg: &mut Protocol) -> Vec<Reply> {
        std::iter::from_fn(|| pg.poll_response().unwrap())
            .map(|r| r.reply)
            .collect()
    }

    #[test]
    fn startup_sends_the_configured_parameters() {
        let config = Config::parse("user=alice dbname=shop application_name=host").unwrap();
        let pg = Protocol::new(&config).unwrap();
        let startup = pg.poll_transmit();
        for expected in [
            &b"user\0alice\0"[..],
            b"database\0shop\0",
            b"application_name\0host\0",
        ] {
            assert!(startup.windows(expected.len()).any(|w| w == expected));
        }
        assert!(!pg.is_ready());
    }

    #[test]
    fn cleartext_password_is_answered_from_the_config() {
        let mut pg = Protocol::new(&Config::parse("user=a password=s3cret").unwrap()).unwrap();
        let n = pg.poll_transmit().len();
        pg.advance_transmit(n);
        pg.handle_input(&message(b'R', &[0, 0, 0, 3]));
        assert!(!pg.poll_startup().unwrap());
        assert_eq!(pg.poll_transmit(), message(b'p', b"s3cret\0"));
    }

    #[test]
    fn plaintext_start_refuses_modes_that_need_tls() {
        let err = Protocol::new(&Config::parse("user=a sslmode=verify-full").unwrap()).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Unsupported);
        assert!(Protocol::new(&Config::parse("user=a sslmode=prefer").unwrap()).is_ok());
    }

    #[test]
    fn simple_query_replies_read_as_text_rows() {
        let mut pg = started("user=a");
        let id = pg.queue_simple_query("SELECT 'x' AS v").unwrap();
        assert_eq!(pg.poll_transmit(), message(b'Q', b"SELECT 'x' AS v\0"));
        let mut field = b"v\0".to_vec();
        field.extend_from_slice(&[
            0, 0, 0, 0, 0, 0, 0, 0, 0, 25, 255, 255, 255, 255, 255, 255, 0, 0,
        ]);
        pg.handle_input(
            &[
                message(b'T', &[&[0, 1][..], &field].concat()),
                message(b'D', &[0, 1, 0, 0, 0, 1, b'x']),
                message(b'C', b"SELECT 1\0"),
                message(b'N', b"SWARNING\0Mcareful\0C01000\0\0"),
                ready(b'I'),
            ]
            .concat(),
        );
        let mut columns: Option<Arc<[SimpleColumn]>> = None;
        let mut seen = Vec::new();
        while let Some(response) = pg.poll_response().unwrap() {
            assert_eq!(response.request, id);
            match response.reply {
                Reply::RowDescription(fields) => {
                    assert!(!fields[0].is_binary());
                    columns = Some(fields.iter().map(Field::to_simple_column).collect());
                }
                Reply::DataRow(row) => {
                    let row = row.into_simple_row(columns.clone().unwrap()).unwrap();
                    seen.push(row.get("v").unwrap().to_string());
                }
                Reply::CommandComplete(tag) => seen.push(tag),
                Reply::ReadyForQuery(status) => assert_eq!(status, TransactionStatus::Idle),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, ["x", "SELECT 1"]);
        assert!(matches!(pg.poll_event(), Some(Event::Notice(n)) if n.message() == "careful"));
        assert!(!pg.has_pending());
    }

    #[test]
    fn prepared_statements_run_with_the_described_column_count() {
        let mut pg = started("user=a");
        pg.queue_prepare("s1", "SELECT $1::int4", &[]).unwrap();
        pg.handle_input(
            &[
                message(b'1', &[]),
                message(b't', &[0, 1, 0, 0, 0, 23]),
                message(b'n', &[]),
                ready(b'I'),
            ]
            .concat(),
        );
        let described = replies(&mut pg);
        assert!(matches!(&described[1], Reply::ParameterDescription(oids) if oids == &[23]));
        let n = pg.poll_transmit().len();
        pg.advance_transmit(n);

        // A wrong parameter count is refused before anything is queued.
        assert!(pg.queue_execute("s1", &[Type::INT4], &[], 0).is_err());
        assert!(pg.poll_transmit().is_empty());
        pg.queue_execute("s1", &[Type::INT4], &[&7i32], 1).unwrap();
        pg.handle_input(
            &[
                message(b'2', &[]),
                message(b'D', &[0, 1, 0, 0, 0, 4, 0, 0, 0, 7]),
                message(b'C', b"SELECT 1\0"),
                ready(b'T'),
            ]
            .concat(),
        );
        let executed = replies(&mut pg);
        let Reply::DataRow(row) = &executed[1] else {
            panic!("expected a row, got {executed:?}");
        };
        assert_eq!(row.get(0).unwrap(), Some(&[0, 0, 0, 7][..]));
        assert!(row.get(1).is_err());
        assert_eq!(pg.transaction_status(), TransactionStatus::InTransaction);
    }

    #[test]
    fn cancel_request_carries_the_backend_key() {
        let pg = started("user=a");
        assert_eq!(pg.backend_pid(), Some(7));
        let cancel = pg.cancel_request().unwrap();
        assert_eq!(
            cancel,
            [0, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 7, 1, 2, 3, 4]
        );
        assert_eq!(ssl_request(), [0, 0, 0, 8, 4, 210, 22, 47]);
    }
}
