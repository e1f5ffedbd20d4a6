//! TLS origination toward services outside the mesh: the DestinationRule `tls` that applies to
//! one client workload and one service port, and the Kubernetes Secrets `credentialName` names
//! (docs/egress-tls.md). Pure: the proxy reads the files and builds the TLS client
//! (`crates/proxy/src/originate.rs`).
//!
//! Which rule applies follows Istio's lookup (istio/istio `pilot/pkg/model/push_context.go`,
//! `destinationRule`): the rules of the client's namespace first, then those of the service's
//! namespace exported to the client, then those of the root namespace exported to the client;
//! within one namespace an exact host beats a wildcard, and a longer wildcard a shorter one. A
//! rule with a `workloadSelector` applies only to the workloads it selects, and before the
//! rules of its namespace without one. The port's `portLevelSettings[]` entry replaces the
//! rule's `trafficPolicy` (istio/api `networking/v1alpha3/destination_rule.proto`); a subset's
//! `trafficPolicy` overrides both for the requests routed to the subset
//! ([`subset_origination`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::diag::{code, Diagnostic, Severity};
use crate::istio::{ClientTlsMode, ClientTlsSettings, DestinationRuleSpec, TrafficPolicy};
use crate::load::{ConfigSet, Resource};
use crate::mesh::SourceRef;
use crate::yaml::{push_index, push_key};

/// Key material from a Secret, as PEM text. Its `Debug` never shows the bytes, so no log or
/// panic message can hold them; it is serialized as is (the config stream carries it to the
/// proxy over mTLS) and the admin `/config_dump` hides private keys ([`redact_keys`]).
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretPem(pub String);

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes, not shown>", self.0.len())
    }
}

/// A `v1` Secret from the config directory: its decoded entries, and where it is.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretObject {
    /// `data` (base64, decoded) and `stringData` entries, by key; `stringData` wins.
    pub data: BTreeMap<String, SecretPem>,
    /// `type`, e.g. `kubernetes.io/tls`.
    pub secret_type: Option<String>,
    /// Where the object starts.
    pub source: SourceRef,
}

/// Where one piece of key material comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Material {
    /// A PEM file the proxy reads (and reads again when it changes).
    File(String),
    /// An entry of a Secret, e.g. `Secret egress/client-cred key tls.crt`.
    Secret {
        /// The Secret and key, for logs.
        from: String,
        /// The PEM text.
        pem: SecretPem,
    },
}

impl Material {
    /// Where it comes from, for logs (never the key material).
    pub fn describe(&self) -> String {
        match self {
            Material::File(path) => format!("file {path}"),
            Material::Secret { from, .. } => from.clone(),
        }
    }
}

/// The TLS a proxy originates toward one service port (DestinationRule mode SIMPLE or MUTUAL).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsOrigination {
    /// `DestinationRule namespace/name`.
    pub rule: String,
    /// The path of the `tls` settings in the rule, e.g. `spec.trafficPolicy.tls`.
    pub field: String,
    /// MUTUAL: a client certificate is presented.
    pub mutual: bool,
    /// The SNI sent and, without `subjectAltNames`, the name the server certificate must hold:
    /// `sni`, else the service host.
    pub sni: String,
    /// Names the server certificate must hold one of (instead of `sni`).
    pub subject_alt_names: Vec<String>,
    /// Accept any server certificate (no CA and no name check).
    pub insecure_skip_verify: bool,
    /// The CA bundle; `None`: the operating system's bundle.
    pub ca: Option<Material>,
    /// The client certificate chain (MUTUAL).
    pub client_certificate: Option<Material>,
    /// The client private key (MUTUAL).
    pub private_key: Option<Material>,
    /// A CRL for the server's chain.
    pub crl: Option<Material>,
    /// Why the credential cannot be used (a Secret that is missing or lacks a key): the proxy
    /// refuses every connection to the port (fail closed) and `ward analyze` reports it.
    pub broken: Option<String>,
}

