//! A compiled, linked module (the warm part of a task), one per-call run of it, and the pieces of
//! a call (WASI context, store, deadline race, outcome) that reuse isolation shares.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use spearlet_core::{ErrorCode, Outcome, SpearError, SpearResult};
use tokio_util::sync::CancellationToken;
use wasmtime::{
    Engine, ExternType, Instance, InstancePre, Linker, Module, ResourceLimiter, Store, ValType,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use crate::guest_io::{CapturedOutput, OutputChunkSender};

/// Function names that mean "run the command's `_start`".
const START_ALIASES: &[&str] = &["", "_start", "main", "__spear_default_entry__"];

/// Where a module came from when it was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompileSource {
    /// Compiled from WebAssembly now.
    Compiled,
    /// Loaded from the on-disk compiled-module cache.
    DiskCache,
}

/// What a call runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// The command's `_start`; exit status comes from `proc_exit`.
    Start,
    /// A named export `() -> ()` or `() -> i32`, after `_initialize` when the module has one.
    Export { name: String, returns_status: bool },
}

/// Per-store state: the WASI context and the memory limiter.
pub(crate) struct GuestState {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) limiter: GuestLimiter,
}

/// Enforces the memory cap and records the peak, so the outcome can say MEMORY_LIMIT and the
/// record can report `memory_used_bytes`. The cap is on the sum of every linear memory of the
/// store: a module has one, a component one per core instance that defines one (a Python or
/// JavaScript component has several), and the task's limit is for the whole call.
pub(crate) struct GuestLimiter {
    memory_limit_bytes: usize,
    /// The sum of the store's linear memories now.
    total_memory_bytes: usize,
    pub(crate) peak_memory_bytes: usize,
    pub(crate) memory_limit_hit: bool,
}

impl GuestLimiter {
    pub(crate) fn new(memory_limit_bytes: u64) -> GuestLimiter {
        GuestLimiter {
            memory_limit_bytes: clamp_to_usize(memory_limit_bytes),
            total_memory_bytes: 0,
            peak_memory_bytes: 0,
            memory_limit_hit: false,
        }
    }
}

/// Tables are tiny in practice; this only stops a guest from exhausting host memory with them.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = (self.total_memory_bytes - current.min(self.total_memory_bytes))
            .saturating_add(desired);
        if total > self.memory_limit_bytes {
            self.memory_limit_hit = true;
            wasmtime::bail!(
                "linear memory would grow to {total} bytes, beyond the task's limit of {} MiB",
                self.memory_limit_bytes / (1024 * 1024)
            );
        }
        self.total_memory_bytes = total;
        self.peak_memory_bytes = self.peak_memory_bytes.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Everything one call needs. Built by the execution manager from the request and task config.
pub struct WasmInvocation {
    pub entry_point: EntryPoint,
    pub stdin: Bytes,
    pub arguments: Vec<String>,
    pub environment: Vec<(String, String)>,
    /// Read-only directories: host path (already checked against the allowed roots), guest path.
    pub preopened_directories: Vec<(PathBuf, String)>,
    pub memory_limit_bytes: u64,
    pub max_output_bytes: u64,
    pub max_log_bytes: u64,
    /// When the call times out (queue wait already subtracted by the caller).
    pub deadline: tokio::time::Instant,
    pub cancellation: CancellationToken,
    /// Receives stdout chunks as they are written, for streaming callers.
    pub output_chunks: Option<OutputChunkSender>,
}

/// What a call produced.
#[derive(Debug)]
pub struct RunReport {
    pub outcome: Outcome,
    pub output: Bytes,
    pub logs: Bytes,
    /// The largest linear memory the instance had, in bytes.
    pub peak_memory_bytes: u64,
    /// Time spent instantiating (the per-call cost of a warm task).
    pub instantiate_duration: Duration,
    /// Runtime figures for the record (an HTTP handler's `http.status`, `http.header.*`).
    pub metrics: BTreeMap<String, String>,
}

/// A compiled module linked against WASI preview1, ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct WasmModule {
    engine: Engine,
    instance_pre: InstancePre<GuestState>,
    exports: Vec<String>,
    has_initialize: bool,
    /// Where the compiled code came from (compiler or disk cache).
    pub compile_source: CompileSource,
}

impl std::fmt::Debug for WasmModule {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("WasmModule")
            .field("exports", &self.exports)
            .field("compile_source", &self.compile_source)
            .finish_non_exhaustive()
    }
}

