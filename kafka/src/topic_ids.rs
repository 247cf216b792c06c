//! Topic ids (KIP-516): what tells a topic from one deleted and created again under its name.
//!
//! A checkpoint's offset belongs to one incarnation of its topic: a topic deleted and created
//! again begins its offsets at 0, so an offset kept from before would skip as many of the new
//! topic's records, without a word, when the new topic already holds more. The source keeps
//! the topic's id with each position (`Resume::incarnation`) and compares it at a restore.
//!
//! rdkafka does not wrap `rd_kafka_DescribeTopics` (librdkafka 2.3+): this module calls it
//! through `rdkafka-sys`, on the consumer's own client handle, with a queue of its own.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// A topic id folded into the 64 bits a position keeps (never 0: 0 is "unknown").
pub(crate) fn incarnation(most: i64, least: i64) -> u64 {
    let folded = (most as u64) ^ (least as u64).rotate_left(32);
    folded.max(1)
}

/// How long the brokers' list is waited for, to tell whether the controller is one of them.
const METADATA_WAIT: Duration = Duration::from_secs(2);

/// The ids of `topics` (as [`incarnation`]s), asked of the cluster in one request that waits
/// at most `timeout`. A topic the broker does not know, or gives no id (a broker before
/// Kafka 2.8, or one that does not keep ids), is left out: its positions are not checked.
///
/// The request goes to the cluster's controller: a cluster whose metadata names none, or a
/// broker it does not list (librdkafka's mock cluster names broker 0, which it does not
/// have), would hold it, waiting for that broker, until `timeout`, inside a rebalance (10 s
/// with every partition still). Such a cluster is not asked; it gives no ids.
/// `controller_wait` is how long to wait for the client's first metadata to say (zero once
/// the client has some: a consumer in a rebalance).
pub(crate) fn topic_incarnations<C: ClientContext>(
    client: &Client<C>,
    topics: &[&str],
    timeout: Duration,
    controller_wait: Duration,
) -> Result<HashMap<String, u64>, KafkaError> {
    let mut out = HashMap::new();
    if topics.is_empty() {
        return Ok(out);
    }
    let wait_ms = i32::try_from(controller_wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the handle is the client's own, alive as long as `client`
    let controller = unsafe { rd::rd_kafka_controllerid(client.native_ptr(), wait_ms) };
    // (briefly: inside a rebalance every partition waits; metadata that does not come in
    // time says nothing, and the cluster is asked as before)
    let listed = || match client.fetch_metadata(topics.first().copied(), METADATA_WAIT) {
        Ok(metadata) => metadata.brokers().iter().any(|b| b.id() == controller),
        Err(_) => true,
    };
    if controller < 0 || !listed() {
        // (a controller election makes a cluster name none for a moment: said each time)
        tracing::warn!(
            "kafka: the cluster's metadata names no controller it lists now, so topic ids (KIP-516) \
             are not asked: the positions of the partitions assigned now carry none, and a \
             topic deleted and created again under its name is not told from the one read"
        );
        return Ok(out);
    }
    let names: Vec<CString> = topics
        .iter()
        .filter_map(|t| CString::new(*t).ok())
        .collect();
    let mut pointers: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
    let rk = client.native_ptr();
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: every handle made here is destroyed here, after its last use; `names` outlives
    // the collection made from its pointers (librdkafka copies the names anyway); the event's
    // result and descriptions belong to the event and are read before it is destroyed.
    unsafe {
        let collection =
            rd::rd_kafka_TopicCollection_of_topic_names(pointers.as_mut_ptr(), pointers.len());
        let options = rd::rd_kafka_AdminOptions_new(
            rk,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBETOPICS,
        );
        let mut errstr = [0 as c_char; 256];
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options,
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        let queue = rd::rd_kafka_queue_new(rk);
        rd::rd_kafka_DescribeTopics(rk, collection, options, queue);
        // (the request times out by itself: a little more is waited for its answer)
        let event = rd::rd_kafka_queue_poll(queue, timeout_ms.saturating_add(1000));
        let answer = if event.is_null() {
            Err(KafkaError::AdminOp(RDKafkaErrorCode::OperationTimedOut))
        } else {
            let code = rd::rd_kafka_event_error(event);
            if code != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                Err(KafkaError::AdminOp(code.into()))
            } else {
                let result = rd::rd_kafka_event_DescribeTopics_result(event);
                if !result.is_null() {
                    let mut count = 0usize;
                    let descriptions =
                        rd::rd_kafka_DescribeTopics_result_topics(result, &mut count);
                    for i in 0..count {
                        let d = *descriptions.add(i);
                        if d.is_null() {
                            continue;
                        }
                        let error = rd::rd_kafka_TopicDescription_error(d);
                        if !error.is_null() {
                            let code: RDKafkaErrorCode = rd::rd_kafka_error_code(error).into();
                            tracing::debug!(error = %code, "kafka: a topic's id was not given");
                            continue;
                        }
                        let id = rd::rd_kafka_TopicDescription_topic_id(d);
                        let name = rd::rd_kafka_TopicDescription_name(d);
                        if id.is_null() || name.is_null() {
                            continue;
                        }
                        let (most, least) = (
                            rd::rd_kafka_Uuid_most_significant_bits(id),
                            rd::rd_kafka_Uuid_least_significant_bits(id),
                        );
                        if most == 0 && least == 0 {
                            continue;
                        }
                        let name = CStr::from_ptr(name).to_string_lossy().into_owned();
                        out.insert(name, incarnation(most, least));
                    }
                }
                Ok(())
            }
        };
        if !event.is_null() {
            rd::rd_kafka_event_destroy(event);
        }
        rd::rd_kafka_queue_destroy(queue);
        rd::rd_kafka_AdminOptions_destroy(options);
        rd::rd_kafka_TopicCollection_destroy(collection);
        answer?;
    }
    Ok(out)
}
