//! The Dispatcher: every task's InstancePool, the global run limit and the priority queue, under
//! one lock.
//!
//! Data path of one call: [`Dispatcher::enqueue`] either grants an instance at once (a free slot
//! of a Ready instance picked by the pool's [`InstanceScheduler`], or a new instance reserved
//! when the pool is below `max_instances`) or queues the call; [`Ticket::ready`] waits for the
//! grant and, when the grant is a reservation, starts the instance (a cold start, timed). The
//! call runs holding the [`InstanceLease`]; dropping the lease gives the instance back, which
//! hands it (or a freed run slot) to the best waiting call before the lock is let go.
//!
//! Instance lifecycle: Creating → Ready ⇄ Running → Draining → Terminated, or Failed. An
//! instance drains when its lease says it is unusable (trap, exit), after `max_uses` calls, when
//! it was made for one call (`force_new_instance`), after three failed calls in a row (reuse
//! instances only: a per-call instance starts fresh every call), when a health check fails, or
//! when its pool is retired (the task was updated or removed). A drained
//! instance is removed as soon as nothing runs on it.
//!
//! Background work (one tokio task per dispatcher, every `autoscale_tick`): feed each pool's
//! autoscaler, prewarm up to the desired count, remove instances idle longer than `idle_timeout`
//! down to max(desired, min), health-check idle instances, forget retired pools once empty.

use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use spearlet_core::{Isolation, PoolSettings, Priority};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::autoscaler::{AutoscaleSample, Autoscaler, ScaleDecision};
use crate::queue::{RecentWaits, WaiterOrder, waiter_rank};
use crate::scheduler::{InstanceScheduler, InstanceView};

/// Failed calls in a row after which an instance is considered unhealthy and drained.
const UNHEALTHY_AFTER_CONSECUTIVE_FAILURES: u32 = 3;
/// Queue waits kept for percentiles.
const RECENT_WAITS_KEPT: usize = 4096;
/// How far back "instances failed recently" looks (health turns degraded).
const RECENT_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Why an instance could not start; the call that needed it fails with this message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceStartError {
    pub message: String,
}

/// Starts instances of one task. Implemented by each runtime (wasm per call, wasm reuse,
/// process workers).
pub trait InstanceFactory<R>: Send + Sync + 'static {
    /// Starts one instance, ready to serve calls.
    fn create_instance(&self) -> BoxFuture<'static, Result<R, InstanceStartError>>;

    /// Whether an idle instance is still fit to serve. Called under the dispatcher lock: must be
    /// cheap and must not block.
    fn is_healthy(&self, _runtime: &R) -> bool {
        true
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InstanceState {
    Creating,
    Ready,
    Running,
    Draining,
    Terminated,
    Failed,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Creating => "creating",
            InstanceState::Ready => "ready",
            InstanceState::Running => "running",
            InstanceState::Draining => "draining",
            InstanceState::Terminated => "terminated",
            InstanceState::Failed => "failed",
        }
    }
}

/// Node-wide settings of the dispatcher.
#[derive(Clone, Debug)]
pub struct DispatcherConfig {
    /// Calls holding an instance at once, across all tasks.
    pub max_concurrent_executions: usize,
    /// Calls allowed to wait (those that count against the limit); beyond it → rejected.
    pub max_queue_length: usize,
    /// A waiting call gains one priority level per this much time waited.
    pub priority_aging: Duration,
    /// How often idle instances are health-checked.
    pub health_check_interval: Duration,
    /// How often autoscalers sample their pools and act.
    pub autoscale_tick: Duration,
    /// Put before every instance id (`<prefix><task id>/i<n>`): a cluster node's id, so
    /// instance ids are unique cluster-wide. Empty on a node of its own.
    pub instance_id_prefix: String,
}

/// What a call asks of the dispatcher.
#[derive(Clone, Copy, Debug)]
pub struct AcquireRequest {
    pub priority: Priority,
    /// Start a fresh instance that serves this call only.
    pub force_new_instance: bool,
    /// Whether the call counts against `max_queue_length` while it waits. Async executions
    /// already wait in their own bounded, durable queue, so they do not.
    pub counts_against_queue_limit: bool,
    /// Refuse rather than queue when no instance can be granted at once (a call a cluster
    /// peer forwarded here: its origin queues it, or tries another node).
    pub grant_now_only: bool,
}

/// Why a call was refused at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    QueueFull {
        waiting: usize,
        max_queue_length: usize,
        retry_after: Duration,
    },
    /// `force_new_instance` on a pool that already has `max_instances`.
    PoolAtMaxInstances {
        max_instances: u32,
        retry_after: Duration,
    },
    /// A `grant_now_only` call found no instance it could have at once.
    NoInstanceNow { retry_after: Duration },
}

impl Rejection {
    /// When trying again is likely to succeed.
    pub fn retry_after(&self) -> Duration {
        match self {
            Rejection::QueueFull { retry_after, .. }
            | Rejection::PoolAtMaxInstances { retry_after, .. }
            | Rejection::NoInstanceNow { retry_after } => *retry_after,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::QueueFull {
                waiting,
                max_queue_length,
                retry_after,
            } => write!(
                formatter,
                "{waiting} calls are queued and max_queue_length is {max_queue_length}; retry \
                 after {} ms",
                retry_after.as_millis()
            ),
            Rejection::PoolAtMaxInstances {
                max_instances,
                retry_after,
            } => write!(
                formatter,
                "force_new_instance needs a new instance but the task already has \
                 spearlet.pool.max_instances = {max_instances}; retry after {} ms",
                retry_after.as_millis()
            ),
            Rejection::NoInstanceNow { retry_after } => write!(
                formatter,
                "no instance is free now and a forwarded call is never queued; retry after {} \
                 ms",
                retry_after.as_millis()
            ),
        }
    }
}

