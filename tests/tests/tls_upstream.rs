//! An upstream reached over TLS, as real providers are: the mock serves its own certificate
//! (ALPN h2 and http/1.1), weir trusts it through `tls_ca`, and streams over HTTP/1.1 and over
//! HTTP/2 arrive whole.

use weir_e2e::two::ask;
use weir_e2e::{provider, route, weir_with};
use weir_test::tls::Tls;
use weir_test::{MockConfig, MockUpstream};

#[tokio::test]
async fn a_stream_over_tls_arrives_whole_over_http1_and_http2() {
    let tls = Tls::self_signed();
    let cert = std::env::temp_dir().join(format!("weir-tls-mock-{}.pem", std::process::id()));
    std::fs::write(&cert, tls.cert_pem()).unwrap();
    let mock = MockUpstream::start_with(MockConfig {
        tls: Some(tls),
        ..MockConfig::default()
    })
    .await;
    let base = format!("https://127.0.0.1:{}/v1", mock.addr().port());
    for version in ["http1", "http2"] {
        let extra = format!(
            "tls_ca = \"{}\"\nhttp_version = \"{version}\"",
            cert.display()
        );
        let weir = weir_with(&[
            provider("mock", &base, &extra),
            route("gpt-test", r#"[{ provider = "mock", model = "m" }]"#, ""),
        ])
        .await;
        let got = ask(&weir, "chunks=4").await;
        assert_eq!(got.status, 200, "{version}");
        assert_eq!(got.text, "tok0 tok1 tok2 tok3 ", "{version}");
        assert!(!got.broken && got.raw.contains("data: [DONE]"), "{version}");
    }
    let _ = std::fs::remove_file(&cert);
}

#[tokio::test]
async fn an_upstream_certificate_weir_does_not_trust_is_a_failed_connection_not_an_answer() {
    let mock = MockUpstream::start_with(MockConfig {
        tls: Some(Tls::self_signed()),
        ..MockConfig::default()
    })
    .await;
    let base = format!("https://127.0.0.1:{}/v1", mock.addr().port());
    let weir = weir_with(&[
        provider("mock", &base, ""),
        route("gpt-test", r#"[{ provider = "mock", model = "m" }]"#, ""),
    ])
    .await;
    let got = ask(&weir, "chunks=4").await;
    assert_eq!(got.status, 502, "{:?}", got.text);
    assert!(mock.requests().is_empty(), "nothing reached the mock");
}
