//! The config stream's server: `ward.config.v1.ProxyConfigService/StreamConfig` (crates/wire),
//! served beside the CA on the control plane's port (docs/multi-host.md, "The config stream").
//!
//! A stream is admitted for exactly one workload ([`admit`]): the caller names it, and its
//! credential must be that workload's, either a client certificate whose SPIFFE id is the
//! workload's identity or the workload's own bootstrap token. Then the stream sends the
//! workload's configuration as sections ([`crate::push`]): on connect, those the proxy does not
//! already hold; on each change that touches this proxy, only the changed ones. One response is
//! outstanding at a time: the next waits for the proxy's ACK or NACK, and changes meanwhile
//! coalesce into it. A refused (NACKed) version is not sent again; the next change is.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tonic::{Code, Status, Streaming};

use ward_config::{MeshSnapshot, ProxyConfig};
use ward_wire::ward::config::v1::{ConfigRequest, ConfigResponse};

use crate::bootstrap::TokenKey;
use crate::ca_grpc::{bind, credential, Binding, Caller, Credential, Refusal, MAX_MESSAGE};
use crate::grpc_frames::{frame, Framed, Out, StreamBody};
use crate::proxies::{ProxyRegistry, ProxyStatus};
use crate::push::{MeshInfo, Sections, SharedSections};
use crate::ControlPlane;

/// Time a proxy has to send its first request after opening the stream.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most sections a proxy may say it holds.
const MAX_HELD: usize = 256;
/// Longest section name or hash read from a proxy.
const MAX_NAME: usize = 128;
/// Longest proxy version kept.
const MAX_PROXY_VERSION: usize = 64;
/// Longest NACK reason logged and kept.
const MAX_NACK: usize = 512;

/// Counts of the config stream, for `/metrics`.
#[derive(Clone, Debug)]
pub struct ConfigMetrics {
    streams: Gauge,
    responses: Family<Vec<(String, String)>, Counter>,
    response_bytes: Counter,
    acks: Counter,
    nacks: Counter,
    ack_seconds: Histogram,
    refusals: Family<Vec<(String, String)>, Counter>,
}

