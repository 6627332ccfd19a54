//! SYN-flood defence of the primary's capture path: handshakes that cost
//! the replicated state nothing until the client proves it can receive.
//!
//! docs/architecture.md §3.1 logs every SYN with its SYN-ACK, so every replica's shadow TCP
//! keeps a half-open entry for each handshake for up to
//! `half_open_timeout_ms`. A spoofed SYN never completes, so a flood of them
//! fills the half-open table and real clients are refused — on every replica
//! at once, because the table is replicated. The kernel answers the same
//! problem with SYN cookies: it keeps no state for a handshake until the
//! third ACK shows the client received the SYN-ACK. This module does the
//! same one level up:
//!
//! - **Logged mode** (few handshakes pending): unchanged. The SYN is
//!   released at once and logged lazily, its SYN-ACK is held and committed
//!   with it, so a handshake in flight survives a failover.
//! - **Cookie mode** (many pending: the logged half-open count plus the
//!   logged-mode SYNs admitted in the last [`RECENT_WINDOW_MS`], which
//!   covers those proposed but not yet applied, reaches
//!   [`SynDefence::cookie_above`]): the SYN and the kernel's SYN-ACK are
//!   both released at once and **not logged**; the primary remembers the
//!   pair in a bounded local table ([`CookieTable`], oldest evicted first).
//!   When the client's third ACK arrives (a pure ACK, or data with it), the
//!   primary proposes SYN + SYN-ACK + that packet in one entry, in that
//!   order, and releases the packet on commit. Every replica applies the
//!   three in order and shadow TCP goes from nothing to ESTABLISHED inside
//!   one entry: the handshake never occupies a half-open slot between
//!   entries, so a spoofed source can never hold one. Later packets of the
//!   connection that arrive before the entry is applied are logged after
//!   the handshake and held until committed, even a pure ACK (it would let
//!   the kernel accept the cookie before the log has the handshake). The
//!   daemon checks each such held packet once its entry is applied: if
//!   shadow TCP did not open the connection (its half-open table was full,
//!   say), the packet is dropped and the client gets a RST.
//!
//! Why this holds at line rate: a spoofed SYN in cookie mode costs one
//! bounded local table slot and nothing replicated; logged mode admits at
//! most about `cookie_above` handshakes per [`RECENT_WINDOW_MS`], so the
//! replicated half-open count stays near `cookie_above`, well below
//! `max_half_open`. The kernel's own syncookies stay on: its SYN queue fills
//! under the flood too and the SYN-ACK it sends is then a cookie, which is
//! fine: it is captured and remembered like any other.
//!
//! The cost (as with kernel cookies): a cookie-mode handshake whose third
//! ACK is not yet committed at a failover is lost. The next primary does
//! not know the connection; it answers the client's next packet with a RST
//! (see the daemon), so the client sees a refused connection, not a hang.
//! An ACK whose pair was evicted from the table gets the same answer.
//!
//! Everything here is local to the primary and never decides anything
//! inside apply: the log carries ordinary packets, and replicas stay
//! deterministic whatever this module decided. Time is passed in.

use std::collections::BTreeMap;

use crate::shadow::ConnKey;

/// Logged-mode SYNs are counted over this many milliseconds (a sliding
/// window of two halves) on top of the applied half-open count: long
/// enough to cover a proposal's way to commit and apply (a LAN round trip
/// and a disk write), short enough that a busy but honest service (many
/// connects per second, each pending for a millisecond or two) stays in
/// logged mode. If commits lag longer, more logged SYNs get in than
/// counted; `max_half_open` ≥ 2 × the threshold leaves room for them, and
/// a SYN over the bound is still refused with its SYN-ACK held back.
pub const RECENT_WINDOW_MS: u64 = 200;

/// A remembered cookie-mode handshake lives at most this long (the
/// kernel's SYN-ACK retransmissions end after about 63 s).
pub const COOKIE_TTL_MS: u64 = 64_000;

/// How a new SYN is to be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynMode {
    /// Logged with its SYN-ACK (docs/architecture.md §3.1).
    Logged,
    /// Released with its SYN-ACK unlogged; logged whole at the third ACK.
    Cookie,
}

/// Chooses between logged and cookie mode from the pending count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynDefence {
    cookie_above: usize,
    /// Logged-mode SYNs admitted in the current half-window and the one
    /// before it; `window_start` is when the current one began.
    current: usize,
    previous: usize,
    window_start: Option<u64>,
}

impl SynDefence {
    /// Cookie mode once `cookie_above` handshakes are pending (0: always).
    pub fn new(cookie_above: usize) -> SynDefence {
        SynDefence {
            cookie_above,
            current: 0,
            previous: 0,
            window_start: None,
        }
    }

