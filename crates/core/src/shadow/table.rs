//! The table of connections, keyed by 4-tuple.

use std::collections::BTreeMap;

use super::conn::{hash_addr, Fate, HalfOpen, Hello, Open, TimeWait};
use super::hash::Fnv64;
use super::segment::{ConnKey, Direction, SackBlocks, Segment};
use super::seq::{after, Millis};
use super::{DropReason, Event, Outcome, ShadowConfig, ShadowError, ShadowState};
use crate::image::{RepairWindow, SocketImage, TcpOptions, TcpState, WindowScale};

/// One table entry. Each variant is boxed so the B-tree's nodes stay small
/// and an entry's memory is one exact allocation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Entry {
    HalfOpen(Box<HalfOpen>),
    Open(Box<Open>),
    TimeWait(Box<TimeWait>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    HalfOpen,
    Open,
    TimeWait,
}

impl Entry {
    fn kind(&self) -> Kind {
        match self {
            Entry::HalfOpen(_) => Kind::HalfOpen,
            Entry::Open(_) => Kind::Open,
            Entry::TimeWait(_) => Kind::TimeWait,
        }
    }

    /// Heap bytes owned by the entry: its box and the buffers inside.
    fn heap_bytes(&self) -> usize {
        match self {
            Entry::HalfOpen(_) => std::mem::size_of::<HalfOpen>(),
            Entry::Open(o) => std::mem::size_of::<Open>() + o.heap_bytes(),
            Entry::TimeWait(_) => std::mem::size_of::<TimeWait>(),
        }
    }
}

/// A summary of one connection, for the caller and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Where the connection stands.
    pub state: ShadowState,
    /// The client's ISN.
    pub client_isn: u32,
    /// Our ISN, once the SYN-ACK is logged.
    pub server_isn: Option<u32>,
    /// The next sequence number expected from the client.
    pub rcv_nxt: u32,
    /// Our oldest unacknowledged sequence number.
    pub snd_una: u32,
    /// After the last byte (and FIN) the application queued.
    pub write_seq: u32,
    /// Client bytes delivered in order so far (received in order, less
    /// those the input throttle holds back).
    pub delivered: u64,
    /// In-order client bytes received (and acknowledged by the kernel) but
    /// held back by the input throttle ([`ShadowConfig::output_limit`]).
    pub held_input: u64,
    /// The client's FIN is in but held back behind `held_input`.
    pub held_fin: bool,
    /// Client bytes held out of order.
    pub held: usize,
    /// Output bytes appended so far.
    pub output_total: u64,
    /// Output bytes not yet acknowledged.
    pub unacked: u64,
    /// FNV-1a 64 of the whole output stream.
    pub output_hash: u64,
    /// The client's window, scaled.
    pub snd_wnd: u32,
    /// The largest window the client ever offered, scaled.
    pub max_window: u32,
    /// The last TSval accepted from the client (`ts_recent`).
    pub ts_recent: Option<u32>,
    /// The client's latest SACK blocks.
    pub sack: SackBlocks,
}

/// Memory held by the table, measured from the allocations it owns.
///
/// How it is counted: every entry is one B-tree slot (key + a boxed enum,
/// charged twice: a B-tree node is at least about half full, and the
/// allocator test in this module checks the charge covers what is really
/// allocated) plus its box, plus the capacity (not length) of every buffer
/// it owns: out-of-order bytes and their bitmap, unacknowledged output. An
/// idle established connection owns no buffer at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryReport {
    /// Entries pending their handshake.
    pub half_open: usize,
    /// Established or closing connections.
    pub open: usize,
    /// TIME_WAIT entries.
    pub time_wait: usize,
    /// Everything, in bytes.
    pub total_bytes: usize,
    /// Of which out-of-order client data (buffers and bitmaps).
    pub reassembly_bytes: usize,
    /// Of which unacknowledged output (bounded by the caller's output limit,
    /// not by the table).
    pub output_bytes: usize,
    /// Of which in-order input held back by the input throttle (bounded by
    /// what the kernel accepts while the primary stops reading, not by the
    /// table).
    pub held_input_bytes: usize,
    /// What one idle established connection costs.
    pub bytes_per_idle_connection: usize,
    /// The most out-of-order memory one connection can hold.
    pub reassembly_bytes_max_per_connection: usize,
    /// The most memory the table can hold, output buffers and held-back
    /// input aside.
    pub bound_bytes: usize,
}

