//! The pool's bookkeeping: slots, idle connections, the queue of waiters. No I/O and no clock (the time is an
//! argument), so every rule can be tested without a server.
//!
//! A *slot* is the right to hold one connection. `size` counts every slot taken: idle connections, connections
//! checked out, connections being opened or health-checked, and grants handed to a waiter that has not been
//! polled since. A slot is taken *before* a connection is opened and `size` never exceeds `max_size`, so the
//! pool never has more than `max_size` connections, open or opening, under any interleaving.
//!
//! A slot given back goes straight to the first waiter (with its connection, or as the right to open one), so
//! waiters are served in order and a caller arriving later cannot take what a waiter was woken for. A waiter
//! dropped after its grant gives the grant back the same way.

use std::collections::{HashMap, VecDeque};
use std::task::Waker;
use std::time::{Duration, Instant};

use super::{PoolOptions, PoolStatus};

/// A connection with the times the pool judges it by.
#[derive(Debug)]
pub(super) struct Pooled<C> {
    pub(super) conn: C,
    pub(super) opened_at: Instant,
    /// When it last went back to the pool (or was opened).
    pub(super) idle_since: Instant,
}

impl<C> Pooled<C> {
    pub(super) fn new(conn: C, now: Instant) -> Pooled<C> {
        Pooled {
            conn,
            opened_at: now,
            idle_since: now,
        }
    }

    /// Whether it lived longer than `max_lifetime`.
    pub(super) fn outlived(&self, now: Instant, max_lifetime: Option<Duration>) -> bool {
        max_lifetime.is_some_and(|limit| now.saturating_duration_since(self.opened_at) >= limit)
    }

    /// Whether it sat idle for `limit` or longer.
    pub(super) fn idle_for(&self, now: Instant, limit: Option<Duration>) -> bool {
        limit.is_some_and(|limit| now.saturating_duration_since(self.idle_since) >= limit)
    }
}

/// What a slot holds when it changes hands: an idle connection, or nothing yet (the holder opens one).
pub(super) type Grant<C> = Option<Pooled<C>>;

struct Waiter {
    id: u64,
    waker: Waker,
}

/// Work left for after the lock is released: waking the waiters that got a grant, closing (dropping)
/// discarded connections. Neither should run while other tasks wait for the lock.
#[must_use = "wake and close after releasing the lock"]
pub(super) struct Aftermath<C> {
    wake: Vec<Waker>,
    close: Vec<C>,
}

impl<C> Aftermath<C> {
    pub(super) fn new() -> Aftermath<C> {
        Aftermath {
            wake: Vec::new(),
            close: Vec::new(),
        }
    }

    /// Wakes and closes; call with the lock released.
    pub(super) fn run(self) {
        drop(self.close);
        for waker in self.wake {
            waker.wake();
        }
    }
}

/// Everything behind the pool's lock.
pub(super) struct State<C> {
    options: PoolOptions,
    /// Idle connections, the most recently returned last (taken first, so surplus ones age out).
    idle: Vec<Pooled<C>>,
    size: usize,
    in_use: usize,
    waiters: VecDeque<Waiter>,
    /// Grants made to waiters, until each waiter is polled (or dropped).
    granted: HashMap<u64, Grant<C>>,
    next_waiter: u64,
    opened: u64,
    discarded: u64,
    peak_in_use: usize,
    peak_size: usize,
}

impl<C> State<C> {
    pub(super) fn new(options: PoolOptions) -> State<C> {
        State {
            options,
            idle: Vec::new(),
            size: 0,
            in_use: 0,
            waiters: VecDeque::new(),
            granted: HashMap::new(),
            next_waiter: 0,
            opened: 0,
            discarded: 0,
            peak_in_use: 0,
            peak_size: 0,
        }
    }

    /// For a new caller: an idle connection, or a new slot to open one in, or `None` when the pool is full (or
    /// others wait already: they come first). Expired idle connections met on the way are discarded.
    pub(super) fn take(&mut self, now: Instant, after: &mut Aftermath<C>) -> Option<Grant<C>> {
        if !self.waiters.is_empty() {
            return None;
        }
        if let Some(pooled) = self.pop_idle(now, after) {
            return Some(Some(pooled));
        }
        (self.size < self.options.get_max_size()).then(|| {
            self.size += 1;
            self.peak_size = self.peak_size.max(self.size);
            None
        })
    }

