//! Synthetic platform events: data-ingestion and service-health, seeded and reproducible.
//!
//! Zipf-skewed keys, a status mix, jittered and very late event times, malformed lines on
//! request, from a xoshiro256** generator: a seed gives the same events on every machine.
//! `weir generate` writes them as NDJSON; the tests, golden cases and benchmarks use it.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float64Builder, Int64Builder, StringBuilder};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use weir_engine::dead_letter::PartitionInfo;
use weir_engine::events::Resume;
use weir_engine::job::{PartitionReader, ReaderContext};
use weir_engine::time::now_ms;
use weir_engine::{Chunk, ChunkData, EngineError, EventBatch};

use crate::schema::SourceSchema;
use weir_formats::json_rows::json_string;

/// Which events to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    DataIngestion,
    ServiceHealth,
}

impl Kind {
    /// From `data-ingestion` / `service-health`.
    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "data-ingestion" => Some(Kind::DataIngestion),
            "service-health" => Some(Kind::ServiceHealth),
            _ => None,
        }
    }
    /// The built-in schema of these events.
    pub fn schema_name(self) -> &'static str {
        match self {
            Kind::DataIngestion => "data-ingestion",
            Kind::ServiceHealth => "service-health",
        }
    }
}

/// How to generate.
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    pub kind: Kind,
    /// Events to produce; `None` runs until stopped.
    pub count: Option<u64>,
    /// Events per second; 0 is as fast as possible.
    pub events_per_second: f64,
    pub seed: u64,
    /// Distinct datasetName/serviceName values.
    pub keys: usize,
    /// Zipf exponent of key popularity (0 = uniform).
    pub skew: f64,
    /// Event time of the first event; defaults to a fixed instant when generating as fast as
    /// possible, and to now at a rate.
    pub start_ms: Option<i64>,
    /// Mean event-time advance per event (defaults to 1 ms, or 1000/rate at a rate).
    pub step_ms: Option<f64>,
    pub jitter_frac: f64,
    pub jitter_ms: i64,
    pub late_frac: f64,
    pub late_ms: i64,
    /// Fraction of malformed lines (NDJSON output only).
    pub bad_frac: f64,
    /// Include non-ASCII, quoted and empty keys.
    pub unicode_keys: bool,
    /// At a rate, how long without events before the partition is idle (stops holding back
    /// the watermark).
    pub idle_timeout_ms: Option<u64>,
}

impl GeneratorConfig {
    /// The defaults of `weir generate` for `kind`.
    pub fn new(kind: Kind) -> Self {
        GeneratorConfig {
            kind,
            count: Some(1000),
            events_per_second: 0.0,
            seed: 42,
            keys: 1000,
            skew: 1.1,
            start_ms: None,
            step_ms: None,
            jitter_frac: 0.2,
            jitter_ms: 2000,
            late_frac: 0.0,
            late_ms: 3_600_000,
            bad_frac: 0.0,
            unicode_keys: false,
            idle_timeout_ms: None,
        }
    }
}

