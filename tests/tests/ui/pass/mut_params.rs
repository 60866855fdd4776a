//! `mut` parameters: no `unused_mut` in the generated functions.
#![deny(warnings)]

use cache_runtime::cached;

#[cached(ttl = 60)]
fn bump(mut a: u32, mut s: String) -> String {
    a += 1;
    s.push('!');
    format!("{s}{a}")
}

#[cached(ttl = 60, key = "abump:<a>")]
async fn async_bump(mut a: u32) -> u32 {
    a += 1;
    a
}

pub struct Counter {
    base: u32,
}

impl Counter {
    #[cached(ttl = 60, key = "counter:<self.base>:<a>")]
    fn add(&self, mut a: u32) -> u32 {
        a += self.base;
        a
    }

    #[cached(ttl = 60, key = "counter:assoc:<a>")]
    fn assoc(mut a: u32) -> u32 {
        a *= 2;
        a
    }
}

#[tokio::main]
pub async fn main() {
    assert_eq!(bump(1, "x".into()), "x!2");
    assert_eq!(refresh_bump(1, "x".into()), "x!2");
    assert_eq!(bump_entry(1, "x".into()).into_value(), "x!2");
    assert_eq!(async_bump(1).await, 2);
    assert_eq!(refresh_async_bump(1).await, 2);
    let c = Counter { base: 10 };
    assert_eq!(c.add(1), 11);
    assert_eq!(c.refresh_add(1), 11);
    assert_eq!(c.add_entry(1).into_value(), 11);
    assert_eq!(Counter::assoc(4), 8);
    assert_eq!(Counter::refresh_assoc(4), 8);
}
