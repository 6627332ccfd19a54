//! The one error type of this crate.
//!
//! Every parser and every emitter reports failure through [`WireError`]; the
//! variants are precise so that the capture layer can count *why* packets
//! were refused (a truncated capture is a configuration problem, a bad
//! checksum is line noise or an attack, an unsupported header is a feature
//! gap), and so that tests can assert the exact reason.

use thiserror::Error;

/// The protocol header a [`WireError::BadChecksum`] refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// The IPv4 header checksum.
    Ipv4,
    /// The TCP checksum (over the segment and the IP pseudo-header).
    Tcp,
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layer::Ipv4 => "IPv4 header",
            Layer::Tcp => "TCP",
        })
    }
}

/// Something this crate recognises but deliberately does not handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unsupported {
    /// An IPv6 extension header (its Next Header value) where an upper-layer
    /// header was expected. tandem's capture runs after reassembly and only
    /// needs plain IPv6 + TCP for now.
    Ipv6ExtensionHeader(u8),
    /// An IPv4 fragment where a whole datagram was expected: its transport
    /// header is missing or incomplete.
    Fragment,
    /// An IP payload that is not the protocol the caller asked for (its
    /// protocol number).
    IpProtocol(u8),
    /// An ARP hardware type other than Ethernet (1).
    ArpHardwareType(u16),
    /// An ARP protocol type other than IPv4 (0x0800).
    ArpProtocolType(u16),
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsupported::Ipv6ExtensionHeader(nh) => write!(f, "IPv6 extension header {nh}"),
            Unsupported::Fragment => f.write_str("IPv4 fragment"),
            Unsupported::IpProtocol(p) => write!(f, "IP protocol {p}"),
            Unsupported::ArpHardwareType(h) => write!(f, "ARP hardware type {h}"),
            Unsupported::ArpProtocolType(p) => write!(f, "ARP protocol type {p:#06x}"),
        }
    }
}

/// Why a packet could not be parsed, or a representation could not be
/// emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum WireError {
    /// The buffer is shorter than the header or than the length the header
    /// itself announces.
    #[error("truncated: {needed} bytes needed, {got} available")]
    Truncated {
        /// Bytes the packet needs.
        needed: usize,
        /// Bytes the buffer holds.
        got: usize,
    },
    /// The IP version field (or the first nibble of a packet given to a
    /// version-dispatching parser) is not the expected one.
    #[error("bad IP version {0}")]
    BadVersion(u8),
    /// A header length field (IPv4 IHL, TCP data offset, in bytes here) is
    /// below the protocol's minimum or beyond what the packet holds.
    #[error("bad header length {len} (allowed {min}..={max})")]
    BadHeaderLength {
        /// The header length the packet announces, in bytes.
        len: usize,
        /// The smallest legal header length.
        min: usize,
        /// The largest header length this packet could hold.
        max: usize,
    },
    /// The IPv4 total length is smaller than the IPv4 header itself.
    #[error("bad IPv4 total length {total} (header is {header} bytes)")]
    BadTotalLength {
        /// The announced total length.
        total: usize,
        /// The announced header length.
        header: usize,
    },
    /// A checksum does not verify.
    #[error("bad {layer} checksum {found:#06x} (expected {expected:#06x})")]
    BadChecksum {
        /// Which header's checksum.
        layer: Layer,
        /// The value in the packet.
        found: u16,
        /// The value that would have verified.
        expected: u16,
    },
    /// A TCP option whose length byte is impossible (0 or 1, wrong for its
    /// kind, or running past the end of the header).
    #[error("bad TCP option kind {kind} length {len}")]
    BadOption {
        /// The option kind.
        kind: u8,
        /// The option's length byte (0 when the header ends before it).
        len: u8,
    },
    /// The ARP hardware or protocol address length does not match Ethernet
    /// (6) and IPv4 (4).
    #[error("bad ARP address lengths: hardware {hardware}, protocol {protocol}")]
    BadAddressLength {
        /// The hardware address length found.
        hardware: u8,
        /// The protocol address length found.
        protocol: u8,
    },
    /// More SACK blocks than a TCP header can carry (4).
    #[error("{0} SACK blocks (at most 4 fit in a TCP header)")]
    TooManySackBlocks(usize),
    /// The TCP options of a representation need more than the 40 bytes a
    /// header has room for.
    #[error("TCP options need {0} bytes (at most 40)")]
    OptionsTooLong(usize),
    /// An IPv4 fragment offset that is not a multiple of 8 or does not fit
    /// in 13 bits of 8-byte units.
    #[error("bad IPv4 fragment offset {0}")]
    BadFragmentOffset(u16),
    /// A payload too long for the length field of the header that carries it.
    #[error("payload of {0} bytes too long for the header's length field")]
    PayloadTooLong(usize),
    /// An emit target longer than the packet: the checksum would not cover
    /// the extra bytes, so the caller must slice the buffer to size.
    #[error("buffer of {got} bytes for a {needed}-byte packet")]
    BufferTooLong {
        /// The packet's length.
        needed: usize,
        /// The buffer's length.
        got: usize,
    },
    /// A well-formed header this crate does not handle.
    #[error("unsupported: {0}")]
    Unsupported(Unsupported),
}

/// `Result` with [`WireError`].
pub type Result<T> = std::result::Result<T, WireError>;