/// xoshiro256**, seeded through splitmix64.
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }
    fn u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }
    fn f64(&mut self) -> f64 {
        (self.u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    fn below(&mut self, n: u64) -> u64 {
        ((self.u64() as u128 * n as u128) >> 64) as u64
    }
    fn normal(&mut self) -> f64 {
        let u1 = self.f64().max(f64::MIN_POSITIVE);
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

const SOURCES: [&str; 6] = [
    "s3-ingest",
    "kafka-connect",
    "sftp-drop",
    "api-push",
    "db-cdc",
    "gcs-ingest",
];
const FORMATS: [&str; 5] = ["parquet", "json", "csv", "avro", "orc"];
const NAMESPACES: [&str; 5] = ["data", "platform", "ml", "web", "security"];

/// One generated event; strings borrow from the generator.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    Ingestion {
        index: u64,
        timestamp: i64,
        source: &'static str,
        dataset: &'a str,
        record_count: i64,
        size_bytes: i64,
        format: &'static str,
        status: &'static str,
    },
    Health {
        index: u64,
        timestamp: i64,
        service: &'a str,
        namespace: &'static str,
        status: &'static str,
        latency_ms: i64,
        error_rate: f64,
    },
}

/// Produces events one at a time.
pub struct EventGenerator {
    cfg: GeneratorConfig,
    rng: Rng,
    names: Vec<String>,
    namespaces: Vec<&'static str>,
    cumulative: Vec<f64>,
    clock: f64,
    start_ms: i64,
    step_ms: f64,
    newest: i64,
    index: u64,
    last_key: usize,
    last_time_ms: i64,
}

impl EventGenerator {
    /// A generator for `cfg`.
    pub fn new(cfg: GeneratorConfig) -> Self {
        let prefix = match cfg.kind {
            Kind::DataIngestion => "dataset",
            Kind::ServiceHealth => "service",
        };
        let keys = cfg.keys.max(1);
        let mut names: Vec<String> = (0..keys).map(|i| format!("{prefix}_{i:05}")).collect();
        if cfg.unicode_keys {
            let extra = [
                "données-ßeta",
                "日本語-データ",
                "emoji-📦",
                "quote\"and\\slash",
                "space key",
                "",
            ];
            for (i, e) in extra.iter().enumerate() {
                if i < keys {
                    names[keys - 1 - i] = e.to_string();
                }
            }
        }
        let namespaces = names
            .iter()
            .map(|n| {
                NAMESPACES[n
                    .bytes()
                    .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
                    % NAMESPACES.len()]
            })
            .collect();
        let weights: Vec<f64> = (0..keys)
            .map(|i| 1.0 / ((i + 1) as f64).powf(cfg.skew))
            .collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cumulative = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        let at_rate = cfg.events_per_second > 0.0;
        let start_ms = cfg
            .start_ms
            .unwrap_or(if at_rate { now_ms() } else { 1_700_000_000_000 });
        let step_ms = cfg.step_ms.unwrap_or(if at_rate {
            1000.0 / cfg.events_per_second
        } else {
            1.0
        });
        EventGenerator {
            rng: Rng::new(cfg.seed),
            cfg,
            names,
            namespaces,
            cumulative,
            clock: start_ms as f64,
            start_ms,
            step_ms,
            newest: start_ms,
            index: 0,
            last_key: 0,
            last_time_ms: start_ms,
        }
    }

    /// Dates the next events from `now_ms` on (the clock, the newest time and the start
    /// move by the same amount), as a restarted live source would.
    pub fn continue_from(&mut self, now_ms: i64) {
        let shift = now_ms - self.clock as i64;
        self.clock += shift as f64;
        self.newest = self.newest.saturating_add(shift);
        self.start_ms = self.start_ms.saturating_add(shift);
    }

    /// Events produced so far.
    pub fn produced(&self) -> u64 {
        self.index
    }

    /// The event time (epoch ms) of the last event produced.
    pub fn last_time_ms(&self) -> i64 {
        self.last_time_ms
    }

    /// The key (datasetName or serviceName) of the last event produced.
    pub fn last_key(&self) -> &str {
        &self.names[self.last_key]
    }

    /// Whether `count` events were produced.
    pub fn done(&self) -> bool {
        self.cfg.count.is_some_and(|c| self.index >= c)
    }

    fn pick_key(&mut self) -> usize {
        let r = self.rng.f64();
        self.cumulative
            .partition_point(|&c| c < r)
            .min(self.names.len() - 1)
    }

    /// The next event.
    pub fn next_event(&mut self) -> Event<'_> {
        let i = self.index;
        self.index += 1;
        self.clock += self.step_ms * 2.0 * self.rng.f64();
        let mut ts = self.clock as i64;
        if self.rng.f64() < self.cfg.late_frac && self.newest - self.cfg.late_ms > self.start_ms {
            ts = self.newest
                - self.cfg.late_ms
                - self.rng.below(self.cfg.late_ms.max(1) as u64) as i64;
        } else if self.rng.f64() < self.cfg.jitter_frac {
            ts -= self.rng.below(self.cfg.jitter_ms as u64 + 1) as i64;
        }
        self.newest = self.newest.max(ts);
        self.last_time_ms = ts;
        let k = self.pick_key();
        self.last_key = k;
        match self.cfg.kind {
            Kind::DataIngestion => {
                let format = FORMATS[self.rng.below(5) as usize];
                let rc = 1 + self.rng.below(99_999) as i64;
                let roll = self.rng.f64();
                let status = if roll < 0.85 {
                    "SUCCESS"
                } else if roll < 0.95 {
                    "FAILURE"
                } else {
                    "PARTIAL"
                };
                let source = SOURCES[self.rng.below(6) as usize];
                let size = rc * (50 + self.rng.below(1950) as i64);
                Event::Ingestion {
                    index: i,
                    timestamp: ts,
                    source,
                    dataset: &self.names[k],
                    record_count: rc,
                    size_bytes: size,
                    format,
                    status,
                }
            }
            Kind::ServiceHealth => {
                let roll = self.rng.f64();
                let status = if roll < 0.8 {
                    "HEALTHY"
                } else if roll < 0.92 {
                    "DEGRADED"
                } else if roll < 0.98 {
                    "UNHEALTHY"
                } else {
                    "UNKNOWN"
                };
                let latency = (3.5 + 0.8 * self.rng.normal()).exp() as i64;
                let scale = if status == "HEALTHY" { 0.01 } else { 0.2 };
                let error_rate = (self.rng.f64() * scale * 1e6).round() / 1e6;
                Event::Health {
                    index: i,
                    timestamp: ts,
                    service: &self.names[k],
                    namespace: self.namespaces[k],
                    status,
                    latency_ms: latency,
                    error_rate,
                }
            }
        }
    }

    /// Writes the next event as one NDJSON line (malformed with probability `bad_frac`).
    pub fn write_next_line(&mut self, out: &mut Vec<u8>) {
        let bad = self.cfg.bad_frac > 0.0 && self.rng.f64() < self.cfg.bad_frac;
        let mode = self.rng.below(5);
        let cut = self.rng.f64();
        let start = out.len();
        let ev = self.next_event();
        if !bad {
            write_json(&ev, out, None);
        } else {
            match mode {
                0 => {
                    write_json(&ev, out, None);
                    let len = out.len() - start;
                    let mut keep = 1 + ((len - 2) as f64 * cut) as usize;
                    while keep > 1 && (out[start + keep] & 0xC0) == 0x80 {
                        keep -= 1; // cut on a character boundary
                    }
                    out.truncate(start + keep);
                }
                1 => write_json(&ev, out, Some(BadField::TimeNotATime)),
                2 => write_json(&ev, out, Some(BadField::NoTime)),
                3 => write_json(&ev, out, Some(BadField::NestedCount)),
                _ => out.extend_from_slice("this is not json at all \u{0}\u{ff}".as_bytes()),
            }
        }
        out.push(b'\n');
    }
}

