//! How fast one producer queues execution records and how long they take to become durable,
//! with the default batch settings, on a file in a fresh temporary directory: 20 000 completed
//! records with 200 bytes of output are put (`put_execution`, queued) and then flushed; then 100
//! durable puts are made one at a time (`put_execution_durable`, each waits for its own commit,
//! so their mean is the fsync latency). Prints the figures and the writer's batch statistics;
//! checks only that every record was stored. Formerly a test that ran in every CI without being
//! pass/fail. The numbers depend on the disk behind `TMPDIR`. Run:
//! `cargo bench -p spearlet-store --bench put_throughput`.

// A benchmark measures real elapsed time.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use spearlet_core::{
    ExecutionMode, ExecutionRecord, ExecutionStatus, ResultEncoding, StoredRequest, TimelineEntry,
};
use spearlet_store::{DurableStore, DurableStoreConfig};

const QUEUED_PUTS: u64 = 20_000;
const DURABLE_PUTS: u64 = 100;

/// A completed async execution with 200 bytes of output, no logs and no input.
fn record(sequence: u64) -> ExecutionRecord {
    let started_at_us = 1_700_000_000_000_000 + sequence as i64 * 1000;
    ExecutionRecord {
        execution_id: format!("exec-{sequence:08}"),
        sequence,
        task_id: "bench".into(),
        task_name: "bench-name".into(),
        function_name: "handle".into(),
        mode: ExecutionMode::Async,
        status: ExecutionStatus::Completed,
        submitted_at_ms: started_at_us / 1000,
        started_at_us: Some(started_at_us + 10),
        completed_at_us: Some(started_at_us + 900),
        execution_time_ms: 3,
        memory_used_bytes: 65_536,
        output: Bytes::from(vec![b'x'; 200]),
        output_content_type: "text/plain".into(),
        result_encoding: ResultEncoding::Payload,
        logs: Bytes::new(),
        error_code: None,
        error_message: String::new(),
        metrics: BTreeMap::from([("execution_time_us".into(), "3120".into())]),
        attempt: 1,
        instance_id: "instance-1".into(),
        request_fingerprint: "ab".repeat(32),
        metadata: BTreeMap::new(),
        request: StoredRequest::default(),
        timeline: vec![TimelineEntry {
            at_us: started_at_us + 900,
            status: ExecutionStatus::Completed,
            attempt: 1,
            note: String::new(),
        }],
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(measure_put_throughput());
}

async fn measure_put_throughput() {
    let directory = tempfile::tempdir().unwrap();
    let (store, _) = DurableStore::open(DurableStoreConfig::new(
        directory.path().join("store.sqlite"),
    ))
    .unwrap();
    let started = Instant::now();
    for sequence in 1..=QUEUED_PUTS {
        store.put_execution(record(sequence)).await.unwrap();
    }
    let queued_after = started.elapsed();
    store.flush().await.unwrap();
    let durable_after = started.elapsed();
    let stats = store.write_stats();
    println!(
        "throughput: {QUEUED_PUTS} puts queued in {:?} ({:.0} records/s), durable in {:?} \
         ({:.0} records/s); {} batches, mean batch {:.1}, max commit {} µs, mean commit {:.0} µs",
        queued_after,
        QUEUED_PUTS as f64 / queued_after.as_secs_f64(),
        durable_after,
        QUEUED_PUTS as f64 / durable_after.as_secs_f64(),
        stats.batches_committed,
        stats.mean_batch_size,
        stats.max_commit_latency_us,
        stats.total_commit_latency_us as f64 / stats.batches_committed.max(1) as f64,
    );
    // A figure over records that were not all stored would be meaningless.
    assert_eq!(store.execution_count().unwrap(), QUEUED_PUTS as usize);

    let started = Instant::now();
    for sequence in QUEUED_PUTS + 1..=QUEUED_PUTS + DURABLE_PUTS {
        store.put_execution_durable(record(sequence)).await.unwrap();
    }
    println!(
        "durable put latency, one at a time: {:.0} µs mean over {DURABLE_PUTS}",
        started.elapsed().as_micros() as f64 / DURABLE_PUTS as f64
    );
}
