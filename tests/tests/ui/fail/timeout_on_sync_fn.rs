use cache_runtime::cached;

#[cached(ttl = 60, key = "user:<id>", stale = "10m", timeout = "2s")]
fn user(id: u64) -> String {
    id.to_string()
}

fn main() {}
