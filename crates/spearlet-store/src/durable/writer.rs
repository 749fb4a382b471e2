//! The writer thread of the durable store: the only code that writes executions to SQLite.
//!
//! It takes one operation from the bounded queue, drains up to `max_batch - 1` more without
//! waiting, applies them all in one transaction and commits once (group commit: one fsync for
//! the whole batch). Only then does it answer the callers waiting for durability and drop the
//! committed versions from the index's unflushed map. Retention runs here too, between batches,
//! and on a timer while the queue is idle (after a burst of writes, and every so often when a TTL
//! is set), so an idle store never waits for its next write to drop what it no longer keeps.
//!
//! When a commit fails, the callers waiting on that batch get the error, and the batch's writes
//! are retried (with backoff) in front of the next batch, so a flush that later succeeds still
//! means "everything queued before me is on disk". Until a commit succeeds again the failure is
//! kept in [`SharedState::write_failure`], for the node's health.

// The writer is a plain OS thread, not a tokio task: it measures real time with std's clock.
#![allow(clippy::disallowed_types)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use foldhash::{HashMap, HashMapExt};
use parking_lot::{Mutex, RwLock};
use rusqlite::{Connection, TransactionBehavior};
use spearlet_core::histogram::{DURATION_SECONDS_BOUNDS, Histogram};
use spearlet_core::{ExecutionRecord, SpearError, SpearResult};
use tokio::sync::{mpsc, oneshot};

use super::index::{ExecutionIndex, summary_of};
use super::schema;
use super::{StoreFailure, WriteStats};

/// How long a batch that nobody waits on may gather more writes before it commits.
const COALESCE_WINDOW: Duration = Duration::from_millis(5);
/// While gathering, the writer sleeps at most this long between looks at the queue. A write
/// somebody waits for unparks it at once (`DurableStore::wake_writer`); the interval bounds the
/// wait of one queued by code that does not.
const COALESCE_POLL: Duration = Duration::from_millis(1);
/// Retention runs after a commit once this much time has passed since the last run...
const RETENTION_INTERVAL: Duration = Duration::from_secs(1);
/// ...or once this many records were written since, whichever comes first. Between runs the
/// store may hold this many records beyond `max_execution_records`.
const RETENTION_EVERY_RECORDS: u64 = 1024;
/// With a TTL set, an idle writer wakes to run retention this long after the last run at the
/// earliest, so an idle store wakes about once a second at most...
const MINIMUM_IDLE_RETENTION_INTERVAL: Duration = Duration::from_secs(1);
/// ...or after this fraction of the TTL, whichever is longer: a record outlives its TTL by at
/// most about a tenth of it (or a second) on an idle store, and a long TTL costs few wake-ups.
const IDLE_RETENTION_INTERVALS_PER_TTL: u32 = 10;

/// The first pause before retrying a failed batch; it doubles up to [`MAXIMUM_RETRY_BACKOFF`].
const INITIAL_RETRY_BACKOFF: Duration = Duration::from_millis(10);
const MAXIMUM_RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// After the store is dropped, a failing batch is retried this many times before it is given up.
const RETRIES_AFTER_CLOSE: u32 = 3;

/// Answers a caller waiting for the commit of the batch that carried its operation.
pub(crate) type CommitWaiter = oneshot::Sender<SpearResult<()>>;

/// One queued operation and, if someone waits for it to be durable, their waiter.
pub(crate) struct WriteOperation {
    pub kind: WriteKind,
    pub committed: Option<CommitWaiter>,
}

impl WriteOperation {
    /// Whether a caller waits for this operation's outcome (a durable put, a flush, a task
    /// history deletion, an explicit retention run): a batch holding one commits without
    /// gathering more.
    fn has_waiter(&self) -> bool {
        self.committed.is_some() || matches!(self.kind, WriteKind::ApplyRetention { .. })
    }
}

pub(crate) enum WriteKind {
    PutExecution {
        record: Arc<ExecutionRecord>,
        /// The index version of this put; see [`ExecutionIndex::forget_committed`].
        version: u64,
    },
    DeleteExecutionsOfTask {
        task_id: String,
    },
    /// Deletes one execution's row (a withdrawn acceptance; see
    /// `DurableStore::withdraw_execution`).
    DeleteExecution {
        sequence: u64,
    },
    /// Writes nothing; its waiter is answered when everything queued before it is committed.
    Flush,
    /// Runs retention now, after committing everything queued before it.
    ApplyRetention {
        deleted: oneshot::Sender<SpearResult<usize>>,
    },
}