/// The node's pools and queue. Cheap to clone.
pub struct Dispatcher<R: Send + Sync + 'static> {
    shared: Arc<Shared<R>>,
}

impl<R: Send + Sync + 'static> Clone for Dispatcher<R> {
    fn clone(&self) -> Self {
        Dispatcher {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<R: Send + Sync + 'static> {
    config: DispatcherConfig,
    /// Zero point of waiter ranks.
    epoch: Instant,
    state: Mutex<State<R>>,
    stop_maintenance: CancellationToken,
}

impl<R: Send + Sync + 'static> Drop for Shared<R> {
    fn drop(&mut self) {
        self.stop_maintenance.cancel();
    }
}

struct State<R: Send + Sync + 'static> {
    /// Leases out (calls holding an instance, including ones starting it).
    running: usize,
    /// Waiting calls that count against `max_queue_length`.
    bounded_waiting: usize,
    /// Waiting calls that do not (async executions).
    unbounded_waiting: usize,
    pools: HashMap<u64, PoolState<R>>,
    pools_with_waiters: HashSet<u64>,
    next_pool_id: u64,
    next_sequence: u64,
    recent_waits: RecentWaits,
    recent_instance_failures: VecDeque<Instant>,
    instances_terminated: u64,
    instances_failed: u64,
}

struct InstanceEntry<R> {
    serial: u64,
    instance_id: String,
    runtime: OnceLock<R>,
}

struct InstanceSlot<R> {
    entry: Arc<InstanceEntry<R>>,
    state: InstanceState,
    capacity: u32,
    active: u32,
    served: u64,
    failures: u64,
    consecutive_failures: u32,
    healthy: bool,
    /// Made for one call (`force_new_instance`); drains after it.
    one_shot: bool,
    mean_response_us: Option<u64>,
    idle_since: Instant,
}

impl<R> InstanceSlot<R> {
    fn accepting(&self) -> bool {
        matches!(self.state, InstanceState::Ready | InstanceState::Running)
            && self.healthy
            && !self.one_shot
    }

    fn has_free_capacity(&self) -> bool {
        self.accepting() && self.active < self.capacity
    }
}

struct Waiter<R: Send + Sync + 'static> {
    order: WaiterOrder,
    sender: oneshot::Sender<InstanceLease<R>>,
    enqueued_at: Instant,
    force_new_instance: bool,
    counts_against_queue_limit: bool,
}

impl<R: Send + Sync + 'static> PartialEq for Waiter<R> {
    fn eq(&self, other: &Self) -> bool {
        self.order == other.order
    }
}
impl<R: Send + Sync + 'static> Eq for Waiter<R> {}
impl<R: Send + Sync + 'static> PartialOrd for Waiter<R> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<R: Send + Sync + 'static> Ord for Waiter<R> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.order.cmp(&other.order)
    }
}

/// What a pool saw during the current autoscale tick.
struct TickObservation {
    last_change: Instant,
    /// ∫ concurrency dt, in call·seconds.
    concurrency_area: f64,
    peak_concurrency: u32,
    arrivals: u64,
}

struct PoolState<R: Send + Sync + 'static> {
    task_id: String,
    /// `instance_id_prefix` + task id: what instance ids start with.
    instance_id_base: String,
    settings: PoolSettings,
    factory: Arc<dyn InstanceFactory<R>>,
    scheduler: InstanceScheduler,
    autoscaler: Autoscaler,
    instances: Vec<InstanceSlot<R>>,
    /// Scratch buffer for the scheduler, reused so a pick does not allocate.
    views: Vec<InstanceView>,
    waiters: BinaryHeap<Waiter<R>>,
    retired: bool,
    next_serial: u64,
    /// Calls holding an instance of this pool.
    active_total: u32,
    cold_starts: u64,
    cold_start_total: Duration,
    warm_starts: u64,
    /// Exponentially weighted mean time a call holds an instance, in µs.
    mean_hold_us: Option<u64>,
    tick: TickObservation,
    last_decision: Option<ScaleDecision>,
    last_health_check: Instant,
}

