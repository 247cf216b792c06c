//! The subcommands that run a pipeline file: `run`, `replay` and `compact`, each with its
//! arguments and its handler.

use std::path::PathBuf;

use clap::Args;
use weir_engine::job::StopHandle;
use weir_pipelines::run::{RunError, RunOptions};

use crate::telemetry::Telemetry;
use crate::{of_kind, print_expired, print_summary, runtime, stop_grace, user, Failure};

/// `weir run`'s arguments.
#[derive(Args)]
pub struct RunArgs {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// Worker threads (overrides the pipeline's `parallelism`).
    #[arg(long)]
    pub parallelism: Option<usize>,
    /// Keep answering SQL after bounded sources end, until Ctrl-C (needs `serve`).
    #[arg(long)]
    pub keep_serving: bool,
    /// Serve SQL on a non-loopback address without a token or password.
    #[arg(long)]
    pub insecure: bool,
    /// Treat Kafka sources as bounded: stop once every partition of their topics reached
    /// the end offset it had when this run started, and finish like a file run.
    #[arg(long)]
    pub until_caught_up: bool,
    /// With --until-caught-up: how long a run that read every partition it is assigned
    /// waits for the other partitions of its topics (held by a killed process until its
    /// session times out, or by a rebalance; in a pool, read by other workers) before it
    /// fails (exit 2). A duration: 90s, 5m.
    #[arg(long, env = "WEIR_CAUGHT_UP_TIMEOUT", default_value = "2m")]
    pub caught_up_timeout: String,
    /// Run as this worker of a pool: every `weir run` of the pipeline with a worker id
    /// shares the Kafka partitions (through the consumer group) and the checkpoint
    /// store; `auto` takes the host name and process id. Ids name each worker's output
    /// files, so a restarted worker should keep its id (a StatefulSet's pod name).
    #[arg(long, env = "WEIR_WORKER")]
    pub worker: Option<String>,
}

/// `weir replay`'s arguments.
#[derive(Args)]
pub struct ReplayArgs {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// Start of the range: an RFC 3339 time (2026-11-24T10:00:00Z) or epoch ms.
    #[arg(long)]
    pub from: String,
    /// End of the range (excluded); default: now.
    #[arg(long)]
    pub to: Option<String>,
    /// Only this window (repeatable).
    #[arg(long)]
    pub only: Vec<String>,
    /// Only these sinks (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub sinks: Option<Vec<String>>,
    /// Print the offset ranges and the windows that would be rewritten, and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Rewrite the windows even where a partition's range may miss events (earlier messages
    /// deleted, or nothing written past the range's end yet).
    #[arg(long)]
    pub allow_incomplete: bool,
    /// Worker threads.
    #[arg(long)]
    pub parallelism: Option<usize>,
}

/// `weir compact`'s arguments.
#[derive(Args)]
pub struct CompactArgs {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// Only this sink's table.
    #[arg(long)]
    pub sink: Option<String>,
    /// Leave partitions that received a file more recently than this (e.g. 10m, 1h, 0s).
    #[arg(long, default_value = "10m")]
    pub min_age: String,
    /// Compact a partition once it holds this many small files.
    #[arg(long, default_value_t = 2)]
    pub min_files: usize,
}

/// `weir run`: runs the pipeline until its sources end, or until a signal stops it.
pub fn run(a: RunArgs, telemetry: &Telemetry) -> Result<(), Failure> {
    let RunArgs {
        pipeline,
        parallelism: p,
        keep_serving,
        insecure,
        until_caught_up,
        caught_up_timeout,
        worker,
    } = a;
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
        tracing::warn!("--keep-serving has nothing to serve: the pipeline has no `serve` section");
    }
    let stop = StopHandle::new();
    let on_signal = stop.clone();
    let signalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = signalled.clone();
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
                print_summary(s, command_started.elapsed());
                if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    // (exit status 0: a run goes until stopped; a bounded one did not end)
                    println!("  stopped by a signal: its sources may not have ended, and windows still open were not emitted");
                }
            })),
            replay: None,
            worker,
        },
    )
    .map_err(|e: RunError| of_kind(e.kind(), e))?;
    Ok(())
}

