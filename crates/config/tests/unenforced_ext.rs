//! Kinds Ward accepts without enforcing them (WARD0102) still have their specs checked: Telemetry,
//! WasmPlugin, ProxyConfig, the Sail operator kinds next to `Istio`, and OpenShift Service Mesh 2's
//! `maistra.io` kinds. A realistic spec loads with only the WARD0102 warning in every served
//! apiVersion, every field it writes is a field Ward knows (renaming any of them is a WARD0101
//! error on its line), and what Istio or the CRDs reject is a WARD0105 error.
//!
//! The specs are written for these tests; those that follow an istio.io example give its URL.

#![allow(clippy::unwrap_used)] // tests

use ward_config::{code, load_str, Diagnostic};

/// A realistic object, with `{API}` where its apiVersion goes.
struct Realistic {
    api_versions: &'static [&'static str],
    yaml: &'static str,
    /// Keys in the spec that are map keys (label names, tag names ...), not fields.
    map_keys: &'static [&'static str],
    /// Fields whose whole subtree is free-form (Helm values, `pluginConfig` ...).
    free_form: &'static [&'static str],
}

const TELEMETRY: &[&str] = &["telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1"];
const WASM: &[&str] = &["extensions.istio.io/v1alpha1"];
const PROXY_CONFIG: &[&str] = &["networking.istio.io/v1beta1"];
const SAIL: &[&str] = &["sailoperator.io/v1", "sailoperator.io/v1alpha1"];
const SAIL_V1: &[&str] = &["sailoperator.io/v1"];
const SAIL_V1ALPHA1: &[&str] = &["sailoperator.io/v1alpha1"];
/// The Maistra member kinds have no `v2` (maistra/istio-operator `pkg/apis/maistra/v2`).
const MAISTRA_MEMBERS: &[&str] = &["maistra.io/v1"];

