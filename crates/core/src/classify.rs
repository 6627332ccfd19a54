//! Which captured packets wait for commit, which go at once, which are junk.
//!
//! docs/architecture.md §3.1. The primary holds every client packet in NFQUEUE; what it
//! does with each depends only on the packet and on whether shadow TCP knows
//! its connection:
//! - what carries client bytes or changes the connection's life — payload,
//!   FIN, RST — is proposed to the log and released to the kernel only once
//!   committed ([`Class::Commit`]): whatever the kernel ACKs is already on a
//!   majority (invariant I1);
//! - a pure ACK carries no client bytes: released at once and logged lazily,
//!   in order, with the next batch ([`Class::Release`]);
//! - a SYN is released at once ([`Class::Release`]); the server's SYN-ACK,
//!   captured on OUTPUT, is held ([`Class::Commit`]) and committed together
//!   with the SYN before it leaves, so the server side of every handshake is
//!   logged before the client can use it;
//! - junk never reaches the log ([`Class::Junk`]): malformed packets, packets
//!   that match no connection and are no valid SYN, SYNs over the rate limit.
//!
//! Under a SYN flood, new handshakes switch to cookie mode
//! ([`crate::cookie`]): SYN and SYN-ACK go at once, unlogged
//! ([`Class::Pass`]), and the whole handshake is logged at the client's
//! third ACK ([`Admit::Handshake`]). [`SynGuard`] puts the rate limit, the
//! mode choice and the cookie table in front of [`classify`].
//!
//! Time is passed in (milliseconds), so the limiter is deterministic.

use crate::cookie::{ClientPacket, CookieStats, CookieTable, SynDefence, SynMode};
use crate::shadow::ConnKey;
pub use crate::shadow::Direction;

/// What the capture path does with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Propose to the log; give the verdict ACCEPT once committed.
    Commit,
    /// ACCEPT now; log lazily, in order, with the next batch.
    Release,
    /// ACCEPT now; never logged by itself: a cookie-mode SYN or SYN-ACK,
    /// logged with the handshake's third ACK ([`crate::cookie`]).
    Pass,
    /// DROP now; never logged.
    Junk(JunkReason),
}

/// Why a packet was dropped before the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum JunkReason {
    /// Not a parseable IPv4/IPv6 TCP packet.
    Malformed,
    /// Its TCP checksum was wrong (checked in user space because the kernel
    /// had not verified it).
    BadChecksum,
    /// It matches no connection and is no SYN opening one.
    NoConnection,
    /// A SYN beyond the rate limit.
    SynRateLimited,
    /// Something from the server other than a SYN-ACK.
    UnexpectedServerPacket,
}

/// The TCP facts classification looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketFacts {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
    pub payload_len: usize,
}

/// Classifies one parsed packet. `known` says whether shadow TCP has an
/// entry for its 4-tuple (half-open included).
pub fn classify(
    direction: Direction,
    facts: PacketFacts,
    known: bool,
    syn_limiter: &mut SynLimiter,
    now_ms: u64,
) -> Class {
    match direction {
        Direction::FromServer => {
            if facts.syn && facts.ack && !facts.rst {
                Class::Commit
            } else {
                Class::Junk(JunkReason::UnexpectedServerPacket)
            }
        }
        Direction::FromClient => {
            let opening_syn = facts.syn && !facts.ack && !facts.rst && !facts.fin;
            if known {
                if facts.payload_len > 0 || facts.fin || facts.rst {
                    Class::Commit
                } else {
                    // Pure ACKs, and SYNs on a known tuple (retransmitted,
                    // or reopening one): shadow TCP judges them as the
                    // kernel does, in log order.
                    Class::Release
                }
            } else if opening_syn {
                if syn_limiter.admit(now_ms) {
                    Class::Release
                } else {
                    Class::Junk(JunkReason::SynRateLimited)
                }
            } else {
                Class::Junk(JunkReason::NoConnection)
            }
        }
    }
}