    /// Closes a connection that failed its health check but keeps its slot, and offers another idle
    /// connection in exchange for that slot; `None` leaves the slot empty, to open a new connection in.
    pub(super) fn replace_failed(
        &mut self,
        failed: C,
        now: Instant,
        after: &mut Aftermath<C>,
    ) -> Option<Pooled<C>> {
        self.discarded += 1;
        after.close.push(failed);
        let pooled = self.pop_idle(now, after)?;
        self.size -= 1;
        Some(pooled)
    }

    /// The most recently returned idle connection that has not expired; expired ones are discarded.
    fn pop_idle(&mut self, now: Instant, after: &mut Aftermath<C>) -> Option<Pooled<C>> {
        while let Some(pooled) = self.idle.pop() {
            // Idle past idle_timeout while min_idle would still be met without it, or too old.
            let surplus = self.idle.len() >= self.options.get_min_idle();
            if pooled.outlived(now, self.options.get_max_lifetime())
                || (surplus && pooled.idle_for(now, self.options.get_idle_timeout()))
            {
                self.discard(pooled.conn, after);
                continue;
            }
            return Some(pooled);
        }
        None
    }

    /// Queues a waiter; it is served by [`poll_waiter`](Self::poll_waiter) once something is given back.
    pub(super) fn enqueue(&mut self, waker: &Waker) -> u64 {
        let id = self.next_waiter;
        self.next_waiter += 1;
        self.waiters.push_back(Waiter {
            id,
            waker: waker.clone(),
        });
        id
    }

    /// The grant made to waiter `id`, or `None` (its waker updated) while it still waits.
    pub(super) fn poll_waiter(&mut self, id: u64, waker: &Waker) -> Option<Grant<C>> {
        if let Some(grant) = self.granted.remove(&id) {
            return Some(grant);
        }
        match self.waiters.iter_mut().find(|w| w.id == id) {
            Some(waiter) => waiter.waker.clone_from(waker),
            None => unreachable!("BUG: pool waiter {id} is neither queued nor granted"),
        }
        None
    }

    /// A waiter dropped: it leaves the queue, or gives its grant back (cancel-safety of acquiring).
    pub(super) fn cancel_waiter(&mut self, id: u64, now: Instant, after: &mut Aftermath<C>) {
        match self.granted.remove(&id) {
            Some(Some(pooled)) => self.give_back(pooled, now, after),
            Some(None) => self.free_slot(after),
            None => self.waiters.retain(|w| w.id != id),
        }
    }

    /// A reusable connection comes back: to the first waiter, else to the idle list.
    pub(super) fn give_back(
        &mut self,
        mut pooled: Pooled<C>,
        now: Instant,
        after: &mut Aftermath<C>,
    ) {
        pooled.idle_since = now;
        match self.waiters.pop_front() {
            Some(waiter) => self.grant(waiter, Some(pooled), after),
            None => self.idle.push(pooled),
        }
        self.prune(now, after);
    }

    /// Closes `conn` and frees its slot.
    pub(super) fn discard(&mut self, conn: C, after: &mut Aftermath<C>) {
        self.discarded += 1;
        after.close.push(conn);
        self.free_slot(after);
    }

    /// A slot is given up (its connection discarded, or opening one failed): the first waiter gets it to open
    /// a connection in, else the pool shrinks.
    pub(super) fn free_slot(&mut self, after: &mut Aftermath<C>) {
        match self.waiters.pop_front() {
            Some(waiter) => self.grant(waiter, None, after),
            None => self.size -= 1,
        }
    }

    fn grant(&mut self, waiter: Waiter, grant: Grant<C>, after: &mut Aftermath<C>) {
        self.granted.insert(waiter.id, grant);
        after.wake.push(waiter.waker);
    }

    /// Closes idle connections past max_lifetime, and those past idle_timeout beyond min_idle (oldest first).
    pub(super) fn prune(&mut self, now: Instant, after: &mut Aftermath<C>) {
        let max_lifetime = self.options.get_max_lifetime();
        let idle_timeout = self.options.get_idle_timeout();
        let min_idle = self.options.get_min_idle();
        let mut kept = Vec::with_capacity(self.idle.len());
        let mut surplus = self.idle.len().saturating_sub(min_idle);
        for pooled in std::mem::take(&mut self.idle) {
            if pooled.outlived(now, max_lifetime) {
                surplus = surplus.saturating_sub(1);
                self.discard(pooled.conn, after);
            } else if surplus > 0 && pooled.idle_for(now, idle_timeout) {
                surplus -= 1;
                self.discard(pooled.conn, after);
            } else {
                kept.push(pooled);
            }
        }
        self.idle = kept;
    }

