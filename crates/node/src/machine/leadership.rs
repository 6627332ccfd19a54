//! Who serves, decided without I/O: the serving state of one node (clone,
//! elected and waiting for the barrier, taking over, backing off after a
//! failed takeover, serving), the lease entitlement, and when the node must
//! refuse or hand over the leadership (drained, unhealthy, state lost, a
//! takeover that keeps failing).
//!
//! Call order (the driver's loop, once per turn and after every raft
//! `ready`):
//! 1. report what happened: [`Leadership::handle_role`] when raft's role
//!    changed, [`Leadership::handle_applied`],
//!    [`Leadership::handle_quorum_acked`] after each replication message, [`Leadership::handle_health`],
//!    [`Leadership::set_draining`], the outcome of a requested takeover
//!    ([`Leadership::handle_takeover_done`] or
//!    [`Leadership::handle_takeover_failed`]), a snapshot that could not be
//!    installed ([`Leadership::handle_state_lost`]);
//! 2. perform every [`Action`] [`Leadership::poll_action`] returns, in
//!    order, until it returns `None` (a takeover's outcome is reported back
//!    before the next poll);
//! 3. while [`Leadership::is_serving`], keep the kernel lease entitled up to
//!    [`Leadership::quorum_acked`].
//!
//! Time is a monotonic millisecond count chosen by the driver.
//!
//! A takeover step that fails (the lease, listening, adding the VIP, the
//! gratuitous ARP) must not wedge the cluster (issue 11): what was taken is
//! released at once ([`Action::StepDown`]); while the node still has the
//! quorum's acknowledgement within one lease and has retries left it tries again
//! after a doubling backoff; otherwise it refuses the leadership for
//! [`TakeoverPolicy::refuse_ms`] and hands it to a peer, so another node
//! becomes primary.

use std::collections::VecDeque;

/// How a node retries a failed takeover and for how long it refuses the
/// leadership after giving up (`[supervision]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TakeoverPolicy {
    /// Attempts after the first failed one before the node gives up and
    /// hands the role on (default 2).
    pub retries: u32,
    /// The first retry waits this long; each next one twice as long
    /// (default 100 ms).
    pub backoff_ms: u64,
    /// After giving up, the node refuses the leadership this long (default
    /// 10 s), then may be elected again.
    pub refuse_ms: u64,
    /// The kernel lease (`daemon::LEASE`): a retry is allowed only while a
    /// quorum acknowledged this term's leadership within it.
    pub lease_ms: u64,
}

impl Default for TakeoverPolicy {
    fn default() -> Self {
        TakeoverPolicy {
            retries: 2,
            backoff_ms: 100,
            refuse_ms: 10_000,
            lease_ms: 500,
        }
    }
}

/// A node unfit to lead hands the role over again at most this often (a
/// transfer that times out is retried, maybe to another peer).
pub const HANDOVER_EVERY_MS: u64 = 500;
/// A step-down this soon after a planned handover (a migration, a drain)
/// keeps the silent VIP for [`VIP_LINGER_MS`]: clients' packets that still
/// arrive are captured and handed to the next primary.
pub const PLANNED_WINDOW_MS: u64 = 5_000;
/// How long a deposed primary keeps the (silent) VIP after a planned
/// handover.
pub const VIP_LINGER_MS: u64 = 1_500;

/// Where this node stands as a primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    /// A clone: applies, serves nothing.
    No,
    /// Elected; waiting until the log up to `barrier` is applied (the
    /// leader's first entry of its term is the barrier).
    Awaiting { barrier: u64 },
    /// A takeover was requested and its outcome not reported yet.
    TakingOver { attempt: u32 },
    /// A takeover failed; the next attempt is due at `until_ms`.
    Backoff { attempt: u32, until_ms: u64 },
    /// Holds the VIP and serves.
    Yes,
}

/// Why a primary stops serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepDownReason {
    LostLeadership,
    TakeoverFailed,
    StateLost,
    ShuttingDown,
}

impl StepDownReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StepDownReason::LostLeadership => "lost leadership",
            StepDownReason::TakeoverFailed => "take-over failed",
            StepDownReason::StateLost => "state lost",
            StepDownReason::ShuttingDown => "shutting down",
        }
    }
}

