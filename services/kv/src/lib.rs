//! kv: a Redis-protocol (RESP2) key-value store that runs as a tandem
//! replicated service, so `redis-cli` and `redis-benchmark` talk to a
//! replicated, failover-proof store unchanged.
//!
//! Deterministic by construction (docs/architecture.md §3.4): ordered collections only
//! (`SMEMBERS`, `HGETALL` answer in byte order), time is `ctx.now()`
//! (expiry), randomness is `ctx.rng()` (`SPOP`), and `INFO`/`CONFIG GET`
//! report nothing local to a process. Keys with an expiry are purged at the
//! start of every event whose log time has reached them, so every replica
//! forgets them at the same log position.
//!
//! Commands: see [`COMMANDS`]. Per connection, input is buffered until a
//! request is complete (pipelining and requests split across events both
//! work), bounded by the group's `max_request` (one argument by
//! `max_value`); a malformed frame gets an error reply and closes that
//! connection only.
//!
//! Bounds (docs/architecture.md §3.2, the group's [`tandem_core::sdk::Limits`]): each
//! reply goes to the context as soon as its command ran, so a pipeline
//! whose replies would pass `output_cap` stops at that command (the
//! connection is reset, nothing after it runs); while the group's
//! accounted memory is over `max_memory`, the commands Redis flags
//! `denyoom` get `-OOM command not allowed when used memory >
//! 'maxmemory'.` and change nothing. The keyspace's accounted size is kept
//! up to date by every command from data sizes ([`Service::memory_bytes`]),
//! never read from the allocator.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod commands;
mod db;
pub mod resp;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tandem_core::sdk::{ConnId, Context, Event, SdkError, Service};

pub use commands::COMMANDS;
use db::Db;
use resp::Parsed;

/// The Redis port the service is meant to be exposed on.
pub const PORT: u16 = 6379;

/// The key-value service.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kv {
    db: Db,
    /// Per open connection, its unfinished request.
    conns: BTreeMap<ConnId, Conn>,
    /// Bytes in every connection's `input` (derived, for the memory
    /// accounting; recomputed after a restore).
    #[serde(skip)]
    input_bytes: u64,
}

/// An open connection's input.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Conn {
    /// The bytes of an unfinished request. Part of the replicated state: a
    /// restored clone must finish the same request.
    input: Vec<u8>,
    /// Parser progress through `input` (a cache, rebuilt after a restore).
    #[serde(skip)]
    progress: resp::Progress,
}

/// Whether the connection goes on after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Close,
}

impl Kv {
    /// An empty store.
    pub fn new() -> Kv {
        Kv::default()
    }

    /// Number of keys (expired ones are gone already).
    pub fn len(&self) -> usize {
        self.db.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes a connection's state, keeping the input accounting right.
    fn take_conn(&mut self, conn: ConnId) -> Option<Conn> {
        let c = self.conns.remove(&conn)?;
        self.input_bytes = self.input_bytes.saturating_sub(c.input.len() as u64);
        Some(c)
    }

    fn on_data(&mut self, ctx: &mut Context, conn: ConnId, bytes: &[u8]) {
        // A connection we closed (or never saw) gets nothing more.
        let Some(mut c) = self.take_conn(conn) else {
            return;
        };
        let limits = *ctx.limits();
        let max_value = usize::try_from(limits.max_value).unwrap_or(usize::MAX);
        let max_request = usize::try_from(limits.max_request).unwrap_or(usize::MAX);
        let buf = &mut c.input;
        buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut pos = 0;
        let mut flow = Flow::Continue;
        while pos < buf.len() {
            match resp::parse_limited(&buf[pos..], &mut c.progress, max_value) {
                Parsed::Command(args, used) => {
                    pos += used;
                    flow = commands::execute(&mut self.db, ctx, &args, &mut out);
                    if ctx.overflowed(conn) {
                        return;
                    }
                    // Each reply goes out as it is made, so the output cap
                    // is checked after every command; past it the runtime
                    // resets the connection and the rest of its pipeline
                    // is never executed (a command that would have written
                    // after an overflowing read must not run).
                    if !ctx.try_send(conn, std::mem::take(&mut out)) {
                        return;
                    }
                    if flow == Flow::Close {
                        break;
                    }
                }
                Parsed::Nothing(used) => pos += used,
                Parsed::Incomplete => break,
                Parsed::Error(e) => {
                    resp::error(&mut out, &format!("ERR {e}"));
                    flow = Flow::Close;
                    break;
                }
            }
        }
        buf.drain(..pos);
        if flow == Flow::Continue && buf.len() > max_request {
            resp::error(&mut out, "ERR Protocol error: request too large");
            flow = Flow::Close;
        }
        if !ctx.try_send(conn, out) {
            return;
        }
        match flow {
            Flow::Continue => {
                self.input_bytes = self.input_bytes.saturating_add(c.input.len() as u64);
                self.conns.insert(conn, c);
            }
            Flow::Close => ctx.close(conn),
        }
    }
}

impl Service for Kv {
    fn on_event(&mut self, ctx: &mut Context, event: Event) {
        self.db.purge(ctx.now().0);
        match event {
            Event::Opened { conn, .. } => {
                self.conns.insert(conn, Conn::default());
            }
            Event::Data { conn, bytes } => self.on_data(ctx, conn, &bytes),
            Event::PeerClosed { conn } => {
                // Redis closes when the client does; pipelined replies to
                // complete requests were already sent.
                if self.take_conn(conn).is_some() {
                    ctx.close(conn);
                }
            }
            Event::Reset { conn } => {
                self.take_conn(conn);
            }
            Event::Timer { .. } => {}
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        // Sized first (a walk without copying), so the encoding is written
        // into one allocation instead of being copied at every doubling.
        // Encoding plain maps, vectors and floats cannot fail.
        let size = postcard::serialize_with_flavor(self, postcard::ser_flavors::Size::default())
            .unwrap_or(0);
        postcard::to_extend(self, Vec::with_capacity(size)).unwrap_or_default()
    }

    fn restore(bytes: &[u8]) -> Result<Self, SdkError> {
        let mut kv: Kv =
            postcard::from_bytes(bytes).map_err(|e| SdkError::Snapshot(e.to_string()))?;
        kv.db.check().map_err(SdkError::Snapshot)?;
        kv.db.reset_used();
        kv.input_bytes = kv.conns.values().map(|c| c.input.len() as u64).sum();
        Ok(kv)
    }

    /// The keyspace and every connection's unfinished request, hashed in
    /// place (the default would encode a whole snapshot first: slow for a
    /// big keyspace, and asked for by every `tandem status`).
    fn state_hash(&self) -> Option<u64> {
        let mut h = tandem_core::shadow::hash::Fnv64::new();
        self.db.hash_into(&mut h);
        h.u64(self.conns.len() as u64);
        for (id, c) in &self.conns {
            h.u64(id.0).u64(c.input.len() as u64).bytes(&c.input);
        }
        Some(h.finish())
    }

    /// The keyspace's accounted bytes plus every connection's unparsed
    /// input (each bounded by `max_request`).
    fn memory_bytes(&self) -> u64 {
        self.db.used().saturating_add(self.input_bytes)
    }
}
