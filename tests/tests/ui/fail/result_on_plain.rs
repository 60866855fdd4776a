use cache_runtime::cached;

#[cached(ttl = 60, result)]
fn width(id: u8) -> u64 {
    id.into()
}

fn main() {}