#[derive(Clone, Copy, PartialEq)]
enum BadField {
    TimeNotATime,
    NoTime,
    NestedCount,
}

fn write_json(ev: &Event<'_>, out: &mut Vec<u8>, bad: Option<BadField>) {
    let time = |out: &mut Vec<u8>, ts: i64| match bad {
        Some(BadField::TimeNotATime) => out.extend_from_slice(b"\"timestamp\":\"not-a-time\","),
        Some(BadField::NoTime) => {}
        _ => {
            let _ = write!(out, "\"timestamp\":{ts},");
        }
    };
    match *ev {
        Event::Ingestion {
            index,
            timestamp,
            source,
            dataset,
            record_count,
            size_bytes,
            format,
            status,
        } => {
            let _ = write!(out, "{{\"eventId\":\"evt-{index:010}\",");
            time(out, timestamp);
            let _ = write!(out, "\"source\":\"{source}\",\"datasetName\":");
            json_string(out, dataset);
            if bad == Some(BadField::NestedCount) {
                out.extend_from_slice(b",\"recordCount\":{\"nested\":\"object\"}");
            } else {
                let _ = write!(out, ",\"recordCount\":{record_count}");
            }
            let _ = write!(
                out,
                ",\"sizeBytes\":{size_bytes},\"format\":\"{format}\",\"location\":"
            );
            let mut loc = Vec::with_capacity(64);
            let _ = write!(loc, "s3://lake/");
            loc.extend_from_slice(dataset.as_bytes());
            let _ = write!(loc, "/part-{:05}.{format}", index % 10_000);
            json_string(out, std::str::from_utf8(&loc).unwrap_or_default());
            let _ = write!(
                out,
                ",\"status\":\"{status}\",\"metadata\":{{\"pipeline\":\"p{}\",\"owner\":\"team-data\"}}}}",
                index % 5
            );
        }
        Event::Health {
            index,
            timestamp,
            service,
            namespace,
            status,
            latency_ms,
            error_rate,
        } => {
            let _ = write!(out, "{{\"eventId\":\"hlt-{index:010}\",");
            time(out, timestamp);
            out.extend_from_slice(b"\"serviceName\":");
            json_string(out, service);
            let _ = write!(
                out,
                ",\"namespace\":\"{namespace}\",\"healthStatus\":\"{status}\","
            );
            if bad == Some(BadField::NestedCount) {
                out.extend_from_slice(b"\"latencyMs\":{\"nested\":\"object\"}");
            } else {
                let _ = write!(out, "\"latencyMs\":{latency_ms}");
            }
            let _ = write!(out, ",\"errorRate\":{error_rate:?},\"message\":");
            if status == "HEALTHY" {
                out.extend_from_slice(b"null}");
            } else {
                let _ = write!(
                    out,
                    "\"{} since check {index}\"}}",
                    lowercase_status(status)
                );
            }
        }
    }
}

