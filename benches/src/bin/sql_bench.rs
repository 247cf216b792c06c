//! SQL on a live view under load: a view of KEYS service keys fed by the generator at RATE
//! events/s (parallelism 2), queried over HTTP by CLIENTS concurrent clients for SECS
//! seconds (nine point queries `WHERE serviceName = ...` for one full aggregate
//! `SELECT status, count(*) ... GROUP BY status`), after SECS seconds without queries.
//! Prints the latency percentiles of both kinds and the ingestion rate with and without
//! queries, measured in the same run.
//!
//!   cargo run --release -p weir-benches --bin sql_bench -- [KEYS] [RATE] [SECS] [CLIENTS]
//!   (defaults: 1000000 200000 30 4)
//!
//! `WEIR_BENCH_HOSTILE=1` makes the clients hostile instead: each sends, in turn, the
//! queries the endpoints must refuse or cut short (10,000-term expressions and OR chains,
//! a 100,000-element IN list, value-size bombs, cross joins of the view with itself,
//! `generate_series(1, 100000000000)`, a sorted cross join), and the run reports ingestion
//! with them against ingestion without them.
//!
//! `WEIR_BENCH_STATUS` replaces the view's `status` aggregate (default
//! `last_value(healthStatus ORDER BY timestamp)`, a string: weir's own vectorised accumulator;
//! `last_value(latencyMs ORDER BY timestamp)` is DataFusion's primitive one).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_engine::job::StopHandle;
use weir_pipelines::{load, run, RunOptions};

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// One request on a fresh connection; the status and body.
fn post(port: u16, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).ok();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

fn get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw
}

