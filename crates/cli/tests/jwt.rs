//! End to end: RequestAuthentication against a JWKS the test serves over real HTTP, with tokens
//! the test mints with real keys — the attacks of docs/threats.md, "JWT and JWKS" — through the
//! mesh to nginx.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use common::{docs, mesh_pa, srv_policy, Mesh};
use ward_test_support::{curl, free_port, have, skip_or_fail, Nginx, Ward};

const ISS: &str = "https://idp.example.test/realms/ward";

struct Key {
    pair: EcdsaKeyPair,
    kid: String,
}

impl Key {
    fn new(kid: &str) -> Key {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        Key {
            pair: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
                .unwrap(),
            kid: kid.into(),
        }
    }
    fn jwk(&self) -> serde_json::Value {
        let p = self.pair.public_key().as_ref();
        serde_json::json!({"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": B64.encode(&p[1..33]), "y": B64.encode(&p[33..65])})
    }
    fn sign(&self, header: serde_json::Value, claims: serde_json::Value) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", B64.encode(sig.as_ref()))
    }
    fn token(&self, claims: serde_json::Value) -> String {
        self.sign(
            serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }
}

/// The token with one character in the middle of its signature changed: still well-formed
/// base64url (the last character carries padding bits, so it is left alone), but a wrong
/// signature.
fn forge_signature(t: &str) -> String {
    let sig_start = t.rfind('.').unwrap() + 1;
    let at = sig_start + (t.len() - sig_start) / 2;
    let mut bytes = t.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str) -> serde_json::Value {
    serde_json::json!({"iss": ISS, "sub": sub, "aud": "fhir", "iat": now(), "exp": now() + 300})
}

/// A JWKS endpoint whose document the test can change (key rotation).
fn serve_jwks(port: u16, doc: Arc<Mutex<String>>) {
    let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut buf = [0u8; 2048];
            let _ = c.read(&mut buf);
            let body = doc.lock().unwrap().clone();
            let _ = write!(c, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        }
    });
}

/// nginx echoing what reached the app: the Authorization header and the claim header.
fn start_nginx(port: u16) -> Nginx {
    Nginx::start(
        port,
        "auth=[$http_authorization] sub=[$http_x_jwt_sub] uri=$request_uri",
    )
    .unwrap()
}

fn request_authn(jwks_port: u16, extra: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: jwt\n  namespace: app\nspec:\n  selector:\n    matchLabels:\n      app: srv\n  jwtRules:\n  - issuer: {ISS}\n    jwksUri: http://127.0.0.1:{jwks_port}/jwks\n    audiences: [fhir]\n    outputClaimToHeaders:\n    - header: x-jwt-sub\n      claim: sub\n{extra}"
    )
}

fn require_principal() -> String {
    srv_policy(
        "need-jwt",
        &format!("  rules:\n  - from:\n    - source:\n        requestPrincipals: [\"{ISS}/*\"]\n"),
    )
}

