//! The byte stream under each gRPC connection: a TCP stream that tells h2 it has no vectored
//! writes, so that a small unary response leaves in one `write` instead of two.
//!
//! Why: h2 0.4 keeps a DATA frame of at least 256 bytes (1,024 without vectored writes) out of
//! its write buffer, to send it with `writev` instead of copying it, and then cannot buffer the
//! trailers behind it; it writes HEADERS+DATA, then the trailers on their own. A sync
//! `InvokeFunctionResponse` for a 64-byte output is about 330 bytes (ids, metrics, timestamps),
//! so every call cost the node two writes and the client two wake-ups (`strace`: writev 406 +
//! writev 10 per call; the bare echo's 80-byte reply goes out whole). Reporting no vectored
//! writes raises h2's limit to 1,024 bytes: responses up to that size are copied once into its
//! buffer and leave with their trailers in one write. Larger ones are written as before, in two
//! `write` calls where `writev` took one.
//!
//! Invariant: only `is_write_vectored` differs from the wrapped stream; every read, write,
//! flush and shutdown goes straight through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// An accepted gRPC connection's TCP stream, with vectored writes hidden from h2.
pub struct TcpStreamWithoutVectoredWrites(pub TcpStream);

impl AsyncRead for TcpStreamWithoutVectoredWrites {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(context, buffer)
    }
}

impl AsyncWrite for TcpStreamWithoutVectoredWrites {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(context, bytes)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(context)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl Connected for TcpStreamWithoutVectoredWrites {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn bytes_pass_through_and_only_vectored_writes_are_hidden() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream.write_all(b"ping").await.unwrap();
            let mut answer = [0_u8; 4];
            stream.read_exact(&mut answer).await.unwrap();
            answer
        });
        let (accepted, _) = listener.accept().await.unwrap();
        let mut wrapped = TcpStreamWithoutVectoredWrites(accepted);
        assert!(!wrapped.is_write_vectored());
        assert!(wrapped.connect_info().remote_addr().is_some());
        let mut request = [0_u8; 4];
        wrapped.read_exact(&mut request).await.unwrap();
        assert_eq!(&request, b"ping");
        wrapped.write_all(b"pong").await.unwrap();
        assert_eq!(&client.await.unwrap(), b"pong");
    }
}
