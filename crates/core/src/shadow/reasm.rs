//! In-order reassembly of one direction of a TCP stream.
//!
//! Positions are 64-bit stream offsets (see [`super::seq`]); the caller turns
//! sequence numbers into offsets. Out-of-order bytes are held in a dense
//! buffer that starts at the next expected offset, with a bitmap of which
//! bytes are present. Memory is therefore bounded by the byte span held
//! (≤ the limit, plus one bit per byte), whatever the segmentation: a flood
//! of one-byte segments with gaps costs no more than one big segment, so the
//! limit can be a plain byte count that never undercuts the kernel's window.
//! An idle stream (nothing held) owns no heap memory at all.
//!
//! Duplicates and overlaps: the first copy of a byte wins. Honest peers
//! retransmit the same bytes; for a peer that sends different bytes at the
//! same offset the kernel's choice depends on its skb layout, and ours is the
//! first received (documented divergence, harmless for honest peers).

use std::collections::VecDeque;

use super::hash::Fnv64;

/// What inserting a segment did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inserted {
    /// Bytes that became deliverable, in order (possibly including bytes held
    /// from earlier segments).
    pub delivered: Vec<u8>,
    /// The peer's FIN became in-order: the stream has ended.
    pub fin: bool,
    /// Bytes of the segment that were new (not duplicates, within bounds).
    pub new_bytes: usize,
}

/// The receive side of one stream.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Reassembly {
    /// Offset of the next byte to deliver (bytes delivered so far).
    next: u64,
    /// Bytes at offsets `[next, next + held.len())`; absent ones are zero.
    held: VecDeque<u8>,
    /// Bit `i` of the bitmap is offset `word_base + i`: whether that byte is held.
    present: VecDeque<u64>,
    /// Offset of bit 0 of `present[0]`, a multiple of 64, ≤ `next`.
    word_base: u64,
    /// Offset of the peer's FIN, once a FIN inside the bounds was seen.
    fin_at: Option<u64>,
    /// The FIN has been reached in order.
    fin_done: bool,
}

impl Reassembly {
    /// A stream that has delivered nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Offset of the next byte expected (= bytes delivered).
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Whether the peer's FIN has been reached in order.
    pub fn fin_done(&self) -> bool {
        self.fin_done
    }

    /// Sequence space consumed: bytes delivered, plus one once the FIN is in.
    pub fn consumed(&self) -> u64 {
        self.next.saturating_add(u64::from(self.fin_done))
    }

    /// Bytes currently held out of order.
    pub fn held_bytes(&self) -> usize {
        let mut n = 0usize;
        for w in &self.present {
            n = n.saturating_add(w.count_ones() as usize);
        }
        n
    }

    /// The offset just past the highest held byte, if anything is held (used
    /// for the RFC 5961 RST check against our highest SACK edge).
    pub fn held_end(&self) -> Option<u64> {
        if self.held.is_empty() {
            None
        } else {
            self.next.checked_add(self.held.len() as u64)
        }
    }

    /// Heap bytes owned (allocated capacity, not just length).
    pub fn heap_bytes(&self) -> usize {
        self.held.capacity() + self.present.capacity() * std::mem::size_of::<u64>()
    }

