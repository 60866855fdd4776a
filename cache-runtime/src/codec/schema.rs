//! A value type's schema hash: the shape its `Deserialize` asks for, so that a type changed
//! without a `version` bump (fields reordered, added, removed, renamed or retyped, variants
//! changed) gets another type fingerprint, and its old bytes are a counted miss instead of
//! being read into the new fields by position.
//!
//! The shape is traced by driving the type's `Deserialize` with a deserializer that answers
//! every request with a simple value of the kind asked for (1, 16 zero bytes, a string that
//! timestamps, dates and times parse, one element per sequence and map, the first variant of
//! an enum, then the second, ...) and records what was asked: struct, enum and variant names,
//! field names in order, the kind of every primitive. It depends on the type only, never on a
//! value, so every process of one build gets the same hash. Where a `Deserialize` still
//! refuses the simple value, panics on it, or reads with `deserialize_any`, the pass stops
//! there and the hash covers what was asked before: always at least the top-level names.

use std::any::TypeId;

use serde::de::value::{Error, U32Deserializer};
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

use super::{fnv1a, TypeMemo};

/// How deep the trace follows nested values: deep enough for any type's own fields, and the
/// end of a recursive type (`Option<Box<Self>>`, `Vec<Self>`), which is traced this far.
const MAX_DEPTH: usize = 12;
/// Requests traced per pass, whatever the type.
const MAX_STEPS: usize = 4096;
/// Passes over the type: pass `k` takes variant `k` of every enum (modulo its count), so the
/// payloads of the first eight variants are traced.
const PASSES: u32 = 8;

/// The schema hash of `V` (see the module docs): stable for one definition of the type,
/// different when its shape changes.
///
/// ```
/// #[derive(serde::Deserialize)]
/// struct V1 { id: u64, name: String }
/// #[derive(serde::Deserialize)]
/// struct V2 { name: String, id: u64 }
/// use cache_runtime::codec::schema_hash;
/// assert_eq!(schema_hash::<V1>(), schema_hash::<V1>());
/// assert_ne!(schema_hash::<V1>(), schema_hash::<V2>());
/// ```
pub fn schema_hash<V: DeserializeOwned>() -> u64 {
    let mut trace = Trace {
        bytes: Vec::with_capacity(256),
        depth: 0,
        steps: 0,
        pass: 0,
    };
    for pass in 0..PASSES {
        trace.pass = pass;
        trace.depth = 0;
        trace.steps = 0;
        trace.bytes.push(0xfe); // pass separator
                                // An error only ends the pass: what was recorded before it is the shape. So does a
                                // panic in a hand-written `Deserialize` given a value it did not expect: building a
                                // cache must not fail on it.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = V::deserialize(Tracer(&mut trace));
        }));
    }
    fnv1a(trace.bytes.iter().copied())
}

/// [`schema_hash`], traced once per type in the process: every cache of a type built after
/// the first takes the hash from the memo (and a `Deserialize` that panics under the trace
/// prints its message once, not once per cache).
pub(crate) fn schema_hash_memoized<V: DeserializeOwned + 'static>() -> u64 {
    static HASHES: TypeMemo<u64> = TypeMemo::new();
    // Traced outside the memo's lock: a `Deserialize` may itself build a cache of another type.
    HASHES.get_or(TypeId::of::<V>(), schema_hash::<V>)
}

/// What the passes recorded so far.
struct Trace {
    bytes: Vec<u8>,
    depth: usize,
    steps: usize,
    pass: u32,
}

impl Trace {
    fn record(&mut self, kind: u8, names: &[&str]) -> Result<(), Error> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Err(de::Error::custom("schema trace step limit"));
        }
        self.bytes.push(kind);
        for name in names {
            self.bytes.extend_from_slice(name.as_bytes());
            self.bytes.push(0xff);
        }
        self.bytes.push(0xfd);
        Ok(())
    }

    /// How many elements a sequence or map of unknown length gets: one, to trace the
    /// element's shape, until the depth limit ends a recursive type.
    fn one_below(&self) -> usize {
        usize::from(self.depth < MAX_DEPTH)
    }
}

