//! kv: a Redis-protocol (RESP2 and RESP3) key-value store that runs as a
//! tandem replicated service, so `redis-cli`, `redis-benchmark` and
//! redis-py with its default settings talk to a replicated, failover-proof
//! store unchanged.
//!
//! Deterministic by construction (docs/architecture.md §3.4): ordered collections only
//! (`SMEMBERS`, `HGETALL` answer in byte order), time is `ctx.now()`
//! (expiry, `TIME`, `CLIENT LIST` ages), randomness is `ctx.rng()` (`SPOP`,
//! `RANDOMKEY`, `SRANDMEMBER`), and `INFO`/`CONFIG GET` report nothing local
//! to a process. Keys with an expiry are purged at the start of every event
//! whose log time has reached them, so every replica forgets them at the
//! same log position.
//!
//! Commands: see [`COMMANDS`] (the supported-command list). Per connection:
//! the protocol (`HELLO 2|3`), the database (`SELECT 0`–`15`), the
//! authentication state (`AUTH`, `requirepass`), its name and library
//! (`CLIENT SETNAME/SETINFO`), a transaction under way (`MULTI`), watched
//! keys (`WATCH`) and subscriptions (`SUBSCRIBE`/`PSUBSCRIBE`) — all part
//! of the replicated state, so a clone that takes over after a failover
//! continues every connection exactly where it was. Input is buffered until
//! a request is complete (pipelining and requests split across events both
//! work), bounded by the group's `max_request` (one argument by
//! `max_value`); a malformed frame gets an error reply and closes that
//! connection only.
//!
//! Bounds (docs/architecture.md §3.2, the group's [`tandem_core::sdk::Limits`]): each
//! reply goes to the context as soon as its command ran, so a pipeline
//! whose replies would pass `output_cap` stops at that command (the
//! connection is reset, nothing after it runs); a subscriber that does not
//! read its messages is reset the same way once they pass `output_cap`;
//! while the group's accounted memory is over `max_memory`, the commands
//! Redis flags `denyoom` get `-OOM command not allowed when used memory >
//! 'maxmemory'.` and change nothing. The service's own bounds are in
//! [`KvConfig`]. The accounted size ([`Service::memory_bytes`]) is kept up
//! to date by every command from data sizes — the keyspaces, every
//! connection's unparsed input, queued transaction, name, subscriptions and
//! watched keys — never read from the allocator.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[macro_use]
mod commands;
mod db;
mod glob;
mod more;
pub mod resp;
mod session;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_session;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tandem_core::sdk::{
    ConnId, Context, DeferredBytes, DeferredSnapshot, Event, SdkError, Service,
};

pub use commands::COMMANDS;
use db::Db;
pub use more::MAX_PATTERN;
use resp::{Out, Parsed};
use session::{Blocking, Conn, PubSub, Watches};

/// The Redis port the service is meant to be exposed on.
pub const PORT: u16 = 6379;

/// Number of databases (`SELECT 0` to `SELECT 15`, Redis' default).
pub const DATABASES: usize = 16;

/// The default [`KvConfig::max_queued_commands`].
pub const DEFAULT_MAX_QUEUED_COMMANDS: u32 = 10_000;
/// The default [`KvConfig::max_subscriptions`].
pub const DEFAULT_MAX_SUBSCRIPTIONS: u32 = 10_000;
/// The default [`KvConfig::max_watched_keys`].
pub const DEFAULT_MAX_WATCHED_KEYS: u32 = 10_000;

/// The service's own settings. They decide replies, so every replica must
/// use the same: they are given when the service is constructed
/// ([`Kv::with_config`]) identically on every node, travel inside every
/// snapshot (a restored replica takes the snapshot's settings, not its
/// own), are part of the state hash, and the password can also be changed
/// through the log with `CONFIG SET requirepass` — never read from a local
/// file while the log is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvConfig {
    /// Redis' `requirepass`: when set, a connection must `AUTH <password>`
    /// (or `AUTH default <password>`, or `HELLO 3 AUTH default <password>`)
    /// before any other command, which gets `-NOAUTH Authentication
    /// required.`; the comparison takes the same time whatever the guess.
    /// Default: none (every connection is authenticated, as in Redis).
    pub requirepass: Option<String>,
    /// Most commands one `MULTI` may queue; past it the command gets an
    /// error and `EXEC` answers `-EXECABORT`. The queued bytes of one
    /// transaction are also bounded by the group's `max_request`. Default
    /// [`DEFAULT_MAX_QUEUED_COMMANDS`].
    pub max_queued_commands: u32,
    /// Most channels plus patterns one connection may subscribe to.
    /// Default [`DEFAULT_MAX_SUBSCRIPTIONS`].
    pub max_subscriptions: u32,
    /// Most keys one connection may `WATCH` at once. Default
    /// [`DEFAULT_MAX_WATCHED_KEYS`].
    pub max_watched_keys: u32,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            requirepass: None,
            max_queued_commands: DEFAULT_MAX_QUEUED_COMMANDS,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            max_watched_keys: DEFAULT_MAX_WATCHED_KEYS,
        }
    }
}

