//! rustls configurations for HBONE: the server that accepts tunnels and the client that opens
//! them. Both are TLS 1.3 only, ALPN `h2`, mutually authenticated, without session resumption.

use std::sync::Arc;

use rustls::client::{ResolvesClientCert, Resumption};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};

use ward_identity::SpiffeId;

use crate::verify::{IdentityVerifier, TrustDomainVerifier};
use crate::{provider, CertStore, TlsError};

/// ALPN for HBONE: HTTP/2 CONNECT over TLS.
const ALPN_H2: &[u8] = b"h2";

/// Server side of HBONE: TLS 1.3 only, ALPN `h2`, client certificate required and verified
/// against the store's current roots, client trust domain `trust_domain` or one of `aliases`.
/// The server certificate comes from the store at each handshake.
///
/// Session resumption is off (no tickets, no session cache): a resumed session would skip
/// certificate verification, so a removed root or a changed policy could be bypassed
/// (CVE-2022-21654). Every connection does a full handshake.
pub fn server_config(
    store: Arc<CertStore>,
    trust_domain: &str,
    aliases: &[String],
) -> Result<Arc<ServerConfig>, TlsError> {
    let trust_domains = std::iter::once(trust_domain.to_owned())
        .chain(aliases.iter().cloned())
        .collect();
    let verifier = Arc::new(TrustDomainVerifier::new(store.clone(), trust_domains));
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

/// Client side of HBONE: presents the store's certificate; the server's chain must verify
/// against the current roots and its SPIFFE id must be one of `expected` (secure naming). The
/// `ServerName` given to `connect` is not checked. TLS 1.3 only, ALPN `h2`, no resumption
/// (CVE-2022-21654, see [`server_config`]).
pub fn client_config(
    store: Arc<CertStore>,
    expected: Vec<SpiffeId>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = Arc::new(IdentityVerifier::new(store.clone(), expected));
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(StoreResolver(store)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    Ok(Arc::new(config))
}

/// Hands rustls the store's current certificate at the start of each handshake.
#[derive(Debug)]
pub(crate) struct StoreResolver(pub(crate) Arc<CertStore>);

impl ResolvesServerCert for StoreResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.certified_key()
    }
}

