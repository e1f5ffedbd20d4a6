//! The workload certificate: requested by CSR (the key never leaves the proxy), installed into the
//! [`CertStore`], and renewed at about half its lifetime with jitter. Rotation swaps the
//! certificate for new handshakes only; open connections are never touched.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ward_identity::{generate_csr, IssuedCert, SpiffeId, WorkloadCert};
use ward_tls::CertStore;

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

/// Retry delays after a failed request: 500 ms doubling to 60 s (ztunnel uses 500 ms → 150 s).
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// Request one certificate and install it.
async fn refresh(store: &CertStore, ca: &dyn CertificateProvider) -> Result<WorkloadCert, String> {
    let id = store.id().clone();
    let kc = generate_csr(&id).map_err(|e| format!("CSR generation failed: {e}"))?;
    let issued = ca
        .sign(id.clone(), kc.csr_der.clone())
        .await
        .map_err(|e| e.to_string())?;
    let cert = WorkloadCert {
        id,
        key_pkcs8_der: kc.key_pkcs8_der.clone(),
        issued,
    };
    store
        .install(&cert)
        .map_err(|e| format!("certificate rejected: {e}"))?;
    Ok(cert)
}

/// Keep `store` supplied with a valid certificate until the task is dropped.
pub(crate) async fn run_rotation(store: Arc<CertStore>, ca: Arc<dyn CertificateProvider>) {
    let mut delay = RETRY_MIN;
    loop {
        match refresh(&store, ca.as_ref()).await {
            Ok(cert) => {
                delay = RETRY_MIN;
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

/// RFC 3339 in UTC, for logs and the admin API.
pub fn humantime_utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(humantime_utc(t), "2026-11-18T11:06:40Z");
        assert_eq!(
            humantime_utc(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00Z"
        );
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(humantime_utc(leap), "2000-02-29T00:00:00Z");
    }
}
