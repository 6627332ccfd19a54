//! The service SDK: how an application runs as a deterministic replicated
//! state machine inside tandem.
//!
//! Every replica applies the same committed log to the same [`Service`]; the
//! log's client packets become [`Event`]s (through shadow TCP), the service
//! answers through a [`Context`] that records [`Action`]s as values, and the
//! [`Runtime`] keeps the bookkeeping every replica must agree on: open
//! connections, per-connection output offsets and output hashes, timers, and
//! a [`Runtime::state_hash`] replicas compare at equal log indexes.
//! [`Connections`] bridges shadow TCP to it: ids in log order, shadow
//! events in, shadow keys for the actions out.
//!
//! # The determinism contract (docs/architecture.md §3.4)
//!
//! Tandem never gates output: the primary sends a service's bytes as soon as
//! they are computed, and after a failover a clone resumes the same TCP
//! streams at the same offsets. That is only correct if every replica
//! computes **byte-identical output** from the same log prefix. So a
//! service must obey these rules:
//!
//! - **State changes only in [`Service::on_event`].** No threads, no I/O, no
//!   globals, no interior mutability shared with anything outside.
//! - **Time is [`Context::now`]**: the entry's timestamp, clamped so it never
//!   goes backwards (max of the previous `now` and the entry's timestamp),
//!   also across a change of primary. Never read a clock.
//! - **Randomness is [`Context::rng`]**, seeded from (log seed, entry index).
//!   Never use `rand::thread_rng`, `RandomState` or addresses of allocations.
//! - **Timers** are requested with [`Context::set_timer`] and fire as log
//!   entries ([`Event::Timer`]); each carries (id, generation), so a timer
//!   proposed twice (by an old and a new primary) fires once, and a
//!   re-armed or cancelled timer's stale generation is ignored.
//! - **No iteration over `std::collections::HashMap`/`HashSet`**: their
//!   order differs per process. Use `BTreeMap`/`BTreeSet` (or a fixed-seed
//!   hasher). Clippy's `disallowed-types` (the repository's `clippy.toml`)
//!   enforces this.
//! - **Nothing process-local reaches a reply**: no pid, hostname, local
//!   clock, memory figures, pointer values.
//! - **Panics are contained.** If `on_event` panics, the runtime catches it,
//!   discards the actions recorded during that event, aborts that event's
//!   connection ([`Action::Abort`]) and tells the service with
//!   [`Event::Reset`]. The service's state is whatever it was when it
//!   panicked: because the code is deterministic, that is the same partial
//!   state on every replica, so the replicas stay in agreement (never a dead
//!   cluster, never divergent state). Write `on_event` so that a panic
//!   half-way leaves the state usable. This needs `panic = "unwind"` (the
//!   default; never `abort` in a profile that builds a node), and it cannot
//!   help with a service that loops forever or exhausts memory.
//! - **Bounds are replicated decisions.** [`Limits`] (the output cap, the
//!   memory budget, the request bounds) come from the configuration every
//!   replica shares; the runtime checks each [`Context::send`] against the
//!   connection's output not yet acknowledged by logged ACKs, and the
//!   memory figure a service compares with the budget is computed from
//!   data sizes ([`Service::memory_bytes`]), never from the allocator.
//! - **[`Service::snapshot`] / [`Service::restore`] round-trip exactly**
//!   (including per-connection buffers): a clone seeded from a snapshot must
//!   answer exactly as one that applied the whole log, and
//!   [`Service::state_hash`] must be equal after a round trip.
//!
//! # A complete small service
//!
//! A line-reversing service: each `\n`-terminated line comes back reversed;
//! it closes its side when the client does. Its only state is the partial
//! line of each connection, kept in a `BTreeMap`.
//!
//! ```
//! use std::collections::BTreeMap;
//! use tandem_core::sdk::{ConnId, Context, Event, Runtime, Service, SdkError, Action};
//! use tandem_core::shadow::Millis;
//!
//! #[derive(Default)]
//! struct Reverse {
//!     partial: BTreeMap<ConnId, Vec<u8>>,
//! }
//!
//! impl Service for Reverse {
//!     fn on_event(&mut self, ctx: &mut Context, event: Event) {
//!         match event {
//!             Event::Opened { conn, .. } => {
//!                 self.partial.insert(conn, Vec::new());
//!             }
//!             Event::Data { conn, bytes } => {
//!                 let buf = self.partial.entry(conn).or_default();
//!                 buf.extend_from_slice(&bytes);
//!                 while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
//!                     let mut line: Vec<u8> = buf.drain(..=nl).collect();
//!                     line.pop();
//!                     line.reverse();
//!                     line.push(b'\n');
//!                     ctx.send(conn, line);
//!                 }
//!             }
//!             Event::PeerClosed { conn } => {
//!                 self.partial.remove(&conn);
//!                 ctx.close(conn);
//!             }
//!             Event::Reset { conn } => {
//!                 self.partial.remove(&conn);
//!             }
//!             Event::Timer { .. } => {}
//!         }
//!     }
//!
//!     fn snapshot(&self) -> Vec<u8> {
//!         // A tiny hand-written encoding: (conn, len, bytes)*.
//!         let mut out = Vec::new();
//!         for (conn, buf) in &self.partial {
//!             out.extend_from_slice(&conn.0.to_le_bytes());
//!             out.extend_from_slice(&(buf.len() as u64).to_le_bytes());
//!             out.extend_from_slice(buf);
//!         }
//!         out
//!     }
//!
//!     fn restore(mut bytes: &[u8]) -> Result<Self, SdkError> {
//!         let mut partial = BTreeMap::new();
//!         let mut take = |n: usize| -> Result<Vec<u8>, SdkError> {
//!             if bytes.len() < n {
//!                 return Err(SdkError::Snapshot("truncated".into()));
//!             }
//!             let (head, rest) = bytes.split_at(n);
//!             bytes = rest;
//!             Ok(head.to_vec())
//!         };
//!         loop {
//!             let Ok(conn) = take(8) else { break };
//!             let conn = u64::from_le_bytes(conn.try_into().unwrap());
//!             let len = u64::from_le_bytes(take(8)?.try_into().unwrap());
//!             partial.insert(ConnId(conn), take(len as usize)?);
//!         }
//!         Ok(Reverse { partial })
//!     }
//! }
//!
//! // Two replicas fed the same events compute the same actions and hashes.
//! let mut a = Runtime::new(Box::new(Reverse::default()), 7);
//! let mut b = Runtime::new(Box::new(Reverse::default()), 7);
//! let peer = "10.0.0.2:40000".parse().unwrap();
//! let events = [
//!     Event::Opened { conn: ConnId(1), peer },
//!     Event::Data { conn: ConnId(1), bytes: b"hel".to_vec() },
//!     Event::Data { conn: ConnId(1), bytes: b"lo\n".to_vec() },
//! ];
//! for (i, e) in events.into_iter().enumerate() {
//!     let x = a.apply(i as u64 + 1, Millis(1_000), e.clone());
//!     let y = b.apply(i as u64 + 1, Millis(1_000), e);
//!     assert_eq!(x, y);
//! }
//! assert_eq!(a.state_hash(), b.state_hash());
//! assert_eq!(a.output(ConnId(1)).unwrap().offset, 6); // "olleh\n"
//! ```

