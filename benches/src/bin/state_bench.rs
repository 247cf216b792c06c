//! State at scale (issue 29 item 6): memory per key, checkpoint and restore of a keyed
//! tumbling window (1 hour) and of a view over 1,000,000 and 10,000,000 distinct keys.
//!
//! Every configuration runs in a child process of its own (so that its resident memory is
//! its own): the operators themselves (`WindowWorker`, `ViewWorker` + `ViewMerger`, as the
//! engine drives them), fed generated batches in two passes over every key (each pass a
//! different permutation of the keys `dataset_00000000`.., so every key is updated twice,
//! the second time after the state already holds it). The view's worker hands its delta to
//! the merger at a barrier every 1,000,000 rows, as a checkpoint or a `serve.refresh`
//! would. Then one checkpoint: the operator's snapshot (the pause: processing waits for
//! it), Arrow IPC encoding as the checkpoint store writes it, and the write to a local file
//! with fsync; then a restore from that file into fresh operators, checked equal.
//!
//! Reported per configuration (RSS from `/proc/self/status`; peaks from `VmHWM`, reset
//! between phases through `/proc/self/clear_refs`):
//! - RSS per key, steady (after ingestion) and peak (during ingestion, and during the
//!   checkpoint), minus the RSS before the first row;
//! - Arrow state bytes per key: the memory of the Arrow arrays a checkpoint takes
//!   (`get_array_memory_size` of its keys and accumulator states);
//! - checkpoint: pause, encoding, write, total, and its bytes; restore time.
//!
//! The reference is DuckDB's hash aggregate over the same rows (same keys, values and
//! GROUP BY): `benches/peers/state_duckdb.py` (run by `benches/state.sh`).
//!
//! `cargo run --release -p weir-benches --bin state_bench [-- KEYS...]` (default: 1000000
//! 10000000); `state_bench one window|view KEYS` runs one configuration in this process.

use std::io::Write;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, StringBuilder};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use weir_engine::checkpoint::{decode_partials, encode_partials};
use weir_engine::dead_letter::PartitionInfo;
use weir_engine::job::{MergeOperator, PartialWindow, WorkerOperator};
use weir_engine::EventBatch;
use weir_operators::{
    SqlCompiler, TimeMode, ViewConfig, ViewMerger, ViewWorker, WindowConfig, WindowMerger,
    WindowWorker,
};

/// Rows per batch, as the decoders produce them.
const BATCH: usize = 8192;
/// Rows between two of the view's barriers.
const BARRIER_ROWS: usize = 1_000_000;
/// An hour-aligned event time (ms): every row falls in one 1-hour window.
const BASE_MS: i64 = 1_699_999_200_000;
/// The multipliers of the two passes' permutations of the keys (primes, coprime with any
/// power of ten).
const PASSES: [u64; 2] = [1_000_003, 7_368_787];

/// The key of row `i` of pass `p` over `keys` keys. Keep in step with `state_duckdb.py`.
fn key_of(i: u64, p: usize, keys: u64) -> u64 {
    (i.wrapping_mul(PASSES[p]) + p as u64) % keys
}

/// Resident and peak resident memory (bytes).
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the peak (`VmHWM`) to the current RSS.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("timestamp", DataType::Int64, true),
        Field::new("datasetName", DataType::Utf8, true),
        Field::new("recordCount", DataType::Int64, true),
        Field::new("sizeBytes", DataType::Int64, true),
    ]))
}

/// Rows `from..to` of pass `p`. Keep in step with `state_duckdb.py`.
fn batch(schema: &SchemaRef, p: usize, from: u64, to: u64, keys: u64) -> EventBatch {
    let n = (to - from) as usize;
    let mut names = StringBuilder::with_capacity(n, n * 16);
    let mut ts = Vec::with_capacity(n);
    for i in from..to {
        names.append_value(format!("dataset_{:08}", key_of(i, p, keys)));
        ts.push(BASE_MS + (i / 10_000) as i64);
    }
    let records = Int64Array::from_iter_values((from..to).map(|i| (i % 1000) as i64));
    let sizes = Int64Array::from_iter_values((from..to).map(|i| ((i * 7919) % 1_000_000) as i64));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(ts.clone())),
            Arc::new(names.finish()),
            Arc::new(records),
            Arc::new(sizes),
        ],
    )
    .expect("batch");
    EventBatch {
        batch,
        event_time: ts,
        offsets: (from..to).collect(),
        raw: None,
    }
}

