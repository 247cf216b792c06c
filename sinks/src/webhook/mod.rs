//! The webhook sink: result rows as signed HTTP requests.
//!
//! - Each row is a JSON object led by `_row_id`, a deterministic id (a hash of the pipeline,
//!   the output and the row's key: key columns and `window_start` for a window; for a view,
//!   whose keys are sent again at each change, the whole row as well). A receiver that drops
//!   repeated row ids sees each row once, however requests were cut before and after a
//!   restore.
//! - Requests carry up to `batch_max_rows` rows and about `batch_max_bytes` bytes (a JSON
//!   array), or one row each; as JSON rows or CloudEvents 1.0 (structured or binary mode).
//!   A URL template may hold key columns, so rows go to the URL of their key; its host is
//!   written out before any placeholder and each row's URL is checked to keep it (a row
//!   without a URL is dead-lettered).
//! - Ordered per key: each URL's rows are split into `max_in_flight` lanes by a hash of
//!   their key columns; a lane sends one request at a time and stops at a failed one, so the
//!   updates of a key arrive in order, retries included.
//! - Every request is signed as Standard Webhooks specify (see [`signing`]): `webhook-id`
//!   (from the ids of the rows it carries: a repeated request has the same id),
//!   `webhook-timestamp`, and one `v1,` signature per active secret.
//! - 2xx: delivered. 408, 429, 5xx, 401, 403 (the receiver refuses the sink's credentials)
//!   and requests without an answer stay pending and the call fails as
//!   [`EngineError::Unavailable`], so the engine's retry policy (backoff, circuit breaker,
//!   backpressure) sends them again. A `Retry-After` holds its URL alone (the other URLs of
//!   a template go on); once only held URLs have rows, the shortest hold is given to the
//!   policy as the least wait (see [`EngineError::unavailable_for`]): the sink never sleeps
//!   itself. With `give_up_after`, a URL failing that long (or a request whose rows have)
//!   is dead-lettered instead ([`UNDELIVERABLE`]), so that one dead receiver does not hold
//!   every checkpoint back. URLs known to fail go after those that work, and only for a
//!   bounded part of each send (see [`lanes`]). Other answers (4xx, 3xx) send the request's rows to the
//!   dead-letter output with the status, the answer's headers (credentials masked) and the
//!   first KiB of its body (no more is read).
//! - URLs in messages and dead letters are shown without user, password and query.
//! - Every pending row is sent at each flush and checkpoint barrier (pre-commit): a
//!   checkpoint completes only after its rows were acknowledged (at least once).
//! - Requests run on the process's I/O runtime ([`weir_engine::io::runtime`]); the sink's
//!   thread blocks on them (its lanes are futures of one `block_on`): the sink starts no
//!   thread of its own.

pub mod body;
pub mod delivery;
mod give_up;
mod lanes;
pub mod signing;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use weir_engine::job::{Committable, Sink};
use weir_engine::stats::DeliveryStats;
use weir_engine::{EngineError, ErrorInfo, RejectedRow};

pub use body::{public_url, Batching, BodyMode, UrlError, UrlTemplate, ROW_ID_FIELD};
pub use signing::{Secret, SecretError};

use delivery::Class;
pub use give_up::UNDELIVERABLE;
use give_up::{UrlHealth, HELD_MAX_BYTES};
use weir_formats::cloudevents;
use weir_formats::json_rows::for_each_json_row;

/// The HTTP method of requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookMethod {
    /// `POST` (the default).
    Post,
    /// `PUT`.
    Put,
}

