//! More signatures as codebases write them, beyond `ui/pass/real_codebases.rs`: axum
//! handlers with extractors skipped or destructured, actix-style `web::Data` / `web::Path`,
//! `&mut impl Write` sinks, byte and `Cow<'static, str>` / `Arc<str>` keys, wide and narrow
//! integers, floats, enums, durations, socket addresses, `Box<dyn Error + Send + Sync>`
//! errors, `self: Arc<Self>` with a skipped pool, const generics, `where` clauses, generic
//! clients whose transport is skipped, `dyn` handles, `#[cfg(test)]` functions, functions in
//! modules, in method bodies and in `async fn` bodies, and `#[async_trait]` impls with a
//! skipped pool. Each is called twice (the body runs once), invalidated, and called again.
//! Local tier only.

use std::borrow::Cow;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Extension;
use cache_runtime::cached;
use cache_runtime::key::KeyPart;

/// `$call` twice: one body run of `$runs`; `$invalidate`; `$call` again: one more run.
macro_rules! once_then_again {
    ($runs:expr, $call:expr, $invalidate:expr $(,)?) => {{
        let before = $runs.load(SeqCst);
        let first = $call;
        let second = $call;
        assert_eq!(first, second, "{}", stringify!($call));
        assert_eq!(
            $runs.load(SeqCst) - before,
            1,
            "a hit ran the body: {}",
            stringify!($call)
        );
        $invalidate;
        let third = $call;
        assert_eq!(first, third, "{}", stringify!($call));
        assert_eq!(
            $runs.load(SeqCst) - before,
            2,
            "invalidation did not drop the entry: {}",
            stringify!($invalidate)
        );
        first
    }};
}

macro_rules! counters {
    ($($name:ident),* $(,)?) => {$(static $name: AtomicUsize = AtomicUsize::new(0);)*};
}

counters!(
    HANDLER,
    ACTIX,
    RENDER,
    BYTES,
    TOKEN,
    GREETING,
    INTERN,
    NARROW,
    FLOAT,
    PRICE,
    BACKOFF,
    PEER,
    PARSE,
    FETCH,
    WARM,
    CHECKSUM,
    RING,
    DESCRIBE,
    CLIENT,
    POLICY,
    TEST_ONLY,
    INNER,
    ASYNC_INNER,
    FILTERS,
    REFS,
    TRAIT_FIND,
    TRAIT_STATIC,
    QUERY,
    NESTED_MOD,
    WIDE,
    OPTIONAL,
    SHAPES,
);

// ---------------------------------------------------------------------------------------
// Web handlers.

#[derive(Clone, Copy, Debug, PartialEq, KeyPart)]
pub struct TenantId(u32);

pub struct AppState {
    hits: AtomicUsize,
}

/// An axum handler as mounted: the state and the headers are skipped, the tenant comes from
/// a middleware's `Extension`, the path is a tuple.
#[cached(ttl = 60, key = "stats:<tenant>:<owner>/<repo>", skip(state, headers))]
async fn repo_stats(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Extension(tenant): Extension<TenantId>,
    Path((owner, repo)): Path<(String, String)>,
) -> Result<String, StatusCode> {
    HANDLER.fetch_add(1, SeqCst);
    state.hits.fetch_add(1, SeqCst);
    if owner.is_empty() {
        return Err(StatusCode::NOT_FOUND);
    }
    // The headers do not change the result (say, only logged).
    let _agent = headers.get("user-agent");
    Ok(format!("{}:{owner}/{repo}", tenant.0))
}

/// actix-web's shapes: `web::Data<T>` (an `Arc` the handler is given) and `web::Path<T>`.
pub mod web {
    use std::sync::Arc;

    pub struct Data<T>(pub Arc<T>);

    pub struct Path<T>(pub T);

    impl<T> Path<T> {
        pub fn into_inner(self) -> T {
            self.0
        }
    }
}

pub struct DbPool;

