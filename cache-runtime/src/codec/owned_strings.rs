//! The adapter every bincode payload is read through (a serde `Deserializer` over bincode's):
//! owned strings and byte buffers read from the borrowed payload, and the lengths of
//! sequences and maps charged against what the payload can hold.
//!
//! **Owned strings.** bincode 2 reads an owned `String` (`deserialize_string`, what
//! `#[derive(Deserialize)]` asks for every `String` field) into a zero-filled buffer it
//! allocates with `vec![0u8; len]`. Under glibc's allocator a zeroed allocation is `calloc`,
//! which skips the per-thread cache and takes the allocator's slow path: for a value with half
//! a dozen strings, about a tenth of a Redis hit's client instructions (docs/BENCHMARKS.md,
//! twenty-ninth round). The payload is a slice in memory, so this adapter asks bincode for
//! the borrowed `&str` / `&[u8]` instead and hands the visitor an owned copy made with a
//! plain allocation: the visitor still gets `visit_string` / `visit_byte_buf` with the
//! same value, as before (a visitor that only implements those keeps working). A string's
//! length is checked against the bytes left before anything is allocated (bincode's
//! `take_bytes`), so no owned string or buffer is ever allocated from a length prefix alone.
//!
//! **Sequence and map lengths.** bincode's serde decoder hands a visitor the length a
//! sequence or map declares, unchecked (its byte limit is charged per primitive read, never
//! for a length: it cannot stop `Vec<()>` with a length of 2^60 from spinning, and every
//! element paid for the check). Every element of a value bincode wrote takes at least one
//! byte, except the zero-byte ones (`()`, unit structs, `PhantomData`, empty structs and
//! arrays). So the adapter charges each declared length, once, when the sequence or map
//! starts, against a budget of the payload's length plus [`ZERO_BYTE_ELEMENTS`], for the
//! whole decode: a length no payload of this size could hold (alone or added to the others,
//! at any depth) is an error before its visitor sees it. That bounds the elements a decode
//! visits, and so its time and what visitors allocate from the lengths (serde's own
//! preallocate at most 1 MiB per container; a visitor that trusts `size_hint` entirely gets
//! at most the budget), with nothing charged per element.
//!
//! Everything else is passed through unchanged, the adapter re-wrapping every nested
//! deserializer (fields, elements, variants, options) so that strings and lengths at any
//! depth are read this way.

use std::cell::Cell;
use std::fmt;

use serde::de::{
    DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// Elements of zero bytes (`()`, unit structs, `PhantomData`, empty structs) a payload may
/// declare in all its sequences and maps together, beyond one element per payload byte.
/// Visiting this many takes a few milliseconds; a value holding more decodes as an error (a
/// miss).
pub(super) const ZERO_BYTE_ELEMENTS: usize = 1 << 20;

thread_local! {
    /// The sequence and map elements the decode running on this thread may still declare
    /// (see the module docs). A thread-local rather than a field of every wrapper: carried
    /// through the wrappers, its pointer cost two instructions per element of a `Vec<u8>`
    /// (the element loop kept one more value in memory).
    static LEFT: Cell<usize> = const { Cell::new(0) };
}

/// Runs `decode` (a decode through [`OwnedFromBorrowed`]) with the budget of a payload of
/// `payload_len` bytes, then puts back the budget it found: a `Deserialize` that decodes
/// another payload inside its own (on this thread) leaves the outer one's as it was, and so
/// does a decode that panics.
pub(super) fn with_budget<R>(payload_len: usize, decode: impl FnOnce() -> R) -> R {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            LEFT.with(|left| left.set(self.0));
        }
    }
    let budget = payload_len.saturating_add(ZERO_BYTE_ELEMENTS);
    let _restore = Restore(LEFT.with(|left| left.replace(budget)));
    decode()
}

/// Takes `declared` elements from this thread's budget, or fails if it holds fewer.
#[inline]
fn charge<E: serde::de::Error>(declared: Option<usize>) -> Result<(), E> {
    // bincode always declares a length (a length-less sequence would have none to charge).
    let declared = declared.unwrap_or(0);
    LEFT.with(|left| match left.get().checked_sub(declared) {
        Some(rest) => {
            left.set(rest);
            Ok(())
        }
        None => Err(E::custom(format_args!(
            "a sequence or map of {declared} elements: more than the payload can hold"
        ))),
    })
}