/// Every connection on the service's VIP, rebuilt from logged packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowTable {
    config: ShadowConfig,
    entries: BTreeMap<ConnKey, Entry>,
    half_open: usize,
    open: usize,
    time_wait: usize,
}

/// What one B-tree slot costs, with the node fill factor charged.
fn slot_bytes() -> usize {
    2 * (std::mem::size_of::<ConnKey>() + std::mem::size_of::<Entry>())
}

impl ShadowTable {
    /// An empty table.
    pub fn new(config: ShadowConfig) -> ShadowTable {
        ShadowTable {
            config,
            entries: BTreeMap::new(),
            half_open: 0,
            open: 0,
            time_wait: 0,
        }
    }

    /// The parameters.
    pub fn config(&self) -> &ShadowConfig {
        &self.config
    }

    /// How many entries of any kind.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Pending handshakes (the count [`ShadowConfig::max_half_open`]
    /// bounds), without scanning the table.
    pub fn half_open(&self) -> usize {
        self.half_open
    }

    fn count(&mut self, kind: Kind, add: bool) {
        let c = match kind {
            Kind::HalfOpen => &mut self.half_open,
            Kind::Open => &mut self.open,
            Kind::TimeWait => &mut self.time_wait,
        };
        *c = if add {
            c.saturating_add(1)
        } else {
            c.saturating_sub(1)
        };
    }

    fn insert(&mut self, key: ConnKey, entry: Entry) {
        let kind = entry.kind();
        if let Some(old) = self.entries.insert(key, entry) {
            self.count(old.kind(), false);
        }
        self.count(kind, true);
    }

    fn remove(&mut self, key: &ConnKey) -> Option<Entry> {
        let old = self.entries.remove(key)?;
        self.count(old.kind(), false);
        Some(old)
    }

    fn apply(&mut self, key: ConnKey, fate: Fate) {
        match fate {
            Fate::Keep => {}
            Fate::Remove => {
                self.remove(&key);
            }
            Fate::Establish(open) => self.insert(key, Entry::Open(open)),
            Fate::TimeWait(tw) => self.insert(key, Entry::TimeWait(tw)),
            Fate::Reopen(h) => self.insert(key, Entry::HalfOpen(h)),
        }
    }

    /// Room for one more pending handshake, replacing an entry of `kind`
    /// (or adding one if `None`)?
    fn room_for_syn(&self, replacing: Option<Kind>) -> Result<(), DropReason> {
        let half_open = self
            .half_open
            .saturating_sub(usize::from(replacing == Some(Kind::HalfOpen)));
        if half_open >= self.config.max_half_open {
            return Err(DropReason::HalfOpenFull);
        }
        if replacing.is_none() && self.entries.len() >= self.config.max_connections {
            return Err(DropReason::TableFull);
        }
        Ok(())
    }

    /// Feeds one logged segment. Never panics, whatever the segment.
    pub fn on_segment(&mut self, now: Millis, direction: Direction, seg: &Segment<'_>) -> Outcome {
        let key = ConnKey::of(direction, seg);
        let mut events = Vec::new();
        match direction {
            Direction::FromClient => self.on_client(key, now, seg, &mut events),
            Direction::FromServer => self.on_server(key, now, seg, &mut events),
        }
        Outcome { conn: key, events }
    }

