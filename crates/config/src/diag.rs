//! Diagnostics: what went wrong or looks wrong, and exactly where.
//!
//! Every problem Ward finds in a user's YAML becomes a [`Diagnostic`] naming the file, the line,
//! the object (`AuthorizationPolicy foo/deny-x`) and the field path
//! (`spec.rules[0].from[0].source.principals[1]`), because users fix YAML from this message.
//! The stable codes are listed in [`code`] and documented in `docs/analyze.md`.

use std::fmt;

/// How serious a diagnostic is. `Error` makes `ward up` refuse the config and `ward analyze`
/// exit non-zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The config is rejected.
    Error,
    /// The config is accepted but probably does not do what its author meant.
    Warning,
    /// Worth knowing; nothing is wrong.
    Info,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        })
    }
}

/// The stable diagnostic codes. Documented, with examples, in `docs/analyze.md`.
pub mod code {
    /// The file cannot be read, is not valid YAML, or a document is not a mapping.
    pub const PARSE: &str = "WARD0100";
    /// A field that the schema does not define (Ward rejects what Istio only warns about).
    pub const UNKNOWN_FIELD: &str = "WARD0101";
    /// An Istio kind this version of Ward does not enforce.
    pub const KIND_NOT_ENFORCED: &str = "WARD0102";
    /// A known field that Ward accepts but does not act on yet.
    pub const FIELD_NOT_ENFORCED: &str = "WARD0103";
    /// Two objects with the same kind, namespace and name.
    pub const DUPLICATE: &str = "WARD0104";
    /// A value of the wrong type or shape, or a required field that is missing.
    pub const INVALID: &str = "WARD0105";
    /// An apiVersion/kind pair that Ward does not know.
    pub const UNKNOWN_KIND: &str = "WARD0106";
    /// More than one document carries mesh settings.
    pub const MESH_SETTINGS_CONFLICT: &str = "WARD0107";
    /// An AuthorizationPolicy that does not compile.
    pub const POLICY_INVALID: &str = "WARD0108";
    /// A RequestAuthentication `jwtRules` entry Ward cannot use (refused issuer, jwksUri,
    /// inline jwks, header name or timeout; an issuer given twice).
    pub const JWT_RULE_INVALID: &str = "WARD0109";
    /// Two WorkloadEntries claim one address.
    pub const ADDRESS_CONFLICT: &str = "WARD0110";
    /// Several Sidecars select one workload at the same level.
    pub const SIDECAR_CONFLICT: &str = "WARD0111";
    /// Two listeners of one proxy collide on a socket address.
    pub const LISTENER_CONFLICT: &str = "WARD0112";
    /// A ServiceEntry endpoint Ward cannot connect to (not an IP address).
    pub const ENDPOINT_INVALID: &str = "WARD0113";
    /// Two RequestAuthentication rules with one issuer apply to one workload.
    pub const JWT_ISSUER_CONFLICT: &str = "WARD0114";
    /// A Kubernetes object from outside the Istio API (Service, Deployment, Namespace, ...)
    /// that Ward does not read (of a Namespace, only the labels, for `ward analyze`).
    pub const KUBERNETES_NOT_READ: &str = "WARD0115";
    /// A selector that matches no WorkloadEntry.
    pub const SELECTOR_MATCHES_NOTHING: &str = "WARD0201";
    /// An AuthorizationPolicy source that names no known workload, or a trust domain that is
    /// not the mesh's.
    pub const SOURCE_MATCHES_NOTHING: &str = "WARD0202";
    /// PERMISSIVE mTLS somewhere: plaintext is accepted without identity.
    pub const PERMISSIVE: &str = "WARD0203";
    /// Two mesh-wide PeerAuthentications.
    pub const MESH_PEER_AUTHN_CONFLICT: &str = "WARD0204";
    /// Several PeerAuthentications at one namespace or workload level.
    pub const PEER_AUTHN_SHADOWED: &str = "WARD0205";
    /// A selector PeerAuthentication in the root namespace (Istio ignores it).
    pub const ROOT_SELECTOR_PEER_AUTHN: &str = "WARD0206";
    /// `portLevelMtls` on a PeerAuthentication without a selector.
    pub const PORT_LEVEL_WITHOUT_SELECTOR: &str = "WARD0207";
    /// No PeerAuthentication at all.
    pub const NO_PEER_AUTHN: &str = "WARD0208";
    /// An AuthorizationPolicy with HTTP-only fields that applies to a TCP port.
    pub const HTTP_FIELDS_ON_TCP: &str = "WARD0209";
    /// The CUSTOM action, which Ward does not support (it denies).
    pub const CUSTOM_ACTION: &str = "WARD0210";
    /// A Sidecar egress host that matches no ServiceEntry, or an egress port that none of the
    /// matched services has.
    pub const EGRESS_HOST_UNMATCHED: &str = "WARD0211";
    /// A workload that no Sidecar configures, so its proxy serves no port.
    pub const NO_SIDECAR: &str = "WARD0212";
    /// DISABLE mTLS somewhere: plaintext only.
    pub const MTLS_DISABLED: &str = "WARD0213";
    /// Two proxies would bind the same local socket address on one host.
    pub const SHARED_BIND: &str = "WARD0214";
    /// An outbound listener whose service has no endpoints.
    pub const NO_ENDPOINTS: &str = "WARD0215";
    /// An in-mesh endpoint at a port its workload's Sidecar does not serve.
    pub const ENDPOINT_PORT_NOT_SERVED: &str = "WARD0216";
    /// JWT rules on a workload that no AuthorizationPolicy makes require a token, so requests
    /// without one pass.
    pub const JWT_NOT_REQUIRED: &str = "WARD0217";
    /// JWT keys fetched over plain http from a host that is not loopback.
    pub const JWKS_PLAIN_HTTP: &str = "WARD0218";
    /// A namespace-wide object (no selector) in a namespace that has no WorkloadEntry.
    pub const NAMESPACE_WITHOUT_WORKLOADS: &str = "WARD0219";
    /// A port in an AuthorizationPolicy rule that no workload the policy applies to serves.
    pub const PORT_NOT_SERVED: &str = "WARD0220";
    /// An exact path (or closed template) in DENY `paths` or ALLOW `notPaths`.
    pub const EXACT_DENY_PATH: &str = "WARD0221";
    /// A policy selector on the label of a Kubernetes Gateway's pods, without `targetRef(s)`
    /// (Istio's IST0166).
    pub const GATEWAY_SELECTOR: &str = "WARD0222";
    /// A Sidecar for workloads (or a namespace) in ambient mode, which Istio would ignore
    /// (Istio's IST0167).
    pub const SIDECAR_IN_AMBIENT: &str = "WARD0223";
    /// A Sidecar egress host whose namespace no object of the config is in.
    pub const EGRESS_NAMESPACE_UNKNOWN: &str = "WARD0224";
    /// A DestinationRule with `tls.mode: DISABLE` toward a workload port that is STRICT.
    pub const DR_DISABLE_TO_STRICT: &str = "WARD0225";
    /// An ALLOW rule every request of which a DENY rule refuses first.
    pub const ALLOW_SHADOWED: &str = "WARD0226";
    /// An ALLOW rule with no `from`, `to` or `when`: it allows everything.
    pub const ALLOW_EVERYTHING: &str = "WARD0227";
    /// A workload labelled as serving patient data with a port that accepts plaintext.
    pub const PHI_PLAINTEXT: &str = "WARD0228";
    /// An OpenShift Service Mesh 2 control plane with `dataPlane.mtls` false: PERMISSIVE.
    pub const OSSM_MTLS_FALSE: &str = "WARD0229";
    /// A DestinationRule SIMPLE/MUTUAL `tls` without `caCertificates` or `credentialName`: the
    /// server is verified against the OS bundle (Istio's IST0128 and IST0129).
    pub const ORIGINATION_OS_CA: &str = "WARD0250";
    /// A DestinationRule `credentialName` whose Secret is missing or lacks a needed key: every
    /// connection to the port is refused.
    pub const ORIGINATION_CREDENTIAL: &str = "WARD0251";

