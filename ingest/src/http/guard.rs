//! Limits on the HTTP server's connections, so that slow or idle clients
//! cannot exhaust file descriptors and memory while Meta's webhooks wait:
//!
//! - at most `INGEST_MAX_CONNECTIONS` are open at once; more wait in the
//!   kernel's accept queue until one closes;
//! - a connection must complete a request within `INGEST_CLIENT_TIMEOUT_SECS`
//!   of opening or of its last answer, else it is closed. That one deadline
//!   covers headers or a body sent a byte at a time and idle keep-alive
//!   connections alike.
//!
//! Bodies have their own size limits (`INGEST_MAX_BODY_BYTES` for Meta's
//! webhooks, `INGEST_API_MAX_BODY_BYTES` for the API).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// An acceptor whose connections obey the limits above.
pub struct Guarded<A> {
    inner: A,
    slots: Arc<Semaphore>,
    window: Duration,
}

impl<A> Guarded<A> {
    pub fn new(inner: A, max_connections: usize, window: Duration) -> Self {
        Self {
            inner,
            slots: Arc::new(Semaphore::new(max_connections)),
            window,
        }
    }
}

impl<A: Acceptor> Acceptor for Guarded<A> {
    type Io = GuardedIo<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(io::Error::other)?;
        let (io, local, remote, scheme) = self.inner.accept().await?;
        let io = GuardedIo {
            inner: io,
            _slot: slot,
            window: self.window,
            deadline: Box::pin(tokio::time::sleep(self.window)),
        };
        Ok((io, local, remote, scheme))
    }
}

/// A connection that holds its slot until dropped, and fails its reads once
/// its deadline passes; each answer written moves the deadline on.
pub struct GuardedIo<T> {
    inner: T,
    _slot: OwnedSemaphorePermit,
    window: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<T> GuardedIo<T> {
    fn answered(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.window);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no complete request within INGEST_CLIENT_TIMEOUT_SECS",
            )));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.answered();
        }
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            this.answered();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
