//! Task configuration: the `spearlet.*` keys of `ArtifactSpec.metadata`.
//!
//! The wire contract has no task-configuration message, so NEW_TASK and CreateTask carry
//! configuration as metadata keys with the `spearlet.` prefix; every other key is a plain label.
//! An unknown or malformed `spearlet.*` key is an error naming the key: a typo must never be
//! silently ignored. Every key is documented in `docs/FUNCTIONS.md`.

use std::collections::BTreeMap;

use crate::error::{SpearError, SpearResult};
use crate::outbound_hosts::{ALLOWED_HOSTS_KEY, AllowedOutboundHosts};
use crate::pool_settings::{Isolation, PoolSettings, SchedulingPolicy};
use crate::process_settings::{PROCESS_DEFAULT_MEMORY_LIMIT_MB, ProcessMode, ProcessSettings};

/// The prefix that marks a metadata key as configuration.
pub const CONFIG_KEY_PREFIX: &str = "spearlet.";
const ENV_KEY_PREFIX: &str = "spearlet.env.";
const PREOPEN_KEY_PREFIX: &str = "spearlet.wasi.preopen.";

/// Node-wide defaults for the task keys, from the node configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskConfigDefaults {
    pub timeout_ms: u64,
    pub max_timeout_ms: u64,
    pub memory_limit_mb: u32,
    pub max_output_bytes: u64,
    pub max_log_bytes: u64,
    /// Defaults of `spearlet.isolation`, `spearlet.pool.*`, `spearlet.scheduler.policy` and
    /// `spearlet.autoscale.*`.
    pub pool: PoolSettings,
}

impl Default for TaskConfigDefaults {
    fn default() -> TaskConfigDefaults {
        TaskConfigDefaults {
            // 30 s: long enough for real work, short enough that a stuck call frees its slot.
            timeout_ms: 30_000,
            // 15 min: the longest a single call may ask for (Lambda's ceiling).
            max_timeout_ms: 900_000,
            // 128 MiB of linear memory: Lambda's smallest size, plenty for typical guests.
            memory_limit_mb: 128,
            // 6 MiB: Lambda's synchronous response limit.
            max_output_bytes: 6 * 1024 * 1024,
            // 1 MiB of stderr per call.
            max_log_bytes: 1024 * 1024,
            // Each default is justified in `pool_settings.rs`.
            pool: PoolSettings::default(),
        }
    }
}

/// The resolved configuration of one task.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskConfig {
    /// Default timeout of a call that sets no `context.timeout_ms`, in milliseconds.
    pub timeout_ms: u64,
    /// Cap on a call's `context.timeout_ms`, in milliseconds.
    pub max_timeout_ms: u64,
    /// Linear-memory cap of a wasm instance, in MiB.
    pub memory_limit_mb: u32,
    /// Cap on a call's stdout, in bytes.
    pub max_output_bytes: u64,
    /// Cap on a call's stderr, in bytes.
    pub max_log_bytes: u64,
    /// Environment variables every call sees (`spearlet.env.<NAME>`).
    pub environment: BTreeMap<String, String>,
    /// Read-only directories, guest path → host path (`spearlet.wasi.preopen.<guest_dir>`).
    /// Host paths are checked against the allowed roots by the node, which owns the filesystem.
    pub preopened_directories: BTreeMap<String, String>,
    /// Isolation, pool bounds, scheduling policy and autoscaling of the task's instances.
    pub pool: PoolSettings,
    /// The `spearlet.process.*` keys (process tasks only; the registry rejects them elsewhere).
    pub process: ProcessSettings,
    /// `spearlet.http.allowed_hosts`: where a wasm component may send outbound HTTP (nowhere by
    /// default).
    pub allowed_outbound_hosts: AllowedOutboundHosts,
}

/// Which runtime a task's artifact runs on; decides which keys apply and some defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeKind {
    Wasm,
    Process,
}

impl RuntimeKind {
    /// Every runtime a node runs tasks on.
    pub const ALL: [RuntimeKind; 2] = [RuntimeKind::Wasm, RuntimeKind::Process];

