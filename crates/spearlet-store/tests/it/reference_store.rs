//! The reference model of the store's listing and retention semantics: an in-memory [`Store`]
//! whose records live as long as the process, written to be obviously right rather than fast.
//! `DurableStore` is tested against it; nothing but the tests uses it.

use std::collections::{BTreeMap, HashMap};

use parking_lot::RwLock;
use spearlet_core::{ExecutionRecord, SpearResult};

use spearlet_store::{ExecutionPage, ExecutionQuery};

/// Storage of execution records, as the reference model sees it.
pub trait Store: Send + Sync + 'static {
    /// Inserts or replaces the record with this execution id.
    fn put_execution(&self, record: &ExecutionRecord) -> SpearResult<()>;
    fn execution(&self, execution_id: &str) -> SpearResult<Option<ExecutionRecord>>;
    fn list_executions(&self, query: &ExecutionQuery) -> SpearResult<ExecutionPage>;
    /// Deletes every record of the task and returns how many there were.
    fn delete_executions_of_task(&self, task_id: &str) -> SpearResult<usize>;
    fn execution_count(&self) -> SpearResult<usize>;
}

/// Keeps everything in maps behind one lock. Lock hold times are a map operation each.
pub struct MemoryStore {
    max_execution_records: usize,
    state: RwLock<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    executions: BTreeMap<u64, ExecutionRecord>,
    sequence_by_execution_id: HashMap<String, u64>,
}

impl MemoryStore {
    /// `max_execution_records` bounds how many records are kept; beyond it the oldest terminal
    /// records are evicted.
    pub fn new(max_execution_records: usize) -> MemoryStore {
        MemoryStore {
            max_execution_records,
            state: RwLock::new(MemoryState::default()),
        }
    }
}

impl MemoryState {
    fn evict_oldest_terminal(&mut self, keep: usize) {
        if self.executions.len() <= keep {
            return;
        }
        let excess = self.executions.len() - keep;
        let victims: Vec<u64> = self
            .executions
            .values()
            .filter(|record| record.status.is_terminal())
            .take(excess)
            .map(|record| record.sequence)
            .collect();
        for sequence in victims {
            if let Some(record) = self.executions.remove(&sequence) {
                self.sequence_by_execution_id.remove(&record.execution_id);
            }
        }
    }
}

impl Store for MemoryStore {
    fn put_execution(&self, record: &ExecutionRecord) -> SpearResult<()> {
        let mut state = self.state.write();
        let state = &mut *state;
        if let Some(previous) = state
            .sequence_by_execution_id
            .insert(record.execution_id.clone(), record.sequence)
            && previous != record.sequence
        {
            state.executions.remove(&previous);
        }
        state.executions.insert(record.sequence, record.clone());
        if record.status.is_terminal() {
            state.evict_oldest_terminal(self.max_execution_records);
        }
        Ok(())
    }

    fn execution(&self, execution_id: &str) -> SpearResult<Option<ExecutionRecord>> {
        let state = self.state.read();
        Ok(state
            .sequence_by_execution_id
            .get(execution_id)
            .and_then(|sequence| state.executions.get(sequence))
            .cloned())
    }

    fn list_executions(&self, query: &ExecutionQuery) -> SpearResult<ExecutionPage> {
        let state = self.state.read();
        let start = query.after_sequence.map_or(0, |after| after + 1);
        let matches = |record: &&ExecutionRecord| {
            query
                .task_id
                .as_ref()
                .is_none_or(|task_id| &record.task_id == task_id)
                && query.status.is_none_or(|status| record.status == status)
                && query
                    .submitted_at_or_after_ms
                    .is_none_or(|after| record.submitted_at_ms >= after)
                && query
                    .submitted_before_ms
                    .is_none_or(|before| record.submitted_at_ms < before)
        };
        let mut executions: Vec<ExecutionRecord>;
        let has_more;
        if query.descending {
            executions = state
                .executions
                .iter()
                .rev()
                .filter(|(sequence, _)| query.after_sequence.is_none_or(|after| **sequence < after))
                .map(|(_, record)| record)
                .filter(matches)
                .take(query.limit + 1)
                .cloned()
                .collect();
            has_more = executions.len() > query.limit;
            executions.truncate(query.limit);
        } else if query.newest {
            executions = state
                .executions
                .range(start..)
                .rev()
                .map(|(_, record)| record)
                .filter(matches)
                .take(query.limit + 1)
                .cloned()
                .collect();
            has_more = executions.len() > query.limit;
            executions.truncate(query.limit);
            executions.reverse();
        } else {
            executions = state
                .executions
                .range(start..)
                .map(|(_, record)| record)
                .filter(matches)
                .take(query.limit + 1)
                .cloned()
                .collect();
            has_more = executions.len() > query.limit;
            executions.truncate(query.limit);
        }
        Ok(ExecutionPage {
            executions,
            has_more,
        })
    }

