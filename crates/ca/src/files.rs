//! The CA's files on disk: which layout a directory holds, reading PEM certificates and keys,
//! and writing new key material without ever replacing an existing file.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::KeyPair;

use crate::CaError;

/// Istio `cacerts`: the signing (intermediate) certificate.
pub(crate) const CA_CERT: &str = "ca-cert.pem";
/// Istio `cacerts`: the signing key.
pub(crate) const CA_KEY: &str = "ca-key.pem";
/// Istio `cacerts`: intermediates between the signer and the root (may be empty).
pub(crate) const CERT_CHAIN: &str = "cert-chain.pem";
/// Istio `cacerts` and Ward: the root(s) workloads trust.
pub(crate) const ROOT_CERT: &str = "root-cert.pem";
/// Ward's self-signed root key.
pub(crate) const ROOT_KEY: &str = "root-key.pem";

/// What a CA directory holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Istio's plug-in layout: ca-cert, ca-key, cert-chain and root-cert.
    Cacerts,
    /// Ward's self-signed root: root-cert and root-key.
    WardRoot,
    /// Nothing yet (or no directory).
    Empty,
}

/// Decides the layout of `dir`. Any partial layout is an error: guessing could mean minting a
/// new root beside an operator's half-copied one.
pub(crate) fn detect(dir: &Path) -> Result<Layout, CaError> {
    let present = |name: &str| dir.join(name).exists();
    let cacerts = [CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT];
    let ward = [ROOT_CERT, ROOT_KEY];
    let missing = |names: &[&'static str]| -> Vec<&'static str> {
        names.iter().copied().filter(|n| !present(n)).collect()
    };
    if [CA_CERT, CA_KEY, CERT_CHAIN].iter().any(|n| present(n)) {
        let missing = missing(&cacerts);
        return if missing.is_empty() {
            Ok(Layout::Cacerts)
        } else {
            Err(CaError::PartialLayout {
                dir: dir.to_owned(),
                missing,
            })
        };
    }
    match missing(&ward).len() {
        0 => Ok(Layout::WardRoot),
        2 => Ok(Layout::Empty),
        _ => Err(CaError::PartialLayout {
            dir: dir.to_owned(),
            missing: missing(&ward),
        }),
    }
}

/// Every `CERTIFICATE` block of a PEM file, as DER. An empty file gives an empty list (Istio:
/// "if your ca-cert.pem is the same as root-cert.pem, the cert-chain.pem file should be empty").
pub(crate) fn read_certs(path: &Path) -> Result<Vec<Vec<u8>>, CaError> {
    let text = read(path)?;
    let blocks = pem::parse_many(&text).map_err(|_| CaError::Pem {
        path: path.to_owned(),
        reason: "not valid PEM",
    })?;
    blocks
        .into_iter()
        .map(|block| match block.tag() {
            "CERTIFICATE" => Ok(block.into_contents()),
            _ => Err(CaError::Pem {
                path: path.to_owned(),
                reason: "holds a PEM block that is not a CERTIFICATE",
            }),
        })
        .collect()
}

/// The single certificate of a PEM file.
pub(crate) fn read_one_cert(path: &Path) -> Result<Vec<u8>, CaError> {
    let mut certs = read_certs(path)?;
    match (certs.pop(), certs.is_empty()) {
        (Some(cert), true) => Ok(cert),
        (None, _) => Err(CaError::Pem {
            path: path.to_owned(),
            reason: "holds no certificate",
        }),
        (Some(_), false) => Err(CaError::Pem {
            path: path.to_owned(),
            reason: "holds more than one certificate",
        }),
    }
}

/// The private key of a PEM file: PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`) or PKCS#1
/// (`RSA PRIVATE KEY`). Other blocks (such as openssl's `EC PARAMETERS`) are skipped.
pub(crate) fn read_key(path: &Path) -> Result<KeyPair, CaError> {
    let text = read(path)?;
    warn_if_readable_by_others(path);
    let blocks = pem::parse_many(&text).map_err(|_| CaError::Pem {
        path: path.to_owned(),
        reason: "not valid PEM",
    })?;
    let mut keys = blocks.iter().filter(|b| {
        matches!(
            b.tag(),
            "PRIVATE KEY" | "EC PRIVATE KEY" | "RSA PRIVATE KEY"
        )
    });
    let (Some(key), None) = (keys.next(), keys.next()) else {
        return Err(CaError::Pem {
            path: path.to_owned(),
            reason: "must hold exactly one unencrypted private key",
        });
    };
    KeyPair::try_from(key.contents()).map_err(|source| CaError::Key {
        path: path.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "CA private key is readable by group or others; chmod 600 it");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// Creates `dir` (and parents) if needed; a new directory is private to the owner.
pub(crate) fn create_dir(dir: &Path) -> Result<(), CaError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| CaError::Io {
        path: dir.to_owned(),
        source,
    })
}

/// Writes `contents` to `dir/name` with permission bits `mode`, through a temporary file and a
/// rename so that a crash never leaves a truncated file under the final name. Fails if the
/// final file already exists: key material is never overwritten.
pub(crate) fn write_new(dir: &Path, name: &str, contents: &str, mode: u32) -> Result<(), CaError> {
    let path = dir.join(name);
    let io_err = |path: &PathBuf| {
        let path = path.clone();
        move |source| CaError::Io { path, source }
    };
    if path.exists() {
        return Err(CaError::Io {
            path,
            source: std::io::ErrorKind::AlreadyExists.into(),
        });
    }
    let tmp = dir.join(format!(".{name}.tmp"));
    // A leftover from a crash is ours and incomplete.
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp).map_err(io_err(&tmp))?;
    file.write_all(contents.as_bytes()).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    // Make the rename durable; failure here only weakens crash safety, so it is not fatal.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_table() {
        let cases: &[(&[&str], Option<Layout>)] = &[
            (&[], Some(Layout::Empty)),
            (&[ROOT_CERT, ROOT_KEY], Some(Layout::WardRoot)),
            (
                &[CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT],
                Some(Layout::Cacerts),
            ),
            (
                &[CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT, ROOT_KEY],
                Some(Layout::Cacerts),
            ),
            (&[ROOT_CERT], None),
            (&[ROOT_KEY], None),
            (&[CA_CERT, CA_KEY, ROOT_CERT], None),
            (&[CA_KEY], None),
            (&[CERT_CHAIN, ROOT_CERT, ROOT_KEY], None),
        ];
        for (files, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            for f in *files {
                fs::write(dir.path().join(f), "").unwrap();
            }
            let got = detect(dir.path());
            match want {
                Some(layout) => assert_eq!(got.as_ref().ok(), Some(layout), "{files:?}"),
                None => assert!(
                    matches!(got, Err(CaError::PartialLayout { .. })),
                    "{files:?}: {got:?}"
                ),
            }
        }
        assert_eq!(
            detect(Path::new("/nonexistent/ward/ca")).ok(),
            Some(Layout::Empty)
        );
    }

    #[test]
    fn write_new_never_overwrites_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        write_new(dir.path(), "k.pem", "one", 0o600).unwrap();
        assert!(matches!(
            write_new(dir.path(), "k.pem", "two", 0o600),
            Err(CaError::Io { .. })
        ));
        assert_eq!(fs::read_to_string(dir.path().join("k.pem")).unwrap(), "one");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("k.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!dir.path().join(".k.pem.tmp").exists());
    }

    #[test]
    fn pem_readers_reject_wrong_content() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            fs::write(&p, text).unwrap();
            p
        };
        let empty = write("empty.pem", "");
        assert_eq!(read_certs(&empty).unwrap(), Vec::<Vec<u8>>::new());
        assert!(matches!(read_one_cert(&empty), Err(CaError::Pem { .. })));
        let key_file = write("key.pem", &key.serialize_pem());
        assert!(matches!(read_certs(&key_file), Err(CaError::Pem { .. })));
        assert!(read_key(&key_file).is_ok());
        let two_keys = write(
            "two.pem",
            &format!("{}{}", key.serialize_pem(), key.serialize_pem()),
        );
        assert!(matches!(read_key(&two_keys), Err(CaError::Pem { .. })));
        let bad_key = write(
            "bad.pem",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        assert!(matches!(read_key(&bad_key), Err(CaError::Key { .. })));
        assert!(matches!(
            read_key(&dir.path().join("missing.pem")),
            Err(CaError::Io { .. })
        ));
    }
}
