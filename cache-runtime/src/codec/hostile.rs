//! What a bincode payload's length prefixes may cost a reader: a hostile or corrupt length
//! decodes as an error quickly, without allocating for it, and every shape a writer makes
//! reads back as plain bincode writes and reads it (the wire format did not change when the
//! byte limit gave way to the length budget of `owned_strings`).
//!
//! Allocations are counted per thread by this test binary's global allocator (it forwards to
//! the system allocator): each hostile decode runs on a thread of its own, so that a decode
//! that spins is reported as a failure after a timeout instead of hanging the suite.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::tests::envelope;
use super::{decode, encode, fingerprint, DecodeError, PayloadFormat, HEADER_LEN};

struct CountingAlloc;

thread_local! {
    /// Bytes this thread asked the allocator for (allocations and growth alike).
    static ASKED: Cell<usize> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    let _ = ASKED.try_with(|c| c.set(c.get().saturating_add(bytes)));
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        count(size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// How long a hostile decode may take before it counts as spinning: generous for a debug
/// build on a loaded machine; each of them takes milliseconds.
const SPIN: Duration = Duration::from_secs(20);

/// Decodes `envelope(payload)` as a `V` on a thread of its own: the result, the bytes that
/// thread asked the allocator for while decoding, and the time it took. Fails if it takes
/// longer than [`SPIN`].
fn decode_alone<V: DeserializeOwned + Debug + Send + 'static>(
    what: &str,
    payload: Vec<u8>,
) -> (Result<V, DecodeError>, usize, Duration) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let bytes = envelope(&payload, 0);
        let before = ASKED.with(Cell::get);
        let start = Instant::now();
        let res = decode::<V>(&bytes, 7, 1 << 30).map(|d| d.value);
        let took = start.elapsed();
        let asked = ASKED.with(Cell::get) - before;
        let _ = tx.send((res, asked, took));
    });
    rx.recv_timeout(SPIN)
        .unwrap_or_else(|_| panic!("{what}: the decode did not finish in {SPIN:?}"))
}

/// bincode's varint for a length or an unsigned integer (standard config).
fn varint(n: u64) -> Vec<u8> {
    match n {
        0..=250 => vec![n as u8],
        251..=0xffff => [&[251u8][..], &(n as u16).to_le_bytes()].concat(),
        0x1_0000..=0xffff_ffff => [&[252u8][..], &(n as u32).to_le_bytes()].concat(),
        _ => [&[253u8][..], &n.to_le_bytes()].concat(),
    }
}

/// `Vec<u8>` read with a visitor that trusts the declared length for its capacity, as some
/// hand-written `Deserialize` impls do.
#[derive(Debug)]
struct Trusting(#[allow(dead_code)] Vec<u8>);

impl<'de> Deserialize<'de> for Trusting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Trusting;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Trusting, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(b) = seq.next_element()? {
                    v.push(b);
                }
                Ok(Trusting(v))
            }
        }
        d.deserialize_seq(V)
    }
}

/// A struct whose only field is never written: it reads zero bytes but takes room in a `Vec`.
#[derive(Debug, Default, Deserialize)]
struct Skipped {
    #[serde(skip)]
    _room: [u64; 8],
}

/// Fails unless `res` is a payload error that took under 5 s (milliseconds in fact; a spin
/// takes for ever) and asked for at most
/// `max_bytes` (a decode asks for a few hundred bytes of its own: the error's message).
fn assert_rejected<V: Debug>(
    what: &str,
    (res, asked, took): (Result<V, DecodeError>, usize, Duration),
    max_bytes: usize,
) {
    assert!(
        matches!(res, Err(DecodeError::Payload(_))),
        "{what}: {res:?}"
    );
    assert!(asked <= max_bytes, "{what}: asked for {asked} bytes");
    assert!(took < Duration::from_secs(5), "{what}: took {took:?}");
}

const SMALL: usize = 4096;

/// A length of 2^60: no payload holds that many elements, of any size.
fn huge() -> Vec<u8> {
    varint(1 << 60)
}

