//! `ward verify mtls`: one probe connection from a sidecar to a service port, opened the way
//! the sidecar opens an app's connection to it (the same endpoints, the same transport choice,
//! the same certificate and verifier), reporting what the handshake proved and what the
//! destination decided (docs/verify.md).
//!
//! The probe dials a fresh connection rather than reusing a pooled one, so the report is of a
//! handshake made now. It opens one HBONE CONNECT stream, sends nothing through it and closes
//! it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use rustls::pki_types::ServerName;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpSocket, TcpStream};
use ward_config::{CapturedDestination, Endpoint, ProxyConfig, Transport};
use ward_hbone::{H2Settings, HboneClient, OpenError, HBONE_PORT};
use ward_identity::{IssuedCert, SpiffeId};
use ward_tls::CertStore;

/// Longest a probe may take, from the TCP connect to the CONNECT answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a probe goes: the service and the endpoint an app's connection would use.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbePlan {
    /// The service host, or the workload, the target names.
    pub service: String,
    /// The endpoint tried (the first the sidecar would try).
    pub endpoint: Endpoint,
}

/// Finds where a connection from `cfg`'s workload to `target` (`host:port` or `ip:port`)
/// goes. Pure.
pub fn plan(cfg: &ProxyConfig, target: &str) -> Result<ProbePlan, String> {
    let (host, port) = target
        .rsplit_once(':')
        .ok_or_else(|| format!("{target:?} is not host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{target:?}: {port:?} is not a port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return match cfg.captured_destination(SocketAddr::new(ip, port)) {
            CapturedDestination::Service { host, port } => first(host, &port.endpoints),
            CapturedDestination::Workload(ep) => Ok(ProbePlan {
                service: ep.workload.clone().unwrap_or_default(),
                endpoint: ep,
            }),
            CapturedDestination::Unknown => Err(format!(
                "{target} is no service address or workload of the mesh that {} can see",
                cfg.workload.name
            )),
        };
    }
    let host = host.to_ascii_lowercase();
    let (name, service) = cfg
        .services
        .iter()
        .find(|(name, s)| **name == host || s.hostnames.contains(&host))
        .ok_or_else(|| {
            format!(
                "{host} is not a service that workload {}/{} can see",
                cfg.workload.namespace, cfg.workload.name
            )
        })?;
    let service_port = service
        .ports
        .iter()
        .find(|p| p.number == port)
        .ok_or_else(|| format!("service {name} has no port {port}"))?;
    first(name, &service_port.endpoints)
}

fn first(service: &str, endpoints: &[Endpoint]) -> Result<ProbePlan, String> {
    let endpoint = endpoints
        .first()
        .cloned()
        .ok_or_else(|| format!("service {service} has no endpoints on that port"))?;
    Ok(ProbePlan {
        service: service.to_owned(),
        endpoint,
    })
}

/// One certificate of the handshake.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeCert {
    /// The SPIFFE id it proves.
    pub identity: String,
    /// Its serial, lowercase hex.
    pub serial: String,
    /// Its NotAfter, RFC 3339.
    pub not_after: String,
    /// Seconds until NotAfter (negative once past).
    pub seconds_left: i64,
}

/// What a probe found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeReport {
    /// The probing workload, `namespace/name`.
    pub from: String,
    /// The target as given.
    pub to: String,
    /// The service (or workload) it resolved to; empty when it resolved to nothing.
    pub service: String,
    /// The endpoint dialled (its HBONE port for a mesh endpoint).
    pub endpoint: String,
    /// `HBONE` (mutual TLS to the peer's proxy) or `PLAINTEXT`; empty when nothing was dialled.
    pub transport: String,
    /// The identity the sidecar requires of the peer (secure naming).
    pub expected_identity: String,
    /// The TLS version, key exchange group and cipher suite negotiated.
    pub tls_version: String,
    pub kx_group: String,
    pub cipher_suite: String,
    /// The certificate the probing sidecar presented.
    pub client_cert: Option<ProbeCert>,
    /// The certificate the peer presented; its chain was verified against the mesh's roots
    /// and its identity against `expectedIdentity` by the handshake.
    pub server_cert: Option<ProbeCert>,
    /// `ALLOW` (the destination's proxy accepted the tunnel), `DENY` (it refused it: 401,
    /// its authorization policy) or `ERROR` (the connection failed; see `problems`).
    pub decision: String,
    /// The destination proxy's answer to the CONNECT, when there was one.
    pub connect_status: Option<u16>,
    /// True when the connection was mutual TLS 1.3 with the expected peer: what `ward verify
    /// mtls` requires.
    pub mutual_tls13: bool,
    /// What is not mutual TLS 1.3, or why the probe failed.
    pub problems: Vec<String>,
}

fn cert_facts(chain_der: &[u8], now: SystemTime) -> Option<ProbeCert> {
    let identity = ward_identity::identity_from_cert(chain_der).ok()?;
    let issued = IssuedCert::from_chain(vec![chain_der.to_vec()], Vec::new()).ok()?;
    Some(ProbeCert {
        identity: identity.to_string(),
        serial: issued.serial,
        not_after: crate::humantime_utc(issued.not_after),
        seconds_left: seconds_between(now, issued.not_after),
    })
}

