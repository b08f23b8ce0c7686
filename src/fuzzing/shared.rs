//! [`shared`]: the routing of a connection that many futures share (`slots.rs`), under a hostile server.
//!
//! Longer than 800 lines on purpose: the script's decoder, the shadow protocol and the invariants are one
//! harness, and each check refers to the state the others keep.
//!
//! The input is a script: requests queued (with a slot, or without one as housekeeping requests are), bytes
//! from the server (raw pieces, well-formed messages, whole answers) and how they are cut into reads, futures
//! polled and dropped, the request the server works on timing out, a future adopting the newest request of
//! dropped ones, an exclusive operation draining them, the end of the stream. Each poll does what the client
//! does (`ClientState::poll_answer`, then `Connection::poll_next` with the socket read replaced by the
//! script's reads), on the real [`Slots`] over the real [`Protocol`].
//!
//! Whatever the server sends, the protocol decides which request each answer belongs to. A second
//! [`Protocol`], fed the same bytes and requests, is polled once for each answer the first one produced, so
//! the harness knows each answer's request and content without reaching into either. Invariants, beyond no
//! panic and no unbounded allocation:
//! - a future receives only answers the protocol tagged with its request, each once and in order: the ones
//!   routed to its slot, and the ones handed to it while it read;
//! - nothing is routed to a request whose future went away, nor to one that timed out, whose future gets the
//!   timeout instead, once;
//! - a future that waits is woken when an answer is routed to it or the connection breaks, and no slot wakes
//!   a future that went away;
//! - the fast path for rows agrees with the general one;
//! - every error breaks the connection, and it stays broken: no answer, no request, after it;
//! - no error says `BUG:`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Wake, Waker};
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::backend::{MAX_MESSAGE_SIZE, startup_params};
use super::{Input, message, violated};
use crate::Error;
use crate::conn::slots::{IoWaker, Routed, Slots};
use crate::proto::scripted::{cstr, data_row, text_columns};
use crate::proto::{
    Backend, Flow, Limits, Protocol, RequestId, check_frontend_messages, message_name,
};

/// The query timeout the script's timeouts report.
const LIMIT: Duration = Duration::from_secs(1);

/// Runs a fuzzer's input: a script of one-byte steps, the low four bits the kind and the high four a
/// parameter, some followed by bytes of their own (see [`Step`]).
pub fn shared(data: &[u8]) {
    run(data);
}

/// Runs a script; returns how often each routing path was taken.
pub(crate) fn run(data: &[u8]) -> Stats {
    let mut input = Input(data);
    let Some(mut world) = World::new() else {
        return Stats::default();
    };
    while !input.0.is_empty() {
        let step = input.byte();
        world.step(step & 15, step >> 4, &mut input);
        world.settle();
    }
    world.finish();
    world.stats
}

/// How often each routing path was taken, so the tests can tell that the seeds reach them.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Stats {
    /// Answers handed to the future that read them.
    pub(crate) handed: usize,
    /// Answers routed to another future's slot.
    pub(crate) routed: usize,
    /// Answers taken from a slot.
    pub(crate) taken: usize,
    /// Answers of requests without a live future, discarded.
    pub(crate) discarded: usize,
    /// Answers of a timed-out request, discarded.
    pub(crate) discarded_expired: usize,
    /// Timeouts delivered.
    pub(crate) timeouts: usize,
    /// Futures that got their last answer.
    pub(crate) completed: usize,
    pub(crate) adoptions: usize,
    /// Drains that read out every request.
    pub(crate) drains: usize,
    /// Futures failed by a broken connection.
    pub(crate) failed: usize,
}

