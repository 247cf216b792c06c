//! What the worker-pool tests share: input cut into slices, and what a worker's log says of
//! its claims.
#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};

use super::kafka_support::Running;

/// The lines of `events` in files of `per` lines each, in order.
pub fn slices_of(events: &Path, per: usize) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(events).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let dir = events.parent().unwrap();
    lines
        .chunks(per)
        .enumerate()
        .map(|(i, c)| {
            let p = dir.join(format!("slice-{i:02}.ndjson"));
            std::fs::write(&p, c.join("\n") + "\n").unwrap();
            p
        })
        .collect()
}

/// How many claims of a log took a partition whose state a given worker held.
pub fn claims_from(log: &[String], worker: &str) -> usize {
    let from = format!("worker: \"{worker}\"");
    log.iter()
        .filter(|l| l.contains("partition claimed") && l.contains(&from))
        .count()
}

pub fn has_claims(r: &Running) -> bool {
    has_claims_in(&r.lines())
}

/// Whether a worker's log shows a claim.
pub fn has_claims_in(log: &[String]) -> bool {
    log.iter().any(|l| l.contains("partition claimed"))
}
