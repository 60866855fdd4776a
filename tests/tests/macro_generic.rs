//! Generic `impl`s and generic functions: one cache per instantiation (type identity in the
//! cache's name and in the key), in both directions, locally and in Redis; type parameters
//! that only skipped parameters have are skipped with them (one cache, one Redis key). Every
//! test starts the harness's Redis first: the runtime is configured once per process.

use std::marker::PhantomData;

use cache_runtime::cached;
use cache_runtime::key::KeyPart;
use cache_tests::shared_redis;

struct Typed<T> {
    id: u64,
    _t: PhantomData<T>,
}

fn typed<T>(id: u64) -> Typed<T> {
    Typed {
        id,
        _t: PhantomData,
    }
}

impl<T: Send + Sync + 'static> Typed<T> {
    // The case: a template key that does not mention `T`.
    #[cached(ttl = 300, key = "typed:<self.id>:<x>")]
    fn sized_by_id(&self, x: usize) -> usize {
        std::mem::size_of::<T>() + x
    }

    // An associated function without `self`, same template for every `T`, in Redis.
    #[cached(tier = "redis", ttl = 300, key = "sized:<id>")]
    fn sized(id: u64) -> u64 {
        std::mem::size_of::<T>() as u64 * 1000 + id
    }
}

// A generic function whose parameter is a `KeyPart` and whose value is the type parameter.
#[cached(ttl = 300)]
fn echo<T: KeyPart + Clone + Send + Sync + 'static>(x: T) -> T {
    x
}

#[test]
fn u8_first_then_u64() {
    shared_redis();
    assert_eq!(typed::<u8>(1).sized_by_id(0), 1);
    assert_eq!(typed::<u64>(1).sized_by_id(0), 8);
    assert_eq!(typed::<u8>(1).sized_by_id(0), 1);
}

#[test]
fn u64_first_then_u8() {
    shared_redis();
    assert_eq!(typed::<u64>(2).sized_by_id(0), 8);
    assert_eq!(typed::<u8>(2).sized_by_id(0), 1);
    assert_eq!(typed::<u64>(2).sized_by_id(0), 8);
}

#[test]
fn companions_reach_their_own_instantiation() {
    shared_redis();
    let (small, big) = (typed::<u16>(3), typed::<u32>(3));
    assert_eq!(small.sized_by_id(1), 3);
    assert_eq!(big.sized_by_id(1), 5);
    assert_eq!(small.lookup_sized_by_id(1), Some(3));
    assert_eq!(big.lookup_sized_by_id(1), Some(5));
    small.invalidate_sized_by_id(1).unwrap();
    assert_eq!(small.lookup_sized_by_id(1), None);
    assert_eq!(
        big.lookup_sized_by_id(1),
        Some(5),
        "the other instantiation keeps its entry"
    );
    // Each instantiation is its own cache, named after it.
    let (n16, n32) = (
        Typed::<u16>::sized_by_id_cache().name().to_string(),
        Typed::<u32>::sized_by_id_cache().name().to_string(),
    );
    assert!(n16.ends_with("Typed<u16>::sized_by_id"), "{n16}");
    assert!(n32.ends_with("Typed<u32>::sized_by_id"), "{n32}");
    assert!(!std::ptr::eq(
        Typed::<u16>::sized_by_id_cache(),
        Typed::<u32>::sized_by_id_cache()
    ));
    // The same instantiation always gets the same cache.
    assert!(std::ptr::eq(
        Typed::<u16>::sized_by_id_cache(),
        Typed::<u16>::sized_by_id_cache()
    ));
}

/// A type argument whose name has `->` (a `fn` pointer, `dyn Fn(u8) -> u8`): the wrapper
/// and its companions still find one cache (the `>` of `->` is no bracket).
#[test]
fn arrow_type_arguments_keep_one_cache() {
    shared_redis();
    let f = typed::<fn(u8) -> u8>(4);
    assert_eq!(f.sized_by_id(1), std::mem::size_of::<fn(u8) -> u8>() + 1);
    assert_eq!(f.lookup_sized_by_id(1), Some(f.sized_by_id(1)));
    assert_eq!(
        Typed::<fn(u8) -> u8>::sized_by_id_cache()
            .stats()
            .body_calls,
        1
    );
    f.invalidate_sized_by_id(1).unwrap();
    assert_eq!(f.lookup_sized_by_id(1), None);
    assert!(Typed::<fn(u8) -> u8>::sized_by_id_cache()
        .name()
        .ends_with("Typed<fn(u8) -> u8>::sized_by_id"));
    let b = typed::<Box<dyn Fn(u8) -> u8 + Send + Sync>>(4);
    b.sized_by_id(2);
    assert!(b.lookup_sized_by_id(2).is_some());
}

