//! The primary's packet path and every node's apply path, decided without
//! I/O (docs/architecture.md §3.1): captured packets are classified, proposed and held;
//! a held packet gets its verdict only once its entry is committed and
//! applied (commit before verdict), and the service's socket effects come
//! after the verdicts of the same `ready` (the kernel holds the request
//! before the reply leaves, so the reply carries its ACK). What a primary
//! could not commit is kept and handed to the next primary.
//!
//! Call order (the driver):
//! 1. each captured packet: [`Intake::handle_packet`] returns the verdict
//!    to give now, or `None` to hold it; after the batch,
//!    [`Intake::finish_batch`] proposes what it collected;
//! 2. each turn while serving: [`Intake::primary_duties`];
//! 3. each raft `ready`: [`Intake::apply_ready`] with its committed and
//!    dropped proposals; then [`Intake::forward_handover`];
//! 4. stepping down: [`Intake::step_down`];
//! 5. after each of these, perform every [`NodeEffect`] from
//!    [`Intake::poll_effect`], in order.
//!
//! Time comes in as arguments: `now_ms` is the primary's wall clock (entry
//! timestamps, the SYN guard, timers in log time), `now` a monotonic
//! instant (commit latency, how long a handover waits).

use crate::group::{Effect, Item, LogEntry, ServiceGroup};
use crate::machine::takeover::{handed_over_packet, synack_for_replay};
use crate::machine::Verdict;
use crate::proposer::{Proposal, Proposer};
use crate::report::Counters;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};
use tandem_core::classify::{Admit, Class, Direction, JunkReason, Seen, SynGuard, SynLimiter};
use tandem_core::shadow::{ConnKey, ShadowState};
use tandem_replica::{CommittedEntry, NodeId, ProposalId, Replica, StateRole};
use tandem_wire::IpTcpRepr;

/// How long a deposed primary keeps uncommitted packets for the next one.
pub const HANDOVER_WAIT: Duration = Duration::from_secs(2);
/// A proposed cookie-mode handshake is forgotten by the capture path once
/// shadow TCP knows it, or after this long (its entry was lost).
pub const COOKIE_PROPOSED_TTL_MS: u64 = 5_000;

/// What to check about a held handshake packet once its entry is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HandshakeGuard {
    /// A SYN-ACK: shadow TCP must hold a handshake with this server ISN.
    SynAck { key: ConnKey, isn: u32 },
    /// The third ACK of a cookie-mode handshake: shadow TCP must have
    /// opened the connection; if not, `reset` goes to the client.
    ThirdAck {
        key: ConnKey,
        reset: Option<Vec<u8>>,
    },
    /// A later packet of such a handshake, captured before it was applied:
    /// shadow TCP must know the connection.
    Follows {
        key: ConnKey,
        reset: Option<Vec<u8>>,
    },
}

/// A packet the driver sends from its raw socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawPacket {
    /// The RST the kernel would answer a packet of no connection with.
    Reset,
    /// A logged SYN-ACK, to a client whose handshake this node rebuilt as
    /// ESTABLISHED and which retransmits its SYN.
    SynAckReplay,
    /// A client packet a deposed primary handed over, re-injected into
    /// this (serving) node's kernel so that it ACKs it.
    HandedOver,
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEffect {
    /// Verdicts of held packets (NFQUEUE ids).
    Verdicts(Vec<(u32, Verdict)>),
    /// A service effect on the kernel's sockets (primary only).
    Socket(Effect),
    /// An IPv4 packet to send from the raw socket to `to`.
    Raw {
        to: Ipv4Addr,
        bytes: Vec<u8>,
        what: RawPacket,
    },
}

/// One captured packet as the driver hands it over.
#[derive(Debug, Clone, Copy)]
pub struct Captured<'a> {
    /// Its NFQUEUE id.
    pub id: u32,
    pub direction: Direction,
    /// The whole IP packet.
    pub bytes: &'a [u8],
}

