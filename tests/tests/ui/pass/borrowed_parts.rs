//! Signatures of real codebases with borrowed parts that are not stored: an error type that
//! borrows (`&'static str`: errors are never cached), a `&'static` value, `self: &Self`,
//! a skipped `&dyn Fn` callback, parameters named `value` and `cached_value` (the
//! populate companion picks a free name), and seven parameters (the populate companion's
//! eighth does not trip `clippy::too_many_arguments` under `-D warnings`).
#![deny(warnings)]

use std::cell::Cell;

use cache_runtime::cached;

thread_local! {
    static RUNS: Cell<u32> = const { Cell::new(0) };
}

fn ran() {
    RUNS.with(|r| r.set(r.get() + 1));
}

fn runs() -> u32 {
    RUNS.with(Cell::get)
}

#[cached(ttl = 60)]
fn parse_level(s: &str) -> Result<u8, &'static str> {
    ran();
    s.parse().map_err(|_| "bad level")
}

#[cached(ttl = 60)]
fn country_name(code: &str) -> Option<&'static str> {
    ran();
    match code {
        "fr" => Some("France"),
        "de" => Some("Germany"),
        _ => None,
    }
}

pub struct Repo {
    tenant: u32,
}

impl Repo {
    #[cached(ttl = 60, key = "repo:<self.tenant>:<id>")]
    #[allow(clippy::needless_arbitrary_self_type)]
    fn load(self: &Self, id: u32) -> u32 {
        ran();
        self.tenant * 100 + id
    }
}

#[cached(ttl = 60, skip(on_progress))]
fn import(batch: u32, on_progress: &dyn Fn(u8)) -> u32 {
    ran();
    on_progress(100);
    batch * 2
}

#[cached(ttl = 60)]
fn convert(value: u64, cached_value: bool) -> u64 {
    ran();
    if cached_value {
        value
    } else {
        value + 1
    }
}

#[cached(ttl = 60)]
fn price(a: u32, b: u32, c: u32, d: u32, e: u32, f: u32, g: u32) -> u32 {
    ran();
    a + b + c + d + e + f + g
}

pub fn main() {
    assert_eq!(parse_level("3"), Ok(3));
    assert_eq!(parse_level("3"), Ok(3));
    assert_eq!(runs(), 1, "an Ok is cached");
    assert_eq!(parse_level("x"), Err("bad level"));
    assert_eq!(parse_level("x"), Err("bad level"));
    assert_eq!(runs(), 3, "an Err is not cached");

    assert_eq!(country_name("fr"), Some("France"));
    assert_eq!(country_name("fr"), Some("France"));
    assert_eq!(runs(), 4);
    invalidate_country_name("fr").unwrap();
    assert_eq!(lookup_country_name("fr"), None);

    let repo = Repo { tenant: 7 };
    assert_eq!(repo.load(1), 701);
    assert_eq!(repo.load(1), 701);
    assert_eq!(runs(), 5);
    assert_eq!(repo.lookup_load(1), Some(701));

    let seen = Cell::new(0);
    assert_eq!(import(4, &|p| seen.set(p)), 8);
    assert_eq!(import(4, &|_| panic!("a hit skips the body")), 8);
    assert_eq!((seen.get(), runs()), (100, 6));

    assert_eq!(convert(5, false), 6);
    populate_convert(5, true, 50).unwrap();
    assert_eq!(convert(5, true), 50);
    assert_eq!(runs(), 7);

    assert_eq!(price(1, 2, 3, 4, 5, 6, 7), 28);
    populate_price(1, 2, 3, 4, 5, 6, 7, 1000).unwrap();
    assert_eq!(price(1, 2, 3, 4, 5, 6, 7), 1000);
    assert_eq!(runs(), 8);
}
