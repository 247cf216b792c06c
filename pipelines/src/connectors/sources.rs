//! The source side of the registry: what a source kind plans from its YAML and how a planned
//! source opens, describes itself and replays.

use std::any::Any;
use std::fmt::Debug;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_saphyr::Spanned;
use weir_engine::events::Resume;
use weir_engine::job::PartitionReader;
use weir_sources::MessageColumn;

use super::pooled::{PoolSource, PooledSource, Repartition, Repartitioning};
use crate::error::PipelineError;
use crate::model::{Format, PipelineDoc, SourceDoc};
use crate::plan::Ctx;
use crate::replay::ReplayError;
use crate::run::RunError;

/// What a source's planning reads.
pub struct SourcePlanning<'a> {
    pub doc: &'a PipelineDoc,
    pub ctx: &'a Ctx<'a>,
    pub name: &'a str,
    pub source: &'a Spanned<SourceDoc>,
    /// `format`, `json` when not given.
    pub format: Format,
}

/// What a source kind planned from its YAML.
pub struct PlannedInput {
    pub connector: Box<dyn SourceConnector>,
    /// The schema of its events when the pipeline names none (the generator's).
    pub default_schema: Option<&'static str>,
    /// Bounds on what one Avro record may decode to.
    pub avro_limits: weir_sources::avro::AvroLimits,
    /// The schema registry of Avro records, when given.
    pub registry: Option<String>,
}

impl PlannedInput {
    /// A planned source with no default schema, the default Avro limits and no registry.
    pub fn of(connector: Box<dyn SourceConnector>) -> Self {
        PlannedInput {
            connector,
            default_schema: None,
            avro_limits: Default::default(),
            registry: None,
        }
    }
}

/// `avro_limits: { max_record_bytes, max_items, max_empty_items }` of a Kafka or NATS source
/// (defaults 16 MiB of JSON, 1,000,000 array items and map entries, and 10,000 array items
/// that take no bytes per record).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AvroLimitsDoc {
    /// Largest decoded record, in bytes of JSON (default 16 MiB; 1 KiB to 1 GiB).
    #[serde(default)]
    pub max_record_bytes: Option<u64>,
    /// Most array items and map entries in one record (default 1,000,000; at least 1).
    #[serde(default)]
    pub max_items: Option<u64>,
    /// Most array items that take no bytes (`null`, an empty record, a zero-size `fixed`)
    /// in one record (default 10,000).
    #[serde(default)]
    pub max_empty_items: Option<u64>,
}

/// The bounds `max_record_bytes` may take: below, no real record fits; above, a chunk's
/// decoded records could pass the 4 GiB its positions address.
const RECORD_BYTES: std::ops::RangeInclusive<u64> = 1 << 10..=1 << 30;

/// Avro limits as `avro_limits` sets them, the defaults otherwise; a value out of its bounds
/// is refused (what to write instead).
pub fn avro_limits(doc: Option<&AvroLimitsDoc>) -> Result<weir_sources::avro::AvroLimits, String> {
    let mut limits = weir_sources::avro::AvroLimits::default();
    let Some(l) = doc else {
        return Ok(limits);
    };
    if let Some(b) = l.max_record_bytes {
        if !RECORD_BYTES.contains(&b) {
            return Err(format!(
                "`avro_limits.max_record_bytes` is {b}: it must be between {} (1 KiB) and {} \
                 (1 GiB) bytes of JSON per record",
                RECORD_BYTES.start(),
                RECORD_BYTES.end()
            ));
        }
        limits.max_record_bytes = usize::try_from(b).unwrap_or(usize::MAX);
    }
    if let Some(n) = l.max_items {
        if n == 0 {
            return Err(
                "`avro_limits.max_items` is 0: no record with an array or a map could be \
                 read; give it 1 or more"
                    .into(),
            );
        }
        limits.max_items = n;
    }
    if let Some(n) = l.max_empty_items {
        limits.max_empty_items = n;
    }
    Ok(limits)
}

/// A source kind: its YAML key and how a declaration of it is planned.
pub struct SourceKind {
    pub key: &'static str,
    /// Its name in messages listing kinds (`Kafka`: "a Kafka or NATS source").
    pub name: &'static str,
    /// What its sources are called in the plural in messages listing kinds (`Kafka topics`,
    /// `files`, `the generator`).
    pub plural: &'static str,
    pub declared: fn(&SourceDoc) -> bool,
    /// Whether it reads Avro records (message payloads).
    pub reads_avro: bool,
    /// Whether a replay re-reads it (its connector implements
    /// [`SourceConnector::replay`]).
    pub replays: bool,
    /// What a worker pool can share of it (`Kafka topic`), `None` when nothing (its
    /// connector then keeps [`SourceConnector::pool_refusal`]'s default).
    pub pooled: Option<&'static str>,
    /// The secret values its YAML holds (masked wherever they would be shown).
    pub secrets: fn(&SourceDoc) -> Vec<String>,
    pub plan: fn(&SourcePlanning) -> Result<PlannedInput, PipelineError>,
}

