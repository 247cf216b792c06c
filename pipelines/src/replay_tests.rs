//! Tests of `weir replay`'s planning: ranges, refusals, and the replayed pipeline.

use super::*;

/// Two windows (`a` to sinks `x` and `y`, `b` to `y`) and a view over a Kafka topic,
/// with a checkpoint and SQL, planned from YAML (nothing connects to the brokers).
fn live_plan(name: &str) -> Plan {
    // a folder per call: tests run in parallel and several plan the same pipeline
    let dir = tempfile::Builder::new()
        .prefix(&format!("weir-replay-{name}-"))
        .tempdir()
        .expect("temp dir")
        .keep();
    let path = dir.join("p.yaml");
    let window = |name: &str, sinks: &str| {
        format!(
            "  {name}:\n    from: events\n    key: [datasetName]\n    tumbling: 1m\n    \
             aggregates: {{ n: count(*) }}\n    sinks: [{sinks}]\n"
        )
    };
    let yaml = format!(
        "name: p\nsources:\n  events:\n    kafka: {{ brokers: \"127.0.0.1:9\", topic: t, group_id: g }}\n    \
         format: json\n    schema: data-ingestion\n    event_time: {{ field: timestamp }}\n\
         windows:\n{}{}views:\n  v:\n    from: events\n    key: [datasetName]\n    \
         aggregates: {{ n: count(*) }}\n\
         sinks:\n  x: {{ file: {{ path: out/x.ndjson }} }}\n  y: {{ file: {{ path: out/y.ndjson }} }}\n\
         checkpoint: {{ dir: state }}\nserve: {{ http: \"127.0.0.1:0\" }}\n",
        window("a", "x, y"),
        window("b", "y"),
    );
    std::fs::write(&path, yaml).expect("pipeline file");
    crate::plan::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn request(only: &[&str], sinks: Option<&[&str]>) -> ReplayRequest {
    ReplayRequest {
        from_ms: 60_000,
        to_ms: 180_000,
        only: only.iter().map(|s| s.to_string()).collect(),
        sinks: sinks.map(|s| s.iter().map(|s| s.to_string()).collect()),
    }
}

fn windows(plan: &Plan) -> Vec<(String, Vec<String>)> {
    plan.windows
        .iter()
        .map(|w| {
            let sinks = w.sinks.iter().map(|&i| plan.sinks[i].name.clone());
            (w.config.name.clone(), sinks.collect())
        })
        .collect()
}

fn reduced(only: &[&str], sinks: Option<&[&str]>) -> Result<Plan, ReplayError> {
    reduce(live_plan("reduce"), &request(only, sinks))
}

#[test]
fn windows_on_processing_time_are_not_replayed() {
    // window `b` (or both) on processing time
    let plan = |both: bool| {
        let mut plan = live_plan("processing");
        for w in plan.windows.iter_mut().skip(usize::from(!both)) {
            let mut c = (*w.config).clone();
            c.time = weir_operators::TimeMode::Processing;
            w.config = std::sync::Arc::new(c);
        }
        plan
    };
    let all = reduce(plan(false), &request(&[], None)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(windows(&all).len(), 1, "only the event-time window");
    let asked = reduce(plan(false), &request(&["b"], None)).err();
    assert!(matches!(asked, Some(ReplayError::ProcessingTime(ref w)) if w == "b"));
    let none = reduce(plan(true), &request(&[], None)).err();
    assert!(matches!(none, Some(ReplayError::ProcessingTime(_))));
}

#[test]
fn a_replay_keeps_the_windows_and_sinks_asked_for_with_state_of_its_own() {
    let all = reduced(&[], None).unwrap_or_else(|e| panic!("{e}"));
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        windows(&all),
        vec![
            ("a".to_string(), names(&["x", "y"])),
            ("b".to_string(), names(&["y"]))
        ]
    );
    assert!(all.views.is_empty() && all.checkpoint.is_none() && all.serve.is_none());
    // the sinks themselves are kept (windows refer to them by index)
    assert_eq!(all.sinks.len(), 2);
    let only_a = reduced(&["a"], None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        windows(&only_a),
        vec![("a".to_string(), names(&["x", "y"]))]
    );
    let to_y = reduced(&[], Some(&["y"])).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        windows(&to_y),
        vec![
            ("a".to_string(), names(&["y"])),
            ("b".to_string(), names(&["y"]))
        ]
    );
}