/// How well a rule fits a client and host: selected by a `workloadSelector`, then
/// [`host_specificity`].
type Rank = (bool, (bool, usize));

/// The DestinationRule `tls` that applies to `host`:`port` for a client in `client_namespace`
/// with `client_labels` (`None`: a view shared by every workload of the namespace, where rules
/// with a `workloadSelector` are left out), with the rule and the settings' field path.
pub fn applicable_tls<'a>(
    set: &'a ConfigSet,
    client_namespace: &str,
    client_labels: Option<&BTreeMap<String, String>>,
    service_namespace: &str,
    host: &str,
    port: u16,
) -> Option<(
    &'a Resource<DestinationRuleSpec>,
    String,
    &'a ClientTlsSettings,
)> {
    let root = set.mesh.root_namespace.as_str();
    let mut namespaces = vec![client_namespace];
    for ns in [service_namespace, root] {
        if !namespaces.contains(&ns) {
            namespaces.push(ns);
        }
    }
    for ns in namespaces {
        let mut best: Option<(&Resource<DestinationRuleSpec>, Rank)> = None;
        for dr in &set.destination_rules {
            if dr.meta.namespace != ns || !exported(dr, client_namespace) {
                continue;
            }
            let selected = match (&dr.spec.workload_selector, client_labels) {
                (None, _) => false,
                (Some(sel), Some(labels)) if ns == client_namespace => {
                    if !sel
                        .match_labels
                        .iter()
                        .all(|(k, v)| labels.get(k) == Some(v))
                    {
                        continue;
                    }
                    true
                }
                _ => continue,
            };
            let Some(rule_host) = dr.spec.host.as_deref() else {
                continue;
            };
            let Some(specificity) = host_specificity(rule_host, &dr.meta.namespace, host) else {
                continue;
            };
            let rank = (selected, specificity);
            if best.as_ref().is_none_or(|(_, r)| rank > *r) {
                best = Some((dr, rank));
            }
        }
        if let Some((dr, _)) = best {
            return tls_of(dr, port).map(|(field, tls)| (dr, field, tls));
        }
    }
    None
}

/// The rule's `tls` for `port`. A `portLevelSettings` entry for the port replaces the rule's
/// whole `trafficPolicy`, fields it leaves out included: such an entry without `tls` means no
/// `tls` (istio/api `destination_rule.proto`, `portLevelSettings`: "default values will be
/// applied to fields omitted in port-level traffic policies").
fn tls_of(dr: &Resource<DestinationRuleSpec>, port: u16) -> Option<(String, &ClientTlsSettings)> {
    policy_tls(dr.spec.traffic_policy.as_ref(), "spec.trafficPolicy", port).flatten()
}

/// What one `trafficPolicy` (at `at`) says about `port`'s `tls`: `None` when it says nothing
/// (no policy, no port entry and no `tls`), `Some(None)` when a port entry without `tls`
/// resets it, else the settings and their field path.
#[allow(clippy::option_option)]
fn policy_tls<'a>(
    policy: Option<&'a TrafficPolicy>,
    at: &str,
    port: u16,
) -> Option<Option<(String, &'a ClientTlsSettings)>> {
    let policy = policy?;
    for (i, level) in policy.port_level_settings.iter().flatten().enumerate() {
        if level.port.as_ref().and_then(|p| p.number) == Some(u32::from(port)) {
            let path = push_index(&format!("{at}.portLevelSettings"), i);
            return Some(level.tls.as_ref().map(|tls| (push_key(&path, "tls"), tls)));
        }
    }
    policy
        .tls
        .as_ref()
        .map(|tls| Some((format!("{at}.tls"), tls)))
}

