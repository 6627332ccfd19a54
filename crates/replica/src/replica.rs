//! The sans-I/O replica driver: raft-rs's `RawNode` behind an interface the
//! node's event loop (and the simulation) drives with ticks and bytes.
//!
//! The loop is: feed inputs (`tick`, `receive`, `propose`, ...), then call
//! [`Replica::ready`], send its messages, install its snapshot if any, apply
//! its committed payloads in order, then call [`Replica::advance`]. Because
//! the log is in memory, "persisting" is done inside `ready` before anything
//! is returned: a message that acknowledges an entry never leaves before the
//! entry is in this process's log.
//!
//! Membership is part of safety here (docs/architecture.md §3.8, docs/membership.md): the
//! voters are the configured slots and never change. A restarted node (a new
//! incarnation, empty log, its term and vote read back from disk) is a voter
//! that *abstains* — it neither votes nor campaigns — until it has caught up
//! from a leader of a term at least its persisted one; a leader that sees a
//! new incarnation of a slot forgets what the old one acknowledged. No
//! configuration change is ever needed on a restart, so none can stall.

use std::collections::{BTreeMap, BTreeSet};

use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType};
use raft::{RawNode, SnapshotStatus, StateRole};

use crate::envelope::{Body, EnvelopeError, EnvelopeStats, Inbox, Keyring, Outbox};
use crate::hard_state::HardState;
use crate::id::{raft_id_of_slot, slot_of_raft_id, NodeId, ANY_INCARNATION, FIRST_INCARNATION};
use crate::snapshot_stream::{
    SnapshotReceiver, SnapshotSender, StreamConfig, StreamMsg, StreamStats, TransferEnd,
};
use crate::storage::MemLog;

/// Suggested real-time length of one tick for the node's event loop.
///
/// The library never reads a clock; this is the interval the defaults below
/// are designed for.
pub const DEFAULT_TICK_MS: u64 = 10;

/// Announcement rounds (one per `join_retry_ticks`) sent to a peer that may
/// not know this incarnation, until it sends this incarnation something
/// (not counted while restoring).
const ANNOUNCE_ROUNDS: u32 = 10;

/// Configuration of one replica.
#[derive(Debug, Clone)]
pub struct Config {
    /// This process: its slot and its (freshly bumped) incarnation.
    pub id: NodeId,
    /// Every slot of the cluster. Founding voters are `(slot, 1)` for each.
    pub slots: Vec<u16>,
    /// Ticks without hearing from a leader before a follower (pre-)campaigns;
    /// the actual timeout is drawn from `[election_tick, 2 * election_tick)`.
    ///
    /// Default 15 (150 ms at [`DEFAULT_TICK_MS`]). On a LAN the round trip is
    /// well under a millisecond, so the timeout is set by the machines, not
    /// the network: with 2 cores shared by 3 daemons (and the client, in the
    /// lab), a daemon can wait tens of ms for a CPU under load. 150–300 ms
    /// rides out several such stalls, so a busy but healthy leader is not
    /// deposed, while failover still completes well under half a second.
    pub election_tick: usize,
    /// Ticks between leader heartbeats. Default 3 (30 ms): five heartbeats
    /// per minimum election timeout, so losing or delaying a few to a
    /// scheduling stall does not start an election; and cheap (three daemons
    /// sending 33 small messages/s each is negligible on 2 cores).
    /// Check-quorum uses the election timeout, so a partitioned leader steps
    /// down within 150–300 ms.
    pub heartbeat_tick: usize,
    /// A batch is flushed into one entry when its payloads reach this many
    /// bytes (default 64 KiB), and in any case at the next [`Replica::ready`].
    pub max_batch_bytes: usize,
    /// ... or this many payloads (default 1024).
    pub max_batch_payloads: usize,
    /// Largest append message raft-rs builds, in bytes (default 256 KiB).
    pub max_size_per_msg: u64,
    /// Appends in flight per follower before waiting for acks (default 16).
    /// With `max_size_per_msg` this bounds what one `ready` builds for a
    /// follower catching up (4 MiB by default): a leader that built the
    /// whole gap at once (50 MB after a 2 s partition in a lab test) held
    /// its loop for a quarter of a second and missed its own heartbeats.
    /// In steady state one append per follower per `ready` is in flight.
    pub max_inflight_msgs: usize,
    /// Ticks between announcements of this incarnation (a join envelope to
    /// the slot's "any" incarnation) to each peer that has not yet sent this
    /// incarnation anything (default 15): until a peer knows the new
    /// incarnation, what it seals is addressed to the dead one and refused.
    pub join_retry_ticks: usize,
    /// The hard state the previous incarnation of this slot persisted
    /// (`Output::hard_state`, see [`crate::hard_state`]); zero at the first
    /// start. A restarted node must never start from an older one.
    pub hard_state: HardState,
    /// How snapshots are streamed to lagging and new replicas: chunk size,
    /// window, retry and idle timeouts (in ticks) and the largest snapshot
    /// accepted (see [`StreamConfig`] for the defaults).
    pub snapshot_stream: StreamConfig,
    /// Seed of the election-timeout randomization. raft-rs draws timeouts
    /// from the thread RNG; the replica overrides them from a PRNG seeded
    /// here so that a simulation replays exactly.
    pub seed: u64,
}

impl Config {
    /// The defaults for node `id` in a cluster of `slots`.
    pub fn new(id: NodeId, slots: Vec<u16>) -> Self {
        Self {
            id,
            slots,
            election_tick: 15,
            heartbeat_tick: 3,
            max_batch_bytes: 64 << 10,
            max_batch_payloads: 1024,
            max_size_per_msg: 256 << 10,
            max_inflight_msgs: 16,
            join_retry_ticks: 15,
            hard_state: HardState::default(),
            snapshot_stream: StreamConfig::default(),
            seed: id.raft_id(),
        }
    }
}

/// Why a replica could not be built.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// raft-rs refused the configuration.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// This node's slot is not among the cluster's slots.
    #[error("slot {0} is not in the cluster's slots")]
    UnknownSlot(u16),
    /// A snapshot-stream setting is out of range.
    #[error("{0}")]
    SnapshotStream(String),
}

