//! Model tests of the routing of a shared connection: [`Slots`] over a real [`Protocol`] in the Ready phase,
//! with no socket. Futures are simulated: each poll does what `Client::poll_answer` and
//! `Connection::poll_next` do (its slot, the DataRow fast path, its waker, then `route_next` in a loop), with
//! the socket read replaced by the server's bytes arriving between steps. A deterministic generator picks, over
//! many seeds, what happens next: a request queued (with or without a slot), bytes of the server's answers
//! delivered, a future polled (after its wake, or spuriously), a future dropped, the request the server works
//! on timing out, a future adopting the newest request of dropped ones, an exclusive operation draining them,
//! a bad frame from the server.
//!
//! Longer than 800 lines on purpose: the model (its world, its futures, its checks) and the client-level tests
//! that replay its findings read as one piece; split, each half would need the other to be understood.
//!
//! Every answer the server sends names its request (the column, row values, tags and error messages carry the
//! request's id), so the model knows whose each one is. It checks, at every step:
//! - a future receives only its own request's answers, each once, complete and in order; those read after its
//!   request timed out are discarded, and it then gets the timeout; after a bad frame, the error;
//! - the answers of a request whose future went away reach nobody, and its slot is gone once it finished;
//! - every slot belongs to a request in flight or to a live future, and holds exactly what the model says;
//!   there are never more slots than requests in flight and live futures;
//! - a future that waits is woken when an answer is routed to it or the connection breaks, and no wake
//!   reaches a dropped one.
//!
//! Who drives the socket is the client's policy: `client/shared_tests.rs` runs the real `Client` over a
//! scripted transport, with each future polled only when woken, to check that no wakeup is lost.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Wake, Waker};
use std::time::Duration;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;

use super::{IoWaker, MAX_HELD, Routed, Slots};
use crate::config::{ChannelBinding, ProtocolVersion, RequireAuth};
pub(crate) use crate::proto::scripted::{cstr, message};
use crate::proto::scripted::{text_columns, text_row};
use crate::proto::{
    Backend, ChannelBindingPolicy, Flow, Limits, OAuthParams, Protocol, RawRow, RequestId,
    StartupParams, message_name,
};
use crate::{Error, ErrorKind};

/// The query timeout the model's timeouts report.
const LIMIT: Duration = Duration::from_secs(1);
/// Requests in flight at most: a bound on the generator, not on the code under test.
const MAX_IN_FLIGHT: usize = 8;

/// One answer as the model knows it; the server's answers carry their request's id in their text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Description(String),
    Row(String),
    Complete(String),
    Error(String),
    Ready,
    /// The request timed out: its owner gets this instead of the rest of its answers.
    Timeout,
    /// The connection broke.
    Broken,
}

impl Answer {
    /// What a future received, as the model writes it.
    fn of(result: Result<Backend, Error>) -> Answer {
        match result {
            Ok(Backend::Row(row)) => {
                assert_eq!(row.len(), 1, "a row of {} fields", row.len());
                Answer::Row(String::from_utf8_lossy(row.field(0).unwrap_or(b"NULL")).into_owned())
            }
            Ok(Backend::Ready) => Answer::Ready,
            Ok(Backend::Error(db)) => Answer::Error(db.message().to_string()),
            Ok(Backend::Message(Message::RowDescription(body))) => {
                let name = body
                    .fields()
                    .next()
                    .ok()
                    .flatten()
                    .map_or(String::new(), |field| field.name().to_string());
                Answer::Description(name)
            }
            Ok(Backend::Message(Message::CommandComplete(body))) => {
                Answer::Complete(body.tag().unwrap_or("?").to_string())
            }
            Ok(Backend::Message(other)) => panic!("an unexpected {}", message_name(&other)),
            Ok(Backend::CopyData(_)) => panic!("an unexpected CopyData"),
            Ok(Backend::CopyBoth) => panic!("an unexpected CopyBothResponse"),
            Err(e) if e.kind() == ErrorKind::Timeout => Answer::Timeout,
            Err(e) if e.is_connection_broken() => Answer::Broken,
            Err(e) => panic!("an error that neither timed out nor broke the connection: {e}"),
        }
    }

    /// The answer after which a future has nothing more to wait for.
    fn ends(&self) -> bool {
        matches!(self, Answer::Timeout | Answer::Broken)
    }
}

/// A deterministic xorshift64* stream, so a failing seed reproduces.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// A waker that counts its wakes.
#[derive(Default)]
pub(crate) struct WakeCount(AtomicUsize);