/// The kinds of step, by the low four bits of a script byte.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Queue a request with a slot: parameter bits 0-1 the flow (simple, simple, one Sync, two Syncs), bit 2
    /// a request without a slot before it (as the client queues housekeeping requests).
    Queue,
    /// The server sends one well-formed message of the parameter's kind ([`vocabulary`]).
    Message,
    /// The server sends raw bytes: a piece whose length is the next input byte.
    Raw,
    /// The server answers a request in full: a row description, as many rows as the parameter says, a
    /// command tag and ReadyForQuery (or an error and ReadyForQuery, for parameters 13 to 15).
    Answer,
    /// The reads: up to 8 × parameter + 1 of the bytes the server sent reach the protocol (all of them for
    /// 15); the io waker wakes the driver.
    Read,
    /// Poll the future picked by the parameter, among those not done.
    Poll,
    /// Drop the future picked by the parameter.
    Drop,
    /// The request the server works on times out.
    Timeout,
    /// With no live future: a new one adopts the newest request of dropped ones (`before_request`), or, for
    /// odd parameters, an exclusive operation drains them (`drain_abandoned`) as far as the bytes read go.
    Exclusive,
    /// The server closes the connection.
    Eof,
}

impl Step {
    fn of(kind: u8) -> Step {
        match kind {
            0 | 1 => Step::Queue,
            2 => Step::Message,
            3 => Step::Raw,
            4 => Step::Answer,
            5 | 6 => Step::Read,
            7..=10 => Step::Poll,
            11 => Step::Drop,
            12 => Step::Timeout,
            13 => Step::Exclusive,
            14 => Step::Eof,
            _ => Step::Read,
        }
    }
}

/// An answer as the harness compares it: its kind and content.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Print {
    Row(Vec<Option<Vec<u8>>>),
    Ready,
    Error(String, String),
    CopyData(Vec<u8>),
    Message(&'static str, String),
    Timeout,
}

impl Print {
    fn of(message: &Backend) -> Print {
        match message {
            Backend::Row(row) => Print::Row(
                (0..row.len())
                    .map(|i| row.field(i).map(<[u8]>::to_vec))
                    .collect(),
            ),
            Backend::Ready => Print::Ready,
            Backend::Error(db) => Print::Error(db.code().to_string(), db.message().to_string()),
            Backend::CopyData(data) => Print::CopyData(data.to_vec()),
            Backend::CopyBoth => Print::Message("CopyBothResponse", String::new()),
            Backend::Message(message) => {
                let detail = match message {
                    Message::CommandComplete(body) => body.tag().unwrap_or("?").to_string(),
                    _ => String::new(),
                };
                Print::Message(message_name(message), detail)
            }
        }
    }
}

/// A waker that counts its wakes.
#[derive(Default)]
struct WakeCount(AtomicUsize);

impl Wake for WakeCount {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A future waiting for the answers of one request.
struct Owner {
    wakes: Arc<WakeCount>,
    waker: Waker,
    wakes_seen: usize,
    /// Its last poll returned `Pending`, and nothing woke it since.
    waiting: bool,
    /// An answer was routed to it (or the connection broke) while it waited: it must have been woken.
    owed_wake: bool,
    /// What must be in its slot, oldest first.
    slot: VecDeque<Print>,
    /// It got its last answer, the timeout or an error: the future returns, and drops its request.
    done: bool,
}

impl Owner {
    fn new() -> Owner {
        let wakes = Arc::new(WakeCount::default());
        Owner {
            waker: Waker::from(wakes.clone()),
            wakes,
            wakes_seen: 0,
            waiting: false,
            owed_wake: false,
            slot: VecDeque::new(),
            done: false,
        }
    }
}

struct World {
    protocol: Protocol,
    /// Fed the same bytes and requests, polled once for each answer `protocol` produced: whose it is.
    shadow: Protocol,
    slots: Slots,
    io: Arc<IoWaker>,
    /// Bytes the server sent that were not read yet.
    wire: VecDeque<u8>,
    /// The futures of requests, by request.
    owners: BTreeMap<RequestId, Owner>,
    /// The wakers of futures that went away.
    gone: Vec<Waker>,
    expired: Option<RequestId>,
    driver: Option<RequestId>,
    broken: bool,
    /// Numbers the server's messages, so that each is unique.
    serial: u32,
    stats: Stats,
}

impl World {
    /// Two protocols past a trust startup; `None` if the startup fails (it must not).
    fn new() -> Option<World> {
        let ready = || {
            let mut protocol = Protocol::new(
                startup_params(0),
                Limits {
                    max_message_size: MAX_MESSAGE_SIZE,
                },
            )
            .ok()?;
            let startup = protocol.poll_transmit().len();
            protocol.advance_transmit(startup);
            protocol
                .handle_input(&[message(b'R', &0u32.to_be_bytes()), message(b'Z', b"I")].concat());
            match protocol.poll_startup() {
                Ok(true) => Some(protocol),
                other => violated(format_args!(
                    "the harness's trust startup did not finish: {:?}",
                    other.err()
                )),
            }
        };
        Some(World {
            protocol: ready()?,
            shadow: ready()?,
            slots: Slots::default(),
            io: Arc::new(IoWaker::default()),
            wire: VecDeque::new(),
            owners: BTreeMap::new(),
            gone: Vec::new(),
            expired: None,
            driver: None,
            broken: false,
            serial: 0,
            stats: Stats::default(),
        })
    }

