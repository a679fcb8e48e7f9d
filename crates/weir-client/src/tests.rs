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

async fn next_text(body: &mut Incoming) -> String {
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
    assert!(next_text(&mut body).await.contains("tok0 "));
    assert!(next_text(&mut body).await.contains("tok1 "));
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
}

#[tokio::test]
async fn h2c_with_prior_knowledge() {
    let mock = MockUpstream::start().await;
    let client: HttpClient<Full<Bytes>> = ClientBuilder::new()
        .allow_http(true)
        .http2_only(true)
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