impl WakeCount {
    pub(crate) fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Wake for WakeCount {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A future waiting for the answers of one request.
struct Owner {
    wakes: Arc<WakeCount>,
    waker: Waker,
    /// The wakes counted when last checked.
    wakes_seen: usize,
    /// Its last poll returned `Pending` and nothing woke it since: an executor polls it again only once woken.
    waiting: bool,
    /// An answer was routed to it while it waited: it must have been woken.
    owed_wake: bool,
    /// The first of its request's answers it gets: a future that adopted a request gets those read after.
    start: usize,
    received: Vec<Answer>,
    done: bool,
}

impl Owner {
    fn new(start: usize) -> Owner {
        let wakes = Arc::new(WakeCount::default());
        Owner {
            waker: Waker::from(wakes.clone()),
            wakes,
            wakes_seen: 0,
            waiting: false,
            owed_wake: false,
            start,
            received: Vec::new(),
            done: false,
        }
    }
}

/// What the model knows of one request.
struct Request {
    /// Everything the server answers, in order.
    answers: Vec<Answer>,
    /// How many of them the protocol produced so far.
    read: usize,
    /// Its future; `None` once it went away, or for a request queued without a slot.
    owner: Option<Owner>,
    /// What its slot must hold: answers routed to it and not taken yet, each with whether it is the last.
    slot: VecDeque<(Answer, bool)>,
    /// It timed out after this many answers were read; the rest are discarded.
    cut: Option<usize>,
}

impl Request {
    fn owner(&mut self) -> &mut Owner {
        self.owner
            .as_mut()
            .expect("BUG in the model: a request without a future polled")
    }

    /// What its future must receive in all.
    fn expected(&self, start: usize) -> Vec<Answer> {
        let end = self.cut.unwrap_or(self.answers.len());
        let mut expected = self.answers.get(start..end).unwrap_or_default().to_vec();
        if self.cut.is_some() {
            expected.push(Answer::Timeout);
        }
        expected
    }
}

/// How often each thing happened, over all seeds: the model test asserts it exercised each of them.
#[derive(Debug, Default)]
struct Stats {
    polls: usize,
    spurious_polls: usize,
    direct: usize,
    fast_rows: usize,
    from_slot: usize,
    routed: usize,
    discarded: usize,
    discarded_expired: usize,
    timeouts: usize,
    adoptions: usize,
    drains: usize,
    dropped_in_flight: usize,
    successors: usize,
    slotless: usize,
    broken: usize,
    completed: usize,
}

impl Stats {
    fn add(&mut self, other: &Stats) {
        let Stats {
            polls,
            spurious_polls,
            direct,
            fast_rows,
            from_slot,
            routed,
            discarded,
            discarded_expired,
            timeouts,
            adoptions,
            drains,
            dropped_in_flight,
            successors,
            slotless,
            broken,
            completed,
        } = other;
        self.polls += polls;
        self.spurious_polls += spurious_polls;
        self.direct += direct;
        self.fast_rows += fast_rows;
        self.from_slot += from_slot;
        self.routed += routed;
        self.discarded += discarded;
        self.discarded_expired += discarded_expired;
        self.timeouts += timeouts;
        self.adoptions += adoptions;
        self.drains += drains;
        self.dropped_in_flight += dropped_in_flight;
        self.successors += successors;
        self.slotless += slotless;
        self.broken += broken;
        self.completed += completed;
    }
}

/// The connection under test, the simulated futures and the model.
struct World {
    protocol: Protocol,
    slots: Slots,
    io: Arc<IoWaker>,
    rng: Rng,
    /// The server's bytes not delivered yet.
    unsent: VecDeque<u8>,
    /// Whose the answers are that the server sends and the protocol has not produced yet, in order.
    unread: VecDeque<RequestId>,
    requests: BTreeMap<RequestId, Request>,
    /// The request that timed out and is being read out (`Connection`'s expiry, with its cancel done).
    expired: Option<RequestId>,
    /// The request whose future drove the socket last (`ClientState::driver`).
    driver: Option<RequestId>,
    /// The wakers of futures that went away: no slot may wake them.
    gone: Vec<Waker>,
    broken: bool,
    async_sent: usize,
    events: usize,
    /// What each finished future received.
    received: BTreeMap<RequestId, Vec<Answer>>,
    /// Futures that ended in this step, to drop after it.
    ended: Vec<RequestId>,
    /// Futures that received their last answer stay until a random drop, instead of being dropped at once.
    keep_ended: bool,
    /// Prints every step (`SLOTS_MODEL_TRACE=1`), to follow a failing seed.
    trace: bool,
    stats: Stats,
}

impl World {
    fn new(seed: u64) -> World {
        World {
            protocol: ready_protocol(),
            slots: Slots::default(),
            io: Arc::new(IoWaker::default()),
            rng: Rng::new(seed),
            unsent: VecDeque::new(),
            unread: VecDeque::new(),
            requests: BTreeMap::new(),
            expired: None,
            driver: None,
            gone: Vec::new(),
            broken: false,
            async_sent: 0,
            events: 0,
            received: BTreeMap::new(),
            ended: Vec::new(),
            keep_ended: false,
            trace: std::env::var_os("SLOTS_MODEL_TRACE").is_some(),
            stats: Stats::default(),
        }
    }

    fn log(&self, what: std::fmt::Arguments<'_>) {
        if self.trace {
            eprintln!("{what}");
        }
    }

    fn request(&mut self, id: RequestId) -> &mut Request {
        self.requests
            .get_mut(&id)
            .expect("BUG in the model: an unknown request")
    }

    fn live(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.requests
            .iter()
            .filter(|(_, request)| request.owner.is_some())
            .map(|(&id, _)| id)
    }

    /// Live futures that are not done.
    fn unfinished(&self) -> Vec<RequestId> {
        self.requests
            .iter()
            .filter(|(_, request)| request.owner.as_ref().is_some_and(|owner| !owner.done))
            .map(|(&id, _)| id)
            .collect()
    }

    fn pick(&mut self, ids: &[RequestId]) -> Option<RequestId> {
        (!ids.is_empty()).then(|| ids[self.rng.below(ids.len())])
    }

    fn in_flight(&self) -> usize {
        self.requests
            .keys()
            .filter(|&&id| self.protocol.is_pending(id))
            .count()
    }

    /// Queues a request, as `Client::start` does: with its slot in the same step (or without one, as
    /// housekeeping requests are), and the server's answer to it behind those of the requests before it.
    fn queue(&mut self, with_slot: bool) {
        let flow = match self.rng.below(3) {
            0 => Flow::Simple,
            1 => Flow::Extended(1),
            _ => Flow::Extended(2),
        };
        let queued = self.protocol.queue_request(flow, None, |buf| {
            match flow {
                Flow::Simple => frontend::query("SELECT model", buf)
                    .map_err(|e| Error::protocol(format!("encoding: {e}")))?,
                Flow::Extended(syncs) => (0..syncs).for_each(|_| frontend::sync(buf)),
            }
            Ok(())
        });
        let id = match queued {
            Ok(id) => id,
            Err(e) => {
                assert!(self.broken, "queuing failed on a working connection: {e}");
                return;
            }
        };
        assert!(!self.broken, "a request was queued on a broken connection");
        let owner = if with_slot {
            self.slots.open(id);
            Some(Owner::new(0))
        } else {
            self.stats.slotless += 1;
            None
        };
        let syncs = match flow {
            Flow::Simple => 1,
            Flow::Extended(syncs) => syncs,
        };
        let mut answers = Vec::new();
        for sync in 0..syncs {
            let tag = format!("r{id}.{sync}");
            if self.rng.one_in(4) {
                self.server_sends(error(&tag));
                answers.push(Answer::Error(tag));
            } else {
                self.server_sends(text_columns(&[&tag]));
                answers.push(Answer::Description(tag.clone()));
                for row in 0..self.rng.below(4) {
                    let value = format!("{tag}.{row}");
                    self.server_sends(text_row(&[&value]));
                    answers.push(Answer::Row(value));
                }
                self.server_sends(message(b'C', &cstr(&tag)));
                answers.push(Answer::Complete(tag));
            }
            self.server_sends(message(b'Z', b"I"));
            answers.push(Answer::Ready);
        }
        self.log(format_args!(
            "queue {id} ({flow:?}, slot: {with_slot}): {answers:?}"
        ));
        self.unread.extend(std::iter::repeat_n(id, answers.len()));
        self.requests.insert(
            id,
            Request {
                answers,
                read: 0,
                owner,
                slot: VecDeque::new(),
                cut: None,
            },
        );
    }

    /// Appends a message to what the server sends, sometimes after an asynchronous one.
    fn server_sends(&mut self, frame: Vec<u8>) {
        if self.rng.one_in(8) {
            let asynchronous = match self.rng.below(3) {
                0 => message(b'S', &[cstr("application_name"), cstr("model")].concat()),
                1 => message(
                    b'A',
                    &[&7i32.to_be_bytes()[..], &cstr("channel"), &cstr("payload")].concat(),
                ),
                _ => notice(),
            };
            self.unsent.extend(asynchronous);
            self.async_sent += 1;
        }
        self.unsent.extend(frame);
    }

    /// Delivers up to `n` of the server's bytes; the transport wakes the driver (through the io waker).
    fn deliver_bytes(&mut self, n: usize) {
        let n = n.min(self.unsent.len());
        if n == 0 {
            return;
        }
        self.log(format_args!("server sends {n} bytes"));
        let bytes: Vec<u8> = self.unsent.drain(..n).collect();
        self.protocol.handle_input(&bytes);
        Waker::from(self.io.clone()).wake_by_ref();
    }

    /// One poll of request `id`'s future, as `Client::poll_answer` does it: an answer steps back from the
    /// socket.
    fn poll(&mut self, id: RequestId) {
        self.log(format_args!("poll {id}"));
        self.stats.polls += 1;
        if self.poll_answer(id) {
            self.step_back(id);
        }
    }

    /// `ClientState::poll_answer`, then `Connection::poll_next` with the socket read replaced by `Pending`;
    /// whether the future got an answer.
    fn poll_answer(&mut self, id: RequestId) -> bool {
        if self.take(id) {
            return true;
        }
        if self.expired.is_none() {
            match self.protocol.poll_data_row(id) {
                Ok(Some(row)) => {
                    self.stats.fast_rows += 1;
                    self.answered(id, Answer::of(Ok(Backend::Row(row))));
                    return true;
                }
                Ok(None) => {}
                Err(e) => {
                    self.broke(id, e);
                    return true;
                }
            }
        }
        let waker = self.request(id).owner().waker.clone();
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
                self.expire_done(expired);
                if expired == id {
                    self.request(id).owner().received.push(Answer::Timeout);
                    self.delivered(id, true);
                    return true;
                }
                self.slots
                    .route(expired, Err(Error::timeout("the query", LIMIT)), true);
                self.routed(expired, Answer::Timeout, true);
                continue;
            }
            let routed = self
                .slots
                .route_next(&mut self.protocol, Some(id), self.expired);
            self.collect_events();
            match routed {
                Ok(Routed::Answer(message)) => {
                    self.answered(id, Answer::of(Ok(message)));
                    return true;
                }
                Ok(Routed::Elsewhere) => self.read_elsewhere(Some(id)),
                Ok(Routed::Nothing) => {
                    assert!(
                        self.protocol.is_pending(id) || self.expired.is_some(),
                        "request {id} waits, but it finished and nothing of it is left to read"
                    );
                    self.log(format_args!("  {id} waits"));
                    self.request(id).owner().waiting = true;
                    return false;
                }
                Err(e) => {
                    self.broke(id, e);
                    return true;
                }
            }
        }
    }

