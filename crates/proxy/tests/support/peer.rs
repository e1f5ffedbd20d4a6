//! Test clients: a peer that speaks HBONE as another sidecar would (mTLS with a certificate from
//! the mesh's CA, then HTTP/2 `CONNECT` with `ward-hbone`), a client whose TLS handshake the
//! server must refuse, plain TCP, and what each of them saw at the end.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderMap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use ward_hbone::{H2Settings, H2Stream, HboneClient, OpenError, HBONE_PORT};
use ward_identity::{SpiffeId, WorkloadCert};
use ward_tls::CertStore;

use super::{Mesh, WAIT};

/// How a client's connection ended, as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The HBONE server answered the `CONNECT` with this status.
    ConnectStatus(u16),
    /// The tunnel opened (`200`).
    Tunnel,
    /// An HTTP response with this status.
    Http(u16),
    /// The connection (or tunnel) was reset, after `bytes` bytes were read.
    Reset {
        /// Bytes read before the reset.
        bytes: usize,
    },
    /// A clean end of data, after `bytes` bytes were read.
    Eof {
        /// Bytes read before the end.
        bytes: usize,
    },
    /// The TLS handshake failed with an alert from the server.
    TlsAlert(String),
    /// Any other error.
    Error(String),
    /// Nothing happened within the harness's wait.
    TimedOut,
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl Seen {
    /// What an i/o error means to the client.
    pub fn from_error(e: &io::Error, bytes: usize) -> Seen {
        let text = e.to_string();
        if e.kind() == io::ErrorKind::ConnectionReset {
            Seen::Reset { bytes }
        } else if text.contains("alert") {
            Seen::TlsAlert(text)
        } else {
            Seen::Error(format!("{:?}: {text}", e.kind()))
        }
    }
}

/// Read until the far side ends the connection (or the harness's wait runs out).
pub async fn read_to_end<S: AsyncRead + Unpin>(s: &mut S) -> Seen {
    let mut bytes = 0;
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return Seen::Eof { bytes },
                Ok(n) => bytes += n,
                Err(e) => return Seen::from_error(&e, bytes),
            }
        }
    };
    tokio::time::timeout(WAIT, read_all)
        .await
        .unwrap_or(Seen::TimedOut)
}

/// Write `payload`, then read exactly `want` bytes back: the connection carries data. `Err` says
/// what the client saw instead.
pub async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    payload: &[u8],
    want: usize,
) -> Result<Vec<u8>, Seen> {
    let exchange = async {
        s.write_all(payload)
            .await
            .map_err(|e| Seen::from_error(&e, 0))?;
        let mut got = vec![0u8; want];
        s.read_exact(&mut got)
            .await
            .map_err(|e| Seen::from_error(&e, 0))?;
        Ok(got)
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .unwrap_or(Err(Seen::TimedOut))
}

/// Send one HTTP/1.1 request (raw bytes, so that a malformed one can be sent too) and read the
/// response to its end; the request should say `Connection: close`.
pub async fn http_exchange<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, request: &str) -> Seen {
    let exchange = async {
        s.write_all(request.as_bytes())
            .await
            .map_err(|e| Seen::from_error(&e, 0))?;
        let mut response = Vec::new();
        s.read_to_end(&mut response)
            .await
            .map_err(|e| Seen::from_error(&e, response.len()))?;
        Ok::<_, Seen>(response)
    };
    let response = match tokio::time::timeout(WAIT, exchange).await {
        Err(_) => return Seen::TimedOut,
        Ok(Err(seen)) => return seen,
        Ok(Ok(r)) => r,
    };
    let text = String::from_utf8_lossy(&response);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    match status {
        Some(code) => Seen::Http(code),
        None => Seen::Error(format!("not an HTTP/1.1 response: {text:?}")),
    }
}

