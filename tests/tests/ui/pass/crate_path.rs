//! `crate = "..."`: the runtime through a re-export (as a facade crate would).
#![deny(warnings)]

mod facade {
    pub use cache_runtime as cache;
    pub use cache_runtime::cached;
}

use self::facade::cached;

#[cached(crate = "self::facade::cache", ttl = 60, key = "facade:<x>", tags = ["f"])]
fn through_facade(x: u64) -> u64 {
    x * 2
}

#[cached(crate = "::cache_runtime", ttl = 60)]
fn absolute(x: u64) -> Result<u64, String> {
    Ok(x)
}

pub fn main() {
    assert_eq!(through_facade(2), 4);
    assert_eq!(lookup_through_facade(2), Some(4));
    assert_eq!(absolute(1), Ok(1));
}
