//! proptest strategies shared by the property and fuzz tests.

#![allow(dead_code)] // each test binary uses its own subset

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use tandem_wire::{
    ArpOperation, ArpRepr, EthernetAddress, IpProtocol, IpRepr, Ipv4Repr, Ipv6Repr, SackBlock,
    SackBlocks, SeqNumber, TcpFlags, TcpOptionSet, TcpRepr, Timestamps,
};

/// Sequence numbers, biased towards the wrap (the interesting region).
pub fn seq() -> impl Strategy<Value = SeqNumber> {
    prop_oneof![
        any::<u32>(),
        (u32::MAX - 70_000)..=u32::MAX,
        0u32..70_000,
        ((1u32 << 31) - 1000)..((1u32 << 31) + 1000),
    ]
    .prop_map(SeqNumber)
}

pub fn sack_blocks() -> impl Strategy<Value = SackBlocks> {
    vec((seq(), seq()), 0..=4).prop_map(|pairs| {
        let blocks: Vec<SackBlock> = pairs
            .into_iter()
            .map(|(left, right)| SackBlock { left, right })
            .collect();
        SackBlocks::from_slice(&blocks).expect("at most 4")
    })
}

/// Any option set, including ones too long to emit (the caller checks).
pub fn option_set() -> impl Strategy<Value = TcpOptionSet> {
    (
        option::of(any::<u16>()),
        option::of(any::<u8>()),
        any::<bool>(),
        sack_blocks(),
        option::of((any::<u32>(), any::<u32>())),
    )
        .prop_map(
            |(mss, window_scale, sack_permitted, sack_blocks, ts)| TcpOptionSet {
                mss,
                window_scale,
                sack_permitted,
                sack_blocks,
                timestamps: ts.map(|(tsval, tsecr)| Timestamps { tsval, tsecr }),
            },
        )
}

/// Option sets that fit in a header: SACK blocks are dropped until they do
/// (a map, not a filter, so that long runs never hit proptest's reject
/// limit).
pub fn fitting_option_set() -> impl Strategy<Value = TcpOptionSet> {
    option_set().prop_map(|mut options| {
        while options.emit_len() > 40 {
            let blocks = options.sack_blocks.as_slice();
            options.sack_blocks =
                SackBlocks::from_slice(&blocks[..blocks.len() - 1]).expect("fewer blocks");
        }
        options
    })
}

/// A TCP representation and the payload it borrows.
#[derive(Debug, Clone)]
pub struct TcpCase {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq_number: SeqNumber,
    pub ack_number: SeqNumber,
    pub flags: u8,
    pub window_len: u16,
    pub urgent_at: u16,
    pub options: TcpOptionSet,
    pub payload: Vec<u8>,
}

impl TcpCase {
    pub fn repr(&self) -> TcpRepr<'_> {
        TcpRepr {
            src_port: self.src_port,
            dst_port: self.dst_port,
            seq_number: self.seq_number,
            ack_number: self.ack_number,
            flags: TcpFlags::from_bits(self.flags),
            window_len: self.window_len,
            urgent_at: self.urgent_at,
            options: self.options,
            payload: &self.payload,
        }
    }
}

pub fn tcp_case_with(
    options: impl Strategy<Value = TcpOptionSet>,
    max_payload: usize,
) -> impl Strategy<Value = TcpCase> {
    (
        (any::<u16>(), any::<u16>(), seq(), seq(), any::<u8>()),
        (
            any::<u16>(),
            any::<u16>(),
            options,
            vec(any::<u8>(), 0..=max_payload),
        ),
    )
        .prop_map(
            |(
                (src_port, dst_port, seq_number, ack_number, flags),
                (window_len, urgent_at, options, payload),
            )| {
                TcpCase {
                    src_port,
                    dst_port,
                    seq_number,
                    ack_number,
                    flags,
                    window_len,
                    urgent_at,
                    options,
                    payload,
                }
            },
        )
}

pub fn tcp_case() -> impl Strategy<Value = TcpCase> {
    tcp_case_with(fitting_option_set(), 300)
}

