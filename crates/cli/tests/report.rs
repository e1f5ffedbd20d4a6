//! End to end: `ward report` on the quickstart example (moved to 127.1.152.x), run by a real
//! `ward up --audit-dir`, after real traffic: web → echo over mTLS, batch → echo denied, then let
//! through for 5 s by a break-glass grant (its open connection closed at the expiry). The report
//! says which HIPAA §164.312 and ISO 27001 controls pass, with the evidence, lists the grant
//! among the security exceptions, and verifies the audit trail; `report.html` renders in
//! headless Chromium with no console message (a Content-Security-Policy forbids any script or
//! external resource, so one would show up there).
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use ward_test_support::{echo_ok, free_port, have, skip_or_fail, yaml_files, UpOptions, Ward};

fn ward(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const WHY: &str = "INC-9: nightly batch export blocked; approved by on-call";

#[test]
fn report_on_the_quickstart_mesh_with_a_break_glass_and_chromium() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/quickstart");
    let app = free_port();
    let files: Vec<(String, String)> = yaml_files(dir)
        .into_iter()
        .map(|(n, b)| {
            let b = b
                .replace("127.0.10.", "127.1.152.")
                .replace("127.0.0.1:19000", &format!("127.0.0.1:{app}"));
            (n, b)
        })
        .collect();
    let audit = tempfile::tempdir().unwrap();
    let w = Ward::up(UpOptions {
        bin: env!("CARGO_BIN_EXE_ward"),
        admin: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        files: files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect(),
        extra_args: vec!["--audit-dir".into(), audit.path().display().to_string()],
        env: vec![],
    })
    .unwrap();
    let admin = w.admin.to_string();
    let web: SocketAddr = "127.1.152.1:9000".parse().unwrap();
    let batch: SocketAddr = "127.1.152.3:9000".parse().unwrap();
    for i in 0..3 {
        assert!(echo_ok(web, &format!("hello {i}")), "{}", w.logs());
    }
    assert!(!echo_ok(batch, "denied"));

    // A 5 s exception for echo: batch gets through, and its open connection is closed at the
    // expiry.
    let (code, out, err) = ward(&[
        "break-glass",
        "--admin",
        &admin,
        "--workload",
        "demo/echo",
        "--ttl",
        "5s",
        "--reason",
        WHY,
        "--by",
        "carol",
    ]);
    assert_eq!(code, 0, "{out}{err}\n{}", w.logs());
    assert!(out.contains("granted: bg-"), "{out}");
    let mut open = TcpStream::connect(batch).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    open.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    open.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    // At the expiry the connection ends (EOF or reset) and new ones are denied again.
    let mut rest = Vec::new();
    match open.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the connection outlived its grant"
        ),
    }
    assert!(rest.is_empty());
    // Its record names the grant that let it in and why it ended.
    let line = w
        .wait_for_log(
            &[("direction", "inbound"), ("ward.break_glass", "bg-")],
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(line["authz.detail"], "break_glass_expired", "{line}");
    assert_eq!(
        line["src.identity"],
        "spiffe://cluster.local/ns/jobs/sa/batch"
    );
    assert!(!echo_ok(batch, "denied again"));
    w.wait_for_log(
        &[("message", "break-glass expired")],
        Duration::from_secs(5),
    )
    .unwrap();

    // The report.
    let out_dir = tempfile::tempdir().unwrap();
    let root = w.dir().parent().unwrap().join("state/ca/root-cert.pem");
    let (code, stdout, err) = ward(&[
        "report",
        "-f",
        w.dir().to_str().unwrap(),
        "--admin",
        &admin,
        "--out",
        out_dir.path().to_str().unwrap(),
        "--audit-dir",
        audit.path().to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
    ]);
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.path().join("report.json"))
            .unwrap_or_else(|e| panic!("{e}: {stdout}{err}")),
    )
    .unwrap();
    let fails = json["summary"]["fail"].as_u64().unwrap();
    assert_eq!(code, if fails == 0 { 0 } else { 1 }, "{stdout}{err}");
    let check = |id: &str| {
        json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("no check {id}"))
            .clone()
    };
    for (id, want) in [
        ("authz-coverage", "pass"),
        ("no-active-exception", "pass"),
        ("audit-trail", "pass"),
        ("strict-mtls", "pass"),
        ("workload-identity", "pass"),
        ("jwt-enforced", "not_applicable"),
        ("mtls-coverage", "pass"),
        ("pq-key-exchange", "pass"),
    ] {
        let c = check(id);
        assert_eq!(c["status"], want, "{id}: {c:#}");
        assert!(c["collectedAt"].as_str().unwrap().ends_with('Z'), "{c:#}");
    }
    assert!(
        check("mtls-coverage")["summary"]
            .as_str()
            .unwrap()
            .contains("0 plaintext flows"),
        "{:#}",
        check("mtls-coverage")
    );
    let controls: Vec<&str> = json["controls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        controls,
        [
            "§164.312(a)(1)",
            "§164.312(b)",
            "§164.312(c)(1)",
            "§164.312(d)",
            "§164.312(e)(1)",
            "A.9",
            "A.12.4",
            "A.13"
        ]
    );
    let grants = json["securityExceptions"]["breakGlass"].as_array().unwrap();
    assert_eq!(grants.len(), 1, "{json:#}");
    assert_eq!(grants[0]["reason"], WHY);
    assert_eq!(grants[0]["status"], "expired");
    assert_eq!(grants[0]["requestedBy"], "carol");
    assert_eq!(json["certificates"].as_array().unwrap().len(), 3);
    assert_eq!(json["trustDomain"], "cluster.local");
    let html = std::fs::read_to_string(out_dir.path().join("report.html")).unwrap();
    assert!(html.contains(WHY) && html.contains("Transmission security"));
    assert!(!html.contains("<script"), "self-contained, no script");

    // Without the admin port there is no evidence: exit 2.
    let closed = format!("127.0.0.1:{}", free_port());
    let (code, _, err) = ward(&[
        "report",
        "-f",
        w.dir().to_str().unwrap(),
        "--admin",
        &closed,
        "--out",
        out_dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot connect"), "{err}");

    // A real browser renders it with no console message.
    if !have("chromium") {
        return skip_or_fail("report_chromium", "chromium is needed");
    }
    let profile = tempfile::tempdir().unwrap();
    let url = format!("file://{}", out_dir.path().join("report.html").display());
    let chromium = |extra: &[&str]| {
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(["--enable-logging=stderr", "--v=0"])
            .args(extra)
            .arg(&url)
            .output()
            .unwrap()
    };
    let dom = chromium(&["--dump-dom"]);
    let (dom_out, dom_err) = (
        String::from_utf8_lossy(&dom.stdout),
        String::from_utf8_lossy(&dom.stderr),
    );
    assert!(dom.status.success(), "{dom_err}");
    let console: Vec<&str> = dom_err.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    assert!(dom_out.contains("Ward compliance evidence"), "{dom_out}");
    assert!(dom_out.contains("§164.312(e)(1)"));
    let shot = out_dir.path().join("report.png");
    let png = chromium(&[
        "--window-size=1280,1800",
        &format!("--screenshot={}", shot.display()),
    ]);
    assert!(
        png.status.success(),
        "{}",
        String::from_utf8_lossy(&png.stderr)
    );
    let bytes = std::fs::read(&shot).unwrap();
    assert!(
        bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
        "{}",
        bytes.len()
    );
    // `WARD_REPORT_SCREENSHOT=docs/report.png` refreshes the screenshot in the docs.
    if let Ok(dest) = std::env::var("WARD_REPORT_SCREENSHOT") {
        std::fs::copy(&shot, dest).unwrap();
    }
}
