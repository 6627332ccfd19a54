//! Deterministic simulation of a whole service group (docs/architecture.md §6, layer 3):
//! three nodes, each a `Replica` (raft-rs) feeding a `ServiceGroup` running
//! the kv service, on a seeded simulated network (delay, reordering, loss,
//! duplication, partitions), with seeded crashes and restarts (a restart is
//! a new incarnation with an empty log and a fresh group that catches up by
//! snapshot: `compact` gets `group.snapshot()`, an installed snapshot goes
//! through `ServiceGroup::restore`), compaction every N applied payloads.
//!
//! Scripted kv clients produce real IPv4/TCP packets the way the primary
//! would capture them: SYN + SYN-ACK in one entry, RESP requests split
//! across segments, pure ACKs of the output they read, go-back-N
//! retransmissions after a timeout, spurious duplicates, segments lost
//! before capture (so the log holds data out of order), a FIN, the server's
//! FIN acknowledged. The serving leader groups captured packets into log
//! entries of a seeded, varying size, several entries per `ready`.
//!
//! Checked, online and at the end:
//! - I2: every (index, sub) holds the same proposal on every replica; the
//!   state hash after applying it, and the effects it produced, are the same
//!   on every replica that applied it; a restored group's hash equals the
//!   hash recorded at its index; per connection, the output stream (and the
//!   input delivered to the service) is byte-identical across replicas at
//!   every offset; at the end all live replicas agree.
//! - I1: every proposal the proposer saw commit (what the primary releases
//!   to its kernel, which then ACKs) sits at one position, exactly once, and
//!   every live replica applied it there or holds a snapshot covering it;
//!   no leader of a later term lacks it; and end to end, each client's
//!   bytes reached the service exactly once, in order (per-connection
//!   counters answer 1, 2, 3, ...; the shared counter's answers over all
//!   clients are exactly 1..=N).
//!
//! A failing seed replays alone:
//! `TANDEM_SIM_SEED_START=n TANDEM_SIM_SEEDS=1 cargo test -p tandem-node --test group_sim -- --nocapture`

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};

