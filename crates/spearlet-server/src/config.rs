//! Node configuration: typed, documented, assembled once.
//!
//! Sources, later wins: built-in defaults → TOML file (`--config`) → `SPEARLET_*` environment →
//! command-line flags. The binary turns flags and environment into a [`ConfigOverrides`]; this
//! module owns the file format and the defaults. Unknown keys in the file are an error naming
//! the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use spearlet_core::{SpearError, SpearResult, TaskConfigDefaults};

/// The whole node configuration. Every field has a default; see `docs/CONFIG.md`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// gRPC listen address. Default `127.0.0.1:50052`.
    pub grpc_addr: SocketAddr,
    /// HTTP listen address, reserved for the HTTP/JSON gateway. Default `127.0.0.1:8081`.
    pub http_addr: SocketAddr,
    /// Where caches and (later) durable records live. Default `./spearlet-data`.
    pub data_dir: PathBuf,
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter directive.
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Register the bundled example functions as tasks at start when no task has their name.
    pub register_examples: bool,
    /// Largest gRPC request message accepted, in bytes. Larger → RESOURCE_EXHAUSTED.
    pub max_request_bytes: usize,
    /// Executions allowed to run at once across all tasks.
    pub max_concurrent_executions: usize,
    /// Executions allowed to wait for a run slot; beyond it → RESOURCE_EXHAUSTED.
    pub max_queue_length: usize,
    /// Execution records kept; beyond it the oldest terminal records are dropped.
    pub max_execution_records: usize,
    /// Terminal execution records older than this are dropped, in milliseconds (0 = never).
    pub execution_ttl_ms: u64,
    /// Async executions accepted and not yet ended; beyond it → RESOURCE_EXHAUSTED.
    pub max_async_pending: usize,
    /// The longest an async call with `wait = true` blocks, in milliseconds.
    pub max_wait_ms: u64,
    /// The most retries a call may ask for with `context.max_retries`.
    pub max_retries: u32,
    /// How long a graceful shutdown lets running calls finish, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// Node-wide defaults for the `spearlet.*` task keys.
    pub task_defaults: TaskDefaultsConfig,
    pub wasm: WasmConfig,
    pub artifacts: ArtifactsConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(text: &str) -> Result<LogFormat, String> {
        match text {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format {other:?} is not one of text, json")),
        }
    }
}

/// Defaults for the task keys of `docs/FUNCTIONS.md`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskDefaultsConfig {
    pub timeout_ms: u64,
    pub max_timeout_ms: u64,
    pub memory_limit_mb: u32,
    pub max_output_bytes: u64,
    pub max_log_bytes: u64,
}

impl Default for TaskDefaultsConfig {
    fn default() -> TaskDefaultsConfig {
        let defaults = TaskConfigDefaults::default();
        TaskDefaultsConfig {
            timeout_ms: defaults.timeout_ms,
            max_timeout_ms: defaults.max_timeout_ms,
            memory_limit_mb: defaults.memory_limit_mb,
            max_output_bytes: defaults.max_output_bytes,
            max_log_bytes: defaults.max_log_bytes,
        }
    }
}

impl TaskDefaultsConfig {
    pub fn to_task_config_defaults(&self) -> TaskConfigDefaults {
        TaskConfigDefaults {
            timeout_ms: self.timeout_ms,
            max_timeout_ms: self.max_timeout_ms,
            memory_limit_mb: self.memory_limit_mb,
            max_output_bytes: self.max_output_bytes,
            max_log_bytes: self.max_log_bytes,
        }
    }
}

/// The WebAssembly engine.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WasmConfig {
    /// Pooling-allocator slots: wasm instances alive at once (reserves address space, not RAM).
    pub max_instances: u32,
    /// Largest `spearlet.memory_limit_mb` a task may set, in MiB.
    pub max_memory_limit_mb: u32,
    /// Epoch tick in milliseconds: the granularity of timeouts and cancellation.
    pub epoch_tick_ms: u64,
}

impl Default for WasmConfig {
    fn default() -> WasmConfig {
        WasmConfig {
            max_instances: 1000,
            max_memory_limit_mb: 4096,
            epoch_tick_ms: 2,
        }
    }
}

/// Artifact fetching.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArtifactsConfig {
    /// Directories `file://` artifacts and WASI preopens may come from, besides the data dir.
    pub allowed_roots: Vec<PathBuf>,
    /// Largest artifact accepted, in bytes.
    pub max_artifact_bytes: u64,
    /// HTTP connect timeout in milliseconds.
    pub http_connect_timeout_ms: u64,
    /// HTTP total timeout per attempt in milliseconds.
    pub http_total_timeout_ms: u64,
    /// HTTP attempts on connection errors and 5xx answers.
    pub http_attempts: u32,
}

