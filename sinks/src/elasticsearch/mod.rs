//! The Elasticsearch sink: rows as documents through the `_bulk` API.
//!
//! - Each row is one `index` action with a deterministic id (`pipeline/output/key`, the key
//!   holding `window_start` for windows), so a row sent again (a retry, a restore, a replay)
//!   overwrites its document instead of duplicating it.
//! - Indices are named by a template (`weir-{output}-{window_start:%Y.%m}`) and created on
//!   first use with a mapping derived from the rows (keywords, longs, doubles, booleans,
//!   dates as `epoch_millis||strict_date_optional_time`), unless an index template is given.
//! - Every item's result is read: 429 and 5xx items stay pending and the call fails as
//!   [`EngineError::Unavailable`], so the engine's retry policy sends them again after its
//!   backoff (the whole-request failures too: timeouts, refused connections, 5xx, 429); items
//!   refused for good (400: a value the mapping cannot take) go to the dead-letter output with
//!   the server's error. Nothing is dropped.
//! - Requests go round-robin over the nodes, to the next one when a node does not answer;
//!   bodies are gzip-compressed (Elasticsearch accepts compressed requests).
//! - With checkpoints, every pending row is acknowledged at the barrier (pre-commit), before
//!   the checkpoint completes.
//! - Requests run on the process's I/O runtime ([`weir_engine::io::runtime`]); the sink's
//!   thread blocks on them (the bulk requests sent at once are futures of one `block_on`):
//!   the sink starts no thread of its own.

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, SchemaRef, TimestampMillisecondType};
use arrow::record_batch::RecordBatch;
use serde_json::{json, Value};
use weir_engine::job::{Committable, Sink};
use weir_engine::{EngineError, ErrorInfo, RejectedRow};

use weir_formats::json_rows::{for_each_json_row, json_string};

mod pending;
use pending::{Doc, Pending};

/// How requests authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EsAuth {
    ApiKey(String),
    Basic { username: String, password: String },
    Bearer(String),
}

/// One piece of an index name template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Pipeline,
    Output,
    /// `{window_start:FORMAT}` (strftime).
    WindowStart(String),
}

/// An index name template: `weir-{output}`, `{pipeline}-{output}-{window_start:%Y.%m}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexTemplate {
    parts: Vec<Part>,
}

impl IndexTemplate {
    /// Parses a template; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, IndexTemplateError> {
        let bad = |problem| IndexTemplateError {
            template: text.to_string(),
            problem,
        };
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| bad(IndexProblem::Unclosed))?;
            let inner = &rest[open + 1..open + close];
            parts.push(match inner.split_once(':') {
                None if inner == "pipeline" => Part::Pipeline,
                None if inner == "output" => Part::Output,
                None if inner == "window_start" => Part::WindowStart("%Y.%m.%d".into()),
                Some(("window_start", f)) if !f.is_empty() => {
                    if !is_strftime(f) {
                        return Err(bad(IndexProblem::NotStrftime(f.to_string())));
                    }
                    Part::WindowStart(f.to_string())
                }
                _ => return Err(bad(IndexProblem::Unknown(inner.to_string()))),
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        for p in &parts {
            if let Part::Text(t) = p {
                if t.chars()
                    .any(|c| c.is_ascii_uppercase() || "\\/*?\"<>| ,#:".contains(c))
                {
                    return Err(bad(IndexProblem::BadCharacter));
                }
            }
        }
        if matches!(parts.first(), Some(Part::Text(t)) if t.starts_with(['_', '-', '+'])) {
            return Err(bad(IndexProblem::BadStart));
        }
        Ok(IndexTemplate { parts })
    }

    /// Checks the names it makes for `output` of `pipeline` (at a few window starts, which
    /// show a format's month names, `T` and `:`): a name Elasticsearch refuses would fail the
    /// run at its first row, and every restart after.
    pub fn check_names(&self, pipeline: &str, output: &str) -> Result<(), IndexProblem> {
        // 2026-01-05T03:04:05.006Z and 2026-12-31T23:59:59.999Z
        for at in [1_767_582_245_006_i64, 1_798_761_599_999] {
            let name = self.name(pipeline, output, Some(at));
            let bad = name.is_empty()
                || name.len() > 255
                || name == "."
                || name == ".."
                || name.starts_with(['_', '-', '+'])
                || name
                    .chars()
                    .any(|c| c.is_uppercase() || "\\/*?\"<>| ,#:".contains(c));
            if bad {
                return Err(IndexProblem::BadName(name));
            }
        }
        Ok(())
    }

    /// Whether it names indices by `window_start` (windows only).
    pub fn uses_window_start(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::WindowStart(_)))
    }

    /// Whether it names indices by `output`: then several windows and views can share a
    /// sink, each in indices of its own.
    pub fn uses_output(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Output))
    }

    /// The index of a row whose window starts at `window_start` (epoch ms).
    fn name(&self, pipeline: &str, output: &str, window_start: Option<i64>) -> String {
        let mut s = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => s.push_str(t),
                Part::Pipeline => s.push_str(&pipeline.to_lowercase()),
                Part::Output => s.push_str(&output.to_lowercase()),
                Part::WindowStart(f) => {
                    if let Some(dt) = window_start.and_then(chrono::DateTime::from_timestamp_millis)
                    {
                        let _ =
                            std::fmt::Write::write_fmt(&mut s, format_args!("{}", dt.format(f)));
                    }
                }
            }
        }
        s
    }
}

