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
//! A replica promoted by a failover is another server too, and is treated alike: what Redis
//! reports does not tell the two apart (a master restarted from its snapshot reports a new
//! `run_id` and its old replication id as `master_replid2`, checked on 7.0.15, as a promoted
//! replica does), and a master restarted from an older snapshot resyncs its replicas to that
//! older data, so not even `WAIT` makes a restart safe. A failover costs one miss per key.
//!
//! The data set can also be replaced under a running server: a full resync from another
//! master (`REPLICAOF`, then `REPLICAOF NO ONE`: a rollback if that master started from an
//! older snapshot). The incarnation therefore names the replication history too, the
//! server's `master_replid` beside its `run_id`: a resync takes the master's id, a promotion
//! a new one. A full resync sends every tracked connection a null invalidation, which makes
//! the connections reopen and check (`tracking.rs`); a replica's check fails at its clear
//! (`READONLY`), so nothing is served from it until it is a master again and cleared.
//!
//! On a cluster the incarnation is every master's `run_id` and `master_replid`, and the clear
//! deletes the global token's stripes on every master. The check runs whenever the connections are (re)opened;
//! the bus's lost subscriptions (and, on a cluster, an operation's lost node) reopen them, so
//! that connections redis-rs reconnects by itself are checked too (docs/PROTOCOL.md §8.2).

use super::connection::Conn;
use crate::log_limit::LogLimiter;

/// The Redis key of the record: which server wrote the data set, beside the scope tokens
/// (`{prefix:scopes}:server`; single node and Sentinel).
pub(super) fn server_key(prefix: &str) -> String {
    format!("{{{prefix}:scopes}}:server")
}

/// What a connect found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// Nothing recorded (an empty server, or the first connect): recorded now.
    First,
    /// The server that recorded it.
    Same,
    /// The server that recorded it, in the format before the replication id was part of it
    /// (`run_id` alone): taken as the same, and recorded again in the current format.
    Upgraded,
    /// Another incarnation's data: every value was invalidated (global clear).
    Restored,
    /// `INFO` refused (the ACL lacks `+info`): not checked.
    Unchecked,
}

/// The `run_id` in an `INFO` reply.
fn run_id(info: &str) -> Option<&str> {
    field(info, "run_id:")
}

/// The value of the `INFO` line starting with `name` (`run_id:`), if not empty.
fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// One server's part of the incarnation: `run_id/master_replid` from an `INFO` reply; the
/// `run_id` alone where the replication section is missing (a proxy that filters `INFO`).
fn server_incarnation(info: &str) -> Option<String> {
    let run_id = run_id(info)?;
    Some(match field(info, "master_replid:") {
        Some(replid) => format!("{run_id}/{replid}"),
        None => run_id.to_string(),
    })
}

/// The `redis_version` of the first of these `INFO` replies (a cluster's: one per
/// master) that is older than 7.0: the runtime's commands need 7.0 (`SET … NX GET`,
/// `PEXPIRE … GT`, `SPUBLISH`); on 6.x they are refused as syntax errors, so no store lands
/// and nothing is ever served from Redis.
pub(super) fn too_old(infos: &[String]) -> Option<&str> {
    infos.iter().find_map(|info| {
        let version = field(info, "redis_version:")?;
        let major: u32 = version.split('.').next()?.parse().ok()?;
        (major < 7).then_some(version)
    })
}

/// What a server too old for the runtime is told (logged at connect, appended to a failed
/// health check).
pub(super) fn too_old_message(version: &str) -> String {
    format!(
        "the server reports redis_version {version}: cache-runtime needs Redis 7.0 or newer \
         (or Valkey 7.2 or newer); on it every store is refused as a syntax error, so nothing \
         is served from Redis and each call costs a round trip for nothing"
    )
}

/// Whether `recorded` names the incarnation of the server whose `INFO` is `info`: a check ran
/// against it (and cleared first what an earlier incarnation left), so it may serve reads.
pub(super) fn judged(info: &str, recorded: Option<&str>) -> bool {
    server_incarnation(info).is_some_and(|now| judge(recorded, &now) == Found::Same)
}