/// The string given to a visitor that expects `expecting`: one that common validating types
/// accept (a timestamp, a date, a time; a `String` takes anything), so that the trace goes on
/// past them.
fn simple_str(expecting: &str) -> &'static str {
    let e = expecting.to_ascii_lowercase();
    match (e.contains("date"), e.contains("time")) {
        (true, false) => "1970-01-01",
        (false, true) => "00:00:00",
        (true, true) if !e.contains("rfc") => "1970-01-01T00:00:00",
        _ => "1970-01-01T00:00:00Z",
    }
}

/// A visitor's `expecting`, as text.
struct Expecting<'v, V>(&'v V);

impl<'de, V: Visitor<'de>> std::fmt::Display for Expecting<'_, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.expecting(f)
    }
}

/// Answers a `Deserialize` with a simple value of the kind it asks for.
struct Tracer<'t>(&'t mut Trace);

macro_rules! simple {
    ($($method:ident => $kind:literal, $visit:ident($($value:expr)?);)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                self.0.record($kind, &[])?;
                visitor.$visit($($value)?)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Tracer<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
        self.0.record(b'?', &[])?;
        Err(de::Error::custom("deserialize_any: the shape ends here"))
    }

    simple! {
        deserialize_bool => b'b', visit_bool(false);
        deserialize_i8 => 1, visit_i8(1);
        deserialize_i16 => 2, visit_i16(1);
        deserialize_i32 => 3, visit_i32(1);
        deserialize_i64 => 4, visit_i64(1);
        deserialize_i128 => 5, visit_i128(1);
        deserialize_u8 => 6, visit_u8(1);
        deserialize_u16 => 7, visit_u16(1);
        deserialize_u32 => 8, visit_u32(1);
        deserialize_u64 => 9, visit_u64(1);
        deserialize_u128 => 10, visit_u128(1);
        deserialize_f32 => 11, visit_f32(1.0);
        deserialize_f64 => 12, visit_f64(1.0);
        deserialize_char => b'c', visit_char('a');
        deserialize_bytes => b'y', visit_bytes(&[0; 16]);
        deserialize_byte_buf => b'y', visit_bytes(&[0; 16]);
        deserialize_unit => b'u', visit_unit();
        deserialize_identifier => b'i', visit_u32(1);
        deserialize_ignored_any => b'_', visit_unit();
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.0.record(b's', &[])?;
        let expecting = Expecting(&visitor).to_string();
        visitor.visit_str(simple_str(&expecting))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.0.record(b'o', &[])?;
        if self.0.one_below() == 0 {
            return visitor.visit_none();
        }
        self.0.depth += 1;
        let r = visitor.visit_some(Tracer(&mut *self.0));
        self.0.depth -= 1;
        r
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.0.record(b'U', &[name])?;
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.0.record(b'N', &[name])?;
        self.0.depth += 1;
        let r = visitor.visit_newtype_struct(Tracer(&mut *self.0));
        self.0.depth -= 1;
        r
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.0.record(b'[', &[])?;
        let left = self.0.one_below();
        Elements::visit(self.0, left, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.0.record(b'(', &[&len.to_string()])?;
        Elements::visit(self.0, len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.0.record(b'T', &[name, &len.to_string()])?;
        Elements::visit(self.0, len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.0.record(b'{', &[])?;
        let left = self.0.one_below();
        self.0.depth += 1;
        let r = visitor.visit_map(Entries {
            trace: &mut *self.0,
            left,
            value_next: false,
        });
        self.0.depth -= 1;
        r
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.0.record(b'S', &[name])?;
        self.0.record(b'F', fields)?;
        Elements::visit(self.0, fields.len(), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.0.record(b'E', &[name])?;
        self.0.record(b'V', variants)?;
        if variants.is_empty() {
            return Err(de::Error::custom("an enum without variants"));
        }
        let chosen = self.0.pass % variants.len() as u32;
        self.0.depth += 1;
        let r = visitor.visit_enum(Variant {
            trace: &mut *self.0,
            index: chosen,
        });
        self.0.depth -= 1;
        r
    }

    fn is_human_readable(&self) -> bool {
        // As bincode and MessagePack: the binary forms are what is stored.
        false
    }
}

/// The elements of a sequence, tuple or struct.
struct Elements<'t> {
    trace: &'t mut Trace,
    left: usize,
}

impl<'t> Elements<'t> {
    fn visit<'de, V: Visitor<'de>>(
        trace: &'t mut Trace,
        left: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        trace.depth += 1;
        let r = visitor.visit_seq(Elements {
            trace: &mut *trace,
            left,
        });
        trace.depth -= 1;
        r
    }
}

impl<'de> SeqAccess<'de> for Elements<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(Tracer(&mut *self.trace)).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// The entries of a map.
struct Entries<'t> {
    trace: &'t mut Trace,
    left: usize,
    value_next: bool,
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        self.value_next = true;
        seed.deserialize(Tracer(&mut *self.trace)).map(Some)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Error> {
        if !std::mem::take(&mut self.value_next) {
            return Err(de::Error::custom("a map value without its key"));
        }
        seed.deserialize(Tracer(&mut *self.trace))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// The variant a pass takes of an enum.
struct Variant<'t> {
    trace: &'t mut Trace,
    index: u32,
}

impl<'de, 't> EnumAccess<'de> for Variant<'t> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self), Error> {
        let index: U32Deserializer<Error> = self.index.into_deserializer();
        Ok((seed.deserialize(index)?, self))
    }
}

impl<'de> VariantAccess<'de> for Variant<'_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        self.trace.record(b'u', &[])
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        self.trace.record(b'n', &[])?;
        seed.deserialize(Tracer(self.trace))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.trace.record(b't', &[&len.to_string()])?;
        Elements::visit(self.trace, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.trace.record(b'F', fields)?;
        Elements::visit(self.trace, fields.len(), visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::HashMap;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Profile {
        id: u64,
        name: String,
        tags: Vec<String>,
    }

    mod reordered {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        pub struct Profile {
            pub name: String,
            pub id: u64,
            pub tags: Vec<String>,
        }
    }

    mod retyped {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        pub struct Profile {
            pub id: i64,
            pub name: String,
            pub tags: Vec<String>,
        }
    }

    mod grown {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        pub struct Profile {
            pub id: u64,
            pub name: String,
            pub tags: Vec<String>,
            #[serde(default)]
            pub email: Option<String>,
        }
    }

    mod renamed {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        pub struct Profile {
            pub id: u64,
            #[serde(rename = "display_name")]
            pub name: String,
            pub tags: Vec<String>,
        }
    }

    /// Every change that would make old bytes read into the wrong fields changes the hash.
    #[test]
    fn a_changed_shape_changes_the_hash() {
        let base = schema_hash::<Profile>();
        assert_eq!(base, schema_hash::<Profile>(), "stable");
        assert_ne!(base, schema_hash::<reordered::Profile>(), "reordered");
        assert_ne!(base, schema_hash::<retyped::Profile>(), "retyped");
        assert_ne!(base, schema_hash::<grown::Profile>(), "grown");
        assert_ne!(base, schema_hash::<renamed::Profile>(), "renamed");
        assert_ne!(schema_hash::<Vec<u32>>(), schema_hash::<Vec<i32>>());
        assert_ne!(
            schema_hash::<HashMap<String, u32>>(),
            schema_hash::<HashMap<String, u64>>()
        );
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Shape {
        Dot,
        Circle(f64),
        Rect { w: f64, h: f64 },
    }

    mod shape_changed {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        pub enum Shape {
            Dot,
            Circle(f64),
            Rect { w: f64, h: f32 },
        }
    }

    /// A later variant's payload is traced too, not only the first variant's.
    #[test]
    fn every_variant_is_traced() {
        assert_ne!(
            schema_hash::<Shape>(),
            schema_hash::<shape_changed::Shape>()
        );
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Node {
        value: u32,
        next: Option<Box<Node>>,
        children: Vec<Node>,
        index: HashMap<String, Node>,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    enum Tree {
        Node(Box<Tree>, Box<Tree>),
        Leaf(u8),
    }

    /// Recursive types end (depth and step limits), with a stable hash.
    #[test]
    fn recursive_types_end() {
        assert_eq!(schema_hash::<Node>(), schema_hash::<Node>());
        assert_eq!(schema_hash::<Tree>(), schema_hash::<Tree>());
    }

    /// A `Deserialize` that refuses the simple value stops the trace there; the names
    /// recorded before still tell two shapes apart.
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Checked {
        id: u64,
        #[serde(deserialize_with = "refuse")]
        code: u32,
    }

    mod checked_reordered {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        pub struct Checked {
            #[serde(deserialize_with = "super::refuse")]
            pub code: u32,
            pub id: u64,
        }
    }

    fn refuse<'de, D: de::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        let n = u32::deserialize(d)?;
        Err(de::Error::custom(format!("{n} is not a valid code")))
    }

    /// A hand-written `Deserialize` that panics on a value it did not expect.
    struct Panicky;

    impl<'de> Deserialize<'de> for Panicky {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let n = u64::deserialize(d)?;
            assert!(n > 0, "expected a positive id");
            Ok(Panicky)
        }
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Event {
        id: uuid::Uuid,
        at: chrono::DateTime<chrono::Utc>,
        day: chrono::NaiveDate,
        local: chrono::NaiveDateTime,
        count: std::num::NonZeroU64,
        detail: Detail,
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Detail {
        code: u32,
        note: String,
    }

    mod detail_reordered {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        pub struct Event {
            pub id: uuid::Uuid,
            pub at: chrono::DateTime<chrono::Utc>,
            pub day: chrono::NaiveDate,
            pub local: chrono::NaiveDateTime,
            pub count: std::num::NonZeroU64,
            pub detail: Detail,
        }

        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        pub struct Detail {
            pub note: String,
            pub code: u32,
        }
    }

    /// Validating types (a UUID's 16 bytes, timestamps, dates, non-zero numbers) accept the
    /// tracer's values: a change nested after them is still seen.
    #[test]
    fn the_trace_goes_past_common_validating_types() {
        assert_ne!(
            schema_hash::<Event>(),
            schema_hash::<detail_reordered::Event>()
        );
    }

    #[test]
    fn a_panicking_deserialize_ends_the_trace_not_the_cache() {
        assert_eq!(schema_hash::<Panicky>(), schema_hash::<Panicky>());
        assert_ne!(schema_hash::<Panicky>(), schema_hash::<u32>());
    }

    #[test]
    fn a_refusing_field_ends_the_trace_not_the_hash() {
        assert_eq!(schema_hash::<Checked>(), schema_hash::<Checked>());
        assert_ne!(
            schema_hash::<Checked>(),
            schema_hash::<checked_reordered::Checked>()
        );
        // deserialize_any: the shape ends at once, the hash is still the type's own.
        assert_ne!(
            schema_hash::<serde_json::Value>(),
            schema_hash::<Vec<serde_json::Value>>()
        );
    }

    /// Counts how often its `Deserialize` runs.
    struct Counted;

    static COUNTED_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    impl<'de> Deserialize<'de> for Counted {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            COUNTED_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            u64::deserialize(d).map(|_| Counted)
        }
    }

    #[test]
    fn the_memo_traces_a_type_once_and_agrees_with_the_trace() {
        use std::sync::atomic::Ordering::SeqCst;
        let first = schema_hash_memoized::<Counted>();
        let runs = COUNTED_RUNS.load(SeqCst);
        assert_eq!(runs as u32, PASSES, "one trace of every pass");
        for _ in 0..3 {
            assert_eq!(schema_hash_memoized::<Counted>(), first);
        }
        assert_eq!(
            COUNTED_RUNS.load(SeqCst),
            runs,
            "later caches of the type do not trace"
        );
        assert_eq!(
            first,
            schema_hash::<Counted>(),
            "the memo holds the trace's hash"
        );
        assert_eq!(
            schema_hash_memoized::<Profile>(),
            schema_hash::<Profile>(),
            "each type its own"
        );
        assert_ne!(schema_hash_memoized::<Profile>(), first);
    }
}
