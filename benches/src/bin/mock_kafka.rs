//! A Kafka cluster for benchmarks without a real broker: librdkafka's in-process mock cluster,
//! loaded from an NDJSON file, served over TCP to consumers in other processes.
//!
//! The mock answers a fetch with at most one produced batch per partition (a real broker
//! fills the fetch), so consumers' fetch sizes follow the producer's batches: preloading
//! lingers up to 2 s to write full batches of up to 1 MB (`batch.size`), `--live` 50 ms.
//!
//!   mock_kafka [--brokers N] [--partitions P] [--topic T] [--key FIELD]
//!              [--compression none|lz4|zstd|gzip|snappy] [--live] [--ignore-stdin]
//!              [--more-topic NAME]... FILE
//!
//! Starts a mock cluster of N brokers (default 1), creates topic T (default `events`) with P
//! partitions (default 12) and produces every line of FILE to it as one message: keyed by the
//! string value of the top-level JSON field FIELD when given (librdkafka's default
//! partitioner), else spread round-robin over the partitions. Prints the bootstrap servers on
//! stdout (one line), then `ready messages=M seconds=S per_second=R` once every message is
//! acknowledged; with `--live` it prints `ready` right after the topic is created and
//! produces while consumers read (then `loaded messages=M ...` at the end). Runs until killed
//! or until stdin closes (`--ignore-stdin`: until killed). Consumer groups, committed offsets
//! and end offsets work as on a real broker; a new group's first assignment does not wait
//! (the mock's `group.initial.rebalance.delay.ms` is 0 rather than 3 s).
//!
//! The mock keeps at most 5 MB or 100,000 batches per partition and drops older batches
//! beyond that (hard-coded in librdkafka 2.12, `rd_kafka_mock_partition_init`); a benchmark's
//! topic is larger, so this raises both limits on the topic's partitions through librdkafka's
//! internal partition structure, after checking the fields hold the expected defaults (it
//! refuses to start otherwise rather than serve a truncated topic). `--more-topic NAME` creates
//! an empty topic NAME with P partitions and the same limits (a topic the consumers write,
//! such as a worker pool's repartition topic, which they would otherwise create with the
//! mock's limits).

use std::ffi::{c_char, c_void, CString};
use std::io::{BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

type Error = Box<dyn std::error::Error>;

struct Args {
    brokers: i32,
    partitions: i32,
    topic: String,
    key: Option<String>,
    compression: String,
    live: bool,
    ignore_stdin: bool,
    more_topics: Vec<String>,
    file: String,
}

const USAGE: &str = "usage: mock_kafka [--brokers N] [--partitions P] [--topic T] [--key FIELD] \
                     [--compression none|lz4|zstd|gzip|snappy] [--live] [--ignore-stdin] \
                     [--more-topic NAME]... FILE";

fn parse_args() -> Result<Args, Error> {
    let mut a = Args {
        brokers: 1,
        partitions: 12,
        topic: "events".into(),
        key: None,
        compression: "lz4".into(),
        live: false,
        ignore_stdin: false,
        more_topics: Vec::new(),
        file: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--brokers" => a.brokers = value()?.parse()?,
            "--partitions" => a.partitions = value()?.parse()?,
            "--topic" => a.topic = value()?,
            "--key" => a.key = Some(value()?),
            "--compression" => a.compression = value()?,
            "--live" => a.live = true,
            "--ignore-stdin" => a.ignore_stdin = true,
            "--more-topic" => a.more_topics.push(value()?),
            "-h" | "--help" => return Err(USAGE.into()),
            _ if a.file.is_empty() && !arg.starts_with("--") => a.file = arg,
            _ => return Err(format!("unexpected argument `{arg}`\n{USAGE}").into()),
        }
    }
    if a.file.is_empty() || a.brokers < 1 || a.partitions < 1 {
        return Err(USAGE.into());
    }
    Ok(a)
}

// librdkafka's internal mock API (rdkafka_mock_int.h): exported from the static library.
extern "C" {
    fn rd_kafka_mock_topic_find(
        mcluster: *const rdkafka::bindings::rd_kafka_mock_cluster_t,
        name: *const c_char,
    ) -> *mut c_void;
    fn rd_kafka_mock_partition_find(mtopic: *const c_void, partition: i32) -> *mut c_void;
}

/// Byte offset of `max_size` (then `max_cnt`) in `rd_kafka_mock_partition_t` on 64-bit
/// targets: leader_link (2 pointers), id, leader_epoch, 4 x int64 offsets, 2 x rd_bool_t
/// (bytes, padded to 8), the msgsets list head (2 pointers), size, cnt.
const MAX_SIZE_OFFSET: usize = 16 + 4 + 4 + 4 * 8 + 8 + 16 + 8 + 8;
const DEFAULT_MAX_SIZE: usize = 5 * 1024 * 1024;
const DEFAULT_MAX_CNT: usize = 100_000;

