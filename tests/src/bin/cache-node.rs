//! A cache node with schema version 1 of the profile value (a `String`).
//! See `cache_tests::node`.

use cache_runtime::cached;
use cache_tests::node::{self, Fut, Handlers};

#[cached(tier = "local+redis", ttl = 60, local_ttl = 30, key = "profile:<id>", tags = ["user:<id>"], version = 1)]
async fn profile(id: u64) -> String {
    node::count_body("profile", id).await;
    let row = node::db_get(id).await;
    node::pause_point(id).await;
    row
}

#[cached(
    tier = "redis",
    ttl = 60,
    key = "locked:<id>",
    lock = true,
    lock_lease = "1s"
)]
async fn locked(id: u64) -> String {
    let n = node::count_body("locked", id).await;
    node::mark_holder(id).await;
    // The first holder may be killed by the test while it works; later ones are quick.
    let work = if n == 1 && std::env::var("NODE_SLOW_FIRST_LOCK").is_ok() {
        30_000
    } else {
        300
    };
    tokio::time::sleep(std::time::Duration::from_millis(work)).await;
    node::db_get(id).await
}

fn main() {
    node::serve(Handlers {
        get: |id| -> Fut<String> { Box::pin(profile(id)) },
        invalidate: |id| {
            Box::pin(async move { invalidate_profile(id).await.map_err(|e| e.to_string()) })
        },
        populate: |id, v| {
            Box::pin(async move { populate_profile(id, v).await.map_err(|e| e.to_string()) })
        },
        lookup: |id| Box::pin(lookup_profile(id)),
        peek: |id| profile_cache().peek_local(&format!("profile:{id}")),
        clear: || Box::pin(async { profile_cache().clear().await.map_err(|e| e.to_string()) }),
        clear_local: || profile_cache().clear_local(),
        locked: |id| Box::pin(locked(id)),
        stats: || format!("{:?}", profile_cache().stats()),
    });
}
