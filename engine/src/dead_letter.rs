//! Dead-letter records: bad and late input, kept with its error and original bytes.

use std::sync::Arc;

use base64::Engine as _;
use serde_json::{json, Map, Value};

/// Why a record was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Not valid for its format or schema.
    Bad,
    /// Arrived after its window closed.
    Late,
    /// A result row its sink refused for good.
    Rejected,
}

impl Reason {
    /// `bad` or `late`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Bad => "bad",
            Reason::Late => "late",
            Reason::Rejected => "rejected",
        }
    }
}

/// The `{code, message, details}` error object of a dead letter.
#[derive(Debug, Clone)]
pub struct ErrorInfo {
    /// A stable machine-readable code, e.g. `invalid_json`, `missing_field`, `late_event`.
    pub code: &'static str,
    /// What is wrong, for people.
    pub message: String,
    /// Structured facts: field, expected type, window, watermark...
    pub details: Map<String, Value>,
}

impl ErrorInfo {
    /// An error with no details.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        ErrorInfo {
            code,
            message: message.into(),
            details: Map::new(),
        }
    }
    /// Adds a detail.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }
}

/// A row a sink refused for good (the output will never take it), as the sink encoded it.
#[derive(Debug, Clone)]
pub struct RejectedRow {
    pub raw: Vec<u8>,
    pub error: ErrorInfo,
}

/// Where a partition's records come from, shared by its chunks and dead letters.
#[derive(Debug)]
pub struct PartitionInfo {
    /// The source's name in the pipeline.
    pub source: Arc<str>,
    /// Global partition id within the job.
    pub id: usize,
    /// The id a pool worker keeps this partition's state under: `id` itself, or for a lane
    /// of a repartition topic (one upstream partition in it) the id of its partition's
    /// first lane, since state moves with the Kafka partition.
    pub state_id: usize,
    /// The partition number within its source (Kafka partition, file index).
    pub number: u32,
    /// The Kafka topic, when there is one.
    pub topic: Option<Arc<str>>,
    /// The file read, for file sources.
    pub file: Option<Arc<str>>,
}

/// One dead-lettered record.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: Arc<PartitionInfo>,
    /// Offset within the partition: a Kafka offset, or a 0-based line index in a file.
    pub offset: Option<u64>,
    pub reason: Reason,
    pub error: ErrorInfo,
    /// The original bytes (None when the record was generated, not read).
    pub raw: Option<Vec<u8>>,
    /// The record's trace and correlation ids, when it carried them.
    pub trace: crate::trace::TraceIds,
}

impl DeadLetter {
    /// `raw` into `obj`: the bytes as text, or as base64 with `raw_encoding: "base64"` when
    /// they are not UTF-8 (an Avro row a sink refused, say: replaced characters would make
    /// it unreadable).
    fn insert_raw(&self, obj: &mut Map<String, Value>) {
        match &self.raw {
            None => {
                obj.insert("raw".into(), Value::Null);
            }
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(s) => {
                    obj.insert("raw".into(), json!(s));
                }
                Err(_) => {
                    // the bytes as base64 (the contract's `raw`), said so by `raw_encoding`
                    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
                    obj.insert("raw".into(), json!(encoded));
                    obj.insert("raw_encoding".into(), json!("base64"));
                }
            },
        }
    }

    /// The record as one JSON object:
    /// `{source, topic, partition, offset, reason, error: {code, message, details}, raw}`
    /// plus `file`/`line` (1-based) for files; bytes that are not UTF-8 are `raw` as base64,
    /// with `raw_encoding: "base64"`.
    pub fn to_json(&self) -> Value {
        let p = &self.partition;
        let mut obj = Map::new();
        if self.reason == Reason::Rejected {
            // a result row: named by its sink, not by an input position
            obj.insert("sink".into(), json!(&*p.source));
            obj.insert("reason".into(), json!(self.reason.as_str()));
            obj.insert(
                "error".into(),
                json!({"code": self.error.code, "message": self.error.message, "details": self.error.details}),
            );
            self.insert_raw(&mut obj);
            return Value::Object(obj);
        }
        obj.insert("source".into(), json!(&*p.source));
        if let Some(subject) = &self.trace.subject {
            // a NATS stream's message: its subject and stream sequence
            obj.insert("stream".into(), json!(p.topic.as_deref()));
            obj.insert("subject".into(), json!(subject));
            obj.insert("sequence".into(), json!(self.offset));
        } else {
            obj.insert("topic".into(), json!(p.topic.as_deref()));
            obj.insert("partition".into(), json!(p.number));
            obj.insert("offset".into(), json!(self.offset));
        }
        if let Some(file) = &p.file {
            obj.insert("file".into(), json!(&**file));
            obj.insert("line".into(), json!(self.offset.map(|o| o + 1)));
        }
        obj.insert("reason".into(), json!(self.reason.as_str()));
        if let Some(t) = &self.trace.trace_id {
            obj.insert("trace_id".into(), json!(t));
        }
        if let Some(c) = &self.trace.correlation_id {
            obj.insert("correlation_id".into(), json!(c));
        }
        obj.insert(
            "error".into(),
            json!({"code": self.error.code, "message": self.error.message, "details": self.error.details}),
        );
        self.insert_raw(&mut obj);
        Value::Object(obj)
    }
}

