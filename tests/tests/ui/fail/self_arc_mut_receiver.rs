use cache_runtime::cached;
use std::pin::Pin;

struct Repo {
    id: u64,
}

impl Repo {
    // A shared reference to a pointer to `Self` is accepted (`self: &Arc<Self>`); one that
    // hands out `&mut Self` is not.
    #[cached(ttl = 60, key = "repo:<self.id>")]
    fn get(self: &Pin<&mut Self>) -> u64 {
        self.id
    }
}

fn main() {}
