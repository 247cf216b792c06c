use super::*;
use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;

fn decoder(cols: &[&str]) -> JsonDecoder {
    let s = Arc::new(SourceSchema::builtin("data-ingestion").unwrap());
    JsonDecoder::new(
        s,
        &cols.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        "timestamp",
    )
    .unwrap()
}

const GOOD: &str = r#"{"eventId":"evt-1","timestamp":1700000000123,"source":"s3","datasetName":"d\u00e9j\u00e0 \"q\"","recordCount":5,"sizeBytes":500,"format":"csv","location":"x","status":"SUCCESS","metadata":{"owner":"t","n":[1,2,{"a":null}]},"extra":[true,false,null,-1.5e3]}"#;

type Split = (Option<EventBatch>, Vec<(u64, Vec<u8>, ErrorInfo)>, u64);

fn run(lines: &[&str], cols: &[&str]) -> Split {
    let text = lines.join("\n");
    split(decoder(cols).decode_lines(&text.into_bytes().into(), 10))
}

fn split(d: DecodedLines) -> Split {
    (
        d.events,
        d.bad
            .into_iter()
            .map(|b| (b.offset, b.raw, b.error))
            .collect(),
        d.records,
    )
}

#[test]
fn reads_cloudevents_and_the_platform_envelope() {
    let schema = Arc::new(SourceSchema::builtin("data-ingestion").unwrap());
    let cols = vec!["datasetName".to_string(), "recordCount".to_string()];
    let by_envelope_time = JsonDecoder::enveloped(schema.clone(), &cols, "time").unwrap();
    let by_data_field = JsonDecoder::enveloped(schema.clone(), &cols, "timestamp").unwrap();
    assert!(JsonDecoder::enveloped(schema, &cols, "nope").is_err());
    let cloud = format!(
        r#"{{"specversion":"1.0","id":"1","type":"t","source":"/s","time":"2023-11-14T22:13:20.500Z","datacontenttype":"application/json","data":{GOOD}}}"#
    );
    let platform = format!(
        r#"{{"id":"2","type":"d.e.v1","occurred_at":"2023-11-14T22:13:21Z","payload":{GOOD},"metadata":{{"tenant_id":"x"}}}}"#
    );
    let no_data = r#"{"specversion":"1.0","time":"2023-11-14T22:13:20Z","data":"text"}"#;
    let no_time = format!(r#"{{"specversion":"1.0","data":{GOOD}}}"#);
    let text = [cloud.as_str(), platform.as_str(), no_data, no_time.as_str()].join("\n");
    let bytes: SharedBytes = text.into_bytes().into();
    let (ev, bad, n) = split(by_envelope_time.decode_lines(&bytes, 0));
    assert_eq!(n, 4);
    let ev = ev.unwrap();
    assert_eq!(ev.event_time, vec![1_700_000_000_500, 1_700_000_001_000]);
    assert_eq!(ev.batch.column(0).as_string::<i32>().value(1), "déjà \"q\"");
    assert_eq!(ev.batch.column(1).as_primitive::<Int64Type>().value(0), 5);
    let codes: Vec<_> = bad.iter().map(|b| (b.0, b.2.code)).collect();
    assert_eq!(codes, vec![(2, "missing_field"), (3, "bad_event_time")]);
    // event time from the data instead: the record without an envelope time is fine
    let (ev, bad, _) = split(by_data_field.decode_lines(&bytes, 0));
    assert_eq!(ev.unwrap().event_time, vec![1_700_000_000_123; 3]);
    assert_eq!(bad.len(), 1);
}

/// A `data` (or `payload`) repeated with a value that is not an object: the last one is the
/// record's, as `json.loads` keeps it, so the record has no data object (the earlier
/// object's fields were read as the record's). A later object replaces an earlier one.
#[test]
fn an_envelope_whose_last_data_is_not_an_object_has_no_data() {
    let schema = Arc::new(SourceSchema::builtin("data-ingestion").unwrap());
    let cols = vec!["datasetName".to_string(), "recordCount".to_string()];
    let decoder = JsonDecoder::enveloped(schema, &cols, "time").unwrap();
    let head = r#"{"specversion":"1.0","time":"2023-11-14T22:13:20Z""#;
    let other = GOOD.replace(r#""recordCount":5"#, r#""recordCount":7"#);
    let lines = [
        format!(r#"{head},"data":{GOOD},"data":5}}"#),
        format!(r#"{head},"data":{GOOD},"data":null}}"#),
        format!(r#"{head},"data":{GOOD},"data":[1]}}"#),
        format!(r#"{head},"payload":{GOOD},"payload":"x"}}"#),
        format!(r#"{head},"data":{GOOD},"data":{other}}}"#),
        format!(r#"{head},"data":5,"data":{other}}}"#),
    ];
    let bytes: SharedBytes = lines.join("\n").into_bytes().into();
    let (ev, bad, n) = split(decoder.decode_lines(&bytes, 0));
    assert_eq!(n, 6);
    let codes: Vec<_> = bad.iter().map(|b| (b.0, b.2.code)).collect();
    assert_eq!(
        codes,
        vec![
            (0, "missing_field"),
            (1, "missing_field"),
            (2, "missing_field"),
            (3, "missing_field")
        ]
    );
    let counts = ev
        .unwrap()
        .batch
        .column(1)
        .as_primitive::<Int64Type>()
        .clone();
    assert_eq!(counts.values(), &[7, 7], "the last data object's");
}

/// A lone UTF-16 surrogate escape in a field read as a string has no UTF-8 form: the record
/// is refused (`wrong_type`) rather than read with U+FFFD, which merged distinct keys
/// (`"\ud800"` and `"\udfff"` read as one). Pairs read as their character; a lone one in a
/// field not read is no matter (the record is valid JSON).
#[test]
fn a_lone_surrogate_in_a_string_read_is_refused_and_a_pair_is_read() {
    let with = |name: &str| GOOD.replace(r#""d\u00e9j\u00e0 \"q\"""#, name);
    let unread = GOOD.replace(r#""location":"x""#, r#""location":"\ud800""#);
    let lines = [
        with(r#""\ud800""#),
        with(r#""\udfff""#),
        with(r#""a\uD83D\u0041""#),
        with(r#""\udc00\ud800""#),
        with(r#""\ud83d\ude00""#),
        unread,
    ];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let (ev, bad, n) = run(&lines, &["datasetName", "recordCount"]);
    assert_eq!(n, 6);
    let codes: Vec<_> = bad.iter().map(|b| (b.0, b.2.code)).collect();
    assert_eq!(
        codes,
        vec![
            (10, "wrong_type"),
            (11, "wrong_type"),
            (12, "wrong_type"),
            (13, "wrong_type")
        ]
    );
    let ev = ev.unwrap();
    let names = ev.batch.column(0).as_string::<i32>();
    assert_eq!(names.value(0), "\u{1F600}");
    assert_eq!(names.value(1), "déjà \"q\"");
}

#[test]
fn integers_beyond_64_bits_are_refused_only_where_a_long_is_read() {
    let extra = GOOD.replace(r#""extra":["#, r#""big":-99999999999999999999,"extra":["#);
    let long = GOOD.replace(
        r#""recordCount":5"#,
        r#""recordCount":99999999999999999999"#,
    );
    let lowest = GOOD.replace(
        r#""recordCount":5"#,
        r#""recordCount":-9223372036854775808"#,
    );
    let (ev, bad, n) = run(&[&extra, &long, &lowest], &["datasetName", "recordCount"]);
    assert_eq!(n, 3);
    assert_eq!(
        bad.len(),
        1,
        "{:?}",
        bad.iter().map(|b| &b.2.message).collect::<Vec<_>>()
    );
    assert_eq!((bad[0].0, bad[0].2.code), (11, "wrong_type"));
    assert!(
        bad[0].2.message.contains("64-bit range"),
        "{}",
        bad[0].2.message
    );
    let ev = ev.unwrap();
    let counts = ev.batch.column(1).as_primitive::<Int64Type>();
    assert_eq!((counts.value(0), counts.value(1)), (5, i64::MIN));
}

#[test]
fn decodes_projected_columns_with_escapes() {
    let (ev, bad, n) = run(&[GOOD, GOOD], &["datasetName", "recordCount", "metadata"]);
    assert!(
        bad.is_empty(),
        "{:?}",
        bad.iter().map(|b| &b.2.message).collect::<Vec<_>>()
    );
    assert_eq!(n, 2);
    let ev = ev.unwrap();
    assert_eq!(ev.batch.num_columns(), 3);
    assert_eq!(ev.batch.column(0).as_string::<i32>().value(0), "déjà \"q\"");
    assert_eq!(ev.batch.column(1).as_primitive::<Int64Type>().value(1), 5);
    assert!(ev
        .batch
        .column(2)
        .as_string::<i32>()
        .value(0)
        .starts_with("{\"owner\""));
    assert_eq!(ev.event_time, vec![1_700_000_000_123, 1_700_000_000_123]);
    assert_eq!(ev.offsets, vec![10, 11]);
    assert_eq!(ev.raw_row(1).unwrap(), GOOD.as_bytes());
}

#[test]
fn classifies_bad_records_like_the_oracle() {
    let cases: Vec<(String, &str)> = vec![
        (GOOD[..40].to_string(), "invalid_json"),
        (
            GOOD.replace("1700000000123", "\"not-a-time\""),
            "bad_event_time",
        ),
        (
            GOOD.replace("\"timestamp\":1700000000123,", ""),
            "bad_event_time",
        ),
        (
            GOOD.replace(
                "\"recordCount\":5",
                "\"recordCount\":{\"nested\":\"object\"}",
            ),
            "wrong_type",
        ),
        (
            GOOD.replace("\"recordCount\":5", "\"recordCount\":5.0"),
            "wrong_type",
        ),
        (
            GOOD.replace("\"recordCount\":5", "\"recordCount\":true"),
            "wrong_type",
        ),
        (
            GOOD.replace("\"status\":\"SUCCESS\"", "\"status\":null"),
            "null_field",
        ),
        (GOOD.replace("\"source\":\"s3\",", ""), "missing_field"),
        (
            "this is not json at all \u{0}\u{ff}".to_string(),
            "invalid_json",
        ),
        ("[1,2]".to_string(), "not_an_object"),
        (" ".to_string(), "invalid_json"),
        (format!("{GOOD} {{}}"), "invalid_json"),
        (GOOD.replace("\"x\"", "\"a\tb\""), "invalid_json"),
        (
            GOOD.replace("\"recordCount\":5", "\"recordCount\":05"),
            "invalid_json",
        ),
        (
            GOOD.replace("\"recordCount\":5", "\"recordCount\":99999999999999999999"),
            "wrong_type",
        ),
    ];
    for (line, code) in &cases {
        let (ev, bad, n) = run(&[line], &["datasetName"]);
        assert!(ev.is_none(), "accepted: {line}");
        assert_eq!(n, 1);
        assert_eq!(bad[0].2.code, *code, "{line}: {}", bad[0].2.message);
        assert_eq!(bad[0].0, 10);
    }
}

#[test]
fn accepts_what_python_accepts() {
    let ok = [
        GOOD.replace(
            "\"metadata\":{\"owner\":\"t\",\"n\":[1,2,{\"a\":null}]}",
            "\"metadata\":null",
        ),
        GOOD.replace(
            ",\"metadata\":{\"owner\":\"t\",\"n\":[1,2,{\"a\":null}]}",
            "",
        ),
        format!("  {GOOD}\r"),
        GOOD.replace("\"recordCount\":5", "\"recordCount\":5,\"recordCount\":7"),
        GOOD.replace("\"extra\":[", "\"extra\":[NaN,-Infinity,Infinity,"),
        GOOD.replace("\"eventId\"", "\"event\\u0049d\""),
    ];
    for line in &ok {
        let (ev, bad, _) = run(&[line], &["recordCount"]);
        assert!(bad.is_empty(), "{line}: {}", bad[0].2.message);
        assert!(ev.is_some());
    }
    let (ev, _, _) = run(&[&ok[3]], &["recordCount"]);
    assert_eq!(
        ev.unwrap()
            .batch
            .column(0)
            .as_primitive::<Int64Type>()
            .value(0),
        7
    );
}

#[test]
fn invalid_utf8_is_bad_and_others_survive() {
    let mut text = GOOD.as_bytes().to_vec();
    text.push(b'\n');
    text.extend_from_slice(b"{\"eventId\":\"\xff\"}\n");
    text.extend_from_slice(GOOD.as_bytes());
    let (ev, bad, n) = split(decoder(&["datasetName"]).decode_lines(&text.into(), 0));
    assert_eq!(n, 3);
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].2.code, "invalid_utf8");
    assert_eq!(bad[0].0, 1);
    let ev = ev.unwrap();
    assert_eq!(ev.offsets, vec![0, 2]);
    assert_eq!(ev.batch.column(0).null_count(), 0);
}

#[test]
fn empty_lines_are_bad_records() {
    let (ev, bad, n) = run(&[GOOD, "", GOOD], &["datasetName"]);
    assert_eq!((n, bad.len(), ev.unwrap().batch.num_rows()), (3, 1, 2));
    assert_eq!(bad[0].0, 11);
}

#[test]
fn rfc3339_event_time() {
    let schema = Arc::new(SourceSchema::from_avsc(r#"{"type":"record","name":"r","fields":[{"name":"t","type":"string"},{"name":"k","type":["null","string"]}]}"#).unwrap());
    let d = JsonDecoder::new(schema, &["k".to_string()], "t").unwrap();
    let text = "{\"t\":\"2023-11-14T22:13:20.5Z\"}\n{\"t\":\"yesterday\",\"k\":\"a\"}";
    let (ev, bad, _) = split(d.decode_lines(&text.as_bytes().to_vec().into(), 0));
    assert_eq!(ev.unwrap().event_time, vec![1_700_000_000_500]);
    assert_eq!(bad[0].2.code, "bad_event_time");
}

#[test]
fn never_panics_on_mangled_input() {
    let d = decoder(&["datasetName", "recordCount", "metadata", "timestamp"]);
    let good = GOOD.as_bytes();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let specials = b"{}[]\",:\\-0123456789.eE+tfnul\x00\x7f\xc3\xa9\xff \t\r";
    let mut text = Vec::new();
    for cut in 0..good.len() {
        text.extend_from_slice(&good[..cut]);
        text.push(b'\n');
    }
    for _ in 0..20_000 {
        let mut line = good.to_vec();
        for _ in 0..(1 + next() % 4) {
            let at = (next() as usize) % line.len();
            match next() % 3 {
                0 => line[at] = specials[(next() as usize) % specials.len()],
                1 => {
                    line.remove(at);
                }
                _ => line.insert(at, specials[(next() as usize) % specials.len()]),
            }
        }
        line.retain(|&b| b != b'\n');
        text.extend_from_slice(&line);
        text.push(b'\n');
    }
    let lines = text.iter().filter(|&&b| b == b'\n').count() as u64;
    let (ev, bad, n) = split(d.decode_lines(&text.into(), 0));
    assert_eq!(n, lines);
    assert_eq!(
        ev.map_or(0, |e| e.batch.num_rows()) as u64 + bad.len() as u64,
        n
    );
}

/// A decoder sizes each buffer's columns from the one before, within bounds: a huge record
/// after a buffer of small ones is not given room for the rows its size would hold at their
/// length (a batch keeps its columns' spare room as long as it lives), and it decodes as a
/// fresh decoder decodes it.
#[test]
fn a_huge_record_after_small_ones_gets_no_room_for_thousands_of_rows() {
    let cols = ["datasetName", "recordCount", "status"];
    let line = |name: &str, i: usize| {
        format!(
            r#"{{"eventId":"e","timestamp":1700000000000,"source":"s","datasetName":"{name}","recordCount":{i},"sizeBytes":1,"format":"f","location":"l","status":"OK"}}"#
        )
    };
    let small: Vec<String> = (0..50).map(|i| line("d", i)).collect();
    let huge = line(&"d".repeat(4 << 20), 7);
    let shared = decoder(&cols);
    shared.decode_lines(&small.join("\n").into_bytes().into(), 0);
    let after = shared.decode_lines(&huge.clone().into_bytes().into(), 50);
    let after = after.events.unwrap();
    let fresh = run(&[huge.as_str()], &cols).0.unwrap();
    assert_eq!(after.batch, fresh.batch);
    let memory = after.batch.get_array_memory_size();
    assert!(
        memory < huge.len() + (64 << 10),
        "{memory} bytes of columns for one row of {} bytes",
        huge.len()
    );
}

#[test]
fn values_nested_to_the_limit_are_read_and_deeper_ones_refused_without_using_the_stack() {
    // a value nested `depth` deep in an unknown field, arrays and objects in turn
    let nested = |depth: usize| {
        let (mut open, mut close) = (String::new(), String::new());
        for i in 0..depth {
            if i % 2 == 0 {
                open.push_str("[ ");
                close.insert_str(0, " ]");
            } else {
                open.push_str(r#"{"k" : "#);
                close.insert(0, '}');
            }
        }
        GOOD.replacen(r#""extra":"#, &format!(r#""x":{open}7{close},"extra":"#), 1)
    };
    let (ok, too_deep) = (nested(MAX_DEPTH), nested(MAX_DEPTH + 1));
    // on a stack of 64 KiB: a recursive reader needs far more at this depth
    let (ev, bad, n) = std::thread::Builder::new()
        .stack_size(64 << 10)
        .spawn(move || run(&[&ok, &too_deep, &nested(100_000)], &["datasetName"]))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(ev.unwrap().batch.num_rows(), 1);
    let errors: Vec<_> = bad.iter().map(|b| (b.0, b.2.code)).collect();
    assert_eq!(errors, vec![(11, "invalid_json"), (12, "invalid_json")]);
    assert!(
        bad[0].2.message.contains("nested too deeply"),
        "{}",
        bad[0].2.message
    );
}