/// Whether chrono can render strftime format `f` (it would panic while formatting one it
/// cannot).
fn is_strftime(f: &str) -> bool {
    use chrono::format::{Item, StrftimeItems};
    !StrftimeItems::new(f).any(|i| matches!(i, Item::Error))
}

/// An index name template that cannot name indices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("index `{template}`: {problem}")]
pub struct IndexTemplateError {
    /// The template as written.
    pub template: String,
    pub problem: IndexProblem,
}

/// What is wrong with an index name template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexProblem {
    #[error("unclosed `{{`")]
    Unclosed,
    #[error("unknown `{{{0}}}`: use {{pipeline}}, {{output}} or {{window_start:%Y.%m.%d}}")]
    Unknown(String),
    #[error("`{0}` is not a strftime format (e.g. %Y.%m.%d)")]
    NotStrftime(String),
    #[error("Elasticsearch index names are lowercase, without \\ / * ? \" < > | space , # :")]
    BadCharacter,
    #[error("an index name cannot start with _, - or +")]
    BadStart,
    #[error("makes the index name `{0}`, which Elasticsearch refuses: index names are lowercase, without \\ / * ? \" < > | space , # :, do not start with _, - or +, and are at most 255 bytes (a `{{window_start}}` format of digits and . or - makes good ones: %Y.%m.%d)")]
    BadName(String),
}

/// What the sink needs to know.
#[derive(Debug, Clone)]
pub struct ElasticsearchConfig {
    /// Node URLs (`http(s)://host:9200`), used round-robin.
    pub urls: Vec<String>,
    pub index: IndexTemplate,
    pub auth: Option<EsAuth>,
    /// PEM file of the CA that signed the nodes' certificates.
    pub ca_file: Option<std::path::PathBuf>,
    pub bulk_max_docs: usize,
    pub bulk_max_bytes: usize,
    /// Pending rows older than this are sent even when the bulk is not full.
    pub flush_interval: Duration,
    /// The `refresh` parameter of bulk requests (`false`, `true`, `wait_for`).
    pub refresh: Option<String>,
    /// Bulk requests sent at once.
    pub max_in_flight: usize,
    /// gzip request bodies.
    pub compression: bool,
    pub timeout: Duration,
    /// A user index template (name, body) installed at start instead of explicit mappings.
    pub index_template: Option<(String, Value)>,
    pub pipeline: String,
    /// The windows and views written (several only when `index` names indices by
    /// `{output}`).
    pub outputs: Vec<EsOutput>,
}

/// A window or view an Elasticsearch sink writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EsOutput {
    pub name: String,
    /// A view's key columns (`None` for a window).
    pub view_keys: Option<usize>,
}

/// One bulk request's outcome for its documents.
enum ItemOutcome {
    Done,
    Retry(String),
    Refused(ErrorInfo),
    /// The sink's credentials lack a right: the run fails (see [`item_outcome`]).
    Forbidden(String),
}

/// Result rows as Elasticsearch documents.
pub struct ElasticsearchSink {
    name: String,
    config: ElasticsearchConfig,
    client: reqwest::Client,
    /// The process's I/O runtime, which runs the requests.
    runtime: &'static tokio::runtime::Runtime,
    /// The node the next request goes to.
    next_node: usize,
    /// Indices known to exist (created or found).
    indices: HashSet<Arc<str>>,
    /// The node was checked to be Elasticsearch and the index template installed.
    checked: bool,
    pending: Pending,
    /// The failed call was a write whose rows are already pending.
    write_failed: bool,
    rejected: Vec<RejectedRow>,
    /// Reused encoding buffers.
    line: Vec<u8>,
    keys: Vec<u8>,
    /// The last row's output, window start and index name.
    last_index: Option<(usize, Option<i64>, Arc<str>)>,
}