impl WasmModule {
    pub(crate) fn link(
        engine: &Engine,
        linker: &Linker<GuestState>,
        module: Module,
        compile_source: CompileSource,
    ) -> SpearResult<WasmModule> {
        let instance_pre = linker.instantiate_pre(&module).map_err(|error| {
            SpearError::invalid_argument(format!(
                "module cannot be linked (spearlet provides only wasi_snapshot_preview1 \
                 imports): {error:#}"
            ))
        })?;
        let exports: Vec<String> = module
            .exports()
            .filter(|export| matches!(export.ty(), ExternType::Func(_)))
            .map(|export| export.name().to_owned())
            .collect();
        let has_initialize = exports.iter().any(|name| name == "_initialize");
        Ok(WasmModule {
            engine: engine.clone(),
            instance_pre,
            exports,
            has_initialize,
            compile_source,
        })
    }

    /// The module's exported function names.
    pub fn exported_functions(&self) -> &[String] {
        &self.exports
    }

    /// Resolves a request's `function_name` to what a call runs, or an `InvalidArgument` that
    /// lists the module's exports.
    pub fn resolve_entry_point(&self, function_name: &str) -> SpearResult<EntryPoint> {
        let module = self.instance_pre.module();
        let (export_name, is_start) = if START_ALIASES.contains(&function_name) {
            ("_start", true)
        } else {
            (function_name, false)
        };
        let Some(ExternType::Func(function_type)) = module.get_export(export_name) else {
            return Err(SpearError::invalid_argument(format!(
                "function_name {function_name:?}: the module exports no function {export_name:?}; \
                 its exported functions are [{}]",
                self.exports.join(", ")
            )));
        };
        let no_parameters = function_type.params().len() == 0;
        let results: Vec<ValType> = function_type.results().collect();
        let returns_status = match results.as_slice() {
            [] => false,
            [ValType::I32] if !is_start => true,
            _ => {
                return Err(SpearError::invalid_argument(format!(
                    "function_name {function_name:?}: export {export_name:?} has type \
                     {function_type}; spearlet calls only () -> () or () -> i32"
                )));
            }
        };
        if !no_parameters {
            return Err(SpearError::invalid_argument(format!(
                "function_name {function_name:?}: export {export_name:?} takes parameters; \
                 spearlet passes input on stdin and calls only () -> () or () -> i32"
            )));
        }
        if is_start {
            return Ok(EntryPoint::Start);
        }
        Ok(EntryPoint::Export {
            name: export_name.to_owned(),
            returns_status,
        })
    }

    /// Instantiates the module into a fresh store and runs one call to its end, its deadline or
    /// its cancellation, whichever comes first.
    pub async fn run(&self, mut invocation: WasmInvocation) -> RunReport {
        let (wasi, captures) = match build_call_wasi(GuestWasiSettings::take_from(&mut invocation))
        {
            Ok(built) => built,
            Err(message) => return not_run_report(message),
        };
        let mut store = new_guest_store(&self.engine, wasi, invocation.memory_limit_bytes);

        let mut instantiate_duration = Duration::ZERO;
        let call_end = {
            let call = call_entry_point(
                &self.instance_pre,
                &mut store,
                &invocation.entry_point,
                self.has_initialize,
                &mut instantiate_duration,
            );
            race_deadline_and_cancellation(call, invocation.deadline, &invocation.cancellation)
                .await
        };
        let limiter = &store.data().limiter;
        let outcome =
            captures.outcome_of(&call_end, &invocation.entry_point, limiter.memory_limit_hit);
        captures.into_report(
            outcome,
            limiter.peak_memory_bytes as u64,
            instantiate_duration,
        )
    }

    /// The engine the module was compiled for.
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linked module, ready to instantiate.
    pub(crate) fn instance_pre(&self) -> &InstancePre<GuestState> {
        &self.instance_pre
    }

    /// Whether the module exports the reactor initializer `_initialize`.
    pub(crate) fn has_initialize(&self) -> bool {
        self.has_initialize
    }
}

/// What the WASI context of one call is built from: the parts of a [`WasmInvocation`] that the
/// guest sees as its process environment.
pub(crate) struct GuestWasiSettings<'invocation> {
    pub(crate) stdin: Bytes,
    pub(crate) arguments: &'invocation [String],
    pub(crate) environment: &'invocation [(String, String)],
    pub(crate) preopened_directories: &'invocation [(PathBuf, String)],
    pub(crate) max_output_bytes: u64,
    pub(crate) max_log_bytes: u64,
    pub(crate) output_chunks: Option<OutputChunkSender>,
}

impl GuestWasiSettings<'_> {
    /// Borrows the invocation's environment and moves its stdin and its stdout chunk sender
    /// out (the sender must end up owned by the WASI context alone, so that dropping the context
    /// closes the caller's stream).
    pub(crate) fn take_from(invocation: &mut WasmInvocation) -> GuestWasiSettings<'_> {
        GuestWasiSettings {
            stdin: std::mem::take(&mut invocation.stdin),
            arguments: &invocation.arguments,
            environment: &invocation.environment,
            preopened_directories: &invocation.preopened_directories,
            max_output_bytes: invocation.max_output_bytes,
            max_log_bytes: invocation.max_log_bytes,
            output_chunks: invocation.output_chunks.take(),
        }
    }
}

