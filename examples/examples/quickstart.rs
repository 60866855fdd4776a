//! The five-minute tour: `cargo run --example quickstart`.
//!
//! Without `REDIS_URL` it uses the in-process tier only; with
//! `REDIS_URL=redis://127.0.0.1:6379 cargo run --example quickstart` it uses local + Redis.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cache_runtime::cached;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
}

#[derive(Debug, Clone)]
struct DbError(String);

/// Our "database": a table and a query counter. Each query costs 40 ms.
static USERS: Mutex<Option<HashMap<u64, String>>> = Mutex::new(None);
static QUERIES: AtomicUsize = AtomicUsize::new(0);

async fn db_select_user(id: u64) -> Result<Profile, DbError> {
    QUERIES.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(40)).await;
    let users = USERS.lock().unwrap();
    let name = users
        .as_ref()
        .and_then(|u| u.get(&id).cloned())
        .ok_or_else(|| DbError(format!("no user {id}")))?;
    Ok(Profile { id, name })
}

fn db_update_user(id: u64, name: &str) {
    USERS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(id, name.to_string());
}

/// One attribute: local tier (30 s) in front of Redis (5 min), keyed by the user id.
#[cached(
    tier = "local+redis",
    ttl = "5m",
    local_ttl = "30s",
    key = "user:profile:<id>"
)]
async fn get_user_profile(id: u64) -> Result<Profile, DbError> {
    db_select_user(id).await
}

async fn timed<T>(label: &str, f: impl std::future::Future<Output = T>) -> T {
    let start = Instant::now();
    let out = f.await;
    println!(
        "  {label:<44} {:>9.3} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
    out
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .without_time()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .init();
    db_update_user(42, "Ada Lovelace");

    println!("cache-runtime quickstart\n");
    if cache_runtime::redis_enabled() {
        match cache_runtime::health_check().await {
            Ok(()) => println!("Tiers: local (moka) + Redis at REDIS_URL.\n"),
            Err(e) => println!(
                "Tiers: REDIS_URL is set but Redis is unreachable ({e});\n\
                 calls still return correct values from the source, and caching in Redis\n\
                 starts by itself when it comes back.\n"
            ),
        }
    } else {
        println!(
            "Tiers: local (moka) only: REDIS_URL is not set.\n\
             To add the shared Redis tier, run:\n  \
             REDIS_URL=redis://127.0.0.1:6379 cargo run --example quickstart\n"
        );
    }
    // Start clean, so the first call is a real miss even if a previous run filled Redis.
    let _ = invalidate_get_user_profile(42).await;

    println!("1. Reads");
    let p = timed(
        "first call (miss: runs the 40 ms query)",
        get_user_profile(42),
    )
    .await;
    println!("     -> {p:?}");
    timed("second call (local hit)", get_user_profile(42))
        .await
        .unwrap();
    if cache_runtime::redis_enabled() {
        get_user_profile_cache().clear_local();
        timed(
            "after a local clear (Redis hit, promoted)",
            get_user_profile(42),
        )
        .await
        .unwrap();
    }

    println!("\n2. A write, then invalidation");
    db_update_user(42, "Ada King");
    let confirmed = invalidate_get_user_profile(42).await;
    println!("  invalidate_get_user_profile(42) -> {confirmed:?}");
    let p = timed("next call (miss: fresh row)", get_user_profile(42)).await;
    println!("     -> {p:?}");

    println!("\n3. Write-through with populate");
    let fresh = Profile {
        id: 42,
        name: "Countess of Lovelace".into(),
    };
    db_update_user(42, &fresh.name);
    let _ = populate_get_user_profile(42, fresh).await;
    let p = timed("call after populate (hit, no query)", get_user_profile(42)).await;
    println!("     -> {p:?}");

    println!("\n4. A stampede: 200 concurrent requests for a cold key");
    db_update_user(7, "Grace Hopper");
    let before = QUERIES.load(Ordering::SeqCst);
    let start = Instant::now();
    let tasks: Vec<_> = (0..200)
        .map(|_| tokio::spawn(get_user_profile(7)))
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    println!(
        "  200 requests in {:.1} ms, database queries: {}",
        start.elapsed().as_secs_f64() * 1e3,
        QUERIES.load(Ordering::SeqCst) - before
    );

    println!("\n5. Errors are not cached");
    let e = get_user_profile(999).await.unwrap_err();
    println!("  get_user_profile(999) -> Err({}) (not cached)", e.0);

    let s = get_user_profile_cache().stats();
    println!("\nStats for `{}`", get_user_profile_cache().name());
    println!(
        "  hits: {} local + {} redis, misses: {} ({} of them shared another call's query)",
        s.local_hits, s.redis_hits, s.misses, s.coalesced
    );
    println!(
        "  hit ratio {:.1} %; calls that did not reach the database: {:.1} %",
        s.hit_ratio() * 100.0,
        s.offload_ratio() * 100.0
    );
    println!(
        "  body runs: {} taking {:.1} ms in all; database time spared (estimate): {:.1} ms",
        s.body_calls,
        s.body_time.as_secs_f64() * 1e3,
        s.estimated_time_saved().as_secs_f64() * 1e3
    );
    println!(
        "  populates: {}, invalidations: {}, redis errors: {}, undecodable values: {}",
        s.populates, s.invalidations, s.redis_errors, s.decode_failures
    );
    println!(
        "  database queries in all: {}",
        QUERIES.load(Ordering::SeqCst)
    );
}
