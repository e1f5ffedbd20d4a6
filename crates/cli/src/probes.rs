//! The sidecar's prober (`ward proxy --app-probe-listen`): the kubelet's HTTP and TCP probes of
//! an injected pod, rewritten by the injector to `GET :15021/app-health/<container>/<kind>`
//! (`ward_kube::webhook::rewrite_probes`), are carried out here over loopback, where capture
//! and STRICT mTLS do not apply. Only the probes the pod declared can be asked for: the table
//! comes from `ISTIO_KUBE_APP_PROBERS` (Istio's format), any other path gets 404. And
//! `/healthz/ready`, the sidecar's own readiness (its certificate, config and listeners), which
//! the injected sidecar's startup probe asks so that the app starts after its proxy.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// The sidecar's own readiness (Istio's agent path).
pub(crate) const READY_PATH: &str = "/healthz/ready";
/// Probes answered at once; more wait.
const MAX_CONNECTIONS: usize = 32;
/// A probe's timeout when the pod gave none (Kubernetes' default `timeoutSeconds`).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// One original probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    /// `GET http://127.0.0.1:<port><path>` with these headers; 200-399 is healthy.
    Http {
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
        timeout: Duration,
    },
    /// A TCP connection to `127.0.0.1:<port>`.
    Tcp { port: u16, timeout: Duration },
}

/// The probes by their rewritten path.
pub(crate) type Probers = BTreeMap<String, Probe>;

/// Reads `ISTIO_KUBE_APP_PROBERS`: `{"/app-health/c/readyz": {"httpGet": {...}, "timeoutSeconds": 1}, ...}`.
pub(crate) fn parse(text: &str) -> anyhow::Result<Probers> {
    let v: Value = serde_json::from_str(text).context("not JSON")?;
    let map = v.as_object().context("not a JSON object")?;
    let mut out = Probers::new();
    for (path, p) in map {
        let timeout = p["timeoutSeconds"]
            .as_u64()
            .filter(|s| *s > 0)
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
        let port = |v: &Value| -> anyhow::Result<u16> {
            v.as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .with_context(|| format!("{path}: port {v} is not a port number"))
        };
        let probe = if let Some(get) = p.get("httpGet") {
            let mut path_q = get["path"].as_str().unwrap_or("/").to_owned();
            if !path_q.starts_with('/') {
                path_q.insert(0, '/');
            }
            let headers = get["httpHeaders"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|h| {
                    Some((
                        h["name"].as_str()?.to_owned(),
                        h["value"].as_str()?.to_owned(),
                    ))
                })
                .collect();
            Probe::Http {
                port: port(&get["port"])?,
                path: path_q,
                headers,
                timeout,
            }
        } else if let Some(tcp) = p.get("tcpSocket") {
            Probe::Tcp {
                port: port(&tcp["port"])?,
                timeout,
            }
        } else {
            anyhow::bail!("{path}: neither httpGet nor tcpSocket");
        };
        out.insert(path.clone(), probe);
    }
    Ok(out)
}

/// Carries out one probe; the status to give the kubelet.
async fn run(probe: &Probe) -> StatusCode {
    match probe {
        Probe::Tcp { port, timeout } => {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, *port));
            match tokio::time::timeout(*timeout, TcpStream::connect(addr)).await {
                Ok(Ok(_)) => StatusCode::OK,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            }
        }
        Probe::Http {
            port,
            path,
            headers,
            timeout,
        } => match tokio::time::timeout(*timeout, http_get(*port, path, headers)).await {
            Ok(Ok(status)) if (200..400).contains(&status.as_u16()) => status,
            // The app's own failure status, as the kubelet would have seen it.
            Ok(Ok(status)) => status,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        },
    }
}

async fn http_get(
    port: u16,
    path: &str,
    headers: &[(String, String)],
) -> anyhow::Result<StatusCode> {
    let tcp = TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut req = Request::get(path).header(http::header::HOST, format!("127.0.0.1:{port}"));
    req = req.header(http::header::USER_AGENT, "kube-probe (ward)");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = send.send_request(req.body(Empty::<Bytes>::new())?).await?;
    let status = resp.status();
    // Drain a little of the body so the connection closes cleanly; its content is not read.
    let _ = resp.into_body().frame().await;
    Ok(status)
}

/// Serves the probes on `listener` until `shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    probers: Probers,
    ready: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let probers = Arc::new(probers);
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
        let Ok((tcp, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (probers, ready) = (probers.clone(), ready.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let (probers, ready) = (probers.clone(), ready.clone());
                async move {
                    let status = if req.method() != Method::GET {
                        StatusCode::METHOD_NOT_ALLOWED
                    } else if req.uri().path() == READY_PATH {
                        if *ready.borrow() {
                            StatusCode::OK
                        } else {
                            StatusCode::SERVICE_UNAVAILABLE
                        }
                    } else {
                        match probers.get(req.uri().path()) {
                            Some(probe) => run(probe).await,
                            None => StatusCode::NOT_FOUND,
                        }
                    };
                    let mut r = Response::new(Full::new(Bytes::new()));
                    *r.status_mut() = status;
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A one-route app on loopback: `/ok` 200, anything else 500.
    async fn app() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = service_fn(|req: Request<Incoming>| async move {
                        let ok = req.uri().path() == "/ok"
                            && req.headers().get("x-probe").is_some_and(|v| v == "yes");
                        let mut r = Response::new(Full::new(Bytes::new()));
                        if !ok {
                            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        }
                        Ok::<_, Infallible>(r)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        port
    }

    async fn get(addr: SocketAddr, path: &str) -> u16 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out.split(' ').nth(1).unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn declared_probes_are_carried_out_over_loopback_and_nothing_else() {
        let port = app().await;
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let probers = parse(
            &serde_json::json!({
                "/app-health/app/readyz": {"httpGet": {"path": "/ok", "port": port,
                    "httpHeaders": [{"name": "x-probe", "value": "yes"}]}},
                "/app-health/app/livez": {"httpGet": {"path": "/broken", "port": port}},
                "/app-health/app/startupz": {"tcpSocket": {"port": port}},
                "/app-health/other/readyz": {"tcpSocket": {"port": closed}, "timeoutSeconds": 1},
            })
            .to_string(),
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_tx, rx) = watch::channel(false);
        let (ready_tx, ready) = watch::channel(false);
        tokio::spawn(serve(listener, probers, ready, rx));
        assert_eq!(
            get(addr, READY_PATH).await,
            503,
            "the proxy is not ready yet"
        );
        ready_tx.send_replace(true);
        assert_eq!(get(addr, READY_PATH).await, 200);
        assert_eq!(get(addr, "/app-health/app/readyz").await, 200);
        assert_eq!(get(addr, "/app-health/app/livez").await, 500);
        assert_eq!(get(addr, "/app-health/app/startupz").await, 200);
        assert_eq!(get(addr, "/app-health/other/readyz").await, 503);
        assert_eq!(get(addr, "/ok").await, 404, "only declared probes");
    }

    #[test]
    fn bad_tables_are_refused_with_the_path() {
        for bad in [
            r#"{"/a": {"httpGet": {"port": "web"}}}"#,
            r#"{"/a": {"exec": {}}}"#,
            "[]",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