/// A length prefix no payload of its size could hold is an error before any element is
/// visited for it, whatever the element: zero-byte elements, which no byte count bounds,
/// included (bincode's byte limit never charged them: the decode spun).
#[test]
fn a_huge_length_of_zero_byte_elements_does_not_spin() {
    assert_rejected(
        "Vec<()> of 2^60",
        decode_alone::<Vec<()>>("Vec<()>", huge()),
        SMALL,
    );
    assert_rejected(
        "Vec<Skipped> of 2^60",
        decode_alone::<Vec<Skipped>>("Vec<Skipped>", huge()),
        SMALL,
    );
}

/// Lengths add up over the whole payload, at any depth: 100 vectors of zero-byte elements
/// inside one, each claiming 2^32, then each 2^20 (one of them would be a legal value; a
/// hundred add up to more than the payload holds).
#[test]
fn nested_lengths_add_up() {
    for inner in [1u64 << 32, 1 << 20] {
        let mut nested = varint(100);
        for _ in 0..100 {
            nested.extend(varint(inner));
        }
        let what = format!("Vec<Vec<()>> of 100 × {inner}");
        assert_rejected(&what, decode_alone::<Vec<Vec<()>>>(&what, nested), SMALL);
    }
}

/// A huge length is refused before its visitor sees it: nothing is preallocated for it
/// (serde's visitors preallocate up to 1 MiB from a declared length; one that trusts the
/// length entirely, as some hand-written ones do, would take all of it).
#[test]
fn a_huge_length_allocates_nothing() {
    assert_rejected(
        "Vec<u64> of 2^60",
        decode_alone::<Vec<u64>>("Vec<u64>", huge()),
        SMALL,
    );
    assert_rejected(
        "HashMap of 2^60",
        decode_alone::<HashMap<u32, u32>>("HashMap", huge()),
        SMALL,
    );
    // 2^28 claimed by 5 bytes: a visitor trusting the length would take 256 MiB.
    assert_rejected(
        "Vec<u8> read by a trusting visitor, 2^28",
        decode_alone::<Trusting>("trusting visitor", varint(1 << 28)),
        SMALL,
    );
}

/// Strings and byte buffers are checked against the bytes left before they are copied out;
/// a sequence a byte short fails at the end of the input, having asked for no more than
/// the payload's size.
#[test]
fn a_length_past_the_input_fails_at_its_end() {
    assert_rejected(
        "String of 2^60",
        decode_alone::<String>("String", huge()),
        SMALL,
    );
    assert_rejected(
        "ByteBuf of 2^60",
        decode_alone::<ByteBuf>("ByteBuf", huge()),
        SMALL,
    );
    let mut short = varint(100 * 1024 + 1);
    short.extend(std::iter::repeat_n(7u8, 100 * 1024));
    assert_rejected(
        "Vec<u8> one byte short",
        decode_alone::<Vec<u8>>("Vec<u8> one byte short", short),
        3 * 100 * 1024,
    );
}

/// Zero-byte elements beyond the payload's own length are allowed up to a bound
/// (`owned_strings::ZERO_BYTE_ELEMENTS`, 2^20), which a million-element `Vec<()>` reaches
/// in milliseconds; one more is an error.
#[test]
fn zero_byte_elements_are_allowed_up_to_the_bound() {
    const BOUND: u64 = 1 << 20;
    assert_eq!(BOUND as usize, super::owned_strings::ZERO_BYTE_ELEMENTS);
    // The payload's own bytes count too: its length prefix, 5 bytes.
    let at = varint(BOUND + 5);
    assert_eq!(at.len(), 5);
    let (res, _, took) = decode_alone::<Vec<()>>("at the bound", at);
    assert_eq!(res.map(|v| v.len()), Ok((BOUND + 5) as usize));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let (res, _, _) = decode_alone::<Vec<()>>("past the bound", varint(BOUND + 6));
    let res = res.map(|v| v.len());
    assert!(matches!(res, Err(DecodeError::Payload(_))), "{res:?}");
}

/// A value whose `Deserialize` decodes another envelope inside its own (reading nothing of
/// the outer payload): a million zero-byte elements, nearly all of that payload's budget.
#[derive(Debug)]
struct DecodesInside(#[allow(dead_code)] usize);

impl<'de> Deserialize<'de> for DecodesInside {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d)?;
        let inner = envelope(&varint(1 << 20), 0);
        let v = decode::<Vec<()>>(&inner, 7, 1 << 30).map_err(serde::de::Error::custom)?;
        Ok(DecodesInside(v.value.len()))
    }
}