/// A metric's value from `/metrics`, summed over its labels.
fn metric(port: u16, name: &str) -> f64 {
    get(port, "/metrics")
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .sum()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// The hostile queries of `WEIR_BENCH_HOSTILE`.
fn hostile_queries() -> Vec<String> {
    let chain = |n: usize, op: &str, term: &dyn Fn(usize) -> String| {
        (0..n).map(term).collect::<Vec<_>>().join(op)
    };
    vec![
        format!("SELECT {} AS x", chain(10_001, "+", &|_| "1".into())),
        format!(
            "SELECT count(*) FROM service_status WHERE {}",
            chain(10_000, " OR ", &|i| format!("serviceName = 'svc-{i}'"))
        ),
        format!(
            "SELECT count(*) FROM service_status WHERE checks IN ({})",
            chain(100_000, ",", &|i| i.to_string())
        ),
        "SELECT length(repeat(arrow_cast('x','LargeUtf8'), 100000000000))".into(),
        "SELECT rpad(serviceName, 1000000000) FROM service_status".into(),
        "SELECT count(*) FROM service_status a, service_status b, service_status c, \
         service_status d WHERE a.checks + b.checks + c.checks + d.checks < 0"
            .into(),
        "SELECT * FROM generate_series(1, 100000000000)".into(),
        "SELECT count(*) FROM generate_series(1, 100000000000)".into(),
        "SELECT a.serviceName FROM service_status a, generate_series(1, 100000000) b \
         ORDER BY b.value * a.checks DESC"
            .into(),
    ]
}

fn main() {
    let hostile = std::env::var("WEIR_BENCH_HOSTILE").is_ok_and(|v| v == "1");
    let attacks = Arc::new(hostile_queries());
    let keys = arg(1, 1_000_000);
    let rate = arg(2, 200_000);
    let secs = arg(3, 30);
    let clients = arg(4, 4) as usize;
    let status = std::env::var("WEIR_BENCH_STATUS")
        .unwrap_or_else(|_| "last_value(healthStatus ORDER BY timestamp)".to_string());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("weir-sql-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pipeline = dir.join("pipeline.yaml");
    std::fs::write(
        &pipeline,
        format!(
            r#"name: sql-bench
sources:
  health:
    generator: {{ kind: service-health, events_per_second: {rate}, keys: {keys}, skew: 0.0, seed: 1 }}
    event_time: {{ field: timestamp, max_out_of_orderness: 2s }}
views:
  service_status:
    from: health
    key: [serviceName]
    aggregates:
      status: {status}
      checks: count(*)
      max_latency_ms: max(latencyMs)
serve: {{ http: "127.0.0.1:{port}" }}
dead_letter: {{ file: {{ path: dead.ndjson }} }}
"#
        ),
    )
    .unwrap();
    let plan = load(&pipeline).unwrap_or_else(|e| panic!("{e}"));
    let stop = StopHandle::new();
    let opts = RunOptions {
        parallelism: Some(2),
        stop: stop.clone(),
        ..Default::default()
    };
    let runner = std::thread::spawn(move || run(plan, opts));
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    // warm up until most keys are in the view
    let warm = Instant::now();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let (_, body) = post(port, "/sql", "SELECT count(*) AS n FROM service_status");
        let n: u64 = body
            .trim_start_matches("[{\"n\":")
            .trim_end_matches("}]")
            .parse()
            .unwrap_or(0);
        if n >= keys * 8 / 10 || warm.elapsed() > Duration::from_secs(120) {
            println!("warm-up: {n} keys in the view after {:.0?}", warm.elapsed());
            break;
        }
    }
    let (_, names) = post(
        port,
        "/sql",
        "SELECT serviceName FROM service_status LIMIT 2000",
    );
    let names: Vec<String> = names
        .split("\"serviceName\":\"")
        .skip(1)
        .filter_map(|s| s.split('"').next().map(String::from))
        .collect();
    assert!(!names.is_empty(), "no keys to query");
    let names = Arc::new(names);

    let measure = |label: &str, queried: bool| -> f64 {
        let before = metric(port, "weir_events_in_total");
        let snaps_before = metric(port, "weir_live_snapshot");
        let started = Instant::now();
        let done = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        if queried {
            for c in 0..clients {
                let names = names.clone();
                let done = done.clone();
                let attacks = attacks.clone();
                if hostile {
                    handles.push(std::thread::spawn(move || {
                        let (mut answered, mut refused) = (Vec::new(), Vec::new());
                        let mut i = c;
                        while !done.load(Ordering::Relaxed) {
                            let t = Instant::now();
                            let (s, body) = post(port, "/sql", &attacks[i % attacks.len()]);
                            assert!([200, 400, 413, 503].contains(&s), "status {s}: {body}");
                            let ms = t.elapsed().as_secs_f64() * 1e3;
                            if s == 200 {
                                answered.push(ms)
                            } else {
                                refused.push(ms)
                            }
                            i += 1;
                        }
                        (answered, refused)
                    }));
                    continue;
                }
                handles.push(std::thread::spawn(move || {
                    let mut point = Vec::new();
                    let mut full = Vec::new();
                    let mut i = c * 7919;
                    while !done.load(Ordering::Relaxed) {
                        i += 1;
                        let t = Instant::now();
                        if i % 10 == 0 {
                            let (s, _) = post(
                                port,
                                "/sql",
                                "SELECT status, count(*) AS n FROM service_status GROUP BY status",
                            );
                            assert_eq!(s, 200);
                            full.push(t.elapsed().as_secs_f64() * 1e3);
                        } else {
                            let name = &names[(i * 31) % names.len()];
                            let q = format!(
                                "SELECT * FROM service_status WHERE serviceName = '{name}'"
                            );
                            let (s, body) = post(port, "/sql", &q);
                            assert_eq!(s, 200);
                            assert!(body.contains(name.as_str()), "{body}");
                            point.push(t.elapsed().as_secs_f64() * 1e3);
                        }
                    }
                    (point, full)
                }));
            }
        }
        std::thread::sleep(Duration::from_secs(secs));
        done.store(true, Ordering::Relaxed);
        let mut point = Vec::new();
        let mut full = Vec::new();
        for h in handles {
            let (p, f) = h.join().unwrap();
            point.extend(p);
            full.extend(f);
        }
        let elapsed = started.elapsed().as_secs_f64();
        let events = metric(port, "weir_events_in_total") - before;
        let snaps = metric(port, "weir_live_snapshot") - snaps_before;
        let eps = events / elapsed;
        println!("{label}: {eps:.0} events/s ingested, {snaps:.0} snapshots in {elapsed:.1}s");
        if queried && hostile {
            println!(
                "  hostile queries: {} answered, {} refused or cut short (median {:.0} ms)",
                point.len(),
                full.len(),
                {
                    full.sort_by(f64::total_cmp);
                    percentile(&full, 0.5)
                }
            );
        } else if queried {
            point.sort_by(f64::total_cmp);
            full.sort_by(f64::total_cmp);
            println!(
                "  point queries: {} ({:.0}/s), p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                point.len(),
                point.len() as f64 / elapsed,
                percentile(&point, 0.5),
                percentile(&point, 0.99),
                point.last().copied().unwrap_or(f64::NAN)
            );
            println!(
                "  full aggregates: {} ({:.1}/s), p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                full.len(),
                full.len() as f64 / elapsed,
                percentile(&full, 0.5),
                percentile(&full, 0.99),
                full.last().copied().unwrap_or(f64::NAN)
            );
        }
        eps
    };
    println!(
        "view of {keys} keys (status: {status}) fed at {rate} events/s, {clients} clients, {secs}s per phase"
    );
    let idle = measure("without queries", false);
    let kind = if hostile { "hostile" } else { "query" };
    let busy = measure(&format!("with {clients} {kind} clients"), true);
    println!(
        "ingestion while queried / without: {:.3} (target rate {rate}/s)",
        busy / idle.max(1.0)
    );
    stop.stop();
    let summary = runner.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    println!(
        "run: {} events in {:.1}s",
        summary.records_in,
        summary.elapsed.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