impl Default for ArtifactsConfig {
    fn default() -> ArtifactsConfig {
        ArtifactsConfig {
            allowed_roots: Vec::new(),
            max_artifact_bytes: 256 * 1024 * 1024,
            http_connect_timeout_ms: 5_000,
            http_total_timeout_ms: 60_000,
            http_attempts: 3,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        NodeConfig {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50052)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            data_dir: PathBuf::from("./spearlet-data"),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            register_examples: true,
            max_request_bytes: 8 * 1024 * 1024,
            max_concurrent_executions: 256,
            max_queue_length: 1024,
            max_execution_records: 100_000,
            execution_ttl_ms: 7 * 24 * 3_600_000,
            max_async_pending: 100_000,
            max_wait_ms: 60_000,
            max_retries: 5,
            shutdown_grace_ms: 10_000,
            task_defaults: TaskDefaultsConfig::default(),
            wasm: WasmConfig::default(),
            artifacts: ArtifactsConfig::default(),
        }
    }
}

/// Values from flags or environment; `Some` replaces what the file said.
#[derive(Clone, Debug, Default)]
pub struct ConfigOverrides {
    pub grpc_addr: Option<SocketAddr>,
    pub http_addr: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
    pub register_examples: Option<bool>,
}

impl NodeConfig {
    /// Defaults, then the file (when given), then the overrides; then validation.
    pub fn load(file: Option<&Path>, overrides: ConfigOverrides) -> SpearResult<NodeConfig> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| {
                    SpearError::invalid_argument(format!(
                        "reading config {}: {error}",
                        path.display()
                    ))
                })?;
                NodeConfig::from_toml(&text).map_err(|error| error.context(path.display()))?
            }
            None => NodeConfig::default(),
        };
        if let Some(value) = overrides.grpc_addr {
            config.grpc_addr = value;
        }
        if let Some(value) = overrides.http_addr {
            config.http_addr = value;
        }
        if let Some(value) = overrides.data_dir {
            config.data_dir = value;
        }
        if let Some(value) = overrides.log_level {
            config.log_level = value;
        }
        if let Some(value) = overrides.log_format {
            config.log_format = value;
        }
        if let Some(value) = overrides.register_examples {
            config.register_examples = value;
        }
        config.validate()?;
        Ok(config)
    }

    pub fn from_toml(text: &str) -> SpearResult<NodeConfig> {
        toml::from_str(text)
            .map_err(|error| SpearError::invalid_argument(format!("config: {}", error.message())))
            .and_then(|config: NodeConfig| config.validate().map(|()| config))
    }

    fn validate(&self) -> SpearResult<()> {
        let checks: [(&str, bool); 9] = [
            ("max_async_pending", self.max_async_pending > 0),
            ("max_queue_length", self.max_queue_length > 0),
            ("max_request_bytes", self.max_request_bytes > 0),
            (
                "max_concurrent_executions",
                self.max_concurrent_executions > 0,
            ),
            ("max_execution_records", self.max_execution_records > 0),
            ("wasm.max_instances", self.wasm.max_instances > 0),
            ("wasm.epoch_tick_ms", self.wasm.epoch_tick_ms > 0),
            (
                "task_defaults.timeout_ms",
                self.task_defaults.timeout_ms > 0
                    && self.task_defaults.timeout_ms <= self.task_defaults.max_timeout_ms,
            ),
            (
                "task_defaults.memory_limit_mb",
                self.task_defaults.memory_limit_mb > 0
                    && self.task_defaults.memory_limit_mb <= self.wasm.max_memory_limit_mb,
            ),
        ];
        for (key, valid) in checks {
            if !valid {
                return Err(SpearError::invalid_argument(format!(
                    "config: {key} is out of range"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let error = NodeConfig::from_toml("grpc_adr = \"127.0.0.1:1\"").unwrap_err();
        assert!(error.message.contains("grpc_adr"), "{}", error.message);
        let nested = NodeConfig::from_toml("[wasm]\nmax_instance = 3").unwrap_err();
        assert!(
            nested.message.contains("max_instance"),
            "{}",
            nested.message
        );
    }

    #[test]
    fn file_values_apply_and_overrides_win() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("spearlet.toml");
        std::fs::write(
            &path,
            "grpc_addr = \"127.0.0.1:7000\"\nlog_level = \"debug\"\n[task_defaults]\ntimeout_ms = 1000\n",
        )
        .unwrap();
        let config = NodeConfig::load(
            Some(&path),
            ConfigOverrides {
                log_level: Some("warn".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(config.grpc_addr.port(), 7000);
        assert_eq!(config.log_level, "warn");
        assert_eq!(config.task_defaults.timeout_ms, 1000);
        assert_eq!(config.max_request_bytes, 8 * 1024 * 1024);
    }

    #[test]
    fn out_of_range_values_are_named() {
        let error = NodeConfig::from_toml("[task_defaults]\nmemory_limit_mb = 999999").unwrap_err();
        assert!(error.message.contains("task_defaults.memory_limit_mb"));
    }
}
