//! Tests of the materialized view (`view.rs`).

use super::*;
use crate::SqlCompiler;
use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::DataType;

fn config() -> Arc<ViewConfig> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("serviceName", DataType::Utf8, true),
        Field::new("healthStatus", DataType::Utf8, true),
        Field::new("timestamp", DataType::Int64, true),
    ]));
    let c = SqlCompiler::new();
    let aggregates = vec![
        c.aggregate(
            "status",
            "last_value(healthStatus ORDER BY timestamp)",
            &schema,
        )
        .unwrap(),
        c.aggregate("checks", "count(*)", &schema).unwrap(),
    ];
    Arc::new(ViewConfig {
        name: "service_status".into(),
        input_schema: schema,
        predicate: None,
        keys: vec!["serviceName".into()],
        aggregates,
        retain_ms: None,
        partition_state: false,
        changelog: true,
    })
}

fn events(rows: &[(&str, &str, i64)]) -> EventBatch {
    let config = config();
    let batch = RecordBatch::try_new(
        config.input_schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
        ],
    )
    .unwrap();
    EventBatch {
        batch,
        event_time: rows.iter().map(|r| r.2).collect(),
        offsets: (0..rows.len() as u64).collect(),
        raw: None,
    }
}

fn partition() -> Arc<PartitionInfo> {
    Arc::new(PartitionInfo {
        source: "health".into(),
        id: 0,
        state_id: 0,
        number: 0,
        topic: None,
        file: None,
    })
}

fn rows(batches: &[RecordBatch]) -> Vec<(String, String, i64)> {
    let mut out = Vec::new();
    for b in batches {
        let k = b.column(0).as_string::<i32>();
        let s = b.column(1).as_string::<i32>();
        let c = b.column(2).as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..b.num_rows() {
            out.push((k.value(i).to_string(), s.value(i).to_string(), c.value(i)));
        }
    }
    out.sort();
    out
}

/// A barrier: the workers hand their deltas to the merger.
fn barrier(m: &mut ViewMerger, workers: &mut [&mut ViewWorker]) {
    for w in workers.iter_mut() {
        for part in w.barrier_handover().unwrap() {
            m.merge(part).unwrap();
        }
    }
}

#[test]
fn partition_state_keeps_each_key_s_partition_hidden_and_cuttable() {
    let base = config();
    let pooled = Arc::new(
        (*base)
            .clone()
            .with_partition_state(&SqlCompiler::new())
            .unwrap(),
    );
    assert_eq!(pooled.visible().len(), base.aggregates.len());
    assert_eq!(
        pooled.output_schema().unwrap(),
        base.output_schema().unwrap()
    );
    let part = |id: usize| {
        Arc::new(PartitionInfo {
            source: "health".into(),
            id,
            state_id: id,
            number: id as u32,
            topic: None,
            file: None,
        })
    };
    let mut w = ViewWorker::new(pooled.clone()).unwrap();
    let mut m = ViewMerger::new(pooled.clone()).unwrap();
    let mut dead = Vec::new();
    w.process(&part(0), &events(&[("a", "HEALTHY", 10)]), &[0], &mut dead)
        .unwrap();
    w.process(&part(3), &events(&[("b", "DOWN", 5)]), &[0], &mut dead)
        .unwrap();
    barrier(&mut m, &mut [&mut w]);
    assert_eq!(
        rows(&m.live(Vec::new()).unwrap()),
        vec![
            ("a".into(), "HEALTHY".into(), 1),
            ("b".into(), "DOWN".into(), 1)
        ]
    );
    // partition 3's share of a checkpoint holds key b alone
    let saved = MergeOperator::snapshot(&mut m).unwrap();
    let column = weir_engine::checkpoint::PartitionColumn::State(
        pooled.partition_state_column().unwrap().unwrap(),
    );
    let cut = weir_engine::checkpoint::partials_of_partitions(&saved, column, &|p| p == 3).unwrap();
    let mut other = ViewMerger::new(pooled).unwrap();
    MergeOperator::restore(&mut other, &cut).unwrap();
    assert_eq!(
        rows(&other.live(Vec::new()).unwrap()),
        vec![("b".into(), "DOWN".into(), 1)]
    );
}

