use cache_runtime::cached;

#[cached(ttl = 60, key = "u:<name>", refresh_ahead = 0.8)]
async fn user(name: &str) -> String {
    name.to_uppercase()
}

fn main() {}
