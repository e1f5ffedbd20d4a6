//! What the kernel says a proxy costs: CPU ticks from `/proc/<pid>/stat`, memory from
//! `/proc/<pid>/status`, and a process's children (nginx workers) from their `stat` lines.

use std::process::Command;

/// Why a process's figures could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProcError {
    /// The /proc file could not be read (the process exited?).
    #[error("reading /proc/{pid}: {source}")]
    Read {
        /// The process.
        pid: u32,
        /// The read error.
        source: std::io::Error,
    },
    /// The file's layout was not what proc(5) documents.
    #[error("/proc/{pid}/{file} has an unexpected layout")]
    Layout {
        /// The process.
        pid: u32,
        /// `stat` or `status`.
        file: &'static str,
    },
}

/// The fields of `/proc/<pid>/stat` the harness uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    /// Parent process id.
    pub(crate) ppid: u32,
    /// utime + stime, in clock ticks.
    pub(crate) cpu_ticks: u64,
    /// Minor page faults (memory the process touched for the first time since the kernel
    /// gave it, or took back).
    pub(crate) minflt: u64,
}

/// Resident memory, KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Memory {
    /// Peak resident set (VmHWM).
    pub(crate) hwm_kib: u64,
    /// Current resident set (VmRSS).
    pub(crate) rss_kib: u64,
    /// Resident anonymous memory (RssAnon): heap, stacks, buffers; the rest of VmRSS is mostly
    /// the binary's code, file-backed and shared with every process running the same binary.
    pub(crate) anon_kib: u64,
}

impl std::ops::Add for Memory {
    type Output = Memory;
    fn add(self, o: Memory) -> Memory {
        Memory {
            hwm_kib: self.hwm_kib + o.hwm_kib,
            rss_kib: self.rss_kib + o.rss_kib,
            anon_kib: self.anon_kib + o.anon_kib,
        }
    }
}

/// Parses a `stat` line. proc(5): "(2) comm ... in parentheses"; the name may itself hold
/// spaces and ')' so fields are counted after the LAST ')'. Field 4 is ppid, 10 minflt, 14 utime,
/// 15 stime.
pub(crate) fn parse_stat(line: &str) -> Option<Stat> {
    let after = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state).
    let ppid = fields.get(1)?.parse().ok()?;
    let minflt = fields.get(7)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Stat {
        ppid,
        cpu_ticks: utime + stime,
        minflt,
    })
}

/// Parses the VmHWM, VmRSS and RssAnon lines of a `status` file ("VmHWM:    1234 kB").
pub(crate) fn parse_status(text: &str) -> Option<Memory> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|n| n.trim().parse::<u64>().ok())
    };
    Some(Memory {
        hwm_kib: field("VmHWM:")?,
        rss_kib: field("VmRSS:")?,
        anon_kib: field("RssAnon:")?,
    })
}

/// Reads `/proc/<pid>/stat`.
pub(crate) fn stat(pid: u32) -> Result<Stat, ProcError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|source| ProcError::Read { pid, source })?;
    parse_stat(&text).ok_or(ProcError::Layout { pid, file: "stat" })
}

/// Reads `/proc/<pid>/status`.
pub(crate) fn memory(pid: u32) -> Result<Memory, ProcError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|source| ProcError::Read { pid, source })?;
    parse_status(&text).ok_or(ProcError::Layout {
        pid,
        file: "status",
    })
}

/// The direct children of `pid` (nginx's workers under their master).
pub(crate) fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| stat(*child).is_ok_and(|s| s.ppid == pid))
        .collect()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we know of).
pub(crate) fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stat_lines() {
        let cases = [
            (
                "1234 (ward) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 5 0 0",
                Some((1, 300, 100)),
            ),
            (
                "77 (nginx: worker) process) R 76 1 1 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 5 0 0",
                Some((76, 10, 0)),
            ),
            ("77 (short) R 76", None),
            ("no parens at all", None),
        ];
        for (line, want) in cases {
            assert_eq!(
                parse_stat(line).map(|s| (s.ppid, s.cpu_ticks, s.minflt)),
                want,
                "{line}"
            );
        }
    }

    #[test]
    fn status_files() {
        let full = "Name:\tward\nVmPeak:\t 9 kB\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n\
                    RssAnon:\t    1536 kB\nRssFile:\t    8704 kB\n";
        let cases = [
            (full, Some((20480, 10240, 1536))),
            ("Name:\tkthreadd\n", None),
            ("VmHWM: x kB\nVmRSS: 1 kB\nRssAnon: 1 kB\n", None),
            ("VmHWM: 2 kB\nVmRSS: 1 kB\n", None),
        ];
        for (text, want) in cases {
            assert_eq!(
                parse_status(text).map(|m| (m.hwm_kib, m.rss_kib, m.anon_kib)),
                want,
                "{text}"
            );
        }
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(memory(me).unwrap().hwm_kib > 0);
        assert!(stat(me).is_ok());
        assert!(clock_ticks_per_second() > 0);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(text in ".{0,200}") {
            let _ = parse_stat(&text);
            let _ = parse_status(&text);
        }
    }
}
