//! The attribute's options, parsed and checked with spans.
//!
//! Each option is defined once, in the [`options!`] table below: its name, the field that
//! holds its raw value, how the value is parsed, and what it expects (for the error message).
//! [`Raw::finish`] then checks the combinations.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Error, Ident, Lit, LitBool, LitInt, LitStr};

use crate::duration;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Local,
    Redis,
    LocalRedis,
}

pub struct Options {
    pub tier: Tier,
    pub ttl_ms: u64,
    pub local_ttl_ms: Option<u64>,
    pub key: Option<LitStr>,
    pub skip: Vec<Ident>,
    pub capacity: Option<u64>,
    pub name: Option<LitStr>,
    pub version: u32,
    pub cache_none: Option<Span>,
    pub none_ttl_ms: Option<(u64, Span)>,
    pub tags: Vec<LitStr>,
    /// `Some(lease)` with `lock = true`.
    pub lock_lease_ms: Option<u64>,
    /// `mode = "observe" | "bypass"` (`None`: normal).
    pub mode: Option<&'static str>,
    /// `jitter = 0.1`: the literal, checked to be in (0, 0.5].
    pub jitter: Option<syn::LitFloat>,
    /// `stale`, `stale_retry` and `timeout`.
    pub fail_safe: Option<FailSafe>,
    /// `max_bytes = "64MiB"`.
    pub max_bytes: Option<u64>,
    /// `purge = ["/users/<id>"]`: edge paths purged by writes.
    pub purge: Vec<LitStr>,
    /// `etag = true`: ETags for a local-only cache (always on with Redis).
    pub etag: bool,
    /// `soft_timeout = "100ms"` (needs `stale`), with the span of the option's value.
    pub soft_timeout: Option<(u64, Span)>,
    /// `refresh_ahead = 0.8`, checked to be in (0, 1).
    pub refresh_ahead: Option<syn::LitFloat>,
    /// `crate = "path"`: the path of the runtime crate (default `::cache_runtime`).
    pub krate: syn::Path,
    /// `in_trait`: a method of a trait impl (or a trait's default method): the function
    /// alone, no companions. With the flag's span.
    pub in_trait: Option<Span>,
    /// `result` / `option` (or `= false`): what the return type is, where its name does not
    /// say (an alias such as `AppResult<T>`).
    pub returns: Returns,
}

/// What the attribute declares the return type to be.
#[derive(Clone, Copy)]
pub enum Returns {
    /// Nothing: told by the return type's name (`Result<..>`, `Option<..>`).
    Inferred,
    /// `result` (`true`: only `Ok` is cached) or `result = false` (the whole value is).
    Result(bool),
    /// `option` (`true`: only `Some` is cached) or `option = false` (the whole value is).
    Option(bool),
}

/// The fail-safe options, in milliseconds.
pub struct FailSafe {
    pub stale_ms: u64,
    /// Default 10 s.
    pub retry_ms: u64,
    /// With the span of the `timeout` value, for errors.
    pub timeout: Option<(u64, Span)>,
}

const DURATION: &str = "seconds (`300`) or a duration string (`\"5m\"`)";
const BOOL: &str = "`true` or `false`";

/// `options! { field: Type = "name" by parser, "what it expects"; ... }` defines [`KNOWN`],
/// the [`Raw`] struct (one `Option` per option) and [`Raw::set`].
macro_rules! options {
    ($($field:ident: $ty:ty = $name:literal by $parse:ident, $expected:expr;)*) => {
        /// Every option name, in the order of the reference.
        const KNOWN: &[&str] = &[$($name),*];

        #[derive(Default)]
        struct Raw {
            $($field: Option<$ty>,)*
        }

        impl Raw {
            /// Parses the value of option `name` (known, seen once) into its field.
            fn set(&mut self, name: &str, meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
                match name {
                    $($name => self.$field = Some($parse(meta, $name, $expected)?),)*
                    _ => unreachable!("checked against KNOWN"),
                }
                Ok(())
            }
        }
    };
}

