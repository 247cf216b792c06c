use super::*;

#[test]
fn a_partition_covers_itself_and_its_lanes_only() {
    assert!(covers("events/t/1", "events/t/1"));
    assert!(covers("events/t/1", "events/t/1/0"));
    assert!(covers("events/t/1", "events/t/1/11"));
    assert!(!covers("events/t/1", "events/t/10"));
    assert!(!covers("events/t/1", "events/t/10/1"));
    assert!(!covers("events/t/1", "events/t/"));
}

#[test]
fn worker_ids_must_be_usable_in_names() {
    assert!(valid_worker_id("weir-0"));
    assert!(valid_worker_id("host.example_1"));
    assert!(!valid_worker_id(""));
    assert!(!valid_worker_id("a/b"));
    assert!(!valid_worker_id(".hidden"));
}

#[test]
fn claims_take_turns_and_fence_the_previous_owner() {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().to_str().unwrap();
    let a = PoolStore::open(loc, "a").unwrap();
    let b = PoolStore::open(loc, "b").unwrap();
    let (ga, from) = a.claim("events/t/0").unwrap();
    assert_eq!((ga, from), (1, None));
    let owned_a: BTreeMap<String, u64> = [("events/t/0".to_string(), ga)].into();
    a.fence(&owned_a).unwrap();
    let (gb, _) = b.claim("events/t/0").unwrap();
    assert_eq!(gb, 2);
    let e = a.fence(&owned_a).unwrap_err();
    assert!(matches!(e, EngineError::Fenced(_)), "{e}");
    assert!(e.to_string().contains("worker `b`"), "{e}");
    b.fence(&[("events/t/0".to_string(), gb)].into()).unwrap();
    assert_eq!(a.committed_epoch("b").unwrap(), 0);
    b.mark_committed(7).unwrap();
    assert_eq!(a.committed_epoch("b").unwrap(), 7);
    // announcements: each worker sees the others
    a.announce("127.0.0.1:1").unwrap();
    b.announce("127.0.0.1:2").unwrap();
    assert_eq!(
        a.members(10_000).unwrap(),
        vec![("b".to_string(), "127.0.0.1:2".to_string())]
    );
    b.withdraw().unwrap();
    assert!(a.members(10_000).unwrap().is_empty());
}

/// Stores checkpoint `epoch` of `pool`'s worker owning `owned` as the coordinator does
/// (fence, manifest, seal); returns what the seal said.
fn checkpoint(
    pool: &PoolStore,
    epoch: u64,
    owned: &[(&str, u64)],
    between: impl FnOnce(),
) -> Result<(), EngineError> {
    let owned: BTreeMap<String, u64> = owned.iter().map(|(p, g)| (p.to_string(), *g)).collect();
    Fencing::fence(pool, &owned)?;
    between();
    let mut m = crate::checkpoint::test_manifest(epoch);
    m.owned = owned;
    m.sealed = true;
    let bytes = crate::checkpoint::encode_manifest(&m).unwrap();
    pool.own()
        .put(&format!("chk-{epoch:010}/manifest.json"), bytes)
        .unwrap();
    pool.seal(epoch)
}

