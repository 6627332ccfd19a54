//! Hand-built packets for every refusal this crate can report, and for the
//! TCP options the capture on `lo` cannot produce (SACK blocks, unknown and
//! malformed options), in both option modes.

use std::net::{Ipv4Addr, Ipv6Addr};

use tandem_wire::tcp::kind;
use tandem_wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, IpProtocol, IpRepr,
    IpTcpRepr, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, Layer, OptionsMode, ParseChecks,
    PseudoHeader, SackBlock, SackBlocks, SeqNumber, TcpFlags, TcpOption, TcpOptionSet, TcpPacket,
    TcpRepr, Timestamps, Unsupported, WireError,
};

const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const PH: PseudoHeader = PseudoHeader::V4 { src: SRC, dst: DST };

/// A TCP segment with the given raw option bytes (a multiple of 4) and
/// payload, flags ACK, a valid checksum over [`PH`].
fn segment(options: &[u8], payload: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let header_len = 20 + options.len();
    let mut buf = vec![0u8; header_len + payload.len()];
    buf[0..2].copy_from_slice(&40000u16.to_be_bytes());
    buf[2..4].copy_from_slice(&6379u16.to_be_bytes());
    buf[4..8].copy_from_slice(&0xfffffff0u32.to_be_bytes());
    buf[8..12].copy_from_slice(&0x01020304u32.to_be_bytes());
    buf[12] = ((header_len / 4) as u8) << 4;
    buf[13] = 0x10;
    buf[14..16].copy_from_slice(&502u16.to_be_bytes());
    buf[20..header_len].copy_from_slice(options);
    buf[header_len..].copy_from_slice(payload);
    let mut packet = TcpPacket::new_unchecked(&mut buf[..]);
    packet.fill_checksum(&PH);
    buf
}

fn parse_mode(bytes: &[u8], options: OptionsMode) -> tandem_wire::Result<TcpRepr<'_>> {
    let packet = TcpPacket::new_checked(bytes)?;
    TcpRepr::parse_with(
        &packet,
        &PH,
        ParseChecks {
            verify_checksum: true,
            options,
        },
    )
}

#[test]
fn sack_blocks_one_to_four() {
    for n in 1..=4usize {
        let mut options = vec![kind::NOP, kind::NOP, kind::SACK, (2 + 8 * n) as u8];
        let mut blocks = Vec::new();
        for i in 0..n as u32 {
            // Blocks across the wrap: left near 2^32, right past zero.
            let left = 0xffff_ff00u32.wrapping_add(i * 0x100);
            let right = left.wrapping_add(0x80);
            options.extend_from_slice(&left.to_be_bytes());
            options.extend_from_slice(&right.to_be_bytes());
            blocks.push(SackBlock {
                left: SeqNumber(left),
                right: SeqNumber(right),
            });
        }
        let bytes = segment(&options, b"");
        let repr = parse_mode(&bytes, OptionsMode::Strict).unwrap();
        assert_eq!(
            repr.options.sack_blocks.as_slice(),
            &blocks[..],
            "{n} blocks"
        );
        assert_eq!(repr.options, TcpOptionSet::parse_linux(&options));
        // The strict iterator sees NOP, NOP, SACK.
        let packet = TcpPacket::new_checked(&bytes[..]).unwrap();
        let items: Vec<_> = packet.options_iter().collect();
        assert_eq!(items.len(), 3);
        assert_eq!(
            items[2],
            Ok(TcpOption::Sack(SackBlocks::from_slice(&blocks).unwrap()))
        );
        // Emitting gives the same bytes back.
        let mut out = vec![0; bytes.len()];
        repr.emit(&mut TcpPacket::new_unchecked(&mut out[..]), &PH)
            .unwrap();
        assert_eq!(out, bytes);
    }
}

