//! Connection state and the commands about it: the handshake (`HELLO`,
//! `AUTH`, `CLIENT`, `SELECT`, `RESET`), transactions (`MULTI`/`EXEC`/
//! `WATCH`), pub/sub, and the server commands (`INFO`, `CONFIG`,
//! `FLUSHALL`...). Everything here is replicated state changed only by the
//! log: a clone that takes over after a failover holds every connection's
//! protocol, database, transaction, watched keys and subscriptions.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use tandem_core::sdk::{ConnId, Context, Millis, TimerId};

use crate::commands::{self, arity_error, trunc, DENY_OOM, NOT_INT, OOM, SYNTAX, WRONGTYPE};
use crate::db::Value;
use crate::glob;
use crate::more::pattern_arg;
use crate::resp::{self, array, bulk, int, map, nil, nil_array, parse_i64, push, simple, Out};
use crate::{Flow, Kv, COMMANDS, DATABASES};

/// The longest client name or library name/version (`CLIENT SETNAME`,
/// `CLIENT SETINFO`, `HELLO ... SETNAME`): they are kept per connection on
/// every replica.
pub const MAX_CLIENT_NAME: usize = 1024;

/// What one subscription costs in the memory accounting besides twice the
/// channel's bytes (it is kept in the connection and in the index).
const SUBSCRIPTION_OVERHEAD: u64 = 64;
/// What one queued command costs besides its arguments' bytes.
const QUEUED_OVERHEAD: u64 = 32;
/// What one watched key costs besides twice its bytes.
const WATCH_OVERHEAD: u64 = 64;
/// What a blocked command costs besides twice its keys' bytes.
const BLOCKED_OVERHEAD: u64 = 128;

const NOAUTH: &str = "NOAUTH Authentication required.";
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// A transaction being queued.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Multi {
    queued: Vec<Vec<Vec<u8>>>,
    /// Accounted bytes of `queued`.
    bytes: u64,
    /// A command was refused while queueing: EXEC answers EXECABORT.
    failed: bool,
}

/// One open connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Conn {
    /// The bytes of an unfinished request. Part of the replicated state: a
    /// restored clone must finish the same request.
    pub input: Vec<u8>,
    /// Parser progress through `input` (a cache, rebuilt after a restore).
    #[serde(skip)]
    pub progress: resp::Progress,
    /// The client's address, as logged.
    peer: SocketAddr,
    /// Log time of the connection's opening and of its last command.
    opened_at: u64,
    last_at: u64,
    /// Whether it speaks RESP3 (`HELLO 3`).
    pub resp3: bool,
    /// The selected database.
    db: u8,
    /// Whether it may run commands (always, without `requirepass`).
    authed: bool,
    name: Vec<u8>,
    lib_name: Vec<u8>,
    lib_ver: Vec<u8>,
    multi: Option<Multi>,
    channels: BTreeSet<Vec<u8>>,
    patterns: BTreeSet<Vec<u8>>,
    /// Accounted bytes of `channels` and `patterns`.
    sub_bytes: u64,
    /// A blocking command waiting for a push.
    blocked: Option<Blocked>,
}

/// A blocking list command (BLPOP, BRPOP, BLMOVE, BRPOPLPUSH) waiting for
/// a push to one of its keys or for its timeout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Blocked {
    /// Order among blocked connections: first blocked, first served.
    seq: u64,
    db: u8,
    keys: Vec<Vec<u8>>,
    /// Pops from the head (BLPOP, BLMOVE LEFT) or the tail.
    from_left: bool,
    /// BLMOVE/BRPOPLPUSH: the destination, and whether to push at its head.
    dst: Option<(Vec<u8>, bool)>,
    /// The timeout timer's generation (none: waits for ever).
    timer: Option<u64>,
}

impl Blocked {
    fn weight(&self) -> u64 {
        BLOCKED_OVERHEAD
            + self.keys.iter().map(|k| 2 * k.len() as u64).sum::<u64>()
            + self.dst.as_ref().map_or(0, |d| d.0.len() as u64)
    }
}

/// The connections blocked on one key, by (block order, connection).
type Waiters = BTreeSet<(u64, ConnId)>;

/// The blocked connections by (database, key), in the order they blocked.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Blocking {
    next_seq: u64,
    #[serde(skip)]
    by_key: BTreeMap<(u8, Vec<u8>), Waiters>,
}

impl Blocking {
    pub fn rebuild(&mut self, conns: &BTreeMap<ConnId, Conn>) {
        self.by_key.clear();
        for (id, c) in conns {
            if let Some(b) = &c.blocked {
                self.index(*id, b);
            }
        }
    }

    fn index(&mut self, id: ConnId, b: &Blocked) {
        for k in &b.keys {
            self.by_key
                .entry((b.db, k.clone()))
                .or_default()
                .insert((b.seq, id));
        }
    }