    fn step(&mut self, kind: u8, parameter: u8, input: &mut Input<'_>) {
        match Step::of(kind) {
            Step::Queue => self.queue(parameter),
            Step::Message => {
                self.serial += 1;
                let bytes = vocabulary(parameter, self.serial);
                self.wire.extend(bytes);
            }
            Step::Raw => self.wire.extend(input.piece()),
            Step::Answer => {
                self.serial += 1;
                let bytes = answer(parameter, self.serial);
                self.wire.extend(bytes);
            }
            Step::Read => {
                let n = match parameter {
                    15 => usize::MAX,
                    n => 8 * usize::from(n) + 1,
                };
                self.read(n);
            }
            Step::Poll => {
                if let Some(id) = self.pick(parameter, |owner| !owner.done) {
                    self.poll(id);
                }
            }
            Step::Drop => {
                if let Some(id) = self.pick(parameter, |_| true) {
                    self.drop_future(id);
                }
            }
            Step::Timeout => self.time_out(),
            Step::Exclusive if self.owners.is_empty() => {
                if parameter & 1 == 0 {
                    self.adopt();
                } else {
                    self.drain();
                }
            }
            Step::Exclusive => {}
            Step::Eof => {
                self.protocol.handle_eof();
                self.shadow.handle_eof();
            }
        }
    }

    fn pick(&self, parameter: u8, which: impl Fn(&Owner) -> bool) -> Option<RequestId> {
        let ids: Vec<RequestId> = self
            .owners
            .iter()
            .filter(|(_, owner)| which(owner))
            .map(|(&id, _)| id)
            .collect();
        (!ids.is_empty()).then(|| ids[usize::from(parameter) % ids.len()])
    }

    /// Queues a request on both protocols, as `Client::start` does (its slot in the same step).
    fn queue(&mut self, parameter: u8) {
        if parameter & 4 != 0 {
            self.queue_one(Flow::Simple, false);
        }
        let flow = match parameter & 3 {
            0 | 1 => Flow::Simple,
            2 => Flow::Extended(1),
            _ => Flow::Extended(2),
        };
        self.queue_one(flow, true);
    }

    fn queue_one(&mut self, flow: Flow, with_slot: bool) {
        let write = |buf: &mut BytesMut| -> Result<(), Error> {
            match flow {
                Flow::Simple => frontend::query("SELECT 1", buf)
                    .map_err(|e| Error::protocol(format!("encoding: {e}")))?,
                Flow::Extended(syncs) => (0..syncs).for_each(|_| frontend::sync(buf)),
            }
            Ok(())
        };
        let queued = self.protocol.queue_request(flow, None, write);
        let shadowed = self.shadow.queue_request(flow, None, write);
        match (queued, shadowed) {
            (Ok(id), Ok(shadow_id)) if id == shadow_id => {
                if self.broken {
                    violated(format_args!(
                        "request {id} was queued on a broken connection"
                    ));
                }
                if with_slot {
                    self.slots.open(id);
                    self.owners.insert(id, Owner::new());
                }
            }
            (Err(_), Err(_)) if self.protocol.is_closed() => {}
            (queued, shadowed) => violated(format_args!(
                "queuing on a {} connection: {:?} and, on the same input, {:?}",
                if self.protocol.is_closed() {
                    "closed"
                } else {
                    "working"
                },
                queued.map_err(|e| e.to_string()),
                shadowed.map_err(|e| e.to_string()),
            )),
        }
        self.check_transmit();
    }