#[test]
fn a_replay_keeps_only_the_sources_its_windows_read() {
    let dir = tempfile::Builder::new()
        .prefix("weir-replay-sources-")
        .tempdir()
        .expect("temp dir")
        .keep();
    std::fs::write(dir.join("in.ndjson"), "").expect("input file");
    let path = dir.join("p.yaml");
    std::fs::write(
        &path,
        "name: p\nsources:\n  sample:\n    file: { path: in.ndjson }\n    schema: data-ingestion\n    \
         event_time: { field: timestamp }\n  events:\n    kafka: { brokers: \"127.0.0.1:9\", topic: t, group_id: g }\n    \
         schema: data-ingestion\n    event_time: { field: timestamp }\n\
         windows:\n  from_file: { from: sample, key: [datasetName], tumbling: 1m, aggregates: { n: count(*) }, sinks: [x] }\n  \
         from_topic: { from: events, key: [datasetName], tumbling: 1m, aggregates: { n: count(*) }, sinks: [x] }\n\
         sinks:\n  x: { file: { path: out/x.ndjson } }\n",
    )
    .expect("pipeline file");
    let plan = crate::plan::load(&path).unwrap_or_else(|e| panic!("{e}"));
    // `--only from_topic`: the file is not read (it could not be replayed)
    let only = reduce(plan, &request(&["from_topic"], None)).unwrap_or_else(|e| panic!("{e}"));
    let sources: Vec<&str> = only.sources.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(sources, vec!["events"]);
    assert_eq!(only.windows.len(), 1);
    assert_eq!(only.sources[only.windows[0].source].name, "events");
}

#[test]
fn a_replay_refuses_what_it_cannot_rewrite() {
    let refused = |r: Result<Plan, ReplayError>| match r {
        Ok(_) => panic!("accepted"),
        Err(e) => {
            assert_eq!(e.kind(), weir_engine::ErrorKind::User, "{e}");
            e.to_string()
        }
    };
    let mut backwards = request(&[], None);
    backwards.to_ms = backwards.from_ms;
    let why = refused(reduce(live_plan("backwards"), &backwards));
    assert!(why.contains("--to must be after --from"), "{why}");
    let why = refused(reduced(&["v"], None));
    assert!(
        why.contains("--only v: no such window (windows: a, b)"),
        "{why}"
    );
    let why = refused(reduced(&[], Some(&["z"])));
    assert!(why.contains("--sinks z: no such sink"), "{why}");
    let why = refused(reduced(&["b"], Some(&["x"])));
    assert!(why.contains("no replayed window writes to a sink"), "{why}");
}

#[test]
fn a_lookup_reads_as_its_error_and_keeps_its_kind() {
    let io = std::io::Error::other("broker down");
    let e = ReplayError::from(Lookup::new(weir_engine::ErrorKind::Retryable, io));
    assert_eq!(e.to_string(), "broker down");
    assert_eq!(e.kind(), weir_engine::ErrorKind::Retryable);
    let e = ReplayError::NotReplayable {
        source_name: "s".into(),
        kinds: "k".into(),
        plural: "ks".into(),
    };
    assert_eq!(e.kind(), weir_engine::ErrorKind::User);
}

#[test]
fn a_replay_writes_beside_the_live_runs_outputs() {
    let req = request(&[], None);
    let suffix = suffix(&req);
    assert_eq!(suffix, "replay-19700101T000100Z-19700101T000300Z");
    let live = live_plan("outputs");
    let live_files: Vec<_> = live
        .sinks
        .iter()
        .map(|s| s.target.local_file().map(|p| p.to_path_buf()))
        .collect();
    let mode = Replay::new(Arc::new(ReplaySetup {
        from_ms: req.from_ms,
        to_ms: req.to_ms,
        ranges: Vec::new(),
        margins: Vec::new(),
        suffix: suffix.clone(),
        written: Default::default(),
    }));
    let plan = mode.retarget(live).unwrap_or_else(|e| panic!("{e}"));
    for (s, live) in plan.sinks.iter().zip(live_files) {
        let (file, live) = (s.target.local_file(), live.expect("a file sink"));
        let expected = live.with_extension(format!("{suffix}.ndjson"));
        assert_eq!(file, Some(expected.as_path()), "sink {}", s.name);
    }
    let dead = plan.dead_letter.local_file().expect("a dead-letter file");
    assert!(
        dead.ends_with(format!("dead_letter.{suffix}.ndjson")),
        "{}",
        dead.display()
    );
}
/// One partition's range, as a connector would give it.
#[derive(Debug)]
struct Range {
    key: &'static str,
    partition: &'static str,
    start: u64,
    end: u64,
}

