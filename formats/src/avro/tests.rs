//! Tests of the Avro decoder: transcoding, limits, names, framing, registry waits.

use super::*;

const SCHEMA: &str = r#"{"type":"record","name":"R","fields":[
    {"name":"id","type":"string"},{"name":"n","type":"long"},
    {"name":"s","type":{"type":"enum","name":"S","symbols":["A","B"]}},
    {"name":"m","type":["null",{"type":"map","values":"string"}]},
    {"name":"d","type":"double"},{"name":"ok","type":"boolean"},
    {"name":"xs","type":{"type":"array","items":"int"}}]}"#;

fn zigzag(v: i64, out: &mut Vec<u8>) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        if z < 0x80 {
            out.push(z as u8);
            return;
        }
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
}

fn record() -> Vec<u8> {
    let mut b = Vec::new();
    zigzag(3, &mut b);
    b.extend_from_slice("é\"1".as_bytes()[..3].as_ref());
    zigzag(-1234567890123, &mut b);
    zigzag(1, &mut b); // enum B
    zigzag(1, &mut b); // union branch: map
    zigzag(1, &mut b); // one entry
    zigzag(1, &mut b);
    b.push(b'k');
    zigzag(1, &mut b);
    b.push(b'v');
    zigzag(0, &mut b); // end of map
    b.extend_from_slice(&2.5f64.to_le_bytes());
    b.push(1);
    zigzag(-2, &mut b); // a block of 2 items, with its byte size
    zigzag(2, &mut b);
    zigzag(7, &mut b);
    zigzag(-7, &mut b);
    zigzag(0, &mut b);
    b
}

#[test]
fn transcodes_plain_and_confluent_records() {
    let schema = AvroType::parse(SCHEMA).unwrap();
    let mut out = Vec::new();
    record_to_json(&schema, &record(), &mut out, &AvroLimits::default()).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["id"], "é\"");
    assert_eq!(v["n"], -1234567890123i64);
    assert_eq!(v["s"], "B");
    assert_eq!(v["m"]["k"], "v");
    assert_eq!(v["d"], 2.5);
    assert_eq!(v["ok"], true);
    assert_eq!(v["xs"], serde_json::json!([7, -7]));
    let mut framed = vec![0, 0, 0, 0, 42];
    framed.extend(record());
    let mut out2 = Vec::new();
    record_to_json(&schema, &framed, &mut out2, &AvroLimits::default()).unwrap();
    assert_eq!(out, out2);
}

#[test]
fn decoded_messages_keep_keys_headers_and_original_bytes() {
    use crate::message_columns::MessageColumn;
    use crate::schema::SourceSchema;
    use arrow::array::AsArray;
    let schema = Arc::new(SourceSchema::from_avsc(SCHEMA).unwrap());
    let json = JsonDecoder::new(schema, &["id".to_string()], "n")
        .unwrap()
        .with_message_columns(vec![MessageColumn::Key, MessageColumn::Headers]);
    let decoder = AvroDecoder::new(AvroType::parse(SCHEMA).unwrap(), json);
    let good = record();
    let mut bytes = b"not avro".to_vec();
    let bad_end = bytes.len() as u32;
    bytes.extend_from_slice(&good);
    let good_end = bytes.len() as u32;
    bytes.extend_from_slice(b"k1hv");
    let messages = Messages {
        bytes: SharedBytes::from(bytes),
        payloads: vec![(0, bad_end), (bad_end, good_end)],
        offsets: vec![7, 8],
        keys: vec![None, Some((good_end, good_end + 2))],
        timestamps: vec![None, Some(5)],
        headers: vec![(0, 0), (0, 1)],
        header_fields: vec![(
            (good_end + 2, good_end + 3),
            Some((good_end + 3, good_end + 4)),
        )],
        lane: None,
    };
    let d = decoder.decode_messages(&messages, 0);
    assert_eq!(d.records, 2);
    assert_eq!(d.bad.len(), 1);
    assert_eq!(
        (d.bad[0].offset, d.bad[0].raw.as_slice()),
        (7, &b"not avro"[..])
    );
    assert_eq!(d.bad[0].error.code, "invalid_avro");
    let ev = d.events.unwrap();
    assert_eq!(ev.offsets, vec![8]);
    assert_eq!(ev.batch.column(1).as_string::<i32>().value(0), "k1");
    assert_eq!(ev.batch.column(2).as_map().value_length(0), 1);
    assert_eq!(ev.raw_row(0).unwrap(), good);
}

