//! Runs every embedded preview1 example guest (the core modules; the components are run by
//! `components`) under wasmtime + wasmtime-wasi (preview1), the way spearlet does, and checks its
//! output and exit status.
//!
//! The guests are driven through one small helper, [`run`], that wires stdin/stdout/stderr to
//! in-memory pipes and calls a list of exports on a single instance (`["_start"]` for a command,
//! `["_initialize", "increment", ...]` for the `counter` reactor).

use std::time::{Duration, Instant};

use spearlet_examples::{EXAMPLES, Example, example};
use wasmtime::{
    Config, Engine, Linker, Module, Store, StoreLimits, StoreLimitsBuilder, Trap, Val, ValType,
};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::{WasiP1Ctx, add_to_linker_async};
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

/// Output captured beyond this is a test failure (the pipe traps the guest).
const OUTPUT_CAPACITY: usize = 4 << 20;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    /// Every call returned normally (or the guest called `exit(0)`), and every `() -> i32`
    /// export returned 0.
    Success,
    /// The guest called `exit(n)` with `n != 0`.
    Exit(i32),
    /// A `() -> i32` export returned a non-zero value.
    Returned(i32),
    /// The guest trapped (including an epoch interruption, `Trap::Interrupt`).
    Trap(Trap),
    /// The host gave up waiting and dropped the call's future.
    TimedOut,
}

#[derive(Debug)]
struct Outcome {
    status: Status,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    elapsed: Duration,
}

impl Outcome {
    fn stdout(&self) -> &str {
        std::str::from_utf8(&self.stdout).expect("stdout is UTF-8")
    }

    fn stderr(&self) -> &str {
        std::str::from_utf8(&self.stderr).expect("stderr is UTF-8")
    }
}

/// What the host enforces on a run; nothing by default.
#[derive(Default)]
struct Limits {
    /// Caps the instance's linear memory.
    memory_bytes: Option<usize>,
    /// Interrupts the guest (an epoch deadline) this long after it starts.
    interrupt_after: Option<Duration>,
    /// Drops the running call after this long.
    timeout: Option<Duration>,
}

struct Host {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
}

/// Instantiates `name` once, with `input` on stdin, and calls `calls` in order on that instance.
/// Stops at the first call that does not succeed.
async fn run(name: &str, input: impl Into<Vec<u8>>, calls: &[&str]) -> anyhow::Result<Outcome> {
    run_limited(name, input, calls, &Limits::default()).await
}

async fn run_limited(
    name: &str,
    input: impl Into<Vec<u8>>,
    calls: &[&str],
    limits: &Limits,
) -> anyhow::Result<Outcome> {
    let example = example(name).ok_or_else(|| anyhow::anyhow!("no example {name}"))?;
    // Async support is implied in wasmtime 48 (`Config::async_support` is a deprecated no-op);
    // the async WASI imports just require the `*_async` entry points.
    let mut config = Config::new();
    config.epoch_interruption(limits.interrupt_after.is_some());
    let engine = Engine::new(&config)?;
    let module = Module::new(&engine, example.wasm)?;

    let stdout = MemoryOutputPipe::new(OUTPUT_CAPACITY);
    let stderr = MemoryOutputPipe::new(OUTPUT_CAPACITY);
    let wasi = WasiCtxBuilder::new()
        .stdin(MemoryInputPipe::new(input.into()))
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .env("SPEAR_FUNCTION_NAME", name)
        .env("SPEAR_EXECUTION_ID", "test-execution")
        .env("SPEAR_TASK_ID", "test-task")
        .build_p1();
    let mut store_limits = StoreLimitsBuilder::new();
    if let Some(bytes) = limits.memory_bytes {
        store_limits = store_limits.memory_size(bytes);
    }
    let host = Host {
        wasi,
        limits: store_limits.build(),
    };
    let mut store = Store::new(&engine, host);
    store.limiter(|host| &mut host.limits);
    if let Some(after) = limits.interrupt_after {
        // The deadline is one tick away; a thread provides the tick. (The default reaction to a
        // passed deadline is a `Trap::Interrupt`.)
        store.set_epoch_deadline(1);
        let engine = engine.clone();
        std::thread::spawn(move || {
            std::thread::sleep(after);
            engine.increment_epoch();
        });
    }
    let mut linker: Linker<Host> = Linker::new(&engine);
    add_to_linker_async(&mut linker, |host| &mut host.wasi)?;

    let started = Instant::now();
    let instance = linker.instantiate_async(&mut store, &module).await?;
    let mut status = Status::Success;
    for &call in calls {
        let func = instance
            .get_func(&mut store, call)
            .ok_or_else(|| anyhow::anyhow!("{name} does not export {call}"))?;
        let ty = func.ty(&store);
        let results_ty: Vec<ValType> = ty.results().collect();
        anyhow::ensure!(
            ty.params().len() == 0 && matches!(results_ty[..], [] | [ValType::I32]),
            "{name}.{call} is neither `() -> ()` nor `() -> i32`"
        );
        let mut results: Vec<Val> = results_ty.iter().map(|_| Val::I32(0)).collect();
        let call_future = func.call_async(&mut store, &[], &mut results);
        let result = match limits.timeout {
            Some(timeout) => match tokio::time::timeout(timeout, call_future).await {
                Ok(result) => result,
                Err(_elapsed) => {
                    status = Status::TimedOut;
                    break;
                }
            },
            None => call_future.await,
        };
        match result {
            Ok(()) => {
                if let [Val::I32(code)] = results[..]
                    && code != 0
                {
                    status = Status::Returned(code);
                }
            }
            // `proc_exit` surfaces as an error whose chain holds `I32Exit` (even for 0)...
            Err(err) => match err.downcast_ref::<I32Exit>() {
                Some(I32Exit(0)) => {}
                Some(I32Exit(code)) => status = Status::Exit(*code),
                // ... and a trap as one whose chain holds a `Trap` (plus a `WasmBacktrace`).
                None => match err.downcast_ref::<Trap>() {
                    Some(trap) => status = Status::Trap(*trap),
                    None => return Err(anyhow::Error::from(err).context(format!("{name}.{call}"))),
                },
            },
        }
        if status != Status::Success {
            break;
        }
    }
    let elapsed = started.elapsed();
    drop(store);
    Ok(Outcome {
        status,
        stdout: stdout.contents().to_vec(),
        stderr: stderr.contents().to_vec(),
        elapsed,
    })
}

