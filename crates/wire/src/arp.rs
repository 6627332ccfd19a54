//! ARP for IPv4 over Ethernet (RFC 826), and the gratuitous ARP frame a new
//! primary broadcasts to move the VIP (docs/architecture.md §3.5 step 5).
//!
//! Only the Ethernet/IPv4 combination exists on tandem's networks; other
//! hardware or protocol types are refused as [`Unsupported`] rather than
//! half-parsed.

use std::net::Ipv4Addr;

use crate::error::{Result, Unsupported, WireError};
use crate::ethernet::{self, EtherType, EthernetAddress};

/// The length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = 28;

/// The length of a gratuitous ARP frame: Ethernet header plus ARP packet
/// (without the padding to 60 bytes, which the NIC adds).
pub const GRATUITOUS_FRAME_LEN: usize = ethernet::HEADER_LEN + PACKET_LEN;

/// ARP hardware type Ethernet.
pub const HARDWARE_ETHERNET: u16 = 1;

mod field {
    use std::ops::Range;
    pub const HTYPE: Range<usize> = 0..2;
    pub const PTYPE: Range<usize> = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Range<usize> = 6..8;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

/// An ARP operation. A newtype so that every value round-trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArpOperation(pub u16);

impl ArpOperation {
    /// Request.
    pub const REQUEST: ArpOperation = ArpOperation(1);
    /// Reply.
    pub const REPLY: ArpOperation = ArpOperation(2);
}

impl From<u16> for ArpOperation {
    fn from(value: u16) -> Self {
        ArpOperation(value)
    }
}

/// A view of an Ethernet/IPv4 ARP packet in a buffer.
///
/// Built with [`new_checked`](Self::new_checked), the buffer holds 28 bytes
/// and the types and lengths are Ethernet/IPv4 (trailing bytes — frame
/// padding — are allowed and ignored). Built with
/// [`new_unchecked`](Self::new_unchecked), accessors panic on a shorter
/// buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

fn be16(buf: &[u8], range: std::ops::Range<usize>) -> u16 {
    let b = &buf[range];
    u16::from_be_bytes([b[0], b[1]])
}

fn ipv4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

fn mac(b: &[u8]) -> EthernetAddress {
    let mut octets = [0u8; 6];
    octets.copy_from_slice(b);
    EthernetAddress(octets)
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

    /// Checks the length (28 bytes), the hardware type (Ethernet), the
    /// protocol type (IPv4) and the address lengths (6 and 4): the fixed
    /// field offsets of this view are only right for that combination.
    pub fn check_len(&self) -> Result<()> {
        let got = self.buffer.as_ref().len();
        if got < PACKET_LEN {
            return Err(WireError::Truncated {
                needed: PACKET_LEN,
                got,
            });
        }
        if self.hardware_type() != HARDWARE_ETHERNET {
            return Err(WireError::Unsupported(Unsupported::ArpHardwareType(
                self.hardware_type(),
            )));
        }
        if self.protocol_type() != EtherType::IPV4 {
            return Err(WireError::Unsupported(Unsupported::ArpProtocolType(
                self.protocol_type().0,
            )));
        }
        if self.hardware_len() != 6 || self.protocol_len() != 4 {
            return Err(WireError::BadAddressLength {
                hardware: self.hardware_len(),
                protocol: self.protocol_len(),
            });
        }
        Ok(())
    }

    /// The wrapped buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The hardware type (1: Ethernet).
    pub fn hardware_type(&self) -> u16 {
        be16(self.buffer.as_ref(), field::HTYPE)
    }

    /// The protocol type (an EtherType; IPv4 here).
    pub fn protocol_type(&self) -> EtherType {
        EtherType(be16(self.buffer.as_ref(), field::PTYPE))
    }

    /// The hardware address length.
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    /// The protocol address length.
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    /// The operation.
    pub fn operation(&self) -> ArpOperation {
        ArpOperation(be16(self.buffer.as_ref(), field::OPER))
    }

    /// The sender's hardware address.
    pub fn source_hardware_addr(&self) -> EthernetAddress {
        mac(&self.buffer.as_ref()[field::SHA])
    }

    /// The sender's protocol address.
    pub fn source_protocol_addr(&self) -> Ipv4Addr {
        ipv4(&self.buffer.as_ref()[field::SPA])
    }

    /// The target's hardware address.
    pub fn target_hardware_addr(&self) -> EthernetAddress {
        mac(&self.buffer.as_ref()[field::THA])
    }

    /// The target's protocol address.
    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        ipv4(&self.buffer.as_ref()[field::TPA])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the hardware type.
    pub fn set_hardware_type(&mut self, value: u16) {
        self.buffer.as_mut()[field::HTYPE].copy_from_slice(&value.to_be_bytes());
    }

    /// Sets the protocol type.
    pub fn set_protocol_type(&mut self, value: EtherType) {
        self.buffer.as_mut()[field::PTYPE].copy_from_slice(&value.0.to_be_bytes());
    }

    /// Sets the hardware address length.
    pub fn set_hardware_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::HLEN] = value;
    }

    /// Sets the protocol address length.
    pub fn set_protocol_len(&mut self, value: u8) {
        self.buffer.as_mut()[field::PLEN] = value;
    }

    /// Sets the operation.
    pub fn set_operation(&mut self, value: ArpOperation) {
        self.buffer.as_mut()[field::OPER].copy_from_slice(&value.0.to_be_bytes());
    }

    /// Sets the sender's hardware address.
    pub fn set_source_hardware_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::SHA].copy_from_slice(&addr.0);
    }

    /// Sets the sender's protocol address.
    pub fn set_source_protocol_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SPA].copy_from_slice(&addr.octets());
    }

    /// Sets the target's hardware address.
    pub fn set_target_hardware_addr(&mut self, addr: EthernetAddress) {
        self.buffer.as_mut()[field::THA].copy_from_slice(&addr.0);
    }

    /// Sets the target's protocol address.
    pub fn set_target_protocol_addr(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::TPA].copy_from_slice(&addr.octets());
    }
}

