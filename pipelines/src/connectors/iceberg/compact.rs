//! `weir compact`: rewrites the small files of a pipeline's Iceberg tables (see
//! [`weir_iceberg::compact`]).

pub use weir_iceberg::{CompactOptions, CompactReport, IcebergError};

use super::{iceberg_config, IcebergTarget};
use crate::plan::Plan;

/// Each compacted sink's name and what compacting its table did.
pub type SinkReports = Vec<(String, Result<CompactReport, IcebergError>)>;

/// Why `weir compact` has no table to compact: always the user's to fix (the pipeline or
/// `--sink`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompactRefusal {
    /// `--sink` names no Iceberg sink fed by a window.
    #[error("`{0}` is not an Iceberg sink of a window in this pipeline")]
    NoSuchSink(String),
    /// The pipeline has no Iceberg sink fed by a window.
    #[error("this pipeline has no Iceberg sink fed by a window: nothing to compact")]
    NoSink,
}

impl CompactRefusal {
    /// Always a user error.
    pub fn kind(&self) -> weir_engine::ErrorKind {
        weir_engine::ErrorKind::User
    }
}

/// Compacts the tables of the pipeline's Iceberg sinks fed by windows (a view's table is
/// rewritten whole at every commit), or of the sink `only`. Returns each sink's report or
/// error; `Err` when `only` names no such sink.
pub fn compact(
    plan: &Plan,
    only: Option<&str>,
    options: &CompactOptions,
) -> Result<SinkReports, CompactRefusal> {
    let windows: Vec<_> = plan
        .sinks
        .iter()
        .filter_map(|s| {
            let t = s.target.as_any().downcast_ref::<IcebergTarget>()?;
            (t.output.is_some() && t.view_keys.is_none()).then_some((s, t))
        })
        .filter(|(s, _)| only.is_none_or(|o| o == s.name))
        .collect();
    if windows.is_empty() {
        return Err(match only {
            Some(o) => CompactRefusal::NoSuchSink(o.to_string()),
            None => CompactRefusal::NoSink,
        });
    }
    Ok(windows
        .into_iter()
        .map(|(s, t)| {
            let config = iceberg_config(&plan.name, &s.name, t);
            (s.name.clone(), weir_iceberg::compact(&config, options))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compact_refusal_is_a_user_error() {
        let e = CompactRefusal::NoSuchSink("out".into());
        assert_eq!(e.kind(), weir_engine::ErrorKind::User);
        assert_eq!(
            e.to_string(),
            "`out` is not an Iceberg sink of a window in this pipeline"
        );
        assert_eq!(CompactRefusal::NoSink.kind(), weir_engine::ErrorKind::User);
    }
}
