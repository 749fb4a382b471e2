//! Runs the WASI 0.2 command components under wasmtime + wasmtime-wasi (`wasi:cli/run` through
//! `p2::bindings::Command`) and checks the shape of the `wasi:http/proxy` one, `http-echo`.
//!
//! Serving HTTP with `http-echo` needs wasmtime-wasi-http, which this crate does not depend on;
//! here it is only checked to be a component that exports `wasi:http/incoming-handler`.

use std::path::Path;

use spearlet_examples::example;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::p2::bindings::Command;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

struct Host {
    ctx: WasiCtx,
    table: ResourceTable,
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// How a command component's run ended: `Ok(())` for `run` returning `ok`, `Err(None)` for it
/// returning `err`, `Err(Some(code))` for a `wasi:cli/exit` call.
type RunStatus = Result<(), Option<i32>>;

struct Ran {
    status: RunStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Instantiates the command component `wasm` with `input` on stdin and calls `wasi:cli/run`.
async fn run_component(wasm: &[u8], input: &[u8]) -> anyhow::Result<Ran> {
    let engine = Engine::default();
    let component = Component::new(&engine, wasm)?;
    let stdout = MemoryOutputPipe::new(1 << 20);
    let stderr = MemoryOutputPipe::new(1 << 20);
    let ctx = WasiCtxBuilder::new()
        .stdin(MemoryInputPipe::new(input.to_vec()))
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .build();
    let mut store = Store::new(
        &engine,
        Host {
            ctx,
            table: ResourceTable::new(),
        },
    );
    let mut linker: Linker<Host> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    let command = Command::instantiate_async(&mut store, &component, &linker).await?;
    let status = match command.wasi_cli_run().call_run(&mut store).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(())) => Err(None),
        Err(err) => match err.downcast_ref::<I32Exit>() {
            Some(I32Exit(0)) => Ok(()),
            Some(I32Exit(code)) => Err(Some(*code)),
            None => return Err(anyhow::Error::from(err)),
        },
    };
    drop(store);
    Ok(Ran {
        status,
        stdout: stdout.contents().to_vec(),
        stderr: stderr.contents().to_vec(),
    })
}

#[tokio::test]
async fn echo_component_round_trips_its_input() {
    let echo = example("echo-component").unwrap();
    assert!(echo.is_component());
    let input: Vec<u8> = (0..=255u8).cycle().take(100_003).collect();
    let ran = run_component(echo.wasm, &input).await.unwrap();
    assert_eq!(ran.status, Ok(()));
    assert!(ran.stdout == input, "echo-component changed its input");
    assert!(ran.stderr.is_empty());

    let ran = run_component(echo.wasm, echo.sample_input.as_bytes())
        .await
        .unwrap();
    assert_eq!(ran.stdout, echo.sample_input.as_bytes());
}

/// Rust's `std::process::exit(3)` on wasm32-wasip2 calls `wasi:cli/exit.exit(err)`: the
/// component cannot pass the code on (only the unstable `exit-with-code` could), so the host
/// sees exit status 1. `fail` for p2 is not embedded; this reads the committed build.
#[tokio::test]
async fn a_component_exit_code_other_than_0_arrives_as_1() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/wasm/p2/fail.wasm");
    let wasm = std::fs::read(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let ran = run_component(&wasm, b"").await.unwrap();
    assert_eq!(ran.status, Err(Some(1)));
    assert_eq!(ran.stderr, b"fail: exiting with code 3\n");
    assert!(ran.stdout.is_empty());
}

#[test]
fn http_echo_exports_the_incoming_handler() {
    let http_echo = example("http-echo").unwrap();
    assert!(http_echo.is_component());
    let engine = Engine::default();
    let component = Component::new(&engine, http_echo.wasm).unwrap();
    let ty = component.component_type();
    let exports: Vec<&str> = ty.exports(&engine).map(|(name, _)| name).collect();
    assert_eq!(exports, ["wasi:http/incoming-handler@0.2.4"]);
    let Some((_, export)) = ty.exports(&engine).next() else {
        panic!("no export");
    };
    let ComponentItem::ComponentInstance(handler) = export.ty else {
        panic!("the export is not an instance: {:?}", export.ty);
    };
    let functions: Vec<&str> = handler.exports(&engine).map(|(name, _)| name).collect();
    assert!(functions.contains(&"handle"), "{functions:?}");
    let imports: Vec<&str> = ty.imports(&engine).map(|(name, _)| name).collect();
    for import in ["wasi:http/types@0.2.4", "wasi:http/outgoing-handler@0.2.4"] {
        assert!(imports.contains(&import), "{import} not in {imports:?}");
    }
}
