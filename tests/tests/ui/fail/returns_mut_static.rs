use cache_runtime::cached;

#[cached(ttl = 60)]
fn name(id: u64) -> Option<&'static mut str> {
    let _ = id;
    None
}

fn main() {}
