//! Compile-fail and pass cases for `#[cached]`. Regenerate the `.stderr` files with
//! `TRYBUILD=overwrite cargo test -p cache-tests --test ui`, then read them.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
