//! Connections from an inbound sidecar to its app on HTTP ports: HTTP/1.1 connections kept idle
//! for reuse (a bounded stack per app address), or one shared HTTP/2 connection per app address.
//!
//! The pool is keyed by the app's socket address alone. What the app is asked for (method,
//! `Host` / `:authority`, path) is in each request and comes from admission
//! ([`crate::admission::upstream_parts`]); it never picks or splits connections, so a client
//! cannot make the sidecar open a connection per name it invents.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// Request bodies toward the app: the client's streamed body.
pub(crate) type ReqBody = BoxBody<Bytes, hyper::Error>;

/// Time allowed to connect to the app.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle HTTP/1.1 connections kept per app address.
const MAX_IDLE_PER_APP: usize = 32;
/// An idle connection older than this is closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why a request could not be sent to the app.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The TCP connection to the app failed or timed out.
    #[error("connect to app at {addr} failed: {reason}")]
    Connect {
        /// The app's address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The HTTP handshake or the exchange failed.
    #[error("request to app at {addr} failed: {source}")]
    Http {
        /// The app's address.
        addr: SocketAddr,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
}

struct Idle {
    sender: http1::SendRequest<ReqBody>,
    since: Instant,
}

/// The app connections of one sidecar; cheap to clone.
#[derive(Clone, Default)]
pub struct Upstreams {
    /// Idle HTTP/1.1 connections per app address. Pushed by the task that sees a response
    /// finish, popped by requests; the lock is held for the map operation only.
    h1: Arc<Mutex<HashMap<SocketAddr, Vec<Idle>>>>,
    /// The shared HTTP/2 connection per app address; replaced when closed.
    h2: Arc<Mutex<HashMap<SocketAddr, http2::SendRequest<ReqBody>>>>,
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, UpstreamError> {
    let fail = |reason: String| UpstreamError::Connect { addr, reason };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| fail("timed out".to_owned()))?
        .map_err(|e| fail(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

impl Upstreams {
    /// Send a request over HTTP/1.1, on an idle connection to `addr` or a new one. The request's
    /// URI must be in origin form with `Host` set. Upgrades are carried (`hyper::upgrade::on` on
    /// the response).
    pub(crate) async fn send_h1(
        &self,
        addr: SocketAddr,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut sender = match self.checkout_h1(addr) {
            Some(s) => s,
            None => {
                let tcp = connect(addr).await?;
                let (sender, conn) = http1::Builder::new()
                    .handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|source| UpstreamError::Http { addr, source })?;
                tokio::spawn(async move {
                    let _ = conn.with_upgrades().await;
                });
                sender
            }
        };
        let response = sender
            .send_request(req)
            .await
            .map_err(|source| UpstreamError::Http { addr, source })?;
        if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            // The connection is ready again once this response's body is read; then it waits
            // idle for the next request.
            let pool = self.h1.clone();
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    if let Ok(mut idle) = pool.lock() {
                        let list = idle.entry(addr).or_default();
                        if list.len() < MAX_IDLE_PER_APP {
                            list.push(Idle {
                                sender,
                                since: Instant::now(),
                            });
                        }
                    }
                }
            });
        }
        Ok(response)
    }

    fn checkout_h1(&self, addr: SocketAddr) -> Option<http1::SendRequest<ReqBody>> {
        let mut idle = self.h1.lock().ok()?;
        let list = idle.get_mut(&addr)?;
        while let Some(c) = list.pop() {
            if c.sender.is_ready() && c.since.elapsed() < IDLE_TIMEOUT {
                return Some(c.sender);
            }
        }
        None
    }

    /// Send a request over the shared HTTP/2 connection to `addr` (made when there is none or
    /// it closed). The URI carries the `:authority`.
    pub(crate) async fn send_h2(
        &self,
        addr: SocketAddr,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let existing = self
            .h2
            .lock()
            .ok()
            .and_then(|m| m.get(&addr).filter(|s| !s.is_closed()).cloned());
        let mut sender = match existing {
            Some(s) => s,
            None => {
                let tcp = connect(addr).await?;
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|source| UpstreamError::Http { addr, source })?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                if let Ok(mut m) = self.h2.lock() {
                    m.insert(addr, sender.clone());
                }
                sender
            }
        };
        sender
            .ready()
            .await
            .map_err(|source| UpstreamError::Http { addr, source })?;
        let response = sender
            .send_request(req)
            .await
            .map_err(|source| UpstreamError::Http { addr, source })?;
        Ok(response)
    }
}
