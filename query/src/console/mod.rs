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
//! address) and gets a session ([`sessions`]): a random id in the cookie `weir_console_<port>`
//! (`HttpOnly`, `SameSite=Strict`), kept by the server until it expires or the browser signs
//! out. The endpoints that take the bearer token take that cookie too, but only on requests
//! the browser marks as coming from the page itself (`Sec-Fetch-Site`, `Origin`; see
//! [`admit`]). Wrong tokens count as failed logins on every route.

pub mod dead_letters;
pub mod sessions;

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

use crate::http::HttpState;
use crate::logins::secret_matches;

const INDEX_HTML: &str = include_str!("../../console/index.html");
const APP_JS: &str = include_str!("../../console/app.js");
const APP_CSS: &str = include_str!("../../console/app.css");
const LOGIN_HTML: &str = include_str!("../../console/login.html");

/// The pipeline as a small graph, for the console's overview.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Graph {
    /// The sources, in the pipeline file's order.
    pub sources: Vec<GraphNode>,
    /// Windows and views, each reading one source.
    pub operators: Vec<GraphOperator>,
    /// The sinks (not the dead-letter output).
    pub sinks: Vec<GraphNode>,
}

/// A source or a sink.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GraphNode {
    /// Its name in the pipeline file.
    pub name: String,
    /// `file`, `generator`, `kafka`, `iceberg`, `elasticsearch`...
    pub kind: String,
    /// One line about it (no addresses or secrets).
    pub detail: String,
}

/// A window or a view.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GraphOperator {
    /// Its name in the pipeline file (and its SQL table's).
    pub name: String,
    /// `window` or `view`.
    pub kind: String,
    /// Its definition in one line (as `weir validate` prints it: key, window, aggregates).
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

/// How a route uses a request's credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// `GET /` and the script: a browser's navigation. Without any credential it gets the
    /// sign-in page.
    Page,
    /// Reads by the page's script or by a client: `GET /console/state`, `GET /subscribe`.
    Read,
    /// `POST /sql` and signing out: the cookie counts only when `Origin` or `Sec-Fetch-Site`
    /// marks the request as the page's own (a client without a browser sends the bearer token).
    Post,
}

/// Why a request may not go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Too many failed logins from the client's address: it must wait this long.
    Locked(std::time::Duration),
    /// No valid credential.
    Unauthorized,
}

/// The console cookie a request carries.
#[derive(Debug, PartialEq, Eq)]
enum Cookie {
    Absent,
    /// Sent by a request the browser does not mark as the page's own: not taken (another
    /// site's page, or a proxy that hides the address the browser used).
    Foreign,
    /// Unknown, expired or signed out (or from before a restart).
    Stale,
    /// A live session, with its id.
    Valid(String),
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// The first value of a header that proxies may give as a list.
fn first_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let v = headers.get(name)?.to_str().ok()?;
    v.split(',').next().map(str::trim).filter(|v| !v.is_empty())
}

/// Whether `Origin` names the address the browser used: `Host`, or behind a proxy that
/// rewrites `Host`, the first `X-Forwarded-Host`.
fn origin_matches(origin: &str, headers: &HeaderMap) -> bool {
    let Some((_, origin_host)) = origin.split_once("://") else {
        return false; // `null`
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    [host, first_value(headers, "x-forwarded-host")]
        .into_iter()
        .flatten()
        .any(|h| h.eq_ignore_ascii_case(origin_host))
}

/// Whether the browser marks the request as the console page's own, not another site's
/// (whose requests must not ride on the cookie). `Sec-Fetch-Site` must be `same-origin`
/// (or, for a page or a read, `none`: an address typed or bookmarked); an `Origin` must match
/// the address; a `POST` must carry at least one of the two. `Origin: null` says nothing (the
/// page's `no-referrer` policy makes the browser send it on its own form posts).
fn from_the_page(headers: &HeaderMap, usage: Use) -> bool {
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    match site {
        None | Some("same-origin") => {}
        Some("none") if usage != Use::Post => {}
        Some(_) => return false,
    }
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| *o != "null");
    match origin {
        Some(origin) => origin_matches(origin, headers),
        None => site.is_some() || usage != Use::Post,
    }
}

/// The value of the cookie `name`, if the request has it.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn cookie_of(state: &HttpState, headers: &HeaderMap, usage: Use) -> Cookie {
    let Some(id) = cookie_value(headers, state.sessions.cookie()) else {
        return Cookie::Absent;
    };
    if !from_the_page(headers, usage) {
        return Cookie::Foreign;
    }
    if state.sessions.check(id) {
        Cookie::Valid(id.to_string())
    } else {
        Cookie::Stale
    }
}