#[test]
fn unknown_options_are_skipped_by_length() {
    // MD5 signature (19, 18 bytes), a TFO cookie (34, 10 bytes), an
    // experimental option (254, 4 bytes), then MSS, NOP, NOP, EOL, and one
    // byte after EOL: the full 40 bytes.
    let mut options = vec![19, 18];
    options.extend_from_slice(&[0xaa; 16]);
    options.extend_from_slice(&[34, 10, 1, 2, 3, 4, 5, 6, 7, 8]);
    options.extend_from_slice(&[254, 4, 0xf9, 0x89]);
    options.extend_from_slice(&[kind::MSS, 4, 0x05, 0xb4, kind::NOP, kind::NOP, kind::EOL, 0]);
    assert_eq!(options.len(), 40);
    let bytes = segment(&options, b"x");
    let repr = parse_mode(&bytes, OptionsMode::Strict).unwrap();
    assert_eq!(
        repr.options,
        TcpOptionSet {
            mss: Some(1460),
            ..TcpOptionSet::default()
        }
    );
    let packet = TcpPacket::new_checked(&bytes[..]).unwrap();
    let items: Vec<_> = packet.options_iter().map(Result::unwrap).collect();
    assert_eq!(
        items,
        vec![
            TcpOption::Unknown {
                kind: 19,
                data: &[0xaa; 16]
            },
            TcpOption::Unknown {
                kind: 34,
                data: &[1, 2, 3, 4, 5, 6, 7, 8]
            },
            TcpOption::Unknown {
                kind: 254,
                data: &[0xf9, 0x89]
            },
            TcpOption::MaxSegmentSize(1460),
            TcpOption::NoOperation,
            TcpOption::NoOperation,
            TcpOption::EndOfList,
        ]
    );
    assert_eq!(repr.payload, b"x");
}

#[test]
fn bytes_after_end_of_list_are_ignored() {
    let options = [kind::EOL, kind::MSS, 0, 0xff];
    let bytes = segment(&options, b"");
    let repr = parse_mode(&bytes, OptionsMode::Strict).unwrap();
    assert_eq!(repr.options, TcpOptionSet::default());
}

/// (option bytes, strict error, what Linux's parser keeps).
fn malformed_cases() -> Vec<(&'static str, Vec<u8>, WireError, TcpOptionSet)> {
    let mss = |v| TcpOptionSet {
        mss: Some(v),
        ..TcpOptionSet::default()
    };
    let ws = TcpOptionSet {
        window_scale: Some(7),
        ..TcpOptionSet::default()
    };
    vec![
        (
            "length 0",
            vec![kind::NOP, kind::WINDOW_SCALE, 3, 7, kind::MSS, 0, 0, 0],
            WireError::BadOption { kind: 2, len: 0 },
            ws,
        ),
        (
            "length 1",
            vec![kind::NOP, kind::WINDOW_SCALE, 3, 7, 99, 1, 0, 0],
            WireError::BadOption { kind: 99, len: 1 },
            ws,
        ),
        (
            "running past the header",
            vec![kind::MSS, 4, 0x05, 0xb4, kind::TIMESTAMPS, 10, 0, 0],
            WireError::BadOption { kind: 8, len: 10 },
            mss(1460),
        ),
        (
            "kind without a length byte",
            vec![
                kind::MSS,
                4,
                0x05,
                0xb4,
                kind::NOP,
                kind::NOP,
                kind::NOP,
                30,
            ],
            WireError::BadOption { kind: 30, len: 0 },
            mss(1460),
        ),
        (
            "MSS of the wrong length",
            vec![
                kind::MSS,
                3,
                0x05,
                kind::NOP,
                kind::NOP,
                kind::WINDOW_SCALE,
                3,
                7,
            ],
            WireError::BadOption { kind: 2, len: 3 },
            ws,
        ),
        (
            "window scale of the wrong length",
            vec![kind::WINDOW_SCALE, 4, 7, 7, kind::MSS, 4, 0x05, 0xb4],
            WireError::BadOption { kind: 3, len: 4 },
            mss(1460),
        ),
        (
            "SACK-permitted with a body",
            vec![kind::SACK_PERMITTED, 4, 0, 0, kind::MSS, 4, 0x05, 0xb4],
            WireError::BadOption { kind: 4, len: 4 },
            mss(1460),
        ),
        (
            "timestamps of the wrong length",
            vec![
                kind::TIMESTAMPS,
                8,
                0,
                0,
                0,
                1,
                0,
                0,
                kind::MSS,
                4,
                0x05,
                0xb4,
            ],
            WireError::BadOption { kind: 8, len: 8 },
            mss(1460),
        ),
        (
            "SACK not a whole number of blocks",
            vec![
                kind::SACK,
                6,
                0,
                0,
                0,
                1,
                kind::MSS,
                4,
                0x05,
                0xb4,
                kind::NOP,
                kind::NOP,
            ],
            WireError::BadOption { kind: 5, len: 6 },
            mss(1460),
        ),
        (
            "SACK with no block",
            vec![
                kind::SACK,
                2,
                kind::MSS,
                4,
                0x05,
                0xb4,
                kind::NOP,
                kind::NOP,
            ],
            WireError::BadOption { kind: 5, len: 2 },
            mss(1460),
        ),
    ]
}

