//! Prometheus metrics: the node's counters, gauges and histograms in the text exposition format
//! (version 0.0.4), rendered on demand by [`render_prometheus`] for `GET /metrics`.
//!
//! # Design
//!
//! Every value is a real measurement taken where the event happens; nothing is estimated at
//! scrape time. Recording is lock-free or nearly so, and rendering reads what is there:
//! - Per task and function: a [`TaskMetrics`] lives in each task's `TaskCounters` (so it
//!   survives task updates, like the other counters, and disappears with a deleted task). It maps
//!   function names to atomic counters and an invoke-duration histogram behind a
//!   `parking_lot::RwLock`; an execution that ends takes the read lock for one map lookup and
//!   adds to a few atomics (the write lock only the first time a function is called).
//! - Per node: the queue-wait histogram lives in the manager ([`NodeMetrics`]); queue length,
//!   running and async-pending executions and instances by state are read at scrape time from
//!   the manager and the dispatcher's snapshot; artifact cache counters come from the fetcher,
//!   store histograms from the store's writer thread (one observation per committed batch),
//!   resident memory from `/proc` through the observer.
//! - Histograms are `spearlet_core::histogram::Histogram`: fixed bounds, one atomic per bucket.
//!
//! The encoder is hand-written (a few dozen lines): `# HELP` and `# TYPE` once per family, then
//! its samples; label values escape `\`, `"` and newline; histograms give cumulative
//! `_bucket{le=…}` samples ending in `le="+Inf"`, then `_sum` and `_count`.
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
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use spearlet_core::histogram::{DURATION_SECONDS_BOUNDS, Histogram, HistogramSnapshot};
use spearlet_core::{ErrorCode, ExecutionStatus};
use spearlet_pool::InstanceState;

use crate::node::Node;

