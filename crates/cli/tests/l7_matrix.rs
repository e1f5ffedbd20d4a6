//! The L7 matrix: every AuthorizationPolicy matcher kind and every `when` key that
//! does not need a JWT, through the real mesh (curl → cli/oth sidecar → HBONE → srv sidecar →
//! nginx), each with a request that is allowed (200 from nginx) and one that is refused (403
//! `RBAC: access denied` from srv's sidecar). Groups of rows share one ward: the policy is
//! hot-reloaded between groups. The unit corpus this mirrors is
//! crates/policy/tests/corpus/l7_{operations,paths,when}.yaml.
//!
//! Not here: `requestPrincipals`/`notRequestPrincipals` and the `request.auth.*` keys need a
//! JWT and an IdP; crates/cli/tests/jwt.rs covers them.
//!
//! Skips visibly without nginx/curl; CI installs them and requires every test.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{docs, mesh_pa, Mesh};
use ward_test_support::{have, skip_or_fail, Nginx, Ward};

/// nginx as srv's app; the body proves which request it served.
fn start_nginx(port: u16) -> Nginx {
    Nginx::start(port, "method=$request_method uri=$request_uri").unwrap()
}

/// Whether this machine can run the matrix; prints the skip (or fails under CI) if not.
fn tools_present(test: &str) -> bool {
    if have("nginx") && have("curl") {
        return true;
    }
    skip_or_fail(
        test,
        "nginx and curl are needed (apt-get install nginx curl)",
    );
    false
}

/// Which client workload sends the request.
#[derive(Clone, Copy, Debug)]
enum Client {
    /// `cli`: ns app, sa cli, 127.1.<block>.1.
    Cli,
    /// `oth`: ns other, sa oth, 127.1.<block>.2.
    Oth,
}

/// One request through the mesh and the status it must get.
#[derive(Clone, Debug)]
struct Row {
    what: &'static str,
    from: Client,
    method: &'static str,
    path: &'static str,
    /// Extra request headers, `name: value`, in order (repeats allowed).
    headers: Vec<&'static str>,
    /// HTTP/2 with prior knowledge instead of HTTP/1.1.
    h2: bool,
    want: u16,
}

/// A GET from cli.
fn row(what: &'static str, path: &'static str, want: u16) -> Row {
    Row {
        what,
        from: Client::Cli,
        method: "GET",
        path,
        headers: Vec::new(),
        h2: false,
        want,
    }
}

impl Row {
    fn method(self, method: &'static str) -> Row {
        Row { method, ..self }
    }
    fn header(mut self, h: &'static str) -> Row {
        self.headers.push(h);
        self
    }
    fn from(self, from: Client) -> Row {
        Row { from, ..self }
    }
    fn h2(self) -> Row {
        Row { h2: true, ..self }
    }
}

/// Policies applied together (hot reload), then the rows checked against them.
struct Group {
    name: &'static str,
    policies: Vec<String>,
    rows: Vec<Row>,
}

/// An AuthorizationPolicy on srv: `action` and `rules` (YAML flow style, as in the corpus).
fn ap(name: &str, action: &str, rules: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: app\nspec:\n  selector:\n    matchLabels:\n      app: srv\n  action: {action}\n  rules: {rules}\n"
    )
}

/// The same policy annotated `istio.io/dry-run: "true"`.
fn ap_dry_run(name: &str, action: &str, rules: &str) -> String {
    ap(name, action, rules).replace(
        "  namespace: app\nspec:",
        "  namespace: app\n  annotations:\n    istio.io/dry-run: \"true\"\nspec:",
    )
}

/// srv under STRICT mTLS with `policies`.
fn security(policies: &[String]) -> String {
    let mut all = vec![mesh_pa("STRICT")];
    all.extend(policies.iter().cloned());
    docs(&all)
}