/// Identifies a proposal: who proposed it and its number there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProposalId {
    /// The proposing replica.
    pub proposer: NodeId,
    /// Its proposal counter (from 1, per incarnation).
    pub seq: u64,
}

/// Why a proposal was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader proposes (it is the primary, which captures packets).
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// A leadership transfer is under way; raft-rs would drop the proposal.
    #[error("leadership transfer in progress")]
    Transferring,
}

/// One committed client payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedEntry {
    /// Raft index of the entry holding it.
    pub index: u64,
    /// Its position in that entry's batch.
    pub sub: u32,
    /// Raft term of the entry.
    pub term: u64,
    /// Who proposed it.
    pub proposal: ProposalId,
    /// The payload.
    pub data: Vec<u8>,
}

/// A snapshot the application must install before applying what follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallSnapshot {
    /// The last index the snapshot covers.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// The application's bytes (empty: the initial state).
    pub data: Vec<u8>,
}

/// What one [`Replica::ready`] hands to the application.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Sealed envelopes to send, with their destination.
    pub messages: Vec<(NodeId, Vec<u8>)>,
    /// A snapshot to install first (a lagging or new replica).
    pub install_snapshot: Option<InstallSnapshot>,
    /// Committed payloads, in log order, to apply after the snapshot.
    pub committed: Vec<CommittedEntry>,
    /// Proposals that will not be committed by this leader (leadership lost
    /// before they reached the log).
    pub dropped: Vec<ProposalId>,
    /// The leader needs a newer snapshot than the log holds (a learner was
    /// added after it, or a replica lags behind it): the application should
    /// call [`Replica::compact`] at its applied index soon.
    pub snapshot_wanted: bool,
    /// Configuration changes applied, with their index (none since voters
    /// are stable slots; kept for a log written by an older version).
    pub conf_changes: Vec<(u64, ConfState)>,
    /// The term or the vote changed: write it durably (see
    /// [`crate::hard_state::save_hard_state`]) *before* sending `messages`,
    /// which may depend on it (a vote, an answer in the new term).
    pub hard_state: Option<HardState>,
    /// The role now.
    pub role: StateRole,
    /// True if the role changed since the previous `ready`.
    pub role_changed: bool,
    /// The leader now, if known.
    pub leader: Option<NodeId>,
    /// True if the leader changed since the previous `ready`.
    pub leader_changed: bool,
    /// The term now.
    pub term: u64,
}

/// A snapshot of the replica's state for status displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Role.
    pub role: StateRole,
    /// Term.
    pub term: u64,
    /// Leader, if known.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub commit: u64,
    /// Index the application has applied (acknowledged by `advance`).
    pub applied: u64,
    /// First and last index held in the log.
    pub log: (u64, u64),
    /// Index of the current snapshot.
    pub snapshot_index: u64,
    /// Voters that take part in elections, as (slot, latest incarnation
    /// heard of), sorted: every slot, except this node while it restores.
    /// (A follower learns a peer's new incarnation from its announcements,
    /// or when it next sends to it.)
    pub voters: Vec<NodeId>,
    /// This node while it restores (a voter that abstains until it has
    /// caught up, docs/membership.md), else empty.
    pub learners: Vec<NodeId>,
    /// The outgoing voters while in a joint configuration (empty otherwise).
    pub voters_outgoing: Vec<NodeId>,
    /// On the leader: each peer's matched index.
    pub matched: BTreeMap<NodeId, u64>,
    /// Envelope counters.
    pub envelopes: EnvelopeStats,
    /// Snapshot-stream counters.
    pub snapshot_stream: StreamStats,
    /// Bytes held by a partly received snapshot.
    pub snapshot_receiving_bytes: usize,
    /// True while this restarted node abstains (see `learners`).
    pub restoring: bool,
    /// Vote requests this node ignored while restoring.
    pub votes_abstained: u64,
}

/// A small deterministic PRNG (SplitMix64) for election timeouts.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

const BATCH_VERSION: u8 = 1;

