//! A library with the lint wall many crates have: `missing_docs`, `unreachable_pub`,
//! `forbid(unsafe_code)`, clippy's pedantic and nursery groups, all denied. Its public
//! functions are cached, so every generated item is public and exported too: the workspace's
//! `cargo clippy --all-targets -- -D warnings` (CI) fails if one misses a doc section a lint
//! asks for (`missing_errors_doc` on a companion returning `Result`), uses `unsafe`, names
//! a path the prelude gives (`#[no_implicit_prelude]` below), or trips another lint.
#![forbid(unsafe_code)]
#![deny(
    warnings,
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    missing_copy_implementations,
    unused_qualifications,
    unused_results,
    rust_2018_idioms,
    single_use_lifetimes,
    trivial_casts,
    let_underscore_drop,
    unnameable_types,
    clippy::pedantic,
    clippy::nursery
)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::allow_attributes_without_reason,
    clippy::future_not_send
)]

use cache_runtime::cached;
use serde::{Deserialize, Serialize};

/// Stands for a database round trip.
async fn query() {
    std::future::ready(()).await;
}

/// A row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Its id.
    pub id: u64,
    /// Its name.
    pub name: String,
}

/// The database's error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DbError;

/// Loads a user (async, `Result`, both tiers, a tag).
///
/// # Errors
/// When the id is 0.
#[cached(tier = "local+redis", ttl = 300, key = "user:<id>", tags = ["user:<id>"])]
pub async fn get_user(id: u64) -> Result<User, DbError> {
    query().await;
    if id == 0 {
        return Err(DbError);
    }
    Ok(User {
        id,
        name: format!("user {id}"),
    })
}

/// The same, blocking.
///
/// # Errors
/// When the id is 0.
#[cached(tier = "local+redis", ttl = 300, key = "user-sync:<id>")]
pub fn get_user_sync(id: u64) -> Result<User, DbError> {
    if id == 0 {
        return Err(DbError);
    }
    Ok(User {
        id,
        name: format!("user {id}"),
    })
}

/// A lookup that may find nothing (`None` cached too).
#[cached(tier = "local", ttl = 60, key = "name:<name>", cache_none)]
pub async fn find(name: &str) -> Option<u64> {
    query().await;
    (!name.is_empty()).then_some(name.len() as u64)
}

/// A plain value.
#[cached(ttl = 60)]
#[must_use]
pub fn label(id: u64) -> String {
    format!("#{id}")
}

/// A body that could be `const` (`clippy::missing_const_for_fn`, nursery): `#[cached]`
/// refuses `const fn`, so the lint must not ask for it.
#[cached(ttl = 60)]
#[must_use]
pub fn double(id: u64) -> u64 {
    id.wrapping_mul(2)
}

/// A store behind a trait object.
pub trait Store {
    /// Its shard.
    fn shard(&self) -> u32;
}

impl dyn Store {
    /// A method of the trait object, its entries shared by every store: the generated docs
    /// link to it where rustdoc cannot resolve `Self::` (CI's `cargo doc`, warnings denied).
    #[cached(ttl = 60, skip(self))]
    #[must_use]
    pub fn label(&self, id: u64) -> String {
        format!("{}:{id}", self.shard())
    }
}

/// A repository of one shard.
#[derive(Clone, Copy, Debug)]
pub struct Repo {
    /// The shard.
    pub shard: u32,
}

impl Store for Repo {
    fn shard(&self) -> u32 {
        self.shard
    }
}

impl Repo {
    /// A method keyed by a field of `self`.
    ///
    /// # Errors
    /// When the id is 0.
    #[cached(tier = "local+redis", ttl = 30, key = "repo:<self.shard>:<id>")]
    pub async fn load(&self, id: u64) -> Result<u64, DbError> {
        query().await;
        if id == 0 {
            return Err(DbError);
        }
        Ok(id + u64::from(self.shard))
    }

    /// A method that takes its receiver by value.
    #[cached(ttl = 30, key = "owned:<self.shard>:<id>")]
    #[must_use]
    pub fn owned(self, id: u64) -> String {
        format!("{}:{id}", self.shard)
    }

    /// An `async` method that takes its receiver by value: its companions return a future
    /// that does not borrow `self`.
    #[cached(ttl = 30, key = "owned-async:<self.shard>:<id>", tags = ["owned:<id>"])]
    pub async fn owned_async(self, id: u64) -> Option<u64> {
        query().await;
        Some(id + u64::from(self.shard))
    }
}

/// Functions in a module without the prelude: generated code names every path itself.
#[no_implicit_prelude]
pub mod bare {
    use ::cache_runtime::cached;

    /// Blocking, `Result`, both tiers.
    ///
    /// # Errors
    /// Never.
    #[cached(tier = "local+redis", ttl = 60, key = "bare:<id>", tags = ["bare:<id>"])]
    pub fn bare_sync(id: u64) -> ::core::result::Result<u64, super::DbError> {
        ::core::result::Result::Ok(::std::string::ToString::to_string(&id).len() as u64)
    }

    /// Async, `Option`.
    #[cached(ttl = 60, key = "bare-async:<id>")]
    pub async fn bare_async(id: u64) -> ::core::option::Option<u64> {
        super::query().await;
        ::core::option::Option::Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_functions_behind_the_wall_cache() {
        pollster::block_on(async {
            assert_eq!(get_user(7).await.map(|u| u.id), Ok(7));
            assert_eq!(get_user(7).await.map(|u| u.id), Ok(7));
            assert_eq!(get_user(0).await, Err(DbError));
            assert_eq!(get_user_cache().stats().body_calls, 2);
            assert_eq!(
                lookup_get_user(7).await.map(|u| u.name),
                Some("user 7".into())
            );
            assert_eq!(invalidate_get_user(7).await, Ok(()));
            assert_eq!(lookup_get_user(7).await, None);

            assert_eq!(find("").await, None);
            assert_eq!(find("").await, None);
            assert_eq!(find_cache().stats().body_calls, 1);

            let repo = Repo { shard: 3 };
            assert_eq!(repo.load(1).await, Ok(4));
            assert_eq!(repo.lookup_load(1).await, Some(4));
            assert_eq!(bare::bare_async(5).await, Some(5));
            assert_eq!(repo.owned_async(1).await, Some(4));
            assert_eq!(repo.lookup_owned_async(1).await, Some(4));
            assert_eq!(repo.invalidate_owned_async(1).await, Ok(()));
            assert_eq!(repo.populate_owned_async(1, 9).await, Ok(()));
            assert_eq!(repo.owned_async(1).await, Some(9));
        });
        assert_eq!(get_user_sync(2).map(|u| u.id), Ok(2));
        assert_eq!(lookup_get_user_sync(2).map(|u| u.id), Some(2));
        assert_eq!(label(1), "#1");
        assert_eq!(lookup_label(1).as_deref(), Some("#1"));
        assert_eq!(Repo { shard: 1 }.owned(2), "1:2");
        assert_eq!(Repo { shard: 1 }.lookup_owned(2).as_deref(), Some("1:2"));
        assert_eq!(bare::bare_sync(900), Ok(3));
        assert_eq!(double(2), 4);
        assert_eq!(lookup_double(2), Some(4));
        let store: &dyn Store = &Repo { shard: 5 };
        assert_eq!(store.label(1), "5:1");
        assert_eq!(store.lookup_label(1).as_deref(), Some("5:1"));
        assert_eq!(bare::lookup_bare_sync(900), Some(3));
    }
}
