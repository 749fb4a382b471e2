//! Async calls through one durable queue for the cluster, fenced so an acknowledged execution
//! is never lost and never silently run twice.
//!
//! - **Work stream** `<name>_work` (JetStream, work-queue retention, on disk): one message per
//!   accepted execution on subject `<name>.work.<task key>`, published with `Nats-Msg-Id` =
//!   execution id (a retried or concurrent publish within the duplicate window is stored once).
//!   One durable pull consumer per task (`work_<task key>`), shared by every node that has the
//!   task: a node pulls only when its dispatcher could grant the task an instance now, one
//!   message at a time, so it never holds more work than it can start.
//! - **Execution bucket** `<name>_executions` (KV, on disk): `e_<hex id>` → the execution's state
//!   (status, owner, attempt, error, output up to [`OUTPUT_CAP_BYTES`]). Every change is a
//!   compare-and-swap on the entry's revision — that is the fence. Acks alone cannot give
//!   exactly-once (JetStream accepts a late ack after a redelivery); the bucket can.
//!
//! Acceptance: read the entry (a repeated client id joins the execution or is ALREADY_EXISTS),
//! then at once publish the work and create the entry PENDING, each awaiting JetStream's
//! acknowledgement (a concurrent twin's publish is deduplicated and its create loses, so it
//! joins; a failed publish withdraws the entry). The client hears "accepted" only after both.
//!
//! A node that pulls a message claims the execution: PENDING → RUNNING with itself as owner and
//! the next attempt number. A message delivered again (its owner did not acknowledge within the
//! ack wait: it died, or stopped) whose entry is RUNNING under another owner means that owner
//! is lost: a new, visible attempt if `max_retries` allows, else FAILED `NODE_LOST`. The owner
//! sends in-progress acks while it runs, writes the terminal state with compare-and-swap from
//! its claim's revision, and acknowledges the message only after that write. An owner whose
//! claim was superseded cannot write: its result is discarded (and logged), never published.
//!
//! Cancellation marks the entry (`cancel_requested`); a pending execution is ended CANCELLED at
//! once (its message is dropped when delivered), a running one is stopped by its owner, told on
//! the core subject `<name>.cancel.<node key>`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::kv;
use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use spearlet_core::ids::random_id;
use spearlet_core::{
    ErrorCode, ExecutionMode, ExecutionRecord, ExecutionStatus, Priority, ResultEncoding,
    SpearError, SpearResult, StoredRequest,
};
use spearlet_server::Node;
use spearlet_server::clock::{unix_ms, unix_us};
use spearlet_server::manager::{CancelResult, ExecutionRequest, request_fingerprint};

use crate::names::{ClusterNames, execution_key, node_key, task_key};

/// Output kept in the execution bucket; larger output stays in the owner's record
/// (`output_truncated`).
pub const OUTPUT_CAP_BYTES: usize = 64 * 1024;

/// How many times a state change re-reads the entry after losing a compare-and-swap race.
const MAX_CAS_ATTEMPTS: usize = 16;

/// How long an execution's state stays in the bucket after its last change (a week, as the
/// node's default `execution_ttl_ms`).
const EXECUTION_STATE_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Deliveries (half a second apart) of a message whose execution has no entry before it is
/// dropped as the leftover of a failed acceptance.
const ORPHAN_DELIVERIES: i64 = 40;

/// How long an attempt's result is kept trying to reach an unreachable NATS.
const TERMINAL_WRITE_PATIENCE: Duration = Duration::from_secs(120);

/// One accepted execution as the work stream carries it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkItem {
    pub execution_id: String,
    pub task_id: String,
    pub function_name: String,
    pub request: StoredRequest,
    pub result_encoding: ResultEncoding,
    pub metadata: BTreeMap<String, String>,
    pub traceparent: Option<String>,
    pub fingerprint: String,
}