    /// The name of a code, for where Istio's analysis messages carry one next to the code
    /// (`type.name` of istio/api analysis/v1alpha1/message.proto): the constant's name in
    /// UpperCamelCase (`WARD0103` → `FieldNotEnforced`).
    pub fn name(code: &str) -> Option<&'static str> {
        Some(match code {
            PARSE => "Parse",
            UNKNOWN_FIELD => "UnknownField",
            KIND_NOT_ENFORCED => "KindNotEnforced",
            FIELD_NOT_ENFORCED => "FieldNotEnforced",
            DUPLICATE => "Duplicate",
            INVALID => "Invalid",
            UNKNOWN_KIND => "UnknownKind",
            MESH_SETTINGS_CONFLICT => "MeshSettingsConflict",
            POLICY_INVALID => "PolicyInvalid",
            JWT_RULE_INVALID => "JwtRuleInvalid",
            ADDRESS_CONFLICT => "AddressConflict",
            SIDECAR_CONFLICT => "SidecarConflict",
            LISTENER_CONFLICT => "ListenerConflict",
            ENDPOINT_INVALID => "EndpointInvalid",
            JWT_ISSUER_CONFLICT => "JwtIssuerConflict",
            KUBERNETES_NOT_READ => "KubernetesNotRead",
            SELECTOR_MATCHES_NOTHING => "SelectorMatchesNothing",
            SOURCE_MATCHES_NOTHING => "SourceMatchesNothing",
            PERMISSIVE => "Permissive",
            MESH_PEER_AUTHN_CONFLICT => "MeshPeerAuthnConflict",
            PEER_AUTHN_SHADOWED => "PeerAuthnShadowed",
            ROOT_SELECTOR_PEER_AUTHN => "RootSelectorPeerAuthn",
            PORT_LEVEL_WITHOUT_SELECTOR => "PortLevelWithoutSelector",
            NO_PEER_AUTHN => "NoPeerAuthn",
            HTTP_FIELDS_ON_TCP => "HttpFieldsOnTcp",
            CUSTOM_ACTION => "CustomAction",
            EGRESS_HOST_UNMATCHED => "EgressHostUnmatched",
            NO_SIDECAR => "NoSidecar",
            MTLS_DISABLED => "MtlsDisabled",
            SHARED_BIND => "SharedBind",
            NO_ENDPOINTS => "NoEndpoints",
            ENDPOINT_PORT_NOT_SERVED => "EndpointPortNotServed",
            JWT_NOT_REQUIRED => "JwtNotRequired",
            JWKS_PLAIN_HTTP => "JwksPlainHttp",
            NAMESPACE_WITHOUT_WORKLOADS => "NamespaceWithoutWorkloads",
            PORT_NOT_SERVED => "PortNotServed",
            EXACT_DENY_PATH => "ExactDenyPath",
            GATEWAY_SELECTOR => "GatewaySelector",
            SIDECAR_IN_AMBIENT => "SidecarInAmbient",
            EGRESS_NAMESPACE_UNKNOWN => "EgressNamespaceUnknown",
            DR_DISABLE_TO_STRICT => "DrDisableToStrict",
            ALLOW_SHADOWED => "AllowShadowed",
            ALLOW_EVERYTHING => "AllowEverything",
            PHI_PLAINTEXT => "PhiPlaintext",
            OSSM_MTLS_FALSE => "OssmMtlsFalse",
            ORIGINATION_OS_CA => "OriginationOsCa",
            ORIGINATION_CREDENTIAL => "OriginationCredential",
            _ => return None,
        })
    }
}

