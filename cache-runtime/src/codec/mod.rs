//! The value envelope stored in Redis.
//!
//! ```text
//! offset size field
//!      0    2 magic            b"CR"
//!      2    1 wire version     2
//!      3    1 flags            bit 0: the payload's format, 0 bincode 2, 1 MessagePack with
//!                              field names ([`PayloadFormat`]); other bits reserved (a value
//!                              with any of them set is rejected)
//!      4    8 type fingerprint u64 LE, FNV-1a of the value type's name and schema version
//!     12    8 ticket           u64 LE: the key's random ticket the value was stored under
//!                              (docs/PROTOCOL.md §4.1); a reader compares it with the ticket
//!                              key, read in the same `MGET`
//!     20    8 created at       u64 LE, Unix milliseconds, reference clock (Redis's `TIME`
//!                              as the writer estimates it: docs/PROTOCOL.md §6)
//!     28    8 expires at       u64 LE, Unix milliseconds, reference clock
//!     36    4 payload length   u32 LE
//!     40    4 CRC-32           u32 LE, of every other byte of the envelope
//!     44    1 stamp count      k ≤ 64
//!     45   8k stamps           u64 LE each: the tag and clear counters the value was written
//!                              under (until the scope floors of PROTOCOL.md §4.3 replace them)
//!  45+8k    n payload          the value, via serde: bincode 2 (standard config), or
//!                              MessagePack where bincode would not read it back as written
//!                              (`payload`'s module docs)
//! ```
//!
//! Wire version 1 values (no ticket) are rejected as [`DecodeError::Version`]: a miss.
//!
//! Anything that does not match exactly (magic, version, fingerprint, length, checksum, a
//! payload that does not decode or leaves trailing bytes, an expiry in the past) is rejected
//! as a [`DecodeError`]; the cache counts it and treats it as a miss. The serializers (bincode
//! and rmp-serde) stay behind this module.

use std::time::Duration;

mod owned_strings;
mod payload;
mod schema;

#[cfg(test)]
mod hostile;

pub use payload::PayloadFormat;
pub use schema::schema_hash;
pub(crate) use schema::schema_hash_memoized;

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use serde::{de::DeserializeOwned, Serialize};

use crate::clock;
use crate::entry::ETag;

/// A value kept once per type for the process's life (a type's payload state, its schema
/// hash), read under a shared lock. A missing one is made outside the lock (making it may
/// reach the memo for another type); if two threads make it at once, the first stored wins
/// and both get that one.
pub(crate) struct TypeMemo<T>(OnceLock<RwLock<HashMap<TypeId, T>>>);

impl<T: Copy> TypeMemo<T> {
    pub(crate) const fn new() -> Self {
        Self(OnceLock::new())
    }

    pub(crate) fn get_or(&self, id: TypeId, make: impl FnOnce() -> T) -> T {
        let memo = self.0.get_or_init(Default::default);
        if let Some(&known) = memo.read().unwrap_or_else(|e| e.into_inner()).get(&id) {
            return known;
        }
        let made = make();
        *memo
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_insert(made)
    }
}

/// First bytes of every value the runtime writes.
pub const MAGIC: [u8; 2] = *b"CR";
/// Version of the envelope layout; part of every value key too (`v2`).
pub const WIRE_VERSION: u8 = 2;
/// Size of the fixed header (before the stamps and the payload).
pub const HEADER_LEN: usize = 45;
/// Most stamps an envelope may carry.
pub const MAX_STAMPS: usize = 64;

/// Why bytes read from Redis were not accepted as a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than a header, or a length that does not match.
    #[error("truncated or oversized envelope")]
    Length,
    /// Not written by this runtime.
    #[error("bad magic bytes")]
    Magic,
    /// Written by another wire version.
    #[error("unsupported wire version {0}")]
    Version(u8),
    /// Written for another value type or schema version.
    #[error("type fingerprint mismatch")]
    Fingerprint,
    /// Bytes changed after they were written.
    #[error("checksum mismatch")]
    Checksum,
    /// The envelope's expiry has passed.
    #[error("expired")]
    Expired,
    /// The payload is above the configured cap.
    #[error("payload of {0} bytes is above the cap")]
    TooLarge(usize),
    /// bincode rejected the payload.
    #[error("payload does not decode: {0}")]
    Payload(String),
    /// Stored under another ticket or other scope tokens than the reader requires (the key
    /// was invalidated, or a tag invalidation or clear happened since): only from a check
    /// that names them (docs/PROTOCOL.md §4).
    #[error("superseded: stored under another ticket or scope tokens")]
    Superseded,
}