/// An execution's state in the execution bucket.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClusterExecution {
    pub execution_id: String,
    pub task_id: String,
    pub task_name: String,
    pub function_name: String,
    pub fingerprint: String,
    pub result_encoding: ResultEncoding,
    pub status: ExecutionStatus,
    /// The attempt running or last run (0 before the first).
    pub attempt: u32,
    pub max_retries: u32,
    /// The node running it (or that ran it); empty while pending.
    pub owner: String,
    pub accepted_by: String,
    pub submitted_at_ms: i64,
    pub started_at_us: Option<i64>,
    pub completed_at_us: Option<i64>,
    pub execution_time_ms: i64,
    pub error_code: Option<ErrorCode>,
    pub error_message: String,
    pub output: Bytes,
    pub output_content_type: String,
    /// The output was longer than [`OUTPUT_CAP_BYTES`]; the owner's record has all of it.
    pub output_truncated: bool,
    pub instance_id: String,
    /// Set by a cancel request while the execution runs; its owner stops it.
    pub cancel_requested: Option<String>,
}

impl ClusterExecution {
    /// The state as an execution record, for the node's RPCs (`metrics` says which node and
    /// attempt).
    pub fn to_record(&self) -> ExecutionRecord {
        let mut metrics = BTreeMap::from([("attempt".to_owned(), self.attempt.to_string())]);
        if !self.owner.is_empty() {
            metrics.insert("node_id".into(), self.owner.clone());
        }
        if self.output_truncated {
            metrics.insert("output_truncated".into(), "true".into());
        }
        ExecutionRecord {
            execution_id: self.execution_id.clone(),
            sequence: 0,
            task_id: self.task_id.clone(),
            task_name: self.task_name.clone(),
            function_name: self.function_name.clone(),
            mode: ExecutionMode::Async,
            status: self.status,
            submitted_at_ms: self.submitted_at_ms,
            started_at_us: self.started_at_us,
            completed_at_us: self.completed_at_us,
            execution_time_ms: self.execution_time_ms,
            memory_used_bytes: 0,
            output: self.output.clone(),
            output_content_type: self.output_content_type.clone(),
            result_encoding: self.result_encoding,
            logs: Bytes::new(),
            error_code: self.error_code,
            error_message: self.error_message.clone(),
            metrics,
            attempt: self.attempt.max(1),
            instance_id: self.instance_id.clone(),
            request_fingerprint: self.fingerprint.clone(),
            metadata: BTreeMap::new(),
            request: StoredRequest::default(),
            timeline: Vec::new(),
        }
    }

    fn end(&mut self, status: ExecutionStatus, code: Option<ErrorCode>, message: String) {
        self.status = status;
        self.error_code = code;
        self.error_message = message;
        self.completed_at_us = Some(unix_us());
    }
}

/// What a claim decided for a delivered message.
enum Claim {
    /// Run attempt `attempt`; the entry's revision after the claim.
    Run { attempt: u32, revision: u64 },
    /// Nothing to run (ended, a duplicate, ended now as NODE_LOST or CANCELLED): ack it.
    Drop,
    /// The execution is running on this node already: leave the message alone.
    Ignore,
}

pub struct WorkQueue {
    node_id: String,
    names: ClusterNames,
    client: async_nats::Client,
    jetstream: jetstream::Context,
    stream: jetstream::stream::Stream,
    executions: kv::Store,
    ack_wait: Duration,
    /// Task id → its pull loop.
    pullers: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// Set when the node leaves: no pull loop starts again.
    stopped: std::sync::atomic::AtomicBool,
}

