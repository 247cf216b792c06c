//! Planning of the `nats:` source: its YAML keys checked and turned into a
//! [`NatsSourceConfig`].

use std::path::Path;

use serde_saphyr::Location;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use weir_nats::source::{
    parse_start_from, sequence_range, NatsAckPolicy, NatsPartitions, NatsSourceConfig,
    NatsSourceError, NatsStartFrom, DEFAULT_FETCH_BATCH, PARTITION_PLACEHOLDER,
};

use super::doc::{NatsAckPolicyDoc, NatsPartitionsDoc, NatsSourceDoc};
use super::NatsConfigError;
use crate::connectors::ReplayRange;
use crate::model::OneOrMany;
use crate::replay::Lookup;
use weir_engine::ErrorKind;

/// Largest `fetch_batch`: a pull request's messages are buffered by the client.
const MAX_FETCH_BATCH: u64 = 100_000;

/// The config of source `source` of pipeline `pipeline`, or what is wrong with its keys and
/// where, when a key more precise than `nats` is (the caller adds the file position).
/// Relative files resolve against `dir`.
pub(crate) fn config(
    doc: &NatsSourceDoc,
    pipeline: &str,
    source: &str,
    dir: &Path,
) -> Result<NatsSourceConfig, (Option<Location>, NatsConfigError)> {
    let mut cfg = config_of(doc, pipeline, source, dir).map_err(|e| (None, e))?;
    if let Some(p) = &doc.partitions {
        if !cfg.subjects.is_empty() {
            return Err((Some(p.referenced), NatsConfigError::SubjectsAndPartitions));
        }
        cfg.partitions = Some(partitions(&p.value).map_err(|e| (Some(p.referenced), e))?);
    }
    Ok(cfg)
}

/// The ack policy of the source's consumer: `ack_policy` when given, else `none` with
/// checkpoints (they hold the position anyway) unless `ack_wait` or `max_ack_pending` asks for
/// acknowledgements, else `all`. `none` needs checkpoints.
pub(crate) fn ack_policy(
    doc: &NatsSourceDoc,
    checkpointed: bool,
) -> Result<NatsAckPolicy, (Option<Location>, NatsConfigError)> {
    let ack_settings = doc.ack_wait.is_some() || doc.max_ack_pending.is_some();
    match doc.ack_policy.as_ref().map(|p| (p.value, p.referenced)) {
        Some((NatsAckPolicyDoc::All, _)) => Ok(NatsAckPolicy::All),
        Some((NatsAckPolicyDoc::None, at)) if !checkpointed => {
            Err((Some(at), NatsConfigError::NoAckWithoutCheckpoint))
        }
        Some((NatsAckPolicyDoc::None, at)) if ack_settings => {
            Err((Some(at), NatsConfigError::AckSettingsWithoutAcks))
        }
        Some((NatsAckPolicyDoc::None, _)) => Ok(NatsAckPolicy::None),
        None if checkpointed && !ack_settings => Ok(NatsAckPolicy::None),
        None => Ok(NatsAckPolicy::All),
    }
}

/// [`config`] without `partitions`.
fn config_of(
    doc: &NatsSourceDoc,
    pipeline: &str,
    source: &str,
    dir: &Path,
) -> Result<NatsSourceConfig, NatsConfigError> {
    let endpoint = super::endpoint(
        &doc.url,
        doc.credentials.as_ref(),
        doc.tls.as_ref(),
        dir,
        format!("weir-{pipeline}-{source}"),
    )?;
    if doc.stream.trim().is_empty() || doc.stream.contains(['.', '*', '>', ' ']) {
        return Err(NatsConfigError::Stream(doc.stream.clone()));
    }
    let subjects: Vec<String> = match &doc.subjects {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s.trim().to_string()],
        Some(OneOrMany::Many(v)) => v.iter().map(|s| s.trim().to_string()).collect(),
    };
    if let Some(bad) = subjects.iter().find(|s| !valid_filter(s)) {
        return Err(NatsConfigError::SubjectFilter(bad.clone()));
    }
    let consumer = doc
        .consumer
        .clone()
        .unwrap_or_else(|| format!("weir-{pipeline}-{source}"));
    if consumer.is_empty() || consumer.contains(['.', '*', '>', ' ', '/', '\\']) {
        return Err(NatsConfigError::Consumer(consumer));
    }
    let start_from = match &doc.start_from {
        None => NatsStartFrom::Earliest,
        Some(t) => parse_start_from(t).ok_or_else(|| NatsConfigError::StartFrom(t.clone()))?,
    };
    let mut cfg = NatsSourceConfig::new(endpoint, doc.stream.trim(), &consumer);
    cfg.subjects = subjects;
    cfg.start_from = start_from;
    if let Some(w) = doc.ack_wait {
        if w.0 < 1_000 {
            return Err(NatsConfigError::AckWait);
        }
        cfg.ack_wait = std::time::Duration::from_millis(w.0);
    }
    if let Some(m) = doc.max_ack_pending {
        cfg.max_ack_pending = i64::try_from(m)
            .ok()
            .filter(|m| *m > 0)
            .ok_or(NatsConfigError::MaxAckPending)?;
    }
    cfg.accept_new_stream = match &doc.accept_new_stream {
        None => None,
        Some(t) => Some(
            weir_engine::time::parse_rfc3339_ms(t.trim().as_bytes())
                .ok_or_else(|| NatsConfigError::AcceptNewStream(t.clone()))?,
        ),
    };
    cfg.fetch_batch = match doc.fetch_batch {
        None => DEFAULT_FETCH_BATCH,
        Some(b) if (1..=MAX_FETCH_BATCH).contains(&b) => b as usize,
        Some(_) => {
            return Err(NatsConfigError::FetchBatch {
                max: MAX_FETCH_BATCH,
            })
        }
    };
    Ok(cfg)
}

