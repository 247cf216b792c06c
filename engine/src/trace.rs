//! Trace and correlation ids of input records, carried into their dead letters: from Kafka
//! message headers (`trace_id`, W3C `traceparent`, `correlation_id`, with `x-` and dashed
//! variants) or from the platform envelope's `trace_id` / `correlation_id` fields. Read only
//! when a record is dead-lettered, never on the hot path. A NATS source also records each
//! message's subject under the `Nats-Subject` header, kept here for its dead letters.

static TRACEPARENT: std::sync::OnceLock<fn() -> Option<String>> = std::sync::OnceLock::new();

/// Installs how the current span's W3C `traceparent` is read (the binary does, when it
/// exports spans).
pub fn set_traceparent_source(source: fn() -> Option<String>) {
    let _ = TRACEPARENT.set(source);
}

/// The current span's `traceparent` when spans are exported: sinks put it on the messages
/// they write, so a consumer can join weir's trace.
pub fn current_traceparent() -> Option<String> {
    TRACEPARENT.get().and_then(|f| f())
}

/// The ids of one record (absent when it carried none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceIds {
    pub trace_id: Option<String>,
    pub correlation_id: Option<String>,
    /// The NATS subject the record was published on (a NATS source's records).
    pub subject: Option<String>,
}

/// The header a NATS source records each message's subject under.
pub const NATS_SUBJECT_HEADER: &str = "Nats-Subject";

/// Header names holding a trace id, normalised (lower case, `-` as `_`).
const TRACE_HEADERS: &[&str] = &["trace_id", "x_trace_id", "traceid", "x_b3_traceid"];
/// Header names holding a correlation id.
const CORRELATION_HEADERS: &[&str] = &["correlation_id", "x_correlation_id", "correlationid"];

