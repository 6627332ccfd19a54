//! Property tests: `parse(emit(repr)) == repr` for every representation,
//! single-bit corruption is always caught, and sequence arithmetic holds
//! across the 2³² wrap.

mod common;

use common::*;
use proptest::prelude::*;
use tandem_wire::{
    ArpPacket, ArpRepr, EtherType, EthernetFrame, EthernetRepr, IpRepr, IpTcpRepr, Ipv4Packet,
    Ipv4Repr, Ipv6Packet, Ipv6Repr, OptionsMode, ParseChecks, SeqNumber, TcpOptionSet, TcpPacket,
    TcpRepr, WireError,
};

fn linux_checks() -> ParseChecks {
    ParseChecks {
        verify_checksum: true,
        options: OptionsMode::Linux,
    }
}

proptest! {
    #[test]
    fn tcp_round_trips_with_random_options(case in tcp_case_with(option_set(), 300), ip in ip_for_tcp()) {
        let repr = case.repr();
        let ph = ip.pseudo_header();
        let mut buf = vec![0u8; repr.buffer_len()];
        let result = repr.emit(&mut TcpPacket::new_unchecked(&mut buf[..]), &ph);
        if repr.options.emit_len() > 40 {
            prop_assert_eq!(result, Err(WireError::OptionsTooLong(repr.options.emit_len())));
            return Ok(());
        }
        result.unwrap();
        let packet = TcpPacket::new_checked(&buf[..]).unwrap();
        prop_assert!(packet.verify_checksum(&ph));
        prop_assert_eq!(packet.header_len() % 4, 0);
        prop_assert_eq!(packet.header_len(), repr.header_len());
        prop_assert_eq!(TcpRepr::parse(&packet, &ph).unwrap(), repr);
        // Both option parsers agree on well-formed options.
        prop_assert_eq!(TcpRepr::parse_with(&packet, &ph, linux_checks()).unwrap(), repr);
        prop_assert_eq!(TcpOptionSet::parse(packet.options()).unwrap(), repr.options);
        prop_assert_eq!(packet.segment_len(), repr.segment_len());
        prop_assert_eq!(repr.seq_end(), repr.seq_number + repr.segment_len());
    }

    #[test]
    fn ip_tcp_round_trips(case in tcp_case(), ip in ip_for_tcp()) {
        let whole = IpTcpRepr { ip: with_len(ip, case.repr().buffer_len()), tcp: case.repr() };
        let bytes = whole.to_bytes().unwrap();
        prop_assert_eq!(bytes.len(), whole.buffer_len());
        let parsed = IpTcpRepr::parse(&bytes, ParseChecks::default()).unwrap();
        prop_assert_eq!(parsed, whole);
        // Trailing bytes (link-layer padding) change nothing.
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0xee; 7]);
        prop_assert_eq!(IpTcpRepr::parse(&padded, ParseChecks::default()).unwrap(), whole);
    }

    #[test]
    fn ipv4_round_trips(repr in ipv4_repr()) {
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..])).unwrap();
        let packet = Ipv4Packet::new_checked(&buf[..]).unwrap();
        prop_assert!(packet.verify_checksum());
        prop_assert_eq!(packet.is_fragment(), repr.more_frags || repr.frag_offset != 0);
        prop_assert_eq!(Ipv4Repr::parse(&packet).unwrap(), repr);
    }

    #[test]
    fn ipv6_round_trips(repr in ipv6_repr()) {
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..])).unwrap();
        let packet = Ipv6Packet::new_checked(&buf[..]).unwrap();
        prop_assert_eq!(Ipv6Repr::parse(&packet).unwrap(), repr);
    }

    #[test]
    fn arp_round_trips(repr in arp_repr()) {
        let mut buf = [0u8; 28];
        repr.emit(&mut ArpPacket::new_unchecked(&mut buf[..])).unwrap();
        prop_assert_eq!(ArpRepr::parse(&ArpPacket::new_checked(&buf[..]).unwrap()).unwrap(), repr);
    }

    #[test]
    fn ethernet_round_trips(src in mac(), dst in mac(), ethertype in any::<u16>()) {
        let repr = EthernetRepr { src_addr: src, dst_addr: dst, ethertype: EtherType(ethertype) };
        let mut buf = [0u8; 14];
        repr.emit(&mut EthernetFrame::new_unchecked(&mut buf[..])).unwrap();
        prop_assert_eq!(EthernetRepr::parse(&EthernetFrame::new_checked(&buf[..]).unwrap()).unwrap(), repr);
    }

    #[test]
    fn gratuitous_arp_parses_back(sha in mac(), ip in ipv4_addr()) {
        let frame = tandem_wire::gratuitous_arp_request(sha, ip);
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        prop_assert!(eth.dst_addr().is_broadcast());
        prop_assert_eq!(eth.src_addr(), sha);
        prop_assert_eq!(eth.ethertype(), EtherType::ARP);
        let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        prop_assert_eq!(arp, ArpRepr::gratuitous(sha, ip));
    }

    /// Every single-bit flip of a valid IPv4 + TCP packet is refused: bits
    /// of the IPv4 header by its checksum (or a length or version check),
    /// bits of the segment by the TCP checksum, which a one-bit change
    /// always breaks (it moves the one's-complement sum by ±2^k, never by a
    /// multiple of 0xffff). The one exception in principle is a flip that
    /// grows the IHL: both checksums are then taken over other bytes and
    /// could both verify by chance (odds about 2^-32).
    #[test]
    fn any_bit_flip_in_ipv4_tcp_is_caught(case in short_tcp_case(), ip in ipv4_repr()) {
        let ip = IpRepr::V4(Ipv4Repr { protocol: tandem_wire::IpProtocol::TCP, more_frags: false, frag_offset: 0, ..ip });
        let whole = IpTcpRepr { ip, tcp: case.repr() };
        let bytes = whole.to_bytes().unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 0x80 >> (bit % 8);
            let result = IpTcpRepr::parse(&flipped, ParseChecks::default());
            prop_assert!(result.is_err(), "bit {} accepted: {:?}", bit, result);
        }
    }

    /// IPv6 has no header checksum: the TCP checksum covers the addresses,
    /// next header and length through the pseudo-header, but not the traffic
    /// class, flow label or hop limit. Flips there parse, with that field
    /// changed; flips that shorten the payload length cut the segment, which
    /// the TCP checksum catches only with high probability, so they are
    /// required to give an error or a different parse; every other flip
    /// must be refused.
    #[test]
    fn bit_flips_in_ipv6_tcp(case in short_tcp_case(), ip in ipv6_repr()) {
        let ip = IpRepr::V6(Ipv6Repr { next_header: tandem_wire::IpProtocol::TCP, ..ip });
        let whole = IpTcpRepr { ip, tcp: case.repr() };
        let bytes = whole.to_bytes().unwrap();
        let original = IpTcpRepr::parse(&bytes, ParseChecks::default()).unwrap();
        for bit in 0..bytes.len() * 8 {
            let byte = bit / 8;
            let mut flipped = bytes.clone();
            flipped[byte] ^= 0x80 >> (bit % 8);
            let result = IpTcpRepr::parse(&flipped, ParseChecks::default());
            let unprotected = (4..32).contains(&bit) || byte == 7;
            let shortens = (byte == 4 || byte == 5) && flipped[byte] < bytes[byte];
            if unprotected {
                let parsed = result.unwrap();
                prop_assert_eq!(parsed.tcp, original.tcp);
                prop_assert_ne!(parsed.ip, original.ip);
            } else if shortens {
                prop_assert!(result.map(|p| p != original).unwrap_or(true), "bit {}", bit);
            } else {
                prop_assert!(result.is_err(), "bit {} accepted: {:?}", bit, result);
            }
        }
    }

    /// Wherever the strict option parser accepts, Linux's reads the same
    /// options (they differ only on malformed input).
    #[test]
    fn option_modes_agree_when_strict_accepts(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
        let linux = TcpOptionSet::parse_linux(&bytes);
        if let Ok(strict) = TcpOptionSet::parse(&bytes) {
            prop_assert_eq!(strict, linux);
        }
    }

    // Sequence numbers: arithmetic and order across the wrap.

    #[test]
    fn seq_add_sub_inverse(a in seq(), n in any::<usize>()) {
        prop_assert_eq!(a + n - n, a);
        let mut b = a;
        b += n;
        b -= n;
        prop_assert_eq!(b, a);
        prop_assert_eq!((a + n).offset_from(a), n as u32);
    }

    #[test]
    fn seq_forward_within_half_is_later(a in seq(), n in 1u32..(1 << 31)) {
        let b = a + n as usize;
        prop_assert!(a < b);
        prop_assert!(a <= b);
        prop_assert!(b > a);
        prop_assert!(b >= a);
        prop_assert_eq!(b - a, n as i32);
        prop_assert_eq!(a - b, -(n as i32));
        prop_assert_eq!(a.max(b), b);
        prop_assert_eq!(b.min(a), a);
        // Whatever the raw values: across the wrap b.0 < a.0 and still a < b.
        if b.0 < a.0 {
            prop_assert!(a < b);
        }
    }

    #[test]
    fn seq_forward_beyond_half_is_earlier(a in seq(), n in ((1u64 << 31) + 1)..(1u64 << 32)) {
        // More than 2^31 ahead is, modulo 2^32, behind.
        let b = a + n as usize;
        prop_assert!(b < a);
        prop_assert_eq!(b - a, (n as u32) as i32);
    }

    #[test]
    fn seq_order_is_antisymmetric_and_total_but_antipodes(a in seq(), b in seq()) {
        let lt = a < b;
        let gt = a > b;
        let eq = a == b;
        if b.0.wrapping_sub(a.0) == 1 << 31 {
            prop_assert_eq!(a.partial_cmp(&b), None);
            prop_assert!(!lt && !gt && !eq);
        } else {
            prop_assert_eq!(u8::from(lt) + u8::from(gt) + u8::from(eq), 1);
            prop_assert_eq!(lt, b > a);
            prop_assert_eq!(a <= b, lt || eq);
        }
    }

    #[test]
    fn seq_window_agrees_with_order(start in seq(), len in 0u32..(1 << 31), x in seq()) {
        let inside = x.in_window(start, len);
        let end = start + len as usize;
        prop_assert_eq!(inside, start <= x && x < end && len > 0);
    }

    #[test]
    fn seq_end_wraps(seq_number in ((u32::MAX - 400)..=u32::MAX).prop_map(SeqNumber), case in tcp_case()) {
        let repr = TcpRepr { seq_number, ..case.repr() };
        let end = repr.seq_end();
        prop_assert_eq!(end.offset_from(seq_number) as usize, repr.segment_len());
        if repr.segment_len() > 0 {
            prop_assert!(end > seq_number);
        }
    }
}
