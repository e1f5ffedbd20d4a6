//! mTLS coverage from observed traffic (`ward verify coverage`, docs/verify.md).
//!
//! Each destination sidecar counts what it served, by five-minute bucket and by flow: source,
//! destination workload, port, whether the hop was mTLS, and the PeerAuthentication that set the
//! port's mode. Only the destination knows whether a connection arrived over mTLS (Istio leaves
//! `connection_security_policy` unknown on the source side), so only inbound traffic is counted.
//!
//! Memory is bounded: at most [`MAX_FLOWS`] (flow, bucket) entries, kept at most [`RETENTION`];
//! when full, the oldest bucket goes, and the report says from when its data is complete.
//! Plaintext sources are keyed by address (nothing proves who they are), so a flood of
//! plaintext clients fills the table, evicts old buckets, and is still reported.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Width of a time bucket, seconds.
pub const BUCKET_SECONDS: u64 = 300;
/// How long buckets are kept, seconds (24 hours).
pub const RETENTION: u64 = 24 * 3600;
/// (flow, bucket) entries kept at most: about 580 bytes each with the flow's strings and the
/// tree's nodes (measured: 11 MB of RSS for a full table), per process.
pub const MAX_FLOWS: usize = 20_000;

/// One flow, as the destination sidecar saw it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Flow {
    /// The source workload (`ns/name`) when the config and a verified identity say which it is,
    /// else its SPIFFE id; `unknown` for plaintext.
    pub source: String,
    /// The source address, for plaintext only (nothing else names a plaintext client).
    pub source_address: Option<String>,
    /// The destination workload, `ns/name`.
    pub destination: String,
    /// The workload port.
    pub port: u16,
    /// Whether the hop was mTLS.
    pub mtls: bool,
    /// The negotiated key-exchange group (mTLS only), e.g. `X25519MLKEM768`.
    pub kx_group: Option<String>,
    /// The PeerAuthentication (`ns/name`) that set the port's mode; `None`: Ward's default.
    pub peer_authentication: Option<String>,
    /// The port's mode: `STRICT`, `PERMISSIVE` or `DISABLE`.
    pub mode: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    connections: u64,
    requests: u64,
}

#[derive(Default)]
struct Table {
    /// (bucket start, flow) → counts. Ordered by time first, so the oldest bucket is first.
    flows: BTreeMap<(u64, Flow), Counts>,
    /// Data before this time (seconds since the epoch) was evicted to stay in bounds.
    evicted_before: u64,
}

/// The coverage table of one process's sidecars.
pub struct Coverage {
    table: Mutex<Table>,
    /// When counting started (seconds since the epoch): nothing before it was seen.
    started: u64,
}