/// Turns text that may hold secrets into text that does not (the pipeline's registered
/// secrets masked); see [`RecentDeadLetters::set_redactor`].
pub type Redactor = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// The newest dead letters of this process, kept in memory for the web console and the
/// `weir_dead_letters` SQL table: at most [`RecentDeadLetters::CAPACITY`] records, each cut
/// to [`RecentDeadLetters::RECORD_BYTES`] of text (so the ring holds at most
/// [`RecentDeadLetters::MAX_BYTES`] plus a small fixed overhead per record). Not
/// checkpointed: a restart starts it empty.
///
/// What any SQL client can read is redacted: details named like URLs or headers are dropped,
/// URLs in the message and details keep only their scheme and host, and the redactor set by
/// the pipeline masks its secrets. The dead-letter output keeps the records whole.
#[derive(Default)]
pub struct RecentDeadLetters {
    ring: std::sync::Mutex<std::collections::VecDeque<Arc<RecentDeadLetter>>>,
    redactor: std::sync::OnceLock<Redactor>,
}

impl std::fmt::Debug for RecentDeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecentDeadLetters")
            .field("kept", &self.list().len())
            .finish_non_exhaustive()
    }
}

/// One kept dead letter, flattened for a table.
#[derive(Debug, Clone)]
pub struct RecentDeadLetter {
    /// When it was written to the dead-letter output (Unix ms).
    pub written_ms: i64,
    /// The source, or the sink of a rejected row (cut to `NAME_BYTES`).
    pub source: String,
    /// `topic/partition`, the file, or the partition number (as in `weir_status`); `None`
    /// for a rejected row (cut to `NAME_BYTES`).
    pub partition: Option<String>,
    pub offset: Option<u64>,
    pub reason: &'static str,
    pub code: &'static str,
    /// Redacted, cut to `MESSAGE_BYTES`.
    pub message: String,
    /// The error's details as a JSON object, redacted; when longer than `DETAILS_BYTES`,
    /// `{"details_truncated": "<the start of the JSON text>"}`.
    pub details: String,
    /// The original bytes as text (invalid UTF-8 replaced), cut to `RAW_BYTES`.
    pub raw: Option<String>,
    /// `raw` was cut.
    pub raw_truncated: bool,
    /// Cut to `TRACE_BYTES`.
    pub trace_id: Option<String>,
}

impl RecentDeadLetters {
    /// Records kept.
    pub const CAPACITY: usize = 1000;
    /// Bytes of `raw` kept per record (after invalid UTF-8 is replaced).
    pub const RAW_BYTES: usize = 4096;
    /// Bytes of `message` kept per record.
    pub const MESSAGE_BYTES: usize = 1024;
    /// Bytes of `details` (JSON text) kept per record.
    pub const DETAILS_BYTES: usize = 4096;
    /// Bytes of `trace_id` kept per record.
    pub const TRACE_BYTES: usize = 256;
    /// Bytes of `source` and of `partition` kept per record.
    pub const NAME_BYTES: usize = 256;
    /// Text bytes per record at most.
    pub const RECORD_BYTES: usize = Self::RAW_BYTES
        + Self::MESSAGE_BYTES
        + Self::DETAILS_BYTES
        + Self::TRACE_BYTES
        + 2 * Self::NAME_BYTES;
    /// Text bytes of the whole ring at most (about 10 MB).
    pub const MAX_BYTES: usize = Self::CAPACITY * Self::RECORD_BYTES;

