//! The DNS proxy's sockets: UDP and TCP on one address. Each message is decided by the pure
//! [`answer`] against the table of the moment, then answered from the table, forwarded to the
//! upstreams in order (bounded: a cap on queries waiting upstream, a timeout per upstream), or
//! refused. Nothing a client sends can stop the server: a message that does not decode gets
//! FORMERR when its header does, and nothing otherwise.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::answer::{
    answer, encode_within, fit_relayed, malformed_reply, reply_limit, server_failure, Answer,
    Transport,
};
use super::table::DnsTable;
use super::upstream::{self, ExchangeError};
use crate::listener::{self, Caps, Gate, Kind, Permit, RefusalLog, LOG_EVERY};
use crate::metrics::{DnsMetrics, Metrics};

/// The bounds of one DNS proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Queries waiting for an upstream at once (UDP and TCP together); one more is answered
    /// SERVFAIL at once.
    pub forwarded_in_flight: usize,
    /// How long one upstream gets to answer before the next is tried. With glibc's default of
    /// 5 s per try, two upstreams that never answer still give the client its SERVFAIL in time.
    pub upstream_timeout: Duration,
    /// Open TCP connections from clients.
    pub tcp_connections: usize,
    /// How long a client TCP connection may stay silent (before a query, or within one).
    pub tcp_idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            forwarded_in_flight: 256,
            upstream_timeout: Duration::from_secs(2),
            tcp_connections: 256,
            tcp_idle: Duration::from_secs(10),
        }
    }
}

/// Where and how the DNS proxy forwards, and what it reports to.
#[derive(Clone)]
pub struct Settings {
    /// The upstream resolvers, tried in order (from resolv.conf: `super::read_resolv_conf`).
    pub upstreams: Vec<SocketAddr>,
    /// `SO_MARK` for the sockets of forwarded queries, so that capture rules can let the
    /// proxy's own queries out (needs `CAP_NET_ADMIN`).
    pub mark: Option<u32>,
    /// The bounds.
    pub limits: Limits,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
}

/// The DNS proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The listen address could not be bound.
    #[error("DNS proxy: cannot listen on {addr} ({transport}): {reason}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// `udp` or `tcp`.
        transport: &'static str,
        /// The socket error.
        reason: io::Error,
    },
    /// The mark cannot be set on sockets.
    #[error("DNS proxy: cannot set SO_MARK {mark:#x} on upstream sockets (needs CAP_NET_ADMIN): {reason}")]
    Mark {
        /// The mark.
        mark: u32,
        /// The socket error.
        reason: io::Error,
    },
    /// No upstream resolver to forward to.
    #[error("DNS proxy: no upstream resolver to forward to")]
    NoUpstream,
}

/// Binds `listen` (UDP and TCP) and serves until `shutdown` flips to true (see [`DnsServer`]).
pub async fn serve(
    listen: SocketAddr,
    table: watch::Receiver<Arc<DnsTable>>,
    settings: Settings,
    shutdown: watch::Receiver<bool>,
) -> Result<(), DnsError> {
    DnsServer::bind(listen, settings)
        .await?
        .run(table, shutdown)
        .await;
    Ok(())
}

/// A bound DNS proxy, not yet serving.
pub struct DnsServer {
    udp: UdpSocket,
    tcp: TcpListener,
    shared: Arc<Shared>,
}

/// What every query's handling shares.
struct Shared {
    upstreams: Vec<SocketAddr>,
    mark: Option<u32>,
    limits: Limits,
    metrics: Arc<Metrics>,
    in_flight: Arc<Semaphore>,
    failures_log: RefusalLog,
}

impl DnsServer {
    /// Binds UDP and TCP on `listen` (on port 0, TCP takes the port UDP got), after checking
    /// that there is an upstream and that the mark can be set.
    pub async fn bind(listen: SocketAddr, settings: Settings) -> Result<DnsServer, DnsError> {
        if settings.upstreams.is_empty() {
            return Err(DnsError::NoUpstream);
        }
        if let Some(mark) = settings.mark {
            upstream::check_mark(mark).map_err(|reason| DnsError::Mark { mark, reason })?;
        }
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|reason| DnsError::Bind {
                addr: listen,
                transport: "udp",
                reason,
            })?;
        let addr = udp.local_addr().map_err(|reason| DnsError::Bind {
            addr: listen,
            transport: "udp",
            reason,
        })?;
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|reason| DnsError::Bind {
                addr,
                transport: "tcp",
                reason,
            })?;
        let shared = Arc::new(Shared {
            in_flight: Arc::new(Semaphore::new(settings.limits.forwarded_in_flight)),
            upstreams: settings.upstreams,
            mark: settings.mark,
            limits: settings.limits,
            metrics: settings.metrics,
            failures_log: RefusalLog::default(),
        });
        Ok(DnsServer { udp, tcp, shared })
    }

    /// The bound address (UDP and TCP).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// Serves until `shutdown` flips to true, answering from the table `table` holds at each
    /// query.
    pub async fn run(self, table: watch::Receiver<Arc<DnsTable>>, shutdown: watch::Receiver<bool>) {
        tracing::info!(
            listen = %self.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
            upstreams = ?self.shared.upstreams,
            mark = ?self.shared.mark,
            "DNS proxy serving (UDP and TCP)"
        );
        let gate = Gate::new(
            Kind::Dns,
            "none",
            Caps {
                connections: self.shared.limits.tcp_connections,
                connections_per_source: None,
                handshakes: None,
                handshakes_per_source: None,
            },
            None,
            self.shared.metrics.clone(),
        );
        let shared = self.shared.clone();
        let tcp_table = table.clone();
        let tcp = listener::accept_loop(
            self.tcp,
            gate,
            shutdown.clone(),
            move |tcp, peer, permit| {
                serve_tcp(tcp, peer, permit, tcp_table.clone(), shared.clone())
            },
        );
        let udp = serve_udp(Arc::new(self.udp), table, self.shared, shutdown);
        tokio::join!(tcp, udp);
    }
}

