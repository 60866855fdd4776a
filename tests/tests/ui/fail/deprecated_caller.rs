#![deny(deprecated)]
use cache_runtime::cached;

// One report, at the caller; none at the definition or in the generated functions.
#[deprecated(note = "use `total`")]
#[cached(ttl = 60)]
fn old_total(x: u64) -> u64 {
    x + 1
}

fn main() {
    let _ = old_total(1);
}