/// What the store and its writer share.
pub(crate) struct SharedState {
    pub index: RwLock<ExecutionIndex>,
    pub counters: WriteCounters,
    /// Set by the writer when a batch's commit fails, cleared by the next commit that succeeds.
    pub write_failure: Mutex<Option<StoreFailure>>,
}

impl SharedState {
    /// Keeps the failing since-time of an ongoing failure and replaces its error with the newest.
    fn record_commit_failure(&self, error: &rusqlite::Error) {
        let mut write_failure = self.write_failure.lock();
        let failure = write_failure.get_or_insert_with(|| StoreFailure {
            error: String::new(),
            failing_since_unix_ms: unix_now_us() / 1000,
            consecutive_failed_commits: 0,
        });
        failure.error = error.to_string();
        failure.consecutive_failed_commits += 1;
    }

    /// Ends an ongoing failure, if there is one: a commit just succeeded.
    fn record_commit_success(&self) {
        let mut write_failure = self.write_failure.lock();
        if let Some(failure) = write_failure.take() {
            tracing::info!(
                failed_commits = failure.consecutive_failed_commits,
                "the store commits again after failing since {} (Unix ms)",
                failure.failing_since_unix_ms
            );
        }
    }
}

/// Lock-free write statistics. Each counter is updated on its own, so a snapshot taken while a
/// batch completes may mix that batch's counts with the previous batch's.
#[derive(Default)]
pub(crate) struct WriteCounters {
    batches_committed: AtomicU64,
    failed_batches: AtomicU64,
    operations_committed: AtomicU64,
    records_written: AtomicU64,
    rows_upserted: AtomicU64,
    records_deleted_by_retention: AtomicU64,
    last_batch_size: AtomicU64,
    last_commit_latency_us: AtomicU64,
    total_commit_latency_us: AtomicU64,
    max_commit_latency_us: AtomicU64,
    /// Per-batch distributions of what `record_commit` also sums up above.
    pub(crate) distributions: WriteHistograms,
}

/// Bounds of the batch-size histogram, in operations: powers of two up to past the default
/// `max_batch` (512).
const BATCH_SIZE_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// One observation per committed batch: its commit latency and its size.
pub(crate) struct WriteHistograms {
    pub commit_latency_seconds: Histogram,
    pub batch_operations: Histogram,
}

impl Default for WriteHistograms {
    fn default() -> WriteHistograms {
        WriteHistograms {
            commit_latency_seconds: Histogram::new(DURATION_SECONDS_BOUNDS),
            batch_operations: Histogram::new(BATCH_SIZE_BOUNDS),
        }
    }
}

impl WriteCounters {
    pub(crate) fn snapshot(&self, queue_depth: usize) -> WriteStats {
        let batches_committed = self.batches_committed.load(Ordering::Relaxed);
        let operations_committed = self.operations_committed.load(Ordering::Relaxed);
        WriteStats {
            batches_committed,
            failed_batches: self.failed_batches.load(Ordering::Relaxed),
            operations_committed,
            records_written: self.records_written.load(Ordering::Relaxed),
            rows_upserted: self.rows_upserted.load(Ordering::Relaxed),
            records_deleted_by_retention: self.records_deleted_by_retention.load(Ordering::Relaxed),
            last_batch_size: self.last_batch_size.load(Ordering::Relaxed),
            mean_batch_size: if batches_committed == 0 {
                0.0
            } else {
                operations_committed as f64 / batches_committed as f64
            },
            last_commit_latency_us: self.last_commit_latency_us.load(Ordering::Relaxed),
            total_commit_latency_us: self.total_commit_latency_us.load(Ordering::Relaxed),
            max_commit_latency_us: self.max_commit_latency_us.load(Ordering::Relaxed),
            queue_depth,
        }
    }

    fn record_commit(&self, report: &BatchReport, commit_latency_us: u64) {
        self.batches_committed.fetch_add(1, Ordering::Relaxed);
        self.operations_committed
            .fetch_add(report.operations, Ordering::Relaxed);
        self.records_written
            .fetch_add(report.records_written, Ordering::Relaxed);
        self.rows_upserted
            .fetch_add(report.upserted_positions.len() as u64, Ordering::Relaxed);
        self.last_batch_size
            .store(report.operations, Ordering::Relaxed);
        self.last_commit_latency_us
            .store(commit_latency_us, Ordering::Relaxed);
        self.total_commit_latency_us
            .fetch_add(commit_latency_us, Ordering::Relaxed);
        self.max_commit_latency_us
            .fetch_max(commit_latency_us, Ordering::Relaxed);
        self.distributions
            .commit_latency_seconds
            .observe(commit_latency_us as f64 / 1e6);
        self.distributions
            .batch_operations
            .observe(report.operations as f64);
    }
}

