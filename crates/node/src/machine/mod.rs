//! The node's decisions as a sans-IO machine: what the daemon (the driver
//! that owns the sockets, the queue, the netlink handle and the clock)
//! must do, decided from inputs passed in as values, with time passed in.
//!
//! Modelled on quinn-proto's `Connection`: the driver feeds `handle_*`
//! inputs and performs what `poll_*` returns; nothing here does I/O, reads
//! a clock or spawns a thread, so every decision is unit-tested and
//! simulated (crates/node/tests/node_sim.rs) without root or namespaces.

/// What the kernel is told about a captured packet: a node type, mapped
/// onto NFQUEUE's verdicts by the driver (the decisions never name the
/// Linux queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The kernel may have the packet (its entry is committed, or it is
    /// released at once).
    Accept,
    /// The kernel must never see it (junk, or its entry will never commit
    /// here: the client retransmits to the next primary).
    Drop,
}

pub mod intake;
pub mod leadership;
pub mod node;
pub mod takeover;

pub use node::{NodeMachine, NodeSetup, ReadyReport, Request, SnapshotPolicy, Time};