    fn on_client(&mut self, key: ConnKey, now: Millis, seg: &Segment<'_>, ev: &mut Vec<Event>) {
        let cfg = self.config;
        let v6 = key.server.is_ipv6();
        let fate = match self.entries.get_mut(&key) {
            None => {
                let f = seg.flags;
                if !f.is_opening_syn() {
                    ev.push(Event::Dropped(DropReason::NoConnection));
                    return;
                }
                if let Err(reason) = self.room_for_syn(None) {
                    ev.push(Event::Dropped(reason));
                    return;
                }
                self.insert(key, Entry::HalfOpen(Box::new(HalfOpen::new(seg, now))));
                return;
            }
            Some(Entry::HalfOpen(h)) => h.on_client(&cfg, now, seg, v6, ev),
            Some(Entry::Open(o)) => o.on_client(&cfg, now, seg, ev),
            Some(Entry::TimeWait(tw)) => tw.on_client(&cfg, now, seg, ev),
        };
        if let Fate::Reopen(_) = fate {
            if let Err(reason) = self.room_for_syn(Some(Kind::TimeWait)) {
                ev.push(Event::Dropped(reason));
                return;
            }
        }
        self.apply(key, fate);
    }

    fn on_server(&mut self, key: ConnKey, now: Millis, seg: &Segment<'_>, ev: &mut Vec<Event>) {
        let f = seg.flags;
        if !f.is_synack() {
            ev.push(Event::Dropped(DropReason::UnexpectedFromServer));
            return;
        }
        let Some(Entry::HalfOpen(h)) = self.entries.get_mut(&key) else {
            ev.push(Event::Dropped(DropReason::UnexpectedFromServer));
            return;
        };
        if seg.ack != h.syn.isn + 1 {
            ev.push(Event::Dropped(DropReason::SynAckMismatch));
            return;
        }
        match h.synack {
            // The kernel retransmitting its SYN-ACK: same ISN, nothing new.
            Some(s) if s.isn == seg.seq => {}
            Some(_) => ev.push(Event::Dropped(DropReason::SynAckMismatch)),
            None => h.synack = Some(Hello::of(seg, now)),
        }
    }

    /// The application wrote `bytes` on `conn`.
    pub fn append_output(&mut self, conn: &ConnKey, bytes: &[u8]) -> Result<(), ShadowError> {
        match self.entries.get_mut(conn) {
            None => Err(ShadowError::NoConnection),
            Some(Entry::Open(o)) => Ok(o.out.append(bytes)?),
            Some(_) => Err(ShadowError::NotOpen),
        }
    }

    /// The application closed its side of `conn` (`shutdown(SHUT_WR)`): a FIN
    /// follows the output. Idempotent. May end the connection at once if
    /// everything else was already done (it cannot: our FIN is unacked).
    pub fn close(&mut self, conn: &ConnKey) -> Result<(), ShadowError> {
        match self.entries.get_mut(conn) {
            None => Err(ShadowError::NoConnection),
            Some(Entry::Open(o)) => {
                if !o.out.closed() {
                    o.closed_first = !o.rx.fin_done();
                    o.out.close();
                }
                Ok(())
            }
            Some(_) => Err(ShadowError::NotOpen),
        }
    }

    /// Forgets `conn` at once (the kernel gave up on it and the primary
    /// logged an abort). Returns whether it existed.
    pub fn abort(&mut self, conn: &ConnKey) -> bool {
        self.remove(conn).is_some()
    }

    /// Removes pending handshakes and TIME_WAIT entries whose time is up.
    /// Scans the whole table (call it once per tick, not per packet).
    pub fn expire(&mut self, now: Millis) -> Vec<(ConnKey, Event)> {
        let timeout = self.config.half_open_timeout_ms;
        let mut gone = Vec::new();
        for (key, entry) in &self.entries {
            match entry {
                Entry::HalfOpen(h) if now.since(h.syn.at) >= timeout => {
                    gone.push((*key, Event::HalfOpenExpired));
                }
                Entry::TimeWait(tw) if now >= tw.until => {
                    gone.push((*key, Event::TimeWaitEnded));
                }
                _ => {}
            }
        }
        for (key, _) in &gone {
            self.remove(key);
        }
        gone
    }

    /// The keys of every entry, in order.
    pub fn keys(&self) -> impl Iterator<Item = &ConnKey> {
        self.entries.keys()
    }

