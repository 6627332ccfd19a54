//! The network-namespace lab: a whole tandem cluster and its client on one
//! Linux machine, with the faults of docs/architecture.md §7 (power cut, process crash,
//! hang, partition) on demand.
//!
//! # Topology
//! A lab named `NAME` with `K` nodes is made of network namespaces only, so
//! nothing ever appears in the machine's root namespace and several labs can
//! live side by side (they reuse the same addresses, each behind its own
//! bridge):
//!
//! | namespace | contents |
//! |---|---|
//! | `tdm-NAME-br` | bridge `br0`; veth ends `c` (client) and `n1`..`nK` (nodes) as its ports |
//! | `tdm-NAME-c` | the client: `eth0` = [`CLIENT_ADDR`] (198.18.0.2/24) |
//! | `tdm-NAME-nI` | node `I`: `eth0` = 198.18.0.(10+I)/24 (see [`node_addr`]) |
//!
//! The virtual IP is [`VIP`] (198.18.0.100/24); the lab never assigns it: the
//! node daemons and migration do. Addresses come from 198.18.0.0/15, reserved
//! for benchmarking. Service ports: see [`ServiceKind::port`] (kv 6379, echo
//! and none 7000, counter 7001). Replication traffic uses
//! [`REPLICATION_PORTS`] (TCP and UDP), which is what `partition` cuts; the
//! daemons listen on [`REPLICATION_PORT`].
//!
//! # Daemons
//! With a service other than `none`, [`Lab::up`] starts one `tandem node
//! --config FILE` per node namespace (the binary of [`Lab::up_with_daemon`],
//! else `$TANDEM_BIN`, else the running executable) and waits until exactly
//! one node holds the VIP and the client reaches the service through it. A
//! node is the primary iff the VIP is assigned in its namespace.
//!
//! # State
//! Each lab is described by a JSON file, `/run/tandem/labs/NAME.json`
//! ([`STATE_DIR`]), written progressively: every namespace is recorded right
//! after it is created and every spawned process right after it starts, so
//! [`Lab::down`] (possibly from another process, after the lab's creator
//! crashed) removes exactly what was built and nothing else. Updates are
//! serialised between processes with an `flock` on `NAME.lock`. A lab with
//! daemons also has a directory `/run/tandem/labs/NAME/`: the cluster key
//! `cluster.key`, and per node `nodeI.toml` (config), `nodeI.d/` (data),
//! `nodeI.sock` (admin socket) and `nodeI.log` (daemon output).
//!
//! # Requirements
//! Root, and the `ip` (iproute2) and `iptables`/`iptables-restore` (iptables)
//! programs. The lab shells out to them: it is not performance-critical, and
//! it keeps this crate free of `unsafe`.

#![forbid(unsafe_code)]

mod cmd;
mod error;
mod files;
mod lab;
mod names;
mod procs;
mod state;

pub use error::LabError;
pub use lab::{
    node_addr, FaultAction, FaultReport, Lab, LabGuard, LabSpec, LabStatus, NodeCondition,
    NodeStatus, Probe,
};
pub use names::{
    bridge_netns_name, client_netns_name, generate_name, node_netns_name, validate_name,
    MAX_NAME_LEN, NETNS_PREFIX,
};
pub use state::{Fault, RaftTimings, ServiceKind};

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

/// Where the per-lab state files (`NAME.json`), their locks and the labs'
/// directories of daemon files (`NAME/`) live.
pub const STATE_DIR: &str = "/run/tandem/labs";

/// The most nodes a lab can have (node addresses are 198.18.0.11–19).
pub const MAX_NODES: usize = 9;

/// Environment variable naming the `tandem` binary the node daemons run,
/// when [`Lab::up_with_daemon`] is not given one.
pub const DAEMON_ENV: &str = "TANDEM_BIN";

/// How long [`Lab::up`] waits for a primary to serve the VIP, unless
/// [`PRIMARY_WAIT_ENV`] says otherwise.
pub const PRIMARY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Environment variable overriding [`PRIMARY_WAIT`], in whole seconds: a
/// lab inside an emulated VM (scripts/vm/) starts 10-50x slower.
pub const PRIMARY_WAIT_ENV: &str = "TANDEM_LAB_PRIMARY_WAIT_S";

/// [`PRIMARY_WAIT`], or [`PRIMARY_WAIT_ENV`]'s value when it is a number of
/// seconds.
pub fn primary_wait() -> std::time::Duration {
    std::env::var(PRIMARY_WAIT_ENV)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(PRIMARY_WAIT, std::time::Duration::from_secs)
}

/// Nodes in a lab when nothing else is asked for.
pub const DEFAULT_NODES: usize = 3;

/// The lab name the CLI uses when `lab up` is given no `--name`.
pub const DEFAULT_NAME: &str = "tandem";

/// The network all lab addresses are in (198.18.0.0/24, inside the
/// benchmarking range 198.18.0.0/15).
pub const SUBNET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);

/// Prefix length of [`SUBNET`], of every lab address and of the VIP.
pub const PREFIX_LEN: u8 = 24;

/// The client's address (in the client namespace).
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

/// The service's virtual IP. Not assigned by the lab: daemons add it.
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

/// The interface name inside every node and client namespace.
pub const NODE_INTERFACE: &str = "eth0";

/// The bridge device inside the bridge namespace.
pub const BRIDGE_DEVICE: &str = "br0";

/// Ports (TCP and UDP) reserved for traffic between nodes: replication,
/// heartbeats, elections. `partition` drops exactly these, in both
/// directions, and leaves the client path alone.
pub const REPLICATION_PORTS: RangeInclusive<u16> = 7100..=7199;

/// The port (TCP and UDP) each node daemon listens on for its peers, in
/// its lab address (written into the nodes' configs as the members'
/// `addr`). Inside [`REPLICATION_PORTS`].
pub const REPLICATION_PORT: u16 = 7100;

const _: () = assert!(
    REPLICATION_PORT >= *REPLICATION_PORTS.start() && REPLICATION_PORT <= *REPLICATION_PORTS.end()
);

/// The private iptables chain (filter table, in each node namespace) that
/// `partition` fills and `heal` empties.
pub const PARTITION_CHAIN: &str = "TDM-LAB-PART";

/// The private iptables chain (filter table, client namespace) whose single
/// rule counts TCP RST segments received by the client.
pub const RST_COUNT_CHAIN: &str = "TDM-LAB-RST";

/// A port nothing in the lab listens on (discard, 9): a TCP connection to it
/// is answered with a reset, which is how [`Lab::reachable`] tells "host up"
/// from "host unreachable" without `ping` (not installed on every machine).
pub const PROBE_PORT: u16 = 9;