    /// Sets how messages and details are redacted before they are kept (once; the pipeline
    /// passes its secret masking). Later calls are ignored.
    pub fn set_redactor(&self, redactor: Redactor) {
        let _ = self.redactor.set(redactor);
    }

    /// Keeps the newest of `records` (written at `now_ms`), dropping the oldest kept.
    pub fn push(&self, records: &[DeadLetter], now_ms: i64) {
        let skip = records.len().saturating_sub(Self::CAPACITY);
        let redactor = self.redactor.get();
        let kept: Vec<Arc<RecentDeadLetter>> = records[skip..]
            .iter()
            .map(|d| Arc::new(RecentDeadLetter::of(d, now_ms, redactor)))
            .collect();
        let mut ring = match self.ring.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        for r in kept {
            if ring.len() == Self::CAPACITY {
                ring.pop_front();
            }
            ring.push_back(r);
        }
    }

    /// The kept records, oldest first (pointers: nothing is copied under the lock).
    pub fn list(&self) -> Vec<Arc<RecentDeadLetter>> {
        match self.ring.lock() {
            Ok(r) => r.iter().cloned().collect(),
            Err(p) => p.into_inner().iter().cloned().collect(),
        }
    }
}

/// `s` cut to at most `max` bytes at a character boundary; whether it was cut.
fn cut(mut s: String, max: usize) -> (String, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut at = max;
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    s.truncate(at);
    (s, true)
}

/// Whether a detail's key names something that may carry credentials (addresses, headers).
fn secret_detail(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k == "url" || k.ends_with("_url") || k == "uri" || k.contains("header") || k == "cookie"
}