/// Rows per generated batch.
const BATCH_ROWS: usize = 4096;

/// The generator as a source of one partition, producing Arrow batches directly.
pub struct GeneratorReader {
    source: usize,
    partition: Arc<PartitionInfo>,
    gen: EventGenerator,
    /// Output columns, in the output schema's order.
    columns: Vec<GenField>,
    output: SchemaRef,
    seq: u64,
    ended: bool,
    started: Option<Instant>,
    /// Events skipped at the start (see [`Self::skip`]): the pace counts from there.
    skipped: u64,
}

impl GeneratorReader {
    /// A generator source; `output` is the decoded schema (the projected columns). Its
    /// event time is the events' `timestamp`.
    pub fn new(
        source: usize,
        source_name: &str,
        partition_id: usize,
        cfg: GeneratorConfig,
        output: SchemaRef,
    ) -> Self {
        GeneratorReader {
            source,
            partition: Arc::new(PartitionInfo {
                source: source_name.into(),
                id: partition_id,
                state_id: partition_id,
                number: 0,
                topic: None,
                file: None,
            }),
            gen: EventGenerator::new(cfg),
            columns: output
                .fields()
                .iter()
                .map(|f| GenField::parse(f.name()))
                .collect(),
            output,
            seq: 0,
            ended: false,
            started: None,
            skipped: 0,
        }
    }

    /// Continues after the first `produced` events (from a checkpoint): the generator is
    /// deterministic, so it produces and drops them. A paced generator then goes on at its
    /// rate from now (it does not wait as long as the earlier runs took to produce them), and
    /// its events are dated from now when no `start` was set (not as far in the future as
    /// the skipped events spanned).
    pub fn skip(mut self, produced: u64) -> Self {
        while self.gen.produced() < produced && !self.gen.done() {
            self.gen.next_event();
        }
        self.skipped = self.gen.produced();
        if self.gen.cfg.events_per_second > 0.0 && self.gen.cfg.start_ms.is_none() {
            self.gen.continue_from(now_ms());
        }
        self
    }

    /// The schema the generator's events follow.
    pub fn schema(kind: Kind) -> SourceSchema {
        SourceSchema::builtin(kind.schema_name()).expect("built-in schema")
    }

