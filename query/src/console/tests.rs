//! The console's access rules, on its handlers: rate-limited tokens, sessions, proxies.

use std::time::Duration;

use weir_engine::live::LiveState;
use weir_engine::stats::RunStats;

use super::*;
use crate::engine::QueryEngine;
use crate::limits::QueryLimits;
use crate::metrics::{Format, Metrics};

const TOKEN: &str = "s3cret-console-token";
const HOST: &str = "127.0.0.1:8080";

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static(HOST));
    for (k, v) in pairs {
        h.append(
            header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

/// An endpoint with `TOKEN`, locking an address out after 3 wrong tokens.
fn endpoint() -> Arc<HttpState> {
    let live = Arc::new(LiveState::new("console-unit", vec![]));
    let stats = Arc::new(RunStats::new(&[], &[], &[]));
    let limits = QueryLimits {
        max_failed_logins: 3,
        max_lockout: Duration::from_secs(60),
        ..QueryLimits::default()
    };
    let engine = Arc::new(
        QueryEngine::new(live, limits.clone())
            .unwrap()
            .with_dead_letters(stats.clone(), None)
            .unwrap(),
    );
    Arc::new(HttpState {
        engine: engine.clone(),
        token: Some(TOKEN.into()),
        metrics: Arc::new(Metrics::new(stats, engine.clone())),
        subscriptions: crate::subscribe::Hub::new(engine, limits.subscribe.clone()),
        graph: Graph::default(),
        peers: None,
        sessions: sessions::Sessions::new(8080),
    })
}

fn peer(n: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, n], 40000))
}

async fn get_page(st: &Arc<HttpState>, from: u8, h: HeaderMap, query: &[(&str, &str)]) -> Response {
    let q = query
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    page(State(st.clone()), ConnectInfo(peer(from)), h, Query(q)).await
}

async fn get_js(st: &Arc<HttpState>, from: u8, h: HeaderMap) -> Response {
    app_js(State(st.clone()), ConnectInfo(peer(from)), h).await
}

async fn get_state(st: &Arc<HttpState>, from: u8, h: HeaderMap) -> Response {
    state_json(State(st.clone()), ConnectInfo(peer(from)), h).await
}