/// Deserializes a `T` through [`Reroute`]: the seed bincode's `seed_decode_from_slice` takes
/// (inside [`with_budget`]).
pub(super) struct OwnedFromBorrowed<T>(pub(super) std::marker::PhantomData<T>);

impl<'de, T: serde::Deserialize<'de>> DeserializeSeed<'de> for OwnedFromBorrowed<T> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        T::deserialize(Reroute(d))
    }
}

/// The adapter: `deserialize_string` / `deserialize_byte_buf` become their borrowed forms,
/// and `deserialize_seq` / `deserialize_map` charge their length to the budget ([`charge`]).
struct Reroute<D>(D);

/// A visitor passed through, its nested accessors wrapped; with `CHARGE`, the length of the
/// sequence or map it is given is charged first (the visitor of a `deserialize_seq` or
/// `deserialize_map`, whose length the input declares; a tuple's or a struct's is the type's).
struct Wrap<V, const CHARGE: bool>(V);

/// [`Wrap`] without a charge.
#[inline]
fn wrap<V>(inner: V) -> Wrap<V, false> {
    Wrap(inner)
}

/// A seed passed through, the deserializer it is given wrapped.
struct Seed<S>(S);

/// The visitor of a rerouted `deserialize_string` / `deserialize_byte_buf`: it turns the
/// borrowed data bincode now answers with into the owned form that was asked for.
struct Owned<V>(V);