impl<R: Send + Sync + 'static> PoolState<R> {
    fn concurrency(&self) -> u32 {
        self.active_total + self.waiters.len() as u32
    }

    /// Folds the time since the last change into the tick's concurrency area; call before
    /// anything that changes the pool's concurrency.
    fn observe_concurrency(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.tick.last_change);
        self.tick.concurrency_area += f64::from(self.concurrency()) * elapsed.as_secs_f64();
        self.tick.last_change = now;
    }

    fn after_concurrency_change(&mut self) {
        self.tick.peak_concurrency = self.tick.peak_concurrency.max(self.concurrency());
    }

    fn can_grant(&self, force_new_instance: bool) -> bool {
        if force_new_instance {
            return self.has_room_for_new_instance();
        }
        self.below_max_instances() || self.instances.iter().any(InstanceSlot::has_free_capacity)
    }

    fn below_max_instances(&self) -> bool {
        self.instances.len() < self.settings.max_instances as usize
    }

    /// Below `max_instances`, or at it with an idle instance that can make way.
    fn has_room_for_new_instance(&self) -> bool {
        self.below_max_instances() || self.longest_idle_instance().is_some()
    }

    fn longest_idle_instance(&self) -> Option<usize> {
        self.instances
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.state == InstanceState::Ready && slot.active == 0)
            .min_by_key(|(_, slot)| slot.idle_since)
            .map(|(index, _)| index)
    }

    /// Reserves a new instance (state Creating) and returns its entry.
    fn reserve_instance(
        &mut self,
        now: Instant,
        one_shot: bool,
        active: u32,
    ) -> Arc<InstanceEntry<R>> {
        let serial = self.next_serial;
        self.next_serial += 1;
        let entry = Arc::new(InstanceEntry {
            serial,
            instance_id: format!("{}/i{serial}", self.instance_id_base),
            runtime: OnceLock::new(),
        });
        self.instances.push(InstanceSlot {
            entry: entry.clone(),
            state: InstanceState::Creating,
            capacity: self.settings.instance_capacity,
            active,
            served: 0,
            failures: 0,
            consecutive_failures: 0,
            healthy: true,
            one_shot,
            mean_response_us: None,
            idle_since: now,
        });
        entry
    }

    /// Picks an instance with free capacity by the pool's policy and takes one of its slots.
    fn take_free_slot(&mut self) -> Option<Arc<InstanceEntry<R>>> {
        self.views.clear();
        self.views
            .extend(self.instances.iter().map(|slot| InstanceView {
                serial: slot.entry.serial,
                active: slot.active,
                capacity: slot.capacity,
                accepting: slot.accepting(),
                mean_response_us: slot.mean_response_us,
            }));
        let index = self.scheduler.pick(&self.views)?;
        let slot = &mut self.instances[index];
        debug_assert!(slot.has_free_capacity());
        slot.active += 1;
        slot.state = InstanceState::Running;
        Some(slot.entry.clone())
    }

    fn slot_index(&self, serial: u64) -> Option<usize> {
        self.instances
            .iter()
            .position(|slot| slot.entry.serial == serial)
    }

    fn retry_hint(&self, waiting_ahead: usize, max_concurrent: usize) -> Duration {
        let mean = self
            .mean_hold_us
            .map(Duration::from_micros)
            .unwrap_or(Duration::from_millis(100));
        let rounds = waiting_ahead / max_concurrent.max(1) + 1;
        (mean * rounds as u32).clamp(Duration::from_millis(10), Duration::from_secs(30))
    }
}

/// A reserved instance and the factory that is to start it.
type Reservation<R> = (Arc<InstanceEntry<R>>, Arc<dyn InstanceFactory<R>>);

/// How a call's grant ended, as seen by the dispatcher.
struct LeaseAccount {
    pool_id: u64,
    serial: u64,
    granted_at: Instant,
    /// The lease reserved its instance and the instance never started.
    never_started: bool,
    /// The caller received it (a served call).
    delivered: bool,
    failed: bool,
    discard: bool,
}

