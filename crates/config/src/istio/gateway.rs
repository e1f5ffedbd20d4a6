//! Gateway (istio/api `networking/v1alpha3/gateway.proto`; v1 and v1beta1 share the schema):
//! the ports, protocols, hosts and TLS settings a gateway proxy at the edge of the mesh
//! serves. Ward accepts it without enforcing it (WARD0102); the spec is decoded field for field
//! and checked with the rules of Istio's validation that are cheap to apply (istio/istio
//! `pkg/config/validation`, `ValidateGateway`).
//!
//! [`ServerTlsSettings`] is also the Sidecar ingress listeners' `tls`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::checks::{self, at, invalid};
use crate::diag::Finding;
use crate::meta::check_labels;
use crate::snapshot::Protocol;
use crate::yaml::push_index;

/// The prefix of a Unix domain socket address in `bind`.
const UNIX_PREFIX: &str = "unix://";

/// `spec` of a Gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewaySpec {
    /// What the gateway serves (at least one).
    pub servers: Option<Vec<Server>>,
    /// Labels of the gateway proxies that apply this configuration.
    pub selector: Option<BTreeMap<String, String>>,
}

/// One port the gateway serves, with its hosts and TLS settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    /// The port (required).
    pub port: Option<GatewayPort>,
    /// The listen address: an IP, or `unix://` and a socket path.
    pub bind: Option<String>,
    /// The hosts served (required): `namespace/dnsName` or `dnsName`, wildcards allowed.
    pub hosts: Option<Vec<String>>,
    /// TLS settings.
    pub tls: Option<ServerTlsSettings>,
    /// Where to forward traffic (`127.0.0.1:PORT`, `unix://...`), for sidecar-style gateways.
    pub default_endpoint: Option<String>,
    /// The server's name, for monitoring.
    pub name: Option<String>,
}

/// A gateway port (istio/api gateway.proto `Port`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayPort {
    /// The port number (required; 0 for a Unix socket `bind`).
    pub number: Option<u32>,
    /// The protocol (required): HTTP, HTTPS, GRPC, GRPC-WEB, HTTP2, MONGO, TCP or TLS.
    pub protocol: Option<String>,
    /// The port's name (required), unique among the gateway's servers.
    pub name: Option<String>,
    /// Deprecated, and refused by Istio on gateways.
    pub target_port: Option<u32>,
}

/// TLS settings of a server (istio/api `ServerTLSSettings`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTlsSettings {
    /// Redirect plaintext HTTP to HTTPS.
    pub https_redirect: Option<bool>,
    /// How TLS is handled.
    pub mode: Option<ServerTlsMode>,
    /// Server certificate file.
    pub server_certificate: Option<String>,
    /// Private key file.
    pub private_key: Option<String>,
    /// CA bundle file to verify clients.
    pub ca_certificates: Option<String>,
    /// Certificate revocation list file.
    pub ca_crl: Option<String>,
    /// Secret holding the certificate, key and CA.
    pub credential_name: Option<String>,
    /// Several secrets (e.g. an RSA and an ECDSA certificate).
    pub credential_names: Option<Vec<String>>,
    /// Secret holding only the CA to verify clients.
    pub ca_cert_credential_name: Option<String>,
    /// Several certificate files (e.g. an RSA and an ECDSA certificate).
    pub tls_certificates: Option<Vec<TlsCertificate>>,
    /// Accepted client identities.
    pub subject_alt_names: Option<Vec<String>>,
    /// Accepted client certificate SPKI hashes (base64).
    pub verify_certificate_spki: Option<Vec<String>>,
    /// Accepted client certificate hashes (hex).
    pub verify_certificate_hash: Option<Vec<String>>,
    /// Minimum TLS version.
    pub min_protocol_version: Option<TlsProtocol>,
    /// Maximum TLS version.
    pub max_protocol_version: Option<TlsProtocol>,
    /// Cipher suites (OpenSSL names).
    pub cipher_suites: Option<Vec<String>>,
    /// Skip verifying client certificates.
    pub insecure_skip_verify: Option<bool>,
}

