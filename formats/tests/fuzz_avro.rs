//! A bounded fuzz harness of the Avro transcoder: random and mutated records against schemas
//! with every kind of type (records, unions, arrays and maps of nulls, bytes, fixed, enums,
//! nesting) must transcode or fail without a panic, within the per-record output cap and
//! quickly, however large the counts and lengths they announce.
//!
//! `cargo test -p weir-formats --test fuzz_avro` runs a few thousand cases; `WEIR_FUZZ_CASES`
//! and `WEIR_FUZZ_SEED` set the count and the seed (`scripts/fuzz.sh` runs the harnesses for
//! hours). A failing case prints its seed and bytes: add them to `REGRESSIONS`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

#[path = "support/fuzz.rs"]
mod support;

use support::Rng;
use weir_formats::avro::{record_to_json, AvroLimits, AvroType};

const SCHEMAS: &[&str] = &[
    include_str!("../../tests/kafka/data-ingestion.avsc"),
    r#"{"type":"array","items":"null"}"#,
    r#"{"type":"map","values":{"type":"array","items":"null"}}"#,
    r#"{"type":"record","name":"r","fields":[
        {"name":"a","type":["null","long","string",{"type":"array","items":"bytes"}]},
        {"name":"b","type":{"type":"fixed","name":"f","size":16}},
        {"name":"c","type":{"type":"enum","name":"e","symbols":["A","B","C"]}},
        {"name":"d","type":{"type":"map","values":["null","double","float","boolean"]}},
        {"name":"n","type":{"type":"array","items":{"type":"array","items":{"type":"map","values":"null"}}}}
    ]}"#,
];

/// Records known to be hostile (the issue's bombs), checked on every run, as (schema index,
/// bytes); a failing fuzz case goes here too.
const REGRESSIONS: &[(usize, &[u8])] = &[
    // a block of 2^62 nulls in 11 bytes
    (
        1,
        &[
            0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 0,
        ],
    ),
    // i64::MIN as a block count
    (
        1,
        &[
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0,
        ],
    ),
];

/// A zig-zag varint of `v`, as Avro writes longs.
fn varint(v: i64, out: &mut Vec<u8>) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let byte = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
}

/// Random bytes biased toward what Avro decoders trip on: huge and negative varints, zero
/// bytes (union branch 0, end of blocks), short strings.
fn record(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    if rng.below(4) == 0 {
        // the Confluent wire format's header
        out.extend_from_slice(&[0, 0, 0, 0, rng.below(3) as u8]);
    }
    for _ in 0..rng.below(24) {
        match rng.below(6) {
            0 => varint(rng.next() as i64, &mut out),
            1 => varint(rng.below(8) as i64 - 2, &mut out),
            2 => out.push(0),
            3 => {
                let n = rng.below(12);
                varint(n as i64, &mut out);
                out.extend((0..n).map(|_| b'a' + rng.below(26) as u8));
            }
            4 => varint(i64::MAX - rng.below(4) as i64, &mut out),
            _ => out.push(rng.next() as u8),
        }
    }
    out
}

/// Transcodes `bytes` with `schema`; an error message when it panics, overruns the cap or
/// takes too long.
fn check(schema: &AvroType, bytes: &[u8], limits: &AvroLimits) -> Result<(), String> {
    let started = Instant::now();
    let mut out = Vec::new();
    let result = catch_unwind(AssertUnwindSafe(|| {
        record_to_json(schema, bytes, &mut out, limits)
    }));
    if result.is_err() {
        return Err("panicked".into());
    }
    if out.len() > limits.max_record_bytes {
        return Err(format!("{} bytes of output, over the cap", out.len()));
    }
    if started.elapsed() > Duration::from_secs(2) {
        return Err(format!("took {:?}", started.elapsed()));
    }
    Ok(())
}

#[test]
fn avro_records_never_panic_overrun_or_spin() {
    let schemas: Vec<AvroType> = SCHEMAS
        .iter()
        .map(|s| AvroType::parse(s).unwrap())
        .collect();
    let limits = AvroLimits {
        max_record_bytes: 1 << 20,
        max_items: 100_000,
        max_empty_items: 10_000,
    };
    for (i, bytes) in REGRESSIONS {
        check(&schemas[*i], bytes, &limits).unwrap_or_else(|e| panic!("regression {i}: {e}"));
    }
    let cases = support::cases(200_000);
    let seed = support::seed(0x5eed_a7f0);
    let mut rng = Rng(seed.max(1));
    for case in 0..cases {
        let which = rng.below(schemas.len());
        let bytes = record(&mut rng);
        if let Err(e) = check(&schemas[which], &bytes, &limits) {
            panic!("seed {seed}, case {case}, schema {which}: {e}; bytes {bytes:?}");
        }
    }
}
