//! JSON lines -> Arrow: rows per second on one core.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weir_benches::{bench_decoder, ingestion_lines};

fn decode(c: &mut Criterion) {
    let rows = 4096u64;
    let lines = ingestion_lines(rows);
    let decoder = bench_decoder();
    let mut g = c.benchmark_group("json_decoder");
    g.throughput(Throughput::Elements(rows));
    g.bench_function("data_ingestion_4096_rows_5_columns", |b| {
        b.iter(|| {
            let d = decoder.decode_lines(&lines, 0);
            assert!(d.bad.is_empty());
            d.events
        })
    });
    g.throughput(Throughput::Bytes(lines.len() as u64));
    g.bench_function("data_ingestion_bytes", |b| {
        b.iter(|| decoder.decode_lines(&lines, 0))
    });
    g.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
