//! Bulk single-stream throughput with iperf3: one `iperf3 -s` behind every path, and a bounded
//! `iperf3 -c -J` per measurement.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::net::{Net, Side};
use crate::process::{free_port, pinned, Proc, SpawnError};

/// Why iperf3 gave no figure.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IperfError {
    /// iperf3 is not installed.
    #[error("iperf3 is not installed (apt-get install iperf3)")]
    NotInstalled,
    /// The server could not start.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The server did not listen in time.
    #[error("iperf3 server did not listen")]
    NotListening,
    /// The client failed or printed no result.
    #[error("iperf3 client: {0}")]
    Client(String),
}

/// Whether `iperf3` runs here.
pub(crate) fn installed() -> bool {
    Command::new("iperf3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts `iperf3 -s` on a free port of the server side ([`Net::app_bind`]); returns its
/// address as the server side sees it (127.0.0.1).
pub(crate) fn start_server(cpu: Option<usize>, net: Net) -> Result<(Proc, SocketAddr), IperfError> {
    if !installed() {
        return Err(IperfError::NotInstalled);
    }
    let port = free_port().map_err(|e| IperfError::Client(e.to_string()))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut proc = Proc::spawn(
        "iperf3 -s",
        net.command(Side::Server, cpu, Path::new("iperf3"))
            .args([
                "-s",
                "-B",
                &net.app_bind().to_string(),
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    // Poll the file system rather than connect: a bare connection is an aborted test to iperf3.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !proc.has_exited() {
        if listening(proc.pid(), port) {
            return Ok((proc, addr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(IperfError::NotListening)
}

/// Whether a TCP socket listens on `port` in `pid`'s network namespace (from
/// /proc/<pid>/net/tcp: state 0A is LISTEN).
fn listening(pid: u32, port: u16) -> bool {
    let want = format!(":{port:04X}");
    std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1).is_some_and(|local| local.ends_with(&want)) && f.get(3) == Some(&"0A")
        })
    })
}

/// Waits up to five seconds until every iperf3 server of `servers` (pid, port) listens.
/// Between two tests an iperf3 server closes its listening socket and opens it again; a test
/// started in that gap is refused (through a proxy pair: the server side answers the tunnel
/// with 503 and the client's control connection is reset). False if one still does not listen.
pub(crate) fn wait_listening(servers: &[(u32, u16)]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if servers.iter().all(|(pid, port)| listening(*pid, *port)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What one iperf3 run moved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Bulk {
    /// Gbit/s received, all streams together.
    pub(crate) gbps: f64,
    /// Bytes received, all streams together.
    pub(crate) bytes: f64,
}

/// Runs one client with `streams` parallel streams (`-P`) for `seconds` against `addr`.
pub(crate) fn run_client(
    addr: SocketAddr,
    seconds: u32,
    streams: u32,
    cpu: Option<usize>,
) -> Result<Bulk, IperfError> {
    // `timeout` bounds the run even if the path stalls.
    let limit = (seconds + 15).to_string();
    let out = pinned(cpu, "timeout")
        .args([&limit, "iperf3", "-J", "--connect-timeout", "3000", "-c"])
        .arg(addr.ip().to_string())
        .args(["-p", &addr.port().to_string(), "-t", &seconds.to_string()])
        .args(["-P", &streams.max(1).to_string()])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| IperfError::Client(e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_result(&text).ok_or_else(|| {
        let error = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_owned));
        IperfError::Client(error.unwrap_or_else(|| format!("exit {}", out.status)))
    })
}

/// Throughput and bytes from iperf3's `-J` output (`end.sum_received`, the sum over every
/// stream).
pub(crate) fn parse_result(json: &str) -> Option<Bulk> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let sum = v.get("end")?.get("sum_received")?;
    let bps = sum.get("bits_per_second")?.as_f64()?;
    let bytes = sum.get("bytes")?.as_f64()?;
    (bps > 0.0 && bytes > 0.0).then_some(Bulk {
        gbps: bps / 1e9,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results() {
        let cases = [
            (
                r#"{"end":{"sum_received":{"bits_per_second":2.5e10,"bytes":3.0e10}}}"#,
                Some(Bulk {
                    gbps: 25.0,
                    bytes: 3.0e10,
                }),
            ),
            (
                r#"{"end":{"sum_received":{"bits_per_second":0,"bytes":0}}}"#,
                None,
            ),
            (
                r#"{"end":{"sum_received":{"bits_per_second":2.5e10}}}"#,
                None,
            ),
            (r#"{"error":"unable to connect to server"}"#, None),
            ("not json", None),
        ];
        for (json, want) in cases {
            assert_eq!(parse_result(json), want, "{json}");
        }
    }
}
