//! Instance-pool settings of a task (`spearlet.isolation`, `spearlet.pool.*`,
//! `spearlet.scheduler.policy`, `spearlet.autoscale.*`) and the per-call priority.
//!
//! Plain data with the rules that parse it; the pool itself lives in `spearlet-pool`. Every key is
//! documented in `docs/FUNCTIONS.md`, every default in `docs/CONFIG.md`.

use crate::error::{SpearError, SpearResult};

/// How a wasm task's instances treat state between calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Isolation {
    /// A fresh wasm `Store` per call: calls never see each other's state. The instance is the
    /// linked, ready-to-instantiate code plus its capacity.
    #[default]
    PerCall,
    /// A live instance keeps its state across calls, up to `max_uses` calls or the idle timeout.
    Reuse,
}

impl Isolation {
    pub fn parse(text: &str) -> Option<Isolation> {
        match text {
            "per_call" => Some(Isolation::PerCall),
            "reuse" => Some(Isolation::Reuse),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::PerCall => "per_call",
            Isolation::Reuse => "reuse",
        }
    }
}

/// How the InstanceScheduler picks among instances with free capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SchedulingPolicy {
    RoundRobin,
    #[default]
    LeastConnections,
    Random,
    /// Round robin where an instance's weight is its capacity.
    WeightedRoundRobin,
    /// Lowest exponentially weighted response time.
    LeastResponseTime,
    /// Lowest load: active executions / capacity.
    ResourceBased,
}

impl SchedulingPolicy {
    pub const ALL: [SchedulingPolicy; 6] = [
        SchedulingPolicy::RoundRobin,
        SchedulingPolicy::LeastConnections,
        SchedulingPolicy::Random,
        SchedulingPolicy::WeightedRoundRobin,
        SchedulingPolicy::LeastResponseTime,
        SchedulingPolicy::ResourceBased,
    ];

    pub fn parse(text: &str) -> Option<SchedulingPolicy> {
        SchedulingPolicy::ALL
            .into_iter()
            .find(|policy| policy.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SchedulingPolicy::RoundRobin => "round_robin",
            SchedulingPolicy::LeastConnections => "least_connections",
            SchedulingPolicy::Random => "random",
            SchedulingPolicy::WeightedRoundRobin => "weighted_round_robin",
            SchedulingPolicy::LeastResponseTime => "least_response_time",
            SchedulingPolicy::ResourceBased => "resource_based",
        }
    }
}

/// Autoscaling of one task's pool.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AutoscaleSettings {
    /// Concurrent executions one instance should carry (may be fractional).
    pub target_concurrency: f64,
    /// Window of observed concurrency behind the stable desired count, in milliseconds.
    pub stable_window_ms: u64,
    /// Short window that reacts to bursts, in milliseconds.
    pub panic_window_ms: u64,
    /// Forecast arrivals and prewarm instances ahead of predicted demand.
    pub predictive: bool,
}

impl Default for AutoscaleSettings {
    fn default() -> AutoscaleSettings {
        AutoscaleSettings {
            target_concurrency: 1.0,
            stable_window_ms: 60_000,
            panic_window_ms: 6_000,
            predictive: true,
        }
    }
}

/// The pool of one task.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PoolSettings {
    pub isolation: Isolation,
    /// Instances created at task load and kept warm.
    pub min_instances: u32,
    /// Instances the pool never exceeds.
    pub max_instances: u32,
    /// Concurrent executions one instance serves.
    pub instance_capacity: u32,
    /// An instance idle this long is removed (down to `min_instances`), in milliseconds.
    pub idle_timeout_ms: u64,
    /// Calls before a `reuse` instance is recycled (0 = no limit).
    pub max_uses: u64,
    pub scheduler_policy: SchedulingPolicy,
    pub autoscale: AutoscaleSettings,
}

impl Default for PoolSettings {
    fn default() -> PoolSettings {
        PoolSettings {
            isolation: Isolation::PerCall,
            min_instances: 0,
            max_instances: 16,
            instance_capacity: 1,
            idle_timeout_ms: 60_000,
            max_uses: 0,
            scheduler_policy: SchedulingPolicy::LeastConnections,
            autoscale: AutoscaleSettings::default(),
        }
    }
}

