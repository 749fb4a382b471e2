//! The TaskExecutionManager: owns every execution from submission to its terminal record.
//!
//! Data path of one call: [`TaskExecutionManager::submit`] (async, stream) or
//! [`TaskExecutionManager::execute`] (sync) admits it — idempotency by client execution id, then
//! capacity (a sync or stream call takes its place in the dispatcher's queue here, so a full
//! queue refuses it at once; async work is bounded by `max_async_pending`) — and writes the
//! PENDING record (durably for async executions, before the client hears "accepted"). The
//! execution future then runs, spawned for async and stream executions, polled inside the
//! caller's own task for sync ones, as four named steps per attempt:
//! - `lease`: wait for an instance of the task's pool (async work enters the queue only now),
//!   racing the deadline, cancellation and, for async work, a graceful shutdown;
//! - `start`: note the instance and cold start, write RUNNING, tell a stream caller;
//! - `call`: build the runtime-neutral `FunctionCall` and run it on the instance
//!   (`InstanceRuntime::run`); the instance goes back before anything is written;
//! - retry (a warm worker crashed and attempts remain: `ExecutionRecord::retry`, next attempt)
//!   or `finish` (the terminal record, queued for the writer; counters).
//!
//! The record owns its transitions (`start`, `retry`, `begin_next_attempt`, `finish` in
//! `spearlet-core`); nothing here pushes timeline entries by hand. Other waiters watch a channel.
//!
//! Invariants:
//! - Every execution that exists has a record; every live (pending or running) execution is in
//!   `live`, where cancellation finds it.
//! - An execution ends exactly once: its execution future is the only writer of its terminal
//!   record. A sync caller that goes away hands that future to a task of its own
//!   ([`RunsToEndIfDropped`]), so the future is never dropped before it ends.
//! - The timeout covers queue wait plus run time.
//! - A sync or stream caller that goes away cancels its execution (drop guard); an async
//!   execution belongs to the node and runs whether or not anyone waits.
//! - An async execution is RUNNING on disk before its guest starts, so a crash is never
//!   mistaken for "not started": after a restart it is retried (a new, visible attempt) or ends
//!   NODE_RESTARTED, never silently run twice.
//! - A sync or stream execution's PENDING and RUNNING states are visible (in the store's memory)
//!   but not written: its caller is gone after a crash, so only the terminal record is durable.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use foldhash::{HashMap, HashMapExt};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use spearlet_core::ids::{random_id, validate_id};
use spearlet_core::{
    ErrorCode, ExecutionMode, ExecutionRecord, ExecutionStatus, Outcome, Priority, ResultEncoding,
    SpearError, SpearResult, StoredRequest, TimelineEntry,
};
use spearlet_pool::{AcquireRequest, Dispatcher, InstanceLease, Rejection, Ticket};
use spearlet_runtime::{CallReport, FunctionCall, HttpResponseHeadSender, OutputChunkSender};
use spearlet_store::DurableStore;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::clock::unix_us;
use crate::instances::{CallTarget, InstanceRuntime};
use crate::metrics::NodeMetrics;
use crate::registry::{LoadedTask, TaskRegistry};
use crate::trace_context::{self, TRACEPARENT_METADATA_KEY, TraceContext};

/// One invocation as the manager needs it, decoded from the wire.
pub struct ExecutionRequest {
    pub task: Arc<LoadedTask>,
    pub function_name: String,
    pub target: CallTarget,
    /// The input and call context, as the record keeps them (`max_retries` as the caller asked;
    /// the manager caps it).
    pub call: StoredRequest,
    pub result_encoding: ResultEncoding,
    /// A client-supplied execution id (idempotency key), if any.
    pub execution_id: Option<String>,
    pub mode: ExecutionMode,
    pub metadata: BTreeMap<String, String>,
    /// `invocation_metadata["priority"]`, parsed.
    pub priority: Priority,
    /// Run on a fresh instance that serves only this call.
    pub force_new_instance: bool,
    /// Whether this request loaded the task (fetch/compile) before running.
    pub cold_start: bool,
    /// For streaming callers: where stdout chunks go, and a signal when the guest starts.
    pub stream: Option<StreamSink>,
    /// The W3C `traceparent` the caller sent (gRPC metadata or HTTP header), unparsed.
    pub traceparent: Option<String>,
    /// The cluster node that forwarded this call here: it runs only if an instance can be
    /// granted at once (RESOURCE_EXHAUSTED otherwise; the origin queues it).
    pub forwarded_from: Option<String>,
    /// Fired when the guest starts (taken by the first start): a stream's caller sends
    /// RUNNING then, the cluster's work puller takes the next message then.
    pub on_start: Option<oneshot::Sender<()>>,
}

/// The live side of a streaming execution.
pub struct StreamSink {
    pub chunks: OutputChunkSender,
    /// An HTTP handler's response head, sent before its body's chunks.
    pub http_response_head: Option<HttpResponseHeadSender>,
}

/// Settings of the manager.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// Async executions accepted and not yet ended.
    pub max_async_pending: usize,
    /// The most retries a call may ask for.
    pub max_retries: u32,
    /// Cluster mode: this node's id, recorded as `metrics["node_id"]` of every execution.
    pub node_id: Option<Arc<str>>,
}

