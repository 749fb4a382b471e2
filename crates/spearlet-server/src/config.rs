//! Node configuration: typed, documented, assembled once.
//!
//! Sources, later wins: built-in defaults → TOML file (`--config`) → `SPEARLET_*` environment →
//! command-line flags. The binary turns flags and environment into a [`ConfigOverrides`]; this
//! module owns the file format and the defaults. Unknown keys in the file are an error naming
//! the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use spearlet_core::{
    AutoscaleSettings, Isolation, PoolSettings, SchedulingPolicy, SpearError, SpearResult,
    TaskConfigDefaults,
};

/// The whole node configuration. Every field has a default; see `docs/CONFIG.md`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// gRPC listen address. Default `127.0.0.1:50052`.
    pub grpc_addr: SocketAddr,
    /// HTTP/JSON gateway, `/metrics` and probes listen address. Default `127.0.0.1:8081`.
    pub http_addr: SocketAddr,
    /// Allow listening on a non-loopback address with neither `[auth]` tokens nor `[tls]`.
    /// Without it the node refuses to start in that setup.
    pub insecure: bool,
    /// Where the artifact and compiled-module caches, unpacked process artifacts and the
    /// SQLite record store (`spearlet.db`) live. Default `./spearlet-data`.
    pub data_dir: PathBuf,
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter directive.
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Register the bundled example functions as tasks at start when no task has their name.
    pub register_examples: bool,
    /// Largest request accepted (gRPC message or HTTP body), in bytes. Larger →
    /// RESOURCE_EXHAUSTED / 413.
    pub max_request_bytes: usize,
    /// Requests one client connection may have in flight at once (gRPC and HTTP/2 streams);
    /// more wait for a slot on that connection, other connections are unaffected.
    pub max_requests_per_connection: usize,
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
    /// Node-wide timing of the instance pools' background work.
    pub pool: PoolNodeConfig,
    /// Process tasks (`artifact_type` "process").
    pub process: ProcessNodeConfig,
    pub wasm: WasmConfig,
    pub artifacts: ArtifactsConfig,
    /// Bearer tokens; none configured = no authentication.
    pub auth: AuthConfig,
    /// TLS for both listeners; unset = plaintext.
    pub tls: Option<TlsConfig>,
    /// Trace export.
    pub telemetry: TelemetryConfig,
    /// Cluster mode over NATS JetStream; off while `cluster.nats_url` is empty.
    pub cluster: ClusterConfig,
    /// `[http_task_hosts]`: host name (without port) → task name. An HTTP request whose `Host`
    /// is one of these goes to that task's `wasi:http` handler with its whole path, as under
    /// `wasmtime serve`. Empty by default.
    pub http_task_hosts: BTreeMap<String, String>,
}

/// `[cluster]`: joining other nodes over NATS JetStream (`spearlet-cluster`). With no
/// `nats_url` the node is on its own and nothing here is used.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `nats://host:4222` (or `tls://`); comma-separated for several servers. Empty = no
    /// cluster.
    pub nats_url: String,
    /// This node's id in the cluster; empty = generated once and kept in
    /// `<data_dir>/cluster-node-id`.
    pub node_id: String,
    /// The gRPC URL peers dial to forward calls here (`http://10.0.0.5:50052`); empty = the
    /// bound gRPC address.
    pub advertise_addr: String,
    /// Prefix of every bucket, stream and subject, so two clusters can share a NATS server.
    pub name: String,
    /// NATS token authentication.
    pub token: Option<crate::auth::SecretToken>,
    /// NATS user/password authentication (with `password`).
    pub user: String,
    pub password: Option<crate::auth::SecretToken>,
    /// A PEM CA bundle to verify the NATS server's TLS certificate; setting it requires TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// A PEM CA bundle to verify peers' gRPC certificates when they serve TLS (`https://`
    /// advertise addresses); unset = the system roots.
    pub peer_ca_file: Option<PathBuf>,
    /// How often the node writes its heartbeat, in milliseconds. A heartbeat older than three
    /// intervals takes the node out of routing.
    pub heartbeat_interval_ms: u64,
    /// JetStream replicas of the cluster's buckets (3 on a three-server NATS cluster).
    pub replicas: usize,
    /// How long an async execution's node may go without acknowledging (it sends progress
    /// acks while it runs) before the queue redelivers the execution to another node, in
    /// milliseconds.
    pub ack_wait_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            nats_url: String::new(),
            node_id: String::new(),
            advertise_addr: String::new(),
            name: "spearlet".into(),
            token: None,
            user: String::new(),
            password: None,
            tls_ca_file: None,
            peer_ca_file: None,
            heartbeat_interval_ms: 1_000,
            replicas: 1,
            ack_wait_ms: 30_000,
        }
    }
}

