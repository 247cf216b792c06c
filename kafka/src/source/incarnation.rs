//! A checkpoint's positions belong to one incarnation of their topic (see
//! `crate::topic_ids`): at a restore, partitions whose topic has another id now (it was deleted
//! and created again since the checkpoint) do not continue at the checkpoint's offset, which
//! would skip as many of the new topic's records without a word. They start where
//! `auto.offset.reset` says, as a position past the partition's end does (see `expired`): the
//! log start (every record of the topic now came after the checkpoint), or with `latest` the
//! end. Topics whose ids cannot be read (a broker before Kafka 2.8) are not checked.
//!
//! The ids are compared at connect (for `--until-caught-up`'s targets) and again with those
//! read when the partitions are assigned. Positions carry an id only where their start
//! belongs to it ([`label`]); a topic created again while a run reads it, found by a check
//! every [`INCARNATION_CHECK_EVERY`] or by offsets going back, leaves its positions without
//! one (a restore cannot tell which topic they belong to). In a worker pool, a claimed
//! partition's checkpoint keeps the id too, compared when the partition is claimed.

use super::*;

/// How often the ids of the topics read are compared with those their positions carry.
pub(super) const INCARNATION_CHECK_EVERY: Duration = Duration::from_secs(60);

/// How long that comparison waits for the cluster's answer (the reader waits meanwhile).
const INCARNATION_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

impl KafkaReader {
    /// Compares the checkpoint's topic ids with the topics' ids now; drops the checkpoint's
    /// offsets of the partitions whose topic was created again (into `replaced`), with an
    /// error each; the others carry the checkpoint's id, compared again at their assignment
    /// (`verified`).
    pub(super) fn check_incarnations(&mut self) {
        if self.resume_incarnations.is_empty() {
            return;
        }
        let mut topics: Vec<&str> = self
            .resume_incarnations
            .keys()
            .map(|(t, _)| t.as_str())
            .collect();
        topics.sort_unstable();
        topics.dedup();
        let client: Result<BaseConsumer, _> =
            crate::client_config(&self.config.brokers, &self.config.properties).create();
        let ids = client.and_then(|c| {
            // (a new client: its first metadata may take a moment)
            crate::topic_ids::topic_incarnations(
                c.client(),
                &topics,
                expired::OFFSETS_TIMEOUT,
                expired::OFFSETS_TIMEOUT,
            )
        });
        let ids = match ids {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(source = %self.name, error = %e, "kafka: cannot read the topics' ids: the checkpoint's offsets are not checked against a topic created again since");
                HashMap::new()
            }
        };
        let resets_to_end = expired::resets_to_end(&self.config);
        let checked: Vec<((String, i32), u64)> = self
            .resume_incarnations
            .iter()
            .map(|(tp, &was)| (tp.clone(), was))
            .collect();
        for (tp, was) in checked {
            let Some(l) = self.local(&tp.0, tp.1) else {
                continue;
            };
            match ids.get(&tp.0) {
                Some(&now) if now != was => {
                    let next = self.resume.remove(&tp);
                    report_replaced(&self.name, &tp, next, resets_to_end);
                    self.replaced.insert(tp);
                }
                Some(_) => {
                    self.partitions[l].incarnation = was;
                    self.verified.insert(tp, was);
                }
                // (not known now: unconfirmed, its positions carry none until assigned)
                None => {}
            }
        }
        self.resume_incarnations.clear();
    }

    /// Every [`INCARNATION_CHECK_EVERY`]: reads the ids of the topics whose assigned
    /// partitions carry one; a topic created again while this run reads it (librdkafka reads
    /// on at the old offsets when the new topic holds them, without a word) makes its
    /// partitions' positions carry none (a restore cannot tell which topic they belong to),
    /// with an error.
    pub(super) fn check_running_incarnations(&mut self) {
        let Some(consumer) = self.consumer.as_ref() else {
            return;
        };
        let mut topics: Vec<&str> = self
            .partitions
            .iter()
            .filter(|s| s.assigned && s.incarnation != 0)
            .map(|s| &*s.topic)
            .collect();
        topics.sort_unstable();
        topics.dedup();
        let Ok(ids) = crate::topic_ids::topic_incarnations(
            consumer.client(),
            &topics,
            INCARNATION_CHECK_TIMEOUT,
            Duration::ZERO,
        ) else {
            return;
        };
        for s in &mut self.partitions {
            let now = ids.get(&*s.topic).copied();
            if !s.assigned || s.incarnation == 0 || now.is_none_or(|n| n == s.incarnation) {
                continue;
            }
            s.incarnation = 0;
            tracing::error!(
                source = %self.name,
                topic = %s.topic,
                partition = s.number,
                "kafka: the topic was deleted and created again while this run read it (its \
                 id changed): librdkafka reads on at the old offsets where the new topic holds \
                 them, so the new topic's first records may have been skipped. Positions from \
                 now on carry no topic id (a restore does not check them)"
            );
        }
    }
}

/// What partition `tp`'s positions carry once assigned (`prev`: before; `now`: its topic's
/// id read at the assignment; `replaced`: its start was moved because its topic was created
/// again). The id read only where the start belongs to that topic: a start of an earlier
/// assignment (the partition assigned again) carries none when the id changed or cannot be
/// told. In a pool, `prev` is the id of the claim's checkpoint (0 for a partition without
/// state, or a checkpoint without ids).
pub(super) fn label(prev: u64, now: Option<u64>, replaced: bool) -> u64 {
    match now {
        None => 0,
        Some(n) if prev == 0 || prev == n || replaced => n,
        Some(_) => 0,
    }
}

/// Logs that the checkpoint's offset `next` of partition `tp` of source `source` belongs to a
/// topic of its name deleted since, and where reading goes on instead.
pub(super) fn report_replaced(
    source: &str,
    tp: &(String, i32),
    next: Option<u64>,
    resets_to_end: bool,
) {
    let from = if resets_to_end {
        "the end"
    } else {
        "the log start"
    };
    tracing::error!(
        source,
        topic = %tp.0,
        partition = tp.1,
        next,
        "kafka: the checkpoint's position belongs to a topic of this name that was deleted \
         since (the topic's id is not the one the checkpoint kept): every record of the \
         topic now came after the checkpoint. Reading from {from}, as `auto.offset.reset` \
         says, not from the checkpoint's offset, which would skip as many of the new \
         topic's records"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Positions carry the id read at assignment only where their start belongs to it.
    #[test]
    fn positions_carry_an_id_only_where_their_start_belongs_to_it() {
        // a first assignment, a checkpoint's id confirmed, a start moved to the new topic
        assert_eq!(label(0, Some(7), false), 7);
        assert_eq!(label(7, Some(7), false), 7);
        assert_eq!(label(5, Some(7), true), 7);
        // assigned again after the topic was created again: the old start, no id
        assert_eq!(label(5, Some(7), false), 0);
        // no id read
        assert_eq!(label(7, None, false), 0);
    }
}