/// The TLS the proxy originates toward subset `subset` of rule `dr` on `port`, when the
/// subset's own `trafficPolicy` decides it: its port's entry, else its `tls` (istio/istio
/// `pilot/pkg/networking/util`, `MergeSubsetTrafficPolicy`: a subset's fields override the
/// rule's, and a subset's port entry replaces them all). `None` when the subset leaves `tls` to
/// the rule; `Some(None)` when it turns origination off (DISABLE, ISTIO_MUTUAL, or a port entry
/// without `tls`).
#[allow(clippy::option_option)]
pub fn subset_origination(
    set: &ConfigSet,
    dr: &Resource<DestinationRuleSpec>,
    subset: usize,
    host: &str,
    port: u16,
) -> Option<Option<TlsOrigination>> {
    let s = dr.spec.subsets.as_ref()?.get(subset)?;
    let at = format!("spec.subsets[{subset}].trafficPolicy");
    let decided = policy_tls(s.traffic_policy.as_ref(), &at, port)?;
    Some(decided.and_then(|(field, tls)| origination_of(set, dr, field, tls, host)))
}
/// Whether the rule is exported to `namespace` (absent `exportTo`: everywhere).
fn exported(dr: &Resource<DestinationRuleSpec>, namespace: &str) -> bool {
    match dr.spec.export_to.as_deref() {
        None | Some([]) => true,
        Some(list) => list.iter().any(|e| match e.as_str() {
            "*" => true,
            "." => dr.meta.namespace == namespace,
            "~" => false,
            named => named == namespace,
        }),
    }
}

/// How closely a rule host names `service`: `None` when not at all; exact hosts rank above
/// every wildcard, longer wildcards above shorter ones. A short name is in the rule's namespace.
fn host_specificity(rule: &str, rule_namespace: &str, service: &str) -> Option<(bool, usize)> {
    let rule = if rule.contains('.') || rule.contains('*') {
        rule.to_ascii_lowercase()
    } else {
        format!("{rule}.{rule_namespace}.svc.cluster.local").to_ascii_lowercase()
    };
    let service = service.to_ascii_lowercase();
    match rule.strip_prefix('*') {
        Some(suffix) if service.ends_with(suffix) => Some((false, suffix.len())),
        Some(_) => None,
        None => (rule == service).then_some((true, rule.len())),
    }
}

/// The origination for `host`:`port` seen from a client (see [`applicable_tls`]); `None`
/// unless the rule says SIMPLE or MUTUAL.
pub fn origination(
    set: &ConfigSet,
    client_namespace: &str,
    client_labels: Option<&BTreeMap<String, String>>,
    service_namespace: &str,
    host: &str,
    port: u16,
) -> Option<TlsOrigination> {
    let (dr, field, tls) = applicable_tls(
        set,
        client_namespace,
        client_labels,
        service_namespace,
        host,
        port,
    )?;
    origination_of(set, dr, field, tls, host)
}

/// The origination `tls` (at `field` of `dr`) asks for toward `host`; `None` unless SIMPLE or
/// MUTUAL.
fn origination_of(
    set: &ConfigSet,
    dr: &Resource<DestinationRuleSpec>,
    field: String,
    tls: &ClientTlsSettings,
    host: &str,
) -> Option<TlsOrigination> {
    let mutual = match tls.mode.unwrap_or(ClientTlsMode::Disable) {
        ClientTlsMode::Simple => false,
        ClientTlsMode::Mutual => true,
        ClientTlsMode::Disable | ClientTlsMode::IstioMutual => return None,
    };
    let nonempty = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
    let mut out = TlsOrigination {
        rule: format!("DestinationRule {}", dr.key()),
        field: field.clone(),
        mutual,
        sni: nonempty(&tls.sni).unwrap_or_else(|| host.to_owned()),
        subject_alt_names: tls.subject_alt_names.clone().unwrap_or_default(),
        insecure_skip_verify: tls.insecure_skip_verify == Some(true),
        ca: nonempty(&tls.ca_certificates).map(Material::File),
        client_certificate: nonempty(&tls.client_certificate).map(Material::File),
        private_key: nonempty(&tls.private_key).map(Material::File),
        crl: nonempty(&tls.ca_crl).map(Material::File),
        broken: None,
    };
    if let Some(name) = nonempty(&tls.credential_name) {
        apply_secret(set, &dr.meta.namespace, &name, &field, &mut out);
    }
    Some(out)
}

