//! An in-process mesh for the proxy's integration tests: sidecars started with `Sidecar::new` and
//! `Sidecar::run` on the test's own tokio runtime, fed by configs translated from Istio YAML, with
//! certificates from a throw-away `ward-ca` CA, small apps on loopback, the access log captured
//! and the metrics read back. No `ward` binary, no child process: a test can reach into a
//! sidecar's config channel (reload, pause) and read exactly the records its connection made.
//!
//! It lives under `tests/` rather than in a `testing` module of the crate: it needs only the
//! crate's public API plus dev-dependencies (ward-ca, tracing-subscriber, tempfile), which a
//! module in `src/` would have to turn into regular dependencies behind a feature.
//!
//! Layout:
//! - this file: [`Mesh`] (CA, translated config, running sidecars) and [`Net`] (a test's
//!   addresses);
//! - [`access`]: the capture of the `access` tracing target;
//! - [`metrics`]: the test's metrics registry as text, queried by name and labels;
//! - [`apps`]: echo, reset-mid-stream and HTTP apps;
//! - [`peer`]: test clients that speak HBONE as another sidecar would, or fail TLS on purpose.
//!
//! Rules (ARCHITECTURE.md, "Testing the proxy in process"):
//! - Run on a current-thread runtime (the `#[tokio::test]` default): the access-log capture is
//!   installed for the test's thread, and every sidecar task runs on that thread.
//! - Use addresses from [`Net`] only (127.1.90.x to 127.1.99.x), one block or slice per test.
//! - Every wait is bounded; a path that never ends fails the test instead of hanging it.
// Shared by the proxy's test binaries, each using a different subset: hence dead_code and the
// pub items that are unreachable from any one of them.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

pub mod access;
pub mod apps;
pub mod metrics;
pub mod peer;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use ward_ca::{Ca, CaOptions};
use ward_config::{MeshSnapshot, ProxyConfig};
use ward_identity::{generate_csr, IssuedCert, SpiffeId, WorkloadCert};
use ward_proxy::listener::{Admission, FdBudget, Limits};
use ward_proxy::{CertificateProvider, MeshIdentity, Metrics, Sidecar, SidecarHandle, SignError};

/// The longest any harness wait lasts (a sidecar getting ready, a record arriving).
pub const WAIT: Duration = Duration::from_secs(10);

/// Poll `done` every few milliseconds until it holds or `limit` passes; false on timeout. The
/// sleeps let the runtime's other tasks (the sidecars) run.
pub async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Twenty loopback addresses of one test: 127.1.<block>.<base> to 127.1.<block>.<base + 19>.
/// Blocks 90 to 99 are the proxy crate's; `ward` end-to-end tests use other blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    block: u8,
    base: u8,
}

impl Net {
    /// How many addresses one `Net` holds.
    pub const SIZE: u8 = 20;
    /// Slices of [`Net::SIZE`] addresses per block.
    const PER_BLOCK: usize = 12;

    /// The addresses 127.1.<block>.<base>.. of one test.
    pub fn new(block: u8, base: u8) -> Net {
        assert!(
            (90..=99).contains(&block),
            "block {block}: the proxy's tests use 127.1.90.x to 127.1.99.x"
        );
        assert!(
            (1..=255 - Self::SIZE).contains(&base),
            "base {base} leaves no room for {} addresses",
            Self::SIZE
        );
        Net { block, base }
    }

    /// The addresses of row `i` of a table whose rows start at block `first`: twelve slices
    /// per block, then the next block.
    pub fn row(first: u8, i: usize) -> Net {
        let block = usize::from(first) + i / Self::PER_BLOCK;
        let block = u8::try_from(block).unwrap_or(u8::MAX);
        let slot = u8::try_from(i % Self::PER_BLOCK).unwrap_or(0);
        Net::new(block, 1 + slot * Self::SIZE)
    }

    /// Address number `n` (0-based) of this test.
    pub fn ip(&self, n: u8) -> IpAddr {
        assert!(n < Self::SIZE, "address {n} is outside this test's slice");
        IpAddr::V4(Ipv4Addr::new(127, 1, self.block, self.base + n))
    }

    /// Address `n`, port `port`.
    pub fn addr(&self, n: u8, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip(n), port)
    }
}

