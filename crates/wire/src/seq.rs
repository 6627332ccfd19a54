//! TCP sequence numbers: 32-bit values compared modulo 2³².
//!
//! Shadow TCP reasons about sequence numbers that wrap (a long-lived or fast
//! connection passes 2³² bytes; a random ISN can sit just below the wrap), so
//! plain `u32` comparisons are wrong. [`SeqNumber`] compares in serial-number
//! arithmetic (RFC 1982, as the kernel's `before()`/`after()`): `a < b` iff
//! `(b - a) as i32 > 0`. That order is only meaningful for numbers less than
//! 2³¹ apart — which TCP guarantees for everything inside a window — and is
//! **not transitive** across the whole circle, so `SeqNumber` deliberately
//! implements `PartialOrd` but not `Ord` (it must never key a `BTreeMap`).

use std::cmp::Ordering;
use std::fmt;
use std::ops::{Add, AddAssign, Sub, SubAssign};

/// A TCP sequence (or acknowledgement) number with wrapping arithmetic and
/// serial-number comparisons.
///
/// With the `serde` feature it serialises as a newtype around its `u32`
/// (postcard writes exactly the bytes of the `u32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SeqNumber(pub u32);

impl SeqNumber {
    /// Bytes from `base` forward to `self`, modulo 2³².
    ///
    /// This is the offset of `self` in a stream that starts at `base`, valid
    /// whenever `self` is not more than 2³² - 1 bytes ahead.
    pub fn offset_from(self, base: SeqNumber) -> u32 {
        self.0.wrapping_sub(base.0)
    }

    /// Whether `self` lies in the half-open window `[start, start + len)`,
    /// computed on offsets so that it holds across the wrap for any `len`
    /// up to 2³².
    pub fn in_window(self, start: SeqNumber, len: u32) -> bool {
        self.offset_from(start) < len
    }

    /// The later of two sequence numbers (`self` when they are equal or
    /// exactly 2³¹ apart, where neither is later).
    pub fn max(self, other: SeqNumber) -> SeqNumber {
        if other > self {
            other
        } else {
            self
        }
    }

    /// The earlier of two sequence numbers (`self` when they are equal or
    /// exactly 2³¹ apart, where neither is earlier).
    pub fn min(self, other: SeqNumber) -> SeqNumber {
        if other < self {
            other
        } else {
            self
        }
    }
}

impl fmt::Display for SeqNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<u32> for SeqNumber {
    fn from(value: u32) -> Self {
        SeqNumber(value)
    }
}

impl From<SeqNumber> for u32 {
    fn from(value: SeqNumber) -> Self {
        value.0
    }
}

/// Advances by `rhs` bytes, wrapping; `rhs` is taken modulo 2³² (a TCP
/// stream offset is only meaningful modulo 2³² anyway).
impl Add<usize> for SeqNumber {
    type Output = SeqNumber;
    fn add(self, rhs: usize) -> SeqNumber {
        SeqNumber(self.0.wrapping_add(rhs as u32))
    }
}

impl AddAssign<usize> for SeqNumber {
    fn add_assign(&mut self, rhs: usize) {
        *self = *self + rhs;
    }
}

/// Steps back by `rhs` bytes, wrapping; `rhs` is taken modulo 2³².
impl Sub<usize> for SeqNumber {
    type Output = SeqNumber;
    fn sub(self, rhs: usize) -> SeqNumber {
        SeqNumber(self.0.wrapping_sub(rhs as u32))
    }
}

impl SubAssign<usize> for SeqNumber {
    fn sub_assign(&mut self, rhs: usize) {
        *self = *self - rhs;
    }
}

/// The signed distance `self - rhs` (positive when `self` is later), as the
/// kernel computes `(s32)(seq1 - seq2)`.
impl Sub<SeqNumber> for SeqNumber {
    type Output = i32;
    fn sub(self, rhs: SeqNumber) -> i32 {
        self.0.wrapping_sub(rhs.0) as i32
    }
}

/// Serial-number order: `Some` unless the two numbers are exactly 2³¹ apart,
/// where RFC 1982 leaves the order undefined (and neither `<` nor `>`
/// holds). See the module notes on transitivity.
impl PartialOrd for SeqNumber {
    fn partial_cmp(&self, other: &SeqNumber) -> Option<Ordering> {
        let diff = *self - *other;
        if diff == i32::MIN {
            None
        } else {
            Some(diff.cmp(&0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_and_orders_across_the_wrap() {
        let a = SeqNumber(u32::MAX - 1);
        let b = a + 4usize;
        assert_eq!(b, SeqNumber(2));
        assert!(a < b);
        assert!(b > a);
        assert_eq!(b - a, 4);
        assert_eq!(a - b, -4);
        assert_eq!(b.offset_from(a), 4);
        assert_eq!(b - 4usize, a);
        assert!(b.in_window(a, 5));
        assert!(!b.in_window(a, 4));
        assert_eq!(a.max(b), b);
        assert_eq!(a.min(b), a);
    }

    #[test]
    fn antipodes_are_unordered() {
        let a = SeqNumber(0);
        let b = SeqNumber(1 << 31);
        assert_eq!(a.partial_cmp(&b), None);
        // Bound first: the point is that each comparison is false.
        let (lt, gt, le, ge) = (a < b, a > b, a <= b, a >= b);
        assert!(!lt && !gt && !le && !ge && a != b);
        assert_eq!(a.max(b), a);
        assert_eq!(b.max(a), b);
    }
}