impl<R: Send + Sync + 'static> Dispatcher<R> {
    /// A dispatcher without background work; call [`Dispatcher::start_maintenance`] inside a
    /// tokio runtime to run autoscaling, idle scale-down and health checks.
    pub fn new(config: DispatcherConfig) -> Dispatcher<R> {
        Dispatcher {
            shared: Arc::new(Shared {
                config,
                epoch: Instant::now(),
                state: Mutex::new(State {
                    running: 0,
                    bounded_waiting: 0,
                    unbounded_waiting: 0,
                    pools: HashMap::new(),
                    pools_with_waiters: HashSet::new(),
                    next_pool_id: 1,
                    next_sequence: 0,
                    recent_waits: RecentWaits::new(RECENT_WAITS_KEPT),
                    recent_instance_failures: VecDeque::new(),
                    instances_terminated: 0,
                    instances_failed: 0,
                }),
                stop_maintenance: CancellationToken::new(),
            }),
        }
    }

    pub fn config(&self) -> &DispatcherConfig {
        &self.shared.config
    }

    /// Spawns the background loop; it ends when the last clone of the dispatcher is dropped.
    pub fn start_maintenance(&self) {
        let weak = Arc::downgrade(&self.shared);
        let stop = self.shared.stop_maintenance.clone();
        let tick = self.shared.config.autoscale_tick;
        tokio::spawn(async move {
            let mut interval = tokio::time::interval_at(Instant::now() + tick, tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = interval.tick() => {}
                    () = stop.cancelled() => return,
                }
                let Some(shared) = weak.upgrade() else { return };
                maintain(&shared);
            }
        });
    }

    /// Adds the pool of one loaded task and starts its `min_instances`. The pool is retired
    /// when the returned handle is dropped.
    pub fn add_pool(
        &self,
        task_id: &str,
        settings: PoolSettings,
        factory: Arc<dyn InstanceFactory<R>>,
    ) -> PoolHandle<R> {
        let now = Instant::now();
        let mut state = self.shared.state.lock();
        let pool_id = state.next_pool_id;
        state.next_pool_id += 1;
        let mut pool = PoolState {
            task_id: task_id.to_owned(),
            instance_id_base: format!("{}{task_id}", self.shared.config.instance_id_prefix),
            settings,
            factory,
            scheduler: InstanceScheduler::new(settings.scheduler_policy),
            autoscaler: Autoscaler::new(
                settings.autoscale,
                settings.min_instances,
                settings.max_instances,
                self.shared.config.autoscale_tick,
            ),
            instances: Vec::new(),
            views: Vec::new(),
            waiters: BinaryHeap::new(),
            retired: false,
            next_serial: 1,
            active_total: 0,
            cold_starts: 0,
            cold_start_total: Duration::ZERO,
            warm_starts: 0,
            mean_hold_us: None,
            tick: TickObservation {
                last_change: now,
                concurrency_area: 0.0,
                peak_concurrency: 0,
                arrivals: 0,
            },
            last_decision: None,
            last_health_check: now,
        };
        let prewarm = top_up(&mut pool, settings.min_instances, now);
        state.pools.insert(pool_id, pool);
        drop(state);
        for (entry, factory) in prewarm {
            spawn_prewarm(&self.shared, pool_id, entry, factory);
        }
        PoolHandle {
            shared: self.shared.clone(),
            pool_id,
        }
    }

    /// Grants an instance at once or queues the call; refuses at once when the queue is full.
    pub fn enqueue(
        &self,
        pool: &PoolHandle<R>,
        request: AcquireRequest,
    ) -> Result<Ticket<R>, Rejection> {
        let shared = &self.shared;
        let now = Instant::now();
        // Declared before the guard so evicted instances are dropped after the lock is let go.
        let mut removed = Vec::new();
        let mut state = shared.state.lock();
        let state = &mut *state;
        let sequence = state.next_sequence;
        state.next_sequence += 1;
        let max_concurrent = shared.config.max_concurrent_executions;
        let bounded_waiting = state.bounded_waiting;
        let running = state.running;
        let pool_state = state
            .pools
            .get_mut(&pool.pool_id)
            .expect("a pool lives as long as its handle");
        pool_state.observe_concurrency(now);
        pool_state.tick.arrivals += 1;
        // A caller that can retry hears "no" at once; async work waits for room instead.
        if request.force_new_instance
            && request.counts_against_queue_limit
            && !pool_state.has_room_for_new_instance()
        {
            return Err(Rejection::PoolAtMaxInstances {
                max_instances: pool_state.settings.max_instances,
                retry_after: pool_state.retry_hint(0, max_concurrent),
            });
        }
        if running < max_concurrent
            && pool_state.waiters.is_empty()
            && pool_state.can_grant(request.force_new_instance)
        {
            let lease = grant(
                shared,
                state,
                pool.pool_id,
                request.force_new_instance,
                now,
                now,
                &mut removed,
            );
            state.recent_waits.record(Duration::ZERO);
            return Ok(Ticket {
                shared: shared.clone(),
                pool_id: pool.pool_id,
                sequence: 0,
                waiting: None,
                granted: Some(lease),
            });
        }
        if request.grant_now_only {
            return Err(Rejection::NoInstanceNow {
                retry_after: pool_state.retry_hint(bounded_waiting, max_concurrent),
            });
        }
        if request.counts_against_queue_limit && bounded_waiting >= shared.config.max_queue_length {
            return Err(Rejection::QueueFull {
                waiting: bounded_waiting,
                max_queue_length: shared.config.max_queue_length,
                retry_after: pool_state.retry_hint(bounded_waiting, max_concurrent),
            });
        }
        let (sender, receiver) = oneshot::channel();
        pool_state.waiters.push(Waiter {
            order: WaiterOrder {
                rank: waiter_rank(
                    request.priority,
                    now.saturating_duration_since(shared.epoch),
                    shared.config.priority_aging,
                ),
                sequence,
            },
            sender,
            enqueued_at: now,
            force_new_instance: request.force_new_instance,
            counts_against_queue_limit: request.counts_against_queue_limit,
        });
        pool_state.after_concurrency_change();
        state.pools_with_waiters.insert(pool.pool_id);
        if request.counts_against_queue_limit {
            state.bounded_waiting += 1;
        } else {
            state.unbounded_waiting += 1;
        }
        Ok(Ticket {
            shared: shared.clone(),
            pool_id: pool.pool_id,
            sequence,
            waiting: Some(receiver),
            granted: None,
        })
    }

    /// Whether a call to this pool would be granted an instance at once now (a run slot free,
    /// nobody waiting for the pool, and an instance with free capacity or room for a new one).
    /// Cluster mode asks before running a call here or on a peer; the answer can change the
    /// moment the lock is let go, so it is a routing hint, not a reservation.
    pub fn can_grant_now(&self, pool: &PoolHandle<R>, force_new_instance: bool) -> bool {
        let state = self.shared.state.lock();
        let Some(pool_state) = state.pools.get(&pool.pool_id) else {
            return false;
        };
        state.running < self.shared.config.max_concurrent_executions
            && pool_state.waiters.is_empty()
            && pool_state.can_grant(force_new_instance)
    }

    /// Calls holding an instance now.
    pub fn running(&self) -> usize {
        self.shared.state.lock().running
    }

    /// Calls waiting that count against `max_queue_length`.
    pub fn queued(&self) -> usize {
        self.shared.state.lock().bounded_waiting
    }

    /// The whole picture, for stats and health.
    pub fn snapshot(&self) -> DispatcherSnapshot {
        let now = Instant::now();
        let mut state = self.shared.state.lock();
        prune_failures(&mut state, now);
        let mut instances_by_state = BTreeMap::new();
        let mut cold_starts = 0;
        let mut warm_starts = 0;
        let pools: Vec<PoolSnapshot> = state
            .pools
            .values()
            .map(|pool| {
                for slot in &pool.instances {
                    *instances_by_state.entry(slot.state).or_insert(0) += 1;
                }
                cold_starts += pool.cold_starts;
                warm_starts += pool.warm_starts;
                pool_snapshot(pool, now)
            })
            .collect();
        let queue_wait = state
            .recent_waits
            .percentiles_ms([50.0, 90.0, 99.0, 100.0])
            .map(|[p50_ms, p90_ms, p99_ms, max_ms]| WaitPercentiles {
                p50_ms,
                p90_ms,
                p99_ms,
                max_ms,
            });
        DispatcherSnapshot {
            running: state.running,
            queued: state.bounded_waiting,
            waiting_uncounted: state.unbounded_waiting,
            max_queue_length: self.shared.config.max_queue_length,
            max_concurrent_executions: self.shared.config.max_concurrent_executions,
            instances_by_state,
            instances_terminated: state.instances_terminated,
            instances_failed: state.instances_failed,
            instance_failures_last_minute: state.recent_instance_failures.len() as u32,
            queue_wait,
            cold_starts,
            warm_starts,
            pools,
        }
    }

    /// One pool's picture.
    pub fn pool_snapshot(&self, pool: &PoolHandle<R>) -> Option<PoolSnapshot> {
        let state = self.shared.state.lock();
        state
            .pools
            .get(&pool.pool_id)
            .map(|pool| pool_snapshot(pool, Instant::now()))
    }
}

