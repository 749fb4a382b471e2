//! GetHealth and GetStats, computed from the live state and the records at request time.
//! Nothing here is cached or estimated: every figure is a count or a mean over real data.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use spearlet_core::{ExecutionStatus, RuntimeKind, SpearResult};
use spearlet_pool::PoolSnapshot;
use spearlet_proto as proto;

use crate::clock::unix_ms;
use crate::node::Node;
use crate::registry::LoadedTask;
use crate::wire;

/// The queue fill ratio above which the node reports itself degraded.
const DEGRADED_QUEUE_RATIO: f64 = 0.8;
const MOST_ACTIVE_TASKS: usize = 5;

/// Whether the node should receive traffic: it is not shutting down. Drives `/readyz` and
/// `grpc.health.v1.Health`. A degraded node still serves, and so does one whose record store
/// cannot commit (GetHealth says "unhealthy"): sync calls still run (their records wait in
/// memory and are retried), only async submissions are refused, so taking the node out of
/// rotation would refuse more than the failure does.
pub fn is_ready(node: &Node) -> bool {
    !node.manager.is_shutting_down()
}

pub fn health(node: &Node, include_details: bool) -> SpearResult<proto::GetHealthResponse> {
    let manager = &node.manager;
    let queued = manager.queued_count();
    let queue_ratio = queued as f64 / manager.max_queue_length().max(1) as f64;
    let instance_failures = manager
        .dispatcher()
        .snapshot()
        .instance_failures_last_minute;
    // Worst first: a store that cannot commit loses durability for every async call (they are
    // refused), failing instances and a filling queue only slow calls down.
    let cluster = node.cluster.as_ref().map(|cluster| cluster.status());
    let cluster_trouble = cluster
        .as_ref()
        .filter(|cluster| !cluster.message.is_empty())
        .map(|cluster| cluster.message.clone());
    let (status, message) = match manager.store().write_failure() {
        Some(failure) => (
            "unhealthy",
            format!(
                "the record store cannot commit: {} commits in a row failed over the last {} s \
                 (writes are kept in memory and retried; async calls are refused): {}",
                failure.consecutive_failed_commits,
                (unix_ms() - failure.failing_since_unix_ms).max(0) / 1000,
                failure.error
            ),
        ),
        None if cluster_trouble.is_some() => ("degraded", cluster_trouble.unwrap_or_default()),
        None if instance_failures > 0 => (
            "degraded",
            format!("{instance_failures} instances failed in the last minute"),
        ),
        None if queue_ratio > DEGRADED_QUEUE_RATIO => (
            "degraded",
            format!(
                "the execution queue is {:.0}% full ({queued} of {})",
                queue_ratio * 100.0,
                manager.max_queue_length()
            ),
        ),
        None => ("healthy", "serving".to_owned()),
    };
    let details = include_details.then(|| {
        let tasks = node.registry.all();
        proto::HealthDetails {
            active_tasks: tasks.iter().filter(|task| is_active(task)).count() as i32,
            running_executions: manager.running_count() as i32,
            pending_executions: queued as i32,
            total_memory_used: node.observer.resident_memory_bytes() as i64,
            total_executions: manager.total_submitted() as i64,
            system_info: system_info(node),
        }
    });
    Ok(proto::GetHealthResponse {
        status: status.to_owned(),
        message,
        uptime_seconds: node.observer.uptime().as_secs() as i64,
        details,
        cluster,
    })
}