/// One finding, located as precisely as Ward can.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// How serious it is.
    pub severity: Severity,
    /// A stable code from [`code`], e.g. `WARD0101`.
    pub code: &'static str,
    /// The file, as the user named it; empty when the finding concerns no file.
    pub file: String,
    /// 1-based line in `file`.
    pub line: Option<usize>,
    /// The object, e.g. `AuthorizationPolicy foo/deny-x`.
    pub object: Option<String>,
    /// The field path, e.g. `spec.rules[0].from[0].source.principals[1]`.
    pub field: Option<String>,
    /// What is wrong, for a human.
    pub message: String,
}

impl Diagnostic {
    /// A diagnostic with no location yet.
    pub fn new(severity: Severity, code: &'static str, message: impl Into<String>) -> Self {
        Diagnostic {
            severity,
            code,
            file: String::new(),
            line: None,
            object: None,
            field: None,
            message: message.into(),
        }
    }

    /// An error with no location yet.
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, code, message)
    }

    /// A warning with no location yet.
    pub fn warning(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, code, message)
    }

    /// An info finding with no location yet.
    pub fn info(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Severity::Info, code, message)
    }

    /// Sets the file and line.
    pub fn at(mut self, file: impl Into<String>, line: Option<usize>) -> Self {
        self.file = file.into();
        self.line = line;
        self
    }

    /// Sets the object (`Kind namespace/name`).
    pub fn object(mut self, object: impl Into<String>) -> Self {
        self.object = Some(object.into());
        self
    }

    /// Sets the field path.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        let field = field.into();
        self.field = (!field.is_empty()).then_some(field);
        self
    }

    /// Whether this diagnostic rejects the config.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// `examples/x.yaml:12: error[WARD0101] AuthorizationPolicy foo/deny-x: spec.rules[0].from[0]: unknown field ...`
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.file.is_empty() {
            match self.line {
                Some(line) => write!(f, "{}:{line}: ", self.file)?,
                None => write!(f, "{}: ", self.file)?,
            }
        }
        write!(f, "{}[{}] ", self.severity, self.code)?;
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// A list of diagnostics; the error type of loading and translation. Holds the errors that
/// made the operation fail and any warnings found on the way.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(Diagnostic::is_error)
    }

    /// The errors only.
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter().filter(|d| d.is_error())
    }

    /// Orders by file, then line, keeping the discovery order for ties.
    pub(crate) fn sort(&mut self) {
        self.0
            .sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    }
}

