use cache_runtime::cached;

#[cached(tier = "memcached", ttl = 60)]
fn f(x: u64) -> u64 {
    x
}

fn main() {}
