//! A crate that depends on the runtime under another name (`renamed-cache = { package =
//! "cache-runtime", .. }`): `#[cached]` without `crate = "..."` finds it by that name.

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