impl Default for Coverage {
    fn default() -> Coverage {
        Coverage {
            table: Mutex::default(),
            started: now_secs(),
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Coverage {
    /// Count a connection served (an HBONE `CONNECT` stream or a plaintext socket).
    pub(crate) fn connection(&self, flow: Flow) {
        self.add_at(flow, now_secs(), 1, 0);
    }

    /// Count an HTTP request served over a connection of `flow`.
    pub(crate) fn request(&self, flow: Flow) {
        self.add_at(flow, now_secs(), 0, 1);
    }

    fn add_at(&self, flow: Flow, now: u64, connections: u64, requests: u64) {
        let Ok(mut t) = self.table.lock() else {
            return;
        };
        let bucket = now - now % BUCKET_SECONDS;
        let c = t.flows.entry((bucket, flow)).or_default();
        c.connections += connections;
        c.requests += requests;
        // Age out, then stay under the cap by dropping whole oldest buckets.
        let horizon = now.saturating_sub(RETENTION);
        while let Some(((oldest, _), _)) = t.flows.first_key_value() {
            let oldest = *oldest;
            if oldest >= horizon && t.flows.len() <= MAX_FLOWS {
                break;
            }
            if oldest == bucket {
                // Never drop the bucket being counted; the cap is exceeded by one bucket's
                // flows at most.
                break;
            }
            t.flows.retain(|(b, _), _| *b != oldest);
            if oldest >= horizon {
                t.evicted_before = t.evicted_before.max(oldest + BUCKET_SECONDS);
            }
        }
    }

    /// The report of the traffic seen since `since` (seconds since the epoch).
    pub fn report(&self, since: u64) -> CoverageReport {
        self.report_at(since, now_secs())
    }

    fn report_at(&self, since: u64, now: u64) -> CoverageReport {
        let Ok(t) = self.table.lock() else {
            return CoverageReport::default();
        };
        let mut pairs: BTreeMap<(String, String), PairCoverage> = BTreeMap::new();
        let mut plain: BTreeMap<(String, Option<String>, String, u16), PlaintextFlow> =
            BTreeMap::new();
        let mut kx: BTreeMap<String, u64> = BTreeMap::new();
        let since_bucket = since - since % BUCKET_SECONDS;
        for ((bucket, f), c) in t.flows.range((since_bucket, Flow::min())..) {
            let p = pairs
                .entry((f.source.clone(), f.destination.clone()))
                .or_insert_with(|| PairCoverage {
                    source: f.source.clone(),
                    destination: f.destination.clone(),
                    ..PairCoverage::default()
                });
            p.connections += c.connections;
            p.requests += c.requests;
            if f.mtls {
                p.mtls_connections += c.connections;
                p.mtls_requests += c.requests;
                *kx.entry(f.kx_group.clone().unwrap_or_else(|| "unknown".into()))
                    .or_default() += c.connections;
            } else {
                let key = (
                    f.source.clone(),
                    f.source_address.clone(),
                    f.destination.clone(),
                    f.port,
                );
                let e = plain.entry(key).or_insert_with(|| PlaintextFlow {
                    source: f.source.clone(),
                    source_address: f.source_address.clone(),
                    destination: f.destination.clone(),
                    port: f.port,
                    peer_authentication: f.peer_authentication.clone(),
                    mode: f.mode.clone(),
                    connections: 0,
                    requests: 0,
                    first_seen: *bucket,
                    last_seen: *bucket,
                });
                e.connections += c.connections;
                e.requests += c.requests;
                e.first_seen = e.first_seen.min(*bucket);
                e.last_seen = e.last_seen.max(*bucket + BUCKET_SECONDS).min(now);
                // The latest bucket's policy is the one that allows it now.
                if *bucket + BUCKET_SECONDS >= e.last_seen {
                    e.peer_authentication.clone_from(&f.peer_authentication);
                    e.mode.clone_from(&f.mode);
                }
            }
        }
        let mut pairs: Vec<PairCoverage> = pairs.into_values().collect();
        for p in &mut pairs {
            p.mtls_connection_share = share(p.mtls_connections, p.connections);
            p.mtls_request_share = share(p.mtls_requests, p.requests);
        }
        let sum = |f: fn(&PairCoverage) -> u64| pairs.iter().map(f).sum::<u64>();
        let (conns, mconns) = (sum(|p| p.connections), sum(|p| p.mtls_connections));
        let (reqs, mreqs) = (sum(|p| p.requests), sum(|p| p.mtls_requests));
        CoverageReport {
            since,
            until: now,
            complete_since: t.evicted_before.max(since).max(self.started),
            connections: conns,
            mtls_connections: mconns,
            mtls_connection_share: share(mconns, conns),
            requests: reqs,
            mtls_requests: mreqs,
            mtls_request_share: share(mreqs, reqs),
            key_exchange: kx,
            pairs,
            plaintext: plain.into_values().collect(),
        }
    }
}

impl Flow {
    /// The least flow, for range starts.
    fn min() -> Flow {
        Flow {
            source: String::new(),
            source_address: None,
            destination: String::new(),
            port: 0,
            mtls: false,
            kx_group: None,
            peer_authentication: None,
            mode: String::new(),
        }
    }
}

/// `part / whole`, or `None` when nothing was seen.
fn share(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// What `GET /coverage` serves: the traffic one process's sidecars received in a window.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CoverageReport {
    /// Start of the window asked for (seconds since the epoch).
    pub since: u64,
    /// When the report was made.
    pub until: u64,
    /// The counts are complete from this time on; later than `since` when the process started
    /// after it, or older buckets were evicted (see the module docs).
    pub complete_since: u64,
    /// Connections served.
    pub connections: u64,
    /// Of which over mTLS.
    pub mtls_connections: u64,
    /// `mtls_connections / connections`; `None` when there were none.
    pub mtls_connection_share: Option<f64>,
    /// HTTP requests served.
    pub requests: u64,
    /// Of which over mTLS.
    pub mtls_requests: u64,
    /// `mtls_requests / requests`.
    pub mtls_request_share: Option<f64>,
    /// mTLS connections by key-exchange group.
    pub key_exchange: BTreeMap<String, u64>,
    /// Per (source, destination) pair.
    pub pairs: Vec<PairCoverage>,
    /// Every plaintext flow.
    pub plaintext: Vec<PlaintextFlow>,
}

/// The coverage of one (source, destination) pair.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PairCoverage {
    /// Source workload (`ns/name`), SPIFFE id, or `unknown` (plaintext).
    pub source: String,
    /// Destination workload.
    pub destination: String,
    /// Connections served.
    pub connections: u64,
    /// Of which over mTLS.
    pub mtls_connections: u64,
    /// Share of connections over mTLS.
    pub mtls_connection_share: Option<f64>,
    /// HTTP requests served.
    pub requests: u64,
    /// Of which over mTLS.
    pub mtls_requests: u64,
    /// Share of requests over mTLS.
    pub mtls_request_share: Option<f64>,
}

/// One plaintext flow and the PeerAuthentication that let it in.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlaintextFlow {
    /// `unknown` (a plaintext peer proves nothing).
    pub source: String,
    /// The client's address.
    pub source_address: Option<String>,
    /// Destination workload.
    pub destination: String,
    /// The workload port.
    pub port: u16,
    /// The PeerAuthentication (`ns/name`) whose mode allowed plaintext.
    pub peer_authentication: Option<String>,
    /// That mode: `PERMISSIVE` or `DISABLE`.
    pub mode: String,
    /// Connections served in plaintext.
    pub connections: u64,
    /// HTTP requests served in plaintext.
    pub requests: u64,
    /// Start of the first bucket it was seen in.
    pub first_seen: u64,
    /// End of the last bucket it was seen in (or now).
    pub last_seen: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(src: &str, mtls: bool, port: u16) -> Flow {
        Flow {
            source: src.into(),
            source_address: (!mtls).then(|| "127.0.0.9".to_owned()),
            destination: "app/srv".into(),
            port,
            mtls,
            kx_group: mtls.then(|| "X25519MLKEM768".to_owned()),
            peer_authentication: Some("istio-system/default".into()),
            mode: "PERMISSIVE".into(),
        }
    }

    #[test]
    fn shares_per_pair_and_every_plaintext_flow_with_its_policy() {
        let c = Coverage {
            started: 0,
            ..Coverage::default()
        };
        let t0 = 1_000_000 * BUCKET_SECONDS;
        for _ in 0..3 {
            c.add_at(flow("app/cli", true, 9000), t0, 1, 2);
        }
        let b = BUCKET_SECONDS;
        c.add_at(flow("unknown", false, 9000), t0 + b + 1, 1, 1);
        let r = c.report_at(t0, t0 + b + 40);
        assert_eq!((r.connections, r.mtls_connections), (4, 3));
        assert_eq!((r.requests, r.mtls_requests), (7, 6));
        assert_eq!(r.mtls_connection_share, Some(0.75));
        assert_eq!(r.key_exchange["X25519MLKEM768"], 3);
        assert_eq!(r.pairs.len(), 2);
        assert_eq!(r.pairs[0].source, "app/cli");
        assert_eq!(r.pairs[0].mtls_connection_share, Some(1.0));
        assert_eq!(r.pairs[1].mtls_request_share, Some(0.0));
        assert_eq!(r.plaintext.len(), 1);
        let p = &r.plaintext[0];
        assert_eq!(
            (p.port, p.peer_authentication.as_deref(), p.mode.as_str()),
            (9000, Some("istio-system/default"), "PERMISSIVE")
        );
        assert_eq!(p.source_address.as_deref(), Some("127.0.0.9"));
        assert_eq!((p.first_seen, p.last_seen), (t0 + b, t0 + b + 40));
        // A window after the plaintext bucket has only mTLS.
        let later = c.report_at(t0 + 2 * b, t0 + 2 * b + 10);
        assert!(later.plaintext.is_empty() && later.connections == 0);
        // Nothing seen: no share, not 0 %.
        assert_eq!(later.mtls_connection_share, None);
    }

    #[test]
    fn memory_stays_bounded_and_the_report_says_what_was_lost() {
        let c = Coverage {
            started: 0,
            ..Coverage::default()
        };
        let t0 = 2_000_000 * BUCKET_SECONDS;
        // One bucket full of distinct plaintext clients, then one more flow the next bucket.
        for i in 0..MAX_FLOWS {
            let mut f = flow("unknown", false, 9000);
            f.source_address = Some(format!("10.0.{}.{}", i / 256, i % 256));
            c.add_at(f, t0, 1, 0);
        }
        let b = BUCKET_SECONDS;
        c.add_at(flow("app/cli", true, 9000), t0 + b, 1, 0);
        let len = c.table.lock().unwrap().flows.len();
        assert_eq!(len, 1, "the oldest bucket went");
        let r = c.report_at(t0, t0 + b + 10);
        assert_eq!(r.complete_since, t0 + b);
        assert_eq!(r.connections, 1);
        // Retention: a bucket older than a day goes too.
        c.add_at(flow("app/cli", true, 9000), t0 + b + RETENTION + b, 1, 0);
        assert_eq!(c.table.lock().unwrap().flows.len(), 1);
    }
}
