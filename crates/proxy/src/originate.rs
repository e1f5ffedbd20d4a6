//! TLS origination toward services outside the mesh (docs/egress-tls.md): the app speaks
//! plaintext to its egress listener (or a captured address), and the sidecar opens TLS to the
//! external endpoint as the DestinationRule's `tls` says (SIMPLE: the server is verified;
//! MUTUAL: a client certificate is presented too).
//!
//! The client is rustls on aws-lc-rs with TLS 1.2 and 1.3 allowed (external servers are not
//! Ward's; the mesh itself stays TLS 1.3 only, `ward_tls::provider`). A client config is built
//! once per distinct [`TlsOrigination`] and rebuilt when one of its files changes on disk (size
//! or modification time, checked at each connection); Secrets change with the configuration,
//! which gives a new [`TlsOrigination`]. A credential that cannot be read or parsed refuses the
//! connection (fail closed) and is logged once per change, naming the DestinationRule and the
//! field; key material is never logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use ward_config::origination::{Material, TlsOrigination};

use crate::access_log::ConnRecord;
use crate::refusal::{Refusal, ResponseFlag};

/// The operating system's CA bundle (Debian's `ca-certificates`), used when a rule has no
/// `caCertificates` (as Istio's sidecars do).
pub(crate) const OS_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How long the TLS handshake with the external server may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Built configs kept at most; past it the cache starts over (configs change rarely).
const CACHE_LIMIT: usize = 256;

/// The identity of a file's content, as cheaply as it can be checked.
pub(crate) type Stamp = Option<(SystemTime, u64)>;

/// Client configs by origination, shared by a sidecar's outbound tasks.
#[derive(Default)]
pub(crate) struct Originator {
    cache: Mutex<HashMap<Arc<TlsOrigination>, Built>>,
}

struct Built {
    stamps: Vec<Stamp>,
    config: Result<Arc<ClientConfig>, String>,
}

impl Originator {
    /// The client config for `o`, built or rebuilt when its files changed; `Err` names what
    /// is wrong (never the key material).
    fn client(&self, o: &Arc<TlsOrigination>) -> Result<Arc<ClientConfig>, String> {
        let stamps: Vec<Stamp> = files(o).iter().map(|p| stamp(p)).collect();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(built) = cache.get(o) {
            if built.stamps == stamps {
                return built.config.clone();
            }
        }
        let config = build(o).map(Arc::new);
        if let Err(why) = &config {
            tracing::error!(
                rule = %o.rule,
                field = %o.field,
                "TLS origination credential unusable, connections refused: {why}"
            );
        }
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(
            o.clone(),
            Built {
                stamps,
                config: config.clone(),
            },
        );
        config
    }

    /// Open TLS over `tcp` as `o` says. `http`: the port is HTTP, so a failure is answered
    /// with a 503 rather than a reset.
    pub(crate) async fn originate(
        &self,
        o: &Arc<TlsOrigination>,
        tcp: TcpStream,
        http: bool,
        rec: &mut ConnRecord,
    ) -> Result<Originated, Refusal> {
        let refuse = |reason: &'static str, why: String| {
            let refusal = Refusal::upstream(ResponseFlag::UpstreamFailure, why);
            (
                reason,
                if http {
                    refusal.with_reply(
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        "upstream connect error: TLS origination failed",
                    )
                } else {
                    refusal
                },
            )
        };
        let result = async {
            let config = self.client(o).map_err(|why| {
                refuse(
                    "tls_origination_credential",
                    format!("TLS origination ({} {}): {why}", o.rule, o.field),
                )
            })?;
            let name = ServerName::try_from(o.sni.clone()).map_err(|_| {
                refuse(
                    "tls_origination_credential",
                    format!(
                        "TLS origination ({} {}): `{}` is no valid SNI",
                        o.rule, o.field, o.sni
                    ),
                )
            })?;
            let connect = TlsConnector::from(config).connect(name, tcp);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
                Ok(Ok(tls)) => Ok(tls),
                Ok(Err(e)) => Err(refuse(
                    "tls_origination_handshake",
                    format!(
                        "TLS origination to {} ({} {}): handshake failed: {e}",
                        o.sni, o.rule, o.field
                    ),
                )),
                Err(_) => Err(refuse(
                    "tls_origination_handshake",
                    format!("TLS origination to {}: handshake timed out", o.sni),
                )),
            }
        }
        .await;
        match result {
            Ok(tls) => {
                let (_, conn) = tls.get_ref();
                rec.tls_version = Some(
                    match conn.protocol_version() {
                        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                        _ => "unknown",
                    }
                    .to_owned(),
                );
                rec.reason = Some("tls_originated");
                Ok(Originated::new(tls, true))
            }
            Err((reason, refusal)) => {
                rec.reason = Some(reason);
                Err(refusal)
            }
        }
    }
}

/// An originated TLS stream. A server that closes the TCP connection without a TLS
/// `close_notify` (nginx after a response, many others) ends the stream as a TCP FIN would:
/// the app behind the sidecar gets the same signal as on a plaintext upstream, whose framing
/// (`Content-Length`, chunked) tells a cut response from a whole one.
pub(crate) type Originated = crate::splice::TlsOverTcp<TlsStream<TcpStream>>;

