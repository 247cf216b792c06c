//! The Iceberg sink: rows to Parquet data files, one snapshot per checkpoint (see the crate
//! docs for the protocol).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::AsArray;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use iceberg::arrow::{schema_to_arrow_schema, RecordBatchPartitionSplitter};
use iceberg::spec::{
    deserialize_data_file_from_json, serialize_data_file_to_json, DataFile, DataFileFormat,
    FormatVersion, Operation,
};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::{DataFileWriter, DataFileWriterBuilder};
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use iceberg::TableIdent;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde_json::{json, Value};
use weir_engine::job::{Committable, Sink};
use weir_engine::{EngineError, ErrorKind};

use crate::catalog::{CatalogUri, Lake, PartitionBy};
use crate::schema::BatchConverter;
use crate::view_rows::ViewRows;
use crate::IcebergError;

/// Snapshot summary keys weir writes.
pub(crate) const PIPELINE: &str = "weir.pipeline";
pub(crate) const SINK: &str = "weir.sink";
const OUTPUT: &str = "weir.output";
pub(crate) const EPOCH: &str = "weir.epoch";
/// A pool worker's id (absent for a single process).
pub(crate) const WORKER: &str = "weir.worker";
/// The run of a single process that committed a view's snapshot (see
/// [`IcebergSink::view_epoch_committed`]).
pub(crate) const RUN: &str = "weir.run";

/// What an Iceberg sink writes where.
#[derive(Debug, Clone)]
pub struct IcebergSinkConfig {
    /// The pipeline's name, the sink's and the output's (window or view) feeding it, for
    /// snapshot summaries.
    pub pipeline: String,
    pub sink: String,
    pub output: String,
    pub catalog: CatalogUri,
    /// The catalog's name (readers open the catalog under the same name).
    pub catalog_name: String,
    /// An absolute folder (or a `file://` URL) for new tables.
    pub warehouse: String,
    /// `namespace.table` (nested namespaces: `a.b.table`).
    pub table: String,
    /// How a new table is partitioned (`None`: `day(window_start)` for windows, none for
    /// views).
    pub partition_by: Option<PartitionBy>,
    /// Data files roll over at about this size.
    pub target_file_size: usize,
    /// Properties handed to the catalog (REST credentials, a prefix...).
    pub catalog_properties: HashMap<String, String>,
    /// A replay's window range `[from, to)` (epoch ms): its rows replace those windows'
    /// rows in one snapshot instead of being appended.
    pub replace_windows: Option<(i64, i64)>,
    /// The pool worker writing (`weir run --worker ID`): its commits carry its id, and a
    /// view's commits replace only the keys it wrote (see [`crate::pool`]).
    pub worker: Option<String>,
}

impl IcebergSinkConfig {
    /// Opens the sink's catalog on `runtime`.
    pub(crate) async fn open_lake(
        &self,
        runtime: &tokio::runtime::Runtime,
    ) -> Result<Lake, IcebergError> {
        Lake::open(
            &self.catalog,
            &self.catalog_name,
            &self.warehouse,
            &self.catalog_properties,
            runtime,
        )
        .await
    }

    /// The table's identifier.
    pub fn ident(&self) -> Result<TableIdent, IcebergError> {
        let parts: Vec<&str> = self.table.split('.').collect();
        if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
            return Err(IcebergError::config(format!(
                "table `{}` needs a namespace: NAMESPACE.TABLE",
                self.table
            )));
        }
        TableIdent::from_strs(parts)
            .map_err(|e| IcebergError::config_caused(format!("table `{}`", self.table), e))
    }
}

/// Writers of zstd Parquet data files into `table`, rolling over at `target_size` bytes.
pub(crate) fn writer_builder(
    table: &Table,
    target_size: usize,
    names: &DefaultFileNameGenerator,
) -> Result<FileWriterBuilder, iceberg::Error> {
    let meta = table.metadata();
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let parquet = ParquetWriterBuilder::new(props, meta.current_schema().clone());
    let locations = DefaultLocationGenerator::new(meta)?;
    Ok(DataFileWriterBuilder::new(RollingFileWriterBuilder::new(
        parquet,
        target_size,
        table.file_io().clone(),
        locations,
        names.clone(),
    )))
}