fn normalised(name: &[u8]) -> String {
    String::from_utf8_lossy(name)
        .to_ascii_lowercase()
        .replace('-', "_")
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
fn traceparent_id(v: &str) -> Option<String> {
    let mut parts = v.trim().split('-');
    let (_version, id) = (parts.next()?, parts.next()?);
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

/// Whether a header carries a trace or correlation id (readers keep these even when the
/// pipeline does not read headers, for dead letters).
pub fn is_trace_header(name: &str) -> bool {
    let name = name.as_bytes();
    name_is(name, "traceparent")
        || name_is(name, "nats_subject")
        || TRACE_HEADERS.iter().any(|t| name_is(name, t))
        || CORRELATION_HEADERS.iter().any(|c| name_is(name, c))
}

/// `name` equals the normalised `want`, ignoring case and taking `-` as `_` (no allocation:
/// readers call it for every header).
fn name_is(name: &[u8], want: &str) -> bool {
    name.len() == want.len()
        && name.iter().zip(want.bytes()).all(|(&a, b)| {
            let a = if a == b'-' {
                b'_'
            } else {
                a.to_ascii_lowercase()
            };
            a == b
        })
}

impl TraceIds {
    /// Whether neither id is known.
    pub fn is_empty(&self) -> bool {
        self.trace_id.is_none() && self.correlation_id.is_none()
    }

    /// The ids in a record's headers (name, value).
    pub fn from_headers<'a>(
        headers: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> Self {
        let mut ids = TraceIds::default();
        for (name, value) in headers {
            let Some(value) = value.and_then(|v| std::str::from_utf8(v).ok()) else {
                continue;
            };
            let value = value.trim();
            if !usable_id(value) {
                continue;
            }
            let name = normalised(name);
            if TRACE_HEADERS.contains(&name.as_str()) {
                ids.trace_id.get_or_insert_with(|| value.to_string());
            } else if name == "traceparent" {
                if let Some(id) = traceparent_id(value) {
                    ids.trace_id.get_or_insert(id);
                }
            } else if CORRELATION_HEADERS.contains(&name.as_str()) {
                ids.correlation_id.get_or_insert_with(|| value.to_string());
            } else if name == "nats_subject" {
                ids.subject.get_or_insert_with(|| value.to_string());
            }
        }
        ids
    }

    /// The ids of a record's envelope: the string fields `trace_id`/`traceId` and
    /// `correlation_id`/`correlationId` of a JSON record, found even when the record is not
    /// valid JSON otherwise (a bad record keeps its ids).
    pub fn from_record(raw: &[u8]) -> Self {
        let field = |names: &[&str]| names.iter().find_map(|n| json_string_field(raw, n));
        TraceIds {
            trace_id: field(&["trace_id", "traceId"]),
            correlation_id: field(&["correlation_id", "correlationId"]),
            subject: None,
        }
    }

    /// These ids, with the missing ones taken from `other`.
    pub fn or(self, other: TraceIds) -> Self {
        TraceIds {
            trace_id: self.trace_id.or(other.trace_id),
            correlation_id: self.correlation_id.or(other.correlation_id),
            subject: self.subject.or(other.subject),
        }
    }

    /// As Kafka headers of a message about the record (a dead letter).
    pub fn headers(&self) -> Vec<(&'static str, &[u8])> {
        let mut h = Vec::new();
        if let Some(t) = &self.trace_id {
            h.push(("trace_id", t.as_bytes()));
        }
        if let Some(c) = &self.correlation_id {
            h.push(("correlation_id", c.as_bytes()));
        }
        h
    }
}

/// The value of the first `"name": "value"` in `raw` (a plain string without escapes, as ids
/// are).
fn json_string_field(raw: &[u8], name: &str) -> Option<String> {
    let key = format!("\"{name}\"");
    let mut from = 0;
    while let Some(i) = memchr::memmem::find(&raw[from..], key.as_bytes()) {
        let mut p = from + i + key.len();
        from = p;
        while raw.get(p).is_some_and(u8::is_ascii_whitespace) {
            p += 1;
        }
        if raw.get(p) != Some(&b':') {
            continue;
        }
        p += 1;
        while raw.get(p).is_some_and(u8::is_ascii_whitespace) {
            p += 1;
        }
        if raw.get(p) != Some(&b'"') {
            continue;
        }
        let start = p + 1;
        let len = raw[start..].iter().position(|&b| b == b'"' || b == b'\\')?;
        if raw.get(start + len) != Some(&b'"') || len == 0 || len > 256 {
            continue;
        }
        return std::str::from_utf8(&raw[start..start + len])
            .ok()
            .filter(|id| usable_id(id))
            .map(str::to_string);
    }
    None
}

/// The longest trace or correlation id kept (bytes); a longer one is left out.
const MAX_ID_LEN: usize = 256;

/// Whether `id` can be carried as an id: not empty, at most [`MAX_ID_LEN`] bytes, and no
/// control character (a CR or LF would end the header it is written to: a NATS client
/// panics on one, an HTTP client refuses it).
fn usable_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && !id.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An id with a control character (a CR or LF would end the header a dead letter carries
    /// it in: async-nats panics on one) or longer than 256 bytes is left out.
    #[test]
    fn ids_with_control_characters_or_too_long_are_left_out() {
        let ids = TraceIds::from_record(b"{\"correlation_id\":\"a\nb\",\"trace_id\":\"t\rx\"}");
        assert!(ids.is_empty(), "{ids:?}");
        let long = format!("{{\"trace_id\":\"{}\"}}", "x".repeat(257));
        assert!(TraceIds::from_record(long.as_bytes()).is_empty());
        let h: Vec<(&[u8], Option<&[u8]>)> = vec![
            (b"X-Correlation-Id", Some(b"order\r\n42")),
            (b"trace_id", Some(b"ok\x07")),
        ];
        assert!(TraceIds::from_headers(h).is_empty());
        let fine = TraceIds::from_record(b"{\"correlation_id\":\"order-42\"}");
        assert_eq!(fine.correlation_id.as_deref(), Some("order-42"));
    }

    #[test]
    fn headers_give_trace_and_correlation_ids() {
        let h: Vec<(&[u8], Option<&[u8]>)> = vec![
            (b"content-type", Some(b"application/json")),
            (b"X-Correlation-Id", Some(b"order-42")),
            (
                b"traceparent",
                Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ),
        ];
        let ids = TraceIds::from_headers(h);
        assert_eq!(
            ids.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(ids.correlation_id.as_deref(), Some("order-42"));
        let direct = TraceIds::from_headers(vec![(&b"trace_id"[..], Some(&b"t-1"[..]))]);
        assert_eq!(direct.trace_id.as_deref(), Some("t-1"));
        assert!(TraceIds::from_headers(vec![(&b"trace_id"[..], None)]).is_empty());
        assert!(is_trace_header("X-Correlation-Id") && is_trace_header("traceparent"));
        assert!(!is_trace_header("content-type"));
    }

    #[test]
    fn the_envelope_gives_ids_even_in_a_broken_record() {
        let raw = br#"{"id":"e1","type":"data.ingestion.completed.v1","correlation_id" : "c-9","trace_id":"abc123","payload":{"datasetName": 12"#;
        let ids = TraceIds::from_record(raw);
        assert_eq!(ids.trace_id.as_deref(), Some("abc123"));
        assert_eq!(ids.correlation_id.as_deref(), Some("c-9"));
        assert!(TraceIds::from_record(br#"{"trace_id": 5}"#).is_empty());
        let from_headers = TraceIds {
            trace_id: Some("h".into()),
            ..Default::default()
        };
        let merged = from_headers.or(ids);
        assert_eq!(merged.trace_id.as_deref(), Some("h"));
        assert_eq!(merged.correlation_id.as_deref(), Some("c-9"));
    }
}