    /// Checks the invariants the insertion code relies on (for a decoded
    /// snapshot): the bitmap starts at the word holding `next`, covers no
    /// more than the buffer, marks nothing past its end, and the buffer is
    /// within `limit`.
    pub fn validate(&self, limit: u64) -> Result<(), &'static str> {
        if self.word_base != self.next & !63 {
            return Err("reassembly bitmap not at the next offset's word");
        }
        let span = (self.next - self.word_base).saturating_add(self.held.len() as u64);
        if self.held.len() as u64 > limit {
            return Err("more out-of-order data than the limit");
        }
        if self.present.len() as u64 > span.div_ceil(64) {
            return Err("reassembly bitmap longer than the buffer");
        }
        let end = self.next.saturating_add(self.held.len() as u64);
        for (i, word) in self.present.iter().enumerate() {
            let base = self.word_base.saturating_add(64 * i as u64);
            // Bits below `hi` of this word are at or before the buffer's end
            // (bits below `next` are stale marks of delivered bytes, never
            // looked at again).
            let hi = end.clamp(base, base.saturating_add(64)) - base;
            let inside = if hi >= 64 { u64::MAX } else { (1u64 << hi) - 1 };
            if word & !inside != 0 {
                return Err("reassembly bitmap marks bytes outside the buffer");
            }
        }
        if self.fin_done && !self.held.is_empty() {
            return Err("out-of-order data after the FIN");
        }
        match self.fin_at {
            Some(f) if f < self.next => Err("FIN before delivered data"),
            Some(f) if self.fin_done && f != self.next => Err("FIN not at the stream's end"),
            None if self.fin_done => Err("FIN reached but never seen"),
            _ => Ok(()),
        }
    }

    fn has(&self, off: u64) -> bool {
        let Some(i) = off.checked_sub(self.word_base) else {
            return false;
        };
        let (w, b) = ((i / 64) as usize, i % 64);
        self.present.get(w).is_some_and(|word| word & (1 << b) != 0)
    }

    fn set(&mut self, off: u64) {
        let Some(i) = off.checked_sub(self.word_base) else {
            return;
        };
        let (w, b) = ((i / 64) as usize, i % 64);
        while self.present.len() <= w {
            self.present.push_back(0);
        }
        if let Some(word) = self.present.get_mut(w) {
            *word |= 1 << b;
        }
    }

    /// Drops everything held and frees its memory.
    fn clear_held(&mut self) {
        self.held = VecDeque::new();
        self.present = VecDeque::new();
        self.word_base = self.next & !63;
    }

    /// Inserts `data` found at stream offset `start`, with an optional FIN
    /// after it.
    ///
    /// `limit` bounds how far past `next` bytes are held out of order; bytes
    /// beyond it are dropped (the caller sizes it so the kernel never keeps a
    /// byte we drop). A segment starting exactly at `next` with nothing held
    /// is delivered whole without being copied into the buffer, as the
    /// kernel queues a whole in-order segment even past its window edge.
    pub fn insert(&mut self, start: u64, data: &[u8], fin: bool, limit: u64) -> Inserted {
        let mut out = Inserted::default();
        if self.fin_done {
            // Everything after the FIN is ignored (tcp_fin() purged the
            // out-of-order queue; CLOSE_WAIT/LAST_ACK/CLOSING drop new data).
            return out;
        }
        let end = start.saturating_add(data.len() as u64);
        if fin {
            // A whole in-order segment is accepted past the limit (fast path
            // below), and so is its FIN.
            let whole = start <= self.next && self.held.is_empty();
            self.note_fin(end, if whole { u64::MAX } else { limit });
        }
        // Bytes past a known FIN are not part of the stream.
        let stop = match self.fin_at {
            Some(f) => end.min(f),
            None => end,
        };
        let from = start.max(self.next);
        if from < stop {
            let skip = usize::try_from(from - start).unwrap_or(usize::MAX);
            let take = usize::try_from(stop - from).unwrap_or(usize::MAX);
            let bytes = data.get(skip..).unwrap_or(&[]);
            let bytes = bytes.get(..take.min(bytes.len())).unwrap_or(&[]);
            if from == self.next && self.held.is_empty() {
                // Fast path: in order, nothing held.
                out.new_bytes = bytes.len();
                out.delivered = bytes.to_vec();
                self.next = self.next.saturating_add(bytes.len() as u64);
                self.word_base = self.next & !63;
            } else {
                out.new_bytes = self.hold(from, bytes, limit);
                out.delivered = self.pop_in_order();
            }
        }
        if self.fin_at == Some(self.next) && self.held_bytes() == 0 {
            self.fin_done = true;
            self.clear_held();
            out.fin = true;
        }
        out
    }

    /// Records a FIN at offset `at` (after the segment's data).
    fn note_fin(&mut self, at: u64, limit: u64) {
        if at < self.next || at > self.next.saturating_add(limit) {
            // A FIN inside delivered data is a stale duplicate; one past the
            // bounds cannot be held (the peer will retransmit it).
            return;
        }
        // Contradictory FINs only come from a broken or hostile peer; keep
        // the earliest, and forget held bytes past it (they are not stream).
        let at = self.fin_at.map_or(at, |f| f.min(at));
        self.fin_at = Some(at);
        let keep = usize::try_from(at - self.next).unwrap_or(usize::MAX);
        if self.held.len() > keep {
            self.held.truncate(keep);
            let bits = at.saturating_sub(self.word_base);
            let words = usize::try_from(bits.div_ceil(64)).unwrap_or(usize::MAX);
            self.present.truncate(words);
            if bits & 63 != 0 {
                if let Some(last) = self.present.back_mut() {
                    *last &= (1u64 << (bits % 64)) - 1;
                }
            }
        }
    }

    /// Copies the absent bytes of `bytes` (at offset `from` ≥ `next`) into the
    /// buffer, up to `next + limit`. Returns how many were new.
    fn hold(&mut self, from: u64, bytes: &[u8], limit: u64) -> usize {
        let cap_end = self.next.saturating_add(limit);
        if from >= cap_end {
            return 0;
        }
        if self.held.is_empty() {
            self.word_base = self.next & !63;
        }
        let room = usize::try_from(cap_end - from).unwrap_or(usize::MAX);
        let bytes = bytes.get(..room.min(bytes.len())).unwrap_or(&[]);
        let rel = usize::try_from(from - self.next).unwrap_or(usize::MAX);
        let need = rel.saturating_add(bytes.len());
        if self.held.len() < need {
            self.held.resize(need, 0);
        }
        let mut new = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let off = from + i as u64;
            if !self.has(off) {
                if let Some(slot) = self.held.get_mut(rel + i) {
                    *slot = b;
                }
                self.set(off);
                new += 1;
            }
        }
        new
    }

    /// Removes and returns the contiguous run of held bytes starting at `next`.
    fn pop_in_order(&mut self) -> Vec<u8> {
        let mut run = 0u64;
        let mut off = self.next;
        // Whole words first, then bit by bit.
        loop {
            let i = off.saturating_sub(self.word_base);
            let (w, b) = ((i / 64) as usize, i % 64);
            let Some(word) = self.present.get(w) else {
                break;
            };
            let ones = u64::from((word >> b).trailing_ones()).min(64 - b);
            run += ones;
            off += ones;
            if b + ones < 64 {
                break;
            }
        }
        let n = usize::try_from(run)
            .unwrap_or(usize::MAX)
            .min(self.held.len());
        let delivered: Vec<u8> = self.held.drain(..n).collect();
        self.next = self.next.saturating_add(n as u64);
        if self.held.is_empty() {
            self.clear_held();
        } else {
            while self.word_base.saturating_add(64) <= self.next {
                self.present.pop_front();
                self.word_base += 64;
            }
        }
        delivered
    }

    /// Feeds the stream's whole state into a hash.
    pub fn hash_into(&self, h: &mut Fnv64) {
        h.u64(self.next)
            .u64(self.word_base)
            .u64(self.held.len() as u64);
        let (a, b) = self.held.as_slices();
        h.bytes(a).bytes(b);
        h.u64(self.present.len() as u64);
        for w in &self.present {
            h.u64(*w);
        }
        h.u64(self.fin_at.map_or(u64::MAX, |f| f))
            .bool(self.fin_done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMIT: u64 = 1 << 20;

    #[test]
    fn in_order_out_of_order_and_duplicates() {
        let mut r = Reassembly::new();
        assert_eq!(r.insert(0, b"ab", false, LIMIT).delivered, b"ab");
        let got = r.insert(4, b"ef", false, LIMIT);
        assert!(got.delivered.is_empty());
        assert_eq!(got.new_bytes, 2);
        assert_eq!(r.held_bytes(), 2);
        assert_eq!(r.held_end(), Some(6));
        // A duplicate of the held bytes adds nothing.
        assert_eq!(r.insert(4, b"ef", false, LIMIT).new_bytes, 0);
        // Overlap covering the gap and the held bytes.
        let got = r.insert(1, b"bcdefg", true, LIMIT);
        assert_eq!(got.delivered, b"cdefg");
        assert!(got.fin);
        assert!(r.fin_done());
        assert_eq!(r.consumed(), 8);
        assert_eq!(r.heap_bytes(), 0);
        // After the FIN, nothing more.
        assert!(r.insert(7, b"zz", false, LIMIT).delivered.is_empty());
    }

    #[test]
    fn out_of_order_fin_waits_for_the_gap() {
        let mut r = Reassembly::new();
        assert!(!r.insert(3, b"d", true, LIMIT).fin);
        let got = r.insert(0, b"abc", false, LIMIT);
        assert_eq!(got.delivered, b"abcd");
        assert!(got.fin);
    }

    #[test]
    fn data_past_a_fin_is_dropped() {
        let mut r = Reassembly::new();
        r.insert(10, b"0123456789", false, LIMIT);
        r.insert(2, b"cd", true, LIMIT);
        assert_eq!(r.held_bytes(), 2);
        let got = r.insert(0, b"ab", false, LIMIT);
        assert_eq!(got.delivered, b"abcd");
        assert!(got.fin);
    }

    #[test]
    fn the_limit_bounds_held_bytes_not_in_order_ones() {
        let mut r = Reassembly::new();
        assert_eq!(r.insert(5, &[1; 100], false, 10).new_bytes, 5);
        assert_eq!(r.held_bytes(), 5);
        // An in-order segment with nothing held is delivered whole.
        let mut r = Reassembly::new();
        let got = r.insert(0, &[1; 100], true, 10);
        assert_eq!(got.delivered.len(), 100);
        assert!(got.fin);
    }

    #[test]
    fn bitmap_across_word_boundaries() {
        let mut r = Reassembly::new();
        r.insert(0, &[0; 60], false, LIMIT);
        for start in (61..400).step_by(2) {
            r.insert(start, &[start as u8], false, LIMIT);
        }
        let mut total = 60;
        for start in (60..400).step_by(2) {
            let got = r.insert(start, &[start as u8], false, LIMIT);
            total += got.delivered.len();
        }
        assert_eq!(total, 400);
        assert_eq!(r.held_bytes(), 0);
        assert_eq!(r.heap_bytes(), 0);
    }

    proptest! {
        /// Any cut, any order, any duplication: the stream comes out whole.
        #[test]
        fn any_order_reassembles(
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            cuts in proptest::collection::vec((any::<u16>(), any::<u16>()), 0..80),
            shuffle in any::<u64>(),
        ) {
            let n = data.len() as u64;
            let mut segs: Vec<(u64, u64)> = cuts
                .iter()
                .map(|&(a, l)| {
                    let s = u64::from(a) % (n + 1);
                    (s, (s + u64::from(l) % 300).min(n))
                })
                .collect();
            // Guarantee coverage, then a deterministic shuffle.
            let mut s = 0;
            while s < n {
                let e = (s + 1 + (shuffle.rotate_left(s as u32) % 200)).min(n);
                segs.push((s, e));
                s = e;
            }
            let mut x = shuffle | 1;
            for i in (1..segs.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                segs.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut r = Reassembly::new();
            let mut out = Vec::new();
            for &(s, e) in &segs {
                let got = r.insert(s, &data[s as usize..e as usize], e == n && n > 0, 4096);
                out.extend_from_slice(&got.delivered);
                prop_assert!(r.held_bytes() <= 4096);
            }
            prop_assert_eq!(&out, &data);
            prop_assert_eq!(r.next(), n);
        }
    }
}
