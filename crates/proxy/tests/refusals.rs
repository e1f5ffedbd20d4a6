//! Every way the proxy refuses or ends a connection, one table row each, checked from outside:
//! what the client saw, the one access record of the connection (flags, fault, error, deciding
//! policy, a measured duration) and the one metric that counted it. Sidecars run in process
//! (`support`, ARCHITECTURE.md "Testing the proxy in process").
//!
//! Reading a row: `provoke` builds a mesh from the YAML of [`yaml`] and makes the connection;
//! the rest is what must be true afterwards.
#![allow(clippy::unwrap_used)]

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use support::access::{AccessLog, Record};
use support::apps::{self, App};
use support::peer::{self, Peer, Seen};
use support::{Mesh, Net, WAIT};
use ward_hbone::HBONE_PORT;

/// How long after a connection's record arrives the table still waits for a second one.
const SETTLE: Duration = Duration::from_millis(100);

// Roles in a row's `Net`.
/// The client workload `app/cli`, and the source of test peers.
const CLI: u8 = 1;
/// The server workload `app/srv`; its apps listen on this address too.
const SRV: u8 = 2;
/// An address that is no workload's.
const STRANGER: u8 = 3;
/// The app of `app/cli`, dialling its egress listeners.
const CLI_APP: u8 = 9;

const CLI_KEY: &str = "app/cli";
const SRV_KEY: &str = "app/srv";
const CLI_ID: &str = "spiffe://cluster.local/ns/app/sa/cli";
const SRV_ID: &str = "spiffe://cluster.local/ns/app/sa/srv";

/// The mesh of every row, on `net`:
/// - `app/srv` at address [`SRV`], ports (Sidecar ingress → app on the same address):
///   9000 TCP → :19000 (echo, when a row starts it), 9001 TCP → :19001 (never an app),
///   9002 TCP → :19002 (an app that resets mid-stream), 9003 TCP → :19003,
///   9080 HTTP → :19080 (HTTP app), 9081 HTTP → :19081 (never an app);
///   mTLS STRICT mesh-wide, except 9001 PERMISSIVE and 9003 DISABLE (`app/srv-ports`).
/// - `app/cli` at address [`CLI`], egress listeners on that address: :9000 → service
///   `srv.app.svc.cluster.local`, :9100 → `ghost.app.svc.cluster.local` (no endpoints).
///
/// `extra` documents (policies) are appended.
fn yaml(net: Net, extra: &str) -> String {
    let (cli, srv) = (net.ip(CLI), net.ip(SRV));
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: srv, namespace: app}}
spec: {{address: {srv}, serviceAccount: srv, labels: {{app: srv}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: cli, namespace: app}}
spec: {{address: {cli}, serviceAccount: cli, labels: {{app: cli}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: srv, namespace: app}}
spec:
  hosts: [srv.app.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9000, name: tcp-echo, protocol: TCP}}]
  workloadSelector: {{labels: {{app: srv}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ghost, namespace: app}}
spec:
  hosts: [ghost.app.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 9100, name: tcp-ghost, protocol: TCP}}]
  workloadSelector: {{labels: {{app: ghost}}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: srv, namespace: app}}
spec:
  workloadSelector: {{labels: {{app: srv}}}}
  ingress:
  - {{port: {{number: 9000, name: tcp-echo, protocol: TCP}}, defaultEndpoint: "{srv}:19000"}}
  - {{port: {{number: 9001, name: tcp-down, protocol: TCP}}, defaultEndpoint: "{srv}:19001"}}
  - {{port: {{number: 9002, name: tcp-reset, protocol: TCP}}, defaultEndpoint: "{srv}:19002"}}
  - {{port: {{number: 9003, name: tcp-plain, protocol: TCP}}, defaultEndpoint: "{srv}:19003"}}
  - {{port: {{number: 9080, name: http-ok, protocol: HTTP}}, defaultEndpoint: "{srv}:19080"}}
  - {{port: {{number: 9081, name: http-down, protocol: HTTP}}, defaultEndpoint: "{srv}:19081"}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: cli, namespace: app}}
spec:
  workloadSelector: {{labels: {{app: cli}}}}
  egress:
  - bind: {cli}
    hosts: [app/srv.app.svc.cluster.local, app/ghost.app.svc.cluster.local]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: srv-ports, namespace: app}}
spec:
  selector: {{matchLabels: {{app: srv}}}}
  mtls: {{mode: STRICT}}
  portLevelMtls: {{9001: {{mode: PERMISSIVE}}, 9003: {{mode: DISABLE}}}}
{extra}"#
    )
}

/// `app/deny-cli`: srv refuses every connection from `app/cli`.
const DENY_CLI: &str = r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-cli, namespace: app}
spec:
  selector: {matchLabels: {app: srv}}
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/app/sa/cli]}}]}]
"#;

