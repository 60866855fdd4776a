use cache_runtime::cached;

#[cached(ttl = 60, key = "user:<id>")]
fn user(id: u64, locale: String) -> String {
    format!("{id}{locale}")
}

fn main() {}
