//! The TaskExecutionManager: owns every execution from submission to its record.
//!
//! Data path of one call: [`TaskExecutionManager::execute`] checks idempotency and queue
//! capacity, writes a PENDING record and spawns the execution; the spawned task waits for a run
//! slot (bounded by `max_concurrent_executions`), marks the record RUNNING, runs the guest on
//! the wasm runtime, and writes the terminal record. The submitter waits on a watch channel.
//!
//! Invariants:
//! - Every execution that exists has a record; every record of a live execution is reachable
//!   through `live` for cancellation.
//! - An execution ends exactly once: the spawned task is the only writer of its terminal record.
//! - The timeout covers queue wait plus run time.
//! - A submitter that goes away (dropped future) cancels its execution through a drop guard.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use spearlet_core::ids::{random_id, validate_id};
use spearlet_core::{
    ExecutionMode, ExecutionRecord, ExecutionStatus, Outcome, ResultEncoding, SpearError,
    SpearResult, StoredRequest,
};
use spearlet_store::Store;
use spearlet_wasm::{EntryPoint, WasmInvocation};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::clock::{unix_ms, unix_us};
use crate::registry::LoadedTask;

/// One invocation as the manager needs it, decoded from the wire.
pub struct ExecutionRequest {
    pub task: Arc<LoadedTask>,
    pub function_name: String,
    pub entry_point: EntryPoint,
    pub input: Bytes,
    pub result_encoding: ResultEncoding,
    /// A client-supplied execution id (idempotency key), if any.
    pub execution_id: Option<String>,
    pub session_id: String,
    pub environment: BTreeMap<String, String>,
    pub headers: BTreeMap<String, String>,
    /// `context.timeout_ms` as sent (≤ 0 = none).
    pub requested_timeout_ms: i64,
    pub mode: ExecutionMode,
    pub metadata: BTreeMap<String, String>,
    /// Whether this request loaded the task (fetch/compile) before running.
    pub cold_start: bool,
}

/// Settings of the manager.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    pub max_concurrent_executions: usize,
    pub max_queue_length: usize,
}

struct LiveExecution {
    task_id: String,
    cancellation: CancellationToken,
    cancel_reason: Arc<Mutex<Option<String>>>,
    finished: watch::Receiver<Option<ExecutionRecord>>,
}

/// What a cancellation request found.
pub enum CancelResult {
    /// The execution ended as a result; its final record.
    Cancelled(ExecutionRecord),
    /// The execution had already ended (or ended before the cancel landed).
    AlreadyTerminal(ExecutionRecord),
}

pub struct TaskExecutionManager {
    store: Arc<dyn Store>,
    config: ManagerConfig,
    run_slots: Arc<Semaphore>,
    live: Mutex<HashMap<String, LiveExecution>>,
    next_sequence: AtomicU64,
    /// Executions waiting for a run slot.
    queued: AtomicUsize,
    /// Executions running a guest.
    running: AtomicUsize,
}