    /// Both protocols send the same well-formed bytes.
    fn check_transmit(&mut self) {
        let sent = self.protocol.poll_transmit().to_vec();
        if sent != self.shadow.poll_transmit() {
            violated(format_args!(
                "two protocols fed the same input send different bytes"
            ));
        }
        if let Err(e) = check_frontend_messages(&sent) {
            violated(format_args!("the core sends malformed messages: {e}"));
        }
        self.protocol.advance_transmit(sent.len());
        self.shadow.advance_transmit(sent.len());
    }

    /// Up to `n` of the server's bytes reach both protocols; the transport wakes the io waker.
    fn read(&mut self, n: usize) {
        let n = n.min(self.wire.len());
        if n == 0 {
            return;
        }
        let bytes: Vec<u8> = self.wire.drain(..n).collect();
        self.protocol.handle_input(&bytes);
        self.shadow.handle_input(&bytes);
        Waker::from(self.io.clone()).wake_by_ref();
    }

    /// One poll of `id`'s future, as `Client::poll_answer`: an answer steps back from the socket.
    fn poll(&mut self, id: RequestId) {
        if self.poll_answer(id) {
            self.step_back(id);
        }
        self.drain_events();
        self.check_transmit();
    }

    /// `ClientState::poll_answer`, then `Connection::poll_next` up to the socket read; whether it got an
    /// answer.
    fn poll_answer(&mut self, id: RequestId) -> bool {
        if self.take(id) {
            return true;
        }
        if self.expired.is_none() {
            // Streams of even requests read as `next_ref` does, lending rows where they are; the others take
            // them as `next` does. Both must hand out what the general dispatch (the shadow) would.
            if id.is_multiple_of(2) {
                if let Some(view) = self.protocol.lend_data_row(id) {
                    let print = Print::Row(
                        (0..view.len())
                            .map(|i| view.field(i).map(<[u8]>::to_vec))
                            .collect(),
                    );
                    self.handed_print(id, print);
                    return true;
                }
            } else {
                match self.protocol.poll_data_row(id) {
                    Ok(Some(row)) => {
                        self.handed(id, &Backend::Row(row));
                        return true;
                    }
                    Ok(None) => {}
                    Err(e) => return self.broke(Some(id), e),
                }
            }
        }
        let waker = self.owner(id).waker.clone();
        self.slots.register(id, &waker);
        self.driver = Some(id);
        self.io.set_driver(&waker);
        loop {
            if self.take(id) {
                return true;
            }
            if let Some(expired) = self.expired
                && !self.protocol.is_pending(expired)
            {
                self.expired = None;
                if expired == id {
                    self.stats.timeouts += 1;
                    self.owner(id).done = true;
                    return true;
                }
                self.slots
                    .route(expired, Err(Error::timeout("the query", LIMIT)), true);
                self.routed(expired, Print::Timeout);
                continue;
            }
            let routed = self
                .slots
                .route_next(&mut self.protocol, Some(id), self.expired);
            match routed {
                Ok(Routed::Answer(message)) => {
                    self.handed(id, &message);
                    return true;
                }
                Ok(Routed::Elsewhere) => self.elsewhere(Some(id)),
                Ok(Routed::Nothing) => {
                    self.shadow_nothing();
                    if !self.protocol.is_pending(id) && self.expired.is_none() {
                        violated(format_args!(
                            "request {id} waits, but it finished and nothing of it is left to read"
                        ));
                    }
                    self.owner(id).waiting = true;
                    return false;
                }
                Err(e) => return self.broke(Some(id), e),
            }
        }
    }

