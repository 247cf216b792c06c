//! Fetched messages taken from librdkafka a queue-full at a time.
//!
//! rdkafka's `BaseConsumer::poll` returns one message per call, and each call reads the
//! clock twice, takes the queue's lock and allocates an event handle: about a fifth of the
//! Kafka reader's time went to `clock_gettime` alone (`perf`, `benches/kafka_mock.sh`). The
//! crate has no call that takes more, so weir uses librdkafka's own, through its C API:
//!
//! - a queue of the application's ([`FetchQueue`]) that every partition's fetched messages
//!   are forwarded to, set up in the rebalance callback before each assignment (an
//!   assignment starts fetching at once, and a partition forgotten and assigned again has
//!   a new fetch queue);
//! - `rd_kafka_consume_callback_queue` waits for the first message, then takes everything
//!   the queue holds under one lock and hands it over one message at a time, doing for each
//!   what `poll` does (it drops messages of an outdated assignment, moves the partition's
//!   position past a message, never past an error). Its batch sibling
//!   `rd_kafka_consume_batch_queue` is not used: it moves the position past errors too (a
//!   message could then be skipped when a paused partition resumes;
//!   confluentinc/librdkafka#4844);
//! - rebalances, errors, statistics and offset commits stay on the consumer's queue,
//!   served by rdkafka's `poll` as before.

use std::any::Any;
use std::ffi::{c_void, CStr};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError as RdError;
use rdkafka::message::{Header, Headers, Message, Timestamp};

/// An application queue that the assigned partitions' fetched messages are forwarded to,
/// and a handle on the consumer's own queue (to know whether events wait there). Both must
/// be dropped before their consumer (librdkafka's rule for the queues an application holds).
pub(crate) struct FetchQueue {
    queue: NonNull<rd::rd_kafka_queue_t>,
    events: NonNull<rd::rd_kafka_queue_t>,
    instance: NonNull<rd::rd_kafka_t>,
}

// SAFETY: librdkafka's queues are locked internally; the handles may be used and destroyed
// from any thread (the consumer outlives them: see `KafkaReader::close`).
unsafe impl Send for FetchQueue {}
unsafe impl Sync for FetchQueue {}

/// What a message handler says after a message: go on, or leave the rest queued.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Next {
    More,
    Stop,
}

impl FetchQueue {
    /// A new queue of `consumer`'s librdkafka instance.
    pub(super) fn new<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Option<Self> {
        let instance = NonNull::new(consumer.client().native_ptr())?;
        // SAFETY: the instance is alive (borrowed); the handles are destroyed in `drop`.
        unsafe {
            let queue = NonNull::new(rd::rd_kafka_queue_new(instance.as_ptr()))?;
            let Some(events) = NonNull::new(rd::rd_kafka_queue_get_consumer(instance.as_ptr()))
            else {
                rd::rd_kafka_queue_destroy(queue.as_ptr());
                return None;
            };
            Some(FetchQueue {
                queue,
                events,
                instance,
            })
        }
    }

    /// Sends the fetched messages of `topic`'s `partition` to this queue; false if librdkafka
    /// has no such partition (its messages then stay on the consumer's queue).
    pub(super) fn forward<C: ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
        topic: &str,
        partition: i32,
    ) -> bool {
        let Ok(topic) = std::ffi::CString::new(topic) else {
            return false;
        };
        // SAFETY: the instance is alive (borrowed) and the topic a C string; the partition's
        // queue handle is destroyed here (the forward lasts: librdkafka never undoes a
        // forward the application set, and keeps this queue alive for it).
        unsafe {
            let partition_queue = rd::rd_kafka_queue_get_partition(
                consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
            );
            if partition_queue.is_null() {
                return false;
            }
            rd::rd_kafka_queue_forward(partition_queue, self.queue.as_ptr());
            rd::rd_kafka_queue_destroy(partition_queue);
        }
        true
    }

    /// Whether events (rebalances, errors, statistics, logs) wait on the consumer's queue.
    pub(super) fn events_waiting(&self) -> bool {
        // SAFETY: an owned, live handle.
        unsafe { rd::rd_kafka_queue_length(self.events.as_ptr()) > 0 }
    }

    /// Hands `each` the messages the queue holds (or the errors librdkafka put in their
    /// place), waiting at most `wait` for a first one; after [`Next::Stop`] the rest stays
    /// queued. How many were handed over. A panic of `each` is raised here, after librdkafka
    /// put the rest back.
    pub(super) fn serve<F>(&self, wait: Duration, mut each: F) -> usize
    where
        F: FnMut(Result<RawMessage<'_>, RdError>) -> Next,
    {
        let mut serving = Serving {
            each: &mut each,
            instance: self.instance,
            count: 0,
            panic: None,
        };
        let millis = wait.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `serving` outlives the call, and the trampoline is instantiated for its
        // type; librdkafka calls it on this thread only, during the call.
        unsafe {
            rd::rd_kafka_consume_callback_queue(
                self.queue.as_ptr(),
                millis,
                Some(trampoline::<F>),
                &mut serving as *mut Serving<'_, F> as *mut c_void,
            );
        }
        if let Some(panic) = serving.panic {
            resume_unwind(panic);
        }
        serving.count
    }
}

