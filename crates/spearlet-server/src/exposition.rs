//! The Prometheus exposition of `GET /metrics`: the node's counters, gauges and histograms in
//! the text format 0.0.4, rendered at scrape time by [`render_prometheus`].
//!
//! It sits above the node: it reads the metrics each component owns (`metrics.rs`: per task and
//! function, the manager's queue wait), the dispatcher's snapshot (queue length, instances by
//! state), the manager's running and async-pending counts, the fetcher's artifact cache
//! counters, the store writer's histograms (one observation per committed batch) and resident
//! memory from `/proc` through the observer. Nothing below imports it.
//!
//! The encoder is hand-written (a few dozen lines): `# HELP` and `# TYPE` once per family, then
//! its samples; label values escape `\`, `"` and newline; histograms give cumulative
//! `_bucket{le=…}` samples ending in `le="+Inf"`, then `_sum` and `_count`. The metric names and
//! their labels are listed in `metrics.rs` and docs/OPERATIONS.md.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use spearlet_artifact::CacheStats;
use spearlet_core::histogram::HistogramSnapshot;
use spearlet_core::{ErrorCode, ExecutionStatus};
use spearlet_pool::InstanceState;
use spearlet_store::WriteDistributions;

use crate::manager::TaskExecutionManager;
use crate::metrics::{FunctionSnapshot, TERMINAL_STATUSES};
use crate::node::Node;
use crate::registry::LoadedTask;

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

/// The node's metrics in the Prometheus text format 0.0.4 (serve it as
/// `text/plain; version=0.0.4; charset=utf-8`): per function, per task, the execution path,
/// the artifact cache, the store and the process, in that order.
pub fn render_prometheus(node: &Node) -> String {
    let mut tasks = node.registry.all();
    tasks.sort_by(|left, right| left.record.task_name.cmp(&right.record.task_name));
    let mut out = Encoder::default();
    encode_function_metrics(&mut out, &tasks);
    encode_task_metrics(&mut out, &tasks);
    encode_execution_metrics(&mut out, &node.manager, &tasks);
    encode_artifact_cache_metrics(&mut out, &node.registry.fetcher().cache_stats());
    encode_store_metrics(&mut out, &node.manager.store().write_distributions());
    encode_process_metrics(&mut out, node.observer.resident_memory_bytes());
    out.text
}

/// The `faas_*` families with a sample per task and function: invocations by status, errors by
/// code, timeouts, cold starts, run time.
fn encode_function_metrics(out: &mut Encoder, tasks: &[Arc<LoadedTask>]) {
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
}

/// Families with a sample per task: instance start time.
fn encode_task_metrics(out: &mut Encoder, tasks: &[Arc<LoadedTask>]) {
    out.family(
        "faas_init_duration_seconds",
        Kind::Histogram,
        "Time to start an instance that a call was waiting for (a cold start).",
    );
    for task in tasks {
        let labels = [("task", task.record.task_name.as_str())];
        out.histogram(
            "faas_init_duration_seconds",
            &labels,
            &task.counters.metrics.init_duration(),
        );
    }
}

/// The execution path now: the queue and its waits, instances by state, running and pending.
fn encode_execution_metrics(
    out: &mut Encoder,
    manager: &TaskExecutionManager,
    tasks: &[Arc<LoadedTask>],
) {
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
    for task in tasks {
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
}

fn encode_artifact_cache_metrics(out: &mut Encoder, cache: &CacheStats) {
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
}

fn encode_store_metrics(out: &mut Encoder, store: &WriteDistributions) {
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
}

/// The node process itself. `resident_bytes` is 0 when /proc could not be read: that is no
/// measurement, so no sample.
fn encode_process_metrics(out: &mut Encoder, resident_bytes: u64) {
    if resident_bytes > 0 {
        out.family(
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory size of the node process in bytes.",
        );
        out.integer("process_resident_memory_bytes", &[], resident_bytes);
    }
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
    use spearlet_core::histogram::Histogram;

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
    fn every_instance_state_has_its_own_slot() {
        for (index, state) in INSTANCE_STATES.iter().enumerate() {
            assert_eq!(instance_state_index(*state), index);
        }
    }
}
