//! The WebSocket sections of `cargo xtask bench`: idle connections held open (resident memory
//! per connection), and time to first token over `/v1/ws` against the HTTP path.

use crate::bench::{ms, percentile, rss_kib, Target, PATH};
use crate::load::Conn;
use crate::Result;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

async fn open(addr: SocketAddr) -> Result<Ws> {
    let mut request = format!("ws://{addr}/v1/ws")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let h = request.headers_mut();
    h.insert(
        "authorization",
        "Bearer bench-client".parse().expect("a header"),
    );
    h.insert("x-mock", "chunks=20".parse().expect("a header"));
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (ws, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// `n` idle WebSocket connections held open at once: weir's resident memory per connection.
pub(crate) async fn idle(t: &Target, n: usize) -> Result {
    let pid = t.pid.ok_or("connections are measured through weir")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid);
    let start = Instant::now();
    let mut held = Vec::with_capacity(n);
    let mut failed = 0;
    for wave in (0..n).collect::<Vec<_>>().chunks(250) {
        let opening: Vec<_> = wave.iter().map(|_| tokio::spawn(open(t.addr))).collect();
        for task in opening {
            match task.await.map_err(|e| e.to_string())? {
                Ok(ws) => held.push(ws),
                Err(_) => failed += 1,
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let open_rss = rss_kib(pid);
    let per = open_rss.saturating_sub(before) as f64 / held.len().max(1) as f64;
    println!(
        "\n{n} idle WebSocket connections to weir ({} open, {failed} failed, in {:.1} s)\n  resident: {before} KiB before, {open_rss} KiB open → {per:.2} KiB per connection",
        held.len(),
        start.elapsed().as_secs_f64(),
    );
    if held.len() < n {
        return Err(format!(
            "only {} of {n} WebSocket connections opened",
            held.len()
        ));
    }
    drop(held);
    Ok(())
}

/// Time to first token over `/v1/ws` and over HTTP through the same weir, interleaved request
/// by request, and what the WebSocket framing adds.
pub(crate) async fn ttft(weir: &Target, direct: &Target, n: usize) -> Result {
    let body = crate::bench::request_body();
    let mut ws = open(weir.addr).await?;
    let mut http = Conn::open(weir.addr).await?;
    let mut plain = Conn::open(direct.addr).await?;
    let message = r#"{"type":"completion","id":1,"model":"bench","messages":[{"role":"user","content":"Write twenty tokens."}]}"#;
    let (mut over_ws, mut over_http, mut over_direct) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..(n + n / 10) {
        let warm = round >= n / 10;
        let d = plain.stream(PATH, &body, "chunks=20").await?;
        let h = http.stream(PATH, &body, "chunks=20").await?;
        let sent = Instant::now();
        ws.send(Message::text(message))
            .await
            .map_err(|e| e.to_string())?;
        let mut first = None;
        loop {
            let Some(frame) = ws.next().await else {
                return Err("the WebSocket closed".into());
            };
            let Message::Text(text) = frame.map_err(|e| e.to_string())? else {
                continue;
            };
            if first.is_none() {
                first = Some(sent.elapsed());
            }
            if text.contains(r#""type":"done""#) {
                break;
            }
            if text.contains(r#""type":"error""#) {
                return Err(format!("the completion failed: {text}"));
            }
        }
        if warm {
            over_direct.push(d);
            over_http.push(h);
            over_ws.push(first.expect("a first message"));
        }
    }
    for samples in [&mut over_direct, &mut over_http, &mut over_ws] {
        samples.sort_unstable();
    }
    println!("\ntime to first token over WebSocket and HTTP through weir, 20-chunk answers, 1 client, {n} each (interleaved)");
    println!("  {:<14} {:>10} {:>10}", "path", "p50 ms", "p99 ms");
    for (name, samples) in [
        ("direct", &over_direct),
        ("weir HTTP", &over_http),
        ("weir WebSocket", &over_ws),
    ] {
        println!(
            "  {:<14} {:>10.3} {:>10.3}",
            name,
            ms(percentile(samples, 0.5)),
            ms(percentile(samples, 0.99))
        );
    }
    let added = |a: &[Duration], b: &[Duration], p| ms(percentile(a, p)) - ms(percentile(b, p));
    println!(
        "  WebSocket vs HTTP: {:+.3} ms p50, {:+.3} ms p99",
        added(&over_ws, &over_http, 0.5),
        added(&over_ws, &over_http, 0.99)
    );
    Ok(())
}
