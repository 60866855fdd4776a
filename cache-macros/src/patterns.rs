//! Parameters written as patterns: `Path(id): Path<u64>`, `State(db): State<Db>` (axum's
//! extractors), `Point { x, y }: Point`, `(a, b): (u8, u8)`.
//!
//! The generated functions take such an argument whole, under a generated name
//! (`signature::Param::ident`), so the wrapper can hand it to `NAME_uncached` as it came. The
//! key reads the pattern's bindings through a reference (`let Path(id) = &__arg0;`, the
//! skipped ones as `_`), and a function that carries its body destructures the argument at
//! the body's start, as the function it was did.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ext::IdentExt;
use syn::punctuated::Punctuated;
use syn::{FnArg, Pat, Token};

use crate::signature::Param;

/// `inputs` with each pattern replaced by its parameter's generated name.
pub fn whole(
    inputs: &Punctuated<FnArg, Token![,]>,
    params: &[Param],
) -> Punctuated<FnArg, Token![,]> {
    let mut out = inputs.clone();
    let typed = out.iter_mut().filter_map(|a| match a {
        FnArg::Typed(pt) => Some(pt),
        FnArg::Receiver(_) => None,
    });
    for (pt, p) in typed.zip(params) {
        if p.pattern.is_some() {
            let ident = &p.ident;
            *pt.pat = syn::parse_quote!(#ident);
        }
    }
    out
}

/// The body with `let PATTERN = __argN;` first for each pattern: its bindings, by value.
/// The statements go inside the body's own braces (another block around it would be
/// rustc's `unused_braces` in the user's code).
pub fn with_bindings(body: &syn::Block, params: &[Param]) -> syn::Block {
    let mut out = body.clone();
    let lets = params.iter().filter_map(|p| {
        let (pat, whole, cfg) = (p.pattern.as_ref()?, &p.ident, &p.cfg);
        Some(syn::parse_quote!(#cfg let #pat = #whole;))
    });
    out.stmts.splice(0..0, lets);
    out
}

/// `let PATTERN = &__argN;` for each pattern of `params`: the bindings the key reads, by
/// reference (`mut` dropped), the skipped ones as `_`.
pub fn by_ref<'p>(
    params: impl IntoIterator<Item = &'p Param>,
    skipped: &dyn Fn(&str) -> bool,
) -> TokenStream {
    let lets = params.into_iter().filter_map(|p| {
        let mut pat = p.pattern.clone()?;
        for_key(&mut pat, skipped);
        let (whole, cfg) = (&p.ident, &p.cfg);
        Some(quote!(#cfg let #pat = &#whole;))
    });
    quote!(#(#lets)*)
}

fn for_key(pat: &mut Pat, skipped: &dyn Fn(&str) -> bool) {
    match pat {
        Pat::Ident(pi) => {
            if skipped(&pi.ident.unraw().to_string()) {
                *pat = syn::parse_quote!(_);
            } else {
                pi.mutability = None;
            }
        }
        Pat::TupleStruct(t) => t.elems.iter_mut().for_each(|p| for_key(p, skipped)),
        Pat::Struct(st) => {
            for f in st.fields.iter_mut() {
                for_key(&mut f.pat, skipped);
                // `Point { x, .. }` with `x` skipped: `Point { x: _, .. }`.
                if matches!(*f.pat, Pat::Wild(_)) {
                    f.colon_token = Some(Default::default());
                }
            }
        }
        Pat::Tuple(t) => t.elems.iter_mut().for_each(|p| for_key(p, skipped)),
        Pat::Slice(sl) => sl.elems.iter_mut().for_each(|p| for_key(p, skipped)),
        Pat::Paren(p) => for_key(&mut p.pat, skipped),
        _ => {}
    }
}
