//! A grammar fuzzer of SQL over the hostile test's tables (`ingestion_1m`, `datasets`,
//! `weir_status`): random queries, valid and invalid, shallow and deep, narrow and wide, with
//! the functions that make large values, sent over HTTP and through one `psql` session. It
//! checks only that every query gets an answer or an error, never a dropped connection or a
//! server error; the caller checks the engine and its results afterwards.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::process::Stdio;
use std::thread::JoinHandle;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::sql_support::try_http;

/// The endpoint's largest HTTP body with the default limits (`serve.max_sql_bytes` plus 64 KiB).
const MAX_BODY: usize = (1 << 20) + (64 << 10);

/// How long to fuzz: `WEIR_SQL_FUZZ_SECS`, default 15 s.
pub fn duration() -> Duration {
    let secs = std::env::var("WEIR_SQL_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    Duration::from_secs(secs)
}

/// xorshift64*: small, seedable, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const TABLES: [(&str, &[&str]); 3] = [
    (
        "ingestion_1m",
        &[
            "datasetName",
            "window_start",
            "window_end",
            "events",
            "bytes",
            "failed",
            "is_final",
        ],
    ),
    (
        "datasets",
        &["datasetName", "events", "records", "last_status"],
    ),
    (
        "weir_status",
        &[
            "source",
            "partition",
            "watermark",
            "events_in",
            "bad",
            "late",
            "finished",
        ],
    ),
];

const NUMERIC: [&str; 6] = ["events", "bytes", "failed", "records", "events_in", "late"];
const FUNCTIONS: [&str; 10] = [
    "abs", "sqrt", "ln", "ceil", "floor", "length", "upper", "md5", "to_hex", "reverse",
];
const OPERATORS: [&str; 9] = ["+", "-", "*", "/", "%", "=", "<>", "<", ">="];
const SIZE_BOMBS: [&str; 6] = [
    "repeat('x', 4000000000)",
    "lpad('a', 3000000000)",
    "array_repeat(1, 900000000)",
    "range(1, 50000000000)",
    "generate_series(1, 90000000000)",
    "repeat(datasetName, 100000000)",
];
const GARBAGE: [&str; 11] = [
    "SELEC",
    "FROM FROM",
    "((",
    ")",
    "'",
    "\"",
    ";;",
    "$1",
    "\\x00",
    "🦀",
    "--",
];

/// One random query.
pub fn query(rng: &mut Rng) -> String {
    let (table, columns) = TABLES[rng.below(TABLES.len())];
    let mut q = String::from("SELECT ");
    let width = if rng.chance(5) {
        200 + rng.below(800)
    } else {
        1 + rng.below(4)
    };
    let items: Vec<String> = (0..width).map(|_| expr(rng, columns, 0)).collect();
    q.push_str(&items.join(", "));
    q.push_str(" FROM ");
    q.push_str(table);
    if rng.chance(15) {
        let (other, _) = TABLES[rng.below(TABLES.len())];
        q.push_str(&format!(", {other} AS o{}", rng.below(9)));
    }
    if rng.chance(50) {
        q.push_str(" WHERE ");
        q.push_str(&predicate(rng, columns));
    }
    if rng.chance(20) {
        q.push_str(&format!(" GROUP BY {}", rng.pick(columns)));
    }
    if rng.chance(30) {
        q.push_str(&format!(" ORDER BY {}", 1 + rng.below(width.min(3))));
    }
    if rng.chance(40) {
        q.push_str(&format!(" LIMIT {}", rng.below(1000)));
    }
    if rng.chance(10) {
        // break it somewhere
        let at = rng.below(q.len());
        let at = (0..=at).rev().find(|i| q.is_char_boundary(*i)).unwrap_or(0);
        q.insert_str(at, rng.pick(&GARBAGE));
    }
    q
}

fn expr(rng: &mut Rng, columns: &[&str], depth: usize) -> String {
    match rng.below(if depth > 6 { 3 } else { 10 }) {
        0 => rng.pick(columns).to_string(),
        1 => rng.below(100_000).to_string(),
        2 => format!(
            "'{}'",
            rng.pick(&["a", "dataset_00001", "", "ok", "x'y"])
                .replace('\'', "''")
        ),
        3 => format!(
            "{}({})",
            rng.pick(&FUNCTIONS),
            expr(rng, columns, depth + 1)
        ),
        4 => format!(
            "({} {} {})",
            expr(rng, columns, depth + 1),
            rng.pick(&OPERATORS),
            expr(rng, columns, depth + 1)
        ),
        5 if rng.chance(20) => {
            // a long flat chain: sometimes past serve.max_sql_terms
            let n = 10 + rng.below(3000);
            (0..n)
                .map(|i| format!("{}", i % 7))
                .collect::<Vec<_>>()
                .join(" + ")
        }
        6 if rng.chance(10) => rng.pick(&SIZE_BOMBS).to_string(),
        7 => {
            format!(
                "{}({})",
                rng.pick(&["count", "sum", "max", "min", "avg", "count(DISTINCT"]),
                rng.pick(&NUMERIC)
            )
            .replace("DISTINCT(", "DISTINCT ")
                + if rng.chance(50) { ")" } else { "" }
        }
        8 => format!(
            "CASE WHEN {} THEN {} ELSE {} END",
            predicate(rng, columns),
            expr(rng, columns, depth + 1),
            expr(rng, columns, depth + 1)
        ),
        _ => format!(
            "CAST({} AS {})",
            expr(rng, columns, depth + 1),
            rng.pick(&["BIGINT", "VARCHAR", "DOUBLE", "TIMESTAMP", "BOOLEAN"])
        ),
    }
}

