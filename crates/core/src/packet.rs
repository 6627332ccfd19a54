//! From a captured packet to what core consumes.
//!
//! The capture (NFQUEUE, in the node) parses each packet once with
//! `tandem-wire`; these functions turn that parse into shadow TCP's
//! [`Segment`], classification's [`PacketFacts`], and the RST the server's
//! kernel would answer an unknown packet with. They are pure, so the group
//! simulation, the takeover replay and the node share one conversion.

use std::net::SocketAddr;

use tandem_wire::{IpRepr, IpTcpRepr, Ipv4Repr, SeqNumber, TcpFlags};

use crate::classify::PacketFacts;
use crate::shadow::Segment;

/// The segment shadow TCP is fed, borrowing the packet's payload.
pub fn segment_of<'a>(repr: &IpTcpRepr<'a>) -> Segment<'a> {
    let (src, dst) = endpoints_of(repr);
    Segment {
        src,
        dst,
        seq: repr.tcp.seq_number,
        ack: repr.tcp.ack_number,
        flags: repr.tcp.flags,
        window: repr.tcp.window_len,
        options: repr.tcp.options,
        payload: repr.tcp.payload,
    }
}

/// The facts classification needs.
pub fn facts_of(repr: &IpTcpRepr<'_>) -> PacketFacts {
    let flags = repr.tcp.flags;
    PacketFacts {
        syn: flags.syn(),
        ack: flags.ack(),
        fin: flags.fin(),
        rst: flags.rst(),
        payload_len: repr.tcp.payload.len(),
    }
}

/// Source and destination of a parsed packet.
pub fn endpoints_of(repr: &IpTcpRepr<'_>) -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::new(repr.ip.src_addr(), repr.tcp.src_port),
        SocketAddr::new(repr.ip.dst_addr(), repr.tcp.dst_port),
    )
}

/// The RST the server's kernel would answer a client packet with when no
/// connection matches it (RFC 793 "reset generation"): `seq` = the packet's
/// ACK if it has one, else an ACK of everything it carried. `None` for a
/// RST (never answered) or an IPv6 packet (the raw sender is IPv4 only).
pub fn reset_for(repr: &IpTcpRepr<'_>) -> Option<Vec<u8>> {
    let flags = repr.tcp.flags;
    if flags.rst() {
        return None;
    }
    let IpRepr::V4(ip) = repr.ip else {
        return None;
    };
    let (seq, ack, out_flags) = if flags.ack() {
        (repr.tcp.ack_number, SeqNumber(0), TcpFlags::RST)
    } else {
        // A payload longer than 4 GiB cannot come off a wire.
        let len = u32::try_from(repr.tcp.payload.len())
            .unwrap_or(u32::MAX)
            .wrapping_add(u32::from(flags.syn()))
            .wrapping_add(u32::from(flags.fin()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use tandem_wire::tcp::ParseChecks;
    use tandem_wire::{SackBlock, SackBlocks, TcpOptionSet, Timestamps};

    fn packet(flags: TcpFlags, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
        packet_with(flags, seq, ack, TcpOptionSet::default(), payload)
    }

    fn packet_with(
        flags: TcpFlags,
        seq: u32,
        ack: u32,
        options: TcpOptionSet,
        payload: &[u8],
    ) -> Vec<u8> {
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
                options,
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
    fn a_segment_carries_every_field_shadow_tcp_reads() {
        let options = TcpOptionSet {
            mss: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
            sack_blocks: SackBlocks::from_slice(&[SackBlock {
                left: SeqNumber(10),
                right: SeqNumber(20),
            }])
            .unwrap(),
            timestamps: Some(Timestamps {
                tsval: 77,
                tsecr: 66,
            }),
        };
        let bytes = packet_with(TcpFlags::ACK | TcpFlags::FIN, 1000, 5000, options, b"hi");
        let repr = parse(&bytes);
        let seg = segment_of(&repr);
        assert_eq!(seg.src, "198.18.0.2:40000".parse().unwrap());
        assert_eq!(seg.dst, "198.18.0.100:6379".parse().unwrap());
        assert_eq!((seg.seq, seg.ack), (SeqNumber(1000), SeqNumber(5000)));
        assert_eq!(seg.flags, TcpFlags::ACK | TcpFlags::FIN);
        assert_eq!(seg.window, 502);
        assert_eq!(seg.options, options);
        assert_eq!(seg.payload, b"hi");
        // Payload plus the FIN.
        assert_eq!(seg.end_seq(), SeqNumber(1003));
        let facts = facts_of(&repr);
        assert!(facts.ack && facts.fin && !facts.syn && !facts.rst);
        assert_eq!(facts.payload_len, 2);
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
