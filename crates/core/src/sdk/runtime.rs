//! The runtime: applies events to a boxed service, contains its panics, and
//! keeps the bookkeeping replicas compare (connections, output offsets and
//! hashes, timers).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::{
    Action, ConnId, Context, Event, Limits, Millis, Rng, SdkError, Service, TimerId,
    CONNECTION_CHARGE,
};
use crate::shadow::hash::Fnv64;

/// The output bookkeeping of one open connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnOutput {
    /// The client's address.
    pub peer: SocketAddr,
    /// Bytes the service has sent so far (the next output stream offset).
    pub offset: u64,
    /// FNV-1a 64 of every byte sent so far, in order.
    pub hash: u64,
    /// The service closed its side.
    pub closed: bool,
    /// The client closed its side.
    pub peer_closed: bool,
    /// Output bytes the client has acknowledged (the host reports them,
    /// [`Runtime::output_acked`]); `offset - acked` is queued.
    pub acked: u64,
}

impl ConnOutput {
    /// Bytes sent and not yet acknowledged by the client.
    pub fn queued(&self) -> u64 {
        self.offset.saturating_sub(self.acked)
    }
}

/// The group's accounted memory against its budget
/// ([`Limits::max_memory`]), computed from data sizes only: the same on
/// every replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemoryUse {
    /// The service's own data ([`Service::memory_bytes`]).
    pub service: u64,
    /// Queued output of every open connection.
    pub output: u64,
    /// [`CONNECTION_CHARGE`] per connection the host reported.
    pub connections: u64,
    /// The sum.
    pub used: u64,
    /// The budget.
    pub limit: u64,
}

/// An armed timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerState {
    /// The only generation that will fire.
    pub generation: u64,
    /// When it is due.
    pub at: Millis,
}

/// Hosts one service: feeds it events in log order, turns what it records
/// into validated [`Action`]s, and keeps the replicated bookkeeping.
///
/// Deterministic: `BTreeMap`s only, no clock (time comes with each entry),
/// no threads, no randomness but the log-seeded [`Rng`].
pub struct Runtime {
    service: Box<dyn Service>,
    seed: u64,
    now: Millis,
    next_generation: u64,
    conns: BTreeMap<ConnId, ConnOutput>,
    timers: BTreeMap<TimerId, TimerState>,
    /// Output hashes of connections that are gone, folded in, so the state
    /// hash still covers every byte ever sent.
    retired: u64,
    panics: u64,
    /// Connections reset because a send would have passed the output cap.
    overflows: u64,
    /// The bounds (from the configuration every replica shares).
    limits: Limits,
    /// Sum of every open connection's queued output (derived).
    queued: u64,
    /// Connections the host holds (shadow TCP entries), charged to the
    /// memory budget; set by the host before it applies events.
    host_connections: u64,
    /// The entry being applied: its index and random stream.
    cursor: (u64, Rng),
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("seed", &self.seed)
            .field("now", &self.now)
            .field("conns", &self.conns.len())
            .field("timers", &self.timers.len())
            .field("panics", &self.panics)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// A runtime around `service`; `seed` is the log's random seed (fixed
    /// when the service's log is created, the same on every replica).
    pub fn new(service: Box<dyn Service>, seed: u64) -> Runtime {
        Runtime {
            service,
            seed,
            now: Millis(0),
            next_generation: 1,
            conns: BTreeMap::new(),
            timers: BTreeMap::new(),
            retired: FNV_BASIS,
            panics: 0,
            overflows: 0,
            limits: Limits::unbounded(),
            queued: 0,
            host_connections: 0,
            cursor: (0, Rng::for_entry(seed, 0)),
        }
    }

    /// Sets the bounds (every replica must use the same).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The bounds in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The client acknowledged `bytes` more of the connection's output (the
    /// host learns it from logged ACKs, in log order).
    pub fn output_acked(&mut self, conn: ConnId, bytes: u64) {
        if let Some(c) = self.conns.get_mut(&conn) {
            let n = bytes.min(c.queued());
            c.acked = c.acked.saturating_add(n);
            self.queued = self.queued.saturating_sub(n);
        }
    }

    /// How many connections the host holds (charged to the memory budget
    /// at [`CONNECTION_CHARGE`] each). The host sets it from replicated
    /// state (its shadow TCP table's size) before applying events.
    pub fn set_host_connections(&mut self, n: u64) {
        self.host_connections = n;
    }