    fn owner(&mut self, id: RequestId) -> &mut Owner {
        self.owners
            .get_mut(&id)
            .unwrap_or_else(|| violated(format_args!("BUG in the harness: no future for {id}")))
    }

    /// The shadow's next answer: the one the protocol just produced, and whose it is.
    fn shadow_next(&mut self) -> (RequestId, Print) {
        match self.shadow.poll_response() {
            Ok(Some(response)) => (response.request, Print::of(&response.message)),
            other => violated(format_args!(
                "the protocol produced an answer where, on the same input, it gives {:?}",
                other.map(|_| ()).map_err(|e| e.to_string())
            )),
        }
    }

    /// The protocol had no answer whole: it read every asynchronous message before the incomplete one, and so
    /// does the shadow, to stay in step.
    fn shadow_nothing(&mut self) {
        match self.shadow.poll_response() {
            Ok(None) => {}
            other => violated(format_args!(
                "the protocol had no answer where, on the same input, it gives {:?}",
                other
                    .map(|r| r.map(|r| (r.request, Print::of(&r.message))))
                    .map_err(|e| e.to_string())
            )),
        }
    }

    /// Takes from `id`'s slot: exactly what was routed there, in order.
    fn take(&mut self, id: RequestId) -> bool {
        let taken = self.slots.take(id);
        let pending = self.protocol.is_pending(id);
        let owner = self.owner(id);
        let expected = owner.slot.pop_front();
        let got = match taken {
            None if expected.is_none() => return false,
            None => violated(format_args!(
                "request {id}'s slot lost {expected:?} (and {} more)",
                owner.slot.len()
            )),
            Some(Ok(message)) => Print::of(&message),
            Some(Err(e)) if e.kind() == crate::ErrorKind::Timeout && !e.is_connection_broken() => {
                Print::Timeout
            }
            Some(Err(e)) => violated(format_args!("request {id}'s slot held the error {e}")),
        };
        if expected.as_ref() != Some(&got) {
            violated(format_args!(
                "request {id} took {got:?} from its slot, where {expected:?} was routed"
            ));
        }
        let timeout = got == Print::Timeout;
        let last = got == Print::Ready && !pending && owner.slot.is_empty();
        owner.waiting = false;
        owner.done |= last || timeout;
        self.stats.taken += 1;
        self.stats.timeouts += usize::from(timeout);
        self.stats.completed += usize::from(last);
        true
    }

    /// The caller `id` was handed `message`: the protocol's next answer, and `id`'s.
    fn handed(&mut self, id: RequestId, message: &Backend) {
        self.handed_print(id, Print::of(message));
    }

    /// [`handed`](Self::handed), with the answer as the harness compares it.
    fn handed_print(&mut self, id: RequestId, got: Print) {
        let (whose, print) = self.shadow_next();
        if whose != id || got != print {
            violated(format_args!(
                "request {id} was handed {got:?}; the protocol tagged {print:?} with {whose}"
            ));
        }
        if self.expired == Some(id) {
            violated(format_args!(
                "request {id} was handed an answer after it timed out"
            ));
        }
        let pending = self.protocol.is_pending(id);
        let owner = self.owner(id);
        if !owner.slot.is_empty() {
            violated(format_args!(
                "request {id} was handed an answer before {} older ones in its slot",
                owner.slot.len()
            ));
        }
        owner.waiting = false;
        let last = got == Print::Ready && !pending;
        owner.done |= last;
        self.stats.handed += 1;
        self.stats.completed += usize::from(last);
    }

    /// `route_next` put the protocol's next answer elsewhere: into its request's slot, or nowhere.
    fn elsewhere(&mut self, caller: Option<RequestId>) {
        let (whose, print) = self.shadow_next();
        if self.expired == Some(whose) {
            self.stats.discarded_expired += 1;
            return;
        }
        if caller == Some(whose) {
            violated(format_args!(
                "an answer to the caller {whose} went elsewhere: {print:?}"
            ));
        }
        self.routed(whose, print);
    }

