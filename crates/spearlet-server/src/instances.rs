//! What an instance of a task is, per runtime, and how the pool starts one.
//!
//! - `per_call` wasm: the instance is the task's linked module (an `InstancePre`) plus its
//!   capacity; every call instantiates it into a fresh `Store`. Starting one costs nothing.
//! - `reuse` wasm: the instance is one live wasm instance whose state survives between calls;
//!   starting it instantiates the module and runs `_initialize` once.
//!
//! Invariant: a reuse instance is taken out of its slot for the length of a call (capacity is 1)
//! and put back only if the call returned normally; a slot found empty is an unhealthy instance.

use std::path::PathBuf;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use spearlet_core::{Isolation, TaskConfig};
use spearlet_pool::{InstanceFactory, InstanceStartError};
use spearlet_wasm::{ReusableInstance, ReusableInstanceSetup, WasmModule};

/// The runtime behind one pool instance.
pub enum InstanceRuntime {
    WasmPerCall(WasmModule),
    WasmReuse(Mutex<Option<ReusableInstance>>),
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
            InstanceRuntime::WasmPerCall(_) => true,
            // Idle and empty means a call took the instance and never gave it back.
            InstanceRuntime::WasmReuse(slot) => slot.try_lock().is_none_or(|slot| slot.is_some()),
        }
    }
}
