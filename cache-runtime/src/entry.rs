//! A cached value with its validators: what HTTP caching needs to answer a conditional
//! request without running the body or re-hashing the value.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::clock;

/// A strong entity tag: a 128-bit hash (XXH3) of the value's encoded bytes, computed once
/// when the value enters the cache. Every process computes the same tag for the same value.
///
/// ```
/// use cache_runtime::ETag;
/// let a = ETag::of(b"hello");
/// assert_eq!(a, ETag::of(b"hello"));
/// assert_ne!(a, ETag::of(b"hellp"));
/// let header = a.to_string(); // "\"<32 hex digits>\""
/// assert_eq!(header.len(), 34);
/// assert_eq!(ETag::parse_opaque(&header), Some(a));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ETag(u128);

impl ETag {
    /// The tag of these bytes.
    pub fn of(bytes: &[u8]) -> Self {
        ETag(xxhash_rust::xxh3::xxh3_128(bytes))
    }

    /// From a raw 128-bit value.
    pub fn from_u128(v: u128) -> Self {
        ETag(v)
    }

    /// The raw 128-bit value.
    pub fn as_u128(self) -> u128 {
        self.0
    }

    /// Parses an opaque tag as rendered by `Display` (`"` + 32 lowercase hex digits + `"`);
    /// anything else (a weak `W/"..."` tag, other lengths) is `None`.
    pub fn parse_opaque(s: &str) -> Option<Self> {
        let hex = s.strip_prefix('"')?.strip_suffix('"')?;
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u128::from_str_radix(hex, 16).ok().map(ETag)
    }
}

impl std::fmt::Display for ETag {
    /// The header form: a quoted opaque tag, `"0123…"`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{:032x}\"", self.0)
    }
}

/// Where an [`Entry`]'s value came from on this call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This process's in-memory tier.
    Local,
    /// The shared Redis tier.
    Redis,
    /// The function's body ran for this call (or for a concurrent call it waited for).
    Body,
    /// A stale fallback (fail-safe `stale`/`soft_timeout`): the body failed or was slow.
    Stale,
}

/// What the cache keeps beside a value: creation and expiry times and, when the cache
/// encodes its values, a strong [`ETag`]. Small and `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// When the value was computed (Unix ms, on the reference clock: Redis's `TIME` as this
    /// process estimates it, docs/PROTOCOL.md §6; the wall clock without a Redis tier).
    pub created_unix_ms: u64,
    /// When it stops being fresh (Unix ms).
    pub expires_unix_ms: u64,
    /// The value's entity tag, if the cache encodes values (a Redis tier, or `etag = true`).
    pub etag: Option<ETag>,
}

impl Meta {
    /// Meta for a value created now that lives `ttl`.
    pub fn fresh(ttl: Duration, etag: Option<ETag>) -> Self {
        let created = clock::now_unix_ms();
        Meta {
            created_unix_ms: created,
            expires_unix_ms: created.saturating_add(ttl.as_millis() as u64),
            etag,
        }
    }
}

/// A cached value with its validators, tags and source, as returned by the generated
/// `<fn>_entry` functions and [`Cache::get_or_load_entry`](crate::Cache::get_or_load_entry).
///
/// ```
/// use cache_runtime::{Entry, ETag, Source};
/// use std::time::{Duration, SystemTime};
/// let e = Entry::new(
///     "profile".to_string(),
///     Some(ETag::of(b"profile")),
///     SystemTime::now(),
///     Duration::from_secs(60),
///     vec!["users".to_string()],
///     Source::Body,
/// );
/// assert_eq!(e.value(), "profile");
/// assert!(e.remaining_ttl() <= Duration::from_secs(60));
/// assert_eq!(e.tags(), ["users".to_string()]);
/// ```
#[derive(Debug, Clone)]
pub struct Entry<V> {
    value: V,
    meta: Meta,
    tags: Arc<[String]>,
    source: Source,
}

impl<V> Entry<V> {
    /// An entry built by hand (for responses that do not come from a cached function).
    pub fn new(
        value: V,
        etag: Option<ETag>,
        created: SystemTime,
        ttl: Duration,
        tags: Vec<String>,
        source: Source,
    ) -> Self {
        let created = clock::unix_ms(created);
        Entry {
            value,
            meta: Meta {
                created_unix_ms: created,
                expires_unix_ms: created.saturating_add(ttl.as_millis() as u64),
                etag,
            },
            tags: tags.into(),
            source,
        }
    }

    pub(crate) fn from_meta(value: V, meta: Meta, tags: Arc<[String]>, source: Source) -> Self {
        Entry {
            value,
            meta,
            tags,
            source,
        }
    }

    /// The value.
    pub fn value(&self) -> &V {
        &self.value
    }

    /// The value, by move.
    pub fn into_value(self) -> V {
        self.value
    }

    /// Creation/expiry times and the entity tag.
    pub fn meta(&self) -> Meta {
        self.meta
    }

    /// The strong entity tag, if the cache encodes its values.
    pub fn etag(&self) -> Option<ETag> {
        self.meta.etag
    }

    /// When the value was computed (second precision is what `Last-Modified` carries).
    pub fn created(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.meta.created_unix_ms)
    }

    /// When the value stops being fresh.
    pub fn expires(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.meta.expires_unix_ms)
    }

    /// How old the value is now (the HTTP `Age`).
    pub fn age(&self) -> Duration {
        crate::clock::now_system()
            .duration_since(self.created())
            .unwrap_or(Duration::ZERO)
    }

    /// How long the value stays fresh from now (zero once expired).
    pub fn remaining_ttl(&self) -> Duration {
        self.expires()
            .duration_since(crate::clock::now_system())
            .unwrap_or(Duration::ZERO)
    }

    /// The entry's tags (for `Surrogate-Key` / `xkey` headers).
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// Where the value came from on this call.
    pub fn source(&self) -> Source {
        self.source
    }

    /// The same entry with its value mapped.
    pub fn map<U>(self, f: impl FnOnce(V) -> U) -> Entry<U> {
        Entry {
            value: f(self.value),
            meta: self.meta,
            tags: self.tags,
            source: self.source,
        }
    }
}