impl ConfigMetrics {
    /// Registers the `ward_config_*` stream metrics.
    pub fn register(registry: &mut Registry) -> ConfigMetrics {
        let m = ConfigMetrics {
            streams: Gauge::default(),
            responses: Family::default(),
            response_bytes: Counter::default(),
            acks: Counter::default(),
            nacks: Counter::default(),
            ack_seconds: Histogram::new([
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            refusals: Family::default(),
        };
        registry.register(
            "ward_config_streams",
            "Proxies connected to the config stream",
            m.streams.clone(),
        );
        registry.register(
            "ward_config_responses",
            "Config responses sent, by kind (full: to a proxy holding nothing; delta)",
            m.responses.clone(),
        );
        registry.register(
            "ward_config_response_bytes",
            "Bytes of config responses sent (protobuf encoded)",
            m.response_bytes.clone(),
        );
        registry.register(
            "ward_config_acks",
            "Config versions proxies acknowledged",
            m.acks.clone(),
        );
        registry.register(
            "ward_config_nacks",
            "Config versions proxies refused",
            m.nacks.clone(),
        );
        registry.register(
            "ward_config_ack_seconds",
            "Time from sending a config version to its acknowledgement",
            m.ack_seconds.clone(),
        );
        registry.register(
            "ward_config_stream_refusals",
            "Config streams refused, by gRPC code",
            m.refusals.clone(),
        );
        m
    }
}

/// The config stream service.
#[derive(Clone)]
pub struct ConfigGrpc {
    inner: Arc<Inner>,
}

struct Inner {
    control: Arc<ControlPlane>,
    tokens: Arc<TokenKey>,
    audience: String,
    mesh: MeshInfo,
    proxies: Arc<ProxyRegistry>,
    metrics: ConfigMetrics,
    /// The sections every proxy of the current config shares, serialized once.
    shared: SharedSections,
}

impl ConfigGrpc {
    /// A service streaming `control`'s per-proxy configs, admitting callers with `tokens` for
    /// `audience` or their certificates, and recording them in `proxies`.
    pub fn new(
        control: Arc<ControlPlane>,
        tokens: Arc<TokenKey>,
        audience: String,
        proxies: Arc<ProxyRegistry>,
        metrics: ConfigMetrics,
    ) -> ConfigGrpc {
        let mesh = MeshInfo {
            trust_domain: control.mesh().trust_domain.clone(),
            trust_domain_aliases: control.mesh().trust_domain_aliases.clone(),
            root_namespace: control.mesh().root_namespace.clone(),
        };
        ConfigGrpc {
            inner: Arc::new(Inner {
                control,
                tokens,
                audience,
                mesh,
                proxies,
                metrics,
                shared: SharedSections::default(),
            }),
        }
    }
}

/// Decides whether a caller with `credential` may stream `workload`'s config, against the
/// loaded config `snap` at `now`.
pub fn admit(
    credential: &Credential,
    workload: &str,
    snap: &MeshSnapshot,
    tokens: &TokenKey,
    audience: &str,
    now: SystemTime,
) -> Result<Binding, Refusal> {
    if workload.is_empty() {
        return Err(Refusal {
            code: Code::InvalidArgument,
            reason: "the first request must name the workload (namespace/name)".into(),
        });
    }
    let binding = bind(credential, snap, tokens, audience, now)?;
    let Some(proxy) = snap.proxies.get(workload) else {
        return Err(Refusal {
            code: Code::NotFound,
            reason: format!("workload {workload} is not a WorkloadEntry in the config"),
        });
    };
    match &binding.workload {
        Some(token_workload) if token_workload != workload => Err(Refusal {
            code: Code::PermissionDenied,
            reason: format!("the bootstrap token is for workload {token_workload}, not {workload}"),
        }),
        _ if proxy.workload.identity != binding.identity.to_string() => Err(Refusal {
            code: Code::PermissionDenied,
            reason: format!(
                "client certificate identity {} is not workload {workload}'s identity {}",
                binding.identity, proxy.workload.identity
            ),
        }),
        _ => Ok(binding),
    }
}

/// What the first request said, checked.
struct Hello {
    workload: String,
    held: BTreeMap<String, String>,
    proxy_version: String,
}

fn hello(first: ConfigRequest) -> Result<Hello, Refusal> {
    let bad = |reason: &str| Refusal {
        code: Code::InvalidArgument,
        reason: reason.to_owned(),
    };
    if first.held.len() > MAX_HELD {
        return Err(bad("held: too many sections"));
    }
    if first
        .held
        .iter()
        .any(|(k, v)| k.len() > MAX_NAME || v.len() > MAX_NAME)
    {
        return Err(bad("held: a section name or hash is too long"));
    }
    if first.workload.len() > 2 * 253 {
        return Err(bad("workload: too long"));
    }
    let proxy_version: String = first
        .proxy_version
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(MAX_PROXY_VERSION)
        .collect();
    Ok(Hello {
        workload: first.workload,
        held: first.held.into_iter().collect(),
        proxy_version,
    })
}

/// The config stream's one method.
pub(crate) const STREAM_PATH: &str = "/ward.config.v1.ProxyConfigService/StreamConfig";

impl ConfigGrpc {
    /// Serves one HTTP/2 request on the config stream's path prefix: `StreamConfig`, framed
    /// by hand on the way out (`grpc_frames`: the sections' bodies are shared, not copied into
    /// a buffer per stream) and decoded by tonic on the way in.
    pub(crate) async fn serve(
        &self,
        caller: Caller,
        request: http::Request<hyper::body::Incoming>,
    ) -> http::Response<tonic::body::Body> {
        if request.uri().path() != STREAM_PATH || request.method() != http::Method::POST {
            return Status::unimplemented(format!("no method {}", request.uri().path()))
                .into_http();
        }
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        if !grpc {
            let mut response = http::Response::new(tonic::body::Body::empty());
            *response.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
            return response;
        }
        let compressed = request
            .headers()
            .get("grpc-encoding")
            .is_some_and(|v| v.as_bytes() != b"identity");
        if compressed {
            return Status::unimplemented("compressed requests are not accepted").into_http();
        }
        let authorization = request
            .headers()
            .get("authorization")
            .map(|v| v.as_bytes().to_vec());
        let decoder = tonic::codec::Codec::decoder(&mut tonic_prost::ProstCodec::<
            ConfigResponse,
            ConfigRequest,
        >::default());
        let requests =
            Streaming::new_request(decoder, request.into_body(), None, Some(MAX_MESSAGE));
        match self.open(caller, authorization, requests).await {
            Ok(rx) => {
                let mut response = http::Response::new(tonic::body::Body::new(StreamBody::new(rx)));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/grpc"),
                );
                response
            }
            Err(status) => status.into_http(),
        }
    }

    /// Admits a stream from its first request and starts its session; the receiver is what
    /// the session sends.
    async fn open(
        &self,
        caller: Caller,
        authorization: Option<Vec<u8>>,
        mut requests: Streaming<ConfigRequest>,
    ) -> Result<mpsc::Receiver<Out>, Status> {
        let refuse = |refusal: Refusal, workload: &str| {
            tracing::warn!(
                peer = %caller.addr,
                workload = %workload,
                code = ?refusal.code,
                reason = %refusal.reason,
                "config stream refused"
            );
            self.inner
                .metrics
                .refusals
                .get_or_create(&vec![("code".to_owned(), format!("{:?}", refusal.code))])
                .inc();
            Status::new(refusal.code, refusal.reason)
        };
        let first = match tokio::time::timeout(FIRST_REQUEST_TIMEOUT, requests.message()).await {
            Ok(Ok(Some(first))) => first,
            Ok(Ok(None)) => {
                return Err(Status::cancelled("stream closed before its first request"))
            }
            Ok(Err(status)) => return Err(status),
            Err(_) => {
                let refusal = Refusal {
                    code: Code::DeadlineExceeded,
                    reason: "no first request within 10 s".into(),
                };
                return Err(refuse(refusal, "-"));
            }
        };
        let hello = hello(first).map_err(|r| refuse(r, "-"))?;
        let inner = &self.inner;
        let admitted = credential(caller.certificate.clone(), authorization.as_deref()).and_then(
            |credential| {
                let snap = inner.control.snapshot().borrow().clone();
                admit(
                    &credential,
                    &hello.workload,
                    &snap,
                    &inner.tokens,
                    &inner.audience,
                    SystemTime::now(),
                )
            },
        );
        let binding = admitted.map_err(|r| refuse(r, &hello.workload))?;
        let Some(config) = inner.control.subscribe(&hello.workload) else {
            let refusal = Refusal {
                code: Code::NotFound,
                reason: format!("workload {} is not in the config", hello.workload),
            };
            return Err(refuse(refusal, &hello.workload));
        };
        let peer = caller.addr.to_string();
        let mut status = ProxyStatus::connected(
            &hello.workload,
            &binding.identity.to_string(),
            &peer,
            binding.via,
        );
        status.proxy_version = hello.proxy_version.clone();
        let key = inner.proxies.add(status);
        inner.metrics.streams.inc();
        tracing::info!(
            peer = %caller.addr,
            workload = %hello.workload,
            identity = %binding.identity,
            via = binding.via,
            held = hello.held.len(),
            "proxy connected to the config stream"
        );
        let (tx, rx) = mpsc::channel(2);
        let session = Session {
            inner: inner.clone(),
            key,
            workload: hello.workload,
            config,
            held: hello.held,
            outstanding: None,
            refused: None,
            nonce: 0,
            cached: None,
        };
        tokio::spawn(session.run(requests, tx));
        Ok(rx)
    }
}

/// A response waiting for its ACK or NACK.
struct Outstanding {
    nonce: String,
    version: String,
    /// What the proxy holds once it applies the response.
    hashes: BTreeMap<String, String>,
    sent_at: Instant,
}

/// One proxy's stream.
struct Session {
    inner: Arc<Inner>,
    key: u64,
    workload: String,
    config: watch::Receiver<Arc<ProxyConfig>>,
    /// What the proxy holds: its first request's sections, then each acknowledged response's.
    held: BTreeMap<String, String>,
    outstanding: Option<Outstanding>,
    /// The version the proxy refused; not sent again.
    refused: Option<String>,
    nonce: u64,
    /// The sections of the config last cut, kept until the config changes.
    cached: Option<(Arc<ProxyConfig>, Sections)>,
}

/// Why a stream ended.
enum End {
    /// The proxy closed it, or the connection broke.
    Closed,
    /// The workload left the config.
    Removed,
    /// The config could not be cut into sections.
    Internal(String),
}

impl Session {
    async fn run(mut self, mut requests: Streaming<ConfigRequest>, tx: mpsc::Sender<Out>) {
        let end = self.serve(&mut requests, &tx).await;
        let reason = match end {
            End::Closed => "closed".to_owned(),
            End::Removed => {
                let status = Status::not_found(format!(
                    "workload {} is no longer in the config",
                    self.workload
                ));
                let _ = tx.send(Out::End(status)).await;
                "the workload left the config".to_owned()
            }
            End::Internal(e) => {
                tracing::error!(workload = %self.workload, error = %e, "config stream failed");
                let _ = tx.send(Out::End(Status::internal(e.clone()))).await;
                e
            }
        };
        self.inner.proxies.remove(self.key);
        self.inner.metrics.streams.dec();
        tracing::info!(workload = %self.workload, reason = %reason, "proxy left the config stream");
    }