/// Fill the material from the Secret `name` in `namespace` (Istio's two layouts: a TLS Secret
/// with `tls.crt`, `tls.key`, `ca.crt` (and `ca.crl`), or a generic one with `cert`, `key`,
/// `cacert` (and `crl`)); mark the origination broken when the Secret or a needed key is
/// missing.
fn apply_secret(
    set: &ConfigSet,
    namespace: &str,
    name: &str,
    field: &str,
    out: &mut TlsOrigination,
) {
    let Some(secret) = set.secrets.get(&format!("{namespace}/{name}")) else {
        out.broken = Some(format!(
            "{}: {field}.credentialName: Secret {namespace}/{name} is not in the configuration",
            out.rule
        ));
        return;
    };
    let pick = |keys: &[&str]| -> Option<Material> {
        keys.iter().find_map(|k| {
            secret.data.get(*k).map(|pem| Material::Secret {
                from: format!("Secret {namespace}/{name} key {k}"),
                pem: pem.clone(),
            })
        })
    };
    out.ca = pick(&["ca.crt", "cacert"]);
    out.crl = pick(&["ca.crl", "crl"]);
    if out.mutual {
        out.client_certificate = pick(&["tls.crt", "cert"]);
        out.private_key = pick(&["tls.key", "key"]);
        if out.client_certificate.is_none() || out.private_key.is_none() {
            out.broken = Some(format!(
                "{}: {field}.credentialName: Secret {namespace}/{name} has no client \
                 certificate and key (`tls.crt` and `tls.key`, or `cert` and `key`)",
                out.rule
            ));
        }
    }
}

/// `ward analyze`: WARD0250 for every SIMPLE/MUTUAL `tls` that leaves the CA to the OS bundle
/// (IST0128 at the rule's level, IST0129 at a port's), WARD0251 for every `credentialName`
/// that cannot give what its mode needs.
pub(crate) fn analyze(set: &ConfigSet, out: &mut Vec<Diagnostic>) {
    for dr in &set.destination_rules {
        let mut policies = vec![(
            "spec.trafficPolicy".to_owned(),
            dr.spec.traffic_policy.as_ref(),
        )];
        for (i, subset) in dr.spec.subsets.iter().flatten().enumerate() {
            policies.push((
                format!("spec.subsets[{i}].trafficPolicy"),
                subset.traffic_policy.as_ref(),
            ));
        }
        let mut settings: Vec<(String, &ClientTlsSettings)> = Vec::new();
        for (at, policy) in policies {
            let Some(policy) = policy else { continue };
            if let Some(tls) = &policy.tls {
                settings.push((format!("{at}.tls"), tls));
            }
            for (i, level) in policy.port_level_settings.iter().flatten().enumerate() {
                if let Some(tls) = &level.tls {
                    let path = push_index(&format!("{at}.portLevelSettings"), i);
                    settings.push((push_key(&path, "tls"), tls));
                }
            }
        }
        for (field, tls) in settings {
            let mutual = match tls.mode {
                Some(ClientTlsMode::Simple) => false,
                Some(ClientTlsMode::Mutual) => true,
                _ => continue,
            };
            let set_ = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
            if let Some(name) = tls.credential_name.as_deref().filter(|n| !n.is_empty()) {
                let mut o = TlsOrigination {
                    rule: format!("DestinationRule {}", dr.key()),
                    field: field.clone(),
                    mutual,
                    sni: String::new(),
                    subject_alt_names: Vec::new(),
                    insecure_skip_verify: false,
                    ca: None,
                    client_certificate: None,
                    private_key: None,
                    crl: None,
                    broken: None,
                };
                apply_secret(set, &dr.meta.namespace, name, &field, &mut o);
                if let Some(why) = o.broken {
                    out.push(dr.diagnostic(
                        Severity::Error,
                        code::ORIGINATION_CREDENTIAL,
                        &push_key(&field, "credentialName"),
                        format!(
                            "{why}: Ward's proxies refuse every connection this TLS applies to \
                             (503 on HTTP ports, a reset on TCP ports)"
                        ),
                    ));
                    continue;
                }
                if o.ca.is_some() {
                    continue;
                }
            }
            if set_(&tls.ca_certificates) || tls.insecure_skip_verify == Some(true) {
                continue;
            }
            let istio = if !field.contains("portLevelSettings") {
                "IST0128"
            } else {
                "IST0129"
            };
            out.push(dr.diagnostic(
                Severity::Warning,
                code::ORIGINATION_OS_CA,
                &field,
                format!(
                    "no `caCertificates` (nor a CA in the credential): the server certificate \
                     is verified against the operating system's CA bundle, which trusts every \
                     public CA (Istio's {istio}). Give the CA that issues the server's \
                     certificate"
                ),
            ));
        }
    }
}

