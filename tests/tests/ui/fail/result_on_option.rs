use cache_runtime::cached;

// `result` on an `Option`, `option` on a tuple: refused at the return type.
#[cached(ttl = 60, result)]
fn maybe(id: u8) -> Option<u64> {
    Some(id.into())
}

#[cached(ttl = 60, option)]
fn pair(id: u8) -> (u8, u8) {
    (id, id)
}

fn main() {}