    async fn serve(
        &mut self,
        requests: &mut Streaming<ConfigRequest>,
        tx: &mpsc::Sender<Out>,
    ) -> End {
        loop {
            if self.outstanding.is_none() {
                match self.response() {
                    Ok(Some(response)) => {
                        if tx.send(Out::Message(response)).await.is_err() {
                            return End::Closed;
                        }
                    }
                    Ok(None) => {}
                    Err(e) => return End::Internal(e),
                }
            }
            let waiting = self.outstanding.is_some();
            tokio::select! {
                changed = self.config.changed(), if !waiting => {
                    if changed.is_err() {
                        return End::Removed;
                    }
                }
                message = requests.message() => match message {
                    Ok(Some(request)) => self.answer(request),
                    Ok(None) => return End::Closed,
                    Err(status) => {
                        tracing::debug!(workload = %self.workload, error = %status, "config stream broke");
                        return End::Closed;
                    }
                },
                () = tx.closed() => return End::Closed,
            }
        }
    }

    /// The response that brings the proxy to the current config, if it needs one; records the
    /// proxy as synced when it already holds it.
    fn response(&mut self) -> Result<Option<Framed>, String> {
        let config = self.config.borrow_and_update().clone();
        let fresh = !matches!(&self.cached, Some((c, _)) if Arc::ptr_eq(c, &config));
        if fresh {
            let previous = self.cached.as_ref().map(|(c, s)| (&**c, s));
            let sections =
                Sections::of_shared(&self.inner.mesh, &config, &self.inner.shared, previous)
                    .map_err(|e| e.to_string())?;
            self.cached = Some((config, sections));
        }
        let Some((_, sections)) = &self.cached else {
            return Ok(None);
        };
        let version = sections.version();
        if self.refused.as_deref() == Some(version.as_str()) {
            return Ok(None);
        }
        let generation = self.inner.control.status().generation;
        let delta = sections.delta(&self.held);
        if delta.is_empty() {
            self.inner.proxies.update(self.key, |s| {
                if s.acked_version.as_deref() != Some(version.as_str()) {
                    s.sent_version = Some(version.clone());
                    s.acked_version = Some(version.clone());
                    s.sent_generation = generation;
                }
            });
            return Ok(None);
        }
        self.nonce += 1;
        let kind = if self.held.is_empty() {
            "full"
        } else {
            "delta"
        };
        let shell = ConfigResponse {
            version_info: version.clone(),
            nonce: self.nonce.to_string(),
            sections: Vec::new(),
            removed: delta.removed,
            generation,
        };
        let response = frame(&shell, &delta.changed).map_err(|e| e.to_string())?;
        let bytes = response.message_len as u64;
        let m = &self.inner.metrics;
        m.responses
            .get_or_create(&vec![("kind".to_owned(), kind.to_owned())])
            .inc();
        m.response_bytes.inc_by(bytes);
        self.outstanding = Some(Outstanding {
            nonce: shell.nonce,
            version: version.clone(),
            hashes: sections.hashes(),
            sent_at: Instant::now(),
        });
        self.inner.proxies.update(self.key, |s| {
            s.sent_version = Some(version);
            s.sent_generation = generation;
            s.responses += 1;
            s.bytes_sent += bytes;
        });
        Ok(Some(response))
    }

