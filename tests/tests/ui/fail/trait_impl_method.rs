use cache_runtime::cached;

trait Load {
    fn load(&self, id: u64) -> u64;
}

struct Repo;

// The companions (`invalidate_load`, ...) cannot be members of the trait. Cache an inherent
// or free function and call it from the trait method instead.
impl Load for Repo {
    #[cached(ttl = 60, skip(self))]
    fn load(&self, id: u64) -> u64 {
        id
    }
}

fn main() {}
