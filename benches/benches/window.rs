//! The tumbling-window operator: rows per second on one core (partial aggregation, then the
//! merge of closed windows), on decoded data-ingestion batches.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use weir_benches::{bench_decoder, ingestion_lines};
use weir_engine::dead_letter::PartitionInfo;
use weir_engine::job::{MergeOperator, WorkerOperator};
use weir_operators::{SqlCompiler, TimeMode, WindowConfig, WindowMerger, WindowWorker};

fn window(c: &mut Criterion) {
    let rows = 4096usize;
    let decoder = bench_decoder();
    let events = decoder
        .decode_lines(&ingestion_lines(rows as u64 * 16), 0)
        .events
        .expect("events");
    let schema = decoder.output_schema();
    let aggs = [
        ("count", "count(*)"),
        ("sum_rc", "sum(recordCount)"),
        ("sum_sb", "sum(sizeBytes)"),
        ("max_sb", "max(sizeBytes)"),
        ("failures", "count(*) FILTER (WHERE status = 'FAILURE')"),
    ];
    let partition = Arc::new(PartitionInfo {
        source: "bench".into(),
        id: 0,
        state_id: 0,
        number: 0,
        topic: None,
        file: None,
    });
    let watermarks = vec![i64::MIN; events.batch.num_rows()];
    let mut g = c.benchmark_group("window_operator");
    g.throughput(Throughput::Elements(events.batch.num_rows() as u64));
    // weir's integer sums (exact in Decimal128, Int64 results), and DataFusion's own (wrapping)
    for (name, compiler) in [
        ("1m_windows_by_dataset_5_aggregates", SqlCompiler::new()),
        (
            "1m_windows_by_dataset_5_aggregates_wrapping_sums",
            SqlCompiler::new().with_wrapping_sums(),
        ),
    ] {
        let config = Arc::new(WindowConfig {
            key_partitioned: false,
            partition_state: false,
            name: "bench".into(),
            input_schema: schema.clone(),
            predicate: None,
            keys: vec!["datasetName".into()],
            size_ms: 60_000,
            allowed_lateness_ms: 0,
            time: TimeMode::Event,
            aggregates: aggs
                .iter()
                .map(|(n, s)| compiler.aggregate(n, s, &schema).expect("aggregate"))
                .collect(),
        });
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    (
                        WindowWorker::new(config.clone()).unwrap(),
                        WindowMerger::new(config.clone()).unwrap(),
                    )
                },
                |(mut worker, mut merger)| {
                    let mut dead = Vec::new();
                    worker
                        .process(&partition, &events, &watermarks, &mut dead)
                        .unwrap();
                    for p in worker.flush(i64::MAX).unwrap() {
                        merger.merge(p).unwrap();
                    }
                    merger.emit(i64::MAX).unwrap()
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, window);
criterion_main!(benches);