fn predicate(rng: &mut Rng, columns: &[&str]) -> String {
    match rng.below(5) {
        0 if rng.chance(30) => {
            let n = 1 + rng.below(4000);
            (0..n)
                .map(|i| format!("datasetName = 'dataset_{i:05}'"))
                .collect::<Vec<_>>()
                .join(" OR ")
        }
        1 => {
            let n = 1 + rng.below(20_000);
            let list: Vec<String> = (0..n).map(|i| i.to_string()).collect();
            format!("{} IN ({})", rng.pick(columns), list.join(","))
        }
        2 => format!("{} IS NOT NULL", rng.pick(columns)),
        _ => format!(
            "{} {} {}",
            expr(rng, columns, 5),
            rng.pick(&["=", "<", ">", "<>", "LIKE"]),
            expr(rng, columns, 5)
        ),
    }
}

/// Fuzzes for `time` over HTTP and through one `psql` session; returns a summary line.
/// Panics when a query gets no answer, or a server error.
pub fn run(http_port: u16, pg_port: u16, token: &str, password: &str, time: Duration) -> String {
    let seed = std::env::var("WEIR_SQL_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("SQL fuzzer seed {seed} (WEIR_SQL_FUZZ_SEED={seed} replays it)");
    let mut rng = Rng::new(seed);
    let mut psql = Psql::start(pg_port, password);
    let auth = format!("Bearer {token}");
    let started = Instant::now();
    let (mut http_ok, mut http_refused, mut to_psql) = (0u64, 0u64, 0u64);
    let mut codes = std::collections::BTreeMap::<String, u64>::new();
    while started.elapsed() < time {
        let q = query(&mut rng);
        // statements over the message limit close a Postgres connection (as PostgreSQL's
        // own do): those go over HTTP, which answers 413
        if rng.chance(50) || q.len() > 900_000 {
            let a = match try_http(
                http_port,
                "POST",
                "/sql",
                &[("Authorization", &auth)],
                q.as_bytes(),
            ) {
                Ok(a) => a,
                // the server answers 413 and closes while an oversized body is still being sent
                Err(e) if q.len() > MAX_BODY && e.starts_with("send") => {
                    *codes
                        .entry("request_too_large (closed)".into())
                        .or_default() += 1;
                    continue;
                }
                Err(e) => panic!("no answer ({e}) to: {}", &q[..q.len().min(300)]),
            };
            assert!(
                [200, 400, 413, 503].contains(&a.status),
                "status {} for: {}\n{}",
                a.status,
                &q[..q.len().min(300)],
                String::from_utf8_lossy(&a.body)
            );
            if a.status == 200 {
                http_ok += 1;
            } else {
                http_refused += 1;
                let code = serde_json::from_slice::<serde_json::Value>(&a.body)
                    .ok()
                    .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "?".into());
                *codes.entry(code).or_default() += 1;
            }
        } else {
            // one statement a line; psql keeps going after errors
            // (no backslashes: psql would read them as its own commands)
            let line = q.replace(['\n', ';', '\\'], " ");
            psql.send(&line, pg_port, password);
            to_psql += 1;
        }
    }
    let (psql_errors, restarts, exit) = psql.finish();
    format!(
        "fuzzed {:?}: HTTP {http_ok} answered, {http_refused} refused {codes:?}; psql {to_psql} \
         statements, {psql_errors} errors, {restarts} sessions closed for oversized messages, \
         exit {exit:?}",
        started.elapsed(),
    )
}

/// One `psql` session reading statements from its standard input, started again when the
/// server closes it for an oversized message (psql joins lines into one statement when a
/// quote or comment of the fuzz leaves one open). Its standard error is read while it runs:
/// a pipe nobody reads fills after 64 KiB of error messages, and psql, then the fuzzer
/// writing its input, would block for ever.
struct Psql {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stderr: Option<JoinHandle<String>>,
    errors: usize,
    restarts: usize,
}

impl Psql {
    fn start(port: u16, password: &str) -> Self {
        let mut child = super::sql_support::psql_command(port, Some(password))
            .args([
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=0",
                "-o",
                "/dev/null",
                "-f",
                "-",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql is missing: install Debian's postgresql-client (.ci/run does)");
        let stdin = child.stdin.take();
        let mut pipe = child.stderr.take().expect("psql's standard error is piped");
        let stderr = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        });
        Psql {
            child,
            stdin,
            stderr: Some(stderr),
            errors: 0,
            restarts: 0,
        }
    }

    fn send(&mut self, line: &str, port: u16, password: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        if stdin
            .write_all(line.as_bytes())
            .and_then(|_| stdin.write_all(b";\n"))
            .is_ok()
        {
            return;
        }
        // psql ended: only a refused oversized message may have ended it
        let (errors, _, _) = self.end();
        let (errors, restarts) = (self.errors + errors, self.restarts + 1);
        *self = Psql::start(port, password);
        self.errors = errors;
        self.restarts = restarts;
    }

    /// Closes its input and waits; (errors, restarts, exit code). Panics when the
    /// connection was lost for any reason but an oversized message.
    fn end(&mut self) -> (usize, usize, Option<i32>) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        let err = self
            .stderr
            .take()
            .map(|reader| reader.join().expect("the stderr reader does not panic"))
            .unwrap_or_default();
        let lost = err.contains("server closed the connection")
            || err.contains("connection to server was lost");
        assert!(
            !lost || err.contains("is over the limit"),
            "psql lost its connection: {}",
            &err[(err.len().saturating_sub(2000)..err.len())
                .find(|i| err.is_char_boundary(*i))
                .unwrap_or(err.len())..]
        );
        (err.matches("ERROR:").count(), self.restarts, status.code())
    }

    fn finish(mut self) -> (usize, usize, Option<i32>) {
        let (errors, restarts, exit) = self.end();
        (self.errors + errors, restarts, exit)
    }
}
