//! `rediss://`: a TLS-only redis-server with a certificate made by the test, trusted through
//! `Config::tls_root_certificate`.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use cache_runtime::{cached, Config};
use cache_tests::RedisServer;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use redis::Commands;

/// The Redis key of a value (docs/PROTOCOL.md §2: bucket hash tag, wire version 2).
fn vkey(schema: u32, logical: &str) -> String {
    cache_runtime::key::redis_keys("t", schema, logical).0
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[cached(tier = "local+redis", ttl = 60, key = "tls:<id>")]
async fn secret(id: u64) -> String {
    RUNS.fetch_add(1, SeqCst);
    format!("value {id}")
}

/// A CA, and a server certificate for 127.0.0.1 signed by it: (ca, cert, key) as PEM.
fn certificates() -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn values_are_cached_through_a_tls_redis() {
    let (ca, cert, key) = certificates();
    let server = RedisServer::start_tls(&ca, &cert, &key);
    assert!(server.url().starts_with("rediss://"));
    cache_runtime::init(
        Config::builder()
            .redis_url(server.url())
            .key_prefix("t")
            .tls_root_certificate(server.tls_ca().unwrap().to_vec())
            .build(),
    )
    .unwrap();
    cache_runtime::health_check().await.expect("PING over TLS");
    assert_eq!(secret(1).await, "value 1");
    let stored: bool = server.client().exists(vkey(1, "tls:1")).unwrap();
    assert!(stored, "written to Redis over TLS");
    secret_cache().clear_local();
    assert_eq!(secret(1).await, "value 1");
    assert_eq!(RUNS.load(SeqCst), 1, "read back from Redis over TLS");
    assert_eq!(secret_cache().stats().redis_hits, 1);
    invalidate_secret(1).await.expect("confirmed over TLS");
}
