//! The node's recent history: one point per second for the last 15 minutes, node-wide and per
//! task, for GetStatsHistory, `/v1/stats/history` and the dashboard's live stream.
//!
//! # Design
//!
//! A sampler task (started by `node.rs`) reads, once per [`SAMPLE_INTERVAL`], the same sources
//! GetStats and `/metrics` read — each task's `TaskMetrics` (the `faas_*` counters and the
//! invoke-duration histogram), the dispatcher's snapshot (queue, pools, instances, autoscaler
//! decisions), the manager's queue-wait histogram and the process observer — and keeps the
//! difference since its previous reading. So a point's `calls` is exactly the increase of
//! `faas_invocations_total` over that second, and its percentiles are `histogram_quantile` over
//! the increase of `faas_invoke_duration_seconds`: nothing is measured a second time.
//!
//! Invariants:
//! - Node points form one ring of at most [`HISTORY_POINTS`], oldest first, one per sample.
//! - A task ring holds only the samples where the task did something (a call ended, an instance
//!   lived, a call waited): an idle task costs no memory however many tasks are registered.
//!   Reads fill the idle seconds with zeros, aligned on the node ring's timestamps.
//! - A deleted task's ring goes at the next sample; a task's counters survive its updates (they
//!   live in `TaskCounters`), so its history does too.
//! - The latest node point is also published on a `watch` channel, which the live event stream
//!   (`/v1/events`) follows: a slow reader skips points, it never holds the sampler up.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;
use spearlet_core::histogram::HistogramSnapshot;
use spearlet_pool::{InstanceState, PoolSnapshot};
use spearlet_proto as proto;
use tokio::sync::watch;

use crate::clock::{timestamp_from_us, unix_ms};
use crate::manager::TaskExecutionManager;
use crate::observer::ProcessObserver;
use crate::registry::TaskRegistry;

/// How often a point is taken.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Points kept: 15 minutes at one per second.
pub const HISTORY_POINTS: usize = 900;

/// What one sample saw, node-wide.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NodePoint {
    pub at_ms: i64,
    pub activity: TaskPoint,
    pub async_waiting: u32,
    pub queue_wait_p99_ms: f64,
    pub resident_memory_bytes: u64,
    pub cpu_usage_percent: f64,
}

/// What one sample saw for one task (and the task-shaped part of a node point).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TaskPoint {
    pub calls: u32,
    pub errors: u32,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub queue_length: u32,
    pub instances: u32,
    pub busy_instances: u32,
    pub desired_instances: u32,
    pub predicted_instances: u32,
}

impl TaskPoint {
    fn is_idle(&self) -> bool {
        self.calls == 0 && self.instances == 0 && self.queue_length == 0
    }
}

/// Cumulative counters at the previous sample, to take differences from.
struct PreviousReading {
    ended: u64,
    failed_or_timed_out: u64,
    invoke_duration: HistogramSnapshot,
}

struct TaskRing {
    /// Non-idle samples only: (sample time, point).
    points: VecDeque<(i64, TaskPoint)>,
    previous: Option<PreviousReading>,
}

#[derive(Default)]
struct Rings {
    node: VecDeque<NodePoint>,
    tasks: HashMap<String, TaskRing>,
    previous_queue_wait: Option<HistogramSnapshot>,
}

/// The rings and the channel the newest node point is published on.
pub struct StatsHistory {
    rings: Mutex<Rings>,
    latest: watch::Sender<Option<NodePoint>>,
}

impl Default for StatsHistory {
    fn default() -> StatsHistory {
        StatsHistory {
            rings: Mutex::new(Rings::default()),
            latest: watch::channel(None).0,
        }
    }
}

