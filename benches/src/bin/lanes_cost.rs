//! What a worker pool's repartition lanes cost, in the layout of weir before checkpoint
//! format 2 (every lane of a repartition topic's partition a job partition of its own:
//! P internal x P upstream partitions) and in the current one (a partition holds its lanes
//! in vectors), for P = 12, 100 and 1,000 (upstream partitions = internal partitions).
//!
//!   lanes_cost [P...]        (default: 12 100 1000)
//!
//! Per P and layout, for one worker owning every partition (divide by the worker count for
//! a pool): the job partitions; memory of the per-partition structures a worker's job and
//! reader allocate (clocks, offset trackers, partition keys, the reader's per-lane state),
//! measured as resident memory grown while building them; the checkpoint records' bytes
//! (the manifest's `partitions`, lanes at realistic offsets and times); and the cost of one
//! hand-over of a partition holding 1,024 (a busy partition) or 16 messages (one read at
//! about 160 events/s, handed over every 100 ms) spread round-robin over its lanes, from
//! reader to worker clock: chunks built, sent through a channel, sequenced in their clock,
//! recorded in the checkpoint cut (decoding and windows not included: they cost the same per
//! message in both layouts, plus a fixed cost per chunk which the chunk count shows).

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_engine::checkpoint::PartitionRecord;
use weir_engine::clock::{Clocks, PartitionClock};
use weir_engine::dead_letter::PartitionInfo;
use weir_engine::events::Resume;
use weir_engine::progress::Progress;
use weir_engine::{Chunk, ChunkData, Messages};

/// The reader's per-lane state before format 2 (`kafka/src/source/reader.rs`'s `Lane`,
/// with its `MessageBuffer`), reproduced to weigh it.
#[allow(dead_code)]
struct OldLane {
    info: Arc<PartitionInfo>,
    seq: u64,
    bytes: Vec<u8>,
    messages: Messages,
    since: Option<Instant>,
    subject_name: (u32, u32),
    last_message: Instant,
    expect: Option<u64>,
    legacy: bool,
}

