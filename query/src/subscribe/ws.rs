//! Subscriptions over a WebSocket: one text frame per JSON message; the final message (the
//! run finished, or the subscriber fell behind) is followed by a close frame.

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::{SinkExt, StreamExt};

use super::hub::{Next, Subscription};
use super::HEARTBEAT;

/// The upgrade answer; the subscription runs on the socket.
pub fn respond(upgrade: WebSocketUpgrade, sub: Subscription) -> Response {
    upgrade
        // clients send nothing but control frames: a small read buffer (tungstenite's
        // default, 128 KiB per connection, made 1,000 idle WebSockets cost 130 MiB)
        .read_buffer_size(4 << 10)
        .max_message_size(64 << 10)
        // writes go out once this much is buffered (and at every flush)
        .write_buffer_size(16 << 10)
        .on_upgrade(move |socket| async move {
            if let Err(e) = run(socket, sub).await {
                tracing::debug!(error = %e, "a WebSocket subscriber left");
            }
        })
}

async fn run(socket: WebSocket, mut sub: Subscription) -> Result<(), axum::Error> {
    let (mut tx, mut rx) = socket.split();
    if let Some(first) = sub.first.take() {
        tx.send(Message::Text(first.into())).await?;
    }
    loop {
        tokio::select! {
            incoming = rx.next() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(()),
                // pings are answered by the socket itself
                Some(Ok(_)) => {}
            },
            next = sub.next() => match next {
                Next::Messages(m) => {
                    for text in m {
                        tx.feed(Message::Text(text.into())).await?;
                    }
                    tx.flush().await?;
                }
                Next::End(last) => {
                    tx.send(Message::Text(last.into())).await?;
                    let close = CloseFrame {
                        code: axum::extract::ws::close_code::NORMAL,
                        reason: "subscription over".into(),
                    };
                    tx.send(Message::Close(Some(close))).await?;
                    return Ok(());
                }
            },
            _ = tokio::time::sleep(HEARTBEAT) => {
                tx.send(Message::Ping(Default::default())).await?;
            }
        }
    }
}
