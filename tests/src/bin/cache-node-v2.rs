//! A cache node with schema version 2 of the profile value (a struct), for rolling-deploy
//! tests against `cache-node` (version 1). See `cache_tests::node`.

use cache_runtime::cached;
use cache_tests::node::{self, Fut, Handlers};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ProfileV2 {
    name: String,
    schema: u32,
}

#[cached(tier = "local+redis", ttl = 60, local_ttl = 30, key = "profile:<id>", tags = ["user:<id>"], version = 2)]
async fn profile(id: u64) -> ProfileV2 {
    node::count_body("profile", id).await;
    let name = node::db_get(id).await;
    node::pause_point(id).await;
    ProfileV2 { name, schema: 2 }
}

#[cached(
    tier = "redis",
    ttl = 60,
    key = "locked:<id>",
    lock = true,
    lock_lease = "1s",
    version = 2
)]
async fn locked(id: u64) -> String {
    node::count_body("locked", id).await;
    node::db_get(id).await
}

fn render(p: ProfileV2) -> String {
    format!("{}#v{}", p.name, p.schema)
}

fn main() {
    node::serve(Handlers {
        get: |id| -> Fut<String> { Box::pin(async move { render(profile(id).await) }) },
        invalidate: |id| {
            Box::pin(async move { invalidate_profile(id).await.map_err(|e| e.to_string()) })
        },
        populate: |id, v| {
            Box::pin(async move {
                populate_profile(id, ProfileV2 { name: v, schema: 2 })
                    .await
                    .map_err(|e| e.to_string())
            })
        },
        lookup: |id| Box::pin(async move { lookup_profile(id).await.map(render) }),
        peek: |id| {
            profile_cache()
                .peek_local(&format!("profile:{id}"))
                .map(render)
        },
        clear: || Box::pin(async { profile_cache().clear().await.map_err(|e| e.to_string()) }),
        clear_local: || profile_cache().clear_local(),
        locked: |id| Box::pin(locked(id)),
        stats: || format!("{:?}", profile_cache().stats()),
    });
}