/// What one committed batch contained.
struct BatchReport {
    operations: u64,
    /// Put operations in the batch, including those superseded by a later put of the same id.
    records_written: u64,
    /// Where in the batch the puts that were written are: the last put of each execution id.
    upserted_positions: Vec<usize>,
}

/// Which executions retention deletes.
pub(crate) struct RetentionPolicy {
    pub max_execution_records: usize,
    pub execution_ttl: Option<Duration>,
}

pub(crate) struct Writer {
    connection: Connection,
    receiver: mpsc::Receiver<WriteOperation>,
    shared: Arc<SharedState>,
    retention: RetentionPolicy,
    max_batch: usize,
    /// Writes of a failed batch, without their waiters, to be committed before anything newer.
    retry: Vec<WriteOperation>,
    retry_backoff: Duration,
    channel_closed: bool,
    retries_after_close: u32,
    // `std::time::Instant` rather than tokio's clock: these measure real elapsed time on a
    // plain thread outside any runtime, and nothing here is a timer a test would pause.
    last_retention: Instant,
    records_since_retention: u64,
}

impl Writer {
    pub(crate) fn new(
        connection: Connection,
        receiver: mpsc::Receiver<WriteOperation>,
        shared: Arc<SharedState>,
        retention: RetentionPolicy,
        max_batch: usize,
    ) -> Writer {
        Writer {
            connection,
            receiver,
            shared,
            retention,
            max_batch,
            retry: Vec::new(),
            retry_backoff: INITIAL_RETRY_BACKOFF,
            channel_closed: false,
            retries_after_close: 0,
            last_retention: Instant::now(),
            records_since_retention: 0,
        }
    }

    /// Runs until the store is dropped (the queue closes), committing everything queued.
    pub(crate) fn run(mut self) {
        // Wakes this thread when an operation is queued while it waits with a time limit for
        // the idle retention timer. Made once: the thread never changes.
        let queue_waker = Waker::from(Arc::new(UnparkThread(thread::current())));
        while let Some(batch) = self.next_batch(&queue_waker) {
            self.commit_batch(batch);
            let retention_due = self.last_retention.elapsed() >= RETENTION_INTERVAL
                || self.records_since_retention >= RETENTION_EVERY_RECORDS;
            if retention_due && let Err(error) = self.apply_retention() {
                tracing::warn!(%error, "store retention failed; it runs again later");
            }
        }
    }

    /// Waits for work and returns the next batch: the writes to retry first, then whatever is
    /// queued, up to `max_batch` operations. Returns `None` when the queue is closed and drained.
    /// While it waits for the first operation, the idle retention timer may run retention.
    fn next_batch(&mut self, queue_waker: &Waker) -> Option<Vec<WriteOperation>> {
        let mut batch = std::mem::take(&mut self.retry);
        if batch.is_empty() {
            batch.push(self.next_operation_running_idle_retention(queue_waker)?);
        } else {
            if self.channel_closed {
                if self.retries_after_close >= RETRIES_AFTER_CLOSE {
                    tracing::error!(
                        operations = batch.len(),
                        "the store is closed and its last writes keep failing; giving them up"
                    );
                    return None;
                }
                self.retries_after_close += 1;
            }
            thread::sleep(self.retry_backoff);
            self.retry_backoff = (self.retry_backoff * 2).min(MAXIMUM_RETRY_BACKOFF);
        }
        self.drain_into(&mut batch);
        // Nobody waits for this batch (no durable put, flush, delete or retention run in it): let
        // more writes gather for a moment, so steady sync traffic costs one fsync per window
        // instead of one per handful of records. A waiter arriving meanwhile ends the wait: its
        // sender unparks this thread. Parking rather than polling keeps the writer from waking
        // (and taking a core from the request path) several times per window.
        let deadline = Instant::now() + COALESCE_WINDOW;
        loop {
            let now = Instant::now();
            if self.channel_closed
                || batch.len() >= self.max_batch
                || batch.iter().any(WriteOperation::has_waiter)
                || now >= deadline
            {
                break;
            }
            thread::park_timeout(COALESCE_POLL.min(deadline - now));
            self.drain_into(&mut batch);
        }
        Some(batch)
    }