    /// The expiry of `expired` ends: its cancel is done and its ReadyForQuery was read.
    fn expire_done(&mut self, expired: RequestId) {
        assert_eq!(self.expired, Some(expired));
        self.expired = None;
        self.stats.timeouts += 1;
    }

    /// Takes the oldest answer from `id`'s slot, if any: it must be the one the model routed there first.
    fn take(&mut self, id: RequestId) -> bool {
        let taken = self.slots.take(id);
        let request = self.request(id);
        let Some(result) = taken else {
            assert!(
                request.slot.is_empty(),
                "answers to request {id} were lost: {:?}",
                request.slot
            );
            return false;
        };
        let got = Answer::of(result);
        let Some((expected, last)) = request.slot.pop_front() else {
            panic!("request {id} took {got:?} from its slot, where the model has nothing");
        };
        assert_eq!(
            got, expected,
            "request {id} took the wrong answer from its slot"
        );
        request.owner().received.push(got);
        self.stats.from_slot += 1;
        self.delivered(id, last);
        true
    }

    /// The protocol produced its next answer: the model's next one, and whose it is.
    fn read_one(&mut self) -> (RequestId, Answer, bool) {
        let Some(id) = self.unread.pop_front() else {
            panic!("the protocol produced an answer the server never sent");
        };
        let request = self.request(id);
        let answer = request.answers[request.read].clone();
        request.read += 1;
        let last = request.read == request.answers.len();
        self.log(format_args!(
            "  read {id}: {answer:?}{}",
            if last { " (last)" } else { "" }
        ));
        (id, answer, last)
    }

