//! One HBONE tunnel: an HTTP/2 stream seen as a byte stream.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most we ask to send in one DATA frame; h2 splits further by the peer's frame size.
const MAX_WRITE: usize = 256 * 1024;

/// A tunnel: bytes written go out as DATA frames, DATA frames received come out of `read`.
/// Shutting down the write side sends END_STREAM (a TCP half-close on the far side).
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received bytes not yet handed to the reader.
    pending: Bytes,
    /// END_STREAM was sent; further writes are an error.
    write_closed: bool,
}

impl H2Stream {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        H2Stream {
            send,
            recv,
            pending: Bytes::new(),
            write_closed: false,
        }
    }
}

fn to_io(e: h2::Error) -> io::Error {
    // A peer that resets with NO_ERROR or CANCEL simply ended the tunnel.
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 i/o error"));
    }
    match e.reason() {
        Some(h2::Reason::NO_ERROR) | Some(h2::Reason::CANCEL) => {
            io::Error::new(io::ErrorKind::ConnectionReset, e)
        }
        _ => io::Error::other(e),
    }
}

impl H2Stream {
    /// The next received bytes, as h2 handed them over (no copy); `None` at the end of the
    /// stream. Bulk copies use this, with [`H2Stream::poll_write_bytes`], so a tunnel's bytes
    /// go from the TLS record to the socket without an extra buffer (crates/proxy/src/splice.rs).
    pub fn poll_read_bytes(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if !self.pending.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.pending))));
        }
        loop {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Give the window back at once: the reader is the only consumer, so taking the
                    // bytes is the moment they leave the flow-control budget.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if !data.is_empty() {
                        return Poll::Ready(Ok(Some(data)));
                    }
                }
                Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => {
                    return Poll::Ready(Ok(None))
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => return Poll::Ready(Ok(None)),
            }
        }
    }

    /// Sends a prefix of `chunk` as DATA (as much as the flow-control window allows, at most
    /// `MAX_WRITE`) and advances it past what was sent. The bytes are handed to h2 as they are:
    /// no copy.
    pub fn poll_write_bytes(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        let n = ready!(self.poll_send_capacity(cx, chunk.len()))?;
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        self.send
            .send_data(chunk.split_to(n), false)
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    /// Waits until some of `len` bytes (at most `MAX_WRITE`) may be sent; how many.
    fn poll_send_capacity(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<usize>> {
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        if self.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let want = len.min(MAX_WRITE);
        self.send.reserve_capacity(want);
        loop {
            let have = self.send.capacity();
            if have > 0 {
                return Poll::Ready(Ok(have.min(want)));
            }
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            match ready!(self.poll_read_bytes(cx))? {
                Some(data) => self.pending = data,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // One copy of the caller's bytes, of at most what may be sent now.
        let n = ready!(self.poll_send_capacity(cx, buf.len()))?;
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        let mut chunk = Bytes::copy_from_slice(&buf[..n]);
        self.poll_write_bytes(cx, &mut chunk)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 writes frames from its connection task; there is nothing buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.write_closed {
            self.write_closed = true;
            self.send.send_data(Bytes::new(), true).map_err(to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl H2Stream {
    /// Abort the tunnel: the peer sees RST_STREAM, never a clean end of data. Used when policy
    /// closes an open connection or the upstream failed mid-stream.
    pub fn reset(&mut self) {
        self.send.send_reset(h2::Reason::CANCEL);
    }
}
