use cache_runtime::cached;

#[cached(ttl = 60, key = "user:<id>", tags = [])]
fn user(id: u64) -> String {
    id.to_string()
}

fn main() {}