/// What the sink needs to know.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where requests go: a URL, or a template filled in per row.
    pub url: UrlTemplate,
    /// `POST` or `PUT`.
    pub method: WebhookMethod,
    /// Extra request headers (name, value).
    pub headers: Vec<(String, String)>,
    /// One secret, or two while rotating: each signs every request.
    pub secrets: Vec<Secret>,
    /// One row a request, or arrays.
    pub batching: Batching,
    /// Most rows in one array body.
    pub batch_max_rows: usize,
    /// About the most bytes in one array body (a single larger row goes alone).
    pub batch_max_bytes: usize,
    /// JSON rows or CloudEvents.
    pub body: BodyMode,
    /// One request's time limit.
    pub timeout: Duration,
    /// Requests sent at once (across URLs and lanes: each lane, holding the rows of some keys
    /// of one URL, sends one request at a time).
    pub max_in_flight: usize,
    /// Pending rows older than this are sent even when no request is full.
    pub flush_interval: Duration,
    /// The pipeline's name (in row ids, `{pipeline}` and CloudEvents' `source`).
    pub pipeline: String,
    /// The window or view sent.
    pub output: String,
    /// A view's key columns (`None` for a window).
    pub view_keys: Option<usize>,
    /// A URL failing this long (failures to retry only, since its first) has its requests
    /// sent to the dead-letter output instead of waiting (`None`: they wait for ever).
    pub give_up_after: Option<Duration>,
}

/// A row waiting to be delivered: its URL, id, lane and object in `Pending::bytes`.
struct Row {
    url: Arc<str>,
    id: Box<str>,
    /// A hash of the row's key columns (without `window_start`): the rows of one key go
    /// through one lane of their URL, one request at a time, in order.
    lane: u64,
    start: usize,
    end: usize,
    /// When a request carrying it first failed (to retry).
    failing_since: Option<Instant>,
}

/// The JSON objects of some columns of a batch's rows, one after the other.
struct KeyJson {
    bytes: Vec<u8>,
    /// Where each row's object ends in `bytes`.
    ends: Vec<usize>,
}

/// FNV-1a of `bytes` (a row's lane: stable within a run, cheap).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
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
                lane: r.lane,
                start,
                end: bytes.len(),
                failing_since: r.failing_since,
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

/// The requests of one lane, sent one at a time in order: a lane holds the rows of some keys
/// of one URL, so the updates of a key arrive in the order they were made.
type Lane = Vec<Request>;

/// What became of one request.
enum Outcome {
    Delivered,
    Retry {
        reason: String,
        /// The wait its URL asked for (`Retry-After`).
        after: Option<Duration>,
        /// Whether it was sent (not held back by its lane or its URL's wait).
        sent: bool,
    },
    /// 413 to a request of several rows: sent again in smaller requests.
    TooLarge(String),
    /// Not sent: its URL is failing and the send had no time left for failing URLs (see
    /// [`WebhookSink::failing_budget`]); its rows wait for a later send.
    Deferred(String),
    Refused(ErrorInfo),
}

/// Rounds of one send in which a 413 halves its URL's requests, which go again at once.
const MAX_SPLIT_ROUNDS: usize = 8;

/// Result rows as signed webhook requests.
pub struct WebhookSink {
    name: String,
    config: WebhookConfig,
    client: reqwest::Client,
    /// The process's I/O runtime, which runs the requests.
    runtime: &'static tokio::runtime::Runtime,
    headers: reqwest::header::HeaderMap,
    pending: Pending,
    /// The failed call was a write whose rows are already pending.
    write_failed: bool,
    rejected: Vec<RejectedRow>,
    /// The URLs that failed and have not answered since (or were cut to smaller requests).
    health: HashMap<Arc<str>, UrlHealth>,
    /// The pending rows (and their bytes) of URLs that asked to wait, when last counted:
    /// they do not make a write send.
    held: (usize, usize),
    stats: Arc<DeliveryStats>,
    /// A reused encoding buffer.
    line: Vec<u8>,
}

