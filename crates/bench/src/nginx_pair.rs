//! The reference path: two Debian nginx processes with the `stream` module. nginx A listens in
//! plaintext and proxies over TLS 1.3 with a client certificate to nginx B, which requires and
//! verifies that certificate (`ssl_verify_client on`) and proxies to the bench server. The
//! certificates come from rcgen: one CA, a server leaf for B, a client leaf for A.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

use crate::net::{Net, Side};
use crate::paths::{Endpoints, SERVICE_PORTS};
use crate::process::{Proc, SpawnError};
use crate::procstat::children;

/// The run's address block ([`crate::net`]): A (the client side, the path's entry points) on
/// `.1`, B (the TLS listeners) on `.10`. Tests use another block so they can run beside a bench.
pub(crate) const BLOCK: u8 = 1;
/// The name in B's certificate, which A verifies.
const B_NAME: &str = "nginx-b.bench";
/// Where Debian's libnginx-mod-stream installs the module.
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// Why the nginx pair did not come up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NginxPairError {
    /// nginx or its stream module is not installed.
    #[error(
        "nginx with the stream module is not installed (apt-get install nginx libnginx-mod-stream)"
    )]
    NotInstalled,
    /// rcgen failed to make a certificate.
    #[error("generating certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    /// Writing the config or certificates failed.
    #[error("writing nginx's config: {0}")]
    Config(#[from] std::io::Error),
    /// nginx could not start.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// nginx exited or did not listen in time.
    #[error("nginx {which} did not start: {log}")]
    NotListening {
        /// A or B.
        which: &'static str,
        /// Its error log.
        log: String,
    },
}

/// A running nginx pair.
pub(crate) struct NginxPair {
    /// nginx A's master process.
    pub(crate) a: Proc,
    /// nginx B's master process.
    pub(crate) b: Proc,
    /// Where the client dials.
    pub(crate) entry: Endpoints,
    _dir: tempfile::TempDir,
}

impl NginxPair {
    /// Generates certificates and configs, starts B then A pinned to `cpu` on the addresses of
    /// `block`, and waits until both listen.
    pub(crate) fn start(
        server: &Endpoints,
        cpu: Option<usize>,
        block: u8,
        net: Net,
    ) -> Result<NginxPair, NginxPairError> {
        let (a_ip, b_ip) = (net.ip(Side::Client, block), net.ip(Side::Server, block));
        if !Path::new(STREAM_MODULE).exists() {
            return Err(NginxPairError::NotInstalled);
        }
        let dir = tempfile::Builder::new()
            .prefix("ward-bench-nginx-")
            .tempdir()?;
        write_certificates(dir.path())?;
        let nginx = Path::new("nginx");
        let d = dir.path().display();
        let upstreams = [server.http, server.echo, server.iperf];
        let b_servers: String = SERVICE_PORTS
            .iter()
            .zip(upstreams)
            .map(|(port, to)| {
                format!("    server {{ listen {b_ip}:{port} ssl; proxy_pass {to}; }}\n")
            })
            .collect();
        let a_servers: String = SERVICE_PORTS
            .iter()
            .map(|port| {
                format!("    server {{ listen {a_ip}:{port}; proxy_pass {b_ip}:{port}; }}\n")
            })
            .collect();
        let b_conf = config(
            "b",
            &format!(
                "    ssl_protocols TLSv1.3;\n    ssl_certificate {d}/b.pem;\n    \
                 ssl_certificate_key {d}/b.key;\n    ssl_client_certificate {d}/ca.pem;\n    \
                 ssl_verify_client on;\n{b_servers}"
            ),
            dir.path(),
        );
        let a_conf = config(
            "a",
            &format!(
                "    proxy_ssl on;\n    proxy_ssl_protocols TLSv1.3;\n    \
                 proxy_ssl_certificate {d}/a.pem;\n    proxy_ssl_certificate_key {d}/a.key;\n    \
                 proxy_ssl_trusted_certificate {d}/ca.pem;\n    proxy_ssl_verify on;\n    \
                 proxy_ssl_name {B_NAME};\n{a_servers}"
            ),
            dir.path(),
        );
        std::fs::write(dir.path().join("b.conf"), b_conf)?;
        std::fs::write(dir.path().join("a.conf"), a_conf)?;
        let b = start_one("b", dir.path(), net.command(Side::Server, cpu, nginx), b_ip)?;
        let a = start_one("a", dir.path(), net.command(Side::Client, cpu, nginx), a_ip)?;
        let [http, echo, iperf] = SERVICE_PORTS.map(|p| SocketAddr::from((a_ip, p)));
        Ok(NginxPair {
            a,
            b,
            entry: Endpoints { http, echo, iperf },
            _dir: dir,
        })
    }

    /// Every process of the pair: both masters and their workers.
    pub(crate) fn pids(&self) -> Vec<u32> {
        [self.a.pid(), self.b.pid()]
            .into_iter()
            .flat_map(|m| std::iter::once(m).chain(children(m)))
            .collect()
    }
}

