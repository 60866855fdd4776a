//! Type arguments of a generic `impl` are erased as a function's own are: a method whose
//! `self` is skipped has one cache for every instantiation of `Self` (`Service<A>` and
//! `Service<B>` share entries, and invalidating through either drops them), while an
//! instantiation whose key types or value name the impl's parameters, or whose `self` is in
//! the key, keeps a cache of its own. Local tier only.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use cache_runtime::cached;
use cache_runtime::key::KeyPart;

pub trait Repo: Send + Sync + 'static {
    const SOURCE: &'static str;
    type Id: KeyPart + Send + Sync + 'static;
}

pub struct Pg;
pub struct Mock;

impl Repo for Pg {
    const SOURCE: &'static str = "pg";
    type Id = u64;
}

impl Repo for Mock {
    const SOURCE: &'static str = "mock";
    type Id = u64;
}

pub struct Service<R> {
    tenant: u64,
    _repo: PhantomData<R>,
}

fn service<R>(tenant: u64) -> Service<R> {
    Service {
        tenant,
        _repo: PhantomData,
    }
}

static GETS: AtomicUsize = AtomicUsize::new(0);
static KEYED: AtomicUsize = AtomicUsize::new(0);
static BY_ID: AtomicUsize = AtomicUsize::new(0);

impl<R: Repo> Service<R> {
    // The case: `self` is skipped, so `R` does not tell entries apart.
    #[cached(ttl = 300, key = "impl-user:<id>", skip(self))]
    async fn get(&self, id: u64) -> String {
        GETS.fetch_add(1, SeqCst);
        format!("user {id} from {}", R::SOURCE)
    }

    // `self` in the key: its type is part of it, one cache per instantiation.
    #[cached(ttl = 300, key = "impl-keyed:<self.tenant>:<id>")]
    fn keyed(&self, id: u64) -> String {
        KEYED.fetch_add(1, SeqCst);
        format!("{id}@{} from {}", self.tenant, R::SOURCE)
    }

    // A key type through the impl's parameter (`R::Id`): the same type for `Pg` and `Mock`
    // here, but not in general, so each `R` keeps its own cache (as `fn f<E>(id: E::Id)`).
    #[cached(ttl = 300, key = "impl-by-id:<id>", skip(self))]
    fn by_id(&self, id: R::Id) -> String {
        BY_ID.fetch_add(1, SeqCst);
        let _ = id;
        R::SOURCE.to_string()
    }

    // An explicit name is the same for every instantiation once erased.
    #[cached(ttl = 300, key = "impl-named:<id>", skip(self), name = "impl_named")]
    fn named(&self, id: u64) -> u64 {
        id
    }
}

pub struct Store<T>(PhantomData<T>);

static VALUES: AtomicUsize = AtomicUsize::new(0);
static KEYS: AtomicUsize = AtomicUsize::new(0);

impl<T: Default + Clone + Send + Sync + 'static> Store<T> {
    // The value names `T`: each `T` its own cache, as before.
    #[cached(ttl = 300, key = "store-value:<id>", skip(self))]
    fn value(&self, id: u64) -> Vec<T> {
        VALUES.fetch_add(1, SeqCst);
        vec![T::default(); id as usize]
    }
}

impl<K: KeyPart + Send + Sync + 'static> Store<K> {
    // The key's type is the impl's parameter: `Store<u8>::key(5)` and `Store<u16>::key(5)`
    // are other keys, so they stay apart.
    #[cached(ttl = 300, key = "store-key:<k>", skip(self))]
    fn key(&self, k: K) -> usize {
        KEYS.fetch_add(1, SeqCst);
        std::mem::size_of_val(&k)
    }
}

pub trait Loader {
    fn load(&self, id: u64) -> String;
}

pub struct Wrapper<T>(PhantomData<T>);

static LOADS: AtomicUsize = AtomicUsize::new(0);

impl<T: Send + Sync + 'static> Loader for Wrapper<T> {
    #[cached(ttl = 300, in_trait, key = "wrapper-load:<id>", skip(self))]
    fn load(&self, id: u64) -> String {
        LOADS.fetch_add(1, SeqCst);
        id.to_string()
    }
}

#[tokio::test]
async fn instantiations_of_a_generic_impl_share_one_cache() {
    let (pg, mock) = (service::<Pg>(1), service::<Mock>(2));
    assert_eq!(pg.get(1).await, "user 1 from pg");
    assert_eq!(
        mock.get(1).await,
        "user 1 from pg",
        "one entry for every `R`"
    );
    assert_eq!(GETS.load(SeqCst), 1);
    assert!(std::ptr::eq(
        Service::<Pg>::get_cache(),
        Service::<Mock>::get_cache()
    ));
    let name = Service::<Mock>::get_cache().name().to_string();
    assert!(name.ends_with("::Service::get"), "{name}");
    // Invalidating through one instantiation drops what the other cached.
    Service::<Mock>::invalidate_get(&mock, 1).await.unwrap();
    assert_eq!(pg.lookup_get(1).await, None);
    assert_eq!(mock.get(1).await, "user 1 from mock");
    assert_eq!(pg.lookup_get(1).await.as_deref(), Some("user 1 from mock"));
    pg.populate_get(2, "two".into()).await.unwrap();
    assert_eq!(mock.get(2).await, "two");
    // An explicit name stays as written.
    assert_eq!(pg.named(3), 3);
    assert_eq!(Service::<Mock>::named_cache().name(), "impl_named");
}

#[test]
fn self_in_the_key_keeps_one_cache_per_instantiation() {
    let (pg, mock) = (service::<Pg>(7), service::<Mock>(7));
    assert_eq!(pg.keyed(1), "1@7 from pg");
    assert_eq!(mock.keyed(1), "1@7 from mock");
    assert_eq!(KEYED.load(SeqCst), 2);
    pg.invalidate_keyed(1).unwrap();
    assert_eq!(mock.lookup_keyed(1).as_deref(), Some("1@7 from mock"));
}

#[test]
fn projections_of_the_parameter_in_the_key_stay_apart() {
    let (pg, mock) = (service::<Pg>(8), service::<Mock>(8));
    assert_eq!(pg.by_id(1), "pg");
    assert_eq!(mock.by_id(1), "mock");
    assert_eq!(BY_ID.load(SeqCst), 2);
}

#[test]
fn key_types_and_values_that_name_the_parameter_stay_apart() {
    let (s8, s16) = (Store::<u8>(PhantomData), Store::<u16>(PhantomData));
    assert_eq!(s8.value(2), vec![0u8, 0]);
    assert_eq!(s16.value(2), vec![0u16, 0]);
    assert_eq!(VALUES.load(SeqCst), 2);
    assert!(Store::<u8>::value_cache().name().contains("Store<u8>"));
    assert_eq!(s8.key(5), 1);
    assert_eq!(s16.key(5), 2);
    assert_eq!(KEYS.load(SeqCst), 2);
    s8.invalidate_key(5).unwrap();
    assert_eq!(s16.lookup_key(5), Some(2));
}

#[test]
fn trait_impls_of_a_generic_type_share_one_cache() {
    assert_eq!(Wrapper::<u8>(PhantomData).load(4), "4");
    assert_eq!(Wrapper::<u16>(PhantomData).load(4), "4");
    assert_eq!(LOADS.load(SeqCst), 1);
    let names: Vec<String> = cache_runtime::caches()
        .into_iter()
        .map(|c| c.name)
        .filter(|n| n.contains("Loader>::load"))
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].contains("Wrapper as "), "{names:?}");
}
