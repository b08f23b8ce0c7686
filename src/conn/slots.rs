//! The requests in flight on a shared connection, and who drives its socket.
//!
//! Many futures may wait on one [`Client`](crate::Client) at once, each for the answers to its own request.
//! There is no background task: whichever of them is polled reads the socket and routes what arrives. The
//! answers to its own request it returns; those of others go into their [`Slot`]s here, and their owners are
//! woken; those of requests whose futures were dropped are discarded.
//!
//! Who owns what:
//! - [`Slots`] lives in the connection (`connection.rs`), behind the client's lock: one slot per request
//!   queued by a future that shares the client, in queue order. A slot is opened in the same step as its
//!   request is queued (so write order and read order cannot diverge), and closed by its owner's
//!   [`Drop`](crate::client) when the request finished, or marked abandoned when the owner went away first.
//! - [`IoWaker`] is the one waker the transport and the timers ever see. It wakes the *driver*: the future
//!   that polled the socket last. A future whose slot is empty when polled becomes the driver, so the driver
//!   is always a future that is being polled. When the driver leaves (finished or dropped) while others still
//!   wait, it wakes one of them ([`Slots::successor`]) to take over: no wakeup is lost, which on wstd's
//!   executor would be a panic rather than a hang.
//!
//! - Fewer asks of the transport: while the driver waits on the socket (it is *armed*), a future polled with
//!   an empty slot leaves the socket to it rather than asking the transport again (on WASI every ask is a host
//!   call). If that future queued a request, it wakes the driver once, so everything queued meanwhile leaves
//!   in one write.
//!
//! Wakers are collected while the lock is held and woken after it is released.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Wake, Waker};

use crate::Error;
use crate::proto::{Backend, Protocol, RequestId};

/// What [`Slots::route_next`] did with the next buffered message.
pub(crate) enum Routed {
    /// It answers the caller's request.
    Answer(Backend),
    /// It went to another request's slot, or was discarded.
    Elsewhere,
    /// Nothing is buffered whole: more input is needed.
    Nothing,
}

/// The answers of one request, waiting for the future that queued it.
struct Slot {
    id: RequestId,
    /// Answers routed here by another future's read, oldest first.
    responses: VecDeque<Result<Backend, Error>>,
    /// The owner's waker, from its latest poll.
    waker: Option<Waker>,
    /// The owner went away before the request finished: its answers are discarded as they arrive.
    abandoned: bool,
    /// About how many bytes `responses` holds.
    held: usize,
    /// `responses` outgrew [`MAX_HELD`]: they were dropped, the owner gets an error, and the rest of the
    /// request's answers are discarded (never handed out with a gap).
    overflowed: bool,
}

/// How much of a request's answers a slot holds for an owner that does not read them while other futures read
/// the connection: past this the request fails (the connection stays in step), rather than memory growing
/// with a result nobody reads.
pub(crate) const MAX_HELD: usize = 256 << 20;

impl Slot {
    fn new(id: RequestId) -> Slot {
        Slot {
            id,
            responses: VecDeque::new(),
            waker: None,
            abandoned: false,
            held: 0,
            overflowed: false,
        }
    }
}

/// About how many bytes an answer holds, for [`MAX_HELD`].
fn answer_size(answer: &Result<Backend, Error>) -> usize {
    match answer {
        Ok(Backend::Row(row)) => (0..row.len())
            .map(|i| 4 + row.field(i).map_or(0, <[u8]>::len))
            .sum(),
        Ok(Backend::CopyData(data)) => data.len(),
        _ => 64,
    }
}

fn overflow_error() -> Error {
    Error::unsupported(format!(
        "the request's answers grew past {MAX_HELD} bytes while other futures read the connection and this \
         one did not: the request was given up (its remaining answers are discarded; the connection is fine); \
         read large results as they come, or through query_raw"
    ))
}

/// The slots of the requests queued by futures that share the client, ordered by request id.
#[derive(Default)]
pub(crate) struct Slots {
    slots: VecDeque<Slot>,
    /// The futures waiting for a notification, by number, with their wakers.
    listeners: Vec<(u64, Waker)>,
    /// Wakers to wake once the client's lock is released.
    wakes: Vec<Waker>,
}

