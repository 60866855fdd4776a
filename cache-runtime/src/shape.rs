//! How a function's return type maps to the value that is cached.
//!
//! | return type | shape | cached | not cached (returned to every waiter) |
//! |---|---|---|---|
//! | `T` | [`Plain`] | every value | — |
//! | `Result<T, E>` | [`OkOnly`] | `Ok(t)` as `t` | `Err(e)` (shared when `E: Clone`) |
//! | `Option<T>` | [`SomeOnly`] | `Some(t)` as `t` | `None` |
//! | `Option<T>` + `cache_none` | [`SomeOrNone`] | `Some(t)` (ttl) and `None` (`none_ttl`) | — |

use std::any::Any;
use std::sync::Arc;

use crate::entry::{Entry, Meta, Source};

/// Splits a return value into "cache this" or "return it without caching".
///
/// ```
/// use cache_runtime::shape::{OkOnly, Shape};
/// let ok: Result<u8, String> = Ok(1);
/// assert_eq!(<OkOnly as Shape<_>>::cacheable(&ok), Some((&1, false)));
/// assert_eq!(<OkOnly as Shape<Result<u8, String>>>::cacheable(&Err("x".into())), None);
/// ```
pub trait Shape<R> {
    /// The cached value type.
    type Value;
    /// The value to cache, borrowed from the result (a miss copies it only where it is
    /// kept: the local tier, concurrent callers), and whether it is a negative entry
    /// (`none_ttl`).
    fn cacheable(r: &R) -> Option<(&Self::Value, bool)>;
    /// The return value for a cached value.
    fn rebuild(v: Self::Value) -> R;
    /// [`cacheable`](Self::cacheable) by value: the value to cache moved out of the result
    /// (rebuilt with [`rebuild`](Self::rebuild)), or the result itself. A miss stores what
    /// this gives, so that the call's future never holds the whole result across the store:
    /// an error type that is not `Send` (`Box<dyn Error>`) then leaves the future `Send`, as
    /// the function's own future was. The default clones.
    ///
    /// ```
    /// use cache_runtime::shape::{OkOnly, Shape};
    /// type R = Result<u8, Box<dyn std::error::Error>>;
    /// assert_eq!(<OkOnly as Shape<R>>::into_cacheable(Ok(1)).ok(), Some((1, false)));
    /// assert!(<OkOnly as Shape<R>>::into_cacheable(Err("no".into())).is_err());
    /// ```
    fn into_cacheable(r: R) -> Result<(Self::Value, bool), R>
    where
        Self::Value: Clone,
    {
        match Self::cacheable(&r) {
            Some((v, negative)) => Ok((v.clone(), negative)),
            None => Err(r),
        }
    }
    /// Whether the result is a failure (`Err`) for which a stale value may be served instead.
    fn is_failure(_r: &R) -> bool {
        false
    }
}

/// Every return value is cached.
#[derive(Debug, Clone, Copy)]
pub struct Plain;
/// Only `Ok` is cached.
#[derive(Debug, Clone, Copy)]
pub struct OkOnly;
/// Only `Some` is cached.
#[derive(Debug, Clone, Copy)]
pub struct SomeOnly;
/// `Some` and `None` are cached, `None` with its own TTL.
#[derive(Debug, Clone, Copy)]
pub struct SomeOrNone;

impl<V: Clone> Shape<V> for Plain {
    type Value = V;
    fn cacheable(r: &V) -> Option<(&V, bool)> {
        Some((r, false))
    }
    fn rebuild(v: V) -> V {
        v
    }
    fn into_cacheable(r: V) -> Result<(V, bool), V> {
        Ok((r, false))
    }
}

impl<T: Clone, E> Shape<Result<T, E>> for OkOnly {
    type Value = T;
    fn cacheable(r: &Result<T, E>) -> Option<(&T, bool)> {
        r.as_ref().ok().map(|t| (t, false))
    }
    fn rebuild(v: T) -> Result<T, E> {
        Ok(v)
    }
    fn into_cacheable(r: Result<T, E>) -> Result<(T, bool), Result<T, E>> {
        match r {
            Ok(t) => Ok((t, false)),
            Err(e) => Err(Err(e)),
        }
    }
    fn is_failure(r: &Result<T, E>) -> bool {
        r.is_err()
    }
}

impl<T: Clone> Shape<Option<T>> for SomeOnly {
    type Value = T;
    fn cacheable(r: &Option<T>) -> Option<(&T, bool)> {
        r.as_ref().map(|t| (t, false))
    }
    fn rebuild(v: T) -> Option<T> {
        Some(v)
    }
    fn into_cacheable(r: Option<T>) -> Result<(T, bool), Option<T>> {
        r.map(|t| (t, false)).ok_or(None)
    }
}