impl ClusterConfig {
    pub fn is_enabled(&self) -> bool {
        !self.nats_url.trim().is_empty()
    }
}

/// `[auth]`: who may call the node.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub tokens: Vec<TokenConfig>,
}

/// One `[[auth.tokens]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The bearer token. Never logged (its `Debug` is redacted).
    pub token: crate::auth::SecretToken,
    /// `read`, `invoke` (includes read), `admin` (includes both). Default: all.
    #[serde(default = "all_scopes")]
    pub scopes: Vec<crate::auth::Scope>,
    /// Task names the token may touch: exact names, or prefixes ending in `*`. Empty: all.
    #[serde(default)]
    pub tasks: Vec<String>,
}

fn all_scopes() -> Vec<crate::auth::Scope> {
    vec![crate::auth::Scope::Admin]
}

/// `[tls]`: a PEM certificate chain and private key, used by the gRPC and the HTTP listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// `[telemetry]`: where spans go besides the log.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector endpoint (e.g. `http://127.0.0.1:4317`); empty = no export.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> TelemetryConfig {
        TelemetryConfig {
            otlp_endpoint: String::new(),
            service_name: "spearlet".into(),
        }
    }
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

/// Defaults for the task keys of `docs/FUNCTIONS.md`. The nesting mirrors the key names:
/// `spearlet.pool.max_instances` is `[task_defaults.pool] max_instances`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskDefaultsConfig {
    pub timeout_ms: u64,
    pub max_timeout_ms: u64,
    pub memory_limit_mb: u32,
    pub max_output_bytes: u64,
    pub max_log_bytes: u64,
    /// `spearlet.isolation`: `"per_call"` or `"reuse"`.
    #[serde(deserialize_with = "deserialize_isolation")]
    pub isolation: Isolation,
    /// `spearlet.pool.*`.
    pub pool: PoolDefaultsConfig,
    /// `spearlet.scheduler.*`.
    pub scheduler: SchedulerDefaultsConfig,
    /// `spearlet.autoscale.*`.
    pub autoscale: AutoscaleDefaultsConfig,
}

/// `[task_defaults.pool]`: defaults of the `spearlet.pool.*` keys.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolDefaultsConfig {
    /// Instances created at task load and kept warm.
    pub min_instances: u32,
    /// Instances a task's pool never exceeds; at least 1.
    pub max_instances: u32,
    /// Concurrent executions one instance serves; at least 1, exactly 1 with `reuse`.
    pub instance_capacity: u32,
    /// An instance idle this long is removed (down to `min_instances`), in milliseconds.
    pub idle_timeout_ms: u64,
    /// Calls before a `reuse` instance is recycled (0 = no limit).
    pub max_uses: u64,
}

/// `[task_defaults.scheduler]`: default of `spearlet.scheduler.policy`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerDefaultsConfig {
    /// `round_robin`, `least_connections`, `random`, `weighted_round_robin`,
    /// `least_response_time` or `resource_based`.
    #[serde(deserialize_with = "deserialize_scheduling_policy")]
    pub policy: SchedulingPolicy,
}

