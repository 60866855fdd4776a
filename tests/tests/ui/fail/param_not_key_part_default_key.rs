use cache_runtime::cached;

struct Filter {
    tag: String,
}

#[cached(ttl = 60)]
fn search(page: u32, filter: Filter) -> Vec<String> {
    vec![format!("{page}{}", filter.tag)]
}

fn main() {}