    /// Connections reset because their output would have passed the cap.
    pub fn overflows(&self) -> u64 {
        self.overflows
    }

    /// The accounted memory against the budget.
    pub fn memory(&self) -> MemoryUse {
        let service = self.service.memory_bytes();
        let connections = self
            .host_connections
            .max(self.conns.len() as u64)
            .saturating_mul(CONNECTION_CHARGE);
        MemoryUse {
            service,
            output: self.queued,
            connections,
            used: service
                .saturating_add(self.queued)
                .saturating_add(connections),
            limit: self.limits.max_memory,
        }
    }

    /// Starts applying the entry at `index` with timestamp `timestamp`:
    /// sets log time and the entry's random stream for
    /// [`Runtime::apply_event`].
    pub fn begin_entry(&mut self, index: u64, timestamp: Millis) {
        // Time never goes backwards, even if a new primary's clock is behind.
        self.now = self.now.max(timestamp);
        self.cursor = (index, Rng::for_entry(self.seed, index));
    }

    /// Applies one event of the entry begun with [`Runtime::begin_entry`]
    /// and returns the actions to carry out, in order. The random stream
    /// continues across the events of one entry.
    pub fn apply_event(&mut self, event: Event) -> Vec<Action> {
        let (index, rng) = std::mem::replace(&mut self.cursor, (0, Rng::for_entry(0, 0)));
        let mut out = Vec::new();
        let rng = self.apply_one(index, rng, event, &mut out);
        self.cursor = (index, rng);
        out
    }

    /// Applies one event of the entry at `index` with timestamp `timestamp`.
    /// For an entry carrying several events use [`Runtime::apply_entry`], so
    /// the random stream continues across them rather than restarting.
    pub fn apply(&mut self, index: u64, timestamp: Millis, event: Event) -> Vec<Action> {
        self.apply_entry(index, timestamp, [event])
    }

    /// Applies the events of the entry at `index`, in order, and returns the
    /// actions to carry out, in order.
    pub fn apply_entry(
        &mut self,
        index: u64,
        timestamp: Millis,
        events: impl IntoIterator<Item = Event>,
    ) -> Vec<Action> {
        self.begin_entry(index, timestamp);
        let mut out = Vec::new();
        for event in events {
            out.extend(self.apply_event(event));
        }
        out
    }

    fn apply_one(&mut self, index: u64, rng: Rng, event: Event, out: &mut Vec<Action>) -> Rng {
        // Filter what the service may see, so it never hears of a connection
        // twice or after it is gone, and a timer fires once.
        match &event {
            Event::Opened { conn, peer } => {
                if self.conns.contains_key(conn) {
                    return rng;
                }
                self.conns.insert(
                    *conn,
                    ConnOutput {
                        peer: *peer,
                        offset: 0,
                        hash: FNV_BASIS,
                        closed: false,
                        peer_closed: false,
                        acked: 0,
                    },
                );
            }
            Event::Data { conn, bytes } => match self.conns.get(conn) {
                Some(c) if !c.peer_closed && !bytes.is_empty() => {}
                _ => return rng,
            },
            Event::PeerClosed { conn } => match self.conns.get_mut(conn) {
                Some(c) if !c.peer_closed => c.peer_closed = true,
                _ => return rng,
            },
            Event::Reset { conn } => {
                if !self.conns.contains_key(conn) {
                    return rng;
                }
                self.retire(*conn);
            }
            Event::Timer { id, generation } => match self.timers.get(id) {
                Some(t) if t.generation == *generation => {
                    self.timers.remove(id);
                }
                _ => return rng,
            },
        }
        let conn = event.conn();
        let (ok, rng, overflowed) = self.deliver(index, rng, event, out);
        let mut rng = rng;
        // Output past the cap: the connection is reset here, at the same
        // point on every replica, and the service forgets it.
        for conn in overflowed {
            if self.conns.contains_key(&conn) {
                self.overflows = self.overflows.wrapping_add(1);
                self.retire(conn);
                out.push(Action::Abort { conn });
                let (_, next, _) = self.deliver(index, rng, Event::Reset { conn }, out);
                rng = next;
            }
        }
        if !ok {
            self.panics = self.panics.wrapping_add(1);
            if let Some(conn) = conn {
                if self.conns.contains_key(&conn) {
                    self.retire(conn);
                    out.push(Action::Abort { conn });
                    // Let the service drop its per-connection state; a second
                    // panic here changes nothing more.
                    let (_, rng, _) = self.deliver(index, rng, Event::Reset { conn }, out);
                    return rng;
                }
            }
        }
        // Both sides closed: the connection is finished for the service.
        if let Some(conn) = conn {
            if matches!(self.conns.get(&conn), Some(c) if c.closed && c.peer_closed) {
                self.retire(conn);
            }
        }
        rng
    }

