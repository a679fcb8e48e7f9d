//! The load generator: plain hyper HTTP/1.1 connections, one per task, as an app would hold.

use crate::Result;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// One keep-alive client connection.
pub(crate) struct Conn {
    addr: SocketAddr,
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    pub(crate) async fn open(addr: SocketAddr) -> Result<Self> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        Ok(Self { addr, sender })
    }

    fn request(&self, path: &str, body: &Bytes, mock: &str) -> Request<Full<Bytes>> {
        Request::post(path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .header("authorization", "Bearer bench-client")
            .header("x-mock", mock)
            .body(Full::new(body.clone()))
            .expect("a valid request")
    }

    /// Waits until the connection can take a request; reconnects if the server closed it (as
    /// nginx does after `keepalive_requests`), as a client's pool would.
    async fn ready(&mut self) -> Result {
        if self.sender.ready().await.is_err() {
            *self = Self::open(self.addr).await?;
            self.sender.ready().await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Sends one streaming request, reads it to the end, and returns its time to first frame.
    pub(crate) async fn stream(
        &mut self,
        path: &str,
        body: &Bytes,
        mock: &str,
    ) -> Result<Duration> {
        self.ready().await?;
        let start = Instant::now();
        let response = self
            .sender
            .send_request(self.request(path, body, mock))
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let mut body = response.into_body();
        let mut ttft = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            if ttft.is_none() && frame.data_ref().is_some_and(|d| !d.is_empty()) {
                ttft = Some(start.elapsed());
            }
        }
        ttft.ok_or_else(|| "no data".to_owned())
    }

    /// Sends one request for a whole (non-streamed) answer and reads it to the end; returns
    /// its bytes.
    pub(crate) async fn whole(&mut self, path: &str, body: &Bytes, mock: &str) -> Result<usize> {
        self.ready().await?;
        let response = self
            .sender
            .send_request(self.request(path, body, mock))
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(body.to_bytes().len())
    }

    /// Sends a streaming request and returns once its first frame arrived, handing back the
    /// body so the caller can hold the stream open.
    pub(crate) async fn open_stream(
        &mut self,
        path: &str,
        body: &Bytes,
        mock: &str,
    ) -> Result<hyper::body::Incoming> {
        self.ready().await?;
        let response = self
            .sender
            .send_request(self.request(path, body, mock))
            .await
            .map_err(|e| e.to_string())?;
        let mut body = response.into_body();
        match body.frame().await {
            Some(Ok(_)) => Ok(body),
            Some(Err(e)) => Err(e.to_string()),
            None => Err("stream ended at once".into()),
        }
    }
}

/// The demo: one streamed completion, each content delta printed as it arrives.
pub(crate) async fn print_stream(addr: SocketAddr, model: &str) -> Result {
    use std::io::Write;
    let mut conn = Conn::open(addr).await?;
    let body = Bytes::from(format!(
        r#"{{"model":"{model}","stream":true,"messages":[{{"role":"user","content":"Hello, weir!"}}]}}"#
    ));
    conn.sender.ready().await.map_err(|e| e.to_string())?;
    let start = Instant::now();
    let response = conn
        .sender
        .send_request(conn.request("/v1/chat/completions", &body, ""))
        .await
        .map_err(|e| e.to_string())?;
    eprintln!(
        "HTTP {} (x-request-id: {}, x-weir-provider: {})",
        response.status(),
        response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
        response
            .headers()
            .get("x-weir-provider")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
    );
    let mut body = response.into_body();
    let mut pending = String::new();
    let mut out = std::io::stdout();
    let mut events = 0;
    let mut first = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("the stream broke: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.push_str(&String::from_utf8_lossy(&data));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let Some(payload) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            events += 1;
            if payload == "[DONE]" {
                writeln!(out, "\n[DONE]").ok();
                continue;
            }
            let json: serde_json::Value =
                serde_json::from_str(payload).map_err(|e| e.to_string())?;
            if let Some(text) = json["choices"][0]["delta"]["content"].as_str() {
                first.get_or_insert_with(|| start.elapsed());
                write!(out, "{text}").ok();
                out.flush().ok();
            }
        }
    }
    eprintln!(
        "\n{events} events; first token after {:.1} ms, done after {:.1} ms",
        first.unwrap_or_default().as_secs_f64() * 1e3,
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
