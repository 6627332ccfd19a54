//! [`Lab`]: building, driving and removing one lab.
//!
//! Every operation that changes a lab holds its state lock, re-reads the
//! state file, acts, and writes the file back, so separate `tandem lab ...`
//! processes and a long-lived [`Lab`] handle can act on the same lab in any
//! order.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::cmd::{self, ip_in, iptables_in, iptables_restore_in};
use crate::files;
use crate::names::{self, CLIENT_BRIDGE_PORT};
use crate::procs::{self, ProcRecord};
use crate::state::{self, EndpointState, Fault, LabState, RaftTimings, ServiceKind, StateLock};
use crate::{
    LabError, BRIDGE_DEVICE, CLIENT_ADDR, DAEMON_ENV, DEFAULT_NODES, MAX_NODES, NODE_INTERFACE,
    PARTITION_CHAIN, PREFIX_LEN, PROBE_PORT, REPLICATION_PORTS, RST_COUNT_CHAIN, VIP,
};

/// How long a fault waits for SIGKILLed processes to disappear.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// How long `up` and `restart` wait for links to become operational.
const LINK_WAIT: Duration = Duration::from_secs(5);

/// How often `up` says on stderr what it is still waiting for.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// How often `up` looks for a primary.
const PRIMARY_POLL: Duration = Duration::from_millis(100);

/// What [`Lab::up`] builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSpec {
    /// The lab name (see [`crate::validate_name`]); `None` = a generated,
    /// unique one (see [`crate::generate_name`]).
    pub name: Option<String>,
    /// Number of nodes, 1..=[`MAX_NODES`].
    pub nodes: usize,
    /// What the nodes serve: with anything but [`ServiceKind::None`], one
    /// `tandem node` daemon runs per node (see [`Lab::up_with_daemon`]).
    pub service: ServiceKind,
    /// Raft timeouts for the daemons (default: the daemon's own).
    pub raft: RaftTimings,
    /// Benchmarks only: the daemons replicate without encryption
    /// (`cluster.unencrypted_replication_for_benchmarks`), so that `tandem
    /// bench kv` can measure what encryption costs. Default false.
    pub unencrypted_replication_for_benchmarks: bool,
    /// Extra `[[service]]` settings for the daemons, as (name, TOML value)
    /// pairs, e.g. `("max_memory", "67108864")` (default: none).
    pub service_options: Vec<(String, String)>,
}

impl Default for LabSpec {
    /// A generated name, [`DEFAULT_NODES`] nodes, service none.
    fn default() -> Self {
        LabSpec {
            name: None,
            nodes: DEFAULT_NODES,
            service: ServiceKind::None,
            raft: RaftTimings::default(),
            unencrypted_replication_for_benchmarks: false,
            service_options: Vec::new(),
        }
    }
}

impl LabSpec {
    /// The default spec with the given name.
    pub fn named(name: impl Into<String>) -> Self {
        LabSpec {
            name: Some(name.into()),
            ..LabSpec::default()
        }
    }

    /// The same spec with `nodes` nodes.
    pub fn with_nodes(mut self, nodes: usize) -> Self {
        self.nodes = nodes;
        self
    }

    /// The same spec serving `service`.
    pub fn with_service(mut self, service: ServiceKind) -> Self {
        self.service = service;
        self
    }

    /// The same spec, its daemons replicating without encryption
    /// (benchmarks only).
    pub fn with_unencrypted_replication_for_benchmarks(mut self) -> Self {
        self.unencrypted_replication_for_benchmarks = true;
        self
    }

    /// The same spec with an extra `[[service]]` setting for the daemons
    /// (`value` is written as TOML as it is).
    pub fn with_service_option(mut self, name: &str, value: impl Into<String>) -> Self {
        self.service_options.push((name.to_string(), value.into()));
        self
    }

    /// The same spec with these Raft timeouts for the daemons.
    pub fn with_raft(mut self, raft: RaftTimings) -> Self {
        self.raft = raft;
        self
    }
}

/// Node `id`'s address: 198.18.0.(10 + id), for ids 1..=[`MAX_NODES`]
/// (a larger id is clamped to stay inside the subnet).
pub fn node_addr(id: u32) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 10 + id.min(200) as u8)
}

/// The lab as docs/architecture.md §7 prints it (`lab up --json`, `lab status --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabStatus {
    /// The lab name.
    pub name: String,
    /// The service's virtual IP.
    pub vip: Ipv4Addr,
    /// The service port.
    pub port: u16,
    /// The client's namespace (run clients there: `tandem lab exec`).
    pub client_netns: String,
    /// The node serving the VIP (the only one whose role is `"primary"`);
    /// `null` if there is none, or several, or no daemon (service none).
    pub leader: Option<u32>,
    /// The nodes, by id.
    pub nodes: Vec<NodeStatus>,
}

/// One node in [`LabStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node id, from 1.
    pub id: u32,
    /// Its namespace.
    pub netns: String,
    /// Its address.
    pub addr: Ipv4Addr,
    /// The node's daemon, if it runs; with service none, the newest process
    /// the lab spawned there that still runs. `null` if none.
    pub pid: Option<u32>,
    /// `"primary"` (its daemon runs, its link is up and the VIP is
    /// assigned in its namespace), `"clone"` (daemon running, no VIP),
    /// `"stopped"` (daemon SIGSTOPped) or `"down"` (no daemon, or link
    /// down); `"none"` with service none.
    pub role: String,
    /// Whether its daemon runs and is not stopped. With service none:
    /// namespace present, link up, and not killed, crashed or stopped.
    pub alive: bool,
}

/// A node's condition in detail (for tables; not part of the JSON contract).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCondition {
    /// Node id.
    pub id: u32,
    /// Whether its namespace exists.
    pub netns_exists: bool,
    /// Whether its link is up at both ends (`UP` and `LOWER_UP` on `eth0`).
    pub link_up: bool,
    /// The fault recorded for it.
    pub fault: Fault,
    /// Whether its replication traffic is dropped.
    pub partitioned: bool,
    /// Processes running in its namespace.
    pub pids: Vec<u32>,
}

/// The faults of docs/architecture.md §7, and their undoing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    /// Power cut: SIGKILL every process of the node, set its link down.
    Kill,
    /// Process crash on a live machine: SIGKILL, link left up.
    Crash,
    /// Hang: SIGSTOP every process of the node.
    Stop,
    /// End of a hang: SIGCONT.
    Cont,
    /// Reboot: SIGKILL whatever is left, VIP dropped, link up, fresh
    /// daemon with the same config (none with service none).
    Restart,
    /// Drop the node's replication traffic ([`REPLICATION_PORTS`]).
    Partition,
    /// Stop dropping it.
    Heal,
}

impl FaultAction {
    /// The CLI verb.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultAction::Kill => "kill",
            FaultAction::Crash => "crash",
            FaultAction::Stop => "stop",
            FaultAction::Cont => "cont",
            FaultAction::Restart => "restart",
            FaultAction::Partition => "partition",
            FaultAction::Heal => "heal",
        }
    }
}

/// What a fault did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultReport {
    /// The fault.
    pub action: FaultAction,
    /// The node.
    pub node: u32,
    /// Processes signalled.
    pub signalled: Vec<u32>,
    /// Anything worth telling, e.g. "no daemon to start".
    pub note: Option<String>,
}

