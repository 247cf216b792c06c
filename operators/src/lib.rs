//! weir's stream operators on Arrow record batches: SQL predicates and aggregates compiled
//! by DataFusion, and the keyed tumbling-window aggregate.

pub mod compile;
pub mod window;

pub use compile::{CompiledAggregate, SqlCompiler};
pub use window::{TimeMode, WindowConfig, WindowMerger, WindowWorker};
