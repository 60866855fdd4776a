use cache_runtime::cached;

#[cached(tier = "redis", ttl = 60, key = "user:<id>", lock_lease = "2s")]
fn user(id: u64) -> String {
    id.to_string()
}

fn main() {}