struct LiveExecution {
    task_id: String,
    mode: ExecutionMode,
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

/// An accepted execution.
pub struct Submitted {
    /// The record as accepted (PENDING), or the existing execution's current record.
    pub record: ExecutionRecord,
    pub finished: watch::Receiver<Option<ExecutionRecord>>,
    /// `Some` when this submission created the execution (cancel it if the caller leaves).
    pub cancellation: Option<CancellationToken>,
}

pub struct TaskExecutionManager {
    store: Arc<DurableStore>,
    config: ManagerConfig,
    /// Pools, instances, the global run limit and the priority queue.
    dispatcher: Dispatcher<InstanceRuntime>,
    live: Mutex<HashMap<String, LiveExecution>>,
    next_sequence: AtomicU64,
    /// Async executions accepted and not yet ended.
    async_pending: AtomicUsize,
    /// Executions running a guest.
    running: AtomicUsize,
    metrics: NodeMetrics,
    /// Stops async executions that have not started when the node shuts down; they stay
    /// PENDING on disk and run after the restart.
    shutting_down: CancellationToken,
}

impl TaskExecutionManager {
    pub fn new(
        store: Arc<DurableStore>,
        config: ManagerConfig,
        dispatcher: Dispatcher<InstanceRuntime>,
        highest_sequence: u64,
    ) -> Arc<TaskExecutionManager> {
        Arc::new(TaskExecutionManager {
            store,
            config,
            dispatcher,
            live: Mutex::new(HashMap::new()),
            next_sequence: AtomicU64::new(highest_sequence + 1),
            async_pending: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            metrics: NodeMetrics::default(),
            shutting_down: CancellationToken::new(),
        })
    }

    pub fn store(&self) -> &Arc<DurableStore> {
        &self.store
    }

    pub fn dispatcher(&self) -> &Dispatcher<InstanceRuntime> {
        &self.dispatcher
    }

    /// Node-wide metrics the manager records (`/metrics`).
    pub fn metrics(&self) -> &NodeMetrics {
        &self.metrics
    }

    /// Sync and stream executions waiting for an instance.
    pub fn queued_count(&self) -> usize {
        self.dispatcher.queued()
    }

    pub fn async_pending_count(&self) -> usize {
        self.async_pending.load(Ordering::Relaxed)
    }

