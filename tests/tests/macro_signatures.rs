//! The trybuild pass cases of the signatures a codebase has (generic impls, attributes,
//! `mut` parameters, skipped `&mut` handles, receivers by value (`self: Arc<Self>`, `self`), functions a `macro_rules!` writes, associated functions, aliased `Result` / `Option` returns, borrowed errors and `&'static` values, raw identifiers, `crate = "..."`, trait impls, and the
//! signatures of real codebases: services over pools, newtype ids, nested modules),
//! also built as an integration test of this crate: so they run here, and
//! `cargo clippy --workspace --all-targets -- -D warnings` lints their expansion as a user
//! crate's code.
// Each fixture includes `support/runs.rs` for a body count of its own (trybuild compiles
// each alone, so they cannot share one module).
#![allow(clippy::duplicate_mod)]

#[path = "ui/pass/aliased_returns.rs"]
mod aliased_returns;
#[path = "ui/pass/associated_fns.rs"]
mod associated_fns;
#[path = "ui/pass/attributes.rs"]
mod attributes;
#[path = "ui/pass/borrowed_parts.rs"]
mod borrowed_parts;
#[path = "ui/pass/cfg_params.rs"]
mod cfg_params;
#[path = "ui/pass/crate_path.rs"]
mod crate_path;
#[path = "ui/pass/generic_impls.rs"]
mod generic_impls;
#[path = "ui/pass/macro_rules_items.rs"]
mod macro_rules_items;
#[path = "ui/pass/mut_handles.rs"]
mod mut_handles;
#[path = "ui/pass/mut_params.rs"]
mod mut_params;
#[path = "ui/pass/owned_receivers.rs"]
mod owned_receivers;
#[path = "ui/pass/raw_idents.rs"]
mod raw_idents;
#[path = "ui/pass/real_codebases.rs"]
mod real_codebases;
#[path = "ui/pass/trait_impls.rs"]
mod trait_impls;

#[test]
fn aliased_result_and_option_returns() {
    aliased_returns::main();
}

#[test]
fn borrowed_errors_static_values_and_companion_names() {
    borrowed_parts::main();
}

#[test]
fn associated_functions() {
    associated_fns::main();
}

#[test]
fn attributes_forwarded() {
    attributes::main();
}

#[test]
fn cfg_on_parameters() {
    cfg_params::main();
}

#[test]
fn crate_path_option() {
    crate_path::main();
}

#[test]
fn generic_impls_and_functions() {
    generic_impls::main();
}

#[test]
fn functions_written_by_macro_rules() {
    macro_rules_items::main();
}

#[test]
fn skipped_mut_handles() {
    mut_handles::main();
}

#[test]
fn mut_parameters() {
    mut_params::main();
}

#[test]
fn owned_receivers() {
    owned_receivers::main();
}

#[test]
fn raw_identifiers() {
    raw_idents::main();
}

#[test]
fn signatures_of_real_codebases() {
    real_codebases::main();
}

#[test]
fn trait_impl_methods() {
    trait_impls::main();
}
