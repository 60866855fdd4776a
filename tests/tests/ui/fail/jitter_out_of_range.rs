use cache_runtime::cached;

#[cached(ttl = 60, key = "user:<id>", jitter = 0.9)]
fn user(id: u64) -> String {
    id.to_string()
}

fn main() {}