#[test]
fn malformed_options_strict_errors_and_linux_leniency() {
    for (name, options, error, linux) in malformed_cases() {
        let bytes = segment(&options, b"data");
        assert_eq!(
            parse_mode(&bytes, OptionsMode::Strict),
            Err(error),
            "{name}: strict"
        );
        assert_eq!(TcpOptionSet::parse(&options), Err(error), "{name}");
        // The strict iterator yields the error once, then stops.
        let packet = TcpPacket::new_checked(&bytes[..]).unwrap();
        let items: Vec<_> = packet.options_iter().collect();
        assert_eq!(items.last(), Some(&Err(error)), "{name}: iterator");
        assert_eq!(items.iter().filter(|i| i.is_err()).count(), 1);
        // Linux accepts the segment and keeps what it would keep.
        let repr = parse_mode(&bytes, OptionsMode::Linux).unwrap();
        assert_eq!(repr.options, linux, "{name}: linux");
        assert_eq!(repr.payload, b"data");
    }
}

#[test]
fn tcp_header_length_errors() {
    // Shorter than 20 bytes.
    assert_eq!(
        TcpPacket::new_checked(&[0u8; 19][..]).unwrap_err(),
        WireError::Truncated {
            needed: 20,
            got: 19
        }
    );
    // Data offset below 5.
    let mut bytes = segment(&[], b"");
    bytes[12] = 4 << 4;
    assert_eq!(
        TcpPacket::new_checked(&bytes[..]).unwrap_err(),
        WireError::BadHeaderLength {
            len: 16,
            min: 20,
            max: 20
        }
    );
    // Data offset past the segment.
    let mut bytes = segment(&[], b"abc");
    bytes[12] = 6 << 4;
    assert_eq!(
        TcpPacket::new_checked(&bytes[..]).unwrap_err(),
        WireError::BadHeaderLength {
            len: 24,
            min: 20,
            max: 23
        }
    );
    // Data offset equal to the segment: no payload, fine.
    let bytes = segment(&[kind::NOP; 4], b"");
    assert_eq!(TcpPacket::new_checked(&bytes[..]).unwrap().payload(), b"");
}

#[test]
fn tcp_checksum_errors_name_the_expected_value() {
    let mut bytes = segment(&[], b"hello");
    let good = u16::from_be_bytes([bytes[16], bytes[17]]);
    bytes[16] ^= 0x01;
    let packet = TcpPacket::new_checked(&bytes[..]).unwrap();
    assert!(!packet.verify_checksum(&PH));
    assert_eq!(
        TcpRepr::parse(&packet, &PH),
        Err(WireError::BadChecksum {
            layer: Layer::Tcp,
            found: good ^ 0x0100,
            expected: good,
        })
    );
    // Under another pseudo-header the good checksum fails too.
    bytes[16] ^= 0x01;
    let packet = TcpPacket::new_checked(&bytes[..]).unwrap();
    let other = PseudoHeader::V4 {
        src: SRC,
        dst: Ipv4Addr::new(198, 18, 0, 101),
    };
    assert!(packet.verify_checksum(&PH));
    assert!(!packet.verify_checksum(&other));
}

