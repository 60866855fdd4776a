use cache_runtime::cached;

struct Repo {
    id: u64,
}

impl Repo {
    #[cached(ttl = 60, key = "user:<user>")]
    fn get(&self, user: u64) -> u64 {
        self.id + user
    }
}

fn main() {}
