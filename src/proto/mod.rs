//! The sans-IO protocol core: no sockets, no async, no clock.
//!
//! Bytes from the server go in through [`Protocol::handle_input`]; bytes for the server come out of
//! [`Protocol::poll_transmit`] (confirmed with [`Protocol::advance_transmit`]); messages come out of
//! [`Protocol::poll_startup`] during startup and [`Protocol::poll_response`] afterwards, and asynchronous
//! events (notices, notifications, parameter changes) out of [`Protocol::poll_event`]. The async client and
//! the fuzzers drive this same type.
//!
//! Requests are registered when they are queued, before any await, with the number of ReadyForQuery messages
//! that end them. Responses are tagged with the request they belong to, so a caller whose future was dropped
//! leaves behind a request whose responses the next caller can recognise and discard.
//!
//! Longer than 800 lines on purpose: [`Protocol`] and the one machine of its Ready phase (the queue of pending
//! requests and every transition of a response) read as one; startup, framing, wire encoding, rows and values
//! have their own files.

mod data_row;
mod frame;
mod oauth;
pub(crate) mod operation;
pub(crate) mod pgoutput;
pub(crate) mod replication;
pub(crate) mod row;
mod scram_keys;
#[cfg(any(test, fuzzing))]
pub(crate) mod scripted;
mod startup;
pub(crate) mod statement;
#[cfg(test)]
mod tests;
pub(crate) mod text_values;
mod value;
mod wire;

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use crate::config::ProtocolVersion;
use crate::{DbError, Error, ErrorKind};

pub(crate) use data_row::view_fields;
use data_row::{Lender, check_field_count};
pub(crate) use data_row::{RawRow, RowView};
use frame::Frame;
#[cfg(any(fuzzing, test))]
pub(crate) use oauth::OAuthParams;
pub(crate) use oauth::{BearerToken, OAuthDiscovery, issuer_identifier as oauth_issuer_identifier};
#[cfg(any(fuzzing, test))]
pub(crate) use startup::ChannelBindingPolicy;
use startup::{Startup, Step};
pub(crate) use startup::{
    StartupParameters, StartupParams, limits, startup_parameters, startup_params,
};
pub(crate) use value::{check_counts, may_hold_counts};
#[cfg(any(fuzzing, test))]
pub(crate) use wire::check_frontend_messages;
pub(crate) use wire::{cancel_request, check_parameter_count, encode_error, write_bind_portal};

/// Identifies a queued request; responses carry the id of the request they answer.
pub(crate) type RequestId = u64;

/// The transaction status reported by the last ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransactionStatus {
    /// Not in a transaction block.
    Idle,
    /// In a transaction block.
    InTransaction,
    /// In a failed transaction block: queries are rejected until the block ends.
    Failed,
}

impl TransactionStatus {
    fn from_byte(status: u8) -> Result<TransactionStatus, Error> {
        match status {
            b'I' => Ok(TransactionStatus::Idle),
            b'T' => Ok(TransactionStatus::InTransaction),
            b'E' => Ok(TransactionStatus::Failed),
            other => Err(Error::protocol(format!(
                "invalid transaction status 0x{other:02x} in ReadyForQuery"
            ))),
        }
    }
}

/// Events that are not answers to a request.
#[derive(Debug)]
pub(crate) enum Event {
    /// A NoticeResponse (warnings, notices).
    Notice(Box<DbError>),
    /// A NotificationResponse from LISTEN/NOTIFY.
    Notification(Notification),
    /// A run-time parameter changed (ParameterStatus).
    ParameterStatus(String, String),
}

/// A notification delivered by `NOTIFY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    process_id: i32,
    channel: String,
    payload: String,
}

impl Notification {
    /// The process id of the backend that sent the notification.
    pub fn process_id(&self) -> i32 {
        self.process_id
    }

    /// The channel it was sent on.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The payload (empty if none was given).
    pub fn payload(&self) -> &str {
        &self.payload
    }
}

/// The key a cancel request needs, from BackendKeyData.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct BackendKey {
    pub(crate) process_id: i32,
    /// 4 bytes in protocol 3.0, 4 to 256 in protocol 3.2.
    pub(crate) secret_key: Box<[u8]>,
}

impl std::fmt::Debug for BackendKey {
    /// Leaves the secret out: anyone holding it can cancel the session's queries.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendKey")
            .field("process_id", &self.process_id)
            .field(
                "secret_key",
                &format_args!("<{} bytes>", self.secret_key.len()),
            )
            .finish()
    }
}

/// A backend message that answers a request.
pub(crate) enum Backend {
    /// A DataRow, checked against the column count of its result.
    Row(RawRow),
    /// ReadyForQuery: the request's Sync (or simple Query) is done; the status is in
    /// [`Protocol::transaction_status`].
    Ready,
    /// An ErrorResponse (not FATAL: those end the connection at once); ReadyForQuery follows.
    Error(Box<DbError>),
    /// The data of a CopyData message of the request's COPY TO STDOUT or CopyBoth stream.
    CopyData(Bytes),
    /// CopyBothResponse: the request (`START_REPLICATION`) switched the connection to CopyBoth mode; its
    /// caller may now send CopyData and CopyDone while the server streams.
    CopyBoth,
    /// Any other message: RowDescription, CommandComplete, ParseComplete, ...
    Message(Message),
}

/// A response and the request it answers.
pub(crate) struct Response {
    pub(crate) request: RequestId,
    pub(crate) message: Backend,
}

/// Which sub-protocol a request uses; it decides how a request is ended when it cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// One simple Query message: one ReadyForQuery ends it.
    Simple,
    /// Extended-protocol messages with this many Syncs, each answered by one ReadyForQuery.
    Extended(u32),
}