    fn delete_executions_of_task(&self, task_id: &str) -> SpearResult<usize> {
        let mut state = self.state.write();
        let victims: Vec<(u64, String)> = state
            .executions
            .values()
            .filter(|record| record.task_id == task_id)
            .map(|record| (record.sequence, record.execution_id.clone()))
            .collect();
        for (sequence, execution_id) in &victims {
            state.executions.remove(sequence);
            state.sequence_by_execution_id.remove(execution_id);
        }
        Ok(victims.len())
    }

    fn execution_count(&self) -> SpearResult<usize> {
        Ok(self.state.read().executions.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use spearlet_core::{ExecutionMode, ExecutionStatus, ResultEncoding};

    fn record(sequence: u64, task: &str, status: ExecutionStatus) -> ExecutionRecord {
        ExecutionRecord {
            execution_id: format!("exec-{sequence}"),
            sequence,
            task_id: task.into(),
            task_name: task.into(),
            function_name: String::new(),
            mode: ExecutionMode::Sync,
            status,
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
            metrics: Default::default(),
            attempt: 1,
            instance_id: String::new(),
            request_fingerprint: String::new(),
            metadata: Default::default(),
            request: Default::default(),
            timeline: Vec::new(),
        }
    }

    #[test]
    fn pages_follow_sequence_and_filters() {
        let store = MemoryStore::new(100);
        for sequence in 1..=6 {
            let task = if sequence % 2 == 0 { "even" } else { "odd" };
            let status = if sequence == 4 {
                ExecutionStatus::Failed
            } else {
                ExecutionStatus::Completed
            };
            store
                .put_execution(&record(sequence, task, status))
                .unwrap();
        }
        let page = store
            .list_executions(&ExecutionQuery {
                task_id: Some("even".into()),
                limit: 2,
                ..Default::default()
            })
            .unwrap();
        let ids: Vec<u64> = page.executions.iter().map(|r| r.sequence).collect();
        assert_eq!(ids, vec![2, 4]);
        assert!(page.has_more);
        let next = store
            .list_executions(&ExecutionQuery {
                task_id: Some("even".into()),
                after_sequence: Some(4),
                limit: 2,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(next.executions.len(), 1);
        assert!(!next.has_more);
        let failed = store
            .list_executions(&ExecutionQuery {
                task_id: Some("even".into()),
                status: Some(ExecutionStatus::Failed),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(failed.executions.len(), 1);
        let newest = store
            .list_executions(&ExecutionQuery {
                limit: 2,
                newest: true,
                ..Default::default()
            })
            .unwrap();
        let ids: Vec<u64> = newest.executions.iter().map(|r| r.sequence).collect();
        assert_eq!(ids, vec![5, 6]);
    }

    #[test]
    fn retention_evicts_oldest_terminal_records_only() {
        let store = MemoryStore::new(2);
        store
            .put_execution(&record(1, "t", ExecutionStatus::Running))
            .unwrap();
        for sequence in 2..=4 {
            store
                .put_execution(&record(sequence, "t", ExecutionStatus::Completed))
                .unwrap();
        }
        assert!(store.execution("exec-1").unwrap().is_some(), "running kept");
        assert!(store.execution("exec-2").unwrap().is_none());
        assert!(store.execution("exec-3").unwrap().is_none());
        assert!(store.execution("exec-4").unwrap().is_some());
    }

    #[test]
    fn deleting_a_task_history_counts_records() {
        let store = MemoryStore::new(10);
        store
            .put_execution(&record(1, "a", ExecutionStatus::Completed))
            .unwrap();
        store
            .put_execution(&record(2, "b", ExecutionStatus::Completed))
            .unwrap();
        assert_eq!(store.delete_executions_of_task("a").unwrap(), 1);
        assert_eq!(store.execution_count().unwrap(), 1);
    }
}