/// Most subject partitions of a source.
const MAX_PARTITIONS: u32 = 1024;

/// `partitions: { count, subject }` checked: a count of 1 to [`MAX_PARTITIONS`], and a subject
/// filter with `{partition}` as one whole token.
fn partitions(doc: &NatsPartitionsDoc) -> Result<NatsPartitions, NatsConfigError> {
    if !(1..=MAX_PARTITIONS).contains(&doc.count) {
        return Err(NatsConfigError::PartitionCount {
            max: MAX_PARTITIONS,
            count: doc.count,
        });
    }
    let subject = doc.subject.trim();
    let holes = subject
        .split('.')
        .filter(|t| *t == PARTITION_PLACEHOLDER)
        .count();
    if holes != 1 || subject.matches(PARTITION_PLACEHOLDER).count() != 1 {
        return Err(NatsConfigError::PartitionPlaceholder(subject.to_string()));
    }
    let p = NatsPartitions {
        count: doc.count,
        subject: subject.to_string(),
    };
    if !valid_filter(&p.filter(0)) {
        return Err(NatsConfigError::PartitionFilter(subject.to_string()));
    }
    Ok(p)
}

/// How long a replay's consumer outlives its last use before the server deletes it.
const REPLAY_CONSUMER_LINGER: std::time::Duration = std::time::Duration::from_secs(60);

/// Sets `cfg` up for a replay of the messages stored in `range` (ms, margins included): a
/// consumer of its own (deleted by the server once unused). Returns the sequence range (one
/// partition named after the stream), which holds where the reader reports its progress and
/// bounds the read when the replay opens the source (up to the first sequence past it).
pub(crate) fn replay(
    cfg: &mut NatsSourceConfig,
    range: (i64, i64),
    suffix: &str,
) -> Result<SequenceRange, Lookup> {
    if let Some(p) = cfg.partitions.take() {
        // a replay reads the partitions' subjects as one range of the stream
        cfg.subjects = vec![p.subject.replace(PARTITION_PLACEHOLDER, "*")];
    }
    let (start, end, last) = sequence_range(cfg, range).map_err(lookup)?;
    cfg.consumer = format!("{}-{suffix}-{}", cfg.consumer, std::process::id()).replace('.', "_");
    cfg.delete_after = Some(REPLAY_CONSUMER_LINGER);
    // where the range ends reaches the reader as its bounds when the replay opens it
    let read = Arc::new(AtomicU64::new(start));
    cfg.read_sequence = Some(read.clone());
    Ok(SequenceRange {
        stream: cfg.stream.clone(),
        partition: cfg.partition_key(),
        start,
        end,
        next: last + 1,
        read,
    })
}

/// A replay's failed look-up in the stream: a server that refused the credentials or the
/// URL is the user's to fix, one that was unreachable may answer later; any other failure
/// (the stream, its consumer) is not the user's.
fn lookup(e: NatsSourceError) -> Lookup {
    let kind = match &e {
        NatsSourceError::Connect(c) if c.is_retryable() => ErrorKind::Retryable,
        NatsSourceError::Connect(_) => ErrorKind::User,
        _ => ErrorKind::Fatal,
    };
    Lookup::new(kind, e)
}

/// The sequences a replay reads from a stream, as one partition (`STREAM/0`).
#[derive(Debug)]
pub(crate) struct SequenceRange {
    pub stream: String,
    /// The key of the partition its reader reads (the whole stream's).
    pub partition: String,
    pub start: u64,
    /// The first sequence past the range.
    pub end: u64,
    /// The sequence after the stream's last at the start.
    pub next: u64,
    /// Where the reader is.
    pub read: Arc<AtomicU64>,
}