fn pool_snapshot<R: Send + Sync + 'static>(pool: &PoolState<R>, now: Instant) -> PoolSnapshot {
    PoolSnapshot {
        task_id: pool.task_id.clone(),
        retired: pool.retired,
        settings: pool.settings,
        waiting: pool.waiters.len(),
        active: pool.active_total,
        instances: pool
            .instances
            .iter()
            .map(|slot| InstanceSnapshot {
                instance_id: slot.entry.instance_id.clone(),
                state: slot.state,
                active: slot.active,
                capacity: slot.capacity,
                served: slot.served,
                failures: slot.failures,
                healthy: slot.healthy,
                mean_response_us: slot.mean_response_us,
                idle_for: (slot.active == 0 && slot.state == InstanceState::Ready)
                    .then(|| now.saturating_duration_since(slot.idle_since)),
            })
            .collect(),
        last_decision: pool.last_decision,
        cold_starts: pool.cold_starts,
        warm_starts: pool.warm_starts,
        mean_cold_start_ms: (pool.cold_starts > 0)
            .then(|| pool.cold_start_total.as_secs_f64() * 1000.0 / pool.cold_starts as f64),
    }
}

/// Hands one instance of `pool_id` to a call: a free slot by policy, else a new reservation.
/// The caller checked `can_grant` and the global limit. A fresh instance asked for at
/// `max_instances` takes the place of the longest-idle instance, which goes to `removed`.
#[allow(clippy::too_many_arguments)]
fn grant<R: Send + Sync + 'static>(
    shared: &Arc<Shared<R>>,
    state: &mut State<R>,
    pool_id: u64,
    force_new_instance: bool,
    enqueued_at: Instant,
    now: Instant,
    removed: &mut Vec<Arc<InstanceEntry<R>>>,
) -> InstanceLease<R> {
    let pool = state
        .pools
        .get_mut(&pool_id)
        .expect("granting from a live pool");
    pool.observe_concurrency(now);
    let free_slot = if force_new_instance {
        None
    } else {
        pool.take_free_slot()
    };
    let (entry, start_with) = match free_slot {
        Some(entry) => {
            pool.warm_starts += 1;
            (entry, None)
        }
        None => {
            if !pool.below_max_instances()
                && let Some(index) = pool.longest_idle_instance()
            {
                removed.push(pool.instances.swap_remove(index).entry);
                state.instances_terminated += 1;
            }
            let entry = pool.reserve_instance(now, force_new_instance, 1);
            (entry, Some(pool.factory.clone()))
        }
    };
    pool.active_total += 1;
    pool.after_concurrency_change();
    state.running += 1;
    InstanceLease {
        shared: shared.clone(),
        pool_id,
        entry,
        granted_at: now,
        queue_wait: now.saturating_duration_since(enqueued_at),
        start_with,
        cold_start: None,
        delivered: false,
        failed: false,
        discard: false,
        armed: true,
    }
}

/// Grants instances (or freed run slots) to the best waiting calls until none can be served.
fn dispatch<R: Send + Sync + 'static>(
    shared: &Arc<Shared<R>>,
    state: &mut State<R>,
) -> Vec<Arc<InstanceEntry<R>>> {
    let mut removed = Vec::new();
    let now = Instant::now();
    while state.running < shared.config.max_concurrent_executions {
        let mut best: Option<(WaiterOrder, u64)> = None;
        for pool_id in &state.pools_with_waiters {
            let pool = &state.pools[pool_id];
            let Some(top) = pool.waiters.peek() else {
                continue;
            };
            if pool.can_grant(top.force_new_instance)
                && best.is_none_or(|(order, _)| top.order > order)
            {
                best = Some((top.order, *pool_id));
            }
        }
        let Some((_, pool_id)) = best else { break };
        let pool = state.pools.get_mut(&pool_id).expect("listed pool exists");
        pool.observe_concurrency(now);
        let waiter = pool.waiters.pop().expect("peeked waiter");
        if pool.waiters.is_empty() {
            state.pools_with_waiters.remove(&pool_id);
        }
        if waiter.counts_against_queue_limit {
            state.bounded_waiting -= 1;
        } else {
            state.unbounded_waiting -= 1;
        }
        let lease = grant(
            shared,
            state,
            pool_id,
            waiter.force_new_instance,
            waiter.enqueued_at,
            now,
            &mut removed,
        );
        let queue_wait = lease.queue_wait;
        match waiter.sender.send(lease) {
            Ok(()) => state.recent_waits.record(queue_wait),
            Err(mut lease) => {
                // The caller left between our pop and the send: undo the grant.
                lease.armed = false;
                let account = lease.account();
                removed.extend(release_locked(shared, state, account));
            }
        }
    }
    removed
}