/// Stable 64-bit fingerprint of a value type and its schema version (FNV-1a).
///
/// ```
/// let a = cache_runtime::codec::fingerprint("app::Profile", 1);
/// assert_ne!(a, cache_runtime::codec::fingerprint("app::Profile", 2));
/// ```
pub fn fingerprint(type_name: &str, schema_version: u32) -> u64 {
    fnv1a(
        type_name
            .as_bytes()
            .iter()
            .chain(&[0xff])
            .chain(&schema_version.to_le_bytes())
            .copied(),
    )
}

/// [`fingerprint`] with a [`schema_hash`] folded in: what a cache writes into its envelopes
/// and requires of what it reads.
///
/// ```
/// use cache_runtime::codec::{fingerprint, schema_hash, type_fingerprint, with_schema};
/// let fp = fingerprint(std::any::type_name::<Vec<u32>>(), 1);
/// assert_eq!(type_fingerprint::<Vec<u32>>(1), with_schema(fp, schema_hash::<Vec<u32>>()));
/// assert_ne!(type_fingerprint::<Vec<u32>>(1), fp);
/// ```
pub fn with_schema(fingerprint: u64, schema_hash: u64) -> u64 {
    fnv1a(
        fingerprint
            .to_le_bytes()
            .into_iter()
            .chain(schema_hash.to_le_bytes()),
    )
}

/// The fingerprint a cache of `V` with schema version `version` writes into its envelopes
/// (the type's name, `version`, and its [`schema_hash`]).
pub fn type_fingerprint<V: DeserializeOwned + 'static>(version: u32) -> u64 {
    with_schema(
        fingerprint(std::any::type_name::<V>(), version),
        schema_hash_memoized::<V>(),
    )
}

/// FNV-1a, 64 bits: stable across builds and platforms (unlike `std`'s hashers).
pub(crate) fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Encodes a value with its envelope and the stamps it is written under.
pub fn encode<V: Serialize + DeserializeOwned + 'static>(
    value: &V,
    fingerprint: u64,
    ttl: Duration,
    stamps: &[u64],
) -> Result<Vec<u8>, String> {
    encode_at(value, fingerprint, 0, clock::now_unix_ms(), ttl, stamps)
}

/// [`encode`] with the key's ticket and the creation time given (Unix ms), so that the
/// writer's own copy and the envelope agree on it.
///
/// ```
/// use cache_runtime::codec::{decode, encode_at, envelope_etag, fingerprint};
/// use std::time::Duration;
/// let fp = fingerprint("u8", 1);
/// let bytes = encode_at(&7u8, fp, 0xfeed, u64::MAX / 2, Duration::from_secs(1), &[]).unwrap();
/// let d = decode::<u8>(&bytes, fp, 16).unwrap();
/// assert_eq!(d.created_unix_ms, u64::MAX / 2);
/// assert_eq!(d.ticket, 0xfeed);
/// assert_eq!(Some(d.etag), envelope_etag(&bytes));
/// ```
pub fn encode_at<V: Serialize + DeserializeOwned + 'static>(
    value: &V,
    fingerprint: u64,
    ticket: u64,
    created: u64,
    ttl: Duration,
    stamps: &[u64],
) -> Result<Vec<u8>, String> {
    encode_sized(value, fingerprint, ticket, created, ttl, stamps, 0)
}