/// `text` with every `http://` / `https://` URL cut to its scheme and host (no user, path or
/// query: a webhook's path or query often is its secret).
pub fn strip_urls(text: &str) -> String {
    // ASCII lowercasing keeps every byte where it is
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    while let Some(i) = lower[from..].find("http").map(|i| from + i) {
        let scheme = if lower[i..].starts_with("https://") {
            8
        } else if lower[i..].starts_with("http://") {
            7
        } else {
            out.push_str(&text[from..i + 4]);
            from = i + 4;
            continue;
        };
        out.push_str(&text[from..i + scheme]);
        let after = &text[i + scheme..];
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`' | '\\'))
            .unwrap_or(after.len());
        let url = &after[..end];
        let authority = url.split(['/', '?', '#']).next().unwrap_or("");
        let host = authority.rsplit('@').next().unwrap_or("");
        out.push_str(host);
        if host.len() < url.len() {
            out.push_str("/…");
        }
        from = i + scheme + end;
    }
    out.push_str(&text[from..]);
    out
}

/// `details` (JSON text) as kept: itself when short enough, else
/// `{"details_truncated": "<its start>"}` within `DETAILS_BYTES`.
fn bounded_details(details: String) -> String {
    let max = RecentDeadLetters::DETAILS_BYTES;
    if details.len() <= max {
        return details;
    }
    let details = cut(details, max).0;
    let mut keep = max - 32;
    loop {
        let head = cut(details.clone(), keep).0;
        let text = json!({ "details_truncated": head }).to_string();
        if text.len() <= max {
            return text;
        }
        // escaping grew it: keep less
        keep = (keep * max / text.len()).saturating_sub(8);
    }
}

impl RecentDeadLetter {
    fn of(d: &DeadLetter, now_ms: i64, redactor: Option<&Redactor>) -> Self {
        let p = &d.partition;
        let partition = match (d.reason, &p.topic, &p.file) {
            (Reason::Rejected, _, _) => None,
            (_, Some(t), _) => Some(format!("{t}/{}", p.number)),
            (_, None, Some(f)) => Some(f.to_string()),
            _ => Some(p.number.to_string()),
        };
        let (raw, raw_truncated) = match &d.raw {
            None => (None, false),
            Some(b) => {
                let cut_bytes = b.len() > RecentDeadLetters::RAW_BYTES;
                let b = &b[..b.len().min(RecentDeadLetters::RAW_BYTES)];
                // invalid bytes grow to three as U+FFFD: cut again after decoding
                let (text, cut_text) = cut(
                    String::from_utf8_lossy(b).into_owned(),
                    RecentDeadLetters::RAW_BYTES,
                );
                (Some(text), cut_bytes || cut_text)
            }
        };
        // cut before redacting (bounded work), far beyond what is kept after it, so that no
        // secret is cut in two where the kept text ends
        let clean = |text: &str| {
            let (text, _) = cut(text.to_string(), 16 * RecentDeadLetters::DETAILS_BYTES);
            let text = strip_urls(&text);
            match redactor {
                Some(r) => r(&text),
                None => text,
            }
        };
        let details: Map<String, Value> = d
            .error
            .details
            .iter()
            .filter(|(k, _)| !secret_detail(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let details = clean(&Value::Object(details).to_string());
        let details = bounded_details(details);
        let name = |s: String| cut(s, RecentDeadLetters::NAME_BYTES).0;
        RecentDeadLetter {
            written_ms: now_ms,
            source: name(p.source.to_string()),
            partition: partition.map(name),
            offset: d.offset,
            reason: d.reason.as_str(),
            code: d.error.code,
            message: cut(clean(&d.error.message), RecentDeadLetters::MESSAGE_BYTES).0,
            details,
            raw,
            raw_truncated,
            trace_id: d
                .trace
                .trace_id
                .clone()
                .map(|t| cut(t, RecentDeadLetters::TRACE_BYTES).0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_keeps_raw_bytes() {
        let p = Arc::new(PartitionInfo {
            source: "sample".into(),
            id: 0,
            state_id: 0,
            number: 0,
            topic: None,
            file: Some("in.ndjson".into()),
        });
        let d = DeadLetter {
            partition: p.clone(),
            offset: Some(41),
            reason: Reason::Bad,
            error: ErrorInfo::new("invalid_json", "expected `{`").with("column", 1),
            raw: Some(b"nope".to_vec()),
            trace: crate::trace::TraceIds {
                trace_id: Some("t1".into()),
                ..Default::default()
            },
        };
        let v = d.to_json();
        assert_eq!(v["line"], 42);
        let nats = DeadLetter {
            trace: crate::trace::TraceIds {
                subject: Some("ontology.schema.created".into()),
                ..Default::default()
            },
            ..d.clone()
        };
        let n = nats.to_json();
        assert_eq!(n["subject"], "ontology.schema.created");
        assert_eq!(n["sequence"], 41);
        assert!(n.get("topic").is_none() && n.get("offset").is_none());
        assert_eq!(v["reason"], "bad");
        assert_eq!(v["error"]["code"], "invalid_json");
        assert_eq!(v["raw"], "nope");
        assert_eq!(v["trace_id"], "t1");
        assert!(v.get("correlation_id").is_none());
        let d2 = DeadLetter {
            raw: Some(vec![0xff, 0xfe]),
            ..d
        };
        let j2 = d2.to_json();
        assert_eq!(j2["raw"], "//4=");
        assert_eq!(j2["raw_encoding"], "base64");
        assert!(j2.get("raw_base64").is_none(), "the bytes once, not twice");
        let recent = RecentDeadLetters::default();
        let long = DeadLetter {
            raw: Some(vec![b'x'; RecentDeadLetters::RAW_BYTES + 10]),
            ..d2.clone()
        };
        let many: Vec<DeadLetter> = (0..RecentDeadLetters::CAPACITY + 5)
            .map(|_| d2.clone())
            .chain([long])
            .collect();
        recent.push(&many, 7);
        let kept = recent.list();
        assert_eq!(kept.len(), RecentDeadLetters::CAPACITY);
        let newest = kept.last().unwrap();
        assert!(newest.raw_truncated);
        assert_eq!(
            newest.raw.as_ref().unwrap().len(),
            RecentDeadLetters::RAW_BYTES
        );
        assert_eq!(newest.partition.as_deref(), Some("in.ndjson"));
        assert_eq!(newest.code, "invalid_json");
        assert_eq!(kept[0].raw.as_deref(), Some("\u{fffd}\u{fffd}"));
    }

    fn webhook_refusal() -> DeadLetter {
        let p = Arc::new(PartitionInfo {
            source: "hook".into(),
            id: 0,
            state_id: 0,
            number: 0,
            topic: None,
            file: None,
        });
        let url = "https://user:pw@hooks.example.com/services/T0/B0/SECRETPATH?sig=QUERYSECRET";
        DeadLetter {
            partition: p,
            offset: None,
            reason: Reason::Rejected,
            error: ErrorInfo::new(
                "webhook_refused",
                format!("{url} answered 400 Bad Request: key s3cr3t-api-key is wrong"),
            )
            .with("status", 400)
            .with("url", url)
            .with("Webhook_URL", url)
            .with("headers", json!({"set-cookie": "sid=COOKIESECRET"}))
            .with("response_headers", json!({"x": "HEADERSECRET"}))
            .with("body", format!("see {url} (s3cr3t-api-key)")),
            raw: Some(b"{}".to_vec()),
            trace: Default::default(),
        }
    }

    /// A row a sink refused whose bytes are not UTF-8 (an Avro message over
    /// `message.max.bytes`) keeps them, as base64: replaced characters made it unreadable.
    #[test]
    fn a_refused_row_that_is_not_text_is_kept_as_base64() {
        use base64::Engine;
        let bytes = vec![0u8, 0, 0, 0, 1, 0xC8, 0xFF];
        let letter = DeadLetter {
            raw: Some(bytes.clone()),
            ..webhook_refusal()
        };
        let j = letter.to_json();
        assert_eq!(j["raw_encoding"], "base64", "{j}");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(j["raw"].as_str().unwrap())
            .unwrap();
        assert_eq!(raw, bytes);
        // text stays text
        assert_eq!(webhook_refusal().to_json()["raw"], "{}");
    }

    #[test]
    fn kept_dead_letters_hold_no_urls_headers_or_secrets() {
        let recent = RecentDeadLetters::default();
        recent.set_redactor(Arc::new(|s: &str| s.replace("s3cr3t-api-key", "***")));
        recent.push(&[webhook_refusal()], 1);
        let kept = recent.list();
        let d = &kept[0];
        let all = format!("{} {}", d.message, d.details);
        for secret in [
            "SECRETPATH",
            "QUERYSECRET",
            "user:pw",
            "COOKIESECRET",
            "HEADERSECRET",
            "s3cr3t-api-key",
        ] {
            assert!(!all.contains(secret), "{secret} kept: {all}");
        }
        assert!(
            d.message
                .starts_with("https://hooks.example.com/… answered 400"),
            "{}",
            d.message
        );
        let details: Value = serde_json::from_str(&d.details).unwrap();
        assert_eq!(details["status"], 400);
        assert_eq!(details["body"], "see https://hooks.example.com/… (***)");
        assert!(details.get("url").is_none() && details.get("headers").is_none());
        // the dead-letter output keeps the record whole
        assert!(webhook_refusal()
            .to_json()
            .to_string()
            .contains("SECRETPATH"));
        assert_eq!(
            strip_urls("HTTP://h:1/x y http://z"),
            "HTTP://h:1/… y http://z"
        );
        assert_eq!(strip_urls("httpx https://a?b"), "httpx https://a/…");
    }

    #[test]
    fn kept_dead_letters_are_bounded_in_bytes() {
        let recent = RecentDeadLetters::default();
        let huge = DeadLetter {
            error: ErrorInfo::new("webhook_refused", "m".repeat(100_000))
                .with("body", "\"".repeat(100_000)),
            // invalid UTF-8 grows threefold when decoded
            raw: Some(vec![0xff; 3 * RecentDeadLetters::RAW_BYTES]),
            trace: crate::trace::TraceIds {
                trace_id: Some("t".repeat(10_000)),
                ..Default::default()
            },
            ..webhook_refusal()
        };
        recent.push(&[huge], 1);
        let d = &recent.list()[0];
        assert_eq!(d.message.len(), RecentDeadLetters::MESSAGE_BYTES);
        assert!(d.details.len() <= RecentDeadLetters::DETAILS_BYTES);
        let details: Value = serde_json::from_str(&d.details).unwrap();
        assert!(details["details_truncated"].as_str().unwrap().len() > 1000);
        let raw = d.raw.as_ref().unwrap();
        assert!(raw.len() <= RecentDeadLetters::RAW_BYTES && raw.len() > 4000);
        assert!(d.raw_truncated);
        assert_eq!(
            d.trace_id.as_ref().unwrap().len(),
            RecentDeadLetters::TRACE_BYTES
        );
        let text = |d: &RecentDeadLetter| {
            d.source.len()
                + d.partition.as_ref().map_or(0, String::len)
                + d.message.len()
                + d.details.len()
                + d.raw.as_ref().map_or(0, String::len)
                + d.trace_id.as_ref().map_or(0, String::len)
        };
        assert!(text(d) <= RecentDeadLetters::RECORD_BYTES);
        const { assert!(RecentDeadLetters::MAX_BYTES <= 10_000_000) };
    }
}
