use cache_runtime::cached;

trait Load {
    fn load(&self, id: u64) -> u64;
}

struct Repo;

impl Load for Repo {
    #[cached(ttl = 60, in_trait, skip(self))]
    fn load(&self, id: u64) -> u64 {
        id
    }
}

fn main() {
    // `in_trait` generates the method alone.
    Repo.invalidate_load(1).unwrap();
}
