//! Property tests: distinct argument tuples never map to the same key, for arbitrary strings
//! (separators, `<`, `%`, unicode, newlines, empty), options and sequences, and an
//! interpolated value never contains a separator (so a template stays unambiguous).

use cache_runtime::key::{KeyPart, KeyWriter, SEPARATORS};
use proptest::prelude::*;

/// What a template like `"user:<a>:<b>"` produces.
fn template(a: &impl KeyPart, b: &impl KeyPart) -> String {
    let mut w = KeyWriter::with_head("p:w1:v1:");
    w.literal("user:");
    a.write_key(&mut w);
    w.literal(":");
    b.write_key(&mut w);
    w.finish()
}

fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[:%<>/|,;#=&@!?.\\[\\]+*{}\\n\\r\\t ]{0,6}",
        "\\PC{0,12}",
        ".{0,12}",
    ]
}

fn enc<T: KeyPart + ?Sized>(v: &T) -> String {
    let mut w = KeyWriter::with_head("");
    v.write_key(&mut w);
    w.finish()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn distinct_string_pairs_give_distinct_keys(a1 in nasty(), b1 in nasty(), a2 in nasty(), b2 in nasty()) {
        prop_assume!((&a1, &b1) != (&a2, &b2));
        prop_assert_ne!(template(&a1, &b1), template(&a2, &b2));
    }

    #[test]
    fn equal_arguments_give_equal_keys(a in nasty(), b in nasty()) {
        prop_assert_eq!(template(&a, &b), template(&a.clone(), &b.clone()));
    }

    #[test]
    fn values_never_contain_a_separator(
        s in nasty(),
        o in proptest::option::of(nasty()),
        v in proptest::collection::vec(nasty(), 0..4),
    ) {
        for encoded in [enc(&s), enc(&o), enc(&v)] {
            prop_assert!(!encoded.contains(SEPARATORS), "{}", encoded);
        }
    }

    #[test]
    fn options_and_sequences_are_injective(
        x in proptest::option::of(proptest::option::of(nasty())),
        y in proptest::option::of(proptest::option::of(nasty())),
        v in proptest::collection::vec(proptest::collection::vec(nasty(), 0..3), 0..3),
        w in proptest::collection::vec(proptest::collection::vec(nasty(), 0..3), 0..3),
    ) {
        if x != y {
            prop_assert_ne!(enc(&x), enc(&y));
        }
        if v != w {
            prop_assert_ne!(enc(&v), enc(&w));
        }
    }

    #[test]
    fn integers_and_strings_mixed(a in any::<i64>(), b in nasty(), c in any::<i64>(), d in nasty()) {
        prop_assume!((a, &b) != (c, &d));
        prop_assert_ne!(template(&a, &b), template(&c, &d));
    }
}