    /// Removes the connection's blocked command from the index.
    pub fn forget(&mut self, id: ConnId, c: &Conn) {
        if let Some(b) = &c.blocked {
            for k in &b.keys {
                let key = (b.db, k.clone());
                if let Some(set) = self.by_key.get_mut(&key) {
                    set.remove(&(b.seq, id));
                    if set.is_empty() {
                        self.by_key.remove(&key);
                    }
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    fn waits_on(&self, db: u8, key: &[u8]) -> bool {
        !self.by_key.is_empty() && self.by_key.contains_key(&(db, key.to_vec()))
    }

    fn first(&self, db: u8, key: &[u8]) -> Option<ConnId> {
        self.by_key
            .get(&(db, key.to_vec()))
            .and_then(|s| s.first())
            .map(|(_, id)| *id)
    }
}

impl Conn {
    pub fn new(peer: SocketAddr, now: u64, authed: bool) -> Conn {
        Conn {
            input: Vec::new(),
            progress: resp::Progress::default(),
            peer,
            opened_at: now,
            last_at: now,
            resp3: false,
            db: 0,
            authed,
            name: Vec::new(),
            lib_name: Vec::new(),
            lib_ver: Vec::new(),
            multi: None,
            channels: BTreeSet::new(),
            patterns: BTreeSet::new(),
            sub_bytes: 0,
            blocked: None,
        }
    }

    /// Whether a blocking command is waiting (its input waits too).
    pub fn is_blocked(&self) -> bool {
        self.blocked.is_some()
    }

    /// The connection's accounted bytes (its slot is in
    /// `tandem_core::sdk::CONNECTION_CHARGE`, charged by the runtime).
    pub fn weight(&self) -> u64 {
        self.input.len() as u64
            + (self.name.len() + self.lib_name.len() + self.lib_ver.len()) as u64
            + self.multi.as_ref().map_or(0, |m| m.bytes)
            + self.sub_bytes
            + self.blocked.as_ref().map_or(0, Blocked::weight)
    }

    fn subscriptions(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }
}

/// Subscribers by channel and by pattern.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct PubSub {
    channels: BTreeMap<Vec<u8>, BTreeSet<ConnId>>,
    patterns: BTreeMap<Vec<u8>, BTreeSet<ConnId>>,
}

impl PubSub {
    /// The index of the connections' subscriptions (after a restore).
    pub fn rebuild(conns: &BTreeMap<ConnId, Conn>) -> PubSub {
        let mut p = PubSub::default();
        for (id, c) in conns {
            for ch in &c.channels {
                p.channels.entry(ch.clone()).or_default().insert(*id);
            }
            for pat in &c.patterns {
                p.patterns.entry(pat.clone()).or_default().insert(*id);
            }
        }
        p
    }

    /// Removes every subscription of the connection from the index.
    pub fn forget(&mut self, id: ConnId, c: &Conn) {
        for ch in &c.channels {
            remove_from(&mut self.channels, ch, id);
        }
        for pat in &c.patterns {
            remove_from(&mut self.patterns, pat, id);
        }
    }
}

fn remove_from(index: &mut BTreeMap<Vec<u8>, BTreeSet<ConnId>>, key: &[u8], id: ConnId) {
    if let Some(set) = index.get_mut(key) {
        set.remove(&id);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

/// One connection's watched keys.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Watching {
    keys: BTreeSet<(u8, Vec<u8>)>,
    /// One of them changed since it was watched: EXEC will fail.
    dirty: bool,
}

/// Every connection's watched keys, and the reverse index (derived).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Watches {
    by_conn: BTreeMap<ConnId, Watching>,
    #[serde(skip)]
    by_key: BTreeMap<(u8, Vec<u8>), BTreeSet<ConnId>>,
    #[serde(skip)]
    bytes: u64,
}

impl Watches {
    pub fn rebuild(&mut self) {
        self.by_key.clear();
        self.bytes = 0;
        for (id, w) in &self.by_conn {
            for k in &w.keys {
                self.by_key.entry(k.clone()).or_default().insert(*id);
                self.bytes += WATCH_OVERHEAD + 2 * k.1.len() as u64;
            }
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    fn count(&self, id: ConnId) -> usize {
        self.by_conn.get(&id).map_or(0, |w| w.keys.len())
    }

    fn watch(&mut self, id: ConnId, db: u8, key: &[u8]) {
        let w = self.by_conn.entry(id).or_default();
        if w.keys.insert((db, key.to_vec())) {
            self.by_key
                .entry((db, key.to_vec()))
                .or_default()
                .insert(id);
            self.bytes += WATCH_OVERHEAD + 2 * key.len() as u64;
        }
    }

    /// Forgets the connection's watched keys; returns whether one changed.
    pub fn unwatch(&mut self, id: ConnId) -> bool {
        let Some(w) = self.by_conn.remove(&id) else {
            return false;
        };
        for k in &w.keys {
            self.bytes = self
                .bytes
                .saturating_sub(WATCH_OVERHEAD + 2 * k.1.len() as u64);
            if let Some(set) = self.by_key.get_mut(k) {
                set.remove(&id);
                if set.is_empty() {
                    self.by_key.remove(k);
                }
            }
        }
        w.dirty
    }

    pub fn is_watched(&self, db: u8, key: &[u8]) -> bool {
        // The tuple needs an owned key; only built when anything is watched.
        !self.by_key.is_empty() && self.by_key.contains_key(&(db, key.to_vec()))
    }

    /// The key changed: every connection watching it will fail its EXEC.
    pub fn touch(&mut self, db: u8, key: &[u8]) {
        if self.by_key.is_empty() {
            return;
        }
        if let Some(ids) = self.by_key.get(&(db, key.to_vec())) {
            for id in ids {
                if let Some(w) = self.by_conn.get_mut(id) {
                    w.dirty = true;
                }
            }
        }
    }

    /// Every watched key of database `db` that `exists` says is there
    /// changed (FLUSHDB, FLUSHALL).
    fn touch_db(&mut self, db: u8, exists: impl Fn(&[u8]) -> bool) {
        let hit: Vec<Vec<u8>> = self
            .by_key
            .keys()
            .filter(|(d, k)| *d == db && exists(k))
            .map(|(_, k)| k.clone())
            .collect();
        for k in hit {
            self.touch(db, &k);
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths,
/// never on where they first differ (a password guess learns nothing from
/// how long the refusal took).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// Whether a client name is acceptable (Redis: no spaces, newlines or
/// other special characters).
fn valid_name(name: &[u8]) -> bool {
    name.len() <= MAX_CLIENT_NAME && name.iter().all(|&b| (b'!'..=b'~').contains(&b))
}

impl Kv {
    fn password_ok(&self, user: &[u8], pass: &[u8]) -> bool {
        match &self.config.requirepass {
            // The default user has `nopass`: any password is accepted.
            None => user == b"default",
            Some(p) => {
                let ok = constant_time_eq(pass, p.as_bytes());
                user == b"default" && ok
            }
        }
    }

    /// Handles one request of connection `id` (taken out as `c`).
    pub(crate) fn request(
        &mut self,
        ctx: &mut Context,
        id: ConnId,
        c: &mut Conn,
        args: Vec<Vec<u8>>,
        out: &mut Out,
    ) -> Flow {
        out.resp3 = c.resp3;
        out.conn = Some(id);
        c.last_at = ctx.now().0;
        let Some(name) = args.first() else {
            return Flow::Continue;
        };
        let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
        let Some(&(cmd, arity)) = lookup(&lower) else {
            let mut msg = format!(
                "ERR unknown command '{}', with args beginning with: ",
                trunc(name)
            );
            for a in args.iter().skip(1) {
                msg.push_str(&format!("'{}' ", trunc(a)));
            }
            return refuse(c, out, &msg);
        };
        let n = args.len() as i32;
        if (arity > 0 && n != arity) || (arity < 0 && n < -arity) {
            return refuse(c, out, &arity_error(cmd));
        }
        if let Some(msg) = subcommand_check(cmd, &args) {
            return refuse(c, out, &msg);
        }
        if !c.authed && !matches!(cmd, "auth" | "hello" | "quit" | "reset") {
            return refuse(c, out, NOAUTH);
        }
        if !c.resp3
            && c.subscriptions() > 0
            && !matches!(
                cmd,
                "subscribe"
                    | "psubscribe"
                    | "unsubscribe"
                    | "punsubscribe"
                    | "ping"
                    | "quit"
                    | "reset"
            )
        {
            resp::error(
                out,
                &format!(
                    "ERR Can't execute '{cmd}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
                ),
            );
            return Flow::Continue;
        }
        if let Some(m) = &mut c.multi {
            match cmd {
                "exec" | "discard" | "quit" | "reset" => {}
                "multi" => {
                    resp::error(out, "ERR MULTI calls can not be nested");
                    return Flow::Continue;
                }
                "watch" => {
                    resp::error(out, "ERR WATCH inside MULTI is not allowed");
                    return Flow::Continue;
                }
                _ => {
                    let bytes: u64 = QUEUED_OVERHEAD
                        + args
                            .iter()
                            .map(|a| a.len() as u64 + QUEUED_OVERHEAD)
                            .sum::<u64>();
                    if m.queued.len() >= self.config.max_queued_commands as usize
                        || m.bytes.saturating_add(bytes) > ctx.limits().max_request
                    {
                        return refuse(c, out, "ERR too many commands queued in this transaction");
                    }
                    m.queued.push(args);
                    m.bytes += bytes;
                    simple(out, "QUEUED");
                    return Flow::Continue;
                }
            }
        }
        self.run(ctx, id, c, cmd, &args, out)
    }

    /// Runs a command (now, or from EXEC).
    fn run(
        &mut self,
        ctx: &mut Context,
        id: ConnId,
        c: &mut Conn,
        cmd: &str,
        a: &[Vec<u8>],
        out: &mut Out,
    ) -> Flow {
        let mark = out.len();
        match self.run_inner(ctx, id, c, cmd, a, out) {
            Ok(flow) => flow,
            Err(e) => {
                // A failing command replies with its error only.
                out.truncate(mark);
                resp::error(out, &e);
                Flow::Continue
            }
        }
    }

    fn run_inner(
        &mut self,
        ctx: &mut Context,
        id: ConnId,
        c: &mut Conn,
        cmd: &str,
        a: &[Vec<u8>],
        out: &mut Out,
    ) -> Result<Flow, String> {
        match cmd {
            "quit" => {
                simple(out, "OK");
                return Ok(Flow::Close);
            }
            "ping" => {
                if a.len() > 2 {
                    return Err(arity_error("ping"));
                }
                if !c.resp3 && c.subscriptions() > 0 {
                    array(out, 2);
                    bulk(out, b"pong");
                    bulk(out, a.get(1).map_or(&b""[..], |v| v.as_slice()));
                } else {
                    match a.get(1) {
                        None => simple(out, "PONG"),
                        Some(v) => bulk(out, v),
                    }
                }
            }
            "echo" => bulk(out, &a[1]),
            "select" => match parse_i64(&a[1]) {
                Some(n) if (0..DATABASES as i64).contains(&n) => {
                    c.db = n as u8;
                    simple(out, "OK");
                }
                Some(_) => return Err("ERR DB index is out of range".into()),
                None => return Err(NOT_INT.into()),
            },
            "auth" => {
                let (user, pass) = match a.len() {
                    2 => {
                        if self.config.requirepass.is_none() {
                            return Err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?".into());
                        }
                        (&b"default"[..], &a[1])
                    }
                    3 => (a[1].as_slice(), &a[2]),
                    _ => return Err(SYNTAX.into()),
                };
                if !self.password_ok(user, pass) {
                    return Err(WRONGPASS.into());
                }
                c.authed = true;
                simple(out, "OK");
            }
            "hello" => self.hello(id, c, a, out)?,
            "client" => return self.client(ctx, id, c, a, out),
            "reset" => {
                c.multi = None;
                self.watches.unwatch(id);
                self.pubsub.forget(id, c);
                c.channels.clear();
                c.patterns.clear();
                c.sub_bytes = 0;
                c.db = 0;
                c.resp3 = false;
                c.name.clear();
                c.authed = self.config.requirepass.is_none();
                out.resp3 = false;
                simple(out, "RESET");
            }
            "multi" => {
                c.multi = Some(Multi::default());
                simple(out, "OK");
            }
            "discard" => {
                if c.multi.take().is_none() {
                    return Err("ERR DISCARD without MULTI".into());
                }
                self.watches.unwatch(id);
                simple(out, "OK");
            }
            "exec" => self.exec(ctx, id, c, out)?,
            "blpop" | "brpop" | "blmove" | "brpoplpush" => {
                return self.blocking_pop(ctx, id, c, cmd, a, out)
            }
            "watch" => {
                let new = a[1..]
                    .iter()
                    .filter(|k| !self.watches.is_watched(c.db, k))
                    .count();
                if self.watches.count(id) + new > self.config.max_watched_keys as usize {
                    return Err("ERR too many watched keys".into());
                }
                for k in &a[1..] {
                    self.watches.watch(id, c.db, k);
                }
                simple(out, "OK");
            }
            "unwatch" => {
                self.watches.unwatch(id);
                simple(out, "OK");
            }
            "subscribe" | "psubscribe" => {
                let pattern = cmd == "psubscribe";
                for ch in &a[1..] {
                    if pattern {
                        pattern_arg(ch)?;
                    }
                }
                for ch in &a[1..] {
                    let set = if pattern {
                        &mut c.patterns
                    } else {
                        &mut c.channels
                    };
                    if !set.contains(ch) {
                        if c.channels.len() + c.patterns.len()
                            >= self.config.max_subscriptions as usize
                        {
                            return Err("ERR too many subscriptions".into());
                        }
                        let (set, index) = if pattern {
                            (&mut c.patterns, &mut self.pubsub.patterns)
                        } else {
                            (&mut c.channels, &mut self.pubsub.channels)
                        };
                        set.insert(ch.clone());
                        index.entry(ch.clone()).or_default().insert(id);
                        c.sub_bytes += SUBSCRIPTION_OVERHEAD + 2 * ch.len() as u64;
                    }
                    push(out, 3);
                    bulk(out, cmd.as_bytes());
                    bulk(out, ch);
                    int(out, c.subscriptions() as i64);
                }
            }
            "unsubscribe" | "punsubscribe" => {
                let pattern = cmd == "punsubscribe";
                let names: Vec<Vec<u8>> = if a.len() > 1 {
                    a[1..].to_vec()
                } else if pattern {
                    c.patterns.iter().cloned().collect()
                } else {
                    c.channels.iter().cloned().collect()
                };
                if names.is_empty() {
                    push(out, 3);
                    bulk(out, cmd.as_bytes());
                    nil(out);
                    int(out, c.subscriptions() as i64);
                }
                for ch in names {
                    let (set, index) = if pattern {
                        (&mut c.patterns, &mut self.pubsub.patterns)
                    } else {
                        (&mut c.channels, &mut self.pubsub.channels)
                    };
                    if set.remove(&ch) {
                        remove_from(index, &ch, id);
                        c.sub_bytes = c
                            .sub_bytes
                            .saturating_sub(SUBSCRIPTION_OVERHEAD + 2 * ch.len() as u64);
                    }
                    push(out, 3);
                    bulk(out, cmd.as_bytes());
                    bulk(out, &ch);
                    int(out, c.subscriptions() as i64);
                }
            }
            "publish" => {
                let n = self.publish(ctx, id, c, &a[1], &a[2], out);
                int(out, n as i64);
            }
            "pubsub" => self.pubsub_cmd(a, out)?,
            "acl" => match a[1].to_ascii_uppercase().as_slice() {
                b"WHOAMI" if a.len() == 2 => bulk(out, b"default"),
                _ => {
                    return Err(
                        "ERR tandem kv has only the default user: ACL supports WHOAMI".into(),
                    )
                }
            },
            "time" => {
                let now = ctx.now().0;
                array(out, 2);
                bulk(out, (now / 1000).to_string().as_bytes());
                bulk(out, ((now % 1000) * 1000).to_string().as_bytes());
            }
            "command" => match a.get(1).map(|s| s.to_ascii_uppercase()).as_deref() {
                // Enough for redis-cli: it asks COMMAND DOCS for hints and
                // falls back to its built-in table on an empty answer.
                Some(b"COUNT") => int(out, 0),
                Some(b"DOCS") => map(out, 0),
                _ => array(out, 0),
            },
            "dbsize" => int(out, self.dbs[c.db as usize].len() as i64),
            "flushall" | "flushdb" => {
                match a.get(1).map(|o| o.to_ascii_uppercase()) {
                    None => {}
                    Some(o) if (o == b"ASYNC" || o == b"SYNC") && a.len() == 2 => {}
                    Some(_) => return Err(SYNTAX.into()),
                }
                let which: Vec<usize> = if cmd == "flushall" {
                    (0..DATABASES).collect()
                } else {
                    vec![c.db as usize]
                };
                for i in which {
                    let db = &self.dbs[i];
                    self.watches.touch_db(i as u8, |k| db.data.contains_key(k));
                    self.dbs[i].clear();
                }
                simple(out, "OK");
            }
            "info" => self.info(a, out),
            "config" => self.config_cmd(c, a, out)?,
            _ => self.data(ctx, c, cmd, a, out),
        }
        Ok(Flow::Continue)
    }

    /// A data command on the connection's database, with WATCH tracking.
    fn data(&mut self, ctx: &mut Context, c: &Conn, cmd: &str, a: &[Vec<u8>], out: &mut Out) {
        use tandem_core::sdk::Service;
        if DENY_OOM.contains(&cmd)
            && ctx.over_memory(self.memory_bytes().saturating_add(c.weight()))
        {
            resp::error(out, OOM);
            return;
        }
        let now = ctx.now().0;
        let dbi = c.db;
        let db = &mut self.dbs[dbi as usize];
        // Watched keys among the arguments (every key a command changes is
        // one of its arguments): their value and expiry before, compared
        // after, so a change marks their watchers. Nothing is cloned when
        // nothing is watched.
        // Keys clients are blocked on that are not lists yet: the command
        // may create them, which is what makes a key "ready" in Redis
        // (blocked clients are served in the order their keys were
        // created, after the command or the whole EXEC).
        let mut not_lists: Vec<&[u8]> = Vec::new();
        if !self.blocking.is_empty() {
            for k in &a[1..] {
                if self.blocking.waits_on(dbi, k)
                    && !matches!(db.data.get(k.as_slice()), Some(Value::List(_)))
                    && !not_lists.contains(&k.as_slice())
                {
                    not_lists.push(k);
                }
            }
        }
        let mut before: Vec<(&[u8], Option<Value>, Option<u64>)> = Vec::new();
        if !self.watches.is_empty() {
            for k in &a[1..] {
                if self.watches.is_watched(dbi, k)
                    && !before.iter().any(|(b, _, _)| *b == k.as_slice())
                {
                    before.push((k, db.data.get(k).cloned(), db.expire_at(k)));
                }
            }
        }
        let mark = out.len();
        let ok = match commands::run(db, ctx, now, cmd, a, out) {
            Ok(()) => true,
            Err(e) => {
                out.truncate(mark);
                resp::error(out, &e);
                false
            }
        };
        for (k, v, at) in before {
            let changed = db.data.get(k) != v.as_ref() || db.expire_at(k) != at;
            let rewritten = ok && rewrites(cmd, a, k, v.is_some(), &out.buf[mark..]);
            if changed || (rewritten && db.data.contains_key(k)) {
                self.watches.touch(dbi, k);
            }
        }
        // A push that created a list may serve clients blocked on it.
        for k in not_lists {
            let created = matches!(
                self.dbs[dbi as usize].data.get(k),
                Some(Value::List(l)) if !l.is_empty()
            );
            if !created {
                continue;
            }
            if self.in_exec {
                if !self.pending_wakes.iter().any(|(d, x)| *d == dbi && x == k) {
                    self.pending_wakes.push((dbi, k.to_vec()));
                }
            } else {
                self.wake(ctx, dbi, k);
            }
        }
    }

    /// BLPOP, BRPOP, BLMOVE, BRPOPLPUSH: served at once if a list has an
    /// element (or inside EXEC: nil), otherwise the connection blocks until
    /// a push or the timeout, a timer on the log's clock.
    fn blocking_pop(
        &mut self,
        ctx: &mut Context,
        id: ConnId,
        c: &mut Conn,
        cmd: &str,
        a: &[Vec<u8>],
        out: &mut Out,
    ) -> Result<Flow, String> {
        let side = |s: &[u8]| match s.to_ascii_uppercase().as_slice() {
            b"LEFT" => Ok(true),
            b"RIGHT" => Ok(false),
            _ => Err(SYNTAX.to_string()),
        };
        // Redis' order: BLMOVE's directions, then the timeout.
        if cmd == "blmove" {
            side(&a[3])?;
            side(&a[4])?;
        }
        let secs = a
            .last()
            .and_then(|t| crate::commands::float_arg(t).ok())
            .filter(|t| t.is_finite())
            .ok_or("ERR timeout is not a float or out of range")?;
        if secs < 0.0 {
            return Err("ERR timeout is negative".into());
        }
        let (keys, from_left, dst) = match cmd {
            "blpop" => (a[1..a.len() - 1].to_vec(), true, None),
            "brpop" => (a[1..a.len() - 1].to_vec(), false, None),
            "brpoplpush" => (vec![a[1].clone()], false, Some((a[2].clone(), true))),
            _ => (
                vec![a[1].clone()],
                side(&a[3])?,
                Some((a[2].clone(), side(&a[4])?)),
            ),
        };
        let dbi = c.db;
        let db = &mut self.dbs[dbi as usize];
        for k in &keys {
            match db.data.get(k) {
                None => {}
                Some(Value::List(l)) if !l.is_empty() => {
                    // As Redis: the destination's type matters only when
                    // something moves.
                    if let Some((d, _)) = &dst {
                        if db.data.get(d).is_some_and(|v| !matches!(v, Value::List(_))) {
                            return Err(WRONGTYPE.into());
                        }
                    }
                    let v = pop_push(db, k, from_left, &dst)?;
                    reply_popped(out, k, &v, dst.is_some());
                    self.changed(ctx, dbi, k, &dst);
                    return Ok(Flow::Continue);
                }
                Some(Value::List(_)) => {}
                Some(_) => return Err(WRONGTYPE.into()),
            }
        }
        if self.in_exec {
            // Redis: a null array for BLPOP/BRPOP, a null bulk for the
            // moves.
            if dst.is_some() {
                crate::resp::nil(out);
            } else {
                nil_array(out);
            }
            return Ok(Flow::Continue);
        }
        let ms = (secs * 1000.0) as u64;
        let timer =
            (ms > 0).then(|| ctx.set_timer(TimerId(id.0), Millis(ctx.now().0.saturating_add(ms))));
        let b = Blocked {
            seq: self.blocking.next_seq,
            db: dbi,
            keys,
            from_left,
            dst,
            timer,
        };
        self.blocking.next_seq += 1;
        self.blocking.index(id, &b);
        c.blocked = Some(b);
        Ok(Flow::Block)
    }

    /// After a blocking pop changed `key` (and `dst`): watchers see the
    /// change, and a push to `dst` may serve others.
    fn changed(&mut self, ctx: &mut Context, dbi: u8, key: &[u8], dst: &Option<(Vec<u8>, bool)>) {
        self.watches.touch(dbi, key);
        if let Some((d, _)) = dst {
            self.watches.touch(dbi, d);
            if self.blocking.waits_on(dbi, d) {
                if self.in_exec {
                    self.pending_wakes.push((dbi, d.clone()));
                } else {
                    self.wake(ctx, dbi, d);
                }
            }
        }
    }

    /// Serves the connections blocked on `key`, first blocked first, while
    /// the list has elements; each then goes on with its pipelined input.
    pub(crate) fn wake(&mut self, ctx: &mut Context, dbi: u8, key: &[u8]) {
        while let Some(w) = self.blocking.first(dbi, key) {
            let has = matches!(
                self.dbs[dbi as usize].data.get(key),
                Some(Value::List(l)) if !l.is_empty()
            );
            if !has {
                return;
            }
            let Some(mut wc) = self.take_conn(w) else {
                // Not open any more: drop it from the index.
                if let Some(set) = self.blocking.by_key.get_mut(&(dbi, key.to_vec())) {
                    set.retain(|(_, id)| *id != w);
                }
                continue;
            };
            self.blocking.forget(w, &wc);
            let Some(b) = wc.blocked.take() else {
                self.put_conn(w, wc);
                continue;
            };
            if b.timer.is_some() {
                ctx.cancel_timer(TimerId(w.0));
            }
            let mut out = Out::new(wc.resp3);
            out.conn = Some(w);
            match pop_push(&mut self.dbs[dbi as usize], key, b.from_left, &b.dst) {
                Ok(v) => reply_popped(&mut out, key, &v, b.dst.is_some()),
                Err(e) => resp::error(&mut out, &e),
            }
            self.changed(ctx, dbi, key, &b.dst);
            if ctx.try_send(w, out.take()) {
                self.process(ctx, w, wc, &[]);
            } else {
                self.forget_taken(w, &wc);
            }
        }
    }

    /// A blocked connection's timeout: the null reply, then its input goes
    /// on. A stale timer (served or gone meanwhile) does nothing.
    pub(crate) fn block_timeout(&mut self, ctx: &mut Context, id: TimerId, generation: u64) {
        let conn = ConnId(id.0);
        let due = self
            .conns
            .get(&conn)
            .and_then(|c| c.blocked.as_ref())
            .is_some_and(|b| b.timer == Some(generation));
        if !due {
            return;
        }
        let Some(mut c) = self.take_conn(conn) else {
            return;
        };
        self.blocking.forget(conn, &c);
        c.blocked = None;
        let mut out = Out::new(c.resp3);
        nil_array(&mut out);
        if ctx.try_send(conn, out.take()) {
            self.process(ctx, conn, c, &[]);
        } else {
            self.forget_taken(conn, &c);
        }
    }

    fn exec(
        &mut self,
        ctx: &mut Context,
        id: ConnId,
        c: &mut Conn,
        out: &mut Out,
    ) -> Result<(), String> {
        let Some(m) = c.multi.take() else {
            return Err("ERR EXEC without MULTI".into());
        };
        let dirty = self.watches.unwatch(id);
        if m.failed {
            return Err("EXECABORT Transaction discarded because of previous errors.".into());
        }
        if dirty {
            nil_array(out);
            return Ok(());
        }
        array(out, m.queued.len());
        // Blocked clients are served after the whole transaction, never
        // in the middle of it; blocking commands inside it do not block.
        self.in_exec = true;
        for args in &m.queued {
            let lower = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
            let Some(&(cmd, _)) = lookup(&lower) else {
                continue;
            };
            if self.run(ctx, id, c, cmd, args, out) == Flow::Close {
                break;
            }
        }
        self.in_exec = false;
        for (db, key) in std::mem::take(&mut self.pending_wakes) {
            self.wake(ctx, db, &key);
        }
        Ok(())
    }

    fn hello(
        &mut self,
        id: ConnId,
        c: &mut Conn,
        a: &[Vec<u8>],
        out: &mut Out,
    ) -> Result<(), String> {
        let mut proto = if c.resp3 { 3 } else { 2 };
        let mut i = 1;
        if let Some(v) = a.get(1) {
            proto = match parse_i64(v) {
                Some(p) => p,
                None => return Err("ERR Protocol version is not an integer or out of range".into()),
            };
            if !(2..=3).contains(&proto) {
                return Err("NOPROTO unsupported protocol version".into());
            }
            i = 2;
        }
        let mut auth = None;
        let mut setname = None;
        while i < a.len() {
            match a[i].to_ascii_uppercase().as_slice() {
                b"AUTH" if i + 2 < a.len() => {
                    auth = Some((&a[i + 1], &a[i + 2]));
                    i += 3;
                }
                b"SETNAME" if i + 1 < a.len() => {
                    setname = Some(&a[i + 1]);
                    i += 2;
                }
                _ => {
                    return Err(format!(
                        "ERR Syntax error in HELLO option '{}'",
                        trunc(&a[i])
                    ))
                }
            }
        }
        if let Some((user, pass)) = auth {
            if !self.password_ok(user, pass) {
                return Err(WRONGPASS.into());
            }
            c.authed = true;
        }
        if !c.authed {
            return Err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".into());
        }
        if let Some(name) = setname {
            if !valid_name(name) {
                return Err(
                    "ERR Client names cannot contain spaces, newlines or special characters."
                        .into(),
                );
            }
            c.name = name.clone();
        }
        c.resp3 = proto == 3;
        out.resp3 = c.resp3;
        map(out, 7);
        bulk(out, b"server");
        bulk(out, b"redis");
        bulk(out, b"version");
        bulk(out, crate::commands::REDIS_VERSION.as_bytes());
        bulk(out, b"proto");
        int(out, proto);
        bulk(out, b"id");
        int(out, id.0 as i64);
        bulk(out, b"mode");
        bulk(out, b"standalone");
        bulk(out, b"role");
        bulk(out, b"master");
        bulk(out, b"modules");
        array(out, 0);
        Ok(())
    }

    /// One `CLIENT LIST` line.
    fn client_line(&self, now: u64, id: ConnId, c: &Conn) -> String {
        let mut flags = String::new();
        if c.subscriptions() > 0 {
            flags.push('P');
        }
        if c.multi.is_some() {
            flags.push('x');
        }
        if flags.is_empty() {
            flags.push('N');
        }
        format!(
            "id={} addr={} name={} age={} idle={} flags={} db={} sub={} psub={} ssub=0 multi={} watch={} qbuf={} user=default resp={} lib-name={} lib-ver={}",
            id.0,
            c.peer,
            String::from_utf8_lossy(&c.name),
            now.saturating_sub(c.opened_at) / 1000,
            now.saturating_sub(c.last_at) / 1000,
            flags,
            c.db,
            c.channels.len(),
            c.patterns.len(),
            c.multi.as_ref().map_or(-1, |m| m.queued.len() as i64),
            self.watches.count(id),
            c.input.len(),
            if c.resp3 { 3 } else { 2 },
            String::from_utf8_lossy(&c.lib_name),
            String::from_utf8_lossy(&c.lib_ver),
        )
    }

    fn client(
        &mut self,
        ctx: &mut Context,
        id: ConnId,
        c: &mut Conn,
        a: &[Vec<u8>],
        out: &mut Out,
    ) -> Result<Flow, String> {
        let sub = a[1].to_ascii_uppercase();
        let unknown = || {
            crate::commands::subcommand_error(
                "client",
                &a[1],
                &[
                    "id", "setname", "getname", "setinfo", "info", "list", "kill", "no-evict",
                    "no-touch", "reply",
                ],
            )
        };
        let now = ctx.now().0;
        match (sub.as_slice(), a.len()) {
            (b"ID", 2) => int(out, id.0 as i64),
            (b"SETNAME", 3) => {
                if !valid_name(&a[2]) {
                    return Err(
                        "ERR Client names cannot contain spaces, newlines or special characters."
                            .into(),
                    );
                }
                c.name = a[2].clone();
                simple(out, "OK");
            }
            (b"GETNAME", 2) => {
                if c.name.is_empty() {
                    nil(out);
                } else {
                    bulk(out, &c.name);
                }
            }
            (b"SETINFO", 4) => {
                if !valid_name(&a[3]) {
                    return Err(format!(
                        "ERR {} cannot contain spaces, newlines or special characters.",
                        trunc(&a[2])
                    ));
                }
                match a[2].to_ascii_uppercase().as_slice() {
                    b"LIB-NAME" => c.lib_name = a[3].clone(),
                    b"LIB-VER" => c.lib_ver = a[3].clone(),
                    _ => return Err(format!("ERR Unrecognized option '{}'", trunc(&a[2]))),
                }
                simple(out, "OK");
            }
            (b"INFO", 2) => {
                let line = self.client_line(now, id, c) + "\n";
                resp::verbatim(out, line.as_bytes());
            }
            (b"LIST", _) => {
                let mut only: Option<BTreeSet<u64>> = None;
                let mut i = 2;
                while i < a.len() {
                    match a[i].to_ascii_uppercase().as_slice() {
                        b"ID" => {
                            let ids: Result<BTreeSet<u64>, _> = a[i + 1..]
                                .iter()
                                .map(|v| {
                                    parse_i64(v)
                                        .filter(|n| *n > 0)
                                        .map(|n| n as u64)
                                        .ok_or_else(|| "ERR Invalid client ID".to_string())
                                })
                                .collect();
                            only = Some(ids?);
                            i = a.len();
                        }
                        b"TYPE" if i + 1 < a.len() => i += 2,
                        _ => return Err(SYNTAX.into()),
                    }
                }
                let mut text = String::new();
                let mut ids: Vec<ConnId> = self.conns.keys().copied().collect();
                ids.push(id);
                ids.sort();
                for other in ids {
                    if only.as_ref().is_some_and(|o| !o.contains(&other.0)) {
                        continue;
                    }
                    let conn = if other == id {
                        &*c
                    } else {
                        match self.conns.get(&other) {
                            Some(x) => x,
                            None => continue,
                        }
                    };
                    text.push_str(&self.client_line(now, other, conn));
                    text.push('\n');
                }
                resp::verbatim(out, text.as_bytes());
            }
            (b"KILL", 3) => {
                // The old form: CLIENT KILL addr:port.
                let addr = String::from_utf8_lossy(&a[2]).into_owned();
                let target = self.find_conn(id, c, |_, x| x.peer.to_string() == addr);
                match target.first() {
                    None => return Err("ERR No such client".into()),
                    Some(&t) => {
                        simple(out, "OK");
                        if t == id {
                            return Ok(Flow::Close);
                        }
                        self.kill(ctx, t);
                    }
                }
            }
            (b"KILL", n) if n >= 4 && n % 2 == 0 => {
                let (mut by_id, mut by_addr, mut skipme) = (None, None, true);
                for f in a[2..].chunks(2) {
                    match f[0].to_ascii_uppercase().as_slice() {
                        b"ID" => {
                            by_id = Some(
                                parse_i64(&f[1])
                                    .filter(|n| *n > 0)
                                    .ok_or("ERR client-id should be greater than 0")?
                                    as u64,
                            )
                        }
                        b"ADDR" => by_addr = Some(String::from_utf8_lossy(&f[1]).into_owned()),
                        b"SKIPME" => match f[1].to_ascii_uppercase().as_slice() {
                            b"YES" => skipme = true,
                            b"NO" => skipme = false,
                            _ => return Err(SYNTAX.into()),
                        },
                        b"TYPE" | b"USER" | b"LADDR" | b"MAXAGE" => {}
                        _ => return Err(SYNTAX.into()),
                    }
                }
                let targets = self.find_conn(id, c, |other, x| {
                    by_id.is_none_or(|i| i == other.0)
                        && by_addr.as_ref().is_none_or(|s| *s == x.peer.to_string())
                });
                let targets: Vec<ConnId> = targets
                    .into_iter()
                    .filter(|t| !(skipme && *t == id))
                    .collect();
                int(out, targets.len() as i64);
                let mut flow = Flow::Continue;
                for t in targets {
                    if t == id {
                        flow = Flow::Close;
                    } else {
                        self.kill(ctx, t);
                    }
                }
                return Ok(flow);
            }
            (b"NO-EVICT" | b"NO-TOUCH", 3) => match a[2].to_ascii_uppercase().as_slice() {
                b"ON" | b"OFF" => simple(out, "OK"),
                _ => return Err(SYNTAX.into()),
            },
            (b"REPLY", 3) if a[2].eq_ignore_ascii_case(b"ON") => simple(out, "OK"),
            _ => return Err(unknown()),
        }
        Ok(Flow::Continue)
    }

    /// Connections (the current one included) that `pick` selects, in id
    /// order.
    fn find_conn(&self, id: ConnId, c: &Conn, pick: impl Fn(ConnId, &Conn) -> bool) -> Vec<ConnId> {
        let mut hits: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(other, x)| pick(**other, x))
            .map(|(other, _)| *other)
            .collect();
        if pick(id, c) {
            hits.push(id);
        }
        hits.sort();
        hits
    }

    /// CLIENT KILL of another connection: closed, and forgotten at once.
    fn kill(&mut self, ctx: &mut Context, target: ConnId) {
        if self.drop_conn(target) {
            ctx.close(target);
        }
    }

    /// Delivers a message to the channel's subscribers and the matching
    /// patterns' (in that order, as Redis); returns how many got it. A
    /// subscriber whose output passes the output cap is reset by the
    /// runtime, like any client that does not read its replies.
    fn publish(
        &mut self,
        ctx: &mut Context,
        id: ConnId,
        c: &Conn,
        channel: &[u8],
        message: &[u8],
        out: &mut Out,
    ) -> usize {
        let mut receivers: Vec<(ConnId, Option<&[u8]>)> = Vec::new();
        if let Some(subs) = self.pubsub.channels.get(channel) {
            receivers.extend(subs.iter().map(|s| (*s, None)));
        }
        for (pattern, subs) in &self.pubsub.patterns {
            if glob::matches(pattern, channel) {
                receivers.extend(subs.iter().map(|s| (*s, Some(pattern.as_slice()))));
            }
        }
        let n = receivers.len();
        for (to, pattern) in receivers {
            let resp3 = if to == id {
                c.resp3
            } else {
                match self.conns.get(&to) {
                    Some(x) => x.resp3,
                    None => continue,
                }
            };
            let mut msg = Out::new(resp3);
            match pattern {
                None => {
                    push(&mut msg, 3);
                    bulk(&mut msg, b"message");
                }
                Some(p) => {
                    push(&mut msg, 4);
                    bulk(&mut msg, b"pmessage");
                    bulk(&mut msg, p);
                }
            }
            bulk(&mut msg, channel);
            bulk(&mut msg, message);
            if to == id {
                out.buf.extend_from_slice(&msg.buf);
            } else {
                // Refused past the cap: the runtime resets that subscriber
                // and the service hears Event::Reset for it.
                ctx.try_send(to, msg.buf);
            }
        }
        n
    }

    fn pubsub_cmd(&self, a: &[Vec<u8>], out: &mut Out) -> Result<(), String> {
        match a[1].to_ascii_uppercase().as_slice() {
            b"CHANNELS" if a.len() <= 3 => {
                let p = a.get(2).map(|p| pattern_arg(p)).transpose()?;
                let chans: Vec<&Vec<u8>> = self
                    .pubsub
                    .channels
                    .keys()
                    .filter(|ch| p.is_none_or(|p| glob::matches(p, ch)))
                    .collect();
                array(out, chans.len());
                for ch in chans {
                    bulk(out, ch);
                }
            }
            b"NUMSUB" => {
                // A flat array in RESP3 too, as redis-server 7.0 answers.
                array(out, 2 * (a.len() - 2));
                for ch in &a[2..] {
                    bulk(out, ch);
                    int(
                        out,
                        self.pubsub.channels.get(ch).map_or(0, BTreeSet::len) as i64,
                    );
                }
            }
            b"NUMPAT" if a.len() == 2 => {
                let n: usize = self.pubsub.patterns.values().map(BTreeSet::len).sum();
                int(out, n as i64);
            }
            _ => {
                return Err(crate::commands::subcommand_error(
                    "pubsub",
                    &a[1],
                    &["channels", "numsub", "numpat"],
                ))
            }
        }
        Ok(())
    }

    fn info(&self, a: &[Vec<u8>], out: &mut Out) {
        // Only replicated facts: no pid, uptime, memory or host.
        let wanted = |section: &[u8]| {
            a.len() == 1
                || a[1..].iter().any(|s| {
                    let s = s.to_ascii_lowercase();
                    s == section || s == b"all" || s == b"default" || s == b"everything"
                })
        };
        let mut s = String::new();
        let section = |s: &mut String, text: &str| {
            if !s.is_empty() {
                s.push_str("\r\n");
            }
            s.push_str(text);
        };
        if wanted(b"server") {
            section(
                &mut s,
                &format!(
                    "# Server\r\nredis_version:{}\r\nredis_mode:standalone\r\ntandem_service:kv\r\n",
                    crate::commands::REDIS_VERSION
                ),
            );
        }
        if wanted(b"clients") {
            section(
                &mut s,
                &format!(
                    "# Clients\r\nconnected_clients:{}\r\npubsub_clients:{}\r\n",
                    self.conns.len() + 1,
                    self.conns
                        .values()
                        .filter(|c| c.subscriptions() > 0)
                        .count()
                ),
            );
        }
        if wanted(b"keyspace") {
            let mut text = "# Keyspace\r\n".to_string();
            for (i, db) in self.dbs.iter().enumerate() {
                if db.len() > 0 {
                    text.push_str(&format!(
                        "db{i}:keys={},expires={},avg_ttl=0\r\n",
                        db.len(),
                        db.expires_len()
                    ));
                }
            }
            section(&mut s, &text);
        }
        resp::verbatim(out, s.as_bytes());
    }

    fn config_cmd(&mut self, c: &Conn, a: &[Vec<u8>], out: &mut Out) -> Result<(), String> {
        let _ = c;
        let sub = a[1].to_ascii_uppercase();
        let databases = DATABASES.to_string();
        let pass = self.config.requirepass.clone().unwrap_or_default();
        let params: [(&str, &str); 5] = [
            ("appendonly", "no"),
            ("databases", &databases),
            ("maxmemory", "0"),
            ("requirepass", &pass),
            ("save", ""),
        ];
        match sub.as_slice() {
            b"GET" if a.len() >= 3 => {
                let hits: Vec<&(&str, &str)> = params
                    .iter()
                    .filter(|(k, _)| {
                        a[2..]
                            .iter()
                            .any(|p| glob::matches(&p.to_ascii_lowercase(), k.as_bytes()))
                    })
                    .collect();
                map(out, hits.len());
                for (k, v) in hits {
                    bulk(out, k.as_bytes());
                    bulk(out, v.as_bytes());
                }
                Ok(())
            }
            b"GET" => Err(arity_error("config|get")),
            // The password can change through the log: every replica
            // applies it at the same position. Connections already
            // authenticated stay so, as in Redis.
            b"SET" if a.len() == 4 && a[2].eq_ignore_ascii_case(b"requirepass") => {
                let pass = String::from_utf8(a[3].clone())
                    .map_err(|_| "ERR requirepass must be UTF-8".to_string())?;
                self.config.requirepass = if pass.is_empty() { None } else { Some(pass) };
                simple(out, "OK");
                Ok(())
            }
            b"SET" | b"RESETSTAT" | b"REWRITE" => Err(
                "ERR CONFIG SET supports only requirepass; RESETSTAT and REWRITE are not supported by tandem kv"
                    .into(),
            ),
            _ => Err(format!(
                "ERR unknown subcommand '{}'. Try CONFIG HELP.",
                trunc(&a[1])
            )),
        }
    }
}

/// Pops from `key` (from its head or tail) and, for a move, pushes onto
/// `dst`; the accounting follows. The list must have an element.
fn pop_push(
    db: &mut crate::db::Db,
    key: &[u8],
    from_left: bool,
    dst: &Option<(Vec<u8>, bool)>,
) -> Result<Vec<u8>, String> {
    if let Some((d, _)) = dst {
        if db.data.get(d).is_some_and(|v| !matches!(v, Value::List(_))) {
            return Err(WRONGTYPE.into());
        }
    }
    let v = match db.data.get_mut(key) {
        Some(Value::List(l)) => {
            if from_left {
                l.pop_front()
            } else {
                l.pop_back()
            }
        }
        _ => None,
    }
    .ok_or("ERR no element")?;
    db.release(crate::db::elem_weight(&v));
    db.drop_if_empty(key);
    if let Some((d, to_left)) = dst {
        if let Value::List(l) = db.get_or_create(d, || Value::List(Default::default())) {
            if *to_left {
                l.push_front(v.clone());
            } else {
                l.push_back(v.clone());
            }
        }
        db.charge(crate::db::elem_weight(&v));
    }
    Ok(v)
}

/// A served blocking pop's reply: [key, value] for BLPOP/BRPOP, the value
/// for a move.
fn reply_popped(out: &mut Out, key: &[u8], v: &[u8], moved: bool) {
    if moved {
        bulk(out, v);
    } else {
        array(out, 2);
        bulk(out, key);
        bulk(out, v);
    }
}

/// A command's table entry by its lower-case name ([`COMMANDS`] is
/// sorted: a unit test says so).
pub(crate) fn lookup(lower: &str) -> Option<&'static (&'static str, i32)> {
    COMMANDS
        .binary_search_by(|(n, _)| (*n).cmp(lower))
        .ok()
        .map(|i| &COMMANDS[i])
}

/// Refuses a command: the error, and inside MULTI the transaction is
/// marked to fail at EXEC (Redis' queue-time errors).
fn refuse(c: &mut Conn, out: &mut Out, msg: &str) -> Flow {
    if let Some(m) = &mut c.multi {
        m.failed = true;
    }
    resp::error(out, msg);
    Flow::Continue
}

/// The subcommands of the container commands and their Redis arities
/// (with the command and subcommand words).
const SUBCOMMANDS: &[(&str, &[(&str, i32)])] = &[
    ("acl", &[("whoami", 2)]),
    (
        "client",
        &[
            ("id", 2),
            ("setname", 3),
            ("getname", 2),
            ("setinfo", 4),
            ("info", 2),
            ("list", -2),
            ("kill", -3),
            ("no-evict", 3),
            ("no-touch", 3),
            ("reply", 3),
        ],
    ),
    ("config", &[("get", -3), ("set", -4)]),
    ("object", &[("encoding", 3), ("refcount", 3)]),
    ("pubsub", &[("channels", -2), ("numsub", -2), ("numpat", 2)]),
];

/// As Redis' command table does before a command runs (so inside `MULTI`
/// at queue time too): an unknown subcommand of a container command, or a
/// known one with the wrong number of arguments, is refused.
fn subcommand_check(cmd: &str, args: &[Vec<u8>]) -> Option<String> {
    let (_, subs) = SUBCOMMANDS.iter().find(|(c, _)| *c == cmd)?;
    let sub = args.get(1)?;
    let lower = String::from_utf8_lossy(sub).to_ascii_lowercase();
    let Some((name, arity)) = subs.iter().find(|(s, _)| *s == lower) else {
        return Some(format!(
            "ERR unknown subcommand '{}'. Try {} HELP.",
            trunc(sub),
            cmd.to_ascii_uppercase()
        ));
    };
    let n = args.len() as i32;
    if (*arity > 0 && n != *arity) || (*arity < 0 && n < -*arity) {
        return Some(arity_error(&format!("{cmd}|{name}")));
    }
    None
}

/// Whether a successful `cmd` wrote `key` even if its value ended up as it
/// was — Redis marks such a key modified (`signalModifiedKey`), so a
/// `WATCH` on it aborts the transaction: `SET k` to its current value,
/// `INCRBY k 0`, `HSET` of the same value, an `EXPIREAT` to the same time.
/// `existed`: the key was there before; `reply`: what the command answered.
fn rewrites(cmd: &str, a: &[Vec<u8>], key: &[u8], existed: bool, reply: &[u8]) -> bool {
    let first = a.get(1).is_some_and(|k| k.as_slice() == key);
    match cmd {
        "set" => {
            let flag = |f: &[u8]| a[3..].iter().any(|o| o.eq_ignore_ascii_case(f));
            first && !(flag(b"NX") && existed) && (!flag(b"XX") || existed)
        }
        "setex" | "psetex" | "getset" | "incr" | "decr" | "incrby" | "decrby" | "incrbyfloat"
        | "append" | "hset" | "hmset" | "hincrby" | "hincrbyfloat" | "lset" | "zincrby"
        | "ltrim" | "sinterstore" | "sunionstore" | "sdiffstore" => first,
        "mset" => a[1..].chunks(2).any(|kv| kv[0].as_slice() == key),
        "expire" | "pexpire" | "expireat" | "pexpireat" => first && reply == b":1\r\n",
        _ => false,
    }
}
