//! A DestinationRule `connectionPool.tcp` carried out for whole TCP connections: the ones a
//! sidecar forwards to a TCP port of a service (outbound and egress listeners, captured
//! connections) and the ones a gateway's TCP and TLS servers forward (docs/routing.md,
//! "Connection pool and outlier detection"). HTTP requests have their own limits
//! (`egress_http/limits.rs`); the socket options below apply to both.
//!
//! Envoy's rules, as Istio sets them for the destination's cluster:
//! - `maxConnections` is the cluster's `max_connections` circuit breaker: a TCP proxy that
//!   cannot get a connection under it closes the downstream connection at once, with the
//!   response flag `UO` (envoyproxy.io `intro/arch_overview/upstream/circuit_breaking`);
//! - `connectTimeout` bounds the connect (default 10s);
//! - `tcpKeepalive` sets `SO_KEEPALIVE` and, where given, `TCP_KEEPIDLE`, `TCP_KEEPINTVL`,
//!   `TCP_KEEPCNT` on the upstream socket (the cluster's `upstream_connection_options`);
//! - `maxConnectionDuration` closes a forwarded connection after that long (the TCP proxy's
//!   `max_downstream_connection_duration`, which Istio sets from it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use ward_config::traffic_policy::{ConnectionPool, Keepalive};

use crate::refusal::{Refusal, ResponseFlag};

/// Whether one more connection may open when `open` are open under `max` (`None`: no limit).
/// Pure.
pub(crate) fn admits(open: u32, max: Option<u32>) -> bool {
    max.is_none_or(|max| open < max)
}

/// What is open or in flight to each destination (`host|subset|port`): connections, or
/// retries.
#[derive(Debug, Default)]
pub(crate) struct TcpPools {
    open: Mutex<HashMap<String, Arc<AtomicU32>>>,
}

/// One open connection of a destination; the count drops with it.
#[derive(Debug)]
pub(crate) struct Slot(Arc<AtomicU32>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl TcpPools {
    /// A slot for one more connection to `key`, or the refusal (`UO`) when `maxConnections`
    /// are open.
    pub(crate) fn take(&self, key: &str, pool: Option<&ConnectionPool>) -> Result<Slot, Refusal> {
        let max = pool.and_then(|p| p.max_connections);
        self.count(key, max).map_err(|n| {
            Refusal::upstream(
                ResponseFlag::UpstreamOverflow,
                format!(
                    "{key}: {n} connections open, connectionPool.tcp.maxConnections {} \
                     reached (overflow)",
                    max.unwrap_or_default()
                ),
            )
        })
    }

    /// A slot under `max` for `key`, or how many are taken.
    pub(crate) fn count(&self, key: &str, max: Option<u32>) -> Result<Slot, u32> {
        let counter = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            // Destinations with nothing open are forgotten (configs change their keys).
            open.retain(|k, c| k == key || c.load(Ordering::Acquire) > 0);
            open.entry(key.to_owned()).or_default().clone()
        };
        let taken = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            admits(n, max).then_some(n + 1)
        });
        taken.map(|_| Slot(counter))
    }
}

/// The socket options of `tcpKeepalive`, for socket2.
fn options(k: &Keepalive) -> TcpKeepalive {
    let mut o = TcpKeepalive::new();
    if let Some(t) = k.time {
        o = o.with_time(t);
    }
    if let Some(i) = k.interval {
        o = o.with_interval(i);
    }
    if let Some(p) = k.probes {
        o = o.with_retries(p);
    }
    o
}

/// Turn on `tcpKeepalive` on an upstream socket, when the pool sets it.
pub(crate) fn keepalive(socket: &TcpStream, pool: Option<&ConnectionPool>) {
    let Some(k) = pool.and_then(|p| p.tcp_keepalive.as_ref()) else {
        return;
    };
    if let Err(e) = SockRef::from(socket).set_tcp_keepalive(&options(k)) {
        tracing::warn!(error = %e, "could not set tcpKeepalive on an upstream socket");
    }
}

/// The close order of a connection that reached `maxConnectionDuration`.
pub(crate) fn duration_reached(limit: Duration) -> Refusal {
    Refusal::upstream(
        ResponseFlag::DurationTimeout,
        format!("connectionPool.tcp.maxConnectionDuration {limit:?} reached"),
    )
}

/// Istio's default `connectTimeout`.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The connect timeout of a pool (Istio's default 10s).
pub(crate) fn connect_timeout(pool: Option<&ConnectionPool>) -> Duration {
    pool.and_then(|p| p.connect_timeout)
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_over_max_connections_overflow() {
        assert!(admits(0, None));
        assert!(admits(u32::MAX - 1, None));
        assert!(admits(1, Some(2)));
        assert!(!admits(2, Some(2)));
        let pools = TcpPools::default();
        let pool = ConnectionPool {
            max_connections: Some(2),
            ..ConnectionPool::default()
        };
        let a = pools.take("db|", Some(&pool)).unwrap();
        let _b = pools.take("db|", Some(&pool)).unwrap();
        let over = pools.take("db|", Some(&pool)).unwrap_err();
        assert_eq!(over.flag, ResponseFlag::UpstreamOverflow);
        assert!(over.detail.contains("maxConnections 2"), "{}", over.detail);
        // Another destination has its own count.
        let _c = pools.take("web|", Some(&pool)).unwrap();
        // A closed connection frees its slot.
        drop(a);
        let _d = pools.take("db|", Some(&pool)).unwrap();
        // Without a limit, every connection opens.
        let many: Vec<Slot> = (0..10).map(|_| pools.take("db|", None).unwrap()).collect();
        assert_eq!(many.len(), 10);
    }

    #[tokio::test]
    async fn keepalive_options_reach_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let socket = TcpStream::connect(addr).await.unwrap();
        let s = SockRef::from(&socket);
        assert!(!s.keepalive().unwrap());
        keepalive(&socket, Some(&ConnectionPool::default()));
        assert!(!s.keepalive().unwrap(), "no tcpKeepalive: left off");
        let pool = ConnectionPool {
            tcp_keepalive: Some(Keepalive {
                time: Some(Duration::from_secs(11)),
                interval: Some(Duration::from_secs(3)),
                probes: Some(4),
            }),
            ..ConnectionPool::default()
        };
        keepalive(&socket, Some(&pool));
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(11));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(3));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 4);
    }
}