impl std::fmt::Display for FaultReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.action {
            FaultAction::Kill => "killed (SIGKILL, link down)",
            FaultAction::Crash => "crashed (SIGKILL, link up)",
            FaultAction::Stop => "stopped (SIGSTOP)",
            FaultAction::Cont => "continued (SIGCONT)",
            FaultAction::Restart => "restarted (link up)",
            FaultAction::Partition => "partitioned (replication traffic dropped)",
            FaultAction::Heal => "healed (replication traffic restored)",
        };
        write!(f, "node {} {what}", self.node)?;
        if !self.signalled.is_empty() {
            let pids: Vec<String> = self.signalled.iter().map(u32::to_string).collect();
            write!(f, "; signalled pid {}", pids.join(", "))?;
        } else if matches!(
            self.action,
            FaultAction::Kill | FaultAction::Crash | FaultAction::Stop | FaultAction::Cont
        ) {
            write!(f, "; no process was running there")?;
        }
        if let Some(note) = &self.note {
            write!(f, "; {note}")?;
        }
        Ok(())
    }
}

/// The outcome of a TCP probe ([`Lab::probe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Something accepted the connection.
    Open,
    /// The host answered with a reset: it is reachable, the port is closed.
    Refused,
    /// No answer in time, or no route: the host is unreachable.
    Unreachable,
}

/// A handle on a lab, backed by its state file. Dropping it leaves the lab
/// up (use [`Lab::down`], or [`LabGuard`] in tests).
#[derive(Debug)]
pub struct Lab {
    state: LabState,
    /// Daemons this handle started (`up`, `restart`), reaped when they end
    /// so a long-lived process collects no zombies.
    children: Vec<Child>,
}

impl Lab {
    /// Builds a lab: its namespaces, bridge, veths, addresses, and the
    /// iptables chains used by `partition` and [`Lab::client_rst_count`].
    /// With a service other than none, also starts the node daemons and
    /// waits for a primary, as [`Lab::up_with_daemon`] (daemon binary:
    /// `$TANDEM_BIN`, else the running executable). On failure, whatever
    /// was built is removed again.
    pub fn up(spec: &LabSpec) -> Result<Lab, LabError> {
        Self::up_with_daemon(spec, None)
    }

    /// [`Lab::up`], with the node daemons run from `daemon` (a `tandem`
    /// binary, run as `DAEMON node --config STATE_DIR/NAME/nodeI.toml`).
    /// `None` = `$TANDEM_BIN` if set, else [`std::env::current_exe`]. The
    /// binary is checked before anything is built and recorded in the
    /// state, so `restart` runs the same one; it is not needed (nor
    /// checked) with service none.
    ///
    /// With a daemon, `up` writes the lab's files (see [`crate`] docs),
    /// starts one daemon per node and waits up to [`crate::primary_wait`] until
    /// exactly one node holds the VIP and a TCP connection from the client
    /// to VIP:port succeeds, saying on stderr every 2 s what it waits for.
    /// If a daemon exits first, or time runs out, the lab is removed and
    /// the error quotes the end of every node's log. (The connection tests
    /// may be refused while the primary starts: take a baseline of
    /// [`Lab::client_rst_count`] after `up`.)
    pub fn up_with_daemon(spec: &LabSpec, daemon: Option<&Path>) -> Result<Lab, LabError> {
        if spec.nodes == 0 || spec.nodes > MAX_NODES {
            return Err(LabError::InvalidNodeCount(spec.nodes));
        }
        if let Some(name) = &spec.name {
            names::validate_name(name)?;
        }
        let daemon = if spec.service.has_daemon() {
            Some(resolve_daemon(daemon)?)
        } else {
            None
        };
        cmd::require_root()?;
        cmd::require_tools()?;
        match &spec.name {
            Some(name) => Self::up_named(name, spec, daemon),
            None => {
                // A generated name can only clash with a stale state file
                // of a dead process that had our pid: try a few.
                let mut attempts = 0;
                loop {
                    match Self::up_named(&names::generate_name(), spec, daemon.clone()) {
                        Err(LabError::AlreadyExists(_)) if attempts < 5 => attempts += 1,
                        other => return other,
                    }
                }
            }
        }
    }

    fn up_named(name: &str, spec: &LabSpec, daemon: Option<PathBuf>) -> Result<Lab, LabError> {
        let lock = StateLock::acquire(name)?;
        if lock.exists() {
            return Err(LabError::AlreadyExists(name.to_string()));
        }
        let mut state = plan(name, spec);
        state.daemon = daemon;
        // Refuse before creating anything if a namespace we would create is
        // already there: it is someone else's.
        for netns in planned_netns(&state) {
            if procs::netns_inode(&netns).is_some() {
                return Err(LabError::NamespaceTaken(netns));
            }
        }
        lock.save(&state)?;
        let mut children = Vec::new();
        let built = build(&lock, &mut state).and_then(|()| {
            if state.service.has_daemon() {
                start_daemons(&lock, &mut state, &mut children)
            } else {
                Ok(())
            }
        });
        if let Err(err) = built {
            tracing::warn!(lab = name, error = %err, "lab up failed; removing what was built");
            let cleanup = teardown(&state);
            reap(&mut children);
            if let Err(cleanup) = cleanup {
                tracing::warn!(lab = name, error = %cleanup, "cleanup after a failed up");
                // Keep the state file: `down` can retry from it.
                return Err(err);
            }
            lock.remove()?;
            return Err(err);
        }
        // Faults and `status` from other processes may act while we wait.
        drop(lock);
        let mut lab = Lab { state, children };
        if lab.state.service.has_daemon() {
            match lab.wait_for_primary(crate::primary_wait()) {
                Ok(leader) => {
                    tracing::info!(lab = name, leader, "a primary serves the VIP");
                }
                Err(err) => {
                    // The error (returned) quotes the logs; don't repeat them.
                    tracing::warn!(lab = name, "no primary served the VIP; removing the lab");
                    if let Err(cleanup) = Self::down_by_name(name) {
                        tracing::warn!(lab = name, error = %cleanup, "cleanup after a failed up");
                    }
                    reap(&mut lab.children);
                    return Err(err);
                }
            }
        }
        tracing::info!(lab = name, nodes = spec.nodes, service = %spec.service, "lab up");
        Ok(lab)
    }

    /// Waits (up to `timeout`) until exactly one node holds the VIP and the
    /// client connects to VIP:port; returns that node. Fails at once if a
    /// daemon has exited.
    fn wait_for_primary(&mut self, timeout: Duration) -> Result<u32, LabError> {
        let start = Instant::now();
        let mut next_progress = start + PROGRESS_EVERY;
        let (vip, port) = (self.state.vip, self.state.port);
        loop {
            if let Some((node, status)) = self.exited_daemon() {
                return Err(LabError::DaemonExited {
                    name: self.state.name.clone(),
                    node,
                    status,
                    logs: files::log_tails(&self.state),
                });
            }
            let holders: Vec<u32> = self
                .state
                .nodes
                .iter()
                .filter(|n| holds_vip(&n.netns, vip))
                .map(|n| n.id)
                .collect();
            let what = match holders.as_slice() {
                [] => format!("no node holds the VIP {vip}"),
                [one] => {
                    let to = SocketAddrV4::new(vip, port);
                    match self.probe(None, to, Duration::from_secs(1))? {
                        Probe::Open => return Ok(*one),
                        Probe::Refused => format!(
                            "node {one} holds the VIP but {to} refuses the client's connections"
                        ),
                        Probe::Unreachable => {
                            format!("node {one} holds the VIP but {to} does not answer the client")
                        }
                    }
                }
                many => format!("nodes {} all hold the VIP {vip}", join_ids(many)),
            };
            let now = Instant::now();
            if now >= start + timeout {
                return Err(LabError::NoPrimary {
                    name: self.state.name.clone(),
                    vip,
                    port,
                    secs: timeout.as_secs(),
                    what,
                    logs: files::log_tails(&self.state),
                });
            }
            if now >= next_progress {
                eprintln!(
                    "tandem lab {}: waiting for a primary to serve {vip}:{port}: {what} ({} s of {})",
                    self.state.name,
                    (now - start).as_secs(),
                    timeout.as_secs()
                );
                next_progress += PROGRESS_EVERY;
            }
            std::thread::sleep(PRIMARY_POLL);
        }
    }