/// `[task_defaults.autoscale]`: defaults of the `spearlet.autoscale.*` keys.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoscaleDefaultsConfig {
    /// Concurrent executions one instance should carry (may be fractional); finite, > 0.
    pub target_concurrency: f64,
    /// Window of observed concurrency behind the stable desired count, in milliseconds.
    pub stable_window_ms: u64,
    /// Short window that reacts to bursts, in milliseconds; at most `stable_window_ms`.
    pub panic_window_ms: u64,
    /// Forecast arrivals and prewarm instances ahead of predicted demand.
    pub predictive: bool,
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
            isolation: defaults.pool.isolation,
            pool: PoolDefaultsConfig::default(),
            scheduler: SchedulerDefaultsConfig::default(),
            autoscale: AutoscaleDefaultsConfig::default(),
        }
    }
}

impl Default for PoolDefaultsConfig {
    fn default() -> PoolDefaultsConfig {
        let defaults = PoolSettings::default();
        PoolDefaultsConfig {
            min_instances: defaults.min_instances,
            max_instances: defaults.max_instances,
            instance_capacity: defaults.instance_capacity,
            idle_timeout_ms: defaults.idle_timeout_ms,
            max_uses: defaults.max_uses,
        }
    }
}

impl Default for SchedulerDefaultsConfig {
    fn default() -> SchedulerDefaultsConfig {
        SchedulerDefaultsConfig {
            policy: PoolSettings::default().scheduler_policy,
        }
    }
}

impl Default for AutoscaleDefaultsConfig {
    fn default() -> AutoscaleDefaultsConfig {
        let defaults = AutoscaleSettings::default();
        AutoscaleDefaultsConfig {
            target_concurrency: defaults.target_concurrency,
            stable_window_ms: defaults.stable_window_ms,
            panic_window_ms: defaults.panic_window_ms,
            predictive: defaults.predictive,
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
            pool: self.to_pool_settings(),
        }
    }

    pub fn to_pool_settings(&self) -> PoolSettings {
        PoolSettings {
            isolation: self.isolation,
            min_instances: self.pool.min_instances,
            max_instances: self.pool.max_instances,
            instance_capacity: self.pool.instance_capacity,
            idle_timeout_ms: self.pool.idle_timeout_ms,
            max_uses: self.pool.max_uses,
            scheduler_policy: self.scheduler.policy,
            autoscale: AutoscaleSettings {
                target_concurrency: self.autoscale.target_concurrency,
                stable_window_ms: self.autoscale.stable_window_ms,
                panic_window_ms: self.autoscale.panic_window_ms,
                predictive: self.autoscale.predictive,
            },
        }
    }
}

/// Reads `task_defaults.isolation`; a bad value is an error naming the key and the choices.
fn deserialize_isolation<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Isolation, D::Error> {
    let text = String::deserialize(deserializer)?;
    Isolation::parse(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "task_defaults.isolation = {text:?} is not one of per_call, reuse"
        ))
    })
}

/// Reads `task_defaults.scheduler.policy`; a bad value is an error naming the key and the
/// choices.
fn deserialize_scheduling_policy<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<SchedulingPolicy, D::Error> {
    let text = String::deserialize(deserializer)?;
    SchedulingPolicy::parse(&text).ok_or_else(|| {
        let policy_names = SchedulingPolicy::ALL.map(SchedulingPolicy::as_str);
        serde::de::Error::custom(format!(
            "task_defaults.scheduler.policy = {text:?} is not one of {}",
            policy_names.join(", ")
        ))
    })
}

/// `[pool]`: how often the node's background pool work runs. These apply to every task.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolNodeConfig {
    /// How often idle instances are health-checked, in milliseconds; failing ones are drained
    /// and replaced.
    pub health_check_interval_ms: u64,
    /// How often the autoscaler samples concurrency and arrivals and acts, in milliseconds.
    pub autoscale_tick_ms: u64,
    /// A waiting call gains one priority level per this many milliseconds waited, so low
    /// priority cannot starve.
    pub priority_aging_ms: u64,
}

