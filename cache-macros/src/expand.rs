//! Code generation: the wrapper and its companions. Everything they do is a call into
//! `::cache_runtime`; this file only arranges the calls.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Error, Ident, ItemFn};

use crate::options::{Options, Tier};
use crate::signature::{Analyzed, Kind, Param};
use crate::template::{self, Segment};

pub fn expand(opts: Options, f: ItemFn) -> syn::Result<TokenStream> {
    let a = crate::signature::analyze(&f, opts.cache_none)?;
    let timeout_span = opts
        .fail_safe
        .as_ref()
        .and_then(|f| f.timeout.as_ref())
        .map(|t| t.1);
    if let (Some(span), false) = (timeout_span, a.is_async) {
        return Err(Error::new(
            span,
            "`timeout` needs an `async fn`: a blocking body cannot be interrupted",
        ));
    }
    let detached = check_detached(&opts, &a)?;
    let plan = KeyPlan::new(&opts, &a, &f.sig.ident)?;

    let name = &f.sig.ident;
    let vis = &f.vis;
    let generics = &f.sig.generics;
    let inputs = &f.sig.inputs;
    let ret = &a.ret;
    let value_ty = &a.value_ty;
    let asyncness = &f.sig.asyncness;
    let is_method = a.receiver.is_some();

    let uncached = format_ident!("{}_uncached", name);
    let invalidate = format_ident!("invalidate_{}", name);
    let populate = format_ident!("populate_{}", name);
    let lookup = format_ident!("lookup_{}", name);
    let refresh = format_ident!("refresh_{}", name);
    let entry = format_ident!("{}_entry", name);
    let accessor = format_ident!("{}_cache", name);

    let cache = Ident::new("__cache", Span::mixed_site());
    let key = Ident::new("__key", Span::mixed_site());

    let (cfg_attrs, doc_attrs, other_attrs) = split_attrs(&f.attrs);
    let get_cache = if is_method {
        quote!(Self::#accessor())
    } else {
        quote!(#accessor())
    };
    // Through `__private::Check`: a value type that is not `Clone + Send + Sync + 'static`
    // is one error at its span, not one per generated function.
    let get_cache = quote_spanned! {value_ty.span()=>
        {
            #[allow(unused_imports)]
            use ::cache_runtime::__private::{CheckValue as _, CheckValueFailed as _};
            (&::cache_runtime::__private::Check::<#value_ty>::new()).value(#get_cache)
        }
    };
    let build_key = plan.tokens(&cache, is_method, name);
    let prologue = quote! {
        let #cache = #get_cache;
        let #key = #build_key;
    };
    // Edge paths are built before the call (which may move the arguments) and enqueued
    // after it, once the tiers no longer hold the old value.
    let purge = Ident::new("__purge", Span::mixed_site());
    let result = Ident::new("__result", Span::mixed_site());
    let (build_purge, send_purge) = if plan.purge.is_empty() {
        (quote!(), quote!())
    } else {
        let paths = plan.purge.iter().map(|p| build_path(p));
        (
            quote!(let #purge: ::std::vec::Vec<::std::string::String> = ::std::vec![#(#paths),*];),
            quote!(::cache_runtime::edge::enqueue_paths(#purge);),
        )
    };

    // `self` first for methods; then the parameters.
    let self_arg = is_method.then(|| quote!(&self,));
    let call_args: Vec<&Ident> = a.params.iter().map(|p| &p.ident).collect();
    let call_uncached = if is_method {
        quote!(self.#uncached(#(#call_args),*))
    } else {
        quote!(#uncached(#(#call_args),*))
    };
    let key_params: Vec<TokenStream> = plan
        .key_params
        .iter()
        .map(|p| {
            let (i, t) = (&p.ident, &p.ty);
            quote!(#i: #t)
        })
        .collect();
    let value_arg = if a.params.iter().any(|p| p.ident == "value") {
        Ident::new("cached_value", Span::call_site())
    } else {
        Ident::new("value", Span::call_site())
    };

    let shape = match a.kind {
        Kind::Plain => quote!(::cache_runtime::__private::Plain),
        Kind::OkOnly => quote!(::cache_runtime::__private::OkOnly),
        Kind::SomeOnly => quote!(::cache_runtime::__private::SomeOnly),
        Kind::SomeOrNone => quote!(::cache_runtime::__private::SomeOrNone),
    };
    let sharing = match a.kind {
        Kind::Plain | Kind::SomeOrNone => quote!(::cache_runtime::Sharing::<#ret>::none()),
        Kind::SomeOnly => quote!(::cache_runtime::Sharing::<#ret>::absent()),
        Kind::OkOnly => quote! {
            ::cache_runtime::Sharing::<#ret>::new(
                |__r| match __r {
                    ::core::result::Result::Err(__e) => {
                        #[allow(unused_imports)]
                        use ::cache_runtime::__private::{ShareClone as _, ShareNever as _};
                        (&::cache_runtime::__private::Probe(__e)).share()
                    }
                    ::core::result::Result::Ok(_) => ::core::option::Option::None,
                },
                |__b| {
                    #[allow(unused_imports)]
                    use ::cache_runtime::__private::{UnshareClone as _, UnshareNever as _};
                    (&::cache_runtime::__private::TypeProbe::<
                        <#ret as ::cache_runtime::__private::ResultLike>::Err,
                    >::new())
                    .unshare(__b)
                    .map(::core::result::Result::Err)
                },
            )
        },
    };

    let (aw, get_or_load, get_entry, inv, pop, look, refr) = if a.is_async {
        let (get_or_load, get_entry) = if detached {
            // The body may outlive the call (soft timeout, refresh ahead): owned arguments.
            (
                quote!(get_or_load_detached::<#ret, #shape, _>(
                    ::cache_runtime::Key::from(#key), #call_uncached, #sharing)),
                quote!(get_or_load_entry_detached::<#ret, #shape, _>(
                    ::cache_runtime::Key::from(#key), #call_uncached, #sharing)),
            )
        } else {
            (
                quote!(get_or_load::<#ret, #shape>(#key, #call_uncached, &#sharing)),
                quote!(get_or_load_entry::<#ret, #shape>(#key, #call_uncached, &#sharing)),
            )
        };
        (
            quote!(.await),
            get_or_load,
            get_entry,
            quote!(invalidate),
            quote!(populate),
            quote!(lookup),
            quote!(refresh::<#ret, #shape>(#key, #call_uncached)),
        )
    } else {
        (
            quote!(),
            quote!(get_or_load_blocking::<#ret, #shape>(#key, move || #call_uncached, &#sharing)),
            quote!(get_or_load_entry_blocking::<#ret, #shape>(#key, move || #call_uncached, &#sharing)),
            quote!(invalidate_blocking),
            quote!(populate_blocking),
            quote!(lookup_blocking),
            quote!(refresh_blocking::<#ret, #shape>(#key, move || #call_uncached)),
        )
    };

    let accessor_fn = accessor_tokens(&opts, &a, name, vis, &accessor);
    let body = &f.block;
    let link = format!(
        "[`{name}`]({}{name})",
        if is_method { "Self::" } else { "" }
    );
    let doc_uncached = format!("The body of {link}, without the cache.");
    let doc_invalidate = format!(
        "Removes the entry of {link} for these arguments from every tier. The local tier is \
         always cleared; `Err` means Redis did not confirm the delete."
    );
    let doc_populate = format!(
        "Writes `{value_arg}` as the entry of {link} for these arguments into every tier \
         (write-through). The local tier is always written; `Err` means Redis did not take it."
    );
    let doc_lookup =
        format!("The cached value of {link} for these arguments, without running its body.");
    let doc_refresh =
        format!("Runs the body of {link} now and stores a cacheable result in every tier.");
    let doc_entry = format!(
        "{link} with the value wrapped in a [`cache_runtime::Entry`]: its ETag, creation time, \
         tags and source, for HTTP responses (see `cache_runtime::http`)."
    );
    let entry_ty = quote!(<#shape as ::cache_runtime::shape::EntryShape<#ret>>::Entries);

    Ok(quote! {
        #(#cfg_attrs)*
        #(#doc_attrs)*
        #vis #asyncness fn #name #generics (#inputs) -> #ret {
            #prologue
            #cache.#get_or_load #aw
        }

        #(#cfg_attrs)*
        #[doc = #doc_uncached]
        #(#other_attrs)*
        #vis #asyncness fn #uncached #generics (#inputs) -> #ret #body

        #(#cfg_attrs)*
        #[doc = #doc_entry]
        #vis #asyncness fn #entry #generics (#inputs) -> #entry_ty {
            #prologue
            #cache.#get_entry #aw
        }

        #(#cfg_attrs)*
        #[doc = #doc_invalidate]
        #vis #asyncness fn #invalidate #generics (#self_arg #(#key_params),*)
            -> ::core::result::Result<(), ::cache_runtime::CacheError>
        {
            #prologue
            #build_purge
            let #result = #cache.#inv(#key) #aw;
            #send_purge
            #result
        }

        #(#cfg_attrs)*
        #[doc = #doc_populate]
        #vis #asyncness fn #populate #generics (#self_arg #(#key_params,)* #value_arg: #value_ty)
            -> ::core::result::Result<(), ::cache_runtime::CacheError>
        {
            #prologue
            #build_purge
            let #result = #cache.#pop(#key, #value_arg) #aw;
            #send_purge
            #result
        }

        #(#cfg_attrs)*
        #[doc = #doc_lookup]
        #vis #asyncness fn #lookup #generics (#self_arg #(#key_params),*)
            -> ::core::option::Option<#value_ty>
        {
            #prologue
            #cache.#look(#key) #aw
        }

        #(#cfg_attrs)*
        #[doc = #doc_refresh]
        #vis #asyncness fn #refresh #generics (#inputs) -> #ret {
            #prologue
            #build_purge
            let #result = #cache.#refr #aw;
            #send_purge
            #result
        }

        #(#cfg_attrs)*
        #accessor_fn
    })
}

/// `soft_timeout` and `refresh_ahead` keep or start the body after the caller returned, so
/// the body must own everything it uses: an `async fn` with owned parameters, not a method.
fn check_detached(opts: &Options, a: &Analyzed) -> syn::Result<bool> {
    let option = match (&opts.soft_timeout, &opts.refresh_ahead) {
        (Some((_, span)), _) => ("soft_timeout", *span),
        (None, Some(f)) => ("refresh_ahead", f.span()),
        (None, None) => return Ok(false),
    };
    let (name, span) = option;
    if !a.is_async {
        return Err(Error::new(
            span,
            format!(
                "`{name}` needs an `async fn`: it finishes or starts the body in the background"
            ),
        ));
    }
    if let Some(recv) = a.receiver {
        return Err(Error::new(
            recv,
            format!(
                "`{name}` runs the body in the background after the caller returned, which a `&self` \
                 method cannot do; use a free function taking owned arguments"
            ),
        ));
    }
    for p in &a.params {
        if let Some(span) = borrowed(&p.ty) {
            return Err(Error::new(
                span,
                format!(
                    "`{name}` runs the body in the background after the caller returned, so parameter \
                     `{}` must be owned (e.g. `String` instead of `&str`, `Arc<T>` instead of `&T`)",
                    p.ident
                ),
            ));
        }
    }
    Ok(true)
}

/// The span of a reference or lifetime inside a type, if any.
fn borrowed(ty: &syn::Type) -> Option<Span> {
    use syn::visit::Visit;
    struct Find(Option<Span>);
    impl<'ast> Visit<'ast> for Find {
        fn visit_type_reference(&mut self, r: &'ast syn::TypeReference) {
            self.0.get_or_insert(r.and_token.span);
        }
        fn visit_lifetime(&mut self, l: &'ast syn::Lifetime) {
            self.0.get_or_insert(l.span());
        }
    }
    let mut f = Find(None);
    f.visit_type(ty);
    f.0
}

fn accessor_tokens(
    opts: &Options,
    a: &Analyzed,
    name: &Ident,
    vis: &syn::Visibility,
    accessor: &Ident,
) -> TokenStream {
    let v = &a.value_ty;
    let vspan = v.span();
    let name_str = name.to_string();
    let cache_name = match (&opts.name, a.receiver.is_some()) {
        (Some(n), _) => quote!(#n),
        (None, false) => quote!(::core::concat!(::core::module_path!(), "::", #name_str)),
        (None, true) => quote!(::std::format!(
            "{}::{}",
            ::std::any::type_name::<Self>(),
            #name_str
        )),
    };
    let ttl = opts.ttl_ms;
    let version = opts.version;
    let mut chain = quote!(.ttl(::core::time::Duration::from_millis(#ttl)).version(#version));
    if let Some(ms) = opts.local_ttl_ms {
        chain.extend(quote!(.local_ttl(::core::time::Duration::from_millis(#ms))));
    }
    if let Some((ms, _)) = opts.none_ttl_ms {
        chain.extend(quote!(.none_ttl(::core::time::Duration::from_millis(#ms))));
    }
    if let Some(n) = opts.capacity {
        chain.extend(quote!(.capacity(#n)));
    }
    if !opts.tags.is_empty() {
        chain.extend(quote!(.tagged()));
    }
    if let Some(fs) = &opts.fail_safe {
        let (stale, retry) = (fs.stale_ms, fs.retry_ms);
        let timeout = match &fs.timeout {
            Some((ms, _)) => {
                quote!(::core::option::Option::Some(::core::time::Duration::from_millis(#ms)))
            }
            None => quote!(::core::option::Option::None),
        };
        chain.extend(quote!(.stale(
            ::core::time::Duration::from_millis(#stale),
            ::core::time::Duration::from_millis(#retry),
            #timeout
        )));
    }
    if let Some(j) = &opts.jitter {
        chain.extend(quote!(.jitter(#j)));
    }
    if let Some((ms, _)) = opts.soft_timeout {
        chain.extend(quote!(.soft_timeout(::core::time::Duration::from_millis(#ms))));
    }
    if let Some(f) = &opts.refresh_ahead {
        chain.extend(quote!(.refresh_ahead(#f)));
    }
    if let Some(mode) = opts.mode {
        let m = Ident::new(mode, Span::call_site());
        chain.extend(quote!(.mode(::cache_runtime::Mode::#m)));
    }
    if let Some(ms) = opts.lock_lease_ms {
        chain.extend(quote!(.lock(::core::time::Duration::from_millis(#ms))));
    }
    // The bounds are checked through `__private::Check` (see there): a value type that is
    // not `Clone + Send + Sync` or, with a Redis tier, not serde is one error at its span,
    // and the `.tier(...)`/`.build()` calls that follow report nothing more.
    let b = Ident::new("__builder", Span::mixed_site());
    let etag = (opts.etag && opts.tier == Tier::Local).then(|| {
        quote_spanned! {vspan=>
            let #b = (&::cache_runtime::__private::Check::<#v>::new()).redis(#b);
            let #b = #b.etag();
        }
    });
    let max_bytes = opts.max_bytes.map(|n| {
        quote_spanned! {vspan=>
            let #b = (&::cache_runtime::__private::Check::<#v>::new()).redis(#b);
            let #b = #b.max_bytes(#n);
        }
    });

    let tier = match opts.tier {
        Tier::Local => None,
        Tier::Redis => Some(quote!(::cache_runtime::Tier::Redis)),
        Tier::LocalRedis => Some(quote!(::cache_runtime::Tier::LocalRedis)),
    };
    let redis_steps = tier.map(|tier| {
        quote_spanned! {vspan=>
            let #b = (&::cache_runtime::__private::Check::<#v>::new()).redis(#b);
            // A compile error naming the feature when the runtime is built without `redis`.
            let #b = #b.tier(::cache_runtime::__private::redis_tier(#tier));
        }
    });
    let _ = opts.tier_span;
    let doc = format!(
        "The cache of [`{name}`]({}{name}): its name, tiers, stats, local clear.",
        if a.receiver.is_some() { "Self::" } else { "" }
    );
    let build = quote_spanned! {vspan=>
        #[allow(unused_imports)]
        use ::cache_runtime::__private::{
            CheckRedis as _, CheckRedisFailed as _, CheckValue as _, CheckValueFailed as _,
        };
        let #b = ::cache_runtime::Cache::<#v>::builder(#cache_name) #chain;
        #redis_steps
        #etag
        #max_bytes
        (&::cache_runtime::__private::Check::<#v>::new()).value(#b).build()
    };
    // At the value type too: a value type that is not `Send + Sync` also fails the static's
    // `Sync` requirement, and that error should point at the type, not at the attribute.
    let static_ty = quote_spanned!(vspan=> ::std::sync::OnceLock<::cache_runtime::Cache<#v>>);
    quote! {
        #[doc = #doc]
        #vis fn #accessor() -> &'static ::cache_runtime::Cache<#v> {
            static CACHE: #static_ty = ::std::sync::OnceLock::new();
            CACHE.get_or_init(|| { #build })
        }
    }
}

fn split_attrs(
    attrs: &[syn::Attribute],
) -> (
    Vec<&syn::Attribute>,
    Vec<&syn::Attribute>,
    Vec<&syn::Attribute>,
) {
    let (mut cfg, mut doc, mut other) = (Vec::new(), Vec::new(), Vec::new());
    for attr in attrs {
        if attr.path().is_ident("cfg") {
            cfg.push(attr);
        } else if attr.path().is_ident("doc") {
            doc.push(attr);
        } else {
            other.push(attr);
        }
    }
    (cfg, doc, other)
}

fn build_string(pieces: &[Piece], cache: &Ident) -> TokenStream {
    let w = Ident::new("__w", Span::mixed_site());
    let steps = pieces.iter().map(|p| match p {
        Piece::Literal(t) => quote!(#w.literal(#t);),
        Piece::Arg { expr, span } => quote_spanned! {*span=>
            ::cache_runtime::key::KeyPart::write_key(&(#expr), &mut #w);
        },
    });
    quote! {{
        let mut #w = #cache.key_writer();
        #(#steps)*
        #w.finish()
    }}
}

/// A purge path: literals as written, arguments percent-encoded.
fn build_path(pieces: &[Piece]) -> TokenStream {
    let p = Ident::new("__path", Span::mixed_site());
    let steps = pieces.iter().map(|piece| match piece {
        Piece::Literal(t) => quote!(#p.push_str(#t);),
        Piece::Arg { expr, span } => quote_spanned! {*span=>
            ::cache_runtime::__private::push_path_arg(&mut #p, &(#expr));
        },
    });
    quote! {{
        let mut #p = ::std::string::String::new();
        #(#steps)*
        #p
    }}
}

enum Piece {
    Literal(TokenStream),
    Arg { expr: TokenStream, span: Span },
}

struct KeyPlan<'a> {
    pieces: Vec<Piece>,
    tags: Vec<Vec<Piece>>,
    purge: Vec<Vec<Piece>>,
    key_params: Vec<&'a Param>,
}

/// Resolves a template's placeholders to expressions over the parameters (or `self`),
/// rejecting unknown and skipped names. Returns the pieces and the roots it used.
fn template_pieces(
    lit: &syn::LitStr,
    what: &str,
    a: &Analyzed,
    fn_name: &Ident,
    skipped: &dyn Fn(&str) -> bool,
    param_names: &dyn Fn() -> String,
) -> syn::Result<(Vec<Piece>, Vec<String>)> {
    let is_method = a.receiver.is_some();
    let mut pieces = Vec::new();
    let mut used = Vec::new();
    for seg in template::parse(lit)? {
        match seg {
            Segment::Literal(text) => pieces.push(Piece::Literal(quote!(#text))),
            Segment::Placeholder { root, fields } => {
                let is_self = root == "self";
                if is_self && !is_method {
                    return Err(Error::new(
                        lit.span(),
                        format!(
                            "placeholder `<{root}>` in the {what}: `{fn_name}` is not a `&self` method; {}",
                            param_names()
                        ),
                    ));
                }
                if !is_self && !a.params.iter().any(|p| p.ident == root) {
                    return Err(Error::new(
                        lit.span(),
                        format!(
                            "unknown placeholder `<{root}>` in the {what} of `{fn_name}`; {}",
                            param_names()
                        ),
                    ));
                }
                if skipped(&root) {
                    return Err(Error::new(
                        lit.span(),
                        format!(
                            "`{root}` is in `skip(...)` but the {what} uses `<{root}>`; remove one of them"
                        ),
                    ));
                }
                let root_tokens = if is_self {
                    let s = syn::token::SelfValue { span: lit.span() };
                    quote!(#s)
                } else {
                    let id = Ident::new(&root, lit.span());
                    quote!(#id)
                };
                let field_tokens = fields.iter().map(|f| {
                    if f.chars().all(|c| c.is_ascii_digit()) {
                        let idx = syn::Index {
                            index: f.parse().unwrap_or(0),
                            span: lit.span(),
                        };
                        quote!(.#idx)
                    } else {
                        let id = Ident::new(f, lit.span());
                        quote!(.#id)
                    }
                });
                pieces.push(Piece::Arg {
                    expr: quote!(#root_tokens #(#field_tokens)*),
                    span: lit.span(),
                });
                used.push(root);
            }
        }
    }
    Ok((pieces, used))
}

impl<'a> KeyPlan<'a> {
    fn new(opts: &Options, a: &'a Analyzed, fn_name: &Ident) -> syn::Result<Self> {
        let is_method = a.receiver.is_some();
        let param_names = || {
            let mut names: Vec<String> = a.params.iter().map(|p| p.ident.to_string()).collect();
            if is_method {
                names.insert(0, "self".into());
            }
            if names.is_empty() {
                "it has no parameters".to_string()
            } else {
                format!("its parameters are: {}", names.join(", "))
            }
        };
        for s in &opts.skip {
            let known = a.params.iter().any(|p| p.ident == *s) || (is_method && s == "self");
            if !known {
                return Err(Error::new(
                    s.span(),
                    format!(
                        "`skip({s})` names no parameter of `{fn_name}`; {}",
                        param_names()
                    ),
                ));
            }
        }
        let skipped = |n: &str| opts.skip.iter().any(|s| s == n);
        let self_skipped = skipped("self");

        let mut pieces = Vec::new();
        match &opts.key {
            Some(lit) => {
                let (key_pieces, used) =
                    template_pieces(lit, "key", a, fn_name, &skipped, &param_names)?;
                pieces = key_pieces;
                if is_method && !self_skipped && !used.iter().any(|u| u == "self") {
                    return Err(Error::new(
                        a.receiver.unwrap_or_else(Span::call_site),
                        format!(
                            "the key of `{fn_name}` does not use `self`: entries would be shared by every \
                             instance; add `<self.field>` to the key, or `skip(self)` if that sharing is intended"
                        ),
                    ));
                }
                for p in &a.params {
                    let n = p.ident.to_string();
                    if !skipped(&n) && !used.contains(&n) {
                        return Err(Error::new(
                            p.ident.span(),
                            format!(
                                "parameter `{n}` is not part of the key \"{}\", so calls that differ only in \
                                 `{n}` would return the same cached value; add `<{n}>` to the key, or list it \
                                 in `skip({n})` if it does not affect the result",
                                lit.value()
                            ),
                        ));
                    }
                }
            }
            None => {
                // The function's path, then `:<param>` for each parameter in the key.
                if is_method {
                    let n = fn_name.to_string();
                    pieces.push(Piece::Literal(quote!(::std::any::type_name::<Self>())));
                    pieces.push(Piece::Literal(quote!(::core::concat!("::", #n))));
                    if !self_skipped {
                        // Spanned at the receiver, so that a `Self` that is not a `KeyPart`
                        // is reported at `self`.
                        let span = a.receiver.unwrap_or_else(Span::call_site);
                        let s = syn::token::SelfValue { span };
                        pieces.push(Piece::Literal(quote!(":")));
                        pieces.push(Piece::Arg {
                            expr: quote!(#s),
                            span,
                        });
                    }
                } else {
                    let n = fn_name.to_string();
                    pieces.push(Piece::Literal(quote!(
                        ::core::concat!(::core::module_path!(), "::", #n)
                    )));
                }
                for p in &a.params {
                    if !skipped(&p.ident.to_string()) {
                        let id = &p.ident;
                        pieces.push(Piece::Literal(quote!(":")));
                        pieces.push(Piece::Arg {
                            expr: quote!(#id),
                            span: p.ty.span(),
                        });
                    }
                }
            }
        }
        let tags = opts
            .tags
            .iter()
            .map(|lit| template_pieces(lit, "tag", a, fn_name, &skipped, &param_names).map(|t| t.0))
            .collect::<syn::Result<Vec<_>>>()?;
        let purge = opts
            .purge
            .iter()
            .map(|lit| {
                template_pieces(lit, "purge path", a, fn_name, &skipped, &param_names).map(|t| t.0)
            })
            .collect::<syn::Result<Vec<_>>>()?;
        let key_params = a
            .params
            .iter()
            .filter(|p| !skipped(&p.ident.to_string()))
            .collect();
        Ok(Self {
            pieces,
            tags,
            purge,
            key_params,
        })
    }

    /// The key expression: a `String`, or a `cache_runtime::Key` with its tags.
    fn tokens(&self, cache: &Ident, _is_method: bool, _name: &Ident) -> TokenStream {
        let key = build_string(&self.pieces, cache);
        if self.tags.is_empty() {
            return key;
        }
        let tags = self.tags.iter().map(|t| build_string(t, cache));
        quote! {
            ::cache_runtime::Key::new(#key).with_tags(::std::vec![#(#tags),*])
        }
    }
}
