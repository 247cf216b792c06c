//! Running a plan on the engine.

use std::sync::Arc;
use std::time::Duration;

use weir_engine::job::{self, JobSpec, OperatorSpec, Sink, SourceSpec, StopHandle, WorkerOperator};
use weir_engine::stats::RunStats;
use weir_engine::EngineError;
use weir_operators::{WindowMerger, WindowWorker};
use weir_sinks::{DeadLetterFile, DeadLetterKafka, FileSink, KafkaSink};
use weir_sources::{FileReader, GeneratorReader, KafkaPartitions, KafkaReader};

use crate::error::PipelineError;
use crate::plan::{DeadLetterTarget, Plan, SinkTarget, SourceInput};

/// How to run.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Worker threads; defaults to the pipeline's `parallelism`, then 1.
    pub parallelism: Option<usize>,
    /// Stops the run from another thread (SIGINT).
    pub stop: StopHandle,
    /// Bytes per chunk read from files (default 1 MiB); smaller chunks spread a small file
    /// over more workers.
    pub file_chunk_bytes: Option<usize>,
    /// Kafka sources end once every assigned partition reached the end offset it had when
    /// it was assigned (for tests and backfills); the run then finishes like a file's.
    pub until_caught_up: bool,
}

/// Why a run did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The pipeline uses parts this version does not have (a user error).
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Unavailable(Vec<PipelineError>),
    /// The run failed while running.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    pub parallelism: usize,
    pub records_in: u64,
    pub bad: u64,
    pub late: u64,
    pub windows_emitted: u64,
    pub rows_written: Vec<(String, u64)>,
    pub dead_letters: u64,
    pub elapsed: Duration,
}

impl RunSummary {
    /// Records per second of wall time.
    pub fn events_per_second(&self) -> f64 {
        self.records_in as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The parallelism a run of `plan` uses.
pub fn parallelism(plan: &Plan, opts: &RunOptions) -> usize {
    opts.parallelism.or(plan.parallelism).unwrap_or(1).max(1)
}

/// Runs a plan until its sources end (or `opts.stop`).
pub fn run(plan: Plan, opts: RunOptions) -> Result<RunSummary, RunError> {
    if !plan.unavailable.is_empty() {
        return Err(RunError::Unavailable(plan.unavailable));
    }
    let n = parallelism(&plan, &opts);
    let mut sources = Vec::new();
    let mut first_partition = 0;
    for (i, s) in plan.sources.iter().enumerate() {
        let (reader, partitions): (Box<dyn job::PartitionReader>, usize) = match &s.input {
            SourceInput::Files(files) => (
                Box::new(FileReader::new(i, &s.name, files.clone(), first_partition)),
                files.len(),
            ),
            SourceInput::Generator(cfg) => (
                Box::new(GeneratorReader::new(
                    i,
                    &s.name,
                    first_partition,
                    cfg.clone(),
                    s.output_schema.clone(),
                )),
                1,
            ),
            SourceInput::Kafka(cfg) => {
                let mut cfg = cfg.clone();
                cfg.until_caught_up = opts.until_caught_up;
                let partitions =
                    KafkaPartitions::discover(&cfg).map_err(|e| EngineError::source(&s.name, e))?;
                let total = partitions.total();
                (
                    Box::new(KafkaReader::new(
                        i,
                        &s.name,
                        first_partition,
                        cfg,
                        &partitions,
                    )),
                    total,
                )
            }
        };
        first_partition += partitions;
        sources.push(SourceSpec {
            name: s.name.clone(),
            reader,
            decoder: s.decoder.clone(),
            partitions,
            max_out_of_orderness_ms: s.max_out_of_orderness_ms as i64,
        });
    }
    // Only sinks that receive rows are opened.
    let used: Vec<bool> = (0..plan.sinks.len())
        .map(|i| plan.windows.iter().any(|w| w.sinks.contains(&i)))
        .collect();
    let mut sink_index = vec![usize::MAX; plan.sinks.len()];
    let mut sinks: Vec<(String, Box<dyn Sink>)> = Vec::new();
    for (i, s) in plan.sinks.iter().enumerate() {
        if !used[i] {
            tracing::warn!(sink = %s.name, "sink receives no output and is not opened");
            continue;
        }
        let sink: Box<dyn Sink> = match &s.target {
            SinkTarget::File { path, format } => {
                let schema = s.schema.clone().expect("a used sink has a schema");
                Box::new(FileSink::create(&s.name, path, *format, schema)?)
            }
            SinkTarget::Kafka(cfg) => Box::new(KafkaSink::new(&s.name, cfg.clone())?),
            SinkTarget::Unavailable(_) => unreachable!("unavailable sinks are refused above"),
        };
        sink_index[i] = sinks.len();
        sinks.push((s.name.clone(), sink));
    }
    let mut operators = Vec::new();
    for w in &plan.windows {
        let workers = (0..n)
            .map(|_| {
                WindowWorker::new(w.config.clone()).map(|x| Box::new(x) as Box<dyn WorkerOperator>)
            })
            .collect::<Result<Vec<_>, _>>()?;
        operators.push(OperatorSpec {
            name: w.config.name.clone(),
            source: w.source,
            workers,
            merge: Box::new(WindowMerger::new(w.config.clone())?),
            sinks: w.sinks.iter().map(|s| sink_index[*s]).collect(),
        });
    }
    let dead_letter: Box<dyn job::DeadLetterSink> = match &plan.dead_letter {
        DeadLetterTarget::File(path) => Box::new(DeadLetterFile::create(path)?),
        DeadLetterTarget::Kafka(cfg) => Box::new(DeadLetterKafka::new(cfg.clone())?),
    };
    let op_names: Vec<String> = plan.windows.iter().map(|w| w.config.name.clone()).collect();
    let sink_names: Vec<String> = sinks.iter().map(|(n, _)| n.clone()).collect();
    let stats = Arc::new(RunStats::new(&op_names, &sink_names));
    tracing::info!(pipeline = %plan.name, parallelism = n, "run starting");
    let report = job::run(
        JobSpec {
            sources,
            operators,
            sinks,
            dead_letter,
            parallelism: n,
        },
        stats.clone(),
        opts.stop,
    )?;
    let get = RunStats::get;
    Ok(RunSummary {
        parallelism: n,
        records_in: get(&stats.records_in),
        bad: get(&stats.bad),
        late: stats.late_total(),
        windows_emitted: stats.windows_total(),
        rows_written: stats
            .rows_written
            .iter()
            .map(|c| (c.name.clone(), get(&c.value)))
            .collect(),
        dead_letters: get(&stats.dead_letters),
        elapsed: report.elapsed,
    })
}
