//! A subscription client for the tests: `tests/subscribe/client.py` (Python's `websockets`
//! over WebSockets, `http.client` and raw sockets over Server-Sent Events).
#![allow(dead_code)] // each test binary uses its own part

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A client of `tests/subscribe/client.py`, its JSON lines read as they come.
pub struct Client {
    pub child: Child,
    lines: std::sync::mpsc::Receiver<Value>,
}

impl Client {
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(super::crash::venv_python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/subscribe/client.py"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        Client { child, lines }
    }

    pub fn follow(transport: &str, port: u16, query: &str, extra: &[&str]) -> Self {
        let port = port.to_string();
        let mut args = vec!["follow", "--transport", transport, "--port", &port];
        args.extend(["--query", query]);
        args.extend(extra);
        Self::start(&args)
    }

    /// The next line, waiting up to `within`.
    pub fn next(&self, within: Duration) -> Option<Value> {
        self.lines.recv_timeout(within).ok()
    }

    /// The lines received so far, without waiting.
    pub fn received(&self) -> Vec<Value> {
        self.lines.try_iter().collect()
    }

    /// Every line until the client exits.
    pub fn all(mut self) -> Vec<Value> {
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the client failed: {status}");
        self.lines.iter().collect()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
