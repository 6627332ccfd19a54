//! Finding and signalling the processes of a lab.
//!
//! A lab's processes are (a) the ones it spawned, recorded with their start
//! time so that a pid reused by an unrelated process after a crash is never
//! signalled, and (b) whatever runs inside one of its namespaces, found by
//! comparing `/proc/PID/ns/net` with the namespace's inode (what `ip netns
//! pids` does, without starting a process per query). Only a process's main
//! thread counts: a test thread that entered a lab namespace with `setns`
//! leaves its process (the test runner) in the root namespace, untouched.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::LabError;

/// A process the lab started, identified beyond its pid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProcRecord {
    /// The pid.
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat` (clock ticks after boot): with the pid,
    /// a unique identity for the life of the machine.
    pub start_time: u64,
    /// What was started, for humans reading the state file.
    pub command: String,
    /// Whether it is the node's `tandem node` daemon (started by `up` or
    /// `restart`), as opposed to a process a test spawned there.
    #[serde(default)]
    pub daemon: bool,
}

impl ProcRecord {
    /// Whether the recorded process still exists (and is not a zombie).
    pub fn is_running(&self) -> bool {
        matches!(stat(self.pid), Some((start, state)) if start == self.start_time && state != 'Z')
    }

    /// Whether the recorded process exists and is stopped (SIGSTOP: state
    /// `T`, or `t` under a tracer).
    pub fn is_stopped(&self) -> bool {
        matches!(stat(self.pid), Some((start, 'T' | 't')) if start == self.start_time)
    }
}

/// `(start_time, state)` of a process, from `/proc/PID/stat`.
pub(crate) fn stat(pid: u32) -> Option<(u64, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: the
    // fields after it start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, state))
}

/// The inode of a named namespace, `None` if it does not exist.
pub(crate) fn netns_inode(netns: &str) -> Option<u64> {
    std::fs::metadata(std::path::Path::new(tandem_sys::netns::NETNS_RUN_DIR).join(netns))
        .ok()
        .map(|m| m.ino())
}

/// Pids of the processes living in the namespace with inode `inode`,
/// except the calling process (whatever happens, the lab never signals the
/// program driving it).
pub(crate) fn pids_in_netns(inode: u64) -> Vec<u32> {
    let me = std::process::id();
    let want = format!("net:[{inode}]");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .map(|target| target.as_os_str() == want.as_str())
                .unwrap_or(false)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Pids of the processes in the named namespace (empty if it is gone).
pub(crate) fn pids_in(netns: &str) -> Vec<u32> {
    netns_inode(netns).map(pids_in_netns).unwrap_or_default()
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub(crate) fn signal(pid: u32, signal: Signal) -> Result<(), LabError> {
    if pid == std::process::id() || pid == 0 || pid > i32::MAX as u32 {
        return Ok(());
    }
    match nix::sys::signal::kill(Pid::from_raw(pid as i32), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(source) => Err(LabError::Signal {
            pid,
            signal: signal.as_str(),
            source,
        }),
    }
}

/// Sends `sig` to every process of the namespace `netns` (if given) and to
/// every recorded process still running; returns the pids signalled.
pub(crate) fn signal_all(
    netns: Option<&str>,
    records: &[ProcRecord],
    sig: Signal,
) -> Result<Vec<u32>, LabError> {
    let mut pids = netns.map(pids_in).unwrap_or_default();
    for rec in records {
        if rec.is_running() && !pids.contains(&rec.pid) {
            pids.push(rec.pid);
        }
    }
    pids.sort_unstable();
    for &pid in &pids {
        signal(pid, sig)?;
    }
    Ok(pids)
}

/// Waits (up to `timeout`) until none of `pids` is running any more;
/// returns the ones still there. Zombies count as gone: their parent reaps
/// them, the lab cannot.
pub(crate) fn wait_gone(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|&pid| matches!(stat(pid), Some((_, state)) if state != 'Z'))
            .collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_stat_is_readable_and_running() {
        let (start, state) = stat(std::process::id()).unwrap();
        assert!(start > 0);
        assert!(state == 'R' || state == 'S', "{state}");
    }

    #[test]
    fn record_of_a_reused_pid_is_not_running() {
        let pid = std::process::id();
        let (start, _) = stat(pid).unwrap();
        let live = ProcRecord {
            pid,
            start_time: start,
            command: "me".into(),
            daemon: false,
        };
        assert!(!live.is_stopped());
        assert!(live.is_running());
        let reused = ProcRecord {
            start_time: start + 1,
            ..live
        };
        assert!(!reused.is_running());
    }

    #[test]
    fn never_signals_itself() {
        signal(std::process::id(), Signal::SIGKILL).unwrap();
    }
}