    /// Waits for the next queued operation; `None` when the queue is closed. Retention is due
    /// again while the queue is idle in two cases, and the wait ends then to run it:
    /// - records were written since the last run, which was too recent to run again after their
    ///   commit: retention runs once [`RETENTION_INTERVAL`] after the last run, so a burst that
    ///   overshot `max_execution_records` is trimmed without waiting for the next write;
    /// - a TTL is set: records expire with time and not only with writes, so retention runs every
    ///   [`idle_retention_interval`].
    ///
    /// Otherwise nothing can be due before a write arrives, and the thread sleeps until one does.
    fn next_operation_running_idle_retention(
        &mut self,
        queue_waker: &Waker,
    ) -> Option<WriteOperation> {
        let mut context = Context::from_waker(queue_waker);
        loop {
            let Some(retention_deadline) = self.idle_retention_deadline() else {
                return self.receiver.blocking_recv();
            };
            // Polling registers the waker, so a send after a `Pending` unparks the park below.
            if let Poll::Ready(operation) = self.receiver.poll_recv(&mut context) {
                return operation;
            }
            let now = Instant::now();
            if now < retention_deadline {
                // A spurious or early unpark only leads to another poll.
                thread::park_timeout(retention_deadline - now);
                continue;
            }
            // Retention resets `last_retention` and `records_since_retention`, so the next
            // deadline is a TTL interval away (or none), whether or not this run deleted
            // anything. When nothing is due, the run is one scan of the oldest summaries under
            // the index lock and touches no file.
            if let Err(error) = self.apply_retention() {
                tracing::warn!(%error, "idle store retention failed; it runs again later");
            }
        }
    }

    /// When an idle writer must run retention next, or `None` when nothing can be due before
    /// the next write (no TTL, and nothing written since the last run).
    fn idle_retention_deadline(&self) -> Option<Instant> {
        let after_writes =
            (self.records_since_retention > 0).then(|| self.last_retention + RETENTION_INTERVAL);
        let after_expiry = self
            .retention
            .execution_ttl
            .map(|ttl| self.last_retention + idle_retention_interval(ttl));
        match (after_writes, after_expiry) {
            (Some(after_writes), Some(after_expiry)) => Some(after_writes.min(after_expiry)),
            (after_writes, after_expiry) => after_writes.or(after_expiry),
        }
    }