/// What the capture path does with a packet, SYN defence included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// As [`classify`] says.
    Class(Class),
    /// The third ACK (or data with it) of a cookie-mode handshake: propose
    /// `syn`, `synack` and then this packet in one entry, this packet held
    /// until committed.
    Handshake { syn: Vec<u8>, synack: Vec<u8> },
}

/// One packet as [`SynGuard::admit`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    pub direction: Direction,
    pub facts: PacketFacts,
    /// The packet's connection.
    pub key: ConnKey,
    /// Its sequence number (a SYN-ACK's ISN) and acknowledgement number.
    pub seq: u32,
    pub ack: u32,
    /// The whole IP packet.
    pub bytes: &'a [u8],
}

/// The primary's front door for new connections: the SYN rate limit, the
/// choice between logged and cookie mode, and the cookie table. Local to
/// the primary (nothing here is replicated or decided inside apply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynGuard {
    limiter: SynLimiter,
    defence: SynDefence,
    cookies: CookieTable,
}

impl SynGuard {
    /// `limiter` admits new SYNs; cookie mode once `cookie_above`
    /// handshakes are pending; at most `cookie_table` cookie-mode
    /// handshakes remembered.
    pub fn new(limiter: SynLimiter, cookie_above: usize, cookie_table: usize) -> SynGuard {
        SynGuard {
            limiter,
            defence: SynDefence::new(cookie_above),
            cookies: CookieTable::new(cookie_table),
        }
    }

    /// Decides about one packet. `known`: shadow TCP has an entry for its
    /// tuple at the primary's applied index; `applied_half_open`: shadow
    /// TCP's pending handshakes there.
    pub fn admit(
        &mut self,
        packet: Seen<'_>,
        known: bool,
        applied_half_open: usize,
        now_ms: u64,
    ) -> Admit {
        let f = packet.facts;
        let key = packet.key;
        match packet.direction {
            Direction::FromServer => {
                if f.syn
                    && f.ack
                    && !f.rst
                    && self.cookies.on_synack(&key, packet.seq, packet.bytes)
                {
                    return Admit::Class(Class::Pass);
                }
                Admit::Class(classify(
                    packet.direction,
                    f,
                    known,
                    &mut self.limiter,
                    now_ms,
                ))
            }
            Direction::FromClient => {
                let opening_syn = f.syn && !f.ack && !f.rst && !f.fin;
                if known {
                    return Admit::Class(classify(
                        packet.direction,
                        f,
                        true,
                        &mut self.limiter,
                        now_ms,
                    ));
                }
                if self.cookies.is_proposed(&key) {
                    // Proposed as a cookie handshake: the log is about to
                    // know the connection, so its packets are logged after
                    // the handshake; all are held until committed (even a
                    // pure ACK: it would let the kernel accept the cookie
                    // before the handshake is in the log).
                    return match classify(packet.direction, f, true, &mut self.limiter, now_ms) {
                        Class::Release => Admit::Class(Class::Commit),
                        other => Admit::Class(other),
                    };
                }
                if opening_syn {
                    if !self.limiter.admit(now_ms) {
                        return Admit::Class(Class::Junk(JunkReason::SynRateLimited));
                    }
                    return match self.defence.mode(applied_half_open, now_ms) {
                        SynMode::Logged => {
                            // Logged: no cookie state may shadow the tuple.
                            self.cookies.forget(&key);
                            Admit::Class(Class::Release)
                        }
                        SynMode::Cookie => {
                            self.cookies.on_syn(key, packet.bytes, now_ms);
                            Admit::Class(Class::Pass)
                        }
                    };
                }
                if !f.syn && !f.rst {
                    let ack = f.ack.then_some(packet.ack);
                    if let ClientPacket::Completes { syn, synack } =
                        self.cookies.on_client(&key, ack)
                    {
                        return Admit::Handshake { syn, synack };
                    }
                }
                Admit::Class(Class::Junk(JunkReason::NoConnection))
            }
        }
    }

