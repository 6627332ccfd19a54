//! [`NodeMachine`]: one node's whole protocol logic, without I/O — the
//! replica (raft-rs behind `tandem_replica`, itself sans-IO), the service
//! group it applies to, the primary's packet path ([`Intake`]) and who
//! serves ([`Leadership`]). The daemon feeds it what happened and performs
//! what it asks for; the cluster simulation (crates/node/tests/node_sim.rs)
//! does the same with a simulated network and kernel.
//!
//! Call order, once per turn of the driver's loop (quinn-proto's
//! `Connection` is the model):
//! 1. inputs, as they come: [`NodeMachine::handle_frame`] (a replication
//!    message), [`NodeMachine::handle_tick`] (a raft tick), each captured
//!    packet ([`NodeMachine::handle_packet`]: its verdict now, or held)
//!    then [`NodeMachine::finish_capture`] after the batch;
//! 2. [`NodeMachine::primary_duties`];
//! 3. while [`NodeMachine::has_ready`]: [`NodeMachine::handle_ready`],
//!    perform every [`Request`] from [`NodeMachine::poll_request`] in
//!    order, then [`NodeMachine::advance`];
//! 4. [`NodeMachine::after_ready`], then alternately perform the queued
//!    requests and ask [`NodeMachine::poll_decision`] until both are empty;
//!    a takeover's outcome is reported back
//!    ([`NodeMachine::handle_takeover_done`] / `_failed`) at once;
//! 5. when [`NodeMachine::snapshot_due`], copy the group and hand the
//!    encoded bytes back with [`NodeMachine::compact`].
//!
//! Time is passed in as a [`Time`]: nothing here reads a clock.

use crate::config::ServiceKind;
use crate::group::{Item, LogEntry, ServiceGroup};
use crate::machine::intake::{Applied, Captured, Intake, NodeEffect};
use crate::machine::leadership::{Action, Leadership, TakeoverPolicy};
use crate::machine::takeover::TakeoverPlan;
use crate::machine::Verdict;
use crate::parameters::{GroupParameters, ParameterSource};
use crate::proposer::Proposer;
use crate::report::Counters;
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::Instant;
use tandem_core::classify::{SynGuard, SynLimiter};
use tandem_core::sdk::Limits;
use tandem_core::shadow::{ConnKey, ShadowConfig};
use tandem_replica::{EnvelopeError, NodeId, Replica, StateRole};
use tandem_wire::IpTcpRepr;

/// The time of an input, as the driver reads it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time {
    /// A monotonic instant (commit latency, handover waits).
    pub instant: Instant,
    /// Monotonic milliseconds (the leadership machine's clock).
    pub mono_ms: u64,
    /// The wall clock in ms since the epoch: entry timestamps, the SYN
    /// guard, the service's timers in log time.
    pub wall_ms: u64,
}

/// How often a node whose state is lost (a snapshot it could not install)
/// asks the leader for a snapshot again.
pub const STATE_LOST_RETRY_MS: u64 = 1_000;

/// When the node takes a snapshot (and so compacts its log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// After this many applied payloads.
    pub every_payloads: u64,
    /// Or this often (ms) if anything was applied since the last one.
    pub every_ms: u64,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        SnapshotPolicy {
            every_payloads: 20_000,
            every_ms: 30_000,
        }
    }
}

/// Everything a node machine is built from (the daemon reads it from the
/// config; the simulation makes it up).
pub struct NodeSetup {
    pub me: NodeId,
    pub vip: Ipv4Addr,
    pub kind: ServiceKind,
    /// What the service is constructed with (the same on every node).
    pub service_options: crate::services::ServiceOptions,
    pub shadow: ShadowConfig,
    pub limits: Limits,
    /// The SDK's seed, the same on every replica of a service.
    pub group_seed: u64,
    pub takeover: TakeoverPolicy,
    pub snapshot: SnapshotPolicy,
    pub proposer: Proposer,
    pub syn_guard: SynGuard,
    pub rst_limiter: SynLimiter,
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Save raft's term and vote durably (`tandem_replica::save_hard_state`)
    /// before performing any later request; a node that cannot must stop.
    SaveHardState(tandem_replica::HardState),
    /// Send a sealed replication message.
    Send { to: NodeId, bytes: Vec<u8> },
    /// Verdicts, socket effects, raw packets.
    Effect(NodeEffect),
    /// Take over, step down, hand over, refuse the leadership, remove the
    /// VIP.
    Leadership(Action),
}

