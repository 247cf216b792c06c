//! A replay's commit: the windows starting in `[from, to)` are replaced by the replayed
//! rows in one `overwrite` snapshot. Data files whose `window_start` bounds overlap the range
//! are rewritten without those rows; the others stay as they are. Replaying twice gives the
//! same table content as replaying once.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{AsArray, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::TimestampMicrosecondType;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{DataFile, DataFileFormat, Operation, PartitionKey, PrimitiveLiteral};
use iceberg::table::Table;
use iceberg::writer::file_writer::location_generator::DefaultFileNameGenerator;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};

use crate::catalog::Lake;
use crate::compact::{live_files, read_file};
use crate::sink::writer_builder;
use crate::IcebergError;

/// Whether a file may hold rows with `window_start` (field `field`) in `[from_us, to_us)`,
/// from its column bounds (unknown bounds: it may).
fn overlaps(file: &DataFile, field: i32, from_us: i64, to_us: i64) -> bool {
    let bound = |m: &HashMap<i32, iceberg::spec::Datum>| match m.get(&field).map(|d| d.literal()) {
        Some(PrimitiveLiteral::Long(v)) => Some(*v),
        _ => None,
    };
    let lo = bound(file.lower_bounds()).unwrap_or(i64::MIN);
    let hi = bound(file.upper_bounds()).unwrap_or(i64::MAX);
    lo < to_us && hi >= from_us
}

/// Commits `added` (the replayed windows' rows) in place of the table's rows whose
/// `window_start` lies in `[from_ms, to_ms)`.
pub(crate) async fn replace_windows(
    lake: &Lake,
    table: &Table,
    added: Vec<DataFile>,
    (from_ms, to_ms): (i64, i64),
    target_file_size: usize,
    summary: HashMap<String, String>,
) -> Result<Table, IcebergError> {
    let meta = table.metadata();
    let schema = meta.current_schema().clone();
    let field = schema
        .field_by_name("window_start")
        .ok_or_else(|| IcebergError::config("the table has no window_start column"))?
        .id;
    let (from_us, to_us) = (from_ms.saturating_mul(1000), to_ms.saturating_mul(1000));
    let target = Arc::new(
        schema_to_arrow_schema(&schema).map_err(IcebergError::writing(
            "rewriting the files of the replayed windows",
        ))?,
    );
    let column = target
        .index_of("window_start")
        .map_err(|e| IcebergError::config_caused("the table's window_start column", e))?;
    let spec = meta.default_partition_spec().as_ref().clone();
    let names = DefaultFileNameGenerator::new(
        format!("weir-replay-{}", uuid::Uuid::new_v4()),
        None,
        DataFileFormat::Parquet,
    );
    let builder = writer_builder(table, target_file_size, &names).map_err(
        IcebergError::writing("rewriting the files of the replayed windows"),
    )?;
    let mut content = Vec::new();
    let mut rewritten = 0usize;
    for live in live_files(table).await? {
        let f = live.file;
        if !overlaps(&f, field, from_us, to_us) {
            content.push(f);
            continue;
        }
        rewritten += 1;
        let key = (!spec.is_unpartitioned())
            .then(|| PartitionKey::new(spec.clone(), schema.clone(), f.partition().clone()));
        let mut writer = builder.build(key).await.map_err(IcebergError::writing(
            "rewriting the files of the replayed windows",
        ))?;
        let mut kept = 0usize;
        for batch in read_file(table, &f, &target).await? {
            let starts = batch
                .column(column)
                .as_primitive_opt::<TimestampMicrosecondType>()
                .ok_or_else(|| {
                    IcebergError::schema("the table's window_start is not a timestamp")
                })?;
            let keep: BooleanArray = starts
                .iter()
                .map(|s| Some(!s.is_some_and(|s| s >= from_us && s < to_us)))
                .collect();
            let rows = filter_record_batch(&batch, &keep).map_err(IcebergError::writing(
                "rewriting the files of the replayed windows",
            ))?;
            if rows.num_rows() > 0 {
                kept += rows.num_rows();
                writer.write(rows).await.map_err(IcebergError::writing(
                    "rewriting the files of the replayed windows",
                ))?;
            }
        }
        let files = writer.close().await.map_err(IcebergError::writing(
            "rewriting the files of the replayed windows",
        ))?;
        if kept > 0 {
            content.extend(files);
        }
    }
    let added_rows: u64 = added.iter().map(|f| f.record_count()).sum();
    tracing::info!(
        table = %table.identifier(),
        rewritten_files = rewritten,
        replayed_rows = added_rows,
        "replacing the replayed windows"
    );
    content.extend(added);
    lake.commit_content(table, content, Operation::Overwrite, summary)
        .await
}
