//! HBONE client and server against each other over an in-memory duplex pipe.
#![allow(clippy::unwrap_used)]

use http::{HeaderMap, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ward_hbone::{serve, H2Settings, HboneClient, OpenError};

async fn start_echo_server() -> HboneClient {
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        let handler = |req: ward_hbone::ConnectRequest| async move {
            match req.authority() {
                "127.0.0.9:9" => req.reject(StatusCode::UNAUTHORIZED),
                _ => {
                    let mut tunnel = req.accept().unwrap();
                    let mut buf = Vec::new();
                    tunnel.read_to_end(&mut buf).await.unwrap();
                    tunnel.write_all(&buf).await.unwrap();
                    tunnel.shutdown().await.unwrap();
                }
            }
        };
        serve(
            server_io,
            H2Settings::default(),
            handler,
            std::future::pending(),
        )
        .await
        .unwrap();
    });
    HboneClient::handshake(client_io, H2Settings::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn many_tunnels_share_one_connection_and_echo() {
    let client = start_echo_server().await;
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut t = client
                .open("127.0.0.2:9080", HeaderMap::new())
                .await
                .unwrap();
            // Bigger than one window's worth of frames so flow control is exercised.
            let payload = vec![i; 3 * 1024 * 1024 + 17];
            let (mut r, mut w) = tokio::io::split(&mut t);
            let writer = async {
                w.write_all(&payload).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut got = Vec::new();
            let reader = r.read_to_end(&mut got);
            let (_, n) = tokio::join!(writer, reader);
            n.unwrap();
            assert_eq!(got.len(), payload.len());
            assert!(got.iter().all(|b| *b == i));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn rejection_status_reaches_the_client() {
    let client = start_echo_server().await;
    match client.open("127.0.0.9:9", HeaderMap::new()).await {
        Err(OpenError::Status(s)) => assert_eq!(s, StatusCode::UNAUTHORIZED),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn non_connect_requests_get_400() {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        let handler =
            |_req: ward_hbone::ConnectRequest| async move { panic!("handler must not run") };
        let _ = serve(
            server_io,
            H2Settings::default(),
            handler,
            std::future::pending(),
        )
        .await;
    });
    let (send, conn) = h2::client::handshake(client_io).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let req = http::Request::get("http://127.0.0.2:9080/")
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), StatusCode::BAD_REQUEST);
}
