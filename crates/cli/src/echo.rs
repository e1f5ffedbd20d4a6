//! A TCP echo server: the demo app of the quickstart. It greets nothing and logs nothing of the
//! payload; it copies bytes back until the client closes.

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Serve echo on `addr` forever.
pub(crate) async fn run_forever(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("echo: cannot listen on {addr}: {e}"))?;
    tracing::info!(%addr, "echo app listening");
    serve(listener).await;
    Ok(())
}

/// Serve echo on an already bound listener.
pub(crate) async fn serve(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}
