//! The control plane's own audit trail, `<ward up --audit-dir>/<root namespace>/ward-control-plane/`
//! (`ward_audit::Writer`, docs/audit.md), as the sink of break-glass records (`ward_proxy::breakglass`, docs/break-glass.md).
//!
//! Checkpoints are signed by the control plane's identity
//! (`spiffe://<trust domain>/ns/<root namespace>/sa/ward-control-plane`), with a certificate the
//! in-process CA issues; it is renewed before a checkpoint when less than a third of its
//! lifetime is left, so the chain verifies at each checkpoint's time.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};
use ward_audit::{CheckpointSigner, KeySigner, Rotation, Writer};
use ward_control::CaService;
use ward_identity::{generate_csr, SpiffeId, WorkloadCert};
use ward_proxy::breakglass::AuditSink;

/// The signer: the current key and chain, renewed by [`RenewingSigner::refresh`].
struct RenewingSigner {
    ca: Arc<CaService>,
    id: SpiffeId,
    current: Mutex<(Arc<KeySigner>, SystemTime, SystemTime)>,
}

fn issue(
    ca: &CaService,
    id: &SpiffeId,
) -> anyhow::Result<(Arc<KeySigner>, SystemTime, SystemTime)> {
    let key = generate_csr(id)?;
    let issued = ca.sign(id, &key.csr_der)?;
    let (not_before, not_after) = (issued.not_before, issued.not_after);
    let cert = WorkloadCert {
        id: id.clone(),
        key_pkcs8_der: key.key_pkcs8_der.clone(),
        issued,
    };
    let signer = KeySigner::new(&cert).map_err(|e| anyhow::anyhow!(e))?;
    Ok((Arc::new(signer), not_before, not_after))
}

impl RenewingSigner {
    /// Renew the certificate when less than a third of its lifetime is left.
    fn refresh(&self, now: SystemTime) {
        let Ok(mut cur) = self.current.lock() else {
            return;
        };
        let life = cur.2.duration_since(cur.1).unwrap_or_default();
        let left = cur.2.duration_since(now).unwrap_or_default();
        if left > life / 3 {
            return;
        }
        match issue(&self.ca, &self.id) {
            Ok(next) => *cur = next,
            Err(e) => tracing::error!(error = %e, "audit trail: signer certificate not renewed"),
        }
    }

    fn signer(&self) -> Option<Arc<KeySigner>> {
        self.current.lock().ok().map(|c| c.0.clone())
    }
}

impl CheckpointSigner for RenewingSigner {
    fn chain_der(&self) -> Vec<Vec<u8>> {
        self.signer().map(|s| s.chain_der()).unwrap_or_default()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        self.signer()
            .ok_or_else(|| "signer unavailable".to_owned())?
            .sign(message)
    }
}

/// The trail's writer, shared, opened at its first record: a process that is never asked for a
/// break-glass grant never takes the trail's lock, so several `ward up --workloads` processes
/// can share one state directory, and an audit directory that cannot be written fails the
/// grant (fail closed, with the reason), not the mesh.
pub(crate) struct Trail {
    dir: PathBuf,
    ca: Arc<CaService>,
    id: SpiffeId,
    open: Mutex<Option<(Writer, Arc<RenewingSigner>)>>,
}

impl Trail {
    /// The trail in `dir`, signed as `id` by `ca`; opened (or continued) when first written.
    pub(crate) fn new(dir: &Path, ca: Arc<CaService>, id: SpiffeId) -> Trail {
        Trail {
            dir: dir.to_owned(),
            ca,
            id,
            open: Mutex::new(None),
        }
    }

    fn open(&self) -> anyhow::Result<(Writer, Arc<RenewingSigner>)> {
        let current = issue(&self.ca, &self.id)?;
        let signer = Arc::new(RenewingSigner {
            ca: self.ca.clone(),
            id: self.id.clone(),
            current: Mutex::new(current),
        });
        let writer = Writer::open(
            &self.dir,
            signer.clone(),
            Rotation::default(),
            SystemTime::now(),
        )?;
        Ok((writer, signer))
    }
}

impl AuditSink for Trail {
    /// Append; a grant, a revocation or an expiry is sealed (checkpointed and synced) at once,
    /// uses within the writer's checkpoint interval.
    fn append(&self, kind: &str, fields: Map<String, Value>) -> Result<(), String> {
        let now = SystemTime::now();
        let mut open = self
            .open
            .lock()
            .map_err(|_| "trail unavailable".to_owned())?;
        if open.is_none() {
            let opened = self.open().map_err(|e| {
                format!(
                    "the control plane's audit trail {} cannot be opened: {e:#}",
                    self.dir.display()
                )
            })?;
            *open = Some(opened);
        }
        let Some((w, signer)) = open.as_mut() else {
            return Err("trail unavailable".to_owned());
        };
        signer.refresh(now);
        w.append(kind, &fields, now).map_err(|e| e.to_string())?;
        if kind != "break_glass_use" {
            w.checkpoint(now).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn tick(&self) {
        let now = SystemTime::now();
        let Ok(mut open) = self.open.lock() else {
            return;
        };
        if let Some((w, signer)) = open.as_mut() {
            signer.refresh(now);
            if let Err(e) = w.tick(now) {
                tracing::error!(error = %e, "audit trail: checkpoint failed");
            }
        }
    }
}

/// How often the break-glass sweep runs (expiries recorded, checkpoints when due).
pub(crate) const SWEEP: Duration = Duration::from_secs(1);
