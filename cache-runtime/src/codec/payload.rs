//! The value inside an envelope: bincode 2 wherever it reads back what was written,
//! MessagePack with field names wherever it would not.
//!
//! bincode is compact and fast, but it is not self-describing: it writes struct fields by
//! position, with no names and no markers, and it cannot answer `deserialize_any`. Three
//! kinds of serde types break that, and each is caught here before it reaches Redis:
//!
//! - **A field skipped only sometimes** (`#[serde(skip_serializing_if = ...)]`): the bytes
//!   shift, and a reader can decode them into *other fields' values* without an error.
//!   A guard around bincode's serializer refuses a skipped field ([`Guarded`]), so that
//!   value is written self-describing instead.
//! - **A sequence or map of unknown length** (`#[serde(flatten)]`, some hand-written
//!   `Serialize` impls): bincode refuses it; the value is written self-describing.
//! - **A type whose reading does not mirror its writing**: internally tagged and untagged
//!   enums, `serde_json::Value` and other types read with `deserialize_any`, or a field with
//!   `skip_serializing` but not `skip_deserializing`. bincode writes them, then fails or
//!   misreads them. A probe finds them: the first value of each type written with bincode
//!   is decoded back and encoded again, and unless that gives the same bytes (in any order,
//!   so that a `HashMap`'s iteration order does not count), every later value of the type
//!   is written self-describing.
//! - **A hand-written `Serialize` that declares one length and writes another** (a
//!   sequence, tuple, map or struct): bincode and MessagePack alike would write a length
//!   that is not the data's. The guard counts what each compound writes against what it
//!   declared, and such a value is written nowhere (a counted encode failure).
//!
//! The self-describing format is MessagePack (rmp-serde) with structs as maps of field
//! names: missing fields take their `#[serde(default)]` or fail to decode (a counted miss,
//! never another field's value), and `deserialize_any` works. The envelope's flags say which
//! format a payload is in, so every reader decodes either, whichever writer chose.

use std::any::TypeId;
use std::cell::Cell;
use std::fmt::Display;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

use serde::de::DeserializeOwned;
use serde::ser::{self, Serialize, Serializer};

use super::owned_strings::{with_budget, OwnedFromBorrowed};
use super::TypeMemo;

/// How a payload is encoded: the envelope's flags, bit 0.
///
/// ```
/// use cache_runtime::codec::{decode, encode, fingerprint, PayloadFormat};
/// use std::time::Duration;
///
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct Page {
///     #[serde(default, skip_serializing_if = "Option::is_none")]
///     next: Option<u32>,
///     items: Vec<String>,
/// }
///
/// let fp = fingerprint("Page", 1);
/// let ttl = Duration::from_secs(60);
/// let full = encode(&Page { next: Some(2), items: vec![] }, fp, ttl, &[]).unwrap();
/// let last = encode(&Page { next: None, items: vec!["x".into()] }, fp, ttl, &[]).unwrap();
/// let (full, last) = (decode::<Page>(&full, fp, 1024).unwrap(), decode::<Page>(&last, fp, 1024).unwrap());
/// assert_eq!(full.format, PayloadFormat::Bincode);
/// // A skipped field would shift bincode's fields: that value is written with names.
/// assert_eq!(last.format, PayloadFormat::MessagePack);
/// assert_eq!(last.value, Page { next: None, items: vec!["x".into()] });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PayloadFormat {
    /// bincode 2, standard configuration: the usual format.
    Bincode,
    /// MessagePack (rmp-serde) with structs as maps of field names: values bincode would not
    /// read back as written.
    MessagePack,
}

impl PayloadFormat {
    /// The envelope's flags byte for this format.
    pub(crate) fn flags(self) -> u8 {
        match self {
            PayloadFormat::Bincode => 0,
            PayloadFormat::MessagePack => 1,
        }
    }

    /// The format an envelope's flags byte names; `None` for a bit this version does not know.
    pub(crate) fn from_flags(flags: u8) -> Option<Self> {
        match flags {
            0 => Some(PayloadFormat::Bincode),
            1 => Some(PayloadFormat::MessagePack),
            _ => None,
        }
    }
}

/// What is known of a type's bincode round trip ([`type_state`]).
const UNPROBED: u8 = 0;
const BINCODE_READS_BACK: u8 = 1;
const SELF_DESCRIBING: u8 = 2;

