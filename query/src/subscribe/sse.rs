//! Subscriptions as Server-Sent Events: each message is an event whose `data` is the JSON
//! message and, for changes, whose `id` is the position (a reconnecting `EventSource` sends
//! it back as `Last-Event-ID` and resumes after it).

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::hub::{Next, Subscription};
use super::HEARTBEAT;

/// Appends one event.
fn event(out: &mut String, message: &str) {
    // the position of a change message, as the event id
    if let Some(rest) = message.strip_prefix("{\"op\":\"") {
        if let Some(at) = rest.find("\"position\":") {
            let digits: String = rest[at + 11..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            out.push_str("id: ");
            out.push_str(&digits);
            out.push('\n');
        }
    }
    out.push_str("data: ");
    out.push_str(message);
    out.push_str("\n\n");
}

struct State {
    sub: Subscription,
    done: bool,
}

/// The event stream of `sub`.
pub fn respond(sub: Subscription) -> Response {
    let stream = futures::stream::unfold(State { sub, done: false }, |mut s| async move {
        if s.done {
            return None;
        }
        let mut out = String::new();
        if let Some(first) = s.sub.first.take() {
            event(&mut out, &first);
            return Some((Ok::<_, std::convert::Infallible>(Bytes::from(out)), s));
        }
        match tokio::time::timeout(HEARTBEAT, s.sub.next()).await {
            Err(_) => out.push_str(": heartbeat\n\n"),
            Ok(Next::Messages(m)) => m.iter().for_each(|m| event(&mut out, m)),
            Ok(Next::End(m)) => {
                event(&mut out, &m);
                s.done = true;
            }
        }
        Some((Ok(Bytes::from(out)), s))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_events_carry_their_position_as_id() {
        let mut out = String::new();
        event(&mut out, r#"{"op":"upsert","position":17,"row":{"a":1}}"#);
        event(&mut out, r#"{"error":{"code":"x"},"position":3}"#);
        assert_eq!(
            out,
            "id: 17\ndata: {\"op\":\"upsert\",\"position\":17,\"row\":{\"a\":1}}\n\n\
             data: {\"error\":{\"code\":\"x\"},\"position\":3}\n\n"
        );
    }
}
