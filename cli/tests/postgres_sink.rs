//! The PostgreSQL sink end to end, against a throwaway PostgreSQL 15 server per test, the
//! tables read back with `psql` (and psycopg once): windows and a view equal to the oracle,
//! with and without checkpoints; an existing table of the wrong shape refused; kill -9s with
//! checkpoints leaving exactly the oracle's rows and one `weir_sink_epochs` row per committed
//! epoch; the server stopped for 30 s mid-run and started again, nothing lost, memory
//! bounded; rows a CHECK constraint or a foreign key refuses dead-lettered with their
//! SQLSTATE; retain's deletes; TLS (`require`, and `verify-full` with the CA file of a
//! private CA); `weir replay` of an hour of a Kafka topic rewriting exactly that hour's rows
//! by key (needs the tests' broker, `scripts/kafka.sh start`).

#[path = "support/crash.rs"]
mod crash;
#[path = "support/kafka.rs"]
mod kafka_support;
#[path = "support/postgres.rs"]
mod postgres;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use postgres::PgServer;
use serde_json::Value;
use weir_tests::{compare, generate, oracle, oracle_per_dataset, Row};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// Generated events, the oracle's windows and view totals.
struct Case {
    dir: tempfile::TempDir,
    input: PathBuf,
    windows: Vec<Row>,
    /// Per source: events and records over all time.
    view: Vec<Row>,
}

impl Case {
    fn new(events: u64, keys: u64) -> Case {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("input.ndjson");
        generate(
            &input,
            &[
                &events.to_string(),
                "--seed",
                "23",
                "--keys",
                &keys.to_string(),
                "--step-ms",
                "30",
                "--unicode-keys",
                "--bad-frac",
                "0.005",
                "--late-frac",
                "0.004",
                "--late-ms",
                "240000",
            ],
        );
        let (windows, _) = oracle_per_dataset(
            &input,
            &["events=count", "records=sum:recordCount"],
            &dir.path().join("windows.ndjson"),
        );
        // the view: a window over all time, lateness allowed without bound
        let (view, _) = oracle(
            &input,
            &[
                "--key",
                "source",
                "--size",
                "100000d",
                "--ooo",
                "100000d",
                "--agg",
                "events=count",
                "--agg",
                "records=sum:recordCount",
            ],
            &dir.path().join("view.ndjson"),
        );
        let view = view
            .into_iter()
            .map(|mut r| {
                r.remove("window_start");
                r.remove("window_end");
                r
            })
            .collect();
        Case {
            dir,
            input,
            windows,
            view,
        }
    }

