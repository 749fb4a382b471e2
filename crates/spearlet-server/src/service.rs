//! `spearlet.FunctionService` over gRPC: decode the request, call the registry or the
//! TaskExecutionManager, encode the answer. No business rules live here beyond request
//! validation; errors become statuses in `errors.rs`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use spearlet_core::{
    ExecutionMode, ExecutionRecord, ExecutionStatus, Priority, SpearError, SpearResult,
    StoredRequest,
};
use spearlet_proto as proto;
use spearlet_proto::function_service_server::FunctionService;
use spearlet_store::ExecutionQuery;
use tonic::{Request, Response, Status};

use crate::auth::{Principal, Scope};
use crate::errors::to_status;
use crate::manager::{CancelOnDrop, CancelResult, ExecutionRequest, StreamSink, wait_finished};
use crate::node::Node;
use crate::registry::{LoadedTask, RegistrationOutcome, TaskRegistration};
use crate::stats;
use crate::wire;

/// Page size when a request gives none, and the most a request may ask for.
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;
const DEFAULT_TASK_EXECUTION_LIMIT: usize = 10;

#[derive(Clone)]
pub struct FunctionServiceHandler {
    node: Arc<Node>,
}

impl FunctionServiceHandler {
    pub fn new(node: Arc<Node>) -> FunctionServiceHandler {
        FunctionServiceHandler { node }
    }

    /// Who sent the request (see `auth`); every RPC authorizes against it.
    fn principal<T>(&self, request: &Request<T>) -> Result<Arc<Principal>, Status> {
        self.node
            .access
            .principal_of(request.extensions())
            .map_err(to_status)
    }

    async fn invoke(
        &self,
        request: proto::InvokeFunctionRequest,
        grpc_deadline: Option<Duration>,
        traceparent: Option<String>,
        forwarded_from: Option<String>,
        principal: &Principal,
    ) -> SpearResult<proto::InvokeFunctionResponse> {
        let mode = match request.execution_mode() {
            proto::ExecutionMode::Unknown | proto::ExecutionMode::Sync => ExecutionMode::Sync,
            proto::ExecutionMode::Async => ExecutionMode::Async,
            proto::ExecutionMode::Stream => {
                return Err(SpearError::invalid_argument(
                    "execution_mode EXECUTION_MODE_STREAM is served by the StreamFunction RPC, \
                     not InvokeFunction",
                ));
            }
        };
        let execution_request = self
            .execution_request(&request, mode, None, traceparent, forwarded_from, principal)
            .await?;
        if mode == ExecutionMode::Async {
            return self
                .invoke_async(execution_request, request.wait, grpc_deadline)
                .await;
        }
        if let Some(cluster) = self.spill_target(&execution_request)
            && let Some(answer) = cluster
                .forward_invoke(
                    forwardable(&request, &execution_request),
                    forwarding(&execution_request, grpc_deadline, principal),
                )
                .await
        {
            return answer;
        }
        let record = self.node.manager.execute(execution_request).await?;
        Ok(final_response(&record))
    }

    /// Everything before an execution exists: input, task, export. Refusals that need no live
    /// state happen here; idempotency and capacity are the manager's admission.
    async fn execution_request(
        &self,
        request: &proto::InvokeFunctionRequest,
        mode: ExecutionMode,
        stream: Option<StreamSink>,
        traceparent: Option<String>,
        forwarded_from: Option<String>,
        principal: &Principal,
    ) -> SpearResult<ExecutionRequest> {
        let (input, result_encoding) = wire::decode_input(request)?;
        let (task, cold_start) = self.resolve_task_for_invoke(request, principal).await?;
        let metadata = wire::to_btree(&request.invocation_metadata);
        let target = task.resolve_call_target(&request.function_name, &metadata)?;
        let priority = match request.invocation_metadata.get(Priority::METADATA_KEY) {
            Some(text) => Priority::parse(text)?,
            None => Priority::default(),
        };
        let context = request.context.clone().unwrap_or_default();
        let execution_id = (!context.execution_id.is_empty()).then(|| context.execution_id.clone());
        Ok(ExecutionRequest {
            task,
            function_name: request.function_name.clone(),
            target,
            call: StoredRequest {
                input,
                session_id: context.session_id.clone(),
                environment: wire::to_btree(&context.environment),
                headers: wire::to_btree(&context.headers),
                requested_timeout_ms: context.timeout_ms,
                // Negative means none; the manager caps it by the node's limit.
                max_retries: u32::try_from(context.max_retries).unwrap_or(0),
            },
            result_encoding,
            execution_id,
            mode,
            metadata,
            priority,
            force_new_instance: request.force_new_instance,
            cold_start,
            stream,
            traceparent,
            forwarded_from,
            on_start: None,
        })
    }

    /// Cluster mode: the cluster, when this sync or stream call should run on a peer — the
    /// local dispatcher cannot grant it an instance now, and the call was not forwarded here
    /// already (at most one hop) and names no execution id of its own (which must stay on the
    /// node that holds it). A node with spare capacity answers `None` after one dispatcher
    /// check and pays nothing else.
    fn spill_target(
        &self,
        request: &ExecutionRequest,
    ) -> Option<&Arc<dyn crate::cluster_link::ClusterLink>> {
        let cluster = self.node.cluster.as_ref()?;
        let spill = request.forwarded_from.is_none()
            && request.execution_id.is_none()
            && !self
                .node
                .manager
                .dispatcher()
                .can_grant_now(&request.task.pool, request.force_new_instance);
        spill.then_some(cluster)
    }

