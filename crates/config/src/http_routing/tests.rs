//! Table tests of VirtualService routing: every match kind and route action, each row a
//! request and what must happen to it.
#![allow(clippy::unwrap_used)]

use super::*;

const VS: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: fhir, namespace: edge}
spec:
  hosts: [fhir.example.com, "*.api.example.com"]
  gateways: [ingress]
  http:
  - name: exact-metadata
    match: [{uri: {exact: /fhir/metadata}}]
    directResponse: {status: 200, body: {string: "capabilities"}}
  - name: old-api
    match: [{uri: {prefix: /v1/}}]
    redirect: {uri: /fhir/, redirectCode: 308}
  - name: prefix-rewrite-redirect
    match: [{uri: {prefix: /legacy/}}]
    redirect: {prefixRewrite: /fhir/, authority: new.example.com, scheme: https}
  - name: to-https
    match: [{scheme: {exact: http}, uri: {prefix: /secure}}]
    redirect: {scheme: https, derivePort: FROM_PROTOCOL_DEFAULT}
  - name: canary
    match:
    - headers: {x-canary: {exact: "yes"}}
    - queryParams: {canary: {exact: "1"}}
    route:
    - destination: {host: fhir, subset: v2}
  - name: no-debug-header
    match: [{uri: {prefix: /fhir/}, withoutHeaders: {x-debug: {}}, method: {regex: "GET|HEAD"}}]
    rewrite: {uri: /r4/}
    timeout: 3s
    retries: {attempts: 3, perTryTimeout: 1s, retryOn: "5xx,connect-failure"}
    route:
    - destination: {host: fhir, subset: v1, port: {number: 8080}}
      weight: 90
    - destination: {host: fhir, subset: v2, port: {number: 8080}}
      weight: 10
  - name: regex-rewrite
    match: [{uri: {regex: "/patients/[0-9]+/notes"}, ignoreUriCase: true}]
    rewrite: {uriRegexRewrite: {match: "^/patients/([0-9]+)/notes$", rewrite: "/fhir/Patient/\\1/notes"}, authority: notes.internal}
    route: [{destination: {host: notes.records.svc.cluster.local}}]
  - name: faulty
    match: [{uri: {prefix: /chaos}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 50}}, delay: {fixedDelay: 2s, percentage: {value: 25}}}
    mirror: {host: shadow}
    mirrorPercentage: {value: 10}
    route: [{destination: {host: fhir}}]
  - name: only-port-8443
    match: [{port: 8443, authority: {prefix: "fhir."}}]
    route: [{destination: {host: secure-fhir}}]
  - name: catch-all
    route: [{destination: {host: fhir}}]
    headers:
      request: {set: {x-route: catch-all}, remove: [x-internal]}
      response: {add: {x-served-by: ward}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mesh-routes, namespace: records}
spec:
  hosts: [notes]
  http:
  - match: [{sourceLabels: {app: web}, sourceNamespace: frontend}]
    route: [{destination: {host: notes, subset: web}}]
  - match: [{gateways: [edge/ingress]}]
    route: [{destination: {host: never}}]
  - route: [{destination: {host: notes}}]
"#;

fn tables() -> (HttpRoutes, HttpRoutes) {
    let set = crate::load_str("vs.yaml", VS).unwrap();
    let vss: Vec<&Resource<VirtualServiceSpec>> = set.virtual_services.iter().collect();
    (
        HttpRoutes::compile(&vss, "edge/ingress").unwrap(),
        HttpRoutes::compile(&vss, "mesh").unwrap(),
    )
}

struct Req {
    method: &'static str,
    scheme: &'static str,
    authority: &'static str,
    path: &'static str,
    headers: Vec<(String, String)>,
    port: u16,
    gateway: &'static str,
    labels: BTreeMap<String, String>,
    namespace: Option<&'static str>,
}

fn req(authority: &'static str, path: &'static str) -> Req {
    Req {
        method: "GET",
        scheme: "https",
        authority,
        path,
        headers: Vec::new(),
        port: 443,
        gateway: "edge/ingress",
        labels: BTreeMap::new(),
        namespace: None,
    }
}

impl Req {
    fn facts(&self) -> RequestFacts<'_> {
        RequestFacts {
            method: self.method,
            scheme: self.scheme,
            authority: self.authority,
            path_and_query: self.path,
            headers: &self.headers,
            port: self.port,
            gateway: self.gateway,
            source_labels: &self.labels,
            source_namespace: self.namespace,
        }
    }
    fn header(mut self, k: &str, v: &str) -> Req {
        self.headers.push((k.into(), v.into()));
        self
    }
}

