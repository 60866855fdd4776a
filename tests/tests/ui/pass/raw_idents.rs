//! Raw identifiers: `<type>` and `<r#type>` both name the parameter `r#type`.
#![deny(warnings)]

use cache_runtime::cached;

#[cached(ttl = 60, key = "kind:<type>")]
fn kind(r#type: u8) -> u8 {
    r#type
}

#[cached(ttl = 60, key = "kind2:<r#type>:<r#loop>")]
fn kind2(r#type: u8, r#loop: bool) -> u8 {
    if r#loop {
        r#type
    } else {
        0
    }
}

pub struct Item {
    r#type: u8,
}

impl Item {
    #[cached(ttl = 60, key = "item:<self.type>:<r#match>")]
    fn code(&self, r#match: u8) -> u8 {
        self.r#type + r#match
    }
}

#[cached(ttl = 60, skip(r#ref))]
fn skipped(r#ref: u8, x: u8) -> u8 {
    let _ = r#ref;
    x
}

pub fn main() {
    assert_eq!(kind(1), 1);
    assert_eq!(lookup_kind(1), Some(1));
    assert_eq!(kind2(2, true), 2);
    invalidate_kind2(2, true).unwrap();
    assert_eq!(Item { r#type: 3 }.code(1), 4);
    assert_eq!(skipped(9, 1), 1);
    assert_eq!(lookup_skipped(1), Some(1));
}