    /// ASYNC: durable acceptance, answered at once, or after waiting when `wait` is set.
    async fn invoke_async(
        &self,
        request: ExecutionRequest,
        wait: bool,
        grpc_deadline: Option<Duration>,
    ) -> SpearResult<proto::InvokeFunctionResponse> {
        if let Some(cluster) = &self.node.cluster {
            return self
                .invoke_async_in_cluster(cluster.as_ref(), request, wait, grpc_deadline)
                .await;
        }
        let task = request.task.clone();
        let submitted = self.node.manager.submit(request).await?;
        if wait {
            let budget = self.wait_budget(grpc_deadline);
            let mut finished = submitted.finished.clone();
            if let Ok(Ok(record)) = tokio::time::timeout(budget, wait_finished(&mut finished)).await
            {
                return Ok(final_response(&record));
            }
            let current = self
                .node
                .manager
                .store()
                .execution(&submitted.record.execution_id)?
                .unwrap_or(submitted.record);
            return Ok(still_running_response(
                &current,
                self.node.manager.estimate_completion_ms(&task),
                budget,
            ));
        }
        if submitted.record.status.is_terminal() {
            return Ok(repeat_of_ended_response(&submitted.record));
        }
        Ok(accepted_response(
            &submitted.record,
            self.node.manager.estimate_completion_ms(&task),
        ))
    }

    /// ASYNC in cluster mode: the cluster's durable queue accepts it, any node runs it.
    async fn invoke_async_in_cluster(
        &self,
        cluster: &dyn crate::cluster_link::ClusterLink,
        request: ExecutionRequest,
        wait: bool,
        grpc_deadline: Option<Duration>,
    ) -> SpearResult<proto::InvokeFunctionResponse> {
        let accepted = cluster.submit_async(&request).await?;
        let estimate = self.node.manager.estimate_completion_ms(&request.task);
        if accepted.status.is_terminal() {
            return Ok(repeat_of_ended_response(&accepted));
        }
        if !wait {
            return Ok(accepted_response(&accepted, estimate));
        }
        let budget = self.wait_budget(grpc_deadline);
        let current = cluster
            .wait_execution(accepted.execution_id.clone(), budget)
            .await?
            .unwrap_or(accepted);
        if current.status.is_terminal() {
            return Ok(final_response(&current));
        }
        Ok(still_running_response(&current, estimate, budget))
    }

    /// How long an async call with `wait` may block: `max_wait_ms`, ending a little before the
    /// client's deadline so it gets the state, not DEADLINE_EXCEEDED.
    fn wait_budget(&self, grpc_deadline: Option<Duration>) -> Duration {
        let budget = Duration::from_millis(self.node.config.max_wait_ms);
        match grpc_deadline {
            Some(deadline) => budget.min(deadline.saturating_sub(Duration::from_millis(50))),
            None => budget,
        }
    }

