//! Rows as webhook bodies: each row a JSON object led by its deterministic `_row_id`, URL
//! templates, requests cut by rows and bytes, and the body modes (JSON rows, CloudEvents
//! 1.0 structured or binary, encoded by [`weir_formats::cloudevents`]).

use sha2::{Digest, Sha256};
use weir_formats::cloudevents::{self, Attributes};
use weir_formats::json_rows::json_string;

/// The field each row object starts with: the row's deterministic id.
pub const ROW_ID_FIELD: &str = "_row_id";

/// How rows are put in a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyMode {
    /// The rows as JSON (`application/json`).
    Json,
    /// CloudEvents 1.0 structured mode: each row is the `data` of an event
    /// (`application/cloudevents+json`, or `application/cloudevents-batch+json` for arrays).
    CloudEventsStructured,
    /// CloudEvents 1.0 binary mode: the JSON rows as the body, the event's attributes in
    /// `ce-*` headers.
    CloudEventsBinary,
}

/// One row a request, or arrays of rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// The body is one row (an object).
    Single,
    /// The body is an array of up to `batch_max_rows` rows and `batch_max_bytes` bytes.
    Array,
}

/// One piece of a URL template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Pipeline,
    Output,
    /// A key column's value, percent-encoded.
    Column(String),
}

/// Why a URL template, or the URL of a row, is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("`url` `{0}` is not an http:// or https:// URL")]
    NotHttp(String),
    #[error("`url` `{0}`: unclosed `{{`")]
    Unclosed(String),
    #[error("`url` `{0}`: empty `{{}}`")]
    EmptyPlaceholder(String),
    #[error("`url` `{0}`: the host must be written out, ended by a `/`, `?` or `#`, before any placeholder (placeholders go in the path or query)")]
    HostNotWritten(String),
    #[error("`url` `{url}`: {reason}")]
    Invalid { url: String, reason: String },
    /// A row whose key column named in the template is null.
    #[error("key column `{0}` is null: the row has no URL (the `url` template names it)")]
    NullKey(String),
    /// A row whose URL's path has a `.` or `..` segment (made by its key values): a URL
    /// parser reads it as a path step (`..` climbs to the parent), which would send the row
    /// to another path.
    #[error("the row's URL `{url}` has the path segment `{segment}`, which would move it to another path: the row has no URL")]
    DotSegment { url: String, segment: String },
    /// A rendered URL that does not parse, or goes elsewhere than the template's scheme,
    /// host and port (shown without user, password and query).
    #[error("the row's URL `{url}` does not go to {origin}: {reason}")]
    OtherOrigin {
        url: String,
        origin: String,
        reason: String,
    },
}

/// A URL with `{pipeline}`, `{output}` and `{key column}` placeholders. Its scheme, host
/// and port are written out before any placeholder, and every row's URL is checked to keep
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTemplate {
    parts: Vec<Part>,
    /// The scheme, host and port every URL must have.
    origin: (String, String, Option<u16>),
}

/// The scheme, host and port of a URL.
fn origin_of(url: &reqwest::Url) -> (String, String, Option<u16>) {
    (
        url.scheme().to_string(),
        url.host_str().unwrap_or_default().to_string(),
        url.port_or_known_default(),
    )
}

/// `scheme://host[:port]/path` of `url`: no user, password, query or fragment (for logs and
/// dead letters: secrets are often in those).
pub fn public_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let mut s = format!("{}://{}", u.scheme(), u.host_str().unwrap_or_default());
            if let Some(p) = u.port() {
                s.push_str(&format!(":{p}"));
            }
            s.push_str(u.path());
            s
        }
        Err(_) => "(a URL that does not parse)".to_string(),
    }
}