#[test]
fn flags_every_combination_round_trips() {
    for bits in 0..=255u8 {
        let flags = TcpFlags::from_bits(bits);
        let repr = TcpRepr {
            src_port: 1,
            dst_port: 2,
            seq_number: SeqNumber(u32::MAX),
            ack_number: SeqNumber(7),
            flags,
            window_len: 3,
            urgent_at: 4,
            options: TcpOptionSet::default(),
            payload: b"p",
        };
        let mut buf = vec![0; repr.buffer_len()];
        let mut packet = TcpPacket::new_unchecked(&mut buf[..]);
        repr.emit(&mut packet, &PH).unwrap();
        let packet = TcpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(packet.flags().bits(), bits);
        assert_eq!(packet.flags().fin(), bits & 0x01 != 0);
        assert_eq!(packet.flags().syn(), bits & 0x02 != 0);
        assert_eq!(packet.flags().rst(), bits & 0x04 != 0);
        assert_eq!(packet.flags().psh(), bits & 0x08 != 0);
        assert_eq!(packet.flags().ack(), bits & 0x10 != 0);
        assert_eq!(packet.flags().urg(), bits & 0x20 != 0);
        assert_eq!(packet.flags().ece(), bits & 0x40 != 0);
        assert_eq!(packet.flags().cwr(), bits & 0x80 != 0);
        let parsed = TcpRepr::parse(&packet, &PH).unwrap();
        assert_eq!(parsed, repr);
        let expected_len = 1 + usize::from(flags.syn()) + usize::from(flags.fin());
        assert_eq!(parsed.segment_len(), expected_len);
        assert_eq!(parsed.seq_end(), SeqNumber(u32::MAX) + expected_len);
    }
    assert_eq!(format!("{:?}", TcpFlags::SYN | TcpFlags::ACK), "SYN|ACK");
    assert_eq!(format!("{}", TcpFlags::empty()), "-");
}

#[test]
fn tcp_emit_errors() {
    let too_long = TcpOptionSet {
        sack_blocks: SackBlocks::from_slice(&[SackBlock::default(); 4]).unwrap(),
        timestamps: Some(Timestamps { tsval: 1, tsecr: 2 }),
        ..TcpOptionSet::default()
    };
    let repr = TcpRepr {
        src_port: 1,
        dst_port: 2,
        seq_number: SeqNumber(0),
        ack_number: SeqNumber(0),
        flags: TcpFlags::ACK,
        window_len: 0,
        urgent_at: 0,
        options: too_long,
        payload: b"",
    };
    let mut buf = [0u8; 100];
    assert_eq!(
        repr.emit(&mut TcpPacket::new_unchecked(&mut buf[..]), &PH),
        Err(WireError::OptionsTooLong(48))
    );
    let repr = TcpRepr {
        options: TcpOptionSet::default(),
        payload: b"abc",
        ..repr
    };
    assert_eq!(
        repr.emit(&mut TcpPacket::new_unchecked(&mut buf[..22]), &PH),
        Err(WireError::Truncated {
            needed: 23,
            got: 22
        })
    );
    assert_eq!(
        repr.emit(&mut TcpPacket::new_unchecked(&mut buf[..24]), &PH),
        Err(WireError::BufferTooLong {
            needed: 23,
            got: 24
        })
    );
    assert_eq!(
        SackBlocks::from_slice(&[SackBlock::default(); 5]),
        Err(WireError::TooManySackBlocks(5))
    );
}

fn ipv4_packet(payload: &[u8]) -> Vec<u8> {
    let repr = Ipv4Repr {
        src_addr: SRC,
        dst_addr: DST,
        protocol: IpProtocol::TCP,
        payload_len: payload.len(),
        ttl: 64,
        dscp_ecn: 0,
        ident: 1,
        dont_frag: true,
        more_frags: false,
        frag_offset: 0,
    };
    let mut buf = vec![0; repr.buffer_len()];
    let mut packet = Ipv4Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut packet).unwrap();
    packet.payload_mut().copy_from_slice(payload);
    buf
}

/// Sets a byte of an IPv4 header and fixes the header checksum, so that
/// only the intended inconsistency remains.
fn with_byte(mut bytes: Vec<u8>, at: usize, value: u8) -> Vec<u8> {
    bytes[at] = value;
    let header_len = usize::from(bytes[0] & 0x0f) * 4;
    if header_len >= 20 && header_len <= bytes.len() {
        bytes[10] = 0;
        bytes[11] = 0;
        let c = tandem_wire::checksum::internet_checksum(&bytes[..header_len]);
        bytes[10..12].copy_from_slice(&c.to_be_bytes());
    }
    bytes
}