impl ReplayRange for Range {
    fn key(&self) -> String {
        self.key.into()
    }
    fn partition(&self) -> String {
        self.partition.into()
    }
    fn start(&self) -> u64 {
        self.start
    }
    fn end(&self) -> u64 {
        self.end
    }
    fn read(&self) -> Arc<std::sync::atomic::AtomicU64> {
        Arc::default()
    }
    fn describe(&self) -> String {
        self.key.into()
    }
}

fn setup_with(ranges: Vec<(usize, Vec<Box<dyn ReplayRange>>)>) -> Arc<ReplaySetup> {
    Arc::new(ReplaySetup {
        from_ms: 60_000,
        to_ms: 180_000,
        margins: vec![0; ranges.len()],
        ranges,
        suffix: "replay-a-b".into(),
        written: Default::default(),
    })
}

#[test]
fn a_replays_ranges_are_its_sources_bounds_by_partition() {
    let range = |key, partition, start, end| {
        Box::new(Range {
            key,
            partition,
            start,
            end,
        }) as Box<dyn ReplayRange>
    };
    let setup = setup_with(vec![
        (
            0,
            vec![range("t/0", "t/0", 3, 8), range("t/1", "t/1", 0, 2)],
        ),
        (1, vec![range("s/0", "nats/s", 10, 20)]),
    ]);
    let b = |start, end| Some(ReadBounds { start, end });
    assert_eq!(setup.bounds(0, "t/0"), b(3, 8));
    assert_eq!(setup.bounds(0, "t/1"), b(0, 2));
    assert_eq!(setup.bounds(0, "t/2"), None);
    // by the partition its reader reads, not the name its progress bar shows
    assert_eq!(setup.bounds(1, "nats/s"), b(10, 20));
    assert_eq!(setup.bounds(1, "s/0"), None);
    assert_eq!(setup.bounds(2, "t/0"), None);
    assert_eq!(setup.messages(), 5 + 2 + 10);
}

/// What a source was opened with, per partition: start, end, and whether it stops once
/// caught up.
type Opened = Arc<std::sync::Mutex<Vec<(Option<u64>, Option<u64>, bool)>>>;

/// A source recording what it is opened with (and then refusing to open).
#[derive(Debug)]
struct RecordingSource(Opened);

impl crate::connectors::SourceConnector for RecordingSource {
    fn kind(&self) -> &'static str {
        "recording"
    }
    fn fingerprint(&self) -> String {
        String::new()
    }
    fn summary(&self) -> String {
        String::new()
    }
    fn describe(&self) -> String {
        String::new()
    }
    fn open(&self, at: &OpenSource) -> Result<OpenedSource, RunError> {
        if let Ok(mut opened) = self.0.lock() {
            for key in ["t/0", "t/1"] {
                opened.push((at.start(key), at.end(key), at.until_caught_up));
            }
        }
        Err(RunError::IncompatibleState("recorded".into()))
    }
}

#[test]
fn a_replay_opens_its_sources_bounded_by_its_ranges() {
    let mut plan = live_plan("bounds");
    let opened = Opened::default();
    plan.sources[0].input = Box::new(RecordingSource(opened.clone()));
    let range = Range {
        key: "t/1",
        partition: "t/1",
        start: 5,
        end: 9,
    };
    let mode = Replay::new(setup_with(vec![(0, vec![Box::new(range)])]));
    let s = &plan.sources[0];
    // a checkpoint's resume is not where a replayed partition starts
    let resume = |_: &str| Some(weir_engine::events::Resume::at(1));
    let at = OpenSource {
        until_caught_up: false,
        ..crate::connectors::tests::opening(&plan, &resume, &crate::connectors::unbounded)
    };
    assert!(mode.open_source(s, at).is_err());
    let opened = opened.lock().map(|o| o.clone()).unwrap_or_default();
    assert_eq!(opened, vec![(None, None, true), (Some(5), Some(9), true)]);
}

/// Rows each write passed on.
type Rows = Arc<std::sync::Mutex<Vec<usize>>>;

/// A sink keeping the row count of each write.
struct Counting(Rows);

impl Committable for Counting {
    fn flush(&mut self) -> Result<bool, EngineError> {
        Ok(true)
    }
    fn finish(&mut self) -> Result<(), EngineError> {
        Ok(())
    }
}

impl Sink for Counting {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
        if let Ok(mut rows) = self.0.lock() {
            rows.push(batch.num_rows());
        }
        Ok(())
    }
}