macro_rules! forward_deserialize {
    ($($method:ident),* $(,)?) => {$(
        #[inline]
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.0.$method(wrap(visitor))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Reroute<D> {
    type Error = D::Error;

    forward_deserialize!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_bytes,
        deserialize_option,
        deserialize_unit,
        deserialize_identifier,
        deserialize_ignored_any,
    );

    #[inline]
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_seq(Wrap::<V, true>(visitor))
    }

    #[inline]
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(Wrap::<V, true>(visitor))
    }

    #[inline]
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_str(Owned(visitor))
    }

    #[inline]
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_bytes(Owned(visitor))
    }

    #[inline]
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_unit_struct(name, wrap(visitor))
    }

    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_newtype_struct(name, wrap(visitor))
    }

    #[inline]
    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple(len, wrap(visitor))
    }

    #[inline]
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple_struct(name, len, wrap(visitor))
    }

    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_struct(name, fields, wrap(visitor))
    }

    #[inline]
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_enum(name, variants, wrap(visitor))
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        #[inline]
        fn $method<E: serde::de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.0.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>, const CHARGE: bool> Visitor<'de> for Wrap<V, CHARGE> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    forward_visit!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_f64(f64),
        visit_char(char),
        visit_str(&str),
        visit_borrowed_str(&'de str),
        visit_string(String),
        visit_bytes(&[u8]),
        visit_borrowed_bytes(&'de [u8]),
        visit_byte_buf(Vec<u8>),
    );

    #[inline]
    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        self.0.visit_none()
    }

    #[inline]
    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        self.0.visit_unit()
    }

    #[inline]
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.visit_some(Reroute(d))
    }

    #[inline]
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.visit_newtype_struct(Reroute(d))
    }

    #[inline]
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        if CHARGE {
            charge(seq.size_hint())?;
        }
        self.0.visit_seq(wrap(seq))
    }

    #[inline]
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        if CHARGE {
            charge(map.size_hint())?;
        }
        self.0.visit_map(wrap(map))
    }

    #[inline]
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.0.visit_enum(wrap(data))
    }
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Owned<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        self.0.visit_string(v.to_owned())
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.0.visit_string(v.to_owned())
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
        self.0.visit_string(v)
    }

    fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
        self.0.visit_byte_buf(v.to_vec())
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        self.0.visit_byte_buf(v.to_vec())
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
        self.0.visit_byte_buf(v)
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<S> {
    type Value = S::Value;
    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(Reroute(d))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Wrap<A, false> {
    type Error = A::Error;
    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(Seed(seed))
    }
    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Wrap<A, false> {
    type Error = A::Error;
    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(Seed(seed))
    }
    #[inline]
    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.0.next_value_seed(Seed(seed))
    }
    #[inline]
    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Wrap<A, false> {
    type Error = A::Error;
    type Variant = Wrap<A::Variant, false>;
    #[inline]
    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        self.0
            .variant_seed(Seed(seed))
            .map(|(value, variant)| (value, wrap(variant)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Wrap<A, false> {
    type Error = A::Error;
    #[inline]
    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }
    #[inline]
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.0.newtype_variant_seed(Seed(seed))
    }
    #[inline]
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, wrap(visitor))
    }
    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.0.struct_variant(fields, wrap(visitor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Kind {
        Unit,
        Named(String),
        Pair(String, #[serde(with = "serde_bytes_like")] Vec<u8>),
        Record { label: String, tags: Vec<String> },
    }

    /// `Vec<u8>` through `deserialize_byte_buf` / `serialize_bytes`, as `serde_bytes` does.
    mod serde_bytes_like {
        use serde::{Deserializer, Serializer};
        pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Vec<u8>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                // Only the owned form, as some hand-written visitors do.
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                    Ok(v)
                }
            }
            d.deserialize_byte_buf(V)
        }
    }

    /// A string read only through `visit_string`, as some hand-written visitors do.
    #[derive(Debug, PartialEq, Serialize)]
    struct OnlyOwned(String);

    impl<'de> Deserialize<'de> for OnlyOwned {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            // The misuse clippy warns of is what this test is about.
            #[allow(clippy::serde_api_misuse)]
            impl serde::de::Visitor<'_> for V {
                type Value = OnlyOwned;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a string")
                }
                fn visit_string<E: serde::de::Error>(self, v: String) -> Result<OnlyOwned, E> {
                    Ok(OnlyOwned(v))
                }
            }
            d.deserialize_string(V)
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Everything {
        id: u64,
        name: String,
        nick: Option<String>,
        kinds: Vec<Kind>,
        by_name: BTreeMap<String, (String, u8)>,
        owned: OnlyOwned,
        wrapped: Box<str>,
        ratio: f64,
        letter: char,
        unit: (),
    }

    fn sample() -> Everything {
        Everything {
            id: 7,
            name: "Ada Lovelace".into(),
            nick: Some("ada".into()),
            kinds: vec![
                Kind::Unit,
                Kind::Named("x".into()),
                Kind::Pair("y".into(), vec![0, 1, 255]),
                Kind::Record {
                    label: "z".into(),
                    tags: vec!["a".into(), String::new(), "é".into()],
                },
            ],
            by_name: BTreeMap::from([("k".into(), ("v".into(), 3))]),
            owned: OnlyOwned("owned".into()),
            wrapped: "boxed".into(),
            ratio: 0.5,
            letter: 'λ',
            unit: (),
        }
    }

    fn decode<T: for<'de> Deserialize<'de>>(
        bytes: &[u8],
    ) -> Result<T, bincode::error::DecodeError> {
        with_budget(bytes.len(), || {
            bincode::serde::seed_decode_from_slice(
                OwnedFromBorrowed::<T>(std::marker::PhantomData),
                bytes,
                bincode::config::standard(),
            )
            .map(|(v, _)| v)
        })
    }

    #[test]
    fn every_shape_reads_back_as_bincode_reads_it() {
        let bytes = bincode::serde::encode_to_vec(sample(), bincode::config::standard()).unwrap();
        let plain: Everything =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard())
                .unwrap()
                .0;
        assert_eq!(plain, sample());
        assert_eq!(decode::<Everything>(&bytes).unwrap(), sample());
    }

    #[test]
    fn invalid_utf8_is_still_an_error() {
        let bytes =
            bincode::serde::encode_to_vec((2u8, [0xffu8, 0xfe]), bincode::config::standard())
                .unwrap();
        assert!(decode::<String>(&bytes).is_err());
        assert!(decode::<OnlyOwned>(&bytes).is_err());
    }
}
