//! The web console (`GET /`): a read-only page over the HTTP endpoint's own data.
//!
//! The page is plain HTML, CSS and JavaScript embedded in the binary (`query/console/`), with
//! no build step and nothing fetched from elsewhere. It reads what any client can read:
//! `POST /sql` (windows, views, `weir_status`, `weir_dead_letters`), `GET /subscribe` (open
//! windows as they change), `GET /ready`, and one endpoint of its own, `GET /console/state`
//! (the pipeline's graph, live counters, checkpoint figures, limits and table columns).
//!
//! Access: with `serve.token` set, every console route needs the token, as `/sql` does. A
//! browser gives it once (the login form, or `/?token=...` which is then taken out of the
//! address) and gets a cookie: `HttpOnly`, `SameSite=Strict`, holding a digest of the token,
//! never the token. The endpoints that take the bearer token take that cookie too, but only
//! on requests the browser marks as coming from the page itself (`Sec-Fetch-Site` and `Origin`).

pub mod dead_letters;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::http::HttpState;
use crate::logins::secret_matches;

/// The cookie a browser keeps after giving the token.
pub const COOKIE: &str = "weir_console";

const INDEX_HTML: &str = include_str!("../../console/index.html");
const APP_JS: &str = include_str!("../../console/app.js");
const APP_CSS: &str = include_str!("../../console/app.css");
const LOGIN_HTML: &str = include_str!("../../console/login.html");

/// The pipeline as a small graph, for the console's overview.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Graph {
    pub sources: Vec<GraphNode>,
    /// Windows and views, each reading one source.
    pub operators: Vec<GraphOperator>,
    pub sinks: Vec<GraphNode>,
}

/// A source or a sink.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GraphNode {
    pub name: String,
    /// `file`, `generator`, `kafka`, `iceberg`, `elasticsearch`...
    pub kind: String,
    /// One line about it (no addresses or secrets).
    pub detail: String,
}

/// A window or a view.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GraphOperator {
    pub name: String,
    /// `window` or `view`.
    pub kind: String,
    pub detail: String,
    /// The source it reads.
    pub from: String,
    /// The sinks it writes.
    pub sinks: Vec<String>,
}

/// The console's routes (merged into the HTTP endpoint's router).
pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/", get(page))
        .route("/console/login", post(login))
        .route("/console/logout", post(logout))
        .route("/console/state", get(state_json))
        .route("/console/app.js", get(app_js))
        .route("/console/app.css", get(app_css))
}

