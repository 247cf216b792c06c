//! The HTTP endpoint: `POST /sql` (JSON rows, or an Arrow IPC stream on request),
//! `GET /health` (live), `GET /ready` (ready for traffic), `GET /metrics` (Prometheus text).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::engine::{QueryEngine, QueryError, QueryResult};
use crate::metrics::Metrics;

/// The media type of Arrow IPC streams.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// What the handlers share.
pub struct HttpState {
    pub engine: Arc<QueryEngine>,
    pub token: Option<String>,
    pub metrics: Arc<Metrics>,
}

/// The routes.
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/sql", post(sql))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

fn authorized(state: &HttpState, headers: &HeaderMap) -> bool {
    let Some(token) = &state.token else {
        return true;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // compare in constant time over the expected token's length
    match given {
        Some(g) if g.len() == token.len() => {
            g.bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
        }
        _ => false,
    }
}

/// The query of a request: `{"query": "..."}`, or the body itself as SQL text; else what is
/// wrong with the body.
fn query_text(headers: &HeaderMap, body: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_string())?;
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
        .map_err(|e| format!("the body must be {{\"query\": \"SELECT ...\"}} or SQL text: {e}"))
}

async fn sql(State(state): State<Arc<HttpState>>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&state, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required (Authorization: Bearer <serve.token>)",
        );
    }
    let query = match query_text(&headers, &body) {
        Ok(q) => q,
        Err(m) => return error(StatusCode::BAD_REQUEST, "bad_request", &m),
    };
    let arrow = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains(ARROW_STREAM));
    let local = headers
        .get(crate::peers::SCOPE_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "local");
    let answer = if local {
        state.engine.query_local(&query).await
    } else {
        state.engine.query(&query).await
    };
    match answer {
        Ok(result) => {
            let encoded = if arrow {
                arrow_stream(&result).map(|b| (ARROW_STREAM, b))
            } else {
                json_rows(&result).map(|b| ("application/json", b))
            };
            match encoded {
                Ok((ct, bytes)) => ([(header::CONTENT_TYPE, ct)], bytes).into_response(),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "encoding", &e),
            }
        }
        Err(e) => {
            let status = match e {
                QueryError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            error(status, e.code(), &e.to_string())
        }
    }
}

/// Rows as a JSON array of objects (nulls kept as `null`).
pub fn json_rows(result: &QueryResult) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    {
        let mut w = arrow_json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow_json::writer::JsonArray>(&mut out);
        for b in &result.batches {
            w.write(b).map_err(|e| e.to_string())?;
        }
        w.finish().map_err(|e| e.to_string())?;
    }
    if out.is_empty() {
        out.extend_from_slice(b"[]");
    }
    Ok(out)
}

/// Rows as an Arrow IPC stream.
pub fn arrow_stream(result: &QueryResult) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &result.schema)
            .map_err(|e| e.to_string())?;
        for b in &result.batches {
            w.write(b).map_err(|e| e.to_string())?;
        }
        w.finish().map_err(|e| e.to_string())?;
    }
    Ok(out)
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

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(&state.engine),
    )
        .into_response()
}
