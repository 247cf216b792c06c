//! The sink against a real HTTP server on loopback (a few lines of std networking): requests
//! cut by rows, signed, ids stable across a retry, statuses acted upon.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use serde_json::Value;

use super::*;

/// One request the server received: its headers (lowercase names) and body.
#[derive(Debug, Clone)]
struct Received {
    headers: std::collections::HashMap<String, String>,
    body: Vec<u8>,
}

/// What a test server answers a request: status, extra header lines, body.
type Answer = (u16, String, Vec<u8>);

/// A server answering each request with what `answer` says (given the request and how many
/// came before it), after `delay`; returns its port, what it received and how many
/// connections it accepted.
#[allow(clippy::type_complexity)]
fn server_fn(
    delay: Duration,
    answer: impl Fn(&Received, usize) -> Answer + Send + Sync + 'static,
) -> (u16, Arc<Mutex<Vec<Received>>>, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(Mutex::new(0));
    let answer = Arc::new(answer);
    let (seen, conns) = (got.clone(), connections.clone());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            *conns.lock().unwrap() += 1;
            let (seen, answer) = (seen.clone(), answer.clone());
            std::thread::spawn(move || {
                let mut conn = conn.unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                loop {
                    let mut headers = std::collections::HashMap::new();
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split(' ');
                    let method = parts.next().unwrap_or_default().to_string();
                    headers.insert(":method".to_string(), method);
                    headers.insert(
                        ":path".to_string(),
                        parts.next().unwrap_or_default().to_string(),
                    );
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let Some((k, v)) = line.trim_end().split_once(": ") else {
                            break;
                        };
                        headers.insert(k.to_ascii_lowercase(), v.to_string());
                    }
                    let len: usize = headers
                        .get("content-length")
                        .map_or(0, |n| n.parse().unwrap());
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let r = Received { headers, body };
                    let n = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(r.clone());
                        seen.len() - 1
                    };
                    std::thread::sleep(delay);
                    let (status, extra, text) = answer(&r, n);
                    let mut head = format!("HTTP/1.1 {status} X\r\n{extra}").into_bytes();
                    if !extra.to_ascii_lowercase().contains("content-length") {
                        head.extend(format!("Content-Length: {}\r\n", text.len()).bytes());
                    }
                    head.extend(b"\r\n");
                    // a body over 10,000 bytes comes in two parts 20 ms apart: a client
                    // that drops the answer unread cannot have it all yet
                    let split = if text.len() > 10_000 {
                        1000
                    } else {
                        text.len()
                    };
                    head.extend(&text[..split]);
                    if conn.write_all(&head).is_err() {
                        return;
                    }
                    if split < text.len() {
                        std::thread::sleep(Duration::from_millis(20));
                        if conn.write_all(&text[split..]).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, got, connections)
}

/// A server answering each request with the next of `answers` (status, extra header line),
/// then 200; returns its port and what it received.
fn server(answers: Vec<(u16, &'static str)>) -> (u16, Arc<Mutex<Vec<Received>>>) {
    let answers = Mutex::new(answers);
    let (port, got, _) = server_fn(Duration::ZERO, move |_, _| {
        let next = {
            let mut a = answers.lock().unwrap();
            (!a.is_empty()).then(|| a.remove(0))
        };
        let (status, extra) = next.unwrap_or((200, ""));
        (
            status,
            extra.to_string(),
            format!("answer {status}").into_bytes(),
        )
    });
    (port, got)
}

/// A retry policy with short waits.
fn quick_retries() -> weir_engine::retry::RetryPolicy {
    weir_engine::retry::RetryPolicy {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(10),
        jitter: 0.0,
        ..Default::default()
    }
}

fn config(port: u16, batch_max_rows: usize) -> WebhookConfig {
    WebhookConfig {
        url: UrlTemplate::parse(&format!("http://127.0.0.1:{port}/hooks/{{output}}")).unwrap(),
        method: WebhookMethod::Post,
        headers: vec![("X-Tenant".into(), "t1".into())],
        secrets: vec![Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()],
        batching: Batching::Array,
        batch_max_rows,
        batch_max_bytes: 1 << 20,
        body: BodyMode::Json,
        timeout: Duration::from_secs(5),
        max_in_flight: 2,
        flush_interval: Duration::from_secs(60),
        pipeline: "p".into(),
        output: "per_ds".into(),
        view_keys: None,
        give_up_after: None,
    }
}

/// A window's rows: datasets `d0..dN`, one window.
fn rows(n: usize) -> RecordBatch {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("datasetName", DataType::Utf8, false),
        Field::new("window_start", ts.clone(), false),
        Field::new("window_end", ts, false),
        Field::new("events", DataType::Int64, false),
    ]));
    let utc = |v: Vec<i64>| TimestampMillisecondArray::from(v).with_timezone("UTC");
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("d{i}")),
            )),
            Arc::new(utc(vec![60_000; n])),
            Arc::new(utc(vec![120_000; n])),
            Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i * 10))),
        ],
    )
    .unwrap()
}

