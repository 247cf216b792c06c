//! Event-time bounds: an event time far ahead of the wall clock is a broken record (a time in
//! microseconds read as milliseconds lands in the year 55,000), not an event from the future.
//! Such a row would move its partition's watermark years ahead and make every later event
//! late, in every checkpoint after it; so rows more than `event_time.max_future` ahead of the
//! wall clock are dead-lettered as bad, before they reach the partition's clock. So are
//! rows whose event time is outside the years 0000 to 9999 ([`MIN_EVENT_TIME_MS`],
//! [`MAX_EVENT_TIME_MS`]): Java's `Long.MIN_VALUE` written for "no time", say, whose window
//! would not fit in 64 bits (its start wraps) and would never close.

use std::sync::Arc;

use crate::dead_letter::PartitionInfo;
use crate::{DeadLetter, EngineError, ErrorInfo, EventBatch, Reason};

/// The dead-letter code of a row whose event time is too far ahead of the wall clock.
pub const FUTURE_EVENT_TIME: &str = "future_event_time";

/// `event_time.max_future` when a pipeline does not set it: one hour.
pub const DEFAULT_MAX_FUTURE_MS: i64 = 3_600_000;

/// The dead-letter code of a row whose event time is outside the years 0000 to 9999 (the
/// decoders' code for an event time they cannot read).
pub const BAD_EVENT_TIME: &str = "bad_event_time";

/// The earliest event time a row may have: 0000-01-01T00:00:00.000Z (Unix ms).
pub const MIN_EVENT_TIME_MS: i64 = -62_167_219_200_000;

/// The latest event time a row may have: 9999-12-31T23:59:59.999Z (Unix ms).
pub const MAX_EVENT_TIME_MS: i64 = 253_402_300_799_999;

/// `events` without the rows whose event time is outside the years 0000 to 9999 or, with
/// `max_future_ms`, more than that after `now` (`None` when no row is left); those rows are
/// pushed to `dead`. One pass over the event times when every row is in range (the common
/// case).
pub fn drop_out_of_range(
    events: EventBatch,
    (max_future_ms, now): (Option<i64>, i64),
    partition: &Arc<PartitionInfo>,
    dead: &mut Vec<DeadLetter>,
) -> Result<Option<EventBatch>, EngineError> {
    let limit = max_future_ms.map_or(MAX_EVENT_TIME_MS, |m| {
        now.saturating_add(m).min(MAX_EVENT_TIME_MS)
    });
    let fits = |t: i64| (MIN_EVENT_TIME_MS..=limit).contains(&t);
    if events.event_time.iter().all(|&t| fits(t)) {
        return Ok(Some(events));
    }
    let mut keep = Vec::with_capacity(events.event_time.len());
    for (i, &t) in events.event_time.iter().enumerate() {
        if fits(t) {
            keep.push(i as u32);
            continue;
        }
        let error = match max_future_ms {
            // above the range too: a time in microseconds is one ahead of the clock
            Some(m) if t > limit => ErrorInfo::new(
                FUTURE_EVENT_TIME,
                format!(
                    "the event time {} is {} s ahead of the wall clock, more than event_time.max_future ({} s)",
                    crate::time::format_rfc3339_ms(t),
                    t.saturating_sub(now) / 1000,
                    m / 1000
                ),
            )
            .with("wall_clock", now)
            .with("max_future_ms", m),
            _ => ErrorInfo::new(
                BAD_EVENT_TIME,
                format!(
                    "the event time {t} (Unix ms) is outside the years 0000 to 9999 that event times may have"
                ),
            ),
        };
        dead.push(DeadLetter {
            partition: partition.clone(),
            offset: events.offsets.get(i).copied(),
            trace: events.trace_of(i),
            reason: Reason::Bad,
            error: error.with("event_time", t),
            raw: events.raw_row(i),
        });
    }
    if keep.is_empty() {
        return Ok(None);
    }
    events
        .retain_rows(&keep)
        .map(Some)
        .map_err(|e| EngineError::source_caused(&partition.source, "", e))
}

