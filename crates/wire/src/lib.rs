//! Wire formats for tandem: checked zero-copy views and owned
//! representations of Ethernet II, ARP, IPv4, IPv6 and TCP. No I/O.
//!
//! Every client packet tandem captures is parsed here before it is logged,
//! and every replica's shadow TCP rebuilds connections from what these
//! parsers report, so they must never panic and must say precisely why a
//! packet was refused (docs/architecture.md §3.1–3.2, invariant I6).
//!
//! The shape follows smoltcp's `wire` module. For each protocol:
//! - a view, `Packet<T: AsRef<[u8]>>` (`Frame` for Ethernet), over a
//!   buffer. [`new_checked`](ipv4::Packet::new_checked) validates every
//!   length the accessors rely on, so getters on a checked view never
//!   panic; setters exist where `T: AsMut<[u8]>`. `new_unchecked` is for
//!   emitting into a fresh buffer;
//! - an owned `Repr` with `parse(&Packet)` and `emit(&self, &mut Packet)`
//!   plus `buffer_len()`. Unlike smoltcp, `emit` returns a `Result`: it
//!   checks the buffer's size first and refuses what the header cannot
//!   encode, instead of panicking.
//!
//! [`IpTcpRepr::parse`] is the one-call entry point for what the capture
//! sees (an IPv4 or IPv6 packet carrying TCP), and [`SeqNumber`] carries
//! TCP's wrapping sequence arithmetic. Checksums are RFC 1071
//! ([`checksum`]), with the TCP pseudo-header for both IP versions
//! ([`PseudoHeader`]).
//!
//! With the `serde` feature, [`SeqNumber`], [`SackBlock`], [`SackBlocks`]
//! and [`Timestamps`] implement serde's traits (shadow TCP keeps them in its
//! replicated state and snapshots).
//!
//! Robustness is tested with proptest on arbitrary bytes for every parser
//! (`tests/`); that stands in for cargo-fuzz, which needs a nightly
//! toolchain this project does not use.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod arp;
pub mod checksum;
mod error;
pub mod ethernet;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
mod seq;
#[cfg(feature = "serde")]
mod serde_impls;
pub mod tcp;

pub use arp::{gratuitous_arp_request, ArpOperation, Packet as ArpPacket, Repr as ArpRepr};
pub use checksum::PseudoHeader;
pub use error::{Layer, Result, Unsupported, WireError};
pub use ethernet::{EtherType, EthernetAddress, Frame as EthernetFrame, Repr as EthernetRepr};
pub use ip::{IpProtocol, IpRepr, IpTcpRepr};
pub use ipv4::{Packet as Ipv4Packet, Repr as Ipv4Repr};
pub use ipv6::{Packet as Ipv6Packet, Repr as Ipv6Repr};
pub use seq::SeqNumber;
pub use tcp::{
    OptionSet as TcpOptionSet, OptionsIter as TcpOptionsIter, OptionsMode, Packet as TcpPacket,
    ParseChecks, Repr as TcpRepr, SackBlock, SackBlocks, TcpFlags, TcpOption, Timestamps,
};