    /// What `Slots::route` must have done: into the slot of a live future (waking it), or nowhere.
    fn routed(&mut self, id: RequestId, print: Print) {
        match self.owners.get_mut(&id) {
            Some(owner) => {
                owner.owed_wake |= owner.waiting;
                owner.slot.push_back(print);
                self.stats.routed += 1;
            }
            None => self.stats.discarded += 1,
        }
    }

    /// The protocol (or `route_next`) failed: the connection is broken for good, and every future is woken.
    fn broke(&mut self, id: Option<RequestId>, e: Error) -> bool {
        if e.to_string().contains("BUG") {
            violated(format_args!("a broken invariant: {e}"));
        }
        if !e.is_connection_broken() || !self.protocol.is_closed() {
            violated(format_args!("an error that left the connection open: {e}"));
        }
        if self.shadow.poll_response().is_ok() {
            violated(format_args!(
                "the protocol failed with \"{e}\" where, on the same input, it does not"
            ));
        }
        self.protocol.mark_broken(&e);
        self.broken = true;
        self.stats.failed += usize::from(id.is_some());
        for (&other, owner) in &mut self.owners {
            owner.owed_wake |= owner.waiting && Some(other) != id;
            if Some(other) == id {
                owner.done = true;
                owner.waiting = false;
            }
        }
        self.slots.wake_all();
        true
    }

    /// `Client::release`.
    fn drop_future(&mut self, id: RequestId) {
        let pending = self.protocol.is_pending(id);
        self.slots.close(id, pending);
        if let Some(owner) = self.owners.remove(&id) {
            self.gone.push(owner.waker);
        }
        self.step_back(id);
    }

    /// `ClientState::step_back`.
    fn step_back(&mut self, id: RequestId) {
        if self.driver.is_none_or(|driver| driver == id) {
            self.driver = None;
            self.slots.wake_successor();
        }
    }

    fn time_out(&mut self) {
        if self.expired.is_none() && !self.broken {
            self.expired = self.protocol.front_request();
            Waker::from(self.io.clone()).wake_by_ref();
        }
    }

    /// `Client::before_request` with no live future: a new one adopts the newest request in flight.
    fn adopt(&mut self) {
        if self.slots.has_live() {
            violated(format_args!("live slots, and no live future"));
        }
        if let Some(last) = self.protocol.last_pending() {
            self.slots.adopt(last);
            self.owners.insert(last, Owner::new());
            self.stats.adoptions += 1;
        }
    }

    /// `Connection::drain_abandoned`, as far as the bytes read so far go (the operation may be dropped there).
    fn drain(&mut self) {
        loop {
            if let Some(expired) = self.expired
                && !self.protocol.is_pending(expired)
            {
                self.expired = None;
                self.slots
                    .route(expired, Err(Error::timeout("the query", LIMIT)), true);
                continue;
            }
            if !self.protocol.has_pending() && self.expired.is_none() {
                self.slots.clear();
                self.stats.drains += 1;
                break;
            }
            match self
                .slots
                .route_next(&mut self.protocol, None, self.expired)
            {
                Ok(Routed::Answer(_)) => violated(format_args!(
                    "route_next handed an answer to nobody's request"
                )),
                Ok(Routed::Elsewhere) => self.elsewhere(None),
                Ok(Routed::Nothing) => {
                    self.shadow_nothing();
                    break;
                }
                Err(e) => {
                    self.broke(None, e);
                    break;
                }
            }
        }
        self.drain_events();
        self.check_transmit();
    }

    fn drain_events(&mut self) {
        while self.protocol.poll_event().is_some() {}
        while self.shadow.poll_event().is_some() {}
    }

