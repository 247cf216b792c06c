//! Checkpoint costs (issue bars: a checkpoint of 1,000,000 open (key, window) groups in under
//! 1 s; checkpoints every 10 s cost under 5% of throughput), measured in one run:
//!
//! 1. *State size*: generated events over 1,000,000 keys, all in one day-long window, so every
//!    key stays an open group; checkpoints every 2 s. Reports, for the checkpoint that held
//!    the most groups, how long it took from the barrier to the state being stored, and its
//!    size (from the manifests, kept).
//! 2. *Throughput*: the same pipeline shape over 10,000 keys and 1-minute windows, with
//!    checkpoints every 10 s and without, alternated `ROUNDS` times; events/s of each.
//!
//! `cargo run --release -p weir-benches --bin checkpoint_bench [-- EVENTS ROUNDS]`
//! (defaults: 40,000,000 events per throughput run, 3 rounds).

use std::path::Path;
use std::time::Instant;

use weir_pipelines::{load, run, RunOptions};

fn pipeline(
    dir: &Path,
    name: &str,
    count: u64,
    keys: u64,
    window: &str,
    checkpoint: Option<&str>,
) -> std::path::PathBuf {
    let mut yaml = format!(
        r#"name: {name}
sources:
  events:
    generator: {{ kind: data-ingestion, count: {count}, keys: {keys}, skew: 0, seed: 5, step_ms: 0.01 }}
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
windows:
  w:
    from: events
    key: [datasetName]
    tumbling: {window}
    aggregates:
      events: count(*)
      records: sum(recordCount)
      max_bytes: max(sizeBytes)
    sinks: [out]
sinks:
  out: {{ file: {{ path: out-{name}/w.parquet }} }}
dead_letter: {{ file: {{ path: out-{name}/dead.ndjson }} }}
"#
    );
    if let Some(c) = checkpoint {
        yaml.push_str(c);
        yaml.push('\n');
    }
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("write pipeline");
    path
}

fn run_pipeline(path: &Path) -> weir_pipelines::RunSummary {
    let plan = load(path).unwrap_or_else(|e| panic!("{e}"));
    run(
        plan,
        RunOptions {
            parallelism: Some(2),
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let events: u64 = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(40_000_000);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let dir = std::env::temp_dir().join(format!("weir-checkpoint-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");

    // 1. a checkpoint of 1M open groups
    let state = dir.join("state-big");
    let p = pipeline(
        &dir,
        "big",
        5_000_000,
        1_000_000,
        "1d",
        Some(&format!(
            "checkpoint: {{ dir: {}, interval: 2s, keep: 1000 }}",
            state.display()
        )),
    );
    let started = Instant::now();
    let s = run_pipeline(&p);
    println!(
        "1M-group state: {} events in {:.1}s, {} checkpoints",
        s.records_in,
        started.elapsed().as_secs_f64(),
        s.checkpoints
    );
    let mut biggest: Option<serde_json::Value> = None;
    for e in std::fs::read_dir(&state).expect("checkpoints") {
        let m = e.expect("entry").path().join("manifest.json");
        let Ok(text) = std::fs::read_to_string(&m) else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&text).expect("manifest");
        let rows = v["operators"][0]["rows"].as_u64().unwrap_or(0);
        if biggest
            .as_ref()
            .is_none_or(|b| b["operators"][0]["rows"].as_u64().unwrap_or(0) < rows)
        {
            biggest = Some(v);
        }
    }
    let b = biggest.expect("a checkpoint");
    let rows = b["operators"][0]["rows"].as_u64().unwrap_or(0);
    let took = b["took_ms"].as_u64().unwrap_or(0);
    println!(
        "largest checkpoint: epoch {}, {rows} groups, {} MB of state, {took} ms from barrier to stored state ({})",
        b["epoch"],
        b["state_bytes"].as_u64().unwrap_or(0) / 1_000_000,
        if rows >= 1_000_000 && took < 1000 {
            "bar met: 1M groups under 1 s"
        } else if rows < 1_000_000 {
            "fewer than 1M groups: raise the event count"
        } else {
            "bar missed"
        }
    );

    // 2. throughput with and without checkpoints, alternated
    let mut with = Vec::new();
    let mut without = Vec::new();
    for round in 0..rounds {
        let _ = std::fs::remove_dir_all(dir.join("state-tp"));
        let p_on = pipeline(
            &dir,
            "tp-on",
            events,
            10_000,
            "1m",
            Some(&format!(
                "checkpoint: {{ dir: {}, interval: 10s }}",
                dir.join("state-tp").display()
            )),
        );
        let p_off = pipeline(&dir, "tp-off", events, 10_000, "1m", None);
        let on = run_pipeline(&p_on);
        let off = run_pipeline(&p_off);
        println!(
            "round {}: checkpoints every 10s {:.0} events/s ({} checkpoints, last {} ms); off {:.0} events/s; ratio {:.3}",
            round + 1,
            on.events_per_second(),
            on.checkpoints,
            on.last_checkpoint.as_ref().map_or(0, |c| c.duration_ms),
            off.events_per_second(),
            on.events_per_second() / off.events_per_second()
        );
        with.push(on.events_per_second());
        without.push(off.events_per_second());
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let cost = 1.0 - mean(&with) / mean(&without);
    println!(
        "throughput cost of checkpoints every 10 s: {:.1}% ({})",
        cost * 100.0,
        if cost < 0.05 {
            "bar met: under 5%"
        } else {
            "bar missed"
        }
    );
    let _ = std::fs::remove_dir_all(&dir);
}