/// Whether a request may use a route that needs `serve.token`: the bearer token, or the
/// console's session cookie on a request of the page itself.
///
/// Failed logins are counted as on every endpoint: a wrong bearer token counts one for the
/// client's address, and an address that must wait is refused whatever it sends (even the
/// right token or a live session). What cannot be a guess counts nothing: a request without
/// any credential, a cookie a request of another site (or of a misconfigured proxy) carries,
/// or the cookie of a session that ended (its id is 256 random bits).
pub(crate) fn admit(
    state: &HttpState,
    headers: &HeaderMap,
    peer: IpAddr,
    usage: Use,
) -> Result<(), Refused> {
    let Some(token) = &state.token else {
        return Ok(());
    };
    let logins = &state.engine.logins;
    if let Some(given) = bearer(headers) {
        logins.check(peer).map_err(Refused::Locked)?;
        if secret_matches(given.as_bytes(), token.as_bytes()) {
            logins.succeeded(peer);
            return Ok(());
        }
        logins.failed(peer);
        return Err(Refused::Unauthorized);
    }
    match cookie_of(state, headers, usage) {
        // a session does not clear the address's failures: only the token itself does
        Cookie::Valid(_) => logins.check(peer).map_err(Refused::Locked),
        Cookie::Absent | Cookie::Foreign | Cookie::Stale => Err(Refused::Unauthorized),
    }
}

/// The `Set-Cookie` value of a new session `id`: `Secure` when the browser reached the
/// endpoint over HTTPS (a TLS proxy saying so with `X-Forwarded-Proto: https`).
fn session_cookie(name: &str, id: &str, headers: &HeaderMap) -> String {
    let https =
        first_value(headers, "x-forwarded-proto").is_some_and(|p| p.eq_ignore_ascii_case("https"));
    format!(
        "{name}={id}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{}",
        sessions::LIFETIME.as_secs(),
        if https { "; Secure" } else { "" }
    )
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

/// The wait of a locked-out address, for people.
fn wait_message(wait: std::time::Duration) -> String {
    format!(
        "Too many failed logins from this address; try again in {:.0} s.",
        wait.as_secs_f64().ceil()
    )
}

/// Checks a token typed into the login form or given as `?token=`: on success the answer
/// starts a session, sets its cookie and sends the browser to the console; else the login
/// page again.
fn try_token(
    state: &HttpState,
    peer: IpAddr,
    headers: &HeaderMap,
    given: &str,
    to: &'static str,
) -> Response {
    // the login page answers at `to`'s place: `/` or `/console/login`
    let root = if to == "./" { "" } else { "../" };
    let Some(token) = &state.token else {
        return redirect(to, None);
    };
    let logins = &state.engine.logins;
    if let Err(wait) = logins.check(peer) {
        return login_page(StatusCode::TOO_MANY_REQUESTS, &wait_message(wait), root);
    }
    if !secret_matches(given.as_bytes(), token.as_bytes()) {
        logins.failed(peer);
        return login_page(StatusCode::UNAUTHORIZED, "That token is not right.", root);
    }
    logins.succeeded(peer);
    let Some(id) = state.sessions.open() else {
        return login_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The operating system gave no random bytes for a session; try again.",
            root,
        );
    };
    redirect(
        to,
        Some(session_cookie(state.sessions.cookie(), &id, headers)),
    )
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
        return try_token(&state, peer.ip(), &headers, given, "./");
    }
    match admit(&state, &headers, peer.ip(), Use::Page) {
        Ok(()) => {
            let title = escape_html(&state.engine.live().pipeline);
            html(StatusCode::OK, INDEX_HTML.replace("{{pipeline}}", &title))
        }
        Err(Refused::Locked(wait)) => {
            login_page(StatusCode::TOO_MANY_REQUESTS, &wait_message(wait), "")
        }
        Err(Refused::Unauthorized) => login_page(StatusCode::UNAUTHORIZED, "", ""),
    }
}

/// `POST /console/login` with the form's `token`.
async fn login(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
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
    try_token(&state, peer.ip(), &headers, &token, "../")
}

/// `POST /console/logout`: ends the session and deletes the cookie (when the request is the
/// page's own: another site cannot sign a browser out).
async fn logout(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    let clear = match cookie_of(&state, &headers, Use::Post) {
        Cookie::Valid(id) => {
            state.sessions.close(&id);
            true
        }
        Cookie::Stale => true,
        Cookie::Absent | Cookie::Foreign => false,
    };
    let name = state.sessions.cookie();
    redirect(
        "../",
        clear.then(|| format!("{name}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict")),
    )
}

/// An asset, to a signed-in browser only.
fn asset(
    state: &HttpState,
    peer: IpAddr,
    headers: &HeaderMap,
    body: &'static str,
    kind: &'static str,
) -> Response {
    let text = "text/plain; charset=utf-8";
    match admit(state, headers, peer, Use::Page) {
        Ok(()) => guarded((StatusCode::OK, body).into_response(), kind),
        Err(Refused::Locked(wait)) => guarded(
            (StatusCode::TOO_MANY_REQUESTS, wait_message(wait)).into_response(),
            text,
        ),
        Err(Refused::Unauthorized) => guarded(
            (StatusCode::UNAUTHORIZED, "sign in first").into_response(),
            text,
        ),
    }
}

async fn app_js(
    State(state): State<Arc<HttpState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    asset(
        &state,
        peer.ip(),
        &headers,
        APP_JS,
        "text/javascript; charset=utf-8",
    )
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
    if let Some(refused) = crate::http::refusal(&state, &headers, peer.ip(), Use::Read) {
        return guarded(refused, "application/json");
    }
    let engine = &state.engine;
    let live = engine.live();
    let snap = live.current();
    let stats = &*state.metrics.stats.get();
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
    guarded(axum::Json(body).into_response(), "application/json")
}

#[cfg(test)]
mod tests;
