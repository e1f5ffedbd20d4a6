//! Helpers for Ward's end-to-end tests: run the real `ward` binary on a directory of YAML, wait
//! for readiness, talk to it over real sockets, and read its logs.
//!
//! Tests pass the binary path (`env!("CARGO_BIN_EXE_ward")`), so this crate builds nothing itself.
//! Each test uses its own 127.x.y.z block and admin port, so tests can run in parallel.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub mod ca;
pub mod k8s;
pub mod netns;

/// A running `ward up` process; killed on drop.
pub struct Ward {
    child: Child,
    /// The admin address.
    pub admin: SocketAddr,
    /// The config directory (edit files here to hot-reload).
    pub config_dir: PathBuf,
    /// Where stderr (logs) goes.
    pub log_path: PathBuf,
    _tmp: tempfile::TempDir,
}

/// Options for [`Ward::up`].
pub struct UpOptions<'a> {
    /// Path of the `ward` binary.
    pub bin: &'a str,
    /// Admin address.
    pub admin: SocketAddr,
    /// YAML files to write into the config dir: (file name, contents).
    pub files: Vec<(&'a str, String)>,
    /// Extra arguments to `ward up`.
    pub extra_args: Vec<String>,
    /// Extra environment variables for the ward process.
    pub env: Vec<(String, String)>,
}

impl Ward {
    /// Write the files, start `ward up --log-format json`, and wait until `/ready` is 200.
    pub fn up(opts: UpOptions<'_>) -> anyhow::Result<Ward> {
        let tmp = tempfile::tempdir()?;
        let config_dir = tmp.path().join("config");
        std::fs::create_dir_all(&config_dir)?;
        for (name, body) in &opts.files {
            std::fs::write(config_dir.join(name), body)?;
        }
        let log_path = tmp.path().join("ward.log");
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = Command::new(opts.bin);
        cmd.arg("--log-format")
            .arg("json")
            .arg("up")
            .arg("-f")
            .arg(&config_dir);
        // A test sharing another process's CA passes its own `--state-dir`.
        if !opts.extra_args.iter().any(|a| a == "--state-dir") {
            cmd.arg("--state-dir").arg(tmp.path().join("state"));
        }
        let child = cmd
            .arg("--admin")
            .arg(opts.admin.to_string())
            .arg("--poll-interval")
            .arg("100ms")
            .args(&opts.extra_args)
            .envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning ward")?;
        let mut ward = Ward {
            child,
            admin: opts.admin,
            config_dir,
            log_path,
            _tmp: tmp,
        };
        ward.wait_ready(Duration::from_secs(30))?;
        Ok(ward)
    }