    /// The first node whose newest daemon no longer runs, and how it ended
    /// (known only for daemons this handle started).
    fn exited_daemon(&mut self) -> Option<(u32, String)> {
        let (node, pid) = self.state.nodes.iter().find_map(|node| {
            let daemon = node.procs.iter().rev().find(|p| p.daemon)?;
            (!daemon.is_running()).then_some((node.id, daemon.pid))
        })?;
        let status = self
            .children
            .iter_mut()
            .find(|c| c.id() == pid)
            .and_then(|c| c.try_wait().ok().flatten())
            .map_or_else(|| format!("pid {pid} is gone"), |s| s.to_string());
        Some((node, status))
    }

    /// A handle on an existing lab, from its state file. Works on a lab
    /// whose `up` died half-way, so that `down` can clean it.
    pub fn open(name: &str) -> Result<Lab, LabError> {
        names::validate_name(name)?;
        Ok(Lab {
            state: state::load(name)?,
            children: Vec::new(),
        })
    }

    /// Names of the labs on this machine (those with a state file), sorted.
    pub fn list() -> Result<Vec<String>, LabError> {
        state::list()
    }

    /// The lab to act on: `name` if given, else the only lab there is
    /// ([`LabError::NoLab`] or [`LabError::Ambiguous`] otherwise).
    pub fn resolve_name(name: Option<&str>) -> Result<String, LabError> {
        if let Some(name) = name {
            names::validate_name(name)?;
            return Ok(name.to_string());
        }
        let labs = Self::list()?;
        match labs.as_slice() {
            [] => Err(LabError::NoLab),
            [one] => Ok(one.clone()),
            many => Err(LabError::Ambiguous(many.join(", "))),
        }
    }

    /// Removes the lab: SIGKILLs the processes it spawned (the daemons
    /// among them) and everything still running in its namespaces, deletes
    /// the namespaces it created (which takes their veths, bridge and
    /// iptables rules with them), its directory of daemon files and its
    /// state file. Pieces already gone are fine.
    pub fn down(mut self) -> Result<(), LabError> {
        let result = Self::down_by_name(&self.state.name);
        reap(&mut self.children);
        result
    }

    /// [`Lab::down`] by name, e.g. after the process that built the lab died.
    pub fn down_by_name(name: &str) -> Result<(), LabError> {
        names::validate_name(name)?;
        cmd::require_root()?;
        let lock = StateLock::acquire(name)?;
        let state = lock.load()?;
        teardown(&state)?;
        lock.remove()?;
        tracing::info!(lab = name, "lab down");
        Ok(())
    }

    /// The lab name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The service the nodes run.
    pub fn service(&self) -> ServiceKind {
        self.state.service
    }

    /// The virtual IP (not assigned by the lab itself).
    pub fn vip(&self) -> Ipv4Addr {
        self.state.vip
    }

    /// The VIP's prefix length (that of the lab subnet).
    pub fn vip_prefix_len(&self) -> u8 {
        self.state.prefix_len
    }

    /// The service port.
    pub fn port(&self) -> u16 {
        self.state.port
    }

    /// The node ids, 1-based.
    pub fn node_ids(&self) -> Vec<u32> {
        self.state.nodes.iter().map(|n| n.id).collect()
    }

    /// Node `id`'s namespace.
    pub fn node_netns(&self, id: u32) -> Result<&str, LabError> {
        Ok(&self.node(id)?.netns)
    }

    /// Node `id`'s address.
    pub fn node_addr(&self, id: u32) -> Result<Ipv4Addr, LabError> {
        Ok(self.node(id)?.addr)
    }

    /// The interface name inside each node (and the client) namespace.
    pub fn node_interface(&self) -> &str {
        NODE_INTERFACE
    }

    /// The bridge's namespace.
    pub fn bridge_netns(&self) -> &str {
        &self.state.bridge_netns
    }

    /// The client's namespace.
    pub fn client_netns(&self) -> &str {
        &self.state.client.netns
    }

    /// The client's address.
    pub fn client_addr(&self) -> Ipv4Addr {
        self.state.client.addr
    }

    /// The `tandem` binary the node daemons run (`None` with service none).
    pub fn daemon(&self) -> Option<&Path> {
        self.state.daemon.as_deref()
    }

    /// The lab's directory of daemon files (`STATE_DIR/NAME/`), once made.
    pub fn files_dir(&self) -> Option<&Path> {
        self.state.files_dir.as_deref()
    }

    /// Node `id`'s config file (`STATE_DIR/NAME/nodeI.toml`), if the lab
    /// runs daemons.
    pub fn node_config_path(&self, id: u32) -> Result<Option<PathBuf>, LabError> {
        self.node(id)?;
        Ok(self.files_dir().map(|dir| files::config_path(dir, id)))
    }

    /// Node `id`'s admin socket (`STATE_DIR/NAME/nodeI.sock`), if the lab
    /// runs daemons.
    pub fn node_admin_socket(&self, id: u32) -> Result<Option<PathBuf>, LabError> {
        self.node(id)?;
        Ok(self.files_dir().map(|dir| files::admin_socket(dir, id)))
    }

    /// Node `id`'s daemon log (`STATE_DIR/NAME/nodeI.log`), if the lab
    /// runs daemons.
    pub fn node_log_path(&self, id: u32) -> Result<Option<PathBuf>, LabError> {
        self.node(id)?;
        Ok(self.files_dir().map(|dir| files::log_path(dir, id)))
    }

