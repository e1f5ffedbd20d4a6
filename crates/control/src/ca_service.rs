//! The CA as a service: CSR in, certificate out. The CA never sees a private key.

use std::time::Duration;

use ward_ca::{Ca, CaError};
use ward_identity::{IssuedCert, SpiffeId};

/// Signs workload CSRs with one workload certificate lifetime.
pub struct CaService {
    ca: Ca,
    ttl: Duration,
}

impl CaService {
    /// A service issuing certificates valid for `ttl`.
    pub fn new(ca: Ca, ttl: Duration) -> Self {
        CaService { ca, ttl }
    }

    /// Sign `csr_der` for `id`. The CA checks that the CSR asks for exactly `id`.
    pub fn sign(&self, id: &SpiffeId, csr_der: &[u8]) -> Result<IssuedCert, CaError> {
        let issued = self.ca.sign(id, csr_der, Some(self.ttl))?;
        tracing::debug!(identity = %id, serial = %issued.serial, "certificate issued");
        Ok(issued)
    }

    /// Sign `csr_der` for `id`, valid for `requested` when it is shorter than the configured
    /// lifetime (Istio's `validity_duration`), else for the configured lifetime.
    pub fn sign_requested(
        &self,
        id: &SpiffeId,
        csr_der: &[u8],
        requested: Option<Duration>,
    ) -> Result<IssuedCert, CaError> {
        let ttl = requested
            .filter(|d| !d.is_zero())
            .map_or(self.ttl, |d| d.min(self.ttl));
        self.ca.sign(id, csr_der, Some(ttl))
    }

    /// Sign the control plane's own serving certificate: `id` plus `dns_names` (for standard
    /// gRPC clients that check a host name).
    pub fn sign_control_plane(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        csr_der: &[u8],
    ) -> Result<IssuedCert, CaError> {
        self.ca
            .sign_with_dns_names(id, dns_names, csr_der, Some(self.ttl))
    }

    /// The roots workloads trust, DER.
    pub fn roots_der(&self) -> Vec<Vec<u8>> {
        self.ca.roots_der()
    }

    /// The trust bundle, PEM.
    pub fn root_pem(&self) -> String {
        self.ca.root_pem()
    }

    /// The configured workload certificate lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}
