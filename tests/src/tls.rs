//! Certificates for TLS-only test servers: a private CA and a server certificate for
//! `127.0.0.1` / `localhost` signed by it, made with `rcgen` (nothing in the system trust
//! store trusts them: clients need the CA, e.g. `Config::tls_root_certificate`).
//!
//! ```no_run
//! use cache_tests::{RedisServer, TlsFiles};
//! let tls = TlsFiles::generate();
//! let server = RedisServer::start_tls(&tls.ca, &tls.cert, &tls.key);
//! assert!(server.url().starts_with("rediss://"));
//! ```

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A CA certificate, and a server certificate and its key signed by that CA (all PEM).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA certificate: what clients trust.
    pub ca: String,
    /// The server certificate (for `127.0.0.1` and `localhost`).
    pub cert: String,
    /// The server certificate's private key.
    pub key: String,
}

impl TlsFiles {
    /// A fresh CA and a server certificate for 127.0.0.1 signed by it.
    pub fn generate() -> Self {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct subjects: with rcgen's default name on both, OpenSSL (redis-server's and
        // redis-cli's TLS) takes the server certificate for a self-signed one and refuses it.
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "cache-tests CA");
        let ca = ca_params.self_signed(&ca_key).expect("self-signed CA");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("server params");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        Self {
            ca: ca.pem(),
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}