/// `app/no-admin`: srv refuses requests for `/admin` (an HTTP rule).
const NO_ADMIN: &str = r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: app}
spec:
  selector: {matchLabels: {app: srv}}
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}]}]
"#;

/// `app/deny-source`: srv refuses connections from the address of [`CLI`] (an L4 rule that
/// applies to plaintext too).
fn deny_source(net: Net) -> String {
    format!(
        r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-source, namespace: app}}
spec:
  selector: {{matchLabels: {{app: srv}}}}
  action: DENY
  rules: [{{from: [{{source: {{ipBlocks: ["{}/32"]}}}}]}}]
"#,
        net.ip(CLI)
    )
}

/// What a row's provocation leaves for the checks.
struct Provoked {
    /// The mesh, still running (its metrics are read after).
    mesh: Mesh,
    /// What the client saw.
    seen: Seen,
    /// The client's address: the `src.addr` of the record to find.
    src: SocketAddr,
    /// Apps that must outlive the checks.
    _apps: Vec<App>,
}

type Provoking = Pin<Box<dyn Future<Output = Provoked>>>;

/// What the client must see.
#[derive(Clone, Copy, Debug)]
enum Client {
    /// The HBONE `CONNECT` answered with this status.
    ConnectStatus(u16),
    /// An HTTP response with this status.
    Http(u16),
    /// A reset (after any data).
    Reset,
    /// Closed without data: reset or a clean end.
    Closed,
    /// The TLS handshake ended by the server's alert.
    TlsAlert,
}

impl Client {
    fn admits(self, seen: &Seen) -> bool {
        match (self, seen) {
            (Client::ConnectStatus(want), Seen::ConnectStatus(got)) => want == *got,
            (Client::Http(want), Seen::Http(got)) => want == *got,
            (Client::Reset, Seen::Reset { .. }) => true,
            (Client::Closed, Seen::Reset { bytes: 0 } | Seen::Eof { bytes: 0 }) => true,
            (Client::TlsAlert, Seen::TlsAlert(_)) => true,
            _ => false,
        }
    }
}

/// Which access record the row is about.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// The connection's record (`connection complete` / `connection failed`).
    Connection,
    /// The request's line (`request complete`), with its status and `response_code_details`;
    /// the connection it came on must also have its one clean connection record.
    Request { code: u16, details: &'static str },
}

