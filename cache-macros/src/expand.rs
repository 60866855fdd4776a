//! Code generation: the wrapper and its companions. Everything they do is a call into the
//! runtime (`::cache_runtime`, or the `crate = "..."` path); this file only arranges the
//! calls.
//!
//! The generated functions never call each other by path: a function without `self` may be
//! a free function or an associated one, and no path names it in both places. So each one
//! finds the cache through `__private::instance` (keyed by the call site and the
//! instantiation, see there), and a function without `self` carries the body itself.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Error, Ident, ItemFn};

use crate::erase;
use crate::forward::{Forwarded, Target};
use crate::options::{Options, Tier};
use crate::patterns;
use crate::signature::{Analyzed, Kind, Param, ReceiverKind};
use crate::template::{self, Segment};

pub fn expand(opts: Options, f: ItemFn) -> syn::Result<TokenStream> {
    let a = crate::signature::analyze(
        &f,
        opts.cache_none,
        opts.returns,
        &opts.krate,
        (&opts.skip, opts.tier != Tier::Local),
        opts.in_trait.is_some(),
    )?;
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
    let fwd = Forwarded::split(&f.attrs)?;
    let k = &opts.krate;

    let name = &f.sig.ident;
    let vis = &f.vis;
    let generics = &f.sig.generics;
    let where_clause = &generics.where_clause;
    let ret = &a.ret;
    let value_ty = &a.value_ty;
    let asyncness = &f.sig.asyncness;
    let is_method = a.receiver.is_some();
    // `in_trait`: the function alone (a trait impl may hold only the trait's items), so it
    // carries its body, as a function without `self` does.
    let in_trait = opts.in_trait.is_some();
    let carries_body = !is_method || in_trait;
    // A function that carries its body (see the module docs) keeps its parameters' `mut`; a
    // method passes them on to `self.NAME_uncached(..)`, so they lose it (else `unused_mut`).
    let inputs = &f.sig.inputs;
    // Parameter patterns (`Path(id): Path<u64>`) are taken whole (see `patterns`).
    let whole_inputs = patterns::whole(inputs, &a.params);
    let wrapper_inputs = if carries_body {
        whole_inputs
    } else {
        without_mut(&whole_inputs)
    };

    let uncached = format_ident!("{}_uncached", name);
    let invalidate = format_ident!("invalidate_{}", name);
    let populate = format_ident!("populate_{}", name);
    let lookup = format_ident!("lookup_{}", name);
    let refresh = format_ident!("refresh_{}", name);
    let entry = format_ident!("{}_entry", name);
    let accessor = format_ident!("{}_cache", name);

    let inst = Ident::new("__instance", Span::mixed_site());
    let cache = Ident::new("__cache", Span::mixed_site());
    let key = Ident::new("__key", Span::mixed_site());

    let build = build_tokens(&opts, &a);
    let name_str = name.unraw().to_string();
    let site = quote_spanned! {name.span()=>
        ::std::concat!(::std::file!(), ":", ::std::line!(), ":", ::std::column!())
    };
    // The wrapper and the functions with its parameters leave out the type arguments
    // that only skipped parameters have (see `erase`); the companions lack them already.
    let skipped_tys: Vec<&syn::Type> = a
        .params
        .iter()
        .filter(|p| p.skipped(|n| opts.skips(n)))
        .map(|p| &p.ty)
        .collect();
    let kept_tys: Vec<&syn::Type> = plan.key_params.iter().map(|p| &p.ty).chain([ret]).collect();
    let erasure = erase::erasure(generics, &skipped_tys, &kept_tys);
    // `self` skipped: `Self`'s type arguments are erased too, unless a kept type names them
    // (see `erase::erases_self`); the runtime reads the kept types, resolved, beside the
    // closure (compiled-out parameters left out: their types may not exist).
    let self_skipped = a.receiver.is_some() && opts.skips("self");
    let erase_self = erase::erases_self(self_skipped, &skipped_tys, &kept_tys).then(|| {
        let tys: Vec<&syn::Type> = plan
            .key_params
            .iter()
            .filter(|p| p.cfg.is_empty())
            .map(|p| &p.ty)
            .chain([ret])
            .collect();
        erase::phantom(generics, &tys)
    });
    // Through `__private::Check`: a value type that is not `Clone + Send + Sync + 'static`
    // is one error at its span, not one per generated function.
    let get_instance = |generated: &Ident, erased: u64| {
        let generated = generated.unraw().to_string();
        let slot = Ident::new("__SLOT", Span::mixed_site());
        let k = at(k, value_ty.span());
        let erasing = (erased != 0).then(|| quote!(.erasing(#erased)));
        let (erasing_self, here) = match &erase_self {
            Some(tys) => (
                quote!(.erasing_self()),
                quote!(::std::any::type_name_of_val(
                    &(|| (), ::std::marker::PhantomData::<#tys>)
                )),
            ),
            None => (quote!(), quote!(::std::any::type_name_of_val(&|| ()))),
        };
        // `unused_qualifications`: these paths are spanned at the user's tokens, and a
        // `crate = "..."` path without a leading `::` is qualified where the user may have
        // imported the item (`KeyPart`).
        quote_spanned! {value_ty.span()=>
            #[allow(unused_qualifications)]
            let #inst = {
                #[allow(unused_imports)]
                use #k::__private::{CheckInstance as _, CheckInstanceFailed as _};
                static #slot: #k::__private::Slot =
                    #k::__private::Slot::new(#generated, #name_str, #site)#erasing #erasing_self;
                (&#k::__private::Check::<#value_ty>::new()).instance(
                    &#slot,
                    #here,
                    #build,
                )
            };
            let #cache = &#inst.cache;
        }
    };
    let build_key = plan.tokens(k, &inst, &cache);
    // The key reads parameter patterns' bindings by reference: every pattern in the
    // functions that take every parameter, the key parameters' in the companions.
    let skipped = |n: &str| opts.skips(n);
    let refs_all = patterns::by_ref(&a.params, &skipped);
    let refs_key = patterns::by_ref(plan.key_params.iter().copied(), &skipped);
    let prologue = |generated: &Ident, erased: u64, refs: &TokenStream| {
        let get = get_instance(generated, erased);
        quote! {
            #get
            #refs
            #[allow(unused_qualifications)]
            let #key = #build_key;
        }
    };
    // Edge paths are built before the call (which may move the arguments) and enqueued
    // after it, once the tiers no longer hold the old value.
    let purge = Ident::new("__purge", Span::mixed_site());
    let result = Ident::new("__result", Span::mixed_site());
    let (build_purge, send_purge) = if plan.purge.is_empty() {
        (quote!(), quote!())
    } else {
        let paths = plan.purge.iter().map(|p| build_path(k, p));
        // Enqueued when dropped: after the write, or where a cancelled caller's future is
        // dropped (the purge is not lost with it).
        (
            quote!(#[allow(unused_qualifications)] let #purge = #k::edge::PurgeOnDrop::new(::std::vec![#(#paths),*]);),
            quote!(::std::mem::drop(#purge);),
        )
    };

    // `self` first for methods; then the parameters.
    let self_arg = is_method.then(|| quote!(&self,));
    let call_args = a.params.iter().map(|p| {
        let (cfg, i) = (&p.cfg, &p.ident);
        quote!(#cfg #i)
    });
    let block = &f.block;
    // A function that carries its body destructures its parameter patterns first.
    let body = &patterns::with_bindings(block, &a.params);
    // `#[async_trait]`'s boxed future, made before the wrapper's own (see the wrapper).
    let boxed_body = Ident::new("__body", Span::mixed_site());
    // The body as a closure (blocking) or a future (async).
    let (body_closure, body_future) = if a.boxed.is_some() {
        (quote!(), quote!(#boxed_body))
    } else if carries_body {
        (quote!(move || -> #ret #body), quote!(async move #body))
    } else {
        let call = quote!(self.#uncached(#(#call_args),*));
        (quote!(move || #call), call)
    };
    let key_params: Vec<TokenStream> = plan
        .key_params
        .iter()
        .map(|p| {
            let (attrs, i, t) = (&p.cfg_attrs, &p.ident, &p.ty);
            quote!(#attrs #i: #t)
        })
        .collect();
    // `populate_NAME`'s value parameter: a name no parameter has (it shows in the docs).
    let value_arg = ["value", "cached_value", "new_value"]
        .into_iter()
        .map(String::from)
        .chain((1..).map(|n| format!("value_{n}")))
        .find(|v| {
            !a.names()
                .chain(a.params.iter().map(|p| &p.ident))
                .any(|n| n.unraw() == v.as_str())
        })
        .map(|v| Ident::new(&v, Span::call_site()))
        .expect("finitely many parameters");

    let shape = match a.kind {
        Kind::Plain => quote!(#k::__private::Plain),
        Kind::OkOnly => quote!(#k::__private::OkOnly),
        Kind::SomeOnly => quote!(#k::__private::SomeOnly),
        Kind::SomeOrNone => quote!(#k::__private::SomeOrNone),
    };
    let sharing = match a.kind {
        Kind::Plain | Kind::SomeOrNone => quote!(#k::Sharing::<#ret>::none()),
        Kind::SomeOnly => quote!(#k::Sharing::<#ret>::absent()),
        Kind::OkOnly => quote! {
            #k::Sharing::<#ret>::new(
                |__r| match __r {
                    ::std::result::Result::Err(__e) => {
                        #[allow(unused_imports)]
                        use #k::__private::{ShareClone as _, ShareNever as _};
                        (&#k::__private::Probe(__e)).share()
                    }
                    ::std::result::Result::Ok(_) => ::std::option::Option::None,
                },
                |__b| {
                    #[allow(unused_imports)]
                    use #k::__private::{UnshareClone as _, UnshareNever as _};
                    (&#k::__private::TypeProbe::<
                        <#ret as #k::__private::ResultLike>::Err,
                    >::new())
                    .unshare(__b)
                    .map(::std::result::Result::Err)
                },
            )
        },
    };

    let (aw, get_or_load, get_entry, inv, pop, look, refr) = if a.is_async {
        let (get_or_load, get_entry) = if detached {
            // The body may outlive the call (soft timeout, refresh ahead): owned arguments.
            (
                // The key as written: a local hit reads it in place, unowned.
                quote!(get_or_load_detached_keyed::<#ret, #shape, _, _>(
                    #key, move || #body_future, #sharing)),
                quote!(get_or_load_entry_detached_with::<#ret, #shape, _, _>(
                    #k::key::IntoKey::into_key(#key), move || #body_future, #sharing)),
            )
        } else {
            (
                // With a local tier, the body's future is made and the miss path boxed only
                // on a local miss: a hit's future stays small. A Redis-only cache has no hit
                // to spare, and keeps its miss path inline (no allocation per call).
                if opts.tier == Tier::Redis {
                    quote!(get_or_load::<#ret, #shape>(#key, #body_future, &#sharing))
                } else {
                    quote!(get_or_load_with::<#ret, #shape, _, _>(
                        #key, move || #body_future, &#sharing))
                },
                quote!(get_or_load_entry_with::<#ret, #shape, _, _>(
                    #key, move || #body_future, &#sharing)),
            )
        };
        (
            quote!(.await),
            get_or_load,
            get_entry,
            quote!(invalidate),
            quote!(populate),
            quote!(lookup),
            quote!(refresh::<#ret, #shape>(#key, #body_future)),
        )
    } else {
        (
            quote!(),
            quote!(get_or_load_blocking::<#ret, #shape>(#key, #body_closure, &#sharing)),
            quote!(get_or_load_entry_blocking::<#ret, #shape>(#key, #body_closure, &#sharing)),
            quote!(invalidate_blocking),
            quote!(populate_blocking),
            quote!(lookup_blocking),
            quote!(refresh_blocking::<#ret, #shape>(#key, #body_closure)),
        )
    };

    // Links only where the page is known: a method's companions are on its type's page, so
    // its anchor (not `Self::`, which rustdoc cannot resolve in an `impl dyn Trait` block); a
    // function without `self` may be free or associated.
    let link = if is_method {
        format!("[`{name}`](#method.{})", name.unraw())
    } else {
        format!("`{name}`")
    };
    // Spanned at the function's name, where lints read them (see `doc_attr`).
    let doc = |text: String| doc_attr(&text, name.span());
    // An `# Errors` section on every generated function that returns a `Result`, as
    // `clippy::missing_errors_doc` (pedantic) asks of public ones.
    let body_errors = if matches!(a.kind, Kind::OkOnly) {
        format!("\n\n# Errors\n\nThe body's `Err`, as {link} returns it (never cached).")
    } else {
        String::new()
    };
    let doc_uncached = doc(format!(
        "The body of {link}, without the cache.{body_errors}"
    ));
    let doc_invalidate = doc(format!(
        "Removes the entry of {link} for these arguments from every tier.\n\n# Errors\n\n\
         When Redis did not confirm the delete (kept and retried); the local tier is cleared \
         all the same."
    ));
    let doc_populate = doc(format!(
        "Writes `{value_arg}` as the entry of {link} for these arguments into every tier \
         (write-through).\n\n# Errors\n\nWhen Redis did not take it; the local tier is \
         written all the same."
    ));
    let doc_lookup = doc(format!(
        "The cached value of {link} for these arguments, without running its body."
    ));
    let doc_refresh = doc(format!(
        "Runs the body of {link} now and stores a cacheable result in every tier.{body_errors}"
    ));
    let doc_entry = doc(format!(
        "{link} with the value wrapped in a `cache_runtime::Entry`: its ETag, creation time, \
         tags and source, for HTTP responses (see `cache_runtime::http`).{body_errors}"
    ));
    let doc_accessor = doc(format!(
        "The cache of {link} (of this instantiation, for a generic one): its name, tiers, \
         stats, local clear."
    ));
    // At the return type: a value that is not `Clone` is reported there, not at the
    // attribute. (So a `crate = "..."` path without a leading `::` is there as if the user
    // wrote it: `NAME_entry` allows `unused_qualifications`.)
    let entry_ty = respan(
        quote!(<#shape as #k::shape::EntryShape<#ret>>::Entries),
        ret.span(),
    );
    let (acc_generics, acc_where) = static_generics(&erasure.kept);

    let [at_wrapper, at_uncached, at_entry, at_refresh, at_companion, at_accessor] = [
        Target::Wrapper,
        Target::Uncached,
        Target::Entry,
        Target::Refresh,
        Target::Companion,
        Target::Accessor,
    ]
    .map(|t| fwd.for_target(t));

    let p_wrapper = prologue(name, erasure.mask, &refs_all);
    let alias_check = alias_check(k, &a);
    // With `in_trait` the wrapper is also the body: it takes the attributes of both (a
    // `#[tracing::instrument]` below `#[cached]` then traces every call, hits included).
    let at_wrapper = if in_trait {
        fwd.for_targets(&[Target::Wrapper, Target::Uncached])
    } else {
        at_wrapper
    };
    let wrapper = match &a.boxed {
        None => quote! {
            #at_wrapper
            #vis #asyncness fn #name #generics (#wrapper_inputs) -> #ret #where_clause {
                #alias_check
                #p_wrapper
                #cache.#get_or_load #aw
            }
        },
        // `#[async_trait]` went first: the key is built from the arguments before its boxed
        // future takes them, and the wrapper returns a boxed future of its own.
        Some(boxed_ret) => quote! {
            #at_wrapper
            #vis fn #name #generics (#wrapper_inputs) -> #boxed_ret #where_clause {
                #alias_check
                #p_wrapper
                let #boxed_body = #body;
                ::std::boxed::Box::pin(async move { #cache.#get_or_load #aw })
            }
        },
    };
    if in_trait {
        return Ok(wrapper);
    }
    // A trait impl may hold only the trait's items, and an attribute cannot see whether it
    // is in one: there every generated item below is an error (E0407). This one comes first
    // and its name is the explanation. Everywhere else it is an unused private constant.
    let hint = format_ident!(
        "__{}_in_a_trait_impl_needs_the_in_trait_option",
        name.unraw(),
        span = name.span()
    );
    let p_entry = prologue(&entry, erasure.mask, &refs_all);
    let p_invalidate = prologue(&invalidate, 0, &refs_key);
    let p_populate = prologue(&populate, 0, &refs_key);
    let p_lookup = prologue(&lookup, 0, &refs_key);
    let p_refresh = prologue(&refresh, erasure.mask, &refs_all);
    let get_accessor = get_instance(&accessor, 0);
    // The companions of a method taking `self` by value take `&self`, to build the key only.
    // An `async fn` would hold that borrow in its future, which would then be `Send` only
    // where `Self: Sync` (the method's own needs `Self: Send`): they build the key and return
    // a future that does not borrow `self`.
    let detach_self = a.is_async && a.receiver_kind == ReceiverKind::Owned;
    let c_async = if detach_self {
        quote!()
    } else {
        quote!(#asyncness)
    };
    let c_ret = |ty: TokenStream| {
        if detach_self {
            quote!(impl ::std::future::Future<Output = #ty>)
        } else {
            ty
        }
    };
    let c_body = |stmts: TokenStream| {
        if detach_self {
            quote!(async move { #stmts })
        } else {
            stmts
        }
    };
    let unit_result = c_ret(quote!(::std::result::Result<(), #k::CacheError>));
    let lookup_ret = c_ret(quote!(::std::option::Option<#value_ty>));
    let invalidate_body = c_body(quote! {
        let #result = #cache.#inv(#key) #aw;
        #send_purge
        #result
    });
    let populate_body = c_body(quote! {
        let #result = #cache.#pop(#key, #value_arg) #aw;
        #send_purge
        #result
    });
    let lookup_body = c_body(quote!(#cache.#look(#key) #aw));
    let companion_generics = &erasure.kept;
    let companion_where = &companion_generics.where_clause;

    Ok(quote! {
        #[doc(hidden)]
        #[allow(dead_code, non_upper_case_globals)]
        #at_accessor
        const #hint: () = ();

        #wrapper

        #doc_uncached
        // A function without `self` carries its body, so this may be unused. A body that
        // could be `const` cannot be: `#[cached]` refuses `const fn` (its wrapper is not).
        #[allow(dead_code, clippy::missing_const_for_fn)]
        #at_uncached
        #vis #asyncness fn #uncached #generics (#inputs) -> #ret #where_clause #block

        #doc_entry
        // Companions a caller does not use are not dead code of theirs (the lint would
        // fire where a `macro_rules!` writes the function, in a module no one reaches).
        // Its return type names the runtime at the user's return type (see `entry_ty`).
        #[allow(dead_code, unused_qualifications)]
        #at_entry
        #vis #asyncness fn #entry #generics (#wrapper_inputs) -> #entry_ty #where_clause {
            #p_entry
            #cache.#get_entry #aw
        }

        #doc_invalidate
        #[allow(dead_code)]
        #at_companion
        #vis #c_async fn #invalidate #companion_generics (#self_arg #(#key_params),*)
            -> #unit_result #companion_where
        {
            #p_invalidate
            #build_purge
            #invalidate_body
        }

        #doc_populate
        // One parameter more than the function: a function at clippy's limit would pass it.
        #[allow(clippy::too_many_arguments, dead_code)]
        #at_companion
        #vis #c_async fn #populate #companion_generics (#self_arg #(#key_params,)* #value_arg: #value_ty)
            -> #unit_result #companion_where
        {
            #p_populate
            #build_purge
            #populate_body
        }

        #doc_lookup
        #[allow(dead_code)]
        #at_companion
        #vis #c_async fn #lookup #companion_generics (#self_arg #(#key_params),*)
            -> #lookup_ret #companion_where
        {
            #p_lookup
            #lookup_body
        }

        #doc_refresh
        #[allow(dead_code)]
        #at_refresh
        #vis #asyncness fn #refresh #generics (#wrapper_inputs) -> #ret #where_clause {
            #p_refresh
            #build_purge
            let #result = #cache.#refr #aw;
            #send_purge
            #result
        }

        #doc_accessor
        #[allow(dead_code)]
        #at_accessor
        #vis fn #accessor #acc_generics () -> &'static #k::Cache<#value_ty> #acc_where {
            #get_accessor
            #cache
        }
    })
}

/// The runtime's path with every token at `span`, for code spanned at a user token: a
/// diagnostic about that code then points at the token alone.
pub(crate) fn at(k: &syn::Path, span: Span) -> TokenStream {
    respan(k.to_token_stream(), span)
}

/// `ts` with every token at `span`.
fn respan(ts: TokenStream, span: Span) -> TokenStream {
    ts.into_iter()
        .map(|mut t| {
            if let proc_macro2::TokenTree::Group(g) = &t {
                let mut ng = proc_macro2::Group::new(g.delimiter(), respan(g.stream(), span));
                ng.set_span(span);
                t = proc_macro2::TokenTree::Group(ng);
            } else {
                t.set_span(span);
            }
            t
        })
        .collect()
}

/// The inputs with `mut` removed from `mut name: T` patterns.
fn without_mut(
    inputs: &Punctuated<syn::FnArg, syn::Token![,]>,
) -> Punctuated<syn::FnArg, syn::Token![,]> {
    let mut out = inputs.clone();
    for arg in out.iter_mut() {
        match arg {
            syn::FnArg::Typed(pt) => {
                if let syn::Pat::Ident(pi) = &mut *pt.pat {
                    pi.mutability = None;
                }
            }
            // `mut self` (by value): the binding's `mut`, not a `&mut` borrow.
            syn::FnArg::Receiver(r) if r.reference.is_none() => r.mutability = None,
            syn::FnArg::Receiver(_) => {}
        }
    }
    out
}

/// The accessor takes no parameters, so it keeps only the type and const parameters (an
/// unused lifetime parameter is a lint) and the `where` predicates that name no lifetime
/// parameter.
fn static_generics(generics: &syn::Generics) -> (TokenStream, TokenStream) {
    use syn::{GenericParam, TypeParamBound, WherePredicate};
    let lifetimes: Vec<&syn::Lifetime> = generics.lifetimes().map(|l| &l.lifetime).collect();
    let names_lifetime = |tokens: TokenStream| {
        let text = tokens.to_string();
        lifetimes.iter().any(|l| {
            let l = l.to_string();
            text.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '\''))
                .any(|w| w == l)
        })
    };
    let mut g = generics.clone();
    g.params = g
        .params
        .into_iter()
        .filter(|p| !matches!(p, GenericParam::Lifetime(_)))
        .map(|mut p| {
            if let GenericParam::Type(t) = &mut p {
                t.bounds = std::mem::take(&mut t.bounds)
                    .into_iter()
                    .filter(|b: &TypeParamBound| !names_lifetime(b.to_token_stream()))
                    .collect();
            }
            p
        })
        .collect();
    if let Some(w) = &mut g.where_clause {
        w.predicates = std::mem::take(&mut w.predicates)
            .into_iter()
            .filter(|p| match p {
                WherePredicate::Type(t) => !names_lifetime(t.to_token_stream()),
                _ => false,
            })
            .collect();
    }
    if g.params.is_empty() {
        g.lt_token = None;
        g.gt_token = None;
    }
    let where_clause = match &g.where_clause {
        Some(w) if !w.predicates.is_empty() => quote!(#w),
        _ => quote!(),
    };
    (quote!(#g), where_clause)
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
    if a.boxed.is_some() {
        return Err(Error::new(
            span,
            format!(
                "`{name}` runs the body in the background after the caller returned, which the \
                 future of an `#[async_trait]` method (it borrows its arguments for \
                 `'async_trait`) cannot do; cache a free `async fn` taking owned arguments and \
                 call it from the method"
            ),
        ));
    }
    if !a.is_async {
        return Err(Error::new(
            span,
            format!(
                "`{name}` needs an `async fn`: it finishes or starts the body in the background"
            ),
        ));
    }
    // A receiver taken by value (`self: Arc<Self>`) is owned like the other arguments.
    let owned_receiver = a.receiver_kind == ReceiverKind::Owned
        && a.receiver_ty.as_ref().and_then(borrowed).is_none();
    if let (Some(recv), false) = (a.receiver, owned_receiver) {
        return Err(Error::new(
            recv,
            format!(
                "`{name}` runs the body in the background after the caller returned, which a \
                 method borrowing `self` cannot do; take `self: Arc<Self>` (clone the `Arc` to \
                 call it), or use a free function taking owned arguments"
            ),
        ));
    }
    for p in &a.params {
        if let Some(span) = borrowed(&p.ty) {
            let shown = match &p.pattern {
                Some(pat) => pat.to_token_stream().to_string(),
                None => p.ident.to_string(),
            };
            return Err(Error::new(
                span,
                format!(
                    "`{name}` runs the body in the background after the caller returned, so parameter \
                     `{}` must be owned (e.g. `String` instead of `&str`, `Arc<T>` instead of `&T`)",
                    shown
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

/// For a plain return type: a compile error, at the return type, if it is a `Result` or an
/// `Option` behind an alias, which the attribute cannot see by name (caching an `AppResult`
/// whole would cache its errors). Resolved by type: the probe's method is found on the
/// `Result` / `Option` impls first (autoref), else on the one for every type; in a generic
/// function a type parameter is a plain value. Nothing runs.
fn alias_check(k: &syn::Path, a: &Analyzed) -> TokenStream {
    let checks = a.alias_checks;
    if !(checks.result || checks.option) {
        return quote!();
    }
    let ret = &a.ret;
    let k = at(k, ret.span());
    let result = checks
        .result
        .then(|| quote_spanned!(ret.span()=> ReturnShapeAliasedResult as _,));
    let option = checks
        .option
        .then(|| quote_spanned!(ret.span()=> ReturnShapeAliasedOption as _,));
    quote_spanned! {ret.span()=>
        #[allow(unused_qualifications)]
        let () = {
            #[allow(unused_imports)]
            use #k::__private::{ReturnShapeAny as _, #result #option};
            #k::__private::return_shape_declared(
                (&&#k::__private::ReturnProbe::<#ret>::NEW).return_shape(),
            );
        };
    }
}

/// The closure that builds the cache of one instantiation from the options.
fn build_tokens(opts: &Options, a: &Analyzed) -> TokenStream {
    let k = &opts.krate;
    let v = &a.value_ty;
    let vspan = v.span();
    let info = Ident::new("__info", Span::mixed_site());
    let explicit = match &opts.name {
        Some(n) => quote!(::std::option::Option::Some(#n)),
        None => quote!(::std::option::Option::None),
    };
    let cache_name = quote!(#info.name(#explicit));
    let ttl = opts.ttl_ms;
    let version = opts.version;
    let mut chain = quote!(.ttl(::std::time::Duration::from_millis(#ttl)).version(#version));
    if let Some(template) = &opts.key {
        // Functions over the same template, version and type share entries, so `clear()`.
        chain.extend(quote!(.key_space(#template)));
    }
    if let Some(ms) = opts.local_ttl_ms {
        chain.extend(quote!(.local_ttl(::std::time::Duration::from_millis(#ms))));
    }
    if let Some((ms, _)) = opts.none_ttl_ms {
        chain.extend(quote!(.none_ttl(::std::time::Duration::from_millis(#ms))));
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
                quote!(::std::option::Option::Some(::std::time::Duration::from_millis(#ms)))
            }
            None => quote!(::std::option::Option::None),
        };
        chain.extend(quote!(.stale(
            ::std::time::Duration::from_millis(#stale),
            ::std::time::Duration::from_millis(#retry),
            #timeout
        )));
    }
    if let Some(j) = &opts.jitter {
        chain.extend(quote!(.jitter(#j)));
    }
    if let Some((ms, _)) = opts.soft_timeout {
        chain.extend(quote!(.soft_timeout(::std::time::Duration::from_millis(#ms))));
    }
    if let Some(f) = &opts.refresh_ahead {
        chain.extend(quote!(.refresh_ahead(#f)));
    }
    if let Some(mode) = opts.mode {
        let m = Ident::new(mode, Span::call_site());
        chain.extend(quote!(.mode(#k::Mode::#m)));
    }
    if let Some(ms) = opts.lock_lease_ms {
        chain.extend(quote!(.lock(::std::time::Duration::from_millis(#ms))));
    }
    // The bounds are checked through `__private::Check` (see there): a value type that is
    // not `Clone + Send + Sync` or, with a Redis tier, not serde is one error at its span,
    // and the `.tier(...)`/`.build()` calls that follow report nothing more.
    let b = Ident::new("__builder", Span::mixed_site());
    let ks = at(k, vspan);
    let etag = (opts.etag && opts.tier == Tier::Local).then(|| {
        quote_spanned! {vspan=>
            let #b = (&#ks::__private::Check::<#v>::new()).redis(#b);
            let #b = #b.etag();
        }
    });
    let max_bytes = opts.max_bytes.map(|n| {
        quote_spanned! {vspan=>
            let #b = (&#ks::__private::Check::<#v>::new()).redis(#b);
            let #b = #b.max_bytes(#n);
        }
    });

    let tier = match opts.tier {
        Tier::Local => None,
        Tier::Redis => Some(quote!(#k::Tier::Redis)),
        Tier::LocalRedis => Some(quote!(#k::Tier::LocalRedis)),
    };
    let redis_steps = tier.map(|tier| {
        quote_spanned! {vspan=>
            let #b = (&#ks::__private::Check::<#v>::new()).redis(#b);
            // A compile error naming the feature when the runtime is built without `redis`.
            let #b = #b.tier(#ks::__private::redis_tier(#tier));
        }
    });
    let build = quote_spanned! {vspan=>
        #[allow(unused_imports)]
        use #ks::__private::{
            CheckRedis as _, CheckRedisFailed as _, CheckValue as _, CheckValueFailed as _,
        };
        let #b = #ks::Cache::<#v>::builder(#cache_name) #chain;
        #redis_steps
        #etag
        #max_bytes
        (&#ks::__private::Check::<#v>::new()).value(#b).build()
    };
    quote! {
        |#info: &#k::__private::InstanceInfo<'_>| -> #k::Cache<#v> { #build }
    }
}

/// A key or tag: `writer` (a `KeyWriter` expression) fed with the pieces, as the writer
/// itself, whose stack buffer a local hit reads without allocating.
fn build_writer(k: &syn::Path, pieces: &[Piece], writer: TokenStream) -> TokenStream {
    let w = Ident::new("__w", Span::mixed_site());
    let steps = pieces.iter().map(|p| match p {
        Piece::Literal { text, cfg } => quote!(#cfg #w.literal(#text);),
        Piece::Arg { expr, span, cfg } => {
            let k = at(k, *span);
            let write = quote_spanned! {*span=>
                #k::key::KeyPart::write_key(&(#expr), &mut #w);
            };
            quote!(#cfg #write)
        }
    });
    quote! {{
        let mut #w = #writer;
        #(#steps)*
        #w
    }}
}

/// A purge path: literals as written, arguments percent-encoded.
fn build_path(k: &syn::Path, pieces: &[Piece]) -> TokenStream {
    let p = Ident::new("__path", Span::mixed_site());
    let steps = pieces.iter().map(|piece| match piece {
        Piece::Literal { text, cfg } => quote!(#cfg #p.push_str(#text);),
        Piece::Arg { expr, span, cfg } => {
            let k = at(k, *span);
            let push = quote_spanned! {*span=>
                #k::__private::push_path_arg(&mut #p, &(#expr));
            };
            quote!(#cfg #push)
        }
    });
    quote! {{
        let mut #p = ::std::string::String::new();
        #(#steps)*
        #p
    }}
}

/// `cfg`: the `#[cfg(...)]` of the parameter a piece is there for, on the statement that
/// writes it: a parameter compiled out writes nothing.
enum Piece {
    Literal {
        text: TokenStream,
        cfg: TokenStream,
    },
    Arg {
        expr: TokenStream,
        span: Span,
        cfg: TokenStream,
    },
}

struct KeyPlan<'a> {
    /// No `key = "..."`: the function's path and every key parameter.
    default_key: bool,
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
            Segment::Literal(text) => {
                if let Some(p) = format_style_placeholder(&text, a) {
                    return Err(Error::new(
                        lit.span(),
                        format!(
                            "`{{{p}}}` in the {what} of `{fn_name}` is `format!` syntax; placeholders \
                             are written `<{p}>`"
                        ),
                    ));
                }
                pieces.push(Piece::Literal {
                    text: quote!(#text),
                    cfg: TokenStream::new(),
                })
            }
            Segment::Placeholder { root, fields } => {
                let is_self = root == "self";
                if is_self && !is_method {
                    return Err(Error::new(
                        lit.span(),
                        format!(
                            "placeholder `<{root}>` in the {what}: `{fn_name}` is not a method (it has no `self`); {}",
                            param_names()
                        ),
                    ));
                }
                // A parameter's name, or a binding of its pattern (`id` of `Path(id)`).
                let found = a
                    .params
                    .iter()
                    .find_map(|p| Some((p.names.iter().find(|n| n.unraw() == root)?, p)));
                let param = found.map(|(n, _)| n);
                if !is_self && param.is_none() {
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
                // Shown at the template, resolved where the parameter is declared: a
                // function a `macro_rules!` writes, with the template passed in by its caller,
                // declares its parameters under the macro's hygiene, not the literal's.
                let root_tokens = match param {
                    Some(name) => {
                        let mut id = name.clone();
                        id.set_span(name.span().located_at(lit.span()));
                        quote!(#id)
                    }
                    None => {
                        let declared = a.receiver.unwrap_or_else(|| lit.span());
                        let s = syn::token::SelfValue {
                            span: declared.located_at(lit.span()),
                        };
                        quote!(#s)
                    }
                };
                let field_tokens = fields.iter().map(|f| {
                    if f.chars().all(|c| c.is_ascii_digit()) {
                        let idx = syn::Index {
                            index: f.parse().unwrap_or(0),
                            span: lit.span(),
                        };
                        quote!(.#idx)
                    } else {
                        // `<self.type>` and `<self.r#type>` both name the field `r#type`.
                        let id = match syn::parse_str::<Ident>(f) {
                            Ok(_) => Ident::new(f, lit.span()),
                            Err(_) => Ident::new_raw(f, lit.span()),
                        };
                        quote!(.#id)
                    }
                });
                pieces.push(Piece::Arg {
                    expr: quote!(#root_tokens #(#field_tokens)*),
                    span: lit.span(),
                    cfg: found.map(|(_, p)| p.cfg.clone()).unwrap_or_default(),
                });
                used.push(root);
            }
        }
    }
    Ok((pieces, used))
}

/// A `{id}` / `{self.id}` in a template's literal text that names a parameter (or `self` of
/// a method): `format!` syntax where `<id>` was meant.
fn format_style_placeholder(text: &str, a: &Analyzed) -> Option<String> {
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after.find('}')?;
        let inner = after[..close].trim();
        let root = inner.split('.').next().unwrap_or_default();
        let names_param =
            a.names().any(|n| n.unraw() == root) || (root == "self" && a.receiver.is_some());
        if names_param
            && inner
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '.')
        {
            return Some(inner.to_string());
        }
        rest = &after[close + 1..];
    }
    None
}

impl<'a> KeyPlan<'a> {
    fn new(opts: &Options, a: &'a Analyzed, fn_name: &Ident) -> syn::Result<Self> {
        let is_method = a.receiver.is_some();
        let param_names = || {
            let mut names: Vec<String> = a.names().map(|n| n.unraw().to_string()).collect();
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
            let known = a.names().any(|n| n.unraw() == s.unraw()) || (is_method && s == "self");
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
        let skipped = |n: &str| opts.skips(n);
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
                for name in a.names() {
                    let n = name.unraw().to_string();
                    if !skipped(&n) && !used.contains(&n) {
                        return Err(Error::new(
                            name.span(),
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
                // The function's path (written by `Instance::default_key`, with its type
                // arguments), then `:<param>` for each parameter in the key.
                if let (Some(span), false) = (a.receiver, self_skipped) {
                    // Spanned at the receiver, so that a `Self` that is not a `KeyPart`
                    // is reported at `self`.
                    let s = syn::token::SelfValue { span };
                    // `self: &Arc<Self>` and `self: Arc<Self>` are keyed as the `&Self` they
                    // deref to, as in the companions (which take `&self`): one requirement,
                    // one error.
                    let expr = match a.receiver_kind {
                        ReceiverKind::Borrowed => quote!(#s),
                        ReceiverKind::BorrowedPointer => {
                            quote_spanned!(span=> ::std::convert::identity::<&Self>(#s))
                        }
                        ReceiverKind::Owned => {
                            quote_spanned!(span=> ::std::convert::identity::<&Self>(&#s))
                        }
                    };
                    pieces.push(Piece::Literal {
                        text: quote!(":"),
                        cfg: TokenStream::new(),
                    });
                    pieces.push(Piece::Arg {
                        expr,
                        span,
                        cfg: TokenStream::new(),
                    });
                }
                for p in &a.params {
                    for id in &p.names {
                        if !skipped(&id.unraw().to_string()) {
                            // At the type of a plain parameter, at a pattern's binding.
                            let span = match p.pattern {
                                None => p.ty.span(),
                                Some(_) => id.span(),
                            };
                            // A parameter compiled out is left out, separator included.
                            pieces.push(Piece::Literal {
                                text: quote!(":"),
                                cfg: p.cfg.clone(),
                            });
                            pieces.push(Piece::Arg {
                                expr: quote!(#id),
                                span,
                                cfg: p.cfg.clone(),
                            });
                        }
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
        let key_params = a.params.iter().filter(|p| !p.skipped(skipped)).collect();
        Ok(Self {
            default_key: opts.key.is_none(),
            pieces,
            tags,
            purge,
            key_params,
        })
    }

    /// The key expression: a `KeyWriter`, or a `TaggedKey` with its tags (both on the stack).
    /// `inst`: the `__private::Instance`, whose writers start the key; `cache`: the cache,
    /// whose plain writer builds tags (tags are shared by every cache and instantiation).
    fn tokens(&self, k: &syn::Path, inst: &Ident, cache: &Ident) -> TokenStream {
        let writer = if self.default_key {
            quote!(#inst.default_key())
        } else {
            quote!(#inst.template_key())
        };
        let key = build_writer(k, &self.pieces, writer);
        if self.tags.is_empty() {
            return key;
        }
        let tags = self
            .tags
            .iter()
            .map(|t| build_writer(k, t, quote!(#cache.key_writer())));
        quote! {
            #k::key::TaggedKey::new(#key, [#(#tags),*])
        }
    }
}

/// `#[doc = text]` at `span`, the function's name. Lints read generated docs only there:
/// clippy skips doc attributes spanned in a macro's expansion, and `missing_errors_doc`
/// (pedantic) would then find a public companion returning `Result` undocumented.
fn doc_attr(text: &str, span: Span) -> TokenStream {
    let lit = syn::LitStr::new(text, span);
    quote_spanned!(span=> #[doc = #lit])
}
