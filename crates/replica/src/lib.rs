//! Sans-I/O replication for tandem (DESIGN §3.8): raft-rs driven by the
//! node's event loop, an in-memory log, (slot, incarnation) identities and an
//! authenticated, replay-protected envelope for every message between nodes.
//!
//! Nothing here reads clocks, spawns threads or touches sockets: the caller
//! passes ticks in and carries bytes out, which is what lets the simulation
//! tests run a whole cluster deterministically in one process.

pub mod envelope;
pub mod id;
pub mod replica;
pub mod storage;

pub use envelope::{
    Body, ClusterKey, EnvelopeError, EnvelopeStats, Inbox, Opened, Outbox, ReplayWindow,
};
pub use id::{bump_incarnation, NodeId};
pub use raft::StateRole;
pub use replica::{
    CommittedEntry, Config, InitError, InstallSnapshot, Output, ProposalId, ProposeError, Replica,
    Status, DEFAULT_TICK_MS,
};
pub use storage::MemLog;
