//! The change log of one table: the newest changes, each with its position, kept for
//! subscribers to read and for clients to resume from, bounded by a number of changes and a
//! number of bytes.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;

use super::diff::{Changes, Op};

/// The changes of one snapshot, positions `first..first + len`, with each change's message
/// encoded once for every subscriber.
#[derive(Debug)]
pub struct Entry {
    /// The position of its first change.
    pub first: u64,
    /// What happened, per row.
    pub ops: Vec<Op>,
    /// The rows (see [`Changes::rows`]).
    pub rows: RecordBatch,
    /// The rows before (see [`Changes::old`]).
    pub old: Option<RecordBatch>,
    /// The messages, one after another; message `i` ends at `ends[i]`.
    text: String,
    ends: Vec<usize>,
}

impl Entry {
    /// Encodes `changes` as messages, the first at position `first`.
    pub fn new(first: u64, changes: Changes) -> Result<Self, ArrowError> {
        let lines = json_lines(&changes.rows)?;
        let mut text = String::with_capacity(lines.len() + changes.len() * 40);
        let mut ends = Vec::with_capacity(changes.len());
        for (i, (op, row)) in changes.ops.iter().zip(lines.split('\n')).enumerate() {
            change_message(&mut text, *op, first + i as u64, row);
            ends.push(text.len());
        }
        if ends.len() != changes.len() {
            return Err(ArrowError::InvalidArgumentError(format!(
                "{} rows encoded as {} JSON lines",
                changes.len(),
                ends.len()
            )));
        }
        Ok(Entry {
            first,
            ops: changes.ops,
            rows: changes.rows,
            old: changes.old,
            text,
            ends,
        })
    }

    /// The number of changes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether it holds no change.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The position of its last change.
    pub fn last(&self) -> u64 {
        self.first + self.len() as u64 - 1
    }

    /// The message of change `i`.
    pub fn message(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }

    /// Memory it holds (messages and Arrow arrays).
    pub fn bytes(&self) -> usize {
        self.text.capacity()
            + self.ends.capacity() * std::mem::size_of::<usize>()
            + self.rows.get_array_memory_size()
            + self.old.as_ref().map_or(0, |o| o.get_array_memory_size())
    }
}

/// Appends `{"op":OP,"position":N,"row":ROW}`.
pub fn change_message(out: &mut String, op: Op, position: u64, row: &str) {
    use std::fmt::Write;
    let _ = write!(
        out,
        "{{\"op\":\"{}\",\"position\":{position},\"row\":{row}}}",
        op.name()
    );
}

/// Rows as JSON objects, one per line (nulls kept as `null`, as `/sql` encodes them).
pub fn json_lines(rows: &RecordBatch) -> Result<String, ArrowError> {
    let mut out = Vec::new();
    {
        let mut w = crate::encode::json_writer(&rows.schema())
            .build::<_, arrow_json::writer::LineDelimited>(&mut out);
        w.write(rows)?;
        w.finish()?;
    }
    if out.last() == Some(&b'\n') {
        out.pop();
    }
    String::from_utf8(out).map_err(|e| ArrowError::JsonError(e.to_string()))
}

/// Rows as a JSON array.
pub fn json_array(rows: &[RecordBatch]) -> Result<String, ArrowError> {
    let mut out = String::from("[");
    for b in rows.iter().filter(|b| b.num_rows() > 0) {
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(&json_lines(b)?.replace('\n', ","));
    }
    out.push(']');
    Ok(out)
}

/// Where a resume position stands in a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// The changes after it are all retained.
    Ok,
    /// Changes after it were dropped from the log: the oldest position to resume from.
    Expired {
        /// The oldest position to resume from.
        oldest: u64,
    },
    /// Not given by this log (ahead of it, or before its start: another run's): the newest
    /// position.
    Unknown {
        /// The newest position.
        head: u64,
    },
}

/// The retained changes of one table.
#[derive(Debug)]
pub struct ChangeLog {
    entries: VecDeque<Arc<Entry>>,
    /// The position before the first change (none before it was given by this run).
    start: u64,
    /// The newest position given.
    head: u64,
    /// The oldest position a client may resume from: every change after it is retained.
    oldest: u64,
    changes: usize,
    bytes: usize,
    max_changes: usize,
    max_bytes: usize,
}