/// Ids longer than this (Elasticsearch's limit is 512 bytes) become a hash of the key.
const MAX_ID: usize = 512;

impl ElasticsearchSink {
    /// A sink named `name`; nothing is sent until rows come.
    pub fn new(name: &str, config: ElasticsearchConfig) -> Result<Self, EngineError> {
        // what fails here is a setting: the user's to fix
        let err = |e: &dyn std::fmt::Display| EngineError::sink(name, e).user();
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(auth) = &config.auth {
            let value = match auth {
                EsAuth::ApiKey(k) => format!("ApiKey {k}"),
                EsAuth::Bearer(t) => format!("Bearer {t}"),
                EsAuth::Basic { username, password } => {
                    use base64::Engine as _;
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD
                            .encode(format!("{username}:{password}"))
                    )
                }
            };
            let mut v = reqwest::header::HeaderValue::from_str(&value)
                .map_err(|_| err(&"the credentials hold characters HTTP headers cannot carry"))?;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("weir/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &config.ca_file {
            let at = format!("ca_file {}", ca.display());
            let pem =
                std::fs::read(ca).map_err(|e| EngineError::sink_caused(name, &at, e).user())?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| EngineError::sink_caused(name, &at, e).user())?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder
            .build()
            .map_err(|e| EngineError::sink_caused(name, "", e))?;
        let runtime =
            weir_engine::io::runtime().map_err(|e| EngineError::sink_caused(name, "", e))?;
        Ok(ElasticsearchSink {
            name: name.to_string(),
            config,
            client,
            runtime,
            next_node: 0,
            indices: HashSet::new(),
            checked: false,
            pending: Pending::default(),
            write_failed: false,
            rejected: Vec::new(),
            line: Vec::new(),
            keys: Vec::new(),
            last_index: None,
        })
    }

    fn unavailable(&self, message: impl std::fmt::Display) -> EngineError {
        EngineError::sink(&self.name, message).unavailable()
    }

    fn fatal(&self, message: impl std::fmt::Display) -> EngineError {
        EngineError::sink(&self.name, message)
    }

    /// A failure caused by `e`, which says it all.
    fn caused(&self, e: impl Into<weir_engine::error::Cause>) -> EngineError {
        EngineError::sink_caused(&self.name, "", e)
    }

