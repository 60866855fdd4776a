//! Support for generated code. Not a public API: names and signatures may change.
#![doc(hidden)]

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Mutex, OnceLock, RwLock};

use crate::key::KeyWriter;
use crate::Cache;

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
    note = "add `#[derive(serde::Serialize, serde::Deserialize)]`, or use `tier = \"local\"` without `max_bytes` and `etag`",
    note = "a response wrapper that is not serde (`axum::Json<T>`, `actix_web::web::Json<T>`): cache the function that returns `T` and wrap its value where the handler returns it",
    note = "`Arc<T>` and `Rc<T>` are serde only with serde's `rc` feature, even when `T` derives both: `serde = {{ version = \"1\", features = [\"derive\", \"rc\"] }}`"
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

/// `(&Check::<V>::new()).instance(slot, here, build)`: [`instance`] when `V: CacheValue`,
/// else one error at the value type's span (as [`CheckValue`]).
pub trait CheckInstance<V> {
    fn instance<B: FnOnce(&InstanceInfo<'_>) -> Cache<V>>(
        &self,
        slot: &'static Slot,
        here: &'static str,
        build: B,
    ) -> &'static Instance<V>;
}
impl<V: CacheValue> CheckInstance<V> for Check<V> {
    #[inline]
    fn instance<B: FnOnce(&InstanceInfo<'_>) -> Cache<V>>(
        &self,
        slot: &'static Slot,
        here: &'static str,
        build: B,
    ) -> &'static Instance<V> {
        instance(slot, here, build)
    }
}

pub trait CheckInstanceFailed<V> {
    fn instance<B, U>(&self, slot: &'static Slot, here: &'static str, build: B) -> U
    where
        V: CacheValue;
}
impl<V> CheckInstanceFailed<V> for &Check<V> {
    fn instance<B, U>(&self, _slot: &'static Slot, _here: &'static str, _build: B) -> U
    where
        V: CacheValue,
    {
        unreachable!("`CheckInstance` is selected whenever `V: CacheValue`")
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

/// Names the parts of a `Result` return type, whatever alias spells it (`io::Result<T>`,
/// `AppResult<T>` with `#[cached(result)]`).
#[diagnostic::on_unimplemented(
    message = "`#[cached(result)]` needs a function that returns a `Result` (or an alias of one), not `{Self}`",
    label = "not a `Result`",
    note = "remove `result`: other return types are cached whole"
)]
pub trait ResultLike {
    type Ok;
    type Err;
}
impl<T, E> ResultLike for Result<T, E> {
    type Ok = T;
    type Err = E;
}

/// Names the value of an `Option` return type, whatever alias spells it
/// (`#[cached(option)]`).
#[diagnostic::on_unimplemented(
    message = "`#[cached(option)]` needs a function that returns an `Option` (or an alias of one), not `{Self}`",
    label = "not an `Option`",
    note = "remove `option`: other return types are cached whole"
)]
pub trait OptionLike {
    type Some;
}
impl<T> OptionLike for Option<T> {
    type Some = T;
}

/// The return type of a function whose attribute inferred a plain value (its name is not
/// `Result` / `Option`), probed by type: `(&&ReturnProbe::<R>::NEW).return_shape()` finds
/// the `Result` / `Option` impls (on `&&ReturnProbe`) before the one for every type (on
/// `&ReturnProbe`), and [`return_shape_declared`] accepts only the latter's answer.
pub struct ReturnProbe<R>(PhantomData<fn() -> R>);
impl<R> ReturnProbe<R> {
    pub const NEW: Self = ReturnProbe(PhantomData);
}

/// The probe's answer for a plain value.
pub struct PlainReturn;
/// The probe's answer for a `Result` behind an alias.
pub struct AliasedResult;
/// The probe's answer for an `Option` behind an alias.
pub struct AliasedOption;

pub trait ReturnShapeAny: Sized {
    fn return_shape(self) -> PlainReturn {
        PlainReturn
    }
}
impl<R> ReturnShapeAny for &ReturnProbe<R> {}

pub trait ReturnShapeAliasedResult: Sized {
    fn return_shape(self) -> AliasedResult {
        AliasedResult
    }
}
impl<T, E> ReturnShapeAliasedResult for &&ReturnProbe<Result<T, E>> {}

