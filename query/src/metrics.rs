//! `/metrics` in the Prometheus text format: the run's counters, watermarks from the newest
//! snapshot, checkpoint figures and the SQL endpoint's own counters.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use weir_engine::live::PartitionStatus;
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

/// Per source: partitions holding its watermark back without one (read here, not idle, not
/// ended, no event yet: `weir_partitions_without_watermark`) and idle partitions.
fn partition_gauges(o: &mut Out, partitions: &[PartitionStatus], sources: &[SourceStats]) {
    let running = |src: &SourceStats| {
        partitions
            .iter()
            .filter(|p| p.source == src.name && !p.ended)
            .map(|p| (p.idle, p.watermark.is_some()))
            .collect::<Vec<_>>()
    };
    let counts: Vec<(&str, usize, usize)> = sources
        .iter()
        .map(|src| {
            let r = running(src);
            let missing = r.iter().filter(|(idle, wm)| !idle && !wm).count();
            let idle = r.iter().filter(|(idle, _)| *idle).count();
            (src.name.as_str(), missing, idle)
        })
        .collect();
    o.family(
        "weir_partitions_without_watermark",
        "gauge",
        "Partitions that hold their source's watermark back without having one (read by this process, not idle, no event yet), per source.",
    );
    for (name, missing, _) in &counts {
        o.sample(
            "weir_partitions_without_watermark",
            &[("source", name)],
            *missing as f64,
        );
    }
    o.family(
        "weir_partitions_idle",
        "gauge",
        "Partitions that do not hold their source's watermark back (not read by this process, or silent for idle_timeout), per source.",
    );
    for (name, _, idle) in &counts {
        o.sample("weir_partitions_idle", &[("source", name)], *idle as f64);
    }
}

impl Metrics {
    /// Why this process should not take traffic yet (empty when ready): no snapshot yet
    /// (state not restored), a Kafka source that has not joined its group or whose records
    /// wait (an unreachable schema registry), a checkpoint
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
            "Wall-clock time minus each running partition's watermark (negative when the watermark is ahead of the clock).",
        );
        let now = now_ms();
        for p in snap.partitions.iter().filter(|p| !p.ended) {
            if let Some(wm) = p.watermark {
                o.sample(
                    "weir_watermark_delay_seconds",
                    &[("source", &p.source), ("partition", &p.partition)],
                    now.saturating_sub(wm) as f64 / 1000.0,
                );
            }
        }
        partition_gauges(&mut o, &snap.partitions, &s.sources);
        o.family(
            "weir_sum_overflows_total",
            "counter",
            "Integer sums given as null because the exact sum does not fit the output type, per operator (since the process started).",
        );
        if let Ok(list) = s.sum_overflows.lock() {
            let mut per: std::collections::BTreeMap<&str, u64> = Default::default();
            for (op, n) in list.iter() {
                *per.entry(op).or_default() += n.load(Ordering::Relaxed);
            }
            for (op, n) in per {
                o.sample("weir_sum_overflows_total", &[("operator", op)], n as f64);
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
            "weir_query_limit_refusals_total",
            "counter",
            "Queries refused or stopped by a limit of serve: (text size, operators, time, memory, result size, concurrency); part of the errors.",
            get(&q.refused),
        );
        let logins = &engine.logins;
        o.one(
            "weir_login_failures_total",
            "counter",
            "Wrong SQL tokens and passwords.",
            get(&logins.failures),
        );
        o.one(
            "weir_logins_refused_total",
            "counter",
            "Logins refused unchecked because their address had to wait after failures.",
            get(&logins.refused),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn status(source: &str, watermark: Option<i64>, ended: bool, idle: bool) -> PartitionStatus {
        PartitionStatus {
            source: source.into(),
            partition: "p".into(),
            watermark,
            newest: watermark,
            ended,
            idle,
            lag: None,
        }
    }

    #[test]
    fn partitions_without_a_watermark_and_idle_ones_are_counted_per_source() {
        let stats = RunStats::new(&["a".into(), "b".into()], &[], &[]);
        let partitions = [
            status("a", None, false, false),    // holds the watermark without one
            status("a", Some(5), false, false), // has one
            status("a", None, false, true),     // idle: holds nothing
            status("a", None, true, false),     // ended
            status("b", Some(1), false, true),
        ];
        let mut o = Out {
            text: String::new(),
            pipeline: "x".into(),
        };
        partition_gauges(&mut o, &partitions, &stats.sources);
        for line in [
            "weir_partitions_without_watermark{pipeline=\"x\",source=\"a\"} 1",
            "weir_partitions_without_watermark{pipeline=\"x\",source=\"b\"} 0",
            "weir_partitions_idle{pipeline=\"x\",source=\"a\"} 1",
            "weir_partitions_idle{pipeline=\"x\",source=\"b\"} 1",
        ] {
            assert!(o.text.lines().any(|l| l == line), "{line} in\n{}", o.text);
        }
        // each family's samples follow its own HELP and TYPE lines
        let types: Vec<&str> = o.text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        assert_eq!(types.len(), 2);
    }
}
