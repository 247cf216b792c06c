//! Rows the PostgreSQL table refuses only at the commit of an epoch (a trigger or a foreign key
//! that changed its verdict since the checkpoint's trial merge) reach the dead letters exactly
//! once: at the end of a run (the last commit, which no checkpoint follows), across a restart
//! from that last checkpoint, and across a kill -9 right after the commit that refused them.
//! A throwaway PostgreSQL 15 server per test, read back with `psql`.

#[path = "support/postgres.rs"]
mod postgres;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::PgServer;
use serde_json::Value;
use weir_tests::{compare, generate, oracle_per_dataset, Row};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// Generated events, the oracle's windows, and a pipeline writing them to `per_dataset`.
struct Case {
    dir: tempfile::TempDir,
    windows: Vec<Row>,
    pipeline: PathBuf,
}

impl Case {
    fn new(pg: &PgServer, events: u64) -> Case {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("input.ndjson");
        generate(
            &input,
            &[
                &events.to_string(),
                "--seed",
                "41",
                "--keys",
                "8",
                "--step-ms",
                "30",
            ],
        );
        let (windows, _) = oracle_per_dataset(
            &input,
            &["events=count", "records=sum:recordCount"],
            &dir.path().join("windows.ndjson"),
        );
        let text = format!(
            r#"name: pgrefused
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
    sinks: [db]
sinks:
  db:
    postgres: {{ url: "{url}", table: public.per_dataset, batch_max_rows: 200 }}
dead_letter: {{ file: {{ path: out/dead.ndjson }} }}
checkpoint: {{ dir: state, interval: 100ms }}
"#,
            input = input.display(),
            url = pg.url(),
        );
        let pipeline = dir.path().join("pipeline.yaml");
        std::fs::write(&pipeline, text).unwrap();
        Case {
            dir,
            windows,
            pipeline,
        }
    }

    /// The table, with a trigger that lets `victim`'s row through on its first try only
    /// (the checkpoint's trial merge) and refuses it after (the commit): a sequence counts
    /// the tries, as a rolled-back trial does not undo it.
    fn make_table(&self, pg: &PgServer, victim: &Row) {
        make_table(pg, victim, "AND nextval('public.victim_tries') > 1");
    }

    fn weir(&self) -> Command {
        let mut c = Command::new(WEIR);
        c.current_dir(self.dir.path())
            .env("RUST_LOG", "info")
            .arg("run")
            .arg(&self.pipeline);
        c
    }

    fn run(&self) -> String {
        let o = self.weir().output().unwrap();
        let log = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "weir run failed:\n{log}");
        log
    }

    /// The rows the dead letters hold, as the table's rows.
    fn refused(&self) -> Vec<Row> {
        let text =
            std::fs::read_to_string(self.dir.path().join("out/dead.ndjson")).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|d| d["reason"] == "rejected")
            .map(|d| {
                assert_eq!(d["error"]["code"], "postgres_refused", "{d}");
                assert_eq!(d["error"]["details"]["sqlstate"], "23514", "{d}");
                assert_eq!(d["sink"], "db", "{d}");
                serde_json::from_str(d["raw"].as_str().unwrap()).unwrap()
            })
            .collect()
    }

    /// The table and the dead letters: every window but the victim in the table, the victim
    /// once in the dead letters.
    fn verify(&self, pg: &PgServer, victim: &Row, when: &str) {
        let rest: Vec<Row> = self
            .windows
            .iter()
            .filter(|r| *r != victim)
            .cloned()
            .collect();
        compare(&rest, &table_rows(pg), &["datasetName"])
            .unwrap_or_else(|e| panic!("{when}: the table differs from the oracle: {e}"));
        let refused = self.refused();
        compare(std::slice::from_ref(victim), &refused, &["datasetName"])
            .unwrap_or_else(|e| panic!("{when}: the dead letters hold {refused:?}: {e}"));
    }
}

