//! The webhook sink: result rows as signed HTTP requests.
//!
//! - Each row is a JSON object led by `_row_id`, a deterministic id (a hash of the pipeline,
//!   the output and the row's key: key columns and `window_start` for a window; for a view,
//!   whose keys are sent again at each change, the whole row as well). A receiver that drops
//!   repeated row ids sees each row once, however requests were cut before and after a
//!   restore.
//! - Requests carry up to `batch_max_rows` rows and about `batch_max_bytes` bytes (a JSON
//!   array), or one row each; as JSON rows or CloudEvents 1.0 (structured or binary mode).
//!   A URL template may hold key columns, so rows go to the URL of their key.
//! - Every request is signed as Standard Webhooks specify (see [`signing`]): `webhook-id`
//!   (from the ids of the rows it carries: a repeated request has the same id),
//!   `webhook-timestamp`, and one `v1,` signature per active secret.
//! - 2xx: delivered. 408, 429, 5xx and requests without an answer stay pending and the call
//!   fails as [`EngineError::Unavailable`], so the engine's retry policy (backoff, circuit
//!   breaker, backpressure) sends them again; a `Retry-After` holds the next attempt back
//!   at least that long. Other answers (4xx, 3xx) send the request's rows to the dead-letter
//!   output with the status, the answer's headers and the first KiB of its body.
//! - Every pending row is sent at each flush and checkpoint barrier (pre-commit): a
//!   checkpoint completes only after its rows were acknowledged (at least once).

pub mod body;
pub mod delivery;
pub mod signing;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use weir_engine::job::Sink;
use weir_engine::stats::DeliveryStats;
use weir_engine::{EngineError, ErrorInfo, RejectedRow};

pub use body::{Batching, BodyMode, UrlTemplate, ROW_ID_FIELD};
pub use signing::Secret;

use crate::file::for_each_json_row;
use delivery::Class;

/// The HTTP method of requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookMethod {
    Post,
    Put,
}

/// What the sink needs to know.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: UrlTemplate,
    pub method: WebhookMethod,
    /// Extra request headers (name, value).
    pub headers: Vec<(String, String)>,
    /// One secret, or two while rotating: each signs every request.
    pub secrets: Vec<Secret>,
    pub batching: Batching,
    pub batch_max_rows: usize,
    pub batch_max_bytes: usize,
    pub body: BodyMode,
    /// One request's time limit.
    pub timeout: Duration,
    /// Requests sent at once.
    pub max_in_flight: usize,
    /// Pending rows older than this are sent even when no request is full.
    pub flush_interval: Duration,
    pub pipeline: String,
    /// The window or view sent.
    pub output: String,
    /// A view's key columns (`None` for a window).
    pub view_keys: Option<usize>,
}

/// A row waiting to be delivered: its URL, id and object in `Pending::bytes`.
struct Row {
    url: Arc<str>,
    id: Box<str>,
    start: usize,
    end: usize,
}

/// Rows not delivered yet.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    rows: Vec<Row>,
    since: Option<Instant>,
}

impl Pending {
    /// Keeps only the rows at `keep` (sorted indices).
    fn retain(&mut self, keep: &[usize]) {
        let mut bytes = Vec::new();
        let mut rows = Vec::with_capacity(keep.len());
        for &i in keep {
            let r = &self.rows[i];
            let start = bytes.len();
            bytes.extend_from_slice(&self.bytes[r.start..r.end]);
            rows.push(Row {
                url: r.url.clone(),
                id: r.id.clone(),
                start,
                end: bytes.len(),
            });
        }
        self.bytes = bytes;
        self.rows = rows;
        if self.rows.is_empty() {
            self.since = None;
        }
    }
}

/// One request: its URL and the indices of its rows in `Pending::rows`.
struct Request {
    url: Arc<str>,
    rows: Vec<usize>,
}

/// What became of one request.
enum Outcome {
    Delivered,
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    Refused(ErrorInfo),
}

/// Result rows as signed webhook requests.
pub struct WebhookSink {
    name: String,
    config: WebhookConfig,
    client: reqwest::blocking::Client,
    headers: reqwest::header::HeaderMap,
    pending: Pending,
    /// The failed call was a write whose rows are already pending.
    write_failed: bool,
    rejected: Vec<RejectedRow>,
    /// No request before this (a `Retry-After`).
    not_before: Option<Instant>,
    stats: Arc<DeliveryStats>,
    /// Reused encoding buffers.
    line: Vec<u8>,
    keys: Vec<u8>,
}