impl UrlTemplate {
    /// Parses a template; it must be an http:// or https:// URL whose authority (host and
    /// port) is complete, up to a `/`, `?` or `#`, before the first placeholder: a key's
    /// value can never change where a request goes.
    pub fn parse(text: &str) -> Result<Self, UrlError> {
        let scheme_len = if text.starts_with("http://") {
            "http://".len()
        } else if text.starts_with("https://") {
            "https://".len()
        } else {
            return Err(UrlError::NotHttp(text.to_string()));
        };
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| UrlError::Unclosed(text.to_string()))?;
            let inner = rest[open + 1..open + close].trim();
            parts.push(match inner {
                "pipeline" => Part::Pipeline,
                "output" => Part::Output,
                "" => return Err(UrlError::EmptyPlaceholder(text.to_string())),
                c => Part::Column(c.to_string()),
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        // the text before the first placeholder holds the whole authority
        let head = match parts.first() {
            Some(Part::Text(t)) => t.as_str(),
            _ => "",
        };
        let end = head
            .get(scheme_len..)
            .and_then(|a| a.find(['/', '?', '#']))
            .filter(|&i| i > 0)
            .ok_or_else(|| UrlError::HostNotWritten(text.to_string()))?;
        let authority = &head[..scheme_len + end];
        let base =
            reqwest::Url::parse(&format!("{authority}/")).map_err(|e| UrlError::Invalid {
                url: text.to_string(),
                reason: e.to_string(),
            })?;
        if base.host_str().is_none_or(str::is_empty) {
            return Err(UrlError::HostNotWritten(text.to_string()));
        }
        Ok(UrlTemplate {
            parts,
            origin: origin_of(&base),
        })
    }

    /// The key columns the template names.
    pub fn columns(&self) -> Vec<&str> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Column(c) => Some(c.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The URL of a row: `values` gives a named column's value as text (`None`: null, an
    /// error). The URL is checked to parse with the template's scheme, host and port.
    pub fn render(
        &self,
        pipeline: &str,
        output: &str,
        mut values: impl FnMut(&str) -> Option<String>,
    ) -> Result<String, UrlError> {
        let mut s = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => s.push_str(t),
                Part::Pipeline => percent_encode(&mut s, pipeline),
                Part::Output => percent_encode(&mut s, output),
                Part::Column(c) => match values(c) {
                    Some(v) => percent_encode(&mut s, &v),
                    None => return Err(UrlError::NullKey(c.clone())),
                },
            }
        }
        if let Some(segment) = dot_segment(&s) {
            return Err(UrlError::DotSegment {
                url: public_url(&s),
                segment,
            });
        }
        self.check(&s)?;
        Ok(s)
    }

    /// Whether `url` parses and has the template's scheme, host and port.
    pub fn check(&self, url: &str) -> Result<(), UrlError> {
        let (scheme, host, port) = &self.origin;
        let origin = match port {
            Some(p) => format!("{scheme}://{host}:{p}"),
            None => format!("{scheme}://{host}"),
        };
        let other = |reason: String| UrlError::OtherOrigin {
            url: public_url(url),
            origin: origin.clone(),
            reason,
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| other(e.to_string()))?;
        if origin_of(&parsed) != self.origin {
            return Err(other("another scheme, host or port".to_string()));
        }
        Ok(())
    }
}

impl UrlTemplate {
    /// The template with `{pipeline}` and `{output}` filled in and key placeholders kept.
    pub fn describe(&self, pipeline: &str, output: &str) -> String {
        let mut s = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => s.push_str(t),
                Part::Pipeline => percent_encode(&mut s, pipeline),
                Part::Output => percent_encode(&mut s, output),
                Part::Column(c) => {
                    s.push('{');
                    s.push_str(c);
                    s.push('}');
                }
            }
        }
        s
    }
}

/// The first `.` or `..` segment of `url`'s path, percent-encoded or not (parsers read
/// `%2e%2e` as `..` too); `None` when there is none.
fn dot_segment(url: &str) -> Option<String> {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path_and_more = after_scheme.find('/').map_or("", |i| &after_scheme[i..]);
    let path = path_and_more.split(['?', '#']).next().unwrap_or("");
    path.split('/')
        .find(|seg| {
            let s = seg.to_ascii_lowercase().replace("%2e", ".");
            s == "." || s == ".."
        })
        .map(str::to_string)
}

