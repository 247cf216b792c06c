//! Iceberg sinks in a worker pool against a real broker (`scripts/kafka.sh start`, or
//! `KAFKA_BROKERS`): three workers write a window's table and a view's table while an
//! independent client produces the events; one worker is killed between a checkpoint and its
//! commit (the `before_commit` failpoint), a fourth joins, the others stop, and a last one
//! reads to the end. pyiceberg (through the catalog) and DuckDB (over the current snapshot's
//! files) read both tables back equal to the reference model's rows: every window once, one
//! row per view key, and no (worker, epoch) committed twice. Run with the SQLite catalog and
//! with the SQL catalog in PostgreSQL (a throwaway server), and through the repartition topic;
//! bad and late records are dead-lettered as the model says.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_tests::{compare, generate, oracle, oracle_per_dataset, Row};

#[path = "support/crash.rs"]
mod crash;
#[path = "support/iceberg.rs"]
mod iceberg;
#[path = "support/kafka.rs"]
mod kafka_support;
#[path = "support/pool.rs"]
mod pool_support;
#[path = "support/postgres.rs"]
mod postgres;
use kafka_support::{brokers, tool, unique, Running};
use pool_support::{has_claims, slices_of};

const ORACLE_AGGREGATES: &[&str] = &[
    "events=count",
    "records=sum:recordCount",
    "max_bytes=max:sizeBytes",
];

/// Produces `slices` one after the other, 700 ms apart, keyed by datasetName.
struct SliceProducer {
    produced: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<()>,
}

