//! A crate that depends on the runtime under another name (`renamed-cache = { package =
//! "cache-runtime", .. }`): `#[cached]` without `crate = "..."` finds it by that name.
//!
//! In an edition 2015 crate too, where a global path starts at the crate root: the generated
//! code names `::std` and the runtime under its name (an `extern crate` there), never
//! `::core`, which such a crate does not have.
//!
//! ```edition2015
//! #[macro_use]
//! extern crate renamed_cache;
//!
//! use renamed_cache::key::KeyPart;
//!
//! #[derive(Clone, Copy, KeyPart)]
//! struct Id(u64);
//!
//! #[cached(ttl = 60, key = "id:<id>", tags = ["id:<id>"])]
//! fn find(id: Id) -> Option<u64> {
//!     Some(id.0)
//! }
//!
//! #[cached(ttl = 60, stale = "1m")]
//! fn parse(text: String) -> Result<u64, String> {
//!     text.parse().map_err(|_| text.clone())
//! }
//!
//! struct Repo;
//!
//! impl Repo {
//!     #[cached(ttl = 60, skip(self))]
//!     fn load(&self, id: u64) -> u64 {
//!         id * 2
//!     }
//! }
//!
//! fn main() {
//!     assert_eq!(find(Id(1)), Some(1));
//!     assert_eq!(lookup_find(Id(1)), Some(1));
//!     invalidate_find(Id(1)).unwrap();
//!     assert_eq!(lookup_find(Id(1)), None);
//!     assert_eq!(parse("7".to_string()), Ok(7));
//!     assert!(parse("x".to_string()).is_err());
//!     assert_eq!(lookup_parse("7".to_string()), Some(7));
//!     assert_eq!(Repo.load(2), 4);
//!     assert_eq!(Repo.lookup_load(2), Some(4));
//! }
//! ```

use renamed_cache::cached;

/// A function cached with the attribute alone.
#[cached(ttl = 60, key = "square:<x>")]
pub fn square(x: u64) -> u64 {
    x * x
}

/// An `async fn`, with the companions.
#[cached(ttl = 60)]
pub async fn cube(x: u64) -> Result<u64, String> {
    Ok(x * x * x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_renamed_runtime_serves_the_cache() {
        assert_eq!(square(3), 9);
        assert_eq!(lookup_square(3), Some(9));
        assert_eq!(square_cache().stats().body_calls, 1);
        invalidate_square(3).unwrap();
        assert_eq!(lookup_square(3), None);
        let cubed = pollster::block_on(async {
            let v = cube(2).await;
            (v, lookup_cube(2).await)
        });
        assert_eq!(cubed, (Ok(8), Some(8)));
    }
}