    /// Moves queued operations into `batch` without waiting, up to `max_batch`.
    fn drain_into(&mut self, batch: &mut Vec<WriteOperation>) {
        while batch.len() < self.max_batch {
            match self.receiver.try_recv() {
                Ok(operation) => batch.push(operation),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.channel_closed = true;
                    break;
                }
            }
        }
    }

    /// Commits one batch and answers its waiters.
    fn commit_batch(&mut self, batch: Vec<WriteOperation>) {
        let started = Instant::now();
        let written = write_batch(&mut self.connection, &batch);
        let commit_latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let report = match written {
            Ok(report) => report,
            Err(error) => {
                self.fail_batch(batch, &error);
                return;
            }
        };
        self.retry_backoff = INITIAL_RETRY_BACKOFF;
        self.shared.record_commit_success();
        self.shared
            .counters
            .record_commit(&report, commit_latency_us);
        self.records_since_retention += report.upserted_positions.len() as u64;
        // Summaries of the puts that were written (the last of each execution in the batch; an
        // earlier one cannot be its newest version), made before the lock is taken, so callers
        // queueing puts wait only for the swaps.
        let committed_summaries: Vec<(u64, ExecutionRecord)> = report
            .upserted_positions
            .iter()
            .filter_map(|&position| match &batch[position].kind {
                WriteKind::PutExecution { record, version } => Some((*version, summary_of(record))),
                _ => None,
            })
            .collect();
        {
            let mut index = self.shared.index.write();
            for (version, summary) in committed_summaries {
                index.forget_committed(version, summary);
            }
        }
        let mut retention_requests = Vec::new();
        for WriteOperation { kind, committed } in batch {
            if let Some(waiter) = committed {
                // A caller that stopped waiting does not make the commit any less done.
                let _ = waiter.send(Ok(()));
            }
            if let WriteKind::ApplyRetention { deleted } = kind {
                retention_requests.push(deleted);
            }
        }
        for deleted in retention_requests {
            let _ = deleted.send(self.apply_retention());
        }
    }

    /// Tells the batch's waiters that it failed and keeps its writes for the next batch.
    fn fail_batch(&mut self, batch: Vec<WriteOperation>, error: &rusqlite::Error) {
        self.shared
            .counters
            .failed_batches
            .fetch_add(1, Ordering::Relaxed);
        self.shared.record_commit_failure(error);
        tracing::error!(%error, operations = batch.len(), "committing a store batch failed; retrying");
        let failure = SpearError::internal(format!(
            "committing a batch of {} store operations failed (the writes are retried): {error}",
            batch.len()
        ));
        for WriteOperation { kind, committed } in batch {
            if let Some(waiter) = committed {
                let _ = waiter.send(Err(failure.clone()));
            }
            match kind {
                WriteKind::PutExecution { .. }
                | WriteKind::DeleteExecutionsOfTask { .. }
                | WriteKind::DeleteExecution { .. } => {
                    self.retry.push(WriteOperation {
                        kind,
                        committed: None,
                    });
                }
                WriteKind::Flush => {}
                WriteKind::ApplyRetention { deleted } => {
                    let _ = deleted.send(Err(failure.clone()));
                }
            }
        }
    }

    /// Deletes what the retention policy no longer keeps, from the index and then from the file.
    /// If the file delete fails the rows come back at the next start, where retention takes them
    /// again.
    pub(crate) fn apply_retention(&mut self) -> SpearResult<usize> {
        self.last_retention = Instant::now();
        self.records_since_retention = 0;
        let completed_before_us = self.retention.execution_ttl.map(|ttl| {
            unix_now_us().saturating_sub(i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX))
        });
        let victims = self
            .shared
            .index
            .write()
            .take_retention_victims(self.retention.max_execution_records, completed_before_us);
        if victims.is_empty() {
            return Ok(0);
        }
        // Counted as they leave the index, which is when readers stop seeing them: a reader that
        // finds a record gone also finds it counted.
        self.shared
            .counters
            .records_deleted_by_retention
            .fetch_add(victims.len() as u64, Ordering::Relaxed);
        schema::delete_sequences(&mut self.connection, &victims).map_err(
            schema::sqlite_failure(format!(
                "deleting {} execution records for retention",
                victims.len()
            )),
        )?;
        Ok(victims.len())
    }
}

/// How long an idle writer waits between retention runs for a store with this TTL: a tenth of
/// the TTL, and at least [`MINIMUM_IDLE_RETENTION_INTERVAL`].
fn idle_retention_interval(execution_ttl: Duration) -> Duration {
    (execution_ttl / IDLE_RETENTION_INTERVALS_PER_TTL).max(MINIMUM_IDLE_RETENTION_INTERVAL)
}

/// A waker that unparks one thread: the writer's way to sleep on the queue with a time limit,
/// which tokio's `blocking_recv` has no form of.
struct UnparkThread(thread::Thread);

impl Wake for UnparkThread {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Applies a batch in one transaction. Only the last put of each execution id in the batch is
/// written: earlier ones would be overwritten within the same transaction anyway, and a task
/// deletion between them does not change which row survives.
fn write_batch(
    connection: &mut Connection,
    batch: &[WriteOperation],
) -> rusqlite::Result<BatchReport> {
    let mut last_put_position: HashMap<&str, usize> = HashMap::new();
    for (position, operation) in batch.iter().enumerate() {
        if let WriteKind::PutExecution { record, .. } = &operation.kind {
            last_put_position.insert(&record.execution_id, position);
        }
    }
    let mut report = BatchReport {
        operations: batch.len() as u64,
        records_written: 0,
        upserted_positions: Vec::new(),
    };
    let mut highest_sequence: Option<u64> = None;
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut upsert = transaction.prepare_cached(schema::UPSERT_EXECUTION)?;
        let mut delete_of_task = transaction.prepare_cached(schema::DELETE_EXECUTIONS_OF_TASK)?;
        let mut delete_one = transaction.prepare_cached(schema::DELETE_EXECUTION)?;
        for (position, operation) in batch.iter().enumerate() {
            match &operation.kind {
                WriteKind::PutExecution { record, .. } => {
                    report.records_written += 1;
                    if last_put_position.get(record.execution_id.as_str()) != Some(&position) {
                        continue;
                    }
                    schema::upsert_execution(&mut upsert, record)?;
                    report.upserted_positions.push(position);
                    highest_sequence = highest_sequence.max(Some(record.sequence));
                }
                WriteKind::DeleteExecutionsOfTask { task_id } => {
                    delete_of_task.execute([task_id])?;
                }
                WriteKind::DeleteExecution { sequence } => {
                    delete_one.execute([schema::sequence_to_sql(*sequence)?])?;
                }
                WriteKind::Flush | WriteKind::ApplyRetention { .. } => {}
            }
        }
    }
    if let Some(highest_sequence) = highest_sequence {
        transaction.execute(
            schema::RAISE_HIGHEST_SEQUENCE,
            [schema::sequence_to_sql(highest_sequence)?],
        )?;
    }
    transaction.commit()?;
    Ok(report)
}