impl SliceProducer {
    fn start(brokers: &str, topic: &str, slices: Vec<PathBuf>, keyed: bool) -> Self {
        let produced = Arc::new(AtomicUsize::new(0));
        let (brokers, topic, count) = (brokers.to_string(), topic.to_string(), produced.clone());
        let thread = std::thread::spawn(move || {
            for s in &slices {
                let how: &[&str] = if keyed {
                    &["--key-field", "datasetName"]
                } else {
                    &["--round-robin"]
                };
                let mut args = vec!["produce", &brokers, &topic, s.to_str().unwrap()];
                args.extend_from_slice(how);
                tool(&args);
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(700));
            }
        });
        SliceProducer { produced, thread }
    }

    fn wait_for(&self, n: usize) {
        let started = Instant::now();
        while self.produced.load(Ordering::SeqCst) < n {
            assert!(started.elapsed() < Duration::from_secs(120), "stuck");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn rows(table: &iceberg::Table, reader: &str) -> Vec<Row> {
    let read = match reader {
        "pyiceberg" => table.pyiceberg(),
        _ => table.duckdb(),
    };
    read.into_iter().collect()
}

/// (worker, epoch) of every snapshot weir committed; panics when one repeats.
fn worker_epochs(table: &iceberg::Table) -> BTreeSet<(String, u64)> {
    let mut seen = BTreeSet::new();
    for s in table.snapshots() {
        let summary = &s["summary"];
        let (Some(w), Some(e)) = (
            summary["weir.worker"].as_str(),
            summary["weir.epoch"].as_str(),
        ) else {
            continue;
        };
        let pair = (w.to_string(), e.parse::<u64>().unwrap());
        assert!(
            seen.insert(pair.clone()),
            "{}: worker {} committed epoch {} twice",
            table.name,
            pair.0,
            pair.1
        );
    }
    seen
}

/// The pool scenario writing tables through `catalog` (a `sqlite://` or `postgres://` URL);
/// `reader_catalog` is what the readers open (a SQLite file's path, or the same URL).
/// With `keyed`, the producer keys messages by datasetName and the source says so; without,
/// they are spread round-robin and the pool repartitions them by the windows' and view's key.
fn pool_writes_iceberg_exactly_once(
    catalog: &str,
    reader_catalog: impl Fn(&Path) -> String,
    keyed: bool,
) {
    let brokers = brokers();
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().to_path_buf();
    let d = keep.as_path();
    let _dir = if std::env::var_os("WEIR_CRASH_KEEP").is_some() {
        // the workers' outputs and tables stay for a look
        eprintln!("keeping {}", d.display());
        std::mem::forget(dir);
        None
    } else {
        Some(dir)
    };
    let events = d.join("events.ndjson");
    let spec = vec![
        "24000",
        "--seed",
        "31",
        "--keys",
        "40",
        "--step-ms",
        "100",
        "--bad-frac",
        "0.002",
        "--late-frac",
        "0.003",
        "--late-ms",
        "180000",
    ];
    generate(&events, &spec);
    let (windows, summary) =
        oracle_per_dataset(&events, ORACLE_AGGREGATES, &d.join("windows.ndjson"));
    // a view has no window: one window over all time holds every valid event
    let mut args = vec!["--key", "datasetName", "--size", "100000d", "--ooo", "5s"];
    for a in ORACLE_AGGREGATES {
        args.extend(["--agg", a]);
    }
    let (view, _) = oracle(&events, &args, &d.join("view.ndjson"));
    let view: Vec<Row> = view
        .into_iter()
        .map(|mut r| {
            r.remove("window_start");
            r.remove("window_end");
            r
        })
        .collect();

    let (input, group) = (unique("pool-lake-in"), unique("pool-lake"));
    // a pipeline name of its own: the internal topic is named after it, and one shared by
    // every run on a broker grows with each (a fresh pool skips an earlier pool's messages,
    // see pool.rs, but reads them all first)
    let name = unique("pool-lake");
    tool(&["create", &brokers, &input, "8"]);
    let pipeline = d.join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: {name}
sources:
  events:
    kafka: {{ brokers: "{brokers}", topic: {input}, group_id: "${{POOL_GROUP}}", start_from: earliest }}
{partitioned}
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: 1m
    aggregates:
      events: count(*)
      records: sum(recordCount)
      max_bytes: max(sizeBytes)
    sinks: [windows_lake]
views:
  totals:
    from: events
    key: [datasetName]
    aggregates:
      events: count(*)
      records: sum(recordCount)
      max_bytes: max(sizeBytes)
    sinks: [view_lake]
sinks:
  windows_lake: {{ iceberg: {{ catalog: "{catalog}", warehouse: lake, table: analytics.per_dataset }} }}
  view_lake: {{ iceberg: {{ catalog: "{catalog}", warehouse: lake, table: analytics.totals }} }}
dead_letter: {{ file: {{ path: out/dead.ndjson }} }}
checkpoint: {{ dir: state, interval: 1s }}
"#,
            partitioned = if keyed {
                "    partitioned_by: [datasetName]"
            } else {
                "    # not keyed: the pool repartitions it"
            }
        ),
    )
    .unwrap();
    let started = Instant::now();
    let producer = SliceProducer::start(&brokers, &input, slices_of(&events, 2000), keyed);
    let worker = |id: &str, extra: &[&str], env: &[(&str, &str)], group: &str| {
        let mut args = vec!["--worker", id];
        args.extend_from_slice(extra);
        let mut env = env.to_vec();
        env.push(("POOL_GROUP", group));
        Running::start_with(&pipeline, &args, &env)
    };
    // b stops for good at its eleventh checkpoint's commit: the checkpoint is complete, its
    // Iceberg snapshots are not committed. The workers start once events are in the topic,
    // and the first rebalances take some of b's checkpoints (hand-overs): this one must hold
    // events (an empty epoch commits no snapshot, and b's roll-forward is not seen)
    producer.wait_for(1);
    let a = worker("a", &[], &[], &group);
    let b = worker(
        "b",
        &[],
        &[("WEIR_FAILPOINT_PAUSE", "before_commit:600000:10")],
        &group,
    );
    let c = worker("c", &[], &[], &group);
    for w in [&a, &b, &c] {
        w.wait_for("partitions for every worker", has_claims);
    }
    b.wait_for("b's paused commit", |r| {
        r.lines()
            .iter()
            .any(|l| l.contains("failpoint before_commit"))
    });
    producer.wait_for(4);
    let b_log = b.kill();
    assert!(b_log.iter().any(|l| l.contains("partition claimed")));
    // its partitions' new owner commits b's checkpoint before going on
    let rolled = |r: &Running| {
        r.lines()
            .iter()
            .any(|l| l.contains("finishing the commit of a checkpoint"))
    };
    let t = Instant::now();
    while !rolled(&a) && !rolled(&c) {
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "nobody finished b's commit;\na:\n{}\nc:\n{}",
            a.lines().join("\n"),
            c.lines().join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // a fourth worker joins
    let dw = worker("d", &[], &[], &group);
    dw.wait_for("d's partitions", has_claims);
    producer.thread.join().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let mut logs = Vec::new();
    for w in [c, dw, a] {
        logs.extend(w.interrupt());
        std::thread::sleep(Duration::from_secs(1));
    }
    // the last worker reads every partition to its end (a group of its own: the state and
    // offsets are in the checkpoint store)
    let e = worker("e", &["--until-caught-up"], &[], &format!("{group}-end"));
    logs.extend(e.wait_within(Duration::from_secs(180)));
    let mut all = b_log.clone();
    all.extend(logs.iter().cloned());
    std::fs::write(d.join("workers.log"), all.join("\n")).unwrap();
    let conflicts = logs
        .iter()
        .filter(|l| l.contains("committed after concurrent commits"))
        .count();
    eprintln!(
        "pool with catalog {}: {:.1} s",
        catalog.split("://").next().unwrap_or_default(),
        started.elapsed().as_secs_f64()
    );

    let table = |name: &str| iceberg::Table {
        python: crash::venv_python(),
        catalog: reader_catalog(d),
        warehouse: d.join("lake").to_string_lossy().into_owned(),
        name: name.to_string(),
        env: Vec::new(),
    };
    let per_dataset = table("analytics.per_dataset");
    let totals = table("analytics.totals");
    for reader in ["pyiceberg", "duckdb"] {
        compare(&windows, &rows(&per_dataset, reader), &["datasetName"]).unwrap_or_else(|e| {
            panic!("{reader}: the windows' table differs from the oracle: {e}")
        });
        // compare() fails on a repeated key: one row per key
        compare(&view, &rows(&totals, reader), &["datasetName"])
            .unwrap_or_else(|e| panic!("{reader}: the view's table differs from the oracle: {e}"));
    }
    // every bad and late record dead-lettered once, in the committed files of the workers
    let mut dead = Vec::new();
    for e in std::fs::read_dir(d.join("out")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("dead.") && name.ends_with(".ndjson") {
            dead.extend(weir_tests::read_ndjson(&e.path()));
        }
    }
    for reason in ["bad", "late"] {
        let found = dead.iter().filter(|r| r["reason"] == reason).count() as u64;
        assert_eq!(
            found,
            summary[reason].as_u64().unwrap(),
            "{reason} records dead-lettered"
        );
    }
    // b's last checkpoint was committed by the worker that took its partitions over (whether
    // it held window rows or only view keys depends on timing); at least three workers wrote
    let committed = worker_epochs(&per_dataset);
    let view_commits = worker_epochs(&totals);
    let workers: BTreeSet<&str> = committed
        .iter()
        .chain(&view_commits)
        .map(|(w, _)| w.as_str())
        .collect();
    assert!(
        workers.contains("b"),
        "no snapshot of worker b: {workers:?}"
    );
    assert!(workers.len() >= 3, "{workers:?}");
    eprintln!(
        "windows: {} rows in {} snapshots; view: {} keys in {} snapshots; {conflicts} commits \
         met a concurrent one and were checked and retried",
        windows.len(),
        committed.len(),
        view.len(),
        view_commits.len()
    );
}

#[test]
fn a_pool_writes_iceberg_tables_exactly_once_with_the_sqlite_catalog() {
    pool_writes_iceberg_exactly_once(
        "sqlite://lake/catalog.db",
        |d| d.join("lake/catalog.db").to_string_lossy().into_owned(),
        true,
    );
}

/// The same through the repartition topic (round-robin producer): each key still lives in
/// one worker at a time, so the view keeps one row per key.
#[test]
fn a_pool_writes_iceberg_tables_exactly_once_through_the_repartition_topic() {
    pool_writes_iceberg_exactly_once(
        "sqlite://lake/catalog.db",
        |d| d.join("lake/catalog.db").to_string_lossy().into_owned(),
        false,
    );
}

#[test]
fn a_pool_writes_iceberg_tables_exactly_once_with_the_postgres_catalog() {
    let pg = postgres::PgServer::start();
    let url = pg.url();
    pool_writes_iceberg_exactly_once(&url, |_| url.clone(), true);
}
