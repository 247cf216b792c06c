//! A producer that never drops a message silently.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError as RdError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use rdkafka::Message;
use rdkafka::TopicPartitionList;

use crate::client::{client_config, KafkaError, Lasting};

/// A message the broker refused for good, with its error.
#[derive(Debug, Clone)]
pub struct RefusedMessage {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// A stable code (`message_too_large`, `invalid_record`).
    pub code: &'static str,
    pub message: String,
}

/// The code of an error that refuses a message for good (sending it again cannot succeed).
fn refusal(e: &RdError) -> Option<&'static str> {
    use RDKafkaErrorCode as C;
    match e.rdkafka_error_code()? {
        C::MessageSizeTooLarge => Some("message_too_large"),
        C::InvalidRecord => Some("invalid_record"),
        C::InvalidMessage | C::InvalidMessageSize => Some("invalid_message"),
        _ => None,
    }
}

/// Whether a failed delivery fails again whatever the retries, and why (by its code).
fn lasting(e: &RdError) -> Option<Lasting> {
    lasting_code(e.rdkafka_error_code()?)
}

/// Whether an error of `code` fails again whatever the retries.
fn lasting_code(code: RDKafkaErrorCode) -> Option<Lasting> {
    use RDKafkaErrorCode as C;
    match code {
        C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed => Some(Lasting::Denied),
        // (not an unknown topic: librdkafka reports one for a while after a topic is made,
        // or while brokers restart; nor any other fatal producer error, which the new
        // producer a retry makes mends)
        _ => None,
    }
}

/// A failed delivery: the topic, the error's text and whether retries cannot mend it.
type FailedDelivery = (String, String, Option<Lasting>);

/// Records the first failed delivery (after librdkafka's own retries), and the messages
/// refused for good.
#[derive(Default, Clone)]
struct Deliveries {
    first_error: Arc<Mutex<Option<FailedDelivery>>>,
    refused: Arc<Mutex<Vec<RefusedMessage>>>,
    /// Messages whose delivery ended (acknowledged or failed).
    settled: Arc<AtomicU64>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        self.settled.fetch_add(1, Ordering::Relaxed);
        let Err((e, msg)) = result else {
            return;
        };
        if let Some(code) = refusal(e) {
            if let Ok(mut refused) = self.refused.lock() {
                refused.push(RefusedMessage {
                    topic: msg.topic().to_string(),
                    key: msg.key().map(<[u8]>::to_vec),
                    payload: msg.payload().unwrap_or_default().to_vec(),
                    code,
                    message: e.to_string(),
                });
            }
            return;
        }
        tracing::error!(topic = msg.topic(), error = %e, "kafka delivery failed");
        if let Ok(mut first) = self.first_error.lock() {
            if first.is_none() {
                *first = Some((msg.topic().to_string(), e.to_string(), lasting(e)));
            }
        }
    }
}

/// An idempotent, lz4-compressing, batching producer. Sends wait (polling) while librdkafka's
/// queue is full; [`Producer::flush`] waits for every acknowledgement and fails with the first
/// delivery error.
pub struct Producer {
    brokers: String,
    inner: BaseProducer<Deliveries>,
    deliveries: Deliveries,
    /// How long a flush may wait for acknowledgements.
    flush_timeout: Duration,
}