/// Open a TCP connection from `from` (the kernel picks the port) to `to`.
pub async fn dial(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = match from {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .expect("socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .unwrap_or_else(|e| panic!("cannot bind {from}: {e}"));
    tokio::time::timeout(WAIT, socket.connect(to))
        .await
        .unwrap_or_else(|_| panic!("connect {from} -> {to} timed out"))
        .unwrap_or_else(|e| panic!("connect {from} -> {to}: {e}"))
}

/// A TLS client at a fixed source address.
pub struct Peer {
    from: IpAddr,
    config: Arc<ClientConfig>,
}

impl Peer {
    /// A peer at `from` as a sidecar is: it presents a certificate for `identity` from the
    /// mesh's CA and accepts only a server proving `server_identity` (`ward_tls::client_config`,
    /// the config the proxy's own HBONE pool uses).
    pub fn mesh(mesh: &Mesh, from: IpAddr, identity: &str, server_identity: &str) -> Peer {
        let cert = mesh.workload_cert(identity);
        let store = CertStore::new(cert.id.clone());
        store
            .install(&cert)
            .expect("test peer certificate installs");
        let server = SpiffeId::parse(server_identity).expect("server identity");
        let config = ward_tls::client_config(store, vec![server]).expect("client config");
        Peer { from, config }
    }

    /// A client at `from` that accepts any server certificate and presents `cert` (or none):
    /// for handshakes the server must refuse. TLS 1.3, ALPN `h2`, as HBONE.
    pub fn unverified(from: IpAddr, cert: Option<&WorkloadCert>) -> Peer {
        let provider = ward_tls::provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
        let mut config = match cert {
            None => builder.with_no_client_auth(),
            Some(cert) => {
                let chain = cert
                    .issued
                    .chain_der
                    .iter()
                    .map(|der| CertificateDer::from(der.clone()))
                    .collect();
                let key =
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pkcs8_der.clone()));
                builder
                    .with_client_auth_cert(chain, key)
                    .expect("client certificate")
            }
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Peer {
            from,
            config: Arc::new(config),
        }
    }

    /// TCP then TLS to `to`. Returns the handshake's result and the client's address (the
    /// `src.addr` the server records).
    pub async fn tls(&self, to: SocketAddr) -> (io::Result<TlsStream<TcpStream>>, SocketAddr) {
        let tcp = dial(self.from, to).await;
        let local = tcp.local_addr().expect("local address");
        let name = ServerName::IpAddress(to.ip().into());
        let connect = tokio_rustls::TlsConnector::from(self.config.clone()).connect(name, tcp);
        let tls = tokio::time::timeout(WAIT, connect)
            .await
            .unwrap_or_else(|_| Err(io::Error::other("TLS handshake timed out")));
        (tls, local)
    }

    /// An HBONE connection to the sidecar at `<to>:15008`, and the client's address. Panics if
    /// the handshakes fail: use [`Peer::tls`] for a handshake that should.
    pub async fn hbone(&self, to: IpAddr) -> (HboneClient, SocketAddr) {
        let hbone = SocketAddr::new(to, HBONE_PORT);
        let (tls, local) = self.tls(hbone).await;
        let tls = tls.unwrap_or_else(|e| panic!("TLS to {hbone}: {e}"));
        let client = tokio::time::timeout(WAIT, HboneClient::handshake(tls, H2Settings::default()))
            .await
            .unwrap_or_else(|_| panic!("HTTP/2 handshake with {hbone} timed out"))
            .unwrap_or_else(|e| panic!("HTTP/2 handshake with {hbone}: {e}"));
        (client, local)
    }
}

/// Open a tunnel to `authority`: the stream, or what the client saw instead.
pub async fn connect(client: &HboneClient, authority: &str) -> Result<H2Stream, Seen> {
    match tokio::time::timeout(WAIT, client.open(authority, HeaderMap::new())).await {
        Err(_) => Err(Seen::TimedOut),
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(OpenError::Status(status))) => Err(Seen::ConnectStatus(status.as_u16())),
        Ok(Err(e)) => Err(Seen::Error(e.to_string())),
    }
}

/// Accepts any server certificate (signatures are still checked, so the handshake completes):
/// the test is about what the server does with the client.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
