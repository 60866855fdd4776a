//! Associated functions without `self`: companions are associated functions too.
#![deny(warnings)]

use cache_runtime::cached;

#[derive(Clone, Debug, PartialEq)]
pub struct User {
    id: u64,
}

pub struct Repo;

impl Repo {
    #[cached(ttl = 60, key = "repo:user:<id>")]
    pub fn load(id: u64) -> Option<User> {
        (id > 0).then_some(User { id })
    }

    // `Self` in the body, and the default key.
    #[cached(ttl = 60)]
    fn doubled(id: u64) -> u64 {
        Self::helper(id) * 2
    }

    fn helper(id: u64) -> u64 {
        id
    }

    #[cached(ttl = 60, key = "repo:async:<id>")]
    async fn fetch(id: u64) -> Result<User, String> {
        if id == 0 {
            return Err("no user 0".into());
        }
        let user = Self::load(id).ok_or("missing")?;
        Ok(user)
    }

    pub fn update(id: u64) {
        Self::invalidate_load(id).unwrap();
    }
}

#[tokio::main]
pub async fn main() {
    assert_eq!(Repo::load(1), Some(User { id: 1 }));
    assert_eq!(Repo::lookup_load(1), Some(User { id: 1 }));
    Repo::update(1);
    assert_eq!(Repo::lookup_load(1), None);
    Repo::populate_load(2, User { id: 2 }).unwrap();
    assert_eq!(Repo::load_cache().stats().body_calls, 1);
    assert_eq!(Repo::doubled(3), 6);
    assert_eq!(Repo::lookup_doubled(3), Some(6));
    assert_eq!(Repo::fetch(4).await, Ok(User { id: 4 }));
    assert_eq!(Repo::fetch(0).await, Err("no user 0".to_string()));
    assert_eq!(Repo::lookup_fetch(4).await, Some(User { id: 4 }));
    assert!(Repo::load_uncached(5).is_some());
}
