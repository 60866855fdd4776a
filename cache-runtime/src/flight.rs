//! In-process single-flight: concurrent misses on one key run the body once.
//!
//! The first caller becomes the leader; the others wait on the flight. The leader publishes
//! an outcome; if it panics or its future is dropped, its guard publishes `Abandoned` and one
//! of the waiters takes over. No lock is held while the body runs.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

pub(crate) enum Outcome<V> {
    /// The value that was cached (or found in Redis).
    Value(V),
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
    /// The entry's tags: a tag invalidation detaches only the flights that carry it.
    tags: Box<[String]>,
}

/// In-flight loads by key, in shards (by key hash), so concurrent misses of different keys
/// rarely wait for one another's bookkeeping.
pub(crate) struct Flights<V> {
    shards: Box<[Shard<V>]>,
}

/// One shard of the in-flight map: key → flight.
type Shard<V> = Mutex<HashMap<Arc<str>, Arc<Flight<V>>>>;

const SHARDS: usize = 16;

pub(crate) enum Joined<'a, V> {
    Leader(Leader<'a, V>),
    Follower(Arc<Flight<V>>),
}

impl<V> Flights<V> {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, key: &str) -> &Shard<V> {
        let h = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
        &self.shards[(h % SHARDS as u64) as usize]
    }

    pub(crate) fn join(&self, key: &str, tags: &[String]) -> Joined<'_, V> {
        let mut map = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = map.get(key) {
            return Joined::Follower(f.clone());
        }
        let flight = Arc::new(Flight {
            outcome: Mutex::new(None),
            notify: Notify::new(),
            tags: tags.into(),
        });
        let key: Arc<str> = Arc::from(key);
        map.insert(key.clone(), flight.clone());
        Joined::Leader(Leader {
            flights: self,
            key,
            flight,
            done: false,
        })
    }

    /// Makes later callers start a new flight for `key` instead of joining the running one,
    /// whose body began before a write and whose value must not reach callers that start
    /// after it. Callers already waiting keep their flight.
    pub(crate) fn detach(&self, key: &str) {
        self.shard(key)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// [`detach`](Self::detach) for every flight carrying `tag`; returns their keys.
    pub(crate) fn detach_tagged(&self, tag: &str) -> Vec<String> {
        let mut detached = Vec::new();
        for shard in self.shards.iter() {
            shard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|key, f| {
                    let carries = f.tags.iter().any(|t| t == tag);
                    if carries {
                        detached.push(key.to_string());
                    }
                    !carries
                });
        }
        detached
    }

    /// [`detach`](Self::detach) for every key.
    pub(crate) fn detach_all(&self) {
        for shard in self.shards.iter() {
            shard.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }
}

pub(crate) struct Leader<'a, V> {
    flights: &'a Flights<V>,
    key: Arc<str>,
    flight: Arc<Flight<V>>,
    done: bool,
}

impl<V> Leader<'_, V> {
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
        {
            let mut map = self
                .flights
                .shard(&self.key)
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if map
                .get(&*self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                map.remove(&*self.key);
            }
        }
        // Out of the map, nobody can join any more: only the followers that joined before
        // hold the flight besides this leader.
        if Arc::strong_count(&self.flight) > 1 {
            *self
                .flight
                .outcome
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(outcome());
            self.flight.notify.notify_waiters();
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
    /// Waits for the leader. `None`: the caller must try again (the leader gave up, or its
    /// result cannot be shared).
    pub(crate) async fn wait<R>(
        &self,
        rebuild: impl FnOnce(V) -> R,
        unshare: impl FnOnce(&(dyn Any + Send)) -> Option<R>,
    ) -> Option<R> {
        loop {
            // Registered before the check, so a publish in between is not missed.
            let notified = self.notify.notified();
            {
                let outcome = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
                match &*outcome {
                    None => {}
                    Some(Outcome::Value(v)) => return Some(rebuild(v.clone())),
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

    #[test]
    fn dropped_leader_releases_waiters_and_the_key() {
        let flights = Flights::<u32>::new();
        let Joined::Leader(leader) = flights.join("k", &[]) else {
            panic!("first join leads")
        };
        let Joined::Follower(f) = flights.join("k", &[]) else {
            panic!("second join follows")
        };
        drop(leader);
        assert_eq!(flights.len(), 0);
        assert_eq!(pollster::block_on(f.wait(|v| v, never)), None);
        assert!(matches!(flights.join("k", &[]), Joined::Leader(_)));
    }

    #[test]
    fn a_tag_detaches_only_the_flights_that_carry_it() {
        let flights = Flights::<u32>::new();
        let _a = flights.join("a", &["t".to_string()]);
        let _b = flights.join("b", &["u".to_string()]);
        let _c = flights.join("c", &[]);
        assert_eq!(flights.detach_tagged("t"), vec!["a".to_string()]);
        assert_eq!(flights.len(), 2);
        assert!(matches!(flights.join("a", &[]), Joined::Leader(_)));
        assert!(matches!(flights.join("b", &[]), Joined::Follower(_)));
    }

    #[test]
    fn waiters_get_the_value() {
        let flights = Flights::<u32>::new();
        let Joined::Leader(leader) = flights.join("k", &[]) else {
            panic!()
        };
        let Joined::Follower(f) = flights.join("k", &[]) else {
            panic!()
        };
        let t = std::thread::spawn(move || pollster::block_on(f.wait(|v| v + 1, never)));
        leader.finish(Outcome::Value(41));
        assert_eq!(t.join().unwrap(), Some(42));
    }
}
