//! Checking a signing certificate before the CA trusts it: the path from the signer up to one of
//! the roots, each link's signature, CA flags, path length and validity at `now`.
//!
//! This runs once at start-up on files an operator supplied, so clear errors matter more than
//! speed. Workload chains are verified by rustls/webpki in `ward-tls`, not here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;

/// More links than this between the signer and a root is refused (RUSTSEC-2023-0052: path
/// building must stay bounded; docs/threats.md, "Identities and certificate chains").
pub(crate) const MAX_PATH_LEN: usize = 8;

/// Why a signer certificate, its chain or its roots are not usable.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A certificate in the chain or the roots is not valid DER X.509.
    #[error("{what} is not a valid DER X.509 certificate")]
    Parse {
        /// Which certificate: "signer", "chain" or "root".
        what: &'static str,
    },
    /// A certificate that must sign others lacks `basicConstraints CA:TRUE`.
    #[error("certificate {subject:?} is not a CA (basicConstraints CA:TRUE is missing)")]
    NotCa {
        /// Subject of the offending certificate.
        subject: String,
    },
    /// A CA certificate has a keyUsage extension without `keyCertSign`.
    #[error("CA certificate {subject:?} lacks keyUsage keyCertSign")]
    NoKeyCertSign {
        /// Subject of the offending certificate.
        subject: String,
    },
    /// A certificate of the path is expired or not yet valid.
    #[error("certificate {subject:?} is not valid now (expired or not yet valid)")]
    NotValidNow {
        /// Subject of the offending certificate.
        subject: String,
    },
    /// A root is not self-signed.
    #[error("root certificate {subject:?} is not self-signed")]
    RootNotSelfSigned {
        /// Subject of the offending certificate.
        subject: String,
    },
    /// A CA's pathLenConstraint forbids the intermediates below it.
    #[error("certificate {subject:?} has a pathLenConstraint too small for this chain")]
    PathLen {
        /// Subject of the offending certificate.
        subject: String,
    },
    /// No certificate of the chain or the roots signed this one.
    #[error("certificate {subject:?} does not chain up to root-cert.pem")]
    Unanchored {
        /// Subject of the certificate whose issuer was not found.
        subject: String,
    },
    /// The path from the signer to a root has more than 8 links.
    #[error("chain from the signer to a root is longer than {MAX_PATH_LEN} certificates")]
    TooLong,
    /// No root was supplied.
    #[error("no root certificate")]
    NoRoots,
}

/// A signer whose path to a root was verified.
#[derive(Debug)]
pub(crate) struct VerifiedSigner {
    /// What to send after each leaf: the signer, then intermediates up to (not including) the
    /// root. Empty when the signer is itself a root.
    pub(crate) intermediates: Vec<Vec<u8>>,
    /// The earliest NotAfter along signer → root: no leaf may outlive it.
    pub(crate) not_after: SystemTime,
}