#[test]
fn ipv4_errors() {
    let good = ipv4_packet(&segment(&[], b"hi"));
    assert!(Ipv4Repr::parse(&Ipv4Packet::new_checked(&good[..]).unwrap()).is_ok());

    let check = |bytes: &[u8]| Ipv4Packet::new_checked(bytes).map(|_| ());
    assert_eq!(
        check(&good[..19]),
        Err(WireError::Truncated {
            needed: 20,
            got: 19
        })
    );
    assert_eq!(check(&[]), Err(WireError::Truncated { needed: 20, got: 0 }));
    assert_eq!(
        check(&with_byte(good.clone(), 0, 0x65)),
        Err(WireError::BadVersion(6))
    );
    assert_eq!(
        check(&with_byte(good.clone(), 0, 0x44)),
        Err(WireError::BadHeaderLength {
            len: 16,
            min: 20,
            max: 60
        })
    );
    // Total length below the header length.
    assert_eq!(
        check(&with_byte(good.clone(), 3, 19)),
        Err(WireError::BadTotalLength {
            total: 19,
            header: 20
        })
    );
    // IHL past the total length (IHL 15 = 60 bytes > 42).
    assert_eq!(
        check(&with_byte(good.clone(), 0, 0x4f)),
        Err(WireError::BadTotalLength {
            total: 42,
            header: 60
        })
    );
    // Total length past the buffer.
    assert_eq!(
        check(&good[..41]),
        Err(WireError::Truncated {
            needed: 42,
            got: 41
        })
    );
    // Trailing bytes (Ethernet padding) are ignored.
    let mut padded = good.clone();
    padded.extend_from_slice(&[0; 4]);
    let packet = Ipv4Packet::new_checked(&padded[..]).unwrap();
    assert_eq!(packet.payload().len(), 22);
    let parsed = IpTcpRepr::parse(&padded, ParseChecks::default()).unwrap();
    assert_eq!(parsed.tcp.payload, b"hi");
    // A bad header checksum.
    let mut bad = good.clone();
    bad[8] = 63; // TTL changed, checksum not updated
    let packet = Ipv4Packet::new_checked(&bad[..]).unwrap();
    let expected = packet.expected_checksum();
    assert_eq!(
        Ipv4Repr::parse(&packet),
        Err(WireError::BadChecksum {
            layer: Layer::Ipv4,
            found: packet.checksum(),
            expected,
        })
    );
    assert_eq!(
        IpTcpRepr::parse(&bad, ParseChecks::default()),
        Err(WireError::BadChecksum {
            layer: Layer::Ipv4,
            found: packet.checksum(),
            expected,
        })
    );
    // Not TCP.
    let udp = with_byte(good.clone(), 9, 17);
    assert_eq!(
        IpTcpRepr::parse(&udp, ParseChecks::default()),
        Err(WireError::Unsupported(Unsupported::IpProtocol(17)))
    );
    // Not IP at all.
    assert_eq!(
        IpTcpRepr::parse(&[0x50; 40], ParseChecks::default()),
        Err(WireError::BadVersion(5))
    );
    assert_eq!(
        IpTcpRepr::parse(&[], ParseChecks::default()),
        Err(WireError::Truncated { needed: 20, got: 0 })
    );
}

#[test]
fn ipv4_emit_errors() {
    let repr = Ipv4Repr {
        src_addr: SRC,
        dst_addr: DST,
        protocol: IpProtocol::TCP,
        payload_len: 65516,
        ttl: 64,
        dscp_ecn: 0,
        ident: 0,
        dont_frag: false,
        more_frags: false,
        frag_offset: 0,
    };
    let mut buf = vec![0u8; 70000];
    assert_eq!(
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..])),
        Err(WireError::PayloadTooLong(65516))
    );
    let repr = Ipv4Repr {
        payload_len: 8,
        frag_offset: 12,
        ..repr
    };
    assert_eq!(
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..])),
        Err(WireError::BadFragmentOffset(12))
    );
    let repr = Ipv4Repr {
        frag_offset: 65528,
        ..repr
    };
    repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..28]))
        .unwrap();
    let packet = Ipv4Packet::new_checked(&buf[..28]).unwrap();
    assert_eq!(packet.frag_offset(), 65528);
    assert!(packet.is_fragment());
    assert_eq!(
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..27])),
        Err(WireError::Truncated {
            needed: 28,
            got: 27
        })
    );
}

