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

/// How the proxy authenticates.
#[derive(Clone, Copy, Debug)]
pub enum Credential<'a> {
    /// The bootstrap file's token (first request).
    Token,
    /// The proxy's current certificate, presented in the handshake (renewal).
    Certificate(&'a WorkloadCert),
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
    let bad =
        |what: &str, e: &dyn std::fmt::Display| ClientError::Bootstrap(format!("{what}: {e}"));
    let roots = bundle.roots_der().map_err(ClientError::Bootstrap)?;
    let server_id = SpiffeId::parse(&bundle.control_plane_identity)
        .map_err(|e| bad("controlPlaneIdentity", &e))?;
    let identity = SpiffeId::parse(&bundle.identity).map_err(|e| bad("identity", &e))?;
    let presented = match credential {
        Credential::Token => None,
        Credential::Certificate(cert) => {
            let store = CertStore::new(cert.id.clone());
            store.install(cert)?;
            Some(store)
        }
    };
    let tls = control_plane_client_config(&roots, server_id, presented)?;
    let key = ward_identity::generate_csr(&identity)
        .map_err(|e| ClientError::Answer(format!("cannot make a CSR: {e}")))?;
    let csr = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", key.csr_der.clone()));

    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: validity.map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        metadata: None,
    });
    if let Credential::Token = credential {
        let value = format!("Bearer {}", bundle.token)
            .parse()
            .map_err(|_| ClientError::Bootstrap("token: not a valid header value".into()))?;
        request.metadata_mut().insert("authorization", value);
    }
    let mut client = IstioCertificateServiceClient::new(connect(&bundle.control_plane, tls).await?);
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
    let issued = IssuedCert::from_chain(chain, roots)
        .map_err(|e| ClientError::Answer(format!("cert_chain: {e}")))?;
    let cert = WorkloadCert {
        id: identity.clone(),
        key_pkcs8_der: key.key_pkcs8_der.clone(),
        issued,
    };
    // Installing checks the leaf's identity, its key and its chain to the bootstrap roots.
    CertStore::new(identity).install(&cert)?;
    Ok(cert)
}

/// A gRPC channel to `addr` over one TLS connection made with `tls`.
async fn connect(
    addr: &str,
    tls: Arc<rustls::ClientConfig>,
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
            // The name is not checked: the server's SPIFFE id is (the verifier ignores it).
            let name = rustls::pki_types::ServerName::try_from("ward-control-plane.invalid")
                .map_err(std::io::Error::other)?;
            let stream = TlsConnector::from(tls).connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| failed(e.to_string()))?
        .connect_timeout(CALL_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .connect_with_connector(connector)
        .await
        .map_err(|e| failed(error_chain(&e)))
}

/// An error and its sources, `: `-separated (tonic's transport error hides the TLS reason in
/// its source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
