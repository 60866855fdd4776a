use cache_runtime::cached;

#[cached(crate = "not a path", ttl = 60)]
fn f(x: u8) -> u8 {
    x
}

fn main() {}
