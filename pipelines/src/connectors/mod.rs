//! Connectors: one folder per system, each owning what a pipeline file says of it (its YAML
//! checked with positions, defaults, secrets), how it describes and fingerprints itself, how
//! it opens for a run, and what it does in a replay and in a worker pool (or why it cannot).
//!
//! The [`SINKS`], [`DEAD_LETTERS`] and [`SOURCES`] registries map a YAML key to its
//! connector; planning, running, replaying and pooling go through the traits below, and no
//! code outside `connectors/` matches on a connector kind.
//!
//! A new connector touches:
//! - its folder, `connectors/<kind>/`: its YAML block types (`doc.rs`), planning, the
//!   connector types implementing the traits below, and its unit tests;
//! - this file: its `pub mod <kind>;`;
//! - per role it takes, one registry line: its YAML key, its kind constant and its block's
//!   type in [`sink_kinds!`], [`dead_letter_kinds!`] or [`source_kinds!`] (here). The YAML
//!   model's [`SinkDoc`], [`DeadLetterDoc`] and [`SourceDoc`] get their connector fields from
//!   these lists, and the [`SINKS`], [`DEAD_LETTERS`] and [`SOURCES`] registries their
//!   entries; the model names no connector (`tests/architecture.rs` checks it).
//!
//! Its rows in the book's reference (`docs/src/reference/`) and the regenerated
//! `pipelines/pipeline.schema.json` follow, as tests require.
//!
//! [`SourceDoc`]: crate::model::SourceDoc

use std::any::Any;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use serde_saphyr::Spanned;
use weir_engine::checkpoint::Manifest;
use weir_engine::job::{DeadLetterSink, Sink};
use weir_engine::stats::DeliveryStats;
use weir_engine::EngineError;

use crate::error::PipelineError;
use crate::model::{DeadLetterDoc, PipelineDoc, SinkDoc};
use crate::plan::Ctx;
use crate::run::RunError;

/// Every source kind, in the order error messages list them: its YAML key (a field of
/// [`SourceDoc`], described by the comment above it), its registry entry ([`SourceKind`])
/// and its block's type, both under `connectors::`. Calls `$then!` with the list (after `[$with]`, as given): the model
/// makes [`SourceDoc`] of it and `sources.rs` the [`SOURCES`] registry.
macro_rules! source_kinds {
    ($then:ident $([$($with:tt)*])?) => {
        $then! {
            [$($($with)*)?]
            /// Read Kafka topics.
            kafka: kafka::SOURCE, kafka::doc::KafkaSourceDoc;
            /// Read a NATS JetStream stream (a durable pull consumer).
            nats: nats::SOURCE, nats::doc::NatsSourceDoc;
            /// Read NDJSON files (a file, a folder or a glob; one partition per file).
            file: file::SOURCE, file::doc::FileSourceDoc;
            /// Synthetic events from the built-in generator.
            generator: generator::SOURCE, generator::doc::GeneratorDoc;
        }
    };
}
pub(crate) use source_kinds;

/// Every sink kind, in the order error messages list them: its YAML key (a field of
/// [`SinkDoc`]), its registry entry ([`SinkKind`]) and its block's type. Calls `$then!` with
/// the list: the model makes [`SinkDoc`] of it and this file the [`SINKS`] registry.
macro_rules! sink_kinds {
    ($then:ident $([$($with:tt)*])?) => {
        $then! {
            [$($($with)*)?]
            /// Write to a Kafka topic.
            kafka: kafka::SINK, kafka::doc::KafkaSinkDoc;
            /// Write an Iceberg table.
            iceberg: iceberg::SINK, iceberg::doc::IcebergDoc;
            /// Index into Elasticsearch.
            elasticsearch: elasticsearch::SINK, elasticsearch::doc::ElasticsearchDoc;
            /// Send rows to an HTTP endpoint as signed webhooks (Standard Webhooks).
            webhook: webhook::SINK, webhook::doc::WebhookDoc;
            /// Upsert into a PostgreSQL table.
            postgres: postgres::SINK, postgres::doc::PostgresDoc;
            /// Publish to a NATS JetStream subject.
            nats: nats::SINK, nats::sink::NatsSinkDoc;
            /// Write a file: `.ndjson`, `.csv` or `.parquet` by extension.
            file: file::SINK, file::doc::FileSinkDoc;
        }
    };
}
pub(crate) use sink_kinds;