/// The probe's finding for `V`, shared by every cache of the type (one per type, so that
/// every cache and ETag of a value agree on its bytes).
fn type_state<V: 'static>() -> &'static AtomicU8 {
    thread_local! {
        // The last type this thread encoded: a cache's stores find it without the shared lock.
        static LAST: Cell<Option<(TypeId, &'static AtomicU8)>> = const { Cell::new(None) };
    }
    let id = TypeId::of::<V>();
    if let Some((last, state)) = LAST.with(Cell::get) {
        if last == id {
            return state;
        }
    }
    let state = registered_state(id);
    LAST.with(|last| last.set(Some((id, state))));
    state
}

fn registered_state(id: TypeId) -> &'static AtomicU8 {
    static TYPES: TypeMemo<&'static AtomicU8> = TypeMemo::new();
    // Leaked once per value type (and once more by a thread that lost a race to register
    // it): a few bytes for the process's life.
    TYPES.get_or(id, || Box::leak(Box::new(AtomicU8::new(UNPROBED))))
}

/// Appends `value`'s payload to `out` and says in which format; `out` is unchanged on error.
pub(crate) fn write_payload<V>(value: &V, out: &mut Vec<u8>) -> Result<PayloadFormat, String>
where
    V: Serialize + DeserializeOwned + 'static,
{
    let start = out.len();
    let state = type_state::<V>();
    let known = state.load(Relaxed);
    if known != SELF_DESCRIBING {
        let verdict = Verdict::new(None);
        match write_bincode(value, out, &verdict) {
            Ok(()) if known == BINCODE_READS_BACK => return Ok(PayloadFormat::Bincode),
            Ok(()) => {
                // The type's first bincode value: does it read back as written?
                if bincode_reads_back::<V>(&out[start..]) {
                    state.store(BINCODE_READS_BACK, Relaxed);
                    return Ok(PayloadFormat::Bincode);
                }
                state.store(SELF_DESCRIBING, Relaxed);
                tracing::debug!(
                    value_type = std::any::type_name::<V>(),
                    "values of this type do not read back from bincode as written: stored as MessagePack"
                );
            }
            // Lengths that are not the data's: no format would write it as it is.
            Err(e) if verdict.get() == Some(Refusal::WrongLength) => {
                out.truncate(start);
                return Err(e);
            }
            // A skipped field or a length bincode cannot write: this value only.
            Err(_) => {}
        }
        out.truncate(start);
    }
    match write_message_pack(value, out) {
        Ok(()) => Ok(PayloadFormat::MessagePack),
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

/// The payload's size without keeping it (for `max_bytes` weighing): bincode's when the
/// type writes bincode and this value does, else MessagePack's; 0 if neither encodes.
pub(crate) fn payload_size<V>(value: &V) -> usize
where
    V: Serialize + DeserializeOwned + 'static,
{
    if type_state::<V>().load(Relaxed) != SELF_DESCRIBING {
        let mut w = bincode::enc::write::SizeWriter::default();
        let verdict = Verdict::new(None);
        let guarded = Guard {
            value,
            verdict: &verdict,
        };
        match bincode::serde::encode_into_writer(guarded, &mut w, bincode::config::standard()) {
            Ok(()) => return w.bytes_written,
            Err(_) if verdict.get() == Some(Refusal::WrongLength) => return 0,
            Err(_) => {}
        }
    }
    let mut counter = ByteCounter(0);
    match rmp_serde::encode::write_named(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => 0,
    }
}

/// Writes `value` with bincode through the guard; the verdict says why the guard refused it.
fn write_bincode<V: Serialize + ?Sized>(
    value: &V,
    out: &mut Vec<u8>,
    verdict: &Verdict,
) -> Result<(), String> {
    let guarded = Guard { value, verdict };
    bincode::serde::encode_into_std_write(guarded, out, bincode::config::standard())
        .map(drop)
        .map_err(|e| e.to_string())
}

fn write_message_pack<V: Serialize + ?Sized>(value: &V, out: &mut Vec<u8>) -> Result<(), String> {
    rmp_serde::encode::write_named(out, value).map_err(|e| e.to_string())
}

/// Whether a bincode payload decodes and encodes again to the same bytes, in any order.
fn bincode_reads_back<V: Serialize + DeserializeOwned>(payload: &[u8]) -> bool {
    let Ok(back) = decode_bincode::<V>(payload) else {
        return false;
    };
    let mut again = Vec::with_capacity(payload.len());
    if write_bincode(&back, &mut again, &Verdict::new(None)).is_err()
        || again.len() != payload.len()
    {
        return false;
    }
    again == payload || same_bytes_in_any_order(payload, &again)
}

/// Same multiset of bytes: a map or set written in another iteration order passes, a field
/// shifted into another's place (or lost) does not.
fn same_bytes_in_any_order(a: &[u8], b: &[u8]) -> bool {
    let mut counts = [0i64; 256];
    for &x in a {
        counts[x as usize] += 1;
    }
    for &x in b {
        counts[x as usize] -= 1;
    }
    counts.iter().all(|&c| c == 0)
}

/// Decodes a payload in `format`, all of it: trailing bytes are an error.
pub(crate) fn decode_payload<V: DeserializeOwned>(
    payload: &[u8],
    format: PayloadFormat,
) -> Result<V, String> {
    match format {
        PayloadFormat::Bincode => decode_bincode(payload),
        PayloadFormat::MessagePack => decode_message_pack(payload),
    }
}

/// Decodes a bincode payload, all of it, through the adapter of `owned_strings`: owned
/// strings copied from the borrowed payload, and every sequence's and map's declared length
/// charged once against what a payload of this size can hold (its module docs), so that a
/// hostile length prefix is an error before anything is allocated or visited for it.
///
/// No byte limit: bincode charges one per primitive read, which on a slice only repeats the
/// slice's own bounds check, and costs a third more than the decode itself for a large
/// `Vec<u8>` (docs/BENCHMARKS.md, thirty-seventh round); the only reads it would bound that
/// the slice does not, owned strings and byte buffers sized by their prefix, go through the
/// adapter's borrowed forms instead.
fn decode_bincode<V: DeserializeOwned>(payload: &[u8]) -> Result<V, String> {
    let seed = OwnedFromBorrowed::<V>(std::marker::PhantomData);
    let res = with_budget(payload.len(), || {
        bincode::serde::seed_decode_from_slice(seed, payload, bincode::config::standard())
    });
    match res {
        Ok((value, used)) if used == payload.len() => Ok(value),
        Ok((_, used)) => Err(format!("{} trailing bytes", payload.len() - used)),
        Err(e) => Err(e.to_string()),
    }
}

/// The deepest nesting a MessagePack payload may have (rmp-serde's default is 1024): deep
/// enough for any value a cache holds, shallow enough for a worker thread's stack.
const MAX_DEPTH: usize = 256;

fn decode_message_pack<V: DeserializeOwned>(payload: &[u8]) -> Result<V, String> {
    // Read through `&mut &[u8]`, which advances past what was read: the rest is what is left.
    let mut rest = payload;
    let mut de = rmp_serde::Deserializer::new(&mut rest);
    de.set_max_depth(MAX_DEPTH);
    let value = V::deserialize(&mut de).map_err(|e| e.to_string())?;
    drop(de);
    match rest.len() {
        0 => Ok(value),
        n => Err(format!("{n} trailing bytes")),
    }
}

struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Why the guard refused a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// A struct field was skipped (`skip_serializing_if`): bincode would write the fields
    /// after it in its place. MessagePack names fields: it is written there.
    SkippedField,
    /// A compound wrote another number of elements or fields than it declared: a bug in a
    /// hand-written `Serialize`, which would make bincode and MessagePack alike write a
    /// length that is not the data's. Written nowhere.
    WrongLength,
}

impl Refusal {
    fn message(self) -> &'static str {
        match self {
            Refusal::SkippedField => {
                "a struct field was skipped (`skip_serializing_if`): bincode writes fields by position"
            }
            Refusal::WrongLength => {
                "the value's `Serialize` wrote another number of elements or fields than it declared"
            }
        }
    }
}

