//! A durable store: tasks and execution records in one SQLite file, written off the hot path.
//!
//! The node must survive `kill -9` with its tasks, its execution records (status timeline,
//! attempts, output and stderr up to their caps) and its async queue (the pending records) on
//! disk, yet a synchronous invocation must never wait for an fsync. So executions are written by
//! one writer thread in group-committed batches, and readers are served from an in-memory index
//! plus the not-yet-committed records, so they see every write the moment it is queued.
//!
//! # Why SQLite (rusqlite, bundled) and not redb
//!
//! - Crash safety: WAL mode with `synchronous=FULL` fsyncs every commit; a committed batch
//!   survives `kill -9` and power loss, and a torn write is rolled back on the next open.
//! - Secondary indexes and ordered range queries: the table is keyed by `sequence` (the
//!   pagination key) with indexes on `execution_id`, `(task_id, sequence)` and
//!   `(status, sequence)`, so listing by task, by status or from a sequence needs no hand-written
//!   index tables, as redb would.
//! - Retention is one `DELETE`; deleting a task's history is one `DELETE`.
//! - Operators can open the file with the `sqlite3` CLI: every field is a column, enums are
//!   stored by their wire names, and the metric and metadata maps are JSON text.
//! - The bundled build pins the SQLite version and needs no system library.
//!
//! # How a write flows
//!
//! [`DurableStore::put_execution`] waits for a slot in the bounded queue (backpressure), then,
//! under the index lock, records the summary and the full record as unflushed and queues the
//! write, so queue order equals index order. The writer thread drains up to `max_batch`
//! operations, applies them in one transaction, commits (one fsync), answers the callers of
//! [`DurableStore::put_execution_durable`] and [`DurableStore::flush`], and drops the committed
//! versions from the unflushed map. Retention runs on the same thread between batches and on a
//! timer while no write arrives.
//!
//! Architecture invariants:
//! - Only the writer thread writes executions; task writes are rare and synchronous on a second
//!   connection, which also serves full-record reads.
//! - The in-memory index answers existence, listings and counts; SQLite is read only for the
//!   output and logs of one committed record.
//! - Retention never deletes a pending or running execution, nor one with a queued write.

mod index;
mod schema;
mod writer;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use rusqlite::Connection;
use spearlet_core::histogram::HistogramSnapshot;
use spearlet_core::{ExecutionRecord, SpearError, SpearResult, TaskRecord};
use tokio::sync::{mpsc, oneshot};

use crate::{ExecutionPage, ExecutionQuery};
use index::ExecutionIndex;
use writer::{RetentionPolicy, SharedState, WriteCounters, WriteKind, WriteOperation, Writer};

/// Where the durable store keeps its file and how much it keeps.
#[derive(Clone, Debug)]
pub struct DurableStoreConfig {
    /// The SQLite file. Its directory is created when missing; SQLite keeps `<path>-wal` and
    /// `<path>-shm` next to it, and all three belong together.
    pub path: PathBuf,
    /// Beyond this many executions, the oldest terminal ones are deleted. Pending and running
    /// executions are never deleted, so the store can hold more while they are outstanding.
    /// Enforced between batches, at most about once a second (and a second after the last write
    /// when the store then goes idle), so the count can briefly exceed it by about a thousand.
    pub max_execution_records: usize,
    /// Terminal executions that completed longer ago than this are deleted. `None` keeps them
    /// until `max_execution_records` pushes them out. Enforced after writes, at open, and on a
    /// timer while the store is idle (every tenth of the TTL, at least every second), so an idle
    /// store drops an expired record within about a tenth of the TTL (or a second) of its expiry.
    pub execution_ttl: Option<Duration>,
    /// How many writes may wait for the writer thread. When full, `put_execution` waits for a
    /// slot: backpressure instead of unbounded memory when the disk cannot keep up. Each queued
    /// write holds its full record (output and logs included) in memory.
    pub write_queue_capacity: usize,
    /// The most operations committed in one transaction. Larger batches amortise the fsync over
    /// more records; smaller ones bound how long a durable write waits behind others.
    pub max_batch: usize,
}