/// The captures behind one call's stdout (the output) and stderr (the logs).
pub(crate) struct CallCaptures {
    pub(crate) stdout: CapturedOutput,
    pub(crate) stderr: CapturedOutput,
}

impl CallCaptures {
    /// Classifies how a call ended into the outcome the record carries.
    pub(crate) fn outcome_of(
        &self,
        call_end: &CallEnd<i32>,
        entry_point: &EntryPoint,
        memory_limit_hit: bool,
    ) -> Outcome {
        match call_end {
            CallEnd::Returned(Ok(status)) => status_outcome(entry_point, *status),
            CallEnd::Returned(Err(error)) => self.error_outcome(error, memory_limit_hit),
            CallEnd::DeadlinePassed | CallEnd::Cancelled => call_end.stopped_outcome(),
        }
    }

    /// Classifies an error the guest code returned with (trap, `proc_exit`, memory limit,
    /// output cap).
    pub(crate) fn error_outcome(&self, error: &wasmtime::Error, memory_limit_hit: bool) -> Outcome {
        classify_error(
            error,
            memory_limit_hit,
            (&self.stdout, "stdout"),
            (&self.stderr, "stderr"),
        )
    }

    /// The report of a call that ran the guest, with everything it wrote.
    pub(crate) fn into_report(
        self,
        outcome: Outcome,
        peak_memory_bytes: u64,
        instantiate_duration: Duration,
    ) -> RunReport {
        RunReport {
            outcome,
            output: self.stdout.take_contents(),
            logs: self.stderr.take_contents(),
            peak_memory_bytes,
            instantiate_duration,
            metrics: BTreeMap::new(),
        }
    }
}

/// Builds the fresh WASI preview 1 context of one call (see [`call_wasi_builder`]).
pub(crate) fn build_call_wasi(
    settings: GuestWasiSettings<'_>,
) -> Result<(WasiP1Ctx, CallCaptures), String> {
    let (mut builder, captures) = call_wasi_builder(settings)?;
    Ok((builder.build_p1(), captures))
}

/// The WASI context of one call, for either WASI version: in-memory stdin, capped stdout and
/// stderr, arguments, environment and read-only preopened directories; no network (every socket
/// address is denied, WASI's default). `Err` carries the message of a directory that cannot be
/// preopened.
pub(crate) fn call_wasi_builder(
    settings: GuestWasiSettings<'_>,
) -> Result<(WasiCtxBuilder, CallCaptures), String> {
    let stdout = CapturedOutput::new(
        clamp_to_usize(settings.max_output_bytes),
        settings.output_chunks,
    );
    let stderr = CapturedOutput::new(clamp_to_usize(settings.max_log_bytes), None);
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdin(MemoryInputPipe::new(settings.stdin))
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .args(settings.arguments)
        .envs(settings.environment);
    for (host_directory, guest_directory) in settings.preopened_directories {
        if let Err(error) =
            builder.preopened_dir(host_directory, guest_directory, FsPerms::ReadOnly)
        {
            return Err(format!(
                "cannot preopen {} as {guest_directory}: {error:#}",
                host_directory.display()
            ));
        }
    }
    Ok((builder, CallCaptures { stdout, stderr }))
}

/// The report of a call whose guest never ran (its WASI context could not be built, or the
/// call was refused), failed as `TRAP` with `message`.
pub(crate) fn not_run_report(message: String) -> RunReport {
    RunReport {
        outcome: Outcome::Failed {
            code: ErrorCode::Trap,
            message,
        },
        output: Bytes::new(),
        logs: Bytes::new(),
        peak_memory_bytes: 0,
        instantiate_duration: Duration::ZERO,
        metrics: BTreeMap::new(),
    }
}

/// A new store holding `wasi`, with the memory limiter installed and epoch yielding armed.
pub(crate) fn new_guest_store(
    engine: &Engine,
    wasi: WasiP1Ctx,
    memory_limit_bytes: u64,
) -> Store<GuestState> {
    let state = GuestState {
        wasi,
        limiter: GuestLimiter::new(memory_limit_bytes),
    };
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limiter);
    arm_epoch_yield(&mut store);
    store
}

/// Makes the guest yield to the async executor at every epoch tick: a busy guest then gives the
/// surrounding `select!` a chance to notice its deadline or cancellation. The deadline is
/// relative to the current epoch, so a store that runs more than one call re-arms it per call.
pub(crate) fn arm_epoch_yield<State>(store: &mut Store<State>) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_async_yield_and_update(1);
}

