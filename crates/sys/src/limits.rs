//! Process limits and accounting: the open-files limit load generators and
//! tests raise, and the CPU time of waited-for children benchmarks report.

use std::io;

use crate::cvt;

/// Raises this process's `RLIMIT_NOFILE` soft limit to at least `want`.
///
/// The hard limit is raised too when it is lower (which needs
/// `CAP_SYS_RESOURCE`); without that right, the soft limit goes up to the
/// hard one. Returns the soft limit in force afterwards, which may be below
/// `want`. Never lowers a limit.
pub fn raise_nofile(want: u64) -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct we own.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    let wanted: libc::rlim_t = want;
    if lim.rlim_cur >= wanted {
        return Ok(lim.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: lim.rlim_max.max(wanted),
    };
    // SAFETY: setrlimit reads one rlimit struct we own.
    if cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) }).is_ok() {
        return Ok(raised.rlim_cur);
    }
    // Not allowed to raise the hard limit: go as far as it allows.
    let capped = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &capped) })?;
    Ok(capped.rlim_cur)
}

/// CPU seconds (user + system) of this process's children that have been
/// waited for (`getrusage(RUSAGE_CHILDREN)`).
pub fn children_cpu_seconds() -> io::Result<f64> {
    // SAFETY: rusage is plain data; all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes the struct it is given.
    cvt(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) })?;
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(secs(usage.ru_utime) + secs(usage.ru_stime))
}

/// The length of a clock tick in seconds (`sysconf(_SC_CLK_TCK)`), the unit
/// of the CPU times in `/proc/<pid>/stat`; 1/100 if the system does not say.
pub fn clock_tick_seconds() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1.0 / if hz > 0 { hz as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_never_goes_down_and_reaches_what_is_allowed() {
        let before = raise_nofile(0).unwrap();
        // Asking for less than the limit leaves it alone.
        assert_eq!(raise_nofile(before / 2).unwrap(), before);
        let after = raise_nofile(before + 1).unwrap();
        assert!(after >= before);
    }

    #[test]
    fn children_cpu_time_is_counted_once_they_are_waited_for() {
        let before = children_cpu_seconds().unwrap();
        // A child that burns a little CPU.
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(status.success());
        assert!(children_cpu_seconds().unwrap() > before);
        let tick = clock_tick_seconds();
        assert!(tick > 0.0 && tick <= 0.1, "{tick}");
    }
}