impl DurableStoreConfig {
    pub const DEFAULT_MAX_EXECUTION_RECORDS: usize = 100_000;
    pub const DEFAULT_WRITE_QUEUE_CAPACITY: usize = 4096;
    pub const DEFAULT_MAX_BATCH: usize = 512;

    /// The defaults, with the file at `path` and no TTL.
    pub fn new(path: impl Into<PathBuf>) -> DurableStoreConfig {
        DurableStoreConfig {
            path: path.into(),
            max_execution_records: DurableStoreConfig::DEFAULT_MAX_EXECUTION_RECORDS,
            execution_ttl: None,
            write_queue_capacity: DurableStoreConfig::DEFAULT_WRITE_QUEUE_CAPACITY,
            max_batch: DurableStoreConfig::DEFAULT_MAX_BATCH,
        }
    }
}

/// What the node finds on disk when it starts: what it must re-register and re-run.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    /// Every stored task, ordered by task id.
    pub tasks: Vec<TaskRecord>,
    /// Full records of the executions that were pending or running when the node stopped, in
    /// sequence order: the async queue to resume and the attempts that were cut off.
    pub unfinished_executions: Vec<ExecutionRecord>,
    /// The highest sequence ever stored (even if retention deleted it since); the next execution
    /// must take a larger one. Zero for a new file.
    pub highest_sequence: u64,
}

/// Counters of the writer thread, for metrics. Real measurements, not estimates.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WriteStats {
    /// Transactions committed by the writer (retention deletes not counted).
    pub batches_committed: u64,
    /// Batches whose commit failed; their writes were retried in later batches.
    pub failed_batches: u64,
    /// Queued operations (puts, task history deletions, flush markers) in committed batches.
    pub operations_committed: u64,
    /// Put operations made durable, including those a later put of the same id in the same
    /// batch superseded.
    pub records_written: u64,
    /// Rows actually written: at most one per execution id per batch.
    pub rows_upserted: u64,
    /// Records retention took out of the store, counted as they leave the index (when readers
    /// stop seeing them), before their rows are deleted from the file.
    pub records_deleted_by_retention: u64,
    /// Operations in the most recent committed batch.
    pub last_batch_size: u64,
    /// `operations_committed / batches_committed`.
    pub mean_batch_size: f64,
    /// Commit latency is the whole transaction, from `BEGIN` to the return of the fsynced
    /// `COMMIT`, in microseconds.
    pub last_commit_latency_us: u64,
    pub total_commit_latency_us: u64,
    pub max_commit_latency_us: u64,
    /// Operations waiting in the queue right now.
    pub queue_depth: usize,
}

/// Why the writer thread cannot commit right now: set when a batch's commit fails, cleared when a
/// commit succeeds again (the failed batch's writes are retried until one does). While it is set,
/// durable puts, flushes and task history deletions return errors, and queued writes wait in
/// memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreFailure {
    /// The error of the most recent failed commit, as SQLite reported it.
    pub error: String,
    /// When the first commit of this run of failures failed, in Unix milliseconds.
    pub failing_since_unix_ms: i64,
    /// How many commits have failed in a row.
    pub consecutive_failed_commits: u64,
}

/// Distributions of the writer thread's committed batches, for metrics: one observation per
/// batch, from the same measurements as [`WriteStats`].
#[derive(Clone, Debug, PartialEq)]
pub struct WriteDistributions {
    /// Commit latency (`BEGIN` to the fsynced `COMMIT`), in seconds.
    pub commit_latency_seconds: HistogramSnapshot,
    /// Operations per batch (as `WriteStats::last_batch_size`).
    pub batch_operations: HistogramSnapshot,
}

/// Tasks and execution records in SQLite, with a write path that never waits for the disk
/// unless asked to. Share it through an `Arc`; every method takes `&self`.
///
/// Dropping the store closes the queue and waits for the writer thread to commit what was
/// queued, so the drop blocks for about one commit.
pub struct DurableStore {
    shared: Arc<SharedState>,
    /// Serves full-record reads of committed executions and the synchronous task writes. WAL
    /// lets it read while the writer thread writes.
    direct_connection: Mutex<Connection>,
    /// A copy of the tasks table; updated while `direct_connection` is held, after the write
    /// committed, so it follows the file's order of writes.
    tasks: RwLock<BTreeMap<String, TaskRecord>>,
    /// `None` only while dropping.
    operation_sender: Option<mpsc::Sender<WriteOperation>>,
    writer_thread: Option<JoinHandle<()>>,
    /// The writer thread, to unpark it when a write somebody waits for is queued while it
    /// gathers a batch.
    writer_wakeup: thread::Thread,
}

