//! [`backend_stream`]: a server's byte stream through the whole sans-IO core.
//!
//! The input is a chunking shape, a startup setup, a plan of requests and the server's bytes. The harness
//! runs the startup (any auth method the stream asks for), queues the plan's requests (simple and extended,
//! prepared in two steps, portals suspended, COPY FROM STDIN finished or abandoned, Terminate), one after
//! another or pipelined, and acts on what comes back as the client does: it streams COPY data when a COPY
//! FROM STDIN opens, decodes every DataRow and every binary COPY OUT row, and once the plan is done keeps
//! reading as a client waiting for notifications does.
//!
//! The same driver records the seed corpus against a real server (`record.rs`), so the seeds are real
//! sessions of exactly these plans.
//!
//! Invariants, beyond no panic and no unbounded allocation:
//! - every response belongs to the oldest request still waiting for a ReadyForQuery, counted independently
//!   of the core (one per Sync or simple Query);
//! - a COPY FROM STDIN is handed out only to a request that can stream data, once;
//! - every error from a poll leaves the connection closed, and it stays closed;
//! - everything the core transmits is a sequence of well-formed frontend messages;
//! - the core never asks for more input after the end of the stream (that would be a hang).

use std::collections::VecDeque;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::IsNull;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use postgres_types::Type;

use super::{Input, values, violated};
use crate::config::{ChannelBinding, ProtocolVersion, RequireAuth};
use crate::proto::{
    Backend, BearerToken, ChannelBindingPolicy, Flow, Limits, OAuthParams, Protocol, RequestId,
    Response, StartupParams, check_frontend_messages, message_name,
};
use crate::{Error, Row};

/// The largest backend message the harness accepts: small, so that the cap is within the fuzzer's reach.
pub(crate) const MAX_MESSAGE_SIZE: usize = 1 << 16;
/// The most requests a plan holds.
pub(crate) const MAX_PLAN: usize = 24;
/// The users a setup picks from; the seed server authenticates each with the method in its name.
pub(crate) const USERS: [&str; 4] = ["fuzz_trust", "fuzz_password", "fuzz_md5", "fuzz_scram"];
/// The password the startup offers, and the seed server's users have.
pub(crate) const PASSWORD: &str = "fuzz-pw";
/// What a plan's requests run, by the low four bits of each step.
pub(crate) const QUERIES: [&str; 16] = [
    "SELECT 1",
    "SELECT g, 'row ' || g AS label, NULL::text AS nothing FROM generate_series(1, 3) g",
    "SELECT true, 'x'::\"char\", 2::int2, 4::int4, 8::int8, 26::oid, 1.5::float4, 2.5::float8, 'text'::text, \
     'v'::varchar, 'n'::name, '\\x00ff'::bytea, '2024-02-29'::date, '12:34:56.789'::time, \
     '2024-02-29 12:34:56.789'::timestamp, '2024-02-29 12:34:56.789+02'::timestamptz, \
     '{\"a\": [1, null]}'::json, '{\"a\": [1, null]}'::jsonb, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, \
     '192.168.0.1/24'::inet, '0/16B6C50'::pg_lsn, 1.5::numeric, '1 day'::interval",
    "SELECT ARRAY[1, NULL, 3]::int4[], ARRAY['a', NULL]::text[], ARRAY[[1, 2], [3, 4]]::int8[], \
     '{}'::bool[], ARRAY['\\x01'::bytea], ARRAY['infinity'::timestamp, '-infinity'], \
     ARRAY['10.0.0.1'::inet], ARRAY[1.5::float8]",
    "COPY (SELECT g, 'line ' || g FROM generate_series(1, 5) g) TO STDOUT",
    "COPY (SELECT g, 'line ' || g, '\\x00ff'::bytea FROM generate_series(1, 5) g) TO STDOUT (FORMAT binary)",
    "CREATE TEMP TABLE IF NOT EXISTS fuzz_copy (id int, label text)",
    "COPY fuzz_copy FROM STDIN",
    "LISTEN fuzz_channel; NOTIFY fuzz_channel, 'payload'",
    "SELECT 1/0",
    "DO $$ BEGIN RAISE NOTICE 'notice from the server'; END $$",
    "SET application_name = 'fuzzed'",
    "BEGIN",
    "SELECT id, label FROM fuzz_copy ORDER BY id; COMMIT",
    "",
    "SELECT pg_terminate_backend(pg_backend_pid())",
];

