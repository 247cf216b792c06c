//! weir's Iceberg sink: window and view outputs as Iceberg tables (Parquet data files plus
//! Iceberg metadata), through iceberg-rust.
//!
//! - Catalogs: the SQL catalog (`sqlite://…`, the embedded default, or `postgres://…`) and
//!   the REST catalog (`http(s)://…`). The warehouse is a local folder or an object-store URL
//!   (`s3://`, `gs://`, `az://`, credentials from the environment as for checkpoints).
//! - Tables are created on first use from the output's schema, partitioned by
//!   `day(window_start)` for windows (configurable); an existing table is checked column by
//!   column ([`schema::check_compatible`]).
//! - Exactly once: the rows of checkpoint epoch `E` go to zstd Parquet files that are written
//!   at `E`'s barrier (pre-commit, their descriptions kept in the checkpoint's manifest) and
//!   committed as one snapshot when checkpoint `E` is complete. The snapshot's summary holds
//!   `weir.pipeline`, `weir.sink`, `weir.output` and `weir.epoch`, and the same swap sets the
//!   table's committed mark (a property that outlives expired snapshots: `mark.rs`): a
//!   worker recovering from `E` commits `E`'s files only if neither says the table has that
//!   epoch, so no epoch is ever committed twice (as Arroyo's `commit-id`).
//! - Views: the sink keeps each key's latest row and every commit replaces the table's
//!   content with the whole view (an `overwrite` snapshot), so a reader sees one row per key.
//!   iceberg-rust 0.10 cannot commit equality deletes, and its transactions only append, so
//!   weir writes that snapshot's manifests itself and swaps the table's metadata in the SQL
//!   catalog (the same compare-and-swap as the catalog's own commits).
//! - Small files: [`compact`] (`weir compact`) rewrites the small files of settled
//!   partitions in one `replace` snapshot.

mod catalog;
mod compact;
mod error;
mod mark;
pub mod pool;
mod rewrite;
pub mod schema;
mod sink;
mod storage;
mod view_rows;

pub use catalog::{CatalogUri, PartitionBy, SettingError};
pub use compact::{compact, CompactOptions, CompactReport};
pub use error::IcebergError;
pub use sink::{committed_epochs, IcebergSink, IcebergSinkConfig};
pub use view_rows::ViewRows;