/// When a node stepping down removes the VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VipRelease {
    /// At once.
    Now,
    /// After a planned handover: the machine asks for
    /// [`Action::RemoveVip`] when this time comes.
    Later,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Take the service up: the lease, the rebuilt connections, the
    /// listener, the VIP (`vip_kept`: it may still be on the interface from
    /// a lingering step-down), the announcement. Report the outcome before
    /// the next poll.
    TakeOver { attempt: u32, vip_kept: bool },
    /// Stop serving and release everything taken: no more verdicts, held
    /// packets dropped and their bytes handed on, the lease revoked,
    /// sockets closed in repair mode, the listener closed, the VIP removed
    /// now or later.
    StepDown {
        why: StepDownReason,
        vip: VipRelease,
        /// It was serving (not only elected or retrying).
        was_serving: bool,
    },
    /// The lingering VIP goes now.
    RemoveVip,
    /// Transfer the leadership to the best reachable peer.
    HandOver { why: &'static str },
    /// Tell raft to refuse (or again accept) the leadership.
    RefuseLeadership(bool),
}

/// The serving state machine of one node.
#[derive(Debug)]
pub struct Leadership {
    policy: TakeoverPolicy,
    serving: Serving,
    leader: bool,
    applied: u64,
    draining: bool,
    healthy: bool,
    state_lost: Option<String>,
    /// Gave up taking over: refuses the leadership until then, and why.
    refused: Option<(u64, String)>,
    /// What raft was last told about refusing the leadership.
    told_refuse: bool,
    last_handover_ms: Option<u64>,
    planned_handover_ms: Option<u64>,
    vip_remove_at_ms: Option<u64>,
    /// Failed takeover attempts this term.
    failures: u32,
    /// When a majority of the voters last acknowledged this term's
    /// leadership (the replica's `quorum_acked_at`), in this machine's ms.
    quorum_acked: Option<u64>,
    actions: VecDeque<Action>,
    takeovers_failed: u64,
}

impl Leadership {
    /// A clone, not (yet) leader.
    pub fn new(policy: TakeoverPolicy) -> Leadership {
        Leadership {
            policy,
            serving: Serving::No,
            leader: false,
            applied: 0,
            draining: false,
            healthy: true,
            state_lost: None,
            refused: None,
            told_refuse: false,
            last_handover_ms: None,
            planned_handover_ms: None,
            vip_remove_at_ms: None,
            failures: 0,
            quorum_acked: None,
            actions: VecDeque::new(),
            takeovers_failed: 0,
        }
    }

    pub fn serving(&self) -> Serving {
        self.serving
    }

    /// Holds the VIP and gives verdicts.
    pub fn is_serving(&self) -> bool {
        self.serving == Serving::Yes
    }

    /// A deposed primary still holds the silent VIP (captured client
    /// packets go to the next primary).
    pub fn vip_lingering(&self) -> bool {
        self.vip_remove_at_ms.is_some()
    }

    pub fn draining(&self) -> bool {
        self.draining
    }

    /// Takeovers that failed since start.
    pub fn takeovers_failed(&self) -> u64 {
        self.takeovers_failed
    }

    /// Why this node may not lead, if it may not (for `status`).
    pub fn unfit_reason(&self, now_ms: u64) -> Option<String> {
        if let Some(lost) = &self.state_lost {
            return Some(lost.clone());
        }
        if let Some((until, why)) = &self.refused {
            if now_ms < *until {
                return Some(why.clone());
            }
        }
        None
    }

    /// Raft's role changed: `leader` now or not; `last_index` is the last
    /// index of the log (the new term's first entry is the barrier).
    pub fn handle_role(&mut self, now_ms: u64, leader: bool, last_index: u64) {
        self.leader = leader;
        if leader {
            self.failures = 0;
            self.serving = Serving::Awaiting {
                barrier: last_index,
            };
        } else if self.serving != Serving::No {
            self.step_down(now_ms, StepDownReason::LostLeadership);
        }
    }

    /// Everything up to `applied` has been applied.
    pub fn handle_applied(&mut self, applied: u64) {
        self.applied = applied;
    }

