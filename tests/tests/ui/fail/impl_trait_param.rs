use cache_runtime::cached;

#[cached(ttl = 60)]
fn f(name: impl AsRef<str>) -> String {
    name.as_ref().to_string()
}

fn main() {}
