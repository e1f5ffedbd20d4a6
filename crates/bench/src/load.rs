//! The load generator: open-loop fixed rate (latency without coordinated omission), closed-loop
//! saturation, one-connection-per-request setup, and a 1-byte echo round trip. Every workload is
//! bounded in time and in count; every request has a timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http1::{read_response, Requests, ResponseError};

/// Longest wait for one request, connect or echo before it counts as an error.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a workload could not run at all (individual failed requests are counted, not raised).
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    /// Not one connection could be opened to the path's entry point.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The path's entry point.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// A worker task panicked or was cancelled.
    #[error("load worker failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

/// Latencies (nanoseconds) and error count of one workload.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// One entry per successful operation.
    pub(crate) latencies_ns: Vec<u64>,
    /// Operations that failed or timed out.
    pub(crate) errors: u64,
    /// Wall time the workload ran.
    pub(crate) elapsed: Duration,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.latencies_ns.extend(other.latencies_ns);
        self.errors += other.errors;
    }

    /// Successful operations per second.
    pub(crate) fn rate(&self) -> f64 {
        self.latencies_ns.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Wait for every worker and merge their outcomes; `elapsed` runs from `start`.
async fn gather(
    mut tasks: tokio::task::JoinSet<Outcome>,
    start: Instant,
) -> Result<Outcome, LoadError> {
    let mut out = Outcome::default();
    while let Some(part) = tasks.join_next().await {
        out.merge(part?);
    }
    out.elapsed = start.elapsed();
    Ok(out)
}

/// An open-loop fixed-rate plan: `rate` requests per second spread over `conns` keep-alive
/// connections for `duration`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FixedRate {
    /// Requests per second, all connections together.
    pub(crate) rate: u32,
    /// Keep-alive connections.
    pub(crate) conns: usize,
    /// How long to send.
    pub(crate) duration: Duration,
}

impl FixedRate {
    /// The send times of connection `conn`, as offsets from the start. Requests are dealt round
    /// robin, so the connections together send at exactly `rate`.
    pub(crate) fn schedule(&self, conn: usize) -> Vec<Duration> {
        let total = (u128::from(self.rate) * self.duration.as_millis() / 1000) as usize;
        let step_ns = 1_000_000_000u64 / u64::from(self.rate.max(1));
        (conn..total)
            .step_by(self.conns.max(1))
            .map(|i| Duration::from_nanos(i as u64 * step_ns))
            .collect()
    }
}

/// Runs a fixed-rate plan against an HTTP entry point.
///
/// Latency is counted from the request's *scheduled* send time whenever the connection was
/// still busy with an earlier response at that time (the queueing a slow system causes, which
/// a closed-loop tool would omit). When the connection was idle and only our timer woke late
/// (tokio timers tick at 1 ms), latency is counted from the actual send: that delay is the
/// generator's, not the path's.
pub(crate) async fn fixed_rate(
    addr: SocketAddr,
    plan: FixedRate,
    reqs: &Requests,
) -> Result<Outcome, LoadError> {
    let mut streams = Vec::with_capacity(plan.conns);
    for _ in 0..plan.conns {
        streams.push(connect(addr).await?);
    }
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let mut tasks = tokio::task::JoinSet::new();
    for (conn, stream) in streams.into_iter().enumerate() {
        let schedule = plan.schedule(conn);
        tasks.spawn(fixed_rate_conn(addr, stream, start, schedule, reqs.clone()));
    }
    gather(tasks, start.into_std()).await
}

async fn fixed_rate_conn(
    addr: SocketAddr,
    stream: TcpStream,
    start: tokio::time::Instant,
    schedule: Vec<Duration>,
    reqs: Requests,
) -> Outcome {
    let mut out = Outcome::default();
    let mut stream = Some(stream);
    let mut buf = Vec::with_capacity(8192);
    let mut busy_until = start;
    for offset in schedule {
        let scheduled = start + offset;
        let queued = busy_until > scheduled;
        tokio::time::sleep_until(scheduled).await;
        let sent = tokio::time::Instant::now();
        let from = if queued { scheduled } else { sent };
        let s = match stream.take() {
            Some(s) => s,
            None => match connect(addr).await {
                Ok(s) => s,
                Err(_) => {
                    out.errors += 1;
                    continue;
                }
            },
        };
        match tokio::time::timeout(OP_TIMEOUT, request(s, &mut buf, &reqs.keepalive)).await {
            Ok(Ok((s, _))) => {
                let done = tokio::time::Instant::now();
                out.latencies_ns.push(nanos(done - from));
                busy_until = done;
                stream = Some(s);
            }
            // The connection is dropped; the next request reconnects.
            _ => {
                out.errors += 1;
                buf.clear();
                busy_until = tokio::time::Instant::now();
            }
        }
    }
    out
}