/// How a guest call (or instantiation) ended.
pub(crate) enum CallEnd<CallResult> {
    /// The guest code returned, normally or with a trap or `proc_exit`.
    Returned(wasmtime::Result<CallResult>),
    /// The deadline passed first; the guest was stopped mid-run.
    DeadlinePassed,
    /// The cancellation token fired first; the guest was stopped mid-run.
    Cancelled,
}

impl<CallResult> CallEnd<CallResult> {
    /// The outcome of a call the host stopped: TIMEOUT or CANCELLED (for a call that returned,
    /// the runtime classifies what it returned instead).
    pub(crate) fn stopped_outcome(&self) -> Outcome {
        match self {
            CallEnd::DeadlinePassed => Outcome::TimedOut {
                message: "the call did not finish before its deadline".into(),
            },
            _ => Outcome::Cancelled {
                reason: "cancelled".into(),
            },
        }
    }
}

/// Runs `call` until it ends, `deadline` passes or `cancellation` fires, whichever comes first.
/// Losing the race drops the call future, which stops the guest at its next epoch yield or
/// host-call await.
pub(crate) async fn race_deadline_and_cancellation<CallResult>(
    call: impl Future<Output = wasmtime::Result<CallResult>>,
    deadline: tokio::time::Instant,
    cancellation: &CancellationToken,
) -> CallEnd<CallResult> {
    tokio::pin!(call);
    tokio::select! {
        result = &mut call => CallEnd::Returned(result),
        () = tokio::time::sleep_until(deadline) => CallEnd::DeadlinePassed,
        () = cancellation.cancelled() => CallEnd::Cancelled,
    }
}

async fn call_entry_point(
    instance_pre: &InstancePre<GuestState>,
    store: &mut Store<GuestState>,
    entry_point: &EntryPoint,
    has_initialize: bool,
    instantiate_duration: &mut Duration,
) -> wasmtime::Result<i32> {
    let instantiate_started = Instant::now();
    let instance = instance_pre.instantiate_async(&mut *store).await?;
    *instantiate_duration = instantiate_started.elapsed();
    match entry_point {
        EntryPoint::Start => {
            let start = instance.get_typed_func::<(), ()>(&mut *store, "_start")?;
            start.call_async(&mut *store, ()).await?;
            Ok(0)
        }
        EntryPoint::Export {
            name,
            returns_status,
        } => {
            if has_initialize {
                call_initialize(instance, store).await?;
            }
            call_export(instance, store, name, *returns_status).await
        }
    }
}

/// Runs the reactor initializer `_initialize` of an instance that has one.
pub(crate) async fn call_initialize(
    instance: Instance,
    store: &mut Store<GuestState>,
) -> wasmtime::Result<()> {
    let initialize = instance.get_typed_func::<(), ()>(&mut *store, "_initialize")?;
    initialize.call_async(&mut *store, ()).await
}

/// Calls a named export `() -> i32` (its result is the status) or `() -> ()` (status 0).
pub(crate) async fn call_export(
    instance: Instance,
    store: &mut Store<GuestState>,
    name: &str,
    returns_status: bool,
) -> wasmtime::Result<i32> {
    if returns_status {
        let function = instance.get_typed_func::<(), i32>(&mut *store, name)?;
        function.call_async(&mut *store, ()).await
    } else {
        let function = instance.get_typed_func::<(), ()>(&mut *store, name)?;
        function.call_async(&mut *store, ()).await?;
        Ok(0)
    }
}

pub(crate) fn status_outcome(entry_point: &EntryPoint, status: i32) -> Outcome {
    match entry_point {
        _ if status == 0 => Outcome::Completed,
        EntryPoint::Export { name, .. } => Outcome::Failed {
            code: ErrorCode::ReturnCode,
            message: format!("function {name:?} returned {status}"),
        },
        EntryPoint::Start => Outcome::Failed {
            code: ErrorCode::ExitCode,
            message: format!("exited with code {status}"),
        },
    }
}

fn classify_error(
    error: &wasmtime::Error,
    memory_limit_hit: bool,
    stdout: (&CapturedOutput, &str),
    stderr: (&CapturedOutput, &str),
) -> Outcome {
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        if exit.0 == 0 {
            return Outcome::Completed;
        }
        return Outcome::Failed {
            code: ErrorCode::ExitCode,
            message: format!("exited with code {}", exit.0),
        };
    }
    if memory_limit_hit {
        return Outcome::Failed {
            code: ErrorCode::MemoryLimit,
            message: format!("{error:#}"),
        };
    }
    for (capture, stream_name) in [stdout, stderr] {
        if capture.overflowed() {
            return Outcome::Failed {
                code: ErrorCode::OutputTooLarge,
                message: format!(
                    "the guest wrote more than the {stream_name} cap of {} bytes",
                    capture.capacity()
                ),
            };
        }
    }
    Outcome::Failed {
        code: ErrorCode::Trap,
        message: format!("{error:#}"),
    }
}

pub(crate) fn clamp_to_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}
