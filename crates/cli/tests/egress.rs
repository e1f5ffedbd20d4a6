//! Egress end to end (docs/egress.md): a workload whose app reaches the outside only through
//! its sidecar's explicit forward proxy (Sidecar egress `port.protocol: HTTP_PROXY`), under
//! Ward's default `outboundTrafficPolicy` REGISTRY_ONLY, then ALLOW_ANY.
//!
//! The "external" hosts are stand-ins on loopback (block 127.131.0.0/16): `quay.io` (a real
//! TLS server, `openssl s_server`, reached at a ServiceEntry STATIC endpoint), `open-emr.org`
//! and `*.docker.io` (HTTP apps, ServiceEntry `resolution: DNS`, resolved by a real `dnsmasq`
//! on 127.131.0.53:5353 that the mesh names in `meshConfig.dnsResolvers`), and `evil.example`
//! (resolvable, never registered). The clients are real: curl (`-x`, `-p`) and
//! `openssl s_client -proxy`.
//!
//! Needs curl, openssl and dnsmasq; otherwise prints `SKIPPED` (a failure under CI's
//! `WARD_E2E_REQUIRE_ALL=1`).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ward_test_support::{free_port, have, skip_or_fail, UpOptions, Ward};

const TEST: &str = "egress";
const PROXY: &str = "http://127.131.0.1:15080";
const DNS: &str = "127.131.0.53";

/// A small HTTP/1.1 app on `ip`: `i am <name> host=<Host> path=<target>`, one request per
/// connection.
fn start_app(name: &'static str, ip: &'static str) -> u16 {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve_app(name, conn));
        }
    });
    port
}

fn serve_app(name: &str, conn: TcpStream) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let target = request_line.split(' ').nth(1).unwrap_or("").to_owned();
    let mut host = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("host") {
                host = v.trim().to_owned();
            }
        }
    }
    let body = format!("i am {name} host={host} path={target}\n");
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// A process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A test CA and a server certificate for `quay.io`, made with openssl.
fn make_certs(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=egress test CA",
        "-days",
        "2",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=quay.io",
        "-keyout",
        "quay.key",
        "-out",
        "quay.csr",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:quay.io\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "quay.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "quay.crt",
    ]);
}

/// `openssl s_server` on 127.131.1.2:`port` with the quay.io certificate, answering `-www`.
fn start_tls_server(dir: &Path, port: u16) -> Killed {
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.131.1.2:{port}"))
        .args(["-cert", "quay.crt", "-key", "quay.key"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(&format!("127.131.1.2:{port}"));
    Killed(child)
}

/// dnsmasq on 127.131.0.53:5353: the stand-ins' names, a 300 s TTL, nothing else; its log
/// (each query) goes to `log`.
fn start_dnsmasq(log: &Path, open_emr_ip: &str) -> Killed {
    let child = Command::new("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--port=5353",
            "--local-ttl=300",
            "--log-queries",
            "--log-facility=-",
            "--user=root",
            "--address=/docker.io/127.131.1.4",
            "--address=/evil.example/127.131.1.9",
        ])
        .arg(format!("--listen-address={DNS}"))
        .arg(format!("--address=/open-emr.org/{open_emr_ip}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("started")
    {
        assert!(Instant::now() < deadline, "dnsmasq did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Killed(child)
}

fn wait_port(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mesh(tls_port: u16, http_port: u16, docker_port: u16, mode: &str) -> String {
    format!(
        r#"apiVersion: sailoperator.io/v1
kind: Istio
metadata: {{name: default}}
spec:
  values:
    meshConfig:
      dnsResolvers: ["{DNS}:5353"]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: openemr, namespace: clinic}}
spec: {{address: 127.131.0.1, serviceAccount: openemr, labels: {{app: openemr}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: quay, namespace: clinic}}
spec:
  hosts: [quay.io]
  location: MESH_EXTERNAL
  ports: [{{number: 443, name: tls, protocol: TLS, targetPort: {tls_port}}}]
  resolution: STATIC
  endpoints: [{{address: 127.131.1.2}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: openemr-org, namespace: clinic}}
spec:
  hosts: [open-emr.org]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {http_port}}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: docker, namespace: clinic}}
spec:
  hosts: ["*.docker.io"]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {docker_port}}}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: openemr, namespace: clinic}}
spec:
  workloadSelector: {{labels: {{app: openemr}}}}
  egress:
  - port: {{number: 15080, protocol: HTTP_PROXY, name: http-proxy}}
    bind: 127.131.0.1
    hosts: [./quay.io, ./open-emr.org, "./*.docker.io"]
{mode}"#
    )
}

