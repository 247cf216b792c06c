//! The baseline of `benches/nats_sink.sh`: a bare async-nats JetStream publisher. Publishes
//! every line of a file as one message (with a `Nats-Msg-Id`), at most MAX_IN_FLIGHT awaiting
//! their acknowledgement, waits for every acknowledgement, and prints the count and rate.
//!   nats-bare-publish URL SUBJECT FILE [MAX_IN_FLIGHT]

use std::collections::VecDeque;
use std::future::IntoFuture;
use std::time::Instant;

use async_nats::jetstream;

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, subject, file, rest @ ..] = args.as_slice() else {
        return Err("usage: nats-bare-publish URL SUBJECT FILE [MAX_IN_FLIGHT]".into());
    };
    let max: usize = rest.first().map_or(Ok(256), |m| m.parse())?;
    let text = std::fs::read_to_string(file)?;
    let client = async_nats::connect(url.as_str()).await?;
    let js = jetstream::ContextBuilder::new()
        .max_ack_inflight(max)
        .backpressure_on_inflight(true)
        .build(client);
    let started = Instant::now();
    let mut in_flight = VecDeque::with_capacity(max);
    let mut count = 0u64;
    for (i, line) in text.lines().enumerate() {
        if in_flight.len() >= max {
            if let Some(ack) = in_flight.pop_front() {
                let _: jetstream::publish::PublishAck = ack.await?;
            }
        }
        let msg = jetstream::message::PublishMessage::build()
            .payload(line.as_bytes().to_vec().into())
            .message_id(format!("bare-{i}"));
        in_flight.push_back(js.send_publish(subject.clone(), msg).await?.into_future());
        count += 1;
    }
    while let Some(ack) = in_flight.pop_front() {
        ack.await?;
    }
    let s = started.elapsed().as_secs_f64();
    println!(
        "messages={count} seconds={s:.3} rate={:.0}",
        count as f64 / s
    );
    Ok(())
}
