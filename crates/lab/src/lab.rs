//! [`Lab`]: building, driving and removing one lab.
//!
//! Every operation that changes a lab holds its state lock, re-reads the
//! state file, acts, and writes the file back, so separate `tandem lab ...`
//! processes and a long-lived [`Lab`] handle can act on the same lab in any
//! order.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::cmd::{self, ip_in, iptables_in, iptables_restore_in};
use crate::names::{self, CLIENT_BRIDGE_PORT};
use crate::procs::{self, ProcRecord};
use crate::state::{self, EndpointState, Fault, LabState, ServiceKind, StateLock};
use crate::{
    LabError, BRIDGE_DEVICE, CLIENT_ADDR, DEFAULT_NODES, MAX_NODES, NODE_INTERFACE,
    PARTITION_CHAIN, PREFIX_LEN, PROBE_PORT, REPLICATION_PORTS, RST_COUNT_CHAIN, VIP,
};

/// How long a fault waits for SIGKILLed processes to disappear.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// How long `up` and `restart` wait for links to become operational.
const LINK_WAIT: Duration = Duration::from_secs(5);

/// What [`Lab::up`] builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSpec {
    /// The lab name (see [`crate::validate_name`]); `None` = a generated,
    /// unique one (see [`crate::generate_name`]).
    pub name: Option<String>,
    /// Number of nodes, 1..=[`MAX_NODES`].
    pub nodes: usize,
    /// What the nodes serve. Only [`ServiceKind::None`] works today.
    pub service: ServiceKind,
}

impl Default for LabSpec {
    /// A generated name, [`DEFAULT_NODES`] nodes, service none.
    fn default() -> Self {
        LabSpec {
            name: None,
            nodes: DEFAULT_NODES,
            service: ServiceKind::None,
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
}

/// Node `id`'s address: 198.18.0.(10 + id), for ids 1..=[`MAX_NODES`]
/// (a larger id is clamped to stay inside the subnet).
pub fn node_addr(id: u32) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 10 + id.min(200) as u8)
}

/// The lab as DESIGN §7 prints it (`lab up --json`, `lab status --json`).
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
    /// The node serving the VIP; `null` while no daemon runs.
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
    /// The newest process the lab spawned there that still runs (the
    /// daemon, once daemons exist); `null` if none.
    pub pid: Option<u32>,
    /// The daemon's role; `"none"` while no daemon runs.
    pub role: String,
    /// Namespace present, link up, and not killed, crashed or stopped.
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

/// The faults of DESIGN §7, and their undoing.
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
    /// Reboot: SIGKILL whatever is left, link up, fresh daemon (none today).
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
}

impl Lab {
    /// Builds a lab: its namespaces, bridge, veths, addresses, and the
    /// iptables chains used by `partition` and [`Lab::client_rst_count`].
    /// On failure, whatever was built is removed again.
    pub fn up(spec: &LabSpec) -> Result<Lab, LabError> {
        if spec.service != ServiceKind::None {
            return Err(LabError::ServiceUnavailable(spec.service));
        }
        if spec.nodes == 0 || spec.nodes > MAX_NODES {
            return Err(LabError::InvalidNodeCount(spec.nodes));
        }
        if let Some(name) = &spec.name {
            names::validate_name(name)?;
        }
        cmd::require_root()?;
        cmd::require_tools()?;
        match &spec.name {
            Some(name) => Self::up_named(name, spec),
            None => {
                // A generated name can only clash with a stale state file
                // of a dead process that had our pid: try a few.
                let mut attempts = 0;
                loop {
                    match Self::up_named(&names::generate_name(), spec) {
                        Err(LabError::AlreadyExists(_)) if attempts < 5 => attempts += 1,
                        other => return other,
                    }
                }
            }
        }
    }

    fn up_named(name: &str, spec: &LabSpec) -> Result<Lab, LabError> {
        let lock = StateLock::acquire(name)?;
        if lock.exists() {
            return Err(LabError::AlreadyExists(name.to_string()));
        }
        let mut state = plan(name, spec);
        // Refuse before creating anything if a namespace we would create is
        // already there: it is someone else's.
        for netns in planned_netns(&state) {
            if procs::netns_inode(&netns).is_some() {
                return Err(LabError::NamespaceTaken(netns));
            }
        }
        lock.save(&state)?;
        match build(&lock, &mut state) {
            Ok(()) => {
                tracing::info!(lab = name, nodes = spec.nodes, "lab up");
                Ok(Lab { state })
            }
            Err(err) => {
                tracing::warn!(lab = name, error = %err, "lab up failed; removing what was built");
                if let Err(cleanup) = teardown(&state) {
                    tracing::warn!(lab = name, error = %cleanup, "cleanup after a failed up");
                    // Keep the state file: `down` can retry from it.
                    return Err(err);
                }
                lock.remove()?;
                Err(err)
            }
        }
    }