fn aggregates(schema: &SchemaRef) -> Vec<weir_operators::CompiledAggregate> {
    let c = SqlCompiler::new();
    [
        ("events", "count(*)"),
        ("records", "sum(recordCount)"),
        ("max_bytes", "max(sizeBytes)"),
    ]
    .iter()
    .map(|(n, e)| c.aggregate(n, e, schema).expect("aggregate"))
    .collect()
}

fn partition() -> Arc<PartitionInfo> {
    Arc::new(PartitionInfo {
        source: "events".into(),
        id: 0,
        state_id: 0,
        number: 0,
        topic: None,
        file: None,
    })
}

/// The state a checkpoint takes, where it is held.
enum State {
    Window(WindowWorker),
    View(ViewWorker, Box<ViewMerger>),
}

impl State {
    fn new(shape: &str, schema: &SchemaRef) -> State {
        match shape {
            "window" => State::Window(WindowWorker::new(window_config(schema)).expect("window")),
            _ => {
                let config = Arc::new(ViewConfig {
                    name: "v".into(),
                    input_schema: schema.clone(),
                    predicate: None,
                    keys: vec!["datasetName".into()],
                    aggregates: aggregates(schema),
                    retain_ms: None,
                    changelog: false,
                    partition_state: false,
                });
                State::View(
                    ViewWorker::new(config.clone()).expect("view"),
                    Box::new(ViewMerger::new(config).expect("view")),
                )
            }
        }
    }

    fn process(&mut self, events: &EventBatch) {
        let wms = vec![i64::MIN; events.batch.num_rows()];
        let mut dead = Vec::new();
        let worker: &mut dyn WorkerOperator = match self {
            State::Window(w) => w,
            State::View(w, _) => w,
        };
        worker
            .process(&partition(), events, &wms, &mut dead)
            .expect("process");
        assert!(dead.is_empty(), "no row is late");
    }

    /// A barrier: the view's worker hands its delta over, the merger folds it in.
    fn barrier(&mut self) {
        if let State::View(w, m) = self {
            for p in w.barrier_handover().expect("handover") {
                m.merge(p).expect("merge");
            }
            m.snapshot().expect("fold");
        }
    }

    /// The checkpoint's copy of the state, as the engine takes it at a barrier.
    fn snapshot(&mut self) -> Vec<PartialWindow> {
        match self {
            State::Window(w) => w.snapshot().expect("snapshot").0,
            State::View(w, m) => {
                let mut p = w.snapshot().expect("snapshot").0;
                p.extend(m.snapshot().expect("snapshot"));
                p
            }
        }
    }

    /// Fresh operators restored from a checkpoint.
    fn restore(shape: &str, schema: &SchemaRef, partials: Vec<PartialWindow>) -> State {
        let mut s = State::new(shape, schema);
        match &mut s {
            State::Window(w) => w.restore(partials, i64::MIN).expect("restore"),
            State::View(_, m) => {
                m.restore(&partials).expect("restore");
            }
        }
        s
    }

    /// (keys, total count, total records) of the final results.
    fn totals(self, shape: &str, schema: &SchemaRef) -> (usize, i64, i64) {
        let batches = match self {
            State::Window(mut w) => {
                let mut m = WindowMerger::new(window_config(schema)).expect("merger");
                for p in w.flush(i64::MAX).expect("flush") {
                    m.merge(p).expect("merge");
                }
                m.emit(i64::MAX).expect("emit")
            }
            State::View(mut w, mut m) => {
                for p in w.barrier_handover().expect("handover") {
                    m.merge(p).expect("merge");
                }
                m.live(Vec::new()).expect("rows")
            }
        };
        let at = if shape == "window" { 3 } else { 1 };
        let mut out = (0, 0, 0);
        for b in batches {
            out.0 += b.num_rows();
            let sum =
                |c: &ArrayRef| arrow::compute::sum(c.as_primitive::<Int64Type>()).unwrap_or(0);
            out.1 += sum(b.column(at));
            out.2 += sum(b.column(at + 1));
        }
        out
    }
}

fn window_config(schema: &SchemaRef) -> Arc<WindowConfig> {
    Arc::new(WindowConfig {
        name: "w".into(),
        input_schema: schema.clone(),
        predicate: None,
        keys: vec!["datasetName".into()],
        size_ms: 3_600_000,
        allowed_lateness_ms: 0,
        time: TimeMode::Event,
        aggregates: aggregates(schema),
        key_partitioned: false,
        partition_state: false,
    })
}

