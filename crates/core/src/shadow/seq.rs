//! Log time, and the kernel's sequence comparisons on [`SeqNumber`].
//!
//! TCP sequence numbers wrap at 2³²; `tandem-wire`'s [`SeqNumber`] carries
//! the wrapping arithmetic, and the kernel compares them with
//! `before()`/`after()` (a signed 32-bit difference), and so do we. Inside a
//! connection, byte positions are kept as unwrapped 64-bit *stream offsets*
//! (offset 0 is the byte after the ISN), which cannot wrap in practice and
//! make reassembly and output bookkeeping plain integer arithmetic.

use tandem_wire::SeqNumber;

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

/// The kernel's `before(a, b)`: `(s32)(a - b) < 0`.
///
/// Not `a < b` on [`SeqNumber`]: for two numbers exactly 2³¹ apart the
/// kernel answers "before" (and "after") where serial-number order answers
/// neither, and shadow TCP must answer as the kernel does.
pub(crate) fn before(a: SeqNumber, b: SeqNumber) -> bool {
    a - b < 0
}

/// The kernel's `after(a, b)`: `before(b, a)`.
pub(crate) fn after(a: SeqNumber, b: SeqNumber) -> bool {
    before(b, a)
}

/// The sequence number of stream offset `off` when offset 0 is `first`.
pub(crate) fn seq_at(first: SeqNumber, off: u64) -> SeqNumber {
    // Truncation is the point: sequence space is the offset modulo 2³².
    SeqNumber(first.0.wrapping_add(off as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparisons_wrap() {
        let s = SeqNumber;
        assert!(before(s(u32::MAX), s(0)));
        assert!(after(s(0), s(u32::MAX)));
        assert!(before(s(5), s(6)));
        assert!(!before(s(6), s(6)));
        assert!(after(s(0x8000_0000 - 1), s(0)));
    }

    #[test]
    fn antipodes_compare_as_the_kernel_does() {
        // (s32)(0 - 2^31) = i32::MIN < 0: the kernel says both.
        let (a, b) = (SeqNumber(0), SeqNumber(1 << 31));
        assert!(before(a, b) && after(a, b));
        assert!(before(b, a) && after(b, a));
    }

    #[test]
    fn offsets_map_to_wrapping_sequence_numbers() {
        assert_eq!(seq_at(SeqNumber(u32::MAX), 2), SeqNumber(1));
        assert_eq!(seq_at(SeqNumber(7), 1 << 32), SeqNumber(7));
    }
}
