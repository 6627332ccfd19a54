//! One replicated service as every replica runs it: committed log entries
//! in, effects out. No I/O, no clock: the same entries give the same
//! effects and the same state hash on every node (invariant I2).
//!
//! An entry carries captured packets (client → VIP and the primary's
//! SYN-ACKs), in capture order, plus the primary's own decisions (a client
//! the kernel gave up on, a timer that fell due). Applying it:
//! 1. every packet goes through shadow TCP, which turns it into connection
//!    events (opened, bytes, peer closed, reset);
//! 2. the events go to the service, through the SDK runtime, one packet's
//!    events at a time (the entry's random stream continues across them);
//! 3. the service's actions update shadow TCP's output bookkeeping before
//!    the next packet is fed, and come out as [`Effect`]s: the primary
//!    carries them out on real sockets, the clones ignore them (their
//!    bookkeeping is already done).
//!
//! Feeding packet by packet is what makes the bounds exact whatever the
//! batching: the input throttle sees the output of every earlier packet,
//! the output cap ([`Limits::output_cap`]) is checked at every send against
//! output the client's logged ACKs have not covered, and the memory budget
//! ([`Limits::max_memory`]) sees every connection and byte queued so far.
//!
//! Connections get their [`ConnId`] in log order, so ids agree everywhere
//! whatever ports the primary's kernel used.
//!
//! [`ServiceGroup::snapshot`] captures all of it (docs/architecture.md §3.7): shadow TCP
//! with every buffer, the SDK runtime with the service's own snapshot,
//! timers, time and the rng seed, the connection ids, the counters and the
//! applied index; [`ServiceGroup::restore`] rebuilds an identical group.
//!
//! The input throttle (docs/architecture.md §3.2) lives in shadow TCP: while a
//! connection's unacknowledged output is over
//! [`ShadowConfig::output_limit`], its input is held there, and the
//! segment whose logged ACK brings the output back within the limit
//! delivers it (a pure ACK's outcome may carry [`ShadowEvent::Delivered`]),
//! so applying goes through the same path whatever the entry holds.

use crate::parameters::GroupParameters;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use tandem_core::packet::segment_of;
use tandem_core::sdk::{
    Action, ConnId, Event as SdkEvent, Limits, MemoryUse, Runtime, Service, TimerId,
};
pub use tandem_core::shadow::SnapshotError;
use tandem_core::shadow::{
    ConnKey, Direction, Event as ShadowEvent, Millis, ShadowConfig, ShadowTable, TableSnapshot,
};
use tandem_wire::tcp::{OptionsMode, ParseChecks};
use tandem_wire::IpTcpRepr;

/// One committed log entry of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The primary's clock when it proposed the entry, in ms; the SDK's
    /// `now()` never goes backwards whatever this says.
    pub timestamp_ms: u64,
    /// What happened, in order.
    pub items: Vec<Item>,
}

/// Why bytes from the log are not a [`LogEntry`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable log entry: {0}")]
pub struct EntryDecodeError(String);

impl LogEntry {
    /// The entry as it is proposed to the log (postcard; the only place
    /// that knows the log's encoding, with [`LogEntry::decode`]).
    pub fn encode(&self) -> Vec<u8> {
        // A Vec writer cannot fail and every field is serialisable.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// An entry from the log; garbage is refused, never applied.
    pub fn decode(bytes: &[u8]) -> Result<LogEntry, EntryDecodeError> {
        postcard::from_bytes(bytes).map_err(|e| EntryDecodeError(e.to_string()))
    }
}

/// One thing in a log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Item {
    /// A captured IP packet; `from_server` for the primary's SYN-ACKs.
    Packet { from_server: bool, bytes: Vec<u8> },
    /// The primary's kernel gave up on this client (keepalive, RTO): every
    /// replica forgets the connection at this point.
    Abort {
        client: SocketAddr,
        server: SocketAddr,
    },
    /// A timer the service set fell due.
    Timer { id: u64, generation: u64 },
    /// The proposing leader's parameters, the first entry of its term
    /// (docs/architecture.md §3.9): the first set applied becomes the
    /// group's; a later one that differs is ignored (and counted).
    Parameters(GroupParameters),
}

/// What the primary does on its real sockets (clones ignore these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Write these bytes to the connection's socket.
    Write { conn: ConnKey, bytes: Vec<u8> },
    /// Shut the sending side down (a deliberate FIN).
    Shutdown { conn: ConnKey },
    /// Abort the connection (a deliberate RST).
    Abort { conn: ConnKey },
    /// Propose [`Item::Timer`] once log time passes `at_ms`.
    Timer {
        id: u64,
        generation: u64,
        at_ms: u64,
    },
    /// Forget a timer.
    CancelTimer { id: u64 },
    /// Shadow TCP handed these client bytes to the service: the primary's
    /// kernel socket must receive exactly the same (docs/architecture.md §3.2).
    Delivered { conn: ConnKey, bytes: Vec<u8> },
}

/// Counters of what applying saw; equal on every replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStats {
    pub entries: u64,
    pub packets: u64,
    /// Logged packets that did not parse (the primary drops junk before
    /// proposing, so this stays 0 unless the log itself is wrong).
    pub unparsable: u64,
    /// Segments shadow TCP dropped (duplicates, out of window, ...): the
    /// kernel drops them too.
    pub shadow_drops: u64,
    pub opened: u64,
    pub closed: u64,
    /// Parameter sets a leader proposed that differ from the group's
    /// (ignored: that leader refuses to serve).
    pub parameters_ignored: u64,
}

/// A service, its shadow TCP table and the connection ids.
pub struct ServiceGroup {
    shadow: ShadowTable,
    runtime: Runtime,
    ids: BTreeMap<ConnKey, ConnId>,
    keys: BTreeMap<ConnId, ConnKey>,
    next_id: u64,
    applied: u64,
    stats: GroupStats,
    /// [`Effect::Delivered`]s of the entry being applied.
    delivered: Vec<Effect>,
    /// The group's parameters: the first set applied (none before).
    parameters: Option<GroupParameters>,
}

