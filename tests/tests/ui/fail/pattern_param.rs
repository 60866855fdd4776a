use cache_runtime::cached;

// Destructuring into plain bindings is fine; a `ref` binding (or a literal, or `x @ ..`) is not.
#[cached(ttl = 60)]
fn f((ref a, b): (u8, u8)) -> u8 {
    a + b
}

fn main() {}
