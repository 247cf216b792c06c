//! `/metrics` in the Prometheus text format: the run's counters, watermarks from the newest
//! snapshot, checkpoint figures and the SQL endpoint's own counters.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use weir_engine::stats::RunStats;
use weir_engine::time::now_ms;

use crate::engine::QueryEngine;

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
}

impl Metrics {
    /// The exposition text.
    pub fn render(&self, engine: &QueryEngine) -> String {
        let live = engine.live();
        let mut o = Out {
            text: String::new(),
            pipeline: live.pipeline.clone(),
        };
        let s = &self.stats;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
        o.one(
            "weir_events_in_total",
            "counter",
            "Records read from every source, good and bad.",
            get(&s.records_in),
        );
        o.one(
            "weir_bad_records_total",
            "counter",
            "Records that failed decoding or schema checks (sent to the dead-letter output).",
            get(&s.bad),
        );
        o.one(
            "weir_dead_letters_total",
            "counter",
            "Records written to the dead-letter output.",
            get(&s.dead_letters),
        );
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
        o.text
    }
}