const REALISTIC: &[Realistic] = &[
    // After the examples of https://istio.io/latest/docs/reference/config/telemetry/ (tracing,
    // metrics, access logging), merged into one object with every field.
    Realistic {
        api_versions: TELEMETRY,
        yaml: "apiVersion: {API}
kind: Telemetry
metadata:
  name: mesh-default
  namespace: istio-system
spec:
  tracing:
  - match:
      mode: CLIENT
    providers:
    - name: zipkin
    randomSamplingPercentage: 10.00
    disableSpanReporting: false
    useRequestIdForTraceSampling: true
    enableIstioTags: true
    disableContextPropagation: false
    customTags:
      my_new_foo_tag:
        literal:
          value: foo
      pod:
        environment:
          name: POD_NAME
          defaultValue: unknown
      request_id:
        header:
          name: x-request-id
          defaultValue: none
      sni:
        formatter:
          value: \"%REQUESTED_SERVER_NAME%\"
  metrics:
  - providers:
    - name: prometheus
    reportingInterval: 10s
    overrides:
    - match:
        metric: REQUEST_COUNT
        mode: SERVER
      disabled: false
      tagOverrides:
        request_host:
          value: request.host
        response_code:
          operation: REMOVE
    - match:
        customMetric: my_metric
        mode: CLIENT_AND_SERVER
      disabled: true
  accessLogging:
  - match:
      mode: SERVER
    providers:
    - name: envoy
    disabled: false
    filter:
      expression: response.code >= 400
",
        map_keys: &[
            "my_new_foo_tag",
            "pod",
            "request_id",
            "sni",
            "request_host",
            "response_code",
        ],
        free_form: &[],
    },
    Realistic {
        api_versions: TELEMETRY,
        yaml: "apiVersion: {API}
kind: Telemetry
metadata:
  name: foo-tracing
  namespace: bar
spec:
  selector:
    matchLabels:
      app: foo
  tracing:
  - disableSpanReporting: true
",
        map_keys: &["app"],
        free_form: &[],
    },
    Realistic {
        api_versions: TELEMETRY,
        yaml: "apiVersion: {API}
kind: Telemetry
metadata:
  name: waypoint-logs
  namespace: shop
spec:
  targetRefs:
  - group: gateway.networking.k8s.io
    kind: Gateway
    name: waypoint
  - group: \"\"
    kind: Service
    name: shop
  accessLogging:
  - providers:
    - name: envoy
",
        map_keys: &[],
        free_form: &[],
    },
    Realistic {
        api_versions: TELEMETRY,
        yaml: "apiVersion: {API}
kind: Telemetry
metadata:
  name: gateway-metrics
  namespace: shop
spec:
  targetRef:
    group: gateway.networking.k8s.io
    kind: Gateway
    name: edge
    namespace: \"\"
  metrics:
  - overrides:
    - disabled: true
",
        map_keys: &[],
        free_form: &[],
    },
    // After the openid-connect example of
    // https://istio.io/latest/docs/reference/config/proxy_extensions/wasm-plugin/, with every
    // field.
    Realistic {
        api_versions: WASM,
        yaml: "apiVersion: {API}
kind: WasmPlugin
metadata:
  name: openid-connect
  namespace: istio-ingress
spec:
  selector:
    matchLabels:
      istio: ingressgateway
  url: oci://private-registry:5000/openid-connect/openid:latest
  sha256: 9a06d7b7b3ae4e2fbd8a6e5f1b1e7a1f6d0c8c2f4b5a6e7d8c9b0a1f2e3d4c5b
  imagePullPolicy: IfNotPresent
  imagePullSecret: private-registry-pull-secret
  verificationKey: key
  pluginName: openid_connect
  phase: AUTHN
  priority: 1000
  failStrategy: FAIL_OPEN
  type: HTTP
  pluginConfig:
    openid_server: authn
    openid_realm: ingress
    scopes: [openid, profile]
    limits:
      requests: 10
  vmConfig:
    env:
    - name: POD_NAME
      valueFrom: HOST
    - name: TRUST_DOMAIN
      valueFrom: INLINE
      value: cluster.local
  match:
  - mode: SERVER
    ports:
    - number: 80
    - number: 8080
  - mode: CLIENT
",
        map_keys: &["istio"],
        free_form: &["pluginConfig"],
    },
    Realistic {
        api_versions: WASM,
        yaml: "apiVersion: {API}
kind: WasmPlugin
metadata:
  name: header-check
  namespace: shop
spec:
  targetRefs:
  - kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
  url: file:///opt/filters/header_check.wasm
",
        map_keys: &[],
        free_form: &[],
    },
    // After the example of https://istio.io/latest/docs/reference/config/networking/proxy-config/,
    // with every field.
    Realistic {
        api_versions: PROXY_CONFIG,
        yaml: "apiVersion: {API}
kind: ProxyConfig
metadata:
  name: per-workload-proxyconfig
  namespace: example
spec:
  selector:
    matchLabels:
      app: ratings
  concurrency: 0
  environmentVariables:
    ISTIO_META_DNS_CAPTURE: \"true\"
  image:
    imageType: debug
",
        map_keys: &["app", "ISTIO_META_DNS_CAPTURE"],
        free_form: &[],
    },
    // Sail operator kinds, with every top-level field of istio-ecosystem/sail-operator
    // `api/v1/*_types.go` (and `api/v1alpha1/ztunnel_types.go`).
    Realistic {
        api_versions: SAIL,
        yaml: "apiVersion: {API}
kind: IstioCNI
metadata:
  name: default
spec:
  version: v1.26.0
  profile: openshift
  namespace: istio-cni
  values:
    cni:
      logLevel: info
      ambient:
        enabled: true
",
        map_keys: &[],
        free_form: &["values"],
    },
    Realistic {
        api_versions: SAIL,
        yaml: "apiVersion: {API}
kind: IstioRevision
metadata:
  name: default
spec:
  version: v1.26.0
  namespace: istio-system
  values:
    global:
      istioNamespace: istio-system
    meshConfig:
      trustDomain: cluster.local
",
        map_keys: &[],
        free_form: &["values"],
    },
    Realistic {
        api_versions: SAIL,
        yaml: "apiVersion: {API}
kind: IstioRevision
metadata:
  name: canary
spec:
  version: v1.27.0
  namespace: istio-system
  values:
    revision: canary
    global:
      istioNamespace: istio-system
",
        map_keys: &[],
        free_form: &["values"],
    },
    Realistic {
        api_versions: SAIL,
        yaml: "apiVersion: {API}
kind: IstioRevisionTag
metadata:
  name: default
spec:
  targetRef:
    kind: Istio
    name: default
",
        map_keys: &[],
        free_form: &[],
    },
    Realistic {
        api_versions: SAIL_V1,
        yaml: "apiVersion: {API}
kind: ZTunnel
metadata:
  name: default
spec:
  version: v1.26.0
  namespace: ztunnel
  targetRef:
    kind: IstioRevision
    name: default
  values:
    ztunnel:
      logLevel: info
",
        map_keys: &[],
        free_form: &["values"],
    },
    Realistic {
        api_versions: SAIL_V1ALPHA1,
        yaml: "apiVersion: {API}
kind: ZTunnel
metadata:
  name: default
spec:
  version: v1.24.0
  profile: ambient
  namespace: ztunnel
  values:
    ztunnel:
      logLevel: info
",
        map_keys: &[],
        free_form: &["values"],
    },
    // Every top-level field of maistra/istio-operator `pkg/apis/maistra/v2` ControlPlaneSpec,
    // with sections as https://docs.openshift.com/container-platform/latest/service_mesh/v2x/ossm-reference-smcp.html
    // describes them.
    Realistic {
        api_versions: &["maistra.io/v2"],
        yaml: "apiVersion: {API}
kind: ServiceMeshControlPlane
metadata:
  name: basic
  namespace: istio-system
spec:
  version: v2.6
  mode: ClusterWide
  profiles:
  - default
  cluster:
    name: production
  general:
    logging:
      componentLevels:
        default: info
  meshConfig:
    discoverySelectors:
    - matchLabels:
        env: prod
  policy:
    type: Istiod
  proxy:
    accessLogging:
      file:
        name: /dev/stdout
  security:
    trust:
      domain: cluster.local
    certificateAuthority:
      type: Istiod
    identity:
      type: Kubernetes
    controlPlane:
      mtls: true
      certProvider: Istiod
      tls:
        minProtocolVersion: TLSv1_2
    dataPlane:
      mtls: true
      automtls: true
    manageNetworkPolicy: true
    jwksResolverCA: ca
  telemetry:
    type: Istiod
  tracing:
    type: None
    sampling: 10000
  gateways:
    ingress:
      enabled: true
    openshiftRoute:
      enabled: false
  runtime:
    components:
      pilot:
        deployment:
          replicas: 2
  addons:
    kiali:
      enabled: true
  techPreview:
    gatewayAPI:
      enabled: true
",
        map_keys: &[],
        free_form: &[
            "cluster",
            "general",
            "meshConfig",
            "policy",
            "proxy",
            "trust",
            "certificateAuthority",
            "identity",
            "tls",
            "telemetry",
            "tracing",
            "gateways",
            "runtime",
            "addons",
            "techPreview",
        ],
    },
    // Every field of maistra/istio-operator `pkg/apis/maistra/v1` ControlPlaneSpec.
    Realistic {
        api_versions: &["maistra.io/v1"],
        yaml: "apiVersion: {API}
kind: ServiceMeshControlPlane
metadata:
  name: basic-install
  namespace: istio-system
spec:
  version: v1.1
  template: default
  profiles:
  - default
  networkType: subnet
  istio:
    global:
      proxy:
        resources:
          requests:
            cpu: 100m
    gateways:
      istio-egressgateway:
        autoscaleEnabled: false
  threeScale:
    enabled: false
",
        map_keys: &[],
        free_form: &["istio", "threeScale"],
    },
    // Every field of maistra/istio-operator `pkg/apis/maistra/v1` ServiceMeshMemberRollSpec and
    // ServiceMeshMemberSpec.
    Realistic {
        api_versions: MAISTRA_MEMBERS,
        yaml: "apiVersion: {API}
kind: ServiceMeshMemberRoll
metadata:
  name: default
  namespace: istio-system
spec:
  members:
  - bookinfo
  - shop
  memberSelectors:
  - matchLabels:
      mesh: enabled
  - matchExpressions:
    - key: team
      operator: In
      values:
      - payments
    - key: sandbox
      operator: DoesNotExist
",
        map_keys: &["mesh"],
        free_form: &[],
    },
    Realistic {
        api_versions: MAISTRA_MEMBERS,
        yaml: "apiVersion: {API}
kind: ServiceMeshMember
metadata:
  name: default
  namespace: bookinfo
spec:
  controlPlaneRef:
    name: basic
    namespace: istio-system
",
        map_keys: &[],
        free_form: &[],
    },
];

