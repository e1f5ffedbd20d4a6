//! The workload certificate: requested by CSR (the key never leaves the proxy), installed into the
//! [`CertStore`], and renewed at about half its lifetime with jitter. Rotation swaps the
//! certificate for new handshakes only; open connections are never touched.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use ward_identity::{
    cert_not_after, generate_csr, IdentityError, IssuedCert, SpiffeId, WorkloadCert,
};
use ward_tls::{CertStore, TlsError};

use crate::metrics::Metrics;

/// Why the CA did not issue a certificate.
#[derive(Debug, thiserror::Error)]
#[error("certificate request refused: {0}")]
pub struct SignError(pub String);

/// The CSR-in / certificate-out call to the CA. In `ward up` it is an in-process call; a remote
/// proxy will make the same call over gRPC.
pub trait CertificateProvider: Send + Sync + 'static {
    /// Sign `csr_der` for `id`.
    fn sign(
        &self,
        id: SpiffeId,
        csr_der: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<IssuedCert, SignError>> + Send + '_>>;
}

/// Why one certificate refresh failed; the rotation task logs it and retries.
#[derive(Debug, thiserror::Error)]
enum RefreshError {
    /// The key pair or CSR could not be made.
    #[error("CSR generation failed: {0}")]
    Csr(#[from] IdentityError),
    /// The CA refused or could not be reached.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// The issued certificate does not fit the store (another identity, a bad chain).
    #[error("certificate rejected: {0}")]
    Install(#[from] TlsError),
}

/// Retry delays after a failed request: 500 ms doubling to 60 s (ztunnel uses 500 ms → 150 s).
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Request one certificate and install it.
async fn refresh(
    store: &CertStore,
    ca: &dyn CertificateProvider,
) -> Result<WorkloadCert, RefreshError> {
    let id = store.id().clone();
    let kc = generate_csr(&id)?;
    let issued = ca.sign(id.clone(), kc.csr_der.clone()).await?;
    let cert = WorkloadCert {
        id,
        key_pkcs8_der: kc.key_pkcs8_der.clone(),
        issued,
    };
    store.install(&cert)?;
    Ok(cert)
}

/// Publish when an installed certificate and the earliest of its roots expire
/// (`ward_cert_expiry_timestamp_seconds`). A root that does not parse is left out (installing
/// the certificate has already checked the chain against the roots).
fn publish_expiry(metrics: &Metrics, workload: &str, issued: &IssuedCert) {
    metrics.cert_expiry(workload, "leaf", issued.not_after);
    metrics.cert_lifetime(
        workload,
        issued
            .not_after
            .duration_since(issued.not_before)
            .unwrap_or_default(),
    );
    let earliest_root = issued
        .roots_der
        .iter()
        .filter_map(|der| cert_not_after(der).ok())
        .min();
    if let Some(at) = earliest_root {
        metrics.cert_expiry(workload, "root", at);
    }
}

/// Keep `store` supplied with a valid certificate until the task is dropped; `workload`
/// (`ns/name`) labels its expiry metrics; `latest` keeps each certificate installed (the
/// audit trail signs with it, `/certs` shows its chain).
pub(crate) async fn run_rotation(
    store: Arc<CertStore>,
    ca: Arc<dyn CertificateProvider>,
    metrics: Arc<Metrics>,
    workload: String,
    latest: Arc<crate::audit::LatestCert>,
) {
    let mut delay = RETRY_MIN;
    loop {
        match refresh(&store, ca.as_ref()).await {
            Ok(cert) => {
                delay = RETRY_MIN;
                latest.store(&cert);
                publish_expiry(&metrics, &workload, &cert.issued);
                tracing::info!(
                    identity = %cert.id,
                    serial = %cert.issued.serial,
                    not_after = %humantime_utc(cert.issued.not_after),
                    "workload certificate installed"
                );
                let at = cert.renew_at(fastrand::f64());
                let wait = at
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                tokio::time::sleep(wait).await;
            }
            Err(e) => {
                // Fail closed: the old certificate (if any) stays until it expires, after which
                // handshakes fail; nothing ever falls back to plaintext.
                tracing::warn!(identity = %store.id(), error = %e, retry_in_ms = delay.as_millis() as u64, "certificate request failed");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

/// The last second RFC 3339's four-digit years can write: 9999-12-31T23:59:59Z.
const LAST_RFC3339_SECOND: i64 = 253_402_300_799;

/// RFC 3339 in UTC to the second, for logs and the admin API. Times before 1970 show as
/// 1970-01-01T00:00:00Z and times after 9999 as 9999-12-31T23:59:59Z.
pub fn humantime_utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .min(LAST_RFC3339_SECOND);
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_else(|| "9999-12-31T23:59:59Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA that refuses every request.
    struct Refusing;

    impl CertificateProvider for Refusing {
        fn sign(
            &self,
            _id: SpiffeId,
            _csr_der: Vec<u8>,
        ) -> Pin<Box<dyn Future<Output = Result<IssuedCert, SignError>> + Send + '_>> {
            Box::pin(async { Err(SignError("not in the config".to_owned())) })
        }
    }

    #[tokio::test]
    async fn a_refused_request_is_a_sign_error_and_installs_nothing() {
        let id: SpiffeId = "spiffe://cluster.local/ns/app/sa/web".parse().unwrap();
        let store = CertStore::new(id);
        let err = refresh(&store, &Refusing).await.unwrap_err();
        assert!(matches!(err, RefreshError::Sign(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "certificate request refused: not in the config"
        );
        assert!(store.current().is_none());
    }

    #[test]
    fn rfc3339() {
        let at = |secs: u64| humantime_utc(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        let cases = [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_709_164_800, "2024-02-29T00:00:00Z"),
            (1_795_000_000, "2026-11-18T11:06:40Z"),
            (4_107_542_399, "2100-02-28T23:59:59Z"),
            (4_107_542_400, "2100-03-01T00:00:00Z"),
            (253_402_300_799, "9999-12-31T23:59:59Z"),
            (300_000_000_000, "9999-12-31T23:59:59Z"),
        ];
        for (secs, want) in cases {
            assert_eq!(at(secs), want, "{secs}");
        }
        let subsecond = SystemTime::UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(humantime_utc(subsecond), "1970-01-01T00:00:01Z");
        let before_1970 = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(humantime_utc(before_1970), "1970-01-01T00:00:00Z");
    }
}
