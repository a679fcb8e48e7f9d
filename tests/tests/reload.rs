//! Hot reload: a new configuration is swapped in atomically, streams in flight finish on the
//! one they started on, a bad configuration is refused with the running one kept, and breaker
//! and limiter state survive for what still exists.

use std::path::Path;
use std::time::Duration;
use weir_e2e::{header, metrics_at, read, sample, stream_at};
use weir_test::MockUpstream;

/// A config with one provider per `(name, mock)` and the route `gpt-test` over them in order.
fn config(providers: &[(&str, &MockUpstream, &str)], extra: &str) -> weir::config::Config {
    let mut text = String::from(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndrain_timeout = \"30s\"\nauth = \"off\"\nforward_headers = [\"x-mock\"]\n",
    );
    for (name, mock, settings) in providers {
        text.push_str(&format!(
            "\n[[providers]]\nname = \"{name}\"\nbase_url = \"{}\"\nallow_http = true\nhealth = {{ probe = \"off\" }}\n{settings}\n",
            mock.base_url()
        ));
    }
    let targets: Vec<String> = providers
        .iter()
        .map(|(name, _, _)| format!("{{ provider = \"{name}\", model = \"m\" }}"))
        .collect();
    text.push_str(&format!(
        "\n[[routes]]\nmodel = \"gpt-test\"\ntargets = [{}]\n{extra}\n",
        targets.join(", ")
    ));
    weir::config::parse(Path::new("reload.toml"), &text, &|_| None).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_reload_moves_new_requests_while_streams_in_flight_finish_where_they_started() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let weir = weir::start(&config(&[("a", &a, "")], "")).await.unwrap();
    let long = stream_at(weir.addr(), "chunks=3,delay_ms=1000").await;
    assert_eq!(header(long.headers(), "x-weir-provider"), Some("a"));

    weir.reloader()
        .reload(&config(&[("b", &b, "")], ""))
        .unwrap();
    let moved = stream_at(weir.addr(), "chunks=2").await;
    assert_eq!(header(moved.headers(), "x-weir-provider"), Some("b"));
    assert_eq!(read(moved).await.content(), "tok0 tok1 ");

    // The stream opened before the reload runs to its end on provider `a`.
    let long = read(long).await;
    assert!(long.error.is_none());
    assert_eq!(long.content(), "tok0 tok1 tok2 ");
    assert_eq!((a.requests().len(), b.requests().len()), (1, 1));
    let text = metrics_at(weir.admin_addr()).await;
    assert_eq!(
        sample(&text, r#"weir_config_reloads_total{result="ok"}"#),
        1.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_bad_configuration_is_refused_and_the_running_one_stays() {
    let a = MockUpstream::start().await;
    let weir = weir::start(&config(&[("a", &a, "")], "")).await.unwrap();
    let dir = std::env::temp_dir().join(format!("weir-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = 12\n",
    )
    .unwrap();

    let refused = weir.reloader().reload_file(&file).unwrap_err();
    let message = refused.to_string();
    assert!(message.contains("bad.toml:3:16:"), "{message}");
    assert!(message.contains("expected a string"), "{message}");
    let still = stream_at(weir.addr(), "chunks=1").await;
    assert_eq!(still.status(), 200);
    assert_eq!(header(still.headers(), "x-weir-provider"), Some("a"));
    let text = metrics_at(weir.admin_addr()).await;
    assert_eq!(
        sample(&text, r#"weir_config_reloads_total{result="failed"}"#),
        1.0
    );
    assert_eq!(
        sample(&text, r#"weir_config_reloads_total{result="ok"}"#),
        0.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(start_paused = true)]
async fn breaker_and_rate_limit_state_survive_a_reload_for_what_still_exists() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let breaker = "breaker = { consecutive_failures = 1, open_for = \"60s\" }";
    let limit = "rate_limit = { requests_per_minute = 2 }";
    let weir = weir::start(&config(&[("a", &a, breaker), ("b", &b, "")], limit))
        .await
        .unwrap();
    // `a` fails once: its breaker opens, and `b` serves. The route's limit is now spent.
    let first = stream_at(weir.addr(), "fault=500").await;
    assert_eq!(header(first.headers(), "x-weir-provider"), Some("b"));
    read(first).await;
    let second = stream_at(weir.addr(), "chunks=1").await;
    assert_eq!(header(second.headers(), "x-weir-provider"), Some("b"));
    read(second).await;

    // A reload that changes `a`'s timeout (so `a` is rebuilt) but not its breaker, nor the
    // route's limit.
    let changed = format!("{breaker}\nresponse_timeout = \"30s\"");
    weir.reloader()
        .reload(&config(&[("a", &a, &changed), ("b", &b, "")], limit))
        .unwrap();
    let refused = stream_at(weir.addr(), "chunks=1").await;
    assert_eq!(
        refused.status(),
        429,
        "the route's limit was kept, not reset"
    );
    tokio::time::advance(Duration::from_secs(30)).await;
    let after = stream_at(weir.addr(), "chunks=1").await;
    assert_eq!(
        header(after.headers(), "x-weir-provider"),
        Some("b"),
        "`a`'s breaker is still open"
    );
    assert_eq!(a.requests().len(), 1, "nothing more reached `a`");
}

#[tokio::test(start_paused = true)]
async fn a_reload_during_a_drain_does_not_disturb_it() {
    let (a, b) = (MockUpstream::start().await, MockUpstream::start().await);
    let weir = weir::start(&config(&[("a", &a, "")], "")).await.unwrap();
    let addr = weir.addr();
    let long = stream_at(addr, "chunks=3,delay_ms=1000").await;
    let reloader = weir.reloader();
    let drain = tokio::spawn(weir.drain());
    tokio::task::yield_now().await;

    reloader.reload(&config(&[("b", &b, "")], "")).unwrap();
    let long = read(long).await;
    assert!(long.error.is_none(), "the stream in flight finished");
    assert_eq!(long.content(), "tok0 tok1 tok2 ");
    assert!(drain.await.unwrap(), "the drain finished in time");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connection after the drain"
    );
    assert!(b.requests().is_empty());
}
