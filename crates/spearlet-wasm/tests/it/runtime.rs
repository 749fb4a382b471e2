//! The wasm runtime against tiny WAT guests: outcomes, limits, timeouts and cancellation.
//!
//! Guests are written in WAT so each test shows exactly what the guest does.

use std::time::Duration;

use bytes::Bytes;
use spearlet_core::{ErrorCode, Outcome};
use spearlet_wasm::{
    EntryPoint, OutputChunkSender, RunReport, WasmEngine, WasmEngineConfig, WasmInvocation,
};
use tokio_util::sync::CancellationToken;

/// Writes `len` bytes at `ptr` to fd 1 using an iovec at address 0.
const PRELUDE: &str = r#"
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
"#;

fn guest(body: &str) -> String {
    format!("(module {PRELUDE} {body})")
}

fn engine() -> WasmEngine {
    WasmEngine::new(&WasmEngineConfig {
        max_instances: 64,
        ..WasmEngineConfig::default()
    })
    .unwrap()
}

struct Call<'a> {
    function: &'a str,
    timeout: Duration,
    memory_limit_bytes: u64,
    max_output_bytes: u64,
    output_chunks: Option<OutputChunkSender>,
}

impl Default for Call<'_> {
    fn default() -> Self {
        Call {
            function: "",
            timeout: Duration::from_secs(10),
            memory_limit_bytes: 16 << 20,
            max_output_bytes: 1 << 20,
            output_chunks: None,
        }
    }
}

async fn run(wat: &str, call: Call<'_>, cancellation: CancellationToken) -> RunReport {
    let engine = engine();
    let module = engine.load_module("test", wat.as_bytes()).unwrap();
    let entry_point = module.resolve_entry_point(call.function).unwrap();
    module
        .run(WasmInvocation {
            entry_point,
            stdin: Bytes::new(),
            arguments: vec!["test".into()],
            environment: vec![],
            preopened_directories: vec![],
            memory_limit_bytes: call.memory_limit_bytes,
            max_output_bytes: call.max_output_bytes,
            max_log_bytes: 1 << 20,
            deadline: tokio::time::Instant::now() + call.timeout,
            cancellation,
            output_chunks: call.output_chunks,
        })
        .await
}

fn failure_code(report: &RunReport) -> Option<ErrorCode> {
    report.outcome.error_code()
}

#[tokio::test]
async fn outcomes_follow_the_abi() {
    let hello = r#"(data (i32.const 100) "hello\n")"#;
    let table: &[(&str, &str, Option<ErrorCode>, &str)] = &[
        (
            "start writes and returns",
            r#"(func (export "_start") (call $write (i32.const 1) (i32.const 100) (i32.const 6)))"#,
            None,
            "hello\n",
        ),
        (
            "proc_exit 0 is success",
            r#"(func (export "_start") (call $write (i32.const 1) (i32.const 100) (i32.const 6)) (call $proc_exit (i32.const 0)))"#,
            None,
            "hello\n",
        ),
        (
            "proc_exit 3 is EXIT_CODE",
            r#"(func (export "_start") (call $proc_exit (i32.const 3)))"#,
            Some(ErrorCode::ExitCode),
            "",
        ),
        (
            "unreachable is TRAP",
            r#"(func (export "_start") unreachable)"#,
            Some(ErrorCode::Trap),
            "",
        ),
    ];
    for (name, body, code, output) in table {
        let report = run(
            &guest(&format!("{hello} {body}")),
            Call::default(),
            CancellationToken::new(),
        )
        .await;
        assert_eq!(failure_code(&report), *code, "{name}: {:?}", report.outcome);
        assert_eq!(report.output, output.as_bytes(), "{name}");
    }
}