/// Gives a lease's instance back. Returns entries to drop outside the lock.
fn release_locked<R: Send + Sync + 'static>(
    shared: &Arc<Shared<R>>,
    state: &mut State<R>,
    account: LeaseAccount,
) -> Vec<Arc<InstanceEntry<R>>> {
    let now = Instant::now();
    state.running -= 1;
    let mut removed = Vec::new();
    let mut prewarm = Vec::new();
    if let Some(pool) = state.pools.get_mut(&account.pool_id) {
        pool.observe_concurrency(now);
        pool.active_total -= 1;
        if let Some(index) = pool.slot_index(account.serial) {
            let max_uses = pool.settings.max_uses;
            let reuse = pool.settings.isolation == Isolation::Reuse;
            let retired = pool.retired;
            let slot = &mut pool.instances[index];
            slot.active -= 1;
            if account.delivered {
                slot.served += 1;
                let held_us = now
                    .saturating_duration_since(account.granted_at)
                    .as_micros() as u64;
                slot.mean_response_us = Some(ewma(slot.mean_response_us, held_us));
                pool.mean_hold_us = Some(ewma(pool.mean_hold_us, held_us));
            }
            let slot = &mut pool.instances[index];
            if account.failed {
                slot.failures += 1;
                slot.consecutive_failures += 1;
                // Only an instance that keeps state between calls can be broken by them; a
                // per-call instance is fresh every time, so its calls' failures are the guest's.
                if reuse && slot.consecutive_failures >= UNHEALTHY_AFTER_CONSECUTIVE_FAILURES {
                    slot.healthy = false;
                }
            } else if account.delivered {
                slot.consecutive_failures = 0;
            }
            let used_up = reuse && max_uses > 0 && slot.served >= max_uses;
            let instance_failed = account.discard || !slot.healthy;
            // A reservation whose call left before starting it never existed as an instance.
            let abandoned = account.never_started && !account.discard;
            if instance_failed || abandoned || used_up || slot.one_shot || retired {
                slot.state = InstanceState::Draining;
            } else if slot.active == 0 {
                slot.state = InstanceState::Ready;
                slot.idle_since = now;
            }
            if slot.state == InstanceState::Draining && slot.active == 0 {
                let slot = pool.instances.swap_remove(index);
                removed.push(slot.entry);
                if instance_failed {
                    state.instances_failed += 1;
                    state.recent_instance_failures.push_back(now);
                } else if !abandoned {
                    state.instances_terminated += 1;
                }
            }
        }
        if !pool.retired {
            prewarm = top_up(pool, pool.settings.min_instances, now);
        }
        pool.after_concurrency_change();
    }
    for (entry, factory) in prewarm {
        spawn_prewarm(shared, account.pool_id, entry, factory);
    }
    removed.extend(dispatch(shared, state));
    removed
}

fn ewma(previous: Option<u64>, sample: u64) -> u64 {
    match previous {
        None => sample,
        Some(previous) => (previous * 4 + sample) / 5,
    }
}

/// Reserves instances until the pool has `target` (bounded by max); returns what to start.
fn top_up<R: Send + Sync + 'static>(
    pool: &mut PoolState<R>,
    target: u32,
    now: Instant,
) -> Vec<Reservation<R>> {
    let target = target.min(pool.settings.max_instances) as usize;
    let mut reserved = Vec::new();
    while pool.instances.len() < target {
        let entry = pool.reserve_instance(now, false, 0);
        reserved.push((entry, pool.factory.clone()));
    }
    reserved
}

/// Starts a reserved instance in the background (min_instances, replacements, prewarm).
fn spawn_prewarm<R: Send + Sync + 'static>(
    shared: &Arc<Shared<R>>,
    pool_id: u64,
    entry: Arc<InstanceEntry<R>>,
    factory: Arc<dyn InstanceFactory<R>>,
) {
    let shared = shared.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let result = factory.create_instance().await;
        let now = Instant::now();
        let mut unused_runtime = None;
        let removed = {
            let mut guard = shared.state.lock();
            let state = &mut *guard;
            let Some(pool) = state.pools.get_mut(&pool_id) else {
                return;
            };
            let Some(index) = pool.slot_index(entry.serial) else {
                return;
            };
            match result {
                Ok(runtime) if !pool.retired => {
                    if let Err(runtime) = entry.runtime.set(runtime) {
                        unused_runtime = Some(runtime);
                    }
                    let slot = &mut pool.instances[index];
                    slot.state = InstanceState::Ready;
                    slot.idle_since = now;
                    tracing::debug!(
                        task_id = %pool.task_id,
                        instance_id = %entry.instance_id,
                        start_ms = started.elapsed().as_secs_f64() * 1000.0,
                        "instance prewarmed"
                    );
                }
                Ok(runtime) => {
                    unused_runtime = Some(runtime);
                    pool.instances.swap_remove(index);
                    state.instances_terminated += 1;
                }
                Err(error) => {
                    tracing::warn!(
                        task_id = %pool.task_id,
                        instance_id = %entry.instance_id,
                        "starting an instance failed: {}", error.message
                    );
                    pool.instances.swap_remove(index);
                    state.instances_failed += 1;
                    state.recent_instance_failures.push_back(now);
                }
            }
            dispatch(&shared, state)
        };
        drop(removed);
        drop(unused_runtime);
    });
}

fn prune_failures<R: Send + Sync + 'static>(state: &mut State<R>, now: Instant) {
    while let Some(at) = state.recent_instance_failures.front() {
        if now.saturating_duration_since(*at) > RECENT_FAILURE_WINDOW {
            state.recent_instance_failures.pop_front();
        } else {
            break;
        }
    }
}