/// Replace security.yaml and wait until the control plane applied it. The control plane sends
/// the new config to every proxy's watch channel before it bumps `generation`, and each curl
/// opens a new connection, so the next request is decided under the new policy.
fn apply(ward: &Ward, security: &str) {
    let status = || ward.admin_json("/config_dump").unwrap()["status"].clone();
    let before = status();
    ward.write_config("security.yaml", security).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let now = status();
        assert_eq!(
            now["rejections"], before["rejections"],
            "policy rejected: {}\n{security}",
            now["last_rejection"]
        );
        if now["generation"].as_u64() > before["generation"].as_u64() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("config not applied; log:\n{}", ward.logs());
}

/// Send one row's request with curl; returns (status code, body). One URL per curl call: curl
/// 7.88 cannot reuse an h2c connection.
fn send(mesh: &Mesh, r: &Row) -> (u16, String) {
    let via = match r.from {
        Client::Cli => mesh.via_cli(),
        Client::Oth => mesh.via_oth(),
    };
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--path-as-is"])
        .args(["-o", "-", "-w", "\n%{http_code}"])
        .args(["-X", r.method]);
    if r.h2 {
        cmd.arg("--http2-prior-knowledge");
    }
    for h in &r.headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(format!("http://{via}{}", r.path)).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Whether the answer is the one the row wants: nginx's body for 200 (so the app served
/// exactly this request), the sidecar's RBAC body for 403.
fn answer_ok(r: &Row, code: u16, body: &str) -> bool {
    code == r.want
        && match code {
            200 => body.starts_with(&format!("method={} uri={}\n", r.method, r.path)),
            403 => body == "RBAC: access denied",
            _ => true,
        }
}

/// Run every group on one ward (hot reload between groups); fail once, listing every row that
/// got the wrong answer.
fn run_matrix(test: &str, block: u8, groups: &[Group]) {
    let mesh = Mesh::with_own_app(block).http();
    let _nginx = start_nginx(mesh.app_port);
    let ward = mesh.up(&security(&groups[0].policies), &[]);
    let mut failures = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        if i > 0 {
            apply(&ward, &security(&g.policies));
        }
        for r in &g.rows {
            let (code, body) = send(&mesh, r);
            let ok = answer_ok(r, code, &body);
            println!(
                "{test} [{}] {}: {} (want {}, got {code})",
                g.name,
                r.what,
                if ok { "pass" } else { "FAIL" },
                r.want
            );
            if !ok {
                failures.push(format!(
                    "[{}] {}: {r:?}\n  got {code}: {body:?}",
                    g.name, r.what
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} row(s) failed:\n{}\nward log:\n{}",
        failures.len(),
        failures.join("\n"),
        ward.logs()
    );
}

/// to.operation: hosts, methods, paths, ports and their `not` forms.
fn operation_groups() -> Vec<Group> {
    use Client::Oth;
    vec![
        Group {
            name: "ALLOW hosts",
            policies: vec![ap(
                "hosts",
                "ALLOW",
                r#"[{to: [{operation: {hosts: [srv.app, "*.example.com", "api.app:*"]}}]}]"#,
            )],
            rows: vec![
                row("exact host", "/h", 200).header("Host: srv.app"),
                row("host is case-insensitive", "/h", 200).header("Host: SRV.App"),
                row("suffix host", "/h", 200).header("Host: api.example.com"),
                row("host:* covers a port", "/h", 200).header("Host: api.app:9000"),
                row("ALLOW host is compared with the port, as Istio", "/h", 403)
                    .header("Host: srv.app:9000"),
                row("host:* needs a port", "/h", 403).header("Host: api.app"),
                row("other host", "/h", 403).header("Host: evil.app"),
                row("the default Host (the egress address)", "/h", 403),
                row("h2 :authority from Host", "/h2", 200)
                    .header("Host: srv.app")
                    .h2(),
            ],
        },
        Group {
            name: "DENY hosts",
            policies: vec![ap(
                "no-secret",
                "DENY",
                "[{to: [{operation: {hosts: [secret.app]}}]}]",
            )],
            rows: vec![
                row("denied host", "/h", 403).header("Host: secret.app"),
                row("DENY host also matches with a port", "/h", 403)
                    .header("Host: Secret.App:9000"),
                row("other host", "/h", 200).header("Host: public.app:9000"),
            ],
        },
        Group {
            name: "ALLOW notHosts",
            policies: vec![ap(
                "not-evil",
                "ALLOW",
                "[{to: [{operation: {notHosts: [evil.app]}}]}]",
            )],
            rows: vec![
                row("excluded host", "/h", 403).header("Host: evil.app"),
                // Stricter than Istio's exact comparison: in ALLOW, a notHosts value also
                // excludes the host with a port.
                row("excluded host with a port", "/h", 403).header("Host: evil.app:9000"),
                row("other host", "/h", 200).header("Host: srv.app"),
            ],
        },
        Group {
            name: "DENY notHosts",
            policies: vec![ap(
                "only-srv",
                "DENY",
                r#"[{to: [{operation: {notHosts: [srv.app, "srv.app:*"]}}]}]"#,
            )],
            rows: vec![
                row("listed host", "/h", 200).header("Host: srv.app"),
                row("listed host:port", "/h", 200).header("Host: srv.app:9000"),
                row("unlisted host", "/h", 403).header("Host: other.app"),
            ],
        },
        Group {
            name: "ALLOW methods",
            policies: vec![ap(
                "get-patch",
                "ALLOW",
                "[{to: [{operation: {methods: [GET, PATCH]}}]}]",
            )],
            rows: vec![
                row("GET", "/m", 200),
                row("PATCH", "/m", 200).method("PATCH"),
                row("POST", "/m", 403).method("POST"),
                // Matching is case-sensitive, and a method with a lower-case letter never
                // reaches matching: servers that upper-case it would serve GET (docs/http.md).
                row("lower-case methods are refused", "/m", 400).method("get"),
                row("lower-case methods are refused over h2", "/m2", 400)
                    .method("get")
                    .h2(),
                row("h2 GET", "/m2", 200).h2(),
                row("h2 POST", "/m2", 403).method("POST").h2(),
            ],
        },
        Group {
            name: "DENY notMethods",
            policies: vec![ap(
                "read-only",
                "DENY",
                "[{to: [{operation: {notMethods: [GET, OPTIONS]}}]}]",
            )],
            rows: vec![
                row("GET", "/m", 200),
                row("OPTIONS", "/m", 200).method("OPTIONS"),
                row("PUT", "/m", 403).method("PUT"),
                row("DELETE from oth", "/m", 403).method("DELETE").from(Oth),
            ],
        },
        Group {
            name: "ALLOW paths",
            policies: vec![ap(
                "paths",
                "ALLOW",
                r#"[{to: [{operation: {paths: [/exact]}}]}, {to: [{operation: {paths: ["*.txt"]}}]}, {to: [{operation: {paths: ["/api/{*}/items"]}}]}, {to: [{operation: {paths: ["/files/{**}/meta"]}}]}, {to: [{operation: {paths: ["/prefix/*"], notPaths: ["/prefix/private*"]}}]}]"#,
            )],
            rows: vec![
                row("exact", "/exact", 200),
                row("exact does not match a longer path", "/exactly", 403),
                row("suffix", "/docs/readme.txt", 200),
                row("suffix ignores the query", "/docs/readme.txt?dl=1", 200),
                row("suffix, other extension", "/docs/readme.md", 403),
                row("{*} one segment", "/api/v2/items", 200),
                row("{*} not two segments", "/api/v2/x/items", 403),
                row("{**} several segments", "/files/a/b/c/meta", 200),
                row("{**} needs the literal tail", "/files/a/b/c/data", 403),
                row("prefix", "/prefix/public", 200),
                row("prefix with notPaths excluded", "/prefix/private/key", 403),
                row("paths are case-sensitive", "/EXACT", 403),
                row("h2 {**}", "/files/x/meta", 200).h2(),
            ],
        },
        Group {
            name: "DENY paths",
            policies: vec![ap(
                "no-admin",
                "DENY",
                r#"[{to: [{operation: {paths: ["/admin*", "/v1/{*}/secret"]}}]}]"#,
            )],
            rows: vec![
                row("prefix", "/admin/users", 403),
                row("prefix after normalization", "//admin/../admin/x", 403),
                row("{*}", "/v1/a/secret", 403),
                row("{*} is one segment", "/v1/a/b/secret", 200),
                row("not the prefix", "/adm", 200),
                row("h2 {*}", "/v1/b/secret", 403).h2(),
            ],
        },
        Group {
            name: "DENY notPaths",
            policies: vec![ap(
                "public-only",
                "DENY",
                r#"[{to: [{operation: {notPaths: ["/public/*", /health]}}]}]"#,
            )],
            rows: vec![
                row("prefix", "/public/a", 200),
                row("exact", "/health", 200),
                row("other path", "/private", 403),
                row("exact is not a prefix", "/healthz", 403),
            ],
        },
        Group {
            // The only way to refuse on a port: the POST rule names a port srv does not get.
            name: "ALLOW ports",
            policies: vec![ap(
                "ports",
                "ALLOW",
                r#"[{to: [{operation: {ports: ["9000"], methods: [GET]}}]}, {to: [{operation: {ports: ["9001"], methods: [POST]}}]}]"#,
            )],
            rows: vec![
                row("GET on 9000", "/p", 200),
                row("POST needs port 9001", "/p", 403).method("POST"),
            ],
        },
        Group {
            name: "DENY notPorts",
            policies: vec![ap(
                "not-ports",
                "DENY",
                r#"[{to: [{operation: {notPorts: ["9001"], methods: [DELETE]}}]}, {to: [{operation: {notPorts: ["9000"], methods: [PUT]}}]}]"#,
            )],
            rows: vec![
                row("DELETE: 9000 is not 9001", "/p", 403).method("DELETE"),
                row("PUT: port 9000 is excluded", "/p", 200).method("PUT"),
            ],
        },
    ]
}

#[test]
fn l7_matrix_operations() {
    if tools_present("l7_matrix_operations") {
        run_matrix("operations", 30, &operation_groups());
    }
}

/// from.source: principals, namespaces, ipBlocks, remoteIpBlocks and their `not` forms.
/// (requestPrincipals / notRequestPrincipals: JWT test file.)
fn source_groups(block: u8) -> Vec<Group> {
    use Client::{Cli, Oth};
    let both = |want_cli: u16, want_oth: u16| {
        vec![
            row("cli (app/cli, .1)", "/s", want_cli).from(Cli),
            row("oth (other/oth, .2)", "/s", want_oth).from(Oth),
        ]
    };
    let source =
        |field: &str, value: &str| format!("[{{from: [{{source: {{{field}: [\"{value}\"]}}}}]}}]");
    vec![
        Group {
            name: "ALLOW principals",
            policies: vec![ap(
                "p",
                "ALLOW",
                &source("principals", "cluster.local/ns/other/sa/oth"),
            )],
            rows: both(403, 200),
        },
        Group {
            name: "DENY notPrincipals",
            policies: vec![ap(
                "p",
                "DENY",
                &source("notPrincipals", "cluster.local/ns/app/*"),
            )],
            rows: both(200, 403),
        },
        Group {
            name: "ALLOW namespaces",
            policies: vec![ap("n", "ALLOW", &source("namespaces", "app"))],
            rows: both(200, 403),
        },
        Group {
            name: "DENY notNamespaces",
            policies: vec![ap("n", "DENY", &source("notNamespaces", "other"))],
            rows: both(403, 200),
        },
        Group {
            name: "ALLOW ipBlocks",
            policies: vec![ap(
                "ip",
                "ALLOW",
                &source("ipBlocks", &format!("127.1.{block}.2")),
            )],
            rows: both(403, 200),
        },
        Group {
            name: "DENY notIpBlocks",
            policies: vec![ap(
                "ip",
                "DENY",
                &source("notIpBlocks", &format!("127.1.{block}.0/31")),
            )],
            rows: both(200, 403),
        },
        Group {
            name: "ALLOW remoteIpBlocks",
            policies: vec![ap(
                "rip",
                "ALLOW",
                &source("remoteIpBlocks", &format!("127.1.{block}.1/32")),
            )],
            rows: both(200, 403),
        },
        Group {
            name: "DENY notRemoteIpBlocks",
            policies: vec![ap(
                "rip",
                "DENY",
                &source("notRemoteIpBlocks", &format!("127.1.{block}.2")),
            )],
            rows: both(403, 200),
        },
    ]
}

#[test]
fn l7_matrix_sources() {
    if tools_present("l7_matrix_sources") {
        run_matrix("sources", 31, &source_groups(31));
    }
}

/// `when`: request.headers, source.ip, remote.ip, source.namespace, source.principal,
/// destination.ip, destination.port, connection.sni. (request.auth.*: JWT test file.)
fn when_groups(block: u8) -> Vec<Group> {
    use Client::{Cli, Oth};
    let both = |want_cli: u16, want_oth: u16| {
        vec![
            row("cli (app/cli, .1)", "/w", want_cli).from(Cli),
            row("oth (other/oth, .2)", "/w", want_oth).from(Oth),
        ]
    };
    let when = |key: &str, form: &str, value: &str| {
        format!("[{{when: [{{key: \"{key}\", {form}: [\"{value}\"]}}]}}]")
    };
    // Two rules told apart by path: /a needs `values`, /b needs `notValues`, on the same key.
    let split = |key: &str, value: &str| {
        format!(
            "[{{to: [{{operation: {{paths: [/a]}}}}], when: [{{key: {key}, values: [\"{value}\"]}}]}}, {{to: [{{operation: {{paths: [/b]}}}}], when: [{{key: {key}, notValues: [\"{value}\"]}}]}}]"
        )
    };
    vec![
        Group {
            name: "DENY request.headers values",
            policies: vec![ap(
                "no-admin-role",
                "DENY",
                &when("request.headers[x-role]", "values", "admin"),
            )],
            rows: vec![
                row("value matches", "/w", 403).header("x-role: admin"),
                row("other value", "/w", 200).header("x-role: user"),
                row("values are case-sensitive", "/w", 200).header("x-role: ADMIN"),
                row("absent header", "/w", 200),
                row("repeated, forbidden first (CVE-2021-32777)", "/w", 403)
                    .header("x-role: admin")
                    .header("x-role: user"),
                row("repeated, forbidden last (CVE-2026-26308)", "/w", 403)
                    .header("x-role: user")
                    .header("X-Role: admin"),
                row("h2 repeated, forbidden last", "/w", 403)
                    .header("x-role: user")
                    .header("x-role: admin")
                    .h2(),
            ],
        },
        Group {
            name: "ALLOW request.headers notValues",
            policies: vec![ap(
                "not-banned",
                "ALLOW",
                r#"[{when: [{key: "request.headers[x-user]", notValues: [banned, "evil*"]}]}]"#,
            )],
            rows: vec![
                row("allowed value", "/w", 200).header("x-user: alice"),
                row("absent header", "/w", 200),
                row("forbidden value", "/w", 403).header("x-user: banned"),
                row("repeated, one forbidden", "/w", 403)
                    .header("x-user: alice")
                    .header("x-user: evil-bob"),
                row("repeated, none forbidden", "/w", 200)
                    .header("x-user: alice")
                    .header("x-user: carol"),
            ],
        },
        Group {
            name: "ALLOW request.headers values (never joined)",
            policies: vec![ap(
                "joined",
                "ALLOW",
                r#"[{when: [{key: "request.headers[x-role]", values: ["user,admin", "user, admin", viewer]}]}]"#,
            )],
            rows: vec![
                row("value matches", "/w", 200).header("x-role: viewer"),
                row("repeated values are not joined", "/w", 403)
                    .header("x-role: user")
                    .header("x-role: admin"),
            ],
        },
        Group {
            name: "ALLOW source.ip values",
            policies: vec![ap(
                "sip",
                "ALLOW",
                &when("source.ip", "values", &format!("127.1.{block}.1")),
            )],
            rows: both(200, 403),
        },
        Group {
            name: "DENY source.ip notValues",
            policies: vec![ap(
                "sip",
                "DENY",
                &when("source.ip", "notValues", &format!("127.1.{block}.0/31")),
            )],
            rows: both(200, 403),
        },
        Group {
            name: "DENY remote.ip values",
            policies: vec![ap(
                "rip",
                "DENY",
                &when("remote.ip", "values", &format!("127.1.{block}.2/32")),
            )],
            rows: both(200, 403),
        },
        Group {
            name: "ALLOW remote.ip notValues",
            policies: vec![ap(
                "rip",
                "ALLOW",
                &when("remote.ip", "notValues", &format!("127.1.{block}.1")),
            )],
            rows: both(403, 200),
        },
        Group {
            name: "ALLOW source.namespace values",
            policies: vec![ap(
                "sns",
                "ALLOW",
                &when("source.namespace", "values", "other"),
            )],
            rows: both(403, 200),
        },
        Group {
            name: "DENY source.namespace notValues",
            policies: vec![ap(
                "sns",
                "DENY",
                &when("source.namespace", "notValues", "app"),
            )],
            rows: both(200, 403),
        },
        Group {
            name: "DENY source.principal values",
            policies: vec![ap(
                "sp",
                "DENY",
                &when(
                    "source.principal",
                    "values",
                    "cluster.local/ns/other/sa/oth",
                ),
            )],
            rows: both(200, 403),
        },
        Group {
            name: "ALLOW source.principal notValues",
            policies: vec![ap(
                "sp",
                "ALLOW",
                &when("source.principal", "notValues", "*/sa/oth"),
            )],
            rows: both(200, 403),
        },
        Group {
            name: "ALLOW destination.ip",
            policies: vec![ap(
                "dip",
                "ALLOW",
                &split("destination.ip", &format!("127.1.{block}.10")),
            )],
            rows: vec![
                row("values: srv's address", "/a", 200),
                row("notValues: srv's address", "/b", 403),
            ],
        },
        Group {
            name: "DENY destination.port",
            policies: vec![ap("dport", "DENY", &split("destination.port", "9000"))],
            rows: vec![
                row("values: 9000", "/a", 403),
                row("notValues: 9000", "/b", 200),
                row("h2 values: 9000", "/a", 403).h2(),
            ],
        },
        Group {
            // No SNI reaches srv's HTTP decision through the mesh. The engine matches Envoy's
            // `requested_server_name`, empty without SNI (crates/policy/src/l4.rs; corpus
            // matching.yaml "when connection.sni absent never matches a value"), and `*` does
            // not match the empty string: `values` never holds, `notValues` always does.
            name: "ALLOW connection.sni (absent)",
            policies: vec![ap("sni", "ALLOW", &split("connection.sni", "*"))],
            rows: vec![
                row("values: any SNI", "/a", 403),
                row("notValues: any SNI", "/b", 200),
            ],
        },
    ]
}

#[test]
fn l7_matrix_when() {
    if tools_present("l7_matrix_when") {
        run_matrix("when", 32, &when_groups(32));
    }
}

/// Comma-joined header values (RFC 9110 §5.3: `x-role: user,admin` on one line is the same list
/// as two lines). A DENY `values` entry also matches each element of a line, and so does an
/// ALLOW `notValues` entry; an ALLOW `values` entry and a DENY `notValues` entry still compare
/// the whole line, so splitting never lets more through (docs/http.md, the rule table).
fn comma_groups() -> Vec<Group> {
    vec![
        Group {
            name: "DENY request.headers values, comma-joined",
            policies: vec![ap(
                "no-admin-role",
                "DENY",
                r#"[{when: [{key: "request.headers[x-role]", values: [admin]}]}]"#,
            )],
            rows: vec![
                row("one value", "/c", 403).header("x-role: admin"),
                row("joined, no space", "/c", 403).header("x-role: user,admin"),
                row("joined, space", "/c", 403).header("x-role: user, admin"),
                row("joined, forbidden first, tab", "/c", 403).header("x-role: admin\t,user"),
                row("joined with a repeated line", "/c", 403)
                    .header("x-role: viewer")
                    .header("x-role: user , admin"),
                row("h2 joined", "/c", 403)
                    .header("x-role: user, admin")
                    .h2(),
                row("an element must match whole", "/c", 200).header("x-role: user, administrator"),
                row("other values", "/c", 200).header("x-role: user, viewer"),
            ],
        },
        Group {
            name: "ALLOW request.headers notValues, comma-joined",
            policies: vec![ap(
                "not-banned",
                "ALLOW",
                r#"[{when: [{key: "request.headers[x-user]", notValues: [banned, "evil*"]}]}]"#,
            )],
            rows: vec![
                row("joined, one excluded", "/c", 403).header("x-user: alice, banned"),
                row("joined, prefix excluded", "/c", 403).header("x-user: alice,evil-bob"),
                row("h2 joined, one excluded", "/c", 403)
                    .header("x-user: alice, banned")
                    .h2(),
                row("joined, none excluded", "/c", 200).header("x-user: alice, carol"),
            ],
        },
        Group {
            // Not split: `guest,admin` must not satisfy ALLOW `admin`.
            name: "ALLOW request.headers values, never split",
            policies: vec![ap(
                "admins",
                "ALLOW",
                r#"[{when: [{key: "request.headers[x-role]", values: [admin]}]}]"#,
            )],
            rows: vec![
                row("one value", "/c", 200).header("x-role: admin"),
                row("joined is not admin", "/c", 403).header("x-role: guest,admin"),
                row("joined with a space is not admin", "/c", 403).header("x-role: guest, admin"),
            ],
        },
        Group {
            // Not split: `user,admin` is not the value `admin`, so DENY notValues still denies.
            name: "DENY request.headers notValues, never split",
            policies: vec![ap(
                "admins-only",
                "DENY",
                r#"[{when: [{key: "request.headers[x-role]", notValues: [admin]}]}]"#,
            )],
            rows: vec![
                row("admin", "/c", 200).header("x-role: admin"),
                row("joined is not admin", "/c", 403).header("x-role: user,admin"),
            ],
        },
    ]
}

#[test]
fn l7_comma_joined_header_values() {
    if tools_present("l7_comma_joined_header_values") {
        run_matrix("comma", 37, &comma_groups());
    }
}

/// A DENY policy annotated `istio.io/dry-run: "true"` is evaluated and logged, never enforced.
#[test]
fn l7_dry_run_deny_is_logged_not_enforced() {
    if !tools_present("l7_dry_run_deny_is_logged_not_enforced") {
        return;
    }
    let rules = "[{to: [{operation: {methods: [DELETE], paths: [\"/dry/*\"]}}]}]";
    let groups = [
        // Control: the same policy without the annotation denies, so the 200 below is the
        // annotation's doing.
        Group {
            name: "DENY enforced",
            policies: vec![ap("dry-deny", "DENY", rules)],
            rows: vec![
                row("DELETE", "/dry/x", 403).method("DELETE"),
                row("GET", "/dry/x", 200),
            ],
        },
        Group {
            name: "DENY dry-run",
            policies: vec![ap_dry_run("dry-deny", "DENY", rules)],
            rows: vec![
                row("DELETE", "/dry/y", 200).method("DELETE"),
                row("h2 DELETE", "/dry/z", 200).method("DELETE").h2(),
            ],
        },
    ];
    let mesh = Mesh::with_own_app(33).http();
    let _nginx = start_nginx(mesh.app_port);
    let ward = mesh.up(&security(&groups[0].policies), &[]);
    for (i, g) in groups.iter().enumerate() {
        if i > 0 {
            apply(&ward, &security(&g.policies));
        }
        for r in &g.rows {
            let (code, body) = send(&mesh, r);
            assert!(
                answer_ok(r, code, &body),
                "[{}] {}: want {}, got {code}: {body:?}\nlog:\n{}",
                g.name,
                r.what,
                r.want,
                ward.logs()
            );
        }
    }
    let note = ward
        .wait_for_log(
            &[
                ("target", "audit"),
                ("message", "dry-run"),
                ("policy", "dry-deny"),
            ],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(note["would"], "Deny", "{note}");
}