/// A request waiting for its ReadyForQuery messages.
struct Pending {
    id: RequestId,
    flow: Flow,
    /// ReadyForQuery messages still expected (one per Sync or simple Query).
    ready_left: u32,
    /// The column count of rows from an Execute whose statement was described earlier.
    row_columns: Option<usize>,
    /// What a CopyInResponse to this request gets.
    copy_in: CopyInPolicy,
}

/// What the core does with a CopyInResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyInPolicy {
    /// Answer it with CopyFail at once: nobody is there to stream data (a query call, a caller that was
    /// dropped, or a second COPY in one request).
    Refuse,
    /// Hand it out: the caller streams the data ([`Protocol::queue_copy`]). A CopyBothResponse is handed out
    /// to such a request too; to any other it breaks the connection.
    Accept,
}

/// Where a COPY stands. CopyInResponse and CopyOutResponse open one; until it closes, only COPY messages (and
/// the server's error) may arrive, and [`Protocol::copy_transition`] rejects anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyState {
    /// No COPY in progress: the request's ordinary messages flow.
    Idle,
    /// COPY FROM STDIN: the server waits for CopyData from this request's caller, and sends nothing but an
    /// error until the caller queues CopyDone or CopyFail.
    In(RequestId),
    /// COPY TO STDOUT: the server sends CopyData to this request until CopyDone.
    Out(RequestId),
    /// CopyBoth (replication): both sides send CopyData. The server's CopyDone leaves the client's half open
    /// ([`BothServerDone`](CopyState::BothServerDone)), the client's leaves the server's
    /// ([`BothClientDone`](CopyState::BothClientDone)).
    Both(RequestId),
    /// CopyBoth after the client's CopyDone: the server streams until its own CopyDone.
    BothClientDone(RequestId),
    /// CopyBoth after the server's CopyDone (the end of a timeline in physical replication): the client may
    /// still send until its CopyDone. A walsender may still send keepalives meanwhile: they go to the request.
    BothServerDone(RequestId),
    /// CopyBoth after both CopyDones, until the request's next message. PostgreSQL's logical walsenders (15
    /// among them) may still send a keepalive or the rest of a transaction they were writing after their
    /// CopyDone: such CopyData goes to the request, whose reader discards it; anything else ends the COPY.
    BothEnded(RequestId),
}

/// Where the connection is.
enum Phase {
    Startup(Box<Startup>),
    Ready,
    /// Terminate was queued; nothing more may be sent.
    Closed,
    /// The connection is unusable; the kind and message of the error that broke it.
    Failed(ErrorKind, String),
}

/// Protocol limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The largest backend message accepted, in bytes.
    pub(crate) max_message_size: usize,
}

/// The sans-IO connection state machine.
pub(crate) struct Protocol {
    phase: Phase,
    inbound: BytesMut,
    outbound: BytesMut,
    limits: Limits,
    events: VecDeque<Event>,
    pending: VecDeque<Pending>,
    next_request: RequestId,
    /// Column count of the current result, from RowDescription (or NoData) in this response.
    result_columns: Option<usize>,
    copy: CopyState,
    parameters: Vec<(String, String)>,
    backend_key: Option<BackendKey>,
    /// The version asked for, until the server negotiates it down.
    protocol_version: ProtocolVersion,
    transaction_status: TransactionStatus,
    eof: bool,
    /// The DataRows lent to a row stream ([`lend_data_row`](Self::lend_data_row)), still at the front of
    /// `inbound`: taken off before anything else reads it.
    lender: Lender,
    /// What the server answered to OAuth discovery, kept after the startup failed for the driver to reconnect
    /// with a token.
    oauth_discovery: Option<OAuthDiscovery>,
}

impl Protocol {
    /// Starts a connection: the StartupMessage is queued for transmission.
    pub(crate) fn new(params: StartupParams, limits: Limits) -> Result<Protocol, Error> {
        let mut outbound = BytesMut::new();
        let protocol_version = params.max_protocol_version;
        let startup = Startup::begin(params, &mut outbound)?;
        Ok(Protocol {
            phase: Phase::Startup(Box::new(startup)),
            inbound: BytesMut::new(),
            outbound,
            limits,
            events: VecDeque::new(),
            pending: VecDeque::new(),
            next_request: 1,
            result_columns: None,
            copy: CopyState::Idle,
            parameters: Vec::new(),
            backend_key: None,
            protocol_version,
            transaction_status: TransactionStatus::Idle,
            eof: false,
            lender: Lender::default(),
            oauth_discovery: None,
        })
    }