super::source_kinds!(registry [
    /// Every source kind, in the order error messages list them.
    SOURCES: SourceKind
]);

/// What opening a source for a run needs besides its configuration.
pub struct OpenSource<'a> {
    /// The source's index in the plan.
    pub index: usize,
    pub name: &'a str,
    /// The engine-wide id of its first partition.
    pub first_partition: usize,
    /// The schema of its decoded batches.
    pub output_schema: arrow::datatypes::SchemaRef,
    /// Where partition `key` resumes, from the checkpoint being restored.
    pub resume: &'a dyn Fn(&str) -> Option<Resume>,
    /// Partitions read over a range of their own instead (a replay's): where partition
    /// `key` starts and stops, `None` for a partition read as usual.
    pub bounds: &'a dyn Fn(&str) -> Option<ReadBounds>,
    /// Read to the end present at the start (or to each partition's bound), then stop.
    pub until_caught_up: bool,
    /// How long a bounded read waits for the end, when set.
    pub caught_up_timeout: Option<Duration>,
}

impl OpenSource<'_> {
    /// Where partition `key` starts: its bounded read's start, else where the checkpoint
    /// resumes it; `None` to start as the source's configuration says.
    pub fn start(&self, key: &str) -> Option<u64> {
        self.start_at(key).map(|r| r.next_offset)
    }

    /// [`Self::start`] with the checkpoint's whole position (its log's incarnation included,
    /// see [`Resume::incarnation`]).
    pub fn start_at(&self, key: &str) -> Option<Resume> {
        match (self.bounds)(key) {
            Some(b) => Some(Resume::at(b.start)),
            None => (self.resume)(key),
        }
    }

    /// Where partition `key` stops, when its read is bounded: the position past its last
    /// message.
    pub fn end(&self, key: &str) -> Option<u64> {
        (self.bounds)(key).map(|b| b.end)
    }
}

/// A bounded read of one partition: positions (offsets, sequences) `start..end`, `end`
/// being the position past its last message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadBounds {
    pub start: u64,
    pub end: u64,
}

/// No partition is bounded: every one is read as usual (a run that is not a replay).
pub fn unbounded(_key: &str) -> Option<ReadBounds> {
    None
}

/// A source opened for a run: its reader and the keys of its partitions.
pub struct OpenedSource {
    pub reader: Box<dyn PartitionReader>,
    pub keys: Vec<String>,
}

/// The part of a time range a replay reads from one source.
pub struct ReplayedSource {
    /// The range of each partition, as its connector defines it.
    pub ranges: Vec<Box<dyn ReplayRange>>,
}

/// The messages a replay reads from one partition of a source: a connector's own value,
/// which the replay counts, prints and follows without knowing what it reads.
pub trait ReplayRange: Debug + Send + Sync {
    /// The partition's key (`topic/partition`), as a progress bar names it.
    fn key(&self) -> String;
    /// The key of the partition its reader reads, as checkpoints and
    /// [`OpenSource::bounds`] name it (by default [`key`](Self::key)).
    fn partition(&self) -> String {
        self.key()
    }
    /// Where the read of its partition starts and stops.
    fn bounds(&self) -> ReadBounds {
        ReadBounds {
            start: self.start(),
            end: self.end(),
        }
    }
    /// The position (offset, sequence) of its first message.
    fn start(&self) -> u64;
    /// The position past its last message.
    fn end(&self) -> u64;
    /// Messages to read.
    fn messages(&self) -> u64 {
        self.end().saturating_sub(self.start())
    }
    /// Where the source's reader is: the position after the last message it read.
    fn read(&self) -> Arc<AtomicU64>;
    /// One line for `weir replay`: `KEY: offsets START..END (N messages; ...)`.
    fn describe(&self) -> String;
    /// Why the range may miss messages at its start (deleted before it was read: its first
    /// windows would be rewritten from part of their events), when the source can tell.
    fn deleted_before(&self) -> Option<String> {
        None
    }
    /// Why the range may miss messages at its end (nothing past its end time written yet:
    /// its last windows may still be open), when the source can tell.
    fn open_end(&self) -> Option<String> {
        None
    }
    /// The time of the partition's newest message, when the source can tell.
    fn newest_ms(&self) -> Option<i64> {
        None
    }
}

/// Kinds `with` selects, by `name`, as `a, b or c` (`and` when `and`).
fn listed(with: impl Fn(&SourceKind) -> Option<&'static str>, last: &str) -> String {
    super::list(SOURCES.iter().filter_map(with), last)
}

