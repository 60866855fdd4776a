use cache_runtime::key::KeyPart;

struct Opaque;

#[derive(KeyPart)]
enum Query {
    ById(u64),
    Custom { inner: Opaque },
}

fn main() {}
