//! weir's pipeline files: the YAML model read with positions, `${VAR}` interpolation,
//! validation into a plan, and running a plan on the engine.

pub mod connectors;
pub mod error;
pub mod filtered;
pub mod interpolate;
pub mod mode;
pub mod model;
pub mod plan;
pub mod pool;
pub mod replay;
pub mod run;
pub mod schema;
pub mod secrets;
pub mod serve;

pub use connectors::iceberg::compact::{self, compact};
pub use error::PipelineError;
pub use plan::{load, Plan};
pub use run::{run, RunOptions, RunSummary};