fn ipv6_packet(next_header: u8, payload: &[u8]) -> Vec<u8> {
    let repr = Ipv6Repr {
        src_addr: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2),
        dst_addr: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100),
        next_header: IpProtocol(next_header),
        payload_len: payload.len(),
        hop_limit: 64,
        traffic_class: 0,
        flow_label: 0,
    };
    let mut buf = vec![0; repr.buffer_len()];
    let mut packet = Ipv6Packet::new_unchecked(&mut buf[..]);
    repr.emit(&mut packet).unwrap();
    packet.payload_mut().copy_from_slice(payload);
    buf
}

#[test]
fn ipv6_errors() {
    let good = ipv6_packet(6, &[0; 20]);
    let check = |bytes: &[u8]| Ipv6Packet::new_checked(bytes).map(|_| ());
    assert_eq!(check(&good), Ok(()));
    assert_eq!(
        check(&good[..39]),
        Err(WireError::Truncated {
            needed: 40,
            got: 39
        })
    );
    assert_eq!(
        check(&good[..59]),
        Err(WireError::Truncated {
            needed: 60,
            got: 59
        })
    );
    let mut v4 = good.clone();
    v4[0] = 0x45;
    assert_eq!(check(&v4), Err(WireError::BadVersion(4)));
    // Extension headers are refused, by type.
    for nh in [0u8, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254] {
        let bytes = ipv6_packet(nh, &[0; 8]);
        let packet = Ipv6Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!(
            Ipv6Repr::parse(&packet),
            Err(WireError::Unsupported(Unsupported::Ipv6ExtensionHeader(nh))),
            "next header {nh}"
        );
        assert_eq!(
            IpTcpRepr::parse(&bytes, ParseChecks::default()),
            Err(WireError::Unsupported(Unsupported::Ipv6ExtensionHeader(nh)))
        );
    }
    // Not TCP.
    let udp = ipv6_packet(17, &[0; 8]);
    assert_eq!(
        IpTcpRepr::parse(&udp, ParseChecks::default()),
        Err(WireError::Unsupported(Unsupported::IpProtocol(17)))
    );
    // TCP with a data offset past the segment.
    let mut tcp = segment(&[], b"");
    tcp[12] = 0xf0;
    let bytes = ipv6_packet(6, &tcp);
    assert!(matches!(
        IpTcpRepr::parse(&bytes, ParseChecks::default()),
        Err(WireError::BadHeaderLength { len: 60, .. })
    ));
    let repr = Ipv6Repr::parse(&Ipv6Packet::new_checked(&good[..]).unwrap()).unwrap();
    let big = Ipv6Repr {
        payload_len: 65536,
        ..repr
    };
    let mut buf = [0u8; 40];
    assert_eq!(
        big.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..])),
        Err(WireError::PayloadTooLong(65536))
    );
}

#[test]
fn ipv6_tcp_checksum_uses_the_ipv6_pseudo_header() {
    let ip = Ipv6Repr {
        src_addr: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2),
        dst_addr: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100),
        next_header: IpProtocol::TCP,
        payload_len: 0,
        hop_limit: 64,
        traffic_class: 0x10,
        flow_label: 0xabcde,
    };
    let tcp = TcpRepr {
        src_port: 40000,
        dst_port: 6379,
        seq_number: SeqNumber(1),
        ack_number: SeqNumber(2),
        flags: TcpFlags::PSH | TcpFlags::ACK,
        window_len: 100,
        urgent_at: 0,
        options: TcpOptionSet::default(),
        payload: b"PING\r\n",
    };
    let whole = IpTcpRepr {
        ip: IpRepr::V6(ip),
        tcp,
    };
    let bytes = whole.to_bytes().unwrap();
    let parsed = IpTcpRepr::parse(&bytes, ParseChecks::default()).unwrap();
    assert_eq!(parsed.tcp, tcp);
    assert_eq!(parsed.ip.payload_len(), 26);
    // The same segment does not verify under an IPv4 pseudo-header.
    let segment = TcpPacket::new_checked(&bytes[40..]).unwrap();
    assert!(segment.verify_checksum(&ip.pseudo_header()));
    assert!(!segment.verify_checksum(&PH));
    // Swapping source and destination keeps the sum (addition commutes), so
    // no checksum can tell direction; a different address must fail.
    let other = PseudoHeader::V6 {
        src: ip.src_addr,
        dst: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x101),
    };
    assert!(!segment.verify_checksum(&other));
}