options! {
    tier: LitStr = "tier" by value, "a string: \"local\", \"redis\" or \"local+redis\"";
    ttl: Lit = "ttl" by value, DURATION;
    local_ttl: Lit = "local_ttl" by value, DURATION;
    key: LitStr = "key" by key_template, "a string template, e.g. \"user:<id>\"";
    skip: Vec<Ident> = "skip" by skip_list, "";
    capacity: LitInt = "capacity" by value, "an integer (max local entries)";
    name: LitStr = "name" by value, "a string";
    version: LitInt = "version" by value, "an integer (schema version of the value type)";
    cache_none: LitBool = "cache_none" by flag, BOOL;
    none_ttl: Lit = "none_ttl" by value, DURATION;
    tags: Vec<LitStr> = "tags" by tag_list, "a list of string templates, e.g. `[\"user:<id>\"]`";
    lock: LitBool = "lock" by flag, BOOL;
    lock_lease: Lit = "lock_lease" by value, DURATION;
    mode: LitStr = "mode" by value, "a string: \"normal\", \"observe\" or \"bypass\"";
    jitter: syn::LitFloat = "jitter" by value, "a fraction of the TTL, e.g. `0.1` for ±10 %";
    stale: Lit = "stale" by value, DURATION;
    stale_retry: Lit = "stale_retry" by value, DURATION;
    timeout: Lit = "timeout" by value, DURATION;
    max_bytes: Lit = "max_bytes" by value, "bytes (`1048576`) or a size string (`\"64MiB\"`)";
    purge: Vec<LitStr> = "purge" by purge_list, "a list of URL path templates, e.g. `[\"/users/<id>\"]`";
    etag: LitBool = "etag" by flag, BOOL;
    soft_timeout: Lit = "soft_timeout" by value, DURATION;
    refresh_ahead: syn::LitFloat = "refresh_ahead" by value, "a fraction of the TTL, e.g. `0.8`";
    krate: LitStr = "crate" by value, "a string naming the runtime crate's path, e.g. `crate = \"my_app::cache\"`";
    in_trait: LitBool = "in_trait" by flag, BOOL;
    result: LitBool = "result" by flag, BOOL;
    option: LitBool = "option" by flag, BOOL;
}

pub fn parse(attr: TokenStream) -> syn::Result<Options> {
    let mut raw = Raw::default();
    let mut seen: Vec<String> = Vec::new();
    let parser = syn::meta::parser(|meta| {
        let name = option_name(&meta)?;
        if seen.contains(&name) {
            return Err(meta.error(format!("duplicate option `{name}`: it may appear once")));
        }
        raw.set(&name, &meta)?;
        seen.push(name);
        Ok(())
    });
    syn::parse::Parser::parse2(parser, attr.clone())?;
    raw.finish(&attr)
}

/// The option's name, checked to be one of [`KNOWN`] (with a hint for the `cached` crate's
/// option names).
fn option_name(meta: &ParseNestedMeta<'_>) -> syn::Result<String> {
    let Some(ident) = meta.path.get_ident() else {
        return Err(meta.error(unknown_msg("this path")));
    };
    let name = syn::ext::IdentExt::unraw(ident).to_string();
    if KNOWN.contains(&name.as_str()) {
        return Ok(name);
    }
    let hint = match name.as_str() {
        "time" => " (the `cached` crate's `time` is `ttl` here)",
        "ttl_secs" => " (the `cached` crate's `ttl_secs` is `ttl` here)",
        "size" | "max_size" => " (the `cached` crate's `size`/`max_size` is `capacity` here)",
        "convert" => " (the `cached` crate's `convert` is a `key` template here, e.g. `key = \"user:<id>\"`)",
        "sync_writes" => " (concurrent misses of one key always run the body once here)",
        "time_refresh" | "refresh" => {
            " (expiry is absolute here, so every process and Redis agree; `refresh_ahead` keeps hot entries fresh)"
        }
        "with_cached_flag" => " (`NAME_entry` returns the value with its `source()`)",
        "result_fallback" => " (see `stale`)",
        "ty" | "create" | "unbound" => " (the cache type is built from the options here)",
        _ => "",
    };
    Err(Error::new(
        ident.span(),
        format!("{}{hint}", unknown_msg(&format!("`{name}`"))),
    ))
}

