//! The ward-l7 path's identity provider: an ES256 key generated at start, a token minted with
//! it for the whole run, and a small HTTP endpoint serving the key as a JWKS for the sidecar's
//! `jwksUri`. Loopback only (of the server side); the endpoint answers every request with the
//! same document.

use std::io::{BufRead, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;

use crate::net::{Net, Side};
use crate::process::{Proc, SpawnError};

/// The `iss` of the bench's tokens and the RequestAuthentication's issuer.
pub(crate) const ISSUER: &str = "https://idp.bench.ward.test";
/// The `sub` of the token the load generator sends.
pub(crate) const SUBJECT: &str = "bench-client";
/// The `aud` of the token, required by the RequestAuthentication.
pub(crate) const AUDIENCE: &str = "bench";
/// The JWKS `kid` of the key.
const KID: &str = "bench-es256";
/// How long the minted token stays valid: longer than any run.
const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Why the identity provider could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IdpError {
    /// aws-lc-rs could not generate, load or use the P-256 key.
    #[error("ES256 key: {0}")]
    Key(String),
    /// The system clock is before 1970.
    #[error("system clock before the UNIX epoch")]
    Clock,
    /// The JWKS file or listener failed.
    #[error("JWKS endpoint: {0}")]
    Listen(#[from] std::io::Error),
    /// The JWKS process could not start.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
}

/// A running JWKS endpoint and the token signed by its key. Stops serving on drop.
///
/// The endpoint is its own process (`ward-bench serve-jwks`) on 127.0.0.1 of the server side,
/// like an IdP the sidecar reaches over loopback: Ward refuses a plain-http `jwksUri` to any
/// other host.
pub(crate) struct Idp {
    /// Where the JWKS is served (`http://{addr}/jwks`), on the server side's loopback.
    pub(crate) addr: SocketAddr,
    /// A compact ES256 JWT for [`ISSUER`] / [`SUBJECT`] / [`AUDIENCE`], valid for the run.
    pub(crate) token: String,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Idp {
    /// Generates the key, mints the token, and starts `exe serve-jwks` on the server side of
    /// `net`, pinned to `cpu`.
    pub(crate) fn start(exe: &Path, net: Net, cpu: Option<usize>) -> Result<Idp, IdpError> {
        let minted = mint()?;
        let dir = tempfile::Builder::new()
            .prefix("ward-bench-idp-")
            .tempdir()?;
        let file = dir.path().join("jwks.json");
        std::fs::write(&file, &minted.jwks)?;
        let mut proc = Proc::spawn(
            "ward-bench serve-jwks",
            net.command(Side::Server, cpu, exe)
                .arg("serve-jwks")
                .arg("--file")
                .arg(&file)
                .stdout(Stdio::piped()),
        )?;
        let stdout = proc
            .take_stdout()
            .ok_or_else(|| IdpError::Listen(std::io::Error::other("no stdout")))?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("ready jwks=")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| {
                IdpError::Listen(std::io::Error::other(format!("serve-jwks said {line:?}")))
            })?;
        Ok(Idp {
            addr,
            token: minted.token,
            _proc: proc,
            _dir: dir,
        })
    }
}

/// A token and the JWKS holding the key that signed it.
struct Minted {
    token: String,
    jwks: String,
}

/// Generates an ES256 key and signs the run's token with it.
fn mint() -> Result<Minted, IdpError> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|e| IdpError::Key(e.to_string()))?;
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
        .map_err(|e| IdpError::Key(e.to_string()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| IdpError::Clock)?
        .as_secs();
    let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": KID});
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": SUBJECT, "aud": AUDIENCE,
        "iat": now, "exp": now + TOKEN_LIFETIME.as_secs(),
    });
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = key
        .sign(&rng, input.as_bytes())
        .map_err(|e| IdpError::Key(e.to_string()))?;
    Ok(Minted {
        token: format!("{input}.{}", B64.encode(sig.as_ref())),
        jwks: jwks(key.public_key().as_ref())?,
    })
}

/// `ward-bench serve-jwks`: serves `file` on a free 127.0.0.1 port, announced on stdout as
/// `ready jwks=<addr>`, until killed.
pub(crate) fn serve_jwks(file: &Path) -> std::io::Result<()> {
    let jwks = std::fs::read_to_string(file)?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    println!("ready jwks={}", listener.local_addr()?);
    std::io::stdout().flush()?;
    serve(&listener, &jwks, &AtomicBool::new(false));
    Ok(())
}

/// The JWKS document for an uncompressed P-256 public key (`04 || x || y`).
///
/// RFC 7518 §6.2.1: "x" and "y" are the base64url encodings of the coordinates, each the full
/// size of a coordinate for the curve (32 octets for P-256).
fn jwks(public: &[u8]) -> Result<String, IdpError> {
    let (Some(x), Some(y)) = (public.get(1..33), public.get(33..65)) else {
        return Err(IdpError::Key(
            "public key is not an uncompressed P-256 point".into(),
        ));
    };
    let doc = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": KID,
        "x": B64.encode(x), "y": B64.encode(y),
    }]});
    Ok(doc.to_string())
}

/// Answers each connection with the JWKS and closes it, until `stop` is set.
fn serve(listener: &TcpListener, jwks: &str, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut c) = conn else { continue };
        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
        // The request itself does not matter; read its head so the peer sees an orderly close.
        let mut buf = [0u8; 2048];
        let _ = c.read(&mut buf);
        let _ = write!(
            c,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{jwks}",
            jwks.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_the_key_that_signed_the_token() {
        let idp = mint().unwrap();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let jwks = idp.jwks.clone();
        std::thread::spawn(move || serve(&listener, &jwks, &AtomicBool::new(false)));
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /jwks HTTP/1.1\r\nHost: idp\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let body = text.split_once("\r\n\r\n").unwrap().1;
        let doc: serde_json::Value = serde_json::from_str(body).unwrap();
        let jwk = &doc["keys"][0];
        let coord = |k: &str| B64.decode(jwk[k].as_str().unwrap()).unwrap();
        let mut point = vec![4u8];
        point.extend(coord("x"));
        point.extend(coord("y"));

        let (input, sig) = idp.token.rsplit_once('.').unwrap();
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            &point,
        )
        .verify(input.as_bytes(), &B64.decode(sig).unwrap())
        .unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(input.split_once('.').unwrap().1).unwrap()).unwrap();
        assert_eq!(claims["iss"], ISSUER);
        assert_eq!(claims["aud"], AUDIENCE);
        assert_eq!(jwk["kid"], KID);
    }

    #[test]
    fn a_short_key_is_an_error() {
        for bad in [&[][..], &[4u8; 64][..]] {
            assert!(jwks(bad).is_err());
        }
        assert!(jwks(&[4u8; 65]).is_ok());
    }
}
