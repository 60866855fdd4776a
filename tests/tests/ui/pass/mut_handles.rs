//! `&mut` handles the body only uses (a connection, a transaction), listed in `skip(...)`:
//! a hit skips the body and leaves the handle untouched; a miss uses it.
#![deny(warnings)]

use cache_runtime::cached;

pub struct Conn {
    queries: u32,
}

impl Conn {
    fn query(&mut self, id: u64) -> String {
        self.queries += 1;
        format!("row {id}")
    }
}

/// A transaction borrowing its connection, as sqlx's `Transaction<'_, Postgres>`.
pub struct Tx<'c> {
    conn: &'c mut Conn,
}

#[cached(ttl = 60, skip(conn))]
fn find(conn: &mut Conn, id: u64) -> String {
    conn.query(id)
}

#[cached(ttl = 60, key = "afind:<id>", skip(tx))]
async fn afind(tx: &mut Tx<'_>, id: u64) -> Result<String, String> {
    Ok(tx.conn.query(id))
}

pub struct Repo {
    tenant: u64,
}

impl Repo {
    #[cached(ttl = 60, key = "repo:<self.tenant>:<id>", skip(conn))]
    fn get(&self, conn: &mut Conn, id: u64) -> String {
        conn.query(id + self.tenant)
    }
}

#[tokio::main]
pub async fn main() {
    let mut conn = Conn { queries: 0 };
    assert_eq!(find(&mut conn, 1), "row 1");
    assert_eq!(find(&mut conn, 1), "row 1");
    assert_eq!(conn.queries, 1, "the hit did not query");
    invalidate_find(1).expect("invalidate");
    assert_eq!(find(&mut conn, 1), "row 1");
    assert_eq!(conn.queries, 2);

    {
        let mut tx = Tx { conn: &mut conn };
        assert_eq!(afind(&mut tx, 2).await, Ok("row 2".into()));
        assert_eq!(afind(&mut tx, 2).await, Ok("row 2".into()));
    }
    assert_eq!(conn.queries, 3);

    let repo = Repo { tenant: 10 };
    assert_eq!(repo.get(&mut conn, 3), "row 13");
    assert_eq!(repo.get(&mut conn, 3), "row 13");
    assert_eq!(conn.queries, 4);
}
