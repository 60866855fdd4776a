use cache_runtime::cached;

#[derive(Clone)]
struct Opaque(u64);

#[cached(ttl = 60, key = "o:<id>", etag = true)]
fn opaque(id: u64) -> Opaque {
    Opaque(id)
}

fn main() {}
