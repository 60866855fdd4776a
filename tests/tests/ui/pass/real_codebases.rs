//! Signatures as real codebases write them (axum-style services over a pool, sqlx-style
//! handles, newtype ids, `anyhow`-style results, nested modules with `pub use`, generic
//! repositories, trait impls, an axum handler on a `Router`), each called twice with the body
//! running once, then invalidated and called again with the body running again. Local tier
//! only. The refused neighbours have fail cases: `impl Trait` parameters in the key
//! (`impl_trait_param`), `unsafe fn` (`unsafe_fn`), `extern` (`extern_fn`), `self:
//! Pin<&mut Self>` (`self_pin_mut_receiver`), a key type without `KeyPart` (`param_not_key_part`).
#![deny(warnings)]

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cache_runtime::cached;
use cache_runtime::key::{KeyPart, KeyWriter};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[path = "support/runs.rs"]
mod runs;
use runs::Runs;

/// `$call` twice: one body run; `$invalidate`; `$call` again: one more run, same value.
macro_rules! once_then_again {
    ($runs:expr, $call:expr, $invalidate:expr $(,)?) => {{
        let before = $runs.get();
        let first = $call;
        let second = $call;
        assert_eq!(first, second, "{}", stringify!($call));
        assert_eq!(
            $runs.get() - before,
            1,
            "a hit ran the body: {}",
            stringify!($call)
        );
        $invalidate;
        let third = $call;
        assert_eq!(first, third, "{}", stringify!($call));
        assert_eq!(
            $runs.get() - before,
            2,
            "invalidation did not drop the entry: {}",
            stringify!($invalidate)
        );
        first
    }};
}

// ---------------------------------------------------------------------------------------
// Stand-ins for the crates a service depends on (no heavy dependencies).

/// sqlx's shape: `Pool<DB>`, `PgPool`, `sqlx::Error`, a transaction.
pub mod sqlx {
    use std::marker::PhantomData;
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub struct Postgres;

    pub struct Pool<DB> {
        queries: AtomicUsize,
        _db: PhantomData<DB>,
    }

    pub type PgPool = Pool<Postgres>;

    impl<DB> Pool<DB> {
        pub fn new() -> Self {
            Self {
                queries: AtomicUsize::new(0),
                _db: PhantomData,
            }
        }

        pub fn query(&self) {
            self.queries.fetch_add(1, Ordering::SeqCst);
        }

        pub fn queries(&self) -> usize {
            self.queries.load(Ordering::SeqCst)
        }
    }

    #[derive(Debug)]
    pub enum Error {
        RowNotFound,
    }

    impl std::fmt::Display for Error {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("no rows returned")
        }
    }

    impl std::error::Error for Error {}

    pub trait Database: Send + Sync + 'static {}

    impl Database for Postgres {}

    /// A transaction borrows a connection of the pool.
    pub struct Transaction<'c, DB> {
        pool: &'c Pool<DB>,
    }

    impl<DB> Pool<DB> {
        pub fn begin(&self) -> Transaction<'_, DB> {
            Transaction { pool: self }
        }
    }

    /// sqlx's `Executor<'c>`: implemented by `&Pool` and `&mut Transaction`, taken by value.
    pub trait Executor<'c>: Send + Sized {
        type Database: Database;

        fn fetch_name(self, id: i64) -> Result<String, Error>;
    }

    impl<'c, DB: Database> Executor<'c> for &'c Pool<DB> {
        type Database = DB;

        fn fetch_name(self, id: i64) -> Result<String, Error> {
            self.query();
            Ok(format!("name{id}"))
        }
    }

    impl<'c, 't, DB: Database> Executor<'c> for &'c mut Transaction<'t, DB> {
        type Database = DB;

        fn fetch_name(self, id: i64) -> Result<String, Error> {
            self.pool.query();
            Ok(format!("name{id}"))
        }
    }
}

/// anyhow's shape: `anyhow::Result<T>` with a defaulted, non-`Clone` error.
pub mod anyhow {
    #[derive(Debug)]
    pub struct Error(pub String);

    impl std::fmt::Display for Error {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    pub type Result<T, E = Error> = core::result::Result<T, E>;
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub email: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AppError {
    NotFound,
    Db(String),
}

/// A newtype id, keyed by its number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UserId(pub u64);

impl KeyPart for UserId {
    fn write_key(&self, w: &mut KeyWriter) {
        w.display(&self.0);
    }
}

/// An enum as services have them (`Hash` for their maps; `KeyPart` for the cache).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Region {
    Eu,
    Us,
}

impl KeyPart for Region {
    fn write_key(&self, w: &mut KeyWriter) {
        w.str(match self {
            Region::Eu => "eu",
            Region::Us => "us",
        });
    }
}

/// A query-string filter, keyed by its fields (`<filter.page>`).
pub struct Filter {
    pub q: String,
    pub page: u32,
}

pub trait Logger {
    fn log(&self, line: &str);
}

pub struct Stdout;

impl Logger for Stdout {
    fn log(&self, _line: &str) {}
}

// ---------------------------------------------------------------------------------------
// An axum-style service holding an `Arc<Pool>`.

static SERVICE_GET: Runs = Runs::new();
static SERVICE_BY_EMAIL: Runs = Runs::new();
static SERVICE_AVATAR: Runs = Runs::new();

pub struct UserService {
    pool: Arc<sqlx::PgPool>,
    tenant: u64,
}

impl UserService {
    /// `GET /users/:id`.
    #[cached(tier = "local", ttl = 60, key = "svc:user:<self.tenant>:<id>")]
    pub async fn get(&self, id: uuid::Uuid) -> Result<User, AppError> {
        SERVICE_GET.hit();
        self.pool.query();
        if id.is_nil() {
            return Err(AppError::NotFound);
        }
        Ok(User {
            id: id.as_u128() as u64,
            email: format!("{}@t{}", id.as_u128(), self.tenant),
        })
    }

