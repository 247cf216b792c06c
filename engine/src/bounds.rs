//! Event-time bounds: an event time far ahead of the wall clock is a broken record (a time in
//! microseconds read as milliseconds lands in the year 55,000), not an event from the future.
//! Such a row would move its partition's watermark years ahead and make every later event
//! late, in every checkpoint after it; so rows more than `event_time.max_future` ahead of the
//! wall clock are dead-lettered as bad, before they reach the partition's clock.

use std::sync::Arc;

use crate::dead_letter::PartitionInfo;
use crate::{DeadLetter, EngineError, ErrorInfo, EventBatch, Reason};

/// The dead-letter code of a row whose event time is too far ahead of the wall clock.
pub const FUTURE_EVENT_TIME: &str = "future_event_time";

/// `event_time.max_future` when a pipeline does not set it: one hour.
pub const DEFAULT_MAX_FUTURE_MS: i64 = 3_600_000;

/// `events` without the rows whose event time is more than `max_future_ms` after `now`
/// (`None` when no row is left); those rows are pushed to `dead`. One pass over the event
/// times when no row is too far ahead (the common case).
pub fn drop_future(
    events: EventBatch,
    (max_future_ms, now): (i64, i64),
    partition: &Arc<PartitionInfo>,
    dead: &mut Vec<DeadLetter>,
) -> Result<Option<EventBatch>, EngineError> {
    let limit = now.saturating_add(max_future_ms);
    if events.event_time.iter().all(|&t| t <= limit) {
        return Ok(Some(events));
    }
    let mut keep = Vec::with_capacity(events.event_time.len());
    for (i, &t) in events.event_time.iter().enumerate() {
        if t <= limit {
            keep.push(i as u32);
            continue;
        }
        dead.push(DeadLetter {
            partition: partition.clone(),
            offset: events.offsets.get(i).copied(),
            trace: events.trace_of(i),
            reason: Reason::Bad,
            error: ErrorInfo::new(
                FUTURE_EVENT_TIME,
                format!(
                    "the event time {} is {} s ahead of the wall clock, more than event_time.max_future ({} s)",
                    crate::time::format_rfc3339_ms(t),
                    t.saturating_sub(now) / 1000,
                    max_future_ms / 1000
                ),
            )
            .with("event_time", t)
            .with("wall_clock", now)
            .with("max_future_ms", max_future_ms),
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
        let kept = drop_future(
            events(&[now - 5, micros, now + 3_600_000, now + 3_600_001]),
            (3_600_000, now),
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
        let all = drop_future(events(&[now]), (0, now), &partition(), &mut dead)
            .unwrap()
            .unwrap();
        assert_eq!(all.batch.num_rows(), 1);
        // nothing left
        assert!(
            drop_future(events(&[micros]), (0, now), &partition(), &mut dead)
                .unwrap()
                .is_none()
        );
        assert_eq!(dead.len(), 3);
        assert!(kept.batch.column(0).null_count() == 0);
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
