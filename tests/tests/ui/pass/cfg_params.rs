//! Parameters with `#[cfg(...)]`: where one is compiled out, so is every use the generated
//! functions make of it (the key, templates, the companions' parameters, the body's call).
#![deny(warnings)]

use cache_runtime::cached;

#[path = "support/runs.rs"]
mod runs;
use runs::Runs;

static FREE: Runs = Runs::new();

// `b` is compiled out, `a` kept (`not(any())`: always on; clippy finds `all()` redundant):
// the key is built from `a` and `c`.
#[cached(ttl = 60)]
pub fn f(#[cfg(not(any()))] a: u8, #[cfg(any())] b: u8, c: u8) -> u8 {
    FREE.hit();
    a + c
}

static TEMPLATED: Runs = Runs::new();

// A placeholder of a compiled-out parameter writes nothing; tags and skips too.
#[cached(
    ttl = 60,
    key = "t:<a>:<b>:<c>",
    tags = ["t:<b>", "c:<c>"],
    skip(d)
)]
pub fn templated(
    #[cfg(not(any()))] a: u8,
    #[cfg(any())] b: NoSuchType,
    #[cfg_attr(all(), allow(unused_variables))] c: u8,
    #[cfg(any())] d: u8,
) -> u8 {
    TEMPLATED.hit();
    a + c
}

static NESTED: Runs = Runs::new();

// A `cfg` inside a `cfg_attr` (nested ones too) is the `cfg` under its predicate: `b` and
// `d` are compiled out (their `cfg_attr` holds), `c` is kept (its `cfg_attr` does not).
#[cached(ttl = 60, key = "n:<a>:<b>:<c>:<d>", tags = ["n:<b>"])]
pub fn nested(
    a: u8,
    #[cfg_attr(not(any()), cfg(any()))] b: u8,
    #[cfg_attr(any(), cfg(any()))] c: u8,
    #[cfg_attr(not(any()), allow(unused_variables), cfg_attr(not(any()), cfg(any())))] d: u8,
) -> u8 {
    NESTED.hit();
    a + c
}

pub struct Point {
    pub x: u8,
    pub y: u8,
}

static PATTERNS: Runs = Runs::new();

// Patterns are destructured under their parameter's `cfg`.
#[cached(ttl = 60)]
pub async fn patterns(
    #[cfg(not(any()))] Point { x, y }: Point,
    #[cfg(any())] (p, q): (u8, u8),
    c: u8,
) -> u8 {
    PATTERNS.hit();
    x + y + c
}

pub struct Svc {
    pub shard: u8,
}

static METHOD: Runs = Runs::new();

impl Svc {
    // A method passes its arguments on to `NAME_uncached`: a compiled-out one is not passed.
    #[cached(ttl = 60, key = "svc:<self.shard>:<a>:<b>:<c>")]
    pub fn method(&self, #[cfg(not(any()))] a: u8, #[cfg(any())] b: u8, c: u8) -> u8 {
        METHOD.hit();
        self.shard + a + c
    }

    #[cached(ttl = 60, skip(self))]
    pub async fn method_async(&self, #[cfg(any())] b: u8, c: u8) -> u8 {
        METHOD.hit();
        c
    }
}

#[tokio::main]
pub async fn main() {
    // The key differs by `c`, and the companions take `a` and `c` only.
    assert_eq!(f(1, 2), 3);
    assert_eq!(f(1, 2), 3);
    assert_eq!(f(1, 3), 4);
    assert_eq!(FREE.get(), 2);
    assert_eq!(lookup_f(1, 2), Some(3));
    assert_eq!(lookup_f(1, 4), None);
    assert_eq!(invalidate_f(1, 2), Ok(()));
    assert_eq!(lookup_f(1, 2), None);

    assert_eq!(templated(1, 2), 3);
    assert_eq!(templated(1, 2), 3);
    assert_eq!(templated(1, 5), 6);
    assert_eq!(TEMPLATED.get(), 2);
    assert_eq!(lookup_templated(1, 5), Some(6));

    assert_eq!(patterns(Point { x: 1, y: 2 }, 3).await, 6);
    assert_eq!(patterns(Point { x: 1, y: 2 }, 3).await, 6);
    assert_eq!(patterns(Point { x: 1, y: 2 }, 4).await, 7);
    assert_eq!(PATTERNS.get(), 2);
    assert_eq!(lookup_patterns(Point { x: 1, y: 2 }, 4).await, Some(7));

    assert_eq!(nested(1, 2), 3);
    assert_eq!(nested(1, 2), 3);
    assert_eq!(nested(1, 4), 5);
    assert_eq!(NESTED.get(), 2);
    assert_eq!(lookup_nested(1, 4), Some(5));
    assert_eq!(invalidate_nested(1, 4), Ok(()));
    assert_eq!(lookup_nested(1, 4), None);

    let svc = Svc { shard: 10 };
    assert_eq!(svc.method(1, 2), 13);
    assert_eq!(svc.method(1, 2), 13);
    assert_eq!(svc.method(1, 3), 14);
    assert_eq!(svc.method_async(4).await, 4);
    assert_eq!(svc.method_async(4).await, 4);
    assert_eq!(METHOD.get(), 3);
    assert_eq!(svc.lookup_method(1, 3), Some(14));
    assert_eq!(svc.lookup_method_async(4).await, Some(4));
}