pub trait ReturnShapeAliasedOption: Sized {
    fn return_shape(self) -> AliasedOption {
        AliasedOption
    }
}
impl<T> ReturnShapeAliasedOption for &&ReturnProbe<Option<T>> {}

/// Implemented by [`PlainReturn`] only: an alias of `Result` / `Option` must be declared.
#[diagnostic::on_unimplemented(
    message = "`#[cached]` cannot see what this function returns: its return type is an alias of a `Result` or an `Option`",
    label = "a `Result` or an `Option` behind an alias",
    note = "say what it is: `#[cached(..., result)]` caches only `Ok` values (errors are returned, never cached), `#[cached(..., option)]` only `Some` (`cache_none` caches `None` too); `result = false` / `option = false` cache the whole value, errors and `None` included"
)]
pub trait ReturnShapeDeclared {}
impl ReturnShapeDeclared for PlainReturn {}

/// Compiles only for a plain return type (see [`ReturnProbe`]).
#[inline(always)]
pub fn return_shape_declared<S: ReturnShapeDeclared>(_: S) {}

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

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`).
const PATH_ARG: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Appends `value` (its `Display` form) to a purge path, percent-encoding every byte except
/// RFC 3986's unreserved characters, so an argument can never add a segment or a query.
pub fn push_path_arg(out: &mut String, value: &dyn std::fmt::Display) {
    let text = value.to_string();
    out.extend(percent_encoding::utf8_percent_encode(&text, PATH_ARG));
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

/// One cached function as one instantiation of it sees it: its cache and the path that
/// tells it apart from the function's other instantiations (type arguments included).
///
/// A generic `impl` or a generic function has one instance per instantiation: a `static`
/// inside a generic function would be shared by all of them, so the caches live in a
/// process-wide registry keyed by the call site and this path.
pub struct Instance<V> {
    pub cache: Cache<V>,
    /// `crate::Typed<u8>::sized_by_id`, `crate::convert<u64>`, `crate::square`.
    path: String,
    /// Whether `path` has type or const arguments (lifetimes do not count).
    generic: bool,
}

impl<V> Instance<V> {
    /// A writer for a key built from a `key = "..."` template. An instantiation with type
    /// arguments starts the key with its path and `|` (which a path never contains after
    /// [`path_in_key`]), so instantiations never share entries; otherwise the key is the
    /// template alone.
    #[inline]
    pub fn template_key(&self) -> KeyWriter {
        let mut w = self.cache.key_writer();
        if self.generic {
            w.literal(&path_in_key(&self.path));
            w.literal("|");
        }
        w
    }

    /// A writer for the default key: the function's path, then `:<arg>` per key parameter.
    #[inline]
    pub fn default_key(&self) -> KeyWriter {
        let mut w = self.cache.key_writer();
        w.literal(&self.path);
        w
    }
}

/// What the generated builder needs to name the cache of one instantiation.
pub struct InstanceInfo<'a> {
    path: &'a str,
    generic: bool,
}

impl InstanceInfo<'_> {
    /// The cache's name: `name = "..."` as written for a non-generic function (with the
    /// instantiation's path appended in brackets otherwise), or the function's path.
    pub fn name(&self, explicit: Option<&str>) -> String {
        match explicit {
            None => self.path.to_string(),
            Some(n) if !self.generic => n.to_string(),
            Some(n) => format!("{n}[{}]", self.path),
        }
    }
}

/// A generated function's `static`: where it is (constants), and its fast path to its
/// instance: the first instantiation that called it (in a non-generic function, the only
/// one), checked by the closure type name.
pub struct Slot {
    cell: OnceLock<(&'static str, &'static (dyn Any + Send + Sync))>,
    /// The generated function's name (`lookup_load`).
    generated: &'static str,
    /// The cached function's name (`load`).
    cached: &'static str,
    /// `file:line:column` of the cached function, so that two functions of the same path (in
    /// two blocks of one function) never share.
    site: &'static str,
    /// Bit `i`: the generated function's `i`-th type or const argument (lifetimes not
    /// counted, `impl Trait` parameters last) is left out of the instance's path.
    erased: u64,
    /// `Self`'s type arguments may be left out too (see [`Slot::erasing_self`]); `here` is
    /// then `(closure, PhantomData<(key types.., return type)>)`.
    erase_self: bool,
}

impl Slot {
    pub const fn new(generated: &'static str, cached: &'static str, site: &'static str) -> Self {
        Self {
            cell: OnceLock::new(),
            generated,
            cached,
            site,
            erased: 0,
            erase_self: false,
        }
    }

    /// The type and const arguments (by position, see `erased`) that only skipped parameters
    /// have: like the parameters, they do not tell entries apart, so every instantiation
    /// that differs only in them shares one instance (`load::<PgPool>` and
    /// `load::<Transaction>`), and the companions, which lack those parameters, reach it.
    pub const fn erasing(mut self, erased: u64) -> Self {
        self.erased = erased;
        self
    }

    /// A method whose `self` is skipped (and whose key types and return type do not name
    /// `Self`): as for the function's own type parameters, `Self`'s type and const arguments
    /// (`Service<Pg>`, `<Store<u8> as Repo>`) do not tell entries apart, so every
    /// instantiation of a generic `impl` shares one instance (`Service::<A>::invalidate_get`
    /// drops what `Service<B>` cached). Except an instantiation whose key types or return
    /// type, as resolved, name one of those arguments (`fn get(&self, k: K)`, `-> Vec<T>`):
    /// those tell entries apart, so its path keeps them. The macro passes the resolved
    /// types beside the closure (see [`instance_path`]).
    pub const fn erasing_self(mut self) -> Self {
        self.erase_self = true;
        self
    }
}

/// Instances by call site, instantiation path and value type: two types may share a name
/// (two blocks' local `struct X`), never a `TypeId`.
type Registry = Mutex<HashMap<(&'static str, String, TypeId), &'static (dyn Any + Send + Sync)>>;
/// Instances by generated function (its slot's address) and closure type name.
type ByCaller = RwLock<HashMap<(usize, &'static str), &'static (dyn Any + Send + Sync)>>;

/// The instance of a cached function for the instantiation that calls this.
///
/// - `slot`: a `static` of the calling generated function (the fast path), with its names
///   and site.
/// - `here`: `type_name_of_val(&|| ())` inside the generated function: a closure's type
///   name carries every type argument of the enclosing function and `impl`
///   (`crate::Typed<u8>::lookup_load::{{closure}}`), whatever the context, without naming
///   `Self` (which a free function cannot).
/// - `build`: builds the cache on the instantiation's first call.
///
/// Three arguments in registers: nothing is written to memory before the fast path's check.
#[inline]
pub fn instance<V: Send + Sync + 'static>(
    slot: &'static Slot,
    here: &'static str,
    build: impl FnOnce(&InstanceInfo<'_>) -> Cache<V>,
) -> &'static Instance<V> {
    // Every call of a non-generic cached function ends here: inlined into it.
    if let Some((h, any)) = slot.cell.get() {
        if std::ptr::eq(*h, here) {
            if let Some(i) = any
                .downcast_ref::<OnceLock<Instance<V>>>()
                .and_then(OnceLock::get)
            {
                return i;
            }
        }
    }
    instance_slow(slot, here, build)
}

/// [`instance`] past its fast path: the first call, and other instantiations of a generic
/// function.
#[inline(never)]
fn instance_slow<V: Send + Sync + 'static>(
    slot: &'static Slot,
    here: &'static str,
    build: impl FnOnce(&InstanceInfo<'_>) -> Cache<V>,
) -> &'static Instance<V> {
    if let Some((h, any)) = slot.cell.get() {
        if std::ptr::eq(*h, here) || *h == here {
            if let Some(i) = any.downcast_ref::<OnceLock<Instance<V>>>() {
                if let Some(i) = i.get() {
                    return i;
                }
            }
        }
    }
    // The other instantiations of a generic function: one read lock, no allocation.
    static BY_CALLER: OnceLock<ByCaller> = OnceLock::new();
    let by_caller = BY_CALLER.get_or_init(Default::default);
    let caller_key = (slot as *const Slot as usize, here);
    let known = by_caller
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&caller_key)
        .copied();
    if let Some(cell) = known {
        if let Some(i) = cell
            .downcast_ref::<OnceLock<Instance<V>>>()
            .and_then(OnceLock::get)
        {
            return i;
        }
    }
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    let (closure, kept) = split_here(here, slot.erase_self);
    let path = instance_path(closure, slot.generated, slot.cached, slot.erased);
    let path = match kept {
        Some(kept) => erase_self_args(&path, kept),
        None => path,
    };
    // Instantiations whose key types differ never share an instance, whatever the path.
    let id = match kept {
        Some(kept) => format!("{path}\0{kept}"),
        None => path.clone(),
    };
    let cell: &'static (dyn Any + Send + Sync) = *REGISTRY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry((slot.site, id, TypeId::of::<V>()))
        .or_insert_with(|| Box::leak(Box::new(OnceLock::<Instance<V>>::new())));
    let typed = cell
        .downcast_ref::<OnceLock<Instance<V>>>()
        .expect("the registry is keyed by the value's TypeId");
    // Built outside the registry's lock: building may create other caches.
    let instance = typed.get_or_init(|| {
        let generic = has_type_args(&path);
        let cache = build(&InstanceInfo {
            path: &path,
            generic,
        });
        Instance {
            cache,
            path,
            generic,
        }
    });
    if slot.cell.set((here, cell)).is_err() {
        by_caller
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(caller_key, cell);
    }
    instance
}

/// `crate::Typed<'_, u8>::lookup_load<T>::{{closure}}::{{closure}}` with `generated` =
/// `lookup_load` and `cached` = `load` → `crate::Typed<u8>::load<T>`: the trailing closures
/// removed, the generated function's name replaced by the cached one's, erased lifetimes
/// dropped, and the function's own arguments marked in `erased` (see [`Slot`]) left out.
/// Falls back to the closure's name when the shape is unexpected (then each generated
/// function has its own cache; a test in this module guards the shape).
fn instance_path(here: &str, generated: &str, cached: &str, erased: u64) -> String {
    let mut s = here;
    while let Some(rest) = s.strip_suffix("::{{closure}}") {
        s = rest;
    }
    // The last `::` outside brackets starts the generated function's segment.
    let mut cut = None;
    scan_top_level(s, |i, bytes| {
        if bytes[i] == b':' && bytes.get(i + 1) == Some(&b':') {
            cut = Some(i);
        }
    });
    let (parent, segment) = match cut {
        Some(i) => (&s[..i + 2], &s[i + 2..]),
        None => ("", s),
    };
    let Some(args) = segment.strip_prefix(generated) else {
        return here.to_string();
    };
    let kept = match args.strip_prefix('<').and_then(|a| a.strip_suffix('>')) {
        None if args.is_empty() => Vec::new(),
        None => return here.to_string(),
        Some(inner) => top_level_args(inner)
            .into_iter()
            .filter(|a| *a != "'_")
            .enumerate()
            .filter(|(i, _)| *i >= 64 || erased & (1 << i) == 0)
            .map(|(_, a)| a)
            .collect(),
    };
    let parent = parent.replace("<'_>", "").replace("'_, ", "");
    if kept.is_empty() {
        format!("{parent}{cached}")
    } else {
        format!("{parent}{cached}<{}>", kept.join(", "))
    }
}

