//! TLS for the mock upstream: a self-signed certificate for `localhost` and `127.0.0.1`,
//! generated at start, ALPN `h2` and `http/1.1` (so a client may speak either over TLS, as real
//! providers let it). The certificate's PEM is what a client trusts (weir's `tls_ca`).

use std::sync::Arc;

/// A server TLS configuration and the PEM of its certificate.
#[derive(Clone)]
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    cert_pem: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls { .. }")
    }
}

impl Tls {
    /// A fresh self-signed certificate and the server configuration that presents it.
    pub fn self_signed() -> Tls {
        let certified = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .expect("a certificate");
        let cert = certified.cert.der().clone();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("the key fits the certificate");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            cert_pem: certified.cert.pem(),
        }
    }

    /// The certificate, PEM-encoded: what a client must trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub(crate) fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }
}
