use cache_runtime::cached;

// `key` is a template string; an expression gets the template it meant.
#[cached(ttl = 60, key = id)]
fn user(id: u64) -> u64 {
    id
}

#[cached(ttl = 60, key = format!("user:{}", id))]
fn user_formatted(id: u64) -> u64 {
    id
}

fn main() {}