fn to_json(schema: &AvroType, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), AvroDecodeError> {
    record_to_json(schema, bytes, out, &AvroLimits::default())
}

/// The issue's bomb: `{"type":"array","items":"null"}` and a block count of 2^62 in a
/// few bytes; and i64::MIN as a block count. Refused at once, without growing memory.
#[test]
fn block_counts_are_bounded_by_items_and_bytes_left() {
    let nulls = AvroType::parse(r#"{"type":"array","items":"null"}"#).unwrap();
    // this thread's time on a CPU, not the wall clock: a loaded machine (CI running tests
    // in parallel) once held the thread off its CPU for a second
    let on_cpu = || {
        let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
        let ns = stat.split_whitespace().next().unwrap().parse().unwrap();
        std::time::Duration::from_nanos(ns)
    };
    let started = on_cpu();
    for count in [1i64 << 62, i64::MIN, i64::MAX, 1_000_001] {
        let mut b = Vec::new();
        zigzag(count, &mut b);
        if count < 0 {
            zigzag(0, &mut b);
        }
        zigzag(0, &mut b);
        let mut out = Vec::new();
        let e = to_json(&nulls, &b, &mut out).unwrap_err();
        assert!(matches!(e, AvroDecodeError::TooManyItems { .. }), "{e}");
        assert!(e.to_string().contains("items"), "{e}");
        assert!(out.is_empty());
    }
    let used = on_cpu() - started;
    assert!(
        used < std::time::Duration::from_secs(1),
        "refusing took {used:?} of CPU"
    );
    // within the limit: decoded
    let mut b = Vec::new();
    zigzag(3, &mut b);
    zigzag(0, &mut b);
    let mut out = Vec::new();
    to_json(&nulls, &b, &mut out).unwrap();
    assert_eq!(out, b"[null,null,null]");
    // items that take bytes: a count over the bytes left is refused before reading
    let longs = AvroType::parse(r#"{"type":"array","items":"long"}"#).unwrap();
    let mut b = Vec::new();
    zigzag(500_000, &mut b);
    let e = to_json(&longs, &b, &mut Vec::new()).unwrap_err();
    assert_eq!(
        e,
        AvroDecodeError::BlockOverBytes {
            items: 500_000,
            left: 0
        }
    );
    assert!(e.to_string().contains("bytes left"), "{e}");
    // the output cap: nested arrays of nulls within the item count, over the bytes
    let small = AvroLimits {
        max_record_bytes: 100,
        max_items: 1_000_000,
        max_empty_items: 10_000,
    };
    let mut b = Vec::new();
    zigzag(1000, &mut b);
    zigzag(0, &mut b);
    let e = record_to_json(&nulls, &b, &mut Vec::new(), &small).unwrap_err();
    assert_eq!(e, AvroDecodeError::TooLarge(100));
    assert!(e.to_string().contains("more than 100 bytes"), "{e}");
}

/// Items that take no bytes are bounded apart from the others: four bytes of input cannot
/// decode to megabytes of JSON (in every message of a chunk), while items that take
/// bytes are bounded by the input itself.
#[test]
fn items_that_take_no_bytes_have_a_bound_of_their_own() {
    let nulls = AvroType::parse(r#"{"type":"array","items":"null"}"#).unwrap();
    let limits = AvroLimits::default();
    let block = |n: i64| {
        let mut b = Vec::new();
        zigzag(n, &mut b);
        zigzag(0, &mut b);
        b
    };
    let mut out = Vec::new();
    let e = record_to_json(&nulls, &block(1_000_000), &mut out, &limits).unwrap_err();
    assert_eq!(
        e,
        AvroDecodeError::TooManyEmptyItems {
            items: 1_000_000,
            left: 10_000
        }
    );
    assert!(out.is_empty());
    // in several blocks and nesting levels together
    let nested =
        AvroType::parse(r#"{"type":"array","items":{"type":"array","items":"null"}}"#).unwrap();
    let mut b = Vec::new();
    zigzag(3, &mut b);
    for _ in 0..3 {
        zigzag(4_000, &mut b);
        zigzag(0, &mut b);
    }
    zigzag(0, &mut b);
    let e = record_to_json(&nested, &b, &mut out, &limits).unwrap_err();
    assert!(
        matches!(e, AvroDecodeError::TooManyEmptyItems { left: 2_000, .. }),
        "{e}"
    );
    // within the bound: decoded
    record_to_json(&nulls, &block(10_000), &mut out, &limits).unwrap();
    let v: Vec<Value> = serde_json::from_slice(&out).unwrap();
    assert_eq!(v.len(), 10_000);
}

/// Named types are told apart by their full names: two enums of one short name in two
/// namespaces keep their own symbols, whichever was defined last.
#[test]
fn named_types_are_resolved_by_full_name() {
    let schema = AvroType::parse(
        r#"{"type":"record","name":"R","namespace":"com.x","fields":[
            {"name":"a","type":{"type":"enum","name":"Status","symbols":["OK","FAIL"]}},
            {"name":"b","type":{"type":"enum","name":"Status","namespace":"com.y",
              "symbols":["ON","OFF","UNKNOWN"]}},
            {"name":"c","type":"Status"},
            {"name":"d","type":"com.y.Status"},
            {"name":"e","type":{"type":"array","name":"Status","items":"int"}}
        ]}"#,
    )
    .unwrap();
    // a, b, c, d: enum index 1 each; e: an empty array
    let mut b = Vec::new();
    for _ in 0..4 {
        zigzag(1, &mut b);
    }
    zigzag(0, &mut b);
    let mut out = Vec::new();
    record_to_json(&schema, &b, &mut out, &AvroLimits::default()).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["a"], "FAIL");
    assert_eq!(v["b"], "OFF");
    // `Status` inside com.x is com.x.Status, not the one defined last
    assert_eq!(v["c"], "FAIL");
    assert_eq!(v["d"], "OFF");
    assert_eq!(v["e"], serde_json::json!([]));
    // a name given to an array names nothing
    let e = AvroType::parse(
        r#"{"type":"record","name":"R","fields":[
            {"name":"a","type":{"type":"array","name":"X","items":"int"}},
            {"name":"b","type":"X"}]}"#,
    )
    .unwrap_err();
    assert!(e.to_string().contains('X'), "{e}");
}

