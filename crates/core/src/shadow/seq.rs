//! Time and 32-bit sequence arithmetic.
//!
//! TCP sequence numbers wrap at 2³²; the kernel compares them with
//! `before()`/`after()` (a signed 32-bit difference), and so do we. Inside a
//! connection, byte positions are kept as unwrapped 64-bit *stream offsets*
//! (offset 0 is the byte after the ISN), which cannot wrap in practice and
//! make reassembly and output bookkeeping plain integer arithmetic.

/// A point in log time, in milliseconds. Shadow TCP never reads a clock: the
/// caller passes the timestamp of the log entry being applied, so every
/// replica sees the same time at the same log position.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Millis(pub u64);

impl Millis {
    /// `self + ms`, saturating (a time far in the future never wraps to the past).
    pub fn plus(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self`, 0 if `earlier` is later.
    pub fn since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// The kernel's `before(a, b)`: `a` comes strictly before `b` in sequence space.
pub(crate) fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// The kernel's `after(a, b)`.
pub(crate) fn after(a: u32, b: u32) -> bool {
    before(b, a)
}

/// The sequence number of stream offset `off` when offset 0 is `first`.
pub(crate) fn seq_at(first: u32, off: u64) -> u32 {
    // Truncation is the point: sequence space is the offset modulo 2³².
    first.wrapping_add(off as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons_wrap() {
        assert!(before(u32::MAX, 0));
        assert!(after(0, u32::MAX));
        assert!(before(5, 6));
        assert!(!before(6, 6));
        assert!(after(0x8000_0000 - 1, 0));
    }

    #[test]
    fn offsets_map_to_wrapping_sequence_numbers() {
        assert_eq!(seq_at(u32::MAX, 2), 1);
        assert_eq!(seq_at(7, 1 << 32), 7);
    }
}
