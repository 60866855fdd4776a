use cache_runtime::cached;

// An `Ok(None)` is an `Ok` value: cached already.
#[cached(ttl = 60, cache_none)]
fn find(id: u64) -> Result<Option<u64>, String> {
    Ok(Some(id))
}

fn main() {}