/// One round of background work; see the module docs.
fn maintain<R: Send + Sync + 'static>(shared: &Arc<Shared<R>>) {
    let now = Instant::now();
    let tick_seconds = shared.config.autoscale_tick.as_secs_f64().max(1e-6);
    let mut removed = Vec::new();
    let mut prewarm = Vec::new();
    {
        let mut guard = shared.state.lock();
        let state = &mut *guard;
        prune_failures(state, now);
        let mut forgotten = Vec::new();
        for (&pool_id, pool) in state.pools.iter_mut() {
            pool.observe_concurrency(now);
            let sample = AutoscaleSample {
                average_concurrency: pool.tick.concurrency_area / tick_seconds,
                peak_concurrency: pool.tick.peak_concurrency,
                arrivals: pool.tick.arrivals,
                mean_execution_seconds: pool.mean_hold_us.map(|micros| micros as f64 / 1e6),
            };
            pool.tick.concurrency_area = 0.0;
            pool.tick.arrivals = 0;
            pool.tick.peak_concurrency = pool.concurrency();
            let decision = pool.autoscaler.observe(sample, pool.instances.len() as u32);
            if pool
                .last_decision
                .is_none_or(|last| last.desired_instances != decision.desired_instances)
            {
                tracing::debug!(
                    task_id = %pool.task_id,
                    current_instances = pool.instances.len(),
                    desired_instances = decision.desired_instances,
                    reactive_instances = decision.reactive_instances,
                    predicted_instances = decision.predicted_instances,
                    panicking = decision.panicking,
                    "autoscaler"
                );
            }
            pool.last_decision = Some(decision);

            // Health checks of idle instances.
            if now.saturating_duration_since(pool.last_health_check)
                >= shared.config.health_check_interval
            {
                pool.last_health_check = now;
                let factory = pool.factory.clone();
                for slot in &mut pool.instances {
                    let idle = slot.state == InstanceState::Ready && slot.active == 0;
                    if idle
                        && let Some(runtime) = slot.entry.runtime.get()
                        && !factory.is_healthy(runtime)
                    {
                        slot.healthy = false;
                        slot.state = InstanceState::Failed;
                    }
                }
                let before = pool.instances.len();
                pool.instances.retain(|slot| {
                    if slot.state == InstanceState::Failed {
                        removed.push(slot.entry.clone());
                        false
                    } else {
                        true
                    }
                });
                let failed = before - pool.instances.len();
                state.instances_failed += failed as u64;
                for _ in 0..failed {
                    state.recent_instance_failures.push_back(now);
                }
            }

            // Scale down: idle past idle_timeout, down to max(desired, min).
            let idle_timeout = Duration::from_millis(pool.settings.idle_timeout_ms);
            let floor = if pool.retired {
                0
            } else {
                decision.desired_instances.max(pool.settings.min_instances) as usize
            };
            while pool.instances.len() > floor {
                let longest_idle = pool
                    .instances
                    .iter()
                    .enumerate()
                    .filter(|(_, slot)| slot.state == InstanceState::Ready && slot.active == 0)
                    .filter(|(_, slot)| {
                        pool.retired
                            || now.saturating_duration_since(slot.idle_since) >= idle_timeout
                    })
                    .min_by_key(|(_, slot)| slot.idle_since)
                    .map(|(index, _)| index);
                let Some(index) = longest_idle else { break };
                removed.push(pool.instances.swap_remove(index).entry);
                state.instances_terminated += 1;
            }

            // Scale up: prewarm to the desired count.
            if !pool.retired {
                let target = decision.desired_instances.max(pool.settings.min_instances);
                for (entry, factory) in top_up(pool, target, now) {
                    prewarm.push((pool_id, entry, factory));
                }
            }
            if pool.retired && pool.instances.is_empty() && pool.waiters.is_empty() {
                forgotten.push(pool_id);
            }
        }
        for pool_id in forgotten {
            state.pools.remove(&pool_id);
        }
        removed.extend(dispatch(shared, state));
    }
    for (pool_id, entry, factory) in prewarm {
        spawn_prewarm(shared, pool_id, entry, factory);
    }
    drop(removed);
}

/// Keeps a task's pool alive; dropping it retires the pool: idle instances go at once, busy
/// ones drain, waiting calls are still served.
pub struct PoolHandle<R: Send + Sync + 'static> {
    shared: Arc<Shared<R>>,
    pool_id: u64,
}

impl<R: Send + Sync + 'static> Drop for PoolHandle<R> {
    fn drop(&mut self) {
        let mut removed = Vec::new();
        {
            let mut guard = self.shared.state.lock();
            let state = &mut *guard;
            let Some(pool) = state.pools.get_mut(&self.pool_id) else {
                return;
            };
            pool.retired = true;
            let before = pool.instances.len();
            pool.instances.retain(|slot| {
                let idle = slot.state == InstanceState::Ready && slot.active == 0;
                if idle {
                    removed.push(slot.entry.clone());
                }
                !idle
            });
            state.instances_terminated += (before - pool.instances.len()) as u64;
            if pool.instances.is_empty() && pool.waiters.is_empty() {
                state.pools.remove(&self.pool_id);
            }
        }
        drop(removed);
    }
}

/// A call's place in line. [`Ticket::ready`] resolves to the instance; dropping the ticket (or
/// the `ready` future) leaves the queue.
pub struct Ticket<R: Send + Sync + 'static> {
    shared: Arc<Shared<R>>,
    pool_id: u64,
    sequence: u64,
    waiting: Option<oneshot::Receiver<InstanceLease<R>>>,
    granted: Option<InstanceLease<R>>,
}