impl WebhookSink {
    /// A sink named `name`; nothing is sent until rows come.
    pub fn new(name: &str, config: WebhookConfig) -> Result<Self, EngineError> {
        let err = |e: &dyn std::fmt::Display| EngineError::sink(name, e);
        if config.secrets.is_empty() {
            return Err(err(&"a webhook sink needs a secret"));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        for (k, v) in &config.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| err(&format!("`{k}` is not an HTTP header name")))?;
            let mut value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|_| err(&format!("header `{k}`: a value HTTP cannot carry")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let client = reqwest::blocking::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(config.max_in_flight.max(1))
            .user_agent(concat!("weir/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| err(&e))?;
        Ok(WebhookSink {
            name: name.to_string(),
            config,
            client,
            headers,
            pending: Pending::default(),
            write_failed: false,
            rejected: Vec::new(),
            not_before: None,
            stats: Arc::new(DeliveryStats::default()),
            line: Vec::new(),
            keys: Vec::new(),
        })
    }

    /// Its delivery counters (for `/metrics`).
    pub fn stats(&self) -> Arc<DeliveryStats> {
        self.stats.clone()
    }

    fn fatal(&self, e: impl std::fmt::Display) -> EngineError {
        EngineError::sink(&self.name, e)
    }

    /// Appends `batch`'s rows as pending row objects with their ids and URLs.
    fn add_rows(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
        let schema = batch.schema();
        let key_count = match self.config.view_keys {
            Some(k) => k,
            None => {
                schema
                    .index_of("window_start")
                    .map_err(|_| self.fatal("rows without `window_start` cannot be keyed"))?
                    + 1
            }
        };
        let key_batch = batch
            .project(&(0..key_count).collect::<Vec<_>>())
            .map_err(|e| self.fatal(e))?;
        self.keys.clear();
        let mut key_ends = Vec::with_capacity(batch.num_rows());
        let keys = &mut self.keys;
        for_each_json_row(&key_batch, &mut self.line, |_, k| {
            keys.extend_from_slice(k);
            key_ends.push(keys.len());
            Ok(())
        })
        .map_err(|e| self.fatal(e))?;
        let urls = self.row_urls(batch)?;
        let (cfg, pending, keys) = (&self.config, &mut self.pending, &self.keys);
        for_each_json_row(batch, &mut self.line, |row, json| {
            let start = if row == 0 { 0 } else { key_ends[row - 1] };
            let key = &keys[start..key_ends[row]];
            let content = cfg.view_keys.map(|_| json);
            let id = body::row_id(&cfg.pipeline, &cfg.output, key, content);
            let start = pending.bytes.len();
            body::row_object(&mut pending.bytes, &id, json);
            pending.rows.push(Row {
                url: urls[row].clone(),
                id: id.into(),
                start,
                end: pending.bytes.len(),
            });
            Ok(())
        })
        .map_err(|e| self.fatal(e))?;
        if batch.num_rows() > 0 {
            self.pending.since.get_or_insert_with(Instant::now);
        }
        Ok(())
    }

    /// The URL of each row of `batch` (the same one unless the template names columns).
    fn row_urls(&self, batch: &RecordBatch) -> Result<Vec<Arc<str>>, EngineError> {
        let cfg = &self.config;
        let columns = cfg.url.columns();
        if columns.is_empty() {
            let url: Arc<str> = cfg
                .url
                .render(&cfg.pipeline, &cfg.output, |_| String::new())
                .into();
            return Ok(vec![url; batch.num_rows()]);
        }
        let opts = FormatOptions::default().with_null("");
        let mut formatters = Vec::new();
        for c in &columns {
            let col = batch
                .column_by_name(c)
                .ok_or_else(|| self.fatal(format!("`url` names `{c}`, which the rows lack")))?;
            formatters.push((
                *c,
                ArrayFormatter::try_new(col.as_ref(), &opts).map_err(|e| self.fatal(e))?,
            ));
        }
        let mut last: Option<(String, Arc<str>)> = None;
        let mut out = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let url = cfg.url.render(&cfg.pipeline, &cfg.output, |c| {
                formatters
                    .iter()
                    .find(|(n, _)| *n == c)
                    .map(|(_, f)| f.value(row).to_string())
                    .unwrap_or_default()
            });
            let shared = match &last {
                Some((u, a)) if *u == url => a.clone(),
                _ => {
                    let a: Arc<str> = url.as_str().into();
                    last = Some((url, a.clone()));
                    a
                }
            };
            out.push(shared);
        }
        Ok(out)
    }

    /// The requests of the pending rows: per URL in order of first appearance, cut by rows
    /// and bytes.
    fn requests(&self) -> Vec<Request> {
        let mut by_url: Vec<(Arc<str>, Vec<usize>)> = Vec::new();
        let mut index: std::collections::HashMap<Arc<str>, usize> = Default::default();
        for (i, r) in self.pending.rows.iter().enumerate() {
            let k = *index.entry(r.url.clone()).or_insert_with(|| {
                by_url.push((r.url.clone(), Vec::new()));
                by_url.len() - 1
            });
            by_url[k].1.push(i);
        }
        let max_rows = match self.config.batching {
            Batching::Single => 1,
            Batching::Array => self.config.batch_max_rows,
        };
        let mut out = Vec::new();
        for (url, rows) in by_url {
            let sizes: Vec<usize> = rows
                .iter()
                .map(|&i| self.pending.rows[i].end - self.pending.rows[i].start)
                .collect();
            for range in body::cut(&sizes, max_rows, self.config.batch_max_bytes) {
                out.push(Request {
                    url: url.clone(),
                    rows: rows[range].to_vec(),
                });
            }
        }
        out
    }

    /// Waits out a `Retry-After` an earlier answer asked for.
    fn wait_retry_after(&mut self) {
        if let Some(t) = self.not_before.take() {
            let now = Instant::now();
            if t > now {
                tracing::info!(sink = %self.name, wait_ms = (t - now).as_millis() as u64, "waiting as Retry-After asked");
                std::thread::sleep(t - now);
            }
        }
    }

    /// Sends every pending row; rows to send again stay pending and make the call fail as
    /// unavailable, rows refused for good go to `rejected`.
    fn send_pending(&mut self) -> Result<(), EngineError> {
        if self.pending.rows.is_empty() {
            return Ok(());
        }
        self.wait_retry_after();
        let requests = self.requests();
        let mut keep = Vec::new();
        let (mut retry_rows, mut first_reason, mut wait) = (0usize, None, None::<Duration>);
        for (req, outcome) in requests.iter().zip(self.send_all(&requests)) {
            match outcome {
                Outcome::Delivered => {}
                Outcome::Retry { reason, after } => {
                    retry_rows += req.rows.len();
                    first_reason.get_or_insert(reason);
                    if let Some(a) = after {
                        wait = Some(wait.map_or(a, |w| w.max(a)));
                    }
                    keep.extend_from_slice(&req.rows);
                }
                Outcome::Refused(error) => {
                    for &i in &req.rows {
                        let r = &self.pending.rows[i];
                        self.rejected.push(RejectedRow {
                            raw: self.pending.bytes[r.start..r.end].to_vec(),
                            error: error.clone(),
                        });
                    }
                }
            }
        }
        let total = self.pending.rows.len();
        keep.sort_unstable();
        self.pending.retain(&keep);
        if retry_rows == 0 {
            return Ok(());
        }
        if let Some(w) = wait {
            self.not_before = Some(Instant::now() + w);
        }
        Err(self
            .fatal(format!(
                "{retry_rows} of {total} rows not delivered yet: {}",
                first_reason.unwrap_or_default()
            ))
            .unavailable())
    }

    /// Sends `requests`, `max_in_flight` at a time: each of that many threads takes the next
    /// request not sent yet as soon as its previous one was answered. After an answer asking
    /// to wait (408, 429, 5xx, no answer), no new request starts: those not sent are
    /// outcomes to retry as well.
    fn send_all(&self, requests: &[Request]) -> Vec<Outcome> {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let next = AtomicUsize::new(0);
        let hold = AtomicBool::new(false);
        let outcomes: Vec<std::sync::Mutex<Option<Outcome>>> =
            requests.iter().map(|_| Default::default()).collect();
        let work = || loop {
            if hold.load(Ordering::SeqCst) {
                return;
            }
            let i = next.fetch_add(1, Ordering::SeqCst);
            let Some(req) = requests.get(i) else {
                return;
            };
            let outcome = self.send(req);
            if matches!(outcome, Outcome::Retry { .. }) {
                hold.store(true, Ordering::SeqCst);
            }
            if let Ok(mut slot) = outcomes[i].lock() {
                *slot = Some(outcome);
            }
        };
        let threads = self.config.max_in_flight.clamp(1, requests.len().max(1));
        if threads == 1 {
            work();
        } else {
            std::thread::scope(|scope| {
                for _ in 0..threads {
                    scope.spawn(work);
                }
            });
        }
        outcomes
            .into_iter()
            .map(|slot| {
                slot.into_inner().ok().flatten().unwrap_or(Outcome::Retry {
                    reason: "not sent: the endpoint asked to wait".into(),
                    after: None,
                })
            })
            .collect()
    }

    /// Builds, signs and sends one request, and reads what its answer means.
    fn send(&self, req: &Request) -> Outcome {
        let cfg = &self.config;
        let rows: Vec<(&str, &[u8])> = req
            .rows
            .iter()
            .map(|&i| {
                let r = &self.pending.rows[i];
                (&*r.id, &self.pending.bytes[r.start..r.end])
            })
            .collect();
        let id = body::message_id(rows.iter().map(|r| r.0));
        let kind = if cfg.view_keys.is_some() {
            "view"
        } else {
            "window"
        };
        let ev = body::EventSource {
            pipeline: &cfg.pipeline,
            output: &cfg.output,
            kind,
        };
        let (bytes, ctype) = body::body(cfg.body, cfg.batching, &ev, &rows);
        let timestamp = weir_engine::time::now_ms().div_euclid(1000);
        let signature = signing::signature_header(&cfg.secrets, &id, timestamp, &bytes);
        let method = match cfg.method {
            WebhookMethod::Post => reqwest::Method::POST,
            WebhookMethod::Put => reqwest::Method::PUT,
        };
        let mut builder = self
            .client
            .request(method, &*req.url)
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, ctype)
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature);
        if cfg.body == BodyMode::CloudEventsBinary {
            builder = builder
                .header("ce-specversion", "1.0")
                .header("ce-id", &id)
                .header("ce-source", ev.source())
                .header("ce-type", ev.event_type())
                .header("ce-subject", &cfg.output);
        }
        let started = Instant::now();
        let answer = builder.body(bytes).send();
        self.stats.latency.observe(started.elapsed().as_secs_f64());
        let resp = match answer {
            Ok(r) => r,
            Err(e) => {
                self.stats.failed(delivery::failure_class(None));
                return Outcome::Retry {
                    reason: format!("{}: {}", req.url, error_chain(&e)),
                    after: None,
                };
            }
        };
        let status = resp.status().as_u16();
        match delivery::classify(status) {
            Class::Delivered => {
                weir_engine::stats::RunStats::add(&self.stats.delivered, 1);
                weir_engine::stats::RunStats::add(&self.stats.rows_delivered, rows.len() as u64);
                Outcome::Delivered
            }
            class => {
                self.stats.failed(delivery::failure_class(Some(status)));
                self.failed_answer(req, &id, class, resp)
            }
        }
    }

