//! Demo apps `ward up` can run behind a sidecar (annotation `ward.dev/demo-app`), so the shipped
//! examples work on a fresh machine: `fhir`, a tiny in-memory FHIR-like REST API. (`echo` is in
//! `echo.rs`.) Demo only: no persistence, no FHIR validation.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Resources by type; written by POST, read by GET.
type Store = Arc<Mutex<BTreeMap<String, Vec<serde_json::Value>>>>;

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/fhir+json"),
    );
    r
}

/// `/fhir/<Type>` → `Type` when it looks like a FHIR resource type.
fn resource_type(path: &str) -> Option<&str> {
    let t = path.strip_prefix("/fhir/")?.split('/').next()?;
    (!t.is_empty()
        && t.bytes().all(|b| b.is_ascii_alphabetic())
        && t.as_bytes()[0].is_ascii_uppercase())
    .then_some(t)
}

async fn handle(store: Store, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(rtype) = resource_type(req.uri().path()).map(str::to_owned) else {
        return json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]}),
        );
    };
    match *req.method() {
        Method::GET => {
            let entries = store
                .lock()
                .map(|s| s.get(&rtype).cloned().unwrap_or_default())
                .unwrap_or_default();
            json(
                StatusCode::OK,
                &serde_json::json!({"resourceType": "Bundle", "type": "searchset", "total": entries.len(),
                    "entry": entries.iter().map(|r| serde_json::json!({"resource": r})).collect::<Vec<_>>()}),
            )
        }
        Method::POST => {
            let Ok(body) = Limited::new(req.into_body(), 1024 * 1024).collect().await else {
                return json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &serde_json::json!({"resourceType": "OperationOutcome"}),
                );
            };
            let mut resource: serde_json::Value =
                serde_json::from_slice(&body.to_bytes()).unwrap_or_else(|_| serde_json::json!({}));
            if !resource.is_object() {
                resource = serde_json::json!({});
            }
            let id = {
                let Ok(mut s) = store.lock() else {
                    return json(StatusCode::INTERNAL_SERVER_ERROR, &serde_json::json!({}));
                };
                let list = s.entry(rtype.clone()).or_default();
                let id = (list.len() + 1).to_string();
                resource["resourceType"] = serde_json::json!(rtype);
                resource["id"] = serde_json::json!(id);
                list.push(resource.clone());
                id
            };
            let mut r = json(StatusCode::CREATED, &resource);
            if let Ok(v) = http::HeaderValue::from_str(&format!("/fhir/{rtype}/{id}")) {
                r.headers_mut().insert(http::header::LOCATION, v);
            }
            r
        }
        _ => json(
            StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({"resourceType": "OperationOutcome"}),
        ),
    }
}

/// Serve the FHIR demo app (HTTP/1.1 and h2c) on `listener` forever.
pub(crate) async fn serve_fhir(listener: TcpListener) {
    let store: Store = Arc::default();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let store = store.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let store = store.clone();
                async move { Ok::<_, Infallible>(handle(store, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_types() {
        assert_eq!(resource_type("/fhir/Patient"), Some("Patient"));
        assert_eq!(resource_type("/fhir/Patient/1"), Some("Patient"));
        assert_eq!(resource_type("/fhir/patient"), None);
        assert_eq!(resource_type("/fhir/"), None);
        assert_eq!(resource_type("/other/Patient"), None);
    }
}
