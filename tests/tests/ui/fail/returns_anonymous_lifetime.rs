use cache_runtime::cached;
use std::borrow::Cow;

#[cached(ttl = 60)]
fn trim_it(s: &str) -> Option<Cow<'_, str>> {
    Some(Cow::Borrowed(s))
}

fn main() {}
