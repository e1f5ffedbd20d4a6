//! A proxy's side of the CA API: from a bootstrap file, generate a key and a CSR for the
//! workload's identity, call `CreateCertificate` over TLS 1.3 (the server's SPIFFE id checked
//! against the file's), with the bootstrap token (first request) or the current certificate
//! (renewal), and return the verified certificate.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::Endpoint;

use ward_identity::{IssuedCert, SpiffeId, WorkloadCert};
use ward_tls::{control_plane_client_config, CertStore};
use ward_wire::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use ward_wire::istio::v1::auth::IstioCertificateRequest;

use crate::bootstrap::BootstrapFile;

/// Time to connect and finish the handshake, and for the whole call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the client pings the control plane, and how long it waits for the answer: a
/// control plane that vanished is noticed within a minute even with no config change.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How the proxy authenticates.
#[derive(Clone, Debug)]
pub enum Credential<'a> {
    /// The bootstrap file's token (first request).
    Token,
    /// The proxy's current certificate, presented in the handshake (renewal).
    Certificate(&'a WorkloadCert),
    /// The certificate a running proxy's store holds, presented in the handshake.
    Store(Arc<CertStore>),
}

/// Why no certificate was obtained.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The bootstrap file holds something unusable.
    #[error("bootstrap file: {0}")]
    Bootstrap(String),
    /// The TLS configuration or the certificate could not be built or verified.
    #[error("TLS: {0}")]
    Tls(#[from] ward_tls::TlsError),
    /// The control plane could not be reached (including a refused handshake).
    #[error("cannot reach the control plane at {addr}: {reason}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The control plane refused the request.
    #[error("the control plane refused: {code:?}: {message}")]
    Refused {
        /// The gRPC status code.
        code: tonic::Code,
        /// The control plane's message.
        message: String,
    },
    /// The answer is not a certificate chain for the requested identity.
    #[error("unusable answer: {0}")]
    Answer(String),
}

/// Requests a certificate for the bootstrap file's workload, valid for `validity` (the control
/// plane's lifetime when `None` or longer).
pub async fn request_certificate(
    bundle: &BootstrapFile,
    credential: Credential<'_>,
    validity: Option<Duration>,
) -> Result<WorkloadCert, ClientError> {
    let identity = bundle_identity(bundle)?;
    let key = ward_identity::generate_csr(&identity)
        .map_err(|e| ClientError::Answer(format!("cannot make a CSR: {e}")))?;
    let issued = sign_csr(bundle, credential, &key.csr_der, validity).await?;
    let cert = WorkloadCert {
        id: identity.clone(),
        key_pkcs8_der: key.key_pkcs8_der.clone(),
        issued,
    };
    // Installing checks the leaf's identity, its key and its chain to the bootstrap roots.
    CertStore::new(identity).install(&cert)?;
    Ok(cert)
}

fn bundle_identity(bundle: &BootstrapFile) -> Result<SpiffeId, ClientError> {
    SpiffeId::parse(&bundle.identity).map_err(|e| ClientError::Bootstrap(format!("identity: {e}")))
}

/// The TLS client configuration for the control plane named in `bundle`: its SPIFFE id checked
/// against the bundle's roots, presenting `presented`'s certificate when given.
pub fn tls_config(
    bundle: &BootstrapFile,
    presented: Option<Arc<CertStore>>,
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let roots = bundle.roots_der().map_err(ClientError::Bootstrap)?;
    let server_id = SpiffeId::parse(&bundle.control_plane_identity)
        .map_err(|e| ClientError::Bootstrap(format!("controlPlaneIdentity: {e}")))?;
    Ok(control_plane_client_config(&roots, server_id, presented)?)
}

/// Has the control plane sign `csr_der` (a CSR for the bundle's identity) and returns the
/// issued chain, verified to the bundle's roots.
pub async fn sign_csr(
    bundle: &BootstrapFile,
    credential: Credential<'_>,
    csr_der: &[u8],
    validity: Option<Duration>,
) -> Result<IssuedCert, ClientError> {
    let roots = bundle.roots_der().map_err(ClientError::Bootstrap)?;
    let presented = match &credential {
        Credential::Token => None,
        Credential::Certificate(cert) => {
            let store = CertStore::new(cert.id.clone());
            store.install(cert)?;
            Some(store)
        }
        Credential::Store(store) => Some(store.clone()),
    };
    let tls = tls_config(bundle, presented)?;
    let csr = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr_der.to_vec()));

    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: validity.map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        metadata: None,
    });
    if let Credential::Token = credential {
        request
            .metadata_mut()
            .insert("authorization", bearer(bundle)?);
    }
    let channel = connect(&bundle.control_plane, tls, Some(CALL_TIMEOUT)).await?;
    let mut client = IstioCertificateServiceClient::new(channel);
    let response = client
        .create_certificate(request)
        .await
        .map_err(|s| ClientError::Refused {
            code: s.code(),
            message: s.message().to_owned(),
        })?
        .into_inner();

    let mut chain = Vec::new();
    for text in &response.cert_chain {
        let block =
            pem::parse(text).map_err(|e| ClientError::Answer(format!("cert_chain: {e}")))?;
        // The roots come from the bootstrap file, never from the answer.
        if !roots.iter().any(|r| r.as_slice() == block.contents()) {
            chain.push(block.into_contents());
        }
    }
    IssuedCert::from_chain(chain, roots)
        .map_err(|e| ClientError::Answer(format!("cert_chain: {e}")))
}

/// The bootstrap token as an `authorization` header value.
pub fn bearer(
    bundle: &BootstrapFile,
) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, ClientError> {
    format!("Bearer {}", bundle.token)
        .parse()
        .map_err(|_| ClientError::Bootstrap("token: not a valid header value".into()))
}

/// A gRPC channel to `addr` over one TLS connection made with `tls`; `timeout` bounds each
/// call (none for a long-lived stream, which HTTP/2 keepalive watches instead).
pub async fn connect(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
    timeout: Option<Duration>,
) -> Result<tonic::transport::Channel, ClientError> {
    let failed = |reason: String| ClientError::Connect {
        addr: addr.to_owned(),
        reason,
    };
    let target = addr.to_owned();
    let connector = tower::service_fn(move |_: http::Uri| {
        let (target, tls) = (target.clone(), tls.clone());
        async move {
            let tcp = TcpStream::connect(&target).await?;
            tcp.set_nodelay(true)?;
            // The name is not checked: the server's SPIFFE id is (the verifier ignores it).
            let name = rustls::pki_types::ServerName::try_from("ward-control-plane.invalid")
                .map_err(std::io::Error::other)?;
            let stream = TlsConnector::from(tls).connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    let mut endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| failed(e.to_string()))?
        .connect_timeout(CALL_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if let Some(t) = timeout {
        endpoint = endpoint.timeout(t);
    }
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| failed(error_chain(&e)))
}

/// An error and its sources, `: `-separated (tonic's transport error hides the TLS reason in
/// its source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
