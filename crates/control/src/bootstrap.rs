//! Bootstrap tokens and bootstrap files: how a proxy on another host gets its first certificate.
//!
//! A token is a compact JWT (RFC 7519) signed ES256 with a key that lives in the control plane's
//! state directory (`<state-dir>/bootstrap/token-key.pem`, PKCS#8, 0600, created on first use).
//! Its claims: `sub` the workload (`namespace/name`), `aud` the control plane (the SHA-256 of
//! its CA root), `iat`, `exp` and a random `jti`. A token is bound to one workload and may be
//! used until it expires, so a proxy that restarts before then can bootstrap again; the risk of
//! that choice is in docs/security.md ("Bootstrap tokens").
//!
//! A bootstrap file (JSON, 0600) carries what a proxy needs to reach the control plane safely:
//! its address, its expected SPIFFE identity, the CA root, the workload and its identity, and
//! the token. Verification ([`TokenKey::verify`]) is pure: the time is passed in.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair as _, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The signing key's directory under the state directory.
const KEY_DIR: &str = "bootstrap";
/// The signing key's file name.
const KEY_FILE: &str = "token-key.pem";
/// The one header a Ward bootstrap token has.
const HEADER: &str = r#"{"alg":"ES256","typ":"JWT"}"#;

/// Whether `token` has a Ward bootstrap token's header (and so is no Kubernetes token, whose
/// header names a key: `kid`). Says nothing of its validity.
pub fn is_ward_token(token: &str) -> bool {
    token
        .split('.')
        .next()
        .is_some_and(|h| h == URL_SAFE_NO_PAD.encode(HEADER))
}
/// Longest token read at all; a real one is about 400 bytes.
const MAX_TOKEN_LEN: usize = 4096;
/// Clock skew allowed on `iat` between the host that issued a token and the control plane.
const IAT_SKEW: Duration = Duration::from_secs(60);

/// Why a token was refused, or a key or file could not be used. Never carries a token.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// The signing key file does not hold a P-256 PKCS#8 key.
    #[error("{}: not a P-256 PKCS#8 private key (PEM \"PRIVATE KEY\")", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
    },
    /// A bootstrap file is not what `ward bootstrap` writes.
    #[error("{}: {reason}", path.display())]
    File {
        /// The bootstrap file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The system random number generator or the signer failed.
    #[error("cannot sign the token")]
    Signing,
    /// The token is not three base64url parts, or its header or claims are not Ward's.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The signature does not verify with this control plane's key: a token of another control
    /// plane (another state directory), or a tampered one.
    #[error("token signature does not verify: another control plane's token, or altered")]
    Signature,
    /// The token was issued for another control plane.
    #[error("token audience is another control plane's")]
    Audience,
    /// The token has expired.
    #[error("token expired {ago}s ago")]
    Expired {
        /// Seconds since `exp`.
        ago: u64,
    },
    /// The token claims to be issued in the future.
    #[error("token issued in the future (iat {iat})")]
    IssuedInFuture {
        /// The `iat` claim.
        iat: u64,
    },
}

/// The claims of a bootstrap token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenClaims {
    /// The workload, `namespace/name`.
    pub sub: String,
    /// The control plane: [`audience_of_root`] of its CA root.
    pub aud: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
    /// A random id (128 bits, hex), so that two tokens are never the same string.
    pub jti: String,
}

/// The audience a control plane puts in its tokens: `ward-control-plane:` and the lowercase hex
/// SHA-256 of its CA root certificate (DER).
pub fn audience_of_root(root_der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, root_der);
    format!("ward-control-plane:{}", hex(digest.as_ref()))
}

/// The key that signs and verifies bootstrap tokens.
pub struct TokenKey {
    key: EcdsaKeyPair,
}

impl fmt::Debug for TokenKey {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey").finish_non_exhaustive()
    }
}

