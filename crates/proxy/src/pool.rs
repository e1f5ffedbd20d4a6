//! Pooled HBONE connections, one per (destination HBONE address, expected identity), shared by
//! every outbound connection of one sidecar (ztunnel pools per source and destination identity).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::HeaderMap;
use rustls::pki_types::ServerName;
use tokio::net::TcpSocket;
use ward_hbone::{H2Settings, H2Stream, HboneClient, OpenError};
use ward_identity::SpiffeId;
use ward_tls::{CertStore, PeerInfo};

/// Time allowed for TCP connect plus TLS and HTTP/2 handshakes.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PoolError {
    /// TCP connect failed or timed out.
    #[error("connect to {addr} failed: {source}")]
    Connect {
        /// The HBONE address dialled.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The mTLS handshake failed (wrong identity, untrusted chain, no certificate yet...).
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        /// The HBONE address dialled.
        addr: SocketAddr,
        /// The handshake error.
        #[source]
        source: std::io::Error,
    },
    /// Building the client TLS configuration failed.
    #[error("TLS client configuration failed: {0}")]
    Config(String),
    /// The tunnel was refused or the HTTP/2 layer failed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// Dialing took too long.
    #[error("connecting to {0} timed out")]
    Timeout(SocketAddr),
}

#[derive(Clone)]
struct Pooled {
    client: HboneClient,
    peer: PeerInfo,
}

/// The HBONE connections of one sidecar.
pub(crate) struct HbonePool {
    /// Outbound sockets bind to the workload's own address so the far side sees it as source.
    local_ip: IpAddr,
    certs: Arc<CertStore>,
    settings: H2Settings,
    /// Written when a connection is dialled or found dead; read per outbound connection.
    conns: Mutex<HashMap<(SocketAddr, SpiffeId), Pooled>>,
}

impl HbonePool {
    /// An empty pool for a workload at `local_ip` holding the certificates in `certs`.
    pub(crate) fn new(local_ip: IpAddr, certs: Arc<CertStore>) -> Self {
        HbonePool {
            local_ip,
            certs,
            settings: H2Settings::default(),
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// Open a tunnel to `authority` through the HBONE server at `hbone_addr`, which must prove
    /// `expected` as its identity. Returns the tunnel and what the handshake proved.
    pub(crate) async fn open(
        &self,
        hbone_addr: SocketAddr,
        expected: &SpiffeId,
        authority: SocketAddr,
        headers: HeaderMap,
    ) -> Result<(H2Stream, PeerInfo), PoolError> {
        let key = (hbone_addr, expected.clone());
        let pooled = self.conns.lock().ok().and_then(|c| c.get(&key).cloned());
        if let Some(p) = pooled {
            match p.client.open(&authority.to_string(), headers.clone()).await {
                Ok(s) => return Ok((s, p.peer)),
                Err(e) if e.is_connection_failure() => {
                    if let Ok(mut c) = self.conns.lock() {
                        c.remove(&key);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        let p = tokio::time::timeout(DIAL_TIMEOUT, self.dial(hbone_addr, expected))
            .await
            .map_err(|_| PoolError::Timeout(hbone_addr))??;
        if let Ok(mut c) = self.conns.lock() {
            c.insert(key, p.clone());
        }
        let s = p.client.open(&authority.to_string(), headers).await?;
        Ok((s, p.peer))
    }

    async fn dial(&self, addr: SocketAddr, expected: &SpiffeId) -> Result<Pooled, PoolError> {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|source| PoolError::Connect { addr, source })?;
        crate::capture::mark_socket(&socket)
            .map_err(|source| PoolError::Connect { addr, source })?;
        if self.local_ip.is_ipv4() == addr.is_ipv4() {
            socket
                .bind(SocketAddr::new(self.local_ip, 0))
                .map_err(|source| PoolError::Connect { addr, source })?;
        }
        let tcp = socket
            .connect(addr)
            .await
            .map_err(|source| PoolError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let config = ward_tls::client_config(self.certs.clone(), vec![expected.clone()])
            .map_err(|e| PoolError::Config(e.to_string()))?;
        // The verifier checks the SPIFFE id, not this name; an IP sends no SNI.
        let name = ServerName::IpAddress(addr.ip().into());
        let mut tls = match tokio_rustls::TlsConnector::from(config)
            .connect(name, crate::hbone_io(tcp))
            .into_fallible()
            .await
        {
            Ok(tls) => tls,
            Err((source, mut io)) => {
                crate::send_buffered_alert(&mut io).await;
                return Err(PoolError::Tls { addr, source });
            }
        };
        tls.get_mut()
            .1
            .set_buffer_limit(Some(crate::HBONE_TLS_QUEUE));
        let peer = ward_tls::peer_info(tls.get_ref().1);
        let client = HboneClient::handshake(tls, self.settings).await?;
        Ok(Pooled { client, peer })
    }
}
