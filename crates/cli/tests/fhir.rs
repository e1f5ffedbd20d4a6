//! The seeds' FHIR scenario, run exactly as the README shows it: `ward dev-idp`,
//! `ward up -f examples/fhir/`, then `examples/fhir/try.sh`; and the same API reached from
//! outside through the ingress gateway, `ward up -f examples/ingress/` and its `try.sh`.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ward_test_support::{free_port, have, skip_or_fail, yaml_files, UpOptions, Ward};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Both examples name `ward dev-idp` on its fixed address (127.0.0.1:8180): one at a time.
static DEV_IDP: Mutex<()> = Mutex::new(());

/// `ward dev-idp`, once it answers.
fn dev_idp() -> Kill {
    let idp = Kill(
        Command::new(env!("CARGO_BIN_EXE_ward"))
            .arg("dev-idp")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect("127.0.0.1:8180").is_err() {
        assert!(Instant::now() < deadline, "dev-idp did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    idp
}

/// `ward up -f examples/<name>/`, once its sidecars hold the issuer's keys.
fn up_example(dir: &str) -> Ward {
    let files = yaml_files(dir);
    let ward = Ward::up(UpOptions {
        bin: env!("CARGO_BIN_EXE_ward"),
        admin: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        files: files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect(),
        extra_args: vec![],
        env: vec![],
    })
    .unwrap();
    // The sidecar fetches the issuer's keys in the background; wait for them.
    ward.wait_for_log(&[("message", "JWKS fetched")], Duration::from_secs(15))
        .unwrap();
    ward
}

/// Runs `try.sh` of `dir`: what it printed, and the last word of each line.
fn try_sh(dir: &str) -> (String, Vec<String>) {
    let out = Command::new("bash")
        .arg(format!("{dir}/try.sh"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let codes = out
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap_or("").to_owned())
        .collect();
    (out, codes)
}

#[test]
fn alice_gets_bob_posts_nobody_else() {
    if !have("curl") {
        return skip_or_fail("fhir_example", "curl is needed");
    }
    let _one = DEV_IDP.lock().unwrap_or_else(|e| e.into_inner());
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let idp = dev_idp();
    let dir = format!("{root}/examples/fhir");
    let ward = up_example(&dir);
    let (out, codes) = try_sh(&dir);
    assert_eq!(
        codes,
        ["200", "403", "201", "403", "401"],
        "try.sh printed:\n{out}\nward log:\n{}",
        ward.logs()
    );

    // The decisions name who and why; the token itself is never logged.
    let denied = ward
        .wait_for_log(
            &[("method", "POST"), ("response_code", "403")],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(
        denied["request.auth.principal"],
        "http://127.0.0.1:8180/realms/ward-dev/alice"
    );
    let allowed = ward
        .wait_for_log(
            &[("method", "POST"), ("response_code", "201")],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(allowed["authz.policy"], "datamesh/medic-post");
    let forged = ward
        .wait_for_log(&[("response_code", "401")], Duration::from_secs(5))
        .unwrap();
    assert!(
        forged["response_code_details"]
            .as_str()
            .unwrap()
            .starts_with("jwt_authn_access_denied{Jwt_verification_fails"),
        "{forged}"
    );
    assert!(
        !ward.logs().contains("eyJ"),
        "a token (base64 JSON) appeared in the logs"
    );
    // The JWKS cache age is exported per issuer.
    let (_, metrics) = ward_test_support::http_get(ward.admin, "/metrics").unwrap();
    let age = metrics
        .lines()
        .find(|l| {
            l.starts_with("ward_jwks_age_seconds{")
                && l.contains("issuer=\"http://127.0.0.1:8180/realms/ward-dev\"")
        })
        .unwrap_or_else(|| panic!("no JWKS age metric:\n{metrics}"));
    let value: i64 = age.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value >= 0, "the cache was filled: {age}");
    drop(idp);
}

/// The README's ingress example (docs/ingress.md): the FHIR API from outside the mesh, through
/// the gateway's TLS for `fhir.example.local`, the end user's JWT checked at the edge, and the
/// FHIR server admitting only the gateway's identity with the seed's roles.
#[test]
fn the_fhir_api_through_the_ingress_gateway() {
    if !have("curl") || !have("openssl") {
        return skip_or_fail("ingress_example", "curl and openssl are needed");
    }
    let _one = DEV_IDP.lock().unwrap_or_else(|e| e.into_inner());
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let idp = dev_idp();
    let dir = format!("{root}/examples/ingress");
    let ward = up_example(&dir);
    let (out, codes) = try_sh(&dir);
    let logs = || ward.logs();
    assert!(
        out.lines()
            .next()
            .unwrap_or("")
            .contains("fhir.example.local"),
        "the gateway served another certificate:\n{out}"
    );
    assert_eq!(
        codes[1..],
        ["301", "200", "403", "201", "403", "401", "404"],
        "try.sh printed:\n{out}\nward log:\n{}",
        logs()
    );
    // Inside the mesh the caller is the gateway: the FHIR sidecar's record of Bob's POST names
    // the gateway's SPIFFE id as its peer, and Bob as the request principal.
    let bob = ward
        .wait_for_log(
            &[
                ("direction", "inbound"),
                ("method", "POST"),
                ("response_code", "201"),
            ],
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    assert_eq!(
        bob["src.identity"], "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway",
        "{bob}"
    );
    assert_eq!(
        bob["request.auth.principal"], "http://127.0.0.1:8180/realms/ward-dev/bob",
        "{bob}"
    );
    assert!(!logs().contains("eyJ"), "a token appeared in the logs");
    drop(idp);
}
