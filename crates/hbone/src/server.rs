//! The server end of HBONE: accept `CONNECT` streams on one secured connection.

use std::future::Future;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, Method, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{H2Settings, H2Stream};

/// Why a server connection ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The HTTP/2 preface or settings exchange failed.
    #[error("HTTP/2 handshake failed: {0}")]
    Handshake(#[source] h2::Error),
    /// The connection failed after the handshake (peer protocol error, reset, i/o).
    #[error("HTTP/2 connection failed: {0}")]
    Connection(#[source] h2::Error),
    /// Answering a stream failed (the peer reset it first).
    #[error("could not answer the CONNECT stream: {0}")]
    Respond(#[source] h2::Error),
}

/// One `CONNECT` request waiting for an answer. Dropping it without answering resets the stream.
pub struct ConnectRequest {
    authority: String,
    headers: HeaderMap,
    respond: SendResponse<Bytes>,
    recv: RecvStream,
}

impl ConnectRequest {
    /// The `:authority`, as the peer sent it (untrusted: parse with [`crate::parse_authority`]).
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Request headers (`traceparent`, `baggage`, `forwarded`...).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Answer `200` and open the tunnel.
    pub fn accept(mut self) -> Result<H2Stream, ServeError> {
        let send = self
            .respond
            .send_response(Response::new(()), false)
            .map_err(ServeError::Respond)?;
        Ok(H2Stream::new(send, self.recv))
    }

    /// Answer with an error status and end the stream.
    pub fn reject(mut self, status: StatusCode) {
        let mut response = Response::new(());
        *response.status_mut() = status;
        // The peer may already have gone; there is nobody left to tell.
        let _ = self.respond.send_response(response, true);
    }
}

/// Serve HBONE on `io` until the peer closes or `shutdown` completes (then GOAWAY and drain).
/// Each accepted `CONNECT` is given to `handler` on its own task; a non-`CONNECT` request is
/// answered `400` without reaching the handler (ztunnel does the same).
pub async fn serve<S, F, Fut>(
    io: S,
    settings: H2Settings,
    handler: F,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn(ConnectRequest) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut conn = h2::server::Builder::new()
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_frame_size(settings.max_frame_size)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(settings.max_header_list_size)
        // Rapid-reset defence (CVE-2023-44487): bound pending resets per connection.
        .max_pending_accept_reset_streams(50)
        .max_local_error_reset_streams(Some(256))
        .handshake::<_, Bytes>(io)
        .await
        .map_err(ServeError::Handshake)?;
    tokio::pin!(shutdown);
    let mut draining = false;
    loop {
        let next = tokio::select! {
            next = conn.accept() => next,
            () = &mut shutdown, if !draining => {
                draining = true;
                conn.graceful_shutdown();
                continue;
            }
        };
        let Some(next) = next else { return Ok(()) };
        let (request, mut respond) = next.map_err(ServeError::Connection)?;
        if request.method() != Method::CONNECT {
            let mut response = Response::new(());
            *response.status_mut() = StatusCode::BAD_REQUEST;
            let _ = respond.send_response(response, true);
            continue;
        }
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let (parts, recv) = request.into_parts();
        let req = ConnectRequest {
            authority,
            headers: parts.headers,
            respond,
            recv,
        };
        tokio::spawn(handler(req));
    }
}