    /// What the server answered to OAuth discovery, after the startup failed that way: the driver may then
    /// obtain a token and connect once more.
    #[cfg_attr(
        not(any(feature = "tokio", target_os = "wasi")),
        allow(dead_code, reason = "only the async client reconnects with a token")
    )]
    pub(crate) fn take_oauth_discovery(&mut self) -> Option<OAuthDiscovery> {
        self.oauth_discovery.take()
    }

    /// Feeds bytes received from the server. They are parsed lazily by the `poll_*` calls, so a caller that
    /// stops polling stops the buffer from growing beyond what it read.
    pub(crate) fn handle_input(&mut self, bytes: &[u8]) {
        self.release_lent();
        self.inbound.extend_from_slice(bytes);
    }

    /// Records that the server closed the connection.
    pub(crate) fn handle_eof(&mut self) {
        self.eof = true;
    }

    /// Bytes waiting to be sent.
    pub(crate) fn poll_transmit(&self) -> &[u8] {
        &self.outbound
    }

    /// Confirms that the first `n` bytes of [`poll_transmit`](Self::poll_transmit) were sent.
    pub(crate) fn advance_transmit(&mut self, n: usize) {
        let _ = self.outbound.split_to(n.min(self.outbound.len()));
    }

    /// The next asynchronous event, if any.
    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether startup finished.
    pub(crate) fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Ready)
    }

    /// Whether the connection can no longer be used.
    pub(crate) fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed | Phase::Failed(..)) || (self.eof && self.all_read())
    }

    /// Records an error that broke the connection (a transport failure, or a message the client layer found
    /// malformed or out of place): nothing more can be sent or trusted.
    pub(crate) fn mark_broken(&mut self, error: &Error) {
        self.release_lent();
        // The first cause is kept: errors that only repeat it (`still_broken`) must not wrap it again.
        if error.is_connection_broken() && !matches!(self.phase, Phase::Closed | Phase::Failed(..))
        {
            self.phase = Phase::Failed(error.kind(), error.to_string());
        }
    }

    /// The run-time parameters the server reported (server_version, TimeZone, ...).
    pub(crate) fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The cancel key from BackendKeyData.
    pub(crate) fn backend_key(&self) -> Option<&BackendKey> {
        self.backend_key.as_ref()
    }

    /// The protocol version in use: the one requested (`max_protocol_version`), or the older one the server
    /// negotiated down to.
    #[allow(
        dead_code,
        reason = "for query cancellation and a public accessor on Client, which come later"
    )]
    pub(crate) fn protocol_version(&self) -> ProtocolVersion {
        self.protocol_version
    }

    /// The status byte of the last ReadyForQuery.
    pub(crate) fn transaction_status(&self) -> TransactionStatus {
        self.transaction_status
    }

    /// Whether requests are still waiting for their ReadyForQuery.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether request `id` still waits for a ReadyForQuery. Requests finish in queue order, so those from the
    /// oldest pending one up to the newest queued are all pending.
    pub(crate) fn is_pending(&self, id: RequestId) -> bool {
        self.pending
            .front()
            .is_some_and(|front| front.id <= id && id < self.next_request)
    }

    /// The newest request still waiting for its ReadyForQuery.
    pub(crate) fn last_pending(&self) -> Option<RequestId> {
        self.pending.back().map(|pending| pending.id)
    }

    /// The request the server is working on: the oldest still waiting for its ReadyForQuery.
    pub(crate) fn front_request(&self) -> Option<RequestId> {
        self.pending.front().map(|pending| pending.id)
    }

    fn check_usable(&self) -> Result<(), Error> {
        match &self.phase {
            Phase::Failed(kind, why) => Err(Error::still_broken(*kind, why)),
            Phase::Closed => Err(Error::closed()),
            _ if self.eof && self.all_read() => Err(Error::closed()),
            _ => Ok(()),
        }
    }

    /// Whether every byte received was read (lent rows count as read).
    fn all_read(&self) -> bool {
        self.inbound.len() == self.lender.read()
    }

    /// Takes the lent rows, if any, off the inbound buffer: their borrower is done with them.
    fn release_lent(&mut self) {
        self.lender.release(&mut self.inbound);
    }

    fn fail(&mut self, error: Error) -> Error {
        self.release_lent();
        if error.is_connection_broken() {
            self.phase = Phase::Failed(error.kind(), error.to_string());
        }
        error
    }

    /// Advances the startup. Returns `Ok(true)` once the first ReadyForQuery arrived, `Ok(false)` when more input
    /// is needed.
    pub(crate) fn poll_startup(&mut self) -> Result<bool, Error> {
        loop {
            let Phase::Startup(startup) = &mut self.phase else {
                self.check_usable()?;
                return Ok(true);
            };
            let frame = match frame::next_frame(
                &mut self.inbound,
                self.limits.max_message_size,
                self.protocol_version,
            ) {
                Ok(Some(frame)) => frame,
                Ok(None) if self.eof => {
                    return Err(self.fail(Error::io(std::io::ErrorKind::UnexpectedEof.into())));
                }
                Ok(None) => return Ok(false),
                Err(e) => return Err(self.fail(e)),
            };
            let mark = self.outbound.len();
            let step = startup.handle(frame, &mut self.outbound).and_then(|step| {
                wire::check_frontend_messages(&self.outbound[mark..])?;
                Ok(step)
            });
            match step {
                Ok(Step::Continue) => {}
                Ok(Step::Negotiated(version)) => self.protocol_version = version,
                Ok(Step::Parameter(name, value)) => self.set_parameter(name, value),
                Ok(Step::BackendKey(key)) => self.backend_key = Some(key),
                Ok(Step::Notice(notice)) => self.events.push_back(Event::Notice(notice)),
                Ok(Step::Ready(status)) => {
                    self.transaction_status =
                        TransactionStatus::from_byte(status).map_err(|e| self.fail(e))?;
                    self.phase = Phase::Ready;
                    return Ok(true);
                }
                Err(e) => {
                    self.oauth_discovery = startup.take_discovered();
                    // Nothing of a refused step may reach the server (a password above all).
                    self.outbound.truncate(mark);
                    let e = e.broken();
                    return Err(self.fail(e));
                }
            }
        }
    }

    fn set_parameter(&mut self, name: String, value: String) {
        match self.parameters.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.parameters.push((name, value)),
        }
    }

    /// Queues a request. `write` appends its messages to the outbound buffer; if it fails, or writes a message
    /// longer than the server accepts, whatever it wrote is removed again, so a half-encoded or oversized
    /// message never reaches the server and the connection stays usable. `flow` says how many ReadyForQuery
    /// messages end the request. `row_columns` is the column count of rows an Execute of a previously described
    /// statement returns.
    pub(crate) fn queue_request(
        &mut self,
        flow: Flow,
        row_columns: Option<usize>,
        write: impl FnOnce(&mut BytesMut) -> Result<(), Error>,
    ) -> Result<RequestId, Error> {
        self.queue(flow, row_columns, CopyInPolicy::Refuse, write)
    }

    /// Queues a request like [`queue_request`](Self::queue_request) whose caller streams the data of a COPY
    /// FROM STDIN: its first CopyInResponse is handed out instead of refused, and the caller then queues the
    /// data with [`queue_copy_data`](Self::queue_copy_data) and ends it with
    /// [`queue_copy_done`](Self::queue_copy_done) or [`abandon_copy_in`](Self::abandon_copy_in).
    pub(crate) fn queue_copy(
        &mut self,
        flow: Flow,
        write: impl FnOnce(&mut BytesMut) -> Result<(), Error>,
    ) -> Result<RequestId, Error> {
        self.queue(flow, None, CopyInPolicy::Accept, write)
    }

    fn queue(
        &mut self,
        flow: Flow,
        row_columns: Option<usize>,
        copy_in: CopyInPolicy,
        write: impl FnOnce(&mut BytesMut) -> Result<(), Error>,
    ) -> Result<RequestId, Error> {
        self.check_usable()?;
        if !self.is_ready() {
            return Err(Error::protocol(
                "BUG: request queued before startup finished",
            ));
        }
        let mark = self.outbound.len();
        let written = write(&mut self.outbound)
            .and_then(|()| wire::check_frontend_messages(&self.outbound[mark..]));
        if let Err(e) = written {
            self.outbound.truncate(mark);
            return Err(e);
        }
        // Bookkeeping happens here, synchronously with queuing, never after an await.
        let id = self.next_request;
        self.next_request += 1;
        let ready_left = match flow {
            Flow::Simple => 1,
            Flow::Extended(syncs) => syncs,
        };
        self.pending.push_back(Pending {
            id,
            flow,
            ready_left,
            row_columns,
            copy_in,
        });
        Ok(id)
    }

    /// Queues one CopyData message with `data` for the COPY FROM STDIN of request `id`. Nothing is queued if
    /// the message would exceed what the server accepts.
    pub(crate) fn queue_copy_data(&mut self, id: RequestId, data: &[u8]) -> Result<(), Error> {
        self.check_copying_in(id)?;
        let mark = self.outbound.len();
        let written = frontend::CopyData::new(data)
            .map(|message| message.write(&mut self.outbound))
            .map_err(|e| Error::config(format!("cannot encode CopyData: {e}")))
            .and_then(|()| wire::check_frontend_messages(&self.outbound[mark..]));
        if written.is_err() {
            self.outbound.truncate(mark);
        }
        written
    }

    /// Queues CopyDone for the COPY FROM STDIN of request `id`: the data is complete. CommandComplete (or the
    /// server's error) and ReadyForQuery follow.
    pub(crate) fn queue_copy_done(&mut self, id: RequestId) -> Result<(), Error> {
        self.check_copying_in(id)?;
        frontend::copy_done(&mut self.outbound);
        // In CopyBoth the server may still stream until its own CopyDone.
        let next = match self.copy {
            CopyState::Both(_) => CopyState::BothClientDone(id),
            CopyState::BothServerDone(_) => CopyState::BothEnded(id),
            _ => CopyState::Idle,
        };
        self.copy_transition(next, Some(id));
        Ok(())
    }

    /// Ends the COPY FROM STDIN of request `id` with CopyFail carrying `reason`, or, if its CopyInResponse has
    /// not arrived yet, makes sure it is refused when it does. Does nothing if the COPY already ended. The
    /// server answers with an error (SQLSTATE 57014) and ReadyForQuery, which the caller or the next request
    /// reads; nothing of the COPY is applied. Synchronous, so a drop can call it.
    pub(crate) fn abandon_copy_in(&mut self, id: RequestId, reason: &str) {
        if let Some(pending) = self.pending.iter_mut().find(|p| p.id == id) {
            pending.copy_in = CopyInPolicy::Refuse;
        }
        if self.check_usable().is_err() {
            return;
        }
        if self.copy == CopyState::Both(id) || self.copy == CopyState::BothServerDone(id) {
            // A replication stream is ended with CopyDone (walsenders do not take CopyFail); what the server
            // still sends is read and discarded like any abandoned request's answers.
            frontend::copy_done(&mut self.outbound);
            let next = if self.copy == CopyState::Both(id) {
                CopyState::BothClientDone(id)
            } else {
                CopyState::BothEnded(id)
            };
            self.copy_transition(next, Some(id));
            return;
        }
        if self.copy != CopyState::In(id) {
            return;
        }
        // A NUL would cut the reason short on the wire; the server only shows it in its error message.
        let reason = reason.replace('\0', " ");
        let mark = self.outbound.len();
        let written = frontend::copy_fail(&reason, &mut self.outbound)
            .map_err(|e| Error::config(format!("cannot encode CopyFail: {e}")))
            .and_then(|()| wire::check_frontend_messages(&self.outbound[mark..]));
        if written.is_err() {
            self.outbound.truncate(mark);
            frontend::copy_fail("COPY abandoned by the client", &mut self.outbound)
                .expect("BUG: a constant CopyFail cannot fail to encode");
        }
        self.copy_transition(CopyState::Idle, Some(id));
    }

    fn check_copying_in(&self, id: RequestId) -> Result<(), Error> {
        self.check_usable()?;
        if self.copy != CopyState::In(id)
            && self.copy != CopyState::Both(id)
            && self.copy != CopyState::BothServerDone(id)
        {
            return Err(Error::protocol(format!(
                "BUG: COPY data queued for request {id}, which is not in COPY FROM STDIN or CopyBoth"
            )));
        }
        Ok(())
    }

    /// The one place the COPY state changes. Leaving COPY FROM STDIN from our side (`ended_by` is the request
    /// that queued CopyDone or CopyFail) or because the server reported an error queues a Sync in the extended
    /// protocol: the server ignored the request's own Sync while it was in COPY mode, and after an error it
    /// discards messages until the next one.
    fn copy_transition(&mut self, next: CopyState, ended_by: Option<RequestId>) {
        let extended = matches!(
            self.pending.front().map(|p| p.flow),
            Some(Flow::Extended(_))
        );
        match (self.copy, next) {
            (CopyState::In(_), CopyState::Idle) if extended => frontend::sync(&mut self.outbound),
            (
                CopyState::In(_)
                | CopyState::Out(_)
                | CopyState::Both(_)
                | CopyState::BothClientDone(_)
                | CopyState::BothServerDone(_)
                | CopyState::BothEnded(_),
                CopyState::Idle,
            )
            | (CopyState::Idle, CopyState::In(_) | CopyState::Out(_) | CopyState::Both(_))
            | (CopyState::Both(_), CopyState::BothServerDone(_) | CopyState::BothClientDone(_))
            | (
                CopyState::BothClientDone(_) | CopyState::BothServerDone(_),
                CopyState::BothEnded(_),
            ) => {}
            (from, to) => {
                // Callers check the state first; reaching this is a broken invariant of the core itself.
                unreachable!("BUG: COPY state {from:?} -> {to:?} (ended by {ended_by:?})")
            }
        }
        self.copy = next;
    }

    /// Queues Terminate; nothing can be sent after it.
    pub(crate) fn queue_terminate(&mut self) {
        if matches!(self.phase, Phase::Ready | Phase::Startup(_)) {
            frontend::terminate(&mut self.outbound);
            self.phase = Phase::Closed;
        }
    }

    /// The next response, or `None` if more input is needed.
    pub(crate) fn poll_response(&mut self) -> Result<Option<Response>, Error> {
        self.release_lent();
        loop {
            if let Phase::Failed(kind, why) = &self.phase {
                return Err(Error::still_broken(*kind, why));
            }
            let frame = match frame::next_frame(
                &mut self.inbound,
                self.limits.max_message_size,
                self.protocol_version,
            ) {
                Ok(Some(frame)) => frame,
                Ok(None) if self.eof => {
                    return Err(self.fail(Error::io(std::io::ErrorKind::UnexpectedEof.into())));
                }
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.fail(e)),
            };
            match self.route(frame) {
                Ok(Some(response)) => return Ok(Some(response)),
                Ok(None) => {}
                Err(e) => return Err(self.fail(e.broken())),
            }
        }
    }

    /// Sorts one message: asynchronous ones become events, the rest answer the oldest pending request.
    fn route(&mut self, frame: Frame) -> Result<Option<Response>, Error> {
        let message = match frame {
            Frame::Message(message) => message,
            Frame::NegotiateProtocolVersion(_) => {
                return Err(Error::protocol(
                    "unexpected NegotiateProtocolVersion after startup",
                ));
            }
            Frame::BackendKeyData(_) => {
                return Err(Error::protocol("unexpected BackendKeyData after startup"));
            }
            Frame::DataRow(row) => return self.route_data_row(row).map(Some),
            Frame::CopyData(data) => {
                let request = self.check_copy_data()?;
                return Ok(Some(Response {
                    request,
                    message: Backend::CopyData(data),
                }));
            }
            Frame::CopyBothResponse => return self.enter_copy_both().map(Some),
        };
        match message {
            Message::NoticeResponse(body) => {
                self.events
                    .push_back(Event::Notice(Box::new(DbError::parse(&mut body.fields())?)));
                return Ok(None);
            }
            Message::NotificationResponse(body) => {
                let notification = Notification {
                    process_id: body.process_id(),
                    channel: body.channel().map_err(Error::malformed)?.to_string(),
                    payload: body.message().map_err(Error::malformed)?.to_string(),
                };
                self.events.push_back(Event::Notification(notification));
                return Ok(None);
            }
            Message::ParameterStatus(body) => {
                let name = body.name().map_err(Error::malformed)?.to_string();
                let value = body.value().map_err(Error::malformed)?.to_string();
                self.set_parameter(name.clone(), value.clone());
                self.events.push_back(Event::ParameterStatus(name, value));
                return Ok(None);
            }
            Message::ErrorResponse(ref body) => {
                let db = DbError::parse(&mut body.fields())?;
                // FATAL (for example pg_terminate_backend) or an error outside any request: the server is closing
                // the connection, so the error ends it now instead of surfacing later as an unexpected EOF.
                if self.pending.is_empty() || matches!(db.severity(), "FATAL" | "PANIC") {
                    return Err(Error::db(db).broken());
                }
                let request = self.pending.front().map_or(0, |p| p.id);
                self.result_columns = None;
                // The server ended the COPY (a bad row, a cancel): it discards our data from here on.
                if self.copy != CopyState::Idle {
                    self.copy_transition(CopyState::Idle, None);
                }
                return Ok(Some(Response {
                    request,
                    message: Backend::Error(Box::new(db)),
                }));
            }
            _ => {}
        }
        // Past both CopyDones of a CopyBoth, the request's next message (not another CopyDone) ends the COPY.
        // So does a CommandComplete without the server's CopyDone: PostgreSQL's walsender (15 among others)
        // answers a second START_REPLICATION on one connection with CopyBothResponse and CommandComplete.
        let ends_copy_both = match self.copy {
            CopyState::BothEnded(_) => !matches!(message, Message::CopyDone),
            CopyState::Both(_) | CopyState::BothClientDone(_) | CopyState::BothServerDone(_) => {
                matches!(message, Message::CommandComplete(_))
            }
            _ => false,
        };
        if ends_copy_both {
            self.copy_transition(CopyState::Idle, None);
        }
        let pipelined_behind = self.pending.len() > 1;
        let Some(pending) = self.pending.front_mut() else {
            return Err(Error::protocol(format!(
                "unexpected {} with no request in flight",
                message_name(&message)
            )));
        };
        let request = pending.id;
        check_copy_message(self.copy, &message)?;
        let backend = match message {
            Message::CopyInResponse(body) => {
                check_copy_formats(body.format(), body.column_formats())?;
                if pipelined_behind {
                    // Requests pipelined behind this one are on their way already: the server reads them as
                    // COPY data, fails the COPY and skips to a Sync that is not the one we would count. Nothing
                    // keeps the connection in step after that.
                    return Err(Error::protocol(
                        "COPY FROM STDIN was started by a request with other requests pipelined behind it \
                         (run COPY through copy_in, which has the connection alone)",
                    ));
                }
                if pending.copy_in == CopyInPolicy::Accept {
                    // One COPY per request: a second one in the same simple Query is refused.
                    pending.copy_in = CopyInPolicy::Refuse;
                    self.copy_transition(CopyState::In(request), None);
                    return Ok(Some(Response {
                        request,
                        message: Backend::Message(Message::CopyInResponse(body)),
                    }));
                }
                // Nobody streams data for this request. Answer in the core, so a request whose caller was dropped
                // is refused too: otherwise the server would take the next request as COPY data.
                frontend::copy_fail(
                    "COPY FROM STDIN is not supported by this call",
                    &mut self.outbound,
                )
                .map_err(|e| Error::protocol(format!("BUG: cannot encode CopyFail: {e}")))?;
                // In the extended protocol the server ignored our Sync while in COPY mode and now discards
                // messages until the next one.
                if let Flow::Extended(_) = pending.flow {
                    frontend::sync(&mut self.outbound);
                }
                return Ok(None);
            }
            Message::CopyOutResponse(body) => {
                check_copy_formats(body.format(), body.column_formats())?;
                self.copy_transition(CopyState::Out(request), None);
                Backend::Message(Message::CopyOutResponse(body))
            }
            Message::CopyDone => {
                let next = match self.copy {
                    // The server is done; the client's half stays open until it sends CopyDone.
                    CopyState::Both(id) => CopyState::BothServerDone(id),
                    CopyState::BothClientDone(id) => CopyState::BothEnded(id),
                    _ => CopyState::Idle,
                };
                self.copy_transition(next, None);
                Backend::Message(Message::CopyDone)
            }
            Message::ReadyForQuery(body) => {
                self.transaction_status = TransactionStatus::from_byte(body.status())?;
                self.result_columns = None;
                pending.ready_left = pending.ready_left.saturating_sub(1);
                if pending.ready_left == 0 {
                    self.pending.pop_front();
                }
                Backend::Ready
            }
            Message::RowDescription(body) => {
                let mut count = 0usize;
                let mut fields = body.fields();
                while fields.next().map_err(Error::malformed)?.is_some() {
                    count += 1;
                }
                self.result_columns = Some(count);
                Backend::Message(Message::RowDescription(body))
            }
            Message::NoData => {
                self.result_columns = Some(0);
                Backend::Message(Message::NoData)
            }
            message @ (Message::CommandComplete(_)
            | Message::EmptyQueryResponse
            | Message::PortalSuspended) => {
                self.result_columns = None;
                Backend::Message(message)
            }
            message @ (Message::ParseComplete
            | Message::BindComplete
            | Message::CloseComplete
            | Message::ParameterDescription(_)
            | Message::CopyData(_)) => Backend::Message(message),
            other => {
                return Err(Error::protocol(format!(
                    "unexpected {} in a query response",
                    message_name(&other)
                )));
            }
        };
        Ok(Some(Response {
            request,
            message: backend,
        }))
    }

    /// Routes a DataRow: it answers the oldest request, outside any COPY, with as many fields as its result
    /// has columns. Apart from `route`, as rows are most of what arrives.
    fn route_data_row(&mut self, row: RawRow) -> Result<Response, Error> {
        let request = self.check_data_row(row.len())?;
        Ok(Response {
            request,
            message: Backend::Row(row),
        })
    }

    /// Checks that a DataRow may arrive now, and returns the request it answers.
    fn check_data_row(&self, fields: usize) -> Result<RequestId, Error> {
        let Some(pending) = self.pending.front() else {
            return Err(Error::protocol(
                "unexpected DataRow with no request in flight",
            ));
        };
        if let Some(during) = copy_phase(self.copy) {
            return Err(Error::protocol(format!("unexpected DataRow {during}")));
        }
        let expected = self.result_columns.or(pending.row_columns).ok_or_else(|| {
            Error::protocol("DataRow without a RowDescription describing its columns")
        })?;
        check_field_count(fields, expected)?;
        Ok(pending.id)
    }

    /// A CopyBothResponse: hands CopyBoth mode to the oldest request if it asked for a COPY
    /// ([`queue_copy`](Self::queue_copy)) and nothing is pipelined behind it; otherwise the connection cannot
    /// go on (the server would read what we send next as stream data), so it is an error that breaks it.
    fn enter_copy_both(&mut self) -> Result<Response, Error> {
        if let Some(during) = copy_phase(self.copy) {
            return Err(Error::protocol(format!(
                "unexpected CopyBothResponse {during}"
            )));
        }
        let behind = self.pending.len() > 1;
        let Some(pending) = self.pending.front_mut() else {
            return Err(Error::protocol(
                "unexpected CopyBothResponse with no request in flight",
            ));
        };
        if behind {
            // The server would read the requests behind as stream messages: nothing keeps it in step.
            return Err(Error::protocol(
                "the server entered CopyBoth mode (START_REPLICATION) for a request with other requests \
                 pipelined behind it (run it through start_logical_replication or start_physical_replication)",
            ));
        }
        let accept = pending.copy_in == CopyInPolicy::Accept;
        pending.copy_in = CopyInPolicy::Refuse;
        let request = pending.id;
        self.copy_transition(CopyState::Both(request), None);
        if !accept {
            // Nobody streams for this request (a plain query, or a stream whose caller went away before the
            // answer came): end our half at once, as a stream that stops does; the rest is read and discarded.
            frontend::copy_done(&mut self.outbound);
            self.copy_transition(CopyState::BothClientDone(request), Some(request));
        }
        Ok(Response {
            request,
            message: Backend::CopyBoth,
        })
    }

    /// Checks that a CopyData may arrive now: during the COPY TO STDOUT or CopyBoth stream of the oldest
    /// request. Returns that request.
    fn check_copy_data(&self) -> Result<RequestId, Error> {
        match (self.copy, self.pending.front()) {
            (
                CopyState::Out(request)
                | CopyState::Both(request)
                | CopyState::BothClientDone(request)
                | CopyState::BothServerDone(request)
                | CopyState::BothEnded(request),
                Some(pending),
            ) if pending.id == request => Ok(request),
            (
                CopyState::Out(_)
                | CopyState::Both(_)
                | CopyState::BothClientDone(_)
                | CopyState::BothServerDone(_)
                | CopyState::BothEnded(_),
                _,
            ) => Err(Error::protocol(
                "BUG: a COPY TO STDOUT of a request that is not the oldest",
            )),
            (_, None) => Err(Error::protocol(
                "unexpected CopyData with no request in flight",
            )),
            (CopyState::Idle, Some(_)) => {
                Err(Error::protocol("unexpected CopyData outside a COPY"))
            }
            (CopyState::In(_), Some(_)) => Err(Error::protocol(
                "unexpected CopyData during COPY FROM STDIN",
            )),
        }
    }

    /// The data of the next message if it is a CopyData of request `id`'s COPY TO STDOUT buffered whole: the
    /// fast path of COPY readers, as [`poll_data_row`](Self::poll_data_row) is of row streams. `Ok(None)`
    /// whenever something else comes next; the caller then goes the general way.
    pub(crate) fn poll_copy_data(&mut self, id: RequestId) -> Result<Option<Bytes>, Error> {
        self.release_lent();
        let ours = matches!(self.phase, Phase::Ready)
            && matches!(
                self.copy,
                CopyState::Out(c)
                    | CopyState::Both(c)
                    | CopyState::BothClientDone(c)
                    | CopyState::BothServerDone(c)
                    | CopyState::BothEnded(c)
                    if c == id
            )
            && self.inbound.first() == Some(&b'd')
            && self.pending.front().is_some_and(|p| p.id == id);
        if !ours {
            return Ok(None);
        }
        match frame::complete_frame_len(&self.inbound, self.limits.max_message_size) {
            Ok(Some(total)) => Ok(Some(frame::split_copy_data(&mut self.inbound, total))),
            Ok(None) => Ok(None),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// The next response if it is a DataRow of request `id` buffered whole: the fast path of row streams,
    /// which skips the general dispatch of [`poll_response`](Self::poll_response) for the message that makes
    /// up most of a result. `Ok(None)` whenever something else comes next (another message, an incomplete
    /// frame, the answer to an older request, a COPY); the caller then goes the general way, so nothing is
    /// routed differently.
    pub(crate) fn poll_data_row(&mut self, id: RequestId) -> Result<Option<RawRow>, Error> {
        let Some((total, expected)) = self.data_row_frame(id)? else {
            return Ok(None);
        };
        let row = RawRow::split_from(&mut self.inbound, total).and_then(|row| {
            check_field_count(row.len(), expected)?;
            Ok(row)
        });
        row.map(Some).map_err(|e| self.fail(e.broken()))
    }

    /// Like [`poll_data_row`](Self::poll_data_row), but the row stays in the inbound buffer, lent until the
    /// next call on the protocol core: the row, when a row of request `id` is there (and until then
    /// [`lent_row`](Self::lent_row) gives it again). No copy and no allocation: the fast path of lending row streams. Rows
    /// lent one after another are taken off the buffer together, when something else reads it. `None` also
    /// for a row that is not well-formed: the general way ([`poll_response`](Self::poll_response)) reports it.
    pub(crate) fn lend_data_row(&mut self, id: RequestId) -> Option<RowView<'_>> {
        let expected = match self.lender.lending(id) {
            Some(expected) => expected,
            None => {
                self.release_lent();
                self.row_fields(id)?
            }
        };
        if !self
            .lender
            .lend(&self.inbound, self.limits.max_message_size, id, expected)
        {
            return None;
        }
        self.lent_row()
    }

    /// Like [`poll_copy_data`](Self::poll_copy_data) during a COPY TO STDOUT, but the data stays in the
    /// inbound buffer, lent until the next call on the protocol core (as [`lend_data_row`](Self::lend_data_row)
    /// lends rows): the payload of the next CopyData of request `id`, if it is there whole.
    pub(crate) fn lend_copy_data(&mut self, id: RequestId) -> Option<&[u8]> {
        // A row lent before this call is done with; what was read stays until another kind of read.
        if !self.lender.lending_copy(id)
            && (!matches!(self.phase, Phase::Ready)
                || self.copy != CopyState::Out(id)
                || self.pending.front().is_none_or(|p| p.id != id))
        {
            return None;
        }
        let payload =
            self.lender
                .lend_copy_data(&self.inbound, self.limits.max_message_size, id)?;
        Some(&self.inbound[payload])
    }

    /// The row [`lend_data_row`](Self::lend_data_row) lent, until the next call that takes `&mut self`.
    pub(crate) fn lent_row(&self) -> Option<RowView<'_>> {
        self.lender.view(&self.inbound)
    }

    /// The number of fields of request `id`'s rows, if a DataRow may come now and answer it (the oldest
    /// request, outside a COPY, its rows described).
    fn row_fields(&self, id: RequestId) -> Option<usize> {
        if !matches!(self.phase, Phase::Ready) || self.copy != CopyState::Idle {
            return None;
        }
        self.pending
            .front()
            .filter(|p| p.id == id)
            .and_then(|p| self.result_columns.or(p.row_columns))
    }

    /// The length of the DataRow of request `id` at the front of the inbound buffer and the number of fields
    /// its RowDescription promised, if the row is there whole and nothing else comes first (lent rows are
    /// taken off first). A row nothing described goes the general way, which refuses it.
    fn data_row_frame(&mut self, id: RequestId) -> Result<Option<(usize, usize)>, Error> {
        self.release_lent();
        let Some(expected) = self.row_fields(id) else {
            return Ok(None);
        };
        if self.inbound.first() != Some(&b'D') {
            return Ok(None);
        }
        match frame::complete_frame_len(&self.inbound, self.limits.max_message_size) {
            Ok(total) => Ok(total.map(|total| (total, expected))),
            Err(e) => Err(self.fail(e)),
        }
    }
}

