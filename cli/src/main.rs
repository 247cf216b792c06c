//! `weir`: run, validate and feed stream pipelines declared in YAML.

mod generate_nats;
mod subscribe;
mod telemetry;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use weir_engine::job::StopHandle;
use weir_pipelines::run::{parallelism, RunError, RunOptions};
use weir_sources::{EventGenerator, GeneratorConfig, Kind};

#[derive(Parser)]
#[command(
    name = "weir",
    version = concat!(env!("CARGO_PKG_VERSION"), " (git ", env!("WEIR_GIT_REV"), ")"),
    about = "weir: stream processing on Arrow, declared in YAML"
)]
struct Cli {
    /// Log format on stderr (levels from RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline until every source ends (or Ctrl-C).
    Run {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Worker threads (overrides the pipeline's `parallelism`).
        #[arg(long)]
        parallelism: Option<usize>,
        /// Keep answering SQL after bounded sources end, until Ctrl-C (needs `serve`).
        #[arg(long)]
        keep_serving: bool,
        /// Serve SQL on a non-loopback address without a token or password.
        #[arg(long)]
        insecure: bool,
        /// Treat Kafka sources as bounded: stop once every partition of their topics reached
        /// the end offset it had when this run started, and finish like a file run.
        #[arg(long)]
        until_caught_up: bool,
        /// With --until-caught-up: how long a run that read every partition it is assigned
        /// waits for the other partitions of its topics (held by a killed process until its
        /// session times out, or by a rebalance; in a pool, read by other workers) before it
        /// fails (exit 2). A duration: 90s, 5m.
        #[arg(long, env = "WEIR_CAUGHT_UP_TIMEOUT", default_value = "2m")]
        caught_up_timeout: String,
        /// Run as this worker of a pool: every `weir run` of the pipeline with a worker id
        /// shares the Kafka partitions (through the consumer group) and the checkpoint
        /// store; `auto` takes the host name and process id. Ids name each worker's output
        /// files, so a restarted worker should keep its id (a StatefulSet's pod name).
        #[arg(long, env = "WEIR_WORKER")]
        worker: Option<String>,
    },
    /// Print the JSON Schema of pipeline files, for editors (yaml-language-server) and CI:
    /// `weir schema > weir.schema.json`, then `# yaml-language-server: $schema=weir.schema.json`
    /// as a pipeline file's first line.
    Schema,
    /// Print a shell completion script: `weir completions bash > /etc/bash_completion.d/weir`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Check a pipeline file and print its plan.
    Validate {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Parallelism to show in the plan.
        #[arg(long)]
        parallelism: Option<usize>,
    },
    /// Write synthetic events as NDJSON, to a file, a Kafka topic or a NATS subject.
    Generate(GenerateArgs),
    /// Re-read a time range of the pipeline's Kafka topics and rewrite the windows starting
    /// in it (Kafka rows by key, Iceberg rows replaced in one snapshot, files written beside
    /// the live ones), with its own state: the live run is not touched.
    Replay {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Start of the range: an RFC 3339 time (2026-11-24T10:00:00Z) or epoch ms.
        #[arg(long)]
        from: String,
        /// End of the range (excluded); default: now.
        #[arg(long)]
        to: Option<String>,
        /// Only this window (repeatable).
        #[arg(long)]
        only: Vec<String>,
        /// Only these sinks (comma-separated).
        #[arg(long, value_delimiter = ',')]
        sinks: Option<Vec<String>>,
        /// Print the offset ranges and the windows that would be rewritten, and stop.
        #[arg(long)]
        dry_run: bool,
        /// Worker threads.
        #[arg(long)]
        parallelism: Option<usize>,
    },
    /// Rewrite the small files of the pipeline's Iceberg tables (those of windows) into few
    /// large ones, in one `replace` snapshot per table; safe while the pipeline runs.
    Compact {
        /// The pipeline file.
        pipeline: PathBuf,
        /// Only this sink's table.
        #[arg(long)]
        sink: Option<String>,
        /// Leave partitions that received a file more recently than this (e.g. 10m, 1h, 0s).
        #[arg(long, default_value = "10m")]
        min_age: String,
        /// Compact a partition once it holds this many small files.
        #[arg(long, default_value_t = 2)]
        min_files: usize,
    },
    /// Query a running engine's windows, views and `weir_status` with SQL.
    Sql {
        /// The query, e.g. "SELECT * FROM service_status WHERE status <> 'HEALTHY'".
        query: String,
        /// The engine's HTTP endpoint (`serve.http`).
        #[arg(long, env = "WEIR_SQL_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// How to print rows.
        #[arg(long, value_enum, default_value = "table")]
        format: SqlFormat,
        /// Bearer token of the endpoint (`serve.token`).
        #[arg(long, env = "WEIR_SQL_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Follow a running engine's window or view: one JSON line per change (`GET /subscribe`).
    Subscribe(subscribe::SubscribeArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum SqlFormat {
    Table,
    Json,
    Csv,
}

#[derive(Args)]
struct GenerateArgs {
    /// data-ingestion or service-health.
    #[arg(value_parser = ["data-ingestion", "service-health"])]
    kind: String,
    /// Number of events.
    #[arg(long)]
    count: u64,
    /// Events per second (0: as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output file (`-` for stdout).
    #[arg(long, conflicts_with_all = ["kafka", "nats"])]
    out: Option<PathBuf>,
    /// BROKERS/TOPIC to produce to (keyed by datasetName/serviceName); the topic is created
    /// with --partitions partitions when it does not exist.
    #[arg(long)]
    kafka: Option<String>,
    /// URL/SUBJECT to publish to with JetStream (every acknowledgement awaited), e.g.
    /// nats://127.0.0.1:4222/events.ingest; a stream is created for the subject when none
    /// captures it (see --nats-stream).
    #[arg(long, conflicts_with = "kafka")]
    nats: Option<String>,
    /// Name of the stream --nats creates when no stream captures the subject (default: the
    /// subject in capitals, other characters `_`).
    #[arg(long, requires = "nats")]
    nats_stream: Option<String>,
    /// Partitions of a topic --kafka creates.
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Distinct datasetName/serviceName values.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Zipf exponent of key popularity.
    #[arg(long, default_value_t = 1.1)]
    skew: f64,
    /// Event time of the first event (epoch ms).
    #[arg(long)]
    start_ms: Option<i64>,
    /// Mean event-time advance per event in ms.
    #[arg(long)]
    step_ms: Option<f64>,
    #[arg(long, default_value_t = 0.2)]
    jitter_frac: f64,
    #[arg(long, default_value_t = 2000)]
    jitter_ms: i64,
    /// Fraction of very late events.
    #[arg(long, default_value_t = 0.0)]
    late_frac: f64,
    #[arg(long, default_value_t = 3_600_000)]
    late_ms: i64,
    /// Fraction of malformed lines.
    #[arg(long, default_value_t = 0.0)]
    bad_frac: f64,
    /// Include non-ASCII, quoted and empty keys.
    #[arg(long)]
    unicode_keys: bool,
}

/// Exit status: 1 for a user error, 2 for a runtime failure.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

fn user(e: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 1,
        error: e.into(),
    }
}

/// A failure of `kind`: exit status 1 for a user error, 2 otherwise.
fn of_kind(kind: weir_engine::ErrorKind, e: impl Into<anyhow::Error>) -> Failure {
    match kind {
        weir_engine::ErrorKind::User => user(e),
        _ => runtime(e),
    }
}

fn runtime(e: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 2,
        error: e.into(),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let telemetry = telemetry::Telemetry::new(cli.log_format);
    if let Err(e) = configure_io() {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    match dispatch(cli.command, &telemetry) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!(
                "error: {}",
                weir_pipelines::secrets::redact(&report(&f.error))
            );
            ExitCode::from(f.code)
        }
    }
}

/// An error with its causes, `a: b: c` (each error keeps what caused it as its source;
/// a cause its error already repeats is printed once).
fn report(e: &anyhow::Error) -> String {
    let e: &(dyn std::error::Error + 'static) = e.as_ref();
    weir_engine::error::chain(e).to_string()
}

/// Sizes the process's I/O runtime from `WEIR_IO_THREADS` (see docs/src/environment.md).
fn configure_io() -> Result<(), String> {
    let Ok(v) = std::env::var("WEIR_IO_THREADS") else {
        return Ok(());
    };
    match v.trim().parse::<usize>() {
        Ok(n @ 1..=256) => {
            weir_engine::io::configure(n);
            Ok(())
        }
        _ => Err(format!(
            "WEIR_IO_THREADS={v}: expected a number of threads from 1 to 256 (default {})",
            weir_engine::io::DEFAULT_THREADS
        )),
    }
}

fn dispatch(cmd: Command, telemetry: &telemetry::Telemetry) -> Result<(), Failure> {
    // `run` and `replay` install the logger once they know the pipeline's `tracing`
    if !matches!(cmd, Command::Run { .. } | Command::Replay { .. }) {
        telemetry.install(None).map_err(runtime)?;
    }
    match cmd {
        Command::Schema => {
            let schema = weir_pipelines::schema::json_schema();
            let text = serde_json::to_string_pretty(&schema).map_err(runtime)?;
            write_stdout(format!("{text}\n").as_bytes())
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "weir", &mut script);
            write_stdout(&script)
        }
        Command::Validate {
            pipeline,
            parallelism: p,
        } => {
            let plan = weir_pipelines::load(&pipeline).map_err(user)?;
            let n = parallelism(
                &plan,
                &RunOptions {
                    parallelism: p,
                    ..Default::default()
                },
            );
            print!("{}", weir_pipelines::secrets::redact(&plan.describe(n)));
            Ok(())
        }
        Command::Replay {
            pipeline,
            from,
            to,
            only,
            sinks,
            dry_run,
            parallelism: p,
        } => {
            let time = |t: &str, what: &str| -> Result<i64, Failure> {
                t.parse::<i64>()
                    .ok()
                    .or_else(|| weir_engine::time::parse_rfc3339_ms(t.as_bytes()))
                    .ok_or_else(|| {
                        user(anyhow::anyhow!(
                            "{what} {t}: use an RFC 3339 time such as 2026-11-24T10:00:00Z, or epoch milliseconds"
                        ))
                    })
            };
            let from_ms = time(&from, "--from")?;
            let to_ms = match &to {
                Some(t) => time(t, "--to")?,
                None => weir_engine::time::now_ms(),
            };
            let plan = telemetry
                .scoped(|| weir_pipelines::load(&pipeline))
                .map_err(user)?;
            let _export = telemetry.install(plan.tracing.as_ref()).map_err(user)?;
            let request = weir_pipelines::replay::ReplayRequest {
                from_ms,
                to_ms,
                only,
                sinks,
            };
            let (plan, setup) = weir_pipelines::replay::prepare(plan, &request)
                .map_err(|e| user(anyhow::anyhow!(e)))?;
            let windows: Vec<String> = plan
                .windows
                .iter()
                .map(|w| {
                    let sinks: Vec<&str> = w
                        .sinks
                        .iter()
                        .map(|&i| plan.sinks[i].name.as_str())
                        .collect();
                    let periods = (to_ms - from_ms + w.config.size_ms - 1) / w.config.size_ms;
                    format!(
                        "  {}: windows starting in [{}, {}), {periods} per key, to {}",
                        w.config.name,
                        weir_engine::time::format_rfc3339_ms(from_ms),
                        weir_engine::time::format_rfc3339_ms(to_ms),
                        sinks.join(", ")
                    )
                })
                .collect();
            println!(
                "replay of {} ({} messages):\n{}{}",
                plan.name,
                setup.messages(),
                setup.describe(&plan),
                windows.join("\n")
            );
            if dry_run {
                return Ok(());
            }
            let setup = std::sync::Arc::new(setup);
            let options = RunOptions {
                parallelism: p,
                replay: Some(setup.clone()),
                ..Default::default()
            };
            let summary = weir_pipelines::run(plan, options).map_err(|e| of_kind(e.kind(), e))?;
            println!(
                "replay finished in {:.2}s: {} events in ({:.0} events/s), {} bad, {} late",
                summary.elapsed.as_secs_f64(),
                summary.records_in,
                summary.events_per_second(),
                summary.bad,
                summary.late,
            );
            let written = setup.written.lock().map(|w| w.clone()).unwrap_or_default();
            for (name, _) in &summary.rows_written {
                let rows = written.get(name).copied().unwrap_or(0);
                println!("  sink {name}: {rows} windows rewritten");
            }
            Ok(())
        }
        Command::Compact {
            pipeline,
            sink,
            min_age,
            min_files,
        } => {
            let plan = weir_pipelines::load(&pipeline).map_err(user)?;
            let min_age_ms = weir_engine::time::parse_duration_ms(&min_age).ok_or_else(|| {
                user(anyhow::anyhow!(
                    "--min-age {min_age}: use a duration such as 0s, 10m or 1h"
                ))
            })?;
            let options = weir_pipelines::compact::CompactOptions {
                min_files,
                min_age_ms: min_age_ms as i64,
            };
            let reports = weir_pipelines::compact(&plan, sink.as_deref(), &options)
                .map_err(|e| user(anyhow::anyhow!(e)))?;
            let mut failed = None;
            for (name, report) in reports {
                match report {
                    Ok(r) if r.partitions == 0 => println!(
                        "{name}: nothing to compact ({} data files)",
                        r.table_files
                    ),
                    Ok(r) => println!(
                        "{name}: {} partition(s): {} files ({} bytes) -> {} files ({} bytes), {} rows; the table now has {} data files",
                        r.partitions, r.files_before, r.bytes_before, r.files_after, r.bytes_after, r.rows, r.table_files
                    ),
                    Err(e) => {
                        eprintln!(
                            "error: sink `{name}`: {}",
                            weir_pipelines::secrets::redact(
                                &weir_engine::error::chain(&e).to_string()
                            )
                        );
                        failed = Some(e);
                    }
                }
            }
            match failed {
                Some(e) => Err(runtime(e)),
                None => Ok(()),
            }
        }
        Command::Run {
            pipeline,
            parallelism: p,
            keep_serving,
            insecure,
            until_caught_up,
            caught_up_timeout,
            worker,
        } => {
            let caught_up_timeout = weir_engine::time::parse_duration_ms(&caught_up_timeout)
                .map(std::time::Duration::from_millis)
                .ok_or_else(|| {
                    user(anyhow::anyhow!(
                        "--caught-up-timeout {caught_up_timeout}: not a duration (90s, 5m)"
                    ))
                })?;
            let command_started = std::time::Instant::now();
            let plan = telemetry
                .scoped(|| weir_pipelines::load(&pipeline))
                .map_err(user)?;
            // spans are exported until the run ends (dropping it sends the last ones)
            let _export = telemetry.install(plan.tracing.as_ref()).map_err(user)?;
            if keep_serving && plan.serve.is_none() {
                tracing::warn!(
                    "--keep-serving has nothing to serve: the pipeline has no `serve` section"
                );
            }
            let stop = StopHandle::new();
            let on_signal = stop.clone();
            let signalled = std::sync::atomic::AtomicBool::new(false);
            ctrlc::set_handler(move || {
                if signalled.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    eprintln!("error: stopped by a second signal before the run could finish");
                    std::process::exit(2);
                }
                tracing::info!(
                    "stopping: finishing the events in flight, taking a final checkpoint and closing outputs"
                );
                on_signal.stop();
                // a stop that hangs (a sink that cannot be reached) ends with an error
                let grace = stop_grace();
                std::thread::spawn(move || {
                    std::thread::sleep(grace);
                    eprintln!(
                        "error: the run did not stop within {}s of the signal (set WEIR_STOP_TIMEOUT to wait longer); the last complete checkpoint stays valid",
                        grace.as_secs()
                    );
                    std::process::exit(2);
                });
            })
            .map_err(runtime)?;
            weir_pipelines::run(
                plan,
                RunOptions {
                    parallelism: p,
                    stop,
                    file_chunk_bytes: None,
                    until_caught_up,
                    caught_up_timeout: Some(caught_up_timeout),
                    keep_serving,
                    insecure,
                    on_finished: Some(std::sync::Arc::new(move |s| {
                        print_summary(s, command_started.elapsed())
                    })),
                    replay: None,
                    worker,
                },
            )
            .map_err(|e: RunError| of_kind(e.kind(), e))?;
            Ok(())
        }
        Command::Generate(a) => generate(a),
        Command::Sql {
            query,
            server,
            format,
            token,
        } => {
            let format = match format {
                SqlFormat::Table => weir_query::OutputFormat::Table,
                SqlFormat::Json => weir_query::OutputFormat::Json,
                SqlFormat::Csv => weir_query::OutputFormat::Csv,
            };
            let out = weir_query::client::query(&server, token.as_deref(), &query, format)
                .map_err(|e| match e {
                    weir_query::ClientError::Refused { .. } => user(e),
                    _ => runtime(e),
                })?;
            print!("{out}");
            Ok(())
        }
        Command::Subscribe(a) => subscribe::run(a).map_err(|e| match e.is_user() {
            true => user(e),
            false => runtime(e),
        }),
    }
}

/// Writes `bytes` to stdout; a reader that went away (`weir schema | head`) is not an error.
fn write_stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(runtime(e)),
        _ => Ok(()),
    }
}

