use cache_runtime::cached;

#[cached(ttl = 60, key = "user:<id>", stale_retry = "5s")]
async fn user(id: u64) -> String {
    id.to_string()
}

fn main() {}