/// A checkpoint of format 1 (weir before lanes were kept inside their partition)
/// numbered every lane of a repartition topic's partition; its state is cut by that
/// numbering and renumbered, its lanes' records kept for the job to fold.
#[test]
fn a_checkpoint_of_format_1_restores_under_the_new_numbering() {
    use crate::checkpoint::{encode_partials, OperatorRecord, PartitionRecord};
    use arrow::array::{Array, Int64Array, UInt32Array};
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().to_str().unwrap();
    let a = PoolStore::open(loc, "a").unwrap();
    let b = PoolStore::open(loc, "b").unwrap();
    let (t0, t1) = ("events/t/0", "events/t/1");
    let (g0, _) = a.claim(t0).unwrap();
    let (g1, _) = a.claim(t1).unwrap();
    let owned: BTreeMap<String, u64> = [(t0.to_string(), g0), (t1.to_string(), g1)].into();
    Fencing::fence(&a, &owned).unwrap();
    // two partitions of two lanes: t/0 had ids 0 and 1, t/1 ids 2 and 3 (its state 2)
    let partial = PartialWindow {
        window_start: 0,
        keys: vec![Arc::new(UInt32Array::from(vec![0, 2, 2]))],
        states: vec![Arc::new(Int64Array::from(vec![10, 20, 30]))],
    };
    a.own()
        .put(
            "chk-0000000001/op-0.arrow",
            encode_partials(&[partial]).unwrap(),
        )
        .unwrap();
    let lane = |key: &str, position| PartitionRecord {
        source: "events".into(),
        partition: key.into(),
        next_offset: 40,
        position,
        newest: 100,
        lanes: vec![],
        lane_lag: vec![],
        incarnation: 0,
        id: None,
    };
    let mut m = crate::checkpoint::test_manifest(1);
    m.format = 1;
    m.owned = owned;
    m.sealed = true;
    m.partitions = vec![
        lane("t/0/0", 1),
        lane("t/0/1", 2),
        lane("t/1/0", 3),
        lane("t/1/1", 4),
    ];
    m.operators = vec![OperatorRecord {
        name: "w".into(),
        file: Some("op-0.arrow".into()),
        rows: 3,
        flushed: 0,
        emitted: 0,
        retained: Vec::new(),
        closed: Default::default(),
    }];
    let bytes = crate::checkpoint::encode_manifest(&m).unwrap();
    a.own().put("chk-0000000001/manifest.json", bytes).unwrap();
    a.seal(1).unwrap();
    // b takes t/1 over
    let (g, from) = b.claim(t1).unwrap();
    assert!(from.is_some());
    let ids: HashMap<String, u32> = [(t0.to_string(), 0), (t1.to_string(), 1)].into();
    let legacy: HashMap<String, u32> = [(t0.to_string(), 0), (t1.to_string(), 2)].into();
    let columns: HashMap<String, PartitionColumn> =
        [("w".to_string(), PartitionColumn::Key(0))].into();
    let r = b
        .restore_numbered(&[(t1.to_string(), g)].into(), &ids, Some(&legacy), &columns)
        .unwrap();
    let restored = r.restored.unwrap();
    let rows = &restored.operators[0];
    let ids_of = |p: &PartialWindow| {
        let a = p.keys[0].as_any().downcast_ref::<UInt32Array>().unwrap();
        a.values().to_vec()
    };
    assert_eq!(rows.iter().flat_map(ids_of).collect::<Vec<_>>(), vec![1, 1]);
    let kept: Vec<&str> = restored
        .manifest
        .partitions
        .iter()
        .map(|p| p.partition.as_str())
        .collect();
    assert_eq!(kept, vec!["t/1/0", "t/1/1"]);
    // without the old numbering, the rows of another partition would be taken
    let (g, _) = b.claim(t0).unwrap();
    let r = b
        .restore_numbered(&[(t0.to_string(), g)].into(), &ids, Some(&legacy), &columns)
        .unwrap();
    let rows = &r.restored.unwrap().operators[0];
    assert_eq!(rows.iter().map(|p| p.keys[0].len()).sum::<usize>(), 1);
}

/// A partition restored without a closing of its own (claimed without state, or one a
/// checkpoint recording closings says nothing of: it was empty there) closed none of its
/// windows: it gets the lowest closing, not the operator's hand-over watermark as a floor
/// (its rows older than that were dead-lettered as late).
#[test]
fn a_partition_without_a_closing_is_restored_closed_nowhere() {
    use crate::checkpoint::OperatorRecord;
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().to_str().unwrap();
    let a = PoolStore::open(loc, "a").unwrap();
    let b = PoolStore::open(loc, "b").unwrap();
    let (t0, t1, t2) = ("events/t/0", "events/t/1", "events/t/2");
    let (g0, _) = a.claim(t0).unwrap();
    let (g1, _) = a.claim(t1).unwrap();
    let owned: BTreeMap<String, u64> = [(t0.to_string(), g0), (t1.to_string(), g1)].into();
    Fencing::fence(&a, &owned).unwrap();
    let mut m = crate::checkpoint::test_manifest(1);
    m.owned = owned;
    m.sealed = true;
    // t/0's windows closed up to 100; t/1 had none (empty); the hand-over was at 200
    m.operators = vec![OperatorRecord {
        name: "w".into(),
        file: None,
        rows: 0,
        flushed: 200,
        emitted: 200,
        retained: Vec::new(),
        closed: [(t0.to_string(), 100)].into(),
    }];
    let bytes = crate::checkpoint::encode_manifest(&m).unwrap();
    a.own().put("chk-0000000001/manifest.json", bytes).unwrap();
    a.seal(1).unwrap();
    // b takes t/0 and t/1 over from it, and t/2, never claimed
    let owned_b: BTreeMap<String, u64> = [t0, t1, t2]
        .iter()
        .map(|p| (p.to_string(), b.claim(p).unwrap().0))
        .collect();
    let ids: HashMap<String, u32> = [
        (t0.to_string(), 0),
        (t1.to_string(), 1),
        (t2.to_string(), 2),
    ]
    .into();
    let columns: HashMap<String, PartitionColumn> =
        [("w".to_string(), PartitionColumn::Key(0))].into();
    let restored = b
        .restore(&owned_b, &ids, &columns)
        .unwrap()
        .restored
        .unwrap();
    let closed = &restored.manifest.operators[0].closed;
    let expected: BTreeMap<String, i64> = [
        (t0.to_string(), 100),
        (t1.to_string(), i64::MIN),
        (t2.to_string(), i64::MIN),
    ]
    .into();
    assert_eq!(closed, &expected);
    assert_eq!(restored.manifest.operators[0].flushed, 200);
}

