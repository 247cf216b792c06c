//! A bounded fuzz harness of the JSON and CloudEvents decoders: records mutated from valid
//! ones (bytes flipped, cut, repeated, spliced; values swapped for other JSON values, deep
//! nesting, huge numbers, escapes, invalid UTF-8) must decode without a panic into rows and
//! dead letters that add up, and every row's event time must be the one its record carries.
//!
//! A second, differential harness decodes the same mutated records with the SIMD stage 1 of
//! the JSON scanner (the processor's best) and with its portable scalar one: rows, event
//! times, offsets and dead letters (codes, messages, details) must be identical.
//!
//! `cargo test -p weir-formats --test fuzz_decoders` runs a few thousand cases (seconds);
//! `WEIR_FUZZ_CASES` and `WEIR_FUZZ_SEED` set the count and the seed, and
//! `scripts/fuzz.sh` runs it for hours with fresh seeds. A case that fails prints its seed
//! and its input: add the input to `REGRESSIONS` below.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

#[path = "support/fuzz.rs"]
mod support;

use support::Rng;
use weir_engine::SharedBytes;
use weir_formats::json::DecodedLines;
use weir_formats::json::JsonDecoder;
use weir_formats::schema::SourceSchema;

/// Inputs that once failed (none so far), checked on every run.
const REGRESSIONS: &[&[u8]] = &[
    b"{\"timestamp\":1e400}",
    b"{\"timestamp\":-9223372036854775809}",
    b"{\"specversion\":\"1.0\",\"time\":\"9999-12-31T23:59:60.999999999+23:59\",\"data\":{}}",
    b"{\"data\":{\"data\":{\"data\":null}}}",
];

const SEEDS: &[&str] = &[
    r#"{"eventId":"evt-1","timestamp":1700000000000,"source":"spark","datasetName":"orders","recordCount":12,"sizeBytes":3400,"format":"parquet","location":"s3://lake/orders","status":"SUCCESS","metadata":{"pipeline":"p1","owner":"team"}}"#,
    r#"{"eventId":"evt-2","timestamp":"2026-11-22T10:05:00.123Z","source":"flink","datasetName":"ünïcödé \"quoted\"","recordCount":0,"sizeBytes":4611686018427387904,"format":"csv","location":"","status":"FAILURE","metadata":null}"#,
    r#"{"specversion":"1.0","id":"x","source":"/s","type":"t","time":"2026-11-22T10:05:00Z","datacontenttype":"application/json","data":{"eventId":"e","timestamp":1700000000000,"source":"s","datasetName":"d","recordCount":1,"sizeBytes":2,"format":"f","location":"l","status":"SUCCESS"}}"#,
    r#"{"event_id":"x","occurred_at":"2026-11-22T10:05:00Z","tenant_id":"t","trace_id":"0af7651916cd43dd8448eb211c80319c","payload":{"eventId":"e","timestamp":1700000000000,"source":"s","datasetName":"d","recordCount":1,"sizeBytes":2,"format":"f","location":"l","status":"PARTIAL"}}"#,
];

const VALUES: &[&str] = &[
    "null",
    "true",
    "0",
    "-0",
    "1e400",
    "-1e-400",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "1.5",
    "\"\"",
    "\"\\u0000\\ud800\\udfff\\\"\"",
    "\"not-a-time\"",
    "\"2026-02-30T00:00:00Z\"",
    "[]",
    "{}",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    "{\"a\":{\"b\":{\"c\":[1,2,{\"d\":null}]}}",
];