/// The files `o` reads.
fn files(o: &TlsOrigination) -> Vec<String> {
    let mut out = Vec::new();
    let mut add = |m: &Option<Material>| {
        if let Some(Material::File(path)) = m {
            out.push(path.clone());
        }
    };
    add(&o.ca);
    add(&o.client_certificate);
    add(&o.private_key);
    add(&o.crl);
    if o.ca.is_none() && !o.insecure_skip_verify {
        out.push(OS_CA_BUNDLE.to_owned());
    }
    out
}

/// The [`Stamp`] of the file at `path` now.
pub(crate) fn stamp(path: &str) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The PEM text of `m`.
pub(crate) fn read(m: &Material) -> Result<Vec<u8>, String> {
    match m {
        Material::File(path) => std::fs::read(path).map_err(|e| format!("{}: {e}", m.describe())),
        Material::Secret { pem, .. } => Ok(pem.0.as_bytes().to_vec()),
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

/// Build the client config `o` describes.
fn build(o: &TlsOrigination) -> Result<ClientConfig, String> {
    if let Some(why) = &o.broken {
        return Err(why.clone());
    }
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let verifier: Arc<dyn ServerCertVerifier> = if o.insecure_skip_verify {
        Arc::new(AnyServer(provider))
    } else {
        let (ca_pem, ca_from) = match &o.ca {
            Some(m) => (read(m)?, m.describe()),
            None => (
                std::fs::read(OS_CA_BUNDLE)
                    .map_err(|e| format!("the OS CA bundle {OS_CA_BUNDLE}: {e}"))?,
                format!("the OS CA bundle {OS_CA_BUNDLE}"),
            ),
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca_pem) {
            let cert = cert.map_err(|e| format!("{ca_from}: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("{ca_from}: a CA certificate: {e}"))?;
        }
        if roots.is_empty() {
            return Err(format!("{ca_from}: no CA certificate in it"));
        }
        let mut crls = Vec::new();
        if let Some(m) = &o.crl {
            let pem = read(m)?;
            for crl in CertificateRevocationListDer::pem_slice_iter(&pem) {
                crls.push(crl.map_err(|e| format!("{}: {e}", m.describe()))?);
            }
            if crls.is_empty() {
                return Err(format!("{}: no CRL in it", m.describe()));
            }
        }
        let mut webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider);
        if !crls.is_empty() {
            webpki = webpki
                .with_crls(crls)
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status();
        }
        let inner = webpki.build().map_err(|e| format!("{ca_from}: {e}"))?;
        if o.subject_alt_names.is_empty() {
            inner
        } else {
            Arc::new(AltNames {
                inner,
                names: o
                    .subject_alt_names
                    .iter()
                    .filter_map(|n| ServerName::try_from(n.clone()).ok())
                    .collect(),
            })
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (&o.client_certificate, &o.private_key) {
        (Some(cert), Some(key)) if o.mutual => {
            let cert_pem = read(cert)?;
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: {e}", cert.describe()))?;
            if chain.is_empty() {
                return Err(format!("{}: no certificate in it", cert.describe()));
            }
            let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
                .map_err(|_| format!("{}: no readable private key in it", key.describe()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("{} and {}: {e}", cert.describe(), key.describe()))?
        }
        _ if o.mutual => {
            return Err("MUTUAL needs a client certificate and a private key".to_owned())
        }
        _ => builder.with_no_client_auth(),
    };
    // The app's bytes are carried as they are: no ALPN, so the server speaks what the app does.
    config.alpn_protocols.clear();
    Ok(config)
}

/// `subjectAltNames`: the server certificate must chain to the CA and hold one of these names
/// (instead of the SNI).
#[derive(Debug)]
struct AltNames {
    inner: Arc<WebPkiServerVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for AltNames {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut last = rustls::Error::General("no subjectAltNames to match".to_owned());
        for name in &self.names {
            match self
                .inner
                .verify_server_cert(end_entity, intermediates, name, ocsp, now)
            {
                Ok(ok) => return Ok(ok),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `insecureSkipVerify`: any server certificate is accepted (no CA, no name check); the
/// handshake's signatures are still checked, so the key exchange is bound to the certificate.
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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

/// The outbound hook: originate TLS on a plaintext upstream when the route says so; anything
/// else (an HBONE tunnel to a mesh workload, no DestinationRule TLS) passes unchanged.
pub(crate) async fn wrap(
    ctx: &crate::outbound::OutboundCtx,
    tls: Option<&(Arc<TlsOrigination>, bool)>,
    upstream: crate::outbound::Upstream,
    rec: &mut ConnRecord,
) -> Result<crate::outbound::Upstream, Refusal> {
    match (tls, upstream) {
        (Some((o, http)), crate::outbound::Upstream::Plain(tcp)) => ctx
            .originator
            .originate(o, tcp, *http, rec)
            .await
            .map(|s| crate::outbound::Upstream::Tls(Box::new(s))),
        (_, upstream) => Ok(upstream),
    }
}

/// Answer a refused HTTP/1.1 connection with the refusal's local reply, then close it.
pub(crate) async fn reply(app: &mut TcpStream, refusal: &Refusal) {
    use tokio::io::AsyncWriteExt as _;
    let status = refusal
        .status
        .unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE);
    let body = format!("{}\n", refusal.body);
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         x-ward-response-flags: {}\r\nconnection: close\r\n\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        refusal.flag,
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        app.write_all(head.as_bytes()).await?;
        app.write_all(body.as_bytes()).await?;
        app.shutdown().await
    })
    .await;
}
