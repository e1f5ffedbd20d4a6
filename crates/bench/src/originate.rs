//! `ward-bench originate`: what TLS origination (a DestinationRule `tls: SIMPLE`,
//! docs/egress-tls.md) adds per request, against a client that speaks TLS to the server itself.
//!
//! One nginx TLS server (TLS 1.3, a 1 KB answer) on 127.132.1.10:8443 and one `ward up` whose
//! workload dials its egress listener 127.132.1.1:80 in plain HTTP; the sidecar originates TLS to
//! nginx. Four closed-loop series, interleaved round by round so drift hits them alike:
//! - `direct-new` / `ward-new`: a new connection per request (the TLS handshake included: the
//!   client's own, or the sidecar's);
//! - `direct-reuse` / `ward-reuse`: one kept-alive connection for every request of a round.
//!
//! The figure is the added latency, p50 and p99, ward minus direct. Traffic stays on loopback;
//! every wait is bounded.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Serialize;

use crate::http1::{head_end, parse_response_head};
use crate::process::{free_port, Proc};
use crate::stats::percentile;

const APP: &str = "127.132.1.1";
const SERVER: &str = "127.132.1.10";
const HOST: &str = "api.bench.example";
const ROUNDS: usize = 5;

/// One series' latencies.
#[derive(Debug, Serialize)]
struct Series {
    name: &'static str,
    requests: usize,
    p50_us: f64,
    p99_us: f64,
}

#[derive(Debug, Serialize)]
struct Results {
    requests_per_round: usize,
    rounds: usize,
    series: Vec<Series>,
    added_new_connection_p50_us: f64,
    added_new_connection_p99_us: f64,
    added_kept_alive_p50_us: f64,
    added_kept_alive_p99_us: f64,
}

/// The default results folder: bench/results/<day>-originate.
pub(crate) fn default_out(day: &str) -> PathBuf {
    PathBuf::from(format!("bench/results/{day}-originate"))
}

pub(crate) fn run(ward: &Path, requests: usize, out: &Path) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let ca_pem = write_certificates(dir)?;
    let _nginx = start_nginx(dir)?;
    let admin = format!("127.0.0.1:{}", free_port()?);
    let config = dir.join("config");
    std::fs::create_dir_all(&config)?;
    std::fs::write(config.join("mesh.yaml"), mesh_yaml(&dir.join("ca.pem")))?;
    let _ward = Proc::spawn(
        "ward",
        Command::new(ward)
            .args(["up", "-f"])
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--admin", &admin])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("ward.log"))?),
    )?;
    let via_ward: SocketAddr = format!("{APP}:80").parse()?;
    let direct: SocketAddr = format!("{SERVER}:8443").parse()?;
    wait_listening(via_ward)?;

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let client = Client {
        tls,
        direct,
        via_ward,
    };
    // Warm up both paths (and check they answer).
    client.new_connection(true)?;
    client.new_connection(false)?;

    let mut samples: [Vec<u64>; 4] = Default::default();
    for _ in 0..ROUNDS {
        for (i, (direct, reuse)) in [(true, false), (false, false), (true, true), (false, true)]
            .into_iter()
            .enumerate()
        {
            if reuse {
                samples[i].extend(client.kept_alive(direct, requests)?);
            } else {
                for _ in 0..requests {
                    samples[i].push(client.new_connection(direct)?);
                }
            }
        }
    }
    let names = ["direct-new", "ward-new", "direct-reuse", "ward-reuse"];
    let mut series = Vec::new();
    for (name, s) in names.iter().zip(samples.iter_mut()) {
        s.sort_unstable();
        series.push(Series {
            name,
            requests: s.len(),
            p50_us: us(percentile(s, 50.0)),
            p99_us: us(percentile(s, 99.0)),
        });
    }
    let added = |w: usize, d: usize, p99: bool| {
        let (a, b) = (&series[w], &series[d]);
        if p99 {
            a.p99_us - b.p99_us
        } else {
            a.p50_us - b.p50_us
        }
    };
    let results = Results {
        requests_per_round: requests,
        rounds: ROUNDS,
        added_new_connection_p50_us: added(1, 0, false),
        added_new_connection_p99_us: added(1, 0, true),
        added_kept_alive_p50_us: added(3, 2, false),
        added_kept_alive_p99_us: added(3, 2, true),
        series,
    };
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("originate.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    let md = markdown(&results);
    std::fs::write(out.join("originate.md"), &md)?;
    print!("{md}");
    Ok(())
}

fn us(ns: Option<u64>) -> f64 {
    ns.map_or(f64::NAN, |n| (n as f64 / 100.0).round() / 10.0)
}

fn markdown(r: &Results) -> String {
    let mut md = String::from(
        "# TLS origination cost (ward-bench originate)\n\n\
         Plain HTTP/1.1 GET (1 KB answer) through a Ward sidecar that originates TLS 1.3 to nginx \
         (DestinationRule `tls: SIMPLE`), against a rustls client speaking TLS 1.3 to the same \
         nginx itself. Loopback, closed loop, one request at a time.\n\n\
         | series | requests | p50 (µs) | p99 (µs) |\n|---|---|---|---|\n",
    );
    for s in &r.series {
        let _ = writeln!(
            md,
            "| {} | {} | {:.1} | {:.1} |",
            s.name, s.requests, s.p50_us, s.p99_us
        );
    }
    let _ = write!(
        md,
        "\nAdded by the sidecar, new connection per request (handshake by the sidecar instead of \
         the client): p50 {:+.1} µs, p99 {:+.1} µs.\n\
         Added by the sidecar, kept-alive connection: p50 {:+.1} µs, p99 {:+.1} µs.\n",
        r.added_new_connection_p50_us,
        r.added_new_connection_p99_us,
        r.added_kept_alive_p50_us,
        r.added_kept_alive_p99_us
    );
    md
}

