//! The paths a run compares, each client → [proxy pair] → server. Adding one is one more
//! `PathKind` variant and one more arm in [`start`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::http1::Requests;
use crate::net::Net;
use crate::nginx_pair::{NginxPair, NginxPairError};
use crate::ward_pair::{Layer, WardPair, WardPairError};

/// The service ports every proxied path exposes: HTTP, echo, iperf3.
pub(crate) const SERVICE_PORTS: [u16; 3] = [8080, 9000, 5201];

/// Where a client dials for each kind of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Endpoints {
    /// The HTTP/1.1 1 KB server.
    pub(crate) http: SocketAddr,
    /// The TCP echo.
    pub(crate) echo: SocketAddr,
    /// `iperf3 -s`.
    pub(crate) iperf: SocketAddr,
}

/// One measured path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum PathKind {
    /// Client → server, no proxy.
    Baseline,
    /// Client → ward sidecar → HBONE/mTLS → ward sidecar → server, on a TCP port.
    WardL4,
    /// The same on an HTTP port, with a 10-rule AuthorizationPolicy and a cached-key JWT.
    WardL7,
    /// Client → ward ingress gateway → HBONE/mTLS → ward sidecar → server.
    WardGateway,
    /// Client → nginx → TLS 1.3 with client cert → nginx → server.
    Reference,
    /// ward-l7 with every request traced (100% sampling) and exported over OTLP/HTTP to the
    /// bench's sink. Opt-in (`--paths`): the cost of tracing, against ward-l7 of the same run.
    WardL7Traced,
    /// ward-l7 with the audit trail off (`ward up --no-audit`). Opt-in (`--paths`): the cost
    /// of the audit trail, against ward-l7 of the same run.
    WardL7AuditOff,
    /// ward-l7 unchanged, in a second pair of processes. Opt-in (`--paths`): the A/A control,
    /// whose "cost" against ward-l7 is what two identical pairs differ by in the same run.
    WardL7Twin,
    /// ward-l4 unchanged, in a second pair of processes. Opt-in (`--paths`), compared with
    /// ward-l4; with `--twin-ward` it runs another build, for an A/B of two builds.
    WardL4Twin,
}

impl PathKind {
    /// Every path, in the order a round visits them (and the tables list them).
    pub(crate) const ALL: [PathKind; 9] = [
        PathKind::Baseline,
        PathKind::WardL4,
        PathKind::WardL4Twin,
        PathKind::WardL7,
        PathKind::WardL7Traced,
        PathKind::WardL7AuditOff,
        PathKind::WardL7Twin,
        PathKind::WardGateway,
        PathKind::Reference,
    ];

    /// The paths a run measures when none are named: not the cost variants of ward-l7.
    pub(crate) const DEFAULT: [PathKind; 5] = [
        PathKind::Baseline,
        PathKind::WardL4,
        PathKind::WardL7,
        PathKind::WardGateway,
        PathKind::Reference,
    ];

    /// The path named `name` (as in results), if any.
    pub(crate) fn from_name(name: &str) -> Option<PathKind> {
        PathKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The path a cost variant (or the control) is measured against (ward-l7 for each), None
    /// for the others.
    pub(crate) fn cost_of(self) -> Option<PathKind> {
        match self {
            PathKind::WardL7Traced | PathKind::WardL7AuditOff | PathKind::WardL7Twin => {
                Some(PathKind::WardL7)
            }
            PathKind::WardL4Twin => Some(PathKind::WardL4),
            _ => None,
        }
    }

    /// A twin: a base path again in a second pair of processes (the `--twin-ward` binary's).
    pub(crate) fn is_twin(self) -> bool {
        matches!(self, PathKind::WardL4Twin | PathKind::WardL7Twin)
    }

    /// The name in results and tables.
    pub(crate) fn name(self) -> &'static str {
        match self {
            PathKind::Baseline => "baseline",
            PathKind::WardL4 => "ward-l4",
            PathKind::WardL7 => "ward-l7",
            PathKind::WardGateway => "ward-gateway",
            PathKind::Reference => "reference",
            PathKind::WardL7Traced => "ward-l7-traced",
            PathKind::WardL7AuditOff => "ward-l7-audit-off",
            PathKind::WardL7Twin => "ward-l7-twin",
            PathKind::WardL4Twin => "ward-l4-twin",
        }
    }