impl KvConfig {
    /// Checks the values; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("max_queued_commands", self.max_queued_commands),
            ("max_subscriptions", self.max_subscriptions),
            ("max_watched_keys", self.max_watched_keys),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.requirepass.as_deref() == Some("") {
            return Err("requirepass must not be empty (leave it out for none)".into());
        }
        Ok(())
    }
}

/// The key-value service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kv {
    config: KvConfig,
    /// The databases, [`DATABASES`] of them.
    dbs: Vec<Db>,
    /// Per open connection, its session and unfinished request.
    conns: BTreeMap<ConnId, Conn>,
    /// Every connection's watched keys and whether one changed.
    watches: Watches,
    /// Subscribers by channel and pattern (derived from the connections'
    /// subscriptions, rebuilt after a restore).
    #[serde(skip)]
    pubsub: PubSub,
    /// Connections blocked in BLPOP and the like, by key.
    blocking: Blocking,
    /// Accounted bytes of every connection's session state (derived, for
    /// the memory accounting; recomputed after a restore).
    #[serde(skip)]
    conn_bytes: u64,
    /// An EXEC is running (blocking commands do not block; clients blocked
    /// on keys it pushes to are served after it, from `pending_wakes`).
    /// Only ever true inside one event.
    #[serde(skip)]
    in_exec: bool,
    #[serde(skip)]
    pending_wakes: Vec<(u8, Vec<u8>)>,
}

impl Default for Kv {
    fn default() -> Self {
        Kv::with_config(KvConfig::default())
    }
}

/// Whether the connection goes on after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Close,
    /// A blocking command is waiting: the connection's further input waits.
    Block,
}

impl Kv {
    /// An empty store with the default settings.
    pub fn new() -> Kv {
        Kv::default()
    }

    /// An empty store with these settings (the same on every node; see
    /// [`KvConfig`]).
    pub fn with_config(config: KvConfig) -> Kv {
        Kv {
            config,
            dbs: vec![Db::default(); DATABASES],
            conns: BTreeMap::new(),
            watches: Watches::default(),
            pubsub: PubSub::default(),
            blocking: Blocking::default(),
            conn_bytes: 0,
            in_exec: false,
            pending_wakes: Vec::new(),
        }
    }