/// Closed loop: `conns` keep-alive connections each sending the next request as soon as the
/// previous answer arrived, for `duration`.
pub(crate) async fn saturate(
    addr: SocketAddr,
    conns: usize,
    duration: Duration,
    reqs: &Requests,
) -> Result<Outcome, LoadError> {
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        streams.push(connect(addr).await?);
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for stream in streams {
        let reqs = reqs.clone();
        tasks.spawn(async move {
            let mut out = Outcome::default();
            let mut stream = Some(stream);
            let mut buf = Vec::with_capacity(8192);
            while Instant::now() < deadline {
                let Some(s) = stream.take() else { break };
                let t = Instant::now();
                match tokio::time::timeout(OP_TIMEOUT, request(s, &mut buf, &reqs.keepalive)).await
                {
                    Ok(Ok((s, _))) => {
                        out.latencies_ns.push(nanos(t.elapsed()));
                        stream = Some(s);
                    }
                    _ => out.errors += 1,
                }
            }
            out
        });
    }
    gather(tasks, start).await
}

/// A fresh connection per request (`Connection: close`), `workers` at a time, for `duration`
/// or `max_conns` connections, whichever comes first (bounded so ephemeral ports in TIME_WAIT
/// cannot run out). Latencies are times to first byte, counted from before `connect`.
pub(crate) async fn connection_setup(
    addr: SocketAddr,
    workers: usize,
    duration: Duration,
    max_conns: usize,
    reqs: &Requests,
) -> Result<Outcome, LoadError> {
    // Fail early and clearly when the path does not accept connections at all.
    drop(connect(addr).await?);
    let per_worker = max_conns / workers.max(1);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let reqs = reqs.clone();
        tasks.spawn(async move {
            let mut out = Outcome::default();
            let mut buf = Vec::with_capacity(8192);
            for _ in 0..per_worker {
                if Instant::now() >= deadline {
                    break;
                }
                let t = Instant::now();
                let one = async {
                    let s = connect(addr).await?;
                    buf.clear();
                    request(s, &mut buf, &reqs.close).await
                };
                match tokio::time::timeout(OP_TIMEOUT, one).await {
                    Ok(Ok((_, first_byte))) => out.latencies_ns.push(nanos(first_byte - t)),
                    _ => out.errors += 1,
                }
            }
            out
        });
    }
    gather(tasks, start).await
}

/// Round trips of one byte on one kept connection: at most `count`, for at most `duration`.
pub(crate) async fn echo_rtt(
    addr: SocketAddr,
    count: usize,
    duration: Duration,
) -> Result<Outcome, LoadError> {
    let mut stream = connect(addr).await?;
    let start = Instant::now();
    let mut out = Outcome::default();
    let mut byte = [0u8; 1];
    for _ in 0..count {
        if start.elapsed() >= duration {
            break;
        }
        let t = Instant::now();
        let one = async {
            stream.write_all(b"x").await?;
            stream.read_exact(&mut byte).await
        };
        match tokio::time::timeout(OP_TIMEOUT, one).await {
            Ok(Ok(_)) => out.latencies_ns.push(nanos(t.elapsed())),
            // The stream may hold a late byte now: stop rather than mismatch replies.
            _ => {
                out.errors += 1;
                break;
            }
        }
    }
    out.elapsed = start.elapsed();
    Ok(out)
}

/// Sends a few requests, to check the path carries traffic and to warm pools before measuring.
pub(crate) async fn probe(
    addr: SocketAddr,
    requests: usize,
    reqs: &Requests,
) -> Result<(), ProbeError> {
    let mut buf = Vec::new();
    let mut s = tokio::time::timeout(OP_TIMEOUT, connect(addr))
        .await
        .map_err(|_| ProbeError::Timeout)??;
    for _ in 0..requests {
        let (back, _) = tokio::time::timeout(OP_TIMEOUT, request(s, &mut buf, &reqs.keepalive))
            .await
            .map_err(|_| ProbeError::Timeout)??;
        s = back;
    }
    Ok(())
}