    #[cached(tier = "local", ttl = 300, key = "svc:email:<email>", skip(self))]
    pub async fn by_email(&self, email: &str) -> Result<Option<User>, AppError> {
        SERVICE_BY_EMAIL.hit();
        self.pool.query();
        Ok(email.strip_suffix("@x").map(|name| User {
            id: name.len() as u64,
            email: email.to_string(),
        }))
    }

    /// A large value behind an `Arc`.
    #[cached(ttl = 60, key = "svc:avatar:<self.tenant>:<id>")]
    pub(crate) async fn avatar(&self, id: UserId) -> Result<Arc<Vec<u8>>, AppError> {
        SERVICE_AVATAR.hit();
        Ok(Arc::new(vec![id.0 as u8; 4]))
    }
}

// A free function with a skipped `&PgPool`.
static FIND_USER: Runs = Runs::new();

#[cached(tier = "local", ttl = 300, key = "db:user:<id>", skip(pool))]
pub async fn find_user(pool: &sqlx::PgPool, id: i64) -> Result<Option<User>, sqlx::Error> {
    FIND_USER.hit();
    pool.query();
    if id < 0 {
        return Err(sqlx::Error::RowNotFound);
    }
    Ok((id > 0).then(|| User {
        id: id as u64,
        email: format!("{id}@db"),
    }))
}

// `&sqlx::Pool<sqlx::Postgres>` spelled out, default key.
static COUNT_ORDERS: Runs = Runs::new();

#[cached(ttl = 30, skip(db))]
pub fn count_orders(db: &sqlx::Pool<sqlx::Postgres>, user: UserId, region: Region) -> u64 {
    COUNT_ORDERS.hit();
    db.query();
    user.0 * 10 + region as u64
}

// ---------------------------------------------------------------------------------------
// Parameter types.

static SLUGIFY: Runs = Runs::new();

#[cached(ttl = 60)]
fn slugify(title: &str) -> String {
    SLUGIFY.hit();
    title.to_lowercase().replace(' ', "-")
}

static GREET: Runs = Runs::new();

#[cached(ttl = 60, key = "greet:<name>")]
async fn greet(name: String) -> String {
    GREET.hit();
    format!("hello {name}")
}

static SEARCH: Runs = Runs::new();

#[cached(ttl = 60, key = "search:<q>:<page>")]
fn search(q: Option<&str>, page: u32) -> Vec<String> {
    SEARCH.hit();
    vec![format!("{}#{page}", q.unwrap_or("*"))]
}

static BATCH: Runs = Runs::new();

#[cached(ttl = 60, key = "batch:<ids>")]
fn batch(ids: &[u64]) -> Vec<u64> {
    BATCH.hit();
    ids.iter().map(|i| i * 2).collect()
}

static JOIN: Runs = Runs::new();

#[cached(ttl = 60)]
fn join(parts: Vec<String>) -> String {
    JOIN.hit();
    parts.join("/")
}

static NORMALIZE: Runs = Runs::new();

#[cached(ttl = 60)]
fn normalize(s: Cow<'_, str>) -> String {
    NORMALIZE.hit();
    s.trim().to_string()
}

static SCALARS: Runs = Runs::new();

#[cached(ttl = 60, key = "scalars:<a>:<b>:<c>:<d>")]
fn scalars(a: u128, b: i64, c: bool, d: char) -> String {
    SCALARS.hit();
    format!("{a}{b}{c}{d}")
}

static DISTANCE: Runs = Runs::new();

#[cached(ttl = 60)]
fn distance(from: (i32, i32), to: (i32, i32)) -> u64 {
    DISTANCE.hit();
    u64::from(from.0.abs_diff(to.0)) + u64::from(from.1.abs_diff(to.1))
}

static GEO: Runs = Runs::new();

#[cached(ttl = 3600, key = "geo:<ip>")]
fn geo(ip: IpAddr) -> Option<String> {
    GEO.hit();
    ip.is_loopback().then(|| "localhost".to_string())
}

static DAILY: Runs = Runs::new();

#[cached(ttl = "1h", key = "daily:<day>:<region>")]
fn daily_report(day: chrono::NaiveDate, region: Region) -> Vec<u32> {
    DAILY.hit();
    vec![day.to_string().len() as u32, region as u32]
}

static SINCE: Runs = Runs::new();

#[cached(ttl = 60)]
fn events_since(at: chrono::DateTime<chrono::Utc>, limit: usize) -> usize {
    SINCE.hit();
    at.timestamp() as usize + limit
}

static PAGE: Runs = Runs::new();

#[cached(ttl = 60, key = "page:<filter.q>:<filter.page>")]
fn page(filter: &Filter) -> Vec<String> {
    PAGE.hit();
    vec![format!("{}@{}", filter.q, filter.page)]
}

static MISC: Runs = Runs::new();

/// `&String`, `&Vec<String>` and `&Option<String>` (as code written before clippy has them),
/// `Arc<str>`, a `[u8; 32]` digest, a `Duration`, a `&Path` and a `PathBuf`.
#[allow(clippy::ptr_arg, clippy::too_many_arguments)]
#[cached(ttl = 60)]
fn misc(
    name: &String,
    tags: &Vec<String>,
    nick: &Option<String>,
    shared: Arc<str>,
    digest: [u8; 32],
    timeout: Duration,
    dir: &Path,
    file: PathBuf,
) -> usize {
    MISC.hit();
    name.len()
        + tags.len()
        + nick.as_ref().map_or(0, String::len)
        + shared.len()
        + digest.len()
        + timeout.as_secs() as usize
        + dir.as_os_str().len()
        + file.as_os_str().len()
}

// ---------------------------------------------------------------------------------------
// Generics, where clauses, attributes, error types.

static RENDER: Runs = Runs::new();

#[cached(ttl = 60, key = "render:<x>")]
fn render<T>(x: T) -> String
where
    T: KeyPart + fmt::Display,
{
    RENDER.hit();
    format!("<{x}>")
}

static GET_JSON: Runs = Runs::new();

/// A JSON document decoded into the caller's type: one cache per `T`.
#[cached(ttl = 60, key = "json:<path>")]
pub async fn get_json<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static>(
    path: &str,
) -> Result<T, AppError> {
    GET_JSON.hit();
    let doc = format!("{{\"id\":{},\"email\":\"{path}\"}}", path.len());
    serde_json::from_str(&doc).map_err(|e| AppError::Db(e.to_string()))
}

static VISIBILITY: Runs = Runs::new();

/// Documented, `pub(crate)`, `#[inline]`, `#[must_use]`, with lint attributes.
#[doc(alias = "plan_limits")]
#[inline]
#[must_use]
#[allow(clippy::needless_pass_by_value, unused_variables)]
#[cached(ttl = 60)]
pub(crate) fn limits(plan: String, seats: u16) -> u32 {
    VISIBILITY.hit();
    u32::from(seats) * 10
}

static ANYHOW: Runs = Runs::new();

#[cached(ttl = 60)]
fn parse_config(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    ANYHOW.hit();
    text.split(',')
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow::Error(format!("bad pair {kv}")))
        })
        .collect()
}

