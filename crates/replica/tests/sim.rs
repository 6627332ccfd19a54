//! Deterministic simulation of a replica group in one process (issue 4,
//! "How it is proven"; issue 11 item 4): three (or five) replicas on a
//! simulated network driven by a seeded PRNG — delayed, reordered, dropped
//! and duplicated messages, partitions, crashes at any moment (also in the
//! middle of a round of `ready`s, between a leader's commit and its
//! followers learning of it) that lose the in-memory log, restarts as a new
//! incarnation of the same voter slot that abstains until it has caught up
//! (docs/membership.md) — with clients proposing payloads. A checker records
//! every violation of:
//!
//! - I2 at the log level: every replica applies the same payload at the same
//!   (index, position in batch); final applied logs are prefixes of one
//!   another;
//! - I1: every payload acknowledged to a client (its proposer saw it commit)
//!   is in the final log of every live replica, and no leader ever lacks it;
//! - election safety: at most one leader per term;
//! - liveness: whenever a majority of the slots is alive, caught up and
//!   connected, a payload commits within `LIVENESS_BOUND` ticks.
//!
//! The forgotten-log scenario of docs/architecture.md §3.8 is scripted below, with the
//! restoring rule (safe) and without it (the checker must catch the loss),
//! and so is the stale acknowledgement a leader must forget (five nodes).

use std::collections::BTreeMap;

use tandem_replica::{
    ClusterKey, CommittedEntry, Config, HardState, NodeId, Output, ProposalId, Replica, StateRole,
};

/// Ticks within which a group whose majority is alive, caught up and
/// connected must commit again (with up to 10 % of messages dropped and
/// delays of up to 3 ticks): a few election timeouts (15–30 ticks each).
const LIVENESS_BOUND: u64 = 400;

/// SplitMix64: the simulation's only source of randomness.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// True with probability `per_mille`/1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// The application: its state is the list of payloads applied, in order, so
/// that snapshots carry the whole history and logs can be compared.
#[derive(Debug, Clone, Default)]
struct App {
    applied: Vec<((u64, u32), ProposalId, Vec<u8>)>,
}

impl App {
    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for ((index, sub), p, data) in &self.applied {
            out.extend_from_slice(&index.to_be_bytes());
            out.extend_from_slice(&sub.to_be_bytes());
            out.extend_from_slice(&p.proposer.packed().to_be_bytes());
            out.extend_from_slice(&p.seq.to_be_bytes());
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(data);
        }
        out
    }
    fn restore(bytes: &[u8]) -> Self {
        let mut app = App::default();
        let mut at = 0;
        let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
        let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        while at < bytes.len() {
            let index = u64_at(at);
            let sub = u32_at(at + 8);
            let proposer = NodeId::from_packed(u64_at(at + 12));
            let seq = u64_at(at + 20);
            let len = u32_at(at + 28) as usize;
            let data = bytes[at + 32..at + 32 + len].to_vec();
            at += 32 + len;
            app.applied
                .push(((index, sub), ProposalId { proposer, seq }, data));
        }
        app
    }
}

struct Node {
    replica: Option<Replica>,
    incarnation: u64,
    /// What survives a crash: the hard state written when `ready` said so.
    disk: HardState,
    /// Restoring at the end of the previous step.
    restoring: bool,
    app: App,
    applied_since_compact: usize,
}

#[derive(Debug, Clone)]
struct Packet {
    from: u16,
    to: u16,
    bytes: Vec<u8>,
}

/// Knobs of one simulated run.
#[derive(Debug, Clone)]
struct Faults {
    drop: u64,
    dup: u64,
    max_delay: u64,
    compact_every: usize,
    /// Fixed batch size (payloads per entry); random per node if `None`.
    batch: Option<usize>,
    /// Restart crashed nodes as the same voter (same id, empty log) that
    /// votes at once: the unsafe scheme the restoring rule exists to prevent.
    unsafe_rejoin: bool,
    /// Crashes may hit any node at any time (double failures included).
    any_failures: bool,
    /// Per mille of `ready` rounds after which the leader crashes at once
    /// (before its messages of that round are delivered).
    crash_in_pump: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            drop: 0,
            dup: 0,
            max_delay: 0,
            compact_every: 50,
            batch: None,
            unsafe_rejoin: false,
            any_failures: false,
            crash_in_pump: 0,
        }
    }
}

struct Sim {
    now: u64,
    rng: Rng,
    key: ClusterKey,
    slots: Vec<u16>,
    nodes: BTreeMap<u16, Node>,
    net: BTreeMap<(u64, u64), Packet>,
    packet_no: u64,
    /// Pairs of slots that cannot talk (both directions), by lower slot first.
    cut: Vec<(u16, u16)>,
    faults: Faults,
    // The checker.
    positions: BTreeMap<(u64, u32), (ProposalId, Vec<u8>)>,
    proposed: BTreeMap<ProposalId, Vec<u8>>,
    /// Acknowledged payloads: (index, sub, entry term, proposer's term when
    /// it saw the commit).
    acked: BTreeMap<ProposalId, (u64, u32, u64, u64)>,
    violations: Vec<String>,
    leaders_seen: u64,
    snapshots_installed: u64,
    /// Restarted nodes that caught up and voted again.
    restores: u64,
    /// The leader of each term seen.
    leader_of_term: BTreeMap<u64, NodeId>,
    /// Since when a majority has been alive, caught up and connected with
    /// no commit (see `check_liveness`).
    stalled_since: Option<u64>,
    acked_seen: usize,
    /// Longest such wait seen.
    longest_wait: u64,
    /// `acked` in the order acknowledged, and how many of them each
    /// (leader, term) has been checked for.
    acked_order: Vec<ProposalId>,
    leader_checked: BTreeMap<(NodeId, u64), usize>,
    /// Crashes done inside `pump` (`Faults::crash_in_pump`), waiting for the
    /// schedule to restart them.
    crashed_in_pump: Vec<u16>,
    /// A node whose event loop is held up (a long takeover): it neither
    /// ticks nor reads nor handles `ready`; what is sent to it waits.
    busy: Option<u16>,
    /// Whether `check_liveness` runs (randomized runs under steady load).
    check_live: bool,
}

impl Sim {
    fn new(seed: u64, faults: Faults) -> Self {
        Self::with_slots(seed, faults, 3)
    }

