//! Support for generated code. Not a public API: names and signatures may change.
#![doc(hidden)]

use std::any::Any;
use std::marker::PhantomData;

pub use crate::shape::{OkOnly, Plain, SomeOnly, SomeOrNone};

/// Marks a type the macro needs as a cached value (checked at the return type's span).
#[diagnostic::on_unimplemented(
    message = "the cached value type `{Self}` must be `Clone + Send + Sync + 'static`",
    label = "every cache hit returns a clone of this value",
    note = "wrap it in `std::sync::Arc<...>` to share it cheaply, or derive `Clone`"
)]
pub trait CacheValue: Clone + Send + Sync + 'static {}
impl<T: Clone + Send + Sync + 'static> CacheValue for T {}

/// Marks a type the macro needs to store in Redis.
#[diagnostic::on_unimplemented(
    message = "the cached value type `{Self}` must be `serde::Serialize + serde::de::DeserializeOwned` to use a Redis tier, `max_bytes` or `etag`",
    label = "this value is stored in Redis, weighed in bytes or hashed for its ETag",
    note = "add `#[derive(serde::Serialize, serde::Deserialize)]`, or use `tier = \"local\"` without `max_bytes` and `etag`"
)]
pub trait RedisValue: serde::Serialize + serde::de::DeserializeOwned {}
impl<T: serde::Serialize + serde::de::DeserializeOwned> RedisValue for T {}

/// `(&Check::<V>::new()).value(x)` is `x` when `V: CacheValue`. Otherwise it is one
/// error (the unmet `V: CacheValue` bound, at the value type's span) and a value of an
/// uninferred type, which makes rustc skip the generated calls that follow instead of
/// reporting "method exists but its trait bounds were not satisfied" for each of them.
/// `.redis(x)` does the same for `V: RedisValue`. Autoref specialisation, as with [`Probe`].
pub struct Check<V>(PhantomData<fn() -> V>);

impl<V> Check<V> {
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<V> Default for Check<V> {
    fn default() -> Self {
        Self::new()
    }
}

pub trait CheckValue {
    fn value<T>(&self, t: T) -> T;
}
impl<V: CacheValue> CheckValue for Check<V> {
    fn value<T>(&self, t: T) -> T {
        t
    }
}

pub trait CheckValueFailed<V> {
    fn value<T, U>(&self, t: T) -> U
    where
        V: CacheValue;
}
impl<V> CheckValueFailed<V> for &Check<V> {
    fn value<T, U>(&self, _t: T) -> U
    where
        V: CacheValue,
    {
        unreachable!("`CheckValue` is selected whenever `V: CacheValue`")
    }
}

pub trait CheckRedis {
    fn redis<T>(&self, t: T) -> T;
}
impl<V: RedisValue> CheckRedis for Check<V> {
    fn redis<T>(&self, t: T) -> T {
        t
    }
}

pub trait CheckRedisFailed<V> {
    fn redis<T, U>(&self, t: T) -> U
    where
        V: RedisValue;
}
impl<V> CheckRedisFailed<V> for &Check<V> {
    fn redis<T, U>(&self, _t: T) -> U
    where
        V: RedisValue,
    {
        unreachable!("`CheckRedis` is selected whenever `V: RedisValue`")
    }
}

pub const fn assert_cache_value<T: CacheValue>() {}
pub const fn assert_redis_value<T: RedisValue>() {}

/// Autoref specialisation: `(&Probe(&e)).share()` boxes a clone when `E: Clone + Send`,
/// and returns `None` otherwise.
pub struct Probe<'a, T>(pub &'a T);

pub trait ShareClone {
    fn share(&self) -> Option<Box<dyn Any + Send>>;
}
impl<T: Clone + Send + 'static> ShareClone for Probe<'_, T> {
    fn share(&self) -> Option<Box<dyn Any + Send>> {
        Some(Box::new(self.0.clone()))
    }
}