/// The packet and apply paths' state.
#[derive(Debug)]
pub struct Intake {
    proposer: Proposer,
    /// The SYN rate limit, the logged/cookie mode choice and the cookie
    /// table (`tandem_core::cookie`): the SYN-flood defence.
    syn_guard: SynGuard,
    /// Held packets checked against shadow TCP once their entry is applied
    /// (never let a SYN-ACK out, or a third ACK in, for a handshake the log
    /// does not know), by NFQUEUE id.
    guarded: BTreeMap<u32, HandshakeGuard>,
    /// RSTs for client packets no connection matches (the kernel's answer),
    /// at most `unknown_rst_rate` per second.
    rst_limiter: SynLimiter,
    /// NFQUEUE ids held until each of our proposals commits.
    held: BTreeMap<ProposalId, Vec<u32>>,
    /// Our proposals not yet committed, as encoded entries: if leadership
    /// goes, they are handed to the next primary with [`Replica::forward`]
    /// (with what could not be proposed during a handover), so that their
    /// clients need not retransmit.
    uncommitted: BTreeMap<ProposalId, Vec<u8>>,
    handover: Vec<Vec<u8>>,
    handover_since: Option<Instant>,
    /// When each of our pending proposals was made (commit latency).
    proposed_at: BTreeMap<ProposalId, Instant>,
    /// Timers the service set, by id: (generation, due at log ms). Tracked
    /// on every replica so that a new primary knows them.
    timers: BTreeMap<u64, (u64, u64)>,
    /// The logged SYN-ACK of each handshake still in progress, and the
    /// handshakes this node rebuilt as ESTABLISHED at takeover: a client
    /// that never got the SYN-ACK retransmits its SYN, and the logged
    /// SYN-ACK is replayed to it from a raw socket (docs/architecture.md §3.5).
    synacks: BTreeMap<ConnKey, Vec<u8>>,
    restored_handshakes: BTreeSet<ConnKey>,
    /// Collected during a capture batch.
    full: Vec<Proposal>,
    late: Vec<Item>,
    effects: VecDeque<NodeEffect>,
}

/// What one `ready`'s committed entries amounted to (for metrics).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    pub entries: u64,
    pub bytes: u64,
    /// Commit latency of each of our proposals that committed.
    pub latencies: Vec<Duration>,
}

impl Intake {
    pub fn new(proposer: Proposer, syn_guard: SynGuard, rst_limiter: SynLimiter) -> Intake {
        Intake {
            proposer,
            syn_guard,
            guarded: BTreeMap::new(),
            rst_limiter,
            held: BTreeMap::new(),
            uncommitted: BTreeMap::new(),
            handover: Vec::new(),
            handover_since: None,
            proposed_at: BTreeMap::new(),
            timers: BTreeMap::new(),
            synacks: BTreeMap::new(),
            restored_handshakes: BTreeSet::new(),
            full: Vec::new(),
            late: Vec::new(),
            effects: VecDeque::new(),
        }
    }

    /// The next thing to do.
    pub fn poll_effect(&mut self) -> Option<NodeEffect> {
        self.effects.pop_front()
    }

    /// Packets held in the queue waiting for their commit.
    pub fn held_count(&self) -> usize {
        self.held.values().map(Vec::len).sum()
    }

    /// Entries waiting to be handed to the next primary.
    pub fn handover_pending(&self) -> usize {
        self.handover.len()
    }

    /// The handshakes a takeover rebuilt as ESTABLISHED.
    pub fn restored_handshakes(&mut self, keys: impl IntoIterator<Item = ConnKey>) {
        self.restored_handshakes.extend(keys);
    }