impl<R: Send + Sync + 'static> Ticket<R> {
    /// Whether the call got an instance without waiting.
    pub fn granted_at_once(&self) -> bool {
        self.granted.is_some()
    }

    /// Waits for the instance and starts it when this call reserved a new one (a cold start).
    pub async fn ready(mut self) -> Result<InstanceLease<R>, InstanceStartError> {
        let mut lease = match self.granted.take() {
            Some(lease) => lease,
            None => {
                let receiver = self
                    .waiting
                    .as_mut()
                    .expect("a ticket waits or holds a grant");
                let lease = receiver.await.map_err(|_| InstanceStartError {
                    message: "the node stopped before an instance was free".into(),
                })?;
                self.waiting = None;
                lease
            }
        };
        if let Some(factory) = lease.start_with.take() {
            let started = Instant::now();
            match factory.create_instance().await {
                Ok(runtime) => {
                    let start_duration = started.elapsed();
                    let _ = lease.entry.runtime.set(runtime);
                    lease.cold_start = Some(start_duration);
                    let mut state = lease.shared.state.lock();
                    if let Some(pool) = state.pools.get_mut(&lease.pool_id) {
                        pool.cold_starts += 1;
                        pool.cold_start_total += start_duration;
                        if let Some(index) = pool.slot_index(lease.entry.serial) {
                            pool.instances[index].state = InstanceState::Running;
                        }
                    }
                }
                Err(error) => {
                    lease.discard = true;
                    lease.failed = true;
                    drop(lease);
                    return Err(error);
                }
            }
        }
        lease.delivered = true;
        Ok(lease)
    }
}

impl<R: Send + Sync + 'static> Drop for Ticket<R> {
    fn drop(&mut self) {
        let Some(mut receiver) = self.waiting.take() else {
            return;
        };
        receiver.close();
        if let Ok(lease) = receiver.try_recv() {
            // Granted while we were leaving: give it straight back.
            drop(lease);
            return;
        }
        let mut guard = self.shared.state.lock();
        let state = &mut *guard;
        let Some(pool) = state.pools.get_mut(&self.pool_id) else {
            return;
        };
        pool.observe_concurrency(Instant::now());
        let mut left = None;
        pool.waiters.retain(|waiter| {
            if waiter.order.sequence == self.sequence {
                left = Some(waiter.counts_against_queue_limit);
                false
            } else {
                true
            }
        });
        let pool_empty = pool.waiters.is_empty();
        match left {
            Some(true) => state.bounded_waiting -= 1,
            Some(false) => state.unbounded_waiting -= 1,
            None => {}
        }
        if pool_empty {
            state.pools_with_waiters.remove(&self.pool_id);
        }
    }
}

/// A call's hold on one instance. Dropping it gives the instance back.
pub struct InstanceLease<R: Send + Sync + 'static> {
    shared: Arc<Shared<R>>,
    pool_id: u64,
    entry: Arc<InstanceEntry<R>>,
    granted_at: Instant,
    queue_wait: Duration,
    /// Set while this lease must start its (reserved) instance.
    start_with: Option<Arc<dyn InstanceFactory<R>>>,
    cold_start: Option<Duration>,
    delivered: bool,
    failed: bool,
    discard: bool,
    armed: bool,
}

impl<R: Send + Sync + 'static> InstanceLease<R> {
    /// The instance's runtime.
    pub fn runtime(&self) -> &R {
        self.entry
            .runtime
            .get()
            .expect("a delivered lease holds a started instance")
    }

    pub fn instance_id(&self) -> &str {
        &self.entry.instance_id
    }

    /// How long the call waited for this instance.
    pub fn queue_wait(&self) -> Duration {
        self.queue_wait
    }

    /// `Some(start time)` when this call started its instance (a cold start).
    pub fn cold_start(&self) -> Option<Duration> {
        self.cold_start
    }

    /// The call failed (counts toward the instance's health).
    pub fn record_failure(&mut self) {
        self.failed = true;
    }

    /// The instance must not serve again (it trapped, exited or was cut off mid-call).
    pub fn discard_instance(&mut self) {
        self.discard = true;
    }

    fn account(&self) -> LeaseAccount {
        LeaseAccount {
            pool_id: self.pool_id,
            serial: self.entry.serial,
            granted_at: self.granted_at,
            never_started: self.entry.runtime.get().is_none(),
            delivered: self.delivered,
            failed: self.failed,
            discard: self.discard,
        }
    }
}

impl<R: Send + Sync + 'static> Drop for InstanceLease<R> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.armed = false;
        let account = self.account();
        let shared = self.shared.clone();
        let removed = {
            let mut state = shared.state.lock();
            release_locked(&shared, &mut state, account)
        };
        drop(removed);
    }
}

/// Queue wait percentiles over the most recent calls, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WaitPercentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Clone, Debug)]
pub struct DispatcherSnapshot {
    pub running: usize,
    pub queued: usize,
    /// Async executions waiting for an instance (not counted against `max_queue_length`).
    pub waiting_uncounted: usize,
    pub max_queue_length: usize,
    pub max_concurrent_executions: usize,
    /// Instances alive now, by state.
    pub instances_by_state: BTreeMap<InstanceState, u32>,
    /// Instances removed normally since start (idle, used up, one-shot, retired).
    pub instances_terminated: u64,
    /// Instances removed because they failed (start failure, trap, unhealthy) since start.
    pub instances_failed: u64,
    pub instance_failures_last_minute: u32,
    /// `None` until a call has been granted.
    pub queue_wait: Option<WaitPercentiles>,
    pub cold_starts: u64,
    pub warm_starts: u64,
    pub pools: Vec<PoolSnapshot>,
}

#[derive(Clone, Debug)]
pub struct PoolSnapshot {
    pub task_id: String,
    pub retired: bool,
    pub settings: PoolSettings,
    pub waiting: usize,
    pub active: u32,
    pub instances: Vec<InstanceSnapshot>,
    /// The autoscaler's latest decision (`None` before its first tick).
    pub last_decision: Option<ScaleDecision>,
    pub cold_starts: u64,
    pub warm_starts: u64,
    pub mean_cold_start_ms: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct InstanceSnapshot {
    pub instance_id: String,
    pub state: InstanceState,
    pub active: u32,
    pub capacity: u32,
    pub served: u64,
    pub failures: u64,
    pub healthy: bool,
    pub mean_response_us: Option<u64>,
    /// How long an idle instance has been idle.
    pub idle_for: Option<Duration>,
}
