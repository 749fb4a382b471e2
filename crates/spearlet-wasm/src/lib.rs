//! The WebAssembly runtime of spearlet.
//!
//! Shape (after wasmtime and Spin): one [`WasmEngine`] per node, shared by every task, with the
//! pooling allocator and epoch interruption driven by one ticker thread. Loading a task compiles
//! and links its artifact once: a core module (WASI preview 1) into a [`WasmModule`], a component
//! (WASI 0.2; told apart by the binary header) into a [`WasmComponent`] — each an
//! `InstancePre`, the warm part. A component is a command or an HTTP handler
//! ([`ComponentWorld`]) and always runs per call (see `component.rs`). A module's call runs in
//! one of two modes, chosen per task by `spearlet.isolation`:
//! - `per_call` ([`WasmModule::run`]): every call instantiates the module into a fresh `Store`,
//!   so calls never see each other's state.
//! - `reuse` ([`WasmModule::instantiate_reusable`], then [`ReusableInstance::call`]): one live
//!   instance, initialised once with `_initialize`, serves call after call of a reactor's named
//!   exports and keeps its state (globals, linear memory) between them. Each call still gets a
//!   fresh WASI context (stdin, stdout, stderr, arguments, environment), and an instance whose
//!   call ended abnormally is retired.
//!
//! Architecture invariants:
//! - Guest failure (trap, non-zero exit, timeout, cancellation) is an [`spearlet_core::Outcome`]
//!   in the [`RunReport`], classified the same way in both modes; `SpearError` is only for
//!   modules the node cannot load or cannot use in the requested mode.
//! - Host calls are async (wasmtime's async WASI) and busy guests yield at every epoch tick, so a
//!   call future is always promptly droppable: that is how timeouts and cancellation stop it.
//! - The runtime boundary is `spearlet-runtime`'s `FunctionCall` and `CallReport`
//!   ([`WasmModule::run_call`], [`ReusableInstance::run_call`]); the WASI argv and environment
//!   are composed here, from the call, and nowhere else.
//! - No global state: the engine, the linker and the compiled-module cache are owned values.

#![deny(unsafe_code)]

mod compiled_module_cache;
mod component;
mod engine;
mod function_call;
mod guest_io;
mod module;
mod reusable;

pub use component::{
    ComponentEntry, ComponentInvocation, ComponentWorld, HTTP_METHOD_METADATA_KEY,
    HTTP_PATH_METADATA_KEY, WasmComponent,
};
pub use engine::{LoadedWasm, WasmEngine, WasmEngineConfig};
pub use function_call::WasmTaskSettings;
pub use guest_io::OutputChunkSender;
pub use module::{CompileSource, EntryPoint, RunReport, WasmInvocation, WasmModule};
pub use reusable::{
    InstanceStartFailure, ReusableCallReport, ReusableInstance, ReusableInstanceSetup,
};

/// The version of the wasmtime crate this build links, e.g. `"48.0.8"`, as `Cargo.lock` resolved
/// it (`build.rs` reads the lock file; wasmtime itself exports no version constant). `None` when
/// the crate was built without the workspace's lock file.
pub const WASMTIME_VERSION: Option<&str> = option_env!("SPEARLET_WASMTIME_VERSION");
