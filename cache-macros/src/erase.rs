//! Type and const parameters that only skipped parameters have.
//!
//! `fn load<E: Executor>(ex: E, id: u64)` with `skip(ex)`: the executor does not affect the
//! result, and neither does its type. So `E` does not tell entries apart: every
//! instantiation shares one instance (`__private::Slot::erasing`), and the companions, which
//! do not take `ex`, do not have `E` either (`invalidate_load(id)`, no turbofish). A type
//! parameter that no parameter has (`fn count<T: Table>(pool: &Pool)`, chosen by turbofish)
//! still splits the cache: it may change the result.

use std::collections::BTreeSet;

use proc_macro2::Ident;
use syn::visit::Visit;
use syn::{GenericParam, Generics, Type, TypeParamBound, WherePredicate};

/// What [`erasure`] found.
pub struct Erasure {
    /// Bit `i`: the `i`-th type or const parameter (lifetimes not counted; `impl Trait`
    /// parameters after the named ones) is erased; see `__private::Slot::erasing`.
    pub mask: u64,
    /// The function's generics without the erased parameters and the `where` predicates on
    /// them: the companions' generics.
    pub kept: Generics,
}

/// The parameters of `generics` that the skipped parameter types mention and the kept ones
/// (key parameters, return type) do not, closed over their bounds.
pub fn erasure(generics: &Generics, skipped: &[&Type], kept: &[&Type]) -> Erasure {
    // Type and const parameters, in order: their positions in the closure's type name.
    let names: Vec<&Ident> = generics
        .params
        .iter()
        .filter_map(|p| match p {
            GenericParam::Type(t) => Some(&t.ident),
            GenericParam::Const(c) => Some(&c.ident),
            GenericParam::Lifetime(_) => None,
        })
        .take(64)
        .collect();
    let in_types = |tys: &[&Type]| -> BTreeSet<usize> {
        let mut m = Mentions::new(&names);
        tys.iter().for_each(|t| m.visit_type(t));
        m.found
    };
    let identity = in_types(kept);
    // Bounds, by the parameters their bounded type mentions: `E: Executor<Database = DB>`.
    let bounds: Vec<(BTreeSet<usize>, BTreeSet<usize>)> = bound_list(generics)
        .into_iter()
        .map(|(bounded, bounds)| {
            let mut on = Mentions::new(&names);
            on.visit_type(&bounded);
            let mut m = Mentions::new(&names);
            bounds.iter().for_each(|b| m.visit_type_param_bound(b));
            (on.found, m.found)
        })
        .collect();

    let mut erased: BTreeSet<usize> = &in_types(skipped) - &identity;
    // What an erased parameter's bounds name is erased too (`DB` above), unless kept.
    loop {
        let reached: BTreeSet<usize> = bounds
            .iter()
            .filter(|(on, _)| !on.is_empty() && on.is_subset(&erased))
            .flat_map(|(_, named)| named.iter().copied())
            .filter(|i| !identity.contains(i))
            .collect();
        if reached.is_subset(&erased) {
            break;
        }
        erased.extend(reached);
    }
    // A bound that the companions keep (on a kept parameter, or on no parameter: `Self:
    // From<E>`) keeps every parameter it names.
    loop {
        let needed: BTreeSet<usize> = bounds
            .iter()
            .filter(|(on, _)| on.is_empty() || !on.is_subset(&erased))
            .flat_map(|(on, named)| on.iter().chain(named).copied())
            .filter(|i| erased.contains(i))
            .collect();
        if needed.is_empty() {
            break;
        }
        erased = &erased - &needed;
    }

    let mut mask = erased.iter().fold(0u64, |m, i| m | 1 << i);
    // `impl Trait` parameters are anonymous type parameters after the named ones; only a
    // skipped parameter may have one (see `signature`).
    if skipped.iter().any(|t| has_impl_trait(t)) && names.len() < 64 {
        mask |= !0u64 << names.len();
    }
    Erasure {
        mask,
        kept: without(generics, &names, &erased),
    }
}

/// `(bounded type, bounds)` for every inline bound and `where` predicate.
fn bound_list(generics: &Generics) -> Vec<(Type, Vec<TypeParamBound>)> {
    let inline = generics.params.iter().filter_map(|p| match p {
        GenericParam::Type(t) if !t.bounds.is_empty() => {
            let ident = &t.ident;
            Some((
                syn::parse_quote!(#ident),
                t.bounds.iter().cloned().collect(),
            ))
        }
        _ => None,
    });
    let predicates = generics
        .where_clause
        .iter()
        .flat_map(|w| &w.predicates)
        .filter_map(|p| match p {
            WherePredicate::Type(t) => {
                Some((t.bounded_ty.clone(), t.bounds.iter().cloned().collect()))
            }
            _ => None,
        });
    inline.chain(predicates).collect()
}

/// `generics` without the parameters at `erased` and the predicates whose bounded type
/// names one.
fn without(generics: &Generics, names: &[&Ident], erased: &BTreeSet<usize>) -> Generics {
    if erased.is_empty() {
        return generics.clone();
    }
    let gone: Vec<&Ident> = erased.iter().map(|i| names[*i]).collect();
    let mut g = generics.clone();
    g.params = std::mem::take(&mut g.params)
        .into_iter()
        .filter(|p| match p {
            GenericParam::Type(t) => !gone.contains(&&t.ident),
            GenericParam::Const(c) => !gone.contains(&&c.ident),
            GenericParam::Lifetime(_) => true,
        })
        .collect();
    if let Some(w) = &mut g.where_clause {
        w.predicates = std::mem::take(&mut w.predicates)
            .into_iter()
            .filter(|p| match p {
                WherePredicate::Type(t) => {
                    let mut m = Mentions::new(&gone);
                    m.visit_type(&t.bounded_ty);
                    m.found.is_empty()
                }
                _ => true,
            })
            .collect();
        if w.predicates.is_empty() {
            g.where_clause = None;
        }
    }
    if g.params.is_empty() {
        g.lt_token = None;
        g.gt_token = None;
    }
    g
}

/// The positions (in `names`) of the parameters a type or bound names: a path that starts
/// with one (`E`, `E::Item`, `<E as T>::X`, the `N` of `[u8; N]`).
struct Mentions<'n> {
    names: &'n [&'n Ident],
    found: BTreeSet<usize>,
}