pub(crate) type FileWriterBuilder =
    DataFileWriterBuilder<ParquetWriterBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>;

/// The open data files of the current epoch.
enum Writer {
    Unpartitioned(
        Box<
            DataFileWriter<
                ParquetWriterBuilder,
                DefaultLocationGenerator,
                DefaultFileNameGenerator,
            >,
        >,
    ),
    Partitioned(Box<FanoutWriter<FileWriterBuilder>>),
}

/// Data files written for an epoch, not committed yet.
pub(crate) struct Pending {
    pub epoch: u64,
    pub files: Vec<DataFile>,
    /// A pool worker's view: the keys the epoch upserted or deleted (its key columns), whose
    /// rows the commit replaces with `files`.
    pub keys: Option<RecordBatch>,
}

/// An Iceberg table fed by one window or view.
pub struct IcebergSink {
    config: IcebergSinkConfig,
    /// The process's I/O runtime.
    runtime: &'static tokio::runtime::Runtime,
    lake: Lake,
    ident: TableIdent,
    table: Table,
    converter: BatchConverter,
    splitter: Option<RecordBatchPartitionSplitter>,
    names: DefaultFileNameGenerator,
    writer: Option<Writer>,
    /// A view's rows (the table's content is replaced at each commit).
    view: Option<ViewRows>,
    pending: Vec<Pending>,
    /// A pool worker's view: the key columns of the rows deleted since the last pre-commit.
    deleted: Vec<RecordBatch>,
    /// Whether the run is checkpointed (recover was called).
    checkpointed: bool,
    /// This run's id, in a single process's view snapshots.
    run: String,
    /// The epoch of the checkpoint the run restored (0: none), and the run that wrote it
    /// (`None`: a checkpoint of an earlier version, which did not say).
    restored: u64,
    restored_run: Option<String>,
}

fn engine_err(sink: &str, e: impl Into<weir_engine::error::Cause>) -> EngineError {
    EngineError::sink_caused(sink, "", e)
}

/// The engine's error for a failure of a call that may have changed the sink's state (its
/// open data files, which a failed write or close leaves unknown): never retried, since the
/// same call could write rows twice or lose them. The run fails, and a restart resumes from
/// the last checkpoint; a user's error stays one.
fn not_retried(sink: &str, e: IcebergError) -> EngineError {
    let kind = e.kind();
    if kind == ErrorKind::Retryable {
        tracing::warn!(
            sink,
            error = %weir_engine::error::chain(&e),
            "the Iceberg storage or catalog failed while the epoch's data files were open: \
             the run stops (a restart resumes from the last checkpoint)"
        );
    }
    let e = engine_err(sink, e);
    match kind {
        ErrorKind::User => e.user(),
        _ => e,
    }
}

/// Whether epoch `epoch` of `pipeline`'s sink `sink` (as pool worker `worker`) is in `table`:
/// a snapshot has it, or the committed mark is at it or past it (its snapshot expired since).
pub(crate) fn epoch_committed(
    table: &Table,
    pipeline: &str,
    sink: &str,
    worker: Option<&str>,
    epoch: u64,
) -> bool {
    crate::mark::read(table, pipeline, sink, worker).is_some_and(|m| epoch <= m.epoch)
        || committed_epochs(table, pipeline, sink, worker).any(|e| e == epoch)
}

/// The newest epoch of `pipeline`'s sink `sink` (as pool worker `worker`) in `table`, by its
/// snapshots and its committed mark.
fn newest_epoch(table: &Table, pipeline: &str, sink: &str, worker: Option<&str>) -> Option<u64> {
    let marked = crate::mark::read(table, pipeline, sink, worker).map(|m| m.epoch);
    committed_epochs(table, pipeline, sink, worker)
        .chain(marked)
        .max()
}