impl WebhookSink {
    /// A sink named `name`; nothing is sent until rows come.
    pub fn new(name: &str, config: WebhookConfig) -> Result<Self, EngineError> {
        // what fails here is a setting: the user's to fix
        let err = |e: &dyn std::fmt::Display| EngineError::sink(name, e).user();
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
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(config.max_in_flight.max(1))
            .user_agent(concat!("weir/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| EngineError::sink_caused(name, "", e))?;
        let runtime =
            weir_engine::io::runtime().map_err(|e| EngineError::sink_caused(name, "", e))?;
        Ok(WebhookSink {
            name: name.to_string(),
            config,
            client,
            runtime,
            headers,
            pending: Pending::default(),
            write_failed: false,
            rejected: Vec::new(),
            health: HashMap::new(),
            held: (0, 0),
            stats: Arc::new(DeliveryStats::default()),
            line: Vec::new(),
        })
    }

    /// Its delivery counters (for `/metrics`).
    pub fn stats(&self) -> Arc<DeliveryStats> {
        self.stats.clone()
    }

    fn fatal(&self, message: impl std::fmt::Display) -> EngineError {
        EngineError::sink(&self.name, message)
    }

    /// A failure caused by `e`, which says it all.
    fn caused(&self, e: impl Into<weir_engine::error::Cause>) -> EngineError {
        EngineError::sink_caused(&self.name, "", e)
    }

    /// Appends `batch`'s rows as pending row objects with their ids, lanes and URLs; a row
    /// without a URL (a null key, a URL that would go elsewhere) goes to `rejected`.
    fn add_rows(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
        let schema = batch.schema();
        // the key columns (a view's keys; a window's group keys then `window_start`), and
        // those that choose a row's lane (without `window_start`)
        let (key_count, lane_count) = match self.config.view_keys {
            Some(k) => (k, k),
            None => {
                let ws = schema
                    .index_of("window_start")
                    .map_err(|_| self.fatal("rows without `window_start` cannot be keyed"))?;
                (ws + 1, ws)
            }
        };
        let keys = self.key_json(batch, key_count)?;
        let lane_keys = match lane_count {
            0 => None,
            n if n == key_count => Some(None),
            n => Some(Some(self.key_json(batch, n)?)),
        };
        let lanes: Vec<u64> = match lane_keys {
            None => vec![0; batch.num_rows()],
            Some(k) => {
                let k = k.as_ref().unwrap_or(&keys);
                k.ends
                    .iter()
                    .enumerate()
                    .map(|(row, &end)| {
                        let start = if row == 0 { 0 } else { k.ends[row - 1] };
                        fnv1a(&k.bytes[start..end])
                    })
                    .collect()
            }
        };
        let urls = self.row_urls(batch)?;
        let (cfg, pending) = (&self.config, &mut self.pending);
        let rejected = &mut self.rejected;
        let mut refused = Vec::new();
        for_each_json_row(batch, &mut self.line, |row, json| {
            let start = if row == 0 { 0 } else { keys.ends[row - 1] };
            let key = &keys.bytes[start..keys.ends[row]];
            let content = cfg.view_keys.map(|_| json);
            let id = body::row_id(&cfg.pipeline, &cfg.output, key, content);
            let url = match &urls[row] {
                Ok(u) => u.clone(),
                Err(e) => {
                    let mut raw = Vec::new();
                    body::row_object(&mut raw, &id, json);
                    refused.push(e.clone());
                    rejected.push(RejectedRow {
                        raw,
                        error: ErrorInfo::new("webhook_no_url", e.to_string())
                            .with("row_id", id.as_str()),
                    });
                    return Ok(());
                }
            };
            let start = pending.bytes.len();
            body::row_object(&mut pending.bytes, &id, json);
            pending.rows.push(Row {
                url,
                id: id.into(),
                lane: lanes[row],
                start,
                end: pending.bytes.len(),
                failing_since: None,
            });
            Ok(())
        })
        .map_err(|e| self.caused(e))?;
        if let Some(e) = refused.first() {
            tracing::warn!(sink = %self.name, rows = refused.len(), error = %e, "rows without a URL sent to the dead-letter output");
        }
        if !self.pending.rows.is_empty() {
            self.pending.since.get_or_insert_with(Instant::now);
        }
        Ok(())
    }

    /// The JSON objects of the first `count` columns of each row of `batch`.
    fn key_json(&mut self, batch: &RecordBatch, count: usize) -> Result<KeyJson, EngineError> {
        let key_batch = batch
            .project(&(0..count).collect::<Vec<_>>())
            .map_err(|e| self.caused(e))?;
        let mut out = KeyJson {
            bytes: Vec::new(),
            ends: Vec::with_capacity(batch.num_rows()),
        };
        for_each_json_row(&key_batch, &mut self.line, |_, k| {
            out.bytes.extend_from_slice(k);
            out.ends.push(out.bytes.len());
            Ok(())
        })
        .map_err(|e| self.caused(e))?;
        Ok(out)
    }

    /// The URL of each row of `batch` (the same one unless the template names columns), or
    /// why it has none (a null key, a URL that would leave the template's host).
    fn row_urls(
        &self,
        batch: &RecordBatch,
    ) -> Result<Vec<Result<Arc<str>, UrlError>>, EngineError> {
        let cfg = &self.config;
        let columns = cfg.url.columns();
        if columns.is_empty() {
            let url = cfg
                .url
                .render(&cfg.pipeline, &cfg.output, |_| None)
                .map(Arc::<str>::from);
            return Ok(vec![url; batch.num_rows()]);
        }
        let opts = FormatOptions::default();
        let mut formatters = Vec::new();
        for c in &columns {
            let col = batch
                .column_by_name(c)
                .ok_or_else(|| self.fatal(format!("`url` names `{c}`, which the rows lack")))?;
            formatters.push((
                *c,
                col.clone(),
                UrlValue::of(col, &opts).map_err(|e| self.caused(e))?,
            ));
        }
        let mut last: Option<(String, Arc<str>)> = None;
        let mut out = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let url = cfg.url.render(&cfg.pipeline, &cfg.output, |c| {
                let (_, col, f) = formatters.iter().find(|(n, _, _)| *n == c)?;
                (!col.is_null(row)).then(|| f.value(row))
            });
            let url = match url {
                Ok(u) => u,
                Err(e) => {
                    out.push(Err(e));
                    continue;
                }
            };
            let shared = match &last {
                Some((u, a)) if *u == url => a.clone(),
                _ => {
                    let a: Arc<str> = url.as_str().into();
                    last = Some((url, a.clone()));
                    a
                }
            };
            out.push(Ok(shared));
        }
        Ok(out)
    }

    /// Sends every pending row; rows to send again stay pending and make the call fail as
    /// unavailable, rows refused for good go to `rejected`. A URL that asked to wait
    /// (`Retry-After`) is sent nothing before that time, while the other URLs are; when only
    /// such URLs are left, the call fails with the shortest of their waits, which the retry
    /// policy waits out (a stopped run ends it). With `give_up_after`, the requests of a URL
    /// failing that long, or carrying rows that failed that long, are refused (see
    /// [`Self::judge`]).
    fn send_pending(&mut self) -> Result<(), EngineError> {
        // a 413 halves its URL's requests: they go again at once, a few rounds at most
        let mut rounds = 1;
        loop {
            // (not when other requests failed: they wait for the policy's backoff)
            let (result, split_only) = self.send_round();
            if !split_only || result.is_ok() || rounds == MAX_SPLIT_ROUNDS {
                return result;
            }
            rounds += 1;
        }
    }

    /// One round of [`Self::send_pending`]: its result, and whether a 413 split requests
    /// while no other request failed.
    fn send_round(&mut self) -> (Result<(), EngineError>, bool) {
        if self.pending.rows.is_empty() {
            return (Ok(()), false);
        }
        let lanes = self.lanes();
        let (outcomes, tried) = self.send_all(&lanes);
        let now = Instant::now();
        let mut keep = Vec::new();
        let (mut retry_rows, mut first_reason, mut wait) = (0usize, None, Some(Duration::MAX));
        let mut alive = HashSet::new();
        let mut given_up: HashMap<String, usize> = HashMap::new();
        let (mut split, mut failed) = (false, false);
        for (req, outcome) in lanes.iter().flatten().zip(outcomes) {
            match outcome {
                Outcome::Delivered => {
                    alive.insert(req.url.clone());
                }
                Outcome::Retry {
                    reason,
                    after,
                    sent,
                } => {
                    retry_rows += req.rows.len();
                    if first_reason.is_none() || after.is_some() {
                        first_reason = Some(reason);
                    }
                    // the soonest a URL may be sent to again; none: the policy's backoff
                    // (requests held back by their lane follow their lane's first)
                    if sent || after.is_some() {
                        wait = wait.zip(after).map(|(w, a)| w.min(a));
                    }
                    let health = self.health.entry(req.url.clone()).or_default();
                    if let Some(a) = after {
                        health.not_before = Some(now + a);
                    }
                    if sent {
                        failed = true;
                        health.failing_since.get_or_insert(now);
                        health.last_failure = Some(now);
                        for &i in &req.rows {
                            self.pending.rows[i].failing_since.get_or_insert(now);
                        }
                    }
                    keep.extend_from_slice(&req.rows);
                }
                Outcome::Deferred(reason) => {
                    retry_rows += req.rows.len();
                    first_reason.get_or_insert(reason);
                    // (the policy's backoff, as after a failure)
                    wait = None;
                    failed = true;
                    // still failing, not quiet: its clock goes on and it stays known to fail
                    self.health.entry(req.url.clone()).or_default().last_failure = Some(now);
                    keep.extend_from_slice(&req.rows);
                }
                Outcome::TooLarge(reason) => {
                    retry_rows += req.rows.len();
                    first_reason.get_or_insert(reason);
                    wait = None;
                    let health = self.health.entry(req.url.clone()).or_default();
                    let half = (req.rows.len() / 2).max(1);
                    health.row_cap = Some(health.row_cap.map_or(half, |c| c.min(half)));
                    health.answered_at_cap = 0;
                    split = true;
                    keep.extend_from_slice(&req.rows);
                }
                Outcome::Refused(error) => {
                    if error.code == UNDELIVERABLE {
                        *given_up.entry(public_url(&req.url)).or_default() += req.rows.len();
                        // (still failing: its clock goes on; given up when the URL itself
                        // failed too long, not only these rows)
                        let limit = self.config.give_up_after.unwrap_or(Duration::MAX);
                        let health = self.health.entry(req.url.clone()).or_default();
                        health.last_failure = Some(now);
                        health.given_up |= health
                            .failing_since
                            .is_some_and(|t| now.duration_since(t) >= limit);
                    } else {
                        // the receiver answered: it is up (the rows are what it refuses)
                        alive.insert(req.url.clone());
                    }
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
        for (url, rows) in given_up {
            tracing::warn!(sink = %self.name, url = %url, rows, "rows sent to the dead-letter output: their URL failed for longer than `give_up_after`");
        }
        // a URL that answered works: its clock of failures starts again, and a size it
        // was cut to after a 413 grows back (doubled at each round it answers)
        let max_rows = self.config.batch_max_rows;
        for url in &alive {
            if let Some(h) = self.health.get_mut(url) {
                h.failing_since = None;
                h.given_up = false;
                h.grow_row_cap(max_rows);
            }
        }
        for url in &tried {
            if let Some(h) = self.health.get_mut(url) {
                h.tried_at = Some(now);
            }
        }
        let total = self.pending.rows.len();
        keep.sort_unstable();
        self.pending.retain(&keep);
        self.forget_health(now);
        self.count_held(now);
        let split_only = split && !failed;
        if retry_rows == 0 {
            return (Ok(()), split_only);
        }
        let e = self.fatal(format!(
            "{retry_rows} of {total} rows not delivered yet: {}",
            first_reason.unwrap_or_default()
        ));
        let e = match wait {
            Some(w) => e.unavailable_for(w),
            None => e.unavailable(),
        };
        (Err(e), split_only)
    }

    /// Builds, signs and sends one request, and reads what its answer means.
    async fn send(&self, req: &Request) -> Outcome {
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
        let attrs = cloudevents::EventSource {
            pipeline: &cfg.pipeline,
            output: &cfg.output,
            kind,
        }
        .attributes();
        let (bytes, ctype) = body::body(cfg.body, cfg.batching, &attrs, &rows);
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
            for (name, value) in cloudevents::binary_headers(&attrs, &id) {
                builder = builder.header(name, value);
            }
        }
        let started = Instant::now();
        let answer = builder.body(bytes).send().await;
        self.stats.latency.observe(started.elapsed().as_secs_f64());
        let mut resp = match answer {
            Ok(r) => r,
            Err(e) => {
                self.stats.failed(delivery::failure_class(None));
                // reqwest's error repeats the whole URL: the query and user stay out
                let e = e.without_url();
                return Outcome::Retry {
                    reason: format!("{}: {}", public_url(&req.url), error_chain(&e)),
                    after: None,
                    sent: true,
                };
            }
        };
        let status = resp.status().as_u16();
        match delivery::classify(status) {
            Class::Delivered => {
                // a small body read to its end lets the connection be used again
                drain(&mut resp).await;
                weir_engine::stats::RunStats::add(&self.stats.delivered, 1);
                weir_engine::stats::RunStats::add(&self.stats.rows_delivered, rows.len() as u64);
                Outcome::Delivered
            }
            class => {
                self.stats.failed(delivery::failure_class(Some(status)));
                self.failed_answer(req, &id, class, resp).await
            }
        }
    }

    /// What a non-2xx answer means: a retry (with its `Retry-After`) or a refusal with the
    /// status, headers and the first KiB of the body (no more of it is read).
    async fn failed_answer(
        &self,
        req: &Request,
        id: &str,
        class: Class,
        mut resp: reqwest::Response,
    ) -> Outcome {
        let status = resp.status();
        let after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| delivery::retry_after(v, SystemTime::now()));
        // (credentials the receiver hands out are masked: dead letters are read widely)
        let headers: serde_json::Map<String, serde_json::Value> = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                let text = String::from_utf8_lossy(v.as_bytes());
                let value = match k.as_str() {
                    name if delivery::is_credential(name) => "***".to_string(),
                    // a redirect's target may be a signed URL: its query stays out
                    "location" | "content-location" => public_url(&text),
                    _ => text.into_owned(),
                };
                (k.as_str().to_string(), value.into())
            })
            .collect();
        let bytes = read_head(&mut resp).await;
        let head = delivery::body_head(&bytes);
        let short: String = head.chars().take(200).collect();
        let url = public_url(&req.url);
        if status == reqwest::StatusCode::PAYLOAD_TOO_LARGE && req.rows.len() > 1 {
            return Outcome::TooLarge(format!(
                "{url} answered 413 to a request of {} rows: sent again in smaller ones",
                req.rows.len()
            ));
        }
        match class {
            Class::Retry => {
                return Outcome::Retry {
                    reason: format!("{url} answered {status}: {short}"),
                    after,
                    sent: true,
                }
            }
            Class::Unauthorized => {
                return Outcome::Retry {
                    reason: format!(
                        "{url} answered {status} (the receiver does not accept the sink's \
                         signature or credentials: check `secret` and `headers`): {short}"
                    ),
                    after,
                    sent: true,
                }
            }
            Class::Delivered | Class::Refused => {}
        }
        Outcome::Refused(
            ErrorInfo::new(
                "webhook_refused",
                format!("{url} answered {status}: {short}"),
            )
            .with("status", status.as_u16())
            .with("url", url)
            .with("webhook_id", id)
            .with("headers", serde_json::Value::Object(headers))
            .with("body", head),
        )
    }
}