/// curl through the proxy: (exit code, stdout, stderr).
fn curl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--noproxy", "", "-x", PROXY])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn forward_proxy_allows_registered_hosts_and_records_every_refusal() {
    for program in ["curl", "openssl", "dnsmasq"] {
        if !have(program) {
            return skip_or_fail(TEST, &format!("needs {program}"));
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    make_certs(dir);
    let tls_port = free_port();
    let _tls = start_tls_server(dir, tls_port);
    let http_port = start_app("openemr-org", "127.131.1.3");
    let docker_port = start_app("docker", "127.131.1.4");
    let dns_log = dir.join("dnsmasq.log");
    let _dns = start_dnsmasq(&dns_log, "127.131.1.3");
    // The unregistered host's app: what a request reaches under ALLOW_ANY.
    let evil_port = start_app("evil", "127.131.1.9");

    let admin = format!("127.131.0.1:{}", free_port());
    let ward = Ward::up(UpOptions {
        bin: env!("CARGO_BIN_EXE_ward"),
        admin: admin.parse().unwrap(),
        files: vec![("mesh.yaml", mesh(tls_port, http_port, docker_port, ""))],
        extra_args: vec![],
        env: vec![],
    })
    .unwrap();
    let dump = ward.admin_json("/config_dump").unwrap();
    assert_eq!(
        dump["snapshot"]["proxies"]["clinic/openemr"]["outboundTrafficPolicy"], "REGISTRY_ONLY",
        "Ward's default"
    );
    let log = |pairs: &[(&str, &str)]| {
        ward.wait_for_log(pairs, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}\n{}", ward.logs()))
    };

    // 1. CONNECT to a registered TLS host: the tunnel reaches the STATIC endpoint, and the
    // certificate is the real server's (TLS is end to end; the proxy never sees inside).
    let (code, body, err) = curl(&[
        "--cacert",
        dir.join("ca.crt").to_str().unwrap(),
        "https://quay.io/",
    ]);
    assert_eq!(code, 0, "{err}\n{}", ward.logs());
    assert!(body.contains("s_server"), "{body}");
    let rec = log(&[("requested.host", "quay.io"), ("dst.service", "quay.io")]);
    assert_eq!(rec["requested.port"], 443);
    assert_eq!(rec["requested.from"], "connect");
    assert_eq!(rec["dst.addr"], format!("127.131.1.2:{tls_port}"));

    // 2. Absolute-form HTTP to a DNS host: resolved by dnsmasq, sent on as origin-form.
    let (code, body, err) = curl(&["http://open-emr.org/wiki/Main?lang=en"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        body,
        "i am openemr-org host=open-emr.org path=/wiki/Main?lang=en\n"
    );
    let rec = log(&[
        ("requested.host", "open-emr.org"),
        ("requested.from", "uri"),
    ]);
    assert_eq!(rec["dst.addr"], format!("127.131.1.3:{http_port}"));
    // A wildcard host, resolved per name asked.
    let (code, body, _) = curl(&["http://registry-1.docker.io/v2/"]);
    assert_eq!(code, 0);
    assert_eq!(body, "i am docker host=registry-1.docker.io path=/v2/\n");
    // Cached for its TTL: the second request to the same name asks dnsmasq nothing new.
    let asked = || {
        std::fs::read_to_string(&dns_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("query[A] open-emr.org"))
            .count()
    };
    let before = asked();
    assert!(before >= 1, "dnsmasq asked nothing for open-emr.org");
    assert_eq!(curl(&["http://open-emr.org/again"]).0, 0);
    assert_eq!(asked(), before, "answered from the cache");

    // 3. CONNECT to an unregistered host: 502 from the proxy, recorded as evidence.
    let (code, _, err) = curl(&["https://evil.example/"]);
    assert_ne!(code, 0);
    assert!(err.contains("502"), "{err}");
    let rec = log(&[
        ("upstream_cluster", "BlackHoleCluster"),
        ("requested.host", "evil.example"),
        ("requested.port", "443"),
    ]);
    assert_eq!(rec["response_flags"], "NR");
    assert_eq!(
        rec["src.identity"],
        "spiffe://cluster.local/ns/clinic/sa/openemr"
    );
    assert_eq!(rec["src.workload"], "clinic/openemr");

    // 4. Absolute-form HTTP to an unregistered host: 502.
    let (code, body, _) = curl(&[
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        "http://evil.example/x",
    ]);
    assert_eq!((code, body.as_str()), (0, "502"));
    log(&[
        ("upstream_cluster", "BlackHoleCluster"),
        ("requested.host", "evil.example"),
        ("requested.port", "80"),
    ]);

    // 5. A spoofed Host never picks the destination: a registered URI with another Host is
    // refused (400), and the unregistered host's app sees nothing.
    let (_, body, _) = curl(&[
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        "-H",
        "Host: evil.example",
        "http://open-emr.org/",
    ]);
    assert_eq!(body, "400");
    // Inside a CONNECT tunnel to a registered host, a request naming another host: reset.
    let (code, _, _) = curl(&["-p", "-H", "Host: evil.example", "http://open-emr.org/"]);
    assert_ne!(code, 0, "a tunnelled request for another host must fail");
    log(&[
        ("requested.host", "evil.example"),
        ("requested.from", "host"),
        ("upstream_cluster", "BlackHoleCluster"),
    ]);

    // 6. A ClientHello whose SNI disagrees with the CONNECT target: reset, recorded.
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-proxy",
            "127.131.0.1:15080",
            "-connect",
            "quay.io:443",
        ])
        .args(["-servername", "evil.example", "-brief"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("CONNECTION ESTABLISHED"),
        "handshake must not complete: {stderr}"
    );
    let rec = log(&[
        ("requested.host", "evil.example"),
        ("requested.from", "sni"),
    ]);
    assert!(
        rec["error"]
            .as_str()
            .unwrap()
            .contains("disagrees with the CONNECT target"),
        "{rec}"
    );

    // 7. The metric counts each blocked attempt with who, where and how (the tunnelled request
    // of step 5 is the second `http` attempt on port 80).
    let metrics = ward_test_support::http_get(ward.admin, "/metrics")
        .unwrap()
        .1;
    for series in [
        r#"ward_egress_blocked_total{source_workload="clinic/openemr",source_namespace="clinic",host="evil.example",port="443",protocol="connect"} 1"#,
        r#"ward_egress_blocked_total{source_workload="clinic/openemr",source_namespace="clinic",host="evil.example",port="80",protocol="http"} 2"#,
        r#"ward_egress_blocked_total{source_workload="clinic/openemr",source_namespace="clinic",host="evil.example",port="443",protocol="tls"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series}\n{metrics}");
    }

    // 8. ALLOW_ANY (the Sidecar overrides the mesh): the unregistered host passes through.
    ward.write_config(
        "mesh.yaml",
        &mesh(
            tls_port,
            http_port,
            docker_port,
            "  outboundTrafficPolicy: {mode: ALLOW_ANY}\n",
        ),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dump = ward.admin_json("/config_dump").unwrap();
        if dump["snapshot"]["proxies"]["clinic/openemr"]["outboundTrafficPolicy"] == "ALLOW_ANY" {
            break;
        }
        assert!(Instant::now() < deadline, "reload not applied");
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = format!("http://evil.example:{evil_port}/open");
    let (code, body, err) = curl(&[&url]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        body,
        format!("i am evil host=evil.example:{evil_port} path=/open\n")
    );
    log(&[
        ("upstream_cluster", "PassthroughCluster"),
        ("requested.host", "evil.example"),
    ]);
}

/// `examples/egress/`, run as the README shows it: `ward up -f examples/egress/`, then
/// `examples/egress/try.sh`.
#[test]
fn the_openemr_allow_list_example_allows_three_hosts_and_logs_the_rest() {
    for program in ["curl", "openssl", "python3"] {
        if !have(program) {
            return skip_or_fail("egress_example", &format!("needs {program}"));
        }
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let dir = format!("{root}/examples/egress");
    let files = ward_test_support::yaml_files(&dir);
    let admin = format!("127.131.10.1:{}", free_port());
    let ward = Ward::up(UpOptions {
        bin: env!("CARGO_BIN_EXE_ward"),
        admin: admin.parse().unwrap(),
        files: files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect(),
        extra_args: vec![],
        env: vec![],
    })
    .unwrap();
    let out = Command::new("bash")
        .arg(format!("{dir}/try.sh"))
        .env("ADMIN", &admin)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let want = [
        ("allowed  https://quay.io/ ", "200"),
        ("allowed  http://registry-1.docker.io/v2/ ", "200"),
        ("allowed  http://open-emr.org/ ", "200"),
        ("blocked  https://exfil.example.net/", "502"),
        ("blocked  http://pastebin.com/ ", "502"),
        ("blocked  open-emr.org with Host", "400"),
    ];
    for (prefix, status) in want {
        let line = lines
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` line:\n{text}"));
        assert!(
            line.ends_with(&format!(": {status}")),
            "{line}\n{}",
            ward.logs()
        );
    }
    assert!(
        text.contains(r#"ward_egress_blocked_total{source_workload="openemr/openemr",source_namespace="openemr",host="exfil.example.net",port="443",protocol="connect"} 1"#),
        "{text}"
    );
    for host in ["exfil.example.net", "pastebin.com"] {
        let rec = ward
            .wait_for_log(
                &[
                    ("upstream_cluster", "BlackHoleCluster"),
                    ("requested.host", host),
                ],
                Duration::from_secs(5),
            )
            .unwrap();
        assert_eq!(
            rec["src.identity"],
            "spiffe://cluster.local/ns/openemr/sa/openemr"
        );
    }
}
