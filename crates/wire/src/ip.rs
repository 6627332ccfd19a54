//! What IPv4 and IPv6 have in common: protocol numbers, a version-agnostic
//! representation, and the one-call parser the capture path needs for
//! "an IP packet carrying TCP".

use std::net::IpAddr;

use crate::checksum::PseudoHeader;
use crate::error::{Result, Unsupported, WireError};
use crate::tcp::{ParseChecks, Repr as TcpRepr};
use crate::{ipv4, ipv6, tcp};

/// An IP protocol number (IPv4 Protocol / IPv6 Next Header).
///
/// A newtype rather than an enum so that every byte has exactly one
/// representation (parse and emit round-trip for all 256 values), while the
/// associated constants still work as match patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpProtocol(pub u8);

impl IpProtocol {
    /// IPv6 Hop-by-Hop Options.
    pub const HOPOPT: IpProtocol = IpProtocol(0);
    /// ICMP.
    pub const ICMP: IpProtocol = IpProtocol(1);
    /// TCP.
    pub const TCP: IpProtocol = IpProtocol(6);
    /// UDP.
    pub const UDP: IpProtocol = IpProtocol(17);
    /// IPv6 Routing header.
    pub const IPV6_ROUTE: IpProtocol = IpProtocol(43);
    /// IPv6 Fragment header.
    pub const IPV6_FRAG: IpProtocol = IpProtocol(44);
    /// Encapsulating Security Payload.
    pub const ESP: IpProtocol = IpProtocol(50);
    /// Authentication Header.
    pub const AH: IpProtocol = IpProtocol(51);
    /// ICMPv6.
    pub const ICMPV6: IpProtocol = IpProtocol(58);
    /// IPv6 No Next Header.
    pub const IPV6_NONXT: IpProtocol = IpProtocol(59);
    /// IPv6 Destination Options.
    pub const IPV6_OPTS: IpProtocol = IpProtocol(60);

    /// Whether this Next Header value announces an IPv6 extension header
    /// (the IANA "IPv6 Extension Header Types" registry) rather than an
    /// upper-layer protocol.
    pub fn is_ipv6_extension(self) -> bool {
        matches!(
            self.0,
            0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
        )
    }
}

impl From<u8> for IpProtocol {
    fn from(value: u8) -> Self {
        IpProtocol(value)
    }
}

impl From<IpProtocol> for u8 {
    fn from(value: IpProtocol) -> Self {
        value.0
    }
}

/// An IPv4 or IPv6 header representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpRepr {
    /// IPv4.
    V4(ipv4::Repr),
    /// IPv6.
    V6(ipv6::Repr),
}

impl IpRepr {
    /// The source address.
    pub fn src_addr(&self) -> IpAddr {
        match self {
            IpRepr::V4(r) => IpAddr::V4(r.src_addr),
            IpRepr::V6(r) => IpAddr::V6(r.src_addr),
        }
    }

    /// The destination address.
    pub fn dst_addr(&self) -> IpAddr {
        match self {
            IpRepr::V4(r) => IpAddr::V4(r.dst_addr),
            IpRepr::V6(r) => IpAddr::V6(r.dst_addr),
        }
    }

    /// The upper-layer protocol.
    pub fn protocol(&self) -> IpProtocol {
        match self {
            IpRepr::V4(r) => r.protocol,
            IpRepr::V6(r) => r.next_header,
        }
    }

    /// The payload length in bytes.
    pub fn payload_len(&self) -> usize {
        match self {
            IpRepr::V4(r) => r.payload_len,
            IpRepr::V6(r) => r.payload_len,
        }
    }

    /// The length of the header this representation emits.
    pub fn header_len(&self) -> usize {
        match self {
            IpRepr::V4(_) => ipv4::HEADER_LEN,
            IpRepr::V6(_) => ipv6::HEADER_LEN,
        }
    }

    /// The pseudo-header for the upper-layer checksum.
    pub fn pseudo_header(&self) -> PseudoHeader {
        match self {
            IpRepr::V4(r) => r.pseudo_header(),
            IpRepr::V6(r) => r.pseudo_header(),
        }
    }

