//! What a run without checkpoints leaves beside a committed offset, so that the next run does
//! not emit again, with only part of their rows, windows that are already durable.
//!
//! A log source commits offset C, the first row of a window not yet durable. Rows after C can
//! belong to windows already emitted (events arrive out of order within
//! `max_out_of_orderness`, and late rows were dead-lettered): a run that starts at C and knows
//! nothing of them would open those windows again and emit them with only the rows read again.
//! So beside C goes a [`RereadNote`]: the offset R the run had read (and reported) to, and per
//! window operator the closing watermark D up to which every window holding one of those rows
//! is durable in every sink (or its rows dead-lettered durably). The next run skips, per
//! operator, the rows below R whose window closes at or below D: they are already counted.
//!
//! A note also gives, per operator, a floor F: the closing watermark up to which its windows
//! (of every partition, or of this one when windows close per partition) were durable in
//! every sink when the note was written. A row of a window closing at or below F was late
//! then, or is in a durable output already; the next run therefore treats such a row as late
//! even where its own watermark is lower (another partition not read again yet holds it
//! back), rather than opening that window again with only this row. F only rises: a run
//! carries the floor it started from into its own notes.
//!
//! Kafka keeps the note as the commit's metadata (`OffsetCommit`'s `metadata`, at most
//! `offset.metadata.max.bytes`, 4,096 bytes by default; a note is at most [`MAX_NOTE_BYTES`],
//! about 38 bytes an operator).

use crate::clock::{WATERMARK_END, WATERMARK_MIN};

/// The first word of a note: notes of other writers, or of other versions, are ignored.
const MAGIC: &str = "weir.reread.v1";

/// The last word of a note: a note cut short (by a broker that truncates metadata) is none.
const END: &str = ".";

/// The word before the floors (see [`RereadNote::floors`]).
const FLOORS: &str = "f";

/// A note's most bytes as text: clauses are merged (skipping less) and then operators left
/// out until it fits (Kafka's `offset.metadata.max.bytes` is 4,096 by default).
pub const MAX_NOTE_BYTES: usize = 1024;

/// One run's knowledge: rows read below `read_to` whose window closes at or below an
/// operator's `closed` are in durable outputs already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    /// The offset after the last row the clause describes.
    pub read_to: u64,
    /// Per operator (by [`operator_key`]): the closing watermark up to which its windows of
    /// those rows are durable.
    pub closed: Vec<(u64, i64)>,
}

impl Clause {
    /// What both clauses say: the rows below the lower `read_to`, of the operators both
    /// name, up to the lower closing. True whenever both are.
    fn meet(&self, other: &Clause) -> Clause {
        Clause {
            read_to: self.read_to.min(other.read_to),
            closed: self
                .closed
                .iter()
                .filter_map(|&(k, d)| {
                    let (_, e) = other.closed.iter().find(|(ok, _)| *ok == k)?;
                    Some((k, d.min(*e)))
                })
                .collect(),
        }
    }
}

/// The clauses of the runs that read a partition past its committed offset (a run that
/// started from a note and stopped before it read as far keeps the note's clause), and the
/// operators' floors.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RereadNote {
    pub clauses: Vec<Clause>,
    /// Per operator (by [`operator_key`]): the closing watermark up to which its windows
    /// were durable (see the module's documentation).
    pub floors: Vec<(u64, i64)>,
}

impl RereadNote {
    /// The note as text: `weir.reread.v1 r=<read_to> <key hex>=<closed> ... r=... [f <key
    /// hex>=<floor> ...] .`, at most [`MAX_NOTE_BYTES`] (see there; floors are left out
    /// before operators of the last clause).
    pub fn encode(&self) -> String {
        let mut clauses = self.clauses.clone();
        let mut floors = self.floors.clone();
        loop {
            let text = Self::text(&clauses, &floors);
            if text.len() + END.len() < MAX_NOTE_BYTES {
                return Self::finished(text);
            }
            clauses.sort_by_key(|c| c.read_to);
            if clauses.len() > 1 {
                let merged = clauses[0].meet(&clauses[1]);
                clauses.splice(0..2, [merged]);
            } else if floors.pop().is_some() {
                continue;
            } else if let Some(c) = clauses.first_mut() {
                if c.closed.pop().is_none() {
                    clauses.clear();
                }
            }
        }
    }

