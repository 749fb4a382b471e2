//! The metrics the components own: per task and function, the counters and the invoke-duration
//! histogram ([`TaskMetrics`]); per node, the queue-wait histogram ([`NodeMetrics`]).
//!
//! # Design
//!
//! Every value is a real measurement taken where the event happens; nothing is estimated at
//! scrape time. Recording is lock-free or nearly so:
//! - Per task and function: a [`TaskMetrics`] lives in each task's `TaskCounters` (so it
//!   survives task updates, like the other counters, and disappears with a deleted task). It maps
//!   function names to atomic counters and an invoke-duration histogram behind a
//!   `parking_lot::RwLock`; an execution that ends takes the read lock for one map lookup and
//!   adds to a few atomics (the write lock only the first time a function is called).
//! - Per node: the queue-wait histogram lives in the manager ([`NodeMetrics`]).
//! - Histograms are `spearlet_core::histogram::Histogram`: fixed bounds, one atomic per bucket.
//!
//! The Prometheus exposition that reads these (and the node's gauges) at scrape time is
//! `exposition.rs`, above the node. **Invariant:** this file imports nothing of the node (no
//! `node`, `manager` or `registry`), so every component can own its metrics without an import
//! loop.
//!
//! # Names
//!
//! The FaaS metrics follow the OpenTelemetry semantic conventions, translated the Prometheus
//! way (dots become underscores, counters end in `_total`, durations are in seconds with the
//! unit in the name):
//!
//! | OpenTelemetry          | Prometheus                                                   |
//! |------------------------|--------------------------------------------------------------|
//! | `faas.invocations`     | `faas_invocations_total{task,function,status}`               |
//! | `faas.errors`          | `faas_errors_total{task,function,error_code}`                |
//! | `faas.timeouts`        | `faas_timeouts_total{task,function}`                         |
//! | `faas.coldstarts`      | `faas_coldstarts_total{task,function}`                       |
//! | `faas.invoke_duration` | `faas_invoke_duration_seconds{task,function}` (histogram)    |
//! | `faas.init_duration`   | `faas_init_duration_seconds{task}` (histogram)               |
//!
//! `task` is the task name, `function` the function name the call named (empty: the task's
//! default entry point), `status` the terminal execution status in lowercase, `error_code` the
//! wire error code (`EXIT_CODE`, `TRAP`, …). An invocation is counted once, when its terminal
//! record is written; a failed one also counts in `faas_errors_total`, a timed-out one in
//! `faas_timeouts_total` (cancellations only in `faas_invocations_total`). A cold start is a
//! call that had to start its instance, so it is counted exactly once per instance a call
//! started; `faas_init_duration_seconds` observes those starts (instances the pool starts in the
//! background — `min_instances`, prewarming — delay no call and are not counted). The node's own
//! metrics are prefixed `spearlet_`; see docs/OPERATIONS.md for the full list.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use spearlet_core::histogram::{DURATION_SECONDS_BOUNDS, Histogram, HistogramSnapshot};
use spearlet_core::{ErrorCode, ExecutionStatus};

/// Terminal statuses, in the order their counters are kept (and `FunctionSnapshot::invocations`
/// lists them).
pub const TERMINAL_STATUSES: [ExecutionStatus; 4] = [
    ExecutionStatus::Completed,
    ExecutionStatus::Failed,
    ExecutionStatus::Timeout,
    ExecutionStatus::Cancelled,
];

fn terminal_status_index(status: ExecutionStatus) -> Option<usize> {
    match status {
        ExecutionStatus::Completed => Some(0),
        ExecutionStatus::Failed => Some(1),
        ExecutionStatus::Timeout => Some(2),
        ExecutionStatus::Cancelled => Some(3),
        ExecutionStatus::Pending | ExecutionStatus::Running => None,
    }
}

/// The metrics of one task: per function, and the start times of the instances its calls
/// started.
pub struct TaskMetrics {
    functions: RwLock<HashMap<String, FunctionMetrics>>,
    init_duration: Histogram,
}

impl Default for TaskMetrics {
    fn default() -> TaskMetrics {
        TaskMetrics {
            functions: RwLock::new(HashMap::new()),
            init_duration: Histogram::new(DURATION_SECONDS_BOUNDS),
        }
    }
}

struct FunctionMetrics {
    /// By terminal status, in `TERMINAL_STATUSES` order.
    invocations: [AtomicU64; 4],
    /// Failed invocations by error code, in `ErrorCode::ALL` order.
    errors: [AtomicU64; ErrorCode::ALL.len()],
    coldstarts: AtomicU64,
    invoke_duration: Histogram,
}

impl FunctionMetrics {
    fn new() -> FunctionMetrics {
        FunctionMetrics {
            invocations: Default::default(),
            errors: Default::default(),
            coldstarts: AtomicU64::new(0),
            invoke_duration: Histogram::new(DURATION_SECONDS_BOUNDS),
        }
    }
}

/// One function's metrics at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionSnapshot {
    /// By terminal status: completed, failed, timeout, cancelled.
    pub invocations: [u64; 4],
    /// Failed invocations by error code (`ErrorCode::ALL` order).
    pub errors: [u64; ErrorCode::ALL.len()],
    pub coldstarts: u64,
    pub invoke_duration: HistogramSnapshot,
}

impl FunctionSnapshot {
    /// Invocations that ended with `status` (0 for a status that is not terminal).
    pub fn invocations_with(&self, status: ExecutionStatus) -> u64 {
        terminal_status_index(status).map_or(0, |index| self.invocations[index])
    }

