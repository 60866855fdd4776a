//! Where each attribute of the cached function goes: the wrapper (which keeps the
//! function's name), `NAME_uncached` (the original body), or the companions. The decision
//! table is in the `cached` macro's documentation ("Attributes"); keep the two in step.

use proc_macro2::TokenStream;
use quote::quote;
use syn::punctuated::Punctuated;
use syn::{Attribute, Meta, Token};

/// One kind of generated function.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `NAME`.
    Wrapper,
    /// `NAME_uncached`: the original body.
    Uncached,
    /// `NAME_entry`.
    Entry,
    /// `refresh_NAME`.
    Refresh,
    /// `invalidate_NAME`, `populate_NAME`, `lookup_NAME`.
    Companion,
    /// `NAME_cache`.
    Accessor,
}

const fn bit(t: Target) -> u8 {
    1 << t as u8
}

const ALL: u8 = 0b11_1111;
const WRAPPER: u8 = bit(Target::Wrapper);
const UNCACHED: u8 = bit(Target::Uncached);
const ENTRY: u8 = bit(Target::Entry);

/// The attribute's destinations, by its path (`cfg_attr`'s are classified by what they
/// expand to).
fn targets(meta: &Meta) -> u8 {
    let path = meta.path();
    let is = |name: &str| path.is_ident(name);
    if is("cfg") || is("allow") || is("deprecated") {
        ALL
    } else if is("doc") {
        // `#[doc(hidden)]` hides the companions too; text and aliases describe the function.
        match meta {
            Meta::List(l) if l.tokens.to_string().trim() == "hidden" => ALL,
            _ => WRAPPER,
        }
    } else if is("expect") {
        // Checked once, where the original body and signature are; elsewhere an `allow`
        // (the lint may not fire there, and an unfulfilled expectation is itself a lint).
        ALL
    } else if is("must_use") {
        WRAPPER | UNCACHED | ENTRY
    } else if is("inline") || is("cold") || is("track_caller") {
        WRAPPER | UNCACHED
    } else {
        // `warn`/`deny`/`forbid` check the user's code, which is in `NAME_uncached`; so do
        // unknown attributes (`#[tracing::instrument]` wraps the body).
        UNCACHED
    }
}

struct Rule {
    /// `cfg_attr`'s predicate.
    cfg: Option<Meta>,
    meta: Meta,
    mask: u8,
}

pub struct Forwarded {
    rules: Vec<Rule>,
    deprecated: bool,
}

impl Forwarded {
    /// Classifies the function's attributes (inner ones, `#![...]` in the body, as if outer).
    pub fn split(attrs: &[Attribute]) -> syn::Result<Self> {
        let mut rules = Vec::new();
        for attr in attrs {
            if attr.path().is_ident("cfg_attr") {
                let (cfg, metas) = attr.parse_args_with(|input: syn::parse::ParseStream| {
                    let cfg: Meta = input.parse()?;
                    input.parse::<Token![,]>()?;
                    let metas = Punctuated::<Meta, Token![,]>::parse_terminated(input)?;
                    Ok((cfg, metas))
                })?;
                for meta in metas {
                    rules.push(Rule {
                        cfg: Some(cfg.clone()),
                        mask: targets(&meta),
                        meta,
                    });
                }
            } else {
                rules.push(Rule {
                    cfg: None,
                    mask: targets(&attr.meta),
                    meta: attr.meta.clone(),
                });
            }
        }
        // A second `#[cached]` would go to `NAME_uncached` (as any other attribute macro
        // does) and cache the body again, where `invalidate_NAME` never reaches.
        if let Some(r) = rules.iter().find(|r| {
            r.meta
                .path()
                .segments
                .last()
                .is_some_and(|s| s.ident == "cached")
        }) {
            return Err(syn::Error::new_spanned(
                r.meta.path(),
                "`#[cached]` may appear once on a function: a second one would cache its body \
                 again, as `NAME_uncached`, where `invalidate_NAME` never reaches; merge the \
                 options into one attribute",
            ));
        }
        let deprecated = rules.iter().any(|r| r.meta.path().is_ident("deprecated"));
        Ok(Self { rules, deprecated })
    }

    /// The attributes of one generated function.
    pub fn for_target(&self, t: Target) -> TokenStream {
        self.for_targets(&[t])
    }

    /// The attributes of one generated function that plays several parts (with `in_trait`,
    /// the wrapper is also the original body), each attribute once.
    pub fn for_targets(&self, ts: &[Target]) -> TokenStream {
        let mask = ts.iter().fold(0, |m, &t| m | bit(t));
        let has_body = ts.contains(&Target::Uncached);
        let mut out = TokenStream::new();
        for r in self.rules.iter().filter(|r| r.mask & mask != 0) {
            let meta = match &r.meta {
                Meta::List(l) if l.path.is_ident("expect") && !has_body => {
                    let tokens = &l.tokens;
                    quote!(allow(#tokens))
                }
                m => quote!(#m),
            };
            out.extend(match &r.cfg {
                Some(cfg) => quote!(#[cfg_attr(#cfg, #meta)]),
                None => quote!(#[#meta]),
            });
        }
        // The generated functions call or contain the deprecated function; its callers are
        // warned, the definition is not (`NAME_uncached`, the user's own code, keeps the lint).
        if self.deprecated && !has_body {
            out.extend(quote!(#[allow(deprecated)]));
        }
        out
    }
}
