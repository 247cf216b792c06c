//! Tests of the offset tracker and its notes.

use super::*;

fn durable(watermark: i64, covered: &[u64]) -> Durable {
    Durable {
        watermark,
        covered: covered.to_vec(),
        partitions: None,
    }
}

fn residue(seq: u64, next_offset: u64, windows: Vec<(i64, u64)>) -> ChunkResidue {
    ChunkResidue {
        partition: 0,
        seq,
        next_offset,
        windows: vec![OpResidue {
            operator: 0,
            worker: 0,
            after_handover: 0,
            windows,
        }],
    }
}

#[test]
fn commits_only_what_durable_windows_cover() {
    let p = Progress::new(1, &[2]);
    p.track(0);
    // chunk 1 arrives before chunk 0: nothing is committable yet
    p.add_residues([residue(1, 20, vec![(120, 10)])]);
    assert_eq!(p.committable(0), None);
    p.add_residues([residue(0, 10, vec![(60, 0), (120, 5)])]);
    // no window is durable: chunk 0's first open row is offset 0
    assert_eq!(p.committable(0), Some(0));
    // one sink durable to 60 is not enough: the other one is behind
    p.sink_durable(0, 0, durable(60, &[1]));
    assert_eq!(p.committable(0), Some(0));
    p.sink_durable(0, 1, durable(60, &[1]));
    assert_eq!(p.committable(0), Some(5));
    p.sink_durable(0, 0, durable(120, &[2]));
    p.sink_durable(0, 1, durable(120, &[2]));
    assert_eq!(p.committable(0), Some(20));
}

#[test]
fn a_views_rows_hold_the_offset_back_for_good_and_keep_no_residues() {
    let p = Progress::new(1, &[1]);
    p.track(0);
    p.add_residues([residue(0, 10, vec![(60, 0)])]);
    p.sink_durable(0, 0, durable(60, &[1]));
    assert_eq!(p.committable(0), Some(10));
    // a view's row at offset 12: nothing past it is ever committable, even once the
    // run ended (its outputs durable to the end)
    p.add_residues([residue(1, 20, vec![(WATERMARK_END, 12)])]);
    p.add_residues([residue(2, 30, vec![(120, 25)])]);
    p.sink_durable(0, 0, durable(WATERMARK_END, &[5]));
    assert_eq!(p.committable(0), Some(12));
    {
        let inner = p.inner.lock().unwrap();
        assert!(inner.partitions[0].held && inner.partitions[0].pending.is_empty());
    }
    // revoked and assigned again: still held
    p.restart(0, 3);
    p.add_residues([residue(3, 40, vec![(180, 35)])]);
    p.sink_durable(0, 0, durable(WATERMARK_END, &[9]));
    assert_eq!(p.committable(0), Some(12));
    // a source whose views are released (NATS) is not held by them
    let q = Progress::new(1, &[1]);
    q.track(0);
    q.release_views(0);
    q.add_residues([residue(0, 10, vec![(WATERMARK_END, 2)])]);
    q.sink_durable(0, 0, durable(60, &[1]));
    assert_eq!(q.committable(0), Some(10));
}

#[test]
fn a_window_reopened_after_it_was_emitted_waits_for_its_hand_over() {
    let p = Progress::new(1, &[1]);
    p.track(0);
    // the operator emitted up to 120 (hand-over 3) before a lagging partition's rows
    // for the window closing at 60 were aggregated
    p.sink_durable(0, 0, durable(120, &[3]));
    let mut r = residue(0, 10, vec![(60, 4)]);
    r.windows[0].after_handover = 3;
    p.add_residues([r]);
    assert_eq!(p.committable(0), Some(4));
    p.sink_durable(0, 0, durable(120, &[4]));
    assert_eq!(p.committable(0), Some(10));
}

#[test]
fn a_window_closing_per_partition_is_durable_once_its_partition_passed_it() {
    let p = Progress::new(2, &[1]);
    p.track(1);
    let mut r = residue(0, 10, vec![(60, 4)]);
    r.partition = 1;
    p.add_residues([r]);
    // the operator's lowest watermark and every hand-over passed the window, but its
    // partition's windows are emitted up to 30 only: its rows are still held
    let parts = |p1: i64| Durable {
        watermark: 120,
        covered: vec![9],
        partitions: Some(std::sync::Arc::new(vec![120, p1])),
    };
    p.sink_durable(0, 0, parts(30));
    assert_eq!(p.committable(1), Some(4));
    p.sink_durable(0, 0, parts(60));
    assert_eq!(p.committable(1), Some(10));
}

