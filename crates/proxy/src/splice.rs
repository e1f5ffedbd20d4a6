//! Copy bytes both ways until both sides finish, or until a side fails or a policy orders the
//! connection closed; then abort both sides, so neither sees a clean end of data.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use crate::refusal::Refusal;
use crate::slab::{self, Slabs};

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

/// What a splice reads from and writes to, in owned chunks. The default goes through
/// `AsyncRead`/`AsyncWrite` with one buffer per direction; an HBONE tunnel hands its DATA
/// frames over as they are and takes chunks without copying them (docs/performance.md,
/// "Bulk transfer").
pub(crate) trait Chunked: AsyncRead + AsyncWrite + Unpin {
    /// The next received bytes (at most `want`), or `None` at the end of the stream.
    /// `bufs` are this direction's buffers: a bulk read (`want` at its largest) goes into a
    /// slab of the direction's own ([`crate::slab`]); a smaller one into the heap buffer, whose
    /// bytes are split off, so that once the writer has let go of them the same memory serves
    /// the next read.
    fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &mut ReadBuffers,
        want: usize,
    ) -> Poll<io::Result<Option<Bytes>>> {
        if want >= slab::SLAB {
            let slabs = bufs.slabs.get_or_insert_with(Slabs::new);
            if let Some(poll) = slabs.poll_read(Pin::new(&mut *self), cx, want) {
                return poll;
            }
        }
        let scratch = &mut bufs.heap;
        if scratch.capacity() < want {
            scratch.reserve(want);
        }
        let mut room = bytes::BufMut::limit(&mut *scratch, want);
        let n = ready!(tokio_util::io::poll_read_buf(Pin::new(self), cx, &mut room))?;
        if n == 0 {
            return Poll::Ready(Ok(None));
        }
        Poll::Ready(Ok(Some(scratch.split().freeze())))
    }

    /// Writes a prefix of `chunk` and advances it past what was written.
    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(self).poll_write(cx, chunk))?;
        chunk.advance(n);
        Poll::Ready(Ok(n))
    }

    /// Writes a prefix of the queued `chunks` (none of them empty) and drops or advances what
    /// was written. A writer that takes vectored writes gets every queued chunk in one call
    /// (one `writev`); the others get the first chunk.
    fn poll_write_chunks(
        &mut self,
        cx: &mut Context<'_>,
        chunks: &mut VecDeque<Bytes>,
    ) -> Poll<io::Result<usize>> {
        if chunks.len() < 2 || !self.is_write_vectored() {
            let Some(first) = chunks.front_mut() else {
                return Poll::Ready(Ok(0));
            };
            let n = ready!(self.poll_write_chunk(cx, first))?;
            if first.is_empty() {
                chunks.pop_front();
            }
            return Poll::Ready(Ok(n));
        }
        let mut slices = [io::IoSlice::new(&[]); MAX_GATHER];
        let mut count = 0;
        for (slice, chunk) in slices.iter_mut().zip(chunks.iter()) {
            *slice = io::IoSlice::new(chunk);
            count += 1;
        }
        let mut n = ready!(Pin::new(&mut *self).poll_write_vectored(cx, &slices[..count]))?;
        let written = n;
        while n > 0 {
            let Some(first) = chunks.front_mut() else {
                break;
            };
            if n < first.len() {
                first.advance(n);
                break;
            }
            n -= first.len();
            chunks.pop_front();
        }
        Poll::Ready(Ok(written))
    }
}

/// At most this many received chunks queue for one vectored write.
const MAX_GATHER: usize = 16;

/// A direction keeps reading while what it has read and not yet written is below this: an
/// HBONE tunnel hands over one DATA frame (at most 64 KiB) per read, and the app's socket then
/// takes up to four of them in one `writev` instead of one `write` each (docs/performance.md,
/// "Bulk transfer"). A socket read of this size is written on its own.
const GATHER_BYTES: usize = slab::SLAB;

/// A direction's first reads take at most this much; a read that fills its buffer doubles
/// the next one's, up to `MAX_READ_CHUNK`. An idle or chatty connection keeps a small buffer,
/// a bulk transfer moves 256 KiB per read and per write (fewer syscalls and wake-ups, and
/// bigger DATA frames on a tunnel: measured in docs/performance.md, "Bulk transfer").
const FIRST_READ_CHUNK: usize = 16 * 1024;
const MAX_READ_CHUNK: usize = slab::SLAB;

/// A direction's read buffers (unused when the reader hands over its own chunks).
#[derive(Default)]
pub(crate) struct ReadBuffers {
    /// For reads smaller than a slab.
    heap: BytesMut,
    /// For bulk reads; made at the first one.
    slabs: Option<Slabs>,
}

impl Chunked for tokio::net::TcpStream {}

