//! `#[tracing::instrument]` stacked with `#[cached]`, above (it instruments the body, which
//! runs on misses) and below (it goes to `NAME_uncached`), on free functions, methods,
//! `async fn`s and `Result`s with `err`.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use cache_runtime::cached;

static USERS: AtomicUsize = AtomicUsize::new(0);
static ORDERS: AtomicUsize = AtomicUsize::new(0);
static SVC: AtomicUsize = AtomicUsize::new(0);
static SVC_BELOW: AtomicUsize = AtomicUsize::new(0);

pub struct Pool;

#[tracing::instrument(skip(pool))]
#[cached(ttl = 60, key = "user:<id>", skip(pool))]
async fn user(pool: &Pool, id: u64) -> Result<String, String> {
    USERS.fetch_add(1, SeqCst);
    let _ = pool;
    Ok(format!("u{id}"))
}

#[cached(ttl = 60, key = "order:<id>")]
#[tracing::instrument(level = "debug", err)]
fn order(id: u64) -> Result<u64, String> {
    ORDERS.fetch_add(1, SeqCst);
    if id == 0 {
        return Err("no order 0".into());
    }
    Ok(id * 10)
}

pub struct Svc {
    tenant: u32,
}

impl Svc {
    #[tracing::instrument(skip(self), fields(tenant = self.tenant))]
    #[cached(ttl = 60, key = "svc:<self.tenant>:<id>")]
    async fn get(&self, id: u64) -> u64 {
        SVC.fetch_add(1, SeqCst);
        id + u64::from(self.tenant)
    }

    #[cached(ttl = 60, key = "svc-below:<id>", skip(self))]
    #[tracing::instrument(skip(self), ret)]
    fn below(&self, id: u64) -> u64 {
        SVC_BELOW.fetch_add(1, SeqCst);
        id
    }
}

#[test]
fn instrument_above_and_below() {
    pollster::block_on(async {
        assert_eq!(user(&Pool, 1).await.as_deref(), Ok("u1"));
        assert_eq!(user(&Pool, 1).await.as_deref(), Ok("u1"));
        assert_eq!(USERS.load(SeqCst), 1);
        invalidate_user(1).await.unwrap();
        assert_eq!(user(&Pool, 1).await.as_deref(), Ok("u1"));
        assert_eq!(USERS.load(SeqCst), 2);

        let svc = Svc { tenant: 2 };
        assert_eq!(svc.get(1).await, 3);
        assert_eq!(svc.get(1).await, 3);
        assert_eq!(SVC.load(SeqCst), 1);
        assert_eq!(svc.lookup_get(1).await, Some(3));
    });
    assert_eq!(order(2), Ok(20));
    assert_eq!(order(2), Ok(20));
    assert!(order(0).is_err());
    assert_eq!(ORDERS.load(SeqCst), 2);
    assert_eq!(order_uncached(2), Ok(20));
    let svc = Svc { tenant: 1 };
    assert_eq!(svc.below(4), 4);
    assert_eq!(svc.below(4), 4);
    assert_eq!(SVC_BELOW.load(SeqCst), 1);
}
