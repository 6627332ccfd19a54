//! Which captured packets wait for commit, which go at once, which are junk.
//!
//! DESIGN §3.1. The primary holds every client packet in NFQUEUE; what it
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
//! Time is passed in (milliseconds), so the limiter is deterministic.

pub use crate::shadow::Direction;

/// What the capture path does with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Propose to the log; give the verdict ACCEPT once committed.
    Commit,
    /// ACCEPT now; log lazily, in order, with the next batch.
    Release,
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
}