/// `weir replay`: re-reads a time range and rewrites the windows starting in it.
pub fn replay(a: ReplayArgs, telemetry: &Telemetry) -> Result<(), Failure> {
    let ReplayArgs {
        pipeline,
        from,
        to,
        only,
        sinks,
        dry_run,
        allow_incomplete,
        parallelism: p,
    } = a;
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
    let mut request = weir_pipelines::replay::ReplayRequest {
        from_ms,
        to_ms,
        only,
        sinks,
    };
    let (mut plan, mut setup) =
        weir_pipelines::replay::prepare(plan, &request).map_err(|e| of_kind(e.kind(), e))?;
    if to.is_none() {
        // up to now: the newest windows may still be open in the live run. The range ends
        // where every partition holds its windows whole instead
        if let Some(whole) = setup.whole_until().filter(|&t| t < request.to_ms) {
            if whole <= from_ms {
                return Err(user(anyhow::anyhow!(
                    "the topics hold no whole window after --from yet: their newest messages, \
                     less the windows' size, lateness and out-of-orderness, reach {}; give an \
                     earlier --from, or --to to rewrite windows that may still be open",
                    weir_engine::time::format_rfc3339_ms(whole)
                )));
            }
            println!(
                "--to not given: up to {}, the newest time every partition holds its windows whole",
                weir_engine::time::format_rfc3339_ms(whole)
            );
            request.to_ms = whole;
            let reloaded = weir_pipelines::load(&pipeline).map_err(user)?;
            (plan, setup) = weir_pipelines::replay::prepare(reloaded, &request)
                .map_err(|e| of_kind(e.kind(), e))?;
        }
    }
    let to_ms = request.to_ms;
    let windows: Vec<String> = plan
        .windows
        .iter()
        .map(|w| {
            let sinks: Vec<&str> = w
                .sinks
                .iter()
                .map(|&i| plan.sinks[i].name.as_str())
                .collect();
            let size = i128::from(w.config.size_ms.max(1));
            let periods = (i128::from(to_ms) - i128::from(from_ms) + size - 1) / size;
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
    // (without --to, the range runs to now: its last windows are the topics' newest, which
    // a live run may still hold open, and are rewritten from what the topics hold)
    let incomplete = setup.incomplete(to.is_some());
    for why in &incomplete {
        println!("  may be incomplete: {why}");
    }
    if to.is_none() {
        for why in setup
            .incomplete(true)
            .iter()
            .filter(|w| !incomplete.contains(w))
        {
            println!("  open at the end (no --to): {why}");
        }
    }
    if dry_run {
        return Ok(());
    }
    refuse_incomplete(setup.messages(), &incomplete, allow_incomplete)?;
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
    print_expired(&summary);
    let written = setup.written.lock().map(|w| w.clone()).unwrap_or_default();
    for (name, _) in &summary.rows_written {
        let rows = written.get(name).copied().unwrap_or(0);
        println!("  sink {name}: {rows} windows rewritten");
    }
    Ok(())
}

/// A replay that would rewrite its windows from part of their events, refused: a range of
/// no message at all (message timestamps that do not follow the event times: the rows of the
/// range would be replaced by nothing), or, unless `allowed`, ranges that may miss messages.
fn refuse_incomplete(messages: u64, incomplete: &[String], allowed: bool) -> Result<(), Failure> {
    if messages == 0 {
        return Err(user(anyhow::anyhow!(
            "the range holds no message, so nothing was replaced: messages are found by their \
             timestamps, which must be the event times (a producer setting CreateTime from the \
             event) or arrival times close to them; check the ranges above"
        )));
    }
    if !incomplete.is_empty() && !allowed {
        return Err(user(anyhow::anyhow!(
            "{} partition(s) may miss events of the range (listed above), and their windows \
             would be rewritten from part of their events: replay a range the topics hold \
             whole (an earlier --to, a later --from), or pass --allow-incomplete",
            incomplete.len()
        )));
    }
    Ok(())
}

/// `weir compact`: rewrites the small files of the pipeline's Iceberg tables.
pub fn compact(a: CompactArgs) -> Result<(), Failure> {
    let CompactArgs {
        pipeline,
        sink,
        min_age,
        min_files,
    } = a;
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
        .map_err(|e| of_kind(e.kind(), e))?;
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