/// Verifies that `signer` chains up to one of `roots`, through certificates of `pool` (in any
/// order; certificates equal to a root or to the signer are skipped), and that every
/// certificate on the way is a CA valid at `now`.
pub(crate) fn verify_signer(
    signer: &[u8],
    pool: &[Vec<u8>],
    roots: &[Vec<u8>],
    now: SystemTime,
) -> Result<VerifiedSigner, ChainError> {
    if roots.is_empty() {
        return Err(ChainError::NoRoots);
    }
    let roots_parsed = roots
        .iter()
        .map(|der| parse(der, "root"))
        .collect::<Result<Vec<_>, _>>()?;
    for root in &roots_parsed {
        check_ca(root, now, 0)?;
        if root.verify_signature(None).is_err() {
            return Err(ChainError::RootNotSelfSigned {
                subject: root.subject().to_string(),
            });
        }
    }
    let signer_root = roots
        .iter()
        .zip(&roots_parsed)
        .find(|(der, _)| der.as_slice() == signer);
    if let Some((_, root)) = signer_root {
        return Ok(VerifiedSigner {
            intermediates: Vec::new(),
            not_after: system_time(root.validity().not_after),
        });
    }

    let pool: Vec<(&[u8], X509Certificate<'_>)> = pool
        .iter()
        .filter(|der| der.as_slice() != signer && !roots.contains(*der))
        .map(|der| Ok((der.as_slice(), parse(der, "chain")?)))
        .collect::<Result<_, ChainError>>()?;

    let signer_cert = parse(signer, "signer")?;
    let mut path: Vec<(&[u8], &X509Certificate<'_>)> = vec![(signer, &signer_cert)];
    let mut not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::MAX >> 2);
    loop {
        let depth = path.len() - 1;
        let Some((_, current)) = path.last() else {
            // `path` starts with the signer and only grows.
            return Err(ChainError::TooLong);
        };
        check_ca(current, now, depth)?;
        not_after = not_after.min(system_time(current.validity().not_after));

        let signed_by = |issuer: &X509Certificate<'_>| {
            issuer.subject().as_raw() == current.issuer().as_raw()
                && current.verify_signature(Some(issuer.public_key())).is_ok()
        };
        if let Some(root) = roots_parsed.iter().find(|root| signed_by(root)) {
            check_ca(root, now, path.len())?;
            not_after = not_after.min(system_time(root.validity().not_after));
            let intermediates = path.iter().map(|(der, _)| der.to_vec()).collect();
            return Ok(VerifiedSigner {
                intermediates,
                not_after,
            });
        }
        if path.len() >= MAX_PATH_LEN {
            return Err(ChainError::TooLong);
        }
        let next = pool
            .iter()
            .find(|(der, cert)| !path.iter().any(|(d, _)| d == der) && signed_by(cert));
        match next {
            Some((der, cert)) => path.push((der, cert)),
            None => {
                return Err(ChainError::Unanchored {
                    subject: current.subject().to_string(),
                })
            }
        }
    }
}

fn parse<'a>(der: &'a [u8], what: &'static str) -> Result<X509Certificate<'a>, ChainError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        _ => Err(ChainError::Parse { what }),
    }
}

/// `cert` may sign certificates: a CA, allowed to sign (keyUsage), valid at `now`, and its
/// pathLenConstraint admits `below` intermediates under it.
///
/// RFC 5280 §4.2.1.9: "The cA boolean indicates whether the certified public key may be used to
/// verify certificate signatures." §4.2.1.3: "The keyCertSign bit is asserted when the subject
/// public key is used for verifying signatures on public key certificates."
fn check_ca(cert: &X509Certificate<'_>, now: SystemTime, below: usize) -> Result<(), ChainError> {
    let subject = || cert.subject().to_string();
    let constraints = cert
        .basic_constraints()
        .ok()
        .flatten()
        .filter(|bc| bc.value.ca)
        .ok_or_else(|| ChainError::NotCa { subject: subject() })?;
    if let Some(max) = constraints.value.path_len_constraint {
        if usize::try_from(max).unwrap_or(usize::MAX) < below {
            return Err(ChainError::PathLen { subject: subject() });
        }
    }
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => {
            return Err(ChainError::NoKeyCertSign { subject: subject() })
        }
        Ok(_) => {}
        Err(_) => return Err(ChainError::NoKeyCertSign { subject: subject() }),
    }
    let validity = cert.validity();
    if now < system_time(validity.not_before) || now > system_time(validity.not_after) {
        return Err(ChainError::NotValidNow { subject: subject() });
    }
    Ok(())
}