    /// One captured packet: the verdict to give now, or `None` to hold it
    /// until its entry commits. `serving`: this node gives verdicts;
    /// `lingering`: a deposed primary that still has the silent VIP (a
    /// client's packet goes to the next primary). `parsed` is `None` for a
    /// packet that did not parse (or failed its checksum).
    #[allow(clippy::too_many_arguments)]
    pub fn handle_packet(
        &mut self,
        now_ms: u64,
        group: &ServiceGroup,
        serving: bool,
        lingering: bool,
        packet: Captured<'_>,
        parsed: Option<&IpTcpRepr<'_>>,
        counters: &mut Counters,
    ) -> Option<Verdict> {
        counters.captured += 1;
        let Some(repr) = parsed else {
            counters.dropped_junk += 1;
            return Some(Verdict::Drop);
        };
        let direction = packet.direction;
        if !serving {
            // Not (yet, or no longer) the primary: nothing may pass
            // unlogged. Just deposed, the VIP still here while the clients'
            // ARP caches catch up: the client's packet goes to the next
            // primary instead of waiting for the client's retransmission
            // timer.
            if lingering && direction == Direction::FromClient {
                self.late.push(Item::Packet {
                    from_server: false,
                    bytes: packet.bytes.to_vec(),
                });
            }
            counters.dropped_uncommitted += 1;
            return Some(Verdict::Drop);
        }
        let segment = tandem_core::packet::segment_of(repr);
        let key = ConnKey::of(direction, &segment);
        let facts = tandem_core::packet::facts_of(repr);
        if facts.syn && !facts.ack && self.restored_handshakes.contains(&key) {
            // The kernel holds an ESTABLISHED socket for this handshake,
            // which cannot answer a SYN: replay the logged SYN-ACK instead.
            if let (Some(synack), IpAddr::V4(client)) = (self.synacks.get(&key), key.client.ip()) {
                self.effects.push_back(NodeEffect::Raw {
                    to: client,
                    bytes: synack.clone(),
                    what: RawPacket::SynAckReplay,
                });
            }
            return Some(Verdict::Drop);
        }
        let seen = Seen {
            direction,
            facts,
            key,
            seq: segment.seq.0,
            ack: segment.ack.0,
            bytes: packet.bytes,
        };
        let from_server = matches!(direction, Direction::FromServer);
        let half_open = group.shadow().half_open();
        let class = match self
            .syn_guard
            .admit(seen, group.knows(&key), half_open, now_ms)
        {
            Admit::Handshake { syn, synack } => {
                // The third ACK of a cookie-mode handshake: logged whole,
                // the ACK released once committed (and only if shadow TCP
                // then has the connection).
                counters.cookie_handshakes += 1;
                self.full.extend(self.proposer.on_handshake(
                    now_ms,
                    packet.id,
                    syn,
                    synack,
                    packet.bytes.to_vec(),
                ));
                self.guarded.insert(
                    packet.id,
                    HandshakeGuard::ThirdAck {
                        key,
                        reset: tandem_core::packet::reset_for(repr),
                    },
                );
                return None;
            }
            Admit::Class(class) => class,
        };
        match class {
            Class::Pass => {
                // Cookie mode: nothing to log, nothing to copy.
                counters.cookie_passed += 1;
                counters.released_at_once += 1;
                return Some(Verdict::Accept);
            }
            Class::Junk(JunkReason::SynRateLimited) => counters.syn_rate_limited += 1,
            Class::Junk(JunkReason::NoConnection) => {
                // No connection, no cookie: the kernel would answer with a
                // RST, and so do we, so that a client whose cookie
                // handshake was lost (evicted, or in flight at a failover)
                // is refused instead of hanging.
                if let (Some(reset), IpAddr::V4(client)) =
                    (tandem_core::packet::reset_for(repr), key.client.ip())
                {
                    if self.rst_limiter.admit(now_ms) {
                        self.effects.push_back(NodeEffect::Raw {
                            to: client,
                            bytes: reset,
                            what: RawPacket::Reset,
                        });
                    }
                }
            }
            Class::Commit if from_server => {
                self.guarded.insert(
                    packet.id,
                    HandshakeGuard::SynAck {
                        key,
                        isn: segment.seq.0,
                    },
                );
            }
            Class::Commit if !group.knows(&key) => {
                // After a cookie handshake proposed, not yet applied.
                self.guarded.insert(
                    packet.id,
                    HandshakeGuard::Follows {
                        key,
                        reset: tandem_core::packet::reset_for(repr),
                    },
                );
            }
            _ => {}
        }
        let (verdict, proposal) =
            self.proposer
                .on_packet(now_ms, packet.id, class, from_server, packet.bytes.to_vec());
        self.full.extend(proposal);
        match verdict {
            Some(Verdict::Drop) => counters.dropped_junk += 1,
            Some(Verdict::Accept) => counters.released_at_once += 1,
            None => {}
        }
        verdict
    }

    /// After a batch of captured packets: proposes the full entries, keeps
    /// a lingering node's late client packets for the next primary, and
    /// proposes what waits for commit.
    pub fn finish_batch(
        &mut self,
        now_ms: u64,
        now: Instant,
        replica: &mut Replica,
        counters: &mut Counters,
    ) {
        for proposal in std::mem::take(&mut self.full) {
            self.propose(now, replica, proposal, counters);
        }
        if !self.late.is_empty() {
            let entry = LogEntry {
                timestamp_ms: now_ms,
                items: std::mem::take(&mut self.late),
            };
            self.keep_for_handover(now, entry);
        }
        if let Some(p) = self.proposer.poll(now_ms) {
            self.propose(now, replica, p, counters);
        }
    }