fn apply(ward: &Ward, security: &str) {
    let before = ward.admin_json("/config_dump").unwrap()["status"]["reloads"]
        .as_u64()
        .unwrap();
    ward.write_config("security.yaml", security).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ward.admin_json("/config_dump").unwrap()["status"]["reloads"]
        .as_u64()
        .unwrap()
        <= before
    {
        assert!(
            Instant::now() < deadline,
            "config not applied:\n{}",
            ward.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn jwt_attack_set_through_the_mesh() {
    if !have("nginx") || !have("curl") {
        return skip_or_fail("jwt_attack_set", "nginx and curl are needed");
    }
    let key1 = Key::new("k1");
    let key2 = Key::new("k2");
    let jwks_port = free_port();
    let doc = Arc::new(Mutex::new(
        serde_json::json!({"keys": [key1.jwk()]}).to_string(),
    ));
    serve_jwks(jwks_port, doc.clone());
    let mesh = Mesh::with_own_app(23).http();
    let _nginx = start_nginx(mesh.app_port);
    let ward = mesh.up(
        &docs(&[
            mesh_pa("STRICT"),
            request_authn(jwks_port, ""),
            require_principal(),
        ]),
        &[],
    );
    ward.wait_for_log(&[("message", "JWKS fetched")], Duration::from_secs(10))
        .unwrap();
    let url = format!("http://{}/fhir/Patient", mesh.via_cli());
    let bearer = |t: &str| format!("Authorization: Bearer {t}");

    // A valid token: 200; the app sees the claim header and NOT the token.
    let good = key1.token(claims("alice"));
    let (code, body) = curl(&["-H", &bearer(&good), &url]);
    assert_eq!(code, 200, "{body}\n{}", ward.logs());
    assert!(
        body.contains("auth=[]"),
        "the token must be stripped before the app: {body}"
    );
    assert!(body.contains("sub=[alice]"), "outputClaimToHeaders: {body}");
    // A client cannot forge the claim header.
    let (_, body) = curl(&["-H", &bearer(&good), "-H", "x-jwt-sub: admin", &url]);
    assert!(body.contains("sub=[alice]"), "{body}");

    let hs256_with_public_key = {
        let header = serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": "k1"});
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims("mallory").to_string())
        );
        let k = aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            key1.pair.public_key().as_ref(),
        );
        format!(
            "{input}.{}",
            B64.encode(aws_lc_rs::hmac::sign(&k, input.as_bytes()).as_ref())
        )
    };
    let alg_none = format!(
        "{}.{}.",
        B64.encode(serde_json::json!({"alg": "none", "typ": "JWT", "kid": "k1"}).to_string()),
        B64.encode(claims("mallory").to_string())
    );
    let mut expired = claims("alice");
    expired["exp"] = serde_json::json!(now() - 3600);
    let mut early = claims("alice");
    early["nbf"] = serde_json::json!(now() + 3600);
    let mut wrong_iss = claims("alice");
    wrong_iss["iss"] = serde_json::json!("https://evil.example.test");
    let mut wrong_aud = claims("alice");
    wrong_aud["aud"] = serde_json::json!("billing");
    let cases: Vec<(&str, Vec<String>, u16, &str)> = vec![
        ("no token", vec![], 403, "RBAC: access denied"),
        ("alg none", vec![bearer(&alg_none)], 401, ""),
        (
            "HS256 signed with the public key",
            vec![bearer(&hs256_with_public_key)],
            401,
            "",
        ),
        (
            "expired",
            vec![bearer(&key1.token(expired))],
            401,
            "Jwt is expired",
        ),
        (
            "nbf in the future",
            vec![bearer(&key1.token(early))],
            401,
            "Jwt not yet valid",
        ),
        (
            "wrong issuer",
            vec![bearer(&key1.token(wrong_iss))],
            401,
            "Jwt issuer is not configured",
        ),
        (
            "wrong audience",
            vec![bearer(&key1.token(wrong_aud))],
            403,
            "Audiences in Jwt are not allowed",
        ),
        (
            "forged signature",
            vec![bearer(&forge_signature(&good))],
            401,
            "Jwt verification fails",
        ),
    ];
    for (name, headers, want, body_has) in cases {
        let mut args: Vec<&str> = Vec::new();
        for h in &headers {
            args.extend(["-H", h.as_str()]);
        }
        args.push(&url);
        let (code, body) = curl(&args);
        assert_eq!(code, want, "{name}: {body}");
        assert!(body.contains(body_has), "{name}: {body}");
    }
    // Two tokens (header + access_token query parameter, the default places): both must verify.
    let expired_token = {
        let mut c = claims("alice");
        c["exp"] = serde_json::json!(now() - 3600);
        key1.token(c)
    };
    let (code, _) = curl(&[
        "-H",
        &bearer(&good),
        &format!("{url}?access_token={expired_token}"),
    ]);
    assert_eq!(code, 401, "two tokens, one bad");

    // Key rotation at the IdP: a token signed with a new key is refused only until the sidecar's
    // rate-limited refetch (triggered by the unknown kid) picks the new key up.
    *doc.lock().unwrap() = serde_json::json!({"keys": [key1.jwk(), key2.jwk()]}).to_string();
    let rotated = key2.token(claims("bob"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, _) = curl(&["-H", &bearer(&rotated), &url]);
        if code == 200 {
            break;
        }
        assert_eq!(code, 401);
        assert!(
            Instant::now() < deadline,
            "rotation not picked up:\n{}",
            ward.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Only headers configured: a token in a query parameter is ignored (→ no principal → 403).
    apply(
        &ward,
        &docs(&[
            mesh_pa("STRICT"),
            request_authn(
                jwks_port,
                "    fromHeaders:\n    - name: authorization\n      prefix: \"Bearer \"\n",
            ),
            require_principal(),
        ]),
    );
    assert_eq!(curl(&["-H", &bearer(&good), &url]).0, 200);
    let (code, body) = curl(&[&format!("{url}?access_token={good}")]);
    assert_eq!((code, body.as_str()), (403, "RBAC: access denied"));

    // Tokens never reach the logs.
    assert!(
        !ward.logs().contains(&good[..40]),
        "a token appeared in the logs"
    );
}

/// A JWKS served over HTTPS by a server whose certificate a private CA issued.
fn serve_jwks_tls(port: u16, body: String) -> std::path::PathBuf {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "test IdP CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let std_listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    std_listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(std_listener).unwrap();
            loop {
                let (tcp, _) = l.accept().await.unwrap();
                let acceptor = acceptor.clone();
                let body = body.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut buf = [0u8; 2048];
                    let _ = tls.read(&mut buf).await;
                    let resp = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
    });
    let dir = tempfile::Builder::new()
        .prefix("ward-idp-ca")
        .tempdir()
        .unwrap()
        .keep();
    let pem = dir.join("ca.pem");
    std::fs::write(&pem, ca.pem()).unwrap();
    pem
}

#[test]
fn jwks_over_https_with_a_private_ca() {
    if !have("nginx") || !have("curl") {
        return skip_or_fail("jwks_over_https", "nginx and curl are needed");
    }
    let key = Key::new("tls-key");
    let port = free_port();
    let ca_pem = serve_jwks_tls(port, serde_json::json!({"keys": [key.jwk()]}).to_string());
    let security = |block_port: u16| {
        let ra = request_authn(block_port, "").replace("http://127.0.0.1", "https://127.0.0.1");
        docs(&[mesh_pa("STRICT"), ra, require_principal()])
    };
    // Trusting the private CA: the keys are fetched over TLS and tokens verify.
    let mesh = Mesh::with_own_app(25).http();
    let _nginx = start_nginx(mesh.app_port);
    let ward = mesh.up_env(
        &security(port),
        &[],
        &[("SSL_CERT_FILE", ca_pem.to_str().unwrap())],
    );
    ward.wait_for_log(&[("message", "JWKS fetched")], Duration::from_secs(10))
        .unwrap();
    let url = format!("http://{}/x", mesh.via_cli());
    let token = key.token(claims("alice"));
    assert_eq!(
        curl(&["-H", &format!("Authorization: Bearer {token}"), &url]).0,
        200
    );
    drop(ward);
    // Without trusting it: the fetch fails on the certificate, and tokens are refused (fail closed).
    let ward = mesh.up(&security(port), &[]);
    ward.wait_for_log(&[("message", "JWKS fetch failed")], Duration::from_secs(10))
        .unwrap();
    let (code, body) = curl(&["-H", &format!("Authorization: Bearer {token}"), &url]);
    assert_eq!(code, 401, "{body}");
}

/// A request with this token (`None`: no token) must get this status.
type Row = (Option<String>, u16);

#[test]
fn request_auth_keys_allow_and_deny() {
    if !have("nginx") || !have("curl") {
        return skip_or_fail("request_auth_keys", "nginx and curl are needed");
    }
    let key = Key::new("k1");
    let jwks_port = free_port();
    serve_jwks(
        jwks_port,
        Arc::new(Mutex::new(
            serde_json::json!({"keys": [key.jwk()]}).to_string(),
        )),
    );
    let mesh = Mesh::with_own_app(26).http();
    let _nginx = start_nginx(mesh.app_port);
    let ra = request_authn(jwks_port, "");
    let ward = mesh.up(&docs(&[mesh_pa("STRICT"), ra.clone()]), &[]);
    ward.wait_for_log(&[("message", "JWKS fetched")], Duration::from_secs(10))
        .unwrap();
    let url = format!("http://{}/x", mesh.via_cli());
    let token = |sub: &str, extra: serde_json::Value| {
        let mut c = claims(sub);
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        key.token(c)
    };
    let when = |action: &str, key_name: &str, field: &str, value: &str| {
        srv_policy("p", &format!("  action: {action}\n  rules:\n  - when:\n    - key: {key_name}\n      {field}: [\"{value}\"]\n"))
    };
    // (policy, token (None = no token), expected status)
    let groups: Vec<(String, Vec<Row>)> = vec![
        (
            when("ALLOW", "request.auth.principal", "values", &format!("{ISS}/alice")),
            vec![(Some(token("alice", serde_json::json!({}))), 200), (Some(token("bob", serde_json::json!({}))), 403), (None, 403)],
        ),
        (
            when("DENY", "request.auth.audiences", "values", "billing"),
            vec![(Some(token("a", serde_json::json!({"aud": ["fhir", "billing"]}))), 403), (Some(token("a", serde_json::json!({}))), 200)],
        ),
        (
            when("ALLOW", "request.auth.presenter", "values", "good-client"),
            vec![(Some(token("a", serde_json::json!({"azp": "good-client"}))), 200), (Some(token("a", serde_json::json!({"azp": "other"}))), 403)],
        ),
        (
            when("ALLOW", "request.auth.claims[realm_access][roles]", "values", "Medic"),
            vec![
                (Some(token("a", serde_json::json!({"realm_access": {"roles": ["Patient", "Medic"]}}))), 200),
                (Some(token("a", serde_json::json!({"realm_access": {"roles": ["Patient"]}}))), 403),
            ],
        ),
        (
            when("ALLOW", "request.auth.claims[scope]", "values", "write"),
            vec![(Some(token("a", serde_json::json!({"scope": "read write"}))), 200), (Some(token("a", serde_json::json!({"scope": "read"}))), 403)],
        ),
        (
            when("DENY", "request.auth.claims[group]", "notValues", "staff"),
            vec![(Some(token("a", serde_json::json!({"group": "staff"}))), 200), (Some(token("a", serde_json::json!({"group": "guest"}))), 403)],
        ),
        (
            srv_policy("p", "  action: DENY\n  rules:\n  - from:\n    - source:\n        notRequestPrincipals: [\"*\"]\n"),
            vec![(None, 403), (Some(token("a", serde_json::json!({}))), 200)],
        ),
        (
            srv_policy("p", &format!("  rules:\n  - from:\n    - source:\n        requestPrincipals: [\"{ISS}/bob\"]\n")),
            vec![(Some(token("bob", serde_json::json!({}))), 200), (Some(token("alice", serde_json::json!({}))), 403)],
        ),
    ];
    let mut failures = Vec::new();
    for (policy, rows) in &groups {
        apply(
            &ward,
            &docs(&[mesh_pa("STRICT"), ra.clone(), policy.clone()]),
        );
        for (i, (tok, want)) in rows.iter().enumerate() {
            let auth = tok.as_ref().map(|t| format!("Authorization: Bearer {t}"));
            let mut args: Vec<&str> = Vec::new();
            if let Some(a) = &auth {
                args.extend(["-H", a.as_str()]);
            }
            args.push(&url);
            let (code, body) = curl(&args);
            if code != *want {
                failures.push(format!(
                    "policy:\n{policy}\nrow {i}: got {code} ({body}), want {want}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Every spelling of a configured token location is read, so no token Ward did not verify
/// reaches the app there: the auth scheme in any case (RFC 9110 §11.1), a percent-encoded
/// parameter name, a second copy of the parameter. And a token with `crit` is refused
/// (RFC 7515 §4.1.11). No AuthorizationPolicy: a request without a token would pass, so an
/// unread forged token would reach the app.
#[test]
fn tokens_are_read_in_every_spelling() {
    if !have("nginx") || !have("curl") {
        return skip_or_fail("tokens_in_every_spelling", "nginx and curl are needed");
    }
    let key = Key::new("k1");
    let jwks_port = free_port();
    serve_jwks(
        jwks_port,
        Arc::new(Mutex::new(
            serde_json::json!({"keys": [key.jwk()]}).to_string(),
        )),
    );
    let mesh = Mesh::with_own_app(61).http();
    let nginx = start_nginx(mesh.app_port);
    let ward = mesh.up(
        &docs(&[mesh_pa("STRICT"), request_authn(jwks_port, "")]),
        &[],
    );
    ward.wait_for_log(&[("message", "JWKS fetched")], Duration::from_secs(10))
        .unwrap();
    let url = format!("http://{}/x", mesh.via_cli());
    let good = key.token(claims("alice"));
    let forged = forge_signature(&key.token(claims("admin")));
    let forged_sig = &forged[forged.rfind('.').unwrap() + 1..];

    // (name, curl arguments, status, what the body must contain)
    let cases: Vec<(&str, Vec<String>, u16, &str)> = vec![
        (
            "lower-case scheme",
            vec![
                "-H".into(),
                format!("Authorization: bearer {good}"),
                url.clone(),
            ],
            200,
            "auth=[] sub=[alice]",
        ),
        (
            "upper-case scheme",
            vec![
                "-H".into(),
                format!("Authorization: BEARER {good}"),
                url.clone(),
            ],
            200,
            "auth=[] sub=[alice]",
        ),
        (
            "forged, lower-case scheme",
            vec![
                "-H".into(),
                format!("Authorization: bearer {forged}"),
                url.clone(),
            ],
            401,
            "Jwt verification fails",
        ),
        (
            "forged, two spaces",
            vec![
                "-H".into(),
                format!("Authorization: Bearer  {forged}"),
                url.clone(),
            ],
            401,
            "Jwt verification fails",
        ),
        (
            "encoded parameter name",
            vec![format!("{url}?a=1&access%5Ftoken={good}")],
            200,
            "sub=[alice] uri=/x?a=1\n",
        ),
        (
            "forged, encoded parameter name",
            vec![format!("{url}?access%5Ftoken={forged}")],
            401,
            "Jwt verification fails",
        ),
        (
            "forged second copy",
            vec![format!("{url}?access_token={good}&access%5ftoken={forged}")],
            401,
            "Jwt verification fails",
        ),
    ];
    let mut failures = Vec::new();
    for (name, args, want, body_has) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, body) = curl(&args);
        if code != *want || !body.contains(body_has) {
            failures.push(format!(
                "{name}: got {code} {body:?}, want {want} with {body_has:?}"
            ));
        }
    }
    // A token with `crit`, correctly signed with the IdP's key: refused whatever it names.
    for crit in [
        serde_json::json!({"alg": "ES256", "kid": "k1", "crit": ["exp"], "exp": now() + 300}),
        serde_json::json!({"alg": "ES256", "kid": "k1", "crit": ["b64"], "b64": false}),
    ] {
        let token = key.sign(crit.clone(), claims("alice"));
        let (code, body) = curl(&["-H", &format!("Authorization: Bearer {token}"), &url]);
        if code != 401 || !body.contains("Jwt header [crit] field is not supported") {
            failures.push(format!("crit {crit}: got {code} {body:?}, want 401"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        !nginx.access_log().contains(forged_sig),
        "a forged token reached the app:\n{}",
        nginx.access_log()
    );
}

/// A `jwksUri` at Ward's actual admin address (a non-default `--admin` port, which only the
/// running process knows) is refused by the fetcher, by address and as `localhost`, and logged;
/// tokens of that issuer are then refused (no keys, fail closed).
#[test]
fn jwks_uri_at_the_admin_address_is_refused() {
    if !have("curl") {
        return skip_or_fail("jwks_uri_at_admin", "curl is needed");
    }
    let mesh = Mesh::new(62).http();
    let ward = mesh.up(&mesh_pa("STRICT"), &[]);
    assert_ne!(
        ward.admin.port(),
        15000,
        "the test needs a non-default admin port"
    );
    let rule = |issuer: &str, host: &str| {
        format!(
            "  - issuer: {issuer}\n    jwksUri: http://{host}:{}/config_dump\n",
            ward.admin.port()
        )
    };
    let ra = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: jwt\n  namespace: app\nspec:\n  selector:\n    matchLabels:\n      app: srv\n  jwtRules:\n{}{}",
        rule("https://by-address", "127.0.0.1"),
        rule("https://by-name", "localhost"),
    );
    apply(&ward, &docs(&[mesh_pa("STRICT"), ra]));
    for issuer in ["https://by-address", "https://by-name"] {
        let line = ward
            .wait_for_log(
                &[("message", "JWKS fetch failed"), ("issuer", issuer)],
                Duration::from_secs(10),
            )
            .unwrap();
        let line = line.to_string();
        assert!(
            line.contains("jwksUri refused") && line.contains("the admin API"),
            "{issuer}: {line}"
        );
    }
    let key = Key::new("k1");
    let mut c = claims("alice");
    c["iss"] = serde_json::json!("https://by-address");
    let token = key.token(c);
    let url = format!("http://{}/x", mesh.via_cli());
    let (code, body) = curl(&["-H", &format!("Authorization: Bearer {token}"), &url]);
    assert_eq!(
        (code, body.as_str()),
        (401, "Jwks remote fetch is failed"),
        "{}",
        ward.logs()
    );
}

/// A `jwksUri` at a workload's HBONE port or egress listener is a config error naming file,
/// object and field, in `ward analyze` and when `ward up` loads the config.
#[test]
fn jwks_uri_at_a_ward_listener_is_a_config_error() {
    let mesh = Mesh::new(63).http();
    let ra = |uri: &str| {
        format!(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: jwt\n  namespace: app\nspec:\n  jwtRules:\n  - issuer: https://idp.example.test\n    jwksUri: {uri}\n"
        )
    };
    let cases = [
        (
            format!("http://{}:15008/jwks", mesh.ip(10)),
            "the HBONE listener of workload app/srv",
        ),
        (
            format!("http://{}/jwks", mesh.via_cli()),
            "the egress listener of workload app/cli",
        ),
    ];
    for (uri, what) in &cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("workloads.yaml"), mesh.workloads()).unwrap();
        std::fs::write(dir.path().join("jwt.yaml"), ra(uri)).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ward"))
            .args(["analyze", "-f"])
            .arg(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{uri}: {text}");
        let line = text
            .lines()
            .find(|l| l.contains("WARD0109"))
            .unwrap_or_else(|| panic!("{uri}: no WARD0109 in {text}"));
        for part in [
            "jwt.yaml:9",
            "RequestAuthentication app/jwt",
            "spec.jwtRules[0].jwksUri",
            what,
        ] {
            assert!(line.contains(part), "{uri}: {part:?} not in {line}");
        }
    }
    // `ward up` refuses to start on it.
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let err = Ward::up(ward_test_support::UpOptions {
        bin: env!("CARGO_BIN_EXE_ward"),
        admin,
        files: vec![
            ("workloads.yaml", mesh.workloads()),
            ("jwt.yaml", ra(&cases[0].0)),
        ],
        extra_args: vec![],
        env: vec![],
    })
    .err()
    .expect("ward up must refuse a jwksUri at its own HBONE listener");
    let err = format!("{err:#}");
    assert!(
        err.contains("WARD0109") && err.contains("spec.jwtRules[0].jwksUri"),
        "{err}"
    );
}
