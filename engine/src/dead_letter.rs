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
    /// The record as one JSON object:
    /// `{source, topic, partition, offset, reason, error: {code, message, details}, raw}`
    /// plus `file`/`line` (1-based) for files and `raw_base64` when the bytes are not UTF-8.
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
            obj.insert(
                "raw".into(),
                json!(self.raw.as_deref().map(String::from_utf8_lossy)),
            );
            return Value::Object(obj);
        }
        obj.insert("source".into(), json!(&*p.source));
        obj.insert("topic".into(), json!(p.topic.as_deref()));
        obj.insert("partition".into(), json!(p.number));
        obj.insert("offset".into(), json!(self.offset));
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
        match &self.raw {
            None => {
                obj.insert("raw".into(), Value::Null);
            }
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(s) => {
                    obj.insert("raw".into(), json!(s));
                }
                Err(_) => {
                    obj.insert("raw".into(), Value::Null);
                    obj.insert(
                        "raw_base64".into(),
                        json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
                    );
                }
            },
        }
        Value::Object(obj)
    }
}

/// The newest dead letters of this process, kept in memory for the web console and the
/// `weir_dead_letters` SQL table: at most [`RecentDeadLetters::CAPACITY`] records, each `raw`
/// cut to [`RecentDeadLetters::RAW_BYTES`]. Not checkpointed: a restart starts it empty.
#[derive(Debug, Default)]
pub struct RecentDeadLetters {
    ring: std::sync::Mutex<std::collections::VecDeque<RecentDeadLetter>>,
}

/// One kept dead letter, flattened for a table.
#[derive(Debug, Clone)]
pub struct RecentDeadLetter {
    /// When it was written to the dead-letter output (Unix ms).
    pub written_ms: i64,
    /// The source, or the sink of a rejected row.
    pub source: String,
    /// `topic/partition`, the file, or the partition number (as in `weir_status`); `None`
    /// for a rejected row.
    pub partition: Option<String>,
    pub offset: Option<u64>,
    pub reason: &'static str,
    pub code: &'static str,
    pub message: String,
    /// The error's details as a JSON object.
    pub details: String,
    /// The original bytes as text (invalid UTF-8 replaced), cut to `RAW_BYTES`.
    pub raw: Option<String>,
    /// `raw` was cut.
    pub raw_truncated: bool,
    pub trace_id: Option<String>,
}

impl RecentDeadLetters {
    /// Records kept.
    pub const CAPACITY: usize = 1000;
    /// Bytes of `raw` kept per record.
    pub const RAW_BYTES: usize = 4096;

    /// Keeps the newest of `records` (written at `now_ms`), dropping the oldest kept.
    pub fn push(&self, records: &[DeadLetter], now_ms: i64) {
        let skip = records.len().saturating_sub(Self::CAPACITY);
        let kept: Vec<RecentDeadLetter> = records[skip..]
            .iter()
            .map(|d| RecentDeadLetter::of(d, now_ms))
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

    /// The kept records, oldest first.
    pub fn list(&self) -> Vec<RecentDeadLetter> {
        match self.ring.lock() {
            Ok(r) => r.iter().cloned().collect(),
            Err(p) => p.into_inner().iter().cloned().collect(),
        }
    }
}

impl RecentDeadLetter {
    fn of(d: &DeadLetter, now_ms: i64) -> Self {
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
                let cut = b.len() > RecentDeadLetters::RAW_BYTES;
                let b = &b[..b.len().min(RecentDeadLetters::RAW_BYTES)];
                (Some(String::from_utf8_lossy(b).into_owned()), cut)
            }
        };
        RecentDeadLetter {
            written_ms: now_ms,
            source: p.source.to_string(),
            partition,
            offset: d.offset,
            reason: d.reason.as_str(),
            code: d.error.code,
            message: d.error.message.clone(),
            details: Value::Object(d.error.details.clone()).to_string(),
            raw,
            raw_truncated,
            trace_id: d.trace.trace_id.clone(),
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
                correlation_id: None,
            },
        };
        let v = d.to_json();
        assert_eq!(v["line"], 42);
        assert_eq!(v["reason"], "bad");
        assert_eq!(v["error"]["code"], "invalid_json");
        assert_eq!(v["raw"], "nope");
        assert_eq!(v["trace_id"], "t1");
        assert!(v.get("correlation_id").is_none());
        let d2 = DeadLetter {
            raw: Some(vec![0xff, 0xfe]),
            ..d
        };
        assert_eq!(d2.to_json()["raw_base64"], "//4=");
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
}
