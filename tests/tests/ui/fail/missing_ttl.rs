use cache_runtime::cached;

#[cached(key = "f:<x>")]
fn f(x: u64) -> u64 {
    x
}

fn main() {}