/// Prints what a run did, as soon as its job finished: the rate over the job's own time
/// (reading, computing, committing outputs), and apart from it the command's wall time
/// (loading the plan, starting servers).
fn print_summary(summary: &weir_pipelines::RunSummary, wall: std::time::Duration) {
    println!(
        "run finished with parallelism {}: {} events processed in {:.3}s ({:.0} events/s; wall time {:.2}s), {} bad, {} late, {} windows emitted, {} dead letters",
        summary.parallelism,
        summary.records_in,
        summary.elapsed.as_secs_f64(),
        summary.events_per_second(),
        wall.as_secs_f64(),
        summary.bad,
        summary.late,
        summary.windows_emitted,
        summary.dead_letters,
    );
    for ((sink, written), (_, committed)) in
        summary.rows_written.iter().zip(&summary.rows_committed)
    {
        if written > committed {
            println!(
                "  sink {sink}: {committed} rows committed ({} more written after the last checkpoint are not committed: a restart writes them again)",
                written - committed
            );
        } else {
            println!("  sink {sink}: {committed} rows");
        }
    }
    if let Some(epoch) = summary.restored_epoch {
        println!("  restored from checkpoint {epoch}");
    }
    if let Some(c) = &summary.last_checkpoint {
        println!(
            "  checkpoints: {} taken; the last, {}, took {} ms for {} state rows ({} bytes) and completed {} ms before the end",
            summary.checkpoints, c.epoch, c.duration_ms, c.state_rows, c.state_bytes, c.age_ms
        );
    }
    let _ = std::io::stdout().flush();
}

