//! Which function shapes can be cached, and what their parts are.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{Error, FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Type};

use crate::options::Returns;

pub struct Param {
    pub ident: Ident,
    pub ty: Type,
}

pub enum Kind {
    /// Every value is cached.
    Plain,
    /// `Result<T, E>`: `Ok` is cached.
    OkOnly,
    /// `Option<T>`: `Some` is cached.
    SomeOnly,
    /// `Option<T>` with `cache_none`.
    SomeOrNone,
}

pub struct Analyzed {
    pub is_async: bool,
    /// Span of `self` when the function is a `&self` method.
    pub receiver: Option<Span>,
    pub params: Vec<Param>,
    pub ret: Type,
    pub kind: Kind,
    /// The cached value's type: `T` of `Result<T, _>` / `Option<T>`, or the return type.
    pub value_ty: Type,
    /// A plain return type that may still be a `Result` / an `Option` behind an alias
    /// (`AppResult<T>`): the wrapper checks it by type (`__private::ReturnProbe`) unless
    /// the attribute said `result = false` / `option = false`.
    pub alias_checks: AliasChecks,
}

/// Which aliases a plain return type is checked against (none for another kind).
#[derive(Clone, Copy)]
pub struct AliasChecks {
    pub result: bool,
    pub option: bool,
}