/// Appends `value` with every byte but RFC 3986's unreserved characters percent-encoded.
fn percent_encode(out: &mut String, value: &str) {
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// Lowercase hex of the first 16 bytes of SHA-256 over `parts`, each followed by a 0 byte.
fn digest_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
        h.update([0u8]);
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A row's id: from the pipeline, the output and the row's key (key columns, with
/// `window_start` for a window), plus, for a view (whose key is sent at every change), the
/// whole row. The same row gets the same id in any batch, any run.
pub fn row_id(pipeline: &str, output: &str, key_json: &[u8], row_json: Option<&[u8]>) -> String {
    let id = match row_json {
        Some(row) => digest_hex(&[pipeline.as_bytes(), output.as_bytes(), key_json, row]),
        None => digest_hex(&[pipeline.as_bytes(), output.as_bytes(), key_json]),
    };
    format!("row_{id}")
}

/// A request's `webhook-id`: from the ids of the rows it carries, in order.
pub fn message_id<'a>(row_ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut h = Sha256::new();
    for id in row_ids {
        h.update(id.as_bytes());
        h.update([0u8]);
    }
    let hex: String = h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("msg_{hex}")
}

/// Appends the row object `{"_row_id":ID,<columns>}` to `out`, from the row's JSON object.
pub fn row_object(out: &mut Vec<u8>, id: &str, row_json: &[u8]) {
    out.extend_from_slice(b"{\"");
    out.extend_from_slice(ROW_ID_FIELD.as_bytes());
    out.extend_from_slice(b"\":");
    json_string(out, id);
    let rest = row_json.strip_prefix(b"{").unwrap_or(row_json);
    if rest != b"}" {
        out.push(b',');
    }
    out.extend_from_slice(rest);
}

/// Splits rows of sizes `sizes` (bytes, in order) into consecutive requests of at most
/// `max_rows` rows and about `max_bytes` bytes (a row alone larger than that is sent
/// alone); returns the ranges of rows.
pub fn cut(sizes: &[usize], max_rows: usize, max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut first, mut bytes) = (0, 2usize);
    for (i, &size) in sizes.iter().enumerate() {
        if i > first && (i - first >= max_rows.max(1) || bytes + size + 1 > max_bytes) {
            out.push(first..i);
            first = i;
            bytes = 2;
        }
        bytes += size + 1;
    }
    if first < sizes.len() {
        out.push(first..sizes.len());
    }
    out
}

/// A request's body and content type, from its row objects (`(row id, row object)`);
/// `attrs` are the CloudEvents attributes of structured mode.
pub fn body(
    mode: BodyMode,
    batching: Batching,
    attrs: &Attributes<'_>,
    rows: &[(&str, &[u8])],
) -> (Vec<u8>, &'static str) {
    let mut out = Vec::with_capacity(rows.iter().map(|r| r.1.len() + 1).sum::<usize>() + 2);
    let single = batching == Batching::Single && rows.len() == 1;
    match mode {
        BodyMode::Json | BodyMode::CloudEventsBinary => {
            if single {
                out.extend_from_slice(rows[0].1);
            } else {
                array(&mut out, rows.iter().map(|r| r.1), |o, r| {
                    o.extend_from_slice(r)
                });
            }
            (out, "application/json")
        }
        BodyMode::CloudEventsStructured => {
            if single {
                cloudevents::write_event(&mut out, attrs, rows[0].0, rows[0].1);
                (out, cloudevents::STRUCTURED_CONTENT_TYPE)
            } else {
                cloudevents::write_batch(&mut out, attrs, rows.iter().copied());
                (out, cloudevents::BATCH_CONTENT_TYPE)
            }
        }
    }
}