/// How the metrics must have counted the connection, at its reporter.
#[derive(Clone, Copy, Debug)]
enum Counted {
    /// Never opened: `istio_tcp_connections_failed_total` once, with the row's flags.
    Failed,
    /// Opened once, then closed once with these flags.
    OpenedClosed { closed_flags: &'static str },
}

struct Row {
    name: &'static str,
    provoke: fn(Net) -> Provoking,
    client: Client,
    kind: Kind,
    /// `inbound` (reported by the destination) or `outbound` (by the source).
    direction: &'static str,
    response_flags: &'static str,
    /// `None`: the record must have no `fault`.
    fault: Option<&'static str>,
    /// A substring of `error`; `None`: the record must have no `error`.
    error: Option<&'static str>,
    /// The deciding policy; `None`: the record must name none.
    authz_policy: Option<&'static str>,
    counted: Counted,
}

fn rows() -> Vec<Row> {
    vec![
        // ---- Inbound HBONE (the test client speaks as the sidecar of app/cli would) ----
        Row {
            name: "hbone: TLS client without a certificate",
            provoke: hbone_tls_without_certificate,
            client: Client::TlsAlert,
            kind: Kind::Connection,
            direction: "inbound",
            response_flags: "TLS_FAILURE",
            fault: Some("downstream"),
            error: Some("no certificates"),
            authz_policy: None,
            counted: Counted::Failed,
        },
        Row {
            name: "hbone: TLS client certificate from another CA",
            provoke: hbone_tls_foreign_certificate,
            client: Client::TlsAlert,
            kind: Kind::Connection,
            direction: "inbound",
            response_flags: "TLS_FAILURE",
            fault: Some("downstream"),
            error: Some("invalid peer certificate"),
            authz_policy: None,
            counted: Counted::Failed,
        },
        Row {
            name: "hbone: CONNECT authority is not ip:port",
            provoke: hbone_connect_bad_authority,
            client: Client::ConnectStatus(400),
            kind: Kind::Connection,
            direction: "inbound",
            response_flags: "CONNECT",
            fault: Some("downstream"),
            error: Some("bad CONNECT authority"),
            authz_policy: None,
            counted: Counted::Failed,
        },
        Row {
            name: "hbone: CONNECT to a port the workload does not serve",
            provoke: hbone_connect_unserved_port,
            client: Client::ConnectStatus(400),
            kind: Kind::Connection,
            direction: "inbound",
            response_flags: "CONNECT",
            fault: Some("downstream"),
            error: Some("is not served by this workload"),
            authz_policy: None,
            counted: Counted::Failed,
        },
        Row {
            name: "hbone: CONNECT to an address that is not the workload's",
            provoke: hbone_connect_other_address,
            client: Client::ConnectStatus(400),
            kind: Kind::Connection,
            direction: "inbound",
            response_flags: "CONNECT",
            fault: Some("downstream"),
            error: Some("is not served by this workload"),
            authz_policy: None,
            counted: Counted::Failed,
        },
        Row {
            name: "hbone: L4 AuthorizationPolicy DENY",
            provoke: hbone_denied_by_policy,
            client: Client::ConnectStatus(401),
            kind: Kind::Connection,
            direction: "inbound",
            response_flags: "DENY",
            fault: Some("policy"),
            error: Some("denied"),
            authz_policy: Some("app/deny-cli"),
            counted: Counted::Failed,
        },
        Row {
            name: "hbone: mTLS to a PeerAuthentication DISABLE port",
            provoke: hbone_to_disable_port,
            client: Client::ConnectStatus(401),
            kind: Kind::Connection,
            direction: "inbound",
            response_flags: "DENY",
            fault: Some("policy"),
            error: Some("peer_authentication_disable"),
            authz_policy: Some("app/srv-ports"),
            counted: Counted::Failed,
        },
        Row {
            name: "hbone: app not listening",
            provoke: hbone_app_not_listening,
            client: Client::ConnectStatus(503),
            kind: Kind::Connection,
            direction: "inbound",
            response_flags: "CONNECT",
            fault: Some("upstream"),
            error: Some("connect to app"),
            authz_policy: None,
            counted: Counted::Failed,
        },
        Row {
            name: "hbone: open connection closed by a policy change",
            provoke: hbone_closed_by_policy_change,
            client: Client::Reset,
            kind: Kind::Connection,
            direction: "inbound",
            response_flags: "DENY",
            fault: Some("policy"),
            error: Some("closed by policy change"),
            authz_policy: Some("app/deny-cli"),
            counted: Counted::OpenedClosed {
                closed_flags: "DENY",
            },
        },
        Row {
            name: "hbone: app resets mid-stream",
            provoke: hbone_app_resets_mid_stream,
            client: Client::Reset,
            kind: Kind::Connection,
            direction: "inbound",
            response_flags: "-",
            fault: Some("upstream"),
            error: Some("reset"),
            authz_policy: None,
            counted: Counted::OpenedClosed { closed_flags: "-" },
        },
        // ---- Inbound plaintext ----
        Row {
            name: "plaintext: to a STRICT port",
            provoke: plaintext_to_strict_port,
            client: Client::Reset,
            kind: Kind::Connection,
            direction: "inbound",
            response_flags: "DENY",
            fault: Some("policy"),
            error: Some("peer_authentication_strict"),
            authz_policy: Some("app/srv-ports"),
            counted: Counted::Failed,
        },
        Row {
            name: "plaintext: L4 AuthorizationPolicy DENY",
            provoke: plaintext_denied_by_policy,
            client: Client::Reset,
            kind: Kind::Connection,
            direction: "inbound",
            response_flags: "DENY",
            fault: Some("policy"),
            error: Some("rbac_access_denied"),
            authz_policy: Some("app/deny-source"),
            counted: Counted::Failed,
        },
        Row {
            name: "plaintext: app not listening",
            provoke: plaintext_app_not_listening,
            client: Client::Closed,
            kind: Kind::Connection,
            direction: "inbound",
            response_flags: "CONNECT",
            fault: Some("upstream"),
            error: Some("connect to app"),
            authz_policy: None,
            counted: Counted::Failed,
        },
        // ---- Outbound (app/cli's app dials its egress listener) ----
        Row {
            name: "outbound: service without endpoints",
            provoke: outbound_service_without_endpoints,
            client: Client::Closed,
            kind: Kind::Connection,
            direction: "outbound",
            response_flags: "UH",
            fault: Some("upstream"),
            error: Some("has no endpoints"),
            authz_policy: None,
            counted: Counted::Failed,
        },
        Row {
            name: "outbound: destination denies (HBONE 401)",
            provoke: outbound_destination_denies,
            client: Client::Reset,
            kind: Kind::Connection,
            direction: "outbound",
            response_flags: "DENY",
            fault: Some("policy"),
            error: Some("HBONE 401"),
            authz_policy: None,
            counted: Counted::Failed,
        },
        Row {
            name: "outbound: destination proves another identity",
            provoke: outbound_destination_identity_mismatch,
            client: Client::Reset,
            kind: Kind::Connection,
            direction: "outbound",
            response_flags: "TLS_FAILURE",
            fault: Some("upstream"),
            error: Some("TLS handshake"),
            authz_policy: None,
            counted: Counted::Failed,
        },
        Row {
            name: "outbound: destination sidecar not listening",
            provoke: outbound_destination_not_listening,
            client: Client::Reset,
            kind: Kind::Connection,
            direction: "outbound",
            response_flags: "CONNECT",
            fault: Some("upstream"),
            error: Some("connect to"),
            authz_policy: None,
            counted: Counted::Failed,
        },
        Row {
            name: "outbound: egress listener no longer configured",
            provoke: outbound_listener_removed,
            client: Client::Closed,
            kind: Kind::Connection,
            direction: "outbound",
            response_flags: "NR",
            fault: Some("internal"),
            error: Some("no egress listener"),
            authz_policy: None,
            counted: Counted::Failed,
        },
        // ---- HTTP port (requests through an HBONE tunnel) ----
        Row {
            name: "http: request denied by RBAC",
            provoke: http_denied_by_rbac,
            client: Client::Http(403),
            kind: Kind::Request {
                code: 403,
                details: "rbac_access_denied_matched_policy[ns[app]-policy[no-admin]-rule[0]]",
            },
            direction: "inbound",
            response_flags: "-",
            fault: None,
            error: None,
            authz_policy: Some("app/no-admin"),
            counted: Counted::OpenedClosed { closed_flags: "-" },
        },
        Row {
            name: "http: malformed request refused at admission",
            provoke: http_malformed_request,
            client: Client::Http(400),
            kind: Kind::Request {
                code: 400,
                details: "underscore_in_header_name",
            },
            direction: "inbound",
            response_flags: "-",
            fault: None,
            error: None,
            authz_policy: None,
            counted: Counted::OpenedClosed { closed_flags: "-" },
        },
        Row {
            name: "http: token that is not a JWT",
            provoke: http_bad_token,
            client: Client::Http(401),
            kind: Kind::Request {
                code: 401,
                details:
                    "jwt_authn_access_denied{Jwt_is_not_in_the_form_of_Header.Payload.Signature}",
            },
            direction: "inbound",
            response_flags: "-",
            fault: None,
            error: None,
            authz_policy: None,
            counted: Counted::OpenedClosed { closed_flags: "-" },
        },
        Row {
            name: "http: app down",
            provoke: http_app_down,
            client: Client::Http(503),
            kind: Kind::Request {
                code: 503,
                details: "upstream_reset_before_response_started",
            },
            direction: "inbound",
            response_flags: "UF",
            fault: None,
            error: None,
            authz_policy: None,
            counted: Counted::OpenedClosed { closed_flags: "-" },
        },
    ]
}

// ---- Provocations ----

/// A mesh of [`yaml`] with `extra`, the sidecar of srv running.
async fn srv_mesh(net: Net, extra: &str) -> Mesh {
    let mut mesh = Mesh::from_yaml(&yaml(net, extra));
    mesh.start(SRV_KEY).await;
    mesh
}

/// An HBONE connection to srv from a peer proving app/cli.
async fn cli_peer(mesh: &Mesh, net: Net) -> (ward_hbone::HboneClient, SocketAddr) {
    Peer::mesh(mesh, net.ip(CLI), CLI_ID, SRV_ID)
        .hbone(net.ip(SRV))
        .await
}

/// What a peer saw of a TLS handshake to srv's HBONE port, and its address.
async fn refused_handshake(peer: Peer, net: Net) -> (Seen, SocketAddr) {
    let (tls, src) = peer.tls(net.addr(SRV, HBONE_PORT)).await;
    let seen = match tls {
        // TLS 1.3: the client finishes first; the server's refusal arrives as an alert on read.
        Ok(mut stream) => peer::read_to_end(&mut stream).await,
        Err(e) => Seen::from_error(&e, 0),
    };
    (seen, src)
}

fn hbone_tls_without_certificate(net: Net) -> Provoking {
    Box::pin(async move {
        let mesh = srv_mesh(net, "").await;
        let (seen, src) = refused_handshake(Peer::unverified(net.ip(CLI), None), net).await;
        Provoked {
            mesh,
            seen,
            src,
            _apps: vec![],
        }
    })
}

fn hbone_tls_foreign_certificate(net: Net) -> Provoking {
    Box::pin(async move {
        let mesh = srv_mesh(net, "").await;
        // Another mesh's CA, same trust domain and identity: only the chain is wrong.
        let foreign = Mesh::from_yaml(&yaml(net, "")).workload_cert(CLI_ID);
        let peer = Peer::unverified(net.ip(CLI), Some(&foreign));
        let (seen, src) = refused_handshake(peer, net).await;
        Provoked {
            mesh,
            seen,
            src,
            _apps: vec![],
        }
    })
}

/// Open a tunnel from app/cli to `authority` on srv; what the client saw.
async fn connect_from_cli(net: Net, extra: &str, authority: String, apps: Vec<App>) -> Provoked {
    let mesh = srv_mesh(net, extra).await;
    let (client, src) = cli_peer(&mesh, net).await;
    let seen = match peer::connect(&client, &authority).await {
        Ok(_) => Seen::Tunnel,
        Err(seen) => seen,
    };
    Provoked {
        mesh,
        seen,
        src,
        _apps: apps,
    }
}

fn hbone_connect_bad_authority(net: Net) -> Provoking {
    Box::pin(connect_from_cli(
        net,
        "",
        "srv.app.svc.cluster.local:9000".to_owned(),
        vec![],
    ))
}

fn hbone_connect_unserved_port(net: Net) -> Provoking {
    Box::pin(connect_from_cli(
        net,
        "",
        net.addr(SRV, 9999).to_string(),
        vec![],
    ))
}

fn hbone_connect_other_address(net: Net) -> Provoking {
    Box::pin(async move {
        let echo = apps::echo(net.addr(SRV, 19000)).await;
        connect_from_cli(net, "", net.addr(STRANGER, 9000).to_string(), vec![echo]).await
    })
}

fn hbone_denied_by_policy(net: Net) -> Provoking {
    Box::pin(async move {
        let echo = apps::echo(net.addr(SRV, 19000)).await;
        connect_from_cli(net, DENY_CLI, net.addr(SRV, 9000).to_string(), vec![echo]).await
    })
}

fn hbone_to_disable_port(net: Net) -> Provoking {
    Box::pin(async move {
        let echo = apps::echo(net.addr(SRV, 19003)).await;
        connect_from_cli(net, "", net.addr(SRV, 9003).to_string(), vec![echo]).await
    })
}

fn hbone_app_not_listening(net: Net) -> Provoking {
    Box::pin(connect_from_cli(
        net,
        "",
        net.addr(SRV, 9001).to_string(),
        vec![],
    ))
}

fn hbone_closed_by_policy_change(net: Net) -> Provoking {
    Box::pin(async move {
        let echo = apps::echo(net.addr(SRV, 19000)).await;
        let mesh = srv_mesh(net, "").await;
        let (client, src) = cli_peer(&mesh, net).await;
        let seen = match peer::connect(&client, &net.addr(SRV, 9000).to_string()).await {
            Err(seen) => seen,
            Ok(mut tunnel) => match peer::round_trip(&mut tunnel, b"ping", 4).await {
                Err(seen) => seen,
                Ok(_) => {
                    // The connection is open and carries data; now a policy denies it.
                    mesh.reload_yaml(SRV_KEY, &yaml(net, DENY_CLI));
                    peer::read_to_end(&mut tunnel).await
                }
            },
        };
        Provoked {
            mesh,
            seen,
            src,
            _apps: vec![echo],
        }
    })
}

fn hbone_app_resets_mid_stream(net: Net) -> Provoking {
    Box::pin(async move {
        let app = apps::reset_after_reply(net.addr(SRV, 19002), b"partial").await;
        let mesh = srv_mesh(net, "").await;
        let (client, src) = cli_peer(&mesh, net).await;
        let seen = match peer::connect(&client, &net.addr(SRV, 9002).to_string()).await {
            Err(seen) => seen,
            Ok(mut tunnel) => match tunnel.write_all(b"hello").await {
                Err(e) => Seen::from_error(&e, 0),
                Ok(()) => peer::read_to_end(&mut tunnel).await,
            },
        };
        Provoked {
            mesh,
            seen,
            src,
            _apps: vec![app],
        }
    })
}

/// A plaintext connection from the address of app/cli to srv's `port`; what it saw.
async fn plaintext_to(net: Net, extra: &str, port: u16, apps: Vec<App>) -> Provoked {
    let mesh = srv_mesh(net, extra).await;
    let mut tcp = peer::dial(net.ip(CLI), net.addr(SRV, port)).await;
    let src = tcp.local_addr().unwrap();
    let seen = peer::read_to_end(&mut tcp).await;
    Provoked {
        mesh,
        seen,
        src,
        _apps: apps,
    }
}

fn plaintext_to_strict_port(net: Net) -> Provoking {
    Box::pin(async move {
        let echo = apps::echo(net.addr(SRV, 19000)).await;
        plaintext_to(net, "", 9000, vec![echo]).await
    })
}

fn plaintext_denied_by_policy(net: Net) -> Provoking {
    Box::pin(async move { plaintext_to(net, &deny_source(net), 9001, vec![]).await })
}

fn plaintext_app_not_listening(net: Net) -> Provoking {
    Box::pin(plaintext_to(net, "", 9001, vec![]))
}

/// The app of app/cli dials its egress listener on `port`; what it saw.
async fn dial_egress(mesh: Mesh, net: Net, port: u16, apps: Vec<App>) -> Provoked {
    let mut tcp = peer::dial(net.ip(CLI_APP), net.addr(CLI, port)).await;
    let src = tcp.local_addr().unwrap();
    let seen = peer::read_to_end(&mut tcp).await;
    Provoked {
        mesh,
        seen,
        src,
        _apps: apps,
    }
}

fn outbound_service_without_endpoints(net: Net) -> Provoking {
    Box::pin(async move {
        let mut mesh = Mesh::from_yaml(&yaml(net, ""));
        mesh.start(CLI_KEY).await;
        dial_egress(mesh, net, 9100, vec![]).await
    })
}

fn outbound_destination_denies(net: Net) -> Provoking {
    Box::pin(async move {
        let echo = apps::echo(net.addr(SRV, 19000)).await;
        let mut mesh = srv_mesh(net, DENY_CLI).await;
        mesh.start(CLI_KEY).await;
        dial_egress(mesh, net, 9000, vec![echo]).await
    })
}

fn outbound_destination_identity_mismatch(net: Net) -> Provoking {
    Box::pin(async move {
        let echo = apps::echo(net.addr(SRV, 19000)).await;
        let mut mesh = srv_mesh(net, "").await;
        // app/cli expects another identity at srv's address than srv's certificate proves.
        let mut config = mesh.config(CLI_KEY);
        for listener in &mut config.outbound {
            for endpoint in &mut listener.endpoints {
                endpoint.identity = Some("spiffe://cluster.local/ns/app/sa/impostor".to_owned());
            }
        }
        mesh.start_with(CLI_KEY, config).await;
        dial_egress(mesh, net, 9000, vec![echo]).await
    })
}

fn outbound_destination_not_listening(net: Net) -> Provoking {
    Box::pin(async move {
        // srv's sidecar never starts: nothing listens on its HBONE port.
        let mut mesh = Mesh::from_yaml(&yaml(net, ""));
        mesh.start(CLI_KEY).await;
        dial_egress(mesh, net, 9000, vec![]).await
    })
}

fn outbound_listener_removed(net: Net) -> Provoking {
    Box::pin(async move {
        let mut mesh = Mesh::from_yaml(&yaml(net, ""));
        mesh.start(CLI_KEY).await;
        // The new config has no egress listener; with the sidecar paused its listener is still
        // open, so the next connection lands in the gap before the listener closes.
        mesh.pause(CLI_KEY);
        let mut config = mesh.config(CLI_KEY);
        config.outbound.clear();
        mesh.reload(CLI_KEY, config);
        let provoked = dial_egress(mesh, net, 9000, vec![]).await;
        provoked.mesh.resume(CLI_KEY);
        provoked
    })
}

/// One HTTP/1.1 request to srv's `port` through a tunnel from app/cli.
async fn http_request(net: Net, extra: &str, port: u16, request: &'static str) -> Provoked {
    let app = apps::http_ok(net.addr(SRV, 19080)).await;
    let mesh = srv_mesh(net, extra).await;
    let (client, src) = cli_peer(&mesh, net).await;
    let seen = match peer::connect(&client, &net.addr(SRV, port).to_string()).await {
        Err(seen) => seen,
        Ok(mut tunnel) => peer::http_exchange(&mut tunnel, request).await,
    };
    Provoked {
        mesh,
        seen,
        src,
        _apps: vec![app],
    }
}

fn http_denied_by_rbac(net: Net) -> Provoking {
    Box::pin(http_request(
        net,
        NO_ADMIN,
        9080,
        "GET /admin HTTP/1.1\r\nHost: srv.app.svc.cluster.local\r\nConnection: close\r\n\r\n",
    ))
}

fn http_malformed_request(net: Net) -> Provoking {
    Box::pin(http_request(
        net,
        "",
        9080,
        "GET / HTTP/1.1\r\nHost: srv.app.svc.cluster.local\r\nx_user: admin\r\nConnection: close\r\n\r\n",
    ))
}

/// `app/jwt`: srv verifies tokens of one issuer, with an inline Ed25519 key set (the public
/// key of RFC 8037 appendix A).
const JWT_RULES: &str = r#"---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: app}
spec:
  selector: {matchLabels: {app: srv}}
  jwtRules:
  - issuer: https://idp.example
    jwks: '{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}'
"#;

fn http_bad_token(net: Net) -> Provoking {
    Box::pin(http_request(
        net,
        JWT_RULES,
        9080,
        "GET / HTTP/1.1\r\nHost: srv.app.svc.cluster.local\r\nAuthorization: Bearer not-a-jwt\r\nConnection: close\r\n\r\n",
    ))
}

fn http_app_down(net: Net) -> Provoking {
    Box::pin(http_request(
        net,
        "",
        9081,
        "GET / HTTP/1.1\r\nHost: srv.app.svc.cluster.local\r\nConnection: close\r\n\r\n",
    ))
}

// ---- Checks ----

/// Problems of one row, each naming the row, the field, what was expected and what came.
struct Problems<'a> {
    row: &'a str,
    found: Vec<String>,
}

