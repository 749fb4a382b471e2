//! What an instance of a task is, per runtime, how the pool starts one, and how one call runs
//! on it.
//!
//! - `per_call` wasm: the instance is the task's linked module (an `InstancePre`) plus its
//!   capacity; every call instantiates it into a fresh `Store`. Starting one costs nothing.
//! - `reuse` wasm: one live wasm instance whose state survives between calls; starting it
//!   instantiates the module and runs `_initialize` once.
//! - process `exec`: the instance is the unpacked artifact plus its capacity; every call starts
//!   a new process.
//! - process `lambda`: one warm worker process speaking the AWS Lambda Runtime API to its own
//!   loopback server; starting it waits for the worker's first poll.
//!
//! Invariants: a reuse instance or a worker serves one call at a time (capacity 1, enforced at
//! task registration); an instance whose call did not end normally (trap, exit, crash, timeout,
//! cancellation) reports itself unusable and the pool replaces it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use spearlet_core::{ErrorCode, Isolation, Outcome, ProcessMode, ProcessSettings, TaskConfig};
use spearlet_pool::{InstanceFactory, InstanceStartError};
use spearlet_process::exec::{ProcessCall, run_exec};
use spearlet_process::sandbox::ProcessLimits;
use spearlet_wasm::{
    EntryPoint, OutputChunkSender, ReusableInstance, ReusableInstanceSetup, WasmInvocation,
    WasmModule,
};
use tokio_util::sync::CancellationToken;

use crate::lambda::LambdaWorker;
use crate::trace_context::TraceContext;

/// What a call runs, resolved from its `function_name` before the execution exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallTarget {
    Wasm(EntryPoint),
    /// The task's process (exec: argv[1] is the function name; lambda: the task's handler).
    Process,
}

/// A process task: its unpacked artifact and how to run it.
#[derive(Debug)]
pub struct ProcessTask {
    /// `LAMBDA_TASK_ROOT`: where the artifact was unpacked.
    pub root: PathBuf,
    pub entrypoint: PathBuf,
    pub settings: ProcessSettings,
    pub limits: ProcessLimits,
    /// The handler a lambda worker serves (`_HANDLER`).
    pub handler: String,
    /// Per-instance working directories are created under it.
    pub workdir_base: PathBuf,
    pub task_name: String,
    pub version: String,
    /// Synthesised, stable per task.
    pub function_arn: String,
}

/// The runtime behind one pool instance.
pub enum InstanceRuntime {
    WasmPerCall(WasmModule),
    WasmReuse(Mutex<Option<ReusableInstance>>),
    ProcessExec(Arc<ProcessTask>),
    LambdaWorker(Box<LambdaWorker>),
}

/// One call, as every runtime needs it.
pub struct InstanceCall {
    pub target: CallTarget,
    pub execution_id: String,
    pub stdin: Bytes,
    /// `[task_name, function_name]` for wasm (argv), `[function_name]` after the program for
    /// exec processes.
    pub arguments: Vec<String>,
    pub environment: Vec<(String, String)>,
    pub preopened_directories: Vec<(PathBuf, String)>,
    pub memory_limit_bytes: u64,
    pub max_output_bytes: u64,
    pub max_log_bytes: u64,
    pub deadline: tokio::time::Instant,
    pub cancellation: CancellationToken,
    pub output_chunks: Option<OutputChunkSender>,
    /// The execution's trace context. Wasm and exec guests get it as `SPEAR_TRACEPARENT` in
    /// `environment`; a lambda worker as the `Lambda-Runtime-Trace-Id` header.
    pub trace: TraceContext,
}

/// What a call produced, whatever ran it.
#[derive(Debug)]
pub struct CallReport {
    pub outcome: Outcome,
    pub output: Bytes,
    pub logs: Bytes,
    pub peak_memory_bytes: u64,
    /// Time spent instantiating (wasm per call) or spawning (exec) for this call.
    pub start_duration: Duration,
    /// Runtime-specific figures for the record's metrics (`error_type`, `process_id`, …).
    pub metrics: BTreeMap<String, String>,
    /// False when the instance must not serve again.
    pub instance_still_usable: bool,
}

impl CallReport {
    pub fn failed(code: ErrorCode, message: impl Into<String>, usable: bool) -> CallReport {
        CallReport {
            outcome: Outcome::Failed {
                code,
                message: message.into(),
            },
            output: Bytes::new(),
            logs: Bytes::new(),
            peak_memory_bytes: 0,
            start_duration: Duration::ZERO,
            metrics: BTreeMap::new(),
            instance_still_usable: usable,
        }
    }
}

