//! Shows that `ticker` really streams (one flushed `fd_write` per line, 100 ms apart), using a
//! custom guest stdout of the kind a host needs to forward output while a function runs and to
//! cap how much of it is kept.
//!
//! The custom stdout only implements `IsTerminal` and `StdoutStream::async_stream` (a tokio
//! `AsyncWrite`); wasmtime-wasi's default `StdoutStream::p2_stream` wraps that in its
//! `AsyncWriteStream` adapter, which is what the preview1 `fd_write` writes to.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use spearlet_examples::example;
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;
use wasmtime::{Engine, Linker, Module, Store};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::{WasiP1Ctx, add_to_linker_async};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;

/// A stdout that sends every write, timestamped, over a channel and keeps at most `cap` bytes.
/// Output beyond the cap is dropped but reported as written, so the guest carries on.
#[derive(Clone)]
struct StreamingStdout {
    chunks: mpsc::UnboundedSender<(Instant, Vec<u8>)>,
    remaining: Arc<AtomicUsize>,
    truncated: Arc<AtomicBool>,
}

impl IsTerminal for StreamingStdout {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StreamingStdout {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for StreamingStdout {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let keep = self
            .remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                Some(r - r.min(buf.len()))
            })
            .map_or(0, |before| before.min(buf.len()));
        if keep < buf.len() {
            self.truncated.store(true, Ordering::Relaxed);
        }
        if keep > 0 {
            // A closed receiver just means nobody listens any more.
            let _ = self.chunks.send((Instant::now(), buf[..keep].to_vec()));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

struct Streamed {
    chunks: Vec<(Instant, Vec<u8>)>,
    truncated: bool,
}

/// Runs `ticker` with `input` and a [`StreamingStdout`] capped at `cap` bytes.
async fn run_ticker(input: &str, cap: usize) -> anyhow::Result<Streamed> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stdout = StreamingStdout {
        chunks: tx,
        remaining: Arc::new(AtomicUsize::new(cap)),
        truncated: Arc::new(AtomicBool::new(false)),
    };
    let engine = Engine::default();
    let module = Module::new(&engine, example("ticker").unwrap().wasm)?;
    let wasi = WasiCtxBuilder::new()
        .stdin(MemoryInputPipe::new(input.to_owned()))
        .stdout(stdout.clone())
        .build_p1();
    let mut store = Store::new(&engine, wasi);
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    add_to_linker_async(&mut linker, |cx| cx)?;
    let instance = linker.instantiate_async(&mut store, &module).await?;
    let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
    start.call_async(&mut store, ()).await?;
    // Dropping the store drops the WASI context and with it every sender.
    drop(store);
    drop(stdout.chunks);

    let mut chunks = Vec::new();
    while let Some(chunk) = rx.recv().await {
        chunks.push(chunk);
    }
    Ok(Streamed {
        chunks,
        truncated: stdout.truncated.load(Ordering::Relaxed),
    })
}

#[tokio::test]
async fn ticker_streams_one_line_at_a_time() {
    let streamed = run_ticker("3", usize::MAX).await.unwrap();
    let lines: Vec<&[u8]> = streamed.chunks.iter().map(|(_, c)| c.as_slice()).collect();
    assert_eq!(lines, [&b"tick 1\n"[..], b"tick 2\n", b"tick 3\n"]);
    for pair in streamed.chunks.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        // The guest sleeps 100 ms between lines; allow for clock granularity.
        assert!(gap >= Duration::from_millis(90), "lines only {gap:?} apart");
    }
    assert!(!streamed.truncated);
}

#[tokio::test]
async fn capped_stdout_truncates_without_failing_the_guest() {
    let streamed = run_ticker("3", 10).await.unwrap();
    let kept: Vec<u8> = streamed.chunks.into_iter().flat_map(|(_, c)| c).collect();
    assert_eq!(kept, b"tick 1\ntic");
    assert!(streamed.truncated);
}