/// The table, with a trigger (the merge refuses what it refuses, not the staging) that
/// refuses `victim`'s row when `and` holds too.
fn make_table(pg: &PgServer, victim: &Row, and: &str) {
    let name = victim["datasetName"].as_str().unwrap().replace('\'', "''");
    let start = victim["window_start"].as_i64().unwrap();
    pg.psql(&format!(
        "CREATE TABLE public.per_dataset (\"datasetName\" text NOT NULL, window_start timestamptz NOT NULL, \
         window_end timestamptz, events bigint, records bigint, PRIMARY KEY (\"datasetName\", window_start)); \
         CREATE SEQUENCE public.victim_tries; \
         CREATE FUNCTION public.refuse_the_victim() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
           IF NEW.\"datasetName\" = '{name}' AND NEW.window_start = to_timestamp({start} / 1000.0) \
              {and} THEN \
             RAISE EXCEPTION 'the victim is refused' USING ERRCODE = 'check_violation'; \
           END IF; \
           RETURN NEW; \
         END $$; \
         CREATE TRIGGER refuse_the_victim BEFORE INSERT OR UPDATE ON public.per_dataset \
         FOR EACH ROW EXECUTE FUNCTION public.refuse_the_victim()"
    ));
}

fn table_rows(pg: &PgServer) -> Vec<Row> {
    let text = pg.psql(
        "SELECT json_build_object('datasetName', \"datasetName\", \
         'window_start', (extract(epoch FROM window_start) * 1000)::bigint, \
         'window_end', (extract(epoch FROM window_end) * 1000)::bigint, \
         'events', events, 'records', records) FROM public.per_dataset",
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The newest checkpoint's folder in `state`.
fn newest_checkpoint(state: &std::path::Path) -> PathBuf {
    std::fs::read_dir(state)
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let n: u64 = e.file_name().to_str()?.strip_prefix("chk-")?.parse().ok()?;
            Some((n, e.path()))
        })
        .max()
        .expect("a checkpoint")
        .1
}

/// The newest window of the input: emitted when the input ends, in the run's last epoch.
fn last_window(windows: &[Row]) -> Row {
    windows
        .iter()
        .max_by_key(|r| {
            (
                r["window_start"].as_i64().unwrap(),
                r["datasetName"].to_string(),
            )
        })
        .unwrap()
        .clone()
}

#[test]
fn a_row_the_last_commit_refuses_is_a_dead_letter_once_and_again_after_a_restart() {
    let pg = PgServer::start();
    let case = Case::new(&pg, 4_000);
    let victim = last_window(&case.windows);
    case.make_table(&pg, &victim);
    let log = case.run();
    case.verify(&pg, &victim, "after the run");
    assert!(
        log.contains("wait in weir_sink_refused"),
        "the victim was not refused at a commit: {log}"
    );
    // the same pipeline again, from its last checkpoint: the dead letters written after it
    // are cut off, and the rows that commit refused reported again
    case.run();
    case.verify(&pg, &victim, "after a second run from the last checkpoint");
    let kept = pg.psql("SELECT count(*) FROM weir_sink_refused WHERE reported IS NULL");
    assert_eq!(kept, "0", "every refused row is reported");
    // the second run's checkpoint, which reported the row and whose commit followed, lost:
    // the restore from the one before reports it again
    let newest = newest_checkpoint(&case.dir.path().join("state"));
    std::fs::remove_dir_all(&newest).unwrap();
    case.run();
    case.verify(&pg, &victim, "after a run from an older checkpoint");
}

#[test]
fn a_row_a_commit_refuses_survives_a_kill_right_after_that_commit() {
    let pg = PgServer::start();
    let case = Case::new(&pg, 60_000);
    // a window in the middle of the input: its commit comes mid-run
    let mut starts: Vec<i64> = case
        .windows
        .iter()
        .map(|r| r["window_start"].as_i64().unwrap())
        .collect();
    starts.sort_unstable();
    let middle = starts[starts.len() / 2];
    let victim = case
        .windows
        .iter()
        .find(|r| r["window_start"] == middle)
        .unwrap()
        .clone();
    case.make_table(&pg, &victim);
    // killed as soon as it says a commit refused a row, or that refused rows go to the dead
    // letters (earlier versions, right after the commit): before the next checkpoint, whose
    // dead letters were the refused row's only record
    let log_path = case.dir.path().join("first.log");
    let mut child = case
        .weir()
        .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()))
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut killed = false;
    while started.elapsed() < Duration::from_secs(120) {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("wait in weir_sink_refused")
            || text.contains("rows refused by the sink go to the dead-letter output")
        {
            child.kill().unwrap();
            killed = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        killed,
        "the run ended ({status}) before a commit refused the victim:\n{log}"
    );
    case.run();
    case.verify(&pg, &victim, "after the kill and a restart");
}

