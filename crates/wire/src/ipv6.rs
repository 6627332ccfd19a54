//! IPv6 fixed headers (RFC 8200): a checked view and an owned
//! representation.
//!
//! Extension headers are recognised and refused with
//! [`Unsupported::Ipv6ExtensionHeader`]: tandem's capture sees reassembled
//! packets and its services speak plain TCP, so walking the extension chain
//! is left for when a VIP needs it. What must work now is the TCP checksum
//! over the IPv6 pseudo-header ([`PseudoHeader::V6`]).

use std::net::Ipv6Addr;

use crate::checksum::PseudoHeader;
use crate::error::{Result, Unsupported, WireError};
use crate::ip::IpProtocol;

/// The length of the fixed IPv6 header.
pub const HEADER_LEN: usize = 40;

mod field {
    use std::ops::Range;
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
}

const FLOW_MASK: u32 = 0x000f_ffff;

/// A view of an IPv6 packet in a buffer.
///
/// Built with [`new_checked`](Self::new_checked), every accessor is in
/// bounds: the buffer holds the 40-byte header and the payload length it
/// announces. Built with [`new_unchecked`](Self::new_unchecked), accessors
/// panic on a buffer shorter than what they read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it (for emitting into it).
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks that the buffer holds a 40-byte header with version 6 and the
    /// payload length it announces. Trailing bytes are allowed and ignored.
    pub fn check_len(&self) -> Result<()> {
        let got = self.buffer.as_ref().len();
        if got < HEADER_LEN {
            return Err(WireError::Truncated {
                needed: HEADER_LEN,
                got,
            });
        }
        if self.version() != 6 {
            return Err(WireError::BadVersion(self.version()));
        }
        let needed = HEADER_LEN + self.payload_len();
        if got < needed {
            return Err(WireError::Truncated { needed, got });
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn word0(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VER_TC_FLOW];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// The version field (6 in a checked packet).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// The traffic class (DSCP and ECN).
    pub fn traffic_class(&self) -> u8 {
        (self.word0() >> 20) as u8
    }

    /// The 20-bit flow label.
    pub fn flow_label(&self) -> u32 {
        self.word0() & FLOW_MASK
    }

    /// The payload length (extension headers included), in bytes.
    pub fn payload_len(&self) -> usize {
        let b = &self.buffer.as_ref()[field::LENGTH];
        usize::from(u16::from_be_bytes([b[0], b[1]]))
    }

    /// The next header: an upper-layer protocol or an extension header.
    pub fn next_header(&self) -> IpProtocol {
        IpProtocol(self.buffer.as_ref()[field::NXT_HDR])
    }

    /// The hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// The source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        octets16(&self.buffer.as_ref()[field::SRC])
    }

    /// The destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        octets16(&self.buffer.as_ref()[field::DST])
    }

    /// The payload: the payload length's worth of bytes after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + self.payload_len()]
    }

    /// The pseudo-header for the upper-layer checksum (valid when no
    /// extension header intervenes: a Routing header would change the
    /// final destination).
    pub fn pseudo_header(&self) -> PseudoHeader {
        PseudoHeader::V6 {
            src: self.src_addr(),
            dst: self.dst_addr(),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The payload, borrowed for as long as the underlying buffer.
    pub fn into_payload(self) -> &'a [u8] {
        let end = HEADER_LEN + self.payload_len();
        &self.buffer.as_ref()[HEADER_LEN..end]
    }
}

fn octets16(b: &[u8]) -> Ipv6Addr {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(b);
    Ipv6Addr::from(octets)
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_word0(&mut self, value: u32) {
        self.buffer.as_mut()[field::VER_TC_FLOW].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the version field.
    pub fn set_version(&mut self, version: u8) {
        let w = (self.word0() & 0x0fff_ffff) | (u32::from(version & 0x0f) << 28);
        self.set_word0(w);
    }

    /// Sets the traffic class.
    pub fn set_traffic_class(&mut self, tc: u8) {
        let w = (self.word0() & 0xf00f_ffff) | (u32::from(tc) << 20);
        self.set_word0(w);
    }

    /// Sets the flow label (its low 20 bits).
    pub fn set_flow_label(&mut self, label: u32) {
        let w = (self.word0() & !FLOW_MASK) | (label & FLOW_MASK);
        self.set_word0(w);
    }

    /// Sets the payload length.
    pub fn set_payload_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&len.to_be_bytes());
    }

    /// Sets the next header.
    pub fn set_next_header(&mut self, nh: IpProtocol) {
        self.buffer.as_mut()[field::NXT_HDR] = nh.0;
    }

    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = hop_limit;
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&addr.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&addr.octets());
    }

    /// The payload, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + self.payload_len();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// An IPv6 fixed header whose next header is an upper-layer protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// The source address.
    pub src_addr: Ipv6Addr,
    /// The destination address.
    pub dst_addr: Ipv6Addr,
    /// The upper-layer protocol.
    pub next_header: IpProtocol,
    /// The payload length in bytes.
    pub payload_len: usize,
    /// The hop limit.
    pub hop_limit: u8,
    /// The traffic class.
    pub traffic_class: u8,
    /// The flow label (20 bits; [`emit`](Self::emit) writes only those).
    pub flow_label: u32,
}

impl Repr {
    /// Parses a packet's fixed header. An extension header in Next Header
    /// gives [`Unsupported::Ipv6ExtensionHeader`].
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        let next_header = packet.next_header();
        if next_header.is_ipv6_extension() {
            return Err(WireError::Unsupported(Unsupported::Ipv6ExtensionHeader(
                next_header.0,
            )));
        }
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header,
            payload_len: packet.payload_len(),
            hop_limit: packet.hop_limit(),
            traffic_class: packet.traffic_class(),
            flow_label: packet.flow_label(),
        })
    }

    /// The header length [`emit`](Self::emit) writes.
    pub fn header_len(&self) -> usize {
        HEADER_LEN
    }

    /// The whole packet's length: header plus payload.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN.saturating_add(self.payload_len)
    }

    /// The pseudo-header for the payload's checksum.
    pub fn pseudo_header(&self) -> PseudoHeader {
        PseudoHeader::V6 {
            src: self.src_addr,
            dst: self.dst_addr,
        }
    }

    /// Writes the fixed header into `packet`, whose buffer must hold at least
    /// [`buffer_len`](Self::buffer_len) bytes; the caller writes the payload.
    /// Jumbograms (payloads over 65,535 bytes) are not supported.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        let Ok(len16) = u16::try_from(self.payload_len) else {
            return Err(WireError::PayloadTooLong(self.payload_len));
        };
        let needed = self.buffer_len();
        let got = packet.buffer.as_ref().len();
        if got < needed {
            return Err(WireError::Truncated { needed, got });
        }
        packet.set_word0(
            (6 << 28) | (u32::from(self.traffic_class) << 20) | (self.flow_label & FLOW_MASK),
        );
        packet.set_payload_len(len16);
        packet.set_next_header(self.next_header);
        packet.set_hop_limit(self.hop_limit);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        Ok(())
    }
}