    /// The threshold.
    pub fn cookie_above(&self) -> usize {
        self.cookie_above
    }

    fn roll(&mut self, now_ms: u64) {
        let half = RECENT_WINDOW_MS / 2;
        let start = *self.window_start.get_or_insert(now_ms);
        let elapsed = now_ms.saturating_sub(start);
        if elapsed >= 2 * half {
            self.previous = 0;
            self.current = 0;
            self.window_start = Some(now_ms);
        } else if elapsed >= half {
            self.previous = self.current;
            self.current = 0;
            self.window_start = Some(start + half);
        }
    }

    /// Handshakes counted as pending: `applied_half_open` (shadow TCP's
    /// count at the primary's applied index) plus recent logged-mode SYNs.
    pub fn pending(&mut self, applied_half_open: usize, now_ms: u64) -> usize {
        self.roll(now_ms);
        applied_half_open
            .saturating_add(self.current)
            .saturating_add(self.previous)
    }

    /// Decides the mode of a new SYN and counts it if it is logged.
    pub fn mode(&mut self, applied_half_open: usize, now_ms: u64) -> SynMode {
        if self.pending(applied_half_open, now_ms) >= self.cookie_above {
            SynMode::Cookie
        } else {
            self.current += 1;
            SynMode::Logged
        }
    }
}

/// Where a remembered handshake stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage {
    /// The client's SYN went to the kernel.
    Syn,
    /// The kernel answered with this SYN-ACK (its ISN), released unlogged.
    SynAck { isn: u32, synack: Vec<u8> },
    /// The third ACK came: the whole handshake is proposed.
    Proposed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    syn: Vec<u8>,
    stage: Stage,
    at_ms: u64,
    /// Its place in the eviction order.
    order: u64,
}

/// What the table says about a client packet on a tuple shadow TCP does
/// not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientPacket {
    /// Not a handshake this table remembers.
    Unknown,
    /// The third ACK (or data with it) of a remembered handshake: log
    /// `syn`, `synack`, then this packet, in one entry.
    Completes { syn: Vec<u8>, synack: Vec<u8> },
    /// The handshake is proposed already: the packet belongs to a
    /// connection the log is about to know.
    Proposed,
}

/// Counters of the table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CookieStats {
    /// Cookie-mode SYNs remembered.
    pub syns: u64,
    /// Handshakes completed (proposed whole).
    pub completed: u64,
    /// Entries evicted to make room (their third ACK, if it ever comes,
    /// is answered with a RST).
    pub evicted: u64,
    /// Entries that aged out.
    pub expired: u64,
}

/// The primary's local, bounded memory of cookie-mode handshakes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieTable {
    capacity: usize,
    entries: BTreeMap<ConnKey, Pending>,
    by_order: BTreeMap<u64, ConnKey>,
    next_order: u64,
    stats: CookieStats,
}

impl CookieTable {
    /// A table of at most `capacity` handshakes (at least 1).
    pub fn new(capacity: usize) -> CookieTable {
        CookieTable {
            capacity: capacity.max(1),
            entries: BTreeMap::new(),
            by_order: BTreeMap::new(),
            next_order: 0,
            stats: CookieStats::default(),
        }
    }

    /// Handshakes remembered now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Counters so far.
    pub fn stats(&self) -> CookieStats {
        self.stats
    }