/// What the guard found while serializing one value.
type Verdict = Cell<Option<Refusal>>;

fn refuse<E: ser::Error>(verdict: &Verdict, why: Refusal) -> E {
    verdict.set(Some(why));
    E::custom(why.message())
}

/// Serializes the value it borrows through [`Guarded`].
struct Guard<'a, T: ?Sized> {
    value: &'a T,
    verdict: &'a Verdict,
}

impl<T: ?Sized + Serialize> Serialize for Guard<'_, T> {
    #[inline]
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(Guarded {
            inner: s,
            verdict: self.verdict,
        })
    }
}

/// A serializer that forwards everything to the one it wraps, every nested value guarded
/// too, but refuses what bincode would write as something else: a skipped struct field, and
/// a compound whose declared length is not what it wrote.
struct Guarded<'a, S> {
    inner: S,
    verdict: &'a Verdict,
}

impl<'a, S> Guarded<'a, S> {
    fn guard<'b, T: ?Sized>(&self, value: &'b T) -> Guard<'b, T>
    where
        'a: 'b,
    {
        Guard {
            value,
            verdict: self.verdict,
        }
    }
}

macro_rules! forward {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {
        $(
            #[inline]
            fn $method(self, $($arg: $ty),*) -> Result<S::Ok, S::Error> {
                self.inner.$method($($arg),*)
            }
        )*
    };
}

