//! Copy bytes both ways until both sides finish, or until a side fails or a policy orders the
//! connection closed; then abort both sides, so neither sees a clean end of data.

use std::io;

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use crate::refusal::Refusal;

/// How a splice ended.
pub(crate) enum SpliceEnd {
    /// Both directions finished; bytes (downstream→upstream, upstream→downstream).
    Done(u64, u64),
    /// One side failed: which, and how.
    Failed(Side, io::Error),
    /// Policy closed it.
    Closed(Refusal),
}

/// The two sides of a splice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// The side that opened the connection.
    Downstream,
    /// The side Ward connected to.
    Upstream,
}

/// A stream that can be ended abruptly, so that the far side sees a reset and never a clean
/// end of data (an upstream dying mid-stream must never look like a complete response:
/// docs/threats.md, "A side dying mid-stream").
pub(crate) trait Abort {
    /// Make the coming close a reset.
    fn abort(&mut self);
}

impl Abort for tokio::net::TcpStream {
    fn abort(&mut self) {
        crate::reset_on_close(self);
    }
}

impl Abort for ward_hbone::H2Stream {
    fn abort(&mut self) {
        self.reset();
    }
}

/// A TLS stream over TCP as a splice or hyper uses it (a gateway's terminated TLS, an
/// originated one): [`Abort`] resets the TCP connection under it.
pub(crate) struct TlsOverTcp<S> {
    stream: S,
    /// Read a TCP FIN that comes without a TLS `close_notify` as the end of the stream, not as
    /// an error.
    fin_ends: bool,
}

impl<S> TlsOverTcp<S> {
    pub(crate) fn new(stream: S, fin_ends: bool) -> TlsOverTcp<S> {
        TlsOverTcp { stream, fin_ends }
    }
}

/// The TCP connection under a TLS stream.
pub(crate) trait OverTcp {
    fn tcp(&self) -> &tokio::net::TcpStream;
}

impl OverTcp for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
    fn tcp(&self) -> &tokio::net::TcpStream {
        self.get_ref().0
    }
}

impl OverTcp for tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    fn tcp(&self) -> &tokio::net::TcpStream {
        self.get_ref().0
    }
}

impl<S: OverTcp> Abort for TlsOverTcp<S> {
    fn abort(&mut self) {
        crate::reset_on_close(self.stream.tcp());
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TlsOverTcp<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Err(e)) if this.fin_ends && e.kind() == io::ErrorKind::UnexpectedEof => {
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TlsOverTcp<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Splice `downstream` and `upstream`. When a side fails or a policy closes the connection, both
/// are aborted before the caller drops them.
pub(crate) async fn splice<A, B>(
    downstream: &mut A,
    upstream: &mut B,
    close: Option<oneshot::Receiver<Refusal>>,
) -> SpliceEnd
where
    A: AsyncRead + AsyncWrite + Unpin + Abort,
    B: AsyncRead + AsyncWrite + Unpin + Abort,
{
    let end = copy(downstream, upstream, close).await;
    if !matches!(end, SpliceEnd::Done(..)) {
        downstream.abort();
        upstream.abort();
    }
    end
}

async fn copy<A, B>(
    downstream: &mut A,
    upstream: &mut B,
    close: Option<oneshot::Receiver<Refusal>>,
) -> SpliceEnd
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut down = Watched::new(downstream);
    let mut up = Watched::new(upstream);
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut down, &mut up, 64 * 1024, 64 * 1024);
    let result = match close {
        None => copy.await,
        Some(mut close) => {
            tokio::pin!(copy);
            tokio::select! {
                r = &mut copy => r,
                order = &mut close => match order {
                    Ok(order) => return SpliceEnd::Closed(order),
                    // No order can come any more: keep copying to the end.
                    Err(_) => copy.await,
                },
            }
        }
    };
    match result {
        Ok((a, b)) => SpliceEnd::Done(a, b),
        // The side whose own I/O failed first is to blame; when neither saw an error (a
        // failure inside the copy itself), the downstream is.
        Err(e) if up.failed && !down.failed => SpliceEnd::Failed(Side::Upstream, e),
        Err(e) => SpliceEnd::Failed(Side::Downstream, e),
    }
}

/// A side of a splice that remembers whether its own I/O failed.
struct Watched<'a, S> {
    inner: &'a mut S,
    failed: bool,
}

impl<'a, S> Watched<'a, S> {
    fn new(inner: &'a mut S) -> Self {
        Watched {
            inner,
            failed: false,
        }
    }

    fn note<T>(&mut self, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(_)) = &poll {
            self.failed = true;
        }
        poll
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut *self.inner).poll_read(cx, buf);
        self.note(poll)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut *self.inner).poll_write(cx, buf);
        self.note(poll)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut *self.inner).poll_flush(cx);
        self.note(poll)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut *self.inner).poll_shutdown(cx);
        self.note(poll)
    }
}