/// `name = value`, with an error naming what the option expects.
fn value<T: syn::parse::Parse>(
    meta: &ParseNestedMeta<'_>,
    name: &str,
    expected: &str,
) -> syn::Result<T> {
    let input = meta
        .value()
        .map_err(|_| meta.error(format!("`{name}` needs a value: `{name} = ...`")))?;
    let fork = input.fork();
    input.parse::<T>().map_err(|_| {
        let span = fork
            .parse::<proc_macro2::TokenTree>()
            .map(|t| t.span())
            .unwrap_or_else(|_| fork.span());
        Error::new(span, format!("`{name}` expects {expected}"))
    })
}

/// `key = "..."`; an expression instead of the template gets the template it meant:
/// `key = id` → `key = "<id>"`, `key = self.id` → `key = "<self.id>"`.
fn key_template(meta: &ParseNestedMeta<'_>, name: &str, expected: &str) -> syn::Result<LitStr> {
    let fork = meta.input.fork();
    value(meta, name, expected).map_err(|e| {
        let _ = fork.parse::<syn::Token![=]>();
        let placeholder = match fork.parse::<syn::Expr>() {
            Ok(syn::Expr::Path(p)) if p.path.get_ident().is_some() => {
                p.path.get_ident().map(|i| i.to_string())
            }
            Ok(syn::Expr::Field(f)) => Some(
                f.to_token_stream()
                    .to_string()
                    .chars()
                    .filter(|c| !c.is_whitespace())
                    .collect(),
            ),
            _ => None,
        };
        match placeholder {
            Some(p) => Error::new(
                e.span(),
                format!(
                    "`key` is a string template, not an expression: `key = \"<{p}>\"` (or with a \
                     prefix, `key = \"user:<{p}>\"`)"
                ),
            ),
            None => Error::new(
                e.span(),
                "`key` is a string template, not an expression: write the key as text with \
                 `<param>` or `<param.field>` placeholders, e.g. `key = \"user:<id>\"` (not \
                 `format!`)",
            ),
        }
    })
}

/// `name = true | false`, or the bare `name` for `true`.
fn flag(meta: &ParseNestedMeta<'_>, name: &str, expected: &str) -> syn::Result<LitBool> {
    if meta.input.peek(syn::Token![=]) {
        value(meta, name, expected)
    } else {
        Ok(LitBool::new(true, meta.path.span()))
    }
}

/// `skip(a, b)`.
fn skip_list(meta: &ParseNestedMeta<'_>, _: &str, _: &str) -> syn::Result<Vec<Ident>> {
    if !meta.input.peek(syn::token::Paren) {
        return Err(
            meta.error("`skip` takes a list of parameter names in parentheses: `skip(pool, ctx)`")
        );
    }
    if let Ok(group) = meta.input.fork().parse::<proc_macro2::Group>() {
        if group.stream().is_empty() {
            return Err(Error::new(
                group.span(),
                "`skip()` names no parameter: list the parameters that do not affect the \
                 result, `skip(pool, ctx)`, or remove it",
            ));
        }
    }
    let mut list: Vec<Ident> = Vec::new();
    meta.parse_nested_meta(|inner| {
        let id = match inner.path.get_ident() {
            Some(id) => id.clone(),
            None if inner.path.is_ident("self") => Ident::new("self", inner.path.span()),
            None => return Err(inner.error("expected a parameter name")),
        };
        if list.iter().any(|x| x == &id) {
            return Err(Error::new(id.span(), format!("`{id}` is skipped twice")));
        }
        list.push(id);
        Ok(())
    })?;
    Ok(list)
}

