use cache_runtime::cached;

#[cached(ttl = 60, key = "user:<id>", tags = ["org:<org>"], skip(org))]
fn user(id: u64, org: u64) -> String {
    format!("{id}{org}")
}

fn main() {}
