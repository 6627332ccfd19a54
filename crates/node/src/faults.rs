//! The fault-injection seam of the daemon's Linux layer (issue 11 item 1):
//! `tandem fault --node N takeover-step STEP --times K` makes the next K
//! takeovers of node N fail at STEP, so that tests and operators rehearsing
//! can watch the real release path run (VIP removed, lease revoked,
//! listener closed, repaired sockets closed) and the machine retry or hand
//! the role on — without breaking the host (no link taken down, no `nft`
//! removed).
//!
//! An injected failure comes *after* the step's real call succeeded: the
//! step took its resource (the lease granted, the listener bound, the VIP
//! added, the ARP announced, the sockets live), so the release has
//! something to release, as in the worst real case.
//!
//! Off by default: nothing is armed at start-up, and a disarmed seam is a
//! look at a zero in a five-element array per step of a takeover (never on
//! the packet path). Armed faults show in `tandem status` and in the
//! `tandem_takeover_faults_armed` metric until they are spent.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A step of becoming primary that can be made to fail, in the order the
/// daemon takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TakeoverStep {
    /// The kernel lease (`nft`).
    Lease,
    /// The listener on VIP:port.
    Listen,
    /// Adding the VIP to the interface.
    Vip,
    /// The gratuitous ARP announcement.
    Arp,
    /// The rebuilt connections going live.
    Sockets,
}

impl TakeoverStep {
    pub const ALL: [TakeoverStep; 5] = [
        TakeoverStep::Lease,
        TakeoverStep::Listen,
        TakeoverStep::Vip,
        TakeoverStep::Arp,
        TakeoverStep::Sockets,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TakeoverStep::Lease => "lease",
            TakeoverStep::Listen => "listen",
            TakeoverStep::Vip => "vip",
            TakeoverStep::Arp => "arp",
            TakeoverStep::Sockets => "sockets",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::str::FromStr for TakeoverStep {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TakeoverStep::ALL
            .into_iter()
            .find(|step| step.as_str() == s)
            .ok_or_else(|| {
                format!("no takeover step {s:?}: one of lease, listen, vip, arp, sockets")
            })
    }
}

impl std::fmt::Display for TakeoverStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure the seam made up (the daemon's takeover reports it like a
/// real one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("injected fault at the takeover step {0} (tandem fault)")]
pub struct InjectedFault(pub TakeoverStep);

/// How many more times each takeover step fails.
#[derive(Debug, Default, Clone)]
pub struct TakeoverFaults {
    left: [u32; TakeoverStep::ALL.len()],
    injected: u64,
}

impl TakeoverFaults {
    /// The next `times` takeovers fail at `step` (0 disarms it).
    pub fn arm(&mut self, step: TakeoverStep, times: u32) {
        self.left[step.index()] = times;
    }

    /// Consulted by the daemon right after `step` succeeded: an error (and
    /// one fewer left) while the step is armed.
    pub fn check(&mut self, step: TakeoverStep) -> Result<(), InjectedFault> {
        let left = &mut self.left[step.index()];
        if *left == 0 {
            return Ok(());
        }
        *left -= 1;
        self.injected += 1;
        Err(InjectedFault(step))
    }

    /// The armed steps and how many failures each has left.
    pub fn armed(&self) -> BTreeMap<String, u32> {
        TakeoverStep::ALL
            .into_iter()
            .filter(|step| self.left[step.index()] > 0)
            .map(|step| (step.as_str().to_string(), self.left[step.index()]))
            .collect()
    }

    /// Failures injected since start.
    pub fn injected(&self) -> u64 {
        self.injected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_an_armed_step_fails_exactly_k_times() {
        let mut faults = TakeoverFaults::default();
        for step in TakeoverStep::ALL {
            assert_eq!(faults.check(step), Ok(()));
        }
        assert!(faults.armed().is_empty());
        faults.arm(TakeoverStep::Vip, 2);
        assert_eq!(faults.armed().get("vip"), Some(&2));
        assert_eq!(faults.check(TakeoverStep::Lease), Ok(()));
        assert_eq!(
            faults.check(TakeoverStep::Vip),
            Err(InjectedFault(TakeoverStep::Vip))
        );
        assert_eq!(faults.armed().get("vip"), Some(&1));
        assert!(faults.check(TakeoverStep::Vip).is_err());
        assert_eq!(faults.check(TakeoverStep::Vip), Ok(()));
        assert!(faults.armed().is_empty());
        assert_eq!(faults.injected(), 2);
        // Arming with 0 disarms.
        faults.arm(TakeoverStep::Arp, 5);
        faults.arm(TakeoverStep::Arp, 0);
        assert_eq!(faults.check(TakeoverStep::Arp), Ok(()));
    }

    #[test]
    fn steps_parse_from_their_names_and_serialize_as_them() {
        for step in TakeoverStep::ALL {
            assert_eq!(step.as_str().parse::<TakeoverStep>(), Ok(step));
            assert_eq!(
                serde_json::to_string(&step).unwrap(),
                format!("\"{}\"", step.as_str())
            );
        }
        assert!("link".parse::<TakeoverStep>().is_err());
    }
}