/// [`encode_at`] into a buffer of `capacity` bytes at first (a cache passes its previous
/// envelope's length, so that a value like the last one is encoded without growing the
/// buffer): the header, then the payload serialized in place, then its length and checksum.
pub(crate) fn encode_sized<V: Serialize + DeserializeOwned + 'static>(
    value: &V,
    fingerprint: u64,
    ticket: u64,
    created: u64,
    ttl: Duration,
    stamps: &[u64],
    capacity: usize,
) -> Result<Vec<u8>, String> {
    if stamps.len() > MAX_STAMPS {
        return Err(format!("{} stamps, at most {MAX_STAMPS}", stamps.len()));
    }
    let expires = created.saturating_add(ttl.as_millis() as u64);
    let payload_at = HEADER_LEN + 8 * stamps.len();
    let mut out = Vec::with_capacity(capacity.max(payload_at + 64));
    out.extend_from_slice(&MAGIC);
    out.push(WIRE_VERSION);
    out.push(0); // flags: the payload's format, below
    out.extend_from_slice(&fingerprint.to_le_bytes());
    out.extend_from_slice(&ticket.to_le_bytes());
    out.extend_from_slice(&created.to_le_bytes());
    out.extend_from_slice(&expires.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // payload length, below
    out.extend_from_slice(&[0; 4]); // checksum, below
    out.push(stamps.len() as u8);
    for s in stamps {
        out.extend_from_slice(&s.to_le_bytes());
    }
    debug_assert_eq!(out.len(), payload_at);
    let format = payload::write_payload(value, &mut out)?;
    out[3] = format.flags();
    let len = u32::try_from(out.len() - payload_at).map_err(|_| "value above 4 GiB".to_string())?;
    out[36..40].copy_from_slice(&len.to_le_bytes());
    let crc = checksum(&out);
    out[40..44].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// CRC-32 of the whole envelope except the checksum field itself.
fn checksum(envelope: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&envelope[..40]);
    h.update(&envelope[44..]);
    h.finalize()
}

/// The [`ETag`] of an envelope this crate encoded: the hash of its payload only, so the same
/// value has the same tag whoever wrote it and whenever. `None` if `bytes` is no envelope.
pub fn envelope_etag(bytes: &[u8]) -> Option<ETag> {
    let n_stamps = *bytes.get(HEADER_LEN - 1)? as usize;
    bytes.get(HEADER_LEN + 8 * n_stamps..).map(ETag::of)
}

/// The [`ETag`] of a value for a cache that does not encode otherwise (a local-only cache
/// with `etag = true`): the hash of its payload encoding, equal to [`envelope_etag`] of the
/// same value.
///
/// ```
/// use cache_runtime::codec::{encode, envelope_etag, payload_etag};
/// use std::time::Duration;
/// let bytes = encode(&"v".to_string(), 1, Duration::from_secs(1), &[3]).unwrap();
/// assert_eq!(payload_etag(&"v".to_string()), envelope_etag(&bytes));
/// ```
pub fn payload_etag<V: Serialize + DeserializeOwned + 'static>(value: &V) -> Option<ETag> {
    let mut payload = Vec::new();
    payload::write_payload(value, &mut payload).ok()?;
    Some(ETag::of(&payload))
}

/// The size of a value's payload, without allocating it (for `max_bytes` weighing); 0 for a
/// value that does not encode.
///
/// ```
/// assert_eq!(cache_runtime::codec::encoded_size(&"abc".to_string()), 4);
/// ```
pub fn encoded_size<V: Serialize + DeserializeOwned + 'static>(value: &V) -> usize {
    payload::payload_size(value)
}

/// A decoded envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded<V> {
    /// The value.
    pub value: V,
    /// The key's ticket it was stored under (0 for values encoded outside a cache).
    pub ticket: u64,
    /// When it was written (Unix ms, reference clock: docs/PROTOCOL.md §6).
    pub created_unix_ms: u64,
    /// When it expires (Unix ms, reference clock: docs/PROTOCOL.md §6).
    pub expires_unix_ms: u64,
    /// The stamps it was written under.
    pub stamps: Vec<u64>,
    /// The payload's entity tag (see [`envelope_etag`]).
    pub etag: ETag,
    /// Whether it is before its expiry (otherwise it is within the grace period that
    /// [`decode_with_grace`] allowed: a stale fallback, not a hit).
    pub fresh: bool,
    /// How the payload was encoded.
    pub format: PayloadFormat,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Decodes and validates an envelope. Never panics; what a payload's decode allocates and
