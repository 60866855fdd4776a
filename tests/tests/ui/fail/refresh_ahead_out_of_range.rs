use cache_runtime::cached;

#[cached(ttl = 60, key = "u:<id>", refresh_ahead = 1.5)]
async fn user(id: u64) -> u64 {
    id
}

fn main() {}