/// The epochs committed to `table` by `pipeline`'s sink `sink` (as pool worker `worker`, or
/// a single process when `None`), from the snapshot summaries.
pub fn committed_epochs<'a>(
    table: &'a Table,
    pipeline: &'a str,
    sink: &'a str,
    worker: Option<&'a str>,
) -> impl Iterator<Item = u64> + 'a {
    table.metadata().snapshots().filter_map(move |s| {
        let p = &s.summary().additional_properties;
        (p.get(PIPELINE).map(String::as_str) == Some(pipeline)
            && p.get(SINK).map(String::as_str) == Some(sink)
            && p.get(WORKER).map(String::as_str) == worker)
            .then(|| p.get(EPOCH).and_then(|e| e.parse().ok()))
            .flatten()
    })
}

impl IcebergSink {
    /// Opens the catalog and the table (creating it from `schema`, the output's rows), ready
    /// to write. `keys` is the number of key columns of a view's rows, `None` for a window.
    pub fn open(
        config: IcebergSinkConfig,
        schema: &SchemaRef,
        view_keys: Option<usize>,
    ) -> Result<Self, EngineError> {
        let sink = config.sink.clone();
        // opening changes nothing: an unreachable catalog is retryable
        let e = |e: IcebergError| e.into_sink_error(&sink);
        let ident = config.ident().map_err(e)?;
        let runtime = weir_engine::io::runtime().map_err(|x| engine_err(&sink, x))?;
        let partition = match (&config.partition_by, view_keys) {
            (Some(p), _) => p.clone(),
            (None, None) => PartitionBy::Day("window_start".into()),
            (None, Some(_)) => PartitionBy::None,
        };
        let properties = HashMap::from([
            ("write.format.default".to_string(), "parquet".to_string()),
            (
                "write.parquet.compression-codec".to_string(),
                "zstd".to_string(),
            ),
            (
                "write.target-file-size-bytes".to_string(),
                config.target_file_size.to_string(),
            ),
            ("weir.pipeline".to_string(), config.pipeline.clone()),
        ]);
        let (lake, table) = runtime
            .block_on(async {
                let lake = config.open_lake(runtime).await?;
                let table = lake
                    .open_table(
                        &ident,
                        schema,
                        view_keys.unwrap_or(0),
                        &partition,
                        properties,
                    )
                    .await?;
                Ok::<_, IcebergError>((lake, table))
            })
            .map_err(e)?;
        let target = Arc::new(
            schema_to_arrow_schema(table.metadata().current_schema())
                .map_err(|x| engine_err(&sink, x))?,
        );
        let converter = BatchConverter::new(schema, target.clone());
        let spec = table.metadata().default_partition_spec().clone();
        let splitter = if spec.is_unpartitioned() {
            None
        } else {
            Some(
                RecordBatchPartitionSplitter::try_new_with_computed_values(
                    table.metadata().current_schema().clone(),
                    spec,
                )
                .map_err(|x| engine_err(&sink, x))?,
            )
        };
        let view = match view_keys {
            Some(keys) => Some(ViewRows::new(target, keys).map_err(e)?),
            None => None,
        };
        let names = DefaultFileNameGenerator::new(
            format!("weir-{}", uuid::Uuid::new_v4()),
            None,
            DataFileFormat::Parquet,
        );
        tracing::info!(sink = %sink, table = %ident, catalog = %config.catalog.display(), "writing to Iceberg");
        Ok(IcebergSink {
            config,
            runtime,
            lake,
            ident,
            table,
            converter,
            splitter,
            names,
            writer: None,
            view,
            pending: Vec::new(),
            deleted: Vec::new(),
            checkpointed: false,
            run: uuid::Uuid::new_v4().to_string(),
            restored: 0,
            restored_run: None,
        })
    }

    fn err(&self, e: impl Into<weir_engine::error::Cause>) -> EngineError {
        engine_err(&self.config.sink, e)
    }

    /// See [`not_retried`].
    fn fail(&self, e: IcebergError) -> EngineError {
        not_retried(&self.config.sink, e)
    }

    fn writer_builder(&self) -> Result<FileWriterBuilder, EngineError> {
        writer_builder(&self.table, self.config.target_file_size, &self.names)
            .map_err(|e| self.err(e))
    }