/// Every diagnostic of `yaml`, loaded or not.
fn diagnostics(yaml: &str) -> Vec<Diagnostic> {
    match load_str("t.yaml", yaml) {
        Ok(set) => set.warnings,
        Err(diags) => diags.0,
    }
}

/// (line, code, field) of each diagnostic.
fn brief(yaml: &str) -> Vec<(Option<usize>, &'static str, Option<String>)> {
    diagnostics(yaml)
        .into_iter()
        .map(|d| (d.line, d.code, d.field))
        .collect()
}

/// The lines of `yaml` below `spec:` that start with a field name: (0-based line, key).
fn field_lines(realistic: &Realistic) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_spec = false;
    // The indentation of a free-form field whose subtree is being skipped.
    let mut skip_below: Option<usize> = None;
    for (i, line) in realistic.yaml.lines().enumerate() {
        if line == "spec:" {
            in_spec = true;
            continue;
        }
        let body = line.trim_start().trim_start_matches("- ");
        let indent = line.len() - body.len();
        if let Some(level) = skip_below {
            if indent > level {
                continue;
            }
            skip_below = None;
        }
        let Some((key, _)) = body.split_once(':') else {
            continue;
        };
        let plain = key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !in_spec || !plain || key.is_empty() || realistic.map_keys.contains(&key) {
            continue;
        }
        if realistic.free_form.contains(&key) {
            skip_below = Some(indent);
        }
        out.push((i, key.to_owned()));
    }
    out
}

