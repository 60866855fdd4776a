use cache_runtime::cached;
use std::borrow::Cow;

#[cached(ttl = 60)]
fn trim_it<'a>(s: Cow<'a, str>) -> Cow<'a, str> {
    s
}

fn main() {}