/// What to do with one message, decided.
enum Step {
    /// Send these bytes back.
    Reply(Vec<u8>),
    /// Forward the query (decoded, with its type label) upstream.
    Forward(Message, &'static str),
    /// Send nothing.
    Nothing,
}

impl Shared {
    fn dns(&self) -> &DnsMetrics {
        self.metrics.dns()
    }

    /// Decides what to do with `bytes` received over `transport`.
    fn step(&self, bytes: &[u8], table: &DnsTable, transport: Transport) -> Step {
        let query = match Message::from_vec(bytes) {
            Ok(query) => query,
            Err(error) => {
                self.dns().rejected("malformed");
                tracing::debug!(transport = transport.as_str(), %error, "DNS: malformed message");
                return match malformed_reply(bytes) {
                    Some(reply) => self.encode(&reply, &reply, transport),
                    None => Step::Nothing,
                };
            }
        };
        let qtype = query_type(&query);
        let decision = answer(table, &query);
        if decision != Answer::Ignore {
            self.dns().request(qtype);
        }
        match decision {
            Answer::Local(reply) => {
                self.dns().local(qtype);
                tracing::debug!(
                    transport = transport.as_str(),
                    question = ?query.queries.first().map(ToString::to_string),
                    rcode = %reply.metadata.response_code,
                    answers = reply.answers.len(),
                    "DNS: answered from the mesh table"
                );
                self.encode(&reply, &query, transport)
            }
            Answer::Forward => Step::Forward(query, qtype),
            Answer::Ignore => Step::Nothing,
        }
    }

    /// `reply` fitted to what `query`'s client can take over `transport`.
    fn encode(&self, reply: &Message, query: &Message, transport: Transport) -> Step {
        match encode_within(reply, reply_limit(query, transport)) {
            Ok(bytes) => Step::Reply(bytes),
            Err(error) => {
                tracing::debug!(%error, "DNS: reply not sent");
                Step::Nothing
            }
        }
    }

    /// A place among the queries waiting upstream, or the SERVFAIL to send at once when they
    /// are [`Limits::forwarded_in_flight`] already.
    fn admit_forward(
        &self,
        query: &Message,
        transport: Transport,
    ) -> Result<OwnedSemaphorePermit, Option<Vec<u8>>> {
        self.in_flight.clone().try_acquire_owned().map_err(|_| {
            self.dns().rejected("in_flight_cap");
            self.reply_bytes(&server_failure(query), query, transport)
        })
    }

    /// Forwards `query` (received as `bytes`) to the upstreams in order, holding its place
    /// `_permit`, and returns the reply for the client: the first upstream answer, fitted to
    /// the client's transport, or SERVFAIL when none answered.
    async fn forward(
        &self,
        query: &Message,
        qtype: &'static str,
        bytes: &[u8],
        transport: Transport,
        _permit: OwnedSemaphorePermit,
    ) -> Option<Vec<u8>> {
        self.dns().upstream_request(qtype);
        let started = Instant::now();
        let mut last_error = None;
        for &upstream in &self.upstreams {
            let result = upstream::exchange(
                transport,
                upstream,
                bytes,
                query,
                self.mark,
                self.limits.upstream_timeout,
            )
            .await;
            match result {
                Ok(reply) => {
                    self.dns()
                        .upstream_duration(started.elapsed().as_secs_f64());
                    tracing::debug!(
                        transport = transport.as_str(),
                        %upstream,
                        question = ?query.queries.first().map(ToString::to_string),
                        "DNS: forwarded"
                    );
                    return match fit_relayed(reply, query, transport) {
                        Ok(bytes) => Some(bytes),
                        Err(error) => {
                            tracing::debug!(%error, "DNS: upstream reply not relayed");
                            None
                        }
                    };
                }
                Err(error) => {
                    tracing::debug!(
                        transport = transport.as_str(),
                        %upstream,
                        %error,
                        question = ?query.queries.first().map(ToString::to_string),
                        "DNS: upstream failed"
                    );
                    last_error = Some((upstream, error));
                }
            }
        }
        self.dns()
            .upstream_duration(started.elapsed().as_secs_f64());
        self.dns().upstream_failure(qtype);
        self.log_failure(last_error);
        self.reply_bytes(&server_failure(query), query, transport)
    }

