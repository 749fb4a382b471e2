//! spearlet's domain model: tasks and their configuration, executions and their outcomes, and
//! the error type every layer returns.
//!
//! Architecture invariant: this crate does no IO and knows nothing about gRPC, wasmtime or
//! storage engines. Everything here is plain data plus the rules that validate it, so it can be
//! unit-tested exhaustively and shared by every other crate.

#![forbid(unsafe_code)]

pub mod error;
pub mod execution;
pub mod histogram;
pub mod ids;
pub mod outbound_hosts;
pub mod pool_settings;
pub mod process_settings;
pub mod record;
pub mod task_config;

pub use error::{ErrorKind, SpearError, SpearResult};
pub use execution::{ErrorCode, ExecutionMode, ExecutionStatus, Outcome};
pub use outbound_hosts::AllowedOutboundHosts;
pub use pool_settings::{AutoscaleSettings, Isolation, PoolSettings, Priority, SchedulingPolicy};
pub use process_settings::{PROCESS_DEFAULT_MEMORY_LIMIT_MB, ProcessMode, ProcessSettings};
pub use record::{
    ArtifactRecord, ExecutionRecord, ResultEncoding, StoredRequest, TaskRecord, TimelineEntry,
};
pub use task_config::{RuntimeKind, TaskConfig, TaskConfigDefaults};