impl ServiceGroup {
    /// A group running `service`, with shadow TCP configured by `shadow`
    /// and the SDK's randomness seeded by `seed` (the same on every replica).
    pub fn new(service: Box<dyn Service>, shadow: ShadowConfig, seed: u64) -> ServiceGroup {
        ServiceGroup {
            shadow: ShadowTable::new(shadow),
            runtime: Runtime::new(service, seed),
            ids: BTreeMap::new(),
            keys: BTreeMap::new(),
            next_id: 0,
            applied: 0,
            stats: GroupStats::default(),
            delivered: Vec::new(),
            parameters: None,
        }
    }

    /// The group's parameters, once a leader's first entry set them.
    pub fn parameters(&self) -> Option<&GroupParameters> {
        self.parameters.as_ref()
    }

    /// Sets the bounds applied from now on (they come from the
    /// configuration every replica shares, like the [`ShadowConfig`]; a
    /// restored group needs them set again).
    pub fn with_limits(mut self, limits: Limits) -> ServiceGroup {
        self.runtime.set_limits(limits);
        self
    }

    /// The bounds in force.
    pub fn limits(&self) -> Limits {
        *self.runtime.limits()
    }

    /// The accounted memory against the budget (the same on every replica
    /// at the same index).
    pub fn memory(&self) -> MemoryUse {
        self.runtime.memory()
    }

    /// Connections reset because their queued output would have passed
    /// [`Limits::output_cap`].
    pub fn output_overflows(&self) -> u64 {
        self.runtime.overflows()
    }

