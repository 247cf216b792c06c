//! The committed mark: a table property that keeps, per pipeline, sink and pool worker, the
//! last checkpoint epoch weir committed to the table, written in the same metadata swap as
//! that epoch's snapshot.
//!
//! Snapshot summaries alone (`weir.epoch`) tell which epochs a table has only while their
//! snapshots live: once `expire_snapshots` removed them (a streaming table's snapshots are
//! usually kept hours or days), a restore whose checkpoint still lists its last epoch as
//! pending would commit that epoch's files a second time. Table properties outlive snapshot
//! expiry and are kept by other writers' commits, so the sink asks both.

use std::collections::HashMap;

use iceberg::table::Table;

/// The property's name: `weir.committed.<pipeline>.<sink>` (a single process) or
/// `weir.committed.<pipeline>.<sink>.worker.<id>` (pool worker `id`).
pub(crate) fn key(pipeline: &str, sink: &str, worker: Option<&str>) -> String {
    match worker {
        Some(w) => format!("weir.committed.{pipeline}.{sink}.worker.{w}"),
        None => format!("weir.committed.{pipeline}.{sink}"),
    }
}

/// What a mark says: the epoch, and the run that committed it (a single process's view,
/// whose history starts again with each run that has no checkpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mark {
    pub(crate) epoch: u64,
    pub(crate) run: Option<String>,
}

impl Mark {
    fn parse(value: &str) -> Option<Mark> {
        let (epoch, run) = match value.split_once(' ') {
            Some((e, r)) => (e, Some(r.to_string())),
            None => (value, None),
        };
        Some(Mark {
            epoch: epoch.parse().ok()?,
            run,
        })
    }

    fn value(&self) -> String {
        match &self.run {
            Some(r) => format!("{} {r}", self.epoch),
            None => self.epoch.to_string(),
        }
    }
}

/// The mark `table` holds for `pipeline`'s sink `sink` (as pool worker `worker`).
pub(crate) fn read(
    table: &Table,
    pipeline: &str,
    sink: &str,
    worker: Option<&str>,
) -> Option<Mark> {
    read_in(table.metadata().properties(), pipeline, sink, worker)
}

fn read_in(
    properties: &HashMap<String, String>,
    pipeline: &str,
    sink: &str,
    worker: Option<&str>,
) -> Option<Mark> {
    Mark::parse(properties.get(&key(pipeline, sink, worker))?)
}

/// The property a commit whose snapshot summary is `summary` sets, given the table's
/// `properties` before it: none for a commit of no epoch (compaction, a replay). A run's mark
/// replaces an earlier run's (a view's new history); otherwise the mark only grows (a pool
/// adopter finishing a dead worker's older epoch leaves the newer mark).
pub(crate) fn update(
    properties: &HashMap<String, String>,
    summary: &HashMap<String, String>,
) -> Option<(String, String)> {
    let pipeline = summary.get(crate::sink::PIPELINE)?;
    let sink = summary.get(crate::sink::SINK)?;
    let epoch: u64 = summary.get(crate::sink::EPOCH)?.parse().ok()?;
    let worker = summary.get(crate::sink::WORKER).map(String::as_str);
    let run = summary.get(crate::sink::RUN).cloned();
    let now = read_in(properties, pipeline, sink, worker);
    let epoch = match &now {
        Some(m) if m.run == run => m.epoch.max(epoch),
        _ => epoch,
    };
    Some((key(pipeline, sink, worker), Mark { epoch, run }.value()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(epoch: u64, worker: Option<&str>, run: Option<&str>) -> HashMap<String, String> {
        let mut s = HashMap::from([
            ("weir.pipeline".to_string(), "p".to_string()),
            ("weir.sink".to_string(), "lake".to_string()),
            ("weir.epoch".to_string(), epoch.to_string()),
        ]);
        if let Some(w) = worker {
            s.insert("weir.worker".into(), w.into());
        }
        if let Some(r) = run {
            s.insert("weir.run".into(), r.into());
        }
        s
    }

    /// A mark grows with each epoch and never goes back (an adopter finishing an older epoch),
    /// a new run replaces it, each worker has its own, and commits without an epoch set none.
    #[test]
    fn marks_grow_per_writer_and_restart_with_a_run() {
        let mut props = HashMap::new();
        let mut apply = |s: HashMap<String, String>| {
            if let Some((k, v)) = update(&props, &s) {
                props.insert(k, v);
            }
            props.clone()
        };
        let p = apply(summary(7, None, None));
        assert_eq!(read_in(&p, "p", "lake", None).unwrap().epoch, 7);
        let p = apply(summary(5, None, None));
        assert_eq!(read_in(&p, "p", "lake", None).unwrap().epoch, 7);
        let p = apply(summary(3, Some("w1"), None));
        assert_eq!(read_in(&p, "p", "lake", Some("w1")).unwrap().epoch, 3);
        assert_eq!(read_in(&p, "p", "lake", None).unwrap().epoch, 7);
        apply(summary(9, None, Some("run-a")));
        let p = apply(summary(2, None, Some("run-b")));
        assert_eq!(
            read_in(&p, "p", "lake", None).unwrap(),
            Mark {
                epoch: 2,
                run: Some("run-b".into())
            }
        );
        let mut no_epoch = summary(1, None, None);
        no_epoch.remove("weir.epoch");
        assert_eq!(update(&p, &no_epoch), None);
    }
}
