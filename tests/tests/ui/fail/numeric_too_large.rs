use cache_runtime::cached;

#[cached(ttl = 99999999999999999999999)]
fn a(x: u64) -> u64 {
    x
}

#[cached(ttl = 18446744073709551615)]
fn b(x: u64) -> u64 {
    x
}

#[cached(ttl = 60, capacity = 99999999999999999999999)]
fn c(x: u64) -> u64 {
    x
}

#[cached(ttl = 60, max_bytes = 99999999999999999999999)]
fn d(x: u64) -> u64 {
    x
}

#[cached(ttl = 60, max_bytes = "99999999999GiB")]
fn e(x: u64) -> u64 {
    x
}

#[cached(tier = "local+redis", ttl = 60, local_ttl = 99999999999999999999999)]
fn f(x: u64) -> u64 {
    x
}

fn main() {}
