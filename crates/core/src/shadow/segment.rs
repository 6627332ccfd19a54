//! The input of shadow TCP: one captured TCP segment, already parsed.
//!
//! This is deliberately our own type rather than the packet parser's: shadow
//! TCP only needs these fields, and keeping it independent lets the parser
//! evolve (the node converts a parsed packet into a [`Segment`]).

use std::net::SocketAddr;

/// The TCP header flags shadow TCP looks at (a bit set, as on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// No more data from the sender.
    pub const FIN: TcpFlags = TcpFlags(0x01);
    /// Synchronise sequence numbers.
    pub const SYN: TcpFlags = TcpFlags(0x02);
    /// Reset the connection.
    pub const RST: TcpFlags = TcpFlags(0x04);
    /// Push (ignored by shadow TCP, as by the Linux receiver).
    pub const PSH: TcpFlags = TcpFlags(0x08);
    /// The acknowledgement field is significant.
    pub const ACK: TcpFlags = TcpFlags(0x10);
    /// Urgent pointer significant. Ignored: shadow TCP delivers urgent bytes
    /// in the stream, which matches the kernel only with `SO_OOBINLINE`
    /// (tandem's services must set it, or not use urgent data).
    pub const URG: TcpFlags = TcpFlags(0x20);

    /// ECN-Echo (ignored by shadow TCP: congestion signals change no state
    /// a restore needs).
    pub const ECE: TcpFlags = TcpFlags(0x40);
    /// Congestion window reduced (ignored, like ECE).
    pub const CWR: TcpFlags = TcpFlags(0x80);

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the FIN flag is set.
    pub fn fin(self) -> bool {
        self.contains(Self::FIN)
    }

    /// Whether the SYN flag is set.
    pub fn syn(self) -> bool {
        self.contains(Self::SYN)
    }

    /// Whether the RST flag is set.
    pub fn rst(self) -> bool {
        self.contains(Self::RST)
    }

    /// Whether the ACK flag is set.
    pub fn ack(self) -> bool {
        self.contains(Self::ACK)
    }

    /// A SYN that can open a connection: no ACK, RST or FIN with it (the
    /// listener drops SYN|FIN, and SYN|RST or SYN|ACK are not openings).
    pub fn is_opening_syn(self) -> bool {
        self.syn() && !self.ack() && !self.rst() && !self.fin()
    }

    /// A SYN-ACK: SYN and ACK, no RST or FIN.
    pub fn is_synack(self) -> bool {
        self.syn() && self.ack() && !self.rst() && !self.fin()
    }
}

impl std::ops::BitOr for TcpFlags {
    type Output = TcpFlags;
    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | rhs.0)
    }
}

/// The timestamps option (RFC 7323).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct Timestamps {
    /// The sender's clock.
    pub tsval: u32,
    /// The last TSval the sender received from us (0 on a SYN).
    pub tsecr: u32,
}

/// One SACK block: sequence numbers `[left, right)` the sender holds.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct SackBlock {
    /// First sequence number of the block.
    pub left: u32,
    /// Sequence number after the block.
    pub right: u32,
}

/// Up to four SACK blocks (the most 40 bytes of options can carry), stored
/// inline so a segment and a connection never allocate for them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct SackBlocks {
    blocks: [SackBlock; 4],
    len: u8,
}

impl SackBlocks {
    /// The largest number of blocks one segment can carry.
    pub const MAX: usize = 4;

    /// Adds a block; returns `false` (and keeps the first four) when full.
    pub fn push(&mut self, block: SackBlock) -> bool {
        match self.blocks.get_mut(usize::from(self.len)) {
            Some(slot) => {
                *slot = block;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// The blocks, in the order they were carried.
    pub fn as_slice(&self) -> &[SackBlock] {
        self.blocks.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// How many blocks the set claims to hold (more than [`Self::MAX`] only
    /// in a corrupt snapshot).
    pub(crate) fn len_field(&self) -> usize {
        usize::from(self.len)
    }

    /// Builds a set from up to four blocks (extra ones are ignored).
    pub fn from_blocks(blocks: &[SackBlock]) -> SackBlocks {
        let mut set = SackBlocks::default();
        for b in blocks {
            set.push(*b);
        }
        set
    }
}

/// The TCP options shadow TCP uses. Unknown options are the parser's business.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SegmentOptions {
    /// Maximum segment size (SYN and SYN-ACK only).
    pub mss: Option<u16>,
    /// Window scale shift (SYN and SYN-ACK only). Values above 14 are
    /// treated as 14, as Linux does.
    pub wscale: Option<u8>,
    /// SACK permitted (SYN and SYN-ACK only).
    pub sack_permitted: bool,
    /// SACK blocks.
    pub sack: SackBlocks,
    /// Timestamps.
    pub timestamps: Option<Timestamps>,
}

/// One TCP segment, as captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Segment<'a> {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number (meaningful only with the ACK flag).
    pub ack: u32,
    /// Header flags.
    pub flags: TcpFlags,
    /// The raw 16-bit window field (scaled by the receiver, never on a SYN).
    pub window: u16,
    /// Parsed options.
    pub options: SegmentOptions,
    /// Payload bytes.
    pub payload: &'a [u8],
}

impl Segment<'_> {
    /// Sequence space the segment occupies: payload plus one for SYN and FIN
    /// (the kernel's `end_seq - seq`).
    pub fn seq_len(&self) -> u32 {
        // A payload longer than 4 GiB cannot come off a wire; saturate anyway.
        let len = u32::try_from(self.payload.len()).unwrap_or(u32::MAX);
        len.wrapping_add(u32::from(self.flags.syn()))
            .wrapping_add(u32::from(self.flags.fin()))
    }

    /// The kernel's `end_seq`.
    pub fn end_seq(&self) -> u32 {
        self.seq.wrapping_add(self.seq_len())
    }
}

/// Which way a captured segment travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Client → VIP, captured in INPUT.
    FromClient,
    /// VIP → client, captured in OUTPUT: only the primary's SYN-ACKs are
    /// logged (everything else the server sends is a function of the log).
    FromServer,
}

/// A connection's identity: the 4-tuple, client side first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct ConnKey {
    /// The client's address and port.
    #[serde(with = "super::snapshot::addr")]
    pub client: SocketAddr,
    /// The service's address (VIP) and port.
    #[serde(with = "super::snapshot::addr")]
    pub server: SocketAddr,
}

impl ConnKey {
    /// The key of a segment travelling in `direction`.
    pub fn of(direction: Direction, segment: &Segment<'_>) -> ConnKey {
        match direction {
            Direction::FromClient => ConnKey {
                client: segment.src,
                server: segment.dst,
            },
            Direction::FromServer => ConnKey {
                client: segment.dst,
                server: segment.src,
            },
        }
    }
}
