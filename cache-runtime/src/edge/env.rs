//! The edge described by the environment: `CACHE_EDGE` names the CDNs, `CACHE_EDGE_PURGE_URL`
//! the Varnish-style edges, and each CDN has its own variables (see `docs/EDGE.md`).

use std::time::Duration;

use super::builder::DEFAULT_REPURGE_AFTER;
use super::Edge;

/// Reads a variable: `None` when unset or blank.
pub(super) type Vars<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The edge described by the process's environment, if any.
pub(super) fn from_env() -> Option<Edge> {
    from_vars(&|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
}

/// The edge described by `var`: `CACHE_EDGE` (comma-separated `varnish`, `cloudflare`,
/// `fastly`, `cloudfront`; `varnish` alone when unset and `CACHE_EDGE_PURGE_URL` is set) and
/// the variables of each. A CDN whose settings are missing is skipped with a warning naming
/// the missing variable (never a value: they hold secrets).
pub(super) fn from_vars(var: Vars<'_>) -> Option<Edge> {
    let cdns = match var("CACHE_EDGE") {
        Some(list) => list,
        None => {
            var("CACHE_EDGE_PURGE_URL")?;
            "varnish".to_string()
        }
    };
    let repurge = repurge_from_env(var("CACHE_EDGE_REPURGE_MS").as_deref());
    let mut builder = Edge::builder().repurge_after(repurge);
    let mut any = false;
    for cdn in cdns.split(',').map(|c| c.trim().to_ascii_lowercase()) {
        if cdn.is_empty() {
            continue;
        }
        match cdn_purgers(&cdn, var) {
            Ok(purgers) => {
                builder = purgers.into_iter().fold(builder, |b, p| b.purger_arc(p));
                any = true;
            }
            Err(e) => {
                tracing::warn!(cdn = %cdn, error = %e, "edge purges for this CDN are off");
            }
        }
    }
    any.then(|| builder.build())
}

/// `CACHE_EDGE_REPURGE_MS`: milliseconds (0: off); unset, empty or invalid: the default.
pub(super) fn repurge_from_env(value: Option<&str>) -> Duration {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => DEFAULT_REPURGE_AFTER,
        Some(v) => match v.parse::<u64>() {
            Ok(ms) => Duration::from_millis(ms),
            Err(_) => {
                tracing::warn!(
                    value = v,
                    default = ?DEFAULT_REPURGE_AFTER,
                    "CACHE_EDGE_REPURGE_MS is not a number of milliseconds; using the default"
                );
                DEFAULT_REPURGE_AFTER
            }
        },
    }
}

type Purgers = Vec<std::sync::Arc<dyn super::Purger>>;

/// The purgers of one CDN.
#[cfg(feature = "edge")]
fn cdn_purgers(cdn: &str, var: Vars<'_>) -> Result<Purgers, super::EdgeError> {
    use super::{CloudFrontPurger, CloudflarePurger, EdgeError, FastlyPurger};
    let need = |name: &str| {
        var(name).ok_or_else(|| EdgeError::Config(format!("{name} is not set (CACHE_EDGE={cdn})")))
    };
    Ok(match cdn {
        "varnish" => return varnish(&need("CACHE_EDGE_PURGE_URL")?, var),
        "cloudflare" => {
            let mut b = CloudflarePurger::builder(
                need("CACHE_EDGE_CLOUDFLARE_ZONE")?,
                need("CACHE_EDGE_CLOUDFLARE_TOKEN")?,
            )
            .site(need("CACHE_EDGE_SITE_URL")?);
            if let Some(api) = var("CACHE_EDGE_CLOUDFLARE_API") {
                b = b.api_base(api);
            }
            vec![std::sync::Arc::new(b.build()?)]
        }
        "fastly" => {
            let mut b = FastlyPurger::builder(
                need("CACHE_EDGE_FASTLY_SERVICE")?,
                need("CACHE_EDGE_FASTLY_TOKEN")?,
            )
            .soft(var("CACHE_EDGE_FASTLY_SOFT").is_some_and(|v| truthy(&v)));
            if let Some(site) = var("CACHE_EDGE_SITE_URL") {
                b = b.site(site);
            }
            if let Some(api) = var("CACHE_EDGE_FASTLY_API") {
                b = b.api_base(api);
            }
            vec![std::sync::Arc::new(b.build()?)]
        }
        "cloudfront" => {
            let mut b = CloudFrontPurger::builder(need("CACHE_EDGE_CLOUDFRONT_DISTRIBUTION")?)
                .credentials(
                    need("AWS_ACCESS_KEY_ID")?,
                    need("AWS_SECRET_ACCESS_KEY")?,
                    var("AWS_SESSION_TOKEN"),
                );
            match var("CACHE_EDGE_CLOUDFRONT_TAGS").as_deref() {
                None | Some("fail") => {}
                Some("ignore") => b = b.ignore_tags(),
                Some(other) => {
                    return Err(EdgeError::Config(format!(
                        "CACHE_EDGE_CLOUDFRONT_TAGS={other:?}: expected `fail` or `ignore`"
                    )))
                }
            }
            if let Some(api) = var("CACHE_EDGE_CLOUDFRONT_API") {
                b = b.api_base(api);
            }
            vec![std::sync::Arc::new(b.build()?)]
        }
        other => {
            return Err(EdgeError::Config(format!(
                "CACHE_EDGE: unknown CDN {other:?} (expected varnish, cloudflare, fastly \
                     or cloudfront)"
            )))
        }
    })
}

/// `CACHE_EDGE_PURGE_URL` (comma-separated) and `CACHE_EDGE_PURGE_HOST`: an `HttpPurger` and
/// an xkey `SurrogateKeyPurger` per URL, what the shipped VCL expects.
#[cfg(feature = "edge")]
fn varnish(urls: &str, var: Vars<'_>) -> Result<Purgers, super::EdgeError> {
    use super::{HttpPurger, SurrogateKeyPurger};
    let host = var("CACHE_EDGE_PURGE_HOST");
    let mut purgers: Purgers = Vec::new();
    for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let mut paths = HttpPurger::builder(url);
        let mut keys = SurrogateKeyPurger::xkey(url);
        if let Some(h) = &host {
            paths = paths.host(h);
            keys = keys.host(h);
        }
        match (paths.build(), keys.build()) {
            (Ok(p), Ok(k)) => {
                purgers.push(std::sync::Arc::new(p));
                purgers.push(std::sync::Arc::new(k));
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "CACHE_EDGE_PURGE_URL: skipping one URL");
            }
        }
    }
    if purgers.is_empty() {
        return Err(super::EdgeError::Config(
            "CACHE_EDGE_PURGE_URL has no usable URL".into(),
        ));
    }
    Ok(purgers)
}

#[cfg(feature = "edge")]
fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

#[cfg(not(feature = "edge"))]
fn cdn_purgers(_cdn: &str, _var: Vars<'_>) -> Result<Purgers, &'static str> {
    Err("cache-runtime was built without its `edge` feature: edge purges are disabled")
}
