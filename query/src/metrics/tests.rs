//! `/metrics` and `/ready` on a snapshot of a job's figures.

use super::*;
use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use weir_engine::live::LiveTableDef;

use crate::engine::QueryLimits;

fn status(source: &str, watermark: Option<i64>, ended: bool, idle: bool) -> PartitionStatus {
    PartitionStatus {
        source: source.into(),
        partition: "p".into(),
        watermark,
        newest: watermark,
        ended,
        idle,
        lag: None,
        counts: Default::default(),
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
    assert_eq!(
        partition_counts(&partitions, &stats.sources),
        [("a", 1, 1), ("b", 0, 1)]
    );
}

/// Metrics of a run with two windows, a view and two sinks, with state and observations.
fn metrics() -> Metrics {
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
    let window =
        |name: &str| LiveTableDef::new(name, LiveKind::Window { retain_ms: 0 }, &schema, vec![]);
    let live = Arc::new(LiveState::new(
        "ops",
        vec![
            window("per_minute"),
            LiveTableDef::new("latest", LiveKind::View, &schema, vec![]),
            window("per_hour"),
        ],
    ));
    let batch = |n: i64| {
        let column = Arc::new(Int64Array::from_iter_values(0..n));
        RecordBatch::try_new(schema.clone(), vec![column]).unwrap()
    };
    live.publish(LiveSnapshot {
        seq: 3,
        taken_ms: now_ms(),
        tables: vec![vec![batch(3)], vec![batch(2)], vec![batch(1)]],
        partitions: vec![status("events", Some(5), false, false)],
        ..Default::default()
    });
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let stats = Arc::new(RunStats::new(
        &names(&["events", "more"]),
        &names(&["per_minute", "latest", "per_hour"]),
        &names(&["rows", "lake"]),
    ));
    stats.sources[0].records_in.store(10, Ordering::Relaxed);
    stats.sources[0].bad.store(1, Ordering::Relaxed);
    stats.sink_latency[1].observe_n(0.3, 4);
    stats.sink_latency[1].observe(1000.0);
    stats.window_durable_latency[0].observe_n(0.004, 3);
    stats.window_durable_latency[0].observe(0.08);
    stats.view_visible_latency[1].observe_n(0.6, 7);
    stats.checkpoints.completed.store(1, Ordering::Relaxed);
    let engine = Arc::new(QueryEngine::new(live, QueryLimits::default()).unwrap());
    Metrics::new(stats, engine)
}

/// The family a sample line belongs to, checking that every family is declared once with
/// `# TYPE` and its samples follow it together; the families in order.
fn families(text: &str) -> Vec<(String, String)> {
    let mut families: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').unwrap();
            assert!(
                families.iter().all(|(n, _)| n != name),
                "{name} declared twice"
            );
            families.push((name.to_string(), kind.to_string()));
        } else if !line.starts_with('#') {
            let sample = line.split(['{', ' ']).next().unwrap();
            let (family, _) = families.last().expect("a sample before any TYPE");
            let suffix = sample.strip_prefix(family.as_str());
            assert!(
                matches!(suffix, Some("" | "_total" | "_bucket" | "_sum" | "_count")),
                "{sample} among the samples of {family}:\n{text}"
            );
        }
    }
    families
}

