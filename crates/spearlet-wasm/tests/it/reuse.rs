//! Reuse isolation against tiny WAT reactors: state survives between calls on one instance,
//! `_initialize` runs once, every call still gets its own stdin and stdout, and any abnormal end
//! retires the instance.
//!
//! Guests are written in WAT so each test shows exactly what the guest does; one test also runs
//! the committed `counter` example.

use std::time::Duration;

use bytes::Bytes;
use spearlet_core::{ErrorCode, Outcome};
use spearlet_wasm::{
    EntryPoint, OutputChunkSender, ReusableCallReport, ReusableInstance, ReusableInstanceSetup,
    WasmEngine, WasmEngineConfig, WasmInvocation, WasmModule,
};
use tokio_util::sync::CancellationToken;

/// Imports, one page of memory and `$write(fd, ptr, len)` (iovec at 0, count written at 8).
const PRELUDE: &str = r#"
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $print_digit (param $value i32)
    (i32.store8 (i32.const 200) (i32.add (i32.const 48) (local.get $value)))
    (call $write (i32.const 1) (i32.const 200) (i32.const 1)))
"#;

/// A reactor with one export per behaviour under test.
const REACTOR: &str = r#"
  (global $count (mut i32) (i32.const 0))
  (global $initialize_runs (mut i32) (i32.const 0))
  (func (export "_initialize")
    (global.set $initialize_runs (i32.add (global.get $initialize_runs) (i32.const 1))))
  ;; Adds one to the counter and prints it.
  (func (export "increment") (result i32)
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (call $print_digit (global.get $count))
    (i32.const 0))
  ;; Prints how often `_initialize` ran in this instance.
  (func (export "initialize_runs") (call $print_digit (global.get $initialize_runs)))
  ;; Copies up to 100 bytes of stdin (iovec at 16, count read at 24, buffer at 300) to stdout.
  (func (export "echo") (result i32)
    (i32.store (i32.const 16) (i32.const 300))
    (i32.store (i32.const 20) (i32.const 100))
    (drop (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
    (call $write (i32.const 1) (i32.const 300) (i32.load (i32.const 24)))
    (i32.const 0))
  (func (export "fail") (result i32) (i32.const 7))
  (func (export "trap") unreachable)
  (func (export "exit_zero") (call $proc_exit (i32.const 0)))
  (func (export "spin") (loop $again (br $again)))
  ;; Prints "1" (so the caller knows it runs), then spins.
  (func (export "announce_then_spin")
    (call $print_digit (i32.const 1))
    (loop $again (br $again)))
  ;; Writes 1000 bytes at a time to stdout until the output cap stops it.
  (func (export "flood") (loop $again
    (call $write (i32.const 1) (i32.const 1000) (i32.const 1000))
    (br $again)))
  (func (export "grow") (drop (memory.grow (i32.const 1))))
  (func (export "grow_a_lot") (drop (memory.grow (i32.const 1000))))
"#;

fn guest(body: &str) -> String {
    format!("(module {PRELUDE} {body})")
}

fn engine() -> WasmEngine {
    WasmEngine::new(&WasmEngineConfig {
        max_instances: 16,
        ..WasmEngineConfig::default()
    })
    .unwrap()
}

fn load(engine: &WasmEngine, wasm_or_wat: &[u8]) -> WasmModule {
    engine.load_module("test", wasm_or_wat).unwrap()
}

const MEMORY_LIMIT_BYTES: u64 = 16 << 20;

fn setup(deadline_after: Duration) -> ReusableInstanceSetup {
    ReusableInstanceSetup {
        memory_limit_bytes: MEMORY_LIMIT_BYTES,
        preopened_directories: vec![],
        environment: vec![],
        deadline: tokio::time::Instant::now() + deadline_after,
    }
}

async fn start(module: &WasmModule) -> ReusableInstance {
    module
        .instantiate_reusable(setup(Duration::from_secs(10)))
        .await
        .unwrap()
}

/// One call of the export `function` with `stdin`, timing out after `timeout`.
struct Call<'a> {
    function: &'a str,
    stdin: &'a str,
    timeout: Duration,
    cancellation: CancellationToken,
    output_chunks: Option<OutputChunkSender>,
}

impl<'a> Call<'a> {
    fn of(function: &'a str) -> Call<'a> {
        Call {
            function,
            stdin: "",
            timeout: Duration::from_secs(10),
            cancellation: CancellationToken::new(),
            output_chunks: None,
        }
    }

    fn invocation(self, module: &WasmModule) -> WasmInvocation {
        WasmInvocation {
            entry_point: module.resolve_entry_point(self.function).unwrap(),
            stdin: Bytes::copy_from_slice(self.stdin.as_bytes()),
            arguments: vec!["test".into()],
            environment: vec![],
            preopened_directories: vec![],
            memory_limit_bytes: MEMORY_LIMIT_BYTES,
            max_output_bytes: 1 << 20,
            max_log_bytes: 1 << 20,
            deadline: tokio::time::Instant::now() + self.timeout,
            cancellation: self.cancellation,
            output_chunks: self.output_chunks,
        }
    }
}

async fn call(
    instance: &mut ReusableInstance,
    module: &WasmModule,
    call: Call<'_>,
) -> ReusableCallReport {
    instance.call(call.invocation(module)).await
}

fn output_text(call_report: &ReusableCallReport) -> String {
    String::from_utf8_lossy(&call_report.report.output).into_owned()
}

#[tokio::test]
async fn state_survives_between_calls_on_one_instance_but_not_between_runs() {
    let engine = engine();
    let module = load(&engine, guest(REACTOR).as_bytes());
    let mut instance = start(&module).await;
    let mut reused_outputs = Vec::new();
    let mut per_call_outputs = Vec::new();
    for _ in 0..3 {
        let reused = call(&mut instance, &module, Call::of("increment")).await;
        assert_eq!(reused.report.outcome, Outcome::Completed);
        assert!(reused.instance_still_usable);
        assert_eq!(reused.report.instantiate_duration, Duration::ZERO);
        reused_outputs.push(output_text(&reused));
        let per_call = module.run(Call::of("increment").invocation(&module)).await;
        per_call_outputs.push(String::from_utf8_lossy(&per_call.output).into_owned());
    }
    assert_eq!(reused_outputs, ["1", "2", "3"]);
    assert_eq!(per_call_outputs, ["1", "1", "1"]);
    assert_eq!(instance.calls_served(), 3);
}

#[tokio::test]
async fn initialize_runs_once_per_instance() {
    let engine = engine();
    let module = load(&engine, guest(REACTOR).as_bytes());
    let mut instance = start(&module).await;
    for _ in 0..3 {
        let report = call(&mut instance, &module, Call::of("initialize_runs")).await;
        assert_eq!(output_text(&report), "1");
    }
    assert!(instance.initialization_duration() > Duration::ZERO);
}

#[tokio::test]
async fn every_call_reads_its_own_stdin() {
    let engine = engine();
    let module = load(&engine, guest(REACTOR).as_bytes());
    let mut instance = start(&module).await;
    for input in ["first", "second call", "3"] {
        let report = call(
            &mut instance,
            &module,
            Call {
                stdin: input,
                ..Call::of("echo")
            },
        )
        .await;
        assert_eq!(output_text(&report), input);
    }
}

#[tokio::test]
async fn streamed_output_ends_with_its_call() {
    let engine = engine();
    let module = load(&engine, guest(REACTOR).as_bytes());
    let mut instance = start(&module).await;
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let report = call(
        &mut instance,
        &module,
        Call {
            output_chunks: Some(sender),
            ..Call::of("increment")
        },
    )
    .await;
    assert!(report.instance_still_usable);
    assert_eq!(receiver.recv().await, Some(Bytes::from_static(b"1")));
    // The instance lives on, but the call's sender is gone, so the stream is finished.
    assert_eq!(receiver.recv().await, None);
}

/// How each export ends, and whether the instance may serve another call afterwards.
#[tokio::test]
async fn only_a_normal_return_keeps_the_instance_usable() {
    let table: &[(&str, Option<ErrorCode>, bool)] = &[
        ("increment", None, true),
        ("fail", Some(ErrorCode::ReturnCode), true),
        ("trap", Some(ErrorCode::Trap), false),
        ("exit_zero", None, false),
        ("flood", Some(ErrorCode::OutputTooLarge), false),
        ("grow_a_lot", Some(ErrorCode::MemoryLimit), false),
    ];
    let engine = engine();
    let module = load(&engine, guest(REACTOR).as_bytes());
    for (function, code, still_usable) in table {
        let mut instance = start(&module).await;
        let report = call(&mut instance, &module, Call::of(function)).await;
        assert_eq!(
            report.report.outcome.error_code(),
            *code,
            "{function}: {:?}",
            report.report.outcome
        );
        assert_eq!(report.instance_still_usable, *still_usable, "{function}");
    }
}

#[tokio::test]
async fn a_non_zero_status_keeps_the_state() {
    let engine = engine();
    let module = load(&engine, guest(REACTOR).as_bytes());
    let mut instance = start(&module).await;
    call(&mut instance, &module, Call::of("increment")).await;
    let failed = call(&mut instance, &module, Call::of("fail")).await;
    assert!(failed.report.outcome.error_message().contains('7'));
    let next = call(&mut instance, &module, Call::of("increment")).await;
    assert_eq!(output_text(&next), "2");
}

#[tokio::test]
async fn a_retired_instance_refuses_further_calls() {
    let engine = engine();
    let module = load(&engine, guest(REACTOR).as_bytes());
    let mut instance = start(&module).await;
    let trapped = call(&mut instance, &module, Call::of("trap")).await;
    assert!(!trapped.instance_still_usable);
    let refused = call(&mut instance, &module, Call::of("increment")).await;
    assert!(!refused.instance_still_usable);
    assert_eq!(refused.report.outcome.error_code(), Some(ErrorCode::Trap));
    assert!(
        refused.report.outcome.error_message().contains("retired"),
        "{:?}",
        refused.report.outcome
    );
    assert!(refused.report.output.is_empty());
    assert_eq!(instance.calls_served(), 1);
}

#[tokio::test]
async fn a_busy_call_times_out_promptly_and_retires_the_instance() {
    let engine = engine();
    let module = load(&engine, guest(REACTOR).as_bytes());
    let mut instance = start(&module).await;
    let started = std::time::Instant::now();
    let report = call(
        &mut instance,
        &module,
        Call {
            timeout: Duration::from_millis(100),
            ..Call::of("spin")
        },
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(report.report.outcome.error_code(), Some(ErrorCode::Timeout));
    assert!(!report.instance_still_usable);
    // Generous margin: the behaviour under test is "stops", not "stops fast".
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
}

#[tokio::test]
async fn a_busy_call_can_be_cancelled() {
    let engine = engine();
    let module = load(&engine, guest(REACTOR).as_bytes());
    let mut instance = start(&module).await;
    let cancellation = CancellationToken::new();
    let canceller = cancellation.clone();
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    // Cancels once the guest has printed, that is once it surely runs.
    tokio::spawn(async move {
        assert_eq!(receiver.recv().await, Some(Bytes::from_static(b"1")));
        canceller.cancel();
    });
    let report = call(
        &mut instance,
        &module,
        Call {
            cancellation,
            output_chunks: Some(sender),
            ..Call::of("announce_then_spin")
        },
    )
    .await;
    assert_eq!(
        report.report.outcome.error_code(),
        Some(ErrorCode::Cancelled)
    );
    assert!(!report.instance_still_usable);
}

#[tokio::test]
async fn peak_memory_is_the_instances_peak_so_far() {
    let engine = engine();
    let module = load(&engine, guest(REACTOR).as_bytes());
    let mut instance = start(&module).await;
    let page = 65536;
    for expected_pages in [2, 3] {
        let report = call(&mut instance, &module, Call::of("grow")).await;
        assert_eq!(report.report.peak_memory_bytes, expected_pages * page);
    }
    let report = call(&mut instance, &module, Call::of("increment")).await;
    assert_eq!(report.report.peak_memory_bytes, 3 * page);
}

#[tokio::test]
async fn start_is_refused_without_retiring_the_instance() {
    let engine = engine();
    let module = load(
        &engine,
        guest(&format!(r#"{REACTOR} (func (export "_start"))"#)).as_bytes(),
    );
    let mut instance = start(&module).await;
    let mut invocation = Call::of("increment").invocation(&module);
    invocation.entry_point = EntryPoint::Start;
    let report = instance.call(invocation).await;
    assert_eq!(report.report.outcome.error_code(), Some(ErrorCode::Trap));
    assert!(
        report
            .report
            .outcome
            .error_message()
            .contains("named export"),
        "{:?}",
        report.report.outcome
    );
    assert!(report.instance_still_usable);
    assert_eq!(instance.calls_served(), 0);
    let next = call(&mut instance, &module, Call::of("increment")).await;
    assert_eq!(output_text(&next), "1");
}

/// `_initialize` bodies that must not produce an instance, and a word the failure must contain.
#[tokio::test]
async fn failing_initializers_are_start_failures() {
    let table: &[(&str, &str)] = &[
        (
            r#"(data (i32.const 100) "init failing\n")
               (func (export "_initialize")
                 (call $write (i32.const 2) (i32.const 100) (i32.const 13))
                 unreachable)"#,
            "unreachable",
        ),
        (
            r#"(func (export "_initialize") (call $proc_exit (i32.const 0)))"#,
            "proc_exit(0)",
        ),
        (
            r#"(func (export "_initialize") (loop $again (br $again)))"#,
            "deadline",
        ),
    ];
    let engine = engine();
    for (initializer, expected_word) in table {
        let module = load(
            &engine,
            guest(&format!(r#"{initializer} (func (export "run"))"#)).as_bytes(),
        );
        let started = std::time::Instant::now();
        let failure = module
            .instantiate_reusable(setup(Duration::from_millis(100)))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            failure.message.contains(expected_word),
            "{expected_word}: {}",
            failure.message
        );
        if expected_word == &"unreachable" {
            assert_eq!(failure.logs, Bytes::from_static(b"init failing\n"));
        }
    }
}

#[tokio::test]
async fn only_modules_with_a_callable_export_can_be_reused() {
    let engine = engine();
    let reactor = load(&engine, guest(REACTOR).as_bytes());
    reactor.check_reusable().unwrap();
    for body in [
        r#"(func (export "_start"))"#,
        r#"(func (export "_start")) (func (export "_initialize"))"#,
        r#"(func (export "_start")) (func (export "takes") (param i32))"#,
    ] {
        let command = load(&engine, guest(body).as_bytes());
        let error = command.check_reusable().unwrap_err();
        assert!(
            error.message.contains("spearlet.isolation"),
            "{}",
            error.message
        );
        assert!(error.message.contains("_start"), "{}", error.message);
    }
}

#[tokio::test]
async fn instances_and_their_calls_move_between_threads() {
    let engine = engine();
    let module = load(&engine, guest(REACTOR).as_bytes());
    let mut instance = start(&module).await;
    let invocation = Call::of("increment").invocation(&module);
    let (report, instance) = tokio::spawn(async move {
        let report = instance.call(invocation).await;
        (report, instance)
    })
    .await
    .unwrap();
    assert_eq!(output_text(&report), "1");
    assert_eq!(instance.calls_served(), 1);
}

#[tokio::test]
async fn the_counter_example_counts_on_a_reused_instance() {
    let counter = spearlet_examples::EXAMPLES
        .iter()
        .find(|example| example.name == "counter")
        .unwrap();
    let engine = engine();
    let module = load(&engine, counter.wasm);
    module.check_reusable().unwrap();
    let mut instance = start(&module).await;
    let mut outputs = Vec::new();
    for function in ["increment", "increment", "get", "increment"] {
        let report = call(&mut instance, &module, Call::of(function)).await;
        assert_eq!(report.report.outcome, Outcome::Completed, "{function}");
        assert!(report.instance_still_usable);
        outputs.push(output_text(&report));
    }
    assert_eq!(outputs, ["1\n", "2\n", "2\n", "3\n"]);
    let per_call = module
        .run(Call::of(counter.default_function).invocation(&module))
        .await;
    assert_eq!(per_call.output, Bytes::from_static(b"1\n"));
}
