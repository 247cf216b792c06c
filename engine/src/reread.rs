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
//! Kafka keeps the note as the commit's metadata (`OffsetCommit`'s `metadata`, at most
//! `offset.metadata.max.bytes`, 4,096 bytes by default; a note is at most [`MAX_NOTE_BYTES`],
//! about 38 bytes an operator).

use crate::clock::WATERMARK_END;

/// The first word of a note: notes of other writers, or of other versions, are ignored.
const MAGIC: &str = "weir.reread.v1";

/// The last word of a note: a note cut short (by a broker that truncates metadata) is none.
const END: &str = ".";

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
/// started from a note and stopped before it read as far keeps the note's clause).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RereadNote {
    pub clauses: Vec<Clause>,
}

impl RereadNote {
    /// The note as text: `weir.reread.v1 r=<read_to> <key hex>=<closed> ... r=... .`, at most
    /// [`MAX_NOTE_BYTES`] (see there).
    pub fn encode(&self) -> String {
        let mut clauses = self.clauses.clone();
        loop {
            let text = Self::text(&clauses);
            if text.len() + END.len() < MAX_NOTE_BYTES {
                return Self::finished(text);
            }
            clauses.sort_by_key(|c| c.read_to);
            if clauses.len() > 1 {
                let merged = clauses[0].meet(&clauses[1]);
                clauses.splice(0..2, [merged]);
            } else if let Some(c) = clauses.first_mut() {
                if c.closed.pop().is_none() {
                    clauses.clear();
                }
            }
        }
    }

    fn text(clauses: &[Clause]) -> String {
        let mut s = MAGIC.to_string();
        for c in clauses.iter().filter(|c| !c.closed.is_empty()) {
            s.push_str(&format!(" r={}", c.read_to));
            for (key, closed) in &c.closed {
                s.push_str(&format!(" {key:016x}={closed}"));
            }
        }
        s
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
        let mut clauses: Vec<Clause> = Vec::new();
        let mut ended = false;
        for w in words {
            if ended {
                return None;
            }
            if w == END {
                ended = true;
                continue;
            }
            if let Some(r) = w.strip_prefix("r=") {
                clauses.push(Clause {
                    read_to: r.parse().ok()?,
                    closed: Vec::new(),
                });
                continue;
            }
            let (key, value) = w.split_once('=')?;
            let key = u64::from_str_radix(key, 16).ok()?;
            let value: i64 = value.parse().ok()?;
            // a view's rows are never skipped
            if value == WATERMARK_END {
                return None;
            }
            clauses.last_mut()?.closed.push((key, value));
        }
        ended.then_some(RereadNote { clauses })
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
}

impl Reread {
    /// Resolves `note` against the operators' keys (`None` for an operator that takes no
    /// note: a processing-time one); `None` when no operator of this run has rows to skip.
    pub fn resolve(note: &RereadNote, keys: &[Option<u64>]) -> Option<Reread> {
        let clauses: Vec<(u64, Vec<Option<i64>>)> = note
            .clauses
            .iter()
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
        (!clauses.is_empty()).then_some(Reread { clauses })
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
        };
        let text = note.encode();
        assert_eq!(RereadNote::decode(&text), Some(note));
        for other in [
            "",
            "weir.reread.v2 r=1",
            "weir.reread.v1 07=5",
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
        };
        let back = RereadNote::decode(&note.encode()).unwrap();
        // the two lowest merged: below 10, the 8 operators both name
        assert_eq!(back.clauses, vec![clause(10, &ops[..8]), clause(30, &ops)]);
        let one = RereadNote {
            clauses: vec![clause(
                u64::MAX,
                &(0..100).map(|k| (k, i64::MIN)).collect::<Vec<_>>(),
            )],
        };
        let text = one.encode();
        assert!(text.len() <= MAX_NOTE_BYTES, "{}", text.len());
        let back = RereadNote::decode(&text).unwrap();
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
        };
        let r =
            Reread::resolve(&note, &[Some(operator_key("other", minute)), Some(a), None]).unwrap();
        assert_eq!(r.clauses, vec![(10, vec![None, Some(60_000), None])]);
        assert!(r.counted(1, 9, 60_000));
        assert!(!r.counted(1, 10, 60_000) && !r.counted(1, 9, 60_001) && !r.counted(0, 0, 0));
        assert_eq!(
            Reread::resolve(&note, &[Some(operator_key("x", hour)), None]),
            None
        );
    }

    #[test]
    fn a_row_is_counted_when_any_clause_says_so() {
        let note = RereadNote {
            clauses: vec![clause(20, &[(1, 100)]), clause(30, &[(1, 50)])],
        };
        let r = Reread::resolve(&note, &[Some(1)]).unwrap();
        assert_eq!(r.read_to(), 30);
        assert!(r.counted(0, 19, 100) && r.counted(0, 25, 50));
        assert!(!r.counted(0, 25, 100) && !r.counted(0, 30, 0));
    }
}