/// A record that reads both as plain Avro and in the wire format is refused, not read
/// as the wire format's other values; one that reads one way only is read that way.
#[test]
fn a_record_that_reads_both_plain_and_framed_is_refused() {
    let schema = AvroType::parse(
        r#"{"type":"record","name":"R","fields":[
            {"name":"a","type":"long"},{"name":"b","type":"string"}]}"#,
    )
    .unwrap();
    // plain: a = 0, b = "abc0\nhello" (length 10: byte 0x14); bytes 5.. read as a = 24
    // (0x30), b = "hello"
    let mut plain = vec![0x00, 0x14];
    plain.extend_from_slice(b"abc0\nhello");
    let mut out = Vec::new();
    let e = record_to_json(&schema, &plain, &mut out, &AvroLimits::default()).unwrap_err();
    assert_eq!(e, AvroDecodeError::AmbiguousFraming);
    assert!(out.is_empty());
    // a plain record starting with a zero byte that reads one way only
    let mut plain = vec![0x00, 0x0a];
    plain.extend_from_slice(b"hello");
    record_to_json(&schema, &plain, &mut out, &AvroLimits::default()).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!((v["a"].as_i64(), v["b"].as_str()), (Some(0), Some("hello")));
}

/// Records whose registry cannot be reached wait for it: none is bad (dead-lettered),
/// and once it answers they decode.
#[test]
fn records_wait_for_an_unreachable_registry_and_none_is_bad() {
    use crate::schema::SourceSchema;
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let schema = Arc::new(SourceSchema::from_avsc(SCHEMA).unwrap());
    let json = JsonDecoder::new(schema, &["id".to_string()], "n").unwrap();
    let registry = SchemaRegistry::new(&format!("http://127.0.0.1:{port}")).unwrap();
    let waiting = registry.waiting();
    let decoder = AvroDecoder::new(AvroType::parse(SCHEMA).unwrap(), json).with_registry(registry);
    let mut bytes = vec![0, 0, 0, 0, 1];
    bytes.extend(record());
    let end = bytes.len() as u32;
    let messages = Messages {
        bytes: SharedBytes::from(bytes),
        payloads: vec![(0, end)],
        offsets: vec![3],
        keys: vec![None],
        timestamps: vec![None],
        headers: vec![(0, 0)],
        header_fields: vec![],
        lane: None,
    };
    let decoding = std::thread::spawn(move || decoder.decode_messages(&messages, 0));
    let started = std::time::Instant::now();
    while waiting.lock().unwrap().is_none() {
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!decoding.is_finished());
    let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).unwrap();
        let body = serde_json::json!({ "schema": SCHEMA }).to_string();
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body.as_bytes()).unwrap();
    });
    let d = decoding.join().unwrap();
    assert!(d.bad.is_empty(), "{:?}", d.bad.first().map(|b| &b.error));
    assert_eq!(d.events.unwrap().offsets, vec![3]);
}

