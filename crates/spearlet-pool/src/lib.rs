//! The instance layer of spearlet: per-task **InstancePools** of warm instances, the
//! **InstanceScheduler** that picks one for each call, the bounded priority queue calls wait in
//! when every instance is busy, and the autoscaler that sizes each pool.
//!
//! Shape: one [`Dispatcher`] per node owns every pool and the queue under one lock, so the global
//! limit (`max_concurrent_executions`), the per-pool limit (`max_instances`) and the priority
//! order are decided together; the lock is held only for bookkeeping (never across a guest call
//! or an instance start). The runtime behind an instance is a type parameter: the pool knows how
//! to count, pick, start and retire instances, not what they run.
//!
//! Architecture invariants:
//! - After every state change, no waiting call could be granted an instance: the dispatcher hands
//!   instances out before it lets go of the lock.
//! - A call holds its instance through an [`InstanceLease`]; dropping the lease gives it back.
//!   Instances are counted against `max_instances` from the moment they are reserved (state
//!   Creating) until they are removed.
//! - Time comes from `tokio::time`, so tests drive windows and timeouts with a paused clock.

pub mod autoscaler;
mod dispatcher;
mod queue;
pub mod scheduler;

pub use dispatcher::{
    AcquireRequest, Dispatcher, DispatcherConfig, DispatcherSnapshot, InstanceFactory,
    InstanceLease, InstanceSnapshot, InstanceStartError, InstanceState, PoolHandle, PoolSnapshot,
    Rejection, Ticket, WaitPercentiles,
};
