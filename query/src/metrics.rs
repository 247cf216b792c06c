//! `/metrics` in the Prometheus text format: the run's counters, watermarks from the newest
//! snapshot, checkpoint figures and the SQL endpoint's own counters.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use weir_engine::retry::{CircuitState, OutputHealth};
use weir_engine::stats::{Histogram, RunStats, SourceStats};
use weir_engine::time::now_ms;

use crate::engine::QueryEngine;

/// One counter of a source's figures.
type SourceCounter = fn(&SourceStats) -> &AtomicU64;

/// Every sink's health by name, then the dead-letter output's as the sink `dead_letter`.
fn outputs(s: &RunStats) -> impl Iterator<Item = (&str, &OutputHealth)> {
    s.rows_written
        .iter()
        .map(|n| n.name.as_str())
        .zip(&s.sink_health)
        .chain([("dead_letter", &s.dead_letter_health)])
}

/// What `/metrics` reads.
pub struct Metrics {
    pub stats: Arc<RunStats>,
}

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out {
    text: String,
    pipeline: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let mut l = format!("pipeline=\"{}\"", label(&self.pipeline));
        for (k, v) in labels {
            let _ = write!(l, ",{k}=\"{}\"", label(v));
        }
        let _ = writeln!(self.text, "{name}{{{l}}} {value}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// The samples of a histogram (`_bucket` per bound and `+Inf`, `_sum`, `_count`).
    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        let (buckets, count, sum) = h.read();
        let bucket = format!("{name}_bucket");
        for (bound, n) in buckets {
            let le = format!("{bound}");
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&bucket, &l, n as f64);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&bucket, &l, count as f64);
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, count as f64);
    }
}