impl Problems<'_> {
    fn add(&mut self, what: &str, expected: impl std::fmt::Display, got: impl std::fmt::Display) {
        self.found.push(format!(
            "[{}] {what}: expected {expected}, got {got}",
            self.row
        ));
    }

    fn field(&mut self, record: &Record, name: &str, expected: Option<&str>) {
        let got = record.get(name);
        if got != expected {
            self.add(&format!("field `{name}`"), show(expected), show(got));
        }
    }

    fn field_contains(&mut self, record: &Record, name: &str, expected: Option<&str>) {
        let got = record.get(name);
        let ok = match (expected, got) {
            (Some(want), Some(got)) => got.contains(want),
            (None, None) => true,
            _ => false,
        };
        if !ok {
            let expected = expected.map(|e| format!("containing {e:?}"));
            self.add(
                &format!("field `{name}`"),
                expected.as_deref().unwrap_or("absent"),
                show(got),
            );
        }
    }

    fn duration(&mut self, record: &Record) {
        let got = record.get("duration_ms");
        if !got
            .and_then(|d| d.parse::<f64>().ok())
            .is_some_and(|d| d > 0.0)
        {
            self.add(
                "field `duration_ms`",
                "> 0 (a measured duration)",
                show(got),
            );
        }
    }

    fn count(&mut self, what: String, expected: f64, got: f64) {
        if got != expected {
            self.add(&what, expected, got);
        }
    }
}

