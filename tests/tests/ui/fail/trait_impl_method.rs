use cache_runtime::cached;

trait Load {
    fn load(&self, id: u64) -> u64;
}

struct Repo;

// Without `in_trait`, the companions (`invalidate_load`, ...) are generated too, and they
// cannot be members of the trait. The first error names the fix.
impl Load for Repo {
    #[cached(ttl = 60, skip(self))]
    fn load(&self, id: u64) -> u64 {
        id
    }
}

fn main() {}