/// Runs a command module's `_start`.
async fn run_command(name: &str, input: impl Into<Vec<u8>>) -> Outcome {
    run(name, input, &["_start"])
        .await
        .unwrap_or_else(|err| panic!("running {name}: {err:#}"))
}

/// One table-driven expectation for a command guest.
struct Case {
    guest: &'static str,
    input: &'static str,
    stdout: &'static str,
    status: Status,
}

const fn ok(guest: &'static str, input: &'static str, stdout: &'static str) -> Case {
    Case {
        guest,
        input,
        stdout,
        status: Status::Success,
    }
}

#[tokio::test]
async fn command_guests_produce_expected_output() {
    let cases = [
        ok("echo", "", ""),
        ok("echo", "hello\nworld", "hello\nworld"),
        ok(
            "hello",
            r#"{"name":"Ada"}"#,
            "{\"greeting\":\"Hello, Ada!\"}\n",
        ),
        ok(
            "hello",
            " { \"id\" : [1, {\"name\": \"x\"}, -2.5e3, null, true] ,\n \"name\" : \"Grace\" } ",
            "{\"greeting\":\"Hello, Grace!\"}\n",
        ),
        ok(
            "hello",
            r#"{"name":"A \"quoted\" back\\slash"}"#,
            "{\"greeting\":\"Hello, A \\\"quoted\\\" back\\\\slash!\"}\n",
        ),
        ok(
            "hello",
            r#"{"name":"Ren\u00e9e \ud83d\ude00\n"}"#,
            "{\"greeting\":\"Hello, Renée 😀\\n!\"}\n",
        ),
        ok("hello", "", "{\"greeting\":\"Hello, world!\"}\n"),
        ok("hello", "not json", "{\"greeting\":\"Hello, world!\"}\n"),
        ok(
            "hello",
            r#"{"name":""}"#,
            "{\"greeting\":\"Hello, world!\"}\n",
        ),
        ok(
            "hello",
            r#"{"name":42}"#,
            "{\"greeting\":\"Hello, world!\"}\n",
        ),
        ok(
            "hello",
            r#"{"name":"Ada"} trailing"#,
            "{\"greeting\":\"Hello, world!\"}\n",
        ),
        ok(
            "hello",
            r#"["name","Ada"]"#,
            "{\"greeting\":\"Hello, world!\"}\n",
        ),
        ok(
            "wordcount",
            "",
            "{\"lines\":0,\"words\":0,\"bytes\":0,\"top\":[]}\n",
        ),
        ok(
            "wordcount",
            "The cat and the hat.\nThe END, don't\tstop",
            "{\"lines\":2,\"words\":9,\"bytes\":40,\"top\":[[\"the\",3],[\"and\",1],[\"cat\",1],\
             [\"don't\",1],[\"end\",1],[\"hat\",1],[\"stop\",1]]}\n",
        ),
        ok(
            "wordcount",
            "l k j i h g f e d c b a a\n",
            "{\"lines\":1,\"words\":13,\"bytes\":26,\"top\":[[\"a\",2],[\"b\",1],[\"c\",1],\
             [\"d\",1],[\"e\",1],[\"f\",1],[\"g\",1],[\"h\",1],[\"i\",1],[\"j\",1]]}\n",
        ),
        Case {
            guest: "fail",
            input: "",
            stdout: "",
            status: Status::Exit(3),
        },
        ok("spin", "20", "spun 20 ms\n"),
        ok("sleep", "10", "slept 10 ms\n"),
        ok("sleep", " 0\n", "slept 0 ms\n"),
        ok("ticker", "3", "tick 1\ntick 2\ntick 3\n"),
        ok("ticker", "0", ""),
        ok("memhog", "4", "allocated 4 MiB\n"),
    ];
    for case in cases {
        let outcome = run_command(case.guest, case.input).await;
        assert_eq!(
            (&outcome.status, outcome.stdout()),
            (&case.status, case.stdout),
            "{} with input {:?} (stderr: {:?})",
            case.guest,
            case.input,
            outcome.stderr(),
        );
    }
}

