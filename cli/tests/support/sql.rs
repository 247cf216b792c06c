//! Helpers of the SQL tests: a running `weir run` with `serve`, a raw HTTP client, ports.
#![allow(dead_code)] // each test binary uses its own part

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use weir_tests::free_port;

/// An HTTP answer: status code and body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    try_http(port, method, path, headers, body).unwrap_or_else(|e| panic!("{e}"))
}

/// One HTTP/1.1 request on a fresh connection, or why it got no answer.
pub fn try_http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Answer, String> {
    let err = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| err("connect", e))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|e| err("send", e))?;
    s.write_all(body).map_err(|e| err("send", e))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| err("receive", e))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP head in the answer")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok(Answer { status, body })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..line_end]).unwrap().trim(), 16).unwrap();
        b = &b[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// `POST /sql` with `{"query": query}` on a fresh connection: the answer, whatever its
/// status, or why there was none.
pub fn try_post_sql(port: u16, query: &str) -> Result<Answer, String> {
    let body = serde_json::json!({ "query": query }).to_string();
    try_http(
        port,
        "POST",
        "/sql",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

/// `POST /sql` with a JSON body; the JSON rows, or the error.
pub fn try_sql_json(port: u16, query: &str) -> Result<Vec<serde_json::Map<String, Value>>, String> {
    let a = try_post_sql(port, query)?;
    if a.status != 200 {
        return Err(format!(
            "{}: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        ));
    }
    match serde_json::from_slice(&a.body) {
        Ok(Value::Array(rows)) => Ok(rows
            .into_iter()
            .filter_map(|r| match r {
                Value::Object(m) => Some(m),
                _ => None,
            })
            .collect()),
        other => Err(format!("not rows: {other:?}")),
    }
}

/// Whether the engine on `port` refuses queries as `starting` (see `QueryError::Starting`).
pub fn is_starting(port: u16) -> bool {
    let Ok(a) = try_post_sql(port, "SELECT 1") else {
        return false;
    };
    a.status == 503
        && serde_json::from_slice::<Value>(&a.body).is_ok_and(|v| v["error"]["code"] == "starting")
}

/// `POST /sql` with a JSON body; the JSON rows, or panics with the error.
pub fn sql_json(port: u16, query: &str) -> Vec<serde_json::Map<String, Value>> {
    let a = try_post_sql(port, query).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        a.status,
        200,
        "{query}: {}",
        String::from_utf8_lossy(&a.body)
    );
    match a.json() {
        Value::Array(rows) => rows
            .into_iter()
            .map(|r| match r {
                Value::Object(m) => m,
                other => panic!("not a row: {other}"),
            })
            .collect(),
        other => panic!("not an array: {other}"),
    }
}

/// A `weir run` in the background, killed when dropped. Its standard output and error are
/// read while it runs (a pipe nobody reads blocks the process once full) and kept.
pub struct Running {
    pub child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

/// Reads a child's pipe to its end on a thread of its own.
fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// How long `Running::stop` waits for the exit after SIGINT.
const STOP_LIMIT: Duration = Duration::from_secs(120);

/// `psql` connected to the endpoint on `port` as user `weir`, without reading `~/.psqlrc`,
/// with `password` (or none).
pub fn psql_command(port: u16, password: Option<&str>) -> Command {
    let mut c = Command::new("psql");
    c.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "weir", "-d", "weir", "-X"])
        .env("PGCONNECT_TIMEOUT", "10");
    match password {
        Some(p) => c.env("PGPASSWORD", p),
        None => c.env_remove("PGPASSWORD"),
    };
    c
}

impl Running {
    pub fn start(weir: &str, pipeline: &Path, args: &[&str]) -> Self {
        Self::start_with_env(weir, pipeline, args, &[])
    }

    /// Starts it with these environment variables set too.
    pub fn start_with_env(
        weir: &str,
        pipeline: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = Command::new(weir);
        command
            .arg("run")
            .arg(pipeline)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn");
        Self::spawn(command)
    }

    /// Starts `command` with its output piped and read.
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        Running {
            child,
            stdout,
            stderr,
        }
    }

    /// Everything it wrote to `pipe` once it has exited (closing the pipe).
    fn collected(pipe: &mut Option<JoinHandle<String>>) -> String {
        pipe.take()
            .map(|reader| reader.join().expect("a pipe reader does not panic"))
            .unwrap_or_default()
    }

    /// Waits until the HTTP endpoint answers queries: it accepts connections, and no longer
    /// refuses them as `starting` (a restored state not published yet), as a client retrying
    /// a 503 would.
    pub fn wait_http(&mut self, port: u16) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(status)) = self.child.try_wait() {
                let err = Self::collected(&mut self.stderr);
                panic!("weir run exited ({status}) before serving: {err}");
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() && !is_starting(port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the HTTP endpoint on port {port} did not come up");
    }

    /// Waits until the run finished its input (`weir_status.finished`).
    pub fn wait_finished(&mut self, port: u16) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(120) {
            let rows = sql_json(port, "SELECT bool_and(finished) AS done FROM weir_status");
            if rows.first().and_then(|r| r["done"].as_bool()) == Some(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the run did not finish its input");
    }

    /// Stops it with SIGINT and returns its exit code and output; panics (after killing it)
    /// when it has not exited within two minutes.
    pub fn stop(mut self) -> (Option<i32>, String, String) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > STOP_LIMIT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let err = Self::collected(&mut self.stderr);
                panic!("weir run did not exit within {STOP_LIMIT:?} of SIGINT: {err}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = Self::collected(&mut self.stdout);
        let err = Self::collected(&mut self.stderr);
        (status.code(), out, err)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