/// Why a path did not carry a probe request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    /// No answer within the timeout.
    #[error("no answer within {OP_TIMEOUT:?}")]
    Timeout,
    /// The connection failed or the answer was wrong.
    #[error(transparent)]
    Response(#[from] ResponseError),
    /// The entry point refused the connection.
    #[error(transparent)]
    Load(#[from] LoadError),
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, LoadError> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|source| LoadError::Connect { addr, source })?;
    // Latency figures assume small writes leave at once.
    s.set_nodelay(true)
        .map_err(|source| LoadError::Connect { addr, source })?;
    Ok(s)
}

async fn request(
    mut s: TcpStream,
    buf: &mut Vec<u8>,
    req: &[u8],
) -> Result<(TcpStream, Instant), ResponseError> {
    s.write_all(req).await?;
    let first = read_response(&mut s, buf).await?;
    Ok((s, first))
}

impl From<LoadError> for ResponseError {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::Connect { source, .. } => ResponseError::Io(source),
            LoadError::Worker(j) => ResponseError::Io(std::io::Error::other(j)),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn schedules_cover_the_rate_exactly_once() {
        let cases = [
            (1000, 4, 2000),
            (1000, 16, 2000),
            (1000, 16, 20_000),
            (7, 3, 1000),
        ];
        for (rate, conns, ms) in cases {
            let plan = FixedRate {
                rate,
                conns,
                duration: Duration::from_millis(ms),
            };
            let mut all: Vec<Duration> = (0..conns).flat_map(|c| plan.schedule(c)).collect();
            all.sort();
            let expected = rate as u64 * ms / 1000;
            assert_eq!(all.len() as u64, expected, "{rate} rps {conns} conns");
            all.dedup();
            assert_eq!(all.len() as u64, expected, "no two sends share a slot");
            assert!(all.last().unwrap() < &plan.duration);
        }
    }

    #[tokio::test]
    async fn workloads_against_the_real_server() {
        let (http, echo) = spawn_server().await;
        let plan = FixedRate {
            rate: 200,
            conns: 4,
            duration: Duration::from_millis(200),
        };
        let out = fixed_rate(http, plan, &Requests::plain()).await.unwrap();
        assert_eq!((out.latencies_ns.len(), out.errors), (40, 0));
        let out = saturate(http, 2, Duration::from_millis(50), &Requests::plain())
            .await
            .unwrap();
        assert!(!out.latencies_ns.is_empty() && out.errors == 0);
        let out = connection_setup(http, 2, Duration::from_secs(5), 10, &Requests::plain())
            .await
            .unwrap();
        assert_eq!((out.latencies_ns.len(), out.errors), (10, 0));
        let out = echo_rtt(echo, 25, Duration::from_secs(5)).await.unwrap();
        assert_eq!((out.latencies_ns.len(), out.errors), (25, 0));
        probe(http, 3, &Requests::plain()).await.unwrap();
    }

    #[tokio::test]
    async fn a_dead_entry_point_is_an_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        assert!(probe(addr, 1, &Requests::plain()).await.is_err());
        let plan = FixedRate {
            rate: 10,
            conns: 1,
            duration: Duration::from_millis(100),
        };
        assert!(fixed_rate(addr, plan, &Requests::plain()).await.is_err());
    }

    /// The bench server on its own thread and runtime, for tests that block. The thread lives
    /// until the process exits.
    pub(crate) fn server_in_thread() -> (crate::paths::Endpoints, std::thread::JoinHandle<()>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = rt.block_on(crate::server::serve_with(
                std::net::Ipv4Addr::LOCALHOST.into(),
                move |http, echo| {
                    let _ = tx.send((http, echo));
                },
            ));
        });
        let (http, echo) = rx.recv().unwrap();
        let endpoints = crate::paths::Endpoints {
            http,
            echo,
            iperf: echo,
        };
        (endpoints, handle)
    }

    /// The same serving code as `ward-bench serve`, in-process.
    async fn spawn_server() -> (SocketAddr, SocketAddr) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(crate::server::serve_with(
            std::net::Ipv4Addr::LOCALHOST.into(),
            move |http, echo| {
                let _ = tx.send((http, echo));
            },
        ));
        rx.await.unwrap()
    }
}
