//! The kinds of instance a pool holds, how the pool starts one, and the one place a call is
//! dispatched to a runtime.
//!
//! - `per_call` wasm: the instance is the task's linked module (an `InstancePre`) plus its
//!   capacity; every call instantiates it into a fresh `Store`. Starting one costs nothing.
//! - a component (WASI 0.2 command or HTTP handler): the same, always per call.
//! - `reuse` wasm: one live wasm instance whose state survives between calls; starting it
//!   instantiates the module and runs `_initialize` once.
//! - process `exec`: the instance is the unpacked artifact plus its capacity; every call starts
//!   a new process.
//! - process `lambda`: one warm worker process speaking the AWS Lambda Runtime API to its own
//!   loopback server (`spearlet_process::lambda_worker`); starting it waits for the worker's
//!   first poll.
//!
//! Every runtime takes the same [`FunctionCall`] and returns the same [`CallReport`]
//! (`spearlet-runtime`); what a guest needs from the call (WASI argv and environment, a process
//! environment, a Runtime API invocation) is built by the runtime's own crate. Adding a runtime
//! means a variant here and a module in its crate.
//!
//! Invariants: a reuse instance or a worker serves one call at a time (capacity 1, enforced at
//! task registration); an instance whose call did not end normally (trap, exit, crash, timeout,
//! cancellation) reports itself unusable and the pool replaces it.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use spearlet_core::{ErrorCode, Isolation, ProcessMode, TaskConfig};
use spearlet_pool::{InstanceFactory, InstanceStartError};
use spearlet_process::lambda_worker::LambdaWorker;
use spearlet_process::task::ProcessTask;
use spearlet_runtime::{CallReport, FunctionCall};
use spearlet_wasm::{
    ComponentEntry, EntryPoint, ReusableInstance, ReusableInstanceSetup, WasmComponent, WasmModule,
    WasmTaskSettings,
};

/// What a call runs, resolved from its `function_name` before the execution exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallTarget {
    Wasm(EntryPoint),
    /// A component's `run`, or one HTTP request to its handler.
    Component(ComponentEntry),
    /// The task's process (exec: argv[1] is the function name; lambda: the task's handler).
    Process,
}

/// The runtime behind one pool instance.
pub enum InstanceRuntime {
    WasmPerCall {
        module: WasmModule,
        settings: Arc<WasmTaskSettings>,
    },
    WasmReuse {
        /// Taken by the call that runs on it; put back when the instance may serve again.
        instance: Mutex<Option<ReusableInstance>>,
        settings: Arc<WasmTaskSettings>,
    },
    /// A component's pre-instance: every call instantiates it into a fresh `Store`.
    ComponentPerCall {
        component: WasmComponent,
        settings: Arc<WasmTaskSettings>,
    },
    ProcessExec(Arc<ProcessTask>),
    LambdaWorker(Box<LambdaWorker>),
}

impl InstanceRuntime {
    /// Runs one call on this instance.
    pub async fn run(&self, target: &CallTarget, call: FunctionCall) -> CallReport {
        match (self, target) {
            (InstanceRuntime::WasmPerCall { module, settings }, CallTarget::Wasm(entry_point)) => {
                module.run_call(entry_point.clone(), settings, call).await
            }
            (InstanceRuntime::WasmReuse { instance, settings }, CallTarget::Wasm(entry_point)) => {
                let taken = instance.lock().take();
                let Some(mut live_instance) = taken else {
                    return CallReport::failed(
                        ErrorCode::InitFailed,
                        "the instance was lost by an earlier call",
                        false,
                    );
                };
                let report = live_instance
                    .run_call(entry_point.clone(), settings, call)
                    .await;
                if report.instance_still_usable {
                    *instance.lock() = Some(live_instance);
                }
                report
            }
            (
                InstanceRuntime::ComponentPerCall {
                    component,
                    settings,
                },
                CallTarget::Component(entry),
            ) => component.run_call(entry.clone(), settings, call).await,
            // The process runtimes' futures are boxed: they are larger than the wasm ones, and
            // every execution future would otherwise carry (and copy) their size.
            (InstanceRuntime::ProcessExec(task), CallTarget::Process) => {
                Box::pin(task.run_exec_call(call)).await
            }
            (InstanceRuntime::LambdaWorker(worker), CallTarget::Process) => {
                Box::pin(worker.invoke(call)).await
            }
            _ => CallReport::failed(
                ErrorCode::InitFailed,
                "the call's target does not match the task's runtime",
                true,
            ),
        }
    }
}

