use cache_runtime::cached;

#[derive(Clone)]
struct Repo {
    id: u64,
}

impl Repo {
    #[cached(ttl = 60, key = "repo:<id>")]
    fn load(id: u64) -> Self {
        Repo { id }
    }
}

fn main() {}
