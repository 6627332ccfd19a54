//! Shadow TCP: every client connection's state, rebuilt from logged packets.
//!
//! Every replica feeds the same committed packets, in log order, into a
//! [`ShadowTable`]: client → VIP segments and the primary's own SYN-ACKs
//! (captured on OUTPUT). From them alone it rebuilds, per connection, what a
//! new primary needs to restore a real kernel socket with TCP_REPAIR
//! ([`ShadowTable::image`]), and it tells the caller, as values, what the
//! application must see ([`Event`]: opened, bytes delivered in order, peer
//! closed, reset). The server's output is not captured: the application is
//! deterministic, so the caller appends what it wrote
//! ([`ShadowTable::append_output`]) and shadow TCP keeps it until the
//! client's ACKs cover it.
//!
//! The table is pure and deterministic: no I/O, no clock (time is a
//! [`Millis`] value taken from the log entry), no randomness, no hashed
//! collections (only `BTreeMap`/`VecDeque`, so iteration order is the same
//! on every replica), no panics on any input, and a [`ShadowTable::state_hash`]
//! (FNV-1a 64) replicas can compare.
//!
//! Kernel behaviours mirrored (Linux, `net/ipv4/tcp_input.c`,
//! `tcp_minisocks.c`), each to the point the log lets us see:
//! - the handshake as `tcp_check_req()`: a retransmitted SYN changes nothing,
//!   an ACK other than ISN+1 is refused, an in-window RST or new SYN kills the
//!   request, ESTABLISHED only on the client's ACK of the SYN-ACK; the
//!   negotiated options (MSS clamp, window scale clamped to 14, SACK,
//!   timestamps) as the kernel agrees them;
//! - PAWS (`tcp_paws_check`, window 1 on established sockets, strict on
//!   request/TIME_WAIT sockets, `ts_recent` = 0 never rejects, the 24-day
//!   rule, a RST exempt) and `ts_recent` updates (`tcp_replace_ts_recent`);
//! - the receive window (`tcp_sequence`), with the listener's window clamped
//!   to W (`TCP_WINDOW_CLAMP`): our right edge rcv_nxt + W is never left of
//!   the kernel's, and a whole in-order segment is accepted even past it, as
//!   `tcp_data_queue()` does;
//! - RFC 5961 as Linux applies it: a RST resets only at exactly rcv_nxt (or
//!   rcv_nxt − 1 after the client's FIN, or at our highest SACK edge),
//!   otherwise a challenge ACK; a SYN on an established connection is
//!   answered with a challenge ACK and dropped; an ACK older than
//!   snd_una − max_window or beyond what was written drops the segment;
//! - the send window (`tcp_may_update_window`: snd_wl1, snd_wnd, max_window,
//!   the client's shift applied);
//! - FIN in both directions: the client's FIN takes effect once in order,
//!   data after it is ignored; our FIN (the application's close, modelled as
//!   `shutdown(SHUT_WR)`) is acknowledged like data; the active closer keeps
//!   a TIME_WAIT entry that a newer SYN may reopen
//!   (`tcp_timewait_state_process`), a RST at rcv_nxt ends it (RFC 1337 off);
//! - out-of-order data held up to a byte limit ≥ W, whatever the segmentation.
//!
//! Known divergences, all documented where they arise: rcv_wup is
//! approximated by rcv_nxt (the kernel's ACK timing is not logged); an ACK
//! beyond snd_nxt but within what the application wrote is accepted; a
//! segment claiming different bytes for an offset already held keeps the
//! first copy; urgent data is delivered in line.

#![deny(missing_docs)]
// No panics on any input: no unwrap, expect, panic or unchecked indexing
// outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::unreachable,
        clippy::todo
    )
)]

mod conn;
pub mod hash;
pub mod output;
pub mod reasm;
pub mod segment;
pub mod seq;
mod snapshot;
mod table;
#[cfg(test)]
mod tests;

pub use output::OutputError;
pub use segment::{
    ConnKey, Direction, SackBlock, SackBlocks, Segment, SeqNumber, TcpFlags, TcpOptionSet,
    Timestamps,
};
pub use seq::Millis;
pub use snapshot::{seal, unseal, SnapshotError, TableSnapshot};
pub use table::{ConnInfo, MemoryReport, ShadowTable};

