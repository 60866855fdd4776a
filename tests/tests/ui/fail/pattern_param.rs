use cache_runtime::cached;

#[cached(ttl = 60)]
fn f((a, b): (u8, u8)) -> u8 {
    a + b
}

fn main() {}
