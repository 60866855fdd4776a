//! The database: an embedded SQLite file (WAL mode, so several service processes can share
//! it), created and seeded on start, behind a small connection pool. Every query runs on
//! `spawn_blocking`, holds a pooled connection for an artificial latency first (a real
//! database's 5–50 ms round trip and query time), and is counted.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::catalog::CATEGORIES;

/// A user profile (public data: what `/users/{id}` shows to anyone).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub name: String,
    pub email: String,
    pub bio: String,
    /// Incremented by every write; the load driver uses it to detect stale reads.
    pub version: u64,
    pub updated_unix_ms: u64,
}

/// A product.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: u64,
    pub category: String,
    pub name: String,
    pub price_cents: i64,
    pub stock: i64,
    pub version: u64,
    pub updated_unix_ms: u64,
}

/// The fields a `PUT /users/{id}` may change.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UserUpdate {
    pub name: Option<String>,
    pub email: Option<String>,
    pub bio: Option<String>,
}

/// The fields a `PUT /products/{id}` may change (the category is fixed).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ProductUpdate {
    pub name: Option<String>,
    pub price_cents: Option<i64>,
    pub stock: Option<i64>,
}

/// A database failure (cloneable, so concurrent callers of a cached function can share it).
#[derive(Debug, Clone, PartialEq)]
pub enum DbError {
    NotFound,
    Sql(String),
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbError::NotFound => f.write_str("not found"),
            DbError::Sql(e) => write!(f, "database error: {e}"),
        }
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::QueryReturnedNoRows => DbError::NotFound,
            other => DbError::Sql(other.to_string()),
        }
    }
}

/// Query counters (reads and writes), for `/metrics`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DbStats {
    pub queries: u64,
    pub reads: u64,
    pub writes: u64,
    /// Time spent in queries (artificial latency included), in milliseconds.
    pub busy_ms: u64,
}

pub struct Db {
    pool: Mutex<Vec<Connection>>,
    permits: Semaphore,
    latency: Duration,
    reads: AtomicU64,
    writes: AtomicU64,
    busy_us: AtomicU64,
}

static DB: OnceLock<Db> = OnceLock::new();

/// The process's database (after [`open`]).
pub fn db() -> &'static Db {
    DB.get().expect("db::open is called at start-up")
}

/// What [`open`] found or did.
pub struct Opened {
    pub seeded: bool,
    pub users: u64,
    pub products: u64,
}

/// Opens (and, when empty, creates and seeds) the database at `path` with `pool_size`
/// connections; each query first waits `latency` while holding its connection.
pub fn open(
    path: &Path,
    pool_size: usize,
    latency: Duration,
    users: u64,
    products: u64,
) -> Result<Opened, DbError> {
    let mut conns = Vec::with_capacity(pool_size);
    for _ in 0..pool_size.max(1) {
        let c = Connection::open(path)?;
        // WAL: readers never block the writer and several processes share the file.
        c.pragma_update(None, "journal_mode", "WAL")?;
        c.pragma_update(None, "synchronous", "NORMAL")?;
        c.busy_timeout(Duration::from_secs(10))?;
        conns.push(c);
    }
    let opened = seed(&mut conns[0], users, products)?;
    let db = Db {
        permits: Semaphore::new(conns.len()),
        pool: Mutex::new(conns),
        latency,
        reads: AtomicU64::new(0),
        writes: AtomicU64::new(0),
        busy_us: AtomicU64::new(0),
    };
    if DB.set(db).is_err() {
        panic!("db::open called twice");
    }
    Ok(opened)
}

