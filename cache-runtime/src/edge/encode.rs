//! Percent-encoding of purge paths and surrogate keys, with the `percent-encoding` crate.

use std::borrow::Cow;

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

/// What may not appear in a request target: controls, space, and `"#<>\^`{|}` (non-ASCII
/// bytes are always encoded). `%` is kept, so already encoded paths pass unchanged.
const PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// Separators of key lists (space; comma for xkey and `Cache-Tag`) and `%` itself, so that
/// decoding is unambiguous.
const SURROGATE_KEY: &AsciiSet = &CONTROLS.add(b' ').add(b',').add(b'%');

/// Percent-encodes what may not appear in an HTTP request target: control characters, space,
/// non-ASCII bytes (as UTF-8), and `"` `#` `<` `>` `\` `^` `` ` `` `{` `|` `}`. Everything
/// else, `%` included, is kept, so an already encoded path comes back unchanged (borrowed).
///
/// ```
/// use cache_runtime::edge::encode_path;
/// assert_eq!(encode_path("/users/42?x=1"), "/users/42?x=1");
/// assert_eq!(encode_path("/search/a b\n"), "/search/a%20b%0A");
/// assert_eq!(encode_path("/café"), "/caf%C3%A9");
/// assert_eq!(encode_path("/a%20b"), "/a%20b");
/// ```
pub fn encode_path(path: &str) -> Cow<'_, str> {
    utf8_percent_encode(path, PATH).into()
}

/// Encodes a surrogate key (tag) for `Surrogate-Key` / `xkey` / `Cache-Tag` headers and purge
/// APIs, where keys are separated by spaces or commas: percent-encodes `%`, space, comma,
/// control characters and non-ASCII bytes (as UTF-8), so that every key becomes one token of
/// visible ASCII and distinct keys stay distinct. Keys of letters, digits and `:-_./` come
/// back unchanged (borrowed). The HTTP layer and the purgers both use it.
///
/// ```
/// use cache_runtime::edge::encode_surrogate_key;
/// assert_eq!(encode_surrogate_key("user:42"), "user:42");
/// assert_eq!(encode_surrogate_key("team a,b"), "team%20a%2Cb");
/// assert_eq!(encode_surrogate_key("100%"), "100%25");
/// assert_eq!(encode_surrogate_key("é\t"), "%C3%A9%09");
/// ```
pub fn encode_surrogate_key(key: &str) -> Cow<'_, str> {
    utf8_percent_encode(key, SURROGATE_KEY).into()
}
