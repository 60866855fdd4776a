//! `crate = "..."`: the runtime through a re-export (as a facade crate would), in a crate
//! that denies `unused_qualifications` and imports `KeyPart` through the facade: the
//! generated paths spanned at the key's and the value's tokens start with the facade's
//! relative path, and are not reported as qualified.
#![deny(warnings, unused_qualifications)]

mod facade {
    pub use cache_runtime as cache;
    pub use cache_runtime::cached;
}

use self::facade::cache::key::KeyPart;
use self::facade::cached;

#[derive(Clone, Copy, KeyPart)]
pub struct Id(u64);

#[cached(crate = "self::facade::cache", ttl = 60, key = "id:<id>", tags = ["id:<id>"])]
fn templated(id: Id) -> u64 {
    id.0
}

#[cached(crate = "self::facade::cache", ttl = 60)]
fn default_key(id: Id) -> Option<u64> {
    Some(id.0)
}

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
    assert_eq!(templated(Id(3)), 3);
    assert_eq!(lookup_templated(Id(3)), Some(3));
    assert_eq!(default_key(Id(4)), Some(4));
    assert_eq!(lookup_default_key(Id(4)), Some(4));
}