    pub fn running_count(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    pub fn max_queue_length(&self) -> usize {
        self.dispatcher.config().max_queue_length
    }

    /// Executions submitted since the record sequence began.
    pub fn total_submitted(&self) -> u64 {
        self.next_sequence.load(Ordering::Relaxed) - 1
    }

    /// Runs one sync execution to its end and returns its terminal record. Dropping the
    /// returned future cancels the execution.
    ///
    /// The execution runs inside the caller's own task rather than a spawned one: no task to
    /// allocate and schedule, no hand-over to another worker thread and no wake-up of the
    /// caller when it ends, which is most of what a warm call costs beyond the guest itself. If
    /// the caller goes away first, [`RunsToEndIfDropped`] cancels the execution and moves it to
    /// a task of its own, which writes the terminal record as a spawned execution would.
    pub async fn execute(
        self: &Arc<Self>,
        request: ExecutionRequest,
    ) -> SpearResult<ExecutionRecord> {
        let (request, record, handle, ticket) = match self.admit(request).await? {
            Admission::Existing(submitted) => {
                let mut finished = submitted.finished;
                return wait_finished(&mut finished).await;
            }
            Admission::New(admitted) => *admitted,
        };
        let cancellation = handle.cancellation.clone();
        let execution = self.execution_future(request, record, handle, ticket, Duration::ZERO);
        // The record comes back as the future's output, not through the `finished` channel: no
        // copy for a channel nobody else watches.
        RunsToEndIfDropped::new(execution, cancellation)
            .await
            .ok_or_else(|| SpearError::unavailable("the node is shutting down"))
    }

    /// Accepts an execution: idempotency, capacity, the PENDING record, the spawned run.
    pub async fn submit(self: &Arc<Self>, request: ExecutionRequest) -> SpearResult<Submitted> {
        let (request, record, handle, ticket) = match self.admit(request).await? {
            Admission::Existing(submitted) => return Ok(*submitted),
            Admission::New(admitted) => *admitted,
        };
        let submitted = Submitted {
            record: record.clone(),
            finished: handle.finished.clone(),
            cancellation: Some(handle.cancellation.clone()),
        };
        let execution = self.execution_future(request, record, handle, ticket, Duration::ZERO);
        tokio::spawn(execution);
        Ok(submitted)
    }

    /// Runs one attempt of a cluster execution this node claimed from the cluster's work queue
    /// (`spearlet-cluster`): the cluster holds the execution's durable state and its
    /// idempotency, so no lookup happens here and the record is marked
    /// [`CLUSTER_EXECUTION_METADATA_KEY`] (after a restart it is handed back to the cluster, not
    /// run again here). Returns the terminal record, or `None` when the node shut down first.
    pub async fn run_cluster_attempt(
        self: &Arc<Self>,
        mut request: ExecutionRequest,
        attempt: u32,
    ) -> SpearResult<Option<ExecutionRecord>> {
        let execution_id = request
            .execution_id
            .clone()
            .ok_or_else(|| SpearError::internal("a cluster execution carries its id"))?;
        request.mode = ExecutionMode::Async;
        request
            .metadata
            .insert(CLUSTER_EXECUTION_METADATA_KEY.into(), "true".into());
        let fingerprint = request_fingerprint(&request);
        let (record, handle) = {
            let mut live = self.live.lock();
            if live.contains_key(&execution_id) {
                return Err(SpearError::failed_precondition(format!(
                    "execution {execution_id} is already running on this node"
                )));
            }
            // Not kept for a local re-run (`is_async` false): the cluster's queue holds the input.
            let mut record = self.new_record(&request, execution_id, fingerprint, false);
            record.attempt = attempt.max(1);
            if let Some(first) = record.timeline.first_mut() {
                first.attempt = record.attempt;
                first.note = format!("claimed from the cluster's queue (attempt {attempt})");
            }
            let handle = self.register_live(&mut live, &record);
            (record, handle)
        };
        self.store.put_execution_volatile(record.clone());
        self.async_pending.fetch_add(1, Ordering::Relaxed);
        request
            .task
            .counters
            .execution_count
            .fetch_add(1, Ordering::Relaxed);
        Ok(self
            .execution_future(request, record, handle, None, Duration::ZERO)
            .await)
    }

    /// Idempotency, capacity and the PENDING record: everything before the execution runs.
    async fn admit(&self, request: ExecutionRequest) -> SpearResult<Admission> {
        let (record, handle, ticket) = match self.accept(&request)? {
            Acceptance::Existing(submitted) => {
                return Ok(Admission::Existing(Box::new(submitted)));
            }
            Acceptance::New(record, handle, ticket) => (record, handle, ticket),
        };
        let is_async = request.mode == ExecutionMode::Async;
        // An async acceptance must be on disk before the client hears of it. A sync or stream
        // execution's live states only need to be visible: after a crash its caller is gone and
        // there is nothing to resume, so only its terminal record is written (one row per call).
        let write = if is_async {
            self.store.put_execution_durable(record.clone()).await
        } else {
            self.store.put_execution_volatile(record.clone());
            Ok(())
        };
        if let Err(error) = write {
            self.live.lock().remove(&record.execution_id);
            if is_async {
                self.async_pending.fetch_sub(1, Ordering::Relaxed);
                // The client hears "failed": the record the writer keeps retrying must not
                // come back as a PENDING execution that runs after all (or after a restart).
                if let Err(withdraw_error) = self.store.withdraw_execution(&record).await {
                    tracing::error!(execution_id = %record.execution_id, "withdrawing an unrecorded acceptance failed: {withdraw_error}");
                }
            }
            return Err(error);
        }
        request
            .task
            .counters
            .execution_count
            .fetch_add(1, Ordering::Relaxed);
        Ok(Admission::New(Box::new((request, record, handle, ticket))))
    }

    /// The synchronous half of `submit`, under the live-executions lock: an existing execution
    /// with this id, or a new PENDING record registered as live.
    fn accept(&self, request: &ExecutionRequest) -> SpearResult<Acceptance> {
        let fingerprint = request_fingerprint(request);
        if let Some(execution_id) = &request.execution_id {
            validate_id("context.execution_id", execution_id)?;
        }
        let mut live = self.live.lock();
        if let Some(execution_id) = &request.execution_id
            && let Some(existing) =
                self.existing_execution(&live, execution_id, request, &fingerprint)?
        {
            return Ok(Acceptance::Existing(existing));
        }
        let is_async = request.mode == ExecutionMode::Async;
        // A sync or stream call takes its place in the queue now, so a full queue refuses it
        // before anything is recorded; an async execution (bounded by max_async_pending) is
        // spawned at once and enters the dispatcher's queue when it asks for an instance.
        let ticket = if is_async {
            let pending = self.async_pending.load(Ordering::Relaxed);
            let limit = self.config.max_async_pending;
            if pending >= limit {
                return Err(SpearError::resource_exhausted(format!(
                    "{pending} async executions are waiting and max_async_pending is {limit}; \
                     retry later"
                ))
                .with_retry_after_ms(self.estimate_completion_ms(&request.task).max(10) as u64));
            }
            self.async_pending.fetch_add(1, Ordering::Relaxed);
            None
        } else {
            let ticket = self
                .dispatcher
                .enqueue(&request.task.pool, acquire_request(request, true))
                .map_err(rejection_error)?;
            Some(ticket)
        };
        let execution_id = request
            .execution_id
            .clone()
            .unwrap_or_else(|| random_id("exec", rand::random()));
        let record = self.new_record(request, execution_id, fingerprint, is_async);
        let handle = self.register_live(&mut live, &record);
        Ok(Acceptance::New(record, handle, ticket))
    }

    /// A new PENDING record for an accepted request.
    fn new_record(
        &self,
        request: &ExecutionRequest,
        execution_id: String,
        fingerprint: String,
        is_async: bool,
    ) -> ExecutionRecord {
        let max_retries = request.call.max_retries.min(self.config.max_retries);
        let now_us = unix_us();
        ExecutionRecord {
            execution_id,
            sequence: self.next_sequence.fetch_add(1, Ordering::Relaxed),
            task_id: request.task.record.task_id.clone(),
            task_name: request.task.record.task_name.clone(),
            function_name: request.function_name.clone(),
            mode: request.mode,
            status: ExecutionStatus::Pending,
            submitted_at_ms: now_us / 1000,
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
            metrics: match &self.config.node_id {
                Some(node_id) => BTreeMap::from([("node_id".to_owned(), node_id.to_string())]),
                None => BTreeMap::new(),
            },
            attempt: 1,
            // Named when an instance is granted.
            instance_id: String::new(),
            request_fingerprint: fingerprint,
            metadata: record_metadata(request),
            request: StoredRequest {
                // Only async executions can run again after a restart; a sync caller is gone
                // by then, so its input is not kept.
                input: if is_async {
                    request.call.input.clone()
                } else {
                    Bytes::new()
                },
                max_retries,
                ..request.call.clone()
            },
            timeline: vec![TimelineEntry {
                at_us: now_us,
                status: ExecutionStatus::Pending,
                attempt: 1,
                note: "accepted".into(),
            }],
        }
    }

    /// An existing execution with this client id: the same one (same task and input) or an
    /// ALREADY_EXISTS error.
    fn existing_execution(
        &self,
        live: &HashMap<String, LiveExecution>,
        execution_id: &str,
        request: &ExecutionRequest,
        fingerprint: &str,
    ) -> SpearResult<Option<Submitted>> {
        let Some(record) = self.store.execution(execution_id)? else {
            return Ok(None);
        };
        if record.task_id != request.task.record.task_id
            || record.request_fingerprint != fingerprint
        {
            return Err(SpearError::already_exists(format!(
                "context.execution_id {execution_id:?} already names an execution with a \
                 different task or input"
            )));
        }
        let finished = match live.get(execution_id) {
            Some(execution) => execution.finished.clone(),
            None => watch::channel(Some(record.clone())).1,
        };
        Ok(Some(Submitted {
            record,
            finished,
            cancellation: None,
        }))
    }

    fn register_live(
        &self,
        live: &mut HashMap<String, LiveExecution>,
        record: &ExecutionRecord,
    ) -> ExecutionHandle {
        let cancellation = CancellationToken::new();
        let cancel_reason = Arc::new(Mutex::new(None));
        let (finished_sender, finished) = watch::channel(None);
        live.insert(
            record.execution_id.clone(),
            LiveExecution {
                task_id: record.task_id.clone(),
                mode: record.mode,
                cancellation: cancellation.clone(),
                cancel_reason: cancel_reason.clone(),
                finished: finished.clone(),
            },
        );
        ExecutionHandle {
            cancellation,
            cancel_reason,
            finished,
            finished_sender,
        }
    }

    /// The whole life of an accepted execution as one future: wait for an instance, run, write
    /// the terminal record and return it, publishing it on the `finished` channel when anybody
    /// else waits. Spawned for async and stream executions, polled by the caller itself for sync
    /// ones.
    fn execution_future(
        self: &Arc<Self>,
        request: ExecutionRequest,
        record: ExecutionRecord,
        handle: ExecutionHandle,
        ticket: Option<Ticket<InstanceRuntime>>,
        start_delay: Duration,
    ) -> ExecutionFuture {
        request.task.counters.live.fetch_add(1, Ordering::Relaxed);
        let manager = self.clone();
        // Every log line of the execution carries these fields; `instance_id` is recorded when an
        // instance is leased, `attempt` again on a retry.
        let span = tracing::info_span!(
            "execution",
            execution_id = %record.execution_id,
            task_id = %record.task_id,
            function = %record.function_name,
            attempt = record.attempt,
            instance_id = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        let incoming_trace = request.traceparent.as_deref().and_then(TraceContext::parse);
        let trace = trace_context::continue_trace(&span, incoming_trace.as_ref());
        span.record("trace_id", trace.trace_id_hex().as_str());
        let execution = async move {
            let mode = record.mode;
            let ExecutionHandle {
                cancellation,
                cancel_reason,
                finished_sender,
                finished,
            } = handle;
            // Only other waiters hold receivers from here on, so `receiver_count` below says
            // whether anybody needs the record published.
            drop(finished);
            if !start_delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep(start_delay) => {}
                    () = cancellation.cancelled() => {}
                }
            }
            let result = manager
                .run(
                    request,
                    record,
                    ticket,
                    trace,
                    &cancellation,
                    &cancel_reason,
                )
                .await;
            match mode {
                ExecutionMode::Async => manager.async_pending.fetch_sub(1, Ordering::Relaxed),
                _ => 0,
            };
            // Waiters besides the one that polls this future: a cancel request, an async
            // caller with `wait`, an idempotent resubmission, a stream. The sync caller that
            // polls the future gets the record as its output.
            if let Some(record) = &result
                && finished_sender.receiver_count() > 0
            {
                finished_sender.send_replace(Some(record.clone()));
            }
            result
        };
        Box::pin(execution.instrument(span))
    }

