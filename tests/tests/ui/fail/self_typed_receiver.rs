use cache_runtime::cached;
use std::sync::Arc;

struct Repo {
    id: u64,
}

impl Repo {
    #[cached(ttl = 60, key = "repo:<self.id>")]
    fn get(self: Arc<Self>) -> u64 {
        self.id
    }
}

fn main() {}