/// The row ids of a body (a JSON array).
fn ids(r: &Received) -> Vec<String> {
    let v: Vec<Value> = serde_json::from_slice(&r.body).unwrap();
    v.iter()
        .map(|row| row["_row_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn requests_are_cut_by_rows_signed_and_their_ids_follow_their_rows() {
    let (port, got) = server(vec![]);
    let mut sink = WebhookSink::new("hook", config(port, 4)).unwrap();
    sink.write(&rows(10)).unwrap();
    sink.flush().unwrap();
    let got = got.lock().unwrap().clone();
    // per lane (2: max_in_flight), arrays of at most 4 rows
    let sizes: Vec<usize> = got.iter().map(|r| ids(r).len()).collect();
    assert!(sizes.iter().all(|&n| (1..=4).contains(&n)), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 10);
    let secret = &config(port, 4).secrets[0];
    let mut all = Vec::new();
    for r in &got {
        let h = &r.headers;
        let (id, ts) = (
            &h["webhook-id"],
            h["webhook-timestamp"].parse::<i64>().unwrap(),
        );
        assert_eq!(h["webhook-signature"], secret.sign(id, ts, &r.body));
        assert_eq!(*id, body::message_id(ids(r).iter().map(String::as_str)));
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["x-tenant"], "t1");
        all.extend(ids(r));
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 10, "every row once, each with its own id");
    let stats = sink.stats();
    assert_eq!(
        stats.delivered.load(std::sync::atomic::Ordering::Relaxed),
        got.len() as u64
    );
    assert_eq!(
        stats
            .rows_delivered
            .load(std::sync::atomic::Ordering::Relaxed),
        10
    );
}

#[test]
fn a_503_keeps_the_rows_and_the_retry_carries_the_same_ids() {
    let (port, got) = server(vec![(503, "Retry-After: 1\r\n")]);
    let mut cfg = config(port, 100);
    cfg.max_in_flight = 1;
    let mut sink = WebhookSink::new("hook", cfg).unwrap();
    sink.write(&rows(3)).unwrap();
    let e = sink.flush().unwrap_err();
    assert!(matches!(e, EngineError::Unavailable(_)), "{e}");
    assert!(
        e.to_string().contains("3 of 3 rows not delivered yet"),
        "{e}"
    );
    // the sink asks the retry policy for the wait, and does not wait itself
    let asked = e.retry_after().expect("Retry-After: 1 asked for");
    assert!(asked > Duration::from_millis(900) && asked <= Duration::from_secs(1));
    let started = Instant::now();
    let again = sink.flush().unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "no sleep in the sink"
    );
    assert!(again.retry_after().is_some_and(|w| w <= asked));
    assert_eq!(
        got.lock().unwrap().len(),
        1,
        "nothing sent before Retry-After passed"
    );
    // under the retry policy (a 10 ms backoff): the Retry-After's wait, then the request
    let health = weir_engine::retry::OutputHealth::default();
    let cancel = AtomicBool::new(false);
    let mut retrier = weir_engine::retry::Retrier::new("hook", quick_retries(), &health, &cancel);
    retrier.call("flush", || sink.flush()).unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "Retry-After: 1 waited: {:?}",
        started.elapsed()
    );
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].body, got[1].body, "the same body again");
    assert_eq!(got[0].headers["webhook-id"], got[1].headers["webhook-id"]);
    assert!(sink.take_rejected().is_empty());
    assert_eq!(
        sink.stats().failures[3].load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn a_400_rejects_the_rows_of_its_request_and_no_answer_is_unavailable() {
    let (port, _) = server(vec![(400, "X-Reason: nope\r\n")]);
    let mut cfg = config(port, 2);
    cfg.max_in_flight = 1;
    let mut sink = WebhookSink::new("hook", cfg).unwrap();
    sink.write(&rows(4)).unwrap();
    sink.flush().unwrap();
    let rejected = sink.take_rejected();
    assert_eq!(rejected.len(), 2, "the first request's rows");
    let e = &rejected[0].error;
    assert_eq!(e.code, "webhook_refused");
    assert_eq!(e.details["status"], 400);
    assert_eq!(e.details["headers"]["x-reason"], "nope");
    assert_eq!(e.details["body"], "answer 400");
    let raw: Value = serde_json::from_slice(&rejected[0].raw).unwrap();
    assert_eq!(raw["datasetName"], "d0");
    // nobody listening: unavailable, the rows stay
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut sink = WebhookSink::new("hook", config(dead_port, 2)).unwrap();
    sink.write(&rows(2)).unwrap();
    assert!(matches!(sink.flush(), Err(EngineError::Unavailable(_))));
    assert_eq!(sink.pending.rows.len(), 2);
    assert!(sink.stats().failures[0].load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

#[test]
fn cloudevents_binary_mode_puts_the_attributes_in_headers_and_put_is_used() {
    let (port, got) = server(vec![]);
    let mut cfg = config(port, 100);
    cfg.body = BodyMode::CloudEventsBinary;
    cfg.method = WebhookMethod::Put;
    cfg.max_in_flight = 1;
    let mut sink = WebhookSink::new("hook", cfg).unwrap();
    sink.write(&rows(2)).unwrap();
    sink.flush().unwrap();
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let h = &got[0].headers;
    assert_eq!(h["ce-specversion"], "1.0");
    assert_eq!(h["ce-id"], h["webhook-id"]);
    assert_eq!(h["ce-source"], "weir/p/per_ds");
    assert_eq!(h["ce-type"], "dev.weir.window.result");
    assert_eq!(h["ce-subject"], "per_ds");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h[":method"], "PUT");
    assert_eq!(ids(&got[0]).len(), 2);
}

/// Rows of `keys` datasets in `windows` consecutive 1-minute windows, window by window.
fn windows(keys: usize, windows: usize) -> RecordBatch {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("datasetName", DataType::Utf8, true),
        Field::new("window_start", ts.clone(), false),
        Field::new("window_end", ts, false),
        Field::new("events", DataType::Int64, false),
    ]));
    let n = keys * windows;
    let utc = |v: Vec<i64>| TimestampMillisecondArray::from(v).with_timezone("UTC");
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| format!("d{}", i % keys)),
            )),
            Arc::new(utc((0..n).map(|i| (i / keys) as i64 * 60_000).collect())),
            Arc::new(utc((0..n)
                .map(|i| (i / keys + 1) as i64 * 60_000)
                .collect())),
            Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i * 10))),
        ],
    )
    .unwrap()
}

