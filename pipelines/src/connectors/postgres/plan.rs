//! Planning of PostgreSQL sinks.

use serde_saphyr::Spanned;
use weir_sinks::PostgresConfig;

use super::doc::PostgresDoc;
use crate::error::PipelineError;
use crate::plan::Ctx;

/// A `postgres` sink's settings, checked.
pub(crate) fn postgres_config(
    ctx: &Ctx,
    pipeline: &str,
    kname: &str,
    p: &Spanned<PostgresDoc>,
) -> Result<PostgresConfig, PipelineError> {
    let at = |m: String| ctx.err(&p.referenced, format!("sink `{kname}`: {m}"));
    let d = &p.value;
    if !(d.url.starts_with("postgres://") || d.url.starts_with("postgresql://")) {
        return Err(at(
            "`url` must be a postgres:// URL (postgres://user:${PGPASSWORD}@host:5432/database)"
                .into(),
        ));
    }
    let table = weir_sinks::postgres::TableName::parse(&d.table).map_err(|e| {
        ctx.err(&p.referenced, format!("sink `{kname}`"))
            .caused_by(e)
    })?;
    let tls = match d.tls.as_deref() {
        None => None,
        Some(t) => Some(weir_sinks::TlsMode::parse(t).ok_or_else(|| {
            at(format!(
                "`tls` is disable, require or verify-full, not `{t}`"
            ))
        })?),
    };
    let ca_file = match &d.ca_file {
        Some(f) => {
            let path = ctx.path(f);
            if !path.is_file() {
                return Err(at(format!("`ca_file` {} is not a file", path.display())));
            }
            Some(path)
        }
        None => None,
    };
    if ca_file.is_some() && tls == Some(weir_sinks::TlsMode::Disable) {
        return Err(at(
            "`ca_file` verifies a TLS server: it needs `tls: require` or `tls: verify-full`".into(),
        ));
    }
    let batch_max_rows = d.batch_max_rows.unwrap_or(50_000);
    if !(1..=1_000_000).contains(&batch_max_rows) {
        return Err(at("`batch_max_rows` must be between 1 and 1000000".into()));
    }
    let config = PostgresConfig {
        url: d.url.clone(),
        table,
        tls,
        ca_file,
        batch_max_rows: batch_max_rows as usize,
        flush_interval: std::time::Duration::from_millis(
            d.flush_interval.as_ref().map_or(1000, |f| f.0.max(1)),
        ),
        timeout: std::time::Duration::from_millis(
            d.timeout.as_ref().map_or(30_000, |t| t.0.max(100)),
        ),
        pipeline: pipeline.to_string(),
        output: String::new(),
        view_keys: None,
        worker: String::new(),
    };
    weir_sinks::postgres::check_url(&config).map_err(|e| {
        ctx.err(&p.referenced, format!("sink `{kname}`: `url`"))
            .caused_by(e)
    })?;
    Ok(config)
}
