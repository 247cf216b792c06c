//! `/metrics` through `prometheus-client`: a [`Collector`] reads the run's atomic counters,
//! the newest snapshot (watermarks, state), checkpoint figures and the SQL endpoint's own
//! counters when scraped (no cost per event: the hot path bumps the same atomics as before),
//! and the crate encodes them in the Prometheus text format (0.0.4, the default) or in
//! OpenMetrics 1.0.0 when the scraper's `Accept` asks for it. Every sample is labelled
//! `pipeline`.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use weir_engine::live::{LiveKind, LiveSnapshot, LiveState, PartitionStatus};
use weir_engine::retry::{CircuitState, OutputHealth};
use weir_engine::stats::{
    CurrentStats, Histogram, RunStats, SourceStats, DELIVERY_FAILURE_CLASSES,
};
use weir_engine::time::now_ms;

use crate::engine::QueryEngine;

/// The `Content-Type` of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// An exposition format of `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4.
    Text,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when its best media range (highest
    /// `q`, the first of equals) is `application/openmetrics-text` of version 1.0.0 or of no
    /// version; the text format otherwise (also without the header).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let mut best = (0.0, Format::Text);
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let (mut q, mut version) = (1.0, None);
            for p in parts {
                match p.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                    Some(("q", v)) => q = v.parse().unwrap_or(0.0),
                    Some(("version", v)) => version = Some(v.to_string()),
                    _ => {}
                }
            }
            let format = match media.as_str() {
                "application/openmetrics-text"
                    if version.as_deref().is_none_or(|v| v == "1.0.0") =>
                {
                    Format::OpenMetrics
                }
                "application/openmetrics-text" => continue,
                _ => Format::Text,
            };
            if q > best.0 {
                best = (q, format);
            }
        }
        best.1
    }

    /// The answer's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS,
        }
    }
}

/// What `/metrics` and `/ready` read.
pub struct Metrics {
    /// The statistics of the job running now.
    pub stats: CurrentStats,
    /// The collector, its samples labelled `pipeline`.
    registry: Registry,
}

/// Reads the figures when scraped.
struct Collect {
    stats: CurrentStats,
    engine: Arc<QueryEngine>,
}

impl std::fmt::Debug for Collect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collect").finish_non_exhaustive()
    }
}

type Encoded = Result<(), std::fmt::Error>;

/// No label but `pipeline`.
const NONE: [(&str, &str); 0] = [];

/// One counter family. `name` is the exported one, ending in `_total`, which the encoder
/// appends itself: it is given without.
fn counter<L: EncodeLabelSet, V: EncodeCounterValue>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) -> Encoded {
    // a scrape never panics: a name without the suffix (a unit test forbids it) is kept
    debug_assert!(
        name.ends_with("_total"),
        "counter {name} does not end in _total"
    );
    let base = name.strip_suffix("_total").unwrap_or(name);
    let mut m = e.encode_descriptor(base, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        m.encode_family(&labels)?
            .encode_counter::<NoLabelSet, V, u64>(&v, None)?;
    }
    Ok(())
}

/// One gauge family.
fn gauge<L: EncodeLabelSet, V: EncodeGaugeValue>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) -> Encoded {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        m.encode_family(&labels)?.encode_gauge(&v)?;
    }
    Ok(())
}