#[derive(Debug, Clone, PartialEq)]
pub struct ActixError(String);

#[cached(ttl = 60, key = "item:<path.0>", skip(pool))]
async fn get_item(pool: web::Data<DbPool>, path: web::Path<u32>) -> Result<String, ActixError> {
    ACTIX.fetch_add(1, SeqCst);
    let _pool: &DbPool = &pool.0;
    let id = path.into_inner();
    Ok(format!("item {id}"))
}

// ---------------------------------------------------------------------------------------
// Parameters of every common type.

/// A sink the body logs into: `&mut impl Write`, skipped.
#[cached(ttl = 60, key = "render:<id>", skip(log))]
fn render(log: &mut impl std::fmt::Write, id: u64) -> String {
    RENDER.fetch_add(1, SeqCst);
    let _ = write!(log, "rendered {id}");
    format!("<p>{id}</p>")
}

#[cached(ttl = 60)]
fn digest(data: &[u8]) -> u64 {
    BYTES.fetch_add(1, SeqCst);
    data.iter().map(|b| u64::from(*b)).sum()
}

#[cached(ttl = 60, key = "token:<token>:<scope>")]
fn token_ok(token: Option<&str>, scope: &[u8]) -> bool {
    TOKEN.fetch_add(1, SeqCst);
    token.is_some() && !scope.is_empty()
}

