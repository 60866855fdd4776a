//! In-process single-flight: concurrent misses on one key run the body once.
//!
//! The first caller becomes the leader; the others wait on the flight. The leader publishes
//! an outcome; if it panics or its future is dropped, its guard publishes `Abandoned` and one
//! of the waiters takes over. No lock is held while the body runs.
//!
//! A leader nobody joins costs no allocation (most Redis hits and misses): its slot in the
//! map holds the key inline (up to 23 bytes) and no flight; the shared [`Flight`] is created
//! by the first follower. A slot detached by a write while followers wait moves to its
//! shard's detached list, where its leader still finds it to release them.
//!
//! A key is hashed once per join: the hash picks the shard and is kept in the slot (no
//! rehash on growth) and by the leader, who finds its slot again by hash and leader number
//! (no copy of the key, no second hash).

use std::any::Any;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use smol_str::SmolStr;
use tokio::sync::Notify;

pub(crate) enum Outcome<V> {
    /// The value that was cached (or found in Redis).
    Value(V),
    /// A value its sealed flight could not vouch for: Redis refused its store, so a write
    /// covering its key landed while its body ran (see [`Leader::seal`]). Callers that joined
    /// this flight try again; callers that join again after such a refusal take it (any
    /// flight they join started after the one they first joined was sealed, so its body read
    /// the source after they started).
    Unverified(V),
    /// A non-cached result (an `Err`, a `None`) that waiters can rebuild.
    Shared(Box<dyn Any + Send>),
    /// A non-cached result that cannot be shared (non-`Clone` error): waiters run the body.
    Unshareable,
    /// The leader panicked or was cancelled.
    Abandoned,
}

pub(crate) struct Flight<V> {
    outcome: Mutex<Option<Outcome<V>>>,
    notify: Notify,
}

/// A leader's entry in the map.
struct Slot<V> {
    /// The key's hash (see [`Flights::hash`]).
    hash: u64,
    key: SmolStr,
    /// Which leader (unique per [`Flights`]): a detached slot's key may lead again.
    leader: u64,
    /// The entry's tags: a tag invalidation detaches only the flights that carry them.
    tags: Box<[String]>,
    /// Created by the first follower.
    flight: Option<Arc<Flight<V>>>,
    /// The leader may have sent its Redis read (from the slot's creation until
    /// [`Leader::computing`]): a caller that started after the slot was created joins it
    /// late (see [`Joined::Late`]).
    reading: bool,
}

/// In-flight loads by key, in shards (by key hash), so concurrent misses of different keys
/// rarely wait for one another's bookkeeping.
pub(crate) struct Flights<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    leaders: AtomicU64,
    /// Keys come from callers' arguments: hashed with a random seed (foldhash, several times
    /// faster than the default SipHash on short keys).
    hasher: foldhash::fast::RandomState,
}

/// One shard: the slots by key, and the detached slots whose followers still wait.
struct Shard<V> {
    slots: hashbrown::HashTable<Slot<V>>,
    detached: Vec<(u64, Arc<Flight<V>>)>,
}

const SHARDS: usize = 16;

pub(crate) enum Joined<'a, V> {
    Leader(Leader<'a, V>),
    Follower(Arc<Flight<V>>),
    /// The key's leader may have sent its Redis read before this caller started: that read
    /// may have executed before a write that returned before this caller started (in another
    /// process, unheard here), so what it finds is not this caller's to take. The caller
    /// waits for the flight and takes only a value its body computed (the body starts after
    /// the read found nothing, so after the caller joined); a value the leader read sends it
    /// round again, where every flight it can meet was created after it started
    /// (docs/PROTOCOL.md §13 F9).
    Late(Arc<Flight<V>>),
}

/// How a caller joins its key's flight.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Join {
    /// A new leader reads Redis first. `since` is [`Flights::since`] taken at the caller's
    /// start: a flight still reading whose leader is older is joined [`Joined::Late`]; one
    /// created since, whatever it reads, was created after the caller started.
    ReadsFirst { since: u64 },
    /// No Redis read before the body (no Redis tier): callers always join.
    Computes,
}