    /// The replica's latest quorum acknowledgement of this term's
    /// leadership (`Replica::quorum_acked_at`; `None` when not leader or
    /// not yet acknowledged).
    pub fn handle_quorum_acked(&mut self, at_ms: Option<u64>) {
        self.quorum_acked = at_ms;
    }

    /// The supervisor's verdict on this node's health.
    pub fn handle_health(&mut self, healthy: bool) {
        if healthy != self.healthy {
            self.healthy = healthy;
            self.last_handover_ms = None;
        }
    }

    /// `tandem drain` / `undrain`.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// A handover on purpose (migration, drain) began: a step-down soon
    /// after keeps the VIP a little while.
    pub fn handle_planned_handover(&mut self, now_ms: u64) {
        self.planned_handover_ms = Some(now_ms);
        self.last_handover_ms = Some(now_ms);
    }

    /// A snapshot from the leader could not be installed: raft has replaced
    /// the log, so this node's state is not the log's. It stops serving,
    /// refuses the leadership and hands it on, for good (the driver stops
    /// applying).
    pub fn handle_state_lost(&mut self, now_ms: u64, why: String) {
        self.state_lost = Some(why);
        if self.serving != Serving::No {
            self.step_down(now_ms, StepDownReason::StateLost);
        }
    }

    /// A later snapshot was installed after all: the state is the log's
    /// again.
    pub fn handle_state_recovered(&mut self) {
        self.state_lost = None;
    }

    pub fn state_lost(&self) -> Option<&str> {
        self.state_lost.as_deref()
    }

    /// Every step of the requested takeover succeeded: serving.
    pub fn handle_takeover_done(&mut self) {
        if matches!(self.serving, Serving::TakingOver { .. }) {
            self.serving = Serving::Yes;
            self.failures = 0;
        }
    }

    /// A step of the requested takeover failed (`step` says which, for the
    /// log and `status`). What was taken is released; the node retries
    /// with backoff while the lease budget holds, else gives the role up.
    pub fn handle_takeover_failed(&mut self, now_ms: u64, step: &str) {
        let Serving::TakingOver { attempt } = self.serving else {
            return;
        };
        self.takeovers_failed += 1;
        self.failures += 1;
        self.step_down_with(StepDownReason::TakeoverFailed, VipRelease::Now);
        let in_lease = self
            .quorum_acked()
            .is_some_and(|at| now_ms.saturating_sub(at) < self.policy.lease_ms);
        if self.leader && in_lease && self.failures <= self.policy.retries {
            let wait = self
                .policy
                .backoff_ms
                .saturating_mul(1 << (self.failures - 1).min(16));
            self.serving = Serving::Backoff {
                attempt: attempt + 1,
                until_ms: now_ms + wait,
            };
        } else {
            self.refused = Some((
                now_ms + self.policy.refuse_ms,
                format!(
                    "take-over failed {} times (last: {step}); refusing the primary role",
                    self.failures
                ),
            ));
            // Hand over at once; should this node still (or again) be the
            // leader when the refusal is over, it tries again then.
            self.last_handover_ms = None;
            self.failures = 0;
            self.serving = Serving::Awaiting { barrier: 0 };
        }
    }

    /// The node is stopping: a primary steps down so its clients are kept
    /// for the next one.
    pub fn handle_shutdown(&mut self, now_ms: u64) {
        if self.serving != Serving::No {
            self.step_down(now_ms, StepDownReason::ShuttingDown);
        }
        if self.vip_remove_at_ms.take().is_some() {
            self.actions.push_back(Action::RemoveVip);
        }
    }

    /// The latest instant by which a majority of the voters (this node
    /// included) had acknowledged this term's leadership: the lease is
    /// entitled up to it.
    pub fn quorum_acked(&self) -> Option<u64> {
        self.quorum_acked
    }

    /// The next thing to do, `None` when there is nothing.
    pub fn poll_action(&mut self, now_ms: u64) -> Option<Action> {
        if self.actions.is_empty() {
            self.decide(now_ms);
        }
        self.actions.pop_front()
    }