/// `here` as [`Slot::erasing_self`] has it, `(closure, core::marker::PhantomData<(..)>)`:
/// the closure's name and the types' (`(..)`); otherwise `here` alone.
fn split_here(here: &str, erase_self: bool) -> (&str, Option<&str>) {
    let inner = match here.strip_prefix('(').and_then(|h| h.strip_suffix(')')) {
        Some(inner) if erase_self => inner,
        _ => return (here, None),
    };
    match top_level_args(inner)[..] {
        [closure, kept] => (closure, Some(kept)),
        _ => (here, None),
    }
}

/// `path` (from [`instance_path`]) without the type and const arguments of `Self`, the
/// segment before the function's: `a::Service<a::Pg>::get` → `a::Service::get`,
/// `<a::Store<u8> as a::Repo>::load` → `<a::Store as a::Repo>::load` (the trait's arguments
/// stay: another trait is another impl). Unchanged when `kept` (the key types and return
/// type, resolved) names one of them, or `Self` is not a path (`<(u8, T) as Repo>`).
fn erase_self_args(path: &str, kept: &str) -> String {
    let mut cut = None;
    scan_top_level(path, |i, bytes| {
        if bytes[i] == b':' && bytes.get(i + 1) == Some(&b':') {
            cut = Some(i);
        }
    });
    let Some(cut) = cut else {
        return path.to_string();
    };
    let (parent, rest) = path.split_at(cut);
    let erased = match parent.strip_prefix('<').and_then(|p| p.strip_suffix('>')) {
        Some(qualified) => {
            let mut as_at = None;
            scan_top_level(qualified, |i, _| {
                if as_at.is_none() && qualified[i..].starts_with(" as ") {
                    as_at = Some(i);
                }
            });
            as_at.and_then(|i| {
                let (self_ty, tr) = qualified.split_at(i);
                Some(format!("<{}{tr}>", without_args(self_ty, kept)?))
            })
        }
        None => without_args(parent, kept).map(str::to_string),
    };
    match erased {
        Some(parent) => format!("{parent}{rest}"),
        None => path.to_string(),
    }
}