fn arrow_bytes(partials: &[PartialWindow]) -> usize {
    partials
        .iter()
        .flat_map(|p| p.keys.iter().chain(&p.states))
        .map(|a| a.get_array_memory_size())
        .sum()
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// One configuration; prints `key=value` lines.
fn one(shape: &str, keys: u64) {
    let schema = schema();
    let mut state = State::new(shape, &schema);
    let dir = std::env::temp_dir().join(format!("weir-state-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (base, _) = rss();
    reset_peak();
    let started = Instant::now();
    let mut since_barrier = 0;
    for p in 0..PASSES.len() {
        let mut from = 0;
        while from < keys {
            let to = (from + BATCH as u64).min(keys);
            state.process(&batch(&schema, p, from, to, keys));
            since_barrier += (to - from) as usize;
            if since_barrier >= BARRIER_ROWS {
                state.barrier();
                since_barrier = 0;
            }
            from = to;
        }
    }
    state.barrier();
    let ingest_s = started.elapsed().as_secs_f64();
    let (steady, ingest_peak) = rss();
    let per_key = |b: u64| b.saturating_sub(base) as f64 / keys as f64;
    println!("keys={keys}");
    println!("ingest_s={ingest_s:.2}");
    println!("rss_base_mb={:.0}", base as f64 / 1e6);
    println!("rss_steady_per_key={:.1}", per_key(steady));
    println!("rss_peak_ingest_per_key={:.1}", per_key(ingest_peak));

    // checkpoint: pause, encode, store
    reset_peak();
    let t = Instant::now();
    let partials = state.snapshot();
    let pause_ms = ms(t);
    let arrow = arrow_bytes(&partials);
    let t = Instant::now();
    let bytes = encode_partials(&partials).expect("encode");
    let encode_ms = ms(t);
    drop(partials);
    let t = Instant::now();
    let path = dir.join("op-0.arrow");
    {
        let mut f = std::fs::File::create(&path).expect("create");
        f.write_all(&bytes).expect("write");
        f.sync_all().expect("fsync");
    }
    let write_ms = ms(t);
    let (_, cp_peak) = rss();
    let len = bytes.len();
    drop(bytes);
    println!("arrow_bytes_per_key={:.1}", arrow as f64 / keys as f64);
    println!("checkpoint_pause_ms={pause_ms:.0}");
    println!("checkpoint_encode_ms={encode_ms:.0}");
    println!("checkpoint_write_ms={write_ms:.0}");
    println!("checkpoint_total_ms={:.0}", pause_ms + encode_ms + write_ms);
    println!("checkpoint_mb={:.1}", len as f64 / 1e6);
    println!("rss_peak_checkpoint_per_key={:.1}", per_key(cp_peak));

    // restore into fresh operators
    let t = Instant::now();
    let read = std::fs::read(&path).expect("read");
    let restored = State::restore(shape, &schema, decode_partials(&read).expect("decode"));
    drop(read);
    println!("restore_ms={:.0}", ms(t));
    let want = state.totals(shape, &schema);
    let got = restored.totals(shape, &schema);
    assert_eq!(got, want, "the restored state equals the checkpointed one");
    assert_eq!(want, (keys as usize, 2 * keys as i64, want.2));
    println!("restore_equal=true");
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("one") {
        let shape = args.get(2).map_or("window", String::as_str);
        let keys = args
            .get(3)
            .and_then(|k| k.parse().ok())
            .unwrap_or(1_000_000);
        one(shape, keys);
        return;
    }
    let sizes: Vec<u64> = if args.len() > 1 {
        args[1..].iter().filter_map(|a| a.parse().ok()).collect()
    } else {
        vec![1_000_000, 10_000_000]
    };
    let me = std::env::current_exe().expect("own path");
    for keys in sizes {
        for shape in ["window", "view"] {
            let out = Command::new(&me)
                .args(["one", shape, &keys.to_string()])
                .output()
                .expect("run a configuration");
            let text = String::from_utf8_lossy(&out.stdout);
            let line: Vec<String> = text.lines().map(str::to_string).collect();
            println!("{shape} {keys} keys: {}", line.join(" "));
            if !out.status.success() {
                eprintln!("{}", String::from_utf8_lossy(&out.stderr));
                std::process::exit(1);
            }
        }
    }
}
