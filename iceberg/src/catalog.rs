//! Catalogs and tables: opening the catalog a sink names, creating or checking its table,
//! and the commits iceberg-rust's transactions cannot make (a snapshot that replaces the
//! table's content).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use arrow::datatypes::Schema as ArrowSchema;
use iceberg::spec::{
    DataFile, FormatVersion, ManifestFile, ManifestListWriter, ManifestWriterBuilder, Operation,
    Snapshot, SnapshotReference, SnapshotRetention, Summary, Transform, UnboundPartitionSpec,
};
use iceberg::table::Table;
use iceberg::{Catalog, CatalogBuilder, MetadataLocation, TableCreation, TableIdent};
use iceberg_catalog_rest::RestCatalogBuilder;
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalogBuilder};
use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;

use crate::schema::{check_compatible, table_schema};
use crate::IcebergError;

/// Why a sink's `catalog` or `partition_by` setting is refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    #[error("a sqlite catalog needs a file: sqlite://PATH/catalog.db")]
    SqliteWithoutFile,
    /// The SQLite file's path cannot be made absolute.
    #[error("{path}")]
    SqlitePath {
        path: String,
        #[source]
        cause: std::io::Error,
    },
    #[error(
        "unknown catalog `{0}`: use sqlite://PATH (the embedded default), \
         postgres://USER@HOST/DB (a SQL catalog) or https://HOST (a REST catalog)"
    )]
    UnknownCatalog(String),
    #[error("`{0}` lacks a closing parenthesis")]
    Unclosed(String),
    /// A partition column the output does not have (its columns listed).
    #[error("partition_by: `{column}` is not a column of the output (columns: {columns})")]
    NotAColumn { column: String, columns: String },
    #[error("partition_by: unknown transform `{0}`: use day(COL), hour(COL), identity(COL), COL or none")]
    UnknownTransform(String),
    /// A time transform of a column that is not a time.
    #[error("partition_by: `{transform}({column})` needs a timestamp column, and `{column}` is {data_type}: use identity({column}), or a timestamp column such as window_start")]
    NotATime {
        transform: String,
        column: String,
        data_type: String,
    },
}

/// Where a sink's catalog is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogUri {
    /// The SQL catalog in a SQLite file (absolute path).
    Sqlite(String),
    /// The SQL catalog in a Postgres database (a `postgres://` URL).
    Postgres(String),
    /// A REST catalog (`http(s)://` URL).
    Rest(String),
}

impl CatalogUri {
    /// Reads a catalog URL: `sqlite://PATH` (a relative path is taken from `base`),
    /// `postgres://…`/`postgresql://…`, or `http(s)://…`.
    pub fn parse(text: &str, base: &std::path::Path) -> Result<Self, SettingError> {
        if let Some(path) = text.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(SettingError::SqliteWithoutFile);
            }
            let p = std::path::Path::new(path);
            let abs =
                std::path::absolute(base.join(p)).map_err(|cause| SettingError::SqlitePath {
                    path: path.to_string(),
                    cause,
                })?;
            Ok(CatalogUri::Sqlite(abs.to_string_lossy().into_owned()))
        } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Ok(CatalogUri::Postgres(text.to_string()))
        } else if text.starts_with("http://") || text.starts_with("https://") {
            Ok(CatalogUri::Rest(text.to_string()))
        } else {
            Err(SettingError::UnknownCatalog(text.to_string()))
        }
    }

    /// The URL without a password, for messages and logs.
    pub fn display(&self) -> String {
        match self {
            CatalogUri::Sqlite(p) => format!("sqlite://{p}"),
            CatalogUri::Postgres(u) | CatalogUri::Rest(u) => match url::Url::parse(u) {
                Ok(mut url) if url.password().is_some() => {
                    let _ = url.set_password(Some("***"));
                    url.to_string()
                }
                _ => u.clone(),
            },
        }
    }
}