    /// The artifact types each runtime accepts, canonical name first (`""` means wasm).
    const ARTIFACT_TYPES: [(&'static str, RuntimeKind); 5] = [
        ("wasm", RuntimeKind::Wasm),
        ("", RuntimeKind::Wasm),
        ("process", RuntimeKind::Process),
        ("binary", RuntimeKind::Process),
        ("executable", RuntimeKind::Process),
    ];

    /// The canonical `artifact_type` of the runtime, as task records store it.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Wasm => "wasm",
            RuntimeKind::Process => "process",
        }
    }

    /// The runtime of `artifact_spec.artifact_type`, or INVALID_ARGUMENT naming the types
    /// accepted.
    pub fn of_artifact_type(artifact_type: &str) -> SpearResult<RuntimeKind> {
        RuntimeKind::ARTIFACT_TYPES
            .iter()
            .find(|(name, _)| *name == artifact_type)
            .map(|(_, kind)| *kind)
            .ok_or_else(|| {
                let supported: Vec<&str> = RuntimeKind::ARTIFACT_TYPES
                    .iter()
                    .map(|(name, _)| *name)
                    .filter(|name| !name.is_empty())
                    .collect();
                SpearError::invalid_argument(format!(
                    "artifact_spec.artifact_type {artifact_type:?} is not supported; supported \
                     types: {}",
                    supported.join(", ")
                ))
            })
    }
}

impl TaskConfig {
    /// Resolves a task's configuration for its runtime: refuses keys of the other runtime by
    /// name, records a lambda task's handler (`default_handler` when the task names none) in
    /// `metadata` so it is stored, restored and compared with the rest, and applies the process
    /// runtime's defaults and rules (its own memory default; a lambda worker serves one
    /// invocation at a time and keeps its state between them).
    pub fn for_runtime(
        metadata: &mut BTreeMap<String, String>,
        runtime: RuntimeKind,
        default_handler: &str,
        defaults: &TaskConfigDefaults,
    ) -> SpearResult<TaskConfig> {
        check_keys_fit_the_runtime(metadata, runtime)?;
        if runtime == RuntimeKind::Process
            && metadata
                .get("spearlet.process.mode")
                .is_some_and(|mode| mode == "lambda")
            && !metadata.contains_key("spearlet.process.handler")
        {
            metadata.insert(
                "spearlet.process.handler".into(),
                default_handler.to_owned(),
            );
        }
        let mut config = TaskConfig::from_metadata(metadata.iter(), defaults)?;
        if runtime == RuntimeKind::Process {
            if !metadata.contains_key("spearlet.memory_limit_mb") {
                config.memory_limit_mb = PROCESS_DEFAULT_MEMORY_LIMIT_MB;
            }
            if config.process.mode == ProcessMode::Lambda {
                if config.pool.instance_capacity != 1 {
                    return Err(SpearError::invalid_argument(format!(
                        "artifact_spec.metadata[\"spearlet.pool.instance_capacity\"] = {} needs \
                         spearlet.process.mode = exec: a lambda worker serves one invocation at a \
                         time",
                        config.pool.instance_capacity
                    )));
                }
                config.pool.isolation = Isolation::Reuse;
            }
        }
        Ok(config)
    }