#[test]
fn restart_forgets_old_chunks() {
    let p = Progress::new(1, &[1]);
    p.track(0);
    p.add_residues([residue(0, 10, vec![(60, 0)])]);
    p.restart(0, 5);
    p.add_residues([residue(5, 30, vec![])]);
    assert_eq!(p.committable(0), Some(30));
}

fn clause(read_to: u64, closed: &[(u64, i64)]) -> Clause {
    Clause {
        read_to,
        closed: closed.to_vec(),
    }
}

#[test]
fn the_note_names_the_rows_read_past_the_commit_whose_windows_are_durable() {
    let p = Progress::new(1, &[1]);
    p.track(0);
    // no keys, no note
    p.add_residues([residue(0, 10, vec![(60, 0), (120, 5)])]);
    assert_eq!(p.note(0), None);
    p.set_operator_keys(vec![Some(0xab)], vec![], vec![]);
    // rows 0-9 read: windows 60 (from offset 0) and 120 (from 5); nothing durable yet:
    // everything from 0 is read again, all of it counted again
    assert_eq!(p.committable(0), Some(0));
    let note = |p: &Progress| RereadNote::decode(&p.note(0).unwrap()).unwrap().clauses;
    assert_eq!(note(&p), vec![clause(10, &[(0xab, 59)])]);
    // window 60 durable: the commit moves to 5; rows below 20 of windows up to 119 are
    // counted (offsets 10-19 went to window 60 again, out of order)
    p.add_residues([residue(1, 20, vec![(60, 12), (180, 15)])]);
    p.sink_durable(0, 0, durable(60, &[1]));
    assert_eq!(p.committable(0), Some(5));
    assert_eq!(note(&p), vec![clause(20, &[(0xab, 119)])]);
    // a gap (chunk 3 before chunk 2): the note stops at the gap
    p.add_residues([residue(3, 40, vec![(180, 30)])]);
    assert_eq!(note(&p)[0].read_to, 20);
    // everything durable: the commit reaches the end, and nothing is read again
    p.add_residues([residue(2, 30, vec![(180, 22)])]);
    p.sink_durable(0, 0, durable(180, &[2]));
    assert_eq!(p.committable(0), Some(40));
    let only_floor = RereadNote::decode(&p.note(0).unwrap()).unwrap();
    assert!(only_floor.clauses.is_empty());
    assert_eq!(only_floor.floors, vec![(0xab, 180)]);
    // a view's rows are never skipped, nor a processing-time operator's
    let v = Progress::new(1, &[1, 1]);
    v.set_operator_keys(vec![Some(1), None], vec![], vec![]);
    v.track(0);
    let mut r = residue(0, 10, vec![(60, 0), (WATERMARK_END, 1)]);
    r.windows.push(OpResidue {
        operator: 1,
        ..r.windows[0].clone()
    });
    v.add_residues([r]);
    assert_eq!(v.note(0), None);
}

#[test]
fn all_durable_skips_up_to_the_highest_window_seen_only() {
    let p = Progress::new(1, &[1, 1]);
    p.set_operator_keys(vec![Some(7), Some(8)], vec![], vec![]);
    p.track(0);
    // operator 0's window 120 holds the commit at 5; operator 1's windows are all
    // durable: its rows are skipped up to the highest window it saw, not beyond
    let mut r = residue(0, 10, vec![(60, 0), (120, 5)]);
    r.windows.push(OpResidue {
        operator: 1,
        worker: 0,
        after_handover: 0,
        windows: vec![(60, 0)],
    });
    p.add_residues([r]);
    p.sink_durable(0, 0, durable(60, &[1]));
    p.sink_durable(1, 0, durable(1_000, &[1]));
    assert_eq!(p.committable(0), Some(5));
    assert_eq!(
        RereadNote::decode(&p.note(0).unwrap()).unwrap().clauses,
        vec![clause(10, &[(7, 119), (8, 60)])]
    );
}