impl<'a, S: Serializer> Serializer for Guarded<'a, S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Compound<'a, S::SerializeSeq>;
    type SerializeTuple = Compound<'a, S::SerializeTuple>;
    type SerializeTupleStruct = Compound<'a, S::SerializeTupleStruct>;
    type SerializeTupleVariant = Compound<'a, S::SerializeTupleVariant>;
    type SerializeMap = Compound<'a, S::SerializeMap>;
    type SerializeStruct = Compound<'a, S::SerializeStruct>;
    type SerializeStructVariant = Compound<'a, S::SerializeStructVariant>;

    forward! {
        serialize_bool(v: bool);
        serialize_i8(v: i8);
        serialize_i16(v: i16);
        serialize_i32(v: i32);
        serialize_i64(v: i64);
        serialize_i128(v: i128);
        serialize_u8(v: u8);
        serialize_u16(v: u16);
        serialize_u32(v: u32);
        serialize_u64(v: u64);
        serialize_u128(v: u128);
        serialize_f32(v: f32);
        serialize_f64(v: f64);
        serialize_char(v: char);
        serialize_str(v: &str);
        serialize_bytes(v: &[u8]);
        serialize_none();
        serialize_unit();
        serialize_unit_struct(name: &'static str);
        serialize_unit_variant(name: &'static str, index: u32, variant: &'static str);
    }

    #[inline]
    fn serialize_some<T: ?Sized + Serialize>(self, v: &T) -> Result<S::Ok, S::Error> {
        let v = self.guard(v);
        self.inner.serialize_some(&v)
    }

    #[inline]
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        v: &T,
    ) -> Result<S::Ok, S::Error> {
        let v = self.guard(v);
        self.inner.serialize_newtype_struct(name, &v)
    }

    #[inline]
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<S::Ok, S::Error> {
        let v = self.guard(v);
        self.inner
            .serialize_newtype_variant(name, index, variant, &v)
    }

    #[inline]
    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        let inner = self.inner.serialize_seq(len)?;
        Ok(Compound::new(inner, len, self.verdict))
    }

    #[inline]
    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
        let inner = self.inner.serialize_tuple(len)?;
        Ok(Compound::new(inner, Some(len), self.verdict))
    }

    #[inline]
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        let inner = self.inner.serialize_tuple_struct(name, len)?;
        Ok(Compound::new(inner, Some(len), self.verdict))
    }

    #[inline]
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        let inner = self
            .inner
            .serialize_tuple_variant(name, index, variant, len)?;
        Ok(Compound::new(inner, Some(len), self.verdict))
    }

    #[inline]
    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        let inner = self.inner.serialize_map(len)?;
        Ok(Compound::new(inner, len, self.verdict))
    }

    #[inline]
    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        let inner = self.inner.serialize_struct(name, len)?;
        Ok(Compound::new(inner, Some(len), self.verdict))
    }

    #[inline]
    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        let inner = self
            .inner
            .serialize_struct_variant(name, index, variant, len)?;
        Ok(Compound::new(inner, Some(len), self.verdict))
    }

    #[inline]
    fn collect_str<T: ?Sized + Display>(self, v: &T) -> Result<S::Ok, S::Error> {
        self.inner.collect_str(v)
    }

    #[inline]
    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// A compound state of [`Guarded`]: counts what is written against what was declared.
struct Compound<'a, C> {
    inner: C,
    /// Elements, entries or fields still to come (`None`: undeclared).
    left: Option<usize>,
    verdict: &'a Verdict,
}