    /// StreamFunction: RUNNING with the id, then stdout chunks as written, then the final
    /// status. Dropping the stream cancels the execution.
    async fn stream(
        &self,
        request: proto::InvokeFunctionRequest,
        traceparent: Option<String>,
        forwarded_from: Option<String>,
        principal: &Principal,
    ) -> SpearResult<ResponseStream> {
        let (chunk_sender, mut chunk_receiver) = tokio::sync::mpsc::unbounded_channel();
        let (started_sender, started_receiver) = tokio::sync::oneshot::channel();
        // An HTTP handler's response head (other runtimes drop the sender unused).
        let (head_sender, head_receiver) = tokio::sync::oneshot::channel();
        let mut execution_request = self
            .execution_request(
                &request,
                ExecutionMode::Stream,
                Some(StreamSink {
                    chunks: chunk_sender,
                    http_response_head: Some(head_sender),
                }),
                traceparent,
                forwarded_from,
                principal,
            )
            .await?;
        execution_request.on_start = Some(started_sender);
        if let Some(cluster) = self.spill_target(&execution_request)
            && let Some(relayed) = cluster
                .forward_stream(
                    forwardable(&request, &execution_request),
                    forwarding(&execution_request, None, principal),
                )
                .await
        {
            return relayed;
        }
        let submitted = self.node.manager.submit(execution_request).await?;
        let (message_sender, message_receiver) =
            tokio::sync::mpsc::channel::<Result<proto::StreamExecutionResult, Status>>(64);
        let execution_id = submitted.record.execution_id.clone();
        let existing = submitted.cancellation.is_none();
        let mut guard = CancelOnDrop(submitted.cancellation);
        let mut finished = submitted.finished;
        tokio::spawn(async move {
            // A repeat of an existing execution has no live output: it gets the recorded one.
            // Whenever the client leaves (the receiver is dropped), this task returns and the
            // guard cancels the execution.
            if !existing {
                tokio::select! {
                    _ = started_receiver => {}
                    () = message_sender.closed() => return,
                }
            }
            let running = stream_message(&execution_id, ExecutionStatus::Running, None, false, "");
            if message_sender.send(Ok(running)).await.is_err() {
                return;
            }
            let mut head_receiver = Some(head_receiver);
            loop {
                // The head is sent before the first body chunk, so preferring it keeps the order.
                let chunk = tokio::select! {
                    biased;
                    head = async { head_receiver.as_mut().expect("guarded").await },
                        if head_receiver.is_some() =>
                    {
                        head_receiver = None;
                        let Ok(head) = head else { continue };
                        let mut message =
                            stream_message(&execution_id, ExecutionStatus::Running, None, false, "");
                        message.metadata = wire::http_response_head_metadata(&head);
                        if message_sender.send(Ok(message)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    chunk = chunk_receiver.recv() => chunk,
                    () = message_sender.closed() => return,
                };
                let Some(chunk) = chunk else {
                    break;
                };
                let message = stream_message(
                    &execution_id,
                    ExecutionStatus::Running,
                    Some(chunk),
                    false,
                    "",
                );
                if message_sender.send(Ok(message)).await.is_err() {
                    return;
                }
            }
            let finished_record = tokio::select! {
                record = wait_finished(&mut finished) => record,
                () = message_sender.closed() => return,
            };
            let final_message = match finished_record {
                Ok(record) => {
                    if existing && !record.output.is_empty() {
                        let replay = stream_message(
                            &execution_id,
                            ExecutionStatus::Running,
                            Some(record.output.clone()),
                            false,
                            "",
                        );
                        let _ = message_sender.send(Ok(replay)).await;
                    }
                    let mut message = stream_message(
                        &execution_id,
                        record.status,
                        None,
                        true,
                        &record.error_message,
                    );
                    if let Some(code) = record.error_code {
                        message
                            .metadata
                            .insert("error_code".into(), code.as_str().into());
                    }
                    Ok(message)
                }
                Err(error) => Err(to_status(error)),
            };
            let _ = message_sender.send(final_message).await;
            guard.disarm();
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            message_receiver,
        )))
    }
}

/// The request a peer receives: the task by its cluster-wide id (a peer never registers it
/// again, nor reads a `file://` location of this node's).
fn forwardable(
    request: &proto::InvokeFunctionRequest,
    execution: &ExecutionRequest,
) -> proto::InvokeFunctionRequest {
    proto::InvokeFunctionRequest {
        invocation_type: proto::InvocationType::ExistingTask as i32,
        task_id: execution.task.record.task_id.clone(),
        artifact_spec: None,
        create_if_not_exists: false,
        ..request.clone()
    }
}

/// What travels with a forwarded call: the caller's identity, trace and deadline.
fn forwarding(
    execution: &ExecutionRequest,
    deadline: Option<Duration>,
    principal: &Principal,
) -> crate::cluster_link::Forwarding {
    crate::cluster_link::Forwarding {
        task_id: execution.task.record.task_id.clone(),
        authorization: principal.forwarded_authorization(),
        traceparent: execution.traceparent.clone(),
        deadline,
    }
}

/// The answer to an idempotent repeat of an async execution that already ended.
fn repeat_of_ended_response(record: &ExecutionRecord) -> proto::InvokeFunctionResponse {
    let mut response = final_response(record);
    response.success = true;
    response.status_endpoint = status_endpoint(&record.execution_id);
    response
}

/// The answer to an async call with `wait` whose execution had not ended within `budget`.
fn still_running_response(
    current: &ExecutionRecord,
    estimated_completion_ms: i64,
    budget: Duration,
) -> proto::InvokeFunctionResponse {
    let mut response = accepted_response(current, estimated_completion_ms);
    response.success = false;
    response.message = format!(
        "execution {} is still {} after waiting {} ms; poll it with GetExecutionStatus",
        current.execution_id,
        current.status.as_str(),
        budget.as_millis()
    );
    response
}

fn status_endpoint(execution_id: &str) -> String {
    format!("/v1/executions/{execution_id}")
}

fn accepted_response(
    record: &ExecutionRecord,
    estimated_completion_ms: i64,
) -> proto::InvokeFunctionResponse {
    proto::InvokeFunctionResponse {
        success: true,
        message: format!("execution accepted ({})", record.status.as_str()),
        execution_id: record.execution_id.clone(),
        task_id: record.task_id.clone(),
        instance_id: record.instance_id.clone(),
        result: Some(wire::execution_result(record, false)),
        status_endpoint: status_endpoint(&record.execution_id),
        estimated_completion_ms,
    }
}

fn stream_message(
    execution_id: &str,
    status: ExecutionStatus,
    chunk: Option<Bytes>,
    is_final: bool,
    error_message: &str,
) -> proto::StreamExecutionResult {
    proto::StreamExecutionResult {
        execution_id: execution_id.to_owned(),
        status: wire::status_to_wire(status) as i32,
        chunk_data: chunk
            .as_ref()
            .map(|bytes| spearlet_proto::well_known::bytes_any(bytes.to_vec())),
        is_final,
        error_message: error_message.to_owned(),
        metadata: Default::default(),
        data: chunk.map(|bytes| bytes.to_vec()).unwrap_or_default(),
    }
}

/// The answer for an execution that has ended (or the current state of one that has not).
fn final_response(record: &ExecutionRecord) -> proto::InvokeFunctionResponse {
    let success = record.status == ExecutionStatus::Completed;
    let message = if success {
        "execution completed".to_owned()
    } else {
        format!(
            "execution {}: {}",
            record.status.as_str(),
            record.error_message
        )
    };
    proto::InvokeFunctionResponse {
        success,
        message,
        execution_id: record.execution_id.clone(),
        task_id: record.task_id.clone(),
        instance_id: record.instance_id.clone(),
        result: Some(wire::execution_result(record, true)),
        status_endpoint: String::new(),
        estimated_completion_ms: 0,
    }
}

impl FunctionServiceHandler {
    /// Finds or registers the task an invocation names; the bool says whether this request
    /// loaded it (a cold start).
    async fn resolve_task_for_invoke(
        &self,
        request: &proto::InvokeFunctionRequest,
        principal: &Principal,
    ) -> SpearResult<(Arc<LoadedTask>, bool)> {
        match request.invocation_type() {
            proto::InvocationType::Unknown => Err(SpearError::invalid_argument(
                "invocation_type must be INVOCATION_TYPE_NEW_TASK or \
                 INVOCATION_TYPE_EXISTING_TASK",
            )),
            proto::InvocationType::NewTask => {
                if request.task_name.is_empty() {
                    return Err(SpearError::invalid_argument(
                        "task_name is required for INVOCATION_TYPE_NEW_TASK",
                    ));
                }
                let Some(artifact_spec) = &request.artifact_spec else {
                    return Err(SpearError::invalid_argument(
                        "artifact_spec is required for INVOCATION_TYPE_NEW_TASK",
                    ));
                };
                principal.require_task(Scope::Admin, &request.task_name)?;
                let (task, outcome) = self
                    .node
                    .registry
                    .register(registration(
                        None,
                        &request.task_name,
                        &request.function_name,
                        &request.task_description,
                        artifact_spec,
                    ))
                    .await?;
                Ok((task, outcome != RegistrationOutcome::Unchanged))
            }
            proto::InvocationType::ExistingTask => {
                if request.task_id.is_empty() {
                    return Err(SpearError::invalid_argument(
                        "task_id is required for INVOCATION_TYPE_EXISTING_TASK",
                    ));
                }
                if let Some(task) = self.node.registry.resolve(&request.task_id) {
                    principal.require_task(Scope::Invoke, &task.record.task_name)?;
                    return Ok((task, false));
                }
                match (&request.artifact_spec, request.create_if_not_exists) {
                    (Some(artifact_spec), true) => {
                        let task_name = if request.task_name.is_empty() {
                            &request.task_id
                        } else {
                            &request.task_name
                        };
                        principal.require_task(Scope::Admin, task_name)?;
                        let (task, _) = self
                            .node
                            .registry
                            .register(registration(
                                Some(request.task_id.clone()),
                                task_name,
                                &request.function_name,
                                &request.task_description,
                                artifact_spec,
                            ))
                            .await?;
                        Ok((task, true))
                    }
                    _ => Err(SpearError::not_found(format!(
                        "task_id {:?} is unknown (set create_if_not_exists with an artifact_spec \
                         to create it)",
                        request.task_id
                    ))),
                }
            }
        }
    }