/// Every dead-letter output kind, in the order error messages list them, as
/// [`sink_kinds!`] lists sinks: the model makes [`DeadLetterDoc`] of it and this file the
/// [`DEAD_LETTERS`] registry.
macro_rules! dead_letter_kinds {
    ($then:ident $([$($with:tt)*])?) => {
        $then! {
            [$($($with)*)?]
            /// Write dead letters to an NDJSON file.
            file: file::DEAD_LETTER, file::doc::FileSinkDoc;
            /// Write dead letters to a Kafka topic.
            kafka: kafka::DEAD_LETTER, kafka::doc::KafkaSinkDoc;
            /// Publish dead letters to a NATS JetStream subject.
            nats: nats::DEAD_LETTER, nats::sink::NatsSinkDoc;
        }
    };
}
pub(crate) use dead_letter_kinds;

/// Makes a registry (`$name`, of `$entry`s) from one of the kind lists above.
macro_rules! registry {
    ([$(#[$doc:meta])* $name:ident: $entry:ty]
     $($(#[$about:meta])* $key:ident: $($kind:ident)::+, $($block:ident)::+;)*) => {
        $(#[$doc])*
        pub const $name: &[$entry] = &[$(crate::connectors::$($kind)::+),*];
    };
}

pub mod elasticsearch;
pub mod file;
pub mod generator;
pub mod iceberg;
pub mod kafka;
pub mod nats;
mod pooled;
pub mod postgres;
mod sources;
#[cfg(test)]
pub(crate) mod tests;
pub mod webhook;

pub use pooled::{
    internal_topic, OwnedPartitions, PoolSource, PooledReader, PooledSource, Repartition,
    Repartitioning, RunningRepartition, HANDOVER_TIMEOUT,
};
pub(crate) use sources::avro_refusal;
pub use sources::{
    unbounded, AvroLimitsDoc, EventTimeError, OpenSource, OpenedSource, ReadBounds, ReplayRange,
    ReplayedSource, SourceBase, SourceConnector, SourceKind, SourcePlanning, SOURCES,
};

/// What a sink's planning reads: the whole file (defaults such as Kafka brokers), the
/// pipeline's and the sink's names, and the sink's YAML.
pub struct SinkPlanning<'a> {
    pub doc: &'a PipelineDoc,
    pub ctx: &'a Ctx<'a>,
    pub pipeline: &'a str,
    pub name: &'a str,
    pub sink: &'a Spanned<SinkDoc>,
}

/// A sink kind: its YAML key and how a declaration of it is planned.
pub struct SinkKind {
    /// The key under a sink (`kafka`, `file`...).
    pub key: &'static str,
    /// Its name in messages listing kinds (`Kafka`: "Kafka and NATS sinks").
    pub name: &'static str,
    /// Whether the sink's YAML declares this kind.
    pub declared: fn(&SinkDoc) -> bool,
    /// Whether the sink-level `format` key applies to it.
    pub takes_format: bool,
    /// Where its format comes from instead, when it says more than that it has its own
    /// (`a file's format follows its extension (...)`).
    pub own_format: Option<&'static str>,
    /// The secret values its YAML holds (masked wherever they would be shown).
    pub secrets: fn(&SinkDoc) -> Vec<String>,
    /// The checked sink.
    pub plan: fn(&SinkPlanning) -> Result<Box<dyn SinkConnector>, PipelineError>,
}

sink_kinds!(registry [
    /// Every sink kind, in the order error messages list them.
    SINKS: SinkKind
]);

/// Why sink `sink`'s `format` is refused: its kind takes none (the kinds that take one, and
/// where the others' formats come from).
pub(crate) fn format_refusal(sink: &str) -> String {
    let takers = list(
        SINKS.iter().filter(|k| k.takes_format).map(|k| k.name),
        "and",
    );
    let others = SINKS.iter().filter(|k| !k.takes_format);
    let mut own: Vec<String> = others
        .clone()
        .filter_map(|k| k.own_format.map(str::to_string))
        .collect();
    let rest: Vec<&str> = others
        .filter(|k| k.own_format.is_none())
        .map(|k| k.name)
        .collect();
    if !rest.is_empty() {
        own.push(format!(
            "{} sinks have their own",
            list(rest.into_iter(), "and")
        ));
    }
    format!(
        "sink `{sink}`: `format` is for {takers} sinks: {}",
        own.join(", ")
    )
}

/// A window or view naming a sink: the output it binds the sink to.
pub struct Attach<'a> {
    pub ctx: &'a Ctx<'a>,
    /// The sink's name where the output names it.
    pub reference: &'a Spanned<String>,
    /// The rows the output writes.
    pub schema: &'a SchemaRef,
    /// The schema of another output already writing to the sink.
    pub previous: Option<&'a SchemaRef>,
    /// The window's or view's name.
    pub output: &'a str,
}

impl Attach<'_> {
    /// An error located where the output names the sink.
    pub fn err(&self, message: impl Into<String>) -> PipelineError {
        self.ctx.err(&self.reference.referenced, message)
    }

    /// The number of key columns of a view's rows; `None` for a window.
    pub fn view_keys(&self) -> Option<usize> {
        self.schema
            .metadata()
            .get(weir_engine::KEYS_METADATA)
            .and_then(|k| k.parse().ok())
    }
}

/// What opening a sink for a run needs besides its configuration.
pub struct OpenSink<'a> {
    pub pipeline: &'a str,
    pub name: &'a str,
    pub schema: &'a SchemaRef,
    /// Whether the run checkpoints (outputs then commit per checkpoint).
    pub checkpointed: bool,
    /// The windows whose rows this run replaces (a replay's range), if it replaces any:
    /// an output that can replace rows by range (Iceberg) drops theirs first.
    pub replaces: Option<WindowStarts>,
    /// Delivery statistics of sinks that keep them (webhooks), by sink name.
    pub deliveries: &'a mut Vec<(String, Arc<DeliveryStats>)>,
}

/// Windows starting in `[from_ms, to_ms)` (event time, ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowStarts {
    pub from_ms: i64,
    pub to_ms: i64,
}

