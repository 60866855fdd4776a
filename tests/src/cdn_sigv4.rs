//! The CloudFront contract server's check of AWS Signature Version 4: the `Authorization`
//! header names the expected access key and the `cloudfront` / `us-east-1` scope, and its
//! signature is the one the secret gives for this exact request (recomputed with the
//! `aws-sigv4` crate over the signed headers, at the request's `X-Amz-Date`).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use axum::http::{Method, Uri};

/// `Err((AWS error code, message))` when the signature does not hold.
pub fn verify(
    key_id: &str,
    secret: &str,
    method: &Method,
    uri: &Uri,
    headers: &HashMap<String, String>,
    body: &[u8],
) -> Result<(), (&'static str, String)> {
    let mismatch = |why: &str| ("SignatureDoesNotMatch", why.to_string());
    let auth = headers
        .get("authorization")
        .ok_or(("MissingAuthenticationToken", "no Authorization".to_string()))?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| mismatch("not AWS4-HMAC-SHA256"))?;
    let field = |name: &str| {
        rest.split(", ")
            .find_map(|f| f.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
            .map(str::to_string)
    };
    let credential = field("Credential").ok_or_else(|| mismatch("no Credential"))?;
    let signed = field("SignedHeaders").ok_or_else(|| mismatch("no SignedHeaders"))?;
    let signature = field("Signature").ok_or_else(|| mismatch("no Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    if scope.first() != Some(&key_id) {
        return Err((
            "InvalidClientTokenId",
            "The security token included in the request is invalid.".into(),
        ));
    }
    if scope.get(2..) != Some(&["us-east-1", "cloudfront", "aws4_request"][..]) {
        return Err(mismatch(&format!("credential scope {credential}")));
    }
    let date = headers
        .get("x-amz-date")
        .ok_or_else(|| mismatch("no X-Amz-Date"))?;
    let time = parse_amz_date(date).ok_or_else(|| mismatch("bad X-Amz-Date"))?;
    let signed: Vec<&str> = signed.split(';').collect();
    if !signed.contains(&"host") || !signed.contains(&"x-amz-date") {
        return Err(mismatch("host and x-amz-date must be signed"));
    }
    // The signer adds host (from the URI) and x-amz-date (from the time) itself.
    let host = headers.get("host").ok_or_else(|| mismatch("no Host"))?;
    let url = format!(
        "http://{host}{}",
        uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let extra = signed
        .iter()
        .filter(|h| !matches!(**h, "host" | "x-amz-date"))
        .map(|h| {
            headers
                .get(*h)
                .map(|v| (*h, v.as_str()))
                .ok_or_else(|| mismatch(&format!("signed header {h} is missing")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let identity = Credentials::new(key_id, secret, None, None, "contract").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("cloudfront")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| mismatch(&e.to_string()))?
        .into();
    let request = SignableRequest::new(
        method.as_str(),
        url,
        extra.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| mismatch(&e.to_string()))?;
    let (_, expected) = sign(request, &params)
        .map_err(|e| mismatch(&e.to_string()))?
        .into_parts();
    if expected == signature {
        Ok(())
    } else {
        Err(mismatch(
            "The request signature we calculated does not match the signature you provided.",
        ))
    }
}

/// `YYYYMMDDTHHMMSSZ` as a time.
fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    if s.len() != 16 || &s[8..9] != "T" || &s[15..] != "Z" {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates_parse() {
        let t = parse_amz_date("20150830T123600Z").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs(),
            1_440_938_160
        );
        assert!(parse_amz_date("2015-08-30").is_none());
    }
}
