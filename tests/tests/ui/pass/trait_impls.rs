//! `#[cached(in_trait)]`: methods of trait impls and a trait's default methods are cached;
//! only the method itself is generated (no companions), one cache per implementing type.
#![deny(warnings)]

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};

use cache_runtime::cached;

static LOADS: AtomicU32 = AtomicU32::new(0);

// `async fn` in a public trait: its future's `Send` is not promised (the lint's concern).
#[allow(async_fn_in_trait)]
pub trait Repo {
    fn load(&self, id: u64) -> Option<String>;
    fn count(id: u64) -> u64;
    async fn fetch(&self, id: u64) -> Result<u64, String>;

    // A default method: each implementing type gets its own cache (and keys).
    #[cached(ttl = 60, in_trait, key = "width:<id>", skip(self))]
    fn width(&self, id: u64) -> usize {
        std::mem::size_of_val(self) + id as usize
    }
}

pub struct Pg {
    tenant: u64,
}

impl Repo for Pg {
    /// Loads a user.
    #[cached(ttl = 60, in_trait, key = "user:<self.tenant>:<id>", tags = ["user:<id>"])]
    fn load(&self, id: u64) -> Option<String> {
        LOADS.fetch_add(1, Ordering::Relaxed);
        (id > 0).then(|| format!("user {id} of {}", self.tenant))
    }

    // The wrapper carries the body, so it takes the body's attributes too: a dropped
    // `expect` would leave `unused` to fail `deny(warnings)`.
    #[cached(ttl = 60, in_trait)]
    #[expect(unused_variables)]
    fn count(mut id: u64) -> u64 {
        let unused = 1;
        id += 1;
        id * 2
    }

    #[cached(ttl = 60, in_trait, skip(self))]
    async fn fetch(&self, id: u64) -> Result<u64, String> {
        if id == 0 {
            return Err("no 0".into());
        }
        Ok(id + self.tenant)
    }
}

pub struct Typed<T>(PhantomData<T>);

impl<T: Send + Sync + 'static> Repo for Typed<T> {
    // `self` skipped: every `T` shares the cache (`<Typed as Repo>::load`).
    #[cached(ttl = 60, in_trait, key = "user:<id>", skip(self))]
    fn load(&self, id: u64) -> Option<String> {
        LOADS.fetch_add(1, Ordering::Relaxed);
        Some(format!("typed {id}"))
    }

    #[cached(ttl = 60, in_trait)]
    fn count(id: u64) -> u64 {
        id * std::mem::size_of::<T>() as u64
    }

    async fn fetch(&self, id: u64) -> Result<u64, String> {
        Ok(id)
    }
}

// A trait that promises a `Send` future, and one returning the `futures` crate's alias
// (as it defines it): an `async fn` implements the first, the boxed body the second.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

pub trait SendRepo {
    fn find(&self, id: u64) -> impl std::future::Future<Output = u64> + Send;
    fn boxed(&self, id: u64) -> BoxFuture<'_, u64>;
}

static FINDS: AtomicU32 = AtomicU32::new(0);

impl SendRepo for Pg {
    #[cached(ttl = 60, in_trait, skip(self))]
    async fn find(&self, id: u64) -> u64 {
        FINDS.fetch_add(1, Ordering::Relaxed);
        id + 1
    }

    #[cached(ttl = 60, in_trait, key = "boxed:<self.tenant>:<id>")]
    fn boxed(&self, id: u64) -> BoxFuture<'_, u64> {
        Box::pin(async move {
            FINDS.fetch_add(1, Ordering::Relaxed);
            id + self.tenant
        })
    }
}

fn names() -> Vec<String> {
    cache_runtime::caches()
        .into_iter()
        .map(|c| c.name)
        .collect()
}

#[tokio::main]
pub async fn main() {
    let pg = Pg { tenant: 7 };
    assert_eq!(pg.load(1).as_deref(), Some("user 1 of 7"));
    assert_eq!(pg.load(1).as_deref(), Some("user 1 of 7"));
    assert_eq!(LOADS.load(Ordering::Relaxed), 1);
    // No companions in a trait impl: invalidate through a tag.
    cache_runtime::invalidate_tag("user:1").await.unwrap();
    assert_eq!(pg.load(1).as_deref(), Some("user 1 of 7"));
    assert_eq!(LOADS.load(Ordering::Relaxed), 2);
    assert_eq!(Pg::count(1), 4);
    assert_eq!(pg.fetch(1).await, Ok(8));
    assert_eq!(pg.fetch(0).await, Err("no 0".to_string()));
    assert_eq!(pg.find(1).await, 2);
    assert_eq!(pg.find(1).await, 2);
    assert_eq!(pg.boxed(1).await, 8);
    assert_eq!(pg.boxed(1).await, 8);
    assert_eq!(FINDS.load(Ordering::Relaxed), 2);

    // One cache per implementing type; the instantiations of a generic impl share it when
    // `self` is skipped, and keep their own without `self` (`count`).
    assert_eq!(Typed::<u8>(PhantomData).load(1).as_deref(), Some("typed 1"));
    assert_eq!(
        Typed::<u64>(PhantomData).load(1).as_deref(),
        Some("typed 1")
    );
    assert_eq!(LOADS.load(Ordering::Relaxed), 3);
    assert_eq!(Typed::<u8>::count(3), 3);
    assert_eq!(Typed::<u64>::count(3), 24);
    assert_eq!(pg.width(1), std::mem::size_of::<Pg>() + 1);
    assert_eq!(Typed::<u8>(PhantomData).width(1), 1);

    let names = names();
    assert!(
        names
            .iter()
            .any(|n| n.contains("Pg as ") && n.ends_with("Repo>::load")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.contains("Typed<u64> as")),
        "{names:?}"
    );
}