/// Lifts the mock's per-partition retention on `topic`'s partitions (see the module doc).
fn unlimit_retention(
    mcluster: *mut rdkafka::bindings::rd_kafka_mock_cluster_t,
    topic: &str,
    partitions: i32,
) -> Result<(), Error> {
    if std::mem::size_of::<usize>() != 8 {
        return Err("the retention override needs a 64-bit target".into());
    }
    let name = CString::new(topic)?;
    // SAFETY: the topic was created (the call waited for the mock thread) and nothing
    // produces to it yet, so the mock thread does not touch these structures meanwhile; the
    // fields are read and checked against librdkafka's defaults before anything is written.
    unsafe {
        let mtopic = rd_kafka_mock_topic_find(mcluster, name.as_ptr());
        if mtopic.is_null() {
            return Err(format!("mock topic `{topic}` not found").into());
        }
        for p in 0..partitions {
            let mpart = rd_kafka_mock_partition_find(mtopic, p);
            if mpart.is_null() {
                return Err(format!("mock partition {p} not found").into());
            }
            let max_size = mpart.cast::<u8>().add(MAX_SIZE_OFFSET).cast::<usize>();
            let max_cnt = max_size.add(1);
            if max_size.read() != DEFAULT_MAX_SIZE || max_cnt.read() != DEFAULT_MAX_CNT {
                return Err(
                    "librdkafka's mock partition layout is not the expected one \
                            (max_size/max_cnt); refusing to serve a truncated topic"
                        .into(),
                );
            }
            max_size.write(usize::MAX / 2);
            max_cnt.write(usize::MAX / 2);
        }
    }
    Ok(())
}

/// The string value of top-level field `field` in a JSON object line (a plain scan: the
/// first `"field":` occurrence, whose value must be a string without escapes).
fn key_of<'a>(line: &'a [u8], field: &[u8]) -> Option<&'a [u8]> {
    let mut from = 0;
    while let Some(at) = find(&line[from..], field).map(|i| i + from) {
        from = at + field.len();
        if at == 0 || line[at - 1] != b'"' || line.get(from) != Some(&b'"') {
            continue;
        }
        let rest = &line[from + 1..];
        let rest = rest
            .trim_ascii_start()
            .strip_prefix(b":")?
            .trim_ascii_start();
        let rest = rest.strip_prefix(b"\"")?;
        let end = rest.iter().position(|&b| b == b'"')?;
        return Some(&rest[..end]);
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Produces every line of the file; returns the message count.
fn load(producer: &BaseProducer, a: &Args) -> Result<u64, Error> {
    let file = std::fs::File::open(&a.file).map_err(|e| format!("{}: {e}", a.file))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::with_capacity(4096);
    let mut n = 0u64;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        while line.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
            line.pop();
        }
        if line.is_empty() {
            continue;
        }
        let key = a.key.as_ref().and_then(|f| key_of(&line, f.as_bytes()));
        let mut record = BaseRecord::<[u8], [u8]>::to(&a.topic).payload(&line[..]);
        match key {
            Some(k) => record = record.key(k),
            None => record = record.partition((n % a.partitions as u64) as i32),
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(format!("produce: {e}").into()),
            }
        }
        n += 1;
        if n.is_multiple_of(10_000) {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(300))?;
    Ok(n)
}

fn main() -> Result<(), Error> {
    let a = parse_args()?;
    let producer: BaseProducer = ClientConfig::new()
        .set("test.mock.num.brokers", a.brokers.to_string())
        .set("compression.codec", &a.compression)
        // The mock answers a fetch with one batch per partition, so a preloaded topic is
        // written in full batches (up to batch.size); a live one as it comes.
        .set("linger.ms", if a.live { "50" } else { "2000" })
        .set("batch.num.messages", "100000")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("log_level", "4")
        .create()?;
    let mock = producer
        .client()
        .mock_cluster()
        .ok_or("librdkafka did not start a mock cluster")?;
    mock.create_topic(&a.topic, a.partitions, 1)?;
    // SAFETY: the producer owns the mock cluster and outlives every use of this pointer.
    let mcluster =
        unsafe { rdkafka::bindings::rd_kafka_handle_mock_cluster(producer.client().native_ptr()) };
    unlimit_retention(mcluster, &a.topic, a.partitions)?;
    for t in &a.more_topics {
        mock.create_topic(t, a.partitions, 1)?;
        unlimit_retention(mcluster, t, a.partitions)?;
    }
    // A real broker waits 3 s (the mock's default too) for more members before a new group's
    // first assignment; a benchmark's consumers come alone.
    // SAFETY: as above.
    unsafe { rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(mcluster, 0) };
    let mut out = std::io::stdout();
    writeln!(out, "{}", mock.bootstrap_servers())?;
    out.flush()?;
    if a.live {
        writeln!(out, "ready")?;
        out.flush()?;
    }
    let started = Instant::now();
    let n = load(&producer, &a)?;
    let secs = started.elapsed().as_secs_f64();
    let what = if a.live { "loaded" } else { "ready" };
    writeln!(
        out,
        "{what} messages={n} seconds={secs:.3} per_second={:.0}",
        n as f64 / secs
    )?;
    out.flush()?;
    if a.ignore_stdin {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let mut sink = [0u8; 4096];
    let mut stdin = std::io::stdin();
    while stdin.read(&mut sink)? > 0 {}
    Ok(())
}