/// Why an extra request header is refused (the message never repeats its value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("header `{0}` is set by the sink itself")]
    Reserved(String),
    #[error("`{0}` is not an HTTP header name")]
    BadName(String),
    #[error("header `{0}`: the value holds characters HTTP headers cannot carry")]
    BadValue(String),
}

/// Whether `name: value` can be an extra request header: a valid name and value, and none
/// of the headers the sink sets itself (`webhook-*`, `ce-*`, `content-type`).
pub fn check_header(name: &str, value: &str) -> Result<(), HeaderError> {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("webhook-") || lower.starts_with("ce-") || lower == "content-type" {
        return Err(HeaderError::Reserved(name.to_string()));
    }
    if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(HeaderError::BadName(name.to_string()));
    }
    if reqwest::header::HeaderValue::from_str(value).is_err() {
        return Err(HeaderError::BadValue(name.to_string()));
    }
    Ok(())
}

/// Bytes of an answer's body read at most before the connection is given up: a body read
/// to its end lets the connection serve the next request.
const DRAIN_MAX: u64 = 16 * 1024;

/// Reads a small body to its end (so the connection is kept alive); a larger or unknown one
/// is left, and the connection closed.
async fn drain(resp: &mut reqwest::Response) {
    // asked before any read: the length left shrinks as the body is read
    if resp.content_length().is_some_and(|n| n <= DRAIN_MAX) {
        skip(resp, DRAIN_MAX).await;
    }
}

