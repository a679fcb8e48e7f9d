//! One completion: run through the stack, its answer relayed as messages.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tower::ServiceExt;
use weir_llm::SseDecoder;

use super::outbox::{error_message, Outbox};
use super::Stack;

/// The largest error answer read to relay its message.
const ERROR_LIMIT: usize = 64 * 1024;

/// Runs one completion through the stack and relays its answer.
pub(super) async fn complete(
    stack: Stack,
    request: Request<Full<Bytes>>,
    id: String,
    outbox: Outbox,
) {
    let Ok(response) = stack.oneshot(request).await;
    let (parts, body) = response.into_parts();
    if !parts.status.is_success() {
        let bytes = Limited::new(body, ERROR_LIMIT)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let (code, message) = error_fields(&bytes, parts.status);
        let _ = outbox.send(error_message(Some(&id), &code, &message)).await;
        return;
    }
    let mut body = body;
    let mut decoder = SseDecoder::new();
    let mut usage: Option<Bytes> = None;
    let mut finish: Option<String> = None;
    loop {
        let frame = match body.frame().await {
            Some(Ok(frame)) => frame,
            Some(Err(failed)) => {
                let message = format!("The answer was cut: {failed}.");
                let _ = outbox
                    .send(error_message(Some(&id), "stream_failed", &message))
                    .await;
                return;
            }
            None => {
                let _ = outbox
                    .send(error_message(
                        Some(&id),
                        "stream_failed",
                        "The answer ended before it was complete.",
                    ))
                    .await;
                return;
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        decoder.push(data);
        while let Ok(Some(event)) = decoder.next_event() {
            let data = &event.data;
            if event.is_done() {
                let text = format!(
                    r#"{{"type":"done","id":{id},"usage":{},"finish_reason":{}}}"#,
                    usage
                        .as_deref()
                        .map_or("null", |u| std::str::from_utf8(u).unwrap_or("null")),
                    finish
                        .as_deref()
                        .map_or("null".to_owned(), |f| serde_json::Value::from(f)
                            .to_string()),
                );
                let _ = outbox.send(Message::text(text)).await;
                // Read to the body's end (right after `[DONE]`), as hyper does for HTTP: the
                // upstream connection goes back to its pool and the metrics settle as
                // complete. An upstream that holds the stream open past it is not waited for
                // long.
                let rest = async { while let Some(Ok(_)) = body.frame().await {} };
                let _ = tokio::time::timeout(Duration::from_secs(1), rest).await;
                return;
            }
            if weir_llm::stream::is_error_event(data) {
                let (code, message) = error_fields(data, StatusCode::BAD_GATEWAY);
                let _ = outbox.send(error_message(Some(&id), &code, &message)).await;
                return;
            }
            if let Some(object) = usage_object(data) {
                usage = Some(object);
                continue;
            }
            if let Some(reason) = weir_llm::scan::finish_reason(data) {
                finish = Some(String::from_utf8_lossy(reason).into_owned());
            }
            let mut text = String::with_capacity(data.len() + id.len() + 32);
            text.push_str(r#"{"type":"chunk","id":"#);
            text.push_str(&id);
            text.push_str(r#","delta":"#);
            text.push_str(std::str::from_utf8(data).unwrap_or("null"));
            text.push('}');
            if outbox.send(Message::text(text)).await.is_err() {
                return;
            }
        }
    }
}

/// The `usage` object of a usage-only event (`"choices":[]`), as JSON text.
pub(super) fn usage_object(data: &[u8]) -> Option<Bytes> {
    if !data.trim_ascii_end().ends_with(b"}}") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(data).ok()?;
    let empty = value.get("choices")?.as_array()?.is_empty();
    let usage = value.get("usage").filter(|u| u.is_object() && empty)?;
    Some(serde_json::to_vec(usage).ok()?.into())
}

/// The code and message of an OpenAI-style error body.
pub(super) fn error_fields(bytes: &[u8], status: StatusCode) -> (String, String) {
    let value: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    let error = &value["error"];
    let code = error["code"]
        .as_str()
        .or_else(|| error["type"].as_str())
        .map_or_else(|| format!("http_{}", status.as_u16()), str::to_owned);
    let message = error["message"].as_str().map_or_else(
        || format!("The request failed with status {status}."),
        str::to_owned,
    );
    (code, message)
}
