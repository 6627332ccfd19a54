//! Robustness: no input makes any parser panic.
//!
//! This stands in for fuzzing. cargo-fuzz (libFuzzer) needs a nightly
//! toolchain and this project builds with stable Rust only, so every parser
//! is fed proptest-generated input instead: raw arbitrary bytes, and valid
//! packets with random bytes overwritten and random truncation (which get
//! past the first length and version checks far more often than random
//! bytes do). Each check also calls every getter of a view that
//! `new_checked` accepted, which is the promise these views make.
//!
//! CI runs 2,048 cases per test. For a long run:
//! `TANDEM_FUZZ_CASES=5000000 cargo test -p tandem-wire --release --test fuzz`.

mod common;

use common::*;
use proptest::collection::vec;
use proptest::prelude::*;
use tandem_wire::{
    ArpPacket, ArpRepr, EthernetFrame, EthernetRepr, IpTcpRepr, Ipv4Packet, Ipv4Repr, Ipv6Packet,
    Ipv6Repr, OptionsMode, ParseChecks, PseudoHeader, TcpOptionSet, TcpOptionsIter, TcpPacket,
    TcpRepr,
};

fn cases() -> u32 {
    std::env::var("TANDEM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048)
}

const ALL_CHECKS: [ParseChecks; 4] = [
    ParseChecks {
        verify_checksum: true,
        options: OptionsMode::Strict,
    },
    ParseChecks {
        verify_checksum: false,
        options: OptionsMode::Strict,
    },
    ParseChecks {
        verify_checksum: true,
        options: OptionsMode::Linux,
    },
    ParseChecks {
        verify_checksum: false,
        options: OptionsMode::Linux,
    },
];

fn ph() -> PseudoHeader {
    PseudoHeader::V4 {
        src: std::net::Ipv4Addr::new(10, 0, 0, 1),
        dst: std::net::Ipv4Addr::new(10, 0, 0, 2),
    }
}

/// Every parser and every getter of every view, on `bytes`.
fn exercise(bytes: &[u8]) {
    for checks in ALL_CHECKS {
        let _ = IpTcpRepr::parse(bytes, checks);
    }

    if let Ok(p) = Ipv4Packet::new_checked(bytes) {
        let _ = (
            p.version(),
            p.header_len(),
            p.dscp_ecn(),
            p.total_len(),
            p.ident(),
            p.dont_frag(),
            p.more_frags(),
            p.frag_offset(),
            p.is_fragment(),
            p.ttl(),
            p.protocol(),
            p.checksum(),
            p.src_addr(),
            p.dst_addr(),
            p.options(),
            p.payload(),
            p.verify_checksum(),
            p.expected_checksum(),
            p.pseudo_header(),
        );
        let _ = Ipv4Repr::parse(&p);
        let _ = p.into_payload();
    }
    // Parsing an unchecked view must be safe too: parse re-checks.
    let _ = Ipv4Repr::parse(&Ipv4Packet::new_unchecked(bytes));

    if let Ok(p) = Ipv6Packet::new_checked(bytes) {
        let _ = (
            p.version(),
            p.traffic_class(),
            p.flow_label(),
            p.payload_len(),
            p.next_header(),
            p.hop_limit(),
            p.src_addr(),
            p.dst_addr(),
            p.payload(),
            p.pseudo_header(),
        );
        let _ = Ipv6Repr::parse(&p);
    }
    let _ = Ipv6Repr::parse(&Ipv6Packet::new_unchecked(bytes));

    let ph = ph();
    if let Ok(p) = TcpPacket::new_checked(bytes) {
        let _ = (
            p.src_port(),
            p.dst_port(),
            p.seq_number(),
            p.ack_number(),
            p.header_len(),
            p.reserved_bits(),
            p.flags(),
            p.window_len(),
            p.checksum(),
            p.urgent_at(),
            p.options(),
            p.payload(),
            p.segment_len(),
            p.verify_checksum(&ph),
            p.expected_checksum(&ph),
        );
        for option in p.options_iter() {
            let _ = option;
        }
        for checks in ALL_CHECKS {
            if let Ok(repr) = TcpRepr::parse_with(&p, &ph, checks) {
                let _ = (repr.segment_len(), repr.seq_end(), repr.buffer_len());
            }
        }
    }
    let _ = TcpRepr::parse_with(
        &TcpPacket::new_unchecked(bytes),
        &ph,
        ParseChecks::default(),
    );

    // Raw bytes as an options area (any length up to and beyond 40).
    let _ = TcpOptionSet::parse(bytes);
    let _ = TcpOptionSet::parse_linux(bytes);
    for option in TcpOptionsIter::new(bytes) {
        let _ = option;
    }

    if let Ok(p) = ArpPacket::new_checked(bytes) {
        let _ = (
            p.hardware_type(),
            p.protocol_type(),
            p.hardware_len(),
            p.protocol_len(),
            p.operation(),
            p.source_hardware_addr(),
            p.source_protocol_addr(),
            p.target_hardware_addr(),
            p.target_protocol_addr(),
        );
        let _ = ArpRepr::parse(&p);
    }
    let _ = ArpRepr::parse(&ArpPacket::new_unchecked(bytes));

    if let Ok(f) = EthernetFrame::new_checked(bytes) {
        let _ = (f.dst_addr(), f.src_addr(), f.ethertype(), f.payload());
        let _ = EthernetRepr::parse(&f);
    }
    let _ = EthernetRepr::parse(&EthernetFrame::new_unchecked(bytes));
}

/// A valid IPv4 or IPv6 + TCP packet, then `edits` (position, value) and a
/// truncation point, all taken modulo the packet's length.
fn mutated_packet() -> impl Strategy<Value = Vec<u8>> {
    (
        tcp_case(),
        ip_for_tcp(),
        vec((any::<usize>(), any::<u8>()), 0..6),
        any::<usize>(),
        any::<bool>(),
    )
        .prop_map(|(case, ip, edits, cut, truncate)| {
            let whole = IpTcpRepr {
                ip,
                tcp: case.repr(),
            };
            let mut bytes = whole.to_bytes().expect("fitting options");
            for (at, value) in edits {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            if truncate {
                bytes.truncate(cut % (bytes.len() + 1));
            }
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..128)) {
        exercise(&bytes);
    }

    #[test]
    fn arbitrary_bytes_behind_an_ip_nibble_never_panic(first in prop_oneof![0x40u8..0x50, 0x60u8..0x70], rest in vec(any::<u8>(), 0..128)) {
        let mut bytes = vec![first];
        bytes.extend_from_slice(&rest);
        exercise(&bytes);
    }

    #[test]
    fn mutated_packets_never_panic(bytes in mutated_packet()) {
        exercise(&bytes);
        // And the part after a 20- or 40-byte IP header, as a bare segment.
        if bytes.len() > 40 {
            exercise(&bytes[20..]);
            exercise(&bytes[40..]);
        }
    }

    /// Emitting never panics either, whatever the buffer size.
    #[test]
    fn emit_into_any_buffer_never_panics(case in tcp_case_with(option_set(), 64), len in 0usize..200) {
        let repr = case.repr();
        let mut buf = vec![0u8; len];
        let _ = repr.emit(&mut TcpPacket::new_unchecked(&mut buf[..]), &ph());
        let whole = IpTcpRepr { ip: tandem_wire::IpRepr::V4(Ipv4Repr {
            src_addr: std::net::Ipv4Addr::LOCALHOST,
            dst_addr: std::net::Ipv4Addr::LOCALHOST,
            protocol: tandem_wire::IpProtocol::TCP,
            payload_len: 0, ttl: 1, dscp_ecn: 0, ident: 0,
            dont_frag: false, more_frags: false, frag_offset: 0,
        }), tcp: repr };
        let _ = whole.emit(&mut buf);
        let _ = repr.options.emit(&mut buf);
    }
}
