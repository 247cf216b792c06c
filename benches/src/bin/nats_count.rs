//! The baseline of `benches/nats.sh`: a bare async-nats JetStream pull consumer that only
//! counts messages.
//!
//!   nats_count URL STREAM EXPECTED
//!
//! Creates an ephemeral pull consumer from the stream's start with the same pull settings as
//! weir's NATS source (batches of 1000, `AckPolicy::All`, one acknowledgement per 16,384
//! messages as weir sends per chunk when its outputs are durable at once; `ACK_EVERY=N` sets
//! another interval), touches every payload (sums its length) and stops after
//! EXPECTED messages. `ACK_EVERY=0` creates the consumer with `AckPolicy::None` instead (the
//! server tracks no acknowledgement: weir's `acknowledge: none`). Prints
//! `messages=N seconds=S per_second=R`.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy};
use futures_util::StreamExt;

fn main() -> Result<(), async_nats::Error> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        return Err("usage: nats_count URL STREAM EXPECTED".into());
    }
    let (url, stream, expected) = (&args[1], &args[2], args[3].parse::<u64>()?);
    // ACK_EVERY=N: acknowledge every N messages instead (a large N keeps them unacknowledged,
    // as weir does until its outputs are durable)
    let ack_every = match std::env::var("ACK_EVERY") {
        Ok(v) => v.parse::<u64>()?,
        Err(_) => 16_384,
    };
    let ack_policy = if ack_every == 0 {
        AckPolicy::None
    } else {
        AckPolicy::All
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = async_nats::connect(url.as_str()).await?;
        let js = jetstream::new(client.clone());
        let stream = js.get_stream(stream).await?;
        let consumer = stream
            .create_consumer(pull::Config {
                ack_policy,
                // weir's default: the acknowledgements below come every 16,384 messages
                max_ack_pending: 1_000_000,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await?;
        let started = Instant::now();
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(1000)
            .expires(Duration::from_secs(10))
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await?;
        let (mut n, mut bytes) = (0u64, 0usize);
        while let Some(m) = messages.next().await {
            let m = m?;
            bytes += m.payload.len();
            n += 1;
            if ack_every > 0 && (n % ack_every == 0 || n == expected) {
                m.ack().await?;
            }
            if n >= expected {
                break;
            }
        }
        let s = started.elapsed().as_secs_f64();
        println!(
            "messages={n} seconds={s:.3} per_second={:.0} bytes={bytes}",
            n as f64 / s
        );
        Ok::<(), async_nats::Error>(())
    })
}