use crate::image::TcpState;

/// The default [`ShadowConfig::output_limit`]: 4 MiB of unacknowledged
/// output per connection. Far above what a well-behaved client leaves
/// unread (a reply in flight is at most a few windows), small enough that a
/// client pipelining requests without reading keeps each replica's output
/// buffers for it to a few MiB.
pub const DEFAULT_OUTPUT_LIMIT: u64 = 4 * 1024 * 1024;

/// The table's parameters. Every replica must use the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShadowConfig {
    /// W: the receive window clamp set on the listener (`TCP_WINDOW_CLAMP`),
    /// in bytes. The kernel never offers more, so shadow TCP accepts data up
    /// to rcv_nxt + W.
    pub window_clamp: u32,
    /// Bytes of out-of-order data held per connection, counted from rcv_nxt.
    /// Raised to at least W + 65535 (a whole GRO super-packet starting at
    /// the window's edge is kept by the kernel).
    pub out_of_order_limit: u32,
    /// Most entries in the table (half-open, established and TIME_WAIT).
    pub max_connections: usize,
    /// Most pending handshakes (the SYN-flood bound). The capture's SYN rate
    /// limit should keep well below it; a SYN over it is dropped and
    /// reported so the node can drop the matching SYN-ACK too.
    pub max_half_open: usize,
    /// How long a pending handshake lives, in ms. Longer than the kernel's
    /// request socket (≈ 63 s with `tcp_synack_retries` = 5) so the kernel
    /// always gives up first.
    pub half_open_timeout_ms: u64,
    /// How long a TIME_WAIT entry lives, in ms (the kernel's 60 s).
    pub time_wait_ms: u64,
    /// The input throttle (docs/architecture.md §3.2): while a connection's unacknowledged
    /// output (bytes the application wrote that the client's logged ACKs do
    /// not cover yet) is above this many bytes, its in-order input is held
    /// back in shadow TCP instead of being delivered; a logged ACK that
    /// brings the unacknowledged output back to this limit or below
    /// delivers what was held, in order. Decided from logged ACKs only, so
    /// every replica decides the same. The limit is soft by the output one
    /// segment's input produces (the decision is taken when input arrives;
    /// the node applies an entry segment by segment); the hard bound is
    /// the SDK's output cap ([`crate::sdk::Limits::output_cap`]), checked
    /// at every send. `u64::MAX` turns the throttle off.
    pub output_limit: u64,
}

impl ShadowConfig {
    /// Defaults around a window clamp of `window_clamp` bytes.
    pub fn new(window_clamp: u32) -> ShadowConfig {
        ShadowConfig {
            window_clamp,
            out_of_order_limit: window_clamp.saturating_add(65_535),
            max_connections: 65_536,
            max_half_open: 4_096,
            half_open_timeout_ms: 75_000,
            time_wait_ms: 60_000,
            output_limit: DEFAULT_OUTPUT_LIMIT,
        }
    }

    /// The effective per-connection out-of-order limit, in bytes.
    pub fn reassembly_limit(&self) -> u64 {
        u64::from(self.out_of_order_limit).max(u64::from(self.window_clamp) + 65_535)
    }
}

impl Default for ShadowConfig {
    /// W = 256 KiB.
    fn default() -> Self {
        ShadowConfig::new(256 * 1024)
    }
}

/// What a segment (or the passing of time) did, for the caller to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed: the application has a new connection.
    Opened,
    /// Client bytes, next in the stream, each delivered exactly once.
    Delivered(Vec<u8>),
    /// The client's FIN, after all the bytes before it.
    PeerClosed,
    /// The client acknowledged this many more output bytes (released).
    Acked(u64),
    /// A valid RST: the connection is gone.
    Reset,
    /// Both FINs exchanged and ours acknowledged: the connection ended
    /// normally (a TIME_WAIT entry may remain if we closed first).
    Closed,
    /// A pending handshake was killed by an in-window RST or SYN.
    HandshakeAborted,
    /// A pending handshake timed out ([`ShadowTable::expire`]).
    HalfOpenExpired,
    /// A TIME_WAIT entry ran out ([`ShadowTable::expire`]).
    TimeWaitEnded,
    /// The segment changed nothing; the kernel drops it too (possibly after
    /// answering with an ACK, challenge ACK or RST of its own).
    Dropped(DropReason),
}

