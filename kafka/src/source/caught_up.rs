//! `--until-caught-up` for a Kafka source: the run ends once every partition of the source's
//! topics reached the end offset it had when the run started, not only the partitions the
//! group assigned to this process at some moment. A process that read every partition it is
//! assigned waits for the others (a killed process is still a member of the group until its
//! session times out; a rebalance is under way; in a worker pool, another worker reads
//! them), says so in its log and in `/ready`, and fails with [`NotCaughtUp`] when the wait
//! lasts longer than its timeout.

use std::time::{Duration, Instant};

/// How long, by default, a source that read every partition it is assigned waits for the
/// other partitions of its topics (`--caught-up-timeout`).
pub const DEFAULT_CAUGHT_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// A waiting source joins its group again once the group moved no partition for a session
/// timeout and this long (see `KafkaReader::rejoin_if_stuck`).
pub(crate) const REJOIN_MARGIN: Duration = Duration::from_secs(5);

/// The consumer's session timeout: `session.timeout.ms` of the source's `properties`, else
/// weir's default (6 s in a pool, 10 s otherwise).
pub(crate) fn session_timeout(properties: &[(String, String)], pooled: bool) -> Duration {
    properties
        .iter()
        .rev()
        .find(|(k, _)| k == "session.timeout.ms")
        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        .map_or(
            Duration::from_secs(if pooled { 6 } else { 10 }),
            Duration::from_millis,
        )
}

/// A source says what it waits for once it waited this long (a group's first assignment
/// takes a moment)...
const FIRST_LOG_AFTER: Duration = Duration::from_secs(2);
/// ...and again this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Partitions were still not read to their end when the wait ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--until-caught-up: partition(s) {} were not read to the end offsets they had when the run \
     started: {why} for {}s after this process read every partition it is assigned (consumer \
     group `{group}`). A killed process stays a member of the group until its session times \
     out (`session.timeout.ms`); stop the other members of the group, or wait longer with \
     --caught-up-timeout",
    partitions.join(", "),
    waited.as_secs()
)]
pub struct NotCaughtUp {
    /// The partitions not read to their end (`topic/partition`).
    pub partitions: Vec<String>,
    /// Why they were not read.
    pub why: String,
    /// The consumer group.
    pub group: String,
    /// How long the source waited.
    pub waited: Duration,
}

/// The wait of a source that read every partition it is assigned for the other partitions of
/// its topics.
#[derive(Debug)]
pub(crate) struct CatchUpWait {
    timeout: Duration,
    /// When the wait began (`None`: not waiting).
    since: Option<Instant>,
    /// When the wait was last logged.
    logged: Option<Instant>,
}

/// What a source reading until caught up does now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Nothing left to wait for: the source ends.
    Done,
    /// Waits for partitions; the text is the `/ready` reason.
    Waiting(String),
}

impl CatchUpWait {
    pub(crate) fn new(timeout: Duration) -> Self {
        CatchUpWait {
            timeout,
            since: None,
            logged: None,
        }
    }

    /// The source is reading partitions it is assigned: it does not wait.
    pub(crate) fn reading(&mut self) {
        self.since = None;
        self.logged = None;
    }

    /// The source read every partition it is assigned, and `pending` are the partitions of
    /// its topics it waits for (`why` they are not read: "not assigned to this process").
    /// Fails once the wait lasted longer than the timeout.
    pub(crate) fn update(
        &mut self,
        pending: &[String],
        why: &str,
        (source, group): (&str, &str),
        now: Instant,
    ) -> Result<Wait, NotCaughtUp> {
        if pending.is_empty() {
            let since = self.since.take();
            if let (Some(since), Some(_)) = (since, self.logged) {
                tracing::info!(
                    source,
                    waited_ms = now.saturating_duration_since(since).as_millis() as u64,
                    "kafka: every partition of the source's topics is read to its end"
                );
            }
            self.logged = None;
            return Ok(Wait::Done);
        }
        let since = *self.since.get_or_insert(now);
        let waited = now.saturating_duration_since(since);
        if waited >= self.timeout {
            return Err(NotCaughtUp {
                partitions: pending.to_vec(),
                why: why.to_string(),
                group: group.to_string(),
                waited,
            });
        }
        let list = pending.join(", ");
        if waited >= FIRST_LOG_AFTER
            && self
                .logged
                .is_none_or(|t| now.saturating_duration_since(t) >= LOG_EVERY)
        {
            self.logged = Some(now);
            tracing::info!(
                source,
                group,
                partitions = %list,
                waited_s = waited.as_secs(),
                timeout_s = self.timeout.as_secs(),
                "kafka: every partition assigned to this process is read to its end; waiting for \
                 the other partitions of the topics ({why}: a killed process holds them until \
                 its session times out, or a rebalance is under way)"
            );
        }
        Ok(Wait::Waiting(format!(
            "read every partition it is assigned; waiting for {list} ({why}) for {}s of {}s \
             (--caught-up-timeout)",
            waited.as_secs(),
            self.timeout.as_secs()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_for_pending_partitions_then_fails_after_the_timeout() {
        let mut w = CatchUpWait::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let pending = vec!["t/2".to_string(), "t/3".to_string()];
        let who = ("events", "g");
        match w.update(&pending, "not assigned", who, t0).unwrap() {
            Wait::Waiting(reason) => {
                assert!(reason.contains("t/2, t/3"), "{reason}");
                assert!(reason.contains("0s of 30s"), "{reason}");
            }
            Wait::Done => panic!("nothing read yet"),
        }
        let later = t0 + Duration::from_secs(29);
        assert!(matches!(
            w.update(&pending, "not assigned", who, later),
            Ok(Wait::Waiting(_))
        ));
        let e = w
            .update(
                &pending[1..],
                "not assigned",
                who,
                t0 + Duration::from_secs(30),
            )
            .unwrap_err();
        assert_eq!(e.partitions, vec!["t/3".to_string()]);
        assert_eq!(e.waited, Duration::from_secs(30));
        let text = e.to_string();
        assert!(text.contains("t/3") && text.contains("`g`"), "{text}");
        assert!(text.contains("--caught-up-timeout"), "{text}");
    }

    #[test]
    fn the_session_timeout_is_the_properties_or_the_default() {
        assert_eq!(session_timeout(&[], false), Duration::from_secs(10));
        assert_eq!(session_timeout(&[], true), Duration::from_secs(6));
        let p = vec![("session.timeout.ms".to_string(), "45000".to_string())];
        assert_eq!(session_timeout(&p, true), Duration::from_secs(45));
    }

    #[test]
    fn reading_again_restarts_the_wait_and_nothing_pending_is_done() {
        let mut w = CatchUpWait::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let pending = vec!["t/1".to_string()];
        let who = ("events", "g");
        w.update(&pending, "not assigned", who, t0).unwrap();
        // the partition is assigned, read for a while; then another one is waited for
        w.reading();
        let t1 = t0 + Duration::from_secs(25);
        assert!(matches!(
            w.update(&pending, "not assigned", who, t1),
            Ok(Wait::Waiting(_))
        ));
        assert_eq!(
            w.update(&[], "", who, t1 + Duration::from_secs(60)),
            Ok(Wait::Done)
        );
    }
}