    /// Resolves the `spearlet.*` keys of `metadata` over `defaults`.
    pub fn from_metadata<'a>(
        metadata: impl IntoIterator<Item = (&'a String, &'a String)>,
        defaults: &TaskConfigDefaults,
    ) -> SpearResult<TaskConfig> {
        let mut config = TaskConfig {
            timeout_ms: defaults.timeout_ms,
            max_timeout_ms: defaults.max_timeout_ms,
            memory_limit_mb: defaults.memory_limit_mb,
            max_output_bytes: defaults.max_output_bytes,
            max_log_bytes: defaults.max_log_bytes,
            environment: BTreeMap::new(),
            preopened_directories: BTreeMap::new(),
            pool: defaults.pool,
            process: ProcessSettings::default(),
            allowed_outbound_hosts: AllowedOutboundHosts::default(),
        };
        for (key, value) in metadata {
            if !key.starts_with(CONFIG_KEY_PREFIX) {
                continue;
            }
            if let Some(name) = key.strip_prefix(ENV_KEY_PREFIX) {
                validate_environment_name(key, name)?;
                config.environment.insert(name.to_owned(), value.clone());
                continue;
            }
            if let Some(guest_directory) = key.strip_prefix(PREOPEN_KEY_PREFIX) {
                if guest_directory.is_empty() || value.is_empty() {
                    return Err(SpearError::invalid_argument(format!(
                        "artifact_spec.metadata[{key:?}]: needs a guest directory after the \
                         prefix and a host directory as the value"
                    )));
                }
                config
                    .preopened_directories
                    .insert(guest_directory.to_owned(), value.clone());
                continue;
            }
            match key.as_str() {
                "spearlet.timeout_ms" => config.timeout_ms = parse_positive(key, value)?,
                "spearlet.max_timeout_ms" => config.max_timeout_ms = parse_positive(key, value)?,
                "spearlet.memory_limit_mb" => {
                    config.memory_limit_mb = u32::try_from(parse_positive(key, value)?)
                        .map_err(|_| out_of_range(key, value))?;
                }
                "spearlet.max_output_bytes" => {
                    config.max_output_bytes = parse_positive(key, value)?;
                }
                "spearlet.max_log_bytes" => config.max_log_bytes = parse_positive(key, value)?,
                "spearlet.isolation" => {
                    config.pool.isolation = Isolation::parse(value.trim())
                        .ok_or_else(|| not_one_of(key, value, &["per_call", "reuse"]))?;
                }
                "spearlet.pool.min_instances" => {
                    config.pool.min_instances =
                        narrow_to_u32(key, value, parse_unsigned(key, value)?)?;
                }
                "spearlet.pool.max_instances" => {
                    config.pool.max_instances =
                        narrow_to_u32(key, value, parse_positive(key, value)?)?;
                }
                "spearlet.pool.instance_capacity" => {
                    config.pool.instance_capacity =
                        narrow_to_u32(key, value, parse_positive(key, value)?)?;
                }
                "spearlet.pool.idle_timeout_ms" => {
                    config.pool.idle_timeout_ms = parse_positive(key, value)?;
                }
                "spearlet.pool.max_uses" => config.pool.max_uses = parse_unsigned(key, value)?,
                "spearlet.scheduler.policy" => {
                    config.pool.scheduler_policy = SchedulingPolicy::parse(value.trim())
                        .ok_or_else(|| {
                            let policy_names = SchedulingPolicy::ALL.map(SchedulingPolicy::as_str);
                            not_one_of(key, value, &policy_names)
                        })?;
                }
                "spearlet.autoscale.target_concurrency" => {
                    config.pool.autoscale.target_concurrency = parse_positive_number(key, value)?;
                }
                "spearlet.autoscale.stable_window_ms" => {
                    config.pool.autoscale.stable_window_ms = parse_positive(key, value)?;
                }
                "spearlet.autoscale.panic_window_ms" => {
                    config.pool.autoscale.panic_window_ms = parse_positive(key, value)?;
                }
                "spearlet.autoscale.predictive" => {
                    config.pool.autoscale.predictive = match value.trim() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(not_one_of(key, value, &["true", "false"])),
                    };
                }
                ALLOWED_HOSTS_KEY => {
                    config.allowed_outbound_hosts = AllowedOutboundHosts::parse(value)?;
                }
                "spearlet.process.mode" => {
                    config.process.mode = ProcessMode::parse(value.trim())
                        .ok_or_else(|| not_one_of(key, value, &["exec", "lambda"]))?;
                }
                "spearlet.process.entrypoint" => {
                    config.process.entrypoint = non_empty(key, value)?;
                }
                "spearlet.process.format" => {
                    let format = value.trim();
                    if !["auto", "exe", "zip", "tar.gz"].contains(&format) {
                        return Err(not_one_of(key, value, &["auto", "exe", "zip", "tar.gz"]));
                    }
                    config.process.format = format.to_owned();
                }
                "spearlet.process.handler" => {
                    config.process.handler = Some(non_empty(key, value)?);
                }
                "spearlet.process.max_pids" => {
                    config.process.max_pids =
                        narrow_to_u32(key, value, parse_positive(key, value)?)?;
                }
                "spearlet.process.address_space_mb" => {
                    config.process.address_space_mb = parse_unsigned(key, value)?;
                }
                "spearlet.process.cpu_seconds" => {
                    config.process.cpu_seconds = parse_unsigned(key, value)?;
                }
                "spearlet.process.max_open_files" => {
                    config.process.max_open_files = parse_positive(key, value)?;
                }
                "spearlet.process.run_as" => {
                    config.process.run_as = Some(non_empty(key, value)?);
                }
                "spearlet.process.init_timeout_ms" => {
                    config.process.init_timeout_ms = parse_positive(key, value)?;
                }
                _ => {
                    return Err(SpearError::invalid_argument(format!(
                        "artifact_spec.metadata[{key:?}] is not a known spearlet key; known keys: \
                         {}",
                        KNOWN_KEYS.join(", ")
                    )));
                }
            }
        }
        if config.timeout_ms > config.max_timeout_ms {
            return Err(SpearError::invalid_argument(format!(
                "artifact_spec.metadata[\"spearlet.timeout_ms\"] = {} exceeds \
                 spearlet.max_timeout_ms = {}",
                config.timeout_ms, config.max_timeout_ms
            )));
        }
        config.pool.validate("artifact_spec.metadata")?;
        Ok(config)
    }

    /// The timeout of one call: the requested one (0 = none requested) capped by
    /// `max_timeout_ms`, else the task default.
    pub fn effective_timeout_ms(&self, requested_timeout_ms: i64) -> u64 {
        if requested_timeout_ms <= 0 {
            return self.timeout_ms;
        }
        (requested_timeout_ms as u64).min(self.max_timeout_ms)
    }
}

