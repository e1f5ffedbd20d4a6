//! End-user authentication (RequestAuthentication) for one sidecar: each issuer's key set,
//! fetched in the background and cached by the pure [`JwksCache`] (refresh every 20 min,
//! backoff on failure, rate-limited refetch on an unknown `kid`, stale keys kept while the IdP
//! is down, and no token accepted before the first successful fetch). The keys outlive config
//! changes that leave an issuer's `jwksUri` alone ([`JwksCache::follow`]). The rules themselves
//! are compiled with the config (`ward_config::ProxyConfig::jwt_rules`). A fetch never reaches
//! Ward itself: the addresses a `jwksUri` host resolves to are checked against the sidecar's
//! own listeners and the process's other ones (the admin API), before and after connecting.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::sync::{watch, Notify};
use ward_authn::jwks_uri::{forbidden_ip, own_listener, JwksUri, OwnListener};
use ward_authn::{Jwks, JwksCache};
use ward_config::ProxyConfig;

/// Largest JWKS body accepted (bounded memory on junk: docs/threats.md, "Bounded resources on
/// junk input").
const MAX_JWKS_BODY: usize = 256 * 1024;

// `ProxyConfig::listeners` names the HBONE port without depending on the HBONE crate.
const _: () = assert!(ward_config::HBONE_PORT == ward_hbone::HBONE_PORT);

/// The authentication state of one sidecar: the issuers' key sets. The authenticator itself
/// is compiled with the config (`ProxyConfig::jwt_rules`, a `ward_authn::JwtRuleSet`): a
/// request takes it from the config it already holds, without a lock or a comparison.
pub(crate) struct AuthnState {
    /// Key sets by issuer; written by the fetch task, read by requests.
    cache: Mutex<JwksCache>,
    /// Wakes the fetch task early (an unknown `kid` was seen).
    wake: Notify,
    /// The zero of the cache's millisecond clock.
    epoch: Instant,
}

impl Default for AuthnState {
    fn default() -> Self {
        AuthnState {
            cache: Mutex::new(JwksCache::new()),
            wake: Notify::new(),
            epoch: Instant::now(),
        }
    }
}

impl AuthnState {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The current key set of `issuer`, if one was ever fetched.
    pub(crate) fn keys(&self, issuer: &str) -> Option<Arc<Jwks>> {
        self.cache.lock().ok()?.keys(issuer)
    }

    /// A token named a `kid` the cached keys lack: let the fetch task look again (rate-limited).
    pub(crate) fn note_unknown_kid(&self, issuer: &str) {
        let now = self.now_ms();
        if let Ok(mut c) = self.cache.lock() {
            c.note_unknown_kid(issuer, now);
        }
        self.wake.notify_one();
    }

    /// Seconds since each issuer's keys were fetched, for the metric.
    pub(crate) fn ages(&self, issuers: &[String]) -> Vec<(String, Option<u64>)> {
        let now = self.now_ms();
        let Ok(c) = self.cache.lock() else {
            return Vec::new();
        };
        issuers
            .iter()
            .map(|i| (i.clone(), c.age_seconds(i, now)))
            .collect()
    }
}

/// Keep every issuer's keys fresh for as long as the sidecar runs. `process_listeners` are
/// Ward's listeners outside this sidecar (the admin API): with the sidecar's own, no fetch may
/// reach them.
pub(crate) async fn run_fetcher(
    state: Arc<AuthnState>,
    mut config: watch::Receiver<Arc<ProxyConfig>>,
    process_listeners: Vec<OwnListener>,
    metrics: Arc<crate::Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let cfg = config.borrow_and_update().clone();
        refresh_keys(&state, &cfg, &process_listeners, &metrics).await;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = state.wake.notified() => {}
            r = config.changed() => if r.is_err() { return },
            () = crate::stopped(&mut stop) => return,
        }
    }
}

/// One pass of the fetcher for the config in force: follow its rules ([`JwksCache::follow`]:
/// unchanged issuers keep their keys), fetch every key set that is due, report the keys' ages.
async fn refresh_keys(
    state: &AuthnState,
    cfg: &ProxyConfig,
    process_listeners: &[OwnListener],
    metrics: &crate::Metrics,
) {
    let remotes = cfg
        .jwt_rules
        .authenticator()
        .map(|auth| auth.remote_jwks())
        .unwrap_or_default();
    if let Ok(mut c) = state.cache.lock() {
        c.follow(&remotes);
    }
    if remotes.is_empty() {
        return;
    }
    let workload = format!("{}/{}", cfg.workload.namespace, cfg.workload.name);
    let mut own = cfg.listeners();
    own.extend(process_listeners.iter().cloned());
    for remote in &remotes {
        let due = state
            .cache
            .lock()
            .map(|c| c.due(&remote.issuer, state.now_ms()))
            .unwrap_or(false);
        if !due {
            continue;
        }
        if let Ok(mut c) = state.cache.lock() {
            c.on_fetch_started(&remote.issuer, state.now_ms());
        }
        let result = match &remote.jwks_uri {
            Some(uri) => fetch(uri, remote.timeout, &own).await,
            None => Err(FetchError::NoJwksUri),
        };
        match &result {
            Ok(k) => tracing::info!(issuer = %remote.issuer, keys = k.len(), "JWKS fetched"),
            Err(e) => {
                tracing::warn!(issuer = %remote.issuer, error = %e, "JWKS fetch failed; cached keys (if any) stay in use")
            }
        }
        if let Ok(mut c) = state.cache.lock() {
            c.on_fetched(
                &remote.issuer,
                state.now_ms(),
                result.map_err(|e| e.to_string()),
            );
        }
    }
    let issuers: Vec<String> = remotes.into_iter().map(|r| r.issuer).collect();
    for (issuer, age) in state.ages(&issuers) {
        metrics.jwks_age(&workload, &issuer, age);
    }
}

