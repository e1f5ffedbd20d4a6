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
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
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
pub(crate) enum UpstreamError {
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
pub(crate) struct Upstreams {
    /// Idle HTTP/1.1 connections per app address. Pushed by the task that sees a response
    /// finish, popped by requests; the lock is held for the map operation only.
    h1: Arc<Mutex<HashMap<SocketAddr, Vec<Idle>>>>,
    /// The shared HTTP/2 connection per app address; replaced when closed.
    h2: Arc<Mutex<HashMap<SocketAddr, http2::SendRequest<ReqBody>>>>,
}

/// A copy of a request that may be sent again: a safe method and no body.
fn replayable(req: &Request<ReqBody>) -> Option<Request<ReqBody>> {
    use http::Method;
    let safe = [Method::GET, Method::HEAD, Method::OPTIONS, Method::TRACE];
    if !safe.contains(req.method()) || !req.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, UpstreamError> {
    let fail = |reason: String| UpstreamError::Connect { addr, reason };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, crate::capture::connect(addr, None))
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
        let (mut sender, req) = match self.checkout_h1(addr) {
            // An idle connection the app closed a moment ago fails before the request is
            // written; then the request comes back and goes on a new connection. A request
            // that was (even partly) written is never sent twice.
            //
            // The app may also close the idle connection just as the request is written (its
            // keep-alive timeout): then a bodiless request with a safe method (RFC 9110 §9.2.1)
            // is sent again on a new connection, as RFC 9112 §9.3.1 allows.
            Some(mut idle) => {
                let replay = replayable(&req);
                match idle.try_send_request(req).await {
                    Ok(response) => return Ok(self.after_h1(addr, idle, response)),
                    Err(mut e) => match e.take_message().or(replay) {
                        Some(req) => (self.connect_h1(addr).await?, req),
                        None => {
                            return Err(UpstreamError::Http {
                                addr,
                                source: e.into_error(),
                            })
                        }
                    },
                }
            }
            None => {
                let sender = self.connect_h1(addr).await?;
                (sender, req)
            }
        };
        let response = sender
            .send_request(req)
            .await
            .map_err(|source| UpstreamError::Http { addr, source })?;
        Ok(self.after_h1(addr, sender, response))
    }

    async fn connect_h1(
        &self,
        addr: SocketAddr,
    ) -> Result<http1::SendRequest<ReqBody>, UpstreamError> {
        let tcp = connect(addr).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|source| UpstreamError::Http { addr, source })?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    /// After a response head: unless the connection was upgraded, it goes back to the idle
    /// stack once the response body has been read.
    fn after_h1(
        &self,
        addr: SocketAddr,
        mut sender: http1::SendRequest<ReqBody>,
        response: Response<Incoming>,
    ) -> Response<Incoming> {
        if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
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
        response
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn get() -> Request<ReqBody> {
        let body = http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed();
        Request::builder()
            .uri("/")
            .header("host", "app")
            .body(body)
            .unwrap()
    }

    /// An app that serves requests on a kept-alive connection and closes it once it has been
    /// idle for `keep_alive`, as servers with a short keep-alive timeout do.
    async fn app_with_keep_alive(keep_alive: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    loop {
                        let mut head = Vec::new();
                        let mut b = [0u8; 1];
                        while !head.ends_with(b"\r\n\r\n") {
                            let wait = if head.is_empty() {
                                keep_alive
                            } else {
                                Duration::from_secs(5)
                            };
                            match tokio::time::timeout(wait, c.read(&mut b)).await {
                                Ok(Ok(1)) => head.push(b[0]),
                                _ => return,
                            }
                        }
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if c.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn idle_connections_the_app_closed_are_never_a_failed_request() {
        let (addr, accepted) = app_with_keep_alive(Duration::from_millis(20)).await;
        let up = Upstreams::default();
        for i in 0..30u64 {
            let resp = up
                .send_h1(addr, get())
                .await
                .unwrap_or_else(|e| panic!("request {i}: {e}"));
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
            // Around the app's keep-alive timeout: before it, at it, and after it.
            tokio::time::sleep(Duration::from_millis(10 + (i * 7) % 25)).await;
        }
        assert!(accepted.load(Ordering::Relaxed) > 1);
    }

    #[tokio::test]
    async fn a_kept_alive_connection_is_reused() {
        let (addr, accepted) = app_with_keep_alive(Duration::from_secs(30)).await;
        let up = Upstreams::default();
        for _ in 0..5 {
            let resp = up.send_h1(addr, get()).await.unwrap();
            let _ = resp.into_body().collect().await.unwrap();
            // The connection goes back to the idle stack once the body is read.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::Relaxed), 1);
    }
}
