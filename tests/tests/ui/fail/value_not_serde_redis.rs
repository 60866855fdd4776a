use cache_runtime::cached;

#[derive(Clone)]
struct Report {
    total: u64,
}

#[cached(tier = "redis", ttl = 60)]
fn report(x: u64) -> Report {
    Report { total: x }
}

fn main() {
    let _ = report(1).total;
}