use tandem_core::shadow::{ConnKey, ShadowConfig};
use tandem_node::group::{Effect, Item, LogEntry, ServiceGroup};
use tandem_replica::{ClusterKey, Config, NodeId, Output, ProposalId, Replica, StateRole};
use tandem_service_kv::Kv;
use tandem_wire::{
    IpRepr, IpTcpRepr, Ipv4Repr, SeqNumber, TcpFlags, TcpOptionSet, TcpRepr, Timestamps,
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const PORT: u16 = 6379;
const WINDOW: u32 = 65_535;
const GROUP_SEED: u64 = 0x6b76_5f73_696d;
/// Client retransmission timeout, in ticks (a tick is 10 ms).
const RTO: u64 = 40;

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
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

thread_local! {
    /// The input throttle's limit of this thread's run (every replica of a
    /// run uses the same configuration, as they must).
    static OUTPUT_LIMIT: std::cell::Cell<u64> =
        const { std::cell::Cell::new(tandem_core::shadow::DEFAULT_OUTPUT_LIMIT) };
}

fn shadow_config() -> ShadowConfig {
    ShadowConfig {
        output_limit: OUTPUT_LIMIT.with(|l| l.get()),
        ..ShadowConfig::new(WINDOW)
    }
}

fn fresh_group() -> ServiceGroup {
    ServiceGroup::new(Box::new(Kv::new()), shadow_config(), GROUP_SEED)
}

/// The group index the daemon uses for payload `sub` of raft entry `index`.
fn gindex(pos: (u64, u32)) -> u64 {
    (pos.0 << 16) | u64::from(pos.1)
}

/// One IPv4/TCP packet between a client port and the VIP.
fn packet(
    port: u16,
    from_server: bool,
    flags: TcpFlags,
    seq: u32,
    ack: u32,
    tsval: u32,
    payload: &[u8],
) -> Item {
    let (src, dst, sp, dp) = if from_server {
        (VIP, CLIENT, PORT, port)
    } else {
        (CLIENT, VIP, port, PORT)
    };
    let mut options = TcpOptionSet::default();
    if flags.contains(TcpFlags::SYN) {
        options.mss = Some(1460);
        options.window_scale = Some(7);
        options.sack_permitted = true;
    }
    options.timestamps = Some(Timestamps {
        tsval,
        tsecr: if from_server { tsval } else { 0 },
    });
    let repr = IpTcpRepr {
        ip: IpRepr::V4(Ipv4Repr::tcp(src, dst)),
        tcp: TcpRepr {
            src_port: sp,
            dst_port: dp,
            seq_number: SeqNumber(seq),
            ack_number: SeqNumber(ack),
            flags,
            window_len: 500,
            urgent_at: 0,
            options,
            payload,
        },
    };
    Item::Packet {
        from_server,
        bytes: repr.to_bytes().unwrap(),
    }
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// What one reply must be.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    Exact(Vec<u8>),
    /// An integer reply from the counter every client increments.
    Shared,
}

/// Splits complete RESP replies (simple, error, integer and bulk strings)
/// off the front of `bytes`; an unfinished one is left out.
fn split_replies(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    let line_end = |from: usize| {
        bytes[from..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| from + i + 2)
    };
    while at < bytes.len() {
        let Some(end) = line_end(at) else { break };
        let end = if bytes[at] == b'$' {
            let n: i64 = std::str::from_utf8(&bytes[at + 1..end - 2])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(-1);
            if n < 0 {
                end
            } else if end + n as usize + 2 <= bytes.len() {
                end + n as usize + 2
            } else {
                break;
            }
        } else {
            end
        };
        out.push(&bytes[at..end]);
        at = end;
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Syn,
    Open,
    Done,
}

/// What a captured unit is, for the client that sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    Handshake,
    Data(u32, u32),
    Ack,
    Fin,
    FinalAck,
}

/// One scripted kv client.
#[derive(Debug)]
struct Client {
    port: u16,
    c_isn: u32,
    s_isn: u32,
    start_at: u64,
    script: Vec<u8>,
    expect: Vec<Expect>,
    seg_max: u32,
    phase: Phase,
    /// Offset of the next new byte to send.
    snd_nxt: u32,
    /// Committed (released, hence ACKed by the primary's kernel) ranges.
    ranges: Vec<(u32, u32)>,
    /// Cumulative ACK the client got.
    acked: u32,
    got: Vec<u8>,
    need_ack: bool,
    fin_sent: bool,
    fin_acked: bool,
    /// The server's FIN was read.
    fin_seen: bool,
    last_progress: u64,
}

impl Client {
    fn new(rng: &mut Rng, n: usize, start_at: u64) -> Client {
        let port = 40_000 + n as u16;
        let near_wrap = |rng: &mut Rng| {
            if rng.chance(300) {
                u32::MAX - rng.below(200) as u32
            } else {
                rng.next() as u32
            }
        };
        let c_isn = near_wrap(rng);
        let s_isn = near_wrap(rng);
        let mut script = Vec::new();
        let mut expect = Vec::new();
        let (mut last_set, mut incrs) = (None::<String>, 0);
        let k = format!("k:{port}");
        for i in 0..6 + rng.below(20) {
            match rng.below(6) {
                0 => {
                    let big = if rng.chance(200) { 400 } else { 20 };
                    let pad = "x".repeat(rng.below(big) as usize);
                    let v = format!("v{port}-{i}-{}{pad}", rng.below(1 << 20));
                    script.extend(resp(&["SET", &k, &v]));
                    expect.push(Expect::Exact(b"+OK\r\n".to_vec()));
                    last_set = Some(v);
                }
                1 => {
                    script.extend(resp(&["GET", &k]));
                    expect.push(Expect::Exact(match &last_set {
                        Some(v) => format!("${}\r\n{v}\r\n", v.len()).into_bytes(),
                        None => b"$-1\r\n".to_vec(),
                    }));
                }
                2 => {
                    incrs += 1;
                    script.extend(resp(&["INCR", &format!("n:{port}")]));
                    expect.push(Expect::Exact(format!(":{incrs}\r\n").into_bytes()));
                }
                3 => {
                    script.extend(resp(&["SADD", &format!("s:{port}"), &format!("m{i}")]));
                    expect.push(Expect::Exact(b":1\r\n".to_vec()));
                }
                4 => {
                    script.extend(resp(&["INCR", "total"]));
                    expect.push(Expect::Shared);
                }
                _ => {
                    script.extend(resp(&["PING"]));
                    expect.push(Expect::Exact(b"+PONG\r\n".to_vec()));
                }
            }
        }
        Client {
            port,
            c_isn,
            s_isn,
            start_at,
            script,
            expect,
            seg_max: 1 + rng.below(40) as u32,
            phase: Phase::Idle,
            snd_nxt: 0,
            ranges: Vec::new(),
            acked: 0,
            got: Vec::new(),
            need_ack: false,
            fin_sent: false,
            fin_acked: false,
            fin_seen: false,
            last_progress: 0,
        }
    }

    fn key(&self) -> ConnKey {
        ConnKey {
            client: SocketAddr::from((CLIENT, self.port)),
            server: SocketAddr::from((VIP, PORT)),
        }
    }

    fn len(&self) -> u32 {
        self.script.len() as u32
    }

    fn ack_no(&self) -> u32 {
        self.s_isn
            .wrapping_add(1)
            .wrapping_add(self.got.len() as u32)
            .wrapping_add(u32::from(self.fin_seen))
    }

    fn handshake(&self, ts: u32) -> Vec<Item> {
        vec![
            packet(self.port, false, TcpFlags::SYN, self.c_isn, 0, ts, &[]),
            packet(
                self.port,
                true,
                TcpFlags::SYN | TcpFlags::ACK,
                self.s_isn,
                self.c_isn.wrapping_add(1),
                ts,
                &[],
            ),
        ]
    }

    fn data(&self, from: u32, to: u32, ts: u32) -> Item {
        packet(
            self.port,
            false,
            TcpFlags::ACK | TcpFlags::PSH,
            self.c_isn.wrapping_add(1).wrapping_add(from),
            self.ack_no(),
            ts,
            &self.script[from as usize..to as usize],
        )
    }

    fn pure_ack(&self, ts: u32) -> Item {
        let seq = self
            .c_isn
            .wrapping_add(1)
            .wrapping_add(self.snd_nxt.max(self.acked))
            .wrapping_add(u32::from(self.fin_sent));
        packet(self.port, false, TcpFlags::ACK, seq, self.ack_no(), ts, &[])
    }

    fn fin(&self, ts: u32) -> Item {
        let seq = self.c_isn.wrapping_add(1).wrapping_add(self.len());
        packet(
            self.port,
            false,
            TcpFlags::ACK | TcpFlags::FIN,
            seq,
            self.ack_no(),
            ts,
            &[],
        )
    }

    fn replies_done(&self) -> bool {
        split_replies(&self.got).len() == self.expect.len()
    }

    fn final_ack_due(&self) -> bool {
        self.fin_seen && self.fin_acked
    }

    fn on_committed(&mut self, what: What, now: u64) {
        match what {
            What::Handshake => {
                if self.phase == Phase::Syn {
                    self.phase = Phase::Open;
                    self.need_ack = true;
                    self.last_progress = now;
                }
            }
            What::Data(a, b) => {
                self.ranges.push((a, b));
                self.ranges.sort();
                let mut acked = self.acked;
                for &(a, b) in &self.ranges {
                    if a <= acked {
                        acked = acked.max(b);
                    }
                }
                self.ranges.retain(|&(_, b)| b > acked);
                if acked > self.acked {
                    self.acked = acked;
                    self.snd_nxt = self.snd_nxt.max(acked);
                    self.last_progress = now;
                }
            }
            What::Ack => {}
            What::Fin => {
                if !self.fin_acked {
                    self.fin_acked = true;
                    self.last_progress = now;
                }
            }
            What::FinalAck => {
                if self.final_ack_due() {
                    self.phase = Phase::Done;
                }
            }
        }
    }
}

/// A captured unit: one client's packets that travel in one entry.
#[derive(Debug, Clone)]
struct Unit {
    client: usize,
    what: What,
    items: Vec<Item>,
}

struct Node {
    replica: Option<Replica>,
    incarnation: u64,
    group: ServiceGroup,
    /// Positions applied since start, with their proposal.
    applied: BTreeMap<(u64, u32), ProposalId>,
    last_pos: Option<(u64, u32)>,
    /// Group index covered by the last installed snapshot.
    snap_base: u64,
    since_compact: usize,
    out_len: BTreeMap<ConnKey, u64>,
    in_len: BTreeMap<ConnKey, u64>,
    fins: BTreeSet<ConnKey>,
    /// A new leader serves once it has applied up to here (its barrier).
    barrier: Option<u64>,
    serving: bool,
}

impl Node {
    fn new() -> Node {
        Node {
            replica: None,
            incarnation: 0,
            group: fresh_group(),
            applied: BTreeMap::new(),
            last_pos: None,
            snap_base: 0,
            since_compact: 0,
            out_len: BTreeMap::new(),
            in_len: BTreeMap::new(),
            fins: BTreeSet::new(),
            barrier: None,
            serving: false,
        }
    }

    /// Forgets everything but the incarnation (a crash loses the memory).
    fn wipe(&mut self) {
        let inc = self.incarnation;
        *self = Node::new();
        self.incarnation = inc;
    }
}

#[derive(Debug, Clone)]
struct Msg {
    from: u16,
    to: u16,
    bytes: Vec<u8>,
}

/// Knobs of one run.
#[derive(Debug, Clone)]
struct Faults {
    drop: u64,
    dup: u64,
    max_delay: u64,
    /// Client packets lost before the primary captures them, per mille.
    capture_loss: u64,
    compact_every: usize,
    /// Most captured units per log entry.
    max_units: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            drop: 0,
            dup: 0,
            max_delay: 0,
            capture_loss: 0,
            compact_every: 20,
            max_units: 3,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    leaders: u64,
    snapshots_installed: u64,
    compactions: u64,
    restarts: u64,
    entries_applied: u64,
    retransmits: u64,
    /// Payloads applied at a sub > 0 (several entries in one raft entry).
    batched: u64,
    /// Snapshots restored from bytes (not the empty initial state).
    restored: u64,
    /// Samples where the primary's shadow TCP held data out of order.
    out_of_order: u64,
    /// Samples where the primary's shadow TCP held input back (throttle).
    throttled: u64,
}

struct Sim {
    seed: u64,
    now: u64,
    rng: Rng,
    key: ClusterKey,
    slots: Vec<u16>,
    nodes: BTreeMap<u16, Node>,
    net: BTreeMap<(u64, u64), Msg>,
    msg_no: u64,
    cut: Vec<(u16, u16)>,
    faults: Faults,
    clients: Vec<Client>,
    captured: Vec<Unit>,
    inflight: BTreeMap<ProposalId, Vec<(usize, What)>>,
    // The checker.
    proposed: BTreeMap<ProposalId, Vec<u8>>,
    positions: BTreeMap<(u64, u32), ProposalId>,
    where_is: BTreeMap<ProposalId, (u64, u32)>,
    hashes: BTreeMap<u64, u64>,
    effects: BTreeMap<u64, Vec<Effect>>,
    canon_out: BTreeMap<ConnKey, Vec<u8>>,
    canon_in: BTreeMap<ConnKey, Vec<u8>>,
    /// Acknowledged proposals: position, entry term, the proposer's term
    /// when it saw the commit.
    acked: BTreeMap<ProposalId, ((u64, u32), u64, u64)>,
    violations: Vec<String>,
    stats: Stats,
}

impl Sim {
    fn new(seed: u64, faults: Faults) -> Sim {
        let slots = vec![1, 2, 3];
        let mut sim = Sim {
            seed,
            now: 0,
            rng: Rng(seed),
            key: ClusterKey::from_secret(b"simulated group secret, 32 bytes").unwrap(),
            slots: slots.clone(),
            nodes: slots.iter().map(|&s| (s, Node::new())).collect(),
            net: BTreeMap::new(),
            msg_no: 0,
            cut: Vec::new(),
            faults,
            clients: Vec::new(),
            captured: Vec::new(),
            inflight: BTreeMap::new(),
            proposed: BTreeMap::new(),
            positions: BTreeMap::new(),
            where_is: BTreeMap::new(),
            hashes: BTreeMap::new(),
            effects: BTreeMap::new(),
            canon_out: BTreeMap::new(),
            canon_in: BTreeMap::new(),
            acked: BTreeMap::new(),
            violations: Vec::new(),
            stats: Stats::default(),
        };
        for s in slots {
            sim.start(s);
        }
        sim
    }

    fn violation(&mut self, v: String) {
        if self.violations.len() < 40 && !self.violations.contains(&v) {
            self.violations.push(v);
        }
    }

    /// Starts the process on `slot`: next incarnation, empty log, fresh group.
    fn start(&mut self, slot: u16) {
        let n = self.nodes.get_mut(&slot).unwrap();
        n.wipe();
        n.incarnation += 1;
        let id = NodeId::new(slot, n.incarnation);
        if n.incarnation > 1 {
            self.stats.restarts += 1;
        }
        let mut cfg = Config::new(id, self.slots.clone());
        cfg.seed = self.rng.next();
        cfg.max_batch_payloads = 1 + self.rng.below(6) as usize;
        let r = Replica::new(cfg, self.key.clone()).unwrap();
        self.nodes.get_mut(&slot).unwrap().replica = Some(r);
    }

    fn crash(&mut self, slot: u16) {
        self.nodes.get_mut(&slot).unwrap().wipe();
    }

    fn is_cut(&self, a: u16, b: u16) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
    }

    fn isolate(&mut self, slot: u16) {
        for s in self.slots.clone() {
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
            self.msg_no += 1;
            self.net.insert(
                (at, self.msg_no),
                Msg {
                    from,
                    to,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    /// Compares `bytes` at `off` with the canonical stream, extending it.
    fn check_stream(
        canon: &mut BTreeMap<ConnKey, Vec<u8>>,
        conn: ConnKey,
        off: u64,
        bytes: &[u8],
    ) -> Result<(), String> {
        let c = canon.entry(conn).or_default();
        let off = off as usize;
        if off > c.len() {
            return Err(format!(
                "stream of {conn:?}: bytes at offset {off}, beyond the {} known",
                c.len()
            ));
        }
        let common = (c.len() - off).min(bytes.len());
        if c[off..off + common] != bytes[..common] {
            return Err(format!(
                "stream of {conn:?} differs at offset {off}: {:?} vs {:?}",
                String::from_utf8_lossy(&c[off..off + common]),
                String::from_utf8_lossy(&bytes[..common])
            ));
        }
        c.extend_from_slice(&bytes[common..]);
        Ok(())
    }

    fn install(&mut self, slot: u16, data: &[u8]) {
        self.stats.snapshots_installed += 1;
        let group = if data.is_empty() {
            fresh_group()
        } else {
            self.stats.restored += 1;
            match ServiceGroup::restore(Box::new(Kv::new()), shadow_config(), data) {
                Ok(g) => g,
                Err(e) => {
                    self.violation(format!("slot {slot}: snapshot does not restore: {e}"));
                    return;
                }
            }
        };
        let at = group.applied();
        let hash = group.state_hash();
        if at > 0 {
            match self.hashes.get(&at) {
                Some(&h) if h == hash => {}
                Some(&h) => self.violation(format!(
                    "I2: slot {slot} restored a snapshot at {at:#x} with hash {hash:016x}, replicas had {h:016x}"
                )),
                None => self.violation(format!(
                    "slot {slot}: restored a snapshot at {at:#x} nobody applied"
                )),
            }
        }
        let n = self.nodes.get_mut(&slot).unwrap();
        n.out_len.clear();
        n.in_len.clear();
        n.fins.clear();
        for key in group.shadow().keys() {
            let info = group.shadow().info(key).unwrap();
            n.out_len.insert(*key, info.output_total);
            n.in_len.insert(*key, info.delivered);
            if let Some(isn) = info.server_isn {
                let fin_at = isn.wrapping_add(1).wrapping_add(info.output_total as u32);
                if info.write_seq == fin_at.wrapping_add(1) {
                    n.fins.insert(*key);
                }
            }
        }
        n.snap_base = n.snap_base.max(at);
        n.group = group;
    }

    fn handle_output(&mut self, slot: u16, out: Output) {
        for (to, bytes) in out.messages {
            self.send(slot, to.slot, bytes);
        }
        if out.role_changed && out.role == StateRole::Leader {
            self.stats.leaders += 1;
        }
        let me = self.nodes[&slot].replica.as_ref().unwrap().id();
        if let Some(snap) = out.install_snapshot {
            self.install(slot, &snap.data);
        }
        let mut count = 0;
        for c in out.committed {
            count += 1;
            let pos = (c.index, c.sub);
            let p = c.proposal;
            match self.positions.get(&pos) {
                None => {
                    self.positions.insert(pos, p);
                }
                Some(q) if *q == p => {}
                Some(q) => {
                    let q = *q;
                    self.violation(format!(
                        "I2: slot {slot} applied {p:?} at {pos:?}, another replica applied {q:?}"
                    ));
                }
            }
            match self.where_is.get(&p) {
                None => {
                    self.where_is.insert(p, pos);
                }
                Some(&at) if at == pos => {}
                Some(&at) => self.violation(format!(
                    "I1: {p:?} committed twice, at {at:?} and at {pos:?} (slot {slot})"
                )),
            }
            if self.proposed.get(&p) != Some(&c.data) {
                self.violation(format!(
                    "slot {slot}: committed {p:?} with bytes never proposed under that id"
                ));
            }
            let n = self.nodes.get_mut(&slot).unwrap();
            if n.last_pos.is_some_and(|l| l >= pos) {
                let l = n.last_pos;
                self.violation(format!("slot {slot}: applied {pos:?} after {l:?}"));
                continue;
            }
            n.last_pos = Some(pos);
            n.applied.insert(pos, p);
            let entry = match LogEntry::decode(&c.data) {
                Ok(e) => e,
                Err(e) => {
                    self.violation(format!("slot {slot}: undecodable entry at {pos:?}: {e}"));
                    continue;
                }
            };
            let gi = gindex(pos);
            if pos.1 > 0 {
                self.stats.batched += 1;
            }
            let effects = n.group.apply(gi, &entry);
            let hash = n.group.state_hash();
            self.stats.entries_applied += 1;
            let mut found = Vec::new();
            for e in &effects {
                match e {
                    Effect::Write { conn, bytes } => {
                        let off = n.out_len.entry(*conn).or_insert(0);
                        if let Err(v) = Self::check_stream(&mut self.canon_out, *conn, *off, bytes)
                        {
                            found.push(format!("I2 (output): slot {slot} at {pos:?}: {v}"));
                        }
                        *off += bytes.len() as u64;
                    }
                    Effect::Delivered { conn, bytes } => {
                        let off = n.in_len.entry(*conn).or_insert(0);
                        if let Err(v) = Self::check_stream(&mut self.canon_in, *conn, *off, bytes) {
                            found.push(format!("I2 (input): slot {slot} at {pos:?}: {v}"));
                        }
                        *off += bytes.len() as u64;
                    }
                    Effect::Shutdown { conn } => {
                        n.fins.insert(*conn);
                    }
                    _ => {}
                }
            }
            match self.hashes.get(&gi) {
                None => {
                    self.hashes.insert(gi, hash);
                }
                Some(&h) if h == hash => {}
                Some(&h) => found.push(format!(
                    "I2: slot {slot} state hash {hash:016x} after {pos:?}, another replica had {h:016x}"
                )),
            }
            match self.effects.get(&gi) {
                None => {
                    self.effects.insert(gi, effects);
                }
                Some(e) if *e == effects => {}
                Some(e) => found.push(format!(
                    "I2: slot {slot} effects at {pos:?} differ: {effects:?} vs {e:?}"
                )),
            }
            for f in found {
                self.violation(f);
            }
            if p.proposer == me {
                self.acked.insert(p, (pos, c.term, out.term));
                if let Some(units) = self.inflight.remove(&p) {
                    for (client, what) in units {
                        self.clients[client].on_committed(what, self.now);
                    }
                }
            }
        }
        let compact_every = self.faults.compact_every;
        let n = self.nodes.get_mut(&slot).unwrap();
        let r = n.replica.as_mut().unwrap();
        r.advance();
        n.since_compact += count;
        if out.snapshot_wanted || n.since_compact >= compact_every {
            let applied = r.applied();
            if applied > 0 && r.compact(applied, n.group.snapshot()).is_ok() {
                n.since_compact = 0;
                self.stats.compactions += 1;
            }
        }
        if out.role == StateRole::Leader {
            if out.role_changed {
                n.barrier = Some(r.status().log.1);
            }
            if n.barrier.is_some_and(|b| r.applied() >= b) {
                n.serving = true;
            }
        } else {
            n.barrier = None;
            n.serving = false;
        }
    }

    fn pump(&mut self) {
        for _ in 0..20 {
            let mut any = false;
            for slot in self.slots.clone() {
                let Some(r) = self.nodes.get_mut(&slot).unwrap().replica.as_mut() else {
                    continue;
                };
                if r.has_ready() {
                    let out = r.ready();
                    self.handle_output(slot, out);
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
    }

    /// The leader of the highest term, if it serves (has applied its
    /// barrier): the primary, which captures and answers clients.
    fn primary(&self) -> Option<u16> {
        let (_, s) = self
            .nodes
            .iter()
            .filter_map(|(&s, n)| {
                let r = n.replica.as_ref()?;
                (r.role() == StateRole::Leader).then_some((r.term(), s))
            })
            .max()?;
        self.nodes[&s].serving.then_some(s)
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

    fn capture(&mut self, client: usize, what: What, items: Vec<Item>) {
        if self.rng.chance(self.faults.capture_loss) {
            return;
        }
        self.captured.push(Unit {
            client,
            what,
            items,
        });
    }

    /// Every client acts: opens, reads output from the primary, sends.
    fn clients_act(&mut self) {
        let primary = self.primary();
        let now = self.now;
        let ts = now as u32 + 1;
        for i in 0..self.clients.len() {
            let c = &self.clients[i];
            let phase = c.phase;
            match phase {
                Phase::Done => continue,
                Phase::Idle => {
                    if now >= c.start_at {
                        let items = c.handshake(ts);
                        let c = &mut self.clients[i];
                        c.phase = Phase::Syn;
                        c.last_progress = now;
                        self.capture(i, What::Handshake, items);
                    }
                    continue;
                }
                Phase::Syn => {
                    if now - c.last_progress > RTO {
                        // The SYN again: a primary whose log holds the
                        // SYN-ACK replays it; otherwise it is logged anew.
                        let key = c.key();
                        let items = c.handshake(ts);
                        self.stats.retransmits += 1;
                        let known = primary.is_some_and(|p| self.nodes[&p].group.knows(&key));
                        let c = &mut self.clients[i];
                        c.last_progress = now;
                        if known {
                            c.on_committed(What::Handshake, now);
                        } else {
                            self.capture(i, What::Handshake, items);
                        }
                    }
                    continue;
                }
                Phase::Open => {}
            }
            // Read what the primary has written.
            if let Some(p) = primary {
                let key = self.clients[i].key();
                let n = &self.nodes[&p];
                let avail = n.out_len.get(&key).copied().unwrap_or(0) as usize;
                let fin = n.fins.contains(&key);
                if self.rng.chance(700) {
                    let c = &mut self.clients[i];
                    if avail > c.got.len() {
                        let canon = &self.canon_out[&key];
                        c.got.extend_from_slice(&canon[c.got.len()..avail]);
                        c.need_ack = true;
                    }
                    if fin && avail == c.got.len() && !c.fin_seen {
                        c.fin_seen = true;
                        c.need_ack = true;
                    }
                }
            }
            let c = &self.clients[i];
            // Timeout: go back to the last byte acknowledged and resend.
            let outstanding =
                c.acked < c.snd_nxt || c.fin_sent && !c.fin_acked || c.final_ack_due();
            if outstanding && now - c.last_progress > RTO {
                self.stats.retransmits += 1;
                let c = &mut self.clients[i];
                c.snd_nxt = c.acked;
                c.last_progress = now;
                if c.fin_sent && !c.fin_acked {
                    let item = c.fin(ts);
                    self.capture(i, What::Fin, vec![item]);
                }
                let c = &self.clients[i];
                if c.final_ack_due() {
                    let item = c.pure_ack(ts);
                    self.capture(i, What::FinalAck, vec![item]);
                }
            }
            // New data, a segment or two, split anywhere.
            let mut sent = false;
            if self.rng.chance(600) {
                for _ in 0..1 + self.rng.below(2) {
                    let c = &self.clients[i];
                    if c.snd_nxt >= c.len() || c.snd_nxt - c.acked > 600 {
                        break;
                    }
                    let len = 1 + self.rng.below(u64::from(c.seg_max)) as u32;
                    let (a, b) = (c.snd_nxt, (c.snd_nxt + len).min(c.len()));
                    let item = c.data(a, b, ts);
                    self.clients[i].snd_nxt = b;
                    self.capture(i, What::Data(a, b), vec![item]);
                    sent = true;
                }
            }
            // Now and then a spurious duplicate of acknowledged bytes.
            let c = &self.clients[i];
            if c.acked > 0 && self.rng.chance(20) {
                let a = self.rng.below(u64::from(c.acked)) as u32;
                let b = (a + 1 + self.rng.below(30) as u32).min(c.acked);
                let item = c.data(a, b, ts);
                self.stats.retransmits += 1;
                self.capture(i, What::Data(a, b), vec![item]);
            }
            let c = &self.clients[i];
            if !c.fin_sent && c.acked == c.len() && c.replies_done() {
                let item = c.fin(ts);
                self.clients[i].fin_sent = true;
                self.capture(i, What::Fin, vec![item]);
                sent = true;
            }
            let c = &self.clients[i];
            if c.need_ack && !sent {
                let what = if c.final_ack_due() {
                    What::FinalAck
                } else {
                    What::Ack
                };
                let item = c.pure_ack(ts);
                self.capture(i, what, vec![item]);
            }
            self.clients[i].need_ack = false;
        }
    }

    /// The primary proposes what it captured: entries of 1..=max_units
    /// units each, several per `ready`. Without a primary, it is lost.
    fn propose_captured(&mut self) {
        let units = std::mem::take(&mut self.captured);
        let Some(p) = self.primary() else { return };
        let mut units = units.into_iter().peekable();
        while units.peek().is_some() {
            let k = 1 + self.rng.below(self.faults.max_units);
            let batch: Vec<Unit> = units.by_ref().take(k as usize).collect();
            let entry = LogEntry {
                timestamp_ms: 1_000 + self.now * 10,
                items: batch.iter().flat_map(|u| u.items.clone()).collect(),
            };
            let bytes = entry.encode();
            match self.replica(p).propose(bytes.clone()) {
                Ok(id) => {
                    self.proposed.insert(id, bytes);
                    self.inflight
                        .insert(id, batch.iter().map(|u| (u.client, u.what)).collect());
                }
                Err(_) => return,
            }
        }
    }

    /// Leader completeness: a leader of a term after the one in which an
    /// acknowledged entry committed holds it.
    fn check_leaders(&mut self) {
        use raft::Storage;
        let mut found = Vec::new();
        for (&slot, n) in &self.nodes {
            let Some(r) = &n.replica else { continue };
            if r.role() != StateRole::Leader {
                continue;
            }
            let log = r.log();
            let first = log.first().saturating_sub(1);
            for (p, &(pos, term, ack_term)) in &self.acked {
                let ok =
                    r.term() <= ack_term || pos.0 < first || log.term(pos.0).ok() == Some(term);
                if !ok {
                    found.push(format!(
                        "I1: slot {slot} ({}) leads in term {} without acknowledged {p:?} at {pos:?}",
                        r.id(),
                        r.term()
                    ));
                }
            }
        }
        for f in found {
            self.violation(f);
        }
    }

    fn step(&mut self) {
        self.now += 1;
        for slot in self.slots.clone() {
            if let Some(r) = self.nodes.get_mut(&slot).unwrap().replica.as_mut() {
                r.tick();
            }
        }
        self.clients_act();
        self.propose_captured();
        self.pump();
        while let Some(entry) = self.net.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let m = entry.remove();
            if self.is_cut(m.from, m.to) {
                continue;
            }
            if let Some(r) = self.nodes.get_mut(&m.to).unwrap().replica.as_mut() {
                let _ = r.receive(&m.bytes);
            }
            self.pump();
        }
        if self.now.is_multiple_of(5) {
            self.check_leaders();
            if let Some(p) = self.primary() {
                let shadow = self.nodes[&p].group.shadow();
                if shadow
                    .keys()
                    .any(|k| shadow.info(k).is_some_and(|i| i.held > 0))
                {
                    self.stats.out_of_order += 1;
                }
                if shadow
                    .keys()
                    .any(|k| shadow.info(k).is_some_and(|i| i.held_input > 0))
                {
                    self.stats.throttled += 1;
                }
            }
        }
    }

    fn run(&mut self, ticks: u64) {
        for _ in 0..ticks {
            self.step();
        }
    }

    /// Every slot alive, a leader, and every replica's configuration is
    /// exactly the live incarnations (no learner, no joint state).
    fn healthy(&self) -> bool {
        if self.leader().is_none() {
            return false;
        }
        let live: Vec<NodeId> = self
            .nodes
            .values()
            .filter_map(|n| n.replica.as_ref().map(|r| r.id()))
            .collect();
        live.len() == self.slots.len()
            && self.nodes.values().all(|n| {
                let st = n.replica.as_ref().unwrap().status();
                st.voters == live && st.learners.is_empty() && st.voters_outgoing.is_empty()
            })
    }

    fn add_client(&mut self, start_at: u64) -> usize {
        let n = self.clients.len();
        let c = Client::new(&mut self.rng, n, start_at);
        self.clients.push(c);
        n
    }

    fn settled(&self) -> bool {
        if !self.healthy() || self.clients.iter().any(|c| c.phase != Phase::Done) {
            return false;
        }
        let mut live = self.nodes.values().filter_map(|n| {
            let r = n.replica.as_ref()?;
            let st = r.status();
            Some((st.applied, st.commit, st.log.1))
        });
        let Some(first) = live.next() else {
            return false;
        };
        first.0 == first.2 && live.all(|x| x == first)
    }

    /// Heals everything, restarts whoever is down, stops faults, and runs
    /// until the cluster is whole, every client is done and every replica
    /// has applied the same log.
    fn settle(&mut self, max_ticks: u64) {
        self.heal();
        for slot in self.slots.clone() {
            if self.nodes[&slot].replica.is_none() {
                self.start(slot);
            }
        }
        self.faults.drop = 0;
        self.faults.dup = 0;
        self.faults.capture_loss = 0;
        for _ in 0..max_ticks {
            self.step();
            if self.now.is_multiple_of(10) && self.settled() {
                break;
            }
        }
    }

    /// The end: live replicas agree; acknowledged proposals are in every
    /// live replica at their position; clients got what they asked for.
    fn final_check(&mut self, expect_clients_done: bool) {
        let live: Vec<u16> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.replica.is_some())
            .map(|(&s, _)| s)
            .collect();
        let mut found = Vec::new();
        for &a in &live {
            for &b in &live {
                let (na, nb) = (&self.nodes[&a], &self.nodes[&b]);
                if a < b
                    && na.group.applied() == nb.group.applied()
                    && na.group.state_hash() != nb.group.state_hash()
                {
                    found.push(format!(
                        "I2: slots {a} and {b} applied up to {:#x} with different hashes",
                        na.group.applied()
                    ));
                }
            }
            let n = &self.nodes[&a];
            for (p, &(pos, _, _)) in &self.acked {
                let ok = n.applied.get(&pos) == Some(p) || gindex(pos) <= n.snap_base;
                if !ok {
                    found.push(format!(
                        "I1: acknowledged {p:?} at {pos:?} missing from slot {a} (snapshot base {:#x}, holds {:?} there)",
                        n.snap_base,
                        n.applied.get(&pos)
                    ));
                }
            }
        }
        if expect_clients_done {
            let mut shared = Vec::new();
            let mut shared_expected = 0;
            for c in &self.clients {
                let key = c.key();
                if c.phase != Phase::Done {
                    found.push(format!(
                        "client {}: not done ({:?}, acked {}/{}, got {} bytes, fin {}/{}/{})",
                        c.port,
                        c.phase,
                        c.acked,
                        c.len(),
                        c.got.len(),
                        c.fin_sent,
                        c.fin_acked,
                        c.fin_seen
                    ));
                    continue;
                }
                if self.canon_in.get(&key).map(|v| &v[..]) != Some(&c.script[..]) {
                    found.push(format!(
                        "client {}: the service received {:?}, the client sent {:?}",
                        c.port,
                        self.canon_in.get(&key).map(|v| String::from_utf8_lossy(v)),
                        String::from_utf8_lossy(&c.script)
                    ));
                }
                let replies = split_replies(&c.got);
                if replies.len() != c.expect.len()
                    || replies.concat().len() != c.got.len()
                    || self.canon_out.get(&key).map(|v| &v[..]) != Some(&c.got[..])
                {
                    found.push(format!(
                        "client {}: {} replies for {} requests: {:?}",
                        c.port,
                        replies.len(),
                        c.expect.len(),
                        String::from_utf8_lossy(&c.got)
                    ));
                    continue;
                }
                for (r, e) in replies.iter().zip(&c.expect) {
                    match e {
                        Expect::Exact(want) if want[..] == r[..] => {}
                        Expect::Exact(want) => found.push(format!(
                            "client {}: got {:?}, want {:?}",
                            c.port,
                            String::from_utf8_lossy(r),
                            String::from_utf8_lossy(want)
                        )),
                        Expect::Shared => {
                            shared_expected += 1;
                            let v = std::str::from_utf8(r)
                                .ok()
                                .and_then(|s| s.strip_prefix(':'))
                                .and_then(|s| s.trim_end().parse::<u64>().ok());
                            match v {
                                Some(v) => shared.push(v),
                                None => found.push(format!(
                                    "client {}: shared counter reply {:?}",
                                    c.port,
                                    String::from_utf8_lossy(r)
                                )),
                            }
                        }
                    }
                }
            }
            shared.sort_unstable();
            if shared != (1..=shared_expected).collect::<Vec<u64>>() {
                found.push(format!(
                    "the shared counter answered {shared:?} to {shared_expected} INCRs"
                ));
            }
        }
        for f in found {
            self.violation(f);
        }
    }

    fn report(&self) -> String {
        let mut s = format!("seed {} at tick {}:\n", self.seed, self.now);
        for (slot, n) in &self.nodes {
            s += &format!(
                "  slot {slot}: {:?}\n    group applied {:#x} hash {:016x} snapshot base {:#x}\n",
                n.replica.as_ref().map(|r| r.status()),
                n.group.applied(),
                n.group.state_hash(),
                n.snap_base
            );
        }
        for v in &self.violations {
            s += &format!("  {v}\n");
        }
        s
    }
}

/// `TANDEM_SIM_SEEDS` seeds (default 20) from `TANDEM_SIM_SEED_START`
/// (default 0).
fn seeds() -> std::ops::Range<u64> {
    let var = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let start = var("TANDEM_SIM_SEED_START", 0);
    start..start + var("TANDEM_SIM_SEEDS", 20)
}

/// One randomized run: clients arriving over time, crashes (one node at a
/// time, while the cluster is whole), partitions, network faults; then
/// heal, restart, settle, and check.
fn random_run(seed: u64) -> Sim {
    let mut rng = Rng(seed ^ 0x0067_726f_7570);
    let faults = Faults {
        drop: rng.below(80),
        dup: rng.below(40),
        max_delay: rng.below(4),
        capture_loss: rng.below(60),
        compact_every: 4 + rng.below(40) as usize,
        max_units: 1 + rng.below(6),
    };
    // A third of the runs throttle input behind a few dozen bytes of
    // unacknowledged output (the clients read lazily).
    let limit = if rng.chance(333) {
        16 + rng.below(64)
    } else {
        tandem_core::shadow::DEFAULT_OUTPUT_LIMIT
    };
    OUTPUT_LIMIT.with(|l| l.set(limit));
    let mut sim = Sim::new(seed, faults);
    let clients = 6 + rng.below(7);
    for _ in 0..clients {
        let at = 20 + rng.below(1400);
        sim.add_client(at);
    }
    let mut down: Option<(u16, u64)> = None;
    let mut isolated_until = 0;
    for _ in 0..1500 {
        match down {
            Some((slot, until)) if sim.now >= until => {
                sim.start(slot);
                down = None;
            }
            None if sim.rng.chance(8) && sim.healthy() => {
                let slot = if sim.rng.chance(500) {
                    sim.leader().unwrap()
                } else {
                    sim.slots[sim.rng.below(3) as usize]
                };
                sim.crash(slot);
                down = Some((slot, sim.now + 20 + sim.rng.below(200)));
            }
            _ => {}
        }
        if isolated_until != 0 && sim.now >= isolated_until {
            sim.heal();
            isolated_until = 0;
        } else if isolated_until == 0 && sim.rng.chance(5) {
            let slot = sim.slots[sim.rng.below(3) as usize];
            sim.isolate(slot);
            isolated_until = sim.now + 10 + sim.rng.below(150);
        }
        sim.step();
    }
    sim.settle(4000);
    sim.final_check(true);
    sim
}

#[test]
fn random_schedules_keep_i1_and_i2_for_the_kv_group() {
    let range = seeds();
    let n = range.end - range.start;
    let mut total = Stats::default();
    let mut acked = 0;
    let mut bytes_out = 0;
    let mut duplicates = 0;
    for seed in range {
        let sim = random_run(seed);
        assert!(sim.violations.is_empty(), "{}", sim.report());
        assert!(
            sim.settled(),
            "seed {seed}: not settled after healing\n{}",
            sim.report()
        );
        let s = sim.stats;
        total.leaders += s.leaders;
        total.snapshots_installed += s.snapshots_installed;
        total.compactions += s.compactions;
        total.restarts += s.restarts;
        total.entries_applied += s.entries_applied;
        total.retransmits += s.retransmits;
        total.batched += s.batched;
        total.restored += s.restored;
        total.out_of_order += s.out_of_order;
        total.throttled += s.throttled;
        for node in sim.nodes.values() {
            duplicates += node.group.stats().shadow_drops;
        }
        acked += sim.acked.len();
        bytes_out += sim.canon_out.values().map(Vec::len).sum::<usize>();
    }
    eprintln!(
        "{n} seeds: {acked} entries acknowledged, {total:?}, {bytes_out} bytes of output, {duplicates} segments dropped by shadow TCP on the final replicas"
    );
    // The runs must exercise what they claim to.
    assert!(total.leaders > n, "{total:?}");
    assert!(
        total.restarts > 0 && total.snapshots_installed > 0,
        "{total:?}"
    );
    assert!(total.retransmits > n && acked as u64 > 50 * n, "{total:?}");
    assert!(total.restored > 0 && total.batched > 0, "{total:?}");
    assert!(total.out_of_order > 0 && duplicates > 0, "{total:?}");
    assert!(total.throttled > 0, "{total:?}");
}

#[test]
fn same_seed_same_history() {
    let a = random_run(3);
    let b = random_run(3);
    assert_eq!(a.now, b.now);
    assert_eq!(a.hashes, b.hashes);
    assert_eq!(a.positions, b.positions);
    assert_eq!(a.canon_out, b.canon_out);
}

/// The checker is not blind: a replica whose group state is lost behind
/// raft's back (so it applies the next entries to the wrong state) is
/// reported.
#[test]
fn the_checker_catches_a_divergent_replica() {
    let mut sim = quiet_cluster(Faults::default());
    sim.add_client(sim.now + 1);
    sim.run(30);
    // Slot 3's group loses its state: the next entries it applies give
    // other hashes (and other output offsets) than on 1 and 2.
    sim.nodes.get_mut(&3).unwrap().group = fresh_group();
    sim.run(300);
    assert!(
        sim.violations.iter().any(|v| v.starts_with("I2")),
        "{:#?}",
        sim.violations
    );
}

fn quiet_cluster(faults: Faults) -> Sim {
    let mut sim = Sim::new(42, faults);
    sim.replica(1).campaign();
    sim.run(50);
    assert_eq!(sim.primary(), Some(1));
    sim
}

/// The forgotten-log scenario of docs/architecture.md §3.8 with kv traffic: slot 1 leads,
/// slot 3 is cut off, a client's request commits on 1 and 2 only, then 2
/// restarts empty (a new incarnation). Returns the sim and what the
/// client had acknowledged while 3 was cut off.
fn forgotten_log_setup() -> (Sim, Vec<ProposalId>) {
    let mut sim = quiet_cluster(Faults {
        compact_every: 5,
        ..Faults::default()
    });
    for _ in 0..3 {
        let at = sim.now + 1;
        sim.add_client(at);
    }
    sim.run(60);
    sim.isolate(3);
    let before: BTreeSet<ProposalId> = sim.acked.keys().copied().collect();
    let x = sim.add_client(sim.now + 1);
    sim.run(60);
    let during: Vec<ProposalId> = sim
        .acked
        .keys()
        .filter(|p| !before.contains(p))
        .copied()
        .collect();
    assert!(sim.clients[x].acked > 0, "the new client's data committed");
    assert!(!during.is_empty());
    // 3 lacks them all.
    assert!(during.iter().all(|p| {
        let pos = sim.acked[p].0;
        !sim.nodes[&3].applied.contains_key(&pos)
    }));
    sim.crash(2);
    sim.start(2);
    (sim, during)
}

#[test]
fn forgotten_log_never_elects_a_node_lacking_a_committed_entry() {
    let (mut sim, _) = forgotten_log_setup();
    // The leader dies before it can swap 2's new incarnation in.
    sim.crash(1);
    sim.heal();
    for _ in 0..2000 {
        sim.step();
        sim.check_leaders();
        // Voters are 1.1 (dead), 2.1 (dead) and 3.1: nobody may lead.
        assert_eq!(sim.leader(), None, "{}", sim.report());
    }
    // What the live nodes hold agrees with what was applied before.
    assert!(sim.violations.is_empty(), "{}", sim.report());
    let (h2, h3) = (&sim.nodes[&2].group, &sim.nodes[&3].group);
    if h2.applied() == h3.applied() {
        assert_eq!(h2.state_hash(), h3.state_hash());
    }
    assert_eq!(sim.hashes.get(&h3.applied()), Some(&h3.state_hash()));
}

#[test]
fn forgotten_log_swap_then_leader_loss_keeps_everything() {
    let (mut sim, during) = forgotten_log_setup();
    // The leader lives long enough to add 2.2 as a learner, send it a
    // snapshot and swap it in; then it dies.
    sim.heal();
    sim.run(300);
    let st = sim.replica(1).status();
    assert_eq!(
        st.voters,
        vec![NodeId::new(1, 1), NodeId::new(2, 2), NodeId::new(3, 1)],
        "{st:?}"
    );
    assert!(sim.stats.snapshots_installed >= 1);
    assert!(sim.nodes[&2].snap_base > 0, "2.2 caught up from a snapshot");
    sim.crash(1);
    sim.run(500);
    let l = sim.leader().expect("2.2 and 3.1 form a majority");
    assert_ne!(l, 1);
    // Both survivors hold what was acknowledged while 3 was cut off.
    for p in &during {
        let pos = sim.acked[p].0;
        for slot in [2, 3] {
            let n = &sim.nodes[&slot];
            assert!(
                n.applied.get(&pos) == Some(p) || gindex(pos) <= n.snap_base,
                "slot {slot} lacks {p:?}"
            );
        }
    }
    // More clients, then 1 comes back as 1.2, and everyone finishes.
    let at = sim.now + 1;
    sim.add_client(at);
    sim.settle(3000);
    sim.final_check(true);
    assert!(sim.violations.is_empty(), "{}", sim.report());
    assert!(sim.settled(), "{}", sim.report());
    let hashes: BTreeSet<u64> = sim.nodes.values().map(|n| n.group.state_hash()).collect();
    assert_eq!(hashes.len(), 1);
}
