//! weir's pipeline files: the YAML model read with positions, `${VAR}` interpolation,
//! validation into a plan, and running a plan on the engine.

pub mod compact;
pub mod error;
pub mod filtered;
pub mod interpolate;
pub mod model;
mod nats;
pub mod plan;
pub mod pool;
mod pool_sinks;
pub mod replay;
pub mod run;
pub mod schema;
pub mod secrets;
pub mod serve;

pub use compact::compact;
pub use error::PipelineError;
pub use plan::{load, Plan};
pub use run::{run, RunOptions, RunSummary};