/// What a decision comes to, in one line.
fn outcome(d: &Decision<'_>) -> String {
    match d {
        Decision::NoRoute => "404 NR".into(),
        Decision::Redirect {
            route,
            status,
            location,
        } => {
            format!(
                "{status} {location} ({})",
                route.name.as_deref().unwrap_or("-")
            )
        }
        Decision::Respond {
            route,
            status,
            body,
            ..
        } => format!(
            "{status} {:?} ({})",
            String::from_utf8_lossy(body),
            route.name.as_deref().unwrap_or("-")
        ),
        Decision::Forward(f) => format!(
            "-> {}{} {} {} ({})",
            f.destination.host,
            f.destination
                .subset
                .as_deref()
                .map(|s| format!("/{s}"))
                .unwrap_or_default(),
            f.authority,
            f.path_and_query,
            f.route.source.name.as_deref().unwrap_or("-")
        ),
    }
}

#[test]
fn every_match_kind_and_action_decides_as_istio_does() {
    let (edge, _) = tables();
    let rolls = Rolls {
        weight: 0,
        delay: 99.0,
        abort: 99.0,
        mirror: 99.0,
    };
    let mut http = req("fhir.example.com", "/secure/x?a=1");
    http.scheme = "http";
    http.port = 80;
    let mut head = req("fhir.example.com", "/fhir/Patient");
    head.method = "HEAD";
    let mut post = req("fhir.example.com", "/fhir/Patient");
    post.method = "POST";
    let mut on_8443 = req("fhir.example.com:8443", "/other");
    on_8443.port = 8443;
    let cases: Vec<(Req, &str)> = vec![
        (req("fhir.example.com", "/fhir/metadata"), "200 \"capabilities\" (exact-metadata)"),
        // Exact is exact: a trailing slash falls through to the prefix route.
        (req("fhir.example.com", "/fhir/metadata/"), "-> fhir.edge.svc.cluster.local/v1 fhir.example.com /r4/metadata/ (no-debug-header)"),
        (req("FHIR.example.com:443", "/v1/Patient?_count=5"), "308 https://FHIR.example.com:443/fhir/?_count=5 (old-api)"),
        (req("fhir.example.com", "/legacy/Patient/7"), "301 https://new.example.com/fhir/Patient/7 (prefix-rewrite-redirect)"),
        (http, "301 https://fhir.example.com/secure/x?a=1 (to-https)"),
        (req("fhir.example.com", "/x").header("x-canary", "yes"), "-> fhir.edge.svc.cluster.local/v2 fhir.example.com /x (canary)"),
        (req("fhir.example.com", "/x?b=2&canary=1"), "-> fhir.edge.svc.cluster.local/v2 fhir.example.com /x?b=2&canary=1 (canary)"),
        (req("fhir.example.com", "/x").header("x-canary", "no"), "-> fhir.edge.svc.cluster.local fhir.example.com /x (catch-all)"),
        (head, "-> fhir.edge.svc.cluster.local/v1 fhir.example.com /r4/Patient (no-debug-header)"),
        (post, "-> fhir.edge.svc.cluster.local fhir.example.com /fhir/Patient (catch-all)"),
        (req("fhir.example.com", "/fhir/Patient").header("x-debug", ""), "-> fhir.edge.svc.cluster.local fhir.example.com /fhir/Patient (catch-all)"),
        (req("fhir.example.com", "/patients/42/notes"), "-> notes.records.svc.cluster.local notes.internal /fhir/Patient/42/notes (regex-rewrite)"),
        // ignoreUriCase applies to the match, not to the rewrite's own regex (as in Envoy).
        (req("fhir.example.com", "/PATIENTS/42/Notes"), "-> notes.records.svc.cluster.local notes.internal /PATIENTS/42/Notes (regex-rewrite)"),
        (req("fhir.example.com", "/patients/x/notes"), "-> fhir.edge.svc.cluster.local fhir.example.com /patients/x/notes (catch-all)"),
        (on_8443, "-> secure-fhir.edge.svc.cluster.local fhir.example.com:8443 /other (only-port-8443)"),
        // Wildcard host; an unknown host has no route.
        (req("eu.api.example.com", "/fhir/metadata"), "200 \"capabilities\" (exact-metadata)"),
        (req("api.example.com", "/fhir/metadata"), "404 NR"),
        (req("other.example.com", "/"), "404 NR"),
    ];
    for (r, want) in cases {
        assert_eq!(
            outcome(&edge.decide(&r.facts(), rolls)),
            want,
            "{} {}",
            r.authority,
            r.path
        );
    }
}

