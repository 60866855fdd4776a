use cache_runtime::cached;

#[cached(ttl = 60)]
fn f(_: u8, x: u8) -> u8 {
    x
}

fn main() {}