/// One diagnostic per line.
impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// A problem found in one object, located by field path only; the loader adds the file, line
/// and object name (see `Resource::finding`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Finding {
    pub(crate) severity: Severity,
    pub(crate) code: &'static str,
    pub(crate) field: String,
    /// The exact line, when known (decode errors); otherwise the field's line is looked up.
    pub(crate) line: Option<usize>,
    pub(crate) message: String,
}

impl Finding {
    pub(crate) fn error(
        code: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Finding {
            severity: Severity::Error,
            code,
            field: field.into(),
            line: None,
            message: message.into(),
        }
    }

    pub(crate) fn warning(
        code: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Finding {
            severity: Severity::Warning,
            code,
            field: field.into(),
            line: None,
            message: message.into(),
        }
    }

    /// Places the finding on an exact line.
    pub(crate) fn on_line(mut self, line: usize) -> Self {
        self.line = Some(line);
        self
    }

    /// A known field Ward accepts but does not act on (WARD0103).
    pub(crate) fn not_enforced(field: impl Into<String>, why: &str) -> Self {
        let message = if why.is_empty() {
            "field not enforced yet by Ward: accepted and ignored".to_owned()
        } else {
            format!("field not enforced yet by Ward: {why}")
        };
        Finding::warning(code::FIELD_NOT_ENFORCED, field, message)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_documented_code_has_a_name() {
        let doc = include_str!("../../../docs/analyze.md");
        let codes: Vec<&str> = doc
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| {
                w.len() == 8 && w.starts_with("WARD") && w[4..].bytes().all(|b| b.is_ascii_digit())
            })
            .collect();
        assert!(codes.len() > 40, "{codes:?}");
        for c in codes {
            assert!(code::name(c).is_some(), "{c} has no name");
        }
        assert_eq!(
            code::name(code::FIELD_NOT_ENFORCED),
            Some("FieldNotEnforced")
        );
        assert_eq!(code::name("WARD9999"), None);
    }

    use super::*;

    #[test]
    fn display_shows_every_located_part() {
        let cases = [
            (
                Diagnostic::error(code::UNKNOWN_FIELD, "unknown field `sorce`, expected `source`")
                    .at("examples/x.yaml", Some(12))
                    .object("AuthorizationPolicy foo/deny-x")
                    .field("spec.rules[0].from[0]"),
                "examples/x.yaml:12: error[WARD0101] AuthorizationPolicy foo/deny-x: spec.rules[0].from[0]: unknown field `sorce`, expected `source`",
            ),
            (
                Diagnostic::warning(code::PERMISSIVE, "plaintext accepted").at("a.yaml", None),
                "a.yaml: warning[WARD0203] plaintext accepted",
            ),
            (
                Diagnostic::new(Severity::Info, code::NO_PEER_AUTHN, "no PA").field(""),
                "info[WARD0208] no PA",
            ),
        ];
        for (diag, want) in cases {
            assert_eq!(diag.to_string(), want);
        }
    }

    #[test]
    fn diagnostics_sort_by_file_then_line_and_print_one_per_line() {
        let mut all = Diagnostics(vec![
            Diagnostic::error(code::PARSE, "b9").at("b.yaml", Some(9)),
            Diagnostic::error(code::PARSE, "a3").at("a.yaml", Some(3)),
            Diagnostic::warning(code::PARSE, "a1").at("a.yaml", Some(1)),
        ]);
        all.sort();
        assert_eq!(
            all.to_string(),
            "a.yaml:1: warning[WARD0100] a1\na.yaml:3: error[WARD0100] a3\nb.yaml:9: error[WARD0100] b9"
        );
        assert!(all.has_errors());
        assert_eq!(all.errors().count(), 2);
        assert!(!Diagnostics(vec![Diagnostic::warning(code::PARSE, "w")]).has_errors());
    }
}
