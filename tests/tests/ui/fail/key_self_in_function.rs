use cache_runtime::cached;

#[cached(ttl = 60, key = "org:<self.id>:<x>")]
fn f(x: u64) -> u64 {
    x
}

fn main() {}