#![deny(missing_docs)]
// Apply must never panic on its own account (only the service may, and that
// is caught): no unwrap, expect, panic or unchecked indexing outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable,
        clippy::todo
    )
)]

pub mod conns;
pub mod rng;
mod runtime;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

pub use crate::shadow::Millis;
pub use conns::Connections;
pub use rng::Rng;
pub use runtime::{ConnOutput, EncodedSnapshot, MemoryUse, Runtime, TakenSnapshot, TimerState};

/// A service's snapshot to be encoded later, on another thread (see
/// [`Service::snapshot_deferred`]).
pub type DeferredSnapshot = Box<dyn FnOnce() -> DeferredBytes + Send>;

/// What a [`DeferredSnapshot`] gives when called: the service's
/// [`Service::snapshot`] bytes and [`Service::state_hash`] of the state it
/// copied (so that hashing a large state happens off the event loop too).
pub struct DeferredBytes {
    /// [`Service::snapshot`]'s bytes of the copied state.
    pub bytes: Vec<u8>,
    /// [`Service::state_hash`] of the copied state.
    pub state_hash: Option<u64>,
}

/// A connection's deterministic identity: assigned by the host in log order
/// (the n-th connection opened in the log), never reused, so it is the same
/// on every replica whatever ports or sockets the primary used.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct ConnId(pub u64);

/// A timer's identity, chosen by the service. Setting a timer whose id is
/// already armed re-arms it (the old generation will be ignored).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct TimerId(pub u64);