/// One mutation of `input`.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    let len = input.len();
    match rng.below(9) {
        0 if len > 0 => {
            let i = rng.below(len);
            input[i] ^= 1 << rng.below(8);
        }
        1 => input.truncate(rng.below(len + 1)),
        2 if len > 0 => {
            // repeat a slice
            let a = rng.below(len);
            let b = (a + rng.below(64)).min(len);
            let piece = input[a..b].to_vec();
            let at = rng.below(len + 1);
            input.splice(at..at, piece);
        }
        3 => {
            let at = rng.below(len + 1);
            let byte = [
                b'"', b'\\', b'{', b'}', b'[', b']', b':', b',', 0xff, 0xc3, b'\n', 0,
            ][rng.below(12)];
            input.insert(at, byte);
        }
        4 => {
            // a value swapped for another JSON value: after a ':' up to the next ',' or '}'
            let colons: Vec<usize> = (0..len).filter(|&i| input[i] == b':').collect();
            if let Some(&c) = colons.get(rng.below(colons.len())) {
                let end = (c + 1..len)
                    .find(|&i| input[i] == b',' || input[i] == b'}')
                    .unwrap_or(len);
                let v = VALUES[rng.below(VALUES.len())].as_bytes().to_vec();
                input.splice(c + 1..end, v);
            }
        }
        5 if len > 0 => {
            let a = rng.below(len);
            let b = (a + rng.below(32)).min(len);
            input.drain(a..b);
        }
        6 => {
            // splice another seed in
            let other = SEEDS[rng.below(SEEDS.len())].as_bytes();
            let at = rng.below(len + 1);
            let from = rng.below(other.len());
            input.splice(at..at, other[from..].iter().copied());
        }
        7 => {
            // a key renamed to another field's name (duplicates, envelope keys)
            let names = [
                "timestamp",
                "time",
                "occurred_at",
                "data",
                "payload",
                "specversion",
                "recordCount",
                "datasetName",
            ];
            let name = names[rng.below(names.len())];
            let quotes: Vec<usize> = (0..len).filter(|&i| input[i] == b'"').collect();
            if quotes.len() >= 2 {
                let q = rng.below(quotes.len() - 1);
                let (a, b) = (quotes[q], quotes[q + 1]);
                input.splice(a + 1..b, name.bytes());
            }
        }
        _ => {
            let n = rng.below(16);
            for _ in 0..n {
                let b = rng.next() as u8;
                let at = rng.below(input.len() + 1);
                input.insert(at, b);
            }
        }
    }
}

