//! Small-file compaction: a checkpointed sink commits a few small files per checkpoint and
//! partition (every 10 s, that is thousands a day); `weir compact` rewrites the small files
//! of each partition that stopped receiving files into as few files as the target size
//! allows, in one `replace` snapshot (the same rows; readers see no change). It can run while
//! the pipeline writes: if the pipeline commits meanwhile, the swap is made again on the new
//! snapshot ([`swap`]); files written by a pass given up are removed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{DataContentType, DataFile, DataFileFormat, Operation, PartitionKey, Struct};
use iceberg::table::Table;
use iceberg::writer::file_writer::location_generator::DefaultFileNameGenerator;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::catalog::Lake;
use crate::sink::{writer_builder, IcebergSinkConfig};
use crate::IcebergError;

/// What `weir compact` rewrites.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// A partition is compacted when it holds at least this many small files.
    pub min_files: usize,
    /// ... and none of its files is younger than this (its window may still get rows).
    pub min_age_ms: i64,
}

impl Default for CompactOptions {
    fn default() -> Self {
        CompactOptions {
            min_files: 2,
            min_age_ms: 10 * 60 * 1000,
        }
    }
}

/// What a compaction did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CompactReport {
    pub partitions: usize,
    pub files_before: usize,
    pub files_after: usize,
    pub rows: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Data files of the table after it (all partitions).
    pub table_files: usize,
}

/// A live data file of the current snapshot and when it was added.
pub(crate) struct Live {
    pub file: DataFile,
    pub added_ms: i64,
}

pub(crate) async fn live_files(table: &Table) -> Result<Vec<Live>, IcebergError> {
    let meta = table.metadata();
    let Some(snapshot) = meta.current_snapshot() else {
        return Ok(Vec::new());
    };
    let wr = IcebergError::writing::<iceberg::Error>;
    let list = table
        .manifest_list_reader(snapshot)
        .load()
        .await
        .map_err(wr("reading the table's manifest list"))?;
    let mut out = Vec::new();
    for m in list.entries() {
        let manifest = m
            .load_manifest(table.file_io())
            .await
            .map_err(wr("reading the table's manifests"))?;
        for e in manifest.entries() {
            if !e.is_alive() {
                continue;
            }
            if e.content_type() != DataContentType::Data {
                return Err(IcebergError::config(format!(
                    "table {} has delete files, which weir does not compact",
                    table.identifier()
                )));
            }
            let added_ms = e
                .snapshot_id()
                .and_then(|id| meta.snapshot_by_id(id))
                .map_or(i64::MAX, |s| s.timestamp_ms());
            out.push(Live {
                file: e.data_file().clone(),
                added_ms,
            });
        }
    }
    Ok(out)
}

