use cache_runtime::key::KeyPart;

#[derive(KeyPart)]
struct Query {
    #[key(rename = "q")]
    text: String,
}

fn main() {}