/// Why a key set could not be fetched. Logged, and kept by the cache as the issuer's last error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// The rule has no `jwksUri`.
    #[error("no jwksUri: OpenID discovery is not supported yet; set jwksUri")]
    NoJwksUri,
    /// The whole fetch took longer than the rule's timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The `jwksUri` host.
        host: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// The name resolves only to link-local or metadata addresses.
    #[error("{0} resolves only to forbidden addresses")]
    ForbiddenAddress(String),
    /// The address is one of Ward's own listeners.
    #[error("jwksUri refused: {host}:{port} is {addr}, {what}, a socket of Ward's own")]
    OwnListener {
        /// The `jwksUri` host.
        host: String,
        /// The `jwksUri` port.
        port: u16,
        /// The address it reached.
        addr: SocketAddr,
        /// Which of Ward's listeners that is.
        what: String,
    },
    /// TCP connect failed.
    #[error("connect {addr}: {source}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// No trust store for an `https` `jwksUri`.
    #[error("no system trust store found for an https jwksUri")]
    NoTrustStore,
    /// The TLS handshake (or the TLS setup) failed.
    #[error("TLS to {host}: {reason}")]
    Tls {
        /// The `jwksUri` host.
        host: String,
        /// Why.
        reason: String,
    },
    /// The HTTP exchange failed.
    #[error("HTTP: {0}")]
    Http(String),
    /// The server answered with a status other than 2xx.
    #[error("HTTP {0}")]
    Status(http::StatusCode),
    /// The body is not a key set Ward can use.
    #[error("not a usable JWKS: {0}")]
    Jwks(ward_authn::JwksError),
}

/// GET the key set over HTTP/1.1, plain or TLS, with a timeout and a body cap; never from one
/// of `own`.
async fn fetch(uri: &JwksUri, timeout: Duration, own: &[OwnListener]) -> Result<Jwks, FetchError> {
    let body = tokio::time::timeout(timeout, get(uri, own))
        .await
        .map_err(|_| FetchError::Timeout(timeout))??;
    Jwks::parse(&body).map_err(FetchError::Jwks)
}

/// The message for a `jwksUri` that reaches one of Ward's listeners.
fn refused_own(uri: &JwksUri, addr: SocketAddr, listener: &OwnListener) -> FetchError {
    FetchError::OwnListener {
        host: uri.host.clone(),
        port: uri.port,
        addr,
        what: listener.what.to_string(),
    }
}

async fn resolve(uri: &JwksUri, own: &[OwnListener]) -> Result<SocketAddr, FetchError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((uri.host.as_str(), uri.port))
        .await
        .map_err(|source| FetchError::Resolve {
            host: uri.host.clone(),
            source,
        })?
        .collect();
    // A name that resolves to Ward itself (`localhost` to the admin API) is refused outright,
    // whatever else it resolves to: a JWKS endpoint never lives there.
    for addr in &addrs {
        if let Some(listener) = own_listener(*addr, own, false) {
            return Err(refused_own(uri, *addr, listener));
        }
    }
    // GHSA-fgw5-hp8f-xfhc: never let a jwksUri reach metadata or link-local services, whatever
    // the name resolves to.
    addrs
        .into_iter()
        .find(|a| !forbidden_ip(a.ip()))
        .ok_or_else(|| FetchError::ForbiddenAddress(uri.host.clone()))
}

async fn get(uri: &JwksUri, own: &[OwnListener]) -> Result<Vec<u8>, FetchError> {
    let addr = resolve(uri, own).await?;
    let tcp = crate::capture::connect(addr, None)
        .await
        .map_err(|source| FetchError::Connect { addr, source })?;
    // An address of this host (the kernel gave the socket that same address as its own) reaches
    // listeners bound to `0.0.0.0`/`::` there: checked before a byte is sent.
    let local = tcp.local_addr().is_ok_and(|l| l.ip() == addr.ip());
    if let Some(listener) = own_listener(addr, own, local) {
        return Err(refused_own(uri, addr, listener));
    }
    let req = http::Request::get(uri.path_and_query.as_str())
        .header(
            http::header::HOST,
            if uri.port == 80 || uri.port == 443 {
                uri.host.clone()
            } else {
                format!("{}:{}", uri.host, uri.port)
            },
        )
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| FetchError::Http(e.to_string()))?;
    if uri.tls {
        let tls_error = |reason: String| FetchError::Tls {
            host: uri.host.clone(),
            reason,
        };
        let name = rustls::pki_types::ServerName::try_from(uri.host.clone())
            .map_err(|e| tls_error(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(https_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| tls_error(e.to_string()))?;
        send(tls, req).await
    } else {
        send(tcp, req).await
    }
}

async fn send<S>(io: S, req: http::Request<Empty<Bytes>>) -> Result<Vec<u8>, FetchError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http_error = |e: &dyn std::fmt::Display| FetchError::Http(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| http_error(&e))?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| http_error(&e))?;
    if !resp.status().is_success() {
        return Err(FetchError::Status(resp.status()));
    }
    let body = Limited::new(resp.into_body(), MAX_JWKS_BODY)
        .collect()
        .await
        .map_err(|e| FetchError::Http(format!("body: {e}")))?;
    Ok(body.to_bytes().to_vec())
}