/// Hide private keys in a JSON dump of proxy configs: every `privateKey` that is a Secret's
/// becomes `{"secret": {"from": ..., "pem": "<not shown>"}}`.
pub fn redact_keys(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "privateKey" {
                    if let Some(pem) = v.pointer_mut("/secret/pem") {
                        *pem = serde_json::Value::String("<not shown>".to_owned());
                    }
                } else {
                    redact_keys(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_keys),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::load_str;

    const BASE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 443}]
  endpoints: [{address: 127.0.0.1}]
";

    fn set_of(extra: &str) -> ConfigSet {
        let text = format!("{BASE}---\n{extra}");
        match load_str("t.yaml", &text) {
            Ok(set) => set,
            Err(e) => panic!("{e:?}"),
        }
    }

    fn orig(set: &ConfigSet, ns: &str) -> Option<TlsOrigination> {
        origination(set, ns, None, "shop", "api.example.com", 80)
    }

    #[test]
    fn port_level_tls_wins_and_sni_defaults_to_the_host() {
        let set = set_of(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: shop}
spec:
  host: api.example.com
  trafficPolicy:
    tls: {mode: DISABLE}
    portLevelSettings:
    - port: {number: 80}
      tls: {mode: SIMPLE, caCertificates: /etc/ca.pem, subjectAltNames: [api.internal]}
",
        );
        let o = orig(&set, "shop").expect("origination");
        assert_eq!(o.rule, "DestinationRule shop/api");
        assert_eq!(o.field, "spec.trafficPolicy.portLevelSettings[0].tls");
        assert_eq!(o.sni, "api.example.com");
        assert_eq!(o.ca, Some(Material::File("/etc/ca.pem".into())));
        assert_eq!(o.subject_alt_names, vec!["api.internal".to_owned()]);
        assert!(!o.mutual);
        assert_eq!(
            origination(&set, "shop", None, "shop", "api.example.com", 81),
            None
        );
    }

    #[test]
    fn client_namespace_rule_beats_service_and_root_namespace_rules() {
        let rule = |ns: &str, host: &str, sni: &str, export: &str| {
            format!(
                "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {sni}, namespace: {ns}}}\n\
                 spec:\n  host: \"{host}\"\n  exportTo: [{export}]\n  trafficPolicy:\n    tls: {{mode: SIMPLE, sni: {sni}}}\n---\n"
            )
        };
        let text = [
            rule("istio-system", "*.example.com", "root", "\"*\""),
            rule("shop", "api.example.com", "service", "\"*\""),
            rule("web", "*.com", "client-wild", "\".\""),
            rule("web", "api.example.com", "client", "\".\""),
        ]
        .concat();
        let set = set_of(&text);
        assert_eq!(orig(&set, "web").map(|o| o.sni), Some("client".into()));
        assert_eq!(orig(&set, "other").map(|o| o.sni), Some("service".into()));
        let set = set_of(&rule("istio-system", "*.example.com", "root", "\"*\""));
        assert_eq!(orig(&set, "web").map(|o| o.sni), Some("root".into()));
        // Exported nowhere else: only its own namespace sees it.
        let set = set_of(&rule("shop", "api.example.com", "service", "\".\""));
        assert_eq!(orig(&set, "web"), None);
        assert!(orig(&set, "shop").is_some());
    }

    #[test]
    fn credential_name_reads_both_secret_layouts_and_breaks_when_missing() {
        let dr = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: shop}