    /// Runs the execution to its end, attempt after attempt: lease an instance, start, call,
    /// then retry or finish. Returns the terminal record, or `None` when the node is shutting
    /// down and the (async) execution was left for the next start.
    async fn run(
        &self,
        mut request: ExecutionRequest,
        mut record: ExecutionRecord,
        ticket: Option<Ticket<InstanceRuntime>>,
        trace: TraceContext,
        cancellation: &CancellationToken,
        cancel_reason: &Mutex<Option<String>>,
    ) -> Option<ExecutionRecord> {
        let task = request.task.clone();
        let submitted = Instant::now();
        let timeout_ms = task
            .config
            .effective_timeout_ms(record.request.requested_timeout_ms);
        let deadline = submitted + Duration::from_millis(timeout_ms);
        // A stream caller has seen output by the time an attempt fails: it is never retried.
        let streaming = request.stream.is_some();
        let mut pending_ticket = ticket;
        loop {
            let ticket = pending_ticket.take();
            let lease = match self
                .lease(
                    &request,
                    &mut record,
                    ticket,
                    submitted,
                    deadline,
                    cancellation,
                )
                .await
            {
                Leased::Granted(lease) => lease,
                Leased::Ended => {
                    let outcome = if cancellation.is_cancelled() {
                        cancelled_outcome(cancel_reason)
                    } else {
                        Outcome::TimedOut {
                            message: format!(
                                "timed out after {timeout_ms} ms waiting in the queue"
                            ),
                        }
                    };
                    return Some(self.finish(record, &task, outcome, None).await);
                }
                Leased::Refused(outcome) => {
                    return Some(self.finish(record, &task, outcome, None).await);
                }
                Leased::ShuttingDown => {
                    self.live.lock().remove(&record.execution_id);
                    task.counters.live.fetch_sub(1, Ordering::Relaxed);
                    return None;
                }
            };
            self.start(&mut record, &mut request, &lease).await;
            let (report, run_duration) = self
                .call(&mut request, &record, lease, &trace, deadline, cancellation)
                .await;
            let outcome = match report.outcome {
                Outcome::Cancelled { .. } => cancelled_outcome(cancel_reason),
                Outcome::TimedOut { .. } => Outcome::TimedOut {
                    message: format!("the call exceeded its timeout of {timeout_ms} ms"),
                },
                ref other => other.clone(),
            };
            if let Some(failure) = retryable_failure(&outcome)
                && !streaming
                && record.attempt <= record.request.max_retries
                && !cancellation.is_cancelled()
                && Instant::now() < deadline
            {
                record.retry(
                    unix_us(),
                    failure,
                    format!(
                        "retrying after {} (context.max_retries = {})",
                        ErrorCode::WorkerCrashed.as_str(),
                        record.request.max_retries
                    ),
                );
                tracing::Span::current().record("attempt", record.attempt);
                continue;
            }
            let attempt = AttemptEnd {
                report,
                run_duration,
            };
            return Some(self.finish(record, &task, outcome, Some(attempt)).await);
        }
    }

