use super::*;

#[test]
fn start_from_parses_every_form() {
    assert_eq!(parse_start_from("earliest"), Some(NatsStartFrom::Earliest));
    assert_eq!(parse_start_from("latest"), Some(NatsStartFrom::Latest));
    assert_eq!(parse_start_from("42"), Some(NatsStartFrom::Sequence(42)));
    assert_eq!(parse_start_from("0"), None);
    assert_eq!(
        parse_start_from("2026-11-24T10:00:00Z"),
        Some(NatsStartFrom::Time(1_795_514_400_000))
    );
    assert_eq!(parse_start_from("yesterday"), None);
}

#[test]
fn the_subject_is_stored_once_and_still_found_by_dead_letters() {
    let mut b = weir_engine::buffer::MessageBuffer::default();
    for (i, subject) in ["a.one", "b.two"].iter().enumerate() {
        let header = std::iter::once(("trace_id", Some(&b"t1"[..])));
        b.push_key_as_header(
            weir_engine::trace::NATS_SUBJECT_HEADER,
            (b"{}", subject.as_bytes()),
            5,
            header,
            false,
            i as u64 + 1,
        );
    }
    let m = b.take();
    // the header name once, then per message: payload and subject, nothing else
    let name = weir_engine::trace::NATS_SUBJECT_HEADER.len();
    assert_eq!(m.bytes.len(), name + 2 + 5 + 2 + 5 + 2 * (8 + 2));
    for (i, subject) in ["a.one", "b.two"].iter().enumerate() {
        assert_eq!(m.keys[i].map(|k| m.slice(k)), Some(subject.as_bytes()));
        let ids = weir_engine::trace::TraceIds::from_headers(m.header_pairs(i));
        assert_eq!(ids.subject.as_deref(), Some(*subject));
        assert_eq!(ids.trace_id.as_deref(), Some("t1"));
    }
}
