//! The networking kinds Ward accepts without enforcing them (VirtualService, DestinationRule,
//! Gateway, WorkloadGroup, EnvoyFilter) load with only their WARD0102 warning when their spec
//! is right, in every served apiVersion; a misspelt field anywhere in the spec is a WARD0101
//! error and a value Istio would reject is a WARD0105 error, each at its field and line.
//!
//! The specs are written for these tests and use most fields of each kind.

#![allow(clippy::unwrap_used)] // tests

use ward_config::{code, load_str, Diagnostic, Severity};

/// Traffic management for a `payments` service behind an ingress gateway: a canary split, a
/// header-matched route, retries, a timeout, fault injection, mirroring, CORS, a redirect, a
/// fixed response, and TLS and TCP routes.
const VIRTUAL_SERVICE: &str = r#"kind: VirtualService
metadata: {name: payments, namespace: shop}
spec:
  hosts: [payments.shop.svc.cluster.local, pay.example.com]
  gateways: [shop/edge, mesh]
  exportTo: [".", istio-system]
  http:
  - name: beta-testers
    match:
    - name: header
      headers:
        x-beta: {exact: "true"}
      uri: {prefix: /api/}
      ignoreUriCase: true
      sourceLabels: {app: storefront}
      sourceNamespace: shop
      port: 8080
      gateways: [mesh]
      statPrefix: beta
    - queryParams: {beta: {regex: "^(1|yes)$"}}
      withoutHeaders: {x-legacy: {regex: "*"}}
      method: {exact: POST}
      scheme: {exact: https}
      authority: {prefix: pay.}
    route:
    - destination: {host: payments.shop.svc.cluster.local, subset: v2, port: {number: 8080}}
      headers:
        request:
          set: {x-route: beta}
          add: {x-trace: "1"}
          remove: [x-internal]
        response:
          remove: [server]
    timeout: 2.5s
    retries: {attempts: 3, perTryTimeout: 800ms, retryOn: "5xx,connect-failure", retryRemoteLocalities: true, retryIgnorePreviousHosts: true, backoff: 25ms}
    fault:
      delay: {fixedDelay: 100ms, percentage: {value: 0.5}}
    mirrors:
    - destination: {host: payments-shadow.shop.svc.cluster.local}
      percentage: {value: 10}
    corsPolicy:
      allowOrigins: [{exact: "https://shop.example.com"}, {regex: "https://.*\\.example\\.com"}]
      allowMethods: [GET, POST]
      allowHeaders: [authorization, content-type]
      exposeHeaders: [x-request-id]
      maxAge: 24h
      allowCredentials: true
      unmatchedPreflights: IGNORE
    headers:
      response:
        set: {strict-transport-security: max-age=31536000}
  - name: old-api
    match: [{uri: {prefix: /v1/}}]
    redirect: {prefixRewrite: /api/, authority: pay.example.com, scheme: https, derivePort: FROM_PROTOCOL_DEFAULT, redirectCode: 308}
  - name: maintenance
    match: [{uri: {exact: /admin}}]
    directResponse: {status: 503, body: {string: "down for maintenance"}}
  - name: legacy-rewrite
    match: [{uri: {regex: "^/legacy/(.*)$"}}]
    rewrite: {uriRegexRewrite: {match: "^/legacy/(.*)$", rewrite: "/api/\\1"}, authority: payments.shop.svc.cluster.local}
    route:
    - destination: {host: payments.shop.svc.cluster.local, subset: v1}
    mirror: {host: payments-shadow.shop.svc.cluster.local}
    mirrorPercentage: {value: 1.5}
  - name: canary
    route:
    - destination: {host: payments.shop.svc.cluster.local, subset: v1}
      weight: 90
    - destination: {host: payments.shop.svc.cluster.local, subset: v2}
      weight: 10
    fault:
      abort: {httpStatus: 503, percentage: {value: 0.1}}
  tls:
  - match:
    - sniHosts: [pay.example.com]
      port: 443
      destinationSubnets: [10.20.0.0/16]
      sourceLabels: {app: storefront}
      gateways: [shop/edge]
    route:
    - destination: {host: payments.shop.svc.cluster.local, port: {number: 8443}}
  tcp:
  - match:
    - port: 5432
      destinationSubnets: [10.30.0.5]
      sourceSubnet: 10.0.0.0/8
      sourceNamespace: shop
    route:
    - destination: {host: ledger-db.shop.svc.cluster.local, port: {number: 5432}}
      weight: 100
