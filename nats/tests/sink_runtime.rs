//! The NATS sink's publishers run their clients on the process's one I/O runtime
//! (`weir_engine::io`): publishers opened and dropped many times (jobs that restart, outputs
//! reconnecting) must leave no task on it and no connection on the server. Against a real
//! nats-server (the tests' venv); one test, so that nothing else uses the runtime meanwhile.

#[path = "../../cli/tests/support/nats_runtime.rs"]
mod nats_runtime_checks;
#[path = "../../cli/tests/support/nats.rs"]
mod nats_support;

use std::sync::Arc;

use arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use nats_runtime_checks::{alive_tasks, back_to, connections};
use nats_support::NatsServer;
use weir_engine::job::{Committable, Sink};
use weir_nats::sink::{
    NatsFormat, NatsSink, NatsSinkConfig, Outcome, Outgoing, Publisher, DEFAULT_ACK_TIMEOUT,
};
use weir_nats::NatsEndpoint;

fn endpoint(server: &NatsServer) -> NatsEndpoint {
    NatsEndpoint::new(vec![server.url()], "weir-test")
}

fn messages(round: usize, n: usize) -> Vec<Outgoing> {
    (0..n)
        .map(|i| Outgoing {
            id: format!("{round}-{i}"),
            headers: vec![("Weir-Key", format!("k{i}"))],
            payload: Bytes::from(format!("{{\"i\":{i}}}")),
        })
        .collect()
}

/// `n` window rows (one window per key).
fn rows(n: i64) -> RecordBatch {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("datasetName", DataType::Utf8, false),
        Field::new("window_start", ts, false),
        Field::new("events", DataType::Int64, false),
    ]));
    let names: Vec<String> = (0..n).map(|i| format!("d{i}")).collect();
    let starts = TimestampMillisecondArray::from(vec![1_700_000_040_000; n as usize]);
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(names)),
            Arc::new(starts.with_timezone("UTC")),
            Arc::new(Int64Array::from((0..n).collect::<Vec<_>>())),
        ],
    )
    .unwrap()
}

#[test]
fn publishers_opened_and_dropped_leave_no_task_on_the_io_runtime_and_no_connection() {
    let mut server = NatsServer::start();
    let tasks = alive_tasks();
    for round in 0..5 {
        // the publisher of `weir generate --nats`, the sink and the dead-letter output
        let publisher = Publisher::connect(&endpoint(&server), 64, DEFAULT_ACK_TIMEOUT).unwrap();
        let facts = publisher.ensure_stream("out", "out.rows").unwrap();
        assert_eq!(facts.name, "out");
        let outcomes = publisher.publish_all("out.rows", &messages(round, 200));
        assert_eq!(outcomes.len(), 200);
        for o in &outcomes {
            assert!(matches!(o, Outcome::Stored { duplicate: false }), "{o:?}");
        }
        assert_eq!(connections(&server), 1, "one connection per publisher");
        assert!(alive_tasks() > tasks);
        drop(publisher);
        back_to(&server, tasks, 0, &format!("round {round}: a publisher"));

        // the sink, whose publisher is connected when it opens
        let config = NatsSinkConfig {
            endpoint: endpoint(&server),
            subject: "out.rows".into(),
            format: NatsFormat::Json,
            max_in_flight: 64,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            pipeline: "p".into(),
            output: format!("w{round}"),
            view_keys: None,
            id_salt: String::new(),
        };
        let mut sink = NatsSink::new("nats", config).unwrap();
        sink.write(&rows(50)).unwrap();
        sink.flush().unwrap();
        sink.finish().unwrap();
        assert_eq!(connections(&server), 1);
        drop(sink);
        back_to(&server, tasks, 0, &format!("round {round}: a sink"));
    }

    // a publisher dropped while its server is away: its client ends once the server is back
    // (async-nats cannot stop a client that is reconnecting)
    let publisher = Publisher::connect(&endpoint(&server), 64, DEFAULT_ACK_TIMEOUT).unwrap();
    publisher.stream_for("out.rows").unwrap();
    server.stop();
    drop(publisher);
    server.restart();
    back_to(
        &server,
        tasks,
        0,
        "a publisher dropped while the server was away",
    );
}
