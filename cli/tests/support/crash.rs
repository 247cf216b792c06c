//! The crash loop of weir's crash tests: `weir run` killed with SIGKILL at random moments
//! (and at the checkpoint coordinator's failpoints: every part in but no manifest; the
//! manifest written but the outputs not committed), restarted each time, then run to its end.
#![allow(dead_code)] // each test binary uses its own part

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// also loaded by the other support module a test binary may include (crash.rs, nats.rs)
#[allow(clippy::duplicate_mod)]
#[path = "venv.rs"]
mod venv;
pub use venv::venv_python;

/// What a crash loop did.
#[derive(Debug)]
pub struct CrashReport {
    pub seed: u64,
    /// SIGKILLs sent, and how many of them at a failpoint.
    pub kills: usize,
    pub at_failpoints: usize,
    /// Runs that restored a checkpoint.
    pub restores: usize,
    /// Runs that finished before their kill (checked, then started over).
    pub finished_early: usize,
}

/// A small deterministic generator (xorshift), seeded from `WEIR_CRASH_SEED` or the clock.
pub struct Rng(u64);

impl Rng {
    pub fn from_env() -> Rng {
        let seed = std::env::var("WEIR_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        Rng(seed)
    }
    pub fn seed(&self) -> u64 {
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % n.max(1)
    }
}

fn read_log(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

fn kill9(child: &mut Child) {
    // SIGKILL: no handler runs, nothing is flushed
    let _ = Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Runs `make()` (a `weir run` command, logging at info level) `kills` times, killing it
/// with SIGKILL: every fifth run at the `before_manifest` failpoint, every fifth at
/// `before_commit` (at the run's first to fourth checkpoint), the others once 1 or 2
/// checkpoints with open windows completed in the run (so that runs make progress whatever
/// the machine's speed) and a random delay below `max_delay` more. Then runs it to its end; panics with the log when a run
/// fails. A run that finishes before its kill is handed to `finished_early` (which checks the
/// outputs and starts over with empty state). `logs` is a folder for the runs' stderr.
pub fn crash_loop(
    make: impl Fn() -> Command,
    kills: usize,
    max_delay: Duration,
    logs: &Path,
    mut finished_early: impl FnMut(),
) -> CrashReport {
    let mut rng = Rng::from_env();
    let mut report = CrashReport {
        seed: rng.seed(),
        kills: 0,
        at_failpoints: 0,
        restores: 0,
        finished_early: 0,
    };
    eprintln!(
        "crash loop seed {} (WEIR_CRASH_SEED to repeat)",
        report.seed
    );
    std::fs::create_dir_all(logs).unwrap();
    let mut run = 0;
    while report.kills < kills {
        run += 1;
        let log = logs.join(format!("run-{run}.log"));
        let mut cmd = make();
        let failpoint = match run % 5 {
            1 => Some("before_manifest"),
            3 => Some("before_commit"),
            _ => None,
        };
        if let Some(p) = failpoint {
            let skip = rng.below(4);
            cmd.env("WEIR_FAILPOINT_PAUSE", format!("{p}:3000:{skip}"));
        }
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().expect("start weir");
        let started = Instant::now();
        let checkpoints = 1 + rng.below(2) as usize;
        let delay = Duration::from_millis(rng.below(max_delay.as_millis() as u64));
        let limit = Duration::from_secs(60);
        let mut counted_at: Option<Instant> = None;
        let mut killed = false;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let text = read_log(&log);
                assert!(status.success(), "run {run} failed ({status}):\n{text}");
                report.finished_early += 1;
                finished_early();
                break;
            }
            let text = read_log(&log);
            let at_failpoint = failpoint.is_some() && text.contains("failpoint ");
            // checkpoints holding open windows: the run is reading (a run that restored a
            // finished checkpoint has none and runs to its end)
            let busy = text
                .lines()
                .filter(|l| l.contains("checkpoint complete") && !l.contains("state_rows=0 "))
                .count();
            if failpoint.is_none() && counted_at.is_none() && busy >= checkpoints {
                counted_at = Some(Instant::now());
            }
            let due = counted_at.is_some_and(|t| t.elapsed() >= delay);
            if at_failpoint || due || started.elapsed() >= limit {
                kill9(&mut child);
                killed = true;
                report.at_failpoints += usize::from(at_failpoint);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if killed {
            report.kills += 1;
        }
        let text = read_log(&log);
        eprintln!(
            "run {run}: {} after {:?} and {} checkpoint(s){}",
            if killed { "killed" } else { "finished" },
            started.elapsed(),
            text.matches("checkpoint complete").count(),
            failpoint.map_or(String::new(), |p| format!(", failpoint {p}"))
        );
        if read_log(&log).contains("restored from checkpoint") {
            report.restores += 1;
        }
    }
    let log = logs.join("final.log");
    let out = make().output().expect("start weir");
    std::fs::write(&log, &out.stderr).unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the final run failed:\n{text}");
    assert!(!text.contains("panicked"), "{text}");
    if text.contains("restored from checkpoint") {
        report.restores += 1;
    }
    report
}

/// Rows of every committed part of a Parquet folder, read by pyarrow (timestamps as epoch
/// ms), as JSON objects.
pub fn read_parquet_folder(dir: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let script = r#"
import json, sys
import pyarrow.dataset as ds
t = ds.dataset(sys.argv[1], format="parquet").to_table()
for r in t.to_pylist():
    print(json.dumps({k: (int(v.timestamp() * 1000) if hasattr(v, "timestamp") else v) for k, v in r.items()}))
"#;
    let out = Command::new(venv_python())
        .args(["-c", script, dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reading {} with pyarrow failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
