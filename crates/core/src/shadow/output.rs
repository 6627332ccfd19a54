//! Output bookkeeping: what the server application wrote on one connection,
//! kept until the client acknowledges it.
//!
//! Every replica appends the same bytes at the same log position (the
//! application is deterministic and sees only committed input), so the
//! stream offsets, the unacknowledged bytes and the running hash agree
//! everywhere; a new primary writes exactly these bytes into its restored
//! socket's send queue.

use std::collections::VecDeque;

use super::hash::Fnv64;

/// The server's side of one stream.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Output {
    /// Stream offset of the oldest unacknowledged byte (bytes released).
    acked: u64,
    /// Unacknowledged bytes, starting at offset `acked`.
    unacked: VecDeque<u8>,
    /// The application closed its side: a FIN follows the bytes.
    fin: bool,
    /// The client acknowledged the FIN.
    fin_acked: bool,
    /// FNV-1a over every byte ever appended, in order.
    hash: Fnv64,
}

/// Why output could not be appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OutputError {
    /// The application already closed its side.
    #[error("the connection's output is closed")]
    Closed,
}

impl Output {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes the application wrote.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), OutputError> {
        if self.fin {
            return Err(OutputError::Closed);
        }
        self.hash.bytes(bytes);
        self.unacked.extend(bytes.iter().copied());
        Ok(())
    }

    /// The application closed its side: a FIN is queued after the bytes.
    /// Idempotent.
    pub fn close(&mut self) {
        self.fin = true;
    }

    /// Whether a FIN is queued (or was sent and acknowledged).
    pub fn closed(&self) -> bool {
        self.fin
    }

    /// Whether the FIN was acknowledged.
    pub fn fin_acked(&self) -> bool {
        self.fin_acked
    }

    /// Stream offset of the first unacknowledged byte.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Total bytes ever appended.
    pub fn total(&self) -> u64 {
        self.acked.saturating_add(self.unacked.len() as u64)
    }

    /// Sequence space used after the ISN: bytes plus one for a FIN.
    pub fn seq_used(&self) -> u64 {
        self.total().saturating_add(u64::from(self.fin))
    }

    /// Sequence space acknowledged after the ISN (the `snd_una` offset).
    pub fn seq_acked(&self) -> u64 {
        self.acked.saturating_add(u64::from(self.fin_acked))
    }

    /// The unacknowledged bytes.
    pub fn unacked(&self) -> &VecDeque<u8> {
        &self.unacked
    }

    /// The running hash of everything appended.
    pub fn hash(&self) -> u64 {
        self.hash.finish()
    }

    /// The client acknowledged sequence space up to offset `off` (an offset
    /// in [`Self::seq_used`] units, already checked to be ≤ it). Releases the
    /// covered bytes and returns how many were released.
    pub fn ack_to(&mut self, off: u64) -> u64 {
        let off = off.min(self.seq_used());
        if off <= self.acked {
            return 0;
        }
        let bytes = off.min(self.total()) - self.acked;
        let n = usize::try_from(bytes)
            .unwrap_or(usize::MAX)
            .min(self.unacked.len());
        self.unacked.drain(..n);
        self.acked = self.acked.saturating_add(n as u64);
        if self.unacked.is_empty() {
            // Give the memory back: an idle connection holds no buffer.
            self.unacked = VecDeque::new();
        }
        if self.fin && off > self.total() {
            self.fin_acked = true;
        }
        n as u64
    }

    /// Checks the invariants (for a decoded snapshot).
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.fin_acked && !self.fin {
            return Err("FIN acknowledged but never queued");
        }
        if self
            .acked
            .checked_add(self.unacked.len() as u64 + 1)
            .is_none()
        {
            return Err("output offsets overflow");
        }
        Ok(())
    }

    /// Heap bytes owned.
    pub fn heap_bytes(&self) -> usize {
        self.unacked.capacity()
    }

    /// Feeds the whole state into a hash (the byte contents are covered by
    /// the running hash plus the offsets).
    pub fn hash_into(&self, h: &mut Fnv64) {
        h.u64(self.acked)
            .u64(self.unacked.len() as u64)
            .bool(self.fin)
            .bool(self.fin_acked)
            .u64(self.hash.finish());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn releases_what_is_acked_then_the_fin() {
        let mut o = Output::new();
        o.append(b"hello").unwrap();
        o.append(b" world").unwrap();
        assert_eq!(o.ack_to(3), 3);
        assert_eq!(o.unacked().iter().copied().collect::<Vec<_>>(), b"lo world");
        o.close();
        assert_eq!(o.append(b"x"), Err(OutputError::Closed));
        assert_eq!(o.seq_used(), 12);
        assert_eq!(o.ack_to(11), 8);
        assert!(!o.fin_acked());
        assert_eq!(o.ack_to(12), 0);
        assert!(o.fin_acked());
        assert_eq!(o.seq_acked(), 12);
        assert_eq!(o.heap_bytes(), 0);
    }

    proptest! {
        /// Whatever the interleaving of appends and (possibly stale) ACKs,
        /// exactly the acknowledged prefix is released, in order.
        #[test]
        fn releases_exactly_the_acked_prefix(
            ops in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..50), any::<u16>()), 0..60)
        ) {
            let mut o = Output::new();
            let mut all = Vec::new();
            let mut released = 0u64;
            for (is_ack, bytes, at) in ops {
                if is_ack {
                    let to = u64::from(at) % (o.total() + 1);
                    let before = o.acked();
                    let n = o.ack_to(to);
                    prop_assert_eq!(n, to.saturating_sub(before));
                    released += n;
                } else {
                    o.append(&bytes).unwrap();
                    all.extend_from_slice(&bytes);
                }
                prop_assert_eq!(o.acked(), released);
                let rest: Vec<u8> = o.unacked().iter().copied().collect();
                prop_assert_eq!(&rest[..], &all[released as usize..]);
            }
            prop_assert_eq!(o.hash(), Fnv64::new().bytes(&all).finish());
        }
    }
}
