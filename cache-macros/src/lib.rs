//! The `#[cached]` attribute. Use it through `cache_runtime::cached`; this crate only
//! generates glue that calls `::cache_runtime`.

mod duration;
mod erase;
mod expand;
mod forward;
mod key_part;
mod options;
mod patterns;
mod signature;
mod template;

use proc_macro::TokenStream;

/// Caches a function in-process, in Redis, or both, and generates the functions that
/// invalidate, populate, inspect and refresh its entries.
///
/// A call looks in the local tier, then in Redis, then runs the body (once per key across
/// concurrent callers) and stores a cacheable result in every tier. The attribute only
/// generates glue: the key, the call into `cache_runtime::Cache`, the companions. Every option
/// is checked at compile time; a wrong one is a compile error at the offending token.
///
/// ```
/// use cache_runtime::cached;
///
/// #[cached(ttl = "5m", key = "square:<x>")]
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// assert_eq!(square(4), 16); // runs the body
/// assert_eq!(square(4), 16); // a local hit
/// assert_eq!(lookup_square(4), Some(16));
/// invalidate_square(4).unwrap();
/// assert_eq!(lookup_square(4), None);
/// assert_eq!(square_cache().stats().body_calls, 1);
/// ```
///
/// # Options
///
/// `#[cached(option = value, ...)]`; only `ttl` is required. Durations are seconds (`300`) or
/// strings: `"250ms"`, `"30s"`, `"5m"`, `"1h"`, `"1d"`.
///
/// | option | values | default | meaning |
/// |---|---|---|---|
/// | `ttl` | duration | required | Lifetime of an entry (Redis `PX`: millisecond precision). |
/// | `tier` | `"local"`, `"redis"`, `"local+redis"` | `"local"` | Where values live; `local+redis` reads local first. A Redis tier needs a serde value type. |
/// | `local_ttl` | duration ≤ `ttl` | `min(ttl, 30s)` | `local+redis` only: lifetime of the local copy (how long another process's write may stay invisible here). |
/// | `key` | template: `"user:<id>"`, `"<param.field>"`, `"<self.field>"` | the function's path and every key parameter | The entry's key. See [Keys](#keys). |
/// | `skip(a, b)` | parameter names, `self` | none | Parameters that do not change the result (a pool, a logger). Every other parameter must be in the key. |
/// | `capacity` | integer ≥ 1 | 10 000 | Maximum local entries. Not with `tier = "redis"`. |
/// | `max_bytes` | `1048576`, `"512KiB"`, `"64MiB"`, `"1GiB"` | none | Bound the local tier by memory instead of entries (not with `capacity`; needs a serde value). |
/// | `name` | string | the function's path (`Type::method` for methods) | The cache's name in stats, metrics and logs, and its `clear()` scope: two caches given the same name clear each other (a warning is logged when the second is created). |
/// | `version` | integer | 1 | Schema version of the value type, part of the Redis key and of the value's fingerprint: bump it when the type changes. |
/// | `cache_none` | `true`/`false`, or bare `cache_none` | `false` | `Option<T>` only: cache `None` too (a `Result<Option<T>, E>` caches `Ok(None)` without it). |
/// | `none_ttl` | duration | `ttl` | Lifetime of a cached `None`. Needs `cache_none`. |
/// | `result` | `true`/`false`, or bare `result` | by name | The return type is a `Result` behind an alias (`AppResult<T>`): only `Ok` is cached. `result = false` caches the whole `Result`, errors included. |
/// | `option` | `true`/`false`, or bare `option` | by name | The return type is an `Option` behind an alias: only `Some` is cached (`None` too with `cache_none`). `option = false` caches the whole `Option`. |
/// | `tags` | `["user:<id>", "catalog"]` | none | Tags of each entry (templates, checked like `key`); `cache_runtime::invalidate_tag("user:42")` drops every entry carrying the tag, in every cache and process. |
/// | `lock` | `true`/`false`, or bare `lock` | `false` | Redis tiers only: on a miss everywhere, one process takes a Redis lease and runs the body; the others wait for its value. |
/// | `lock_lease` | duration | `"10s"` | The lease. Needs `lock`. |
/// | `stale` | duration | none | Fail-safe: keep each value this long past its TTL, and serve it when the body returns `Err`, panics or runs past `timeout`. |
/// | `stale_retry` | duration | `"10s"` | After a failure, serve the stale value without running the body for that key for this long. Needs `stale`. |
/// | `timeout` | duration | none | `async fn` only: abandon a body still running after this and serve the stale value (when there is one). Needs `stale`. |
/// | `soft_timeout` | duration | none | `async fn` with owned parameters only (a method: `self: Arc<Self>`); needs `stale`. Past this, return the stale value and let the body finish in the background. |
/// | `refresh_ahead` | fraction in (0, 1), e.g. `0.8` | none | `async fn` with owned parameters only (a method: `self: Arc<Self>`): a read of an entry older than this fraction of its TTL starts one background refresh and returns the current value. |
/// | `etag` | `true`/`false`, or bare `etag` | `false` (`true` with Redis) | A strong ETag per entry (see `NAME_entry`); needs a serde value. |
/// | `purge` | `["/users/<id>"]` | none | Edge (CDN) paths that `invalidate_NAME`, `populate_NAME` and `refresh_NAME` purge through `cache_runtime::edge`; arguments are percent-encoded. |
/// | `jitter` | fraction in (0, 0.5] | none | Spread each entry's TTL by ± this fraction. |
/// | `mode` | `"normal"`, `"observe"`, `"bypass"` | `"normal"` | The starting mode (switch at run time with `NAME_cache().set_mode(..)`). |
/// | `crate` | path string: `"my_app::cache"` | the runtime's name in your `Cargo.toml` (`::cache_runtime`, or the name a `package = "cache-runtime"` rename gives it) | Where the generated code finds the runtime, for a crate that reaches it through a re-export (a facade crate; as serde's `#[serde(crate = "...")]`). |
/// | `in_trait` | `true`/`false`, or bare `in_trait` | `false` | A method of a trait impl, or a trait's default method: generate the function alone, without companions. See [Trait impls](#trait-impls). Not with `purge` or `etag`. |
///
/// # Generated items
///
/// For `#[cached(...)] fn NAME(params) -> R` with cached value type `V` (below), all with the
/// function's visibility, `async` for an `async fn` and blocking otherwise. "Key params" are
/// the parameters not in `skip(...)`. In an `impl` block they are associated functions too
/// (`Self::invalidate_NAME(id)`, `self.lookup_NAME(id)` for a `&self` method, which takes
/// `&self` first).
///
/// | item | what it does |
/// |---|---|
/// | `NAME(params) -> R` | The cached function: local → Redis → body (once per key) → store → return. |
/// | `NAME_entry(params) -> R with V as Entry<V>` | `NAME`, with the value wrapped in a `cache_runtime::Entry` (ETag, creation time, tags, `source()`: local, Redis, body or stale), for HTTP responses: `Entry<T>`, `Result<Entry<T>, E>`, `Option<Entry<T>>`, `Entry<Option<T>>` with `cache_none`. |
/// | `NAME_uncached(params) -> R` | The original body, without the cache. |
/// | `invalidate_NAME(key params) -> Result<(), CacheError>` | Removes the entry from every tier (`Err`: Redis did not confirm; the local tier is always cleared). |
/// | `populate_NAME(key params, value: V) -> Result<(), CacheError>` | Writes `value` into every tier (write-through). The argument is `cached_value` (or `new_value`, `value_1`, ...) if a parameter is already called `value`. |
/// | `lookup_NAME(key params) -> Option<V>` | The cached value, without running the body. |
/// | `refresh_NAME(params) -> R` | Runs the body now and stores a cacheable result in every tier. |
/// | `NAME_cache() -> &'static Cache<V>` | The cache itself: `name()`, `stats()`, `clear()`, `set_mode(..)`, `redis_key(..)`, ... |
///
/// What is cached depends on the return type, recognised by name:
///
/// | return type | `V` | cached | returned without caching |
/// |---|---|---|---|
/// | `T` | `T` | every value | — |
/// | `Result<T, E>` (also `io::Result<T>`) | `T` | `Ok(t)` | `Err(e)` |
/// | `Option<T>` | `T` | `Some(t)` | `None` |
/// | `Option<T>` with `cache_none` | `Option<T>` | both | — |
///
/// An alias of another name (`type AppResult<T> = Result<T, AppError>`) is a compile error at
/// the return type until the attribute says what it is: `result` (only `Ok` is cached) or
/// `option` (only `Some`); `result = false` / `option = false` cache the whole value.
///
/// ```
/// use cache_runtime::cached;
///
/// #[derive(Debug)]
/// pub struct AppError;
/// pub type AppResult<T> = Result<T, AppError>;
///
/// #[cached(ttl = 60, result)]
/// fn parse_port(s: String) -> AppResult<u16> {
///     s.parse().map_err(|_| AppError)
/// }
///
/// assert_eq!(parse_port("8080".into()).ok(), Some(8080));
/// assert!(parse_port("x".into()).is_err()); // errors are returned, never cached
/// ```
///
/// `V` must be `Clone + Send + Sync + 'static` (every hit returns a clone: return `Arc<T>` for
/// large values) and, with a Redis tier, `max_bytes` or `etag`, `Serialize + DeserializeOwned`
/// (serde implements these for `Arc<T>` and `Rc<T>` only with its `rc` feature: `serde = {
/// version = "1", features = ["derive", "rc"] }`).
///
/// ```
/// use cache_runtime::cached;
///
/// #[cached(ttl = 60, key = "user:<id>")]
/// fn user_name(id: u64) -> Option<String> {
///     (id == 1).then(|| "Ada".to_string())
/// }
///
/// assert_eq!(user_name(1).as_deref(), Some("Ada"));
/// assert_eq!(user_name(2), None); // not cached without `cache_none`
/// assert_eq!(lookup_user_name(1).as_deref(), Some("Ada"));
/// populate_user_name(2, "Grace".into()).unwrap();
/// assert_eq!(user_name(2).as_deref(), Some("Grace"));
/// assert_eq!(user_name_entry(1).unwrap().source(), cache_runtime::Source::Local);
/// ```
///
/// # Keys
///
/// Every parameter is either in the key or listed in `skip(...)`: a parameter left out of a
/// template would make calls that differ only in it share one entry, so that is a compile
/// error, not a silent default. Without `key`, the key is the function's path followed by
/// every key parameter (`self` too, for a method: then `Self` must implement
/// `cache_runtime::key::KeyPart`). In a template, `<name>` is a parameter (`<type>` and
/// `<r#type>` both name `r#type`), `<name.field.0>` a field of it, `<self.field>` a field of the
/// receiver; each placeholder must be followed by a separator (`: / | , ; # = & @ ! ? .`) or
/// end the template, and values are escaped, so distinct arguments never share a key.
/// Placeholder types implement `cache_runtime::key::KeyPart` (integers, `bool`, `char`,
/// strings, `Option`, tuples and sequences do; your own identifier types in one line,
/// `w.display(&self.0)`).
///
/// ```
/// use cache_runtime::cached;
///
/// struct Repo { tenant: u64 }
///
/// impl Repo {
///     #[cached(ttl = 60, key = "tenant:<self.tenant>:user:<id>", skip(verbose))]
///     fn user(&self, id: u64, verbose: bool) -> String {
///         if verbose { format!("user {id} of tenant {}", self.tenant) } else { id.to_string() }
///     }
/// }
///
/// let repo = Repo { tenant: 7 };
/// assert_eq!(repo.user(1, false), "1");
/// assert_eq!(repo.user(1, true), "1"); // `verbose` is skipped: the same entry
/// assert_eq!(repo.lookup_user(1), Some("1".to_string()));
/// ```
///
/// # Signatures
///
/// Cached: `fn` and `async fn`; free functions, `&self` methods (and methods taking `self`
/// by value or as `self: Arc<Self>`, below) and associated functions without `self` in
/// inherent `impl` blocks, and in trait impls with `in_trait` (see
/// [Trait impls](#trait-impls)); lifetime, type and const parameters and `where`
/// clauses; generic `impl` blocks; `mut` parameters; raw identifiers; functions a
/// `macro_rules!` writes, with the template, tags, types or patterns passed in as fragments
/// (a placeholder resolves to the parameter it names, whichever side wrote it).
///
/// **Generic functions and generic `impl`s get one cache per instantiation**: `Typed::<u8>`
/// and `Typed::<u64>` never share an entry. The instantiation (its path with type arguments,
/// e.g. `my_app::Typed<u8>::sized`) is the cache's name (an explicit `name` gets it appended
/// in brackets) and starts its keys: a template key of an instantiation with type arguments
/// becomes `my_app::Typed<u8>::sized|typed:1:0`. Type parameters in the key need a `KeyPart`
/// bound, a type parameter in `V` the value bounds above.
///
/// **A type parameter that only skipped parameters have is skipped with them**: sqlx's
/// `fn load<'c, E: Executor<'c, Database = Postgres>>(ex: E, id: i64)` with `skip(ex)` has one
/// cache and one key per `id`, whether `ex` is a `&PgPool` or a `&mut Transaction`, and the
/// companions do not have `E`: `invalidate_load(id)` drops the entry every executor reads. So
/// do the parameters only such a bound names (`DB` in `E: Executor<'c, Database = DB>`), the
/// const parameters of a skipped `[u8; N]` buffer, and skipped `impl Trait` parameters (a
/// callback: every closure shares the cache). A type parameter that no parameter has, chosen by
/// turbofish (`fn count<T: Table>(pool: &PgPool)`), may change the result, so it still splits
/// the cache and the companions name it (`invalidate_count::<Users>()`).
///
/// ```
/// use cache_runtime::cached;
///
/// trait Executor { fn name(&self, id: u64) -> String; }
/// struct Pool;
/// struct Transaction<'p>(&'p Pool);
/// impl Executor for Pool { fn name(&self, id: u64) -> String { format!("user{id}") } }
/// impl Executor for Transaction<'_> { fn name(&self, id: u64) -> String { self.0.name(id) } }
///
/// #[cached(ttl = 300, key = "user-name:<id>", skip(ex))]
/// fn user_name<E: Executor>(ex: &E, id: u64) -> String {
///     ex.name(id)
/// }
///
/// let pool = Pool;
/// user_name(&pool, 1);
/// // The pool's entry, read through a transaction; one invalidation, no type named.
/// assert_eq!(lookup_user_name(1), Some("user1".to_string()));
/// assert_eq!(user_name(&Transaction(&pool), 1), "user1");
/// invalidate_user_name(1).unwrap();
/// assert_eq!(lookup_user_name(1), None);
/// ```
///
/// ```
/// use std::marker::PhantomData;
/// use cache_runtime::cached;
///
/// struct Typed<T>(u64, PhantomData<T>);
///
/// impl<T: Send + Sync + 'static> Typed<T> {
///     #[cached(ttl = 300, key = "typed:<self.0>:<x>")]
///     fn sized(&self, x: usize) -> usize {
///         std::mem::size_of::<T>() + x
///     }
///
///     #[cached(ttl = 300, key = "count:<id>")]
///     fn count(id: u64) -> u64 {
///         id * std::mem::size_of::<T>() as u64
///     }
///
///     fn reset(id: u64) {
///         Self::invalidate_count(id).unwrap();
///     }
/// }
///
/// assert_eq!(Typed::<u8>(1, PhantomData).sized(0), 1);
/// assert_eq!(Typed::<u64>(1, PhantomData).sized(0), 8);
/// assert_eq!(Typed::<u64>::count(2), 16);
/// Typed::<u64>::reset(2);
/// assert_eq!(Typed::<u64>::lookup_count(2), None);
/// assert!(Typed::<u8>::sized_cache().name().ends_with("Typed<u8>::sized"));
/// ```
///
/// A method may also borrow its receiver through a pointer, `self: &Arc<Self>` (or
/// `&Rc<Self>`, `&Box<Self>`): `NAME`, `NAME_entry` and `refresh_NAME` keep that receiver, the
/// other companions take `&self` (an `Arc<Self>` derefs to it), and keys are the same
/// either way. It may take its receiver by value too: `self`, `mut self`, `self: Arc<Self>`
/// (`Rc<Self>`, `Box<Self>`, `Pin<Box<Self>>`); the wrapper moves it into the body's call, a
/// hit drops it, and the key reads it as `&Self`:
///
/// ```
/// use std::sync::Arc;
/// use cache_runtime::cached;
///
/// struct Users {
///     tenant: u32,
/// }
///
/// impl Users {
///     // A handle that callers clone into spawned tasks.
///     #[cached(ttl = 60, key = "user:<self.tenant>:<id>")]
///     async fn name(self: Arc<Self>, id: u64) -> String {
///         format!("user {id} of tenant {}", self.tenant)
///     }
/// }
///
/// let users = Arc::new(Users { tenant: 7 });
/// assert_eq!(pollster::block_on(users.clone().name(1)), "user 1 of tenant 7");
/// let kept = pollster::block_on(users.lookup_name(1));
/// assert_eq!(kept.as_deref(), Some("user 1 of tenant 7"));
/// ```
///
/// Refused with an explanation at the offending token: `&mut self` and `self: Pin<&mut
/// Self>` (a hit would skip the mutation; `self: &Self` is `&self`), `&mut` parameters in the key (a hit would skip
/// the mutation; a handle listed in `skip(...)`, such as a connection or a transaction, is
/// accepted), `impl Trait` parameters in the key (skip them, or name a type parameter with a
/// `KeyPart` bound), `impl Trait` return types (`impl Future`: write an `async fn`, which
/// also implements a trait's `-> impl Future<Output = T> + Send` method), returning `()` or
/// `!`, a boxed future (`Pin<Box<dyn Future>>`, `BoxFuture`, `LocalBoxFuture`) outside an
/// `#[async_trait]` impl's `in_trait` method, or a value that borrows (a reference, or a type
/// naming a lifetime other than `'static`; an `Err` may borrow, e.g. `Result<u8, &'static str>`, since errors are never
/// stored; a `&'static` value is fine in a local-only cache), `const`, `unsafe` and `extern`
/// functions, a `_` parameter (name it and `skip` it), and parameter patterns with other than
/// plain bindings, `_` and `..` (`ref`, literals, `x @ ..`).
///
/// Parameter patterns that destructure into plain bindings are fine, as axum handlers write
/// their extractors: the bindings are what the key, templates and `skip(...)` name, and the
/// companions take the argument whole.
///
/// ```
/// use cache_runtime::cached;
///
/// struct Path<T>(T);
/// struct State<S>(S);
///
/// #[cached(ttl = 60, key = "user:<id>", skip(db))]
/// fn user(State(db): State<&str>, Path(id): Path<u64>) -> String {
///     format!("{db}/user{id}")
/// }
///
/// assert_eq!(user(State("pg"), Path(9)), "pg/user9");
/// assert_eq!(lookup_user(Path(9)), Some("pg/user9".to_string()));
/// invalidate_user(Path(9)).unwrap();
/// ```
///
/// # Trait impls
///
/// A trait impl may contain only the trait's items, and an attribute cannot see the `impl`
/// around it. So in a trait impl write `in_trait`: the method is generated alone, carrying its
/// body (no `NAME_uncached`, `NAME_entry`, `invalidate_NAME`, `populate_NAME`,
/// `lookup_NAME`, `refresh_NAME` or `NAME_cache`), and takes the attributes of both `NAME`
/// and `NAME_uncached` (see [Attributes](#attributes); `#[expect]` is checked there, and an
/// attribute macro such as `#[tracing::instrument]` wraps every call, hits included). Each
/// implementing type (and each
/// instantiation of a generic one) has its own cache, named `<my_app::Pg as my_app::Repo>::load`;
/// a template key starts with that path, as for a generic instantiation, so implementors never
/// share an entry. A trait's default method takes `in_trait` too and gets one cache per
/// implementing type. Invalidate through `tags` and `cache_runtime::invalidate_tag`; for the
/// companions, cache an inherent or free function and call it from the trait method.
///
/// ```
/// use cache_runtime::cached;
///
/// trait Repo {
///     fn load(&self, id: u64) -> Option<String>;
///     async fn fetch(&self, id: u64) -> Result<u64, String>;
/// }
///
/// struct Pg { tenant: u64 }
///
/// impl Repo for Pg {
///     #[cached(ttl = 60, in_trait, key = "user:<self.tenant>:<id>", tags = ["user:<id>"])]
///     fn load(&self, id: u64) -> Option<String> {
///         Some(format!("user {id} of tenant {}", self.tenant))
///     }
///
///     #[cached(ttl = 60, in_trait, skip(self))]
///     async fn fetch(&self, id: u64) -> Result<u64, String> {
///         Ok(id * 2)
///     }
/// }
///
/// let pg = Pg { tenant: 7 };
/// assert_eq!(pg.load(1).as_deref(), Some("user 1 of tenant 7"));
/// cache_runtime::invalidate_tag_blocking("user:1").unwrap(); // drops it in every tier
/// assert_eq!(pollster::block_on(pg.fetch(2)), Ok(4));
/// ```
///
/// Without `in_trait`, rustc reports every companion as not a member of the trait (`E0407`);
/// the first error, ``const `__NAME_in_a_trait_impl_needs_the_in_trait_option` is not a member
/// of trait``, names the fix.
///
/// In an `#[async_trait]` impl, `in_trait` works the same way: `#[async_trait]` runs first and
/// turns the `async fn` into a method returning `Pin<Box<dyn Future<Output = T> + Send>>`, and
/// `#[cached]` caches `T` (the key is built from the arguments before the boxed future takes
/// them), through `dyn Trait` too. `soft_timeout` and `refresh_ahead` are refused there: that
/// future borrows its arguments, so it cannot finish in the background.
///
/// ```
/// use async_trait::async_trait;
/// use cache_runtime::cached;
///
/// #[async_trait]
/// trait UserRepo: Send + Sync {
///     async fn find(&self, id: u64) -> Result<Option<String>, String>;
/// }
///
/// struct Pg { tenant: u64 }
///
/// #[async_trait]
/// impl UserRepo for Pg {
///     #[cached(in_trait, ttl = 60, key = "user:<self.tenant>:<id>", tags = ["user:<id>"])]
///     async fn find(&self, id: u64) -> Result<Option<String>, String> {
///         Ok(Some(format!("user {id} of tenant {}", self.tenant)))
///     }
/// }
///
/// let repo: Box<dyn UserRepo> = Box::new(Pg { tenant: 7 });
/// let found = pollster::block_on(repo.find(1));
/// assert_eq!(found, Ok(Some("user 1 of tenant 7".to_string())));
/// cache_runtime::invalidate_tag_blocking("user:1").unwrap();
/// ```
///
/// Or cache an inherent or free function and call it from the trait method, which also gives
/// the companions:
///
/// ```
/// use cache_runtime::cached;
///
/// trait Load { fn load(&self, id: u64) -> u64; }
/// struct Repo;
///
/// impl Repo {
///     #[cached(ttl = 60, skip(self))]
///     fn load_cached(&self, id: u64) -> u64 { id * 2 }
/// }
///
/// impl Load for Repo {
///     fn load(&self, id: u64) -> u64 { self.load_cached(id) }
/// }
///
/// assert_eq!(Repo.load(2), 4);
/// assert_eq!(Repo.lookup_load_cached(2), Some(4)); // the companions, from the inherent fn
/// ```
///
/// # How the generated functions find their cache
///
/// A function without `self` may be a free function or an associated one, and no path names
/// it in both places; so the generated functions never call each other by path: each finds
/// the cache of its instantiation itself, and for a function without `self`, `NAME`,
/// `NAME_entry` and `refresh_NAME` contain a copy of the body (`NAME_uncached` is the
/// original). Keep long bodies in a helper function.
///
/// # Attributes
///
/// Other attributes on the cached function go where they belong:
///
/// | attribute | `NAME` | `NAME_uncached` | `NAME_entry` | `refresh_NAME` | `invalidate_`/`populate_`/`lookup_NAME`, `NAME_cache` |
/// |---|---|---|---|---|---|
/// | `///` docs, `#[doc = ...]`, `#[doc(alias)]` | ✓ | generated | generated | generated | generated |
/// | `#[doc(hidden)]` | ✓ | ✓ | ✓ | ✓ | ✓ |
/// | `#[cfg(...)]` | ✓ | ✓ | ✓ | ✓ | ✓ |
/// | `#[allow(...)]` (any lint, `clippy::` too) | ✓ | ✓ | ✓ | ✓ | ✓ |
/// | `#[expect(...)]` | as `allow` | ✓ (checked here, once) | as `allow` | as `allow` | as `allow` |
/// | `#[warn]`, `#[deny]`, `#[forbid]` | | ✓ | | | |
/// | `#[deprecated]` | ✓ | ✓ | ✓ | ✓ | ✓ |
/// | `#[must_use]` | ✓ | ✓ | ✓ | | |
/// | `#[inline]`, `#[cold]`, `#[track_caller]` | ✓ | ✓ | | | |
/// | any other (`#[tracing::instrument]`, ...) | | ✓ | | | |
///
/// `#[cfg_attr(pred, a, b)]` is read as `a` and `b`, each kept under `pred`. A deprecated
/// cached function warns its callers, not its own definition (the generated
/// functions allow `deprecated`).
///
/// A parameter's `#[cfg(...)]` goes with each use the generated code makes of it (the
/// companions' parameter, its part of the key, the call to the body): where it is compiled
/// out, so are they, and a template placeholder naming it writes nothing. Its
/// `#[cfg_attr(...)]` goes to the companions' parameter too.
///
/// ```
/// use cache_runtime::cached;
///
/// #[cached(ttl = 60, key = "user:<id>:<trace>")]
/// fn user(id: u64, #[cfg(any())] trace: u64) -> String {
///     format!("user {id}")
/// }
///
/// assert_eq!(user(7), "user 7");
/// assert_eq!(lookup_user(7).as_deref(), Some("user 7"));
/// ```
///
/// Attribute macros see what is below them. To trace every run of the body (misses and
/// refreshes, not hits), put `#[tracing::instrument]` *above* `#[cached]`: it instruments the
/// body before `#[cached]` copies it. Below `#[cached]` it lands on `NAME_uncached`, which a
/// `&self` method calls on every miss but a function without `self` does not (it runs its
/// own copy of the body).
///
/// ```
/// #![deny(warnings)]
/// use cache_runtime::cached;
///
/// /// Total price in cents.
/// #[must_use]
/// #[allow(clippy::too_many_arguments, non_snake_case)]
/// #[cached(ttl = 60)]
/// pub fn priceOf(a: u8, b: u8, c: u8, d: u8, e: u8, f: u8, g: u8, mut h: u8) -> u32 {
///     h += 1;
///     [a, b, c, d, e, f, g, h].iter().map(|&x| u32::from(x)).sum()
/// }
///
/// assert_eq!(priceOf(1, 1, 1, 1, 1, 1, 1, 0), 8);
/// assert_eq!(lookup_priceOf(1, 1, 1, 1, 1, 1, 1, 0), Some(8));
/// ```
///
/// # Coming from the `cached` crate
///
/// `time` (`ttl_secs`) is `ttl`, `size` (`max_size`) is `capacity`, `convert` is a `key`
/// template, `result`/`option` are not needed (`Ok`/`Some` are cached by return type),
/// `sync_writes` is always on, expiry is never restarted by a hit (`time_refresh`),
/// `NAME_no_cache` is `NAME_uncached`, `NAME_prime_cache` is `refresh_NAME`. The README's
/// "Migrating from the `cached` crate" has the full mapping.
#[proc_macro_attribute]
pub fn cached(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item2: proc_macro2::TokenStream = item.clone().into();
    let result = options::parse(attr.into()).and_then(|opts| {
        let f: syn::ItemFn = syn::parse2(item2.clone()).map_err(|e| {
            // A trait's method declaration (`fn load(&self, id: u64) -> u64;`): no body.
            match syn::parse2::<syn::TraitItemFn>(item2.clone()) {
                Ok(decl) if decl.default.is_none() => syn::Error::new_spanned(
                    &decl.sig,
                    "#[cached] needs the function's body, and a method declaration has none: \
                     put `#[cached(in_trait, ...)]` on the method in each `impl` of the trait \
                     (or on a default body written here)",
                ),
                _ => syn::Error::new(
                    e.span(),
                    "#[cached] applies to functions and `&self` methods",
                ),
            }
        })?;
        expand::expand(opts, f)
    });
    match result {
        Ok(ts) => ts.into(),
        // Keep the function itself so that one attribute error does not cascade into
        // "cannot find function" errors at every call site.
        Err(e) => {
            let mut out = e.to_compile_error();
            out.extend(item2);
            out.into()
        }
    }
}