fn array<T>(out: &mut Vec<u8>, items: impl Iterator<Item = T>, mut f: impl FnMut(&mut Vec<u8>, T)) {
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        f(out, item);
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn row_ids_depend_on_the_row_not_on_its_batch() {
        let a = row_id("p", "w", br#"{"k":"a","window_start":"x"}"#, None);
        assert_eq!(
            a,
            row_id("p", "w", br#"{"k":"a","window_start":"x"}"#, None)
        );
        assert!(a.starts_with("row_") && a.len() == 4 + 32);
        assert_ne!(
            a,
            row_id("p", "w", br#"{"k":"b","window_start":"x"}"#, None)
        );
        assert_ne!(
            a,
            row_id("p", "w2", br#"{"k":"a","window_start":"x"}"#, None)
        );
        assert_ne!(
            a,
            row_id("q", "w", br#"{"k":"a","window_start":"x"}"#, None)
        );
        // no ambiguity between fields: ("ab", "c") is not ("a", "bc")
        assert_ne!(row_id("ab", "c", b"k", None), row_id("a", "bc", b"k", None));
        // a view's row: the same key with other values is another row
        let v1 = row_id("p", "v", br#"{"k":"a"}"#, Some(br#"{"k":"a","n":1}"#));
        let v2 = row_id("p", "v", br#"{"k":"a"}"#, Some(br#"{"k":"a","n":2}"#));
        assert_ne!(v1, v2);
        assert_eq!(
            v1,
            row_id("p", "v", br#"{"k":"a"}"#, Some(br#"{"k":"a","n":1}"#))
        );
        // a message id follows its rows, in order
        let m = message_id([a.as_str(), v1.as_str()]);
        assert_eq!(m, message_id([a.as_str(), v1.as_str()]));
        assert_ne!(m, message_id([v1.as_str(), a.as_str()]));
        assert_ne!(m, message_id([a.as_str()]));
        assert!(m.starts_with("msg_"));
    }

    #[test]
    fn requests_are_cut_by_rows_and_by_bytes() {
        let sizes = vec![10; 25];
        let by_rows = cut(&sizes, 10, 1 << 20);
        assert_eq!(by_rows, vec![0..10, 10..20, 20..25]);
        // 2 brackets + 11 bytes a row: 4 rows fit in 50 bytes
        let by_bytes = cut(&sizes, 100, 50);
        assert!(by_bytes.iter().all(|r| r.len() == 4 || r.end == 25));
        assert_eq!(by_bytes.iter().map(|r| r.len()).sum::<usize>(), 25);
        // one row a request
        assert_eq!(cut(&sizes[..3], 1, 1 << 20), vec![0..1, 1..2, 2..3]);
        // a row larger than the limit goes alone
        assert_eq!(cut(&[5, 500, 5], 10, 100), vec![0..1, 1..2, 2..3]);
        assert!(cut(&[], 10, 100).is_empty());
    }

    #[test]
    fn bodies_are_json_rows_or_cloudevents() {
        let mut a = Vec::new();
        row_object(&mut a, "row_1", br#"{"k":"a","n":1}"#);
        let mut b = Vec::new();
        row_object(&mut b, "row_2", br#"{"k":"b","n":2}"#);
        let rows = [("row_1", a.as_slice()), ("row_2", b.as_slice())];
        let ev = weir_formats::cloudevents::EventSource {
            pipeline: "p",
            output: "w",
            kind: "window",
        }
        .attributes();
        let (json, ctype) = body(BodyMode::Json, Batching::Array, &ev, &rows);
        assert_eq!(ctype, "application/json");
        let v: Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v[0]["_row_id"], "row_1");
        assert_eq!(v[1]["n"], 2);
        let (one, _) = body(BodyMode::Json, Batching::Single, &ev, &rows[..1]);
        assert_eq!(serde_json::from_slice::<Value>(&one).unwrap()["k"], "a");
        let (ce, ctype) = body(BodyMode::CloudEventsStructured, Batching::Array, &ev, &rows);
        assert_eq!(ctype, "application/cloudevents-batch+json");
        let v: Value = serde_json::from_slice(&ce).unwrap();
        assert_eq!(v[1]["specversion"], "1.0");
        assert_eq!(v[1]["id"], "row_2");
        assert_eq!(v[1]["source"], "weir/p/w");
        assert_eq!(v[1]["type"], "dev.weir.window.result");
        assert_eq!(v[1]["data"]["k"], "b");
        let (ce1, ctype) = body(
            BodyMode::CloudEventsStructured,
            Batching::Single,
            &ev,
            &rows[..1],
        );
        assert_eq!(ctype, "application/cloudevents+json");
        assert_eq!(
            serde_json::from_slice::<Value>(&ce1).unwrap()["data"]["n"],
            1
        );
        let (bin, ctype) = body(BodyMode::CloudEventsBinary, Batching::Array, &ev, &rows);
        assert_eq!((bin, ctype), (json, "application/json"));
    }

    #[test]
    fn url_templates_fill_in_names_and_key_values() {
        let t =
            UrlTemplate::parse("http://h:9000/hooks/{pipeline}/{output}?ds={datasetName}").unwrap();
        assert_eq!(t.columns(), ["datasetName"]);
        let url = t.render("p", "per_ds", |c| {
            assert_eq!(c, "datasetName");
            Some("a b/é".to_string())
        });
        assert_eq!(
            url.unwrap(),
            "http://h:9000/hooks/p/per_ds?ds=a%20b%2F%C3%A9"
        );
        for bad in [
            "ftp://h/x",
            "http://h/{output",
            "http://h/{}",
            "http://{output}/x",
            "{output}",
        ] {
            assert!(UrlTemplate::parse(bad).is_err(), "{bad}");
        }
        // a null key: no URL, an error naming the column
        let e = t.render("p", "per_ds", |_| None).unwrap_err();
        assert_eq!(e, UrlError::NullKey("datasetName".into()));
        assert!(e.to_string().contains("`datasetName` is null"), "{e}");
    }

    #[test]
    fn a_key_value_cannot_change_the_host() {
        // the authority must be complete (ended by `/`, `?` or `#`) before a placeholder
        for bad in [
            "https://hooks.example.com{tenant}/x",
            "https://api{k}.example.com/",
            "https://hooks.example.com:{port}/x",
            "https://user{k}@hooks.example.com/x",
            "https://hooks.example.com{k}",
            "https://{k}",
        ] {
            let e = UrlTemplate::parse(bad).unwrap_err();
            assert!(matches!(e, UrlError::HostNotWritten(_)), "{bad}: {e}");
            assert!(
                e.to_string().contains("the host must be written out"),
                "{e}"
            );
        }
        for good in [
            "https://hooks.example.com/{tenant}/x",
            "https://hooks.example.com?t={tenant}",
            "https://hooks.example.com#{tenant}",
            "http://127.0.0.1:9000/{output}/{k}",
            "https://[::1]:8443/{k}",
        ] {
            let t = UrlTemplate::parse(good).unwrap();
            for evil in [".evil.net", "@evil.net", "x@evil.net:80/", "../../x", ":1"] {
                let url = t.render("p", "o", |_| Some(evil.to_string())).unwrap();
                let parsed = reqwest::Url::parse(&url).unwrap();
                let base = reqwest::Url::parse(good.split('{').next().unwrap()).unwrap();
                assert_eq!(parsed.host_str(), base.host_str(), "{good} {evil}: {url}");
                assert_eq!(parsed.port_or_known_default(), base.port_or_known_default());
            }
        }
        // every rendered URL is checked against the template's scheme, host and port
        let t = UrlTemplate::parse("https://hooks.example.com/x").unwrap();
        assert!(t.check("https://hooks.example.com/y?a=b").is_ok());
        assert!(t.check("https://hooks.example.com:443/y").is_ok());
        for other in [
            "https://hooks.example.com.evil.net/x",
            "https://evil.net/x",
            "http://hooks.example.com/x",
            "https://hooks.example.com:8443/x",
            "https://u:secret@evil.net/x?token=abc",
            "not a url",
        ] {
            let e = t.check(other).unwrap_err();
            assert!(matches!(e, UrlError::OtherOrigin { .. }), "{other}: {e}");
            // neither a password nor a query in the message
            assert!(
                !e.to_string().contains("secret") && !e.to_string().contains("abc"),
                "{e}"
            );
        }
        // the log form of a URL: no user, password, query or fragment
        assert_eq!(
            public_url("https://u:pw@h.example.com:8443/a/b?token=t#f"),
            "https://h.example.com:8443/a/b"
        );
    }

    #[test]
    fn dot_segments_of_the_path_are_found_however_the_values_made_them() {
        assert_eq!(dot_segment("https://h/t/../e").as_deref(), Some(".."));
        assert_eq!(
            dot_segment("https://h/t/%2E%2e/e").as_deref(),
            Some("%2E%2e")
        );
        // two values each `.`, side by side
        assert_eq!(dot_segment("https://h/files/../x").as_deref(), Some(".."));
        assert_eq!(dot_segment("https://h/files/.").as_deref(), Some("."));
        // in a larger segment, or in the query: harmless
        assert_eq!(dot_segment("https://h/items/..json?id=.."), None);
        assert_eq!(dot_segment("https://h/items/a.b?x=./..#.."), None);
        assert_eq!(dot_segment("https://h"), None);
    }
}