/// Loading cleanly means something only if the spec is checked: so each realistic spec, in
/// each served apiVersion, loads with the WARD0102 warning alone, and renaming any field it
/// writes makes a WARD0101 error on that field's line.
#[test]
fn realistic_specs_load_with_only_the_not_enforced_warning_and_every_field_is_checked() {
    for realistic in REALISTIC {
        let fields = field_lines(realistic);
        assert!(fields.len() > 2, "{}", realistic.yaml);
        for api in realistic.api_versions {
            let yaml = realistic.yaml.replace("{API}", api);
            // A Telemetry that sets only what Ward serves (`tracing`: docs/tracing.md) loads
            // without the warning.
            let want = if yaml.contains("name: foo-tracing") {
                vec![]
            } else {
                vec![(Some(1), code::KIND_NOT_ENFORCED, None)]
            };
            assert_eq!(brief(&yaml), want, "{yaml}");
            for (line, key) in &fields {
                let renamed: String = yaml
                    .lines()
                    .enumerate()
                    .map(|(i, text)| {
                        if i == *line {
                            format!(
                                "{}\n",
                                text.replacen(&format!("{key}:"), &format!("{key}X:"), 1)
                            )
                        } else {
                            format!("{text}\n")
                        }
                    })
                    .collect();
                let found = diagnostics(&renamed)
                    .iter()
                    .any(|d| d.code == code::UNKNOWN_FIELD && d.line == Some(line + 1));
                assert!(
                    found,
                    "renaming `{key}` on line {} is not an error:\n{renamed}",
                    line + 1
                );
            }
        }
    }
}

/// The one WARD0101 or WARD0105 error of `yaml`, rendered.
fn the_error(yaml: &str) -> String {
    let errors: Vec<String> = diagnostics(yaml)
        .iter()
        .filter(|d| d.is_error())
        .map(ToString::to_string)
        .collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors[0].clone()
}

