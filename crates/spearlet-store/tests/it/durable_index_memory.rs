//! What the durable store's in-memory index holds, checked as behaviour rather than measured:
//! once a record is committed its index entry is a summary (no output, logs, input or timeline),
//! and retention by count keeps the index at its cap however much is written. What an entry
//! costs in bytes is a measurement, printed by `cargo bench -p spearlet-store --bench
//! index_memory` (docs/PERFORMANCE.md).

use std::collections::BTreeMap;

use bytes::Bytes;
use spearlet_core::{
    ExecutionMode, ExecutionRecord, ExecutionStatus, ResultEncoding, StoredRequest, TimelineEntry,
};
use spearlet_store::{DurableStore, DurableStoreConfig, ExecutionQuery};

/// Every record carries this much output and input, none of which may stay in the index.
const PAYLOAD_BYTES: usize = 4096;

/// A completed execution with payloads in every field the index must not keep.
fn record_with_payloads(sequence: u64) -> ExecutionRecord {
    ExecutionRecord {
        execution_id: format!("exec-{sequence:08}"),
        sequence,
        task_id: "task".into(),
        task_name: "task-name".into(),
        function_name: "handle".into(),
        mode: ExecutionMode::Sync,
        status: ExecutionStatus::Completed,
        submitted_at_ms: 1_700_000_000_000,
        started_at_us: Some(1_700_000_000_000_100),
        completed_at_us: Some(1_700_000_000_003_100),
        execution_time_ms: 3,
        memory_used_bytes: 65_536,
        output: Bytes::from(vec![b'o'; PAYLOAD_BYTES]),
        output_content_type: "application/octet-stream".into(),
        result_encoding: ResultEncoding::Payload,
        logs: Bytes::from_static(b"warming up\n"),
        error_code: None,
        error_message: String::new(),
        metrics: BTreeMap::from([("execution_time_us".into(), "3012".into())]),
        attempt: 1,
        instance_id: "instance-1".into(),
        request_fingerprint: "ab".repeat(32),
        metadata: BTreeMap::new(),
        request: StoredRequest {
            input: Bytes::from(vec![b'i'; PAYLOAD_BYTES]),
            ..StoredRequest::default()
        },
        timeline: vec![TimelineEntry {
            at_us: 1_700_000_000_003_100,
            status: ExecutionStatus::Completed,
            attempt: 1,
            note: String::new(),
        }],
    }
}

fn open_store(directory: &tempfile::TempDir, max_execution_records: usize) -> DurableStore {
    let mut config = DurableStoreConfig::new(directory.path().join("store.sqlite"));
    config.max_execution_records = max_execution_records;
    DurableStore::open(config).unwrap().0
}

#[tokio::test]
async fn committed_records_leave_only_their_summaries_in_the_index() {
    let directory = tempfile::tempdir().unwrap();
    let store = open_store(&directory, 10_000);
    for sequence in 1..=200 {
        store
            .put_execution(record_with_payloads(sequence))
            .await
            .unwrap();
    }
    store.flush().await.unwrap();

    let mut entries_seen = 0;
    store
        .visit_executions(&mut |entry| {
            entries_seen += 1;
            assert!(
                entry.output.is_empty()
                    && entry.logs.is_empty()
                    && entry.request.input.is_empty()
                    && entry.timeline.is_empty(),
                "{} kept payloads in the index after its commit",
                entry.execution_id
            );
            // What a listing needs stays.
            assert_eq!(entry.status, ExecutionStatus::Completed);
            assert_eq!(entry.metrics["execution_time_us"], "3012");
        })
        .unwrap();
    assert_eq!(entries_seen, 200);
    // The full record is still there, read from the file.
    let full = store.execution("exec-00000007").unwrap().unwrap();
    assert_eq!(full, record_with_payloads(7));
}

#[tokio::test]
async fn retention_keeps_the_index_at_its_cap_after_ten_times_the_cap() {
    const CAP: usize = 300;
    let directory = tempfile::tempdir().unwrap();
    let store = open_store(&directory, CAP);
    let written = 10 * CAP as u64;
    for sequence in 1..=written {
        store
            .put_execution(record_with_payloads(sequence))
            .await
            .unwrap();
    }
    // The writer also runs retention on its own now and then; this run makes the end state exact.
    store.apply_retention().await.unwrap();
    // Once over the cap, retention trims to 95% of it (hysteresis), so that it deletes in
    // larger steps; the index is bounded by the cap either way.
    let kept_count = store.execution_count().unwrap();
    assert!(
        (CAP - CAP / 20..=CAP).contains(&kept_count),
        "{kept_count} executions kept under a cap of {CAP} after {written} were written"
    );
    let kept: Vec<u64> = store
        .list_executions(&ExecutionQuery {
            limit: 2 * CAP,
            ..Default::default()
        })
        .unwrap()
        .executions
        .iter()
        .map(|listed| listed.sequence)
        .collect();
    let newest: Vec<u64> = (written - kept_count as u64 + 1..=written).collect();
    assert_eq!(kept, newest, "retention keeps the newest");
    assert_eq!(
        store.write_stats().records_deleted_by_retention,
        written - kept_count as u64
    );
}
