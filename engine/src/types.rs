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

/// What a worker hands over of one source partition of an operator whose windows close per
/// partition (see `WorkerOperator::closes_per_partition`): the windows of `partition` closed
/// at `upto`, a promise that none of its later rows reaches them.
pub struct PartitionFlush {
    /// Global partition id.
    pub partition: usize,
    /// The partition's closing watermark: its windows ending (with lateness) at or below it
    /// are all handed over, now or before.
    pub upto: i64,
    pub partials: Vec<PartialWindow>,
}

/// Whether partition key `key` is the owned partition `owned` or one of its lanes
/// (`owned/lane`).
pub fn covers(owned: &str, key: &str) -> bool {
    key.strip_prefix(owned)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}
