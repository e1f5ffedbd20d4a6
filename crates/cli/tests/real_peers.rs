//! End to end with real third-party peers: Debian's PostgreSQL (psql, pgbench) through the mesh,
//! and a tshark capture proving what crosses the wire between sidecars.
//! These skip with a visible message when the tools are missing; CI installs them and sets
//! WARD_E2E_REQUIRE_ALL=1 so a skip there is a failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{mesh_pa, Mesh};
use ward_test_support::{free_port, have, is_root, skip_or_fail, UpOptions, Ward};

fn pg_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .find(|d| d.join("initdb").exists() && d.join("postgres").exists())
}

/// Run a command as the `postgres` user when we are root (PostgreSQL refuses to run as root).
fn as_pg(bin: &Path, args: &[&str]) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.arg("-u").arg("postgres").arg("--").arg(bin).args(args);
        c
    } else {
        let mut c = Command::new(bin);
        c.args(args);
        c
    }
}

struct Postgres {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_postgres(bin: &Path, port: u16) -> Postgres {
    let dir = tempfile::Builder::new()
        .prefix("ward-pg")
        .tempdir_in("/tmp")
        .unwrap();
    let data = dir.path().join("data");
    let sock = dir.path().join("sock");
    std::fs::create_dir_all(&sock).unwrap();
    if is_root() {
        assert!(Command::new("chown")
            .arg("-R")
            .arg("postgres")
            .arg(dir.path())
            .status()
            .unwrap()
            .success());
    }
    let out = as_pg(
        &bin.join("initdb"),
        &[
            "-D",
            data.to_str().unwrap(),
            "--auth=trust",
            "-U",
            "postgres",
        ],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child = as_pg(
        &bin.join("postgres"),
        &[
            "-D",
            data.to_str().unwrap(),
            "-p",
            &port.to_string(),
            "-k",
            sock.to_str().unwrap(),
            "-c",
            "listen_addresses=127.0.0.1",
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "postgres did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    Postgres { child, _dir: dir }
}

fn db_mesh(block: u8, pg_port: u16) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: db, namespace: data}}
spec: {{address: 127.1.{block}.10, serviceAccount: postgres, labels: {{app: db}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: api, namespace: data}}
spec: {{address: 127.1.{block}.1, serviceAccount: api, labels: {{app: api}}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: db, namespace: data}}
spec:
  hosts: [db.data.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 5432, name: tcp-postgres, protocol: TCP}}]
  workloadSelector: {{labels: {{app: db}}}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: db, namespace: data}}
spec:
  workloadSelector: {{labels: {{app: db}}}}
  ingress:
  - port: {{number: 5432, name: tcp-postgres, protocol: TCP}}
    defaultEndpoint: 127.0.0.1:{pg_port}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: api, namespace: data}}
spec:
  workloadSelector: {{labels: {{app: api}}}}
  egress:
  - port: {{number: 5432, name: tcp-postgres, protocol: TCP}}
    bind: 127.1.{block}.1
    hosts: ["data/db.data.svc.cluster.local"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: db-only-api, namespace: data}}
spec:
  selector: {{matchLabels: {{app: db}}}}
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/data/sa/api"]}}}}]
    to: [{{operation: {{ports: ["5432"]}}}}]
"#
    )
}

