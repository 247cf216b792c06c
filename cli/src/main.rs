//! `weir`: run, validate and feed stream pipelines declared in YAML.

mod commands;
mod generate_nats;
mod subscribe;
mod telemetry;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use weir_pipelines::run::{parallelism, RunOptions};
use weir_sources::{EventGenerator, GeneratorConfig, Kind};

/// jemalloc serves every allocation of the process, librdkafka's C code included (its
/// `malloc` symbols replace glibc's): with glibc's, the Kafka reader waited on arena locks for
/// the messages the fetch thread allocated (performance.md, "Kafka").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    Run(commands::RunArgs),
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
    Replay(commands::ReplayArgs),
    /// Rewrite the small files of the pipeline's Iceberg tables (those of windows) into few
    /// large ones, in one `replace` snapshot per table; safe while the pipeline runs.
    Compact(commands::CompactArgs),
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
    raise_open_files_limit();
    if let Err(e) = configure_io() {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    match dispatch(cli.command, &telemetry) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let reported = report(&f.error);
            let line = weir_pipelines::secrets::redact(&reported);
            // a pipeline file's error is `file:line:column: message`, as the contract has it
            // (and compilers print): no prefix before the position
            let positioned = f
                .error
                .downcast_ref::<weir_pipelines::PipelineError>()
                .is_some_and(|p| p.line > 0);
            if positioned {
                eprintln!("{line}");
            } else {
                eprintln!("error: {line}");
            }
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

/// Raises the soft limit of open files to the hard one (as Go's runtime does): the default
/// soft limit (often 1,024) is soon met by SQL clients' connections (`serve.max_connections`
/// each endpoint), partitions and files; the hard limit is what the system allows.
fn raise_open_files_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given, nothing else. A
    // refusal (macOS refuses an unlimited hard limit) leaves the soft limit as it was.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
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
    if !matches!(cmd, Command::Run(_) | Command::Replay(_)) {
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
        Command::Replay(a) => commands::replay(a, telemetry),
        Command::Compact(a) => commands::compact(a),
        Command::Run(a) => commands::run(a, telemetry),
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
    print_expired(summary);
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

/// Says how many records their sources deleted before they were read, if any.
fn print_expired(summary: &weir_pipelines::RunSummary) {
    if summary.records_expired > 0 {
        println!(
            "  {} records were deleted by their source (its retention, a purge) before they were read: their rows are missing (see the log)",
            summary.records_expired
        );
    }
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
        // (without the newline)
        line.pop();
        // The message's timestamp is the event's time, as producers of events set it, when
        // the times are the caller's (`--start-ms`) or now's (`--rate`): a replay finds a time
        // range's offsets by it. The default times, in 2023, are older than a broker's
        // time-based retention keeps: those messages carry the send time.
        let at = (a.rate > 0.0 || a.start_ms.is_some()).then(|| gen.last_time_ms());
        let key = Some(gen.last_key().as_bytes());
        producer
            .send_at(topic, key, Some(&line), &[], at)
            .map_err(runtime)?;
    }
    producer.flush().map_err(runtime)?;
    tracing::info!(events = gen.produced(), brokers, topic, "produced");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_pipelines::run::RunError;

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