    /// What was already decided by a `handle_*` call (a step-down), without
    /// deciding anything new: for the driver in the middle of a raft
    /// `ready`, where a takeover must not start.
    pub fn poll_queued(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn unfit(&self, now_ms: u64) -> Option<&'static str> {
        if self.draining {
            Some("drained")
        } else if self.state_lost.is_some() {
            Some("state lost")
        } else if !self.healthy {
            Some("unhealthy")
        } else if self
            .refused
            .as_ref()
            .is_some_and(|(until, _)| now_ms < *until)
        {
            Some("take-over failed")
        } else {
            None
        }
    }

    fn decide(&mut self, now_ms: u64) {
        if self.vip_remove_at_ms.is_some_and(|at| now_ms >= at) {
            self.vip_remove_at_ms = None;
            self.actions.push_back(Action::RemoveVip);
        }
        if self
            .refused
            .as_ref()
            .is_some_and(|(until, _)| now_ms >= *until)
        {
            self.refused = None;
        }
        let unfit = self.unfit(now_ms);
        if unfit.is_some() != self.told_refuse {
            self.told_refuse = unfit.is_some();
            self.actions
                .push_back(Action::RefuseLeadership(self.told_refuse));
        }
        if let Some(why) = unfit {
            if self.leader
                && self
                    .last_handover_ms
                    .is_none_or(|at| now_ms.saturating_sub(at) > HANDOVER_EVERY_MS)
            {
                // Elected anyway (the only candidate able to win, or the
                // transfer timed out): pass the role on again.
                self.last_handover_ms = Some(now_ms);
                self.actions.push_back(Action::HandOver { why });
            }
        }
        let may_serve = self.leader && self.state_lost.is_none() && self.refused.is_none();
        match self.serving {
            Serving::Awaiting { barrier } if self.applied >= barrier && may_serve => {
                self.take_over(0);
            }
            Serving::Backoff { attempt, until_ms } if now_ms >= until_ms => {
                if may_serve {
                    self.take_over(attempt);
                } else {
                    self.serving = Serving::No;
                }
            }
            _ => {}
        }
    }

    fn take_over(&mut self, attempt: u32) {
        self.serving = Serving::TakingOver { attempt };
        let vip_kept = self.vip_remove_at_ms.take().is_some();
        self.actions
            .push_back(Action::TakeOver { attempt, vip_kept });
    }

    fn step_down(&mut self, now_ms: u64, why: StepDownReason) {
        let planned = self
            .planned_handover_ms
            .is_some_and(|at| now_ms.saturating_sub(at) < PLANNED_WINDOW_MS);
        if planned {
            self.vip_remove_at_ms = Some(now_ms + VIP_LINGER_MS);
            self.step_down_with(why, VipRelease::Later);
        } else {
            self.step_down_with(why, VipRelease::Now);
        }
    }

