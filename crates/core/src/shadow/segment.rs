//! The input of shadow TCP: one captured TCP segment, already parsed.
//!
//! The TCP vocabulary (flags, options, SACK blocks, timestamps, sequence
//! numbers) is `tandem-wire`'s, as smoltcp's sockets use its `wire` module:
//! a [`Segment`] is the socket addresses plus the TCP fields shadow TCP
//! reads, borrowing the payload. [`crate::packet::segment_of`] builds one
//! from a parsed packet.

use std::net::SocketAddr;

pub use tandem_wire::{SackBlock, SackBlocks, SeqNumber, TcpFlags, TcpOptionSet, Timestamps};

/// One TCP segment, as captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Segment<'a> {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// Sequence number.
    pub seq: SeqNumber,
    /// Acknowledgement number (meaningful only with the ACK flag).
    pub ack: SeqNumber,
    /// Header flags.
    pub flags: TcpFlags,
    /// The raw 16-bit window field (scaled by the receiver, never on a SYN).
    pub window: u16,
    /// Parsed options (as Linux parses them: see
    /// [`tandem_wire::OptionsMode::Linux`]). A window scale above 14 is
    /// treated as 14, as Linux does.
    pub options: TcpOptionSet,
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
    pub fn end_seq(&self) -> SeqNumber {
        SeqNumber(self.seq.0.wrapping_add(self.seq_len()))
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
    #[serde(with = "addr")]
    pub client: SocketAddr,
    /// The service's address (VIP) and port.
    #[serde(with = "addr")]
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

/// Socket addresses with every field the state hash covers (serde's own
/// encoding of `SocketAddrV6` drops the flow label and scope id).
pub(crate) mod addr {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    enum Repr {
        V4([u8; 4], u16),
        V6([u8; 16], u16, u32, u32),
    }

    pub(crate) fn serialize<S: Serializer>(addr: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            SocketAddr::V4(a) => Repr::V4(a.ip().octets(), a.port()),
            SocketAddr::V6(a) => Repr::V6(a.ip().octets(), a.port(), a.flowinfo(), a.scope_id()),
        }
        .serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        Ok(match Repr::deserialize(d)? {
            Repr::V4(ip, port) => SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port)),
            Repr::V6(ip, port, flow, scope) => {
                SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, flow, scope))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // The shapes shadow TCP's own SACK and timestamp types had before it
    // used tandem-wire's (sequence numbers as plain u32): snapshots written
    // with them must still decode, and new ones must be byte-identical.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct OldSackBlock {
        left: u32,
        right: u32,
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct OldSackBlocks {
        blocks: [OldSackBlock; 4],
        len: u8,
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct OldTimestamps {
        tsval: u32,
        tsecr: u32,
    }

    fn old_blocks(blocks: &[(u32, u32)]) -> OldSackBlocks {
        let mut out = OldSackBlocks {
            blocks: std::array::from_fn(|_| OldSackBlock { left: 0, right: 0 }),
            len: 0,
        };
        for (slot, &(left, right)) in out.blocks.iter_mut().zip(blocks) {
            *slot = OldSackBlock { left, right };
            out.len += 1;
        }
        out
    }

    proptest! {
        #[test]
        fn snapshot_encodings_are_the_old_ones(
            blocks in proptest::collection::vec(any::<(u32, u32)>(), 0..=4),
            tsval: u32,
            tsecr: u32,
            seq: u32,
        ) {
            let new = SackBlocks::from_slice(
                &blocks
                    .iter()
                    .map(|&(l, r)| SackBlock { left: SeqNumber(l), right: SeqNumber(r) })
                    .collect::<Vec<_>>(),
            )
            .unwrap();
            let old_bytes = postcard::to_stdvec(&old_blocks(&blocks)).unwrap();
            prop_assert_eq!(&postcard::to_stdvec(&new).unwrap(), &old_bytes);
            prop_assert_eq!(postcard::from_bytes::<SackBlocks>(&old_bytes).unwrap(), new);

            let ts = Timestamps { tsval, tsecr };
            let old_ts = postcard::to_stdvec(&OldTimestamps { tsval, tsecr }).unwrap();
            prop_assert_eq!(&postcard::to_stdvec(&ts).unwrap(), &old_ts);
            prop_assert_eq!(postcard::from_bytes::<Timestamps>(&old_ts).unwrap(), ts);

            let old_seq = postcard::to_stdvec(&seq).unwrap();
            prop_assert_eq!(&postcard::to_stdvec(&SeqNumber(seq)).unwrap(), &old_seq);
            prop_assert_eq!(postcard::from_bytes::<SeqNumber>(&old_seq).unwrap(), SeqNumber(seq));
        }
    }

    #[test]
    fn a_set_claiming_more_than_four_blocks_does_not_decode() {
        let mut corrupt = old_blocks(&[(1, 2)]);
        corrupt.len = 5;
        let bytes = postcard::to_stdvec(&corrupt).unwrap();
        assert!(postcard::from_bytes::<SackBlocks>(&bytes).is_err());
        corrupt.len = 4;
        let bytes = postcard::to_stdvec(&corrupt).unwrap();
        assert_eq!(postcard::from_bytes::<SackBlocks>(&bytes).unwrap().len(), 4);
    }
}