/// A key longer than the table's index takes (SQLSTATE 54000: a btree entry is at most about
/// 2.7 kB) refuses its row, not the run: the row goes to the dead letters with its SQLSTATE,
/// every other window reaches the table, and a restart of the same pipeline keeps both so.
#[test]
fn a_key_longer_than_the_tables_index_takes_is_a_dead_letter_and_the_run_goes_on() {
    let pg = PgServer::start();
    let case = Case::new(&pg, 2_000);
    // one more event, at the input's last time, whose datasetName (8,000 bytes of letters
    // and digits from a fixed sequence) cannot be compressed below the index's limit
    let input = case.dir.path().join("input.ndjson");
    let text = std::fs::read_to_string(&input).unwrap();
    let mut event: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let long: String = (0..8_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            alphabet[(state % alphabet.len() as u64) as usize] as char
        })
        .collect();
    event["datasetName"] = Value::String(long.clone());
    std::fs::write(&input, format!("{text}{event}\n")).unwrap();
    let check = |when: &str| {
        compare(&case.windows, &table_rows(&pg), &["datasetName"])
            .unwrap_or_else(|e| panic!("{when}: the table differs from the oracle: {e}"));
        let dead =
            std::fs::read_to_string(case.dir.path().join("out/dead.ndjson")).unwrap_or_default();
        let refused: Vec<Value> = dead
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|d| d["reason"] == "rejected")
            .collect();
        assert_eq!(refused.len(), 1, "{when}: {refused:?}");
        let d = &refused[0];
        assert_eq!(d["error"]["code"], "postgres_refused", "{when}: {d}");
        assert_eq!(d["error"]["details"]["sqlstate"], "54000", "{when}: {d}");
        let row: Value = serde_json::from_str(d["raw"].as_str().unwrap()).unwrap();
        assert_eq!(row["datasetName"], Value::String(long.clone()), "{when}");
        assert_eq!(row["events"], 1, "{when}");
    };
    case.run();
    check("after the run");
    case.run();
    check("after a second run of the same pipeline");
}

/// A TCP proxy to PostgreSQL that, once, drops the connection right after forwarding the
/// COMMIT of a trial merge that refused rows (it deleted them from staging: `weir_seq =
/// ANY`): the server commits, the sink never hears it. Returns its port and whether it cut.
fn cut_after_a_refusing_trial_commit(pg_port: u16) -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cut = Arc::new(AtomicBool::new(false));
    let done = cut.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { continue };
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", pg_port)) else {
                continue;
            };
            let (mut to_client, mut from_server) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            // set once the COMMIT goes: nothing the server says after reaches the client
            let cutting = Arc::new(AtomicBool::new(false));
            let quiet = cutting.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = match from_server.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if quiet.load(Ordering::SeqCst) || to_client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to_client.shutdown(Shutdown::Both);
            });
            let done = done.clone();
            std::thread::spawn(move || {
                let mut seen: Vec<u8> = Vec::new();
                let mut armed = false;
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = match client.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if !done.load(Ordering::SeqCst) {
                        seen.extend_from_slice(&buf[..n]);
                    }
                    let has = |s: &[u8], what: &[u8]| s.windows(what.len()).any(|w| w == what);
                    if !armed && has(&seen, b"weir_seq = ANY") {
                        armed = true;
                        seen.clear();
                    }
                    let commit = armed && has(&seen, b"COMMIT\0");
                    if commit {
                        cutting.store(true, Ordering::SeqCst);
                    }
                    if server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    if commit {
                        // the server commits; its answer is lost with the connection
                        std::thread::sleep(Duration::from_millis(300));
                        done.store(true, Ordering::SeqCst);
                        let _ = server.shutdown(Shutdown::Both);
                        let _ = client.shutdown(Shutdown::Both);
                        break;
                    }
                    let keep = seen.len().saturating_sub(64);
                    seen.drain(..keep);
                }
            });
        }
    });
    (port, cut)
}