    /// The index of the last entry applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn stats(&self) -> GroupStats {
        self.stats
    }

    /// Shadow TCP, for images at takeover and for queries.
    pub fn shadow(&self) -> &ShadowTable {
        &self.shadow
    }

    /// Whether shadow TCP has an entry for this connection (the capture's
    /// classification asks).
    pub fn knows(&self, conn: &ConnKey) -> bool {
        self.shadow.info(conn).is_some()
    }

    /// The connection id of a 4-tuple, while it is open.
    pub fn id_of(&self, conn: &ConnKey) -> Option<ConnId> {
        self.ids.get(conn).copied()
    }

    /// The state hash: service, output hashes, timers (the runtime's) and
    /// shadow TCP, combined.
    pub fn state_hash(&self) -> u64 {
        group_hash(
            self.runtime.state_hash(),
            self.shadow.state_hash(),
            self.next_id,
            parameters_hash(self.parameters.as_ref()),
        )
    }

    /// Everything a replica needs to continue from [`ServiceGroup::applied`],
    /// as postcard bytes: the applied index, the connection ids, the
    /// counters, shadow TCP (connections, reassembly and output buffers,
    /// held-back input, TIME_WAIT entries), the SDK runtime (time, rng seed,
    /// timers, output bookkeeping, the service's own snapshot) and the
    /// state hash, which [`ServiceGroup::restore`] checks; then an
    /// integrity check over the bytes ([`tandem_core::shadow::seal`]).
    pub fn snapshot(&self) -> Vec<u8> {
        self.snapshot_taken().encode()
    }

    /// The part of [`ServiceGroup::snapshot`] that must see the live state
    /// (copying it: the service's encoding and shadow TCP's); the rest
    /// ([`TakenGroupSnapshot::encode`]: the state hash, a pass over every
    /// byte, the assembly and the integrity check) needs only what this
    /// returns and runs on another thread, so a large state holds the event
    /// loop up for one copy, not for the whole encoding.
    pub fn snapshot_taken(&self) -> TakenGroupSnapshot {
        let head = SnapshotHead {
            version: GROUP_SNAPSHOT_VERSION,
            parameters: &self.parameters,
            applied: self.applied,
            next_id: self.next_id,
            stats: self.stats,
            ids: &self.ids,
            shadow: &self.shadow,
        };
        TakenGroupSnapshot {
            // Serialising plain data into a Vec cannot fail.
            head: postcard::to_stdvec(&head).unwrap_or_default(),
            runtime: self.runtime.snapshot_taken(),
            shadow_hash: self.shadow.state_hash(),
            next_id: self.next_id,
            parameters_hash: parameters_hash(self.parameters.as_ref()),
        }
    }

    /// Rebuilds a group from [`ServiceGroup::snapshot`]'s bytes. `service`
    /// is a fresh instance of the same service kind (its state comes from
    /// the bytes); `shadow` is the configuration every replica uses. Bad
    /// bytes are an error, never a panic (a service whose `restore` panics
    /// on them is caught too); the rebuilt group's state hash must equal
    /// the one recorded in the snapshot.
    pub fn restore(
        service: Box<dyn Service>,
        shadow: ShadowConfig,
        bytes: &[u8],
    ) -> Result<ServiceGroup, SnapshotError> {
        Self::restore_if(service, shadow, bytes, |_| true)?
            .ok_or_else(|| SnapshotError::Invalid("refused".into()))
    }

    /// [`ServiceGroup::restore`], asking `accept` first with the group's
    /// parameters recorded in the bytes (they come first, so nothing is
    /// rebuilt for a refused snapshot): `Ok(None)` if it refuses. A node
    /// configured unlike the group can so say which parameter differs
    /// instead of failing somewhere in the restore (or, worse, not).
    pub fn restore_if(
        service: Box<dyn Service>,
        shadow: ShadowConfig,
        bytes: &[u8],
        accept: impl FnOnce(Option<&GroupParameters>) -> bool,
    ) -> Result<Option<ServiceGroup>, SnapshotError> {
        let decode = |e: postcard::Error| SnapshotError::Decode(e.to_string());
        let bytes = tandem_core::shadow::unseal(bytes)?;
        let (version, rest) = postcard::take_from_bytes::<u32>(bytes).map_err(decode)?;
        if version != GROUP_SNAPSHOT_VERSION {
            return Err(SnapshotError::Version(version));
        }
        let (parameters, _) =
            postcard::take_from_bytes::<Option<GroupParameters>>(rest).map_err(decode)?;
        if !accept(parameters.as_ref()) {
            return Ok(None);
        }
        let s: SnapshotIn = postcard::from_bytes(bytes).map_err(decode)?;
        let table = s.shadow.into_table(shadow)?;
        let mut keys = BTreeMap::new();
        for (key, id) in &s.ids {
            if id.0 >= s.next_id || keys.insert(*id, *key).is_some() {
                return Err(SnapshotError::Invalid(format!(
                    "connection id {} reused or not yet allocated",
                    id.0
                )));
            }
        }
        let runtime_bytes = s.runtime;
        let restored = catch_unwind(AssertUnwindSafe(move || {
            Runtime::restore(&runtime_bytes, move |b| {
                let mut service = service;
                service.restore_in_place(b)?;
                Ok(service)
            })
        }));
        let runtime = match restored {
            Ok(Ok(runtime)) => runtime,
            Ok(Err(e)) => return Err(SnapshotError::Service(e.to_string())),
            Err(_) => {
                return Err(SnapshotError::Service(
                    "the service panicked restoring its snapshot".into(),
                ))
            }
        };
        let group = ServiceGroup {
            shadow: table,
            runtime,
            ids: s.ids,
            keys,
            next_id: s.next_id,
            applied: s.applied,
            stats: s.stats,
            delivered: Vec::new(),
            parameters: s.parameters,
        };
        let restored = group.state_hash();
        if restored != s.hash {
            return Err(SnapshotError::HashMismatch {
                recorded: s.hash,
                restored,
            });
        }
        Ok(Some(group))
    }

    /// Applies the committed entry at `index` (indexes must increase; an
    /// entry at or below the last applied one is ignored: a replay).
    pub fn apply(&mut self, index: u64, entry: &LogEntry) -> Vec<Effect> {
        if index <= self.applied && self.stats.entries > 0 {
            return Vec::new();
        }
        self.applied = index;
        self.stats.entries += 1;
        let now = Millis(entry.timestamp_ms);
        let mut events = Vec::new();
        let mut effects = Vec::new();
        // Half-open handshakes and TIME_WAIT entries expire in log time,
        // checked once per second of it: the previous entry's time is in
        // every replica's state (and snapshot), so all expire alike.
        let before = self.runtime.now();
        self.runtime.begin_entry(index, now);
        if before.0 / 1000 != before.0.max(now.0) / 1000 {
            for (key, event) in self.shadow.expire(Millis(before.0.max(now.0))) {
                self.translate(key, vec![event], &mut events);
            }
            self.run(&mut events, &mut effects);
        }
        for item in &entry.items {
            match item {
                Item::Packet { from_server, bytes } => {
                    self.stats.packets += 1;
                    let checks = ParseChecks {
                        // Checked by the primary before proposing; the log is
                        // authenticated, so a replica need not check again.
                        verify_checksum: false,
                        options: OptionsMode::Linux,
                    };
                    let Ok(repr) = IpTcpRepr::parse(bytes, checks) else {
                        self.stats.unparsable += 1;
                        continue;
                    };
                    let direction = if *from_server {
                        Direction::FromServer
                    } else {
                        Direction::FromClient
                    };
                    let segment = segment_of(&repr);
                    let outcome = self.shadow.on_segment(now, direction, &segment);
                    self.translate(outcome.conn, outcome.events, &mut events);
                }
                Item::Abort { client, server } => {
                    let key = ConnKey {
                        client: *client,
                        server: *server,
                    };
                    if self.shadow.abort(&key) {
                        self.translate(key, vec![ShadowEvent::Reset], &mut events);
                    }
                }
                Item::Timer { id, generation } => events.push(SdkEvent::Timer {
                    id: TimerId(*id),
                    generation: *generation,
                }),
                Item::Parameters(proposed) => match &self.parameters {
                    None => self.parameters = Some(proposed.clone()),
                    Some(group) if group != proposed => self.stats.parameters_ignored += 1,
                    Some(_) => {}
                },
            }
            self.run(&mut events, &mut effects);
        }
        effects
    }

    /// Hands one item's events to the service and records its actions, so
    /// the next item sees their effect (output queued, connections reset).
    fn run(&mut self, events: &mut Vec<SdkEvent>, effects: &mut Vec<Effect>) {
        effects.append(&mut self.delivered);
        self.runtime.set_host_connections(self.shadow.len() as u64);
        for event in events.drain(..) {
            let actions = self.runtime.apply_event(event);
            let done = self.carry_out(actions);
            effects.extend(done);
        }
    }

    /// Panics of the service caught during apply (each aborted a connection).
    pub fn panics(&self) -> u64 {
        self.runtime.panics()
    }

    /// Shadow TCP's events for one connection, as SDK events.
    fn translate(
        &mut self,
        key: ConnKey,
        shadow_events: Vec<ShadowEvent>,
        out: &mut Vec<SdkEvent>,
    ) {
        for event in shadow_events {
            match event {
                ShadowEvent::Opened => {
                    let id = ConnId(self.next_id);
                    self.next_id += 1;
                    self.ids.insert(key, id);
                    self.keys.insert(id, key);
                    self.stats.opened += 1;
                    out.push(SdkEvent::Opened {
                        conn: id,
                        peer: key.client,
                    });
                }
                ShadowEvent::Delivered(bytes) => {
                    if let Some(&conn) = self.ids.get(&key) {
                        self.delivered.push(Effect::Delivered {
                            conn: key,
                            bytes: bytes.clone(),
                        });
                        out.push(SdkEvent::Data { conn, bytes });
                    }
                }
                ShadowEvent::PeerClosed => {
                    if let Some(&conn) = self.ids.get(&key) {
                        out.push(SdkEvent::PeerClosed { conn });
                    }
                }
                ShadowEvent::Reset | ShadowEvent::Closed => {
                    if let Some(conn) = self.ids.remove(&key) {
                        self.keys.remove(&conn);
                        self.stats.closed += 1;
                        out.push(SdkEvent::Reset { conn });
                    }
                }
                ShadowEvent::Dropped(_) => self.stats.shadow_drops += 1,
                ShadowEvent::Acked(bytes) => {
                    if let Some(&conn) = self.ids.get(&key) {
                        self.runtime.output_acked(conn, bytes);
                    }
                }
                ShadowEvent::HandshakeAborted
                | ShadowEvent::HalfOpenExpired
                | ShadowEvent::TimeWaitEnded => {}
            }
        }
    }

    /// Records the service's actions in shadow TCP and returns them as
    /// effects for the primary.
    fn carry_out(&mut self, actions: Vec<Action>) -> Vec<Effect> {
        let mut effects = Vec::with_capacity(actions.len());
        for action in actions {
            match action {
                Action::Send { conn, bytes } => {
                    if let Some(&key) = self.keys.get(&conn) {
                        if self.shadow.append_output(&key, &bytes).is_ok() {
                            effects.push(Effect::Write { conn: key, bytes });
                        }
                    }
                }
                Action::Close { conn } => {
                    if let Some(&key) = self.keys.get(&conn) {
                        if self.shadow.close(&key).is_ok() {
                            effects.push(Effect::Shutdown { conn: key });
                        }
                    }
                }
                Action::Abort { conn } => {
                    if let Some(key) = self.keys.remove(&conn) {
                        self.ids.remove(&key);
                        self.shadow.abort(&key);
                        self.stats.closed += 1;
                        effects.push(Effect::Abort { conn: key });
                    }
                }
                Action::SetTimer { id, generation, at } => effects.push(Effect::Timer {
                    id: id.0,
                    generation,
                    at_ms: at.0,
                }),
                Action::CancelTimer { id } => effects.push(Effect::CancelTimer { id: id.0 }),
            }
        }
        effects
    }
}

