//! A worker pool writing PostgreSQL tables, against a real broker (`scripts/kafka.sh start`,
//! or `KAFKA_BROKERS`) and a throwaway PostgreSQL 15 server: three workers (`weir run
//! --worker ID --until-caught-up`) share a keyed topic and upsert one window table and one
//! view table; one worker is killed between a complete checkpoint and its commit (and
//! started again at once, or not at all); whoever restores its partitions from that
//! checkpoint (another worker, under the killed one's epoch sequence, or the worker itself)
//! finishes the commit. The tables, read back with psql, equal the reference model's
//! (`tests/model/window_model.py`): no row lost, none applied twice, each worker's epochs
//! recorded in its own `weir_sink_epochs` rows.

#[path = "support/crash.rs"]
mod crash;
#[path = "support/kafka.rs"]
mod kafka_support;
#[path = "support/postgres.rs"]
mod postgres;

use std::path::Path;
use std::time::Duration;

use kafka_support::{brokers, tool, unique, Running};
use postgres::PgServer;
use weir_tests::{compare, generate, oracle, oracle_per_dataset, Row};

/// The rows of `sql` read back with psql, as JSON objects.
fn rows(pg: &PgServer, sql: &str) -> Vec<Row> {
    let json = pg.psql(&format!(
        "SELECT coalesce(json_agg(t), '[]'::json) FROM ({sql}) t"
    ));
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

/// Worker b killed between a complete checkpoint and its commit, and started again at once
/// (the killed process stays a member of the group until its session times out): its
/// checkpoint is committed by whoever restores its partitions (another worker under b's
/// epoch sequence, or b itself).
#[test]
fn a_pool_of_three_with_a_worker_killed_and_restarted_writes_postgres_exactly_once() {
    pool_case(true);
}

/// Worker b killed between a complete checkpoint and its commit, and not started again: the
/// others take its partitions over once its session timed out and commit that checkpoint
/// under b's epoch sequence. (A worker started again only after that meets a known stall of
/// the tests' broker, tansu, which keeps a killed member's partitions until another member
/// joins: the first test restarts it at once, as users do.)
#[test]
fn a_pool_whose_killed_worker_does_not_come_back_writes_postgres_exactly_once() {
    pool_case(false);
}

/// Waits for every worker to end, at most `limit` in all; their logs, in order. Fails naming
/// every worker that did not end cleanly, with the logs of all of them (a stalled worker is
/// usually explained by what the others did), which are also written to `dir`.
fn finish_all(workers: Vec<(&str, Running)>, limit: Duration, dir: &Path) -> Vec<Vec<String>> {
    let started = std::time::Instant::now();
    let mut ended = Vec::new();
    let mut failed = Vec::new();
    for (name, w) in workers {
        let (status, log) = w.end_within(limit.saturating_sub(started.elapsed()));
        std::fs::write(dir.join(format!("{name}.log")), log.join("\n")).unwrap();
        if !status.as_ref().is_some_and(|s| s.success()) {
            failed.push(format!("{name}: {status:?}"));
        }
        ended.push((name, log));
    }
    if !failed.is_empty() {
        let all: Vec<String> = ended
            .iter()
            .map(|(name, log)| format!("---- {name} ----\n{}", log.join("\n")))
            .collect();
        panic!(
            "workers that did not end cleanly: {}\n{}",
            failed.join(", "),
            all.join("\n")
        );
    }
    ended.into_iter().map(|(_, log)| log).collect()
}

/// Three workers, b killed at `before_commit_owning` and started again at once when
/// `restart`; both tables must equal the oracle's.
fn pool_case(restart: bool) {
    let brokers = brokers();
    let pg = PgServer::start();
    // a weir_sink_epochs of an earlier version (no worker column): it is migrated
    pg.psql(
        "CREATE TABLE weir_sink_epochs (pipeline text NOT NULL, sink text NOT NULL, \
         epoch bigint NOT NULL, committed_at timestamptz NOT NULL DEFAULT now(), \
         PRIMARY KEY (pipeline, sink, epoch)); \
         INSERT INTO weir_sink_epochs (pipeline, sink, epoch) VALUES ('older', 'db', 7)",
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    if std::env::var_os("WEIR_CRASH_KEEP").is_some() {
        eprintln!("keeping {}", d.display());
        std::mem::forget(dir);
    }
    let events = d.join("events.ndjson");
    generate(
        &events,
        &["60000", "--seed", "31", "--keys", "40", "--step-ms", "100"],
    );
    let aggs = ["events=count", "records=sum:recordCount"];
    let (windows, _) = oracle_per_dataset(&events, &aggs, &d.join("windows.ndjson"));
    let (view, _) = oracle(
        &events,
        &[
            "--key",
            "datasetName",
            "--size",
            "100000d",
            "--ooo",
            "100000d",
            "--agg",
            aggs[0],
            "--agg",
            aggs[1],
        ],
        &d.join("view.ndjson"),
    );
    let view: Vec<Row> = view
        .into_iter()
        .map(|mut r| {
            r.remove("window_start");
            r.remove("window_end");
            r
        })
        .collect();
    let (input, group) = (unique("pool-pg-in"), unique("pool-pg"));
    tool(&["create", &brokers, &input, "6"]);
    tool(&[
        "produce",
        &brokers,
        &input,
        events.to_str().unwrap(),
        "--key-field",
        "datasetName",
    ]);
    let pipeline = d.join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: pool-pg
sources:
  events:
    kafka:
      brokers: "{brokers}"
      topic: {input}
      group_id: "{group}"
      start_from: earliest
      properties: {{ max.partition.fetch.bytes: "32768" }}
    partitioned_by: [datasetName]
    format: json
    schema: data-ingestion
    event_time: {{ field: timestamp, max_out_of_orderness: 5s }}
windows:
  per_dataset:
    from: events
    key: [datasetName]
    tumbling: 1m
    aggregates: {{ events: count(*), records: sum(recordCount) }}
    sinks: [db_windows]
views:
  totals:
    from: events
    key: [datasetName]
    aggregates: {{ events: count(*), records: sum(recordCount) }}
    sinks: [db_view]
sinks:
  db_windows: {{ postgres: {{ url: "{url}", table: public.per_dataset }} }}
  db_view: {{ postgres: {{ url: "{url}", table: public.totals, batch_max_rows: 50 }} }}
dead_letter: {{ file: {{ path: out/dead.ndjson }} }}
checkpoint: {{ dir: state, interval: 300ms }}
"#,
            url = pg.url(),
        ),
    )
    .unwrap();
    let worker = |id: &str, env: &[(&str, &str)]| {
        Running::start_with(
            &pipeline,
            &["--worker", id, "--until-caught-up"],
            &[&[("RUST_LOG", "info")], env].concat(),
        )
    };
    // b stops at its first complete checkpoint owning partitions, before committing it:
    // killed there. It joins first, so that it owns partitions before the others have read
    // them all (three workers read this input in a few seconds: a b that joined last could
    // be given partitions only once they were finished, and never reach the point).
    let b = worker(
        "b",
        &[("WEIR_FAILPOINT_PAUSE", "before_commit_owning:60000")],
    );
    b.wait_for("b's first partitions", |r| r.assignments() > 0);
    let a = worker("a", &[]);
    let c = worker("c", &[]);
    b.wait_for("b's checkpoint before its commit", |r| {
        r.lines()
            .iter()
            .any(|l| l.contains("failpoint before_commit_owning"))
    });
    let b_log = b.kill();
    std::fs::write(d.join("b-killed.log"), b_log.join("\n")).unwrap();
    let limit = Duration::from_secs(240);
    let mut workers = vec![("a", a), ("c", c)];
    if restart {
        workers.push(("b", worker("b", &[])));
    }
    let logs = finish_all(workers, limit, &d);
    // b's complete checkpoint was committed by whoever restored its partitions from it:
    // another worker, under b's epoch sequence, or b itself when it restored
    let rolled = logs[..2]
        .iter()
        .flatten()
        .filter(|l| l.contains("committed another worker's checkpoint epoch"))
        .count();
    let recovered = logs[2..]
        .iter()
        .flatten()
        .filter(|l| l.contains("committed the epoch a crash interrupted"))
        .count();
    // (unless b had read its partitions to their end and flushed their last windows before
    // it was paused: its paused checkpoint then holds nothing they need)
    let flushed_first = b_log
        .iter()
        .any(|l| l.contains("flushing their last windows"));
    assert!(
        rolled + recovered > 0 || flushed_first,
        "nobody finished b's commit"
    );
    eprintln!(
        "b's last checkpoint committed by {}",
        if rolled > 0 {
            "another worker"
        } else if recovered > 0 {
            "b on its restart"
        } else {
            "nobody: b had flushed its partitions before"
        }
    );
    let window_rows = rows(
        &pg,
        "SELECT \"datasetName\", (extract(epoch FROM window_start) * 1000)::bigint AS window_start, \
         (extract(epoch FROM window_end) * 1000)::bigint AS window_end, events, records \
         FROM public.per_dataset",
    );
    compare(&windows, &window_rows, &["datasetName"])
        .unwrap_or_else(|e| panic!("the window table differs from the oracle: {e}"));
    let view_rows = rows(
        &pg,
        "SELECT \"datasetName\", events, records FROM public.totals",
    );
    compare(&view, &view_rows, &["datasetName"])
        .unwrap_or_else(|e| panic!("the view table differs from the oracle: {e}"));
    // every worker has its own epoch sequence; the older row is kept, with no worker
    let workers = pg.psql(
        "SELECT string_agg(DISTINCT worker, ',' ORDER BY worker) FROM weir_sink_epochs \
         WHERE pipeline = 'pool-pg'",
    );
    assert_eq!(workers, "a,b,c");
    assert_eq!(
        pg.psql("SELECT worker || '/' || epoch FROM weir_sink_epochs WHERE pipeline = 'older'"),
        "/7"
    );
    // nothing is left staged: every complete checkpoint is committed, and a restore drops
    // what was staged after it
    let stages =
        pg.psql("SELECT tablename FROM pg_tables WHERE tablename LIKE '\\_weir\\_stage\\_%'");
    let staged: i64 = stages
        .lines()
        .map(|t| {
            pg.psql(&format!("SELECT count(*) FROM public.\"{t}\""))
                .parse::<i64>()
                .unwrap()
        })
        .sum();
    // (a worker that never comes back may leave the rows it staged after its checkpoint)
    if restart {
        assert_eq!(staged, 0, "rows left in {stages}");
    }
    // no dead letters in any worker's file (out/dead.<worker>.ndjson)
    for e in std::fs::read_dir(d.join("out"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        assert!(text.is_empty(), "{}: {text}", e.path().display());
    }
}
