//! A throwaway PostgreSQL server for tests: Debian's `postgresql` package (15), a fresh cluster
//! in a temporary folder, trust authentication for the user `weir`, on a free port of
//! 127.0.0.1. As root, the server runs as the `postgres` user (initdb refuses root).
#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PgServer {
    child: Option<Child>,
    pub port: u16,
    _dir: tempfile::TempDir,
    /// `-c` settings the server starts with.
    settings: Vec<(String, String)>,
}

fn bin_dir() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .find(|b| b.join("initdb").exists());
    found.unwrap_or_else(|| {
        panic!("no PostgreSQL server in /usr/lib/postgresql: apt-get install postgresql (.ci/run does)")
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `program args…`, as the `postgres` user when running as root.
fn as_server_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl PgServer {
    pub fn start() -> PgServer {
        Self::start_with(|_| Vec::new())
    }

    /// A server whose data folder `setup` prepares after initdb (certificates, pg_hba.conf),
    /// returning `-c` settings to start with; as root, the folder is then given to the
    /// `postgres` user.
    pub fn start_with(setup: impl FnOnce(&Path) -> Vec<(String, String)>) -> PgServer {
        let bin = bin_dir();
        let dir = tempfile::tempdir().unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown postgres {}", dir.path().display());
        }
        let data = dir.path().join("data");
        let out = as_server_user(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "weir", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let settings = setup(&data);
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&data)
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown -R postgres {}", data.display());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = PgServer {
            child: None,
            port,
            _dir: dir,
            settings,
        };
        server.restart();
        server
    }

    /// Starts the server (again, after [`Self::stop`]) and waits until it answers.
    pub fn restart(&mut self) {
        let bin = bin_dir();
        let mut cmd = as_server_user(&bin.join("postgres"));
        cmd.arg("-D")
            .arg(self._dir.path().join("data"))
            .arg("-k")
            .arg(self._dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ]);
        for (k, v) in &self.settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        self.child = Some(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let started = Instant::now();
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "PostgreSQL did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://weir@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs `sql` with `psql` (tuples only, unaligned); panics with psql's error.
    pub fn psql(&self, sql: &str) -> String {
        let out = self.try_psql(sql);
        out.unwrap_or_else(|e| panic!("psql {sql}: {e}"))
    }

    /// Runs `sql` with `psql`; its output, or its error.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let out = self.psql_command(sql).output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    /// `psql -c sql` running in the background (a session holding a lock meanwhile).
    pub fn spawn_psql(&self, sql: &str) -> Child {
        self.psql_command(sql)
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn psql_command(&self, sql: &str) -> Command {
        let mut c = Command::new("psql");
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "-U",
                "weir",
                "-d",
                "postgres",
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .env("PGSSLMODE", "prefer")
            .arg("-c")
            .arg(sql);
        c
    }

    /// Stops the server (a fast shutdown: sessions are ended); [`Self::restart`] starts it
    /// again on the same port.
    pub fn stop(&mut self) {
        // SIGINT to the postmaster (its pid is the first line of postmaster.pid; runuser
        // does not pass signals on): a fast shutdown, then runuser exits too
        let pid = std::fs::read_to_string(self._dir.path().join("data/postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().map(str::to_string));
        if let Some(mut child) = self.child.take() {
            match pid {
                Some(pid) => {
                    let _ = Command::new("kill").args(["-INT", &pid]).status();
                }
                None => {
                    let _ = child.kill();
                }
            }
            let _ = child.wait();
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}
