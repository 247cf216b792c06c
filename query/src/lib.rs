//! weir's SQL serving: DataFusion tables over a running job's live state (one per window and
//! view, and `weir_status`), answered over HTTP (`POST /sql`, JSON or Arrow IPC) and the
//! Postgres wire protocol, read-only and within per-query limits; and the client of
//! `weir sql`.
//!
//! Consistency: a query reads one snapshot, published by the engine at a live barrier (every
//! `serve.refresh`), in which every table reflects the same prefix of every source
//! partition (see `weir_engine::live`).

mod bounded;
mod checked;
mod checked_sum;
pub mod client;
pub mod console;
mod deadline;
pub mod encode;
pub mod engine;
pub mod http;
pub mod limits;
pub mod logins;
pub mod metrics;
pub mod peers;
pub mod pg;
mod pg_conn;
mod pg_numeric;
mod point;
pub mod server;
pub mod subscribe;
pub mod tables;

pub use client::{ClientError, FormatError, OutputFormat};
pub use engine::{Answer, Encoding, QueryEngine, QueryError, QueryResult};
pub use limits::QueryLimits;
pub use peers::{PeerAddresses, Peers};
pub use server::{ServeConfig, ServeError, SqlServer};
