//! From a pipeline file to a checked plan: names resolved, schemas loaded, SQL compiled.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use serde_saphyr::Location;
use weir_engine::job::Decode;
use weir_engine::retry::RetryPolicy;
use weir_operators::{SqlCompiler, ViewConfig, WindowConfig};
use weir_sources::SourceSchema;

use crate::error::PipelineError;
use crate::interpolate::{interpolate, Interpolated};
use crate::model::*;

mod describe;
mod outputs;
mod settings;
mod sinks;
mod sources;
#[cfg(test)]
mod tests;

pub use crate::connectors::iceberg::{iceberg_config, IcebergTarget};
pub use crate::connectors::webhook::WebhookTarget;
use crate::connectors::{
    DeadLetterConnector, SinkConnector, SourceConnector, DEAD_LETTERS, SINKS, SOURCES,
};

/// `event_time.max_future` when not given: 1 hour.
pub const DEFAULT_MAX_FUTURE_MS: u64 = weir_engine::bounds::DEFAULT_MAX_FUTURE_MS as u64;

/// `event_time.idle_timeout` of a Kafka source when not given.
pub const DEFAULT_KAFKA_IDLE_TIMEOUT_MS: u64 = crate::connectors::kafka::DEFAULT_IDLE_TIMEOUT_MS;

/// A checked source.
pub struct PlannedSource {
    pub name: String,
    /// What it reads.
    pub input: Box<dyn SourceConnector>,
    pub schema: Arc<SourceSchema>,
    pub time_field: String,
    pub max_out_of_orderness_ms: u64,
    pub idle_timeout_ms: Option<u64>,
    /// Rows more than this ahead of the wall clock are dead-lettered (`future_event_time`).
    pub max_future_ms: u64,
    /// The fields the pipeline reads (others are checked, not kept).
    pub columns: Vec<String>,
    pub decoder: Arc<dyn Decode>,
    /// The schema of the decoded batches.
    pub output_schema: SchemaRef,
    /// The fields its producers key (partition) messages by, as declared.
    pub partitioned_by: Vec<String>,
    /// Set while its records wait for an unreachable schema registry.
    pub waiting: Option<weir_engine::stats::Condition>,
}

/// A checked window.
pub struct PlannedWindow {
    pub config: Arc<WindowConfig>,
    pub source: usize,
    pub sinks: Vec<usize>,
    pub retain_ms: Option<u64>,
}

/// A checked materialized view.
pub struct PlannedView {
    pub config: Arc<ViewConfig>,
    pub source: usize,
    /// Sinks receiving its changes (upserts by key) and final snapshot.
    pub sinks: Vec<usize>,
}

/// The SQL endpoints of a run.
#[derive(Debug, Clone)]
pub struct PlannedServe {
    pub http: Option<String>,
    pub postgres: Option<String>,
    pub token: Option<String>,
    pub password: Option<String>,
    pub refresh_ms: u64,
    /// Limits of queries and of the endpoints.
    pub limits: weir_query::QueryLimits,
}

/// Spans exported to an OpenTelemetry collector (OTLP/HTTP).
#[derive(Debug, Clone)]
pub struct PlannedTracing {
    /// The traces endpoint: the base URL with `/v1/traces`.
    pub endpoint: String,
    pub service_name: String,
    pub sample_ratio: f64,
    pub headers: Vec<(String, String)>,
}

/// A checked sink.
pub struct PlannedSink {
    pub name: String,
    /// Where it writes.
    pub target: Box<dyn SinkConnector>,
    /// The schema of the rows it receives (the windows feeding it).
    pub schema: Option<SchemaRef>,
    /// How its failed writes are retried.
    pub retry: RetryPolicy,
}

