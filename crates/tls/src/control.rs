//! rustls configurations for the control plane's gRPC port (Istio's CA API) and its clients.
//!
//! TLS 1.3 only, ALPN `h2` (gRPC), no session resumption, the same provider as HBONE. The server
//! presents the control plane's own SPIFFE certificate and asks for a client certificate without
//! requiring one: a proxy's first request carries a bootstrap token instead; a certificate that
//! is presented must chain to the mesh roots and name an identity in the trust domain, or the
//! handshake fails.

use std::sync::Arc;

use rustls::client::Resumption;
use rustls::server::NoServerSessionStorage;
use rustls::{ClientConfig, ServerConfig};

use ward_identity::SpiffeId;

use crate::config::StoreResolver;
use crate::store::TrustBundle;
use crate::verify::{IdentityVerifier, TrustDomainVerifier};
use crate::{provider, CertStore, TlsError};

/// ALPN for gRPC: HTTP/2 over TLS.
const ALPN_H2: &[u8] = b"h2";

/// The control plane's server side: `store` holds its own certificate and the mesh roots; a
/// client certificate is optional, and when presented must chain to those roots (EKU
/// clientAuth) and name an identity in `trust_domain`.
pub fn control_plane_server_config(
    store: Arc<CertStore>,
    trust_domain: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = Arc::new(TrustDomainVerifier::optional(
        store.clone(),
        vec![trust_domain.to_owned()],
    ));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(StoreResolver(store)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

/// A proxy's client side towards the control plane: the server's chain must verify against
/// `roots_der` (from a bootstrap file, or the proxy's current bundle) and its SPIFFE id must be
/// `expected`. `client` is the certificate to present (renewal), or `None` (first request, which
/// authenticates with a token instead).
pub fn control_plane_client_config(
    roots_der: &[Vec<u8>],
    expected: SpiffeId,
    client: Option<Arc<CertStore>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let bundle = TrustBundle::build(roots_der, &provider)?;
    let verifier = Arc::new(IdentityVerifier::with_roots(
        bundle,
        vec![expected],
        algorithms,
    ));
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client {
        Some(store) => builder.with_client_cert_resolver(Arc::new(StoreResolver(store))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    Ok(Arc::new(config))
}

/// The control plane's admission webhook server (the Kubernetes API server is the client):
/// the control plane's own certificate from `store`, no client certificate (the API server
/// authenticates to webhooks only when configured to, and the reviews carry no secrets Ward
/// acts on), TLS 1.3, ALPN `http/1.1`.
pub fn webhook_server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(StoreResolver(store)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer_info;
    use crate::testing::*;

    #[tokio::test]
    async fn a_client_without_a_certificate_is_served_and_one_with_a_certificate_is_identified() {
        let mesh = MeshCa::new();
        let server_id = id("ward-control-plane");
        let server_store = mesh.store(&server_id);
        let roots = mesh.workload(&server_id).issued.roots_der.clone();

        let server = control_plane_server_config(server_store.clone(), TD).unwrap();
        let client = control_plane_client_config(&roots, server_id.clone(), None).unwrap();
        let (c, s) = handshake(server.clone(), client).await;
        let (c, s) = (c.unwrap(), s.unwrap());
        assert_eq!(peer_info(s.get_ref().1).identity, None);
        assert_eq!(peer_info(c.get_ref().1).identity, Some(server_id.clone()));

        let me = id("me");
        let client =
            control_plane_client_config(&roots, server_id.clone(), Some(mesh.store(&me))).unwrap();
        let (_, s) = handshake(server, client).await;
        assert_eq!(peer_info(s.unwrap().get_ref().1).identity, Some(me));
    }

    #[tokio::test]
    async fn a_certificate_from_another_ca_or_an_unexpected_server_is_refused() {
        let mesh = MeshCa::new();
        let other = MeshCa::new();
        let server_id = id("ward-control-plane");
        let roots = mesh.workload(&server_id).issued.roots_der.clone();
        let server = control_plane_server_config(mesh.store(&server_id), TD).unwrap();

        let stranger = other.store(&id("me"));
        let client =
            control_plane_client_config(&roots, server_id.clone(), Some(stranger)).unwrap();
        let (_, s) = handshake(server.clone(), client).await;
        assert!(
            s.is_err(),
            "a client certificate from another CA was accepted"
        );

        let client = control_plane_client_config(&roots, id("someone-else"), None).unwrap();
        let (c, _) = handshake(server.clone(), client).await;
        assert!(
            err_text(&c).contains("UnexpectedIdentity"),
            "{}",
            err_text(&c)
        );

        let other_roots = other.workload(&server_id).issued.roots_der.clone();
        let client = control_plane_client_config(&other_roots, server_id, None).unwrap();
        let (c, _) = handshake(server, client).await;
        assert!(c.is_err(), "a server from another CA was accepted");
    }
}