impl Default for PoolNodeConfig {
    fn default() -> PoolNodeConfig {
        PoolNodeConfig {
            // 10 s: a broken instance is found well before its idle timeout (60 s) would drop it.
            health_check_interval_ms: 10_000,
            // 1 s: the per-second arrival series the predictor forecasts from, and fast enough
            // that the 6 s panic window sees several samples.
            autoscale_tick_ms: 1_000,
            // 1 s: a low-priority call (1) overtakes fresh high-priority calls (9) within ~8 s.
            priority_aging_ms: 1_000,
        }
    }
}

/// `[process]`: node-wide settings of process tasks.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessNodeConfig {
    /// The user (`uid`, `uid:gid` or a name) function processes run as when a task sets no
    /// `spearlet.process.run_as`. Unset: the node's own user. Running as root, set it: the
    /// process-count limit (RLIMIT_NPROC) does not bind root.
    pub run_as: Option<String>,
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
            insecure: false,
            data_dir: PathBuf::from("./spearlet-data"),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            register_examples: true,
            max_request_bytes: 8 * 1024 * 1024,
            max_requests_per_connection: 1024,
            max_concurrent_executions: 256,
            max_queue_length: 1024,
            max_execution_records: 100_000,
            execution_ttl_ms: 7 * 24 * 3_600_000,
            max_async_pending: 100_000,
            max_wait_ms: 60_000,
            max_retries: 5,
            shutdown_grace_ms: 10_000,
            task_defaults: TaskDefaultsConfig::default(),
            pool: PoolNodeConfig::default(),
            process: ProcessNodeConfig::default(),
            wasm: WasmConfig::default(),
            artifacts: ArtifactsConfig::default(),
            auth: AuthConfig::default(),
            tls: None,
            telemetry: TelemetryConfig::default(),
            cluster: ClusterConfig::default(),
            http_task_hosts: BTreeMap::new(),
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
    pub insecure: Option<bool>,
    /// Tokens with every scope and task (`SPEARLET_AUTH_TOKENS`), added to the file's.
    pub auth_tokens: Vec<crate::auth::SecretToken>,
    pub tls: Option<TlsConfig>,
    pub otlp_endpoint: Option<String>,
    /// `--cluster-nats` / `SPEARLET_CLUSTER_NATS_URL`: `cluster.nats_url`.
    pub cluster_nats_url: Option<String>,
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
        if let Some(value) = overrides.insecure {
            config.insecure = value;
        }
        config
            .auth
            .tokens
            .extend(overrides.auth_tokens.into_iter().map(|token| TokenConfig {
                token,
                scopes: all_scopes(),
                tasks: Vec::new(),
            }));
        if let Some(value) = overrides.tls {
            config.tls = Some(value);
        }
        if let Some(value) = overrides.otlp_endpoint {
            config.telemetry.otlp_endpoint = value;
        }
        if let Some(value) = overrides.cluster_nats_url {
            config.cluster.nats_url = value;
        }
        config.validate()?;
        Ok(config)
    }

    fn validate_cluster(&self) -> SpearResult<()> {
        let cluster = &self.cluster;
        if !cluster.is_enabled() {
            return Ok(());
        }
        if cluster.replicas == 0 || cluster.replicas > 5 {
            return Err(SpearError::invalid_argument(
                "config: cluster.replicas must be 1 to 5",
            ));
        }
        if cluster.ack_wait_ms < 300 {
            return Err(SpearError::invalid_argument(
                "config: cluster.ack_wait_ms must be at least 300",
            ));
        }
        if cluster.heartbeat_interval_ms == 0 {
            return Err(SpearError::invalid_argument(
                "config: cluster.heartbeat_interval_ms is out of range",
            ));
        }
        if cluster.name.is_empty()
            || !cluster
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(SpearError::invalid_argument(format!(
                "config: cluster.name {:?} must be letters, digits, - and _ (it prefixes NATS \
                 bucket and stream names)",
                cluster.name
            )));
        }
        if !cluster.node_id.is_empty() {
            spearlet_core::ids::validate_id("config: cluster.node_id", &cluster.node_id)?;
        }
        if cluster.password.is_some() == cluster.user.is_empty() {
            return Err(SpearError::invalid_argument(
                "config: cluster.user and cluster.password go together",
            ));
        }
        let advertise_addr = &cluster.advertise_addr;
        let is_url =
            advertise_addr.starts_with("http://") || advertise_addr.starts_with("https://");
        if !advertise_addr.is_empty() && !is_url {
            return Err(SpearError::invalid_argument(format!(
                "config: cluster.advertise_addr {:?} must be an http:// or https:// URL",
                cluster.advertise_addr
            )));
        }
        Ok(())
    }

    pub fn from_toml(text: &str) -> SpearResult<NodeConfig> {
        toml::from_str(text)
            .map_err(|error| SpearError::invalid_argument(format!("config: {}", error.message())))
            .and_then(|config: NodeConfig| config.validate().map(|()| config))
    }

    /// Every rule the file and the overrides must satisfy; `serve` checks it again for configs
    /// built in code.
    pub fn validate(&self) -> SpearResult<()> {
        for (host, task) in &self.http_task_hosts {
            let is_host_name = !host.is_empty()
                && host.chars().all(|c| {
                    c.is_ascii_lowercase()
                        || c.is_ascii_digit()
                        || matches!(c, '.' | '-' | '[' | ']' | ':')
                });
            if !is_host_name {
                return Err(SpearError::invalid_argument(format!(
                    "config: http_task_hosts key {host:?} must be a lower-case host name without \
                     a port"
                )));
            }
            spearlet_core::ids::validate_task_name(
                &format!("config: http_task_hosts[{host:?}]"),
                task,
            )?;
        }
        let task_defaults = &self.task_defaults;
        let pool_defaults = &task_defaults.pool;
        let autoscale_defaults = &task_defaults.autoscale;
        let checks: [(&str, bool); 20] = [
            (
                "max_requests_per_connection",
                self.max_requests_per_connection > 0,
            ),
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
            // The rules of `PoolSettings::validate`, named by their key in this file.
            (
                "task_defaults.pool.max_instances",
                pool_defaults.max_instances > 0,
            ),
            (
                "task_defaults.pool.min_instances",
                pool_defaults.min_instances <= pool_defaults.max_instances,
            ),
            (
                "task_defaults.pool.instance_capacity",
                pool_defaults.instance_capacity > 0,
            ),
            (
                "task_defaults.pool.idle_timeout_ms",
                pool_defaults.idle_timeout_ms > 0,
            ),
            (
                "task_defaults.autoscale.target_concurrency",
                autoscale_defaults.target_concurrency.is_finite()
                    && autoscale_defaults.target_concurrency > 0.0,
            ),
            (
                "task_defaults.autoscale.stable_window_ms",
                autoscale_defaults.stable_window_ms > 0,
            ),
            (
                "task_defaults.autoscale.panic_window_ms",
                autoscale_defaults.panic_window_ms > 0
                    && autoscale_defaults.panic_window_ms <= autoscale_defaults.stable_window_ms,
            ),
            (
                "pool.health_check_interval_ms",
                self.pool.health_check_interval_ms > 0,
            ),
            ("pool.autoscale_tick_ms", self.pool.autoscale_tick_ms > 0),
            ("pool.priority_aging_ms", self.pool.priority_aging_ms > 0),
        ];
        for (key, valid) in checks {
            if !valid {
                return Err(SpearError::invalid_argument(format!(
                    "config: {key} is out of range"
                )));
            }
        }
        if task_defaults.isolation == Isolation::Reuse && pool_defaults.instance_capacity != 1 {
            return Err(SpearError::invalid_argument(format!(
                "config: task_defaults.pool.instance_capacity = {} must be 1 with \
                 task_defaults.isolation = \"reuse\": a reused wasm instance runs one call at \
                 a time",
                pool_defaults.instance_capacity
            )));
        }
        self.validate_cluster()?;
        for (index, token) in self.auth.tokens.iter().enumerate() {
            if token.token.expose().is_empty() {
                return Err(SpearError::invalid_argument(format!(
                    "config: auth.tokens[{index}].token must not be empty"
                )));
            }
            if token.scopes.is_empty() {
                return Err(SpearError::invalid_argument(format!(
                    "config: auth.tokens[{index}].scopes must name at least one of read, \
                     invoke, admin"
                )));
            }
        }
        self.check_exposure()?;
        // Every rule of `PoolSettings::validate` is checked above under its name in this file;
        // this also enforces any rule added to it later.
        task_defaults
            .to_pool_settings()
            .validate("task_defaults")
            .map_err(|error| error.context("config"))?;
        Ok(())
    }
}