    /// One line saying what the path is.
    pub(crate) fn description(self) -> &'static str {
        match self {
            PathKind::Baseline => "client -> server, no proxy",
            PathKind::WardL4 => {
                "client -> ward egress -> HBONE/mTLS (TLS 1.3) -> ward inbound -> server; TCP port, \
                 STRICT PeerAuthentication, ALLOW AuthorizationPolicy; one `ward up --workloads` \
                 per side, sharing one CA"
            }
            PathKind::WardL7 => {
                "as ward-l4, but the server port is protocol HTTP: a 10-rule ALLOW \
                 AuthorizationPolicy (the bench request matches rule 9 only) and a \
                 RequestAuthentication (ES256, JWKS served by the bench, fetched once) checked on \
                 every request, each carrying `Authorization: Bearer` (the same token: its \
                 signature is verified once, then hits Ward's verified-token cache); echo and iperf3 ports stay TCP"
            }
            PathKind::WardGateway => {
                "client -> ward ingress gateway (a Gateway with HTTP and TCP servers, a \
                 VirtualService with http[] and tcp[] routes) -> HBONE/mTLS (TLS 1.3) -> ward \
                 sidecar -> server; the server port is protocol HTTP, STRICT PeerAuthentication \
                 and an ALLOW AuthorizationPolicy naming the gateway's identity"
            }
            PathKind::Reference => {
                "client -> nginx A -> TLS 1.3 + client cert -> nginx B (ssl_verify_client on) -> \
                 server; Debian nginx stream module, 1 worker each"
            }
            PathKind::WardL7Traced => {
                "as ward-l7, plus tracing turned on mesh-wide: an \
                 `extensionProviders[].opentelemetry` provider (OTLP/HTTP, protobuf) pointing at \
                 the bench's sink (which decodes and counts the spans) as the default tracing \
                 provider, and a mesh-wide Telemetry with randomSamplingPercentage: 100: every \
                 request makes a CLIENT span (the client's egress listener then serves request \
                 by request) and a SERVER span, both exported"
            }
            PathKind::WardL7AuditOff => {
                "as ward-l7, with the audit trail disabled the way a user does it: \
                 `ward up --no-audit` on both sides"
            }
            PathKind::WardL7Twin => {
                "ward-l7 again, unchanged, as a second pair of `ward up` processes: the A/A \
                 control, measuring how far two identical pairs differ in the same run"
            }
            PathKind::WardL4Twin => {
                "ward-l4 again, as a second pair of `ward up` processes (running the \
                 `--twin-ward` binary when one is given): compared with ward-l4 of the same run"
            }
        }
    }
}

/// The ward binaries a run measures.
#[derive(Debug, Clone)]
pub(crate) struct Wards {
    /// Every ward path's binary (`--ward`).
    pub(crate) main: PathBuf,
    /// The twins' binary (`--twin-ward`), when it is another one.
    pub(crate) twin: Option<PathBuf>,
}

impl Wards {
    /// One binary for every path.
    #[cfg(test)]
    pub(crate) fn one(main: &Path) -> Wards {
        Wards {
            main: main.to_path_buf(),
            twin: None,
        }
    }

    /// The binary `kind` runs.
    pub(crate) fn for_path(&self, kind: PathKind) -> &Path {
        match &self.twin {
            Some(twin) if kind.is_twin() => twin,
            _ => &self.main,
        }
    }
}