    /// Number of keys in every database (expired ones are gone already).
    pub fn len(&self) -> usize {
        self.dbs.iter().map(Db::len).sum()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes a connection's state out (to work on it), keeping the
    /// accounting right; [`Kv::put_conn`] puts it back.
    fn take_conn(&mut self, conn: ConnId) -> Option<Conn> {
        let c = self.conns.remove(&conn)?;
        self.conn_bytes = self.conn_bytes.saturating_sub(c.weight());
        Some(c)
    }

    fn put_conn(&mut self, conn: ConnId, c: Conn) {
        self.conn_bytes = self.conn_bytes.saturating_add(c.weight());
        self.conns.insert(conn, c);
    }

    /// Forgets a connection and everything that points to it.
    fn drop_conn(&mut self, conn: ConnId) -> bool {
        let Some(c) = self.take_conn(conn) else {
            return false;
        };
        self.forget_taken(conn, &c);
        true
    }

    fn on_data(&mut self, ctx: &mut Context, conn: ConnId, bytes: &[u8]) {
        // A connection we closed (or never saw) gets nothing more.
        let Some(c) = self.take_conn(conn) else {
            return;
        };
        self.process(ctx, conn, c, bytes);
    }

    /// Runs the complete requests of a connection taken out as `c`, after
    /// appending `bytes` to its input, and puts it back (unless it closed).
    /// A blocked connection's input waits until it is unblocked (then this
    /// runs again with no new bytes, possibly in another connection's
    /// event).
    fn process(&mut self, ctx: &mut Context, conn: ConnId, mut c: Conn, bytes: &[u8]) {
        let limits = *ctx.limits();
        let max_value = usize::try_from(limits.max_value).unwrap_or(usize::MAX);
        let max_request = usize::try_from(limits.max_request).unwrap_or(usize::MAX);
        let mut input = std::mem::take(&mut c.input);
        input.extend_from_slice(bytes);
        let mut out = Out::new(c.resp3);
        let mut pos = 0;
        let mut flow = Flow::Continue;
        while pos < input.len() && !c.is_blocked() {
            match resp::parse_limited(&input[pos..], &mut c.progress, max_value) {
                Parsed::Command(args, used) => {
                    pos += used;
                    flow = self.request(ctx, conn, &mut c, args, &mut out);
                    if ctx.overflowed(conn) {
                        self.forget_taken(conn, &c);
                        return;
                    }
                    // Each reply goes out as it is made, so the output cap
                    // is checked after every command; past it the runtime
                    // resets the connection and the rest of its pipeline
                    // is never executed (a command that would have written
                    // after an overflowing read must not run).
                    if !ctx.try_send(conn, out.take()) {
                        self.forget_taken(conn, &c);
                        return;
                    }
                    if flow == Flow::Close {
                        break;
                    }
                    flow = Flow::Continue;
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
        input.drain(..pos);
        c.input = input;
        if flow == Flow::Continue && c.input.len() > max_request {
            resp::error(&mut out, "ERR Protocol error: request too large");
            flow = Flow::Close;
        }
        if !ctx.try_send(conn, out.take()) {
            self.forget_taken(conn, &c);
            return;
        }
        match flow {
            Flow::Continue | Flow::Block => self.put_conn(conn, c),
            Flow::Close => {
                self.forget_taken(conn, &c);
                ctx.close(conn);
            }
        }
    }

    /// Forgets a connection whose state is taken out (it is being closed
    /// or reset): its subscriptions and watched keys.
    fn forget_taken(&mut self, conn: ConnId, c: &Conn) {
        self.pubsub.forget(conn, c);
        self.watches.unwatch(conn);
        self.blocking.forget(conn, c);
    }

    /// Bytes of session state outside the connections' own (watched keys).
    fn shared_bytes(&self) -> u64 {
        self.watches.bytes()
    }
}

impl Service for Kv {
    fn on_event(&mut self, ctx: &mut Context, event: Event) {
        let now = ctx.now().0;
        for (i, db) in self.dbs.iter_mut().enumerate() {
            for key in db.purge(now) {
                // An expired watched key counts as changed (Redis 7).
                self.watches.touch(i as u8, &key);
            }
        }
        match event {
            Event::Opened { conn, peer } => {
                let authed = self.config.requirepass.is_none();
                self.put_conn(conn, Conn::new(peer, now, authed));
            }
            Event::Data { conn, bytes } => self.on_data(ctx, conn, &bytes),
            Event::PeerClosed { conn } => {
                // Redis closes when the client does; pipelined replies to
                // complete requests were already sent.
                if self.drop_conn(conn) {
                    ctx.close(conn);
                }
            }
            Event::Reset { conn } => {
                self.drop_conn(conn);
            }
            Event::Timer { id, generation } => self.block_timeout(ctx, id, generation),
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

    /// The keyspaces are copy-on-write (crate::db): this copy is O(1) in
    /// their size (the connections' sessions are copied, bounded by
    /// `max_request` each), and the encoding and the hash run where the
    /// node calls it.
    fn snapshot_deferred(&self) -> Option<DeferredSnapshot> {
        let copy = Kv {
            config: self.config.clone(),
            dbs: self.dbs.iter().map(Db::snapshot_copy).collect(),
            conns: self.conns.clone(),
            watches: self.watches.clone(),
            pubsub: PubSub::default(),
            blocking: self.blocking.clone(),
            conn_bytes: 0,
            in_exec: false,
            pending_wakes: Vec::new(),
        };
        Some(Box::new(move || DeferredBytes {
            state_hash: copy.state_hash(),
            bytes: copy.snapshot(),
        }))
    }

    fn restore(bytes: &[u8]) -> Result<Self, SdkError> {
        let mut kv: Kv =
            postcard::from_bytes(bytes).map_err(|e| SdkError::Snapshot(e.to_string()))?;
        if kv.dbs.len() != DATABASES {
            return Err(SdkError::Snapshot(format!(
                "{} databases, expected {DATABASES}",
                kv.dbs.len()
            )));
        }
        for db in &mut kv.dbs {
            db.reset_used();
            db.check().map_err(SdkError::Snapshot)?;
        }
        kv.config.validate().map_err(SdkError::Snapshot)?;
        kv.conn_bytes = kv.conns.values().map(Conn::weight).sum();
        kv.pubsub = PubSub::rebuild(&kv.conns);
        kv.watches.rebuild();
        kv.blocking.rebuild(&kv.conns);
        Ok(kv)
    }

    /// The keyspaces hashed in place (the default would encode a whole
    /// snapshot first: slow for a big keyspace, and asked for by every
    /// `tandem status`), then the settings, every connection's session
    /// and the watched keys, encoded (small next to the keyspace).
    fn state_hash(&self) -> Option<u64> {
        let mut h = tandem_core::shadow::hash::Fnv64::new();
        for db in &self.dbs {
            db.hash_into(&mut h);
        }
        let session =
            postcard::to_stdvec(&(&self.config, &self.conns, &self.watches, &self.blocking))
                .unwrap_or_default();
        h.u64(session.len() as u64).bytes(&session);
        Some(h.finish())
    }

    /// The keyspaces' accounted bytes plus every connection's session
    /// state: unparsed input (bounded by `max_request`), queued
    /// transaction, name, subscriptions, watched keys.
    fn memory_bytes(&self) -> u64 {
        self.dbs
            .iter()
            .map(Db::used)
            .fold(0u64, u64::saturating_add)
            .saturating_add(self.conn_bytes)
            .saturating_add(self.shared_bytes())
    }
}
