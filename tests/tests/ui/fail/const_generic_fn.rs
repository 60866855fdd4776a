use cache_runtime::cached;

#[cached(ttl = 60)]
fn f<const N: usize>(x: u64) -> u64 {
    x + N as u64
}

fn main() {}