/// One histogram family (`_bucket` per bound and `+Inf`, `_sum`, `_count` per label set).
fn histogram<'h, L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, &'h Histogram)>,
) -> Encoded {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in samples {
        let (sum, count, buckets) = buckets(h);
        m.encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

/// A histogram's sum, count and observations per bucket (not cumulative) with `+Inf` last,
/// as the encoder takes them. The count, read after the buckets, is at least their total
/// (an observation counted in its bucket and not yet in the count goes to the count).
fn buckets(h: &Histogram) -> (f64, u64, Vec<(f64, u64)>) {
    let (cumulative, count, sum) = h.read();
    let mut below = 0;
    let mut buckets: Vec<(f64, u64)> = cumulative
        .into_iter()
        .map(|(bound, n)| {
            let in_bucket = n - below;
            below = n;
            (bound, in_bucket)
        })
        .collect();
    let count = count.max(below);
    buckets.push((f64::INFINITY, count - below));
    (sum, count, buckets)
}

/// Every sink's health by name, then the dead-letter output's as the sink `dead_letter`.
fn outputs(s: &RunStats) -> impl Iterator<Item = (&str, &OutputHealth)> {
    s.rows_written
        .iter()
        .map(|n| n.name.as_str())
        .zip(&s.sink_health)
        .chain([("dead_letter", &s.dead_letter_health)])
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

/// A counter of a source's figures.
type SourceCounter = fn(&SourceStats) -> &AtomicU64;

/// Per source counters, dead letters and consumer lag.
fn sources(e: &mut DescriptorEncoder, s: &RunStats) -> Encoded {
    let fields: [(&str, &str, SourceCounter); 6] = [
        (
            "weir_events_in_total",
            "Records read, good and bad, per source.",
            |s| &s.records_in,
        ),
        (
            "weir_bytes_in_total",
            "Bytes of the records read (payloads), per source.",
            |s| &s.bytes_in,
        ),
        (
            "weir_bad_records_total",
            "Records that failed decoding or schema checks (sent to the dead-letter output), per source.",
            |s| &s.bad,
        ),
        (
            "weir_repartition_repeats_total",
            "Messages of a worker pool's repartition topic dropped as repeats of the at-least-once repartition stage, per source.",
            |s| &s.repartition_repeats,
        ),
        (
            "weir_repartition_foreign_total",
            "Messages of a repartition topic skipped because weir did not write them (no upstream headers), per source.",
            |s| &s.repartition_foreign,
        ),
        (
            "weir_records_expired_total",
            "Records the source's log deleted (a Kafka topic's retention, a NATS stream's limits or a purge) before they were read, per source: lost input.",
            |s| &s.records_expired,
        ),
    ];
    let per_source = |field: SourceCounter| {
        s.sources
            .iter()
            .map(move |src| ([("source", src.name.as_str())], get(field(src))))
    };
    for (name, help, field) in fields {
        counter(e, name, help, per_source(field))?;
    }
    counter(
        e,
        "weir_events_decoded_total",
        "Records decoded into events, per source.",
        s.sources.iter().map(|src| {
            let decoded = get(&src.records_in).saturating_sub(get(&src.bad));
            ([("source", src.name.as_str())], decoded)
        }),
    )?;
    counter(
        e,
        "weir_dead_letters_total",
        "Records written to the dead-letter output.",
        [(NONE, get(&s.dead_letters))],
    )?;
    counter(
        e,
        "weir_reread_rows_skipped_total",
        "Rows read again after a restart without checkpoints and not counted again: their windows were durable before (once per operator).",
        [(NONE, get(&s.reread_skipped))],
    )?;
    let lag: Vec<((String, String), i64)> = s
        .consumer_lag
        .lock()
        .map(|l| l.iter().map(|(k, v)| (k.clone(), *v)).collect())
        .unwrap_or_default();
    gauge(
        e,
        "weir_source_waiting",
        "Reasons a source's records wait now (an unreachable schema registry, a NATS consumer stopped at max_ack_pending), per source; `/ready` names them.",
        s.sources.iter().map(|src| {
            let conditions = src.waiting.lock().map(|l| l.clone()).unwrap_or_default();
            let now = conditions
                .iter()
                .filter(|c| c.lock().is_ok_and(|w| w.is_some()))
                .count() as i64;
            ([("source", src.name.as_str())], now)
        }),
    )?;
    gauge(
        e,
        "weir_consumer_lag",
        "Messages behind the partition's high watermark (Kafka sources, partitions this process reads).",
        lag.iter().map(|((source, partition), v)| {
            ([("source", source.as_str()), ("partition", partition.as_str())], *v)
        }),
    )
}

/// Per window (late records, rows emitted) and per operator (sum overflows, state).
fn operators(
    e: &mut DescriptorEncoder,
    s: &RunStats,
    live: &LiveState,
    snap: &LiveSnapshot,
) -> Encoded {
    // views are operators too: their counters stay out of window metrics
    let is_window = |name: &str| {
        live.tables
            .iter()
            .any(|t| t.name == name && matches!(t.kind, LiveKind::Window { .. }))
    };
    counter(
        e,
        "weir_late_records_total",
        "Events that arrived after their window closed, per window.",
        s.late
            .iter()
            .filter(|n| is_window(&n.name))
            .map(|n| ([("window", n.name.as_str())], get(&n.value))),
    )?;
    counter(
        e,
        "weir_windows_emitted_total",
        "Window result rows emitted, per window.",
        s.windows
            .iter()
            .filter(|n| is_window(&n.name))
            .map(|n| ([("window", n.name.as_str())], get(&n.value))),
    )?;
    let is_view = |name: &str| {
        live.tables
            .iter()
            .any(|t| t.name == name && matches!(t.kind, LiveKind::View))
    };
    histogram(
        e,
        "weir_view_visible_latency_seconds",
        "From a row being read from its source to its change being visible to SQL in the view (the next live snapshot), per view.",
        s.late
            .iter()
            .zip(&s.view_visible_latency)
            .filter(|(n, _)| is_view(&n.name))
            .map(|(n, h)| ([("view", n.name.as_str())], h)),
    )?;
    let mut overflows: std::collections::BTreeMap<String, u64> = Default::default();
    if let Ok(list) = s.sum_overflows.lock() {
        for (op, n) in list.iter() {
            *overflows.entry(op.clone()).or_default() += get(n);
        }
    }
    counter(
        e,
        "weir_sum_overflows_total",
        "Integer sums given as null because the exact sum does not fit the output type, per operator (since the process started).",
        overflows.iter().map(|(op, n)| ([("operator", op.as_str())], *n)),
    )?;
    // each family's samples together: all the rows, then all the bytes
    let state: Vec<(&str, u64, u64)> = live
        .tables
        .iter()
        .zip(&snap.tables)
        .map(|(t, batches)| {
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            let bytes: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
            (t.name.as_str(), rows as u64, bytes as u64)
        })
        .collect();
    gauge(
        e,
        "weir_state_rows",
        "Rows held by each window (open and retained) and view, at the newest snapshot.",
        state
            .iter()
            .map(|(op, rows, _)| ([("operator", *op)], *rows)),
    )?;
    gauge(
        e,
        "weir_state_bytes",
        "Memory of those rows (Arrow buffers), at the newest snapshot.",
        state
            .iter()
            .map(|(op, _, bytes)| ([("operator", *op)], *bytes)),
    )
}

/// Per sink (the dead-letter output as `dead_letter`): rows, failures, circuit, latency.
fn sinks(e: &mut DescriptorEncoder, s: &RunStats) -> Encoded {
    counter(
        e,
        "weir_rows_written_total",
        "Rows written, per sink.",
        s.rows_written
            .iter()
            .map(|n| ([("sink", n.name.as_str())], get(&n.value))),
    )?;
    let health = |field: fn(&OutputHealth) -> &AtomicU64| {
        outputs(s).map(move |(name, h)| ([("sink", name)], get(field(h))))
    };
    counter(
        e,
        "weir_sink_errors_total",
        "Failed sink calls (retried or not), per sink.",
        health(|h| &h.errors),
    )?;
    counter(
        e,
        "weir_sink_retries_total",
        "Sink calls made again after a failure, per sink.",
        health(|h| &h.retries),
    )?;
    counter(
        e,
        "weir_sink_rejected_total",
        "Rows a sink refused for good (sent to the dead-letter output), per sink.",
        health(|h| &h.rejected).filter(|([(_, name)], _)| *name != "dead_letter"),
    )?;
    gauge(
        e,
        "weir_sink_circuit_state",
        "Circuit breaker of each sink: 0 closed, 1 open, 2 half-open.",
        outputs(s).map(|(name, h)| ([("sink", name)], h.circuit() as u64)),
    )?;
    histogram(
        e,
        "weir_end_to_end_latency_seconds",
        "From a window's end (event time) to its row being acknowledged by the sink (committed with its checkpoint, or flushed).",
        s.rows_written
            .iter()
            .zip(&s.sink_latency)
            .map(|(n, h)| ([("sink", n.name.as_str())], h)),
    )?;
    histogram(
        e,
        "weir_window_durable_latency_seconds",
        "From the watermark passing a window's end to its row being acknowledged durable by the sink (flushed, or committed with its checkpoint).",
        s.rows_written
            .iter()
            .zip(&s.window_durable_latency)
            .map(|(n, h)| ([("sink", n.name.as_str())], h)),
    )
}

/// Per HTTP-delivering sink (webhooks): requests delivered, failures by class, latency.
fn deliveries(e: &mut DescriptorEncoder, s: &RunStats) -> Encoded {
    let Ok(list) = s.deliveries.lock() else {
        return Ok(());
    };
    if list.is_empty() {
        return Ok(());
    }
    counter(
        e,
        "weir_webhook_deliveries_total",
        "Webhook requests answered 2xx, per sink.",
        list.iter()
            .map(|(n, d)| ([("sink", n.as_str())], get(&d.delivered))),
    )?;
    counter(
        e,
        "weir_webhook_rows_delivered_total",
        "Rows carried by webhook requests answered 2xx, per sink.",
        list.iter()
            .map(|(n, d)| ([("sink", n.as_str())], get(&d.rows_delivered))),
    )?;
    counter(
        e,
        "weir_webhook_failures_total",
        "Failed webhook requests, per sink and class (connection, 3xx, 4xx, 5xx, other).",
        list.iter().flat_map(|(n, d)| {
            DELIVERY_FAILURE_CLASSES
                .iter()
                .zip(&d.failures)
                .map(move |(class, c)| ([("sink", n.as_str()), ("class", *class)], get(c)))
        }),
    )?;
    histogram(
        e,
        "weir_webhook_request_duration_seconds",
        "Time from sending a webhook request to its answer, per sink.",
        list.iter()
            .map(|(n, d)| ([("sink", n.as_str())], &d.latency)),
    )
}

/// Checkpoints, the newest snapshot and its watermarks.
fn progress(e: &mut DescriptorEncoder, s: &RunStats, snap: &LiveSnapshot) -> Encoded {
    let c = &s.checkpoints;
    counter(
        e,
        "weir_checkpoints_completed_total",
        "Checkpoints completed by this run.",
        [(NONE, get(&c.completed))],
    )?;
    counter(
        e,
        "weir_checkpoint_store_failures_total",
        "Attempts to store a checkpoint that failed and are made again.",
        [(NONE, get(&c.store_failures))],
    )?;
    if get(&c.completed) > 0 {
        gauge(
            e,
            "weir_checkpoint_duration_seconds",
            "Duration of the last complete checkpoint.",
            [(NONE, get(&c.last_duration_ms) as f64 / 1000.0)],
        )?;
        gauge(
            e,
            "weir_checkpoint_size_bytes",
            "State bytes of the last complete checkpoint.",
            [(NONE, get(&c.last_bytes))],
        )?;
        let age = (now_ms() as f64 - get(&c.last_completed_ms) as f64).max(0.0) / 1000.0;
        gauge(
            e,
            "weir_checkpoint_age_seconds",
            "Time since the last complete checkpoint.",
            [(NONE, age)],
        )?;
    }
    gauge(
        e,
        "weir_live_snapshot",
        "Sequence number of the newest snapshot SQL reads.",
        [(NONE, snap.seq)],
    )?;
    if snap.seq > 0 {
        gauge(
            e,
            "weir_live_snapshot_age_seconds",
            "Time since the newest snapshot SQL reads was taken.",
            [(NONE, (now_ms() - snap.taken_ms).max(0) as f64 / 1000.0)],
        )?;
    }
    gauge(
        e,
        "weir_watermark_milliseconds",
        "Watermark of each source partition at the newest snapshot (Unix ms).",
        snap.partitions
            .iter()
            .filter_map(|p| Some((partition(p), p.watermark?))),
    )?;
    let now = now_ms();
    gauge(
        e,
        "weir_watermark_delay_seconds",
        "Wall-clock time minus each running partition's watermark (negative when the watermark is ahead of the clock).",
        snap.partitions.iter().filter(|p| !p.ended).filter_map(|p| {
            Some((partition(p), now.saturating_sub(p.watermark?) as f64 / 1000.0))
        }),
    )?;
    let counts = partition_counts(&snap.partitions, &s.sources);
    gauge(
        e,
        "weir_partitions_without_watermark",
        "Partitions that hold their source's watermark back without having one (read by this process, not idle, no event yet), per source.",
        counts.iter().map(|(src, missing, _)| ([("source", *src)], *missing)),
    )?;
    gauge(
        e,
        "weir_partitions_idle",
        "Partitions that do not hold their source's watermark back (not read by this process, or silent for idle_timeout), per source.",
        counts.iter().map(|(src, _, idle)| ([("source", *src)], *idle)),
    )
}

/// The labels of a source partition.
fn partition(p: &PartitionStatus) -> [(&str, &str); 2] {
    [
        ("source", p.source.as_str()),
        ("partition", p.partition.as_str()),
    ]
}

/// Per source: partitions holding its watermark back without one (read here, not idle, not
/// ended, no event yet: `weir_partitions_without_watermark`) and idle partitions.
fn partition_counts<'s>(
    partitions: &[PartitionStatus],
    sources: &'s [SourceStats],
) -> Vec<(&'s str, u64, u64)> {
    sources
        .iter()
        .map(|src| {
            let running = partitions
                .iter()
                .filter(|p| p.source == src.name && !p.ended);
            let (mut missing, mut idle) = (0, 0);
            for p in running {
                missing += u64::from(!p.idle && p.watermark.is_none());
                idle += u64::from(p.idle);
            }
            (src.name.as_str(), missing, idle)
        })
        .collect()
}

/// The SQL endpoint's own counters.
fn queries(e: &mut DescriptorEncoder, engine: &QueryEngine) -> Encoded {
    let q = &engine.stats;
    counter(
        e,
        "weir_queries_total",
        "SQL queries answered, by outcome.",
        [
            ([("outcome", "ok")], get(&q.ok)),
            ([("outcome", "error")], get(&q.failed)),
        ],
    )?;
    counter(
        e,
        "weir_query_limit_refusals_total",
        "Queries refused or stopped by a limit of serve: (text size, operators, time, memory, result size, concurrency); part of the errors.",
        [(NONE, get(&q.refused))],
    )?;
    let logins = &engine.logins;
    counter(
        e,
        "weir_login_failures_total",
        "Wrong SQL tokens and passwords.",
        [(NONE, get(&logins.failures))],
    )?;
    counter(
        e,
        "weir_logins_refused_total",
        "Logins refused unchecked because their address had to wait after failures.",
        [(NONE, get(&logins.refused))],
    )?;
    counter(
        e,
        "weir_query_seconds_total",
        "Time spent answering successful queries.",
        [(NONE, get(&q.micros) as f64 / 1e6)],
    )?;
    histogram(
        e,
        "weir_query_duration_seconds",
        "Time to answer each successful query.",
        [(NONE, &q.duration)],
    )
}

/// A pool worker's repartition stages: lag of the upstream partitions they read, messages
/// forwarded, and their backpressure (the pool's backlog in the internal topic).
fn stages(e: &mut DescriptorEncoder, s: &RunStats) -> Encoded {
    let stages = s.stages.lock().map(|l| l.clone()).unwrap_or_default();
    if stages.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = stages.iter().flat_map(|st| st.statuses()).collect();
    gauge(
        e,
        "weir_repartition_lag",
        "Messages behind the upstream partition's high watermark, per partition a pool worker's repartition stage reads (measured every second).",
        rows.iter().filter_map(|r| {
            let lag = r.lag?;
            Some(([("source", r.source.as_str()), ("partition", r.partition.as_str())], lag))
        }),
    )?;
    let source = |st: &weir_engine::stage_stats::StageStats| [("source", st.source.clone())];
    counter(
        e,
        "weir_repartition_forwarded_total",
        "Messages a pool worker's repartition stage sent to the internal topic, per source.",
        stages.iter().map(|st| (source(st), get(&st.forwarded))),
    )?;
    gauge(
        e,
        "weir_repartition_backlog",
        "Messages of the internal topic the pool's jobs have not checkpointed yet, as the repartition stage last measured them (-1: not measured).",
        stages
            .iter()
            .map(|st| (source(st), st.backlog.load(Ordering::Relaxed))),
    )?;
    gauge(
        e,
        "weir_repartition_paused",
        "1 while the repartition stage holds back because the backlog is over `repartition_max_backlog`.",
        stages
            .iter()
            .map(|st| (source(st), i64::from(st.paused.load(Ordering::Relaxed)))),
    )?;
    counter(
        e,
        "weir_repartition_pauses_total",
        "Times the repartition stage paused for the backlog.",
        stages.iter().map(|st| (source(st), get(&st.pauses))),
    )?;
    counter(
        e,
        "weir_repartition_expired_total",
        "Upstream records the topic's retention deleted before the repartition stage copied them, per source: lost input.",
        stages.iter().map(|st| (source(st), get(&st.expired))),
    )?;
    counter(
        e,
        "weir_repartition_restarts_total",
        "Upstream partitions that started over under the repartition stage (they ended before its committed offset: the topic was created again, or the broker lost records), per source.",
        stages.iter().map(|st| (source(st), get(&st.restarts))),
    )
}

impl Collector for Collect {
    fn encode(&self, mut e: DescriptorEncoder) -> Encoded {
        let live = self.engine.live();
        let snap = live.current();
        let s = &*self.stats.get();
        sources(&mut e, s)?;
        operators(&mut e, s, live, &snap)?;
        sinks(&mut e, s)?;
        deliveries(&mut e, s)?;
        stages(&mut e, s)?;
        progress(&mut e, s, &snap)?;
        self.engine.stats.subscriptions.encode(&mut e)?;
        queries(&mut e, &self.engine)
    }
}

impl Metrics {
    /// The metrics of a run's counters and of the engine serving its state.
    pub fn new(stats: impl Into<CurrentStats>, engine: Arc<QueryEngine>) -> Metrics {
        let stats = stats.into();
        let pipeline = engine.live().pipeline.clone();
        let mut registry =
            Registry::with_labels([(Cow::Borrowed("pipeline"), Cow::Owned(pipeline))].into_iter());
        registry.register_collector(Box::new(Collect {
            stats: stats.clone(),
            engine,
        }));
        Metrics { stats, registry }
    }

    /// The exposition, its figures read now (an error only on a bug of the encoder: writing
    /// to a `String` does not fail).
    pub fn render(&self, format: Format) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        match format {
            Format::Text => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?
            }
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)?
            }
        }
        Ok(out)
    }

    /// Why this process should not take traffic yet (empty when ready): no snapshot yet
    /// (state not restored), a Kafka source that has not joined its group or whose records
    /// wait (an unreachable schema registry), a checkpoint
    /// overdue, a sink whose circuit is open.
    pub fn not_ready(&self, engine: &QueryEngine) -> Vec<String> {
        let s = &*self.stats.get();
        let mut reasons = Vec::new();
        let snap = engine.live().current();
        if snap.seq == 0 {
            reasons.push("no snapshot published yet (the job is starting)".to_string());
        }
        // a sink still failing after the input ended: its rows are not delivered yet
        for (name, h) in outputs(s) {
            if h.circuit() == CircuitState::Open {
                reasons.push(format!("sink `{name}`: circuit open (the sink is failing)"));
            }
        }
        if snap.finished {
            return reasons;
        }
        for src in &s.sources {
            let conditions = src.waiting.lock().map(|l| l.clone()).unwrap_or_default();
            for why in conditions.iter().filter_map(|c| c.lock().ok()?.clone()) {
                reasons.push(format!("source `{}`: records wait: {why}", src.name));
            }
            if src.assigned.load(Ordering::Relaxed) == -1 {
                reasons.push(format!(
                    "source `{}`: no partitions assigned by the consumer group yet",
                    src.name
                ));
            }
            if let Some(w) = src
                .waiting_for_partitions
                .lock()
                .ok()
                .filter(|w| !w.is_empty())
            {
                reasons.push(format!("source `{}`: {}", src.name, *w));
            }
        }
        let c = &s.checkpoints;
        let interval = c.interval_ms.load(Ordering::Relaxed);
        if interval > 0 {
            // overdue: three intervals and a minute without a complete checkpoint
            let allowed = 3 * interval + 60_000;
            let last = c
                .last_completed_ms
                .load(Ordering::Relaxed)
                .max(s.started_ms.load(Ordering::Relaxed));
            let age = (now_ms().max(0) as u64).saturating_sub(last);
            if age > allowed {
                reasons.push(format!(
                    "no checkpoint completed for {} s (interval {} s)",
                    age / 1000,
                    interval / 1000
                ));
            }
        }
        reasons
    }
}

#[cfg(test)]
mod tests;
