use super::*;

fn record(partition: &str, next_offset: u64, position: u64, newest: i64) -> PartitionRecord {
    PartitionRecord {
        source: "events".into(),
        partition: partition.into(),
        next_offset,
        position,
        newest,
        lanes: vec![],
        lane_lag: vec![],
        incarnation: 0,
        id: None,
    }
}

fn manifest_with(partitions: Vec<PartitionRecord>) -> Manifest {
    Manifest {
        format: FORMAT,
        pipeline: "p".into(),
        epoch: 1,
        created_ms: 0,
        finished: false,
        fingerprint: BTreeMap::new(),
        partitions,
        operators: vec![],
        sinks: BTreeMap::new(),
        dead_letter: serde_json::Value::Null,
        counters: BTreeMap::new(),
        state_bytes: 0,
        took_ms: 0,
        owned: BTreeMap::new(),
        checksums: BTreeMap::new(),
        sealed: false,
    }
}

#[test]
fn lanes_are_one_record_with_their_offsets_and_lags() {
    let (lanes, lags) = lane_fields(1_000, &[4, 0, 9], &[1_000, i64::MIN, 990, 400]);
    assert_eq!(lanes, vec![4, 0, 9, 0]);
    assert_eq!(lags, vec![0, -1, 10, 600]);
    let mut r = record("t/2", 50, 0, 1_000);
    (r.lanes, r.lane_lag) = (lanes, lags);
    assert_eq!(r.lane_newest(), vec![1_000, i64::MIN, 990, 400]);
    let keys = vec![
        ("events".to_string(), "t/1".to_string()),
        ("events".to_string(), "t/2".to_string()),
    ];
    let back = restored_partitions(&manifest_with(vec![r.clone()]), &keys);
    assert_eq!(back.len(), 1);
    assert_eq!(
        back[&1],
        RestoredPartition {
            resume: Resume {
                next_offset: 50,
                position: 0,
                incarnation: 0,
            },
            newest: 1_000,
            lanes: Some((vec![4, 0, 9, 0], vec![1_000, i64::MIN, 990, 400])),
        }
    );
    // 1,000 lanes in a few kilobytes
    r.lanes = (0..1_000).map(|i| 1_000_000 + i).collect();
    r.lane_lag = (0..1_000).map(|i| i % 200).collect();
    let bytes = serde_json::to_vec(&r).unwrap().len();
    assert!(bytes < 14_000, "{bytes} bytes");
}

#[test]
fn lanes_recorded_one_per_partition_key_in_format_1_are_folded() {
    let keys = vec![
        ("events".to_string(), "t/0".to_string()),
        ("events".to_string(), "t/1".to_string()),
    ];
    let m = manifest_with(vec![
        record("t/1/2", 90, 17, 500),
        record("t/1/0", 70, 5, 480),
        record("t/0", 12, 12, 7),
    ]);
    let back = restored_partitions(&m, &keys);
    assert_eq!(back[&0].resume, Resume::at(12));
    assert_eq!(back[&0].lanes, None);
    assert_eq!(
        back[&1],
        RestoredPartition {
            // the slowest lane's offset; every lane drops what it had read
            resume: Resume {
                next_offset: 70,
                position: 0,
                incarnation: 0,
            },
            newest: 500,
            lanes: Some((vec![5, 0, 17], vec![480, i64::MIN, 500])),
        }
    );
    // an ended partition's lanes all ended
    let m = manifest_with(vec![
        record("t/1/0", 70, 5, i64::MAX),
        record("t/1/1", 70, 6, i64::MAX),
    ]);
    assert_eq!(restored_partitions(&m, &keys)[&1].newest, i64::MAX);
}

#[test]
fn state_of_another_numbering_is_renumbered() {
    let p = PartialWindow {
        window_start: 0,
        keys: vec![
            Arc::new(arrow::array::UInt32Array::from(vec![0, 4, 8])),
            Arc::new(arrow::array::StringArray::from(vec!["a", "b", "c"])),
        ],
        states: vec![Arc::new(Int64Array::from(vec![1, 2, 3]))],
    };
    let map = HashMap::from([(4, 1), (8, 2)]);
    let out = renumber_partitions(vec![p], PartitionColumn::Key(0), &map).unwrap();
    let ids = out[0].keys[0]
        .as_any()
        .downcast_ref::<arrow::array::UInt32Array>()
        .unwrap();
    assert_eq!(ids.values().to_vec(), vec![0, 1, 2]);
    let p = out[0].clone();
    assert!(renumber_partitions(vec![p], PartitionColumn::Key(1), &map).is_err());
}
use arrow::array::{StringArray, UInt64Array};

fn partial(start: i64, keys: &[&str], counts: &[u64]) -> PartialWindow {
    PartialWindow {
        window_start: start,
        keys: vec![Arc::new(StringArray::from(keys.to_vec()))],
        states: vec![Arc::new(UInt64Array::from(counts.to_vec()))],
    }
}

#[test]
fn partials_round_trip_through_ipc() {
    let parts = vec![
        partial(0, &["a", "b"], &[1, 2]),
        partial(60_000, &["a"], &[3]),
    ];
    let bytes = encode_partials(&parts).unwrap();
    let back = decode_partials(&bytes).unwrap();
    assert_eq!(back.len(), 2);
    assert_eq!(back[0].window_start, 0);
    assert_eq!(back[1].window_start, 60_000);
    assert_eq!(back[0].keys[0].len(), 2);
    assert_eq!(back[1].states[0].len(), 1);
    assert!(decode_partials(&[]).unwrap().is_empty());
}