    /// `route_next` handed an answer to the caller `id`: it must be the next one read, and `id`'s own.
    fn answered(&mut self, id: RequestId, got: Answer) {
        let (whose, expected, last) = self.read_one();
        assert_eq!(
            whose, id,
            "request {id} was handed {got:?}, an answer to {whose}"
        );
        assert_ne!(
            self.expired,
            Some(id),
            "request {id} was handed an answer after it timed out"
        );
        assert_eq!(got, expected, "request {id} was handed the wrong answer");
        let request = self.request(id);
        assert!(
            request.slot.is_empty(),
            "request {id} was handed an answer before older ones in its slot"
        );
        request.owner().received.push(got);
        self.stats.direct += 1;
        self.delivered(id, last);
    }

    /// `route_next` put the next answer elsewhere, or discarded it.
    fn read_elsewhere(&mut self, caller: Option<RequestId>) {
        let (whose, answer, last) = self.read_one();
        if self.expired == Some(whose) {
            self.stats.discarded_expired += 1;
            return;
        }
        assert_ne!(
            Some(whose),
            caller,
            "an answer to the caller went elsewhere"
        );
        self.routed(whose, answer, last);
    }

    /// The model of `Slots::route`: into the slot of a live future (which must be woken if it waits), or nowhere.
    fn routed(&mut self, id: RequestId, answer: Answer, last: bool) {
        let request = self.request(id);
        match &mut request.owner {
            Some(owner) => {
                owner.owed_wake |= owner.waiting;
                request.slot.push_back((answer, last));
                self.stats.routed += 1;
            }
            None => {
                self.stats.discarded += 1;
                if last {
                    assert!(
                        self.slots.position(id).is_none(),
                        "request {id} finished, but the slot its future left stays"
                    );
                }
            }
        }
    }