impl TaskExecutionManager {
    pub fn new(store: Arc<dyn Store>, config: ManagerConfig) -> SpearResult<Arc<Self>> {
        let mut highest_sequence = 0;
        store.visit_executions(&mut |record| {
            highest_sequence = highest_sequence.max(record.sequence);
        })?;
        Ok(Arc::new(TaskExecutionManager {
            store,
            run_slots: Arc::new(Semaphore::new(config.max_concurrent_executions)),
            config,
            live: Mutex::new(HashMap::new()),
            next_sequence: AtomicU64::new(highest_sequence + 1),
            queued: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
        }))
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn queued_count(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn running_count(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    pub fn max_queue_length(&self) -> usize {
        self.config.max_queue_length
    }

    /// Executions submitted since the record sequence began.
    pub fn total_submitted(&self) -> u64 {
        self.next_sequence.load(Ordering::Relaxed) - 1
    }

    pub fn live_count(&self) -> usize {
        self.live.lock().len()
    }

    /// Runs one execution to its end and returns its terminal record. Dropping the returned
    /// future cancels the execution.
    pub async fn execute(
        self: &Arc<Self>,
        request: ExecutionRequest,
    ) -> SpearResult<ExecutionRecord> {
        let fingerprint = request_fingerprint(&request);
        let (mut finished, cancel_guard) = match self.submit(request, fingerprint)? {
            Submission::Existing(finished) => (finished, None),
            Submission::New {
                finished,
                cancellation,
            } => (finished, Some(CancelOnDrop(Some(cancellation)))),
        };
        let record = wait_finished(&mut finished).await?;
        if let Some(mut guard) = cancel_guard {
            guard.disarm();
        }
        Ok(record)
    }

    fn submit(
        self: &Arc<Self>,
        request: ExecutionRequest,
        fingerprint: String,
    ) -> SpearResult<Submission> {
        let mut live = self.live.lock();
        if let Some(execution_id) = &request.execution_id {
            validate_id("context.execution_id", execution_id)?;
            let existing = match live.get(execution_id) {
                Some(execution) => {
                    let record = self.store.execution(execution_id)?;
                    record.map(|record| (record, Some(execution.finished.clone())))
                }
                None => self
                    .store
                    .execution(execution_id)?
                    .map(|record| (record, None)),
            };
            if let Some((record, finished)) = existing {
                if record.task_id != request.task.record.task_id
                    || record.request_fingerprint != fingerprint
                {
                    return Err(SpearError::already_exists(format!(
                        "context.execution_id {execution_id:?} already names an execution with a \
                         different task or input"
                    )));
                }
                let finished = finished.unwrap_or_else(|| watch::channel(Some(record)).1);
                return Ok(Submission::Existing(finished));
            }
        }
        let waiting = self.queued.load(Ordering::Relaxed);
        if waiting >= self.config.max_queue_length {
            return Err(SpearError::resource_exhausted(format!(
                "the execution queue is full ({waiting} waiting, max_queue_length is {}); retry \
                 later",
                self.config.max_queue_length
            )));
        }
        let execution_id = request
            .execution_id
            .clone()
            .unwrap_or_else(|| random_id("exec", rand::random()));
        let record = ExecutionRecord {
            execution_id: execution_id.clone(),
            sequence: self.next_sequence.fetch_add(1, Ordering::Relaxed),
            task_id: request.task.record.task_id.clone(),
            task_name: request.task.record.task_name.clone(),
            function_name: request.function_name.clone(),
            mode: request.mode,
            status: ExecutionStatus::Pending,
            submitted_at_ms: unix_ms(),
            started_at_us: None,
            completed_at_us: None,
            execution_time_ms: 0,
            memory_used_bytes: 0,
            output: Bytes::new(),
            output_content_type: String::new(),
            result_encoding: request.result_encoding,
            logs: Bytes::new(),
            error_code: None,
            error_message: String::new(),
            metrics: BTreeMap::new(),
            attempt: 1,
            instance_id: request.task.instance_id.clone(),
            request_fingerprint: fingerprint,
            metadata: request.metadata.clone(),
            request: StoredRequest {
                input: request.input.clone(),
                session_id: request.session_id.clone(),
                environment: request.environment.clone(),
                headers: request.headers.clone(),
                requested_timeout_ms: request.requested_timeout_ms,
                max_retries: 0,
            },
            timeline: Vec::new(),
        };
        self.store.put_execution(&record)?;
        let cancellation = CancellationToken::new();
        let cancel_reason = Arc::new(Mutex::new(None));
        let (finished_sender, finished) = watch::channel(None);
        live.insert(
            execution_id,
            LiveExecution {
                task_id: record.task_id.clone(),
                cancellation: cancellation.clone(),
                cancel_reason: cancel_reason.clone(),
                finished: finished.clone(),
            },
        );
        drop(live);
        request
            .task
            .counters
            .execution_count
            .fetch_add(1, Ordering::Relaxed);
        request.task.counters.live.fetch_add(1, Ordering::Relaxed);
        self.queued.fetch_add(1, Ordering::Relaxed);
        let manager = self.clone();
        let run_cancellation = cancellation.clone();
        tokio::spawn(async move {
            let record = manager
                .run(request, record, run_cancellation, cancel_reason)
                .await;
            let _ = finished_sender.send(Some(record));
        });
        Ok(Submission::New {
            finished,
            cancellation,
        })
    }

    async fn run(
        &self,
        request: ExecutionRequest,
        mut record: ExecutionRecord,
        cancellation: CancellationToken,
        cancel_reason: Arc<Mutex<Option<String>>>,
    ) -> ExecutionRecord {
        let task = request.task.clone();
        let submitted = Instant::now();
        let timeout_ms = task
            .config
            .effective_timeout_ms(request.requested_timeout_ms);
        let deadline =
            tokio::time::Instant::from_std(submitted) + Duration::from_millis(timeout_ms);

        let permit = tokio::select! {
            permit = self.run_slots.clone().acquire_owned() => permit.ok(),
            () = tokio::time::sleep_until(deadline) => None,
            () = cancellation.cancelled() => None,
        };
        self.queued.fetch_sub(1, Ordering::Relaxed);
        let queue_wait_ms = submitted.elapsed().as_secs_f64() * 1000.0;
        record
            .metrics
            .insert("queue_wait_ms".into(), format!("{queue_wait_ms:.3}"));
        record
            .metrics
            .insert("cold_start".into(), request.cold_start.to_string());
        record
            .metrics
            .insert("attempt".into(), record.attempt.to_string());
        if request.cold_start {
            record
                .metrics
                .insert("load_ms".into(), format!("{:.3}", task.load_ms));
        }

        let Some(_permit) = permit else {
            let outcome = if cancellation.is_cancelled() {
                Outcome::Cancelled {
                    reason: cancel_reason.lock().clone().unwrap_or_default(),
                }
            } else {
                Outcome::TimedOut {
                    message: format!("timed out after {timeout_ms} ms waiting in the queue"),
                }
            };
            return self.finish(record, &task, outcome, Bytes::new(), Bytes::new(), 0.0, 0);
        };

        record.status = ExecutionStatus::Running;
        record.started_at_us = Some(unix_us());
        if let Err(error) = self.store.put_execution(&record) {
            tracing::warn!(execution_id = %record.execution_id, "recording RUNNING failed: {error}");
        }
        self.running.fetch_add(1, Ordering::Relaxed);
        task.counters.running.fetch_add(1, Ordering::Relaxed);

        let invocation = WasmInvocation {
            entry_point: request.entry_point.clone(),
            stdin: request.input.clone(),
            arguments: vec![task.record.task_name.clone(), request.function_name.clone()],
            environment: guest_environment(&request, &record.execution_id),
            preopened_directories: task.preopened_directories.clone(),
            memory_limit_bytes: u64::from(task.config.memory_limit_mb) * 1024 * 1024,
            max_output_bytes: task.config.max_output_bytes,
            max_log_bytes: task.config.max_log_bytes,
            deadline,
            cancellation: cancellation.clone(),
            output_chunks: None,
        };
        let run_started = Instant::now();
        let report = task.module.run(invocation).await;
        let run_ms = run_started.elapsed().as_secs_f64() * 1000.0;
        self.running.fetch_sub(1, Ordering::Relaxed);
        task.counters.running.fetch_sub(1, Ordering::Relaxed);
        record.metrics.insert(
            "instantiate_us".into(),
            report.instantiate_duration.as_micros().to_string(),
        );
        let outcome = match report.outcome {
            Outcome::Cancelled { .. } => Outcome::Cancelled {
                reason: cancel_reason.lock().clone().unwrap_or_default(),
            },
            Outcome::TimedOut { .. } => Outcome::TimedOut {
                message: format!("the call exceeded its timeout of {timeout_ms} ms"),
            },
            other => other,
        };
        self.finish(
            record,
            &task,
            outcome,
            report.output,
            report.logs,
            run_ms,
            report.peak_memory_bytes as i64,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        mut record: ExecutionRecord,
        task: &LoadedTask,
        outcome: Outcome,
        output: Bytes,
        logs: Bytes,
        run_ms: f64,
        memory_used_bytes: i64,
    ) -> ExecutionRecord {
        record.status = outcome.status();
        record.error_code = outcome.error_code();
        record.error_message = outcome.error_message().to_owned();
        record.output = output;
        record.output_content_type = "application/octet-stream".into();
        record.logs = logs;
        record.execution_time_ms = run_ms.round() as i64;
        record.metrics.insert(
            "execution_time_us".into(),
            ((run_ms * 1000.0) as i64).to_string(),
        );
        record.memory_used_bytes = memory_used_bytes;
        record.completed_at_us = Some(unix_us());
        if let Err(error) = self.store.put_execution(&record) {
            tracing::error!(execution_id = %record.execution_id, "recording the result failed: {error}");
        }
        task.counters.set_last_status(record.status);
        task.counters.live.fetch_sub(1, Ordering::Relaxed);
        self.live.lock().remove(&record.execution_id);
        tracing::debug!(
            execution_id = %record.execution_id,
            task_id = %record.task_id,
            instance_id = %record.instance_id,
            status = record.status.as_str(),
            "execution finished"
        );
        record
    }

    /// Cancels a pending or running execution and waits for its final record.
    pub async fn cancel(&self, execution_id: &str, reason: &str) -> SpearResult<CancelResult> {
        let live = self.live.lock().get(execution_id).map(|execution| {
            (
                execution.cancellation.clone(),
                execution.cancel_reason.clone(),
                execution.finished.clone(),
            )
        });
        let Some((cancellation, cancel_reason, mut finished)) = live else {
            return match self.store.execution(execution_id)? {
                Some(record) => Ok(CancelResult::AlreadyTerminal(record)),
                None => Err(SpearError::not_found(format!(
                    "execution_id {execution_id:?} is unknown"
                ))),
            };
        };
        cancel_reason
            .lock()
            .get_or_insert_with(|| non_empty_reason(reason));
        cancellation.cancel();
        let record = wait_finished(&mut finished).await?;
        if record.status == ExecutionStatus::Cancelled {
            Ok(CancelResult::Cancelled(record))
        } else {
            Ok(CancelResult::AlreadyTerminal(record))
        }
    }

    /// Live executions of a task (pending or running).
    pub fn live_executions_of(&self, task_id: &str) -> Vec<String> {
        self.live
            .lock()
            .iter()
            .filter(|(_, execution)| execution.task_id == task_id)
            .map(|(execution_id, _)| execution_id.clone())
            .collect()
    }

    /// Cancels every live execution (shutdown) and waits for their records.
    pub async fn cancel_all(&self, reason: &str) {
        let execution_ids: Vec<String> = self.live.lock().keys().cloned().collect();
        for execution_id in execution_ids {
            let _ = self.cancel(&execution_id, reason).await;
        }
    }
}

fn non_empty_reason(reason: &str) -> String {
    if reason.is_empty() {
        "cancelled by request".to_owned()
    } else {
        reason.to_owned()
    }
}

enum Submission {
    Existing(watch::Receiver<Option<ExecutionRecord>>),
    New {
        finished: watch::Receiver<Option<ExecutionRecord>>,
        cancellation: CancellationToken,
    },
}

async fn wait_finished(
    finished: &mut watch::Receiver<Option<ExecutionRecord>>,
) -> SpearResult<ExecutionRecord> {
    let record = finished
        .wait_for(Option::is_some)
        .await
        .map_err(|_| SpearError::internal("the execution ended without a record"))?;
    Ok(record.clone().expect("waited for Some"))
}

/// Cancels the execution when the submitter's future is dropped (client went away).
struct CancelOnDrop(Option<CancellationToken>);

impl CancelOnDrop {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancellation) = self.0.take() {
            cancellation.cancel();
        }
    }
}

/// The idempotency fingerprint: same task, function and input → same fingerprint.
fn request_fingerprint(request: &ExecutionRequest) -> String {
    let mut hasher = Sha256::new();
    hasher.update(request.task.record.task_id.as_bytes());
    hasher.update([0]);
    hasher.update(request.function_name.as_bytes());
    hasher.update([0]);
    hasher.update(&request.input);
    hex::encode(hasher.finalize())
}

/// The guest's environment: task variables, then the call's, then spearlet's own (which win).
fn guest_environment(request: &ExecutionRequest, execution_id: &str) -> Vec<(String, String)> {
    let mut environment: BTreeMap<String, String> = request.task.config.environment.clone();
    environment.extend(
        request
            .environment
            .iter()
            .map(|(name, value)| (name.clone(), value.clone())),
    );
    for (name, value) in &request.headers {
        environment.insert(format!("SPEAR_HEADER_{}", upper_snake(name)), value.clone());
    }
    environment.insert("SPEAR_EXECUTION_ID".into(), execution_id.to_owned());
    environment.insert("SPEAR_TASK_ID".into(), request.task.record.task_id.clone());
    environment.insert("SPEAR_FUNCTION_NAME".into(), request.function_name.clone());
    environment.insert("SPEAR_SESSION_ID".into(), request.session_id.clone());
    environment.into_iter().collect()
}

/// `x-request-id` → `X_REQUEST_ID`.
pub fn upper_snake(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_become_upper_snake() {
        assert_eq!(upper_snake("x-request-id"), "X_REQUEST_ID");
        assert_eq!(upper_snake("Content.Type"), "CONTENT_TYPE");
    }
}
