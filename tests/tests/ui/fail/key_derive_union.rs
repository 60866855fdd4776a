use cache_runtime::key::KeyPart;

#[derive(KeyPart)]
union Bits {
    n: u32,
    f: f32,
}

fn main() {}
