//! Methods that take `self` by value, as service code writes them: `self: Arc<Self>` (a
//! handle cloned into spawned tasks), `self` of a `Copy` client, `mut self` of a builder-like
//! value, `self: Box<Self>` and `self: Pin<Box<Self>>`, sync and async, the default key and
//! templates, and an `#[async_trait]` method on `self: Arc<Self>` through `dyn Trait`. The
//! wrapper moves the receiver into the body's call; the key reads it as `&Self`, so the
//! companions (which take `&self`) reach the same entries.
#![deny(warnings)]

use std::pin::Pin;
use std::sync::Arc;

use cache_runtime::cached;
use cache_runtime::key::KeyPart;

#[path = "support/runs.rs"]
mod runs;
use runs::Runs;

static RUNS: Runs = Runs::new();

#[derive(Debug, PartialEq)]
pub struct NotFound;

pub struct Service {
    tenant: u32,
}

impl Service {
    #[cached(ttl = 60, key = "by_arc:<self.tenant>:<id>")]
    pub async fn by_arc(self: Arc<Self>, id: u64) -> Result<u64, NotFound> {
        RUNS.hit();
        if id == 0 {
            return Err(NotFound);
        }
        Ok(u64::from(self.tenant) * 1000 + id)
    }

    // Clippy would have the body take `self` (as it would without `#[cached]`).
    #[allow(clippy::boxed_local)]
    #[cached(ttl = 60, skip(self))]
    pub fn boxed(self: Box<Self>, id: u64) -> u64 {
        RUNS.hit();
        u64::from(self.tenant) + id
    }
}

#[derive(Clone, Copy, KeyPart)]
pub struct Client {
    shard: u32,
}

impl Client {
    // The default key: `self` (a `KeyPart`) then `id`.
    #[cached(ttl = 60)]
    pub fn by_value(self, id: u64) -> u64 {
        RUNS.hit();
        u64::from(self.shard) * 100 + id
    }

    // `mut self` changes the method's own copy only: a hit that skips it changes nothing
    // the caller sees.
    #[cached(ttl = 60, key = "mut_value:<self.shard>:<id>")]
    pub async fn mut_value(mut self, id: u64) -> Option<u64> {
        RUNS.hit();
        self.shard += 1;
        Some(u64::from(self.shard) * 100 + id)
    }

    #[cached(ttl = 60)]
    pub async fn pinned(self: Pin<Box<Self>>, id: u64) -> u64 {
        RUNS.hit();
        u64::from(self.shard) * 10 + id
    }
}

/// `Send` but not `Sync` (a `Cell`): a by-value method's future is `Send`, and so are its
/// companions', which take `&self` only to build the key.
#[derive(Clone)]
pub struct Counter {
    shard: u32,
    calls: std::cell::Cell<u32>,
}

impl Counter {
    #[cached(ttl = 60, key = "counter:<self.shard>:<name>", purge = ["/c/<name>"])]
    pub async fn named(self, name: &str) -> u64 {
        RUNS.hit();
        self.calls.set(self.calls.get() + 1);
        u64::from(self.shard) + name.len() as u64
    }
}

fn send<T: Send>(t: T) -> T {
    t
}

#[async_trait::async_trait]
pub trait Repo {
    async fn get(self: Arc<Self>, id: u64) -> Result<u64, NotFound>;
}

#[async_trait::async_trait]
impl Repo for Client {
    #[cached(ttl = 60, in_trait, skip(self))]
    async fn get(self: Arc<Self>, id: u64) -> Result<u64, NotFound> {
        RUNS.hit();
        Ok(u64::from(self.shard) + id * 7)
    }
}

pub fn main() {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run());
}

async fn run() {
    let before = RUNS.get();
    let service = Arc::new(Service { tenant: 3 });
    assert_eq!(service.clone().by_arc(7).await, Ok(3007));
    assert_eq!(service.clone().by_arc(7).await, Ok(3007));
    assert_eq!(RUNS.get() - before, 1, "the second call is a hit");
    assert_eq!(service.lookup_by_arc(7).await, Some(3007));
    // `Err` is not cached.
    assert_eq!(service.clone().by_arc(0).await, Err(NotFound));
    assert_eq!(service.clone().by_arc(0).await, Err(NotFound));
    assert_eq!(RUNS.get() - before, 3);
    service
        .invalidate_by_arc(7)
        .await
        .expect("local invalidation");
    assert_eq!(service.lookup_by_arc(7).await, None);
    assert_eq!(service.clone().by_arc(7).await, Ok(3007));
    assert_eq!(
        RUNS.get() - before,
        4,
        "the invalidated entry is loaded again"
    );

    let before = RUNS.get();
    assert_eq!(Box::new(Service { tenant: 1 }).boxed(5), 6);
    // Skipped `self`: another instance shares the entry.
    assert_eq!(Box::new(Service { tenant: 2 }).boxed(5), 6);
    assert_eq!(RUNS.get() - before, 1);
    assert_eq!(Service { tenant: 9 }.lookup_boxed(5), Some(6));

    let before = RUNS.get();
    let a = Client { shard: 4 };
    let b = Client { shard: 5 };
    assert_eq!(a.by_value(1), 401);
    assert_eq!(a.by_value(1), 401);
    assert_eq!(b.by_value(1), 501, "`self` is part of the default key");
    assert_eq!(RUNS.get() - before, 2);
    assert_eq!(a.lookup_by_value(1), Some(401));
    a.invalidate_by_value(1).expect("local invalidation");
    assert_eq!(a.lookup_by_value(1), None);
    assert_eq!(b.lookup_by_value(1), Some(501), "only `a`'s entry went");

    let before = RUNS.get();
    assert_eq!(a.mut_value(2).await, Some(502));
    assert_eq!(a.mut_value(2).await, Some(502));
    assert_eq!(RUNS.get() - before, 1);
    assert_eq!(a.shard, 4, "the caller's copy never changes");
    assert_eq!(a.lookup_mut_value(2).await, Some(502));

    let before = RUNS.get();
    assert_eq!(Box::pin(a).pinned(3).await, 43);
    assert_eq!(Box::pin(a).pinned(3).await, 43);
    assert_eq!(RUNS.get() - before, 1);
    assert_eq!(a.lookup_pinned(3).await, Some(43));

    let before = RUNS.get();
    let counter = Counter {
        shard: 1,
        calls: std::cell::Cell::new(0),
    };
    assert_eq!(send(counter.clone().named("ab")).await, 3);
    assert_eq!(send(counter.lookup_named("ab")).await, Some(3));
    send(counter.populate_named("ab", 7))
        .await
        .expect("local write");
    assert_eq!(counter.clone().named("ab").await, 7);
    // The companion's future does not borrow `counter` or the argument.
    let name = String::from("ab");
    let invalidated = send(counter.invalidate_named(&name));
    drop(name);
    invalidated.await.expect("local invalidation");
    assert_eq!(counter.clone().named("ab").await, 3);
    assert_eq!(RUNS.get() - before, 2);

    let before = RUNS.get();
    let repo: Arc<dyn Repo + Send + Sync> = Arc::new(b);
    assert_eq!(repo.clone().get(2).await, Ok(19));
    assert_eq!(
        Arc::new(a).get(2).await,
        Ok(19),
        "skipped `self`: one entry"
    );
    assert_eq!(RUNS.get() - before, 1);
}