    fn text(clauses: &[Clause], floors: &[(u64, i64)]) -> String {
        let mut s = MAGIC.to_string();
        for c in clauses.iter().filter(|c| !c.closed.is_empty()) {
            s.push_str(&format!(" r={}", c.read_to));
            for (key, closed) in &c.closed {
                s.push_str(&format!(" {key:016x}={closed}"));
            }
        }
        if !floors.is_empty() {
            s.push_str(" f");
            for (key, floor) in floors {
                s.push_str(&format!(" {key:016x}={floor}"));
            }
        }
        s
    }

    /// Whether the note says nothing.
    pub fn is_empty(&self) -> bool {
        self.floors.is_empty() && self.clauses.iter().all(|c| c.closed.is_empty())
    }

    /// [`Self::text`] and the end mark.
    fn finished(text: String) -> String {
        text + " " + END
    }

    /// Reads a note written by [`Self::encode`]; `None` for anything else (another writer's
    /// metadata, an empty string, a damaged note).
    pub fn decode(text: &str) -> Option<RereadNote> {
        let mut words = text.split_ascii_whitespace();
        if words.next()? != MAGIC {
            return None;
        }
        let mut note = RereadNote::default();
        let mut ended = false;
        let mut in_floors = false;
        for w in words {
            if ended {
                return None;
            }
            if w == END {
                ended = true;
                continue;
            }
            if w == FLOORS && !in_floors {
                in_floors = true;
                continue;
            }
            if let Some(r) = w.strip_prefix("r=").filter(|_| !in_floors) {
                note.clauses.push(Clause {
                    read_to: r.parse().ok()?,
                    closed: Vec::new(),
                });
                continue;
            }
            let (key, value) = w.split_once('=')?;
            let key = u64::from_str_radix(key, 16).ok()?;
            let value: i64 = value.parse().ok()?;
            // a view's rows are never skipped, nor late
            if value == WATERMARK_END {
                return None;
            }
            match in_floors {
                true => note.floors.push((key, value)),
                false => note.clauses.last_mut()?.closed.push((key, value)),
            }
        }
        ended.then_some(note)
    }
}

/// An operator's identity across runs: its name and where its windows close (the closings of
/// a few event times), so that a note never applies to an operator whose windows changed.
/// Processing-time operators get none (see [`Reread::resolve`]).
pub fn operator_key(name: &str, closes_at: impl Fn(i64) -> i64) -> u64 {
    // FNV-1a: stable across builds and Rust versions, unlike the standard library's hashers
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(name.as_bytes());
    eat(&[0]);
    for t in [0, 1_234_567, 86_400_001, 1_700_000_000_123] {
        eat(&closes_at(t).to_le_bytes());
    }
    h
}

/// A note resolved against this run's operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reread {
    /// Per clause: its `read_to`, and per operator index the closing up to which rows below
    /// it are skipped (`None`: none is).
    pub clauses: Vec<(u64, Vec<Option<i64>>)>,
    /// Per operator index: the floor of its rows' watermarks (see [`RereadNote::floors`]).
    pub floors: Vec<Option<i64>>,
}

