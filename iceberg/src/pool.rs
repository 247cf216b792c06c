//! Iceberg sinks in a worker pool (`weir run --worker ID`, started N times).
//!
//! Every worker writes its own data files and commits each of its checkpoint epochs as one
//! snapshot whose summary carries `weir.worker` besides the pipeline, sink and epoch. The
//! commit is optimistic: weir writes the snapshot and swaps the SQL catalog's metadata
//! pointer only if no other commit came in between; on a conflict it loads the table again,
//! checks again that no snapshot has this worker's epoch (a restarted worker and the new
//! owner of a dead worker's partitions may both finish the same epoch), and tries again. So
//! an epoch is committed once, whoever commits it.
//!
//! A view's table keeps one row per key: the pool repartitions the input so that a key lives
//! in one partition, owned by one worker at a time, and each worker's epoch replaces only
//! the rows of the keys it upserted or deleted in that epoch (the files holding them are
//! rewritten without them, in the same `overwrite` snapshot that adds the new rows). A
//! reader (pyiceberg, DuckDB, Spark) sees plain data files, one row per key, with no merge
//! on read. A partition's new owner starts only after the previous owner's last checkpoint
//! is committed (it rolls it forward itself when that worker died), so a key's older row
//! never overwrites a newer one.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::BooleanArray;
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, SortField};
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{DataFile, DataFileFormat, Operation, PartitionKey};
use iceberg::table::Table;
use iceberg::writer::file_writer::location_generator::DefaultFileNameGenerator;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use iceberg::TableIdent;
use serde_json::Value;

use crate::catalog::Lake;
use crate::compact::{live_files, read_file};
use crate::sink::{
    epoch_committed, pending_of, summary_of, writer_builder, IcebergSinkConfig, Pending,
};
use crate::IcebergError;

/// How many times a commit that met a concurrent commit is tried again.
const ATTEMPTS: u32 = 100;

/// The first `n` (key) columns of `rows`.
pub(crate) fn key_columns(rows: &RecordBatch, n: usize) -> Result<RecordBatch, IcebergError> {
    rows.project(&(0..n).collect::<Vec<_>>())
        .map_err(IcebergError::writing("taking a view's key columns"))
}

/// The key columns of the rows of `rows` for which `deleted(row)`, if any.
pub(crate) fn deleted_keys(
    rows: &RecordBatch,
    n: usize,
    deleted: impl Fn(usize) -> bool,
) -> Result<Option<RecordBatch>, IcebergError> {
    let mask: BooleanArray = (0..rows.num_rows()).map(|r| Some(deleted(r))).collect();
    if mask.true_count() == 0 {
        return Ok(None);
    }
    Ok(Some(
        filter_record_batch(&key_columns(rows, n)?, &mask)
            .map_err(IcebergError::writing("taking a view's deleted keys"))?,
    ))
}

/// One batch of keys out of several of the same schema.
pub(crate) fn concat_keys(parts: &[RecordBatch]) -> Result<RecordBatch, IcebergError> {
    let first = parts
        .first()
        .ok_or_else(|| IcebergError::write_msg("no keys"))?;
    concat_batches(&first.schema(), parts).map_err(IcebergError::writing("joining a view's keys"))
}

/// Keys as the checkpoint keeps them: a JSON array of objects.
pub(crate) fn keys_to_json(keys: &RecordBatch) -> Result<Value, IcebergError> {
    if keys.num_rows() == 0 {
        return Ok(Value::Array(Vec::new()));
    }
    let mut writer = arrow_json::ArrayWriter::new(Vec::new());
    writer.write(keys).map_err(IcebergError::writing(
        "writing a view's keys to the checkpoint",
    ))?;
    writer.finish().map_err(IcebergError::writing(
        "writing a view's keys to the checkpoint",
    ))?;
    serde_json::from_slice(&writer.into_inner()).map_err(IcebergError::writing(
        "writing a view's keys to the checkpoint",
    ))
}