/// What happened, as every replica sees it at the same log position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A client connection completed its handshake.
    Opened {
        /// The new connection.
        conn: ConnId,
        /// The client's address (as logged; the same on every replica).
        peer: SocketAddr,
    },
    /// Client bytes, next in the stream. Framing is arbitrary: one request
    /// may be split across events and one event may carry many requests.
    Data {
        /// The connection.
        conn: ConnId,
        /// The bytes, each delivered exactly once, in order.
        bytes: Vec<u8>,
    },
    /// The client sent FIN after all the bytes delivered so far.
    PeerClosed {
        /// The connection.
        conn: ConnId,
    },
    /// The connection is gone (client RST, the kernel gave up on the
    /// client, or the service panicked on it). Forget it; sends to it are
    /// dropped.
    Reset {
        /// The connection.
        conn: ConnId,
    },
    /// A timer set with [`Context::set_timer`] fired. Delivered at most once
    /// per (id, generation).
    Timer {
        /// The timer.
        id: TimerId,
        /// The generation [`Context::set_timer`] returned.
        generation: u64,
    },
}

impl Event {
    /// The connection the event concerns, if any.
    pub fn conn(&self) -> Option<ConnId> {
        match self {
            Event::Opened { conn, .. }
            | Event::Data { conn, .. }
            | Event::PeerClosed { conn }
            | Event::Reset { conn } => Some(*conn),
            Event::Timer { .. } => None,
        }
    }
}

/// What the service asked for, as a value. On the primary the host carries
/// actions out on real sockets; on clones they only update bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Append bytes to the connection's output stream.
    Send {
        /// The connection.
        conn: ConnId,
        /// The bytes (consecutive sends to one connection are coalesced).
        bytes: Vec<u8>,
    },
    /// Close the service's side after the output sent so far
    /// (`shutdown(SHUT_WR)`, a FIN).
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Abort the connection (a RST): after a panic in the service, or when
    /// the service asks for it.
    Abort {
        /// The connection.
        conn: ConnId,
    },
    /// Arm a timer: the host proposes [`Event::Timer`] once `at` has passed.
    SetTimer {
        /// The timer.
        id: TimerId,
        /// Its generation (only this one fires).
        generation: u64,
        /// When it is due, in log time.
        at: Millis,
    },
    /// Disarm a timer.
    CancelTimer {
        /// The timer.
        id: TimerId,
    },
}

/// Errors of the SDK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdkError {
    /// A snapshot could not be decoded.
    #[error("bad snapshot: {0}")]
    Snapshot(String),
}

/// The default [`Limits::output_cap`]: 32 MiB of queued output per
/// connection. Why this much: the input throttle
/// ([`crate::shadow::ShadowConfig::output_limit`], 4 MiB) stops delivering a
/// connection's requests while more than that is unread, so a client that
/// sends one request at a time never queues more than 4 MiB plus one reply,
/// and kv's largest reply to one key (a 16 MiB value) fits twice over. Only a
/// client that pipelines, in one go, requests whose replies add up to more
/// than 32 MiB without reading them reaches it — the pattern Redis'
/// `client-output-buffer-limit` exists for.
pub const DEFAULT_OUTPUT_CAP: u64 = 32 * 1024 * 1024;

/// The default [`Limits::max_memory`]: 2 GiB of accounted memory per
/// service group (service data + connections + queued output).
pub const DEFAULT_MAX_MEMORY: u64 = 2 * 1024 * 1024 * 1024;

/// The default [`Limits::max_request`]: 32 MiB of one connection's input
/// buffered unparsed (an unfinished request, or pipelined requests not yet
/// processed).
pub const DEFAULT_MAX_REQUEST: u64 = 32 * 1024 * 1024;

/// The default [`Limits::max_value`]: 16 MiB, the largest single argument
/// (a Redis bulk string) a request may carry.
pub const DEFAULT_MAX_VALUE: u64 = 16 * 1024 * 1024;

/// What every connection charges to the memory budget besides its queued
/// output: its shadow TCP entry, the service's per-connection state and its
/// share of the runtime's bookkeeping (a stated constant, so the figure is
/// computed from counts, never from the allocator).
pub const CONNECTION_CHARGE: u64 = 4096;

