//! HBONE tunnel setup (one of the micro-benchmarks in README.md, "Benchmarks"): on one established
//! HTTP/2 connection over an in-memory duplex (no TLS, no sockets), open one `CONNECT` tunnel;
//! and open one, round-trip one byte through it, and close it.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ward_hbone::{serve, ConnectRequest, H2Settings, HboneClient};

/// An HBONE server on one end of a duplex, echoing every tunnel; the client on the other end.
async fn connected() -> HboneClient {
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        let handler = |req: ConnectRequest| async move {
            let Ok(mut tunnel) = req.accept() else { return };
            let mut buf = [0u8; 64];
            while let Ok(n @ 1..) = tunnel.read(&mut buf).await {
                if tunnel.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            let _ = tunnel.shutdown().await;
        };
        let _ = serve(
            server_io,
            H2Settings::default(),
            handler,
            std::future::pending(),
        )
        .await;
    });
    HboneClient::handshake(client_io, H2Settings::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn round_trip(client: &HboneClient) {
    let mut t = client
        .open("127.0.0.2:9080", HeaderMap::new())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    t.write_all(b"x").await.unwrap_or_else(|e| panic!("{e}"));
    let mut byte = [0u8; 1];
    t.read_exact(&mut byte)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&byte, b"x");
}

fn tunnel(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let client = rt.block_on(connected());
    rt.block_on(round_trip(&client));

    let mut group = c.benchmark_group("hbone_tunnel");
    group.bench_function("open CONNECT", |b| {
        b.iter(|| {
            rt.block_on(async {
                let t = client
                    .open(black_box("127.0.0.2:9080"), HeaderMap::new())
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                drop(t);
            })
        })
    });
    group.bench_function("open CONNECT + 1-byte round trip", |b| {
        b.iter(|| rt.block_on(round_trip(&client)))
    });
    group.finish();
}

criterion_group!(benches, tunnel);
criterion_main!(benches);
