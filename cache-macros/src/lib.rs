//! The `#[cached]` attribute. Use it through `cache_runtime::cached`; this crate only
//! generates glue that calls `::cache_runtime`.

mod duration;
mod expand;
mod forward;
mod options;
mod signature;
mod template;

use proc_macro::TokenStream;

/// Caches a function in-process, in Redis, or both, and generates `invalidate_<fn>`,
/// `populate_<fn>`, `lookup_<fn>`, `refresh_<fn>`, `<fn>_uncached` and `<fn>_cache`.
/// See the `cache_runtime` crate documentation for the options.
#[proc_macro_attribute]
pub fn cached(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item2: proc_macro2::TokenStream = item.clone().into();
    let result = options::parse(attr.into()).and_then(|opts| {
        let f: syn::ItemFn = syn::parse2(item2.clone()).map_err(|e| {
            syn::Error::new(
                e.span(),
                "#[cached] applies to functions and `&self` methods",
            )
        })?;
        expand::expand(opts, f)
    });
    match result {
        Ok(ts) => ts.into(),
        // Keep the function itself so that one attribute error does not cascade into
        // "cannot find function" errors at every call site.
        Err(e) => {
            let mut out = e.to_compile_error();
            out.extend(item2);
            out.into()
        }
    }
}

/// The key separators as an array literal, `&[':', '/', ...]`, for
/// `cache_runtime::key::SEPARATORS`: one definition shared by the runtime's key encoding
/// and the macro's template check. Not a public API.
#[doc(hidden)]
#[proc_macro]
pub fn __key_separators(input: TokenStream) -> TokenStream {
    if !input.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "`__key_separators!` takes no input",
        )
        .to_compile_error()
        .into();
    }
    let chars = template::SEPARATORS;
    quote::quote!(&[#(#chars),*]).into()
}
