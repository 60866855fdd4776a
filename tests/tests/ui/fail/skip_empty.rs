use cache_runtime::cached;

#[cached(ttl = 60, skip())]
fn load(id: u64) -> u64 {
    id
}

fn main() {}
