//! Micro-benchmarks of the per-call cost of the wasm runtime, with the module compiled and
//! linked once beforehand (what a warm task pays):
//! - `wasm/per_call_echo_64B`: `WasmModule::run` of the `echo` example with 64 bytes of stdin —
//!   a fresh `Store` and instance, `_start`, output collected (`per_call` isolation);
//! - `wasm/reuse_counter_increment`: one `ReusableInstance::call` of the `counter` example's
//!   `increment` on a live instance (`reuse` isolation; `echo` is a command module and cannot be
//!   reused).
//!
//! Both run on a current-thread tokio runtime. Run:
//! `cargo bench -p spearlet-wasm --bench instantiate` (add a name filter after `--`).

// A benchmark measures real elapsed time.
#![allow(clippy::disallowed_types)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use spearlet_core::Outcome;
use spearlet_wasm::{
    ReusableInstanceSetup, WasmEngine, WasmEngineConfig, WasmInvocation, WasmModule,
};
use tokio_util::sync::CancellationToken;

const MEMORY_LIMIT_BYTES: u64 = 16 << 20;

fn config() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

fn load_example(engine: &WasmEngine, name: &str) -> WasmModule {
    let example = spearlet_examples::example(name).unwrap();
    engine.load_module(name, example.wasm).unwrap()
}

fn invocation(module: &WasmModule, function: &str, stdin: &Bytes) -> WasmInvocation {
    WasmInvocation {
        entry_point: module.resolve_entry_point(function).unwrap(),
        stdin: stdin.clone(),
        arguments: vec!["bench".into()],
        environment: vec![],
        preopened_directories: vec![],
        memory_limit_bytes: MEMORY_LIMIT_BYTES,
        max_output_bytes: 1 << 20,
        max_log_bytes: 1 << 20,
        deadline: tokio::time::Instant::now() + Duration::from_secs(10),
        cancellation: CancellationToken::new(),
        output_chunks: None,
    }
}

fn wasm_calls(criterion: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let engine = WasmEngine::new(&WasmEngineConfig {
        max_instances: 16,
        ..WasmEngineConfig::default()
    })
    .unwrap();
    let mut group = criterion.benchmark_group("wasm");

    let echo = load_example(&engine, "echo");
    let input = Bytes::from(vec![b'x'; 64]);
    let report = runtime.block_on(echo.run(invocation(&echo, "", &input)));
    assert_eq!(report.outcome, Outcome::Completed, "{:?}", report.outcome);
    assert_eq!(report.output, input);
    group.bench_function("per_call_echo_64B", |bencher| {
        bencher.iter_custom(|iterations| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iterations {
                    black_box(echo.run(invocation(&echo, "", &input)).await);
                }
                started.elapsed()
            })
        })
    });

    let counter = load_example(&engine, "counter");
    let mut instance = runtime
        .block_on(counter.instantiate_reusable(ReusableInstanceSetup {
            memory_limit_bytes: MEMORY_LIMIT_BYTES,
            preopened_directories: vec![],
            environment: vec![],
            deadline: tokio::time::Instant::now() + Duration::from_secs(10),
        }))
        .unwrap();
    let no_input = Bytes::new();
    let first = runtime.block_on(instance.call(invocation(&counter, "increment", &no_input)));
    assert_eq!(first.report.outcome, Outcome::Completed);
    assert_eq!(first.report.output, "1\n");
    group.bench_function("reuse_counter_increment", |bencher| {
        bencher.iter_custom(|iterations| {
            runtime.block_on(async {
                let started = Instant::now();
                for _ in 0..iterations {
                    let call = instance
                        .call(invocation(&counter, "increment", &no_input))
                        .await;
                    assert!(call.instance_still_usable);
                    black_box(call);
                }
                started.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = wasm_calls
}
criterion_main!(benches);
