//! `weir-mock`: the mock upstream (Chat Completions, Completions, Responses, Messages) as a
//! process, for benchmarks, demos and SDK checks (`tests/python/mock_sdk_shapes.py`).
//!
//! ```text
//! weir-mock [--listen 127.0.0.1:8091] [--threads N] [--api-key KEY] [--defaults DIRECTIVES] [--log]
//!           [--tls-cert-out FILE]
//! ```
//! Prints `listening on ADDR` once it accepts connections. With `--tls-cert-out`, it serves TLS
//! (ALPN h2 and http/1.1) with a self-signed certificate for localhost and 127.0.0.1, written
//! to FILE as PEM for clients to trust.

use std::net::SocketAddr;
use weir_test::{MockConfig, MockUpstream};

fn main() {
    let mut listen: SocketAddr = "127.0.0.1:8091".parse().expect("a valid address");
    let mut threads = 1usize;
    let mut config = MockConfig {
        no_log: true,
        ..MockConfig::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| fail(&format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--listen" => {
                listen = value("--listen")
                    .parse()
                    .unwrap_or_else(|e| fail(&format!("--listen: {e}")))
            }
            "--threads" => {
                threads = value("--threads")
                    .parse()
                    .unwrap_or_else(|e| fail(&format!("--threads: {e}")))
            }
            "--api-key" => config.api_key = Some(value("--api-key")),
            "--defaults" => config.defaults = Some(value("--defaults")),
            "--log" => config.no_log = false,
            "--tls-cert-out" => {
                let path = value("--tls-cert-out");
                let tls = weir_test::tls::Tls::self_signed();
                std::fs::write(&path, tls.cert_pem())
                    .unwrap_or_else(|e| fail(&format!("--tls-cert-out {path}: {e}")));
                config.tls = Some(tls);
            }
            "-h" | "--help" => {
                println!("weir-mock [--listen ADDR] [--threads N] [--api-key KEY] [--defaults DIRECTIVES] [--log] [--tls-cert-out FILE]");
                return;
            }
            other => fail(&format!("unknown argument `{other}`")),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .unwrap_or_else(|e| fail(&format!("bind {listen}: {e}")));
        let mock = MockUpstream::serve(listener, config);
        println!("listening on {}", mock.addr());
        let _ = tokio::signal::ctrl_c().await;
    });
}

fn fail(message: &str) -> ! {
    eprintln!("weir-mock: {message}");
    std::process::exit(64)
}
