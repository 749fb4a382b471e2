//! The store: where tasks and execution records live, in SQLite, surviving `kill -9`.
//!
//! Architecture invariants:
//! - The rest of the node talks to storage only through [`DurableStore`]; its execution writes
//!   are asynchronous, so that callers choose between queued, durable and memory-only writes.
//! - Retention never evicts a non-terminal record: an execution that is still pending or
//!   running is always answerable.
//! - Listing is ordered by the execution's monotonic `sequence`, so pagination is stable while
//!   new executions arrive.
//!
//! The listing semantics are checked against a plain in-memory model of them, which lives with
//! the tests (`tests/it/reference_store.rs`): only tests use it.

#![forbid(unsafe_code)]

mod durable;

pub use durable::{
    DurableStore, DurableStoreConfig, Recovered, StoreFailure, WriteDistributions, WriteStats,
};

use spearlet_core::{ExecutionRecord, ExecutionStatus};

/// Which executions a listing returns.
#[derive(Clone, Debug, Default)]
pub struct ExecutionQuery {
    pub task_id: Option<String>,
    pub status: Option<ExecutionStatus>,
    /// Only executions with a larger sequence (the previous page's last one).
    pub after_sequence: Option<u64>,
    pub limit: usize,
    /// Return the newest `limit` matches instead of the oldest (still in ascending order).
    pub newest: bool,
    /// Walk from the newest execution backwards: the page is in descending sequence order and
    /// `after_sequence` means "older than this one".
    pub descending: bool,
    /// Only executions submitted at or after this instant (Unix milliseconds).
    pub submitted_at_or_after_ms: Option<i64>,
    /// Only executions submitted strictly before this instant (Unix milliseconds).
    pub submitted_before_ms: Option<i64>,
}

/// One page of executions, ascending by sequence.
#[derive(Clone, Debug, Default)]
pub struct ExecutionPage {
    pub executions: Vec<ExecutionRecord>,
    pub has_more: bool,
}