    /// Housekeeping: forgets completed handshakes shadow TCP knows now
    /// (`known`), proposals lost for `proposed_ttl_ms`, and old ones.
    pub fn sweep(&mut self, now_ms: u64, proposed_ttl_ms: u64, known: impl Fn(&ConnKey) -> bool) {
        self.cookies.sweep(now_ms, proposed_ttl_ms, known);
    }

    /// Forgets every cookie-mode handshake (the node stops serving: the
    /// next primary answers their ACKs with a RST).
    pub fn clear(&mut self) {
        self.cookies.clear();
    }

    /// Forgets one (its proposal was refused).
    pub fn forget(&mut self, key: &ConnKey) {
        self.cookies.forget(key);
    }

    /// SYNs refused by the rate limit so far.
    pub fn rate_limited(&self) -> u64 {
        self.limiter.rejected()
    }

    /// The cookie table's counters, and how many it holds now.
    pub fn cookie_stats(&self) -> (CookieStats, usize) {
        (self.cookies.stats(), self.cookies.len())
    }
}

/// A token bucket for new connections: `rate` SYNs per second on average,
/// bursts of up to `burst`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynLimiter {
    rate_per_sec: u64,
    burst: u64,
    /// Tokens, in thousandths, so sub-token refills are not lost.
    milli_tokens: u64,
    last_ms: Option<u64>,
    rejected: u64,
}

impl SynLimiter {
    /// A limiter that starts full.
    pub fn new(rate_per_sec: u64, burst: u64) -> SynLimiter {
        SynLimiter {
            rate_per_sec,
            burst: burst.max(1),
            milli_tokens: burst.max(1) * 1000,
            last_ms: None,
            rejected: 0,
        }
    }

