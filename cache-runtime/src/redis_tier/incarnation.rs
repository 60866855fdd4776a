//! The server's incarnation (docs/PROTOCOL.md §8.2). A Redis restarted from its persistence
//! (an RDB snapshot, an AOF) brings back values *together with* the tickets and tokens that
//! stood beside them when it saved: an invalidation acknowledged after that save is undone,
//! and the old value reads as current. Tickets and tokens cannot tell (they are what was
//! restored), so each (re)connect compares the server's `run_id`, new on every start, with
//! the one recorded in Redis beside the scope tokens. A record of another server means the
//! data set was written under another incarnation: the global clear token is deleted (every
//! value stamped with it is refused; the next token is random) before the connection serves
//! a read, then the current incarnation is recorded.
//!
//! A replica promoted by a failover is another server too, but its data followed the master's
//! (its `master_replid2` is the recorded master's replication id): when writes wait for a
//! replica (`WAIT`), every write that returned `Ok` is on it, and its values are kept.

use super::connection::Conn;
use crate::log_limit::LogLimiter;

/// What a connect found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// Nothing recorded (an empty server, or the first connect): recorded now.
    First,
    /// The server that recorded it.
    Same,
    /// A replica promoted from the server that recorded it, while writes waited for a
    /// replica: its values are kept, the new server recorded.
    Promoted,
    /// Another incarnation's data: every value was invalidated (global clear).
    Restored,
    /// `INFO` refused (the ACL lacks `+info`): not checked.
    Unchecked,
}

/// The fields of `INFO server replication` that identify a server and its data's history.
#[derive(Debug, Default, PartialEq, Eq)]
struct Identity {
    run_id: String,
    replid: String,
    replid2: String,
}

fn identity(info: &str) -> Option<Identity> {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    };
    Some(Identity {
        run_id: field("run_id").filter(|v| !v.is_empty())?,
        replid: field("master_replid").unwrap_or_default(),
        replid2: field("master_replid2").unwrap_or_default(),
    })
}

/// The record's text: `<run_id> <master_replid>`.
fn record(id: &Identity) -> String {
    format!("{} {}", id.run_id, id.replid)
}

/// What the record says of the server now answering: `waits`, whether writes wait for a
/// replica (then a promoted replica holds every write that returned `Ok`).
fn judge(recorded: Option<&str>, now: &Identity, waits: bool) -> Found {
    let Some(recorded) = recorded else {
        return Found::First;
    };
    let mut parts = recorded.split(' ');
    let (run_id, replid) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if run_id == now.run_id {
        return Found::Same;
    }
    let promoted = !replid.is_empty() && replid == now.replid2;
    if promoted && waits {
        Found::Promoted
    } else {
        Found::Restored
    }
}

/// Checks the incarnation of the server `conn` reaches; on [`Found::Restored`] deletes
/// `global_token` first, then records the server. `server_key`: the record's key, in the
/// scope tokens' slot.
pub(super) async fn check(
    conn: &mut Conn,
    server_key: &str,
    global_token: &str,
    waits: bool,
    log: &LogLimiter,
) -> redis::RedisResult<Found> {
    let info: redis::RedisResult<String> = redis::cmd("INFO")
        .arg("server")
        .arg("replication")
        .query_async(conn)
        .await;
    let info = match info {
        Ok(info) => info,
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) => {
            log.warn_error(
                "redis",
                "`INFO` refused (grant +info): a restart from a snapshot is not detected",
                &e.to_string(),
            );
            return Ok(Found::Unchecked);
        }
        Err(e) => return Err(e),
    };
    let Some(now) = identity(&info) else {
        return Ok(Found::Unchecked);
    };
    let recorded: Option<String> = redis::cmd("GET").arg(server_key).query_async(conn).await?;
    let found = judge(recorded.as_deref(), &now, waits);
    if found == Found::Restored {
        // Before the record: a process that fails in between leaves the old record, and the
        // next connect clears again (one more miss per key, never an old value).
        let _: () = redis::cmd("DEL")
            .arg(global_token)
            .query_async(conn)
            .await?;
        log.warn(
            "redis",
            "redis answers with data written under another server (restarted from a \
             snapshot, or a failover without WAIT): every cached value was invalidated",
        );
    }
    if found != Found::Same {
        // Refused under `noeviction` OOM: then the next connect judges again (at worst one
        // more clear), which must not keep the connection from serving.
        let recorded: redis::RedisResult<()> = redis::cmd("SET")
            .arg(server_key)
            .arg(record(&now))
            .query_async(conn)
            .await;
        if let Err(e) = recorded {
            log.warn_error(
                "redis",
                "cannot record the server's incarnation",
                &e.to_string(),
            );
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(run_id: &str, replid: &str, replid2: &str) -> Identity {
        Identity {
            run_id: run_id.into(),
            replid: replid.into(),
            replid2: replid2.into(),
        }
    }

    #[test]
    fn info_fields_are_read_by_name() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc\r\n# Replication\r\n\
                    role:master\r\nmaster_replid:r1\r\nmaster_replid2:0000\r\n";
        assert_eq!(identity(info), Some(id("abc", "r1", "0000")));
        assert_eq!(identity("# Server\r\nrun_id:\r\n"), None);
        assert_eq!(identity("garbage"), None);
    }

    #[test]
    fn only_another_incarnations_data_is_cleared() {
        let now = id("new", "r2", "r1");
        assert_eq!(judge(None, &now, true), Found::First);
        assert_eq!(judge(Some("new r2"), &now, false), Found::Same);
        // A restart from a snapshot: another run_id, the history not a promotion's.
        assert_eq!(judge(Some("old r9"), &now, true), Found::Restored);
        // A replica promoted from the recorded master: kept only if writes waited for it.
        assert_eq!(judge(Some("old r1"), &now, true), Found::Promoted);
        assert_eq!(judge(Some("old r1"), &now, false), Found::Restored);
        // A foreign or damaged record is another incarnation's.
        assert_eq!(judge(Some(""), &now, true), Found::Restored);
        assert_eq!(
            judge(Some("x"), &id("new", "r2", ""), true),
            Found::Restored
        );
    }
}