/// Where a COPY stands, for the error about a message that may not arrive there; `None` outside a COPY.
fn copy_phase(copy: CopyState) -> Option<&'static str> {
    match copy {
        CopyState::Idle => None,
        CopyState::In(_) => Some("during COPY FROM STDIN"),
        CopyState::Out(_) => Some("during COPY TO STDOUT"),
        CopyState::Both(_) | CopyState::BothClientDone(_) | CopyState::BothServerDone(_) => {
            Some("during CopyBoth")
        }
        // Past both CopyDones the request's ordinary messages may come.
        CopyState::BothEnded(_) => None,
    }
}

/// Checks that `message` may arrive in COPY state `copy` (asynchronous messages, ErrorResponse and CopyData,
/// see [`Protocol::check_copy_data`], are sorted out before): during COPY FROM STDIN the server sends nothing
/// else, during COPY TO STDOUT only CopyData and CopyDone, and outside a COPY neither of those.
fn check_copy_message(copy: CopyState, message: &Message) -> Result<(), Error> {
    let during = match (copy, message) {
        (CopyState::Idle, Message::CopyDone) => "outside a COPY",
        (CopyState::BothEnded(_) | CopyState::BothServerDone(_), Message::CopyDone) => {
            "after the server's CopyDone"
        }
        (CopyState::Idle | CopyState::BothEnded(_), _)
        | (
            CopyState::Out(_) | CopyState::Both(_) | CopyState::BothClientDone(_),
            Message::CopyDone,
        ) => {
            return Ok(());
        }
        (
            CopyState::Both(_) | CopyState::BothClientDone(_) | CopyState::BothServerDone(_),
            Message::CommandComplete(_),
        ) => {
            return Ok(());
        }
        (CopyState::In(_), _) => "during COPY FROM STDIN",
        (CopyState::Out(_), _) => "during COPY TO STDOUT",
        (CopyState::Both(_) | CopyState::BothClientDone(_) | CopyState::BothServerDone(_), _) => {
            "during CopyBoth"
        }
    };
    Err(Error::protocol(format!(
        "unexpected {} {during}",
        message_name(message)
    )))
}

