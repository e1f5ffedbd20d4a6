//! Child processes the harness starts (server, iperf3, ward, nginx): spawned pinned to a CPU
//! with `taskset` where there is more than one, and stopped on drop (SIGTERM, then SIGKILL).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why a child process could not be started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpawnError {
    /// The program could not be executed.
    #[error("starting {program}: {source}")]
    Exec {
        /// The program.
        program: String,
        /// The exec error.
        source: std::io::Error,
    },
}

/// Which CPU each role runs on; None everywhere on a one-CPU machine.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pinning {
    /// The load generator (this process), the servers and iperf3.
    pub(crate) load: Option<usize>,
    /// The proxies under test.
    pub(crate) proxies: Option<usize>,
}

impl Pinning {
    /// Load on CPU 0 and proxies on CPU 1 when there are two CPUs and `taskset` exists.
    pub(crate) fn detect() -> Pinning {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let taskset = Command::new("taskset")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if cpus >= 2 && taskset {
            Pinning {
                load: Some(0),
                proxies: Some(1),
            }
        } else {
            Pinning {
                load: None,
                proxies: None,
            }
        }
    }

    /// Pins every thread of this process (the load generator) to the load CPU. Must run
    /// before the tokio runtime starts so its threads inherit the mask.
    pub(crate) fn pin_self(&self) {
        if let Some(cpu) = self.load {
            let _ = Command::new("taskset")
                .args([
                    "-a",
                    "-p",
                    "-c",
                    &cpu.to_string(),
                    &std::process::id().to_string(),
                ])
                .stdout(Stdio::null())
                .status();
        }
    }
}

/// A `Command` for `program`, run under `taskset -c cpu` when `cpu` is set (taskset execs the
/// program, so the child's pid is the program's).
pub(crate) fn pinned(cpu: Option<usize>, program: impl AsRef<Path>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(program.as_ref());
            c
        }
        None => Command::new(program.as_ref()),
    }
}

/// A running child, stopped when dropped.
#[derive(Debug)]
pub(crate) struct Proc {
    child: Child,
}

impl Proc {
    /// Spawns `cmd`.
    pub(crate) fn spawn(name: &str, cmd: &mut Command) -> Result<Proc, SpawnError> {
        let child = cmd.spawn().map_err(|source| SpawnError::Exec {
            program: name.to_owned(),
            source,
        })?;
        Ok(Proc { child })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited already.
    pub(crate) fn has_exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Takes the child's stdout (when it was piped).
    pub(crate) fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        // SIGTERM first: an nginx master killed outright would leave its workers running.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Picks a free loopback port (bind to 0 and release it).
pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_stops_the_child() {
        let mut p = Proc::spawn("sleep", Command::new("sleep").arg("30")).unwrap();
        let pid = p.pid();
        assert!(!p.has_exited());
        drop(p);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn pinned_command_runs_the_program() {
        for cpu in [None, Pinning::detect().load] {
            let out = pinned(cpu, "echo").arg("hi").output().unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hi", "{cpu:?}");
        }
    }
}