#[test]
fn deltas_of_two_workers_merge_into_the_latest_value_per_key() {
    let config = config();
    let p = partition();
    let mut w1 = ViewWorker::new(config.clone()).unwrap();
    let mut w2 = ViewWorker::new(config.clone()).unwrap();
    let mut m = ViewMerger::new(config).unwrap();
    let mut dead = Vec::new();
    w1.process(
        &p,
        &events(&[("a", "HEALTHY", 10), ("b", "DOWN", 5)]),
        &[],
        &mut dead,
    )
    .unwrap();
    w2.process(&p, &events(&[("a", "DEGRADED", 20)]), &[], &mut dead)
        .unwrap();
    assert!(
        w1.flush(100).unwrap().is_empty(),
        "deltas wait for a barrier"
    );
    barrier(&mut m, &mut [&mut w1, &mut w2]);
    let first = rows(&m.live(Vec::new()).unwrap());
    assert_eq!(
        first,
        vec![
            ("a".into(), "DEGRADED".into(), 2),
            ("b".into(), "DOWN".into(), 1)
        ]
    );
    // reading leaves the state as it was; an older event does not win
    w1.process(&p, &events(&[("a", "HEALTHY", 15)]), &[], &mut dead)
        .unwrap();
    for part in w1.flush(WATERMARK_END).unwrap() {
        m.merge(part).unwrap();
    }
    let second = rows(&m.live(Vec::new()).unwrap());
    assert_eq!(second[0], ("a".into(), "DEGRADED".into(), 3));
    // a checkpoint's copy restores the same view in a new merger, with no key changed
    let saved = m.snapshot().unwrap();
    let mut m2 = ViewMerger::new(m.config.clone()).unwrap();
    assert!(m2.restore(&saved).unwrap());
    assert_eq!(rows(&m2.live(Vec::new()).unwrap()), second);
    assert!(m2.barrier_rows().unwrap().is_empty());
    // the final snapshot: every key once, whatever changed
    let last = m2.emit(WATERMARK_END).unwrap();
    assert_eq!(last[0].num_rows(), 2);
    assert_eq!(last[0].schema().field(3).name(), "op");
    assert!(m2.emit(WATERMARK_END).unwrap().is_empty());
    assert!(dead.is_empty());
}

/// The ops and rows of sink batches, in order.
fn changelog(batches: &[RecordBatch]) -> Vec<(String, String, i64, String)> {
    let mut out = Vec::new();
    for b in batches {
        let k = b.column(0).as_string::<i32>();
        let s = b.column(1).as_string::<i32>();
        let c = b.column(2).as_primitive::<arrow::datatypes::Int64Type>();
        let op = b.column(3).as_string::<i32>();
        for i in 0..b.num_rows() {
            out.push((
                k.value(i).to_string(),
                s.value(i).to_string(),
                c.value(i),
                op.value(i).to_string(),
            ));
        }
    }
    out
}

#[test]
fn retain_expires_keys_by_event_time_and_sends_deletes() {
    let c = SqlCompiler::new();
    let base = config();
    let config = Arc::new(
        ViewConfig {
            name: base.name.clone(),
            input_schema: base.input_schema.clone(),
            predicate: None,
            keys: base.keys.clone(),
            aggregates: base.aggregates.clone(),
            retain_ms: None,
            partition_state: false,
            changelog: true,
        }
        .with_retain(5, &c)
        .unwrap(),
    );
    assert_eq!(config.output_schema().unwrap().fields().len(), 3);
    let p = partition();
    let mut w = ViewWorker::new(config.clone()).unwrap();
    let mut m = ViewMerger::new(config.clone()).unwrap();
    let mut dead = Vec::new();
    w.process(
        &p,
        &events(&[("a", "UP", 1), ("b", "DOWN", 2)]),
        &[],
        &mut dead,
    )
    .unwrap();
    barrier(&mut m, &mut [&mut w]);
    assert!(m.emit(3).unwrap().is_empty());
    let first = changelog(&m.barrier_rows().unwrap());
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(first.iter().all(|r| r.3 == "upsert"));
    // the watermark passes b's newest event + 5: b leaves, a (updated at 10) stays
    w.process(&p, &events(&[("a", "UP", 10)]), &[], &mut dead)
        .unwrap();
    barrier(&mut m, &mut [&mut w]);
    m.emit(8).unwrap();
    let second = changelog(&m.barrier_rows().unwrap());
    assert_eq!(
        second,
        vec![
            ("b".into(), "DOWN".into(), 1, "delete".into()),
            ("a".into(), "UP".into(), 2, "upsert".into())
        ]
    );
    assert_eq!(
        rows(&m.live(Vec::new()).unwrap()),
        vec![("a".into(), "UP".into(), 2)]
    );
    // point queries see the rebuilt index
    let key: ArrayRef = Arc::new(StringArray::from(vec!["a"]));
    assert_eq!(m.live_index().unwrap().lookup(&[key]).unwrap(), vec![0]);
    // a late event for b starts it afresh
    w.process(&p, &events(&[("b", "UP", 4)]), &[], &mut dead)
        .unwrap();
    barrier(&mut m, &mut [&mut w]);
    let third = changelog(&m.barrier_rows().unwrap());
    assert_eq!(third, vec![("b".into(), "UP".into(), 1, "upsert".into())]);
    // a restore gives the same view; nothing is sent again
    let saved = m.snapshot().unwrap();
    let mut m2 = ViewMerger::new(config).unwrap();
    assert!(m2.restore(&saved).unwrap());
    assert_eq!(
        rows(&m2.live(Vec::new()).unwrap()),
        rows(&m.live(Vec::new()).unwrap())
    );
    assert!(m2.barrier_rows().unwrap().is_empty());
    // b expires again once the watermark passes 4 + 5
    m2.emit(20).unwrap();
    let last = changelog(&m2.emit(WATERMARK_END).unwrap());
    assert_eq!(
        last,
        vec![
            ("a".into(), "UP".into(), 2, "delete".into()),
            ("b".into(), "UP".into(), 1, "delete".into())
        ]
    );
    assert!(dead.is_empty());
}

