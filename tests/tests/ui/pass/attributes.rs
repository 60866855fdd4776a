//! Attributes of a cached function reach the generated functions where they belong (the
//! table in the `cached` docs), so a `#![deny(warnings)]` crate builds.
#![deny(warnings)]
#![warn(clippy::pedantic)]

use cache_runtime::cached;

/// Totals. (Docs go to the wrapper.)
#[must_use]
#[inline]
#[cached(ttl = 60)]
pub fn total(x: u64) -> u64 {
    x + 1
}

// Lint attributes reach every generated function (here: a non-snake-case name and
// parameter, which the companions repeat).
#[allow(non_snake_case)]
#[cached(ttl = 60, key = "camel:<userId>")]
fn getUser(userId: u64) -> u64 {
    userId
}

#[allow(clippy::too_many_arguments)]
#[cached(ttl = 60)]
fn many(a: u8, b: u8, c: u8, d: u8, e: u8, f: u8, g: u8, h: u8) -> u32 {
    [a, b, c, d, e, f, g, h].iter().map(|&x| u32::from(x)).sum()
}

// `expect` is checked once, on the original body (`many_expect_uncached`).
#[expect(clippy::too_many_arguments)]
#[cached(ttl = 60)]
fn many_expect(a: u8, b: u8, c: u8, d: u8, e: u8, f: u8, g: u8, h: u8) -> u32 {
    [a, b, c, d, e, f, g, h].iter().map(|&x| u32::from(x)).sum()
}

// Callers are warned; the definition is not.
#[deprecated(note = "use total")]
#[cached(ttl = 60)]
fn old_total(x: u64) -> u64 {
    x + 1
}

#[cfg(any())]
#[cached(ttl = 60)]
fn never_compiled(x: NoSuchType) -> u64 {
    x
}

#[cfg_attr(all(), allow(non_snake_case))]
#[cached(ttl = 60)]
fn cfgAttr(x: u64) -> u64 {
    x
}

#[doc(hidden)]
#[cached(ttl = 60)]
pub fn hidden(x: u64) -> u64 {
    x
}

#[track_caller]
#[cached(ttl = 60)]
fn tracked(x: u64) -> u64 {
    x
}

#[allow(deprecated)]
pub fn main() {
    assert_eq!(total(1), 2);
    assert_eq!(total_uncached(1), 2);
    assert_eq!(getUser(3), 3);
    assert_eq!(lookup_getUser(3), Some(3));
    assert_eq!(many(1, 1, 1, 1, 1, 1, 1, 1), 8);
    assert_eq!(many_expect(1, 1, 1, 1, 1, 1, 1, 1), 8);
    assert_eq!(old_total(1), 2);
    assert_eq!(lookup_old_total(1), Some(2));
    assert_eq!(cfgAttr(4), 4);
    assert_eq!(hidden(5), 5);
    assert_eq!(tracked(6), 6);
}