/// Batch entry format: `version u8 | proposer (NodeId::packed) u64 | first seq u64 |
/// count u32 | (len u32 | bytes)*`. Several payloads per entry is the
/// batching unit: under load the event loop drains many captured packets,
/// proposes each, and one `ready` turns them into one entry, one append and
/// one commit round trip.
fn encode_batch(proposer: NodeId, first_seq: u64, payloads: &[Vec<u8>]) -> Vec<u8> {
    let len: usize = payloads.iter().map(|p| 4 + p.len()).sum();
    let mut out = Vec::with_capacity(21 + len);
    out.push(BATCH_VERSION);
    out.extend_from_slice(&proposer.packed().to_be_bytes());
    out.extend_from_slice(&first_seq.to_be_bytes());
    out.extend_from_slice(&(payloads.len() as u32).to_be_bytes());
    for p in payloads {
        out.extend_from_slice(&(p.len() as u32).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

type Batch<'a> = (NodeId, u64, Vec<&'a [u8]>);

fn decode_batch(data: &[u8]) -> Option<Batch<'_>> {
    let take = |at: usize, n: usize| data.get(at..at.checked_add(n)?);
    if *data.first()? != BATCH_VERSION {
        return None;
    }
    let proposer = NodeId::from_packed(u64::from_be_bytes(take(1, 8)?.try_into().ok()?));
    let first_seq = u64::from_be_bytes(take(9, 8)?.try_into().ok()?);
    let count = u32::from_be_bytes(take(17, 4)?.try_into().ok()?);
    let mut at = 21;
    let mut payloads = Vec::new();
    for _ in 0..count {
        let len = u32::from_be_bytes(take(at, 4)?.try_into().ok()?) as usize;
        payloads.push(take(at + 4, len)?);
        at += 4 + len;
    }
    (at == data.len()).then_some((proposer, first_seq, payloads))
}

/// One replica of a replica group. See the module documentation.
pub struct Replica {
    raw: RawNode<MemLog>,
    cfg: Config,
    inbox: Inbox,
    outbox: Outbox,
    rng: SplitMix64,
    /// Payloads proposed since the last flush, and the seq of the first.
    batch: Vec<Vec<u8>>,
    batch_bytes: usize,
    batch_first_seq: u64,
    next_seq: u64,
    /// Messages produced outside raft (announcements), sent at next `ready`.
    extra: Vec<(NodeId, Body)>,
    dropped: Vec<ProposalId>,
    /// Configuration in force after each applied configuration change, by
    /// index: a snapshot at index i must carry the configuration at i.
    conf_history: BTreeMap<u64, ConfState>,
    /// Highest index handed to the application, and acknowledged by it.
    delivered: u64,
    applied: u64,
    awaiting_advance: bool,
    /// (term, role) last seen, to re-draw the election timeout.
    seen_term_role: (u64, StateRole),
    last_role: StateRole,
    last_leader: u64,
    join_countdown: usize,
    step_errors: u64,
    /// Append bytes sealed per follower in the current `ready` (see
    /// `seal_all`), and how many appends went over that budget and were
    /// dropped for raft to resend.
    append_bytes_this_ready: BTreeMap<NodeId, usize>,
    appends_deferred: u64,
    /// Peers whose heartbeat response was stepped since the last `ready`
    /// (see `receive`), and how many further ones were merged into it.
    heartbeat_answers_this_ready: BTreeSet<NodeId>,
    heartbeat_answers_merged: u64,
    refuse_leadership: bool,
    /// Ticks since start: the snapshot stream's clock.
    ticks: u64,
    snap_tx: SnapshotSender,
    snap_rx: SnapshotReceiver,
    snap_stats: StreamStats,
    /// True while this restarted node abstains from elections (it has not
    /// caught up from a leader of a term >= `restore_term` yet).
    restoring: bool,
    /// The term persisted by the previous incarnation.
    restore_term: u64,
    votes_abstained: u64,
    /// Peers that may not know this incarnation, with the announcement
    /// rounds left for each (not counted down while restoring).
    announce_left: BTreeMap<u16, u32>,
    /// Peers seen with a new incarnation (they may be restoring), with the
    /// appends left to send them once caught up (see `nudge`).
    nudges_left: BTreeMap<u16, u32>,
    /// The latest incarnation heard of for each other slot: raft messages are
    /// sealed to it.
    peer_incarnations: BTreeMap<u16, u64>,
    /// Peers that have sent this incarnation something (so they know it).
    heard_from: std::collections::BTreeSet<u16>,
    /// The hard state last handed out for persisting.
    persisted: HardState,
    /// The caller's clock (see [`Replica::set_clock`]).
    clock: u64,
    /// On the leader: when each peer last acknowledged this term's
    /// leadership (append or heartbeat response of this term), by the
    /// caller's clock; for the term `acks_term`.
    acks: BTreeMap<u16, u64>,
    acks_term: u64,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("id", &self.cfg.id).finish()
    }
}

fn role_code(r: StateRole) -> u8 {
    match r {
        StateRole::Follower => 0,
        StateRole::Candidate => 1,
        StateRole::Leader => 2,
        StateRole::PreCandidate => 3,
    }
}