#[cached(ttl = 60, key = "greeting:<lang>")]
fn greeting(lang: Cow<'static, str>) -> Cow<'static, str> {
    GREETING.fetch_add(1, SeqCst);
    match &*lang {
        "fr" => Cow::Borrowed("bonjour"),
        other => Cow::Owned(format!("hello ({other})")),
    }
}

#[cached(ttl = 60)]
fn intern(s: Arc<str>) -> Arc<str> {
    INTERN.fetch_add(1, SeqCst);
    Arc::from(s.to_uppercase())
}

#[cached(ttl = 60, key = "narrow:<a>:<b>:<c>:<d>:<e>")]
fn narrow(a: i128, b: i8, c: u16, d: isize, e: std::num::NonZeroU64) -> String {
    NARROW.fetch_add(1, SeqCst);
    format!("{a}{b}{c}{d}{e}")
}

#[cached(ttl = 60, key = "float:<x>:<y>")]
fn scaled(x: f64, y: f32) -> u64 {
    FLOAT.fetch_add(1, SeqCst);
    (x * f64::from(y)) as u64
}

#[derive(Clone, Copy, Debug, PartialEq, KeyPart)]
pub enum Plan {
    Free,
    Pro { seats: u16 },
    Enterprise(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, KeyPart)]
pub enum Region {
    Eu,
    Us,
}

#[cached(ttl = 60, key = "price:<plan>:<region>")]
fn price(plan: Plan, region: Region) -> u64 {
    PRICE.fetch_add(1, SeqCst);
    let base = match plan {
        Plan::Free => 0,
        Plan::Pro { seats } => u64::from(seats) * 10,
        Plan::Enterprise(n) => u64::from(n),
    };
    base + if region == Region::Eu { 1 } else { 2 }
}

#[cached(ttl = 60)]
fn backoff(attempt: u32, base: Duration) -> Duration {
    BACKOFF.fetch_add(1, SeqCst);
    base * 2u32.pow(attempt)
}

#[cached(ttl = 60, key = "peer:<addr>")]
fn peer_name(addr: SocketAddr) -> String {
    PEER.fetch_add(1, SeqCst);
    addr.ip().to_string()
}

#[allow(clippy::too_many_arguments)]
#[cached(ttl = 60)]
fn wide(a: u8, b: u16, c: u32, d: u64, e: i8, f: i16, g: i32, h: i64) -> i128 {
    WIDE.fetch_add(1, SeqCst);
    [
        a as i128, b as i128, c as i128, d as i128, e as i128, f as i128, g as i128, h as i128,
    ]
    .iter()
    .sum()
}

// Clippy would have `&str` and `&[u64]`; codebases write these too.
#[allow(clippy::ptr_arg)]
#[cached(ttl = 60)]
fn refs(a: &String, b: &Vec<u64>, c: &Option<String>, d: &&str) -> usize {
    REFS.fetch_add(1, SeqCst);
    a.len() + b.len() + c.as_ref().map_or(0, String::len) + d.len()
}

#[cached(ttl = 60, key = "filters:<filters>:<nested>")]
fn filtered(filters: &HashMap<String, String>, nested: Option<Option<u8>>) -> Vec<String> {
    FILTERS.fetch_add(1, SeqCst);
    let mut v: Vec<String> = filters.iter().map(|(k, v)| format!("{k}={v}")).collect();
    v.sort();
    v.push(format!("{nested:?}"));
    v
}

pub struct Request {
    pub user: Caller,
    pub page: u32,
}

pub struct Caller {
    pub id: u64,
}

#[cached(ttl = 60, key = "query:<req.user.id>:<req.page>")]
pub(crate) async fn query(req: &Request) -> Result<u64, String> {
    QUERY.fetch_add(1, SeqCst);
    Ok(req.user.id * 100 + u64::from(req.page))
}

// ---------------------------------------------------------------------------------------
// Returns and errors.

type BoxError = Box<dyn StdError + Send + Sync>;

#[cached(ttl = 60, key = "parse:<raw>")]
fn parse_port(raw: &str) -> Result<u16, Box<dyn StdError + Send + Sync>> {
    PARSE.fetch_add(1, SeqCst);
    Ok(raw.parse::<u16>()?)
}

#[cached(ttl = 60, key = "fetch:<url>")]
async fn fetch(url: String) -> Result<Option<Vec<u8>>, BoxError> {
    FETCH.fetch_add(1, SeqCst);
    if url.is_empty() {
        return Err("empty url".into());
    }
    Ok((url != "/404").then(|| url.into_bytes()))
}

#[derive(Clone, Debug, PartialEq)]
pub struct User {
    pub id: u64,
}

type Profile = (Arc<User>, HashMap<String, Vec<u32>>);

#[cached(ttl = 60)]
fn user_shapes(id: u64) -> Option<Profile> {
    SHAPES.fetch_add(1, SeqCst);
    let mut m = HashMap::new();
    m.insert("roles".to_string(), vec![1, 2]);
    Some((Arc::new(User { id }), m))
}

#[cached(ttl = 60, key = "optional:<id>")]
fn optional_user(id: Option<u64>) -> Option<Arc<User>> {
    OPTIONAL.fetch_add(1, SeqCst);
    id.map(|id| Arc::new(User { id }))
}

// ---------------------------------------------------------------------------------------
// Receivers, generics, handles.

pub struct Pool;

pub struct Shard {
    id: u16,
}

impl Shard {
    /// `self: Arc<Self>`, a pool skipped.
    #[cached(ttl = 60, key = "warm:<self.id>:<n>", skip(pool))]
    async fn warm(self: Arc<Self>, n: u64, pool: &Pool) -> u64 {
        WARM.fetch_add(1, SeqCst);
        let _ = pool;
        u64::from(self.id) * n
    }

    /// A cached function in a method's body.
    fn doubled(&self, x: u32) -> u32 {
        #[cached(ttl = 60)]
        fn inner(x: u32) -> u32 {
            INNER.fetch_add(1, SeqCst);
            x * 2
        }
        let _ = self.id;
        inner(x) + inner(x) - inner(x)
    }
}

#[cached(ttl = 60, key = "checksum:<block>")]
fn checksum<const N: usize>(block: [u8; N]) -> u32 {
    CHECKSUM.fetch_add(1, SeqCst);
    block.iter().map(|b| u32::from(*b)).sum::<u32>() + N as u32
}

pub struct Ring<const N: usize> {
    id: u8,
}

impl<const N: usize> Ring<N> {
    #[cached(ttl = 60, key = "ring:<self.id>:<i>")]
    fn slot(&self, i: usize) -> usize {
        RING.fetch_add(1, SeqCst);
        (i + usize::from(self.id)) % N
    }
}

#[cached(ttl = 60, key = "describe:<item>")]
fn describe<T>(item: T) -> String
where
    T: KeyPart + std::fmt::Debug,
{
    DESCRIBE.fetch_add(1, SeqCst);
    format!("{item:?}")
}

pub trait Transport: Send + Sync + 'static {
    fn send(&self, path: &str) -> String;
}

