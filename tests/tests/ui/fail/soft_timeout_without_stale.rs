use cache_runtime::cached;

#[cached(ttl = 60, key = "u:<id>", soft_timeout = "100ms")]
async fn user(id: u64) -> u64 {
    id
}

fn main() {}
