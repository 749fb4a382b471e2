//! Logs and span export for `spearlet serve`.
//!
//! One global `tracing` subscriber with up to two layers:
//! - the log: text or one JSON object per line on stderr, filtered by `log_level` (an
//!   `EnvFilter` directive). Events inside an execution carry the execution span's fields
//!   (`execution_id`, `task_id`, `function`, `attempt`, `instance_id`, `trace_id`);
//! - when `[telemetry] otlp_endpoint` is set, `tracing-opentelemetry` turning spearlet's own
//!   spans (INFO and above, whatever `log_level` says) into OpenTelemetry spans, batched and sent
//!   over OTLP/gRPC (tonic) with `service.name` = `[telemetry] service_name`.
//!
//! The two layers filter separately, so a quiet log does not silence the export. The batch
//! processor runs on its own thread and honours the standard `OTEL_BSP_*` variables (schedule
//! delay, queue and batch sizes); [`Telemetry::shutdown`] flushes what is queued.
//!
//! With the JSON format, what `serve` writes outside the log — its listening line on stdout, a
//! configuration error before the log exists — goes through [`write_json_event`], which formats
//! one event exactly as the log's JSON layer does, so every line the process writes is one JSON
//! object of the same shape.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use spearlet_server::{LogFormat, NodeConfig};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// What must be shut down with the node: the span exporter, when there is one.
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

/// Installs the global subscriber. Must run inside the Tokio runtime (the OTLP exporter's
/// channel lives on it). Errors are messages for an unusable configuration.
pub fn init(config: &NodeConfig) -> Result<Telemetry, String> {
    let filter = EnvFilter::try_new(&config.log_level).map_err(|error| {
        format!(
            "log_level {:?} is not a valid filter: {error}",
            config.log_level
        )
    })?;
    let log_layer = match config.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let tracer_provider = match config.telemetry.otlp_endpoint.trim() {
        "" => None,
        endpoint => Some(otlp_tracer_provider(
            endpoint,
            &config.telemetry.service_name,
        )?),
    };
    let export_layer = tracer_provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("spearlet"))
            .with_filter(
                // spearlet's crates only (the target is a prefix: `spearlet_server::…` too):
                // dependencies' spans are noise in a trace, and the exporter's own transport
                // must not feed back into it.
                Targets::new().with_target("spearlet", LevelFilter::INFO),
            )
    });
    tracing_subscriber::registry()
        .with(log_layer.with_filter(filter))
        .with(export_layer)
        .try_init()
        .map_err(|error| format!("installing the logger: {error}"))?;
    Ok(Telemetry { tracer_provider })
}

/// Runs `emit`, which logs one event (`tracing::info!(…)`), with a subscriber of its own that
/// writes it to `writer` in the JSON log's format (`timestamp`, `level`, `fields`, `target`),
/// whatever the global subscriber and its filter are, and before there is one.
pub fn write_json_event<Writer>(writer: Writer, emit: impl FnOnce())
where
    Writer: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(LevelFilter::TRACE)
        .with_writer(writer)
        .finish();
    tracing::subscriber::with_default(subscriber, emit);
}

fn otlp_tracer_provider(endpoint: &str, service_name: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|error| format!("telemetry.otlp_endpoint {endpoint:?}: {error}"))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .build())
}

impl Telemetry {
    /// Exports the spans still queued and stops the exporter. Runs off the async workers: the
    /// SDK's shutdown blocks until the export thread is done, and that export needs the runtime.
    pub async fn shutdown(self) {
        let Some(provider) = self.tracer_provider else {
            return;
        };
        let shut_down = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match shut_down {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!("flushing spans at shutdown failed: {error}"),
            Err(error) => tracing::warn!("flushing spans at shutdown failed: {error}"),
        }
    }
}