/// Whether a row is of the first window (1970-01-01 00:00).
fn first_window(v: &Value) -> bool {
    v["window_start"]
        .as_str()
        .is_some_and(|w| w.starts_with("1970-01-01T00:00:00"))
}

/// The rows of a request body (an array, or one object).
fn body_rows(r: &Received) -> Vec<Value> {
    match serde_json::from_slice(&r.body).unwrap() {
        Value::Array(a) => a,
        v => vec![v],
    }
}

#[test]
fn the_rows_of_a_key_arrive_in_order_while_requests_run_in_parallel_and_fail() {
    rows_of_a_key_arrive_in_order("hooks/{output}");
}

/// The same with a URL per window: one key's windows go to several URLs, still in order.
#[test]
fn the_rows_of_a_key_arrive_in_order_with_a_url_per_window() {
    rows_of_a_key_arrive_in_order("hooks/{output}/{window_start}");
}

fn rows_of_a_key_arrive_in_order(path: &str) {
    // the first request carrying d0's first window fails; requests are slow, so several
    // are in flight at once (4 lanes)
    let failed = Arc::new(AtomicBool::new(false));
    let f = failed.clone();
    let (port, got, _) = server_fn(Duration::from_millis(150), move |r, _| {
        let rows = body_rows(r);
        let first_d0 = rows
            .iter()
            .any(|v| v["datasetName"] == "d0" && first_window(v));
        if first_d0 && !f.swap(true, Ordering::SeqCst) {
            return (503, String::new(), b"busy".to_vec());
        }
        (200, String::new(), b"ok".to_vec())
    });
    let mut cfg = config(port, 1);
    cfg.url = UrlTemplate::parse(&format!("http://127.0.0.1:{port}/{path}")).unwrap();
    cfg.max_in_flight = 4;
    let mut sink = WebhookSink::new("hook", cfg).unwrap();
    // the write sends (6 rows fill 4 requests): its 503 leaves rows pending
    let first = sink.write(&windows(2, 3));
    assert!(
        matches!(first, Err(EngineError::Unavailable(_))),
        "{first:?}"
    );
    sink.flush().unwrap();
    assert!(failed.load(Ordering::SeqCst));
    // what the receiver accepted, in arrival order: each key's windows only move forward
    let got = got.lock().unwrap().clone();
    let mut accepted: Vec<(String, String)> = Vec::new();
    let mut refused_once = false;
    for r in &got {
        let rows = body_rows(r);
        let is_failed = !refused_once
            && rows
                .iter()
                .any(|v| v["datasetName"] == "d0" && first_window(v));
        if is_failed {
            refused_once = true;
            continue;
        }
        for v in rows {
            accepted.push((
                v["datasetName"].as_str().unwrap().to_string(),
                v["window_start"].as_str().unwrap().to_string(),
            ));
        }
    }
    assert_eq!(accepted.len(), 6, "{accepted:?}");
    for key in ["d0", "d1"] {
        let starts: Vec<&str> = accepted
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, w)| w.as_str())
            .collect();
        assert!(starts.windows(2).all(|p| p[0] < p[1]), "{key}: {starts:?}");
    }
}