impl Slots {
    fn position(&self, id: RequestId) -> Option<usize> {
        // Ids grow with every request and slots are opened in that order: the deque stays sorted.
        self.slots.binary_search_by_key(&id, |slot| slot.id).ok()
    }

    /// Opens the slot of request `id`, just queued.
    pub(crate) fn open(&mut self, id: RequestId) {
        debug_assert!(self.slots.back().is_none_or(|slot| slot.id < id));
        self.slots.push_back(Slot::new(id));
    }

    /// Makes the future that calls this the owner of request `id`, whose own owner went away (or which was
    /// queued without a slot): its slot is opened, or taken back from abandonment with nothing in it.
    pub(crate) fn adopt(&mut self, id: RequestId) {
        match self.slots.binary_search_by_key(&id, |slot| slot.id) {
            Ok(position) => {
                let slot = &mut self.slots[position];
                slot.abandoned = false;
                slot.responses.clear();
            }
            Err(position) => self.slots.insert(position, Slot::new(id)),
        }
    }

    /// Whether some future waits for the answers of a request in flight.
    pub(crate) fn has_live(&self) -> bool {
        self.slots.iter().any(|slot| !slot.abandoned)
    }

    /// The oldest answer routed to request `id`'s slot, if any.
    pub(crate) fn take(&mut self, id: RequestId) -> Option<Result<Backend, Error>> {
        let position = self.position(id)?;
        let slot = &mut self.slots[position];
        match slot.responses.pop_front() {
            Some(answer) => {
                slot.held = slot.held.saturating_sub(answer_size(&answer));
                Some(answer)
            }
            // Given up: every later poll gets the error again, never an answer after the gap.
            None if slot.overflowed => Some(Err(overflow_error())),
            None => None,
        }
    }

    /// Remembers the waker of `id`'s owner, which the next answer routed to it wakes.
    pub(crate) fn register(&mut self, id: RequestId, waker: &Waker) {
        if let Some(position) = self.position(id) {
            let slot = &mut self.slots[position];
            match &slot.waker {
                Some(known) if known.will_wake(waker) => {}
                _ => slot.waker = Some(waker.clone()),
            }
        }
    }

    /// Takes the next message the protocol has buffered whole and routes it: handed back if it answers `id`
    /// (the caller's request), else into its request's slot, or discarded if nobody waits for it or it answers
    /// `expired` (a timed-out request, whose owner gets the timeout instead). With `id` `None` (an exclusive
    /// operation reading out dropped requests), nothing is handed back.
    ///
    /// This is the whole routing of a shared connection, without I/O: the connection calls it between reads,
    /// and the model tests and the fuzzer call it on bytes they make up.
    pub(crate) fn route_next(
        &mut self,
        protocol: &mut Protocol,
        id: Option<RequestId>,
        expired: Option<RequestId>,
    ) -> Result<Routed, Error> {
        let Some(response) = protocol.poll_response()? else {
            return Ok(Routed::Nothing);
        };
        let request = response.request;
        let is_expired = expired == Some(request);
        if Some(request) == id && !is_expired {
            return Ok(Routed::Answer(response.message));
        }
        if let Some(id) = id
            && request > id
            && protocol.is_pending(id)
        {
            return Err(Error::protocol(
                "BUG: a response for a request queued later arrived first",
            ));
        }
        if !is_expired {
            // Cancel-safety: an abandoned request's rows and errors end here, not in a later caller's result.
            let finished = !protocol.is_pending(request);
            self.route(request, Ok(response.message), finished);
        }
        Ok(Routed::Elsewhere)
    }

    /// Request `id`'s owner got an answer and no longer waits: its waker is stale, and must not be picked to
    /// take over the socket (see [`wake_successor`](Self::wake_successor)).
    pub(crate) fn unregister(&mut self, id: RequestId) {
        if let Some(position) = self.position(id) {
            self.slots[position].waker = None;
        }
    }

