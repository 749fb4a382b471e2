//! The runtime boundary: what the TaskExecutionManager hands a runtime for one call, and what
//! the runtime hands back.
//!
//! One call value ([`FunctionCall`]) and one report ([`CallReport`]) for every runtime. A runtime
//! crate (`spearlet-wasm`, `spearlet-process`) turns the call into what its guest needs — WASI
//! argv, environment and stdio for a wasm guest; a process environment and argv for an exec
//! process; a Runtime API invocation for a Lambda worker — and classifies how the guest ended
//! into the report's [`spearlet_core::Outcome`]. Adding a runtime means a new crate module that
//! takes a `FunctionCall` and returns a `CallReport`, not edits across the manager.
//!
//! Architecture invariants:
//! - Plain data plus the deadline and cancellation primitives every runtime races against
//!   (tokio's clock, so tests can pause it). No IO, no wasmtime, no processes.
//! - The guest-visible `SPEAR_*` environment is composed in one place
//!   ([`FunctionCall::guest_environment`]), so every runtime that passes an environment passes
//!   the same one.
//! - A figure a runtime cannot measure is `None` in the report, never a made-up zero.

#![forbid(unsafe_code)]

mod call;
mod trace;

pub use call::{
    CallLimits, CallReport, FunctionCall, HTTP_HEADER_METRIC_PREFIX, HTTP_STATUS_METRIC,
    HttpResponseHead, HttpResponseHeadSender, OutputChunkSender, upper_snake,
};
pub use trace::TraceContext;