    fn reply_bytes(
        &self,
        reply: &Message,
        query: &Message,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        match self.encode(reply, query, transport) {
            Step::Reply(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// Warns that upstreams fail, at most once every [`LOG_EVERY`] and without query names.
    fn log_failure(&self, last: Option<(SocketAddr, ExchangeError)>) {
        if let Some(count) = self.failures_log.note(Instant::now()) {
            let (upstream, error) = match &last {
                Some((u, e)) => (Some(u.to_string()), Some(e.to_string())),
                None => (None, None),
            };
            tracing::warn!(
                last_upstream = upstream,
                error,
                failed = count,
                "DNS queries answered SERVFAIL: no upstream resolver answered (logged at most every {}s; each is counted in dns_upstream_failures_total)",
                LOG_EVERY.as_secs()
            );
        }
    }
}

/// The UDP loop: local answers are sent inline, forwarded queries each get a task.
async fn serve_udp(
    socket: Arc<UdpSocket>,
    table: watch::Receiver<Arc<DnsTable>>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        let (len, peer) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(error) => {
                    tracing::debug!(%error, "DNS: UDP receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = crate::stopped(&mut shutdown) => return,
        };
        let bytes = buf.get(..len).unwrap_or_default();
        let current = table.borrow().clone();
        match shared.step(bytes, &current, Transport::Udp) {
            Step::Reply(reply) => send_udp(&socket, &reply, peer).await,
            Step::Forward(query, qtype) => match shared.admit_forward(&query, Transport::Udp) {
                Ok(permit) => {
                    let socket = socket.clone();
                    let shared = shared.clone();
                    let bytes = bytes.to_vec();
                    tokio::spawn(async move {
                        let reply = shared
                            .forward(&query, qtype, &bytes, Transport::Udp, permit)
                            .await;
                        if let Some(reply) = reply {
                            send_udp(&socket, &reply, peer).await;
                        }
                    });
                }
                Err(Some(servfail)) => send_udp(&socket, &servfail, peer).await,
                Err(None) => {}
            },
            Step::Nothing => {}
        }
    }
}

async fn send_udp(socket: &UdpSocket, reply: &[u8], peer: SocketAddr) {
    if let Err(error) = socket.send_to(reply, peer).await {
        tracing::debug!(%peer, %error, "DNS: UDP send failed");
    }
}

/// One client TCP connection: length-prefixed queries answered in turn (RFC 1035 §4.2.2,
/// RFC 7766), closed after [`Limits::tcp_idle`] of silence or on a message without a header.
async fn serve_tcp(
    mut tcp: TcpStream,
    peer: SocketAddr,
    _permit: Permit,
    table: watch::Receiver<Arc<DnsTable>>,
    shared: Arc<Shared>,
) {
    let idle = shared.limits.tcp_idle;
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(idle, tcp.read_u16()).await else {
            return;
        };
        let mut bytes = vec![0u8; usize::from(len)];
        if !matches!(
            tokio::time::timeout(idle, tcp.read_exact(&mut bytes)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let current = table.borrow().clone();
        let reply = match shared.step(&bytes, &current, Transport::Tcp) {
            Step::Reply(reply) => Some(reply),
            Step::Forward(query, qtype) => match shared.admit_forward(&query, Transport::Tcp) {
                Ok(permit) => {
                    shared
                        .forward(&query, qtype, &bytes, Transport::Tcp, permit)
                        .await
                }
                Err(servfail) => servfail,
            },
            Step::Nothing => None,
        };
        let Some(reply) = reply else {
            tracing::debug!(%peer, "DNS: TCP connection closed after a message without a reply");
            return;
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&reply);
        if !matches!(
            tokio::time::timeout(idle, tcp.write_all(&framed)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}

/// The metric label of a query's type: the common types by name, `other` beyond them.
fn query_type(query: &Message) -> &'static str {
    let Some(question) = query.queries.first() else {
        return "none";
    };
    match question.query_type() {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::CNAME => "CNAME",
        RecordType::HTTPS => "HTTPS",
        RecordType::MX => "MX",
        RecordType::NS => "NS",
        RecordType::PTR => "PTR",
        RecordType::SOA => "SOA",
        RecordType::SRV => "SRV",
        RecordType::SVCB => "SVCB",
        RecordType::TXT => "TXT",
        RecordType::ANY => "ANY",
        _ => "other",
    }
}