/// The group snapshot format's version (the first field of the encoding).
/// 2: the runtime's hash takes the service's hash last; 3: the group's
/// parameters.
pub const GROUP_SNAPSHOT_VERSION: u32 = 3;

fn group_hash(runtime: u64, shadow: u64, next_id: u64, parameters: u64) -> u64 {
    let mut h = tandem_core::shadow::hash::Fnv64::new();
    h.u64(runtime);
    h.u64(shadow);
    h.u64(next_id);
    h.u64(parameters);
    h.finish()
}

/// The parameters' part of the state hash (0: none set yet).
fn parameters_hash(parameters: Option<&GroupParameters>) -> u64 {
    let Some(p) = parameters else {
        return 0;
    };
    let mut h = tandem_core::shadow::hash::Fnv64::new();
    for (name, value) in p.iter() {
        h.bytes(name.as_bytes());
        h.u64(0);
        h.bytes(value.as_bytes());
        h.u64(0);
    }
    h.finish() | 1
}

/// The fields of [`SnapshotIn`] before the runtime's bytes (postcard
/// encodes a struct as its fields one after the other, so the encoding of
/// this followed by the runtime's bytes and the hash is [`SnapshotIn`]'s).
#[derive(Serialize)]
struct SnapshotHead<'a> {
    version: u32,
    parameters: &'a Option<GroupParameters>,
    applied: u64,
    next_id: u64,
    stats: GroupStats,
    ids: &'a BTreeMap<ConnKey, ConnId>,
    shadow: &'a ShadowTable,
}

/// A group snapshot taken on the event loop, to be encoded elsewhere
/// ([`ServiceGroup::snapshot_taken`]).
#[derive(Debug)]
pub struct TakenGroupSnapshot {
    head: Vec<u8>,
    runtime: tandem_core::sdk::TakenSnapshot,
    shadow_hash: u64,
    next_id: u64,
    parameters_hash: u64,
}

impl TakenGroupSnapshot {
    /// Bytes the copy holds (the memory it pins until encoded).
    pub fn len(&self) -> usize {
        self.head.len() + self.runtime.len()
    }

