//! Reuse isolation (`spearlet.isolation = reuse`): one live instance of a module that keeps its
//! state — globals, linear memory, anything the guest remembers — from one call to the next.
//!
//! Life of a [`ReusableInstance`]: [`WasmModule::instantiate_reusable`] creates its store,
//! instantiates the module and runs `_initialize` once; then every [`ReusableInstance::call`]
//! calls one named export on that same instance. What a call sees of the outside world is still
//! its own: each call gets a fresh WASI context (stdin, stdout, stderr, arguments, environment,
//! preopened directories), so one call never reads another's input or writes into another's
//! output. Between calls the store holds an empty WASI context, which also drops the call's
//! stdout chunk sender so that a streaming caller's receiver ends when its call ends.
//!
//! Invariant: an instance whose call did not return normally (trap, `proc_exit`, memory limit,
//! output cap, timeout, cancellation) may have been stopped halfway through changing its own
//! state, so it is retired: the report says `instance_still_usable: false` and any later call on
//! it is refused without running guest code.

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use spearlet_core::{SpearError, SpearResult};
use tokio_util::sync::CancellationToken;
use wasmtime::{Instance, InstancePre, Store};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

use crate::module::{
    CallCaptures, CallEnd, EntryPoint, GuestState, GuestWasiSettings, RunReport, WasmInvocation,
    WasmModule, arm_epoch_yield, build_call_wasi, call_export, call_initialize, new_guest_store,
    not_run_report, race_deadline_and_cancellation,
};

/// What `_initialize` may write to stdout and to stderr, each. Its stdout has no caller to go
/// to and is dropped; its stderr becomes the logs of an [`InstanceStartFailure`].
const INITIALIZE_OUTPUT_CAP_BYTES: u64 = 1024 * 1024;

/// How to create a [`ReusableInstance`].
#[derive(Clone, Debug)]
pub struct ReusableInstanceSetup {
    /// The cap on the instance's linear memory for its whole life, in bytes. Calls cannot change
    /// it: `WasmInvocation::memory_limit_bytes` is ignored by [`ReusableInstance::call`].
    pub memory_limit_bytes: u64,
    /// Read-only directories seen by `_initialize`: host path (already checked against the
    /// allowed roots), guest path. Calls should preopen the same list in the same order, because
    /// guest libcs remember the descriptor numbers of preopened directories.
    pub preopened_directories: Vec<(PathBuf, String)>,
    /// The environment `_initialize` sees (it runs with no arguments). Guest libcs often read
    /// the environment once and keep it, so this is the environment such a guest keeps.
    pub environment: Vec<(String, String)>,
    /// When instantiation plus `_initialize` must have finished.
    pub deadline: tokio::time::Instant,
}

/// Why a [`ReusableInstance`] could not be created: instantiation or `_initialize` trapped,
/// exited, hit a limit or missed its deadline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceStartFailure {
    pub message: String,
    /// What `_initialize` wrote to stderr before it failed.
    pub logs: Bytes,
}

impl std::fmt::Display for InstanceStartFailure {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.message)
    }
}

impl std::error::Error for InstanceStartFailure {}

/// What one call on a [`ReusableInstance`] produced.
#[derive(Debug)]
pub struct ReusableCallReport {
    /// The call's outcome and output. `peak_memory_bytes` is the instance's peak so far and
    /// `instantiate_duration` is zero: instantiation happened when the instance was created.
    pub report: RunReport,
    /// True only when the export returned normally (with any status). False means the instance
    /// is retired and the caller should drop it.
    pub instance_still_usable: bool,
}

/// One live instance of a module whose state survives between calls. Runs one call at a time
/// (`call` takes `&mut self`); `Send`, so it can move between the executor's threads.
pub struct ReusableInstance {
    store: Store<GuestState>,
    instance: Instance,
    initialization_duration: Duration,
    calls_served: u64,
    /// Why the instance stopped accepting calls, once a call ended abnormally.
    retirement_reason: Option<String>,
}

impl std::fmt::Debug for ReusableInstance {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ReusableInstance")
            .field("initialization_duration", &self.initialization_duration)
            .field("calls_served", &self.calls_served)
            .field("retirement_reason", &self.retirement_reason)
            .finish_non_exhaustive()
    }
}