/// Why a path could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PathError {
    /// The ward pair did not start.
    #[error(transparent)]
    Ward(#[from] WardPairError),
    /// The nginx pair did not start.
    #[error(transparent)]
    Nginx(#[from] NginxPairError),
}

/// The proxies a path runs, kept alive while the path is measured.
pub(crate) enum Proxies {
    /// Baseline: nothing between client and server.
    None,
    /// Two `ward up` processes, one per side (and, traced, the OTLP sink).
    Ward(Box<WardPair>),
    /// Two nginx masters and their workers.
    Nginx(NginxPair),
}

/// A path set up and ready for traffic.
pub(crate) struct RunningPath {
    /// Which path.
    pub(crate) kind: PathKind,
    /// Where the client dials.
    pub(crate) entry: Endpoints,
    /// The HTTP requests the load generator sends on this path.
    pub(crate) requests: Requests,
    /// What runs in between.
    pub(crate) proxies: Proxies,
}

impl RunningPath {
    /// The processes whose CPU and memory are the pair's cost.
    pub(crate) fn proxy_pids(&self) -> Vec<u32> {
        match &self.proxies {
            Proxies::None => Vec::new(),
            Proxies::Ward(w) => w.pids(),
            Proxies::Nginx(n) => n.pids(),
        }
    }
}

/// Sets up `kind` in front of `server` (its addresses as the server side sees them), proxies
/// pinned to `cpu`, each on its side of `net`.
pub(crate) fn start(
    kind: PathKind,
    server: &Endpoints,
    wards: &Wards,
    cpu: Option<usize>,
    net: Net,
) -> Result<RunningPath, PathError> {
    let plain = Requests::plain();
    let (entry, requests, proxies) = match kind {
        PathKind::Baseline => {
            let direct = Endpoints {
                http: net.client_view(server.http),
                echo: net.client_view(server.echo),
                iperf: net.client_view(server.iperf),
            };
            (direct, plain, Proxies::None)
        }
        PathKind::WardL4
        | PathKind::WardL7
        | PathKind::WardGateway
        | PathKind::WardL7Traced
        | PathKind::WardL7AuditOff
        | PathKind::WardL7Twin
        | PathKind::WardL4Twin => {
            let layer = match kind {
                PathKind::WardL4 => Layer::L4,
                PathKind::WardL4Twin => Layer::L4Twin,
                PathKind::WardL7 => Layer::L7,
                PathKind::WardL7Traced => Layer::L7Traced,
                PathKind::WardL7AuditOff => Layer::L7AuditOff,
                PathKind::WardL7Twin => Layer::L7Twin,
                _ => Layer::Gateway,
            };
            let pair = WardPair::start(wards.for_path(kind), server, cpu, layer, net)?;
            (
                pair.entry,
                pair.requests.clone(),
                Proxies::Ward(Box::new(pair)),
            )
        }
        PathKind::Reference => {
            let pair = NginxPair::start(server, cpu, crate::nginx_pair::BLOCK, net)?;
            (pair.entry, plain, Proxies::Nginx(pair))
        }
    };
    Ok(RunningPath {
        kind,
        entry,
        requests,
        proxies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = PathKind::ALL.iter().map(|k| k.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), PathKind::ALL.len());
        for k in PathKind::ALL {
            assert_eq!(PathKind::from_name(k.name()), Some(k));
        }
        assert_eq!(PathKind::from_name("ward-l8"), None);
    }

    #[test]
    fn cost_variants_are_opt_in() {
        for k in [
            PathKind::WardL7Traced,
            PathKind::WardL7AuditOff,
            PathKind::WardL7Twin,
        ] {
            assert!(!PathKind::DEFAULT.contains(&k), "{}", k.name());
            assert_eq!(k.cost_of(), Some(PathKind::WardL7));
        }
        assert!(!PathKind::DEFAULT.contains(&PathKind::WardL4Twin));
        assert_eq!(PathKind::WardL4Twin.cost_of(), Some(PathKind::WardL4));
        assert!(PathKind::DEFAULT.iter().all(|k| k.cost_of().is_none()));
    }

    #[test]
    fn only_the_twins_run_the_twin_binary() {
        let wards = Wards {
            main: "/a/ward".into(),
            twin: Some("/b/ward".into()),
        };
        for k in PathKind::ALL {
            let twin = matches!(k, PathKind::WardL4Twin | PathKind::WardL7Twin);
            let want = if twin { "/b/ward" } else { "/a/ward" };
            assert_eq!(wards.for_path(k), Path::new(want), "{}", k.name());
        }
        let one = Wards::one(Path::new("/a/ward"));
        assert!(PathKind::ALL
            .iter()
            .all(|k| one.for_path(*k) == Path::new("/a/ward")));
    }

    #[test]
    fn baseline_is_the_server_itself() {
        let server = Endpoints {
            http: "127.0.0.1:1".parse().unwrap(),
            echo: "127.0.0.1:2".parse().unwrap(),
            iperf: "127.0.0.1:3".parse().unwrap(),
        };
        let p = start(
            PathKind::Baseline,
            &server,
            &Wards::one(Path::new("/nonexistent")),
            None,
            Net::Loopback,
        )
        .unwrap();
        assert_eq!(p.entry, server);
        assert_eq!(p.requests, Requests::plain());
        assert!(p.proxy_pids().is_empty());
        assert!(start(
            PathKind::WardL7,
            &server,
            &Wards::one(Path::new("/x")),
            None,
            Net::Loopback
        )
        .is_err());
    }
}