/// Reads and drops up to about `max` bytes of a body (a chunk at a time).
async fn skip(resp: &mut reqwest::Response, max: u64) {
    let mut read = 0u64;
    while read <= max {
        match resp.chunk().await {
            Ok(Some(chunk)) => read += chunk.len() as u64,
            Ok(None) | Err(_) => break,
        }
    }
}

/// The first [`delivery::BODY_KEPT`] bytes of a body (and a few more, to tell a cut
/// character), never more; the rest is drained when the whole body is small.
async fn read_head(resp: &mut reqwest::Response) -> Vec<u8> {
    let small = resp.content_length().is_some_and(|n| n <= DRAIN_MAX);
    let limit = delivery::BODY_KEPT + 4;
    let mut head = Vec::with_capacity(limit);
    while head.len() < limit {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(limit - head.len());
                head.extend_from_slice(&chunk[..take]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    if small {
        skip(resp, DRAIN_MAX).await;
    }
    head
}

/// An error with its causes, `a: b: c` (reqwest hides the reason of a refused connection
/// in them; see [`weir_engine::error::chain`]).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    weir_engine::error::chain(e).to_string()
}

impl Committable for WebhookSink {
    fn flush(&mut self) -> Result<bool, EngineError> {
        self.send_pending()?;
        Ok(true)
    }

    fn finish(&mut self) -> Result<(), EngineError> {
        self.send_pending()
    }
}

impl Sink for WebhookSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
        // a retried call added its rows already, and sends again whatever is pending
        let retried = std::mem::take(&mut self.write_failed);
        if !retried {
            self.add_rows(batch)?;
        }
        let room = self.config.max_in_flight.max(1);
        let max_rows = match self.config.batching {
            Batching::Single => 1,
            Batching::Array => self.config.batch_max_rows,
        };
        // (rows of URLs that asked to wait do not make a write send, up to their limit)
        let (held_rows, held_bytes) = match self.held {
            (_, bytes) if bytes > HELD_MAX_BYTES => (0, 0),
            held => held,
        };
        let full = retried
            || self.pending.rows.len().saturating_sub(held_rows) >= max_rows * room
            || self.pending.bytes.len().saturating_sub(held_bytes)
                >= self.config.batch_max_bytes * room
            || self
                .pending
                .since
                .is_some_and(|t| t.elapsed() >= self.config.flush_interval);
        if full {
            if let Err(e) = self.send_pending() {
                if self.only_held_rows_pending() {
                    // rows of URLs that asked to wait: kept (the next writes, and at the
                    // latest the checkpoint, send them), while the other URLs' rows go on
                    return Ok(());
                }
                // the rows are pending: the retried call only sends them again
                self.write_failed = true;
                return Err(e);
            }
        }
        Ok(())
    }

    fn take_rejected(&mut self) -> Vec<RejectedRow> {
        std::mem::take(&mut self.rejected)
    }
}

