//! `GET /subscribe`: a WebSocket when the request upgrades, Server-Sent Events otherwise.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::hub::Client;
use super::{Request, SubscribeError};
use crate::http::HttpState;

/// An error answer, as `/sql` gives them.
pub fn refusal(e: &SubscribeError) -> Response {
    let body = serde_json::json!({"error": {"code": e.code(), "message": e.to_string()}});
    (e.status(), axum::Json(body)).into_response()
}

/// The handler of `GET /subscribe`.
pub async fn handler(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Some(refused) =
        crate::http::refusal(&state, &headers, peer.ip(), crate::console::Use::Read)
    {
        return refused;
    }
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    let seen: HashMap<&str, usize> = params.iter().fold(HashMap::new(), |mut m, (k, _)| {
        *m.entry(k.as_str()).or_default() += 1;
        m
    });
    if let Some((k, _)) = seen.iter().find(|(_, n)| **n > 1) {
        let e = SubscribeError::BadRequest(format!("`{k}` is given more than once"));
        return refusal(&e);
    }
    let pairs = params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let req = match Request::parse(pairs, last_event_id) {
        Ok(r) => r,
        Err(e) => return refusal(&e),
    };
    let client = match state.token {
        Some(_) => Client::Token,
        None => Client::Address(peer.ip()),
    };
    let hub = &state.subscriptions;
    // `where` is parsed on this thread: the SQL threads have the stack deep trees need
    let sub = match hub.subscribe(&req, client, peer) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, table = %req.table, "subscription refused");
            return refusal(&e);
        }
    };
    match upgrade {
        Ok(ws) => super::ws::respond(ws, sub),
        // not an upgrade (or not a valid one): an event stream
        Err(_) => super::sse::respond(sub),
    }
}