/// visits is bounded by its length: every length it declares is checked against what a payload
/// of that size can hold before anything is allocated for it (`owned_strings`' module docs).
///
/// ```
/// use cache_runtime::codec::{decode, encode, fingerprint, DecodeError};
/// use std::time::Duration;
/// let fp = fingerprint("u32", 1);
/// let bytes = encode(&7u32, fp, Duration::from_secs(60), &[3]).unwrap();
/// assert_eq!(decode::<u32>(&bytes, fp, 1 << 20).unwrap().value, 7);
/// assert_eq!(decode::<u32>(&bytes, fp ^ 1, 1 << 20), Err(DecodeError::Fingerprint));
/// assert_eq!(decode::<u32>(b"garbage", fp, 1 << 20), Err(DecodeError::Length));
/// ```
pub fn decode<V: DeserializeOwned>(
    bytes: &[u8],
    fingerprint: u64,
    max_payload: usize,
) -> Result<Decoded<V>, DecodeError> {
    decode_with_grace(bytes, fingerprint, max_payload, Duration::ZERO)
}

/// [`decode`], also accepting a value up to `grace` past its expiry (marked not `fresh`):
/// the stale fallback of `stale = "..."`.
///
/// ```
/// use cache_runtime::codec::{decode_with_grace, encode, fingerprint};
/// use std::time::Duration;
/// let fp = fingerprint("u8", 1);
/// let bytes = encode(&1u8, fp, Duration::ZERO, &[]).unwrap();
/// let d = decode_with_grace::<u8>(&bytes, fp, 16, Duration::from_secs(60)).unwrap();
/// assert!(!d.fresh);
/// ```
pub fn decode_with_grace<V: DeserializeOwned>(
    bytes: &[u8],
    fingerprint: u64,
    max_payload: usize,
    grace: Duration,
) -> Result<Decoded<V>, DecodeError> {
    let (h, value) = decode_checked(bytes, fingerprint, max_payload, grace, None)?;
    Ok(Decoded {
        value,
        ticket: h.ticket,
        created_unix_ms: h.created_unix_ms,
        expires_unix_ms: h.expires_unix_ms,
        stamps: stamps_in(h.stamps).collect(),
        etag: ETag::of(h.payload),
        fresh: h.fresh,
        format: h.format,
    })
}

/// An envelope's fields besides the value, borrowed from its bytes.
pub(crate) struct Header<'a> {
    pub ticket: u64,
    pub created_unix_ms: u64,
    pub expires_unix_ms: u64,
    /// The stamps, 8 bytes LE each.
    pub stamps: &'a [u8],
    /// The encoded value: its hash is the ETag, computed only when one is wanted.
    pub payload: &'a [u8],
    pub fresh: bool,
    /// The reference clock's time the expiry was checked against (Unix ms).
    pub now_unix_ms: u64,
    /// How the payload is encoded.
    pub format: PayloadFormat,
}

fn stamps_in(raw: &[u8]) -> impl Iterator<Item = u64> + '_ {
    raw.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
}