impl DurableStore {
    /// Opens or creates the file, loads the index and starts the writer thread. Retention is
    /// applied once before returning.
    pub fn open(config: DurableStoreConfig) -> SpearResult<(DurableStore, Recovered)> {
        if config.write_queue_capacity == 0 || config.max_batch == 0 {
            return Err(SpearError::invalid_argument(
                "the store's write_queue_capacity and max_batch must be at least 1",
            ));
        }
        if let Some(directory) = config.path.parent()
            && !directory.as_os_str().is_empty()
        {
            std::fs::create_dir_all(directory).map_err(|error| {
                SpearError::internal(format!(
                    "creating the store directory {}: {error}",
                    directory.display()
                ))
            })?;
        }
        let write_connection = schema::open_connection(&config.path)?;
        schema::create_schema(&write_connection)?;
        let direct_connection = schema::open_connection(&config.path)?;
        let loaded = schema::load(&write_connection)?;

        let shared = Arc::new(SharedState {
            index: RwLock::new(ExecutionIndex::from_summaries(loaded.summaries)),
            counters: WriteCounters::default(),
            write_failure: Mutex::new(None),
        });
        let (operation_sender, operation_receiver) = mpsc::channel(config.write_queue_capacity);
        let mut writer = Writer::new(
            write_connection,
            operation_receiver,
            Arc::clone(&shared),
            RetentionPolicy {
                max_execution_records: config.max_execution_records,
                execution_ttl: config.execution_ttl,
            },
            config.max_batch,
        );
        writer
            .apply_retention()
            .map_err(|error| error.context("applying retention while opening the store"))?;
        let writer_thread = thread::Builder::new()
            .name("spearlet-store-writer".into())
            .spawn(move || writer.run())
            .map_err(|error| {
                SpearError::internal(format!("starting the store writer thread: {error}"))
            })?;

        let writer_wakeup = writer_thread.thread().clone();
        let tasks = loaded
            .tasks
            .iter()
            .map(|task| (task.task_id.clone(), task.clone()))
            .collect();
        let store = DurableStore {
            shared,
            direct_connection: Mutex::new(direct_connection),
            tasks: RwLock::new(tasks),
            operation_sender: Some(operation_sender),
            writer_thread: Some(writer_thread),
            writer_wakeup,
        };
        let recovered = Recovered {
            tasks: loaded.tasks,
            unfinished_executions: loaded.unfinished_executions,
            highest_sequence: loaded.highest_sequence,
        };
        Ok((store, recovered))
    }

    /// Stores or replaces a task; durable when it returns. Blocks for one fsync.
    pub fn put_task(&self, task: &TaskRecord) -> SpearResult<()> {
        let mut connection = self.direct_connection.lock();
        schema::put_task(&mut connection, task)?;
        self.tasks
            .write()
            .insert(task.task_id.clone(), task.clone());
        Ok(())
    }

    /// Deletes a task durably and returns whether it existed. Its executions stay; see
    /// [`DurableStore::delete_executions_of_task`].
    pub fn delete_task(&self, task_id: &str) -> SpearResult<bool> {
        let mut connection = self.direct_connection.lock();
        let existed = schema::delete_task(&mut connection, task_id)?;
        self.tasks.write().remove(task_id);
        Ok(existed)
    }

    /// Every task, ordered by task id. Served from memory.
    pub fn tasks(&self) -> SpearResult<Vec<TaskRecord>> {
        Ok(self.tasks.read().values().cloned().collect())
    }

    /// Inserts or replaces the record with this execution id. Returns once the write is queued:
    /// readers see it immediately, but it is not durable until the writer commits it (see
    /// [`DurableStore::flush`]). Waits only while the queue is full.
    pub async fn put_execution(&self, record: ExecutionRecord) -> SpearResult<()> {
        self.queue_put(record, None).await
    }