/// The cookie's value for `token`: a digest, so the cookie is not the token itself.
fn cookie_value(token: &str) -> String {
    let digest = Sha256::digest(format!("weir-console-v1\0{token}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The console cookie of a request, when the browser says the request comes from a page of
/// the endpoint itself (not from another site, whose requests must not ride on the cookie).
fn same_origin_cookie(headers: &HeaderMap) -> Option<String> {
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if site.is_some_and(|s| s != "same-origin" && s != "none") {
        return None;
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok())?;
        let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
        if !origin_host.eq_ignore_ascii_case(host) {
            return None;
        }
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// Whether the request's console cookie matches `token` (`None`: it has none usable).
pub(crate) fn cookie_matches(headers: &HeaderMap, token: &str) -> Option<bool> {
    let given = same_origin_cookie(headers)?;
    Some(secret_matches(
        given.as_bytes(),
        cookie_value(token).as_bytes(),
    ))
}

/// Headers of every console answer: nothing cached, no framing, no script but its own.
fn guarded(mut r: Response, content_type: &'static str) -> Response {
    let h = r.headers_mut();
    let set = |h: &mut HeaderMap, k: header::HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(h, header::CONTENT_TYPE, content_type);
    set(h, header::CACHE_CONTROL, "no-store");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    r
}

fn html(status: StatusCode, body: String) -> Response {
    guarded((status, body).into_response(), "text/html; charset=utf-8")
}

/// The login page, with a message; `root` leads from the page's address to `/` (relative
/// links keep a proxy's path prefix).
fn login_page(status: StatusCode, message: &str, root: &str) -> Response {
    html(
        status,
        LOGIN_HTML
            .replace("{{root}}", root)
            .replace("{{message}}", &escape_html(message)),
    )
}

/// `text` safe inside HTML text and attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Whether the request may see the console: no token set, or the bearer token, or the cookie.
fn signed_in(state: &HttpState, headers: &HeaderMap) -> bool {
    let Some(token) = &state.token else {
        return true;
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match bearer {
        Some(b) => secret_matches(b.as_bytes(), token.as_bytes()),
        None => cookie_matches(headers, token) == Some(true),
    }
}

/// Checks a token typed into the login form or given as `?token=`: on success the answer
/// sets the cookie and sends the browser to the console; else the login page again.
fn try_token(state: &HttpState, peer: IpAddr, given: &str, to: &'static str) -> Response {
    // the login page answers at `to`'s place: `/` or `/console/login`
    let root = if to == "./" { "" } else { "../" };
    let Some(token) = &state.token else {
        return redirect(to, None);
    };
    let logins = &state.engine.logins;
    if let Err(wait) = logins.check(peer) {
        return login_page(
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "Too many failed logins from this address; try again in {:.0} s.",
                wait.as_secs_f64().ceil()
            ),
            root,
        );
    }
    if !secret_matches(given.as_bytes(), token.as_bytes()) {
        logins.failed(peer);
        return login_page(StatusCode::UNAUTHORIZED, "That token is not right.", root);
    }
    logins.succeeded(peer);
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
        cookie_value(token)
    );
    redirect(to, Some(cookie))
}

/// 303 to `to` (relative, so a proxy's path prefix is kept), setting `cookie`.
fn redirect(to: &'static str, cookie: Option<String>) -> Response {
    let mut r = (StatusCode::SEE_OTHER, "").into_response();
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    guarded(r, "text/plain; charset=utf-8")
}

/// `GET /`: the console, or (token set, none given) the login page.
async fn page(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    if let Some((_, given)) = params.iter().find(|(k, _)| k == "token") {
        // the token leaves the address bar (and the history entry) at once
        return try_token(&state, peer.ip(), given, "./");
    }
    if !signed_in(&state, &headers) {
        return login_page(StatusCode::UNAUTHORIZED, "", "");
    }
    let title = escape_html(&state.engine.live().pipeline);
    html(StatusCode::OK, INDEX_HTML.replace("{{pipeline}}", &title))
}

/// `POST /console/login` with the form's `token`.
async fn login(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Body,
) -> Response {
    let Ok(body) = axum::body::to_bytes(body, 64 * 1024).await else {
        return login_page(
            StatusCode::PAYLOAD_TOO_LARGE,
            "The form is too large.",
            "../",
        );
    };
    let token = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    try_token(&state, peer.ip(), &token, "../")
}

/// `POST /console/logout`: forgets the cookie.
async fn logout() -> Response {
    redirect(
        "../",
        Some(format!(
            "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        )),
    )
}

/// An asset, to a signed-in browser only.
fn asset(
    state: &HttpState,
    headers: &HeaderMap,
    body: &'static str,
    kind: &'static str,
) -> Response {
    if !signed_in(state, headers) {
        return guarded(
            (StatusCode::UNAUTHORIZED, "sign in first").into_response(),
            "text/plain; charset=utf-8",
        );
    }
    guarded((StatusCode::OK, body).into_response(), kind)
}

async fn app_js(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    asset(&state, &headers, APP_JS, "text/javascript; charset=utf-8")
}

/// The style sheet holds no data: the login page uses it too.
async fn app_css() -> Response {
    guarded(
        (StatusCode::OK, APP_CSS).into_response(),
        "text/css; charset=utf-8",
    )
}

fn columns_of(schema: &arrow::datatypes::Schema) -> Vec<serde_json::Value> {
    schema
        .fields()
        .iter()
        .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
        .collect()
}

/// `GET /console/state`: what the console shows that no table holds.
async fn state_json(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = crate::http::refusal(&state, &headers, peer.ip()) {
        return refused;
    }
    let engine = &state.engine;
    let live = engine.live();
    let snap = live.current();
    let stats = &state.metrics.stats;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let now = weir_engine::time::now_ms();
    let c = &stats.checkpoints;
    let completed = get(&c.completed);
    let checkpoint = json!({
        "enabled": get(&c.interval_ms) > 0,
        "interval_ms": get(&c.interval_ms),
        "completed": completed,
        "epoch": (completed > 0).then(|| get(&c.last_epoch)),
        "age_ms": (completed > 0).then(|| (now - get(&c.last_completed_ms) as i64).max(0)),
        "bytes": (completed > 0).then(|| get(&c.last_bytes)),
        "rows": (completed > 0).then(|| get(&c.last_rows)),
        "duration_ms": (completed > 0).then(|| get(&c.last_duration_ms)),
    });
    let mut tables: Vec<serde_json::Value> = live
        .tables
        .iter()
        .map(|t| {
            let kind = match t.kind {
                weir_engine::live::LiveKind::Window { .. } => "window",
                weir_engine::live::LiveKind::View => "view",
            };
            json!({"name": t.name, "kind": kind, "keys": t.keys, "columns": columns_of(&t.schema)})
        })
        .collect();
    let status = crate::tables::StatusTable::new(live.clone(), None);
    tables.push(json!({
        "name": "weir_status", "kind": "status", "keys": [],
        "columns": columns_of(&datafusion::datasource::TableProvider::schema(&status)),
    }));
    tables.push(json!({
        "name": dead_letters::TABLE, "kind": "dead_letters", "keys": [],
        "columns": columns_of(&dead_letters::schema()),
    }));
    let partitions: Vec<serde_json::Value> = snap
        .partitions
        .iter()
        .filter(|p| live.owns(&p.source, &p.partition))
        .map(|p| {
            json!({"source": p.source, "partition": p.partition, "idle": p.idle, "ended": p.ended})
        })
        .collect();
    // per source, from the snapshot's counters (`weir_status` repeats the run's totals)
    let sources: serde_json::Map<String, serde_json::Value> = stats
        .sources
        .iter()
        .map(|s| {
            let at = |what: &str| snap.counters.get(&format!("{what}/{}", s.name)).copied();
            (
                s.name.clone(),
                json!({"records_in": at("records_in"), "bad": at("bad")}),
            )
        })
        .collect();
    let peers: Vec<serde_json::Value> = state
        .peers
        .as_ref()
        .map(|p| {
            p.members()
                .into_iter()
                .map(|(worker, address)| json!({"worker": worker, "address": address}))
                .collect()
        })
        .unwrap_or_default();
    let limits = engine.limits();
    let body = json!({
        "pipeline": live.pipeline,
        "worker": live.worker(),
        "peers": peers,
        "graph": state.graph,
        "now_ms": now,
        "started_ms": get(&stats.started_ms),
        "counters": {
            "records_in": get(&stats.records_in),
            "bad": get(&stats.bad),
            "late": stats.late_total(),
            "dead_letters": get(&stats.dead_letters),
            "windows_emitted": stats.windows_total(),
        },
        "snapshot": {"seq": snap.seq, "taken_ms": snap.taken_ms, "finished": snap.finished},
        "partitions": partitions,
        "sources": sources,
        "checkpoint": checkpoint,
        "limits": {
            "max_result_rows": limits.max_result_rows,
            "max_result_bytes": limits.max_result_bytes,
            "max_sql_bytes": limits.max_sql_bytes,
            "timeout_ms": limits.timeout.as_millis() as u64,
            "max_queries": limits.max_concurrent,
        },
        "dead_letters_kept": weir_engine::dead_letter::RecentDeadLetters::CAPACITY,
        "dead_letter_raw_bytes": weir_engine::dead_letter::RecentDeadLetters::RAW_BYTES,
        "tables": tables,
        "token": state.token.is_some(),
    });
    let mut r = axum::Json(body).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn console_cookie_counts_only_from_the_page_itself() {
        let good = format!("a=1; {COOKIE}={}", cookie_value("s3cret"));
        let h = headers(&[("cookie", &good), ("host", "127.0.0.1:8080")]);
        assert_eq!(cookie_matches(&h, "s3cret"), Some(true));
        assert_eq!(cookie_matches(&h, "other"), Some(false));
        let same = headers(&[
            ("cookie", &good),
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(cookie_matches(&same, "s3cret"), Some(true));
        let cross = headers(&[
            ("cookie", &good),
            ("host", "127.0.0.1:8080"),
            ("sec-fetch-site", "cross-site"),
        ]);
        assert_eq!(cookie_matches(&cross, "s3cret"), None);
        let other_origin = headers(&[
            ("cookie", &good),
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example"),
        ]);
        assert_eq!(cookie_matches(&other_origin, "s3cret"), None);
        // the cookie is a digest: the token itself does not pass as the cookie
        let raw = headers(&[("cookie", "weir_console=s3cret"), ("host", "h")]);
        assert_eq!(cookie_matches(&raw, "s3cret"), Some(false));
    }

    #[test]
    fn console_escapes_html() {
        assert_eq!(
            escape_html(r#"<img src=x onerror="a('b')">&"#),
            "&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;"
        );
    }
}