    /// The proposer waits to flush lazily logged packets.
    pub fn flush(
        &mut self,
        now_ms: u64,
        now: Instant,
        replica: &mut Replica,
        counters: &mut Counters,
    ) {
        if let Some(p) = self.proposer.poll(now_ms) {
            self.propose(now, replica, p, counters);
        }
    }

    fn propose(
        &mut self,
        now: Instant,
        replica: &mut Replica,
        proposal: Proposal,
        counters: &mut Counters,
    ) {
        let bytes = proposal.entry.encode();
        match replica.propose(bytes.clone()) {
            Ok(id) => {
                counters.proposals += 1;
                self.proposed_at.insert(id, now);
                self.uncommitted.insert(id, bytes);
                if !proposal.held.is_empty() {
                    self.held.insert(id, proposal.held);
                }
            }
            Err(_) => {
                // A handover under way: the packets never reach this
                // kernel, their bytes go to the next primary.
                self.keep_for_handover(now, proposal.entry);
                self.drop_held(proposal.held, counters);
            }
        }
    }

    /// Keeps an uncommitted entry for the next primary, without our own
    /// SYN-ACKs: those never left this node, and the next primary's kernel
    /// answers the client's retransmitted SYN with its own.
    fn keep_for_handover(&mut self, now: Instant, mut entry: LogEntry) {
        entry.items.retain(|item| {
            !matches!(
                item,
                Item::Packet {
                    from_server: true,
                    ..
                }
            )
        });
        if entry.items.is_empty() {
            return;
        }
        self.handover_since.get_or_insert(now);
        self.handover.push(entry.encode());
    }

    fn keep_encoded_for_handover(&mut self, now: Instant, bytes: &[u8]) {
        if let Ok(entry) = LogEntry::decode(bytes) {
            self.keep_for_handover(now, entry);
        }
    }

    fn drop_held(&mut self, ids: Vec<u32>, counters: &mut Counters) {
        if ids.is_empty() {
            return;
        }
        counters.dropped_uncommitted += ids.len() as u64;
        for id in &ids {
            self.guarded.remove(id);
        }
        self.effects.push_back(NodeEffect::Verdicts(
            ids.into_iter().map(|id| (id, Verdict::Drop)).collect(),
        ));
    }

    /// Hands what this node captured but did not commit to the primary
    /// once one is known; after [`HANDOVER_WAIT`] without one, gives up
    /// (the clients retransmit). Returns how many entries were forwarded.
    pub fn forward_handover(&mut self, now: Instant, serving: bool, replica: &mut Replica) -> u64 {
        if self.handover.is_empty() {
            return 0;
        }
        if replica.role() == StateRole::Leader {
            if serving {
                // Still (or again) the leader: propose them ourselves,
                // unless a transfer refuses proposals — then they wait for
                // the next primary.
                let mut waiting = std::mem::take(&mut self.handover).into_iter();
                for bytes in waiting.by_ref() {
                    match replica.propose(bytes.clone()) {
                        Ok(id) => {
                            self.uncommitted.insert(id, bytes);
                        }
                        Err(_) => {
                            self.handover.push(bytes);
                            break;
                        }
                    }
                }
                self.handover.extend(waiting);
                if self.handover.is_empty() {
                    self.handover_since = None;
                }
            }
            return 0;
        }
        let payloads = std::mem::take(&mut self.handover);
        let count = payloads.len();
        match replica.forward(payloads.clone()) {
            Ok(_) => {
                self.handover_since = None;
                tracing::info!(
                    entries = count,
                    "uncommitted client packets handed to the new primary"
                );
                count as u64
            }
            Err(_)
                if self
                    .handover_since
                    .is_some_and(|at| now.saturating_duration_since(at) < HANDOVER_WAIT) =>
            {
                self.handover = payloads;
                0
            }
            Err(_) => {
                tracing::info!(
                    entries = count,
                    "no primary to hand uncommitted packets to; their clients will retransmit"
                );
                self.handover_since = None;
                0
            }
        }
    }