#[test]
fn weights_split_requests_by_the_roll() {
    let (edge, _) = tables();
    let r = req("fhir.example.com", "/fhir/Patient");
    let mut v2 = 0;
    for roll in 0..1000u32 {
        let d = edge.decide(
            &r.facts(),
            Rolls {
                weight: roll,
                ..Rolls::default()
            },
        );
        let Decision::Forward(f) = d else {
            panic!("{d:?}")
        };
        assert_eq!(f.destination.port, Some(8080));
        if f.destination.subset.as_deref() == Some("v2") {
            v2 += 1;
        }
        assert_eq!(f.route.timeout, Some(Duration::from_secs(3)));
        assert_eq!(f.route.retries.attempts, 3);
        assert_eq!(f.route.retries.retry_on, ["5xx", "connect-failure"]);
    }
    assert_eq!(v2, 100, "10% of 1000 rolls go to v2");
}

#[test]
fn faults_and_mirrors_apply_to_their_share() {
    let (edge, _) = tables();
    let r = req("fhir.example.com", "/chaos");
    let at = |abort: f64, delay: f64, mirror: f64| {
        edge.decide(
            &r.facts(),
            Rolls {
                weight: 0,
                abort,
                delay,
                mirror,
            },
        )
    };
    assert!(matches!(
        at(10.0, 99.0, 99.0),
        Decision::Respond { status: 503, .. }
    ));
    let Decision::Forward(f) = at(60.0, 10.0, 5.0) else {
        panic!()
    };
    assert_eq!(f.delay, Some(Duration::from_secs(2)));
    assert_eq!(f.mirrors.len(), 1);
    assert_eq!(f.mirrors[0].host, "shadow.edge.svc.cluster.local");
    let Decision::Forward(f) = at(60.0, 30.0, 50.0) else {
        panic!()
    };
    assert_eq!((f.delay, f.mirrors.len()), (None, 0));
    // Istio's default retries when none are written.
    let catch_all = req("fhir.example.com", "/x");
    let Decision::Forward(f) = edge.decide(&catch_all.facts(), Rolls::default()) else {
        panic!()
    };
    assert_eq!(f.route.retries.attempts, 2);
    assert_eq!(
        f.route.headers.request.set,
        [("x-route".into(), "catch-all".into())]
    );
    assert_eq!(f.route.headers.request.remove, ["x-internal"]);
    assert_eq!(
        f.route.headers.response.add,
        [("x-served-by".into(), "ward".into())]
    );
}

#[test]
fn mesh_routes_use_short_hosts_source_labels_and_gateway_matches() {
    let (edge, mesh) = tables();
    let mut from_web = req("notes.records.svc.cluster.local:8080", "/n");
    from_web.gateway = "mesh";
    from_web.labels = [("app".to_owned(), "web".to_owned())].into();
    from_web.namespace = Some("frontend");
    let mut other = req("notes.records.svc.cluster.local", "/n");
    other.gateway = "mesh";
    assert_eq!(
        outcome(&mesh.decide(&from_web.facts(), Rolls::default())),
        "-> notes.records.svc.cluster.local/web notes.records.svc.cluster.local:8080 /n (-)"
    );
    assert_eq!(
        outcome(&mesh.decide(&other.facts(), Rolls::default())),
        "-> notes.records.svc.cluster.local notes.records.svc.cluster.local /n (-)"
    );
    // The gateway's VirtualService is not bound to the mesh, and the mesh one not to the
    // gateway.
    assert_eq!(
        outcome(&mesh.decide(&req("fhir.example.com", "/").facts(), Rolls::default())),
        "404 NR"
    );
    assert_eq!(
        outcome(&edge.decide(
            &req("notes.records.svc.cluster.local", "/").facts(),
            Rolls::default()
        )),
        "404 NR"
    );
}

#[test]
fn envoy_capture_references_become_regex_crate_ones() {
    assert_eq!(envoy_replacement(r"/a/\1/b/\12"), "/a/${1}/b/${12}");
    assert_eq!(envoy_replacement("/cost$5"), "/cost$$5");
}