#[test]
fn postgres_through_the_mesh_with_psql_and_pgbench() {
    let Some(bin) = pg_bin() else {
        return skip_or_fail(
            "postgres_through_the_mesh",
            "PostgreSQL server binaries not installed (apt-get install postgresql)",
        );
    };
    if !have(bin.join("psql").to_str().unwrap()) && !have("psql") {
        return skip_or_fail("postgres_through_the_mesh", "psql not installed");
    }
    let pg_port = free_port();
    let _pg = start_postgres(&bin, pg_port);
    let admin = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let ward = Ward::up(UpOptions {
        bin: env!("CARGO_BIN_EXE_ward"),
        admin,
        files: vec![
            ("mesh.yaml", db_mesh(5, pg_port)),
            ("pa.yaml", mesh_pa("STRICT")),
        ],
        extra_args: vec![],
        env: vec![],
    })
    .unwrap();
    let psql = if bin.join("psql").exists() {
        bin.join("psql")
    } else {
        PathBuf::from("psql")
    };
    let out = Command::new(&psql)
        .args([
            "-h",
            "127.1.5.1",
            "-p",
            "5432",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-tAc",
            "select 40 + 2",
        ])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql failed: {}\nward log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        ward.logs()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");

    let pgbench = bin.join("pgbench");
    let init = Command::new(&pgbench)
        .args([
            "-h",
            "127.1.5.1",
            "-p",
            "5432",
            "-U",
            "postgres",
            "-i",
            "-s",
            "1",
            "postgres",
        ])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "pgbench -i: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let run = Command::new(&pgbench)
        .args([
            "-h",
            "127.1.5.1",
            "-p",
            "5432",
            "-U",
            "postgres",
            "-c",
            "4",
            "-j",
            "2",
            "-T",
            "3",
            "-C",
            "postgres",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "pgbench: {stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("number of failed transactions: 0"),
        "{stdout}"
    );
    eprintln!("pgbench through ward (new connection per transaction):\n{stdout}");
    // Every inbound connection to the database was mTLS from the api identity.
    let inbound = ward.log_lines_matching(&[("direction", "inbound"), ("dst.workload", "data/db")]);
    assert!(!inbound.is_empty());
    assert!(inbound.iter().all(
        |l| l["src.identity"] == "spiffe://cluster.local/ns/data/sa/api"
            && l["tls.version"] == "TLSv1.3"
    ));
}

#[test]
fn wire_capture_shows_only_tls13_between_sidecars() {
    if !have("tshark") {
        return skip_or_fail(
            "wire_capture",
            "tshark not installed (apt-get install tshark)",
        );
    }
    if !is_root() {
        return skip_or_fail("wire_capture", "capturing on loopback needs root");
    }
    let mesh = Mesh::new(6);
    let ward = mesh.up(&mesh_pa("STRICT"), &[]);
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("wire.pcap");
    let filter = format!(
        "(host {} and tcp port 15008) or tcp port {}",
        mesh.ip(10),
        mesh.app_port
    );
    let mut tshark = Command::new("tshark")
        .args(["-i", "lo", "-f", &filter, "-w", pcap.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until tshark says it is capturing.
    let mut stderr = tshark.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 256];
        let mut seen = String::new();
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.contains("Capturing on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("tshark did not start capturing");
    std::thread::sleep(Duration::from_millis(500));
    let marker = format!("WARD-PHI-MARKER-{}", std::process::id());
    for _ in 0..5 {
        assert!(ward_test_support::echo_ok(mesh.via_cli(), &marker));
    }
    std::thread::sleep(Duration::from_millis(1000));
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(tshark.id().to_string())
        .status();
    let _ = tshark.wait();

    let payloads = |display: &str| -> String {
        let out = Command::new("tshark")
            .args([
                "-r",
                pcap.to_str().unwrap(),
                "-Y",
                display,
                "-T",
                "fields",
                "-e",
                "tcp.payload",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).replace([':', '\n'], "")
    };
    let marker_hex: String = marker.bytes().map(|b| format!("{b:02x}")).collect();
    let between_sidecars = payloads("tcp.port == 15008 && tcp.len > 0");
    let at_app = payloads(&format!("tcp.port == {} && tcp.len > 0", mesh.app_port));
    assert!(
        !between_sidecars.is_empty(),
        "the capture saw no sidecar traffic"
    );
    // Positive control: the capture does see the marker where it is plaintext (app side).
    assert!(
        at_app.contains(&marker_hex),
        "capture did not see the app-side plaintext; the test would prove nothing"
    );
    assert!(
        !between_sidecars.contains(&marker_hex),
        "the marker crossed the wire between sidecars in clear"
    );

    let versions = Command::new("tshark")
        .args([
            "-r",
            pcap.to_str().unwrap(),
            "-d",
            "tcp.port==15008,tls",
            "-Y",
            "tls.handshake.type == 2",
            "-T",
            "fields",
            "-e",
            "tls.handshake.extensions.supported_version",
        ])
        .output()
        .unwrap();
    let versions = String::from_utf8_lossy(&versions.stdout);
    assert!(
        versions.contains("0x0304"),
        "ServerHello must select TLS 1.3 (0x0304), got {versions:?}"
    );
    drop(ward);
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Istio's `cacerts` layout made with the openssl CLI: a root and an intermediate that signs.
fn make_cacerts(dir: &Path) {
    openssl(
        dir,
        &[
            "ecparam",
            "-genkey",
            "-name",
            "prime256v1",
            "-noout",
            "-out",
            "root-key.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "root-key.pem",
            "-subj",
            "/O=cluster.local/CN=Plug-in Root",
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            "root-cert.pem",
        ],
    );
    openssl(
        dir,
        &[
            "ecparam",
            "-genkey",
            "-name",
            "prime256v1",
            "-noout",
            "-out",
            "ca-key.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            "ca-key.pem",
            "-subj",
            "/O=cluster.local/CN=Plug-in Intermediate",
            "-out",
            "ca.csr",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "ca.csr",
            "-CA",
            "root-cert.pem",
            "-CAkey",
            "root-key.pem",
            "-CAcreateserial",
            "-days",
            "20",
            "-extfile",
            "ext.cnf",
            "-out",
            "ca-cert.pem",
        ],
    );
    let chain = std::fs::read_to_string(dir.join("ca-cert.pem")).unwrap()
        + &std::fs::read_to_string(dir.join("root-cert.pem")).unwrap();
    std::fs::write(dir.join("cert-chain.pem"), chain).unwrap();
}

#[test]
fn plugged_in_cacerts_verified_by_openssl_s_client() {
    if !have("openssl") {
        return skip_or_fail("cacerts_openssl", "openssl not installed");
    }
    let cacerts = tempfile::tempdir().unwrap();
    make_cacerts(cacerts.path());
    let mesh = Mesh::new(7);
    let cacerts_arg = cacerts.path().to_str().unwrap().to_owned();
    let ward = mesh.up(&mesh_pa("STRICT"), &["--cacerts", &cacerts_arg]);
    assert!(ward_test_support::echo_ok(mesh.via_cli(), "via plug-in CA"));

    // A real TLS client checks the sidecar's HBONE port against the plugged-in root.
    let hbone = format!("{}:15008", mesh.ip(10));
    let root = cacerts.path().join("root-cert.pem");
    let s_client = |extra: &[&str]| {
        let mut args = vec![
            "s_client",
            "-connect",
            &hbone,
            "-CAfile",
            root.to_str().unwrap(),
            "-alpn",
            "h2",
            "-showcerts",
        ];
        args.extend_from_slice(extra);
        let out = Command::new("openssl")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let out = s_client(&[]);
    assert!(
        out.contains("Verify return code: 0 (ok)"),
        "chain must verify to the plug-in root:\n{out}"
    );
    assert!(out.contains("TLSv1.3"), "{out}");
    assert!(
        out.contains("Plug-in Intermediate"),
        "the intermediate is served in the chain:\n{out}"
    );
    // The leaf names the workload by URI SAN only.
    let leaf_pem: String = {
        let start = out.find("-----BEGIN CERTIFICATE-----").unwrap();
        let end = out[start..].find("-----END CERTIFICATE-----").unwrap()
            + start
            + "-----END CERTIFICATE-----".len();
        out[start..end].to_owned() + "\n"
    };
    let leaf = cacerts.path().join("leaf.pem");
    std::fs::write(&leaf, leaf_pem).unwrap();
    let text = Command::new("openssl")
        .args([
            "x509",
            "-in",
            leaf.to_str().unwrap(),
            "-noout",
            "-ext",
            "subjectAltName,extendedKeyUsage",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("URI:spiffe://cluster.local/ns/app/sa/srv"),
        "{text}"
    );
    assert!(!text.contains("DNS:"), "{text}");

    // TLS 1.2 is refused between proxies.
    let out12 = s_client(&["-tls1_2"]);
    assert!(
        out12.contains("alert protocol version"),
        "TLS 1.2 must be refused:\n{out12}"
    );
    assert!(
        out12.contains("Cipher    : 0000"),
        "no cipher may be negotiated over TLS 1.2:\n{out12}"
    );
    // Without a client certificate the sidecar does not open a tunnel; the handshake is refused.
    ward.wait_for_log(&[("response_flags", "TLS_FAILURE")], Duration::from_secs(5))
        .unwrap();
}