#[test]
fn nested_typos_are_unknown_field_errors_naming_file_line_object_and_path() {
    let cases = [
        (
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: mesh-default, namespace: istio-system}\nspec:\n  tracing:\n  - customTags:\n      my_tag:\n        literal:\n          valeu: foo\n",
            "t.yaml:9: error[WARD0101] Telemetry istio-system/mesh-default: spec.tracing[0].customTags.my_tag.literal: unknown field `valeu`, expected `value`",
        ),
        (
            "apiVersion: telemetry.istio.io/v1alpha1\nkind: Telemetry\nmetadata: {name: mesh-default, namespace: istio-system}\nspec:\n  metrics:\n  - overrides:\n    - match: {metric: REQUEST_COUNT}\n      tagOverride: {}\n",
            "t.yaml:8: error[WARD0101] Telemetry istio-system/mesh-default: spec.metrics[0].overrides[0]: unknown field `tagOverride`, expected one of `match`, `disabled`, `tagOverrides` (did you mean `tagOverrides`?)",
        ),
        (
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: p, namespace: shop}\nspec:\n  url: oci://ghcr.io/x/y:1\n  vmConfig:\n    env:\n    - name: A\n      valueFrm: HOST\n",
            "t.yaml:9: error[WARD0101] WasmPlugin shop/p: spec.vmConfig.env[0]: unknown field `valueFrm`, expected one of `name`, `valueFrom`, `value` (did you mean `valueFrom`?)",
        ),
        (
            "apiVersion: networking.istio.io/v1beta1\nkind: ProxyConfig\nmetadata: {name: p, namespace: shop}\nspec:\n  image:\n    type: debug\n",
            "t.yaml:6: error[WARD0101] ProxyConfig shop/p: spec.image: unknown field `type`, expected `imageType`",
        ),
        (
            "apiVersion: sailoperator.io/v1\nkind: IstioCNI\nmetadata: {name: default}\nspec:\n  namespce: istio-cni\n",
            "t.yaml:5: error[WARD0101] IstioCNI default: spec: unknown field `namespce`, expected one of `version`, `profile`, `namespace`, `values` (did you mean `namespace`?)",
        ),
        (
            "apiVersion: sailoperator.io/v1\nkind: IstioRevisionTag\nmetadata: {name: default}\nspec:\n  targetRef:\n    kind: Istio\n    nme: default\n",
            "t.yaml:7: error[WARD0101] IstioRevisionTag default: spec.targetRef: unknown field `nme`, expected one of `kind`, `name` (did you mean `name`?)",
        ),
        (
            "apiVersion: sailoperator.io/v1\nkind: ZTunnel\nmetadata: {name: default}\nspec:\n  profile: ambient\n",
            "t.yaml:5: error[WARD0101] ZTunnel default: spec: unknown field `profile`, expected one of `version`, `namespace`, `values`, `targetRef`",
        ),
        (
            "apiVersion: sailoperator.io/v1alpha1\nkind: ZTunnel\nmetadata: {name: default}\nspec:\n  targetRef: {kind: Istio, name: default}\n",
            "t.yaml:5: error[WARD0101] ZTunnel default: spec: unknown field `targetRef`, expected one of `version`, `profile`, `namespace`, `values`",
        ),
        (
            "apiVersion: maistra.io/v2\nkind: ServiceMeshControlPlane\nmetadata: {name: basic, namespace: istio-system}\nspec:\n  security:\n    dataPlane:\n      mTLS: true\n",
            "t.yaml:7: error[WARD0101] ServiceMeshControlPlane istio-system/basic: spec.security.dataPlane: unknown field `mTLS`, expected one of `mtls`, `automtls` (did you mean `mtls`?)",
        ),
        (
            "apiVersion: maistra.io/v1\nkind: ServiceMeshControlPlane\nmetadata: {name: basic, namespace: istio-system}\nspec:\n  security:\n    dataPlane: {mtls: true}\n",
            "t.yaml:5: error[WARD0101] ServiceMeshControlPlane istio-system/basic: spec: unknown field `security`, expected one of `template`, `profiles`, `version`, `networkType`, `istio`, `threeScale`",
        ),
        (
            "apiVersion: maistra.io/v1\nkind: ServiceMeshMemberRoll\nmetadata: {name: default, namespace: istio-system}\nspec:\n  memberSelectors:\n  - matchLabel: {mesh: enabled}\n",
            "t.yaml:6: error[WARD0101] ServiceMeshMemberRoll istio-system/default: spec.memberSelectors[0]: unknown field `matchLabel`, expected one of `matchLabels`, `matchExpressions` (did you mean `matchLabels`?)",
        ),
        (
            "apiVersion: maistra.io/v1\nkind: ServiceMeshMember\nmetadata: {name: default, namespace: bookinfo}\nspec:\n  controlPlaneRef: {name: basic, namspace: istio-system}\n",
            "t.yaml:5: error[WARD0101] ServiceMeshMember bookinfo/default: spec.controlPlaneRef: unknown field `namspace`, expected one of `name`, `namespace` (did you mean `namespace`?)",
        ),
    ];
    for (yaml, want) in cases {
        assert_eq!(the_error(yaml), want, "{yaml}");
    }
}

