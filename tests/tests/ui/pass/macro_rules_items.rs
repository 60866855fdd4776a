//! Cached functions that a `macro_rules!` writes, as codebases do for families of lookups:
//! the template passed in by the macro's caller names parameters the macro declares (under
//! the macro's hygiene), the parameter's name passed in by the caller with the template
//! written in the macro, and a method whose `<self.field>` comes from the caller. Each
//! template placeholder resolves to the parameter it names.
#![deny(warnings)]

use cache_runtime::cached;

#[path = "support/runs.rs"]
mod runs;
use runs::Runs;

static RUNS: Runs = Runs::new();

// The caller writes the template; the macro declares `id`.
macro_rules! scaled_lookup {
    ($name:ident, $key:literal, $factor:expr) => {
        #[cached(ttl = 60, key = $key, tags = [$key])]
        pub fn $name(id: u64) -> u64 {
            RUNS.hit();
            id * $factor
        }
    };
}
scaled_lookup!(double, "double:<id>", 2);
scaled_lookup!(triple, "triple:<id>", 3);

// The caller names the parameter; the macro writes the template that names it.
macro_rules! by_param {
    ($name:ident, $param:ident) => {
        #[cached(ttl = 60, key = "by_param:<n>:<m>")]
        pub fn $name($param: u64, m: u64) -> u64 {
            RUNS.hit();
            $param + m
        }
    };
}
by_param!(by_n, n);

// Tags and purge paths as `macro_rules!` fragments (`$tag:literal`, `$path:expr`).
macro_rules! tagged {
    ($name:ident, $tag:literal, $path:expr) => {
        #[cached(ttl = 60, key = "tagged:<id>", tags = [$tag, "all"], purge = [$path])]
        pub fn $name(id: u64) -> u64 {
            RUNS.hit();
            id
        }
    };
}
tagged!(tagged_item, "item:<id>", "/items/<id>");

// Types as fragments (`$ret:ty`, `$t:ty`): a `Result` / an `Option` passed in is one as
// written (only `Ok` / `Some` cached), not an alias to declare.
macro_rules! typed {
    ($name:ident, $t:ty, $ret:ty, $body:expr) => {
        #[cached(ttl = 60)]
        pub fn $name(id: $t) -> $ret {
            RUNS.hit();
            ($body)(id)
        }
    };
}
typed!(checked, u64, Result<u64, String>, |id| if id == 0 {
    Err("zero".to_string())
} else {
    Ok(id)
});
typed!(found, u32, Option<u64>, |id| (id > 0)
    .then_some(u64::from(id)));

// A method: the caller writes `<self.shard>`; the macro declares `&self` and `id`.
pub struct Shards {
    shard: u32,
}

macro_rules! shard_lookup {
    ($key:literal) => {
        impl Shards {
            #[cached(ttl = 60, key = $key)]
            pub fn find(&self, id: u64) -> u64 {
                RUNS.hit();
                u64::from(self.shard) * 100 + id
            }
        }
    };
}
shard_lookup!("shard:<self.shard>:<id>");

pub fn main() {
    let before = RUNS.get();
    assert_eq!(double(4), 8);
    assert_eq!(double(4), 8);
    assert_eq!(triple(4), 12);
    assert_eq!(RUNS.get() - before, 2, "one body per function and argument");
    assert_eq!(lookup_double(4), Some(8));
    assert_eq!(lookup_double(5), None, "the key holds the argument");
    invalidate_double(4).expect("local invalidation");
    assert_eq!(lookup_double(4), None);

    let before = RUNS.get();
    assert_eq!(by_n(100, 2), 102);
    assert_eq!(by_n(100, 2), 102);
    assert_eq!(lookup_by_n(100, 2), Some(102));
    assert_eq!(lookup_by_n(101, 2), None, "`<n>` is the caller's parameter");
    assert_eq!(RUNS.get() - before, 1);

    let before = RUNS.get();
    assert_eq!(tagged_item(5), 5);
    assert_eq!(tagged_item(5), 5);
    assert_eq!(RUNS.get() - before, 1);
    cache_runtime::invalidate_tag_blocking("item:5").expect("local tag invalidation");
    assert_eq!(
        lookup_tagged_item(5),
        None,
        "the tag from the fragment is the entry's"
    );

    let before = RUNS.get();
    assert_eq!(checked(0), Err("zero".to_string()));
    assert_eq!(checked(0), Err("zero".to_string()));
    assert_eq!(RUNS.get() - before, 2, "an `Err` is never cached");
    assert_eq!(checked(4), Ok(4));
    assert_eq!(checked(4), Ok(4));
    assert_eq!(lookup_checked(4), Some(4), "the cached value is the `Ok`'s");
    assert_eq!(found(0), None);
    assert_eq!(found(0), None);
    assert_eq!(found(2), Some(2));
    assert_eq!(lookup_found(2), Some(2));
    assert_eq!(RUNS.get() - before, 6, "a `None` is never cached");

    let before = RUNS.get();
    let a = Shards { shard: 1 };
    let b = Shards { shard: 2 };
    assert_eq!(a.find(3), 103);
    assert_eq!(a.find(3), 103);
    assert_eq!(b.find(3), 203, "`<self.shard>` is in the key");
    assert_eq!(RUNS.get() - before, 2);
    assert_eq!(b.lookup_find(3), Some(203));
}
