//! Open inbound connections, so that a policy change reaches connections that are already open
//! (ztunnel `src/proxy/connection_manager.rs`: on every policy update each open connection is
//! re-authorized and closed if now denied).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use ward_policy::{HttpAttributes, RequestAuth};

use crate::connection::InboundConn;
use crate::refusal::Refusal;

/// What an open connection was authorized on; enough to authorize it again.
#[derive(Clone, Debug)]
pub(crate) struct Authorized {
    /// The connection.
    pub(crate) conn: Arc<InboundConn>,
    /// For an upgraded HTTP connection (WebSocket…): the request that was authorized, which a
    /// re-check authorizes again. `None` for connections decided at L4.
    pub(crate) request: Option<Arc<UpgradeRequest>>,
}

/// The request that upgraded a connection, as it was authorized (normalized path, the one
/// authority, the headers after sanitizing, the verified token's claims).
#[derive(Clone, Debug)]
pub(crate) struct UpgradeRequest {
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
    /// The policy engine's view of this request on `conn`.
    pub(crate) fn attributes<'a>(&'a self, conn: &'a InboundConn) -> HttpAttributes<'a> {
        HttpAttributes {
            l4: conn.l4(),
            method: &self.method,
            host: &self.host,
            path: &self.path,
            headers: &self.headers,
            auth: self.auth.as_ref(),
        }
    }
}

struct Tracked {
    authorized: Authorized,
    /// Sending on it tells the connection's task to close now. Dropped when the order is sent.
    close: Option<oneshot::Sender<Refusal>>,
}

/// The open connections of one sidecar. The lock is only held for map operations, never across
/// an `.await`.
#[derive(Default)]
pub(crate) struct ConnTracker {
    next: AtomicU64,
    /// Written by connection tasks (register, drop) and by the sidecar's config task (recheck).
    open: Mutex<HashMap<u64, Tracked>>,
}

/// Keeps a connection registered; dropping it (when the connection ends) deregisters it.
pub(crate) struct ConnGuard {
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
    pub(crate) fn register(
        self: &Arc<Self>,
        authorized: Authorized,
    ) -> (ConnGuard, oneshot::Receiver<Refusal>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut open) = self.open.lock() {
            open.insert(
                id,
                Tracked {
                    authorized,
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
    pub(crate) fn recheck(&self, decide: impl Fn(&Authorized) -> Option<Refusal>) -> usize {
        let Ok(mut open) = self.open.lock() else {
            return 0;
        };
        let mut closed = 0;
        for tracked in open.values_mut() {
            if tracked.close.is_none() {
                continue;
            }
            if let Some(order) = decide(&tracked.authorized) {
                if let Some(tx) = tracked.close.take() {
                    let _ = tx.send(order);
                    closed += 1;
                }
            }
        }
        closed
    }

    /// How many connections are open.
    pub(crate) fn len(&self) -> usize {
        self.open.lock().map(|o| o.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(port: u16) -> Authorized {
        Authorized {
            conn: Arc::new(InboundConn::plaintext(
                "127.0.0.1:1".parse().unwrap(),
                std::net::SocketAddr::new("127.0.0.2".parse().unwrap(), port),
            )),
            request: None,
        }
    }

    #[test]
    fn recheck_closes_only_denied_and_only_once() {
        let t = Arc::new(ConnTracker::default());
        let (_g1, mut rx1) = t.register(facts(1));
        let (_g2, mut rx2) = t.register(facts(2));
        let deny_port_1 = |a: &Authorized| {
            (a.conn.dst.port() == 1).then(|| Refusal::policy(Some("ns/p".into()), Some(0), "x"))
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
        assert_eq!(t.len(), 0);
    }
}