/// How a column's values are written into a URL: timestamps as the rows' bodies write them
/// (RFC 3339 in UTC, milliseconds: `2026-11-22T10:05:00.000Z`), whatever their time zone
/// (arrow's formatter cannot show a named zone such as a window's `UTC`), others as arrow
/// shows them.
enum UrlValue<'a> {
    Timestamp(&'a dyn arrow::array::Array, arrow::datatypes::TimeUnit),
    Formatted(ArrayFormatter<'a>),
}

impl<'a> UrlValue<'a> {
    fn of(
        col: &'a arrow::array::ArrayRef,
        opts: &'a FormatOptions<'a>,
    ) -> Result<Self, arrow::error::ArrowError> {
        Ok(match col.data_type() {
            arrow::datatypes::DataType::Timestamp(unit, _) => {
                UrlValue::Timestamp(col.as_ref(), *unit)
            }
            _ => UrlValue::Formatted(ArrayFormatter::try_new(col.as_ref(), opts)?),
        })
    }

    fn value(&self, row: usize) -> String {
        use arrow::datatypes::TimeUnit;
        match self {
            UrlValue::Formatted(f) => f.value(row).to_string(),
            UrlValue::Timestamp(a, unit) => {
                // (beyond 64 bits of milliseconds: unreachable for event times, kept to years
                // 0000-9999)
                let ms = weir_engine::time::timestamp_at(*a, *unit, row, TimeUnit::Millisecond)
                    .unwrap_or(i64::MAX);
                weir_engine::time::format_rfc3339_ms(ms)
            }
        }
    }
}