/// `a::Service<a::Pg, 3>` → `a::Service`, unless `kept` names an argument; `None` for a
/// type that is not a path with arguments.
fn without_args<'a>(ty: &'a str, kept: &str) -> Option<&'a str> {
    let head_is_path = ty
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && !ty.starts_with("dyn ")
        && !ty.starts_with("impl ");
    let inner = ty.strip_suffix('>').filter(|_| head_is_path)?;
    // The `<` that opens the group the final `>` closes.
    let bytes = ty.as_bytes();
    let (mut depth, mut open) = (0i32, None);
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'<' => {
                if depth == 0 {
                    open = Some(i);
                }
                depth += 1;
            }
            b'>' if i > 0 && bytes[i - 1] == b'-' => {}
            b'>' => depth -= 1,
            _ => {}
        }
    }
    let open = open?;
    let args = &inner[open + 1..];
    let named = top_level_args(args)
        .into_iter()
        .filter(|a| *a != "'_")
        .any(|a| names(kept, a));
    (!named).then_some(&ty[..open])
}

/// Whether the type name `outer` contains the type (or const) name `inner` as a whole:
/// not as the tail of a longer path or identifier.
fn names(outer: &str, inner: &str) -> bool {
    let part = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let bytes = outer.as_bytes();
    outer.match_indices(inner).any(|(i, _)| {
        let end = i + inner.len();
        (i == 0 || !part(bytes[i - 1])) && (end == bytes.len() || !part(bytes[end]))
    })
}

