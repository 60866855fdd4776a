use cache_runtime::cached;

#[cached]
fn f(x: u64) -> u64 {
    x
}

fn main() {}