    /// Sends a request to the next node (round-robin), going on to the others when one does
    /// not answer. Returns the status and the body (JSON when it is). Blocks the calling
    /// thread while the request runs on the I/O runtime.
    fn request(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>, bool)>,
    ) -> Result<(u16, Value), EngineError> {
        let node = self.next_node;
        self.next_node = (self.next_node + 1) % self.config.urls.len();
        self.runtime
            .block_on(self.send_on(node, method, path, body))
    }

    /// A request to node `node`, then to the others if it does not answer.
    async fn send_on(
        &self,
        node: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>, bool)>,
    ) -> Result<(u16, Value), EngineError> {
        let nodes = self.config.urls.len();
        let mut last = String::new();
        for k in 0..nodes {
            let base = &self.config.urls[(node + k) % nodes];
            let url = format!("{}{path}", base.trim_end_matches('/'));
            let mut req = self.client.request(method.clone(), &url);
            if let Some((ctype, bytes, gzipped)) = &body {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, *ctype)
                    .body(bytes.clone());
                if *gzipped {
                    req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
                }
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    // a connection cut in the middle of the answer: the request's outcome is
                    // unknown, and sending it again is safe (documents have their ids)
                    let text = match resp.bytes().await {
                        Ok(text) => text,
                        Err(e) => {
                            last = format!("{url}: the answer was cut short: {}", error_chain(&e));
                            tracing::warn!(sink = %self.name, error = %last, "elasticsearch node did not answer whole; trying the next");
                            continue;
                        }
                    };
                    let value = serde_json::from_slice(&text).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&text).into_owned())
                    });
                    return Ok((status, value));
                }
                Err(e) => {
                    last = format!("{url}: {}", error_chain(&e));
                    tracing::warn!(sink = %self.name, error = %last, "elasticsearch node did not answer; trying the next");
                }
            }
        }
        Err(self.unavailable(last))
    }

    /// Once: checks that the cluster is Elasticsearch and installs the index template.
    fn check_cluster(&mut self) -> Result<(), EngineError> {
        if self.checked {
            return Ok(());
        }
        let (status, info) = self.request(reqwest::Method::GET, "/", None)?;
        match status {
            200 => {}
            401 | 403 => {
                return Err(self.fatal(format!(
                    "the cluster refuses the credentials ({status}): {}",
                    es_reason(&info)
                )))
            }
            s if s == 429 || s >= 500 => {
                return Err(self.unavailable(format!("{s}: {}", es_reason(&info))))
            }
            s => return Err(self.fatal(format!("GET / answered {s}: {}", es_reason(&info)))),
        }
        let version = info["version"]["number"].as_str().unwrap_or_default();
        if !(version.starts_with("8.") || version.starts_with("7.") || version.starts_with("9.")) {
            return Err(self.fatal(format!(
                "the server at {} is not Elasticsearch 7, 8 or 9 (version `{version}`)",
                self.config.urls.join(", ")
            )));
        }
        if let Some((name, body)) = self.config.index_template.clone() {
            let bytes = serde_json::to_vec(&body).map_err(|e| self.caused(e))?;
            let (status, answer) = self.request(
                reqwest::Method::PUT,
                &format!("/_index_template/{name}"),
                Some(("application/json", bytes, false)),
            )?;
            self.status_ok(status, &answer, "installing the index template")?;
        }
        self.checked = true;
        Ok(())
    }

    /// A non-2xx answer as an error: 429 and 5xx can be retried, the rest cannot.
    fn status_ok(&self, status: u16, body: &Value, what: &str) -> Result<(), EngineError> {
        match status {
            200..=299 => Ok(()),
            408 | 429 | 500..=599 => {
                Err(self.unavailable(format!("{what}: {status} {}", es_reason(body))))
            }
            _ => Err(self.fatal(format!("{what}: {status} {}", es_reason(body)))),
        }
    }

    /// Creates `index` with the rows' mapping, unless it exists or a template applies.
    fn ensure_index(&mut self, index: &Arc<str>, schema: &SchemaRef) -> Result<(), EngineError> {
        if self.indices.contains(index) {
            return Ok(());
        }
        self.check_cluster()?;
        if self.config.index_template.is_some() {
            return Ok(());
        }
        let body = json!({ "mappings": mapping(schema) });
        let bytes = serde_json::to_vec(&body).map_err(|e| self.caused(e))?;
        let (status, answer) = self.request(
            reqwest::Method::PUT,
            &format!("/{index}"),
            Some(("application/json", bytes, false)),
        )?;
        let exists =
            status == 400 && answer["error"]["type"] == "resource_already_exists_exception";
        if !exists {
            self.status_ok(status, &answer, &format!("creating index {index}"))?;
            tracing::info!(sink = %self.name, index = %index, "elasticsearch index created");
        }
        self.indices.insert(index.clone());
        Ok(())
    }

    /// The index in `config.outputs` of the output named `name`; with one output, that one
    /// whatever the name (rows written without one).
    fn output_index(&self, name: &str) -> Result<usize, EngineError> {
        let outputs = &self.config.outputs;
        match outputs.iter().position(|o| o.name == name) {
            Some(i) => Ok(i),
            None if outputs.len() == 1 => Ok(0),
            None => Err(EngineError::Internal(format!(
                "sink `{}` was given rows of `{name}`, which it does not write",
                self.name
            ))),
        }
    }

    /// Appends `batch`'s rows, of output `out` (an index in `config.outputs`), as pending
    /// `index` actions.
    fn add_rows(&mut self, out: usize, batch: &RecordBatch) -> Result<(), EngineError> {
        let schema = batch.schema();
        let EsOutput { name, view_keys } = self.config.outputs[out].clone();
        let key_count = match view_keys {
            Some(k) => k,
            None => {
                schema
                    .index_of("window_start")
                    .map_err(|_| self.fatal("rows without `window_start` cannot be keyed"))?
                    + 1
            }
        };
        // the document: every column but a view's `op`
        let doc_columns: Vec<usize> = (0..schema.fields().len())
            .filter(|&i| schema.field(i).name() != "op" || view_keys.is_none())
            .collect();
        let doc_batch = batch.project(&doc_columns).map_err(|e| self.caused(e))?;
        let key_batch = batch
            .project(&(0..key_count).collect::<Vec<_>>())
            .map_err(|e| self.caused(e))?;
        let starts = batch
            .column_by_name("window_start")
            .and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>())
            .cloned();
        // keys as JSON, one after another
        self.keys.clear();
        let mut key_ends = Vec::with_capacity(batch.num_rows());
        let keys = &mut self.keys;
        for_each_json_row(&key_batch, &mut self.line, |_, k| {
            keys.extend_from_slice(k);
            key_ends.push(keys.len());
            Ok(())
        })
        .map_err(|e| self.caused(e))?;
        // the index of each row
        let mut row_index: Vec<Arc<str>> = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let start = starts
                .as_ref()
                .filter(|s| s.is_valid(row))
                .map(|s| s.value(row));
            let index = match &self.last_index {
                Some((o, s, index)) if *o == out && *s == start => index.clone(),
                _ => {
                    let index: Arc<str> = self
                        .config
                        .index
                        .name(&self.config.pipeline, &name, start)
                        .into();
                    self.last_index = Some((out, start, index.clone()));
                    index
                }
            };
            row_index.push(index);
        }
        for index in row_index.iter().collect::<HashSet<_>>() {
            self.ensure_index(index, &doc_batch.schema())?;
        }
        let prefix = format!("{}/{}/", self.config.pipeline, name);
        let ops = view_keys
            .and(batch.column_by_name("op"))
            .and_then(|c| c.as_string_opt::<i32>())
            .cloned();
        let deleted = |row: usize| ops.as_ref().is_some_and(|o| o.value(row) == "delete");
        let (pending, keys) = (&mut self.pending, &self.keys);
        let mut id = String::new();
        for_each_json_row(&doc_batch, &mut self.line, |row, source| {
            let start = if row == 0 { 0 } else { key_ends[row - 1] };
            let key = &keys[start..key_ends[row]];
            id.clear();
            id.push_str(&prefix);
            id.push_str(&String::from_utf8_lossy(key));
            if id.len() > MAX_ID {
                use sha2::Digest;
                let digest = sha2::Sha256::digest(key);
                id.truncate(prefix.len());
                id.push_str("sha256:");
                for b in digest {
                    let _ = std::fmt::Write::write_fmt(&mut id, format_args!("{b:02x}"));
                }
            }
            let b = &mut pending.bytes;
            let doc_start = b.len();
            let delete = deleted(row);
            // an expired view key: its document goes (the action line alone)
            b.extend_from_slice(if delete {
                b"{\"delete\":{\"_index\":"
            } else {
                b"{\"index\":{\"_index\":"
            });
            json_string(b, &row_index[row]);
            b.extend_from_slice(b",\"_id\":");
            json_string(b, &id);
            b.extend_from_slice(b"}}\n");
            let source_start = if delete { doc_start } else { b.len() };
            if !delete {
                b.extend_from_slice(source);
                b.push(b'\n');
            }
            pending.docs.push(Doc {
                index: row_index[row].clone(),
                id: id.as_str().into(),
                start: doc_start,
                source: source_start,
                end: b.len(),
            });
            Ok(())
        })
        .map_err(|e| self.caused(e))?;
        if batch.num_rows() > 0 {
            self.pending.since.get_or_insert_with(Instant::now);
        }
        Ok(())
    }

    /// Sends every pending document; items to retry stay pending and make the call fail as
    /// unavailable, items refused for good go to `rejected`.
    fn send_pending(&mut self) -> Result<(), EngineError> {
        if self.pending.len() == 0 {
            return Ok(());
        }
        self.pending.keep_newest();
        self.check_cluster()?;
        // bulk requests of at most bulk_max_docs documents and bulk_max_bytes bytes
        let mut chunks: Vec<std::ops::Range<usize>> = Vec::new();
        let (mut first, mut bytes) = (0, 0);
        for (i, d) in self.pending.docs.iter().enumerate() {
            let size = d.end - d.start;
            if i > first
                && (i - first >= self.config.bulk_max_docs
                    || bytes + size > self.config.bulk_max_bytes)
            {
                chunks.push(first..i);
                first = i;
                bytes = 0;
            }
            bytes += size;
        }
        chunks.push(first..self.pending.len());
        let mut outcomes: Vec<Option<ItemOutcome>> =
            (0..self.pending.len()).map(|_| None).collect();
        let mut whole_failure = None;
        for group in chunks.chunks(self.config.max_in_flight.max(1)) {
            let results = self.send_group(group);
            for (range, result) in group.iter().zip(results) {
                match result {
                    Ok(items) => {
                        for (i, o) in range.clone().zip(items) {
                            outcomes[i] = Some(o);
                        }
                    }
                    Err(e) => {
                        whole_failure.get_or_insert(e);
                    }
                }
            }
        }
        let mut keep = Vec::new();
        let (mut retry, mut first_retry) = (0usize, None);
        for (i, o) in outcomes.into_iter().enumerate() {
            match o {
                Some(ItemOutcome::Done) => {}
                Some(ItemOutcome::Refused(error)) => {
                    let d = &self.pending.docs[i];
                    self.rejected.push(RejectedRow {
                        raw: self.pending.bytes[d.source..d.end - 1].to_vec(),
                        error,
                    });
                }
                // (a forbidden item failed its whole request: `items`)
                Some(ItemOutcome::Retry(reason)) | Some(ItemOutcome::Forbidden(reason)) => {
                    retry += 1;
                    first_retry.get_or_insert(reason);
                    keep.push(i);
                }
                None => keep.push(i),
            }
        }
        let total = self.pending.len();
        self.pending.retain(&keep);
        if let Some(e) = whole_failure {
            return Err(e);
        }
        if retry > 0 {
            return Err(self.unavailable(format!(
                "{retry} of {total} documents refused for now: {}",
                first_retry.unwrap_or_default()
            )));
        }
        Ok(())
    }

    /// Sends the bulk requests of `ranges` at once; per range, each item's outcome or the
    /// whole request's error.
    fn send_group(
        &mut self,
        ranges: &[std::ops::Range<usize>],
    ) -> Vec<Result<Vec<ItemOutcome>, EngineError>> {
        let path = match &self.config.refresh {
            Some(r) => format!("/_bulk?refresh={r}"),
            None => "/_bulk".to_string(),
        };
        let bodies: Vec<Result<Vec<u8>, EngineError>> =
            ranges.iter().map(|r| self.body(r.clone())).collect();
        if ranges.len() == 1 {
            let result = bodies
                .into_iter()
                .next()
                .unwrap_or_else(|| Err(self.fatal("no bulk body")))
                .and_then(|b| {
                    self.request(
                        reqwest::Method::POST,
                        &path,
                        Some(("application/x-ndjson", b, self.config.compression)),
                    )
                });
            return vec![result.and_then(|(s, v)| self.items(s, &v, ranges[0].len()))];
        }
        // several at once, on nodes taken round-robin
        let nodes: Vec<usize> = (0..ranges.len())
            .map(|_| {
                let n = self.next_node;
                self.next_node = (self.next_node + 1) % self.config.urls.len();
                n
            })
            .collect();
        let me = &*self;
        let sends = bodies.into_iter().zip(&nodes).map(|(body, &node)| {
            let path = &path;
            async move {
                let body = Some(("application/x-ndjson", body?, me.config.compression));
                me.send_on(node, reqwest::Method::POST, path, body).await
            }
        });
        let answers = self.runtime.block_on(futures::future::join_all(sends));
        answers
            .into_iter()
            .zip(ranges)
            .map(|(a, r)| a.and_then(|(s, v)| self.items(s, &v, r.len())))
            .collect()
    }

    /// The NDJSON body of the documents in `range`, gzipped when configured.
    fn body(&self, range: std::ops::Range<usize>) -> Result<Vec<u8>, EngineError> {
        let docs = &self.pending.docs[range];
        let (from, to) = match (docs.first(), docs.last()) {
            (Some(f), Some(l)) => (f.start, l.end),
            _ => return Ok(Vec::new()),
        };
        let raw = &self.pending.bytes[from..to];
        if !self.config.compression {
            return Ok(raw.to_vec());
        }
        let mut gz = flate2::write::GzEncoder::new(
            Vec::with_capacity(raw.len() / 4),
            flate2::Compression::fast(),
        );
        gz.write_all(raw)
            .and_then(|_| gz.finish())
            .map_err(|e| self.caused(e))
    }

    /// The per-item outcomes of a bulk answer.
    fn items(
        &self,
        status: u16,
        body: &Value,
        count: usize,
    ) -> Result<Vec<ItemOutcome>, EngineError> {
        if status == 413 && count == 1 {
            // one document over the cluster's (or a proxy's) request size limit: it can never
            // be indexed, and the others go on
            let info = ErrorInfo::new(
                "elasticsearch_refused",
                "413: the document is over the cluster's request size limit \
                 (http.max_content_length, or a proxy's)",
            )
            .with("status", 413);
            return Ok(vec![ItemOutcome::Refused(info)]);
        }
        if status == 413 {
            return Err(self.fatal(format!(
                "bulk request: 413, over the cluster's request size limit: set the sink's \
                 bulk_max_bytes below the cluster's http.max_content_length (or a proxy's \
                 limit); {}",
                es_reason(body)
            )));
        }
        self.status_ok(status, body, "bulk request")?;
        if !body.is_object() {
            // not JSON: an answer cut short (a proxy, a node going away); sent again
            return Err(self.unavailable(format!(
                "the bulk answer ({status}) is not JSON: {}",
                truncate(&body.to_string(), 300)
            )));
        }
        let items = body["items"]
            .as_array()
            .filter(|i| i.len() == count)
            .ok_or_else(|| {
                self.fatal(format!(
                    "the bulk answer does not hold {count} items: {}",
                    truncate(&body.to_string(), 300)
                ))
            })?;
        let outcomes: Vec<ItemOutcome> = items.iter().map(item_outcome).collect();
        if let Some(reason) = outcomes.iter().find_map(|o| match o {
            ItemOutcome::Forbidden(r) => Some(r.clone()),
            _ => None,
        }) {
            return Err(self.fatal(format!(
                "the cluster refuses this sink's credentials the rights it needs: {reason}"
            )));
        }
        Ok(outcomes)
    }
}