    /// A future received an answer (already recorded); `last` says it ends its request.
    fn delivered(&mut self, id: RequestId, last: bool) {
        let got = self.requests[&id]
            .owner
            .as_ref()
            .and_then(|owner| owner.received.last().cloned());
        self.log(format_args!("  {id} receives {got:?}"));
        let request = self.request(id);
        let owner = request.owner();
        owner.waiting = false;
        let ended = last || owner.received.last().is_some_and(Answer::ends);
        if !ended {
            return;
        }
        owner.done = true;
        let start = owner.start;
        let received = owner.received.clone();
        let expected = request.expected(start);
        if received.last() == Some(&Answer::Broken) {
            assert!(
                expected.starts_with(&received[..received.len() - 1]),
                "request {id} received {received:?}, then the error, not a prefix of {expected:?}"
            );
        } else {
            assert_eq!(
                received, expected,
                "request {id} received the wrong answers"
            );
        }
        self.received.insert(id, received);
        self.stats.completed += 1;
        // A future is dropped after the poll that ended it, once the wakes of that poll were woken (as
        // `query` and `execute` drop their request), unless the world keeps it (a stream read to its end and
        // not dropped yet).
        if !self.keep_ended {
            self.ended.push(id);
        }
    }

    /// The protocol failed while `id`'s future read: as `ClientState::broke`, every future is woken.
    fn broke(&mut self, id: RequestId, e: Error) {
        assert!(
            e.is_connection_broken(),
            "an error that did not break the connection: {e}"
        );
        assert!(
            self.protocol.is_closed(),
            "the protocol failed but is not closed: {e}"
        );
        self.protocol.mark_broken(&e);
        self.broken = true;
        self.stats.broken += 1;
        for other in self.live().collect::<Vec<_>>() {
            let owner = self.request(other).owner();
            owner.owed_wake |= owner.waiting && other != id;
        }
        self.slots.wake_all();
        self.request(id).owner().received.push(Answer::Broken);
        self.delivered(id, false);
    }

    /// `Request`'s drop: `Client::release`.
    fn drop_future(&mut self, id: RequestId) {
        let pending = self.protocol.is_pending(id);
        self.log(format_args!(
            "drop {id} (pending: {pending}, driver: {:?})",
            self.driver
        ));
        if pending && !self.broken {
            self.stats.dropped_in_flight += 1;
        }
        self.slots.close(id, pending);
        let request = self.request(id);
        request.slot.clear();
        let owner = request
            .owner
            .take()
            .expect("BUG in the model: a future dropped twice");
        self.gone.push(owner.waker);
        if !pending {
            assert!(
                self.slots.position(id).is_none(),
                "request {id} finished and its future went away, but its slot stays"
            );
        }
        self.step_back(id);
    }

    /// `ClientState::step_back`: the future of `id` got an answer or went away; if it drove the socket (or
    /// nobody does), a waiting future is woken to take over.
    fn step_back(&mut self, id: RequestId) {
        self.slots.unregister(id);
        if self.driver.is_none_or(|driver| driver == id) {
            self.driver = None;
            self.slots.wake_successor();
            self.stats.successors += 1;
        }
    }

    /// `Client::before_request` when no live future shares the connection: the new future adopts the newest
    /// request of dropped ones and reads it to its end.
    fn adopt(&mut self) {
        assert!(!self.slots.has_live());
        let Some(last) = self.protocol.last_pending() else {
            return;
        };
        self.log(format_args!("adopt {last}"));
        self.slots.adopt(last);
        let request = self.request(last);
        assert!(
            request.owner.is_none(),
            "request {last} was adopted from a live future"
        );
        request.slot.clear();
        let read = request.read;
        request.owner = Some(Owner::new(read));
        self.stats.adoptions += 1;
    }

    /// `Connection::drain_abandoned`: an exclusive operation (no future shares the client) reads out every
    /// request in flight, the server delivering what it has as the reads ask for it.
    fn drain(&mut self) {
        assert_eq!(
            self.live().count(),
            0,
            "an exclusive operation beside live futures"
        );
        self.log(format_args!("drain"));
        self.stats.drains += 1;
        loop {
            if let Some(expired) = self.expired
                && !self.protocol.is_pending(expired)
            {
                self.expire_done(expired);
                self.slots
                    .route(expired, Err(Error::timeout("the query", LIMIT)), true);
                self.routed(expired, Answer::Timeout, true);
                continue;
            }
            if !self.protocol.has_pending() && self.expired.is_none() {
                break;
            }
            let routed = self
                .slots
                .route_next(&mut self.protocol, None, self.expired);
            self.collect_events();
            match routed {
                Ok(Routed::Answer(_)) => panic!("route_next handed an answer to nobody's request"),
                Ok(Routed::Elsewhere) => self.read_elsewhere(None),
                Ok(Routed::Nothing) => {
                    assert!(
                        !self.unsent.is_empty(),
                        "a drain waits for answers the server never sends"
                    );
                    let n = 1 + self.rng.below(64);
                    self.deliver_bytes(n);
                }
                Err(e) => {
                    assert!(e.is_connection_broken(), "{e}");
                    self.broken = true;
                    self.stats.broken += 1;
                    return;
                }
            }
        }
        assert!(
            self.slots.slots.is_empty(),
            "every request was read out, but slots stay: {:?}",
            self.slots
                .slots
                .iter()
                .map(|slot| slot.id)
                .collect::<Vec<_>>()
        );
        self.slots.clear();
    }