impl Replica {
    /// Starts a replica. Every node starts from the same bootstrap (index 1,
    /// the voters = every slot, the service's initial state). Incarnation
    /// [`FIRST_INCARNATION`] is a founding voter; any later incarnation is a
    /// restart: it forgot its log, takes its term and vote from
    /// `cfg.hard_state`, and abstains from elections until it has caught up
    /// (docs/membership.md).
    ///
    /// Two consequences of the in-memory log, by design: if every node of a
    /// group restarts at once, no one holds the log and every node abstains
    /// forever (the group must be re-created, incarnation and hard-state
    /// files removed on all nodes together); and the incarnation and
    /// hard-state files must survive a restart — a node whose files are lost
    /// would come back as a founding voter that may have acknowledged
    /// entries. Peers then refuse it only while they remember a later
    /// incarnation of its slot ([`EnvelopeError::StaleSender`]).
    pub fn new(cfg: Config, key: impl Into<Keyring>) -> Result<Self, InitError> {
        let key: Keyring = key.into();
        if !cfg.slots.contains(&cfg.id.slot) {
            return Err(InitError::UnknownSlot(cfg.id.slot));
        }
        cfg.snapshot_stream
            .validate()
            .map_err(InitError::SnapshotStream)?;
        let mut conf_history = BTreeMap::new();
        let cs = ConfState {
            voters: cfg.slots.iter().map(|&s| raft_id_of_slot(s)).collect(),
            ..Default::default()
        };
        conf_history.insert(1, cs.clone());
        let mut store = MemLog::bootstrap(cs);
        let restoring = cfg.id.incarnation != FIRST_INCARNATION;
        if restoring {
            let mut hs = store.hard_state().clone();
            hs.term = hs.term.max(cfg.hard_state.term);
            hs.vote = cfg.hard_state.vote;
            store.set_hard_state(hs);
        }
        let applied = store.snapshot_ref().get_metadata().index;
        let rc = raft::Config {
            id: cfg.id.raft_id(),
            election_tick: cfg.election_tick,
            heartbeat_tick: cfg.heartbeat_tick,
            applied,
            max_size_per_msg: cfg.max_size_per_msg,
            max_inflight_msgs: cfg.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        rc.validate()?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&rc, store, &logger)?;
        let mut r = Self {
            inbox: Inbox::new(cfg.id, key.clone()),
            outbox: Outbox::new(cfg.id, key),
            rng: SplitMix64(cfg.seed),
            batch: Vec::new(),
            batch_bytes: 0,
            batch_first_seq: 1,
            next_seq: 1,
            extra: Vec::new(),
            dropped: Vec::new(),
            conf_history,
            delivered: applied,
            applied,
            awaiting_advance: false,
            seen_term_role: (0, StateRole::Follower),
            last_role: StateRole::Follower,
            last_leader: 0,
            join_countdown: 0,
            step_errors: 0,
            append_bytes_this_ready: BTreeMap::new(),
            appends_deferred: 0,
            heartbeat_answers_this_ready: BTreeSet::new(),
            heartbeat_answers_merged: 0,
            refuse_leadership: false,
            ticks: 0,
            snap_tx: SnapshotSender::new(cfg.snapshot_stream),
            snap_rx: SnapshotReceiver::new(cfg.snapshot_stream, cfg.id),
            snap_stats: StreamStats::default(),
            restoring,
            restore_term: cfg.hard_state.term,
            votes_abstained: 0,
            nudges_left: BTreeMap::new(),
            announce_left: if restoring {
                cfg.slots
                    .iter()
                    .filter(|&&s| s != cfg.id.slot)
                    .map(|&s| (s, ANNOUNCE_ROUNDS))
                    .collect()
            } else {
                BTreeMap::new()
            },
            peer_incarnations: cfg
                .slots
                .iter()
                .filter(|&&s| s != cfg.id.slot)
                .map(|&s| (s, FIRST_INCARNATION))
                .collect(),
            heard_from: Default::default(),
            persisted: cfg.hard_state,
            clock: 0,
            acks: BTreeMap::new(),
            acks_term: 0,
            raw,
            cfg,
        };
        r.redraw_election_timeout();
        Ok(r)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// raft-rs draws election timeouts from the thread RNG whenever the term
    /// or role changes; draw them from our seeded PRNG instead so runs replay.
    fn redraw_election_timeout(&mut self) {
        let now = (self.raw.raft.term, self.raw.raft.state);
        if role_code(now.1) == role_code(self.seen_term_role.1) && now.0 == self.seen_term_role.0 {
            return;
        }
        self.seen_term_role = now;
        let e = self.cfg.election_tick as u64;
        let t = e + self.rng.next() % e;
        self.raw.raft.set_randomized_election_timeout(t as usize);
    }

    /// The node a raft id names: its slot with the latest incarnation heard
    /// of (this process for its own slot).
    fn node_of(&self, raft_id: u64) -> NodeId {
        let slot = slot_of_raft_id(raft_id).unwrap_or(u16::MAX);
        if slot == self.cfg.id.slot {
            return self.cfg.id;
        }
        let inc = self
            .peer_incarnations
            .get(&slot)
            .copied()
            .unwrap_or(FIRST_INCARNATION);
        NodeId::new(slot, inc)
    }

    /// Makes this replica refuse leadership (a drained or unhealthy node,
    /// claim 13): it never starts an election and ignores a leader's
    /// "campaign now" (leadership transfer); it still votes and replicates.
    /// A leader is not demoted by this: it hands over itself.
    pub fn set_refuse_leadership(&mut self, refuse: bool) {
        self.refuse_leadership = refuse;
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        // A follower's tick only counts towards its election timeout; a
        // restoring node must not campaign.
        if !(self.refuse_leadership || self.restoring) || self.raw.raft.state == StateRole::Leader {
            self.raw.tick();
        }
        self.redraw_election_timeout();
        self.ticks += 1;
        if self.snap_rx.on_tick(self.ticks) {
            self.snap_stats.abandoned += 1;
        }
        for to in self.snap_tx.on_tick(self.ticks) {
            self.end_transfer(to, TransferEnd::Failed);
        }
        if !self.announce_left.is_empty() {
            if self.join_countdown == 0 {
                self.join_countdown = self.cfg.join_retry_ticks.max(1);
                self.announce_round();
            }
            self.join_countdown -= 1;
        }
    }

    /// One round of announcements to the peers that may not know this
    /// incarnation: every round while restoring, then at most
    /// `ANNOUNCE_ROUNDS` (a peer that never has to send to this node would
    /// otherwise go on naming a dead incarnation in its status; one that
    /// does send learns anyway, see `receive`).
    fn announce_round(&mut self) {
        let peers: Vec<u16> = self.announce_left.keys().copied().collect();
        for slot in peers {
            if self.heard_from.contains(&slot) {
                self.announce_left.remove(&slot);
                continue;
            }
            self.announce(Some(slot));
            if !self.restoring {
                let left = self.announce_left.entry(slot).or_insert(1);
                *left -= 1;
                if *left == 0 {
                    self.announce_left.remove(&slot);
                }
            }
        }
    }

    /// Announces this incarnation to `slot` (a join envelope, the one body
    /// addressed to whichever incarnation holds a slot), at most one queued.
    fn announce(&mut self, slot: Option<u16>) {
        let Some(slot) = slot.filter(|&s| s != self.cfg.id.slot) else {
            return;
        };
        let to = NodeId::new(slot, ANY_INCARNATION);
        if !self.extra.iter().any(|(t, b)| *t == to && *b == Body::Join) {
            self.extra.push((to, Body::Join));
        }
    }

    /// Records the (authenticated) sender of an envelope. A new incarnation
    /// of a slot is a process that forgot its log: a leader must no longer
    /// count what the old one acknowledged (docs/membership.md, "the
    /// leader's side"), so its progress starts again from nothing.
    fn on_sender(&mut self, from: NodeId) -> bool {
        if from.slot == self.cfg.id.slot {
            return false;
        }
        let known = self
            .peer_incarnations
            .entry(from.slot)
            .or_insert(FIRST_INCARNATION);
        if from.incarnation <= *known {
            return false;
        }
        let old = NodeId::new(from.slot, *known);
        *known = from.incarnation;
        self.snap_tx.cancel(old);
        // The new process has not heard of this one.
        self.heard_from.remove(&from.slot);
        self.nudges_left.insert(from.slot, ANNOUNCE_ROUNDS);
        self.announce_left.insert(from.slot, ANNOUNCE_ROUNDS);
        if self.raw.raft.state == StateRole::Leader {
            let last = self.raw.raft.raft_log.last_index();
            if let Some(pr) = self.raw.raft.mut_prs().get_mut(from.raft_id()) {
                pr.matched = 0;
                pr.become_probe();
                pr.next_idx = last + 1;
                pr.pending_request_snapshot = 0;
                pr.recent_active = true;
            }
        }
        self.acks.remove(&from.slot);
        true
    }

    /// Replaces the keys envelopes are sealed and opened with (a step of a
    /// key rotation): numbering and the replay window go on.
    pub fn set_keys(&mut self, keys: Keyring) {
        self.inbox.set_keys(keys.clone());
        self.outbox.set_keys(keys);
    }

    /// Receives a sealed envelope from the network and returns its
    /// (authenticated) sender. Rejected envelopes are counted (see
    /// [`Replica::status`]) and returned as errors; the caller just drops
    /// them and keeps running.
    pub fn receive(&mut self, bytes: &[u8]) -> Result<NodeId, EnvelopeError> {
        let opened = match self.inbox.open(bytes) {
            Ok(opened) => opened,
            Err(EnvelopeError::StaleIncarnation) => {
                // Sealed to a dead incarnation of this slot: the sender has
                // not heard of this one.
                if let Some(from) = crate::envelope::sender_of(bytes) {
                    if self.cfg.slots.contains(&from.slot) {
                        self.announce(Some(from.slot));
                        self.announce_left.insert(from.slot, ANNOUNCE_ROUNDS);
                    }
                }
                return Err(EnvelopeError::StaleIncarnation);
            }
            Err(e) => return Err(e),
        };
        let from = opened.from;
        let new_incarnation = self.on_sender(from);
        if !matches!(opened.body, Body::Join) {
            // Addressed to this very incarnation: the sender knows it.
            self.heard_from.insert(from.slot);
        }
        match opened.body {
            Body::Join => {
                // It may not know this incarnation either: answer once.
                if new_incarnation {
                    self.announce(Some(from.slot));
                }
            }
            Body::Raft(m)
                if m.get_msg_type() == MessageType::MsgHeartbeatResponse
                    && m.context.is_empty()
                    && !self.heartbeat_answers_this_ready.insert(from) =>
            {
                // raft-rs answers every heartbeat response from a lagging
                // follower with a full append; a backlog of them (a healed
                // partition delivers seconds of heartbeats at once) made one
                // ready build the whole gap. One per peer per ready says all
                // they say: the peer is alive.
                self.heartbeat_answers_merged += 1;
            }
            Body::Raft(m) => self.step(m),
            Body::Snapshot(StreamMsg::Chunk(chunk)) => {
                let got = self
                    .snap_rx
                    .on_chunk(from, chunk, self.ticks, &mut self.snap_stats);
                if let Some(m) = got.complete {
                    self.step(m);
                }
                if let Some(reply) = got.reply {
                    self.extra.push((from, Body::Snapshot(reply)));
                }
            }
            Body::Snapshot(reply) => {
                if let Some(end) = self.snap_tx.on_reply(from, &reply, self.ticks) {
                    self.end_transfer(from, end);
                }
            }
        }
        Ok(from)
    }

    /// Tells raft how a snapshot transfer to `to` ended: once finished it
    /// waits for the follower's answer; once failed it probes again after a
    /// heartbeat and sends a new snapshot message.
    fn end_transfer(&mut self, to: NodeId, end: TransferEnd) {
        let status = match end {
            TransferEnd::Finished => {
                self.snap_stats.sends_finished += 1;
                SnapshotStatus::Finish
            }
            TransferEnd::Failed => {
                self.snap_stats.sends_failed += 1;
                SnapshotStatus::Failure
            }
        };
        self.raw.report_snapshot(to.raft_id(), status);
    }

    /// Steps an already-authenticated raft message. Errors from raft-rs
    /// (e.g. a response from a peer removed meanwhile) are counted, not fatal.
    pub fn step(&mut self, m: Message) {
        let ty = m.get_msg_type();
        if (self.refuse_leadership || self.restoring) && ty == MessageType::MsgTimeoutNow {
            return;
        }
        if self.restoring
            && matches!(
                ty,
                MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
            )
        {
            // A node that forgot its log must not vote: its empty log would
            // approve a candidate lacking entries it acknowledged.
            self.votes_abstained += 1;
            return;
        }
        let acknowledges = matches!(
            ty,
            MessageType::MsgAppendResponse | MessageType::MsgHeartbeatResponse
        ) && self.raw.raft.state == StateRole::Leader
            && m.term == self.raw.raft.term;
        let (from, leader_commit) = (m.from, m.commit);
        if self.raw.step(m).is_err() {
            self.step_errors += 1;
        }
        if acknowledges && self.raw.raft.state == StateRole::Leader {
            self.record_ack(from);
            self.nudge(from);
        }
        if self.restoring && ty == MessageType::MsgAppend {
            self.check_restored(leader_commit);
        }
        self.redraw_election_timeout();
    }

    /// On the leader: a peer that may be restoring and holds everything
    /// committed is sent an append anyway, even with no entry in it: the
    /// append carries the whole commit index (a heartbeat carries at most
    /// what the peer has matched), which is what lets it stop restoring in
    /// an idle group (`check_restored`).
    fn nudge(&mut self, from: u64) {
        let Some(slot) = slot_of_raft_id(from) else {
            return;
        };
        let Some(left) = self.nudges_left.get_mut(&slot) else {
            return;
        };
        let committed = self.raw.raft.raft_log.committed;
        let caught_up = self
            .raw
            .raft
            .prs()
            .get(from)
            .is_some_and(|p| p.matched >= committed);
        if !caught_up {
            return;
        }
        *left -= 1;
        if *left == 0 {
            self.nudges_left.remove(&slot);
        }
        self.raw.raft.send_append(from);
    }

    fn record_ack(&mut self, from: u64) {
        let term = self.raw.raft.term;
        if self.acks_term != term {
            self.acks.clear();
            self.acks_term = term;
        }
        if let Some(slot) = slot_of_raft_id(from) {
            self.acks.insert(slot, self.clock);
        }
    }

    /// A restoring node stops abstaining once it holds everything the
    /// leader of its current term (>= the persisted term) had committed when
    /// it sent this append, and that commit index is an entry of the
    /// leader's own term: then it holds every entry committed in an earlier
    /// term too (docs/membership.md, "when a restarted node may vote").
    fn check_restored(&mut self, leader_commit: u64) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Follower
            || raft.leader_id == 0
            || raft.term < self.restore_term
            || raft.raft_log.committed < leader_commit
            || raft.raft_log.term(leader_commit).ok() != Some(raft.term)
        {
            return;
        }
        self.restoring = false;
    }