    pub fn errors_with(&self, code: ErrorCode) -> u64 {
        self.errors[code.index()]
    }
}

impl TaskMetrics {
    /// Runs `update` on the function's counters, creating them on its first call.
    fn with_function(&self, function_name: &str, update: impl FnOnce(&FunctionMetrics)) {
        if let Some(function) = self.functions.read().get(function_name) {
            update(function);
            return;
        }
        let mut functions = self.functions.write();
        update(
            functions
                .entry(function_name.to_owned())
                .or_insert_with(FunctionMetrics::new),
        );
    }

    /// A call of `function_name` started its instance, which took `start` to start.
    pub fn record_cold_start(&self, function_name: &str, start: Duration) {
        self.init_duration.observe_duration(start);
        self.with_function(function_name, |function| {
            function.coldstarts.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// An execution of `function_name` ended with terminal `status` and `error_code`;
    /// `guest_seconds` is how long its guest ran, `None` when it never started.
    pub fn record_finished(
        &self,
        function_name: &str,
        status: ExecutionStatus,
        error_code: Option<ErrorCode>,
        guest_seconds: Option<f64>,
    ) {
        let Some(status_index) = terminal_status_index(status) else {
            return;
        };
        self.with_function(function_name, |function| {
            function.invocations[status_index].fetch_add(1, Ordering::Relaxed);
            if status == ExecutionStatus::Failed
                && let Some(code) = error_code
            {
                function.errors[code.index()].fetch_add(1, Ordering::Relaxed);
            }
            if let Some(seconds) = guest_seconds {
                function.invoke_duration.observe(seconds);
            }
        });
    }

    /// Every function called so far, by name.
    pub fn functions(&self) -> BTreeMap<String, FunctionSnapshot> {
        self.functions
            .read()
            .iter()
            .map(|(name, function)| {
                let snapshot = FunctionSnapshot {
                    invocations: function
                        .invocations
                        .each_ref()
                        .map(|count| count.load(Ordering::Relaxed)),
                    errors: function
                        .errors
                        .each_ref()
                        .map(|count| count.load(Ordering::Relaxed)),
                    coldstarts: function.coldstarts.load(Ordering::Relaxed),
                    invoke_duration: function.invoke_duration.snapshot(),
                };
                (name.clone(), snapshot)
            })
            .collect()
    }

    /// Every function's counters added up: what the history sampler and task listings need.
    pub fn totals(&self) -> TaskTotals {
        let mut totals = TaskTotals {
            ended: 0,
            failed_or_timed_out: 0,
            invoke_duration: Histogram::new(DURATION_SECONDS_BOUNDS).snapshot(),
        };
        for function in self.functions.read().values() {
            let invocations = function
                .invocations
                .each_ref()
                .map(|count| count.load(Ordering::Relaxed));
            totals.ended += invocations.iter().sum::<u64>();
            totals.failed_or_timed_out += invocations[1] + invocations[2];
            totals
                .invoke_duration
                .add(&function.invoke_duration.snapshot());
        }
        totals
    }

    /// Start times of the instances the task's calls started, in seconds.
    pub fn init_duration(&self) -> HistogramSnapshot {
        self.init_duration.snapshot()
    }
}

/// A task's counters summed over its functions.
#[derive(Clone, Debug)]
pub struct TaskTotals {
    /// Executions that ended, with any terminal status.
    pub ended: u64,
    /// Those that ended FAILED or TIMEOUT (`faas_errors_total` + `faas_timeouts_total`).
    pub failed_or_timed_out: u64,
    /// Guest run times (`faas_invoke_duration_seconds`), all functions together.
    pub invoke_duration: HistogramSnapshot,
}

/// Node-wide measurements that have no other home: kept by the manager.
pub struct NodeMetrics {
    /// How long calls waited in the dispatcher's queue for an instance (as the dispatcher
    /// measures it for GetStats), observed when a call is granted one.
    pub queue_wait: Histogram,
}

impl Default for NodeMetrics {
    fn default() -> NodeMetrics {
        NodeMetrics {
            queue_wait: Histogram::new(DURATION_SECONDS_BOUNDS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_executions_count_by_status_error_code_and_run() {
        let metrics = TaskMetrics::default();
        metrics.record_finished("run", ExecutionStatus::Completed, None, Some(0.002));
        metrics.record_finished(
            "run",
            ExecutionStatus::Failed,
            Some(ErrorCode::Trap),
            Some(0.001),
        );
        // Timed out in the queue: counted, but the guest never ran.
        metrics.record_finished(
            "run",
            ExecutionStatus::Timeout,
            Some(ErrorCode::Timeout),
            None,
        );
        metrics.record_finished("run", ExecutionStatus::Running, None, None);
        metrics.record_cold_start("run", Duration::from_millis(3));

        let functions = metrics.functions();
        let run = &functions["run"];
        assert_eq!(run.invocations, [1, 1, 1, 0]);
        assert_eq!(run.errors_with(ErrorCode::Trap), 1);
        assert_eq!(
            run.errors_with(ErrorCode::Timeout),
            0,
            "timeouts are not errors"
        );
        assert_eq!(run.coldstarts, 1);
        assert_eq!(run.invoke_duration.count(), 2);
        assert!((run.invoke_duration.sum - 0.003).abs() < 1e-12);
        assert_eq!(metrics.init_duration().count(), 1);
    }

    #[test]
    fn every_error_code_and_terminal_status_has_its_own_slot() {
        for (index, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(code.index(), index);
        }
        for (index, status) in TERMINAL_STATUSES.iter().enumerate() {
            assert_eq!(terminal_status_index(*status), Some(index));
        }
    }
}