/// One nginx's full config: one worker (like one sidecar), its own pid file and logs.
fn config(name: &str, stream_body: &str, dir: &Path) -> String {
    let d = dir.display();
    format!(
        "load_module {STREAM_MODULE};\nworker_processes 1;\ndaemon off;\npid {d}/{name}.pid;\n\
         error_log {d}/{name}-error.log warn;\nevents {{ worker_connections 8192; }}\n\
         stream {{\n    tcp_nodelay on;\n{stream_body}}}\n"
    )
}

fn start_one(
    name: &'static str,
    dir: &Path,
    mut nginx: std::process::Command,
    ip: Ipv4Addr,
) -> Result<Proc, NginxPairError> {
    let mut proc = Proc::spawn(
        &format!("nginx {name}"),
        nginx
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join(format!("{name}.conf")))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    let which = if name == "a" { "A" } else { "B" };
    let probe = SocketAddr::from((ip, SERVICE_PORTS[0]));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if proc.has_exited() || Instant::now() > deadline {
            let log =
                std::fs::read_to_string(dir.join(format!("{name}-error.log"))).unwrap_or_default();
            return Err(NginxPairError::NotListening { which, log });
        }
        if std::net::TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_ok() {
            return Ok(proc);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// ca.pem, b.pem/b.key (server, for B_NAME), a.pem/a.key (client).
fn write_certificates(dir: &Path) -> Result<(), NginxPairError> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ward-bench reference CA");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    for (name, san, usage) in [
        ("b", B_NAME, ExtendedKeyUsagePurpose::ServerAuth),
        ("a", "nginx-a.bench", ExtendedKeyUsagePurpose::ClientAuth),
    ] {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![san.to_owned()])?;
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer)?;
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem())?;
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_written() {
        let dir = tempfile::tempdir().unwrap();
        write_certificates(dir.path()).unwrap();
        for f in ["ca.pem", "a.pem", "a.key", "b.pem", "b.key"] {
            let text = std::fs::read_to_string(dir.path().join(f)).unwrap();
            assert!(text.starts_with("-----BEGIN"), "{f}");
        }
    }

    /// Real nginx in front of the real server: traffic through A arrives, and B does not
    /// serve a client that brings no TLS or no client certificate.
    #[test]
    fn pair_carries_traffic_and_b_requires_a_client_certificate() {
        if !Path::new(STREAM_MODULE).exists() {
            // CI sets WARD_E2E_REQUIRE_ALL=1, where a skip is a failure (README).
            assert!(
                std::env::var("WARD_E2E_REQUIRE_ALL").as_deref() != Ok("1"),
                "nginx with the stream module is required (apt-get install nginx libnginx-mod-stream)"
            );
            eprintln!("SKIPPED: nginx with the stream module is not installed");
            return;
        }
        let (server, _thread) = crate::load::tests::server_in_thread();
        let pair = NginxPair::start(&server, None, 201, Net::Loopback).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(crate::load::probe(
            pair.entry.http,
            5,
            &crate::http1::Requests::plain(),
        ))
        .unwrap();
        let b = SocketAddr::from((Net::Loopback.ip(Side::Server, 201), SERVICE_PORTS[0]));
        assert!(
            rt.block_on(crate::load::probe(b, 1, &crate::http1::Requests::plain()))
                .is_err(),
            "plaintext to B"
        );
        // openssl s_client as a client of B, with extra arguments; None if openssl is missing.
        let openssl = |extra: &[&std::path::Path]| {
            let mut cmd = std::process::Command::new("openssl");
            cmd.args(["s_client", "-quiet", "-tls1_3", "-connect", &b.to_string()]);
            for (flag, path) in ["-cert", "-key"].iter().zip(extra) {
                cmd.arg(flag).arg(path);
            }
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .ok()?;
            if let Some(mut stdin) = child.stdin.take() {
                use std::io::Write;
                let _ = stdin.write_all(crate::http1::GET_CLOSE);
            }
            let out = child.wait_with_output().ok()?;
            Some(String::from_utf8_lossy(&out.stdout).contains("200 OK"))
        };
        let dir = pair._dir.path();
        let cases: [(&[&std::path::Path], bool); 2] = [
            (&[], false),
            (&[&dir.join("a.pem"), &dir.join("a.key")], true),
        ];
        for (extra, answered) in cases {
            match openssl(extra) {
                Some(got) => assert_eq!(got, answered, "client cert given: {}", !extra.is_empty()),
                None => {
                    assert!(
                        std::env::var("WARD_E2E_REQUIRE_ALL").as_deref() != Ok("1"),
                        "openssl is required"
                    );
                    eprintln!("SKIPPED (part): openssl not installed");
                }
            }
        }
    }

    #[test]
    fn config_names_its_own_files() {
        let conf = config("a", "    server { listen 1; }\n", Path::new("/tmp/x"));
        for want in [
            "pid /tmp/x/a.pid;",
            "error_log /tmp/x/a-error.log",
            "stream {",
            STREAM_MODULE,
        ] {
            assert!(conf.contains(want), "{want} in\n{conf}");
        }
    }
}