/// An output recording the windows it is opened to replace.
#[derive(Debug, Clone, Default)]
struct RecordingTarget {
    replaces: Arc<std::sync::Mutex<Option<WindowStarts>>>,
    rows: Rows,
}

impl crate::connectors::SinkConnector for RecordingTarget {
    fn kind(&self) -> &'static str {
        "recording"
    }
    fn fingerprint(&self) -> String {
        String::new()
    }
    fn summary(&self) -> String {
        String::new()
    }
    fn describe(&self, _checkpointed: bool) -> String {
        String::new()
    }
    fn attach(
        &mut self,
        _at: &crate::connectors::Attach,
    ) -> Result<(), crate::error::PipelineError> {
        Ok(())
    }
    fn open(&self, at: &mut OpenSink) -> Result<Box<dyn Sink>, RunError> {
        if let Ok(mut r) = self.replaces.lock() {
            *r = at.replaces;
        }
        Ok(Box::new(Counting(self.rows.clone())))
    }
}

#[test]
fn a_replays_sinks_replace_and_get_only_the_windows_of_its_range() {
    let mut plan = live_plan("replaces");
    let target = RecordingTarget::default();
    plan.sinks[0].target = Box::new(target.clone());
    let setup = setup_with(Vec::new());
    let mode = Replay::new(setup.clone());
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new(
            "window_start",
            arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
            true,
        ),
    ]));
    let mut deliveries = Vec::new();
    let mut at = OpenSink {
        pipeline: "p",
        name: "x",
        schema: &schema,
        checkpointed: false,
        replaces: None,
        deliveries: &mut deliveries,
    };
    let mut sink = mode
        .open_sink(&plan.sinks[0], &mut at)
        .unwrap_or_else(|e| panic!("{e}"));
    let replaces = target.replaces.lock().map(|r| *r).ok().flatten();
    assert_eq!(
        replaces,
        Some(WindowStarts {
            from_ms: 60_000,
            to_ms: 180_000
        })
    );
    let starts = arrow::array::TimestampMillisecondArray::from(vec![0, 60_000, 120_000, 180_000]);
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(starts)])
        .unwrap_or_else(|e| panic!("{e}"));
    sink.write(&batch).unwrap_or_else(|e| panic!("{e}"));
    let rows = target.rows.lock().map(|r| r.clone()).unwrap_or_default();
    assert_eq!(rows, vec![2]);
    let written = setup.written.lock().map(|w| w.clone()).unwrap_or_default();
    assert_eq!(written.get("x"), Some(&2));
}

/// A sink whose first write fails, and which refuses one row of each write after.
struct FailingOnce {
    failed: bool,
    refused: Vec<weir_engine::RejectedRow>,
}

impl Committable for FailingOnce {
    fn flush(&mut self) -> Result<bool, EngineError> {
        Ok(true)
    }
    fn finish(&mut self) -> Result<(), EngineError> {
        Ok(())
    }
}

impl Sink for FailingOnce {
    fn write(&mut self, _batch: &RecordBatch) -> Result<(), EngineError> {
        if !std::mem::replace(&mut self.failed, true) {
            return Err(EngineError::Internal("the index is read-only".into()));
        }
        self.refused.push(weir_engine::RejectedRow {
            raw: b"{}".to_vec(),
            error: weir_engine::ErrorInfo::new("mapping", "a field of another type"),
        });
        Ok(())
    }
    fn take_rejected(&mut self) -> Vec<weir_engine::RejectedRow> {
        std::mem::take(&mut self.refused)
    }
}

/// The windows a replay says it rewrote: a write tried again counts once, and a row the
/// output refused (dead-lettered) is not rewritten.
#[test]
fn a_replay_counts_the_rows_its_outputs_took() {
    let written = Written::default();
    let inner = FailingOnce {
        failed: false,
        refused: Vec::new(),
    };
    let range = WindowStarts {
        from_ms: 0,
        to_ms: 180_000,
    };
    let mut sink = WindowRange::new("x", Box::new(inner), range, written.clone());
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new(
            "window_start",
            arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
            true,
        ),
    ]));
    let starts = arrow::array::TimestampMillisecondArray::from(vec![0, 60_000, 240_000]);
    let batch =
        RecordBatch::try_new(schema, vec![Arc::new(starts)]).unwrap_or_else(|e| panic!("{e}"));
    assert!(sink.write(&batch).is_err());
    sink.write(&batch).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sink.take_rejected().len(), 1);
    let written = written.lock().map(|w| w.clone()).unwrap_or_default();
    assert_eq!(written.get("x"), Some(&1));
}
