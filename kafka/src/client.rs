//! Client settings, topics and metadata.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

/// A delivery failure that sending again cannot mend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lasting {
    /// The principal may not write the topic or the cluster (an ACL).
    Denied,
}

fn lasting_hint(lasting: Option<Lasting>) -> &'static str {
    match lasting {
        Some(Lasting::Denied) => {
            " (the broker denies the write: grant the principal WRITE on the topic, and \
             IDEMPOTENT_WRITE on the cluster)"
        }
        None => "",
    }
}

/// A Kafka client error, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The brokers could not be reached or refused a request.
    #[error("kafka ({brokers}): {what}: {source}")]
    Client {
        brokers: String,
        what: String,
        #[source]
        source: Box<rdkafka::error::KafkaError>,
    },
    /// The principal may not describe (so neither read nor write) a topic.
    #[error("kafka ({brokers}): not authorized to access topic `{topic}`: grant the principal DESCRIBE and READ (a source) or WRITE (a sink) on it")]
    Denied { brokers: String, topic: String },
    /// A topic the pipeline reads does not exist.
    #[error("kafka ({brokers}): topic `{topic}` does not exist; create it (or check `brokers`)")]
    NoSuchTopic { brokers: String, topic: String },
    /// A message could not be delivered, after librdkafka's retries.
    #[error("kafka ({brokers}): delivery to `{topic}` failed after retries: {message}{}", lasting_hint(*.lasting))]
    Delivery {
        brokers: String,
        topic: String,
        message: String,
        /// The broker refuses it whatever the retries (see [`Lasting`]); `None` for an
        /// outage or a timeout.
        lasting: Option<Lasting>,
    },
    /// A transaction call failed; `fatal` when the producer can no longer be used (fenced by
    /// a newer instance with the same transactional id); `unsupported` when the broker has no
    /// transactions (an older or partial implementation of the protocol).
    #[error("kafka ({brokers}): {what}: {message}")]
    Transaction {
        brokers: String,
        what: String,
        message: String,
        fatal: bool,
        unsupported: bool,
    },
    /// A broker's answer lacked some of the partitions asked for (an error, no offset, or
    /// none in time): asking again may succeed.
    #[error("kafka ({brokers}): {what}: no answer for {}", named_partitions(.partitions))]
    Partial {
        brokers: String,
        what: String,
        /// Per topic, the partitions without an answer.
        partitions: Vec<(String, Vec<i32>)>,
    },
    /// The broker (or the client's own limits) refuses this message for good: sending it
    /// again cannot succeed.
    #[error("kafka ({brokers}): `{topic}` refuses the message: {message}")]
    Refused {
        brokers: String,
        topic: String,
        /// A stable code (`message_too_large`, `invalid_record`).
        code: &'static str,
        message: String,
    },
}

/// `partitions [0, 2] of `a`, [1] of `b``.
fn named_partitions(partitions: &[(String, Vec<i32>)]) -> String {
    let named: Vec<String> = partitions
        .iter()
        .map(|(topic, p)| format!("{p:?} of `{topic}`"))
        .collect();
    format!("partitions {}", named.join(", "))
}

/// Settings for a client of `brokers`: weir's defaults, then `properties` as given (they win).
pub fn client_config(brokers: &str, properties: &[(String, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", "weir")
        .set("socket.keepalive.enable", "true")
        .set("log_level", "4");
    for (k, v) in properties {
        c.set(k, v);
    }
    c
}

/// Creates a topic with `partitions` partitions (replication as the broker's default); an
/// existing topic is left as it is.
pub fn create_topic(
    brokers: &str,
    properties: &[(String, String)],
    topic: &str,
    partitions: i32,
) -> Result<(), KafkaError> {
    let err = |what: &str, source| KafkaError::Client {
        brokers: brokers.to_string(),
        what: what.to_string(),
        source: Box::new(source),
    };
    let admin: AdminClient<DefaultClientContext> = client_config(brokers, properties)
        .create()
        .map_err(|e| err("cannot create an admin client", e))?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = futures_executor::block_on(admin.create_topics([&new], &opts))
        .map_err(|e| err(&format!("cannot create topic `{topic}`"), e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(err(
                    &format!("cannot create topic `{name}`"),
                    rdkafka::error::KafkaError::AdminOp(code),
                ))
            }
        }
    }
    Ok(())
}

/// The partition count of each topic, in order. Fails when one does not exist.
pub fn partition_counts(
    brokers: &str,
    properties: &[(String, String)],
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<usize>, KafkaError> {
    let err = |what: String, source| KafkaError::Client {
        brokers: brokers.to_string(),
        what,
        source: Box::new(source),
    };
    let consumer: BaseConsumer = client_config(brokers, properties)
        .create()
        .map_err(|e| err("cannot create a client".into(), e))?;
    let mut counts = Vec::new();
    for topic in topics {
        let md = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| err(format!("cannot read the metadata of topic `{topic}`"), e))?;
        let t = md.topics().iter().find(|t| t.name() == topic);
        match t {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                counts.push(t.partitions().len())
            }
            // the topic may exist: the principal may not see it (an ACL), which creating it
            // would not mend
            Some(t)
                if t.error().is_some_and(|e| {
                    matches!(
                        RDKafkaErrorCode::from(e),
                        RDKafkaErrorCode::TopicAuthorizationFailed
                    )
                }) =>
            {
                return Err(KafkaError::Denied {
                    brokers: brokers.to_string(),
                    topic: topic.clone(),
                })
            }
            _ => {
                return Err(KafkaError::NoSuchTopic {
                    brokers: brokers.to_string(),
                    topic: topic.clone(),
                })
            }
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_answer_names_every_topic_s_partitions_without_one() {
        let e = KafkaError::Partial {
            brokers: "b:9092".into(),
            what: "cannot read".into(),
            partitions: vec![("a".into(), vec![0, 2]), ("b".into(), vec![1])],
        };
        assert_eq!(
            e.to_string(),
            "kafka (b:9092): cannot read: no answer for partitions [0, 2] of `a`, [1] of `b`"
        );
    }
}