    /// Makes node `id` fail (or pass again) its supervision check: the
    /// daemon's check command tests for a flag file in the lab's directory.
    /// An unhealthy primary hands its role over; an unhealthy clone refuses
    /// it.
    pub fn set_unhealthy(&self, id: u32, unhealthy: bool) -> Result<(), LabError> {
        self.node(id)?;
        let Some(dir) = self.files_dir() else {
            return Err(LabError::Command {
                command: format!("mark node {id} unhealthy"),
                detail: "this lab runs no daemons (service none)".into(),
            });
        };
        let flag = files::unhealthy_flag(dir, id);
        let result = if unhealthy {
            std::fs::write(&flag, b"set by the lab: this node fails its health check\n")
        } else {
            match std::fs::remove_file(&flag) {
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        };
        result.map_err(|source| LabError::Spawn {
            command: format!("writing {}", flag.display()),
            source,
        })
    }

    /// The namespace of `node`, or of the client for `None`.
    pub fn netns(&self, node: Option<u32>) -> Result<&str, LabError> {
        match node {
            Some(id) => self.node_netns(id),
            None => Ok(self.client_netns()),
        }
    }

    /// Every namespace the lab has created so far (bridge, client, nodes).
    pub fn created_netns(&self) -> &[String] {
        &self.state.created_netns
    }

    fn node(&self, id: u32) -> Result<&EndpointState, LabError> {
        find_node(&self.state, id)
    }

    /// The lab as docs/architecture.md §7 describes it, read fresh from the state file
    /// and the kernel (falls back on this handle's copy of the state if the
    /// file cannot be read).
    pub fn status(&self) -> LabStatus {
        let state = state::load(&self.state.name).unwrap_or_else(|_| self.state.clone());
        let mut nodes: Vec<NodeStatus> = state
            .nodes
            .iter()
            .map(|node| node_status(&state, node))
            .collect();
        let mut primaries: Vec<u32> = nodes
            .iter()
            .filter(|n| n.role == ROLE_PRIMARY)
            .map(|n| n.id)
            .collect();
        if primaries.len() > 1 {
            // Right after a planned move the old primary keeps the VIP for
            // a moment, silent (its lease is revoked): the primary is the
            // holder whose kernel may speak for the VIP.
            for n in nodes.iter_mut().filter(|n| n.role == ROLE_PRIMARY) {
                if !holds_lease(&n.netns, state.vip, state.port) {
                    n.role = "clone".to_string();
                }
            }
            primaries = nodes
                .iter()
                .filter(|n| n.role == ROLE_PRIMARY)
                .map(|n| n.id)
                .collect();
        }
        LabStatus {
            name: state.name.clone(),
            vip: state.vip,
            port: state.port,
            client_netns: state.client.netns.clone(),
            leader: match primaries.as_slice() {
                [one] => Some(*one),
                _ => None,
            },
            nodes,
        }
    }

    /// Every node's condition in detail, fresh.
    pub fn conditions(&self) -> Vec<NodeCondition> {
        let state = state::load(&self.state.name).unwrap_or_else(|_| self.state.clone());
        state.nodes.iter().map(condition).collect()
    }

    /// Applies a fault to node `id` (see [`FaultAction`]).
    pub fn apply(&mut self, action: FaultAction, id: u32) -> Result<FaultReport, LabError> {
        cmd::require_root()?;
        find_node(&self.state, id)?;
        reap_finished(&mut self.children);
        let (report, child) = self.update(|state| fault(state, action, id))?;
        self.children.extend(child);
        Ok(report)
    }

    /// Power cut: SIGKILL the node's processes and set its link down (both
    /// veth ends). Clients and peers see silence, not resets.
    pub fn kill(&mut self, id: u32) -> Result<FaultReport, LabError> {
        self.apply(FaultAction::Kill, id)
    }

    /// Process crash: SIGKILL the node's daemon (with service none: every
    /// process of the node), link left up (its kernel lives on and answers
    /// for closed sockets with resets).
    pub fn crash(&mut self, id: u32) -> Result<FaultReport, LabError> {
        self.apply(FaultAction::Crash, id)
    }

    /// Hang: SIGSTOP the node's processes (the kernel still ACKs).
    pub fn stop(&mut self, id: u32) -> Result<FaultReport, LabError> {
        self.apply(FaultAction::Stop, id)
    }

    /// End of a hang: SIGCONT the node's processes.
    pub fn cont(&mut self, id: u32) -> Result<FaultReport, LabError> {
        self.apply(FaultAction::Cont, id)
    }

    /// Drop the node's replication traffic (TCP and UDP ports
    /// [`REPLICATION_PORTS`], both directions); clients still reach it.
    pub fn partition(&mut self, id: u32) -> Result<FaultReport, LabError> {
        self.apply(FaultAction::Partition, id)
    }

    /// Undo [`Lab::partition`].
    pub fn heal(&mut self, id: u32) -> Result<FaultReport, LabError> {
        self.apply(FaultAction::Heal, id)
    }

    /// Reboot: SIGKILL whatever still runs in the node, drop the VIP if its
    /// namespace still has it (a reboot loses it), set its link up, and
    /// start a fresh daemon with the same config (it rejoins as a clone;
    /// its pid is recorded). With service none there is no daemon to start
    /// and the VIP is left alone (the report says so).
    pub fn restart(&mut self, id: u32) -> Result<FaultReport, LabError> {
        self.apply(FaultAction::Restart, id)
    }

    /// A [`Command`] that runs `program` in `node`'s namespace (the client's
    /// for `None`), via `ip netns exec` (which execs, so the child's pid is
    /// the program's). Add arguments, environment and stdio, then run it
    /// with [`Lab::spawn`] to have the lab track it, or directly.
    pub fn command(
        &self,
        node: Option<u32>,
        program: impl AsRef<OsStr>,
    ) -> Result<Command, LabError> {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", self.netns(node)?])
            .arg(program);
        Ok(command)
    }

    /// Starts `command` (made by [`Lab::command`] for the same `node`) and
    /// records its pid in the state file, so that faults and `down` act on
    /// it even if it leaves the namespace. The caller owns the [`Child`]
    /// and should reap it (`wait`).
    pub fn spawn(&mut self, node: Option<u32>, command: Command) -> Result<Child, LabError> {
        self.update(|state| spawn_recorded(state, node, command, false))
    }

    /// Runs `argv` in `node`'s namespace (the client's for `None`) with this
    /// process's stdio, and returns its exit status.
    pub fn exec<S: AsRef<OsStr>>(
        &self,
        node: Option<u32>,
        argv: &[S],
    ) -> Result<ExitStatus, LabError> {
        let mut command = self.argv_command(node, argv)?;
        command
            .status()
            .map_err(|source| cmd::spawn_error("ip", &format!("{command:?}"), source))
    }

    /// Runs `argv` in `node`'s namespace (the client's for `None`) and
    /// captures its output.
    pub fn exec_output<S: AsRef<OsStr>>(
        &self,
        node: Option<u32>,
        argv: &[S],
    ) -> Result<Output, LabError> {
        let mut command = self.argv_command(node, argv)?;
        command
            .stdin(Stdio::null())
            .output()
            .map_err(|source| cmd::spawn_error("ip", &format!("{command:?}"), source))
    }

    fn argv_command<S: AsRef<OsStr>>(
        &self,
        node: Option<u32>,
        argv: &[S],
    ) -> Result<Command, LabError> {
        let (program, args) = argv.split_first().ok_or_else(|| LabError::Spawn {
            command: String::new(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
        })?;
        let mut command = self.command(node, program)?;
        command.args(args);
        Ok(command)
    }

    /// Processes running in `node`'s namespace (the client's for `None`).
    pub fn pids(&self, node: Option<u32>) -> Result<Vec<u32>, LabError> {
        Ok(procs::pids_in(self.netns(node)?))
    }

    /// Runs `f` on a new thread inside `node`'s namespace (the client's for
    /// `None`): sockets it opens live there.
    pub fn run_in<T, F>(&self, node: Option<u32>, f: F) -> Result<T, LabError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        Ok(tandem_sys::netns::run_in(self.netns(node)?, f)?)
    }

    /// Tries a TCP connection from `from` (a node, or the client for
    /// `None`) to `to`, waiting at most `timeout`.
    pub fn probe(
        &self,
        from: Option<u32>,
        to: SocketAddrV4,
        timeout: Duration,
    ) -> Result<Probe, LabError> {
        self.run_in(from, move || {
            match TcpStream::connect_timeout(&SocketAddr::V4(to), timeout) {
                Ok(_) => Probe::Open,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Probe::Refused,
                Err(_) => Probe::Unreachable,
            }
        })
    }

    /// Whether `to` answers from `from` (a node, or the client for `None`)
    /// within a second: a TCP probe of [`PROBE_PORT`], where a reset counts
    /// as an answer. It stands in for `ping`, which is not installed
    /// everywhere; note that it adds one to [`Lab::client_rst_count`] when
    /// run from the client.
    pub fn reachable(&self, from: Option<u32>, to: Ipv4Addr) -> Result<bool, LabError> {
        let probe = self.probe(
            from,
            SocketAddrV4::new(to, PROBE_PORT),
            Duration::from_secs(1),
        )?;
        Ok(probe != Probe::Unreachable)
    }

    /// TCP segments with RST set received in the client namespace since the
    /// lab came up (counted by an iptables rule in [`RST_COUNT_CHAIN`]).
    /// Clients of a migrated service must never see one.
    pub fn client_rst_count(&self) -> Result<u64, LabError> {
        let out = iptables_in(
            self.client_netns(),
            &["-n", "-v", "-x", "-L", RST_COUNT_CHAIN],
        )?;
        parse_first_counter(&out).ok_or_else(|| LabError::Parse {
            command: format!("iptables -n -v -x -L {RST_COUNT_CHAIN}"),
            output: out,
        })
    }

    /// Locks the state, re-reads it, applies `f`, saves (even when `f`
    /// fails, since it may have recorded progress), and refreshes this
    /// handle's copy.
    fn update<R>(
        &mut self,
        f: impl FnOnce(&mut LabState) -> Result<R, LabError>,
    ) -> Result<R, LabError> {
        let lock = StateLock::acquire(&self.state.name)?;
        let mut state = lock.load()?;
        let result = f(&mut state);
        lock.save(&state)?;
        self.state = state;
        result
    }
}

/// The state of a lab not yet built.
fn plan(name: &str, spec: &LabSpec) -> LabState {
    let endpoint = |id: u32, netns: String, addr, bridge_port: String| EndpointState {
        id,
        netns,
        addr,
        bridge_port,
        procs: Vec::new(),
        fault: Fault::None,
        partitioned: false,
    };
    LabState {
        version: state::STATE_VERSION,
        name: name.to_string(),
        service: spec.service,
        vip: VIP,
        prefix_len: PREFIX_LEN,
        port: spec.service.port(),
        bridge_netns: names::bridge_netns_name(name),
        client: endpoint(
            0,
            names::client_netns_name(name),
            CLIENT_ADDR,
            CLIENT_BRIDGE_PORT.to_string(),
        ),
        nodes: (1..=spec.nodes as u32)
            .map(|id| {
                endpoint(
                    id,
                    names::node_netns_name(name, id),
                    node_addr(id),
                    names::node_bridge_port(id),
                )
            })
            .collect(),
        created_netns: Vec::new(),
        complete: false,
        creator_pid: std::process::id(),
        daemon: None,
        files_dir: None,
        raft: spec.raft,
        unencrypted_replication_for_benchmarks: spec.unencrypted_replication_for_benchmarks,
        service_options: spec.service_options.clone(),
    }
}

/// A planned lab, for the tests of other modules.
#[cfg(test)]
pub(crate) fn plan_for_tests(name: &str, nodes: usize, service: ServiceKind) -> LabState {
    plan(
        name,
        &LabSpec::named(name).with_nodes(nodes).with_service(service),
    )
}

/// The daemon binary: `explicit`, else `$TANDEM_BIN`, else the running
/// executable; made absolute (so `restart` from another directory finds
/// it) and checked to be an executable file.
fn resolve_daemon(explicit: Option<&Path>) -> Result<PathBuf, LabError> {
    let path = match explicit {
        Some(path) => path.to_path_buf(),
        None => match std::env::var_os(DAEMON_ENV) {
            Some(value) if !value.is_empty() => PathBuf::from(value),
            _ => std::env::current_exe().map_err(|e| LabError::DaemonUnusable {
                path: PathBuf::from("(the running executable)"),
                reason: e.to_string(),
            })?,
        },
    };
    let absolute = std::fs::canonicalize(&path).map_err(|e| LabError::DaemonUnusable {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if !cmd::is_executable(&absolute) {
        return Err(LabError::DaemonUnusable {
            path: absolute,
            reason: "not an executable file".to_string(),
        });
    }
    Ok(absolute)
}

/// Writes the lab's files and starts every node's daemon, recording the
/// directory before it exists and each daemon as soon as it runs.
fn start_daemons(
    lock: &StateLock,
    state: &mut LabState,
    children: &mut Vec<Child>,
) -> Result<(), LabError> {
    let dir = state::files_dir(&state.name);
    if dir.exists() {
        // No state file records it (we hold the lock and there is none):
        // the leftovers of an earlier lab of this name, in the lab's own
        // directory. A new cluster must not inherit its key or data.
        tracing::warn!(dir = %dir.display(), "removing a stale lab directory");
        std::fs::remove_dir_all(&dir).map_err(|source| LabError::StateIo {
            path: dir.clone(),
            source,
        })?;
    }
    state.files_dir = Some(dir.clone());
    lock.save(state)?;
    files::write_all(state, &dir)?;
    let ids: Vec<u32> = state.nodes.iter().map(|n| n.id).collect();
    for id in ids {
        let started = start_daemon(state, id);
        lock.save(state)?;
        children.push(started?);
    }
    Ok(())
}

/// Starts node `id`'s daemon (`DAEMON node --config nodeI.toml` in its
/// namespace, output appended to `nodeI.log`) and records it.
fn start_daemon(state: &mut LabState, id: u32) -> Result<Child, LabError> {
    let missing = |what: &str| LabError::DaemonUnusable {
        path: PathBuf::from("(none)"),
        reason: format!("the state of lab {} records no {what}", state.name),
    };
    let daemon = state
        .daemon
        .clone()
        .ok_or_else(|| missing("daemon binary"))?;
    let dir = state
        .files_dir
        .clone()
        .ok_or_else(|| missing("directory of node files"))?;
    let netns = find_node(state, id)?.netns.clone();
    let config = files::config_path(&dir, id);
    let mut log = files::open_log(&dir, id)?;
    let log_err = |source| LabError::StateIo {
        path: files::log_path(&dir, id),
        source,
    };
    {
        use std::io::Write;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        writeln!(
            log,
            "=== tandem lab {}: starting {} node --config {} in {netns} (unix time {now})",
            state.name,
            daemon.display(),
            config.display()
        )
        .map_err(log_err)?;
    }
    let stderr = log.try_clone().map_err(log_err)?;
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &netns])
        .arg(&daemon)
        .arg("node")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr)
        // Its own process group: a Ctrl-C meant for `tandem lab up` (or a
        // test runner) does not reach the cluster.
        .process_group(0);
    if let Some(filter) = std::env::var_os("RUST_LOG") {
        command.env("RUST_LOG", filter);
    }
    spawn_recorded(state, Some(id), command, true)
}