/// TLS toward an identity provider: the operating system's trust store (or the PEM bundle named
/// by `SSL_CERT_FILE`, the OpenSSL convention, for private CAs), server name verified. Ward's
/// rustls is built for TLS 1.3 only, so the IdP must offer TLS 1.3.
fn https_config() -> Result<Arc<rustls::ClientConfig>, FetchError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let paths = match std::env::var("SSL_CERT_FILE") {
        Ok(p) if !p.is_empty() => vec![p],
        _ => vec![
            "/etc/ssl/certs/ca-certificates.crt".to_owned(),
            "/etc/pki/tls/certs/ca-bundle.crt".to_owned(),
        ],
    };
    for path in paths {
        if let Ok(iter) = rustls::pki_types::CertificateDer::pem_file_iter(path) {
            for cert in iter.flatten() {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(FetchError::NoTrustStore);
    }
    let config = rustls::ClientConfig::builder_with_provider(ward_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Tls {
            host: String::new(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const ISSUER: &str = "https://idp.example.com";

    /// A JWKS endpoint on loopback: answers every GET with an empty key set and records the
    /// paths it was asked for.
    async fn jwks_server() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let paths = Arc::new(Mutex::new(Vec::new()));
        let seen = paths.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
                seen.lock().unwrap().push(path);
                let body = r#"{"keys":[]}"#;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(response.as_bytes()).await;
            }
        });
        (addr, paths)
    }

    /// `app/srv`'s config: an AuthorizationPolicy allowing `path`, and, unless `jwks_uri` is
    /// `None`, a RequestAuthentication for [`ISSUER`] with these keys and `audiences`.
    fn config(jwks_uri: Option<&str>, audiences: &str, path: &str) -> ProxyConfig {
        let mut yaml = format!(
            "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: srv, namespace: app}}
spec: {{address: 127.9.0.10, serviceAccount: srv, labels: {{app: srv}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow, namespace: app}}
spec:
  rules:
  - to: [{{operation: {{paths: [{path}]}}}}]
"
        );
        if let Some(uri) = jwks_uri {
            yaml.push_str(&format!(
                "---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: app}}
spec:
  jwtRules:
  - issuer: {ISSUER}
    jwksUri: {uri}
    audiences: {audiences}
"
            ));
        }
        let set = ward_config::load_str("test.yaml", &yaml).unwrap();
        let snap = ward_config::translate(&set).unwrap();
        snap.proxies["app/srv"].clone()
    }

    /// Reloads that leave the issuer's `jwksUri` alone fetch nothing and keep the very key set;
    /// a new `jwksUri` is fetched at once and replaces it; a removed rule takes its keys along.
    #[tokio::test]
    async fn keys_survive_reloads_that_keep_the_jwks_uri() {
        let (addr, paths) = jwks_server().await;
        let uri = format!("http://{addr}/jwks");
        let state = AuthnState::default();
        let metrics = crate::Metrics::default();
        let refresh = |cfg: ProxyConfig| {
            let (state, metrics) = (&state, &metrics);
            async move { refresh_keys(state, &cfg, &[], metrics).await }
        };

        refresh(config(Some(&uri), "[api]", "/a")).await;
        let fetched = state.keys(ISSUER).expect("the keys were fetched");

        // Another policy, then other audiences for the same issuer and keys: no refetch.
        refresh(config(Some(&uri), "[api]", "/b")).await;
        refresh(config(Some(&uri), "[api, admin]", "/b")).await;
        assert_eq!(*paths.lock().unwrap(), ["/jwks"]);
        assert!(Arc::ptr_eq(&fetched, &state.keys(ISSUER).unwrap()));

        // The rule names another jwksUri: fetched at once, the old keys are gone.
        let moved = format!("http://{addr}/rotated");
        refresh(config(Some(&moved), "[api]", "/b")).await;
        assert_eq!(*paths.lock().unwrap(), ["/jwks", "/rotated"]);
        assert!(!Arc::ptr_eq(&fetched, &state.keys(ISSUER).unwrap()));

        // No RequestAuthentication any more: the issuer's keys are forgotten.
        refresh(config(None, "", "/b")).await;
        assert!(state.keys(ISSUER).is_none());
        assert_eq!(paths.lock().unwrap().len(), 2);
    }
}