    /// A timer fires: the request the server works on outlived the query timeout.
    fn time_out(&mut self) {
        if self.expired.is_some() {
            return;
        }
        let Some(front) = self.protocol.front_request() else {
            return;
        };
        self.log(format_args!("request {front} times out"));
        self.expired = Some(front);
        let request = self.request(front);
        request.cut = Some(request.read);
        Waker::from(self.io.clone()).wake_by_ref();
    }

    /// A bad frame from the server: the connection breaks when the protocol reaches it.
    fn corrupt(&mut self, garbage: &[u8]) {
        self.unsent.extend(garbage);
    }

    fn collect_events(&mut self) {
        while self.protocol.poll_event().is_some() {
            self.events += 1;
        }
    }

    /// After each step, as after each poll of the client: the wakes collected under the lock are woken and
    /// checked against the model, futures that ended are dropped, and the slots are compared with the model.
    fn settle(&mut self) {
        self.wake_collected();
        for id in std::mem::take(&mut self.ended) {
            if self.requests[&id].owner.is_some() {
                self.drop_future(id);
                self.wake_collected();
            }
        }
        self.check_slots();
    }

    fn wake_collected(&mut self) {
        for waker in self.slots.take_wakes() {
            assert!(
                !self.gone.iter().any(|gone| gone.will_wake(&waker)),
                "the slots woke a future that went away"
            );
            waker.wake();
        }
        for (id, request) in &mut self.requests {
            let Some(owner) = &mut request.owner else {
                continue;
            };
            let wakes = owner.wakes.get();
            let woken = wakes > owner.wakes_seen;
            assert!(
                woken || !owner.owed_wake,
                "request {id}: an answer was routed to its waiting future, which was not woken"
            );
            if woken {
                if self.trace {
                    eprintln!("  {id} woken");
                }
                owner.waiting = false;
            }
            owner.wakes_seen = wakes;
            owner.owed_wake = false;
        }
    }

    fn check_slots(&self) {
        let slots = &self.slots.slots;
        assert!(
            slots
                .iter()
                .zip(slots.iter().skip(1))
                .all(|(a, b)| a.id < b.id),
            "slots out of order"
        );
        for slot in slots {
            let Some(request) = self.requests.get(&slot.id) else {
                panic!("a slot for request {}, never queued", slot.id);
            };
            if slot.abandoned {
                assert!(
                    request.owner.is_none(),
                    "request {}: its live future's slot is abandoned",
                    slot.id
                );
                assert!(slot.responses.is_empty() && slot.waker.is_none());
                assert!(
                    self.broken
                        || self.protocol.is_pending(slot.id)
                        || self.expired == Some(slot.id),
                    "request {} finished, but the slot its future left stays",
                    slot.id
                );
            } else {
                assert!(
                    request.owner.is_some(),
                    "request {}: a live slot without a future",
                    slot.id
                );
                assert_eq!(
                    slot.responses.len(),
                    request.slot.len(),
                    "request {}: its slot holds other answers than the model",
                    slot.id
                );
            }
        }
        let live = self.live().count();
        for id in self.live() {
            assert!(
                self.slots.position(id).is_some(),
                "request {id}: a live future without a slot"
            );
        }
        assert_eq!(self.slots.has_live(), live > 0);
        assert!(
            slots.len() <= self.in_flight() + live,
            "{} slots for {} requests in flight and {live} live futures",
            slots.len(),
            self.in_flight()
        );
    }

    /// One random step.
    fn step(&mut self, timeouts: bool) {
        let unfinished = self.unfinished();
        let awake: Vec<RequestId> = unfinished
            .iter()
            .copied()
            .filter(|&id| {
                !self.requests[&id]
                    .owner
                    .as_ref()
                    .is_some_and(|owner| owner.waiting)
            })
            .collect();
        match self.rng.below(20) {
            0..=2 if self.in_flight() < MAX_IN_FLIGHT => {
                if self.rng.one_in(8) {
                    self.queue(false);
                }
                self.queue(true);
            }
            3..=6 => {
                let n = if self.rng.one_in(4) {
                    usize::MAX
                } else {
                    1 + self.rng.below(48)
                };
                self.deliver_bytes(n);
            }
            7..=13 => {
                if let Some(id) = self.pick(&awake) {
                    self.poll(id);
                }
            }
            14 => {
                if let Some(id) = self.pick(&unfinished) {
                    self.stats.spurious_polls += 1;
                    self.poll(id);
                }
            }
            15 | 16 => {
                let live: Vec<RequestId> = self.live().collect();
                if let Some(id) = self.pick(&live) {
                    self.drop_future(id);
                }
            }
            17 if timeouts => self.time_out(),
            18 if !self.slots.has_live() && !self.broken => {
                if self.rng.one_in(3) {
                    self.drain();
                } else {
                    self.adopt();
                }
            }
            _ => {}
        }
        self.settle();
    }

