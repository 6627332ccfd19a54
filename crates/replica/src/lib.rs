//! Sans-I/O replication for tandem (docs/architecture.md §3.8): raft-rs driven by the
//! node's event loop, an in-memory log, stable voter slots with an
//! incarnation per process, a persisted hard state (term and vote), and an
//! authenticated, replay-protected envelope for every message between nodes.
//! The membership and lease arguments are in docs/membership.md.
//!
//! Nothing here reads clocks, spawns threads or touches sockets: the caller
//! passes ticks in and carries bytes out, which is what lets the simulation
//! tests (`tests/sim.rs`) run a whole cluster deterministically in one
//! process.
//!
//! - [`id`]: [`NodeId`] = (slot, incarnation); raft knows a node by its slot;
//!   [`bump_incarnation`] reads, bumps and fsyncs the incarnation file at
//!   every start.
//! - [`hard_state`]: [`HardState`] (term, vote), loaded at start and saved
//!   (fsync) whenever [`Output::hard_state`] says it changed.
//! - [`storage`]: [`MemLog`], the in-memory `raft::Storage`, whose snapshots
//!   carry the application's bytes.
//! - [`envelope`]: [`Outbox`]/[`Inbox`] seal and open envelopes
//!   (ChaCha20-Poly1305, per-direction keys, per-sender sequence numbers); each rejection reason is counted.
//! - [`snapshot_stream`]: snapshots sent in acknowledged chunks, so a
//!   state of any size reaches a restarted node through small frames.
//! - [`replica`]: [`Replica`], the driver: `tick`, `receive`, `propose`,
//!   `ready` → [`Output`], `advance`, `transfer_leader`, `compact`; a
//!   restarted node abstains from elections until it has caught up, and
//!   [`Replica::quorum_acked_at`] dates the leader's lease.
//!
//! A one-node group, start to commit:
//!
//! ```
//! use tandem_replica::{ClusterKey, Config, NodeId, Replica, StateRole};
//!
//! let key = ClusterKey::from_secret(b"read me from the cluster key file").unwrap();
//! let id = NodeId::new(1, 1); // slot 1, first incarnation: a founding voter
//! let mut r = Replica::new(Config::new(id, vec![1]), key).unwrap();
//! r.campaign();
//! let out = r.ready();
//! assert_eq!(out.role, StateRole::Leader);
//! r.advance();
//!
//! let p = r.propose(b"client packet".to_vec()).unwrap();
//! let out = r.ready(); // the batch becomes an entry, and commits
//! // send out.messages to their NodeId's address; install out.install_snapshot
//! assert_eq!(out.committed.len(), 1);
//! assert_eq!((out.committed[0].proposal, &out.committed[0].data[..]), (p, &b"client packet"[..]));
//! r.advance(); // after applying
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod envelope;
pub mod hard_state;
pub mod id;
pub mod replica;
pub mod snapshot_stream;
pub mod storage;

pub use envelope::{
    Body, ClusterKey, EnvelopeError, EnvelopeStats, Inbox, Keyring, Opened, Outbox, ReplayWindow,
};
pub use hard_state::{load_hard_state, save_hard_state, HardState};
pub use id::{bump_incarnation, NodeId};
pub use raft::StateRole;
pub use replica::{
    CommittedEntry, Config, InitError, InstallSnapshot, Output, ProposalId, ProposeError, Replica,
    Status, DEFAULT_TICK_MS,
};
pub use snapshot_stream::{StreamConfig, StreamStats};
pub use storage::MemLog;
