//! When the failover demo faults the primary. A run must show what tandem
//! is for — at least one failover — so the interval between faults is
//! scaled down for a short run, and a run too short for even one failover
//! (or an explicit `--kill-interval` that leaves no room for one) is
//! refused before any lab is built, with a message that says what fits.

use std::time::Duration;

/// The interval between faults when `--kill-interval` is not given and the
/// run is long enough for it.
pub const DEFAULT_KILL_INTERVAL: Duration = Duration::from_secs(8);
/// The shortest interval: a failover, then the old primary's restart
/// (2 s after the new primary serves) must fit between two faults.
pub const MIN_KILL_INTERVAL: Duration = Duration::from_secs(3);
/// No fault is started later than this before the end: the election, the
/// takeover and the clients' first replies after it must fall inside the
/// run for the summary to show the pause they saw.
pub const LAST_FAULT_MARGIN: Duration = Duration::from_secs(3);
/// Room on top of [`LAST_FAULT_MARGIN`] when planning: the controller polls
/// every 50 ms and asks every node for its status before a fault, so a
/// fault planned exactly at the margin could slip past it and not happen.
pub const PLANNING_SLACK: Duration = Duration::from_secs(1);

/// The shortest `--duration` that fits one failover: the load runs
/// [`MIN_KILL_INTERVAL`] before the first fault, which then needs
/// [`LAST_FAULT_MARGIN`] (and [`PLANNING_SLACK`]) to play out.
pub const MIN_DURATION: Duration = Duration::from_secs(
    MIN_KILL_INTERVAL.as_secs() + LAST_FAULT_MARGIN.as_secs() + PLANNING_SLACK.as_secs(),
);

/// The faults of one run: the first comes `interval` after the load starts,
/// each next one `interval` after the previous (later if the cluster is not
/// healthy yet), none within [`LAST_FAULT_MARGIN`] of the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub interval: Duration,
}

impl Schedule {
    /// The schedule for a run of `duration`, with the interval the user
    /// asked for (`--kill-interval`) or, if none, the default scaled down
    /// to fit the run. Errors say what to change.
    pub fn plan(duration: Duration, asked: Option<Duration>) -> Result<Schedule, String> {
        let secs = duration.as_secs();
        if duration < MIN_DURATION {
            return Err(format!(
                "--duration {secs} is too short for a failover: the demo needs at least {} s \
                 ({} s of load before the first fault, {} s for the fault to play out)",
                MIN_DURATION.as_secs(),
                MIN_KILL_INTERVAL.as_secs(),
                (LAST_FAULT_MARGIN + PLANNING_SLACK).as_secs()
            ));
        }
        // The latest first fault that still plays out inside the run.
        let latest_first = duration - LAST_FAULT_MARGIN - PLANNING_SLACK;
        let interval = match asked {
            Some(interval) if interval < MIN_KILL_INTERVAL => {
                return Err(format!(
                    "--kill-interval must be at least {} s (a failover, then the old primary's restart)",
                    MIN_KILL_INTERVAL.as_secs()
                ));
            }
            Some(interval) if interval > latest_first => {
                return Err(format!(
                    "--kill-interval {} leaves no room for a failover in --duration {secs}: \
                     the first fault comes after {} s and needs {} s to play out; use \
                     --duration {} or more, or --kill-interval {} or less",
                    interval.as_secs(),
                    interval.as_secs(),
                    (LAST_FAULT_MARGIN + PLANNING_SLACK).as_secs(),
                    (interval + LAST_FAULT_MARGIN + PLANNING_SLACK).as_secs(),
                    latest_first.as_secs()
                ));
            }
            Some(interval) => interval,
            None => DEFAULT_KILL_INTERVAL.min(latest_first),
        };
        Ok(Schedule { interval })
    }

    /// When the faults of a run of `duration` come, measured from the start
    /// of the load, if every failover is over before the next fault is due
    /// (the controller may only delay them, never advance them).
    pub fn nominal_faults(&self, duration: Duration) -> Vec<Duration> {
        let mut faults = Vec::new();
        let mut at = self.interval;
        while at + LAST_FAULT_MARGIN + PLANNING_SLACK <= duration {
            faults.push(at);
            at += self.interval;
        }
        faults
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_default_run_faults_every_eight_seconds() {
        let plan = Schedule::plan(secs(45), None).unwrap();
        assert_eq!(plan.interval, secs(8));
        assert_eq!(
            plan.nominal_faults(secs(45)),
            [8, 16, 24, 32, 40].map(secs).to_vec()
        );
    }

    #[test]
    fn a_ten_second_run_shows_a_failover() {
        // Issue 19: with the 8 s default the first fault came too late for
        // a 10 s run, which then showed no failover at all.
        let plan = Schedule::plan(secs(10), None).unwrap();
        assert_eq!(plan.interval, secs(6));
        assert_eq!(plan.nominal_faults(secs(10)), vec![secs(6)]);
    }

    #[test]
    fn every_accepted_duration_without_an_interval_has_a_failover() {
        for d in MIN_DURATION.as_secs()..=3600 {
            let plan = Schedule::plan(secs(d), None).unwrap();
            assert!(
                (MIN_KILL_INTERVAL..=DEFAULT_KILL_INTERVAL).contains(&plan.interval),
                "{d} s: interval {:?}",
                plan.interval
            );
            let faults = plan.nominal_faults(secs(d));
            assert!(!faults.is_empty(), "{d} s: no fault");
            let last = *faults.last().unwrap();
            assert!(
                last + LAST_FAULT_MARGIN <= secs(d),
                "{d} s: last fault at {last:?}"
            );
        }
    }

    #[test]
    fn a_run_too_short_for_a_failover_is_refused_with_the_minimum() {
        assert_eq!(MIN_DURATION, secs(7));
        for d in [1, 5, 6] {
            let err = Schedule::plan(secs(d), None).unwrap_err();
            assert!(
                err.contains(&format!("--duration {d} is too short")),
                "{err}"
            );
            assert!(err.contains("at least 7 s"), "{err}");
        }
        assert!(Schedule::plan(secs(7), None).is_ok());
    }

    #[test]
    fn an_explicit_interval_is_kept_or_refused_never_changed() {
        let plan = Schedule::plan(secs(20), Some(secs(5))).unwrap();
        assert_eq!(plan.interval, secs(5));
        assert_eq!(
            plan.nominal_faults(secs(20)),
            [5, 10, 15].map(secs).to_vec()
        );
        assert_eq!(
            Schedule::plan(secs(12), Some(secs(8))).unwrap().interval,
            secs(8)
        );

        let err = Schedule::plan(secs(10), Some(secs(8))).unwrap_err();
        assert!(err.contains("--kill-interval 8 leaves no room"), "{err}");
        assert!(
            err.contains("--duration 12 or more") && err.contains("--kill-interval 6 or less"),
            "{err}"
        );
        let err = Schedule::plan(secs(30), Some(secs(2))).unwrap_err();
        assert!(err.contains("at least 3 s"), "{err}");
    }
}