impl StatsHistory {
    /// Takes one point from the node's counters and gauges; `node.rs` calls it once per
    /// [`SAMPLE_INTERVAL`].
    pub fn sample(
        &self,
        registry: &TaskRegistry,
        manager: &TaskExecutionManager,
        observer: &ProcessObserver,
    ) {
        let at_ms = unix_ms();
        let dispatcher = manager.dispatcher().snapshot();
        let pools: HashMap<&str, &PoolSnapshot> = dispatcher
            .pools
            .iter()
            .filter(|pool| !pool.retired)
            .map(|pool| (pool.task_id.as_str(), pool))
            .collect();
        let queue_wait = manager.metrics().queue_wait.snapshot();
        let tasks = registry.all();

        let mut rings_guard = self.rings.lock();
        let rings = &mut *rings_guard;
        let oldest_kept = oldest_kept_ms(&rings.node);
        let mut node_activity = TaskPoint::default();
        let mut node_durations: Option<HistogramSnapshot> = None;
        let mut seen = Vec::with_capacity(tasks.len());
        for task in &tasks {
            let task_id = task.record.task_id.as_str();
            seen.push(task_id);
            let totals = task.counters.metrics.totals();
            let ring = rings
                .tasks
                .entry(task_id.to_owned())
                .or_insert_with(|| TaskRing {
                    points: VecDeque::new(),
                    previous: None,
                });
            // A task's counters start at zero with the process (they are not restored), and
            // the sampler sees a task within a sample of its registration: the first reading
            // counts from zero.
            let (calls, errors, durations) = match &ring.previous {
                Some(previous) => (
                    totals.ended.saturating_sub(previous.ended),
                    totals
                        .failed_or_timed_out
                        .saturating_sub(previous.failed_or_timed_out),
                    totals.invoke_duration.since(&previous.invoke_duration),
                ),
                None => (
                    totals.ended,
                    totals.failed_or_timed_out,
                    totals.invoke_duration.clone(),
                ),
            };
            let mut point = TaskPoint {
                calls: saturate(calls),
                errors: saturate(errors),
                latency_p50_ms: quantile_ms(&durations, 0.5),
                latency_p99_ms: quantile_ms(&durations, 0.99),
                ..TaskPoint::default()
            };
            if let Some(pool) = pools.get(task_id) {
                add_pool(&mut point, pool);
            }
            ring.previous = Some(PreviousReading {
                ended: totals.ended,
                failed_or_timed_out: totals.failed_or_timed_out,
                invoke_duration: totals.invoke_duration,
            });
            if !point.is_idle() {
                ring.points.push_back((at_ms, point));
            }
            while ring
                .points
                .front()
                .is_some_and(|(sampled_at, _)| *sampled_at < oldest_kept)
            {
                ring.points.pop_front();
            }
            node_activity.calls += point.calls;
            node_activity.errors += point.errors;
            node_activity.instances += point.instances;
            node_activity.busy_instances += point.busy_instances;
            node_activity.desired_instances += point.desired_instances;
            node_activity.predicted_instances += point.predicted_instances;
            match &mut node_durations {
                Some(sum) => sum.add(&durations),
                None => node_durations = Some(durations),
            }
        }
        rings
            .tasks
            .retain(|task_id, _| seen.contains(&task_id.as_str()));
        if let Some(durations) = &node_durations {
            node_activity.latency_p50_ms = quantile_ms(durations, 0.5);
            node_activity.latency_p99_ms = quantile_ms(durations, 0.99);
        }
        node_activity.queue_length = saturate(dispatcher.queued as u64);
        let queue_wait_p99_ms = rings.previous_queue_wait.as_ref().map_or(0.0, |previous| {
            quantile_ms(&queue_wait.since(previous), 0.99)
        });
        rings.previous_queue_wait = Some(queue_wait);
        let point = NodePoint {
            at_ms,
            activity: node_activity,
            async_waiting: saturate(dispatcher.waiting_uncounted as u64),
            queue_wait_p99_ms,
            resident_memory_bytes: observer.resident_memory_bytes(),
            cpu_usage_percent: observer.cpu_usage_percent(),
        };
        rings.node.push_back(point);
        while rings.node.len() > HISTORY_POINTS {
            rings.node.pop_front();
        }
        drop(rings_guard);
        self.latest.send_replace(Some(point));
    }

    /// The node's points of the last `seconds` (all that is kept for 0), oldest first.
    pub fn node_points(&self, seconds: u32) -> Vec<NodePoint> {
        let rings = self.rings.lock();
        let since_ms = since_ms(&rings.node, seconds);
        rings
            .node
            .iter()
            .filter(|point| point.at_ms >= since_ms)
            .copied()
            .collect()
    }

    /// One task's points of the last `seconds`, one per node point (zeros where the task was
    /// idle). `None` when the sampler has not seen the task.
    pub fn task_points(&self, task_id: &str, seconds: u32) -> Option<Vec<(i64, TaskPoint)>> {
        let rings = self.rings.lock();
        let ring = rings.tasks.get(task_id)?;
        let since_ms = since_ms(&rings.node, seconds);
        let mut active = ring.points.iter().peekable();
        let mut points = Vec::new();
        for node_point in rings.node.iter().filter(|point| point.at_ms >= since_ms) {
            while active
                .peek()
                .is_some_and(|(sampled_at, _)| *sampled_at < node_point.at_ms)
            {
                active.next();
            }
            let point = match active.peek() {
                Some((sampled_at, point)) if *sampled_at == node_point.at_ms => *point,
                _ => TaskPoint::default(),
            };
            points.push((node_point.at_ms, point));
        }
        Some(points)
    }

