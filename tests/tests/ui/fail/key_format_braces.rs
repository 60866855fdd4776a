use cache_runtime::cached;

// `format!` placeholders in a template: `<id>` was meant.
#[cached(ttl = 60, key = "user:{id}")]
fn user(id: u64) -> u64 {
    id
}

fn main() {}