/// The bounds a service group applies while it applies the log. They decide
/// what clients see (a connection reset, an error reply), so every replica
/// must use the same values: they live in one struct (comparable and
/// hashable) next to [`crate::shadow::ShadowConfig`], and nothing in them is
/// read from the local machine during apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Hard cap on one connection's queued output (bytes the service sent
    /// that the client has not acknowledged, sent or not yet sent), checked
    /// at every [`Context::send`]. A send that would pass it is refused, the
    /// connection is reset (the client sees a RST: Redis'
    /// `client-output-buffer-limit` closes the connection the same way), the
    /// service hears [`Event::Reset`], and the rest of that entry's input
    /// for the connection is discarded. Default [`DEFAULT_OUTPUT_CAP`];
    /// `u64::MAX` turns it off.
    pub output_cap: u64,
    /// Group-wide memory budget, in accounted bytes: the service's own data
    /// ([`Service::memory_bytes`]) + [`CONNECTION_CHARGE`] per connection +
    /// every connection's queued output. Once the figure is over the budget
    /// the service refuses what would grow it (kv: writes get
    /// `-OOM command not allowed when used memory > 'maxmemory'.`; reads and
    /// deletes still work). Default [`DEFAULT_MAX_MEMORY`]; `u64::MAX` turns
    /// it off.
    pub max_memory: u64,
    /// Most input bytes one connection may have buffered unparsed (its
    /// pipeline depth, and the largest request). Past it the service
    /// replies with an error and closes the connection (kv:
    /// `-ERR Protocol error: request too large`). Default
    /// [`DEFAULT_MAX_REQUEST`].
    pub max_request: u64,
    /// Largest single argument of a request (kv: a bulk string). Past it
    /// the service replies with an error and closes the connection (kv:
    /// `-ERR Protocol error: invalid bulk length`). Default
    /// [`DEFAULT_MAX_VALUE`].
    pub max_value: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            output_cap: DEFAULT_OUTPUT_CAP,
            max_memory: DEFAULT_MAX_MEMORY,
            max_request: DEFAULT_MAX_REQUEST,
            max_value: DEFAULT_MAX_VALUE,
        }
    }
}

impl Limits {
    /// No output cap and no memory budget; the request bounds at their
    /// defaults (what a runtime or context applies until told otherwise).
    pub fn unbounded() -> Limits {
        Limits {
            output_cap: u64::MAX,
            max_memory: u64::MAX,
            ..Limits::default()
        }
    }

    /// Checks the values make sense together; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.output_cap < 64 * 1024 {
            return Err(format!(
                "output_cap: {} bytes is below 65536 (a few replies would reset connections)",
                self.output_cap
            ));
        }
        if self.max_value < 1024 || self.max_request < self.max_value {
            return Err(format!(
                "max_value {} must be at least 1024 and at most max_request {}",
                self.max_value, self.max_request
            ));
        }
        if self.max_memory < 1024 * 1024 {
            return Err(format!(
                "max_memory: {} bytes is below 1 MiB",
                self.max_memory
            ));
        }
        Ok(())
    }

    /// A hash of the values, for comparing configurations across nodes.
    pub fn hash(&self) -> u64 {
        let mut h = crate::shadow::hash::Fnv64::new();
        h.u64(self.output_cap)
            .u64(self.max_memory)
            .u64(self.max_request)
            .u64(self.max_value);
        h.finish()
    }
}

/// The service's view of the replicated world while it handles one event:
/// time, randomness, the bounds, and the actions it records.
///
/// Everything recorded is kept only if `on_event` returns normally; after a
/// panic it is discarded (see the module docs).
#[derive(Debug)]
pub struct Context {
    now: Millis,
    index: u64,
    rng: Rng,
    actions: Vec<Action>,
    next_generation: u64,
    limits: Limits,
    /// The runtime's output bookkeeping, lent for the event (empty when the
    /// context was made without a runtime: then no cap applies).
    outputs: BTreeMap<ConnId, ConnOutput>,
    /// Bytes recorded for each connection during this event.
    sent: BTreeMap<ConnId, u64>,
    /// Connections whose output cap a send would have passed.
    overflowed: BTreeSet<ConnId>,
    /// Accounted memory that is not the service's own data: connections
    /// and queued output, including what this event sent.
    other_memory: u64,
    /// The connection of the event being handled.
    conn: Option<ConnId>,
}

/// Consecutive sends to one connection are merged into one action while the
/// result stays under this many bytes.
const COALESCE_BELOW: usize = 64 * 1024;

impl Context {
    /// A context at log `index`, time `now`, with the entry's generator and
    /// the next timer generation to hand out, and no bounds. Used by
    /// [`Runtime`]; public so a service can be unit-tested without one.
    pub fn new(index: u64, now: Millis, rng: Rng, next_generation: u64) -> Context {
        Context {
            now,
            index,
            rng,
            actions: Vec::new(),
            next_generation,
            limits: Limits::unbounded(),
            outputs: BTreeMap::new(),
            sent: BTreeMap::new(),
            overflowed: BTreeSet::new(),
            other_memory: 0,
            conn: None,
        }
    }

