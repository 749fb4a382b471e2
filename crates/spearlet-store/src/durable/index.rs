//! The in-memory index of the durable store: a summary of every execution (the record without
//! its payloads and timeline), plus the full records that are queued for the writer but not yet committed.
//!
//! Invariants, all kept under the one lock that guards [`ExecutionIndex`]:
//! - An execution is in `summaries` exactly when it exists for readers; the index, not the file,
//!   answers "does this id exist" and every listing.
//! - An execution whose newest version is not yet committed is in `unflushed`; otherwise its
//!   newest version is in the file. So a full read looks in `unflushed` first, then in SQLite.
//! - An entry leaves `unflushed` only when the writer committed that very version.
//! - While an execution is unflushed, its `summaries` entry is the full record itself (the same
//!   `Arc`): a put costs no copy on the caller's path. The writer trims it to a summary when it
//!   commits that version, so committed executions cost only their summary in memory.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use foldhash::HashMap;
use spearlet_core::{ExecutionRecord, StoredRequest};

use crate::{ExecutionPage, ExecutionQuery};

/// A full record the writer has not committed yet, tagged with the version of the put that
/// queued it.
struct UnflushedRecord {
    version: u64,
    record: Arc<ExecutionRecord>,
}

#[derive(Default)]
pub(crate) struct ExecutionIndex {
    /// Behind a pointer because B-tree nodes keep values inline and, filled in ascending order,
    /// stay about half full: a 520-byte record inline would cost about 950 bytes per entry, a
    /// pointer about 560. The full record while unflushed, a summary once committed.
    summaries: BTreeMap<u64, Arc<ExecutionRecord>>,
    sequence_by_execution_id: HashMap<String, u64>,
    unflushed: HashMap<String, UnflushedRecord>,
    /// The version of the last put; every put takes the next one.
    last_version: u64,
}

/// The record without its payloads (output, logs, the stored request) and without its timeline:
/// what listings return and what the index keeps, so a summary costs a few hundred bytes however
/// large the execution's input and output were.
pub(crate) fn summary_of(record: &ExecutionRecord) -> ExecutionRecord {
    ExecutionRecord {
        execution_id: record.execution_id.clone(),
        sequence: record.sequence,
        task_id: record.task_id.clone(),
        task_name: record.task_name.clone(),
        function_name: record.function_name.clone(),
        mode: record.mode,
        status: record.status,
        submitted_at_ms: record.submitted_at_ms,
        started_at_us: record.started_at_us,
        completed_at_us: record.completed_at_us,
        execution_time_ms: record.execution_time_ms,
        memory_used_bytes: record.memory_used_bytes,
        output: Bytes::new(),
        output_content_type: record.output_content_type.clone(),
        result_encoding: record.result_encoding,
        logs: Bytes::new(),
        error_code: record.error_code,
        error_message: record.error_message.clone(),
        metrics: record.metrics.clone(),
        attempt: record.attempt,
        instance_id: record.instance_id.clone(),
        request_fingerprint: record.request_fingerprint.clone(),
        metadata: record.metadata.clone(),
        request: StoredRequest::default(),
        timeline: Vec::new(),
    }
}

impl ExecutionIndex {
    /// Builds the index from committed summaries in any order.
    pub(crate) fn from_summaries(summaries: Vec<ExecutionRecord>) -> ExecutionIndex {
        let mut index = ExecutionIndex::default();
        for summary in summaries {
            index
                .sequence_by_execution_id
                .insert(summary.execution_id.clone(), summary.sequence);
            index.summaries.insert(summary.sequence, Arc::new(summary));
        }
        index
    }