    /// The end of a run: the server sends everything, and every live future is polled to its end, when woken.
    /// When every one waits, the socket is ready: the io waker wakes the driver. If that wakes none of them,
    /// a wakeup was lost: the run fails.
    fn finish(&mut self) {
        self.deliver_bytes(usize::MAX);
        self.settle();
        for _ in 0..100_000 {
            let unfinished = self.unfinished();
            let awake = |world: &World| {
                unfinished.iter().copied().find(|&id| {
                    !world.requests[&id]
                        .owner
                        .as_ref()
                        .is_some_and(|owner| owner.waiting)
                })
            };
            let Some(&oldest) = unfinished.first() else {
                break;
            };
            let id = awake(self).unwrap_or_else(|| {
                Waker::from(self.io.clone()).wake_by_ref();
                self.settle();
                awake(self).unwrap_or_else(|| {
                    panic!(
                        "lost wakeup: futures {unfinished:?} all wait, none was woken, and the io waker woke \
                         none of them (oldest {oldest})"
                    )
                })
            });
            self.poll(id);
            self.settle();
        }
        assert!(
            self.unfinished().is_empty(),
            "futures never finished: {:?}",
            self.unfinished()
        );
        for id in self.live().collect::<Vec<_>>() {
            self.drop_future(id);
            self.settle();
        }
        if !self.broken {
            self.drain();
            self.settle();
        }
        if self.broken {
            assert!(
                self.protocol.poll_response().is_err(),
                "the connection broke, then answered again"
            );
            return;
        }
        assert!(
            self.unread.is_empty(),
            "answers never read: {:?}",
            self.unread
        );
        assert!(self.slots.slots.is_empty());
        assert_eq!(
            self.events, self.async_sent,
            "asynchronous messages lost or duplicated"
        );
    }
}

/// A protocol past startup (trust, protocol 3.0).
fn ready_protocol() -> Protocol {
    let params = StartupParams {
        params: vec![
            ("user".into(), "model".into()),
            ("database".into(), "model".into()),
        ],
        password: None,
        scram_keys: None,
        require_auth: RequireAuth::default(),
        channel_binding: ChannelBindingPolicy {
            mode: ChannelBinding::Disable,
            tls: None,
        },
        scram_max_iterations: 4096,
        min_protocol_version: ProtocolVersion::V3_0,
        max_protocol_version: ProtocolVersion::V3_0,
        oauth: OAuthParams::default(),
    };
    let mut protocol = Protocol::new(
        params,
        Limits {
            max_message_size: 1 << 16,
        },
    )
    .expect("the model's startup parameters");
    let startup = protocol.poll_transmit().len();
    protocol.advance_transmit(startup);
    protocol.handle_input(&[message(b'R', &0u32.to_be_bytes()), message(b'Z', b"I")].concat());
    assert_eq!(
        protocol.poll_startup().ok(),
        Some(true),
        "the model's startup"
    );
    protocol
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

fn error(text: &str) -> Vec<u8> {
    message(
        b'E',
        &fields(&[
            (b'S', "ERROR"),
            (b'V', "ERROR"),
            (b'C', "22012"),
            (b'M', text),
        ]),
    )
}

fn notice() -> Vec<u8> {
    message(
        b'N',
        &fields(&[
            (b'S', "NOTICE"),
            (b'V', "NOTICE"),
            (b'C', "00000"),
            (b'M', "model"),
        ]),
    )
}

/// Frames a server must not send: each breaks the connection when the protocol reaches it.
const GARBAGE: [&[u8]; 4] = [
    // An unknown message type.
    b"!\0\0\0\x04",
    // A length below its own four bytes.
    b"C\0\0\0\x02",
    // A DataRow of two fields where a one-column result (or no result at all) is described.
    b"D\0\0\0\x0e\0\x02\0\0\0\0\0\0\0\0",
    // A ReadyForQuery with an invalid status.
    b"Z\0\0\0\x05?",
];

/// Names the seed of a failing run.
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "the failing seed: {} (SLOTS_MODEL_SEED=n reruns it, SLOTS_MODEL_TRACE=1 traces it)",
                self.0
            );
        }
    }
}

/// Runs the model over `seeds` (or the one `SLOTS_MODEL_SEED` names), 150 random steps each, then to the end.
/// Returns how often each thing happened.
fn run_model(seeds: u64) -> Stats {
    let mut total = Stats::default();
    let only: Option<u64> = std::env::var("SLOTS_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    for seed in only.map_or(0..seeds, |seed| seed..seed + 1) {
        let _guard = SeedGuard(seed);
        let mut world = World::new(seed);
        // A third of the worlds keep futures past their end, holding their slots.
        world.keep_ended = seed % 3 == 0;
        let timeouts = seed % 2 == 1;
        let corrupt_at = (seed % 8 == 0).then(|| world.rng.below(150));
        for step in 0..150 {
            if corrupt_at == Some(step) {
                let garbage = GARBAGE[world.rng.below(GARBAGE.len())];
                world.corrupt(garbage);
            }
            world.step(timeouts);
        }
        world.finish();
        total.add(&world.stats);
    }
    total
}

