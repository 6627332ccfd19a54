//! The capture path of a primary: NFQUEUE → parse → classify → verdicts.
//!
//! Packets come off the queue in batches, in the order the kernel queued
//! them (INPUT and OUTPUT share one queue, so a SYN is always seen before its
//! SYN-ACK). Each is parsed once; its TCP checksum is verified here when the
//! kernel has not (a packet with a checksum "not ready" never crossed a wire
//! and has nothing to verify). The caller decides each packet's fate — a
//! verdict now, or held for later (waiting for commit) — and the verdicts of
//! a batch go back in one system call.

use std::net::SocketAddr;
use tandem_core::classify::{Direction, PacketFacts};
use tandem_core::shadow::{
    SackBlock as ShadowSackBlock, SackBlocks, Segment, SegmentOptions, TcpFlags as ShadowFlags,
    Timestamps,
};
use tandem_sys::nfqueue::{ChecksumState, Hook, NfQueue, NfQueueError, QueuedPacket, Verdict};
use tandem_wire::tcp::{OptionsMode, ParseChecks};
use tandem_wire::{IpTcpRepr, WireError};

/// What to do with one packet of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Give this verdict now.
    Verdict(Verdict),
    /// Keep the packet queued; the caller gives its verdict later with
    /// [`CaptureLoop::release`].
    Hold,
}

/// Counters of a capture loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureStats {
    pub packets: u64,
    pub batches: u64,
    pub accepted: u64,
    pub dropped: u64,
    pub held: u64,
    pub malformed: u64,
    pub bad_checksum: u64,
    /// Batches lost because this reader fell behind (socket overrun).
    pub overruns: u64,
}

/// Parses a queued packet, verifying the TCP checksum only where the kernel
/// has not, and reading options as Linux does (a malformed option never
/// makes the kernel drop a segment, so it must not make us).
pub fn parse_queued(packet: &QueuedPacket) -> Result<IpTcpRepr<'_>, WireError> {
    IpTcpRepr::parse(
        &packet.payload,
        ParseChecks {
            verify_checksum: packet.checksum == ChecksumState::NotVerified,
            options: OptionsMode::Linux,
        },
    )
}

/// The direction of a queued packet: OUTPUT carries the server's SYN-ACKs.
pub fn direction_of(packet: &QueuedPacket) -> Direction {
    match packet.hook {
        Hook::Output => Direction::FromServer,
        _ => Direction::FromClient,
    }
}

/// The facts classification needs.
pub fn facts_of(repr: &IpTcpRepr<'_>) -> PacketFacts {
    use tandem_wire::TcpFlags;
    let flags = repr.tcp.flags;
    PacketFacts {
        syn: flags.contains(TcpFlags::SYN),
        ack: flags.contains(TcpFlags::ACK),
        fin: flags.contains(TcpFlags::FIN),
        rst: flags.contains(TcpFlags::RST),
        payload_len: repr.tcp.payload.len(),
    }
}

/// The segment shadow TCP is fed, borrowing the packet's payload.
pub fn segment_of<'a>(repr: &IpTcpRepr<'a>) -> Segment<'a> {
    let (src, dst) = endpoints_of(repr);
    let options = &repr.tcp.options;
    let mut sack = SackBlocks::default();
    for block in options.sack_blocks.as_slice() {
        sack.push(ShadowSackBlock {
            left: block.left.0,
            right: block.right.0,
        });
    }
    Segment {
        src,
        dst,
        seq: repr.tcp.seq_number.0,
        ack: repr.tcp.ack_number.0,
        flags: ShadowFlags(repr.tcp.flags.bits()),
        window: repr.tcp.window_len,
        options: SegmentOptions {
            mss: options.mss,
            wscale: options.window_scale,
            sack_permitted: options.sack_permitted,
            sack,
            timestamps: options.timestamps.map(|ts| Timestamps {
                tsval: ts.tsval,
                tsecr: ts.tsecr,
            }),
        },
        payload: repr.tcp.payload,
    }
}

/// The RST the server's kernel would answer a client packet with when no
/// connection matches it (RFC 793 "reset generation"): `seq` = the packet's
/// ACK if it has one, else an ACK of everything it carried. `None` for a
/// RST (never answered) or an IPv6 packet (the raw sender is IPv4 only).
pub fn reset_for(repr: &IpTcpRepr<'_>) -> Option<Vec<u8>> {
    use tandem_wire::{IpRepr, Ipv4Repr, SeqNumber, TcpFlags};
    let flags = repr.tcp.flags;
    if flags.contains(TcpFlags::RST) {
        return None;
    }
    let IpRepr::V4(ip) = repr.ip else {
        return None;
    };
    let (seq, ack, out_flags) = if flags.contains(TcpFlags::ACK) {
        (repr.tcp.ack_number, SeqNumber(0), TcpFlags::RST)
    } else {
        let len = repr.tcp.payload.len() as u32
            + u32::from(flags.contains(TcpFlags::SYN))
            + u32::from(flags.contains(TcpFlags::FIN));
        (
            SeqNumber(0),
            SeqNumber(repr.tcp.seq_number.0.wrapping_add(len)),
            TcpFlags::RST | TcpFlags::ACK,
        )
    };
    let reply = IpTcpRepr {
        ip: IpRepr::V4(Ipv4Repr::tcp(ip.dst_addr, ip.src_addr)),
        tcp: tandem_wire::tcp::Repr {
            src_port: repr.tcp.dst_port,
            dst_port: repr.tcp.src_port,
            seq_number: seq,
            ack_number: ack,
            flags: out_flags,
            window_len: 0,
            urgent_at: 0,
            options: Default::default(),
            payload: &[],
        },
    };
    reply.to_bytes().ok()
}

