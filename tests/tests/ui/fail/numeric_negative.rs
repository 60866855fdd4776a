use cache_runtime::cached;

#[cached(ttl = -1)]
fn a(x: u64) -> u64 {
    x
}

#[cached(ttl = 60, capacity = -1)]
fn b(x: u64) -> u64 {
    x
}

#[cached(ttl = 60, version = -1)]
fn c(x: u64) -> u64 {
    x
}

#[cached(ttl = 60, max_bytes = -1)]
fn d(x: u64) -> u64 {
    x
}

#[cached(ttl = 60, stale = -5)]
fn e(x: u64) -> u64 {
    x
}

#[cached(ttl = 60, jitter = -0.1)]
fn f(x: u64) -> u64 {
    x
}

fn main() {}