    fn with_slots(seed: u64, faults: Faults, n: u16) -> Self {
        let key = ClusterKey::from_secret(b"simulated cluster secret, 32 by.").unwrap();
        let slots: Vec<u16> = (1..=n).collect();
        let mut sim = Sim {
            now: 0,
            rng: Rng(seed),
            key,
            slots: slots.clone(),
            nodes: BTreeMap::new(),
            net: BTreeMap::new(),
            packet_no: 0,
            cut: Vec::new(),
            faults,
            positions: BTreeMap::new(),
            proposed: BTreeMap::new(),
            acked: BTreeMap::new(),
            violations: Vec::new(),
            leaders_seen: 0,
            snapshots_installed: 0,
            restores: 0,
            leader_of_term: BTreeMap::new(),
            stalled_since: None,
            acked_seen: 0,
            longest_wait: 0,
            acked_order: Vec::new(),
            leader_checked: BTreeMap::new(),
            crashed_in_pump: Vec::new(),
            check_live: false,
            busy: None,
        };
        for s in slots {
            sim.nodes.insert(
                s,
                Node {
                    replica: None,
                    incarnation: 0,
                    disk: HardState::default(),
                    restoring: false,
                    app: App::default(),
                    applied_since_compact: 0,
                },
            );
            sim.start(s);
        }
        sim
    }

    fn config(&mut self, id: NodeId) -> Config {
        let mut cfg = Config::new(id, self.slots.clone());
        cfg.seed = self.rng.next();
        // Small batches sometimes, to exercise flushing by size.
        cfg.max_batch_payloads = match self.faults.batch {
            Some(n) => n,
            None => 1 + self.rng.below(8) as usize,
        };
        cfg
    }

    /// Starts (or restarts) the process on `slot` with the next incarnation
    /// (or, unsafely, the same one) and an empty log.
    fn start(&mut self, slot: u16) {
        let unsafe_rejoin = self.faults.unsafe_rejoin;
        let inc = {
            let n = self.nodes.get_mut(&slot).unwrap();
            if !(unsafe_rejoin && n.incarnation > 0) {
                n.incarnation += 1;
            }
            n.incarnation
        };
        let mut cfg = self.config(NodeId::new(slot, inc));
        if !unsafe_rejoin {
            cfg.hard_state = self.nodes[&slot].disk;
        }
        let mut r = Replica::new(cfg, self.key.clone()).unwrap();
        if unsafe_rejoin {
            // Peers remember the old process's sequence numbers.
            r.skip_sequence_numbers(1 << 40);
        }
        let n = self.nodes.get_mut(&slot).unwrap();
        n.replica = Some(r);
        n.app = App::default();
        n.applied_since_compact = 0;
    }

    fn crash(&mut self, slot: u16) {
        let n = self.nodes.get_mut(&slot).unwrap();
        n.replica = None;
        n.app = App::default();
    }