/// What one `ready` amounted to, for the driver's logs and metrics.
#[derive(Debug, Clone, Default)]
pub struct ReadyReport {
    pub applied: Applied,
    pub messages: usize,
    pub message_bytes: usize,
    pub role: Option<StateRole>,
    pub role_changed: bool,
    pub leader: Option<NodeId>,
    pub leader_changed: bool,
    pub term: u64,
    /// A snapshot was installed (`Ok(index)`) or could not be (`Err`).
    pub installed: Option<Result<u64, String>>,
}

/// One node's protocol logic.
pub struct NodeMachine {
    me: NodeId,
    vip: Ipv4Addr,
    kind: ServiceKind,
    service_options: crate::services::ServiceOptions,
    shadow: ShadowConfig,
    limits: Limits,
    replica: Replica,
    group: ServiceGroup,
    intake: Intake,
    leadership: Leadership,
    counters: Counters,
    requests: VecDeque<Request>,
    snapshot: SnapshotPolicy,
    /// The unique, increasing index under which each payload is applied.
    payloads_applied: u64,
    payloads_at_snapshot: u64,
    last_snapshot_ms: Option<u64>,
    snapshot_index: u64,
    want_snapshot_now: bool,
    /// When a node whose state is lost last asked for a snapshot.
    snapshot_requested_ms: Option<u64>,
    /// This node's parameters (crate::parameters), proposed as the first
    /// entry of each term it leads.
    parameters: GroupParameters,
    /// The group's parameters have been compared with ours since they
    /// last changed (set at apply, or by a snapshot).
    parameters_checked: bool,
    /// Why this node cannot run this group (its parameters differ).
    disagreement: Option<String>,
}

impl NodeMachine {
    pub fn new(setup: NodeSetup, replica: Replica) -> NodeMachine {
        let parameters = GroupParameters::of(ParameterSource {
            kind: &setup.kind,
            options: &setup.service_options,
            shadow: &setup.shadow,
            limits: &setup.limits,
            seed: setup.group_seed,
            snapshot_format: crate::group::GROUP_SNAPSHOT_VERSION,
        });
        let group = ServiceGroup::new(
            crate::services::fresh_with(setup.kind, &setup.service_options),
            setup.shadow,
            setup.group_seed,
        )
        .with_limits(setup.limits);
        NodeMachine {
            me: setup.me,
            vip: setup.vip,
            kind: setup.kind,
            service_options: setup.service_options,
            shadow: setup.shadow,
            limits: setup.limits,
            replica,
            group,
            intake: Intake::new(setup.proposer, setup.syn_guard, setup.rst_limiter),
            leadership: Leadership::new(setup.takeover),
            counters: Counters::default(),
            requests: VecDeque::new(),
            snapshot: setup.snapshot,
            payloads_applied: 0,
            payloads_at_snapshot: 0,
            last_snapshot_ms: None,
            snapshot_index: 0,
            want_snapshot_now: false,
            snapshot_requested_ms: None,
            parameters,
            parameters_checked: false,
            disagreement: None,
        }
    }

    /// This node's parameters, as it proposes them.
    pub fn parameters(&self) -> &GroupParameters {
        &self.parameters
    }

    /// Why this node cannot take part in its group: its parameters differ
    /// from the group's (each difference named, with both values). Such a
    /// node applies nothing more and refuses the leadership; the driver
    /// stops it (check after each [`NodeMachine::handle_ready`]).
    pub fn disagreement(&self) -> Option<&str> {
        self.disagreement.as_deref()
    }