    /// A task as ListTasks and GetTask show it: with details when asked for (see
    /// `wire::task_details`).
    fn task_info(&self, task: &LoadedTask, include_details: bool) -> proto::TaskInfo {
        if !include_details {
            return wire::task_summary(task);
        }
        let pool = self.node.manager.dispatcher().pool_snapshot(&task.pool);
        wire::task_details(task, pool.as_ref())
    }

    async fn cancel(
        &self,
        request: proto::CancelExecutionRequest,
        principal: &Principal,
    ) -> SpearResult<proto::CancelExecutionResponse> {
        if request.execution_id.is_empty() {
            return Err(SpearError::invalid_argument("execution_id is required"));
        }
        principal.require(Scope::Invoke)?;
        if principal.is_limited_to_tasks()
            && let Some(record) = self.node.manager.store().execution(&request.execution_id)?
        {
            principal.require_task(Scope::Invoke, &record.task_name)?;
        }
        let reason = if request.reason.is_empty() {
            "cancelled by request".to_owned()
        } else {
            request.reason.clone()
        };
        let in_cluster = match &self.node.cluster {
            Some(cluster) => {
                cluster
                    .cancel_execution(request.execution_id.clone(), reason.clone())
                    .await?
            }
            None => None,
        };
        let result = match in_cluster {
            Some(result) => result,
            None => {
                self.node
                    .manager
                    .cancel(&request.execution_id, &reason)
                    .await?
            }
        };
        Ok(match result {
            CancelResult::Cancelled(record) => proto::CancelExecutionResponse {
                success: true,
                message: format!("execution {} cancelled: {reason}", record.execution_id),
                final_status: wire::status_to_wire(record.status) as i32,
            },
            CancelResult::AlreadyTerminal(record) => proto::CancelExecutionResponse {
                success: false,
                message: format!(
                    "execution {} had already ended with status {}",
                    record.execution_id,
                    record.status.as_str()
                ),
                final_status: wire::status_to_wire(record.status) as i32,
            },
        })
    }

