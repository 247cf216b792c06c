//! `weir compact`: rewrites the small files of a pipeline's Iceberg tables (see
//! [`weir_iceberg::compact`]).

pub use weir_iceberg::{CompactOptions, CompactReport, IcebergError};

use super::{iceberg_config, IcebergTarget};
use crate::plan::Plan;

/// Each compacted sink's name and what compacting its table did.
pub type SinkReports = Vec<(String, Result<CompactReport, IcebergError>)>;

/// Compacts the tables of the pipeline's Iceberg sinks fed by windows (a view's table is
/// rewritten whole at every commit), or of the sink `only`. Returns each sink's report or
/// error; `Err` when `only` names no such sink.
pub fn compact(
    plan: &Plan,
    only: Option<&str>,
    options: &CompactOptions,
) -> Result<SinkReports, String> {
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
            Some(o) => format!("`{o}` is not an Iceberg sink of a window in this pipeline"),
            None => "this pipeline has no Iceberg sink fed by a window: nothing to compact".into(),
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