    fn insert(&mut self, key: ConnKey, syn: Vec<u8>, now_ms: u64) {
        self.forget(&key);
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.by_order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
            self.stats.evicted += 1;
        }
        let order = self.next_order;
        self.next_order += 1;
        self.by_order.insert(order, key);
        self.entries.insert(
            key,
            Pending {
                syn,
                stage: Stage::Syn,
                at_ms: now_ms,
                order,
            },
        );
    }

    /// A cookie-mode SYN on `key` went to the kernel. A SYN retransmitted
    /// on a tuple whose handshake is already proposed changes nothing (the
    /// log is about to know the connection, and shadow TCP judges the SYN).
    pub fn on_syn(&mut self, key: ConnKey, syn: &[u8], now_ms: u64) {
        if self
            .entries
            .get(&key)
            .is_some_and(|p| p.stage == Stage::Proposed)
        {
            return;
        }
        self.stats.syns += 1;
        self.insert(key, syn.to_vec(), now_ms);
    }

    /// The kernel's SYN-ACK for `key`, with its ISN. Returns whether it
    /// answers a remembered cookie-mode SYN (then it is released unlogged,
    /// and remembered; a retransmitted or new cookie SYN-ACK replaces the
    /// previous one, as the client answers the latest).
    pub fn on_synack(&mut self, key: &ConnKey, isn: u32, synack: &[u8]) -> bool {
        match self.entries.get_mut(key) {
            Some(p) if p.stage != Stage::Proposed => {
                p.stage = Stage::SynAck {
                    isn,
                    synack: synack.to_vec(),
                };
                true
            }
            _ => false,
        }
    }

    /// A client packet on `key` that is no SYN and no RST, acknowledging
    /// `ack` (if it has the ACK flag).
    pub fn on_client(&mut self, key: &ConnKey, ack: Option<u32>) -> ClientPacket {
        let Some(p) = self.entries.get_mut(key) else {
            return ClientPacket::Unknown;
        };
        match &p.stage {
            Stage::Proposed => ClientPacket::Proposed,
            Stage::SynAck { isn, .. } if ack == Some(isn.wrapping_add(1)) => {
                let Stage::SynAck { synack, .. } = std::mem::replace(&mut p.stage, Stage::Proposed)
                else {
                    return ClientPacket::Unknown;
                };
                self.stats.completed += 1;
                ClientPacket::Completes {
                    syn: std::mem::take(&mut p.syn),
                    synack,
                }
            }
            // An ACK of something else (or none): the kernel would answer
            // it with a RST; it never reaches the log.
            _ => ClientPacket::Unknown,
        }
    }

    /// Whether `key`'s handshake is proposed and not yet forgotten.
    pub fn is_proposed(&self, key: &ConnKey) -> bool {
        self.entries
            .get(key)
            .is_some_and(|p| p.stage == Stage::Proposed)
    }

    /// Forgets `key` (shadow TCP knows it now, or its proposal was lost).
    pub fn forget(&mut self, key: &ConnKey) {
        if let Some(p) = self.entries.remove(key) {
            self.by_order.remove(&p.order);
        }
    }

    /// Forgets everything (the node stopped serving).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.by_order.clear();
    }

    /// Forgets handshakes older than [`COOKIE_TTL_MS`], and proposed ones
    /// for which `known` holds (shadow TCP has them now) or that are older
    /// than `proposed_ttl_ms` (their entry was lost). Call it now and then,
    /// not per packet: it scans the table.
    pub fn sweep(&mut self, now_ms: u64, proposed_ttl_ms: u64, known: impl Fn(&ConnKey) -> bool) {
        let mut gone = Vec::new();
        for (key, p) in &self.entries {
            let age = now_ms.saturating_sub(p.at_ms);
            let done = match p.stage {
                Stage::Proposed => known(key) || age >= proposed_ttl_ms,
                _ => age >= COOKIE_TTL_MS,
            };
            if done {
                gone.push(*key);
            }
        }
        for key in gone {
            if self
                .entries
                .get(&key)
                .is_some_and(|p| p.stage != Stage::Proposed)
            {
                self.stats.expired += 1;
            }
            self.forget(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, SocketAddr};

    fn key(port: u16) -> ConnKey {
        ConnKey {
            client: SocketAddr::from((Ipv4Addr::new(198, 18, 0, 2), port)),
            server: SocketAddr::from((Ipv4Addr::new(198, 18, 0, 100), 6379)),
        }
    }

    #[test]
    fn logged_mode_until_the_threshold_then_cookies() {
        let mut d = SynDefence::new(3);
        assert_eq!(d.mode(0, 0), SynMode::Logged);
        assert_eq!(d.mode(0, 10), SynMode::Logged);
        assert_eq!(d.mode(0, 20), SynMode::Logged);
        // Three logged SYNs in flight (not yet applied) count as pending.
        assert_eq!(d.mode(0, 30), SynMode::Cookie);
        assert_eq!(d.pending(0, 30), 3);
        // Applied half-open entries count too.
        let mut d = SynDefence::new(3);
        assert_eq!(d.mode(3, 0), SynMode::Cookie);
        assert_eq!(d.mode(2, 0), SynMode::Logged);
        // Recent SYNs stop counting after the window.
        let mut d = SynDefence::new(2);
        d.mode(0, 0);
        d.mode(0, 0);
        assert_eq!(d.mode(0, RECENT_WINDOW_MS / 2), SynMode::Cookie);
        assert_eq!(d.pending(0, RECENT_WINDOW_MS), 0);
        assert_eq!(d.mode(0, RECENT_WINDOW_MS), SynMode::Logged);
        // Threshold 0: every SYN in cookie mode.
        assert_eq!(SynDefence::new(0).mode(0, 0), SynMode::Cookie);
    }

    #[test]
    fn a_handshake_completes_at_the_third_ack_only() {
        let mut t = CookieTable::new(8);
        let k = key(1000);
        assert!(!t.on_synack(&k, 7, b"sa"), "no SYN remembered");
        t.on_syn(k, b"syn", 0);
        assert_eq!(
            t.on_client(&k, Some(8)),
            ClientPacket::Unknown,
            "no SYN-ACK yet"
        );
        assert!(t.on_synack(&k, 7, b"sa"));
        assert_eq!(t.on_client(&k, Some(9)), ClientPacket::Unknown, "wrong ACK");
        assert_eq!(t.on_client(&k, None), ClientPacket::Unknown, "no ACK flag");
        assert_eq!(
            t.on_client(&k, Some(8)),
            ClientPacket::Completes {
                syn: b"syn".to_vec(),
                synack: b"sa".to_vec()
            }
        );
        // What follows before the entry is applied belongs to it.
        assert_eq!(t.on_client(&k, Some(8)), ClientPacket::Proposed);
        assert!(!t.on_synack(&k, 7, b"sa"), "a late SYN-ACK is the log's");
        t.on_syn(k, b"syn2", 1);
        assert_eq!(t.on_client(&k, Some(8)), ClientPacket::Proposed);
        // Once shadow TCP knows it, the table forgets it.
        t.sweep(2, 5_000, |c| *c == k);
        assert!(t.is_empty());
        assert_eq!(t.stats().completed, 1);
    }

    #[test]
    fn a_new_synack_replaces_the_old_one() {
        let mut t = CookieTable::new(8);
        let k = key(1);
        t.on_syn(k, b"syn", 0);
        assert!(t.on_synack(&k, 100, b"old"));
        assert!(t.on_synack(&k, 200, b"new"));
        assert_eq!(t.on_client(&k, Some(101)), ClientPacket::Unknown);
        assert_eq!(
            t.on_client(&k, Some(201)),
            ClientPacket::Completes {
                syn: b"syn".to_vec(),
                synack: b"new".to_vec()
            }
        );
    }

    #[test]
    fn the_table_is_bounded_and_evicts_the_oldest() {
        let mut t = CookieTable::new(4);
        for port in 0..10u16 {
            t.on_syn(key(port), b"s", u64::from(port));
            t.on_synack(&key(port), u32::from(port), b"sa");
        }
        assert_eq!(t.len(), 4);
        assert_eq!(t.stats().evicted, 6);
        assert_eq!(t.on_client(&key(0), Some(1)), ClientPacket::Unknown);
        assert!(matches!(
            t.on_client(&key(9), Some(10)),
            ClientPacket::Completes { .. }
        ));
        // A retransmitted SYN refreshes its place.
        t.on_syn(key(6), b"s", 20);
        t.on_syn(key(100), b"s", 21);
        assert!(t.entries.contains_key(&key(6)));
        assert!(!t.entries.contains_key(&key(7)));
    }

    #[test]
    fn old_handshakes_and_lost_proposals_age_out() {
        let mut t = CookieTable::new(8);
        t.on_syn(key(1), b"s", 0);
        t.on_syn(key(2), b"s", 0);
        t.on_synack(&key(2), 5, b"sa");
        assert!(matches!(
            t.on_client(&key(2), Some(6)),
            ClientPacket::Completes { .. }
        ));
        t.sweep(4_999, 5_000, |_| false);
        assert_eq!(t.len(), 2);
        t.sweep(5_000, 5_000, |_| false);
        assert_eq!(t.len(), 1, "the lost proposal is forgotten");
        t.sweep(COOKIE_TTL_MS, 5_000, |_| false);
        assert!(t.is_empty());
        assert_eq!(t.stats().expired, 1);
    }

    proptest! {
        /// Whatever arrives, the table never holds more than its capacity,
        /// its two indexes agree, and a handshake completes only with the
        /// SYN and SYN-ACK it was given.
        #[test]
        fn bounded_and_consistent(ops in proptest::collection::vec((0u8..4, 0u16..16, 0u32..4), 0..300)) {
            let mut t = CookieTable::new(5);
            for (i, (op, port, isn)) in ops.into_iter().enumerate() {
                let k = key(port);
                let now = i as u64 * 100;
                match op {
                    0 => t.on_syn(k, &port.to_be_bytes(), now),
                    1 => { t.on_synack(&k, isn, &isn.to_be_bytes()); }
                    2 => {
                        if let ClientPacket::Completes { syn, synack } = t.on_client(&k, Some(isn.wrapping_add(1))) {
                            prop_assert_eq!(syn, port.to_be_bytes().to_vec());
                            prop_assert_eq!(synack, isn.to_be_bytes().to_vec());
                        }
                    }
                    _ => t.sweep(now, 1_000, |c| c.client.port() % 2 == 0),
                }
                prop_assert!(t.len() <= 5);
                prop_assert_eq!(t.entries.len(), t.by_order.len());
                for (order, k) in &t.by_order {
                    prop_assert_eq!(t.entries.get(k).map(|p| p.order), Some(*order));
                }
            }
        }
    }
}