    /// Waits for an instance of the task's pool: the ticket a sync or stream call took at
    /// acceptance, or a place in the queue now (async work enters when it can run; it does not
    /// count against `max_queue_length`, which `max_async_pending` bounds instead). Races the
    /// deadline, cancellation and (for async work) a graceful shutdown.
    async fn lease(
        &self,
        request: &ExecutionRequest,
        record: &mut ExecutionRecord,
        ticket: Option<Ticket<InstanceRuntime>>,
        submitted: Instant,
        deadline: Instant,
        cancellation: &CancellationToken,
    ) -> Leased {
        let task = &request.task;
        let ticket = match ticket {
            Some(ticket) => Ok(ticket),
            None => self
                .dispatcher
                .enqueue(&task.pool, acquire_request(request, false)),
        };
        let granted = match ticket {
            Err(rejection) => Err(Outcome::Failed {
                code: ErrorCode::InitFailed,
                message: rejection.to_string(),
            }),
            Ok(ticket) => tokio::select! {
                lease = ticket.ready() => lease.map_err(|error| Outcome::Failed {
                    code: ErrorCode::InitFailed,
                    message: error.message,
                }),
                () = tokio::time::sleep_until(deadline) => return Leased::Ended,
                () = cancellation.cancelled() => return Leased::Ended,
                () = self.wait_for_shutdown(record.mode == ExecutionMode::Async) => {
                    return Leased::ShuttingDown;
                }
            },
        };
        let queue_wait_ms = submitted.elapsed().as_secs_f64() * 1000.0;
        record
            .metrics
            .insert("queue_wait_ms".into(), format!("{queue_wait_ms:.3}"));
        record
            .metrics
            .insert("attempt".into(), record.attempt.to_string());
        if request.cold_start {
            record
                .metrics
                .insert("load_ms".into(), format!("{:.3}", task.load_ms));
        }
        match granted {
            Ok(lease) => Leased::Granted(lease),
            Err(outcome) => Leased::Refused(outcome),
        }
    }

    /// The instance is leased: record which one and whether it was a cold start, count the
    /// execution as running (before the RUNNING write, so a graceful shutdown waits for it),
    /// write RUNNING (durably for async work) and tell a stream caller the guest starts.
    async fn start(
        &self,
        record: &mut ExecutionRecord,
        request: &mut ExecutionRequest,
        lease: &InstanceLease<InstanceRuntime>,
    ) {
        let task = &request.task;
        record.instance_id = lease.instance_id().to_owned();
        self.metrics.queue_wait.observe_duration(lease.queue_wait());
        tracing::Span::current().record("instance_id", record.instance_id.as_str());
        let instance_cold_start = lease.cold_start();
        record.metrics.insert(
            "cold_start".into(),
            (request.cold_start || instance_cold_start.is_some()).to_string(),
        );
        if let Some(start) = instance_cold_start {
            record.metrics.insert(
                "instance_start_ms".into(),
                format!("{:.3}", start.as_secs_f64() * 1000.0),
            );
            task.counters
                .metrics
                .record_cold_start(&record.function_name, start);
        }
        self.running.fetch_add(1, Ordering::Relaxed);
        task.counters.running.fetch_add(1, Ordering::Relaxed);
        record.start(unix_us());
        let running_write = if record.mode == ExecutionMode::Async {
            self.store.put_execution_durable(record.clone()).await
        } else {
            self.store.put_execution_volatile(record.clone());
            Ok(())
        };
        if let Err(error) = running_write {
            tracing::warn!(execution_id = %record.execution_id, "recording RUNNING failed: {error}");
        }
        if let Some(started) = request.on_start.take() {
            let _ = started.send(());
        }
        tracing::debug!("execution started");
    }

    /// Runs the guest on the leased instance, then gives the instance back (or drains it, if
    /// the call left it unusable or failed) before anything is written.
    async fn call(
        &self,
        request: &mut ExecutionRequest,
        record: &ExecutionRecord,
        mut lease: InstanceLease<InstanceRuntime>,
        trace: &TraceContext,
        deadline: Instant,
        cancellation: &CancellationToken,
    ) -> (CallReport, Duration) {
        // Moved into the call: the stream ends when the guest's output does.
        let (output_chunks, http_response_head) = match request.stream.take() {
            Some(sink) => (Some(sink.chunks), sink.http_response_head),
            None => (None, None),
        };
        let task = &request.task;
        let call = FunctionCall {
            execution_id: record.execution_id.clone(),
            task_id: task.record.task_id.clone(),
            task_name: task.record.task_name.clone(),
            function_name: record.function_name.clone(),
            session_id: request.call.session_id.clone(),
            input: request.call.input.clone(),
            caller_environment: request.call.environment.clone(),
            caller_headers: request.call.headers.clone(),
            trace: *trace,
            limits: task.call_limits,
            deadline,
            cancellation: cancellation.clone(),
            output_chunks,
            http_response_head,
        };
        let run_started = Instant::now();
        let report = lease.runtime().run(&request.target, call).await;
        let run_duration = run_started.elapsed();
        if !report.instance_still_usable {
            lease.discard_instance();
        }
        if matches!(report.outcome, Outcome::Failed { .. }) {
            lease.record_failure();
        }
        drop(lease);
        self.running.fetch_sub(1, Ordering::Relaxed);
        task.counters.running.fetch_sub(1, Ordering::Relaxed);
        (report, run_duration)
    }

