use cache_runtime::cached;
use std::pin::Pin;

struct Repo {
    id: u64,
}

impl Repo {
    // `self`, `self: Arc<Self>` and `self: Box<Self>` are taken by value; a pinned `&mut`
    // hands out a mutation a hit would skip.
    #[cached(ttl = 60, key = "repo:<self.id>")]
    fn get(self: Pin<&mut Self>) -> u64 {
        self.id
    }
}

fn main() {}