/// The configuration keys of a metadata map, for comparing two registrations of a task.
pub fn configuration_keys<'a>(
    metadata: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> BTreeMap<String, String> {
    metadata
        .into_iter()
        .filter(|(key, _)| key.starts_with(CONFIG_KEY_PREFIX))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

const KNOWN_KEYS: &[&str] = &[
    "spearlet.timeout_ms",
    "spearlet.max_timeout_ms",
    "spearlet.memory_limit_mb",
    "spearlet.max_output_bytes",
    "spearlet.max_log_bytes",
    "spearlet.isolation",
    "spearlet.pool.min_instances",
    "spearlet.pool.max_instances",
    "spearlet.pool.instance_capacity",
    "spearlet.pool.idle_timeout_ms",
    "spearlet.pool.max_uses",
    "spearlet.scheduler.policy",
    "spearlet.autoscale.target_concurrency",
    "spearlet.autoscale.stable_window_ms",
    "spearlet.autoscale.panic_window_ms",
    "spearlet.autoscale.predictive",
    ALLOWED_HOSTS_KEY,
    "spearlet.process.mode",
    "spearlet.process.entrypoint",
    "spearlet.process.format",
    "spearlet.process.handler",
    "spearlet.process.max_pids",
    "spearlet.process.address_space_mb",
    "spearlet.process.cpu_seconds",
    "spearlet.process.max_open_files",
    "spearlet.process.run_as",
    "spearlet.process.init_timeout_ms",
    "spearlet.env.<NAME>",
    "spearlet.wasi.preopen.<guest_dir>",
];

fn non_empty(key: &str, value: &str) -> SpearResult<String> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(SpearError::invalid_argument(format!(
            "artifact_spec.metadata[{key:?}] must not be empty"
        )));
    }
    Ok(trimmed.to_owned())
}

fn parse_positive(key: &str, value: &str) -> SpearResult<u64> {
    match value.trim().parse::<u64>() {
        Ok(0) => Err(SpearError::invalid_argument(format!(
            "artifact_spec.metadata[{key:?}] must be greater than 0"
        ))),
        Ok(number) => Ok(number),
        Err(_) => Err(SpearError::invalid_argument(format!(
            "artifact_spec.metadata[{key:?}] = {value:?} is not a non-negative integer"
        ))),
    }
}

/// A non-negative integer where 0 is meaningful (`min_instances`, `max_uses`).
fn parse_unsigned(key: &str, value: &str) -> SpearResult<u64> {
    value.trim().parse::<u64>().map_err(|_| {
        SpearError::invalid_argument(format!(
            "artifact_spec.metadata[{key:?}] = {value:?} is not a non-negative integer"
        ))
    })
}

/// A finite number greater than 0, fractions allowed (`autoscale.target_concurrency`).
fn parse_positive_number(key: &str, value: &str) -> SpearResult<f64> {
    match value.trim().parse::<f64>() {
        Ok(number) if number.is_finite() && number > 0.0 => Ok(number),
        _ => Err(SpearError::invalid_argument(format!(
            "artifact_spec.metadata[{key:?}] = {value:?} is not a finite number greater than 0"
        ))),
    }
}

fn narrow_to_u32(key: &str, value: &str, number: u64) -> SpearResult<u32> {
    u32::try_from(number).map_err(|_| out_of_range(key, value))
}

fn not_one_of(key: &str, value: &str, accepted_values: &[&str]) -> SpearError {
    SpearError::invalid_argument(format!(
        "artifact_spec.metadata[{key:?}] = {value:?} is not one of {}",
        accepted_values.join(", ")
    ))
}

