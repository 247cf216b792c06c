//! Tests of the window operator.

use super::*;
use crate::SqlCompiler;
use arrow::array::{Int64Array, StringArray};

fn config(partition_state: bool) -> Arc<WindowConfig> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("datasetName", DataType::Utf8, true),
        Field::new("timestamp", DataType::Int64, true),
    ]));
    let c = SqlCompiler::new();
    Arc::new(WindowConfig {
        name: "per_dataset".into(),
        input_schema: schema.clone(),
        predicate: None,
        keys: vec!["datasetName".into()],
        size_ms: 60_000,
        allowed_lateness_ms: 0,
        time: TimeMode::Event,
        aggregates: vec![c.aggregate("events", "count(*)", &schema).unwrap()],
        key_partitioned: true,
        partition_state,
    })
}

fn events(config: &WindowConfig, rows: &[(&str, i64)]) -> EventBatch {
    let batch = RecordBatch::try_new(
        config.input_schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
        ],
    )
    .unwrap();
    EventBatch {
        batch,
        event_time: rows.iter().map(|r| r.1).collect(),
        offsets: (0..rows.len() as u64).collect(),
        raw: None,
    }
}

fn partition(id: usize) -> Arc<PartitionInfo> {
    Arc::new(PartitionInfo {
        source: "events".into(),
        id,
        state_id: id,
        number: id as u32,
        topic: None,
        file: None,
    })
}

/// (key, window_start, events) of emitted rows.
fn rows(batches: &[RecordBatch]) -> Vec<(String, i64, i64)> {
    let mut out = Vec::new();
    for b in batches {
        let k = b.column(0).as_string::<i32>();
        let s = b
            .column(1)
            .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        let n = b.column(3).as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..b.num_rows() {
            out.push((k.value(i).to_string(), s.value(i), n.value(i)));
        }
    }
    out.sort();
    out
}

#[test]
fn partition_state_is_hidden_from_results_and_cuts_a_checkpoint_by_partition() {
    let (plain, pooled) = (config(false), config(true));
    assert_eq!(
        plain.output_schema().unwrap(),
        pooled.output_schema().unwrap()
    );
    let mut w = WindowWorker::new(pooled.clone()).unwrap();
    let mut dead = Vec::new();
    let a = events(&pooled, &[("a", 1_000), ("a", 2_000), ("b", 61_000)]);
    w.process(&partition(0), &a, &[i64::MIN; 3], &mut dead)
        .unwrap();
    let b = events(&pooled, &[("c", 3_000)]);
    w.process(&partition(5), &b, &[i64::MIN], &mut dead)
        .unwrap();
    // partition 5's share of a checkpoint: key c alone
    let (saved, _) = w.snapshot().unwrap();
    let cut = weir_engine::checkpoint::partials_of_partitions(
        &saved,
        weir_engine::checkpoint::PartitionColumn::Key(0),
        &|p| p == 5,
    )
    .unwrap();
    let mut m = WindowMerger::new(pooled.clone()).unwrap();
    for p in cut {
        m.merge(p).unwrap();
    }
    assert_eq!(rows(&m.emit(i64::MAX).unwrap()), vec![("c".into(), 0, 1)]);
    // the whole state emits result rows without the partition column
    let mut all = WindowMerger::new(pooled).unwrap();
    let mut emitted = Vec::new();
    for f in w
        .flush_partitions(&[(0, i64::MAX), (5, i64::MAX)], i64::MAX)
        .unwrap()
    {
        for p in f.partials {
            all.merge_partition(f.partition, p).unwrap();
        }
        emitted.extend(all.emit_partition(f.partition, f.upto).unwrap());
    }
    assert_eq!(emitted[0].schema(), plain.output_schema().unwrap());
    assert_eq!(
        rows(&emitted),
        vec![
            ("a".into(), 0, 2),
            ("b".into(), 60_000, 1),
            ("c".into(), 0, 1)
        ]
    );
}

