//! Tests of [`DurableStore`] through its public API: round trips, read-your-writes, durability
//! across reopen, listing semantics identical to the reference model (`reference_store.rs`), retention, concurrency and
//! group commit. Throughput is measured by `cargo bench -p spearlet-store --bench put_throughput`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use spearlet_core::{
    ArtifactRecord, ErrorCode, ExecutionMode, ExecutionRecord, ExecutionStatus, ResultEncoding,
    StoredRequest, TaskRecord, TimelineEntry,
};
use spearlet_store::{DurableStore, DurableStoreConfig, ExecutionQuery, Recovered};

use crate::reference_store::{MemoryStore, Store};

/// A record with every field set to something recognisable, so a round trip that drops or
/// swaps a column fails.
fn record(sequence: u64, task_id: &str, status: ExecutionStatus) -> ExecutionRecord {
    let terminal = status.is_terminal();
    ExecutionRecord {
        execution_id: format!("exec-{sequence:08}"),
        sequence,
        task_id: task_id.into(),
        task_name: format!("{task_id}-name"),
        function_name: "handle".into(),
        mode: ExecutionMode::Async,
        status,
        submitted_at_ms: 1_700_000_000_000 + sequence as i64,
        started_at_us: Some(1_700_000_000_000_000 + sequence as i64 * 1000 + 10),
        completed_at_us: terminal.then_some(1_700_000_000_000_000 + sequence as i64 * 1000 + 900),
        execution_time_ms: 3,
        memory_used_bytes: 65_536,
        output: Bytes::from(format!("output of {sequence}")),
        output_content_type: "text/plain".into(),
        result_encoding: ResultEncoding::Payload,
        logs: Bytes::from_static(b"line one\nline two\n"),
        error_code: (status == ExecutionStatus::Failed).then_some(ErrorCode::Trap),
        error_message: if status == ExecutionStatus::Failed {
            "unreachable executed".into()
        } else {
            String::new()
        },
        metrics: BTreeMap::from([("execution_time_us".into(), "3120".into())]),
        attempt: 1,
        instance_id: "instance-1".into(),
        request_fingerprint: "ab".repeat(32),
        metadata: BTreeMap::from([("caller".into(), "test".into())]),
        request: StoredRequest {
            input: Bytes::from(vec![0u8, 1, 2, 255]),
            session_id: "session-7".into(),
            environment: BTreeMap::from([("MODE".into(), "fast".into())]),
            headers: BTreeMap::from([("x-trace".into(), "abc".into())]),
            requested_timeout_ms: 2500,
            max_retries: 2,
        },
        timeline: vec![
            TimelineEntry {
                at_us: 1,
                status: ExecutionStatus::Pending,
                attempt: 1,
                note: String::new(),
            },
            TimelineEntry {
                at_us: 2,
                status,
                attempt: 1,
                note: "reached".into(),
            },
        ],
    }
}

/// What listings and visits return: the record without payloads and timeline.
fn summary(record: &ExecutionRecord) -> ExecutionRecord {
    ExecutionRecord {
        output: Bytes::new(),
        logs: Bytes::new(),
        request: StoredRequest::default(),
        timeline: Vec::new(),
        ..record.clone()
    }
}

fn task(task_id: &str) -> TaskRecord {
    TaskRecord {
        task_id: task_id.into(),
        task_name: format!("{task_id}-name"),
        description: "a task".into(),
        artifact: ArtifactRecord {
            artifact_id: "sha256:00".into(),
            artifact_type: "wasm".into(),
            location: "file:///tmp/a.wasm".into(),
            version: "1".into(),
            checksum: String::new(),
            metadata: BTreeMap::from([("k".into(), "v".into())]),
            digest: "00".repeat(32),
        },
        created_at_ms: 1,
        updated_at_ms: 2,
    }
}

fn config(path: &Path) -> DurableStoreConfig {
    DurableStoreConfig::new(path.join("store.sqlite"))
}

fn open(config: DurableStoreConfig) -> (DurableStore, Recovered) {
    DurableStore::open(config).expect("the store opens")
}

fn unix_now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