impl<V> Flights<V> {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        slots: hashbrown::HashTable::new(),
                        detached: Vec::new(),
                    })
                })
                .collect(),
            leaders: AtomicU64::new(0),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The id the next leader will get: every flight created after this call leads with an
    /// id at least this, so its Redis read is sent after this call (a caller takes it at its
    /// start, [`Join::ReadsFirst`]).
    pub(crate) fn since(&self) -> u64 {
        // Paired with the leaders' `fetch_add`: an id not below the value read here was
        // handed out after this load.
        self.leaders.load(Ordering::SeqCst)
    }

    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The shard of a key's hash: bits the shard's table does not use (it takes the low ones
    /// for buckets and the top seven as tags).
    fn shard_of(hash: u64) -> usize {
        (hash >> 32) as usize % SHARDS
    }

    fn lock(&self, shard: usize) -> std::sync::MutexGuard<'_, Shard<V>> {
        self.shards[shard].lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn join(&self, key: &str, tags: &[String], how: Join) -> Joined<'_, V> {
        let hash = self.hash(key);
        let shard = Self::shard_of(hash);
        let mut map = self.lock(shard);
        if let Some(slot) = map.slots.find_mut(hash, |s| s.key == key) {
            if body_running_here(self, slot.leader) {
                // Re-entrant: a leader of its own, outside the map (its store is then the
                // conditional one, as after a write: `detached`).
                drop(map);
                return Joined::Leader(Leader {
                    flights: self,
                    sealed: None,
                    hash,
                    leader: self.leaders.fetch_add(1, Ordering::SeqCst),
                    done: false,
                    reentrant: true,
                });
            }
            let late = match how {
                Join::ReadsFirst { since } => slot.reading && slot.leader < since,
                Join::Computes => false,
            };
            let flight = slot.flight.get_or_insert_with(|| {
                Arc::new(Flight {
                    outcome: Mutex::new(None),
                    notify: Notify::new(),
                })
            });
            return match late {
                true => Joined::Late(flight.clone()),
                false => Joined::Follower(flight.clone()),
            };
        }
        let leader = self.leaders.fetch_add(1, Ordering::SeqCst);
        map.slots.insert_unique(
            hash,
            Slot {
                hash,
                key: SmolStr::new(key),
                leader,
                // An untagged key's slot builds no list (not even an empty one's copy).
                tags: match tags {
                    [] => Box::default(),
                    tags => tags.into(),
                },
                flight: None,
                reading: how != Join::Computes,
            },
            |s| s.hash,
        );
        Joined::Leader(Leader {
            flights: self,
            sealed: None,
            hash,
            leader,
            done: false,
            reentrant: false,
        })
    }

    /// Makes later callers start a new flight for `key` instead of joining the running one,
    /// whose body began before a write and whose value must not reach callers that start
    /// after it. Callers already waiting keep their flight.
    pub(crate) fn detach(&self, key: &str) {
        let hash = self.hash(key);
        let mut map = self.lock(Self::shard_of(hash));
        if let Ok(slot) = map.slots.find_entry(hash, |s| s.key == key) {
            let (slot, _) = slot.remove();
            map.park(slot);
        }
    }

    /// [`detach`](Self::detach) for every flight carrying `tag`; returns their keys.
    pub(crate) fn detach_tagged(&self, tag: &str) -> Vec<String> {
        let mut detached = Vec::new();
        for shard in 0..SHARDS {
            let mut map = self.lock(shard);
            let carrying: Vec<Slot<V>> = map
                .slots
                .extract_if(|slot| slot.tags.iter().any(|t| t == tag))
                .collect();
            for slot in carrying {
                detached.push(slot.key.to_string());
                map.park(slot);
            }
        }
        detached
    }

    /// [`detach`](Self::detach) for every key.
    pub(crate) fn detach_all(&self) {
        for shard in 0..SHARDS {
            let mut map = self.lock(shard);
            let slots: Vec<Slot<V>> = map.slots.drain().collect();
            for slot in slots {
                map.park(slot);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        (0..SHARDS).map(|s| self.lock(s).slots.len()).sum()
    }

    #[cfg(test)]
    fn parked(&self) -> usize {
        (0..SHARDS).map(|s| self.lock(s).detached.len()).sum()
    }
}

impl<V> Shard<V> {
    /// Keeps a detached slot's flight for its leader, if anyone waits on it.
    fn park(&mut self, slot: Slot<V>) {
        if let Some(flight) = slot.flight {
            self.detached.push((slot.leader, flight));
        }
    }
}

// A call whose key's flight is led by a body running on this very thread, in the poll that
// made this call, is re-entrant: the body calls its own function with the same key, directly
// or through other functions (a reload-and-retry, a fallback that goes round). Waiting for
// that flight would wait for itself forever, so the call leads a flight of its own that
// nobody joins. Concurrent calls of one key in one task (`join_all` over repeated ids) are
// not nested in each other's polls: they still share one flight.
thread_local! {
    /// The leaders (flights instance, leader number) whose body is being polled on this
    /// thread, innermost last.
    static RUNNING: std::cell::RefCell<Vec<(usize, u64)>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn body_running_here<V>(flights: &Flights<V>, leader: u64) -> bool {
    let me = flights as *const Flights<V> as usize;
    RUNNING.with(|r| r.borrow().iter().any(|&(f, l)| f == me && l == leader))
}

pin_project_lite::pin_project! {
    /// A leader's body, marked as running on the thread while it is polled (see
    /// [`body_running_here`]).
    pub(crate) struct Running<F> {
        #[pin]
        body: F,
        mark: (usize, u64),
    }
}

/// Unmarks a running body, also when it panics.
struct Unmark;

impl Drop for Unmark {
    fn drop(&mut self) {
        RUNNING.with(|r| r.borrow_mut().pop());
    }
}

impl<F: Future> Future for Running<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        RUNNING.with(|r| r.borrow_mut().push(*this.mark));
        let _unmark = Unmark;
        this.body.poll(cx)
    }
}

