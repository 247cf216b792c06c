//! An S3-compatible server for tests: moto, from the tests' venv.
#![allow(dead_code)] // each test binary uses its own part

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// An S3-compatible server (moto, from the tests' venv) on a free port, with one bucket.
pub struct S3Server {
    child: std::process::Child,
    port: u16,
}

impl S3Server {
    /// Starts moto_server from the venv of `python` (`crash::venv_python()`).
    pub fn start(python: &Path, bucket: &str) -> S3Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let server = python.with_file_name("moto_server");
        assert!(
            server.exists(),
            "{} is missing: run scripts/test-env.sh",
            server.display()
        );
        let child = Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let s = S3Server { child, port };
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "moto_server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let (status, _) = s.request("PUT", &format!("/{bucket}"));
        assert_eq!(status, 200, "creating bucket {bucket}");
        s
    }

    /// An unsigned request (moto accepts them); returns the status and the whole answer.
    pub fn request(&self, method: &str, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            c,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, text)
    }

    /// The variables `object_store` reads to reach it.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "weir-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "weir-test".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