    fn batch(&mut self, rows: usize) -> Result<EventBatch, EngineError> {
        enum Col {
            S(StringBuilder),
            I(Int64Builder),
            F(Float64Builder),
        }
        let mut cols: Vec<(GenField, Col)> = self
            .columns
            .iter()
            .map(|&f| {
                let col = match f {
                    GenField::Timestamp
                    | GenField::RecordCount
                    | GenField::SizeBytes
                    | GenField::LatencyMs => Col::I(Int64Builder::with_capacity(rows)),
                    GenField::ErrorRate => Col::F(Float64Builder::with_capacity(rows)),
                    _ => Col::S(StringBuilder::with_capacity(rows, rows * 16)),
                };
                (f, col)
            })
            .collect();
        let mut times = Vec::with_capacity(rows);
        let mut offsets = Vec::with_capacity(rows);
        let mut scratch = String::new();
        for _ in 0..rows {
            let offset = self.gen.produced();
            let ev = self.gen.next_event();
            let ts = match ev {
                Event::Ingestion { timestamp, .. } | Event::Health { timestamp, .. } => timestamp,
            };
            times.push(ts);
            offsets.push(offset);
            for (field, col) in cols.iter_mut() {
                scratch.clear();
                match (col, field.value(&ev, &mut scratch)) {
                    (Col::S(b), GenValue::S(s)) => b.append_value(s),
                    (Col::S(b), GenValue::Scratch) => b.append_value(&scratch),
                    (Col::S(b), _) => b.append_null(),
                    (Col::I(b), GenValue::I(x)) => b.append_value(x),
                    (Col::I(b), _) => b.append_null(),
                    (Col::F(b), GenValue::F(x)) => b.append_value(x),
                    (Col::F(b), GenValue::I(x)) => b.append_value(x as f64),
                    (Col::F(b), _) => b.append_null(),
                }
            }
        }
        let arrays: Vec<ArrayRef> = cols
            .into_iter()
            .map(|(_, c)| -> ArrayRef {
                match c {
                    Col::S(mut b) => Arc::new(b.finish()),
                    Col::I(mut b) => Arc::new(b.finish()),
                    Col::F(mut b) => Arc::new(b.finish()),
                }
            })
            .collect();
        let batch = RecordBatch::try_new_with_options(
            self.output.clone(),
            arrays,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map_err(|e| EngineError::source_caused(&self.partition.source, "", e))?;
        Ok(EventBatch {
            batch,
            event_time: times,
            offsets,
            raw: None,
        })
    }
}

/// A field of the generated events, resolved once from the output column's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GenField {
    Timestamp,
    EventId,
    Source,
    DatasetName,
    RecordCount,
    SizeBytes,
    Format,
    Location,
    Status,
    Metadata,
    ServiceName,
    Namespace,
    HealthStatus,
    LatencyMs,
    ErrorRate,
    Message,
    /// A column the generator does not make: always null.
    Other,
}

impl GenField {
    fn parse(name: &str) -> GenField {
        match name {
            "timestamp" => GenField::Timestamp,
            "eventId" => GenField::EventId,
            "source" => GenField::Source,
            "datasetName" => GenField::DatasetName,
            "recordCount" => GenField::RecordCount,
            "sizeBytes" => GenField::SizeBytes,
            "format" => GenField::Format,
            "location" => GenField::Location,
            "status" => GenField::Status,
            "metadata" => GenField::Metadata,
            "serviceName" => GenField::ServiceName,
            "namespace" => GenField::Namespace,
            "healthStatus" => GenField::HealthStatus,
            "latencyMs" => GenField::LatencyMs,
            "errorRate" => GenField::ErrorRate,
            "message" => GenField::Message,
            _ => GenField::Other,
        }
    }