/// Calls `at(i, bytes)` for each byte of `s` outside every bracket (`<>`, `()`, `[]`, `{}`;
/// the `>` of `->` and anything in a `char` const argument do not count).
fn scan_top_level(s: &str, mut at: impl FnMut(usize, &[u8])) {
    let bytes = s.as_bytes();
    let mut depth = 0i32;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'<' | b'(' | b'[' | b'{' => depth += 1,
            b'>' if i > 0 && bytes[i - 1] == b'-' => {}
            b'>' | b')' | b']' | b'}' => depth -= 1,
            // A `char` argument (`','`); `'_` is an erased lifetime.
            b'\'' if !(bytes.get(i + 1) == Some(&b'_') && bytes.get(i + 2) != Some(&b'\'')) => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'\'' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            _ if depth == 0 => at(i, bytes),
            _ => {}
        }
        i += 1;
    }
}

/// `u8, (u8, u16), 4` → `["u8", "(u8, u16)", "4"]`.
fn top_level_args(inner: &str) -> Vec<&str> {
    let mut commas = Vec::new();
    scan_top_level(inner, |i, bytes| {
        if bytes[i] == b',' {
            commas.push(i);
        }
    });
    let mut out = Vec::with_capacity(commas.len() + 1);
    let mut start = 0;
    for c in commas {
        out.push(inner[start..c].trim());
        start = c + 1;
    }
    out.push(inner[start..].trim());
    out
}