"#;

/// Client policies for `payments`: least-request balancing with slow start, connection limits,
/// outlier detection, mTLS, per-port and per-subset overrides.
const DESTINATION_RULE: &str = r#"kind: DestinationRule
metadata: {name: payments, namespace: shop}
spec:
  host: payments.shop.svc.cluster.local
  exportTo: ["."]
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
      localityLbSetting:
        enabled: true
        distribute:
        - from: eu-west/zone1/*
          to: {"eu-west/zone1/*": 80, "eu-west/zone2/*": 20}
        failoverPriority: [topology.kubernetes.io/region]
      warmup: {duration: 60s, minimumPercent: 10, aggression: 1.5}
    connectionPool:
      tcp:
        maxConnections: 200
        connectTimeout: 3s
        tcpKeepalive: {probes: 3, time: 7200s, interval: 75s}
        maxConnectionDuration: 1h
        idleTimeout: 30m
      http:
        http1MaxPendingRequests: 64
        http2MaxRequests: 1000
        maxRequestsPerConnection: 100
        maxRetries: 3
        idleTimeout: 90s
        h2UpgradePolicy: DO_NOT_UPGRADE
        maxConcurrentStreams: 128
        http2KeepAlive: {interval: 30s, timeout: 5s}
    outlierDetection:
      consecutive5xxErrors: 5
      consecutiveGatewayErrors: 3
      splitExternalLocalOriginErrors: true
      consecutiveLocalOriginFailures: 2
      interval: 10s
      baseEjectionTime: 30s
      maxEjectionPercent: 50
      minHealthPercent: 25
      outlierDetectionHttpErrorCodes: [500, 503]
    tls: {mode: ISTIO_MUTUAL, sni: payments.shop.svc.cluster.local}
    retryBudget: {percent: 25, minRetryConcurrency: 5, budgetInterval: 10s}
    portLevelSettings:
    - port: {number: 8443}
      tls:
        mode: SIMPLE
        caCertificates: /etc/certs/ca.pem
        subjectAltNames: [payments.example.com]
        sni: payments.example.com
      loadBalancer:
        consistentHash:
          httpCookie:
            name: session
            path: /
            ttl: 0s
            attributes: [{name: SameSite, value: Strict}, {name: Secure}]
          ringHash: {minimumRingSize: 1024}
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer:
        consistentHash: {httpHeaderName: x-user, maglev: {tableSize: 65537}}
      proxyProtocol: {version: V2}
  - name: external
    labels: {version: ext}
    trafficPolicy:
      tunnel: {protocol: CONNECT, targetHost: egress.example.com, targetPort: 3128}
      tls:
        mode: MUTUAL
        clientCertificate: /etc/certs/client.pem
        privateKey: /etc/certs/client-key.pem
        caCertificates: /etc/certs/ca.pem
        caCrl: /etc/certs/crl.pem
        insecureSkipVerify: false
"#;

/// An ingress gateway with an HTTPS server (two certificates), a plaintext server that
/// redirects to HTTPS, an mTLS passthrough port and a TCP port.
const GATEWAY: &str = r#"kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - name: https
    port: {number: 443, name: https, protocol: HTTPS}
    hosts: [shop/pay.example.com, "*.shop.example.com"]
    tls:
      mode: SIMPLE
      credentialNames: [pay-rsa, pay-ecdsa]
      minProtocolVersion: TLSV1_2
      maxProtocolVersion: TLSV1_3
      cipherSuites: [ECDHE-ECDSA-AES256-GCM-SHA384]
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
    tls: {httpsRedirect: true}
  - port: {number: 8443, name: mtls, protocol: HTTPS}
    bind: 0.0.0.0
    hosts: [pay.example.com]
    tls:
      mode: MUTUAL
      serverCertificate: /etc/certs/server.pem
      privateKey: /etc/certs/server-key.pem
      caCertificates: /etc/certs/clients-ca.pem
      caCrl: /etc/certs/crl.pem
      subjectAltNames: [partner.example.com]
      verifyCertificateSpki: [bWFkZSB1cCBmb3IgYSB0ZXN0]
      verifyCertificateHash: ["aa:bb:cc"]
  - port: {number: 15443, name: tls-passthrough, protocol: TLS}
    hosts: ["*.local"]
    tls: {mode: AUTO_PASSTHROUGH}
  - port: {number: 5432, name: tcp-db, protocol: TCP}
    hosts: ["*"]
    defaultEndpoint: 127.0.0.1:5432
"#;

/// VMs joining the mesh as `ledger` workloads, with an HTTP readiness probe.
const WORKLOAD_GROUP: &str = r#"kind: WorkloadGroup
metadata: {name: ledger, namespace: shop}
spec:
  metadata:
    labels: {app: ledger, version: v3}
    annotations: {owner: payments-team}
  template:
    serviceAccount: ledger
    network: vm-network
    ports: {http: 8080, grpc: 9090}
    locality: eu-west/zone1
    weight: 1
  probe:
    initialDelaySeconds: 5
    timeoutSeconds: 3
    periodSeconds: 4
    successThreshold: 1
    failureThreshold: 3
    httpGet:
      path: /ready
      port: 8080
      scheme: HTTP
      httpHeaders: [{name: x-probe, value: istio}]
"#;

/// Adds a Lua filter to the storefront's inbound HTTP traffic and tunes a cluster.
const ENVOY_FILTER: &str = r#"kind: EnvoyFilter
metadata: {name: storefront-lua, namespace: shop}
spec:
  workloadSelector:
    labels: {app: storefront}
  priority: 10
  configPatches:
  - applyTo: HTTP_FILTER
    match:
      context: SIDECAR_INBOUND
      proxy: {proxyVersion: "^1\\.2[0-9].*", metadata: {ISTIO_VERSION: "1.24"}}
      listener:
        portNumber: 8080
        filterChain:
          filter:
            name: envoy.filters.network.http_connection_manager
            subFilter: {name: envoy.filters.http.router}
    patch:
      operation: INSERT_BEFORE
      filterClass: AUTHZ
      value:
        name: envoy.filters.http.lua
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
          default_source_code:
            inline_string: |
              function envoy_on_request(handle)
                handle:headers():add("x-lua", "1")
              end
  - applyTo: CLUSTER
    match:
      context: SIDECAR_OUTBOUND
      cluster: {service: payments.shop.svc.cluster.local, portNumber: 8080, subset: v2}
    patch:
      operation: MERGE
      value: {per_connection_buffer_limit_bytes: 32768}
  - applyTo: VIRTUAL_HOST
    match:
      context: GATEWAY
      routeConfiguration:
        portNumber: 443
        portName: https
        gateway: shop/edge
        vhost: {name: "pay.example.com:443", domainName: pay.example.com, route: {name: default, action: ROUTE}}
    patch: {operation: MERGE, value: {include_request_attempt_count: true}}
  - applyTo: LISTENER
    match: {listener: {name: virtualInbound}}
    patch: {operation: REMOVE}
"#;

/// Every apiVersion that serves each kind (istio/api `kubernetes/customresourcedefinitions.gen.yaml`).
const NETWORKING: &[&str] = &[
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
];

fn diagnostics(yaml: &str) -> Vec<Diagnostic> {
    match load_str("net.yaml", yaml) {
        Ok(set) => set.warnings,
        Err(diags) => diags.0,
    }
}

#[test]
fn full_specs_load_with_only_the_not_enforced_warning_in_every_served_version() {
    let cases = [
        (VIRTUAL_SERVICE, "VirtualService shop/payments", NETWORKING),
        (
            DESTINATION_RULE,
            "DestinationRule shop/payments",
            NETWORKING,
        ),
        (GATEWAY, "Gateway shop/edge", NETWORKING),
        (WORKLOAD_GROUP, "WorkloadGroup shop/ledger", NETWORKING),
        (
            ENVOY_FILTER,
            "EnvoyFilter shop/storefront-lua",
            &["networking.istio.io/v1alpha3"],
        ),
    ];
    for (spec, object, versions) in cases {
        for version in versions {
            let yaml = format!("apiVersion: {version}\n{spec}");
            let got: Vec<_> = diagnostics(&yaml)
                .into_iter()
                .map(|d| (d.severity, d.code, d.line, d.object))
                .collect();
            assert_eq!(
                got,
                vec![(
                    Severity::Warning,
                    code::KIND_NOT_ENFORCED,
                    Some(1),
                    Some(object.to_owned())
                )],
                "{object} as {version}"
            );
        }
    }
}

#[test]
fn a_typo_at_any_depth_is_an_unknown_field_error() {
    let cases = [
        (
            VIRTUAL_SERVICE.replace(
                "- destination: {host: payments.shop.svc.cluster.local, subset: v2, port: {number: 8080}}",
                "- destination: {hots: payments.shop.svc.cluster.local, subset: v2, port: {number: 8080}}",
            ),
            "net.yaml:27: error[WARD0101] VirtualService shop/payments: spec.http[0].route[0].destination: unknown field `hots`, expected one of `host`, `subset`, `port`",
        ),
        (
            DESTINATION_RULE.replace("consecutive5xxErrors: 5", "consecutive5xxError: 5"),
            "net.yaml:34: error[WARD0101] DestinationRule shop/payments: spec.trafficPolicy.outlierDetection: unknown field `consecutive5xxError`, expected one of `consecutiveErrors`, `splitExternalLocalOriginErrors`, `consecutiveLocalOriginFailures`, `consecutiveGatewayErrors`, `consecutive5xxErrors`, `interval`, `baseEjectionTime`, `maxEjectionPercent`, `minHealthPercent`, `outlierDetectionHttpErrorCodes` (did you mean `consecutive5xxErrors`?)",
        ),
        (
            GATEWAY.replace("    tls: {httpsRedirect: true}", "    tls: {httpsRedirect: true, mod: SIMPLE}"),
            "net.yaml:18: error[WARD0101] Gateway shop/edge: spec.servers[1].tls: unknown field `mod`, expected one of `httpsRedirect`, `mode`, `serverCertificate`, `privateKey`, `caCertificates`, `caCrl`, `credentialName`, `credentialNames`, `caCertCredentialName`, `tlsCertificates`, `subjectAltNames`, `verifyCertificateSpki`, `verifyCertificateHash`, `minProtocolVersion`, `maxProtocolVersion`, `cipherSuites`, `insecureSkipVerify` (did you mean `mode`?)",
        ),
        (
            WORKLOAD_GROUP.replace("      httpHeaders:", "      httpHeader:"),
            "net.yaml:24: error[WARD0101] WorkloadGroup shop/ledger: spec.probe.httpGet: unknown field `httpHeader`, expected one of `path`, `port`, `host`, `scheme`, `httpHeaders` (did you mean `httpHeaders`?)",
        ),
        (
            WORKLOAD_GROUP.replace("    serviceAccount: ledger", "    serviceAcount: ledger"),
            "net.yaml:9: error[WARD0101] WorkloadGroup shop/ledger: spec.template: unknown field `serviceAcount`, expected one of `address`, `ports`, `labels`, `network`, `locality`, `weight`, `serviceAccount` (did you mean `serviceAccount`?)",
        ),
        (
            ENVOY_FILTER.replace("            subFilter:", "            subfilter:"),
            "net.yaml:18: error[WARD0101] EnvoyFilter shop/storefront-lua: spec.configPatches[0].match.listener.filterChain.filter: unknown field `subfilter`, expected one of `name`, `subFilter` (did you mean `subFilter`?)",
        ),
    ];
    for (spec, want) in cases {
        let version = if spec.starts_with("kind: EnvoyFilter") {
            "networking.istio.io/v1alpha3"
        } else {
            "networking.istio.io/v1"
        };
        let yaml = format!("apiVersion: {version}\n{spec}");
        let err = load_str("net.yaml", &yaml).unwrap_err();
        let errors: Vec<String> = err.errors().map(ToString::to_string).collect();
        assert_eq!(errors, vec![want.to_owned()], "{spec}");
    }
}

#[test]
fn values_istio_rejects_are_invalid_at_their_field() {
    // (object YAML after apiVersion, field, line, message fragment)
    let cases = [
        (
            VIRTUAL_SERVICE.replace("    timeout: 2.5s", "    timeout: 2.5"),
            "spec.http[0].timeout",
            35,
            "\"2.5\" is not a duration",
        ),
        (
            VIRTUAL_SERVICE.replace(
                "{beta: {regex: \"^(1|yes)$\"}}",
                "{beta: {regex: \"^(1|yes$\"}}",
            ),
            "spec.http[0].match[1].queryParams.beta.regex",
            21,
            "Istio uses RE2 syntax",
        ),
        (
            VIRTUAL_SERVICE.replace("percentage: {value: 10}", "percentage: {value: 110}"),
            "spec.http[0].mirrors[0].percentage.value",
            41,
            "percentage 110 is out of range 0-100",
        ),
        (
            VIRTUAL_SERVICE.replace("unmatchedPreflights: IGNORE", "unmatchedPreflights: DROP"),
            "spec.http[0].corsPolicy.unmatchedPreflights",
            49,
            "unknown value `DROP`, expected one of `UNSPECIFIED`, `FORWARD`, `IGNORE`",
        ),
        (
            DESTINATION_RULE.replace("  host: payments.shop.svc.cluster.local\n", ""),
            "spec",
            4,
            "missing required field `host`",
        ),
        (
            DESTINATION_RULE.replace("port: {number: 8443}", "port: {number: 84430}"),
            "spec.trafficPolicy.portLevelSettings[0].port.number",
            46,
            "port 84430 is out of range 1-65535",
        ),
        (
            GATEWAY.replace(
                "  - port: {number: 80, name: http, protocol: HTTP}\n",
                "  - bind: 10.0.0.1\n",
            ),
            "spec.servers[1]",
            16,
            "missing required field `port`",
        ),
        (
            WORKLOAD_GROUP.replace("      port: 8080\n", ""),
            "spec.probe.httpGet.port",
            20,
            "port 0 is out of range 1-65535",
        ),
        (
            ENVOY_FILTER.replace(
                "    patch: {operation: MERGE, value: {include_request_attempt_count: true}}",
                "    patch: {operation: MERGE}",
            ),
            "spec.configPatches[2].patch",
            46,
            "missing required field `value`",
        ),
    ];
    for (spec, field, line, fragment) in cases {
        let version = if spec.starts_with("kind: EnvoyFilter") {
            "networking.istio.io/v1alpha3"
        } else {
            "networking.istio.io/v1"
        };
        let yaml = format!("apiVersion: {version}\n{spec}");
        let err = load_str("net.yaml", &yaml).unwrap_err();
        let errors: Vec<&Diagnostic> = err.errors().collect();
        assert_eq!(errors.len(), 1, "{err}");
        let d = errors[0];
        assert_eq!(
            (d.code, d.field.as_deref(), d.line),
            (code::INVALID, Some(field), Some(line)),
            "{err}"
        );
        assert!(d.message.contains(fragment), "{err}");
    }
}