/// Creates the schema and seeds it unless another process already did (one `IMMEDIATE`
/// transaction, so concurrent start-ups seed once).
fn seed(c: &mut Connection, users: u64, products: u64) -> Result<Opened, DbError> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS users (
             id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL, bio TEXT NOT NULL,
             version INTEGER NOT NULL, updated_unix_ms INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS products (
             id INTEGER PRIMARY KEY, category TEXT NOT NULL, name TEXT NOT NULL,
             price_cents INTEGER NOT NULL, stock INTEGER NOT NULL,
             version INTEGER NOT NULL, updated_unix_ms INTEGER NOT NULL);
         CREATE INDEX IF NOT EXISTS products_by_category ON products (category, id);",
    )?;
    let have: u64 = tx.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?;
    let seeded = have == 0;
    if seeded {
        let now = now_ms();
        {
            let mut ins = tx.prepare(
                "INSERT INTO users (id, name, email, bio, version, updated_unix_ms)
                 VALUES (?1, ?2, ?3, ?4, 1, ?5)",
            )?;
            for id in 1..=users {
                ins.execute(params![
                    id,
                    format!("User {id}"),
                    format!("user{id}@example.com"),
                    format!("Hello, I am user number {id}. I like caches that are never stale."),
                    now
                ])?;
            }
            let mut ins = tx.prepare(
                "INSERT INTO products (id, category, name, price_cents, stock, version, updated_unix_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6)",
            )?;
            for id in 1..=products {
                let cat = CATEGORIES[(id as usize - 1) % CATEGORIES.len()];
                ins.execute(params![
                    id,
                    cat,
                    format!("{cat} item {id}"),
                    (id * 37 % 10_000) as i64 + 99,
                    (id * 13 % 500) as i64,
                    now
                ])?;
            }
        }
    }
    let users: u64 = tx.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?;
    let products: u64 = tx.query_row("SELECT COUNT(*) FROM products", [], |r| r.get(0))?;
    tx.commit()?;
    Ok(Opened {
        seeded,
        users,
        products,
    })
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Db {
    /// Runs `f` on a pooled connection on the blocking pool, after the artificial latency.
    async fn run<T, F>(&'static self, write: bool, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
    {
        let _permit = self.permits.acquire().await.expect("never closed");
        if write { &self.writes } else { &self.reads }.fetch_add(1, Relaxed);
        tokio::task::spawn_blocking(move || {
            let start = std::time::Instant::now();
            let mut conn = self
                .pool
                .lock()
                .unwrap()
                .pop()
                .expect("a permit means a connection");
            std::thread::sleep(self.latency);
            let out = f(&mut conn);
            self.pool.lock().unwrap().push(conn);
            self.busy_us
                .fetch_add(start.elapsed().as_micros() as u64, Relaxed);
            out
        })
        .await
        .map_err(|e| DbError::Sql(format!("query task failed: {e}")))?
    }

    pub fn stats(&self) -> DbStats {
        let reads = self.reads.load(Relaxed);
        let writes = self.writes.load(Relaxed);
        DbStats {
            queries: reads + writes,
            reads,
            writes,
            busy_ms: self.busy_us.load(Relaxed) / 1000,
        }
    }

    pub async fn user(&'static self, id: u64) -> Result<User, DbError> {
        self.run(false, move |c| {
            Ok(c.prepare_cached(
                "SELECT id, name, email, bio, version, updated_unix_ms FROM users WHERE id = ?1",
            )?
            .query_row([id], user_row)?)
        })
        .await
    }

    /// Applies `u` and returns the new row (one statement: `UPDATE … RETURNING`).
    pub async fn update_user(&'static self, id: u64, u: UserUpdate) -> Result<User, DbError> {
        self.run(true, move |c| {
            Ok(c.prepare_cached(
                "UPDATE users SET name = COALESCE(?2, name), email = COALESCE(?3, email),
                     bio = COALESCE(?4, bio), version = version + 1, updated_unix_ms = ?5
                 WHERE id = ?1
                 RETURNING id, name, email, bio, version, updated_unix_ms",
            )?
            .query_row(params![id, u.name, u.email, u.bio, now_ms()], user_row)?)
        })
        .await
    }

    pub async fn product(&'static self, id: u64) -> Result<Product, DbError> {
        self.run(false, move |c| {
            Ok(c.prepare_cached(
                "SELECT id, category, name, price_cents, stock, version, updated_unix_ms
                 FROM products WHERE id = ?1",
            )?
            .query_row([id], product_row)?)
        })
        .await
    }

    /// The products of a category, by id (`None` for an unknown category).
    pub async fn products_in(
        &'static self,
        category: String,
    ) -> Result<Option<Vec<Product>>, DbError> {
        if !CATEGORIES.contains(&category.as_str()) {
            return Ok(None);
        }
        self.run(false, move |c| {
            let mut st = c.prepare_cached(
                "SELECT id, category, name, price_cents, stock, version, updated_unix_ms
                 FROM products WHERE category = ?1 ORDER BY id",
            )?;
            let rows = st.query_map([category], product_row)?;
            Ok(Some(rows.collect::<Result<Vec<_>, _>>()?))
        })
        .await
    }

    pub async fn update_product(
        &'static self,
        id: u64,
        u: ProductUpdate,
    ) -> Result<Product, DbError> {
        self.run(true, move |c| {
            Ok(c.prepare_cached(
                "UPDATE products SET name = COALESCE(?2, name),
                     price_cents = COALESCE(?3, price_cents), stock = COALESCE(?4, stock),
                     version = version + 1, updated_unix_ms = ?5
                 WHERE id = ?1
                 RETURNING id, category, name, price_cents, stock, version, updated_unix_ms",
            )?
            .query_row(
                params![id, u.name, u.price_cents, u.stock, now_ms()],
                product_row,
            )?)
        })
        .await
    }
}

fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        name: r.get(1)?,
        email: r.get(2)?,
        bio: r.get(3)?,
        version: r.get(4)?,
        updated_unix_ms: r.get(5)?,
    })
}

fn product_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Product> {
    Ok(Product {
        id: r.get(0)?,
        category: r.get(1)?,
        name: r.get(2)?,
        price_cents: r.get(3)?,
        stock: r.get(4)?,
        version: r.get(5)?,
        updated_unix_ms: r.get(6)?,
    })
}