    /// Routes an answer that arrived for request `id` while another future was reading: into its slot (waking
    /// its owner), or nowhere if its owner went away or it has no slot (a request of a dropped exclusive
    /// operation). `finished` says the request got its last answer: an abandoned slot is closed then.
    pub(crate) fn route(&mut self, id: RequestId, answer: Result<Backend, Error>, finished: bool) {
        let Some(position) = self.position(id) else {
            return;
        };
        let slot = &mut self.slots[position];
        if slot.abandoned {
            if finished {
                self.slots.remove(position);
            }
            return;
        }
        if slot.overflowed {
            return;
        }
        slot.held += answer_size(&answer);
        if slot.held > MAX_HELD {
            slot.overflowed = true;
            slot.held = 0;
            slot.responses.clear();
        } else {
            slot.responses.push_back(answer);
        }
        if let Some(waker) = slot.waker.take() {
            self.wakes.push(waker);
        }
    }

    /// The owner of request `id` goes away. `pending` says the server has not finished the request yet: then
    /// the slot stays, abandoned, until its last answer was read and discarded; otherwise it is closed now.
    pub(crate) fn close(&mut self, id: RequestId, pending: bool) {
        let Some(position) = self.position(id) else {
            return;
        };
        if pending {
            let slot = &mut self.slots[position];
            slot.abandoned = true;
            slot.responses.clear();
            slot.waker = None;
        } else {
            self.slots.remove(position);
        }
    }

    /// Forgets every slot: an exclusive operation begins, and no future that shares the client exists.
    pub(crate) fn clear(&mut self) {
        self.slots.clear();
    }

    /// The driver leaves: wakes the oldest owner that waits with nothing to read (else a future waiting for a
    /// notification), so it takes over the socket. Owners with answers in their slot were woken when they
    /// arrived.
    pub(crate) fn wake_successor(&mut self) {
        if let Some(slot) = self
            .slots
            .iter_mut()
            .find(|slot| !slot.abandoned && slot.responses.is_empty() && slot.waker.is_some())
            && let Some(waker) = slot.waker.take()
        {
            self.wakes.push(waker);
        } else if let Some((_, waker)) = self.listeners.first() {
            self.wakes.push(waker.clone());
        }
    }

    /// Remembers the waker of the future numbered `listener`, which waits for a notification.
    pub(crate) fn register_listener(&mut self, listener: u64, waker: &Waker) {
        match self.listeners.iter_mut().find(|(id, _)| *id == listener) {
            Some((_, known)) if known.will_wake(waker) => {}
            Some((_, known)) => *known = waker.clone(),
            None => self.listeners.push((listener, waker.clone())),
        }
    }

    /// The future numbered `listener` no longer waits for a notification.
    pub(crate) fn forget_listener(&mut self, listener: u64) {
        self.listeners.retain(|(id, _)| *id != listener);
    }

    /// A notification arrived: every future waiting for one is woken (the first to poll takes it).
    pub(crate) fn wake_listeners(&mut self) {
        self.wakes
            .extend(self.listeners.iter().map(|(_, waker)| waker.clone()));
    }

    /// The connection broke: every owner and every future waiting for a notification is woken, and reads
    /// the error from the connection.
    pub(crate) fn wake_all(&mut self) {
        for slot in &mut self.slots {
            if let Some(waker) = slot.waker.take() {
                self.wakes.push(waker);
            }
        }
        self.wake_listeners();
    }

    /// Wakes `waker` once the lock is released.
    pub(crate) fn defer_wake(&mut self, waker: Waker) {
        self.wakes.push(waker);
    }

    /// The wakers collected under the lock, to wake after releasing it.
    pub(crate) fn take_wakes(&mut self) -> Vec<Waker> {
        std::mem::take(&mut self.wakes)
    }
}

/// The waker given to the transport and the timers: it wakes whichever future drives the socket now.
#[derive(Default)]
pub(crate) struct IoWaker {
    driver: Mutex<Option<Waker>>,
}

impl IoWaker {
    /// `waker`'s future drives the socket from now on.
    pub(crate) fn set_driver(&self, waker: &Waker) {
        let mut driver = self.driver.lock().unwrap_or_else(PoisonError::into_inner);
        match &*driver {
            Some(known) if known.will_wake(waker) => {}
            _ => *driver = Some(waker.clone()),
        }
    }
}

impl IoWaker {
    /// The waker of the future that drives the socket now.
    pub(crate) fn driver_waker(&self) -> Option<Waker> {
        self.driver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Wake for IoWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let driver = self
            .driver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(driver) = driver {
            driver.wake();
        }
    }
}

#[cfg(test)]
#[path = "slots_tests.rs"]
pub(crate) mod tests;
