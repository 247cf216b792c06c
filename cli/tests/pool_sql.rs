//! SQL over a worker pool against a real broker (`scripts/kafka.sh start`, or
//! `KAFKA_BROKERS`): a query to any worker answers over the whole pool, and a worker's SQL
//! endpoint and subscriptions outlive the jobs it runs between rebalances.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "support/crash.rs"]
mod crash;
#[path = "support/kafka.rs"]
mod kafka_support;
#[path = "support/pool.rs"]
mod pool_support;
#[path = "support/sql.rs"]
mod sql_support;
#[path = "support/subscribe.rs"]
mod subscribe_support;
use kafka_support::{brokers, repo, tool, unique, Running};
use pool_support::{claims_from, has_claims, slices_of};
use sql_support::{sql_json, try_sql_json};
use subscribe_support::Client;

/// The SQL tests' reference values of the health view (tests/sql/health_reference.py).
fn health_reference(events: &Path) -> Value {
    let o = std::process::Command::new(crash::venv_python())
        .arg(repo().join("tests/sql/health_reference.py"))
        .arg(events)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The SQL pool tests' input: `n` service-health events (seed 5, 200 keys, 1% bad) in
/// `dir`, their reference values (tests/sql/health_reference.py), and a pipeline reading
/// them from a new topic of 6 partitions keyed by service (`produce` produces them first),
/// with a view, checkpoints every 2 s and SQL on `WEIR_HTTP_PORT`.
fn health_pool(dir: &Path, n: &str, produce: bool) -> (std::path::PathBuf, Value, String) {
    let brokers = brokers();
    let events = dir.join("health.ndjson");
    weir_tests::generate_kind(
        "service-health",
        &events,
        &[
            n,
            "--seed",
            "5",
            "--keys",
            "200",
            "--unicode-keys",
            "--bad-frac",
            "0.01",
        ],
    );
    let want = health_reference(&events);
    let (input, group) = (unique("pool-health"), unique("pool-sql"));
    tool(&["create", &brokers, &input, "6"]);
    if produce {
        produce_keyed(&brokers, &input, &events);
    }
    let pipeline = dir.join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: pool-sql
sources:
  health:
    kafka: {{ brokers: "{brokers}", topic: {input}, group_id: {group}, start_from: earliest }}
    partitioned_by: [serviceName]
    format: json
    schema: service-health
    event_time: {{ field: timestamp, max_out_of_orderness: 2s }}
views:
  service_status:
    from: health
    key: [serviceName]
    aggregates:
      status: last_value(healthStatus ORDER BY timestamp)
      last_seen: max(timestamp)
      checks: count(*)
      worst_latency: max(latencyMs)
checkpoint: {{ dir: state, interval: 2s }}
serve: {{ http: "127.0.0.1:${{WEIR_HTTP_PORT}}", refresh: 200ms }}
"#
        ),
    )
    .unwrap();
    (pipeline, want, input)
}

/// Produces `events` to `topic`, keyed by service.
fn produce_keyed(brokers: &str, topic: &str, events: &Path) {
    tool(&[
        "produce",
        brokers,
        topic,
        events.to_str().unwrap(),
        "--key-field",
        "serviceName",
    ]);
}

/// (keys, checks) of the view as worker `port` answers for the whole pool.
fn view_total(port: u16) -> Option<(u64, u64)> {
    let r = try_sql_json(
        port,
        "SELECT count(*) AS keys, sum(checks) AS checks FROM service_status",
    )
    .ok()?;
    Some((r.first()?["keys"].as_u64()?, r[0]["checks"].as_u64()?))
}