/// Source and destination of a parsed packet.
pub fn endpoints_of(repr: &IpTcpRepr<'_>) -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::new(repr.ip.src_addr(), repr.tcp.src_port),
        SocketAddr::new(repr.ip.dst_addr(), repr.tcp.dst_port),
    )
}

/// Reads batches from a queue and sends their verdicts.
pub struct CaptureLoop {
    queue: NfQueue,
    batch: Vec<QueuedPacket>,
    verdicts: Vec<(u32, Verdict)>,
    stats: CaptureStats,
}

impl CaptureLoop {
    pub fn new(queue: NfQueue) -> CaptureLoop {
        CaptureLoop {
            queue,
            batch: Vec::with_capacity(256),
            verdicts: Vec::with_capacity(256),
            stats: CaptureStats::default(),
        }
    }

    /// The queue underneath (to poll its descriptor, or read its number).
    pub fn queue(&self) -> &NfQueue {
        &self.queue
    }

    /// Counters so far.
    pub fn stats(&self) -> CaptureStats {
        self.stats
    }

    /// Reads one batch (blocking or not, as the queue is set), asks
    /// `decide` about each packet in order, sends the batch's verdicts in
    /// one call, and returns the packets held for later. A socket overrun is
    /// counted and reported as an empty batch: the kernel dropped those
    /// packets (fail closed), nothing was delivered unseen.
    pub fn poll<F>(&mut self, mut decide: F) -> Result<Vec<QueuedPacket>, NfQueueError>
    where
        F: FnMut(&QueuedPacket, Result<IpTcpRepr<'_>, WireError>) -> Decision,
    {
        self.batch.clear();
        match self.queue.recv_batch(&mut self.batch) {
            Ok(_) => {}
            Err(NfQueueError::Overrun { .. }) => {
                self.stats.overruns += 1;
                return Ok(Vec::new());
            }
            Err(err) => return Err(err),
        }
        self.stats.batches += 1;
        self.verdicts.clear();
        let mut held = Vec::new();
        for packet in self.batch.drain(..) {
            self.stats.packets += 1;
            let parsed = parse_queued(&packet);
            match &parsed {
                Err(WireError::BadChecksum { .. }) => self.stats.bad_checksum += 1,
                Err(_) => self.stats.malformed += 1,
                Ok(_) => {}
            }
            match decide(&packet, parsed) {
                Decision::Verdict(verdict) => {
                    match verdict {
                        Verdict::Accept => self.stats.accepted += 1,
                        Verdict::Drop => self.stats.dropped += 1,
                    }
                    self.verdicts.push((packet.id, verdict));
                }
                Decision::Hold => {
                    self.stats.held += 1;
                    held.push(packet);
                }
            }
        }
        if !self.verdicts.is_empty() {
            self.queue.verdicts(&self.verdicts)?;
        }
        Ok(held)
    }

    /// Gives held packets their verdicts, in any order.
    pub fn release(&mut self, verdicts: &[(u32, Verdict)]) -> Result<(), NfQueueError> {
        for (_, verdict) in verdicts {
            match verdict {
                Verdict::Accept => self.stats.accepted += 1,
                Verdict::Drop => self.stats.dropped += 1,
            }
        }
        self.queue.verdicts(verdicts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tandem_wire::{IpRepr, Ipv4Repr, SeqNumber, TcpFlags};

    fn packet(flags: TcpFlags, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
        IpTcpRepr {
            ip: IpRepr::V4(Ipv4Repr::tcp(
                Ipv4Addr::new(198, 18, 0, 2),
                Ipv4Addr::new(198, 18, 0, 100),
            )),
            tcp: tandem_wire::tcp::Repr {
                src_port: 40000,
                dst_port: 6379,
                seq_number: SeqNumber(seq),
                ack_number: SeqNumber(ack),
                flags,
                window_len: 502,
                urgent_at: 0,
                options: Default::default(),
                payload,
            },
        }
        .to_bytes()
        .unwrap()
    }

    fn parse(bytes: &[u8]) -> IpTcpRepr<'_> {
        IpTcpRepr::parse(bytes, ParseChecks::default()).unwrap()
    }

    #[test]
    fn an_unknown_packet_is_answered_with_the_kernels_reset() {
        // An ACK (with data): RST at its ACK number, back to the sender.
        let ack = packet(TcpFlags::ACK | TcpFlags::PSH, 1000, 5000, b"PING");
        let rst_bytes = reset_for(&parse(&ack)).unwrap();
        let rst = parse(&rst_bytes); // the checksum verifies
        assert_eq!(rst.ip.src_addr(), Ipv4Addr::new(198, 18, 0, 100));
        assert_eq!(rst.ip.dst_addr(), Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!((rst.tcp.src_port, rst.tcp.dst_port), (6379, 40000));
        assert_eq!(rst.tcp.flags, TcpFlags::RST);
        assert_eq!(rst.tcp.seq_number, SeqNumber(5000));
        // No ACK flag: RST|ACK acknowledging what it carried.
        let fin = packet(TcpFlags::FIN, 1000, 0, b"ab");
        let rst_bytes = reset_for(&parse(&fin)).unwrap();
        let rst = parse(&rst_bytes);
        assert_eq!(rst.tcp.flags, TcpFlags::RST | TcpFlags::ACK);
        assert_eq!(rst.tcp.ack_number, SeqNumber(1003));
        // A RST is never answered.
        assert_eq!(reset_for(&parse(&packet(TcpFlags::RST, 1, 0, b""))), None);
    }
}
