use cache_runtime::cached;

#[cached(ttl = 60)]
fn f(x: u64) -> u64
where
    u64: Copy,
{
    x
}

fn main() {}
