//! The proxy's side of the config stream (docs/multi-host.md, "The config stream").
//!
//! [`run`] keeps one stream to the control plane named in the bootstrap file: it authenticates
//! with the proxy's certificate once it has one, with the bootstrap token before; applies each
//! response to what it holds ([`crate::push::Held`]); answers it with an ACK, or a NACK naming
//! the reason while it keeps serving the previous version; and publishes each new
//! configuration. When the stream breaks it reconnects with exponential backoff and jitter,
//! sending what it holds so that only what changed meanwhile comes back. It never drops its
//! last configuration: with the control plane gone, the proxy keeps enforcing it.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use ward_tls::CertStore;
use ward_wire::ward::config::v1::proxy_config_service_client::ProxyConfigServiceClient;
use ward_wire::ward::config::v1::{ConfigRequest, ConfigResponse, Nack};

use crate::bootstrap::BootstrapFile;
use crate::ca_client::{self, ClientError};
use crate::push::{Assembled, Held, Received, MAX_SECTION_BYTES};

/// Where the proxy's certificate store is put once the sidecar has one; the stream then
/// authenticates with it instead of the bootstrap token.
pub type CertSlot = Arc<OnceLock<Arc<CertStore>>>;

/// Retry delays after a broken or refused stream: 500 ms doubling to 30 s, each ±25 %.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The control plane could not be reached, or the TLS setup failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The control plane refused the stream or ended it with an error.
    #[error("the control plane refused the config stream: {code:?}: {message}")]
    Refused {
        /// The gRPC status code.
        code: Code,
        /// The control plane's message.
        message: String,
    },
}