fn show(v: Option<&str>) -> String {
    v.map(|v| format!("{v:?}"))
        .unwrap_or_else(|| "absent".to_owned())
}

/// The records of the connection from `src` in `direction`, of the row's kind.
fn select<'a>(direction: &'a str, src: SocketAddr, request: bool) -> impl Fn(&Record) -> bool + 'a {
    let src = src.to_string();
    move |r: &Record| {
        r.get("direction") == Some(direction)
            && r.get("src.addr") == Some(src.as_str())
            && if request {
                r.message == "request complete"
            } else {
                r.is_connection()
            }
    }
}

async fn check(row: &Row, provoked: &Provoked, log: &AccessLog) -> Vec<String> {
    let mut p = Problems {
        row: row.name,
        found: Vec::new(),
    };
    if !row.client.admits(&provoked.seen) {
        p.add("client saw", format!("{:?}", row.client), &provoked.seen);
    }
    let is_request = matches!(row.kind, Kind::Request { .. });
    let records = log
        .wait_for(
            WAIT,
            SETTLE,
            select(row.direction, provoked.src, is_request),
        )
        .await;
    match records.as_slice() {
        [record] => check_record(row, record, &mut p),
        other => p.add(
            &format!(
                "{} access records from {}",
                if is_request { "request" } else { "connection" },
                provoked.src
            ),
            1,
            format!("{}: {}", other.len(), list(other)),
        ),
    }
    if is_request {
        // The connection the request came on: one record, clean, when it closes.
        let conns = log
            .wait_for(WAIT, SETTLE, select(row.direction, provoked.src, false))
            .await;
        match conns.as_slice() {
            [conn] => {
                p.field(conn, "response_flags", Some("-"));
                p.field(conn, "error", None);
                p.duration(conn);
            }
            other => p.add(
                &format!("connection records from {}", provoked.src),
                1,
                format!("{}: {}", other.len(), list(other)),
            ),
        }
    }
    check_metrics(row, &provoked.mesh, &mut p);
    p.found
}

