//! `ward dev-idp`: a DEVELOPMENT-ONLY OpenID Connect token issuer, so that the JWT examples work
//! offline the way the seeds' Keycloak steps do. NOT FOR PRODUCTION: users and passwords come
//! from the command line, the signing key lives in memory and changes at every start, and there
//! is no consent, no refresh token and no rate limit.
//!
//! It speaks the Keycloak URL shapes users already have in their scripts:
//! - `GET  /realms/<realm>/.well-known/openid-configuration`
//! - `GET  /realms/<realm>/protocol/openid-connect/certs` (JWKS, one ES256 key)
//! - `POST /realms/<realm>/protocol/openid-connect/token` (`grant_type=password`)
//!
//! Tokens carry Keycloak's claims: `iss`, `sub`, `aud`, `azp`, `exp`, `iat`, `nbf`,
//! `preferred_username`, `realm_access.roles`, `scope`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// Options of `ward dev-idp`.
#[derive(clap::Args)]
pub(crate) struct DevIdpArgs {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:8180")]
    listen: SocketAddr,
    /// Realm name (the issuer is `http://<listen>/realms/<realm>`).
    #[arg(long, default_value = "ward-dev")]
    realm: String,
    /// A user as `name:password:role[,role...]`; repeatable.
    #[arg(long = "user", default_values = ["alice:alice1234!:Patient", "bob:bob1234!:Medic"])]
    users: Vec<String>,
    /// Token lifetime in seconds.
    #[arg(long, default_value_t = 300)]
    token_ttl: u64,
    /// The `aud` claim of issued tokens.
    #[arg(long, default_value = "fhir")]
    audience: String,
}

struct User {
    password: String,
    roles: Vec<String>,
}

/// The issuer's state: a signing key and its users.
pub(crate) struct Issuer {
    issuer: String,
    audience: String,
    ttl: u64,
    key: EcdsaKeyPair,
    kid: String,
    users: BTreeMap<String, User>,
}

fn parse_user(spec: &str) -> anyhow::Result<(String, User)> {
    let mut parts = spec.splitn(3, ':');
    let (Some(name), Some(password), Some(roles)) = (parts.next(), parts.next(), parts.next())
    else {
        bail!("--user {spec:?}: expected name:password:role[,role...]");
    };
    if name.is_empty() || password.is_empty() {
        bail!("--user {spec:?}: name and password must not be empty");
    }
    let roles = roles
        .split(',')
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect();
    Ok((
        name.to_owned(),
        User {
            password: password.to_owned(),
            roles,
        },
    ))
}

impl Issuer {
    fn new(issuer: String, audience: String, ttl: u64, users: &[String]) -> anyhow::Result<Issuer> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("key generation failed"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .map_err(|_| anyhow::anyhow!("key load failed"))?;
        let kid = format!("dev-{:08x}", fastrand_u32());
        let users = users
            .iter()
            .map(|u| parse_user(u))
            .collect::<anyhow::Result<_>>()?;
        Ok(Issuer {
            issuer,
            audience,
            ttl,
            key,
            kid,
            users,
        })
    }

    /// The JWKS document: the one public key, as an EC JWK.
    fn jwks(&self) -> serde_json::Value {
        let point = self.key.public_key().as_ref();
        // Uncompressed SEC1 point: 0x04 || X (32 bytes) || Y (32 bytes).
        let (x, y) = point
            .get(1..33)
            .zip(point.get(33..65))
            .unwrap_or((&[], &[]));
        serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": B64.encode(x), "y": B64.encode(y),
        }]})
    }

    /// Sign a token for `username` if the password is right.
    fn token(&self, username: &str, password: &str, client_id: &str) -> Option<String> {
        let user = self.users.get(username)?;
        // Constant-time comparison is not needed for a dev issuer, but costs nothing.
        if user.password.len() != password.len()
            || !user
                .password
                .bytes()
                .zip(password.bytes())
                .fold(true, |ok, (a, b)| ok & (a == b))
        {
            return None;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let claims = serde_json::json!({
            "iss": self.issuer, "sub": username, "aud": self.audience, "azp": client_id,
            "iat": now, "nbf": now, "exp": now + self.ttl,
            "preferred_username": username, "realm_access": {"roles": user.roles}, "scope": "openid profile",
        });
        let signing_input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .ok()?;
        Some(format!("{signing_input}.{}", B64.encode(sig.as_ref())))
    }
}

fn fastrand_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut b);
    u32::from_le_bytes(b)
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