#[test]
fn the_floor_is_how_far_windows_are_durable_and_never_falls_nor_is_the_end() {
    let p = Progress::new(2, &[1, 1]);
    p.set_operator_keys(vec![Some(1), Some(2)], vec![], vec![]);
    p.track(1);
    let floors = |p: &Progress, id: usize| {
        p.commit_points(&[id])[0]
            .clone()
            .and_then(|(_, n)| n)
            .map(|n| n.floors)
    };
    // the run started from a note whose floor for operator 1 is 500, operator 2's 10
    let text = RereadNote {
        clauses: vec![clause(20, &[(1, 119)])],
        floors: vec![(1, 500), (2, 10), (9, 900)],
    }
    .encode();
    assert!(p.start_reading(1, 5, &text));
    p.restart(1, 0);
    assert_eq!(p.reread(1).unwrap().floors, vec![Some(500), Some(10)]);
    let mut r = residue(0, 30, vec![(180, 5)]);
    r.partition = 1;
    p.add_residues([r]);
    // durable to 60 and 240 now: the floors are 500 (the note's, higher) and 240; an
    // operator not of this run is not carried
    p.sink_durable(0, 0, durable(60, &[1]));
    p.sink_durable(1, 0, durable(240, &[1]));
    assert_eq!(floors(&p, 1), Some(vec![(1, 500), (2, 240)]));
    // the commit passes the note's clause: its floors stay, in this run and in its notes
    p.sink_durable(0, 0, durable(180, &[1]));
    assert_eq!(p.committable(1), Some(30));
    let left = p.reread(1).unwrap();
    assert!(left.clauses.is_empty());
    assert_eq!(left.floor(0), Some(500));
    assert_eq!(floors(&p, 1), Some(vec![(1, 500), (2, 240)]));
    // the end of the input is no floor: how far windows were durable before it stays
    p.sink_durable(1, 0, durable(WATERMARK_END, &[1]));
    assert_eq!(floors(&p, 1), Some(vec![(1, 500), (2, 240)]));
    // partition 0, without a note of its own, has no floor from another partition's
    // (a floor is of the process that wrote it); its notes carry how far windows are
    // durable here
    p.track(0);
    assert!(p.tracking(0).unwrap().is_none());
    p.add_residues([residue(0, 7, vec![(300, 0)])]);
    assert_eq!(floors(&p, 0), Some(vec![(1, 180), (2, 240)]));
    // an operator of another source gets no floor in this partition's notes
    let o = Progress::new(2, &[1, 1]);
    o.set_operator_keys(
        vec![Some(1), Some(2)],
        vec![(false, 0), (false, 1)],
        vec![0, 1],
    );
    o.track(0);
    o.add_residues([residue(0, 7, vec![(300, 0)])]);
    o.sink_durable(0, 0, durable(60, &[1]));
    o.sink_durable(1, 0, durable(240, &[1]));
    assert_eq!(floors(&o, 0), Some(vec![(1, 60)]));
    // windows that close per partition: that partition's durable closing, and no other
    // partition's floor
    let q = Progress::new(2, &[1]);
    q.set_operator_keys(vec![Some(1)], vec![(true, 0)], vec![]);
    q.track(1);
    let mut r = residue(0, 30, vec![(180, 5)]);
    r.partition = 1;
    q.add_residues([r]);
    let mut d = durable(0, &[]);
    d.partitions = Some(std::sync::Arc::new(vec![900, 120]));
    q.sink_durable(0, 0, d);
    assert_eq!(floors(&q, 1), Some(vec![(1, 120)]));
}