/// Terminal statuses, in the order their counters are kept.
const TERMINAL_STATUSES: [ExecutionStatus; 4] = [
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

/// Instance states, in the order they are reported.
const INSTANCE_STATES: [InstanceState; 6] = [
    InstanceState::Creating,
    InstanceState::Ready,
    InstanceState::Running,
    InstanceState::Draining,
    InstanceState::Terminated,
    InstanceState::Failed,
];

fn instance_state_index(state: InstanceState) -> usize {
    match state {
        InstanceState::Creating => 0,
        InstanceState::Ready => 1,
        InstanceState::Running => 2,
        InstanceState::Draining => 3,
        InstanceState::Terminated => 4,
        InstanceState::Failed => 5,
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

    /// Start times of the instances the task's calls started, in seconds.
    pub fn init_duration(&self) -> HistogramSnapshot {
        self.init_duration.snapshot()
    }
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

/// The node's metrics in the Prometheus text format 0.0.4 (serve it as
/// `text/plain; version=0.0.4; charset=utf-8`).
pub fn render_prometheus(node: &Node) -> String {
    let mut tasks = node.registry.all();
    tasks.sort_by(|left, right| left.record.task_name.cmp(&right.record.task_name));
    let functions: Vec<(&str, BTreeMap<String, FunctionSnapshot>)> = tasks
        .iter()
        .map(|task| {
            (
                task.record.task_name.as_str(),
                task.counters.metrics.functions(),
            )
        })
        .collect();
    let per_function = || {
        functions.iter().flat_map(|(task, functions)| {
            functions
                .iter()
                .map(move |(function, snapshot)| (*task, function.as_str(), snapshot))
        })
    };
    let mut out = Encoder::default();

    out.family(
        "faas_invocations_total",
        Kind::Counter,
        "Invocations that ended, by terminal execution status.",
    );
    for (task, function, snapshot) in per_function() {
        for (status, count) in TERMINAL_STATUSES.iter().zip(snapshot.invocations) {
            let status = status.as_str().to_ascii_lowercase();
            let labels = [("task", task), ("function", function), ("status", &status)];
            out.integer("faas_invocations_total", &labels, count);
        }
    }
    out.family(
        "faas_errors_total",
        Kind::Counter,
        "Invocations that failed, by error code (timeouts and cancellations excluded).",
    );
    for (task, function, snapshot) in per_function() {
        for (code, count) in ErrorCode::ALL.iter().zip(snapshot.errors) {
            if count > 0 {
                let labels = [
                    ("task", task),
                    ("function", function),
                    ("error_code", code.as_str()),
                ];
                out.integer("faas_errors_total", &labels, count);
            }
        }
    }
    out.family(
        "faas_timeouts_total",
        Kind::Counter,
        "Invocations that reached their timeout (in the queue or running).",
    );
    for (task, function, snapshot) in per_function() {
        let labels = [("task", task), ("function", function)];
        let timeouts = snapshot.invocations_with(ExecutionStatus::Timeout);
        out.integer("faas_timeouts_total", &labels, timeouts);
    }
    out.family(
        "faas_coldstarts_total",
        Kind::Counter,
        "Invocations that had to start their instance (one per instance a call started).",
    );
    for (task, function, snapshot) in per_function() {
        let labels = [("task", task), ("function", function)];
        out.integer("faas_coldstarts_total", &labels, snapshot.coldstarts);
    }
    out.family(
        "faas_invoke_duration_seconds",
        Kind::Histogram,
        "Time the guest ran per invocation, without queue wait and instance start.",
    );
    for (task, function, snapshot) in per_function() {
        let labels = [("task", task), ("function", function)];
        out.histogram(
            "faas_invoke_duration_seconds",
            &labels,
            &snapshot.invoke_duration,
        );
    }
    out.family(
        "faas_init_duration_seconds",
        Kind::Histogram,
        "Time to start an instance that a call was waiting for (a cold start).",
    );
    for task in &tasks {
        let labels = [("task", task.record.task_name.as_str())];
        out.histogram(
            "faas_init_duration_seconds",
            &labels,
            &task.counters.metrics.init_duration(),
        );
    }

    let manager = &node.manager;
    let dispatcher = manager.dispatcher().snapshot();
    out.family(
        "spearlet_queue_length",
        Kind::Gauge,
        "Calls waiting for an instance (sync and stream calls, and async executions whose turn \
         came).",
    );
    out.integer(
        "spearlet_queue_length",
        &[],
        (dispatcher.queued + dispatcher.waiting_uncounted) as u64,
    );
    out.family(
        "spearlet_queue_wait_seconds",
        Kind::Histogram,
        "Time calls waited in the queue before they were granted an instance.",
    );
    out.histogram(
        "spearlet_queue_wait_seconds",
        &[],
        &manager.metrics().queue_wait.snapshot(),
    );
    out.family(
        "spearlet_instances",
        Kind::Gauge,
        "Instances in each task's pool, by state.",
    );
    let mut instances_by_task: HashMap<&str, [u64; INSTANCE_STATES.len()]> = HashMap::new();
    for pool in &dispatcher.pools {
        let counts = instances_by_task.entry(pool.task_id.as_str()).or_default();
        for instance in &pool.instances {
            counts[instance_state_index(instance.state)] += 1;
        }
    }
    for task in &tasks {
        let counts = instances_by_task
            .get(task.record.task_id.as_str())
            .copied()
            .unwrap_or_default();
        for (state, count) in INSTANCE_STATES.iter().zip(counts) {
            let labels = [
                ("task", task.record.task_name.as_str()),
                ("state", state.as_str()),
            ];
            out.integer("spearlet_instances", &labels, count);
        }
    }
    out.family(
        "spearlet_executions_running",
        Kind::Gauge,
        "Executions running a guest now.",
    );
    out.integer(
        "spearlet_executions_running",
        &[],
        manager.running_count() as u64,
    );
    out.family(
        "spearlet_async_pending",
        Kind::Gauge,
        "Async executions accepted and not yet ended.",
    );
    out.integer(
        "spearlet_async_pending",
        &[],
        manager.async_pending_count() as u64,
    );

    let cache = node.registry.fetcher().cache_stats();
    out.family(
        "spearlet_artifact_cache_hits_total",
        Kind::Counter,
        "Artifact fetches served from the content cache.",
    );
    out.integer("spearlet_artifact_cache_hits_total", &[], cache.hits);
    out.family(
        "spearlet_artifact_cache_misses_total",
        Kind::Counter,
        "Artifact fetches that read their source (file, HTTP or data: URL).",
    );
    out.integer("spearlet_artifact_cache_misses_total", &[], cache.misses);
    out.family(
        "spearlet_artifact_cache_bytes_total",
        Kind::Counter,
        "Bytes written into the artifact cache as new blobs.",
    );
    out.integer(
        "spearlet_artifact_cache_bytes_total",
        &[],
        cache.bytes_written,
    );

    let store = manager.store().write_distributions();
    out.family(
        "spearlet_store_write_duration_seconds",
        Kind::Histogram,
        "Commit latency of the store's write batches (BEGIN to the fsynced COMMIT).",
    );
    out.histogram(
        "spearlet_store_write_duration_seconds",
        &[],
        &store.commit_latency_seconds,
    );
    out.family(
        "spearlet_store_batch_size",
        Kind::Histogram,
        "Operations per committed store write batch.",
    );
    out.histogram("spearlet_store_batch_size", &[], &store.batch_operations);

    // The observer reports 0 when /proc cannot be read; that is no measurement, so no sample.
    let resident_bytes = node.observer.resident_memory_bytes();
    if resident_bytes > 0 {
        out.family(
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory size of the node process in bytes.",
        );
        out.integer("process_resident_memory_bytes", &[], resident_bytes);
    }
    out.text
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Writes the Prometheus text format. Families must be written whole, one after another.
#[derive(Default)]
struct Encoder {
    text: String,
}

impl Encoder {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn name_and_labels(&mut self, name: &str, labels: &[(&str, &str)], le: Option<f64>) {
        self.text.push_str(name);
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.text.push('{');
        let le = le.map(format_float);
        let le_label = le.as_deref().map(|le| ("le", le));
        for (index, (label, value)) in labels.iter().copied().chain(le_label).enumerate() {
            if index > 0 {
                self.text.push(',');
            }
            let _ = write!(self.text, "{label}=\"{}\"", escape_label_value(value));
        }
        self.text.push('}');
    }

    fn integer(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.name_and_labels(name, labels, None);
        let _ = writeln!(self.text, " {value}");
    }

    fn float(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.name_and_labels(name, labels, None);
        let _ = writeln!(self.text, " {}", format_float(value));
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], snapshot: &HistogramSnapshot) {
        let bucket = format!("{name}_bucket");
        let mut total = 0;
        for (bound, cumulative) in snapshot.cumulative() {
            self.name_and_labels(&bucket, labels, Some(bound));
            let _ = writeln!(self.text, " {cumulative}");
            total = cumulative;
        }
        self.float(&format!("{name}_sum"), labels, snapshot.sum);
        self.integer(&format!("{name}_count"), labels, total);
    }
}

/// A float as Prometheus parses it: `+Inf`, `-Inf`, `NaN`, or a decimal.
fn format_float(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value == f64::INFINITY {
        "+Inf".to_owned()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        value.to_string()
    }
}

/// `# HELP` text: backslash and newline are escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', r"\\").replace('\n', r"\n")
}

/// A label value: backslash, double quote and newline are escaped.
fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for character in value.chars() {
        match character {
            '\\' => escaped.push_str(r"\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str(r"\n"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut out = Encoder::default();
        out.family("demo_total", Kind::Counter, "Back\\slash and\nnewline.");
        out.integer(
            "demo_total",
            &[("task", "a\\b"), ("function", "say \"hi\"\nthere")],
            3,
        );
        assert_eq!(
            out.text,
            "# HELP demo_total Back\\\\slash and\\nnewline.\n\
             # TYPE demo_total counter\n\
             demo_total{task=\"a\\\\b\",function=\"say \\\"hi\\\"\\nthere\"} 3\n"
        );
    }

    #[test]
    fn histograms_are_cumulative_and_end_with_inf_sum_and_count() {
        static BOUNDS: &[f64] = &[0.5, 1.0, 2.5];
        let histogram = Histogram::new(BOUNDS);
        for value in [0.1, 0.7, 0.8, 3.0, 2.0] {
            histogram.observe(value);
        }
        let mut out = Encoder::default();
        out.family("demo_seconds", Kind::Histogram, "Demo.");
        out.histogram("demo_seconds", &[("task", "t")], &histogram.snapshot());
        let expected = "# HELP demo_seconds Demo.\n\
                        # TYPE demo_seconds histogram\n\
                        demo_seconds_bucket{task=\"t\",le=\"0.5\"} 1\n\
                        demo_seconds_bucket{task=\"t\",le=\"1\"} 3\n\
                        demo_seconds_bucket{task=\"t\",le=\"2.5\"} 4\n\
                        demo_seconds_bucket{task=\"t\",le=\"+Inf\"} 5\n\
                        demo_seconds_sum{task=\"t\"} 6.6\n\
                        demo_seconds_count{task=\"t\"} 5\n";
        assert_eq!(out.text, expected);
    }

    #[test]
    fn unlabelled_histograms_have_only_le() {
        static BOUNDS: &[f64] = &[1.0];
        let mut out = Encoder::default();
        out.histogram("empty", &[], &Histogram::new(BOUNDS).snapshot());
        assert_eq!(
            out.text,
            "empty_bucket{le=\"1\"} 0\nempty_bucket{le=\"+Inf\"} 0\nempty_sum 0\nempty_count 0\n"
        );
    }

    #[test]
    fn floats_use_prometheus_spellings() {
        let table = [
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
            (0.00025, "0.00025"),
            (60.0, "60"),
        ];
        for (value, expected) in table {
            assert_eq!(format_float(value), expected);
        }
    }

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
    fn every_error_code_and_state_has_its_own_slot() {
        for (index, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(code.index(), index);
        }
        for (index, state) in INSTANCE_STATES.iter().enumerate() {
            assert_eq!(instance_state_index(*state), index);
        }
        for (index, status) in TERMINAL_STATUSES.iter().enumerate() {
            assert_eq!(terminal_status_index(*status), Some(index));
        }
    }
}