impl WorkQueue {
    /// Creates (or brings up to date) the work stream and the execution bucket.
    pub async fn open(
        client: async_nats::Client,
        names: ClusterNames,
        node_id: String,
        ack_wait: Duration,
        replicas: usize,
    ) -> SpearResult<WorkQueue> {
        let jetstream = jetstream::new(client.clone());
        jetstream
            .create_or_update_stream(jetstream::stream::Config {
                name: names.work_stream.clone(),
                description: Some("spearlet cluster: accepted async executions".into()),
                subjects: vec![format!("{}.work.>", names.cluster_name)],
                retention: jetstream::stream::RetentionPolicy::WorkQueue,
                storage: jetstream::stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|error| unavailable(format!("preparing {}: {error}", names.work_stream)))?;
        let stream = jetstream
            .get_stream(&names.work_stream)
            .await
            .map_err(|error| unavailable(format!("opening {}: {error}", names.work_stream)))?;
        let executions = jetstream
            .create_or_update_key_value(kv::Config {
                bucket: names.executions_bucket.clone(),
                description: "spearlet cluster executions: execution id → state".into(),
                history: 1,
                max_age: EXECUTION_STATE_RETENTION,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|error| {
                unavailable(format!("preparing {}: {error}", names.executions_bucket))
            })?;
        Ok(WorkQueue {
            node_id,
            names,
            client,
            jetstream,
            stream,
            executions,
            ack_wait,
            pullers: Mutex::new(HashMap::new()),
            stopped: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn work_subject(&self, task_name: &str) -> String {
        format!("{}.work.{}", self.names.cluster_name, task_key(task_name))
    }

    fn cancel_subject(&self, node_id: &str) -> String {
        format!("{}.cancel.{}", self.names.cluster_name, node_key(node_id))
    }

    async fn state(&self, execution_id: &str) -> SpearResult<Option<(ClusterExecution, u64)>> {
        let entry = self
            .executions
            .entry(execution_key(execution_id))
            .await
            .map_err(|error| unavailable(format!("reading execution {execution_id}: {error}")))?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let state = serde_json::from_slice(&entry.value).map_err(|error| {
                    SpearError::internal(format!("execution {execution_id}: {error}"))
                })?;
                Ok(Some((state, entry.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Writes `state` if the entry is still at `revision`; `false` when somebody else changed
    /// it first.
    async fn swap(&self, state: &ClusterExecution, revision: u64) -> SpearResult<Option<u64>> {
        let value = encode(state)?;
        match self
            .executions
            .update(execution_key(&state.execution_id), value, revision)
            .await
        {
            Ok(revision) => Ok(Some(revision)),
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(error) => Err(unavailable(format!(
                "updating execution {}: {error}",
                state.execution_id
            ))),
        }
    }

    /// Accepts an async call (see the module documentation).
    pub async fn submit(&self, request: &ExecutionRequest) -> SpearResult<ExecutionRecord> {
        let fingerprint = request_fingerprint(request);
        let execution_id = request
            .execution_id
            .clone()
            .unwrap_or_else(|| random_id("exec", rand::random()));
        if request.execution_id.is_some()
            && let Some((existing, _)) = self.state(&execution_id).await?
        {
            return join(existing, &request.task.record.task_id, &fingerprint);
        }
        let item = WorkItem {
            execution_id: execution_id.clone(),
            task_id: request.task.record.task_id.clone(),
            function_name: request.function_name.clone(),
            request: request.call.clone(),
            result_encoding: request.result_encoding,
            metadata: request.metadata.clone(),
            traceparent: request.traceparent.clone(),
            fingerprint: fingerprint.clone(),
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", execution_id.as_str());
        let payload = serde_json::to_vec(&item)
            .map_err(|error| SpearError::internal(format!("encoding work: {error}")))?;
        let state = ClusterExecution {
            execution_id: execution_id.clone(),
            task_id: request.task.record.task_id.clone(),
            task_name: request.task.record.task_name.clone(),
            function_name: request.function_name.clone(),
            fingerprint: fingerprint.clone(),
            result_encoding: request.result_encoding,
            status: ExecutionStatus::Pending,
            attempt: 0,
            max_retries: request.call.max_retries,
            owner: String::new(),
            accepted_by: self.node_id.clone(),
            submitted_at_ms: unix_ms(),
            started_at_us: None,
            completed_at_us: None,
            execution_time_ms: 0,
            error_code: None,
            error_message: String::new(),
            output: Bytes::new(),
            output_content_type: String::new(),
            output_truncated: false,
            instance_id: String::new(),
            cancel_requested: None,
        };
        // Both writes at once (each waits for JetStream's durable acknowledgement); the order
        // does not matter because a claim waits for the entry, and a failed publish withdraws
        // the entry again.
        let publish = async {
            self.jetstream
                .publish_with_headers(
                    self.work_subject(&request.task.record.task_name),
                    headers,
                    payload.into(),
                )
                .await?
                .await
        };
        let create = self
            .executions
            .create(execution_key(&execution_id), encode(&state)?);
        let (published, created) = tokio::join!(publish, create);
        if let Err(error) = published {
            if let Ok(revision) = &created {
                let _ = self
                    .executions
                    .delete_expect_revision(execution_key(&execution_id), Some(*revision))
                    .await;
            }
            return Err(unavailable(format!("queueing the execution: {error}")));
        }
        match created {
            Ok(_) => Ok(state.to_record()),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                // A twin acceptance wrote first: join it (or refuse other work under its id).
                match self.state(&execution_id).await? {
                    Some((existing, _)) => {
                        join(existing, &request.task.record.task_id, &fingerprint)
                    }
                    None => Ok(state.to_record()),
                }
            }
            Err(error) => Err(unavailable(format!(
                "recording execution {execution_id}: {error}"
            ))),
        }
    }

    pub async fn execution(&self, execution_id: &str) -> SpearResult<Option<ExecutionRecord>> {
        Ok(self
            .state(execution_id)
            .await?
            .map(|(state, _)| state.to_record()))
    }

    pub async fn wait(
        &self,
        execution_id: &str,
        budget: Duration,
    ) -> SpearResult<Option<ExecutionRecord>> {
        let deadline = tokio::time::Instant::now() + budget;
        loop {
            let current = self.state(execution_id).await?;
            match &current {
                Some((state, _)) if state.status.is_terminal() => {
                    return Ok(Some(state.to_record()));
                }
                None => return Ok(None),
                Some(_) if tokio::time::Instant::now() >= deadline => {
                    return Ok(current.map(|(state, _)| state.to_record()));
                }
                Some(_) => {}
            }
            let mut watch = match self.executions.watch(execution_key(execution_id)).await {
                Ok(watch) => watch,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let ended = tokio::time::timeout_at(deadline, async {
                while let Some(Ok(entry)) = watch.next().await {
                    if let Ok(state) = serde_json::from_slice::<ClusterExecution>(&entry.value)
                        && state.status.is_terminal()
                    {
                        return;
                    }
                }
            })
            .await;
            if ended.is_err() {
                return Ok(self
                    .state(execution_id)
                    .await?
                    .map(|(state, _)| state.to_record()));
            }
        }
    }

    /// Cancels a cluster execution (see the module documentation); `None` if unknown.
    pub async fn cancel(
        &self,
        execution_id: &str,
        reason: &str,
    ) -> SpearResult<Option<CancelResult>> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some((mut state, revision)) = self.state(execution_id).await? else {
                return Ok(None);
            };
            if state.status.is_terminal() {
                return Ok(Some(CancelResult::AlreadyTerminal(state.to_record())));
            }
            if state.status == ExecutionStatus::Pending {
                state.end(
                    ExecutionStatus::Cancelled,
                    Some(ErrorCode::Cancelled),
                    reason.to_owned(),
                );
                if self.swap(&state, revision).await?.is_some() {
                    return Ok(Some(CancelResult::Cancelled(state.to_record())));
                }
                continue;
            }
            state.cancel_requested = Some(reason.to_owned());
            if self.swap(&state, revision).await?.is_none() {
                continue;
            }
            let _ = self
                .client
                .publish(
                    self.cancel_subject(&state.owner),
                    Bytes::from(execution_id.to_owned()),
                )
                .await;
            // The owner stops it and writes the end; wait a little for that.
            let ended = self.wait(execution_id, Duration::from_secs(10)).await?;
            return Ok(ended.map(|record| {
                if record.status == ExecutionStatus::Cancelled {
                    CancelResult::Cancelled(record)
                } else {
                    CancelResult::AlreadyTerminal(record)
                }
            }));
        }
        Err(unavailable(format!(
            "execution {execution_id} kept changing while cancelling; retry"
        )))
    }

    /// Listens for cancel requests addressed to this node.
    pub async fn serve_cancels(self: Arc<Self>, node: Weak<Node>) {
        let mut subscription = match self
            .client
            .subscribe(self.cancel_subject(&self.node_id))
            .await
        {
            Ok(subscription) => subscription,
            Err(error) => {
                tracing::error!("cluster cancel subscription: {error}");
                return;
            }
        };
        while let Some(message) = subscription.next().await {
            let Some(node) = node.upgrade() else {
                return;
            };
            let execution_id = String::from_utf8_lossy(&message.payload).into_owned();
            let reason = match self.state(&execution_id).await {
                Ok(Some((state, _))) => state
                    .cancel_requested
                    .unwrap_or_else(|| "cancelled by request".into()),
                _ => "cancelled by request".into(),
            };
            if let Err(error) = node.manager.cancel(&execution_id, &reason).await {
                tracing::debug!(execution_id, "cluster cancel: {}", error.message);
            }
        }
    }

    /// Keeps one pull loop per task this node has, until the node is gone.
    pub async fn supervise(self: Arc<Self>, node: Weak<Node>, interval: Duration) {
        loop {
            let Some(strong) = node.upgrade() else {
                return;
            };
            if self.stopped.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            let tasks: HashMap<String, String> = strong
                .registry
                .all()
                .iter()
                .map(|task| (task.record.task_id.clone(), task.record.task_name.clone()))
                .collect();
            drop(strong);
            {
                let mut pullers = self.pullers.lock();
                pullers.retain(|task_id, puller| {
                    let keep = tasks.contains_key(task_id) && !puller.is_finished();
                    if !keep {
                        puller.abort();
                    }
                    keep
                });
                for (task_id, task_name) in tasks {
                    if pullers.contains_key(&task_id) {
                        continue;
                    }
                    let puller =
                        tokio::spawn(self.clone().pull(node.clone(), task_id.clone(), task_name));
                    pullers.insert(task_id, puller);
                }
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Stops pulling work (graceful leave); what runs finishes.
    pub fn stop_pulling(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for (_, puller) in self.pullers.lock().drain() {
            puller.abort();
        }
    }

    /// Pulls the task's work one message at a time, only while this node could start it now.
    async fn pull(self: Arc<Self>, node: Weak<Node>, task_id: String, task_name: String) {
        let key = task_key(&task_name);
        let consumer: jetstream::consumer::Consumer<pull::Config> = loop {
            match self
                .stream
                .get_or_create_consumer(
                    &format!("work_{key}"),
                    pull::Config {
                        durable_name: Some(format!("work_{key}")),
                        filter_subject: self.work_subject(&task_name),
                        ack_wait: self.ack_wait,
                        max_deliver: -1,
                        max_ack_pending: 100_000,
                        ..Default::default()
                    },
                )
                .await
            {
                Ok(consumer) => break consumer,
                Err(error) => {
                    tracing::warn!(task_name, "cluster work consumer: {error}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        loop {
            // Only pull what this node can start now.
            loop {
                let Some(node) = node.upgrade() else {
                    return;
                };
                let Some(task) = node.registry.resolve(&task_id) else {
                    return;
                };
                if node.manager.is_shutting_down() {
                    return;
                }
                if node.manager.dispatcher().can_grant_now(&task.pool, false) {
                    break;
                }
                drop(node);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let batch = consumer
                .batch()
                .max_messages(1)
                .expires(Duration::from_secs(1))
                .messages()
                .await;
            let mut batch = match batch {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::debug!(task_name, "cluster work pull: {error}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            while let Some(message) = batch.next().await {
                let message = match message {
                    Ok(message) => message,
                    Err(error) => {
                        tracing::debug!(task_name, "cluster work pull: {error}");
                        break;
                    }
                };
                let (started_sender, started) = tokio::sync::oneshot::channel();
                tokio::spawn(self.clone().handle(node.clone(), message, started_sender));
                // The next pull waits until this execution's guest starts (the sender fires
                // then, or is dropped when the attempt ends without starting), so the capacity
                // check above sees the instance it holds.
                let _ = tokio::time::timeout(Duration::from_secs(5), started).await;
            }
        }
    }

    /// Claims, runs, and settles one delivered execution.
    async fn handle(
        self: Arc<Self>,
        node: Weak<Node>,
        message: jetstream::Message,
        started: tokio::sync::oneshot::Sender<()>,
    ) {
        let item: WorkItem = match serde_json::from_slice(&message.payload) {
            Ok(item) => item,
            Err(error) => {
                tracing::error!("dropping a work message that is not JSON: {error}");
                let _ = message.ack().await;
                return;
            }
        };
        let delivered = message.info().map(|info| info.delivered).unwrap_or(1);
        let Some(node) = node.upgrade() else {
            return;
        };
        let claim = match self.claim(&node, &item, delivered).await {
            Ok(claim) => claim,
            Err(error) => {
                tracing::debug!(execution_id = %item.execution_id, "claiming: {}", error.message);
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_millis(500))))
                    .await;
                return;
            }
        };
        let (attempt, mut revision) = match claim {
            Claim::Drop => {
                let _ = message.double_ack().await;
                return;
            }
            Claim::Ignore => return,
            Claim::Run { attempt, revision } => (attempt, revision),
        };
        let Some(task) = node.registry.resolve(&item.task_id) else {
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
            return;
        };
        let target = match task.resolve_call_target(&item.function_name, &item.metadata) {
            Ok(target) => target,
            Err(error) => {
                self.settle_refusal(&item, revision, error.message).await;
                let _ = message.double_ack().await;
                return;
            }
        };
        let request = ExecutionRequest {
            task,
            function_name: item.function_name.clone(),
            target,
            call: item.request.clone(),
            result_encoding: item.result_encoding,
            execution_id: Some(item.execution_id.clone()),
            mode: ExecutionMode::Async,
            metadata: item.metadata.clone(),
            priority: item
                .metadata
                .get(Priority::METADATA_KEY)
                .and_then(|text| Priority::parse(text).ok())
                .unwrap_or_default(),
            force_new_instance: false,
            cold_start: false,
            stream: None,
            traceparent: item.traceparent.clone(),
            forwarded_from: None,
            on_start: Some(started),
        };
        let manager = node.manager.clone();
        drop(node);
        let run = manager.run_cluster_attempt(request, attempt);
        tokio::pin!(run);
        let mut progress = tokio::time::interval(self.ack_wait / 3);
        progress.tick().await;
        let outcome = loop {
            tokio::select! {
                outcome = &mut run => break outcome,
                _ = progress.tick() => {
                    let _ = message.ack_with(AckKind::Progress).await;
                }
            }
        };
        let record = match outcome {
            Ok(Some(record)) => record,
            Ok(None) => {
                // This node is shutting down before the attempt ended: hand it back.
                self.release(&item.execution_id, revision).await;
                let _ = message.ack_with(AckKind::Nak(None)).await;
                return;
            }
            Err(error) => {
                tracing::warn!(execution_id = %item.execution_id, "{}", error.message);
                return;
            }
        };
        // The terminal write, fenced by the claim's revision (a cancel request in between
        // changes the revision but not the owner or attempt). While NATS is unreachable the
        // write is retried; if the queue redelivers meanwhile, the next claim supersedes this
        // attempt and the write is refused.
        let mut unreachable_since = None;
        for _ in 0..MAX_CAS_ATTEMPTS * 64 {
            let (mut state, current) = match self.state(&item.execution_id).await {
                Ok(Some(found)) => found,
                Ok(None) => return,
                Err(error) => {
                    let since = *unreachable_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() > TERMINAL_WRITE_PATIENCE {
                        tracing::error!(execution_id = %item.execution_id, "giving up writing the result: {}", error.message);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            };
            if state.owner != self.node_id || state.attempt != attempt || state.status.is_terminal()
            {
                tracing::warn!(
                    execution_id = %item.execution_id,
                    attempt,
                    owner = %state.owner,
                    "the cluster gave this execution to another attempt; this attempt's result \
                     is discarded"
                );
                return;
            }
            revision = current;
            state.status = record.status;
            state.error_code = record.error_code;
            state.error_message = record.error_message.clone();
            state.started_at_us = record.started_at_us;
            state.completed_at_us = record.completed_at_us;
            state.execution_time_ms = record.execution_time_ms;
            state.instance_id = record.instance_id.clone();
            state.output_content_type = record.output_content_type.clone();
            state.output_truncated = record.output.len() > OUTPUT_CAP_BYTES;
            state.output = record
                .output
                .slice(..record.output.len().min(OUTPUT_CAP_BYTES));
            match self.swap(&state, revision).await {
                Ok(Some(_)) => {
                    let _ = message.double_ack().await;
                    return;
                }
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(execution_id = %item.execution_id, "writing the result: {}; retrying", error.message);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// The claim rules (see the module documentation).
    async fn claim(&self, node: &Node, item: &WorkItem, delivered: i64) -> SpearResult<Claim> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some((mut state, revision)) = self.state(&item.execution_id).await? else {
                // Withdrawn (its acceptance failed and the client was told so), or the
                // acceptance's create is still racing this delivery: try again shortly, and
                // drop it once it is clearly never coming.
                let withdrawn = self
                    .executions
                    .entry(execution_key(&item.execution_id))
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|entry| entry.operation != kv::Operation::Put);
                if withdrawn || delivered >= ORPHAN_DELIVERIES {
                    tracing::warn!(
                        execution_id = %item.execution_id,
                        "dropping work whose acceptance was withdrawn or never recorded"
                    );
                    return Ok(Claim::Drop);
                }
                return Err(unavailable(format!(
                    "execution {} has no state yet",
                    item.execution_id
                )));
            };
            if state.status.is_terminal() || state.fingerprint != item.fingerprint {
                return Ok(Claim::Drop);
            }
            let attempt = match state.status {
                ExecutionStatus::Pending => state.attempt + 1,
                _ if state.owner == self.node_id && node.manager.is_live(&state.execution_id) => {
                    return Ok(Claim::Ignore);
                }
                // RUNNING elsewhere and delivered only once: a duplicate message.
                _ if delivered <= 1 && state.owner != self.node_id => return Ok(Claim::Drop),
                // Redelivered: the owner did not acknowledge in time; it is lost.
                _ => state.attempt + 1,
            };
            if let Some(reason) = state.cancel_requested.clone() {
                state.end(
                    ExecutionStatus::Cancelled,
                    Some(ErrorCode::Cancelled),
                    reason,
                );
            } else if attempt > state.max_retries + 1 {
                let lost = state.owner.clone();
                state.end(
                    ExecutionStatus::Failed,
                    Some(ErrorCode::NodeLost),
                    format!(
                        "node {lost} was lost during attempt {} and no retries remain \
                         (context.max_retries = {})",
                        state.attempt, state.max_retries
                    ),
                );
            } else {
                state.status = ExecutionStatus::Running;
                state.owner = self.node_id.clone();
                state.attempt = attempt;
                state.started_at_us = Some(unix_us());
            }
            match self.swap(&state, revision).await? {
                Some(revision) if state.status == ExecutionStatus::Running => {
                    return Ok(Claim::Run { attempt, revision });
                }
                Some(_) => return Ok(Claim::Drop),
                None => continue,
            }
        }
        Err(unavailable(format!(
            "execution {} kept changing while claiming",
            item.execution_id
        )))
    }

    /// An attempt that could not start (the function no longer resolves): FAILED.
    async fn settle_refusal(&self, item: &WorkItem, revision: u64, message: String) {
        if let Ok(Some((mut state, current))) = self.state(&item.execution_id).await
            && current == revision
        {
            state.end(
                ExecutionStatus::Failed,
                Some(ErrorCode::InitFailed),
                message,
            );
            let _ = self.swap(&state, revision).await;
        }
    }

    /// Hands a claimed execution back (PENDING, no owner) when this node stops first.
    async fn release(&self, execution_id: &str, revision: u64) {
        if let Ok(Some((mut state, current))) = self.state(execution_id).await
            && current == revision
            && state.owner == self.node_id
        {
            state.status = ExecutionStatus::Pending;
            state.owner.clear();
            let _ = self.swap(&state, revision).await;
        }
    }
}

/// A repeated client execution id: the same work joins the execution, other work is refused.
fn join(
    existing: ClusterExecution,
    task_id: &str,
    fingerprint: &str,
) -> SpearResult<ExecutionRecord> {
    if existing.task_id != task_id || existing.fingerprint != fingerprint {
        return Err(SpearError::already_exists(format!(
            "context.execution_id {:?} already names an execution with a different task or \
             input",
            existing.execution_id
        )));
    }
    Ok(existing.to_record())
}

fn encode(state: &ClusterExecution) -> SpearResult<Bytes> {
    serde_json::to_vec(state)
        .map(Bytes::from)
        .map_err(|error| SpearError::internal(format!("encoding an execution: {error}")))
}

fn unavailable(message: String) -> SpearError {
    SpearError::unavailable(message)
}