fn system_info(node: &Node) -> HashMap<String, String> {
    [
        ("version", env!("CARGO_PKG_VERSION").to_owned()),
        ("runtimes", available_runtimes()),
        (
            "process_limits",
            spearlet_process::sandbox::detect_enforcement().description,
        ),
        (
            "wasm_engine",
            match spearlet_wasm::WASMTIME_VERSION {
                Some(version) => format!("wasmtime {version}"),
                None => "wasmtime (version not recorded at build time)".to_owned(),
            },
        ),
        ("cpu_count", node.observer.cpu_count().to_string()),
        ("os", std::env::consts::OS.to_owned()),
        ("arch", std::env::consts::ARCH.to_owned()),
        (
            "total_memory_bytes",
            node.observer.total_memory_bytes().to_string(),
        ),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect()
}

/// The runtimes this node runs tasks on, comma-separated: the runtimes the registry accepts
/// artifacts for (`RuntimeKind::ALL`). Both run on every Linux node, the only platform spearlet
/// builds for; what differs between nodes is which process limits bind, reported separately as
/// `process_limits`.
fn available_runtimes() -> String {
    RuntimeKind::ALL
        .iter()
        .map(|kind| kind.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// A task with at least one pending or running execution.
fn is_active(task: &LoadedTask) -> bool {
    task.counters.live.load(Ordering::Relaxed) > 0
}

#[derive(Default)]
struct ExecutionTotals {
    completed: u64,
    not_completed_terminal: u64,
    execution_time_ms_sum: f64,
    response_time_ms_sum: f64,
    terminal: u64,
    by_function: HashMap<String, i32>,
}

/// GetStats over the whole node; the most active tasks are shown as `wire::task_summary` shows
/// a task. Narrowing the answer to what the caller may see is the handler's business.
pub fn stats(
    node: &Node,
    request: &proto::GetStatsRequest,
) -> SpearResult<proto::GetStatsResponse> {
    let window_start_ms = match request.time_range_hours {
        hours if hours > 0 => unix_ms() - i64::from(hours) * 3_600_000,
        _ => i64::MIN,
    };
    let mut all_time = ExecutionTotals::default();
    let mut windowed = ExecutionTotals::default();
    node.manager.store().visit_executions(&mut |record| {
        for (totals, included) in [
            (&mut all_time, true),
            (&mut windowed, record.submitted_at_ms >= window_start_ms),
        ] {
            if !included {
                continue;
            }
            let function = if record.function_name.is_empty() {
                "_start"
            } else {
                &record.function_name
            };
            *totals
                .by_function
                .entry(format!("{}/{function}", record.task_name))
                .or_default() += 1;
            if !record.status.is_terminal() {
                continue;
            }
            totals.terminal += 1;
            if record.status == ExecutionStatus::Completed {
                totals.completed += 1;
            } else {
                totals.not_completed_terminal += 1;
            }
            totals.execution_time_ms_sum += record
                .metrics
                .get("execution_time_us")
                .and_then(|micros| micros.parse::<f64>().ok())
                .map_or(record.execution_time_ms as f64, |micros| micros / 1000.0);
            totals.response_time_ms_sum += record.response_time_ms().unwrap_or(0.0);
        }
    })?;
    let mean = |sum: f64, count: u64| if count == 0 { 0.0 } else { sum / count as f64 };
    let tasks = node.registry.all();
    let active_tasks = tasks.iter().filter(|task| is_active(task)).count();
    let dispatcher = node.manager.dispatcher().snapshot();

    let service_stats = proto::ServiceStats {
        uptime_seconds: node.observer.uptime().as_secs() as i64,
        total_tasks: tasks.len() as i32,
        total_executions: node.manager.total_submitted() as i32,
        total_memory_used: node.observer.resident_memory_bytes() as i64,
        cpu_usage_percent: node.observer.cpu_usage_percent(),
        memory_usage_percent: {
            let total = node.observer.total_memory_bytes();
            if total == 0 {
                0.0
            } else {
                node.observer.resident_memory_bytes() as f64 / total as f64 * 100.0
            }
        },
        artifact_count: node.registry.artifact_count() as i32,
        instance_count: dispatcher.instances_by_state.values().sum::<u32>() as i32,
        successful_executions: all_time.completed as i64,
        failed_executions: all_time.not_completed_terminal as i64,
        average_response_time_ms: mean(all_time.response_time_ms_sum, all_time.terminal),
        queue_length: dispatcher.queued as i32,
        max_queue_length: dispatcher.max_queue_length as i32,
        async_waiting: dispatcher.waiting_uncounted as i32,
        queue_wait: dispatcher
            .queue_wait
            .map(|wait| proto::QueueWaitPercentiles {
                p50_ms: wait.p50_ms,
                p90_ms: wait.p90_ms,
                p99_ms: wait.p99_ms,
                max_ms: wait.max_ms,
            }),
        instances_by_state: dispatcher
            .instances_by_state
            .iter()
            .map(|(state, count)| (state.as_str().to_owned(), *count as i32))
            .collect(),
        instances_terminated: dispatcher.instances_terminated as i64,
        instances_failed: dispatcher.instances_failed as i64,
        cold_starts: dispatcher.cold_starts as i64,
        warm_starts: dispatcher.warm_starts as i64,
    };
    let pools = if request.include_task_stats {
        pool_stats(&tasks, &dispatcher.pools)
    } else {
        Vec::new()
    };
    let task_stats = request.include_task_stats.then(|| {
        let mut tasks_by_type: HashMap<String, i32> = HashMap::new();
        for task in &tasks {
            *tasks_by_type
                .entry(task.record.artifact.artifact_type.clone())
                .or_default() += 1;
        }
        let mut by_activity = tasks.clone();
        by_activity.sort_by_key(|task| {
            std::cmp::Reverse(task.counters.execution_count.load(Ordering::Relaxed))
        });
        proto::TaskStats {
            active_tasks: active_tasks as i32,
            idle_tasks: (tasks.len() - active_tasks) as i32,
            tasks_by_type,
            most_active_tasks: by_activity
                .iter()
                .filter(|task| task.counters.execution_count.load(Ordering::Relaxed) > 0)
                .take(MOST_ACTIVE_TASKS)
                .map(|task| wire::task_summary(task))
                .collect(),
        }
    });
    let execution_stats = request
        .include_execution_stats
        .then(|| proto::ExecutionStats {
            running_executions: node.manager.running_count() as i32,
            pending_executions: node.manager.queued_count() as i32,
            completed_executions: windowed.completed as i32,
            failed_executions: windowed.not_completed_terminal as i32,
            average_execution_time_ms: mean(windowed.execution_time_ms_sum, windowed.terminal),
            success_rate_percent: if windowed.terminal == 0 {
                0.0
            } else {
                windowed.completed as f64 / windowed.terminal as f64 * 100.0
            },
            executions_by_function: windowed.by_function,
        });
    Ok(proto::GetStatsResponse {
        service_stats: Some(service_stats),
        task_stats,
        execution_stats,
        pools,
        cluster: node.cluster.as_ref().map(|cluster| cluster.status()),
    })
}

/// The pools of the registered tasks (pools of replaced task versions that still drain are
/// left out).
fn pool_stats(tasks: &[Arc<LoadedTask>], pools: &[PoolSnapshot]) -> Vec<proto::PoolStats> {
    let names: HashMap<&str, &str> = tasks
        .iter()
        .map(|task| (task.record.task_id.as_str(), task.record.task_name.as_str()))
        .collect();
    let mut stats: Vec<proto::PoolStats> = pools
        .iter()
        .filter(|pool| !pool.retired)
        .map(|pool| {
            let decision = pool.last_decision;
            proto::PoolStats {
                task_id: pool.task_id.clone(),
                task_name: names
                    .get(pool.task_id.as_str())
                    .map(|name| (*name).to_owned())
                    .unwrap_or_default(),
                isolation: pool.settings.isolation.as_str().to_owned(),
                scheduler_policy: pool.settings.scheduler_policy.as_str().to_owned(),
                min_instances: pool.settings.min_instances as i32,
                max_instances: pool.settings.max_instances as i32,
                current_instances: pool.instances.len() as i32,
                desired_instances: decision.map_or(pool.settings.min_instances, |decision| {
                    decision.desired_instances
                }) as i32,
                reactive_instances: decision.map_or(0, |decision| decision.reactive_instances)
                    as i32,
                predicted_instances: decision.map_or(0, |decision| decision.predicted_instances)
                    as i32,
                panicking: decision.is_some_and(|decision| decision.panicking),
                forecast_arrivals_per_second: decision
                    .map_or(0.0, |decision| decision.forecast_arrivals_per_second),
                active_executions: pool.active as i32,
                waiting: pool.waiting as i32,
                cold_starts: pool.cold_starts as i64,
                warm_starts: pool.warm_starts as i64,
                mean_cold_start_ms: pool.mean_cold_start_ms.unwrap_or(0.0),
                instances: pool
                    .instances
                    .iter()
                    .map(|instance| proto::InstanceStats {
                        instance_id: instance.instance_id.clone(),
                        state: instance.state.as_str().to_owned(),
                        active: instance.active as i32,
                        capacity: instance.capacity as i32,
                        served: instance.served as i64,
                        failures: instance.failures as i64,
                        healthy: instance.healthy,
                        mean_response_ms: instance
                            .mean_response_us
                            .map_or(0.0, |micros| micros as f64 / 1000.0),
                    })
                    .collect(),
            }
        })
        .collect();
    stats.sort_by(|left, right| left.task_name.cmp(&right.task_name));
    stats
}