    /// Like [`DurableStore::put_execution`], but returns after the batch carrying the record
    /// committed. If that commit fails the error is returned; the record stays visible and its
    /// write is retried with the next batch.
    pub async fn put_execution_durable(&self, record: ExecutionRecord) -> SpearResult<()> {
        let (waiter, committed) = oneshot::channel();
        self.queue_put(record, Some(waiter)).await?;
        committed.await.map_err(|_| writer_stopped())?
    }

    /// The full record, payloads and timeline included: the newest queued version if it is not
    /// committed yet, else the committed row.
    pub fn execution(&self, execution_id: &str) -> SpearResult<Option<ExecutionRecord>> {
        let sequence = {
            let index = self.shared.index.read();
            if let Some(unflushed) = index.unflushed_record(execution_id) {
                drop(index);
                return Ok(Some(ExecutionRecord::clone(&unflushed)));
            }
            let Some(sequence) = index.sequence_of(execution_id) else {
                return Ok(None);
            };
            sequence
        };
        let connection = self.direct_connection.lock();
        schema::read_execution(&connection, sequence, execution_id)
    }

    /// A page of executions, with the semantics the tests' reference model (`tests/it/reference_store.rs`) spells out, served from the
    /// in-memory index. The records are summaries: their `output`, `logs`, `request` and
    /// `timeline` are empty; [`DurableStore::execution`] returns the full record.
    pub fn list_executions(&self, query: &ExecutionQuery) -> SpearResult<ExecutionPage> {
        Ok(self.shared.index.read().page(query))
    }

    /// Calls `visitor` with every execution in sequence order: a summary (see
    /// [`DurableStore::list_executions`]) for committed ones, the full record for the few whose
    /// newest version is still queued.
    /// The index is read-locked meanwhile, so the visitor must not call back into the store.
    pub fn visit_executions(&self, visitor: &mut dyn FnMut(&ExecutionRecord)) -> SpearResult<()> {
        for summary in self.shared.index.read().summaries() {
            visitor(summary);
        }
        Ok(())
    }

    /// A number that grows with every put (an execution added or updated) since the store was
    /// opened: a reader that saw it change knows a listing may have changed.
    pub fn last_put_version(&self) -> u64 {
        self.shared.index.read().last_version()
    }

    pub fn execution_count(&self) -> SpearResult<usize> {
        Ok(self.shared.index.read().len())
    }

    /// Deletes every execution of the task and returns how many there were. Durable when it
    /// returns; readers stop seeing them immediately.
    pub async fn delete_executions_of_task(&self, task_id: &str) -> SpearResult<usize> {
        let permit = self.reserve_queue_slot().await?;
        let (waiter, committed) = oneshot::channel();
        let deleted_count = {
            let mut index = self.shared.index.write();
            let deleted_count = index.remove_task(task_id);
            permit.send(WriteOperation {
                kind: WriteKind::DeleteExecutionsOfTask {
                    task_id: task_id.to_owned(),
                },
                committed: Some(waiter),
            });
            deleted_count
        };
        self.wake_writer();
        committed.await.map_err(|_| writer_stopped())??;
        Ok(deleted_count)
    }

    /// Withdraws an execution whose acceptance could not be made durable
    /// ([`DurableStore::put_execution_durable`] failed, and its caller was told so): it leaves the
    /// index at once, and a delete of its row is queued behind the put that the writer keeps
    /// retrying, so the execution never reappears — not now, and not after a restart, where it
    /// would otherwise be resumed although its client was told it failed.
    pub async fn withdraw_execution(&self, record: &ExecutionRecord) -> SpearResult<()> {
        let permit = self.reserve_queue_slot().await?;
        {
            let mut index = self.shared.index.write();
            index.remove_execution(&record.execution_id);
            permit.send(WriteOperation {
                kind: WriteKind::DeleteExecution {
                    sequence: record.sequence,
                },
                committed: None,
            });
        }
        self.wake_writer();
        Ok(())
    }

