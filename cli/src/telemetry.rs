//! Logs and spans: `tracing` to stderr (human or JSON, secrets masked), and with the `otlp`
//! feature, spans exported to an OpenTelemetry collector over OTLP/HTTP when a pipeline has
//! `tracing: { otlp: URL }`.

use tracing::level_filters::LevelFilter;
use tracing::Subscriber;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::LogFormat;

/// How this process logs; the global logger is installed once the pipeline (and so whether
/// spans are exported) is known.
pub struct Telemetry {
    format: LogFormat,
}

/// stderr for logs, with every secret of the pipeline masked (see
/// `weir_pipelines::secrets`). The formatter writes each event in one call.
struct RedactedStderr;

impl std::io::Write for RedactedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(weir_pipelines::secrets::redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Span export while it is alive; dropping it sends the spans still buffered.
pub struct Export {
    #[cfg(feature = "otlp")]
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

/// Which spans and events are exported: weir's own at info and above (librdkafka's logs stay
/// in the logs).
fn exported(m: &tracing::Metadata<'_>) -> bool {
    m.target().starts_with("weir") && *m.level() <= tracing::Level::INFO
}

impl Telemetry {
    pub fn new(format: LogFormat) -> Self {
        Telemetry { format }
    }

    /// Logs to stderr: levels from `RUST_LOG` (default info), colours only on a terminal.
    fn logs<S>(&self) -> Box<dyn Layer<S> + Send + Sync>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        use std::io::IsTerminal;
        let fmt = tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(|| RedactedStderr);
        match self.format {
            LogFormat::Human => Box::new(fmt.with_filter(filter)),
            LogFormat::Json => Box::new(fmt.json().with_filter(filter)),
        }
    }

    /// Runs `f` (reading the pipeline file) with a logger of its own, before the global one
    /// is installed.
    pub fn scoped<T>(&self, f: impl FnOnce() -> T) -> T {
        let logger = tracing_subscriber::registry().with(self.logs());
        tracing::subscriber::with_default(logger, f)
    }

    /// Installs the global logger, exporting spans as `tracing` says (nothing when `None`).
    pub fn install(
        &self,
        tracing: Option<&weir_pipelines::plan::PlannedTracing>,
    ) -> anyhow::Result<Option<Export>> {
        let (layer, export) = match tracing {
            Some(t) => {
                let (layer, export) = self.exporter(t)?;
                (Some(layer), Some(export))
            }
            None => (None, None),
        };
        // The hint keeps the process's most verbose level that of `RUST_LOG` (or info): it
        // becomes the `log` crate's maximum, below which librdkafka's Rust client logs are
        // dropped by one comparison. Without it the level is trace, and every message polled
        // went through the subscriber (about 8% of the Kafka path's CPU).
        let hint = if layer.is_some() {
            LevelFilter::INFO
        } else {
            LevelFilter::OFF
        };
        let exporting = layer.is_some();
        let exported = tracing_subscriber::filter::filter_fn(move |m| exporting && exported(m))
            .with_max_level_hint(hint);
        tracing_subscriber::registry()
            .with(layer.with_filter(exported))
            .with(self.logs())
            .try_init()
            .map_err(|e| anyhow::anyhow!("logging: {e}"))?;
        if let Some(t) = tracing {
            weir_engine::trace::set_traceparent_source(current_traceparent);
            ::tracing::info!(endpoint = %t.endpoint, service = %t.service_name, "exporting spans over OTLP/HTTP");
        }
        Ok(export)
    }

    #[cfg(not(feature = "otlp"))]
    fn exporter(
        &self,
        _: &weir_pipelines::plan::PlannedTracing,
    ) -> anyhow::Result<(tracing_subscriber::layer::Identity, Export)> {
        anyhow::bail!(
            "this weir was built without the `otlp` feature: rebuild with it to export spans, \
             or remove `tracing` from the pipeline"
        )
    }

    #[cfg(feature = "otlp")]
    fn exporter<S>(
        &self,
        t: &weir_pipelines::plan::PlannedTracing,
    ) -> anyhow::Result<(
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
        Export,
    )>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        use opentelemetry::trace::TracerProvider as _;
        use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
        use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
        use opentelemetry_sdk::Resource;

        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpJson)
            .with_endpoint(&t.endpoint)
            .with_headers(t.headers.iter().cloned().collect())
            .with_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| anyhow::anyhow!("tracing: cannot export to {}: {e}", t.endpoint))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                t.sample_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(t.service_name.clone())
                    .build(),
            )
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("weir"));
        Ok((layer, Export { provider }))
    }
}

/// The W3C `traceparent` of the current span, when it is exported.
#[cfg(not(feature = "otlp"))]
fn current_traceparent() -> Option<String> {
    None
}

/// The W3C `traceparent` of the current span, when it is exported.
#[cfg(feature = "otlp")]
fn current_traceparent() -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

#[cfg(feature = "otlp")]
impl Drop for Export {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("warning: tracing: spans not exported at exit: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The only test of this binary that installs the global logger.
    #[test]
    fn the_most_verbose_level_is_the_logs_not_trace() {
        if std::env::var_os("RUST_LOG").is_some() {
            return; // the level is whatever RUST_LOG says
        }
        Telemetry::new(LogFormat::Human)
            .install(None)
            .expect("the first logger of this process");
        // `log` records (librdkafka's client) are filtered at this level before any work
        assert_eq!(LevelFilter::current(), LevelFilter::INFO);
        // weir's own events still reach the logs (the export filter enables nothing it did
        // not announce: tracing-subscriber checks that in debug builds)
        tracing::info!(target: "weir_test", "logged");
        tracing::debug!(target: "weir_test", "not logged");
    }
}
