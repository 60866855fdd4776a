use cache_runtime::cached;

#[cached(ttl = 60, key = "f:<x>:<db>", skip(db))]
fn f(x: u64, db: &str) -> u64 {
    let _ = db;
    x
}

fn main() {}
