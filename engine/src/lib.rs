//! weir's runtime: source partitions and their watermarks, worker threads that decode and
//! aggregate in parallel, a merge stage that emits closed windows, bounded channels for
//! backpressure, dead letters and run counters.
//!
//! The engine knows nothing of YAML, file formats or Kafka: sources plug in through
//! [`job::PartitionReader`] and [`job::Decode`], operators through [`job::WorkerOperator`] and
//! [`job::MergeOperator`], outputs through [`job::Sink`] and [`job::DeadLetterSink`].

pub mod api;
pub mod bounds;
pub mod buffer;
pub mod checkpoint;
pub mod clock;
pub mod dead_letter;
pub mod error;
pub mod events;
pub mod io;
pub mod job;
pub mod live;
pub mod pool;
mod pool_finished;
pub mod pool_members;
pub mod progress;
pub mod reread;
pub mod retry;
pub mod stage_stats;
pub mod stats;
pub mod time;
pub mod trace;
pub mod types;

/// Schema metadata of a view's changelog rows: how many of the first columns are the view's
/// key (sinks key upserts by them).
pub const KEYS_METADATA: &str = "weir.keys";

pub use dead_letter::{DeadLetter, ErrorInfo, Reason, RejectedRow};
pub use error::{EngineError, ErrorKind};
pub use events::{
    Chunk, ChunkData, Decoded, EventBatch, Messages, RawRows, RowHeaders, SharedBytes,
};
pub use stats::RunStats;
