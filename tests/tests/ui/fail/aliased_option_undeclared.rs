use cache_runtime::cached;

type Lookup = Option<String>;

#[cached(ttl = 60)]
fn find(id: u8) -> Lookup {
    (id > 0).then(|| id.to_string())
}

fn main() {}