/// An array element as written: a `macro_rules!` fragment (`[$tag]` with `$tag:literal` or
/// `:expr`) arrives wrapped in an invisible group, which is looked through.
fn unwrap_group(elem: syn::Expr) -> syn::Expr {
    match elem {
        syn::Expr::Group(g) => unwrap_group(*g.expr),
        other => other,
    }
}

/// `tags = ["user:<id>", "catalog"]`.
fn tag_list(meta: &ParseNestedMeta<'_>, name: &str, expected: &str) -> syn::Result<Vec<LitStr>> {
    let array: syn::ExprArray = value(meta, name, expected)?;
    // As `skip()` and `purge = []`: an empty list says nothing, and may be a tag forgotten.
    if array.elems.is_empty() {
        return Err(Error::new_spanned(
            &array,
            "`tags = []` tags nothing: list the entries' tags, e.g. `tags = [\"user:<id>\"]`, \
             or remove `tags`",
        ));
    }
    array
        .elems
        .into_iter()
        .map(|elem| match unwrap_group(elem) {
            syn::Expr::Lit(syn::ExprLit {
                lit: Lit::Str(s), ..
            }) if !s.value().is_empty() => Ok(s),
            other => Err(Error::new(
                syn::spanned::Spanned::span(&other),
                "each tag is a non-empty string template, e.g. `tags = [\"user:<id>\", \"catalog\"]`",
            )),
        })
        .collect()
}

/// `purge = ["/users/<id>"]`.
fn purge_list(meta: &ParseNestedMeta<'_>, name: &str, expected: &str) -> syn::Result<Vec<LitStr>> {
    let array: syn::ExprArray = value(meta, name, expected)?;
    let mut paths = Vec::new();
    for elem in array.elems {
        match unwrap_group(elem) {
            syn::Expr::Lit(syn::ExprLit {
                lit: Lit::Str(s), ..
            }) => {
                let v = s.value();
                if !v.starts_with('/') || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(Error::new(
                        s.span(),
                        "each purge path is an absolute URL path template without spaces, e.g. \"/users/<id>\"",
                    ));
                }
                paths.push(s)
            }
            other => {
                return Err(Error::new(
                    syn::spanned::Spanned::span(&other),
                    "each purge path is a string template, e.g. `purge = [\"/users/<id>\"]`",
                ))
            }
        }
    }
    if paths.is_empty() {
        return Err(meta.error("`purge` needs at least one path, e.g. `purge = [\"/users/<id>\"]`"));
    }
    Ok(paths)
}