    /// True if nothing was copied (never, in practice: the head is there).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [`ServiceGroup::snapshot`]'s bytes.
    pub fn encode(self) -> Vec<u8> {
        let runtime = self.runtime.encode();
        let hash = group_hash(
            runtime.state_hash,
            self.shadow_hash,
            self.next_id,
            self.parameters_hash,
        );
        let mut out = self.head;
        out.reserve(runtime.len() + 20 + 8);
        // postcard: a byte sequence is its length as a varint, then the
        // bytes; a u64 is a varint.
        put_varint(&mut out, runtime.len() as u64);
        out.extend_from_slice(&runtime.head);
        out.extend_from_slice(&runtime.service);
        put_varint(&mut out, hash);
        tandem_core::shadow::seal(out)
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// What [`ServiceGroup::restore`] reads: [`SnapshotOut`], field for field.
#[derive(Deserialize)]
struct SnapshotIn {
    #[allow(dead_code)]
    version: u32,
    parameters: Option<GroupParameters>,
    applied: u64,
    next_id: u64,
    stats: GroupStats,
    ids: BTreeMap<ConnKey, ConnId>,
    shadow: TableSnapshot,
    runtime: Vec<u8>,
    hash: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tandem_wire::{IpRepr, Ipv4Repr, SeqNumber, TcpFlags, TcpOptionSet, TcpRepr, Timestamps};

    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

    struct Wire {
        client_port: u16,
        c_isn: u32,
        s_isn: u32,
        sent: u32,
        received: u32,
    }

    impl Wire {
        fn packet(
            &self,
            from_server: bool,
            flags: TcpFlags,
            seq: u32,
            ack: u32,
            payload: &[u8],
        ) -> Item {
            let (src, dst, sp, dp) = if from_server {
                (VIP, CLIENT, 6379, self.client_port)
            } else {
                (CLIENT, VIP, self.client_port, 6379)
            };
            let mut options = TcpOptionSet::default();
            if flags.contains(TcpFlags::SYN) {
                options.mss = Some(1460);
                options.window_scale = Some(7);
                options.sack_permitted = true;
            }
            options.timestamps = Some(Timestamps {
                tsval: 1000,
                tsecr: 0,
            });
            let repr = tandem_wire::IpTcpRepr {
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

        fn handshake(&self) -> Vec<Item> {
            vec![
                self.packet(false, TcpFlags::SYN, self.c_isn, 0, &[]),
                self.packet(
                    true,
                    TcpFlags::SYN | TcpFlags::ACK,
                    self.s_isn,
                    self.c_isn.wrapping_add(1),
                    &[],
                ),
                self.packet(
                    false,
                    TcpFlags::ACK,
                    self.c_isn.wrapping_add(1),
                    self.s_isn.wrapping_add(1),
                    &[],
                ),
            ]
        }

        /// The client sends `data`, acknowledging everything it got so far.
        fn send(&mut self, data: &[u8]) -> Item {
            let seq = self.c_isn.wrapping_add(1).wrapping_add(self.sent);
            self.sent += data.len() as u32;
            let ack = self.s_isn.wrapping_add(1).wrapping_add(self.received);
            self.packet(false, TcpFlags::ACK | TcpFlags::PSH, seq, ack, data)
        }
    }

    fn kv() -> ServiceGroup {
        ServiceGroup::new(
            Box::new(tandem_service_kv::Kv::new()),
            ShadowConfig::default(),
            42,
        )
    }

    fn writes(effects: &[Effect]) -> Vec<u8> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Write { bytes, .. } => Some(bytes.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// A Redis client's session, as the primary would log it, applied on two
    /// replicas: the same replies, the same hashes at every index.
    #[test]
    fn replicas_applying_the_same_log_agree_on_replies_and_hashes() {
        let mut wire = Wire {
            client_port: 40000,
            c_isn: u32::MAX - 3, // the client's stream wraps 2^32
            s_isn: 77,
            sent: 0,
            received: 0,
        };
        let mut entries = vec![LogEntry {
            timestamp_ms: 1_000,
            items: wire.handshake(),
        }];
        let mut requests = Vec::new();
        for (i, cmd) in [
            "*1\r\n$4\r\nPING\r\n".to_string(),
            "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n".to_string(),
            "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_string(),
            "*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n".to_string(),
            "*3\r\n$4\r\nSADD\r\n$1\r\ns\r\n$1\r\nb\r\n*3\r\n$4\r\nSADD\r\n$1\r\ns\r\n$1\r\na\r\n*1\r\n$7\r\nFOOBAR!\r\n".to_string(),
        ]
        .iter()
        .enumerate()
        {
            requests.push(cmd.clone());
            entries.push(LogEntry {
                timestamp_ms: 1_000 + i as u64,
                items: vec![wire.send(cmd.as_bytes())],
            });
        }
        let (mut a, mut b) = (kv(), kv());
        let mut replies = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let index = i as u64 + 1;
            let ea = a.apply(index, entry);
            let eb = b.apply(index, entry);
            assert_eq!(ea, eb, "replicas differ at index {index}");
            assert_eq!(
                a.state_hash(),
                b.state_hash(),
                "hashes differ at index {index}"
            );
            replies.extend(writes(&ea));
        }
        let replies = String::from_utf8(replies).unwrap();
        assert_eq!(
            replies,
            "+PONG\r\n+OK\r\n$5\r\nhello\r\n:1\r\n:2\r\n:1\r\n:1\r\n-ERR unknown command 'FOOBAR!', with args beginning with: \r\n",
            "requests: {requests:?}"
        );
        assert_eq!(a.stats().opened, 1);
        assert_eq!(a.stats().unparsable, 0);
        // A replayed entry changes nothing.
        let before = a.state_hash();
        assert!(a.apply(3, &entries[2]).is_empty());
        assert_eq!(a.state_hash(), before);
    }

    /// The primary's abort of a vanished client reaches the service as a
    /// reset on every replica, and the connection is forgotten.
    #[test]
    fn an_abort_entry_forgets_the_connection_everywhere() {
        let mut wire = Wire {
            client_port: 40001,
            c_isn: 5,
            s_isn: 9,
            sent: 0,
            received: 0,
        };
        let mut group = kv();
        group.apply(
            1,
            &LogEntry {
                timestamp_ms: 1,
                items: wire.handshake(),
            },
        );
        let key = ConnKey {
            client: SocketAddr::from((CLIENT, 40001)),
            server: SocketAddr::from((VIP, 6379)),
        };
        assert!(group.knows(&key));
        assert_eq!(group.id_of(&key), Some(ConnId(0)));
        group.apply(
            2,
            &LogEntry {
                timestamp_ms: 2,
                items: vec![Item::Abort {
                    client: key.client,
                    server: key.server,
                }],
            },
        );
        assert!(!group.knows(&key));
        assert_eq!(group.id_of(&key), None);
        // Later bytes on the old tuple reach nobody.
        let effects = group.apply(
            3,
            &LogEntry {
                timestamp_ms: 3,
                items: vec![wire.send(b"*1\r\n$4\r\nPING\r\n")],
            },
        );
        assert!(writes(&effects).is_empty());
    }

    impl Wire {
        fn new(client_port: u16, c_isn: u32, s_isn: u32) -> Wire {
            Wire {
                client_port,
                c_isn,
                s_isn,
                sent: 0,
                received: 0,
            }
        }

        fn key(&self) -> ConnKey {
            ConnKey {
                client: SocketAddr::from((CLIENT, self.client_port)),
                server: SocketAddr::from((VIP, 6379)),
            }
        }

        /// `data` at stream offset `off` (out of order), acking what we got.
        fn send_at(&self, off: u32, data: &[u8]) -> Item {
            let seq = self.c_isn.wrapping_add(1).wrapping_add(off);
            let ack = self.s_isn.wrapping_add(1).wrapping_add(self.received);
            self.packet(false, TcpFlags::ACK | TcpFlags::PSH, seq, ack, data)
        }

        /// A pure ACK of `received` bytes (plus our FIN if `fin_too`).
        fn ack(&self, fin_too: bool) -> Item {
            let seq = self.c_isn.wrapping_add(1).wrapping_add(self.sent);
            let ack = self
                .s_isn
                .wrapping_add(1)
                .wrapping_add(self.received)
                .wrapping_add(u32::from(fin_too));
            self.packet(false, TcpFlags::ACK, seq, ack, &[])
        }

        /// The client's FIN.
        fn fin(&mut self, fin_too: bool) -> Item {
            let seq = self.c_isn.wrapping_add(1).wrapping_add(self.sent);
            self.sent += 1;
            let ack = self
                .s_isn
                .wrapping_add(1)
                .wrapping_add(self.received)
                .wrapping_add(u32::from(fin_too));
            self.packet(false, TcpFlags::ACK | TcpFlags::FIN, seq, ack, &[])
        }
    }

    /// A line service with timers and randomness, for the snapshot tests:
    /// answers each line with its length and a random number, arms a timer
    /// on `T`, closes first on `Q`, says bye and closes when the client does,
    /// and ticks to every connection when the timer fires.
    #[derive(Debug, Default, Serialize, Deserialize)]
    struct Lines {
        buffers: BTreeMap<u64, Vec<u8>>,
        ticks: u64,
    }

    impl Service for Lines {
        fn on_event(&mut self, ctx: &mut tandem_core::sdk::Context, event: SdkEvent) {
            match event {
                SdkEvent::Opened { conn, .. } => {
                    self.buffers.insert(conn.0, Vec::new());
                }
                SdkEvent::Data { conn, bytes } => {
                    let buf = self.buffers.entry(conn.0).or_default();
                    buf.extend_from_slice(&bytes);
                    while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=i).collect();
                        match &line[..] {
                            b"T\n" => {
                                let at = ctx.now().plus(10);
                                ctx.set_timer(TimerId(1), at);
                                ctx.send(conn, "armed\n");
                            }
                            b"Q\n" => ctx.close(conn),
                            _ => {
                                let r = ctx.rng().below(1000);
                                ctx.send(conn, format!("{} {r}\n", line.len()));
                            }
                        }
                    }
                }
                SdkEvent::PeerClosed { conn } => {
                    ctx.send(conn, "bye\n");
                    ctx.close(conn);
                }
                SdkEvent::Reset { conn } => {
                    self.buffers.remove(&conn.0);
                }
                SdkEvent::Timer { .. } => {
                    self.ticks += 1;
                    for id in self.buffers.keys() {
                        ctx.send(ConnId(*id), format!("tick {}\n", self.ticks));
                    }
                }
            }
        }

        fn snapshot(&self) -> Vec<u8> {
            postcard::to_stdvec(self).unwrap()
        }

        fn restore(bytes: &[u8]) -> Result<Self, tandem_core::sdk::SdkError> {
            postcard::from_bytes(bytes)
                .map_err(|e| tandem_core::sdk::SdkError::Snapshot(e.to_string()))
        }
    }

    /// Small enough that the input throttle engages in the scenario.
    fn small_limit() -> ShadowConfig {
        ShadowConfig {
            output_limit: 20,
            ..ShadowConfig::default()
        }
    }

    fn lines() -> ServiceGroup {
        ServiceGroup::new(Box::new(Lines::default()), small_limit(), 7)
    }

    /// One applied entry: the entry, its effects, the hash after it.
    type Step = (LogEntry, Vec<Effect>, u64);

    /// A scripted life of three clients on the line service, applied as it
    /// is built (the clients acknowledge exactly what they were sent):
    /// handshakes, data both ways, out-of-order data pending in
    /// reassembly, input held by the throttle, a timer (and a stale one),
    /// a client half-close, a server close into TIME_WAIT, a pending
    /// handshake, an abort.
    fn scenario() -> Vec<Step> {
        let mut g = lines();
        let mut w1 = Wire::new(40000, u32::MAX - 10, 1000);
        let mut w2 = Wire::new(40001, 5, u32::MAX - 2);
        let w3 = Wire::new(40002, 77, 88);
        let mut steps: Vec<Step> = Vec::new();
        let mut t = 1_000u64;
        let mut run = |g: &mut ServiceGroup, w: [&mut Wire; 2], items: Vec<Item>| {
            t += 3;
            let entry = LogEntry {
                timestamp_ms: t,
                items,
            };
            let effects = g.apply(steps.len() as u64 + 1, &entry);
            steps.push((entry, effects.clone(), g.state_hash()));
            let [a, b] = w;
            for e in &effects {
                if let Effect::Write { conn, bytes } = e {
                    for w in [&mut *a, &mut *b] {
                        if *conn == w.key() {
                            w.received += bytes.len() as u32;
                        }
                    }
                }
            }
        };
        let h1 = w1.handshake();
        run(&mut g, [&mut w1, &mut w2], h1);
        let mut items = w2.handshake();
        items.push(w1.send(b"hello\n"));
        run(&mut g, [&mut w1, &mut w2], items);
        // Out of order: held in reassembly across the next entries.
        let ooo = w1.send_at(w1.sent + 6, b"later\n");
        let t2 = w2.send(b"T\n");
        run(&mut g, [&mut w1, &mut w2], vec![ooo, t2]);
        let gap = w1.send(b"world\n");
        w1.sent += 6;
        let items = vec![w2.ack(false)];
        run(&mut g, [&mut w1, &mut w2], items);
        run(&mut g, [&mut w1, &mut w2], vec![gap]);
        // Pipelined lines without acknowledging the replies: the throttle
        // holds input (the limit is 20 bytes).
        let frozen = w1.received;
        for _ in 0..4 {
            let real = std::mem::replace(&mut w1.received, frozen);
            let item = w1.send(b"one\ntwo\n");
            w1.received = real;
            run(&mut g, [&mut w1, &mut w2], vec![item]);
        }
        assert!(g.shadow().info(&w1.key()).unwrap().held_input > 0);
        // The timer fires (and a stale generation does not).
        run(
            &mut g,
            [&mut w1, &mut w2],
            vec![
                Item::Timer {
                    id: 1,
                    generation: 1,
                },
                Item::Timer {
                    id: 1,
                    generation: 99,
                },
            ],
        );
        // A pending handshake.
        let h3 = w3.handshake()[..2].to_vec();
        run(&mut g, [&mut w1, &mut w2], h3);
        // w2 half-closes; the service says bye and closes.
        let fin = w2.fin(false);
        run(&mut g, [&mut w1, &mut w2], vec![fin]);
        // A pure ACK releases w1's held input.
        let items = vec![w1.ack(false)];
        run(&mut g, [&mut w1, &mut w2], items);
        let items = vec![w1.ack(false), w2.ack(true)];
        run(&mut g, [&mut w1, &mut w2], items);
        // w1 asks the server to close first, then closes: TIME_WAIT.
        let q = w1.send(b"Q\n");
        run(&mut g, [&mut w1, &mut w2], vec![q]);
        let fin = w1.fin(true);
        let items = vec![w1.ack(true), fin];
        run(&mut g, [&mut w1, &mut w2], items);
        // The pending handshake's client vanished.
        let key3 = w3.key();
        run(
            &mut g,
            [&mut w1, &mut w2],
            vec![Item::Abort {
                client: key3.client,
                server: key3.server,
            }],
        );
        steps
    }

    #[test]
    fn the_scenario_reaches_every_interesting_state() {
        let steps = scenario();
        let mut g = lines();
        let mut seen = Vec::new();
        for (i, (entry, effects, hash)) in steps.iter().enumerate() {
            assert_eq!(&g.apply(i as u64 + 1, entry), effects);
            assert_eq!(g.state_hash(), *hash);
            for key in g.shadow().keys() {
                let info = g.shadow().info(key).unwrap();
                seen.push(format!("{:?}", info.state));
                if info.held > 0 {
                    seen.push("reassembly".into());
                }
                if info.held_input > 0 {
                    seen.push("throttled".into());
                }
            }
            if !g.runtime.timers().is_empty() {
                seen.push("timer".into());
            }
        }
        for want in [
            "SynAckSeen",
            "Established",
            "LastAck",
            "FinWait1",
            "TimeWait",
            "reassembly",
            "throttled",
            "timer",
        ] {
            assert!(seen.iter().any(|s| s == want), "never saw {want}");
        }
        let all: Vec<u8> = steps.iter().flat_map(|(_, e, _)| writes(e)).collect();
        let all = String::from_utf8(all).unwrap();
        assert!(all.contains("tick 1\n") && all.contains("bye\n"), "{all}");
    }

    /// A group restored from a snapshot taken after any entry continues
    /// exactly as the group that never snapshotted: same effects, same
    /// hashes; and its own snapshot is byte for byte the same.
    #[test]
    fn a_restored_group_continues_identically_from_any_point() {
        let steps = scenario();
        for cut in 0..=steps.len() {
            let mut g = lines();
            for (i, (entry, _, _)) in steps[..cut].iter().enumerate() {
                g.apply(i as u64 + 1, entry);
            }
            let bytes = g.snapshot();
            let mut r =
                ServiceGroup::restore(Box::new(Lines::default()), small_limit(), &bytes).unwrap();
            assert_eq!(r.state_hash(), g.state_hash(), "cut {cut}");
            assert_eq!(r.applied(), g.applied());
            assert_eq!(r.stats(), g.stats());
            assert_eq!(r.snapshot(), bytes, "cut {cut}");
            for (i, (entry, effects, hash)) in steps.iter().enumerate().skip(cut) {
                let index = i as u64 + 1;
                assert_eq!(&r.apply(index, entry), effects, "cut {cut} index {index}");
                assert_eq!(r.state_hash(), *hash, "cut {cut} index {index}");
            }
            assert_eq!(r.stats().entries, steps.len() as u64);
        }
    }

    /// The snapshot encoded in two steps (a copy on the loop, the rest on
    /// another thread) is byte for byte postcard's encoding of the whole
    /// snapshot record, sealed: what `restore` reads.
    #[test]
    fn a_snapshot_taken_then_encoded_is_the_whole_record_encoded() {
        #[derive(Serialize)]
        struct Whole<'a> {
            version: u32,
            parameters: &'a Option<GroupParameters>,
            applied: u64,
            next_id: u64,
            stats: GroupStats,
            ids: &'a BTreeMap<ConnKey, ConnId>,
            shadow: &'a ShadowTable,
            runtime: Vec<u8>,
            hash: u64,
        }
        let steps = scenario();
        for cut in 0..=steps.len() {
            let mut g = lines();
            for (i, (entry, _, _)) in steps[..cut].iter().enumerate() {
                g.apply(i as u64 + 1, entry);
            }
            let whole = Whole {
                version: GROUP_SNAPSHOT_VERSION,
                parameters: &g.parameters,
                applied: g.applied,
                next_id: g.next_id,
                stats: g.stats,
                ids: &g.ids,
                shadow: &g.shadow,
                runtime: g.runtime.snapshot(),
                hash: g.state_hash(),
            };
            let expected = tandem_core::shadow::seal(postcard::to_stdvec(&whole).unwrap());
            let taken = g.snapshot_taken();
            assert!(!taken.is_empty());
            // Encoded on another thread, as the daemon does.
            let bytes = std::thread::spawn(move || taken.encode()).join().unwrap();
            assert_eq!(bytes, expected, "cut {cut}");
        }
    }

    #[test]
    fn bad_group_snapshots_are_errors_never_panics() {
        let steps = scenario();
        let mut g = lines();
        for (i, (entry, _, _)) in steps[..9].iter().enumerate() {
            g.apply(i as u64 + 1, entry);
        }
        let good = g.snapshot();
        let restore =
            |b: &[u8]| ServiceGroup::restore(Box::new(Lines::default()), small_limit(), b);
        assert!(restore(&good).is_ok());
        for cut in 0..good.len() {
            assert!(restore(&good[..cut]).is_err(), "cut {cut}");
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x41;
            assert!(restore(&bad).is_err(), "byte {i}");
        }
        for len in [0usize, 1, 8, 9, 100, 1000] {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            assert!(restore(&junk).is_err());
            // Sealed junk passes the integrity check and fails decoding.
            assert!(restore(&tandem_core::shadow::seal(junk)).is_err());
        }
        // The wrong service kind: refused, not a panic.
        assert!(matches!(
            ServiceGroup::restore(Box::new(tandem_service_kv::Kv::new()), small_limit(), &good),
            Err(SnapshotError::Service(_)) | Err(SnapshotError::HashMismatch { .. })
        ));
        // A different table configuration that the state does not fit.
        let mut tiny = small_limit();
        tiny.max_connections = 1;
        assert!(matches!(
            ServiceGroup::restore(Box::new(Lines::default()), tiny, &good),
            Err(SnapshotError::Invalid(_))
        ));
    }

    /// The size of a snapshot of a kv group holding 1,000 open connections,
    /// each with a request answered and the reply acknowledged.
    #[test]
    fn a_snapshot_of_1000_connections_is_small() {
        let mut g = kv();
        let mut index = 0;
        for i in 0..1000u32 {
            let mut w = Wire::new(
                20_000 + i as u16,
                i.wrapping_mul(7919),
                i.wrapping_mul(104_729),
            );
            let mut items = w.handshake();
            items.push(w.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"));
            index += 1;
            let effects = g.apply(
                index,
                &LogEntry {
                    timestamp_ms: 1_000,
                    items,
                },
            );
            w.received += writes(&effects).len() as u32;
            index += 1;
            g.apply(
                index,
                &LogEntry {
                    timestamp_ms: 1_000,
                    items: vec![w.ack(false)],
                },
            );
        }
        assert_eq!(g.shadow().len(), 1000);
        let bytes = g.snapshot();
        let per_conn = bytes.len() / 1000;
        println!(
            "snapshot of 1000 idle kv connections: {} bytes ({per_conn} per connection)",
            bytes.len()
        );
        assert!(per_conn < 300, "{per_conn} bytes per connection");
        let r = ServiceGroup::restore(
            Box::new(tandem_service_kv::Kv::new()),
            ShadowConfig::default(),
            &bytes,
        )
        .unwrap();
        assert_eq!(r.state_hash(), g.state_hash());
    }

    /// A client pipelining PINGs without reading the replies: the service
    /// stops seeing input once the unacknowledged output passes the limit,
    /// a later pure ACK releases it in order, and replicas that batched the
    /// same packets differently end in the same state.
    #[test]
    fn the_throttle_stops_input_until_the_client_reads() {
        const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
        // Ten replies of 7 bytes.
        let config = ShadowConfig {
            output_limit: 70,
            ..ShadowConfig::default()
        };
        let mut w = Wire::new(40100, 1, 2);
        let mut packets = w.handshake();
        for _ in 0..30 {
            packets.push(w.send(PING));
        }
        let stalled = packets.len();
        // The client finally acknowledges the replies it got.
        w.received = 11 * 7;
        packets.push(w.ack(false));
        // Two replicas with the same log agree at every index; a third
        // applies the same packets batched differently.
        let batched = |size: usize| -> Vec<LogEntry> {
            packets
                .chunks(size)
                .map(|c| LogEntry {
                    timestamp_ms: 5,
                    items: c.to_vec(),
                })
                .collect()
        };
        let run = |entries: &[LogEntry]| -> (ServiceGroup, Vec<Vec<u8>>) {
            let mut g = ServiceGroup::new(Box::new(tandem_service_kv::Kv::new()), config, 1);
            let out = entries
                .iter()
                .enumerate()
                .map(|(i, e)| writes(&g.apply(i as u64 + 1, e)))
                .collect();
            (g, out)
        };
        let singles = batched(1);
        let (a, out_a) = run(&singles);
        let (b, out_b) = run(&singles);
        assert_eq!(out_a, out_b);
        assert_eq!(a.state_hash(), b.state_hash());
        // Before the ACK: replies stop at the first over the limit (11 of
        // 30: the 11th request arrived with 70 bytes unacknowledged).
        let before: usize = out_a[..stalled].iter().map(Vec::len).sum();
        assert_eq!(before, 11 * 7);
        let (partial, _) = run(&singles[..stalled]);
        let info = partial.shadow().info(&w.key()).unwrap();
        assert_eq!(info.held_input, 19 * PING.len() as u64);
        assert_eq!(info.delivered, 11 * PING.len() as u64);
        assert_eq!(info.rcv_nxt, 2 + 30 * PING.len() as u32);
        // The pure ACK alone delivers the rest, in order.
        assert_eq!(out_a[stalled], b"+PONG\r\n".repeat(19));
        let info = a.shadow().info(&w.key()).unwrap();
        assert_eq!((info.held_input, info.output_total), (0, 30 * 7));
        assert_eq!(info.unacked, 19 * 7);
        // Batched by 4: the limit is soft by one entry's replies, the end
        // state is the same.
        let (c, out_c) = run(&batched(4));
        assert_eq!(out_c.concat(), out_a.concat());
        assert_eq!(c.shadow().info(&w.key()), a.shadow().info(&w.key()));
        assert_eq!(c.state_hash(), a.state_hash());
    }

    #[test]
    fn entries_survive_their_wire_encoding() {
        let entry = LogEntry {
            timestamp_ms: 7,
            items: vec![
                Item::Packet {
                    from_server: true,
                    bytes: vec![1, 2, 3],
                },
                Item::Timer {
                    id: 4,
                    generation: 5,
                },
            ],
        };
        let bytes = entry.encode();
        assert_eq!(LogEntry::decode(&bytes).unwrap(), entry);
        // Garbage in the log is refused by the decoder, not applied.
        assert!(LogEntry::decode(&[0xff; 3]).is_err());
    }
}