impl Drop for FetchQueue {
    fn drop(&mut self) {
        // SAFETY: the handles are owned and destroyed once; partitions still forwarded to
        // the queue keep its core alive, and their messages are then discarded.
        unsafe {
            rd::rd_kafka_queue_destroy(self.queue.as_ptr());
            rd::rd_kafka_queue_destroy(self.events.as_ptr());
        }
    }
}

/// The state of one [`FetchQueue::serve`] call, passed through librdkafka.
struct Serving<'f, F> {
    each: &'f mut F,
    instance: NonNull<rd::rd_kafka_t>,
    count: usize,
    panic: Option<Box<dyn Any + Send>>,
}

/// librdkafka's callback for each message of `rd_kafka_consume_callback_queue`. A panic must
/// not unwind into C: it is kept, and the serving stops (`rd_kafka_yield` puts the messages
/// not handed over back at the head of the queue).
unsafe extern "C" fn trampoline<F>(message: *mut rd::rd_kafka_message_t, opaque: *mut c_void)
where
    F: FnMut(Result<RawMessage<'_>, RdError>) -> Next,
{
    // SAFETY: `opaque` is the `Serving` of the `serve` call running on this thread.
    let serving = unsafe { &mut *(opaque as *mut Serving<'_, F>) };
    if serving.panic.is_some() || message.is_null() {
        // SAFETY: the live instance of the queue served.
        unsafe { rd::rd_kafka_yield(serving.instance.as_ptr()) };
        return;
    }
    serving.count += 1;
    // SAFETY: librdkafka's message, alive until this callback returns.
    let message = classify(unsafe { &*message });
    let each = &mut *serving.each;
    let next = catch_unwind(AssertUnwindSafe(|| each(message)));
    let stop = match next {
        Ok(Next::More) => false,
        Ok(Next::Stop) => true,
        Err(panic) => {
            serving.panic = Some(panic);
            true
        }
    };
    if stop {
        // SAFETY: as above.
        unsafe { rd::rd_kafka_yield(serving.instance.as_ptr()) };
    }
}

/// A message, or the error librdkafka delivered in its place (named as rdkafka's `poll`
/// names it).
fn classify(m: &rd::rd_kafka_message_t) -> Result<RawMessage<'_>, RdError> {
    match m.err {
        rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(RawMessage(m)),
        rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF => {
            Err(RdError::PartitionEOF(m.partition))
        }
        e => Err(RdError::MessageConsumption(e.into())),
    }
}

/// A fetched message handed over by [`FetchQueue::serve`] (its error field is clear).
pub(super) struct RawMessage<'b>(&'b rd::rd_kafka_message_t);

impl Message for RawMessage<'_> {
    type Headers = RawHeaders;

    fn key(&self) -> Option<&[u8]> {
        // SAFETY: librdkafka's pointer and length of the message's key (or null).
        unsafe { slice(self.0.key as *const u8, self.0.key_len) }
    }

    fn payload(&self) -> Option<&[u8]> {
        // SAFETY: as for the key.
        unsafe { slice(self.0.payload as *const u8, self.0.len) }
    }

    unsafe fn payload_mut(&mut self) -> Option<&mut [u8]> {
        // a shared message: weir never writes into one
        None
    }

    fn topic(&self) -> &str {
        // SAFETY: a message without an error has its topic, whose name lives as long.
        let name = unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(self.0.rkt)) };
        // Kafka topic names are ASCII
        name.to_str().unwrap_or_default()
    }

    fn partition(&self) -> i32 {
        self.0.partition
    }

    fn offset(&self) -> i64 {
        self.0.offset
    }

    fn timestamp(&self) -> Timestamp {
        let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a live message; librdkafka writes the kind.
        let ms = unsafe { rd::rd_kafka_message_timestamp(self.0, &mut kind) };
        match kind {
            _ if ms == -1 => Timestamp::NotAvailable,
            rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_CREATE_TIME => {
                Timestamp::CreateTime(ms)
            }
            rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME => {
                Timestamp::LogAppendTime(ms)
            }
            rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE => {
                Timestamp::NotAvailable
            }
        }
    }

    fn headers(&self) -> Option<&RawHeaders> {
        let mut headers = ptr::null_mut();
        // SAFETY: a live message; librdkafka parses its headers once and keeps them with it.
        let err = unsafe { rd::rd_kafka_message_headers(self.0, &mut headers) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || headers.is_null() {
            return None;
        }
        // SAFETY: `RawHeaders` is a zero-sized stand-in for librdkafka's headers, which live
        // as long as the message borrowed here.
        Some(unsafe { &*(headers as *const RawHeaders) })
    }
}