/// `ServerTLSSettings.TLSmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    /// Forward TLS untouched, routed by SNI.
    Passthrough,
    /// Terminate TLS.
    Simple,
    /// Terminate TLS and require a client certificate.
    Mutual,
    /// Forward TLS untouched, routed by SNI to the mesh service it names.
    AutoPassthrough,
    /// Terminate Istio mTLS.
    IstioMutual,
    /// Terminate TLS; verify a client certificate when one is sent.
    OptionalMutual,
}

/// `ServerTLSSettings.TLSProtocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TlsProtocol {
    /// Envoy's default.
    #[serde(rename = "TLS_AUTO")]
    TlsAuto,
    /// TLS 1.0.
    #[serde(rename = "TLSV1_0")]
    TlsV1_0,
    /// TLS 1.1.
    #[serde(rename = "TLSV1_1")]
    TlsV1_1,
    /// TLS 1.2.
    #[serde(rename = "TLSV1_2")]
    TlsV1_2,
    /// TLS 1.3.
    #[serde(rename = "TLSV1_3")]
    TlsV1_3,
}

/// One certificate of `ServerTLSSettings.tlsCertificates`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsCertificate {
    /// Server certificate file.
    pub server_certificate: Option<String>,
    /// Private key file.
    pub private_key: Option<String>,
    /// CA bundle file.
    pub ca_certificates: Option<String>,
}

impl GatewaySpec {
    /// Problems Istio's validation would reject.
    pub(crate) fn validate(&self) -> Vec<Finding> {
        let mut out = Vec::new();
        let servers = self.servers.as_deref().unwrap_or_default();
        if servers.is_empty() {
            invalid(&mut out, "spec", "a Gateway needs at least one server");
        }
        let mut port_names = BTreeSet::new();
        for (i, server) in servers.iter().enumerate() {
            let path = push_index("spec.servers", i);
            server.validate(&path, &mut out);
            let name = server.port.as_ref().and_then(|p| p.name.as_deref());
            if let Some(name) = name.filter(|n| !n.is_empty()) {
                if !port_names.insert(name) {
                    invalid(
                        &mut out,
                        &at(&at(&path, "port"), "name"),
                        format!("port name `{name}` is used by two servers"),
                    );
                }
            }
        }
        if let Some(selector) = &self.selector {
            out.extend(check_labels(selector, "spec.selector"));
        }
        out
    }
}

impl Server {
    /// istio/istio validateServer, validateServerPort and validateServerBind.
    fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        checks::require_items(out, path, "hosts", self.hosts.as_deref());
        for (i, host) in self.hosts.iter().flatten().enumerate() {
            if host.is_empty() {
                invalid(
                    out,
                    &push_index(&at(path, "hosts"), i),
                    "a host must not be empty",
                );
            }
        }
        let unix_socket = self
            .bind
            .as_deref()
            .and_then(|b| b.strip_prefix(UNIX_PREFIX));
        if let Some(bind) = self.bind.as_deref().filter(|b| !b.is_empty()) {
            check_bind(out, &at(path, "bind"), bind, unix_socket);
        }
        let Some(port) = &self.port else {
            invalid(out, path, "missing required field `port`");
            return;
        };
        let port_path = at(path, "port");
        let number = port.number.unwrap_or(0);
        match unix_socket {
            Some(_) if number != 0 => invalid(
                out,
                &at(&port_path, "number"),
                "the port number must be 0 with a Unix socket `bind`",
            ),
            Some(_) => {}
            None => checks::port(out, &at(&port_path, "number"), number),
        }
        checks::require_text(out, &port_path, "name", port.name.as_deref());
        if port.target_port.is_some_and(|p| p != 0) {
            invalid(
                out,
                &at(&port_path, "targetPort"),
                "`targetPort` has no effect on Gateways (Istio rejects it)",
            );
        }
        match port.protocol.as_deref().filter(|p| !p.is_empty()) {
            None => invalid(out, &port_path, "missing required field `protocol`"),
            Some(protocol) => match Protocol::parse(protocol) {
                Err(err) => invalid(out, &at(&port_path, "protocol"), err.to_string()),
                Ok(Protocol::Https) if self.tls.is_none() => {
                    invalid(out, path, "an HTTPS server needs `tls` settings")
                }
                Ok(Protocol::Tls) if self.tls.is_none() => {
                    invalid(out, path, "a TLS server needs `tls` settings")
                }
                Ok(_) => {}
            },
        }
        if let Some(tls) = &self.tls {
            tls.validate(&at(path, "tls"), out);
        }
    }
}