/// The instance moves between worker threads of the executor; keep that a compile-time fact.
const _: fn() = || {
    fn assert_send<Value: Send>() {}
    assert_send::<ReusableInstance>();
};

impl WasmModule {
    /// Checks that the module can serve `spearlet.isolation = reuse`: it must export at least
    /// one function other than `_start` and `_initialize` that spearlet can call, i.e. one that
    /// [`WasmModule::resolve_entry_point`] resolves to [`EntryPoint::Export`]. Exports whose
    /// names start with `__` are toolchain internals and do not count: a command module built by
    /// wasi-libc also exports `__main_void`, which is its `main` and cannot run twice either.
    pub fn check_reusable(&self) -> SpearResult<()> {
        let has_callable_export = self
            .exported_functions()
            .iter()
            .filter(|name| !matches!(name.as_str(), "_start" | "_initialize"))
            .filter(|name| !name.starts_with("__"))
            .any(|name| {
                matches!(
                    self.resolve_entry_point(name),
                    Ok(EntryPoint::Export { .. })
                )
            });
        if has_callable_export {
            return Ok(());
        }
        Err(SpearError::invalid_argument(format!(
            "spearlet.isolation = reuse needs a reactor module: one exporting a function \
             `() -> ()` or `() -> i32` besides `_start`, `_initialize` and `__`-prefixed \
             toolchain internals, which spearlet calls \
             again and again on one instance. This module exports no such function; its \
             exported functions are [{}]. A command module's `_start` cannot run twice in one \
             instance (it runs the program to its end, exit-time cleanup included): use \
             spearlet.isolation = per_call for it",
            self.exported_functions().join(", ")
        )))
    }

    /// Creates a [`ReusableInstance`]: a new store (same memory limiter and epoch yielding as
    /// [`WasmModule::run`]), the module instantiated in it, and `_initialize` run once when the
    /// module has one, all before `setup.deadline`.
    pub async fn instantiate_reusable(
        &self,
        setup: ReusableInstanceSetup,
    ) -> Result<ReusableInstance, InstanceStartFailure> {
        let (wasi, captures) = build_call_wasi(GuestWasiSettings {
            stdin: Bytes::new(),
            arguments: &[],
            environment: &setup.environment,
            preopened_directories: &setup.preopened_directories,
            max_output_bytes: INITIALIZE_OUTPUT_CAP_BYTES,
            max_log_bytes: INITIALIZE_OUTPUT_CAP_BYTES,
            output_chunks: None,
        })
        .map_err(|message| InstanceStartFailure {
            message,
            logs: Bytes::new(),
        })?;
        let mut store = new_guest_store(self.engine(), wasi, setup.memory_limit_bytes);
        let initialization_started = Instant::now();
        // Nobody cancels a start: a caller that gives up drops this future instead.
        let never_cancelled = CancellationToken::new();
        let start_end = {
            let start =
                instantiate_and_initialize(self.instance_pre(), &mut store, self.has_initialize());
            race_deadline_and_cancellation(start, setup.deadline, &never_cancelled).await
        };
        let initialization_duration = initialization_started.elapsed();
        let memory_limit_hit = store.data().limiter.memory_limit_hit;
        let instance =
            started_instance(start_end, &captures, memory_limit_hit).map_err(|message| {
                InstanceStartFailure {
                    message,
                    logs: captures.stderr.take_contents(),
                }
            })?;
        store.data_mut().wasi = idle_wasi();
        Ok(ReusableInstance {
            store,
            instance,
            initialization_duration,
            calls_served: 0,
            retirement_reason: None,
        })
    }
}