    /// The field's value in `ev`; formatted values are written to `scratch`.
    #[inline]
    fn value<'a>(self, ev: &Event<'a>, scratch: &mut String) -> GenValue<'a> {
        use std::fmt::Write as _;
        match (ev, self) {
            (
                Event::Ingestion { timestamp, .. } | Event::Health { timestamp, .. },
                GenField::Timestamp,
            ) => GenValue::I(*timestamp),
            (Event::Ingestion { index, .. }, GenField::EventId) => {
                let _ = write!(scratch, "evt-{index:010}");
                GenValue::Scratch
            }
            (Event::Health { index, .. }, GenField::EventId) => {
                let _ = write!(scratch, "hlt-{index:010}");
                GenValue::Scratch
            }
            (Event::Ingestion { source, .. }, GenField::Source) => GenValue::S(source),
            (Event::Ingestion { dataset, .. }, GenField::DatasetName) => GenValue::S(dataset),
            (Event::Ingestion { record_count, .. }, GenField::RecordCount) => {
                GenValue::I(*record_count)
            }
            (Event::Ingestion { size_bytes, .. }, GenField::SizeBytes) => GenValue::I(*size_bytes),
            (Event::Ingestion { format, .. }, GenField::Format) => GenValue::S(format),
            (
                Event::Ingestion {
                    index,
                    dataset,
                    format,
                    ..
                },
                GenField::Location,
            ) => {
                let _ = write!(
                    scratch,
                    "s3://lake/{dataset}/part-{:05}.{format}",
                    index % 10_000
                );
                GenValue::Scratch
            }
            (Event::Ingestion { status, .. }, GenField::Status) => GenValue::S(status),
            (Event::Ingestion { index, .. }, GenField::Metadata) => {
                let _ = write!(
                    scratch,
                    "{{\"pipeline\":\"p{}\",\"owner\":\"team-data\"}}",
                    index % 5
                );
                GenValue::Scratch
            }
            (Event::Health { service, .. }, GenField::ServiceName) => GenValue::S(service),
            (Event::Health { namespace, .. }, GenField::Namespace) => GenValue::S(namespace),
            (Event::Health { status, .. }, GenField::HealthStatus) => GenValue::S(status),
            (Event::Health { latency_ms, .. }, GenField::LatencyMs) => GenValue::I(*latency_ms),
            (Event::Health { error_rate, .. }, GenField::ErrorRate) => GenValue::F(*error_rate),
            (Event::Health { status, index, .. }, GenField::Message) if *status != "HEALTHY" => {
                let _ = write!(scratch, "{} since check {index}", lowercase_status(status));
                GenValue::Scratch
            }
            _ => GenValue::Null,
        }
    }
}

/// A health status in lower case, without allocating.
fn lowercase_status(status: &str) -> &'static str {
    match status {
        "HEALTHY" => "healthy",
        "DEGRADED" => "degraded",
        "UNHEALTHY" => "unhealthy",
        _ => "unknown",
    }
}

enum GenValue<'a> {
    S(&'a str),
    /// The value was written to the scratch string.
    Scratch,
    I(i64),
    F(f64),
    Null,
}