    /// A summary of `conn`.
    pub fn info(&self, conn: &ConnKey) -> Option<ConnInfo> {
        Some(match self.entries.get(conn)? {
            Entry::HalfOpen(h) => ConnInfo {
                state: h.state(),
                client_isn: h.syn.isn.0,
                server_isn: h.synack.map(|s| s.isn.0),
                rcv_nxt: (h.syn.isn + 1).0,
                snd_una: h.synack.map_or(0, |s| s.isn.0),
                write_seq: h.synack.map_or(0, |s| (s.isn + 1).0),
                delivered: 0,
                held_input: 0,
                held_fin: false,
                held: 0,
                output_total: 0,
                unacked: 0,
                output_hash: Fnv64::new().finish(),
                snd_wnd: u32::from(h.syn.window),
                max_window: u32::from(h.syn.window),
                ts_recent: h.ts_recent.map(|t| t.val),
                sack: SackBlocks::default(),
            },
            Entry::Open(o) => ConnInfo {
                state: o.state(),
                client_isn: o.client_isn.0,
                server_isn: Some(o.server_isn.0),
                rcv_nxt: o.rcv_nxt().0,
                snd_una: o.snd_una().0,
                write_seq: o.write_seq().0,
                delivered: o.delivered(),
                held_input: o.pending.len() as u64,
                held_fin: o.pending_fin,
                held: o.rx.held_bytes(),
                output_total: o.out.total(),
                unacked: o.out.unacked().len() as u64,
                output_hash: o.out.hash(),
                snd_wnd: o.snd_wnd,
                max_window: o.max_window,
                ts_recent: o.ts_recent.map(|t| t.val),
                sack: o.sack,
            },
            Entry::TimeWait(tw) => ConnInfo {
                state: ShadowState::TimeWait,
                client_isn: 0,
                server_isn: None,
                rcv_nxt: tw.rcv_nxt.0,
                snd_una: 0,
                write_seq: 0,
                delivered: 0,
                held_input: 0,
                held_fin: false,
                held: 0,
                output_total: 0,
                unacked: 0,
                output_hash: Fnv64::new().finish(),
                snd_wnd: 0,
                max_window: 0,
                ts_recent: tw.ts_recent.map(|t| t.val),
                sack: SackBlocks::default(),
            },
        })
    }

    /// Whether the input throttle holds `conn`'s input back (its
    /// unacknowledged output is over [`ShadowConfig::output_limit`], or
    /// input held earlier is still waiting). The primary should stop
    /// reading the connection's kernel socket meanwhile, so the kernel's
    /// receive window closes and the client stops sending.
    pub fn throttled(&self, conn: &ConnKey) -> bool {
        match self.entries.get(conn) {
            Some(Entry::Open(o)) => o.holding() || o.throttled(&self.config),
            _ => false,
        }
    }

    /// Delivers the input the throttle held back on `conn` if its
    /// unacknowledged output is now within the limit: the events are
    /// [`Event::Delivered`] and then [`Event::PeerClosed`] if the client's
    /// FIN was held too. [`ShadowTable::on_segment`] already does this after
    /// every segment's ACK (so a pure ACK's outcome may deliver bytes); this
    /// is for callers that change the limit's inputs otherwise. Empty when
    /// nothing is held or the throttle is still on.
    pub fn release_input(&mut self, conn: &ConnKey) -> Vec<Event> {
        let cfg = self.config;
        let mut ev = Vec::new();
        if let Some(Entry::Open(o)) = self.entries.get_mut(conn) {
            o.release(&cfg, &mut ev);
        }
        ev
    }

    /// The output of `conn` not yet acknowledged by the client, in order.
    pub fn unacked_output(&self, conn: &ConnKey) -> Option<Vec<u8>> {
        match self.entries.get(conn)? {
            Entry::Open(o) => Some(o.out.unacked().iter().copied().collect()),
            _ => None,
        }
    }