/// A decode inside a decode has a budget of its own, and the outer one's is as it was after
/// it: the outer `Vec<()>` of 1 000 still fits.
#[test]
fn a_decode_inside_a_decode_keeps_the_outer_budget() {
    let (res, _, _) = decode_alone::<(DecodesInside, Vec<()>)>("decode inside", varint(1000));
    assert_eq!(res.map(|(_, v)| v.len()), Ok(1000));
}

/// `Vec<u8>` written as bytes (`serialize_bytes`), as `serde_bytes` and `bytes::Bytes` do.
#[derive(Debug, Clone, PartialEq)]
struct ByteBuf(Vec<u8>);

impl Serialize for ByteBuf {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// A newtype around a `Vec<u8>`, as a `bytes`-like wrapper derives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Blob(Vec<u8>);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Unit;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Mixed {
    id: u64,
    body: Vec<u8>,
    words: Vec<u16>,
    pairs: Vec<(u8, u8)>,
    index: BTreeMap<String, Vec<u32>>,
    units: Vec<Unit>,
    nested: Vec<Vec<()>>,
    maybe: Option<Box<[u8]>>,
}

/// Encodes `value` through the codec and decodes it back; checks the payload is plain
/// bincode (standard config) and that plain bincode's bytes decode to the value too.
fn round_trip<V>(value: &V)
where
    V: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
{
    let name = std::any::type_name::<V>();
    let fp = fingerprint(name, 1);
    let bytes = encode(value, fp, Duration::from_secs(60), &[]).unwrap();
    let plain = bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap();
    assert_eq!(&bytes[HEADER_LEN..], &plain[..], "{name}: payload bytes");
    let d = decode::<V>(&bytes, fp, 1 << 30).unwrap();
    assert_eq!(d.format, PayloadFormat::Bincode, "{name}");
    assert_eq!(&d.value, value, "{name}");
    let by_hand = envelope(&plain, 0);
    assert_eq!(
        &decode::<V>(&by_hand, 7, 1 << 30).unwrap().value,
        value,
        "{name}"
    );
}

#[test]
fn large_and_many_element_shapes_round_trip_as_plain_bincode() {
    let n = 100 * 1024;
    let bytes: Vec<u8> = (0..n).map(|i| (i * 7 + i / 251) as u8).collect();
    round_trip(&bytes);
    round_trip(&Vec::<u8>::new());
    round_trip(&bytes.clone().into_boxed_slice());
    round_trip(&Blob(bytes.clone()));
    round_trip(&ByteBuf(bytes.clone()));
    round_trip(
        &(0..n as u16 / 2)
            .map(|i| i.wrapping_mul(331))
            .collect::<Vec<u16>>(),
    );
    round_trip(
        &(0..n as u32 / 4)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect::<Vec<u32>>(),
    );
    round_trip(&(0..n / 8).map(|i| i as f64 * 0.37).collect::<Vec<f64>>());
    round_trip(
        &(0..n / 2)
            .map(|i| (i as u8, (i >> 8) as u8))
            .collect::<Vec<(u8, u8)>>(),
    );
    round_trip(
        &(0..n)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect::<String>(),
    );
    round_trip(&vec![(); 1000]);
    round_trip(&vec![Unit; 70_000]);
    round_trip(&vec![vec![(); 300]; 300]);
    round_trip(
        &(0..500)
            .map(|i| (format!("k{i}"), vec![i as u8; i % 7]))
            .collect::<HashMap<String, Vec<u8>>>(),
    );
    round_trip(&Mixed {
        id: u64::MAX,
        body: bytes[..5000].to_vec(),
        words: vec![0, 250, 251, u16::MAX],
        pairs: vec![(1, 2), (255, 0)],
        index: BTreeMap::from([("a".into(), vec![1, 1 << 20]), ("".into(), vec![])]),
        units: vec![Unit; 3],
        nested: vec![vec![], vec![(); 5]],
        maybe: Some(bytes[..10].into()),
    });
}