impl PartitionReader for GeneratorReader {
    fn next_chunk(&mut self, ctx: &ReaderContext) -> Result<Option<Chunk>, EngineError> {
        if self.ended || ctx.stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let chunk = |me: &mut Self, data, first_offset| {
            let c = Chunk {
                source: me.source,
                partition: me.partition.clone(),
                seq: me.seq,
                first_offset,
                resume: Resume::at(me.gen.produced()),
                data,
            };
            me.seq += 1;
            c
        };
        if self.gen.done() {
            self.ended = true;
            let at = self.gen.produced();
            return Ok(Some(chunk(self, ChunkData::End, at)));
        }
        let remaining = self
            .gen
            .cfg
            .count
            .map_or(u64::MAX, |c| c - self.gen.produced());
        let rate = self.gen.cfg.events_per_second;
        let rows = if rate > 0.0 {
            // pace: produce what is due now, in at most 100 ms slices
            let started = *self.started.get_or_insert_with(Instant::now);
            let waiting = Instant::now();
            let clock = ctx.clocks.partition(self.partition.id);
            loop {
                if ctx.stopping() {
                    return Ok(None);
                }
                let due = self.skipped + (started.elapsed().as_secs_f64() * rate) as u64;
                let n = due
                    .saturating_sub(self.gen.produced())
                    .min(remaining)
                    .min(BATCH_ROWS as u64);
                if n > 0 {
                    clock.set_idle(false);
                    break n as usize;
                }
                // nothing due for `idle_timeout`: stop holding back the source's watermark
                if let Some(idle) = self.gen.cfg.idle_timeout_ms {
                    if waiting.elapsed() >= Duration::from_millis(idle) && !clock.is_idle() {
                        tracing::debug!(source = %self.partition.source, "partition idle");
                        clock.set_idle(true);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        } else {
            remaining.min(BATCH_ROWS as u64) as usize
        };
        let first = self.gen.produced();
        let events = self.batch(rows)?;
        Ok(Some(chunk(self, ChunkData::Events(events), first)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_and_shaped_like_the_python_generator() {
        let mut cfg = GeneratorConfig::new(Kind::DataIngestion);
        cfg.unicode_keys = true;
        cfg.bad_frac = 0.1;
        let mut a = EventGenerator::new(cfg.clone());
        let mut b = EventGenerator::new(cfg);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for _ in 0..2000 {
            a.write_next_line(&mut x);
            b.write_next_line(&mut y);
        }
        assert_eq!(x, y);
        let text = String::from_utf8(x).unwrap();
        let mut good = 0;
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                if v["timestamp"].is_i64() && v["recordCount"].is_i64() {
                    good += 1;
                    assert!(v["datasetName"].is_string());
                    assert!(
                        ["SUCCESS", "FAILURE", "PARTIAL"].contains(&v["status"].as_str().unwrap())
                    );
                }
            }
        }
        assert!((1700..1900).contains(&good), "{good}");
    }

    #[test]
    fn a_paced_generator_goes_idle_while_it_waits_and_comes_back() {
        use arrow::datatypes::{DataType, Field, Schema};
        use std::sync::atomic::AtomicBool;
        use weir_engine::clock::Clocks;
        let mut cfg = GeneratorConfig::new(Kind::DataIngestion);
        cfg.count = Some(2);
        cfg.events_per_second = 2.0; // the first event is due after 0.5 s
        cfg.idle_timeout_ms = Some(50);
        let schema = Arc::new(Schema::new(vec![Field::new(
            "timestamp",
            DataType::Int64,
            true,
        )]));
        let mut reader = GeneratorReader::new(0, "gen", 0, cfg, schema);
        let clocks = Arc::new(Clocks::new(&[(1, 0)]));
        let ctx = ReaderContext::new(
            clocks.clone(),
            Arc::new(AtomicBool::new(false)),
            Arc::new(weir_engine::progress::Progress::new(1, &[])),
            Arc::new(weir_engine::RunStats::new(&[], &[], &[])),
        );
        let waiting = std::thread::spawn(move || reader.next_chunk(&ctx).map(|c| c.is_some()));
        std::thread::sleep(Duration::from_millis(250));
        assert!(clocks.partition(0).is_idle());
        assert!(waiting.join().unwrap().unwrap());
        assert!(!clocks.partition(0).is_idle());
    }

    /// A paced generator restored after 1,000 events goes on at once at its rate, with
    /// events dated from now: it waited as long as the first 1,000 had taken, then dated its
    /// events that far in the future.
    #[test]
    fn a_paced_generator_restored_goes_on_at_once_from_now() {
        use arrow::array::AsArray;
        use arrow::datatypes::{DataType, Field, Int64Type, Schema};
        use std::sync::atomic::AtomicBool;
        use weir_engine::clock::Clocks;
        let mut cfg = GeneratorConfig::new(Kind::DataIngestion);
        cfg.events_per_second = 100.0; // 1,000 events: 10 s
        cfg.count = None;
        let schema = Arc::new(Schema::new(vec![Field::new(
            "timestamp",
            DataType::Int64,
            true,
        )]));
        let mut reader = GeneratorReader::new(0, "gen", 0, cfg, schema).skip(1000);
        let ctx = ReaderContext::new(
            Arc::new(Clocks::new(&[(1, 0)])),
            Arc::new(AtomicBool::new(false)),
            Arc::new(weir_engine::progress::Progress::new(1, &[])),
            Arc::new(weir_engine::RunStats::new(&[], &[], &[])),
        );
        let asked = Instant::now();
        let chunk = reader.next_chunk(&ctx).unwrap().unwrap();
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{:?}",
            asked.elapsed()
        );
        let ChunkData::Events(events) = &chunk.data else {
            panic!("no events");
        };
        let times = events.batch.columns()[0].as_primitive::<Int64Type>();
        let now = now_ms();
        for t in times.iter().flatten() {
            assert!(
                (now - 5_000..now + 1_000).contains(&t),
                "{t} is not near {now}"
            );
        }
    }

    #[test]
    fn health_events_parse() {
        let mut g = EventGenerator::new(GeneratorConfig::new(Kind::ServiceHealth));
        let mut out = Vec::new();
        for _ in 0..100 {
            g.write_next_line(&mut out);
        }
        for line in String::from_utf8(out).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(v["errorRate"].is_f64() || v["errorRate"].is_i64());
            assert!(v["latencyMs"].is_i64());
        }
    }
}