#[test]
fn first_value_keeps_the_earliest_event_across_workers_and_folds() {
    let base = config();
    let c = SqlCompiler::new();
    let schema = base.input_schema.clone();
    let config = Arc::new(ViewConfig {
        aggregates: vec![
            c.aggregate(
                "first_status",
                "first_value(healthStatus ORDER BY timestamp)",
                &schema,
            )
            .unwrap(),
            c.aggregate("checks", "count(*)", &schema).unwrap(),
        ],
        name: base.name.clone(),
        input_schema: schema.clone(),
        predicate: None,
        keys: base.keys.clone(),
        retain_ms: None,
        partition_state: false,
        changelog: true,
    });
    let p = partition();
    let mut w1 = ViewWorker::new(config.clone()).unwrap();
    let mut w2 = ViewWorker::new(config.clone()).unwrap();
    let mut m = ViewMerger::new(config).unwrap();
    let mut dead = Vec::new();
    w1.process(
        &p,
        &events(&[("a", "DEGRADED", 20), ("b", "DOWN", 5)]),
        &[],
        &mut dead,
    )
    .unwrap();
    w2.process(&p, &events(&[("a", "HEALTHY", 10)]), &[], &mut dead)
        .unwrap();
    barrier(&mut m, &mut [&mut w1, &mut w2]);
    assert_eq!(
        rows(&m.live(Vec::new()).unwrap()),
        vec![
            ("a".into(), "HEALTHY".into(), 2),
            ("b".into(), "DOWN".into(), 1)
        ]
    );
    // a later fold: an even earlier event wins, a later one does not
    w1.process(
        &p,
        &events(&[("a", "UNKNOWN", 1), ("b", "HEALTHY", 9)]),
        &[],
        &mut dead,
    )
    .unwrap();
    barrier(&mut m, &mut [&mut w1]);
    assert_eq!(
        rows(&m.live(Vec::new()).unwrap()),
        vec![
            ("a".into(), "UNKNOWN".into(), 3),
            ("b".into(), "DOWN".into(), 2)
        ]
    );
    assert!(dead.is_empty());
}

#[test]
fn folds_between_deltas_give_the_same_view_as_one_fold() {
    let config = config();
    let p = partition();
    let statuses = ["HEALTHY", "DEGRADED", "UNHEALTHY", "UNKNOWN"];
    let mut incremental = ViewMerger::new(config.clone()).unwrap();
    let mut at_once = ViewMerger::new(config.clone()).unwrap();
    let mut dead = Vec::new();
    let mut seed = 7u64;
    let mut next = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize
    };
    for round in 0..20 {
        let mut w = ViewWorker::new(config.clone()).unwrap();
        let names: Vec<String> = (0..40)
            .map(|_| format!("svc-{}", next() % (10 + 5 * round)))
            .collect();
        let rows: Vec<(&str, &str, i64)> = names
            .iter()
            .map(|n| (n.as_str(), statuses[next() % 4], (next() % 1000) as i64))
            .collect();
        w.process(&p, &events(&rows), &[], &mut dead).unwrap();
        for part in w.barrier_handover().unwrap() {
            at_once.merge(part.clone()).unwrap();
            incremental.merge(part).unwrap();
        }
        if round % 3 == 0 {
            incremental.live(Vec::new()).unwrap();
        }
    }
    let a = rows(&incremental.live(Vec::new()).unwrap());
    let b = rows(&at_once.live(Vec::new()).unwrap());
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        // counts equal; the latest status may differ only between ties of the newest time
        assert_eq!((&x.0, x.2), (&y.0, y.2));
    }
    let total: i64 = a.iter().map(|r| r.2).sum();
    assert_eq!(total, 20 * 40);
    // checkpoint copies are the folded arrays
    let saved = incremental.snapshot().unwrap();
    assert_eq!(saved[0].keys[0].len(), a.len());
}

#[test]
fn a_where_keeps_only_the_rows_it_passes() {
    let base = config();
    let predicate = SqlCompiler::new()
        .predicate("healthStatus <> 'HEALTHY'", &base.input_schema)
        .unwrap();
    let config = Arc::new(ViewConfig {
        name: base.name.clone(),
        input_schema: base.input_schema.clone(),
        predicate: Some(predicate),
        keys: base.keys.clone(),
        aggregates: base.aggregates.clone(),
        retain_ms: None,
        partition_state: false,
        changelog: true,
    });
    let p = partition();
    let mut w = ViewWorker::new(config.clone()).unwrap();
    let mut m = ViewMerger::new(config).unwrap();
    let mut dead = Vec::new();
    let batch = events(&[("a", "HEALTHY", 1), ("a", "DOWN", 2), ("b", "HEALTHY", 3)]);
    w.process(&p, &batch, &[], &mut dead).unwrap();
    w.process(&p, &events(&[("c", "HEALTHY", 4)]), &[], &mut dead)
        .unwrap();
    barrier(&mut m, &mut [&mut w]);
    assert_eq!(
        rows(&m.live(Vec::new()).unwrap()),
        vec![("a".into(), "DOWN".into(), 1)]
    );
}
