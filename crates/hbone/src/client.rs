//! The client end of HBONE: open tunnels over one secured connection.

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{H2Settings, H2Stream};

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The HTTP/2 handshake on a new connection failed.
    #[error("HTTP/2 handshake failed: {0}")]
    Handshake(#[source] h2::Error),
    /// The connection is gone (closed, GOAWAY, i/o error); the caller should dial a new one.
    #[error("HBONE connection unusable: {0}")]
    Connection(#[source] h2::Error),
    /// The authority is not a valid URI authority.
    #[error("invalid CONNECT authority {0:?}")]
    Authority(String),
    /// The server answered something other than 200 (400 bad authority, 401 denied, 503
    /// upstream failure, as ztunnel).
    #[error("HBONE server answered {0}")]
    Status(StatusCode),
}

impl OpenError {
    /// True when the connection itself failed, so a retry on a fresh connection may succeed.
    pub fn is_connection_failure(&self) -> bool {
        matches!(self, OpenError::Connection(_) | OpenError::Handshake(_))
    }
}

/// A handle to one HBONE connection; cheap to clone, every clone shares the connection.
#[derive(Clone)]
pub struct HboneClient {
    send: SendRequest<Bytes>,
}

impl HboneClient {
    /// Start HTTP/2 on `io` and spawn the task that drives the connection. The task ends when the
    /// peer closes the connection or every handle is dropped and the last stream ends.
    pub async fn handshake<S>(io: S, settings: H2Settings) -> Result<HboneClient, OpenError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(settings.stream_window)
            .initial_connection_window_size(settings.connection_window)
            .max_frame_size(settings.max_frame_size)
            .max_header_list_size(settings.max_header_list_size)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(OpenError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "hbone client connection ended");
            }
        });
        Ok(HboneClient { send })
    }

    /// Open a tunnel to `authority` (`ip:port`) with extra request headers.
    pub async fn open(&self, authority: &str, headers: HeaderMap) -> Result<H2Stream, OpenError> {
        let mut send = self
            .send
            .clone()
            .ready()
            .await
            .map_err(OpenError::Connection)?;
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(authority)
            .body(())
            .map_err(|_| OpenError::Authority(authority.to_owned()))?;
        *request.headers_mut() = headers;
        let (response, send_stream) = send
            .send_request(request, false)
            .map_err(OpenError::Connection)?;
        let response = response.await.map_err(OpenError::Connection)?;
        if response.status() != StatusCode::OK {
            return Err(OpenError::Status(response.status()));
        }
        Ok(H2Stream::new(send_stream, response.into_body()))
    }
}
