//! The SQL endpoints' connection limit, driven as users and hostile clients do: `weir run`
//! with `serve.max_connections` low, raw sockets that sit on connections, a request whose body
//! never comes, a live subscription, and real `psql` sessions idle at their prompt.

#[path = "support/sql.rs"]
mod sql_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sql_support::{free_port, sql_json, Running};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn psql(port: u16, query: &str) -> std::process::Output {
    sql_support::psql_command(port, None)
        .args(["-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", query])
        .output()
        .expect("psql is missing: install Debian's postgresql-client (.ci/run does)")
}

/// A view of generated service-health events, served on `http` and `postgres` with at most
/// four connections each (HTTP one more, for one subscription).
fn pipeline(dir: &Path, http: u16, postgres: u16) -> PathBuf {
    let yaml = format!(
        r#"name: sql-connections
sources:
  health:
    generator: {{ kind: service-health, events_per_second: 1000, seed: 5 }}
views:
  service_status:
    from: health
    key: [serviceName]
    aggregates:
      checks: count(*)
    sinks: [status_out]
sinks:
  status_out: {{ file: {{ path: out/service_status.ndjson }} }}
dead_letter: {{ file: {{ path: out/dead.ndjson }} }}
serve: {{ http: "127.0.0.1:{http}", postgres: "127.0.0.1:{postgres}", max_connections: 4, max_subscriptions: 1 }}
"#
    );
    let path = dir.join("pipeline.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// What the server sent before it closed `s`, when it closed it within two seconds (an open
/// connection waits for the client); `None` while it stays open.
fn closed_by_the_server(s: &mut std::net::TcpStream) -> Option<String> {
    use std::io::Read;
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => Some(String::from_utf8_lossy(&got).into_owned()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(_) => Some(String::from_utf8_lossy(&got).into_owned()),
    }
}

/// Clients that open connections and sit on them cannot keep others out, nor take every file
/// descriptor: each endpoint keeps `serve.max_connections` (4 here; HTTP 1 more,
/// `max_subscriptions`) open; a new client makes room by closing a connection that waits for
/// its client (those that never completed a request or startup first, then the one waiting
/// the longest: a psql session idle at its prompt, told FATAL 57P05), and is answered; a
/// connection answering (a live subscription) is not closed; the engine answers throughout.
#[test]
fn a_new_client_closes_a_connection_that_waits_for_its_client_and_is_answered() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let dir = tempfile::tempdir().unwrap();
    let (hp, pp) = (free_port(), free_port());
    let pipeline = pipeline(dir.path(), hp, pp);
    let mut run = Running::start(WEIR, &pipeline, &[]);
    run.wait_http(hp);
    let connect = |port: u16| {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        // accepted in this order, waiting since then
        std::thread::sleep(Duration::from_millis(30));
        s
    };

    // HTTP, five places: a live subscription (the oldest), a request whose body never comes,
    // three sockets that never send a request
    let mut live = connect(hp);
    live.write_all(
        b"GET /subscribe?table=service_status HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n",
    )
    .unwrap();
    let mut first = [0u8; 64];
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = live.read(&mut first).unwrap();
    assert!(
        String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&first[..n])
    );
    let mut upload = connect(hp);
    upload
        .write_all(b"POST /sql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\nSELECT")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let mut silent: Vec<TcpStream> = (0..3).map(|_| connect(hp)).collect();
    // a new client is answered: the request whose body does not come (never complete) made
    // room, not the older subscription
    assert!(!sql_json(hp, "SELECT count(*) AS n FROM weir_status").is_empty());
    assert!(
        closed_by_the_server(&mut upload).is_some(),
        "the stalled upload stays open"
    );
    for s in &mut silent {
        assert_eq!(closed_by_the_server(s), None, "a silent socket closed");
    }
    // full again: the next new client closes the oldest silent socket
    silent.push(connect(hp));
    assert!(!sql_json(hp, "SELECT count(*) AS n FROM weir_status").is_empty());
    assert!(
        closed_by_the_server(&mut silent[0]).is_some(),
        "the oldest silent socket stays open"
    );
    for s in &mut silent[1..] {
        assert_eq!(closed_by_the_server(s), None, "a later socket closed");
    }
    // the subscription goes on: what it sent so far drained, more comes
    live.set_nonblocking(true).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    while matches!(live.read(&mut buf), Ok(n) if n > 0) {}
    live.set_nonblocking(false).unwrap();
    live.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(
        matches!(live.read(&mut buf), Ok(n) if n > 0),
        "the subscription was closed"
    );
    drop((live, silent));

    // Postgres, four places: three psql sessions idle at their prompt, then a socket that
    // never starts; a new psql closes the socket, though it is the newest
    let session = || idle_psql(pp);
    let mut idle: Vec<_> = (0..3).map(|_| session()).collect();
    let mut starting = connect(pp);
    let o = psql(pp, "SELECT 1");
    assert!(o.status.success(), "psql: {}", text(&o.stderr));
    assert!(
        closed_by_the_server(&mut starting).is_some(),
        "the socket that never started stays open"
    );
    // full again with a fourth session: the next psql closes the session idle the longest,
    // which is told why when it next asks
    idle.push(session());
    let o = psql(pp, "SELECT 1");
    assert!(o.status.success(), "psql: {}", text(&o.stderr));
    let mut oldest = idle.remove(0);
    let mut stdin = oldest.stdin.take().unwrap();
    let _ = stdin.write_all(b"SELECT 2;\n");
    drop(stdin);
    let o = oldest.wait_with_output().unwrap();
    assert!(
        text(&o.stderr).contains("terminating the idle session"),
        "the idle psql session: {} {}",
        text(&o.stdout),
        text(&o.stderr)
    );
    for mut s in idle {
        let mut stdin = s.stdin.take().unwrap();
        stdin.write_all(b"SELECT 3;\n").unwrap();
        drop(stdin);
        let o = s.wait_with_output().unwrap();
        assert!(o.status.success(), "a later session: {}", text(&o.stderr));
    }
    assert!(
        run.child.try_wait().unwrap().is_none(),
        "the engine stopped"
    );
    let (code, _, err) = run.stop();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("a connection that waited for its client the longest was closed to make room"),
        "{err}"
    );
}