impl<'n> Mentions<'n> {
    fn new(names: &'n [&'n Ident]) -> Self {
        Self {
            names,
            found: BTreeSet::new(),
        }
    }
}

impl<'ast> Visit<'ast> for Mentions<'_> {
    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.leading_colon.is_none() {
            if let Some(first) = p.segments.first() {
                if let Some(i) = self.names.iter().position(|n| **n == first.ident) {
                    self.found.insert(i);
                }
            }
        }
        syn::visit::visit_path(self, p);
    }
}

fn has_impl_trait(ty: &Type) -> bool {
    struct Find(bool);
    impl<'ast> Visit<'ast> for Find {
        fn visit_type_impl_trait(&mut self, _: &'ast syn::TypeImplTrait) {
            self.0 = true;
        }
    }
    let mut f = Find(false);
    f.visit_type(ty);
    f.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::ToTokens;

    fn run(f: &str, skipped: &[&str], kept: &[&str]) -> (u64, String) {
        let f: syn::ItemFn = syn::parse_str(&format!("{f} {{}}")).unwrap();
        let parse = |t: &&str| syn::parse_str::<Type>(t).unwrap();
        let skipped: Vec<Type> = skipped.iter().map(parse).collect();
        let kept: Vec<Type> = kept.iter().map(parse).collect();
        let e = erasure(
            &f.sig.generics,
            &skipped.iter().collect::<Vec<_>>(),
            &kept.iter().collect::<Vec<_>>(),
        );
        let g = &e.kept;
        let w = &g.where_clause;
        let text = format!(
            "{} {}",
            g.to_token_stream(),
            w.as_ref()
                .map(|w| w.to_token_stream().to_string())
                .unwrap_or_default()
        );
        (e.mask, text.trim().to_string())
    }

    #[test]
    fn only_skipped_parameters_types_are_erased() {
        // sqlx's executor: erased with its bound.
        assert_eq!(
            run(
                "fn f<'c, E: Executor<'c>>(ex: E, id: u64)",
                &["E"],
                &["u64", "String"]
            ),
            (0b1, "< 'c >".to_string())
        );
        // What the executor's bound names goes with it; the key's type stays.
        assert_eq!(
            run(
                "fn f<E, DB, K: KeyPart>(ex: E, id: K) where E: Executor<Database = DB>",
                &["E"],
                &["K", "u8"]
            ),
            (0b011, "< K : KeyPart >".to_string())
        );
        // A parameter no parameter has (chosen by turbofish) is kept.
        assert_eq!(
            run(
                "fn f<T: Table>(pool: &Pool, id: u64)",
                &["&Pool"],
                &["u64", "u64"]
            ),
            (0, "< T : Table >".to_string())
        );
        // In the key or the value: kept.
        assert_eq!(run("fn f<E>(ex: &E, id: E)", &["&E"], &["E", "u8"]).0, 0);
        assert_eq!(run("fn f<E>(ex: &E) -> Vec<E>", &["&E"], &["Vec<E>"]).0, 0);
        // A kept parameter's bound that names it keeps it.
        assert_eq!(
            run(
                "fn f<E, K>(ex: &E, k: K) where K: From<E>",
                &["&E"],
                &["K", "u8"]
            )
            .0,
            0
        );
        // A const parameter, and `impl Trait` parameters (every position after the named).
        assert_eq!(
            run(
                "fn f<const N: usize, T>(buf: [u8; N], t: T, cb: impl Fn(u8))",
                &["[u8; N]", "impl Fn(u8)"],
                &["T", "u8"]
            ),
            (!0u64 << 2 | 0b01, "< T >".to_string())
        );
        // A predicate on no parameter keeps what it names.
        assert_eq!(
            run(
                "fn f<E>(ex: &E, k: u8) where u8: From<E>",
                &["&E"],
                &["u8", "u8"]
            )
            .0,
            0
        );
        // A predicate on the erased parameter alone goes with it.
        assert_eq!(
            run(
                "fn f<E>(ex: &E, k: u8) where for<'a> &'a E: Send, u8: Copy",
                &["&E"],
                &["u8", "u8"]
            ),
            (0b1, "where u8 : Copy".to_string())
        );
        // A path that merely ends in the name is another item.
        assert_eq!(
            run("fn f<E>(ex: &other::E, id: E)", &["&other::E"], &["E"]).0,
            0
        );
        assert_eq!(run("fn f<E>(ex: &::E)", &["&::E"], &["u8"]).0, 0);
    }
}
