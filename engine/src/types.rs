//! Small types several modules of the engine share, kept here so that they depend on no
//! module of the runtime.

use arrow::array::ArrayRef;

/// The partial state of one window from one worker: key columns and accumulator states.
#[derive(Clone)]
pub struct PartialWindow {
    pub window_start: i64,
    pub keys: Vec<ArrayRef>,
    pub states: Vec<ArrayRef>,
}

/// Whether partition key `key` is the owned partition `owned` or one of its lanes
/// (`owned/lane`).
pub fn covers(owned: &str, key: &str) -> bool {
    key.strip_prefix(owned)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}