impl WindowStarts {
    /// Whether a window starting at `start` is one of them.
    pub fn contains(&self, start: i64) -> bool {
        start >= self.from_ms && start < self.to_ms
    }
}

/// What every planned sink has without writing it: a boxed copy and a view as `Any` (for
/// code inside its own folder, such as `weir compact` for Iceberg).
pub trait SinkBase {
    fn clone_box(&self) -> Box<dyn SinkConnector>;
    fn as_any(&self) -> &dyn Any;
}

impl<T: SinkConnector + Clone + 'static> SinkBase for T {
    fn clone_box(&self) -> Box<dyn SinkConnector> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A planned sink: where rows go, checked.
pub trait SinkConnector: SinkBase + Debug + Send + Sync {
    /// Its YAML key (`kafka`, `file`...), shown as its kind.
    fn kind(&self) -> &'static str;
    /// What checkpointed state depends on (no secrets: fingerprints are stored in clear).
    fn fingerprint(&self) -> String;
    /// Its fingerprint as earlier versions wrote it, where it differs (see
    /// `Plan::former_fingerprint`).
    fn former_fingerprint(&self) -> Option<String> {
        None
    }
    /// One line for the web console's graph (no addresses, credentials or properties).
    fn summary(&self) -> String;
    /// What `weir validate` says of it.
    fn describe(&self, checkpointed: bool) -> String;
    /// Binds it to the window or view that names it, whose rows it receives.
    fn attach(&mut self, at: &Attach) -> Result<(), PipelineError>;
    /// Opens it for a run.
    fn open(&self, at: &mut OpenSink) -> Result<Box<dyn Sink>, RunError>;
    /// What a replay writes to instead (by default the same: rows are replaced by identity).
    fn replayed(&self, _suffix: &str) -> Box<dyn SinkConnector> {
        self.clone_box()
    }
    /// Why it cannot run in a worker pool, `None` when it can.
    fn pool_refusal(&self, _sink: &str) -> Option<String> {
        None
    }
    /// Makes it write as worker `worker` of a pool (files get the worker's id).
    fn for_worker(&mut self, _worker: &str) {}
    /// Finishes the commit of checkpoint `m` that dead worker `worker` left unfinished (its
    /// own configuration, not a worker's), for worker `adopter`, which takes its partitions.
    fn roll_forward(
        &self,
        _sink: &str,
        _worker: &str,
        _adopter: &str,
        _m: &Manifest,
    ) -> Result<(), EngineError> {
        Ok(())
    }
    /// The local file it writes, if it writes one.
    fn local_file(&self) -> Option<&Path> {
        None
    }
}

impl Clone for Box<dyn SinkConnector> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// A dead-letter output kind: its YAML key and how a declaration of it is planned.
pub struct DeadLetterKind {
    pub key: &'static str,
    pub declared: fn(&DeadLetterDoc) -> bool,
    /// The secret values its YAML holds.
    pub secrets: fn(&DeadLetterDoc) -> Vec<String>,
    pub plan: PlanDeadLetter,
}

/// Plans a `dead_letter:` declaration of one kind.
pub type PlanDeadLetter = fn(
    &PipelineDoc,
    &Ctx,
    &Spanned<DeadLetterDoc>,
) -> Result<Box<dyn DeadLetterConnector>, PipelineError>;

dead_letter_kinds!(registry [
    /// Every dead-letter output kind, in the order error messages list them.
    DEAD_LETTERS: DeadLetterKind
]);