impl<'a, C> Compound<'a, C> {
    fn new(inner: C, declared: Option<usize>, verdict: &'a Verdict) -> Self {
        Compound {
            inner,
            left: declared,
            verdict,
        }
    }

    /// Counts one more element, entry or field.
    #[inline]
    fn one_more<E: ser::Error>(&mut self) -> Result<(), E> {
        match &mut self.left {
            Some(0) => Err(refuse(self.verdict, Refusal::WrongLength)),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Checks that everything declared was written.
    #[inline]
    fn complete<E: ser::Error>(&self) -> Result<(), E> {
        match self.left {
            Some(n) if n > 0 => Err(refuse(self.verdict, Refusal::WrongLength)),
            _ => Ok(()),
        }
    }

    fn guard<'b, T: ?Sized>(&self, value: &'b T) -> Guard<'b, T>
    where
        'a: 'b,
    {
        Guard {
            value,
            verdict: self.verdict,
        }
    }
}

/// The element-wise compounds: sequences, tuples, tuple structs and tuple variants.
macro_rules! element_compound {
    ($($trait:ident :: $method:ident;)*) => {
        $(
            impl<C: ser::$trait> ser::$trait for Compound<'_, C> {
                type Ok = C::Ok;
                type Error = C::Error;
                #[inline]
                fn $method<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), C::Error> {
                    self.one_more()?;
                    let v = self.guard(v);
                    self.inner.$method(&v)
                }
                #[inline]
                fn end(self) -> Result<C::Ok, C::Error> {
                    self.complete()?;
                    self.inner.end()
                }
            }
        )*
    };
}

element_compound! {
    SerializeSeq::serialize_element;
    SerializeTuple::serialize_element;
    SerializeTupleStruct::serialize_field;
    SerializeTupleVariant::serialize_field;
}

impl<C: ser::SerializeMap> ser::SerializeMap for Compound<'_, C> {
    type Ok = C::Ok;
    type Error = C::Error;
    #[inline]
    fn serialize_key<T: ?Sized + Serialize>(&mut self, k: &T) -> Result<(), C::Error> {
        self.one_more()?;
        let k = self.guard(k);
        self.inner.serialize_key(&k)
    }
    #[inline]
    fn serialize_value<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), C::Error> {
        let v = self.guard(v);
        self.inner.serialize_value(&v)
    }
    #[inline]
    fn serialize_entry<K: ?Sized + Serialize, T: ?Sized + Serialize>(
        &mut self,
        k: &K,
        v: &T,
    ) -> Result<(), C::Error> {
        self.one_more()?;
        let (k, v) = (self.guard(k), self.guard(v));
        self.inner.serialize_entry(&k, &v)
    }
    #[inline]
    fn end(self) -> Result<C::Ok, C::Error> {
        self.complete()?;
        self.inner.end()
    }
}

/// The field-wise compounds: structs and struct variants.
macro_rules! field_compound {
    ($($trait:ident;)*) => {
        $(
            impl<C: ser::$trait> ser::$trait for Compound<'_, C> {
                type Ok = C::Ok;
                type Error = C::Error;
                #[inline]
                fn serialize_field<T: ?Sized + Serialize>(
                    &mut self,
                    key: &'static str,
                    v: &T,
                ) -> Result<(), C::Error> {
                    self.one_more()?;
                    let v = self.guard(v);
                    self.inner.serialize_field(key, &v)
                }
                fn skip_field(&mut self, _key: &'static str) -> Result<(), C::Error> {
                    Err(refuse(self.verdict, Refusal::SkippedField))
                }
                #[inline]
                fn end(self) -> Result<C::Ok, C::Error> {
                    self.complete()?;
                    self.inner.end()
                }
            }
        )*
    };
}

