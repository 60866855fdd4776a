use cache_runtime::cached;

struct Filter {
    tag: String,
}

#[cached(ttl = 60, key = "search:<filter>")]
fn search(filter: Filter) -> Vec<String> {
    vec![filter.tag]
}

fn main() {}
