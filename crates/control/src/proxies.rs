//! Every proxy on the config stream: who it is, what it was sent and what it acknowledged, for
//! `/debug/proxies` and `ward proxy-status` (the same three states as `istioctl proxy-status`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Whether a proxy serves what the control plane last sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncState {
    /// The proxy acknowledged the last version sent.
    #[serde(rename = "SYNCED")]
    Synced,
    /// A version was sent and is not acknowledged yet, or was refused (NACK).
    #[serde(rename = "STALE")]
    Stale,
    /// Nothing was sent on this stream yet.
    #[serde(rename = "NOT SENT")]
    NotSent,
}

impl SyncState {
    /// The state of a proxy that was sent `sent` and acknowledged `acked`.
    pub fn of(sent: Option<&str>, acked: Option<&str>) -> SyncState {
        match sent {
            None => SyncState::NotSent,
            Some(v) if acked == Some(v) => SyncState::Synced,
            Some(_) => SyncState::Stale,
        }
    }
}

/// One connected proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    /// Its WorkloadEntry, `namespace/name`.
    pub workload: String,
    /// The SPIFFE id it was bound to.
    pub identity: String,
    /// Its address as the control plane sees it.
    pub peer: String,
    /// How it authenticated: `certificate` or `token`.
    pub via: String,
    /// The build it reported.
    pub proxy_version: String,
    /// When the stream opened, seconds since the epoch.
    pub connected_at: u64,
    /// The version last sent (or found already held on connect).
    pub sent_version: Option<String>,
    /// The config generation of the last version sent.
    pub sent_generation: u64,
    /// The version the proxy last acknowledged.
    pub acked_version: Option<String>,
    /// The reason of the last refusal (NACK), until a later version is acknowledged.
    pub last_nack: Option<String>,
    /// Responses sent on this stream.
    pub responses: u64,
    /// Bytes of those responses (protobuf encoded).
    pub bytes_sent: u64,
    /// Milliseconds from sending the last acknowledged version to its ACK.
    pub last_ack_ms: Option<u64>,
    /// SYNCED, STALE or NOT SENT.
    pub state: SyncState,
}

impl ProxyStatus {
    /// A proxy that just connected.
    pub fn connected(workload: &str, identity: &str, peer: &str, via: &str) -> ProxyStatus {
        ProxyStatus {
            workload: workload.to_owned(),
            identity: identity.to_owned(),
            peer: peer.to_owned(),
            via: via.to_owned(),
            proxy_version: String::new(),
            connected_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            sent_version: None,
            sent_generation: 0,
            acked_version: None,
            last_nack: None,
            responses: 0,
            bytes_sent: 0,
            last_ack_ms: None,
            state: SyncState::NotSent,
        }
    }

    fn refresh_state(&mut self) {
        self.state = SyncState::of(self.sent_version.as_deref(), self.acked_version.as_deref());
    }
}

/// The connected proxies, by stream. Locked only for map operations.
#[derive(Debug, Default)]
pub struct ProxyRegistry {
    next: AtomicU64,
    streams: Mutex<BTreeMap<u64, ProxyStatus>>,
}

impl ProxyRegistry {
    /// Records a new stream; returns its key.
    pub fn add(&self, status: ProxyStatus) -> u64 {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.streams.lock() {
            s.insert(key, status);
        }
        key
    }

    /// Changes one stream's record.
    pub fn update(&self, key: u64, change: impl FnOnce(&mut ProxyStatus)) {
        if let Ok(mut s) = self.streams.lock() {
            if let Some(status) = s.get_mut(&key) {
                change(status);
                status.refresh_state();
            }
        }
    }

    /// Forgets a closed stream.
    pub fn remove(&self, key: u64) {
        if let Ok(mut s) = self.streams.lock() {
            s.remove(&key);
        }
    }

    /// Every connected proxy, by workload then connection time.
    pub fn list(&self) -> Vec<ProxyStatus> {
        let mut out: Vec<ProxyStatus> = self
            .streams
            .lock()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default();
        out.sort_by(|a, b| {
            (a.workload.as_str(), a.connected_at).cmp(&(b.workload.as_str(), b.connected_at))
        });
        out
    }

    /// How many streams are open.
    pub fn len(&self) -> usize {
        self.streams.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Whether no stream is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_what_was_sent_and_acknowledged() {
        assert_eq!(SyncState::of(None, None), SyncState::NotSent);
        assert_eq!(SyncState::of(Some("a"), None), SyncState::Stale);
        assert_eq!(SyncState::of(Some("b"), Some("a")), SyncState::Stale);
        assert_eq!(SyncState::of(Some("a"), Some("a")), SyncState::Synced);
        assert_eq!(
            serde_json::to_string(&SyncState::NotSent).unwrap(),
            "\"NOT SENT\""
        );
    }

    #[test]
    fn the_registry_keeps_each_stream_until_it_closes() {
        let r = ProxyRegistry::default();
        let a = r.add(ProxyStatus::connected("app/a", "id-a", "p", "token"));
        let b = r.add(ProxyStatus::connected("app/b", "id-b", "p", "certificate"));
        r.update(a, |s| s.sent_version = Some("v1".into()));
        assert_eq!(r.list()[0].state, SyncState::Stale);
        r.update(a, |s| s.acked_version = Some("v1".into()));
        assert_eq!(r.list()[0].state, SyncState::Synced);
        assert_eq!(r.list()[1].state, SyncState::NotSent);
        r.remove(b);
        assert_eq!(r.len(), 1);
    }
}
