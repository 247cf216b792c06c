//! The baseline of `benches/kafka.sh`: a bare rdkafka consumer that only counts messages.
//!
//!   kafka_count BROKERS TOPIC EXPECTED
//!
//! Joins a fresh consumer group, reads from the earliest offsets with the same fetch settings
//! as weir's Kafka source, touches every payload (sums its length) and stops after EXPECTED
//! messages. Prints `messages=N seconds=S per_second=R`.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        return Err("usage: kafka_count BROKERS TOPIC EXPECTED".into());
    }
    let (brokers, topic, expected) = (&args[1], &args[2], args[3].parse::<u64>()?);
    let group = format!(
        "weir-bench-count-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("queued.max.messages.kbytes", "32768")
        .set("fetch.max.bytes", "16777216")
        // weir's prefetch settings (kafka/src/source/group.rs), so that the bare consumer is
        // as fast as librdkafka can be here
        .set("fetch.queue.backoff.ms", "20")
        .create()?;
    consumer.subscribe(&[topic])?;
    let started = Instant::now();
    let mut count = 0u64;
    let mut bytes = 0u64;
    while count < expected {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                count += 1;
                bytes += m.payload().map_or(0, |p| p.len() as u64);
            }
            Some(Err(e)) => eprintln!("kafka_count: {e}"),
            None => {
                if started.elapsed() > Duration::from_secs(600) {
                    return Err(format!("timed out after {count} messages").into());
                }
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "messages={count} bytes={bytes} seconds={secs:.3} per_second={:.0}",
        count as f64 / secs
    );
    Ok(())
}