/// Why a segment was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// No entry for the tuple and not a SYN that opens one.
    NoConnection,
    /// A SYN while `max_half_open` handshakes are pending.
    HalfOpenFull,
    /// A SYN while the table holds `max_connections` entries.
    TableFull,
    /// A handshake segment before any SYN-ACK was logged.
    NoSynAck,
    /// A server segment that is not a SYN-ACK answering a logged SYN.
    UnexpectedFromServer,
    /// A SYN-ACK whose ISN or ACK contradicts the logged handshake.
    SynAckMismatch,
    /// The handshake's ACK does not acknowledge our SYN.
    BadAck,
    /// PAWS: the timestamp is older than the last one accepted.
    Paws,
    /// Outside the receive window.
    OutOfWindow,
    /// An in-window RST not at rcv_nxt (RFC 5961: challenge ACK).
    RstNotExact,
    /// A SYN on an established connection (RFC 5961: challenge ACK).
    SynOnEstablished,
    /// No ACK flag on a synchronised connection.
    NoAck,
    /// Acknowledges data never written.
    AckUnsent,
    /// Acknowledges data older than snd_una − max_window.
    AckTooOld,
    /// A segment for a TIME_WAIT entry that neither re-arms nor reopens it.
    TimeWait,
}

/// Where a connection stands, as shadow TCP sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ShadowState {
    /// The client's SYN is logged, no SYN-ACK yet.
    SynSeen,
    /// SYN and SYN-ACK logged, waiting for the client's ACK.
    SynAckSeen,
    /// Open both ways.
    Established,
    /// The client closed; we have not.
    CloseWait,
    /// We closed; our FIN is not acknowledged.
    FinWait1,
    /// We closed and our FIN is acknowledged; the client has not closed.
    FinWait2,
    /// Both closed, we first; our FIN not yet acknowledged.
    Closing,
    /// Both closed, the client first; our FIN not yet acknowledged.
    LastAck,
    /// Closed, we first: the tuple is remembered for a while.
    TimeWait,
}

impl ShadowState {
    /// The kernel state a socket in this situation is in.
    pub fn kernel_state(self) -> TcpState {
        match self {
            ShadowState::SynSeen | ShadowState::SynAckSeen => TcpState::SynRecv,
            ShadowState::Established => TcpState::Established,
            ShadowState::CloseWait => TcpState::CloseWait,
            ShadowState::FinWait1 => TcpState::FinWait1,
            ShadowState::FinWait2 => TcpState::FinWait2,
            ShadowState::Closing => TcpState::Closing,
            ShadowState::LastAck => TcpState::LastAck,
            ShadowState::TimeWait => TcpState::TimeWait,
        }
    }
}

/// The result of feeding one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The connection the segment belongs to.
    pub conn: ConnKey,
    /// What happened, in order. Empty: accepted, nothing to report (a pure
    /// ACK that released nothing, a duplicate, a retransmitted SYN).
    pub events: Vec<Event>,
}

impl Outcome {
    /// The drop reason, if the segment was dropped.
    pub fn dropped(&self) -> Option<DropReason> {
        self.events.iter().find_map(|e| match e {
            Event::Dropped(r) => Some(*r),
            _ => None,
        })
    }

    /// All bytes delivered by this segment, concatenated.
    pub fn delivered(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in &self.events {
            if let Event::Delivered(b) = e {
                out.extend_from_slice(b);
            }
        }
        out
    }
}

/// Why a request from the application side was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShadowError {
    /// No such connection.
    #[error("no such connection")]
    NoConnection,
    /// The connection is not open (still in its handshake, or in TIME_WAIT).
    #[error("the connection is not open")]
    NotOpen,
    /// The application already closed its side.
    #[error(transparent)]
    Output(#[from] OutputError),
}