impl NodeConfig {
    /// Refuses a listener on a non-loopback address when nothing protects it: no tokens, no
    /// TLS and no `insecure`.
    fn check_exposure(&self) -> SpearResult<()> {
        if self.insecure || !self.auth.tokens.is_empty() || self.tls.is_some() {
            return Ok(());
        }
        for (key, address) in [("grpc_addr", self.grpc_addr), ("http_addr", self.http_addr)] {
            if !address.ip().is_loopback() {
                return Err(SpearError::invalid_argument(format!(
                    "config: {key} {address} is reachable from other machines, but no \
                     [auth] tokens and no [tls] are configured, so anyone who can reach it could \
                     run code here; configure tokens (SPEARLET_AUTH_TOKENS) or TLS, bind \
                     127.0.0.1, or pass --insecure to accept the risk"
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
    fn the_cluster_section_is_off_by_default_and_checked_when_on() {
        assert!(!NodeConfig::default().cluster.is_enabled());
        let config = NodeConfig::from_toml(
            "[cluster]\nnats_url = \"nats://127.0.0.1:4222\"\nnode_id = \"edge-1\"\n\
             token = \"s3cret\"\nreplicas = 3",
        )
        .unwrap();
        assert!(config.cluster.is_enabled());
        assert_eq!(config.cluster.node_id, "edge-1");
        assert_eq!(config.cluster.replicas, 3);
        assert!(
            !format!("{config:?}").contains("s3cret"),
            "the token is redacted"
        );
        let table = [
            ("name = \"a.b\"", "cluster.name"),
            ("node_id = \"has space\"", "cluster.node_id"),
            ("user = \"u\"", "cluster.user"),
            (
                "advertise_addr = \"10.0.0.1:50052\"",
                "cluster.advertise_addr",
            ),
            ("heartbeat_interval_ms = 0", "cluster.heartbeat_interval_ms"),
            ("replicas = 0", "cluster.replicas"),
        ];
        for (line, key) in table {
            let error = NodeConfig::from_toml(&format!(
                "[cluster]\nnats_url = \"nats://127.0.0.1:4222\"\n{line}"
            ))
            .unwrap_err();
            assert!(error.message.contains(key), "{line}: {}", error.message);
        }
    }

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

    #[test]
    fn pool_sections_parse_into_task_defaults() {
        let config = NodeConfig::from_toml(
            r#"
[task_defaults]
isolation = "reuse"

[task_defaults.pool]
min_instances = 2
max_instances = 8
instance_capacity = 1
idle_timeout_ms = 30000
max_uses = 500

[task_defaults.scheduler]
policy = "least_response_time"

[task_defaults.autoscale]
target_concurrency = 0.7
stable_window_ms = 30000
panic_window_ms = 3000
predictive = false

[pool]
health_check_interval_ms = 5000
autoscale_tick_ms = 250
priority_aging_ms = 2000
"#,
        )
        .unwrap();
        let expected_pool_settings = PoolSettings {
            isolation: Isolation::Reuse,
            min_instances: 2,
            max_instances: 8,
            instance_capacity: 1,
            idle_timeout_ms: 30_000,
            max_uses: 500,
            scheduler_policy: SchedulingPolicy::LeastResponseTime,
            autoscale: AutoscaleSettings {
                target_concurrency: 0.7,
                stable_window_ms: 30_000,
                panic_window_ms: 3_000,
                predictive: false,
            },
        };
        assert_eq!(
            config.task_defaults.to_task_config_defaults().pool,
            expected_pool_settings
        );
        assert_eq!(config.pool.health_check_interval_ms, 5000);
        assert_eq!(config.pool.autoscale_tick_ms, 250);
        assert_eq!(config.pool.priority_aging_ms, 2000);
    }

    #[test]
    fn pool_defaults_match_the_task_defaults() {
        let config = NodeConfig::from_toml("").unwrap();
        assert_eq!(
            config.task_defaults.to_task_config_defaults(),
            TaskConfigDefaults::default()
        );
        assert_eq!(config.pool.health_check_interval_ms, 10_000);
        assert_eq!(config.pool.autoscale_tick_ms, 1_000);
        assert_eq!(config.pool.priority_aging_ms, 1_000);
        // A partial section keeps the defaults of the keys it leaves out.
        let partial = NodeConfig::from_toml("[task_defaults.pool]\nmax_uses = 3").unwrap();
        assert_eq!(partial.task_defaults.pool.max_uses, 3);
        assert_eq!(
            partial.task_defaults.pool.max_instances,
            PoolSettings::default().max_instances
        );
    }

    #[test]
    fn bad_pool_settings_are_rejected_by_name() {
        let table: &[(&str, &str)] = &[
            ("[task_defaults.pool]\nmax_instance = 3", "max_instance"),
            (
                "[task_defaults.scheduler]\npolicy = \"fastest\"",
                "task_defaults.scheduler.policy",
            ),
            ("[task_defaults.scheduler]\nweight = 2", "weight"),
            ("[task_defaults.autoscale]\npredictiv = true", "predictiv"),
            (
                "[task_defaults]\nisolation = \"shared\"",
                "task_defaults.isolation",
            ),
            ("[pool]\nhealth_check_ms = 5", "health_check_ms"),
            (
                "[task_defaults.pool]\nmax_instances = 0",
                "task_defaults.pool.max_instances",
            ),
            (
                "[task_defaults.pool]\nmin_instances = 9\nmax_instances = 4",
                "task_defaults.pool.min_instances",
            ),
            (
                "[task_defaults.pool]\ninstance_capacity = 0",
                "task_defaults.pool.instance_capacity",
            ),
            (
                "[task_defaults]\nisolation = \"reuse\"\n[task_defaults.pool]\ninstance_capacity = 2",
                "task_defaults.pool.instance_capacity",
            ),
            (
                "[task_defaults.pool]\nidle_timeout_ms = 0",
                "task_defaults.pool.idle_timeout_ms",
            ),
            (
                "[task_defaults.autoscale]\ntarget_concurrency = 0.0",
                "task_defaults.autoscale.target_concurrency",
            ),
            (
                "[task_defaults.autoscale]\ntarget_concurrency = inf",
                "task_defaults.autoscale.target_concurrency",
            ),
            (
                "[task_defaults.autoscale]\nstable_window_ms = 0\npanic_window_ms = 0",
                "task_defaults.autoscale.stable_window_ms",
            ),
            (
                "[task_defaults.autoscale]\nstable_window_ms = 1000\npanic_window_ms = 2000",
                "task_defaults.autoscale.panic_window_ms",
            ),
            (
                "[pool]\nhealth_check_interval_ms = 0",
                "pool.health_check_interval_ms",
            ),
            ("[pool]\nautoscale_tick_ms = 0", "pool.autoscale_tick_ms"),
            ("[pool]\npriority_aging_ms = 0", "pool.priority_aging_ms"),
        ];
        for (text, named) in table {
            let error = NodeConfig::from_toml(text).unwrap_err();
            assert_eq!(
                error.kind,
                spearlet_core::ErrorKind::InvalidArgument,
                "{text}"
            );
            assert!(error.message.contains(named), "{text}: {}", error.message);
        }
    }
}