/// Where the server's bytes come from: the fuzzer's input, or (recording seeds) a real server.
pub(crate) trait Server {
    /// Takes what the client sent since the last call; returns the server's next bytes, or `None` once the
    /// server closed the connection. `idle` says no request is waiting for an answer (a recorder then waits
    /// only briefly, for notifications).
    fn exchange(&mut self, sent: &[u8], idle: bool) -> Option<Vec<u8>>;
}

/// Runs a fuzzer's input: one byte of chunking shape, one of setup, a plan, then the server's bytes.
pub fn backend_stream(data: &[u8]) {
    let mut input = Input(data);
    let shape = input.byte();
    let setup = input.byte();
    let plan_len = usize::from(input.byte()) % (MAX_PLAN + 1);
    let plan = input.take(plan_len);
    let stream = input.rest();
    let budget = 16 * (data.len() + 64);
    drive(
        startup_params(setup),
        plan,
        Chunks::new(stream, shape),
        budget,
    );
}

/// Serves the fuzzer's bytes in chunks: `shape & 63` + 1 bytes at a time, everything at once, or varying sizes.
struct Chunks<'a> {
    rest: &'a [u8],
    shape: u8,
    state: u32,
}

impl<'a> Chunks<'a> {
    fn new(rest: &'a [u8], shape: u8) -> Chunks<'a> {
        Chunks {
            rest,
            shape,
            state: u32::from(shape).wrapping_mul(0x9e37_79b9) | 1,
        }
    }
}

impl Server for Chunks<'_> {
    fn exchange(&mut self, _sent: &[u8], _idle: bool) -> Option<Vec<u8>> {
        if self.rest.is_empty() {
            return None;
        }
        let base = usize::from(self.shape & 63) + 1;
        let size = match self.shape >> 6 {
            0 => base,
            1 => self.rest.len(),
            _ => {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 17;
                self.state ^= self.state << 5;
                1 + usize::try_from(self.state).unwrap_or(0) % (2 * base)
            }
        };
        let (chunk, rest) = self.rest.split_at(size.min(self.rest.len()));
        self.rest = rest;
        Some(chunk.to_vec())
    }
}

/// The startup parameters a setup byte describes: user (and so auth method), password, protocol versions,
/// channel binding (with or without TLS underneath) and require_auth.
pub(crate) fn startup_params(setup: u8) -> StartupParams {
    let user = USERS[usize::from(setup & 3)];
    let (mode, require_auth) = match (setup >> 5) & 3 {
        0 => (ChannelBinding::Disable, None),
        1 => (ChannelBinding::Prefer, None),
        2 => (ChannelBinding::Require, None),
        _ => (ChannelBinding::Prefer, Some("md5,scram-sha-256")),
    };
    StartupParams {
        params: vec![
            ("user".into(), user.into()),
            ("database".into(), "postgres".into()),
            ("client_encoding".into(), "UTF8".into()),
        ],
        password: (setup & 4 == 0).then(|| PASSWORD.as_bytes().to_vec()),
        scram_keys: None,
        require_auth: require_auth
            .and_then(|r| RequireAuth::parse(r).ok())
            .unwrap_or_default(),
        channel_binding: ChannelBindingPolicy {
            mode,
            // As if TLS ran underneath, with the hash of a server certificate to bind to.
            tls: (setup & 0x80 != 0).then(|| Ok(vec![0x5a; 32])),
        },
        scram_max_iterations: 4096,
        min_protocol_version: if setup & 16 != 0 {
            ProtocolVersion::V3_2
        } else {
            ProtocolVersion::V3_0
        },
        max_protocol_version: if setup & 8 != 0 {
            ProtocolVersion::V3_2
        } else {
            ProtocolVersion::V3_0
        },
        // A server that offers OAUTHBEARER gets the whole exchange: a token where no password is set,
        // discovery otherwise.
        oauth: OAuthParams {
            token: (setup & 4 != 0)
                .then(|| BearerToken::new("fuzz-token".to_string()).ok())
                .flatten(),
            issuer: Some("https://issuer.example".to_string()),
            hook: true,
            protected: true,
            known_discovery: None,
        },
    }
}

