//! `ward break-glass`: grant, list and revoke time-limited exceptions on a running `ward up`
//! (`/break-glass` on its admin port, `ward_proxy::breakglass`, docs/break-glass.md).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt as _;
use ward_proxy::breakglass::{Grant, MAX_TTL};

use crate::verify::utc;

#[derive(clap::Args)]
pub(crate) struct BreakGlassArgs {
    /// The admin address of the `ward up` running the workload's sidecar.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin: SocketAddr,
    /// The workload, NAMESPACE/NAME: its AuthorizationPolicy denials are lifted until the
    /// grant ends.
    #[arg(long, required_unless_present_any = ["list", "revoke"])]
    workload: Option<String>,
    /// How long: `15m`, `1h`... at most 4h.
    #[arg(long, value_parser = ttl, required_unless_present_any = ["list", "revoke"])]
    ttl: Option<Duration>,
    /// Why (10 to 500 characters): an incident or ticket reference and what is broken.
    #[arg(long, required_unless_present_any = ["list", "revoke"])]
    reason: Option<String>,
    /// Who asks or revokes (default: $USER).
    #[arg(long)]
    by: Option<String>,
    /// List the grants (active, expired, revoked) instead.
    #[arg(long, conflicts_with_all = ["workload", "ttl", "reason", "revoke"])]
    list: bool,
    /// Revoke the grant with this id instead.
    #[arg(long, value_name = "ID", conflicts_with_all = ["workload", "ttl", "reason"])]
    revoke: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `--ttl`: positive, at most [`MAX_TTL`].
fn ttl(s: &str) -> Result<Duration, String> {
    let d = crate::up::parse_duration(s)?;
    if d > MAX_TTL {
        return Err(format!(
            "{s:?}: at most {}h (the cap; docs/break-glass.md)",
            MAX_TTL.as_secs() / 3600
        ));
    }
    Ok(d)
}

/// One request with a JSON body (or none) to an admin port; its status and body.
async fn request(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(Bytes::from(body)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

fn line(g: &Grant) -> String {
    let mut out = format!(
        "{}  {}  {}  {} -> {}  by {}  uses {}\n  reason: {}\n",
        g.id,
        g.workload,
        g.status,
        utc(g.granted_at),
        utc(g.expires_at),
        g.requested_by,
        g.uses,
        g.reason
    );
    if let (Some(at), Some(by)) = (g.revoked_at, &g.revoked_by) {
        out.push_str(&format!("  revoked {} by {by}\n", utc(at)));
    }
    out
}

pub(crate) async fn run(args: BreakGlassArgs) -> ExitCode {
    let by = args
        .by
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .unwrap_or_default();
    let (method, path, body) = if args.list {
        (http::Method::GET, "/break-glass", None)
    } else if let Some(id) = &args.revoke {
        let body = serde_json::json!({ "id": id, "by": by });
        (http::Method::POST, "/break-glass/revoke", Some(body))
    } else {
        let body = serde_json::json!({
            "workload": args.workload.clone().unwrap_or_default(),
            "ttlSeconds": args.ttl.map_or(0, |d| d.as_secs()),
            "reason": args.reason.clone().unwrap_or_default(),
            "requestedBy": by,
        });
        (http::Method::POST, "/break-glass", Some(body))
    };
    let (status, body) = match request(args.admin, method, path, body).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ward break-glass: --admin {}: {e:#}", args.admin);
            return ExitCode::from(2);
        }
    };
    let text = String::from_utf8_lossy(&body);
    if status != StatusCode::OK {
        eprintln!("ward break-glass: HTTP {status}: {}", text.trim());
        return ExitCode::FAILURE;
    }
    if args.json {
        println!("{}", text.trim());
        return ExitCode::SUCCESS;
    }
    if args.list {
        let grants: Vec<Grant> = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| serde_json::from_value(v["grants"].clone()).ok())
            .unwrap_or_default();
        if grants.is_empty() {
            println!("no break-glass grants");
        }
        for g in &grants {
            print!("{}", line(g));
        }
    } else {
        match serde_json::from_slice::<Grant>(&body) {
            Ok(g) if args.revoke.is_some() => print!("revoked\n{}", line(&g)),
            Ok(g) => print!(
                "granted: {} lifts the AuthorizationPolicy denials of {} until {}\n{}",
                g.id,
                g.workload,
                utc(g.expires_at),
                line(&g)
            ),
            Err(e) => {
                eprintln!("ward break-glass: not a grant: {e}");
                return ExitCode::from(2);
            }
        }
    }
    ExitCode::SUCCESS
}
