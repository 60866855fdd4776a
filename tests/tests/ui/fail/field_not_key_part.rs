use cache_runtime::cached;

struct Filter {
    tag: String,
}

struct Query {
    page: u32,
    filter: Filter,
}

#[cached(ttl = 60, key = "search:<q.page>:<q.filter>")]
fn search(q: &Query) -> Vec<String> {
    vec![format!("{}{}", q.page, q.filter.tag)]
}

fn main() {}