/// Logs a warning when a checkpoint restores a partition whose newest event time is more than
/// `max_future_ms` ahead of `now`: it was checkpointed before the bound held (or with a larger
/// one), and its watermark makes every event late until the clock catches up. Restoring an
/// earlier checkpoint, or none, is the remedy; weir does not move a restored watermark back,
/// since windows it closed stay closed.
pub fn warn_if_restored_ahead(
    (source, partition): (&str, &str),
    newest: i64,
    (max_future_ms, now): (i64, i64),
) -> bool {
    let ahead = newest != crate::clock::WATERMARK_END && newest > now.saturating_add(max_future_ms);
    if ahead {
        tracing::warn!(
            source,
            partition,
            newest_event_time = %crate::time::format_rfc3339_ms(newest),
            "restored a partition whose newest event time is beyond event_time.max_future: its watermark makes later events late; restore an earlier checkpoint to undo it"
        );
    }
    ahead
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;

    fn events(times: &[i64]) -> EventBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("t", DataType::Int64, false)]));
        EventBatch {
            batch: RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(times.to_vec()))])
                .unwrap(),
            event_time: times.to_vec(),
            offsets: (10..10 + times.len() as u64).collect(),
            raw: None,
        }
    }

    fn partition() -> Arc<PartitionInfo> {
        Arc::new(PartitionInfo {
            source: "s".into(),
            id: 0,
            state_id: 0,
            number: 0,
            topic: None,
            file: None,
        })
    }

    #[test]
    fn rows_too_far_ahead_are_dead_lettered_and_the_rest_kept_in_order() {
        let now = 1_700_000_000_000;
        let micros = now * 1000;
        let mut dead = Vec::new();
        let kept = drop_out_of_range(
            events(&[now - 5, micros, now + 3_600_000, now + 3_600_001]),
            (Some(3_600_000), now),
            &partition(),
            &mut dead,
        )
        .unwrap()
        .unwrap();
        assert_eq!(kept.event_time, vec![now - 5, now + 3_600_000]);
        assert_eq!(kept.offsets, vec![10, 12]);
        let col = kept
            .batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(col.values().to_vec(), vec![now - 5, now + 3_600_000]);
        let got: Vec<_> = dead
            .iter()
            .map(|d| (d.offset, d.error.code, d.reason))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(11), FUTURE_EVENT_TIME, Reason::Bad),
                (Some(13), FUTURE_EVENT_TIME, Reason::Bad)
            ]
        );
        // nothing ahead: the batch passes as it is
        let all = drop_out_of_range(events(&[now]), (Some(0), now), &partition(), &mut dead)
            .unwrap()
            .unwrap();
        assert_eq!(all.batch.num_rows(), 1);
        // nothing left
        assert!(
            drop_out_of_range(events(&[micros]), (Some(0), now), &partition(), &mut dead)
                .unwrap()
                .is_none()
        );
        assert_eq!(dead.len(), 3);
        assert!(kept.batch.column(0).null_count() == 0);
    }

    /// An event time whose window would not fit in 64 bits (Java's `Long.MIN_VALUE` for "no
    /// time") is a bad row, with or without `max_future` (above the years, with it, a row ahead
    /// of the clock); the years 0000 to 9999 pass.
    #[test]
    fn event_times_outside_the_years_0000_to_9999_are_dead_lettered() {
        let now = 1_700_000_000_000;
        for max_future in [None, Some(3_600_000)] {
            let mut dead = Vec::new();
            let times = [
                i64::MIN,
                MIN_EVENT_TIME_MS - 1,
                MIN_EVENT_TIME_MS,
                now,
                MAX_EVENT_TIME_MS,
                i64::MAX,
            ];
            let kept =
                drop_out_of_range(events(&times), (max_future, now), &partition(), &mut dead)
                    .unwrap()
                    .unwrap();
            let expected = if max_future.is_some() {
                vec![MIN_EVENT_TIME_MS, now]
            } else {
                vec![MIN_EVENT_TIME_MS, now, MAX_EVENT_TIME_MS]
            };
            assert_eq!(kept.event_time, expected);
            let codes: Vec<_> = dead.iter().map(|d| (d.offset, d.error.code)).collect();
            let mut want = vec![(Some(10), BAD_EVENT_TIME), (Some(11), BAD_EVENT_TIME)];
            if max_future.is_some() {
                want.push((Some(14), FUTURE_EVENT_TIME));
                want.push((Some(15), FUTURE_EVENT_TIME));
            } else {
                want.push((Some(15), BAD_EVENT_TIME));
            }
            assert_eq!(codes, want);
        }
        assert_eq!(
            crate::time::format_rfc3339_ms(MIN_EVENT_TIME_MS),
            "0000-01-01T00:00:00.000Z"
        );
        assert_eq!(
            crate::time::format_rfc3339_ms(MAX_EVENT_TIME_MS),
            "9999-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn a_restored_partition_ahead_of_the_bound_is_flagged() {
        let now = 1_700_000_000_000;
        assert!(warn_if_restored_ahead(
            ("s", "p"),
            now * 1000,
            (3_600_000, now)
        ));
        assert!(!warn_if_restored_ahead(
            ("s", "p"),
            now + 5,
            (3_600_000, now)
        ));
        assert!(!warn_if_restored_ahead(
            ("s", "p"),
            crate::clock::WATERMARK_END,
            (3_600_000, now)
        ));
    }
}
