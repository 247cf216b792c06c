//! The HTTP endpoint: `POST /sql` (JSON rows, or an Arrow IPC stream on request),
//! `GET /health` (live), `GET /ready` (ready for traffic), `GET /metrics` (Prometheus text or
//! OpenMetrics).

use std::sync::Arc;

use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::console::Refused;
use crate::engine::{Answer, Encoding, QueryEngine, QueryError, QueryLimits};
use crate::metrics::{Format, Metrics};

/// The media type of Arrow IPC streams.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// What the handlers share.
pub struct HttpState {
    pub engine: Arc<QueryEngine>,
    pub token: Option<String>,
    pub metrics: Arc<Metrics>,
    /// Live subscriptions (`GET /subscribe`).
    pub subscriptions: Arc<crate::subscribe::Hub>,
    /// The pipeline's graph, for the console.
    pub graph: crate::console::Graph,
    /// In a worker pool: the other workers.
    pub peers: Option<Arc<crate::peers::Peers>>,
    /// The web console's sign-in sessions.
    pub sessions: crate::console::sessions::Sessions,
}

/// The routes.
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/sql", post(sql))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/subscribe", get(crate::subscribe::handler))
        .merge(crate::console::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            busy_while_answering,
        ))
        .with_state(state)
}

/// Marks the request's connection busy while the server answers it, from the request's
/// arrival until its response body is sent; the time its body's bytes, or its reading of the
/// response, keep the server waiting counts as waiting for the client (see
/// [`crate::limits::Slot`]). A connection busy is never closed to make room for a new one;
/// one that waits for its client is, the longest waiting first.
async fn busy_while_answering(
    State(state): State<Arc<HttpState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let switch = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .and_then(|ConnectInfo(peer)| state.subscriptions.switches.get(peer));
    let Some(switch) = switch else {
        return next.run(request).await;
    };
    use http_body::Body as _;
    // a request is complete once its body is in (a bodiless one at once)
    if request.body().is_end_stream() {
        switch.slot.establish();
    }
    let busy = switch.slot.busy();
    let slot = switch.slot.clone();
    let request = request.map(|body| Body::new(Uploading { body, slot }));
    let response = next.run(request).await;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        switch.slot.upgrade();
        return response;
    }
    response.map(|body| {
        Body::new(Answering {
            body,
            busy: Some(busy),
            switch,
        })
    })
}

/// A request body whose wait for the client's bytes is marked on its connection's slot.
struct Uploading {
    body: Body,
    slot: Arc<crate::limits::Slot>,
}

impl http_body::Body for Uploading {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let r = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        self.slot.waiting_for_client(r.is_pending());
        if matches!(r, std::task::Poll::Ready(None)) {
            self.slot.establish();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The answer to a request body over `limit` bytes.
fn body_too_large(limit: usize) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
        &format!(
            "the request body is over {limit} bytes (serve.max_sql_bytes, plus {} for the \
             JSON around it)",
            QueryLimits::MESSAGE_OVERHEAD
        ),
    )
}

/// A response body that keeps its connection busy until it is sent (or dropped).
struct Answering {
    body: Body,
    busy: Option<crate::limits::Busy>,
    switch: Arc<crate::subscribe::Switch>,
}

impl Drop for Answering {
    /// The body ended (or was dropped): what it wrote may still wait in the server's
    /// buffers, so the connection stays busy until they are flushed.
    fn drop(&mut self) {
        if let Some(busy) = self.busy.take() {
            self.switch.drain(busy);
        }
    }
}

impl http_body::Body for Answering {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

/// Checks the bearer token (or the web console's session cookie on the console page's own
/// requests), counting wrong tokens of the client's address ([`crate::console::admit`]); the
/// response to send when the request may not go on.
pub(crate) fn refusal(
    state: &HttpState,
    headers: &HeaderMap,
    peer: IpAddr,
    usage: crate::console::Use,
) -> Option<Response> {
    match crate::console::admit(state, headers, peer, usage) {
        Ok(()) => None,
        Err(Refused::Locked(wait)) => Some(error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_failed_logins",
            &format!(
                "too many failed logins from {peer}; try again in {:.1} s",
                wait.as_secs_f64()
            ),
        )),
        Err(Refused::Unauthorized) => Some(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required (Authorization: Bearer <serve.token>)",
        )),
    }
}

/// The query of a request: `{"query": "..."}`, or the body itself as SQL text; else what is
/// wrong with the body.
fn query_text(headers: &HeaderMap, body: &[u8]) -> Result<String, BodyError> {
    let text = std::str::from_utf8(body).map_err(|_| BodyError::NotUtf8)?;
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
        || text.trim_start().starts_with('{');
    if !json {
        return Ok(text.to_string());
    }
    #[derive(serde::Deserialize)]
    struct Body {
        query: String,
    }
    serde_json::from_str::<Body>(text)
        .map(|b| b.query)
        .map_err(BodyError::NotQuery)
}

/// What is wrong with the body of a query request: the whole message the client gets (the
/// JSON parser's error included, so it is no source of its own).
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("the body is not UTF-8")]
    NotUtf8,
    #[error("the body must be {{\"query\": \"SELECT ...\"}} or SQL text: {0}")]
    NotQuery(serde_json::Error),
}

async fn sql(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(refused) = refusal(&state, &headers, peer.ip(), crate::console::Use::Post) {
        return refused;
    }
    let limit = state.engine.limits().max_message_bytes();
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        return body_too_large(limit);
    };
    let query = match query_text(&headers, &body) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    drop(body);
    let arrow = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(ARROW_STREAM));
    let local = headers
        .get(crate::peers::SCOPE_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "local");
    let (encoding, content_type) = if arrow {
        (Encoding::Arrow, ARROW_STREAM)
    } else {
        (Encoding::Json, "application/json")
    };
    match state.engine.answer(&query, None, encoding, local).await {
        Ok(Answer {
            body: Some(bytes), ..
        }) => ([(header::CONTENT_TYPE, content_type)], bytes).into_response(),
        Ok(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding",
            "the answer was not encoded",
        ),
        Err(e) => {
            let status = match e {
                QueryError::Busy(_)
                | QueryError::Rebalancing
                | QueryError::PartitionsMoving(_)
                | QueryError::Starting => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            error(status, e.code(), &e.to_string())
        }
    }
}

async fn health(State(state): State<Arc<HttpState>>) -> Response {
    let s = state.engine.live().current();
    let body = serde_json::json!({
        "status": "ok",
        "pipeline": state.engine.live().pipeline,
        "snapshot": s.seq,
        "finished": s.finished,
    });
    axum::Json(body).into_response()
}

/// 200 when the process is ready for traffic, else 503 with the reasons.
async fn ready(State(state): State<Arc<HttpState>>) -> Response {
    let reasons = state.metrics.not_ready(&state.engine);
    let body = serde_json::json!({ "ready": reasons.is_empty(), "reasons": reasons });
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// The metrics in the text format, or in OpenMetrics when `Accept` asks for it.
async fn metrics(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    match state.metrics.render(format) {
        Ok(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the metrics could not be encoded",
        ),
    }
}
