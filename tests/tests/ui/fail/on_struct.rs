use cache_runtime::cached;

#[cached(ttl = 60)]
struct Config {
    ttl: u64,
}

fn main() {}