    /// Runs the service on one event, panics caught. Returns whether it
    /// returned normally (its actions are kept only then) and the
    /// connections whose output cap a send would have passed.
    fn deliver(
        &mut self,
        index: u64,
        rng: Rng,
        event: Event,
        out: &mut Vec<Action>,
    ) -> (bool, Rng, Vec<ConnId>) {
        let mut ctx = Context::new(index, self.now, rng, self.next_generation);
        ctx.limits = self.limits;
        ctx.other_memory = self
            .memory()
            .used
            .saturating_sub(self.service.memory_bytes());
        // Lend the output bookkeeping so every send is checked against the
        // cap as it is made (moved, not copied; given back below).
        ctx.outputs = std::mem::take(&mut self.conns);
        ctx.conn = event.conn();
        let service = &mut self.service;
        let result = catch_unwind(AssertUnwindSafe(|| service.on_event(&mut ctx, event)));
        self.conns = std::mem::take(&mut ctx.outputs);
        if result.is_err() {
            return (false, ctx.rng, Vec::new());
        }
        self.next_generation = ctx.next_generation;
        for action in ctx.actions.drain(..) {
            if let Some(action) = self.validate(action) {
                out.push(action);
            }
        }
        (true, ctx.rng, ctx.overflowed.into_iter().collect())
    }

    /// Applies an action to the bookkeeping; drops those that mean nothing
    /// (sends to unknown or closed connections, a second close, cancelling
    /// a timer that is not armed).
    fn validate(&mut self, action: Action) -> Option<Action> {
        match &action {
            Action::Send { conn, bytes } => {
                let c = self.conns.get_mut(conn).filter(|c| !c.closed)?;
                c.offset = c.offset.wrapping_add(bytes.len() as u64);
                c.hash = fnv1a(c.hash, bytes);
                self.queued = self.queued.saturating_add(bytes.len() as u64);
            }
            Action::Close { conn } => {
                let c = self.conns.get_mut(conn).filter(|c| !c.closed)?;
                c.closed = true;
            }
            Action::Abort { conn } => {
                self.conns.get(conn)?;
                self.retire(*conn);
            }
            Action::SetTimer { id, generation, at } => {
                self.timers.insert(
                    *id,
                    TimerState {
                        generation: *generation,
                        at: *at,
                    },
                );
            }
            Action::CancelTimer { id } => {
                self.timers.remove(id)?;
            }
        }
        Some(action)
    }

    fn retire(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.remove(&conn) {
            self.queued = self.queued.saturating_sub(c.queued());
            for v in [conn.0, c.offset, c.hash] {
                self.retired = fnv1a(self.retired, &v.to_le_bytes());
            }
        }
    }

    /// Timers due at `now` (log time), as (id, generation), in id order: the
    /// primary proposes one [`Event::Timer`] entry for each. Proposing one
    /// twice is harmless.
    pub fn due_timers(&self, now: Millis) -> Vec<(TimerId, u64)> {
        self.timers
            .iter()
            .filter(|(_, t)| t.at <= now)
            .map(|(id, t)| (*id, t.generation))
            .collect()
    }

    /// The armed timers.
    pub fn timers(&self) -> &BTreeMap<TimerId, TimerState> {
        &self.timers
    }

    /// The output bookkeeping of an open connection.
    pub fn output(&self, conn: ConnId) -> Option<&ConnOutput> {
        self.conns.get(&conn)
    }

    /// The open connections.
    pub fn connections(&self) -> &BTreeMap<ConnId, ConnOutput> {
        &self.conns
    }

    /// Log time as last applied.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// How many events made the service panic.
    pub fn panics(&self) -> u64 {
        self.panics
    }