#[test]
fn a_file_url_reads_and_writes_the_folder_it_names() {
    let dir = std::env::temp_dir().join(format!("weir-chk-url-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = CheckpointStore::open(&format!("file://{}", dir.display())).unwrap();
    store.put("chk-0000000001/op-0.arrow", vec![7]).unwrap();
    assert_eq!(
        store.get("chk-0000000001/op-0.arrow").unwrap(),
        Some(vec![7])
    );
    assert_eq!(store.get("missing").unwrap(), None);
    assert_eq!(
        store.list().unwrap(),
        vec!["chk-0000000001/op-0.arrow".to_string()]
    );
    assert!(dir.join("chk-0000000001/op-0.arrow").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_local_store_keeps_the_newest_complete_checkpoints() {
    let dir = std::env::temp_dir().join(format!("weir-chk-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = CheckpointStore::open(dir.to_str().unwrap()).unwrap();
    assert!(store.latest().unwrap().is_none());
    for e in 1..=5u64 {
        store
            .put(&format!("chk-{e:010}/op-0.arrow"), vec![1, 2])
            .unwrap();
        if e != 5 {
            let m = Manifest {
                state_bytes: 2,
                ..test_manifest(e)
            };
            store
                .put(&manifest_name(e), serde_json::to_vec(&m).unwrap())
                .unwrap();
        }
    }
    // epoch 5 has no manifest: not complete
    assert_eq!(store.latest().unwrap().unwrap().epoch, 4);
    collect_garbage(&store, 2, false, &Default::default()).unwrap();
    assert_eq!(store.complete_epochs().unwrap(), vec![3, 4]);
    let names = store.list().unwrap();
    assert!(
        names.iter().all(|n| !n.starts_with("chk-0000000001")),
        "{names:?}"
    );
    assert!(names.contains(&"chk-0000000005/op-0.arrow".to_string()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_file_of_emitted_windows_outlives_its_checkpoint_while_a_kept_manifest_lists_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = CheckpointStore::open(dir.path().to_str().unwrap()).unwrap();
    let listed = RetainedFile {
        epoch: 2,
        file: "op-0-emitted.arrow".into(),
        newest_end: 120,
        sha256: String::new(),
    };
    let put_checkpoint = |e: u64, lists: bool| {
        store
            .put(&format!("chk-{e:010}/op-0.arrow"), vec![1, 2])
            .unwrap();
        let mut m = test_manifest(e);
        m.operators.push(OperatorRecord {
            name: "w".into(),
            file: None,
            rows: 0,
            flushed: 0,
            emitted: 0,
            retained: if lists {
                vec![listed.clone()]
            } else {
                Vec::new()
            },
            closed: Default::default(),
        });
        store
            .put(&manifest_name(e), encode_manifest(&m).unwrap())
            .unwrap();
    };
    put_checkpoint(1, false);
    store.put(&listed.name(), vec![7]).unwrap();
    for e in 2..=4 {
        put_checkpoint(e, true);
    }
    collect_garbage(&store, 2, false, &Default::default()).unwrap();
    assert_eq!(store.complete_epochs().unwrap(), vec![3, 4]);
    let names = store.list().unwrap();
    assert!(names.contains(&listed.name()), "{names:?}");
    assert!(
        !names.contains(&"chk-0000000002/op-0.arrow".to_string()),
        "its checkpoint's other files go: {names:?}"
    );
    // once no kept manifest lists it, it goes too
    put_checkpoint(5, false);
    put_checkpoint(6, false);
    collect_garbage(&store, 2, false, &Default::default()).unwrap();
    let names = store.list().unwrap();
    assert!(!names.contains(&listed.name()), "{names:?}");
    assert!(!dir.path().join("chk-0000000002").exists());
}

/// Partitions recorded under the keys an earlier version wrote get their keys now, all at
/// once: a former key that is another file's key now is renamed too (one at a time, that
/// file's record would look taken); a key recorded already is not overwritten.
#[test]
fn former_keys_are_renamed_all_at_once() {
    let mut m = manifest_with(vec![
        record("data/z.ndjson", 1, 10, 0),
        record("data/x/z.ndjson", 2, 20, 0),
        record("kept", 3, 30, 0),
        record("old", 4, 40, 0),
    ]);
    let renames = [
        ("data/x/z.ndjson".to_string(), "x/z.ndjson".to_string()),
        ("data/z.ndjson".to_string(), "data/x/z.ndjson".to_string()),
        ("old".to_string(), "kept".to_string()),
        ("missing".to_string(), "other".to_string()),
    ];
    assert_eq!(m.rename_partitions("events", &renames), 2);
    let at = |key: &str| m.resume("events", key).map(|r| r.next_offset);
    assert_eq!(at("x/z.ndjson"), Some(2));
    assert_eq!(at("data/x/z.ndjson"), Some(1));
    assert_eq!(at("kept"), Some(3));
    assert_eq!(at("old"), Some(4));
    assert_eq!(at("data/z.ndjson"), None);
    // two spellings of one file recorded: the first in `renames` gives the key
    let mut m = manifest_with(vec![record("./a", 1, 10, 0), record("/srv/a", 2, 20, 0)]);
    let renames = [
        ("/srv/a".to_string(), "a".to_string()),
        ("./a".to_string(), "a".to_string()),
    ];
    assert_eq!(m.rename_partitions("events", &renames), 1);
    assert_eq!(m.resume("events", "a").map(|r| r.next_offset), Some(2));
}