/// An Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// The operation (request or reply; other values round-trip).
    pub operation: ArpOperation,
    /// The sender's hardware address.
    pub source_hardware_addr: EthernetAddress,
    /// The sender's protocol address.
    pub source_protocol_addr: Ipv4Addr,
    /// The target's hardware address (zero in a request: unknown).
    pub target_hardware_addr: EthernetAddress,
    /// The target's protocol address.
    pub target_protocol_addr: Ipv4Addr,
}

impl Repr {
    /// Parses a packet (types and lengths checked again, so an unchecked
    /// view is safe too).
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        Ok(Repr {
            operation: packet.operation(),
            source_hardware_addr: packet.source_hardware_addr(),
            source_protocol_addr: packet.source_protocol_addr(),
            target_hardware_addr: packet.target_hardware_addr(),
            target_protocol_addr: packet.target_protocol_addr(),
        })
    }

    /// A request: who has `target_ip`? Tell `sender_ip` at `sender_mac`.
    /// The target hardware address is zero (unknown).
    pub fn request(sender_mac: EthernetAddress, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Repr {
        Repr {
            operation: ArpOperation::REQUEST,
            source_hardware_addr: sender_mac,
            source_protocol_addr: sender_ip,
            target_hardware_addr: EthernetAddress::UNSPECIFIED,
            target_protocol_addr: target_ip,
        }
    }

    /// The reply to `request` from the host owning its target address, at
    /// `mac`.
    pub fn reply_to(request: &Repr, mac: EthernetAddress) -> Repr {
        Repr {
            operation: ArpOperation::REPLY,
            source_hardware_addr: mac,
            source_protocol_addr: request.target_protocol_addr,
            target_hardware_addr: request.source_hardware_addr,
            target_protocol_addr: request.source_protocol_addr,
        }
    }

    /// A gratuitous ARP request (an RFC 5227 "announcement") for `ip` at
    /// `mac`: sender and target protocol address both `ip`, target hardware
    /// address zero. A request, as the kernel's own announcements
    /// (`arp_notify`) and RFC 5227 use: Linux treats a request whose sender
    /// and target addresses are equal as gratuitous and lets it override a
    /// neighbour entry inside the lock time, whereas a gratuitous *reply*
    /// must also repeat the sender's MAC as target to count.
    pub fn gratuitous(mac: EthernetAddress, ip: Ipv4Addr) -> Repr {
        Repr::request(mac, ip, ip)
    }

    /// The packet's length.
    pub fn buffer_len(&self) -> usize {
        PACKET_LEN
    }

    /// Writes the packet into `packet` (at least 28 bytes).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        let got = packet.buffer.as_ref().len();
        if got < PACKET_LEN {
            return Err(WireError::Truncated {
                needed: PACKET_LEN,
                got,
            });
        }
        packet.set_hardware_type(HARDWARE_ETHERNET);
        packet.set_protocol_type(EtherType::IPV4);
        packet.set_hardware_len(6);
        packet.set_protocol_len(4);
        packet.set_operation(self.operation);
        packet.set_source_hardware_addr(self.source_hardware_addr);
        packet.set_source_protocol_addr(self.source_protocol_addr);
        packet.set_target_hardware_addr(self.target_hardware_addr);
        packet.set_target_protocol_addr(self.target_protocol_addr);
        Ok(())
    }
}

/// The whole 42-byte frame of a gratuitous ARP request for `ip` at `mac`:
/// broadcast Ethernet header from `mac`, then [`Repr::gratuitous`].
pub fn gratuitous_arp_request(mac: EthernetAddress, ip: Ipv4Addr) -> [u8; GRATUITOUS_FRAME_LEN] {
    let mut frame = [0u8; GRATUITOUS_FRAME_LEN];
    let (header, body) = frame.split_at_mut(ethernet::HEADER_LEN);
    let eth = ethernet::Repr {
        src_addr: mac,
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EtherType::ARP,
    };
    // Both buffers have exactly the required lengths (fixed-size array), so
    // neither emit can fail; the results are ignored rather than unwrapped
    // to keep this function free of panic paths.
    let _ = eth.emit(&mut ethernet::Frame::new_unchecked(header));
    let _ = Repr::gratuitous(mac, ip).emit(&mut Packet::new_unchecked(body));
    frame
}