    /// Makes a put visible to readers and returns its version. The caller queues the write
    /// while still holding the lock, so queue order equals version order.
    pub(crate) fn record_put(&mut self, record: Arc<ExecutionRecord>) -> u64 {
        self.last_version += 1;
        let version = self.last_version;
        let sequence = record.sequence;
        match self.sequence_by_execution_id.get_mut(&record.execution_id) {
            Some(previous_sequence) if *previous_sequence != sequence => {
                let previous = std::mem::replace(previous_sequence, sequence);
                self.summaries.remove(&previous);
            }
            Some(_) => {}
            None => {
                self.sequence_by_execution_id
                    .insert(record.execution_id.clone(), sequence);
            }
        }
        if let Some(displaced) = self.summaries.insert(sequence, Arc::clone(&record))
            && displaced.execution_id != record.execution_id
        {
            // Another execution held this sequence. SQLite's `INSERT OR REPLACE` drops its row
            // too, so the index forgets it in the same way.
            self.sequence_by_execution_id
                .remove(&displaced.execution_id);
            self.unflushed.remove(&displaced.execution_id);
        }
        match self.unflushed.get_mut(&record.execution_id) {
            Some(unflushed) => *unflushed = UnflushedRecord { version, record },
            None => {
                self.unflushed.insert(
                    record.execution_id.clone(),
                    UnflushedRecord { version, record },
                );
            }
        }
        version
    }

    /// The newest full record if the writer has not committed it yet.
    pub(crate) fn unflushed_record(&self, execution_id: &str) -> Option<Arc<ExecutionRecord>> {
        self.unflushed
            .get(execution_id)
            .map(|unflushed| Arc::clone(&unflushed.record))
    }

    pub(crate) fn sequence_of(&self, execution_id: &str) -> Option<u64> {
        self.sequence_by_execution_id.get(execution_id).copied()
    }

    /// Called by the writer after a commit, with the summary of the committed version (made
    /// before taking the lock): if `version` is still the newest one, drops the unflushed copy
    /// and puts the summary in the full record's place. A later put that is still queued stays
    /// as it is.
    pub(crate) fn forget_committed(&mut self, version: u64, summary: ExecutionRecord) {
        let is_newest = self
            .unflushed
            .get(&summary.execution_id)
            .is_some_and(|unflushed| unflushed.version == version);
        if !is_newest {
            return;
        }
        self.unflushed.remove(&summary.execution_id);
        if let Some(entry) = self.summaries.get_mut(&summary.sequence) {
            *entry = Arc::new(summary);
        }
    }

    /// Forgets one execution: its summary, its id and any queued version. Returns whether it was
    /// known.
    pub(crate) fn remove_execution(&mut self, execution_id: &str) -> bool {
        let Some(sequence) = self.sequence_by_execution_id.remove(execution_id) else {
            return false;
        };
        self.summaries.remove(&sequence);
        self.unflushed.remove(execution_id);
        true
    }

    /// Removes every execution of the task and returns how many there were.
    pub(crate) fn remove_task(&mut self, task_id: &str) -> usize {
        let victims: Vec<(u64, String)> = self
            .summaries
            .values()
            .filter(|summary| summary.task_id == task_id)
            .map(|summary| (summary.sequence, summary.execution_id.clone()))
            .collect();
        for (sequence, execution_id) in &victims {
            self.summaries.remove(sequence);
            self.sequence_by_execution_id.remove(execution_id);
            self.unflushed.remove(execution_id);
        }
        victims.len()
    }