#[test]
fn generic_function_per_instantiation() {
    shared_redis();
    assert_eq!(echo(7u8), 7u8);
    assert_eq!(echo(7u64), 7u64);
    assert_eq!(echo("seven".to_string()), "seven");
    assert_eq!(lookup_echo(7u8), Some(7u8));
    assert_eq!(lookup_echo(7u32), None, "u32 was never called");
    assert_ne!(echo_cache::<u8>().name(), echo_cache::<u64>().name());
    assert_eq!(echo_cache::<u8>().stats().body_calls, 1);
}

#[test]
fn redis_keys_carry_the_instantiation() {
    let server = shared_redis();
    assert_eq!(Typed::<u8>::sized(9), 1009);
    assert_eq!(Typed::<u64>::sized(9), 8009);
    // Both orders, from a cold key each.
    assert_eq!(Typed::<u64>::sized(10), 8010);
    assert_eq!(Typed::<u8>::sized(10), 1010);
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("{t:*}:v2:*sized:9")
        .query(&mut server.client())
        .unwrap();
    keys.sort();
    assert_eq!(keys.len(), 2, "one key per instantiation: {keys:?}");
    assert!(keys.iter().any(|k| k.contains("Typed<u8>")), "{keys:?}");
    assert!(keys.iter().any(|k| k.contains("Typed<u64>")), "{keys:?}");
    let k8 = Typed::<u8>::sized_cache().redis_key("x").unwrap();
    assert!(k8.starts_with("{t:") && k8.contains("}:v2:"), "{k8}");
    // Invalidating one instantiation leaves the other in Redis.
    Typed::<u8>::invalidate_sized(9).unwrap();
    assert_eq!(Typed::<u8>::lookup_sized(9), None);
    assert_eq!(Typed::<u64>::lookup_sized(9), Some(8009));
}

/// sqlx's `E: Executor` shape: a handle the body reads through, skipped.
trait Executor: Sync {
    fn row(&self, id: u64) -> String;
}

struct Pool;
struct Transaction<'p>(#[allow(dead_code)] &'p Pool);

impl Executor for Pool {
    fn row(&self, id: u64) -> String {
        format!("pool-row{id}")
    }
}

impl Executor for Transaction<'_> {
    fn row(&self, id: u64) -> String {
        format!("tx-row{id}")
    }
}

static EXECUTOR_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[cached(tier = "redis", ttl = 300, key = "exec-user:<id>", skip(ex))]
fn exec_user<E: Executor>(ex: &E, id: u64) -> String {
    EXECUTOR_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    ex.row(id)
}

#[test]
fn skipped_type_parameters_share_one_redis_key() {
    use std::sync::atomic::Ordering::SeqCst;
    let server = shared_redis();
    let pool = Pool;
    assert_eq!(exec_user(&pool, 5), "pool-row5");
    // Read through a transaction: the pool's entry, from Redis (no local tier).
    assert_eq!(exec_user(&Transaction(&pool), 5), "pool-row5");
    assert_eq!(
        EXECUTOR_RUNS.load(SeqCst),
        1,
        "the transaction missed the entry"
    );
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("{t:*}:v2:*exec-user:5")
        .query(&mut server.client())
        .unwrap();
    assert_eq!(keys.len(), 1, "one key for every executor: {keys:?}");
    assert!(
        !keys[0].contains('<'),
        "no executor type in the key: {keys:?}"
    );
    assert_eq!(
        exec_user_cache().redis_key("exec-user:5").as_deref(),
        Some(keys[0].as_str())
    );
    // One invalidation, naming no type, reaches both.
    invalidate_exec_user(5).unwrap();
    assert_eq!(exec_user(&Transaction(&pool), 5), "tx-row5");
    assert_eq!(exec_user(&pool, 5), "tx-row5");
    assert_eq!(EXECUTOR_RUNS.load(SeqCst), 2);
}

#[cached(ttl = 60)]
fn made<T: Default + Clone + Send + Sync + 'static>(id: u64) -> T {
    let _ = id;
    T::default()
}

// Two blocks' local `struct X` share a type name, not a type: each gets its own local cache
// (one cache holding both types would have to refuse one of them).
#[test]
fn same_named_local_types_get_their_own_caches() {
    shared_redis();
    let first = {
        #[derive(Default, Clone, Debug, PartialEq)]
        struct X(u8);
        made::<X>(1);
        (std::any::type_name::<X>(), lookup_made::<X>(1))
    };
    let second = {
        #[derive(Clone, Debug, PartialEq)]
        struct X(String);
        impl Default for X {
            fn default() -> Self {
                X("second".into())
            }
        }
        (
            std::any::type_name::<X>(),
            made::<X>(1),
            lookup_made::<X>(1),
        )
    };
    assert_eq!(first.0, second.0, "the two types are named alike");
    assert!(first.1.is_some(), "the first type's value is cached");
    assert_eq!(second.1 .0, "second");
    assert_eq!(second.2.map(|x| x.0), Some("second".to_string()));
}