    /// Writes rows in the table's schema to the epoch's data files.
    fn write_rows(&mut self, batch: RecordBatch) -> Result<(), EngineError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let parts = match &self.splitter {
            Some(s) => s.split(&batch).map_err(|e| self.err(e))?,
            None => Vec::new(),
        };
        let mut writer = match self.writer.take() {
            Some(w) => w,
            None => {
                let builder = self.writer_builder()?;
                if self.splitter.is_some() {
                    Writer::Partitioned(Box::new(FanoutWriter::new(builder)))
                } else {
                    let w = self
                        .runtime
                        .block_on(builder.build(None))
                        .map_err(|e| self.err(e))?;
                    Writer::Unpartitioned(Box::new(w))
                }
            }
        };
        let result = self.runtime.block_on(async {
            match &mut writer {
                Writer::Unpartitioned(w) => w.write(batch).await,
                Writer::Partitioned(w) => {
                    for (key, rows) in parts {
                        w.write(key, rows).await?;
                    }
                    Ok(())
                }
            }
        });
        self.writer = Some(writer);
        result.map_err(|e| self.err(e))
    }

    /// Closes the epoch's data files and returns them, with a pool worker's view's changed
    /// keys (its view then holds nothing: each epoch writes only the keys that changed).
    fn close_files(&mut self) -> Result<(Vec<DataFile>, Option<RecordBatch>), EngineError> {
        let pooled = self.config.worker.is_some();
        let mut keys = None;
        if let Some(view) = &mut self.view {
            if view.changed() || (pooled && !self.deleted.is_empty()) {
                let sink = &self.config.sink;
                let rows = view.rows().map_err(|e| not_retried(sink, e))?;
                if pooled {
                    let n = view.keys();
                    *view = ViewRows::new(self.converter.target().clone(), n)
                        .map_err(|e| not_retried(sink, e))?;
                    let mut parts =
                        vec![crate::pool::key_columns(&rows, n).map_err(|e| not_retried(sink, e))?];
                    parts.append(&mut self.deleted);
                    keys =
                        Some(crate::pool::concat_keys(&parts).map_err(|e| not_retried(sink, e))?);
                }
                self.write_rows(rows)?;
            }
        }
        Ok((self.close_writer()?, keys))
    }

    fn close_writer(&mut self) -> Result<Vec<DataFile>, EngineError> {
        let Some(writer) = self.writer.take() else {
            return Ok(Vec::new());
        };
        let files = self.runtime.block_on(async {
            match writer {
                Writer::Unpartitioned(mut w) => w.close().await,
                Writer::Partitioned(w) => (*w).close().await,
            }
        });
        files.map_err(|e| self.err(e))
    }

    /// A snapshot's summary. A view's snapshot names the run whose history its epoch is: an
    /// epoch up to the checkpoint restored (a pending epoch the restore commits) is the
    /// history of the run that wrote that checkpoint, so that another restore of the same
    /// checkpoint finds it committed (see [`Self::view_epoch_committed`]); later ones, this
    /// run's.
    fn summary(&self, epoch: Option<u64>) -> HashMap<String, String> {
        let mut s = summary_of(&self.config, self.config.worker.as_deref(), epoch);
        if self.view.is_some() {
            let run = match (epoch, &self.restored_run) {
                (Some(e), Some(r)) if e <= self.restored => r.clone(),
                _ => self.run.clone(),
            };
            s.insert(RUN.to_string(), run);
        }
        s
    }

    /// Whether a single process's view epoch `epoch` is in `table` already: committed by
    /// this run (a commit whose answer was lost), or, up to the checkpoint the run restored,
    /// by the run that wrote that checkpoint (any run, for a checkpoint that does not say).
    /// The same epoch number an abandoned history committed (a run whose checkpoints were
    /// deleted, or a newer damaged checkpoint skipped) belongs to a history this run
    /// replaces: its commit is made.
    fn view_epoch_committed(&self, table: &Table, epoch: u64) -> bool {
        let (pipeline, sink) = (&self.config.pipeline, &self.config.sink);
        let by_this_history = |by: Option<&String>| {
            let restored_run = match &self.restored_run {
                Some(r) => by == Some(r),
                None => true,
            };
            by == Some(&self.run) || (epoch <= self.restored && restored_run)
        };
        // (the mark: the last epoch committed, whose snapshot may have been expired since)
        let marked = crate::mark::read(table, pipeline, sink, None)
            .is_some_and(|m| epoch <= m.epoch && by_this_history(m.run.as_ref()));
        marked
            || table.metadata().snapshots().any(|s| {
                let p = &s.summary().additional_properties;
                p.get(PIPELINE) == Some(pipeline)
                    && p.get(SINK) == Some(sink)
                    && p.get(WORKER).is_none()
                    && p.get(EPOCH).and_then(|e| e.parse::<u64>().ok()) == Some(epoch)
                    && by_this_history(p.get(RUN))
            })
    }

    /// Commits `files` as one snapshot (an append for a window, a replacement of the whole
    /// table for a view), unless the table already has `epoch`'s snapshot.
    fn commit_files(
        &mut self,
        epoch: Option<u64>,
        files: Vec<DataFile>,
    ) -> Result<(), IcebergError> {
        let started = Instant::now();
        let rows: u64 = files.iter().map(|f| f.record_count()).sum();
        let count = files.len();
        let summary = self.summary(epoch);
        let (pipeline, sink) = (self.config.pipeline.clone(), self.config.sink.clone());
        let replace = self.view.is_some();
        let table = self.runtime.block_on(async {
            let table = self.lake.load(&self.ident).await?;
            // a view's commit replaces the whole table: an epoch number an earlier run of the
            // pipeline committed after the checkpoint restored (its checkpoints deleted, or
            // a newer damaged one skipped) must not hold back this run's view
            if let Some(e) = epoch {
                let done = if replace {
                    self.view_epoch_committed(&table, e)
                } else {
                    epoch_committed(&table, &pipeline, &sink, None, e)
                };
                if done {
                    tracing::info!(sink = %sink, epoch = e, "epoch already committed to Iceberg, not again");
                    return Ok(table);
                }
            }
            if let (Some(range), false) = (self.config.replace_windows, replace) {
                let mut summary = summary;
                summary.insert(
                    "weir.replay".into(),
                    format!("{}..{}", range.0, range.1),
                );
                // the live run may commit meanwhile: start again from its snapshot
                let mut table = table;
                let mut attempts = 0;
                loop {
                    match crate::rewrite::replace_windows(
                        &self.lake,
                        &table,
                        files.clone(),
                        range,
                        self.config.target_file_size,
                        summary.clone(),
                    )
                    .await
                    {
                        Err(IcebergError::Conflict(m)) if attempts < 10 => {
                            attempts += 1;
                            tracing::info!(table = %self.ident, "{m}; replacing again");
                            table = self.lake.load(&self.ident).await?;
                        }
                        other => return other,
                    }
                }
            }
            if replace {
                return self
                    .lake
                    .commit_content(&table, files, Operation::Overwrite, summary)
                    .await
                    .map_err(|e| match e {
                        IcebergError::Conflict(m) => IcebergError::Conflict(format!(
                            "{m}; weir writes a view's table alone: give each view its own table"
                        )),
                        e => e,
                    });
            }
            let tx = Transaction::new(&table);
            // the committed mark, in the same commit (see `mark`); not through a REST
            // catalog, which may keep table properties to other rights than appends (there
            // the snapshots alone say which epochs the table has)
            let mark = match self.lake.commits_itself() {
                true => crate::mark::update(table.metadata().properties(), &summary),
                false => None,
            };
            let tx = match mark {
                Some((key, value)) => tx
                    .update_table_properties()
                    .set(key, value)
                    .apply(tx)
                    .map_err(IcebergError::writing("preparing the append"))?,
                None => tx,
            };
            let tx = tx
                .fast_append()
                .add_data_files(files)
                .set_snapshot_properties(summary)
                .apply(tx)
                .map_err(IcebergError::writing("preparing the append"))?;
            tx.commit(self.lake.catalog())
                .await
                .map_err(|e| IcebergError::catalog(self.config.catalog.display(), e))
        });
        self.table = table?;
        tracing::debug!(
            sink = %self.config.sink,
            epoch = ?epoch,
            files = count,
            rows,
            ms = started.elapsed().as_millis() as u64,
            "committed Iceberg snapshot"
        );
        Ok(())
    }

    /// Commits a pending epoch: a pool worker's through [`crate::pool::commit_epoch`], a
    /// single process's through [`Self::commit_files`].
    fn commit_one(&mut self, p: Pending) -> Result<(), IcebergError> {
        let worker = self.config.worker.clone();
        // a single process's window epoch through a SQL catalog (a v2 table, which weir
        // commits itself): weir's own append, the
        // epoch checked again before each attempt (iceberg-rust's transaction, after a
        // conflict, appends again without looking: an earlier try whose answer was lost may
        // have committed the epoch meanwhile)
        let own_append = self.view.is_none()
            && self.config.replace_windows.is_none()
            && self.lake.commits_itself()
            && self.table.metadata().format_version() == iceberg::spec::FormatVersion::V2;
        if worker.is_none() && !own_append {
            return self.commit_files(Some(p.epoch), p.files);
        }
        let summary = summary_of(&self.config, worker.as_deref(), Some(p.epoch));
        let table = self.runtime.block_on(crate::pool::commit_epoch(
            &self.lake,
            &self.ident,
            &self.config,
            worker.as_deref(),
            p,
            summary,
        ))?;
        self.table = table;
        Ok(())
    }

    /// Reads a view's rows back from the table's current snapshot.
    fn reload_view(&mut self) -> Result<(), IcebergError> {
        let Some(view) = &mut self.view else {
            return Ok(());
        };
        let table = self.table.clone();
        if table.metadata().current_snapshot().is_none() {
            return Ok(());
        }
        let batches = self.runtime.block_on(async {
            use futures::TryStreamExt;
            let scan = table.scan().select_all().build()?;
            scan.to_arrow().await?.try_collect::<Vec<_>>().await
        });
        let batches = batches.map_err(IcebergError::writing("reading the view's rows back"))?;
        let target = self.converter.target().clone();
        for b in batches {
            // the reader gives the table's columns; give them the table schema's field ids
            let b = RecordBatch::try_new(target.clone(), b.columns().to_vec())
                .map_err(IcebergError::writing("reading the view's rows back"))?;
            view.upsert(&b)?;
        }
        // the table holds these rows already
        let _ = view.rows();
        Ok(())
    }
}

