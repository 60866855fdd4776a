use cache_runtime::cached;

struct Repo {
    shard: u32,
}

impl Repo {
    #[cached(ttl = 60, key = "u:<self.shard>:<id>", stale = "1h", soft_timeout = "100ms")]
    async fn user(&self, id: u64) -> u64 {
        id + self.shard as u64
    }
}

fn main() {}