    fn is_cut(&self, a: u16, b: u16) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
    }

    fn isolate(&mut self, slot: u16) {
        for &s in &self.slots.clone() {
            if s != slot && !self.is_cut(s, slot) {
                self.cut.push((s.min(slot), s.max(slot)));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    fn replica(&mut self, slot: u16) -> &mut Replica {
        self.nodes.get_mut(&slot).unwrap().replica.as_mut().unwrap()
    }

    fn send(&mut self, from: u16, to: u16, bytes: Vec<u8>) {
        if self.is_cut(from, to) || self.rng.chance(self.faults.drop) {
            return;
        }
        let copies = if self.rng.chance(self.faults.dup) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = self.now + 1 + self.rng.below(self.faults.max_delay + 1);
            self.packet_no += 1;
            self.net.insert(
                (at, self.packet_no),
                Packet {
                    from,
                    to,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    fn handle_output(&mut self, slot: u16, out: Output) {
        // The hard state is on disk before any message leaves.
        if let Some(hs) = out.hard_state {
            let disk = &mut self.nodes.get_mut(&slot).unwrap().disk;
            if hs.term < disk.term {
                self.violations.push(format!(
                    "slot {slot}: hard state went back from {disk:?} to {hs:?}"
                ));
            }
            *disk = hs;
        }
        for (to, bytes) in out.messages {
            self.send(slot, to.slot, bytes);
        }
        if out.role_changed && out.role == StateRole::Leader {
            self.leaders_seen += 1;
        }
        let me = self.nodes[&slot].replica.as_ref().unwrap().id();
        if out.role == StateRole::Leader {
            match self.leader_of_term.get(&out.term) {
                Some(&other) if other != me => self.violations.push(format!(
                    "two leaders in term {}: {other} and {me}",
                    out.term
                )),
                Some(_) => {}
                None => {
                    self.leader_of_term.insert(out.term, me);
                }
            }
        }
        if let Some(snap) = out.install_snapshot {
            self.snapshots_installed += 1;
            let app = App::restore(&snap.data);
            for (pos, p, data) in &app.applied {
                self.check_position(slot, *pos, *p, data);
            }
            self.nodes.get_mut(&slot).unwrap().app = app;
        }
        for CommittedEntry {
            index,
            sub,
            term,
            proposal,
            data,
        } in out.committed
        {
            self.check_position(slot, (index, sub), proposal, &data);
            if self.proposed.get(&proposal) != Some(&data) {
                self.violations.push(format!(
                    "slot {slot}: committed {proposal:?} with data never proposed under that id"
                ));
            }
            let n = self.nodes.get_mut(&slot).unwrap();
            if let Some((last, _, _)) = n.app.applied.last() {
                if *last >= (index, sub) {
                    self.violations.push(format!(
                        "slot {slot}: applied ({index},{sub}) after {last:?}"
                    ));
                }
            }
            n.app.applied.push(((index, sub), proposal, data));
            n.applied_since_compact += 1;
            if proposal.proposer == me
                && self
                    .acked
                    .insert(proposal, (index, sub, term, out.term))
                    .is_none()
            {
                self.acked_order.push(proposal);
            }
        }
        let n = self.nodes.get_mut(&slot).unwrap();
        let r = n.replica.as_mut().unwrap();
        r.advance();
        if out.snapshot_wanted || n.applied_since_compact >= self.faults.compact_every {
            n.applied_since_compact = 0;
            let applied = r.applied();
            let _ = r.compact(applied, n.app.snapshot());
        }
    }

    fn check_position(&mut self, slot: u16, pos: (u64, u32), p: ProposalId, data: &[u8]) {
        match self.positions.get(&pos) {
            None => {
                self.positions.insert(pos, (p, data.to_vec()));
            }
            Some((q, d)) if *q == p && d == data => {}
            Some((q, _)) => self.violations.push(format!(
                "I2: slot {slot} applied {p:?} at {pos:?}, another replica applied {q:?} there"
            )),
        }
    }

    /// Leader completeness: an entry committed in term C is in the log of
    /// every leader of a term after C (same term at the same index implies
    /// the same entry). The commit happened in a term no later than the
    /// proposer's term when it saw it, so leaders of later terms are checked.
    /// (A deposed leader that has not noticed yet may lack newer entries.)
    ///
    /// A leader's log only grows during its term, so each acknowledged
    /// payload is checked once per (leader, term).
    fn check_leaders(&mut self) {
        let mut found = Vec::new();
        for (&slot, n) in &self.nodes {
            let Some(r) = &n.replica else { continue };
            if r.role() != StateRole::Leader {
                continue;
            }
            let log = r.log();
            let checked = self.leader_checked.entry((r.id(), r.term())).or_insert(0);
            let new = &self.acked_order[*checked..];
            *checked = self.acked_order.len();
            for p in new {
                let (index, _, term, ack_term) = self.acked[p];
                use raft::Storage;
                // Entries inside the snapshot are covered by the position check.
                let ok = r.term() <= ack_term
                    || index < log.first().saturating_sub(1)
                    || log.term(index).ok() == Some(term);
                if !ok {
                    found.push(format!(
                        "I1: slot {slot} ({}) leads in term {} without acknowledged {p:?} at index {index}",
                        r.id(),
                        r.term()
                    ));
                }
            }
        }
        for f in found {
            if !self.violations.contains(&f) {
                self.violations.push(f);
            }
        }
    }

    fn pump(&mut self) {
        for _ in 0..20 {
            let mut any = false;
            for slot in self.slots.clone() {
                if self.busy == Some(slot) {
                    continue;
                }
                let Some(r) = self.nodes.get_mut(&slot).unwrap().replica.as_mut() else {
                    continue;
                };
                if r.has_ready() {
                    let out = r.ready();
                    let leads = out.role == StateRole::Leader;
                    let committed = !out.committed.is_empty();
                    self.handle_output(slot, out);
                    any = true;
                    // A leader that has just committed dies before anyone
                    // else hears of it (when the schedule allows a crash).
                    if leads
                        && committed
                        && self.crash_allowed()
                        && self.rng.chance(self.faults.crash_in_pump)
                    {
                        self.crash(slot);
                        self.crashed_in_pump.push(slot);
                    }
                }
            }
            if !any {
                break;
            }
        }
    }

    /// Whether a random crash is within the schedule's fault model: one
    /// failure at a time — every slot is up and none is still restoring
    /// (a second loss before the first is repaired is a double failure,
    /// which three in-memory replicas cannot survive: see
    /// `any_failures_never_lose_a_commit` for what still holds then).
    fn crash_allowed(&self) -> bool {
        self.faults.any_failures
            || self
                .nodes
                .values()
                .all(|n| n.replica.as_ref().is_some_and(|r| !r.is_restoring()))
    }

    /// Liveness: while a majority of the slots is alive, not restoring and
    /// connected to one another, something must commit within
    /// `LIVENESS_BOUND` ticks (clients propose to the leader all the time).
    fn check_liveness(&mut self) {
        if !self.check_live {
            return;
        }
        let able: Vec<u16> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.replica.as_ref().is_some_and(|r| !r.is_restoring()))
            .map(|(&s, _)| s)
            .filter(|&s| self.busy != Some(s))
            .collect();
        // The largest group of them that can all talk to one another (at
        // most one slot is isolated at a time in these schedules).
        let connected = able
            .iter()
            .filter(|&&a| {
                able.iter()
                    .filter(|&&b| a != b && self.is_cut(a, b))
                    .count()
                    == 0
            })
            .count();
        let majority = self.slots.len() / 2 + 1;
        let progressed = self.acked.len() > self.acked_seen;
        self.acked_seen = self.acked.len();
        if connected < majority || progressed {
            self.stalled_since = None;
            return;
        }
        let since = *self.stalled_since.get_or_insert(self.now);
        let waited = self.now - since;
        self.longest_wait = self.longest_wait.max(waited);
        if waited == LIVENESS_BOUND {
            self.violations.push(format!(
                "liveness: a majority was alive, caught up and connected from tick {since} and nothing committed for {LIVENESS_BOUND} ticks"
            ));
        }
    }

    /// One tick of simulated time.
    fn step(&mut self) {
        self.now += 1;
        for slot in self.slots.clone() {
            if self.busy == Some(slot) {
                continue;
            }
            if let Some(r) = self.nodes.get_mut(&slot).unwrap().replica.as_mut() {
                r.tick();
            }
        }
        self.pump();
        let mut waiting = Vec::new();
        while let Some(entry) = self.net.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let pkt = entry.remove();
            if self.is_cut(pkt.from, pkt.to) {
                continue;
            }
            if self.busy == Some(pkt.to) {
                waiting.push(pkt);
                continue;
            }
            if let Some(r) = self.nodes.get_mut(&pkt.to).unwrap().replica.as_mut() {
                r.set_clock(self.now);
                let _ = r.receive(&pkt.bytes);
            }
            self.pump();
        }
        // Read once the node's loop runs again, in the order sent.
        for pkt in waiting {
            self.packet_no += 1;
            self.net.insert((self.now + 1, self.packet_no), pkt);
        }
        self.check_leaders();
        self.check_liveness();
        for n in self.nodes.values_mut() {
            let restoring = n.replica.as_ref().is_some_and(|r| r.is_restoring());
            if n.restoring && !restoring && n.replica.is_some() {
                self.restores += 1;
            }
            n.restoring = restoring;
        }
    }

    fn run(&mut self, ticks: u64) {
        for _ in 0..ticks {
            self.step();
        }
    }

    fn leader(&self) -> Option<u16> {
        self.nodes
            .iter()
            .filter_map(|(&s, n)| {
                let r = n.replica.as_ref()?;
                (r.role() == StateRole::Leader).then_some((r.term(), s))
            })
            .max()
            .map(|(_, s)| s)
    }

    fn propose(&mut self, slot: u16, data: Vec<u8>) -> Option<ProposalId> {
        let p = self.replica(slot).propose(data.clone()).ok()?;
        self.proposed.insert(p, data);
        Some(p)
    }

    fn propose_at_leader(&mut self, count: usize) {
        let Some(l) = self.leader() else { return };
        for _ in 0..count {
            let data = format!("payload {} at {}", self.proposed.len(), self.now).into_bytes();
            if self.propose(l, data).is_none() {
                break;
            }
        }
    }

    /// The cluster is whole: every slot alive, a leader that knows every
    /// live process (its status lists exactly them as voters), and every
    /// replica votes (not restoring) with every slot as a voter. (A
    /// follower may name an earlier incarnation of a peer it never had to
    /// send to: it learns the new one when it does, see `receive`.)
    fn healthy(&self) -> bool {
        let Some(leader) = self.leader() else {
            return false;
        };
        let live: Vec<NodeId> = self
            .nodes
            .values()
            .filter_map(|n| n.replica.as_ref().map(|r| r.id()))
            .collect();
        live.len() == self.slots.len()
            && self.nodes[&leader]
                .replica
                .as_ref()
                .unwrap()
                .status()
                .voters
                == live
            && self.nodes.values().all(|n| {
                let st = n.replica.as_ref().unwrap().status();
                !st.restoring
                    && st.voters.iter().map(|v| v.slot).collect::<Vec<_>>() == self.slots
                    && st.learners.is_empty()
                    && st.voters_outgoing.is_empty()
            })
    }

    /// Final checks: logs are prefixes of one another and every acknowledged
    /// payload is in every live replica's log.
    fn final_check(&mut self) {
        type Log = Vec<((u64, u32), ProposalId)>;
        let whole = self.healthy();
        // (slot, log, restoring): a restoring replica has not caught up, so
        // it may lack acknowledged payloads (it does not vote meanwhile).
        let logs: Vec<(u16, Log, bool)> = self
            .nodes
            .iter()
            .filter_map(|(&s, n)| {
                let r = n.replica.as_ref()?;
                Some((
                    s,
                    n.app.applied.iter().map(|(pos, p, _)| (*pos, *p)).collect(),
                    r.is_restoring(),
                ))
            })
            .collect();
        for (a, la, restoring) in &logs {
            for (b, lb, _) in &logs {
                let k = la.len().min(lb.len());
                if la[..k] != lb[..k] {
                    self.violations
                        .push(format!("I2: logs of slots {a} and {b} are not prefixes"));
                }
            }
            for (p, &(index, sub, _, _)) in &self.acked {
                // With double failures the group may be stalled for good:
                // then lagging is no loss (leaders and positions are
                // checked all along).
                if *restoring || (self.faults.any_failures && !whole) {
                    break;
                }
                if !la.contains(&((index, sub), *p)) {
                    self.violations.push(format!(
                        "I1: acknowledged {p:?} at ({index},{sub}) missing from slot {a}'s log"
                    ));
                }
            }
        }
    }
}

/// The seeds of the randomized runs: `TANDEM_SIM_SEEDS` of them (default
/// 2000, the CI run) from `TANDEM_SIM_SEED_START` (default 0).
fn seeds() -> std::ops::Range<u64> {
    let var = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let start = var("TANDEM_SIM_SEED_START", 0);
    start..start + var("TANDEM_SIM_SEEDS", 2000)
}

/// Ticks of faults in one randomized run (`TANDEM_SIM_TICKS`, default 600:
/// about three crashes per run, and 2,000 runs stay within CI's budget).
fn run_ticks() -> u64 {
    std::env::var("TANDEM_SIM_TICKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600)
}

/// One randomized run: client load, partitions of one node, network faults,
/// and crashes at any moment of the schedule — between ticks, and right
/// after a leader's `ready` that committed something (before its messages
/// of that round leave). With `any_failures` a crash may hit any node at
/// any time, also while another is down or restoring (safety is checked,
/// liveness cannot be); otherwise one failure at a time, and liveness is
/// checked throughout. Then heal, restart, settle, and check.
fn random_run(seed: u64, slots: u16, any_failures: bool) -> Sim {
    let mut rng = Rng(seed ^ 0x5eed);
    let faults = Faults {
        drop: rng.below(100),
        dup: rng.below(50),
        max_delay: rng.below(4),
        compact_every: 10 + rng.below(60) as usize,
        batch: None,
        unsafe_rejoin: false,
        crash_in_pump: rng.below(30),
        any_failures,
    };
    let mut sim = Sim::with_slots(seed, faults, slots);
    sim.check_live = !any_failures;
    let mut down: Vec<(u16, u64)> = Vec::new();
    let mut isolated_until = 0;
    for _ in 0..run_ticks() {
        let r = sim.rng.next() % 1000;
        if r < 300 {
            let n = 1 + sim.rng.below(6) as usize;
            sim.propose_at_leader(n);
        }
        for slot in std::mem::take(&mut sim.crashed_in_pump) {
            let until = sim.now + 20 + sim.rng.below(200);
            down.push((slot, until));
        }
        let now = sim.now;
        down.retain(|&(slot, until)| {
            if now >= until {
                sim.start(slot);
                false
            } else {
                true
            }
        });
        if sim.rng.chance(12) && sim.crash_allowed() {
            // The leader half the time (if any), else any live node.
            let live: Vec<u16> = sim
                .nodes
                .iter()
                .filter(|(_, n)| n.replica.is_some())
                .map(|(&s, _)| s)
                .collect();
            let slot = match sim.leader() {
                Some(l) if sim.rng.chance(500) => Some(l),
                _ if live.is_empty() => None,
                _ => Some(live[sim.rng.below(live.len() as u64) as usize]),
            };
            if let Some(slot) = slot {
                sim.crash(slot);
                down.push((slot, sim.now + 20 + sim.rng.below(200)));
            }
        }
        if isolated_until != 0 && sim.now >= isolated_until {
            sim.heal();
            isolated_until = 0;
        } else if isolated_until == 0 && sim.rng.chance(5) {
            let slot = sim.slots[sim.rng.below(sim.slots.len() as u64) as usize];
            sim.isolate(slot);
            isolated_until = sim.now + 10 + sim.rng.below(150);
        }
        sim.step();
    }
    // Settle: heal, restart, stop faults, and wait for the cluster to be whole
    // and every live replica to have applied everything acknowledged (no
    // more load: liveness was checked under it).
    sim.check_live = false;
    sim.heal();
    sim.faults.crash_in_pump = 0;
    down.extend(sim.crashed_in_pump.drain(..).map(|s| (s, 0)));
    for (slot, _) in down {
        sim.start(slot);
    }
    sim.faults.drop = 0;
    sim.faults.dup = 0;
    for _ in 0..3000 {
        sim.step();
        if sim.now.is_multiple_of(50) && sim.healthy() {
            let target = sim.acked.values().map(|a| a.0).max().unwrap_or(0);
            let caught_up = sim.nodes.values().all(|n| {
                n.app
                    .applied
                    .last()
                    .map_or(target == 0, |l| l.0 .0 >= target)
            });
            if caught_up {
                break;
            }
        }
    }
    sim.final_check();
    sim
}

/// Runs `seeds` and checks every run; returns (acknowledged, leaders,
/// snapshots, restores, longest wait for a commit).
fn check_seeds(
    range: std::ops::Range<u64>,
    slots: u16,
    any_failures: bool,
    must_heal: bool,
) -> (usize, u64, u64, u64, u64) {
    let (mut acked, mut leaders, mut snaps, mut restores, mut wait) = (0, 0, 0, 0, 0);
    for seed in range {
        let sim = random_run(seed, slots, any_failures);
        if !sim.violations.is_empty() {
            for (s, n) in &sim.nodes {
                eprintln!(
                    "slot {s}: {:?}\n  applied {} first {:?} last {:?}",
                    n.replica.as_ref().map(|r| r.status()),
                    n.app.applied.len(),
                    n.app.applied.first().map(|e| e.0),
                    n.app.applied.last().map(|e| e.0)
                );
            }
        }
        assert!(
            sim.violations.is_empty(),
            "seed {seed} ({slots} slots, any_failures {any_failures}): {:#?}",
            &sim.violations[..sim.violations.len().min(10)]
        );
        if must_heal && !sim.healthy() {
            for (s, n) in &sim.nodes {
                eprintln!("slot {s}: {:?}", n.replica.as_ref().map(|r| r.status()));
            }
            panic!("seed {seed} ({slots} slots): cluster not whole after settling");
        }
        acked += sim.acked.len();
        leaders += sim.leaders_seen;
        snaps += sim.snapshots_installed;
        restores += sim.restores;
        wait = wait.max(sim.longest_wait);
    }
    (acked, leaders, snaps, restores, wait)
}

#[test]
fn random_schedules_keep_i1_i2_and_liveness() {
    let range = seeds();
    let n = range.end - range.start;
    let started = std::time::Instant::now();
    let (acked, leaders, snaps, restores, wait) = check_seeds(range.clone(), 3, false, true);
    eprintln!(
        "{n} seeds, 3 slots, one failure at a time: {acked} payloads acknowledged, {leaders} leaders elected, {snaps} snapshots installed, {restores} restarted nodes restored, longest wait for a commit with a majority up {wait} ticks (bound {LIVENESS_BOUND}); {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The runs must actually exercise failover, snapshots and restarts.
    assert!(acked > 50 * n as usize, "too little load: {acked}");
    assert!(leaders > n && snaps > 0 && restores > n / 2);
}

#[test]
fn five_slot_schedules_keep_i1_i2_and_liveness() {
    let range = seeds();
    let n = (range.end - range.start) / 10;
    let range = range.start..range.start + n.max(1);
    let (acked, leaders, _, restores, wait) = check_seeds(range, 5, false, true);
    eprintln!(
        "{n} seeds, 5 slots: {acked} acknowledged, {leaders} leaders, {restores} restores, longest wait {wait} ticks"
    );
    assert!(acked > 0 && restores > 0);
}

/// Any node may crash at any time, also while another is down or still
/// restoring: a double failure may stall the group (it lost the only copies
/// of entries, or the only voters that can vouch for them), but it must
/// never lose or change a committed entry, nor elect two leaders in a term.
#[test]
fn any_failures_never_lose_a_commit() {
    let range = seeds();
    let n = (range.end - range.start) / 10;
    let range = range.start..range.start + n.max(1);
    let (acked, leaders, _, _, _) = check_seeds(range.clone(), 3, true, false);
    let five = range.start..range.start + (n / 4).max(1);
    let (acked5, _, _, _, _) = check_seeds(five, 5, true, false);
    eprintln!("{n} seeds with any failures: {acked} + {acked5} acknowledged, {leaders} leaders");
    assert!(acked > 0 && leaders > 0);
}

#[test]
fn same_seed_same_history() {
    let a = random_run(7, 3, false);
    let b = random_run(7, 3, false);
    assert_eq!(a.acked, b.acked);
    assert_eq!(a.positions, b.positions);
    assert_eq!(a.now, b.now);
}

/// The forgotten-log scenario, up to the point where the leader dies:
/// slot 1 leads, slot 3 is cut off, X commits on 1 and 2, then 2 crashes and
/// restarts with an empty log. Returns the sim and X's id.
fn forgotten_log_setup(unsafe_rejoin: bool) -> (Sim, ProposalId) {
    let faults = Faults {
        unsafe_rejoin,
        ..Faults::default()
    };
    let mut sim = Sim::new(42, faults);
    sim.replica(1).campaign();
    sim.run(50);
    assert_eq!(sim.leader(), Some(1));
    for i in 0..5 {
        sim.propose(1, format!("before {i}").into_bytes()).unwrap();
    }
    sim.run(10);
    sim.isolate(3);
    let x = sim.propose(1, b"X".to_vec()).unwrap();
    sim.run(10);
    assert!(sim.acked.contains_key(&x), "X acknowledged via 1 and 2");
    sim.crash(2);
    sim.start(2);
    (sim, x)
}

#[test]
fn forgotten_log_with_incarnations_never_elects_a_log_without_x() {
    let (mut sim, _x) = forgotten_log_setup(false);
    // The leader dies before 2's new incarnation has caught up.
    sim.crash(1);
    sim.heal();
    sim.run(2000);
    // 3 (lacking X) never wins: 2.2 forgot X and abstains until a leader of
    // its persisted term or later catches it up, which none can now. The
    // group is unavailable (a double failure: 1 died, 2 lost its log), but
    // has lost nothing.
    assert_eq!(sim.leader(), None);
    assert!(sim.replica(2).is_restoring());
    assert!(sim.replica(2).status().votes_abstained > 0);
    sim.final_check();
    // Live replicas hold no conflicting entry; availability (not I1) is what
    // a double failure costs, so only positional agreement is checked here.
    let i2: Vec<_> = sim
        .violations
        .iter()
        .filter(|v| v.starts_with("I2"))
        .collect();
    assert!(i2.is_empty(), "{i2:#?}");
    assert!(
        !sim.violations.iter().any(|v| v.contains("leads")),
        "{:#?}",
        sim.violations
    );
}

#[test]
fn forgotten_log_with_incarnations_restores_then_survives_leader_loss() {
    let (mut sim, x) = forgotten_log_setup(false);
    // The leader lives long enough to catch 2.2 up, which then votes
    // again. (It needs 3 back for that: with 2 restoring and 3 cut off,
    // check-quorum deposes it.)
    sim.heal();
    sim.run(300);
    let st = sim.replica(1).status();
    assert_eq!(
        st.voters,
        vec![NodeId::new(1, 1), NodeId::new(2, 2), NodeId::new(3, 1)],
        "{st:?}"
    );
    assert!(!sim.replica(2).is_restoring());
    assert_eq!(sim.restores, 1);
    sim.crash(1);
    sim.heal();
    sim.run(1000);
    // Both survivors hold X (3 caught up once healed): whichever wins, the
    // group goes on with X, and with 2.2 voting.
    let l = sim.leader().expect("2.2 and 3.1 form a majority");
    sim.propose(l, b"after".to_vec()).unwrap();
    sim.run(100);
    sim.crash(1); // stays down; check the live ones
    sim.final_check();
    assert!(sim.violations.is_empty(), "{:#?}", sim.violations);
    let log3: Vec<_> = sim.nodes[&3].app.applied.iter().map(|e| e.1).collect();
    assert!(log3.contains(&x));
}

#[test]
fn forgotten_log_without_incarnations_loses_x_and_the_checker_says_so() {
    let (mut sim, x) = forgotten_log_setup(true);
    sim.crash(1);
    sim.heal();
    sim.run(1000);
    // 2 came back as voter 2.1 with an empty log that votes at once; 3
    // (lacking X) wins with 2's vote and overwrites X's index.
    assert_eq!(sim.leader(), Some(3));
    sim.propose(3, b"overwrites X".to_vec()).unwrap();
    sim.run(100);
    sim.final_check();
    assert!(
        sim.violations.iter().any(|v| v.contains("leads")),
        "{:#?}",
        sim.violations
    );
    assert!(
        sim.violations
            .iter()
            .any(|v| v.contains(&format!("{x:?}")) && v.contains("missing")),
        "{:#?}",
        sim.violations
    );
}

// A failing seed replays alone: TANDEM_SIM_SEED_START=n TANDEM_SIM_SEEDS=1
// cargo test -p tandem-replica --test sim -- --nocapture

fn quiet_cluster(faults: Faults) -> Sim {
    let mut sim = Sim::new(1, faults);
    sim.replica(1).campaign();
    sim.run(30);
    assert_eq!(sim.leader(), Some(1));
    sim
}

#[test]
fn proposals_are_batched_into_entries() {
    let mut sim = quiet_cluster(Faults {
        batch: Some(1000),
        ..Faults::default()
    });
    let ids: Vec<_> = (0..10).map(|i| sim.propose(1, vec![i]).unwrap()).collect();
    sim.run(10);
    let entries: Vec<_> = ids.iter().map(|p| sim.acked[p]).collect();
    // All ten in one entry, in order.
    assert!(entries.iter().all(|e| e.0 == entries[0].0));
    assert_eq!(
        entries.iter().map(|e| e.1).collect::<Vec<_>>(),
        (0..10).collect::<Vec<u32>>()
    );
    // A full batch is flushed at once: 2 per entry.
    let mut sim = quiet_cluster(Faults {
        batch: Some(2),
        ..Faults::default()
    });
    let ids: Vec<_> = (0..6).map(|i| sim.propose(1, vec![i]).unwrap()).collect();
    sim.run(10);
    let idx: Vec<_> = ids.iter().map(|p| sim.acked[p].0).collect();
    assert_eq!(idx[0], idx[1]);
    assert_eq!(idx[2], idx[0] + 1);
    assert_eq!(idx[4], idx[0] + 2);
    sim.final_check();
    assert!(sim.violations.is_empty(), "{:#?}", sim.violations);
}

#[test]
fn only_the_leader_proposes() {
    let mut sim = quiet_cluster(Faults::default());
    let err = sim.replica(2).propose(b"x".to_vec()).unwrap_err();
    assert_eq!(
        err,
        tandem_replica::ProposeError::NotLeader {
            leader: Some(NodeId::new(1, 1))
        }
    );
}

#[test]
fn leadership_transfer_moves_the_primary() {
    let mut sim = quiet_cluster(Faults::default());
    sim.propose(1, b"a".to_vec()).unwrap();
    sim.run(10);
    sim.replica(1).transfer_leader(NodeId::new(2, 1));
    // While the transfer runs, the old leader refuses proposals (or is
    // already a follower).
    assert!(sim.replica(1).propose(b"b".to_vec()).is_err());
    sim.run(10);
    assert_eq!(sim.leader(), Some(2));
    sim.propose(2, b"c".to_vec()).unwrap();
    sim.run(10);
    sim.final_check();
    assert!(sim.violations.is_empty(), "{:#?}", sim.violations);
    assert_eq!(sim.acked.len(), 2);
}

#[test]
fn a_lagging_follower_catches_up_from_a_snapshot() {
    let mut sim = quiet_cluster(Faults {
        compact_every: 10,
        ..Faults::default()
    });
    sim.isolate(3);
    for i in 0..200u32 {
        sim.propose(1, i.to_be_bytes().to_vec()).unwrap();
        if i % 5 == 0 {
            sim.step();
        }
    }
    sim.run(20);
    // The leader compacted past 3's log: only a snapshot can catch it up.
    let last3 = sim.replica(3).log().last();
    assert!(sim.replica(1).log().first() > last3 + 1);
    let before = sim.snapshots_installed;
    sim.heal();
    sim.run(200);
    assert!(sim.snapshots_installed > before);
    sim.final_check();
    assert!(sim.violations.is_empty(), "{:#?}", sim.violations);
    assert_eq!(sim.nodes[&3].app.applied.len(), 200);
}

#[test]
fn forged_replayed_and_stale_envelopes_are_counted_and_dropped() {
    let mut sim = quiet_cluster(Faults::default());
    // Capture a real envelope from 1 to 2 off the wire.
    sim.propose(1, b"a".to_vec()).unwrap();
    sim.pump();
    let pkt = sim
        .net
        .values()
        .find(|p| p.from == 1 && p.to == 2)
        .cloned()
        .unwrap();
    sim.run(10);
    let r2 = sim.replica(2);
    // Replayed.
    assert_eq!(
        r2.receive(&pkt.bytes),
        Err(tandem_replica::EnvelopeError::Replayed)
    );
    // Forged.
    let mut forged = pkt.bytes.clone();
    let n = forged.len();
    forged[n / 2] ^= 0x40;
    assert_eq!(
        r2.receive(&forged),
        Err(tandem_replica::EnvelopeError::BadMac)
    );
    // Garbage.
    assert_eq!(
        r2.receive(b"GET / HTTP/1.0\r\n"),
        Err(tandem_replica::EnvelopeError::Malformed)
    );
    let st = r2.status().envelopes;
    assert_eq!((st.replayed, st.bad_mac, st.malformed), (1, 1, 1));
    // The node keeps running.
    sim.propose(1, b"b".to_vec()).unwrap();
    sim.run(10);
    assert_eq!(sim.acked.len(), 2);
}

#[test]
fn a_node_restarting_twice_before_it_caught_up_ends_up_a_voter_once() {
    let mut sim = quiet_cluster(Faults::default());
    for i in 0..20u8 {
        sim.propose(1, vec![i]).unwrap();
    }
    sim.run(10);
    sim.crash(2);
    sim.start(2); // 2.2
    sim.run(20); // announces itself, may have started catching up
    sim.crash(2);
    sim.start(2); // 2.3
    sim.run(400);
    let st = sim.replica(1).status();
    assert_eq!(
        (st.voters, st.learners, st.voters_outgoing),
        (
            vec![NodeId::new(1, 1), NodeId::new(2, 3), NodeId::new(3, 1)],
            vec![],
            vec![]
        )
    );
    sim.propose(1, b"after".to_vec()).unwrap();
    sim.run(20);
    sim.final_check();
    assert!(sim.violations.is_empty(), "{:#?}", sim.violations);
    assert_eq!(sim.nodes[&2].app.applied.len(), 21);
}

#[test]
fn a_followers_forwarded_payloads_are_committed_everywhere() {
    let mut sim = quiet_cluster(Faults::default());
    let payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![0xf0, i]).collect();
    let ids = sim
        .replica(2)
        .forward(payloads.clone())
        .expect("a follower that knows its leader forwards");
    assert_eq!(ids.len(), 5);
    for (id, data) in ids.iter().zip(&payloads) {
        sim.proposed.insert(*id, data.clone());
    }
    sim.run(20);
    for id in &ids {
        assert!(sim.acked.contains_key(id), "{id:?} not committed");
    }
    // The leader itself cannot forward.
    assert!(sim.replica(1).forward(vec![vec![1]]).is_err());
    sim.final_check();
}

/// A leader held up by local work for several election timeouts.
/// `heartbeats` = whether it sends `heartbeats_now` every heartbeat interval
/// meanwhile. Returns the leader and its term after it resumes.
fn busy_leader(heartbeats: bool) -> (Option<u16>, u64, u64) {
    let mut sim = quiet_cluster(Faults::default());
    sim.propose(1, b"before".to_vec()).unwrap();
    sim.run(10);
    let term = sim.replica(1).term();
    sim.busy = Some(1);
    let heartbeat = Config::new(NodeId::new(1, 1), vec![1]).heartbeat_tick as u64;
    let election = Config::new(NodeId::new(1, 1), vec![1]).election_tick as u64;
    for step in 0..election * 5 {
        if heartbeats && step % heartbeat == 0 {
            for (to, bytes) in sim.replica(1).heartbeats_now() {
                sim.send(1, to.slot, bytes);
            }
        }
        sim.step();
    }
    sim.busy = None;
    sim.run(election);
    let leader = sim.leader();
    let now = leader.map_or(0, |l| sim.replica(l).term());
    // Whoever leads takes proposals, and nothing acknowledged was lost.
    if let Some(l) = leader {
        sim.propose(l, b"after".to_vec()).unwrap();
    }
    sim.run(10);
    sim.final_check();
    assert!(sim.violations.is_empty(), "{:#?}", sim.violations);
    (leader, term, now)
}

#[test]
fn a_busy_leader_that_sends_heartbeats_keeps_its_role() {
    let (leader, before, after) = busy_leader(true);
    assert_eq!(leader, Some(1));
    assert_eq!(before, after, "no election while the leader was busy");
}

#[test]
fn a_busy_silent_leader_is_replaced() {
    // The control: the same hold-up without heartbeats costs an election.
    let (leader, before, after) = busy_leader(false);
    assert_ne!(leader, Some(1));
    assert!(after > before);
}

#[test]
fn only_a_leader_has_heartbeats_to_send() {
    let mut sim = quiet_cluster(Faults::default());
    assert!(sim.replica(2).heartbeats_now().is_empty());
    let beats = sim.replica(1).heartbeats_now();
    let mut to: Vec<u16> = beats.iter().map(|(id, _)| id.slot).collect();
    to.sort_unstable();
    assert_eq!(to, [2, 3]);
}

/// A restarted node (new incarnation, empty log) catches up on a state of
/// several snapshot chunks over a network that drops, duplicates and
/// delays messages: the transfer retries from the acknowledged offset, the
/// node installs the whole state once and is swapped in as a voter.
#[test]
fn a_restarted_node_gets_a_many_chunk_snapshot_through_a_lossy_network() {
    let mut sim = quiet_cluster(Faults {
        compact_every: 50,
        batch: Some(4),
        ..Faults::default()
    });
    for i in 0..200u32 {
        let mut p = vec![(i % 251) as u8; 20_000];
        p[..4].copy_from_slice(&i.to_be_bytes());
        sim.propose(1, p).unwrap();
        if i % 5 == 0 {
            sim.step();
        }
    }
    sim.run(50);
    sim.crash(3);
    sim.start(3);
    sim.faults.drop = 30;
    sim.faults.dup = 30;
    sim.faults.max_delay = 3;
    sim.run(3000);
    sim.faults.drop = 0;
    sim.faults.dup = 0;
    sim.run(200);
    let status = sim.replica(3).status();
    assert!(status.voters.contains(&NodeId::new(3, 2)), "{status:?}");
    assert!(!status.restoring);
    assert_eq!(sim.nodes[&3].app.applied.len(), 200);
    let leader = sim.leader().unwrap();
    let stream = sim.replica(leader).status().snapshot_stream;
    // 4 MB of state in 1 MiB chunks.
    assert!(stream.chunks_sent >= 4, "{stream:?}");
    assert!(stream.sends_finished >= 1, "{stream:?}");
    assert!(sim.replica(3).status().snapshot_stream.received >= 1);
    sim.final_check();
    assert!(sim.violations.is_empty(), "{:#?}", sim.violations);
}

/// Rule 5 of docs/membership.md: the first envelope from a new incarnation
/// makes the leader forget what the dead one acknowledged.
#[test]
fn a_leader_forgets_what_a_dead_incarnation_acknowledged() {
    let mut sim = quiet_cluster(Faults::default());
    for i in 0..20u8 {
        sim.propose(1, vec![i]).unwrap();
    }
    sim.run(10);
    let matched = |sim: &mut Sim, id: NodeId| sim.replica(1).status().matched.get(&id).copied();
    let before = matched(&mut sim, NodeId::new(2, 1)).unwrap();
    assert!(before > 2, "{before}");
    sim.crash(2);
    sim.start(2);
    // 2.2 announces itself; hand its announcement to the leader directly.
    sim.replica(2).tick();
    let out = sim.replica(2).ready();
    let to_leader = out
        .messages
        .iter()
        .find(|(to, _)| to.slot == 1)
        .map(|(_, b)| b.clone())
        .expect("a restarted node announces itself");
    sim.replica(1).receive(&to_leader).unwrap();
    assert_eq!(matched(&mut sim, NodeId::new(2, 2)), Some(0));
    assert!(sim.replica(2).is_restoring());
    // It catches up for real, and stops restoring.
    sim.run(100);
    assert_eq!(matched(&mut sim, NodeId::new(2, 2)), Some(before));
    assert!(!sim.replica(2).is_restoring());
    sim.final_check();
    assert!(sim.violations.is_empty(), "{:#?}", sim.violations);
}

/// Five nodes; 2 acknowledges X and restarts empty; the leader, not yet
/// knowing, counts that old acknowledgement with 3's and commits X, held
/// now by 1 and 3 only; then 1 dies. 4 and 5 lack X: they would elect one
/// of themselves with the vote of 2's empty log. 2 abstains, so only 3 (with
/// X) can win, and nothing is lost.
#[test]
fn a_commit_counted_on_a_forgotten_acknowledgement_survives_the_leaders_death() {
    let mut sim = Sim::with_slots(5, Faults::default(), 5);
    sim.replica(1).campaign();
    sim.run(50);
    assert_eq!(sim.leader(), Some(1));
    for s in [3, 4, 5] {
        sim.isolate(s);
    }
    let x = sim.propose(1, b"X".to_vec()).unwrap();
    sim.run(3);
    assert!(!sim.acked.contains_key(&x), "1 and 2 are no majority of 5");
    let x_index = sim.replica(2).log().last();
    sim.crash(2);
    sim.start(2);
    sim.cut.push((1, 2)); // 2.2 cannot tell the leader yet
    sim.cut.retain(|&c| c != (1, 3));
    // Quickly, before check-quorum deposes a leader that hears from 2 of 5.
    for _ in 0..12 {
        if sim.acked.contains_key(&x) {
            break;
        }
        sim.step();
    }
    assert!(
        sim.acked.contains_key(&x),
        "committed by 1, 2 (old ack) and 3"
    );
    let holders: Vec<u16> = [3, 4, 5]
        .into_iter()
        .filter(|&s| sim.replica(s).log().last() >= x_index)
        .collect();
    assert_eq!(holders, [3], "X is on 1 and 3 only");
    sim.crash(1);
    sim.heal();
    // 4 (without X) stands first: 5 and an empty 2 would elect it.
    sim.replica(4).campaign();
    sim.run(2000);
    assert_eq!(sim.leader(), Some(3), "only 3 holds X");
    assert!(sim.replica(2).status().votes_abstained > 0);
    sim.propose(3, b"after".to_vec()).unwrap();
    sim.run(100);
    assert!(!sim.replica(2).is_restoring());
    sim.final_check();
    assert!(sim.violations.is_empty(), "{:#?}", sim.violations);
    let log2: Vec<_> = sim.nodes[&2].app.applied.iter().map(|e| e.1).collect();
    assert!(log2.contains(&x));
}

/// The term and the vote survive a restart (rule 3), and a restarted node
/// never takes part in an election until it has caught up (rule 4): here
/// an idle group, where only the leader's nudge carries the commit index.
#[test]
fn a_restarted_node_keeps_its_term_and_abstains_until_caught_up_even_when_idle() {
    let mut sim = quiet_cluster(Faults::default());
    sim.propose(1, b"a".to_vec()).unwrap();
    sim.run(10);
    // Two elections (leadership there and back) raise the term; 2 votes in
    // the second for 1.
    sim.replica(1).transfer_leader(NodeId::new(2, 1));
    sim.run(20);
    assert_eq!(sim.leader(), Some(2));
    sim.replica(2).transfer_leader(NodeId::new(1, 1));
    sim.run(20);
    assert_eq!(sim.leader(), Some(1));
    let term = sim.replica(2).term();
    assert!(term >= 3, "{term}");
    assert_eq!(
        sim.nodes[&2].disk,
        tandem_replica::HardState {
            term,
            vote: NodeId::new(1, 1).raft_id()
        }
    );
    sim.crash(2);
    sim.start(2);
    assert_eq!(sim.replica(2).term(), term);
    assert!(sim.replica(2).is_restoring());
    assert!(!sim.replica(2).status().voters.contains(&NodeId::new(2, 2)));
    // No client writes: the group is idle.
    sim.run(200);
    assert!(!sim.replica(2).is_restoring());
    assert_eq!(sim.restores, 1);
    assert!(sim.healthy());
    sim.final_check();
    assert!(sim.violations.is_empty(), "{:#?}", sim.violations);
}

/// Item 5: the lease is dated by acknowledgements of this term's leadership
/// only, and stops moving when the leader is cut off.
#[test]
fn the_lease_dates_from_quorum_acknowledgements_of_this_term() {
    let mut sim = quiet_cluster(Faults::default());
    sim.run(20);
    let acked = sim.replica(1).quorum_acked_at().expect("a quorum follows");
    assert!(sim.now - acked <= 4, "{} vs {acked}", sim.now);
    assert_eq!(
        sim.replica(2).quorum_acked_at(),
        None,
        "only a leader has one"
    );
    // 3 cut off: 2's answers alone keep it fresh (1 and 2 are a majority).
    sim.isolate(3);
    sim.run(20);
    let acked = sim.replica(1).quorum_acked_at().unwrap();
    assert!(sim.now - acked <= 4);
    // The leader cut off from both: it stops moving, whatever else comes.
    sim.heal();
    sim.isolate(1);
    let cut_at = sim.now;
    sim.run(5);
    let frozen = sim.replica(1).quorum_acked_at();
    assert!(frozen.is_some_and(|a| a <= cut_at + 1), "{frozen:?}");
    // A pre-vote request from 2 reaches the leader: it is no acknowledgement.
    sim.replica(2).campaign();
    let out = sim.replica(2).ready();
    sim.replica(2).advance();
    for (to, bytes) in out.messages {
        if to.slot == 1 {
            let now = sim.now;
            sim.replica(1).set_clock(now);
            let _ = sim.replica(1).receive(&bytes);
        }
    }
    assert_eq!(sim.replica(1).quorum_acked_at(), frozen);
    // Deposed by check-quorum: no lease at all.
    sim.run(100);
    assert_eq!(sim.replica(1).quorum_acked_at(), None);
}