impl Committable for IcebergSink {
    fn flush(&mut self) -> Result<bool, EngineError> {
        // rows become visible when their snapshot is committed
        Ok(false)
    }

    fn finish(&mut self) -> Result<(), EngineError> {
        if self.checkpointed {
            // the last checkpoint commits what was written
            if self.writer.is_some() || self.view.as_ref().is_some_and(ViewRows::changed) {
                tracing::warn!(sink = %self.config.sink, "rows written after the last checkpoint are not committed");
            }
            return Ok(());
        }
        let (files, _) = self.close_files()?;
        // a replay replaces its windows' rows even when the range had none
        if !files.is_empty() || self.config.replace_windows.is_some() {
            self.commit_files(None, files).map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    fn pre_commit(&mut self, epoch: u64) -> Result<Value, EngineError> {
        let (files, keys) = self.close_files()?;
        if !files.is_empty() || keys.is_some() {
            self.pending.push(Pending { epoch, files, keys });
        }
        let pending = self
            .pending
            .iter()
            .map(|p| pending_json(&self.table, p).map_err(|e| self.fail(e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(json!({ "table": self.ident.to_string(), "pending": pending, "run": self.run }))
    }

    /// Commits the pending epochs up to `epoch`. A failure (the catalog or the object store
    /// unreachable, a concurrent commit) is retried by the engine: an epoch leaves `pending`
    /// only once committed, and an epoch the table already has is not committed again. Only a
    /// configuration weir cannot run (a view's table in a REST catalog) fails the run (a REST
    /// catalog's answers do not tell a server that failed for good from one restarting).
    fn commit(&mut self, epoch: u64) -> Result<(), EngineError> {
        while let Some(p) = self.pending.first().filter(|p| p.epoch <= epoch) {
            let p = Pending {
                epoch: p.epoch,
                files: p.files.clone(),
                keys: p.keys.clone(),
            };
            let commits_itself = self.lake.commits_itself();
            self.commit_one(p).map_err(|e| match e.kind() {
                ErrorKind::User => e.into_sink_error(&self.config.sink),
                // a file of the table missing or unreadable: a retry would fail alike for
                // ever, with the checkpoints waiting on it (a SQL catalog's errors tell)
                _ if commits_itself && e.is_broken_table() => {
                    tracing::error!(
                        sink = %self.config.sink,
                        table = %self.ident,
                        error = %weir_engine::error::chain(&e),
                        "a file the Iceberg table lists is missing or unreadable: the run \
                         stops. Restore the file, then start the pipeline again (or write to a \
                         new table and replay its range)"
                    );
                    engine_err(&self.config.sink, e)
                }
                _ => engine_err(&self.config.sink, e).unavailable(),
            })?;
            self.pending.remove(0);
        }
        Ok(())
    }

    /// Starts again from checkpoint `from`: loads the table, commits the checkpoint's pending
    /// epochs the table does not have yet and reads a view's rows back. It changes nothing
    /// another call would not redo, so an unreachable catalog or storage is retried.
    fn recover(&mut self, from: Option<(u64, &Value)>) -> Result<(), EngineError> {
        let sink = self.config.sink.clone();
        let retried = |e: IcebergError| e.into_sink_error(&sink);
        self.checkpointed = true;
        self.restored = from.map_or(0, |(e, _)| e);
        self.restored_run = from.and_then(|(_, info)| info.get("run")?.as_str().map(String::from));
        self.writer = None;
        self.pending.clear();
        let table = self
            .runtime
            .block_on(self.lake.load(&self.ident))
            .map_err(retried)?;
        self.table = table;
        self.deleted.clear();
        let worker = self.config.worker.clone();
        let newest = newest_epoch(
            &self.table,
            &self.config.pipeline,
            &self.config.sink,
            worker.as_deref(),
        );
        let upto = from.map_or(0, |(e, _)| e);
        // a single process's view commits replace the table (a run without a checkpoint
        // replaces an older history's rows); windows append, and a pool worker's view
        // replaces its keys' rows: epochs after the checkpoint would be written twice, or
        // their keys' rows put back to older ones
        if let (Some(last), true) = (newest, self.view.is_none() || worker.is_some()) {
            if last > upto {
                return Err(self.err(format!(
                    "table {} already has epoch {last} of this pipeline's sink, newer than the \
                     checkpoint the run starts from ({}): its rows would be written twice (a \
                     view's rows put back to older ones). Restore the newest checkpoint, or \
                     write to a new table",
                    self.ident,
                    if upto == 0 {
                        "none".to_string()
                    } else {
                        upto.to_string()
                    }
                )));
            }
        }
        if let Some((epoch, info)) = from {
            let pending = info
                .get("pending")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for p in &pending {
                let p = pending_of(&self.table, p).map_err(retried)?;
                if p.epoch <= epoch {
                    // idempotent: skipped when the crash came after the catalog commit
                    self.commit_one(p).map_err(retried)?;
                }
            }
        }
        if let Some(view) = &self.view {
            let schema = self.converter.target().clone();
            let keys = view.keys();
            self.view = Some(ViewRows::new(schema, keys).map_err(retried)?);
            // a pool worker's view writes only its changes: the table keeps the other rows;
            // a run without a checkpoint starts its view over (an earlier run's rows, whose
            // checkpoints were deleted, are replaced at its first commit)
            if worker.is_none() && from.is_some() {
                self.reload_view().map_err(retried)?;
            }
        }
        Ok(())
    }
}

impl Sink for IcebergSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
        let rows = self.converter.convert(batch).map_err(|e| self.fail(e))?;
        // a view's `op`: `delete` rows remove their key from the table
        let ops = batch
            .column_by_name(crate::schema::OP_COLUMN)
            .and_then(|c| c.as_string_opt::<i32>())
            .cloned();
        match &mut self.view {
            Some(view) => {
                let deleted = |row: usize| ops.as_ref().is_some_and(|o| o.value(row) == "delete");
                if self.config.worker.is_some() && ops.is_some() {
                    let keys = crate::pool::deleted_keys(&rows, view.keys(), deleted)
                        .map_err(|e| not_retried(&self.config.sink, e))?;
                    self.deleted.extend(keys);
                }
                view.apply(&rows, deleted)
                    .map_err(|e| not_retried(&self.config.sink, e))
            }
            None => self.write_rows(rows),
        }
    }
}

/// The snapshot summary of an epoch of `config`'s sink, written by pool worker `worker`.
pub(crate) fn summary_of(
    config: &IcebergSinkConfig,
    worker: Option<&str>,
    epoch: Option<u64>,
) -> HashMap<String, String> {
    let mut p = HashMap::from([
        (PIPELINE.to_string(), config.pipeline.clone()),
        (SINK.to_string(), config.sink.clone()),
        (OUTPUT.to_string(), config.output.clone()),
    ]);
    if let Some(e) = epoch {
        p.insert(EPOCH.to_string(), e.to_string());
    }
    if let Some(w) = worker {
        p.insert(WORKER.to_string(), w.to_string());
    }
    p
}

/// A pending epoch as the checkpoint keeps it.
pub(crate) fn pending_json(table: &Table, p: &Pending) -> Result<Value, IcebergError> {
    let wr = |e: iceberg::Error| IcebergError::write("describing the epoch's data files", e);
    let meta = table.metadata();
    let spec = meta.default_partition_spec();
    let partition_type = spec.partition_type(meta.current_schema()).map_err(wr)?;
    let files = p
        .files
        .iter()
        .map(|f| serialize_data_file_to_json(f.clone(), &partition_type, FormatVersion::V2))
        .collect::<Result<Vec<_>, _>>()
        .map_err(wr)?;
    let mut v = json!({ "epoch": p.epoch, "spec_id": spec.spec_id(), "files": files });
    if let Some(keys) = &p.keys {
        v["keys"] = crate::pool::keys_to_json(keys)?;
        v["key_columns"] = json!(keys.num_columns());
    }
    Ok(v)
}

/// A pending epoch read back from a checkpoint.
pub(crate) fn pending_of(table: &Table, v: &Value) -> Result<Pending, IcebergError> {
    let bad = || IcebergError::write_msg("a checkpoint's Iceberg entry is unreadable");
    let wr = |e: iceberg::Error| IcebergError::write("reading a checkpoint's data files", e);
    let epoch = v.get("epoch").and_then(Value::as_u64).ok_or_else(bad)?;
    let spec_id = v.get("spec_id").and_then(Value::as_i64).ok_or_else(bad)? as i32;
    let meta = table.metadata();
    let spec = meta
        .partition_spec_by_id(spec_id)
        .ok_or_else(|| IcebergError::schema(format!("the table lost partition spec {spec_id}")))?;
    let schema = meta.current_schema();
    let partition_type = spec.partition_type(schema).map_err(wr)?;
    let files = v
        .get("files")
        .and_then(Value::as_array)
        .ok_or_else(bad)?
        .iter()
        .map(|f| {
            let text = f.as_str().ok_or_else(bad)?;
            deserialize_data_file_from_json(text, spec_id, &partition_type, schema).map_err(wr)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let keys = match (v.get("keys"), v.get("key_columns").and_then(Value::as_u64)) {
        (Some(k), Some(n)) => Some(crate::pool::keys_from_json(table, n as usize, k)?),
        _ => None,
    };
    Ok(Pending { epoch, files, keys })
}