/// A server `bind`: an IP address, or `unix://` and an absolute path (or `@` and an abstract
/// socket name).
fn check_bind(out: &mut Vec<Finding>, path: &str, bind: &str, unix_socket: Option<&str>) {
    let ok = match unix_socket {
        Some(socket) => {
            socket.starts_with('@') || (socket.starts_with('/') && !socket.ends_with('/'))
        }
        None => bind.parse::<IpAddr>().is_ok(),
    };
    if !ok {
        invalid(
            out,
            path,
            format!("`{bind}` is neither an IP address nor `unix://` and an absolute socket path"),
        );
    }
}

impl ServerTlsSettings {
    /// istio/istio validateTLSOptions (its errors; its warnings are left out).
    fn validate(&self, path: &str, out: &mut Vec<Finding>) {
        let mode = self.mode.unwrap_or(ServerTlsMode::Passthrough);
        if mode == ServerTlsMode::IstioMutual {
            for (present, field) in [
                (set(&self.server_certificate), "serverCertificate"),
                (set(&self.private_key), "privateKey"),
                (set(&self.ca_certificates), "caCertificates"),
                (listed(&self.tls_certificates), "tlsCertificates"),
                (set(&self.credential_name), "credentialName"),
                (listed(&self.credential_names), "credentialNames"),
            ] {
                if present {
                    invalid(
                        out,
                        &at(path, field),
                        format!("ISTIO_MUTUAL uses the workload's Istio certificate: `{field}` cannot be set"),
                    );
                }
            }
            return;
        }
        let sources = [
            set(&self.server_certificate) && set(&self.private_key),
            set(&self.credential_name),
            listed(&self.credential_names),
            listed(&self.tls_certificates),
        ];
        if sources.iter().filter(|s| **s).count() > 1 {
            invalid(
                out,
                path,
                "only one of `credentialName`, `credentialNames`, `serverCertificate`/`privateKey` \
                 and `tlsCertificates` may be set",
            );
        }
        let terminates = matches!(
            mode,
            ServerTlsMode::Simple | ServerTlsMode::Mutual | ServerTlsMode::OptionalMutual
        );
        let remote = set(&self.credential_name) || listed(&self.credential_names);
        if terminates && !remote {
            self.validate_files(path, mode, out);
        }
        if set(&self.ca_crl) {
            if set(&self.credential_name) {
                invalid(
                    out,
                    &at(path, "caCrl"),
                    "`caCrl` cannot be set with `credentialName` (put the CRL in the credential)",
                );
            }
            if mode == ServerTlsMode::Simple {
                invalid(
                    out,
                    &at(path, "caCrl"),
                    "`caCrl` is not supported with SIMPLE TLS",
                );
            }
        }
    }

    /// Certificate files a terminating server needs when no credential names them.
    fn validate_files(&self, path: &str, mode: ServerTlsMode, out: &mut Vec<Finding>) {
        let mutual = mode != ServerTlsMode::Simple;
        // Istio's messages say "SIMPLE TLS" and "MUTUAL TLS" (OPTIONAL_MUTUAL included).
        let kind = if mutual { "MUTUAL" } else { "SIMPLE" };
        if mutual && !set(&self.ca_certificates) {
            invalid(
                out,
                path,
                "MUTUAL TLS needs `caCertificates` (or `credentialName`)",
            );
        }
        let certificates: Vec<(String, &Option<String>, &Option<String>)> =
            match self.tls_certificates.as_deref() {
                Some(list) if !list.is_empty() => list
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        (
                            push_index(&at(path, "tlsCertificates"), i),
                            &c.server_certificate,
                            &c.private_key,
                        )
                    })
                    .collect(),
                _ => vec![(path.to_owned(), &self.server_certificate, &self.private_key)],
            };
        for (cert_path, certificate, key) in certificates {
            for (value, field) in [(certificate, "serverCertificate"), (key, "privateKey")] {
                if !set(value) {
                    invalid(
                        out,
                        &cert_path,
                        format!("{kind} TLS needs `{field}` (or `credentialName`)"),
                    );
                }
            }
        }
    }
}