pub(crate) struct Leader<'a, V> {
    flights: &'a Flights<V>,
    /// Taken out of the map by [`seal`](Self::seal): the flight its followers wait on, if any.
    sealed: Option<Option<Arc<Flight<V>>>>,
    /// The key's hash: with `leader`, what finds this flight's slot.
    hash: u64,
    leader: u64,
    done: bool,
    /// Led from inside the key's running body (see [`body_running_here`]).
    reentrant: bool,
}

impl<V> Leader<'_, V> {
    /// Whether this call was made from inside its key's running body: the caller that holds
    /// the key's distributed lock, if any, is the one it runs for, so it does not wait for it.
    pub(crate) fn reentrant(&self) -> bool {
        self.reentrant
    }

    /// `body`, marked while it is polled as this leader's running body: a call it makes for
    /// the same key does not wait for this flight.
    pub(crate) fn running<F: Future>(&self, body: F) -> Running<F> {
        Running {
            body,
            mark: (self.flights as *const Flights<V> as usize, self.leader),
        }
    }

    /// Runs a blocking body, marked while it runs as this leader's running body (the
    /// synchronous [`running`](Self::running)).
    pub(crate) fn run_marked<T>(&self, body: impl FnOnce() -> T) -> T {
        let mark = (self.flights as *const Flights<V> as usize, self.leader);
        RUNNING.with(|r| r.borrow_mut().push(mark));
        let _unmark = Unmark;
        body()
    }

    /// Whether a write covering this key (an invalidation, a populate, its tag, a clear;
    /// here or heard on the bus) detached this flight since it started: its body may have
    /// read the source before that write.
    pub(crate) fn detached(&self) -> bool {
        if self.sealed.is_some() {
            return true;
        }
        let map = self.flights.lock(Flights::<V>::shard_of(self.hash));
        map.slots
            .find(self.hash, |s| s.leader == self.leader)
            .is_none()
    }

    /// The leader's Redis read found nothing and its body is about to run: callers that start
    /// from now on join (the body reads the source after they started; its store is checked
    /// for writes since, §7.2).
    pub(crate) fn computing(&self) {
        let mut map = self.flights.lock(Flights::<V>::shard_of(self.hash));
        if let Some(slot) = map.slots.find_mut(self.hash, |s| s.leader == self.leader) {
            slot.reading = false;
        }
    }

    /// Closes this flight: later callers of the key start a flight of their own, and what
    /// this leader publishes reaches exactly the callers that joined before. Returns whether
    /// any did. A check sent to Redis after this is therefore later than every follower's
    /// start: a value it vouches for is fresh for all of them (docs/PROTOCOL.md §7.2).
    pub(crate) fn seal(&mut self) -> bool {
        let flight = self.take_flight();
        let joined = flight.is_some();
        self.sealed = Some(flight);
        joined
    }

    /// Takes this flight out of the map (or of its shard's detached list): its followers'
    /// flight, if anyone joined.
    fn take_flight(&mut self) -> Option<Arc<Flight<V>>> {
        if let Some(sealed) = self.sealed.take() {
            return sealed;
        }
        let mut map = self.flights.lock(Flights::<V>::shard_of(self.hash));
        let (hash, leader) = (self.hash, self.leader);
        if let Ok(slot) = map.slots.find_entry(hash, |s| s.leader == leader) {
            slot.remove().0.flight
        } else {
            // Detached by a write: found on the detached list if anyone waits.
            let at = map.detached.iter().position(|(l, _)| *l == self.leader);
            at.map(|i| map.detached.swap_remove(i).1)
        }
    }

    pub(crate) fn finish(self, outcome: Outcome<V>) {
        self.finish_with(|| outcome);
    }

    /// Publishes the outcome `outcome()` builds, which is called only if another caller
    /// joined this flight (on most hits nobody did, and the value is not cloned for nobody).
    pub(crate) fn finish_with(mut self, outcome: impl FnOnce() -> Outcome<V>) {
        self.publish(outcome);
    }

    fn publish(&mut self, outcome: impl FnOnce() -> Outcome<V>) {
        self.done = true;
        let flight = self.take_flight();
        // Out of the map, nobody can join any more: only the followers that joined before
        // hold the flight.
        if let Some(flight) = flight {
            *flight.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome());
            flight.notify.notify_waiters();
        }
    }
}

