use cache_runtime::cached;

#[cached(ttl = 60, key = "user:<id>", skip(trace), purge = ["/users/<id>?t=<trace>"])]
fn user(id: u64, trace: bool) -> String {
    let _ = trace;
    id.to_string()
}

fn main() {}