impl Chunked for ward_hbone::H2Stream {
    fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        _bufs: &mut ReadBuffers,
        _want: usize,
    ) -> Poll<io::Result<Option<Bytes>>> {
        self.poll_read_bytes(cx)
    }

    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        self.poll_write_bytes(cx, chunk)
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

impl<S: AsyncRead + AsyncWrite + Unpin> Chunked for TlsOverTcp<S> {}

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
    A: Chunked + Abort,
    B: Chunked + Abort,
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
    A: Chunked,
    B: Chunked,
{
    let mut down = Watched::new(downstream);
    let mut up = Watched::new(upstream);
    let copy = both_ways(&mut down, &mut up);
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

/// Copies both ways until both directions have ended (each one's end passed on as a write
/// shutdown), or until an error on either. Bytes moved (a→b, b→a).
async fn both_ways<A: Chunked, B: Chunked>(
    a: &mut Watched<'_, A>,
    b: &mut Watched<'_, B>,
) -> io::Result<(u64, u64)> {
    let mut a_to_b = Direction::new();
    let mut b_to_a = Direction::new();
    poll_fn(|cx| {
        let ab = a_to_b.poll(cx, a, b)?;
        let ba = b_to_a.poll(cx, b, a)?;
        match (ab, ba) {
            (Poll::Ready(x), Poll::Ready(y)) => Poll::Ready(Ok((x, y))),
            _ => Poll::Pending,
        }
    })
    .await
}

/// One direction of a splice: read what is ready (a chunk, or several small ones up to
/// [`GATHER_BYTES`]), write all of it, again; at the end of the reader, shut the writer down.
struct Direction {
    /// The reader's buffers.
    bufs: ReadBuffers,
    /// The next read's size.
    want: usize,
    /// Read, not yet written; no chunk is empty.
    pending: VecDeque<Bytes>,
    /// Written since the last flush.
    need_flush: bool,
    /// The reader ended.
    read_done: bool,
    /// The writer was shut down: this direction is over.
    done: bool,
    moved: u64,
}

impl Direction {
    fn new() -> Self {
        Direction {
            bufs: ReadBuffers::default(),
            want: FIRST_READ_CHUNK,
            pending: VecDeque::new(),
            need_flush: false,
            read_done: false,
            done: false,
            moved: 0,
        }
    }

    fn poll<R: Chunked, W: Chunked>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut Watched<'_, R>,
        writer: &mut Watched<'_, W>,
    ) -> Poll<io::Result<u64>> {
        if self.done {
            return Poll::Ready(Ok(self.moved));
        }
        loop {
            while !self.pending.is_empty() {
                let n = ready!(writer.poll_write_chunks(cx, &mut self.pending))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.moved += n as u64;
                self.need_flush = true;
            }
            if self.read_done {
                if self.need_flush {
                    ready!(writer.poll_flush(cx))?;
                    self.need_flush = false;
                }
                ready!(writer.poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(self.moved));
            }
            while !self.read_done
                && self.pending.iter().map(Bytes::len).sum::<usize>() < GATHER_BYTES
            {
                match reader.poll_read_chunk(cx, &mut self.bufs, self.want) {
                    Poll::Ready(Ok(Some(chunk))) => {
                        if chunk.len() >= self.want {
                            self.want = (self.want * 2).min(MAX_READ_CHUNK);
                        }
                        if !chunk.is_empty() {
                            self.pending.push_back(chunk);
                        }
                        if self.pending.len() >= MAX_GATHER {
                            break;
                        }
                    }
                    Poll::Ready(Ok(None)) => self.read_done = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending if !self.pending.is_empty() => break,
                    Poll::Pending => {
                        // Nothing more to read now: push out what a buffering writer holds.
                        if self.need_flush {
                            ready!(writer.poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
        }
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

impl<S: Chunked> Watched<'_, S> {
    fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &mut ReadBuffers,
        want: usize,
    ) -> Poll<io::Result<Option<Bytes>>> {
        let poll = self.inner.poll_read_chunk(cx, bufs, want);
        self.note(poll)
    }

    fn poll_write_chunks(
        &mut self,
        cx: &mut Context<'_>,
        chunks: &mut VecDeque<Bytes>,
    ) -> Poll<io::Result<usize>> {
        let poll = self.inner.poll_write_chunks(cx, chunks);
        self.note(poll)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut *self.inner).poll_flush(cx);
        self.note(poll)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut *self.inner).poll_shutdown(cx);
        self.note(poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use ward_hbone::{serve, H2Settings, HboneClient};

    /// An HBONE server whose tunnels echo what they read, through the plain `AsyncRead` /
    /// `AsyncWrite` side of the stream.
    async fn echo_tunnel() -> ward_hbone::H2Stream {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            let handler = |req: ward_hbone::ConnectRequest| async move {
                let Ok(mut tunnel) = req.accept() else { return };
                let (mut r, mut w) = tokio::io::split(&mut tunnel);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            };
            let _ = serve(
                server_io,
                H2Settings::default(),
                handler,
                std::future::pending(),
            )
            .await;
        });
        let client = HboneClient::handshake(client_io, H2Settings::default())
            .await
            .unwrap();
        client.open("127.0.0.2:80", HeaderMap::new()).await.unwrap()
    }

    /// A connected TCP pair on loopback: (the app's end, the proxy's end).
    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = TcpStream::connect(listener.local_addr().unwrap());
        let (app, accepted) = tokio::join!(app, listener.accept());
        (app.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn bytes_cross_a_tcp_to_tunnel_splice_unchanged_both_ways_and_half_close_passes() {
        let (mut app, mut proxy_side) = tcp_pair().await;
        let mut tunnel = echo_tunnel().await;
        let spliced = tokio::spawn(async move { splice(&mut proxy_side, &mut tunnel, None).await });
        // Several windows' worth, with a pattern that shows a lost, doubled or reordered chunk.
        let payload: Vec<u8> = (0..5 * 1024 * 1024 + 7)
            .map(|i: u32| (i % 251) as u8)
            .collect();
        let (mut r, mut w) = app.split();
        let send = async {
            w.write_all(&payload).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let (_, read) = tokio::join!(send, r.read_to_end(&mut got));
        read.unwrap();
        assert_eq!(got.len(), payload.len());
        assert!(got == payload, "echoed bytes differ");
        match spliced.await.unwrap() {
            SpliceEnd::Done(up, down) => {
                assert_eq!(up, payload.len() as u64);
                assert_eq!(down, payload.len() as u64);
            }
            _ => panic!("splice did not end cleanly"),
        }
    }

    /// A writer that takes vectored writes but at most `limit` bytes per call, and keeps them.
    struct Trickle {
        limit: usize,
        got: Vec<u8>,
        calls: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            _buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.calls += 1;
            let mut room = this.limit;
            for b in bufs {
                let n = b.len().min(room);
                this.got.extend_from_slice(&b[..n]);
                room -= n;
            }
            Poll::Ready(Ok(this.limit - room))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl Chunked for Trickle {}

    #[test]
    fn queued_chunks_go_out_in_order_in_one_vectored_write_each_time() {
        let chunks = [&b"abc"[..], b"defgh", b"i", b"jklmnop"];
        let want: Vec<u8> = chunks.concat();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        // Every write boundary: inside a chunk, at its end, across several chunks.
        for limit in 1..=want.len() {
            let mut queue: VecDeque<Bytes> =
                chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect();
            let mut w = Trickle {
                limit,
                got: Vec::new(),
                calls: 0,
            };
            while !queue.is_empty() {
                match w.poll_write_chunks(&mut cx, &mut queue) {
                    Poll::Ready(Ok(n)) => assert!(n > 0),
                    other => panic!("limit {limit}: {other:?}"),
                }
                assert!(queue.iter().all(|c| !c.is_empty()), "limit {limit}");
            }
            assert_eq!(w.got, want, "limit {limit}");
            assert_eq!(w.calls, want.len().div_ceil(limit), "limit {limit}");
        }
    }

    #[tokio::test]
    async fn a_tunnel_reset_mid_stream_fails_the_splice_on_the_upstream_side() {
        let (client_io, server_io) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            let handler = |req: ward_hbone::ConnectRequest| async move {
                let Ok(mut tunnel) = req.accept() else { return };
                let mut first = [0u8; 1];
                let _ = tunnel.read_exact(&mut first).await;
                tunnel.reset();
            };
            let _ = serve(
                server_io,
                H2Settings::default(),
                handler,
                std::future::pending(),
            )
            .await;
        });
        let client = HboneClient::handshake(client_io, H2Settings::default())
            .await
            .unwrap();
        let mut tunnel = client.open("127.0.0.2:80", HeaderMap::new()).await.unwrap();
        let (mut app, mut proxy_side) = tcp_pair().await;
        let spliced = tokio::spawn(async move { splice(&mut proxy_side, &mut tunnel, None).await });
        app.write_all(b"x").await.unwrap();
        let mut rest = Vec::new();
        // The app sees the connection reset (or closed), never a clean end followed by success.
        let _ = app.read_to_end(&mut rest).await;
        match spliced.await.unwrap() {
            SpliceEnd::Failed(Side::Upstream, _) => {}
            SpliceEnd::Done(..) => panic!("a reset tunnel must not end the splice cleanly"),
            _ => panic!("unexpected end"),
        }
    }
}