/// How long a stop may take after SIGINT/SIGTERM before the process gives up (exit 2).
fn stop_grace() -> std::time::Duration {
    let secs = std::env::var("WEIR_STOP_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(30);
    std::time::Duration::from_secs(secs)
}

fn generate(a: GenerateArgs) -> Result<(), Failure> {
    if a.out.is_none() && a.kafka.is_none() && a.nats.is_none() {
        return Err(user(anyhow::anyhow!(
            "give --out FILE (or - for stdout), --kafka BROKERS/TOPIC or --nats URL/SUBJECT"
        )));
    }
    for (name, v) in [
        ("--jitter-frac", a.jitter_frac),
        ("--late-frac", a.late_frac),
        ("--bad-frac", a.bad_frac),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err(user(anyhow::anyhow!("{name} must be between 0 and 1")));
        }
    }
    let kind =
        Kind::parse(&a.kind).ok_or_else(|| user(anyhow::anyhow!("unknown kind {}", a.kind)))?;
    let mut cfg = GeneratorConfig::new(kind);
    cfg.count = Some(a.count);
    cfg.events_per_second = a.rate.max(0.0);
    cfg.seed = a.seed;
    cfg.keys = a.keys.max(1);
    cfg.skew = a.skew;
    cfg.start_ms = a.start_ms;
    cfg.step_ms = a.step_ms;
    cfg.jitter_frac = a.jitter_frac;
    cfg.jitter_ms = a.jitter_ms.max(0);
    cfg.late_frac = a.late_frac;
    cfg.late_ms = a.late_ms.max(0);
    cfg.bad_frac = a.bad_frac;
    cfg.unicode_keys = a.unicode_keys;
    if let Some(target) = &a.kafka {
        return generate_to_kafka(&a, cfg, target);
    }
    if let Some(target) = &a.nats {
        let stored = generate_nats::generate(target, a.nats_stream.as_deref(), cfg, a.rate)
            .map_err(|e| match e {
                generate_nats::GenerateNatsError::Target => user(e),
                e => runtime(e),
            })?;
        tracing::info!(events = stored, "published");
        return Ok(());
    }
    let out = a.out.clone().expect("checked above");
    let mut sink: Box<dyn Write> = if out.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))
                .map_err(runtime)?;
        }
        Box::new(
            std::fs::File::create(&out)
                .with_context(|| format!("cannot create {}", out.display()))
                .map_err(runtime)?,
        )
    };
    let mut gen = EventGenerator::new(cfg);
    let mut buf = Vec::with_capacity(1 << 20);
    let started = std::time::Instant::now();
    while !gen.done() {
        if a.rate > 0.0 {
            let due = (started.elapsed().as_secs_f64() * a.rate) as u64;
            if gen.produced() >= due {
                sink.write_all(&buf)
                    .and_then(|_| sink.flush())
                    .map_err(runtime)?;
                buf.clear();
                std::thread::sleep(std::time::Duration::from_millis(5));
                continue;
            }
        }
        gen.write_next_line(&mut buf);
        if buf.len() >= 1 << 20 {
            sink.write_all(&buf).map_err(runtime)?;
            buf.clear();
        }
    }
    sink.write_all(&buf)
        .and_then(|_| sink.flush())
        .map_err(runtime)?;
    tracing::info!(events = gen.produced(), "generated");
    Ok(())
}