    pub fn me(&self) -> NodeId {
        self.me
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// For the driver's administrative calls (keys, status, transfers).
    pub fn replica_mut(&mut self) -> &mut Replica {
        &mut self.replica
    }

    pub fn group(&self) -> &ServiceGroup {
        &self.group
    }

    /// For work the driver moves off its thread (a snapshot's copy, the
    /// state hash); the group must be put back unchanged.
    pub fn group_mut(&mut self) -> &mut ServiceGroup {
        &mut self.group
    }

    pub fn leadership(&self) -> &Leadership {
        &self.leadership
    }

    pub fn leadership_mut(&mut self) -> &mut Leadership {
        &mut self.leadership
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    pub fn intake(&self) -> &Intake {
        &self.intake
    }

    /// Holds the VIP and gives verdicts.
    pub fn is_serving(&self) -> bool {
        self.leadership.is_serving()
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    /// A sealed replication message arrived; its sender, if it was
    /// authentic (rejections are counted by the replica's inbox).
    pub fn handle_frame(&mut self, t: Time, bytes: &[u8]) -> Result<NodeId, EnvelopeError> {
        // Acknowledgements are dated by the machine's clock (the lease).
        self.replica.set_clock(t.mono_ms);
        let from = self.replica.receive(bytes);
        self.leadership
            .handle_quorum_acked(self.replica.quorum_acked_at());
        from
    }

    pub fn handle_tick(&mut self) {
        self.replica.tick();
    }

    /// One captured packet (see [`Intake::handle_packet`]).
    pub fn handle_packet(
        &mut self,
        t: Time,
        packet: Captured<'_>,
        parsed: Option<&IpTcpRepr<'_>>,
    ) -> Option<Verdict> {
        self.intake.handle_packet(
            t.wall_ms,
            &self.group,
            self.leadership.is_serving(),
            self.leadership.vip_lingering(),
            packet,
            parsed,
            &mut self.counters,
        )
    }

    /// After a batch of captured packets: proposes what it collected.
    pub fn finish_capture(&mut self, t: Time) {
        self.intake
            .finish_batch(t.wall_ms, t.instant, &mut self.replica, &mut self.counters);
        self.queue_effects();
    }

    /// What only the primary does each turn (see
    /// [`Intake::primary_duties`]); `gave_up`: connections the kernel
    /// gave up on; `sweep`: about once a second.
    pub fn primary_duties(&mut self, t: Time, gave_up: Vec<ConnKey>, sweep: bool) {
        if !self.leadership.is_serving() {
            return;
        }
        self.intake.primary_duties(
            t.wall_ms,
            t.instant,
            &self.group,
            gave_up,
            sweep,
            &mut self.replica,
            &mut self.counters,
        );
        self.queue_effects();
    }

    /// The lease may be held up to this monotonic ms (the last time a
    /// quorum acknowledged this term's leadership), while serving as the
    /// leader.
    pub fn lease_entitled(&self) -> Option<u64> {
        if self.leadership.is_serving() && self.replica.role() == StateRole::Leader {
            self.replica.quorum_acked_at()
        } else {
            None
        }
    }

    /// When a quorum last acknowledged this term's leadership (monotonic
    /// ms), if this node leads: the lease a takeover grants is dated from
    /// it.
    pub fn quorum_acked(&self) -> Option<u64> {
        self.replica.quorum_acked_at()
    }

    pub fn has_ready(&self) -> bool {
        self.replica.has_ready()
    }

    /// Takes one raft `ready`: its messages to send, a snapshot to install,
    /// the committed entries to apply (and the verdicts and effects they
    /// release), a role change (a step-down is queued before anything
    /// else can happen). Perform the requests, then [`Self::advance`].
    pub fn handle_ready(&mut self, t: Time) -> ReadyReport {
        let out = self.replica.ready();
        let mut report = ReadyReport {
            messages: out.messages.len(),
            message_bytes: out.messages.iter().map(|(_, b)| b.len()).sum(),
            role: Some(out.role),
            role_changed: out.role_changed,
            leader: out.leader,
            leader_changed: out.leader_changed,
            term: out.term,
            ..ReadyReport::default()
        };
        // The term and vote are on disk before any message that depends
        // on them leaves.
        if let Some(hard_state) = out.hard_state {
            self.requests.push_back(Request::SaveHardState(hard_state));
        }
        self.requests.extend(
            out.messages
                .into_iter()
                .map(|(to, bytes)| Request::Send { to, bytes }),
        );
        if let Some(snapshot) = out.install_snapshot {
            report.installed = self.install_snapshot(t, snapshot.index, &snapshot.data);
            self.check_parameters(t);
        }
        report.applied = self.intake.apply_ready(
            t.instant,
            self.me,
            self.vip,
            self.leadership.is_serving(),
            self.leadership.state_lost().is_some(),
            &mut self.group,
            out.committed,
            out.dropped,
            &mut self.counters,
        );
        self.payloads_applied += report.applied.entries;
        self.check_parameters(t);
        self.queue_effects();
        if out.snapshot_wanted {
            self.want_snapshot_now = true;
        }
        if out.role_changed {
            let leader = out.role == StateRole::Leader;
            let mut barrier = self.replica.status().log.1;
            if leader && self.disagreement.is_none() {
                // Our parameters go first in the term: batched now, they
                // are the next entry, and serving waits until it applies
                // (a leader whose parameters the group does not share
                // finds out there and never serves).
                let entry = LogEntry {
                    timestamp_ms: t.wall_ms,
                    items: vec![Item::Parameters(self.parameters.clone())],
                };
                if self.replica.propose(entry.encode()).is_ok() {
                    barrier += 1;
                }
            }
            self.leadership.handle_role(t.mono_ms, leader, barrier);
            // A step-down is performed here, before the next ready: no
            // verdict may follow the loss of leadership.
            self.queue_leadership(t);
        }
        report
    }

    pub fn advance(&mut self) {
        self.replica.advance();
    }

    /// After the readies of a turn: what could not commit is handed on,
    /// and the leadership machine learns the node's health and progress.
    /// A node whose state is lost asks the leader for a snapshot again,
    /// every [`STATE_LOST_RETRY_MS`], until one installs.
    pub fn after_ready(&mut self, t: Time, healthy: bool) {
        if self.leadership.state_lost().is_some()
            && self.disagreement.is_none()
            && self
                .snapshot_requested_ms
                .is_none_or(|at| t.mono_ms.saturating_sub(at) >= STATE_LOST_RETRY_MS)
            && self.replica.request_snapshot()
        {
            self.snapshot_requested_ms = Some(t.mono_ms);
            self.counters.snapshots_requested += 1;
        }
        self.counters.entries_forwarded += self.intake.forward_handover(
            t.instant,
            self.leadership.is_serving(),
            &mut self.replica,
        );
        self.leadership.handle_health(healthy);
        self.leadership.handle_applied(self.replica.applied());
    }

    /// The next request already decided.
    pub fn poll_request(&mut self) -> Option<Request> {
        self.requests.pop_front()
    }

    /// Asks the leadership machine to decide (take over, hand over, ...):
    /// call when [`Self::poll_request`] is empty.
    pub fn poll_decision(&mut self, t: Time) -> Option<Request> {
        let action = self.leadership.poll_action(t.mono_ms)?;
        if let Action::RefuseLeadership(refuse) = action {
            self.replica.set_refuse_leadership(refuse);
        }
        Some(Request::Leadership(action))
    }

    /// The plan of the takeover requested ([`Action::TakeOver`]), at log
    /// time `t.wall_ms`; the handshakes it rebuilds as ESTABLISHED are
    /// remembered for SYN-ACK replays.
    pub fn takeover_plan(&mut self, t: Time) -> TakeoverPlan {
        let plan = crate::machine::takeover::plan(self.group.shadow(), t.wall_ms);
        self.intake
            .restored_handshakes(plan.handshakes.iter().copied());
        plan
    }

    pub fn handle_takeover_done(&mut self) {
        self.leadership.handle_takeover_done();
        self.counters.became_primary += 1;
    }

    /// A step of the requested takeover failed: what was taken is
    /// released (a [`Action::StepDown`] is queued), then retried or handed
    /// on (see [`Leadership::handle_takeover_failed`]).
    pub fn handle_takeover_failed(&mut self, t: Time, step: &str) {
        self.counters.takeovers_failed += 1;
        self.leadership
            .handle_quorum_acked(self.replica.quorum_acked_at());
        self.leadership.handle_takeover_failed(t.mono_ms, step);
        self.queue_leadership(t);
    }

    /// The node is stopping: a primary steps down first so its clients are
    /// kept for the next one.
    pub fn handle_shutdown(&mut self, t: Time) {
        self.leadership.handle_shutdown(t.mono_ms);
        self.queue_leadership(t);
    }

    /// Hands leadership to the most caught-up peer `reachable` says it can
    /// reach, avoiding `avoid` (the last one tried) when there is a choice.
    pub fn hand_over(
        &mut self,
        t: Time,
        reachable: impl Fn(u16) -> bool,
        avoid: Option<u16>,
    ) -> Result<NodeId, String> {
        let status = self.replica.status();
        let mut peers: Vec<NodeId> = status
            .voters
            .iter()
            .copied()
            .filter(|v| *v != self.me && reachable(v.slot))
            .collect();
        peers.sort_by_key(|v| std::cmp::Reverse(status.matched.get(v).copied().unwrap_or(0)));
        if peers.len() > 1 {
            if let Some(last) = avoid {
                peers.retain(|v| v.slot != last);
            }
        }
        let best = *peers
            .first()
            .ok_or_else(|| "no reachable peer to hand over to".to_string())?;
        self.replica.transfer_leader(best);
        self.leadership.handle_planned_handover(t.mono_ms);
        Ok(best)
    }

    /// `tandem migrate --to slot` on this node: a Raft leadership transfer
    /// to a voter at most `max_lag` entries behind. `None`: this node is
    /// that slot already; the error says why not, for the operator.
    pub fn migrate_to(
        &mut self,
        t: Time,
        slot: u16,
        max_lag: u64,
    ) -> Result<Option<NodeId>, String> {
        let status = self.replica.status();
        let me = self.me.slot;
        if status.role != StateRole::Leader {
            return Err(match status.leader {
                Some(l) => format!(
                    "node {me} is not the primary; node {} is: ask it (or use --lab)",
                    l.slot
                ),
                None => format!("node {me} is not the primary and no primary is known now"),
            });
        }
        if slot == me {
            return Ok(None);
        }
        let Some(target) = status.voters.iter().copied().find(|v| v.slot == slot) else {
            return Err(format!(
                "node {slot} is not a voter of this group (voters: {:?})",
                status.voters.iter().map(|v| v.slot).collect::<Vec<_>>()
            ));
        };
        let matched = status.matched.get(&target).copied().unwrap_or(0);
        let lag = status.commit.saturating_sub(matched);
        if lag > max_lag {
            return Err(format!(
                "node {slot} lags {lag} entries behind; try again when it has caught up"
            ));
        }
        self.replica.transfer_leader(target);
        self.leadership.handle_planned_handover(t.mono_ms);
        Ok(Some(target))
    }

    /// A snapshot is due: the applied index to copy the group at.
    pub fn snapshot_due(&mut self, t: Time) -> Option<u64> {
        if self.leadership.state_lost().is_some() {
            return None;
        }
        let since = self.payloads_applied - self.payloads_at_snapshot;
        let due = self.want_snapshot_now
            || since >= self.snapshot.every_payloads
            || (since > 0
                && self
                    .last_snapshot_ms
                    .is_none_or(|at| t.mono_ms.saturating_sub(at) >= self.snapshot.every_ms));
        if !due {
            return None;
        }
        let applied = self.replica.applied();
        if applied == 0 || applied <= self.snapshot_index && !self.want_snapshot_now {
            return None;
        }
        self.want_snapshot_now = false;
        self.last_snapshot_ms = Some(t.mono_ms);
        Some(applied)
    }

    /// Payloads applied so far (recorded with a snapshot's copy).
    pub fn payloads_applied(&self) -> u64 {
        self.payloads_applied
    }

    /// The group copied at `index` (when `payloads` had been applied) is
    /// encoded as `data`: the log is compacted up to it.
    pub fn compact(
        &mut self,
        index: u64,
        payloads: u64,
        data: Vec<u8>,
    ) -> Result<(), raft::StorageError> {
        self.replica.compact(index, data)?;
        self.snapshot_index = index;
        self.payloads_at_snapshot = payloads;
        self.counters.snapshots_taken += 1;
        Ok(())
    }

    fn install_snapshot(
        &mut self,
        t: Time,
        index: u64,
        data: &[u8],
    ) -> Option<Result<u64, String>> {
        if data.is_empty() {
            return None;
        }
        // Parameters first: a snapshot of a group configured unlike this
        // node is refused naming what differs (a restore might fail on it,
        // or worse, succeed).
        let mut differences = Vec::new();
        let restored = ServiceGroup::restore_if(
            crate::services::fresh_with(self.kind, &self.service_options),
            self.shadow,
            data,
            |group| {
                if let Some(group) = group {
                    differences = self.parameters.differences(group);
                }
                differences.is_empty()
            },
        );
        match restored {
            Ok(None) => {
                self.disagree(t, &differences);
                None
            }
            Ok(Some(group)) => {
                self.group = group.with_limits(self.limits);
                self.parameters_checked = false;
                self.snapshot_index = index;
                self.counters.snapshots_installed += 1;
                if self.leadership.state_lost().is_some() && self.disagreement.is_none() {
                    self.leadership.handle_state_recovered();
                }
                Some(Ok(index))
            }
            Err(err) => {
                // raft has already replaced the log with this snapshot: the
                // state here is no longer the log's. Serving or applying
                // from it would answer clients from a state no other
                // replica has.
                let why = format!("state lost: snapshot at {index} not installed: {err}");
                self.leadership.handle_state_lost(t.mono_ms, why.clone());
                self.queue_leadership(t);
                Some(Err(why))
            }
        }
    }

    /// Compares the group's parameters with ours once after they change.
    fn check_parameters(&mut self, t: Time) {
        if self.parameters_checked || self.disagreement.is_some() {
            return;
        }
        let Some(group) = self.group.parameters() else {
            return;
        };
        self.parameters_checked = true;
        let differences = self.parameters.differences(group);
        self.disagree(t, &differences);
    }

    /// The first disagreement stops this node's part in the group as a
    /// lost state does (nothing applied, leadership refused); the driver
    /// sees it in [`NodeMachine::disagreement`] and stops.
    fn disagree(&mut self, t: Time, differences: &[crate::parameters::Difference]) {
        if differences.is_empty() || self.disagreement.is_some() {
            return;
        }
        let why = crate::parameters::describe(differences);
        self.counters.parameter_disagreements += 1;
        self.disagreement = Some(why.clone());
        self.leadership.handle_state_lost(t.mono_ms, why);
        self.queue_leadership(t);
    }

    fn queue_effects(&mut self) {
        while let Some(effect) = self.intake.poll_effect() {
            self.requests.push_back(Request::Effect(effect));
        }
    }

    /// Moves the leadership machine's queued actions to the requests; a
    /// step-down first drops what the intake held.
    fn queue_leadership(&mut self, t: Time) {
        while let Some(action) = self.leadership.poll_queued() {
            let step_down = matches!(action, Action::StepDown { .. });
            if let Action::StepDown { was_serving, .. } = action {
                self.counters.stepped_down += u64::from(was_serving);
            }
            if step_down {
                // The verdicts (DROP) of what was held come before the
                // driver releases the lease, VIP and sockets.
                self.intake
                    .step_down(t.wall_ms, t.instant, &mut self.counters);
            }
            self.queue_effects();
            self.requests.push_back(Request::Leadership(action));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::Effect;
    use crate::machine::intake::Captured;
    use std::time::Duration;
    use tandem_core::classify::Direction;
    use tandem_replica::{ClusterKey, Config};
    use tandem_wire::{IpRepr, Ipv4Repr, SeqNumber, TcpFlags, TcpOptionSet, TcpRepr};

    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    fn packet(to_client: bool, flags: TcpFlags, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
        let (src, dst, sp, dp) = if to_client {
            (VIP, CLIENT, 6379, 40_000)
        } else {
            (CLIENT, VIP, 40_000, 6379)
        };
        let mut options = TcpOptionSet::default();
        if flags.contains(TcpFlags::SYN) {
            options.mss = Some(1460);
        }
        IpTcpRepr {
            ip: IpRepr::V4(Ipv4Repr::tcp(src, dst)),
            tcp: TcpRepr {
                src_port: sp,
                dst_port: dp,
                seq_number: SeqNumber(seq),
                ack_number: SeqNumber(ack),
                flags,
                window_len: 4000,
                urgent_at: 0,
                options,
                payload,
            },
        }
        .to_bytes()
        .unwrap()
    }

    struct Harness {
        m: NodeMachine,
        base: Instant,
        now: u64,
        next_id: u32,
    }

    impl Harness {
        /// A single-member cluster (it elects itself).
        fn new(snapshot: SnapshotPolicy) -> Harness {
            let me = NodeId::new(1, 1);
            let key = ClusterKey::from_secret(b"node machine unit tests, 32 byte").unwrap();
            let replica = Replica::new(Config::new(me, vec![1]), key).unwrap();
            let setup = NodeSetup {
                me,
                vip: VIP,
                kind: ServiceKind::Kv,
                service_options: Default::default(),
                shadow: ShadowConfig::new(65_535),
                limits: Limits::default(),
                group_seed: 1,
                takeover: TakeoverPolicy::default(),
                snapshot,
                proposer: Proposer::new(64 * 1024, 5),
                syn_guard: SynGuard::new(SynLimiter::new(1000, 1000), 10_000, 10_000),
                rst_limiter: SynLimiter::new(10, 10),
            };
            Harness {
                m: NodeMachine::new(setup, replica),
                base: Instant::now(),
                now: 0,
                next_id: 0,
            }
        }

        fn t(&self) -> Time {
            Time {
                instant: self.base + Duration::from_millis(self.now),
                mono_ms: self.now,
                wall_ms: 1_700_000_000_000 + self.now,
            }
        }

        /// Runs the readies and decisions; takeovers succeed unless
        /// `fail_step` says otherwise. Returns every request, in order.
        fn pump(&mut self, fail_step: Option<&str>) -> Vec<Request> {
            let mut all = Vec::new();
            while self.m.has_ready() {
                let t = self.t();
                self.m.handle_ready(t);
                while let Some(r) = self.m.poll_request() {
                    all.push(r);
                }
                self.m.advance();
            }
            let t = self.t();
            self.m.after_ready(t, true);
            loop {
                while let Some(r) = self.m.poll_request() {
                    all.push(r);
                }
                let Some(decided) = self.m.poll_decision(t) else {
                    break;
                };
                if let Request::Leadership(Action::TakeOver { .. }) = decided {
                    match fail_step {
                        Some(step) => self.m.handle_takeover_failed(t, step),
                        None => self.m.handle_takeover_done(),
                    }
                }
                all.push(decided);
            }
            all
        }

        fn tick(&mut self, fail_step: Option<&str>) -> Vec<Request> {
            self.now += 10;
            self.m.handle_tick();
            self.pump(fail_step)
        }

        fn serve(&mut self) {
            for _ in 0..200 {
                self.tick(None);
                if self.m.is_serving() {
                    return;
                }
            }
            panic!("a single member never served");
        }

        fn capture(&mut self, direction: Direction, bytes: &[u8]) -> (u32, Option<Verdict>) {
            self.next_id += 1;
            let id = self.next_id;
            let t = self.t();
            let parsed = IpTcpRepr::parse(
                bytes,
                tandem_wire::tcp::ParseChecks {
                    verify_checksum: false,
                    options: tandem_wire::tcp::OptionsMode::Linux,
                },
            )
            .ok();
            let verdict = self.m.handle_packet(
                t,
                Captured {
                    id,
                    direction,
                    bytes,
                },
                parsed.as_ref(),
            );
            (id, verdict)
        }
    }

    fn verdicts_of(requests: &[Request]) -> Vec<(u32, Verdict)> {
        requests
            .iter()
            .filter_map(|r| match r {
                Request::Effect(NodeEffect::Verdicts(v)) => Some(v.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    #[test]
    fn a_request_is_released_only_once_committed_and_before_its_reply() {
        let mut h = Harness::new(SnapshotPolicy::default());
        h.serve();
        // The handshake: the SYN passes at once, the SYN-ACK waits.
        let (_, syn) = h.capture(
            Direction::FromClient,
            &packet(false, TcpFlags::SYN, 1000, 0, &[]),
        );
        assert_eq!(syn, Some(Verdict::Accept));
        let synack = packet(true, TcpFlags::SYN | TcpFlags::ACK, 5000, 1001, &[]);
        let (synack_id, held) = h.capture(Direction::FromServer, &synack);
        assert_eq!(held, None, "a SYN-ACK is held until committed");
        let t = h.t();
        h.m.finish_capture(t);
        assert!(
            verdicts_of(&std::iter::from_fn(|| h.m.poll_request()).collect::<Vec<_>>()).is_empty(),
            "no verdict before the commit"
        );
        let committed = h.tick(None);
        assert_eq!(verdicts_of(&committed), vec![(synack_id, Verdict::Accept)]);
        // The request: held, then released before the service's reply.
        let request = b"*2\r\n$4\r\nINCR\r\n$1\r\nx\r\n";
        let bytes = packet(false, TcpFlags::ACK | TcpFlags::PSH, 1001, 5001, request);
        let (request_id, held) = h.capture(Direction::FromClient, &bytes);
        assert_eq!(held, None);
        let t = h.t();
        h.m.finish_capture(t);
        let requests = h.tick(None);
        let released = requests
            .iter()
            .position(|r| {
                verdicts_of(std::slice::from_ref(r)) == vec![(request_id, Verdict::Accept)]
            })
            .expect("the request is released once committed");
        let reply = requests
            .iter()
            .position(|r| {
                matches!(r, Request::Effect(NodeEffect::Socket(Effect::Write { bytes, .. })) if bytes == b":1\r\n")
            })
            .expect("the service answers");
        assert!(
            released < reply,
            "the verdict comes before the reply: {requests:?}"
        );
    }

    #[test]
    fn a_failed_takeover_is_released_and_retried_by_the_node() {
        let mut h = Harness::new(SnapshotPolicy::default());
        let mut steps_down = 0;
        let mut takeovers = 0;
        for _ in 0..100 {
            for r in h.tick(Some("adding the VIP")) {
                match r {
                    Request::Leadership(Action::StepDown { .. }) => steps_down += 1,
                    Request::Leadership(Action::TakeOver { .. }) => takeovers += 1,
                    _ => {}
                }
            }
        }
        assert!(takeovers >= 2, "retried: {takeovers} attempts");
        assert_eq!(steps_down, takeovers, "every failed attempt is released");
        assert_eq!(h.m.counters().takeovers_failed, takeovers);
        assert!(!h.m.is_serving());
        assert!(h.m.leadership().unfit_reason(h.now).is_some());
    }

    #[test]
    fn a_migration_is_refused_with_the_reason() {
        let mut h = Harness::new(SnapshotPolicy::default());
        let t = h.t();
        let not_yet = h.m.migrate_to(t, 2, 1000).unwrap_err();
        assert!(not_yet.contains("not the primary"), "{not_yet}");
        h.serve();
        let t = h.t();
        assert_eq!(h.m.migrate_to(t, 1, 1000), Ok(None), "already the primary");
        let stranger = h.m.migrate_to(t, 7, 1000).unwrap_err();
        assert!(stranger.contains("not a voter"), "{stranger}");
    }

    #[test]
    fn a_leader_serves_once_its_parameters_are_the_groups() {
        let mut h = Harness::new(SnapshotPolicy::default());
        assert_eq!(h.m.group().parameters(), None);
        h.serve();
        assert_eq!(h.m.group().parameters(), Some(h.m.parameters()));
        assert_eq!(h.m.disagreement(), None);
        assert_eq!(
            h.m.parameters().get("state_machine_version"),
            Some(
                crate::parameters::STATE_MACHINE_VERSION
                    .to_string()
                    .as_str()
            )
        );
    }

    #[test]
    fn snapshots_follow_the_applied_payloads() {
        let mut h = Harness::new(SnapshotPolicy {
            every_payloads: 2,
            every_ms: 1_000_000,
        });
        h.serve();
        let t = h.t();
        // Serving came after the term's first entry, our parameters: one
        // payload, and no snapshot yet, so one is due at once.
        assert_eq!(h.m.payloads_applied(), 1);
        let first = h.m.snapshot_due(t).expect("the parameters applied");
        let data = h.m.group().snapshot();
        h.m.compact(first, 1, data).unwrap();
        assert_eq!(h.m.snapshot_due(t), None, "nothing applied since");
        for i in 0..2u32 {
            let syn = packet(false, TcpFlags::SYN, 7000 + i * 100, 0, &[]);
            h.capture(Direction::FromClient, &syn);
            h.now += 10;
            let t = h.t();
            h.m.finish_capture(t);
            h.tick(None);
        }
        let t = h.t();
        let index = h.m.snapshot_due(t).expect("two payloads applied");
        assert_eq!(index, h.m.replica().applied());
        let payloads = h.m.payloads_applied();
        let data = h.m.group().snapshot();
        h.m.compact(index, payloads, data).unwrap();
        assert_eq!(h.m.snapshot_index(), index);
        assert_eq!(h.m.snapshot_due(t), None, "not again until more is applied");
    }
}
