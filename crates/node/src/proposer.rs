//! The primary's side of docs/architecture.md §3.1, as values: classified packets in,
//! verdicts to give now and log entries to propose out.
//!
//! - junk: DROP now, never logged;
//! - release-now packets (pure ACKs, SYNs): ACCEPT now and logged lazily,
//!   in capture order, with the next entry;
//! - commit packets (payload, FIN, RST, the server's SYN-ACK): held in the
//!   queue and logged; the host gives them ACCEPT once their entry is
//!   committed, or DROP if it never will be (leadership lost: the client
//!   retransmits to the next primary).
//!
//! A SYN is released at once and its SYN-ACK held, so both land in the same
//! entry, SYN first: the server side of every handshake is committed before
//! the client can use it.
//!
//! Under a SYN flood (`tandem_core::cookie`), SYN and SYN-ACK pass unlogged
//! and the handshake is proposed whole with the client's third ACK
//! ([`Proposer::on_handshake`]): SYN, SYN-ACK, ACK in one entry, the ACK
//! held until committed.

use crate::group::{Item, LogEntry};
pub use crate::machine::Verdict;
use tandem_core::classify::Class;

/// An entry to propose, with the queued packets waiting for its commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub entry: LogEntry,
    /// NFQUEUE ids to ACCEPT once the entry is committed.
    pub held: Vec<u32>,
}

/// Collects packets into entries.
#[derive(Debug)]
pub struct Proposer {
    items: Vec<Item>,
    held: Vec<u32>,
    bytes: usize,
    max_entry_bytes: usize,
    lazy_since_ms: Option<u64>,
    lazy_delay_ms: u64,
}

impl Proposer {
    /// Entries of at most about `max_entry_bytes` of packets (a packet is
    /// never split; one bigger than that travels alone), lazily logged
    /// packets flushed at the latest `lazy_delay_ms` after the first.
    pub fn new(max_entry_bytes: usize, lazy_delay_ms: u64) -> Proposer {
        Proposer {
            items: Vec::new(),
            held: Vec::new(),
            bytes: 0,
            max_entry_bytes,
            lazy_since_ms: None,
            lazy_delay_ms,
        }
    }

    /// Takes one classified packet (`id` is its NFQUEUE id); returns the
    /// verdict to give now, or `None` if it waits for commit. A full entry
    /// is returned too, to propose at once.
    pub fn on_packet(
        &mut self,
        now_ms: u64,
        id: u32,
        class: Class,
        from_server: bool,
        bytes: Vec<u8>,
    ) -> (Option<Verdict>, Option<Proposal>) {
        let verdict = match class {
            Class::Junk(_) => return (Some(Verdict::Drop), None),
            Class::Pass => return (Some(Verdict::Accept), None),
            Class::Release => {
                self.lazy_since_ms.get_or_insert(now_ms);
                Some(Verdict::Accept)
            }
            Class::Commit => {
                self.held.push(id);
                None
            }
        };
        // Close the current entry first if this packet would overflow it.
        let full = if !self.items.is_empty() && self.bytes + bytes.len() > self.max_entry_bytes {
            self.take_entry(now_ms)
        } else {
            None
        };
        self.bytes += bytes.len();
        self.items.push(Item::Packet { from_server, bytes });
        (verdict, full)
    }

    /// The third ACK `bytes` (NFQUEUE id `id`) of a cookie-mode handshake
    /// whose unlogged SYN and SYN-ACK were `syn` and `synack`: the three
    /// go into one entry, in that order, and the ACK waits for commit.
    /// Returns an entry that was full before them, to propose at once.
    pub fn on_handshake(
        &mut self,
        now_ms: u64,
        id: u32,
        syn: Vec<u8>,
        synack: Vec<u8>,
        bytes: Vec<u8>,
    ) -> Option<Proposal> {
        let size = syn.len() + synack.len() + bytes.len();
        let full = if !self.items.is_empty() && self.bytes + size > self.max_entry_bytes {
            self.take_entry(now_ms)
        } else {
            None
        };
        self.bytes += size;
        self.held.push(id);
        self.items.push(Item::Packet {
            from_server: false,
            bytes: syn,
        });
        self.items.push(Item::Packet {
            from_server: true,
            bytes: synack,
        });
        self.items.push(Item::Packet {
            from_server: false,
            bytes,
        });
        full
    }

    /// Adds an item the primary decided on (an abort, a due timer); it is
    /// proposed with the next entry, at once.
    pub fn push(&mut self, now_ms: u64, item: Item) {
        self.lazy_since_ms.get_or_insert(now_ms);
        self.items.push(item);
    }

    /// The entry to propose now, if any: whenever a packet waits for commit,
    /// or the lazily logged ones have waited `lazy_delay_ms`.
    pub fn poll(&mut self, now_ms: u64) -> Option<Proposal> {
        let lazy_due = self
            .lazy_since_ms
            .is_some_and(|since| now_ms.saturating_sub(since) >= self.lazy_delay_ms);
        if self.items.is_empty() || (self.held.is_empty() && !lazy_due) {
            return None;
        }
        self.take_entry(now_ms)
    }

    /// Everything still waiting, as one entry, whatever its age (a primary
    /// stepping down hands it to the next one).
    pub fn take(&mut self, now_ms: u64) -> Option<Proposal> {
        self.take_entry(now_ms)
    }