/// How a new table is partitioned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionBy {
    /// Not partitioned.
    None,
    /// By the day of a timestamp column.
    Day(String),
    /// By the hour of a timestamp column.
    Hour(String),
    /// By a column's value.
    Identity(String),
}

impl PartitionBy {
    /// Reads `day`, `hour` (of `window_start`), `day(COL)`, `hour(COL)`, `identity(COL)`, a
    /// column name (identity) or `none`; `columns` are the output's, with their types (a
    /// time transform takes a timestamp, `day` a date too).
    pub fn parse(
        text: &str,
        columns: &[(&str, &arrow::datatypes::DataType)],
    ) -> Result<Self, SettingError> {
        let t = text.trim();
        let (transform, column) = match t.split_once('(') {
            Some((f, rest)) => match rest.strip_suffix(')') {
                Some(c) => (f.trim(), c.trim()),
                None => return Err(SettingError::Unclosed(t.to_string())),
            },
            None if t == "day" || t == "hour" => (t, "window_start"),
            None if t == "none" => return Ok(PartitionBy::None),
            None => ("identity", t),
        };
        // (the transform first: `bucket(4, x)` is a transform weir does not have, not a
        // column named `4, x`)
        if !matches!(transform, "day" | "hour" | "identity") {
            return Err(SettingError::UnknownTransform(transform.to_string()));
        }
        let Some((_, data_type)) = columns.iter().find(|(name, _)| *name == column) else {
            let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
            return Err(SettingError::NotAColumn {
                column: column.to_string(),
                columns: names.join(", "),
            });
        };
        use arrow::datatypes::DataType;
        let time = match transform {
            "day" => matches!(
                data_type,
                DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
            ),
            "hour" => matches!(data_type, DataType::Timestamp(..)),
            _ => true,
        };
        if !time {
            return Err(SettingError::NotATime {
                transform: transform.to_string(),
                column: column.to_string(),
                data_type: data_type.to_string(),
            });
        }
        let c = column.to_string();
        match transform {
            "day" => Ok(PartitionBy::Day(c)),
            "hour" => Ok(PartitionBy::Hour(c)),
            "identity" => Ok(PartitionBy::Identity(c)),
            other => Err(SettingError::UnknownTransform(other.to_string())),
        }
    }

    fn spec(&self, schema: &iceberg::spec::Schema) -> Result<UnboundPartitionSpec, IcebergError> {
        let (column, transform, suffix) = match self {
            PartitionBy::None => return Ok(UnboundPartitionSpec::builder().build()),
            PartitionBy::Day(c) => (c, Transform::Day, "_day"),
            PartitionBy::Hour(c) => (c, Transform::Hour, "_hour"),
            PartitionBy::Identity(c) => (c, Transform::Identity, ""),
        };
        let field = schema.field_by_name(column).ok_or_else(|| {
            IcebergError::config(format!("partition column `{column}` is not in the table"))
        })?;
        UnboundPartitionSpec::builder()
            .add_partition_field(field.id, format!("{column}{suffix}"), transform)
            .map(|b| b.build())
            .map_err(|e| IcebergError::config_caused("partition_by", e))
    }
}

/// An open catalog.
pub struct Lake {
    uri: CatalogUri,
    name: String,
    catalog: Arc<dyn Catalog>,
    /// The SQL catalog's database, for commits weir makes itself.
    pool: Option<AnyPool>,
}

impl Lake {
    /// Whether weir makes its commits itself (a SQL catalog), with the epoch checked again
    /// before each attempt, rather than through iceberg-rust's transaction (a REST catalog).
    pub fn commits_itself(&self) -> bool {
        self.pool.is_some()
    }

    fn err(&self, e: impl Into<weir_engine::error::Cause>) -> IcebergError {
        IcebergError::catalog(self.uri.display(), e)
    }