fn decoders() -> Vec<(&'static str, JsonDecoder)> {
    let schema = Arc::new(SourceSchema::builtin("data-ingestion").unwrap());
    let columns: Vec<String> = [
        "timestamp",
        "datasetName",
        "recordCount",
        "sizeBytes",
        "status",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    vec![
        (
            "json",
            JsonDecoder::new(schema.clone(), &columns, "timestamp").unwrap(),
        ),
        (
            "cloudevents",
            JsonDecoder::enveloped(schema.clone(), &columns, "time").unwrap(),
        ),
        (
            "cloudevents-data-time",
            JsonDecoder::enveloped(schema, &columns, "timestamp").unwrap(),
        ),
    ]
}

/// Decodes `lines` (one record a line) with every decoder; checks the counts add up.
fn check(decoders: &[(&str, JsonDecoder)], lines: &[Vec<u8>]) -> Result<(), String> {
    let mut bytes = Vec::new();
    for l in lines {
        bytes.extend(l.iter().copied().filter(|&b| b != b'\n'));
        bytes.push(b'\n');
    }
    let shared = SharedBytes::from(bytes);
    for (name, d) in decoders {
        let out = catch_unwind(AssertUnwindSafe(|| d.decode_lines(&shared, 0)))
            .map_err(|p| format!("{name}: panicked: {p:?}"))?;
        let rows = out.events.as_ref().map_or(0, |e| e.batch.num_rows());
        if rows + out.bad.len() != out.records as usize || out.records as usize != lines.len() {
            return Err(format!(
                "{name}: {} lines, {} records, {rows} rows, {} bad",
                lines.len(),
                out.records,
                out.bad.len()
            ));
        }
        if let Some(e) = &out.events {
            if e.event_time.len() != rows || e.offsets.len() != rows {
                return Err(format!(
                    "{name}: event times or offsets do not match the rows"
                ));
            }
            if e.offsets.windows(2).any(|w| w[0] >= w[1]) {
                return Err(format!("{name}: offsets out of order"));
            }
        }
        if let Some(b) = out.bad.iter().find(|b| b.error.code.is_empty()) {
            return Err(format!(
                "{name}: a dead letter without a code: {}",
                b.error.message
            ));
        }
    }
    Ok(())
}

#[test]
fn decoders_never_panic_and_account_for_every_record() {
    let cases = support::cases(20_000);
    let seed = support::seed(0x5eed_2222);
    eprintln!("fuzz_decoders: {cases} cases, seed {seed} (WEIR_FUZZ_SEED to repeat)");
    let decoders = decoders();
    let regressions: Vec<Vec<u8>> = REGRESSIONS.iter().map(|r| r.to_vec()).collect();
    check(&decoders, &regressions).unwrap();
    let mut rng = Rng(seed | 1);
    for case in 0..cases {
        let n = 1 + rng.below(8);
        let lines: Vec<Vec<u8>> = (0..n)
            .map(|_| {
                let mut l = SEEDS[rng.below(SEEDS.len())].as_bytes().to_vec();
                for _ in 0..1 + rng.below(6) {
                    mutate(&mut rng, &mut l);
                }
                l
            })
            .collect();
        if let Err(e) = check(&decoders, &lines) {
            let shown: Vec<String> = lines
                .iter()
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect();
            panic!("case {case} (seed {seed}): {e}\ninput lines: {shown:#?}");
        }
    }
}

/// Everything a decoding produced, in a comparable form.
fn fingerprint(d: &DecodedLines) -> String {
    let mut out = format!("records {}\n", d.records);
    if let Some(e) = &d.events {
        out += &format!("{:?}\n{:?}\n{:?}\n", e.batch, e.event_time, e.offsets);
    }
    for b in &d.bad {
        out += &format!(
            "bad {} {:?} {} {} {:?}\n",
            b.offset, b.raw, b.error.code, b.error.message, b.error.details
        );
    }
    out
}

/// A mutation that makes strings long or moves them across 16/32/64-byte block boundaries.
fn stretch(rng: &mut Rng, input: &mut Vec<u8>) {
    let quotes: Vec<usize> = (0..input.len()).filter(|&i| input[i] == b'"').collect();
    let Some(&q) = quotes.get(rng.below(quotes.len())) else {
        return;
    };
    let pieces: [&[u8]; 8] = [
        b"a",
        b"\\\"",
        b"\\\\",
        b"\\u00e9",
        "é".as_bytes(),
        "😀".as_bytes(),
        b"\x01",
        b" ",
    ];
    let piece = pieces[rng.below(pieces.len())];
    let times = 1 + rng.below(70);
    let at = q + 1;
    for _ in 0..times {
        input.splice(at..at, piece.iter().copied());
    }
}

#[test]
fn simd_and_portable_stage1_decode_alike() {
    let cases = support::cases(20_000);
    let seed = support::seed(0x5eed_3333);
    eprintln!("fuzz_decoders differential: {cases} cases, seed {seed} (WEIR_FUZZ_SEED to repeat)");
    let pairs: Vec<(&str, JsonDecoder, JsonDecoder)> = decoders()
        .into_iter()
        .zip(decoders())
        .map(|((name, simd), (_, scalar))| (name, simd, scalar.with_portable_stage1()))
        .collect();
    let mut rng = Rng(seed | 1);
    for case in 0..cases {
        let n = 1 + rng.below(8);
        let mut bytes = Vec::new();
        for _ in 0..n {
            let mut l = SEEDS[rng.below(SEEDS.len())].as_bytes().to_vec();
            for _ in 0..rng.below(4) {
                stretch(&mut rng, &mut l);
            }
            for _ in 0..rng.below(4) {
                mutate(&mut rng, &mut l);
            }
            bytes.extend(l.iter().copied().filter(|&b| b != b'\n'));
            bytes.push(b'\n');
        }
        // sometimes no final newline, sometimes a prefix that shifts every block boundary
        if rng.below(4) == 0 {
            bytes.pop();
        }
        let shift = rng.below(64);
        let mut shifted = vec![b'\n'; shift];
        shifted.extend_from_slice(&bytes);
        for input in [bytes, shifted] {
            let shared = SharedBytes::from(input.clone());
            for (name, simd, scalar) in &pairs {
                let a = fingerprint(&simd.decode_lines(&shared, 0));
                let b = fingerprint(&scalar.decode_lines(&shared, 0));
                if a != b {
                    panic!(
                        "case {case} (seed {seed}), {name}: SIMD and portable stage 1 differ\ninput: {:?}\nSIMD:\n{a}\nportable:\n{b}",
                        String::from_utf8_lossy(&input)
                    );
                }
            }
        }
    }
}
