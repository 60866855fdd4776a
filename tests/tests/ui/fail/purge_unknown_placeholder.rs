use cache_runtime::cached;

#[cached(ttl = 60, key = "user:<id>", purge = ["/users/<id>", "/teams/<team>"])]
fn user(id: u64) -> String {
    id.to_string()
}

fn main() {}