    /// The hosted service.
    pub fn service(&self) -> &dyn Service {
        self.service.as_ref()
    }

    /// A hash of everything replicas must agree on: time, timer
    /// generations, every open connection's output offset and output hash,
    /// the output hashes of connections already gone, and (last, so that
    /// the rest can be hashed before it is known) the service's own hash.
    pub fn state_hash(&self) -> u64 {
        let service = match self.service.state_hash() {
            Some(hash) => hash,
            None => hash_service_bytes(&self.service.snapshot()),
        };
        let mut h = self.hash_before_service();
        h.u64(service);
        h.finish()
    }

    fn hash_before_service(&self) -> Fnv64 {
        let mut h = Fnv64::new();
        h.u64(self.seed)
            .u64(self.now.0)
            .u64(self.next_generation)
            .u64(self.panics)
            .u64(self.retired)
            .u64(self.overflows);
        for (id, t) in &self.timers {
            h.u64(id.0).u64(t.generation).u64(t.at.0);
        }
        for (id, c) in &self.conns {
            h.u64(id.0);
            hash_peer(&mut h, &c.peer);
            h.u64(c.offset)
                .u64(c.hash)
                .bool(c.closed)
                .bool(c.peer_closed)
                .u64(c.acked);
        }
        h
    }

    /// The runtime's state with the service's snapshot inside (docs/architecture.md §3.7:
    /// timers, time, output bookkeeping). A small fixed little-endian
    /// encoding, independent of any serialisation crate's version.
    pub fn snapshot(&self) -> Vec<u8> {
        let encoded = self.snapshot_taken().encode();
        let mut bytes = encoded.head;
        bytes.extend_from_slice(&encoded.service);
        bytes
    }

    /// [`Runtime::snapshot`]'s bytes with what [`Runtime::state_hash`]
    /// needs besides them, so that the hash (a pass over every byte of the
    /// service's state) can be computed on another thread.
    pub fn snapshot_taken(&self) -> TakenSnapshot {
        let mut w = Vec::new();
        put(&mut w, SNAPSHOT_VERSION);
        for v in [
            self.seed,
            self.now.0,
            self.next_generation,
            self.panics,
            self.retired,
            self.overflows,
        ] {
            put(&mut w, v);
        }
        put(&mut w, self.timers.len() as u64);
        for (id, t) in &self.timers {
            put(&mut w, id.0);
            put(&mut w, t.generation);
            put(&mut w, t.at.0);
        }
        put(&mut w, self.conns.len() as u64);
        for (id, c) in &self.conns {
            put(&mut w, id.0);
            put_addr(&mut w, &c.peer);
            put(&mut w, c.offset);
            put(&mut w, c.hash);
            put(&mut w, c.acked);
            w.push(u8::from(c.closed) | u8::from(c.peer_closed) << 1);
        }
        // A service that can defer its encoding hands over a cheap copy
        // now (copy-on-write state) and encodes it wherever `encode` runs;
        // the others encode here.
        let service = match self.service.snapshot_deferred() {
            Some(deferred) => ServiceSnapshot::Deferred(deferred),
            None => ServiceSnapshot::Encoded(self.service.snapshot()),
        };
        // A deferred service's hash comes from its copy, off the loop.
        let service_hash = match service {
            ServiceSnapshot::Encoded(_) => self.service.state_hash(),
            ServiceSnapshot::Deferred(_) => None,
        };
        TakenSnapshot {
            head: w,
            service,
            before_service: self.hash_before_service(),
            service_hash,
        }
    }