fn failures_metric(st: &HttpState) -> u64 {
    let text = st.metrics.render(Format::Text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("weir_login_failures_total{pipeline=\"console-unit\"} "))
        .unwrap_or_else(|| panic!("no weir_login_failures_total in {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Signs in with the form from `from`; the `Set-Cookie` header.
async fn sign_in(st: &Arc<HttpState>, from: u8, extra: &[(&str, &str)]) -> String {
    let body = Body::from(format!("token={TOKEN}"));
    let r = login(
        State(st.clone()),
        ConnectInfo(peer(from)),
        headers(extra),
        body,
    )
    .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    r.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string()
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

#[tokio::test]
async fn guessing_the_token_on_the_page_and_the_script_is_counted_and_locked_out() {
    let st = endpoint();
    // a browser's first visits carry nothing: the sign-in page, nothing counted
    for _ in 0..10 {
        let r = get_page(&st, 1, headers(&[]), &[]).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(get_js(&st, 1, headers(&[])).await.status(), 401);
    }
    assert_eq!(failures_metric(&st), 0);
    // wrong bearer tokens on `/` and on the script count, as on `/sql`
    let wrong = headers(&[("authorization", "Bearer guess")]);
    assert_eq!(get_page(&st, 1, wrong.clone(), &[]).await.status(), 401);
    assert_eq!(get_js(&st, 1, wrong.clone()).await.status(), 401);
    assert_eq!(get_page(&st, 1, wrong.clone(), &[]).await.status(), 401);
    assert_eq!(failures_metric(&st), 3);
    // locked out: even the right token is refused, on every route, unchecked
    let right = headers(&[("authorization", &format!("Bearer {TOKEN}"))]);
    assert_eq!(get_page(&st, 1, right.clone(), &[]).await.status(), 429);
    assert_eq!(get_js(&st, 1, right.clone()).await.status(), 429);
    assert_eq!(get_state(&st, 1, right.clone()).await.status(), 429);
    assert_eq!(
        get_page(&st, 1, headers(&[]), &[("token", TOKEN)])
            .await
            .status(),
        429
    );
    assert_eq!(get_js(&st, 1, wrong.clone()).await.status(), 429);
    assert_eq!(failures_metric(&st), 3, "refused unchecked, not counted");
    // another address is not affected, and the right token clears it
    assert_eq!(get_js(&st, 2, right.clone()).await.status(), 200);
    assert_eq!(get_page(&st, 2, right, &[]).await.status(), 200);
}

#[tokio::test]
async fn the_cookie_is_a_random_revocable_session() {
    let st = endpoint();
    let set = sign_in(&st, 1, &[]).await;
    let name = "weir_console_8080=";
    assert!(set.starts_with(name), "{set}");
    for part in ["Path=/", "Max-Age=604800", "HttpOnly", "SameSite=Strict"] {
        assert!(set.contains(part), "{part}: {set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    let cookie = cookie_pair(&set);
    let id = &cookie[name.len()..];
    assert_eq!(id.len(), 64);
    assert!(!set.contains(TOKEN));
    // another sign-in gives another id
    assert_ne!(cookie_pair(&sign_in(&st, 1, &[]).await), cookie);
    // behind a TLS proxy the cookie is Secure
    let tls = sign_in(&st, 1, &[("x-forwarded-proto", "https")]).await;
    assert!(tls.ends_with("; Secure"), "{tls}");
    assert_eq!(st.sessions.len(), 3);

    let with = |extra: &[(&str, &str)]| {
        let mut h = headers(extra);
        h.append(header::COOKIE, HeaderValue::from_str(&cookie).unwrap());
        h
    };
    assert_eq!(get_page(&st, 1, with(&[]), &[]).await.status(), 200);
    assert_eq!(get_js(&st, 1, with(&[])).await.status(), 200);
    let own = [("sec-fetch-site", "same-origin")];
    assert_eq!(get_state(&st, 1, with(&own)).await.status(), 200);
    // a POST carrying only the cookie needs the browser's marks (a client sends the token)
    let post = |h: &HeaderMap| crate::http::refusal(&st, h, peer(1).ip(), Use::Post);
    assert_eq!(post(&with(&[])).unwrap().status(), 401);
    assert!(post(&with(&own)).is_none());
    assert!(post(&with(&[("origin", "http://127.0.0.1:8080")])).is_none());
    // `Origin: null` (a form post under `no-referrer`) says nothing either way
    assert_eq!(post(&with(&[("origin", "null")])).unwrap().status(), 401);
    assert!(post(&with(&[
        ("origin", "null"),
        ("sec-fetch-site", "same-origin")
    ]))
    .is_none());
    assert_eq!(
        post(&with(&[("sec-fetch-site", "none")])).unwrap().status(),
        401
    );
    // a digest of the token, or the token itself, is no session
    for fake in [TOKEN.to_string(), "0".repeat(64)] {
        let mut h = headers(&[]);
        let v = format!("weir_console_8080={fake}");
        h.insert(header::COOKIE, HeaderValue::from_str(&v).unwrap());
        assert_eq!(get_page(&st, 1, h, &[]).await.status(), 401);
    }
    // signing out ends the session on the server: the cookie is worth nothing after
    let r = logout(State(st.clone()), with(&own)).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cleared = r.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cleared.starts_with("weir_console_8080=;") && cleared.contains("Max-Age=0"));
    assert_eq!(st.sessions.len(), 2);
    assert_eq!(get_page(&st, 1, with(&[]), &[]).await.status(), 401);
    assert_eq!(get_state(&st, 1, with(&own)).await.status(), 401);
    assert_eq!(failures_metric(&st), 0, "a stale session is not a guess");
}

#[tokio::test]
async fn cookies_of_other_sites_are_refused_without_counting() {
    let st = endpoint();
    let cookie = cookie_pair(&sign_in(&st, 1, &[]).await);
    let with = |extra: &[(&str, &str)]| {
        let mut h = headers(extra);
        h.append(header::COOKIE, HeaderValue::from_str(&cookie).unwrap());
        h
    };
    for hostile in [
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site")],
        vec![("origin", "http://evil.example")],
        vec![("origin", "null"), ("sec-fetch-site", "cross-site")],
        vec![
            ("sec-fetch-site", "same-origin"),
            ("origin", "http://127.0.0.1:8080.evil.example"),
        ],
    ] {
        for _ in 0..5 {
            assert_eq!(get_state(&st, 1, with(&hostile)).await.status(), 401);
            assert_eq!(get_page(&st, 1, with(&hostile), &[]).await.status(), 401);
        }
    }
    assert_eq!(failures_metric(&st), 0);
    let own = [("sec-fetch-site", "same-origin")];
    assert_eq!(get_state(&st, 1, with(&own)).await.status(), 200);
    // logging out from another site does nothing
    let r = logout(
        State(st.clone()),
        with(&[("origin", "http://evil.example")]),
    )
    .await;
    assert!(r.headers().get(header::SET_COOKIE).is_none());
    assert_eq!(st.sessions.len(), 1);
}

#[tokio::test]
async fn behind_a_proxy_that_rewrites_host_the_forwarded_host_is_the_origin() {
    let st = endpoint();
    let cookie = cookie_pair(&sign_in(&st, 1, &[]).await);
    // the proxy connects to 127.0.0.1:8080 (`Host`), the browser used weir.example.com
    let from_proxy = |forwarded: Option<&str>| {
        let mut h = headers(&[
            ("origin", "https://weir.example.com"),
            ("sec-fetch-site", "same-origin"),
            ("x-forwarded-proto", "https"),
        ]);
        if let Some(f) = forwarded {
            h.insert("x-forwarded-host", HeaderValue::from_str(f).unwrap());
        }
        h.append(header::COOKIE, HeaderValue::from_str(&cookie).unwrap());
        h
    };
    let post = |h: &HeaderMap| crate::http::refusal(&st, h, peer(1).ip(), Use::Post);
    assert!(post(&from_proxy(Some("weir.example.com"))).is_none());
    assert!(post(&from_proxy(Some("WEIR.example.com, 10.0.0.1:8080"))).is_none());
    assert_eq!(
        get_state(&st, 1, from_proxy(Some("weir.example.com")))
            .await
            .status(),
        200
    );
    // a proxy that forwards neither: refused, but never counted (no lock-out of the proxy)
    for _ in 0..20 {
        assert_eq!(post(&from_proxy(None)).unwrap().status(), 401);
        assert_eq!(get_state(&st, 1, from_proxy(None)).await.status(), 401);
    }
    assert_eq!(failures_metric(&st), 0);
    assert_eq!(
        get_state(&st, 1, from_proxy(Some("weir.example.com")))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn the_state_carries_the_pages_security_headers() {
    let st = endpoint();
    let right = headers(&[("authorization", &format!("Bearer {TOKEN}"))]);
    for r in [
        get_state(&st, 1, right).await,
        get_state(&st, 1, headers(&[])).await,
    ] {
        let h = r.headers();
        assert!(h[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("default-src 'none'"));
        assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
    }
}

#[test]
fn console_escapes_html() {
    assert_eq!(
        escape_html(r#"<img src=x onerror="a('b')">&"#),
        "&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;"
    );
}