#[test]
fn webhook_sinks_show_deliveries_failures_by_class_and_latency() {
    let m = metrics();
    let text = m.render(Format::Text).unwrap();
    assert!(
        !text.contains("weir_webhook_"),
        "no webhook sink, no family"
    );
    let d = Arc::new(weir_engine::stats::DeliveryStats::default());
    d.delivered.store(3, Ordering::Relaxed);
    d.rows_delivered.store(250, Ordering::Relaxed);
    d.failed(0);
    d.failed(2);
    d.failed(2);
    d.latency.observe(0.02);
    m.stats
        .get()
        .deliveries
        .lock()
        .unwrap()
        .push(("alerts".into(), d));
    let text = m.render(Format::Text).unwrap();
    families(&text);
    for line in [
        "weir_webhook_deliveries_total{pipeline=\"ops\",sink=\"alerts\"} 3",
        "weir_webhook_rows_delivered_total{pipeline=\"ops\",sink=\"alerts\"} 250",
        "weir_webhook_failures_total{pipeline=\"ops\",sink=\"alerts\",class=\"connection\"} 1",
        "weir_webhook_failures_total{pipeline=\"ops\",sink=\"alerts\",class=\"3xx\"} 0",
        "weir_webhook_failures_total{pipeline=\"ops\",sink=\"alerts\",class=\"4xx\"} 2",
        "weir_webhook_failures_total{pipeline=\"ops\",sink=\"alerts\",class=\"5xx\"} 0",
        "weir_webhook_request_duration_seconds_count{pipeline=\"ops\",sink=\"alerts\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
}

#[test]
fn both_formats_keep_each_family_together_with_the_names_of_before() {
    let m = metrics();
    let text = m.render(Format::Text).unwrap();
    let open = m.render(Format::OpenMetrics).unwrap();
    let (text_families, open_families) = (families(&text), families(&open));
    assert_eq!(text_families.len(), open_families.len());
    for ((t, kind), (o, open_kind)) in text_families.iter().zip(&open_families) {
        // the text format names counters with _total, OpenMetrics their family without
        let expected = match kind.as_str() {
            "counter" => t.strip_suffix("_total").unwrap(),
            _ => t.as_str(),
        };
        assert_eq!((expected, kind), (o.as_str(), open_kind));
        assert!(!t.ends_with("_total_total"), "{t}");
    }
    for line in [
        "# HELP weir_events_in_total Records read, good and bad, per source.",
        "# TYPE weir_events_in_total counter",
        "weir_events_in_total{pipeline=\"ops\",source=\"events\"} 10",
        "weir_events_decoded_total{pipeline=\"ops\",source=\"events\"} 9",
        "# TYPE weir_state_rows gauge",
        "weir_state_rows{pipeline=\"ops\",operator=\"per_minute\"} 3",
        "weir_state_rows{pipeline=\"ops\",operator=\"latest\"} 2",
        "weir_state_rows{pipeline=\"ops\",operator=\"per_hour\"} 1",
        "weir_windows_emitted_total{pipeline=\"ops\",window=\"per_hour\"} 0",
        "weir_queries_total{pipeline=\"ops\",outcome=\"error\"} 0",
        "weir_end_to_end_latency_seconds_bucket{pipeline=\"ops\",sink=\"lake\",le=\"0.5\"} 4",
        "weir_end_to_end_latency_seconds_bucket{pipeline=\"ops\",sink=\"lake\",le=\"600\"} 4",
        "weir_end_to_end_latency_seconds_bucket{pipeline=\"ops\",sink=\"lake\",le=\"+Inf\"} 5",
        "weir_end_to_end_latency_seconds_count{pipeline=\"ops\",sink=\"lake\"} 5",
        "weir_sink_circuit_state{pipeline=\"ops\",sink=\"dead_letter\"} 0",
        "weir_window_durable_latency_seconds_bucket{pipeline=\"ops\",sink=\"rows\",le=\"0.0025\"} 0",
        "weir_window_durable_latency_seconds_bucket{pipeline=\"ops\",sink=\"rows\",le=\"0.005\"} 3",
        "weir_window_durable_latency_seconds_bucket{pipeline=\"ops\",sink=\"rows\",le=\"0.075\"} 3",
        "weir_window_durable_latency_seconds_bucket{pipeline=\"ops\",sink=\"rows\",le=\"0.1\"} 4",
        "weir_window_durable_latency_seconds_count{pipeline=\"ops\",sink=\"lake\"} 0",
        "weir_view_visible_latency_seconds_bucket{pipeline=\"ops\",view=\"latest\",le=\"0.5\"} 0",
        "weir_view_visible_latency_seconds_bucket{pipeline=\"ops\",view=\"latest\",le=\"1\"} 7",
        "weir_view_visible_latency_seconds_count{pipeline=\"ops\",view=\"latest\"} 7",
        "weir_live_snapshot{pipeline=\"ops\"} 3",
        "weir_watermark_milliseconds{pipeline=\"ops\",source=\"events\",partition=\"p\"} 5",
        "weir_partitions_without_watermark{pipeline=\"ops\",source=\"more\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    // views are not windows; the dead-letter output rejects nothing itself
    assert!(!text.contains("window=\"latest\""), "{text}");
    assert!(
        !text.contains("view=\"per_minute\""),
        "windows are not views: {text}"
    );
    assert!(!text.contains("weir_sink_rejected_total{pipeline=\"ops\",sink=\"dead_letter\""));
    assert!(text.contains("# TYPE weir_checkpoint_age_seconds gauge"));
    assert!(!text.contains("# EOF"));
    for line in [
        "# HELP weir_events_in Records read, good and bad, per source.",
        "# TYPE weir_events_in counter",
        "weir_events_in_total{pipeline=\"ops\",source=\"events\"} 10",
    ] {
        assert!(open.lines().any(|l| l == line), "{line} in\n{open}");
    }
    assert!(open.ends_with("\n# EOF\n"));
}

/// What weir wrote before: the samples of two families in turn.
#[test]
#[should_panic(expected = "weir_state_rows among the samples of weir_state_bytes")]
fn the_check_rejects_samples_apart_from_their_family() {
    families(
        "# TYPE weir_state_rows gauge\n# TYPE weir_state_bytes gauge\n\
         weir_state_rows{operator=\"a\"} 3\nweir_state_bytes{operator=\"a\"} 120\n",
    );
}

#[test]
fn openmetrics_is_served_when_the_accept_header_prefers_it() {
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    for (accept, format) in [
        (None, Format::Text),
        (Some(""), Format::Text),
        (Some("*/*"), Format::Text),
        (Some("text/plain; version=0.0.4"), Format::Text),
        (Some(prometheus), Format::OpenMetrics),
        (Some("application/openmetrics-text"), Format::OpenMetrics),
        (
            Some("Application/OpenMetrics-Text; version=1.0.0"),
            Format::OpenMetrics,
        ),
        // a version this endpoint does not write
        (
            Some("application/openmetrics-text; version=0.0.1"),
            Format::Text,
        ),
        (
            Some("application/openmetrics-text;q=0.4,text/plain;q=0.5"),
            Format::Text,
        ),
        (
            Some("text/plain;q=0.5,application/openmetrics-text"),
            Format::OpenMetrics,
        ),
        (Some("application/openmetrics-text;q=0"), Format::Text),
    ] {
        assert_eq!(Format::negotiate(accept), format, "{accept:?}");
    }
    assert_eq!(
        Format::Text.content_type(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert_eq!(
        Format::OpenMetrics.content_type(),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
}