/// A psql session that answered a first query and now waits at its prompt (reading its
/// standard input).
fn idle_psql(port: u16) -> std::process::Child {
    use std::io::{BufRead, Write};
    let mut c = sql_support::psql_command(port, None)
        .args(["-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // its first answer: connected and past its startup, now idle
    c.stdin
        .as_mut()
        .unwrap()
        .write_all(b"SELECT 41;\n")
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(c.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "41");
    std::thread::sleep(Duration::from_millis(30));
    c
}

/// A Postgres startup message for user and database `weir` (trust authentication here).
fn startup() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608u32.to_be_bytes());
    for part in ["user", "weir", "database", "weir"] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut m = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    m.extend_from_slice(&body);
    m
}

/// A simple-protocol query message.
fn query(sql: &str) -> Vec<u8> {
    let mut m = vec![b'Q'];
    m.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    m.extend_from_slice(sql.as_bytes());
    m.push(0);
    m
}

/// A Postgres client that sends failing statements (each error tens of kilobytes long, as it
/// names the column) without ever reading: the session's error answers block on it. Evicted
/// for a new client, it is closed all the same (the writes of its errors do not hold it).
#[test]
fn a_session_whose_client_does_not_read_its_errors_is_closed_for_a_new_client() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let dir = tempfile::tempdir().unwrap();
    let (hp, pp) = (free_port(), free_port());
    let pipeline = pipeline(dir.path(), hp, pp);
    let mut run = Running::start(WEIR, &pipeline, &[]);
    run.wait_http(hp);
    let mut stuck = TcpStream::connect(("127.0.0.1", pp)).unwrap();
    stuck.write_all(&startup()).unwrap();
    // its startup answered (up to ReadyForQuery), then it never reads again
    stuck
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(6).any(|w| w == [b'Z', 0, 0, 0, 5, b'I']) {
        let n = stuck.read(&mut buf).unwrap();
        assert!(n > 0, "closed during its startup");
        got.extend_from_slice(&buf[..n]);
    }
    let bad = query(&format!("SELECT \"{}\"", "x".repeat(60_000)));
    let mut writer = stuck.try_clone().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // ends when the server closes the connection (or after far more than fills buffers)
        let sent = (0..2_000)
            .take_while(|_| writer.write_all(&bad).is_ok())
            .count();
        let _ = tx.send(sent);
    });
    // its answers stop going out once its buffers are full
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        rx.try_recv().is_err(),
        "the client's writes never blocked: the test needs larger errors"
    );
    let idle: Vec<_> = (0..3).map(|_| idle_psql(pp)).collect();
    // full, and the stuck session waits for its client the longest: a new client closes it
    let o = psql(pp, "SELECT 1");
    assert!(o.status.success(), "psql: {}", text(&o.stderr));
    let sent = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the stuck session is still open");
    assert!(sent < 2_000, "the stuck session kept reading: {sent}");
    for mut c in idle {
        drop(c.stdin.take());
        assert!(c.wait().unwrap().success(), "an idle session was closed");
    }
    assert!(
        run.child.try_wait().unwrap().is_none(),
        "the engine stopped"
    );
    let (code, _, err) = run.stop();
    assert_eq!(code, Some(0), "{err}");
}