/// Starts `command` (built as [`Lab::command`] builds it, for `node`) and
/// records it in `state` (see [`Lab::spawn`]).
fn spawn_recorded(
    state: &mut LabState,
    node: Option<u32>,
    mut command: Command,
    daemon: bool,
) -> Result<Child, LabError> {
    let netns = endpoint_mut(state, node)?.netns.clone();
    let args: Vec<&OsStr> = command.get_args().collect();
    let line = std::iter::once(command.get_program())
        .chain(args.iter().copied())
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let expected = [OsStr::new("netns"), OsStr::new("exec"), OsStr::new(&netns)];
    if command.get_program() != "ip" || args.len() < 4 || args[..3] != expected {
        return Err(LabError::ForeignCommand {
            expected: netns,
            got: line,
        });
    }
    let shown = args[3..]
        .iter()
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let child = command
        .spawn()
        .map_err(|source| cmd::spawn_error("ip", &line, source))?;
    let pid = child.id();
    // The start time is fixed at fork, so it is readable even before
    // `ip` has exec'd the program; if the process is already gone there
    // is nothing to record.
    if let Some((start_time, _)) = procs::stat(pid) {
        endpoint_mut(state, node)?.procs.push(ProcRecord {
            pid,
            start_time,
            command: shown,
            daemon,
        });
    }
    Ok(child)
}