pub trait ShareNever {
    fn share(&self) -> Option<Box<dyn Any + Send>>;
}
impl<T> ShareNever for &Probe<'_, T> {
    fn share(&self) -> Option<Box<dyn Any + Send>> {
        None
    }
}

/// `(&TypeProbe::<E>::new()).unshare(b)`: a clone of the shared `E`, when `E: Clone + Send`.
pub struct TypeProbe<T>(PhantomData<fn() -> T>);

impl<T> TypeProbe<T> {
    pub fn new() -> Self {
        Self(PhantomData)
    }
}

impl<T> Default for TypeProbe<T> {
    fn default() -> Self {
        Self::new()
    }
}

pub trait UnshareClone<T> {
    fn unshare(&self, b: &(dyn Any + Send)) -> Option<T>;
}
impl<T: Clone + Send + 'static> UnshareClone<T> for TypeProbe<T> {
    fn unshare(&self, b: &(dyn Any + Send)) -> Option<T> {
        b.downcast_ref::<T>().cloned()
    }
}

pub trait UnshareNever<T> {
    fn unshare(&self, b: &(dyn Any + Send)) -> Option<T>;
}
impl<T> UnshareNever<T> for &TypeProbe<T> {
    fn unshare(&self, _b: &(dyn Any + Send)) -> Option<T> {
        None
    }
}

/// Names the error type of a `Result`-like return type (`io::Result<T>` included).
pub trait ResultLike {
    type Err;
}
impl<T, E> ResultLike for Result<T, E> {
    type Err = E;
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NotClone;

    // The explicit borrows select the impl (autoref specialisation); they are not needless.
    #[test]
    #[allow(clippy::needless_borrow)]
    fn specialisation_picks_clone_when_available() {
        let e = String::from("boom");
        let shared = (&Probe(&e)).share().expect("String is Clone");
        let back: Option<String> = (&TypeProbe::<String>::new()).unshare(shared.as_ref());
        assert_eq!(back.as_deref(), Some("boom"));
        assert!((&Probe(&NotClone)).share().is_none());
        let nothing: Option<NotClone> = (&TypeProbe::<NotClone>::new()).unshare(&());
        assert!(nothing.is_none());
    }
}

/// Appends `value` (its `Display` form) to a purge path, percent-encoding every byte except
/// RFC 3986's unreserved characters, so an argument can never add a segment or a query.
pub fn push_path_arg(out: &mut String, value: &dyn std::fmt::Display) {
    use std::fmt::Write;
    let text = value.to_string();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[cfg(test)]
mod path_tests {
    #[test]
    fn path_args_cannot_escape_their_segment() {
        let mut p = String::from("/users/");
        super::push_path_arg(&mut p, &"a b/../c?x=1&y#é");
        assert_eq!(p, "/users/a%20b%2F..%2Fc%3Fx%3D1%26y%23%C3%A9");
        let mut q = String::from("/n/");
        super::push_path_arg(&mut q, &42u64);
        assert_eq!(q, "/n/42");
    }
}

/// Implemented for [`Tier`](crate::Tier) only when the `redis` feature is on, so a Redis tier
/// in a build without it is one clear compile error naming the feature.
#[diagnostic::on_unimplemented(
    message = "`tier = \"redis\"` and `tier = \"local+redis\"` need cache-runtime's `redis` feature",
    label = "this cache has a Redis tier",
    note = "enable the feature (it is a default one): `cache-runtime = {{ version = \"0.1\", features = [\"redis\"] }}`, or use `tier = \"local\"`"
)]
pub trait RedisFeatureEnabled {}
#[cfg(feature = "redis")]
impl RedisFeatureEnabled for crate::Tier {}

/// `tier`, if the `redis` feature is on; otherwise a compile error (see [`RedisFeatureEnabled`]).
pub fn redis_tier<T: RedisFeatureEnabled>(tier: T) -> T {
    tier
}