/// Istio YAML to a snapshot, or a panic that shows the diagnostics.
pub fn translate_yaml(yaml: &str) -> MeshSnapshot {
    let set = ward_config::load_str("test.yaml", yaml)
        .unwrap_or_else(|d| panic!("test config does not load:\n{d}\n---\n{yaml}"));
    ward_config::translate(&set)
        .unwrap_or_else(|d| panic!("test config does not translate:\n{d}\n---\n{yaml}"))
}

/// The CA call of every sidecar of a [`Mesh`]: an in-process `ward-ca` signature.
struct TestCa(Arc<Ca>);

impl CertificateProvider for TestCa {
    fn sign(
        &self,
        id: SpiffeId,
        csr_der: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<IssuedCert, SignError>> + Send + '_>> {
        let signed = self
            .0
            .sign(&id, &csr_der, None)
            .map_err(|e| SignError(e.to_string()));
        Box::pin(std::future::ready(signed))
    }
}

/// One sidecar the mesh started, and the switches a test holds on it.
struct Running {
    handle: SidecarHandle,
    /// The sidecar's config channel: sending on it is a config push.
    config: watch::Sender<Arc<ProxyConfig>>,
    /// While true, the sidecar's own task (config reactions: listener reconciliation and the
    /// re-check of open connections) is not polled; its listeners and connections still run.
    pause: watch::Sender<bool>,
    /// Stops the sidecar.
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), String>>,
}

/// An in-process mesh: one CA, one metrics registry, the sidecars a test starts.
///
/// Dropping it stops every sidecar (their listeners close once the runtime runs again).
pub struct Mesh {
    snapshot: MeshSnapshot,
    ca: Arc<Ca>,
    registry: Registry,
    metrics: Arc<Metrics>,
    admission: Admission,
    sidecars: BTreeMap<String, Running>,
    /// Holds the CA's root key until the mesh is dropped.
    _ca_dir: tempfile::TempDir,
}

impl Mesh {
    /// A mesh configured by `yaml` (WorkloadEntries, Sidecars, policies...), with a new CA for
    /// its trust domain. No sidecar runs until [`Mesh::start`].
    pub fn from_yaml(yaml: &str) -> Mesh {
        let snapshot = translate_yaml(yaml);
        let dir = tempfile::tempdir().expect("temporary directory for the test CA");
        let opts = CaOptions {
            trust_domain: snapshot.trust_domain.clone(),
            ..CaOptions::default()
        };
        let ca = Ca::load_or_create(dir.path(), opts).expect("test CA");
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        Mesh {
            snapshot,
            ca: Arc::new(ca),
            registry,
            metrics,
            admission: Admission {
                limits: Limits::default(),
                budget: Arc::new(FdBudget::from_limit(4096)),
            },
            sidecars: BTreeMap::new(),
            _ca_dir: dir,
        }
    }

    /// The translated config of workload `key` (`ns/name`), to start a sidecar with a changed
    /// copy or to build a reload.
    pub fn config(&self, key: &str) -> ProxyConfig {
        self.snapshot.proxies.get(key).cloned().unwrap_or_else(|| {
            let known: Vec<&String> = self.snapshot.proxies.keys().collect();
            panic!("no WorkloadEntry {key} in the test config; it has {known:?}")
        })
    }

    /// The SPIFFE id of workload `key`, as its certificate proves it.
    pub fn identity(&self, key: &str) -> String {
        self.config(key).workload.identity
    }

    /// Start the sidecar of workload `key` with its translated config; returns once it is ready
    /// (certificate installed, every listener bound).
    pub async fn start(&mut self, key: &str) -> SidecarHandle {
        let config = self.config(key);
        self.start_with(key, config).await
    }