/// What became of one item of a bulk answer: the cluster's load (429, 5xx; a disk at its
/// flood stage answers 429 from Elasticsearch 7.7) is tried again; the sink's credentials
/// lacking a right (401, 403 `security_exception`) fail the run; a delete whose document or
/// index is not there did what it wanted; anything else (a mapping or parse error, a value
/// out of range, a blocked or missing index) refuses the document for good.
fn item_outcome(item: &Value) -> ItemOutcome {
    let r = item
        .as_object()
        .and_then(|o| o.values().next())
        .cloned()
        .unwrap_or(Value::Null);
    let status = r["status"].as_u64().unwrap_or(0);
    let e = &r["error"];
    let kind = e["type"].as_str().unwrap_or("refused").to_string();
    let delete = item.get("delete").is_some();
    let gone = delete && (r["result"] == "not_found" || kind == "index_not_found_exception");
    match status {
        200..=299 => ItemOutcome::Done,
        // deleting a document that is not there: what the delete wanted
        404 if gone => ItemOutcome::Done,
        429 | 500..=599 | 0 => ItemOutcome::Retry(format!("{status} {}", es_reason(&r))),
        401 => ItemOutcome::Forbidden(format!("{status} {}", es_reason(&r))),
        403 if kind == "security_exception" => {
            ItemOutcome::Forbidden(format!("{status} {}", es_reason(&r)))
        }
        _ => {
            let mut info = ErrorInfo::new(
                "elasticsearch_refused",
                format!(
                    "{status} {kind}: {}",
                    e["reason"].as_str().unwrap_or_default()
                ),
            )
            .with("status", status)
            .with("type", kind)
            .with("index", r["_index"].clone())
            .with("id", r["_id"].clone());
            if !e["caused_by"].is_null() {
                info = info.with("caused_by", e["caused_by"].clone());
            }
            ItemOutcome::Refused(info)
        }
    }
}

