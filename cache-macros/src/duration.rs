//! `ttl = 300` (seconds) or `ttl = "250ms" | "30s" | "5m" | "1h" | "1d"`, to milliseconds.

use syn::{Error, Lit};

pub fn parse(lit: &Lit, what: &str) -> syn::Result<u64> {
    let ms = match lit {
        Lit::Int(i) => {
            let max = format!("{} seconds", u64::MAX / 1000);
            let secs: u64 = crate::options::unsigned(i, what, &max)?;
            secs.checked_mul(1000).ok_or_else(|| {
                Error::new(i.span(), format!("`{what}` is too large (at most {max})"))
            })?
        }
        Lit::Str(s) => parse_str(&s.value())
            .map_err(|msg| Error::new(s.span(), format!("invalid duration for `{what}`: {msg}")))?,
        other => {
            return Err(Error::new(
                other.span(),
                format!(
                    "`{what}` expects seconds (`{what} = 300`) or a duration string \
                     (`{what} = \"250ms\"`, `\"30s\"`, `\"5m\"`, `\"1h\"`, `\"1d\"`)"
                ),
            ))
        }
    };
    if ms == 0 {
        return Err(Error::new(
            lit.span(),
            format!("`{what}` must be greater than zero"),
        ));
    }
    Ok(ms)
}

fn parse_str(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}` has no unit; use ms, s, m, h or d (e.g. \"{s}s\")"))?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!("`{s}` does not start with a number"));
    }
    let n: u64 = num.parse().map_err(|_| format!("`{num}` is too large"))?;
    let factor = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("unknown unit `{other}`; use ms, s, m, h or d")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("`{s}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_str;

    #[test]
    fn units() {
        assert_eq!(parse_str("250ms"), Ok(250));
        assert_eq!(parse_str("30s"), Ok(30_000));
        assert_eq!(parse_str("5m"), Ok(300_000));
        assert_eq!(parse_str("1h"), Ok(3_600_000));
        assert_eq!(parse_str("2d"), Ok(172_800_000));
        assert!(parse_str("5").is_err());
        assert!(parse_str("s").is_err());
        assert!(parse_str("5 parsecs").is_err());
        assert!(parse_str("1.5s").is_err());
    }
}
