use cache_runtime::cached;

struct Repo {
    id: u64,
}

impl Repo {
    // Without `key`, `self` is part of the key.
    #[cached(ttl = 60)]
    fn load(&self, n: u64) -> u64 {
        self.id + n
    }
}

fn main() {}
