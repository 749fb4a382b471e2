//! The store boundary: where tasks and execution records live.
//!
//! Architecture invariants:
//! - The rest of the node talks to storage only through [`Store`]; no caller knows whether
//!   records are in memory or on disk.
//! - Retention never evicts a non-terminal record: an execution that is still pending or
//!   running is always answerable.
//! - Listing is ordered by the execution's monotonic `sequence`, so pagination is stable while
//!   new executions arrive.
//!
//! Two implementations exist: [`MemoryStore`] (records live as long as the process) and
//! [`DurableStore`] (SQLite, records survive `kill -9`). `DurableStore` does not implement
//! [`Store`]: its execution writes are asynchronous, so that callers can choose between queued and
//! durable writes.

#![forbid(unsafe_code)]

mod durable;
mod memory;

pub use durable::{
    DurableStore, DurableStoreConfig, Recovered, StoreFailure, WriteDistributions, WriteStats,
};
pub use memory::MemoryStore;

use spearlet_core::{ExecutionRecord, ExecutionStatus, SpearResult, TaskRecord};

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
}

/// One page of executions, ascending by sequence.
#[derive(Clone, Debug, Default)]
pub struct ExecutionPage {
    pub executions: Vec<ExecutionRecord>,
    pub has_more: bool,
}

/// Storage of tasks and execution records.
pub trait Store: Send + Sync + 'static {
    fn put_task(&self, task: &TaskRecord) -> SpearResult<()>;
    /// Returns whether the task existed.
    fn delete_task(&self, task_id: &str) -> SpearResult<bool>;
    fn tasks(&self) -> SpearResult<Vec<TaskRecord>>;

    /// Inserts or replaces the record with this execution id.
    fn put_execution(&self, record: &ExecutionRecord) -> SpearResult<()>;
    fn execution(&self, execution_id: &str) -> SpearResult<Option<ExecutionRecord>>;
    fn list_executions(&self, query: &ExecutionQuery) -> SpearResult<ExecutionPage>;
    /// Deletes every record of the task and returns how many there were.
    fn delete_executions_of_task(&self, task_id: &str) -> SpearResult<usize>;
    /// Calls `visitor` for every record, in sequence order (for statistics).
    fn visit_executions(&self, visitor: &mut dyn FnMut(&ExecutionRecord)) -> SpearResult<()>;
    fn execution_count(&self) -> SpearResult<usize>;
}