impl TokenKey {
    /// Loads `<state_dir>/bootstrap/token-key.pem`, or creates it (0600) when absent. Creation
    /// never replaces a key: of two processes creating it at once, one key wins and both use it.
    pub fn load_or_create(state_dir: &Path) -> Result<TokenKey, BootstrapError> {
        let dir = state_dir.join(KEY_DIR);
        let path = dir.join(KEY_FILE);
        if !path.exists() {
            create_key(&dir, &path)?;
        }
        let text = fs::read_to_string(&path).map_err(|source| BootstrapError::Io {
            path: path.clone(),
            source,
        })?;
        let block = pem::parse(&text).map_err(|_| BootstrapError::Key { path: path.clone() })?;
        if block.tag() != "PRIVATE KEY" {
            return Err(BootstrapError::Key { path });
        }
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, block.contents())
            .map_err(|_| BootstrapError::Key { path })?;
        Ok(TokenKey { key })
    }

    /// A token for `workload` (`namespace/name`) and `audience`, valid from `now` for `ttl`.
    pub fn issue(
        &self,
        workload: &str,
        audience: &str,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<String, BootstrapError> {
        let iat = unix_seconds(now);
        let mut id = [0u8; 16];
        aws_lc_rs::rand::fill(&mut id).map_err(|_| BootstrapError::Signing)?;
        let claims = TokenClaims {
            sub: workload.to_owned(),
            aud: audience.to_owned(),
            iat,
            exp: iat.saturating_add(ttl.as_secs().max(1)),
            jti: hex(&id),
        };
        let claims = serde_json::to_vec(&claims).map_err(|_| BootstrapError::Signing)?;
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|_| BootstrapError::Signing)?;
        Ok(format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }

    /// Verifies `token` at `now` for `audience`: the signature first (with this key), then the
    /// header, the claims, the audience and the validity window. Returns the claims.
    pub fn verify(
        &self,
        token: &str,
        audience: &str,
        now: SystemTime,
    ) -> Result<TokenClaims, BootstrapError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(BootstrapError::Malformed("longer than 4096 bytes"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(BootstrapError::Malformed("not three dot-separated parts"));
        };
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| BootstrapError::Malformed("signature is not base64url"))?;
        let signed = token
            .get(..header.len() + 1 + claims.len())
            .ok_or(BootstrapError::Malformed("not three dot-separated parts"))?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref())
            .verify(signed.as_bytes(), &signature)
            .map_err(|_| BootstrapError::Signature)?;
        // Signed by us: what follows only guards against our own format changing.
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| BootstrapError::Malformed("header is not base64url"))?;
        if header != HEADER.as_bytes() {
            return Err(BootstrapError::Malformed("header is not Ward's"));
        }
        let claims = URL_SAFE_NO_PAD
            .decode(claims)
            .map_err(|_| BootstrapError::Malformed("claims are not base64url"))?;
        let claims: TokenClaims = serde_json::from_slice(&claims)
            .map_err(|_| BootstrapError::Malformed("claims are not Ward's"))?;
        if claims.aud != audience {
            return Err(BootstrapError::Audience);
        }
        let now = unix_seconds(now);
        if claims.exp <= now {
            return Err(BootstrapError::Expired {
                ago: now - claims.exp,
            });
        }
        if claims.iat > now.saturating_add(IAT_SKEW.as_secs()) {
            return Err(BootstrapError::IssuedInFuture { iat: claims.iat });
        }
        Ok(claims)
    }
}

/// Writes a new P-256 key to `path` (0600) without ever replacing one: the key goes to a
/// temporary file that is then hard-linked to `path`, which fails if `path` exists.
fn create_key(dir: &Path, path: &Path) -> Result<(), BootstrapError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BootstrapError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| BootstrapError::Signing)?;
    let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
    let mut id = [0u8; 8];
    aws_lc_rs::rand::fill(&mut id).map_err(|_| BootstrapError::Signing)?;
    let tmp = dir.join(format!(".{KEY_FILE}.{}.tmp", hex(&id)));
    write_private(&tmp, pem.as_bytes())?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created the bootstrap token signing key");
            Ok(())
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(BootstrapError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Creates or truncates `path` with mode 0600 (also when it existed with another mode) and
/// writes `contents`.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), BootstrapError> {
    let io = |source| BootstrapError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        options.mode(0o600);
        let mut file = options.open(path).map_err(io)?;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io)?;
        file.write_all(contents).map_err(io)?;
        file.sync_all().map_err(io)
    }
    #[cfg(not(unix))]
    {
        let mut file = options.open(path).map_err(io)?;
        file.write_all(contents).map_err(io)
    }
}

/// What `ward bootstrap` writes and a proxy reads: one JSON object.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootstrapFile {
    /// The control plane's gRPC address, `host:port`.
    pub control_plane: String,
    /// The SPIFFE id the control plane's certificate must carry.
    pub control_plane_identity: String,
    /// The workload, `namespace/name`.
    pub workload: String,
    /// The workload's SPIFFE id, which its CSR asks for.
    pub identity: String,
    /// The CA root certificates, PEM: the only anchors the proxy trusts at first.
    pub root_cert: String,
    /// The bootstrap token.
    pub token: String,
    /// When the token expires, seconds since the Unix epoch (for people; the token decides).
    pub expires: u64,
}

