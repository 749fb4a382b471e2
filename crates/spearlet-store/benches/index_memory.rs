//! Measures what the durable store's in-memory index costs per execution, by resident set size:
//! 100 000 realistic records (4 KB of output and of input each, none of which may stay in the
//! index) are put and flushed in chunks of 1000, once with three metrics per record and once
//! without, and the growth of the process's RSS is divided by the record count. Prints the
//! figures; asserts nothing (a size is a measurement, not a test). A binary of its own so that
//! nothing else allocates meanwhile. Run:
//! `cargo bench -p spearlet-store --bench index_memory`.

use std::collections::BTreeMap;

use bytes::Bytes;
use spearlet_core::{
    ExecutionMode, ExecutionRecord, ExecutionStatus, ResultEncoding, StoredRequest, TimelineEntry,
};
use spearlet_store::{DurableStore, DurableStoreConfig};

const MEASURED_RECORDS: u64 = 100_000;
const CHUNK: u64 = 1000;
/// Payload sizes: every record carries this much output and input, none of which may stay in
/// the index.
const PAYLOAD_BYTES: usize = 4096;

/// A record shaped like a real one: uuid-sized ids, a sha256 fingerprint, three metrics.
fn realistic_record(sequence: u64) -> ExecutionRecord {
    ExecutionRecord {
        execution_id: format!("{sequence:08x}-1f2e-4d3c-8b7a-{sequence:012x}"),
        sequence,
        task_id: format!("task-{:04}", sequence % 50),
        task_name: format!("resize-{:02}", sequence % 50),
        function_name: "handle".into(),
        mode: ExecutionMode::Sync,
        status: ExecutionStatus::Completed,
        submitted_at_ms: 1_700_000_000_000,
        started_at_us: Some(1_700_000_000_000_100),
        completed_at_us: Some(1_700_000_000_003_100),
        execution_time_ms: 3,
        memory_used_bytes: 1_114_112,
        output: Bytes::from(vec![b'o'; PAYLOAD_BYTES]),
        output_content_type: "application/octet-stream".into(),
        result_encoding: ResultEncoding::Payload,
        logs: Bytes::from_static(b"warming up\n"),
        error_code: None,
        error_message: String::new(),
        metrics: BTreeMap::from([
            ("execution_time_us".into(), "3012".into()),
            ("instantiate_us".into(), "41".into()),
            ("fuel_consumed".into(), "1200345".into()),
        ]),
        attempt: 1,
        instance_id: format!("instance-{:04}", sequence % 16),
        request_fingerprint: format!("{sequence:064x}"),
        metadata: BTreeMap::new(),
        request: StoredRequest {
            input: Bytes::from(vec![b'i'; PAYLOAD_BYTES]),
            session_id: String::new(),
            environment: BTreeMap::from([("MODE".into(), "fast".into())]),
            headers: BTreeMap::new(),
            requested_timeout_ms: 0,
            max_retries: 0,
        },
        timeline: vec![TimelineEntry {
            at_us: 1_700_000_000_003_100,
            status: ExecutionStatus::Completed,
            attempt: 1,
            note: String::new(),
        }],
    }
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
    let kilobytes: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kilobytes * 1024
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(measure_index_bytes_per_execution());
}

async fn measure_index_bytes_per_execution() {
    let directory = tempfile::tempdir().unwrap();
    let mut config = DurableStoreConfig::new(directory.path().join("store.sqlite"));
    // Retention must not delete anything while the index grows under measurement.
    config.max_execution_records = 10 * MEASURED_RECORDS as usize;
    let (store, _) = DurableStore::open(config).unwrap();

    // Warm up: SQLite's page caches, the queue and the allocator's arenas reach steady size.
    let mut next_sequence = 1;
    for _ in 0..5 {
        for _ in 0..CHUNK {
            store
                .put_execution(realistic_record(next_sequence))
                .await
                .unwrap();
            next_sequence += 1;
        }
        store.flush().await.unwrap();
    }
    let mut measure = async |shape: &str, strip_metrics: bool| {
        let before = resident_bytes();
        // Flushing every chunk bounds the full records alive at once, so freed payload memory
        // is reused rather than counted.
        for _ in 0..MEASURED_RECORDS / CHUNK {
            for _ in 0..CHUNK {
                let mut record = realistic_record(next_sequence);
                if strip_metrics {
                    record.metrics.clear();
                }
                store.put_execution(record).await.unwrap();
                next_sequence += 1;
            }
            store.flush().await.unwrap();
        }
        let bytes_per_execution =
            resident_bytes().saturating_sub(before) as f64 / MEASURED_RECORDS as f64;
        println!(
            "index memory, {shape}: {bytes_per_execution:.0} bytes per execution by RSS over \
             {MEASURED_RECORDS} records"
        );
    };
    measure("three metrics", false).await;
    measure("no metrics", true).await;
    println!(
        "size_of::<ExecutionRecord>() = {} bytes inline",
        size_of::<ExecutionRecord>()
    );
}
