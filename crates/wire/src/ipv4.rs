//! IPv4 headers (RFC 791): a checked view over a buffer and an owned
//! representation.
//!
//! Options are allowed and kept inside the header's bounds (they are reached
//! through [`Packet::options`]) but are not represented: tandem only needs
//! to find the TCP segment and to build option-free headers itself.

use std::net::Ipv4Addr;

use crate::checksum::{self, PseudoHeader};
use crate::error::{Layer, Result, WireError};
use crate::ip::IpProtocol;

/// The length of an IPv4 header without options.
pub const HEADER_LEN: usize = 20;

/// The largest IPv4 header (IHL 15).
pub const MAX_HEADER_LEN: usize = 60;

mod field {
    use std::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLG_OFF: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// A view of an IPv4 packet in a buffer.
///
/// Built with [`new_checked`](Self::new_checked), every accessor is in
/// bounds: the buffer holds at least the header and the total length, and
/// the header length is at least 20 bytes and at most the total length.
/// Built with [`new_unchecked`](Self::new_unchecked) (to emit into a fresh
/// buffer), accessors panic on a buffer shorter than the header they read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

fn be16(buf: &[u8], range: std::ops::Range<usize>) -> u16 {
    let b = &buf[range];
    u16::from_be_bytes([b[0], b[1]])
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it (for emitting into it).
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer after checking that it holds a whole IPv4 packet
    /// (see [`check_len`](Self::check_len)).
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    /// Checks the version and every length: at least 20 bytes, version 4,
    /// IHL ≥ 5, total length ≥ header length, buffer ≥ total length. Bytes
    /// beyond the total length are allowed (and ignored): Ethernet pads short
    /// frames.
    pub fn check_len(&self) -> Result<()> {
        let buf = self.buffer.as_ref();
        if buf.len() < HEADER_LEN {
            return Err(WireError::Truncated {
                needed: HEADER_LEN,
                got: buf.len(),
            });
        }
        if self.version() != 4 {
            return Err(WireError::BadVersion(self.version()));
        }
        let header_len = self.header_len();
        if header_len < HEADER_LEN {
            return Err(WireError::BadHeaderLength {
                len: header_len,
                min: HEADER_LEN,
                max: MAX_HEADER_LEN,
            });
        }
        let total_len = self.total_len();
        if total_len < header_len {
            return Err(WireError::BadTotalLength {
                total: total_len,
                header: header_len,
            });
        }
        if buf.len() < total_len {
            return Err(WireError::Truncated {
                needed: total_len,
                got: buf.len(),
            });
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The version field (4 in a checked packet).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// The header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// The DSCP and ECN bits (the former TOS byte).
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    /// The total length: header plus payload, in bytes.
    pub fn total_len(&self) -> usize {
        usize::from(be16(self.buffer.as_ref(), field::LENGTH))
    }

    /// The identification field.
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::IDENT)
    }

    /// The Don't Fragment flag.
    pub fn dont_frag(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_DF != 0
    }

    /// The More Fragments flag.
    pub fn more_frags(&self) -> bool {
        be16(self.buffer.as_ref(), field::FLG_OFF) & FLAG_MF != 0
    }

    /// The fragment offset in bytes (the field counts 8-byte units).
    pub fn frag_offset(&self) -> u16 {
        (be16(self.buffer.as_ref(), field::FLG_OFF) & OFFSET_MASK) << 3
    }

    /// Whether this packet is a fragment of a larger datagram: More
    /// Fragments set or a non-zero offset. (A datagram with DF and offset 0
    /// is whole.)
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    /// The time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// The payload's protocol.
    pub fn protocol(&self) -> IpProtocol {
        IpProtocol(self.buffer.as_ref()[field::PROTOCOL])
    }

    /// The header checksum as stored.
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SRC];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// The destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::DST];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    /// The option bytes between the fixed header and the payload.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }

    /// The payload: from the end of the header to the total length.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..self.total_len()]
    }

    /// Whether the header checksum verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::verifies(checksum::sum(&self.buffer.as_ref()[..self.header_len()]))
    }

    /// The header checksum this packet should carry.
    pub fn expected_checksum(&self) -> u16 {
        let header = &self.buffer.as_ref()[..self.header_len()];
        checksum::finish(
            checksum::sum(&header[..field::CHECKSUM.start])
                + checksum::sum(&header[field::CHECKSUM.end..]),
        )
    }

    /// The pseudo-header for this packet's upper-layer checksum.
    pub fn pseudo_header(&self) -> PseudoHeader {
        PseudoHeader::V4 {
            src: self.src_addr(),
            dst: self.dst_addr(),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Packet<&'a T> {
    /// The payload, borrowed for as long as the underlying buffer (rather
    /// than for as long as the view, as [`payload`](Self::payload) is).
    pub fn into_payload(self) -> &'a [u8] {
        let (start, end) = (self.header_len(), self.total_len());
        &self.buffer.as_ref()[start..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the version field.
    pub fn set_version(&mut self, version: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0x0f) | (version << 4);
    }

    /// Sets the header length in bytes (stored as `len / 4`, low 4 bits).
    pub fn set_header_len(&mut self, len: usize) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0xf0) | ((len / 4) as u8 & 0x0f);
    }

    /// Sets the DSCP and ECN bits.
    pub fn set_dscp_ecn(&mut self, value: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = value;
    }

    /// Sets the total length.
    pub fn set_total_len(&mut self, len: u16) {
        self.buffer.as_mut()[field::LENGTH].copy_from_slice(&len.to_be_bytes());
    }

    /// Sets the identification field.
    pub fn set_ident(&mut self, ident: u16) {
        self.buffer.as_mut()[field::IDENT].copy_from_slice(&ident.to_be_bytes());
    }

    /// Sets the flags (DF, MF; the reserved bit cleared) and the fragment
    /// offset in bytes (stored in 8-byte units: the low 3 bits are dropped).
    pub fn set_flags_and_offset(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let mut value = (offset >> 3) & OFFSET_MASK;
        if dont_frag {
            value |= FLAG_DF;
        }
        if more_frags {
            value |= FLAG_MF;
        }
        self.buffer.as_mut()[field::FLG_OFF].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the time to live.
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    /// Sets the payload's protocol.
    pub fn set_protocol(&mut self, protocol: IpProtocol) {
        self.buffer.as_mut()[field::PROTOCOL] = protocol.0;
    }

    /// Sets the header checksum as given.
    pub fn set_checksum(&mut self, value: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&addr.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&addr.octets());
    }

    /// Computes and stores the header checksum (over the header length the
    /// packet announces, options included).
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let value = checksum::internet_checksum(&self.buffer.as_ref()[..self.header_len()]);
        self.set_checksum(value);
    }

    /// The payload, mutably.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = (self.header_len(), self.total_len());
        &mut self.buffer.as_mut()[start..end]
    }
}

/// An IPv4 header without options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// The source address.
    pub src_addr: Ipv4Addr,
    /// The destination address.
    pub dst_addr: Ipv4Addr,
    /// The payload's protocol.
    pub protocol: IpProtocol,
    /// The payload length in bytes (total length minus header length).
    pub payload_len: usize,
    /// The time to live.
    pub ttl: u8,
    /// The DSCP and ECN bits.
    pub dscp_ecn: u8,
    /// The identification field.
    pub ident: u16,
    /// Don't Fragment.
    pub dont_frag: bool,
    /// More Fragments.
    pub more_frags: bool,
    /// The fragment offset in bytes: a multiple of 8.
    pub frag_offset: u16,
}

impl Repr {
    /// The header of an ordinary, unfragmented TCP packet from `src` to
    /// `dst` (TTL 64, Don't Fragment, no DSCP/ECN); the payload length is
    /// filled in when the whole packet is emitted.
    pub fn tcp(src_addr: Ipv4Addr, dst_addr: Ipv4Addr) -> Repr {
        Repr {
            src_addr,
            dst_addr,
            protocol: IpProtocol::TCP,
            payload_len: 0,
            ttl: 64,
            dscp_ecn: 0,
            ident: 0,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
        }
    }

    /// Parses a packet's header: lengths (again, so an unchecked view is safe
    /// too) and the header checksum. Options are skipped; fragments parse
    /// (see [`Packet::is_fragment`]).
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(WireError::BadChecksum {
                layer: Layer::Ipv4,
                found: packet.checksum(),
                expected: packet.expected_checksum(),
            });
        }
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: packet.total_len() - packet.header_len(),
            ttl: packet.ttl(),
            dscp_ecn: packet.dscp_ecn(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
            more_frags: packet.more_frags(),
            frag_offset: packet.frag_offset(),
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
        PseudoHeader::V4 {
            src: self.src_addr,
            dst: self.dst_addr,
        }
    }

    /// Writes the header, checksum included, into `packet`, whose buffer
    /// must hold at least [`buffer_len`](Self::buffer_len) bytes; the caller
    /// writes the payload (through [`Packet::payload_mut`]).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        let total = self.buffer_len();
        let Ok(total16) = u16::try_from(total) else {
            return Err(WireError::PayloadTooLong(self.payload_len));
        };
        if !self.frag_offset.is_multiple_of(8) {
            return Err(WireError::BadFragmentOffset(self.frag_offset));
        }
        let got = packet.buffer.as_ref().len();
        if got < total {
            return Err(WireError::Truncated { needed: total, got });
        }
        packet.buffer.as_mut()[field::VER_IHL] = 0x45;
        packet.set_dscp_ecn(self.dscp_ecn);
        packet.set_total_len(total16);
        packet.set_ident(self.ident);
        packet.set_flags_and_offset(self.dont_frag, self.more_frags, self.frag_offset);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
        Ok(())
    }
}
