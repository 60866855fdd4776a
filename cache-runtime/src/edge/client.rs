//! What the built-in HTTP purgers share (cargo feature `edge`): one hyper client per purger
//! (HTTP/1.1, rustls with ring and the system's roots for `https://`), requests bounded by a
//! deadline, answers classified into [`PurgeError`]s (`Retry-After` included), and
//! credentials kept out of logs and messages.

use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{EdgeError, PurgeError};

pub(super) type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Response bodies are read (so connections are reused) up to this size, for error messages.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The wait after a 429 that carries no (readable) `Retry-After`.
const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(1);

/// What an edge or API answered.
#[derive(Debug)]
pub(super) struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<Duration>,
    pub body: String,
}

/// Sends a request with a deadline and reads (a bounded part of) the answer.
pub(super) async fn send(
    client: &HttpClient,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Answer, PurgeError> {
    let what = format!("{} {}", req.method(), redact(&req.uri().to_string()));
    let exchange = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| PurgeError::transient(format!("{what}: {}", error_chain(&e))))?;
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(PurgeError::transient(format!(
                "{what}: no answer within {timeout:?}"
            )))
        })
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// The error for a non-success answer: 401/403 refuse the credentials, 429 is a rate limit
/// (waits for `Retry-After`), 408 and 5xx are transient, anything else permanent. `detail` is
/// what the provider's error body says (or the body itself, shortened).
pub(super) fn status_error(who: &str, answer: &Answer, detail: &str) -> PurgeError {
    let status = answer.status;
    let msg = if detail.is_empty() {
        format!("{who} answered {status}")
    } else {
        format!("{who} answered {status}: {detail}")
    };
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => PurgeError::unauthorized(msg),
        StatusCode::TOO_MANY_REQUESTS => {
            PurgeError::rate_limited(msg, answer.retry_after.unwrap_or(DEFAULT_RATE_LIMIT_WAIT))
        }
        s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => match answer.retry_after {
            Some(after) => PurgeError::rate_limited(msg, after),
            None => PurgeError::transient(msg),
        },
        _ => PurgeError::permanent(msg),
    }
}

/// The first 200 characters of a body, trimmed, for messages.
pub(super) fn snippet(body: &str) -> String {
    body.trim().chars().take(200).collect()
}

/// A failure on some items: transient if any part may succeed on a retry.
pub(super) fn partial_failure(
    what: &str,
    total: usize,
    failed: super::PurgeBatch,
    first: PurgeError,
    retryable: bool,
) -> PurgeError {
    let msg = format!("{} of {total} {what} failed: {first}", failed.len());
    let e = if first.is_unauthorized() {
        PurgeError::unauthorized(msg)
    } else if let (true, Some(after)) = (retryable, first.retry_after()) {
        PurgeError::rate_limited(msg, after)
    } else if retryable {
        PurgeError::transient(msg)
    } else {
        PurgeError::permanent(msg)
    };
    e.with_items(failed)
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

pub(super) fn check_url(url: &str) -> Result<&str, EdgeError> {
    let uri: Uri = url
        .parse()
        .map_err(|e| EdgeError::InvalidUrl(format!("{}: {e}", redact(url))))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(url),
        _ => Err(EdgeError::InvalidUrl(format!(
            "{}: expected http://host[:port][/prefix] or https://...",
            redact(url)
        ))),
    }
}

pub(super) fn header_value(v: &str) -> Result<HeaderValue, EdgeError> {
    HeaderValue::from_str(v).map_err(|_| EdgeError::InvalidHeader(format!("value {v:?}")))
}

/// A header value holding a secret: never shown (the message names the header only), and
/// marked sensitive so that hyper's debug output hides it.
pub(super) fn secret_header(name: &str, v: &str) -> Result<HeaderValue, EdgeError> {
    let mut value = HeaderValue::from_str(v)
        .map_err(|_| EdgeError::InvalidHeader(format!("value of {name}")))?;
    value.set_sensitive(true);
    Ok(value)
}

pub(super) fn headers(
    list: &[(String, String)],
) -> Result<Vec<(HeaderName, HeaderValue)>, EdgeError> {
    list.iter()
        .map(|(k, v)| {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| EdgeError::InvalidHeader(format!("name {k:?}")))?;
            Ok((name, secret_header(k, v)?))
        })
        .collect()
}

/// Hides credentials in `scheme://user:password@host/...` for logs.
pub(super) fn redact(url: &str) -> String {
    if let Some(s) = url.find("://") {
        let rest = &url[s + 3..];
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return format!("{}://***@{}", &url[..s], &rest[at + 1..]);
        }
    }
    url.to_string()
}

pub(super) fn client(timeout: Duration) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeout));
    http.set_nodelay(true);
    let provider = rustls::crypto::ring::default_provider();
    let connector = match hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider.clone())
    {
        Ok(b) => b,
        Err(e) => {
            // No system certificates: plain http:// still works; https:// fails per request
            // with a certificate error that names the cause.
            tracing::debug!(error = %e, "edge purge: no native root certificates");
            let config = rustls::ClientConfig::builder_with_provider(provider.into())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
        }
    }
    .https_or_http()
    .enable_http1()
    .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(code: u16, retry_after: Option<u64>) -> Answer {
        Answer {
            status: StatusCode::from_u16(code).unwrap(),
            retry_after: retry_after.map(Duration::from_secs),
            body: String::new(),
        }
    }

    #[test]
    fn statuses_are_classified() {
        let e = |code, ra| status_error("edge", &answer(code, ra), "");
        assert!(e(503, None).is_retryable());
        assert_eq!(e(429, Some(7)).retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(e(429, None).retry_after(), Some(DEFAULT_RATE_LIMIT_WAIT));
        assert!(e(401, None).is_unauthorized() && !e(401, None).is_retryable());
        assert!(e(403, None).is_unauthorized());
        assert!(!e(405, None).is_retryable() && !e(405, None).is_unauthorized());
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("12"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(12)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
    }

    #[test]
    fn urls_are_checked_and_credentials_redacted() {
        assert!(check_url("http://127.0.0.1:6081").is_ok());
        assert!(check_url("https://edge.example.com/prefix").is_ok());
        assert!(check_url("ftp://x").is_err());
        assert!(check_url("/relative").is_err());
        assert_eq!(redact("https://u:p@h/x"), "https://***@h/x");
        assert_eq!(redact("http://h/a@b"), "http://h/a@b");
    }
}
