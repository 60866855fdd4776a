//! Return types whose name does not say `Result` / `Option` (aliases, as codebases define
//! them): `result` / `option` declare what they are, and `result = false` caches a
//! `Result` whole, errors included.
#![deny(warnings)]

use std::sync::atomic::{AtomicU32, Ordering};

use cache_runtime::cached;

#[derive(Debug, PartialEq)]
pub struct DbError(String);

pub type AppResult<T> = Result<T, DbError>;
pub type UserResult = Result<String, DbError>;
pub type Lookup = Option<String>;

static APP: AtomicU32 = AtomicU32::new(0);
static USER: AtomicU32 = AtomicU32::new(0);
static LOOKUP: AtomicU32 = AtomicU32::new(0);
static LOOKUP_NONE: AtomicU32 = AtomicU32::new(0);
static WHOLE: AtomicU32 = AtomicU32::new(0);

// `DbError` is neither `Clone` nor serializable: only `Ok` values are ever stored.
#[cached(ttl = 60, result)]
fn app(id: u32) -> AppResult<u32> {
    APP.fetch_add(1, Ordering::Relaxed);
    match id {
        0 => Err(DbError("no 0".into())),
        _ => Ok(id * 10),
    }
}

#[cached(ttl = 60, key = "user:<id>", result)]
async fn user(id: u32) -> UserResult {
    USER.fetch_add(1, Ordering::Relaxed);
    match id {
        0 => Err(DbError("no 0".into())),
        _ => Ok(format!("user {id}")),
    }
}

#[cached(ttl = 60, option)]
fn lookup(id: u32) -> Lookup {
    LOOKUP.fetch_add(1, Ordering::Relaxed);
    (id > 0).then(|| format!("found {id}"))
}

#[cached(ttl = 60, option, cache_none)]
fn lookup_none(id: u32) -> Lookup {
    LOOKUP_NONE.fetch_add(1, Ordering::Relaxed);
    (id > 0).then(|| format!("found {id}"))
}

// The whole `Result` is the value: an `Err` is cached like an `Ok`.
#[cached(ttl = 60, result = false)]
fn whole(id: u32) -> Result<u32, String> {
    WHOLE.fetch_add(1, Ordering::Relaxed);
    match id {
        0 => Err("no 0".into()),
        _ => Ok(id),
    }
}

// With a Redis tier (the `Ok` type is what is serialized), a fail-safe and the entry
// function, whose result is the alias's `Result` around an `Entry`.
#[cached(
    tier = "local+redis",
    ttl = 60,
    key = "aliased:<id>",
    result,
    stale = "1m"
)]
async fn two_tier(id: u32) -> AppResult<u32> {
    match id {
        0 => Err(DbError("no 0".into())),
        _ => Ok(id + 1),
    }
}

pub trait Repo {
    fn find(&self, id: u32) -> Lookup;
}

pub struct Pg;

impl Repo for Pg {
    #[cached(ttl = 60, in_trait, option, skip(self))]
    fn find(&self, id: u32) -> Lookup {
        (id > 0).then(|| format!("pg {id}"))
    }
}

#[tokio::main]
pub async fn main() {
    assert_eq!(two_tier(1).await, Ok(2));
    let entry = two_tier_entry(1).await.expect("Ok");
    assert_eq!(*entry.value(), 2);
    assert!(two_tier_entry(0).await.is_err());
    assert_eq!(Pg.find(3), Some("pg 3".to_string()));
    assert_eq!(Pg.find(0), None);

    // Ok: cached; Err: returned, never cached.
    assert_eq!(app(1), Ok(10));
    assert_eq!(app(1), Ok(10));
    assert_eq!(APP.load(Ordering::Relaxed), 1);
    assert_eq!(app(0), Err(DbError("no 0".into())));
    assert_eq!(app(0), Err(DbError("no 0".into())));
    assert_eq!(APP.load(Ordering::Relaxed), 3);
    let cached: Option<u32> = lookup_app(1);
    assert_eq!(cached, Some(10));

    assert_eq!(user(2).await, Ok("user 2".to_string()));
    assert_eq!(user(2).await, Ok("user 2".to_string()));
    assert!(user(0).await.is_err());
    assert!(user(0).await.is_err());
    assert_eq!(USER.load(Ordering::Relaxed), 3);
    populate_user(3, "written".to_string())
        .await
        .expect("populate");
    assert_eq!(user(3).await, Ok("written".to_string()));
    assert_eq!(USER.load(Ordering::Relaxed), 3);

    // Some: cached; None: not cached, unless `cache_none`.
    assert_eq!(lookup(0), None);
    assert_eq!(lookup(0), None);
    assert_eq!(lookup(4), Some("found 4".into()));
    assert_eq!(lookup(4), Some("found 4".into()));
    assert_eq!(LOOKUP.load(Ordering::Relaxed), 3);
    assert_eq!(lookup_none(0), None);
    assert_eq!(lookup_none(0), None);
    assert_eq!(LOOKUP_NONE.load(Ordering::Relaxed), 1);

    // `result = false`: the error is cached too.
    assert_eq!(whole(0), Err("no 0".into()));
    assert_eq!(whole(0), Err("no 0".into()));
    assert_eq!(WHOLE.load(Ordering::Relaxed), 1);
}