    /// Resolves when a graceful shutdown begins, for async executions; never for sync and stream
    /// ones (their callers get an answer when the node cancels them).
    async fn wait_for_shutdown(&self, is_async: bool) {
        if is_async {
            self.shutting_down.cancelled().await;
        } else {
            std::future::pending::<()>().await;
        }
    }

    /// The terminal step: the record takes the attempt's output, logs and figures and its end
    /// (`ExecutionRecord::finish`), is queued for the writer, and the task's counters move.
    /// `attempt` is `None` when the execution ended before a guest ran (in the queue, or
    /// refused an instance).
    async fn finish(
        &self,
        mut record: ExecutionRecord,
        task: &LoadedTask,
        outcome: Outcome,
        attempt: Option<AttemptEnd>,
    ) -> ExecutionRecord {
        let run_ms = attempt
            .as_ref()
            .map_or(0.0, |attempt| attempt.run_duration.as_secs_f64() * 1000.0);
        record.output_content_type = OCTET_STREAM.to_owned();
        if let Some(AttemptEnd { report, .. }) = attempt {
            record.metrics.insert(
                "instantiate_us".into(),
                report.start_duration.as_micros().to_string(),
            );
            record.metrics.extend(report.metrics);
            record.output = report.output;
            record.logs = report.logs;
            // Not measured stays 0 on the wire field, documented as such.
            record.memory_used_bytes = report
                .memory_used_bytes
                .map_or(0, |bytes| i64::try_from(bytes).unwrap_or(i64::MAX));
            if let Some(content_type) = report.output_content_type {
                record.output_content_type = content_type;
            }
        }
        record.execution_time_ms = run_ms.round() as i64;
        record.metrics.insert(
            "execution_time_us".into(),
            ((run_ms * 1000.0) as i64).to_string(),
        );
        record.finish(unix_us(), &outcome);
        // Queued, not awaited for durability: a sync reply may go out before its record is on
        // disk; an async execution that ends now and is lost in a crash is retried by policy.
        // (The queue is bounded: when the writer is that far behind, this waits for room.)
        if let Err(error) = self.store.put_execution(record.clone()).await {
            tracing::error!(execution_id = %record.execution_id, "recording the result failed: {error}");
        }
        task.counters.set_last_status(record.status);
        task.counters.live.fetch_sub(1, Ordering::Relaxed);
        // Only runs of the guest say how long the task takes; an execution that ended in the
        // queue (timeout, cancellation) has no run time.
        if record.started_at_us.is_some() {
            task.counters.record_duration(run_ms);
        }
        task.counters.metrics.record_finished(
            &record.function_name,
            record.status,
            record.error_code,
            record.started_at_us.map(|_| run_ms / 1000.0),
        );
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

    /// Milliseconds until an async execution submitted now is expected to end: the task's
    /// recent mean duration times the rounds of run slots the work ahead of it needs.
    pub fn estimate_completion_ms(&self, task: &LoadedTask) -> i64 {
        let Some(mean_ms) = task.counters.recent_duration_ms() else {
            return 0;
        };
        let ahead = self.queued_count() + self.async_pending_count() + self.running_count();
        let rounds = ahead / self.dispatcher.config().max_concurrent_executions.max(1) + 1;
        (mean_ms * rounds as f64).ceil() as i64
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
    /// Whether the execution is live (pending or running) on this node.
    pub fn is_live(&self, execution_id: &str) -> bool {
        self.live.lock().contains_key(execution_id)
    }

    pub fn live_executions_of(&self, task_id: &str) -> Vec<String> {
        self.live
            .lock()
            .iter()
            .filter(|(_, execution)| execution.task_id == task_id)
            .map(|(execution_id, _)| execution_id.clone())
            .collect()
    }

    /// First step of a graceful shutdown: async executions that have not started leave the
    /// queue and stay PENDING on disk for the next start.
    pub fn begin_shutdown(&self) {
        self.shutting_down.cancel();
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.is_cancelled()
    }

    /// Last step of a graceful shutdown: sync and stream executions still live are cancelled
    /// (their callers get an answer); async executions still running are left RUNNING on disk,
    /// so the next start retries them by policy; then everything queued is made durable.
    pub async fn shut_down(&self, reason: &str) {
        self.shutting_down.cancel();
        let execution_ids: Vec<String> = self
            .live
            .lock()
            .iter()
            .filter(|(_, execution)| execution.mode != ExecutionMode::Async)
            .map(|(execution_id, _)| execution_id.clone())
            .collect();
        for execution_id in execution_ids {
            let _ = self.cancel(&execution_id, reason).await;
        }
        if let Err(error) = self.store.flush().await {
            tracing::error!("flushing records at shutdown failed: {error}");
        }
    }

    /// Resumes what a previous run of the node left unfinished: queued async executions run;
    /// async executions that were running are retried if attempts remain, else end
    /// NODE_RESTARTED; sync and stream executions end NODE_RESTARTED (their caller is gone).
    pub async fn recover(
        self: &Arc<Self>,
        unfinished: Vec<ExecutionRecord>,
        registry: &TaskRegistry,
    ) -> RecoverySummary {
        let mut summary = RecoverySummary::default();
        for mut record in unfinished {
            if record.metadata.contains_key(CLUSTER_EXECUTION_METADATA_KEY) {
                // The cluster's queue redelivers it after the ack wait; the cluster's rules
                // decide (a new visible attempt, or NODE_LOST). Never run again here.
                record.finish(
                    unix_us(),
                    &Outcome::Failed {
                        code: ErrorCode::NodeLost,
                        message: "this node restarted during the attempt; the execution was \
                                  handed back to the cluster"
                            .into(),
                    },
                );
                if let Err(error) = self.store.put_execution(record).await {
                    tracing::error!("recording a handed-back cluster execution failed: {error}");
                }
                summary.handed_back += 1;
                continue;
            }
            let task = registry.resolve(&record.task_id);
            let resumable = record.mode == ExecutionMode::Async
                && (record.status == ExecutionStatus::Pending
                    || record.attempt <= record.request.max_retries);
            let target = task
                .as_ref()
                .map(|task| task.resolve_call_target(&record.function_name, &record.metadata));
            let (Some(task), Some(Ok(target)), true) = (task, target, resumable) else {
                let message = match record.mode {
                    ExecutionMode::Async if record.status == ExecutionStatus::Running => format!(
                        "the node restarted during attempt {} and no retries remain",
                        record.attempt
                    ),
                    ExecutionMode::Async => {
                        "the node restarted and the task could no longer run it".to_owned()
                    }
                    _ => "the node restarted; the caller of this execution is gone".to_owned(),
                };
                self.fail_unrecoverable(record, message).await;
                summary.failed += 1;
                continue;
            };
            let mut start_delay = Duration::ZERO;
            if record.status == ExecutionStatus::Running {
                let interrupted = record.attempt;
                record.begin_next_attempt(
                    unix_us(),
                    format!("attempt {interrupted} was interrupted by a node restart; retrying"),
                );
                start_delay = retry_backoff(record.attempt);
                summary.retried += 1;
            } else {
                summary.resumed += 1;
            }
            let request = ExecutionRequest {
                task: task.clone(),
                function_name: record.function_name.clone(),
                target,
                call: record.request.clone(),
                result_encoding: record.result_encoding,
                execution_id: Some(record.execution_id.clone()),
                mode: record.mode,
                priority: record
                    .metadata
                    .get(Priority::METADATA_KEY)
                    .and_then(|text| Priority::parse(text).ok())
                    .unwrap_or_default(),
                force_new_instance: false,
                metadata: record.metadata.clone(),
                cold_start: false,
                stream: None,
                // The caller's context, kept at acceptance: the resumed run continues its trace.
                traceparent: record.metadata.get(TRACEPARENT_METADATA_KEY).cloned(),
                forwarded_from: None,
                on_start: None,
            };
            if let Err(error) = self.store.put_execution_durable(record.clone()).await {
                tracing::error!(execution_id = %record.execution_id, "recording recovery failed: {error}");
            }
            self.async_pending.fetch_add(1, Ordering::Relaxed);
            let handle = {
                let mut live = self.live.lock();
                self.register_live(&mut live, &record)
            };
            tokio::spawn(self.execution_future(request, record, handle, None, start_delay));
        }
        summary
    }

    async fn fail_unrecoverable(&self, mut record: ExecutionRecord, message: String) {
        record.finish(
            unix_us(),
            &Outcome::Failed {
                code: ErrorCode::NodeRestarted,
                message,
            },
        );
        if let Err(error) = self.store.put_execution(record.clone()).await {
            tracing::error!(execution_id = %record.execution_id, "recording NODE_RESTARTED failed: {error}");
        }
    }
}

/// What recovery did at start.
#[derive(Debug, Default, Clone, Copy)]
pub struct RecoverySummary {
    pub resumed: usize,
    pub retried: usize,
    pub failed: usize,
    /// Cluster executions this node was running when it stopped, left to the cluster.
    pub handed_back: usize,
}

/// Exponential backoff with full jitter before attempt `attempt` (2, 3, …): up to 100 ms × 2^(n-2),
/// capped at 10 s.
fn retry_backoff(attempt: u32) -> Duration {
    let ceiling_ms = (100u64 << attempt.saturating_sub(2).min(7)).min(10_000);
    Duration::from_millis(rand::random_range(0..=ceiling_ms))
}

enum Acceptance {
    Existing(Submitted),
    /// A new execution; sync and stream ones hold their place in the queue.
    New(
        ExecutionRecord,
        ExecutionHandle,
        Option<Ticket<InstanceRuntime>>,
    ),
}

fn acquire_request(request: &ExecutionRequest, counts_against_queue_limit: bool) -> AcquireRequest {
    AcquireRequest {
        priority: request.priority,
        force_new_instance: request.force_new_instance,
        counts_against_queue_limit,
        grant_now_only: request.forwarded_from.is_some(),
    }
}

/// A refusal by the dispatcher as the client sees it: RESOURCE_EXHAUSTED with a retry hint.
fn rejection_error(rejection: Rejection) -> SpearError {
    let retry_after_ms = rejection.retry_after().as_millis() as u64;
    SpearError::resource_exhausted(rejection.to_string()).with_retry_after_ms(retry_after_ms)
}

struct ExecutionHandle {
    cancellation: CancellationToken,
    cancel_reason: Arc<Mutex<Option<String>>>,
    finished: watch::Receiver<Option<ExecutionRecord>>,
    finished_sender: watch::Sender<Option<ExecutionRecord>>,
}

/// How an attempt that ran a guest ended: the runtime's report and how long the call took.
struct AttemptEnd {
    report: CallReport,
    run_duration: Duration,
}

/// What waiting for an instance came to.
enum Leased {
    Granted(InstanceLease<InstanceRuntime>),
    /// The deadline passed or the execution was cancelled while it waited.
    Ended,
    /// No instance could be had (the pool could not start one, or refused the call).
    Refused(Outcome),
    /// A graceful shutdown began; the async execution stays PENDING for the next start.
    ShuttingDown,
}

/// The media type of an output whose runtime reported none.
const OCTET_STREAM: &str = "application/octet-stream";

/// An attempt's failure that another attempt may fix: the warm worker serving it crashed.
/// Returns the failure's message.
fn retryable_failure(outcome: &Outcome) -> Option<&str> {
    match outcome {
        Outcome::Failed {
            code: ErrorCode::WorkerCrashed,
            message,
        } => Some(message),
        _ => None,
    }
}

/// A cancellation's outcome, with the reason the canceller gave.
fn cancelled_outcome(cancel_reason: &Mutex<Option<String>>) -> Outcome {
    Outcome::Cancelled {
        reason: cancel_reason.lock().clone().unwrap_or_default(),
    }
}

fn non_empty_reason(reason: &str) -> String {
    if reason.is_empty() {
        "cancelled by request".to_owned()
    } else {
        reason.to_owned()
    }
}

/// Waits until the execution has its terminal record.
pub async fn wait_finished(
    finished: &mut watch::Receiver<Option<ExecutionRecord>>,
) -> SpearResult<ExecutionRecord> {
    let record = finished
        .wait_for(Option::is_some)
        .await
        .map_err(|_| SpearError::unavailable("the node is shutting down"))?;
    Ok(record.clone().expect("waited for Some"))
}

/// An execution's whole life, boxed so that moving it (into a task, or out of a dropped caller)
/// moves a pointer rather than a large state machine.
///
/// Its output is the terminal record, or `None` when a shutdown left an async execution for the
/// next start.
type ExecutionFuture = Pin<Box<dyn Future<Output = Option<ExecutionRecord>> + Send + 'static>>;

/// What `admit` decided: an existing execution with the same id, or a new one ready to run.
enum Admission {
    Existing(Box<Submitted>),
    New(Box<AdmittedExecution>),
}

type AdmittedExecution = (
    ExecutionRequest,
    ExecutionRecord,
    ExecutionHandle,
    Option<Ticket<InstanceRuntime>>,
);

/// Polls a sync execution inside its caller's task. If the caller's future is dropped before
/// the execution has ended (the client went away), the execution is cancelled and handed to a
/// task of its own, which runs it to its terminal record: a dropped caller never leaves an
/// execution without an end, nor an instance leased to a call nobody finishes.
pub struct RunsToEndIfDropped {
    execution: Option<ExecutionFuture>,
    cancellation: CancellationToken,
}

impl RunsToEndIfDropped {
    fn new(execution: ExecutionFuture, cancellation: CancellationToken) -> RunsToEndIfDropped {
        RunsToEndIfDropped {
            execution: Some(execution),
            cancellation,
        }
    }
}

impl Future for RunsToEndIfDropped {
    type Output = Option<ExecutionRecord>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let execution = self
            .execution
            .as_mut()
            .expect("RunsToEndIfDropped polled after it completed");
        match execution.as_mut().poll(context) {
            Poll::Ready(output) => {
                self.execution = None;
                Poll::Ready(output)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for RunsToEndIfDropped {
    fn drop(&mut self) {
        let Some(execution) = self.execution.take() else {
            return;
        };
        self.cancellation.cancel();
        // Without a runtime the node itself is gone; there is nothing left to record into.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(execution);
        }
    }
}

/// Cancels the execution when the caller's future is dropped (the client went away).
pub struct CancelOnDrop(pub Option<CancellationToken>);

impl CancelOnDrop {
    pub fn disarm(&mut self) {
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

/// Metadata key marking a record as one attempt of a cluster execution (see
/// [`TaskExecutionManager::run_cluster_attempt`]).
pub const CLUSTER_EXECUTION_METADATA_KEY: &str = "spearlet.cluster_execution";

/// The idempotency fingerprint: same task, function and input → same fingerprint.
pub fn request_fingerprint(request: &ExecutionRequest) -> String {
    let mut hasher = Sha256::new();
    hasher.update(request.task.record.task_id.as_bytes());
    hasher.update([0]);
    hasher.update(request.function_name.as_bytes());
    hasher.update([0]);
    hasher.update(&request.call.input);
    hex::encode(hasher.finalize())
}

/// The record's metadata: the call's, plus the caller's `traceparent` when it is valid.
fn record_metadata(request: &ExecutionRequest) -> BTreeMap<String, String> {
    let mut metadata = request.metadata.clone();
    if let Some(incoming) = request.traceparent.as_deref().and_then(TraceContext::parse) {
        metadata.insert(TRACEPARENT_METADATA_KEY.into(), incoming.traceparent());
    }
    if let Some(origin) = &request.forwarded_from {
        metadata.insert("forwarded_from".into(), origin.clone());
    }
    metadata
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for _ in 0..100 {
            assert!(retry_backoff(2) <= Duration::from_millis(100));
            assert!(retry_backoff(3) <= Duration::from_millis(200));
            assert!(retry_backoff(40) <= Duration::from_secs(10));
        }
    }
}
