//! Key templates: `"user:profile:<id>"`, `"org:<self.org_id>:<user.id>"`.

use syn::{Error, LitStr};

/// The one definition of the key separators: `cache_runtime::key::SEPARATORS` is this list,
/// through [`__key_separators!`](crate::__key_separators). Interpolated values never contain
/// these unescaped, so a placeholder followed by one of them (or by the end) is unambiguous.
pub const SEPARATORS: &[char] = &[':', '/', '|', ',', ';', '#', '=', '&', '@', '!', '?', '.'];

#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Literal(String),
    /// `root.field.field`
    Placeholder {
        root: String,
        fields: Vec<String>,
    },
}

/// Parses and checks the template's syntax. Names are checked by the caller, which knows the
/// parameters.
pub fn parse(lit: &LitStr) -> syn::Result<Vec<Segment>> {
    let text = lit.value();
    let err = |msg: String| Error::new(lit.span(), msg);
    let mut segments = Vec::new();
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let open = rest.find('<');
        let close = rest.find('>');
        match (open, close) {
            (_, Some(c)) if open.is_none_or(|o| c < o) => {
                return Err(err(format!(
                    "unmatched `>` in key template `{text}`; placeholders look like `<param>`"
                )))
            }
            (None, _) => {
                segments.push(Segment::Literal(rest.to_string()));
                break;
            }
            (Some(o), None) => {
                return Err(err(format!(
                    "unclosed `<` in key template `{text}`: `{}` needs a closing `>`",
                    &rest[o..]
                )))
            }
            (Some(o), Some(c)) => {
                if o > 0 {
                    segments.push(Segment::Literal(rest[..o].to_string()));
                }
                let inner = &rest[o + 1..c];
                if inner.contains('<') {
                    return Err(err(format!(
                        "unclosed `<` in key template `{text}` before `<{}`",
                        &inner[inner.rfind('<').unwrap_or(0) + 1..]
                    )));
                }
                let mut parts = inner.split('.');
                let root = parts.next().unwrap_or_default().trim();
                if root.is_empty() {
                    return Err(err(format!(
                        "empty placeholder `<{inner}>` in key template `{text}`; write `<param>` or `<param.field>`"
                    )));
                }
                let fields: Vec<String> = parts.map(|f| f.trim().to_string()).collect();
                for name in std::iter::once(root).chain(fields.iter().map(String::as_str)) {
                    if !is_ident_or_index(name) {
                        return Err(err(format!(
                            "invalid placeholder `<{inner}>` in key template `{text}`: `{name}` is not a parameter or field name"
                        )));
                    }
                }
                let unraw = |n: &str| n.strip_prefix("r#").unwrap_or(n).to_string();
                segments.push(Segment::Placeholder {
                    root: unraw(root),
                    fields: fields.iter().map(|f| unraw(f)).collect(),
                });
                rest = &rest[c + 1..];
                if let Some(next) = rest.chars().next() {
                    if !SEPARATORS.contains(&next) {
                        let seps: String = SEPARATORS.iter().collect();
                        return Err(err(format!(
                            "placeholder `<{inner}>` in key template `{text}` is followed by `{next}`; \
                             a placeholder must be followed by a separator (one of `{seps}`) or end the \
                             key, so that distinct arguments can never produce the same key"
                        )));
                    }
                }
            }
        }
    }
    Ok(segments)
}

fn is_ident_or_index(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_digit() => s.chars().all(|c| c.is_ascii_digit()),
        // `r#type`: a raw identifier names the same parameter or field as `type`.
        Some('r') if s.starts_with("r#") && s.len() > 2 => is_ident_or_index(&s[2..]),
        Some(c) if c == '_' || c.is_alphabetic() => chars.all(|c| c == '_' || c.is_alphanumeric()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> syn::Result<Vec<Segment>> {
        parse(&LitStr::new(s, proc_macro2::Span::call_site()))
    }

    #[test]
    fn parses_literals_and_fields() {
        assert_eq!(
            p("user:<id>:<self.org.id>").unwrap(),
            vec![
                Segment::Literal("user:".into()),
                Segment::Placeholder {
                    root: "id".into(),
                    fields: vec![]
                },
                Segment::Literal(":".into()),
                Segment::Placeholder {
                    root: "self".into(),
                    fields: vec!["org".into(), "id".into()]
                },
            ]
        );
    }

    #[test]
    fn raw_identifiers_name_the_plain_name() {
        assert_eq!(
            p("<r#type>:<self.r#loop>").unwrap(),
            p("<type>:<self.loop>").unwrap()
        );
        assert!(p("<r#>").is_err());
    }

    #[test]
    fn rejects_bad_templates() {
        for bad in [
            "user:<id", "user:<>", "a<b>c", "<a><b>", "x>y", "<a b>", "<a.>", "<<a>",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }
}