#[test]
fn at_the_first_assignment_a_partition_without_a_commit_takes_the_lowest_floor() {
    let note = |floor: i64| {
        RereadNote {
            clauses: Vec::new(),
            floors: vec![(1, floor)],
        }
        .encode()
    };
    let p = Progress::new(4, &[1]);
    p.set_operator_keys(vec![Some(1)], vec![], vec![]);
    assert!(p.start_reading(0, 5, &note(500)));
    assert!(p.start_reading(1, 5, &note(300)));
    p.assignment_read(&[0, 1, 2], &[0, 1], &[2]);
    assert_eq!(p.reread(2).unwrap().floors, vec![Some(300)]);
    // a later assignment: this run may hold those windows open itself
    p.assignment_read(&[3], &[], &[3]);
    assert!(p.reread(3).is_none());
    // a first assignment whose offsets could not be read still is the first
    let f = Progress::new(3, &[1]);
    f.set_operator_keys(vec![Some(1)], vec![], vec![]);
    f.assignment_read(&[0], &[], &[]);
    assert!(f.start_reading(1, 5, &note(500)));
    f.assignment_read(&[1, 2], &[1], &[2]);
    assert!(f.reread(2).is_none());
    // rows of the source reported before: none
    let g = Progress::new(3, &[1]);
    g.set_operator_keys(vec![Some(1)], vec![], vec![]);
    g.track(0);
    g.add_residues([residue(0, 3, vec![(60, 0)])]);
    assert!(g.start_reading(1, 5, &note(500)));
    g.assignment_read(&[1, 2], &[1], &[2]);
    assert!(g.reread(2).is_none());
    // a commit without a floor: nothing is known
    let q = Progress::new(3, &[1]);
    q.set_operator_keys(vec![Some(1)], vec![], vec![]);
    assert!(q.start_reading(0, 5, &note(500)));
    assert!(!q.start_reading(1, 5, ""));
    q.assignment_read(&[0, 1, 2], &[0, 1], &[2]);
    assert!(q.reread(2).is_none());
    // windows closing per partition: a partition's floor is its own
    let r = Progress::new(2, &[1]);
    r.set_operator_keys(vec![Some(1)], vec![(true, 0)], vec![]);
    assert!(r.start_reading(0, 5, &note(500)));
    r.assignment_read(&[0, 1], &[0], &[1]);
    assert!(r.reread(1).is_none());
    // with checkpoints, none
    let c = Progress::new(2, &[1]);
    c.set_operator_keys(vec![Some(1)], vec![], vec![]);
    c.use_checkpoints();
    c.assignment_read(&[0, 1], &[0], &[1]);
    assert!(c.reread(1).is_none());
}

#[test]
fn a_note_applies_to_a_partition_starting_below_where_it_was_read() {
    let p = Progress::new(2, &[1, 1]);
    p.set_operator_keys(vec![Some(1), Some(2)], vec![], vec![]);
    let text = RereadNote {
        clauses: vec![clause(20, &[(2, 119)])],
        floors: Vec::new(),
    }
    .encode();
    assert!(p.start_reading(1, 5, &text));
    let r = p.reread(1).unwrap();
    assert_eq!(r.clauses, vec![(20, vec![None, Some(119)])]);
    // a note read up to the start is nothing to skip; someone else's metadata neither
    assert!(!p.start_reading(1, 20, &text));
    assert!(p.reread(1).is_none());
    assert!(!p.start_reading(0, 5, "someone else's metadata"));
    assert!(p.start_reading(1, 5, &text));
    p.forget_reread(1);
    assert!(p.reread(1).is_none());
    // with checkpoints, offsets and state come from them
    p.use_checkpoints();
    assert!(!p.start_reading(1, 5, &text));
}

#[test]
fn a_run_that_reads_again_keeps_the_note_it_started_from_while_it_matters() {
    let p = Progress::new(1, &[1]);
    p.set_operator_keys(vec![Some(1)], vec![], vec![]);
    p.track(0);
    // run 1 read to 40; window 119 and below durable
    let inherited = clause(40, &[(1, 119)]);
    let text = RereadNote {
        clauses: vec![inherited.clone()],
        floors: Vec::new(),
    }
    .encode();
    assert!(p.start_reading(0, 5, &text));
    p.restart(0, 0);
    // run 2 read to 20 only (rows of window 180 from 5): both clauses are committed
    p.add_residues([residue(0, 20, vec![(180, 5)])]);
    assert_eq!(p.committable(0), Some(5));
    let note = |p: &Progress| RereadNote::decode(&p.note(0).unwrap()).unwrap().clauses;
    assert_eq!(note(&p), vec![clause(20, &[(1, 179)]), inherited.clone()]);
    // a clause naming no operator of this run is carried all the same
    let q = Progress::new(1, &[1]);
    q.set_operator_keys(vec![Some(1)], vec![], vec![]);
    q.track(0);
    let other = clause(30, &[(9, 60)]);
    let text = RereadNote {
        clauses: vec![other.clone()],
        floors: Vec::new(),
    }
    .encode();
    assert!(!q.start_reading(0, 5, &text));
    q.add_residues([residue(0, 20, vec![(180, 5)])]);
    assert_eq!(note(&q), vec![clause(20, &[(1, 179)]), other]);
    // once the commit passed it, the inherited clause is dropped
    p.add_residues([residue(1, 50, vec![(240, 45)])]);
    p.sink_durable(0, 0, durable(180, &[1]));
    assert_eq!(p.committable(0), Some(45));
    assert_eq!(note(&p), vec![clause(50, &[(1, 239)])]);
}