    /// What a TCP_REPAIR restore of `conn` needs, at log time `now`.
    ///
    /// Available for an open connection (any state from ESTABLISHED to
    /// LAST_ACK: the state field says which, and a restore builds
    /// ESTABLISHED then `shutdown(SHUT_WR)` when our FIN is queued), and for a
    /// handshake whose SYN-ACK is logged (state SYN_RECV: restore it as
    /// ESTABLISHED with nothing sent, docs/architecture.md §3.5).
    ///
    /// - `recv_queue` is empty: every in-order byte was delivered to the
    ///   application (which is replicated) or is held back by the input
    ///   throttle in this table (replicated too: it is delivered from here,
    ///   never read from the restored socket); `rcv_nxt` is past both, as
    ///   the kernel acknowledged them. Out-of-order bytes are not carried
    ///   (the client retransmits them: SACK is advisory).
    /// - `send_queue` is all the unacknowledged output with `unsent_len` 0;
    ///   how much of it was really in flight is decided at restore time
    ///   (docs/architecture.md §3.5: up to the client's last ACK + window).
    /// - `write_seq` counts our FIN if one is queued, as the kernel does
    ///   (`SocketImage::snd_una()` allows for it); a restore queues the data
    ///   at write_seq − 1 − len.
    /// - `timestamp` is our clock's best lower bound — the client's latest
    ///   TSecr (or our SYN-ACK's TSval) plus the log time elapsed since —
    ///   plus `ts_jump` (the failover barrier's jump, docs/architecture.md §3.5), so our
    ///   TSval never goes behind what the client has seen.
    /// - the window: snd_wl1/snd_wnd/max_window as tcp_ack() left them;
    ///   rcv_wnd = W and rcv_wup = rcv_nxt, so the right edge we advertise
    ///   (rcv_nxt + W) is never left of any edge the kernel advertised, and
    ///   TCP_REPAIR_WINDOW's checks hold: snd_wl1 ≤ rcv_nxt + rcv_wnd (every
    ///   accepted segment starts at or before that edge), rcv_wup ≤ rcv_nxt,
    ///   max_window ≥ snd_wnd.
    pub fn image(&self, conn: &ConnKey, now: Millis, ts_jump: u32) -> Option<SocketImage> {
        let w = self.config.window_clamp;
        match self.entries.get(conn)? {
            Entry::Open(o) => {
                let rcv_nxt = o.rcv_nxt();
                let mut snd_wl1 = o.snd_wl1;
                if after(snd_wl1, rcv_nxt + w as usize) {
                    // Cannot happen (see above); keep the image restorable.
                    snd_wl1 = rcv_nxt;
                }
                Some(SocketImage {
                    local: conn.server,
                    peer: conn.client,
                    state: o.state().kernel_state(),
                    rcv_nxt: rcv_nxt.0,
                    write_seq: o.write_seq().0,
                    recv_queue: Vec::new(),
                    send_queue: o.out.unacked().iter().copied().collect(),
                    unsent_len: 0,
                    mss: u32::from(o.mss),
                    options: TcpOptions {
                        sack: o.sack_ok,
                        timestamps: o.ts_ok,
                        window_scale: o.wscale_ok.then_some(WindowScale {
                            snd: o.snd_wscale,
                            rcv: o.rcv_wscale,
                        }),
                    },
                    timestamp: o.ts_clock_at(now).unwrap_or(0).wrapping_add(ts_jump),
                    window: RepairWindow {
                        snd_wl1: snd_wl1.0,
                        snd_wnd: o.snd_wnd,
                        max_window: o.max_window.max(o.snd_wnd),
                        rcv_wnd: w,
                        rcv_wup: rcv_nxt.0,
                    },
                })
            }
            Entry::HalfOpen(h) => {
                let s = h.synack?;
                let ts_ok = h.syn.ts.is_some() && s.ts.is_some();
                let ws_ok = h.syn.wscale.is_some() && s.wscale.is_some();
                let rcv_nxt = (h.syn.isn + 1).0;
                let mss = h
                    .syn
                    .mss
                    .unwrap_or(if conn.server.is_ipv6() { 1220 } else { 536 });
                Some(SocketImage {
                    local: conn.server,
                    peer: conn.client,
                    state: TcpState::SynRecv,
                    rcv_nxt,
                    write_seq: (s.isn + 1).0,
                    recv_queue: Vec::new(),
                    send_queue: Vec::new(),
                    unsent_len: 0,
                    mss: u32::from(mss.max(64)),
                    options: TcpOptions {
                        sack: h.syn.sack_permitted && s.sack_permitted,
                        timestamps: ts_ok,
                        window_scale: ws_ok.then_some(WindowScale {
                            snd: h.syn.wscale.unwrap_or(0).min(14),
                            rcv: s.wscale.unwrap_or(0).min(14),
                        }),
                    },
                    timestamp: s
                        .ts
                        .filter(|_| ts_ok)
                        .map_or(0, |t| t.tsval.wrapping_add(now.since(s.at) as u32))
                        .wrapping_add(ts_jump),
                    // tcp_create_openreq_child(): snd_wl1 = the client's ISN,
                    // the SYN's window is never scaled.
                    window: RepairWindow {
                        snd_wl1: h.syn.isn.0,
                        snd_wnd: u32::from(h.syn.window),
                        max_window: u32::from(h.syn.window),
                        rcv_wnd: w,
                        rcv_wup: rcv_nxt,
                    },
                })
            }
            Entry::TimeWait(_) => None,
        }
    }