    /// A slot for [`Pool::maintain`](super::Pool::maintain) to open an idle connection in, while fewer than
    /// min_idle are idle, nobody waits (they would get it first anyway) and the pool has room.
    pub(super) fn reserve_for_min_idle(&mut self) -> bool {
        let wanted = self.idle.len() < self.options.get_min_idle()
            && self.waiters.is_empty()
            && self.size < self.options.get_max_size();
        if wanted {
            self.size += 1;
            self.peak_size = self.peak_size.max(self.size);
        }
        wanted
    }

    pub(super) fn opened(&mut self) {
        self.opened += 1;
    }

    pub(super) fn checked_out(&mut self) {
        self.in_use += 1;
        self.peak_in_use = self.peak_in_use.max(self.in_use);
    }

    pub(super) fn checked_in(&mut self) {
        self.in_use -= 1;
    }

    pub(super) fn status(&self) -> PoolStatus {
        PoolStatus {
            max_size: self.options.get_max_size(),
            size: self.size,
            idle: self.idle.len(),
            in_use: self.in_use,
            waiting: self.waiters.len(),
            opened: self.opened,
            discarded: self.discarded,
            peak_in_use: self.peak_in_use,
            peak_size: self.peak_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    /// A waker that counts its wake-ups.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Counter>, Waker) {
        let counter = Arc::new(Counter::default());
        (counter.clone(), Waker::from(counter))
    }

    fn state(max_size: usize) -> State<u32> {
        State::new(PoolOptions::new().max_size(max_size))
    }

    /// Takes a slot, opens "connection" `conn` in it and checks it out, as `Pool::get` does.
    fn open(state: &mut State<u32>, conn: u32, now: Instant) -> Pooled<u32> {
        let mut after = Aftermath::new();
        assert!(matches!(state.take(now, &mut after), Some(None)));
        after.run();
        state.opened();
        state.checked_out();
        Pooled::new(conn, now)
    }

    fn give_back(state: &mut State<u32>, pooled: Pooled<u32>, now: Instant) -> Vec<u32> {
        let mut after = Aftermath::new();
        state.checked_in();
        state.give_back(pooled, now, &mut after);
        let closed = after.close.clone();
        after.run();
        closed
    }

    #[test]
    fn size_never_exceeds_max_size() {
        let now = Instant::now();
        let mut state = state(2);
        let _a = open(&mut state, 1, now);
        let _b = open(&mut state, 2, now);
        let mut after = Aftermath::new();
        assert!(state.take(now, &mut after).is_none());
        after.run();
        assert_eq!(state.status().size, 2);
        assert_eq!(state.status().peak_size, 2);
    }

    #[test]
    fn returned_connection_goes_to_the_first_waiter() {
        let now = Instant::now();
        let mut state = state(1);
        let a = open(&mut state, 1, now);
        let (first_woken, first) = waker();
        let (second_woken, second) = waker();
        let first_id = state.enqueue(&first);
        let second_id = state.enqueue(&second);
        assert!(state.poll_waiter(first_id, &first).is_none());

        give_back(&mut state, a, now);
        assert_eq!(first_woken.0.load(Ordering::SeqCst), 1);
        assert_eq!(second_woken.0.load(Ordering::SeqCst), 0);
        // A newcomer cannot take what the first waiter was woken for.
        let mut after = Aftermath::new();
        assert!(state.take(now, &mut after).is_none());
        after.run();
        let grant = state.poll_waiter(first_id, &first).expect("granted");
        assert_eq!(grant.map(|p| p.conn), Some(1));
        assert!(state.poll_waiter(second_id, &second).is_none());
        assert_eq!(state.status().waiting, 1);
    }

    #[test]
    fn dropped_waiter_passes_its_grant_on() {
        let now = Instant::now();
        let mut state = state(1);
        let a = open(&mut state, 1, now);
        let (_, first) = waker();
        let (second_woken, second) = waker();
        let first_id = state.enqueue(&first);
        let second_id = state.enqueue(&second);
        give_back(&mut state, a, now);

        let mut after = Aftermath::new();
        state.cancel_waiter(first_id, now, &mut after);
        after.run();
        assert_eq!(second_woken.0.load(Ordering::SeqCst), 1);
        let grant = state.poll_waiter(second_id, &second).expect("granted");
        assert_eq!(grant.map(|p| p.conn), Some(1));
        assert_eq!(state.status().size, 1);
    }

    #[test]
    fn dropped_waiter_without_grant_leaves_the_queue() {
        let now = Instant::now();
        let mut state = state(1);
        let a = open(&mut state, 1, now);
        let (_, w) = waker();
        let id = state.enqueue(&w);
        let mut after = Aftermath::new();
        state.cancel_waiter(id, now, &mut after);
        after.run();
        assert_eq!(state.status().waiting, 0);
        give_back(&mut state, a, now);
        assert_eq!(state.status().idle, 1);
    }

    #[test]
    fn discarded_connection_frees_its_slot_for_a_waiter() {
        let now = Instant::now();
        let mut state = state(1);
        let a = open(&mut state, 1, now);
        let (woken, w) = waker();
        let id = state.enqueue(&w);
        let mut after = Aftermath::new();
        state.checked_in();
        state.discard(a.conn, &mut after);
        assert_eq!(after.close, vec![1]);
        after.run();
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        // The waiter may open a connection in the slot: the size stays at 1.
        assert!(matches!(state.poll_waiter(id, &w), Some(None)));
        assert_eq!(state.status().size, 1);
        assert_eq!(state.status().discarded, 1);
    }

    #[test]
    fn failed_health_check_swaps_the_slot_for_another_idle_connection() {
        let now = Instant::now();
        let mut state = state(2);
        let a = open(&mut state, 1, now);
        let b = open(&mut state, 2, now);
        give_back(&mut state, a, now);
        give_back(&mut state, b, now);
        let mut after = Aftermath::new();
        let Some(Some(checked)) = state.take(now, &mut after) else {
            panic!("no idle connection");
        };
        // Connection 2 fails its check: closed, and connection 1 takes over its slot.
        let other = state.replace_failed(checked.conn, now, &mut after);
        assert_eq!(other.map(|p| p.conn), Some(1));
        assert_eq!(after.close, vec![2]);
        // Connection 1 fails too: nothing idle is left, so the slot stays, empty, to open a new one in.
        assert!(state.replace_failed(1, now, &mut after).is_none());
        after.run();
        let status = state.status();
        assert_eq!((status.size, status.idle, status.discarded), (1, 0, 2));
    }

    #[test]
    fn idle_timeout_spares_min_idle() {
        let now = Instant::now();
        let mut state = State::new(
            PoolOptions::new()
                .max_size(4)
                .min_idle(1)
                .idle_timeout(Some(Duration::from_secs(10))),
        );
        let a = open(&mut state, 1, now);
        let b = open(&mut state, 2, now);
        assert!(give_back(&mut state, a, now).is_empty());
        assert!(give_back(&mut state, b, now + Duration::from_secs(5)).is_empty());
        // At 12 s, connection 1 has idled 12 s and goes; connection 2 (7 s) stays.
        let mut after = Aftermath::new();
        state.prune(now + Duration::from_secs(12), &mut after);
        assert_eq!(after.close, vec![1]);
        after.run();
        // At 100 s connection 2 is past the timeout too, but it is the min_idle one.
        let mut after = Aftermath::new();
        state.prune(now + Duration::from_secs(100), &mut after);
        assert!(after.close.is_empty());
        after.run();
        assert_eq!(state.status().idle, 1);
        assert_eq!(state.status().size, 1);
    }

    #[test]
    fn outlived_connections_are_not_handed_out() {
        let now = Instant::now();
        let mut state = State::new(
            PoolOptions::new()
                .max_size(2)
                .max_lifetime(Some(Duration::from_secs(60))),
        );
        let a = open(&mut state, 1, now);
        give_back(&mut state, a, now);
        let mut after = Aftermath::new();
        // Past its lifetime the idle connection is closed and a new slot offered in its place.
        let grant = state.take(now + Duration::from_secs(61), &mut after);
        assert!(matches!(grant, Some(None)));
        assert_eq!(after.close, vec![1]);
        after.run();
        assert_eq!(state.status().size, 1);
        assert_eq!(state.status().discarded, 1);
    }

    #[test]
    fn min_idle_reservations_stop_at_max_size() {
        let now = Instant::now();
        let mut state = State::new(PoolOptions::new().max_size(3).min_idle(3));
        let _a = open(&mut state, 1, now);
        let _b = open(&mut state, 2, now);
        assert!(state.reserve_for_min_idle());
        assert!(!state.reserve_for_min_idle());
        assert_eq!(state.status().size, 3);
    }
}
