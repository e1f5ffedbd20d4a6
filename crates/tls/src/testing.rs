//! Test fixtures: a mesh CA (`ward-ca`), a hand-rolled CA that can mint any broken leaf, raw
//! rustls peers that present whatever they are given, and an in-memory handshake.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use ward_ca::{Ca, CaOptions};
use ward_identity::{generate_csr, IssuedCert, SpiffeId, WorkloadCert};

use crate::{provider, CertStore};

pub(crate) const TD: &str = "cluster.local";

pub(crate) fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(TD, "default", sa).unwrap()
}

/// A Ward CA in a temporary state directory.
pub(crate) struct MeshCa {
    pub(crate) ca: Ca,
    _dir: tempfile::TempDir,
}

impl MeshCa {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path(), CaOptions::default()).unwrap();
        Self { ca, _dir: dir }
    }

    pub(crate) fn workload(&self, id: &SpiffeId) -> WorkloadCert {
        let kc = generate_csr(id).unwrap();
        let issued = self.ca.sign(id, &kc.csr_der, None).unwrap();
        WorkloadCert {
            id: id.clone(),
            key_pkcs8_der: kc.key_pkcs8_der.clone(),
            issued,
        }
    }

    pub(crate) fn store(&self, id: &SpiffeId) -> Arc<CertStore> {
        let store = CertStore::new(id.clone());
        store.install(&self.workload(id)).unwrap();
        store
    }
}

/// What a hand-made leaf looks like.
pub(crate) struct Leaf {
    pub(crate) sans: Vec<SanType>,
    pub(crate) ekus: Vec<ExtendedKeyUsagePurpose>,
    pub(crate) not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
}

impl Leaf {
    /// A well-formed workload leaf for `id`, valid for a day.
    pub(crate) fn for_id(id: &str) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            sans: vec![uri(id)],
            ekus: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            not_before: now - time::Duration::minutes(2),
            not_after: now + time::Duration::days(1),
        }
    }
}

pub(crate) fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

pub(crate) fn dns(s: &str) -> SanType {
    SanType::DnsName(s.try_into().unwrap())
}

/// A CA that signs whatever leaf it is asked for.
pub(crate) struct RogueCa {
    root: CertifiedIssuer<'static, KeyPair>,
}

impl RogueCa {
    pub(crate) fn new() -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "test root");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { root }
    }

    pub(crate) fn root_der(&self) -> Vec<u8> {
        self.root.der().to_vec()
    }

    /// A leaf as described, and its PKCS#8 key.
    pub(crate) fn leaf(&self, leaf: Leaf) -> (Vec<u8>, Vec<u8>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = leaf.sans;
        params.extended_key_usages = leaf.ekus;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.is_ca = IsCa::ExplicitNoCa;
        params.not_before = leaf.not_before;
        params.not_after = leaf.not_after;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.root).unwrap();
        (cert.der().to_vec(), key.serialize_der())
    }

    /// A normal workload certificate for `id` from this CA.
    pub(crate) fn workload(&self, id: &SpiffeId) -> WorkloadCert {
        let leaf = Leaf::for_id(&id.to_string());
        let (not_before, not_after) = (leaf.not_before.into(), leaf.not_after.into());
        let (der, key) = self.leaf(leaf);
        WorkloadCert {
            id: id.clone(),
            key_pkcs8_der: key,
            issued: IssuedCert {
                chain_der: vec![der],
                roots_der: vec![self.root_der()],
                serial: "01".into(),
                not_before,
                not_after,
            },
        }
    }

    pub(crate) fn store(&self, id: &SpiffeId) -> Arc<CertStore> {
        let store = CertStore::new(id.clone());
        store.install(&self.workload(id)).unwrap();
        store
    }
}

/// A verifier that accepts any server: lets a raw test client reach the point where the Ward
/// server judges it.
#[derive(Debug)]
struct AcceptAnyServer;

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn chain_and_key(
    chain: Vec<Vec<u8>>,
    key: Vec<u8>,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = chain.into_iter().map(CertificateDer::from).collect();
    (chain, PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))
}

/// A raw client presenting `chain`/`key`, trusting any server, speaking `versions`.
pub(crate) fn raw_client(
    chain: Vec<Vec<u8>>,
    key: Vec<u8>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let (chain, key) = chain_and_key(chain, key);
    let mut config = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
    .with_client_auth_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A raw TLS 1.3 server presenting `chain`/`key`, asking for no client certificate.
pub(crate) fn raw_server(chain: Vec<Vec<u8>>, key: Vec<u8>) -> Arc<ServerConfig> {
    let (chain, key) = chain_and_key(chain, key);
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

pub(crate) type ClientEnd = client::TlsStream<DuplexStream>;
pub(crate) type ServerEnd = server::TlsStream<DuplexStream>;

/// Runs both ends of a handshake over an in-memory pipe. The timeout only guards against a
/// hang; no test depends on how long a handshake takes.
pub(crate) async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> (io::Result<ClientEnd>, io::Result<ServerEnd>) {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from("ignored.example").unwrap();
    let both = async {
        tokio::join!(
            TlsConnector::from(client).connect(name, client_io),
            TlsAcceptor::from(server).accept(server_io),
        )
    };
    tokio::time::timeout(Duration::from_secs(30), both)
        .await
        .expect("handshake hung")
}

/// Sends a ping one way and a pong back: proves both ends really completed.
pub(crate) async fn exchange(client: &mut ClientEnd, server: &mut ServerEnd) -> io::Result<()> {
    client.write_all(b"ping").await?;
    client.flush().await?;
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    server.write_all(b"pong").await?;
    server.flush().await?;
    client.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"pong");
    Ok(())
}

/// The error of a failed side, as `Debug` text so that rustls and Ward error variant names
/// (`UnknownIssuer`, `TrustDomain`, ...) can be matched.
pub(crate) fn err_text<T>(r: &io::Result<T>) -> String {
    match r {
        Ok(_) => "accepted".to_owned(),
        Err(e) => format!("{e:?}"),
    }
}
