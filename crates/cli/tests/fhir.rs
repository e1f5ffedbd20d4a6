//! The seeds' FHIR scenario, run exactly as the README shows it: `ward dev-idp`,
//! `ward up -f examples/fhir/`, then `examples/fhir/try.sh`.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ward_test_support::{free_port, have, skip_or_fail, yaml_files, UpOptions, Ward};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn alice_gets_bob_posts_nobody_else() {
    if !have("curl") {
        return skip_or_fail("fhir_example", "curl is needed");
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
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
    let dir = format!("{root}/examples/fhir");
    let files = yaml_files(&dir);
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
    let out = Command::new("bash")
        .arg(format!("{dir}/try.sh"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let codes: Vec<&str> = out
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap_or(""))
        .collect();
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