/// Starts instances of one wasm task.
pub struct WasmInstanceFactory {
    module: WasmModule,
    isolation: Isolation,
    memory_limit_bytes: u64,
    settings: Arc<WasmTaskSettings>,
    /// How long instantiation plus `_initialize` may take: the task's default call timeout.
    start_timeout: Duration,
}

impl WasmInstanceFactory {
    pub fn new(
        module: WasmModule,
        config: &TaskConfig,
        settings: Arc<WasmTaskSettings>,
    ) -> WasmInstanceFactory {
        WasmInstanceFactory {
            module,
            isolation: config.pool.isolation,
            memory_limit_bytes: u64::from(config.memory_limit_mb) * 1024 * 1024,
            settings,
            start_timeout: Duration::from_millis(config.timeout_ms),
        }
    }
}

impl InstanceFactory<InstanceRuntime> for WasmInstanceFactory {
    fn create_instance(&self) -> BoxFuture<'static, Result<InstanceRuntime, InstanceStartError>> {
        match self.isolation {
            Isolation::PerCall => futures::future::ready(Ok(InstanceRuntime::WasmPerCall {
                module: self.module.clone(),
                settings: self.settings.clone(),
            }))
            .boxed(),
            Isolation::Reuse => {
                let module = self.module.clone();
                let settings = self.settings.clone();
                let setup = ReusableInstanceSetup {
                    memory_limit_bytes: self.memory_limit_bytes,
                    preopened_directories: settings.preopened_directories.clone(),
                    environment: settings
                        .environment
                        .iter()
                        .map(|(name, value)| (name.clone(), value.clone()))
                        .collect(),
                    deadline: tokio::time::Instant::now() + self.start_timeout,
                };
                async move {
                    match module.instantiate_reusable(setup).await {
                        Ok(instance) => Ok(InstanceRuntime::WasmReuse {
                            instance: Mutex::new(Some(instance)),
                            settings,
                        }),
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
            InstanceRuntime::WasmReuse { instance, .. } => {
                instance.try_lock().is_none_or(|slot| slot.is_some())
            }
            _ => true,
        }
    }
}

/// Starts instances of one component task: like per-call modules, an instance is the linked
/// component plus its capacity, and starting one costs nothing.
pub struct ComponentInstanceFactory {
    pub component: WasmComponent,
    pub settings: Arc<WasmTaskSettings>,
}

impl InstanceFactory<InstanceRuntime> for ComponentInstanceFactory {
    fn create_instance(&self) -> BoxFuture<'static, Result<InstanceRuntime, InstanceStartError>> {
        futures::future::ready(Ok(InstanceRuntime::ComponentPerCall {
            component: self.component.clone(),
            settings: self.settings.clone(),
        }))
        .boxed()
    }

    fn is_healthy(&self, _runtime: &InstanceRuntime) -> bool {
        true
    }
}

/// Starts instances of one process task.
pub struct ProcessInstanceFactory {
    pub task: Arc<ProcessTask>,
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
                let max_response_bytes = self.max_response_bytes;
                let max_log_bytes = self.max_log_bytes;
                async move {
                    LambdaWorker::start(task, max_response_bytes, max_log_bytes)
                        .await
                        .map(|worker| InstanceRuntime::LambdaWorker(Box::new(worker)))
                        .map_err(|error| InstanceStartError {
                            message: error.message,
                        })
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
