//! Owned strings and byte buffers read from the borrowed payload (a serde `Deserializer`
//! adapter over bincode's).
//!
//! bincode 2 reads an owned `String` (`deserialize_string`, what `#[derive(Deserialize)]`
//! asks for every `String` field) into a zero-filled buffer it allocates with
//! `vec![0u8; len]`. Under glibc's allocator a zeroed allocation is `calloc`, which skips the
//! per-thread cache and takes the allocator's slow path: for a value with half a dozen
//! strings, about a tenth of a Redis hit's client instructions (docs/BENCHMARKS.md,
//! twenty-ninth round). The payload is a slice in memory, so this adapter asks bincode for
//! the borrowed `&str` / `&[u8]` instead and hands the visitor an owned copy made with a
//! plain allocation: the visitor still gets `visit_string` / `visit_byte_buf` with the
//! same value, as before (a visitor that only implements those keeps working). Everything
//! else is passed through unchanged, the adapter re-wrapping every nested deserializer
//! (fields, elements, variants, options) so that strings at any depth are read this way.

use std::fmt;

use serde::de::{
    DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// Deserializes a `T` through [`Reroute`]: the seed bincode's `seed_decode_from_slice` takes.
pub(super) struct OwnedFromBorrowed<T>(pub(super) std::marker::PhantomData<T>);

impl<'de, T: serde::Deserialize<'de>> DeserializeSeed<'de> for OwnedFromBorrowed<T> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        T::deserialize(Reroute(d))
    }
}

/// The adapter: `deserialize_string` / `deserialize_byte_buf` become their borrowed forms.
struct Reroute<D>(D);

/// A visitor passed through, its nested accessors wrapped.
struct Wrap<V>(V);

/// A seed passed through, the deserializer it is given wrapped.
struct Seed<S>(S);

/// The visitor of a rerouted `deserialize_string` / `deserialize_byte_buf`: it turns the
/// borrowed data bincode now answers with into the owned form that was asked for.
struct Owned<V>(V);

macro_rules! forward_deserialize {
    ($($method:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.0.$method(Wrap(visitor))
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
        deserialize_seq,
        deserialize_map,
        deserialize_identifier,
        deserialize_ignored_any,
    );

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_str(Owned(visitor))
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_bytes(Owned(visitor))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_unit_struct(name, Wrap(visitor))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_newtype_struct(name, Wrap(visitor))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple(len, Wrap(visitor))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple_struct(name, len, Wrap(visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_struct(name, fields, Wrap(visitor))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_enum(name, variants, Wrap(visitor))
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        fn $method<E: serde::de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.0.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
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

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        self.0.visit_none()
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        self.0.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.visit_some(Reroute(d))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.visit_newtype_struct(Reroute(d))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.0.visit_seq(Wrap(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.0.visit_map(Wrap(map))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.0.visit_enum(Wrap(data))
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
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(Reroute(d))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Wrap<A> {
    type Error = A::Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(Seed(seed))
    }
    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Wrap<A> {
    type Error = A::Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(Seed(seed))
    }
    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.0.next_value_seed(Seed(seed))
    }
    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Wrap<A> {
    type Error = A::Error;
    type Variant = Wrap<A::Variant>;
    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        self.0
            .variant_seed(Seed(seed))
            .map(|(value, variant)| (value, Wrap(variant)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Wrap<A> {
    type Error = A::Error;
    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.0.newtype_variant_seed(Seed(seed))
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, Wrap(visitor))
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.0.struct_variant(fields, Wrap(visitor))
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
        bincode::serde::seed_decode_from_slice(
            OwnedFromBorrowed::<T>(std::marker::PhantomData),
            bytes,
            bincode::config::standard(),
        )
        .map(|(v, _)| v)
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
