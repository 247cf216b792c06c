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
        (u64::MAX - 1, 0),
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
    Envelope::write(&mut out, "t", 0, (0, 0), std::iter::empty(), b"");
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
    Envelope::write(&mut cut, "t", 1, (2, 0), headers.iter().copied(), b"x");
    assert_eq!(Envelope::open(&cut[..cut.len() - 12]), None);
}

/// A partition that started over writes its generation; one that never did writes what weir
/// wrote before generations existed, so that a pool upgraded while running reads on.
#[test]
fn an_envelope_carries_its_partitions_generation_when_it_has_one() {
    let headers: Vec<(&[u8], Option<&[u8]>)> = vec![(b"h", Some(b"v"))];
    let mut out = Vec::new();
    Envelope::write(&mut out, "t", 2, (5, 3), headers.iter().copied(), b"{}");
    assert!(out.starts_with(b"weir\x03"));
    let e = Envelope::open(&out).expect("an envelope");
    assert_eq!(
        (e.topic, e.partition, e.offset, e.generation, e.payload),
        (Some(&b"t"[..]), 2, 5, 3, &b"{}"[..])
    );
    assert_eq!(e.sequence(), (3 << 48) + 5);
    assert_eq!(
        e.headers().collect::<Vec<_>>(),
        vec![("h", Some(&b"v"[..]))]
    );
    assert_eq!(Envelope::open(&out[..out.len() - 3]), None, "cut short");
    out.clear();
    Envelope::write(&mut out, "t", 2, (5, 0), headers.iter().copied(), b"{}");
    assert!(out.starts_with(b"weir\x02"));
    let e = Envelope::open(&out).expect("an envelope");
    assert_eq!((e.offset, e.generation, e.sequence()), (5, 0, 5));
}

/// Every sequence of a later generation comes after every one of an earlier generation.
#[test]
fn a_later_generation_comes_after_every_offset_of_an_earlier_one() {
    use envelope::{generation_of, sequence};
    assert_eq!(
        sequence(u64::MAX, 0),
        u64::MAX,
        "generation 0: the offset as it is"
    );
    assert!(sequence(0, 1) > sequence((1 << 48) - 2, 0));
    assert!(sequence(0, 2) > sequence((1 << 48) - 1, 1));
    assert!(
        sequence(0, 2) > sequence(u64::MAX, 1),
        "an offset past 2^48 saturates"
    );
    assert_eq!(generation_of(sequence(7, 9)), 9);
    assert_eq!(generation_of(sequence(7, 0)), 0);
}

#[test]
fn an_envelope_of_weir_0_1_0_has_no_topic() {
    let mut out = Vec::new();
    let headers: Vec<(&[u8], Option<&[u8]>)> = vec![(b"h", Some(b"v"))];
    Envelope::write_as(&mut out, None, 3, (41, 0), headers.iter().copied(), b"{}");
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