impl fmt::Debug for BootstrapFile {
    /// Never prints the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootstrapFile")
            .field("control_plane", &self.control_plane)
            .field("control_plane_identity", &self.control_plane_identity)
            .field("workload", &self.workload)
            .field("identity", &self.identity)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl BootstrapFile {
    /// Writes the file with mode 0600 (replacing an older one).
    pub fn write(&self, path: &Path) -> Result<(), BootstrapError> {
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| BootstrapError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        json.push(b'\n');
        write_private(path, &json)
    }

    /// Reads a file `ward bootstrap` wrote.
    pub fn read(path: &Path) -> Result<BootstrapFile, BootstrapError> {
        let text = fs::read(path).map_err(|source| BootstrapError::Io {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|e| BootstrapError::File {
            path: path.to_owned(),
            reason: format!("not a Ward bootstrap file: {e}"),
        })
    }

    /// What a proxy on Kubernetes bootstraps with: its ServiceAccount token (read from the
    /// projected token file), the mesh root and where the control plane is. The token's claims
    /// are read, not verified (the control plane has the API server verify it), only to know
    /// which identity to ask for: `spiffe://<trust_domain>/ns/<namespace>/sa/<name>`.
    pub fn from_service_account_token(
        token: &str,
        pod: &str,
        control_plane: &str,
        control_plane_identity: &str,
        trust_domain: &str,
        root_cert: String,
    ) -> Result<BootstrapFile, BootstrapError> {
        let malformed = BootstrapError::Malformed;
        let token = token.trim();
        let payload = token.split('.').nth(1).ok_or(malformed("not a JWT"))?;
        let claims: serde_json::Value = URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(malformed("the claims are not base64url JSON"))?;
        let k8s = &claims["kubernetes.io"];
        let namespace = k8s["namespace"].as_str().ok_or(malformed(
            "no kubernetes.io.namespace: not a ServiceAccount token",
        ))?;
        let service_account = k8s["serviceaccount"]["name"]
            .as_str()
            .ok_or(malformed("no kubernetes.io.serviceaccount.name"))?;
        let identity = ward_identity::SpiffeId::new(trust_domain, namespace, service_account)
            .map_err(|_| {
                malformed("the token's namespace or ServiceAccount is not a valid identity")
            })?;
        Ok(BootstrapFile {
            control_plane: control_plane.to_owned(),
            control_plane_identity: control_plane_identity.to_owned(),
            workload: format!("{namespace}/{pod}"),
            identity: identity.to_string(),
            root_cert,
            token: token.to_owned(),
            expires: claims["exp"].as_u64().unwrap_or(0),
        })
    }

    /// The root certificates, DER.
    pub fn roots_der(&self) -> Result<Vec<Vec<u8>>, String> {
        let blocks = pem::parse_many(&self.root_cert).map_err(|e| format!("rootCert: {e}"))?;
        let roots: Vec<Vec<u8>> = blocks
            .into_iter()
            .filter(|b| b.tag() == "CERTIFICATE")
            .map(|b| b.contents().to_vec())
            .collect();
        if roots.is_empty() {
            return Err("rootCert: holds no certificate".to_owned());
        }
        Ok(roots)
    }
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_account_token_gives_the_workload_and_identity_to_ask_for() {
        let claims = r#"{"aud":["istio-ca"],"exp":1796391840,"kubernetes.io":{"namespace":"app","pod":{"name":"cli","uid":"u"},"serviceaccount":{"name":"cli-sa","uid":"v"}},"sub":"system:serviceaccount:app:cli-sa"}"#;
        let token = format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(claims)
        );
        let b = BootstrapFile::from_service_account_token(
            &format!("{token}\n"),
            "cli",
            "cp:15012",
            "spiffe://td/ns/istio-system/sa/ward-control-plane",
            "td",
            "PEM".into(),
        )
        .unwrap();
        assert_eq!(b.workload, "app/cli");
        assert_eq!(b.identity, "spiffe://td/ns/app/sa/cli-sa");
        assert_eq!(b.token, token);
        assert_eq!(b.expires, 1796391840);
        assert!(!is_ward_token(&token));
        for bad in ["", "abc", "a.%%%.c", "a.e30.c"] {
            assert!(
                BootstrapFile::from_service_account_token(bad, "p", "c", "i", "td", String::new())
                    .is_err(),
                "{bad:?}"
            );
        }
    }

    const AUD: &str = "ward-control-plane:abc";

    fn new_key() -> (tempfile::TempDir, TokenKey) {
        let dir = tempfile::tempdir().unwrap();
        let key = TokenKey::load_or_create(dir.path()).unwrap();
        (dir, key)
    }

    #[test]
    fn key_is_created_once_with_mode_0600_and_reloaded() {
        let (dir, key) = new_key();
        let path = dir.path().join(KEY_DIR).join(KEY_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let before = fs::read(&path).unwrap();
        let again = TokenKey::load_or_create(dir.path()).unwrap();
        assert_eq!(fs::read(&path).unwrap(), before, "the key was replaced");
        let now = SystemTime::now();
        let token = key
            .issue("ns/a", AUD, now, Duration::from_secs(60))
            .unwrap();
        assert_eq!(again.verify(&token, AUD, now).unwrap().sub, "ns/a");
    }

    #[test]
    fn a_token_verifies_until_it_expires() {
        let (_dir, key) = new_key();
        let now = SystemTime::now();
        let token = key
            .issue("ns/a", AUD, now, Duration::from_secs(3600))
            .unwrap();
        let claims = key.verify(&token, AUD, now).unwrap();
        assert_eq!((claims.sub.as_str(), claims.aud.as_str()), ("ns/a", AUD));
        assert_eq!(claims.exp - claims.iat, 3600);
        assert_eq!(claims.jti.len(), 32);
        let other = key
            .issue("ns/a", AUD, now, Duration::from_secs(3600))
            .unwrap();
        assert_ne!(token, other, "two tokens are never the same string");
        // Reusable: verifying does not consume it.
        assert!(key.verify(&token, AUD, now).is_ok());
        let later = now + Duration::from_secs(3601);
        assert!(matches!(
            key.verify(&token, AUD, later),
            Err(BootstrapError::Expired { .. })
        ));
    }

    #[test]
    fn refusals() {
        let (_dir, key) = new_key();
        let (_other_dir, other) = new_key();
        let now = SystemTime::now();
        let ttl = Duration::from_secs(60);
        let token = key.issue("ns/a", AUD, now, ttl).unwrap();
        let flip = |i: usize| {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            String::from_utf8(bytes).unwrap()
        };
        let claims_at = token.find('.').unwrap() + 5;
        type Check = fn(&BootstrapError) -> bool;
        let cases: Vec<(&str, String, Check)> = vec![
            (
                "another control plane's key",
                other.issue("ns/a", AUD, now, ttl).unwrap(),
                |e| matches!(e, BootstrapError::Signature),
            ),
            ("a byte of the claims changed", flip(claims_at), |e| {
                matches!(e, BootstrapError::Signature)
            }),
            (
                "a byte of the signature changed",
                flip(token.len() - 5),
                |e| matches!(e, BootstrapError::Signature | BootstrapError::Malformed(_)),
            ),
            (
                "another audience",
                key.issue("ns/a", "ward-control-plane:other", now, ttl)
                    .unwrap(),
                |e| matches!(e, BootstrapError::Audience),
            ),
            (
                "issued in the future",
                key.issue("ns/a", AUD, now + Duration::from_secs(3600), ttl)
                    .unwrap(),
                |e| matches!(e, BootstrapError::IssuedInFuture { .. }),
            ),
            ("two parts", "a.b".to_owned(), |e| {
                matches!(e, BootstrapError::Malformed(_))
            }),
            ("four parts", format!("{token}.x"), |e| {
                matches!(e, BootstrapError::Malformed(_))
            }),
            ("empty", String::new(), |e| {
                matches!(e, BootstrapError::Malformed(_))
            }),
            ("huge", "a".repeat(10_000), |e| {
                matches!(e, BootstrapError::Malformed(_))
            }),
        ];
        for (name, token, check) in cases {
            match key.verify(&token, AUD, now) {
                Err(e) => {
                    assert!(check(&e), "{name}: wrong error {e}");
                    assert!(!e.to_string().contains(&token) || token.is_empty());
                }
                Ok(c) => panic!("{name}: accepted {c:?}"),
            }
        }
    }

    #[test]
    fn a_bootstrap_file_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        let file = BootstrapFile {
            control_plane: "127.0.0.1:15012".into(),
            control_plane_identity: "spiffe://cluster.local/ns/istio-system/sa/ward-control-plane"
                .into(),
            workload: "ns/a".into(),
            identity: "spiffe://cluster.local/ns/ns/sa/a".into(),
            root_cert: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            token: "secret-token".into(),
            expires: 1,
        };
        fs::write(&path, "old").unwrap();
        file.write(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let back = BootstrapFile::read(&path).unwrap();
        assert!(back == file);
        assert_eq!(back.roots_der().unwrap(), vec![vec![0u8, 0, 0]]);
        assert!(!format!("{back:?}").contains("secret-token"));
        fs::write(&path, "{}").unwrap();
        assert!(matches!(
            BootstrapFile::read(&path),
            Err(BootstrapError::File { .. })
        ));
    }
}