    /// After each step, as after each poll of the client: the wakes collected under the lock are woken and
    /// checked, and futures that are done return (dropping their requests).
    fn settle(&mut self) {
        self.wake_collected();
        let done: Vec<RequestId> = self
            .owners
            .iter()
            .filter(|(_, owner)| owner.done)
            .map(|(&id, _)| id)
            .collect();
        for id in done {
            self.drop_future(id);
            self.wake_collected();
        }
        let live = !self.owners.is_empty();
        if self.slots.has_live() != live {
            violated(format_args!(
                "the slots say a live future is {}, the harness has {}",
                if self.slots.has_live() {
                    "there"
                } else {
                    "not there"
                },
                self.owners.len()
            ));
        }
    }

    fn wake_collected(&mut self) {
        for waker in self.slots.take_wakes() {
            if self.gone.iter().any(|gone| gone.will_wake(&waker)) {
                violated(format_args!("a slot woke a future that went away"));
            }
            waker.wake();
        }
        for (id, owner) in &mut self.owners {
            let wakes = owner.wakes.0.load(Ordering::Relaxed);
            let woken = wakes > owner.wakes_seen;
            if owner.owed_wake && !woken {
                violated(format_args!(
                    "request {id}: its future waited, an answer was routed to it, and no wake"
                ));
            }
            owner.waiting &= !woken;
            owner.wakes_seen = wakes;
            owner.owed_wake = false;
        }
    }