static BOXED_ERR: Runs = Runs::new();

#[cached(ttl = 60, key = "rows:<table>")]
fn load_rows<T: DeserializeOwned + Clone + Send + Sync + 'static>(
    table: &str,
) -> Result<Vec<T>, Box<dyn std::error::Error + Send + Sync>> {
    BOXED_ERR.hit();
    Ok(serde_json::from_str(&format!("[{}]", table.len()))?)
}

static MAYBE: Runs = Runs::new();

#[cached(ttl = 60, cache_none, none_ttl = 5)]
fn maybe_user(id: UserId) -> Option<User> {
    MAYBE.hit();
    (id.0 % 2 == 0).then(|| User {
        id: id.0,
        email: String::new(),
    })
}

static LONGEST: Runs = Runs::new();

#[cached(ttl = 60, key = "longest:<x>:<y>")]
fn longest<'a>(x: &'a str, y: &'a str) -> String {
    LONGEST.hit();
    if x.len() >= y.len() { x } else { y }.to_string()
}

static LOGGED: Runs = Runs::new();

/// A skipped `&dyn Trait` logger and `&dyn Fn` progress callback (a skipped `impl Fn` is
/// refused: each closure would be a cache of its own, out of the companions' reach).
#[cached(ttl = 60, key = "logged:<id>", skip(logger, progress))]
fn logged(logger: &dyn Logger, id: u64, progress: &dyn Fn(u8)) -> u64 {
    LOGGED.hit();
    logger.log("loading");
    progress(100);
    id + 1
}

static PARAM_ATTR: Runs = Runs::new();

#[cached(ttl = 60, skip(ctx))]
fn param_attr(#[allow(unused_variables)] ctx: &str, id: u64) -> u64 {
    PARAM_ATTR.hit();
    id
}

// ---------------------------------------------------------------------------------------
// Receivers, trait impls, generic impls.

static ARC_SELF: Runs = Runs::new();
static ARC_SELF_ASYNC: Runs = Runs::new();

pub struct Worker {
    id: u64,
}

impl Worker {
    #[cached(ttl = 60, key = "worker:<self.id>:<n>")]
    fn job(self: &Arc<Self>, n: u64) -> u64 {
        ARC_SELF.hit();
        self.id * n
    }

    #[cached(ttl = 60, key = "worker_async:<n>", skip(self))]
    async fn job_async(self: &Arc<Self>, n: u64) -> u64 {
        ARC_SELF_ASYNC.hit();
        self.id + n
    }
}

/// A shard keyed by itself: the default key holds `self` (here a `&Rc<Self>`, in the
/// companions a `&Self`: the same encoding). Derived: a newtype is its field.
#[derive(KeyPart)]
pub struct Shard(u8);

static RC_SELF: Runs = Runs::new();

impl Shard {
    #[cached(ttl = 60)]
    fn rows(self: &Rc<Self>, table: &str) -> String {
        RC_SELF.hit();
        format!("{}/{table}", self.0)
    }
}

static EXPLICIT_LT: Runs = Runs::new();

impl Worker {
    #[cached(ttl = 60, key = "explicit:<self.id>:<name>")]
    fn explicit<'a>(&'a self, name: &'a str) -> String {
        EXPLICIT_LT.hit();
        format!("{}:{name}", self.id)
    }
}

trait Repository {
    fn load(&self, id: u64) -> Option<String>;
    async fn fetch(&self, id: UserId) -> Result<User, AppError>;
}