/// What the record says of the incarnation `now` answering.
fn judge(recorded: Option<&str>, now: &str) -> Found {
    match recorded {
        None => Found::First,
        Some(r) if r == now => Found::Same,
        Some(r) if r == without_replids(now) => Found::Upgraded,
        Some(_) => Found::Restored,
    }
}

/// `now` as recorded before the replication ids were part of it: each server's `run_id`.
fn without_replids(now: &str) -> String {
    let mut ids: Vec<&str> = now
        .split(',')
        .map(|s| s.split_once('/').map_or(s, |(run_id, _)| run_id))
        .collect();
    ids.sort_unstable();
    ids.join(",")
}

/// The servers' incarnation: the master's `run_id/master_replid`, or every master's on a
/// cluster (sorted, comma-separated: any master restarted, replaced, added, resynced from
/// another or promoted changes it).
fn incarnation(infos: &[String]) -> Option<String> {
    let mut ids = infos
        .iter()
        .map(|i| server_incarnation(i))
        .collect::<Option<Vec<String>>>()?;
    if ids.is_empty() {
        return None;
    }
    ids.sort_unstable();
    Some(ids.join(","))
}

/// Checks the incarnation of the server(s) `conn` reaches; on [`Found::Restored`] deletes
/// `global_tokens` first (the global clear token; on a cluster its stripes on every master),
/// then records the incarnation. `server_key`: the record's key, in the scope tokens' slot.
///
/// On a cluster every master must answer: a master that cannot be reached fails the check
/// (and the connect), so no read is served until it is back or replaced and judged.
pub(super) async fn check(
    conn: &mut Conn,
    server_key: &str,
    global_tokens: &[String],
    log: &LogLimiter,
) -> redis::RedisResult<Found> {
    let infos = match conn.server_infos().await {
        Ok(infos) => infos,
        // Refused by the ACL (`NOPERM`), or unknown to a proxy in front of Redis: connect
        // without the check rather than not at all. A server still loading its data answers
        // `INFO`; a lost connection fails the connect (retried).
        Err(e) if super::connection::error_reply(&e) => {
            log.warn_error(
                "redis",
                "`INFO` refused (grant +info): a restart from a snapshot is not detected",
                &e.to_string(),
            );
            return Ok(Found::Unchecked);
        }
        Err(e) => return Err(e),
    };
    if let Some(version) = too_old(&infos) {
        // Once per process, past the log limiter: it explains every error that follows.
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::error!(subject = "redis", "{}", too_old_message(version));
        }
    }
    let Some(now) = incarnation(&infos) else {
        return Ok(Found::Unchecked);
    };
    let recorded: Option<String> = redis::cmd("GET").arg(server_key).query_async(conn).await?;
    let found = match judge(recorded.as_deref(), &now) {
        // On a cluster the record's master may have been restarted empty while another came
        // back from its snapshot: no record is no proof of an empty data set there (one
        // clear, on a cluster's first connect).
        Found::First if conn.is_cluster() => Found::Restored,
        found => found,
    };
    if found == Found::Restored {
        // Before the record: a process that fails in between leaves the old record, and the
        // next connect clears again (one more miss per key, never an old value).
        conn.del_everywhere(global_tokens).await?;
        log.warn(
            "redis",
            "redis answers with data written under another server, or replaced since \
             (restarted from a snapshot, a failover, a resync from another master): every \
             cached value was invalidated",
        );
    }
    if found != Found::Same {
        // Refused under `noeviction` OOM: then the next connect judges again (at worst one
        // more clear), which must not keep the connection from serving.
        let recorded: redis::RedisResult<()> = redis::cmd("SET")
            .arg(server_key)
            .arg(&now)
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

    #[test]
    fn the_record_sits_beside_the_scope_tokens() {
        assert_eq!(server_key("cr"), "{cr:scopes}:server");
        let global = crate::key::scope_key("cr", crate::key::Scope::All);
        assert_eq!(
            super::super::key_slot(server_key("cr").as_bytes()),
            super::super::key_slot(global.as_bytes())
        );
    }

    #[test]
    fn the_run_id_is_read_by_name() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc\r\ntcp_port:6379\r\n";
        assert_eq!(run_id(info), Some("abc"));
        assert_eq!(run_id("# Server\r\nrun_id:\r\n"), None);
        assert_eq!(run_id("garbage"), None);
    }

    #[test]
    fn servers_older_than_7_are_named() {
        let info = |v: &str| vec![format!("# Server\r\nredis_version:{v}\r\nrun_id:abc\r\n")];
        assert_eq!(too_old(&info("6.2.14")), Some("6.2.14"));
        assert_eq!(too_old(&info("6.0.16")), Some("6.0.16"));
        assert_eq!(too_old(&info("7.0.15")), None);
        assert_eq!(too_old(&info("7.2.4")), None, "Valkey reports 7.2.4");
        assert_eq!(too_old(&info("8.0.1")), None);
        assert_eq!(
            too_old(&["# Server\r\nrun_id:abc\r\n".to_string()]),
            None,
            "unknown: no claim"
        );
        assert_eq!(too_old(&info("garbage")), None);
        // A cluster: any master too old is named.
        let masters = [info("7.0.15"), info("6.2.14")].concat();
        assert_eq!(too_old(&masters), Some("6.2.14"));
        assert!(too_old_message("6.2.14").contains("Redis 7.0 or newer"));
    }

    #[test]
    fn only_another_incarnations_data_is_cleared() {
        assert_eq!(judge(None, "new"), Found::First);
        assert_eq!(judge(Some("new"), "new"), Found::Same);
        // A restart from a snapshot, a failover, a foreign or damaged record.
        assert_eq!(judge(Some("old"), "new"), Found::Restored);
        assert_eq!(judge(Some(""), "new"), Found::Restored);
        // The same server, its data set resynced from another master or promoted.
        assert_eq!(judge(Some("a/r1"), "a/r2"), Found::Restored);
        assert_eq!(judge(Some("a/r1"), "b/r1"), Found::Restored);
        // The record of an older release (`run_id` alone): the same, recorded again.
        assert_eq!(judge(Some("a"), "a/r1"), Found::Upgraded);
        assert_eq!(judge(Some("b"), "a/r1"), Found::Restored);
        assert_eq!(judge(Some("a,b"), "b/r2,a/r1"), Found::Upgraded);
        assert_eq!(judge(Some("a"), "a"), Found::Same, "no replication section");
    }

    #[test]
    fn a_servers_incarnation_names_its_replication_history() {
        let info = "# Server\r\nrun_id:abc\r\n\r\n# Replication\r\nrole:master\r\n\
                    master_replid:r1\r\nmaster_replid2:0000\r\n";
        assert_eq!(server_incarnation(info).as_deref(), Some("abc/r1"));
        // `master_replid2` is not taken for `master_replid`.
        let promoted = "run_id:abc\r\nmaster_replid2:r1\r\nmaster_replid:r2\r\n";
        assert_eq!(server_incarnation(promoted).as_deref(), Some("abc/r2"));
        assert_eq!(server_incarnation("run_id:abc\r\n").as_deref(), Some("abc"));
        assert_eq!(server_incarnation("master_replid:r1\r\n"), None);
    }

    #[test]
    fn a_clusters_incarnation_is_every_masters_in_any_order() {
        let info = |id: &str| format!("# Server\r\nrun_id:{id}\r\n");
        let a = incarnation(&[info("b"), info("a"), info("c")]);
        assert_eq!(a.as_deref(), Some("a,b,c"));
        let with_replid = |id: &str| format!("run_id:{id}\r\nmaster_replid:r{id}\r\n");
        assert_eq!(
            incarnation(&[with_replid("b"), with_replid("a")]).as_deref(),
            Some("a/ra,b/rb")
        );
        assert_eq!(incarnation(&[info("c"), info("b"), info("a")]), a);
        // One master restarted (or replaced by its replica): another incarnation.
        assert_ne!(incarnation(&[info("a"), info("b"), info("d")]), a);
        // A master whose reply has no run_id: not judged at all.
        assert_eq!(incarnation(&[info("a"), "garbage".to_string()]), None);
        assert_eq!(incarnation(&[]), None);
    }
}