/// Runs a startup and a plan against `server` until the stream ends or the connection fails. `budget` bounds
/// the driver's loop: exceeding it means the core stopped making progress.
pub(crate) fn drive(params: StartupParams, plan: &[u8], server: impl Server, budget: usize) {
    let Ok(protocol) = Protocol::new(
        params,
        Limits {
            max_message_size: MAX_MESSAGE_SIZE,
        },
    ) else {
        return;
    };
    let mut harness = Harness {
        protocol,
        server,
        expected: VecDeque::new(),
        columns: None,
        copy_out: None,
        startup_sent: false,
        eof: false,
        steps: 0,
        budget,
        terminated: false,
    };
    if harness.startup() {
        harness.requests(plan);
    }
}

/// One step of a plan: bits 0-3 pick the SQL, bits 4-6 the kind, bit 7 queues it without waiting for the
/// requests before it to finish.
#[derive(Debug, Clone, Copy)]
struct Step {
    sql: &'static str,
    kind: Kind,
    pipelined: bool,
}

impl Step {
    fn from_byte(b: u8) -> Step {
        let kind = match (b >> 4) & 7 {
            0 => Kind::Simple,
            1 => Kind::SimpleCopy(CopyAction::Finish),
            2 => Kind::SimpleCopy(CopyAction::Abandon),
            3 => Kind::OneShot,
            4 => Kind::Prepare,
            5 => Kind::Suspended,
            6 => Kind::ExtendedCopy,
            _ => Kind::Terminate,
        };
        Step {
            sql: QUERIES[usize::from(b & 15)],
            kind,
            pipelined: b & 0x80 != 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A simple Query; a COPY FROM STDIN in it is refused by the core.
    Simple,
    /// A simple Query whose COPY FROM STDIN the harness serves.
    SimpleCopy(CopyAction),
    /// Parse, Bind (binary results), Describe portal, Execute, Sync.
    OneShot,
    /// Parse and Describe a named statement, Sync; then, once described, Bind and Execute it on its own.
    Prepare,
    /// As OneShot into a named portal, one row at a time: the portal is suspended, and once the request
    /// is done, a second request fetches the next row (as a cursor does; outside a transaction block the
    /// portal is gone by then).
    Suspended,
    /// As OneShot, serving its COPY FROM STDIN.
    ExtendedCopy,
    /// Terminate: nothing may be sent after it.
    Terminate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyAction {
    /// Send rows, then CopyDone.
    Finish,
    /// Send a row, then give up with CopyFail.
    Abandon,
}

/// A request the harness queued, as the harness counts it.
struct Expected {
    id: RequestId,
    ready_left: u32,
    /// What to do with a COPY FROM STDIN, for requests that serve one; `None` once served.
    copy: Option<CopyAction>,
    /// For the first half of a Prepare or a Suspended: what follows, once the columns are described.
    follow_up: Option<FollowUp>,
    /// For the second half: the column types its rows have (no RowDescription comes).
    row_types: Option<Vec<Type>>,
}

/// The second request of a two-step kind, queued when the first ends well.
struct FollowUp {
    kind: FollowUpKind,
    described: Option<Vec<Type>>,
    failed: bool,
}

enum FollowUpKind {
    /// Bind and execute the named statement.
    Execute(String),
    /// Fetch one more row of the named portal.
    Fetch(String),
}

/// The columns of the current result: each type, and whether its values are text.
type Columns = Vec<(Type, bool)>;

/// A COPY TO STDOUT in progress: its format and the data so far.
struct CopyOut {
    binary: bool,
    columns: usize,
    chunks: Vec<Vec<u8>>,
}

struct Harness<S> {
    protocol: Protocol,
    server: S,
    expected: VecDeque<Expected>,
    columns: Option<Columns>,
    copy_out: Option<CopyOut>,
    startup_sent: bool,
    eof: bool,
    steps: usize,
    budget: usize,
    terminated: bool,
}

impl<S: Server> Harness<S> {
    fn tick(&mut self) {
        self.steps += 1;
        if self.steps > self.budget {
            violated(format_args!(
                "no progress after {} steps (the core neither finished nor failed)",
                self.steps
            ));
        }
    }

    /// Sends what is queued and feeds the server's answer (or its end) to the core.
    fn pull(&mut self, idle: bool) {
        if self.eof {
            violated(format_args!(
                "the core asked for more input after the end of the stream"
            ));
        }
        let sent = self.protocol.poll_transmit().to_vec();
        self.protocol.advance_transmit(sent.len());
        self.check_sent(&sent);
        match self.server.exchange(&sent, idle) {
            Some(bytes) => self.protocol.handle_input(&bytes),
            None => {
                self.protocol.handle_eof();
                self.eof = true;
            }
        }
    }

    /// Everything the core sends after the StartupMessage is well-formed frontend messages.
    fn check_sent(&mut self, mut sent: &[u8]) {
        if !self.startup_sent && sent.len() >= 4 {
            let len = u32::from_be_bytes([sent[0], sent[1], sent[2], sent[3]]);
            let len = usize::try_from(len).unwrap_or(usize::MAX).min(sent.len());
            sent = &sent[len..];
            self.startup_sent = true;
        }
        if let Err(e) = check_frontend_messages(sent) {
            violated(format_args!("the core sent malformed messages: {e}"));
        }
    }

    /// A poll failed: the connection must be closed, stay closed, and refuse requests.
    fn check_failed(&mut self, error: &Error) {
        if !error.is_connection_broken() {
            violated(format_args!(
                "a poll failed with an error that leaves the connection usable: {error}"
            ));
        }
        if !self.protocol.is_closed() {
            violated(format_args!(
                "the core failed with \"{error}\" but is not closed"
            ));
        }
        if self.protocol.poll_response().is_ok() {
            violated(format_args!("the core answered a poll after \"{error}\""));
        }
        let queued = self.protocol.queue_request(Flow::Simple, None, |buf| {
            frontend::sync(buf);
            Ok(())
        });
        if queued.is_ok() {
            violated(format_args!("the core took a request after \"{error}\""));
        }
        self.drain_events();
    }

    fn drain_events(&mut self) {
        while self.protocol.poll_event().is_some() {}
    }

    /// Runs the startup; whether it finished.
    fn startup(&mut self) -> bool {
        loop {
            self.tick();
            let ready = self.protocol.poll_startup();
            self.drain_events();
            match ready {
                Ok(true) => return true,
                Ok(false) => self.pull(false),
                Err(e) => {
                    self.check_failed(&e);
                    return false;
                }
            }
        }
    }

    /// Queues the plan's requests and reads their answers, then reads on as an idle client until the end.
    fn requests(&mut self, plan: &[u8]) {
        let mut plan = plan.iter().map(|&b| Step::from_byte(b)).peekable();
        loop {
            self.tick();
            while let Some(step) = plan.peek() {
                if self.terminated || (!self.expected.is_empty() && !step.pipelined) {
                    break;
                }
                let step = *step;
                plan.next();
                if let Err(e) = self.queue(step) {
                    if self.protocol.is_closed() {
                        return;
                    }
                    violated(format_args!("a request was refused: {e}"));
                }
            }
            let response = self.protocol.poll_response();
            self.drain_events();
            match response {
                Ok(Some(response)) => self.on_response(response),
                Ok(None)
                    if self.expected.is_empty() && (self.terminated || plan.peek().is_none()) =>
                {
                    if self.terminated {
                        return;
                    }
                    // Waiting for notifications: only asynchronous messages may arrive.
                    self.pull(true);
                }
                Ok(None) => self.pull(false),
                Err(e) => {
                    self.check_failed(&e);
                    return;
                }
            }
        }
    }

    fn queue(&mut self, step: Step) -> Result<(), Error> {
        let sql = step.sql;
        let encode = |e: std::io::Error| Error::config(e.to_string());
        let query = |buf: &mut BytesMut| frontend::query(sql, buf).map_err(encode);
        // Every kind but Terminate ends with one ReadyForQuery: a simple Query, or one Sync.
        let flow = Flow::Extended(1);
        let (id, copy, follow_up) = match step.kind {
            Kind::Simple => (
                self.protocol.queue_request(Flow::Simple, None, query)?,
                None,
                None,
            ),
            Kind::SimpleCopy(action) => (
                self.protocol.queue_copy(Flow::Simple, query)?,
                Some(action),
                None,
            ),
            Kind::OneShot | Kind::Suspended | Kind::ExtendedCopy => {
                let suspended = step.kind == Kind::Suspended;
                let portal = if suspended {
                    format!("p{}", self.steps)
                } else {
                    String::new()
                };
                let write = |buf: &mut BytesMut| {
                    frontend::parse("", sql, None, buf).map_err(encode)?;
                    bind(&portal, "", buf)?;
                    frontend::describe(b'P', &portal, buf).map_err(encode)?;
                    frontend::execute(&portal, i32::from(suspended), buf).map_err(encode)?;
                    frontend::sync(buf);
                    Ok(())
                };
                if step.kind == Kind::ExtendedCopy {
                    let id = self.protocol.queue_copy(flow, write)?;
                    (id, Some(CopyAction::Finish), None)
                } else {
                    let id = self.protocol.queue_request(flow, None, write)?;
                    let fetch = suspended.then_some(FollowUpKind::Fetch(portal));
                    (id, None, fetch)
                }
            }
            Kind::Prepare => {
                let name = format!("s{}", self.steps);
                let id = self.protocol.queue_request(flow, None, |buf| {
                    frontend::parse(&name, sql, None, buf).map_err(encode)?;
                    frontend::describe(b'S', &name, buf).map_err(encode)?;
                    frontend::sync(buf);
                    Ok(())
                })?;
                (id, None, Some(FollowUpKind::Execute(name)))
            }
            Kind::Terminate => {
                self.protocol.queue_terminate();
                self.terminated = true;
                return Ok(());
            }
        };
        self.expected.push_back(Expected {
            id,
            ready_left: 1,
            copy,
            follow_up: follow_up.map(|kind| FollowUp {
                kind,
                described: None,
                failed: false,
            }),
            row_types: None,
        });
        Ok(())
    }

    /// The second half of a two-step kind, whose rows come without a RowDescription: executes the
    /// described statement, or fetches the next row of the portal.
    fn follow_up(&mut self, kind: &FollowUpKind, types: Vec<Type>) {
        let flow = Flow::Extended(1);
        let encode = |e: std::io::Error| Error::config(e.to_string());
        let queued = self.protocol.queue_request(flow, Some(types.len()), |buf| {
            match kind {
                FollowUpKind::Execute(name) => {
                    bind("", name, buf)?;
                    frontend::execute("", 0, buf).map_err(encode)?;
                }
                FollowUpKind::Fetch(portal) => frontend::execute(portal, 1, buf).map_err(encode)?,
            }
            frontend::sync(buf);
            Ok(())
        });
        match queued {
            Ok(id) => self.expected.push_back(Expected {
                id,
                ready_left: 1,
                copy: None,
                follow_up: None,
                row_types: Some(types),
            }),
            Err(_) if self.protocol.is_closed() || self.terminated => {}
            Err(e) => violated(format_args!("the second half of a two-step request: {e}")),
        }
    }

    fn on_response(&mut self, response: Response) {
        let Some(front) = self.expected.front_mut() else {
            violated(format_args!(
                "a response to request {} with no request pending",
                response.request
            ));
        };
        if response.request != front.id {
            violated(format_args!(
                "a response to request {} while request {} is the oldest waiting",
                response.request, front.id
            ));
        }
        let id = front.id;
        match response.message {
            Backend::Ready => {
                self.columns = None;
                self.copy_out = None;
                front.ready_left = front.ready_left.saturating_sub(1);
                if front.ready_left == 0
                    && let Some(done) = self.expected.pop_front()
                    && let Some(follow_up) = done.follow_up
                    && !follow_up.failed
                    && let Some(types) = follow_up.described
                {
                    self.follow_up(&follow_up.kind, types);
                }
            }
            Backend::Error(_) => {
                self.columns = None;
                self.copy_out = None;
                if let Some(follow_up) = &mut front.follow_up {
                    follow_up.failed = true;
                }
            }
            Backend::Row(raw) => {
                let columns = match (&self.columns, &front.row_types) {
                    (Some(columns), _) => columns.clone(),
                    (None, Some(types)) => types.iter().map(|ty| (ty.clone(), false)).collect(),
                    (None, None) => {
                        violated(format_args!("a DataRow the core let through undescribed"))
                    }
                };
                if raw.len() != columns.len() {
                    violated(format_args!(
                        "a DataRow of {} fields for {} columns",
                        raw.len(),
                        columns.len()
                    ));
                }
                for (i, (ty, text)) in columns.iter().enumerate() {
                    let field = raw.field(i);
                    match (text, field) {
                        (true, Some(text)) => values::decode_text(ty, text, &|_: &Row| {}),
                        (_, field) => values::decode_binary(ty, field, &|_: &Row| {}),
                    }
                }
            }
            Backend::CopyData(data) => match &mut self.copy_out {
                Some(copy) => copy.chunks.push(data.to_vec()),
                None => violated(format_args!("CopyData outside a COPY TO STDOUT")),
            },
            // Handed only to a COPY request: the server streams as in COPY TO STDOUT, and our half ends at
            // once with CopyDone, as a replication stream that stops does.
            Backend::CopyBoth => {
                self.copy_out = Some(CopyOut {
                    binary: false,
                    columns: 0,
                    chunks: Vec::new(),
                });
                if let Err(e) = self.protocol.queue_copy_done(id) {
                    violated(format_args!("CopyDone refused right after CopyBoth: {e}"));
                }
            }
            Backend::Message(message) => self.on_message(id, message),
        }
    }

    fn on_message(&mut self, id: RequestId, message: Message) {
        match message {
            Message::RowDescription(body) => {
                let mut columns = Vec::new();
                let mut fields = body.fields();
                while let Ok(Some(field)) = fields.next() {
                    let ty = Type::from_oid(field.type_oid()).unwrap_or(Type::BYTEA);
                    columns.push((ty, field.format() == 0));
                }
                if let Some(follow_up) = self.front_follow_up() {
                    follow_up.described = Some(columns.iter().map(|(ty, _)| ty.clone()).collect());
                }
                self.columns = Some(columns);
            }
            Message::NoData => {
                if let Some(follow_up) = self.front_follow_up() {
                    follow_up.described = Some(Vec::new());
                }
                self.columns = Some(Vec::new());
            }
            Message::CommandComplete(_)
            | Message::EmptyQueryResponse
            | Message::PortalSuspended => {
                self.columns = None;
            }
            Message::CopyInResponse(_) => {
                let action = self.expected.front_mut().and_then(|e| e.copy.take());
                let Some(action) = action else {
                    violated(format_args!(
                        "a COPY FROM STDIN handed out to request {id}, which cannot serve it"
                    ));
                };
                self.serve_copy_in(id, action);
            }
            Message::CopyOutResponse(body) => {
                let mut columns = 0usize;
                let mut formats = body.column_formats();
                while let Ok(Some(_)) = formats.next() {
                    columns += 1;
                }
                self.copy_out = Some(CopyOut {
                    binary: body.format() == 1,
                    columns,
                    chunks: Vec::new(),
                });
            }
            Message::CopyDone => match self.copy_out.take() {
                Some(copy) if copy.binary => {
                    // The binary COPY reader's view: columns typed as the caller would declare them.
                    let types: Vec<Type> = [Type::INT4, Type::TEXT, Type::BYTEA]
                        .into_iter()
                        .cycle()
                        .take(copy.columns)
                        .collect();
                    values::decode_copy(
                        &types,
                        copy.chunks.iter().map(Vec::as_slice),
                        &|_: &Row| {},
                    );
                }
                Some(_) => {}
                None => violated(format_args!("CopyDone outside a COPY TO STDOUT")),
            },
            Message::ParseComplete
            | Message::BindComplete
            | Message::CloseComplete
            | Message::ParameterDescription(_) => {}
            other => violated(format_args!(
                "the core handed out {} as an answer",
                message_name(&other)
            )),
        }
    }

    fn front_follow_up(&mut self) -> Option<&mut FollowUp> {
        self.expected.front_mut()?.follow_up.as_mut()
    }

    /// Streams a COPY FROM STDIN as the client's COPY writer does, then finishes or abandons it.
    fn serve_copy_in(&mut self, id: RequestId, action: CopyAction) {
        let result = match action {
            CopyAction::Finish => self
                .protocol
                .queue_copy_data(id, b"1\tone\n2\ttwo\n")
                .and_then(|()| self.protocol.queue_copy_data(id, b"3\tthree\n"))
                .and_then(|()| self.protocol.queue_copy_done(id)),
            CopyAction::Abandon => {
                let sent = self.protocol.queue_copy_data(id, b"4\tfour\n");
                self.protocol
                    .abandon_copy_in(id, "the fuzz harness gave up");
                sent
            }
        };
        // Refused only once the connection is over (for example, the stream ended right after the
        // CopyInResponse).
        if let Err(e) = result
            && !self.protocol.is_closed()
        {
            violated(format_args!("serving a COPY FROM STDIN: {e}"));
        }
    }
}

/// Binds the unnamed portal to `statement` without parameters, asking for every result column in binary.
fn bind(portal: &str, statement: &str, buf: &mut BytesMut) -> Result<(), Error> {
    frontend::bind(
        portal,
        statement,
        std::iter::empty::<i16>(),
        std::iter::empty::<()>(),
        |(), _| Ok(IsNull::No),
        Some(1),
        buf,
    )
    .map_err(|_| Error::config("cannot encode Bind"))
}
