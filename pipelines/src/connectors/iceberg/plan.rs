//! Planning of Iceberg sinks.

use serde_saphyr::Spanned;
use weir_iceberg::CatalogUri;

use super::doc::IcebergDoc;
use super::IcebergTarget;
use crate::error::PipelineError;
use crate::plan::Ctx;

/// The Iceberg sink `sink` of pipeline `pipeline`, writing `target`.
pub fn iceberg_config(
    pipeline: &str,
    sink: &str,
    target: &IcebergTarget,
) -> weir_iceberg::IcebergSinkConfig {
    weir_iceberg::IcebergSinkConfig {
        pipeline: pipeline.to_string(),
        sink: sink.to_string(),
        output: target.output.clone().unwrap_or_default(),
        catalog: target.catalog.clone(),
        catalog_name: target.catalog_name.clone(),
        warehouse: target.warehouse.clone(),
        table: target.table.clone(),
        partition_by: target.partition_by.clone(),
        target_file_size: target.target_file_size,
        catalog_properties: target.properties.clone(),
        replace_windows: None,
        worker: target.worker.clone(),
    }
}

/// An `iceberg` sink's target, checked (its output and partitioning are set when a window or
/// view attaches it).
pub(crate) fn target(
    ctx: &Ctx,
    name: &str,
    kname: &str,
    i: &Spanned<IcebergDoc>,
) -> Result<IcebergTarget, PipelineError> {
    let d = &i.value;
    let at = |m: String| ctx.err(&i.referenced, format!("sink `{kname}`: {m}"));
    let catalog = CatalogUri::parse(&d.catalog, &ctx.dir).map_err(|e| {
        ctx.err(&i.referenced, format!("sink `{kname}`"))
            .caused_by(e)
    })?;
    let warehouse = if d.warehouse.contains("://") {
        d.warehouse.clone()
    } else {
        std::path::absolute(ctx.path(&d.warehouse))
            .map_err(|e| at(format!("warehouse {}", d.warehouse)).caused_by(e))?
            .to_string_lossy()
            .into_owned()
    };
    let mb = d.target_file_size_mb.unwrap_or(128);
    if mb == 0 || mb > 16 * 1024 {
        return Err(at("target_file_size_mb must be between 1 and 16384".into()));
    }
    let target = IcebergTarget {
        catalog,
        catalog_name: d.catalog_name.clone().unwrap_or_else(|| "weir".into()),
        warehouse,
        table: d.table.clone(),
        partition_by: None,
        partition_text: d
            .partition_by
            .as_ref()
            .map(|p| (p.referenced, p.value.clone())),
        target_file_size: (mb as usize) << 20,
        properties: d
            .properties
            .iter()
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect(),
        output: None,
        view_keys: None,
        worker: None,
        pipeline: name.to_string(),
    };
    let config = weir_iceberg::IcebergSinkConfig {
        table: target.table.clone(),
        ..iceberg_config(name, kname, &target)
    };
    config.ident().map_err(|e| {
        ctx.err(&i.referenced, format!("sink `{kname}`"))
            .caused_by(e)
    })?;
    Ok(target)
}
