//! The WebAssembly runtime of spearlet.
//!
//! Shape (after wasmtime and Spin): one [`WasmEngine`] per node, shared by every task, with the
//! pooling allocator and epoch interruption driven by one ticker thread. Loading a task compiles
//! and links its module once into a [`WasmModule`] (an `InstancePre`, the warm part); every call
//! instantiates it into a fresh `Store`, so calls never see each other's state.
//!
//! Architecture invariants:
//! - Guest failure (trap, non-zero exit, timeout, cancellation) is an [`spearlet_core::Outcome`]
//!   in the [`RunReport`]; `SpearError` is only for modules the node cannot load.
//! - Host calls are async (wasmtime's async WASI) and busy guests yield at every epoch tick, so a
//!   call future is always promptly droppable: that is how timeouts and cancellation stop it.
//! - No global state: the engine, the linker and the compiled-module cache are owned values.

#![deny(unsafe_code)]

mod compiled_module_cache;
mod engine;
mod guest_io;
mod module;

pub use engine::{WasmEngine, WasmEngineConfig};
pub use guest_io::OutputChunkSender;
pub use module::{CompileSource, EntryPoint, RunReport, WasmInvocation, WasmModule};