pub struct Http;
pub struct Grpc;

impl Transport for Http {
    fn send(&self, path: &str) -> String {
        format!("http {path}")
    }
}

impl Transport for Grpc {
    fn send(&self, path: &str) -> String {
        format!("grpc {path}")
    }
}

pub struct Client<C> {
    transport: C,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientError;

impl<C> Client<C>
where
    C: Transport,
{
    /// The transport is `self`'s, skipped: one cache for every transport.
    #[cached(ttl = 60, key = "client:<path>", skip(self))]
    async fn get(&self, path: &str) -> Result<String, ClientError> {
        CLIENT.fetch_add(1, SeqCst);
        Ok(self.transport.send(path))
    }
}

/// `dyn` handles, skipped.
#[cached(ttl = 60, key = "allowed:<id>", skip(policy, repos))]
fn allowed(policy: &dyn Fn(u64) -> bool, repos: Arc<dyn Transport>, id: u64) -> bool {
    POLICY.fetch_add(1, SeqCst);
    let _ = repos.send("x");
    policy(id)
}

// ---------------------------------------------------------------------------------------
// Where the function is.

#[cfg(test)]
#[cached(ttl = 60)]
fn only_in_tests(x: u8) -> u8 {
    TEST_ONLY.fetch_add(1, SeqCst);
    x + 1
}

#[cfg(not(test))]
#[cached(ttl = 60)]
fn only_in_tests(x: u8) -> u8 {
    x
}

pub mod outer {
    pub mod inner {
        use cache_runtime::cached;
        use std::sync::atomic::Ordering::SeqCst;

        #[cached(ttl = 60, key = "nested-mod:<id>")]
        pub(in crate::outer) fn name(id: u64) -> String {
            crate::NESTED_MOD.fetch_add(1, SeqCst);
            format!("n{id}")
        }
    }

    pub fn name(id: u64) -> String {
        inner::name(id)
    }

    pub fn forget(id: u64) {
        inner::invalidate_name(id).unwrap();
    }
}

async fn async_outer(x: u64) -> u64 {
    #[cached(ttl = 60)]
    async fn async_inner(x: u64) -> u64 {
        ASYNC_INNER.fetch_add(1, SeqCst);
        x + 1
    }
    async_inner(x).await + async_inner(x).await
}

// ---------------------------------------------------------------------------------------
// `#[async_trait]` impls.

#[async_trait::async_trait]
pub trait Users: Send + Sync {
    async fn find(&self, id: u64, pool: &Pool) -> Option<String>;
    async fn version() -> u32;
}

pub struct PgUsers;

#[async_trait::async_trait]
impl Users for PgUsers {
    #[cached(ttl = 60, in_trait, key = "users-find:<id>", skip(self, pool), tags = ["users:<id>"])]
    async fn find(&self, id: u64, pool: &Pool) -> Option<String> {
        TRAIT_FIND.fetch_add(1, SeqCst);
        let _ = pool;
        Some(format!("u{id}"))
    }