    /// Start the sidecar of workload `key` with `config` (a translated config the test
    /// changed); returns once it is ready.
    pub async fn start_with(&mut self, key: &str, config: ProxyConfig) -> SidecarHandle {
        assert!(
            !self.sidecars.contains_key(key),
            "sidecar {key} already runs"
        );
        let (config_tx, config_rx) = watch::channel(Arc::new(config));
        let mesh = MeshIdentity {
            trust_domain: self.snapshot.trust_domain.clone(),
            aliases: self.snapshot.trust_domain_aliases.clone(),
        };
        let (sidecar, handle) = Sidecar::new(
            key.to_owned(),
            config_rx,
            Arc::new(TestCa(self.ca.clone())),
            mesh,
            self.metrics.clone(),
            self.admission.clone(),
        )
        .unwrap_or_else(|e| panic!("sidecar {key}: {e}"));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (pause_tx, pause_rx) = watch::channel(false);
        let mut task = tokio::spawn(run_pausable(sidecar, shutdown_rx, pause_rx));
        let ready = wait_until(WAIT, || handle.is_ready() || task.is_finished()).await;
        if task.is_finished() {
            let ended = (&mut task).await;
            panic!("sidecar {key} stopped before it was ready: {ended:?}");
        }
        assert!(
            ready,
            "sidecar {key} not ready within {WAIT:?}; listener problems: {:?}",
            handle.problems()
        );
        self.sidecars.insert(
            key.to_owned(),
            Running {
                handle: handle.clone(),
                config: config_tx,
                pause: pause_tx,
                shutdown: shutdown_tx,
                task,
            },
        );
        handle
    }

    fn running(&self, key: &str) -> &Running {
        self.sidecars
            .get(key)
            .unwrap_or_else(|| panic!("sidecar {key} is not running"))
    }

    /// Push `config` to the sidecar of `key`, as the control plane does on a reload.
    pub fn reload(&self, key: &str, config: ProxyConfig) {
        self.running(key).config.send_replace(Arc::new(config));
    }

    /// Push to the sidecar of `key` its config translated from `yaml` (a whole new mesh config).
    pub fn reload_yaml(&self, key: &str, yaml: &str) {
        let snapshot = translate_yaml(yaml);
        let config = snapshot
            .proxies
            .get(key)
            .cloned()
            .unwrap_or_else(|| panic!("no WorkloadEntry {key} in the reloaded config"));
        self.reload(key, config);
    }

    /// Stop polling the sidecar's own task: a config pushed now is seen by new connections
    /// (they read the config channel) but not acted on (listeners stay as they are, open
    /// connections are not re-checked) until [`Mesh::resume`]. This is how a test puts a
    /// connection in the gap between a config change and the sidecar's reaction to it.
    pub fn pause(&self, key: &str) {
        self.running(key).pause.send_replace(true);
    }

    /// Undo [`Mesh::pause`].
    pub fn resume(&self, key: &str) {
        self.running(key).pause.send_replace(false);
    }

    /// The handle of a running sidecar.
    pub fn handle(&self, key: &str) -> SidecarHandle {
        self.running(key).handle.clone()
    }

    /// The mesh's metrics now, as `/metrics` would show them.
    pub fn metrics(&self) -> metrics::MetricsText {
        metrics::MetricsText::encode(&self.registry)
    }

    /// A certificate and key for `identity` (a SPIFFE URI) from the mesh's CA, for a test peer.
    pub fn workload_cert(&self, identity: &str) -> WorkloadCert {
        let id = SpiffeId::parse(identity)
            .unwrap_or_else(|e| panic!("{identity:?} is not a SPIFFE id: {e}"));
        let key = generate_csr(&id).expect("CSR");
        let issued = self
            .ca
            .sign(&id, &key.csr_der, None)
            .unwrap_or_else(|e| panic!("the test CA refused {identity}: {e}"));
        WorkloadCert {
            id,
            key_pkcs8_der: key.key_pkcs8_der.clone(),
            issued,
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for running in self.sidecars.values() {
            running.pause.send_replace(false);
            running.shutdown.send_replace(true);
        }
    }
}

/// Run a sidecar until `shutdown`, not polling it while `pause` is true. `biased` so that a pause
/// sent together with a config push always wins: the push is then not acted on.
async fn run_pausable(
    sidecar: Sidecar,
    shutdown: watch::Receiver<bool>,
    mut pause: watch::Receiver<bool>,
) -> Result<(), String> {
    let run = sidecar.run(shutdown);
    tokio::pin!(run);
    // A dropped pause switch means nobody can pause any more: just run.
    while pause.wait_for(|p| !*p).await.is_ok() {
        let paused = tokio::select! {
            biased;
            p = pause.wait_for(|p| *p) => p.is_ok(),
            ended = &mut run => return ended.map_err(|e| e.to_string()),
        };
        if !paused {
            break;
        }
    }
    run.await.map_err(|e| e.to_string())
}
