//! A plain TCP connection shared by its session and its room's writer.
//!
//! The session reads, answers and closes through tokio-websockets, which
//! needs a stream it can own; the room writer (`writer.rs`) writes room
//! messages straight to the same socket when the session is idle. Both hold
//! an `Arc<TcpStream>`: tokio's readiness-based `try_read` and `try_write`
//! take `&TcpStream`, so the stream itself needs no lock. Who may write, and
//! when, is settled by the member's [`Line`](crate::fanout::mailbox::Line): never
//! both at once, and never into the middle of the other's frame.

use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A stream a session runs on: its bytes are the WebSocket connection.
pub trait Transport: AsyncRead + AsyncWrite + Unpin {
    /// The TCP stream the room's writer may write frames to directly, if
    /// the bytes on it are the WebSocket frames themselves (plain TCP);
    /// `None` if only the session can write (TLS encrypts them).
    fn shared(&self) -> Option<&Arc<TcpStream>> {
        None
    }
}

impl Transport for SharedTcp {
    fn shared(&self) -> Option<&Arc<TcpStream>> {
        Some(&self.0)
    }
}

impl Transport for TlsStream<TcpStream> {}

/// A TCP stream with a second owner; see the module documentation.
#[derive(Debug, Clone)]
pub struct SharedTcp(Arc<TcpStream>);

impl SharedTcp {
    /// Shares `stream`.
    pub fn new(stream: TcpStream) -> Self {
        SharedTcp(Arc::new(stream))
    }

    /// One write once the socket is writable, retried when the readiness
    /// turns out stale.
    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match write(&self.0) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                written => return Poll::Ready(written),
            }
        }
    }
}

// Each poll waits for readiness and then tries the call, which clears the
// readiness when the socket says "would block": the pattern tokio documents
// for `poll_read_ready` and `try_read`.
impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read_buf(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
                Ok(_) => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |stream| stream.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |stream| stream.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // TCP has no user-space buffer to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Ends our side of the stream (FIN); never blocks.
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn both_owners_write_and_the_session_side_reads_and_shuts_down() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let mut shared = SharedTcp::new(accepted);
        let other = shared.shared().cloned().unwrap();

        shared.write_all(b"one ").await.unwrap();
        other.writable().await.unwrap();
        assert_eq!(other.try_write(b"two").unwrap(), 3);
        let mut got = [0; 7];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one two");

        client.write_all(b"ping").await.unwrap();
        let mut got = [0; 4];
        shared.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");

        shared.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the server side ended its stream");
    }
}