/// Whether an optional string is set and not empty.
fn set(value: &Option<String>) -> bool {
    value.as_deref().is_some_and(|s| !s.is_empty())
}

/// Whether an optional list has items.
fn listed<T>(value: &Option<Vec<T>>) -> bool {
    value.as_ref().is_some_and(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::super::tests::findings_of;
    use super::*;
    use crate::diag::code;

    #[test]
    fn gateway_validation() {
        let cases: Vec<(&str, Vec<&str>)> = vec![
            ("servers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: [\"*\"]\n", vec![]),
            ("selector: {istio: ingressgateway}\n", vec!["spec"]),
            (
                "servers:\n- hosts: []\n- port: {number: 0, protocol: HTTPS}\n  hosts: [\"\"]\n  bind: localhost\n- port: {number: 8080, name: web, protocol: UDP, targetPort: 9090}\n  hosts: [a.example.com]\n- port: {number: 8081, name: web}\n  hosts: [b.example.com]\n",
                vec![
                    "spec.servers[0]",
                    "spec.servers[0]",
                    "spec.servers[1]",
                    "spec.servers[1].bind",
                    "spec.servers[1].hosts[0]",
                    "spec.servers[1].port",
                    "spec.servers[1].port.number",
                    "spec.servers[2].port.protocol",
                    "spec.servers[2].port.targetPort",
                    "spec.servers[3].port",
                    "spec.servers[3].port.name",
                ],
            ),
            (
                "servers:\n- port: {number: 0, name: uds, protocol: HTTP}\n  bind: unix:///var/run/gw.sock\n  hosts: [\"*\"]\n- port: {number: 80, name: uds2, protocol: HTTP}\n  bind: unix://relative\n  hosts: [\"*\"]\nselector: {\"bad key!\": x}\n",
                vec!["spec.servers[1].bind", "spec.servers[1].port.number", "spec.selector[\"bad key!\"]"],
            ),
            (
                "servers:\n- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: [\"*\"]\n  tls: {mode: SIMPLE, credentialName: c, serverCertificate: /c.pem, privateKey: /k.pem, caCrl: /crl.pem}\n- port: {number: 8443, name: mtls, protocol: HTTPS}\n  hosts: [\"*\"]\n  tls: {mode: MUTUAL, tlsCertificates: [{serverCertificate: /c.pem}]}\n- port: {number: 15443, name: tls, protocol: TLS}\n  hosts: [\"*\"]\n  tls: {mode: ISTIO_MUTUAL, credentialNames: [a]}\n",
                vec![
                    "spec.servers[0].tls",
                    "spec.servers[0].tls.caCrl",
                    "spec.servers[0].tls.caCrl",
                    "spec.servers[1].tls",
                    "spec.servers[1].tls.tlsCertificates[0]",
                    "spec.servers[2].tls.credentialNames",
                ],
            ),
            (
                "servers:\n- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: [ns/a.example.com]\n  tls: {mode: SIMPLE, credentialName: c, minProtocolVersion: TLSV1_2}\n- port: {number: 15443, name: tls, protocol: TLS}\n  hosts: [\"*.local\"]\n  tls: {mode: AUTO_PASSTHROUGH}\n",
                vec![],
            ),
        ];
        for (yaml, want) in cases {
            let got = findings_of(yaml, GatewaySpec::validate);
            let mut got: Vec<String> = got
                .into_iter()
                .inspect(|(_, c)| assert_eq!(*c, code::INVALID, "{yaml}"))
                .map(|(f, _)| f)
                .collect();
            got.sort();
            let mut want: Vec<String> = want.into_iter().map(str::to_owned).collect();
            want.sort();
            assert_eq!(got, want, "{yaml}");
        }
    }
}