pub struct PgRepository {
    region: Region,
}

static TRAIT_LOAD: Runs = Runs::new();
static TRAIT_FETCH: Runs = Runs::new();

impl Repository for PgRepository {
    #[cached(ttl = 60, in_trait, key = "repo_load:<self.region>:<id>", tags = ["repo_user:<id>"])]
    fn load(&self, id: u64) -> Option<String> {
        TRAIT_LOAD.hit();
        Some(format!("{id}"))
    }

    #[cached(ttl = 60, in_trait, skip(self), tags = ["repo_fetch:<id>"])]
    async fn fetch(&self, id: UserId) -> Result<User, AppError> {
        TRAIT_FETCH.hit();
        Ok(User {
            id: id.0,
            email: String::new(),
        })
    }
}

pub struct Repo<T> {
    items: Vec<T>,
}

static GENERIC_REPO: Runs = Runs::new();
static GENERIC_REPO_ASYNC: Runs = Runs::new();

impl<T: Clone + Send + Sync + 'static> Repo<T> {
    #[cached(ttl = 60, key = "repo_item:<index>", skip(self))]
    fn item(&self, index: usize) -> Option<T> {
        GENERIC_REPO.hit();
        self.items.get(index).cloned()
    }

    #[cached(ttl = 60, key = "repo_all:<limit>", skip(self))]
    async fn first(&self, limit: usize) -> Vec<T> {
        GENERIC_REPO_ASYNC.hit();
        self.items.iter().take(limit).cloned().collect()
    }
}

/// A borrowed request context (`impl<'a> Ctx<'a>`).
pub struct Ctx<'a> {
    pool: &'a sqlx::PgPool,
    tenant: u64,
}

static CTX: Runs = Runs::new();

impl<'a> Ctx<'a> {
    #[cached(ttl = 60, key = "ctx:<self.tenant>:<id>")]
    fn user(&self, id: u64) -> Result<User, AppError> {
        CTX.hit();
        self.pool.query();
        Ok(User {
            id,
            email: format!("t{}", self.tenant),
        })
    }
}

static CONSTRUCTOR: Runs = Runs::new();

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    region: Region,
}

impl Settings {
    #[cached(ttl = 60)]
    pub fn load(region: Region) -> Result<Self, AppError> {
        CONSTRUCTOR.hit();
        Ok(Self { region })
    }
}

// ---------------------------------------------------------------------------------------
// More of what services write: recursion, `?` in an `async fn`, tuple-struct fields,
// std collections and `NonZero` ids, a method-level type parameter in a generic `impl`.

static FIB: Runs = Runs::new();

/// The classic: the body calls the cached function itself.
#[cached(ttl = 60, key = "fib:<n>")]
fn fib(n: u32) -> u128 {
    FIB.hit();
    if n < 2 {
        u128::from(n)
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

impl From<std::num::ParseIntError> for AppError {
    fn from(e: std::num::ParseIntError) -> Self {
        AppError::Db(e.to_string())
    }
}

static PARSE_ASYNC: Runs = Runs::new();

/// `?` through `From`, and an early `return`, in an `async fn` body.
#[cached(ttl = 60, key = "parse_id:<raw>")]
pub async fn parse_id(raw: String) -> Result<u64, AppError> {
    PARSE_ASYNC.hit();
    if raw.is_empty() {
        return Err(AppError::NotFound);
    }
    let n: u64 = raw.trim().parse()?;
    Ok(n)
}

/// A newtype id without `KeyPart`: its field is keyed (`<org.0>`).
#[derive(Clone, Copy)]
pub struct OrgId(pub u64);

static ORG: Runs = Runs::new();

#[cached(ttl = 60, key = "org:<org.0>:<member>")]
fn org_member(org: OrgId, member: Option<UserId>) -> bool {
    ORG.hit();
    member.is_some_and(|m| m.0 == org.0)
}

static COLLECTIONS: Runs = Runs::new();

#[allow(clippy::boxed_local)]
#[cached(ttl = 60)]
fn collections(
    filters: &BTreeMap<String, String>,
    ids: std::collections::BTreeSet<u64>,
    queue: std::collections::VecDeque<u8>,
    names: &[&str],
    chunk: Cow<'_, [u64]>,
    shard: std::num::NonZeroU16,
    boxed: Box<str>,
) -> usize {
    COLLECTIONS.hit();
    filters.len()
        + ids.len()
        + queue.len()
        + names.len()
        + chunk.len()
        + usize::from(shard.get())
        + boxed.len()
}

static CONVERT: Runs = Runs::new();

impl<T: Clone + Send + Sync + 'static> Repo<T> {
    /// A method-level type parameter in a generic `impl`: one cache per `(T, U)`.
    #[cached(ttl = 60, key = "convert:<index>", skip(self))]
    fn convert<U: From<T> + Clone + Send + Sync + 'static>(&self, index: usize) -> Option<U> {
        CONVERT.hit();
        self.items.get(index).cloned().map(U::from)
    }
}

// ---------------------------------------------------------------------------------------
// An axum handler cached as it is (its extractors as parameters, mounted on a
// `Router`), an HRTB serde bound, `where Self: Sized`, `&Self` in the key, a cached function
// inside a function body, a type parameter only a skipped parameter has.

#[derive(Clone)]
pub struct AppState {
    service: Arc<UserService>,
}

static HANDLER: Runs = Runs::new();