/// The COMMIT of a trial merge that refused a row (a trigger) is carried out, but
/// its answer is lost with the connection: the sink tries again, and the row still reaches
/// the dead letters once (it was kept in `weir_sink_refused` by the transaction that took it
/// out of staging), every other window the table.
#[test]
fn a_row_refused_by_a_trial_merge_whose_commit_answer_was_lost_is_a_dead_letter() {
    let pg = PgServer::start();
    let case = Case::new(&pg, 4_000);
    let victim = last_window(&case.windows);
    make_table(&pg, &victim, "");
    let url = pg.url();
    let pg_port: u16 = url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    let (proxy, cut) = cut_after_a_refusing_trial_commit(pg_port);
    let text = std::fs::read_to_string(&case.pipeline).unwrap();
    let through_proxy = url.replace(&format!(":{pg_port}/"), &format!(":{proxy}/"));
    std::fs::write(&case.pipeline, text.replace(&url, &through_proxy)).unwrap();
    case.run();
    assert!(
        cut.load(Ordering::SeqCst),
        "no trial merge that refused a row committed through the proxy"
    );
    case.verify(&pg, &victim, "after a trial merge's lost answer");
}

/// Two pipelines of two roles in one schema: the second role owns the schema and may use
/// every table in it, but did not create the bookkeeping tables the first pipeline created.
/// Its start failed ("must be owner of table weir_sink_refused": `CREATE INDEX IF NOT EXISTS`
/// checks ownership before existence); it runs.
#[test]
fn a_second_role_writes_into_a_schema_another_roles_pipeline_set_up() {
    let pg = PgServer::start();
    pg.psql("CREATE ROLE second LOGIN; CREATE SCHEMA shared AUTHORIZATION second");
    let case = Case::new(&pg, 3_000);
    let text = std::fs::read_to_string(&case.pipeline).unwrap();
    assert!(text.contains("table: public.per_dataset") && text.contains("postgres://weir@"));
    let first = text.replace("table: public.per_dataset", "table: shared.first");
    std::fs::write(&case.pipeline, &first).unwrap();
    let o = case.weir().output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    pg.psql(
        "GRANT ALL ON ALL TABLES IN SCHEMA shared TO second; \
         GRANT ALL ON ALL SEQUENCES IN SCHEMA shared TO second",
    );
    let second = first
        .replace("table: shared.first", "table: shared.second")
        .replace("postgres://weir@", "postgres://second@");
    std::fs::write(&case.pipeline, second).unwrap();
    let _ = std::fs::remove_dir_all(case.dir.path().join("state"));
    let _ = std::fs::remove_dir_all(case.dir.path().join("out"));
    let o = case.weir().output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows = pg.psql("SELECT count(*) FROM shared.second");
    assert_eq!(rows, case.windows.len().to_string());
}

/// A sink that fails for good (its role may no longer log in) while the source is quiet
/// (a generator at 2 events a second): the run fails at once with the server's message. It
/// waited silently for the source, for ever, until a signal.
#[test]
fn a_sink_failing_for_good_while_the_source_is_quiet_fails_the_run() {
    let pg = PgServer::start();
    pg.psql("CREATE ROLE sinkrole LOGIN SUPERUSER");
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: pgquiet
sources:
  events:
    generator: {{ kind: data-ingestion, events_per_second: 2, seed: 5 }}
    event_time: {{ field: timestamp, max_out_of_orderness: 1s }}
views:
  per_dataset:
    from: events
    key: [datasetName]
    aggregates: {{ events: count(*) }}
    sinks: [db]
sinks:
  db:
    postgres: {{ url: "postgres://sinkrole@127.0.0.1:{port}/postgres", table: public.quiet }}
    retry: {{ initial_backoff: 100ms, max_backoff: 500ms }}
dead_letter: {{ file: {{ path: out/dead.ndjson }} }}
checkpoint: {{ dir: state, interval: 200ms }}
"#,
            port = pg.port
        ),
    )
    .unwrap();
    let log = dir.path().join("run.log");
    let mut child = Command::new(WEIR)
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .args(["run", "pipeline.yaml"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while pg
        .try_psql("SELECT count(*) FROM public.quiet")
        .map_or(true, |n| n == "0")
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no row written"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    pg.psql(
        "ALTER ROLE sinkrole NOLOGIN; \
         SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'sinkrole'",
    );
    let cut = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if cut.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!(
                "the run did not fail within 60 s:\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{text}");
    assert!(text.contains("not permitted to log in"), "{text}");
}
