use cache_runtime::cached;
use std::sync::Arc;

struct Repo {
    id: u64,
}

impl Repo {
    // `self: &Arc<Self>` is accepted; without `key`, `self` is part of the key, so `Repo`
    // must be a `KeyPart` (reported at `self`, as for `&self`).
    #[cached(ttl = 60)]
    fn load(self: &Arc<Self>, n: u64) -> u64 {
        self.id + n
    }
}

fn main() {}