#[test]
fn an_integer_sum_never_wraps_it_is_null_when_out_of_range() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("datasetName", DataType::Utf8, true),
        Field::new("sizeBytes", DataType::Int64, true),
    ]));
    let c = SqlCompiler::new();
    let bytes = c.aggregate("bytes", "sum(sizeBytes)", &schema).unwrap();
    assert_eq!(bytes.output_field().data_type(), &DataType::Int64);
    let config = Arc::new(WindowConfig {
        name: "w".into(),
        input_schema: schema.clone(),
        predicate: None,
        keys: vec!["datasetName".into()],
        size_ms: 60_000,
        allowed_lateness_ms: 0,
        time: TimeMode::Event,
        aggregates: vec![bytes, c.aggregate("n", "count(*)", &schema).unwrap()],
        key_partitioned: false,
        partition_state: false,
    });
    let big = 1i64 << 62;
    let rows = [
        ("a", big),
        ("a", big),
        ("b", big),
        ("b", big),
        ("b", -big),
        ("c", i64::MAX),
        ("c", -1),
    ];
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
        ],
    )
    .unwrap();
    let ev = EventBatch {
        batch,
        event_time: vec![1_000; rows.len()],
        offsets: (0..rows.len() as u64).collect(),
        raw: None,
    };
    // two workers' partials merge without wrapping either
    let mut m = WindowMerger::new(config.clone()).unwrap();
    for half in [ev.batch.slice(0, 4), ev.batch.slice(4, 3)] {
        let n = half.num_rows();
        let part = EventBatch {
            batch: half,
            event_time: vec![1_000; n],
            offsets: (0..n as u64).collect(),
            raw: None,
        };
        let mut w = WindowWorker::new(config.clone()).unwrap();
        w.process(&partition(0), &part, &vec![i64::MIN; n], &mut Vec::new())
            .unwrap();
        for p in w.flush(i64::MAX).unwrap() {
            m.merge(p).unwrap();
        }
    }
    let out = m.emit(i64::MAX).unwrap();
    let b = &out[0];
    assert_eq!(b.schema().field(3).data_type(), &DataType::Int64);
    let sums = b.column(3).as_primitive::<arrow::datatypes::Int64Type>();
    // a: 2^63 does not fit: null, not -2^63; b: 2^62 exactly; c: i64::MAX - 1
    assert!(sums.is_null(0));
    assert_eq!(sums.value(1), big);
    assert_eq!(sums.value(2), i64::MAX - 1);
    assert_eq!(
        config.aggregates[0]
            .overflows
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

/// The rows a merger emits of partition `p` once every worker handed it over to `upto`.
fn hand_over(
    w: &mut WindowWorker,
    m: &mut WindowMerger,
    closing: &[(usize, i64)],
    upto: i64,
) -> Vec<(String, i64, i64)> {
    let mut out = Vec::new();
    for f in w.flush_partitions(closing, upto).unwrap() {
        for p in f.partials {
            m.merge_partition(f.partition, p).unwrap();
        }
        out.extend(rows(&m.emit_partition(f.partition, f.upto).unwrap()));
    }
    out
}

#[test]
fn a_lagging_partition_fills_its_windows_and_each_is_emitted_once_whole() {
    let config = config(true);
    assert!(config.closes_per_partition());
    let mut w = WindowWorker::new(config.clone()).unwrap();
    let mut m = WindowMerger::new(config.clone()).unwrap();
    let mut dead = Vec::new();
    let p0 = events(&config, &[("a", 1_000), ("a", 61_000)]);
    w.process(&partition(0), &p0, &[i64::MIN, 1_000], &mut dead)
        .unwrap();
    let p1 = events(&config, &[("b", 2_000)]);
    w.process(&partition(1), &p1, &[i64::MIN], &mut dead)
        .unwrap();
    // partition 0 passed the first window, partition 1 (idle, or claimed late) did not
    assert_eq!(
        hand_over(&mut w, &mut m, &[(0, 61_000), (1, 2_000)], 2_000),
        vec![("a".into(), 0, 1)]
    );
    // partition 1's later rows still fill its first window
    let more = events(&config, &[("b", 3_000), ("b", 4_000)]);
    w.process(&partition(1), &more, &[2_000, 3_000], &mut dead)
        .unwrap();
    assert!(dead.is_empty());
    assert_eq!(
        hand_over(&mut w, &mut m, &[(1, 61_000)], 61_000),
        vec![("b".into(), 0, 3)],
        "emitted once, with every row"
    );
    // after its partition passed it, a row for the window is late, never a second row
    let late = events(&config, &[("b", 5_000)]);
    let n = w
        .process(&partition(1), &late, &[i64::MIN], &mut dead)
        .unwrap();
    assert_eq!((n, dead.len()), (1, 1));
    assert!(hand_over(&mut w, &mut m, &[(1, 70_000)], 70_000).is_empty());
    // partition 0's second window closes at the end
    assert_eq!(
        hand_over(&mut w, &mut m, &[(0, i64::MAX), (1, i64::MAX)], i64::MAX),
        vec![("a".into(), 60_000, 1)]
    );
}

#[test]
fn a_restored_worker_keeps_each_partitions_windows_apart() {
    let config = config(true);
    let mut w = WindowWorker::new(config.clone()).unwrap();
    let mut dead = Vec::new();
    w.process(
        &partition(0),
        &events(&config, &[("a", 1_000), ("a", 2_000)]),
        &[i64::MIN; 2],
        &mut dead,
    )
    .unwrap();
    w.process(
        &partition(3),
        &events(&config, &[("c", 1_500)]),
        &[i64::MIN],
        &mut dead,
    )
    .unwrap();
    let (saved, flushed) = w.snapshot().unwrap();
    let bytes = weir_engine::checkpoint::encode_partials(&saved).unwrap();
    let mut r = WindowWorker::new(config.clone()).unwrap();
    r.restore(
        weir_engine::checkpoint::decode_partials(&bytes).unwrap(),
        flushed,
    )
    .unwrap();
    let mut m = WindowMerger::new(config.clone()).unwrap();
    assert_eq!(
        hand_over(&mut r, &mut m, &[(0, 60_000)], i64::MIN),
        vec![("a".into(), 0, 2)]
    );
    assert_eq!(
        hand_over(&mut r, &mut m, &[(3, 60_000)], 60_000),
        vec![("c".into(), 0, 1)]
    );
}

#[test]
fn a_checkpoint_without_partitions_is_restored_and_closed_with_every_partition() {
    // windows of a run from before windows closed per partition: no partition column
    let pooled = config(true);
    let mut plain = (*config(false)).clone();
    plain.key_partitioned = false;
    let plain = Arc::new(plain);
    let mut old = WindowWorker::new(plain.clone()).unwrap();
    old.process(
        &partition(0),
        &events(&plain, &[("a", 1_000)]),
        &[i64::MIN],
        &mut Vec::new(),
    )
    .unwrap();
    let (saved, flushed) = old.snapshot().unwrap();
    assert_eq!(saved[0].keys.len(), 1);
    let mut r = WindowWorker::new(pooled.clone()).unwrap();
    r.restore(saved, flushed).unwrap();
    let mut m = WindowMerger::new(pooled.clone()).unwrap();
    // partition 0 passed the window, the lowest partition did not: still held
    assert!(hand_over(&mut r, &mut m, &[(0, 60_000)], 30_000).is_empty());
    assert!(r.flush(30_000).unwrap().is_empty());
    for p in r.flush(60_000).unwrap() {
        m.merge(p).unwrap();
    }
    assert_eq!(rows(&m.emit(60_000).unwrap()), vec![("a".into(), 0, 1)]);
}

#[test]
fn a_restored_partition_keeps_its_windows_closed_where_they_were_emitted() {
    // partition 1 was idle: its first window was emitted with the source's watermark,
    // past its own; a checkpoint kept that, so its rows for the window stay late
    let config = config(true);
    let mut w = WindowWorker::new(config.clone()).unwrap();
    w.restore(Vec::new(), i64::MIN).unwrap();
    w.restore_closed(&[(1, 61_000)]).unwrap();
    let mut dead = Vec::new();
    let rows = events(&config, &[("b", 3_000), ("b", 62_000)]);
    let late = w
        .process(&partition(1), &rows, &[1_000, 3_000], &mut dead)
        .unwrap();
    assert_eq!((late, dead.len()), (1, 1));
    // another partition is not held to it
    let other = events(&config, &[("a", 3_000)]);
    assert_eq!(
        w.process(&partition(0), &other, &[1_000], &mut dead)
            .unwrap(),
        0
    );
}

#[test]
fn a_partition_read_here_late_is_not_held_to_the_others_progress() {
    // partition 1 is read elsewhere while partition 0 moves on (the worker's lowest closing
    // watermark, over the partitions read here, is partition 0's)
    let config = config(true);
    let mut w = WindowWorker::new(config.clone()).unwrap();
    let mut m = WindowMerger::new(config.clone()).unwrap();
    let mut dead = Vec::new();
    w.process(
        &partition(0),
        &events(&config, &[("a", 1_000), ("a", 130_000)]),
        &[i64::MIN, 1_000],
        &mut dead,
    )
    .unwrap();
    assert_eq!(
        hand_over(&mut w, &mut m, &[(0, 130_000)], 130_000),
        vec![("a".into(), 0, 1)]
    );
    // then it is assigned here, its rows far behind
    w.process(
        &partition(1),
        &events(&config, &[("b", 2_000), ("b", 3_000)]),
        &[i64::MIN, 2_000],
        &mut dead,
    )
    .unwrap();
    assert!(dead.is_empty(), "{dead:?}");
    assert!(hand_over(&mut w, &mut m, &[(1, 3_000)], 3_000).is_empty());
    assert_eq!(
        hand_over(&mut w, &mut m, &[(1, 60_000)], 60_000),
        vec![("b".into(), 0, 2)]
    );
}