/// [`decode_with_grace`] without copying the stamps out; with `expect` (ticket, stamps), an
/// envelope stored under anything else is [`DecodeError::Superseded`], found before the
/// payload decode (a superseded value costs its header and checksum).
pub(crate) fn decode_checked<'a, V: DeserializeOwned>(
    bytes: &'a [u8],
    fingerprint: u64,
    max_payload: usize,
    grace: Duration,
    expect: Option<(u64, &[u64])>,
) -> Result<(Header<'a>, V), DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Length);
    }
    if bytes[0..2] != MAGIC {
        return Err(DecodeError::Magic);
    }
    if bytes[2] != WIRE_VERSION {
        return Err(DecodeError::Version(bytes[2]));
    }
    let Some(format) = PayloadFormat::from_flags(bytes[3]) else {
        // Reserved for future envelope features; a reader must not guess their meaning.
        return Err(DecodeError::Version(bytes[2]));
    };
    if u64_at(bytes, 4) != fingerprint {
        return Err(DecodeError::Fingerprint);
    }
    let ticket = u64_at(bytes, 12);
    let created = u64_at(bytes, 20);
    let expires = u64_at(bytes, 28);
    let len = u32_at(bytes, 36) as usize;
    if len > max_payload {
        return Err(DecodeError::TooLarge(len));
    }
    let n_stamps = bytes[44] as usize;
    if n_stamps > MAX_STAMPS {
        return Err(DecodeError::Length);
    }
    let payload_at = HEADER_LEN + 8 * n_stamps;
    if bytes.len() < payload_at || bytes.len() - payload_at != len {
        return Err(DecodeError::Length);
    }
    let stamps = &bytes[HEADER_LEN..payload_at];
    let payload = &bytes[payload_at..];
    // Corruption first, so that it is reported as such even in a superseded value.
    if checksum(bytes) != u32_at(bytes, 40) {
        return Err(DecodeError::Checksum);
    }
    if let Some((want_ticket, want_stamps)) = expect {
        if ticket != want_ticket
            || n_stamps != want_stamps.len()
            || !stamps_in(stamps).eq(want_stamps.iter().copied())
        {
            return Err(DecodeError::Superseded);
        }
    }
    let now = clock::now_unix_ms();
    if expires.saturating_add(grace.as_millis() as u64) <= now {
        return Err(DecodeError::Expired);
    }
    let value = payload::decode_payload(payload, format).map_err(DecodeError::Payload)?;
    let header = Header {
        ticket,
        created_unix_ms: created,
        expires_unix_ms: expires,
        stamps,
        payload,
        fresh: expires > now,
        now_unix_ms: now,
        format,
    };
    Ok((header, value))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde::Deserialize;

    /// An envelope built by hand around `payload` (fingerprint 7, no ticket, no stamps,
    /// never expiring), its checksum right.
    pub(crate) fn envelope(payload: &[u8], flags: u8) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&[WIRE_VERSION, flags]);
        bytes.extend_from_slice(&7u64.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
        bytes.push(0);
        bytes.extend_from_slice(payload);
        let crc = checksum(&bytes);
        bytes[40..44].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn a_reader_accepts_only_the_ticket_and_stamps_it_read() {
        let fp = fingerprint("u32", 1);
        let ttl = Duration::from_secs(60);
        let bytes = encode_at(&7u32, fp, 42, clock::now_unix_ms(), ttl, &[5, 6]).unwrap();
        let check = |expect| decode_checked::<u32>(&bytes, fp, 64, Duration::ZERO, expect);
        let (h, v) = check(Some((42, &[5, 6]))).unwrap();
        assert_eq!((v, h.ticket), (7, 42));
        assert_eq!(stamps_in(h.stamps).collect::<Vec<_>>(), [5, 6]);
        for (ticket, stamps) in [
            (41, &[5, 6][..]),
            (42, &[5, 7]),
            (42, &[5]),
            (42, &[5, 6, 0]),
        ] {
            assert_eq!(
                check(Some((ticket, stamps))).err(),
                Some(DecodeError::Superseded),
                "{ticket} {stamps:?}"
            );
        }
        assert!(check(None).is_ok(), "no expectation: any ticket");
        // Corruption is reported as such, whatever the reader expects.
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            decode_checked::<u32>(&flipped, fp, 64, Duration::ZERO, Some((1, &[]))).err(),
            Some(DecodeError::Checksum)
        );
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Profile {
        id: u64,
        name: String,
        tags: Vec<String>,
    }

    fn sample() -> Profile {
        Profile {
            id: 42,
            name: "Ada".into(),
            tags: vec!["a".into(), "b".into()],
        }
    }

    #[test]
    fn round_trip_and_golden_header() {
        let fp = fingerprint("Profile", 1);
        let bytes = encode(&sample(), fp, Duration::from_secs(60), &[7, 0]).unwrap();
        assert_eq!(&bytes[..4], b"CR\x02\x00");
        assert_eq!(&bytes[4..12], &fp.to_le_bytes());
        assert_eq!(bytes[44], 2);
        assert_eq!(&bytes[45..53], &7u64.to_le_bytes());
        // bincode 2 standard config, varint ints: pins the payload format.
        assert_eq!(&bytes[HEADER_LEN + 16..], b"\x2a\x03Ada\x02\x01a\x01b");
        let d = decode::<Profile>(&bytes, fp, 1 << 20).unwrap();
        assert_eq!(d.value, sample());
        assert_eq!(d.stamps, vec![7, 0]);
        assert_eq!(d.expires_unix_ms - d.created_unix_ms, 60_000);
    }

    /// The payload is serialized into the envelope's own buffer, whatever its first
    /// capacity (none, too small, larger than needed): the same bytes as the payload encoded
    /// on its own, with its length and checksum filled in after.
    #[test]
    fn the_first_capacity_never_changes_the_envelope() {
        let fp = fingerprint("Profile", 1);
        let ttl = Duration::from_secs(60);
        let now = clock::now_unix_ms();
        let reference = encode_sized(&sample(), fp, 9, now, ttl, &[7, 0], 0).unwrap();
        let payload = bincode::serde::encode_to_vec(sample(), bincode::config::standard()).unwrap();
        let payload_at = HEADER_LEN + 16;
        assert_eq!(&reference[payload_at..], &payload[..]);
        assert_eq!(u32_at(&reference, 36) as usize, payload.len());
        for capacity in [1, payload_at, payload_at + 1, reference.len(), 1 << 16] {
            let bytes = encode_sized(&sample(), fp, 9, now, ttl, &[7, 0], capacity).unwrap();
            assert_eq!(bytes, reference, "first capacity {capacity}");
        }
        let d = decode::<Profile>(&reference, fp, 1 << 20).unwrap();
        assert_eq!((d.value, d.ticket, d.stamps), (sample(), 9, vec![7, 0]));
    }

    #[test]
    fn every_truncation_and_bit_flip_is_rejected() {
        let fp = fingerprint("Profile", 1);
        let bytes = encode(&sample(), fp, Duration::from_secs(60), &[]).unwrap();
        for n in 0..bytes.len() {
            assert!(
                decode::<Profile>(&bytes[..n], fp, 1 << 20).is_err(),
                "prefix {n}"
            );
        }
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(
                    decode::<Profile>(&b, fp, 1 << 20).is_err(),
                    "byte {i} bit {bit}"
                );
            }
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            decode::<Profile>(&longer, fp, 1 << 20),
            Err(DecodeError::Length)
        );
    }

    #[test]
    fn another_type_with_same_fingerprint_does_not_decode_to_garbage() {
        let fp = fingerprint("x", 1);
        let bytes = encode(&"hello".to_string(), fp, Duration::from_secs(5), &[]).unwrap();
        assert!(decode::<(u64, u64, u64, u64)>(&bytes, fp, 1 << 20).is_err());
    }

    #[test]
    fn hostile_length_prefix_is_bounded() {
        // A payload that claims a 2^60-element Vec must fail fast, not allocate.
        let mut payload = vec![0xfd];
        payload.extend_from_slice(&(1u64 << 60).to_le_bytes());
        let bytes = envelope(&payload, 0);
        assert!(matches!(
            decode::<Vec<u64>>(&bytes, 7, 1 << 20),
            Err(DecodeError::Payload(_))
        ));
    }

    #[test]
    fn expired_and_oversized_are_rejected() {
        let fp = fingerprint("u8", 1);
        let bytes = encode(&1u8, fp, Duration::ZERO, &[]).unwrap();
        assert_eq!(decode::<u8>(&bytes, fp, 10), Err(DecodeError::Expired));
        let big = encode(&vec![0u8; 100], fp, Duration::from_secs(1), &[]).unwrap();
        assert_eq!(
            decode::<Vec<u8>>(&big, fp, 10),
            Err(DecodeError::TooLarge(101))
        );
    }
}