#[tokio::test]
async fn a_put_reads_back_whole_before_and_after_the_commit() {
    let directory = tempfile::tempdir().unwrap();
    let (store, recovered) = open(config(directory.path()));
    assert!(recovered.tasks.is_empty());
    assert!(recovered.unfinished_executions.is_empty());
    assert_eq!(recovered.highest_sequence, 0);

    let written = record(1, "alpha", ExecutionStatus::Failed);
    store.put_execution(written.clone()).await.unwrap();
    // Read-your-writes: visible in full before anything is durable.
    assert_eq!(
        store.execution("exec-00000001").unwrap(),
        Some(written.clone())
    );
    assert_eq!(store.execution_count().unwrap(), 1);

    store.flush().await.unwrap();
    // Now served from SQLite: every column, payloads and timeline included.
    assert_eq!(
        store.execution("exec-00000001").unwrap(),
        Some(written.clone())
    );
    assert_eq!(store.execution("exec-missing").unwrap(), None);

    let page = store
        .list_executions(&ExecutionQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page.executions, vec![summary(&written)]);
}

#[tokio::test]
async fn the_newest_version_wins_before_and_after_the_commit() {
    let directory = tempfile::tempdir().unwrap();
    let (store, _) = open(config(directory.path()));
    let mut versions = Vec::new();
    for status in [
        ExecutionStatus::Pending,
        ExecutionStatus::Running,
        ExecutionStatus::Completed,
    ] {
        let version = record(5, "alpha", status);
        store.put_execution(version.clone()).await.unwrap();
        assert_eq!(
            store.execution("exec-00000005").unwrap(),
            Some(version.clone())
        );
        versions.push(version);
    }
    store.flush().await.unwrap();
    let newest = versions.last().unwrap().clone();
    assert_eq!(
        store.execution("exec-00000005").unwrap(),
        Some(newest.clone())
    );
    assert_eq!(store.execution_count().unwrap(), 1);
    let stats = store.write_stats();
    assert_eq!(stats.records_written, 3);
    assert!(stats.rows_upserted >= 1 && stats.rows_upserted <= 3);
    drop(store);

    let (store, recovered) = open(config(directory.path()));
    assert!(recovered.unfinished_executions.is_empty());
    assert_eq!(store.execution("exec-00000005").unwrap(), Some(newest));
}

#[tokio::test]
async fn records_and_tasks_survive_a_reopen() {
    let directory = tempfile::tempdir().unwrap();
    let pending = record(3, "alpha", ExecutionStatus::Pending);
    let running = record(2, "beta", ExecutionStatus::Running);
    let completed = record(1, "alpha", ExecutionStatus::Completed);
    {
        let (store, _) = open(config(directory.path()));
        store.put_task(&task("alpha")).unwrap();
        store.put_task(&task("beta")).unwrap();
        store.put_task(&task("gone")).unwrap();
        assert!(store.delete_task("gone").unwrap());
        assert!(!store.delete_task("gone").unwrap());
        for written in [&completed, &running, &pending] {
            store.put_execution(written.clone()).await.unwrap();
        }
        store.flush().await.unwrap();
    }

    let (store, recovered) = open(config(directory.path()));
    assert_eq!(recovered.tasks, vec![task("alpha"), task("beta")]);
    assert_eq!(store.tasks().unwrap(), recovered.tasks);
    // Full records of the unfinished executions, in sequence order.
    assert_eq!(recovered.unfinished_executions, vec![running, pending]);
    assert_eq!(recovered.highest_sequence, 3);
    assert_eq!(store.execution_count().unwrap(), 3);
    assert_eq!(store.execution("exec-00000001").unwrap(), Some(completed));
}

#[tokio::test]
async fn a_durable_put_is_in_the_file_when_it_returns() {
    let directory = tempfile::tempdir().unwrap();
    let (store, _) = open(config(directory.path()));
    let written = record(9, "alpha", ExecutionStatus::Pending);
    store.put_execution_durable(written.clone()).await.unwrap();

    // A second handle on the same file, while the first is still open and never flushed.
    let (second_store, recovered) = open(config(directory.path()));
    assert_eq!(recovered.unfinished_executions, vec![written.clone()]);
    assert_eq!(
        second_store.execution("exec-00000009").unwrap(),
        Some(written)
    );
    let stats = store.write_stats();
    assert!(stats.batches_committed >= 1);
    assert!(stats.max_commit_latency_us > 0);
    assert_eq!(stats.queue_depth, 0);
}