    /// The verdict of a held packet whose entry was just applied: ACCEPT,
    /// unless it is a handshake packet shadow TCP refused (a full half-open
    /// table, a mismatch): then the kernel must not see it, and a client
    /// whose third ACK it was gets a RST instead of a hang.
    fn guarded_verdict(
        &mut self,
        id: u32,
        group: &ServiceGroup,
        counters: &mut Counters,
    ) -> Verdict {
        let Some(guard) = self.guarded.remove(&id) else {
            return Verdict::Accept;
        };
        let third = matches!(guard, HandshakeGuard::ThirdAck { .. });
        let shadow = group.shadow();
        match guard {
            HandshakeGuard::SynAck { key, isn } => {
                if shadow.info(&key).and_then(|i| i.server_isn) == Some(isn) {
                    Verdict::Accept
                } else {
                    counters.synacks_refused += 1;
                    Verdict::Drop
                }
            }
            HandshakeGuard::ThirdAck { key, reset } | HandshakeGuard::Follows { key, reset } => {
                let open = shadow.info(&key).is_some_and(|i| {
                    !third || !matches!(i.state, ShadowState::SynSeen | ShadowState::SynAckSeen)
                });
                if open {
                    Verdict::Accept
                } else {
                    // Later packets of it are refused too.
                    self.syn_guard.forget(&key);
                    counters.handshakes_refused += u64::from(third);
                    if let (Some(reset), IpAddr::V4(client)) = (reset, key.client.ip()) {
                        self.effects.push_back(NodeEffect::Raw {
                            to: client,
                            bytes: reset,
                            what: RawPacket::Reset,
                        });
                    }
                    Verdict::Drop
                }
            }
        }
    }

    /// What only the primary does each turn: fire due timers, report
    /// clients the kernel gave up on (`gave_up`), flush lazy log items,
    /// and once a second (`sweep`) forget handshake state the log no longer
    /// needs.
    #[allow(clippy::too_many_arguments)]
    pub fn primary_duties(
        &mut self,
        now_ms: u64,
        now: Instant,
        group: &ServiceGroup,
        gave_up: Vec<ConnKey>,
        sweep: bool,
        replica: &mut Replica,
        counters: &mut Counters,
    ) {
        // Timers are due in log time, which is the primaries' clock made
        // monotonic; the primary's own clock is the right comparison.
        let due: Vec<(u64, u64)> = self
            .timers
            .iter()
            .filter(|(_, (_, at))| *at <= now_ms)
            .map(|(id, (generation, _))| (*id, *generation))
            .collect();
        for (id, generation) in due {
            self.timers.remove(&id);
            self.proposer.push(now_ms, Item::Timer { id, generation });
        }
        for key in gave_up {
            self.proposer.push(
                now_ms,
                Item::Abort {
                    client: key.client,
                    server: key.server,
                },
            );
        }
        self.flush(now_ms, now, replica, counters);
        if sweep {
            let in_handshake = |key: &ConnKey| {
                group
                    .shadow()
                    .info(key)
                    .is_some_and(|i| i.state == ShadowState::SynAckSeen)
            };
            self.synacks.retain(|key, _| in_handshake(key));
            self.restored_handshakes.retain(|key| in_handshake(key));
            self.syn_guard
                .sweep(now_ms, COOKIE_PROPOSED_TTL_MS, |key| group.knows(key));
        }
    }