/// Short segments, for tests that try every bit of a packet: payload bits
/// are all alike, header bits are what matters.
pub fn short_tcp_case() -> impl Strategy<Value = TcpCase> {
    tcp_case_with(fitting_option_set(), 24)
}

pub fn ipv4_addr() -> impl Strategy<Value = Ipv4Addr> {
    any::<[u8; 4]>().prop_map(Ipv4Addr::from)
}

pub fn ipv6_addr() -> impl Strategy<Value = Ipv6Addr> {
    any::<[u8; 16]>().prop_map(Ipv6Addr::from)
}

/// IPv4 representations: any field, fragments included, payload lengths up
/// to the maximum.
pub fn ipv4_repr() -> impl Strategy<Value = Ipv4Repr> {
    (
        (
            ipv4_addr(),
            ipv4_addr(),
            any::<u8>(),
            prop_oneof![0usize..2000, 65000usize..=65515],
        ),
        (
            any::<u8>(),
            any::<u8>(),
            any::<u16>(),
            any::<bool>(),
            any::<bool>(),
            0u16..8192,
        ),
    )
        .prop_map(
            |(
                (src_addr, dst_addr, protocol, payload_len),
                (ttl, dscp_ecn, ident, dont_frag, more_frags, units),
            )| {
                Ipv4Repr {
                    src_addr,
                    dst_addr,
                    protocol: IpProtocol(protocol),
                    payload_len,
                    ttl,
                    dscp_ecn,
                    ident,
                    dont_frag,
                    more_frags,
                    frag_offset: units * 8,
                }
            },
        )
}

/// IPv6 representations whose next header is an upper-layer protocol.
pub fn ipv6_repr() -> impl Strategy<Value = Ipv6Repr> {
    (
        ipv6_addr(),
        ipv6_addr(),
        // Extension headers are refused by parse; map them to TCP.
        any::<u8>().prop_map(|nh| {
            if IpProtocol(nh).is_ipv6_extension() {
                IpProtocol::TCP.0
            } else {
                nh
            }
        }),
        0usize..2000,
        any::<u8>(),
        any::<u8>(),
        0u32..(1 << 20),
    )
        .prop_map(
            |(src_addr, dst_addr, nh, payload_len, hop_limit, traffic_class, flow_label)| {
                Ipv6Repr {
                    src_addr,
                    dst_addr,
                    next_header: IpProtocol(nh),
                    payload_len,
                    hop_limit,
                    traffic_class,
                    flow_label,
                }
            },
        )
}

/// The IP header of an unfragmented TCP packet (payload length filled in by
/// `IpTcpRepr::emit`).
pub fn ip_for_tcp() -> impl Strategy<Value = IpRepr> {
    prop_oneof![
        ipv4_repr().prop_map(|r| IpRepr::V4(Ipv4Repr {
            protocol: IpProtocol::TCP,
            more_frags: false,
            frag_offset: 0,
            payload_len: 0,
            ..r
        })),
        ipv6_repr().prop_map(|r| IpRepr::V6(Ipv6Repr {
            next_header: IpProtocol::TCP,
            payload_len: 0,
            ..r
        })),
    ]
}

/// IP representations with the payload length the TCP segment will have.
pub fn with_len(ip: IpRepr, len: usize) -> IpRepr {
    match ip {
        IpRepr::V4(r) => IpRepr::V4(Ipv4Repr {
            payload_len: len,
            ..r
        }),
        IpRepr::V6(r) => IpRepr::V6(Ipv6Repr {
            payload_len: len,
            ..r
        }),
    }
}

pub fn mac() -> impl Strategy<Value = EthernetAddress> {
    any::<[u8; 6]>().prop_map(EthernetAddress)
}

pub fn arp_repr() -> impl Strategy<Value = ArpRepr> {
    (
        prop_oneof![Just(1u16), Just(2u16), any::<u16>()],
        mac(),
        ipv4_addr(),
        mac(),
        ipv4_addr(),
    )
        .prop_map(|(op, sha, spa, tha, tpa)| ArpRepr {
            operation: ArpOperation(op),
            source_hardware_addr: sha,
            source_protocol_addr: spa,
            target_hardware_addr: tha,
            target_protocol_addr: tpa,
        })
}
