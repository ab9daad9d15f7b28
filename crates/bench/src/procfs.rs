//! What `/proc` tells about a process (resident memory, CPU time) and about the machine.

use std::collections::BTreeMap;
use std::process::Command;

use serde::Serialize;

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on every Linux this runs on).
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct ProcStat {
    /// VmRSS, KiB.
    pub rss_kb: u64,
    /// VmHWM (peak resident), KiB.
    pub hwm_kb: u64,
    /// utime + stime, seconds.
    pub cpu_s: f64,
    /// Threads.
    pub threads: u64,
}

/// Reads `/proc/<pid>/status` and `/proc/<pid>/stat`; `None` when the process is gone.
pub fn read(pid: u32) -> Option<ProcStat> {
    read_dir(&format!("/proc/{pid}"))
}

/// The same for one thread of this process (`/proc/self/task/<tid>`): its own CPU time, the
/// process's memory. (`/proc/<tid>` would give the whole process's CPU.)
pub fn read_thread(tid: u32) -> Option<ProcStat> {
    read_dir(&format!("/proc/self/task/{tid}"))
}

/// The calling thread's id, from `/proc/thread-self` (`<pid>/task/<tid>`).
pub fn current_tid() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

fn read_dir(dir: &str) -> Option<ProcStat> {
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After `(comm)`: state is field 3; utime and stime are fields 14 and 15.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some(ProcStat {
        rss_kb: field("VmRSS:"),
        hwm_kb: field("VmHWM:"),
        cpu_s: (utime + stime) as f64 / TICKS_PER_SEC,
        threads: field("Threads:"),
    })
}

/// Cores available to this process.
pub fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `/proc/loadavg`'s first three numbers.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Total CPU time of the whole machine so far (all cores, busy and idle), from `/proc/stat`,
/// as (busy seconds, total seconds).
pub fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0.0, 0.0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (
        (total - idle) as f64 / TICKS_PER_SEC,
        total as f64 / TICKS_PER_SEC,
    )
}

/// `/proc/net/sockstat` TCP line: sockets in use and pages of socket memory.
pub fn tcp_sockstat() -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let mut out = BTreeMap::new();
    if let Some(line) = text.lines().find(|l| l.starts_with("TCP:")) {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        for pair in words.chunks(2) {
            if let [k, v] = pair
                && let Ok(v) = v.parse()
            {
                out.insert((*k).to_owned(), v);
            }
        }
    }
    out
}

/// The machine a run happened on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_gib: f64,
    pub kernel: String,
    pub nats_server: String,
    pub open_files_limit: String,
    pub git_commit: String,
}

impl Machine {
    pub fn probe(nats_server: &std::path::Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let run = |cmd: &mut Command| {
            cmd.output()
                .ok()
                .map(|o| {
                    let mut s = String::from_utf8_lossy(&o.stdout).trim().to_owned();
                    if s.is_empty() {
                        s = String::from_utf8_lossy(&o.stderr).trim().to_owned();
                    }
                    s
                })
                .unwrap_or_default()
        };
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
                .unwrap_or_default(),
            mem_total_gib: (mem_kb as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            nats_server: run(Command::new(nats_server).arg("--version")),
            open_files_limit: limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| {
                    l.split_whitespace()
                        .skip(3)
                        .take(2)
                        .collect::<Vec<_>>()
                        .join("/")
                })
                .unwrap_or_default(),
            // The checkout the bench runs in; git's error text is no commit.
            git_commit: Command::new("git")
                .args(["rev-parse", "--short", "HEAD"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_else(|| "unknown (not run in a git checkout)".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = read(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kb > 0 && s.threads >= 1);
    }
}
