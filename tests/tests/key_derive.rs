//! `#[derive(KeyPart)]`: the encoding of every shape (named, tuple, newtype and unit structs,
//! every kind of enum variant, generics, raw identifiers, skipped fields), its injectivity
//! on values full of the encoding's own characters, and derived types as key parameters of
//! a cached function (one entry per distinct value, skipped fields shared).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};

use cache_runtime::cached;
use cache_runtime::key::{KeyPart, KeyWriter};

#[derive(KeyPart, Clone)]
struct UserId(u64);

#[derive(KeyPart, Clone)]
struct Pair(u8, String);

#[derive(KeyPart, Clone)]
struct Unit;

#[derive(KeyPart, Clone, PartialEq, Debug)]
enum Sort {
    Newest,
    ByScore { min: u32, max: Option<u32> },
    Tagged(String),
    Between(u32, u32),
}

#[derive(KeyPart, Clone)]
struct Filter {
    text: String,
    r#type: Option<String>,
    sort: Sort,
    labels: Vec<String>,
    #[key(skip)]
    #[allow(dead_code)]
    request_id: u64,
}

#[derive(KeyPart)]
struct Wrapped<T> {
    inner: T,
    tenant: UserId,
}

#[derive(KeyPart)]
struct Partly(
    u8,
    #[key(skip)]
    #[allow(dead_code)]
    u8,
    u8,
);

fn key_of(part: &dyn KeyPart) -> String {
    let mut w = KeyWriter::with_head("");
    part.write_key(&mut w);
    w.finish()
}

fn filter(text: &str, sort: Sort, request_id: u64) -> Filter {
    Filter {
        text: text.into(),
        r#type: None,
        sort,
        labels: vec!["a".into(), "b,c".into()],
        request_id,
    }
}

#[test]
fn every_shape_has_its_encoding() {
    assert_eq!(key_of(&UserId(7)), "7");
    assert_eq!(key_of(&Pair(1, "x".into())), "[1+x]");
    assert_eq!(key_of(&Unit), "");
    assert_eq!(key_of(&Sort::Newest), "Newest");
    assert_eq!(
        key_of(&Sort::ByScore { min: 3, max: None }),
        "ByScore{min=3,max=%N}"
    );
    assert_eq!(key_of(&Sort::Tagged("t".into())), "Tagged[t]");
    assert_eq!(key_of(&Sort::Between(1, 2)), "Between[1+2]");
    assert_eq!(
        key_of(&filter("a b", Sort::Newest, 1)),
        "{text=a%20b,type=%N,sort=Newest,labels=[+a+b%2Cc]}"
    );
    assert_eq!(
        key_of(&Wrapped {
            inner: (1u8, 'c'),
            tenant: UserId(4)
        }),
        "{inner=[1+c],tenant=4}"
    );
    assert_eq!(key_of(&Partly(1, 2, 3)), "[1+3]");
    // Skipped fields do not change the key.
    assert_eq!(
        key_of(&filter("q", Sort::Newest, 1)),
        key_of(&filter("q", Sort::Newest, 2))
    );
}

/// Values made of the encoding's own characters (`{`, `}`, `=`, `,`, `[`, `+`, variant
/// names) never collide: every distinct value has its own key.
#[test]
fn distinct_values_never_share_a_key() {
    let texts = [
        "", "a", "a,b", "a=b", "}", "{", "[", "]", "+", "Newest", "%N", "a}b", "text=a",
    ];
    let mut values = Vec::new();
    for t in texts {
        values.push(filter(t, Sort::Newest, 0));
        values.push(filter(t, Sort::Tagged(t.into()), 0));
        values.push(Filter {
            r#type: Some(t.into()),
            ..filter("x", Sort::Newest, 0)
        });
        values.push(Filter {
            labels: vec![t.into(), t.into()],
            ..filter("x", Sort::Newest, 0)
        });
        values.push(Filter {
            labels: vec![format!("{t},{t}")],
            ..filter("x", Sort::Newest, 0)
        });
    }
    for (min, max) in [(0, None), (0, Some(0)), (1, None), (10, Some(1))] {
        values.push(filter("x", Sort::ByScore { min, max }, 0));
        values.push(filter("x", Sort::Between(min, max.unwrap_or(0)), 0));
    }
    let keys: Vec<String> = values.iter().map(|v| key_of(v)).collect();
    // Distinct by construction except for the repeats the loops make: compare the set of
    // keys with the set of values' debug-free identities (text, type, sort, labels).
    let identities: HashSet<String> = values
        .iter()
        .map(|v| format!("{:?}|{:?}|{:?}|{:?}", v.text, v.r#type, v.sort, v.labels))
        .collect();
    let distinct_keys: HashSet<&String> = keys.iter().collect();
    assert_eq!(distinct_keys.len(), identities.len(), "{keys:#?}");
}

static SEARCHES: AtomicU32 = AtomicU32::new(0);

#[cached(ttl = 60, key = "search:<user>:<q>")]
fn search(user: UserId, q: &Filter) -> String {
    SEARCHES.fetch_add(1, Ordering::SeqCst);
    format!("{}:{}", user.0, q.text)
}

static BY_SORT: AtomicU32 = AtomicU32::new(0);

// The default key (no template): every parameter, derived ones included.
#[cached(ttl = 60)]
fn by_sort(sort: Sort, weights: BTreeMap<String, u8>) -> usize {
    BY_SORT.fetch_add(1, Ordering::SeqCst);
    weights.len() + matches!(sort, Sort::Newest) as usize
}

#[test]
fn derived_types_key_cached_functions() {
    let q = filter("rust", Sort::Newest, 1);
    assert_eq!(search(UserId(1), &q), "1:rust");
    // Another request id (skipped): the same entry.
    assert_eq!(
        search(UserId(1), &filter("rust", Sort::Newest, 2)),
        "1:rust"
    );
    assert_eq!(SEARCHES.load(Ordering::SeqCst), 1);
    // Another user, another sort: entries of their own.
    assert_eq!(search(UserId(2), &q), "2:rust");
    assert_eq!(
        search(UserId(1), &filter("rust", Sort::Tagged("rust".into()), 1)),
        "1:rust"
    );
    assert_eq!(SEARCHES.load(Ordering::SeqCst), 3);
    invalidate_search(UserId(1), &q).unwrap();
    assert_eq!(lookup_search(UserId(1), &q), None);
    assert_eq!(lookup_search(UserId(2), &q), Some("2:rust".to_string()));

    let w = BTreeMap::from([("a".to_string(), 1u8)]);
    assert_eq!(by_sort(Sort::Newest, w.clone()), 2);
    assert_eq!(by_sort(Sort::Newest, w.clone()), 2);
    assert_eq!(by_sort(Sort::Between(1, 2), w.clone()), 1);
    assert_eq!(BY_SORT.load(Ordering::SeqCst), 2);
    assert_eq!(lookup_by_sort(Sort::Between(1, 2), w), Some(1));
}