impl Metrics {
    /// Why this process should not take traffic yet (empty when ready): no snapshot yet
    /// (state not restored), a Kafka source that has not joined its group, a checkpoint
    /// overdue, a sink whose circuit is open.
    pub fn not_ready(&self, engine: &QueryEngine) -> Vec<String> {
        let s = &self.stats;
        let mut reasons = Vec::new();
        let snap = engine.live().current();
        if snap.seq == 0 {
            reasons.push("no snapshot published yet (the job is starting)".to_string());
        }
        if snap.finished {
            return reasons;
        }
        for src in &s.sources {
            if src.assigned.load(Ordering::Relaxed) == -1 {
                reasons.push(format!(
                    "source `{}`: no partitions assigned by the consumer group yet",
                    src.name
                ));
            }
            if let Some(w) = src.waiting.lock().ok().filter(|w| !w.is_empty()) {
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
        for (name, h) in outputs(s) {
            if h.circuit() == CircuitState::Open {
                reasons.push(format!("sink `{name}`: circuit open (the sink is failing)"));
            }
        }
        reasons
    }

    /// The exposition text.
    pub fn render(&self, engine: &QueryEngine) -> String {
        let live = engine.live();
        let mut o = Out {
            text: String::new(),
            pipeline: live.pipeline.clone(),
        };
        let s = &self.stats;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
        let sources: [(&str, &str, SourceCounter); 5] = [
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
        ];
        for (name, help, field) in sources {
            o.family(name, "counter", help);
            for src in &s.sources {
                o.sample(name, &[("source", &src.name)], get(field(src)));
            }
        }
        o.family(
            "weir_events_decoded_total",
            "counter",
            "Records decoded into events, per source.",
        );
        for src in &s.sources {
            o.sample(
                "weir_events_decoded_total",
                &[("source", &src.name)],
                (RunStats::get(&src.records_in).saturating_sub(RunStats::get(&src.bad))) as f64,
            );
        }
        o.one(
            "weir_dead_letters_total",
            "counter",
            "Records written to the dead-letter output.",
            get(&s.dead_letters),
        );
        o.family(
            "weir_consumer_lag",
            "gauge",
            "Messages behind the partition's high watermark (Kafka sources, partitions this process reads).",
        );
        if let Ok(lag) = s.consumer_lag.lock() {
            for ((source, partition), v) in lag.iter() {
                o.sample(
                    "weir_consumer_lag",
                    &[("source", source), ("partition", partition)],
                    *v as f64,
                );
            }
        }
        o.family(
            "weir_late_records_total",
            "counter",
            "Events that arrived after their window closed, per window.",
        );
        // views are operators too: their counters stay out of window metrics
        let is_window = |name: &str| {
            live.tables.iter().any(|t| {
                t.name == name && matches!(t.kind, weir_engine::live::LiveKind::Window { .. })
            })
        };
        for n in s.late.iter().filter(|n| is_window(&n.name)) {
            o.sample(
                "weir_late_records_total",
                &[("window", &n.name)],
                get(&n.value),
            );
        }
        o.family(
            "weir_windows_emitted_total",
            "counter",
            "Window result rows emitted, per window.",
        );
        for n in s.windows.iter().filter(|n| is_window(&n.name)) {
            o.sample(
                "weir_windows_emitted_total",
                &[("window", &n.name)],
                get(&n.value),
            );
        }
        o.family(
            "weir_rows_written_total",
            "counter",
            "Rows written, per sink.",
        );
        for n in &s.rows_written {
            o.sample(
                "weir_rows_written_total",
                &[("sink", &n.name)],
                get(&n.value),
            );
        }
        let outputs: Vec<(&str, &OutputHealth)> = outputs(s).collect();
        o.family(
            "weir_sink_errors_total",
            "counter",
            "Failed sink calls (retried or not), per sink.",
        );
        for (name, h) in &outputs {
            o.sample("weir_sink_errors_total", &[("sink", name)], get(&h.errors));
        }
        o.family(
            "weir_sink_retries_total",
            "counter",
            "Sink calls made again after a failure, per sink.",
        );
        for (name, h) in &outputs {
            o.sample(
                "weir_sink_retries_total",
                &[("sink", name)],
                get(&h.retries),
            );
        }
        o.family(
            "weir_sink_rejected_total",
            "counter",
            "Rows a sink refused for good (sent to the dead-letter output), per sink.",
        );
        for (name, h) in outputs.iter().filter(|(n, _)| *n != "dead_letter") {
            o.sample(
                "weir_sink_rejected_total",
                &[("sink", name)],
                get(&h.rejected),
            );
        }
        o.family(
            "weir_sink_circuit_state",
            "gauge",
            "Circuit breaker of each sink: 0 closed, 1 open, 2 half-open.",
        );
        for (name, h) in &outputs {
            o.sample(
                "weir_sink_circuit_state",
                &[("sink", name)],
                h.circuit() as u64 as f64,
            );
        }
        o.family(
            "weir_end_to_end_latency_seconds",
            "histogram",
            "From a window's end (event time) to its row being acknowledged by the sink (committed with its checkpoint, or flushed).",
        );
        for (n, h) in s.rows_written.iter().zip(&s.sink_latency) {
            o.histogram("weir_end_to_end_latency_seconds", &[("sink", &n.name)], h);
        }
        let c = &s.checkpoints;
        o.one(
            "weir_checkpoints_completed_total",
            "counter",
            "Checkpoints completed by this run.",
            get(&c.completed),
        );
        if c.completed.load(Ordering::Relaxed) > 0 {
            o.one(
                "weir_checkpoint_duration_seconds",
                "gauge",
                "Duration of the last complete checkpoint.",
                get(&c.last_duration_ms) / 1000.0,
            );
            o.one(
                "weir_checkpoint_size_bytes",
                "gauge",
                "State bytes of the last complete checkpoint.",
                get(&c.last_bytes),
            );
            let age = (now_ms() as f64 - get(&c.last_completed_ms)).max(0.0) / 1000.0;
            o.one(
                "weir_checkpoint_age_seconds",
                "gauge",
                "Time since the last complete checkpoint.",
                age,
            );
        }
        let snap = live.current();
        o.one(
            "weir_live_snapshot",
            "gauge",
            "Sequence number of the newest snapshot SQL reads.",
            snap.seq as f64,
        );
        if snap.seq > 0 {
            o.one(
                "weir_live_snapshot_age_seconds",
                "gauge",
                "Time since the newest snapshot SQL reads was taken.",
                (now_ms() - snap.taken_ms).max(0) as f64 / 1000.0,
            );
        }
        o.family(
            "weir_watermark_milliseconds",
            "gauge",
            "Watermark of each source partition at the newest snapshot (Unix ms).",
        );
        for p in &snap.partitions {
            if let Some(wm) = p.watermark {
                o.sample(
                    "weir_watermark_milliseconds",
                    &[("source", &p.source), ("partition", &p.partition)],
                    wm as f64,
                );
            }
        }
        o.family(
            "weir_watermark_delay_seconds",
            "gauge",
            "Wall-clock time minus each running partition's watermark.",
        );
        let now = now_ms();
        for p in snap.partitions.iter().filter(|p| !p.ended) {
            if let Some(wm) = p.watermark {
                o.sample(
                    "weir_watermark_delay_seconds",
                    &[("source", &p.source), ("partition", &p.partition)],
                    (now - wm).max(0) as f64 / 1000.0,
                );
            }
        }
        o.family(
            "weir_state_rows",
            "gauge",
            "Rows held by each window (open and retained) and view, at the newest snapshot.",
        );
        o.family(
            "weir_state_bytes",
            "gauge",
            "Memory of those rows (Arrow buffers), at the newest snapshot.",
        );
        for (t, batches) in live.tables.iter().zip(&snap.tables) {
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            let bytes: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
            o.sample("weir_state_rows", &[("operator", &t.name)], rows as f64);
            o.sample("weir_state_bytes", &[("operator", &t.name)], bytes as f64);
        }
        let q = &engine.stats;
        o.family(
            "weir_queries_total",
            "counter",
            "SQL queries answered, by outcome.",
        );
        o.sample("weir_queries_total", &[("outcome", "ok")], get(&q.ok));
        o.sample(
            "weir_queries_total",
            &[("outcome", "error")],
            get(&q.failed),
        );
        o.one(
            "weir_query_seconds_total",
            "counter",
            "Time spent answering successful queries.",
            get(&q.micros) / 1e6,
        );
        o.family(
            "weir_query_duration_seconds",
            "histogram",
            "Time to answer each successful query.",
        );
        o.histogram("weir_query_duration_seconds", &[], &q.duration);
        o.text
    }
}
