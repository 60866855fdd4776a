use cache_runtime::cached;

struct Repo;

// The second attribute would go to `load_uncached`, which the method calls on a miss: a
// second cache that `invalidate_load` never reaches (it would serve the old value again).
impl Repo {
    #[cached(ttl = 60, skip(self))]
    #[cached(ttl = 30, skip(self))]
    fn load(&self, id: u64) -> u64 {
        id
    }
}

// Through `cfg_attr` too.
#[cached(ttl = 60)]
#[cfg_attr(not(any()), cache_runtime::cached(ttl = 30))]
fn total(id: u64) -> u64 {
    id
}

fn main() {}