impl StreamError {
    /// Whether the control plane refused the proxy's credential or workload: retrying with the
    /// same bootstrap file cannot help.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            StreamError::Refused {
                code: Code::Unauthenticated | Code::PermissionDenied,
                ..
            }
        )
    }

    fn of(status: tonic::Status) -> StreamError {
        StreamError::Refused {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// The proxy's stream client.
pub struct ConfigClient {
    bundle: Arc<BootstrapFile>,
    certs: CertSlot,
    proxy_version: String,
    held: Held,
    out: watch::Sender<Option<Arc<Assembled>>>,
}

impl ConfigClient {
    /// A client for `bundle`'s workload, publishing on `out`.
    pub fn new(
        bundle: Arc<BootstrapFile>,
        certs: CertSlot,
        proxy_version: String,
        out: watch::Sender<Option<Arc<Assembled>>>,
    ) -> ConfigClient {
        ConfigClient {
            bundle,
            certs,
            proxy_version,
            held: Held::default(),
            out,
        }
    }

    /// Streams until `shutdown` flips to true. Returns an error only when the control plane
    /// refuses the proxy before it ever had a configuration (an expired or foreign token, a
    /// workload the token is not for): the caller should stop with that error.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), StreamError> {
        let mut delay = RETRY_MIN;
        loop {
            let had_config = self.out.borrow().is_some();
            let result = tokio::select! {
                r = self.session(&mut delay) => r,
                _ = shutdown.wait_for(|s| *s) => return Ok(()),
            };
            match result {
                Ok(()) => tracing::warn!(
                    control_plane = %self.bundle.control_plane,
                    "the control plane closed the config stream; reconnecting"
                ),
                Err(e) if e.is_refusal() && !had_config && self.out.borrow().is_none() => {
                    return Err(e)
                }
                Err(e) => tracing::warn!(
                    control_plane = %self.bundle.control_plane,
                    error = %e,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "config stream down; the proxy keeps its last config"
                ),
            }
            let wait = jittered(delay);
            delay = (delay * 2).min(RETRY_MAX);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|s| *s) => return Ok(()),
            }
        }
    }

    /// One stream, from connect to its end. Resets `delay` once a response arrives.
    async fn session(&mut self, delay: &mut Duration) -> Result<(), StreamError> {
        let presented = self.certs.get().filter(|s| s.is_ready()).cloned();
        let via_token = presented.is_none();
        let tls = ca_client::tls_config(&self.bundle, presented)?;
        let channel = ca_client::connect(&self.bundle.control_plane, tls, None).await?;
        let mut client =
            ProxyConfigServiceClient::new(channel).max_decoding_message_size(4 * MAX_SECTION_BYTES);
        let (tx, rx) = mpsc::channel(4);
        let held = self.held.hashes();
        let first = ConfigRequest {
            workload: self.bundle.workload.clone(),
            version_info: if held.is_empty() {
                String::new()
            } else {
                self.held.version()
            },
            held: held.into_iter().collect(),
            proxy_version: self.proxy_version.clone(),
            ..Default::default()
        };
        // The channel has room: this is its first message.
        let _ = tx.send(first).await;
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if via_token {
            request
                .metadata_mut()
                .insert("authorization", ca_client::bearer(&self.bundle)?);
        }
        let mut responses = client
            .stream_config(request)
            .await
            .map_err(StreamError::of)?
            .into_inner();
        tracing::info!(
            control_plane = %self.bundle.control_plane,
            workload = %self.bundle.workload,
            via = if via_token { "token" } else { "certificate" },
            "config stream connected"
        );
        while let Some(response) = responses.message().await.map_err(StreamError::of)? {
            *delay = RETRY_MIN;
            let answer = self.handle(response);
            if tx.send(answer).await.is_err() {
                break;
            }
        }
        Ok(())
    }

    /// Applies one response; returns the ACK or NACK to send.
    fn handle(&mut self, response: ConfigResponse) -> ConfigRequest {
        let received = Received {
            version: response.version_info.clone(),
            sections: response
                .sections
                .into_iter()
                .map(|s| (s.name, s.hash, s.body))
                .collect(),
            removed: response.removed,
        };
        let applied = self
            .held
            .apply(&received)
            .and_then(|(held, assembled)| self.check(&assembled).map(|()| (held, assembled)));
        match applied {
            Ok((held, assembled)) => {
                self.held = held;
                let version = assembled.version.clone();
                let changed = self
                    .out
                    .borrow()
                    .as_ref()
                    .is_none_or(|cur| cur.version != version);
                if changed {
                    tracing::info!(
                        version = %version,
                        generation = response.generation,
                        sections = received.sections.len(),
                        "config applied"
                    );
                    self.out.send_replace(Some(Arc::new(assembled)));
                }
                ConfigRequest {
                    version_info: version,
                    response_nonce: response.nonce,
                    ..Default::default()
                }
            }
            Err(reason) => {
                tracing::warn!(
                    version = %response.version_info,
                    reason = %reason,
                    "config refused (NACK); the proxy keeps serving its previous config"
                );
                ConfigRequest {
                    version_info: self
                        .out
                        .borrow()
                        .as_ref()
                        .map(|c| c.version.clone())
                        .unwrap_or_default(),
                    response_nonce: response.nonce,
                    error_detail: Some(Nack { message: reason }),
                    ..Default::default()
                }
            }
        }
    }

    /// Refuses a configuration for another workload or identity, or one that moves the mesh's
    /// trust domain under a running proxy.
    fn check(&self, assembled: &Assembled) -> Result<(), String> {
        let w = &assembled.config.workload;
        let key = format!("{}/{}", w.namespace, w.name);
        if key != self.bundle.workload {
            return Err(format!(
                "the configuration is for workload {key}, not {}",
                self.bundle.workload
            ));
        }
        if w.identity != self.bundle.identity {
            return Err(format!(
                "the configuration gives identity {}, not {}",
                w.identity, self.bundle.identity
            ));
        }
        if let Some(cur) = self.out.borrow().as_ref() {
            if cur.mesh.trust_domain != assembled.mesh.trust_domain
                || cur.mesh.trust_domain_aliases != assembled.mesh.trust_domain_aliases
            {
                return Err("the mesh's trust domain changed; restart the proxy".into());
            }
        }
        Ok(())
    }
}

/// `delay` ± 25 %.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(0.75 + fastrand::f64() / 2.0)
}