/// Why source `source` in format `avro` is refused: its kind reads no Avro.
pub(crate) fn avro_refusal(source: &str) -> String {
    format!(
        "source `{source}`: format `avro` is read from {} messages; {} are json",
        listed(|k| k.reads_avro.then_some(k.name), "or"),
        listed(|k| (!k.reads_avro).then_some(k.plural), "and"),
    )
}

/// Why a source cannot take the event-time field the pipeline declares: always the user's to
/// fix (the caller locates it at `event_time.field`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventTimeError {
    /// The source's records carry their event time in one field of their own.
    #[error("the {source_kind}'s event time is its `{field}` field")]
    FixedField {
        source_kind: &'static str,
        field: &'static str,
    },
}

impl EventTimeError {
    /// Always a user error: the pipeline file must name another field.
    pub fn kind(&self) -> weir_engine::ErrorKind {
        weir_engine::ErrorKind::User
    }
}

/// A planned source as `Any`, for code inside its own folder (a pool's reader of it).
pub trait SourceBase {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: SourceConnector + 'static> SourceBase for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// A planned source: what it reads, checked.
pub trait SourceConnector: SourceBase + Debug + Send + Sync {
    /// Its YAML key (`kafka`, `file`...), shown as its kind.
    fn kind(&self) -> &'static str;
    /// The message columns its records offer (`_key`..., `_subject`...).
    fn message_columns(&self) -> &'static [MessageColumn] {
        &[]
    }
    /// `idle_timeout` when not given.
    fn default_idle_timeout_ms(&self) -> Option<u64> {
        None
    }
    /// Takes the source's event time: its field and idle timeout. `Err` says what is wrong
    /// with the event-time field (located by the caller).
    fn set_event_time(
        &mut self,
        _field: &str,
        _idle_timeout_ms: Option<u64>,
    ) -> Result<(), EventTimeError> {
        Ok(())
    }
    /// Whether the pipeline reads its `_headers` column.
    fn set_headers(&mut self, _read: bool) {}
    /// What checkpointed state depends on.
    fn fingerprint(&self) -> String;
    /// One line for the web console's graph (no addresses or credentials).
    fn summary(&self) -> String;
    /// What `weir validate` says of it.
    fn describe(&self) -> String;
    /// Opens its reader for a run.
    fn open(&self, at: &OpenSource) -> Result<OpenedSource, RunError>;
    /// Keys its partitions had in checkpoints of earlier versions, each with its key now
    /// (former, now): a restore renames them (see `Manifest::rename_partitions`).
    fn former_partition_keys(&self) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Sets it up to re-read what a replay of `range` (ms, margins included) needs.
    fn replay(
        &mut self,
        source: &str,
        _range: (i64, i64),
        _suffix: &str,
    ) -> Result<ReplayedSource, ReplayError> {
        Err(ReplayError::NotReplayable {
            source_name: source.to_string(),
            kinds: listed(|k| k.replays.then_some(k.name), "or"),
            plural: listed(|k| k.replays.then_some(k.plural), "and"),
        })
    }
    /// Why it cannot be shared by a worker pool, `None` when it can; `keyed` says whether its
    /// declared `partitioned_by` keys every window and view reading it.
    fn pool_refusal(&self, source: &str, _keyed: bool) -> Option<String> {
        Some(format!(
            "source `{source}` is not a {}: only those can be shared by a worker pool",
            listed(|k| k.pooled, "or"),
        ))
    }
    /// Whether a pool assigns its partitions among the workers itself (workers then
    /// heartbeat), rather than a broker's consumer group.
    fn pool_assigns_partitions(&self) -> bool {
        false
    }
    /// Its reader for a pool worker's jobs, claiming the partitions the worker is assigned
    /// (asked only of sources [`pool_refusal`](Self::pool_refusal) accepts).
    fn pooled(&self, at: &PoolSource) -> Result<PooledSource, RunError> {
        Err(crate::run::PoolRefusal::NotPooled(at.name.to_string()).into())
    }
    /// Why a pool cannot repartition it through an internal topic, `None` when it can
    /// (asked when its `partitioned_by` does not key its windows and views).
    fn repartition_refusal(&self, _source: &str) -> Option<String> {
        None
    }
    /// When it reads a repartition topic: how many upstream partitions (lanes) each of its
    /// partitions carries (checkpoints of format 1 numbered their state by lane).
    fn lanes_per_partition(&self) -> Option<u32> {
        None
    }
    /// Retargets it to read the internal topic that `at` repartitions its events through,
    /// and returns the stage that writes them there; `None` when it is not repartitioned.
    fn repartition(
        &mut self,
        _at: Repartitioning,
    ) -> Result<Option<Box<dyn Repartition>>, RunError> {
        Ok(None)
    }
}
