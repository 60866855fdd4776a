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

/// Whether `Self`'s type arguments may be erased (`__private::Slot::erasing_self`), the
/// impl-level counterpart of [`erasure`]: `self` (or a parameter of a type naming `Self`) is
/// skipped, and no kept type (key parameters, return type) names `Self` or a projection
/// (`R::Id`, `<R as Repo>::Id`), which may hide an impl's type parameter the attribute cannot
/// see. A plain impl parameter in a kept type (`k: K`, `-> Vec<T>`) is caught at run time,
/// by the resolved types (`phantom`).
pub fn erases_self(self_skipped: bool, skipped: &[&Type], kept: &[&Type]) -> bool {
    let (mut in_skipped, mut in_kept) = (SelfOrProjection(false), SelfOrProjection(false));
    skipped.iter().for_each(|t| in_skipped.visit_type(t));
    kept.iter().for_each(|t| in_kept.visit_type(t));
    (self_skipped || in_skipped.0) && !in_kept.0
}

/// `(kept..)`, the types the runtime checks `Self`'s arguments against, with the function's
/// lifetimes as `'_` (the accessor, which names them too, has none).
pub fn phantom(generics: &Generics, kept: &[&Type]) -> Type {
    struct Unnamed<'l>(Vec<&'l Ident>);
    impl syn::visit_mut::VisitMut for Unnamed<'_> {
        fn visit_lifetime_mut(&mut self, l: &mut syn::Lifetime) {
            if self.0.contains(&&l.ident) {
                *l = syn::Lifetime::new("'_", l.span());
            }
        }
    }
    let mut un = Unnamed(generics.lifetimes().map(|l| &l.lifetime.ident).collect());
    // A type that cannot name an impl's parameter (`u64`, `Option<String>`) is left out: its
    // name would match `Self`'s argument of that name (`Typed<u64>`, `id: u64`).
    let mut tys: Vec<Type> = kept
        .iter()
        .filter(|t| !std_only(t))
        .map(|t| (*t).clone())
        .collect();
    tys.iter_mut()
        .for_each(|t| syn::visit_mut::VisitMut::visit_type_mut(&mut un, t));
    syn::parse_quote!((#(#tys,)*))
}

/// Whether `ty` is made of primitives and standard containers only (`&str`, `Vec<u64>`,
/// `Option<(String, bool)>`, `[u8; 16]`): no type parameter can hide in it.
fn std_only(ty: &Type) -> bool {
    const PRIMITIVES: &[&str] = &[
        "bool", "char", "str", "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32",
        "i64", "i128", "isize", "f32", "f64", "String",
    ];
    const CONTAINERS: &[&str] = &[
        "Vec", "Option", "Result", "Box", "Arc", "Rc", "Cow", "HashMap", "BTreeMap", "HashSet",
        "BTreeSet", "VecDeque",
    ];
    match ty {
        Type::Group(g) => std_only(&g.elem),
        Type::Paren(p) => std_only(&p.elem),
        Type::Reference(r) => std_only(&r.elem),
        Type::Slice(s) => std_only(&s.elem),
        Type::Array(a) => {
            matches!(
                &a.len,
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Int(_),
                    ..
                })
            ) && std_only(&a.elem)
        }
        Type::Tuple(t) => t.elems.iter().all(std_only),
        Type::Path(p) if p.qself.is_none() => {
            let Some(last) = p.path.segments.last() else {
                return false;
            };
            let name = last.ident.to_string();
            match &last.arguments {
                syn::PathArguments::None => PRIMITIVES.contains(&name.as_str()),
                syn::PathArguments::AngleBracketed(a) => {
                    CONTAINERS.contains(&name.as_str())
                        && a.args.iter().all(|g| match g {
                            syn::GenericArgument::Type(t) => std_only(t),
                            syn::GenericArgument::Lifetime(_) => true,
                            _ => false,
                        })
                }
                syn::PathArguments::Parenthesized(_) => false,
            }
        }
        _ => false,
    }
}

/// Finds `Self`, a qualified path (`<R as Repo>::Id`), a type macro, or a path that
/// starts with a capitalised segment without arguments (`R::Id`: only a type parameter or
/// `Self` has associated types through that shorthand).
struct SelfOrProjection(bool);

impl<'ast> Visit<'ast> for SelfOrProjection {
    fn visit_type_path(&mut self, t: &'ast syn::TypePath) {
        let first = t.path.segments.first();
        let projection = t.path.segments.len() > 1
            && t.path.leading_colon.is_none()
            && first.is_some_and(|s| {
                s.arguments.is_none() && s.ident.to_string().starts_with(char::is_uppercase)
            });
        if t.qself.is_some() || projection {
            self.0 = true;
        }
        syn::visit::visit_type_path(self, t);
    }

    fn visit_type_macro(&mut self, _: &'ast syn::TypeMacro) {
        self.0 = true;
    }

    fn visit_ident(&mut self, i: &'ast Ident) {
        if i == "Self" {
            self.0 = true;
        }
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

    fn types(tys: &[&str]) -> Vec<Type> {
        tys.iter().map(|t| syn::parse_str(t).unwrap()).collect()
    }

    #[test]
    fn self_arguments_are_erased_with_a_skipped_self() {
        let erases = |self_skipped, skipped: &[&str], kept: &[&str]| {
            let (s, k) = (types(skipped), types(kept));
            erases_self(
                self_skipped,
                &s.iter().collect::<Vec<_>>(),
                &k.iter().collect::<Vec<_>>(),
            )
        };
        assert!(erases(true, &["&Pool"], &["u64", "Result<User, E>"]));
        // `self` in the key, or no `self` at all (an associated function, turbofish-like).
        assert!(!erases(false, &[], &["u64", "User"]));
        // A skipped `&Self` parameter counts as `self`.
        assert!(erases(false, &["&Self"], &["u64", "User"]));
        // `Self` or a projection in a kept type may name the impl's parameters.
        assert!(!erases(true, &[], &["u64", "Option<Self>"]));
        assert!(!erases(true, &[], &["R::Id", "User"]));
        assert!(!erases(true, &[], &["u64", "Vec<<R as Repo>::Row>"]));
        assert!(!erases(true, &[], &["ids!()", "u8"]));
        // A module path is no projection.
        assert!(erases(
            true,
            &[],
            &["chrono::NaiveDate", "std::io::Result<u8>"]
        ));
    }

    #[test]
    fn the_runtime_checks_only_types_that_may_name_a_parameter() {
        let f: syn::ItemFn = syn::parse_str("fn f<'a>() {}").unwrap();
        let kept = types(&[
            "u64",
            "&'a str",
            "Option<(String, [u8; 4])>",
            "K",
            "Vec<&'a T>",
            "[u8; N]",
        ]);
        let t = phantom(&f.sig.generics, &kept.iter().collect::<Vec<_>>());
        assert_eq!(
            t.to_token_stream().to_string(),
            "(K , Vec < & '_ T > , [u8 ; N] ,)"
        );
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
