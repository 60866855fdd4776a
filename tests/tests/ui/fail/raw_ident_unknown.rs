use cache_runtime::cached;

#[cached(ttl = 60, key = "k:<r#typ>")]
fn f(r#type: u8) -> u8 {
    r#type
}

fn main() {}