const P: &str = "events/t/0";

/// The race between a worker's fence check and its manifest: another worker claims the
/// partition in between. Either the checkpoint is voided (not completed, no commit) and
/// the claim restores from the one before, or it is sealed and the claim restores from
/// it; never a completed checkpoint that the claim ignores.
#[test]
fn a_claim_between_the_fence_and_the_manifest_voids_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().to_str().unwrap();
    let a = PoolStore::open(loc, "a").unwrap();
    let b = PoolStore::open(loc, "b").unwrap();
    let (g1, _) = a.claim(P).unwrap();
    checkpoint(&a, 1, &[(P, g1)], || {}).unwrap();
    // b claims after a's fence check of checkpoint 2, before its manifest
    let mut claimed = None;
    let e = checkpoint(&a, 2, &[(P, g1)], || claimed = Some(b.claim(P).unwrap())).unwrap_err();
    assert!(matches!(e, EngineError::Fenced(_)), "{e}");
    let (g2, from) = claimed.unwrap();
    assert_eq!(g2, 2);
    let one = StateRef {
        worker: "a".into(),
        epoch: 1,
    };
    assert_eq!(from, Some(one.clone()));
    // the voided checkpoint is undone: a restarts from 1, and takes epoch 2 again
    assert!(a.own().manifest(2).unwrap().is_none());
    assert_eq!(newest_valid(&a.own(), None).unwrap().unwrap().epoch, 1);
    checkpoint(&a, 2, &[], || {}).unwrap();
    // the other order: a's checkpoint is sealed before the claimant voids, so the claim
    // restores from it
    let (g3, _) = a.claim(P).unwrap();
    checkpoint(&a, 3, &[(P, g3)], || {}).unwrap();
    let (_, from) = b.claim(P).unwrap();
    assert_eq!(
        from,
        Some(StateRef {
            worker: "a".into(),
            epoch: 3
        })
    );
    // and a cannot complete another checkpoint owning it
    assert!(checkpoint(&a, 4, &[(P, g3)], || {}).is_err());
}

/// A partition handed over (released) is claimed without voiding the previous owner's
/// next checkpoint, which owns other partitions.
#[test]
fn a_released_partition_is_claimed_without_voiding() {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().to_str().unwrap();
    let a = PoolStore::open(loc, "a").unwrap();
    let b = PoolStore::open(loc, "b").unwrap();
    let (g1, _) = a.claim(P).unwrap();
    let (q1, _) = a.claim("events/t/1").unwrap();
    checkpoint(&a, 1, &[(P, g1), ("events/t/1", q1)], || {}).unwrap();
    a.release(P, g1).unwrap();
    let (_, from) = b.claim(P).unwrap();
    assert_eq!(
        from,
        Some(StateRef {
            worker: "a".into(),
            epoch: 1
        })
    );
    checkpoint(&a, 2, &[("events/t/1", q1)], || {}).unwrap();
}

/// A claimant that died between creating its claim and settling it: whoever reads the
/// claim settles it (voiding the previous owner's next epoch first).
#[test]
fn an_unsettled_claim_is_settled_by_its_reader() {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().to_str().unwrap();
    let a = PoolStore::open(loc, "a").unwrap();
    let c = PoolStore::open(loc, "c").unwrap();
    let (g1, _) = a.claim(P).unwrap();
    checkpoint(&a, 1, &[(P, g1)], || {}).unwrap();
    // b's claim, written but never settled (b died), from a stale look
    let stale = Claim {
        worker: "b".into(),
        generation: 2,
        from: None,
        at_ms: 0,
        settled: false,
    };
    a.root
        .put_new(&claim_name(P, 2), serde_json::to_vec(&stale).unwrap())
        .unwrap();
    // a, fenced by it, cannot complete checkpoint 2 owning the partition
    assert!(checkpoint(&a, 2, &[(P, g1)], || {}).is_err());
    let (g3, from) = c.claim(P).unwrap();
    assert_eq!(g3, 3);
    assert_eq!(
        from,
        Some(StateRef {
            worker: "a".into(),
            epoch: 1
        })
    );
}