/// Reaps `children` that have exited (SIGKILLed daemons, typically).
fn reap_finished(children: &mut Vec<Child>) {
    children.retain_mut(|child| matches!(child.try_wait(), Ok(None)));
}

/// Reaps what can be reaped and forgets the rest (after `down`).
fn reap(children: &mut Vec<Child>) {
    for child in children.iter_mut() {
        let _ = child.try_wait();
    }
    children.clear();
}

fn join_ids(ids: &[u32]) -> String {
    ids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether the address `vip` is assigned in `netns` (on any interface).
fn holds_vip(netns: &str, vip: Ipv4Addr) -> bool {
    let prefix = format!("{vip}/");
    ip_in(netns, &["-o", "-4", "addr", "show"])
        .map(|out| out.split_whitespace().any(|word| word.starts_with(&prefix)))
        .unwrap_or(false)
}

/// Whether the daemon in `netns` holds the kernel lease for `vip` (the
/// guard's nftables set has an element).
fn holds_lease(netns: &str, vip: Ipv4Addr, port: u16) -> bool {
    let Ok(guard) = tandem_sys::guard::Guard::new(
        Some(netns),
        vip,
        &[port],
        tandem_sys::guard::DELIBERATE_CLOSE_MARK,
    ) else {
        return false;
    };
    Command::new("ip")
        .args(["netns", "exec", netns, "nft", "list", "set", "inet"])
        .arg(guard.table())
        .arg("lease")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).contains(&vip.to_string()))
        .unwrap_or(false)
}

const ROLE_PRIMARY: &str = "primary";

/// A daemon node's role from what is observed of it.
fn role(daemon_running: bool, stopped: bool, link_up: bool, holds_vip: bool) -> &'static str {
    match () {
        _ if !daemon_running => "down",
        _ if stopped => "stopped",
        _ if !link_up => "down",
        _ if holds_vip => ROLE_PRIMARY,
        _ => "clone",
    }
}

/// One node as [`LabStatus`] shows it.
fn node_status(state: &LabState, node: &EndpointState) -> NodeStatus {
    let cond = condition(node);
    if !state.service.has_daemon() {
        return NodeStatus {
            id: node.id,
            netns: node.netns.clone(),
            addr: node.addr,
            pid: node
                .procs
                .iter()
                .rev()
                .find(|p| p.is_running())
                .map(|p| p.pid),
            role: "none".to_string(),
            alive: cond.netns_exists && cond.link_up && cond.fault == Fault::None,
        };
    }
    let daemon = node.procs.iter().rev().find(|p| p.daemon && p.is_running());
    let stopped = daemon.is_some_and(ProcRecord::is_stopped);
    let link_up = cond.netns_exists && cond.link_up;
    let vip = daemon.is_some() && link_up && holds_vip(&node.netns, state.vip);
    NodeStatus {
        id: node.id,
        netns: node.netns.clone(),
        addr: node.addr,
        pid: daemon.map(|d| d.pid),
        role: role(daemon.is_some(), stopped, link_up, vip).to_string(),
        alive: daemon.is_some() && !stopped,
    }
}

fn planned_netns(state: &LabState) -> Vec<String> {
    std::iter::once(state.bridge_netns.clone())
        .chain(state.endpoints().map(|e| e.netns.clone()))
        .collect()
}

/// Builds the planned lab, recording each namespace as soon as it exists.
fn build(lock: &StateLock, state: &mut LabState) -> Result<(), LabError> {
    for netns in planned_netns(state) {
        cmd::run("ip", &["netns", "add", &netns])?;
        state.created_netns.push(netns.clone());
        lock.save(state)?;
        ip_in(&netns, &["link", "set", "lo", "up"])?;
    }
    let br = state.bridge_netns.clone();
    // No STP and no forwarding delay: a port that comes back up after
    // `kill`/`restart` forwards at once. No multicast snooping: without an
    // IGMP querier the bridge would eventually stop forwarding groups.
    ip_in(
        &br,
        &[
            "link",
            "add",
            BRIDGE_DEVICE,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ],
    )?;
    ip_in(&br, &["link", "set", BRIDGE_DEVICE, "up"])?;
    let prefix = state.prefix_len;
    for end in state.endpoints() {
        // Created in the bridge namespace with its peer placed straight
        // into the endpoint's: no interface ever exists in the root one.
        ip_in(
            &br,
            &[
                "link",
                "add",
                &end.bridge_port,
                "type",
                "veth",
                "peer",
                "name",
                NODE_INTERFACE,
                "netns",
                &end.netns,
            ],
        )?;
        ip_in(
            &br,
            &[
                "link",
                "set",
                &end.bridge_port,
                "master",
                BRIDGE_DEVICE,
                "up",
            ],
        )?;
        let cidr = format!("{}/{prefix}", end.addr);
        ip_in(&end.netns, &["addr", "add", &cidr, "dev", NODE_INTERFACE])?;
        ip_in(&end.netns, &["link", "set", NODE_INTERFACE, "up"])?;
    }
    iptables_restore_in(
        &state.client.netns,
        &format!(
            "*filter\n:{c} - [0:0]\n-A {c} -p tcp --tcp-flags RST RST -j RETURN\n\
             -I INPUT 1 -j {c}\nCOMMIT\n",
            c = RST_COUNT_CHAIN
        ),
    )?;
    for node in &state.nodes {
        iptables_restore_in(
            &node.netns,
            &format!(
                "*filter\n:{c} - [0:0]\n-I INPUT 1 -j {c}\n-I OUTPUT 1 -j {c}\nCOMMIT\n",
                c = PARTITION_CHAIN
            ),
        )?;
    }
    wait_links_up(state, &state.endpoints().collect::<Vec<_>>())?;
    state.complete = true;
    lock.save(state)
}