#[cached(ttl = 60, key = "handler:<id.0>", skip(state))]
async fn get_user_handler(
    state: axum::extract::State<AppState>,
    id: axum::extract::Path<u64>,
) -> Result<String, axum::http::StatusCode> {
    HANDLER.hit();
    if id.0 == 0 {
        return Err(axum::http::StatusCode::NOT_FOUND);
    }
    let user = state
        .service
        .get(uuid::Uuid::from_u128(u128::from(id.0)))
        .await
        .map_err(|_| axum::http::StatusCode::INTERNAL_SERVER_ERROR)?;
    Ok(user.email)
}

async fn fetch(app: &axum::Router, uri: &str) -> (axum::http::StatusCode, String) {
    use tower::ServiceExt;
    let response = app
        .clone()
        .oneshot(
            axum::http::Request::get(uri)
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8(bytes.to_vec()).unwrap())
}

static HRTB: Runs = Runs::new();

#[cached(ttl = 60, key = "hrtb:<raw>")]
fn decode<T>(raw: &str) -> Option<T>
where
    T: for<'de> Deserialize<'de> + Clone + Send + Sync + 'static,
{
    HRTB.hit();
    serde_json::from_str(raw).ok()
}

#[derive(Clone, PartialEq, Eq, Debug, KeyPart)]
pub struct Version(u32);

static SAME: Runs = Runs::new();

impl Version {
    /// `&Self` as a key parameter, `self` in the default key, `where Self: Sized`.
    #[cached(ttl = 60)]
    fn newer_than(&self, other: &Self) -> bool
    where
        Self: Sized,
    {
        SAME.hit();
        self.0 > other.0
    }
}

/// sqlx's `E: Executor` pattern: a type parameter only a skipped parameter has is skipped
/// with it. Every executor type shares the cache; the companions do not have `E`.
pub trait Executor {
    fn fetch_one(&self, id: i64) -> String;
}

impl<DB> Executor for sqlx::Pool<DB> {
    fn fetch_one(&self, id: i64) -> String {
        self.query();
        format!("row{id}")
    }
}

static EXECUTOR: Runs = Runs::new();

#[cached(ttl = 60, key = "exec:<id>", skip(ex))]
fn fetch_with<E: Executor + ?Sized>(ex: &E, id: i64) -> String {
    EXECUTOR.hit();
    ex.fetch_one(id)
}

impl Executor for str {
    fn fetch_one(&self, id: i64) -> String {
        format!("row{id}")
    }
}

static SQLX_EXECUTOR: Runs = Runs::new();

/// sqlx's own signature: read through `&PgPool` or `&mut Transaction` alike; `DB` is named
/// only by the executor's bound, so it goes with it.
#[cached(ttl = 60, key = "user-name:<id>", skip(ex))]
async fn user_name<'c, E, DB>(ex: E, id: i64) -> Result<String, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = DB>,
    DB: sqlx::Database,
{
    SQLX_EXECUTOR.hit();
    ex.fetch_name(id)
}

static KEYED_EXECUTOR: Runs = Runs::new();

/// A type parameter in the key stays one (entries per `K`); the executor's goes.
#[cached(ttl = 60, skip(ex))]
fn keyed_with<K: KeyPart + fmt::Display, E: Executor + ?Sized>(ex: &E, k: K) -> String {
    KEYED_EXECUTOR.hit();
    format!("{k}:{}", ex.fetch_one(0))
}

pub trait Table {
    const NAME: &'static str;
}

pub struct Users;
pub struct Orders;

impl Table for Users {
    const NAME: &'static str = "users";
}

impl Table for Orders {
    const NAME: &'static str = "orders";
}

static COUNT: Runs = Runs::new();

/// A type parameter no parameter has (chosen by turbofish) changes the result: it splits
/// the cache, and the companions name it.
#[cached(ttl = 60, skip(pool))]
fn row_count<T: Table>(pool: &sqlx::PgPool) -> String {
    COUNT.hit();
    pool.query();
    T::NAME.to_string()
}

static IMPORT: Runs = Runs::new();

/// A skipped `impl Fn` callback: every closure shares the cache.
#[cached(ttl = 60, skip(on_progress))]
fn import(batch: u32, on_progress: impl Fn(u8) + Send) -> u32 {
    IMPORT.hit();
    on_progress(100);
    batch * 2
}

// ---------------------------------------------------------------------------------------
// Modules, nested modules, `pub use`, companions called from another module.

pub mod db {
    pub mod users {
        use cache_runtime::cached;

        pub static NAME: super::super::Runs = super::super::Runs::new();

        #[cached(ttl = 60, key = "db:name:<id>")]
        pub fn name(id: u64) -> String {
            NAME.hit();
            format!("user{id}")
        }

        pub mod admin {
            use cache_runtime::cached;

            pub static ROLE: super::super::super::Runs = super::super::super::Runs::new();

            #[cached(ttl = 60, key = "db:role:<id>")]
            pub(super) fn role(id: u64) -> &'static str {
                ROLE.hit();
                if id == 0 {
                    "admin"
                } else {
                    "member"
                }
            }
        }

        pub fn role(id: u64) -> &'static str {
            admin::role(id)
        }

        pub fn forget_role(id: u64) {
            admin::invalidate_role(id).unwrap();
        }
    }

    pub use users::{invalidate_name, lookup_name, name};
}

pub mod handlers {
    /// A write handler in another module: the companion by its re-exported path.
    pub fn rename(id: u64) {
        super::db::invalidate_name(id).unwrap();
    }
}

// ---------------------------------------------------------------------------------------

fn assert_send<F: std::future::Future + Send>(f: F) -> F {
    f
}