impl ResolvesClientCert for StoreResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.certified_key()
    }

    fn has_certs(&self) -> bool {
        self.0.certified_key().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::*;
    use crate::{peer_info, PeerInfo};
    use rcgen::ExtendedKeyUsagePurpose as Eku;
    use rustls::HandshakeKind;
    use time::OffsetDateTime;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn mutual_handshake_proves_both_identities_over_pq_tls13() {
        let mesh = MeshCa::new();
        let (server_id, client_id) = (id("server"), id("client"));
        let server = server_config(mesh.store(&server_id), TD, &[]).unwrap();
        let client =
            client_config(mesh.store(&client_id), vec![id("other"), server_id.clone()]).unwrap();

        let (c, s) = handshake(server, client).await;
        let (mut c, mut s) = (c.unwrap(), s.unwrap());
        exchange(&mut c, &mut s).await.unwrap();

        let seen_by_server = peer_info(s.get_ref().1);
        assert_eq!(seen_by_server.identity, Some(client_id));
        assert_eq!(seen_by_server.tls_version, "TLSv1.3");
        assert_eq!(seen_by_server.kx_group, "X25519MLKEM768");
        assert!(
            seen_by_server.cipher_suite.starts_with("TLS13_"),
            "{seen_by_server:?}"
        );
        let seen_by_client: PeerInfo = peer_info(c.get_ref().1);
        assert_eq!(seen_by_client.identity, Some(server_id));
        assert_eq!(seen_by_client.kx_group, "X25519MLKEM768");
        assert_eq!(c.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    }

    #[tokio::test]
    async fn peer_from_another_ca_is_rejected_both_ways() {
        let ours = MeshCa::new();
        let theirs = MeshCa::new();
        let server_id = id("server");

        // Two Ward meshes have roots with the same name, so webpki finds "our" root as the
        // issuer and the signature check fails (BadSignature); a differently named root gives
        // UnknownIssuer. Either way: refused.
        let refused = |text: &str| text.contains("BadSignature") || text.contains("UnknownIssuer");
        let stranger = RogueCa::new();
        let leaves = [
            theirs.workload(&id("client")),
            stranger.workload(&id("client")),
        ];
        for theirs_cert in &leaves {
            // A client certificate from another CA.
            let server = server_config(ours.store(&server_id), TD, &[]).unwrap();
            let client = raw_client(
                theirs_cert.issued.chain_der.clone(),
                theirs_cert.key_pkcs8_der.clone(),
                &[&rustls::version::TLS13],
            );
            let (_, s) = handshake(server, client).await;
            assert!(refused(&err_text(&s)), "{}", err_text(&s));

            // A server certificate from another CA.
            let server = raw_server(
                theirs_cert.issued.chain_der.clone(),
                theirs_cert.key_pkcs8_der.clone(),
            );
            let client = client_config(ours.store(&id("client")), vec![id("client")]).unwrap();
            let (c, _) = handshake(server, client).await;
            assert!(refused(&err_text(&c)), "{}", err_text(&c));
        }
    }

    #[tokio::test]
    async fn client_trust_domain_must_be_local_or_an_alias() {
        let rogue = RogueCa::new();
        let server_store = rogue.store(&id("server"));
        let foreign = "spiffe://clusterset.local/ns/default/sa/my-app";
        let aliases = ["clusterset.local".to_owned()];
        let cases: &[(&str, &[String], bool)] = &[
            ("spiffe://cluster.local/ns/default/sa/my-app", &[], true),
            (foreign, &[], false),
            (foreign, &aliases, true),
            (
                "spiffe://cluster.local.evil/ns/default/sa/my-app",
                &aliases,
                false,
            ),
        ];
        for (client_id, aliases, ok) in cases {
            let (leaf, key) = rogue.leaf(Leaf::for_id(client_id));
            let server = server_config(server_store.clone(), TD, aliases).unwrap();
            let client = raw_client(vec![leaf], key, &[&rustls::version::TLS13]);
            let (_, s) = handshake(server, client).await;
            assert_eq!(s.is_ok(), *ok, "{client_id} {aliases:?}: {}", err_text(&s));
            if !ok {
                assert!(err_text(&s).contains("TrustDomain"), "{}", err_text(&s));
            }
        }
    }

    #[tokio::test]
    async fn server_identity_must_be_expected_whatever_the_dns_name() {
        let mesh = MeshCa::new();
        let server_store = mesh.store(&id("server"));
        let client_store = mesh.store(&id("client"));
        let cases = [
            (vec![id("server")], true),
            (vec![id("a"), id("server")], true),
            (vec![id("not-server")], false),
            (
                vec![SpiffeId::new("other.td", "default", "server").unwrap()],
                false,
            ),
            (vec![], false),
        ];
        for (expected, ok) in cases {
            let server = server_config(server_store.clone(), TD, &[]).unwrap();
            let client = client_config(client_store.clone(), expected.clone()).unwrap();
            let (c, _) = handshake(server, client).await;
            assert_eq!(c.is_ok(), ok, "{expected:?}: {}", err_text(&c));
            if !ok {
                assert!(
                    err_text(&c).contains("UnexpectedIdentity"),
                    "{}",
                    err_text(&c)
                );
            }
        }
    }

    /// Client certificates, all signed by the trusted root, that the server must refuse.
    #[tokio::test]
    async fn malformed_client_leaves_are_rejected() {
        let rogue = RogueCa::new();
        let server_store = rogue.store(&id("server"));
        let now = OffsetDateTime::now_utc();
        let me = "spiffe://cluster.local/ns/default/sa/me";
        let leaf = |f: &dyn Fn(&mut Leaf)| {
            let mut l = Leaf::for_id(me);
            f(&mut l);
            rogue.leaf(l)
        };
        let root = rogue.root_der();
        type Case<'a> = (&'a str, (Vec<u8>, Vec<u8>), Vec<Vec<u8>>, &'a str);
        let cases: Vec<Case<'_>> = vec![
            (
                "expired",
                leaf(&|l| l.not_after = now - time::Duration::seconds(1)),
                vec![],
                "Expired",
            ),
            (
                "not yet valid",
                leaf(&|l| l.not_before = now + time::Duration::hours(1)),
                vec![],
                "NotValidYet",
            ),
            (
                "two URI SANs",
                leaf(&|l| {
                    l.sans
                        .push(uri("spiffe://cluster.local/ns/default/sa/admin"))
                }),
                vec![],
                "ManyUriSans",
            ),
            (
                "SPIFFE id only in a DNS SAN",
                leaf(&|l| l.sans = vec![dns(me)]),
                vec![],
                "NoUriSan",
            ),
            (
                "serverAuth-only leaf as client",
                leaf(&|l| l.ekus = vec![Eku::ServerAuth]),
                vec![],
                "InvalidPurpose",
            ),
            (
                "chain of nine",
                leaf(&|_| {}),
                vec![root.clone(); 8],
                "ChainTooLong",
            ),
            (
                "malformed SPIFFE id",
                leaf(&|l| l.sans = vec![uri("spiffe://cluster.local/ns/a/sa/b/../../x")]),
                vec![],
                "UriSan(PathShape)",
            ),
        ];
        for (name, (leaf, key), extra, why) in cases {
            let mut chain = vec![leaf];
            chain.extend(extra);
            let server = server_config(server_store.clone(), TD, &[]).unwrap();
            let client = raw_client(chain, key, &[&rustls::version::TLS13]);
            let (_, s) = handshake(server, client).await;
            assert!(err_text(&s).contains(why), "{name}: {}", err_text(&s));
        }
    }

    /// Server certificates, all signed by the trusted root, that the client must refuse.
    #[tokio::test]
    async fn malformed_server_leaves_are_rejected() {
        let rogue = RogueCa::new();
        let client_store = rogue.store(&id("client"));
        let server_uri = "spiffe://cluster.local/ns/default/sa/server";
        let leaf = |f: &dyn Fn(&mut Leaf)| {
            let mut l = Leaf::for_id(server_uri);
            f(&mut l);
            rogue.leaf(l)
        };
        let now = OffsetDateTime::now_utc();
        type Case<'a> = (&'a str, (Vec<u8>, Vec<u8>), &'a str);
        let cases: Vec<Case<'_>> = vec![
            (
                "expired",
                leaf(&|l| l.not_after = now - time::Duration::seconds(1)),
                "Expired",
            ),
            (
                "clientAuth-only leaf as server",
                leaf(&|l| l.ekus = vec![Eku::ClientAuth]),
                "InvalidPurpose",
            ),
            (
                "two URI SANs",
                leaf(&|l| l.sans.push(uri("spiffe://cluster.local/ns/default/sa/x"))),
                "ManyUriSans",
            ),
            (
                "identity only in a DNS SAN",
                leaf(&|l| l.sans = vec![dns(server_uri)]),
                "NoUriSan",
            ),
        ];
        for (name, (leaf, key), why) in cases {
            let server = raw_server(vec![leaf], key);
            let client = client_config(client_store.clone(), vec![id("server")]).unwrap();
            let (c, _) = handshake(server, client).await;
            assert!(err_text(&c).contains(why), "{name}: {}", err_text(&c));
        }
    }

    #[tokio::test]
    async fn tls12_only_client_is_rejected() {
        let rogue = RogueCa::new();
        let server = server_config(rogue.store(&id("server")), TD, &[]).unwrap();
        let (leaf, key) = rogue.leaf(Leaf::for_id("spiffe://cluster.local/ns/default/sa/old"));
        let client = raw_client(vec![leaf], key, &[&rustls::version::TLS12]);
        let (c, s) = handshake(server, client).await;
        assert!(c.is_err() && s.is_err());
        assert!(
            err_text(&s).contains("Tls12NotOfferedOrEnabled"),
            "{}",
            err_text(&s)
        );
    }

    #[tokio::test]
    async fn nothing_installed_means_no_handshake() {
        let mesh = MeshCa::new();
        let empty = CertStore::new(id("server"));
        assert!(!empty.is_ready());
        let server = server_config(empty, TD, &[]).unwrap();
        let client = client_config(mesh.store(&id("client")), vec![id("server")]).unwrap();
        let (c, s) = handshake(server, client).await;
        assert!(c.is_err() && s.is_err());
    }

    #[tokio::test]
    async fn no_session_resumption_even_for_a_client_that_asks() {
        let rogue = RogueCa::new();
        let server = server_config(rogue.store(&id("server")), TD, &[]).unwrap();
        let (leaf, key) = rogue.leaf(Leaf::for_id("spiffe://cluster.local/ns/default/sa/c"));
        // rustls clients keep a session cache by default: it would resume if given a ticket.
        let client = raw_client(vec![leaf], key, &[&rustls::version::TLS13]);
        for round in 0..2 {
            let (c, s) = handshake(server.clone(), client.clone()).await;
            let (mut c, mut s) = (c.unwrap(), s.unwrap());
            exchange(&mut c, &mut s).await.unwrap();
            assert_eq!(
                s.get_ref().1.handshake_kind(),
                Some(HandshakeKind::Full),
                "round {round}"
            );
        }
    }

    #[tokio::test]
    async fn rotation_changes_new_handshakes_only() {
        let mesh = MeshCa::new();
        let server_id = id("server");
        let server_store = CertStore::new(server_id.clone());
        let first = mesh.workload(&server_id);
        server_store.install(&first).unwrap();
        let server = server_config(server_store.clone(), TD, &[]).unwrap();
        let client = client_config(mesh.store(&id("client")), vec![server_id.clone()]).unwrap();
        let leaf_seen = |c: &ClientEnd| c.get_ref().1.peer_certificates().unwrap()[0].to_vec();

        let (c, s) = handshake(server.clone(), client.clone()).await;
        let (mut old_c, mut old_s) = (c.unwrap(), s.unwrap());
        assert_eq!(leaf_seen(&old_c), first.issued.chain_der[0]);

        let second = mesh.workload(&server_id);
        assert_ne!(second.issued.serial, first.issued.serial);
        server_store.install(&second).unwrap();
        assert_eq!(server_store.current().unwrap().serial, second.issued.serial);

        let (c, s) = handshake(server, client).await;
        let (mut new_c, mut new_s) = (c.unwrap(), s.unwrap());
        assert_eq!(leaf_seen(&new_c), second.issued.chain_der[0]);
        exchange(&mut new_c, &mut new_s).await.unwrap();

        // The connection opened before the rotation still carries data both ways.
        exchange(&mut old_c, &mut old_s).await.unwrap();
        old_c.write_all(b"still here").await.unwrap();
        old_c.flush().await.unwrap();
        let mut buf = [0u8; 10];
        old_s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"still here");
    }

    #[tokio::test]
    async fn root_rotation_applies_without_rebuilding_configs() {
        let old_mesh = MeshCa::new();
        let new_mesh = MeshCa::new();
        let server_store = old_mesh.store(&id("server"));
        let client_store = old_mesh.store(&id("client"));
        let server = server_config(server_store.clone(), TD, &[]).unwrap();
        let client = client_config(client_store.clone(), vec![id("server")]).unwrap();
        let (c, s) = handshake(server.clone(), client.clone()).await;
        assert!(c.is_ok() && s.is_ok());

        // The client moves to the new mesh (new cert, new roots); the same configs now refuse
        // the old server, and accept it again once the server moves too.
        client_store
            .install(&new_mesh.workload(&id("client")))
            .unwrap();
        let (c, _) = handshake(server.clone(), client.clone()).await;
        assert!(err_text(&c).contains("BadSignature"), "{}", err_text(&c));
        server_store
            .install(&new_mesh.workload(&id("server")))
            .unwrap();
        let (c, s) = handshake(server, client).await;
        assert!(
            c.is_ok() && s.is_ok(),
            "{} / {}",
            err_text(&c),
            err_text(&s)
        );
    }

    /// Hostile bytes instead of a handshake: the server fails the connection and returns
    /// (RUSTSEC-2024-0336: close right after ClientHello; CVE-2021-28683: unknown alert code).
    #[tokio::test]
    async fn hostile_bytes_end_the_handshake() {
        let rogue = RogueCa::new();
        let server = server_config(rogue.store(&id("server")), TD, &[]).unwrap();
        // A ClientHello record header announcing 512 bytes, then only its first few.
        let truncated_hello = vec![
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ];
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("nothing", vec![]),
            ("plain HTTP", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
            (
                "alert with an unknown code",
                vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0xff],
            ),
            (
                "close_notify first",
                vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x00],
            ),
            ("truncated ClientHello then close", truncated_hello),
            ("oversized record", vec![0x16, 0x03, 0x03, 0xff, 0xff, 0x00]),
        ];
        for (name, bytes) in cases {
            let (mut attacker, server_io) = tokio::io::duplex(64 * 1024);
            attacker.write_all(&bytes).await.unwrap();
            attacker.shutdown().await.unwrap();
            let accept = tokio_rustls::TlsAcceptor::from(server.clone()).accept(server_io);
            let result = tokio::time::timeout(std::time::Duration::from_secs(30), accept)
                .await
                .expect("server hung");
            assert!(result.is_err(), "{name}: accepted");
        }
    }

    #[test]
    fn peer_info_before_any_handshake_is_empty() {
        let rogue = RogueCa::new();
        let config = client_config(rogue.store(&id("c")), vec![]).unwrap();
        let name = rustls::pki_types::ServerName::try_from("x.example").unwrap();
        let conn = rustls::ClientConnection::new(config, name).unwrap();
        let info = peer_info(&conn);
        assert_eq!(
            info,
            PeerInfo {
                identity: None,
                tls_version: "none",
                kx_group: String::new(),
                cipher_suite: String::new(),
                cert_sha256: None,
            }
        );
    }
}