#[tokio::test]
async fn echo_round_trips_arbitrary_bytes() {
    // Every byte value, and enough of them to cross the host's 4 KiB write chunks.
    let input: Vec<u8> = (0..=255u8).cycle().take(100_003).collect();
    let outcome = run_command("echo", input.clone()).await;
    assert_eq!(outcome.status, Status::Success);
    assert!(outcome.stdout == input, "echo changed its input");
    assert!(outcome.stderr.is_empty());
}

#[tokio::test]
async fn fail_logs_to_stderr_and_exits_3() {
    let outcome = run_command("fail", "whatever").await;
    assert_eq!(outcome.status, Status::Exit(3));
    assert_eq!(outcome.stderr(), "fail: exiting with code 3\n");
    assert_eq!(outcome.stdout(), "");
}

#[tokio::test]
async fn spin_sleep_and_ticker_take_their_time() {
    for (guest, input, at_least) in [
        ("spin", "20", Duration::from_millis(20)),
        ("sleep", "10", Duration::from_millis(10)),
        ("ticker", "3", Duration::from_millis(200)),
    ] {
        let outcome = run_command(guest, input).await;
        assert_eq!(outcome.status, Status::Success, "{guest}");
        assert!(
            outcome.elapsed >= at_least,
            "{guest} {input:?} took only {:?}",
            outcome.elapsed
        );
    }
}

#[tokio::test]
async fn counter_keeps_state_within_an_instance() {
    let calls = ["_initialize", "increment", "increment", "increment"];
    let outcome = run("counter", "", &calls).await.unwrap();
    assert_eq!(outcome.status, Status::Success);
    assert_eq!(outcome.stdout(), "1\n2\n3\n");

    let outcome = run(
        "counter",
        "",
        &["_initialize", "increment", "increment", "get"],
    )
    .await
    .unwrap();
    assert_eq!(outcome.stdout(), "1\n2\n2\n");

    // A fresh instance starts from zero again.
    let outcome = run("counter", "", &["_initialize", "get", "increment"])
        .await
        .unwrap();
    assert_eq!(outcome.stdout(), "0\n1\n");
}

#[tokio::test]
async fn counter_is_a_reactor() {
    let counter = example("counter").unwrap();
    assert_eq!(counter.default_function, "increment");
    let module = Module::new(&Engine::default(), counter.wasm).unwrap();
    let mut exports: Vec<&str> = module.exports().map(|e| e.name()).collect();
    exports.sort_unstable();
    assert_eq!(exports, ["_initialize", "get", "increment", "memory"]);
}

#[tokio::test]
async fn every_sample_input_runs() {
    for Example {
        name,
        default_function,
        sample_input,
        ..
    } in EXAMPLES.iter().filter(|e| !e.is_component())
    {
        let calls: &[&str] = if default_function.is_empty() {
            &["_start"]
        } else {
            &["_initialize", default_function]
        };
        let outcome = run(name, *sample_input, calls).await.unwrap();
        let expected = if *name == "fail" {
            Status::Exit(3)
        } else {
            Status::Success
        };
        assert_eq!(
            outcome.status,
            expected,
            "{name} (stderr: {:?})",
            outcome.stderr()
        );
        if *name != "fail" {
            assert!(!outcome.stdout.is_empty(), "{name} printed nothing");
        }
    }
}

#[tokio::test]
async fn endless_spin_is_stopped_by_an_epoch_deadline() {
    let limits = Limits {
        interrupt_after: Some(Duration::from_millis(50)),
        ..Limits::default()
    };
    let outcome = run_limited("spin", "forever", &["_start"], &limits)
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Trap(Trap::Interrupt));
    assert_eq!(outcome.stdout(), "");
}

#[tokio::test]
async fn endless_sleep_is_cancelled_by_dropping_the_call() {
    let limits = Limits {
        timeout: Some(Duration::from_millis(50)),
        ..Limits::default()
    };
    let outcome = run_limited("sleep", "", &["_start"], &limits)
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::TimedOut);
    assert!(
        outcome.elapsed < Duration::from_secs(10),
        "{:?}",
        outcome.elapsed
    );
}

#[tokio::test]
async fn memhog_reports_a_memory_limit() {
    let limits = Limits {
        memory_bytes: Some(16 << 20),
        ..Limits::default()
    };
    let outcome = run_limited("memhog", "64", &["_start"], &limits)
        .await
        .unwrap();
    assert_eq!(outcome.status, Status::Exit(1));
    assert_eq!(outcome.stdout(), "");
    assert!(
        outcome
            .stderr()
            .starts_with("memhog: allocation failed after "),
        "{:?}",
        outcome.stderr()
    );
}
