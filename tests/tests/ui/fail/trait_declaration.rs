use cache_runtime::cached;

// A declaration has no body to cache: the impls' methods take `#[cached(in_trait, ...)]`.
trait Repo {
    #[cached(ttl = 60, in_trait, skip(self))]
    fn load(&self, id: u64) -> u64;
}

fn main() {}