#[test]
fn what_istio_rejects_is_invalid() {
    let telemetry = |spec: &str| {
        format!("apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: t, namespace: ns}}\nspec:\n{spec}")
    };
    let wasm = |spec: &str| {
        format!("apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: w, namespace: ns}}\nspec:\n{spec}")
    };
    let proxy_config = |spec: &str| {
        format!("apiVersion: networking.istio.io/v1beta1\nkind: ProxyConfig\nmetadata: {{name: p, namespace: ns}}\nspec:\n{spec}")
    };
    let operator = |api: &str, kind: &str, name: &str, spec: &str| {
        format!("apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: istio-system\nspec:\n{spec}")
    };
    let long = |n: usize| "a".repeat(n);
    // (document, [(line, field)] of the WARD0105 errors)
    let cases: Vec<(String, Vec<(usize, &str)>)> = vec![
        (
            telemetry("  selector: {matchLabels: {app: a}}\n  targetRefs: [{kind: Service, name: a}]\n"),
            vec![(6, "spec.targetRefs")],
        ),
        (
            telemetry("  targetRef: {kind: Service, name: a}\n  targetRefs: [{kind: Service, name: a}]\n"),
            vec![(6, "spec.targetRefs")],
        ),
        (
            telemetry("  selector:\n    matchLabels: {app: \"*\"}\n"),
            vec![(6, "spec.selector.matchLabels.app")],
        ),
        (
            telemetry("  targetRefs:\n  - kind: Gateway\n    name: gw\n  - {kind: Service, name: \"\", namespace: other}\n"),
            vec![
                (6, "spec.targetRefs[0].kind"),
                (8, "spec.targetRefs[1].name"),
                (8, "spec.targetRefs[1].namespace"),
            ],
        ),
        (
            telemetry(&format!("  targetRefs:\n{}", "  - {kind: Service, name: s}\n".repeat(17))),
            vec![(5, "spec.targetRefs")],
        ),
        (
            telemetry("  tracing:\n  - providers: [{name: \"\"}]\n    randomSamplingPercentage: 100.5\n  - randomSamplingPercentage: -1\n"),
            vec![
                (6, "spec.tracing[0].providers[0].name"),
                (7, "spec.tracing[0].randomSamplingPercentage"),
                (8, "spec.tracing[1].randomSamplingPercentage"),
            ],
        ),
        (
            telemetry("  tracing:\n  - customTags:\n      both:\n        literal: {value: a}\n        header: {name: x}\n      empty_literal:\n        literal: {value: \"\"}\n      empty_env:\n        environment: {name: \"\"}\n      empty_header:\n        header: {name: \"\"}\n      empty_formatter:\n        formatter: {value: \"\"}\n      \"\": {}\n"),
            vec![
                (7, "spec.tracing[0].customTags.both"),
                (11, "spec.tracing[0].customTags.empty_literal.literal.value"),
                (13, "spec.tracing[0].customTags.empty_env.environment.name"),
                (15, "spec.tracing[0].customTags.empty_header.header.name"),
                (17, "spec.tracing[0].customTags.empty_formatter.formatter.value"),
                (6, "spec.tracing[0].customTags"),
            ],
        ),
        (
            telemetry("  metrics:\n  - reportingInterval: 0.5ms\n    overrides:\n    - match: {metric: REQUEST_COUNT, customMetric: x}\n    - match: {customMetric: \"\"}\n      tagOverrides:\n        no_value: {}\n        empty_upsert: {operation: UPSERT, value: \"\"}\n        remove_with_value: {operation: REMOVE, value: x}\n  accessLogging:\n  - providers: [{name: \"\"}]\n"),
            vec![
                (6, "spec.metrics[0].reportingInterval"),
                (8, "spec.metrics[0].overrides[0].match"),
                (9, "spec.metrics[0].overrides[1].match.customMetric"),
                (13, "spec.metrics[0].overrides[1].tagOverrides.remove_with_value.value"),
                (12, "spec.metrics[0].overrides[1].tagOverrides.empty_upsert"),
                (11, "spec.metrics[0].overrides[1].tagOverrides.no_value"),
                (15, "spec.accessLogging[0].providers[0].name"),
            ],
        ),
        (telemetry("  metrics:\n  - reportingInterval: 5\n"), vec![(6, "spec.metrics[0].reportingInterval")]),
        (telemetry("  tracing:\n  - match: {mode: INBOUND}\n"), vec![(6, "spec.tracing[0].match.mode")]),
        (wasm("  sha256: abc\n"), vec![(5, "spec")]),
        (
            wasm("  url: \"\"\n  sha256: ABC\n  imagePullSecret: \"\"\n  pluginName: \"\"\n"),
            vec![
                (5, "spec.url"),
                (6, "spec.sha256"),
                (7, "spec.imagePullSecret"),
                (8, "spec.pluginName"),
            ],
        ),
        (
            wasm(&format!("  url: ftp://example.com/p.wasm\n  imagePullSecret: {}\n  pluginName: {}\n", long(254), long(257))),
            vec![(5, "spec.url"), (6, "spec.imagePullSecret"), (7, "spec.pluginName")],
        ),
        (
            wasm(&format!("  url: oci://ghcr.io/x/y:1\n  vmConfig:\n    env:\n    - name: \"\"\n    - name: A\n    - name: A\n    - {{name: B, valueFrom: HOST, value: x}}\n    - {{name: {}, value: {}}}\n", long(257), long(2049))),
            vec![
                (8, "spec.vmConfig.env[0].name"),
                (10, "spec.vmConfig.env[2].name"),
                (11, "spec.vmConfig.env[3].value"),
                (12, "spec.vmConfig.env[4].name"),
                (12, "spec.vmConfig.env[4].value"),
            ],
        ),
        (
            wasm(&format!(
                "  url: oci://ghcr.io/x/y:1\n  vmConfig:\n    env:\n{}",
                (0..257).map(|i| format!("    - {{name: V{i}}}\n")).collect::<String>()
            )),
            vec![(7, "spec.vmConfig.env")],
        ),
        (
            wasm("  url: oci://ghcr.io/x/y:1\n  match:\n  - ports:\n    - number: 0\n    - {}\n    - number: 80\n    - number: 80\n"),
            vec![
                (8, "spec.match[0].ports[0].number"),
                (9, "spec.match[0].ports[1]"),
                (11, "spec.match[0].ports[3].number"),
            ],
        ),
        (
            wasm("  url: oci://ghcr.io/x/y:1\n  selector: {matchLabels: {app: a}}\n  targetRef: {kind: Service, name: a}\n"),
            vec![(7, "spec.targetRef")],
        ),
        (wasm("  url: oci://ghcr.io/x/y:1\n  phase: AUTHENTICATION\n"), vec![(6, "spec.phase")]),
        (
            proxy_config(&format!("  selector: {{matchLabels: {{\"\": a}}}}\n  concurrency: -1\n  environmentVariables:\n    A: {}\n", long(2049))),
            vec![(5, "spec.selector.matchLabels[\"\"]"), (6, "spec.concurrency"), (8, "spec.environmentVariables.A")],
        ),
        (proxy_config("  concurrency: 3000000000\n"), vec![(5, "spec.concurrency")]),
        (
            operator("sailoperator.io/v1", "IstioCNI", "cni", "  namespace: istio-cni\n"),
            vec![(4, "metadata.name")],
        ),
        (
            operator("sailoperator.io/v1alpha1", "ZTunnel", "zt", "  profile: ambient\n"),
            vec![(4, "metadata.name")],
        ),
        (
            operator("sailoperator.io/v1", "ZTunnel", "default", "  targetRef: {kind: Gateway, name: \"\"}\n"),
            vec![(7, "spec.targetRef.kind"), (7, "spec.targetRef.name")],
        ),
        (
            operator("sailoperator.io/v1", "IstioRevisionTag", "default", "  targetRef: {kind: IstioOperator, name: default}\n"),
            vec![(7, "spec.targetRef.kind")],
        ),
        (
            operator("sailoperator.io/v1alpha1", "IstioRevisionTag", "default", &format!("  targetRef: {{kind: \"\", name: {}}}\n", long(254))),
            vec![(7, "spec.targetRef.kind"), (7, "spec.targetRef.name")],
        ),
        (
            operator("sailoperator.io/v1", "IstioRevision", "default", "  version: v1.26.0\n  namespace: istio-system\n"),
            vec![(6, "spec.values.global.istioNamespace")],
        ),
        (
            operator("sailoperator.io/v1", "IstioRevision", "default", "  version: v1.26.0\n  namespace: istio-system\n  values:\n    revision: default\n    global: {istioNamespace: other}\n"),
            vec![(11, "spec.values.global.istioNamespace"), (10, "spec.values.revision")],
        ),
        (
            operator("sailoperator.io/v1", "IstioRevision", "canary", "  version: v1.26.0\n  namespace: istio-system\n  values:\n    global: {istioNamespace: istio-system}\n"),
            vec![(9, "spec.values.revision")],
        ),
        (
            operator("sailoperator.io/v1", "IstioRevision", "default", "  namespace: istio-system\n"),
            vec![(7, "spec")],
        ),
        (
            operator("maistra.io/v2", "ServiceMeshControlPlane", "basic", "  mode: Cluster\n"),
            vec![(7, "spec.mode")],
        ),
        (
            operator("maistra.io/v2", "ServiceMeshControlPlane", "basic", "  security:\n    dataPlane: {mtls: \"yes\"}\n"),
            vec![(8, "spec.security.dataPlane.mtls")],
        ),
        (
            operator("maistra.io/v2", "ServiceMeshControlPlane", "basic", "  tracing: Jaeger\n"),
            vec![(7, "spec.tracing")],
        ),
        (
            operator("maistra.io/v1", "ServiceMeshMemberRoll", "default", "  memberSelectors:\n  - matchLabels: {\"mesh/\": enabled}\n    matchExpressions:\n    - {key: a, operator: In}\n    - {key: b, operator: NotIn, values: []}\n    - {key: c, operator: Exists, values: [x]}\n    - {key: d, operator: DoesNotExist, values: [y]}\n"),
            vec![
                (8, "spec.memberSelectors[0].matchLabels[\"mesh/\"]"),
                (10, "spec.memberSelectors[0].matchExpressions[0].values"),
                (11, "spec.memberSelectors[0].matchExpressions[1].values"),
                (12, "spec.memberSelectors[0].matchExpressions[2].values"),
                (13, "spec.memberSelectors[0].matchExpressions[3].values"),
            ],
        ),
        (
            operator("maistra.io/v1", "ServiceMeshMemberRoll", "default", "  memberSelectors:\n  - matchExpressions: [{key: a, operator: Has}]\n"),
            vec![(8, "spec.memberSelectors[0].matchExpressions[0].operator")],
        ),
        (
            operator("maistra.io/v1", "ServiceMeshMember", "default", "  controlPlaneRef: {name: basic}\n"),
            vec![(7, "spec.controlPlaneRef")],
        ),
    ];
    for (yaml, want) in cases {
        let mut got: Vec<(usize, String)> = diagnostics(&yaml)
            .into_iter()
            .filter(|d| d.code != code::KIND_NOT_ENFORCED)
            .map(|d| {
                assert_eq!(d.code, code::INVALID, "{d}");
                (d.line.unwrap(), d.field.unwrap_or_default())
            })
            .collect();
        got.sort();
        let mut want: Vec<(usize, String)> =
            want.into_iter().map(|(l, f)| (l, f.to_owned())).collect();
        want.sort();
        assert_eq!(got, want, "{yaml}");
    }
}