/// A writer schema without a field of the reader's that has a default: the default.
#[test]
fn missing_writer_fields_get_the_readers_defaults() {
    let writer =
        AvroType::parse(r#"{"type":"record","name":"W","fields":[{"name":"id","type":"string"}]}"#)
            .unwrap();
    let defaults = vec![
        ("id".to_string(), serde_json::json!("never")),
        ("n".to_string(), serde_json::json!(5)),
        ("tag".to_string(), Value::Null),
    ];
    let mut b = Vec::new();
    zigzag(1, &mut b);
    b.push(b'x');
    let mut out = b"[".to_vec();
    let start = out.len();
    to_json(&writer, &b, &mut out).unwrap();
    add_defaults(&mut out, start, &writer, &defaults);
    let v: Value = serde_json::from_slice(&out[start..]).unwrap();
    assert_eq!(v, serde_json::json!({"id": "x", "n": 5, "tag": null}));
    let empty = AvroType::parse(r#"{"type":"record","name":"E","fields":[]}"#).unwrap();
    let mut out = Vec::new();
    to_json(&empty, &[], &mut out).unwrap();
    add_defaults(&mut out, 0, &empty, &defaults[1..]);
    assert_eq!(out, br#"{"n":5,"tag":null}"#);
}

/// `bytes` and `fixed` decode losslessly, as the Avro JSON encoding writes them (code
/// points U+0000 to U+00FF); a string that is not UTF-8 is refused.
#[test]
fn bytes_are_kept_as_the_avro_json_encoding() {
    let t = AvroType::parse(
        r#"{"type":"record","name":"B","fields":[{"name":"b","type":"bytes"},{"name":"f","type":{"type":"fixed","name":"F","size":2}}]}"#,
    )
    .unwrap();
    let mut b = Vec::new();
    zigzag(3, &mut b);
    b.extend_from_slice(&[0xff, 0x00, b'a']);
    b.extend_from_slice(&[0xc3, 0x28]);
    let mut out = Vec::new();
    to_json(&t, &b, &mut out).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    let back: Vec<u8> = v["b"].as_str().unwrap().chars().map(|c| c as u8).collect();
    assert_eq!(back, vec![0xff, 0x00, b'a']);
    let back: Vec<u8> = v["f"].as_str().unwrap().chars().map(|c| c as u8).collect();
    assert_eq!(back, vec![0xc3, 0x28]);
    let s = AvroType::parse(r#""string""#).unwrap();
    let mut b = Vec::new();
    zigzag(2, &mut b);
    b.extend_from_slice(&[0xc3, 0x28]);
    assert!(to_json(&s, &b, &mut Vec::new()).is_err());
}

#[test]
fn bad_records_are_errors_never_panics() {
    let schema = AvroType::parse(SCHEMA).unwrap();
    let good = record();
    let mut out = Vec::new();
    for cut in 0..good.len() {
        assert!(to_json(&schema, &good[..cut], &mut out).is_err(), "{cut}");
        assert!(out.is_empty());
    }
    let mut extra = good.clone();
    extra.push(0);
    assert!(to_json(&schema, &extra, &mut out).is_err());
    assert!(to_json(&schema, br#"{"id":"json, not avro"}"#, &mut out).is_err());
    // every single-byte mutation is decoded or refused, never a panic
    for i in 0..good.len() {
        for b in [0u8, 1, 0x7f, 0x80, 0xff] {
            let mut m = good.clone();
            m[i] = b;
            let _ = to_json(&schema, &m, &mut Vec::new());
        }
    }
}