#[tokio::test]
async fn exit_code_is_in_the_message() {
    let report = run(
        &guest(r#"(func (export "_start") (call $proc_exit (i32.const 3)))"#),
        Call::default(),
        CancellationToken::new(),
    )
    .await;
    assert!(report.outcome.error_message().contains('3'));
}

#[tokio::test]
async fn named_exports_report_their_status() {
    let wat = guest(
        r#"(global $count (mut i32) (i32.const 0))
           (func (export "_initialize") (global.set $count (i32.const 41)))
           (func (export "ok") (result i32) (i32.const 0))
           (func (export "bad") (result i32) (i32.const 7))
           (func (export "unit"))"#,
    );
    for (function, code) in [
        ("ok", None),
        ("bad", Some(ErrorCode::ReturnCode)),
        ("unit", None),
    ] {
        let report = run(
            &wat,
            Call {
                function,
                ..Call::default()
            },
            CancellationToken::new(),
        )
        .await;
        assert_eq!(failure_code(&report), code, "{function}");
    }
}

#[tokio::test]
async fn unknown_and_unsuitable_exports_are_invalid_arguments() {
    let engine = engine();
    let module = engine
        .load_module(
            "t",
            guest(r#"(func (export "_start")) (func (export "takes") (param i32))"#).as_bytes(),
        )
        .unwrap();
    let missing = module.resolve_entry_point("nope").unwrap_err();
    assert!(missing.message.contains("_start"), "{}", missing.message);
    assert!(missing.message.contains("takes"), "{}", missing.message);
    let unsuitable = module.resolve_entry_point("takes").unwrap_err();
    assert!(
        unsuitable.message.contains("parameters"),
        "{}",
        unsuitable.message
    );
    assert_eq!(
        module.resolve_entry_point("main").unwrap(),
        EntryPoint::Start
    );
    assert_eq!(
        module
            .resolve_entry_point("__spear_default_entry__")
            .unwrap(),
        EntryPoint::Start
    );
}

#[tokio::test]
async fn malformed_modules_and_foreign_imports_are_rejected() {
    let engine = engine();
    assert!(engine.load_module("a", b"\0asm garbage").is_err());
    let foreign = engine
        .load_module(
            "b",
            br#"(module (import "env" "f" (func)) (func (export "_start")))"#,
        )
        .unwrap_err();
    assert!(foreign.message.contains("wasi_snapshot_preview1"));
}

#[tokio::test]
async fn memory_growth_beyond_the_limit_is_memory_limit() {
    let report = run(
        &guest(r#"(func (export "_start") (drop (memory.grow (i32.const 1000))))"#),
        Call {
            memory_limit_bytes: 2 << 20,
            ..Call::default()
        },
        CancellationToken::new(),
    )
    .await;
    assert_eq!(failure_code(&report), Some(ErrorCode::MemoryLimit));
}

#[tokio::test]
async fn peak_memory_is_reported() {
    let report = run(
        &guest(r#"(func (export "_start") (drop (memory.grow (i32.const 3))))"#),
        Call::default(),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(report.outcome, Outcome::Completed);
    assert_eq!(report.peak_memory_bytes, 4 * 65536);
}

#[tokio::test]
async fn output_beyond_the_cap_is_output_too_large() {
    let report = run(
        &guest(
            r#"(data (i32.const 100) "0123456789")
               (func (export "_start") (loop $again
                 (call $write (i32.const 1) (i32.const 100) (i32.const 10))
                 (br $again)))"#,
        ),
        Call {
            max_output_bytes: 95,
            ..Call::default()
        },
        CancellationToken::new(),
    )
    .await;
    assert_eq!(failure_code(&report), Some(ErrorCode::OutputTooLarge));
    assert_eq!(report.output.len(), 90);
}

const BUSY_LOOP: &str = r#"(func (export "_start") (loop $again (br $again)))"#;

/// Sleeps 60 s in `poll_oneoff` with one relative clock subscription at address 64.
const SLEEP_IN_HOST: &str = r#"(func (export "_start")
    (i64.store (i32.const 64) (i64.const 0))
    (i32.store8 (i32.const 72) (i32.const 0))
    (i32.store (i32.const 80) (i32.const 1))
    (i64.store (i32.const 88) (i64.const 60000000000))
    (i64.store (i32.const 96) (i64.const 0))
    (i32.store16 (i32.const 104) (i32.const 0))
    (drop (call $poll_oneoff (i32.const 64) (i32.const 200) (i32.const 1) (i32.const 300))))"#;

#[tokio::test]
async fn busy_and_sleeping_guests_time_out_promptly() {
    for (name, body) in [("busy", BUSY_LOOP), ("sleeping", SLEEP_IN_HOST)] {
        let started = std::time::Instant::now();
        let report = run(
            &guest(body),
            Call {
                timeout: Duration::from_millis(200),
                ..Call::default()
            },
            CancellationToken::new(),
        )
        .await;
        let elapsed = started.elapsed();
        assert_eq!(failure_code(&report), Some(ErrorCode::Timeout), "{name}");
        // Generous margin: the behaviour under test is "stops", not "stops fast".
        assert!(elapsed < Duration::from_secs(3), "{name} took {elapsed:?}");
    }
}

/// `body` (a `_start` export) as a guest that first prints "started\n" from a data segment at
/// address 400, so the caller knows the guest runs.
fn announcing(body: &str) -> String {
    let announcing_start = body.replacen(
        r#"(func (export "_start")"#,
        r#"(func (export "_start") (call $write (i32.const 1) (i32.const 400) (i32.const 8))"#,
        1,
    );
    guest(&format!(
        r#"(data (i32.const 400) "started\n") {announcing_start}"#
    ))
}

#[tokio::test]
async fn busy_and_sleeping_guests_can_be_cancelled() {
    for (name, body) in [("busy", BUSY_LOOP), ("sleeping", SLEEP_IN_HOST)] {
        let cancellation = CancellationToken::new();
        let canceller = cancellation.clone();
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        // Cancels once the guest has printed, that is once it surely runs, and says when.
        let cancelled = tokio::spawn(async move {
            assert_eq!(
                receiver.recv().await,
                Some(Bytes::from_static(b"started\n"))
            );
            canceller.cancel();
            std::time::Instant::now()
        });
        let call = Call {
            output_chunks: Some(sender),
            ..Call::default()
        };
        let report = run(&announcing(body), call, cancellation).await;
        assert_eq!(failure_code(&report), Some(ErrorCode::Cancelled), "{name}");
        let cancelled_at = cancelled.await.unwrap();
        // Generous margin: the behaviour under test is "stops", not "stops fast".
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(3),
            "{name} ran on for {:?} after its cancellation",
            cancelled_at.elapsed()
        );
    }
}

#[tokio::test]
async fn compiled_modules_are_reused_from_disk() {
    let directory = tempfile::tempdir().unwrap();
    let config = WasmEngineConfig {
        max_instances: 8,
        compiled_module_cache_directory: Some(directory.path().to_path_buf()),
        ..WasmEngineConfig::default()
    };
    let wat = guest(BUSY_LOOP);
    let first = WasmEngine::new(&config).unwrap();
    let module = first.load_module("digest1", wat.as_bytes()).unwrap();
    assert_eq!(
        module.compile_source,
        spearlet_wasm::CompileSource::Compiled
    );
    let second = WasmEngine::new(&config).unwrap();
    let module = second.load_module("digest1", wat.as_bytes()).unwrap();
    assert_eq!(
        module.compile_source,
        spearlet_wasm::CompileSource::DiskCache
    );
}