impl<T: Clone> Shape<Option<T>> for SomeOrNone {
    type Value = Option<T>;
    fn cacheable(r: &Option<T>) -> Option<(&Option<T>, bool)> {
        Some((r, r.is_none()))
    }
    fn rebuild(v: Option<T>) -> Option<T> {
        v
    }
    fn into_cacheable(r: Option<T>) -> Result<(Option<T>, bool), Option<T>> {
        let negative = r.is_none();
        Ok((r, negative))
    }
}

/// The result of a function with its value wrapped in an [`Entry`] (validators, tags,
/// source): what the generated `<fn>_entry` returns — `Entry<T>` for `T`,
/// `Result<Entry<T>, E>`, `Option<Entry<T>>`, and `Entry<Option<T>>` with `cache_none`.
///
/// ```
/// use cache_runtime::shape::{EntryShape, OkOnly};
/// use cache_runtime::{Meta, Source};
/// let r: Result<u8, String> = Ok(3);
/// let e = <OkOnly as EntryShape<_>>::with_entry(r, Meta::fresh(Default::default(), None), [].into(), Source::Body);
/// assert_eq!(*e.unwrap().value(), 3);
/// ```
pub trait EntryShape<R>: Shape<R> {
    /// `R` with the cached value replaced by `Entry<value>`.
    type Entries;
    /// Wraps the value in `r` (if any) with `meta`, `tags` and `source`.
    fn with_entry(r: R, meta: Meta, tags: Arc<[String]>, source: Source) -> Self::Entries;
}

impl<V: Clone> EntryShape<V> for Plain {
    type Entries = Entry<V>;
    fn with_entry(r: V, meta: Meta, tags: Arc<[String]>, source: Source) -> Entry<V> {
        Entry::from_meta(r, meta, tags, source)
    }
}

impl<T: Clone, E> EntryShape<Result<T, E>> for OkOnly {
    type Entries = Result<Entry<T>, E>;
    fn with_entry(
        r: Result<T, E>,
        meta: Meta,
        tags: Arc<[String]>,
        source: Source,
    ) -> Result<Entry<T>, E> {
        r.map(|t| Entry::from_meta(t, meta, tags, source))
    }
}

impl<T: Clone> EntryShape<Option<T>> for SomeOnly {
    type Entries = Option<Entry<T>>;
    fn with_entry(
        r: Option<T>,
        meta: Meta,
        tags: Arc<[String]>,
        source: Source,
    ) -> Option<Entry<T>> {
        r.map(|t| Entry::from_meta(t, meta, tags, source))
    }
}

impl<T: Clone> EntryShape<Option<T>> for SomeOrNone {
    type Entries = Entry<Option<T>>;
    fn with_entry(
        r: Option<T>,
        meta: Meta,
        tags: Arc<[String]>,
        source: Source,
    ) -> Entry<Option<T>> {
        Entry::from_meta(r, meta, tags, source)
    }
}

/// How a non-cached result reaches the callers that waited for it (single-flight).
///
/// ```
/// use cache_runtime::Sharing;
/// let s = Sharing::<Option<u8>>::absent();
/// let shared = (s.share)(&None).unwrap();
/// assert_eq!((s.unshare)(shared.as_ref()), Some(None));
/// ```
pub struct Sharing<R> {
    /// Makes a shareable copy of a non-cached result, if possible.
    pub share: fn(&R) -> Option<Box<dyn Any + Send>>,
    /// Rebuilds a waiter's result from the shared copy.
    pub unshare: fn(&(dyn Any + Send)) -> Option<R>,
}

impl<R> Sharing<R> {
    /// Nothing is shared: waiters whose leader produced a non-cached result run the body.
    pub fn none() -> Self {
        Self {
            share: |_| None,
            unshare: |_| None,
        }
    }

    /// From a pair of functions.
    pub fn new(
        share: fn(&R) -> Option<Box<dyn Any + Send>>,
        unshare: fn(&(dyn Any + Send)) -> Option<R>,
    ) -> Self {
        Self { share, unshare }
    }
}

impl<T> Sharing<Option<T>> {
    /// A `None` is shared with every waiter.
    pub fn absent() -> Self {
        Self {
            share: |r| r.is_none().then(|| Box::new(()) as Box<dyn Any + Send>),
            unshare: |_| Some(None),
        }
    }
}