    /// Rebuilds a runtime from [`Runtime::snapshot`], restoring the service
    /// with `restore_service` (typically `|b| Ok(Box::new(MyService::restore(b)?))`).
    pub fn restore(
        bytes: &[u8],
        restore_service: impl FnOnce(&[u8]) -> Result<Box<dyn Service>, SdkError>,
    ) -> Result<Runtime, SdkError> {
        let mut r = Reader(bytes);
        if r.u64()? != SNAPSHOT_VERSION {
            return Err(SdkError::Snapshot(
                "unknown runtime snapshot version".into(),
            ));
        }
        let seed = r.u64()?;
        let now = Millis(r.u64()?);
        let next_generation = r.u64()?;
        let panics = r.u64()?;
        let retired = r.u64()?;
        let overflows = r.u64()?;
        let mut timers = BTreeMap::new();
        for _ in 0..r.u64()? {
            let id = TimerId(r.u64()?);
            let generation = r.u64()?;
            let at = Millis(r.u64()?);
            timers.insert(id, TimerState { generation, at });
        }
        let mut conns = BTreeMap::new();
        for _ in 0..r.u64()? {
            let id = ConnId(r.u64()?);
            let peer = r.addr()?;
            let offset = r.u64()?;
            let hash = r.u64()?;
            let acked = r.u64()?;
            if acked > offset {
                return Err(SdkError::Snapshot("acknowledged past the output".into()));
            }
            let flags = r.take(1)?.first().copied().unwrap_or(0);
            conns.insert(
                id,
                ConnOutput {
                    peer,
                    offset,
                    hash,
                    closed: flags & 1 != 0,
                    peer_closed: flags & 2 != 0,
                    acked,
                },
            );
        }
        let len = usize::try_from(r.u64()?).map_err(|_| short())?;
        let service = restore_service(r.take(len)?)?;
        if !r.0.is_empty() {
            return Err(SdkError::Snapshot("trailing bytes".into()));
        }
        let queued = conns
            .values()
            .fold(0u64, |sum, c: &ConnOutput| sum.saturating_add(c.queued()));
        Ok(Runtime {
            service,
            seed,
            now,
            next_generation,
            conns,
            timers,
            retired,
            panics,
            overflows,
            limits: Limits::unbounded(),
            queued,
            host_connections: 0,
            cursor: (0, Rng::for_entry(seed, 0)),
        })
    }
}

const SNAPSHOT_VERSION: u64 = 2;

/// FNV-1a 64's offset basis: the hash of nothing.
const FNV_BASIS: u64 = 0xcbf2_9ce4_8422_2325;

/// Continues an FNV-1a 64 hash `h` over `bytes` (the same function as
/// [`Fnv64`], kept as a plain `u64` so it can be stored and resumed).
fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Appends an address: a v4 flag, 16 bytes (v4 as mapped v6), the port.
pub(super) fn put_addr(w: &mut Vec<u8>, addr: &SocketAddr) {
    let ip = match addr.ip() {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    w.push(u8::from(addr.is_ipv4()));
    w.extend_from_slice(&ip);
    w.extend_from_slice(&addr.port().to_le_bytes());
}

/// Appends a `u64`, little-endian.
pub(super) fn put(w: &mut Vec<u8>, v: u64) {
    w.extend_from_slice(&v.to_le_bytes());
}

pub(super) fn short() -> SdkError {
    SdkError::Snapshot("truncated".into())
}

/// Reads what [`put`] and [`put_addr`] wrote.
pub(super) struct Reader<'a>(pub(super) &'a [u8]);

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], SdkError> {
        if self.0.len() < n {
            return Err(short());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub(super) fn u64(&mut self) -> Result<u64, SdkError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    pub(super) fn addr(&mut self) -> Result<SocketAddr, SdkError> {
        let v4 = self.take(1)? == [1];
        let mut ip = [0u8; 16];
        ip.copy_from_slice(self.take(16)?);
        let mut port = [0u8; 2];
        port.copy_from_slice(self.take(2)?);
        let v6 = std::net::Ipv6Addr::from(ip);
        let ip = match v6.to_ipv4_mapped() {
            Some(a) if v4 => IpAddr::V4(a),
            _ => IpAddr::V6(v6),
        };
        Ok(SocketAddr::new(ip, u16::from_le_bytes(port)))
    }
}

/// A runtime snapshot taken, whose service encoding and state hash may
/// still be to do ([`Runtime::snapshot_taken`]); it owns everything, so it
/// can be sent to another thread, where [`TakenSnapshot::encode`] runs.
pub struct TakenSnapshot {
    /// The runtime's part, without the service's length.
    head: Vec<u8>,
    service: ServiceSnapshot,
    before_service: Fnv64,
    service_hash: Option<u64>,
}

/// The service's part of a [`TakenSnapshot`].
enum ServiceSnapshot {
    Encoded(Vec<u8>),
    Deferred(super::DeferredSnapshot),
}

impl std::fmt::Debug for TakenSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TakenSnapshot")
            .field("head", &self.head.len())
            .field(
                "service",
                &match &self.service {
                    ServiceSnapshot::Encoded(b) => format!("{} bytes", b.len()),
                    ServiceSnapshot::Deferred(_) => "deferred".to_string(),
                },
            )
            .finish()
    }
}