/// Waits (90 s at most) until worker `port` answers for the whole view `want` describes;
/// `log` says what to show if it does not.
fn wait_for_whole_view(port: u16, want: &Value, log: impl Fn() -> String) {
    let services = want["services"].as_object().unwrap();
    let expected = (services.len() as u64, want["good"].as_u64().unwrap());
    let started = Instant::now();
    while view_total(port) != Some(expected) {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "worker at {port} does not answer for the whole view: {:?} vs {expected:?}\n{}",
            view_total(port),
            log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_query_to_any_worker_answers_over_the_whole_pool() {
    let dir = tempfile::tempdir().unwrap();
    let (pipeline, want, _) = health_pool(dir.path(), "12000", true);
    let services = want["services"].as_object().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| sql_support::free_port()).collect();
    let workers: Vec<Running> = ["a", "b", "c"]
        .iter()
        .zip(&ports)
        .map(|(id, port)| {
            Running::start_with(
                &pipeline,
                &["--worker", id],
                &[("WEIR_HTTP_PORT", &port.to_string())],
            )
        })
        .collect();
    for w in &workers {
        w.wait_for("partitions for every worker", has_claims);
    }
    // every worker answers for the whole view once the input is in
    let total = view_total;
    let expected = (services.len() as u64, want["good"].as_u64().unwrap());
    let started = Instant::now();
    while ports.iter().any(|&p| total(p) != Some(expected)) {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the workers do not answer for the whole view: {:?} vs {expected:?}",
            ports.iter().map(|&p| total(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let all = |port: u16| sql_json(port, "SELECT * FROM service_status ORDER BY serviceName");
    let rows = all(ports[1]);
    assert_eq!(rows.len(), services.len());
    for r in &rows {
        let name = r["serviceName"].as_str().unwrap();
        let w = &services[name];
        assert_eq!(r["checks"], w["checks"], "{name}");
        assert_eq!(r["last_seen"], w["last_seen"], "{name}");
        assert_eq!(r["worst_latency"], w["worst_latency"], "{name}");
    }
    assert_eq!(all(ports[0]), rows, "worker a answers as b does");
    assert_eq!(all(ports[2]), rows, "worker c answers as b does");
    // a point query for a key another worker holds
    let one = rows[17]["serviceName"].as_str().unwrap();
    for &p in &ports {
        let point = sql_json(
            p,
            &format!("SELECT * FROM service_status WHERE serviceName = '{one}'"),
        );
        assert_eq!(point, vec![rows[17].clone()]);
    }
    // weir_status: every partition once, with the worker that owns it
    let status = sql_json(
        ports[0],
        "SELECT partition, worker FROM weir_status ORDER BY partition",
    );
    assert_eq!(status.len(), 6, "{status:?}");
    let owners: std::collections::BTreeSet<&str> =
        status.iter().filter_map(|r| r["worker"].as_str()).collect();
    assert_eq!(owners.len(), 3, "{status:?}");
    for w in workers {
        w.interrupt();
    }
}

/// A query over the pool is never answered from fewer partitions than the pipeline reads: a
/// killed worker leaves the member list of the others 8 s after its last announcement, but
/// its partitions move only when the group's session times out (30 s here). Until then a
/// query to the surviving worker must be refused as the pool rebalancing (it used to answer
/// with its own half of the view, a wrong sum); after, it answers for the whole view. The
/// killed worker is the group's leader, whose partitions the test broker never moved before
/// its fix.
#[test]
fn a_pool_query_is_refused_not_short_while_a_killed_worker_s_partitions_have_no_owner() {
    let dir = tempfile::tempdir().unwrap();
    let (pipeline, want, _) = health_pool(dir.path(), "12000", true);
    let text = std::fs::read_to_string(&pipeline).unwrap().replace(
        "start_from: earliest }",
        r#"start_from: earliest, properties: { session.timeout.ms: "30000" } }"#,
    );
    std::fs::write(&pipeline, text).unwrap();
    let (pa, pb) = (sql_support::free_port(), sql_support::free_port());
    let start = |id: &str, port: u16| {
        Running::start_with(
            &pipeline,
            &["--worker", id],
            &[("WEIR_HTTP_PORT", &port.to_string())],
        )
    };
    // b leads the group, and is killed: tansu 0.6.0 kept a leader whose session expired as
    // the leader, and nobody was assigned its partitions again (scripts/tansu/0003-*)
    let b = start("b", pb);
    b.wait_for("partitions for worker b", has_claims);
    let a = start("a", pa);
    a.wait_for("partitions for worker a", has_claims);
    wait_for_whole_view(pa, &want, || a.lines().join("\n"));
    let b_log = b.kill().join("\n");
    let killed = Instant::now();
    // a's jobs started with every partition, before and after the kill
    let whole_jobs = |a: &Running| {
        a.lines()
            .iter()
            .filter(|l| l.contains("starting a job with its assigned partitions partitions=6"))
            .count()
    };
    let whole_jobs_before = whole_jobs(&a);
    let expected = (
        want["services"].as_object().unwrap().len() as u64,
        want["good"].as_u64().unwrap(),
    );
    let query = "SELECT count(*) AS keys, sum(checks) AS checks FROM service_status";
    let mut moving = 0usize;
    loop {
        let waited = killed.elapsed();
        assert!(
            waited < Duration::from_secs(120),
            "a never answered for the whole view again ({moving} refusals as moving)\n{}\n\
             b's log:\n{b_log}",
            a.lines().join("\n")
        );
        // once a owns every partition, it catches up from the newest checkpoint b completed
        let took_over = whole_jobs(&a) > whole_jobs_before;
        match try_sql_json(pa, query) {
            Ok(rows) => {
                let got = (
                    rows[0]["keys"].as_u64().unwrap_or(0),
                    rows[0]["checks"].as_u64().unwrap_or(0),
                );
                if got == expected && took_over {
                    break;
                }
                // a's new job may have published before its start line reached the log
                let took_over = took_over || {
                    std::thread::sleep(Duration::from_secs(1));
                    whole_jobs(&a) > whole_jobs_before
                };
                assert!(
                    got == expected || took_over,
                    "{waited:?} after b was killed, before a took b's partitions over, a \
                     answered for part of the view: {got:?}, not {expected:?}\n{}\n\
                     b's log:\n{b_log}",
                    a.lines().join("\n")
                );
            }
            // b still announced but gone: it does not answer (a refusal, not rows)
            Err(e) if e.starts_with("503") && e.contains("did not answer") => {}
            Err(e) if e.starts_with("503") && e.contains(r#""code":"rebalancing""#) => {
                moving += usize::from(e.contains("no worker that answered holds partition"));
            }
            Err(e) => panic!("{waited:?} after b was killed: {e}"),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        moving > 0,
        "the query was never refused while b's partitions had no owner"
    );
    a.interrupt();
}

/// A worker's SQL endpoint outlives the jobs it runs between rebalances: queries of its own
/// rows and metrics scrapes every 50 ms all answer (a query between two jobs is refused as
/// such, never with a dropped connection), and a subscription opened before a second worker joins (partitions leave the
/// first) and leaves (they come back) stays open, its changes ending at the whole view.
#[test]
fn a_pool_workers_sql_and_subscriptions_stay_up_through_rebalances() {
    let dir = tempfile::tempdir().unwrap();
    let (pipeline, want, input) = health_pool(dir.path(), "12000", false);
    let brokers = brokers();
    let halves = slices_of(&dir.path().join("health.ndjson"), 6000);
    produce_keyed(&brokers, &input, &halves[0]);
    let (pa, pb) = (sql_support::free_port(), sql_support::free_port());
    let port_env = |p: u16| [("WEIR_HTTP_PORT", p.to_string())];
    let start = |id: &str, p: u16| {
        let env = port_env(p);
        Running::start_with(&pipeline, &["--worker", id], &[(env[0].0, &env[0].1)])
    };
    let a = start("a", pa);
    a.wait_for("partitions for worker a", has_claims);
    let started = Instant::now();
    while view_total(pa).is_none_or(|(keys, _)| keys == 0) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "a serves no rows"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let follower = Client::follow(
        "sse",
        pa,
        "table=service_status&snapshot=true",
        &["--seconds", "600"],
    );
    // a client asking all along
    let asking = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let poller = {
        let asking = asking.clone();
        std::thread::spawn(move || {
            let (mut answered, mut refused, mut failed) = (0usize, 0usize, Vec::new());
            while asking.load(Ordering::SeqCst) {
                // this worker's own rows (a query over the pool fails, on purpose, while
                // a worker that joins or leaves does not answer), and its metrics
                let body = br#"{"query": "SELECT count(*) AS n FROM service_status"}"#;
                let local = [
                    ("Content-Type", "application/json"),
                    ("x-weir-scope", "local"),
                ];
                for asked in [
                    sql_support::try_http(pa, "POST", "/sql", &local, body),
                    sql_support::try_http(pa, "GET", "/metrics", &[], b""),
                ] {
                    match asked {
                        Ok(a) if a.status == 200 => answered += 1,
                        // between two jobs the worker's last state may hold rows that
                        // moved: it says so rather than answer them
                        Ok(a)
                            if a.status == 503
                                && String::from_utf8_lossy(&a.body)
                                    .contains(r#""code":"rebalancing""#) =>
                        {
                            refused += 1
                        }
                        Ok(a) => failed.push(format!(
                            "{}: {}",
                            a.status,
                            String::from_utf8_lossy(&a.body)
                        )),
                        Err(e) => failed.push(e),
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (answered, refused, failed)
        })
    };
    let jobs = |r: &Running| {
        r.lines()
            .iter()
            .filter(|l| l.contains("starting a job"))
            .count()
    };
    let before = jobs(&a);
    let b = start("b", pb);
    b.wait_for("partitions for worker b", has_claims);
    a.wait_for("a's job after b joined", |r| jobs(r) > before);
    std::thread::sleep(Duration::from_secs(3));
    let b_log = b.interrupt();
    a.wait_for("a taking b's partitions back", |r| {
        claims_from(&r.lines(), "b") > 0
    });
    produce_keyed(&brokers, &input, &halves[1]);
    let services = want["services"].as_object().unwrap();
    wait_for_whole_view(pa, &want, || format!("b's log:\n{}", b_log.join("\n")));
    // the changes of the last refreshes reach the subscriber
    std::thread::sleep(Duration::from_secs(2));
    asking.store(false, Ordering::SeqCst);
    let (answered, refused, failed) = poller.join().unwrap();
    let messages = follower.received();
    let deletes = messages.iter().filter(|m| m["op"] == "delete").count();
    eprintln!("{answered} asks answered, {refused} refused between jobs; {deletes} deletes");
    assert!(
        failed.is_empty(),
        "{} of {} queries failed during the rebalances, e.g. {:?}",
        failed.len(),
        answered + failed.len(),
        failed.first()
    );
    assert!(
        answered > 50 && refused < answered / 4,
        "{answered} asks answered, {refused} refused between jobs"
    );
    assert!(
        !messages.iter().any(|m| m.get("closed").is_some()),
        "the subscription was closed during a rebalance"
    );
    let mut view: std::collections::BTreeMap<String, Value> = Default::default();
    for m in &messages {
        match m["op"].as_str() {
            Some("snapshot") => {
                for r in m["rows"].as_array().unwrap() {
                    view.insert(r["serviceName"].as_str().unwrap().into(), r.clone());
                }
            }
            Some("upsert") => {
                let key = m["row"]["serviceName"].as_str().unwrap().to_string();
                view.insert(key, m["row"].clone());
            }
            Some("delete") => {
                view.remove(m["row"]["serviceName"].as_str().unwrap());
            }
            other => panic!("unexpected message {other:?}: {m}"),
        }
    }
    // only keys of partitions that moved leave the subscriber's view (once to b, back at
    // its leave): a job change alone deletes nothing (it deleted every key, then sent it
    // again, when a new job's first, empty, snapshot replaced the last one)
    assert!(
        deletes < 2 * services.len(),
        "{deletes} deletes for {} keys",
        services.len()
    );
    let rows = sql_json(pa, "SELECT * FROM service_status ORDER BY serviceName");
    assert_eq!(
        view.len(),
        rows.len(),
        "the subscriber's view has every key"
    );
    for r in &rows {
        let name = r["serviceName"].as_str().unwrap();
        assert_eq!(view[name]["checks"], r["checks"], "{name}");
        assert_eq!(r["checks"], services[name]["checks"], "{name}");
    }
    a.interrupt();
}

/// A pool worker reading until caught up with `--keep-serving` reads everything through its
/// rebalances (its first job owns nothing yet), then keeps answering: its subscribers are
/// told `finished` once, and it exits cleanly when stopped.
#[test]
fn a_pool_worker_keeps_serving_after_reading_until_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    let (pipeline, want, _) = health_pool(dir.path(), "3000", true);
    let port = sql_support::free_port();
    let a = Running::start_with(
        &pipeline,
        &["--worker", "a", "--until-caught-up", "--keep-serving"],
        &[("WEIR_HTTP_PORT", &port.to_string())],
    );
    let services = want["services"].as_object().unwrap();
    let expected = (services.len() as u64, want["good"].as_u64().unwrap());
    wait_for_whole_view(port, &want, || a.lines().join("\n"));
    a.wait_for("the worker to keep serving", |r| {
        r.lines().iter().any(|l| l.contains("still answering SQL"))
    });
    let follower = Client::follow(
        "sse",
        port,
        "table=service_status&snapshot=true",
        &["--seconds", "600"],
    );
    let started = Instant::now();
    let mut messages = Vec::new();
    while !messages.iter().any(|m: &Value| m["op"] == "finished") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no `finished`: {messages:?}"
        );
        messages.extend(follower.received());
        std::thread::sleep(Duration::from_millis(100));
    }
    let snapshot = messages.iter().find(|m| m["op"] == "snapshot").unwrap();
    assert_eq!(snapshot["rows"].as_array().unwrap().len(), services.len());
    assert_eq!(view_total(port), Some(expected), "it still answers");
    a.interrupt();
}
