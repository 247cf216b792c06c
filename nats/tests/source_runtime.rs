//! The NATS source's readers run their clients on the process's one I/O runtime
//! (`weir_engine::io`): readers opened and dropped many times (jobs that restart, a pool
//! worker's readers) must leave no task on it and no connection on the server. Against a real
//! nats-server (the tests' venv); one test, so that nothing else uses the runtime meanwhile.

#[path = "../../cli/tests/support/nats_runtime.rs"]
mod nats_runtime_checks;
#[path = "../../cli/tests/support/nats.rs"]
mod nats_support;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use nats_runtime_checks::{alive_tasks, back_to, connections};
use nats_support::NatsServer;
use weir_engine::clock::Clocks;
use weir_engine::job::{PartitionReader, ReaderContext};
use weir_engine::progress::Progress;
use weir_engine::{ChunkData, RunStats};
use weir_nats::source::{NatsPartitions, NatsPartitionsReader, NatsReader, NatsSourceConfig};
use weir_nats::NatsEndpoint;

/// Messages per subject partition.
const PER_PARTITION: usize = 100;
const PARTITIONS: u32 = 3;

/// A runtime of the test's own (the clients on it are gone once a call returns).
fn own_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Creates stream `events` (`events.<partition>.<n>`) and publishes its messages, with a
/// client on a runtime of the test's own, gone when this returns.
fn fill_stream(url: &str) {
    own_runtime().block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "events".into(),
            subjects: vec!["events.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        for i in 0..PER_PARTITION * PARTITIONS as usize {
            let subject = format!("events.{}.{i}", i as u32 % PARTITIONS);
            let payload = format!("{{\"i\":{i},\"timestamp\":\"2026-01-01T00:00:00Z\"}}");
            js.publish(subject, payload.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
}

/// The consumer's acknowledgement floor and unacknowledged messages.
fn acknowledged(url: &str, consumer: &str) -> (u64, usize) {
    own_runtime().block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("events").await.unwrap();
        let mut c: async_nats::jetstream::consumer::PullConsumer =
            stream.get_consumer(consumer).await.unwrap();
        let info = c.info().await.unwrap();
        (info.ack_floor.stream_sequence, info.num_ack_pending)
    })
}

fn config(server: &NatsServer, consumer: &str, until_caught_up: bool) -> NatsSourceConfig {
    let endpoint = NatsEndpoint::new(vec![server.url()], "weir-test");
    NatsSourceConfig {
        until_caught_up,
        fetch_batch: 50,
        ..NatsSourceConfig::new(endpoint, "events", consumer)
    }
}

/// A reader context outside a job for `partitions` partitions; acknowledgements follow
/// checkpoints.
fn context(partitions: usize) -> ReaderContext {
    let ctx = ReaderContext::new(
        Arc::new(Clocks::new(&[(partitions, 0)])),
        Arc::new(AtomicBool::new(false)),
        Arc::new(Progress::new(partitions, &[])),
        Arc::new(RunStats::new(&[], &[], &[])),
    );
    ctx.progress.use_checkpoints();
    ctx
}

/// Messages in the chunks a reader gives until its end.
fn read_to_end(reader: &mut dyn PartitionReader, ctx: &ReaderContext) -> usize {
    let mut n = 0;
    while let Some(c) = reader.next_chunk(ctx).expect("a chunk") {
        if let ChunkData::Messages(m) = &c.data {
            n += m.offsets.len();
        }
    }
    n
}

#[test]
fn readers_opened_and_dropped_leave_no_task_on_the_io_runtime_and_no_connection() {
    let mut server = NatsServer::start();
    let url = server.url();
    fill_stream(&url);
    let total = PER_PARTITION * PARTITIONS as usize;
    let tasks = alive_tasks();
    back_to(&server, tasks, 0, "after filling the stream");
    for round in 0..5 {
        // a stream read whole to its end, every message acknowledged once "checkpointed"
        let consumer = format!("whole-{round}");
        let mut reader = NatsReader::new(0, "s", 0, config(&server, &consumer, true)).unwrap();
        let ctx = context(1);
        assert_eq!(read_to_end(&mut reader, &ctx), total, "round {round}");
        assert_eq!(connections(&server), 1, "one connection per reader");
        assert!(alive_tasks() > tasks);
        ctx.progress.record_checkpoint(0, u64::MAX);
        reader.finish(&ctx).unwrap();
        drop(reader);
        back_to(
            &server,
            tasks,
            0,
            &format!("round {round}: a reader read to its end"),
        );
        assert_eq!(
            acknowledged(&url, &consumer),
            (total as u64, 0),
            "round {round}"
        );
        back_to(&server, tasks, 0, "after reading the consumer's state");

        // a reader dropped while its pull requests are outstanding
        let mut reader = NatsReader::new(0, "s", 0, config(&server, "live", false)).unwrap();
        let ctx = context(1);
        assert!(reader.next_chunk(&ctx).unwrap().is_some());
        assert_eq!(connections(&server), 1);
        drop(reader);
        back_to(
            &server,
            tasks,
            0,
            &format!("round {round}: a reader dropped mid-stream"),
        );

        // subject partitions: one reader and one connection each
        let mut cfg = config(&server, &format!("parts-{round}"), true);
        cfg.partitions = Some(NatsPartitions {
            count: PARTITIONS,
            subject: "events.{partition}.*".into(),
        });
        let numbers: Vec<(u32, Option<weir_engine::events::Resume>)> =
            (0..PARTITIONS).map(|n| (n, None)).collect();
        let mut readers = NatsPartitionsReader::new(0, "s", 0, &cfg, &numbers).unwrap();
        let ctx = context(PARTITIONS as usize);
        assert_eq!(read_to_end(&mut readers, &ctx), total, "round {round}");
        assert_eq!(connections(&server), u64::from(PARTITIONS));
        readers.finish_all(&ctx).unwrap();
        drop(readers);
        back_to(
            &server,
            tasks,
            0,
            &format!("round {round}: partition readers"),
        );
    }

    // a reader dropped while its server is away: its client ends once the server is back
    // (async-nats cannot stop a client that is reconnecting)
    let mut reader = NatsReader::new(0, "s", 0, config(&server, "away", false)).unwrap();
    let ctx = context(1);
    assert!(reader.next_chunk(&ctx).unwrap().is_some());
    server.stop();
    drop(reader);
    server.restart();
    back_to(
        &server,
        tasks,
        0,
        "a reader dropped while the server was away",
    );
}