/// A damaged manifest blocks no claim and no collection; and garbage collection with
/// `keep: 1` keeps the checkpoint a claim points to.
#[test]
fn a_damaged_manifest_blocks_nobody_and_claimed_checkpoints_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().to_str().unwrap();
    let a = PoolStore::open(loc, "a").unwrap();
    let b = PoolStore::open(loc, "b").unwrap();
    let (g1, _) = a.claim(P).unwrap();
    checkpoint(&a, 1, &[(P, g1)], || {}).unwrap();
    checkpoint(&a, 2, &[(P, g1)], || {}).unwrap();
    std::fs::write(
        dir.path().join("workers/a/chk-0000000002/manifest.json"),
        b"{\"checksum\":\"00",
    )
    .unwrap();
    let (_, from) = b.claim(P).unwrap();
    assert_eq!(
        from,
        Some(StateRef {
            worker: "a".into(),
            epoch: 1
        })
    );
    // a goes on with other partitions; its next epoch was voided by the claim (a claimant
    // voids the previous owner's next epoch whatever it owns): it is taken again
    assert!(checkpoint(&a, 3, &[], || {}).is_err());
    // keep 1 would leave only its newest
    for e in 3..=5 {
        checkpoint(&a, e, &[], || {}).unwrap();
    }
    assert_eq!(a.claimed_epochs().unwrap(), BTreeSet::from([1]));
    crate::checkpoint::collect_garbage(&a.own(), 1, true, &a.claimed_epochs().unwrap()).unwrap();
    assert!(valid_manifest(&a.own(), 1).unwrap().is_some());
    assert!(valid_manifest(&a.own(), 3).unwrap().is_none());
    // b restores the partition from it
    let ids = HashMap::from([(P.to_string(), 0u32)]);
    let r = b
        .restore(&BTreeMap::from([(P.to_string(), 2)]), &ids, &HashMap::new())
        .unwrap();
    assert_eq!(r.foreign.len(), 1);
}

/// Claims and release markers older than a partition's settled newest claim are pruned by
/// its holder's garbage collection (they only ever grew: every rebalance added some, listed
/// at every checkpoint of every worker); the newest stay, and claims go on taking turns with
/// the state where it was.
#[test]
fn claims_older_than_the_settled_newest_are_pruned_by_their_holder() {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().to_str().unwrap();
    let a = PoolStore::open(loc, "a").unwrap();
    let b = PoolStore::open(loc, "b").unwrap();
    let files = || {
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("partitions").join(P))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    // a and b hand the partition back and forth, each with a checkpoint and a release
    let mut epoch = [0u64; 2];
    for turn in 0..4 {
        let (pool, e) = if turn % 2 == 0 {
            (&a, &mut epoch[0])
        } else {
            (&b, &mut epoch[1])
        };
        let (g, _) = pool.claim(P).unwrap();
        *e += 1;
        checkpoint(pool, *e, &[(P, g)], || {}).unwrap();
        pool.release(P, g).unwrap();
    }
    assert_eq!(files().len(), 8, "{:?}", files());
    // a does not hold it (b's claim 4 is the newest): a prunes nothing
    a.claimed_epochs().unwrap();
    assert_eq!(files().len(), 8);
    // b holds it: claims 1-3 and their release markers go
    b.claimed_epochs().unwrap();
    assert_eq!(
        files(),
        vec!["claim-0000000004.json", "released-0000000004.json"]
    );
    // a claims it again, from b's checkpoint
    let (g, from) = a.claim(P).unwrap();
    assert_eq!(g, 5);
    assert_eq!(
        from,
        Some(StateRef {
            worker: "b".into(),
            epoch: epoch[1]
        })
    );
}

/// A worker restoring partitions it lost meanwhile (its session expired, another worker
/// claimed them and pruned the older claims) is fenced, as its checkpoint would be, so it
/// joins again; it failed on the pruned claim ("disappeared": exit 2).
#[test]
fn a_restore_of_a_partition_claimed_since_is_fenced_even_after_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let loc = dir.path().to_str().unwrap();
    let a = PoolStore::open(loc, "a").unwrap();
    let b = PoolStore::open(loc, "b").unwrap();
    let (ga, _) = a.claim(P).unwrap();
    let (gb, _) = b.claim(P).unwrap();
    checkpoint(&b, 1, &[(P, gb)], || {}).unwrap();
    b.claimed_epochs().unwrap();
    assert!(!dir
        .path()
        .join(format!("partitions/{P}/claim-{ga:010}.json"))
        .exists());
    let owned = BTreeMap::from([(P.to_string(), ga)]);
    let ids = HashMap::from([(P.to_string(), 0u32)]);
    let e = match a.restore(&owned, &ids, &HashMap::new()) {
        Err(e) => e,
        Ok(_) => panic!("restored a partition claimed since"),
    };
    assert!(matches!(e, EngineError::Fenced(_)), "{e}");
}