#[tokio::main]
pub async fn main() {
    // The service.
    let pool = Arc::new(sqlx::PgPool::new());
    let svc = Arc::new(UserService {
        pool: pool.clone(),
        tenant: 3,
    });
    let id = uuid::Uuid::from_u128(42);
    let user = once_then_again!(
        SERVICE_GET,
        svc.get(id).await.unwrap(),
        svc.invalidate_get(id).await.unwrap(),
    );
    assert_eq!(user.id, 42);
    assert_eq!(pool.queries(), 2);
    // Errors are not cached.
    assert_eq!(svc.get(uuid::Uuid::nil()).await, Err(AppError::NotFound));
    assert_eq!(svc.get(uuid::Uuid::nil()).await, Err(AppError::NotFound));
    assert_eq!(SERVICE_GET.get(), 4);
    // A handler's future is `Send` (axum requires it), and runs on another task.
    let handler = {
        let svc = svc.clone();
        tokio::spawn(assert_send(async move { svc.get(id).await }))
    };
    assert_eq!(handler.await.unwrap(), Ok(user));
    assert_eq!(SERVICE_GET.get(), 4);

    once_then_again!(
        SERVICE_BY_EMAIL,
        svc.by_email("ada@x").await.unwrap(),
        svc.invalidate_by_email("ada@x").await.unwrap(),
    );
    once_then_again!(
        SERVICE_AVATAR,
        svc.avatar(UserId(7)).await.unwrap(),
        svc.invalidate_avatar(UserId(7)).await.unwrap(),
    );
    let other = UserService {
        pool: pool.clone(),
        tenant: 4,
    };
    assert_eq!(other.lookup_avatar(UserId(7)).await, None);

    // Skipped pools.
    once_then_again!(
        FIND_USER,
        find_user(&pool, 5).await.unwrap(),
        invalidate_find_user(5).await.unwrap(),
    );
    // `Ok(None)` is cached too.
    once_then_again!(
        FIND_USER,
        find_user(&pool, 0).await.unwrap(),
        invalidate_find_user(0).await.unwrap(),
    );
    assert!(find_user(&pool, -1).await.is_err());
    once_then_again!(
        COUNT_ORDERS,
        count_orders(&pool, UserId(2), Region::Us),
        invalidate_count_orders(UserId(2), Region::Us).unwrap(),
    );
    assert_eq!(lookup_count_orders(UserId(2), Region::Eu), None);

    // Parameter types.
    once_then_again!(
        SLUGIFY,
        slugify("Hello World"),
        invalidate_slugify("Hello World").unwrap()
    );
    once_then_again!(
        GREET,
        greet("ada".to_string()).await,
        invalidate_greet("ada".to_string()).await.unwrap()
    );
    once_then_again!(
        SEARCH,
        search(Some("rust"), 2),
        invalidate_search(Some("rust"), 2).unwrap()
    );
    once_then_again!(SEARCH, search(None, 2), invalidate_search(None, 2).unwrap());
    once_then_again!(
        BATCH,
        batch(&[1, 2, 3]),
        invalidate_batch(&[1, 2, 3]).unwrap()
    );
    assert_eq!(lookup_batch(&[1, 2]), None);
    once_then_again!(
        JOIN,
        join(vec!["a".into(), "b".into()]),
        invalidate_join(vec!["a".into(), "b".into()]).unwrap()
    );
    let owned = String::from(" x ");
    once_then_again!(
        NORMALIZE,
        normalize(Cow::Borrowed(owned.as_str())),
        invalidate_normalize(Cow::Owned(owned.clone())).unwrap()
    );
    once_then_again!(
        SCALARS,
        scalars(u128::MAX, -7, true, ':'),
        invalidate_scalars(u128::MAX, -7, true, ':').unwrap()
    );
    once_then_again!(
        DISTANCE,
        distance((0, 0), (3, -4)),
        invalidate_distance((0, 0), (3, -4)).unwrap()
    );
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    once_then_again!(GEO, geo(lo), invalidate_geo(lo).unwrap());
    let v6: IpAddr = "::1".parse().unwrap();
    assert_eq!(lookup_geo(v6), None);
    let day = chrono::NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
    once_then_again!(
        DAILY,
        daily_report(day, Region::Eu),
        invalidate_daily_report(day, Region::Eu).unwrap()
    );
    let at = chrono::DateTime::<chrono::Utc>::from_timestamp(1_700_000_000, 0).unwrap();
    once_then_again!(
        SINCE,
        events_since(at, 10),
        invalidate_events_since(at, 10).unwrap()
    );
    let filter = Filter {
        q: "a:b".into(),
        page: 1,
    };
    once_then_again!(PAGE, page(&filter), invalidate_page(&filter).unwrap());
    let name = String::from("n");
    let tags = vec!["t".to_string()];
    let nick = Some("k".to_string());
    let shared: Arc<str> = Arc::from("s");
    let dir = Path::new("/srv");
    let file = PathBuf::from("/srv/app.toml");
    once_then_again!(
        MISC,
        misc(
            &name,
            &tags,
            &nick,
            shared.clone(),
            [7; 32],
            Duration::from_secs(2),
            dir,
            file.clone()
        ),
        invalidate_misc(
            &name,
            &tags,
            &nick,
            shared.clone(),
            [7; 32],
            Duration::from_secs(2),
            dir,
            file.clone()
        )
        .unwrap()
    );

    // Generics, attributes, error types.
    once_then_again!(RENDER, render(5u8), invalidate_render(5u8).unwrap());
    once_then_again!(RENDER, render("s"), invalidate_render("s").unwrap());
    let json: User = once_then_again!(
        GET_JSON,
        get_json::<User>("a@b").await.unwrap(),
        invalidate_get_json::<User>("a@b").await.unwrap()
    );
    assert_eq!(json.email, "a@b");
    // Another instantiation, another cache.
    assert!(get_json::<u64>("x").await.is_err());
    assert_eq!(lookup_get_json::<User>("a@b").await, Some(json));
    once_then_again!(
        VISIBILITY,
        limits("pro".into(), 3),
        invalidate_limits("pro".into(), 3).unwrap()
    );
    once_then_again!(
        ANYHOW,
        parse_config("a=1,b=2").unwrap(),
        invalidate_parse_config("a=1,b=2").unwrap()
    );
    assert!(parse_config("oops").is_err());
    once_then_again!(
        BOXED_ERR,
        load_rows::<u32>("users").unwrap(),
        invalidate_load_rows::<u32>("users").unwrap()
    );
    once_then_again!(
        MAYBE,
        maybe_user(UserId(2)),
        invalidate_maybe_user(UserId(2)).unwrap()
    );
    // `None` is cached too (`cache_none`).
    once_then_again!(
        MAYBE,
        maybe_user(UserId(3)),
        invalidate_maybe_user(UserId(3)).unwrap()
    );
    once_then_again!(
        LONGEST,
        longest("abc", "de"),
        invalidate_longest("abc", "de").unwrap()
    );
    once_then_again!(
        LOGGED,
        logged(&Stdout, 1, &|_| {}),
        invalidate_logged(1).unwrap()
    );
    once_then_again!(
        PARAM_ATTR,
        param_attr("ctx", 9),
        invalidate_param_attr(9).unwrap()
    );

    // Receivers, trait impls, generic impls.
    let worker = Arc::new(Worker { id: 6 });
    once_then_again!(ARC_SELF, worker.job(7), worker.invalidate_job(7).unwrap());
    once_then_again!(
        ARC_SELF_ASYNC,
        worker.job_async(7).await,
        worker.invalidate_job_async(7).await.unwrap()
    );
    let shard = Rc::new(Shard(2));
    once_then_again!(
        RC_SELF,
        shard.rows("users"),
        shard.invalidate_rows("users").unwrap()
    );
    assert_eq!(Shard(3).lookup_rows("users"), None);
    once_then_again!(
        EXPLICIT_LT,
        worker.explicit("w"),
        worker.invalidate_explicit("w").unwrap()
    );
    let pg = PgRepository { region: Region::Eu };
    once_then_again!(
        TRAIT_LOAD,
        pg.load(1),
        cache_runtime::invalidate_tag_blocking("repo_user:1").unwrap()
    );
    once_then_again!(
        TRAIT_FETCH,
        pg.fetch(UserId(1)).await.unwrap(),
        cache_runtime::invalidate_tag("repo_fetch:1").await.unwrap()
    );
    let repo = Repo {
        items: vec!["a".to_string(), "b".to_string()],
    };
    once_then_again!(GENERIC_REPO, repo.item(1), repo.invalidate_item(1).unwrap());
    once_then_again!(
        GENERIC_REPO_ASYNC,
        repo.first(1).await,
        repo.invalidate_first(1).await.unwrap()
    );
    assert_eq!(Repo::<u8> { items: vec![] }.lookup_item(1), None);
    let ctx = Ctx {
        pool: &pool,
        tenant: 1,
    };
    once_then_again!(CTX, ctx.user(3).unwrap(), ctx.invalidate_user(3).unwrap());
    once_then_again!(
        CONSTRUCTOR,
        Settings::load(Region::Us).unwrap(),
        Settings::invalidate_load(Region::Us).unwrap()
    );

    // Recursion, `?`, fields, collections, method-level type parameters.
    let before = FIB.get();
    assert_eq!(fib(40), 102_334_155);
    assert_eq!(FIB.get() - before, 41, "each `fib(n)` ran once");
    // Dropped, it runs once more (its callees are still cached).
    invalidate_fib(40).unwrap();
    once_then_again!(FIB, fib(40), invalidate_fib(40).unwrap());
    once_then_again!(
        PARSE_ASYNC,
        parse_id(" 17 ".into()).await.unwrap(),
        invalidate_parse_id(" 17 ".into()).await.unwrap()
    );
    assert!(matches!(parse_id("x".into()).await, Err(AppError::Db(_))));
    assert_eq!(parse_id(String::new()).await, Err(AppError::NotFound));
    once_then_again!(
        ORG,
        org_member(OrgId(1), Some(UserId(1))),
        invalidate_org_member(OrgId(1), Some(UserId(1))).unwrap()
    );
    assert_eq!(lookup_org_member(OrgId(1), None), None);
    let filters: BTreeMap<String, String> = [("status".to_string(), "open".to_string())]
        .into_iter()
        .collect();
    let shard = std::num::NonZeroU16::new(2).unwrap();
    once_then_again!(
        COLLECTIONS,
        collections(
            &filters,
            [3, 1].into_iter().collect(),
            [1, 2].into_iter().collect(),
            &["a", "b"],
            Cow::Borrowed(&[1, 2, 3]),
            shard,
            "box".into()
        ),
        invalidate_collections(
            &filters,
            [1, 3].into_iter().collect(),
            [1, 2].into_iter().collect(),
            &["a", "b"],
            Cow::Owned(vec![1, 2, 3]),
            shard,
            "box".into()
        )
        .unwrap()
    );
    let numbers = Repo {
        items: vec![1u8, 2],
    };
    once_then_again!(
        CONVERT,
        numbers.convert::<u64>(1),
        numbers.invalidate_convert::<u64>(1).unwrap()
    );
    assert_eq!(numbers.lookup_convert::<u32>(1), None);
    // Futures of borrowing `async fn`s are `Send` too.
    assert!(assert_send(find_user(&pool, 5)).await.is_ok());
    assert!(assert_send(svc.by_email("a@x")).await.is_ok());
    assert!(assert_send(worker.job_async(1)).await > 0);

    // An axum handler, HRTB bounds, `&Self`, a function in a block, `E: Executor`.
    let app = axum::Router::new()
        .route("/users/{id}", axum::routing::get(get_user_handler))
        .with_state(AppState {
            service: svc.clone(),
        });
    let (status, body) = once_then_again!(
        HANDLER,
        fetch(&app, "/users/9").await,
        invalidate_get_user_handler(axum::extract::Path(9))
            .await
            .unwrap(),
    );
    assert_eq!((status.as_u16(), body.as_str()), (200, "9@t3"));
    assert_eq!(fetch(&app, "/users/0").await.0.as_u16(), 404);
    assert_eq!(fetch(&app, "/users/0").await.0.as_u16(), 404);
    once_then_again!(
        HRTB,
        decode::<Vec<u8>>("[1,2]"),
        invalidate_decode::<Vec<u8>>("[1,2]").unwrap()
    );
    once_then_again!(
        SAME,
        Version(2).newer_than(&Version(1)),
        Version(2).invalidate_newer_than(&Version(1)).unwrap()
    );
    assert_eq!(Version(3).lookup_newer_than(&Version(1)), None);
    {
        static NESTED: Runs = Runs::new();

        #[cached(ttl = 60)]
        fn nested(x: u8) -> u8 {
            NESTED.hit();
            x
        }

        once_then_again!(NESTED, nested(1), invalidate_nested(1).unwrap());
    }

    once_then_again!(
        EXECUTOR,
        fetch_with(&*pool, 1),
        invalidate_fetch_with(1).unwrap()
    );
    // Another executor type reads the same entry.
    let runs = EXECUTOR.get();
    assert_eq!(fetch_with("conn", 1), "row1");
    assert_eq!(EXECUTOR.get(), runs);
    assert_eq!(fetch_with_cache().name(), fetch_with_cache().name());
    assert!(!fetch_with_cache().name().contains('<'));

    // sqlx's executor: a read through a transaction is a hit of the pool's entry, and
    // one invalidation (no type named) drops it for both.
    let before = SQLX_EXECUTOR.get();
    assert_eq!(user_name(&*pool, 4).await.unwrap(), "name4");
    {
        let mut tx = pool.begin();
        assert_eq!(user_name(&mut tx, 4).await.unwrap(), "name4");
    }
    assert_eq!(
        SQLX_EXECUTOR.get() - before,
        1,
        "a transaction missed the pool's entry"
    );
    invalidate_user_name(4).await.unwrap();
    {
        let mut tx = pool.begin();
        assert_eq!(user_name(&mut tx, 4).await.unwrap(), "name4");
    }
    assert_eq!(user_name(&*pool, 4).await.unwrap(), "name4");
    assert_eq!(
        SQLX_EXECUTOR.get() - before,
        2,
        "the invalidation missed an executor"
    );
    assert_eq!(lookup_user_name(4).await, Some("name4".to_string()));

    let before = KEYED_EXECUTOR.get();
    assert_eq!(keyed_with(&*pool, 7u8), "7:row0");
    assert_eq!(keyed_with("conn", 7u8), "7:row0");
    assert_eq!(keyed_with("conn", 7u16), "7:row0");
    assert_eq!(
        KEYED_EXECUTOR.get() - before,
        2,
        "per key type, not per executor"
    );
    assert_eq!(lookup_keyed_with::<u8>(7), Some("7:row0".to_string()));
    invalidate_keyed_with(7u16).unwrap();
    assert_eq!(lookup_keyed_with::<u16>(7), None);
    assert_eq!(lookup_keyed_with::<u8>(7), Some("7:row0".to_string()));

    let before = COUNT.get();
    assert_eq!(row_count::<Users>(&pool), "users");
    assert_eq!(row_count::<Orders>(&pool), "orders");
    assert_eq!(row_count::<Users>(&pool), "users");
    assert_eq!(COUNT.get() - before, 2);
    invalidate_row_count::<Orders>().unwrap();
    assert_eq!(lookup_row_count::<Users>(), Some("users".to_string()));
    assert_eq!(lookup_row_count::<Orders>(), None);

    let before = IMPORT.get();
    assert_eq!(import(3, |_| {}), 6);
    let seen = AtomicUsize::new(0);
    assert_eq!(
        import(3, |p| {
            seen.fetch_add(p as usize, Ordering::SeqCst);
        }),
        6
    );
    assert_eq!(IMPORT.get() - before, 1, "another closure missed the entry");
    assert_eq!(seen.load(Ordering::SeqCst), 0, "a hit runs no body");
    invalidate_import(3).unwrap();
    assert_eq!(lookup_import(3), None);

    // Modules.
    once_then_again!(db::users::NAME, db::name(1), handlers::rename(1));
    assert_eq!(db::lookup_name(1), Some("user1".to_string()));
    once_then_again!(
        db::users::admin::ROLE,
        db::users::role(0),
        db::users::forget_role(0)
    );
}
