//! Cache metrics at a Prometheus endpoint: `cargo run --example metrics`.
//!
//! Installs the Prometheus exporter (before the first cached call, so every cache registers
//! its counters with it), serves `/metrics` on 127.0.0.1:9898, makes some calls, then fetches
//! its own endpoint and prints the cache lines. `-- --serve` keeps serving until Ctrl-C.

use std::io::{Read, Write};
use std::time::Duration;

use cache_runtime::cached;
use metrics_exporter_prometheus::PrometheusBuilder;

#[cached(ttl = 60, key = "product:<id>", name = "catalog.product")]
async fn product(id: u64) -> Result<String, String> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    if id == 0 {
        Err("no product 0".into())
    } else {
        Ok(format!("product {id}"))
    }
}

#[tokio::main]
async fn main() {
    let addr: std::net::SocketAddr = "127.0.0.1:9898".parse().unwrap();
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .expect("install the Prometheus exporter");

    for i in 0..50 {
        let _ = product(i % 5).await;
    }
    let _ = invalidate_product(1).await;

    let body = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("connect to /metrics");
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    println!("GET http://{addr}/metrics (cache lines):");
    for line in body.lines().filter(|l| l.starts_with("cache_")) {
        println!("  {line}");
    }
    if std::env::args().any(|a| a == "--serve") {
        println!("serving http://{addr}/metrics; Ctrl-C to stop");
        tokio::signal::ctrl_c().await.ok();
    }
}
