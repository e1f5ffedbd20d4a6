//! The server behind every path, run as its own process (`ward-bench serve`): an HTTP/1.1
//! server answering every GET with a 1 KB body, and a TCP echo. It binds ephemeral ports on
//! `--bind` (127.0.0.1, or its address in the server namespace) and prints them on one stdout line so the parent knows where to point the proxies.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::http1::{head_end, wants_close, BODY_LEN, MAX_HEAD};

/// The line prefix the parent waits for: `ready http=<addr> echo=<addr>`.
pub(crate) const READY_PREFIX: &str = "ready";

/// Runs both servers until the process is killed, announcing the ports on stdout.
pub(crate) async fn serve(bind: IpAddr) -> std::io::Result<()> {
    serve_with(bind, |http, echo| {
        println!("{READY_PREFIX} http={http} echo={echo}")
    })
    .await
}

/// Runs both servers, calling `announce` once both listen.
pub(crate) async fn serve_with(
    bind: IpAddr,
    announce: impl FnOnce(SocketAddr, SocketAddr),
) -> std::io::Result<()> {
    let http = TcpListener::bind((bind, 0)).await?;
    let echo = TcpListener::bind((bind, 0)).await?;
    announce(http.local_addr()?, echo.local_addr()?);
    let response = response_bytes();
    tokio::spawn(accept_loop(echo, |s| async move {
        let _ = echo_conn(s).await;
    }));
    accept_loop(http, move |s| {
        let response = response.clone();
        async move {
            let _ = http_conn(s, &response).await;
        }
    })
    .await;
    Ok(())
}

/// Parses the parent's view of the ready line.
pub(crate) fn parse_ready(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.trim().strip_prefix(READY_PREFIX)?;
    let mut http = None;
    let mut echo = None;
    for field in rest.split_whitespace() {
        match field.split_once('=') {
            Some(("http", v)) => http = v.parse().ok(),
            Some(("echo", v)) => echo = v.parse().ok(),
            _ => {}
        }
    }
    Some((http?, echo?))
}

fn response_bytes() -> std::sync::Arc<Vec<u8>> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {BODY_LEN}\r\n\r\n"
    )
    .into_bytes();
    r.resize(r.len() + BODY_LEN, b'w');
    std::sync::Arc::new(r)
}

async fn accept_loop<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(handle(stream));
            }
            // Out of file descriptors or similar: back off instead of spinning.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

/// Serves requests on one connection, pipelined requests included, until the client closes or
/// asks to close.
async fn http_conn(mut stream: TcpStream, response: &[u8]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        while let Some(end) = head_end(&buf) {
            let close = wants_close(&buf[..end]);
            buf.drain(..end);
            stream.write_all(response).await?;
            if close {
                return stream.shutdown().await;
            }
        }
        if buf.len() > MAX_HEAD {
            return Ok(());
        }
        buf.reserve(4096);
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

async fn echo_conn(stream: TcpStream) -> std::io::Result<()> {
    let (mut r, mut w) = stream.into_split();
    tokio::io::copy(&mut r, &mut w).await?;
    w.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_lines() {
        let cases = [
            (
                "ready http=127.0.0.1:1 echo=127.0.0.1:2\n",
                Some(("127.0.0.1:1", "127.0.0.1:2")),
            ),
            (
                "ready echo=127.0.0.1:2 http=127.0.0.1:1",
                Some(("127.0.0.1:1", "127.0.0.1:2")),
            ),
            ("ready http=127.0.0.1:1", None),
            ("steady http=127.0.0.1:1 echo=127.0.0.1:2", None),
        ];
        for (line, want) in cases {
            let want = want.map(|(h, e)| (h.parse().unwrap(), e.parse().unwrap()));
            assert_eq!(parse_ready(line), want, "{line}");
        }
    }

    #[test]
    fn response_is_well_formed() {
        let r = response_bytes();
        let end = head_end(&r).unwrap();
        assert_eq!(
            crate::http1::parse_response_head(&r[..end]).unwrap(),
            BODY_LEN
        );
        assert_eq!(r.len() - end, BODY_LEN);
    }
}
