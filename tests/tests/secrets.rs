//! Canary keys: the provider's key and a client's key must appear in no answer (errors
//! included, even when the provider quotes the key back), no header, no metric, no admin page
//! and no log line.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::path::Path;
use std::sync::{Arc, Mutex};
use weir_e2e::{config_text, read, PROVIDER_KEY};
use weir_test::{MockConfig, MockUpstream};

const CLIENT_KEY: &str = "sk-client-canary-5b9e41d07c";

/// Log lines, captured.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything a client can see of one answer: status, headers and body.
async fn seen(weir: &weir::Running, key: &str, body: &'static str, mock: &str) -> String {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(format!("http://{}/v1/chat/completions", weir.addr()))
        .header("authorization", format!("Bearer {key}"))
        .header("x-mock", mock)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let mut text = format!("{}\n", response.status());
    for (name, value) in response.headers() {
        text.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    text.push_str(&String::from_utf8_lossy(&read(response).await.bytes));
    text
}

async fn admin(weir: &weir::Running, path: &str) -> String {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let uri = format!("http://{}{path}", weir.admin_addr());
    let response = client.get(uri.parse().unwrap()).await.unwrap();
    String::from_utf8_lossy(&read(response).await.bytes).into_owned()
}

#[tokio::test(start_paused = true)]
async fn canary_keys_appear_in_no_answer_header_metric_or_log() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);

    let mock = MockUpstream::start_with(MockConfig {
        api_key: Some(PROVIDER_KEY.to_owned()),
        ..MockConfig::default()
    })
    .await;
    let text = format!(
        "{}\n[[keys]]\nname = \"canary-client\"\nhash = \"{}\"\n",
        config_text(&mock, "breaker = { consecutive_failures = 2 }")
            .replace("auth = \"off\"\n", ""),
        weir::config::hash_key(CLIENT_KEY)
    );
    let config = weir::config::parse(Path::new("secrets.toml"), &text, &|name| {
        (name == "WEIR_E2E_PROVIDER_KEY").then(|| PROVIDER_KEY.to_owned())
    })
    .unwrap();
    let weir = weir::start(&config).await.unwrap();

    let chat = r#"{"model":"gpt-test","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let whole = r#"{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}"#;
    let almost = &CLIENT_KEY[..CLIENT_KEY.len() - 1];
    let mut everything = Vec::new();
    for (key, body, mock) in [
        (CLIENT_KEY, chat, "chunks=3"),
        (CLIENT_KEY, whole, "chunks=3"),
        (CLIENT_KEY, r#"{"model":"nope","messages":[]}"#, ""),
        (CLIENT_KEY, r#"{"model":"#, ""),
        (CLIENT_KEY, chat, "fault=echo_key"),
        (CLIENT_KEY, chat, "fault=500"),
        (CLIENT_KEY, chat, "fault=reset_after:1"),
        (CLIENT_KEY, chat, "fault=429,retry_after=1"),
        (almost, chat, "chunks=1"),
        ("", chat, "chunks=1"),
    ] {
        everything.push(seen(&weir, key, body, mock).await);
    }
    // The provider quoted the key it was sent: the client sees it scrubbed.
    let echoed = &everything[4];
    assert!(echoed.starts_with("401"), "{echoed}");
    assert!(
        echoed.contains("Incorrect API key provided: [redacted]"),
        "{echoed}"
    );
    everything.push(admin(&weir, "/metrics").await);
    everything.push(admin(&weir, "/admin/providers").await);
    everything.push(format!("{config:?}"));
    drop(_logging);
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(!logs.is_empty(), "the run logged something");
    everything.push(logs);

    for text in &everything {
        for canary in [PROVIDER_KEY, CLIENT_KEY, almost] {
            assert!(!text.contains(canary), "`{canary}` leaked in:\n{text}");
        }
    }
}