/// Decode one `application/x-www-form-urlencoded` component: `+` is a space, `%XX` a byte.
fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        match (bytes[i], hex) {
            (b'%', Some(h)) => {
                // Two ASCII hex digits always parse.
                out.push(
                    u8::from_str_radix(std::str::from_utf8(h).unwrap_or("0"), 16).unwrap_or(0),
                );
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decode an `application/x-www-form-urlencoded` body.
fn form(body: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (form_decode(k), form_decode(v)))
        .collect()
}

async fn route(issuer: &Issuer, realm_path: &str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let Some(rest) = path.strip_prefix(realm_path) else {
        return json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "not found"}),
        );
    };
    match (req.method(), rest) {
        (&Method::GET, "/.well-known/openid-configuration") => json(
            StatusCode::OK,
            &serde_json::json!({
                "issuer": issuer.issuer,
                "jwks_uri": format!("{}/protocol/openid-connect/certs", issuer.issuer),
                "token_endpoint": format!("{}/protocol/openid-connect/token", issuer.issuer),
                "grant_types_supported": ["password"],
                "id_token_signing_alg_values_supported": ["ES256"],
            }),
        ),
        (&Method::GET, "/protocol/openid-connect/certs") => json(StatusCode::OK, &issuer.jwks()),
        (&Method::POST, "/protocol/openid-connect/token") => {
            let Ok(body) = Limited::new(req.into_body(), 16 * 1024).collect().await else {
                return json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": "invalid_request"}),
                );
            };
            let f = form(&body.to_bytes());
            if f.get("grant_type").map(String::as_str) != Some("password") {
                return json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": "unsupported_grant_type"}),
                );
            }
            let (user, pass) = (
                f.get("username").cloned().unwrap_or_default(),
                f.get("password").cloned().unwrap_or_default(),
            );
            let client = f
                .get("client_id")
                .cloned()
                .unwrap_or_else(|| "ward-dev".to_owned());
            match issuer.token(&user, &pass, &client) {
                Some(t) => {
                    tracing::info!(user = %user, "dev-idp issued a token");
                    json(
                        StatusCode::OK,
                        &serde_json::json!({"access_token": t, "token_type": "Bearer", "expires_in": issuer.ttl}),
                    )
                }
                None => {
                    tracing::info!(user = %user, "dev-idp refused a login");
                    json(
                        StatusCode::UNAUTHORIZED,
                        &serde_json::json!({"error": "invalid_grant", "error_description": "Invalid user credentials"}),
                    )
                }
            }
        }
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "not found"}),
        ),
    }
}

/// Run the issuer until the process ends.
pub(crate) async fn run(args: DevIdpArgs) -> anyhow::Result<()> {
    let issuer_url = format!("http://{}/realms/{}", args.listen, args.realm);
    let issuer = Arc::new(Issuer::new(
        issuer_url.clone(),
        args.audience,
        args.token_ttl,
        &args.users,
    )?);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("dev-idp: cannot listen on {}", args.listen))?;
    tracing::warn!(issuer = %issuer_url, "ward dev-idp: DEVELOPMENT-ONLY token issuer; never use it in production");
    println!("ward dev-idp (DEVELOPMENT ONLY): issuer {issuer_url}");
    println!("  JWKS  {issuer_url}/protocol/openid-connect/certs");
    println!("  token {issuer_url}/protocol/openid-connect/token (grant_type=password)");
    let realm_path = format!("/realms/{}", args.realm);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let issuer = issuer.clone();
        let realm_path = realm_path.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let issuer = issuer.clone();
                let realm_path = realm_path.clone();
                async move { Ok::<_, Infallible>(route(&issuer, &realm_path, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_decode_like_curl_sends_them() {
        let f = form(
            b"grant_type=password&username=alice&password=alice1234%21&client_id=my+app&bad=%zz%4",
        );
        assert_eq!(f["password"], "alice1234!");
        assert_eq!(f["client_id"], "my app");
        assert_eq!(f["bad"], "%zz%4");
    }

    #[test]
    fn tokens_are_es256_jws_with_keycloak_claims() {
        let users = vec!["alice:pw:Patient,Reader".to_owned()];
        let iss = Issuer::new(
            "http://127.0.0.1:1/realms/r".into(),
            "fhir".into(),
            60,
            &users,
        )
        .unwrap();
        assert!(iss.token("alice", "wrong", "c").is_none());
        assert!(iss.token("mallory", "pw", "c").is_none());
        let t = iss.token("alice", "pw", "c").unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            claims["realm_access"]["roles"],
            serde_json::json!(["Patient", "Reader"])
        );
        assert_eq!(claims["iss"], "http://127.0.0.1:1/realms/r");
        // The signature verifies with the public key the JWKS publishes.
        let jwks = iss.jwks();
        let k = &jwks["keys"][0];
        let mut point = vec![4u8];
        point.extend(B64.decode(k["x"].as_str().unwrap()).unwrap());
        point.extend(B64.decode(k["y"].as_str().unwrap()).unwrap());
        let pk = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            point,
        );
        let input = format!("{}.{}", parts[0], parts[1]);
        pk.verify(input.as_bytes(), &B64.decode(parts[2]).unwrap())
            .unwrap();
    }
}