impl Reread {
    /// Resolves `note`, of a partition read again from `committed`, against the operators'
    /// keys (`None` for an operator that takes no note: a processing-time one, a view);
    /// `None` when it says nothing of this run's operators.
    pub fn resolve(note: &RereadNote, keys: &[Option<u64>], committed: u64) -> Option<Reread> {
        let clauses: Vec<(u64, Vec<Option<i64>>)> = note
            .clauses
            .iter()
            .filter(|c| c.read_to > committed)
            .map(|c| {
                let closed = keys
                    .iter()
                    .map(|k| {
                        let k = (*k)?;
                        c.closed.iter().find(|(nk, _)| *nk == k).map(|(_, d)| *d)
                    })
                    .collect();
                (c.read_to, closed)
            })
            .filter(|(_, closed): &(u64, Vec<Option<i64>>)| closed.iter().any(Option::is_some))
            .collect();
        let floors: Vec<Option<i64>> = keys
            .iter()
            .map(|k| {
                let k = (*k)?;
                note.floors
                    .iter()
                    .filter(|(nk, _)| *nk == k)
                    .map(|(_, f)| *f)
                    .max()
            })
            .collect();
        let says = !clauses.is_empty() || floors.iter().any(Option::is_some);
        says.then_some(Reread { clauses, floors })
    }

    /// The same floors, without rows to skip (the partition's commit passed them); `None`
    /// without floors either.
    pub fn without_skips(&self) -> Option<Reread> {
        self.floors.iter().any(Option::is_some).then(|| Reread {
            clauses: Vec::new(),
            floors: self.floors.clone(),
        })
    }

    /// Operator `op`'s floor, if any.
    pub fn floor(&self, op: usize) -> Option<i64> {
        self.floors.get(op).copied().flatten()
    }

    /// Whether it changes anything for a chunk whose first row is at `offset` with
    /// watermark `watermark` (watermarks rise along a chunk): rows to skip, or a watermark
    /// below a floor.
    pub fn applies(&self, offset: Option<&u64>, watermark: Option<&i64>) -> bool {
        let skips = offset.is_some_and(|&o| o < self.read_to());
        let below = watermark.is_some_and(|&w| self.floors.iter().flatten().any(|&f| w < f));
        skips || below
    }

    /// The offset below which rows may be skipped.
    pub fn read_to(&self) -> u64 {
        self.clauses.iter().map(|c| c.0).max().unwrap_or(0)
    }

    /// Whether operator `op`'s row at `offset`, in the window closing at `closes`, was
    /// counted by an earlier run.
    pub fn counted(&self, op: usize, offset: u64, closes: i64) -> bool {
        self.clauses.iter().any(|(read_to, closed)| {
            offset < *read_to
                && closed
                    .get(op)
                    .copied()
                    .flatten()
                    .is_some_and(|d| closes <= d)
        })
    }
}

/// The watermarks at which an operator's windows close: tumbling windows of `size` ms, each
/// closing `lateness` ms after its end. A floor is kept as the last of them at or below the
/// watermark reached: the same windows are closed by either, and it rises only when a window
/// closes (so that a rise is worth committing at once, see `Progress::commit_points`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closings {
    size: i64,
    lateness: i64,
}

impl Closings {
    /// The closings of an operator whose windows close at `closes_at(event time)`, when
    /// those are tumbling windows' (checked at a few windows); `None` otherwise.
    pub fn of(closes_at: impl Fn(i64) -> i64) -> Option<Self> {
        let lateness = closes_at(-1);
        let size = closes_at(0).checked_sub(lateness)?;
        if size <= 0 {
            return None;
        }
        let tumbling = [-3i64, 1, 2, 1_000].iter().all(|&k| {
            let start = k.checked_mul(size);
            let end = start.and_then(|s| s.checked_add(size));
            let closing = end.and_then(|e| e.checked_add(lateness));
            match (start, end, closing) {
                (Some(start), Some(end), Some(closing)) => {
                    closes_at(start) == closing && closes_at(end - 1) == closing
                }
                _ => false,
            }
        });
        tumbling.then_some(Closings { size, lateness })
    }

    /// The last closing at or below `watermark` (itself at either end of time, or past the
    /// arithmetic's range).
    pub fn last_at_or_below(self, watermark: i64) -> i64 {
        if watermark == WATERMARK_MIN || watermark == WATERMARK_END {
            return watermark;
        }
        watermark
            .checked_sub(self.lateness)
            .map(|w| w.div_euclid(self.size))
            .and_then(|k| k.checked_mul(self.size))
            .and_then(|c| c.checked_add(self.lateness))
            .unwrap_or(watermark)
    }
}