#[test]
fn random_interleavings_route_every_answer_to_its_own_request() {
    let seeds = 1500;
    let total = run_model(seeds);
    eprintln!("{seeds} seeds of 150 steps: {total:?}");
    if std::env::var_os("SLOTS_MODEL_SEED").is_some() {
        return;
    }
    // The generator reaches every path often, not by luck.
    for (what, count) in [
        ("answers handed to the caller", total.direct),
        ("rows by the fast path", total.fast_rows),
        ("answers taken from a slot", total.from_slot),
        ("answers routed to a slot", total.routed),
        ("answers of dropped futures discarded", total.discarded),
        (
            "answers of timed-out requests discarded",
            total.discarded_expired,
        ),
        ("timeouts", total.timeouts),
        ("adoptions", total.adoptions),
        ("drains", total.drains),
        ("futures dropped in flight", total.dropped_in_flight),
        ("drivers leaving", total.successors),
        ("requests without a slot", total.slotless),
        ("broken connections", total.broken),
        ("spurious polls", total.spurious_polls),
        ("futures completed", total.completed),
    ] {
        assert!(count >= 100, "only {count} {what}");
    }
}

#[test]
fn a_malformed_frame_fails_every_waiting_future() {
    for (seed, garbage) in GARBAGE.iter().enumerate() {
        let mut world = World::new(seed as u64);
        // Four futures; the server answers the first in full, then sends a bad frame.
        world.queue(true);
        let answered: Vec<u8> = world.unsent.drain(..).collect();
        for _ in 0..3 {
            world.queue(true);
        }
        world.unsent.clear();
        world.unsent.extend(answered);
        world.corrupt(garbage);
        let [a, b, c, d] = [1, 2, 3, 4];
        for id in [a, b, c, d] {
            world.poll(id);
            world.settle();
        }
        assert_eq!(world.driver, Some(d));
        // The bytes wake the driver, which routes a's answers to its slot and then meets the bad frame.
        world.deliver_bytes(usize::MAX);
        world.settle();
        world.poll(d);
        world.settle();
        assert!(world.broken, "{garbage:?} did not break the connection");
        for id in [a, b, c] {
            let owner = world.requests[&id].owner.as_ref().expect("a live future");
            assert!(
                !owner.waiting,
                "request {id}: its future still sleeps after the connection broke"
            );
        }
        world.finish();
        let full = world.requests[&a].answers.clone();
        assert_eq!(world.stats.completed, 4);
        for (id, expected) in [
            (a, full),
            (b, vec![Answer::Broken]),
            (c, vec![Answer::Broken]),
            (d, vec![Answer::Broken]),
        ] {
            let received = &world.received[&id];
            assert_eq!(received, &expected, "request {id} after {garbage:?}");
        }
        assert!(
            world
                .protocol
                .queue_request(Flow::Simple, None, |_| Ok(()))
                .is_err()
        );
    }
}

/// A slot whose owner does not read while other futures route its answers holds at most `MAX_HELD` bytes: past
/// that its answers are dropped, the owner gets an error (again on every poll, never an answer after the gap),
/// later answers are discarded, and the slot goes when the owner does.
#[test]
fn a_slot_that_outgrows_its_bound_fails_its_request_and_holds_nothing() {
    const ROW: usize = 16 << 20;
    let mut slots = Slots::default();
    slots.open(1);
    slots.open(2);
    let row = || Ok(Backend::Row(RawRow::from_fields(vec![Some(vec![7; ROW])])));
    let rows_that_fit = MAX_HELD / (ROW + 4);
    for _ in 0..rows_that_fit {
        slots.route(1, row(), false);
    }
    slots.route(2, row(), false);
    assert!(
        matches!(slots.take(1), Some(Ok(Backend::Row(_)))),
        "rows within the bound are kept"
    );
    // Taking one made room for one more; two more go past the bound.
    slots.route(1, row(), false);
    slots.route(1, row(), false);
    for _ in 0..2 {
        let error = match slots.take(1) {
            Some(Err(e)) => e,
            Some(Ok(_)) => panic!("an answer came out of a slot that outgrew its bound"),
            None => panic!("an overflowed slot gave nothing"),
        };
        assert_eq!(error.kind(), ErrorKind::Unsupported);
        assert!(!error.is_connection_broken(), "{error}");
    }
    slots.route(1, Ok(Backend::Ready), true);
    assert!(
        matches!(slots.take(1), Some(Err(_))),
        "an answer after the gap"
    );
    // The neighbour's answers are untouched.
    assert!(matches!(slots.take(2), Some(Ok(Backend::Row(_)))));
    assert!(slots.take(2).is_none());
    slots.close(1, false);
    assert!(
        slots.position(1).is_none(),
        "the overflowed slot outlived its owner"
    );
}
