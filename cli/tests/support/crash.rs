//! The crash loop of weir's crash tests: `weir run` killed with SIGKILL at random moments
//! (and at the checkpoint coordinator's failpoints: every part in but no manifest; the
//! manifest written but the outputs not committed), restarted each time, then run to its end.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// Runs `make()` (a `weir run` command) `kills` times, killing it with SIGKILL: every fifth
/// run at the `before_manifest` failpoint, every fifth at `before_commit`, the others after
/// a random delay below `max_delay`. Then runs it to its end; panics with the log when a run
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
            cmd.env("WEIR_FAILPOINT_PAUSE", format!("{p}:3000"));
        }
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().expect("start weir");
        let started = Instant::now();
        let deadline = match failpoint {
            Some(_) => Duration::from_secs(30),
            None => Duration::from_millis(20 + rng.below(max_delay.as_millis() as u64)),
        };
        let mut killed = false;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let text = read_log(&log);
                assert!(status.success(), "run {run} failed ({status}):\n{text}");
                report.finished_early += 1;
                finished_early();
                break;
            }
            let at_failpoint = failpoint.is_some() && read_log(&log).contains("failpoint ");
            if at_failpoint || (failpoint.is_none() && started.elapsed() >= deadline) {
                kill9(&mut child);
                killed = true;
                report.at_failpoints += usize::from(at_failpoint);
                break;
            }
            if started.elapsed() >= deadline {
                // the failpoint was not reached in time: kill anyway
                kill9(&mut child);
                killed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if killed {
            report.kills += 1;
        }
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