    /// Sets the bounds and the memory already used outside the service
    /// (for testing a service directly).
    pub fn with_limits(mut self, limits: Limits, other_memory: u64) -> Context {
        self.limits = limits;
        self.other_memory = other_memory;
        self
    }

    /// Log time: never goes backwards, the same on every replica.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// The index of the log entry being applied.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The entry's random generator (seeded from the log seed and the
    /// entry's index; its draws continue across the events of one entry).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// The bounds in force (the same on every replica).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Appends `bytes` to the connection's output. If they would take the
    /// connection's queued output past [`Limits::output_cap`] they are
    /// refused, with everything this event sent it, and the runtime resets
    /// the connection after the event; [`Context::overflowed`] then says
    /// so, and the service should stop working for it (kv stops processing
    /// that connection's pipeline). [`Context::try_send`] returns that
    /// verdict directly.
    pub fn send(&mut self, conn: ConnId, bytes: impl Into<Vec<u8>>) {
        self.try_send(conn, bytes);
    }

    /// [`Context::send`], returning false if the bytes were refused by the
    /// output cap (now or earlier in this event). Sends to a connection
    /// that is not open are dropped later and return true here.
    pub fn try_send(&mut self, conn: ConnId, bytes: impl Into<Vec<u8>>) -> bool {
        if self.overflowed.contains(&conn) {
            return false;
        }
        let bytes = bytes.into();
        if bytes.is_empty() {
            return true;
        }
        let len = bytes.len() as u64;
        if !self.reserve(conn, len) {
            return false;
        }
        *self.sent.entry(conn).or_insert(0) += len;
        self.other_memory = self.other_memory.saturating_add(len);
        // Coalesce with a directly preceding small send to the same
        // connection: a pipelined burst of short replies becomes one action
        // (and one write); big replies move as they are, never copied.
        if let Some(Action::Send {
            conn: last,
            bytes: prev,
        }) = self.actions.last_mut()
        {
            if *last == conn && prev.len() + bytes.len() <= COALESCE_BELOW {
                prev.extend_from_slice(&bytes);
                return true;
            }
        }
        self.actions.push(Action::Send { conn, bytes });
        true
    }

    /// Checks that `bytes` more output fit under the connection's
    /// [`Limits::output_cap`] before the service builds them (a big reply
    /// need not be made only to be refused). False means they do not: the
    /// connection is then treated exactly as after a refused
    /// [`Context::try_send`] (reset after the event).
    pub fn reserve(&mut self, conn: ConnId, bytes: u64) -> bool {
        if self.overflowed.contains(&conn) {
            return false;
        }
        if let Some(c) = self.outputs.get(&conn) {
            let queued = c
                .queued()
                .saturating_add(self.sent.get(&conn).copied().unwrap_or(0));
            if queued.saturating_add(bytes) > self.limits.output_cap {
                self.overflowed.insert(conn);
                // What this event queued for it goes nowhere: the
                // connection is reset.
                self.actions
                    .retain(|a| !matches!(a, Action::Send { conn: c, .. } if *c == conn));
                self.sent.remove(&conn);
                return false;
            }
        }
        true
    }

    /// The connection of the event being handled, if it has one (so code
    /// deep in a service can [`Context::reserve`] room for its reply).
    pub fn conn(&self) -> Option<ConnId> {
        self.conn
    }

    /// How many more bytes the connection's output may take before
    /// [`Limits::output_cap`] (`u64::MAX` when no cap is known for it).
    pub fn output_room(&self, conn: ConnId) -> u64 {
        if self.overflowed.contains(&conn) {
            return 0;
        }
        match self.outputs.get(&conn) {
            Some(c) => self.limits.output_cap.saturating_sub(
                c.queued()
                    .saturating_add(self.sent.get(&conn).copied().unwrap_or(0)),
            ),
            None => u64::MAX,
        }
    }

    /// Whether a send to the connection was refused by the output cap in
    /// this event (it will be reset).
    pub fn overflowed(&self, conn: ConnId) -> bool {
        self.overflowed.contains(&conn)
    }

    /// The group's accounted memory if the service's own data takes
    /// `service_bytes` (connections and queued output, including this
    /// event's sends, are added).
    pub fn memory_used(&self, service_bytes: u64) -> u64 {
        service_bytes.saturating_add(self.other_memory)
    }