/// An X.509 time as a [`SystemTime`] (whole seconds, as certificates carry).
pub(crate) fn system_time(t: ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    match u64::try_from(secs) {
        Ok(after) => UNIX_EPOCH + Duration::from_secs(after),
        Err(_) => UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    struct Ca {
        der: Vec<u8>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca_params(name: &str, pathlen: Option<u8>, days: i64) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(match pathlen {
            Some(n) => BasicConstraints::Constrained(n),
            None => BasicConstraints::Unconstrained,
        });
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(days);
        p
    }

    fn root(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(name, None, 365);
        let der = params.self_signed(&key).unwrap().der().to_vec();
        Ca {
            der,
            issuer: Issuer::new(params, key),
        }
    }

    fn sub(name: &str, parent: &Ca, params: Option<CertificateParams>) -> Ca {
        let key = KeyPair::generate().unwrap();
        let params = params.unwrap_or_else(|| ca_params(name, None, 30));
        let der = params
            .signed_by(&key, &parent.issuer)
            .unwrap()
            .der()
            .to_vec();
        Ca {
            der,
            issuer: Issuer::new(params, key),
        }
    }

    #[test]
    fn finds_the_path_in_any_order() {
        let r = root("root");
        let a = sub("a", &r, None);
        let b = sub("b", &a, None);
        let c = sub("c", &b, None);
        let now = SystemTime::now();
        let pool = vec![r.der.clone(), a.der.clone(), c.der.clone(), b.der.clone()];
        let v = verify_signer(&c.der, &pool, std::slice::from_ref(&r.der), now).unwrap();
        let want: Vec<Vec<u8>> = [&c, &b, &a].iter().map(|x| x.der.clone()).collect();
        assert_eq!(v.intermediates, want);
        // The signer's 30 days bind, not the root's 365.
        let left = v.not_after.duration_since(now).unwrap();
        assert!(
            left <= Duration::from_secs(30 * 86_400) && left > Duration::from_secs(29 * 86_400)
        );

        let v = verify_signer(&r.der, &[], std::slice::from_ref(&r.der), now).unwrap();
        assert!(v.intermediates.is_empty());
    }

    #[test]
    fn rejects_bad_paths() {
        let r = root("root");
        let other = root("other");
        let now = SystemTime::now();
        let a = sub("a", &r, None);

        let mut leafish = ca_params("not-a-ca", None, 30);
        leafish.is_ca = IsCa::ExplicitNoCa;
        let not_ca = sub("x", &r, Some(leafish));

        let mut no_sign = ca_params("no-sign", None, 30);
        no_sign.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let no_sign = sub("x", &r, Some(no_sign));

        let mut expired = ca_params("expired", None, 30);
        expired.not_after = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
        let expired = sub("x", &r, Some(expired));

        let zero = sub("zero", &r, Some(ca_params("zero", Some(0), 30)));
        let under_zero = sub("under-zero", &zero, None);

        let mut long = vec![root("deep")];
        for i in 0..=MAX_PATH_LEN {
            let next = sub(&format!("i{i}"), &long[i], None);
            long.push(next);
        }
        let long_pool: Vec<Vec<u8>> = long.iter().map(|c| c.der.clone()).collect();

        type Check = fn(&ChainError) -> bool;
        type Case<'a> = (&'a str, &'a [u8], Vec<Vec<u8>>, Vec<Vec<u8>>, Check);
        let one = |ca: &Ca| vec![ca.der.clone()];
        let cases: Vec<Case<'_>> = vec![
            ("other root", &a.der, vec![], one(&other), |e| {
                matches!(e, ChainError::Unanchored { .. })
            }),
            ("no roots", &a.der, vec![], vec![], |e| {
                matches!(e, ChainError::NoRoots)
            }),
            ("not a CA", &not_ca.der, vec![], one(&r), |e| {
                matches!(e, ChainError::NotCa { .. })
            }),
            ("no keyCertSign", &no_sign.der, vec![], one(&r), |e| {
                matches!(e, ChainError::NoKeyCertSign { .. })
            }),
            ("expired", &expired.der, vec![], one(&r), |e| {
                matches!(e, ChainError::NotValidNow { .. })
            }),
            ("pathlen 0", &under_zero.der, one(&zero), one(&r), |e| {
                matches!(e, ChainError::PathLen { .. })
            }),
            ("root not self-signed", &a.der, vec![], one(&a), |e| {
                matches!(e, ChainError::RootNotSelfSigned { .. })
            }),
            ("garbage", b"junk", vec![], one(&r), |e| {
                matches!(e, ChainError::Parse { what: "signer" })
            }),
            (
                "too long",
                &long[MAX_PATH_LEN + 1].der,
                long_pool,
                vec![long[0].der.clone()],
                |e| matches!(e, ChainError::TooLong),
            ),
        ];
        for (name, signer, pool, roots, check) in cases {
            match verify_signer(signer, &pool, &roots, now) {
                Err(e) => assert!(check(&e), "{name}: wrong error {e:?}"),
                Ok(v) => panic!("{name}: accepted {v:?}"),
            }
        }
    }
}
