use cache_runtime::cached;

struct Repo {
    id: u64,
}

impl Repo {
    #[cached(ttl = 60, key = "repo:<self.id>")]
    fn get(self: &mut Self) -> u64 {
        self.id
    }
}

fn main() {}