#[test]
fn a_long_retry_after_is_waited_by_the_retry_policy_and_a_stopped_run_ends_it() {
    let (port, got) = server(vec![(429, "Retry-After: 300\r\n")]);
    let mut cfg = config(port, 100);
    cfg.max_in_flight = 1;
    let mut sink = WebhookSink::new("hook", cfg).unwrap();
    sink.write(&rows(3)).unwrap();
    let health = weir_engine::retry::OutputHealth::default();
    let cancel = AtomicBool::new(false);
    std::thread::scope(|s| {
        let started = Instant::now();
        let job = s.spawn(|| {
            let mut retrier =
                weir_engine::retry::Retrier::new("hook", quick_retries(), &health, &cancel);
            retrier.call("flush", || sink.flush())
        });
        std::thread::sleep(Duration::from_millis(500));
        cancel.store(true, Ordering::Relaxed);
        let result = job.join().unwrap();
        assert!(matches!(result, Err(EngineError::Cancelled)), "{result:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the stop ended the wait: {:?}",
            started.elapsed()
        );
    });
    assert_eq!(
        got.lock().unwrap().len(),
        1,
        "no request before Retry-After"
    );
    assert_eq!(sink.pending.rows.len(), 3);
}

#[test]
fn only_the_first_kib_of_a_refusing_body_is_read_and_small_bodies_keep_the_connection() {
    // a 400 announcing 100 MB, of which 2000 bytes come: the sink reads what it keeps
    let (port, _, _) = server_fn(Duration::ZERO, |_, _| {
        (
            400,
            "Content-Length: 100000000\r\n".to_string(),
            vec![b'x'; 2000],
        )
    });
    let mut cfg = config(port, 100);
    cfg.timeout = Duration::from_secs(5);
    let mut sink = WebhookSink::new("hook", cfg).unwrap();
    sink.write(&rows(2)).unwrap();
    let started = Instant::now();
    sink.flush().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the body was read on: {:?}",
        started.elapsed()
    );
    let rejected = sink.take_rejected();
    assert_eq!(rejected.len(), 2);
    assert_eq!(
        rejected[0].error.details["body"].as_str().unwrap().len(),
        1024
    );
    // 2xx with bodies up to 16 KiB, read to their end: the connection serves the requests
    // that follow. Not always exactly one connection: hyper's pool opens a new one when a
    // request finds no idle connection, racing the one whose body was just read on its
    // way back to the pool (hyperium/hyper#4134). A body left unread closes its connection:
    // one connection per request.
    let (port, got, connections) = server_fn(Duration::ZERO, |_, _| {
        (200, String::new(), vec![b'k'; 12_000])
    });
    let mut cfg = config(port, 1);
    cfg.max_in_flight = 1;
    let mut sink = WebhookSink::new("hook", cfg).unwrap();
    const REQUESTS: usize = 12;
    for _ in 0..REQUESTS {
        sink.write(&rows(1)).unwrap();
        sink.flush().unwrap();
    }
    assert_eq!(got.lock().unwrap().len(), REQUESTS);
    // under load the race above opens more of them (a third of the requests was seen
    // exceeded with the other core busy): a body left unread would open one per request
    let opened = *connections.lock().unwrap();
    assert!(
        opened < REQUESTS,
        "the connections were not kept alive: {opened} for {REQUESTS} requests"
    );
}

