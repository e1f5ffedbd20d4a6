//! Copy bytes both ways until both sides finish, or until a policy orders the connection closed.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use crate::conntrack::CloseOrder;

/// How a splice ended.
pub(crate) enum SpliceEnd {
    /// Both directions finished; bytes (downstream→upstream, upstream→downstream).
    Done(u64, u64),
    /// One side failed.
    Failed(io::Error),
    /// Policy closed it.
    Closed(CloseOrder),
}

/// Splice `downstream` and `upstream`. Dropping both streams on a close order resets them.
pub(crate) async fn splice<A, B>(
    mut downstream: A,
    mut upstream: B,
    close: Option<oneshot::Receiver<CloseOrder>>,
) -> SpliceEnd
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let copy = tokio::io::copy_bidirectional_with_sizes(
        &mut downstream,
        &mut upstream,
        64 * 1024,
        64 * 1024,
    );
    match close {
        None => match copy.await {
            Ok((a, b)) => SpliceEnd::Done(a, b),
            Err(e) => SpliceEnd::Failed(e),
        },
        Some(mut close) => {
            tokio::pin!(copy);
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
    }
}