impl Raw {
    /// `attr`: the option list, for errors about a missing option.
    fn finish(self, attr: &TokenStream) -> syn::Result<Options> {
        let tier = match &self.tier {
            None => Tier::Local,
            Some(s) => match s.value().as_str() {
                "local" => Tier::Local,
                "redis" => Tier::Redis,
                "local+redis" => Tier::LocalRedis,
                other => {
                    return Err(Error::new(
                        s.span(),
                        format!(
                        "unknown tier `{other}`; expected \"local\", \"redis\" or \"local+redis\""
                    ),
                    ))
                }
            },
        };
        let ttl = self.ttl.as_ref().ok_or_else(|| {
            let msg = "missing `ttl`: every cache needs a time to live, e.g. `ttl = 300` (seconds) or `ttl = \"5m\"`";
            if attr.is_empty() {
                Error::new(Span::call_site(), msg)
            } else {
                Error::new_spanned(attr, msg)
            }
        })?;
        let ttl_ms = duration::parse(ttl, "ttl")?;
        let local_ttl_ms = match &self.local_ttl {
            None => None,
            Some(lit) => {
                if tier != Tier::LocalRedis {
                    return Err(Error::new(
                        lit.span(),
                        "`local_ttl` only applies to `tier = \"local+redis\"`; with one tier, use `ttl`",
                    ));
                }
                let ms = duration::parse(lit, "local_ttl")?;
                if ms > ttl_ms {
                    return Err(Error::new(
                        lit.span(),
                        format!(
                            "`local_ttl` ({ms} ms) must not exceed `ttl` ({ttl_ms} ms): a local copy must never outlive the shared one"
                        ),
                    ));
                }
                Some(ms)
            }
        };
        let cache_none = match &self.cache_none {
            Some(b) if b.value => Some(b.span()),
            _ => None,
        };
        let returns =
            match (&self.result, &self.option) {
                (Some(_), Some(o)) => return Err(Error::new(
                    o.span(),
                    "`result` and `option` cannot both be set: a return type is one or the other",
                )),
                (Some(r), None) => Returns::Result(r.value),
                (None, Some(o)) => Returns::Option(o.value),
                (None, None) => Returns::Inferred,
            };
        let none_ttl_ms = match &self.none_ttl {
            None => None,
            Some(lit) => {
                if cache_none.is_none() {
                    return Err(Error::new(
                        lit.span(),
                        "`none_ttl` needs `cache_none = true` (only cached `None`s use it)",
                    ));
                }
                Some((duration::parse(lit, "none_ttl")?, lit.span()))
            }
        };
        let capacity = match &self.capacity {
            None => None,
            Some(lit) => {
                if tier == Tier::Redis {
                    return Err(Error::new(
                        lit.span(),
                        "`capacity` bounds the local tier, and `tier = \"redis\"` has none",
                    ));
                }
                let n: u64 = unsigned(lit, "capacity", u64::MAX)?;
                if n == 0 {
                    return Err(Error::new(lit.span(), "`capacity` must be at least 1"));
                }
                Some(n)
            }
        };
        let version = match &self.version {
            None => 1,
            Some(lit) => unsigned::<u32>(lit, "version", u32::MAX)?,
        };
        if let Some(k) = &self.key {
            if k.value().is_empty() {
                return Err(Error::new(k.span(), "`key` must not be empty"));
            }
        }
        if let Some(n) = &self.name {
            if n.value().trim().is_empty() {
                return Err(Error::new(n.span(), "`name` must not be empty"));
            }
        }
        let lock = self.lock.as_ref().filter(|b| b.value);
        if let (Some(b), Tier::Local) = (lock, tier) {
            return Err(Error::new(
                b.span(),
                "`lock` coordinates processes through Redis; it needs `tier = \"redis\"` or `\"local+redis\"` \
                 (in one process, concurrent misses already run the body once)",
            ));
        }
        let lock_lease_ms = match (&self.lock_lease, lock) {
            (Some(lit), None) => {
                return Err(Error::new(lit.span(), "`lock_lease` needs `lock = true`"))
            }
            (Some(lit), Some(_)) => Some(duration::parse(lit, "lock_lease")?),
            (None, Some(_)) => Some(10_000),
            (None, None) => None,
        };
        let mode = match &self.mode {
            None => None,
            Some(m) => match m.value().as_str() {
                "normal" => None,
                "observe" => Some("Observe"),
                "bypass" => Some("Bypass"),
                other => {
                    return Err(Error::new(
                        m.span(),
                        format!(
                        "unknown mode `{other}`; expected \"normal\", \"observe\" or \"bypass\""
                    ),
                    ))
                }
            },
        };
        if let Some(j) = &self.jitter {
            let v: f64 = j.base10_parse()?;
            if !(v > 0.0 && v <= 0.5) {
                return Err(Error::new(
                    j.span(),
                    "`jitter` is a fraction of the TTL in (0, 0.5], e.g. `jitter = 0.1` for ±10 %",
                ));
            }
        }
        let fail_safe = match (&self.stale, &self.stale_retry, &self.timeout) {
            (None, Some(lit), _) => {
                return Err(Error::new(
                    lit.span(),
                    "`stale_retry` needs `stale = \"...\"` (how long expired values are kept as a fallback)",
                ))
            }
            (None, None, Some(lit)) => {
                return Err(Error::new(
                    lit.span(),
                    "`timeout` needs `stale = \"...\"`: on timeout the stale value is served instead",
                ))
            }
            (None, None, None) => None,
            (Some(stale), retry, timeout) => Some(FailSafe {
                stale_ms: duration::parse(stale, "stale")?,
                retry_ms: match retry {
                    Some(lit) => duration::parse(lit, "stale_retry")?,
                    None => 10_000,
                },
                timeout: match timeout {
                    Some(lit) => Some((duration::parse(lit, "timeout")?, lit.span())),
                    None => None,
                },
            }),
        };
        let max_bytes = match &self.max_bytes {
            None => None,
            Some(lit) => {
                if tier == Tier::Redis {
                    return Err(Error::new(
                        lit.span(),
                        "`max_bytes` bounds the local tier, and `tier = \"redis\"` has none",
                    ));
                }
                if let Some(c) = &self.capacity {
                    return Err(Error::new(
                        c.span(),
                        "use either `capacity` (entries) or `max_bytes` (memory), not both",
                    ));
                }
                Some(parse_bytes(lit)?)
            }
        };
        let soft_timeout = match (&self.soft_timeout, &fail_safe) {
            (None, _) => None,
            (Some(lit), None) => {
                return Err(Error::new(
                    lit.span(),
                    "`soft_timeout` needs `stale = \"...\"`: past the soft timeout the stale value is served while the body finishes in the background",
                ))
            }
            (Some(lit), Some(_)) => Some((duration::parse(lit, "soft_timeout")?, lit.span())),
        };
        if let Some(f) = &self.refresh_ahead {
            let v: f64 = f.base10_parse()?;
            if !(v > 0.0 && v < 1.0) {
                return Err(Error::new(
                    f.span(),
                    "`refresh_ahead` is the fraction of the TTL after which a read refreshes the entry in the background, in (0, 1), e.g. `refresh_ahead = 0.8`",
                ));
            }
        }
        let krate = match &self.krate {
            None => runtime_path(),
            Some(lit) => lit.parse::<syn::Path>().map_err(|_| {
                Error::new(
                    lit.span(),
                    format!(
                        "`crate` expects the path of the runtime crate, e.g. `crate = \"my_app::cache\"`; `{}` is not a path",
                        lit.value()
                    ),
                )
            })?,
        };
        let in_trait = self.in_trait.as_ref().filter(|b| b.value).map(|b| b.span());
        if in_trait.is_some() {
            if let Some(p) = self.purge.as_ref().and_then(|p| p.first()) {
                return Err(Error::new(
                    p.span(),
                    "`purge` paths are purged by `invalidate_NAME`, `populate_NAME` and `refresh_NAME`, \
                     which `in_trait` does not generate; purge through `cache_runtime::edge` instead",
                ));
            }
            if let Some(e) = self.etag.as_ref().filter(|b| b.value) {
                return Err(Error::new(
                    e.span(),
                    "`etag` is read through `NAME_entry`, which `in_trait` does not generate; cache an \
                     inherent or free function and call its `NAME_entry` from the trait method",
                ));
            }
        }
        Ok(Options {
            in_trait,
            krate,
            soft_timeout,
            refresh_ahead: self.refresh_ahead,
            purge: self.purge.unwrap_or_default(),
            etag: self.etag.is_some_and(|b| b.value),
            max_bytes,
            fail_safe,
            jitter: self.jitter,
            mode,
            tags: self.tags.unwrap_or_default(),
            lock_lease_ms,
            tier,
            ttl_ms,
            local_ttl_ms,
            key: self.key,
            skip: self.skip.unwrap_or_default(),
            capacity,
            name: self.name,
            version,
            cache_none,
            none_ttl_ms,
            returns,
        })
    }
}

