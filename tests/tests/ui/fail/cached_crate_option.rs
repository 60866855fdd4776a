use cache_runtime::cached;

// The `cached` crate's option names get a pointer to this crate's.
#[cached(time = 60)]
fn f(x: u8) -> u8 {
    x
}

fn main() {}
