//! Placing polled messages in their partitions' lanes, and the chunks that end a lane.

use super::*;

/// The bound of partition `s` (`--until-caught-up`'s end, or a replay's) when a message at
/// `offset` is at or past it: reached through a gap (the offset before the bound was a
/// transaction's marker or compacted away), so the message is not the partition's to read
/// and the partition ends at its bound.
pub(super) fn end_reached(s: &PartitionState, offset: i64) -> Option<u64> {
    let offset = u64::try_from(offset).ok()?;
    s.end_at
        .filter(|&end| s.assigned && !s.ended && offset >= end)
}

/// Buffers a message of partition `s` in its lane; a repeat of the repartition stage (an
/// upstream offset its lane passed) is counted and dropped. The message's offset, unless the
/// partition is not read (then `after_message` is not due). `now` is the time it was polled.
pub(super) fn place_message<M: Message>(
    s: &mut PartitionState,
    m: &M,
    (config, name): (&KafkaSourceConfig, &str),
    stats: Option<&SourceStats>,
    (ctx, now): (&ReaderContext, Instant),
) -> Option<u64> {
    if !s.assigned || s.ended {
        return None;
    }
    let offset = m.offset() as u64;
    // (a transaction's marker, a compacted topic, or offsets deleted by the retention)
    if let Some(expected) = s.expected.filter(|&e| offset > e) {
        if s.jumps.len() < MAX_JUMPS_UNCHECKED {
            s.jumps.push((expected, offset));
        }
    }
    if s.expected.is_some_and(|e| offset < e) {
        // offsets began again (the topic created again under the reader, and librdkafka's
        // position reset): positions carry no id until the partition's next assignment
        s.incarnation = 0;
        // nor does an earlier run's note name these records (see `weir_engine::reread`)
        ctx.progress.forget_reread(s.lane.info.id);
    }
    s.expected = Some(offset + 1);
    s.read_next = Some(offset + 1);
    s.lane.last_message = now;
    let Some(up) = &config.upstream else {
        s.lane.buffer.push(m, config.with_headers, offset);
        unidle(ctx, &s.lane);
        return Some(offset);
    };
    let lanes = s.up.get_or_insert_with(|| {
        Box::new(Lanes::new(up.topic.as_str().into(), up.partitions, &[], 0))
    });
    let payload = m.payload().unwrap_or_default();
    let upstream = up.topic.as_str();
    let envelope =
        crate::repartition::Envelope::open(payload).filter(|e| e.partition < lanes.len());
    let why = match &envelope {
        None => Some("it was not written by weir (no upstream partition and offset)"),
        Some(e) => match e.topic {
            Some(t) if t != upstream.as_bytes() => Some(
                "it was written for another upstream topic (a previous use of this internal topic)",
            ),
            // weir 0.1.0 wrote no topic: its messages continue a lane a checkpoint had read
            // (a pool upgraded while running), but a lane read from the beginning would take
            // another topic's for this one's
            None if !lanes.legacy[e.partition] => Some(
                "it was written by weir 0.1.0, which did not record the upstream topic, and its \
                 lane has no checkpointed position to continue",
            ),
            _ => None,
        },
    };
    let (Some(envelope), None) = (envelope, why) else {
        if let Some(src) = stats {
            RunStats::add(&src.repartition_foreign, 1);
        }
        if !s.warned_foreign {
            s.warned_foreign = true;
            tracing::warn!(
                source = %name,
                topic = %s.topic,
                partition = s.number,
                offset,
                upstream,
                reason = why.unwrap_or_default(),
                "kafka: skipping messages of the repartition topic that are not this source's \
                 (counted in weir_repartition_foreign_total; logged once per assignment)"
            );
        }
        return Some(offset);
    };
    let clock = ctx.clocks.partition(s.lane.info.id);
    let placed = lanes.push(
        (envelope.partition, envelope.offset, envelope.sequence()),
        (envelope.payload, m.key()),
        m.timestamp().to_millis(),
        envelope.headers(),
        (config.with_headers, clock, now),
    );
    if !placed {
        if let Some(src) = stats {
            RunStats::add(&src.repartition_repeats, 1);
        }
        let lane_generation =
            crate::repartition::generation_of(lanes.expect[envelope.partition].saturating_sub(1));
        if u64::from(envelope.generation) < lane_generation && !s.warned_older {
            s.warned_older = true;
            tracing::warn!(
                source = %name,
                topic = %s.topic,
                partition = s.number,
                offset,
                upstream,
                upstream_partition = envelope.partition,
                generation = envelope.generation,
                lane_generation,
                "kafka: messages of the repartition topic in an older generation of their \
                 upstream partition than their lane's, dropped as repeats: read again after a \
                 restore, or the stage's group lost its offsets after the partition started \
                 over (then every message it copies is dropped: see the worker pool's docs; \
                 logged once per assignment)"
            );
        }
    }
    Some(offset)
}

/// Whether partition `s` has messages left to read, by the consumer lag of the latest
/// statistics (unknown: not behind).
pub(super) fn behind(ctx: &ReaderContext, source: &str, s: &PartitionState) -> bool {
    let key = (source.to_string(), format!("{}/{}", s.topic, s.number));
    ctx.stats
        .consumer_lag
        .lock()
        .ok()
        .and_then(|lag| lag.get(&key).copied())
        .is_some_and(|lag| lag > 0)
}

/// A lane that delivers stops being idle.
pub(super) fn unidle(ctx: &ReaderContext, lane: &Lane) {
    let clock = ctx.clocks.partition(lane.info.id);
    if clock.is_idle() {
        clock.set_idle(false);
    }
}

/// The end chunk of partition `s`, which continues at `next` (every lane of a repartition
/// topic's partition ends with it).
pub(super) fn lane_end(source: usize, s: &mut PartitionState, next: u64) -> Chunk {
    let lane = &mut s.lane;
    let chunk = Chunk {
        source,
        partition: lane.info.clone(),
        seq: lane.seq,
        first_offset: next,
        resume: Resume::at(next).in_incarnation(s.incarnation),
        data: ChunkData::End,
    };
    lane.seq += 1;
    chunk
}

pub(super) fn is_fatal(e: &RdError) -> bool {
    match e {
        RdError::MessageConsumptionFatal(_) => true,
        RdError::MessageConsumption(code) => matches!(
            code,
            rdkafka::types::RDKafkaErrorCode::Fatal
                | rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition
                | rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed
                | rdkafka::types::RDKafkaErrorCode::GroupAuthorizationFailed
                | rdkafka::types::RDKafkaErrorCode::SaslAuthenticationFailed
        ),
        _ => false,
    }
}