fn truncate(s: &str, n: usize) -> &str {
    let mut end = n.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The `error.type: reason` of an Elasticsearch answer (or its text).
fn es_reason(v: &Value) -> String {
    let e = &v["error"];
    match (
        e["type"].as_str(),
        e["reason"].as_str(),
        e.as_str(),
        v.as_str(),
    ) {
        (Some(t), Some(r), _, _) => format!("{t}: {r}"),
        (_, _, Some(s), _) => s.to_string(),
        (_, _, _, Some(s)) => truncate(s, 300).to_string(),
        _ => truncate(&v.to_string(), 300).to_string(),
    }
}

/// An error with its causes, `a: b: c` (reqwest hides the reason of a refused connection
/// in them; see [`weir_engine::error::chain`]).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    weir_engine::error::chain(e).to_string()
}

/// The explicit mapping of rows of `schema`.
pub fn mapping(schema: &SchemaRef) -> Value {
    let mut props = serde_json::Map::new();
    for f in schema.fields() {
        let t = match f.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => json!({"type": "keyword"}),
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
                json!({"type": "long"})
            }
            DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => json!({"type": "long"}),
            DataType::UInt64 => json!({"type": "unsigned_long"}),
            DataType::Float16 | DataType::Float32 | DataType::Float64 => {
                json!({"type": "double"})
            }
            DataType::Decimal128(..) | DataType::Decimal256(..) => json!({"type": "double"}),
            DataType::Boolean => json!({"type": "boolean"}),
            DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => {
                json!({"type": "date", "format": "epoch_millis||strict_date_optional_time"})
            }
            _ => continue,
        };
        props.insert(f.name().clone(), t);
    }
    json!({ "properties": props })
}