    fn list_tasks(
        &self,
        request: &proto::ListTasksRequest,
        principal: &Principal,
    ) -> SpearResult<proto::ListTasksResponse> {
        principal.require(Scope::Read)?;
        let limit = page_size("limit", request.limit, DEFAULT_PAGE_SIZE)?;
        let (tasks, has_more) =
            self.node
                .registry
                .list(&request.prefix, &request.start_after, limit);
        let next_start_after = if has_more {
            tasks
                .last()
                .map(|task| task.record.task_name.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(proto::ListTasksResponse {
            tasks: tasks
                .iter()
                .filter(|task| principal.allows_task(&task.record.task_name))
                .map(|task| self.task_info(task, request.include_details))
                .collect(),
            has_more,
            next_start_after,
        })
    }

    fn get_task(
        &self,
        request: &proto::GetTaskRequest,
        principal: &Principal,
    ) -> SpearResult<proto::GetTaskResponse> {
        principal.require(Scope::Read)?;
        let Some(task) = self.node.registry.resolve(&request.task_id) else {
            return Ok(proto::GetTaskResponse {
                found: false,
                task: None,
                executions: vec![],
                message: format!("task_id {:?} is unknown", request.task_id),
            });
        };
        principal.require_task(Scope::Read, &task.record.task_name)?;
        let executions = if request.include_executions {
            let limit = page_size(
                "execution_limit",
                request.execution_limit,
                DEFAULT_TASK_EXECUTION_LIMIT,
            )?;
            self.node
                .manager
                .store()
                .list_executions(&ExecutionQuery {
                    task_id: Some(task.record.task_id.clone()),
                    limit,
                    newest: true,
                    ..ExecutionQuery::default()
                })?
                .executions
                .iter()
                .map(wire::execution_info)
                .collect()
        } else {
            vec![]
        };
        Ok(proto::GetTaskResponse {
            found: true,
            task: Some(self.task_info(&task, true)),
            executions,
            message: String::new(),
        })
    }

    async fn delete_task(
        &self,
        request: &proto::DeleteTaskRequest,
        principal: &Principal,
    ) -> SpearResult<proto::DeleteTaskResponse> {
        if request.task_id.is_empty() {
            return Err(SpearError::invalid_argument("task_id is required"));
        }
        principal.require(Scope::Admin)?;
        let Some(task) = self.node.registry.resolve(&request.task_id) else {
            return Ok(proto::DeleteTaskResponse {
                success: true,
                message: format!(
                    "task_id {:?} does not exist; nothing to delete",
                    request.task_id
                ),
                deleted: false,
                cleaned_executions: 0,
            });
        };
        principal.require_task(Scope::Admin, &task.record.task_name)?;
        let task_id = task.record.task_id.clone();
        let live = self.node.manager.live_executions_of(&task_id);
        if !live.is_empty() && !request.force {
            return Err(SpearError::failed_precondition(format!(
                "task {task_id:?} has {} pending or running executions; wait for them or set \
                 force to cancel them",
                live.len()
            )));
        }
        for execution_id in &live {
            let _ = self
                .node
                .manager
                .cancel(execution_id, "the task was deleted")
                .await;
        }
        self.node.registry.remove(&task_id).await?;
        let cleaned_executions = if request.cleanup_executions {
            self.node
                .manager
                .store()
                .delete_executions_of_task(&task_id)
                .await?
        } else {
            0
        };
        Ok(proto::DeleteTaskResponse {
            success: true,
            message: format!(
                "task {task_id:?} deleted (cancelled {} executions, removed {cleaned_executions} \
                 records)",
                live.len()
            ),
            deleted: true,
            cleaned_executions: clamp_i32(cleaned_executions as u64),
        })
    }

    fn list_executions(
        &self,
        request: &proto::ListExecutionsRequest,
        principal: &Principal,
    ) -> SpearResult<proto::ListExecutionsResponse> {
        principal.require(Scope::Read)?;
        let limit = page_size("limit", request.limit, DEFAULT_PAGE_SIZE)?;
        let task = self.node.registry.resolve(&request.task_id);
        if principal.is_limited_to_tasks() {
            if request.task_id.is_empty() {
                return Err(SpearError::permission_denied(format!(
                    "the token {} is limited to some tasks; set task_id to list executions",
                    principal.label
                )));
            }
            let task_name = task.as_ref().map_or(request.task_id.as_str(), |task| {
                task.record.task_name.as_str()
            });
            principal.require_task(Scope::Read, task_name)?;
        }
        let task_id = (!request.task_id.is_empty()).then(|| {
            task.as_ref().map_or_else(
                || request.task_id.clone(),
                |task| task.record.task_id.clone(),
            )
        });
        let after_sequence = if request.start_after.is_empty() {
            None
        } else {
            let Some(record) = self.node.manager.store().execution(&request.start_after)? else {
                return Err(SpearError::invalid_argument(format!(
                    "start_after {:?} is not a known execution id",
                    request.start_after
                )));
            };
            Some(record.sequence)
        };
        let page = self.node.manager.store().list_executions(&ExecutionQuery {
            task_id,
            status: wire::status_from_wire(request.status_filter()),
            after_sequence,
            limit,
            newest: false,
            descending: request.newest_first,
            submitted_at_or_after_ms: request
                .submitted_after
                .as_ref()
                .map(|instant| wire::timestamp_to_unix_ms("submitted_after", instant))
                .transpose()?,
            submitted_before_ms: request
                .submitted_before
                .as_ref()
                .map(|instant| wire::timestamp_to_unix_ms("submitted_before", instant))
                .transpose()?,
        })?;
        let next_start_after = if page.has_more {
            page.executions
                .last()
                .map(|record| record.execution_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(proto::ListExecutionsResponse {
            executions: page.executions.iter().map(wire::execution_info).collect(),
            has_more: page.has_more,
            next_start_after,
        })
    }
}

/// Guest stderr lines, then one line per attempt that ended in error (attempts are otherwise
/// invisible in stderr).
fn log_lines_with_attempts(record: &ExecutionRecord) -> Vec<String> {
    let mut lines = record.log_lines();
    for entry in &record.timeline {
        if !entry.note.is_empty() && entry.note != "accepted" {
            lines.push(format!(
                "[spearlet] attempt {}: {}: {}",
                entry.attempt,
                entry.status.as_str(),
                entry.note
            ));
        }
    }
    lines
}

/// The W3C `traceparent` the caller sent, if any (validated where it is used).
fn traceparent(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    metadata
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// The cluster peer that forwarded a call (see `cluster_link::FORWARDED_FROM_METADATA_KEY`).
fn forwarded_from(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    let value = metadata
        .get(crate::cluster_link::FORWARDED_FROM_METADATA_KEY)?
        .to_str()
        .ok()?;
    spearlet_core::ids::validate_id("forwarded_from", value).ok()?;
    Some(value.to_owned())
}

/// The client's deadline from the `grpc-timeout` header (`<digits><unit>`, unit H M S m u n).
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

fn registration(
    requested_task_id: Option<String>,
    task_name: &str,
    function_name: &str,
    description: &str,
    artifact_spec: &proto::ArtifactSpec,
) -> TaskRegistration {
    TaskRegistration {
        requested_task_id,
        task_name: task_name.to_owned(),
        function_name: function_name.to_owned(),
        description: description.to_owned(),
        artifact_id: artifact_spec.artifact_id.clone(),
        artifact_type: artifact_spec.artifact_type.clone(),
        location: artifact_spec.location.clone(),
        version: artifact_spec.version.clone(),
        checksum: artifact_spec.checksum.clone(),
        metadata: wire::to_btree(&artifact_spec.metadata),
        restored_timestamps: None,
        source: crate::registry::RegistrationSource::Client,
    }
}

fn page_size(field: &str, requested: i32, default: usize) -> SpearResult<usize> {
    match requested {
        0 => Ok(default),
        negative if negative < 0 => Err(SpearError::invalid_argument(format!(
            "{field} must not be negative"
        ))),
        positive => Ok((positive as usize).min(MAX_PAGE_SIZE)),
    }
}

fn clamp_i32(value: u64) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// What `POST /v1/artifacts` stored, as the gateway answers it.
#[derive(Serialize)]
pub struct UploadedArtifact {
    pub sha256: String,
    /// Usable as `artifact_spec.location` on this node.
    pub location: String,
    /// `sha256:<hex>`, usable as `artifact_spec.checksum`.
    pub checksum: String,
    pub size_bytes: usize,
}

/// The RPCs whose tonic methods above only decode and encode, and the artifact upload, which has
/// no RPC: the gateway calls it as it calls the others.
impl FunctionServiceHandler {
    async fn execution_status(
        &self,
        request: &proto::GetExecutionStatusRequest,
        principal: &Principal,
        local_record_only: bool,
    ) -> SpearResult<proto::GetExecutionStatusResponse> {
        principal.require(Scope::Read)?;
        // A cluster execution's state is the cluster's (the local record may be an attempt
        // that was superseded, or absent on this node), unless a peer asks for this node's own
        // record (see `cluster_link::LOCAL_RECORD_METADATA_KEY`).
        let from_cluster = match &self.node.cluster {
            Some(cluster) if !request.execution_id.is_empty() && !local_record_only => {
                cluster
                    .execution(
                        request.execution_id.clone(),
                        principal.forwarded_authorization(),
                    )
                    .await?
            }
            _ => None,
        };
        let local = match from_cluster {
            Some(record) => Some(record),
            None => self.node.manager.store().execution(&request.execution_id)?,
        };
        let Some(record) = local else {
            return Ok(proto::GetExecutionStatusResponse {
                found: false,
                result: None,
                logs: vec![],
                message: format!("execution_id {:?} is unknown", request.execution_id),
                execution: None,
                timeline: vec![],
            });
        };
        principal.require_task(Scope::Read, &record.task_name)?;
        Ok(proto::GetExecutionStatusResponse {
            found: true,
            result: Some(wire::execution_result(&record, request.include_result)),
            logs: if request.include_logs {
                log_lines_with_attempts(&record)
            } else {
                vec![]
            },
            message: format!("execution is {}", record.status.as_str()),
            execution: Some(wire::execution_info(&record)),
            timeline: wire::execution_timeline(&record),
        })
    }

    fn stats_history(
        &self,
        request: &proto::GetStatsHistoryRequest,
        principal: &Principal,
    ) -> SpearResult<proto::GetStatsHistoryResponse> {
        principal.require(Scope::Read)?;
        let max_seconds = crate::history::HISTORY_POINTS as i32;
        if !(0..=max_seconds).contains(&request.seconds) {
            return Err(SpearError::invalid_argument(format!(
                "seconds {} must be between 1 and {max_seconds} (0: all that is kept)",
                request.seconds
            )));
        }
        let seconds = request.seconds as u32;
        let points = if request.task_name.is_empty() {
            self.node
                .history
                .node_points(seconds)
                .iter()
                .map(crate::history::node_point_to_wire)
                .collect()
        } else {
            let Some(task) = self.node.registry.resolve(&request.task_name) else {
                return Err(SpearError::not_found(format!(
                    "task_name {:?} is not a registered task",
                    request.task_name
                )));
            };
            principal.require_task(Scope::Read, &task.record.task_name)?;
            self.node
                .history
                .task_points(&task.record.task_id, seconds)
                .unwrap_or_default()
                .iter()
                .map(|(at_ms, point)| crate::history::task_point_to_wire(*at_ms, point))
                .collect()
        };
        Ok(proto::GetStatsHistoryResponse {
            interval_seconds: crate::history::SAMPLE_INTERVAL.as_secs() as i32,
            task_name: request.task_name.clone(),
            points,
        })
    }

    fn who_am_i(&self, principal: &Principal) -> proto::WhoAmIResponse {
        proto::WhoAmIResponse {
            label: if self.node.access.is_enabled() {
                principal.label.clone()
            } else {
                "anonymous".to_owned()
            },
            scope: principal.scope().as_str().to_owned(),
            tasks: principal.task_patterns().to_vec(),
        }
    }

    fn health(
        &self,
        request: &proto::GetHealthRequest,
        principal: &Principal,
    ) -> SpearResult<proto::GetHealthResponse> {
        principal.require(Scope::Read)?;
        stats::health(&self.node, request.include_details)
    }

    fn stats(
        &self,
        request: &proto::GetStatsRequest,
        principal: &Principal,
    ) -> SpearResult<proto::GetStatsResponse> {
        principal.require(Scope::Read)?;
        let mut response = stats::stats(&self.node, request)?;
        if principal.is_limited_to_tasks() {
            // Node-wide counts stay; per-task detail is limited to the token's tasks.
            response
                .pools
                .retain(|pool| principal.allows_task(&pool.task_name));
            if let Some(task_stats) = &mut response.task_stats {
                task_stats
                    .most_active_tasks
                    .retain(|task| principal.allows_task(&task.task_name));
            }
        }
        Ok(response)
    }

    async fn create_task(
        &self,
        request: &proto::CreateTaskRequest,
        principal: &Principal,
    ) -> SpearResult<proto::TaskInfo> {
        if request.task_name.is_empty() {
            return Err(SpearError::invalid_argument("task_name is required"));
        }
        principal.require_task(Scope::Admin, &request.task_name)?;
        let Some(artifact_spec) = &request.artifact_spec else {
            return Err(SpearError::invalid_argument("artifact_spec is required"));
        };
        let (task, _) = self
            .node
            .registry
            .register(registration(
                None,
                &request.task_name,
                &request.function_name,
                &request.task_description,
                artifact_spec,
            ))
            .await?;
        Ok(self.task_info(&task, true))
    }

    /// The most bytes an artifact upload may have (`artifacts.max_artifact_bytes`), once
    /// `principal` may upload at all (the admin scope). A transport asks before it reads the
    /// body, so a caller who may not upload is refused before sending it, and no body is read
    /// past the limit.
    pub fn artifact_upload_limit(&self, principal: &Principal) -> SpearResult<usize> {
        principal.require(Scope::Admin)?;
        Ok(usize::try_from(self.node.config.artifacts.max_artifact_bytes).unwrap_or(usize::MAX))
    }

    /// Stores an uploaded module, executable or archive in the node's artifact cache under its
    /// sha256, for `artifact://sha256:…` locations. Needs the admin scope; an empty body is
    /// refused, and one over `artifacts.max_artifact_bytes` is RESOURCE_EXHAUSTED.
    pub async fn upload_artifact(
        &self,
        principal: &Principal,
        artifact: Bytes,
    ) -> SpearResult<UploadedArtifact> {
        let limit = self.artifact_upload_limit(principal)?;
        if artifact.is_empty() {
            return Err(SpearError::invalid_argument(
                "the request body (the artifact) is empty",
            ));
        }
        let size_bytes = artifact.len();
        if size_bytes > limit {
            return Err(SpearError::resource_exhausted(format!(
                "the artifact ({size_bytes} bytes) is larger than artifacts.max_artifact_bytes \
                 ({limit} bytes)"
            )));
        }
        let stored = self.node.registry.fetcher().store_upload(artifact).await?;
        tracing::info!(
            sha256 = %stored.digest,
            size_bytes,
            by = %principal.label,
            "artifact uploaded"
        );
        Ok(UploadedArtifact {
            location: format!("artifact://sha256:{}", stored.digest),
            checksum: format!("sha256:{}", stored.digest),
            sha256: stored.digest,
            size_bytes,
        })
    }
}

type ResponseStream = crate::cluster_link::ExecutionResultStream;

#[tonic::async_trait]
impl FunctionService for FunctionServiceHandler {
    async fn invoke_function(
        &self,
        request: Request<proto::InvokeFunctionRequest>,
    ) -> Result<Response<proto::InvokeFunctionResponse>, Status> {
        let principal = self.principal(&request)?;
        let grpc_deadline = grpc_timeout(request.metadata());
        let traceparent = traceparent(request.metadata());
        let forwarded_from = forwarded_from(request.metadata());
        self.invoke(
            request.into_inner(),
            grpc_deadline,
            traceparent,
            forwarded_from,
            &principal,
        )
        .await
        .map(Response::new)
        .map_err(to_status)
    }

    async fn get_execution_status(
        &self,
        request: Request<proto::GetExecutionStatusRequest>,
    ) -> Result<Response<proto::GetExecutionStatusResponse>, Status> {
        let principal = self.principal(&request)?;
        let local_record_only = request
            .metadata()
            .contains_key(crate::cluster_link::LOCAL_RECORD_METADATA_KEY);
        self.execution_status(request.get_ref(), &principal, local_record_only)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn cancel_execution(
        &self,
        request: Request<proto::CancelExecutionRequest>,
    ) -> Result<Response<proto::CancelExecutionResponse>, Status> {
        let principal = self.principal(&request)?;
        self.cancel(request.into_inner(), &principal)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    type StreamFunctionStream = ResponseStream;

    async fn stream_function(
        &self,
        request: Request<proto::InvokeFunctionRequest>,
    ) -> Result<Response<Self::StreamFunctionStream>, Status> {
        let principal = self.principal(&request)?;
        let traceparent = traceparent(request.metadata());
        let forwarded_from = forwarded_from(request.metadata());
        self.stream(
            request.into_inner(),
            traceparent,
            forwarded_from,
            &principal,
        )
        .await
        .map(Response::new)
        .map_err(to_status)
    }

    async fn list_tasks(
        &self,
        request: Request<proto::ListTasksRequest>,
    ) -> Result<Response<proto::ListTasksResponse>, Status> {
        let principal = self.principal(&request)?;
        self.list_tasks(request.get_ref(), &principal)
            .map(Response::new)
            .map_err(to_status)
    }

    async fn get_task(
        &self,
        request: Request<proto::GetTaskRequest>,
    ) -> Result<Response<proto::GetTaskResponse>, Status> {
        let principal = self.principal(&request)?;
        self.get_task(request.get_ref(), &principal)
            .map(Response::new)
            .map_err(to_status)
    }

    async fn delete_task(
        &self,
        request: Request<proto::DeleteTaskRequest>,
    ) -> Result<Response<proto::DeleteTaskResponse>, Status> {
        let principal = self.principal(&request)?;
        self.delete_task(request.get_ref(), &principal)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn list_executions(
        &self,
        request: Request<proto::ListExecutionsRequest>,
    ) -> Result<Response<proto::ListExecutionsResponse>, Status> {
        let principal = self.principal(&request)?;
        self.list_executions(request.get_ref(), &principal)
            .map(Response::new)
            .map_err(to_status)
    }

    async fn get_health(
        &self,
        request: Request<proto::GetHealthRequest>,
    ) -> Result<Response<proto::GetHealthResponse>, Status> {
        let principal = self.principal(&request)?;
        self.health(request.get_ref(), &principal)
            .map(Response::new)
            .map_err(to_status)
    }

    async fn get_stats(
        &self,
        request: Request<proto::GetStatsRequest>,
    ) -> Result<Response<proto::GetStatsResponse>, Status> {
        let principal = self.principal(&request)?;
        self.stats(request.get_ref(), &principal)
            .map(Response::new)
            .map_err(to_status)
    }

    async fn create_task(
        &self,
        request: Request<proto::CreateTaskRequest>,
    ) -> Result<Response<proto::TaskInfo>, Status> {
        let principal = self.principal(&request)?;
        self.create_task(request.get_ref(), &principal)
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn get_stats_history(
        &self,
        request: Request<proto::GetStatsHistoryRequest>,
    ) -> Result<Response<proto::GetStatsHistoryResponse>, Status> {
        let principal = self.principal(&request)?;
        self.stats_history(request.get_ref(), &principal)
            .map(Response::new)
            .map_err(to_status)
    }

    async fn who_am_i(
        &self,
        request: Request<proto::WhoAmIRequest>,
    ) -> Result<Response<proto::WhoAmIResponse>, Status> {
        let principal = self.principal(&request)?;
        Ok(Response::new(self.who_am_i(&principal)))
    }
}