/// Windows of 60 closing 5 after their end: a floor rises only when a window closes, so
/// that its rise is worth committing at once.
#[test]
fn floors_are_kept_at_window_closings() {
    let p = Progress::new(1, &[1]);
    p.set_operator_keys(vec![Some(1)], vec![], vec![]);
    let closings =
        crate::reread::Closings::of(|t| crate::time::window_start(t, 60).saturating_add(65));
    assert!(closings.is_some());
    p.set_closings(vec![closings]);
    p.track(0);
    p.add_residues([residue(0, 7, vec![(300, 0)])]);
    let floors = || {
        p.commit_points(&[0])[0]
            .clone()
            .and_then(|(_, n)| n)
            .map(|n| n.floors)
    };
    p.sink_durable(0, 0, durable(64, &[1]));
    assert_eq!(floors(), Some(vec![(1, 5)]));
    p.sink_durable(0, 0, durable(124, &[1]));
    assert_eq!(floors(), Some(vec![(1, 65)]));
    p.sink_durable(0, 0, durable(125, &[1]));
    assert_eq!(floors(), Some(vec![(1, 125)]));
}

/// A partition with nothing read since its assignment is committed at the group's offset it
/// started from, with this run's floors: else its note kept the floor of an earlier run,
/// and a row of a window this run emitted, new there after a kill, was on time.
#[test]
fn a_partition_with_nothing_read_is_committed_where_it_started_with_the_floors() {
    let p = Progress::new(2, &[1]);
    p.set_operator_keys(vec![Some(1)], vec![], vec![]);
    let note = |floor: i64| {
        RereadNote {
            clauses: vec![clause(9, &[(1, 119)])],
            floors: vec![(1, floor)],
        }
        .encode()
    };
    p.assigning(&[0, 1]);
    assert!(p.start_reading(1, 5, &note(60)));
    p.track(0);
    p.track(1);
    p.restart(0, 0);
    p.restart(1, 0);
    // nothing read on 1; partition 0's windows durable to 180
    p.add_residues([residue(0, 7, vec![(300, 0)])]);
    p.sink_durable(0, 0, durable(180, &[1]));
    let point = p.commit_points(&[1])[0].clone().unwrap();
    assert_eq!(point.0, 5);
    let n = point.1.unwrap();
    assert_eq!(n.floors, vec![(1, 180)]);
    assert_eq!(n.clauses, vec![clause(9, &[(1, 119)])]);
    // a chunk read there: its own committable offset from then on
    let mut r = residue(0, 12, vec![(300, 10)]);
    r.partition = 1;
    p.add_residues([r]);
    assert_eq!(p.commit_points(&[1])[0].as_ref().unwrap().0, 10);
    // assigned again without a committed offset read: nothing to commit until a chunk
    p.assigning(&[1]);
    p.restart(1, 1);
    assert_eq!(p.commit_points(&[1])[0], None);
    // a forgotten note (its offsets name other records): no start to commit either
    assert!(p.start_reading(1, 5, &note(60)));
    p.forget_reread(1);
    assert_eq!(p.commit_points(&[1])[0], None);
    // with checkpoints, offsets are the checkpoints' only
    let c = Progress::new(1, &[1]);
    c.set_operator_keys(vec![Some(1)], vec![], vec![]);
    c.use_checkpoints();
    c.track(0);
    c.start_reading(0, 5, &note(60));
    assert_eq!(c.commit_points(&[0])[0], None);
}
