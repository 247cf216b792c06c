//! The web console (`GET /`) on a running `weir run`, in a real browser: headless Chromium
//! (Debian's `chromium` and `chromium-driver`) driven by Selenium from the tests' venv
//! (`tests/console/browser.py`), with axe-core (vendored in `tests/console/axe/`) injected for
//! an accessibility check. Raw HTTP checks the token flow around it.
//!
//! Screenshots go to `$CARGO_TARGET_TMPDIR/console-screenshots` (printed).

#[path = "support/crash.rs"]
mod crash;
#[path = "support/sql.rs"]
mod sql_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crash::venv_python;
use sql_support::{free_port, http, Running};

const TOKEN: &str = "console-test-token";

fn weir() -> String {
    std::env::var("WEIR_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_weir").to_string())
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A key and a bad line that would run as code if the page put data in as HTML.
const HOSTILE_KEY: &str = r#"<img src=x onerror="window.__pwned=1">"#;
const HOSTILE_RAW: &str = "<script>window.__pwned=1</script>";

/// Windows beside `health_win`: six in all, more event streams than a browser opens to one
/// host at once (the page follows at most three live).
const MORE_WINDOWS: [&str; 5] = ["win_b", "win_c", "win_d", "win_e", "win_f"];

/// A generator that keeps producing (a count that changes, open windows) and a file with a
/// hostile key and a bad line (a dead letter), with a token and checkpoints.
fn pipeline(dir: &Path, port: u16, token: Option<&str>) -> PathBuf {
    let key = serde_json::to_string(HOSTILE_KEY).unwrap();
    let lines = [
        r#"{"eventId":"a1","timestamp":1764000000000,"serviceName":"api","namespace":"prod","healthStatus":"HEALTHY","latencyMs":12,"errorRate":0.01,"message":null}"#.to_string(),
        format!(r#"{{"eventId":"a2","timestamp":1764000001000,"serviceName":{key},"namespace":"prod","healthStatus":"DEGRADED","latencyMs":40,"errorRate":0.2,"message":"m"}}"#),
        format!("not json {HOSTILE_RAW}"),
    ];
    std::fs::write(dir.join("events.ndjson"), lines.join("\n") + "\n").unwrap();
    let yaml = format!(
        r#"name: console-test
sources:
  health:
    generator: {{ kind: service-health, seed: 5, events_per_second: 300, keys: 40 }}
    event_time: {{ field: timestamp, max_out_of_orderness: 1s }}
  files:
    schema: service-health
    file: {{ path: events.ndjson }}
    event_time: {{ field: timestamp }}
views:
  service_status:
    from: health
    key: [serviceName]
    aggregates:
      status: last_value(healthStatus ORDER BY timestamp)
      checks: count(*)
  file_services:
    from: files
    key: [serviceName]
    aggregates:
      checks: count(*)
windows:
  health_win:
    from: health
    key: [namespace]
    tumbling: 2s
    retain: 1h
    aggregates:
      checks: count(*)
    sinks: [out]
{more}sinks:
  out: {{ file: {{ path: out/windows.ndjson }} }}
dead_letter: {{ file: {{ path: out/dead.ndjson }} }}
checkpoint: {{ dir: checkpoints, interval: 2s }}
serve: {{ http: "127.0.0.1:{port}", refresh: 300ms{token} }}
"#,
        token = token.map_or(String::new(), |t| format!(", token: \"{t}\"")),
        more = MORE_WINDOWS
            .iter()
            .map(|w| {
                format!(
                    "  {w}:\n    from: health\n    key: [serviceName]\n    tumbling: 3s\n    \
                     aggregates:\n      checks: count(*)\n"
                )
            })
            .collect::<String>()
    );
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// One request, returning the status, the head and the body.
fn raw(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

/// Without the token nothing of the pipeline is served; `?token=` gives the cookie, which
/// the page's own requests may use and other sites' may not.
fn token_flow(port: u16) -> String {
    let (status, _, body) = raw(port, "/", &[]);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("name=\"token\""), "no sign-in form: {body}");
    assert!(
        !body.contains("console-test"),
        "the pipeline's name leaked: {body}"
    );
    let (status, _, _) = raw(port, "/console/app.js", &[]);
    assert_eq!(status, 401, "the script without the token");
    let state = http(port, "GET", "/console/state", &[], b"");
    assert_eq!(state.status, 401);
    assert_eq!(state.json()["error"]["code"], "unauthorized");
    let (status, _, _) = raw(port, "/?token=wrong", &[]);
    assert_eq!(status, 401);
    // the right token: a redirect out of the address, and a cookie that is not the token
    let (status, head, _) = raw(port, &format!("/?token={TOKEN}"), &[]);
    assert_eq!(status, 303, "{head}");
    assert_eq!(header(&head, "location"), Some("./"));
    let set = header(&head, "set-cookie").expect("a cookie").to_string();
    assert!(
        set.starts_with(&format!("weir_console_{port}="))
            && set.contains("HttpOnly")
            && set.contains("SameSite=Strict")
            && set.contains("Max-Age="),
        "{set}"
    );
    assert!(!set.contains(TOKEN), "the cookie holds the token: {set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let (status, head, body) = raw(port, "/", &[("Cookie", &cookie)]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("console-test"));
    let csp = header(&head, "content-security-policy").unwrap_or_default();
    assert!(csp.contains("script-src 'self'"), "{head}");
    // the cookie opens /sql for the page itself, not for another site's page
    let q = br#"{"query": "SELECT count(*) AS n FROM weir_status"}"#;
    let own = http(
        port,
        "POST",
        "/sql",
        &[("Cookie", &cookie), ("Sec-Fetch-Site", "same-origin")],
        q,
    );
    assert_eq!(own.status, 200, "{}", String::from_utf8_lossy(&own.body));
    let cross = http(
        port,
        "POST",
        "/sql",
        &[("Cookie", &cookie), ("Sec-Fetch-Site", "cross-site")],
        q,
    );
    assert_eq!(cross.status, 401);
    // the bearer token still works alone, and clears the failures counted above
    let bearer = format!("Bearer {TOKEN}");
    let state = http(
        port,
        "GET",
        "/console/state",
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(state.status, 200);
    let state = state.json();
    assert_eq!(state["pipeline"], "console-test");
    assert_eq!(
        state["graph"]["operators"].as_array().unwrap().len(),
        3 + MORE_WINDOWS.len()
    );
    // a POST carrying only the cookie, without the browser's marks, is refused (a client
    // without a browser sends the token)
    let bare = http(port, "POST", "/sql", &[("Cookie", &cookie)], q);
    assert_eq!(bare.status, 401);
    // behind a proxy that rewrites Host, the address the browser used is X-Forwarded-Host
    let proxied = http(
        port,
        "POST",
        "/sql",
        &[
            ("Cookie", &cookie),
            ("Origin", "https://weir.example.com"),
            ("X-Forwarded-Host", "weir.example.com"),
        ],
        q,
    );
    assert_eq!(proxied.status, 200);
    // signing out ends the session on the server: the same cookie is refused afterwards
    let origin = format!("http://127.0.0.1:{port}");
    let out = http(
        port,
        "POST",
        "/console/logout",
        &[("Cookie", &cookie), ("Origin", &origin)],
        b"",
    );
    assert_eq!(out.status, 303);
    let (status, _, _) = raw(port, "/", &[("Cookie", &cookie)]);
    assert_eq!(status, 401, "the session outlived its sign-out");
    cookie
}

#[test]
fn console_in_a_browser_shows_the_running_pipeline_and_refuses_without_the_token() {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        let tool = std::env::var(if tool.ends_with("driver") {
            "WEIR_CHROMEDRIVER"
        } else {
            "WEIR_CHROMIUM"
        })
        .unwrap_or(tool.to_string());
        assert!(
            Path::new(&tool).exists(),
            "{tool} is missing: apt-get install chromium chromium-driver (.ci/run installs them)"
        );
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = pipeline(dir.path(), port, Some(TOKEN));
    let mut run = Running::start(&weir(), &path, &[]);
    run.wait_http(port);
    token_flow(port);
    // the bad line is a dead letter in weir_dead_letters
    let bearer = format!("Bearer {TOKEN}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = http(
            port,
            "POST",
            "/sql",
            &[("Authorization", &bearer)],
            b"SELECT code, raw FROM weir_dead_letters WHERE code = 'invalid_json'",
        );
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        let rows = a.json();
        if let Some(r) = rows.as_array().and_then(|r| r.first()) {
            assert_eq!(r["raw"], format!("not json {HOSTILE_RAW}"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no dead letter in weir_dead_letters"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let _ = std::fs::remove_dir_all(&out);
    let browser = Command::new(venv_python())
        .arg(repo().join("tests/console/browser.py"))
        .args(["--port", &port.to_string(), "--token", TOKEN])
        .arg("--out")
        .arg(&out)
        .arg("--axe")
        .arg(repo().join("tests/console/axe/axe.min.js"))
        .args(["--pipeline", "console-test"])
        .args([
            "--query",
            "SELECT serviceName, checks FROM service_status ORDER BY checks DESC LIMIT 5",
        ])
        .args([
            "--lookup-view",
            "file_services",
            "--lookup-key",
            HOSTILE_KEY,
        ])
        .args(["--dead-code", "invalid_json", "--dead-raw", HOSTILE_RAW])
        .args(["--windows", &(1 + MORE_WINDOWS.len()).to_string()])
        .output()
        .expect("run tests/console/browser.py with the venv's python");
    let stdout = String::from_utf8_lossy(&browser.stdout);
    let stderr = String::from_utf8_lossy(&browser.stderr);
    eprintln!("console screenshots: {}", out.display());
    assert!(
        browser.status.success(),
        "the browser test failed ({}):\n{stderr}\n{stdout}",
        browser.status
    );
    let seen: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("the browser's report");
    eprintln!("{}", serde_json::to_string_pretty(&seen).unwrap());
    let events = seen["events"].as_array().unwrap();
    assert!(events[1].as_u64() > events[0].as_u64(), "{seen}");
    let partitions = seen["partitions"].as_array().unwrap();
    assert!(
        partitions
            .iter()
            .any(|p| p.as_str().unwrap().contains("events.ndjson")),
        "{seen}"
    );
    assert_eq!(seen["sql_rows"], 5, "{seen}");
    assert!(seen["sql_error"].as_str().unwrap().starts_with("sql_error"));
    assert!(seen["lookup"].as_str().unwrap().contains(HOSTILE_KEY));
    assert!(seen["screenshots"].as_array().unwrap().len() >= 6);
    assert!(seen["live_streams"].as_u64().unwrap() <= 3, "{seen}");
    assert_eq!(seen["followed_after_choice"], "win_f", "{seen}");
    assert_eq!(
        seen["csv_formulas"], "'=1+1,-5\r\n'@x,1\r\n'\tx,2\r\n'-y,3\r\n\"'+\"\"q\"\"\",4",
        "{seen}"
    );
    assert_eq!(seen["reloads_on_401"], 1, "{seen}");
    assert_eq!(seen["revoked"], true, "{seen}");
    let (status, _, _) = raw(port, "/", &[]);
    assert_eq!(status, 401, "still refused without the token");
    drop(run);
    eprintln!("took {:?}", started.elapsed());
}

/// Without `serve.token` (loopback only) the console is open, as `/sql` is.
#[test]
fn console_without_a_token_is_open_like_sql() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = pipeline(dir.path(), port, None);
    let mut run = Running::start(&weir(), &path, &[]);
    run.wait_http(port);
    let (status, _, body) = raw(port, "/", &[]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("console-test") && body.contains("console/app.js"));
    let (status, head, _) = raw(port, "/console/app.js", &[]);
    assert_eq!(status, 200);
    assert!(header(&head, "content-type")
        .unwrap()
        .starts_with("text/javascript"));
    let state = http(port, "GET", "/console/state", &[], b"");
    assert_eq!(state.status, 200);
    let state = state.json();
    assert_eq!(state["token"], false);
    let tables: Vec<&str> = state["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        tables,
        [
            "health_win",
            "win_b",
            "win_c",
            "win_d",
            "win_e",
            "win_f",
            "service_status",
            "file_services",
            "weir_status",
            "weir_dead_letters"
        ]
    );
}
