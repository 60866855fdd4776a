//! Parameters of foreign types a codebase keys by (UUIDs, dates, addresses): a user crate
//! cannot implement `KeyPart` for them (orphan rule), so the runtime does (`uuid` and
//! `chrono` features; addresses always). Each value gets its own entry.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};

use cache_runtime::cached;
use cache_runtime::key::{KeyPart, KeyWriter};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use uuid::Uuid;

static BODIES: AtomicU32 = AtomicU32::new(0);

#[cached(ttl = 60, key = "account:<id>:<day>:<at>:<from>")]
fn account(id: Uuid, day: NaiveDate, at: DateTime<Utc>, from: IpAddr) -> String {
    BODIES.fetch_add(1, Ordering::Relaxed);
    format!("{id} {day} {at} {from}")
}

fn key_of(part: &dyn KeyPart) -> String {
    let mut w = KeyWriter::with_head("");
    part.write_key(&mut w);
    w.finish().to_string()
}

#[test]
fn foreign_key_types_are_cached_per_value() {
    let id = Uuid::from_u128(0x67e5_5044_10b1_426f_9247_bb68_0e5f_e0c8);
    let other = Uuid::from_u128(1);
    let day = NaiveDate::from_ymd_opt(2026, 12, 3).expect("date");
    let at = Utc
        .with_ymd_and_hms(2026, 12, 3, 6, 30, 0)
        .single()
        .expect("time");
    let from = IpAddr::V4(Ipv4Addr::LOCALHOST);

    let first = account(id, day, at, from);
    assert_eq!(account(id, day, at, from), first);
    assert_eq!(BODIES.load(Ordering::Relaxed), 1, "the same arguments hit");
    for (i, changed) in [
        account(other, day, at, from),
        account(id, day.succ_opt().expect("next day"), at, from),
        account(id, day, at + chrono::Duration::nanoseconds(1), from),
        account(id, day, at, IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ]
    .into_iter()
    .enumerate()
    {
        assert_ne!(changed, first, "argument {i} changed, so did the value");
    }
    assert_eq!(
        BODIES.load(Ordering::Relaxed),
        5,
        "every changed argument missed"
    );
}

#[test]
fn foreign_key_types_write_their_display_escaped() {
    let id = Uuid::from_u128(0x67e5_5044_10b1_426f_9247_bb68_0e5f_e0c8);
    assert_eq!(key_of(&id), "67e55044-10b1-426f-9247-bb680e5fe0c8");
    assert_eq!(
        key_of(&NaiveDate::from_ymd_opt(2026, 12, 3).expect("date")),
        "2026-12-03"
    );
    // Separators (`:` `.`) are escaped, so a placeholder still ends at the next separator.
    assert_eq!(key_of(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "127%2E0%2E0%2E1");
    assert_eq!(key_of(&Ipv6Addr::LOCALHOST), "%3A%3A1");
    let sock: SocketAddr = "10.0.0.1:6379".parse().expect("socket address");
    assert_eq!(key_of(&sock), "10%2E0%2E0%2E1%3A6379");
    let at = Utc
        .with_ymd_and_hms(2026, 12, 3, 6, 30, 0)
        .single()
        .expect("time");
    assert!(!key_of(&at).contains(':'), "{}", key_of(&at));
}

#[test]
fn std_key_types_without_display_or_with_lossy_forms_stay_distinct() {
    assert_eq!(key_of(&1.5f64), "1%2E5");
    assert_ne!(key_of(&0.0f64), key_of(&-0.0f64));
    assert_eq!(
        key_of(&std::time::Duration::from_millis(1500)),
        "1500000000"
    );
    assert_ne!(
        key_of(&std::time::Duration::new(1, 1)),
        key_of(&std::time::Duration::new(1, 0))
    );
    assert_eq!(
        key_of(&std::path::Path::new("/etc/app.toml")),
        "%2Fetc%2Fapp%2Etoml"
    );
    assert_eq!(
        key_of(&std::path::PathBuf::from("/etc/app.toml")),
        key_of(&std::path::Path::new("/etc/app.toml"))
    );
}

/// Two paths that are not UTF-8 and differ only in their invalid bytes get distinct keys
/// (a lossy conversion would give both `�`), and neither reads like a text path.
#[cfg(unix)]
#[test]
fn paths_that_are_not_utf8_keep_their_bytes() {
    use std::os::unix::ffi::OsStrExt;
    let a = std::ffi::OsStr::from_bytes(b"data/\xff.bin");
    let b = std::ffi::OsStr::from_bytes(b"data/\xfe.bin");
    assert_ne!(key_of(&a), key_of(&b));
    assert!(key_of(&a).starts_with("%P"), "{}", key_of(&a));
    let text = std::ffi::OsStr::new("%Pdata");
    assert!(!key_of(&text).starts_with("%P"), "{}", key_of(&text));
}

static SEARCHES: AtomicU32 = AtomicU32::new(0);

/// A filter as a query string gives it: a set of tags and a map of field filters.
#[cached(ttl = 60)]
fn search(
    tags: &std::collections::HashSet<String>,
    filters: &std::collections::HashMap<String, u32>,
) -> usize {
    SEARCHES.fetch_add(1, Ordering::Relaxed);
    tags.len() + filters.len()
}

#[test]
fn hash_sets_and_maps_share_one_entry_whatever_their_order() {
    use std::collections::hash_map::RandomState;
    use std::collections::{HashMap, HashSet};
    // Each collection gets a hasher seeded anew, as in another process: their iteration
    // orders differ, their keys do not.
    let tags = |items: &[&str]| {
        let mut s = HashSet::with_hasher(RandomState::new());
        s.extend(items.iter().map(|t| t.to_string()));
        s
    };
    let filters = |items: &[(&str, u32)]| {
        let mut m = HashMap::with_hasher(RandomState::new());
        m.extend(items.iter().map(|(k, v)| (k.to_string(), *v)));
        m
    };
    let names: Vec<String> = (0..40).map(|i| format!("tag{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let first = tags(&names);
    assert_eq!(search(&first, &filters(&[("year", 2026), ("page", 2)])), 42);
    for _ in 0..8 {
        assert_eq!(
            search(&tags(&names), &filters(&[("page", 2), ("year", 2026)])),
            42
        );
    }
    assert_eq!(
        SEARCHES.load(Ordering::Relaxed),
        1,
        "every order hit the first entry"
    );
    assert_eq!(key_of(&first), key_of(&tags(&names)));

    // Another set, another entry.
    assert_eq!(
        search(&tags(&names[1..]), &filters(&[("year", 2026), ("page", 2)])),
        41
    );
    assert_eq!(search(&first, &filters(&[("year", 2026), ("page", 3)])), 42);
    assert_eq!(SEARCHES.load(Ordering::Relaxed), 3);
}