#[test]
fn a_401_or_403_is_a_failure_of_the_sink_not_a_refusal_of_rows() {
    for status in [401, 403] {
        let (port, got) = server(vec![(status, "")]);
        let mut cfg = config(port, 100);
        cfg.max_in_flight = 1;
        let mut sink = WebhookSink::new("hook", cfg).unwrap();
        sink.write(&rows(3)).unwrap();
        let e = sink.flush().unwrap_err();
        assert!(matches!(e, EngineError::Unavailable(_)), "{e}");
        assert!(e.to_string().contains(&format!("answered {status}")), "{e}");
        assert!(e.to_string().contains("`secret`"), "{e}");
        assert!(sink.take_rejected().is_empty(), "no row dead-lettered");
        assert_eq!(sink.pending.rows.len(), 3);
        assert_eq!(sink.stats().failures[2].load(Ordering::Relaxed), 1);
        // the receiver takes the credentials again: delivered
        sink.flush().unwrap();
        assert_eq!(got.lock().unwrap().len(), 2);
        assert!(sink.pending.rows.is_empty());
    }
}

/// A sink of 100-row requests to `http://127.0.0.1:{port}/{path}` (a URL template).
fn sink_to(port: u16, path: &str) -> WebhookSink {
    let mut cfg = config(port, 100);
    cfg.url = UrlTemplate::parse(&format!("http://127.0.0.1:{port}/{path}")).unwrap();
    WebhookSink::new("hook", cfg).unwrap()
}

/// `batch` with its first column (`datasetName`) replaced by `names`.
fn with_names(batch: RecordBatch, names: &[Option<&str>]) -> RecordBatch {
    let mut columns = batch.columns().to_vec();
    columns[0] = Arc::new(StringArray::from(names.to_vec()));
    RecordBatch::try_new(batch.schema(), columns).unwrap()
}

#[test]
fn a_key_of_dots_never_moves_a_row_to_another_path() {
    let (port, got) = server(vec![]);
    let mut sink = sink_to(port, "tenants/{datasetName}/events");
    let batch = with_names(windows(3, 1), &[Some(".."), Some("."), Some("a..")]);
    sink.write(&batch).unwrap();
    sink.flush().unwrap();
    let rejected = sink.take_rejected();
    assert_eq!(rejected.len(), 2, "`..` and `.` have no URL");
    assert!(rejected.iter().all(|r| r.error.code == "webhook_no_url"));
    let paths: Vec<String> = got
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.headers[":path"].clone())
        .collect();
    assert_eq!(paths, vec!["/tenants/a../events".to_string()], "{paths:?}");
}

