//! Leaving a consumer group without letting a broker, or librdkafka, hold the caller.
//!
//! Dropping an rdkafka `BaseConsumer` closes it: it polls until librdkafka reports the
//! consumer closed, with no bound. A close that starts while a rebalance is under way can
//! wait for a broker's answer for as long as the group's rebalance timeout (minutes), and
//! rebalance callbacks served during a close must not ask librdkafka's main thread anything
//! (confluentinc/librdkafka#4041, #4884). A pool worker that lost partitions closes its
//! consumer and joins again, so an unbounded close would stall the worker for good.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, ConsumerContext};

/// The longest a reader waits for its consumer to leave the group.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Closes the consumer (rdkafka's close: it leaves the group, serving the revocation in its
/// own poll) in a thread of its own, waiting at most `timeout`; after that the close finishes
/// in the background and the caller goes on (a new consumer may join meanwhile). The consumer
/// is not unsubscribed first: librdkafka then rejoins with an empty subscription before it
/// leaves, and a broker (tansu) was seen to lose the other members' generation over it.
pub(crate) fn close_consumer<C: ConsumerContext + 'static>(
    consumer: BaseConsumer<C>,
    source: &str,
    timeout: Duration,
) {
    let started = Instant::now();
    let (done, closed) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("kafka-close".into())
        .spawn(move || {
            drop(consumer);
            let _ = done.send(());
        });
    if let Err(e) = spawned {
        // the closure, and the consumer in it, were dropped on this thread
        tracing::warn!(source = %source, error = %e, "kafka: cannot start a thread to close the consumer; closed it in place");
        return;
    }
    if closed.recv_timeout(timeout).is_err() {
        tracing::warn!(
            source = %source,
            waited_s = started.elapsed().as_secs(),
            "kafka: the consumer did not leave its group in time (a rebalance callback or the \
             broker is slow); it goes on closing in the background"
        );
    }
}

/// Whether a consumer configuration's assignment strategy is cooperative (librdkafka's
/// `cooperative-sticky`): its rebalances assign and revoke incrementally.
pub(crate) fn is_cooperative(config: &rdkafka::ClientConfig) -> bool {
    config
        .get("partition.assignment.strategy")
        .is_some_and(|s| s.contains("cooperative"))
}
