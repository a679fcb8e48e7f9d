//! `cargo xtask bench --only tls`: the streaming workload with the upstream over TLS, as real
//! providers are reached. The mock serves TLS (a certificate generated at start, ALPN h2 and
//! http/1.1); weir reaches it over HTTP/1.1 and over HTTP/2, nginx over HTTP/1.1
//! (`proxy_ssl`), HAProxy over HTTP/2 (`alpn h2`). Clients speak plain HTTP/1.1 to the proxies.

use crate::bench::{
    bench_config_as, haproxy_config_as, nginx_config_as, pinned, throughput, ttft, wait_port_for,
    Proc, Target, Work, MOCK,
};
use crate::Result;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const MOCK_TLS: &str = "127.0.0.1:18095";
const WEIR_H1: (&str, &str) = ("127.0.0.1:18084", "127.0.0.1:18097");
const WEIR_H2: (&str, &str) = ("127.0.0.1:18085", "127.0.0.1:18098");
const NGINX_TLS: &str = "127.0.0.1:18086";
const HAPROXY_H2: &str = "127.0.0.1:18087";

/// Runs the section; `peers`: whether to start nginx and HAProxy (when installed).
pub(crate) async fn run(
    bin: &Path,
    weir: &Path,
    dir: &Path,
    peers: bool,
    n: usize,
    streams: usize,
    clients: usize,
) -> Result {
    let cert = dir.join("mock-tls.pem");
    let mut mock = Proc::spawn(
        "weir-mock",
        pinned(0, &bin.join("weir-mock"))
            .args(["--listen", MOCK_TLS, "--threads", "1", "--tls-cert-out"])
            .arg(&cert),
    )?;
    mock.wait_line("listening on").await?;
    let mut procs = Vec::new();
    let mut targets = vec![Target {
        name: "direct",
        addr: MOCK.parse().expect("an address"),
        pid: None,
    }];
    for (name, (listen, admin), version) in
        [("weir h1", WEIR_H1, "http1"), ("weir h2", WEIR_H2, "http2")]
    {
        let config = bench_config_as(
            dir,
            false,
            &format!("weir-{version}.toml"),
            listen,
            admin,
            "",
        )?;
        let text = std::fs::read_to_string(&config).map_err(|e| e.to_string())?;
        let text = text.replace(
            &format!("base_url = \"http://{MOCK}/v1\"\nallow_http = true"),
            &format!(
                "base_url = \"https://{MOCK_TLS}/v1\"\ntls_ca = \"{}\"\nhttp_version = \"{version}\"",
                cert.display()
            ),
        );
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        let mut p = Proc::spawn(
            "weir",
            pinned(1, weir)
                .arg("--config")
                .arg(&config)
                .env("WEIR_LOG", "warn,weir=info"),
        )?;
        p.wait_line("weir is serving").await?;
        targets.push(Target {
            name,
            addr: listen.parse().expect("an address"),
            pid: Some(p.pid()),
        });
        procs.push(p);
    }
    if peers && Command::new("nginx").arg("-v").output().is_ok() {
        let conf = nginx_tls_config(dir, &cert)?;
        let mut cmd = pinned(1, Path::new("nginx"));
        cmd.arg("-c").arg(&conf).arg("-p").arg(dir);
        let p = Proc::spawn("nginx", &mut cmd)?;
        wait_port_for(
            NGINX_TLS.parse().expect("an address"),
            Duration::from_secs(5),
        )
        .await?;
        targets.push(Target {
            name: "nginx h1",
            addr: NGINX_TLS.parse().expect("an address"),
            pid: Some(p.pid()),
        });
        procs.push(p);
    }
    if peers && Command::new("haproxy").arg("-v").output().is_ok() {
        let conf = haproxy_h2_config(dir, &cert)?;
        let mut cmd = pinned(1, Path::new("haproxy"));
        cmd.arg("-db").arg("-f").arg(&conf);
        let p = Proc::spawn("haproxy", &mut cmd)?;
        wait_port_for(
            HAPROXY_H2.parse().expect("an address"),
            Duration::from_secs(5),
        )
        .await?;
        targets.push(Target {
            name: "haproxy h2",
            addr: HAPROXY_H2.parse().expect("an address"),
            pid: Some(p.pid()),
        });
        procs.push(p);
    }
    println!("\nthe upstream over TLS (the mock's own certificate; clients plain HTTP/1.1 to each proxy; direct is the plain mock)");
    ttft(&targets, n).await?;
    throughput(&targets, streams, clients, Work::Stream).await?;
    for p in &mut procs {
        p.terminate();
    }
    mock.terminate();
    Ok(())
}

/// nginx to the TLS mock over HTTP/1.1, verifying its certificate, sessions reused.
fn nginx_tls_config(dir: &Path, cert: &Path) -> Result<std::path::PathBuf> {
    let c = cert.display();
    nginx_config_as(
        dir,
        "nginx-tls",
        NGINX_TLS,
        &format!("upstream mock_tls {{ server {MOCK_TLS}; keepalive 64; }}"),
        &format!(
            "proxy_pass https://mock_tls;\n            proxy_ssl_trusted_certificate {c};\n            proxy_ssl_verify on;\n            proxy_ssl_name localhost;\n            proxy_ssl_server_name on;\n            proxy_ssl_session_reuse on;"
        ),
    )
}

/// HAProxy to the TLS mock over HTTP/2, verifying its certificate.
fn haproxy_h2_config(dir: &Path, cert: &Path) -> Result<std::path::PathBuf> {
    let c = cert.display();
    haproxy_config_as(
        dir,
        "haproxy-h2",
        HAPROXY_H2,
        &format!("server mock {MOCK_TLS} ssl verify required ca-file {c} sni str(localhost) verifyhost localhost alpn h2"),
    )
}