/// Keys read back from a checkpoint, in the types of `table`'s first `n` columns.
pub(crate) fn keys_from_json(
    table: &Table,
    n: usize,
    keys: &Value,
) -> Result<RecordBatch, IcebergError> {
    let full = schema_to_arrow_schema(table.metadata().current_schema()).map_err(
        IcebergError::writing("reading a view's keys from a checkpoint"),
    )?;
    if n == 0 || n > full.fields().len() {
        return Err(IcebergError::write_msg(format!(
            "a checkpoint names {n} key columns"
        )));
    }
    let schema = Arc::new(Schema::new(full.fields()[..n].to_vec()));
    let rows = keys
        .as_array()
        .ok_or_else(|| IcebergError::write_msg("a checkpoint's view keys are unreadable"))?;
    let mut decoder = arrow_json::ReaderBuilder::new(schema.clone())
        .with_batch_size(rows.len().max(1))
        .build_decoder()
        .map_err(IcebergError::writing(
            "reading a view's keys from a checkpoint",
        ))?;
    decoder.serialize(rows).map_err(IcebergError::writing(
        "reading a view's keys from a checkpoint",
    ))?;
    Ok(decoder
        .flush()
        .map_err(IcebergError::writing(
            "reading a view's keys from a checkpoint",
        ))?
        .unwrap_or_else(|| RecordBatch::new_empty(schema)))
}

/// A pause before trying a conflicting commit again: growing, with jitter (workers that
/// met each other should not meet again).
fn backoff(attempt: u32) -> Duration {
    let base = 20u64.saturating_mul(1 << attempt.min(6)).min(1000);
    let jitter = uuid::Uuid::new_v4().as_u64_pair().0 % base.max(1);
    Duration::from_millis(base / 2 + jitter)
}

/// Commits pool worker `worker`'s pending epoch `p` (a single process's: `None`, a window's
/// only) to the table `ident` of `config`'s sink, unless a snapshot already has it: an append of its files (a window), or the
/// replacement of its keys' rows (a view). A concurrent commit makes it load the table,
/// check again and try again.
pub(crate) async fn commit_epoch(
    lake: &Lake,
    ident: &TableIdent,
    config: &IcebergSinkConfig,
    worker: Option<&str>,
    p: Pending,
    summary: std::collections::HashMap<String, String>,
) -> Result<Table, IcebergError> {
    let mut attempt = 0;
    loop {
        let table = lake.load(ident).await?;
        if epoch_committed(&table, &config.pipeline, &config.sink, worker, p.epoch) {
            tracing::info!(sink = %config.sink, worker, epoch = p.epoch, "epoch already committed to Iceberg, not again");
            return Ok(table);
        }
        let result = match &p.keys {
            None => {
                lake.commit_append(&table, p.files.clone(), summary.clone())
                    .await
            }
            Some(keys) => {
                replace_keys(
                    lake,
                    &table,
                    p.files.clone(),
                    keys,
                    config.target_file_size,
                    summary.clone(),
                )
                .await
            }
        };
        match result {
            Err(IcebergError::Conflict(m)) if attempt < ATTEMPTS => {
                attempt += 1;
                tracing::debug!(sink = %config.sink, worker, epoch = p.epoch, attempt, "{m}; trying again");
                tokio::time::sleep(backoff(attempt)).await;
            }
            Ok(t) => {
                if attempt > 0 {
                    tracing::info!(sink = %config.sink, worker, epoch = p.epoch, conflicts = attempt, "committed after concurrent commits");
                }
                return Ok(t);
            }
            other => return other,
        }
    }
}