    /// Takes a token if one is there at `now_ms`. Time going backwards
    /// refills nothing (and breaks nothing).
    pub fn admit(&mut self, now_ms: u64) -> bool {
        if let Some(last) = self.last_ms {
            let elapsed = now_ms.saturating_sub(last);
            let refill = elapsed.saturating_mul(self.rate_per_sec);
            self.milli_tokens = self
                .milli_tokens
                .saturating_add(refill)
                .min(self.burst * 1000);
        }
        self.last_ms = Some(self.last_ms.map_or(now_ms, |last| last.max(now_ms)));
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            self.rejected += 1;
            false
        }
    }

    /// SYNs refused so far.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Direction::*;

    fn facts(flags: &str, payload_len: usize) -> PacketFacts {
        PacketFacts {
            syn: flags.contains('S'),
            ack: flags.contains('A'),
            fin: flags.contains('F'),
            rst: flags.contains('R'),
            payload_len,
        }
    }

    #[test]
    fn the_table_of_design_3_1() {
        let mut limiter = SynLimiter::new(1000, 1000);
        // (direction, flags, payload, known) → class
        let cases = [
            (FromClient, "A", 10, true, Class::Commit),
            (FromClient, "FA", 0, true, Class::Commit),
            (FromClient, "R", 0, true, Class::Commit),
            (FromClient, "RA", 0, true, Class::Commit),
            (FromClient, "A", 0, true, Class::Release),
            (FromClient, "S", 0, true, Class::Release),
            (FromClient, "S", 0, false, Class::Release),
            (
                FromClient,
                "A",
                0,
                false,
                Class::Junk(JunkReason::NoConnection),
            ),
            (
                FromClient,
                "A",
                5,
                false,
                Class::Junk(JunkReason::NoConnection),
            ),
            (
                FromClient,
                "SA",
                0,
                false,
                Class::Junk(JunkReason::NoConnection),
            ),
            (
                FromClient,
                "SR",
                0,
                false,
                Class::Junk(JunkReason::NoConnection),
            ),
            (
                FromClient,
                "SF",
                0,
                false,
                Class::Junk(JunkReason::NoConnection),
            ),
            (
                FromClient,
                "R",
                0,
                false,
                Class::Junk(JunkReason::NoConnection),
            ),
            (FromServer, "SA", 0, true, Class::Commit),
            (FromServer, "SA", 0, false, Class::Commit),
            (
                FromServer,
                "A",
                3,
                true,
                Class::Junk(JunkReason::UnexpectedServerPacket),
            ),
            (
                FromServer,
                "SRA",
                0,
                true,
                Class::Junk(JunkReason::UnexpectedServerPacket),
            ),
        ];
        for (dir, flags, len, known, want) in cases {
            assert_eq!(
                classify(dir, facts(flags, len), known, &mut limiter, 0),
                want,
                "{dir:?} {flags} len {len} known {known}"
            );
        }
    }

    #[test]
    fn syns_are_rate_limited_and_refill_with_time() {
        let mut limiter = SynLimiter::new(100, 10);
        let syn = facts("S", 0);
        let admitted = (0..50)
            .filter(|_| classify(FromClient, syn, false, &mut limiter, 1_000) == Class::Release)
            .count();
        assert_eq!(admitted, 10, "the burst");
        assert_eq!(limiter.rejected(), 40);
        // 100/s: after 50 ms, five more.
        let admitted = (0..50)
            .filter(|_| classify(FromClient, syn, false, &mut limiter, 1_050) == Class::Release)
            .count();
        assert_eq!(admitted, 5);
        // Time going backwards refills nothing.
        assert!(!limiter.admit(10));
        // A known connection's SYN is not limited.
        assert_eq!(
            classify(FromClient, syn, true, &mut limiter, 1_050),
            Class::Release
        );
    }

    fn conn(port: u16) -> ConnKey {
        ConnKey {
            client: std::net::SocketAddr::from(([198, 18, 0, 2], port)),
            server: std::net::SocketAddr::from(([198, 18, 0, 100], 6379)),
        }
    }

    fn seen<'a>(
        direction: Direction,
        flags: &str,
        port: u16,
        seq: u32,
        ack: u32,
        bytes: &'a [u8],
    ) -> Seen<'a> {
        Seen {
            direction,
            facts: facts(flags, 0),
            key: conn(port),
            seq,
            ack,
            bytes,
        }
    }

    #[test]
    fn few_pending_handshakes_are_logged_as_before() {
        let mut g = SynGuard::new(SynLimiter::new(1000, 1000), 2, 16);
        let syn = seen(FromClient, "S", 1, 100, 0, b"syn");
        assert_eq!(g.admit(syn, false, 0, 0), Admit::Class(Class::Release));
        let synack = seen(FromServer, "SA", 1, 500, 101, b"synack");
        assert_eq!(g.admit(synack, false, 0, 0), Admit::Class(Class::Commit));
        // Its third ACK, once shadow TCP knows the connection, is released.
        let ack = seen(FromClient, "A", 1, 101, 501, b"ack");
        assert_eq!(g.admit(ack, true, 1, 0), Admit::Class(Class::Release));
    }

    #[test]
    fn under_a_flood_handshakes_are_logged_whole_at_the_third_ack() {
        let mut g = SynGuard::new(SynLimiter::new(100_000, 100_000), 2, 4);
        // Two logged SYNs in flight reach the threshold.
        for port in 1..=2 {
            let syn = seen(FromClient, "S", port, 1, 0, b"s");
            assert_eq!(g.admit(syn, false, 0, 0), Admit::Class(Class::Release));
        }
        // A spoofed flood: SYN and SYN-ACK pass unlogged, nothing completes.
        for port in 100..200 {
            let syn = seen(FromClient, "S", port, 7, 0, b"s");
            assert_eq!(g.admit(syn, false, 0, 1), Admit::Class(Class::Pass));
            let synack = seen(FromServer, "SA", port, 9, 8, b"sa");
            assert_eq!(g.admit(synack, false, 0, 1), Admit::Class(Class::Pass));
        }
        assert_eq!(g.cookie_stats().1, 4, "the table stays bounded");
        // A real client among them.
        let syn = seen(FromClient, "S", 5000, 1000, 0, b"real syn");
        assert_eq!(g.admit(syn, false, 0, 2), Admit::Class(Class::Pass));
        // Retransmitted: answered again (the kernel sends a SYN-ACK).
        assert_eq!(g.admit(syn, false, 0, 3), Admit::Class(Class::Pass));
        let synack = seen(FromServer, "SA", 5000, 777, 1001, b"real synack");
        assert_eq!(g.admit(synack, false, 0, 3), Admit::Class(Class::Pass));
        // An ACK of something else never reaches the log.
        let wrong = seen(FromClient, "A", 5000, 1001, 999, b"wrong");
        assert_eq!(
            g.admit(wrong, false, 0, 4),
            Admit::Class(Class::Junk(JunkReason::NoConnection))
        );
        // The third ACK, carrying data: the whole handshake is logged.
        let mut third = seen(FromClient, "A", 5000, 1001, 778, b"third");
        third.facts.payload_len = 14;
        assert_eq!(
            g.admit(third, false, 0, 4),
            Admit::Handshake {
                syn: b"real syn".to_vec(),
                synack: b"real synack".to_vec()
            }
        );
        // Its next packets, before the entry is applied, follow it.
        assert_eq!(g.admit(third, false, 0, 4), Admit::Class(Class::Commit));
        let ack = seen(FromClient, "A", 5000, 1015, 778, b"ack");
        assert_eq!(
            g.admit(ack, false, 0, 4),
            Admit::Class(Class::Commit),
            "even a pure ACK waits for the handshake's commit"
        );
        // Once applied, the table forgets it and shadow TCP knows it.
        g.sweep(5, 5_000, |k| *k == conn(5000));
        assert_eq!(g.admit(ack, true, 0, 5), Admit::Class(Class::Release));
        assert_eq!(
            g.admit(ack, false, 0, 5),
            Admit::Class(Class::Junk(JunkReason::NoConnection)),
            "an ACK nobody knows (the kernel would RST it)"
        );
        // When the flood ends and the applied count drops, logged mode again.
        let syn = seen(FromClient, "S", 6000, 1, 0, b"s");
        assert_eq!(
            g.admit(syn, false, 0, 5 + crate::cookie::RECENT_WINDOW_MS),
            Admit::Class(Class::Release)
        );
    }

    #[test]
    fn the_rate_limit_comes_first_and_a_server_packet_is_never_passed_blindly() {
        let mut g = SynGuard::new(SynLimiter::new(1, 1), 0, 4);
        let syn = seen(FromClient, "S", 1, 1, 0, b"s");
        assert_eq!(g.admit(syn, false, 0, 0), Admit::Class(Class::Pass));
        assert_eq!(
            g.admit(seen(FromClient, "S", 2, 1, 0, b"s"), false, 0, 0),
            Admit::Class(Class::Junk(JunkReason::SynRateLimited))
        );
        assert_eq!(g.rate_limited(), 1);
        // A SYN-ACK for a tuple with no cookie SYN goes the logged way.
        assert_eq!(
            g.admit(seen(FromServer, "SA", 3, 1, 2, b"sa"), false, 0, 0),
            Admit::Class(Class::Commit)
        );
        // A server RST is junk even on a remembered tuple.
        assert_eq!(
            g.admit(seen(FromServer, "RA", 1, 1, 2, b"r"), false, 0, 0),
            Admit::Class(Class::Junk(JunkReason::UnexpectedServerPacket))
        );
        // A client RST on a remembered handshake never completes it.
        g.admit(seen(FromServer, "SA", 1, 50, 2, b"sa"), false, 0, 0);
        assert_eq!(
            g.admit(seen(FromClient, "RA", 1, 2, 51, b"r"), false, 0, 0),
            Admit::Class(Class::Junk(JunkReason::NoConnection))
        );
        assert!(matches!(
            g.admit(seen(FromClient, "A", 1, 2, 51, b"a"), false, 0, 0),
            Admit::Handshake { .. }
        ));
    }
}
