use cache_runtime::cached;

#[cached(ttl = 60, result, option)]
fn find(id: u8) -> Result<u8, String> {
    Ok(id)
}

fn main() {}