    /// Follows the newest node point as the sampler takes it.
    pub fn subscribe(&self) -> watch::Receiver<Option<NodePoint>> {
        self.latest.subscribe()
    }
}

/// The wire form of a node point.
pub fn node_point_to_wire(point: &NodePoint) -> proto::StatsPoint {
    proto::StatsPoint {
        async_waiting: point.async_waiting as i32,
        queue_wait_p99_ms: point.queue_wait_p99_ms,
        resident_memory_bytes: i64::try_from(point.resident_memory_bytes).unwrap_or(i64::MAX),
        cpu_usage_percent: point.cpu_usage_percent,
        ..task_point_to_wire(point.at_ms, &point.activity)
    }
}

/// The wire form of a task point (the node-only fields stay 0).
pub fn task_point_to_wire(at_ms: i64, point: &TaskPoint) -> proto::StatsPoint {
    proto::StatsPoint {
        at: Some(timestamp_from_us(at_ms.saturating_mul(1000))),
        calls: point.calls as i32,
        errors: point.errors as i32,
        latency_p50_ms: point.latency_p50_ms,
        latency_p99_ms: point.latency_p99_ms,
        queue_length: point.queue_length as i32,
        instances: point.instances as i32,
        busy_instances: point.busy_instances as i32,
        desired_instances: point.desired_instances as i32,
        predicted_instances: point.predicted_instances as i32,
        ..proto::StatsPoint::default()
    }
}

fn add_pool(point: &mut TaskPoint, pool: &PoolSnapshot) {
    point.queue_length = saturate(pool.waiting as u64);
    point.instances = saturate(pool.instances.len() as u64);
    point.busy_instances = saturate(
        pool.instances
            .iter()
            .filter(|instance| instance.active > 0 || instance.state == InstanceState::Running)
            .count() as u64,
    );
    point.desired_instances = pool
        .last_decision
        .map_or(pool.settings.min_instances, |decision| {
            decision.desired_instances
        });
    point.predicted_instances = pool
        .last_decision
        .map_or(0, |decision| decision.predicted_instances);
}

fn quantile_ms(durations: &HistogramSnapshot, quantile: f64) -> f64 {
    durations
        .quantile(quantile)
        .map_or(0.0, |seconds| seconds * 1000.0)
}

fn saturate(value: u64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// The time of the oldest node point (task points before it can go).
fn oldest_kept_ms(node: &VecDeque<NodePoint>) -> i64 {
    if node.len() < HISTORY_POINTS {
        return i64::MIN;
    }
    node.front().map_or(i64::MIN, |point| point.at_ms)
}

/// The earliest sample time a read of the last `seconds` includes.
fn since_ms(node: &VecDeque<NodePoint>, seconds: u32) -> i64 {
    if seconds == 0 {
        return i64::MIN;
    }
    node.back().map_or(i64::MIN, |newest| {
        newest.at_ms - i64::from(seconds - 1) * SAMPLE_INTERVAL.as_millis() as i64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_point(at_ms: i64) -> NodePoint {
        NodePoint {
            at_ms,
            ..NodePoint::default()
        }
    }

    #[test]
    fn task_points_fill_idle_seconds_with_zeros_on_the_node_timestamps() {
        let history = StatsHistory::default();
        {
            let mut rings = history.rings.lock();
            rings.node = (1..=5).map(|second| node_point(second * 1000)).collect();
            rings.tasks.insert(
                "t".into(),
                TaskRing {
                    points: [
                        (
                            2000,
                            TaskPoint {
                                calls: 3,
                                ..TaskPoint::default()
                            },
                        ),
                        (
                            4000,
                            TaskPoint {
                                calls: 1,
                                ..TaskPoint::default()
                            },
                        ),
                    ]
                    .into(),
                    previous: None,
                },
            );
        }
        let calls: Vec<(i64, u32)> = history
            .task_points("t", 0)
            .unwrap()
            .iter()
            .map(|(at_ms, point)| (*at_ms, point.calls))
            .collect();
        assert_eq!(
            calls,
            [(1000, 0), (2000, 3), (3000, 0), (4000, 1), (5000, 0)]
        );
        let last_two: Vec<i64> = history
            .task_points("t", 2)
            .unwrap()
            .iter()
            .map(|(at_ms, _)| *at_ms)
            .collect();
        assert_eq!(last_two, [4000, 5000]);
        assert!(history.task_points("unknown", 0).is_none());
        assert_eq!(history.node_points(3).len(), 3);
    }

    #[test]
    fn idle_task_points_are_not_kept() {
        assert!(TaskPoint::default().is_idle());
        assert!(
            !TaskPoint {
                instances: 1,
                ..TaskPoint::default()
            }
            .is_idle()
        );
    }
}
