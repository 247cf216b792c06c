//! Planning of the NATS sink and dead-letter output: `nats: { url, subject, ... }` checked
//! and turned into [`NatsSinkConfig`] / [`DeadLetterNatsConfig`]. The plan's match arms call
//! these functions and nothing else.

use std::path::Path;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use schemars::JsonSchema;
use serde::Deserialize;
use weir_nats::sink::{DEFAULT_ACK_TIMEOUT, DEFAULT_MAX_IN_FLIGHT};
use weir_nats::{DeadLetterNatsConfig, NatsFormat, NatsSinkConfig};

use super::doc::{NatsCredentialsDoc, NatsTlsDoc};
use super::NatsConfigError;
use crate::model::{self, Format, OneOrMany};

/// Most publishes `max_in_flight` may allow.
const MAX_IN_FLIGHT_LIMIT: u64 = 65_536;

/// `nats:` of a sink or of `dead_letter`: JetStream publish to one subject.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkDoc {
    /// Server URL(s): `nats://host:4222`, `tls://host:4222`, one or a list.
    #[schemars(with = "OneOrMany<String>")]
    pub url: OneOrMany<String>,
    /// The subject published to (no wildcards); a JetStream stream must capture it.
    pub subject: String,
    /// How to authenticate (one of user/password, token, creds_file, nkey_seed).
    #[serde(default)]
    pub credentials: Option<NatsCredentialsDoc>,
    /// TLS settings.
    #[serde(default)]
    pub tls: Option<NatsTlsDoc>,
    /// Publishes awaiting their acknowledgement at once (default 256).
    #[serde(default)]
    pub max_in_flight: Option<u64>,
    /// Wait for one acknowledgement before the message is sent again (default 10s).
    #[serde(default)]
    pub ack_timeout: Option<model::Duration>,
    /// Bound on the first connection (default 10s).
    #[serde(default)]
    pub connect_timeout: Option<model::Duration>,
}

/// Checks a subject a sink publishes to: tokens separated by `.`, none empty, no wildcard
/// and no white space.
pub(crate) fn check_subject(subject: &str) -> Result<(), NatsConfigError> {
    if subject.is_empty() {
        return Err(NatsConfigError::EmptySubject);
    }
    if subject.chars().any(char::is_whitespace) {
        return Err(NatsConfigError::SubjectSpace(subject.to_string()));
    }
    for token in subject.split('.') {
        if token.is_empty() {
            return Err(NatsConfigError::SubjectEmptyToken(subject.to_string()));
        }
        if token == "*" || token == ">" {
            return Err(NatsConfigError::SubjectWildcard(subject.to_string()));
        }
    }
    Ok(())
}

/// The settings shared by the sink and the dead-letter output.
fn common(
    d: &NatsSinkDoc,
    dir: &Path,
    name: String,
) -> Result<(weir_nats::NatsEndpoint, usize, Duration), NatsConfigError> {
    check_subject(&d.subject)?;
    let mut endpoint = super::endpoint(&d.url, d.credentials.as_ref(), d.tls.as_ref(), dir, name)?;
    if let Some(t) = d.connect_timeout {
        if t.0 == 0 {
            return Err(NatsConfigError::ConnectTimeout);
        }
        endpoint.connect_timeout = Duration::from_millis(t.0);
    }
    let max_in_flight = d.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT as u64);
    if max_in_flight == 0 || max_in_flight > MAX_IN_FLIGHT_LIMIT {
        return Err(NatsConfigError::MaxInFlight {
            max: MAX_IN_FLIGHT_LIMIT,
        });
    }
    let ack_timeout = match d.ack_timeout {
        Some(t) if t.0 == 0 => return Err(NatsConfigError::AckTimeout),
        Some(t) => Duration::from_millis(t.0),
        None => DEFAULT_ACK_TIMEOUT,
    };
    Ok((endpoint, max_in_flight as usize, ack_timeout))
}

/// A `nats` sink's settings (its output is set when a window or view names it).
pub(crate) fn sink_config(
    pipeline: &str,
    sink: &str,
    d: &NatsSinkDoc,
    format: Option<Format>,
    dir: &Path,
) -> Result<NatsSinkConfig, NatsConfigError> {
    let format = match format {
        None | Some(Format::Json) => NatsFormat::Json,
        Some(Format::Avro) => NatsFormat::Avro,
        Some(Format::Cloudevents) => return Err(NatsConfigError::SinkFormat),
    };
    let (endpoint, max_in_flight, ack_timeout) = common(d, dir, format!("weir-{pipeline}-{sink}"))?;
    Ok(NatsSinkConfig {
        endpoint,
        subject: d.subject.clone(),
        format,
        max_in_flight,
        ack_timeout,
        pipeline: pipeline.to_string(),
        output: String::new(),
        view_keys: None,
        id_salt: String::new(),
    })
}