impl ReplayRange for SequenceRange {
    fn key(&self) -> String {
        format!("{}/0", self.stream)
    }
    fn partition(&self) -> String {
        self.partition.clone()
    }
    fn start(&self) -> u64 {
        self.start
    }
    fn end(&self) -> u64 {
        self.end
    }
    fn read(&self) -> Arc<AtomicU64> {
        self.read.clone()
    }
    fn open_end(&self) -> Option<String> {
        // (no message stored at or after the range's end time, `end` past the last, while
        // the stream's newest are in the range)
        (self.end >= self.next && self.start < self.next).then(|| {
            "the stream holds no message past the range's end time yet: its last windows may \
             still be open"
                .to_string()
        })
    }
    fn describe(&self) -> String {
        format!(
            "{}: offsets {}..{} ({} messages; the partition ends at {})",
            self.key(),
            self.start,
            self.end,
            self.end - self.start,
            self.next
        )
    }
}

/// The source for `weir validate` and the console: stream, subjects, consumer, start.
pub(crate) fn describe(c: &NatsSourceConfig) -> String {
    let subjects = if c.subjects.is_empty() {
        "every subject".to_string()
    } else {
        format!("subjects {}", c.subjects.join(", "))
    };
    let start = match c.start_from {
        NatsStartFrom::Earliest => "earliest".to_string(),
        NatsStartFrom::Latest => "latest".to_string(),
        NatsStartFrom::Sequence(s) => format!("sequence {s}"),
        NatsStartFrom::Time(ms) => format!("time {ms} ms"),
    };
    let acks = match c.ack_policy {
        NatsAckPolicy::All => "acknowledged once durable",
        NatsAckPolicy::None => "acknowledges nothing (positions in checkpoints)",
    };
    format!(
        "stream {} ({subjects}), consumer {}, start from {start} (new consumer), {acks}",
        c.stream, c.consumer
    )
}

