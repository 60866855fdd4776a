use cache_runtime::cached;

trait Load {
    fn load(&self, id: u64) -> u64;
}

struct Repo;

// `purge` runs in the companions, which `in_trait` does not generate.
impl Load for Repo {
    #[cached(ttl = 60, in_trait, skip(self), purge = ["/items/<id>"])]
    fn load(&self, id: u64) -> u64 {
        id
    }
}

fn main() {}