    /// Sets the caller's clock (any monotonic count, e.g. milliseconds
    /// since start), which stamps the acknowledgements that
    /// [`Replica::quorum_acked_at`] reports. Call it before `receive`.
    pub fn set_clock(&mut self, now: u64) {
        self.clock = now;
    }

    /// On the leader: the caller's clock (see [`Replica::set_clock`]) at the
    /// latest moment by which a majority of the voters (this node counts
    /// itself) had acknowledged this term's leadership — an append or
    /// heartbeat response of this term, nothing else (no vote, no
    /// announcement, no snapshot-stream reply). Until a majority has, and on
    /// any other role, `None`. The node's lease is dated from it
    /// (docs/membership.md, "The lease"): past it, nothing proves a quorum
    /// still follows this leader.
    pub fn quorum_acked_at(&self) -> Option<u64> {
        if self.raw.raft.state != StateRole::Leader {
            return None;
        }
        let needed_peers = self.cfg.slots.len() / 2;
        if needed_peers == 0 {
            return Some(self.clock);
        }
        if self.acks_term != self.raw.raft.term {
            return None;
        }
        let mut times: Vec<u64> = self.acks.values().copied().collect();
        times.sort_unstable_by(|a, b| b.cmp(a));
        times.get(needed_peers - 1).copied()
    }