fn list(records: &[Record]) -> String {
    records
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

fn check_record(row: &Row, record: &Record, p: &mut Problems<'_>) {
    p.field(record, "response_flags", Some(row.response_flags));
    p.field(record, "fault", row.fault);
    p.field_contains(record, "error", row.error);
    p.field(record, "authz.policy", row.authz_policy);
    p.duration(record);
    if let Kind::Request { code, details } = row.kind {
        p.field(record, "response_code", Some(code.to_string().as_str()));
        p.field(record, "response_code_details", Some(details));
    }
}

fn check_metrics(row: &Row, mesh: &Mesh, p: &mut Problems<'_>) {
    let metrics = mesh.metrics();
    let reporter = if row.direction == "inbound" {
        "destination"
    } else {
        "source"
    };
    let by = [("reporter", reporter)];
    let total = |name: &str| metrics.sum(name, &by);
    let flagged = |name: &str, flags: &str| {
        metrics.sum(name, &[("reporter", reporter), ("response_flags", flags)])
    };
    let (failed, opened, closed) = (
        "istio_tcp_connections_failed_total",
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
    );
    let before = p.found.len();
    let label = |name: &str, flags: Option<&str>| match flags {
        Some(f) => format!("{name}{{reporter={reporter:?},response_flags={f:?}}}"),
        None => format!("{name}{{reporter={reporter:?}}}"),
    };
    match row.counted {
        Counted::Failed => {
            let flags = row.response_flags;
            p.count(label(failed, Some(flags)), 1.0, flagged(failed, flags));
            p.count(label(failed, None), 1.0, total(failed));
            p.count(label(opened, None), 0.0, total(opened));
            p.count(label(closed, None), 0.0, total(closed));
        }
        Counted::OpenedClosed { closed_flags } => {
            p.count(label(opened, None), 1.0, total(opened));
            p.count(
                label(closed, Some(closed_flags)),
                1.0,
                flagged(closed, closed_flags),
            );
            p.count(label(closed, None), 1.0, total(closed));
            p.count(label(failed, None), 0.0, total(failed));
        }
    }
    if p.found.len() > before {
        let series: Vec<String> = [failed, opened, closed]
            .iter()
            .flat_map(|name| metrics.select(name, &by))
            .map(|s| s.to_string())
            .collect();
        p.found.push(format!(
            "[{}]   the {reporter} series: {}",
            row.name,
            if series.is_empty() {
                "none".to_owned()
            } else {
                series.join("; ")
            }
        ));
    }
}

/// Rows start at block 90, twelve per block.
const FIRST_BLOCK: u8 = 90;

#[tokio::test]
async fn every_refusal_has_one_record_and_one_count() {
    let log = AccessLog::capture();
    let rows = rows();
    let mut problems = Vec::new();
    // Each row runs as its own task, so that a panic in a provocation fails that row only.
    let local = tokio::task::LocalSet::new();
    for (i, row) in rows.iter().enumerate() {
        let net = Net::row(FIRST_BLOCK, i);
        let provoke = row.provoke;
        let provoking = local.spawn_local(async move { provoke(net).await });
        let provoked = local
            .run_until(async { tokio::time::timeout(4 * WAIT, provoking).await })
            .await;
        match provoked {
            Err(_) => problems.push(format!("[{}] provocation did not end", row.name)),
            Ok(Err(e)) => problems.push(format!("[{}] provocation failed: {e}", row.name)),
            Ok(Ok(provoked)) => problems.extend(check(row, &provoked, &log).await),
        }
    }
    let failed_rows = rows
        .iter()
        .filter(|r| {
            problems
                .iter()
                .any(|p| p.starts_with(&format!("[{}]", r.name)))
        })
        .count();
    assert!(
        problems.is_empty(),
        "{failed_rows} of {} rows failed:\n{}",
        rows.len(),
        problems.join("\n")
    );
}

/// The control row: an allowed connection through both sidecars is one record on each side and
/// counts as opened and closed, never as failed.
#[tokio::test]
async fn an_allowed_connection_is_one_record_per_side_and_opened_then_closed() {
    let log = AccessLog::capture();
    let net = Net::new(99, 1);
    let _echo = apps::echo(net.addr(SRV, 19000)).await;
    let mut mesh = Mesh::from_yaml(&yaml(net, ""));
    mesh.start(SRV_KEY).await;
    mesh.start(CLI_KEY).await;
    let mut tcp = peer::dial(net.ip(CLI_APP), net.addr(CLI, 9000)).await;
    let src = tcp.local_addr().unwrap();
    let echoed = peer::round_trip(&mut tcp, b"hello", 5).await;
    assert_eq!(echoed.as_deref(), Ok(&b"hello"[..]));
    drop(tcp);

    let outbound = log
        .wait_for(WAIT, SETTLE, select("outbound", src, false))
        .await;
    assert_eq!(outbound.len(), 1, "outbound records: {}", list(&outbound));
    let out = &outbound[0];
    assert_eq!(out.message, "connection complete", "{out}");
    assert_eq!(out.get("response_flags"), Some("-"), "{out}");
    assert_eq!(out.get("dst.identity"), Some(SRV_ID), "{out}");
    assert_eq!(out.get("bytes_sent"), Some("5"), "{out}");
    assert_eq!(out.get("error"), None, "{out}");

    // The inbound side's source is app/cli's pooled HBONE connection.
    let inbound = log
        .wait_for(WAIT, SETTLE, |r| {
            r.get("direction") == Some("inbound") && r.is_connection()
        })
        .await;
    assert_eq!(inbound.len(), 1, "inbound records: {}", list(&inbound));
    let inb = &inbound[0];
    assert_eq!(inb.get("src.identity"), Some(CLI_ID), "{inb}");
    assert_eq!(inb.get("authz.decision"), Some("allow"), "{inb}");
    assert_eq!(inb.get("tls.version"), Some("TLSv1.3"), "{inb}");
    assert_eq!(inb.get("error"), None, "{inb}");

    let metrics = mesh.metrics();
    for reporter in ["source", "destination"] {
        let by = [("reporter", reporter)];
        for (name, want) in [
            ("istio_tcp_connections_opened_total", 1.0),
            ("istio_tcp_connections_closed_total", 1.0),
            ("istio_tcp_connections_failed_total", 0.0),
        ] {
            assert_eq!(
                metrics.sum(name, &by),
                want,
                "{name}{{reporter={reporter:?}}}:\n{}",
                metrics.text
            );
        }
    }
}