pub fn analyze(
    f: &ItemFn,
    cache_none: Option<Span>,
    returns: Returns,
    krate: &syn::Path,
    skip: &[Ident],
) -> syn::Result<Analyzed> {
    let sig = &f.sig;
    if let Some(c) = &sig.constness {
        return Err(Error::new(c.span, "`const fn` cannot be cached"));
    }
    if let Some(u) = &sig.unsafety {
        return Err(Error::new(
            u.span,
            "`unsafe fn` cannot be cached; wrap the unsafe call in a safe function",
        ));
    }
    if let Some(abi) = &sig.abi {
        return Err(Error::new_spanned(
            abi,
            "`extern` functions cannot be cached",
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(Error::new_spanned(v, "variadic functions cannot be cached"));
    }
    // Generic functions (and functions of a generic `impl`) are fine: each instantiation
    // gets its own cache (see `cache_runtime::__private::instance`).

    let mut receiver = None;
    let mut params = Vec::new();
    for arg in &sig.inputs {
        match arg {
            FnArg::Receiver(r) => {
                if r.colon_token.is_some() {
                    return Err(Error::new_spanned(
                        r,
                        "only `&self` methods can be cached (not `self: Type`)",
                    ));
                }
                match (&r.reference, &r.mutability) {
                    (Some(_), None) => receiver = Some(r.self_token.span),
                    (Some(_), Some(m)) => return Err(Error::new(
                        m.span,
                        "`&mut self` methods cannot be cached: a cache hit skips the body, so its \
                             mutation would silently not happen; take `&self`",
                    )),
                    (None, _) => {
                        return Err(Error::new(
                            r.self_token.span,
                            "methods taking `self` by value cannot be cached; take `&self`",
                        ))
                    }
                }
            }
            FnArg::Typed(pt) => {
                let ident =
                    match &*pt.pat {
                        Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => {
                            pi.ident.clone()
                        }
                        Pat::Wild(w) => return Err(Error::new_spanned(
                            w,
                            "cached functions need a name for every parameter (the key is built \
                             from them): name it, e.g. `_pool: &Pool`, and list it in \
                             `skip(_pool)` if it does not affect the result",
                        )),
                        other => {
                            return Err(Error::new_spanned(
                                other,
                                "cached functions need plain parameter names (`id: u64`), not \
                             patterns; destructure inside the body",
                            ))
                        }
                    };
                // A skipped parameter (a connection, a transaction) does not affect the
                // result, so a `&mut` one is a handle the body uses, not an output.
                let skipped = skip.iter().any(|s| s.unraw() == ident.unraw());
                check_param_type(&pt.ty, skipped)?;
                params.push(Param {
                    ident,
                    ty: (*pt.ty).clone(),
                });
            }
        }
    }

    let ret = match &sig.output {
        ReturnType::Default => {
            return Err(Error::new(
                sig.ident.span(),
                format!(
                    "`{}` returns nothing, so there is nothing to cache",
                    sig.ident
                ),
            ))
        }
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    check_return_type(&ret)?;

    // By the type's name, unless the attribute says what it is: an alias (`AppResult<T>`,
    // `type Lookup = Option<User>`) is named through `__private::ResultLike` /
    // `OptionLike`, which the compiler resolves.
    let named = last_segment(&ret);
    let named_as = |want: &str| {
        named
            .as_ref()
            .filter(|(name, args)| name == want && !args.is_empty())
            .map(|(_, args)| args[0].clone())
    };
    let span = ret.span();
    let ok_ty = || {
        named_as("Result").unwrap_or_else(
            || syn::parse_quote_spanned!(span=> <#ret as #krate::__private::ResultLike>::Ok),
        )
    };
    let some_ty = || {
        named_as("Option").unwrap_or_else(
            || syn::parse_quote_spanned!(span=> <#ret as #krate::__private::OptionLike>::Some),
        )
    };
    let option_kind = || match cache_none {
        Some(_) => (Kind::SomeOrNone, ret.clone()),
        None => (Kind::SomeOnly, some_ty()),
    };
    let is_named = |want: &str| named_as(want).is_some();
    let (kind, value_ty) = match returns {
        Returns::Result(true) => (Kind::OkOnly, ok_ty()),
        Returns::Option(true) => option_kind(),
        Returns::Result(false) if is_named("Option") => option_kind(),
        Returns::Option(false) if is_named("Result") => (Kind::OkOnly, ok_ty()),
        Returns::Result(false) | Returns::Option(false) => (Kind::Plain, ret.clone()),
        Returns::Inferred if is_named("Result") => (Kind::OkOnly, ok_ty()),
        Returns::Inferred if is_named("Option") => option_kind(),
        Returns::Inferred => (Kind::Plain, ret.clone()),
    };
    // Only a plain value can hide an alias, unless the attribute said it is neither.
    let plain = matches!(kind, Kind::Plain);
    let alias_checks = AliasChecks {
        result: plain && !matches!(returns, Returns::Result(false)),
        option: plain && !matches!(returns, Returns::Option(false)),
    };
    if let (Some(span), false) = (cache_none, matches!(kind, Kind::SomeOrNone)) {
        return Err(Error::new(
            span,
            "`cache_none` needs a function that returns `Option<T>`",
        ));
    }
    Ok(Analyzed {
        is_async: sig.asyncness.is_some(),
        receiver,
        params,
        ret,
        kind,
        value_ty,
        alias_checks,
    })
}

fn last_segment(ty: &Type) -> Option<(Ident, Vec<Type>)> {
    let Type::Path(tp) = ty else { return None };
    if tp.qself.is_some() {
        return None;
    }
    let seg = tp.path.segments.last()?;
    let args = match &seg.arguments {
        PathArguments::AngleBracketed(a) => a
            .args
            .iter()
            .filter_map(|g| match g {
                GenericArgument::Type(t) => Some(t.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Some((seg.ident.clone(), args))
}

struct Finder<'a> {
    ret: bool,
    /// A parameter listed in `skip(...)`: `&mut` allowed.
    skipped: bool,
    found: Option<Error>,
    _p: std::marker::PhantomData<&'a ()>,
}

impl<'ast> Visit<'ast> for Finder<'_> {
    fn visit_type_impl_trait(&mut self, i: &'ast syn::TypeImplTrait) {
        if self.found.is_none() {
            self.found = Some(Error::new_spanned(
                i,
                if self.ret {
                    "a cached function cannot return `impl Trait`: the cache must name the value type"
                } else {
                    "`impl Trait` parameters cannot be cached: the key needs a type that implements \
                     `KeyPart`; name a type parameter (`fn f<T: KeyPart>(x: T)`) or take a concrete \
                     type (e.g. `&str` instead of `impl AsRef<str>`)"
                },
            ));
        }
    }

    fn visit_type_reference(&mut self, i: &'ast syn::TypeReference) {
        if self.found.is_none() {
            if self.ret {
                self.found = Some(Error::new_spanned(
                    i,
                    "cached values are stored and cloned, so they cannot borrow; return an owned type \
                     (`String`, `Vec<T>`, `Arc<T>`)",
                ));
            } else if let (Some(m), false) = (&i.mutability, self.skipped) {
                self.found = Some(Error::new(
                    m.span,
                    "a `&mut` parameter in the key: a cache hit skips the body, so its mutation \
                     would silently not happen; if it is a handle the body only uses (a connection, \
                     a transaction) and it does not affect the result, list it in `skip(...)`",
                ));
            }
        }
        syn::visit::visit_type_reference(self, i);
    }

    fn visit_type_bare_fn(&mut self, i: &'ast syn::TypeBareFn) {
        // `fn(&mut T)` pointers are plain values.
        let _ = i;
    }
}

fn find(ty: &Type, ret: bool, skipped: bool) -> syn::Result<()> {
    let mut f = Finder {
        ret,
        skipped,
        found: None,
        _p: std::marker::PhantomData,
    };
    f.visit_type(ty);
    match f.found {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn check_param_type(ty: &Type, skipped: bool) -> syn::Result<()> {
    find(ty, false, skipped)
}

fn check_return_type(ty: &Type) -> syn::Result<()> {
    if let Type::Tuple(t) = ty {
        if t.elems.is_empty() {
            return Err(Error::new_spanned(
                t,
                "the function returns `()`, so there is nothing to cache",
            ));
        }
    }
    find(ty, true, false)
}