/// The reader's per-lane state now (`kafka/src/source/lanes.rs`'s vectors, per lane).
#[allow(dead_code)]
struct NewLanes {
    expect: Vec<u64>,
    legacy: Vec<bool>,
    last_message: Vec<Instant>,
    idle: Vec<bool>,
    infos: Vec<Option<Arc<PartitionInfo>>>,
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn info(id: usize, number: u32) -> Arc<PartitionInfo> {
    Arc::new(PartitionInfo {
        source: "events".into(),
        id,
        state_id: id,
        number,
        topic: Some("events".into()),
        file: None,
    })
}

/// Memory of the per-partition structures (bytes), measured as resident memory grown.
fn memory(p: usize, old: bool) -> u64 {
    let before = rss_bytes();
    let parts = if old { p * p } else { p };
    let clocks = Clocks::new(&[(parts, 5_000)]);
    let progress = Progress::new(parts, &[1]);
    let keys: Vec<(String, String)> = (0..p)
        .flat_map(|i| {
            (0..if old { p } else { 1 }).map(move |u| {
                let key = if old {
                    format!("pool-events-repartition/{i}/{u}")
                } else {
                    format!("pool-events-repartition/{i}")
                };
                ("events".to_string(), key)
            })
        })
        .collect();
    let cut: Vec<Option<Resume>> = vec![Some(Resume::at(1)); parts];
    let (old_lanes, new_lanes): (Vec<OldLane>, Vec<NewLanes>) = if old {
        let lanes = (0..p * p)
            .map(|i| OldLane {
                info: info(i, (i % p) as u32),
                seq: 0,
                bytes: Vec::new(),
                messages: Messages::default(),
                since: None,
                subject_name: (0, 0),
                last_message: Instant::now(),
                expect: None,
                legacy: false,
            })
            .collect();
        (lanes, Vec::new())
    } else {
        let lanes = (0..p)
            .map(|i| {
                clocks.partition(i).use_lanes(p);
                NewLanes {
                    expect: vec![0; p],
                    legacy: vec![false; p],
                    last_message: vec![Instant::now(); p],
                    idle: vec![false; p],
                    // every lane delivered: its info made
                    infos: (0..p).map(|u| Some(info(i, u as u32))).collect(),
                }
            })
            .collect();
        (Vec::new(), lanes)
    };
    let grown = rss_bytes().saturating_sub(before);
    black_box((&clocks, &progress, &keys, &cut, &old_lanes, &new_lanes));
    grown
}

/// The checkpoint records of `p` partitions (JSON bytes).
fn checkpoint_bytes(p: usize, old: bool) -> usize {
    let newest = 1_767_225_600_000i64;
    let mut records = Vec::new();
    for i in 0..p {
        let record = |partition: String, position: u64, lag: i64| PartitionRecord {
            source: "events".into(),
            partition,
            next_offset: 1_234_567,
            position,
            newest: newest - lag,
            lanes: vec![],
            lane_lag: vec![],
            incarnation: 0,
            id: None,
        };
        if old {
            for u in 0..p {
                let key = format!("pool-events-repartition/{i}/{u}");
                records.push(record(key, 2_000_000 + u as u64, (u % 50) as i64));
            }
        } else {
            let mut r = record(format!("pool-events-repartition/{i}"), 0, 0);
            r.lanes = (0..p).map(|u| 2_000_000 + u as u64).collect();
            r.lane_lag = (0..p).map(|u| (u % 50) as i64).collect();
            records.push(r);
        }
    }
    serde_json::to_vec(&records).map(|b| b.len()).unwrap_or(0)
}

/// One hand-over of a partition with `messages` messages round-robin over `p` lanes, from
/// reader to clock: (chunks, nanoseconds), the best of several rounds.
fn hand_over(p: usize, messages: usize, old: bool) -> (usize, u64) {
    let parts = if old { p } else { 1 };
    let clocks = Clocks::new(&[(parts, 5_000)]);
    let infos: Vec<Arc<PartitionInfo>> = (0..p).map(|u| info(0, u as u32)).collect();
    if !old {
        clocks.partition(0).use_lanes(p);
    }
    let cancel = AtomicBool::new(false);
    let (tx, rx) = crossbeam_channel::bounded::<Chunk>(p.max(64));
    let mut cut: Vec<Option<Resume>> = vec![None; parts];
    let mut lane_cut: HashMap<usize, Vec<u64>> = HashMap::new();
    let mut seqs = vec![0u64; parts];
    let mut best = u64::MAX;
    let mut chunks_made = 0;
    for round in 0..30u64 {
        let started = Instant::now();
        // per lane: its messages in this hand-over (old: every lane a chunk, maybe empty)
        let per_lane: Vec<usize> = (0..p)
            .map(|u| messages / p + usize::from(u < messages % p))
            .collect();
        let mut chunks = 0;
        for (u, &n) in per_lane.iter().enumerate() {
            if n == 0 && !old {
                continue;
            }
            let (id, lane) = if old { (u, None) } else { (0, Some(u as u32)) };
            let offsets: Vec<u64> = (0..n as u64).map(|i| round * 1_000 + i).collect();
            let chunk = Chunk {
                source: 0,
                partition: infos[u].clone(),
                seq: seqs[id],
                first_offset: offsets.first().copied().unwrap_or(0),
                resume: Resume {
                    next_offset: round,
                    position: offsets.last().map_or(0, |o| o + 1),
                    incarnation: 0,
                },
                data: ChunkData::Messages(Messages {
                    offsets,
                    lane,
                    ..Messages::default()
                }),
            };
            seqs[id] += 1;
            let (resume, seq) = (chunk.resume, chunk.seq);
            tx.send(chunk).ok();
            cut[id] = Some(resume);
            if let Some(l) = lane {
                let v = lane_cut.entry(id).or_default();
                if v.len() <= l as usize {
                    v.resize(l as usize + 1, 0);
                }
                v[l as usize] = resume.position;
            }
            let got = rx.recv().ok();
            let clock: &PartitionClock = clocks.partition(id);
            black_box(
                clock
                    .sequence_in(seq, lane, round as i64, false, &cancel)
                    .ok(),
            );
            black_box(got);
            chunks += 1;
        }
        best = best.min(started.elapsed().as_nanos() as u64);
        chunks_made = chunks;
    }
    (chunks_made, best)
}

/// [`memory`] in a process of its own (resident memory does not shrink when freed).
fn memory_apart(p: usize, old: bool) -> u64 {
    let Ok(me) = std::env::current_exe() else {
        return 0;
    };
    let layout = if old { "lanes" } else { "vector" };
    std::process::Command::new(me)
        .args(["--memory", &p.to_string(), layout])
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, p, layout] = args.as_slice() {
        if flag == "--memory" {
            let p: usize = p.parse().unwrap_or(12);
            println!("{}", memory(p, layout == "lanes"));
            return;
        }
    }
    let ps: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let ps = if ps.is_empty() {
        vec![12, 100, 1_000]
    } else {
        ps
    };
    println!(
        "{:>6} {:>7} {:>10} {:>11} {:>15} {:>12} {:>11} {:>12} {:>11}",
        "P",
        "layout",
        "job parts",
        "memory MiB",
        "checkpoint KiB",
        "chunks/1024",
        "us/1024",
        "chunks/16",
        "us/16"
    );
    for &p in &ps {
        for old in [true, false] {
            let mem = memory_apart(p, old);
            let bytes = checkpoint_bytes(p, old);
            let (chunks, ns) = hand_over(p, 1_024, old);
            let (few, few_ns) = hand_over(p, 16, old);
            let us = |ns: u64| Duration::from_nanos(ns).as_secs_f64() * 1e6;
            println!(
                "{:>6} {:>7} {:>10} {:>11.1} {:>15.1} {:>12} {:>11.1} {:>12} {:>11.1}",
                p,
                if old { "lanes" } else { "vector" },
                if old { p * p } else { p },
                mem as f64 / 1_048_576.0,
                bytes as f64 / 1_024.0,
                chunks,
                us(ns),
                few,
                us(few_ns),
            );
        }
    }
}