/// Produces generated events to a Kafka topic, one message per event, keyed by its
/// datasetName/serviceName; waits for every acknowledgement.
fn generate_to_kafka(a: &GenerateArgs, cfg: GeneratorConfig, target: &str) -> Result<(), Failure> {
    let (brokers, topic) = target
        .rsplit_once('/')
        .filter(|(b, t)| !b.is_empty() && !t.is_empty())
        .ok_or_else(|| {
            user(anyhow::anyhow!(
                "--kafka wants BROKERS/TOPIC, e.g. 127.0.0.1:9092/data-ingestion"
            ))
        })?;
    weir_kafka::create_topic(brokers, &[], topic, a.partitions.max(1)).map_err(runtime)?;
    let producer = weir_kafka::Producer::new(brokers, &[]).map_err(runtime)?;
    let mut gen = EventGenerator::new(cfg);
    let mut line = Vec::with_capacity(4096);
    let started = std::time::Instant::now();
    while !gen.done() {
        if a.rate > 0.0 {
            let due = (started.elapsed().as_secs_f64() * a.rate) as u64;
            if gen.produced() >= due {
                std::thread::sleep(std::time::Duration::from_millis(2));
                continue;
            }
        }
        line.clear();
        gen.write_next_line(&mut line);
        line.pop(); // the newline
        producer
            .send(topic, Some(gen.last_key().as_bytes()), Some(&line), &[])
            .map_err(runtime)?;
    }
    producer.flush().map_err(runtime)?;
    tracing::info!(events = gen.produced(), brokers, topic, "produced");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_prints_an_error_with_its_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left on device");
        let e = weir_engine::EngineError::sink_caused("out", "/data/out.ndjson", io).unavailable();
        let run = RunError::from(e);
        assert_eq!(run.kind(), weir_engine::ErrorKind::Retryable);
        let failure = of_kind(run.kind(), run);
        assert_eq!(failure.code, 2);
        assert_eq!(
            report(&failure.error),
            "sink `out`: /data/out.ndjson: no space left on device"
        );
        // the original error is still a value at the end of the chain
        let last = failure.error.chain().last().unwrap();
        assert!(last.downcast_ref::<std::io::Error>().is_some());
    }

    #[test]
    fn a_user_error_exits_with_status_1() {
        let e = weir_engine::EngineError::source(
            "in",
            "a repartitioned source reads exactly one topic",
        )
        .user();
        let run = RunError::from(e);
        let failure = of_kind(run.kind(), run);
        assert_eq!(failure.code, 1);
        assert_eq!(
            report(&failure.error),
            "source `in`: a repartitioned source reads exactly one topic"
        );
    }
}