    #[cached(ttl = 60, in_trait)]
    async fn version() -> u32 {
        TRAIT_STATIC.fetch_add(1, SeqCst);
        3
    }
}

#[tokio::test]
async fn web_handlers() {
    let state = Arc::new(AppState {
        hits: AtomicUsize::new(0),
    });
    let call = || {
        repo_stats(
            State(state.clone()),
            HeaderMap::new(),
            Extension(TenantId(4)),
            Path(("rust-lang".to_string(), "rust".to_string())),
        )
    };
    let body = once_then_again!(
        HANDLER,
        call().await,
        invalidate_repo_stats(
            Extension(TenantId(4)),
            Path(("rust-lang".to_string(), "rust".to_string()))
        )
        .await
        .unwrap(),
    );
    assert_eq!(body.as_deref(), Ok("4:rust-lang/rust"));
    assert_eq!(state.hits.load(SeqCst), 2);
    let data = || web::Data(Arc::new(DbPool));
    let item = once_then_again!(
        ACTIX,
        get_item(data(), web::Path(9)).await,
        invalidate_get_item(web::Path(9)).await.unwrap(),
    );
    assert_eq!(item.as_deref(), Ok("item 9"));
}

#[test]
fn parameters_of_common_types() {
    let mut log = String::new();
    once_then_again!(RENDER, render(&mut log, 3), invalidate_render(3).unwrap());
    assert_eq!(log, "rendered 3rendered 3", "a hit skips the body's writes");
    once_then_again!(BYTES, digest(b"abc"), invalidate_digest(b"abc").unwrap());
    once_then_again!(
        TOKEN,
        token_ok(Some("t"), b"read"),
        invalidate_token_ok(Some("t"), b"read").unwrap()
    );
    assert_eq!(lookup_token_ok(None, b"read"), None);
    once_then_again!(
        GREETING,
        greeting(Cow::Borrowed("fr")),
        invalidate_greeting(Cow::Owned("fr".into())).unwrap()
    );
    once_then_again!(
        INTERN,
        intern(Arc::from("ab")),
        invalidate_intern(Arc::from("ab")).unwrap()
    );
    let nz = std::num::NonZeroU64::new(5).unwrap();
    once_then_again!(
        NARROW,
        narrow(
            -170_141_183_460_469_231_731_687_303_715_884_105_728,
            -1,
            7,
            -3,
            nz
        ),
        invalidate_narrow(i128::MIN, -1, 7, -3, nz).unwrap()
    );
    once_then_again!(
        FLOAT,
        scaled(1.5, 2.0),
        invalidate_scaled(1.5, 2.0).unwrap()
    );
    assert_eq!(lookup_scaled(-0.0, 2.0), None);
    once_then_again!(
        PRICE,
        price(Plan::Pro { seats: 3 }, Region::Eu),
        invalidate_price(Plan::Pro { seats: 3 }, Region::Eu).unwrap()
    );
    assert_eq!(price(Plan::Enterprise(30), Region::Us), 32);
    assert_eq!(lookup_price(Plan::Free, Region::Us), None);
    let base = Duration::from_millis(100);
    once_then_again!(
        BACKOFF,
        backoff(3, base),
        invalidate_backoff(3, base).unwrap()
    );
    let addr: SocketAddr = "10.0.0.1:6379".parse().unwrap();
    once_then_again!(PEER, peer_name(addr), invalidate_peer_name(addr).unwrap());
    once_then_again!(
        WIDE,
        wide(1, 2, 3, 4, -5, -6, -7, -8),
        invalidate_wide(1, 2, 3, 4, -5, -6, -7, -8).unwrap()
    );
    let (a, b, c, d) = ("x".to_string(), vec![1, 2], Some("yz".to_string()), "w");
    once_then_again!(
        REFS,
        refs(&a, &b, &c, &d),
        invalidate_refs(&a, &b, &c, &d).unwrap()
    );
    let mut filters = HashMap::new();
    filters.insert("state".to_string(), "open".to_string());
    filters.insert("label".to_string(), "bug".to_string());
    once_then_again!(
        FILTERS,
        filtered(&filters, Some(None)),
        invalidate_filtered(&filters, Some(None)).unwrap()
    );
    assert_eq!(lookup_filtered(&filters, None), None);
}

#[tokio::test]
async fn returns_and_errors() {
    once_then_again!(
        PARSE,
        parse_port("8080").unwrap(),
        invalidate_parse_port("8080").unwrap()
    );
    assert!(parse_port("x").is_err());
    assert!(parse_port("x").is_err(), "errors are not cached");
    once_then_again!(
        FETCH,
        fetch("/a".into()).await.unwrap(),
        invalidate_fetch("/a".into()).await.unwrap()
    );
    assert_eq!(fetch("/404".into()).await.unwrap(), None);
    assert_eq!(
        lookup_fetch("/404".into()).await,
        Some(None),
        "`Ok(None)` is cached"
    );
    assert!(fetch(String::new()).await.is_err());
    once_then_again!(SHAPES, user_shapes(2), invalidate_user_shapes(2).unwrap());
    once_then_again!(
        OPTIONAL,
        optional_user(Some(3)),
        invalidate_optional_user(Some(3)).unwrap()
    );
    let req = Request {
        user: Caller { id: 4 },
        page: 2,
    };
    let page = once_then_again!(
        QUERY,
        query(&req).await,
        invalidate_query(&req).await.unwrap()
    );
    assert_eq!(page, Ok(402));
}

#[tokio::test]
async fn receivers_generics_and_handles() {
    let shard = Arc::new(Shard { id: 3 });
    once_then_again!(
        WARM,
        shard.clone().warm(5, &Pool).await,
        shard.invalidate_warm(5).await.unwrap()
    );
    assert_eq!(shard.doubled(4), 8);
    assert_eq!(INNER.load(SeqCst), 1);
    once_then_again!(
        CHECKSUM,
        checksum([1u8, 2, 3]),
        invalidate_checksum([1u8, 2, 3]).unwrap()
    );
    assert_eq!(checksum([1u8, 2, 3, 0]), 10, "another `N`, another entry");
    let ring = Ring::<4> { id: 1 };
    once_then_again!(RING, ring.slot(5), ring.invalidate_slot(5).unwrap());
    assert_eq!(Ring::<8> { id: 1 }.slot(5), 6, "another `N`, another cache");
    once_then_again!(
        DESCRIBE,
        describe(("a", 1u8)),
        invalidate_describe(("a", 1u8)).unwrap()
    );
    // One cache for every transport: `Client<Http>` invalidates what `Client<Grpc>` read.
    let (http, grpc) = (Client { transport: Http }, Client { transport: Grpc });
    let body = once_then_again!(
        CLIENT,
        grpc.get("/v1").await,
        http.invalidate_get("/v1").await.unwrap()
    );
    assert_eq!(body.as_deref(), Ok("grpc /v1"));
    assert_eq!(http.get("/v1").await.as_deref(), Ok("grpc /v1"));
    let repos: Arc<dyn Transport> = Arc::new(Http);
    once_then_again!(
        POLICY,
        allowed(&|id| id % 2 == 0, repos.clone(), 4),
        invalidate_allowed(4).unwrap()
    );
}

#[tokio::test]
async fn where_the_function_is() {
    once_then_again!(
        TEST_ONLY,
        only_in_tests(1),
        invalidate_only_in_tests(1).unwrap()
    );
    once_then_again!(NESTED_MOD, outer::name(6), outer::forget(6));
    assert_eq!(async_outer(1).await, 4);
    assert_eq!(ASYNC_INNER.load(SeqCst), 1);
    let users = PgUsers;
    once_then_again!(
        TRAIT_FIND,
        users.find(7, &Pool).await,
        cache_runtime::invalidate_tag("users:7").await.unwrap()
    );
    assert_eq!(PgUsers::version().await, 3);
    assert_eq!(PgUsers::version().await, 3);
    assert_eq!(TRAIT_STATIC.load(SeqCst), 1);
}
