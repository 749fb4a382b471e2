//! Micro-benchmarks of the durable store's write path (SQLite in WAL mode, `synchronous=FULL`,
//! one writer thread that group-commits), on a file in a fresh temporary directory:
//! - `store/put_durable_1`: one `put_execution_durable` of a new completed record; returns after
//!   its commit, so this is the fsync-bound cost of one durable write;
//! - `store/put_256_then_flush`: 256 `put_execution` calls (queued, not waited for) followed by
//!   one `flush`, which returns once all of them are committed; the time is per batch of 256
//!   (criterion also prints the per-record rate).
//!
//! Every put is a new execution (increasing sequence); default retention (100 000 records) stays
//! on. The numbers depend on the disk behind the temporary directory (`TMPDIR`). Run:
//! `cargo bench -p spearlet-store --bench write_batch` (add a name filter after `--`).

// A benchmark measures real elapsed time.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use spearlet_core::{
    ExecutionMode, ExecutionRecord, ExecutionStatus, ResultEncoding, StoredRequest, TimelineEntry,
};
use spearlet_store::{DurableStore, DurableStoreConfig};

const BATCH: u64 = 256;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

/// A completed sync execution with small output, logs and a three-entry timeline.
fn record(sequence: u64) -> ExecutionRecord {
    let started_at_us = 1_700_000_000_000_000 + sequence as i64 * 1000;
    let timeline_entry = |offset_us: i64, status| TimelineEntry {
        at_us: started_at_us + offset_us,
        status,
        attempt: 1,
        note: String::new(),
    };
    ExecutionRecord {
        execution_id: format!("exec-{sequence:012}"),
        sequence,
        task_id: "task-bench".into(),
        task_name: "bench".into(),
        function_name: String::new(),
        mode: ExecutionMode::Sync,
        status: ExecutionStatus::Completed,
        submitted_at_ms: started_at_us / 1000,
        started_at_us: Some(started_at_us),
        completed_at_us: Some(started_at_us + 900),
        execution_time_ms: 1,
        memory_used_bytes: 65_536,
        output: Bytes::from(vec![b'o'; 64]),
        output_content_type: "application/octet-stream".into(),
        result_encoding: ResultEncoding::Payload,
        logs: Bytes::from_static(b"one log line\n"),
        error_code: None,
        error_message: String::new(),
        metrics: BTreeMap::from([("execution_time_us".into(), "900".into())]),
        attempt: 1,
        instance_id: "instance-1".into(),
        request_fingerprint: "ab".repeat(32),
        metadata: BTreeMap::new(),
        request: StoredRequest {
            input: Bytes::from(vec![b'i'; 64]),
            ..StoredRequest::default()
        },
        timeline: vec![
            timeline_entry(0, ExecutionStatus::Pending),
            timeline_entry(10, ExecutionStatus::Running),
            timeline_entry(900, ExecutionStatus::Completed),
        ],
    }
}

fn write_batch(criterion: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let directory = tempfile::tempdir().unwrap();
    let (store, _) = DurableStore::open(DurableStoreConfig::new(
        directory.path().join("store.sqlite"),
    ))
    .unwrap();
    let mut next_sequence = 1;
    let mut group = criterion.benchmark_group("store");

    group.bench_function("put_durable_1", |bencher| {
        bencher.iter_custom(|iterations| {
            runtime.block_on(async {
                let records: Vec<_> = (0..iterations)
                    .map(|offset| record(next_sequence + offset))
                    .collect();
                next_sequence += iterations;
                let started = Instant::now();
                for record in records {
                    store.put_execution_durable(record).await.unwrap();
                }
                started.elapsed()
            })
        })
    });

    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("put_256_then_flush", |bencher| {
        bencher.iter_custom(|iterations| {
            runtime.block_on(async {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iterations {
                    let records: Vec<_> = (0..BATCH)
                        .map(|offset| record(next_sequence + offset))
                        .collect();
                    next_sequence += BATCH;
                    let started = Instant::now();
                    for record in records {
                        store.put_execution(record).await.unwrap();
                    }
                    store.flush().await.unwrap();
                    elapsed += started.elapsed();
                }
                elapsed
            })
        })
    });
    group.finish();

    // Context for the numbers: how the writer grouped the writes, and what a commit cost it.
    let stats = store.write_stats();
    assert_eq!(stats.failed_batches, 0);
    println!(
        "writer: {} batches, mean {:.1} operations per batch, mean commit {} µs, max {} µs",
        stats.batches_committed,
        stats.mean_batch_size,
        stats.total_commit_latency_us / stats.batches_committed.max(1),
        stats.max_commit_latency_us,
    );
}

criterion_group! {
    name = benches;
    config = config();
    targets = write_batch
}
criterion_main!(benches);