#[test]
fn a_row_without_a_url_goes_to_the_dead_letters_and_the_others_on() {
    let (port, got) = server(vec![]);
    let mut sink = sink_to(port, "hooks/{output}/{datasetName}");
    let batch = with_names(windows(2, 1), &[Some("d0"), None]);
    sink.write(&batch).unwrap();
    sink.flush().unwrap();
    let rejected = sink.take_rejected();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].error.code, "webhook_no_url");
    assert!(
        rejected[0].error.message.contains("`datasetName` is null"),
        "{}",
        rejected[0].error.message
    );
    let raw: Value = serde_json::from_slice(&rejected[0].raw).unwrap();
    assert_eq!(raw["datasetName"], Value::Null);
    assert!(raw["_row_id"].as_str().unwrap().starts_with("row_"));
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].headers[":path"], "/hooks/per_ds/d0");
}

#[test]
fn messages_and_dead_letters_name_the_url_without_user_password_or_query() {
    let (port, _) = server(vec![(400, "")]);
    let mut cfg = config(port, 100);
    cfg.url = UrlTemplate::parse(&format!(
        "http://user:pass-w0rd@127.0.0.1:{port}/hooks/{{output}}?token=sekrit"
    ))
    .unwrap();
    let mut sink = WebhookSink::new("hook", cfg.clone()).unwrap();
    sink.write(&rows(1)).unwrap();
    sink.flush().unwrap();
    let rejected = sink.take_rejected();
    let e = &rejected[0].error;
    let text = format!("{} {}", e.message, Value::Object(e.details.clone()));
    assert!(
        !text.contains("sekrit") && !text.contains("pass-w0rd"),
        "{text}"
    );
    assert_eq!(
        e.details["url"],
        format!("http://127.0.0.1:{port}/hooks/per_ds")
    );
    // no answer: the retry message
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap().port();
    drop(closed);
    cfg.url = UrlTemplate::parse(&format!(
        "http://user:pass-w0rd@127.0.0.1:{dead}/hooks?token=sekrit"
    ))
    .unwrap();
    let mut sink = WebhookSink::new("hook", cfg).unwrap();
    sink.write(&rows(1)).unwrap();
    let e = sink.flush().unwrap_err().to_string();
    assert!(e.contains(&format!("http://127.0.0.1:{dead}/hooks")), "{e}");
    assert!(!e.contains("sekrit") && !e.contains("pass-w0rd"), "{e}");
}

/// How many of this process's threads have a name starting with `prefix` (Linux keeps the
/// first 15 bytes of a thread's name in `/proc/self/task/*/comm`).
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

#[test]
fn the_sink_and_a_registry_client_run_on_the_io_runtime_and_start_no_thread() {
    let (port, got, _) = server_fn(Duration::ZERO, |r, _| {
        let body: &[u8] = if r.headers[":path"].starts_with("/schemas/ids/") {
            br#"{"schema":"\"long\""}"#
        } else {
            b"ok"
        };
        (200, String::new(), body.to_vec())
    });
    let mut sink = WebhookSink::new("hooks", config(port, 10)).unwrap();
    let registry = weir_formats::registry::RegistryClient::with_bearer(
        &format!("http://127.0.0.1:{port}"),
        None,
    )
    .unwrap();
    sink.write(&rows(25)).unwrap();
    sink.flush().unwrap();
    assert_eq!(registry.schema_text(1).unwrap(), "\"long\"");
    let paths: Vec<String> = got
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.headers[":path"].clone())
        .collect();
    assert!(paths.len() >= 4, "{paths:?}");
    assert_eq!(paths.last().unwrap(), "/schemas/ids/1");
    // both clients are alive and have answered: a `reqwest::blocking` client would keep a
    // thread `reqwest-internal-sync-runtime` of its own (`reqwest-interna` in `comm`)
    assert_eq!(threads_named("reqwest-interna"), 0);
    assert!(threads_named("weir-io") >= 1);
    // their pooled connections wait as tasks of the I/O runtime
    let io = weir_engine::io::runtime().unwrap();
    assert!(io.metrics().num_alive_tasks() >= 1);
}

mod per_url;