/// Waits until both ends of each endpoint's veth are operationally up.
///
/// Setting a link up is not enough: the kernel's link watcher, which
/// activates the queueing discipline and turns the bridge port on, runs
/// events at most once a second machine-wide, so a link set up shortly
/// after another change (a `kill` then `restart`, or a parallel lab) drops
/// packets for up to a second. Returning only once it is done makes
/// `up`/`restart` mean "reachable now".
fn wait_links_up(state: &LabState, endpoints: &[&EndpointState]) -> Result<(), LabError> {
    let deadline = std::time::Instant::now() + LINK_WAIT;
    for end in endpoints {
        for (netns, dev) in [
            (state.bridge_netns.as_str(), end.bridge_port.as_str()),
            (end.netns.as_str(), NODE_INTERFACE),
        ] {
            while !oper_up(netns, dev) {
                if std::time::Instant::now() >= deadline {
                    return Err(LabError::LinkNotUp {
                        netns: netns.to_string(),
                        device: dev.to_string(),
                        secs: LINK_WAIT.as_secs(),
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    Ok(())
}

/// Whether `dev` in `netns` has operational state UP.
fn oper_up(netns: &str, dev: &str) -> bool {
    ip_in(netns, &["-o", "link", "show", "dev", dev])
        .map(|out| out.contains(" state UP "))
        .unwrap_or(false)
}

/// Kills the lab's processes and deletes its recorded namespaces, going on
/// after errors and reporting them all at the end.
fn teardown(state: &LabState) -> Result<(), LabError> {
    let mut errors = Vec::new();
    let mut killed = Vec::new();
    // Processes inside the namespaces this lab created (and only those: a
    // namespace it did not create may be someone else's), then the ones it
    // spawned, wherever they are now.
    for netns in &state.created_netns {
        match procs::signal_all(Some(netns), &[], Signal::SIGKILL) {
            Ok(pids) => killed.extend(pids),
            Err(e) => errors.push(e.to_string()),
        }
    }
    for end in state.endpoints() {
        match procs::signal_all(None, &end.procs, Signal::SIGKILL) {
            Ok(pids) => killed.extend(pids),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let left = procs::wait_gone(&killed, KILL_WAIT);
    if !left.is_empty() {
        errors.push(format!("processes {left:?} survived SIGKILL"));
    }
    for netns in state.created_netns.iter().rev() {
        if procs::netns_inode(netns).is_none() {
            continue;
        }
        if let Err(e) = cmd::run("ip", &["netns", "del", netns]) {
            errors.push(e.to_string());
        }
    }
    if let Some(dir) = &state.files_dir {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => errors.push(format!("cannot remove {}: {e}", dir.display())),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(LabError::PartialDown {
            name: state.name.clone(),
            errors,
        })
    }
}

fn find_node(state: &LabState, id: u32) -> Result<&EndpointState, LabError> {
    state
        .nodes
        .iter()
        .find(|n| n.id == id)
        .ok_or_else(|| LabError::NoSuchNode {
            lab: state.name.clone(),
            id,
            nodes: state.nodes.len(),
        })
}

fn endpoint_mut(state: &mut LabState, node: Option<u32>) -> Result<&mut EndpointState, LabError> {
    let (name, count) = (state.name.clone(), state.nodes.len());
    match node {
        None => Ok(&mut state.client),
        Some(id) => state
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .ok_or(LabError::NoSuchNode {
                lab: name,
                id,
                nodes: count,
            }),
    }
}

fn condition(node: &EndpointState) -> NodeCondition {
    let netns_exists = procs::netns_inode(&node.netns).is_some();
    NodeCondition {
        id: node.id,
        netns_exists,
        link_up: netns_exists && link_is_up(&node.netns),
        fault: node.fault,
        partitioned: node.partitioned,
        pids: if netns_exists {
            procs::pids_in(&node.netns)
        } else {
            Vec::new()
        },
    }
}

/// Whether `eth0` in `netns` is administratively up and has a carrier
/// (which needs the bridge-side end up too).
fn link_is_up(netns: &str) -> bool {
    ip_in(netns, &["-o", "link", "show", "dev", NODE_INTERFACE])
        .ok()
        .and_then(|out| {
            let flags = out.split('<').nth(1)?.split('>').next()?;
            let flags: Vec<&str> = flags.split(',').collect();
            Some(flags.contains(&"UP") && flags.contains(&"LOWER_UP"))
        })
        .unwrap_or(false)
}

fn set_links(state: &LabState, node: &EndpointState, up: &str) -> Result<(), LabError> {
    // Bridge end first on the way up, node end first on the way down: the
    // node sees its carrier go as soon as its own side changes either way.
    if up == "up" {
        ip_in(&state.bridge_netns, &["link", "set", &node.bridge_port, up])?;
        ip_in(&node.netns, &["link", "set", NODE_INTERFACE, up]).map(drop)
    } else {
        ip_in(&node.netns, &["link", "set", NODE_INTERFACE, up])?;
        ip_in(&state.bridge_netns, &["link", "set", &node.bridge_port, up]).map(drop)
    }
}

/// Adds `note` to the report's note.
fn add_note(report: &mut FaultReport, note: &str) {
    report.note = Some(match report.note.take() {
        Some(n) => format!("{n}; {note}"),
        None => note.to_string(),
    });
}

/// Applies a fault; returns what it did and the daemon it started, if any.
fn fault(
    state: &mut LabState,
    action: FaultAction,
    id: u32,
) -> Result<(FaultReport, Option<Child>), LabError> {
    let node = find_node(state, id)?.clone();
    let mut report = FaultReport {
        action,
        node: id,
        signalled: Vec::new(),
        note: None,
    };
    let mut started = None;
    let kill = |report: &mut FaultReport,
                netns: Option<&str>,
                records: &[ProcRecord]|
     -> Result<(), LabError> {
        report.signalled = procs::signal_all(netns, records, Signal::SIGKILL)?;
        let left = procs::wait_gone(&report.signalled, KILL_WAIT);
        if !left.is_empty() {
            add_note(report, &format!("processes {left:?} have not died yet"));
        }
        Ok(())
    };
    let new_fault = match action {
        FaultAction::Kill => {
            // Link first: a dying process must not get a last word out.
            set_links(state, &node, "down")?;
            kill(&mut report, Some(&node.netns), &node.procs)?;
            Fault::Killed
        }
        FaultAction::Crash if state.service.has_daemon() => {
            // The daemon only: the machine (its kernel, other processes)
            // lives on.
            let daemons: Vec<ProcRecord> =
                node.procs.iter().filter(|p| p.daemon).cloned().collect();
            kill(&mut report, None, &daemons)?;
            Fault::Crashed
        }
        FaultAction::Crash => {
            kill(&mut report, Some(&node.netns), &node.procs)?;
            Fault::Crashed
        }
        FaultAction::Stop => {
            report.signalled = procs::signal_all(Some(&node.netns), &node.procs, Signal::SIGSTOP)?;
            if node.fault == Fault::None {
                Fault::Stopped
            } else {
                node.fault
            }
        }
        FaultAction::Cont => {
            report.signalled = procs::signal_all(Some(&node.netns), &node.procs, Signal::SIGCONT)?;
            if node.fault == Fault::Stopped {
                Fault::None
            } else {
                node.fault
            }
        }
        FaultAction::Restart => {
            // A reboot: nothing of the old life survives, not even a
            // stopped process.
            kill(&mut report, Some(&node.netns), &node.procs)?;
            if state.service.has_daemon() {
                // Nor the VIP a killed primary left assigned: a rebooted
                // machine comes up without it, and must not answer for it.
                if holds_vip(&node.netns, state.vip) {
                    let cidr = format!("{}/{}", state.vip, state.prefix_len);
                    ip_in(&node.netns, &["addr", "del", &cidr, "dev", NODE_INTERFACE])?;
                    add_note(&mut report, &format!("dropped the VIP {cidr}"));
                }
            }
            set_links(state, &node, "up")?;
            wait_links_up(state, &[&node])?;
            if state.service.has_daemon() {
                let child = start_daemon(state, id)?;
                add_note(&mut report, &format!("started daemon pid {}", child.id()));
                started = Some(child);
            } else {
                add_note(&mut report, "service none: no daemon to start");
            }
            Fault::None
        }
        FaultAction::Partition => {
            ensure_partition_jumps(&node.netns)?;
            let ports = format!("{}:{}", REPLICATION_PORTS.start(), REPLICATION_PORTS.end());
            let mut rules = format!("*filter\n:{PARTITION_CHAIN} - [0:0]\n");
            for proto in ["tcp", "udp"] {
                for dir in ["--dport", "--sport"] {
                    rules.push_str(&format!(
                        "-A {PARTITION_CHAIN} -p {proto} {dir} {ports} -j DROP\n"
                    ));
                }
            }
            rules.push_str("COMMIT\n");
            iptables_restore_in(&node.netns, &rules)?;
            node.fault
        }
        FaultAction::Heal => {
            // Re-declaring the chain with --noflush empties it.
            iptables_restore_in(
                &node.netns,
                &format!("*filter\n:{PARTITION_CHAIN} - [0:0]\nCOMMIT\n"),
            )?;
            node.fault
        }
    };
    let entry = endpoint_mut(state, Some(id))?;
    entry.fault = new_fault;
    match action {
        FaultAction::Partition => entry.partitioned = true,
        FaultAction::Heal => entry.partitioned = false,
        _ => {}
    }
    Ok((report, started))
}

/// Re-installs the jumps into [`PARTITION_CHAIN`] if something removed them
/// (a daemon flushing INPUT, say), so a partition always takes effect.
fn ensure_partition_jumps(netns: &str) -> Result<(), LabError> {
    for hook in ["INPUT", "OUTPUT"] {
        if iptables_in(netns, &["-C", hook, "-j", PARTITION_CHAIN]).is_err() {
            iptables_restore_in(
                netns,
                &format!("*filter\n:{PARTITION_CHAIN} - [0:0]\n-I {hook} 1 -j {PARTITION_CHAIN}\nCOMMIT\n"),
            )?;
        }
    }
    Ok(())
}

/// The packet counter of the first rule in `iptables -n -v -x -L CHAIN`
/// output (header, column titles, then one line per rule).
fn parse_first_counter(out: &str) -> Option<u64> {
    out.lines().nth(2)?.split_whitespace().next()?.parse().ok()
}

/// A lab that is taken down when dropped: for tests, where a failing
/// assertion must not leak namespaces.
#[derive(Debug)]
pub struct LabGuard(Option<Lab>);

impl LabGuard {
    /// Guards `lab`.
    pub fn new(lab: Lab) -> LabGuard {
        LabGuard(Some(lab))
    }

    /// [`Lab::up`], guarded.
    pub fn up(spec: &LabSpec) -> Result<LabGuard, LabError> {
        Lab::up(spec).map(LabGuard::new)
    }

    /// Takes the lab down now, reporting errors (instead of logging them on
    /// drop).
    pub fn down(mut self) -> Result<(), LabError> {
        match self.0.take() {
            Some(lab) => lab.down(),
            None => Ok(()),
        }
    }

    /// Disarms the guard: the lab stays up.
    pub fn into_inner(mut self) -> Lab {
        self.0
            .take()
            .expect("a LabGuard holds a lab until disarmed")
    }
}

impl std::ops::Deref for LabGuard {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        self.0
            .as_ref()
            .expect("a LabGuard holds a lab until disarmed")
    }
}

impl std::ops::DerefMut for LabGuard {
    fn deref_mut(&mut self) -> &mut Lab {
        self.0
            .as_mut()
            .expect("a LabGuard holds a lab until disarmed")
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Some(lab) = self.0.take() {
            let name = lab.name().to_string();
            if let Err(err) = lab.down() {
                eprintln!("tandem-lab: cannot take lab {name} down: {err}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_counter_is_parsed() {
        let out = "Chain TDM-LAB-RST (1 references)\n    \
                   pkts      bytes target     prot opt in     out     source               destination\n       \
                   3      120 RETURN     6    --  *      *       0.0.0.0/0            0.0.0.0/0            tcp flags:0x04/0x04\n";
        assert_eq!(parse_first_counter(out), Some(3));
        assert_eq!(parse_first_counter("Chain X\n"), None);
    }

    #[test]
    fn plan_follows_the_address_plan() {
        let state = plan("p", &LabSpec::named("p").with_nodes(3));
        assert_eq!(state.client.addr, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(state.nodes[2].addr, Ipv4Addr::new(198, 18, 0, 13));
        assert_eq!(state.nodes[2].netns, "tdm-p-n3");
        assert_eq!(state.port, 7000);
        assert_eq!(
            planned_netns(&state),
            ["tdm-p-br", "tdm-p-c", "tdm-p-n1", "tdm-p-n2", "tdm-p-n3"]
        );
        assert!(state.created_netns.is_empty());
    }

    #[test]
    fn an_unusable_daemon_is_refused_before_anything_is_built() {
        // Checked before root: this runs (and fails the same way) as any user.
        let spec = LabSpec::named("never-built").with_service(ServiceKind::Kv);
        let err = Lab::up_with_daemon(&spec, Some(Path::new("/nonexistent/tandem"))).unwrap_err();
        assert!(
            matches!(&err, LabError::DaemonUnusable { path, .. } if path == Path::new("/nonexistent/tandem")),
            "{err}"
        );
        assert!(err.to_string().contains("TANDEM_BIN"), "{err}");
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let err = Lab::up_with_daemon(&spec, Some(&manifest)).unwrap_err();
        assert!(err.to_string().contains("not an executable file"), "{err}");
        assert!(!Path::new(&format!("{}/never-built.json", crate::STATE_DIR)).exists());
    }

    #[test]
    fn the_daemon_binary_is_resolved_to_an_absolute_executable() {
        let sh = resolve_daemon(Some(Path::new("/bin/sh"))).unwrap();
        assert!(sh.is_absolute());
        assert!(cmd::is_executable(&sh));
        // Without a path or $TANDEM_BIN: the running executable (the test
        // binary here; `tandem` itself from the CLI).
        if std::env::var_os(DAEMON_ENV).is_none() {
            let me = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
            assert_eq!(resolve_daemon(None).unwrap(), me);
        }
    }

    #[test]
    fn service_none_plans_no_daemon() {
        let state = plan_for_tests("p", 3, ServiceKind::None);
        assert_eq!(state.daemon, None);
        assert_eq!(state.files_dir, None);
        assert!(!state.service.has_daemon());
        assert!(ServiceKind::Kv.has_daemon());
    }

    #[test]
    fn roles_follow_what_is_observed() {
        // (daemon running, stopped, link up, holds the VIP) -> role
        assert_eq!(role(false, false, true, false), "down");
        assert_eq!(role(true, true, true, true), "stopped");
        assert_eq!(role(true, false, false, true), "down");
        assert_eq!(role(true, false, true, true), "primary");
        assert_eq!(role(true, false, true, false), "clone");
    }

    #[test]
    fn kv_plan_uses_the_kv_port() {
        let state = plan_for_tests("k", 3, ServiceKind::Kv);
        assert_eq!(state.port, 6379);
        assert_eq!(state.service, ServiceKind::Kv);
    }

    #[test]
    fn node_counts_are_checked() {
        for nodes in [0, MAX_NODES + 1] {
            let err = Lab::up(&LabSpec::named("never-built").with_nodes(nodes)).unwrap_err();
            assert!(matches!(err, LabError::InvalidNodeCount(n) if n == nodes));
        }
    }
}
