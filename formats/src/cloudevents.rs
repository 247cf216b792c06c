//! Rows as CloudEvents 1.0 (the JSON event format). In structured mode an event is a JSON
//! object whose `data` is the row's JSON object ([`write_event`]), several go in an array
//! ([`write_batch`]); in binary mode the rows are the body as they are and an event's
//! attributes travel beside it ([`binary_headers`], the HTTP binding's `ce-*` headers).
//!
//! Events of weir's outputs say where their rows come from: `source` is
//! `weir/<pipeline>/<output>`, `type` `dev.weir.window.result` or `dev.weir.view.change`,
//! `subject` the output's name, `id` the row's (or request's) deterministic id.

use crate::json_rows::json_string;

/// The CloudEvents version written.
pub const SPEC_VERSION: &str = "1.0";

/// The content type of one structured event.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// The content type of an array of structured events.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// The content type of an event's `data`: a row as a JSON object.
pub const DATA_CONTENT_TYPE: &str = "application/json";

/// What a CloudEvent says of where rows come from.
pub struct EventSource<'a> {
    /// The pipeline's name.
    pub pipeline: &'a str,
    /// The window or view the rows come from.
    pub output: &'a str,
    /// `window` or `view`.
    pub kind: &'a str,
}

impl<'a> EventSource<'a> {
    /// The event `source`: `weir/<pipeline>/<output>`.
    pub fn source(&self) -> String {
        format!("weir/{}/{}", self.pipeline, self.output)
    }

    /// The event `type`: `dev.weir.window.result` or `dev.weir.view.change`.
    pub fn event_type(&self) -> &'static str {
        if self.kind == "view" {
            "dev.weir.view.change"
        } else {
            "dev.weir.window.result"
        }
    }

    /// The attributes its events share, made once for all of them.
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            source: self.source(),
            event_type: self.event_type(),
            subject: self.output,
        }
    }
}

/// The attributes shared by the events of one request (all but `id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes<'a> {
    /// `source`.
    pub source: String,
    /// `type`.
    pub event_type: &'static str,
    /// `subject`.
    pub subject: &'a str,
}

/// Appends one structured event, `{"specversion":"1.0","id":…,"source":…,"type":…,
/// "subject":…,"datacontenttype":"application/json","data":<data>}`; `data` is a JSON value
/// (a row object), written as it is.
pub fn write_event(out: &mut Vec<u8>, attrs: &Attributes<'_>, id: &str, data: &[u8]) {
    out.extend_from_slice(b"{\"specversion\":\"");
    out.extend_from_slice(SPEC_VERSION.as_bytes());
    out.extend_from_slice(b"\",\"id\":");
    json_string(out, id);
    out.extend_from_slice(b",\"source\":");
    json_string(out, &attrs.source);
    out.extend_from_slice(b",\"type\":");
    json_string(out, attrs.event_type);
    out.extend_from_slice(b",\"subject\":");
    json_string(out, attrs.subject);
    out.extend_from_slice(b",\"datacontenttype\":\"");
    out.extend_from_slice(DATA_CONTENT_TYPE.as_bytes());
    out.extend_from_slice(b"\",\"data\":");
    out.extend_from_slice(data);
    out.push(b'}');
}

/// Appends a JSON array of structured events, one per `(id, data)` (see [`write_event`]).
pub fn write_batch<'r>(
    out: &mut Vec<u8>,
    attrs: &Attributes<'_>,
    events: impl IntoIterator<Item = (&'r str, &'r [u8])>,
) {
    out.push(b'[');
    for (i, (id, data)) in events.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_event(out, attrs, id, data);
    }
    out.push(b']');
}

/// An event's attributes in binary mode, as HTTP headers (name, value), in this order:
/// `ce-specversion`, `ce-id`, `ce-source`, `ce-type`, `ce-subject`.
pub fn binary_headers<'s>(attrs: &'s Attributes<'_>, id: &'s str) -> [(&'static str, &'s str); 5] {
    [
        ("ce-specversion", SPEC_VERSION),
        ("ce-id", id),
        ("ce-source", &attrs.source),
        ("ce-type", attrs.event_type),
        ("ce-subject", attrs.subject),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(kind: &str) -> Attributes<'_> {
        EventSource {
            pipeline: "p",
            output: "w",
            kind,
        }
        .attributes()
    }

    #[test]
    fn a_structured_event_carries_its_row_as_data() {
        let mut out = Vec::new();
        write_event(&mut out, &attrs("window"), "row_1", br#"{"k":"a","n":1}"#);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"specversion":"1.0","id":"row_1","source":"weir/p/w","type":"dev.weir.window.result","subject":"w","datacontenttype":"application/json","data":{"k":"a","n":1}}"#
        );
    }

    #[test]
    fn a_batch_is_an_array_of_events() {
        let a = attrs("view");
        assert_eq!(a.event_type, "dev.weir.view.change");
        let mut out = Vec::new();
        write_batch(
            &mut out,
            &a,
            [("r1", &b"{}"[..]), ("r\"2", &b"{\"x\":1}"[..])],
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v[0]["id"], "r1");
        assert_eq!(v[1]["id"], "r\"2");
        assert_eq!(v[1]["data"]["x"], 1);
        assert_eq!(v[1]["type"], "dev.weir.view.change");
        let mut empty = Vec::new();
        write_batch(&mut empty, &a, []);
        assert_eq!(empty, b"[]");
    }

    #[test]
    fn binary_mode_puts_the_attributes_in_headers() {
        let a = attrs("window");
        assert_eq!(
            binary_headers(&a, "msg_1"),
            [
                ("ce-specversion", "1.0"),
                ("ce-id", "msg_1"),
                ("ce-source", "weir/p/w"),
                ("ce-type", "dev.weir.window.result"),
                ("ce-subject", "w"),
            ]
        );
    }
}