/// `dead_letter: { nats: ... }`'s settings.
pub(crate) fn dead_letter_config(
    pipeline: &str,
    d: &NatsSinkDoc,
    dir: &Path,
) -> Result<DeadLetterNatsConfig, NatsConfigError> {
    let (endpoint, max_in_flight, ack_timeout) =
        common(d, dir, format!("weir-{pipeline}-dead-letter"))?;
    Ok(DeadLetterNatsConfig {
        endpoint,
        subject: d.subject.clone(),
        max_in_flight,
        ack_timeout,
    })
}

/// A `nats` sink named by output `output` of rows `schema`: one output a sink (its message
/// ids are the output's).
pub(crate) fn attach(
    c: &mut NatsSinkConfig,
    sink: &str,
    schema: &SchemaRef,
    output: &str,
) -> Result<(), NatsConfigError> {
    if !c.output.is_empty() {
        return Err(NatsConfigError::SecondOutput {
            sink: sink.to_string(),
            output: c.output.clone(),
        });
    }
    c.view_keys = schema
        .metadata()
        .get(weir_engine::KEYS_METADATA)
        .and_then(|k| k.parse().ok());
    if c.view_keys.is_none() && schema.index_of("window_start").is_err() {
        return Err(NatsConfigError::NoWindowStart {
            sink: sink.to_string(),
            output: output.to_string(),
        });
    }
    c.output = output.to_string();
    Ok(())
}

/// The sink a replay writes to: the same subject, its message ids salted with the replay's
/// range, so that rewritten windows are new messages rather than repeats the stream drops.
pub(crate) fn replayed(c: &NatsSinkConfig, suffix: &str) -> NatsSinkConfig {
    NatsSinkConfig {
        id_salt: suffix.to_string(),
        ..c.clone()
    }
}

/// Secret values of a `nats:` block: passwords, tokens, seeds, URL passwords.
pub(crate) fn secrets(d: &NatsSinkDoc) -> Vec<String> {
    super::secrets(&d.url, d.credentials.as_ref())
}

/// What `weir validate` says of a NATS sink.
pub(crate) fn describe(c: &NatsSinkConfig, checkpointed: bool) -> String {
    format!(
        "nats subject {} ({}), {:?}, up to {} publishes awaiting acknowledgement; Nats-Msg-Id from pipeline, output and key{}; {}",
        c.subject,
        c.endpoint.describe_servers(),
        c.format,
        c.max_in_flight,
        if c.view_keys.is_some() { " + epoch + row (views: newest row per key and epoch)" } else { " + window_start" },
        if checkpointed {
            "every message acknowledged before its checkpoint completes; repeats after a restore dropped within the stream's duplicate window"
        } else {
            "messages acknowledged before offsets are committed (at least once)"
        }
    )
    .replace("Json", "json")
    .replace("Avro", "avro")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_checked() {
        assert!(check_subject("analytics.ingestion_5m").is_ok());
        assert!(check_subject("").is_err());
        let why = |s: &str| check_subject(s).unwrap_err().to_string();
        assert!(why("a..b").contains("empty token"));
        assert!(why("a.*").contains("wildcard"));
        assert!(why("a.>").contains("wildcard"));
        assert!(why("a b").contains("white space"));
        assert_eq!(
            check_subject("a b").unwrap_err().kind(),
            weir_engine::ErrorKind::User
        );
    }

    fn doc(extra: &str) -> NatsSinkDoc {
        serde_saphyr::from_str(&format!(
            "{{ url: \"nats://127.0.0.1:4222\", subject: out.rows{extra} }}"
        ))
        .unwrap()
    }

    #[test]
    fn limits_have_defaults_and_bounds() {
        let c = sink_config("p", "s", &doc(""), None, Path::new(".")).unwrap();
        assert_eq!(c.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
        assert_eq!(c.ack_timeout, DEFAULT_ACK_TIMEOUT);
        assert_eq!(c.endpoint.name, "weir-p-s");
        let e = sink_config("p", "s", &doc(", max_in_flight: 0"), None, Path::new("."));
        assert!(e.unwrap_err().to_string().contains("max_in_flight"));
        let e = sink_config(
            "p",
            "s",
            &doc(""),
            Some(Format::Cloudevents),
            Path::new("."),
        );
        assert!(e.unwrap_err().to_string().contains("json"));
        let c = sink_config(
            "p",
            "s",
            &doc(", ack_timeout: 2s"),
            Some(Format::Avro),
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.ack_timeout, Duration::from_secs(2));
        assert_eq!(c.format, NatsFormat::Avro);
    }

    #[test]
    fn one_output_a_sink() {
        let mut c = sink_config("p", "s", &doc(""), None, Path::new(".")).unwrap();
        let schema: SchemaRef = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("k", arrow::datatypes::DataType::Utf8, true),
            arrow::datatypes::Field::new("window_start", arrow::datatypes::DataType::Int64, false),
        ]));
        attach(&mut c, "s", &schema, "w1").unwrap();
        assert!(attach(&mut c, "s", &schema, "w2")
            .unwrap_err()
            .to_string()
            .contains("one window or view"));
        let r = replayed(&c, "replay-x");
        assert_eq!(
            (r.id_salt.as_str(), r.subject.as_str()),
            ("replay-x", "out.rows")
        );
    }
}