    /// A handle on an existing lab, from its state file. Works on a lab
    /// whose `up` died half-way, so that `down` can clean it.
    pub fn open(name: &str) -> Result<Lab, LabError> {
        names::validate_name(name)?;
        Ok(Lab {
            state: state::load(name)?,
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

    /// Removes the lab: SIGKILLs the processes it spawned and everything
    /// still running in its namespaces, deletes the namespaces it created
    /// (which takes their veths, bridge and iptables rules with them) and
    /// its state file. Pieces already gone are fine.
    pub fn down(self) -> Result<(), LabError> {
        Self::down_by_name(&self.state.name)
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

    /// The lab as DESIGN §7 describes it, read fresh from the state file
    /// and the kernel (falls back on this handle's copy of the state if the
    /// file cannot be read).
    pub fn status(&self) -> LabStatus {
        let state = state::load(&self.state.name).unwrap_or_else(|_| self.state.clone());
        let role = match state.service {
            ServiceKind::None => "none",
            // Daemons will report their own roles; until then, nothing to ask.
            _ => "unknown",
        };
        LabStatus {
            name: state.name.clone(),
            vip: state.vip,
            port: state.port,
            client_netns: state.client.netns.clone(),
            leader: None,
            nodes: state
                .nodes
                .iter()
                .map(|node| {
                    let cond = condition(node);
                    NodeStatus {
                        id: node.id,
                        netns: node.netns.clone(),
                        addr: node.addr,
                        pid: node
                            .procs
                            .iter()
                            .rev()
                            .find(|p| p.is_running())
                            .map(|p| p.pid),
                        role: role.to_string(),
                        alive: cond.netns_exists && cond.link_up && cond.fault == Fault::None,
                    }
                })
                .collect(),
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
        self.update(|state| fault(state, action, id))
    }

    /// Power cut: SIGKILL the node's processes and set its link down (both
    /// veth ends). Clients and peers see silence, not resets.
    pub fn kill(&mut self, id: u32) -> Result<FaultReport, LabError> {
        self.apply(FaultAction::Kill, id)
    }

    /// Process crash: SIGKILL the node's processes, link left up (its
    /// kernel lives on and answers for closed sockets with resets).
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

    /// Reboot: SIGKILL whatever still runs in the node, set its link up.
    /// With service none there is no daemon to start (the report says so).
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
    pub fn spawn(&mut self, node: Option<u32>, mut command: Command) -> Result<Child, LabError> {
        let netns = self.netns(node)?.to_string();
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
            let record = ProcRecord {
                pid,
                start_time,
                command: shown,
            };
            self.update(|state| {
                endpoint_mut(state, node)?.procs.push(record);
                Ok(())
            })?;
        }
        Ok(child)
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

fn fault(state: &mut LabState, action: FaultAction, id: u32) -> Result<FaultReport, LabError> {
    let node = find_node(state, id)?.clone();
    let mut report = FaultReport {
        action,
        node: id,
        signalled: Vec::new(),
        note: None,
    };
    let kill_all = |report: &mut FaultReport| -> Result<(), LabError> {
        report.signalled = procs::signal_all(Some(&node.netns), &node.procs, Signal::SIGKILL)?;
        let left = procs::wait_gone(&report.signalled, KILL_WAIT);
        if !left.is_empty() {
            report.note = Some(format!("processes {left:?} have not died yet"));
        }
        Ok(())
    };
    let new_fault = match action {
        FaultAction::Kill => {
            // Link first: a dying process must not get a last word out.
            set_links(state, &node, "down")?;
            kill_all(&mut report)?;
            Fault::Killed
        }
        FaultAction::Crash => {
            kill_all(&mut report)?;
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
            kill_all(&mut report)?;
            set_links(state, &node, "up")?;
            wait_links_up(state, &[&node])?;
            if state.service == ServiceKind::None {
                let note = "service none: no daemon to start";
                report.note = Some(match report.note.take() {
                    Some(n) => format!("{n}; {note}"),
                    None => note.to_string(),
                });
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
    Ok(report)
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
    fn unavailable_services_are_refused_before_anything_is_built() {
        let spec = LabSpec {
            service: ServiceKind::Kv,
            ..LabSpec::named("never-built")
        };
        let err = Lab::up(&spec).unwrap_err();
        assert!(matches!(err, LabError::ServiceUnavailable(ServiceKind::Kv)));
        assert!(err.to_string().contains("--service none"));
    }

    #[test]
    fn node_counts_are_checked() {
        for nodes in [0, MAX_NODES + 1] {
            let err = Lab::up(&LabSpec::named("never-built").with_nodes(nodes)).unwrap_err();
            assert!(matches!(err, LabError::InvalidNodeCount(n) if n == nodes));
        }
    }
}