#[test]
fn arp_reply_round_trip_and_errors() {
    let repr = ArpRepr {
        operation: ArpOperation::REPLY,
        source_hardware_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
        source_protocol_addr: SRC,
        target_hardware_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
        target_protocol_addr: DST,
    };
    // Hand-built per RFC 826: htype 1, ptype 0x0800, 6, 4, op 2, sha, spa,
    // tha, tpa; then 18 bytes of Ethernet padding.
    let mut bytes = vec![
        0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x02, 2, 0, 0, 0, 0, 1, 198, 18, 0, 2, 2, 0, 0, 0, 0,
        2, 198, 18, 0, 100,
    ];
    bytes.extend_from_slice(&[0; 18]);
    let packet = ArpPacket::new_checked(&bytes[..]).unwrap();
    assert_eq!(ArpRepr::parse(&packet).unwrap(), repr);
    // The same reply, built as the answer to a request.
    let request = ArpRepr::request(repr.target_hardware_addr, DST, SRC);
    assert_eq!(request.operation, ArpOperation::REQUEST);
    assert_eq!(request.target_hardware_addr, EthernetAddress::UNSPECIFIED);
    assert_eq!(ArpRepr::reply_to(&request, repr.source_hardware_addr), repr);
    let mut out = [0u8; 28];
    repr.emit(&mut ArpPacket::new_unchecked(&mut out[..]))
        .unwrap();
    assert_eq!(out[..], bytes[..28]);

    let check = |b: &[u8]| ArpPacket::new_checked(b).map(|_| ());
    assert_eq!(
        check(&bytes[..27]),
        Err(WireError::Truncated {
            needed: 28,
            got: 27
        })
    );
    let mut b = bytes.clone();
    b[1] = 6; // IEEE 802
    assert_eq!(
        check(&b),
        Err(WireError::Unsupported(Unsupported::ArpHardwareType(6)))
    );
    let mut b = bytes.clone();
    b[2] = 0x86;
    b[3] = 0xdd;
    assert_eq!(
        check(&b),
        Err(WireError::Unsupported(Unsupported::ArpProtocolType(0x86dd)))
    );
    let mut b = bytes.clone();
    b[4] = 8;
    assert_eq!(
        check(&b),
        Err(WireError::BadAddressLength {
            hardware: 8,
            protocol: 4
        })
    );
    assert_eq!(
        repr.emit(&mut ArpPacket::new_unchecked(&mut out[..27])),
        Err(WireError::Truncated {
            needed: 28,
            got: 27
        })
    );
}

#[test]
fn ethernet_frame_basics() {
    assert_eq!(
        EthernetFrame::new_checked(&[0u8; 13][..]).unwrap_err(),
        WireError::Truncated {
            needed: 14,
            got: 13
        }
    );
    let mac = EthernetAddress([0x02, 0x42, 0xac, 0x11, 0x00, 0x02]);
    assert_eq!(mac.to_string(), "02:42:ac:11:00:02");
    assert!(mac.is_unicast() && !mac.is_multicast());
    assert!(EthernetAddress::BROADCAST.is_broadcast());
    assert!(EthernetAddress::BROADCAST.is_multicast());
    assert!(!EthernetAddress::UNSPECIFIED.is_unicast());
    assert_eq!(EthernetAddress::from_bytes(&mac.octets()), Some(mac));
    assert_eq!(EthernetAddress::from_bytes(&[1, 2, 3]), None);
}

#[test]
fn errors_display_their_details() {
    let e = WireError::BadOption { kind: 2, len: 3 };
    assert_eq!(e.to_string(), "bad TCP option kind 2 length 3");
    let e = WireError::Unsupported(Unsupported::Ipv6ExtensionHeader(44));
    assert_eq!(e.to_string(), "unsupported: IPv6 extension header 44");
    let e = WireError::BadChecksum {
        layer: Layer::Tcp,
        found: 0xfe30,
        expected: 0x4402,
    };
    assert_eq!(e.to_string(), "bad TCP checksum 0xfe30 (expected 0x4402)");
}