    /// Everything still waiting, for a primary that steps down: the held
    /// packets get DROP (their entry will never be proposed by us).
    pub fn abandon(&mut self) -> Vec<u32> {
        self.items.clear();
        self.bytes = 0;
        self.lazy_since_ms = None;
        std::mem::take(&mut self.held)
    }

    fn take_entry(&mut self, now_ms: u64) -> Option<Proposal> {
        if self.items.is_empty() {
            return None;
        }
        self.bytes = 0;
        self.lazy_since_ms = None;
        Some(Proposal {
            entry: LogEntry {
                timestamp_ms: now_ms,
                items: std::mem::take(&mut self.items),
            },
            held: std::mem::take(&mut self.held),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::classify::JunkReason;

    fn packet(tag: u8, len: usize) -> Vec<u8> {
        vec![tag; len]
    }

    fn tags(p: &Proposal) -> Vec<u8> {
        p.entry
            .items
            .iter()
            .map(|i| match i {
                Item::Packet { bytes, .. } => bytes[0],
                _ => 0,
            })
            .collect()
    }

    #[test]
    fn a_handshake_is_committed_in_one_entry_syn_first() {
        let mut p = Proposer::new(64 * 1024, 5);
        // SYN: released at once, logged lazily.
        let (v, full) = p.on_packet(0, 1, Class::Release, false, packet(1, 60));
        assert_eq!((v, full), (Some(Verdict::Accept), None));
        assert_eq!(p.poll(1), None, "nothing held, lazy not due");
        // SYN-ACK: held until committed.
        let (v, _) = p.on_packet(1, 2, Class::Commit, true, packet(2, 60));
        assert_eq!(v, None);
        let proposal = p.poll(1).expect("a held packet makes a proposal");
        assert_eq!(tags(&proposal), vec![1, 2]);
        assert_eq!(proposal.held, vec![2]);
        assert_eq!(p.poll(2), None);
    }

    #[test]
    fn a_cookie_handshake_is_proposed_whole_at_its_third_ack() {
        let mut p = Proposer::new(64 * 1024, 5);
        // SYN and SYN-ACK pass unlogged.
        assert_eq!(
            p.on_packet(0, 1, Class::Pass, false, packet(1, 60)),
            (Some(Verdict::Accept), None)
        );
        assert_eq!(
            p.on_packet(0, 2, Class::Pass, true, packet(2, 60)),
            (Some(Verdict::Accept), None)
        );
        assert_eq!(p.poll(100), None, "nothing logged");
        // Another connection's ACK is waiting to be logged lazily.
        p.on_packet(1, 3, Class::Release, false, packet(3, 40));
        assert_eq!(
            p.on_handshake(1, 4, packet(1, 60), packet(2, 60), packet(4, 50)),
            None
        );
        let proposal = p.poll(1).expect("the held ACK makes a proposal");
        assert_eq!(tags(&proposal), vec![3, 1, 2, 4]);
        let from_server: Vec<bool> = proposal
            .entry
            .items
            .iter()
            .map(|i| {
                matches!(
                    i,
                    Item::Packet {
                        from_server: true,
                        ..
                    }
                )
            })
            .collect();
        assert_eq!(from_server, vec![false, false, true, false]);
        assert_eq!(proposal.held, vec![4]);
    }

    #[test]
    fn junk_is_dropped_and_never_logged() {
        let mut p = Proposer::new(64 * 1024, 5);
        let (v, _) = p.on_packet(
            0,
            9,
            Class::Junk(JunkReason::NoConnection),
            false,
            packet(9, 40),
        );
        assert_eq!(v, Some(Verdict::Drop));
        assert_eq!(p.poll(100), None);
    }

    #[test]
    fn pure_acks_are_flushed_after_the_lazy_delay() {
        let mut p = Proposer::new(64 * 1024, 5);
        p.on_packet(10, 1, Class::Release, false, packet(1, 40));
        p.on_packet(12, 2, Class::Release, false, packet(2, 40));
        assert_eq!(p.poll(14), None);
        let proposal = p.poll(15).unwrap();
        assert_eq!(tags(&proposal), vec![1, 2]);
        assert!(proposal.held.is_empty());
    }

    #[test]
    fn entries_are_bounded_and_keep_capture_order() {
        let mut p = Proposer::new(1000, 5);
        let mut proposals = Vec::new();
        for id in 0..10u32 {
            let (_, full) = p.on_packet(0, id, Class::Commit, false, packet(id as u8, 400));
            proposals.extend(full);
        }
        proposals.extend(p.poll(0));
        let order: Vec<u8> = proposals.iter().flat_map(tags).collect();
        assert_eq!(order, (0..10).collect::<Vec<u8>>());
        let held: Vec<u32> = proposals.iter().flat_map(|p| p.held.clone()).collect();
        assert_eq!(held, (0..10).collect::<Vec<u32>>());
        for proposal in &proposals {
            let size: usize = proposal
                .entry
                .items
                .iter()
                .map(|i| match i {
                    Item::Packet { bytes, .. } => bytes.len(),
                    _ => 0,
                })
                .sum();
            assert!(size <= 1000, "an entry of {size} bytes");
        }
    }

    #[test]
    fn stepping_down_drops_what_was_held() {
        let mut p = Proposer::new(64 * 1024, 5);
        p.on_packet(0, 7, Class::Commit, false, packet(7, 100));
        p.on_packet(0, 8, Class::Release, false, packet(8, 40));
        assert_eq!(p.abandon(), vec![7]);
        assert_eq!(p.poll(100), None);
    }
}