fn out_of_range(key: &str, value: &str) -> SpearError {
    SpearError::invalid_argument(format!(
        "artifact_spec.metadata[{key:?}] = {value:?} is out of range"
    ))
}

fn validate_environment_name(key: &str, name: &str) -> SpearResult<()> {
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if valid {
        return Ok(());
    }
    Err(SpearError::invalid_argument(format!(
        "artifact_spec.metadata[{key:?}]: {name:?} is not a valid environment variable name \
         (letters, digits and _, not starting with a digit)"
    )))
}

/// Process keys on a wasm task, or wasm-only keys on a process task, are mistakes: refuse them by
/// name rather than ignore them.
fn check_keys_fit_the_runtime(
    metadata: &BTreeMap<String, String>,
    runtime: RuntimeKind,
) -> SpearResult<()> {
    for key in metadata.keys() {
        let process_key = key.starts_with("spearlet.process.");
        let wasm_only_key = key == "spearlet.isolation"
            || key == ALLOWED_HOSTS_KEY
            || key.starts_with(PREOPEN_KEY_PREFIX);
        if process_key && runtime != RuntimeKind::Process {
            return Err(SpearError::invalid_argument(format!(
                "artifact_spec.metadata[{key:?}] applies only to artifact_type process"
            )));
        }
        if wasm_only_key && runtime == RuntimeKind::Process {
            return Err(SpearError::invalid_argument(format!(
                "artifact_spec.metadata[{key:?}] applies only to wasm tasks; a process task \
                 chooses per-call processes or warm workers with spearlet.process.mode"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use crate::pool_settings::AutoscaleSettings;

    fn check(pairs: &[(&str, &str)]) -> SpearResult<TaskConfig> {
        let metadata: BTreeMap<String, String> = pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        TaskConfig::from_metadata(&metadata, &TaskConfigDefaults::default())
    }

    #[test]
    fn defaults_apply_when_no_key_is_set() {
        let config = check(&[("owner", "team-a")]).unwrap();
        assert_eq!(config.timeout_ms, 30_000);
        assert_eq!(config.memory_limit_mb, 128);
        assert_eq!(config.max_output_bytes, 6_291_456);
        assert_eq!(config.max_log_bytes, 1_048_576);
        assert!(config.environment.is_empty());
    }

    #[test]
    fn every_key_is_read() {
        let config = check(&[
            ("spearlet.timeout_ms", "200"),
            ("spearlet.max_timeout_ms", "1000"),
            ("spearlet.memory_limit_mb", "16"),
            ("spearlet.max_output_bytes", "10"),
            ("spearlet.max_log_bytes", "20"),
            ("spearlet.env.GREETING", "hi"),
            ("spearlet.wasi.preopen./data", "/srv/data"),
        ])
        .unwrap();
        assert_eq!(config.timeout_ms, 200);
        assert_eq!(config.max_timeout_ms, 1000);
        assert_eq!(config.memory_limit_mb, 16);
        assert_eq!(config.max_output_bytes, 10);
        assert_eq!(config.max_log_bytes, 20);
        assert_eq!(config.environment["GREETING"], "hi");
        assert_eq!(config.preopened_directories["/data"], "/srv/data");
    }

    #[test]
    fn bad_keys_are_rejected_by_name() {
        let table: &[(&str, &str, &str)] = &[
            ("spearlet.timeout", "5", "spearlet.timeout"),
            ("spearlet.timeout_ms", "soon", "spearlet.timeout_ms"),
            ("spearlet.timeout_ms", "0", "spearlet.timeout_ms"),
            ("spearlet.timeout_ms", "-5", "spearlet.timeout_ms"),
            (
                "spearlet.memory_limit_mb",
                "99999999999",
                "spearlet.memory_limit_mb",
            ),
            ("spearlet.env.1BAD", "x", "spearlet.env.1BAD"),
            ("spearlet.env.", "x", "spearlet.env."),
            ("spearlet.wasi.preopen.", "/x", "spearlet.wasi.preopen."),
            ("spearlet.timeout_ms", "1000000", "spearlet.max_timeout_ms"),
        ];
        for (key, value, named) in table {
            let error = check(&[(key, value)]).unwrap_err();
            assert_eq!(error.kind, ErrorKind::InvalidArgument, "{key}={value}");
            assert!(
                error.message.contains(named),
                "{key}={value}: {}",
                error.message
            );
        }
    }

    #[test]
    fn every_pool_key_is_read() {
        let defaults = PoolSettings::default();
        let table: &[(&str, &str, PoolSettings)] = &[
            (
                "spearlet.isolation",
                "reuse",
                PoolSettings {
                    isolation: Isolation::Reuse,
                    ..defaults
                },
            ),
            (
                "spearlet.isolation",
                "per_call",
                PoolSettings {
                    isolation: Isolation::PerCall,
                    ..defaults
                },
            ),
            (
                "spearlet.pool.min_instances",
                "0",
                PoolSettings {
                    min_instances: 0,
                    ..defaults
                },
            ),
            (
                "spearlet.pool.min_instances",
                "3",
                PoolSettings {
                    min_instances: 3,
                    ..defaults
                },
            ),
            (
                "spearlet.pool.max_instances",
                "4",
                PoolSettings {
                    max_instances: 4,
                    ..defaults
                },
            ),
            (
                "spearlet.pool.instance_capacity",
                "8",
                PoolSettings {
                    instance_capacity: 8,
                    ..defaults
                },
            ),
            (
                "spearlet.pool.idle_timeout_ms",
                "1500",
                PoolSettings {
                    idle_timeout_ms: 1500,
                    ..defaults
                },
            ),
            (
                "spearlet.pool.max_uses",
                "0",
                PoolSettings {
                    max_uses: 0,
                    ..defaults
                },
            ),
            (
                "spearlet.pool.max_uses",
                "100",
                PoolSettings {
                    max_uses: 100,
                    ..defaults
                },
            ),
            (
                "spearlet.scheduler.policy",
                "weighted_round_robin",
                PoolSettings {
                    scheduler_policy: SchedulingPolicy::WeightedRoundRobin,
                    ..defaults
                },
            ),
            (
                "spearlet.autoscale.target_concurrency",
                "2.5",
                PoolSettings {
                    autoscale: AutoscaleSettings {
                        target_concurrency: 2.5,
                        ..defaults.autoscale
                    },
                    ..defaults
                },
            ),
            (
                "spearlet.autoscale.stable_window_ms",
                "90000",
                PoolSettings {
                    autoscale: AutoscaleSettings {
                        stable_window_ms: 90_000,
                        ..defaults.autoscale
                    },
                    ..defaults
                },
            ),
            (
                "spearlet.autoscale.panic_window_ms",
                "1000",
                PoolSettings {
                    autoscale: AutoscaleSettings {
                        panic_window_ms: 1000,
                        ..defaults.autoscale
                    },
                    ..defaults
                },
            ),
            (
                "spearlet.autoscale.predictive",
                "false",
                PoolSettings {
                    autoscale: AutoscaleSettings {
                        predictive: false,
                        ..defaults.autoscale
                    },
                    ..defaults
                },
            ),
        ];
        for (key, value, expected) in table {
            let config = check(&[(key, value)]).unwrap();
            assert_eq!(config.pool, *expected, "{key}={value}");
        }
        for policy in SchedulingPolicy::ALL {
            let config = check(&[("spearlet.scheduler.policy", policy.as_str())]).unwrap();
            assert_eq!(config.pool.scheduler_policy, policy);
        }
    }

    #[test]
    fn pool_defaults_come_from_the_node() {
        let node_defaults = TaskConfigDefaults {
            pool: PoolSettings {
                isolation: Isolation::Reuse,
                max_uses: 7,
                ..PoolSettings::default()
            },
            ..TaskConfigDefaults::default()
        };
        let metadata: BTreeMap<String, String> = BTreeMap::new();
        let config = TaskConfig::from_metadata(&metadata, &node_defaults).unwrap();
        assert_eq!(config.pool, node_defaults.pool);
        assert_eq!(check(&[]).unwrap().pool, PoolSettings::default());
    }

    #[test]
    fn bad_pool_values_are_rejected_by_name() {
        let table: &[(&[(&str, &str)], &str)] = &[
            (&[("spearlet.isolation", "shared")], "spearlet.isolation"),
            (&[("spearlet.isolation", "")], "spearlet.isolation"),
            (
                &[("spearlet.pool.min_instances", "-1")],
                "spearlet.pool.min_instances",
            ),
            (
                &[("spearlet.pool.min_instances", "many")],
                "spearlet.pool.min_instances",
            ),
            (
                &[("spearlet.pool.min_instances", "5000000000")],
                "spearlet.pool.min_instances",
            ),
            (
                &[("spearlet.pool.max_instances", "0")],
                "spearlet.pool.max_instances",
            ),
            (
                &[("spearlet.pool.max_instances", "5000000000")],
                "spearlet.pool.max_instances",
            ),
            (
                &[("spearlet.pool.instance_capacity", "0")],
                "spearlet.pool.instance_capacity",
            ),
            (
                &[("spearlet.pool.idle_timeout_ms", "0")],
                "spearlet.pool.idle_timeout_ms",
            ),
            (
                &[("spearlet.pool.max_uses", "-3")],
                "spearlet.pool.max_uses",
            ),
            (&[("spearlet.pool.max_size", "3")], "spearlet.pool.max_size"),
            (
                &[("spearlet.scheduler.policy", "fastest")],
                "spearlet.scheduler.policy",
            ),
            (
                &[("spearlet.scheduler.policy", "RoundRobin")],
                "spearlet.scheduler.policy",
            ),
            (
                &[("spearlet.autoscale.target_concurrency", "0")],
                "spearlet.autoscale.target_concurrency",
            ),
            (
                &[("spearlet.autoscale.target_concurrency", "-1.5")],
                "spearlet.autoscale.target_concurrency",
            ),
            (
                &[("spearlet.autoscale.target_concurrency", "inf")],
                "spearlet.autoscale.target_concurrency",
            ),
            (
                &[("spearlet.autoscale.target_concurrency", "NaN")],
                "spearlet.autoscale.target_concurrency",
            ),
            (
                &[("spearlet.autoscale.stable_window_ms", "0")],
                "spearlet.autoscale.stable_window_ms",
            ),
            (
                &[("spearlet.autoscale.panic_window_ms", "0")],
                "spearlet.autoscale.panic_window_ms",
            ),
            (
                &[("spearlet.autoscale.predictive", "yes")],
                "spearlet.autoscale.predictive",
            ),
            // Cross-key rules, checked once every key is read.
            (
                &[
                    ("spearlet.isolation", "reuse"),
                    ("spearlet.pool.instance_capacity", "2"),
                ],
                "spearlet.pool.instance_capacity",
            ),
            (
                &[
                    ("spearlet.pool.min_instances", "5"),
                    ("spearlet.pool.max_instances", "2"),
                ],
                "spearlet.pool.min_instances",
            ),
            (
                &[
                    ("spearlet.autoscale.stable_window_ms", "1000"),
                    ("spearlet.autoscale.panic_window_ms", "2000"),
                ],
                "spearlet.autoscale.panic_window_ms",
            ),
        ];
        for (pairs, named) in table {
            let error = check(pairs).unwrap_err();
            assert_eq!(error.kind, ErrorKind::InvalidArgument, "{pairs:?}");
            assert!(
                error.message.contains(named),
                "{pairs:?}: {}",
                error.message
            );
            assert!(
                error.message.contains("artifact_spec.metadata"),
                "{pairs:?}: {}",
                error.message
            );
        }
    }

    #[test]
    fn call_timeouts_are_capped() {
        let config = check(&[
            ("spearlet.max_timeout_ms", "1000"),
            ("spearlet.timeout_ms", "500"),
        ])
        .unwrap();
        assert_eq!(config.effective_timeout_ms(0), 500);
        assert_eq!(config.effective_timeout_ms(-1), 500);
        assert_eq!(config.effective_timeout_ms(200), 200);
        assert_eq!(config.effective_timeout_ms(5000), 1000);
    }

    #[test]
    fn configuration_keys_ignore_labels() {
        let metadata: BTreeMap<String, String> = [
            ("owner".to_string(), "a".to_string()),
            ("spearlet.timeout_ms".to_string(), "5".to_string()),
        ]
        .into();
        let keys = configuration_keys(&metadata);
        assert_eq!(keys.len(), 1);
        assert!(keys.contains_key("spearlet.timeout_ms"));
    }

    #[test]
    fn process_keys_are_read_and_checked_by_name() {
        let config = check(&[
            ("spearlet.process.mode", "lambda"),
            ("spearlet.process.entrypoint", "bin/serve"),
            ("spearlet.process.format", "tar.gz"),
            ("spearlet.process.handler", "index.handler"),
            ("spearlet.process.max_pids", "8"),
            ("spearlet.process.address_space_mb", "0"),
            ("spearlet.process.cpu_seconds", "5"),
            ("spearlet.process.max_open_files", "64"),
            ("spearlet.process.run_as", "nobody"),
            ("spearlet.process.init_timeout_ms", "2000"),
        ])
        .unwrap();
        let process = &config.process;
        assert_eq!(process.mode, ProcessMode::Lambda);
        assert_eq!(process.entrypoint, "bin/serve");
        assert_eq!(process.format, "tar.gz");
        assert_eq!(process.handler.as_deref(), Some("index.handler"));
        assert_eq!(
            (
                process.max_pids,
                process.address_space_mb,
                process.cpu_seconds
            ),
            (8, 0, 5)
        );
        assert_eq!(process.max_open_files, 64);
        assert_eq!(process.run_as.as_deref(), Some("nobody"));
        assert_eq!(process.init_timeout_ms, 2000);
        for (key, value) in [
            ("spearlet.process.mode", "fork"),
            ("spearlet.process.format", "rar"),
            ("spearlet.process.entrypoint", " "),
            ("spearlet.process.max_pids", "0"),
            ("spearlet.process.cpu", "1"),
        ] {
            let error = check(&[(key, value)]).unwrap_err();
            assert_eq!(error.kind, ErrorKind::InvalidArgument);
            assert!(error.message.contains(key), "{}", error.message);
        }
    }

    fn for_runtime(
        pairs: &[(&str, &str)],
        runtime: RuntimeKind,
    ) -> (SpearResult<TaskConfig>, BTreeMap<String, String>) {
        let mut metadata: BTreeMap<String, String> = pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        let config = TaskConfig::for_runtime(
            &mut metadata,
            runtime,
            "registering-function",
            &TaskConfigDefaults::default(),
        );
        (config, metadata)
    }

    #[test]
    fn keys_of_the_other_runtime_are_refused_by_name() {
        let cases = [
            ("spearlet.process.mode", "exec", RuntimeKind::Wasm),
            ("spearlet.isolation", "reuse", RuntimeKind::Process),
            ("spearlet.wasi.preopen.data", "/srv", RuntimeKind::Process),
        ];
        for (key, value, runtime) in cases {
            let error = for_runtime(&[(key, value)], runtime).0.unwrap_err();
            assert_eq!(error.kind, ErrorKind::InvalidArgument, "{key}");
            assert!(error.message.contains(key), "{}", error.message);
        }
    }

    #[test]
    fn process_tasks_get_the_process_runtime_rules() {
        let (config, metadata) = for_runtime(&[], RuntimeKind::Process);
        assert_eq!(
            config.unwrap().memory_limit_mb,
            PROCESS_DEFAULT_MEMORY_LIMIT_MB
        );
        assert!(!metadata.contains_key("spearlet.process.handler"));

        let (config, metadata) =
            for_runtime(&[("spearlet.process.mode", "lambda")], RuntimeKind::Process);
        let config = config.unwrap();
        assert_eq!(config.pool.isolation, Isolation::Reuse);
        assert_eq!(
            config.process.handler.as_deref(),
            Some("registering-function")
        );
        assert_eq!(
            metadata["spearlet.process.handler"], "registering-function",
            "the default handler is recorded with the task"
        );

        let error = for_runtime(
            &[
                ("spearlet.process.mode", "lambda"),
                ("spearlet.pool.instance_capacity", "4"),
            ],
            RuntimeKind::Process,
        )
        .0
        .unwrap_err();
        assert!(
            error.message.contains("instance_capacity"),
            "{}",
            error.message
        );

        let (config, _) = for_runtime(&[], RuntimeKind::Wasm);
        assert_eq!(
            config.unwrap().memory_limit_mb,
            TaskConfigDefaults::default().memory_limit_mb
        );
    }

    #[test]
    fn artifact_types_name_their_runtime() {
        for (artifact_type, kind) in [
            ("", RuntimeKind::Wasm),
            ("wasm", RuntimeKind::Wasm),
            ("process", RuntimeKind::Process),
            ("binary", RuntimeKind::Process),
            ("executable", RuntimeKind::Process),
        ] {
            assert_eq!(RuntimeKind::of_artifact_type(artifact_type).unwrap(), kind);
        }
        let error = RuntimeKind::of_artifact_type("jar").unwrap_err();
        assert_eq!(error.kind, ErrorKind::InvalidArgument);
        assert!(
            error.message.contains("\"jar\"")
                && error.message.contains("wasm, process, binary, executable"),
            "{}",
            error.message
        );
    }
}
