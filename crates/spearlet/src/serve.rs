//! `spearlet serve`: assemble the configuration, start logging, run the node until SIGINT or
//! SIGTERM, then shut it down gracefully.
//!
//! Flags and their `SPEARLET_*` environment twins become a [`ConfigOverrides`] holding only the
//! values actually given; `NodeConfig::load` applies them over the file and the defaults, so the
//! precedence (flag > environment > file > default) is decided in one place.
//!
//! stdout says where the node listens, with the addresses really bound, so scripts and tests
//! that ask for port 0 can find the node. With the text log format its first line is `spearlet
//! listening on grpc://<address>` and the second names the HTTP address (`http://` or
//! `https://`); with the JSON format it is one JSON log line, `fields` holding `message`
//! (`spearlet listening`), `grpc` and `http` (the same URLs). Logs go to stderr, and so do errors:
//! `error: …` lines in text, JSON log lines at level ERROR in JSON, so that with `--log-format
//! json` every line the process writes is one JSON object.

use std::process::ExitCode;

use anyhow::Context;
use spearlet_server::auth::SecretToken;
use spearlet_server::config::TlsConfig;
use spearlet_server::{ConfigOverrides, LogFormat, NodeConfig};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::ServeArguments;

/// Exit code for a configuration that cannot be used (bad file, unknown key, bad value).
pub const CONFIGURATION_ERROR_EXIT_CODE: u8 = 2;

impl ServeArguments {
    fn config_overrides(&self) -> ConfigOverrides {
        ConfigOverrides {
            grpc_addr: self.grpc_address,
            http_addr: self.http_address,
            data_dir: self.data_directory.clone(),
            log_level: self.log_level.clone(),
            log_format: self.log_format,
            register_examples: self.no_examples.then_some(false),
            insecure: self.insecure.then_some(true),
            auth_tokens: self
                .auth_tokens
                .iter()
                .map(|token| token.trim())
                .filter(|token| !token.is_empty())
                .map(SecretToken::new)
                .collect(),
            tls: match (&self.tls_cert_file, &self.tls_key_file) {
                (Some(cert_file), Some(key_file)) => Some(TlsConfig {
                    cert_file: cert_file.clone(),
                    key_file: key_file.clone(),
                }),
                _ => None,
            },
            otlp_endpoint: self.otlp_endpoint.clone(),
            cluster_nats_url: self.cluster_nats_url.clone(),
        }
    }
}

pub async fn serve(arguments: &ServeArguments) -> anyhow::Result<ExitCode> {
    let config = match NodeConfig::load(
        arguments.config_file.as_deref(),
        arguments.config_overrides(),
    ) {
        Ok(config) => config,
        Err(error) => {
            // No configuration: only the flag (or its environment twin) says how to write.
            let log_format = arguments.log_format.unwrap_or(LogFormat::Text);
            report_error(log_format, &error.message);
            return Ok(ExitCode::from(CONFIGURATION_ERROR_EXIT_CODE));
        }
    };
    let log_format = config.log_format;
    let telemetry = match crate::telemetry::init(&config) {
        Ok(telemetry) => telemetry,
        Err(message) => {
            report_error(log_format, &message);
            return Ok(ExitCode::from(CONFIGURATION_ERROR_EXIT_CODE));
        }
    };
    let exit_code = match run_until_signal(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            report_error(log_format, &format!("{error:#}"));
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown().await;
    Ok(exit_code)
}

/// Starts the node, says where it listens, and shuts it down gracefully on SIGINT or SIGTERM.
async fn run_until_signal(config: NodeConfig) -> anyhow::Result<()> {
    // Registered before the node starts so a signal during startup is not lost.
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;

    let log_format = config.log_format;
    crate::allocator::purge_freed_memory_at_once();
    let cluster_connector: spearlet_server::ClusterConnector =
        Box::new(|join| Box::pin(spearlet_cluster::join(join)));
    let running = spearlet_server::serve_in_cluster(config, Some(cluster_connector))
        .await
        .map_err(|error| anyhow::anyhow!("{}", error.message))?;
    let scheme = if running.tls { "https" } else { "http" };
    announce_listening(
        log_format,
        &format!("grpc://{}", running.grpc_addr),
        &format!("{scheme}://{}", running.http_addr),
    );
    crate::allocator::release_startup_memory();

    let signal_name = tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    };
    tracing::info!(signal = signal_name, "shutting down");
    running
        .shutdown()
        .await
        .map_err(|error| anyhow::anyhow!("{}", error.message))?;
    tracing::info!("stopped");
    Ok(())
}

/// Says where the node listens, on stdout (see the module documentation for both formats).
fn announce_listening(log_format: LogFormat, grpc_url: &str, http_url: &str) {
    match log_format {
        LogFormat::Text => {
            println!("spearlet listening on {grpc_url}");
            println!("spearlet listening on {http_url} (HTTP/JSON gateway, /metrics)");
        }
        LogFormat::Json => crate::telemetry::write_json_event(std::io::stdout, || {
            tracing::info!(grpc = grpc_url, http = http_url, "spearlet listening");
        }),
    }
}

/// An error that ends `serve`, on stderr: `error: <message>` in text, a JSON log line at level
/// ERROR in JSON.
fn report_error(log_format: LogFormat, message: &str) {
    match log_format {
        LogFormat::Text => eprintln!("error: {message}"),
        LogFormat::Json => crate::telemetry::write_json_event(std::io::stderr, || {
            tracing::error!("{message}");
        }),
    }
}
