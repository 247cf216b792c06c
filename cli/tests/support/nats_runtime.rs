//! Checks of the NATS clients' tasks and connections, shared by the NATS source's and sink's
//! runtime tests of `weir-nats` (`nats/tests/`, included with `#[path]` beside
//! `support/nats.rs`, as `nats_support`).

use std::time::{Duration, Instant};

use super::nats_support::NatsServer;

/// Tasks alive on the shared I/O runtime.
pub fn alive_tasks() -> usize {
    weir_engine::io::runtime()
        .expect("the I/O runtime")
        .metrics()
        .num_alive_tasks()
}

/// The server's client connections (`/connz`).
pub fn connections(server: &NatsServer) -> u64 {
    let url = format!("http://127.0.0.1:{}/connz", server.monitor_port);
    let text = reqwest::blocking::get(&url)
        .and_then(|r| r.text())
        .expect("/connz answers");
    let body: serde_json::Value = serde_json::from_str(&text).expect("/connz is JSON");
    body["num_connections"].as_u64().expect("num_connections")
}

/// Waits until the runtime is back to `tasks` alive tasks and the server to `conns`
/// connections (within 30 s: a client reconnecting waits up to 4 s between attempts).
pub fn back_to(server: &NatsServer, tasks: usize, conns: u64, after: &str) {
    let started = Instant::now();
    loop {
        let (t, c) = (alive_tasks(), connections(server));
        if t == tasks && c == conns {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{after}: {t} tasks alive on the I/O runtime (baseline {tasks}), {c} connections on \
             the server (expected {conns})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
