//! Copy bytes both ways until both sides finish, or until a side fails or a policy orders the
//! connection closed; then abort both sides, so neither sees a clean end of data.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use crate::refusal::Refusal;

/// How a splice ended.
pub(crate) enum SpliceEnd {
    /// Both directions finished; bytes (downstream→upstream, upstream→downstream).
    Done(u64, u64),
    /// One side failed.
    Failed(io::Error),
    /// Policy closed it.
    Closed(Refusal),
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
    let copy = tokio::io::copy_bidirectional_with_sizes(downstream, upstream, 64 * 1024, 64 * 1024);
    tokio::pin!(copy);
    let Some(mut close) = close else {
        return match copy.await {
            Ok((a, b)) => SpliceEnd::Done(a, b),
            Err(e) => SpliceEnd::Failed(e),
        };
    };
    tokio::select! {
        r = &mut copy => match r {
            Ok((a, b)) => SpliceEnd::Done(a, b),
            Err(e) => SpliceEnd::Failed(e),
        },
        order = &mut close => match order {
            Ok(order) => SpliceEnd::Closed(order),
            // No order can come any more: keep copying to the end.
            Err(_) => match copy.await {
                Ok((a, b)) => SpliceEnd::Done(a, b),
                Err(e) => SpliceEnd::Failed(e),
            },
        },
    }
}