/// A pipeline ready to run.
pub struct Plan {
    pub name: String,
    pub file: PathBuf,
    pub parallelism: Option<usize>,
    pub sources: Vec<PlannedSource>,
    pub windows: Vec<PlannedWindow>,
    pub views: Vec<PlannedView>,
    pub sinks: Vec<PlannedSink>,
    pub dead_letter: Box<dyn DeadLetterConnector>,
    /// How failed dead-letter writes are retried.
    pub dead_letter_retry: RetryPolicy,
    /// SQL serving, when configured.
    pub serve: Option<PlannedServe>,
    /// Span export, when configured.
    pub tracing: Option<PlannedTracing>,
    /// Checkpointing, when configured.
    pub checkpoint: Option<PlannedCheckpoint>,
}

/// Where and how often a pipeline checkpoints.
#[derive(Debug, Clone)]
pub struct PlannedCheckpoint {
    /// A local folder (resolved against the pipeline's folder) or an object-store URL.
    pub location: String,
    pub interval_ms: u64,
    /// Complete checkpoints kept.
    pub keep: usize,
    /// Also checkpoint as soon as windows were emitted to sinks.
    pub after_windows: bool,
}

/// Checkpoints every 10 s unless told otherwise (Flink users set about this).
pub(crate) const DEFAULT_CHECKPOINT_INTERVAL_MS: u64 = 10_000;

/// What planning reads of the file: its name, interpolated text (for positions) and folder.
pub struct Ctx<'a> {
    pub(crate) file: String,
    pub(crate) text: &'a Interpolated,
    pub(crate) dir: PathBuf,
}

impl Ctx<'_> {
    /// An error at `loc` of the file.
    pub(crate) fn err(&self, loc: &Location, message: impl Into<String>) -> PipelineError {
        let line = loc.line();
        let column = if line == 0 {
            0
        } else {
            self.text.original_column(line, loc.column())
        };
        PipelineError::at(&self.file, line, column, message)
    }
    /// `p` resolved against the pipeline file's folder.
    pub(crate) fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }
}

