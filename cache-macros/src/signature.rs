//! Which function shapes can be cached, and what their parts are.

use proc_macro2::{Span, TokenStream};
use quote::{quote, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{Error, FnArg, GenericArgument, Ident, ItemFn, Pat, PathArguments, ReturnType, Type};

use crate::options::Returns;

pub struct Param {
    /// The parameter's name; for a destructuring pattern, a generated one for the whole
    /// argument (the generated functions take it whole, then destructure it).
    pub ident: Ident,
    pub ty: Type,
    /// A destructuring pattern as written (`Path(id)` of `Path(id): Path<u64>`).
    pub pattern: Option<Pat>,
    /// What templates, the default key and `skip(...)` name: the parameter's name, or the
    /// bindings of its pattern (`id`).
    pub names: Vec<Ident>,
    /// Its `#[cfg(...)]` attributes, on every statement and argument that uses it: where
    /// the parameter is compiled out, so is each use.
    pub cfg: TokenStream,
    /// Its `#[cfg(...)]` and `#[cfg_attr(...)]` attributes, for the companions' parameter.
    pub cfg_attrs: TokenStream,
}

impl Param {
    /// Whether nothing of it is in the key: every name skipped (a pattern that binds
    /// nothing, `State(_)`, included).
    pub fn skipped(&self, skip: impl Fn(&str) -> bool) -> bool {
        self.names.iter().all(|n| skip(&n.unraw().to_string()))
    }
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
    /// An `async fn`, or a method whose `#[async_trait]` made it return a boxed future.
    pub is_async: bool,
    /// The boxed future's type as the signature writes it (`Pin<Box<dyn Future<Output =
    /// T> + Send + 'async_trait>>`) when `#[async_trait]` went first; `ret` is then `T`.
    pub boxed: Option<Type>,
    /// Span of `self` when the function is a method.
    pub receiver: Option<Span>,
    /// How the method takes `self` (`Borrowed` for a function without one).
    pub receiver_kind: ReceiverKind,
    /// The receiver's type when the signature writes one (`self: Arc<Self>`).
    pub receiver_ty: Option<Type>,
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

/// How a method takes `self`: what the key reads it through (`&Self` in every case, so
/// that the companions, which take `&self`, build the same key).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ReceiverKind {
    /// `&self`, `self: &Self`.
    Borrowed,
    /// A reference to a pointer to `Self`: `self: &Arc<Self>` (`&Rc<Self>`, `&Box<Self>`).
    BorrowedPointer,
    /// By value: `self`, `mut self`, `self: Arc<Self>` (`Rc`, `Box`, `Pin<Box<Self>>`). The
    /// wrapper moves it into the body's call, as it moves the other arguments; a hit drops
    /// it. (A mutation through `mut self` is of the method's own copy, which the caller
    /// never sees, so a hit that skips it changes nothing the caller can observe.)
    Owned,
}

/// The error for `&mut self` and `self: &mut Self`.
const MUT_SELF: &str = "`&mut self` methods cannot be cached: a cache hit skips the body, so its \
                        mutation would silently not happen; take `&self`";

pub fn analyze(
    f: &ItemFn,
    cache_none: Option<Span>,
    returns: Returns,
    krate: &syn::Path,
    (skip, redis): (&[Ident], bool),
    in_trait: bool,
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
    // gets its own cache (see `cache_runtime::__private::instance`), except that type
    // arguments only skipped parameters have are left out (see `erase`).

    let mut receiver = None;
    let mut receiver_kind = ReceiverKind::Borrowed;
    let mut receiver_ty = None;
    let mut params = Vec::new();
    for arg in &sig.inputs {
        match arg {
            FnArg::Receiver(r) => {
                receiver = Some(r.self_token.span);
                if r.colon_token.is_some() {
                    receiver_ty = Some((*r.ty).clone());
                    // `self: &Self` (or `&'a Self`) is `&self` spelled out; `self: &Arc<Self>`
                    // (`&Rc<Self>`, `&Box<Self>`, `&Pin<&Self>`) borrows as `&self` does; and
                    // `self: Arc<Self>` (`Box<Self>`, `Pin<Box<Self>>`) is taken by value. The
                    // wrapper passes it on to `NAME_uncached`; the companions take `&self`.
                    receiver_kind = match ungrouped(&r.ty) {
                        Type::Reference(tr) if is_self_type(&tr.elem) => match &tr.mutability {
                            None => ReceiverKind::Borrowed,
                            Some(m) => return Err(Error::new(m.span, MUT_SELF)),
                        },
                        Type::Reference(tr)
                            if tr.mutability.is_none() && points_to_self(&tr.elem) =>
                        {
                            ReceiverKind::BorrowedPointer
                        }
                        ty if !matches!(ty, Type::Reference(_))
                            && (is_self_type(ty) || points_to_self(ty)) =>
                        {
                            ReceiverKind::Owned
                        }
                        ty => {
                            return Err(Error::new_spanned(
                                r,
                                format!(
                                    "only methods taking `&self` or `self` (by value, or as \
                                     `Arc<Self>`, `Rc<Self>`, `Box<Self>`) can be cached, not \
                                     `self: {}`: a cache hit skips the body, so a mutation \
                                     through it would silently not happen",
                                    type_text(ty)
                                ),
                            ));
                        }
                    };
                    continue;
                }
                match (&r.reference, &r.mutability) {
                    (Some(_), None) => {}
                    (Some(_), Some(m)) => return Err(Error::new(m.span, MUT_SELF)),
                    (None, _) => receiver_kind = ReceiverKind::Owned,
                }
            }
            FnArg::Typed(pt) => {
                let param = Param::from_typed(pt)?;
                // A skipped parameter (a connection, a transaction) does not affect the
                // result, so a `&mut` one is a handle the body uses, not an output.
                let skipped = param.skipped(|n| skip.iter().any(|s| s.unraw() == n));
                check_param_type(&pt.ty, skipped)?;
                params.push(param);
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
    // `#[async_trait]` on the impl runs first and turns `async fn f(..) -> T` into
    // `fn f(..) -> Pin<Box<dyn Future<Output = T> + Send + '_>>`: cached as the `async fn`,
    // the wrapper boxing its own future.
    let (ret, boxed) = match boxed_future(&ret) {
        Some((_, Some(output))) if in_trait => (output, Some(ret)),
        _ => (ret, None),
    };
    check_return_type(&ret)?;
    let fn_lifetimes: Vec<&syn::Lifetime> = sig.generics.lifetimes().map(|l| &l.lifetime).collect();

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
    // `result` / `option` on a type that cannot be an alias of one: an error here, at the
    // return type, instead of unmet bounds deep in the generated code (an alias the name
    // does not tell is checked by type, `__private::ResultLike` / `OptionLike`).
    let declared = match returns {
        Returns::Result(true) => Some(("result", "a", "Result", "Ok")),
        Returns::Option(true) => Some(("option", "an", "Option", "Some")),
        _ => None,
    };
    if let Some((option, article, want, cached)) = declared {
        if let Some(shown) = not_an_alias_of(&ret, want) {
            return Err(Error::new_spanned(
                &ret,
                format!(
                    "`{option}` says this function returns {article} `{want}` behind an alias (only \
                     `{cached}` is cached), but it returns {shown}; remove `{option}`: \
                     other return types are cached whole (`Result` and `Option` by their name)"
                ),
            ));
        }
    }
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
    // What is stored: `T` of a `Result<T, E>` / `Option<T>` named as such (an error is
    // never stored, so `E` may borrow, e.g. `&'static str`), else the whole type.
    let stored = match kind {
        Kind::OkOnly => named_as("Result"),
        Kind::SomeOnly | Kind::SomeOrNone => named_as("Option"),
        Kind::Plain => None,
    }
    .unwrap_or_else(|| ret.clone());
    check_value_type(&stored, &fn_lifetimes, redis)?;
    // Only a plain value can hide an alias, unless the attribute said it is neither.
    let plain = matches!(kind, Kind::Plain);
    let alias_checks = AliasChecks {
        result: plain && !matches!(returns, Returns::Result(false)),
        option: plain && !matches!(returns, Returns::Option(false)),
    };
    if let (Some(span), false) = (cache_none, matches!(kind, Kind::SomeOrNone)) {
        // `Result<Option<T>, E>`: every `Ok`, `Ok(None)` included, is already cached.
        let ok_is_option = matches!(kind, Kind::OkOnly)
            && named_as("Result")
                .and_then(|ok| last_segment(&ok))
                .is_some_and(|(name, _)| name == "Option");
        return Err(Error::new(
            span,
            if ok_is_option {
                "`cache_none` is not needed here: every `Ok` value is cached, `Ok(None)` included; remove `cache_none` (or return `Option<T>` to cache `None`s)"
            } else {
                "`cache_none` needs a function that returns `Option<T>`"
            },
        ));
    }
    name_whole_arguments(&mut params);
    Ok(Analyzed {
        is_async: sig.asyncness.is_some() || boxed.is_some(),
        boxed,
        receiver,
        receiver_kind,
        receiver_ty,
        params,
        ret,
        kind,
        value_ty,
        alias_checks,
    })
}

impl Param {
    /// The parameter `pt` declares. A pattern's whole argument gets its name from
    /// [`name_whole_arguments`], once every parameter's names are known.
    fn from_typed(pt: &syn::PatType) -> syn::Result<Param> {
        let (ident, pattern, names) = match &*pt.pat {
            Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => {
                (pi.ident.clone(), None, vec![pi.ident.clone()])
            }
            Pat::Wild(w) => {
                return Err(Error::new_spanned(
                    w,
                    "cached functions need a name for every parameter (the key is built from \
                     them): name it, e.g. `_pool: &Pool`, and list it in `skip(_pool)` if it \
                     does not affect the result",
                ))
            }
            // An extractor (`Path(id): Path<u64>`, `State(db): State<Db>`), a struct or a
            // tuple: its bindings are the names.
            other => {
                let mut names = Vec::new();
                pattern_bindings(other, &mut names)?;
                let whole = Ident::new("__arg", Span::mixed_site());
                (whole, Some(other.clone()), names)
            }
        };
        let is = |a: &&syn::Attribute, name: &str| a.path().is_ident(name);
        let mut cfg = TokenStream::new();
        for attr in &pt.attrs {
            param_cfg(&attr.meta, &[], &mut cfg)?;
        }
        let cfg_attrs = pt
            .attrs
            .iter()
            .filter(|a| is(a, "cfg") || is(a, "cfg_attr"));
        Ok(Param {
            ident,
            ty: (*pt.ty).clone(),
            pattern,
            names,
            cfg,
            cfg_attrs: quote!(#(#cfg_attrs)*),
        })
    }
}

/// The `#[cfg(...)]` a parameter's attribute `meta` puts on it, into `out`: a `cfg` as
/// written, and one inside `cfg_attr(pred, ...)` (nested ones too) as `cfg(any(not(pred),
/// ..))`, which is what it means; `under`: the predicates of the `cfg_attr`s around `meta`.
fn param_cfg(meta: &syn::Meta, under: &[syn::Meta], out: &mut TokenStream) -> syn::Result<()> {
    match meta {
        syn::Meta::List(l) if l.path.is_ident("cfg") && under.is_empty() => {
            out.extend(quote!(#[#meta]));
        }
        syn::Meta::List(l) if l.path.is_ident("cfg") => {
            let pred = &l.tokens;
            out.extend(quote!(#[cfg(any(not(all(#(#under),*)), #pred))]));
        }
        syn::Meta::List(l) if l.path.is_ident("cfg_attr") => {
            let (pred, metas) = l.parse_args_with(|input: syn::parse::ParseStream| {
                let pred: syn::Meta = input.parse()?;
                input.parse::<syn::Token![,]>()?;
                let metas =
                    syn::punctuated::Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated(
                        input,
                    )?;
                Ok((pred, metas))
            })?;
            let mut under = under.to_vec();
            under.push(pred);
            for m in &metas {
                param_cfg(m, &under, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Names the arguments that patterns take whole after what they destructure (`Path(id):
/// Path<u64>` → `path`, `Point { x, y }` → `point`, `(a, b)` → `tuple`): the generated
/// functions take them under these names, which their rustdoc shows. Hygienic
/// (`mixed_site`) and distinct from every name of the signature, the others' bindings
/// included (`_2`, `_3` … when two would meet).
fn name_whole_arguments(params: &mut [Param]) {
    let mut taken: Vec<String> = params
        .iter()
        .flat_map(|p| {
            p.names
                .iter()
                .chain(p.pattern.is_none().then_some(&p.ident))
        })
        .map(|n| n.unraw().to_string())
        .collect();
    for p in params.iter_mut() {
        let Some(pattern) = &p.pattern else { continue };
        let base = match pattern {
            Pat::TupleStruct(t) => t.path.segments.last().map(|s| snake_case(&s.ident)),
            Pat::Struct(t) => t.path.segments.last().map(|s| snake_case(&s.ident)),
            Pat::Tuple(_) => Some("tuple".to_string()),
            Pat::Slice(_) => Some("slice".to_string()),
            _ => None,
        }
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "arg".to_string());
        // A keyword (`Type(t)` → `type`) is no parameter name.
        let base = if syn::parse_str::<Ident>(&base).is_ok() {
            base
        } else {
            format!("{base}_arg")
        };
        let name = std::iter::once(base.clone())
            .chain((2..).map(|n| format!("{base}_{n}")))
            .find(|n| !taken.contains(n))
            .expect("finitely many names are taken");
        p.ident = Ident::new(&name, Span::mixed_site());
        taken.push(name);
    }
}

/// `UserQuery` → `user_query`, `Path` → `path`, `JSON` → `json`.
fn snake_case(ident: &Ident) -> String {
    let text = ident.unraw().to_string();
    let mut out = String::new();
    let mut prev_lower = false;
    for c in text.chars() {
        if c.is_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.extend(c.to_lowercase());
            prev_lower = false;
        } else {
            out.push(c);
            prev_lower = c.is_lowercase() || c.is_ascii_digit();
        }
    }
    out
}

/// The names a parameter pattern binds: tuple-struct, struct, tuple and slice patterns of
/// plain bindings (`id`, `mut id`), `_` and `..`.
fn pattern_bindings(pat: &Pat, out: &mut Vec<Ident>) -> syn::Result<()> {
    match pat {
        Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => {
            out.push(pi.ident.clone());
            Ok(())
        }
        Pat::TupleStruct(t) => t.elems.iter().try_for_each(|p| pattern_bindings(p, out)),
        Pat::Struct(st) => st
            .fields
            .iter()
            .try_for_each(|f| pattern_bindings(&f.pat, out)),
        Pat::Tuple(t) => t.elems.iter().try_for_each(|p| pattern_bindings(p, out)),
        Pat::Slice(sl) => sl.elems.iter().try_for_each(|p| pattern_bindings(p, out)),
        Pat::Paren(p) => pattern_bindings(&p.pat, out),
        Pat::Wild(_) | Pat::Rest(_) => Ok(()),
        other => Err(Error::new_spanned(
            other,
            "a cached function's parameter pattern may destructure (`Path(id): Path<u64>`, \
             `Point { x, y }: Point`, `(a, b): (u8, u8)`) into plain bindings, `_` and `..`; \
             take this part whole and destructure it inside the body",
        )),
    }
}

impl Analyzed {
    /// Every name templates, the default key and `skip(...)` can use: the parameters' names
    /// and their patterns' bindings, in order.
    pub fn names(&self) -> impl Iterator<Item = &Ident> {
        self.params.iter().flat_map(|p| &p.names)
    }
}

/// How to name `ty` in an error when it certainly is not an alias of `want` (`Result` /
/// `Option`): not a path (a tuple, a reference, ...), a primitive, or a standard type of
/// another name (`String`, `Vec<T>`, the other one of `Result` / `Option`). `None` for any
/// other path, which may be an alias.
fn not_an_alias_of(ty: &Type, want: &str) -> Option<String> {
    const PRIMITIVES: &[&str] = &[
        "bool", "char", "str", "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32",
        "i64", "i128", "isize", "f32", "f64",
    ];
    const STD: &[&str] = &[
        "Result", "Option", "String", "Vec", "Box", "Arc", "Rc", "Cow", "HashMap", "BTreeMap",
        "HashSet", "BTreeSet", "VecDeque", "PathBuf",
    ];
    let shown = || format!("`{}`", type_text(ty));
    match ungrouped(ty) {
        Type::Path(tp) if tp.qself.is_some() => None,
        Type::Path(tp) => {
            let last = tp.path.segments.last()?;
            let name = last.ident.to_string();
            let primitive = tp.path.segments.len() == 1 && PRIMITIVES.contains(&name.as_str());
            (name != want && (primitive || STD.contains(&name.as_str()))).then(shown)
        }
        Type::Macro(_) | Type::Verbatim(_) | Type::Infer(_) => None,
        _ => Some(shown()),
    }
}

fn last_segment(ty: &Type) -> Option<(Ident, Vec<Type>)> {
    let Type::Path(tp) = ungrouped(ty) else {
        return None;
    };
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

/// What a type may not contain, by where it is.
enum Place<'a> {
    /// A parameter; `skipped`: listed in `skip(...)` (a handle the body uses: `&mut`
    /// allowed, since it is not in the key).
    Param { skipped: bool },
    /// The whole return type.
    Return,
    /// The stored part of the return type; `lifetimes`: the function's lifetime parameters;
    /// `redis`: the cache has a Redis tier (values are decoded there, into owned ones).
    Value {
        lifetimes: &'a [&'a syn::Lifetime],
        redis: bool,
    },
}

struct Finder<'a> {
    place: Place<'a>,
    found: Option<Error>,
    /// The lifetimes a `for<'x>` around the visited type binds.
    higher_ranked: Vec<Ident>,
}

impl Finder<'_> {
    fn fail(&mut self, e: Error) {
        if self.found.is_none() {
            self.found = Some(e);
        }
    }
}

impl<'ast> Visit<'ast> for Finder<'_> {
    fn visit_type_impl_trait(&mut self, i: &'ast syn::TypeImplTrait) {
        match self.place {
            // What a trait's `-> impl Future<Output = T> + Send` method is implemented with
            // (an `async fn` implements it, `Send` included when its future is).
            Place::Return if i.bounds.iter().any(is_future_bound) => self.fail(Error::new_spanned(
                i,
                "a cached function cannot return `impl Future` (a future cannot be stored or \
                 cloned): write it as an `async fn` returning the output type; it also \
                 implements a trait method declared `-> impl Future<Output = T> + Send` (add \
                 `in_trait` in a trait impl)",
            )),
            Place::Return => self.fail(Error::new_spanned(
                i,
                "a cached function cannot return `impl Trait`: the cache must name the value type",
            )),
            Place::Param { skipped: false } => self.fail(Error::new_spanned(
                i,
                "`impl Trait` parameters cannot be in the key: the key needs a type that \
                 implements `KeyPart`; name a type parameter (`fn f<T: KeyPart>(x: T)`) or take a \
                 concrete type (e.g. `&str` instead of `impl AsRef<str>`); a parameter that does \
                 not affect the result (a callback, a handle) can stay `impl Trait` if listed in \
                 `skip(...)`",
            )),
            // An anonymous type parameter that only a skipped parameter has: erased, like a
            // named one (see `erase`), so every closure shares the cache.
            _ => {}
        }
    }

    fn visit_type_reference(&mut self, i: &'ast syn::TypeReference) {
        match self.place {
            Place::Value { redis: true, .. } => self.fail(Error::new_spanned(
                i,
                "a value read from Redis is decoded into an owned value, so a cache with a Redis \
                 tier cannot store references (not even `&'static` ones): return an owned type \
                 (`String`, `Cow<'static, str>`, `Vec<T>`, `Arc<T>`)",
            )),
            Place::Value { .. } => {
                let is_static = i.lifetime.as_ref().is_some_and(|l| l.ident == "static");
                if !is_static || i.mutability.is_some() {
                    self.fail(Error::new_spanned(
                        i,
                        "cached values are stored and cloned, so they cannot borrow; return an \
                         owned type (`String`, `Vec<T>`, `Arc<T>`) or a `&'static` one",
                    ));
                }
            }
            Place::Param { skipped: false } => {
                if let Some(m) = &i.mutability {
                    self.fail(Error::new(
                        m.span,
                        "a `&mut` parameter in the key: a cache hit skips the body, so its \
                         mutation would silently not happen; if it is a handle the body only uses \
                         (a connection, a transaction) and it does not affect the result, list it \
                         in `skip(...)`",
                    ));
                }
            }
            _ => {}
        }
        syn::visit::visit_type_reference(self, i);
    }

    fn visit_lifetime(&mut self, l: &'ast syn::Lifetime) {
        let Place::Value { lifetimes, .. } = self.place else {
            return;
        };
        if l.ident == "static" || self.higher_ranked.contains(&l.ident) {
            return;
        }
        self.fail(Error::new_spanned(
            l,
            if l.ident == "_" || lifetimes.contains(&l) {
                format!(
                    "cached values outlive the call, so their type cannot name the function's \
                     lifetime `{l}`; return an owned type (e.g. `Cow<'static, str>`, `String`)"
                )
            } else {
                // A lifetime of the `impl` (`impl<'a> Svc<'a>`) or of a trait object.
                format!(
                    "cached values are stored and cloned, so they cannot borrow (`{l}`); return \
                     an owned type (`String`, `Cow<'static, str>`, `Vec<T>`, `Arc<T>`)"
                )
            },
        ));
    }

    fn visit_path_segment(&mut self, i: &'ast syn::PathSegment) {
        // `Cow<str>`: a lifetime elided in a path (the one type that is known to have one).
        if let (Place::Value { .. }, true) = (&self.place, i.ident == "Cow") {
            let has_lifetime = matches!(&i.arguments, PathArguments::AngleBracketed(a)
                if a.args.iter().any(|g| matches!(g, GenericArgument::Lifetime(_))));
            if !has_lifetime {
                self.fail(Error::new_spanned(
                    i,
                    "cached values are stored and cloned, so they cannot borrow (this `Cow` \
                     elides its lifetime); return `Cow<'static, ..>` or an owned type (`String`, \
                     `Vec<T>`, `Arc<T>`)",
                ));
            }
        }
        syn::visit::visit_path_segment(self, i);
    }

    fn visit_trait_bound(&mut self, i: &'ast syn::TraitBound) {
        // `for<'x> Fn(&'x T)`: the value does not borrow for `'x`.
        let bound = i.lifetimes.iter().flat_map(|b| &b.lifetimes);
        let before = self.higher_ranked.len();
        self.higher_ranked.extend(bound.filter_map(|p| match p {
            syn::GenericParam::Lifetime(l) => Some(l.lifetime.ident.clone()),
            _ => None,
        }));
        syn::visit::visit_trait_bound(self, i);
        self.higher_ranked.truncate(before);
    }

    fn visit_parenthesized_generic_arguments(
        &mut self,
        i: &'ast syn::ParenthesizedGenericArguments,
    ) {
        // `dyn Fn(&T) -> U`: its elided lifetimes are higher-ranked, as in a `fn` pointer.
        if !matches!(self.place, Place::Value { .. }) {
            syn::visit::visit_parenthesized_generic_arguments(self, i);
        }
    }

    fn visit_type_bare_fn(&mut self, i: &'ast syn::TypeBareFn) {
        // `fn(&mut T)` pointers are plain values.
        let _ = i;
    }
}

fn find(ty: &Type, place: Place<'_>) -> syn::Result<()> {
    let mut f = Finder {
        place,
        found: None,
        higher_ranked: Vec::new(),
    };
    f.visit_type(ty);
    match f.found {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn check_param_type(ty: &Type, skipped: bool) -> syn::Result<()> {
    find(ty, Place::Param { skipped })
}

fn check_return_type(ty: &Type) -> syn::Result<()> {
    if let Type::Never(n) = ungrouped(ty) {
        return Err(Error::new_spanned(
            n,
            "the function never returns (`-> !`), so there is nothing to cache",
        ));
    }
    if let Type::Tuple(t) = ungrouped(ty) {
        if t.elems.is_empty() {
            return Err(Error::new_spanned(
                t,
                "the function returns `()`, so there is nothing to cache",
            ));
        }
    }
    if let Some((span, _)) = boxed_future(ty) {
        return Err(Error::new(
            span,
            "a cached function cannot return a boxed future (it cannot be stored or cloned): \
             write an `async fn`; in an `#[async_trait]` impl, add `in_trait` \
             (`#[cached(in_trait, ...)]`) and the method's output is cached",
        ));
    }
    find(ty, Place::Return)
}

fn check_value_type(ty: &Type, lifetimes: &[&syn::Lifetime], redis: bool) -> syn::Result<()> {
    find(ty, Place::Value { lifetimes, redis })
}

/// `Pin<Box<dyn Future<..>>>` (what `#[async_trait]` and hand-written trait objects
/// return), or the `futures` aliases of it, `BoxFuture<'a, T>` and `LocalBoxFuture<'a, T>`:
/// the span of the `dyn` type (of the alias), and its `Output` type.
fn boxed_future(ty: &Type) -> Option<(Span, Option<Type>)> {
    let (pin, args) = last_segment(ty)?;
    if pin == "BoxFuture" || pin == "LocalBoxFuture" {
        return Some((ungrouped(ty).span(), args.first().cloned()));
    }
    if pin != "Pin" {
        return None;
    }
    let (boxed, inner) = last_segment(args.first()?)?;
    if boxed != "Box" {
        return None;
    }
    let Type::TraitObject(obj) = ungrouped(inner.first()?) else {
        return None;
    };
    let future = obj.bounds.iter().find_map(|b| match b {
        syn::TypeParamBound::Trait(t) => t.path.segments.last().filter(|s| s.ident == "Future"),
        _ => None,
    })?;
    let output = match &future.arguments {
        PathArguments::AngleBracketed(a) => a.args.iter().find_map(|g| match g {
            GenericArgument::AssocType(at) if at.ident == "Output" => Some(at.ty.clone()),
            _ => None,
        }),
        _ => None,
    };
    Some((obj.span(), output))
}

/// `Future<..>` (`std::future::Future`, `core::future::Future`, …) as a bound.
fn is_future_bound(b: &syn::TypeParamBound) -> bool {
    matches!(b, syn::TypeParamBound::Trait(t)
        if t.path.segments.last().is_some_and(|s| s.ident == "Future"))
}

/// A type as written, without the token stream's spaces (`Arc<Self>`, not `Arc < Self >`).
fn type_text(ty: &Type) -> String {
    let text = ty.to_token_stream().to_string();
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let next = chars.peek().copied();
        let glue = |n: Option<char>| matches!(n, Some('<' | '>' | ',' | ':'));
        // `Fn(u8)`, not `Fn (u8)`.
        let call = next == Some('(') && out.ends_with(|c: char| c.is_alphanumeric());
        if c == ' ' && (glue(next) || call || out.ends_with(['<', '&', ':'])) {
            continue;
        }
        out.push(c);
    }
    out
}

/// `Self`, as a type.
fn is_self_type(ty: &Type) -> bool {
    matches!(ungrouped(ty), Type::Path(p) if p.qself.is_none() && p.path.is_ident("Self"))
}

/// The type inside the invisible groups a `macro_rules!` fragment arrives in (`-> $ret`
/// with `$ret:ty` = `Result<u64, E>` is a `Result` as written) and inside parentheses.
fn ungrouped(ty: &Type) -> &Type {
    match ty {
        Type::Group(g) => ungrouped(&g.elem),
        Type::Paren(p) => ungrouped(&p.elem),
        other => other,
    }
}

/// `Arc<Self>`, `Rc<Self>`, `Box<Self>`, `Pin<&Self>` and their nestings: a pointer to `Self`
/// that a shared reference gives shared access through.
fn points_to_self(ty: &Type) -> bool {
    match ungrouped(ty) {
        Type::Reference(r) => {
            r.mutability.is_none() && (is_self_type(&r.elem) || points_to_self(&r.elem))
        }
        _ => match last_segment(ty) {
            Some((name, args))
                if args.len() == 1 && ["Arc", "Rc", "Box", "Pin"].iter().any(|p| name == p) =>
            {
                is_self_type(&args[0]) || points_to_self(&args[0])
            }
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names `name_whole_arguments` gives the parameters of `inputs`.
    fn names_of(inputs: &str) -> Vec<String> {
        let f: ItemFn = syn::parse_str(&format!("fn f({inputs}) -> u8 {{ 0 }}")).unwrap();
        let mut params: Vec<Param> = f
            .sig
            .inputs
            .iter()
            .map(|arg| match arg {
                FnArg::Typed(pt) => Param::from_typed(pt).unwrap(),
                FnArg::Receiver(_) => panic!("no receiver here"),
            })
            .collect();
        name_whole_arguments(&mut params);
        params.iter().map(|p| p.ident.to_string()).collect()
    }

    #[test]
    fn whole_arguments_are_named_after_what_they_destructure() {
        assert_eq!(
            names_of("State(db): State<Db>, Path(id): Path<u64>"),
            ["state", "path"]
        );
        assert_eq!(
            names_of("UserQuery { q }: UserQuery, (a, b): (u8, u8), [x, y]: [u8; 2]"),
            ["user_query", "tuple", "slice"]
        );
        // Distinct from each other and from every name of the signature.
        assert_eq!(
            names_of("Path(a): Path<u8>, Path(path): Path<u8>, path_2: u8"),
            ["path_3", "path_4", "path_2"]
        );
        // Not a keyword; acronyms in one piece.
        assert_eq!(
            names_of("Type(t): Type, JSON(j): JSON"),
            ["type_arg", "json"]
        );
    }
}