/// Whether `s` is a subject filter: non-empty tokens, `*` alone in a token, `>` last.
fn valid_filter(s: &str) -> bool {
    let tokens: Vec<&str> = s.split('.').collect();
    !s.is_empty()
        && tokens.iter().enumerate().all(|(i, t)| {
            !t.is_empty()
                && !t.contains(char::is_whitespace)
                && (*t == "*" || !t.contains('*'))
                && (*t == ">" && i == tokens.len() - 1 || !t.contains('>'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(yaml: &str) -> NatsSourceDoc {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_and_names() {
        let d = doc("{url: 'nats://127.0.0.1:4222', stream: EVENTS}");
        let c = config(&d, "p", "bus", Path::new(".")).unwrap();
        assert_eq!(c.consumer, "weir-p-bus");
        assert_eq!(c.start_from, NatsStartFrom::Earliest);
        assert!(c.subjects.is_empty());
        assert_eq!(c.fetch_batch, DEFAULT_FETCH_BATCH);
    }

    #[test]
    fn checkpoints_acknowledge_nothing_unless_asked() {
        let plain = doc("{url: 'nats://h:4222', stream: E}");
        assert_eq!(ack_policy(&plain, true).unwrap(), NatsAckPolicy::None);
        assert_eq!(ack_policy(&plain, false).unwrap(), NatsAckPolicy::All);
        // acknowledgement settings ask for acknowledgements
        let tuned = doc("{url: 'nats://h:4222', stream: E, max_ack_pending: 10}");
        assert_eq!(ack_policy(&tuned, true).unwrap(), NatsAckPolicy::All);
        let all = doc("{url: 'nats://h:4222', stream: E, ack_policy: all}");
        assert_eq!(ack_policy(&all, true).unwrap(), NatsAckPolicy::All);
        let none = doc("{url: 'nats://h:4222', stream: E, ack_policy: none}");
        assert_eq!(ack_policy(&none, true).unwrap(), NatsAckPolicy::None);
        let (at, e) = ack_policy(&none, false).unwrap_err();
        assert!(
            at.is_some() && e.to_string().contains("needs `checkpoint:`"),
            "{e}"
        );
        let both = doc("{url: 'nats://h:4222', stream: E, ack_policy: none, ack_wait: 1m}");
        let (_, e) = ack_policy(&both, true).unwrap_err();
        assert!(e.to_string().contains("only with `ack_policy: all`"), "{e}");
        assert!(serde_saphyr::from_str::<NatsSourceDoc>(
            "{url: 'nats://h:4222', stream: E, ack_policy: explicit}"
        )
        .is_err());
    }

    #[test]
    fn subject_filters_and_start_from_are_checked() {
        let d = doc("{url: 'nats://h:4222', stream: E, subjects: ['ontology.schema.*', 'a.>'], start_from: '17'}");
        let c = config(&d, "p", "bus", Path::new(".")).unwrap();
        assert_eq!(c.subjects, vec!["ontology.schema.*", "a.>"]);
        assert_eq!(c.start_from, NatsStartFrom::Sequence(17));
        for bad in ["a..b", "a.>.b", "a.b*", ""] {
            let d = NatsSourceDoc {
                subjects: Some(OneOrMany::One(bad.into())),
                ..doc("{url: 'nats://h:4222', stream: E}")
            };
            assert!(config(&d, "p", "s", Path::new(".")).is_err(), "{bad}");
        }
        let d = doc("{url: 'nats://h:4222', stream: E, start_from: soon}");
        assert!(config(&d, "p", "s", Path::new("."))
            .unwrap_err()
            .1
            .to_string()
            .contains("start_from"));
        let d = doc("{url: 'nats://h:4222', stream: 'a.b'}");
        assert!(config(&d, "p", "s", Path::new(".")).is_err());
    }

    #[test]
    fn partitions_give_a_consumer_and_a_filter_each() {
        let d = doc("{url: 'nats://h:4222', stream: E, partitions: {count: 4, subject: 'events.{partition}.>'}}");
        let c = config(&d, "p", "bus", Path::new(".")).unwrap();
        assert_eq!(
            c.partition_keys(),
            vec!["nats/E/0", "nats/E/1", "nats/E/2", "nats/E/3"]
        );
        let p2 = c.for_partition(2);
        assert_eq!(p2.consumer, "weir-p-bus-p2");
        assert_eq!(p2.subjects, vec!["events.2.>"]);
        assert!(p2.partitions.is_none());
        // a stream read whole keeps its one key and consumer
        let whole = config(
            &doc("{url: 'nats://h:4222', stream: E}"),
            "p",
            "bus",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(whole.partition_keys(), vec!["nats/E"]);
        assert_eq!(whole.for_partition(0).consumer, "weir-p-bus");
        for (bad, says) in [
            ("{count: 0, subject: 'e.{partition}'}", "count"),
            ("{count: 2000, subject: 'e.{partition}'}", "count"),
            ("{count: 2, subject: 'e.p{partition}'}", "whole token"),
            ("{count: 2, subject: 'e.{partition}.{partition}'}", "once"),
            ("{count: 2, subject: 'events.>'}", "once"),
            (
                "{count: 2, subject: 'e..{partition}'}",
                "bad `partitions.subject`",
            ),
        ] {
            let d = doc(&format!(
                "{{url: 'nats://h:4222', stream: E, partitions: {bad}}}"
            ));
            let (at, e) = config(&d, "p", "s", Path::new(".")).unwrap_err();
            assert!(at.is_some() && e.to_string().contains(says), "{bad}: {e}");
        }
        let d = doc("{url: 'nats://h:4222', stream: E, subjects: a.>, partitions: {count: 2, subject: 'a.{partition}'}}");
        let (_, e) = config(&d, "p", "s", Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("exclude each other"), "{e}");
    }

    #[test]
    fn refusals_are_user_errors_that_say_the_setting() {
        let d =
            doc("{url: 'nats://h:4222', stream: E, partitions: {count: 2, subject: 'events.>'}}");
        let (_, e) = config(&d, "p", "s", Path::new(".")).unwrap_err();
        assert_eq!(e.kind(), weir_engine::ErrorKind::User);
        assert_eq!(
            e.to_string(),
            "`partitions.subject` `events.>` must hold `{partition}` once, as a whole token \
             (`events.{partition}.>`)"
        );
        let d = doc(
            "{url: 'nats://h:4222', stream: E, partitions: {count: 2, subject: 'e..{partition}'}}",
        );
        let (_, e) = config(&d, "p", "s", Path::new(".")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad `partitions.subject` `e..{partition}`: tokens separated by `.`, `*` for one \
             token, `>` for the rest, `{partition}` for the partition's number"
        );
        let d = doc("{url: 'nats://h:4222', stream: E, fetch_batch: 0}");
        let (_, e) = config(&d, "p", "s", Path::new(".")).unwrap_err();
        assert_eq!(e.to_string(), "`fetch_batch` must be 1 to 100000");
        let d = doc("{url: 'nats://h:4222', stream: E, accept_new_stream: yesterday}");
        let (_, e) = config(&d, "p", "s", Path::new(".")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("bad accept_new_stream `yesterday`"),
            "{e}"
        );
        let d =
            doc("{url: 'nats://h:4222', stream: E, accept_new_stream: '2026-12-05T18:37:57.907Z'}");
        let c = config(&d, "p", "s", Path::new(".")).unwrap();
        assert_eq!(c.accept_new_stream, Some(1_796_495_877_907));
    }
}
