//! What a connection sends: a bounded queue that counts what goes out, and the one task that
//! writes it, several queued messages in one write.

use super::Context;
use futures_util::SinkExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// An `error` message.
pub(super) fn error_message(id: Option<&str>, code: &str, message: &str) -> Message {
    let text = format!(
        r#"{{"type":"error","id":{},"code":{},"message":{}}}"#,
        id.unwrap_or("null"),
        serde_json::Value::from(code),
        serde_json::Value::from(message)
    );
    Message::text(text)
}

/// The queue to the writer, counting what is sent.
#[derive(Clone, Debug)]
pub(super) struct Outbox {
    pub(super) tx: mpsc::Sender<Message>,
    pub(super) ctx: Arc<Context>,
}

impl Outbox {
    /// Waits for room: a client that does not read holds its completions up here.
    pub(super) async fn send(&self, message: Message) -> Result<(), ()> {
        self.tx.send(message).await.map_err(|_| ())?;
        self.ctx.stats.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

pub(super) async fn write_loop<S>(mut sink: S, mut rx: mpsc::Receiver<Message>)
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    while let Some(message) = rx.recv().await {
        let closing = matches!(message, Message::Close(_));
        if sink.feed(message).await.is_err() {
            return;
        }
        // Several queued messages go out in one write.
        if (rx.is_empty() || closing) && sink.flush().await.is_err() {
            return;
        }
        if closing {
            break;
        }
    }
    let _ = sink.close().await;
}