    /// Returns once everything queued before the call is committed.
    pub async fn flush(&self) -> SpearResult<()> {
        let permit = self.reserve_queue_slot().await?;
        let (waiter, committed) = oneshot::channel();
        permit.send(WriteOperation {
            kind: WriteKind::Flush,
            committed: Some(waiter),
        });
        self.wake_writer();
        committed.await.map_err(|_| writer_stopped())?
    }

    /// Applies retention now, after everything queued before the call is committed, and returns
    /// how many executions it deleted. The writer also does this on its own, at most about once
    /// a second; this is for tests and operators who want it deterministic.
    pub async fn apply_retention(&self) -> SpearResult<usize> {
        let permit = self.reserve_queue_slot().await?;
        let (deleted, deleted_count) = oneshot::channel();
        permit.send(WriteOperation {
            kind: WriteKind::ApplyRetention { deleted },
            committed: None,
        });
        self.wake_writer();
        deleted_count.await.map_err(|_| writer_stopped())?
    }

    /// A snapshot of the writer's counters. Lock-free.
    pub fn write_stats(&self) -> WriteStats {
        let queue_depth = self.operation_sender.as_ref().map_or(0, |sender| {
            sender.max_capacity().saturating_sub(sender.capacity())
        });
        self.shared.counters.snapshot(queue_depth)
    }

    /// The writer's current failure: `Some` from a failed commit until a commit succeeds.
    pub fn write_failure(&self) -> Option<StoreFailure> {
        self.shared.write_failure.lock().clone()
    }

    /// The commit latency and batch size histograms of the writer. Lock-free.
    pub fn write_distributions(&self) -> WriteDistributions {
        let distributions = &self.shared.counters.distributions;
        WriteDistributions {
            commit_latency_seconds: distributions.commit_latency_seconds.snapshot(),
            batch_operations: distributions.batch_operations.snapshot(),
        }
    }

    async fn queue_put(
        &self,
        record: ExecutionRecord,
        committed: Option<writer::CommitWaiter>,
    ) -> SpearResult<()> {
        // Checked here, because a write the writer cannot encode would be retried forever.
        schema::sequence_to_sql(record.sequence).map_err(|_| {
            SpearError::invalid_argument(format!(
                "execution {} has sequence {}, beyond what the store can hold",
                record.execution_id, record.sequence
            ))
        })?;
        let permit = self.reserve_queue_slot().await?;
        let record = Arc::new(record);
        let someone_waits = committed.is_some();
        {
            let mut index = self.shared.index.write();
            let version = index.record_put(Arc::clone(&record));
            // Queued under the index lock, so the writer sees puts in version order.
            permit.send(WriteOperation {
                kind: WriteKind::PutExecution { record, version },
                committed,
            });
        }
        if someone_waits {
            self.wake_writer();
        }
        Ok(())
    }

    /// Ends the writer's gathering of a batch early: called after queueing a write that a
    /// caller waits for, so it commits now rather than at the end of the window.
    fn wake_writer(&self) {
        self.writer_wakeup.unpark();
    }

    /// Makes `record` visible to reads and listings at once without writing it to the file: for
    /// states that need not survive a crash (a sync execution's PENDING and RUNNING: its caller
    /// is gone after a crash anyway). A later [`DurableStore::put_execution`] of the same
    /// execution replaces it and is written as usual.
    pub fn put_execution_volatile(&self, record: ExecutionRecord) {
        let record = Arc::new(record);
        self.shared.index.write().record_put(record);
    }

    async fn reserve_queue_slot(&self) -> SpearResult<mpsc::Permit<'_, WriteOperation>> {
        let Some(sender) = &self.operation_sender else {
            return Err(writer_stopped());
        };
        sender.reserve().await.map_err(|_| writer_stopped())
    }
}

impl Drop for DurableStore {
    fn drop(&mut self) {
        // Closing the queue tells the writer to commit what it has and stop.
        drop(self.operation_sender.take());
        self.wake_writer();
        if let Some(writer_thread) = self.writer_thread.take()
            && writer_thread.join().is_err()
        {
            tracing::error!("the store writer thread panicked");
        }
    }
}

fn writer_stopped() -> SpearError {
    SpearError::unavailable("the store writer thread has stopped")
}