/// A boxed copy of a planned dead-letter output, without writing it.
pub trait DeadLetterBase {
    fn clone_box(&self) -> Box<dyn DeadLetterConnector>;
}

impl<T: DeadLetterConnector + Clone + 'static> DeadLetterBase for T {
    fn clone_box(&self) -> Box<dyn DeadLetterConnector> {
        Box::new(self.clone())
    }
}

/// A planned dead-letter output.
pub trait DeadLetterConnector: DeadLetterBase + Debug + Send + Sync {
    fn kind(&self) -> &'static str;
    /// What checkpointed state depends on.
    fn fingerprint(&self) -> String;
    /// Its fingerprint as earlier versions wrote it, where it differs.
    fn former_fingerprint(&self) -> Option<String> {
        None
    }
    /// What `weir validate` says of it.
    fn describe(&self) -> String;
    /// Opens it for a run (committed per checkpoint when the run checkpoints).
    fn open(&self, checkpointed: bool) -> Result<Box<dyn DeadLetterSink>, RunError>;
    /// The local file it writes, if it writes one.
    fn local_file(&self) -> Option<&Path> {
        None
    }
    /// Where a replay writes its dead letters instead: beside the live run's, never into
    /// them; `fallback` (a file beside the pipeline) when the live ones are not a file.
    fn replayed(&self, _suffix: &str, fallback: &Path) -> Box<dyn DeadLetterConnector> {
        Box::new(file::FileDeadLetter {
            path: fallback.to_path_buf(),
        })
    }
    /// Makes it write as worker `worker` of a pool.
    fn for_worker(&mut self, _worker: &str) {}
    /// Finishes the commit of checkpoint `m` that dead worker `worker` left unfinished.
    fn roll_forward(&self, _worker: &str, _m: &Manifest) -> Result<(), EngineError> {
        Ok(())
    }
}

impl Clone for Box<dyn DeadLetterConnector> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// The dead-letter output of a pipeline that declares none: `dead_letter.ndjson` in `dir`,
/// the pipeline file's folder.
pub fn default_dead_letter(dir: &Path) -> Box<dyn DeadLetterConnector> {
    Box::new(file::FileDeadLetter {
        path: dir.join("dead_letter.ndjson"),
    })
}

/// Secret values among client `properties`: secret-named ones, and passwords in URLs.
pub(crate) fn property_secrets(properties: &indexmap::IndexMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in properties {
        if crate::secrets::is_secret_name(k) {
            out.push(v.clone());
        }
        out.extend(crate::secrets::url_password(v));
    }
    out
}

/// The passwords of `urls`.
pub(crate) fn url_secrets<'a>(urls: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    urls.into_iter()
        .filter_map(|u| crate::secrets::url_password(u))
        .collect()
}

/// How long finishing a dead worker's commit is retried while its server is unavailable.
const ROLL_FORWARD_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

/// Runs `finish` (finishing dead worker `worker`'s commit of `epoch` in sink `sink`) until it
/// succeeds, fails for good, or its server stays unavailable for [`ROLL_FORWARD_PATIENCE`].
pub(crate) fn patiently(
    sink: &str,
    worker: &str,
    epoch: u64,
    mut finish: impl FnMut() -> Result<(), EngineError>,
) -> Result<(), EngineError> {
    let started = std::time::Instant::now();
    let mut backoff = std::time::Duration::from_millis(200);
    loop {
        match finish() {
            Err(EngineError::Unavailable(why)) if started.elapsed() < ROLL_FORWARD_PATIENCE => {
                tracing::warn!(sink, worker, epoch, error = %why.chain(), "finishing another worker's commit: retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// No secrets.
pub(crate) fn none<T>(_: &T) -> Vec<String> {
    Vec::new()
}

/// Every key of `kinds`, quoted, for "needs exactly one of" messages.
pub(crate) fn keys_of<'a>(keys: impl Iterator<Item = &'a str>) -> String {
    keys.map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `items` as prose: `a`, `a and b`, `a, b and c` (with `last` for `and`).
pub(crate) fn list<'a>(items: impl Iterator<Item = &'a str>, last: &str) -> String {
    let items: Vec<&str> = items.collect();
    match items.split_last() {
        None => String::new(),
        Some((only, [])) => only.to_string(),
        Some((tail, head)) => format!("{} {last} {tail}", head.join(", ")),
    }
}

/// What tells two local files apart however their paths are spelled (`out.ndjson`,
/// `./out.ndjson`, `x/../out.ndjson`, a link to it): the path with its existing part resolved
/// (see `file::stable_path`) and the rest, which does not exist yet and so holds no link, with
/// its `.` and `..` taken lexically.
pub(crate) fn one_file(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in file::stable_path(path).components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}