    /// An ACK or NACK of the outstanding response; anything else is ignored.
    fn answer(&mut self, request: ConfigRequest) {
        let matches = self
            .outstanding
            .as_ref()
            .is_some_and(|o| o.nonce == request.response_nonce);
        if !matches {
            tracing::debug!(workload = %self.workload, nonce = %request.response_nonce, "config request for no outstanding response ignored");
            return;
        }
        let Some(out) = self.outstanding.take() else {
            return;
        };
        let m = &self.inner.metrics;
        match request.error_detail {
            Some(nack) => {
                let reason: String = nack.message.chars().take(MAX_NACK).collect();
                tracing::warn!(
                    workload = %self.workload,
                    version = %out.version,
                    reason = %reason,
                    "proxy refused its config (NACK); it keeps serving the previous version"
                );
                m.nacks.inc();
                self.refused = Some(out.version);
                self.inner
                    .proxies
                    .update(self.key, |s| s.last_nack = Some(reason));
            }
            None => {
                let elapsed = out.sent_at.elapsed();
                m.acks.inc();
                m.ack_seconds.observe(elapsed.as_secs_f64());
                self.held = out.hashes;
                self.refused = None;
                let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
                self.inner.proxies.update(self.key, |s| {
                    s.acked_version = Some(out.version);
                    s.last_nack = None;
                    s.last_ack_ms = Some(ms);
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_identity::SpiffeId;

    const MESH: &str = r#"apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: a, namespace: app}
spec: {address: 127.0.0.10, serviceAccount: sa-a}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: b, namespace: app}
spec: {address: 127.0.0.11, serviceAccount: sa-b}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: a2, namespace: app}
spec: {address: 127.0.0.12, serviceAccount: sa-a}
"#;

    #[test]
    fn a_stream_is_admitted_only_for_the_credential_s_own_workload() {
        let set = ward_config::load_str("mesh.yaml", MESH).unwrap();
        let snap = ward_config::translate(&set).unwrap();
        let state = tempfile::tempdir().unwrap();
        let tokens = TokenKey::load_or_create(state.path()).unwrap();
        let now = SystemTime::now();
        let aud = "aud";
        let token = |w: &str| {
            Credential::Token(tokens.issue(w, aud, now, Duration::from_secs(60)).unwrap())
        };
        let cert =
            |sa: &str| Credential::Certificate(SpiffeId::new("cluster.local", "app", sa).unwrap());
        let ok = |c: &Credential, w: &str| admit(c, w, &snap, &tokens, aud, now);
        assert!(ok(&token("app/a"), "app/a").is_ok());
        assert!(ok(&cert("sa-a"), "app/a").is_ok());
        // Workloads sharing a service account share an identity.
        assert!(ok(&cert("sa-a"), "app/a2").is_ok());
        let cases = [
            (
                token("app/a"),
                "app/b",
                Code::PermissionDenied,
                "is for workload app/a",
            ),
            (
                token("app/a"),
                "app/a2",
                Code::PermissionDenied,
                "is for workload app/a",
            ),
            (
                cert("sa-a"),
                "app/b",
                Code::PermissionDenied,
                "is not workload app/b's identity",
            ),
            (
                cert("sa-a"),
                "app/gone",
                Code::NotFound,
                "not a WorkloadEntry",
            ),
            (
                cert("sa-a"),
                "",
                Code::InvalidArgument,
                "must name the workload",
            ),
            (
                Credential::None,
                "app/a",
                Code::Unauthenticated,
                "no credentials",
            ),
        ];
        for (credential, workload, code, why) in cases {
            let refusal = ok(&credential, workload).unwrap_err();
            assert_eq!(refusal.code, code, "{credential:?} {workload}");
            assert!(refusal.reason.contains(why), "{}", refusal.reason);
        }
    }

    #[test]
    fn the_first_request_is_bounded() {
        let mut held = std::collections::HashMap::new();
        for i in 0..=MAX_HELD {
            held.insert(format!("s{i}"), "h".to_owned());
        }
        let too_many = ConfigRequest {
            workload: "app/a".into(),
            held,
            ..Default::default()
        };
        assert!(hello(too_many).is_err());
        let long = ConfigRequest {
            workload: "app/a".into(),
            held: [("x".repeat(MAX_NAME + 1), "h".to_owned())].into(),
            ..Default::default()
        };
        assert!(hello(long).is_err());
        let version = hello(ConfigRequest {
            workload: "app/a".into(),
            proxy_version: "ward 0.1\n\u{1b}[31m".into(),
            ..Default::default()
        })
        .unwrap()
        .proxy_version;
        assert_eq!(version, "ward0.1[31m");
    }
}
