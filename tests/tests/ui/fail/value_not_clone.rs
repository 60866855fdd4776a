use cache_runtime::cached;

struct Report {
    total: u64,
}

#[cached(ttl = 60)]
fn report(x: u64) -> Report {
    Report { total: x }
}

fn main() {
    let _ = report(1).total;
}