/// Commits `added` (a view's rows for `keys`) in place of the rows of `keys` in `table`:
/// the files holding some of them are rewritten without them, the others stay.
async fn replace_keys(
    lake: &Lake,
    table: &Table,
    added: Vec<DataFile>,
    keys: &RecordBatch,
    target_file_size: usize,
    summary: std::collections::HashMap<String, String>,
) -> Result<Table, IcebergError> {
    let meta = table.metadata();
    let schema = meta.current_schema().clone();
    let target = Arc::new(
        schema_to_arrow_schema(&schema).map_err(IcebergError::writing(
            "rewriting the files of a view's replaced keys",
        ))?,
    );
    let n = keys.num_columns();
    let fields = target.fields()[..n]
        .iter()
        .map(|f| SortField::new(f.data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields).map_err(IcebergError::writing(
        "rewriting the files of a view's replaced keys",
    ))?;
    let wanted = converter
        .convert_columns(keys.columns())
        .map_err(IcebergError::writing(
            "rewriting the files of a view's replaced keys",
        ))?;
    let wanted: HashSet<Box<[u8]>> = wanted.iter().map(|r| r.as_ref().into()).collect();
    let spec = meta.default_partition_spec().as_ref().clone();
    let names = DefaultFileNameGenerator::new(
        format!("weir-keys-{}", uuid::Uuid::new_v4()),
        None,
        DataFileFormat::Parquet,
    );
    let builder = writer_builder(table, target_file_size, &names).map_err(
        IcebergError::writing("rewriting the files of a view's replaced keys"),
    )?;
    let mut content = Vec::new();
    let (mut rewritten, mut replaced) = (0usize, 0usize);
    for live in live_files(table).await? {
        let f = live.file;
        if wanted.is_empty() {
            content.push(f);
            continue;
        }
        let mut kept = Vec::new();
        let mut dropped = 0;
        for batch in read_file(table, &f, &target).await? {
            let rows =
                converter
                    .convert_columns(&batch.columns()[..n])
                    .map_err(IcebergError::writing(
                        "rewriting the files of a view's replaced keys",
                    ))?;
            let keep: BooleanArray = rows
                .iter()
                .map(|r| Some(!wanted.contains(r.as_ref())))
                .collect();
            dropped += keep.false_count();
            kept.push(
                filter_record_batch(&batch, &keep).map_err(IcebergError::writing(
                    "rewriting the files of a view's replaced keys",
                ))?,
            );
        }
        if dropped == 0 {
            content.push(f);
            continue;
        }
        rewritten += 1;
        replaced += dropped;
        if kept.iter().all(|b| b.num_rows() == 0) {
            continue;
        }
        let key = (!spec.is_unpartitioned())
            .then(|| PartitionKey::new(spec.clone(), schema.clone(), f.partition().clone()));
        let mut writer = builder.build(key).await.map_err(IcebergError::writing(
            "rewriting the files of a view's replaced keys",
        ))?;
        for b in kept.into_iter().filter(|b| b.num_rows() > 0) {
            writer.write(b).await.map_err(IcebergError::writing(
                "rewriting the files of a view's replaced keys",
            ))?;
        }
        content.extend(writer.close().await.map_err(IcebergError::writing(
            "rewriting the files of a view's replaced keys",
        ))?);
    }
    tracing::debug!(
        table = %table.identifier(),
        keys = keys.num_rows(),
        rewritten_files = rewritten,
        replaced_rows = replaced,
        "replacing a pool worker's view keys"
    );
    content.extend(added);
    lake.commit_content(table, content, Operation::Overwrite, summary)
        .await
}

/// Finishes the commits of checkpoint `epoch` of pool worker `worker` (which stopped before
/// it recorded them) in the table of `config`'s sink: `info` is the sink's entry in that
/// checkpoint's manifest. Epochs a snapshot already has are not committed again. Returns how
/// many pending epochs it looked at.
pub fn roll_forward(
    config: &IcebergSinkConfig,
    worker: &str,
    epoch: u64,
    info: &Value,
) -> Result<usize, IcebergError> {
    let pending = info
        .get("pending")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if pending.is_empty() {
        return Ok(0);
    }
    let ident = config.ident()?;
    let runtime = weir_engine::io::runtime()?;
    runtime.block_on(async {
        let lake = config.open_lake(runtime).await?;
        let table = lake.load(&ident).await?;
        let mut n = 0;
        for v in &pending {
            let p = pending_of(&table, v)?;
            if p.epoch > epoch {
                continue;
            }
            let summary = summary_of(config, Some(worker), Some(p.epoch));
            commit_epoch(&lake, &ident, config, Some(worker), p, summary).await?;
            n += 1;
        }
        Ok(n)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{CatalogUri, PartitionBy};
    use crate::sink::IcebergSink;
    use arrow::array::{Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, SchemaRef};
    use weir_engine::job::{Committable, Sink};

    fn config(dir: &Path, table: &str, worker: &str) -> IcebergSinkConfig {
        IcebergSinkConfig {
            pipeline: "p".into(),
            sink: "lake".into(),
            output: "o".into(),
            catalog: CatalogUri::Sqlite(dir.join("catalog.db").to_string_lossy().into()),
            catalog_name: "weir".into(),
            warehouse: dir.to_string_lossy().into(),
            table: table.into(),
            partition_by: Some(PartitionBy::None),
            target_file_size: 1 << 20,
            catalog_properties: Default::default(),
            replace_windows: None,
            worker: Some(worker.into()),
        }
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
            Field::new("op", DataType::Utf8, false),
        ]))
    }

    fn rows(keys: &[&str], values: &[i64], ops: &[&str]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(Int64Array::from(values.to_vec())),
                Arc::new(StringArray::from(ops.to_vec())),
            ],
        )
        .unwrap()
    }

    /// (worker, epoch) of the snapshots and the rows (k, v) of a table, sorted.
    type Read = (Vec<(String, u64)>, Vec<(String, i64)>);

    fn read(dir: &Path, table: &str) -> Read {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let c = config(dir, table, "reader");
        rt.block_on(async {
            use futures::TryStreamExt;
            let lake = c.open_lake(&rt).await.unwrap();
            let t = lake.load(&c.ident().unwrap()).await.unwrap();
            let mut epochs: Vec<(String, u64)> = t
                .metadata()
                .snapshots()
                .filter_map(|s| {
                    let p = &s.summary().additional_properties;
                    Some((
                        p.get("weir.worker")?.clone(),
                        p.get("weir.epoch")?.parse().ok()?,
                    ))
                })
                .collect();
            epochs.sort();
            let batches: Vec<RecordBatch> = t
                .scan()
                .select_all()
                .build()
                .unwrap()
                .to_arrow()
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            let mut out = Vec::new();
            for b in batches {
                let k = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
                let v = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
                for i in 0..b.num_rows() {
                    out.push((k.value(i).to_string(), v.value(i)));
                }
            }
            out.sort();
            (epochs, out)
        })
    }

    use std::path::Path;

    /// A dead worker's epoch finished by two others at once, and by the worker itself: one
    /// snapshot.
    #[test]
    fn an_epoch_finished_by_several_workers_at_once_is_committed_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let c = config(d, "ns.windows", "w1");
        let mut sink = IcebergSink::open(c.clone(), &schema(), None).unwrap();
        sink.recover(None).unwrap();
        sink.write(&rows(&["a", "b"], &[1, 2], &["x", "x"]))
            .unwrap();
        let info = sink.pre_commit(1).unwrap();
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (c, info) = (c.clone(), info.clone());
                std::thread::spawn(move || roll_forward(&c, "w1", 1, &info).unwrap())
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), 1);
        }
        sink.commit(1).unwrap();
        // the compare-and-swap: a commit over a table that changed since it was read fails
        let rt = tokio::runtime::Runtime::new().unwrap();
        let conflict = rt.block_on(async {
            let lake = c.open_lake(&rt).await.unwrap();
            let ident = c.ident().unwrap();
            let stale = lake.load(&ident).await.unwrap();
            let fresh = lake.load(&ident).await.unwrap();
            lake.commit_append(&fresh, Vec::new(), Default::default())
                .await
                .unwrap();
            lake.commit_append(&stale, Vec::new(), Default::default())
                .await
        });
        assert!(
            matches!(conflict, Err(IcebergError::Conflict(_))),
            "{conflict:?}"
        );
        let (epochs, got) = read(d, "ns.windows");
        assert_eq!(epochs, vec![("w1".to_string(), 1)]);
        assert_eq!(got, vec![("a".into(), 1), ("b".into(), 2)]);
        // a later epoch of the same worker appends; another worker's epoch 1 is its own
        sink.write(&rows(&["c"], &[3], &["x"])).unwrap();
        sink.pre_commit(2).unwrap();
        sink.commit(2).unwrap();
        let mut other = IcebergSink::open(config(d, "ns.windows", "w2"), &schema(), None).unwrap();
        other.recover(None).unwrap();
        other.write(&rows(&["d"], &[4], &["x"])).unwrap();
        other.pre_commit(1).unwrap();
        other.commit(1).unwrap();
        let (epochs, got) = read(d, "ns.windows");
        assert_eq!(epochs.len(), 3, "{epochs:?}");
        assert_eq!(got.len(), 4, "{got:?}");
    }

    /// Snapshots expired after a worker (or a single process) committed its last epoch and
    /// another writer committed (`weir compact`, routine maintenance while it was stopped): a
    /// restore from its checkpoint, and a pool adopter rolling the same epochs forward, commit
    /// nothing again (the table's committed mark says they are in), a window's or a view's;
    /// a checkpoint older than the mark is refused.
    #[test]
    fn an_epoch_whose_snapshot_expired_is_not_committed_again() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let rt = tokio::runtime::Runtime::new().unwrap();
        for worker in [Some("w1"), None] {
            for (name, view) in [("view", Some(1)), ("windows", None)] {
                let table = format!("ns.expired_{name}_{}", worker.unwrap_or("single"));
                let c = IcebergSinkConfig {
                    worker: worker.map(String::from),
                    ..config(d, &table, "w1")
                };
                let case = table.clone();
                let mut w1 = IcebergSink::open(c.clone(), &schema(), view).unwrap();
                w1.recover(None).unwrap();
                w1.write(&rows(&["a", "b"], &[1, 2], &["u", "u"])).unwrap();
                let first = w1.pre_commit(1).unwrap();
                w1.commit(1).unwrap();
                // (epoch 2 changes `a`: epoch 1 made again would put it back, for a view too)
                w1.write(&rows(&["c", "a"], &[3, 5], &["u", "u"])).unwrap();
                let second = w1.pre_commit(2).unwrap();
                w1.commit(2).unwrap();
                // another writer commits after it; then every snapshot but that one expires
                rt.block_on(async {
                    let lake = c.open_lake(&rt).await.unwrap();
                    let t = lake.load(&c.ident().unwrap()).await.unwrap();
                    let t = lake
                        .commit_append(&t, Vec::new(), Default::default())
                        .await
                        .unwrap();
                    let t = lake.expire_all_but_current(&t).await;
                    assert_eq!(t.metadata().snapshots().count(), 1);
                });
                let before = read(d, &table).1;
                let expected = if view.is_some() { 3 } else { 4 };
                assert_eq!(before.len(), expected, "{case}: {before:?}");
                let snapshots = || {
                    rt.block_on(async {
                        let lake = c.open_lake(&rt).await.unwrap();
                        let t = lake.load(&c.ident().unwrap()).await.unwrap();
                        t.metadata().snapshots().count()
                    })
                };
                // it starts again from its last checkpoint, which lists epoch 2 as pending
                let mut again = IcebergSink::open(c.clone(), &schema(), view).unwrap();
                again.recover(Some((2, &second))).unwrap();
                assert_eq!(read(d, &table).1, before, "{case}: after the restore");
                assert_eq!(snapshots(), 1, "{case}: a snapshot committed again");
                if let Some(w) = worker {
                    // an adopter finishing its epochs
                    roll_forward(&c, w, 2, &second).unwrap();
                    roll_forward(&c, w, 1, &first).unwrap();
                    assert_eq!(read(d, &table).1, before, "{case}: after the roll-forward");
                    assert_eq!(snapshots(), 1, "{case}: a snapshot rolled forward again");
                }
                if view.is_none() || worker.is_some() {
                    // a checkpoint older than the table's epochs of this writer: refused
                    let mut older = IcebergSink::open(c.clone(), &schema(), view).unwrap();
                    let e = older.recover(Some((1, &first))).unwrap_err();
                    let e = weir_engine::error::chain(&e).to_string();
                    assert!(e.contains("already has epoch 2"), "{case}: {e}");
                }
            }
        }
    }

    /// A single process's view: a checkpoint's pending epoch committed by the restore of a
    /// run that then died, and the same checkpoint restored again by another run: the epoch
    /// is not committed a second time (the first restore's commit is the history of the run
    /// that wrote the checkpoint, not its own).
    #[test]
    fn a_pending_view_epoch_committed_by_one_restore_is_not_committed_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let c = IcebergSinkConfig {
            worker: None,
            ..config(d, "ns.restored_twice", "w1")
        };
        let snapshots = || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let lake = c.open_lake(&rt).await.unwrap();
                let t = lake.load(&c.ident().unwrap()).await.unwrap();
                t.metadata().snapshots().count()
            })
        };
        // the run that writes checkpoint 1 dies before its commit
        let mut first = IcebergSink::open(c.clone(), &schema(), Some(1)).unwrap();
        first.recover(None).unwrap();
        first
            .write(&rows(&["a", "b"], &[1, 2], &["u", "u"]))
            .unwrap();
        let info = first.pre_commit(1).unwrap();
        drop(first);
        // a run restores it, commits its pending epoch, and dies
        let mut second = IcebergSink::open(c.clone(), &schema(), Some(1)).unwrap();
        second.recover(Some((1, &info))).unwrap();
        assert_eq!(snapshots(), 1);
        drop(second);
        // another run restores the same checkpoint
        let mut third = IcebergSink::open(c.clone(), &schema(), Some(1)).unwrap();
        third.recover(Some((1, &info))).unwrap();
        assert_eq!(snapshots(), 1, "epoch 1 committed again");
        assert_eq!(
            read(d, "ns.restored_twice").1,
            vec![("a".into(), 1), ("b".into(), 2)]
        );
    }

    /// A data file the table lists, deleted by hand (or as an orphan by mistake): a pool
    /// view's next commit, which reads it, fails the run with the missing file named instead
    /// of retrying for ever with the checkpoints waiting.
    #[test]
    fn a_missing_data_file_fails_the_commit_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut w1 = IcebergSink::open(config(d, "ns.broken", "w1"), &schema(), Some(1)).unwrap();
        w1.recover(None).unwrap();
        w1.write(&rows(&["a", "b"], &[1, 2], &["u", "u"])).unwrap();
        w1.pre_commit(1).unwrap();
        w1.commit(1).unwrap();
        let mut parquet = Vec::new();
        let mut folders = vec![d.to_path_buf()];
        while let Some(f) = folders.pop() {
            for e in std::fs::read_dir(&f).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    folders.push(p);
                } else if p.extension().is_some_and(|x| x == "parquet") {
                    parquet.push(p);
                }
            }
        }
        assert_eq!(parquet.len(), 1, "{parquet:?}");
        std::fs::remove_file(&parquet[0]).unwrap();
        w1.write(&rows(&["a"], &[5], &["u"])).unwrap();
        w1.pre_commit(2).unwrap();
        let e = w1.commit(2).unwrap_err();
        assert_eq!(e.kind(), weir_engine::error::ErrorKind::Fatal, "{e:?}");
        let text = weir_engine::error::chain(&e).to_string();
        let name = parquet[0]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        assert!(text.contains(&name), "{text}");
    }

    /// Two workers' views in one table: each epoch replaces only its keys; a key moved to
    /// another worker is replaced there; deletes remove the key.
    #[test]
    fn pool_views_keep_one_row_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let open = |w: &str| {
            let mut s = IcebergSink::open(config(d, "ns.view", w), &schema(), Some(1)).unwrap();
            s.recover(None).unwrap();
            s
        };
        let (mut w1, mut w2) = (open("w1"), open("w2"));
        let step = |s: &mut IcebergSink, epoch: u64, b: RecordBatch| {
            s.write(&b).unwrap();
            s.pre_commit(epoch).unwrap();
            s.commit(epoch).unwrap();
        };
        step(
            &mut w1,
            1,
            rows(&["a", "b", "a"], &[1, 1, 2], &["u", "u", "u"]),
        );
        step(&mut w2, 1, rows(&["c", "d"], &[1, 1], &["u", "u"]));
        assert_eq!(
            read(d, "ns.view").1,
            vec![
                ("a".into(), 2),
                ("b".into(), 1),
                ("c".into(), 1),
                ("d".into(), 1)
            ]
        );
        // w1: b changes and a is deleted; w2 takes key a over later and writes it again
        step(&mut w1, 2, rows(&["b", "a"], &[5, 0], &["u", "delete"]));
        step(&mut w2, 2, rows(&["a", "d"], &[7, 8], &["u", "u"]));
        // w2 deletes c, which it never rewrote since epoch 1
        step(&mut w2, 3, rows(&["c"], &[0], &["delete"]));
        let (epochs, got) = read(d, "ns.view");
        assert_eq!(got, vec![("a".into(), 7), ("b".into(), 5), ("d".into(), 8)]);
        assert_eq!(epochs.len(), 5, "{epochs:?}");
        // epoch 3 of w2 written again (an adopter rolling forward a manifest of it) is not
        // committed again
        let info = {
            let mut w = IcebergSink::open(config(d, "ns.view", "w2"), &schema(), Some(1)).unwrap();
            w.write(&rows(&["d"], &[9], &["u"])).unwrap();
            w.pre_commit(3).unwrap()
        };
        assert_eq!(
            roll_forward(&config(d, "ns.view", "w2"), "w2", 3, &info).unwrap(),
            1
        );
        assert_eq!(read(d, "ns.view").1.len(), 3);
        // keys survive the checkpoint's JSON
        let keys = key_columns(&rows(&["x", "y"], &[1, 2], &["u", "u"]), 1).unwrap();
        let json = keys_to_json(&keys).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let c = config(d, "ns.view", "w2");
        let table = rt.block_on(async {
            let lake = c.open_lake(&rt).await.unwrap();
            lake.load(&c.ident().unwrap()).await.unwrap()
        });
        let back = keys_from_json(&table, 1, &json).unwrap();
        assert_eq!(back.column(0).len(), 2);
        assert_eq!(
            back.column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .value(1),
            "y"
        );
    }

    /// The cost of a pool view's epoch over a large table (every live file is read):
    /// `cargo test -p weir-iceberg --release --lib pool_view_epoch_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn pool_view_epoch_cost() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut w = IcebergSink::open(config(d, "ns.big", "w1"), &schema(), Some(1)).unwrap();
        w.recover(None).unwrap();
        let n = 200_000usize;
        let keys: Vec<String> = (0..n).map(|i| format!("key-{i:07}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let values: Vec<i64> = (0..n as i64).collect();
        let ops = vec!["u"; n];
        let started = std::time::Instant::now();
        w.write(&rows(&refs, &values, &ops)).unwrap();
        w.pre_commit(1).unwrap();
        w.commit(1).unwrap();
        eprintln!("epoch 1: {n} keys in {} ms", started.elapsed().as_millis());
        for (epoch, changed) in [(2u64, 1_000usize), (3, 10_000), (4, 1_000)] {
            let step = n / changed;
            let some: Vec<&str> = refs.iter().step_by(step).copied().collect();
            let vals = vec![epoch as i64; some.len()];
            let ops = vec!["u"; some.len()];
            let started = std::time::Instant::now();
            w.write(&rows(&some, &vals, &ops)).unwrap();
            w.pre_commit(epoch).unwrap();
            w.commit(epoch).unwrap();
            eprintln!(
                "epoch {epoch}: {} keys changed in a {n}-key table: {} ms",
                some.len(),
                started.elapsed().as_millis()
            );
        }
        assert_eq!(read(d, "ns.big").1.len(), n);
    }
}