/// What a run knows of its window operators' floors (see [`RereadNote::floors`]).
#[derive(Debug, Default)]
pub struct Floors {
    /// Per operator: its windows close per partition (a floor is then a partition's).
    per_partition: Vec<bool>,
    /// Per operator: the source it reads; per partition: its source. A partition's note
    /// gives floors of its source's operators only.
    op_source: Vec<usize>,
    partition_source: Vec<usize>,
    /// Per operator: the highest closing watermark its windows were durable to in every
    /// sink (below the end of the input), of all partitions and of each.
    durable: Vec<(i64, Vec<i64>)>,
    /// Per operator: where its windows close, when known ([`Closings`]).
    closings: Vec<Option<Closings>>,
}

impl Floors {
    /// Floors of operators: `per_partition` says whose windows close per partition,
    /// `op_source` which source each reads, `partition_source` each partition's source.
    pub fn new(
        per_partition: Vec<bool>,
        op_source: Vec<usize>,
        partition_source: Vec<usize>,
    ) -> Self {
        Floors {
            durable: vec![(WATERMARK_MIN, Vec::new()); per_partition.len()],
            closings: Vec::new(),
            per_partition,
            op_source,
            partition_source,
        }
    }

    /// Per operator, where its windows close (see [`Closings`]; `None`, or missing: a floor
    /// is kept as the watermark reached).
    pub fn set_closings(&mut self, closings: Vec<Option<Closings>>) {
        self.closings = closings;
    }

    /// Operator `op`'s windows are durable in every sink up to `watermark`, and those of
    /// each partition up to `partitions[i]` when given. The end of the input (every window
    /// emitted at once, closed or not) counts for nothing: what was durable before stays.
    pub fn durable(&mut self, op: usize, watermark: i64, partitions: Option<&[i64]>) {
        let closings = self.closings.get(op).copied().flatten();
        let last_closing = |w: i64| closings.map_or(w, |c| c.last_at_or_below(w));
        let Some((all, parts)) = self.durable.get_mut(op) else {
            return;
        };
        if watermark < WATERMARK_END {
            *all = (*all).max(last_closing(watermark));
        }
        for (i, &w) in partitions.unwrap_or_default().iter().enumerate() {
            if parts.len() <= i {
                parts.resize(i + 1, WATERMARK_MIN);
            }
            if w < WATERMARK_END {
                parts[i] = parts[i].max(last_closing(w));
            }
        }
    }

    /// The floors for partitions of a run's first assignment that have no commit (nothing
    /// was read there, or nothing committed), from `started`, the notes of the partitions
    /// of that assignment that have one: per operator whose windows close with the whole
    /// source, the lowest floor of those notes, when every one of them has a floor for it:
    /// a row of those windows goes to the dead letters rather than into a second row of a
    /// window an earlier run emitted. `None` where nothing is known.
    pub fn for_uncommitted(&self, started: &[Option<&Reread>]) -> Vec<Option<i64>> {
        (0..self.per_partition.len())
            .map(|op| {
                if self.per_partition[op] || started.is_empty() {
                    return None;
                }
                started
                    .iter()
                    .map(|r| r.and_then(|r| r.floor(op)))
                    .try_fold(i64::MAX, |low, f| Some(low.min(f?)))
            })
            .collect()
    }

    /// The source of `partition`, if known.
    pub fn source_of(&self, partition: usize) -> Option<usize> {
        self.partition_source.get(partition).copied()
    }

    /// Whether operator `op` reads `source`.
    pub fn reads(&self, op: usize, source: usize) -> bool {
        self.op_source.get(op) == Some(&source)
    }