/// Rows of a data file, in the table's schema now (`target`, see [`in_table_schema`]).
pub(crate) async fn read_file(
    table: &Table,
    file: &DataFile,
    target: &arrow::datatypes::SchemaRef,
) -> Result<Vec<RecordBatch>, IcebergError> {
    let what = || format!("reading {}", file.file_path());
    let bytes = table
        .file_io()
        .new_input(file.file_path())
        .map_err(|e| IcebergError::write(what(), e))?
        .read()
        .await
        .map_err(|e| IcebergError::write(what(), e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.with_batch_size(64 * 1024).build())
        .map_err(|e| IcebergError::write(what(), e))?;
    reader
        .map(|b| {
            let b = b.map_err(|e| IcebergError::write(what(), e))?;
            in_table_schema(&b, target).map_err(|e| IcebergError::write(what(), e))
        })
        .collect()
}

/// Rows of a data file written under an earlier schema of the table, in its schema now
/// (`target`, with the table's field ids): each column found by its field id (or, in a
/// file without ids, its name), a column added since as nulls, a promoted type (`int` to
/// `long`, `float` to `double`) cast.
pub(crate) fn in_table_schema(
    batch: &RecordBatch,
    target: &arrow::datatypes::SchemaRef,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    use parquet::arrow::PARQUET_FIELD_ID_META_KEY;
    let id = |f: &arrow::datatypes::Field| f.metadata().get(PARQUET_FIELD_ID_META_KEY).cloned();
    let schema = batch.schema();
    let mut columns = Vec::with_capacity(target.fields().len());
    for t in target.fields() {
        let found = match id(t) {
            Some(want) if schema.fields().iter().any(|f| id(f).is_some()) => schema
                .fields()
                .iter()
                .position(|f| id(f).as_deref() == Some(want.as_str())),
            _ => schema.index_of(t.name()).ok(),
        };
        let column = match found.map(|i| batch.column(i)) {
            Some(c) if c.data_type() == t.data_type() => c.clone(),
            // a promotion (`int` to `long`, `float` to `double`) never fails; any other cast
            // that would lose a value is an error, not a null
            Some(c) => arrow::compute::cast_with_options(
                c,
                t.data_type(),
                &arrow::compute::CastOptions {
                    safe: false,
                    ..Default::default()
                },
            )?,
            None if t.is_nullable() => {
                arrow::array::new_null_array(t.data_type(), batch.num_rows())
            }
            None => {
                return Err(arrow::error::ArrowError::SchemaError(format!(
                    "column `{}` is required by the table but missing from a file written \
                     before it was added",
                    t.name()
                )))
            }
        };
        columns.push(column);
    }
    RecordBatch::try_new_with_options(
        target.clone(),
        columns,
        &arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
}

/// The files a pass wrote in place of the small files it read.
pub(crate) struct Rewritten {
    /// The paths of the files read (each must still be live when the swap commits).
    inputs: HashSet<String>,
    /// The files written.
    added: Vec<DataFile>,
    /// The partition spec they were written for.
    spec_id: i32,
    report: CompactReport,
}

/// Rewrites the qualifying partitions of the table's current snapshot (nothing committed).
pub(crate) async fn rewrite(
    lake: &Lake,
    config: &IcebergSinkConfig,
    options: &CompactOptions,
    now_ms: i64,
) -> Result<Rewritten, IcebergError> {
    let table = lake.load(&config.ident()?).await?;
    let files = live_files(&table).await?;
    let live_count = files.len();
    let small = config.target_file_size as u64 * 3 / 4;
    let mut groups: HashMap<Struct, Vec<Live>> = HashMap::new();
    for f in files {
        if f.file.file_format() == DataFileFormat::Parquet && f.file.file_size_in_bytes() < small {
            groups
                .entry(f.file.partition().clone())
                .or_default()
                .push(f);
        }
    }
    let meta = table.metadata();
    let schema = meta.current_schema().clone();
    let target = Arc::new(schema_to_arrow_schema(&schema).map_err(|e| {
        IcebergError::schema_caused("the table's schema has no Arrow equivalent", e)
    })?);
    let spec = meta.default_partition_spec().as_ref().clone();
    let names = DefaultFileNameGenerator::new(
        format!("weir-compact-{}", uuid::Uuid::new_v4()),
        None,
        DataFileFormat::Parquet,
    );
    let builder = writer_builder(&table, config.target_file_size, &names)
        .map_err(IcebergError::writing("writing compacted files"))?;
    let mut done = Rewritten {
        inputs: HashSet::new(),
        added: Vec::new(),
        spec_id: spec.spec_id(),
        report: CompactReport {
            table_files: live_count,
            ..CompactReport::default()
        },
    };
    for (partition, group) in groups {
        let settled = group
            .iter()
            .all(|f| now_ms.saturating_sub(f.added_ms) >= options.min_age_ms);
        if group.len() < options.min_files.max(2) || !settled {
            continue;
        }
        let key = (!spec.is_unpartitioned())
            .then(|| PartitionKey::new(spec.clone(), schema.clone(), partition.clone()));
        let written = match write_group(&table, &builder, key, &group, &target).await {
            Ok(written) => written,
            Err(e) => {
                delete_files(&table, &done.added).await;
                return Err(e);
            }
        };
        let report = &mut done.report;
        for f in &group {
            report.bytes_before += f.file.file_size_in_bytes();
            report.rows += f.file.record_count();
            done.inputs.insert(f.file.file_path().to_string());
        }
        report.partitions += 1;
        report.files_before += group.len();
        report.files_after += written.len();
        report.bytes_after += written.iter().map(|f| f.file_size_in_bytes()).sum::<u64>();
        done.added.extend(written);
    }
    let written_rows: u64 = done.added.iter().map(|f| f.record_count()).sum();
    if written_rows != done.report.rows {
        delete_files(&table, &done.added).await;
        return Err(IcebergError::write_msg(format!(
            "compaction read {} rows but wrote {written_rows}; nothing was committed",
            done.report.rows
        )));
    }
    Ok(done)
}

/// The files of one partition's small files rewritten by `builder`.
async fn write_group<B: IcebergWriterBuilder>(
    table: &Table,
    builder: &B,
    key: Option<PartitionKey>,
    group: &[Live],
    target: &arrow::datatypes::SchemaRef,
) -> Result<Vec<DataFile>, IcebergError> {
    let mut writer = builder
        .build(key)
        .await
        .map_err(IcebergError::writing("writing compacted files"))?;
    for f in group {
        for batch in read_file(table, &f.file, target).await? {
            writer
                .write(batch)
                .await
                .map_err(IcebergError::writing("writing compacted files"))?;
        }
    }
    writer
        .close()
        .await
        .map_err(IcebergError::writing("writing compacted files"))
}

/// Removes files this process wrote and no snapshot references (a compaction given up),
/// logging what it could not remove.
async fn delete_files(table: &Table, files: &[DataFile]) {
    for f in files {
        if let Err(e) = table.file_io().delete(f.file_path()).await {
            tracing::warn!(
                file = f.file_path(),
                "could not remove a compacted file never committed: {e}"
            );
        }
    }
}

/// How many times a pass's swap is made again on a newer snapshot (the pipeline committed
/// meanwhile) before the pass is given up.
const SWAP_ATTEMPTS: usize = 20;

/// Commits `done` in one `replace` snapshot: the table's live files then, less the files
/// read, plus the files written. A pipeline committing meanwhile fails the swap; it is made
/// again on the new snapshot as long as every file read is still live there (only appended
/// to), without rewriting anything. Else (the files were replaced, or too many attempts)
/// the written files are removed and [`IcebergError::Conflict`] returned: the caller starts
/// a new pass.
pub(crate) async fn swap(
    lake: &Lake,
    config: &IcebergSinkConfig,
    done: Rewritten,
) -> Result<CompactReport, IcebergError> {
    let mut report = done.report;
    let ident = config.ident()?;
    let mut attempt = 0;
    loop {
        let table = lake.load(&ident).await?;
        let live = match live_files(&table).await {
            Ok(live) => live,
            Err(e) => {
                delete_files(&table, &done.added).await;
                return Err(e);
            }
        };
        let still = live
            .iter()
            .filter(|f| done.inputs.contains(f.file.file_path()))
            .count();
        let same_spec = table.metadata().default_partition_spec_id() == done.spec_id;
        if still != done.inputs.len() || !same_spec || attempt == SWAP_ATTEMPTS {
            delete_files(&table, &done.added).await;
            return Err(IcebergError::Conflict(format!(
                "table {} changed under the compaction (its small files were rewritten, \
                 its partitioning changed, or {attempt} swaps failed)",
                table.identifier()
            )));
        }
        let mut content: Vec<DataFile> = live
            .into_iter()
            .map(|f| f.file)
            .filter(|f| !done.inputs.contains(f.file_path()))
            .collect();
        content.extend(done.added.iter().cloned());
        report.table_files = content.len();
        let summary = HashMap::from([
            ("weir.compaction".to_string(), "true".to_string()),
            ("weir.pipeline".to_string(), config.pipeline.clone()),
            ("weir.sink".to_string(), config.sink.clone()),
        ]);
        match lake
            .commit_content(&table, content, Operation::Replace, summary)
            .await
        {
            Ok(_) => return Ok(report),
            Err(IcebergError::Conflict(m)) => {
                attempt += 1;
                tracing::info!(table = %config.table, "{m}; swapping the compacted files in again");
            }
            Err(e) => {
                // (a commit whose answer was lost may have landed: the files stay)
                return Err(e);
            }
        }
    }
}

/// One pass: rewrites the qualifying partitions of the current snapshot and swaps them in.
async fn compact_once(
    lake: &Lake,
    config: &IcebergSinkConfig,
    options: &CompactOptions,
    now_ms: i64,
) -> Result<CompactReport, IcebergError> {
    let done = rewrite(lake, config, options, now_ms).await?;
    if done.report.partitions == 0 {
        return Ok(done.report);
    }
    swap(lake, config, done).await
}

/// Compacts the table of an Iceberg sink (see the module docs); retries when the pipeline
/// commits meanwhile.
pub fn compact(
    config: &IcebergSinkConfig,
    options: &CompactOptions,
) -> Result<CompactReport, IcebergError> {
    let runtime =
        weir_engine::io::runtime().map_err(IcebergError::writing("writing compacted files"))?;
    runtime.block_on(async {
        let lake = config.open_lake(runtime).await?;
        let mut attempts = 0;
        loop {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            match compact_once(&lake, config, options, now_ms).await {
                Err(IcebergError::Conflict(m)) if attempts < 5 => {
                    attempts += 1;
                    tracing::info!(table = %config.table, "{m}; compacting again");
                }
                other => return other,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, Int32Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::arrow::PARQUET_FIELD_ID_META_KEY;

    fn field(name: &str, t: DataType, id: i32, nullable: bool) -> Field {
        Field::new(name, t, nullable).with_metadata(HashMap::from([(
            PARQUET_FIELD_ID_META_KEY.to_string(),
            id.to_string(),
        )]))
    }

    /// An Iceberg sink of pipeline `p` writing `ns.t` in `dir` (SQLite catalog).
    fn config(dir: &std::path::Path) -> IcebergSinkConfig {
        IcebergSinkConfig {
            pipeline: "p".into(),
            sink: "lake".into(),
            output: "o".into(),
            catalog: crate::catalog::CatalogUri::Sqlite(
                dir.join("catalog.db").to_string_lossy().into(),
            ),
            catalog_name: "weir".into(),
            warehouse: dir.to_string_lossy().into(),
            table: "ns.t".into(),
            partition_by: Some(crate::catalog::PartitionBy::None),
            target_file_size: 1 << 20,
            catalog_properties: Default::default(),
            replace_windows: None,
            worker: None,
        }
    }

    /// Commits epoch `epoch` of rows `(k, v)` through `sink`: one small file.
    fn commit_epoch(sink: &mut crate::sink::IcebergSink, epoch: u64, k: &str, v: i64) {
        use weir_engine::job::{Committable, Sink};
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![k])),
                Arc::new(Int64Array::from(vec![v])),
            ],
        )
        .unwrap();
        sink.write(&batch).unwrap();
        sink.pre_commit(epoch).unwrap();
        sink.commit(epoch).unwrap();
    }

    /// The live files of the table and the sum of its `v`.
    async fn table_now(lake: &Lake, c: &IcebergSinkConfig) -> (Vec<String>, i64) {
        let table = lake.load(&c.ident().unwrap()).await.unwrap();
        let target = Arc::new(schema_to_arrow_schema(table.metadata().current_schema()).unwrap());
        let mut files = Vec::new();
        let mut sum = 0;
        for f in live_files(&table).await.unwrap() {
            for b in read_file(&table, &f.file, &target).await.unwrap() {
                let v = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
                sum += v.values().iter().sum::<i64>();
            }
            files.push(f.file.file_path().to_string());
        }
        files.sort();
        (files, sum)
    }

    /// A pipeline committing between a compaction's rewrite and its swap does not make the
    /// compaction start over: the swap is made again on the new snapshot, and the new file
    /// stays. A compaction whose input files were replaced meanwhile gives up and removes the
    /// files it wrote (none is left as an orphan).
    #[test]
    fn a_compaction_swaps_in_on_a_newer_snapshot_and_leaves_no_orphans() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("v", DataType::Int64, false),
        ]));
        let mut sink = crate::sink::IcebergSink::open(c.clone(), &schema, None).unwrap();
        {
            use weir_engine::job::Committable;
            sink.recover(None).unwrap();
        }
        for (e, v) in [(1, 1), (2, 10), (3, 100)] {
            commit_epoch(&mut sink, e, "a", v);
        }
        let options = CompactOptions {
            min_files: 2,
            min_age_ms: 0,
        };
        let rt = weir_engine::io::runtime().unwrap();
        let lake = rt.block_on(c.open_lake(rt)).unwrap();
        let (before, sum) = rt.block_on(table_now(&lake, &c));
        assert_eq!((before.len(), sum), (3, 111));
        let done = rt.block_on(rewrite(&lake, &c, &options, i64::MAX)).unwrap();
        assert_eq!(done.report.files_before, 3);
        let written: Vec<String> = done.added.iter().map(|f| f.file_path().into()).collect();
        // the pipeline commits meanwhile
        commit_epoch(&mut sink, 4, "b", 1000);
        let report = rt.block_on(swap(&lake, &c, done)).unwrap();
        assert_eq!((report.files_before, report.files_after), (3, 1));
        let (after, sum) = rt.block_on(table_now(&lake, &c));
        assert_eq!(
            sum, 1111,
            "the rows compacted and the one committed meanwhile"
        );
        assert_eq!(after.len(), 2);
        assert!(after.contains(&written[0]));

        // two compactions of the same files: the second to swap gives up
        commit_epoch(&mut sink, 5, "c", 10000);
        let first = rt.block_on(rewrite(&lake, &c, &options, i64::MAX)).unwrap();
        let second = rt.block_on(rewrite(&lake, &c, &options, i64::MAX)).unwrap();
        let orphans: Vec<String> = first.added.iter().map(|f| f.file_path().into()).collect();
        let on_disk =
            |f: &str| std::path::Path::new(f.strip_prefix("file://").unwrap_or(f)).exists();
        assert!(
            !orphans.is_empty() && orphans.iter().all(|f| on_disk(f)),
            "{orphans:?}"
        );
        rt.block_on(swap(&lake, &c, second)).unwrap();
        let e = rt.block_on(swap(&lake, &c, first)).unwrap_err();
        assert!(matches!(e, IcebergError::Conflict(_)), "{e}");
        for f in orphans {
            assert!(!on_disk(&f), "{f} left behind");
        }
        let (after, sum) = rt.block_on(table_now(&lake, &c));
        assert_eq!((after.len(), sum), (1, 11111));
    }

    /// A file written before a column was added and another promoted from `int` to `long`
    /// (and one renamed): read in the table's schema now, by field id.
    #[test]
    fn a_file_of_an_earlier_schema_is_read_in_the_tables_schema_now() {
        let old = Arc::new(Schema::new(vec![
            field("name", DataType::Utf8, 1, false),
            field("n", DataType::Int32, 2, false),
        ]));
        let batch = RecordBatch::try_new(
            old,
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(Int32Array::from(vec![1, 2])),
            ],
        )
        .unwrap();
        let now = Arc::new(Schema::new(vec![
            field("key", DataType::Utf8, 1, false),
            field("n", DataType::Int64, 2, false),
            field("note", DataType::Utf8, 3, true),
        ]));
        let got = in_table_schema(&batch, &now).unwrap();
        assert_eq!(got.schema(), now);
        let n = got.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(n.values(), &[1, 2]);
        assert_eq!(got.column(2).null_count(), 2);
        let keys = got
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(keys.value(1), "b");
        // a required column added since cannot be made up
        let required = Arc::new(Schema::new(vec![field("must", DataType::Utf8, 4, false)]));
        let e = in_table_schema(&batch, &required).unwrap_err();
        assert!(e.to_string().contains("`must`"), "{e}");
    }
}