impl InstanceRuntime {
    /// Runs one call on this instance.
    pub async fn run(&self, call: InstanceCall) -> CallReport {
        match (self, &call.target) {
            (InstanceRuntime::WasmPerCall(module), CallTarget::Wasm(entry_point)) => {
                let report = module.run(wasm_invocation(entry_point.clone(), call)).await;
                CallReport {
                    outcome: report.outcome,
                    output: report.output,
                    logs: report.logs,
                    peak_memory_bytes: report.peak_memory_bytes,
                    start_duration: report.instantiate_duration,
                    metrics: BTreeMap::new(),
                    instance_still_usable: true,
                }
            }
            (InstanceRuntime::WasmReuse(slot), CallTarget::Wasm(entry_point)) => {
                let taken = slot.lock().take();
                let Some(mut instance) = taken else {
                    return CallReport::failed(
                        ErrorCode::InitFailed,
                        "the instance was lost by an earlier call",
                        false,
                    );
                };
                let call = instance
                    .call(wasm_invocation(entry_point.clone(), call))
                    .await;
                if call.instance_still_usable {
                    *slot.lock() = Some(instance);
                }
                CallReport {
                    outcome: call.report.outcome,
                    output: call.report.output,
                    logs: call.report.logs,
                    peak_memory_bytes: call.report.peak_memory_bytes,
                    start_duration: Duration::ZERO,
                    metrics: BTreeMap::new(),
                    instance_still_usable: call.instance_still_usable,
                }
            }
            (InstanceRuntime::ProcessExec(task), CallTarget::Process) => {
                let report = run_exec(
                    &task.entrypoint,
                    ProcessCall {
                        stdin: call.stdin,
                        arguments: call.arguments,
                        environment: call.environment,
                        max_output_bytes: call.max_output_bytes,
                        max_log_bytes: call.max_log_bytes,
                        deadline: call.deadline,
                        cancellation: call.cancellation,
                        output_chunks: call.output_chunks,
                    },
                    &task.limits,
                    &task.workdir_base,
                )
                .await;
                CallReport {
                    outcome: report.outcome,
                    output: report.output,
                    logs: report.logs,
                    peak_memory_bytes: 0,
                    start_duration: report.spawn_duration,
                    metrics: [("process_id".to_owned(), report.process_id.to_string())].into(),
                    instance_still_usable: true,
                }
            }
            (InstanceRuntime::LambdaWorker(worker), CallTarget::Process) => {
                worker.invoke(call).await
            }
            _ => CallReport::failed(
                ErrorCode::InitFailed,
                "the call's target does not match the task's runtime",
                true,
            ),
        }
    }
}

fn wasm_invocation(entry_point: EntryPoint, call: InstanceCall) -> WasmInvocation {
    WasmInvocation {
        entry_point,
        stdin: call.stdin,
        arguments: call.arguments,
        environment: call.environment,
        preopened_directories: call.preopened_directories,
        memory_limit_bytes: call.memory_limit_bytes,
        max_output_bytes: call.max_output_bytes,
        max_log_bytes: call.max_log_bytes,
        deadline: call.deadline,
        cancellation: call.cancellation,
        output_chunks: call.output_chunks,
    }
}

/// Starts instances of one wasm task.
pub struct WasmInstanceFactory {
    module: WasmModule,
    isolation: Isolation,
    memory_limit_bytes: u64,
    preopened_directories: Vec<(PathBuf, String)>,
    environment: Vec<(String, String)>,
    /// How long instantiation plus `_initialize` may take: the task's default call timeout.
    start_timeout: Duration,
}

impl WasmInstanceFactory {
    pub fn new(
        module: WasmModule,
        config: &TaskConfig,
        preopened_directories: Vec<(PathBuf, String)>,
    ) -> WasmInstanceFactory {
        WasmInstanceFactory {
            module,
            isolation: config.pool.isolation,
            memory_limit_bytes: u64::from(config.memory_limit_mb) * 1024 * 1024,
            preopened_directories,
            environment: config
                .environment
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            start_timeout: Duration::from_millis(config.timeout_ms),
        }
    }
}

impl InstanceFactory<InstanceRuntime> for WasmInstanceFactory {
    fn create_instance(&self) -> BoxFuture<'static, Result<InstanceRuntime, InstanceStartError>> {
        match self.isolation {
            Isolation::PerCall => {
                futures::future::ready(Ok(InstanceRuntime::WasmPerCall(self.module.clone())))
                    .boxed()
            }
            Isolation::Reuse => {
                let module = self.module.clone();
                let setup = ReusableInstanceSetup {
                    memory_limit_bytes: self.memory_limit_bytes,
                    preopened_directories: self.preopened_directories.clone(),
                    environment: self.environment.clone(),
                    deadline: tokio::time::Instant::now() + self.start_timeout,
                };
                async move {
                    match module.instantiate_reusable(setup).await {
                        Ok(instance) => Ok(InstanceRuntime::WasmReuse(Mutex::new(Some(instance)))),
                        Err(failure) => Err(InstanceStartError {
                            message: format!("the instance could not start: {}", failure.message),
                        }),
                    }
                }
                .boxed()
            }
        }
    }

    fn is_healthy(&self, runtime: &InstanceRuntime) -> bool {
        match runtime {
            // Idle and empty means a call took the instance and never gave it back.
            InstanceRuntime::WasmReuse(slot) => slot.try_lock().is_none_or(|slot| slot.is_some()),
            _ => true,
        }
    }
}

/// Starts instances of one process task.
pub struct ProcessInstanceFactory {
    pub task: Arc<ProcessTask>,
    /// The worker's environment (lambda mode): declared variables plus the runtime's own.
    pub worker_environment: Vec<(String, String)>,
    pub max_response_bytes: u64,
    pub max_log_bytes: u64,
}

impl InstanceFactory<InstanceRuntime> for ProcessInstanceFactory {
    fn create_instance(&self) -> BoxFuture<'static, Result<InstanceRuntime, InstanceStartError>> {
        match self.task.settings.mode {
            ProcessMode::Exec => {
                futures::future::ready(Ok(InstanceRuntime::ProcessExec(self.task.clone()))).boxed()
            }
            ProcessMode::Lambda => {
                let task = self.task.clone();
                let environment = self.worker_environment.clone();
                let max_response_bytes = self.max_response_bytes;
                let max_log_bytes = self.max_log_bytes;
                async move {
                    LambdaWorker::start(task, environment, max_response_bytes, max_log_bytes)
                        .await
                        .map(|worker| InstanceRuntime::LambdaWorker(Box::new(worker)))
                }
                .boxed()
            }
        }
    }

    fn is_healthy(&self, runtime: &InstanceRuntime) -> bool {
        match runtime {
            InstanceRuntime::LambdaWorker(worker) => worker.is_alive(),
            _ => true,
        }
    }
}