    fn with_payload_len(mut self, len: usize) -> IpRepr {
        match &mut self {
            IpRepr::V4(r) => r.payload_len = len,
            IpRepr::V6(r) => r.payload_len = len,
        }
        self
    }
}

/// A whole IP packet carrying one TCP segment: what NFQUEUE hands to the
/// capture path and what the log stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpTcpRepr<'a> {
    /// The IP header.
    pub ip: IpRepr,
    /// The TCP segment; its payload borrows from the parsed buffer.
    pub tcp: TcpRepr<'a>,
}

impl<'a> IpTcpRepr<'a> {
    /// Parses an IPv4 or IPv6 packet (chosen by its first nibble) carrying
    /// TCP, with the TCP checks `checks` asks for. The IPv4 header checksum
    /// is always verified: the kernel fills it in on every path NFQUEUE sees
    /// (OUTPUT included), unlike the TCP checksum.
    ///
    /// Refused with a typed error: anything [`ipv4::Repr::parse`],
    /// [`ipv6::Repr::parse`] or [`TcpRepr::parse_with`] refuses; an IPv4
    /// fragment ([`Unsupported::Fragment`]: the capture runs after
    /// defragmentation, so a fragment here means the transport header may
    /// be incomplete); a payload other than TCP
    /// ([`Unsupported::IpProtocol`]). Bytes after the IP total/payload
    /// length are ignored (Ethernet padding).
    pub fn parse(buf: &'a [u8], checks: ParseChecks) -> Result<IpTcpRepr<'a>> {
        let (ip, segment) = match buf.first().map(|b| b >> 4) {
            None => {
                return Err(WireError::Truncated {
                    needed: ipv4::HEADER_LEN,
                    got: 0,
                })
            }
            Some(4) => {
                let packet = ipv4::Packet::new_checked(buf)?;
                let repr = ipv4::Repr::parse(&packet)?;
                if packet.is_fragment() {
                    return Err(WireError::Unsupported(Unsupported::Fragment));
                }
                (IpRepr::V4(repr), packet.into_payload())
            }
            Some(6) => {
                let packet = ipv6::Packet::new_checked(buf)?;
                let repr = ipv6::Repr::parse(&packet)?;
                (IpRepr::V6(repr), packet.into_payload())
            }
            Some(v) => return Err(WireError::BadVersion(v)),
        };
        if ip.protocol() != IpProtocol::TCP {
            return Err(WireError::Unsupported(Unsupported::IpProtocol(
                ip.protocol().0,
            )));
        }
        let packet = tcp::Packet::new_checked(segment)?;
        let tcp = TcpRepr::parse_with(&packet, &ip.pseudo_header(), checks)?;
        Ok(IpTcpRepr { ip, tcp })
    }

    /// The length of the packet [`emit`](Self::emit) writes.
    pub fn buffer_len(&self) -> usize {
        self.ip.header_len() + self.tcp.buffer_len()
    }

    /// Writes the whole packet into the start of `buf` (at least
    /// [`buffer_len`](Self::buffer_len) bytes) and returns its length.
    ///
    /// The IP header's payload length is taken from the TCP segment, not
    /// from `self.ip`, so the two can never disagree on the wire.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let len = self.buffer_len();
        let Some(buf) = buf.get_mut(..len) else {
            return Err(WireError::Truncated {
                needed: len,
                got: buf.len(),
            });
        };
        let ip = self.ip.with_payload_len(self.tcp.buffer_len());
        let segment = match ip {
            IpRepr::V4(repr) => {
                let mut packet = ipv4::Packet::new_unchecked(&mut *buf);
                repr.emit(&mut packet)?;
                &mut buf[ipv4::HEADER_LEN..]
            }
            IpRepr::V6(repr) => {
                let mut packet = ipv6::Packet::new_unchecked(&mut *buf);
                repr.emit(&mut packet)?;
                &mut buf[ipv6::HEADER_LEN..]
            }
        };
        let mut packet = tcp::Packet::new_unchecked(segment);
        self.tcp.emit(&mut packet, &ip.pseudo_header())?;
        Ok(len)
    }

    /// The packet as a freshly allocated buffer.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut buf = vec![0; self.buffer_len()];
        self.emit(&mut buf)?;
        Ok(buf)
    }
}