fn has_type_args(path: &str) -> bool {
    path.contains('<')
}

/// The path as a key's head: `%` and `|` escaped, so `|` ends it unambiguously.
fn path_in_key(path: &str) -> String {
    path.replace('%', "%25").replace('|', "%7C")
}

#[cfg(test)]
mod instance_tests {
    use super::*;

    struct Typed<'a, T>(PhantomData<&'a T>);
    impl<T> Typed<'_, T> {
        fn here(&self) -> &'static str {
            std::any::type_name_of_val(&|| ())
        }
        fn generic_here<U>() -> &'static str {
            std::any::type_name_of_val(&|| PhantomData::<U>)
        }
        async fn async_here(&self) -> &'static str {
            std::any::type_name_of_val(&|| ())
        }
    }
    fn free_here() -> &'static str {
        std::any::type_name_of_val(&|| ())
    }

    /// Guards the closure type name shape that [`instance_path`] relies on.
    #[test]
    fn paths_of_instantiations() {
        let me = module_path!();
        let t = Typed::<u8>(PhantomData);
        assert_eq!(
            instance_path(t.here(), "here", "load", 0),
            format!("{me}::Typed<u8>::load")
        );
        assert_eq!(
            instance_path(
                Typed::<u64>::generic_here::<String>(),
                "generic_here",
                "load",
                0
            ),
            format!("{me}::Typed<u64>::load<alloc::string::String>")
        );
        let fut = t.async_here();
        let here = pollster::block_on(fut);
        assert_eq!(
            instance_path(here, "async_here", "load", 0),
            format!("{me}::Typed<u8>::load")
        );
        assert_eq!(
            instance_path(free_here(), "free_here", "square", 0),
            format!("{me}::square")
        );
        assert!(!has_type_args(&instance_path(
            free_here(),
            "free_here",
            "x",
            0
        )));
        assert!(has_type_args(&instance_path(t.here(), "here", "x", 0)));
        // An unexpected shape falls back to the name itself.
        assert_eq!(
            instance_path("a::b::{{closure}}", "c", "d", 0),
            "a::b::{{closure}}"
        );
    }

    fn skipping_here<E: ?Sized, const N: usize, T>(
        _e: &E,
        _t: T,
        _f: impl Fn(u8) -> u8,
    ) -> &'static str {
        std::any::type_name_of_val(&|| ())
    }

    /// Arguments of every shape are told apart at their top-level commas, and the ones
    /// marked erased are left out; `->` inside an argument is not a bracket.
    #[test]
    fn erased_arguments_leave_the_path() {
        let me = module_path!();
        let here = skipping_here::<(u8, u16), 3, fn(u8) -> u8>(&(1, 2), |x| x, |x| x);
        assert_eq!(
            instance_path(here, "skipping_here", "load", 0),
            format!(
                "{me}::load<(u8, u16), 3, fn(u8) -> u8, {me}::erased_arguments_leave_the_path::{{{{closure}}}}>"
            )
        );
        // The executor, and the `impl Fn` (every position from the first `impl Trait` on).
        assert_eq!(
            instance_path(here, "skipping_here", "load", 1 | !0b111),
            format!("{me}::load<3, fn(u8) -> u8>")
        );
        assert_eq!(
            instance_path(here, "skipping_here", "load", !0),
            format!("{me}::load")
        );
        // Two instantiations that differ only in erased arguments share the path.
        let other = skipping_here::<str, 3, fn(u8) -> u8>("x", |x| x, |x: u8| x + 1);
        assert_eq!(
            instance_path(other, "skipping_here", "load", 1 | !0b111),
            instance_path(here, "skipping_here", "load", 1 | !0b111)
        );
        // An `impl` argument with `->` keeps the cut at the function's segment.
        assert_eq!(
            instance_path(
                "a::Typed<fn(u8) -> u8>::m<[u8; 3], 4>::{{closure}}",
                "m",
                "load",
                0b1
            ),
            "a::Typed<fn(u8) -> u8>::load<4>"
        );
        assert_eq!(
            instance_path("a::m<'_, ',', u8>::{{closure}}", "m", "load", 0b10),
            "a::load<','>"
        );
        assert_eq!(
            instance_path("a::Typed<'_, u8>::m<'_, u8>::{{closure}}", "m", "load", 0),
            "a::Typed<u8>::load<u8>"
        );
        assert_eq!(
            top_level_args("u8, (u8, u16), [u8; 2], fn(u8, u8) -> u8, 'x'"),
            ["u8", "(u8, u16)", "[u8; 2]", "fn(u8, u8) -> u8", "'x'"]
        );
    }

    struct Service<R>(PhantomData<R>);
    impl<R> Service<R> {
        fn here<K>(&self) -> &'static str {
            std::any::type_name_of_val(&(|| (), PhantomData::<(K, u64)>))
        }
    }
    trait Repo {
        fn here(&self) -> &'static str;
    }
    impl<R> Repo for Service<R> {
        fn here(&self) -> &'static str {
            std::any::type_name_of_val(&(|| (), PhantomData::<(u8, String)>))
        }
    }
    struct A;
    struct B;

    fn self_erased(here: &str, generated: &str) -> String {
        let (closure, kept) = split_here(here, true);
        // `K` only chooses the key types here: the function's own arguments are erased.
        let path = instance_path(closure, generated, "get", !0);
        erase_self_args(&path, kept.expect("a (closure, types) pair"))
    }

    /// `Self`'s arguments leave the path of a method whose `self` is skipped, unless the
    /// resolved key types or return type name one of them.
    #[test]
    fn self_arguments_leave_the_path() {
        let me = module_path!();
        let (a, b) = (Service::<A>(PhantomData), Service::<B>(PhantomData));
        assert_eq!(
            self_erased(a.here::<u64>(), "here"),
            format!("{me}::Service::get")
        );
        assert_eq!(
            self_erased(a.here::<u64>(), "here"),
            self_erased(b.here::<u64>(), "here")
        );
        // A key type that is the argument (`k: R`) keeps it.
        assert_eq!(
            self_erased(a.here::<A>(), "here"),
            format!("{me}::Service<{me}::A>::get")
        );
        assert_eq!(
            self_erased(a.here::<Vec<A>>(), "here"),
            format!("{me}::Service<{me}::A>::get")
        );
        // A trait impl: `Self`'s arguments go, the trait and the implementing type stay.
        assert_eq!(
            self_erased(Repo::here(&a), "here"),
            format!("<{me}::Service as {me}::Repo>::get")
        );
        // Without the flag, `here` is the closure alone.
        assert_eq!(split_here(a.here::<u8>(), false).1, None);
        assert_eq!(
            erase_self_args("a::S<u8, 3>::get<u16>", "(u16, alloc::string::String)"),
            "a::S::get<u16>"
        );
        // A const argument the key's array type has; a prefix of a longer name is not it.
        assert_eq!(
            erase_self_args("a::S<u8, 3>::get", "([u8; 3], u64)"),
            "a::S<u8, 3>::get"
        );
        assert_eq!(
            erase_self_args("a::S<a::B>::get", "(a::BB, x::a::B)"),
            "a::S::get"
        );
        assert_eq!(
            erase_self_args("a::S<fn(u8) -> u8>::get", "(u64,)"),
            "a::S::get"
        );
        // `Self` that is not a path with arguments stays as it is.
        assert_eq!(
            erase_self_args("<(u8, u16) as a::Repo>::get", "(u64,)"),
            "<(u8, u16) as a::Repo>::get"
        );
        assert_eq!(
            erase_self_args("<a::S<u8> as a::Repo<u16>>::get", "(u64,)"),
            "<a::S as a::Repo<u16>>::get"
        );
        assert_eq!(erase_self_args("a::get", "(u64,)"), "a::get");
        assert_eq!(erase_self_args("a::S::get", "(u64,)"), "a::S::get");
    }

    #[test]
    fn key_heads_are_unambiguous() {
        assert_eq!(path_in_key("a::B<u8>"), "a::B<u8>");
        assert_eq!(path_in_key("a|b%"), "a%7Cb%25");
    }
}
