use super::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use weir_test::MockUpstream;

fn client() -> HttpClient<Full<Bytes>> {
    ClientBuilder::new().allow_http(true).build().unwrap()
}

fn post(url: String, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

async fn next_text(body: &mut ResponseBody<Full<Bytes>>) -> String {
    let frame = body.frame().await.unwrap().unwrap();
    String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap()
}

#[tokio::test]
async fn hands_over_frames_of_a_stream_that_has_not_ended() {
    let mock = MockUpstream::start().await;
    let url = format!("{}/chat/completions", mock.base_url());
    let body = r#"{"model":"m@chunks=5,fault=stall_after:2","stream":true}"#;
    let response = client().oneshot(post(url, body)).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    // The upstream never finishes this stream: a buffering client would hang here.
    let mut text = String::new();
    while !text.contains("tok1 ") {
        text.push_str(&next_text(&mut body).await);
    }
    assert!(text.contains("tok0 "));
}

#[tokio::test]
async fn reuses_pooled_connections() {
    let mock = MockUpstream::start().await;
    let client = client();
    for _ in 0..3 {
        let url = format!("{}/chat/completions", mock.base_url());
        let response = client
            .clone()
            .oneshot(post(url, r#"{"model":"m@chunks=2","stream":true}"#))
            .await
            .unwrap();
        let text = response.into_body().collect().await.unwrap().to_bytes();
        assert!(text.ends_with(b"data: [DONE]\n\n"));
    }
    assert_eq!(mock.connections(), 1);
    assert_eq!(client.idle_connections(), 1);
}

#[tokio::test]
async fn a_burst_of_frames_is_handed_over_without_a_wakeup_per_frame() {
    // The connection is driven by the body: frames already read are decoded on the spot. A
    // client whose connection ran in a task of its own returned Pending before every frame.
    let mock = MockUpstream::start().await;
    let url = format!("{}/chat/completions", mock.base_url());
    let response = client()
        .oneshot(post(url, r#"{"model":"m@chunks=50","stream":true}"#))
        .await
        .unwrap();
    let mut body = std::pin::pin!(response.into_body());
    let (mut frames, mut pending) = (0, 0);
    let mut text = Vec::new();
    std::future::poll_fn(|cx| loop {
        match http_body::Body::poll_frame(body.as_mut(), cx) {
            Poll::Ready(Some(frame)) => {
                text.extend_from_slice(&frame.unwrap().into_data().unwrap());
                frames += 1;
            }
            Poll::Ready(None) => return Poll::Ready(()),
            Poll::Pending => {
                pending += 1;
                return Poll::Pending;
            }
        }
    })
    .await;
    // 50 chunks, the finish chunk and [DONE], in a few reads: one frame per read, the chunks
    // of each squeezed together.
    assert!(text.ends_with(b"data: [DONE]\n\n"));
    assert_eq!(text.windows(6).filter(|w| w == b"data: ").count(), 52);
    assert!((1..=8).contains(&frames), "{frames} frames");
    assert!(
        pending <= 4,
        "{pending} times Pending for one burst of {frames} frames"
    );
}

#[tokio::test]
async fn a_pooled_connection_closed_by_the_server_is_replaced() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        // Answers one request per connection, keep-alive promised, then closes it.
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = tcp.read(&mut buf).await.unwrap();
                seen.extend_from_slice(&buf[..n]);
            }
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            drop(tcp);
            let _ = closed_tx.send(());
        }
    });
    let client: HttpClient<Full<Bytes>> = ClientBuilder::new().allow_http(true).build().unwrap();
    for _ in 0..2 {
        let request = Request::get(format!("http://{addr}/"))
            .body(Full::default())
            .unwrap();
        let response = client.clone().oneshot(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok");
        closed.recv().await.unwrap();
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn h2c_with_prior_knowledge() {
    let mock = MockUpstream::start().await;
    let client: HttpClient<Full<Bytes>> = ClientBuilder::new()
        .allow_http(true)
        .http_version(HttpVersion::Http2)
        .build()
        .unwrap();
    let url = format!("{}/chat/completions", mock.base_url());
    let response = client
        .oneshot(post(url, r#"{"model":"m@chunks=3","stream":true}"#))
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let text = response.into_body().collect().await.unwrap().to_bytes();
    assert!(text.ends_with(b"data: [DONE]\n\n"));
}

#[tokio::test]
async fn refused_connection_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let error = client()
        .oneshot(post(format!("http://{addr}/v1/models"), "{}"))
        .await
        .unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    assert!(!error.is_timeout());
}

#[tokio::test]
async fn plain_http_is_refused_unless_allowed() {
    let mock = MockUpstream::start().await;
    let strict: HttpClient<Full<Bytes>> = ClientBuilder::new().build().unwrap();
    let error = strict
        .oneshot(post(format!("{}/models", mock.base_url()), "{}"))
        .await
        .unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    assert!(mock.requests().is_empty());
}

#[tokio::test(start_paused = true)]
async fn silent_upstream_times_out_at_headers() {
    let mock = MockUpstream::start().await;
    let client: HttpClient<Full<Bytes>> = ClientBuilder::new()
        .allow_http(true)
        .response_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let url = format!("{}/chat/completions", mock.base_url());
    let error = client
        .oneshot(post(url, r#"{"model":"m@fault=silent","stream":true}"#))
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

mod tls {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::net::SocketAddr;
    use std::sync::Arc;

    /// An HTTPS server on 127.0.0.1 for `localhost`, with a self-signed certificate, offering
    /// h2 and http/1.1 by ALPN. Answers every request with the HTTP version it was served in.
    async fn server() -> (SocketAddr, CertificateDer<'static>) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        |request: Request<hyper::body::Incoming>| async move {
                            let version = format!("{:?}", request.version());
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from(version),
                            )))
                        },
                    );
                    let builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    let _ = builder
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        (addr, cert)
    }

    async fn get(client: &HttpClient<Full<Bytes>>, addr: SocketAddr) -> Result<String, Error> {
        let url = format!("https://localhost:{}/v1/models", addr.port());
        let request = Request::get(url).body(Full::default()).unwrap();
        let response = client.clone().oneshot(request).await?;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Ok(String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn https_negotiates_http2_by_alpn() {
        let (addr, cert) = server().await;
        let client: HttpClient<Full<Bytes>> = ClientBuilder::new()
            .add_root_certificates([cert])
            .build()
            .unwrap();
        assert_eq!(get(&client, addr).await.unwrap(), "HTTP/2.0");
        // The HTTP/2 connection is shared, not redialled.
        assert_eq!(get(&client, addr).await.unwrap(), "HTTP/2.0");
    }

    #[tokio::test]
    async fn https_http1_when_asked_and_pooled() {
        let (addr, cert) = server().await;
        let client: HttpClient<Full<Bytes>> = ClientBuilder::new()
            .add_root_certificates([cert])
            .http_version(HttpVersion::Http1)
            .build()
            .unwrap();
        assert_eq!(get(&client, addr).await.unwrap(), "HTTP/1.1");
        assert_eq!(client.idle_connections(), 1);
        assert_eq!(get(&client, addr).await.unwrap(), "HTTP/1.1");
        assert_eq!(
            client.idle_connections(),
            1,
            "the TLS connection was reused"
        );
    }

    #[tokio::test]
    async fn an_untrusted_certificate_is_a_connect_error() {
        let (addr, _) = server().await;
        let client: HttpClient<Full<Bytes>> = ClientBuilder::new().build().unwrap();
        let error = get(&client, addr).await.unwrap_err();
        assert!(error.is_connect(), "{error:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn at_the_per_host_limit_a_request_waits_for_a_connection_to_come_back() {
    let mock = MockUpstream::start().await;
    let client = ClientBuilder::new()
        .allow_http(true)
        .pool_max_per_host(1)
        .build::<Full<Bytes>>()
        .unwrap();
    let url = || format!("{}/chat/completions", mock.base_url());
    let first = client
        .clone()
        .oneshot(post(
            url(),
            r#"{"model":"m@chunks=3,delay_ms=1000","stream":true}"#,
        ))
        .await
        .unwrap();
    let snapshot = client.pool_snapshot();
    assert_eq!((snapshot.open, snapshot.in_use, snapshot.idle), (1, 1, 0));

    let started = tokio::time::Instant::now();
    let second = tokio::spawn({
        let client = client.clone();
        let request = post(url(), r#"{"model":"m@chunks=1","stream":true}"#);
        async move {
            let response = client.oneshot(request).await.unwrap();
            let at = tokio::time::Instant::now();
            (at, response.into_body().collect().await.unwrap().to_bytes())
        }
    });
    tokio::task::yield_now().await;
    assert_eq!(client.pool_snapshot().waiting, 1);

    // The first stream ends after 2 s; its connection serves the waiting request.
    let text = first.into_body().collect().await.unwrap().to_bytes();
    assert!(text.ends_with(b"data: [DONE]\n\n"));
    let (at, text) = second.await.unwrap();
    assert!(text.ends_with(b"data: [DONE]\n\n"));
    assert_eq!(at.duration_since(started), Duration::from_secs(2));
    assert_eq!(mock.connections(), 1, "never a second connection");
    let snapshot = client.pool_snapshot();
    assert_eq!((snapshot.open, snapshot.idle, snapshot.waiting), (1, 1, 0));
}
