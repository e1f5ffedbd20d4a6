//! Small apps behind the sidecars, on loopback: a TCP echo, a TCP app that resets its
//! connection mid-stream, and a minimal HTTP/1.1 responder.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running app; dropping it stops accepting (open connections finish on their own).
pub struct App {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn listen(addr: SocketAddr) -> TcpListener {
    TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("test app cannot listen on {addr}: {e}"))
}

/// Serve each connection accepted on `addr` with `serve`, on its own task.
async fn spawn_app<F, Fut>(addr: SocketAddr, serve: F) -> App
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = listen(addr).await;
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve(tcp));
        }
    });
    App { addr, task }
}

/// Echo every byte back until the client closes its side.
pub async fn echo(addr: SocketAddr) -> App {
    spawn_app(addr, |mut tcp| async move {
        let (mut r, mut w) = tcp.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// Read the client's first bytes, answer `reply`, then reset the connection (RST): the app
/// failing in the middle of a stream.
pub async fn reset_after_reply(addr: SocketAddr, reply: &'static [u8]) -> App {
    spawn_app(addr, move |mut tcp| async move {
        let mut buf = [0u8; 1024];
        if !matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {
            return;
        }
        let _ = tcp.write_all(reply).await;
        // SO_LINGER 0: close() sends RST instead of FIN.
        let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
        drop(tcp);
    })
    .await
}

/// Answer every HTTP/1.1 request `200 OK` with the body `ok`.
pub async fn http_ok(addr: SocketAddr) -> App {
    spawn_app(addr, |tcp| async move {
        let service = hyper::service::service_fn(|_req| async {
            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), service)
            .await;
    })
    .await
}