#[test]
fn messages_of_decoded_values_name_what_is_allowed() {
    let cases = [
        (
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: ns}\nspec:\n  tracing:\n  - match: {mode: INBOUND}\n",
            "t.yaml:6: error[WARD0105] Telemetry ns/t: spec.tracing[0].match.mode: unknown value `INBOUND`, expected one of `CLIENT_AND_SERVER`, `CLIENT`, `SERVER`",
        ),
        (
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: ns}\nspec:\n  metrics:\n  - reportingInterval: 5\n",
            "t.yaml:6: error[WARD0105] Telemetry ns/t: spec.metrics[0].reportingInterval: \"5\" is not a duration: expected a number and a unit such as 500ms, 5s, 1m30s or 1.5h (units: h, m, s, ms, us, ns)",
        ),
        (
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: w, namespace: ns}\nspec:\n  sha256: abc\n",
            "t.yaml:5: error[WARD0105] WasmPlugin ns/w: spec: missing required field `url`",
        ),
        (
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: w, namespace: ns}\nspec:\n  url: oci://x/y:1\n  pluginConfig: [a]\n",
            "t.yaml:6: error[WARD0105] WasmPlugin ns/w: spec.pluginConfig: expected a mapping, found a list",
        ),
        (
            "apiVersion: sailoperator.io/v1\nkind: IstioRevisionTag\nmetadata: {name: default}\nspec:\n  targetRef: {kind: istio, name: default}\n",
            "t.yaml:5: error[WARD0105] IstioRevisionTag default: spec.targetRef.kind: unknown value `istio`, expected one of `Istio`, `IstioRevision` (did you mean `Istio`?)",
        ),
        (
            "apiVersion: maistra.io/v2\nkind: ServiceMeshControlPlane\nmetadata: {name: basic, namespace: istio-system}\nspec:\n  mode: Cluster\n",
            "t.yaml:5: error[WARD0105] ServiceMeshControlPlane istio-system/basic: spec.mode: unknown value `Cluster`, expected one of `MultiTenant`, `ClusterWide`",
        ),
        (
            "apiVersion: sailoperator.io/v1\nkind: IstioCNI\nmetadata: {name: default}\nspec:\n  values: on\n",
            "t.yaml:5: error[WARD0105] IstioCNI default: spec.values: expected a mapping, found string \"on\"",
        ),
    ];
    for (yaml, want) in cases {
        assert_eq!(the_error(yaml), want, "{yaml}");
    }
}

#[test]
fn sail_objects_are_cluster_scoped_so_one_name_is_one_object() {
    let cni = |ns: &str| {
        format!("apiVersion: sailoperator.io/v1\nkind: IstioCNI\nmetadata: {{name: default, namespace: {ns}}}\n")
    };
    let yaml = format!("{}---\n{}", cni("a"), cni("b"));
    assert_eq!(
        the_error(&yaml),
        "t.yaml:7: error[WARD0104] IstioCNI default: metadata.name: duplicate object: IstioCNI default is already defined at t.yaml:1"
    );
}

#[test]
fn deep_helm_values_load_on_a_small_stack() {
    // As for the Sail `Istio` (tests/fuzz_load.rs): 60 levels of values, on a 1 MiB thread in
    // a debug build.
    let values: String = (0..60)
        .map(|i| format!("{}l{i}:\n", " ".repeat(2 * i + 4)))
        .collect();
    let yaml = format!(
        "apiVersion: sailoperator.io/v1\nkind: IstioCNI\nmetadata: {{name: default}}\nspec:\n  values:\n{values}"
    );
    let codes = std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || brief(&yaml))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(codes, vec![(Some(1), code::KIND_NOT_ENFORCED, None)]);
}