    /// Opens the catalog `name` at `uri`, whose tables go under `warehouse` (an absolute
    /// folder); `properties` go to the catalog as they are (credentials, a REST prefix).
    pub async fn open(
        uri: &CatalogUri,
        name: &str,
        warehouse: &str,
        properties: &HashMap<String, String>,
        runtime: &tokio::runtime::Runtime,
    ) -> Result<Lake, IcebergError> {
        let err = |e: weir_engine::error::Cause| IcebergError::catalog(uri.display(), e);
        let warehouse = if warehouse.contains("://") {
            warehouse.to_string()
        } else if !warehouse.starts_with('/') {
            return Err(IcebergError::config(format!(
                "warehouse {warehouse} is not an absolute folder"
            )));
        } else {
            std::fs::create_dir_all(warehouse)
                .map_err(|e| IcebergError::config_caused(format!("warehouse {warehouse}"), e))?;
            format!("file://{warehouse}")
        };
        let storage = Arc::new(crate::storage::WarehouseStorageFactory);
        let rt = iceberg::Runtime::new(runtime);
        let mut props = properties.clone();
        let sql = |url: String, style| {
            SqlCatalogBuilder::default()
                .uri(url)
                .warehouse_location(warehouse.clone())
                .sql_bind_style(style)
                .with_storage_factory(storage.clone())
                .with_runtime(rt.clone())
        };
        let (url, qmark) = match uri {
            CatalogUri::Sqlite(path) => {
                if let Some(dir) = std::path::Path::new(path).parent() {
                    std::fs::create_dir_all(dir).map_err(|e| err(e.into()))?;
                }
                // the file is created when missing
                let url = format!("sqlite://{path}?mode=rwc");
                (url, Some(true))
            }
            // `$1` parameters for PostgreSQL
            CatalogUri::Postgres(url) => (url.clone(), Some(false)),
            CatalogUri::Rest(url) => (url.clone(), None),
        };
        let (catalog, pool): (Arc<dyn Catalog>, _) = match qmark {
            Some(qmark) => {
                // our own connection first: an unreachable database fails in 10 s with
                // sqlx's reason, not after the catalog's 30 s pool timeout
                sqlx::any::install_default_drivers();
                {
                    use sqlx::Connection;
                    let probe = sqlx::AnyConnection::connect(&url)
                        .await
                        .map_err(|e| err(e.into()))?;
                    let _ = probe.close().await;
                }
                let pool = AnyPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(std::time::Duration::from_secs(10))
                    .connect(&url)
                    .await
                    .map_err(|e| err(e.into()))?;
                // The catalog's first use creates its tables, and PostgreSQL's `CREATE TABLE
                // IF NOT EXISTS` fails for one of two sessions creating them at once (the
                // workers of a pool starting together): the loser opens it again.
                let mut attempt = 0u64;
                let catalog = loop {
                    let style = if qmark {
                        SqlBindStyle::QMark
                    } else {
                        SqlBindStyle::DollarNumeric
                    };
                    match sql(url.clone(), style).load(name, props.clone()).await {
                        Ok(c) => break c,
                        Err(e) if attempt < 3 => {
                            attempt += 1;
                            tracing::debug!(catalog = %uri.display(), attempt, "opening the catalog again: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(200 * attempt))
                                .await;
                        }
                        Err(e) => return Err(err(e.into())),
                    }
                };
                (Arc::new(catalog), Some(pool))
            }
            None => {
                props.insert("uri".into(), url);
                props.insert("warehouse".into(), warehouse);
                let catalog = RestCatalogBuilder::default()
                    .with_storage_factory(storage)
                    .with_runtime(rt)
                    .load(name, props)
                    .await
                    .map_err(|e| err(e.into()))?;
                (Arc::new(catalog), None)
            }
        };
        Ok(Lake {
            uri: uri.clone(),
            name: name.to_string(),
            catalog,
            pool,
        })
    }

    /// The catalog.
    pub fn catalog(&self) -> &dyn Catalog {
        self.catalog.as_ref()
    }

    /// The table `ident` for an output of schema `output` (whose first `keys` columns are a
    /// view's key, 0 for windows): created when missing, partitioned by `partition`;
    /// otherwise checked to take the output.
    pub async fn open_table(
        &self,
        ident: &TableIdent,
        output: &ArrowSchema,
        keys: usize,
        partition: &PartitionBy,
        properties: HashMap<String, String>,
    ) -> Result<Table, IcebergError> {
        let ns = ident.namespace();
        if !self
            .catalog
            .namespace_exists(ns)
            .await
            .map_err(|e| self.err(e))?
        {
            if let Err(e) = self.catalog.create_namespace(ns, HashMap::new()).await {
                // another worker may have created it meanwhile
                if !self.catalog.namespace_exists(ns).await.unwrap_or(false) {
                    return Err(self.err(e));
                }
            }
        }
        if self
            .catalog
            .table_exists(ident)
            .await
            .map_err(|e| self.err(e))?
        {
            let table = self.load(ident).await?;
            check_compatible(
                &ident.to_string(),
                table.metadata().current_schema(),
                output,
            )?;
            return Ok(table);
        }
        let schema = table_schema(output, keys)?;
        let creation = TableCreation::builder()
            .name(ident.name().to_string())
            .partition_spec(partition.spec(&schema)?)
            .schema(schema)
            .properties(properties)
            .build();
        match self.catalog.create_table(ns, creation).await {
            Ok(t) => {
                tracing::info!(table = %ident, catalog = %self.uri.display(), "created Iceberg table");
                Ok(t)
            }
            // created by another worker meanwhile
            Err(e) => match self.catalog.table_exists(ident).await {
                Ok(true) => self.load(ident).await,
                _ => Err(self.err(e)),
            },
        }
    }

    /// The table as the catalog has it now.
    pub async fn load(&self, ident: &TableIdent) -> Result<Table, IcebergError> {
        self.catalog
            .load_table(ident)
            .await
            .map_err(|e| self.err(e))
    }

    /// Commits a snapshot whose content is exactly `files` (every other file of the current
    /// snapshot leaves the table): an `overwrite` (a view's new content) or a `replace` (the
    /// same rows in fewer files), with `properties` in its summary. iceberg-rust's
    /// transactions only append, so weir writes the manifest, the manifest list and the new
    /// metadata file, then swaps the catalog's pointer if it still names `table`'s metadata
    /// (an error naming the conflict otherwise).
    pub async fn commit_content(
        &self,
        table: &Table,
        files: Vec<DataFile>,
        operation: Operation,
        properties: HashMap<String, String>,
    ) -> Result<Table, IcebergError> {
        self.commit_snapshot(table, Vec::new(), files, operation, properties)
            .await
    }

    /// Appends `files` in one snapshot that keeps the current snapshot's manifests, with the
    /// same compare-and-swap as [`Self::commit_content`]: a concurrent commit fails it with
    /// [`IcebergError::Conflict`] (iceberg-rust's own append would retry on the new snapshot
    /// without letting weir check again that the epoch is not committed yet).
    pub async fn commit_append(
        &self,
        table: &Table,
        files: Vec<DataFile>,
        properties: HashMap<String, String>,
    ) -> Result<Table, IcebergError> {
        let kept = match table.metadata().current_snapshot() {
            Some(s) => table
                .manifest_list_reader(s)
                .load()
                .await
                .map_err(IcebergError::writing("reading the table's manifest list"))?
                .entries()
                .to_vec(),
            None => Vec::new(),
        };
        // an empty `kept` list still appends: the totals follow the operation
        self.commit_snapshot(table, kept, files, Operation::Append, properties)
            .await
    }

    /// A snapshot of the manifests `kept` plus one of `files`; an `append` adds to the
    /// current snapshot's totals, any other operation replaces them.
    async fn commit_snapshot(
        &self,
        table: &Table,
        kept: Vec<ManifestFile>,
        files: Vec<DataFile>,
        operation: Operation,
        properties: HashMap<String, String>,
    ) -> Result<Table, IcebergError> {
        let append = operation == Operation::Append;
        let Some(pool) = &self.pool else {
            return Err(IcebergError::config(format!(
                "{}: replacing a table's content (a view's commit) needs a SQL catalog \
                 (sqlite:// or postgres://): iceberg-rust 0.10 cannot send that commit to a \
                 REST catalog",
                self.uri.display()
            )));
        };
        let meta = table.metadata();
        if meta.format_version() != FormatVersion::V2 {
            return Err(IcebergError::config(format!(
                "table {} is Iceberg format {:?}; weir replaces the content of v2 tables only",
                table.identifier(),
                meta.format_version()
            )));
        }
        let io = table.file_io();
        let snapshot_id = new_snapshot_id(table);
        let parent = meta.current_snapshot().map(|s| s.snapshot_id());
        let sequence = meta.next_sequence_number();
        let commit = uuid::Uuid::new_v4();
        let added_rows: u64 = files.iter().map(|f| f.record_count()).sum();
        let added_files = files.len();
        let wr = |e: iceberg::Error| IcebergError::write("writing the snapshot's metadata", e);

        let manifest_path = format!("{}/metadata/{commit}-m0.avro", meta.location());
        let mut manifest = ManifestWriterBuilder::new(
            io.new_output(&manifest_path).map_err(wr)?,
            Some(snapshot_id),
            meta.current_schema().clone(),
            meta.default_partition_spec().as_ref().clone(),
        )
        .build_v2_data();
        for f in files {
            manifest.add_file(f, sequence).map_err(wr)?;
        }
        let manifest = manifest.write_manifest_file().await.map_err(wr)?;

        let list_path = format!(
            "{}/metadata/snap-{snapshot_id}-0-{commit}.avro",
            meta.location()
        );
        let mut list = ManifestListWriter::v2(
            io.new_output(&list_path)
                .map_err(wr)?
                .writer()
                .await
                .map_err(wr)?,
            snapshot_id,
            parent,
            sequence,
        );
        list.add_manifests(kept.into_iter().chain(std::iter::once(manifest)))
            .map_err(wr)?;
        list.close().await.map_err(wr)?;

        let previous = meta
            .current_snapshot()
            .map(|s| s.summary().additional_properties.clone())
            .unwrap_or_default();
        // the committed mark, in the same swap (see `mark`)
        let mark = crate::mark::update(meta.properties(), &properties);
        let summary = snapshot_summary(&previous, properties, added_files, added_rows, append);
        let snapshot = Snapshot::builder()
            .with_snapshot_id(snapshot_id)
            .with_parent_snapshot_id(parent)
            .with_sequence_number(sequence)
            .with_timestamp_ms(chrono_now_ms())
            .with_manifest_list(list_path)
            .with_schema_id(meta.current_schema_id())
            .with_summary(Summary {
                operation,
                additional_properties: summary,
            })
            .build();

        let current = table
            .metadata_location()
            .ok_or_else(|| IcebergError::write_msg("the table has no metadata file"))?
            .to_string();
        let built = meta
            .clone()
            .into_builder(Some(current.clone()))
            .add_snapshot(snapshot)
            .and_then(|b| {
                b.set_ref(
                    "main",
                    SnapshotReference::new(
                        snapshot_id,
                        SnapshotRetention::branch(None, None, None),
                    ),
                )
            })
            .and_then(|b| match mark {
                Some((key, value)) => b.set_properties(HashMap::from([(key, value)])),
                None => Ok(b),
            })
            .and_then(|b| b.build())
            .map_err(wr)?
            .metadata;
        let location = MetadataLocation::from_str(&current)
            .map_err(wr)?
            .with_next_version()
            .with_new_metadata(&built);
        built.write_to(io, &location).await.map_err(wr)?;
        let location = location.to_string();
        let ident = table.identifier();
        self.swap_metadata_pointer(pool, ident, &current, &location)
            .await?;
        self.load(ident).await
    }

    /// Removes every snapshot of `table` but the current one, as `expire_snapshots` does
    /// (tests: what a restore finds after routine maintenance).
    #[cfg(test)]
    pub(crate) async fn expire_all_but_current(&self, table: &Table) -> Table {
        let meta = table.metadata();
        let current_id = meta.current_snapshot().map(|s| s.snapshot_id());
        let old: Vec<i64> = meta
            .snapshots()
            .map(|s| s.snapshot_id())
            .filter(|id| Some(*id) != current_id)
            .collect();
        let current = table.metadata_location().unwrap().to_string();
        let built = meta
            .clone()
            .into_builder(Some(current.clone()))
            .remove_snapshots(&old)
            .build()
            .unwrap()
            .metadata;
        let location = MetadataLocation::from_str(&current)
            .unwrap()
            .with_next_version()
            .with_new_metadata(&built);
        built.write_to(table.file_io(), &location).await.unwrap();
        let pool = self.pool.as_ref().unwrap();
        self.swap_metadata_pointer(pool, table.identifier(), &current, &location.to_string())
            .await
            .unwrap();
        self.load(table.identifier()).await.unwrap()
    }

    /// The SQL catalog's own commit: points table `ident` at the metadata file `location`,
    /// only if it still points at `current` (a conflict otherwise).
    async fn swap_metadata_pointer(
        &self,
        pool: &AnyPool,
        ident: &TableIdent,
        current: &str,
        location: &str,
    ) -> Result<(), IcebergError> {
        let sql = match self.uri {
            CatalogUri::Sqlite(_) => {
                "UPDATE iceberg_tables SET metadata_location = ?, previous_metadata_location = ? \
                 WHERE catalog_name = ? AND table_namespace = ? AND table_name = ? \
                 AND metadata_location = ?"
            }
            _ => {
                "UPDATE iceberg_tables SET metadata_location = $1, previous_metadata_location = $2 \
                 WHERE catalog_name = $3 AND table_namespace = $4 AND table_name = $5 \
                 AND metadata_location = $6"
            }
        };
        let done = sqlx::query(sql)
            .bind(location)
            .bind(current)
            .bind(&self.name)
            .bind(ident.namespace().join("."))
            .bind(ident.name())
            .bind(current)
            .execute(pool)
            .await
            .map_err(|e| self.err(e))?;
        if done.rows_affected() != 1 {
            return Err(IcebergError::Conflict(format!(
                "table {ident} changed while weir replaced its content (another writer committed)"
            )));
        }
        Ok(())
    }
}

/// A new snapshot's summary: `properties` plus the added counts; an `append` adds them to
/// the `previous` snapshot's totals, any other operation replaces the totals (and counts the
/// previous ones as deleted).
fn snapshot_summary(
    previous: &HashMap<String, String>,
    properties: HashMap<String, String>,
    added_files: usize,
    added_rows: u64,
    append: bool,
) -> HashMap<String, String> {
    let prev = |k: &str| -> u64 { previous.get(k).and_then(|v| v.parse().ok()).unwrap_or(0) };
    let mut summary = properties;
    summary.insert("added-data-files".into(), added_files.to_string());
    summary.insert("added-records".into(), added_rows.to_string());
    if append {
        let total = |k: &str, added: u64| (prev(k) + added).to_string();
        summary.insert(
            "total-data-files".into(),
            total("total-data-files", added_files as u64),
        );
        summary.insert("total-records".into(), total("total-records", added_rows));
        summary.insert("total-delete-files".into(), total("total-delete-files", 0));
    } else {
        summary.insert(
            "deleted-data-files".into(),
            prev("total-data-files").to_string(),
        );
        summary.insert("deleted-records".into(), prev("total-records").to_string());
        summary.insert("total-data-files".into(), added_files.to_string());
        summary.insert("total-records".into(), added_rows.to_string());
        summary.insert("total-delete-files".into(), "0".into());
    }
    summary
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A positive snapshot id the table does not have.
fn new_snapshot_id(table: &Table) -> i64 {
    loop {
        let (hi, lo) = uuid::Uuid::new_v4().as_u64_pair();
        let id = ((hi ^ lo) & (i64::MAX as u64)) as i64;
        if id != 0 && table.metadata().snapshot_by_id(id).is_none() {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_append_adds_to_the_totals_and_a_replace_sets_them() {
        let previous: HashMap<String, String> = [
            ("total-data-files", "4"),
            ("total-records", "100"),
            ("total-delete-files", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let props = HashMap::from([("weir.epoch".to_string(), "7".to_string())]);
        let appended = snapshot_summary(&previous, props.clone(), 2, 30, true);
        assert_eq!(appended["total-data-files"], "6");
        assert_eq!(appended["total-records"], "130");
        assert_eq!(appended["added-records"], "30");
        assert_eq!(appended["weir.epoch"], "7");
        assert!(!appended.contains_key("deleted-records"));
        let replaced = snapshot_summary(&previous, props, 1, 12, false);
        assert_eq!(replaced["total-data-files"], "1");
        assert_eq!(replaced["total-records"], "12");
        assert_eq!(replaced["deleted-data-files"], "4");
        assert_eq!(replaced["deleted-records"], "100");
        // a first snapshot has no totals to add to
        let first = snapshot_summary(&HashMap::new(), HashMap::new(), 3, 9, true);
        assert_eq!(first["total-records"], "9");
    }

    #[test]
    fn catalog_urls() {
        let base = std::path::Path::new("/p");
        assert_eq!(
            CatalogUri::parse("sqlite://warehouse/catalog.db", base).unwrap(),
            CatalogUri::Sqlite("/p/warehouse/catalog.db".into())
        );
        assert_eq!(
            CatalogUri::parse("sqlite:///abs/c.db", base).unwrap(),
            CatalogUri::Sqlite("/abs/c.db".into())
        );
        let pg = CatalogUri::parse("postgres://weir:secret@db/lake", base).unwrap();
        assert!(!pg.display().contains("secret"), "{}", pg.display());
        assert!(matches!(
            CatalogUri::parse("https://rest.example/api", base),
            Ok(CatalogUri::Rest(_))
        ));
        let e = CatalogUri::parse("thrift://hive:9083", base).unwrap_err();
        assert!(matches!(e, SettingError::UnknownCatalog(_)), "{e}");
        assert_eq!(
            e.to_string(),
            "unknown catalog `thrift://hive:9083`: use sqlite://PATH (the embedded default), \
             postgres://USER@HOST/DB (a SQL catalog) or https://HOST (a REST catalog)"
        );
    }

    #[test]
    fn partition_choices() {
        use arrow::datatypes::{DataType, TimeUnit};
        let time = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        let cols = [
            ("datasetName", &DataType::Utf8),
            ("window_start", &time),
            ("window_end", &time),
            ("events", &DataType::Int64),
        ];
        let p = |t: &str| PartitionBy::parse(t, &cols);
        assert_eq!(p("day").unwrap(), PartitionBy::Day("window_start".into()));
        assert_eq!(
            p("hour(window_end)").unwrap(),
            PartitionBy::Hour("window_end".into())
        );
        assert_eq!(
            p("datasetName").unwrap(),
            PartitionBy::Identity("datasetName".into())
        );
        assert_eq!(p("none").unwrap(), PartitionBy::None);
        let e = p("month(window_start)").unwrap_err();
        assert!(e.to_string().contains("unknown transform"), "{e}");
        let e = p("bucket(4, datasetName)").unwrap_err();
        assert_eq!(
            e.to_string(),
            "partition_by: unknown transform `bucket`: use day(COL), hour(COL), identity(COL), COL or none"
        );
        let e = p("day(nope)").unwrap_err();
        assert_eq!(
            e.to_string(),
            "partition_by: `nope` is not a column of the output (columns: datasetName, window_start, window_end, events)"
        );
        // a time transform of a number passed `weir validate`, then failed the run
        let e = p("day(events)").unwrap_err();
        assert!(e.to_string().contains("needs a timestamp column"), "{e}");
        assert!(p("hour(datasetName)").is_err());
        assert_eq!(p("events").unwrap(), PartitionBy::Identity("events".into()));
    }
}
