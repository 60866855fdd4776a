//! Configuration from the environment, overridden by flags.

use std::path::PathBuf;

use crate::api::ListInvalidation;

pub const USAGE: &str = "\
usage: profile_api [--port N] [--layers none|local|redis] [--redis-url URL] [--edge URL]
                   [--db PATH] [--db-latency-ms N] [--db-pool N]
(or the environment: PORT, CACHE_LAYERS, REDIS_URL, CACHE_EDGE_PURGE_URL, DB_PATH,
 DB_LATENCY_MS, DB_POOL, SEED_USERS, SEED_PRODUCTS, LIST_INVALIDATION; and the runtime's
 CACHE_EDGE_REPURGE_MS, CACHE_EDGE_PURGE_HOST)";

/// Which cache layers inside the service are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layers {
    /// Every cache in `Mode::Bypass`: every read is a query.
    None,
    /// The in-process tier only.
    Local,
    /// In-process, then Redis.
    Redis,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub port: u16,
    pub layers: Layers,
    pub redis_url: Option<String>,
    pub edge_purge_url: Option<String>,
    pub db_path: PathBuf,
    /// The database is a temporary file of this process (no `DB_PATH`): removed on Ctrl-C.
    pub db_is_temporary: bool,
    pub db_latency_ms: u64,
    pub db_pool: usize,
    pub seed_users: u64,
    pub seed_products: u64,
    pub list_invalidation: ListInvalidation,
}

impl Settings {
    pub fn from_env_and_args() -> Result<Settings, String> {
        let mut vars: std::collections::HashMap<&'static str, String> = [
            "PORT",
            "CACHE_LAYERS",
            "REDIS_URL",
            "CACHE_EDGE_PURGE_URL",
            "DB_PATH",
            "DB_LATENCY_MS",
            "DB_POOL",
            "SEED_USERS",
            "SEED_PRODUCTS",
            "LIST_INVALIDATION",
        ]
        .into_iter()
        .filter_map(|k| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| (k, v))
        })
        .collect();
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let var = match flag.as_str() {
                "--port" => "PORT",
                "--layers" => "CACHE_LAYERS",
                "--redis-url" => "REDIS_URL",
                "--edge" => "CACHE_EDGE_PURGE_URL",
                "--db" => "DB_PATH",
                "--db-latency-ms" => "DB_LATENCY_MS",
                "--db-pool" => "DB_POOL",
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument `{other}`")),
            };
            let v = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            vars.insert(var, v);
        }
        let num = |k: &str, default: u64| -> Result<u64, String> {
            vars.get(k).map_or(Ok(default), |v| {
                v.parse().map_err(|_| format!("{k}: not a number: {v}"))
            })
        };
        let redis_url = vars.get("REDIS_URL").cloned();
        let layers = match vars.get("CACHE_LAYERS").map(String::as_str) {
            None => {
                if redis_url.is_some() {
                    Layers::Redis
                } else {
                    Layers::Local
                }
            }
            Some("none") => Layers::None,
            Some("local") => Layers::Local,
            Some("redis") => Layers::Redis,
            Some(other) => {
                return Err(format!(
                    "CACHE_LAYERS: `{other}` is not none, local or redis"
                ))
            }
        };
        if layers == Layers::Redis && redis_url.is_none() {
            return Err("CACHE_LAYERS=redis needs REDIS_URL".into());
        }
        let db_is_temporary = !vars.contains_key("DB_PATH");
        let db_path = match vars.get("DB_PATH") {
            Some(p) => PathBuf::from(p),
            None => {
                // A fresh database per run.
                let p =
                    std::env::temp_dir().join(format!("profile_api-{}.sqlite", std::process::id()));
                for ext in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{ext}", p.display()));
                }
                p
            }
        };
        Ok(Settings {
            port: u16::try_from(num("PORT", 8080)?).map_err(|_| "PORT: not a port number")?,
            layers,
            redis_url,
            edge_purge_url: vars.get("CACHE_EDGE_PURGE_URL").cloned(),
            db_path,
            db_is_temporary,
            db_latency_ms: num("DB_LATENCY_MS", 20)?,
            db_pool: num("DB_POOL", 8)?.max(1) as usize,
            seed_users: num("SEED_USERS", 10_000)?,
            seed_products: num("SEED_PRODUCTS", 2_000)?,
            list_invalidation: match vars.get("LIST_INVALIDATION").map(String::as_str) {
                None | Some("tag") => ListInvalidation::Tag,
                Some("key") => ListInvalidation::Key,
                Some(other) => {
                    return Err(format!("LIST_INVALIDATION: `{other}` is not tag or key"))
                }
            },
        })
    }
}
