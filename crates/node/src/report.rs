//! What a node tells about itself: the answer to `tandem status`, as the
//! daemon builds it and the command line prints it (a table, or JSON with
//! `--json`). Field names are part of the command-line contract: scripts
//! and the lab read them.

use serde::{Deserialize, Serialize};

/// One node's view of its service and its replica group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// This node's slot (its id in the cluster, from 1).
    pub slot: u16,
    /// This process's incarnation of the slot (bumped at every start).
    pub incarnation: u64,
    /// The daemon's process id.
    pub pid: u32,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// `"primary"` (Raft leader, holds the VIP), `"clone"` (follower),
    /// `"candidate"`, `"learner"` (a restarted node catching up).
    pub role: String,
    /// Drained for maintenance (`tandem drain`): it hands the primary role
    /// over and never keeps it until `tandem undrain`.
    #[serde(default)]
    pub draining: bool,
    /// "healthy", or "unhealthy: why" (supervision: link, check command).
    /// An unhealthy node hands the primary role over and never keeps it.
    #[serde(default)]
    pub health: String,
    pub term: u64,
    /// The leader's slot, if known.
    pub leader: Option<u16>,
    pub commit_index: u64,
    pub applied_index: u64,
    /// First and last index held in the in-memory log.
    pub log_first: u64,
    pub log_last: u64,
    /// Entries held in the log.
    pub log_entries: u64,
    /// Index the latest snapshot covers, and its age in seconds (`None`
    /// before the first one).
    pub snapshot_index: u64,
    pub snapshot_age_s: Option<u64>,
    /// Voters of the group, as `slot.incarnation`.
    pub voters: Vec<String>,
    pub learners: Vec<String>,
    /// On the primary: how far behind each peer is (entries).
    pub peers: Vec<PeerReport>,
    pub service: ServiceReport,
    pub counters: Counters,
    /// Takeover steps armed to fail (`tandem fault`) and how many more
    /// times each will; empty unless someone is rehearsing a failure.
    #[serde(default)]
    pub takeover_faults: std::collections::BTreeMap<String, u32>,
}

/// One peer as the primary sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReport {
    pub slot: u16,
    pub incarnation: u64,
    /// Highest index known to be in its log.
    pub matched: u64,
    /// `commit_index - matched`, 0 when caught up.
    pub lag: u64,
    /// Whether the transport has a live connection to it.
    pub connected: bool,
}

/// The service this node hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceReport {
    pub name: String,
    pub kind: String,
    pub vip: String,
    pub port: u16,
    /// Whether this node holds the VIP now.
    pub holds_vip: bool,
    /// Connections shadow TCP tracks (equal on every replica at equal index).
    pub connections: u64,
    /// Kernel sockets the primary has accepted and serves.
    pub sockets: u64,
    /// The state hash at `applied_index`, hex: service, shadow TCP and every
    /// connection's output hash. Replicas at the same index must agree.
    pub state_hash: String,
    /// Entries and packets applied, connections opened and closed, panics
    /// of the service caught.
    pub entries_applied: u64,
    pub packets_applied: u64,
    pub opened: u64,
    pub closed: u64,
    pub service_panics: u64,
    /// Accounted memory of the service group (service data + 4 KiB per
    /// connection + queued output, from data sizes: equal on every replica
    /// at equal index) and its budget, `max_memory`. Over the budget kv
    /// refuses writes with `-OOM`.
    #[serde(default)]
    pub memory_used: u64,
    #[serde(default)]
    pub memory_limit: u64,
    /// Connections reset because their queued output would have passed
    /// `output_cap`.
    #[serde(default)]
    pub output_overflows: u64,
}

/// Counters since the daemon started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Replication messages rejected: bad MAC, replayed, stale sender,
    /// wrong destination, malformed (summed), and malformed frames.
    pub auth_rejected: u64,
    pub replayed: u64,
    pub bad_frames: u64,
    /// Replication messages whose tag did not verify under any accepted key
    /// (forged, corrupted, another cluster's key), in `auth_rejected`.
    #[serde(default)]
    pub forged: u64,
    /// Authenticated replication messages for another or an old
    /// incarnation (of this node or of the sender), in `auth_rejected`.
    #[serde(default)]
    pub wrong_incarnation: u64,
    /// Replication messages that are not well-formed envelopes, in
    /// `auth_rejected`.
    #[serde(default)]
    pub malformed: u64,
    /// Connections to the replication port closed before authenticating:
    /// the first frame was not a hello, its hello did not verify (or named
    /// no member), was a replay, or never came within the hello timeout;
    /// and strangers evicted by newer ones (`max_unauthenticated`).
    #[serde(default)]
    pub hellos_malformed: u64,
    #[serde(default)]
    pub hellos_forged: u64,
    #[serde(default)]
    pub hellos_replayed: u64,
    #[serde(default)]
    pub hello_timeouts: u64,
    #[serde(default)]
    pub strangers_evicted: u64,
    /// Captured packets, and what happened to them.
    pub captured: u64,
    pub released_at_once: u64,
    pub committed_released: u64,
    pub dropped_junk: u64,
    pub dropped_uncommitted: u64,
    /// Bytes the kernel received that differ from what shadow TCP delivered
    /// (must stay 0: a mismatch is a bug).
    pub shadow_mismatches: u64,
    /// Proposals made and entries committed by this node.
    pub proposals: u64,
    pub committed_entries: u64,
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
    /// Snapshots asked for again after one could not be installed.
    #[serde(default)]
    pub snapshots_requested: u64,
    /// Times this node found its parameters differ from the group's
    /// (it then stops: docs/operating.md, "Parameters every node must
    /// share").
    #[serde(default)]
    pub parameter_disagreements: u64,
    /// Connections rebuilt from shadow TCP when this node took over, and
    /// those that could not be.
    pub connections_restored: u64,
    pub restore_failures: u64,
    /// Uncommitted entries a deposed primary handed to the next one.
    #[serde(default)]
    pub entries_forwarded: u64,
    /// Logged SYN-ACKs sent again to clients whose handshake was rebuilt
    /// as ESTABLISHED and who retransmitted their SYN.
    pub synacks_replayed: u64,
    /// Times this node became primary, and stepped down.
    pub became_primary: u64,
    pub stepped_down: u64,
    /// Takeovers that failed at one of their steps (released, then retried
    /// or handed on).
    #[serde(default)]
    pub takeovers_failed: u64,
    /// Of those, failures injected by `tandem fault` (the real step had
    /// succeeded).
    #[serde(default)]
    pub faults_injected: u64,
    /// Kernel lease refreshes that failed (`nft` refused or is missing).
    pub lease_refresh_errors: u64,
    /// SYN-flood defence (`tandem_core::cookie`): SYNs and SYN-ACKs passed
    /// unlogged in cookie mode, handshakes then logged whole at their third
    /// ACK, SYNs over the rate limit.
    #[serde(default)]
    pub cookie_passed: u64,
    #[serde(default)]
    pub cookie_handshakes: u64,
    #[serde(default)]
    pub syn_rate_limited: u64,
    /// Held SYN-ACKs dropped because shadow TCP did not log their handshake
    /// (half-open table full), and third ACKs of cookie handshakes it
    /// refused (answered with a RST).
    #[serde(default)]
    pub synacks_refused: u64,
    #[serde(default)]
    pub handshakes_refused: u64,
    /// RSTs sent to client packets no connection matched.
    #[serde(default)]
    pub resets_sent: u64,
}
