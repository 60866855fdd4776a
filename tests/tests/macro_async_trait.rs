//! `#[cached(in_trait)]` in an `#[async_trait]` impl: the impl's attribute runs first and
//! turns each `async fn` into a method returning `Pin<Box<dyn Future<Output = T> + Send>>`;
//! the method is cached as the `async fn` it was (its output, not the future), through a
//! trait object too, locally and in Redis, and invalidated through its tags.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use cache_runtime::cached;
use cache_tests::shared_redis;

#[async_trait]
trait UserRepo: Send + Sync {
    async fn find(&self, id: u64) -> Result<Option<String>, String>;
    async fn shared_name(&self, id: u64) -> String;
}

struct Pg {
    tenant: u32,
    queries: AtomicU32,
}

#[async_trait]
impl UserRepo for Pg {
    /// Local tier; `Err` is not cached.
    #[cached(
        in_trait,
        ttl = 60,
        key = "repo:<self.tenant>:<id>",
        tags = ["repo-user:<id>"]
    )]
    async fn find(&self, id: u64) -> Result<Option<String>, String> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        if id == 0 {
            return Err("no id 0".into());
        }
        Ok(Some(format!("user{id}@{}", self.tenant)))
    }

    /// Redis only: a second repository reads the first one's entry.
    #[cached(
        in_trait,
        tier = "redis",
        ttl = 60,
        skip(self),
        key = "repo-name:<id>",
        tags = ["repo-name:<id>"]
    )]
    async fn shared_name(&self, id: u64) -> String {
        self.queries.fetch_add(1, Ordering::SeqCst);
        format!("name{id}@{}", self.tenant)
    }
}

fn repo_of(tenant: u32) -> Arc<Pg> {
    Arc::new(Pg {
        tenant,
        queries: AtomicU32::new(0),
    })
}

#[tokio::test]
async fn async_trait_methods_are_cached_by_their_output() {
    shared_redis();
    let pg = repo_of(1);
    let repo: Arc<dyn UserRepo> = pg.clone();
    assert_eq!(repo.find(5).await, Ok(Some("user5@1".into())));
    assert_eq!(repo.find(5).await, Ok(Some("user5@1".into())));
    assert_eq!(
        pg.queries.load(Ordering::SeqCst),
        1,
        "the second call was a hit"
    );
    // Errors are not cached.
    assert!(repo.find(0).await.is_err());
    assert!(repo.find(0).await.is_err());
    assert_eq!(pg.queries.load(Ordering::SeqCst), 3);
    // Another tenant: its own key.
    let other = repo_of(2);
    assert_eq!(other.find(5).await, Ok(Some("user5@2".into())));
    assert_eq!(other.queries.load(Ordering::SeqCst), 1);
    // The tag drops the entry of both tenants.
    cache_runtime::invalidate_tag("repo-user:5").await.unwrap();
    assert_eq!(repo.find(5).await, Ok(Some("user5@1".into())));
    assert_eq!(pg.queries.load(Ordering::SeqCst), 4);
    // The future is `Send`: spawned on the runtime.
    let spawned = tokio::spawn({
        let repo = repo.clone();
        async move { repo.find(6).await }
    });
    assert_eq!(spawned.await.unwrap(), Ok(Some("user6@1".into())));
}

#[tokio::test]
async fn async_trait_methods_share_entries_through_redis() {
    let server = shared_redis();
    let (a, b) = (repo_of(1), repo_of(2));
    assert_eq!(a.shared_name(9).await, "name9@1");
    // Another implementor's instance of the same type reads it from Redis.
    assert_eq!(b.shared_name(9).await, "name9@1");
    assert_eq!(b.queries.load(Ordering::SeqCst), 0, "read from Redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("{t:*}:v2:*repo-name:9")
        .query(&mut server.client())
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    cache_runtime::invalidate_tag("repo-name:9").await.unwrap();
    assert_eq!(b.shared_name(9).await, "name9@2");
    assert_eq!(b.queries.load(Ordering::SeqCst), 1);
}
