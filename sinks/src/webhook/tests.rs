//! The sink against a real HTTP server on loopback (a few lines of std networking): requests
//! cut by rows, signed, ids stable across a retry, statuses acted upon.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
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

/// A server answering each request with the next of `answers` (status, extra header line),
/// then 200; returns its port and what it received.
fn server(answers: Vec<(u16, &'static str)>) -> (u16, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let answers = Arc::new(Mutex::new(answers));
    let seen = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let (seen, answers) = (seen.clone(), answers.clone());
            std::thread::spawn(move || {
                let mut conn = conn.unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                loop {
                    let mut headers = std::collections::HashMap::new();
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let method = line.split(' ').next().unwrap_or_default().to_string();
                    headers.insert(":method".to_string(), method);
                    loop {
                        line.clear();
                        reader.read_line(&mut line).unwrap();
                        let Some((k, v)) = line.trim_end().split_once(": ") else {
                            break;
                        };
                        headers.insert(k.to_ascii_lowercase(), v.to_string());
                    }
                    let len: usize = headers["content-length"].parse().unwrap();
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).unwrap();
                    seen.lock().unwrap().push(Received { headers, body });
                    let next = {
                        let mut a = answers.lock().unwrap();
                        (!a.is_empty()).then(|| a.remove(0))
                    };
                    let (status, extra) = next.unwrap_or((200, ""));
                    let text = format!("answer {status}");
                    let _ = write!(
                        conn,
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n{extra}\r\n{text}",
                        text.len()
                    );
                }
            });
        }
    });
    (port, got)
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
    let mut sizes: Vec<usize> = got.iter().map(|r| ids(r).len()).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [2, 4, 4]);
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
        3
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
    let started = Instant::now();
    sink.flush().unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "Retry-After: 1 waited"
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
    assert_eq!(
        sink.stats().failures[0].load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn cloudevents_binary_mode_puts_the_attributes_in_headers_and_put_is_used() {
    let (port, got) = server(vec![]);
    let mut cfg = config(port, 100);
    cfg.body = BodyMode::CloudEventsBinary;
    cfg.method = WebhookMethod::Put;
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
