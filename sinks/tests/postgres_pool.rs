//! The PostgreSQL sink's epochs in a worker pool, against a throwaway PostgreSQL 15 server:
//! rows that the commit finishing a dead worker's checkpoint refuses become the dead letters
//! of the worker that finished it, exactly once.

#[path = "../../cli/tests/support/postgres.rs"]
mod postgres;

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Int64Array, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use postgres::PgServer;
use weir_engine::job::{Committable, Sink};
use weir_sinks::postgres::TableName;
use weir_sinks::{PostgresConfig, PostgresSink, TlsMode};

/// Window rows of keys `keys`, all in the window starting at 0.
fn batch(keys: &[&str]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new(
            "window_start",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("n", DataType::Int64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(keys.to_vec())),
            Arc::new(TimestampMillisecondArray::from(vec![0; keys.len()]).with_timezone("UTC")),
            Arc::new(Int64Array::from(vec![1; keys.len()])),
        ],
    )
    .unwrap()
}

/// Worker `worker`'s sink `db` of pipeline `p`, writing `public.t` with checkpoints.
fn sink(pg: &PgServer, worker: &str) -> PostgresSink {
    let config = PostgresConfig {
        url: pg.url(),
        table: TableName::parse("public.t").unwrap(),
        tls: Some(TlsMode::Disable),
        ca_file: None,
        batch_max_rows: 1000,
        flush_interval: Duration::from_secs(3600),
        timeout: Duration::from_secs(30),
        pipeline: "p".into(),
        output: "w".into(),
        view_keys: None,
        worker: worker.into(),
    };
    PostgresSink::new("db", config, &batch(&[]).schema(), true).unwrap()
}

#[test]
fn rows_a_dead_workers_commit_refuses_are_the_adopters_dead_letters_once() {
    let pg = PgServer::start();
    // the table refuses the keys listed in `refuse_now` (a trigger: a merge can refuse rows,
    // so each checkpoint tries it first)
    pg.psql(
        "CREATE TABLE public.refuse_now (k text PRIMARY KEY); \
         CREATE TABLE public.t (k text NOT NULL, window_start timestamptz NOT NULL, n bigint, \
         PRIMARY KEY (k, window_start)); \
         CREATE FUNCTION public.refuse_listed() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN \
           IF EXISTS (SELECT 1 FROM public.refuse_now WHERE k = NEW.k) THEN \
             RAISE EXCEPTION 'refused now' USING ERRCODE = 'check_violation'; \
           END IF; \
           RETURN NEW; \
         END $$; \
         CREATE TRIGGER refuse_listed BEFORE INSERT OR UPDATE ON public.t \
         FOR EACH ROW EXECUTE FUNCTION public.refuse_listed()",
    );
    // worker b stages its epoch 1 and pre-commits it: the trial merge lets every row through
    let mut b = sink(&pg, "b");
    b.recover(None).unwrap();
    b.write(&batch(&["x", "y"])).unwrap();
    b.pre_commit(1).unwrap();
    assert!(b.take_rejected().is_empty());
    // b dies before its commit; then the table refuses x
    drop(b);
    pg.psql("INSERT INTO public.refuse_now VALUES ('x')");

    // worker a restores b's partitions from that checkpoint and finishes b's commit: x is
    // refused, kept, and a's now; asked again, nothing changes
    let mut roller = sink(&pg, "b");
    assert!(roller.roll_forward(1, "a").unwrap());
    assert!(roller.take_rejected().is_empty());
    assert!(!sink(&pg, "b").roll_forward(1, "a").unwrap());
    assert_eq!(pg.psql("SELECT k FROM public.t"), "y");
    let kept = "SELECT worker || ' ' || refused_in || ' ' || coalesce(reported::text, '-') \
                || ' ' || sqlstate FROM weir_sink_refused";
    assert_eq!(pg.psql(kept), "a 0 - 23514");

    // a's own sink, restored from nothing: its next checkpoint reports x, once
    let mut a = sink(&pg, "a");
    a.recover(None).unwrap();
    a.pre_commit(1).unwrap();
    let refused = a.take_rejected();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].error.code, "postgres_refused");
    assert_eq!(refused[0].error.details["sqlstate"], "23514");
    let raw: serde_json::Value = serde_json::from_slice(&refused[0].raw).unwrap();
    assert_eq!(raw["k"], "x");
    a.commit(1).unwrap();
    a.pre_commit(2).unwrap();
    assert!(a.take_rejected().is_empty(), "reported once");
    assert_eq!(pg.psql(kept), "a 0 1 23514");

    // a restarts from its checkpoint 1 (2 never completed): x stays reported
    let mut again = sink(&pg, "a");
    again.recover(Some((1, &serde_json::json!({})))).unwrap();
    again.pre_commit(2).unwrap();
    assert!(again.take_rejected().is_empty());
    // and from nothing (its checkpoints lost): reported again, with the rest of its output
    let mut lost = sink(&pg, "a");
    lost.recover(None).unwrap();
    lost.pre_commit(1).unwrap();
    assert_eq!(lost.take_rejected().len(), 1);

    // worker c: epoch 1 passes, epoch 2's trial merge refuses z (kept as c's, refused in 2),
    // and c dies before checkpoint 2 completes. Its adopter restores checkpoint 1 and reads
    // epoch 2's input again, so its own commit refuses z: z must not be adopted as well
    // (it would be a dead letter twice)
    let mut c = sink(&pg, "c");
    c.recover(None).unwrap();
    c.write(&batch(&["v"])).unwrap();
    c.pre_commit(1).unwrap();
    pg.psql("INSERT INTO public.refuse_now VALUES ('z')");
    c.write(&batch(&["z"])).unwrap();
    c.pre_commit(2).unwrap();
    drop(c);
    let by_c = "SELECT worker || ' ' || refused_in FROM weir_sink_refused WHERE worker <> 'a' \
                ORDER BY 1";
    assert_eq!(pg.psql(by_c), "c 2");
    assert!(sink(&pg, "c").roll_forward(1, "d").unwrap());
    assert_eq!(
        pg.psql(by_c),
        "c 2",
        "a refusal of the epoch after the checkpoint stays"
    );
    // c restarted from its checkpoint 1 instead: the refusal after it is dropped
    let mut c = sink(&pg, "c");
    c.recover(Some((1, &serde_json::json!({})))).unwrap();
    assert_eq!(pg.psql(by_c), "");
}