/// `1048576`, `"512KiB"`, `"64MiB"`, `"1GiB"` (also `KB`/`MB`/`GB` as powers of 1000).
fn parse_bytes(lit: &Lit) -> syn::Result<u64> {
    let bad = || {
        Error::new(
            lit.span(),
            "`max_bytes` expects bytes (`1048576`) or a size string (`\"512KiB\"`, `\"64MiB\"`, `\"1GiB\"`)",
        )
    };
    let too_large = || {
        Error::new(
            lit.span(),
            format!("`max_bytes` is too large (at most {} bytes)", u64::MAX),
        )
    };
    let n = match lit {
        Lit::Int(i) => unsigned::<u64>(i, "max_bytes", format_args!("{} bytes", u64::MAX))?,
        Lit::Str(s) => {
            let v = s.value();
            let split = v.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
            let (num, unit) = v.split_at(split);
            let num: u64 = match num.parse() {
                Ok(n) => n,
                Err(_) if !num.is_empty() => return Err(too_large()),
                Err(_) => return Err(bad()),
            };
            let factor: u64 = match unit.trim() {
                "B" => 1,
                "KiB" => 1 << 10,
                "MiB" => 1 << 20,
                "GiB" => 1 << 30,
                "KB" => 1_000,
                "MB" => 1_000_000,
                "GB" => 1_000_000_000,
                _ => return Err(bad()),
            };
            num.checked_mul(factor).ok_or_else(too_large)?
        }
        _ => return Err(bad()),
    };
    if n < 1024 {
        return Err(Error::new(lit.span(), "`max_bytes` must be at least 1KiB"));
    }
    Ok(n)
}

