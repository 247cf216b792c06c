//! Envelopes and names of the internal topic.

use super::*;

#[test]
fn an_envelope_gives_back_what_was_put_in_and_junk_is_refused() {
    let headers: Vec<(&[u8], Option<&[u8]>)> = vec![
        (b"traceparent", Some(b"00-abc-01")),
        (b"empty", None),
        ("clé".as_bytes(), Some(b"")),
    ];
    let mut out = Vec::new();
    Envelope::write(
        &mut out,
        "orders.v2",
        7,
        u64::MAX - 1,
        headers.iter().copied(),
        b"{\"a\":1}",
    );
    let e = Envelope::open(&out).expect("an envelope");
    assert_eq!(
        (e.topic, e.partition, e.offset, e.payload),
        (Some(&b"orders.v2"[..]), 7, u64::MAX - 1, &b"{\"a\":1}"[..])
    );
    let back: Vec<(&str, Option<&[u8]>)> = e.headers().collect();
    assert_eq!(
        back,
        vec![
            ("traceparent", Some(&b"00-abc-01"[..])),
            ("empty", None),
            ("clé", Some(&b""[..]))
        ]
    );
    // no headers, empty payload
    out.clear();
    Envelope::write(&mut out, "t", 0, 0, std::iter::empty(), b"");
    let e = Envelope::open(&out).expect("an envelope");
    assert_eq!(
        (
            e.topic,
            e.partition,
            e.offset,
            e.payload,
            e.headers().count()
        ),
        (Some(&b"t"[..]), 0, 0, &b""[..], 0)
    );
    // not an envelope, or cut short
    assert_eq!(Envelope::open(b"{\"datasetName\":\"x\"}"), None);
    assert_eq!(Envelope::open(&out[..10]), None);
    assert_eq!(Envelope::open(&out[..7]), None);
    let mut cut = Vec::new();
    Envelope::write(&mut cut, "t", 1, 2, headers.iter().copied(), b"x");
    assert_eq!(Envelope::open(&cut[..cut.len() - 12]), None);
}

#[test]
fn an_envelope_of_weir_0_1_0_has_no_topic() {
    let mut out = Vec::new();
    let headers: Vec<(&[u8], Option<&[u8]>)> = vec![(b"h", Some(b"v"))];
    Envelope::write_as(&mut out, None, 3, 41, headers.iter().copied(), b"{}");
    assert!(out.starts_with(b"weir\x01"));
    let e = Envelope::open(&out).expect("an envelope");
    assert_eq!(
        (e.topic, e.partition, e.offset, e.payload),
        (None, 3, 41, &b"{}"[..])
    );
    assert_eq!(
        e.headers().collect::<Vec<_>>(),
        vec![("h", Some(&b"v"[..]))]
    );
}

#[test]
fn the_internal_topic_is_named_after_the_pipeline_and_source() {
    assert_eq!(
        internal_topic("ingestion", "events"),
        "ingestion-events-repartition"
    );
}
