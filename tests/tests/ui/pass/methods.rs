//! `&self` methods: `<self.field>`, `skip(self)`, the default key (which uses `self`).
use cache_runtime::cached;

struct Org {
    id: u64,
    name: String,
}

struct Repo {
    org: Org,
    shard: u8,
}

impl Repo {
    #[cached(ttl = 60, key = "members:<self.org.id>:<team>")]
    fn members(&self, team: &str) -> Vec<String> {
        vec![format!("{}/{team}", self.org.name)]
    }

    #[cached(ttl = 60, key = "limits:<plan>", skip(self))]
    fn limits(&self, plan: u8) -> u32 {
        let _ = self.shard;
        u32::from(plan) * 10
    }

    #[cached(tier = "local+redis", ttl = "2m", key = "count:<self.shard>:<since>")]
    async fn count(&self, since: u64) -> u64 {
        since + u64::from(self.shard)
    }
}

// Without a key, `self` itself is part of the key, so it must be a `KeyPart`.
struct Shard(u8);

impl cache_runtime::key::KeyPart for Shard {
    fn write_key(&self, w: &mut cache_runtime::key::KeyWriter) {
        w.display(&self.0);
    }
}

impl Shard {
    #[cached(ttl = 30)]
    fn load(&self, id: u64) -> u64 {
        id + u64::from(self.0)
    }
}

#[tokio::main]
async fn main() {
    let repo = Repo {
        org: Org {
            id: 7,
            name: "acme".into(),
        },
        shard: 1,
    };
    assert_eq!(repo.members("core"), vec!["acme/core".to_string()]);
    assert_eq!(
        repo.lookup_members("core"),
        Some(vec!["acme/core".to_string()])
    );
    repo.invalidate_members("core").unwrap();
    repo.populate_members("core", vec![]).unwrap();
    assert_eq!(repo.refresh_members("core"), vec!["acme/core".to_string()]);
    assert_eq!(repo.members_uncached("x"), vec!["acme/x".to_string()]);
    let _ = Repo::members_cache().stats();

    assert_eq!(repo.limits(2), 20);
    assert_eq!(repo.lookup_limits(2), Some(20));

    assert_eq!(repo.count(5).await, 6);
    let _ = repo.lookup_count(5).await;
    let _ = repo.invalidate_count(5).await;

    let shard = Shard(3);
    assert_eq!(shard.load(1), 4);
    assert_eq!(shard.lookup_load(1), Some(4));
    assert_eq!(Shard(4).lookup_load(1), None);
}