/// An integer option's value: an error that says why at the literal when it is negative
/// (`-1`, which syn reads as one literal) or does not fit `T`.
/// `max`: the largest value, as the message shows it.
pub(crate) fn unsigned<T: std::str::FromStr>(
    lit: &LitInt,
    what: &str,
    max: impl std::fmt::Display,
) -> syn::Result<T> {
    let digits = lit.base10_digits();
    digits.parse().map_err(|_| {
        let why = if digits.starts_with('-') {
            format!("`{what}` cannot be negative")
        } else {
            format!("`{what}` is too large (at most {max})")
        };
        Error::new(lit.span(), why)
    })
}

fn unknown_msg(what: &str) -> String {
    format!(
        "unknown option {what}; expected one of: {}",
        KNOWN.join(", ")
    )
}

impl Options {
    /// Whether `skip(...)` lists `name` (`self`, a parameter or a pattern's binding).
    pub fn skips(&self, name: &str) -> bool {
        self.skip
            .iter()
            .any(|s| syn::ext::IdentExt::unraw(s) == name)
    }
}

/// The runtime crate's path in the calling crate: `::cache_runtime`, or its name there when
/// its `Cargo.toml` renames the dependency (`cache = { package = "cache-runtime", .. }`, also
/// through `[workspace.dependencies]`). `crate = "..."` overrides it (a re-export).
pub(crate) fn runtime_path() -> syn::Path {
    use proc_macro_crate::{crate_name, FoundCrate};
    match crate_name("cache-runtime") {
        Ok(FoundCrate::Name(name)) if name != "cache_runtime" => {
            let ident = syn::Ident::new(&name, proc_macro2::Span::call_site());
            syn::parse_quote!(::#ident)
        }
        // The runtime's own tests, examples and doctests reach it as `::cache_runtime`; a
        // crate that does not name it (a facade's user) gets rustc's error, with `crate =
        // "..."` in the docs.
        _ => syn::parse_quote!(::cache_runtime),
    }
}