    /// The floors of `partition`'s note, per operator of its source with a key: the higher
    /// of how far its windows (of that partition, when they close per partition) were
    /// durable, and the floor of the note the partition started from.
    pub fn of(
        &self,
        keys: &[Option<u64>],
        started: Option<&Reread>,
        partition: usize,
    ) -> Vec<(u64, i64)> {
        let source = self.partition_source.get(partition);
        keys.iter()
            .enumerate()
            .filter(|(op, _)| source.is_some() && self.op_source.get(*op) == source)
            .filter_map(|(op, key)| {
                let key = (*key)?;
                let per_partition = self.per_partition.get(op).copied().unwrap_or(true);
                let durable = self
                    .durable
                    .get(op)
                    .map(|(all, parts)| match per_partition {
                        true => parts.get(partition).copied().unwrap_or(WATERMARK_MIN),
                        false => *all,
                    });
                let floor = durable
                    .filter(|&w| w > WATERMARK_MIN)
                    .max(started.and_then(|r| r.floor(op)))?;
                Some((key, floor))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clause(read_to: u64, closed: &[(u64, i64)]) -> Clause {
        Clause {
            read_to,
            closed: closed.to_vec(),
        }
    }

    #[test]
    fn a_note_reads_back_as_written_and_anything_else_is_no_note() {
        let note = RereadNote {
            clauses: vec![
                clause(42, &[(7, 60_000), (u64::MAX, i64::MIN + 1)]),
                clause(50, &[(7, 0)]),
            ],
            floors: vec![(7, 59_000), (9, -3)],
        };
        let text = note.encode();
        assert_eq!(RereadNote::decode(&text), Some(note));
        for other in [
            "",
            "weir.reread.v2 r=1",
            "weir.reread.v1 07=5",
            "weir.reread.v1 r=1 07=5 f 07=4 r=2 07=6 .",
            "weir.reread.v1 f 07=4 f 07=5 .",
            "weir.reread.v1 f r=1 .",
            "weir.reread.v1 r=x",
            "weir.reread.v1 r=1 zz=5",
            "weir.reread.v1 r=1 07= .",
            "weir.reread.v1 r=1 07=5",
            "{\"weir\":1}",
        ] {
            assert_eq!(RereadNote::decode(other), None, "{other}");
        }
        let end = format!("{MAGIC} r=1 01={WATERMARK_END} .");
        assert_eq!(RereadNote::decode(&end), None);
        // cut short: `-5000` read as `-5` would skip more
        assert_eq!(RereadNote::decode(&text[..text.len() - 2]), None);
        assert_eq!(RereadNote::decode("weir.reread.v1 . r=1 07=5"), None);
    }

    #[test]
    fn a_note_too_long_merges_its_clauses_then_leaves_operators_out() {
        // 38 bytes an operator: three clauses of 10 do not fit, two do
        let ops: Vec<(u64, i64)> = (0..10).map(|k| (u64::MAX - k, i64::MIN)).collect();
        let note = RereadNote {
            clauses: vec![clause(30, &ops), clause(10, &ops[..8]), clause(20, &ops)],
            floors: Vec::new(),
        };
        let back = RereadNote::decode(&note.encode()).unwrap();
        // the two lowest merged: below 10, the 8 operators both name
        assert_eq!(back.clauses, vec![clause(10, &ops[..8]), clause(30, &ops)]);
        let one = RereadNote {
            clauses: vec![clause(
                u64::MAX,
                &(0..100).map(|k| (k, i64::MIN)).collect::<Vec<_>>(),
            )],
            floors: (0..5).map(|k| (k, i64::MIN)).collect(),
        };
        let text = one.encode();
        assert!(text.len() <= MAX_NOTE_BYTES, "{}", text.len());
        let back = RereadNote::decode(&text).unwrap();
        // the floors went first
        assert!(back.floors.is_empty());
        assert!(back.clauses[0].closed.len() > 10);
        assert_eq!(
            back.clauses[0].closed[..],
            one.clauses[0].closed[..back.clauses[0].closed.len()]
        );
    }

    #[test]
    fn an_operator_whose_windows_changed_gets_no_skip() {
        let minute = |t: i64| (t.div_euclid(60_000) + 1) * 60_000;
        let hour = |t: i64| (t.div_euclid(3_600_000) + 1) * 3_600_000;
        let a = operator_key("per_dataset", minute);
        assert_eq!(a, operator_key("per_dataset", minute));
        assert_ne!(a, operator_key("per_dataset", hour));
        assert_ne!(a, operator_key("per_service", minute));
        let note = RereadNote {
            clauses: vec![clause(10, &[(a, 60_000)])],
            floors: Vec::new(),
        };
        let r = Reread::resolve(
            &note,
            &[Some(operator_key("other", minute)), Some(a), None],
            0,
        )
        .unwrap();
        assert_eq!(r.clauses, vec![(10, vec![None, Some(60_000), None])]);
        assert!(r.counted(1, 9, 60_000));
        assert!(!r.counted(1, 10, 60_000) && !r.counted(1, 9, 60_001) && !r.counted(0, 0, 0));
        assert_eq!(
            Reread::resolve(&note, &[Some(operator_key("x", hour)), None], 0),
            None
        );
    }

    #[test]
    fn a_row_is_counted_when_any_clause_says_so() {
        let note = RereadNote {
            clauses: vec![clause(20, &[(1, 100)]), clause(30, &[(1, 50)])],
            floors: Vec::new(),
        };
        let r = Reread::resolve(&note, &[Some(1)], 0).unwrap();
        assert_eq!(r.read_to(), 30);
        assert!(r.counted(0, 19, 100) && r.counted(0, 25, 50));
        assert!(!r.counted(0, 25, 100) && !r.counted(0, 30, 0));
    }

    #[test]
    fn floors_stay_when_the_skips_are_passed_and_only_floors_is_a_note() {
        let note = RereadNote {
            clauses: vec![clause(20, &[(1, 100)])],
            floors: vec![(1, 90), (2, 7), (1, 95)],
        };
        let r = Reread::resolve(&note, &[Some(1), None, Some(3)], 5).unwrap();
        assert_eq!(r.floors, vec![Some(95), None, None]);
        assert_eq!(r.floor(0), Some(95));
        assert!(r.counted(0, 19, 100));
        // read from past the clause: no row is skipped, the floor holds
        let past = Reread::resolve(&note, &[Some(1)], 20).unwrap();
        assert!(past.clauses.is_empty() && !past.counted(0, 19, 0));
        assert_eq!(past.floor(0), Some(95));
        let left = r.without_skips().unwrap();
        assert!(left.clauses.is_empty() && left.read_to() == 0);
        assert_eq!(left.floors, r.floors);
        assert_eq!(Reread::resolve(&note, &[Some(4)], 20), None);
        let only = RereadNote {
            clauses: Vec::new(),
            floors: vec![(0xab, -5)],
        };
        assert_eq!(only.encode(), "weir.reread.v1 f 00000000000000ab=-5 .");
        assert_eq!(RereadNote::decode(&only.encode()), Some(only));
        assert!(RereadNote::default().is_empty());
    }

    #[test]
    fn closings_are_those_of_tumbling_windows_only() {
        // windows of 60 closing 5 after their end
        let c = Closings::of(|t| crate::time::window_start(t, 60) + 65).unwrap();
        assert_eq!(c.last_at_or_below(64), 5);
        assert_eq!(c.last_at_or_below(65), 65);
        assert_eq!(c.last_at_or_below(-56), -115);
        assert_eq!(c.last_at_or_below(-55), -55);
        assert_eq!(c.last_at_or_below(WATERMARK_MIN), WATERMARK_MIN);
        assert_eq!(c.last_at_or_below(WATERMARK_END), WATERMARK_END);
        // a view's rows close at the end; windows that grow; a size past the arithmetic
        assert_eq!(Closings::of(|_| WATERMARK_END), None);
        assert_eq!(
            Closings::of(|t| if t < 100 {
                crate::time::window_start(t, 60) + 60
            } else {
                t * 2
            }),
            None
        );
        assert_eq!(
            Closings::of(|t| crate::time::window_start(t, i64::MAX / 2) + i64::MAX / 2),
            None
        );
    }
}