/// Checks the formats of a CopyInResponse or CopyOutResponse: 0 (text) or 1 (binary) overall and per column,
/// and every column textual when the whole COPY is.
fn check_copy_formats(
    format: u8,
    mut columns: postgres_protocol::message::backend::ColumnFormats<'_>,
) -> Result<(), Error> {
    if format > 1 {
        return Err(Error::protocol(format!("invalid COPY format {format}")));
    }
    while let Some(column) = columns.next().map_err(Error::malformed)? {
        if column > 1 || (format == 0 && column != 0) {
            return Err(Error::protocol(format!(
                "invalid COPY column format {column} in a COPY of format {format}"
            )));
        }
    }
    Ok(())
}

/// The protocol name of a backend message, for error messages.
pub(crate) fn message_name(message: &Message) -> &'static str {
    match message {
        Message::AuthenticationCleartextPassword => "AuthenticationCleartextPassword",
        Message::AuthenticationGss => "AuthenticationGSS",
        Message::AuthenticationKerberosV5 => "AuthenticationKerberosV5",
        Message::AuthenticationMd5Password(_) => "AuthenticationMD5Password",
        Message::AuthenticationOk => "AuthenticationOk",
        Message::AuthenticationScmCredential => "AuthenticationSCMCredential",
        Message::AuthenticationSspi => "AuthenticationSSPI",
        Message::AuthenticationGssContinue(_) => "AuthenticationGSSContinue",
        Message::AuthenticationSasl(_) => "AuthenticationSASL",
        Message::AuthenticationSaslContinue(_) => "AuthenticationSASLContinue",
        Message::AuthenticationSaslFinal(_) => "AuthenticationSASLFinal",
        Message::BackendKeyData(_) => "BackendKeyData",
        Message::BindComplete => "BindComplete",
        Message::CloseComplete => "CloseComplete",
        Message::CommandComplete(_) => "CommandComplete",
        Message::CopyData(_) => "CopyData",
        Message::CopyDone => "CopyDone",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::DataRow(_) => "DataRow",
        Message::EmptyQueryResponse => "EmptyQueryResponse",
        Message::ErrorResponse(_) => "ErrorResponse",
        Message::NoData => "NoData",
        Message::NoticeResponse(_) => "NoticeResponse",
        Message::NotificationResponse(_) => "NotificationResponse",
        Message::ParameterDescription(_) => "ParameterDescription",
        Message::ParameterStatus(_) => "ParameterStatus",
        Message::ParseComplete => "ParseComplete",
        Message::PortalSuspended => "PortalSuspended",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::RowDescription(_) => "RowDescription",
        _ => "an unknown message",
    }
}
