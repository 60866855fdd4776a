use cache_runtime::cached;

#[cached(ttl = 60)]
extern "C" fn f(x: u64) -> u64 {
    x
}

fn main() {}