    /// True while this restarted node abstains from elections.
    pub fn is_restoring(&self) -> bool {
        self.restoring
    }

    /// Queues a payload for the log. Only the leader proposes. Payloads are
    /// batched: they become one entry at the next [`Replica::ready`] (or
    /// earlier when the batch is full). The returned id reappears in a
    /// [`CommittedEntry`] once committed, or in [`Output::dropped`] if raft
    /// refused the entry. A proposal already in the log when leadership is
    /// lost may still commit under the next leader, or be overwritten: the
    /// caller learns which only from `committed` (in tandem, a deposed
    /// primary fences itself and releases nothing, docs/architecture.md §3.5 step 6).
    pub fn propose(&mut self, data: Vec<u8>) -> Result<ProposalId, ProposeError> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader(),
            });
        }
        if self.raw.raft.lead_transferee.is_some() {
            return Err(ProposeError::Transferring);
        }
        let id = ProposalId {
            proposer: self.cfg.id,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        if self.batch.is_empty() {
            self.batch_first_seq = id.seq;
        }
        self.batch_bytes += data.len();
        self.batch.push(data);
        if self.batch_bytes >= self.cfg.max_batch_bytes
            || self.batch.len() >= self.cfg.max_batch_payloads
        {
            self.flush();
        }
        Ok(id)
    }

    /// On a follower: hands payloads to the leader, which appends them as if
    /// it had proposed them (raft-rs forwards the proposal). A primary that
    /// hands its role over uses it for the client packets it captured but
    /// could not commit, so their clients need not retransmit. Refused while
    /// no leader is known. Nothing tells whether they were appended; a
    /// payload may reach the log twice (once from the old leader's log,
    /// once forwarded), which a consumer of client packets must tolerate
    /// (shadow TCP drops a duplicate segment as the kernel does).
    pub fn forward(&mut self, payloads: Vec<Vec<u8>>) -> Result<Vec<ProposalId>, ProposeError> {
        let leader = self.leader();
        if self.raw.raft.state == StateRole::Leader || leader.is_none() {
            return Err(ProposeError::NotLeader { leader });
        }
        if payloads.is_empty() {
            return Ok(Vec::new());
        }
        let first = self.next_seq;
        self.next_seq += payloads.len() as u64;
        let data = encode_batch(self.cfg.id, first, &payloads);
        self.raw
            .propose(Vec::new(), data)
            .map_err(|_| ProposeError::NotLeader { leader })?;
        Ok((0..payloads.len() as u64)
            .map(|i| ProposalId {
                proposer: self.cfg.id,
                seq: first + i,
            })
            .collect())
    }

    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let data = encode_batch(self.cfg.id, self.batch_first_seq, &batch);
        if self.raw.propose(Vec::new(), data).is_err() {
            let first = self.batch_first_seq;
            self.dropped
                .extend((0..batch.len() as u64).map(|i| ProposalId {
                    proposer: self.cfg.id,
                    seq: first + i,
                }));
        }
    }

    /// Starts a leadership transfer to `to` (planned migration, §3.6).
    /// Proposals are refused until it completes or times out.
    pub fn transfer_leader(&mut self, to: NodeId) {
        self.flush();
        self.raw.transfer_leader(to.raft_id());
    }

    /// On a follower whose application could not install the snapshot it
    /// was given: asks the leader for a new one. raft-rs sends the request
    /// only when a leader is known, no snapshot is pending and the last
    /// entry is of the current term; the caller repeats it until a
    /// snapshot installs. True if the request was sent.
    pub fn request_snapshot(&mut self) -> bool {
        if self.raw.raft.state == StateRole::Leader || self.raw.raft.leader_id == 0 {
            return false;
        }
        let before = self.raw.raft.pending_request_snapshot;
        self.raw.request_snapshot().is_ok() && self.raw.raft.pending_request_snapshot != before
    }

    /// Starts an election now (tests, or an operator forcing a failover).
    pub fn campaign(&mut self) {
        if self.restoring {
            return;
        }
        let _ = self.raw.campaign();
        self.redraw_election_timeout();
    }

    /// Takes a snapshot at `index`, which the application has applied (and
    /// acknowledged with `advance`), holding the application's `data`; drops
    /// the log up to it. Lagging and new replicas are then sent this snapshot.
    pub fn compact(&mut self, index: u64, data: Vec<u8>) -> Result<(), raft::StorageError> {
        if index > self.applied {
            return Err(raft::StorageError::Unavailable);
        }
        let cs = self
            .conf_history
            .range(..=index)
            .next_back()
            .map(|(_, cs)| cs.clone())
            .unwrap_or_else(|| {
                self.raw
                    .store()
                    .snapshot_ref()
                    .get_metadata()
                    .get_conf_state()
                    .clone()
            });
        self.raw.mut_store().compact(index, cs, data)?;
        // Keep the configuration in force at the snapshot, drop older ones.
        if let Some((&k, _)) = self.conf_history.range(..=index).next_back() {
            self.conf_history = self.conf_history.split_off(&k);
        }
        Ok(())
    }

    /// Heartbeats to every follower, sealed and ready to send, for a leader
    /// whose event loop is held up by long local work (rebuilding thousands
    /// of sockets at a takeover): without them the followers' election
    /// timers run out and depose a leader that is alive, only busy. Nothing
    /// else is taken from raft: no tick (check-quorum would count the time
    /// as silence from followers whose answers are not being read), no
    /// entries, so it may be called between `ready`s at any point. Empty
    /// unless leader.
    pub fn heartbeats_now(&mut self) -> Vec<(NodeId, Vec<u8>)> {
        if self.raw.raft.state != StateRole::Leader {
            return Vec::new();
        }
        let queued = self.raw.raft.msgs.len();
        self.raw.ping();
        let mut fresh = self.raw.raft.msgs.split_off(queued);
        // `ping` only broadcasts heartbeats; anything else stays queued for
        // the next `ready`, in order.
        fresh.retain(|m| {
            let beat = m.get_msg_type() == MessageType::MsgHeartbeat;
            if !beat {
                self.raw.raft.msgs.push(m.clone());
            }
            beat
        });
        fresh
            .into_iter()
            .map(|m| {
                let to = self.node_of(m.to);
                (to, self.outbox.seal(to, &Body::Raft(m)))
            })
            .collect()
    }

    /// True if `ready` has something to hand out.
    pub fn has_ready(&self) -> bool {
        !self.awaiting_advance
            && (self.raw.has_ready()
                || !self.batch.is_empty()
                || !self.extra.is_empty()
                || !self.dropped.is_empty()
                || self.snap_tx.has_chunks()
                || self.raw.raft.state != self.last_role
                || self.raw.raft.leader_id != self.last_leader)
    }

    fn leader(&self) -> Option<NodeId> {
        let l = self.raw.raft.leader_id;
        (l != 0).then(|| self.node_of(l))
    }

    fn seal_all(&mut self, msgs: Vec<Message>, out: &mut Output) {
        let budget = self.append_budget();
        for m in msgs {
            let to = self.node_of(m.to);
            if m.get_msg_type() == MessageType::MsgAppend && !m.entries.is_empty() {
                // A follower back from a partition draws appends from every
                // heartbeat response and every freed inflight slot; one
                // ready once held 55 of them (13.7 MB) and sealing them
                // stalled the leader past the election timeout. Beyond the
                // window's worth per follower per ready the rest are dropped,
                // as a lossy network would: raft resends from the
                // follower's reply.
                let size: usize = m.entries.iter().map(|e| e.data.len()).sum();
                let sent = self.append_bytes_this_ready.entry(to).or_insert(0);
                if *sent > 0 && *sent + size > budget {
                    self.appends_deferred += 1;
                    continue;
                }
                *sent += size;
            }
            if m.get_msg_type() == MessageType::MsgSnapshot {
                // The data goes by the snapshot stream, in chunks; the
                // message travels with each chunk, without it.
                self.snap_tx.start(to, m, self.ticks);
                self.snap_stats.sends_started += 1;
                continue;
            }
            let bytes = self.outbox.seal(to, &Body::Raft(m));
            out.messages.push((to, bytes));
        }
    }

    /// Append bytes one `ready` may carry to one follower: the inflight
    /// window's worth (`max_inflight_msgs` × `max_size_per_msg`, 4 MiB by
    /// default), so steady replication never reaches it.
    fn append_budget(&self) -> usize {
        (self.cfg.max_inflight_msgs as u64)
            .saturating_mul(self.cfg.max_size_per_msg)
            .try_into()
            .unwrap_or(usize::MAX)
    }

    fn apply_committed(&mut self, entries: Vec<Entry>, out: &mut Output) {
        for e in entries {
            self.delivered = self.delivered.max(e.index);
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if e.data.is_empty() {
                        continue; // a new leader's empty entry
                    }
                    // Only this crate proposes; an undecodable entry would be
                    // skipped identically on every replica.
                    if let Some((proposer, first_seq, payloads)) = decode_batch(&e.data) {
                        for (i, p) in payloads.into_iter().enumerate() {
                            out.committed.push(CommittedEntry {
                                index: e.index,
                                sub: i as u32,
                                term: e.term,
                                proposal: ProposalId {
                                    proposer,
                                    seq: first_seq + i as u64,
                                },
                                data: p.to_vec(),
                            });
                        }
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    // raft-rs applies either kind (it converts v1 itself).
                    let applied = if e.get_entry_type() == EntryType::EntryConfChange {
                        let cc: Result<ConfChange, _> =
                            protobuf::Message::parse_from_bytes(&e.data);
                        cc.ok().map(|cc| self.raw.apply_conf_change(&cc))
                    } else {
                        let cc: Result<ConfChangeV2, _> =
                            protobuf::Message::parse_from_bytes(&e.data);
                        cc.ok().map(|cc| self.raw.apply_conf_change(&cc))
                    };
                    if let Some(Ok(cs)) = applied {
                        self.raw.mut_store().set_conf_state(cs.clone());
                        self.conf_history.insert(e.index, cs.clone());
                        out.conf_changes.push((e.index, cs));
                    }
                }
            }
        }
    }

    /// Collects everything to do: messages to send (sealed), a snapshot to
    /// install, committed payloads to apply. New entries are already in the
    /// in-memory log when this returns. Call [`Replica::advance`] once the
    /// committed payloads are applied; until then `ready` returns nothing new.
    pub fn ready(&mut self) -> Output {
        let mut out = Output::default();
        if !self.awaiting_advance {
            self.append_bytes_this_ready.clear();
            self.heartbeat_answers_this_ready.clear();
            self.flush();
            for (to, body) in std::mem::take(&mut self.extra) {
                let bytes = self.outbox.seal(to, &body);
                out.messages.push((to, bytes));
            }
            if self.raw.has_ready() {
                let mut rd = self.raw.ready();
                let msgs = rd.take_messages();
                self.seal_all(msgs, &mut out);
                if !rd.snapshot().is_empty() {
                    let snap = rd.snapshot().clone();
                    let meta = snap.get_metadata();
                    out.install_snapshot = Some(InstallSnapshot {
                        index: meta.index,
                        term: meta.term,
                        data: snap.data.to_vec(),
                    });
                    self.conf_history.clear();
                    self.conf_history
                        .insert(meta.index, meta.get_conf_state().clone());
                    self.delivered = meta.index;
                    // Storage refuses only an older snapshot, which raft-rs
                    // never hands out.
                    let _ = self.raw.mut_store().apply_snapshot(snap);
                }
                let committed = rd.take_committed_entries();
                self.apply_committed(committed, &mut out);
                if self.raw.mut_store().append(rd.entries()).is_err() {
                    self.step_errors += 1;
                }
                if let Some(hs) = rd.hs() {
                    self.raw.mut_store().set_hard_state(hs.clone());
                    let now = HardState {
                        term: hs.term,
                        vote: hs.vote,
                    };
                    if now != self.persisted {
                        self.persisted = now;
                        out.hard_state = Some(now);
                    }
                }
                let msgs = rd.take_persisted_messages();
                self.seal_all(msgs, &mut out);
                let mut light = self.raw.advance(rd);
                if let Some(commit) = light.commit_index() {
                    self.raw.mut_store().set_commit(commit);
                }
                let msgs = light.take_messages();
                self.seal_all(msgs, &mut out);
                let committed = light.take_committed_entries();
                self.apply_committed(committed, &mut out);
            }
            if self.raw.raft.state != StateRole::Leader {
                // Deposed: raft no longer waits for these transfers.
                self.snap_tx.clear();
            }
            for (to, chunk) in self.snap_tx.poll() {
                self.snap_stats.chunks_sent += 1;
                let bytes = self.outbox.seal(to, &Body::Snapshot(chunk));
                out.messages.push((to, bytes));
            }
            self.awaiting_advance = self.delivered > self.applied;
        }
        out.dropped = std::mem::take(&mut self.dropped);
        out.snapshot_wanted = self.raw.store().take_snapshot_wanted();
        self.redraw_election_timeout();
        let role = self.raw.raft.state;
        out.role = role;
        out.role_changed = role != self.last_role;
        self.last_role = role;
        let leader = self.raw.raft.leader_id;
        out.leader = self.leader();
        out.leader_changed = leader != self.last_leader;
        self.last_leader = leader;
        out.term = self.raw.raft.term;
        out
    }

    /// Tells the replica the application has applied everything the last
    /// `ready` returned.
    pub fn advance(&mut self) {
        if self.awaiting_advance {
            self.raw.advance_apply_to(self.delivered);
            self.applied = self.delivered;
            self.awaiting_advance = false;
        }
    }

    /// Test-only: makes this replica's envelopes start at a later sequence
    /// number, emulating a restart that kept its identity *and* a peer
    /// transport without replay state. Exists only so the simulation can show
    /// what the incarnation scheme prevents; never use it in a node.
    #[doc(hidden)]
    pub fn skip_sequence_numbers(&mut self, n: u64) {
        self.outbox.skip(n);
    }

    /// Index the application has applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The current role.
    pub fn role(&self) -> StateRole {
        self.raw.raft.state
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The in-memory log (read-only).
    pub fn log(&self) -> &MemLog {
        self.raw.store()
    }

    /// Appends dropped because one `ready` already carried the inflight
    /// window's worth of entries to that follower (raft resends them).
    pub fn appends_deferred(&self) -> u64 {
        self.appends_deferred
    }

    /// Heartbeat responses merged into an earlier one from the same peer
    /// in the same `ready` cycle.
    pub fn heartbeat_answers_merged(&self) -> u64 {
        self.heartbeat_answers_merged
    }

    /// Errors raft-rs returned while stepping messages (counted, not fatal).
    pub fn step_errors(&self) -> u64 {
        self.step_errors
    }

    /// Role, term, indexes, membership and per-peer progress.
    pub fn status(&self) -> Status {
        let store = self.raw.store();
        let cs = store.conf_state();
        let ids = |v: &[u64]| {
            let mut ids: Vec<NodeId> = v
                .iter()
                .map(|&i| self.node_of(i))
                .filter(|n| !(self.restoring && *n == self.cfg.id))
                .collect();
            ids.sort();
            ids
        };
        let matched = if self.raw.raft.state == StateRole::Leader {
            self.raw
                .raft
                .prs()
                .iter()
                .map(|(&id, p)| (self.node_of(id), p.matched))
                .collect()
        } else {
            BTreeMap::new()
        };
        Status {
            id: self.cfg.id,
            role: self.raw.raft.state,
            term: self.raw.raft.term,
            leader: self.leader(),
            commit: self.raw.raft.raft_log.committed,
            applied: self.applied,
            log: (store.first(), store.last()),
            snapshot_index: store.snapshot_ref().get_metadata().index,
            voters: ids(&cs.voters),
            learners: if self.restoring {
                vec![self.cfg.id]
            } else {
                ids(&cs.learners)
            },
            voters_outgoing: ids(&cs.voters_outgoing),
            matched,
            envelopes: self.inbox.stats(),
            snapshot_stream: self.snap_stats,
            snapshot_receiving_bytes: self.snap_rx.held_bytes(),
            restoring: self.restoring,
            votes_abstained: self.votes_abstained,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_round_trips_and_rejects_garbage() {
        let me = NodeId::new(3, 9);
        let payloads = vec![b"a".to_vec(), Vec::new(), vec![7; 300]];
        let enc = encode_batch(me, 42, &payloads);
        let (p, s, got) = decode_batch(&enc).unwrap();
        assert_eq!((p, s), (me, 42));
        assert_eq!(got, payloads.iter().map(|p| &p[..]).collect::<Vec<_>>());
        for cut in 0..enc.len() {
            assert!(decode_batch(&enc[..cut]).is_none());
        }
        assert!(decode_batch(&[9, 9, 9]).is_none());
    }
}