    /// Whether the group is over its memory budget ([`Limits::max_memory`])
    /// when the service's own data takes `service_bytes`: the service
    /// should then refuse what would grow its state.
    pub fn over_memory(&self, service_bytes: u64) -> bool {
        self.memory_used(service_bytes) > self.limits.max_memory
    }

    /// Closes the service's side of the connection after what was sent.
    pub fn close(&mut self, conn: ConnId) {
        self.actions.push(Action::Close { conn });
    }

    /// Aborts the connection (RST).
    pub fn abort(&mut self, conn: ConnId) {
        self.actions.push(Action::Abort { conn });
    }

    /// Arms (or re-arms) timer `id` to fire at `at`; returns the generation
    /// that [`Event::Timer`] will carry. A re-armed timer's earlier
    /// generation never fires.
    pub fn set_timer(&mut self, id: TimerId, at: Millis) -> u64 {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        self.actions.push(Action::SetTimer { id, generation, at });
        generation
    }

    /// Disarms timer `id` (nothing happens if it is not armed).
    pub fn cancel_timer(&mut self, id: TimerId) {
        self.actions.push(Action::CancelTimer { id });
    }

    /// The actions recorded so far.
    pub fn actions(&self) -> &[Action] {
        &self.actions
    }

    /// Takes the recorded actions (for tests driving a service directly).
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }
}

/// A replicated application. Implementations must follow the determinism
/// contract of the module docs.
///
/// The trait is dyn-compatible: the [`Runtime`] holds a `Box<dyn Service>`.
pub trait Service: Send + RestoreInPlace {
    /// Handles one event, recording actions in `ctx`.
    fn on_event(&mut self, ctx: &mut Context, event: Event);

    /// The complete state (including per-connection buffers), encoded so
    /// that [`Service::restore`] rebuilds an identical service.
    fn snapshot(&self) -> Vec<u8>;

    /// Rebuilds a service from [`Service::snapshot`]'s bytes.
    fn restore(bytes: &[u8]) -> Result<Self, SdkError>
    where
        Self: Sized;

    /// For a service whose state is copy-on-write: a cheap copy of it now,
    /// which returns [`Service::snapshot`]'s bytes and
    /// [`Service::state_hash`] when called — on another thread, while the
    /// live state goes on changing. The node
    /// then holds its event loop up for this copy only, not for the
    /// encoding of the whole state. The default, `None`: the runtime calls
    /// [`Service::snapshot`] at once.
    fn snapshot_deferred(&self) -> Option<DeferredSnapshot> {
        None
    }

    /// A hash of the state, equal on replicas in the same state, if the
    /// service keeps a cheap one. The default, `None`, lets the runtime
    /// hash [`Service::snapshot`]'s bytes (FNV-1a 64): always correct, but
    /// it costs a full encoding (when a snapshot is taken, the hashing is
    /// done with the encoding's bytes, off the node's event loop).
    fn state_hash(&self) -> Option<u64> {
        None
    }

    /// The service's own data, in accounted bytes, for the memory budget
    /// ([`Limits::max_memory`]). Must be computed from data sizes (lengths
    /// and counts times stated constants), never from the allocator or the
    /// process, so every replica gets the same figure. The default, 0,
    /// leaves the service's data out of the budget.
    fn memory_bytes(&self) -> u64 {
        0
    }
}

/// Restoring a service through a trait object: implemented for every
/// [`Service`] (never implement it yourself). A fresh `Box<dyn Service>` of
/// the right kind can take a snapshot's state without its caller naming the
/// concrete type (`ServiceGroup::restore` in the node does this).
pub trait RestoreInPlace {
    /// Replaces `self` with [`Service::restore`]'s result; on error `self`
    /// is left as it was.
    fn restore_in_place(&mut self, bytes: &[u8]) -> Result<(), SdkError>;
}

impl<S: Service> RestoreInPlace for S {
    fn restore_in_place(&mut self, bytes: &[u8]) -> Result<(), SdkError> {
        *self = S::restore(bytes)?;
        Ok(())
    }
}

/// Restores a service of type `S` as a boxed trait object: the function
/// [`Runtime::restore`] wants, e.g. `Runtime::restore(bytes, restore_boxed::<Kv>)`.
pub fn restore_boxed<S: Service + 'static>(bytes: &[u8]) -> Result<Box<dyn Service>, SdkError> {
    Ok(Box::new(S::restore(bytes)?))
}
