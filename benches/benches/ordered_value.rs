//! `last_value(status ORDER BY timestamp)` of strings, per group: weir's vectorised
//! accumulator against DataFusion 53's own (its row accumulator behind
//! `GroupsAccumulatorAdapter`), on the same decoded batch in the same run. The ratio of the
//! two throughputs is the figure to read.

use arrow::array::ArrayRef;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::GroupsAccumulatorAdapter;
use weir_benches::{bench_decoder, ingestion_lines};
use weir_operators::SqlCompiler;

fn ordered_value(c: &mut Criterion) {
    let decoder = bench_decoder();
    let events = decoder
        .decode_lines(&ingestion_lines(65_536), 0)
        .events
        .expect("events");
    let schema = decoder.output_schema();
    let batch = &events.batch;
    let agg = SqlCompiler::new()
        .aggregate("status", "last_value(status ORDER BY timestamp)", &schema)
        .expect("aggregate");
    assert!(agg.ordered_value.is_some(), "weir's accumulator serves it");
    let inputs: Vec<ArrayRef> = agg
        .inputs
        .iter()
        .map(|e| {
            e.evaluate(batch)
                .and_then(|v| v.into_array(batch.num_rows()))
                .expect("input")
        })
        .collect();
    let mut g = c.benchmark_group("last_value_of_strings");
    g.throughput(Throughput::Elements(batch.num_rows() as u64));
    for groups in [1_000usize, 100_000] {
        let ids: Vec<usize> = (0..batch.num_rows()).map(|i| (i * 7919) % groups).collect();
        let run = |mut acc: Box<dyn GroupsAccumulator>| {
            for (chunk, rows) in ids.chunks(4096).enumerate() {
                let at = chunk * 4096;
                let cols: Vec<ArrayRef> = inputs.iter().map(|a| a.slice(at, rows.len())).collect();
                acc.update_batch(&cols, rows, None, groups).expect("update");
            }
            acc.evaluate(EmitTo::All).expect("evaluate")
        };
        g.bench_function(format!("weir_{groups}_groups"), |b| {
            b.iter_batched(
                || agg.accumulator().expect("accumulator"),
                run,
                BatchSize::SmallInput,
            )
        });
        let f = agg.function.clone();
        g.bench_function(format!("datafusion_{groups}_groups"), |b| {
            b.iter_batched(
                || {
                    let f = f.clone();
                    Box::new(GroupsAccumulatorAdapter::new(move || {
                        f.create_accumulator()
                    })) as Box<dyn GroupsAccumulator>
                },
                run,
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, ordered_value);
criterion_main!(benches);