    /// Applies one `ready`'s committed entries to `group` (every node), in
    /// log order, then queues the verdicts of our held packets they
    /// committed, then (serving only) the service's socket effects and the
    /// handed-over packets to re-inject into our kernel (to `vip`). A
    /// `state_lost` node applies nothing. Proposals raft `dropped` lose
    /// their held packets (DROP; the client retransmits) and their bytes go
    /// to the next primary.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_ready(
        &mut self,
        now: Instant,
        me: NodeId,
        vip: Ipv4Addr,
        serving: bool,
        state_lost: bool,
        group: &mut ServiceGroup,
        committed: Vec<CommittedEntry>,
        dropped: Vec<ProposalId>,
        counters: &mut Counters,
    ) -> Applied {
        let mut applied = Applied::default();
        let mut verdicts = Vec::new();
        let mut socket_effects = Vec::new();
        let mut inject: Vec<Vec<u8>> = Vec::new();
        for committed in committed {
            counters.committed_entries += 1;
            applied.entries += 1;
            applied.bytes += committed.data.len() as u64;
            self.uncommitted.remove(&committed.proposal);
            if let Some(at) = self.proposed_at.remove(&committed.proposal) {
                applied.latencies.push(now.saturating_duration_since(at));
            }
            if state_lost {
                // Applying to a state that is not the log's would only
                // make it diverge further (and look healthy).
                continue;
            }
            let index = (committed.index << 16) | u64::from(committed.sub);
            match LogEntry::decode(&committed.data) {
                Ok(entry) => {
                    if serving && committed.proposal.proposer != me {
                        // Committed while we serve but not proposed by us:
                        // packets a deposed primary handed over. Our kernel
                        // must receive them too (it ACKs them, the client
                        // stops resending, and Nagle does not hold its next
                        // request back); they come through the capture
                        // again and are logged as duplicates, which shadow
                        // TCP drops like any retransmission.
                        inject.extend(entry.items.iter().filter_map(handed_over_packet));
                    }
                    for item in &entry.items {
                        if let Item::Packet {
                            from_server: true,
                            bytes,
                        } = item
                        {
                            if let Some((key, packet)) = synack_for_replay(bytes) {
                                self.synacks.insert(key, packet);
                            }
                        }
                    }
                    for effect in group.apply(index, &entry) {
                        match effect {
                            Effect::Timer {
                                id,
                                generation,
                                at_ms,
                            } => {
                                self.timers.insert(id, (generation, at_ms));
                            }
                            Effect::CancelTimer { id } => {
                                self.timers.remove(&id);
                            }
                            other if serving => socket_effects.push(other),
                            _ => {}
                        }
                    }
                }
                Err(err) => {
                    // Authenticated and committed, so every replica skips
                    // it alike; still, it means a bug in a proposer.
                    tracing::error!(index = committed.index, %err, "undecodable log entry skipped");
                }
            }
            if committed.proposal.proposer == me {
                if let Some(ids) = self.held.remove(&committed.proposal) {
                    counters.committed_released += ids.len() as u64;
                    for id in ids {
                        let verdict = self.guarded_verdict(id, group, counters);
                        verdicts.push((id, verdict));
                    }
                }
            }
        }
        // Socket effects wait until the committed packets are released: the
        // kernel must hold a client's request before the reply leaves, so
        // the reply carries the ACK (else the client, under Nagle, waits
        // for a delayed ACK: 40 ms per request).
        if !verdicts.is_empty() {
            self.effects.push_back(NodeEffect::Verdicts(verdicts));
        }
        self.effects
            .extend(socket_effects.into_iter().map(NodeEffect::Socket));
        self.effects
            .extend(inject.into_iter().map(|bytes| NodeEffect::Raw {
                to: vip,
                bytes,
                what: RawPacket::HandedOver,
            }));
        for dropped in dropped {
            self.proposed_at.remove(&dropped);
            if let Some(bytes) = self.uncommitted.remove(&dropped) {
                self.keep_encoded_for_handover(now, &bytes);
            }
            if let Some(ids) = self.held.remove(&dropped) {
                self.drop_held(ids, counters);
            }
        }
        applied
    }

    /// Stops giving verdicts: nothing uncommitted reaches this kernel
    /// (DROP) and its bytes go to the next primary. An entry may also be in
    /// the log already: a duplicate is dropped by shadow TCP like any
    /// retransmission. Cookie-mode handshakes not yet logged are lost, as
    /// with kernel cookies: the next primary answers their ACKs with a RST.
    pub fn step_down(&mut self, now_ms: u64, now: Instant, counters: &mut Counters) {
        self.proposed_at.clear();
        self.restored_handshakes.clear();
        self.syn_guard.clear();
        if let Some(pending) = self.proposer.take(now_ms) {
            self.keep_for_handover(now, pending.entry);
            self.drop_held(pending.held, counters);
        }
        let uncommitted: Vec<Vec<u8>> = std::mem::take(&mut self.uncommitted)
            .into_values()
            .collect();
        for bytes in uncommitted {
            self.keep_encoded_for_handover(now, &bytes);
        }
        let held: Vec<u32> = std::mem::take(&mut self.held)
            .into_values()
            .flatten()
            .collect();
        self.drop_held(held, counters);
    }
}