impl Committable for ElasticsearchSink {
    fn flush(&mut self) -> Result<bool, EngineError> {
        self.send_pending()?;
        Ok(true)
    }

    fn finish(&mut self) -> Result<(), EngineError> {
        self.send_pending()
    }
}

impl Sink for ElasticsearchSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
        self.write_output("", batch)
    }

    fn write_output(&mut self, output: &str, batch: &RecordBatch) -> Result<(), EngineError> {
        if !std::mem::take(&mut self.write_failed) {
            let out = self.output_index(output)?;
            self.add_rows(out, batch)?;
        }
        let full = self.pending.len() >= self.config.bulk_max_docs
            || self.pending.bytes.len() >= self.config.bulk_max_bytes
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

    fn take_rejected(&mut self) -> Vec<RejectedRow> {
        std::mem::take(&mut self.rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_templates_name_indices_by_output_and_window_start() {
        let t = IndexTemplate::parse("weir-{pipeline}-{output}-{window_start:%Y.%m}").unwrap();
        assert!(t.uses_window_start());
        // 2026-11-22T10:05:00Z
        assert_eq!(
            t.name("ingest", "Per_Dataset", Some(1_795_341_900_000)),
            "weir-ingest-per_dataset-2026.11"
        );
        let plain = IndexTemplate::parse("weir-{output}").unwrap();
        assert!(!plain.uses_window_start());
        assert_eq!(plain.name("p", "latest", None), "weir-latest");
        for bad in [
            "Weir-{output}",
            "weir-{nope}",
            "weir-{output",
            "_weir",
            "weir {output}",
        ] {
            assert!(IndexTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    /// The cluster's load is tried again, missing rights fail the run, a delete of what is not
    /// there is done, and the rest is refused for good (dead-lettered: a retry would stall
    /// the sink behind a block or a missing index that does not go away).
    #[test]
    fn bulk_items_are_retried_refused_or_forbidden_by_their_error() {
        let item = |status: u64, kind: &str| {
            json!({ "index": { "_index": "i", "_id": "d", "status": status,
                "error": { "type": kind, "reason": "r" } } })
        };
        let retried = |o: ItemOutcome| matches!(o, ItemOutcome::Retry(_));
        assert!(retried(item_outcome(&item(
            429,
            "es_rejected_execution_exception"
        ))));
        assert!(retried(item_outcome(&item(
            503,
            "unavailable_shards_exception"
        ))));
        // the flood stage from Elasticsearch 7.7
        assert!(retried(item_outcome(&item(429, "cluster_block_exception"))));
        let refused = |o: ItemOutcome| matches!(o, ItemOutcome::Refused(_));
        assert!(refused(item_outcome(&item(403, "cluster_block_exception"))));
        assert!(refused(item_outcome(&item(
            404,
            "index_not_found_exception"
        ))));
        let missing_index = json!({ "delete": { "status": 404,
            "error": { "type": "index_not_found_exception", "reason": "no such index" } } });
        assert!(matches!(item_outcome(&missing_index), ItemOutcome::Done));
        assert!(matches!(
            item_outcome(&item(403, "security_exception")),
            ItemOutcome::Forbidden(_)
        ));
        assert!(matches!(
            item_outcome(&item(400, "mapper_parsing_exception")),
            ItemOutcome::Refused(_)
        ));
        let gone = json!({ "delete": { "status": 404, "result": "not_found" } });
        assert!(matches!(item_outcome(&gone), ItemOutcome::Done));
    }

    #[test]
    fn mappings_follow_the_rows() {
        use arrow::datatypes::{Field, Schema, TimeUnit};
        let schema = Arc::new(Schema::new(vec![
            Field::new("datasetName", DataType::Utf8, true),
            Field::new(
                "window_start",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("events", DataType::Int64, false),
            Field::new("bytes", DataType::UInt64, false),
            Field::new("avg", DataType::Float64, true),
        ]));
        let m = mapping(&schema);
        assert_eq!(m["properties"]["datasetName"]["type"], "keyword");
        assert_eq!(m["properties"]["window_start"]["type"], "date");
        assert_eq!(
            m["properties"]["window_start"]["format"],
            "epoch_millis||strict_date_optional_time"
        );
        assert_eq!(m["properties"]["events"]["type"], "long");
        assert_eq!(m["properties"]["bytes"]["type"], "unsigned_long");
        assert_eq!(m["properties"]["avg"]["type"], "double");
    }
}