#[test]
fn host_selection_prefers_exact_then_longest_wildcard() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: n}
spec:
  hosts: ["*"]
  gateways: [gw]
  http: [{name: any, route: [{destination: {host: any}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b, namespace: n}
spec:
  hosts: ["*.example.com", "*.eu.example.com", "exact.eu.example.com"]
  gateways: [gw]
  http: [{name: b, route: [{destination: {host: b}}]}]
"#;
    let set = crate::load_str("vs.yaml", yaml).unwrap();
    let vss: Vec<&Resource<VirtualServiceSpec>> = set.virtual_services.iter().collect();
    let t = HttpRoutes::compile(&vss, "n/gw").unwrap();
    let name = |host: &'static str| match t.decide(&req(host, "/").facts(), Rolls::default()) {
        Decision::Forward(f) => f.route.source.name.clone().unwrap(),
        d => panic!("{d:?}"),
    };
    assert_eq!(name("x.eu.example.com"), "b");
    assert_eq!(name("exact.eu.example.com"), "b");
    assert_eq!(name("example.com"), "any");
    assert_eq!(name("elsewhere.org"), "any");
}

#[test]
fn a_sidecar_routes_by_the_service_host_and_matches_the_request_as_sent() {
    let (_, mesh) = tables();
    assert!(mesh.covers("notes.records.svc.cluster.local"));
    assert!(!mesh.covers("other.records.svc.cluster.local"));
    // The app used a short name; the service it named decides the virtual host.
    let mut short = req("notes:8080", "/n");
    short.gateway = "mesh";
    assert_eq!(
        outcome(&mesh.decide_for(
            "notes.records.svc.cluster.local",
            &short.facts(),
            Rolls::default()
        )),
        "-> notes.records.svc.cluster.local notes:8080 /n (-)"
    );
    assert_eq!(
        outcome(&mesh.decide_for(
            "other.records.svc.cluster.local",
            &short.facts(),
            Rolls::default()
        )),
        "404 NR"
    );
}

#[test]
fn fault_aborts_are_told_from_direct_responses() {
    let (edge, _) = tables();
    let aborted = edge.decide(
        &req("fhir.example.com", "/chaos").facts(),
        Rolls {
            abort: 0.0,
            ..Rolls::default()
        },
    );
    assert!(matches!(
        aborted,
        Decision::Respond {
            abort: true,
            status: 503,
            ..
        }
    ));
    let direct = edge.decide(
        &req("fhir.example.com", "/fhir/metadata").facts(),
        Rolls::default(),
    );
    assert!(matches!(
        direct,
        Decision::Respond {
            abort: false,
            status: 200,
            ..
        }
    ));
}

#[test]
fn cors_answers_preflights_and_decorates_allowed_origins() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cors, namespace: n}
spec:
  hosts: [api]
  http:
  - name: forward
    match: [{uri: {prefix: /f}}]
    corsPolicy:
      allowOrigins: [{exact: "https://app.example.com"}, {regex: "https://.*\\.dev\\.example\\.com"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-token]
      exposeHeaders: [x-trace]
      maxAge: 24h
      allowCredentials: true
    route: [{destination: {host: api}}]
  - name: ignore
    corsPolicy:
      allowOrigins: [{exact: "*"}]
      unmatchedPreflights: IGNORE
    route: [{destination: {host: api}}]
"#;
    let set = crate::load_str("cors.yaml", yaml).unwrap();
    let vss: Vec<&Resource<VirtualServiceSpec>> = set.virtual_services.iter().collect();
    let mesh = HttpRoutes::compile(&vss, "mesh").unwrap();
    let cors = |path: &'static str| {
        let mut r = req("api.n.svc.cluster.local", path);
        r.gateway = "mesh";
        match mesh.decide(&r.facts(), Rolls::default()) {
            Decision::Forward(f) => f.route.cors.clone().unwrap(),
            other => panic!("{other:?}"),
        }
    };
    let f = cors("/f");
    let origin = "https://app.example.com";
    assert_eq!(
        f.answer("OPTIONS", Some(origin), Some("POST")),
        CorsAnswer::Preflight(vec![
            ("access-control-allow-origin", origin.to_owned()),
            ("access-control-allow-credentials", "true".to_owned()),
            ("access-control-allow-methods", "GET,POST".to_owned()),
            ("access-control-allow-headers", "x-token".to_owned()),
            ("access-control-max-age", "86400".to_owned()),
        ])
    );
    assert_eq!(
        f.answer("GET", Some("https://a.dev.example.com"), None),
        CorsAnswer::Decorate(vec![
            (
                "access-control-allow-origin",
                "https://a.dev.example.com".to_owned()
            ),
            ("access-control-allow-credentials", "true".to_owned()),
            ("access-control-expose-headers", "x-trace".to_owned()),
        ])
    );
    // Not allowed: forwarded untouched (FORWARD is the default); no Origin: not CORS.
    assert_eq!(
        f.answer("OPTIONS", Some("https://evil.com"), Some("GET")),
        CorsAnswer::Pass
    );
    assert_eq!(
        f.answer("GET", Some("https://evil.com"), None),
        CorsAnswer::Pass
    );
    assert_eq!(f.answer("GET", None, None), CorsAnswer::Pass);
    let any = cors("/other");
    assert!(matches!(
        any.answer("GET", Some("https://x"), None),
        CorsAnswer::Decorate(_)
    ));
}