impl<V> Drop for Leader<'_, V> {
    fn drop(&mut self) {
        if !self.done {
            self.publish(|| Outcome::Abandoned);
        }
    }
}

impl<V: Clone> Flight<V> {
    /// Waits for the leader: what `take` makes of its value (from a reference, so that a
    /// caller that refuses a value, say by its source, copies nothing). `None`: the caller
    /// must try again (the leader gave up, its result cannot be shared, or its value is
    /// [`Outcome::Unverified`] and `take_unverified` is false).
    pub(crate) async fn wait<R>(
        &self,
        take: impl FnOnce(&V) -> R,
        unshare: impl FnOnce(&(dyn Any + Send)) -> Option<R>,
        take_unverified: bool,
    ) -> Option<R> {
        loop {
            // Registered before the check, so a publish in between is not missed.
            let notified = self.notify.notified();
            {
                let outcome = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
                match &*outcome {
                    None => {}
                    Some(Outcome::Value(v)) => return Some(take(v)),
                    Some(Outcome::Unverified(v)) if take_unverified => return Some(take(v)),
                    Some(Outcome::Unverified(_)) => return None,
                    Some(Outcome::Shared(b)) => return unshare(b.as_ref()),
                    Some(Outcome::Unshareable | Outcome::Abandoned) => return None,
                }
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never(_: &(dyn Any + Send)) -> Option<u32> {
        None
    }

    /// `join` by a caller on another thread.
    fn join_elsewhere<'a>(flights: &'a Flights<u32>, key: &str) -> Joined<'a, u32> {
        std::thread::scope(|s| {
            s.spawn(|| flights.join(key, &[], Join::Computes))
                .join()
                .unwrap()
        })
    }

    #[test]
    fn a_join_from_inside_the_running_body_leads_apart_and_others_still_follow() {
        let flights = Flights::<u32>::new();
        let Joined::Leader(outer) = flights.join("k", &[], Join::Computes) else {
            panic!("first join leads")
        };
        // A call the leader's body makes for the same key: re-entrant.
        let inner =
            pollster::block_on(outer.running(async { flights.join("k", &[], Join::Computes) }));
        let Joined::Leader(inner) = inner else {
            panic!("re-entrant: leads apart (never waits for itself)")
        };
        assert!(
            inner.detached(),
            "outside the map: its store is the conditional one"
        );
        // A call outside the body (another caller, or a sibling in the same task) follows.
        let Joined::Follower(sibling) = flights.join("k", &[], Join::Computes) else {
            panic!("a call not nested in the body follows")
        };
        let Joined::Follower(other) = join_elsewhere(&flights, "k") else {
            panic!("another thread follows")
        };
        // Another key's body running does not make this key's call re-entrant.
        let Joined::Leader(b) = flights.join("b", &[], Join::Computes) else {
            panic!("leads")
        };
        let nested =
            pollster::block_on(b.running(async { flights.join("k", &[], Join::Computes) }));
        assert!(matches!(nested, Joined::Follower(_)));
        inner.finish(Outcome::Value(1));
        assert_eq!(flights.len(), 2, "the first flight runs on");
        outer.finish(Outcome::Value(2));
        assert_eq!(
            pollster::block_on(sibling.wait(|v| *v, never, false)),
            Some(2)
        );
        assert_eq!(
            pollster::block_on(other.wait(|v| *v, never, false)),
            Some(2)
        );
        b.finish(Outcome::Value(3));
        assert_eq!(flights.len(), 0);
    }

    #[test]
    fn the_mark_is_the_running_polls_only_and_survives_a_panic() {
        let flights = Flights::<u32>::new();
        let Joined::Leader(l) = flights.join("k", &[], Join::Computes) else {
            panic!("leads")
        };
        let id = l.leader;
        assert!(!body_running_here(&flights, id));
        assert!(pollster::block_on(
            l.running(async { body_running_here(&flights, id) })
        ));
        assert!(!body_running_here(&flights, id), "unmarked after the poll");
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pollster::block_on(l.running(async { panic!("body") }))
        }));
        assert!(panicked.is_err());
        assert!(!body_running_here(&flights, id), "unmarked after a panic");
        assert!(RUNNING.with(|r| r.borrow().is_empty()));
    }

    #[test]
    fn a_caller_newer_than_a_reading_flight_is_late_and_an_older_one_follows() {
        let flights: Flights<u32> = Flights::new();
        // A caller that started before the flight was created: its leader's read is sent
        // after that caller started.
        let older = Join::ReadsFirst {
            since: flights.since(),
        };
        let Joined::Leader(leader) = flights.join("k", &[], older) else {
            panic!("first caller leads");
        };
        let Joined::Follower(first) = flights.join("k", &[], older) else {
            panic!("a caller older than the flight follows");
        };
        // A caller that started after the flight was created: the read may predate it.
        let newer = Join::ReadsFirst {
            since: flights.since(),
        };
        let Joined::Late(late) = flights.join("k", &[], newer) else {
            panic!("a caller newer than a reading flight is late");
        };
        assert!(Arc::ptr_eq(&first, &late), "one flight, one read");
        // Once the body runs, newer callers follow too (its value is computed after them).
        leader.computing();
        let Joined::Follower(after) = flights.join("k", &[], newer) else {
            panic!("callers follow while the body runs");
        };
        assert!(Arc::ptr_eq(&late, &after));
        drop(leader);
        // The late caller goes round: any flight it meets now was created after it started.
        let Joined::Leader(_next) = flights.join("k", &[], newer) else {
            panic!("the key's flight is gone: it leads");
        };
        assert!(matches!(flights.join("k", &[], newer), Joined::Follower(_)));
        // Without a read first, nobody is ever late.
        let Joined::Leader(_local) = flights.join("l", &[], Join::Computes) else {
            panic!("first caller leads");
        };
        let newest = Join::ReadsFirst {
            since: flights.since(),
        };
        assert!(matches!(
            flights.join("l", &[], newest),
            Joined::Follower(_)
        ));
    }

    #[test]
    fn dropped_leader_releases_waiters_and_the_key() {
        let flights = Flights::<u32>::new();
        let Joined::Leader(leader) = flights.join("k", &[], Join::Computes) else {
            panic!("first join leads")
        };
        let Joined::Follower(f) = flights.join("k", &[], Join::Computes) else {
            panic!("second join follows")
        };
        drop(leader);
        assert_eq!(flights.len(), 0);
        assert_eq!(pollster::block_on(f.wait(|v| *v, never, false)), None);
        assert!(matches!(
            flights.join("k", &[], Join::Computes),
            Joined::Leader(_)
        ));
    }

    #[test]
    fn a_tag_detaches_only_the_flights_that_carry_it() {
        let flights = Flights::<u32>::new();
        let _a = flights.join("a", &["t".to_string()], Join::Computes);
        let _b = flights.join("b", &["u".to_string()], Join::Computes);
        let _c = flights.join("c", &[], Join::Computes);
        assert_eq!(flights.detach_tagged("t"), vec!["a".to_string()]);
        assert_eq!(flights.len(), 2);
        assert!(matches!(
            flights.join("a", &[], Join::Computes),
            Joined::Leader(_)
        ));
        assert!(matches!(
            flights.join("b", &[], Join::Computes),
            Joined::Follower(_)
        ));
    }

    #[test]
    fn waiters_get_the_value() {
        let flights = Flights::<u32>::new();
        let Joined::Leader(leader) = flights.join("k", &[], Join::Computes) else {
            panic!()
        };
        let Joined::Follower(f) = flights.join("k", &[], Join::Computes) else {
            panic!()
        };
        let t = std::thread::spawn(move || pollster::block_on(f.wait(|v| v + 1, never, false)));
        leader.finish(Outcome::Value(41));
        assert_eq!(t.join().unwrap(), Some(42));
    }

    #[test]
    fn a_leader_knows_whether_a_write_detached_it() {
        let flights = Flights::<u32>::new();
        let Joined::Leader(a) = flights.join("a", &["t".to_string()], Join::Computes) else {
            panic!("first join leads")
        };
        let Joined::Leader(b) = flights.join("b", &[], Join::Computes) else {
            panic!("another key leads apart")
        };
        flights.detach("b");
        assert!(!a.detached(), "a write to another key");
        assert!(b.detached());
        let Joined::Leader(b2) = flights.join("b", &[], Join::Computes) else {
            panic!("a detached key leads again")
        };
        assert!(!b2.detached(), "the new leader started after the write");
        assert!(b.detached(), "the old one still knows");
        flights.detach_tagged("t");
        assert!(a.detached(), "its tag");
        flights.detach_all();
        assert!(b2.detached(), "a clear");
    }

    #[test]
    fn a_detached_flight_still_reaches_its_followers_and_a_new_leader_runs_apart() {
        let flights = Flights::<u32>::new();
        let Joined::Leader(old) = flights.join("k", &["t".to_string()], Join::Computes) else {
            panic!("first join leads")
        };
        let Joined::Follower(waiting) = flights.join("k", &[], Join::Computes) else {
            panic!("second join follows")
        };
        // A write detaches the running flight: the next caller leads a new one.
        assert_eq!(flights.detach_tagged("t"), vec!["k".to_string()]);
        assert_eq!(flights.parked(), 1);
        let Joined::Leader(new) = flights.join("k", &[], Join::Computes) else {
            panic!("a detached key leads again")
        };
        let Joined::Follower(late) = flights.join("k", &[], Join::Computes) else {
            panic!("joins the new flight")
        };
        // The old leader's outcome reaches only the follower that joined it.
        old.finish(Outcome::Value(1));
        assert_eq!(flights.parked(), 0);
        assert_eq!(
            pollster::block_on(waiting.wait(|v| *v, never, false)),
            Some(1)
        );
        new.finish(Outcome::Value(2));
        assert_eq!(pollster::block_on(late.wait(|v| *v, never, false)), Some(2));
        assert_eq!(flights.len(), 0);
    }

    #[test]
    fn a_sealed_flight_takes_no_new_callers_and_reports_its_followers() {
        let flights = Flights::<u32>::new();
        let Joined::Leader(mut alone) = flights.join("a", &[], Join::Computes) else {
            panic!("first join leads")
        };
        assert!(!alone.seal(), "nobody joined");
        let Joined::Leader(next) = flights.join("a", &[], Join::Computes) else {
            panic!("a sealed flight is not joined: the caller leads")
        };
        alone.finish(Outcome::Value(1));
        next.finish(Outcome::Value(2));

        let Joined::Leader(mut old) = flights.join("b", &[], Join::Computes) else {
            panic!()
        };
        let Joined::Follower(first) = flights.join("b", &[], Join::Computes) else {
            panic!("joins the running flight")
        };
        let Joined::Follower(second) = flights.join("b", &[], Join::Computes) else {
            panic!()
        };
        assert!(old.seal(), "two callers joined");
        assert!(old.detached(), "sealed: its store is the checked one");
        let Joined::Leader(new) = flights.join("b", &[], Join::Computes) else {
            panic!("sealed: the next caller leads")
        };
        // Redis refused the store: its followers try again, unless they are trying again.
        old.finish(Outcome::Unverified(1));
        assert_eq!(pollster::block_on(first.wait(|v| *v, never, false)), None);
        assert_eq!(
            pollster::block_on(second.wait(|v| *v, never, true)),
            Some(1)
        );
        new.finish(Outcome::Value(2));
        assert_eq!((flights.len(), flights.parked()), (0, 0));
    }

    #[test]
    fn a_sealed_leader_dropped_releases_its_followers() {
        let flights = Flights::<u32>::new();
        let Joined::Leader(mut leader) = flights.join("k", &[], Join::Computes) else {
            panic!()
        };
        let Joined::Follower(f) = flights.join("k", &[], Join::Computes) else {
            panic!()
        };
        // Detached by a write first, then sealed: the parked flight is the one sealed.
        flights.detach("k");
        assert!(leader.seal());
        assert_eq!(flights.parked(), 0, "taken by the seal");
        drop(leader);
        assert_eq!(
            pollster::block_on(f.wait(|v| *v, never, true)),
            None,
            "abandoned"
        );
    }

    #[test]
    fn a_leader_nobody_joined_leaves_nothing_behind() {
        let flights = Flights::<u32>::new();
        let long_key = "k".repeat(100);
        for key in ["short", long_key.as_str()] {
            let Joined::Leader(l) = flights.join(key, &[], Join::Computes) else {
                panic!()
            };
            flights.detach(key);
            assert_eq!(flights.parked(), 0, "no follower: nothing to keep");
            l.finish(Outcome::Value(1));
            let Joined::Leader(l) = flights.join(key, &[], Join::Computes) else {
                panic!()
            };
            drop(l);
        }
        assert_eq!((flights.len(), flights.parked()), (0, 0));
    }
}
