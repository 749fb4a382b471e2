//! Guest stdout and stderr: captured in memory up to a cap, optionally forwarded chunk by chunk
//! to a live stream.
//!
//! A write past the cap traps the guest at once (rather than returning a short write that a
//! guest could ignore), and the overflow is remembered so the outcome says `OUTPUT_TOO_LARGE`
//! instead of a generic trap.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Receives each chunk of stdout as the guest writes it (for streaming executions).
pub use spearlet_runtime::OutputChunkSender;

/// A capped in-memory capture of one guest stream. Clones share the buffer.
#[derive(Clone)]
pub(crate) struct CapturedOutput {
    state: Arc<Mutex<CaptureState>>,
}

struct CaptureState {
    buffer: BytesMut,
    capacity: usize,
    overflowed: bool,
    chunk_sender: Option<OutputChunkSender>,
}

/// How much a guest may write in one `fd_write` before the capture looks at it again.
const WRITE_PERMIT_BYTES: usize = 64 * 1024;

impl CapturedOutput {
    pub(crate) fn new(capacity: usize, chunk_sender: Option<OutputChunkSender>) -> CapturedOutput {
        CapturedOutput {
            state: Arc::new(Mutex::new(CaptureState {
                buffer: BytesMut::new(),
                capacity,
                overflowed: false,
                chunk_sender,
            })),
        }
    }

    pub(crate) fn overflowed(&self) -> bool {
        self.state.lock().overflowed
    }

    pub(crate) fn take_contents(&self) -> Bytes {
        std::mem::take(&mut self.state.lock().buffer).freeze()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.state.lock().capacity
    }

    /// Appends a line the host writes into the guest's logs (an outbound request it denied):
    /// dropped, without marking an overflow, when it does not fit under the cap.
    pub(crate) fn append_note(&self, bytes: &[u8]) {
        let mut state = self.state.lock();
        if bytes.len() <= state.capacity - state.buffer.len() {
            state.buffer.extend_from_slice(bytes);
        }
    }

    fn append(&self, bytes: &[u8]) -> Result<(), StreamError> {
        let mut state = self.state.lock();
        if bytes.len() > state.capacity - state.buffer.len() {
            state.overflowed = true;
            return Err(StreamError::Trap(wasmtime::format_err!(
                "output exceeds the cap of {} bytes",
                state.capacity
            )));
        }
        state.buffer.extend_from_slice(bytes);
        if let Some(sender) = &state.chunk_sender {
            // A closed receiver means nobody is watching live any more; the capture goes on.
            let _ = sender.send(Bytes::copy_from_slice(bytes));
        }
        Ok(())
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes)
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always grant a permit, even at the cap: the write that crosses the cap must reach
        // `write` so it traps with OUTPUT_TOO_LARGE instead of blocking or failing softly.
        Ok(WRITE_PERMIT_BYTES)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for CapturedOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _context: &mut std::task::Context<'_>,
        bytes: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let result = self
            .append(bytes)
            .map(|()| bytes.len())
            .map_err(|_| std::io::Error::other("output exceeds its cap"));
        std::task::Poll::Ready(result)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_past_the_cap_fail_and_are_remembered() {
        let mut output = CapturedOutput::new(5, None);
        assert!(OutputStream::write(&mut output, Bytes::from_static(b"abc")).is_ok());
        assert!(!output.overflowed());
        assert!(OutputStream::write(&mut output, Bytes::from_static(b"def")).is_err());
        assert!(output.overflowed());
        assert_eq!(output.take_contents(), Bytes::from_static(b"abc"));
    }

    #[test]
    fn chunks_are_forwarded_as_written() {
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        let mut output = CapturedOutput::new(100, Some(sender));
        OutputStream::write(&mut output, Bytes::from_static(b"one")).unwrap();
        OutputStream::write(&mut output, Bytes::from_static(b"two")).unwrap();
        assert_eq!(receiver.try_recv().unwrap(), Bytes::from_static(b"one"));
        assert_eq!(receiver.try_recv().unwrap(), Bytes::from_static(b"two"));
        assert_eq!(output.take_contents(), Bytes::from_static(b"onetwo"));
    }
}
