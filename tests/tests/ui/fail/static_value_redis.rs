use cache_runtime::cached;

#[cached(tier = "redis", ttl = 60)]
fn country_name(code: &str) -> Option<&'static str> {
    let _ = code;
    None
}

fn main() {}
