#![deny(unused_must_use)]
use cache_runtime::cached;

// `#[must_use]` reaches the wrapper: ignoring its value is reported at the call.
#[must_use]
#[cached(ttl = 60)]
fn total(x: u64) -> u64 {
    x + 1
}

fn main() {
    total(1);
}