    /// Wait until `/ready` answers 200.
    pub fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("ward exited with {status}; log:\n{}", self.logs());
            }
            match http_get(self.admin, "/ready") {
                Ok((200, _)) => return Ok(()),
                Ok((_, body)) => last = body,
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "ward not ready after {limit:?}: {last}\nlog:\n{}",
            self.logs()
        )
    }

    /// The process id of `ward` (a wrapper that `exec`s it keeps the id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stop `ward` as an operator would (SIGTERM) and wait at most `limit` for it to exit.
    pub fn stop(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The `--state-dir` `ward up` was started with (unless the test gave its own).
    pub fn state_dir(&self) -> PathBuf {
        self._tmp.path().join("state")
    }

    /// Everything ward logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Log lines (JSON objects) whose fields match all of `pairs` (key, value-substring).
    pub fn log_lines_matching(&self, pairs: &[(&str, &str)]) -> Vec<serde_json::Value> {
        json_log_lines(&self.logs(), pairs)
    }

    /// Wait until a log line matches, or fail with the log.
    pub fn wait_for_log(
        &self,
        pairs: &[(&str, &str)],
        limit: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        wait_for_line(|| self.logs(), pairs, limit)
    }

    /// Replace a config file (hot reload).
    pub fn write_config(&self, name: &str, body: &str) -> anyhow::Result<()> {
        let tmp = self.config_dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, self.config_dir.join(name))?;
        Ok(())
    }

    /// The config directory.
    pub fn dir(&self) -> &Path {
        &self.config_dir
    }

    /// GET a JSON admin endpoint.
    pub fn admin_json(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let (status, body) = http_get(self.admin, path)?;
        if status != 200 {
            bail!("{path}: status {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }
}

impl Drop for Ward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `logs` until a JSON line matches all of `pairs`, or fails after `limit` with the log.
fn wait_for_line(
    logs: impl Fn() -> String,
    pairs: &[(&str, &str)],
    limit: Duration,
) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + limit;
    loop {
        let log = logs();
        if let Some(v) = json_log_lines(&log, pairs).into_iter().next() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("no log line matching {pairs:?} after {limit:?}; log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The JSON lines of `log` whose fields match all of `pairs` (key, value-substring).
pub fn json_log_lines(log: &str, pairs: &[(&str, &str)]) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            pairs.iter().all(|(k, want)| {
                v.get(*k).is_some_and(|got| match got {
                    serde_json::Value::String(s) => s.contains(want),
                    other => other.to_string().contains(want),
                })
            })
        })
        .collect()
}

/// Any `ward` subcommand as a child process logging JSON to a file; killed on drop.
pub struct Proc {
    child: Child,
    /// Where stderr (logs) goes.
    pub log_path: PathBuf,
    /// Where stdout goes.
    pub out_path: PathBuf,
}

impl Proc {
    /// Starts `bin --log-format json ARGS…` with `RUST_LOG=info`, logging to `log_path` (stdout
    /// to the same path with `.out` appended).
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(bin: &str, args: &[S], log_path: &Path) -> Proc {
        let out_path = log_path.with_extension("out");
        let child = Command::new(bin)
            .args(["--log-format", "json"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(log_path).unwrap())
            .spawn()
            .unwrap();
        Proc {
            child,
            log_path: log_path.to_owned(),
            out_path,
        }
    }

    /// Everything it logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Everything it printed so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out_path).unwrap_or_default()
    }

    /// Log lines whose fields match all of `pairs` (key, value-substring).
    pub fn lines(&self, pairs: &[(&str, &str)]) -> Vec<serde_json::Value> {
        json_log_lines(&self.logs(), pairs)
    }

    /// Waits until a log line matches; fails with the log.
    pub fn wait_for_log(
        &self,
        pairs: &[(&str, &str)],
        limit: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        wait_for_line(|| self.logs(), pairs, limit)
    }

    /// Waits until `admin`'s `/ready` answers 200; fails if the process exits first.
    pub fn wait_ready(&mut self, admin: SocketAddr, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                bail!("exited with {status}; log:\n{}", self.logs());
            }
            match http_get(admin, "/ready") {
                Ok((200, _)) => return Ok(()),
                Ok((_, body)) => last = body,
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("not ready after {limit:?}: {last}\nlog:\n{}", self.logs())
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `limit` for it to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal HTTP/1.0 GET; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status: u16 = resp
        .split_whitespace()
        .nth(1)
        .context("no status line")?
        .parse()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Send `msg` on a new connection to `addr`, half-close, and read everything back.
/// An error means the connection was refused, reset, or timed out.
pub fn echo_roundtrip(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(msg)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// True when `msg` comes back intact through `addr`.
pub fn echo_ok(addr: SocketAddr, msg: &str) -> bool {
    matches!(echo_roundtrip(addr, msg.as_bytes()), Ok(v) if v == msg.as_bytes())
}

/// The `*.yaml` files of a directory, as (file name, contents): a config directory to hand to
/// [`Ward::up`] as it is.
pub fn yaml_files(dir: impl AsRef<std::path::Path>) -> Vec<(String, String)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

/// A free TCP port on 127.0.0.1 (racy by nature; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether a program is on PATH (or at an absolute path).
pub fn have(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Print a visible skip notice (tests that need root, postgres or tshark).
pub fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
    println!("SKIPPED {test}: {why}");
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Whether CI asked for every test to run (skips then become failures).
pub fn strict_ci() -> bool {
    std::env::var("WARD_E2E_REQUIRE_ALL")
        .map(|v| v == "1")
        .unwrap_or(false)
}

/// Skip, or fail under CI when everything is required.
pub fn skip_or_fail(test: &str, why: &str) {
    if strict_ci() {
        panic!("{test} cannot run in CI: {why}");
    }
    skip(test, why);
}

/// Debian's nginx as a test app on 127.0.0.1:`port`, answering every request with `200` and
/// `body` (nginx variables such as `$request_uri` or `$http_x_forwarded_client_cert` are
/// expanded, so the body shows what reached the app). Stopped on drop.
pub struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// Start nginx and wait until it accepts connections.
    pub fn start(port: u16, body: &str) -> anyhow::Result<Nginx> {
        let server = format!(
            "server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      default_type text/plain;\n      \
             return 200 \"{body}\\n\";\n    }}\n  }}\n"
        );
        Nginx::start_servers(&server, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// Start nginx with `servers` (`server { ... }` blocks of the `http` context, e.g. TLS
    /// servers with `ssl_certificate`) and wait until `probe` accepts connections. The access
    /// log logs `$request_uri`.
    pub fn start_servers(servers: &str, probe: SocketAddr) -> anyhow::Result<Nginx> {
        let dir = tempfile::tempdir()?;
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nerror_log {d}/error.log;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n  \
             {servers}}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf)?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-p")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning nginx")?;
        let nginx = Nginx { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(probe).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "nginx did not start: {}",
                    std::fs::read_to_string(nginx.dir.path().join("error.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(nginx)
    }

    /// nginx's access log so far.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether Python can import `hypercorn` (`pip install hypercorn`; CI installs it).
pub fn have_hypercorn() -> bool {
    Command::new("python3")
        .args(["-c", "import hypercorn, h2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether Python can import `grpc` and `grpc_tools` (`pip install grpcio grpcio-tools`; CI
/// installs them).
pub fn have_grpcio() -> bool {
    Command::new("python3")
        .args(["-c", "import grpc, grpc_tools.protoc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// hypercorn, a production ASGI server, serving an ASGI app on 127.0.0.1:`port` (HTTP/1.1,
/// h2c by upgrade or prior knowledge, WebSocket). `app_dir` holds the module; `app` is
/// `module:attribute`. The app may log what it received to [`Hypercorn::app_log`] (env
/// `ASGI_ECHO_LOG`). Stopped on drop.
pub struct Hypercorn {
    child: Child,
    dir: tempfile::TempDir,
}

impl Hypercorn {
    /// Start hypercorn and wait until it accepts connections.
    pub fn start(port: u16, app_dir: &Path, app: &str) -> anyhow::Result<Hypercorn> {
        let dir = tempfile::tempdir()?;
        let stderr = std::fs::File::create(dir.path().join("hypercorn.log"))?;
        let child = Command::new("python3")
            .args([
                "-m",
                "hypercorn",
                "--bind",
                &format!("127.0.0.1:{port}"),
                app,
            ])
            .current_dir(app_dir)
            .env("ASGI_ECHO_LOG", dir.path().join("app.log"))
            .stdout(Stdio::null())
            .stderr(stderr)
            // Its own process group, so that its worker processes go with it.
            .process_group(0)
            .spawn()
            .context("spawning hypercorn")?;
        let hypercorn = Hypercorn { child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "hypercorn did not start: {}",
                    std::fs::read_to_string(hypercorn.dir.path().join("hypercorn.log"))
                        .unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(hypercorn)
    }

    /// One line per request the app received: `METHOD /path host=<Host>` (`WS` for WebSocket).
    pub fn app_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("app.log")).unwrap_or_default()
    }
}

impl Drop for Hypercorn {
    fn drop(&mut self) {
        // hypercorn serves from worker processes it forks; killing only the parent would leave
        // them running. The whole group goes (the group id is the parent's pid).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run curl with `args`; returns (HTTP status, body). Status 0 means curl failed.
pub fn curl(args: &[&str]) -> (u16, String) {
    let out = match Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
    {
        Ok(o) => o,
        Err(_) => return (0, String::new()),
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}