fn names<T>(m: &indexmap::IndexMap<String, T>) -> String {
    if m.is_empty() {
        "none is declared".to_string()
    } else {
        m.keys()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Reads, interpolates, parses and checks a pipeline file.
pub fn load(path: &Path) -> Result<Plan, PipelineError> {
    let file = path.display().to_string();
    let raw = std::fs::read_to_string(path).map_err(|e| {
        PipelineError::at(&file, 0, 0, "cannot read the pipeline file").caused_by(e)
    })?;
    let env = |name: &str| std::env::var(name).ok();
    let text = interpolate(&raw, &env)
        .map_err(|e| PipelineError::at(&file, e.line, e.column, "").caused_by(e.problem))?;
    crate::secrets::register(text.secrets.iter().cloned());
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    let ctx = Ctx {
        file: file.clone(),
        text: &text,
        dir,
    };
    let doc: PipelineDoc = serde_saphyr::from_str(&text.text).map_err(|e| {
        let loc = e.location().unwrap_or(Location::UNKNOWN);
        ctx.err(&loc, "").caused_by(YamlError(e))
    })?;
    crate::secrets::register(secret_settings(&doc));
    plan(doc, &ctx, path)
}

/// Values of the pipeline's secret settings, written in the file or substituted: passwords,
/// tokens and API keys, secret-named Kafka and catalog properties, and URL passwords.
fn secret_settings(doc: &PipelineDoc) -> Vec<String> {
    use crate::secrets::url_password;
    let mut out = Vec::new();
    for s in doc.sources.values() {
        for kind in SOURCES.iter().filter(|k| (k.declared)(&s.value)) {
            out.extend((kind.secrets)(&s.value));
        }
    }
    for s in doc.sinks.values() {
        for kind in SINKS.iter().filter(|k| (k.declared)(&s.value)) {
            out.extend((kind.secrets)(&s.value));
        }
    }
    if let Some(d) = &doc.dead_letter {
        for kind in DEAD_LETTERS.iter().filter(|k| (k.declared)(&d.value)) {
            out.extend((kind.secrets)(&d.value));
        }
    }
    let mut urls = Vec::new();
    if let Some(c) = &doc.checkpoint {
        urls.push(c.value.dir.clone());
    }
    if let Some(sv) = &doc.serve {
        out.extend(
            [&sv.value.password, &sv.value.token]
                .into_iter()
                .flatten()
                .cloned(),
        );
    }
    if let Some(t) = &doc.tracing {
        out.extend(crate::connectors::property_secrets(&t.value.headers));
        urls.push(t.value.otlp.value.clone());
    }
    out.extend(urls.iter().filter_map(|u| url_password(u)));
    out
}

/// The YAML parser's error, kept as a value; it reads as serde-saphyr's message without its
/// position (the [`PipelineError`] holding it says where).
#[derive(Debug, thiserror::Error)]
#[error("{}", yaml_message(.0))]
pub struct YamlError(pub serde_saphyr::Error);

/// serde-saphyr's message without its own position suffix; for a duplicated key and a number
/// out of its type's range, weir's own (the parser's speaks to its API's user).
fn yaml_message(e: &serde_saphyr::Error) -> String {
    match e.without_snippet() {
        serde_saphyr::Error::DuplicateMappingKey { key, .. } => {
            return match key {
                Some(k) => format!("`{k}` appears twice in this mapping: each key may appear once"),
                None => "a key appears twice in this mapping: each key may appear once".into(),
            };
        }
        serde_saphyr::Error::InvalidScalar { ty, .. } => {
            let range = match *ty {
                "u8" => Some((0, u8::MAX as i128)),
                "u16" => Some((0, u16::MAX as i128)),
                "u32" => Some((0, u32::MAX as i128)),
                "u64" => Some((0, u64::MAX as i128)),
                "i32" => Some((i32::MIN as i128, i32::MAX as i128)),
                "i64" => Some((i64::MIN as i128, i64::MAX as i128)),
                _ => None,
            };
            if let Some((lo, hi)) = range {
                return format!("not a whole number from {lo} to {hi}");
            }
        }
        _ => {}
    }
    let s = e.without_snippet().to_string();
    let s = s.lines().next().unwrap_or(&s).to_string();
    match s.rfind(" at line ") {
        Some(p) => s[..p].to_string(),
        None => s,
    }
}

fn plan(doc: PipelineDoc, ctx: &Ctx, path: &Path) -> Result<Plan, PipelineError> {
    let name = doc.name.value.clone();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        return Err(ctx.err(
            &doc.name.referenced,
            format!("bad pipeline name `{name}`: use lowercase letters, digits, `_` and `-`"),
        ));
    }
    let parallelism = match &doc.parallelism {
        Some(p) if p.value == 0 || p.value > 256 => {
            return Err(ctx.err(&p.referenced, "parallelism must be between 1 and 256"))
        }
        Some(p) => Some(p.value as usize),
        None => None,
    };
    let srcs = sources::check_sources(&doc, ctx)?;
    let mut sinks = sinks::check_sinks(&doc, ctx, &name)?;
    let compiler = SqlCompiler::new();
    let checked = outputs::check_outputs(&doc, ctx, &compiler, &srcs)?;
    let checkpoint = settings::checkpoint(&doc, ctx)?;
    let tracing = settings::tracing(&doc, ctx)?;
    let serve = settings::serve(&doc, ctx)?;
    let (dead_letter, dead_letter_retry) = sinks::dead_letter(&doc, ctx)?;
    sinks::distinct_files(&doc, ctx, &sinks, dead_letter.as_ref())?;
    // decoders with only the columns read, then the windows and views compiled against them
    let sources = sources::planned_sources(&doc, ctx, srcs, &checked.columns)?;
    let windows =
        outputs::compile_windows(&doc, ctx, &compiler, checked.windows, &sources, &mut sinks)?;
    let views = outputs::compile_views(&doc, ctx, &compiler, checked.views, &sources, &mut sinks)?;
    Ok(Plan {
        name,
        file: path.to_path_buf(),
        parallelism,
        sources,
        windows,
        views,
        sinks,
        dead_letter,
        dead_letter_retry,
        tracing,
        serve,
        checkpoint,
    })
}