fn seconds_between(now: SystemTime, then: SystemTime) -> i64 {
    match then.duration_since(now) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Probes `target` from the workload of `cfg`, with the sidecar's certificates `certs`.
pub async fn probe(certs: Arc<CertStore>, cfg: Arc<ProxyConfig>, target: &str) -> ProbeReport {
    let mut report = ProbeReport {
        from: format!("{}/{}", cfg.workload.namespace, cfg.workload.name),
        to: target.to_owned(),
        decision: "ERROR".to_owned(),
        ..ProbeReport::default()
    };
    let plan = match plan(&cfg, target) {
        Ok(plan) => plan,
        Err(e) => {
            report.problems.push(e);
            return report;
        }
    };
    report.service = plan.service.clone();
    match tokio::time::timeout(PROBE_TIMEOUT, dial(&certs, &cfg, &plan, &mut report)).await {
        Ok(()) => {}
        Err(_) => report
            .problems
            .push(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
    }
    report.mutual_tls13 = report.transport == "HBONE"
        && report.tls_version == "TLSv1.3"
        && report.client_cert.is_some()
        && report
            .server_cert
            .as_ref()
            .is_some_and(|c| c.identity == report.expected_identity)
        && report.decision != "ERROR";
    report
}

async fn dial(certs: &Arc<CertStore>, cfg: &ProxyConfig, plan: &ProbePlan, r: &mut ProbeReport) {
    let ep = &plan.endpoint;
    if ep.transport == Transport::Plaintext {
        r.transport = "PLAINTEXT".to_owned();
        r.endpoint = ep.address.to_string();
        r.problems.push(format!(
            "the sidecar sends connections to {} in plaintext: it is not a mesh workload, or \
             auto-mTLS is off for it (a DestinationRule, or the mesh's enableAutoMtls)",
            plan.service
        ));
        match connect(cfg.workload.address, ep.address).await {
            Ok(_) => r.decision = "ALLOW".to_owned(),
            Err(e) => r.problems.push(e),
        }
        return;
    }
    r.transport = "HBONE".to_owned();
    let hbone = SocketAddr::new(ep.address.ip(), HBONE_PORT);
    r.endpoint = hbone.to_string();
    let Some(expected) = ep.identity.as_deref().and_then(|i| SpiffeId::parse(i).ok()) else {
        r.problems
            .push(format!("endpoint {} has no valid identity", ep.address));
        return;
    };
    r.expected_identity = expected.to_string();
    let now = SystemTime::now();
    r.client_cert = certs.current().map(|c| ProbeCert {
        identity: c.id.to_string(),
        serial: c.serial,
        not_after: crate::humantime_utc(c.not_after),
        seconds_left: seconds_between(now, c.not_after),
    });
    let tcp = match connect(cfg.workload.address, hbone).await {
        Ok(tcp) => tcp,
        Err(e) => {
            r.problems.push(e);
            return;
        }
    };
    let config = match ward_tls::client_config(certs.clone(), vec![expected]) {
        Ok(c) => c,
        Err(e) => {
            r.problems.push(format!("no client TLS configuration: {e}"));
            return;
        }
    };
    let name = ServerName::IpAddress(hbone.ip().into());
    let tls = match tokio_rustls::TlsConnector::from(config)
        .connect(name, crate::hbone_io(tcp))
        .await
    {
        Ok(tls) => tls,
        Err(e) => {
            r.problems.push(format!("TLS handshake failed: {e}"));
            return;
        }
    };
    let conn = tls.get_ref().1;
    let peer = ward_tls::peer_info(conn);
    r.tls_version = peer.tls_version.to_owned();
    r.kx_group = peer.kx_group;
    r.cipher_suite = peer.cipher_suite;
    r.server_cert = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| cert_facts(leaf.as_ref(), now));
    if r.tls_version != "TLSv1.3" {
        r.problems
            .push(format!("negotiated {}, not TLSv1.3", r.tls_version));
    }
    let client = match HboneClient::handshake(tls, H2Settings::default()).await {
        Ok(c) => c,
        Err(e) => {
            r.problems.push(e.to_string());
            return;
        }
    };
    match client.open(&ep.address.to_string(), HeaderMap::new()).await {
        Ok(stream) => {
            r.connect_status = Some(200);
            r.decision = "ALLOW".to_owned();
            drop(stream);
        }
        Err(OpenError::Status(s)) => {
            r.connect_status = Some(s.as_u16());
            if s == StatusCode::UNAUTHORIZED {
                r.decision = "DENY".to_owned();
            } else {
                r.problems
                    .push(format!("the destination's proxy answered {s}"));
            }
        }
        Err(e) => r.problems.push(e.to_string()),
    }
}

/// A TCP connection from the workload's address, marked like the sidecar's own (so transparent
/// capture lets it through).
async fn connect(local: IpAddr, to: SocketAddr) -> Result<TcpStream, String> {
    let fail = |e: std::io::Error| format!("connect to {to} failed: {e}");
    let socket = match to {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(fail)?;
    crate::capture::mark_socket(&socket).map_err(fail)?;
    if local.is_ipv4() == to.is_ipv4() {
        socket.bind(SocketAddr::new(local, 0)).map_err(fail)?;
    }
    socket.connect(to).await.map_err(fail)
}
