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

    /// The trust bundle, PEM.
    pub fn root_pem(&self) -> String {
        self.ca.root_pem()
    }

    /// The configured workload certificate lifetime.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}
