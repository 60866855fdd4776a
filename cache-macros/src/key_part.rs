//! `#[derive(KeyPart)]`: a key encoding for a struct or an enum, written field by field with
//! the fields' own `KeyPart` impls. The encoding is injective within the type, so distinct
//! values never share a key:
//!
//! - a newtype (`struct UserId(u64)`) is its field: `7`;
//! - named fields are `{name=value,name=value}` (`,`, `=`, `{`, `}` are escaped in values);
//! - other tuple fields are `[a+b]`, like a tuple; a unit struct writes nothing, like `()`;
//! - an enum variant is its name, then its fields as above (`ById[7]`, `Page{n=2}`, `All`):
//!   a name never contains the characters that start or follow fields.
//!
//! `#[key(skip)]` leaves a field out (a request id, a span: what does not change the result).

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Error, Fields, Ident};

pub fn derive(input: DeriveInput, krate: &syn::Path) -> syn::Result<TokenStream> {
    let name = &input.ident;
    let body = match &input.data {
        Data::Struct(s) => {
            let (bind, write) = fields(krate, &s.fields, quote!(Self), false)?;
            quote! {
                let #bind = self;
                #write
            }
        }
        Data::Enum(e) => {
            let arms = e
                .variants
                .iter()
                .map(|v| {
                    let vname = &v.ident;
                    let text = syn::ext::IdentExt::unraw(vname).to_string();
                    let (bind, write) = fields(krate, &v.fields, quote!(Self::#vname), true)?;
                    Ok(quote! {
                        #bind => {
                            __w.literal(#text);
                            #write
                        }
                    })
                })
                .collect::<syn::Result<Vec<_>>>()?;
            if arms.is_empty() {
                quote!(match *self {})
            } else {
                quote!(match self { #(#arms)* })
            }
        }
        Data::Union(u) => {
            return Err(Error::new(
                u.union_token.span,
                "`KeyPart` cannot be derived for a union: which field is set is not known; \
                 implement `KeyPart` by hand",
            ))
        }
    };
    // Every type parameter must be a key part itself, as serde's derives bound theirs.
    let mut generics = input.generics.clone();
    let params: Vec<Ident> = generics.type_params().map(|t| t.ident.clone()).collect();
    {
        let where_clause = generics.make_where_clause();
        for p in &params {
            where_clause
                .predicates
                .push(syn::parse_quote!(#p: #krate::key::KeyPart));
        }
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics #krate::key::KeyPart for #name #ty_generics #where_clause {
            fn write_key(&self, __w: &mut #krate::key::KeyWriter) {
                #body
            }
        }
    })
}

/// The pattern that binds `fields` of `path` (by reference) and the code that writes them;
/// `variant`: the fields of an enum variant (written after its name).
fn fields(
    krate: &syn::Path,
    fields: &Fields,
    path: TokenStream,
    variant: bool,
) -> syn::Result<(TokenStream, TokenStream)> {
    let mut kept = Vec::new();
    for (i, f) in fields.iter().enumerate() {
        if !skipped(&f.attrs)? {
            kept.push((i, f));
        }
    }
    let bound = |i: usize| format_ident!("__f{}", i, span = Span::mixed_site());
    // Through `<Type as KeyPart>` spanned at the field's type: a field that is no key part
    // is reported there.
    let write = |i: usize, f: &syn::Field| {
        let v = bound(i);
        let (k, ty) = (crate::expand::at(krate, f.ty.span()), &f.ty);
        quote_spanned!(f.ty.span()=> <#ty as #k::key::KeyPart>::write_key(#v, __w);)
    };
    Ok(match fields {
        Fields::Unit => (path, quote!()),
        Fields::Named(_) => {
            let binds = kept.iter().map(|(i, f)| {
                let (field, v) = (f.ident.as_ref().expect("named"), bound(*i));
                quote!(#field: #v)
            });
            let writes = kept.iter().enumerate().map(|(n, (i, f))| {
                let field = syn::ext::IdentExt::unraw(f.ident.as_ref().expect("named"));
                let head = format!("{}{field}=", if n == 0 { "" } else { "," });
                let w = write(*i, f);
                quote!(__w.literal(#head); #w)
            });
            (
                quote!(#path { #(#binds,)* .. }),
                quote!(__w.literal("{"); #(#writes)* __w.literal("}");),
            )
        }
        Fields::Unnamed(unnamed) => {
            let binds = (0..unnamed.unnamed.len()).map(|i| {
                if kept.iter().any(|(k, _)| *k == i) {
                    let v = bound(i);
                    quote!(#v)
                } else {
                    quote!(_)
                }
            });
            let pattern = quote!(#path ( #(#binds),* ));
            // A newtype is its field; in an enum the variant's name comes first, so the
            // field is bracketed as any other tuple.
            if kept.len() == 1 && unnamed.unnamed.len() == 1 && !variant {
                let (i, f) = kept[0];
                (pattern, write(i, f))
            } else {
                let writes = kept.iter().enumerate().map(|(n, (i, f))| {
                    let w = write(*i, f);
                    if n == 0 {
                        w
                    } else {
                        quote!(__w.literal("+"); #w)
                    }
                });
                (
                    pattern,
                    quote!(__w.literal("["); #(#writes)* __w.literal("]");),
                )
            }
        }
    })
}

/// Whether the field has `#[key(skip)]`; any other `key` attribute is an error at it.
fn skipped(attrs: &[syn::Attribute]) -> syn::Result<bool> {
    let mut skip = false;
    for attr in attrs.iter().filter(|a| a.path().is_ident("key")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("skip") {
                skip = true;
                Ok(())
            } else {
                Err(meta.error(
                    "`#[key(...)]` on a field takes `skip` (leave the field out of the key)",
                ))
            }
        })?;
    }
    Ok(skip)
}