/// The wall clock in Unix microseconds, the unit of `completed_at_us`.
fn unix_now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since_epoch| {
            i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use spearlet_core::{ErrorKind, ExecutionMode, ExecutionStatus, ResultEncoding};

    use super::*;

    fn pending_record(sequence: u64) -> ExecutionRecord {
        ExecutionRecord {
            execution_id: format!("exec-{sequence}"),
            sequence,
            task_id: "task".into(),
            task_name: "task".into(),
            function_name: String::new(),
            mode: ExecutionMode::Async,
            status: ExecutionStatus::Pending,
            submitted_at_ms: 0,
            started_at_us: None,
            completed_at_us: None,
            execution_time_ms: 0,
            memory_used_bytes: 0,
            output: Bytes::new(),
            output_content_type: String::new(),
            result_encoding: ResultEncoding::Payload,
            logs: Bytes::new(),
            error_code: None,
            error_message: String::new(),
            metrics: BTreeMap::new(),
            attempt: 1,
            instance_id: String::new(),
            request_fingerprint: String::new(),
            metadata: BTreeMap::new(),
            request: Default::default(),
            timeline: Vec::new(),
        }
    }

    /// A second connection holds the write lock, so the writer's commit fails: the waiter hears
    /// about it, the record stays readable, and once the lock is released the retried write
    /// lands and a flush succeeds.
    #[test]
    fn a_failed_commit_is_reported_and_retried() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("store.sqlite");
        let connection = schema::open_connection(&path).unwrap();
        schema::create_schema(&connection).unwrap();
        connection.busy_timeout(Duration::from_millis(20)).unwrap();
        let blocker = schema::open_connection(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();

        let shared = Arc::new(SharedState {
            index: RwLock::new(ExecutionIndex::default()),
            counters: WriteCounters::default(),
            write_failure: Mutex::new(None),
        });
        let (sender, receiver) = mpsc::channel(16);
        let writer = Writer::new(
            connection,
            receiver,
            Arc::clone(&shared),
            RetentionPolicy {
                max_execution_records: 100,
                execution_ttl: None,
            },
            8,
        );
        let writer_thread = thread::spawn(move || writer.run());

        let record = Arc::new(pending_record(1));
        let version = shared.index.write().record_put(Arc::clone(&record));
        let (waiter, committed) = oneshot::channel();
        sender
            .blocking_send(WriteOperation {
                kind: WriteKind::PutExecution { record, version },
                committed: Some(waiter),
            })
            .unwrap();
        let error = committed.blocking_recv().unwrap().unwrap_err();
        assert_eq!(error.kind, ErrorKind::Internal);
        assert!(error.message.contains("retried"), "{error}");
        assert!(shared.index.read().unflushed_record("exec-1").is_some());
        let failure = shared
            .write_failure
            .lock()
            .clone()
            .expect("a failed commit is kept as the store's failure");
        assert!(failure.error.contains("locked"), "{failure:?}");
        assert!(failure.consecutive_failed_commits >= 1);
        assert!(failure.failing_since_unix_ms > 0);

        blocker.execute_batch("ROLLBACK").unwrap();
        let (waiter, committed) = oneshot::channel();
        sender
            .blocking_send(WriteOperation {
                kind: WriteKind::Flush,
                committed: Some(waiter),
            })
            .unwrap();
        committed.blocking_recv().unwrap().unwrap();
        assert!(shared.index.read().unflushed_record("exec-1").is_none());
        assert_eq!(
            *shared.write_failure.lock(),
            None,
            "a successful commit clears the failure"
        );
        let rows: i64 = blocker
            .query_row("SELECT count(*) FROM executions", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, 1);
        let stats = shared.counters.snapshot(0);
        assert!(stats.failed_batches >= 1);
        assert_eq!(stats.records_written, 1);

        drop(sender);
        writer_thread.join().unwrap();
    }
}
