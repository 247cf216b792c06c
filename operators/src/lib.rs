//! weir's stream operators on Arrow record batches: SQL predicates and aggregates compiled
//! by DataFusion, the keyed tumbling-window aggregate and the materialized view.

mod checked_negative;
pub mod compile;
pub mod float_extreme;
pub mod isolate;
pub mod ordered_value;
#[cfg(test)]
mod test_rng;
pub mod view;
pub mod wide_sum;
pub mod window;
mod window_state;

pub use compile::{CompileError, CompiledAggregate, SqlCompiler};
pub use view::{ViewConfig, ViewMerger, ViewWorker, KEYS_METADATA};
pub use window::{TimeMode, WindowConfig, WindowMerger, WindowWorker};