/// The headers of a [`RawMessage`] (a stand-in for librdkafka's, never built in Rust).
pub(super) struct RawHeaders;

impl RawHeaders {
    fn native(&self) -> *const rd::rd_kafka_headers_t {
        self as *const RawHeaders as *const rd::rd_kafka_headers_t
    }
}

/// Stands for a header name that is not UTF-8 (the header's value is kept).
const NOT_UTF8_NAME: &str = "\u{FFFD}";

impl Headers for RawHeaders {
    fn count(&self) -> usize {
        // SAFETY: live headers (see `RawMessage::headers`).
        unsafe { rd::rd_kafka_header_cnt(self.native()) }
    }

    fn try_get(&self, idx: usize) -> Option<Header<'_, &[u8]>> {
        let (mut name, mut value, mut size) = (ptr::null(), ptr::null(), 0);
        // SAFETY: live headers; librdkafka writes pointers into them.
        let err = unsafe {
            rd::rd_kafka_header_get_all(self.native(), idx, &mut name, &mut value, &mut size)
        };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            return None;
        }
        // SAFETY: a C string and a value (or null) that live as long as the headers.
        unsafe {
            Some(Header {
                key: CStr::from_ptr(name).to_str().unwrap_or(NOT_UTF8_NAME),
                value: slice(value as *const u8, size),
            })
        }
    }
}

/// `len` bytes at `data`, or none for a null pointer.
///
/// # Safety
/// `data` is null or points at `len` bytes that outlive `'a`.
unsafe fn slice<'a>(data: *const u8, len: usize) -> Option<&'a [u8]> {
    if data.is_null() {
        None
    } else if len == 0 {
        Some(&[])
    } else {
        Some(std::slice::from_raw_parts(data, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Producer;
    use rdkafka::consumer::DefaultConsumerContext;
    use rdkafka::mocking::MockCluster;
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

    /// The offsets `queue` hands over within `within`, stopping after `stop_after` of them.
    fn offsets(queue: &FetchQueue, stop_after: usize, within: Duration) -> Vec<i64> {
        let started = std::time::Instant::now();
        let mut seen = Vec::new();
        while seen.len() < stop_after && started.elapsed() < within {
            queue.serve(Duration::from_millis(100), |m| {
                seen.push(m.unwrap().offset());
                if seen.len() >= stop_after {
                    Next::Stop
                } else {
                    Next::More
                }
            });
        }
        seen
    }

    #[test]
    fn a_stop_or_a_panic_leaves_the_rest_queued_and_the_position_follows_what_was_handed_over() {
        let mock = MockCluster::new(1).unwrap();
        mock.create_topic("t", 1, 1).unwrap();
        let brokers = mock.bootstrap_servers();
        let producer = Producer::new(&brokers, &[]).unwrap();
        for i in 0..100 {
            producer
                .send("t", None, Some(format!("{i}").as_bytes()), &[])
                .unwrap();
        }
        producer.flush().unwrap();
        let consumer: BaseConsumer<DefaultConsumerContext> = crate::client_config(&brokers, &[])
            .set("group.id", "g")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let queue = FetchQueue::new(&consumer).unwrap();
        assert!(queue.forward(&consumer, "t", 0));
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("t", 0, Offset::Beginning).unwrap();
        consumer.assign(&tpl).unwrap();
        let within = Duration::from_secs(20);

        assert_eq!(offsets(&queue, 10, within), (0..10).collect::<Vec<_>>());
        let position = consumer.position().unwrap();
        let position = position.find_partition("t", 0).unwrap().offset();
        assert_eq!(
            position,
            Offset::Offset(10),
            "the position is past what was handed over"
        );

        // a panic reaches the caller; the message it happened on was handed over, the rest
        // stays queued
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            queue.serve(Duration::from_secs(5), |_| panic!("a handler failed"))
        }));
        assert!(panicked.is_err());
        assert_eq!(offsets(&queue, 89, within), (11..100).collect::<Vec<_>>());
        // nothing came on the consumer's own queue
        assert!(consumer.poll(Duration::from_millis(200)).is_none());
        drop(queue);
    }
}