    fn step_down_with(&mut self, why: StepDownReason, vip: VipRelease) {
        let was_serving = self.serving == Serving::Yes;
        self.serving = Serving::No;
        if vip == VipRelease::Now {
            self.vip_remove_at_ms = None;
        }
        self.actions.push_back(Action::StepDown {
            why,
            vip,
            was_serving,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(l: &mut Leadership, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(a) = l.poll_action(now) {
            out.push(a);
            assert!(out.len() < 100, "the machine keeps deciding: {out:?}");
        }
        out
    }

    /// A three-member node elected at `now`, its leadership just acknowledged.
    fn elected(now: u64) -> Leadership {
        let mut l = Leadership::new(TakeoverPolicy::default());
        l.handle_quorum_acked(Some(now));
        l.handle_role(now, true, 10);
        l
    }

    fn take_over(attempt: u32) -> Action {
        Action::TakeOver {
            attempt,
            vip_kept: false,
        }
    }

    #[test]
    fn serving_waits_for_the_barrier() {
        let mut l = elected(0);
        l.handle_applied(9);
        assert_eq!(drain(&mut l, 1), vec![]);
        assert_eq!(l.serving(), Serving::Awaiting { barrier: 10 });
        l.handle_applied(10);
        assert_eq!(drain(&mut l, 2), vec![take_over(0)]);
        assert!(!l.is_serving(), "not before the takeover is reported done");
        l.handle_takeover_done();
        assert!(l.is_serving());
        assert_eq!(drain(&mut l, 3), vec![]);
    }

    #[test]
    fn losing_leadership_steps_down_at_once() {
        let mut l = elected(0);
        l.handle_applied(10);
        drain(&mut l, 0);
        l.handle_takeover_done();
        l.handle_role(5, false, 12);
        assert_eq!(
            l.poll_queued(),
            Some(Action::StepDown {
                why: StepDownReason::LostLeadership,
                vip: VipRelease::Now,
                was_serving: true,
            })
        );
        assert!(!l.is_serving());
        assert_eq!(drain(&mut l, 6), vec![]);
    }

    #[test]
    fn a_failed_takeover_is_released_then_retried_with_doubling_backoff() {
        let mut l = elected(0);
        l.handle_applied(10);
        assert_eq!(drain(&mut l, 0), vec![take_over(0)]);
        l.handle_takeover_failed(0, "adding the VIP");
        let released = drain(&mut l, 0);
        assert_eq!(
            released,
            vec![Action::StepDown {
                why: StepDownReason::TakeoverFailed,
                vip: VipRelease::Now,
                was_serving: false,
            }]
        );
        assert_eq!(
            l.serving(),
            Serving::Backoff {
                attempt: 1,
                until_ms: 100
            }
        );
        assert_eq!(drain(&mut l, 99), vec![], "not before the backoff");
        l.handle_quorum_acked(Some(100));
        assert_eq!(drain(&mut l, 100), vec![take_over(1)]);
        l.handle_takeover_failed(100, "gratuitous ARP");
        drain(&mut l, 100);
        assert_eq!(
            l.serving(),
            Serving::Backoff {
                attempt: 2,
                until_ms: 300
            },
            "the second wait is twice the first"
        );
        l.handle_quorum_acked(Some(300));
        assert_eq!(drain(&mut l, 300), vec![take_over(2)]);
        l.handle_takeover_done();
        assert!(l.is_serving());
        assert_eq!(l.takeovers_failed(), 2);
    }

    #[test]
    fn a_takeover_that_keeps_failing_hands_the_role_on_and_refuses_it() {
        let mut l = elected(0);
        l.handle_applied(10);
        let mut now = 0;
        let mut attempts = 0;
        loop {
            l.handle_quorum_acked(Some(now));
            let actions = drain(&mut l, now);
            if actions.iter().any(|a| matches!(a, Action::TakeOver { .. })) {
                attempts += 1;
                l.handle_takeover_failed(now, "listening");
            }
            if l.unfit_reason(now).is_some() {
                break;
            }
            now += 50;
            assert!(now < 10_000, "never gave up");
        }
        assert_eq!(attempts, 3, "the first attempt and two retries");
        let actions = drain(&mut l, now);
        assert!(
            actions.contains(&Action::RefuseLeadership(true)),
            "{actions:?}"
        );
        assert!(
            actions.contains(&Action::HandOver {
                why: "take-over failed"
            }),
            "{actions:?}"
        );
        assert!(l.unfit_reason(now).unwrap().contains("listening"));
        // Still the leader (nobody took the role): the handover is retried,
        // not every turn.
        assert_eq!(drain(&mut l, now + 10), vec![]);
        let again = drain(&mut l, now + HANDOVER_EVERY_MS + 1);
        assert!(matches!(again[..], [Action::HandOver { .. }]), "{again:?}");
        // Another node became leader: this one stays a clone, and accepts
        // the role again once the refusal is over.
        l.handle_role(now + 600, false, 20);
        drain(&mut l, now + 600);
        let later = now + TakeoverPolicy::default().refuse_ms;
        assert_eq!(drain(&mut l, later), vec![Action::RefuseLeadership(false)]);
        assert_eq!(l.serving(), Serving::No);
    }

    #[test]
    fn no_retry_without_the_quorum_within_a_lease() {
        let mut l = elected(0);
        l.handle_applied(10);
        drain(&mut l, 0);
        // The quorum was last heard 600 ms ago: the lease budget is spent.
        l.handle_takeover_failed(600, "the lease");
        let actions = drain(&mut l, 600);
        assert!(
            actions.contains(&Action::RefuseLeadership(true)),
            "{actions:?}"
        );
        assert!(actions
            .iter()
            .all(|a| !matches!(a, Action::TakeOver { .. })));
    }

    #[test]
    fn refused_then_still_leader_takes_over_again_when_the_refusal_ends() {
        let policy = TakeoverPolicy {
            retries: 0,
            ..TakeoverPolicy::default()
        };
        let mut l = Leadership::new(policy);
        l.handle_role(0, true, 1);
        l.handle_applied(1);
        assert_eq!(drain(&mut l, 0), vec![take_over(0)]);
        l.handle_takeover_failed(0, "listening");
        let actions = drain(&mut l, 0);
        assert!(actions.contains(&Action::RefuseLeadership(true)));
        // A single member stays leader; nothing is tried during the refusal.
        for now in (1..policy.refuse_ms).step_by(97) {
            assert!(drain(&mut l, now)
                .iter()
                .all(|a| !matches!(a, Action::TakeOver { .. })));
        }
        let actions = drain(&mut l, policy.refuse_ms);
        assert_eq!(actions, vec![Action::RefuseLeadership(false), take_over(0)]);
    }

    #[test]
    fn a_lost_state_steps_down_refuses_and_hands_over() {
        let mut l = elected(0);
        l.handle_applied(10);
        drain(&mut l, 0);
        l.handle_takeover_done();
        l.handle_state_lost(5, "snapshot at 40 not installed".into());
        assert!(matches!(
            l.poll_queued(),
            Some(Action::StepDown {
                why: StepDownReason::StateLost,
                was_serving: true,
                ..
            })
        ));
        let actions = drain(&mut l, 5);
        assert_eq!(
            actions,
            vec![
                Action::RefuseLeadership(true),
                Action::HandOver { why: "state lost" }
            ]
        );
        // Never serves again on this state, however long it leads.
        assert!(drain(&mut l, 100_000)
            .iter()
            .all(|a| !matches!(a, Action::TakeOver { .. })));
        assert!(l.unfit_reason(100_000).is_some());
    }

    #[test]
    fn a_planned_handover_keeps_the_vip_for_a_while() {
        let mut l = elected(0);
        l.handle_applied(10);
        drain(&mut l, 0);
        l.handle_takeover_done();
        l.handle_planned_handover(100);
        l.handle_role(200, false, 11);
        assert_eq!(
            l.poll_queued(),
            Some(Action::StepDown {
                why: StepDownReason::LostLeadership,
                vip: VipRelease::Later,
                was_serving: true,
            })
        );
        assert!(l.vip_lingering());
        assert_eq!(drain(&mut l, 200 + VIP_LINGER_MS - 1), vec![]);
        assert_eq!(drain(&mut l, 200 + VIP_LINGER_MS), vec![Action::RemoveVip]);
        assert!(!l.vip_lingering());
    }

    #[test]
    fn a_drained_leader_hands_over_every_so_often() {
        let mut l = elected(0);
        l.set_draining(true);
        let first = drain(&mut l, 0);
        assert_eq!(
            first,
            vec![
                Action::RefuseLeadership(true),
                Action::HandOver { why: "drained" }
            ]
        );
        assert_eq!(drain(&mut l, HANDOVER_EVERY_MS), vec![]);
        assert_eq!(
            drain(&mut l, HANDOVER_EVERY_MS + 1),
            vec![Action::HandOver { why: "drained" }]
        );
        l.set_draining(false);
        assert_eq!(drain(&mut l, 700), vec![Action::RefuseLeadership(false)]);
    }

    #[test]
    fn no_retry_when_no_quorum_acknowledged_this_term() {
        let mut l = elected(0);
        l.handle_applied(10);
        drain(&mut l, 0);
        // The replica reports no quorum acknowledgement (a new term, or
        // not leader any more): no retry, whatever the clock says.
        l.handle_quorum_acked(None);
        l.handle_takeover_failed(1, "listening");
        let actions = drain(&mut l, 1);
        assert!(
            actions.contains(&Action::RefuseLeadership(true)),
            "{actions:?}"
        );
    }
}
