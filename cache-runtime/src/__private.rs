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
pub trait CacheValue: Clone + Send + Sync + 'static {
    /// `Cache<Self>`. Generated code names its cache and builder through these projections:
    /// when the bound does not hold, each is one error at the value type and an error type
    /// that silences the follow-up "method exists but its trait bounds were not satisfied"
    /// errors of every generated function.
    type Cache;
    /// `CacheBuilder<Self>`.
    type Builder;
}
impl<T: Clone + Send + Sync + 'static> CacheValue for T {
    type Cache = crate::Cache<T>;
    type Builder = crate::CacheBuilder<T>;
}

/// Marks a type the macro needs to store in Redis.
#[diagnostic::on_unimplemented(
    message = "the cached value type `{Self}` must be `serde::Serialize + serde::de::DeserializeOwned` to use a Redis tier",
    label = "this value is stored in Redis",
    note = "add `#[derive(serde::Serialize, serde::Deserialize)]`, or use `tier = \"local\"`"
)]
pub trait RedisValue: serde::Serialize + serde::de::DeserializeOwned {}
impl<T: serde::Serialize + serde::de::DeserializeOwned> RedisValue for T {}

/// First half of the Redis check (`Serialize`), as a projection: see [`CacheValue::Cache`].
/// The two halves are chained so that a type missing both derives gets one error, not two.
#[diagnostic::on_unimplemented(
    message = "the cached value type `{Self}` must be `serde::Serialize + serde::de::DeserializeOwned` to use a Redis tier",
    label = "this value is stored in Redis",
    note = "add `#[derive(serde::Serialize, serde::Deserialize)]`, or use `tier = \"local\"`"
)]
pub trait RedisSerialize {
    /// `Self`.
    type Checked;
}
impl<T: serde::Serialize> RedisSerialize for T {
    type Checked = T;
}

/// Second half of the Redis check (`DeserializeOwned`).
#[diagnostic::on_unimplemented(
    message = "the cached value type `{Self}` must be `serde::Serialize + serde::de::DeserializeOwned` to use a Redis tier",
    label = "this value is stored in Redis",
    note = "add `#[derive(serde::Deserialize)]`, or use `tier = \"local\"`"
)]
pub trait RedisDeserialize {
    /// `CacheBuilder<Self>`.
    type Builder;
}
impl<T: serde::de::DeserializeOwned> RedisDeserialize for T {
    type Builder = crate::CacheBuilder<T>;
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
