//! `spearlet serve`: assemble the configuration, start logging, run the node until SIGINT or
//! SIGTERM, then shut it down gracefully.
//!
//! Flags and their `SPEARLET_*` environment twins become a [`ConfigOverrides`] holding only the
//! values actually given; `NodeConfig::load` applies them over the file and the defaults, so the
//! precedence (flag > environment > file > default) is decided in one place.
//!
//! The first line on stdout is `spearlet listening on grpc://<address>` with the address really
//! bound, so scripts and tests that ask for port 0 can find the node; the second names the HTTP
//! address (`http://` or `https://`). Logs go to stderr.

use std::process::ExitCode;

use anyhow::Context;
use spearlet_server::auth::SecretToken;
use spearlet_server::config::TlsConfig;
use spearlet_server::{ConfigOverrides, NodeConfig};
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
            eprintln!("error: {}", error.message);
            return Ok(ExitCode::from(CONFIGURATION_ERROR_EXIT_CODE));
        }
    };
    let telemetry = match crate::telemetry::init(&config) {
        Ok(telemetry) => telemetry,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(CONFIGURATION_ERROR_EXIT_CODE));
        }
    };
    // Registered before the node starts so a signal during startup is not lost.
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;

    crate::allocator::purge_freed_memory_at_once();
    let running = spearlet_server::serve(config)
        .await
        .map_err(|error| anyhow::anyhow!("{}", error.message))?;
    let scheme = if running.tls { "https" } else { "http" };
    println!("spearlet listening on grpc://{}", running.grpc_addr);
    println!(
        "spearlet listening on {scheme}://{} (HTTP/JSON gateway, /metrics)",
        running.http_addr
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
    telemetry.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