    /// The end of the script: everything the server sent is read, every future polled until it waits or is
    /// done, then dropped; if the connection broke, it stays broken.
    fn finish(&mut self) {
        self.read(usize::MAX);
        self.settle();
        for id in self.owners.keys().copied().collect::<Vec<_>>() {
            // Each poll takes an answer or waits; answers are bounded by the input.
            while self.owners.get(&id).is_some_and(|owner| !owner.done) {
                self.poll(id);
                self.settle();
                if self.owners.get(&id).is_none_or(|owner| owner.waiting) {
                    break;
                }
            }
        }
        for id in self.owners.keys().copied().collect::<Vec<_>>() {
            self.drop_future(id);
            self.settle();
        }
        if !self.broken {
            self.drain();
            self.settle();
        }
        if self.broken {
            if self
                .slots
                .route_next(&mut self.protocol, None, None)
                .is_ok()
            {
                violated(format_args!("the connection broke, then routed again"));
            }
            if self
                .protocol
                .queue_request(Flow::Simple, None, |buf| {
                    frontend::sync(buf);
                    Ok(())
                })
                .is_ok()
            {
                violated(format_args!("the connection broke, then took a request"));
            }
        }
    }
}

/// One well-formed backend message of kind `kind` (0 to 15), numbered `serial`.
fn vocabulary(kind: u8, serial: u32) -> Vec<u8> {
    let text = serial.to_string();
    match kind {
        0 => row_description(1),
        1 => row_description(2),
        2 => data_row(&[Some(text.as_bytes())]),
        3 => data_row(&[Some(text.as_bytes()), None]),
        4 => message(b'C', &cstr(&format!("SELECT {text}"))),
        5 => error("ERROR", &text),
        6 => message(b'Z', b"I"),
        7 => message(b'Z', b"T"),
        8 => message(b'Z', b"E"),
        9 => message(b'I', b""),
        10 => message(
            b'N',
            &fields(&[(b'S', "NOTICE"), (b'C', "00000"), (b'M', &text)]),
        ),
        11 => message(
            b'A',
            &[&7i32.to_be_bytes()[..], &cstr("channel"), &cstr(&text)].concat(),
        ),
        12 => [message(b'1', b""), message(b'2', b""), message(b'n', b"")].concat(),
        13 => message(b'H', &[0, 0, 1, 0, 0]),
        14 => [message(b'd', text.as_bytes()), message(b'c', b"")].concat(),
        _ => error("FATAL", &text),
    }
}

/// A whole answer: for `shape` up to 12, a one-column result of `shape` rows, its tag and ReadyForQuery;
/// else an error and ReadyForQuery.
fn answer(shape: u8, serial: u32) -> Vec<u8> {
    let text = serial.to_string();
    let mut out = Vec::new();
    if shape > 12 {
        out.extend(error("ERROR", &text));
    } else {
        out.extend(row_description(1));
        for row in 0..shape {
            out.extend(data_row(&[Some(format!("{text}.{row}").as_bytes())]));
        }
        out.extend(message(b'C', &cstr(&format!("SELECT {text}"))));
    }
    out.extend(message(b'Z', b"I"));
    out
}

/// A RowDescription of `columns` text columns, named `c0`, `c1`, ...
fn row_description(columns: u16) -> Vec<u8> {
    let names: Vec<String> = (0..columns).map(|column| format!("c{column}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    text_columns(&names)
}

fn fields(fields: &[(u8, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in fields {
        body.push(*field);
        body.extend(cstr(value));
    }
    body.push(0);
    body
}

fn error(severity: &str, text: &str) -> Vec<u8> {
    message(
        b'E',
        &fields(&[
            (b'S', severity),
            (b'V', severity),
            (b'C', "22012"),
            (b'M', text),
        ]),
    )
}

/// Scripts of sessions a correct server would give, for the seed corpus (`record.rs` writes them).
pub(crate) fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let step = |kind: u8, parameter: u8| (parameter << 4) | kind;
    let (queue, message, answer, read, poll, drop, timeout, exclusive) =
        (0, 2, 4, 5, 7, 11, 12, 13);
    vec![
        // Three futures pipelined, answered at once; each polls in turn.
        (
            "three_pipelined",
            vec![
                step(queue, 0),
                step(queue, 2),
                step(queue, 3),
                step(poll, 0),
                step(answer, 1),
                step(answer, 2),
                step(answer, 13),
                step(answer, 0),
                step(read, 15),
                step(poll, 0),
                step(poll, 1),
                step(poll, 2),
                step(poll, 0),
                step(poll, 1),
                step(poll, 2),
            ],
        ),
        // The answers arrive a few bytes at a time, with notices and notifications between them, while the
        // newest future drives.
        (
            "small_reads_async",
            vec![
                step(queue, 0),
                step(queue, 0),
                step(poll, 1),
                step(answer, 2),
                step(message, 10),
                step(answer, 1),
                step(message, 11),
                step(read, 1),
                step(poll, 1),
                step(read, 2),
                step(poll, 1),
                step(read, 3),
                step(poll, 0),
                step(read, 15),
                step(poll, 1),
                step(poll, 0),
            ],
        ),
        // A future dropped with its answer on the way, a housekeeping request without a slot, and a query
        // after them.
        (
            "dropped_and_housekeeping",
            vec![
                step(queue, 0),
                step(poll, 0),
                step(drop, 0),
                step(queue, 4),
                step(answer, 3),
                step(answer, 0),
                step(answer, 1),
                step(read, 15),
                step(poll, 0),
                step(poll, 0),
            ],
        ),
        // The request the server works on times out: its answer is discarded, its future gets the timeout.
        (
            "timeout",
            vec![
                step(queue, 0),
                step(queue, 0),
                step(poll, 0),
                step(timeout, 0),
                step(answer, 2),
                step(answer, 1),
                step(read, 15),
                step(poll, 1),
                step(poll, 0),
            ],
        ),
        // Every future dropped; a new one adopts the newest request, then an exclusive operation drains.
        (
            "adopt_and_drain",
            vec![
                step(queue, 0),
                step(queue, 2),
                step(drop, 0),
                step(drop, 0),
                step(exclusive, 0),
                step(answer, 1),
                step(answer, 2),
                step(read, 15),
                step(poll, 0),
                step(drop, 0),
                step(queue, 0),
                step(drop, 0),
                step(answer, 0),
                step(read, 15),
                step(exclusive, 1),
            ],
        ),
        // Garbage in the middle of a pipelined answer: every future fails.
        (
            "garbage",
            vec![
                step(queue, 0),
                step(queue, 0),
                step(poll, 0),
                step(poll, 1),
                step(answer, 1),
                3,
                5,
                b'!',
                0,
                0,
                0,
                4,
                step(read, 15),
                step(poll, 1),
                step(poll, 0),
            ],
        ),
    ]
}