#[tokio::test]
async fn a_volatile_put_is_visible_but_only_the_next_real_put_is_written() {
    let directory = tempfile::tempdir().unwrap();
    let (store, _) = open(config(directory.path()));
    let running = record(4, "alpha", ExecutionStatus::Running);
    store.put_execution_volatile(running.clone());
    assert_eq!(
        store.execution("exec-00000004").unwrap(),
        Some(running.clone())
    );
    let listed = store
        .list_executions(&ExecutionQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(listed.executions.len(), 1);
    store.flush().await.unwrap();
    let (second_store, recovered) = open(config(directory.path()));
    assert!(recovered.unfinished_executions.is_empty(), "never written");
    assert_eq!(second_store.execution("exec-00000004").unwrap(), None);
    drop(second_store);

    let completed = record(4, "alpha", ExecutionStatus::Completed);
    store.put_execution(completed.clone()).await.unwrap();
    store.flush().await.unwrap();
    let (third_store, _) = open(config(directory.path()));
    assert_eq!(
        third_store.execution("exec-00000004").unwrap(),
        Some(completed)
    );
}

#[tokio::test]
async fn a_flush_puts_queued_records_in_the_file() {
    let directory = tempfile::tempdir().unwrap();
    let (store, _) = open(config(directory.path()));
    for sequence in 1..=100 {
        store
            .put_execution(record(sequence, "alpha", ExecutionStatus::Completed))
            .await
            .unwrap();
    }
    store.flush().await.unwrap();

    // Checked with a raw connection, as an operator would with the sqlite3 CLI.
    let connection = rusqlite::Connection::open(directory.path().join("store.sqlite")).unwrap();
    let (count, status, output): (i64, String, Vec<u8>) = connection
        .query_row(
            "SELECT (SELECT count(*) FROM executions), status, output \
             FROM executions WHERE execution_id = 'exec-00000042'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .unwrap();
    assert_eq!(count, 100);
    assert_eq!(status, "COMPLETED");
    assert_eq!(output, b"output of 42");
    let journal_mode: String = connection
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(journal_mode, "wal");
}

/// Fills a durable and a memory store with the same records and checks every query against
/// both: the answers must be identical (as summaries) and equal to the expected sequences.
#[tokio::test]
async fn listing_matches_the_memory_store() {
    let directory = tempfile::tempdir().unwrap();
    let (durable, _) = open(config(directory.path()));
    let memory = MemoryStore::new(1000);
    for sequence in 1..=12 {
        let task_id = if sequence % 2 == 0 { "even" } else { "odd" };
        let status = match sequence % 4 {
            0 => ExecutionStatus::Failed,
            1 => ExecutionStatus::Pending,
            _ => ExecutionStatus::Completed,
        };
        let written = record(sequence, task_id, status);
        memory.put_execution(&summary(&written)).unwrap();
        durable.put_execution(written).await.unwrap();
    }

    struct Case {
        query: ExecutionQuery,
        expected_sequences: Vec<u64>,
        expected_has_more: bool,
    }
    let case = |task_id: Option<&str>,
                status: Option<ExecutionStatus>,
                after_sequence: Option<u64>,
                limit: usize,
                newest: bool,
                expected_sequences: &[u64],
                expected_has_more: bool| Case {
        query: ExecutionQuery {
            task_id: task_id.map(str::to_owned),
            status,
            after_sequence,
            limit,
            newest,
            ..ExecutionQuery::default()
        },
        expected_sequences: expected_sequences.to_vec(),
        expected_has_more,
    };
    // Newest first and by submission time (records are submitted at 1_700_000_000_000 + their
    // sequence, in milliseconds).
    let submitted = |sequence: i64| 1_700_000_000_000 + sequence;
    let newest_first = |task_id: Option<&str>,
                        after_sequence: Option<u64>,
                        limit: usize,
                        window: (Option<i64>, Option<i64>),
                        expected_sequences: &[u64],
                        expected_has_more: bool| Case {
        query: ExecutionQuery {
            task_id: task_id.map(str::to_owned),
            after_sequence,
            limit,
            descending: true,
            submitted_at_or_after_ms: window.0,
            submitted_before_ms: window.1,
            ..ExecutionQuery::default()
        },
        expected_sequences: expected_sequences.to_vec(),
        expected_has_more,
    };
    let cases = [
        case(None, None, None, 5, false, &[1, 2, 3, 4, 5], true),
        case(None, None, Some(10), 5, false, &[11, 12], false),
        case(None, None, None, 3, true, &[10, 11, 12], true),
        case(None, None, Some(9), 5, true, &[10, 11, 12], false),
        case(Some("even"), None, None, 2, false, &[2, 4], true),
        case(
            Some("even"),
            None,
            Some(4),
            10,
            false,
            &[6, 8, 10, 12],
            false,
        ),
        case(
            Some("even"),
            Some(ExecutionStatus::Failed),
            None,
            10,
            false,
            &[4, 8, 12],
            false,
        ),
        case(
            None,
            Some(ExecutionStatus::Pending),
            None,
            2,
            true,
            &[5, 9],
            true,
        ),
        case(
            Some("odd"),
            Some(ExecutionStatus::Failed),
            None,
            10,
            false,
            &[],
            false,
        ),
        case(Some("nobody"), None, None, 10, false, &[], false),
        case(None, None, None, 0, false, &[], true),
        case(None, None, Some(12), 10, true, &[], false),
        newest_first(None, None, 3, (None, None), &[12, 11, 10], true),
        newest_first(
            None,
            Some(10),
            20,
            (None, None),
            &[9, 8, 7, 6, 5, 4, 3, 2, 1],
            false,
        ),
        newest_first(Some("even"), Some(10), 3, (None, None), &[8, 6, 4], true),
        newest_first(
            None,
            None,
            10,
            (Some(submitted(5)), Some(submitted(9))),
            &[8, 7, 6, 5],
            false,
        ),
        newest_first(
            None,
            Some(7),
            10,
            (Some(submitted(5)), None),
            &[6, 5],
            false,
        ),
        case(None, None, None, 0, false, &[], true),
        Case {
            query: ExecutionQuery {
                limit: 10,
                submitted_at_or_after_ms: Some(submitted(11)),
                ..ExecutionQuery::default()
            },
            expected_sequences: vec![11, 12],
            expected_has_more: false,
        },
    ];

    let check = |durable: &DurableStore| {
        for Case {
            query,
            expected_sequences,
            expected_has_more,
        } in &cases
        {
            let durable_page = durable.list_executions(query).unwrap();
            let memory_page = memory.list_executions(query).unwrap();
            let sequences: Vec<u64> = durable_page
                .executions
                .iter()
                .map(|listed| listed.sequence)
                .collect();
            assert_eq!(&sequences, expected_sequences, "{query:?}");
            assert_eq!(durable_page.has_more, *expected_has_more, "{query:?}");
            assert_eq!(durable_page.executions, memory_page.executions, "{query:?}");
            assert_eq!(durable_page.has_more, memory_page.has_more, "{query:?}");
        }
        let mut visited = Vec::new();
        durable
            .visit_executions(&mut |visited_record| visited.push(visited_record.sequence))
            .unwrap();
        assert_eq!(visited, (1..=12).collect::<Vec<_>>());
    };
    // Before the writer committed anything, after, and from the index a reopen loads.
    check(&durable);
    durable.flush().await.unwrap();
    check(&durable);
    drop(durable);
    let (reopened, _) = open(config(directory.path()));
    check(&reopened);
}

#[tokio::test]
async fn retention_deletes_the_oldest_terminal_records_only() {
    let directory = tempfile::tempdir().unwrap();
    let mut limited = config(directory.path());
    limited.max_execution_records = 2;
    let (store, _) = open(limited.clone());
    store
        .put_execution(record(1, "t", ExecutionStatus::Running))
        .await
        .unwrap();
    store
        .put_execution(record(2, "t", ExecutionStatus::Pending))
        .await
        .unwrap();
    for sequence in 3..=6 {
        store
            .put_execution(record(sequence, "t", ExecutionStatus::Completed))
            .await
            .unwrap();
    }
    // Four executions beyond the limit, and only the four terminal ones may go. The writer may
    // also run retention on its own at any point; the puts are ordered so that the outcome is the
    // same whenever it does.
    store.apply_retention().await.unwrap();
    assert_eq!(store.write_stats().records_deleted_by_retention, 4);
    let remaining: Vec<u64> = store
        .list_executions(&ExecutionQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap()
        .executions
        .iter()
        .map(|listed| listed.sequence)
        .collect();
    assert_eq!(remaining, vec![1, 2], "running and pending kept");
    assert!(store.execution("exec-00000003").unwrap().is_none());

    store
        .put_execution(record(1, "t", ExecutionStatus::Completed))
        .await
        .unwrap();
    store
        .put_execution(record(7, "t", ExecutionStatus::Completed))
        .await
        .unwrap();
    store
        .put_execution(record(8, "t", ExecutionStatus::Completed))
        .await
        .unwrap();
    // Now 1 is terminal and the oldest: 1 and 7 go, 2 (pending) and 8 stay.
    store.apply_retention().await.unwrap();
    assert_eq!(store.write_stats().records_deleted_by_retention, 6);
    assert_eq!(
        store.apply_retention().await.unwrap(),
        0,
        "nothing left to delete"
    );
    drop(store);

    let (reopened, recovered) = open(limited);
    let remaining: Vec<u64> = reopened
        .list_executions(&ExecutionQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap()
        .executions
        .iter()
        .map(|listed| listed.sequence)
        .collect();
    assert_eq!(remaining, vec![2, 8], "the file agrees with the index");
    assert_eq!(recovered.highest_sequence, 8);
}

#[tokio::test]
async fn retention_deletes_terminal_records_older_than_the_ttl() {
    let directory = tempfile::tempdir().unwrap();
    let mut expiring = config(directory.path());
    expiring.execution_ttl = Some(Duration::from_secs(3600));
    let (store, _) = open(expiring.clone());
    let now_us = unix_now_us();
    let two_hours_us = 2 * 3_600_000_000;
    let aged = |sequence: u64, status: ExecutionStatus, completed_at_us: Option<i64>| {
        let mut aged = record(sequence, "t", status);
        aged.submitted_at_ms = (now_us - two_hours_us) / 1000 - 1000;
        aged.completed_at_us = completed_at_us;
        aged
    };
    let written = [
        aged(1, ExecutionStatus::Completed, Some(now_us - two_hours_us)),
        aged(2, ExecutionStatus::Pending, None),
        aged(3, ExecutionStatus::Failed, Some(now_us - two_hours_us)),
        // Submitted long ago but completed a minute ago: within the TTL.
        aged(4, ExecutionStatus::Completed, Some(now_us - 60_000_000)),
        ExecutionRecord {
            submitted_at_ms: now_us / 1000,
            completed_at_us: Some(now_us),
            ..record(5, "t", ExecutionStatus::Completed)
        },
    ];
    for written_record in &written {
        store.put_execution(written_record.clone()).await.unwrap();
    }
    store.apply_retention().await.unwrap();
    assert_eq!(store.write_stats().records_deleted_by_retention, 2);
    let mut remaining = Vec::new();
    store
        .visit_executions(&mut |visited| remaining.push(visited.sequence))
        .unwrap();
    assert_eq!(remaining, vec![2, 4, 5]);
    drop(store);

    // The next open applies retention too and finds nothing more to delete.
    let (reopened, recovered) = open(expiring);
    assert_eq!(reopened.execution_count().unwrap(), 3);
    assert_eq!(recovered.unfinished_executions.len(), 1);
}

/// Records expire with time, not with writes: an idle store (one write, then none) drops a
/// record past its TTL on its own, by the writer's idle retention timer.
#[tokio::test]
async fn an_idle_store_drops_records_past_the_ttl_without_another_write() {
    let directory = tempfile::tempdir().unwrap();
    let mut expiring = config(directory.path());
    expiring.execution_ttl = Some(Duration::from_secs(1));
    let (store, _) = open(expiring);
    let now_us = unix_now_us();
    store
        .put_execution(ExecutionRecord {
            submitted_at_ms: now_us / 1000,
            completed_at_us: Some(now_us),
            ..record(1, "t", ExecutionStatus::Completed)
        })
        .await
        .unwrap();
    assert_eq!(store.execution_count().unwrap(), 1);
    store.flush().await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    while store.execution_count().unwrap() > 0 {
        assert!(
            Instant::now() < deadline,
            "the expired record is still stored 15 s after its write on an idle store"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(store.execution("exec-00000001").unwrap().is_none());
    assert_eq!(store.write_stats().records_deleted_by_retention, 1);
}

/// A burst that overshoots `max_execution_records` right after a retention run is trimmed by
/// the writer on its own once the store is idle, not left over the limit until the next write.
#[tokio::test]
async fn an_idle_store_trims_a_burst_beyond_the_record_limit_without_another_write() {
    let directory = tempfile::tempdir().unwrap();
    let mut limited = config(directory.path());
    limited.max_execution_records = 2;
    let (store, _) = open(limited);
    for sequence in 1..=5 {
        store
            .put_execution(record(sequence, "t", ExecutionStatus::Completed))
            .await
            .unwrap();
    }
    store.flush().await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    while store.execution_count().unwrap() > 2 {
        assert!(
            Instant::now() < deadline,
            "the store still holds {} records 15 s after the burst",
            store.execution_count().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut remaining = Vec::new();
    store
        .visit_executions(&mut |visited| remaining.push(visited.sequence))
        .unwrap();
    assert_eq!(remaining, vec![4, 5], "the newest two are kept");
}

#[tokio::test]
async fn deleting_a_task_history_is_durable() {
    let directory = tempfile::tempdir().unwrap();
    let (store, _) = open(config(directory.path()));
    for sequence in 1..=6 {
        let task_id = if sequence <= 4 { "a" } else { "b" };
        store
            .put_execution(record(sequence, task_id, ExecutionStatus::Completed))
            .await
            .unwrap();
    }
    // Half committed, half still queued when the delete arrives.
    store.flush().await.unwrap();
    store
        .put_execution(record(7, "a", ExecutionStatus::Pending))
        .await
        .unwrap();
    assert_eq!(store.delete_executions_of_task("a").await.unwrap(), 5);
    assert_eq!(store.execution_count().unwrap(), 2);
    assert!(store.execution("exec-00000007").unwrap().is_none());
    // A put after the delete is kept.
    store
        .put_execution(record(8, "a", ExecutionStatus::Pending))
        .await
        .unwrap();
    drop(store);

    let (reopened, recovered) = open(config(directory.path()));
    let mut remaining = Vec::new();
    reopened
        .visit_executions(&mut |visited| remaining.push(visited.sequence))
        .unwrap();
    assert_eq!(remaining, vec![5, 6, 8]);
    assert_eq!(recovered.unfinished_executions.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_puts_are_group_committed() {
    let directory = tempfile::tempdir().unwrap();
    let (store, _) = open(config(directory.path()));
    let store = Arc::new(store);
    let mut writers = Vec::new();
    for writer_number in 0..64u64 {
        let store = Arc::clone(&store);
        writers.push(tokio::spawn(async move {
            for put_number in 0..200u64 {
                let sequence = writer_number * 200 + put_number + 1;
                let task_id = format!("task-{writer_number}");
                store
                    .put_execution(record(sequence, &task_id, ExecutionStatus::Completed))
                    .await
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    store.flush().await.unwrap();
    assert_eq!(store.execution_count().unwrap(), 12_800);
    let stats = store.write_stats();
    assert_eq!(stats.records_written, 12_800);
    assert!(
        stats.batches_committed < stats.records_written,
        "group commit: {stats:?}"
    );
    println!(
        "64 × 200 concurrent puts: {} batches, mean batch size {:.1}, max commit {} µs",
        stats.batches_committed, stats.mean_batch_size, stats.max_commit_latency_us
    );
    drop(store);
    let (reopened, _) = open(config(directory.path()));
    assert_eq!(reopened.execution_count().unwrap(), 12_800);
}

#[tokio::test]
async fn configuration_errors_and_a_dropped_queue_are_reported() {
    let directory = tempfile::tempdir().unwrap();
    let mut zero_batch = config(directory.path());
    zero_batch.max_batch = 0;
    let Err(error) = DurableStore::open(zero_batch) else {
        panic!("a zero max_batch is refused");
    };
    assert_eq!(error.kind, spearlet_core::ErrorKind::InvalidArgument);

    let (store, _) = open(config(directory.path()));
    let mut too_large = record(1, "t", ExecutionStatus::Pending);
    too_large.sequence = u64::MAX;
    let error = store.put_execution(too_large).await.unwrap_err();
    assert_eq!(error.kind, spearlet_core::ErrorKind::InvalidArgument);
}