    /// A pipeline: window `per_dataset` and view `per_source` to PostgreSQL tables of the
    /// same names; `extra` is added to the window sink's settings, `rest` at the end.
    fn pipeline(&self, pg: &PgServer, extra: &str, rest: &str) -> PathBuf {
        let text = format!(
            r#"name: pgtest
sources:
  events:
    file: {{ path: "{input}" }}
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
    sinks: [db_windows]
views:
  per_source:
    from: events
    key: [source]
    aggregates:
      events: count(*)
      records: sum(recordCount)
    sinks: [db_view]
sinks:
  db_windows:
    postgres: {{ url: "postgres://weir:${{PGTEST_PASSWORD}}@127.0.0.1:{port}/postgres", table: public.per_dataset{extra} }}
    retry: {{ initial_backoff: 200ms, max_backoff: 1s, max_retries: 60, circuit_breaker: {{ failures: 5, open_for: 2s }} }}
  db_view:
    postgres: {{ url: "{url}", table: per_source, batch_max_rows: 50 }}
    retry: {{ initial_backoff: 200ms, max_backoff: 1s, max_retries: 60, circuit_breaker: {{ failures: 5, open_for: 2s }} }}
dead_letter: {{ file: {{ path: out/dead.ndjson }} }}
{rest}"#,
            input = self.input.display(),
            port = pg.port,
            url = pg.url(),
        );
        let path = self.dir.path().join("pipeline.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn reset(&self) {
        let _ = std::fs::remove_dir_all(self.dir.path().join("state"));
        let _ = std::fs::remove_dir_all(self.dir.path().join("out"));
    }

    /// Checks both tables against the oracle.
    fn verify(&self, pg: &PgServer) {
        compare(&self.windows, &window_rows(pg), &["datasetName"])
            .unwrap_or_else(|e| panic!("the window table differs from the oracle: {e}"));
        compare(&self.view, &view_rows(pg), &["source"])
            .unwrap_or_else(|e| panic!("the view table differs from the oracle: {e}"));
    }

    fn dead_letters(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("out/dead.ndjson"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// The rows of `sql` read back with psql, as JSON objects.
fn rows(pg: &PgServer, sql: &str) -> Vec<Row> {
    let json = pg.psql(&format!(
        "SELECT coalesce(json_agg(t), '[]'::json) FROM ({sql}) t"
    ));
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

/// The rows of `sql` read with psycopg (the tests' venv), as JSON objects.
fn psycopg_rows(pg: &PgServer, sql: &str) -> Vec<Row> {
    let script = r#"
import json, sys
import psycopg
from psycopg.rows import dict_row
with psycopg.connect(sys.argv[1], row_factory=dict_row) as conn:
    print(json.dumps(conn.execute(sys.argv[2]).fetchall()))
"#;
    let out = Command::new(crash::venv_python())
        .args(["-c", script, &pg.url(), sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The window table, timestamps as epoch ms.
fn window_rows(pg: &PgServer) -> Vec<Row> {
    rows(
        pg,
        "SELECT \"datasetName\", (extract(epoch FROM window_start) * 1000)::bigint AS window_start, \
         (extract(epoch FROM window_end) * 1000)::bigint AS window_end, events, records \
         FROM public.per_dataset",
    )
}

fn view_rows(pg: &PgServer) -> Vec<Row> {
    rows(pg, "SELECT source, events, records FROM public.per_source")
}

fn weir(pipeline: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(WEIR);
    c.env("PGTEST_PASSWORD", "unused-with-trust")
        .env("RUST_LOG", "info")
        .arg("run")
        .arg(pipeline)
        .args(extra);
    c
}

fn run(pipeline: &Path, extra: &[&str]) -> String {
    let o = weir(pipeline, extra).output().unwrap();
    let log = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "weir run failed:\n{log}");
    log
}

/// The epochs recorded per sink, and the rows left in staging tables.
fn epochs(pg: &PgServer) -> (Vec<(String, i64)>, i64) {
    let text = pg.psql("SELECT sink || ' ' || epoch FROM weir_sink_epochs ORDER BY sink, epoch");
    let epochs = text
        .lines()
        .map(|l| {
            let (s, e) = l.split_once(' ').unwrap();
            (s.to_string(), e.parse().unwrap())
        })
        .collect();
    let stages =
        pg.psql("SELECT tablename FROM pg_tables WHERE tablename LIKE '\\_weir\\_stage\\_%'");
    let staged = stages
        .lines()
        .map(|t| {
            pg.psql(&format!("SELECT count(*) FROM public.\"{t}\""))
                .parse::<i64>()
                .unwrap()
        })
        .sum();
    (epochs, staged)
}

/// The newest checkpoint's epoch in `state`.
fn last_checkpoint(state: &Path) -> i64 {
    std::fs::read_dir(state)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().to_string();
            name.strip_prefix("chk-")?.parse::<i64>().ok()
        })
        .max()
        .expect("a checkpoint")
}

#[test]
fn windows_and_a_view_equal_the_oracle_with_and_without_checkpoints() {
    let case = Case::new(40_000, 60);
    let pg = PgServer::start();
    // without checkpoints, two workers
    let pipeline = case.pipeline(&pg, ", batch_max_rows: 300", "");
    case.reset();
    let log = run(&pipeline, &["--parallelism", "2"]);
    assert!(log.contains("postgres table created"), "{log}");
    case.verify(&pg);
    let ddl = pg.psql(
        "SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum) \
         FROM pg_attribute a WHERE a.attrelid = 'public.per_dataset'::regclass AND a.attnum > 0",
    );
    assert_eq!(
        ddl,
        "datasetName text, window_start timestamp with time zone, window_end timestamp with time zone, events bigint, records bigint"
    );
    let pk = pg.psql("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'public.per_dataset'::regclass AND contype = 'p'");
    assert_eq!(pk, "PRIMARY KEY (\"datasetName\", window_start)");
    assert_eq!(
        pg.psql("SELECT to_regclass('public.weir_sink_epochs') IS NULL"),
        "t",
        "no epochs without checkpoints"
    );
    // an application's reader: psycopg sees the same rows
    let psycopg = psycopg_rows(
        &pg,
        "SELECT source, events, records FROM public.per_source ORDER BY source",
    );
    let mut psql = view_rows(&pg);
    psql.sort_by_key(|r| r["source"].as_str().unwrap_or_default().to_string());
    assert_eq!(psycopg, psql);
    // the same pipeline again, checkpointed, into the tables it left: rows upserted in place
    let pipeline = case.pipeline(&pg, "", "checkpoint: { dir: state, interval: 200ms }\n");
    case.reset();
    run(&pipeline, &[]);
    case.verify(&pg);
    let (epochs, staged) = epochs(&pg);
    assert_eq!(staged, 0, "rows left in the staging tables");
    let last = last_checkpoint(&case.dir.path().join("state"));
    for sink in ["db_view", "db_windows"] {
        let mine: Vec<i64> = epochs.iter().filter(|e| e.0 == sink).map(|e| e.1).collect();
        assert_eq!(mine.last(), Some(&last), "{sink}: {epochs:?}");
    }
}

#[test]
fn an_existing_table_with_a_wrong_column_type_is_refused_naming_the_column() {
    let case = Case::new(2_000, 10);
    let pg = PgServer::start();
    pg.psql(
        "CREATE TABLE public.per_dataset (\"datasetName\" varchar(200), window_start timestamp, \
         window_end timestamptz, events text, records numeric, PRIMARY KEY (\"datasetName\", window_start))",
    );
    let pipeline = case.pipeline(&pg, "", "");
    let o = weir(&pipeline, &[]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("sink `db_windows`: table public.per_dataset: column `events` is text, but the output's `events` is Int64: it must be one of bigint, integer, smallint, numeric"),
        "{err}"
    );
    // with the column fixed, the other types (varchar, timestamp, numeric) are accepted
    pg.psql("ALTER TABLE public.per_dataset ALTER COLUMN events TYPE bigint USING events::bigint");
    case.reset();
    run(&pipeline, &[]);
    case.verify(&pg);
    // no key to upsert by
    pg.psql("DROP TABLE public.per_source; CREATE TABLE public.per_source (source text, events bigint, records bigint)");
    let o = weir(&pipeline, &[]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "table public.per_source has no primary key or unique index on exactly (source)"
        ),
        "{err}"
    );
    // a unique index over a key that may be NULL: NULL keys would be inserted again
    pg.psql("CREATE UNIQUE INDEX per_source_key ON public.per_source (source)");
    let o = weir(&pipeline, &[]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("key column `source` may be NULL"), "{err}");
    // unless the index takes NULLs as equal (PostgreSQL 15)
    pg.psql("DROP INDEX public.per_source_key; CREATE UNIQUE INDEX per_source_key ON public.per_source (source) NULLS NOT DISTINCT");
    case.reset();
    run(&pipeline, &[]);
    case.verify(&pg);
}

/// A merge that takes longer than the sink's `timeout` (here a statement trigger on the
/// table that sleeps 2 s, with `timeout: 1s`): the sink waits longer at each try instead of
/// abandoning the merge and sending it again for ever (each try waiting behind the locks of
/// the one before), and the table equals the oracle. The database's own `statement_timeout`
/// (shorter than the merge) does not end the sink's statements: each try would fail alike.
#[test]
fn a_merge_slower_than_the_timeout_is_waited_for() {
    let case = Case::new(2_000, 10);
    let pg = PgServer::start();
    pg.psql("ALTER DATABASE postgres SET statement_timeout = '500ms'");
    pg.psql(
        "CREATE TABLE public.per_dataset (\"datasetName\" text, window_start timestamptz, \
         window_end timestamptz, events bigint, records bigint, PRIMARY KEY (\"datasetName\", window_start)); \
         CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$; \
         CREATE TRIGGER slow AFTER INSERT ON public.per_dataset FOR EACH STATEMENT EXECUTE FUNCTION slow()",
    );
    let pipeline = case.pipeline(&pg, ", timeout: 1s", "");
    let log = run(&pipeline, &[]);
    assert!(log.contains("the next try waits longer"), "{log}");
    case.verify(&pg);
}

#[test]
fn kill_9_and_restarts_leave_exactly_the_oracles_rows_and_each_epoch_once() {
    let case = Case::new(300_000, 100);
    let pg = PgServer::start();
    let pipeline = case.pipeline(
        &pg,
        ", batch_max_rows: 500",
        "checkpoint: { dir: state, interval: 150ms }\n",
    );
    case.reset();
    let logs = case.dir.path().join("logs");
    let report = crash::crash_loop(
        || weir(&pipeline, &[]),
        4,
        Duration::from_millis(300),
        &logs,
        || {
            case.reset();
        },
    );
    eprintln!("{report:?}");
    case.verify(&pg);
    let (epochs, staged) = epochs(&pg);
    assert_eq!(staged, 0, "rows left in the staging tables");
    let last = last_checkpoint(&case.dir.path().join("state"));
    for sink in ["db_view", "db_windows"] {
        let mine: Vec<i64> = epochs.iter().filter(|e| e.0 == sink).map(|e| e.1).collect();
        assert_eq!(mine.last(), Some(&last), "{sink}: {epochs:?}");
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
    }
    let logs: String = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect();
    eprintln!(
        "{} epochs committed; {} commits finished by a restore, {} restores dropped staged rows",
        epochs.len(),
        logs.matches("committed the epoch a crash interrupted")
            .count(),
        logs.matches("rows staged after the checkpoint were dropped")
            .count()
    );
}

#[test]
fn the_server_stopped_for_30_seconds_mid_run_loses_nothing() {
    let case = Case::new(200_000, 100);
    let mut pg = PgServer::start();
    let pipeline = case.pipeline(
        &pg,
        ", batch_max_rows: 200, flush_interval: 50ms",
        "checkpoint: { dir: state, interval: 200ms }\n",
    );
    case.reset();
    let log = case.dir.path().join("run.log");
    let mut child = weir(&pipeline, &[])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    // the first windows are in: stop the server for a while, mid-run
    while pg
        .try_psql("SELECT count(*) FROM public.per_dataset")
        .map_or(true, |n| n == "0")
    {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        assert!(started.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(20));
    }
    pg.stop();
    let down = Instant::now();
    let mut peak = 0u64;
    while down.elapsed() < Duration::from_secs(30) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended while the server was down:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        // backpressure: the sources wait, memory stays bounded
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
        if let Some(kb) = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
        {
            peak = peak.max(kb << 10);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    pg.restart();
    eprintln!("peak RSS while the server was down: {} MiB", peak >> 20);
    assert!(peak < 300 << 20, "peak RSS {} MiB", peak >> 20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the run did not finish"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(
        text.contains("postgres unavailable"),
        "the outage was not seen:\n{text}"
    );
    case.verify(&pg);
    assert_eq!(epochs(&pg).1, 0);
}

/// A column type changed by `ALTER TABLE` while the sink runs, then every connection cut:
/// the sink connects again and copies its rows into the staging table it had, encoded for
/// that table's types (they were encoded for the table's new type: a `bigint` read by a
/// `numeric` staging column stored 7 as 0), and the merge casts them into the new column.
#[test]
fn a_column_type_changed_mid_run_keeps_every_number() {
    let case = Case::new(200_000, 100);
    let pg = PgServer::start();
    pg.psql(
        "CREATE TABLE public.per_dataset (\"datasetName\" text NOT NULL, window_start timestamptz NOT NULL, \
         window_end timestamptz, events bigint, records numeric, PRIMARY KEY (\"datasetName\", window_start))",
    );
    let pipeline = case.pipeline(
        &pg,
        ", batch_max_rows: 200, flush_interval: 50ms",
        "checkpoint: { dir: state, interval: 200ms }\n",
    );
    case.reset();
    let log = case.dir.path().join("run.log");
    let mut child = weir(&pipeline, &[])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while pg
        .try_psql("SELECT count(*) FROM public.per_dataset")
        .map_or(true, |n| n == "0")
    {
        assert!(child.try_wait().unwrap().is_none(), "the run ended early");
        assert!(started.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(20));
    }
    pg.psql(
        "ALTER TABLE public.per_dataset ALTER COLUMN records TYPE bigint; \
         SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'",
    );
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the run did not finish"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(
        !case.dir.path().join("out/dead.ndjson").exists()
            || std::fs::read_to_string(case.dir.path().join("out/dead.ndjson"))
                .unwrap()
                .lines()
                .all(|l| !l.contains("rejected")),
        "rows were refused"
    );
    case.verify(&pg);
}

/// A statement that goes unanswered (here: the merge waiting for a lock another session
/// holds for 6 s) is ended on the server when the sink gives up on it after `timeout`, so
/// that the tries sent again do not pile up behind the lock: at no moment does more than
/// one of the sink's statements wait for it. The run then ends with the oracle's rows.
#[test]
fn an_unanswered_statement_is_ended_on_the_server() {
    let case = Case::new(2_000, 10);
    let pg = PgServer::start();
    pg.psql(
        "CREATE TABLE public.per_dataset (\"datasetName\" text, window_start timestamptz, \
         window_end timestamptz, events bigint, records bigint, PRIMARY KEY (\"datasetName\", window_start))",
    );
    let mut holder = pg.spawn_psql(
        "BEGIN; LOCK TABLE public.per_dataset IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(6); COMMIT;",
    );
    let waiting_sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'weir' \
                       AND wait_event_type = 'Lock'";
    let started = Instant::now();
    while pg.psql("SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND relation = 'public.per_dataset'::regclass") != "1" {
        assert!(started.elapsed() < Duration::from_secs(10), "the lock was not taken");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pipeline = case.pipeline(&pg, ", timeout: 1s", "");
    let mut child = weir(&pipeline, &[]).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap());
    let mut most_waiting = 0;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let waiting: u32 = pg.psql(waiting_sql).parse().unwrap();
        most_waiting = most_waiting.max(waiting);
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = log.join().unwrap();
    assert!(status.success(), "{log}");
    assert!(holder.wait().unwrap().success());
    assert!(
        log.contains("the unanswered statement was ended on the server"),
        "{log}"
    );
    assert_eq!(
        most_waiting, 1,
        "the sink's statements waiting for the lock at once:\n{log}"
    );
    case.verify(&pg);
}

/// A key column of type `character(n)` makes `ds` and `ds ` one key to the table while the
/// output holds two rows: the merge would touch a table row twice (SQLSTATE 21000, which
/// used to fail the run for good: the run without checkpoints, whose batches of distinct keys
/// skip the merge's `DISTINCT ON`). The sink merges them as the table compares them, with a
/// warning; with checkpoints the merge always deduplicates. Either way the table equals the
/// oracle of the input without the padded copies (each copy aggregates as its original).
#[test]
fn keys_equal_only_to_the_table_are_merged_as_one_with_a_warning() {
    let case = Case::new(3_000, 8);
    let victim = case.windows[0]["datasetName"].as_str().unwrap().to_string();
    let original = std::fs::read_to_string(&case.input).unwrap();
    let mut padded = String::new();
    for line in original.lines() {
        padded.push_str(line);
        padded.push('\n');
        if let Ok(mut v) = serde_json::from_str::<Value>(line) {
            if v["datasetName"] == victim.as_str() {
                v["datasetName"] = Value::String(format!("{victim} "));
                padded.push_str(&v.to_string());
                padded.push('\n');
            }
        }
    }
    std::fs::write(&case.input, padded).unwrap();
    let pg = PgServer::start();
    for checkpoint in ["", "checkpoint: { dir: state, interval: 200ms }\n"] {
        pg.psql("DROP TABLE IF EXISTS public.per_dataset");
        pg.psql(
            "CREATE TABLE public.per_dataset (\"datasetName\" character(64) NOT NULL, window_start timestamptz NOT NULL, \
             window_end timestamptz, events bigint, records bigint, PRIMARY KEY (\"datasetName\", window_start))",
        );
        let pipeline = case.pipeline(&pg, "", checkpoint);
        case.reset();
        let log = run(&pipeline, &[]);
        if checkpoint.is_empty() {
            assert!(
                log.contains("keys distinct in the output are equal to the table"),
                "{log}"
            );
        }
        let table = rows(
            &pg,
            "SELECT rtrim(\"datasetName\") AS \"datasetName\", (extract(epoch FROM window_start) * 1000)::bigint AS window_start, \
             (extract(epoch FROM window_end) * 1000)::bigint AS window_end, events, records FROM public.per_dataset",
        );
        compare(&case.windows, &table, &["datasetName"])
            .unwrap_or_else(|e| panic!("{checkpoint}: the table differs from the oracle: {e}"));
        assert!(
            !case
                .dead_letters()
                .iter()
                .any(|d| d["reason"] == "rejected"),
            "{checkpoint}"
        );
    }
}

#[test]
fn rows_the_table_refuses_go_to_the_dead_letters_with_their_sqlstate() {
    let case = Case::new(20_000, 30);
    let pg = PgServer::start();
    // the table applications made: one dataset's windows break a CHECK constraint (found
    // when staged: the staging table has the table's CHECKs) or a foreign key (found when
    // merged, row by row)
    let victim = case.windows[0]["datasetName"].as_str().unwrap().to_string();
    let quoted = victim.replace('\'', "''");
    let refused: Vec<Row> = case
        .windows
        .iter()
        .filter(|r| r["datasetName"] == victim.as_str())
        .cloned()
        .collect();
    let rest: Vec<Row> = case
        .windows
        .iter()
        .filter(|r| r["datasetName"] != victim.as_str())
        .cloned()
        .collect();
    assert!(!refused.is_empty() && !rest.is_empty());
    let names: Vec<String> = rest
        .iter()
        .map(|r| {
            format!(
                "('{}')",
                r["datasetName"].as_str().unwrap().replace('\'', "''")
            )
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    pg.psql(&format!(
        "CREATE TABLE public.datasets (name text PRIMARY KEY); INSERT INTO public.datasets VALUES {}",
        names.join(", ")
    ));
    let check = format!("CONSTRAINT no_victim CHECK (\"datasetName\" <> '{quoted}')");
    let foreign =
        "CONSTRAINT known_dataset FOREIGN KEY (\"datasetName\") REFERENCES public.datasets (name)"
            .to_string();
    // a deferred foreign key is checked at each statement all the same (at the commit, no
    // row could be set aside)
    let deferred = format!("{foreign} DEFERRABLE INITIALLY DEFERRED");
    for (constraint, sqlstate, name) in [
        (&check, "23514", "no_victim"),
        (&foreign, "23503", "known_dataset"),
        (&deferred, "23503", "known_dataset"),
    ] {
        for checkpoint in ["", "checkpoint: { dir: state, interval: 200ms }\n"] {
            pg.psql("DROP TABLE IF EXISTS public.per_dataset");
            pg.psql(&format!(
                "CREATE TABLE public.per_dataset (\"datasetName\" text NOT NULL, window_start timestamptz NOT NULL, \
                 window_end timestamptz, events bigint, records bigint, PRIMARY KEY (\"datasetName\", window_start), {constraint})"
            ));
            let pipeline = case.pipeline(&pg, ", batch_max_rows: 500", checkpoint);
            case.reset();
            run(&pipeline, &[]);
            compare(&rest, &window_rows(&pg), &["datasetName"]).unwrap();
            let dead: Vec<Value> = case
                .dead_letters()
                .into_iter()
                .filter(|v| v["reason"] == "rejected")
                .collect();
            assert_eq!(dead.len(), refused.len(), "{name} {checkpoint}: {dead:?}");
            for d in &dead {
                assert_eq!(d["sink"], "db_windows");
                assert_eq!(d["error"]["code"], "postgres_refused");
                assert_eq!(d["error"]["details"]["sqlstate"], sqlstate, "{d}");
                assert_eq!(d["error"]["details"]["table"], "public.per_dataset");
                assert!(
                    d["error"]["message"].as_str().unwrap().contains(name),
                    "{d}"
                );
            }
            let raw: Vec<Row> = dead
                .iter()
                .map(|d| serde_json::from_str(d["raw"].as_str().unwrap()).unwrap())
                .collect();
            compare(&refused, &raw, &["datasetName"]).unwrap();
            assert!(
                raw[0]["window_start"].as_str().unwrap().ends_with(".000Z"),
                "{:?}",
                raw[0]
            );
        }
    }
}

#[test]
fn expired_view_keys_are_deleted() {
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let all = weir_tests::retain_events();
    // the first run sees the events up to 30 s: every key is written
    let first: String = all
        .lines()
        .filter(|l| {
            let e: Value = serde_json::from_str(l).unwrap();
            e["timestamp"].as_i64().unwrap() <= 1_700_000_030_000
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let input = dir.path().join("events.ndjson");
    std::fs::write(&input, &first).unwrap();
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        weir_tests::retain_pipeline(
            "retain",
            "file: { path: events.ndjson }",
            &format!("{{ postgres: {{ url: \"{}\", table: public.services }} }}", pg.url()),
            "dead_letter: { file: { path: out/dead.ndjson } }\ncheckpoint: { dir: state, interval: 1s }\n",
        ),
    )
    .unwrap();
    let services = || {
        pg.psql("SELECT string_agg(\"serviceName\" || ' ' || status || ' ' || checks, ', ' ORDER BY \"serviceName\") FROM public.services")
    };
    run(&pipeline, &[]);
    let first = services();
    let names: Vec<&str> = first
        .split(", ")
        .map(|s| s.split(' ').next().unwrap())
        .collect();
    assert_eq!(names, ["fresh", "mid", "old", "recent"], "{first}");
    // the rest of the input, read after the restore: old and mid expire
    std::fs::write(&input, &all).unwrap();
    run(&pipeline, &[]);
    assert_eq!(services(), "fresh HEALTHY 13, recent DEGRADED 2");
}

/// A CA and a server certificate it signed for 127.0.0.1 and localhost, in `dir`: the CA's
/// certificate, the server's certificate and its key.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n);
    let openssl = |args: &[&str]| {
        let ok = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl {args:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=weir test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(p("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ]);
    let ok = Command::new("chmod")
        .arg("600")
        .arg(p("server.key"))
        .status()
        .unwrap()
        .success();
    assert!(ok);
    (p("ca.crt"), p("server.crt"), p("server.key"))
}

#[test]
fn tls_require_and_verify_full_against_a_private_ca() {
    let case = Case::new(2_000, 10);
    let ca = case.dir.path().join("ca.crt");
    let pg = PgServer::start_with(|data| {
        let (ca_cert, cert, key) = certificates(data);
        std::fs::copy(&ca_cert, &ca).unwrap();
        // TLS only: a plain connection finds no pg_hba.conf entry
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        vec![
            ("ssl".into(), "on".into()),
            ("ssl_cert_file".into(), cert.display().to_string()),
            ("ssl_key_file".into(), key.display().to_string()),
        ]
    });
    // the view sink's URL asks for TLS itself
    let pipeline_with = |extra: &str| {
        let p = case.pipeline(&pg, extra, "");
        let text = std::fs::read_to_string(&p).unwrap().replace(
            "/postgres\", table: per_source",
            "/postgres?sslmode=require\", table: per_source",
        );
        std::fs::write(&p, text).unwrap();
        p
    };
    for (extra, ok) in [
        (", tls: disable", false),
        (", tls: require", true),
        (
            &format!(", tls: verify-full, ca_file: \"{}\"", ca.display()) as &str,
            true,
        ),
        (", tls: verify-full", false),
    ] {
        pg.psql("DROP TABLE IF EXISTS public.per_dataset, public.per_source");
        case.reset();
        let o = weir(&pipeline_with(extra), &[]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.success(), ok, "{extra}: {err}");
        if ok {
            case.verify(&pg);
        } else {
            assert!(err.contains("sink `db_windows`"), "{extra}: {err}");
        }
    }
}

/// Windows starting in the replayed hour (`2023-11-14T23:15:00Z` to `2023-11-15T00:15:00Z`).
const REPLAY_FROM: (&str, i64) = ("2023-11-14T23:15:00Z", 1_700_003_700_000);
const REPLAY_TO: (&str, i64) = ("2023-11-15T00:15:00Z", 1_700_007_300_000);

/// The window table with each row's `xmin` (the transaction that last wrote it), in key
/// order.
fn window_rows_with_xmin(pg: &PgServer) -> Vec<(Row, String)> {
    rows(
        pg,
        "SELECT \"datasetName\", (extract(epoch FROM window_start) * 1000)::bigint AS window_start, \
         (extract(epoch FROM window_end) * 1000)::bigint AS window_end, events, records, \
         xmin::text AS xmin FROM public.per_dataset",
    )
    .into_iter()
    .map(|mut r| {
        let xmin = r.remove("xmin").unwrap().as_str().unwrap().to_string();
        let id = format!("{} {}", r["datasetName"], r["window_start"]);
        (id, (r, xmin))
    })
    .collect::<std::collections::BTreeMap<String, _>>()
    .into_values()
    .collect()
}

fn replayed(r: &Row) -> bool {
    (REPLAY_FROM.1..REPLAY_TO.1).contains(&r["window_start"].as_i64().unwrap())
}

/// `weir replay` of the hour above with the live run's pipeline file; returns its output.
fn replay(pipeline: &Path) -> String {
    let o = kafka_support::weir()
        .args(["replay", pipeline.to_str().unwrap()])
        .args(["--from", REPLAY_FROM.0, "--to", REPLAY_TO.0])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "weir replay failed:\n{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[test]
fn a_replay_rewrites_its_range_by_key_and_nothing_else() {
    let brokers = kafka_support::brokers();
    let pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // three hours of events in a 3-partition topic, message timestamps = event times
    let events = d.join("events.ndjson");
    generate(
        &events,
        &[
            "60000",
            "--seed",
            "5",
            "--keys",
            "50",
            "--step-ms",
            "180",
            "--bad-frac",
            "0.005",
            "--late-frac",
            "0.004",
            "--late-ms",
            "240000",
        ],
    );
    let (expected, _) = oracle(
        &events,
        &[
            "--key",
            "datasetName",
            "--size",
            "5m",
            "--ooo",
            "5s",
            "--agg",
            "events=count",
            "--agg",
            "records=sum:recordCount",
        ],
        &d.join("expected.ndjson"),
    );
    let topic = kafka_support::unique("pg-replay-in");
    kafka_support::tool(&["create", &brokers, &topic, "3"]);
    kafka_support::tool(&[
        "produce",
        &brokers,
        &topic,
        events.to_str().unwrap(),
        "--timestamp-field",
        "timestamp",
    ]);
    let pipeline = d.join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: pgreplay
sources:
  events:
    kafka: {{ brokers: "{brokers}", topic: {topic}, group_id: {group}, start_from: earliest }}
    format: json
    schema: data-ingestion
    partitioned_by: [datasetName]
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: 5m
    aggregates:
      events: count(*)
      records: sum(recordCount)
    sinks: [db]
sinks:
  db: {{ postgres: {{ url: "{url}", table: public.per_dataset }} }}
dead_letter: {{ file: {{ path: out/dead_letter.ndjson }} }}
checkpoint: {{ dir: state, interval: 1s }}
"#,
            group = kafka_support::unique("pg-replay-live"),
            url = pg.url(),
        ),
    )
    .unwrap();
    let live = |what: &str| {
        let o = kafka_support::weir()
            .args(["run", pipeline.to_str().unwrap(), "--until-caught-up"])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{what} failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let keys = ["datasetName"];
    live("the live run");
    compare(&expected, &window_rows(&pg), &keys).expect("the live run's table");
    let in_range = expected.iter().filter(|r| replayed(r)).count();
    assert!(
        in_range > 100 && in_range < expected.len() / 2,
        "{in_range}"
    );
    let (live_epochs, staged) = epochs(&pg);
    assert_eq!(staged, 0);

    // a bug's damage in the range: wrong counts, a window lost; and outside it
    let range = format!(
        "window_start >= to_timestamp({}) AND window_start < to_timestamp({})",
        REPLAY_FROM.1 / 1000,
        REPLAY_TO.1 / 1000
    );
    pg.psql(&format!(
        "UPDATE public.per_dataset SET events = events + 1000 WHERE {range}; \
         DELETE FROM public.per_dataset WHERE ctid = (SELECT min(ctid) FROM public.per_dataset WHERE {range})"
    ));
    assert!(compare(&expected, &window_rows(&pg), &keys).is_err());
    let before: Vec<(Row, String)> = window_rows_with_xmin(&pg);
    let outside: Vec<&(Row, String)> = before.iter().filter(|(r, _)| !replayed(r)).collect();

    // the replay, with the live run's file and default settings, rewrites the range by key
    let out = replay(&pipeline);
    assert!(
        out.contains(&format!("sink db: {in_range} windows rewritten")),
        "{out}"
    );
    compare(&expected, &window_rows(&pg), &keys)
        .unwrap_or_else(|e| panic!("the table after the replay differs from the oracle: {e}"));
    let after = window_rows_with_xmin(&pg);
    let untouched = |after: &[(Row, String)]| {
        let now: Vec<&(Row, String)> = after.iter().filter(|(r, _)| !replayed(r)).collect();
        assert_eq!(now, outside, "rows outside the range were written");
    };
    untouched(&after);
    let old: std::collections::BTreeSet<&String> = before.iter().map(|(_, x)| x).collect();
    for (r, xmin) in after.iter().filter(|(r, _)| replayed(r)) {
        assert!(!old.contains(xmin), "not rewritten by the replay: {r:?}");
    }
    // the replay has no checkpoint: it records no epoch and leaves no staged rows
    assert_eq!(epochs(&pg), (live_epochs.clone(), 0));
    // replaying again leaves the same table
    replay(&pipeline);
    compare(&expected, &window_rows(&pg), &keys).unwrap();
    untouched(&window_rows_with_xmin(&pg));
    assert_eq!(epochs(&pg), (live_epochs.clone(), 0));
    // the live run restores its checkpoint, finds nothing new and goes on with the next epoch
    let stdout = live("the live run again");
    assert!(stdout.contains("restored from checkpoint"), "{stdout}");
    compare(&expected, &window_rows(&pg), &keys).unwrap();
    let (epochs, staged) = epochs(&pg);
    assert_eq!(staged, 0);
    let mine: Vec<i64> = epochs.iter().map(|e| e.1).collect();
    assert!(mine.windows(2).all(|w| w[0] < w[1]), "{mine:?}");
    assert_eq!(mine.last(), Some(&last_checkpoint(&d.join("state"))));
    assert!(mine.len() >= live_epochs.len(), "{mine:?} {live_epochs:?}");
}
