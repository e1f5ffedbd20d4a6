//! The admission webhooks of `ward control-plane --kubernetes`, on HTTPS (TLS 1.3, the control
//! plane's own certificate from the mesh CA): `POST /validate` (Istio objects) and
//! `POST /inject` (Pods). The decisions are `ward_kube::webhook`'s pure functions; this file
//! only reads the review, asks, and writes the answer. And the publisher that keeps the webhook
//! configurations' `caBundle` and every namespace's `istio-ca-root-cert` current, on the
//! replica that leads (crates/kube/src/leader.rs).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use ward_kube::webhook::InjectSettings;
use ward_kube::Cluster;

/// The largest review read (the API server's own request limit is about 3 MiB).
const MAX_BODY: usize = 8 << 20;
/// Connections served at once; more wait at accept.
const MAX_CONNECTIONS: usize = 256;
/// Time for a client to finish its TLS handshake and request headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Admission reviews answered, by webhook and result.
pub(crate) type Reviews = Family<Vec<(String, String)>, Counter>;

/// What the webhook handlers read.
pub(crate) struct Webhooks {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) inject: InjectSettings,
    pub(crate) reviews: Reviews,
}

impl Webhooks {
    /// Registers `ward_webhook_reviews_total`.
    pub(crate) fn register(registry: &mut Registry) -> Reviews {
        let reviews = Reviews::default();
        registry.register(
            "ward_webhook_reviews",
            "Admission reviews answered, by webhook (validate, inject) and result (allowed, \
             denied, patched, bad_request)",
            reviews.clone(),
        );
        reviews
    }

    fn count(&self, hook: &str, result: &str) {
        self.reviews
            .get_or_create(&vec![
                ("webhook".to_owned(), hook.to_owned()),
                ("result".to_owned(), result.to_owned()),
            ])
            .inc();
    }

    /// The answer to one request.
    fn answer(&self, method: &Method, path: &str, body: &[u8]) -> Response<Full<Bytes>> {
        let hook = match path {
            "/validate" => "validate",
            "/inject" => "inject",
            _ => return plain(StatusCode::NOT_FOUND, "not found\n"),
        };
        if method != Method::POST {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "only POST\n");
        }
        let review: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                self.count(hook, "bad_request");
                return plain(StatusCode::BAD_REQUEST, format!("not JSON: {e}\n"));
            }
        };
        if let Err(e) = ward_kube::webhook::check_review(&review) {
            self.count(hook, "bad_request");
            return plain(StatusCode::BAD_REQUEST, format!("{e}\n"));
        }
        let out = if hook == "validate" {
            ward_kube::webhook::validate(&review)
        } else {
            let namespace = review["request"]["namespace"].as_str().unwrap_or("");
            let labels = self.cluster.namespace_labels(namespace);
            ward_kube::webhook::inject(&review, labels.as_ref(), &self.inject)
        };
        let response = &out["response"];
        let result = if response["allowed"] != true {
            "denied"
        } else if response["patch"].is_string() {
            "patched"
        } else {
            "allowed"
        };
        self.count(hook, result);
        let request = &review["request"];
        tracing::info!(
            target: "webhook",
            webhook = hook,
            result,
            kind = %request["kind"]["kind"].as_str().unwrap_or(""),
            namespace = %request["namespace"].as_str().unwrap_or(""),
            name = %request["name"].as_str().unwrap_or(""),
            "admission review"
        );
        Response::builder()
            .status(StatusCode::OK)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(
                serde_json::to_vec(&out).unwrap_or_default(),
            )))
            .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, ""))
    }
}

fn plain(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

/// Serves the webhooks on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    hooks: Arc<Webhooks>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(target: "webhook", error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, hooks) = (acceptor.clone(), hooks.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(target: "webhook", %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc = service_fn(move |req: Request<Incoming>| {
                let hooks = hooks.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let response = match Limited::new(body, MAX_BODY).collect().await {
                        Ok(b) => hooks.answer(&parts.method, parts.uri.path(), &b.to_bytes()),
                        Err(_) => plain(StatusCode::PAYLOAD_TOO_LARGE, "review too large\n"),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(TokioIo::new(tls), svc)
                .await;
            drop(permit);
        });
    }
}

/// Keeps the webhook configurations' `caBundle` and every namespace's root ConfigMap equal to
/// the mesh root, while this replica leads (`leading`): at start and on coming to lead (every
/// namespace), on namespace changes (new namespaces), and every `resync` (every namespace).
pub(crate) async fn publish(
    client: ward_kube::Client,
    cluster: Arc<Cluster>,
    mut leading: watch::Receiver<bool>,
    root_pem: String,
    resync: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = cluster.changes();
    let mut known: std::collections::BTreeSet<String> = Default::default();
    let mut last_full = tokio::time::Instant::now();
    let mut first = true;
    loop {
        // Only the leader writes: a follower waits, and writes everything once it leads.
        let now_leading = *leading.borrow_and_update();
        if !now_leading {
            tokio::select! {
                r = leading.wait_for(|l| *l) => if r.is_err() { return },
                _ = shutdown.wait_for(|s| *s) => return,
            }
            tracing::info!(target: "webhook", "leading: publishing the mesh root");
            first = true;
            known.clear();
        }
        let full = first || last_full.elapsed() >= resync;
        match ward_kube::publish::set_ca_bundle(&client, &root_pem).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(target: "webhook", webhooks = n, "caBundle set to the mesh root")
            }
            Err(e) => tracing::warn!(target: "webhook", error = %e, "caBundle not set"),
        }
        let names = cluster.namespace_names();
        let mut failed = false;
        for ns in &names {
            if !full && known.contains(ns) {
                continue;
            }
            let still = *leading.borrow();
            if !still {
                break;
            }
            match ward_kube::publish::publish_root(&client, ns, &root_pem).await {
                Ok(written) => {
                    if written {
                        tracing::info!(target: "webhook", namespace = %ns, "mesh root published");
                    }
                    known.insert(ns.clone());
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(target: "webhook", error = %e, "mesh root not published");
                }
            }
        }
        known.retain(|n| names.contains(n));
        if full && !failed {
            last_full = tokio::time::Instant::now();
            first = false;
        }
        let wait = if failed {
            Duration::from_secs(2)
        } else {
            resync
        };
        let changed = tokio::select! {
            r = changes.changed() => r.is_ok(),
            _ = tokio::time::sleep(wait) => true,
            r = leading.changed() => r.is_ok(),
            _ = shutdown.wait_for(|s| *s) => return,
        };
        if !changed {
            return;
        }
        // A burst of changes (most of them Pods) is looked at once.
        tokio::time::sleep(Duration::from_millis(500)).await;
        changes.mark_unchanged();
    }
}