/// A [`TakenSnapshot`] encoded: [`Runtime::snapshot`]'s bytes are `head`
/// followed by `service`.
#[derive(Debug, Clone)]
pub struct EncodedSnapshot {
    /// The runtime's part, ending with the service's length.
    pub head: Vec<u8>,
    /// The service's own snapshot ([`Service::snapshot`]'s bytes).
    pub service: Vec<u8>,
    /// [`Runtime::state_hash`] of the runtime the snapshot was taken from.
    pub state_hash: u64,
}

impl EncodedSnapshot {
    /// Length of [`Runtime::snapshot`]'s bytes.
    pub fn len(&self) -> usize {
        self.head.len() + self.service.len()
    }

    /// Never true (the head is always there); for completeness.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TakenSnapshot {
    /// Bytes already copied (what the copy pins until encoded); a deferred
    /// service's copy shares its data with the live state and counts 0.
    pub fn len(&self) -> usize {
        self.head.len()
            + match &self.service {
                ServiceSnapshot::Encoded(b) => b.len(),
                ServiceSnapshot::Deferred(_) => 0,
            }
    }

    /// Never true (the head is always there); for completeness.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Encodes the service's part if that was deferred, and computes the
    /// state hash (a pass over every byte for a service that keeps no
    /// hash of its own).
    pub fn encode(self) -> EncodedSnapshot {
        let (service, service_hash) = match self.service {
            ServiceSnapshot::Encoded(bytes) => (bytes, self.service_hash),
            ServiceSnapshot::Deferred(encode) => {
                let out = encode();
                (out.bytes, out.state_hash)
            }
        };
        let hash = service_hash.unwrap_or_else(|| hash_service_bytes(&service));
        let mut h = self.before_service;
        h.u64(hash);
        let mut head = self.head;
        put(&mut head, service.len() as u64);
        EncodedSnapshot {
            head,
            service,
            state_hash: h.finish(),
        }
    }
}

/// The hash of a service's snapshot bytes, for a service that keeps no
/// hash of its own. It walks the whole state, so it takes eight bytes per
/// step (FNV-1a's byte loop costs about 4 cycles a byte: 0.4 s for
/// 100 MiB, longer than an election timeout). Each step is a bijection of
/// the running value for a given word, so two inputs of the same length
/// that differ in one word always hash differently.
pub fn hash_service_bytes(bytes: &[u8]) -> u64 {
    const MUL: u64 = 0x9E37_79B9_7F4A_7C15;
    let step = |h: u64, w: u64| (h ^ w).wrapping_mul(MUL).rotate_left(29);
    let mut h = 0xcbf2_9ce4_8422_2325 ^ bytes.len() as u64;
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        h = step(h, u64::from_le_bytes(w));
    }
    for &b in words.remainder() {
        h = step(h, u64::from(b));
    }
    h
}

fn hash_peer(h: &mut Fnv64, peer: &SocketAddr) {
    match peer.ip() {
        IpAddr::V4(a) => h.bytes(&[4]).bytes(&a.octets()),
        IpAddr::V6(a) => h.bytes(&[6]).bytes(&a.octets()),
    };
    h.bytes(&peer.port().to_le_bytes());
}

#[cfg(test)]
mod hash_tests {
    use super::hash_service_bytes;

    /// Flipping any one bit of the state, or adding a byte, changes the
    /// hash (the property the replicas' comparison relies on).
    #[test]
    fn every_single_bit_flip_changes_the_service_hash() {
        let base: Vec<u8> = (0..77u32).map(|i| (i * 31 + 7) as u8).collect();
        let h = hash_service_bytes(&base);
        for byte in 0..base.len() {
            for bit in 0..8 {
                let mut flipped = base.clone();
                flipped[byte] ^= 1 << bit;
                assert_ne!(hash_service_bytes(&flipped), h, "byte {byte} bit {bit}");
            }
        }
        let mut longer = base.clone();
        longer.push(0);
        assert_ne!(hash_service_bytes(&longer), h);
        assert_ne!(hash_service_bytes(&[]), hash_service_bytes(&[0]));
    }
}
