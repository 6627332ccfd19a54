//! The Internet checksum (RFC 1071) and the TCP pseudo-headers.
//!
//! Sums are accumulated in a `u64`, which cannot overflow for any slice a
//! process can hold, and folded to 16 bits only at the end; that keeps the
//! code free of overflow checks without giving up on exactness.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::ip::IpProtocol;

/// The unfolded one's-complement sum of `data` read as big-endian 16-bit
/// words, an odd last byte padded with a zero byte (RFC 1071).
pub fn sum(data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    let mut acc: u64 = 0;
    for word in &mut chunks {
        acc += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    acc
}

/// Folds an unfolded sum into 16 bits with end-around carry.
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // The loop leaves acc <= 0xffff.
    acc as u16
}

/// The checksum to store for a header whose bytes (checksum field zeroed)
/// sum to `acc`.
pub fn finish(acc: u64) -> u16 {
    !fold(acc)
}

/// Whether bytes summing to `acc`, checksum field included, verify.
///
/// One's-complement arithmetic has two zeros; a correct checksum makes the
/// folded total 0xffff whichever zero the sender wrote, as in the kernel.
pub fn verifies(acc: u64) -> bool {
    fold(acc) == 0xffff
}

/// The IPv4 header checksum of `data` (checksum field zeroed or not: this is
/// the plain RFC 1071 checksum of the bytes given).
pub fn internet_checksum(data: &[u8]) -> u16 {
    finish(sum(data))
}

/// The addresses of the IP pseudo-header a TCP checksum covers.
///
/// The upper-layer protocol and length are not stored: they come from the
/// segment being checksummed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PseudoHeader {
    /// The IPv4 pseudo-header (RFC 793): source, destination, zero,
    /// protocol, TCP length.
    V4 {
        /// The IPv4 source address.
        src: Ipv4Addr,
        /// The IPv4 destination address.
        dst: Ipv4Addr,
    },
    /// The IPv6 pseudo-header (RFC 8200 §8.1): source, destination, 32-bit
    /// upper-layer length, three zero bytes, next header.
    V6 {
        /// The IPv6 source address.
        src: Ipv6Addr,
        /// The IPv6 destination address.
        dst: Ipv6Addr,
    },
}

impl PseudoHeader {
    /// The unfolded sum of this pseudo-header for an upper-layer packet of
    /// `protocol` and `len` bytes.
    ///
    /// `len` is added as two 16-bit halves, which is the RFC value for any
    /// length the header can describe (16 bits for IPv4, 32 for IPv6) and
    /// never overflows for longer ones.
    pub fn sum(&self, protocol: IpProtocol, len: usize) -> u64 {
        let len = len as u64;
        let len_sum = (len & 0xffff) + ((len >> 16) & 0xffff) + (len >> 32);
        let addrs = match self {
            PseudoHeader::V4 { src, dst } => sum(&src.octets()) + sum(&dst.octets()),
            PseudoHeader::V6 { src, dst } => sum(&src.octets()) + sum(&dst.octets()),
        };
        addrs + u64::from(protocol.0) + len_sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (folded).
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(internet_checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
        assert_eq!(sum(&[]), 0);
    }

    #[test]
    fn both_zeros_verify() {
        // Bytes summing to 0xffff verify with checksum 0x0000 or 0xffff.
        let acc = sum(&[0xff, 0xfe, 0x00, 0x01]);
        assert!(verifies(acc));
        assert!(verifies(acc + 0xffff));
        assert!(!verifies(acc + 1));
    }

    #[test]
    fn fold_never_overflows() {
        assert_eq!(fold(u64::MAX), 0xffff);
        assert_eq!(fold(0), 0);
    }
}