impl Producer {
    /// A producer for `brokers`. `properties` are passed to librdkafka after weir's defaults
    /// (`enable.idempotence=true`, `compression.type=lz4`, `linger.ms=20`, the Java client's
    /// `murmur2` partitioner).
    pub fn new(brokers: &str, properties: &[(String, String)]) -> Result<Self, KafkaError> {
        let mut config = client_config(brokers, &[]);
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            // as the Java client: a key (even an empty one) always goes to the same partition
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "20")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.kbytes", "65536")
            .set("message.timeout.ms", "120000")
            .set("retry.backoff.ms", "100")
            .set("retry.backoff.max.ms", "2000");
        for (k, v) in properties {
            config.set(k, v);
        }
        let deliveries = Deliveries::default();
        let inner = config
            .create_with_context(deliveries.clone())
            .map_err(|source| KafkaError::Client {
                brokers: brokers.to_string(),
                what: "cannot create a producer".into(),
                source: Box::new(source),
            })?;
        Ok(Producer {
            brokers: brokers.to_string(),
            inner,
            deliveries,
            flush_timeout: Duration::from_secs(180),
        })
    }

    /// Messages whose delivery ended (acknowledged, or failed after retries) so far; their
    /// delivery reports run while the producer is polled (sends and flushes poll it).
    pub fn settled(&self) -> u64 {
        self.deliveries.settled.load(Ordering::Relaxed)
    }

    /// Queues a message (partition chosen by the key's hash, as Kafka clients do); no
    /// payload is a tombstone (a compacted topic then forgets the key).
    pub fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &[(&str, &[u8])],
    ) -> Result<(), KafkaError> {
        self.send_at(topic, key, payload, headers, None)
    }

    /// [`Self::send`] with the message's timestamp (epoch ms) set, rather than the send time.
    pub fn send_at(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &[(&str, &[u8])],
        timestamp: Option<i64>,
    ) -> Result<(), KafkaError> {
        self.check()?;
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
        if let Some(t) = timestamp {
            record = record.timestamp(t);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(k) = key {
            record = record.key(k);
        }
        if !headers.is_empty() {
            let mut h = OwnedHeaders::new_with_capacity(headers.len());
            for (name, value) in headers {
                h = h.insert(Header {
                    key: name,
                    value: Some(*value),
                });
            }
            record = record.headers(h);
        }
        let started = Instant::now();
        loop {
            match self.inner.send(record) {
                Ok(()) => {
                    self.inner.poll(Duration::ZERO);
                    return Ok(());
                }
                Err((RdError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // librdkafka's queue is full: wait for acknowledgements (backpressure).
                    record = r;
                    self.inner.poll(Duration::from_millis(10));
                    self.check()?;
                    if started.elapsed() > self.flush_timeout {
                        return Err(self.delivery_error(topic, "the send queue stayed full"));
                    }
                }
                Err((e, _)) => {
                    return Err(match refusal(&e) {
                        Some(code) => KafkaError::Refused {
                            brokers: self.brokers.clone(),
                            topic: topic.to_string(),
                            code,
                            message: e.to_string(),
                        },
                        None => self.failed_delivery(topic, &e.to_string(), lasting(&e)),
                    })
                }
            }
        }
    }

    /// Registers the producer's `transactional.id` with the brokers: a previous instance with
    /// the same id is fenced, and a transaction it left open is aborted.
    pub fn init_transactions(&self) -> Result<(), KafkaError> {
        self.inner
            .init_transactions(TXN_TIMEOUT)
            .map_err(|e| self.txn_error("initialising transactions", e))
    }

    /// Starts a transaction: what is sent until [`Producer::commit_transaction`] becomes
    /// visible to `read_committed` readers at once, or never.
    pub fn begin_transaction(&self) -> Result<(), KafkaError> {
        self.inner
            .begin_transaction()
            .map_err(|e| self.txn_error("beginning a transaction", e))
    }

    /// Commits the open transaction, with `marker` in it: offset `epoch` of partition 0 of
    /// `topic` for consumer group `group` (read back by [`committed_marker`]), so that whether
    /// the transaction committed can be known after a crash.
    pub fn commit_transaction(&self, marker: &TxnMarker, epoch: u64) -> Result<(), KafkaError> {
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(&marker.topic, 0, rdkafka::Offset::Offset(epoch as i64))
            .map_err(|e| self.txn_error("marking the transaction", e))?;
        self.inner
            .send_offsets_to_transaction(&offsets, &marker.metadata, TXN_TIMEOUT)
            .map_err(|e| self.txn_error("marking the transaction", e))?;
        self.inner
            .commit_transaction(TXN_TIMEOUT)
            .map_err(|e| self.txn_error("committing the transaction", e))
    }

    /// Aborts the open transaction: nothing sent in it becomes visible.
    pub fn abort_transaction(&self) -> Result<(), KafkaError> {
        // the abort waits for the messages in flight, whose reports only polling serves
        let _ = self.drain();
        self.inner
            .abort_transaction(TXN_TIMEOUT)
            .map_err(|e| self.txn_error("aborting the transaction", e))
    }

    fn txn_error(&self, what: &str, e: RdError) -> KafkaError {
        let (fatal, unsupported) = match &e {
            RdError::Transaction(t) => (
                t.is_fatal(),
                matches!(
                    t.code(),
                    RDKafkaErrorCode::UnsupportedFeature | RDKafkaErrorCode::UnsupportedVersion
                ),
            ),
            _ => (false, false),
        };
        KafkaError::Transaction {
            brokers: self.brokers.clone(),
            what: what.to_string(),
            message: e.to_string(),
            fatal,
            unsupported,
        }
    }

    /// The messages the broker refused for good since the last call (reported by delivery
    /// results, so known after [`Producer::flush`]).
    pub fn take_refused(&self) -> Vec<RefusedMessage> {
        self.deliveries
            .refused
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }

    /// Waits until every queued message is acknowledged; fails with the first delivery error.
    pub fn flush(&self) -> Result<(), KafkaError> {
        self.drain()
            .map_err(|e| self.delivery_error("*", &format!("flush: {e}")))?;
        self.check()
    }

    /// Serves delivery reports until no message is outstanding (or the flush timeout passed),
    /// and says whether librdkafka reported an error. rdkafka's own `flush` polls in 100 ms
    /// steps and its `poll` waits out its whole timeout, so a flush with a message in flight
    /// learnt of the last acknowledgement up to 100 ms late (and took at least 100 ms): every
    /// checkpoint of a Kafka sink, and every commit of source offsets behind its rows, waited
    /// that long. Here a report is served within about a millisecond of its arrival, without
    /// spinning: the thread sleeps 1 ms whenever a poll served nothing.
    fn drain(&self) -> Result<(), RdError> {
        let deadline = Instant::now() + self.flush_timeout;
        // librdkafka's flush with no wait: wakes the broker threads (it does not cut
        // `linger.ms` short: its flushing flag lasts only for the call)
        match self.inner.flush(Duration::ZERO) {
            Ok(()) => return Ok(()),
            Err(RdError::Flush(RDKafkaErrorCode::OperationTimedOut)) => {}
            Err(e) => return Err(e),
        }
        loop {
            let settled = self.settled();
            // one poll serves the reports already queued, and returns at once
            self.inner.poll(Duration::ZERO);
            // messages queued, in flight, or whose report is not served yet
            if self.inner.in_flight_count() == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(RdError::Flush(RDKafkaErrorCode::OperationTimedOut));
            }
            if self.settled() == settled {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    fn check(&self) -> Result<(), KafkaError> {
        match self.deliveries.first_error.lock() {
            Ok(first) => match &*first {
                Some((topic, message, lasting)) => {
                    Err(self.failed_delivery(topic, message, *lasting))
                }
                None => Ok(()),
            },
            Err(_) => Ok(()),
        }
    }

    fn delivery_error(&self, topic: &str, message: &str) -> KafkaError {
        self.failed_delivery(topic, message, None)
    }

    /// A failed delivery, with the producer's fatal error when it has one: a delivery
    /// failed by it reads only "purged" or "fatal", and its cause says whether a retry can
    /// mend it (an idempotent producer the cluster refuses `IDEMPOTENT_WRITE` fails the
    /// same way with every new producer).
    fn failed_delivery(&self, topic: &str, message: &str, lasting: Option<Lasting>) -> KafkaError {
        let (message, lasting) = match self.inner.client().fatal_error() {
            Some((code, reason)) => (
                format!("{message}; the producer failed for good: {reason}"),
                lasting.or(lasting_code(code)),
            ),
            None => (message.to_string(), lasting),
        };
        KafkaError::Delivery {
            brokers: self.brokers.clone(),
            topic: topic.to_string(),
            message,
            lasting,
        }
    }
}

/// How long a transaction call may take.
const TXN_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a transactional sink records the epoch of each committed transaction: the committed
/// offset of partition 0 of `topic` for the consumer group `group` (no one consumes with it),
/// committed inside the transaction itself.
pub struct TxnMarker {
    pub group: String,
    pub topic: String,
    metadata: rdkafka::consumer::ConsumerGroupMetadata,
}

impl TxnMarker {
    /// The marker of group `group` on `topic`.
    pub fn new(brokers: &str, group: &str, topic: &str) -> Result<Self, KafkaError> {
        let err = |message: String| KafkaError::Transaction {
            brokers: brokers.to_string(),
            what: format!("preparing the marker group `{group}`"),
            message,
            fatal: true,
            unsupported: false,
        };
        let consumer: BaseConsumer = client_config(brokers, &[])
            .set("group.id", group)
            .create()
            .map_err(|e| err(e.to_string()))?;
        let metadata = consumer
            .group_metadata()
            .ok_or_else(|| err("no consumer group metadata".into()))?;
        Ok(TxnMarker {
            group: group.to_string(),
            topic: topic.to_string(),
            metadata,
        })
    }
}

/// The epoch of the last transaction committed with `marker`, `None` before the first.
pub fn committed_marker(
    brokers: &str,
    properties: &[(String, String)],
    marker: &TxnMarker,
) -> Result<Option<u64>, KafkaError> {
    let err = |source| KafkaError::Client {
        brokers: brokers.to_string(),
        what: format!("reading the committed epoch of group `{}`", marker.group),
        source: Box::new(source),
    };
    let consumer: BaseConsumer = client_config(brokers, properties)
        .set("group.id", &marker.group)
        .set("isolation.level", "read_committed")
        .create()
        .map_err(err)?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&marker.topic, 0);
    let committed = consumer.committed_offsets(tpl, TXN_TIMEOUT).map_err(err)?;
    Ok(committed.elements().first().and_then(|e| match e.offset() {
        rdkafka::Offset::Offset(o) if o >= 0 => Some(o as u64),
        _ => None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    /// A mock cluster with topic `t` of `partitions` partitions, and a producer to it whose
    /// messages time out after `timeout_ms`, with `extra` settings.
    fn mock_producer(
        partitions: i32,
        timeout_ms: &str,
        extra: &[(&str, &str)],
    ) -> (
        MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        Producer,
    ) {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("t", partitions, 1).unwrap();
        let mut properties = vec![("message.timeout.ms".to_string(), timeout_ms.to_string())];
        properties.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let p = Producer::new(&mock.bootstrap_servers(), &properties).unwrap();
        (mock, p)
    }

    #[test]
    fn request_errors_are_retried_and_every_message_acknowledged() {
        let (mock, p) = mock_producer(2, "30000", &[]);
        mock.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 3],
        );
        for i in 0..100u32 {
            p.send("t", Some(&i.to_be_bytes()), Some(b"{}"), &[("h", b"v")])
                .unwrap();
        }
        p.flush().unwrap();
    }

    #[test]
    fn a_flush_returns_when_the_last_message_is_acknowledged_not_a_poll_period_later() {
        // rdkafka's own flush took at least 100 ms whenever a message was in flight (it polls
        // 100 ms at a time); the mock acknowledges at once, so with the 20 ms linger a flush
        // now takes some 20 ms. The best of five keeps a loaded machine out of the way.
        let (_mock, p) = mock_producer(1, "30000", &[]);
        p.send("t", None, Some(b"warm-up"), &[]).unwrap();
        p.flush().unwrap();
        let best = (0..5)
            .map(|i: u32| {
                p.send("t", None, Some(&i.to_be_bytes()), &[]).unwrap();
                let started = Instant::now();
                p.flush().unwrap();
                started.elapsed()
            })
            .min()
            .unwrap();
        assert!(
            best < Duration::from_millis(90),
            "the best flush took {best:?}"
        );
        assert_eq!(p.settled(), 6);
    }

    /// CPU time of the calling thread so far, in clock ticks (`/proc/thread-self/stat`).
    fn thread_cpu_ticks() -> u64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        // the fields after the command name's closing parenthesis: utime is the 12th, stime the 13th
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    #[test]
    fn a_flush_waiting_for_its_acknowledgement_does_not_spin() {
        // a 1 s linger keeps the message in the producer for a second: the flush waits that
        // long, and must sleep meanwhile (a loop of zero-timeout polls held a core at 100 %)
        let (_mock, p) = mock_producer(1, "30000", &[("linger.ms", "1000")]);
        p.send("t", None, Some(b"lingers"), &[]).unwrap();
        let (started, cpu) = (Instant::now(), thread_cpu_ticks());
        p.flush().unwrap();
        let (elapsed, cpu) = (started.elapsed(), thread_cpu_ticks() - cpu);
        assert!(
            elapsed >= Duration::from_millis(500),
            "the flush took {elapsed:?}"
        );
        // clock ticks are 10 ms: a spinning flush would count about 100 here
        assert!(
            cpu <= 25,
            "the flush used {cpu} ticks of CPU in {elapsed:?}"
        );
        assert_eq!(p.settled(), 1);
    }

    #[test]
    fn a_broker_that_stays_down_is_an_error_not_a_silent_drop() {
        let (mock, p) = mock_producer(1, "1500", &[]);
        p.send("t", None, Some(b"first"), &[]).unwrap();
        p.flush().unwrap();
        mock.broker_down(1).unwrap();
        p.send("t", None, Some(b"lost?"), &[]).unwrap();
        let e = p.flush().unwrap_err();
        assert!(matches!(e, KafkaError::Delivery { .. }), "{e}");
        // and every later send reports it too
        assert!(p.send("t", None, Some(b"next"), &[]).is_err());
    }
}