impl ChangeLog {
    /// An empty log whose first change will get position `head + 1`.
    pub fn new(head: u64, max_changes: usize, max_bytes: usize) -> Self {
        ChangeLog {
            entries: VecDeque::new(),
            start: head,
            head,
            oldest: head,
            changes: 0,
            bytes: 0,
            max_changes: max_changes.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    /// The same log, whose positions from `start` on are this run's: a resume from one of
    /// them before the log's first is expired (rather than unknown).
    pub fn since(mut self, start: u64) -> Self {
        self.start = start.min(self.head);
        self
    }

    /// The newest position given.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The oldest position a client may resume from.
    pub fn oldest(&self) -> u64 {
        self.oldest
    }

    /// Changes and bytes retained.
    pub fn size(&self) -> (usize, usize) {
        (self.changes, self.bytes)
    }

    /// Gives `changes` the next positions and keeps them, dropping the oldest entries past
    /// the bounds (the newest entry stays whatever its size).
    pub fn append(&mut self, changes: Changes) -> Result<Option<Arc<Entry>>, ArrowError> {
        let Some(entry) = Self::entry(self.head + 1, changes)? else {
            return Ok(None);
        };
        self.push(entry.clone());
        Ok(Some(entry))
    }

    /// The entry of `changes` at positions from `first` (`None` when there are none): their
    /// messages encoded, which takes time; made outside any lock readers wait on, then given
    /// to [`Self::push`].
    pub fn entry(first: u64, changes: Changes) -> Result<Option<Arc<Entry>>, ArrowError> {
        if changes.is_empty() {
            return Ok(None);
        }
        Ok(Some(Arc::new(Entry::new(first, changes)?)))
    }

    /// Keeps `entry`, made by [`Self::entry`] at the position after [`Self::head`], dropping
    /// the oldest entries past the bounds (the newest entry stays whatever its size).
    pub fn push(&mut self, entry: Arc<Entry>) {
        self.head = entry.last();
        self.changes += entry.len();
        self.bytes += entry.bytes();
        self.entries.push_back(entry.clone());
        while self.entries.len() > 1
            && (self.changes > self.max_changes || self.bytes > self.max_bytes)
        {
            if let Some(old) = self.entries.pop_front() {
                self.changes -= old.len();
                self.bytes -= old.bytes();
                self.oldest = old.last();
            }
        }
    }

    /// Whether a client may resume after `position`.
    pub fn resume(&self, position: u64) -> Resume {
        if position > self.head || position < self.start {
            Resume::Unknown { head: self.head }
        } else if position < self.oldest {
            Resume::Expired {
                oldest: self.oldest,
            }
        } else {
            Resume::Ok
        }
    }

    /// The entries holding positions after `position` (at most `max`), oldest first;
    /// `Err` with the oldest resumable position when some of them were dropped.
    pub fn after(&self, position: u64, max: usize) -> Result<Vec<Arc<Entry>>, u64> {
        if position < self.oldest {
            return Err(self.oldest);
        }
        let start = self.entries.partition_point(|e| e.last() <= position);
        Ok(self.entries.iter().skip(start).take(max).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn changes(keys: &[&str]) -> Changes {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
        ]));
        let n: Vec<Option<i64>> = (0..keys.len() as i64)
            .map(|i| (i > 0).then_some(i))
            .collect();
        let rows = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(Int64Array::from(n)),
            ],
        )
        .unwrap();
        let mut ops = vec![Op::Upsert; keys.len()];
        if let Some(l) = ops.last_mut() {
            *l = Op::Delete;
        }
        Changes {
            ops,
            rows,
            old: None,
        }
    }

    #[test]
    fn messages_carry_op_position_and_row() {
        let e = Entry::new(41, changes(&["a", "b\n\"c"])).unwrap();
        assert_eq!(e.last(), 42);
        assert_eq!(
            e.message(0),
            r#"{"op":"upsert","position":41,"row":{"k":"a","n":null}}"#
        );
        let m: serde_json::Value = serde_json::from_str(e.message(1)).unwrap();
        assert_eq!(m["op"], "delete");
        assert_eq!(m["position"], 42);
        assert_eq!(m["row"]["k"], "b\n\"c");
    }

    #[test]
    fn positions_follow_each_other_and_resume_finds_the_entry() {
        let mut log = ChangeLog::new(1000, 100, 1 << 20);
        assert!(log.append(changes(&[])).unwrap().is_none());
        log.append(changes(&["a", "b", "c"])).unwrap();
        log.append(changes(&["d", "e"])).unwrap();
        assert_eq!(log.head(), 1005);
        assert_eq!(log.resume(1000), Resume::Ok);
        assert_eq!(log.resume(1006), Resume::Unknown { head: 1005 });
        assert_eq!(
            log.resume(999),
            Resume::Unknown { head: 1005 },
            "another run's"
        );
        let later = ChangeLog::new(1005, 100, 1 << 20).since(1000);
        assert_eq!(later.resume(1002), Resume::Expired { oldest: 1005 });
        assert_eq!(later.resume(999), Resume::Unknown { head: 1005 });
        let firsts =
            |p| -> Vec<u64> { log.after(p, 10).unwrap().iter().map(|e| e.first).collect() };
        assert_eq!(firsts(1000), vec![1001, 1004]);
        assert_eq!(firsts(1002), vec![1001, 1004], "1003 is in the first entry");
        assert_eq!(firsts(1003), vec![1004]);
        assert!(firsts(1005).is_empty());
        assert_eq!(log.after(1000, 1).unwrap().len(), 1);
    }

    #[test]
    fn the_oldest_entries_go_past_the_bounds_and_their_positions_expire() {
        let mut log = ChangeLog::new(0, 4, 1 << 20);
        log.append(changes(&["a", "b", "c"])).unwrap();
        log.append(changes(&["d", "e"])).unwrap();
        assert_eq!(log.size().0, 2, "the first entry went");
        assert_eq!(log.oldest(), 3);
        assert_eq!(log.resume(2), Resume::Expired { oldest: 3 });
        assert_eq!(log.resume(3), Resume::Ok);
        assert_eq!(log.after(1, 10).unwrap_err(), 3);
        // one entry larger than the bound stays: it is the newest
        log.append(changes(&["f", "g", "h", "i", "j", "k"]))
            .unwrap();
        assert_eq!(log.size().0, 6);
        assert_eq!(log.oldest(), 5);
        let mut small = ChangeLog::new(0, 1000, 1);
        small.append(changes(&["a"])).unwrap();
        small.append(changes(&["b"])).unwrap();
        assert_eq!(small.size().0, 1, "bounded by bytes too");
    }

    #[test]
    fn a_json_array_of_several_batches() {
        let c = changes(&["a", "b"]);
        let text = json_array(&[c.rows.clone(), c.rows.slice(0, 0), c.rows]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 4);
        assert_eq!(json_array(&[]).unwrap(), "[]");
    }
}