impl PoolSettings {
    /// The cross-key rules; `field_prefix` names where the values came from in messages
    /// (`artifact_spec.metadata` or `task_defaults`).
    pub fn validate(&self, field_prefix: &str) -> SpearResult<()> {
        let key = |name: &str| format!("{field_prefix}[\"spearlet.{name}\"]");
        if self.max_instances == 0 {
            return Err(SpearError::invalid_argument(format!(
                "{} must be at least 1",
                key("pool.max_instances")
            )));
        }
        if self.min_instances > self.max_instances {
            return Err(SpearError::invalid_argument(format!(
                "{} = {} exceeds spearlet.pool.max_instances = {}",
                key("pool.min_instances"),
                self.min_instances,
                self.max_instances
            )));
        }
        if self.instance_capacity == 0 {
            return Err(SpearError::invalid_argument(format!(
                "{} must be at least 1",
                key("pool.instance_capacity")
            )));
        }
        if self.isolation == Isolation::Reuse && self.instance_capacity != 1 {
            return Err(SpearError::invalid_argument(format!(
                "{} = {} needs spearlet.isolation = per_call: a reused wasm instance runs one \
                 call at a time",
                key("pool.instance_capacity"),
                self.instance_capacity
            )));
        }
        let target = self.autoscale.target_concurrency;
        if !(target.is_finite() && target > 0.0) {
            return Err(SpearError::invalid_argument(format!(
                "{} = {target} must be a positive number",
                key("autoscale.target_concurrency")
            )));
        }
        if self.autoscale.panic_window_ms > self.autoscale.stable_window_ms {
            return Err(SpearError::invalid_argument(format!(
                "{} = {} exceeds spearlet.autoscale.stable_window_ms = {}",
                key("autoscale.panic_window_ms"),
                self.autoscale.panic_window_ms,
                self.autoscale.stable_window_ms
            )));
        }
        Ok(())
    }
}

/// The priority of one call: 0–9, 9 runs first. Read from `invocation_metadata["priority"]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(u8);

impl Priority {
    pub const LOW: Priority = Priority(1);
    pub const NORMAL: Priority = Priority(5);
    pub const HIGH: Priority = Priority(9);
    /// The metadata key that carries it.
    pub const METADATA_KEY: &'static str = "priority";

    /// `high` | `normal` | `low` (= 9, 5, 1) or a digit 0–9; anything else is an error naming
    /// the field.
    pub fn parse(text: &str) -> SpearResult<Priority> {
        match text.trim() {
            "high" => Ok(Priority::HIGH),
            "normal" | "" => Ok(Priority::NORMAL),
            "low" => Ok(Priority::LOW),
            other => match other.parse::<u8>() {
                Ok(level) if level <= 9 => Ok(Priority(level)),
                _ => Err(SpearError::invalid_argument(format!(
                    "invocation_metadata[\"priority\"] = {text:?} is not high, normal, low or a \
                     digit 0-9"
                ))),
            },
        }
    }

    pub fn level(self) -> u8 {
        self.0
    }
}

impl Default for Priority {
    fn default() -> Priority {
        Priority::NORMAL
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn priorities_parse_names_and_digits() {
        let table = [
            ("high", 9),
            ("normal", 5),
            ("low", 1),
            ("", 5),
            ("0", 0),
            ("9", 9),
            (" 7 ", 7),
        ];
        for (text, level) in table {
            assert_eq!(Priority::parse(text).unwrap().level(), level, "{text:?}");
        }
        for bad in ["10", "-1", "urgent", "HIGH", "5.0"] {
            let error = Priority::parse(bad).unwrap_err();
            assert_eq!(error.kind, ErrorKind::InvalidArgument);
            assert!(error.message.contains("invocation_metadata[\"priority\"]"));
        }
    }

    #[test]
    fn policy_names_round_trip() {
        for policy in SchedulingPolicy::ALL {
            assert_eq!(SchedulingPolicy::parse(policy.as_str()), Some(policy));
        }
        assert_eq!(SchedulingPolicy::parse("fastest"), None);
    }

    #[test]
    fn cross_key_rules_name_the_key() {
        let table: [(PoolSettings, &str); 5] = [
            (
                PoolSettings {
                    min_instances: 5,
                    max_instances: 2,
                    ..PoolSettings::default()
                },
                "pool.min_instances",
            ),
            (
                PoolSettings {
                    max_instances: 0,
                    ..PoolSettings::default()
                },
                "pool.max_instances",
            ),
            (
                PoolSettings {
                    isolation: Isolation::Reuse,
                    instance_capacity: 4,
                    ..PoolSettings::default()
                },
                "pool.instance_capacity",
            ),
            (
                PoolSettings {
                    autoscale: AutoscaleSettings {
                        target_concurrency: 0.0,
                        ..AutoscaleSettings::default()
                    },
                    ..PoolSettings::default()
                },
                "autoscale.target_concurrency",
            ),
            (
                PoolSettings {
                    autoscale: AutoscaleSettings {
                        panic_window_ms: 120_000,
                        ..AutoscaleSettings::default()
                    },
                    ..PoolSettings::default()
                },
                "autoscale.panic_window_ms",
            ),
        ];
        for (settings, named) in table {
            let error = settings.validate("artifact_spec.metadata").unwrap_err();
            assert_eq!(error.kind, ErrorKind::InvalidArgument);
            assert!(error.message.contains(named), "{}", error.message);
        }
        PoolSettings::default()
            .validate("artifact_spec.metadata")
            .unwrap();
    }
}
