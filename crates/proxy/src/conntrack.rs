//! Open inbound connections, so that a policy change reaches connections that are already open
//! (ztunnel `src/proxy/connection_manager.rs`: on every policy update each open connection is
//! re-authorized and closed if now denied).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use ward_policy::{HttpAttributes, L4Attributes, Peer, RequestAuth};

/// What a connection was authorized on; enough to authorize it again.
#[derive(Clone, Debug)]
pub struct ConnFacts {
    /// The verified peer; `None` for plaintext.
    pub peer: Option<Peer>,
    /// The socket peer address.
    pub source_ip: IpAddr,
    /// The workload address the connection was for.
    pub destination_ip: IpAddr,
    /// The workload port the connection was for.
    pub destination_port: u16,
    /// For an upgraded HTTP connection (WebSocket…): the request that was authorized, which a
    /// re-check authorizes again. `None` for connections decided at L4.
    pub request: Option<Arc<UpgradeRequest>>,
}

/// The request that upgraded a connection, as it was authorized (normalized path, the one
/// authority, the headers after sanitizing, the verified token's claims).
#[derive(Clone, Debug)]
pub struct UpgradeRequest {
    /// The method.
    pub method: String,
    /// The authority.
    pub host: String,
    /// The normalized path, without query.
    pub path: String,
    /// Every header line, lower-case names.
    pub headers: Vec<(String, String)>,
    /// The verified end-user identity, if a token was verified.
    pub auth: Option<RequestAuth>,
}

impl UpgradeRequest {
    /// The policy engine's view of this request on the connection `facts` describe.
    pub fn attributes<'a>(&'a self, facts: &'a ConnFacts) -> HttpAttributes<'a> {
        HttpAttributes {
            l4: facts.l4(),
            method: &self.method,
            host: &self.host,
            path: &self.path,
            headers: &self.headers,
            auth: self.auth.as_ref(),
        }
    }
}

impl ConnFacts {
    /// The policy engine's view of the connection (no SNI inside the mesh).
    pub fn l4(&self) -> L4Attributes<'_> {
        L4Attributes {
            peer: self.peer.as_ref(),
            source_ip: self.source_ip,
            remote_ip: self.source_ip,
            destination_ip: self.destination_ip,
            destination_port: self.destination_port,
            sni: None,
        }
    }
}

/// Why an open connection must close.
#[derive(Clone, Debug)]
pub struct CloseOrder {
    /// The deciding policy as `ns/name`, if one decided.
    pub policy: Option<String>,
    /// Its rule index, if any.
    pub rule: Option<usize>,
    /// Envoy-style detail or a short reason.
    pub detail: String,
}

struct Tracked {
    facts: ConnFacts,
    /// Sending on it tells the connection's task to close now. Dropped when the order is sent.
    close: Option<oneshot::Sender<CloseOrder>>,
}

/// The open connections of one sidecar. The lock is only held for map operations, never across
/// an `.await`.
#[derive(Default)]
pub struct ConnTracker {
    next: AtomicU64,
    /// Written by connection tasks (register, drop) and by the sidecar's config task (recheck).
    open: Mutex<HashMap<u64, Tracked>>,
}

/// Keeps a connection registered; dropping it (when the connection ends) deregisters it.
pub struct ConnGuard {
    id: u64,
    tracker: Arc<ConnTracker>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Ok(mut open) = self.tracker.open.lock() {
            open.remove(&self.id);
        }
    }
}

impl ConnTracker {
    /// Register an open connection. The receiver fires if a later policy closes it.
    pub fn register(
        self: &Arc<Self>,
        facts: ConnFacts,
    ) -> (ConnGuard, oneshot::Receiver<CloseOrder>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut open) = self.open.lock() {
            open.insert(
                id,
                Tracked {
                    facts,
                    close: Some(tx),
                },
            );
        }
        (
            ConnGuard {
                id,
                tracker: self.clone(),
            },
            rx,
        )
    }

    /// Re-decide every open connection with `decide`; send a close order to each that is now
    /// refused. Returns how many were ordered closed.
    pub fn recheck(&self, decide: impl Fn(&ConnFacts) -> Option<CloseOrder>) -> usize {
        let Ok(mut open) = self.open.lock() else {
            return 0;
        };
        let mut closed = 0;
        for tracked in open.values_mut() {
            if tracked.close.is_none() {
                continue;
            }
            if let Some(order) = decide(&tracked.facts) {
                if let Some(tx) = tracked.close.take() {
                    let _ = tx.send(order);
                    closed += 1;
                }
            }
        }
        closed
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.open.lock().map(|o| o.len()).unwrap_or(0)
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(port: u16) -> ConnFacts {
        ConnFacts {
            peer: None,
            source_ip: "127.0.0.1".parse().unwrap(),
            destination_ip: "127.0.0.2".parse().unwrap(),
            destination_port: port,
            request: None,
        }
    }

    #[test]
    fn recheck_closes_only_denied_and_only_once() {
        let t = Arc::new(ConnTracker::default());
        let (_g1, mut rx1) = t.register(facts(1));
        let (_g2, mut rx2) = t.register(facts(2));
        let deny_port_1 = |f: &ConnFacts| {
            (f.destination_port == 1).then(|| CloseOrder {
                policy: Some("ns/p".into()),
                rule: Some(0),
                detail: "x".into(),
            })
        };
        assert_eq!(t.recheck(deny_port_1), 1);
        assert_eq!(rx1.try_recv().unwrap().policy.as_deref(), Some("ns/p"));
        assert!(rx2.try_recv().is_err());
        assert_eq!(t.recheck(deny_port_1), 0, "an order is sent once");
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn guard_drop_deregisters() {
        let t = Arc::new(ConnTracker::default());
        let (g, _rx) = t.register(facts(1));
        assert_eq!(t.len(), 1);
        drop(g);
        assert!(t.is_empty());
    }
}
