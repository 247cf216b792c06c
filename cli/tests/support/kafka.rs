//! Helpers of the Kafka tests: the broker, the independent Python client, unique names.
#![allow(dead_code)] // each test binary uses its own part

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::crash::venv_python as python;

/// The brokers of the tests (`KAFKA_BROKERS`, default 127.0.0.1:9092); panics when none
/// answers.
pub fn brokers() -> String {
    let b = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let first = b.split(',').next().unwrap_or_default().to_string();
    let reachable = first
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(3)).is_ok());
    assert!(
        reachable,
        "no Kafka broker at {b}: start one with scripts/kafka.sh start (or set KAFKA_BROKERS)"
    );
    b
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs tests/kafka/kafka_tool.py; panics with its output when it fails.
pub fn tool(args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(repo().join("tests/kafka/kafka_tool.py"))
        .args(args)
        .output()
        .expect("run kafka_tool.py");
    assert!(
        out.status.success(),
        "kafka_tool.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A name no other test run uses (topics, groups).
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// The `weir` binary, logging at info level.
pub fn weir() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.env("RUST_LOG", "info,librdkafka=warn");
    c
}