/// Derives `cache_runtime::key::KeyPart` (use it through `cache_runtime::key::KeyPart`), so
/// a struct or an enum can be a key parameter or a `<placeholder>` of a key template. Every
/// field is written with its own `KeyPart` impl, and distinct values never share a key:
///
/// - a newtype is its field (`UserId(7)` → `7`);
/// - named fields are `{name=value,name=value}`; other tuple fields `[a+b]`, like a tuple; a
///   unit struct writes nothing;
/// - an enum variant is its name, then its fields as above (`All`, `ById[7]`, `Page{n=2}`).
///
/// `#[key(skip)]` on a field leaves it out (what does not change the result: a request id,
/// a trace span). Type parameters get a `KeyPart` bound. Unions are refused.
///
/// ```
/// use cache_runtime::cached;
/// use cache_runtime::key::{KeyPart, KeyWriter};
///
/// #[derive(KeyPart)]
/// struct UserId(u64);
///
/// #[derive(KeyPart)]
/// enum Sort { Newest, ByScore { min: u32 } }
///
/// #[derive(KeyPart)]
/// struct Search {
///     text: String,
///     page: u32,
///     sort: Sort,
///     #[key(skip)]
///     request_id: u64,
/// }
///
/// #[cached(ttl = 60, key = "search:<user>:<q>")]
/// fn search(user: UserId, q: &Search) -> Vec<String> {
///     vec![format!("{} p{}", q.text, q.page)]
/// }
///
/// let q = Search { text: "a b".into(), page: 2, sort: Sort::ByScore { min: 3 }, request_id: 1 };
/// let mut w = KeyWriter::with_head("");
/// q.write_key(&mut w);
/// assert_eq!(w.finish(), "{text=a%20b,page=2,sort=ByScore{min=3}}");
/// assert_eq!(search(UserId(7), &q), ["a b p2"]);
/// let other_request = Search { request_id: 2, ..q };
/// assert_eq!(lookup_search(UserId(7), &other_request), Some(vec!["a b p2".to_string()]));
/// ```
#[proc_macro_derive(KeyPart, attributes(key))]
pub fn derive_key_part(item: TokenStream) -> TokenStream {
    let krate = options::runtime_path();
    syn::parse::<syn::DeriveInput>(item)
        .and_then(|input| key_part::derive(input, &krate))
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// The key separators as an array literal, `&[':', '/', ...]`, for
/// `cache_runtime::key::SEPARATORS`: one definition shared by the runtime's key encoding
/// and the macro's template check. Not a public API.
#[doc(hidden)]
#[proc_macro]
pub fn __key_separators(input: TokenStream) -> TokenStream {
    if !input.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "`__key_separators!` takes no input",
        )
        .to_compile_error()
        .into();
    }
    let chars = template::SEPARATORS;
    quote::quote!(&[#(#chars),*]).into()
}