    /// Chooses the executions retention deletes, removes them from the index and returns their
    /// sequences in ascending order. Only terminal, committed executions are candidates: a
    /// pending or running execution is always answerable, and an execution with a queued write
    /// would be resurrected on disk by that write.
    ///
    /// First every candidate that completed before `completed_before_us` goes. The scan walks in
    /// sequence order and stops at the first execution submitted at or after that instant: it
    /// cannot have completed before it. Submission times follow sequence order only roughly, so a
    /// few expired records may survive one pass; a later pass, with a later cutoff, takes them.
    /// Then, while more than `keep` executions remain, the oldest candidates go.
    pub(crate) fn take_retention_victims(
        &mut self,
        keep: usize,
        completed_before_us: Option<i64>,
    ) -> Vec<u64> {
        let is_candidate = |summary: &ExecutionRecord| {
            summary.status.is_terminal() && !self.unflushed.contains_key(&summary.execution_id)
        };
        let mut victims: Vec<u64> = Vec::new();
        if let Some(cutoff_us) = completed_before_us {
            for summary in self.summaries.values() {
                if summary.submitted_at_ms.saturating_mul(1000) >= cutoff_us {
                    break;
                }
                if is_candidate(summary)
                    && summary
                        .completed_at_us
                        .is_some_and(|completed_at_us| completed_at_us < cutoff_us)
                {
                    victims.push(summary.sequence);
                }
            }
        }
        let remaining = self.summaries.len() - victims.len();
        // Hysteresis: once over the limit, trim to 95% of it, so retention runs as one larger
        // delete now and then instead of a row or two after every commit.
        let keep = if remaining > keep {
            keep - keep / 20
        } else {
            keep
        };
        if remaining > keep {
            let expired_count = victims.len();
            let oldest_beyond_limit: Vec<u64> = self
                .summaries
                .values()
                .filter(|summary| is_candidate(summary))
                .filter(|summary| {
                    victims[..expired_count]
                        .binary_search(&summary.sequence)
                        .is_err()
                })
                .take(remaining - keep)
                .map(|summary| summary.sequence)
                .collect();
            victims.extend(oldest_beyond_limit);
            victims.sort_unstable();
        }
        for sequence in &victims {
            if let Some(summary) = self.summaries.remove(sequence) {
                self.sequence_by_execution_id.remove(&summary.execution_id);
            }
        }
        victims
    }

    /// One page of summaries with the semantics the tests' reference model (`tests/it/reference_store.rs`) spells out: ascending by
    /// sequence, after `after_sequence`, filtered by task and status, the oldest or newest
    /// `limit` matches.
    pub(crate) fn page(&self, query: &ExecutionQuery) -> ExecutionPage {
        let matches = |summary: &&ExecutionRecord| {
            query
                .task_id
                .as_ref()
                .is_none_or(|task_id| &summary.task_id == task_id)
                && query.status.is_none_or(|status| summary.status == status)
                && query
                    .submitted_at_or_after_ms
                    .is_none_or(|after| summary.submitted_at_ms >= after)
                && query
                    .submitted_before_ms
                    .is_none_or(|before| summary.submitted_at_ms < before)
        };
        // Walked newest first for a descending page (below `after_sequence`) and for the
        // newest `limit` (reversed back at the end), oldest first otherwise.
        let walked: Box<dyn Iterator<Item = (&u64, &Arc<ExecutionRecord>)> + '_> =
            if query.descending {
                let below = query
                    .after_sequence
                    .map_or(Bound::Unbounded, Bound::Excluded);
                Box::new(self.summaries.range((Bound::Unbounded, below)).rev())
            } else {
                let start = query
                    .after_sequence
                    .map_or(0, |after| after.saturating_add(1));
                let in_range = self.summaries.range(start..);
                if query.newest {
                    Box::new(in_range.rev())
                } else {
                    Box::new(in_range)
                }
            };
        // `summary_of`, not a clone: an unflushed entry is the full record.
        let mut executions: Vec<ExecutionRecord> = walked
            .map(|(_, summary)| summary.as_ref())
            .filter(matches)
            .take(query.limit.saturating_add(1))
            .map(summary_of)
            .collect();
        let has_more = executions.len() > query.limit;
        executions.truncate(query.limit);
        if query.newest && !query.descending {
            executions.reverse();
        }
        ExecutionPage {
            executions,
            has_more,
        }
    }

    pub(crate) fn summaries(&self) -> impl Iterator<Item = &ExecutionRecord> {
        self.summaries.values().map(Arc::as_ref)
    }

    /// The version of the newest put: it changes whenever an execution is added or updated.
    pub(crate) fn last_version(&self) -> u64 {
        self.last_version
    }

    pub(crate) fn len(&self) -> usize {
        self.summaries.len()
    }
}