field_compound! {
    SerializeStruct;
    SerializeStructVariant;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::envelope;
    use crate::codec::{
        decode, encode, envelope_etag, fingerprint, payload_etag, DecodeError, HEADER_LEN,
        WIRE_VERSION,
    };
    use serde::{Deserialize, Serialize};
    use std::collections::HashMap;
    use std::time::Duration;

    const TTL: Duration = Duration::from_secs(60);

    fn round_trip<V>(value: &V) -> (V, PayloadFormat)
    where
        V: Serialize + DeserializeOwned + 'static,
    {
        let fp = fingerprint(std::any::type_name::<V>(), 1);
        let bytes = encode(value, fp, TTL, &[3]).unwrap();
        let d = decode::<V>(&bytes, fp, 1 << 20).unwrap();
        assert_eq!(bytes[3], d.format.flags());
        (d.value, d.format)
    }

    fn bincode_alone<V: Serialize + DeserializeOwned>(value: &V) -> Result<V, String> {
        let bytes = bincode::serde::encode_to_vec(value, bincode::config::standard())
            .map_err(|e| e.to_string())?;
        decode_bincode(&bytes)
    }

    fn is_zero(n: &u32) -> bool {
        *n == 0
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Report {
        #[serde(default, skip_serializing_if = "is_zero")]
        retries: u32,
        errors: Vec<String>,
        code: u32,
    }

    /// Issue 12's probe from outside: bincode alone reads `{0, [""], 9}` back as
    /// `{1, [], 9}`, with no error. Through the envelope it reads back as written.
    #[test]
    fn a_field_skipped_sometimes_never_shifts_into_another() {
        let skipped = Report {
            retries: 0,
            errors: vec![String::new()],
            code: 9,
        };
        let misread = bincode_alone(&skipped).unwrap();
        assert_eq!(
            misread,
            Report {
                retries: 1,
                errors: vec![],
                code: 9
            },
            "the hazard this guards against"
        );
        assert_eq!(
            round_trip(&skipped),
            (skipped.clone(), PayloadFormat::MessagePack)
        );
        let written = Report {
            retries: 2,
            ..skipped.clone()
        };
        assert_eq!(round_trip(&written), (written, PayloadFormat::Bincode));
        // Whatever format a value took, its ETag is the same from a value or an envelope,
        // and its weight is its payload's size.
        let bytes = encode(&skipped, 1, TTL, &[]).unwrap();
        assert_eq!(payload_etag(&skipped), envelope_etag(&bytes));
        assert_eq!(
            crate::codec::encoded_size(&skipped),
            bytes.len() - HEADER_LEN
        );
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Flat {
        id: u64,
        #[serde(flatten)]
        extra: std::collections::BTreeMap<String, u32>,
    }

    #[test]
    fn a_flattened_struct_round_trips() {
        let v = Flat {
            id: 7,
            extra: [("a".to_string(), 1), ("b".to_string(), 2)].into(),
        };
        assert!(bincode_alone(&v).is_err(), "bincode cannot write it");
        assert_eq!(round_trip(&v), (v, PayloadFormat::MessagePack));
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "kind")]
    enum Event {
        Created { id: u64 },
        Deleted { id: u64, reason: String },
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(untagged)]
    enum IdOrName {
        Id(u64),
        Name(String),
    }

    /// Types read with `deserialize_any` are written by bincode but never read back: the
    /// probe sends the first value and every later one to MessagePack.
    #[test]
    fn types_read_with_deserialize_any_round_trip() {
        let events = [
            Event::Created { id: 1 },
            Event::Deleted {
                id: 2,
                reason: "spam".into(),
            },
        ];
        for e in &events {
            assert!(bincode_alone(e).is_err());
            assert_eq!(round_trip(e), (e.clone(), PayloadFormat::MessagePack));
        }
        for v in [IdOrName::Id(5), IdOrName::Name("x".into())] {
            assert_eq!(round_trip(&v), (v, PayloadFormat::MessagePack));
        }
        let json: serde_json::Value =
            serde_json::json!({"a": [1, 2.5, null, "s"], "b": {"c": true}});
        assert_eq!(round_trip(&json), (json, PayloadFormat::MessagePack));
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Asymmetric {
        #[serde(skip_serializing)]
        secret: u8,
        a: Vec<u8>,
        b: u8,
    }

    /// A field written never but read always: bincode alone reads `{_, [0], 5}` back as
    /// `{1, [], 5}` without an error. The probe catches the type on its first value; the
    /// named format then reports the missing field: a miss, never another field's value.
    #[test]
    fn a_field_read_but_never_written_is_a_miss_not_a_shift() {
        let v = Asymmetric {
            secret: 0,
            a: vec![0],
            b: 5,
        };
        assert_eq!(
            bincode_alone(&v).unwrap(),
            Asymmetric {
                secret: 1,
                a: vec![],
                b: 5
            },
            "the hazard this guards against"
        );
        let fp = fingerprint("Asymmetric", 1);
        let bytes = encode(&v, fp, TTL, &[]).unwrap();
        assert_eq!(bytes[3], PayloadFormat::MessagePack.flags());
        let err = decode::<Asymmetric>(&bytes, fp, 1 << 20).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Payload(m) if m.contains("secret")),
            "{err:?}"
        );
    }

    /// A map's iteration order differs between the value and its copy read back: the probe
    /// compares bytes in any order, so such a type keeps bincode.
    #[test]
    fn a_hash_map_keeps_bincode() {
        let map: HashMap<String, u32> = (0..64).map(|i| (format!("k{i}"), i)).collect();
        assert_eq!(round_trip(&map), (map.clone(), PayloadFormat::Bincode));
        assert_eq!(
            type_state::<HashMap<String, u32>>().load(Relaxed),
            BINCODE_READS_BACK
        );
    }

    /// A hand-written `Serialize` whose declared lengths are not what it writes.
    #[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
    enum Liar {
        ShortSeq,
        LongStruct,
        ShortMap,
        Honest,
    }

    impl Serialize for Liar {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use ser::{SerializeMap, SerializeSeq, SerializeStruct};
            match self {
                Liar::ShortSeq => {
                    let mut seq = s.serialize_seq(Some(3))?;
                    seq.serialize_element(&1u8)?;
                    seq.serialize_element(&2u8)?;
                    seq.end()
                }
                Liar::LongStruct => {
                    let mut st = s.serialize_struct("Liar", 1)?;
                    st.serialize_field("a", &1u8)?;
                    st.serialize_field("b", &2u8)?;
                    st.end()
                }
                Liar::ShortMap => {
                    let mut map = s.serialize_map(Some(2))?;
                    map.serialize_entry("a", &1u8)?;
                    map.end()
                }
                Liar::Honest => {
                    let mut seq = s.serialize_seq(Some(2))?;
                    seq.serialize_element(&1u8)?;
                    seq.serialize_element(&2u8)?;
                    seq.end()
                }
            }
        }
    }

    /// Lengths that are not the data's would be written wrong in either format: such a
    /// value is refused (an encode failure), never stored to be misread.
    #[test]
    fn declared_lengths_that_are_not_the_datas_are_refused() {
        for liar in [Liar::ShortSeq, Liar::LongStruct, Liar::ShortMap] {
            let err = encode(&liar, 1, TTL, &[]).unwrap_err();
            assert!(err.contains("declared"), "{liar:?}: {err}");
            assert_eq!(crate::codec::encoded_size(&liar), 0, "{liar:?}");
            assert_eq!(payload_etag(&liar), None, "{liar:?}");
        }
        assert!(encode(&Liar::Honest, 1, TTL, &[]).is_ok());
    }

    #[test]
    fn same_bytes_in_any_order_counts_each_byte() {
        assert!(same_bytes_in_any_order(b"abca", b"caab"));
        assert!(!same_bytes_in_any_order(b"abca", b"abcb"));
        assert!(!same_bytes_in_any_order(b"\x01\x00\x05", b"\x00\x05\x05"));
    }

    /// A MessagePack envelope is validated like any other: its flags bit, a checksum that
    /// covers it, and a payload that is bounded in depth and length claims.
    #[test]
    fn hostile_message_pack_is_rejected_without_harm() {
        // 2^32 - 1 elements claimed by an array of three bytes.
        let huge = envelope(b"\xdd\xff\xff\xff\xff\x01\x02", 1);
        assert!(matches!(
            decode::<Vec<u64>>(&huge, 7, 1 << 20),
            Err(DecodeError::Payload(_))
        ));
        // Nested far deeper than any cached value.
        let deep = envelope(&[0x91; 100_000], 1);
        assert!(matches!(
            decode::<serde_json::Value>(&deep, 7, 1 << 20),
            Err(DecodeError::Payload(_))
        ));
        // Trailing bytes after a complete value.
        let trailing = envelope(b"\x01\x02", 1);
        assert!(matches!(
            decode::<u8>(&trailing, 7, 1 << 20),
            Err(DecodeError::Payload(m)) if m.contains("trailing")
        ));
        assert_eq!(decode::<u8>(&envelope(b"\x01", 1), 7, 16).unwrap().value, 1);
        // A flag this version does not know.
        assert_eq!(
            decode::<u8>(&envelope(b"\x01", 2), 7, 16),
            Err(DecodeError::Version(WIRE_VERSION))
        );
    }
}
