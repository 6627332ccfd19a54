//! The capture path of a primary: NFQUEUE → parse → classify → verdicts.
//!
//! Only the queue's concerns live here (batches, the hook a packet came
//! from, checksums the kernel left unverified, verdicts); turning a parsed
//! packet into what core consumes is `tandem_core::packet`.
//!
//! Packets come off the queue in batches, in the order the kernel queued
//! them (INPUT and OUTPUT share one queue, so a SYN is always seen before its
//! SYN-ACK). Each is parsed once; its TCP checksum is verified here when the
//! kernel has not (a packet with a checksum "not ready" never crossed a wire
//! and has nothing to verify). The caller decides each packet's fate — a
//! verdict now, or held for later (waiting for commit) — and the verdicts of
//! a batch go back in one system call.

use tandem_core::classify::Direction;
use tandem_sys::nfqueue::{ChecksumState, Hook, NfQueue, NfQueueError, QueuedPacket, Verdict};
use tandem_wire::tcp::{OptionsMode, ParseChecks};
use tandem_wire::{IpTcpRepr, WireError};

/// What to do with one packet of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Give this verdict now.
    Verdict(Verdict),
    /// Keep the packet queued; the caller gives its verdict later with
    /// [`CaptureLoop::release`].
    Hold,
}

/// Counters of a capture loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureStats {
    pub packets: u64,
    pub batches: u64,
    pub accepted: u64,
    pub dropped: u64,
    pub held: u64,
    pub malformed: u64,
    pub bad_checksum: u64,
    /// Batches lost because this reader fell behind (socket overrun).
    pub overruns: u64,
}

/// Parses a queued packet, verifying the TCP checksum only where the kernel
/// has not, and reading options as Linux does (a malformed option never
/// makes the kernel drop a segment, so it must not make us).
pub fn parse_queued(packet: &QueuedPacket) -> Result<IpTcpRepr<'_>, WireError> {
    IpTcpRepr::parse(
        &packet.payload,
        ParseChecks {
            verify_checksum: packet.checksum == ChecksumState::NotVerified,
            options: OptionsMode::Linux,
        },
    )
}

/// The direction of a queued packet: OUTPUT carries the server's SYN-ACKs.
pub fn direction_of(packet: &QueuedPacket) -> Direction {
    match packet.hook {
        Hook::Output => Direction::FromServer,
        _ => Direction::FromClient,
    }
}

/// Reads batches from a queue and sends their verdicts.
pub struct CaptureLoop {
    queue: NfQueue,
    batch: Vec<QueuedPacket>,
    verdicts: Vec<(u32, Verdict)>,
    stats: CaptureStats,
}

impl CaptureLoop {
    pub fn new(queue: NfQueue) -> CaptureLoop {
        CaptureLoop {
            queue,
            batch: Vec::with_capacity(256),
            verdicts: Vec::with_capacity(256),
            stats: CaptureStats::default(),
        }
    }

    /// The queue underneath (to poll its descriptor, or read its number).
    pub fn queue(&self) -> &NfQueue {
        &self.queue
    }

    /// Counters so far.
    pub fn stats(&self) -> CaptureStats {
        self.stats
    }

    /// Reads one batch (blocking or not, as the queue is set), asks
    /// `decide` about each packet in order, sends the batch's verdicts in
    /// one call, and returns the packets held for later. A socket overrun is
    /// counted and reported as an empty batch: the kernel dropped those
    /// packets (fail closed), nothing was delivered unseen.
    pub fn poll<F>(&mut self, mut decide: F) -> Result<Vec<QueuedPacket>, NfQueueError>
    where
        F: FnMut(&QueuedPacket, Result<IpTcpRepr<'_>, WireError>) -> Decision,
    {
        self.batch.clear();
        match self.queue.recv_batch(&mut self.batch) {
            Ok(_) => {}
            Err(NfQueueError::Overrun { .. }) => {
                self.stats.overruns += 1;
                return Ok(Vec::new());
            }
            Err(err) => return Err(err),
        }
        self.stats.batches += 1;
        self.verdicts.clear();
        let mut held = Vec::new();
        for packet in self.batch.drain(..) {
            self.stats.packets += 1;
            let parsed = parse_queued(&packet);
            match &parsed {
                Err(WireError::BadChecksum { .. }) => self.stats.bad_checksum += 1,
                Err(_) => self.stats.malformed += 1,
                Ok(_) => {}
            }
            match decide(&packet, parsed) {
                Decision::Verdict(verdict) => {
                    match verdict {
                        Verdict::Accept => self.stats.accepted += 1,
                        Verdict::Drop => self.stats.dropped += 1,
                    }
                    self.verdicts.push((packet.id, verdict));
                }
                Decision::Hold => {
                    self.stats.held += 1;
                    held.push(packet);
                }
            }
        }
        if !self.verdicts.is_empty() {
            self.queue.verdicts(&self.verdicts)?;
        }
        Ok(held)
    }

    /// Gives held packets their verdicts, in any order.
    pub fn release(&mut self, verdicts: &[(u32, Verdict)]) -> Result<(), NfQueueError> {
        for (_, verdict) in verdicts {
            match verdict {
                Verdict::Accept => self.stats.accepted += 1,
                Verdict::Drop => self.stats.dropped += 1,
            }
        }
        self.queue.verdicts(verdicts)
    }
}
