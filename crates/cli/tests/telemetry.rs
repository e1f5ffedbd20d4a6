//! End to end: the Telemetry kind's `accessLogging`, with `ward up`, mTLS and the demo echo
//! app: a mesh-wide filter `response.code >= 400` keeps only failed requests in the access log
//! (and no TCP record, which has no response code), and a namespace's Telemetry turns its
//! workloads' access log off, while the other side of the same requests is still logged. Then a
//! hot reload without the Telemetries logs everything again. Addresses: 127.1.191.x (the
//! common three-workload mesh: `cli` .1 and `srv` .10 in `app`, `oth` .2 in `other`); srv's
//! app is a small HTTP server of the test.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::Duration;

use common::{docs, mesh_pa, srv_policy, Mesh};
use ward_test_support::http_get;

const BLOCK: u8 = 191;

/// An HTTP/1.1 app on `port` answering every request `200 ok` and closing.
fn start_app(port: u16) {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(mut out) = conn.try_clone() else {
                    return;
                };
                let mut reader = BufReader::new(conn);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                let _ = out.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            });
        }
    });
}

fn telemetry(namespace: &str, spec: &str) -> String {
    format!(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata:\n  name: logs\n  namespace: {namespace}\nspec:\n{spec}"
    )
}

fn security() -> String {
    docs(&[
        mesh_pa("STRICT"),
        srv_policy(
            "no-denied",
            "  action: DENY\n  rules: [{to: [{operation: {paths: [/denied]}}]}]\n",
        ),
    ])
}

#[test]
fn access_logging_filter_and_disabled_apply_per_namespace() {
    let mesh = Mesh::with_own_app(BLOCK).http();
    start_app(mesh.app_port);
    let with_telemetry = docs(&[
        security(),
        telemetry(
            "istio-system",
            "  accessLogging:\n  - filter: {expression: 'response.code >= 400'}\n",
        ),
        telemetry("other", "  accessLogging:\n  - disabled: true\n"),
    ]);
    let ward = mesh.up(&with_telemetry, &[]);
    assert!(
        !ward.logs().contains("WARD0102"),
        "accessLogging is enforced: no not-enforced warning"
    );

    assert_eq!(http_get(mesh.via_cli(), "/ok-from-cli").unwrap().0, 200);
    assert_eq!(http_get(mesh.via_cli(), "/denied").unwrap().0, 403);
    assert_eq!(http_get(mesh.via_oth(), "/ok-from-oth").unwrap().0, 200);
    assert_eq!(http_get(mesh.via_oth(), "/denied?from=oth").unwrap().0, 403);
    // srv logs the denials (403 >= 400), for both callers.
    let denied = ward
        .wait_for_log(
            &[("message", "request complete"), ("path", "/denied")],
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(denied["response_code"], 403);
    std::thread::sleep(Duration::from_millis(500));
    let logs = ward.logs();
    let requests = ward.log_lines_matching(&[("message", "request complete")]);
    assert_eq!(requests.len(), 2, "the two denials only: {requests:#?}");
    assert!(
        !logs.contains("/ok-from-cli") && !logs.contains("/ok-from-oth"),
        "a 200 is filtered out"
    );
    // TCP records have no response code: the filter does not match them. oth's namespace has
    // its access log off entirely.
    let conns = ward.log_lines_matching(&[("target", "access"), ("message", "connection ")]);
    assert!(conns.is_empty(), "{conns:#?}");

    // Without the Telemetries, the same requests are logged again (hot reload).
    ward.write_config("security.yaml", &security()).unwrap();
    let start = std::time::Instant::now();
    loop {
        assert_eq!(http_get(mesh.via_oth(), "/ok-again").unwrap().0, 200);
        let seen =
            ward.log_lines_matching(&[("message", "request complete"), ("path", "/ok-again")]);
        let out = ward.log_lines_matching(&[
            ("target", "access"),
            ("message", "connection "),
            ("direction", "outbound"),
            ("src.workload", "other/oth"),
        ]);
        if !seen.is_empty() && !out.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "after the reload, requests and connections are logged again"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn metrics_overrides_disable_metrics_and_remove_labels() {
    let mesh = Mesh::with_own_app(BLOCK + 1).http();
    start_app(mesh.app_port);
    let ward = mesh.up(
        &docs(&[
            security(),
            telemetry(
                "istio-system",
                "  metrics:\n  - overrides:\n    - match: {metric: REQUEST_COUNT, mode: SERVER}\n      tagOverrides: {source_principal: {operation: REMOVE}}\n    - match: {metric: REQUEST_DURATION}\n      disabled: true\n",
            ),
        ]),
        &[],
    );
    assert!(!ward.logs().contains("WARD0102"), "{}", ward.logs());
    assert_eq!(http_get(mesh.via_cli(), "/counted").unwrap().0, 200);
    let start = std::time::Instant::now();
    let text = loop {
        let (_, text) = http_get(ward.admin, "/metrics").unwrap();
        if text.contains("istio_request_bytes_count{reporter=\"destination\"") {
            break text;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {text}"))
            .to_owned()
    };
    let count = line("istio_requests_total{reporter=\"destination\"");
    assert!(count.contains("source_principal=\"\""), "{count}");
    assert!(count.contains("source_workload=\"cli\""), "{count}");
    let size = line("istio_request_bytes_count{reporter=\"destination\"");
    assert!(
        size.contains("source_principal=\"spiffe://cluster.local/ns/app/sa/cli\""),
        "only REQUEST_COUNT loses the label: {size}"
    );
    assert!(
        !text.contains("istio_request_duration_milliseconds_bucket{"),
        "REQUEST_DURATION is disabled"
    );
    let tcp = line("istio_tcp_connections_opened_total{reporter=\"source\"");
    assert!(tcp.contains("source_principal=\"spiffe://"), "{tcp}");
}