spec:
  host: api.example.com
  trafficPolicy:
    tls: {mode: MUTUAL, credentialName: client-cred}
---
";
        let tls_secret = "apiVersion: v1
kind: Secret
metadata: {name: client-cred, namespace: shop}
type: kubernetes.io/tls
data:
  tls.crt: Q0VSVA==
  tls.key: S0VZ
stringData:
  ca.crt: CA
";
        let set = set_of(&format!("{dr}{tls_secret}"));
        let o = orig(&set, "shop").expect("origination");
        assert_eq!(o.broken, None);
        let pem = |m: &Option<Material>| match m {
            Some(Material::Secret { pem, .. }) => pem.0.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(pem(&o.client_certificate), "CERT");
        assert_eq!(pem(&o.private_key), "KEY");
        assert_eq!(pem(&o.ca), "CA");
        assert!(!format!("{o:?}").contains("KEY\""), "{o:?}");

        let generic =
            "apiVersion: v1\nkind: Secret\nmetadata: {name: client-cred, namespace: shop}\n\
                       stringData: {cert: C, key: K, cacert: A}\n";
        let o = orig(&set_of(&format!("{dr}{generic}")), "shop").expect("origination");
        assert_eq!(pem(&o.client_certificate), "C");
        assert_eq!(pem(&o.ca), "A");

        let o = orig(&set_of(dr), "shop").expect("origination");
        let why = o.broken.expect("broken");
        assert!(why.contains("DestinationRule shop/api"), "{why}");
        assert!(
            why.contains("spec.trafficPolicy.tls.credentialName"),
            "{why}"
        );

        let mut dump = serde_json::to_value(orig(&set, "shop")).expect("json");
        redact_keys(&mut dump);
        let text = dump.to_string();
        assert!(!text.contains("\"KEY\""), "{text}");
        assert!(text.contains("\"CERT\""), "{text}");
    }

    #[test]
    fn a_port_entry_without_tls_resets_it_and_subsets_override_the_rule() {
        let set = set_of(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: shop}
spec:
  host: api.example.com
  trafficPolicy:
    tls: {mode: SIMPLE, sni: rule}
    portLevelSettings:
    - port: {number: 80}
      loadBalancer: {simple: RANDOM}
  subsets:
  - name: inherits
  - name: plain
    trafficPolicy: {tls: {mode: DISABLE}}
  - name: own
    trafficPolicy: {tls: {mode: SIMPLE, sni: own}}
  - name: per-port
    trafficPolicy:
      tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem}
      portLevelSettings:
      - port: {number: 80}
        loadBalancer: {simple: RANDOM}
",
        );
        // Port 80's entry has no `tls`: none, though the rule has one; port 81 has the rule's.
        assert_eq!(orig(&set, "shop"), None);
        let o = origination(&set, "shop", None, "shop", "api.example.com", 81).expect("rule's");
        assert_eq!(
            (o.sni.as_str(), o.field.as_str()),
            ("rule", "spec.trafficPolicy.tls")
        );

        let dr = &set.destination_rules[0];
        let sub = |i: usize, port: u16| subset_origination(&set, dr, i, "api.example.com", port);
        assert_eq!(sub(0, 80), None, "no policy: the rule decides");
        assert_eq!(sub(1, 80), Some(None), "DISABLE turns it off");
        let own = sub(2, 80).flatten().expect("own tls");
        assert_eq!(own.sni, "own");
        assert_eq!(own.field, "spec.subsets[2].trafficPolicy.tls");
        assert_eq!(sub(3, 80), Some(None), "its port entry has no tls");
        let mutual = sub(3, 81).flatten().expect("subset tls on 81");
        assert!(mutual.mutual);
        assert_eq!(mutual.sni, "api.example.com");
        assert_eq!(sub(9, 80), None, "no such subset");
    }
}