impl ReusableInstance {
    /// Calls `invocation.entry_point` (a named export) on this instance with a fresh WASI
    /// context, until it returns, its deadline passes or it is cancelled; outcomes are
    /// classified exactly as [`WasmModule::run`] classifies them. `_initialize` is not run again.
    pub async fn call(&mut self, mut invocation: WasmInvocation) -> ReusableCallReport {
        if let Some(retirement_reason) = &self.retirement_reason {
            let message = format!(
                "this reused instance was retired after an earlier call ended abnormally \
                 ({retirement_reason}); create a new instance"
            );
            return self.not_run_call_report(message, false);
        }
        let EntryPoint::Export {
            name,
            returns_status,
        } = invocation.entry_point.clone()
        else {
            let message = "spearlet.isolation = reuse calls a named export of a reactor module; \
                           a command's `_start` cannot run twice in one instance"
                .to_owned();
            return self.not_run_call_report(message, true);
        };
        let (wasi, captures) = match build_call_wasi(GuestWasiSettings::take_from(&mut invocation))
        {
            Ok(built) => built,
            Err(message) => return self.not_run_call_report(message, true),
        };
        let guest_state = self.store.data_mut();
        guest_state.wasi = wasi;
        guest_state.limiter.memory_limit_hit = false;
        arm_epoch_yield(&mut self.store);

        let call_end = {
            let call = call_export(self.instance, &mut self.store, &name, returns_status);
            race_deadline_and_cancellation(call, invocation.deadline, &invocation.cancellation)
                .await
        };
        // Dropping the call's WASI context closes its stdout chunk sender and frees its stdin.
        self.store.data_mut().wasi = idle_wasi();
        self.calls_served += 1;

        let instance_still_usable = matches!(call_end, CallEnd::Returned(Ok(_)));
        let memory_limit_hit = self.store.data().limiter.memory_limit_hit;
        let outcome = captures.outcome_of(&call_end, &invocation.entry_point, memory_limit_hit);
        if !instance_still_usable {
            self.retirement_reason = Some(format!(
                "call {} of {name:?}: {}",
                self.calls_served,
                outcome.error_message()
            ));
        }
        ReusableCallReport {
            report: captures.into_report(outcome, self.peak_memory_bytes(), Duration::ZERO),
            instance_still_usable,
        }
    }

    /// How long instantiation plus `_initialize` took when the instance was created.
    pub fn initialization_duration(&self) -> Duration {
        self.initialization_duration
    }

    /// Calls that ran guest code on this instance, whatever their outcome.
    pub fn calls_served(&self) -> u64 {
        self.calls_served
    }

    fn peak_memory_bytes(&self) -> u64 {
        self.store.data().limiter.peak_memory_bytes as u64
    }

    /// The report of a call that was refused before any guest code ran.
    fn not_run_call_report(
        &self,
        message: String,
        instance_still_usable: bool,
    ) -> ReusableCallReport {
        let mut report = not_run_report(message);
        report.peak_memory_bytes = self.peak_memory_bytes();
        ReusableCallReport {
            report,
            instance_still_usable,
        }
    }
}

/// Instantiates the module into `store` and runs `_initialize` when the module has one.
async fn instantiate_and_initialize(
    instance_pre: &InstancePre<GuestState>,
    store: &mut Store<GuestState>,
    has_initialize: bool,
) -> wasmtime::Result<Instance> {
    let instance = instance_pre.instantiate_async(&mut *store).await?;
    if has_initialize {
        call_initialize(instance, store).await?;
    }
    Ok(instance)
}

/// The started instance, or why instantiation or `_initialize` did not succeed.
fn started_instance(
    start_end: CallEnd<Instance>,
    captures: &CallCaptures,
    memory_limit_hit: bool,
) -> Result<Instance, String> {
    match start_end {
        CallEnd::Returned(Ok(instance)) => Ok(instance),
        CallEnd::DeadlinePassed => Err("instantiating the module and running `_initialize` did \
                                        not finish before the deadline"
            .to_owned()),
        CallEnd::Cancelled => Err("instantiating the module was cancelled".to_owned()),
        CallEnd::Returned(Err(error)) => {
            if let Some(exit) = error.downcast_ref::<I32Exit>() {
                return Err(format!(
                    "`_initialize` called proc_exit({}); a reused instance must return from \
                     `_initialize`",
                    exit.0
                ));
            }
            let outcome = captures.error_outcome(&error, memory_limit_hit);
            Err(format!(
                "instantiating the module or running `_initialize` failed: {}",
                outcome.error_message()
            ))
        }
    }
}

/// The WASI context a store holds between calls: no input, output to nowhere, nothing
/// preopened. No guest code runs while it is installed.
fn idle_wasi() -> WasiP1Ctx {
    WasiCtxBuilder::new().build_p1()
}