    /// What a non-2xx answer means: a retry (with its `Retry-After`) or a refusal with the
    /// status, headers and the first KiB of the body.
    fn failed_answer(
        &self,
        req: &Request,
        id: &str,
        class: Class,
        resp: reqwest::blocking::Response,
    ) -> Outcome {
        let status = resp.status();
        let after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| delivery::retry_after(v, SystemTime::now()));
        let headers: serde_json::Map<String, serde_json::Value> = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
                )
            })
            .collect();
        let bytes = resp.bytes().unwrap_or_default();
        let head = delivery::body_head(&bytes);
        let short: String = head.chars().take(200).collect();
        if class == Class::Retry {
            return Outcome::Retry {
                reason: format!("{} answered {status}: {short}", req.url),
                after,
            };
        }
        Outcome::Refused(
            ErrorInfo::new(
                "webhook_refused",
                format!("{} answered {status}: {short}", req.url),
            )
            .with("status", status.as_u16())
            .with("url", &*req.url)
            .with("webhook_id", id)
            .with("headers", serde_json::Value::Object(headers))
            .with("body", head),
        )
    }
}

/// Whether `name: value` can be an extra request header: a valid name and value, and none
/// of the headers the sink sets itself (`webhook-*`, `ce-*`, `content-type`).
pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("webhook-") || lower.starts_with("ce-") || lower == "content-type" {
        return Err(format!("header `{name}` is set by the sink itself"));
    }
    if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!("`{name}` is not an HTTP header name"));
    }
    if reqwest::header::HeaderValue::from_str(value).is_err() {
        return Err(format!(
            "header `{name}`: the value holds characters HTTP headers cannot carry"
        ));
    }
    Ok(())
}

/// An error with its causes (reqwest hides the reason of a refused connection in them).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl Sink for WebhookSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
        if !std::mem::take(&mut self.write_failed) {
            self.add_rows(batch)?;
        }
        let room = self.config.max_in_flight.max(1);
        let max_rows = match self.config.batching {
            Batching::Single => 1,
            Batching::Array => self.config.batch_max_rows,
        };
        let full = self.pending.rows.len() >= max_rows * room
            || self.pending.bytes.len() >= self.config.batch_max_bytes * room
            || self
                .pending
                .since
                .is_some_and(|t| t.elapsed() >= self.config.flush_interval);
        if full {
            if let Err(e) = self.send_pending() {
                // the rows are pending: the retried call only sends them again
                self.write_failed = true;
                return Err(e);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<bool, EngineError> {
        self.send_pending()?;
        Ok(true)
    }

    fn finish(&mut self) -> Result<(), EngineError> {
        self.send_pending()
    }

    fn take_rejected(&mut self) -> Vec<RejectedRow> {
        std::mem::take(&mut self.rejected)
    }
}
