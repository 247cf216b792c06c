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

#[test]
fn the_consumer_is_placed_where_the_durable_position_is() {
    use super::consumer::{placement, Existing, Placement};
    use NatsAckPolicy::{All, None as NoAck};
    let all = Existing {
        ack_all: true,
        acknowledges: true,
        ack_pending: 0,
        same_filter: true,
        floor: 500,
        origin: None,
    };
    // no consumer: at the checkpoint, else where the reading started
    assert_eq!(placement(All, None, None), Placement::Origin);
    assert_eq!(placement(NoAck, Some(7), None), Placement::Checkpoint(7));
    // a checkpoint wins over anything the server remembers
    assert_eq!(placement(All, Some(7), Some(all)), Placement::Checkpoint(7));
    // an `all` consumer with nothing pending continues where it is ...
    assert_eq!(placement(All, None, Some(all)), Placement::Keep);
    // ... unless messages are pending, its filters changed or the pipeline acknowledges nothing
    let pending = Existing {
        ack_pending: 3,
        ..all
    };
    assert_eq!(placement(All, None, Some(pending)), Placement::Floor(501));
    assert_eq!(placement(NoAck, None, Some(all)), Placement::Floor(501));
    let nothing_acked = Existing {
        floor: 0,
        ..pending
    };
    assert_eq!(placement(All, None, Some(nothing_acked)), Placement::Origin);
    // a consumer made by hand with explicit acknowledgements: its floor is durable too
    let explicit = Existing {
        ack_all: false,
        ..all
    };
    assert_eq!(placement(All, None, Some(explicit)), Placement::Floor(501));
    // a consumer that acknowledges nothing: where the reading started, never where its
    // deliveries got to (rows past the last checkpoint were never durable)
    let none = Existing {
        ack_all: false,
        acknowledges: false,
        floor: 900,
        origin: Some(42),
        ..all
    };
    assert_eq!(placement(NoAck, None, Some(none)), Placement::Origin);
    assert_eq!(placement(All, None, Some(none)), Placement::Origin);
    assert_eq!(
        placement(NoAck, Some(950), Some(none)),
        Placement::Checkpoint(950)
    );
}

#[test]
fn a_consumer_that_acknowledges_nothing_has_no_ack_limits() {
    let endpoint = crate::NatsEndpoint::new(vec!["nats://127.0.0.1:4222".into()], "t");
    let mut cfg = NatsSourceConfig::new(endpoint, "S", "c");
    let deliver = async_nats::jetstream::consumer::DeliverPolicy::All;
    let c = super::consumer::consumer_config(&cfg, NatsAckPolicy::All, deliver, Some(9));
    assert_eq!(
        c.ack_policy,
        async_nats::jetstream::consumer::AckPolicy::All
    );
    assert_eq!(c.max_ack_pending, DEFAULT_MAX_ACK_PENDING);
    assert_eq!(
        c.metadata.get(START_METADATA).map(String::as_str),
        Some("9")
    );
    cfg.ack_policy = NatsAckPolicy::None;
    let c = super::consumer::consumer_config(&cfg, NatsAckPolicy::None, deliver, None);
    assert_eq!(
        c.ack_policy,
        async_nats::jetstream::consumer::AckPolicy::None
    );
    assert!(c.metadata.is_empty());
}

#[test]
fn the_origin_is_pinned_and_kept() {
    use super::consumer::{start_of, Placement};
    use async_nats::jetstream::consumer::DeliverPolicy;
    let at = |start_sequence| DeliverPolicy::ByStartSequence { start_sequence };
    let (latest, earliest) = (NatsStartFrom::Latest, NatsStartFrom::Earliest);
    // a first start from `latest`: the sequence after the stream's last, kept
    assert_eq!(
        start_of(Placement::Origin, latest, None, 50),
        (at(51), Some(51))
    );
    // created again without checkpoint: where the reading started the first time
    assert_eq!(
        start_of(Placement::Origin, latest, Some(51), 900),
        (at(51), Some(51))
    );
    assert_eq!(
        start_of(Placement::Origin, earliest, Some(51), 900),
        (at(51), Some(51))
    );
    // at a checkpoint: there, the origin kept
    assert_eq!(
        start_of(Placement::Checkpoint(700), latest, Some(51), 900),
        (at(700), Some(51))
    );
    // after an acknowledgement floor (a pipeline that switched to `none`): the new origin, so
    // that a crash before the first checkpoint starts there again
    assert_eq!(
        start_of(Placement::Floor(300), latest, None, 900),
        (at(300), Some(300))
    );
    // other starts need no origin
    assert_eq!(
        start_of(Placement::Origin, earliest, None, 50),
        (DeliverPolicy::All, None)
    );
    let nine = NatsStartFrom::Sequence(9);
    assert_eq!(start_of(Placement::Origin, nine, None, 50), (at(9), None));
}

#[test]
fn on_an_interest_stream_a_restore_starts_at_the_first_unacknowledged_message() {
    use super::consumer::{unacknowledged_start, Placement};
    use async_nats::jetstream::consumer::DeliverPolicy;
    let at = |start_sequence| DeliverPolicy::ByStartSequence { start_sequence };
    // acknowledged up to 40, checkpoint at 100 (a crash mid-run, or a reconnection): from 41
    assert_eq!(
        unacknowledged_start(Placement::Checkpoint(100), at(100), 40),
        at(41)
    );
    // the acknowledgements of the checkpoint went out: its sequence
    assert_eq!(
        unacknowledged_start(Placement::Checkpoint(100), at(100), 99),
        at(100)
    );
    // acknowledged past the checkpoint (by another client): the checkpoint's sequence
    assert_eq!(
        unacknowledged_start(Placement::Checkpoint(100), at(100), 150),
        at(100)
    );
    // without a checkpoint nothing before the start is read again: the start stays
    assert_eq!(unacknowledged_start(Placement::Origin, at(500), 0), at(500));
    assert_eq!(
        unacknowledged_start(Placement::Origin, DeliverPolicy::All, 0),
        DeliverPolicy::All
    );
}