    /// A table holding `entries` (decoded from a snapshot), or what is wrong
    /// with them: every invariant the per-segment code relies on is checked.
    pub(crate) fn from_entries(
        config: ShadowConfig,
        entries: BTreeMap<ConnKey, Entry>,
    ) -> Result<ShadowTable, String> {
        if entries.len() > config.max_connections {
            return Err("more entries than max_connections".into());
        }
        let mut table = ShadowTable::new(config);
        for (key, entry) in &entries {
            if key.client.is_ipv4() != key.server.is_ipv4() {
                return Err("a connection of mixed families".into());
            }
            match entry {
                Entry::Open(o) => o.validate(&config).map_err(|e| format!("{key:?}: {e}"))?,
                Entry::HalfOpen(_) | Entry::TimeWait(_) => {}
            }
            table.count(entry.kind(), true);
        }
        if table.half_open > config.max_half_open {
            return Err("more handshakes than max_half_open".into());
        }
        table.entries = entries;
        Ok(table)
    }

    /// Every entry, in key order (what a snapshot writes).
    pub(crate) fn entries(&self) -> &BTreeMap<ConnKey, Entry> {
        &self.entries
    }

    /// The memory the table holds, and its bounds.
    pub fn memory(&self) -> MemoryReport {
        let mut reassembly = 0usize;
        let mut output = 0usize;
        let mut held_input = 0usize;
        let mut total = 0usize;
        for entry in self.entries.values() {
            total += slot_bytes() + entry.heap_bytes();
            if let Entry::Open(o) = entry {
                reassembly += o.rx.heap_bytes();
                output += o.out.heap_bytes();
                held_input += o.pending.capacity();
            }
        }
        let idle = slot_bytes() + std::mem::size_of::<Open>();
        let limit = usize::try_from(self.config.reassembly_limit()).unwrap_or(usize::MAX);
        // The buffer (a VecDeque may round its capacity up to twice what it
        // needs) plus one bit per byte, in 64-bit words (likewise).
        let reasm_max = limit
            .saturating_mul(2)
            .saturating_add(limit.div_ceil(64).saturating_mul(16));
        MemoryReport {
            half_open: self.half_open,
            open: self.open,
            time_wait: self.time_wait,
            total_bytes: total,
            reassembly_bytes: reassembly,
            output_bytes: output,
            held_input_bytes: held_input,
            bytes_per_idle_connection: idle,
            reassembly_bytes_max_per_connection: reasm_max,
            bound_bytes: self
                .config
                .max_connections
                .saturating_mul(idle.saturating_add(reasm_max)),
        }
    }

    /// A hash of the whole table (FNV-1a 64, entries in key order): equal on
    /// every replica that applied the same segments and calls.
    pub fn state_hash(&self) -> u64 {
        let mut h = Fnv64::new();
        h.u64(self.entries.len() as u64);
        for (key, entry) in &self.entries {
            hash_addr(&key.client, &mut h);
            hash_addr(&key.server, &mut h);
            match entry {
                Entry::HalfOpen(x) => {
                    h.bytes(&[1]);
                    x.hash_into(&mut h);
                }
                Entry::Open(x) => {
                    h.bytes(&[2]);
                    x.hash_into(&mut h);
                }
                Entry::TimeWait(x) => {
                    h.bytes(&[3]);
                    x.hash_into(&mut h);
                }
            }
        }
        h.finish()
    }
}