struct Client {
    tls: Arc<rustls::ClientConfig>,
    direct: SocketAddr,
    via_ward: SocketAddr,
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: api.bench.example\r\n\r\n";

impl Client {
    /// One request on a new connection; nanoseconds from connect to the last byte.
    fn new_connection(&self, direct: bool) -> anyhow::Result<u64> {
        let start = Instant::now();
        if direct {
            let mut s = self.tls_stream()?;
            one_request(&mut s)?;
        } else {
            let mut s = TcpStream::connect_timeout(&self.via_ward, Duration::from_secs(5))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            one_request(&mut s)?;
        }
        Ok(start.elapsed().as_nanos() as u64)
    }

    /// `n` requests on one connection (opened before timing).
    fn kept_alive(&self, direct: bool, n: usize) -> anyhow::Result<Vec<u64>> {
        let mut out = Vec::with_capacity(n);
        let mut time = |s: &mut dyn ReadWrite| -> anyhow::Result<()> {
            for _ in 0..n {
                let start = Instant::now();
                one_request(s)?;
                out.push(start.elapsed().as_nanos() as u64);
            }
            Ok(())
        };
        if direct {
            time(&mut self.tls_stream()?)?;
        } else {
            let mut s = TcpStream::connect_timeout(&self.via_ward, Duration::from_secs(5))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            time(&mut s)?;
        }
        Ok(out)
    }

    fn tls_stream(
        &self,
    ) -> anyhow::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
        let tcp = TcpStream::connect_timeout(&self.direct, Duration::from_secs(5))?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        let conn = rustls::ClientConnection::new(self.tls.clone(), ServerName::try_from(HOST)?)?;
        Ok(rustls::StreamOwned::new(conn, tcp))
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Send one GET and read the whole 200 response.
fn one_request(s: &mut dyn ReadWrite) -> anyhow::Result<()> {
    s.write_all(REQUEST)?;
    s.flush()?;
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = head_end(&buf) {
            let len = parse_response_head(&buf[..end])?;
            while buf.len() < end + len {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    bail!("connection closed mid-body");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(());
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on {addr}")
}

/// ca.pem, server.pem and server.key (for [`HOST`]); returns the CA's PEM.
fn write_certificates(dir: &Path) -> anyhow::Result<String> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ward-bench origination CA");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec![HOST.to_owned()])?.signed_by(&key, &issuer)?;
    std::fs::write(dir.join("server.pem"), cert.pem())?;
    std::fs::write(dir.join("server.key"), key.serialize_pem())?;
    Ok(ca_cert.pem())
}

fn start_nginx(dir: &Path) -> anyhow::Result<Proc> {
    let d = dir.display();
    let body = "x".repeat(1024);
    let conf = format!(
        "daemon off;\nmaster_process off;\nerror_log {d}/nginx-error.log;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n  \
         server {{\n    listen {SERVER}:8443 ssl;\n    ssl_protocols TLSv1.3;\n    \
         ssl_certificate {d}/server.pem;\n    ssl_certificate_key {d}/server.key;\n    \
         location / {{ default_type text/plain; return 200 \"{body}\"; }}\n  }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let proc = Proc::spawn(
        "nginx",
        Command::new("nginx")
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .context("starting nginx (apt-get install nginx)")?;
    wait_listening(format!("{SERVER}:8443").parse()?)?;
    Ok(proc)
}

fn mesh_yaml(ca: &Path) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: app, namespace: bench}}\n\
         spec: {{address: {APP}, serviceAccount: app, labels: {{app: app}}}}\n---\n\
         apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: app, namespace: bench}}\n\
         spec:\n  workloadSelector: {{labels: {{app: app}}}}\n  egress:\n  - bind: {APP}\n    hosts: [\"./{HOST}\"]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: api, namespace: bench}}\n\
         spec:\n  hosts: [{HOST}]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  \
         ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 8443}}]\n  endpoints: [{{address: {SERVER}}}]\n---\n\
         apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api, namespace: bench}}\n\
         spec:\n  host: {HOST}\n  trafficPolicy:\n    tls: {{mode: SIMPLE, caCertificates: {}}}\n",
        ca.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mesh_loads_and_originates_tls_to_the_server() {
        let set =
            ward_config::load::load_str("m.yaml", &mesh_yaml(Path::new("/tmp/ca.pem"))).unwrap();
        let snapshot = ward_config::translate::translate(&set).unwrap();
        let proxy = snapshot.proxies.values().next().unwrap();
        let listener = &proxy.outbound[0];
        assert_eq!(listener.bind, format!("{APP}:80").parse().unwrap());
        assert_eq!(
            listener.endpoints[0].address,
            format!("{SERVER}:8443").parse().unwrap()
        );
        let tls = listener.tls.as_ref().unwrap();
        assert_eq!(tls.sni, HOST);
    }
}
