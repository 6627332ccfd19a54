//! The lab's error type: every message says what went wrong and, where there
//! is one, what to do about it.

use std::path::PathBuf;

/// Everything that can go wrong building, driving or removing a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The process is not root.
    #[error(
        "the lab needs root: network namespaces, veths and iptables rules need \
         CAP_SYS_ADMIN and CAP_NET_ADMIN (run it with sudo)"
    )]
    NotRoot,

    /// A program the lab runs is not installed.
    #[error("`{tool}` is not installed or not in PATH; install the Debian package `{package}` (apt-get install {package})")]
    MissingTool {
        /// The program, e.g. `ip`.
        tool: &'static str,
        /// The Debian package that ships it.
        package: &'static str,
    },

    /// The lab name breaks the naming rules (see [`crate::validate_name`]).
    #[error("invalid lab name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// The node count is outside 1..=[`crate::MAX_NODES`].
    #[error("a lab has 1 to {max} nodes, not {0}", max = crate::MAX_NODES)]
    InvalidNodeCount(usize),

    /// The `tandem` binary the node daemons would run cannot be run.
    #[error(
        "cannot run the node daemon {}: {reason}; build it (`cargo build -p tandem-cli`) \
         or name the `tandem` binary in ${env}",
        path.display(),
        env = crate::DAEMON_ENV
    )]
    DaemonUnusable {
        /// The binary.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A node's daemon exited while `up` waited for a primary.
    #[error(
        "lab {name}: the daemon of node {node} exited ({status}) before a primary served \
         the VIP. Node logs:\n{logs}"
    )]
    DaemonExited {
        /// The lab name.
        name: String,
        /// The node.
        node: u32,
        /// How it ended, as far as known.
        status: String,
        /// The end of each node's log.
        logs: String,
    },

    /// No primary served the VIP in time.
    #[error(
        "lab {name}: no primary served {vip}:{port} within {secs} s: {what}. Node logs:\n{logs}"
    )]
    NoPrimary {
        /// The lab name.
        name: String,
        /// The VIP.
        vip: std::net::Ipv4Addr,
        /// The service port.
        port: u16,
        /// How long `up` waited.
        secs: u64,
        /// What did not happen, e.g. "no node holds the VIP".
        what: String,
        /// The end of each node's log.
        logs: String,
    },

    /// `up` with a name whose state file exists.
    #[error("lab {0} already exists; run `tandem lab down --name {0}`")]
    AlreadyExists(String),

    /// A namespace the lab would create exists but is not recorded by it.
    #[error(
        "network namespace {0} already exists but no lab state records it; the lab \
         will not touch what it did not create (remove it by hand if it is stale)"
    )]
    NamespaceTaken(String),

    /// No state file for that lab name.
    #[error("no lab named {name} ({} does not exist); `tandem lab list` shows the labs", path.display())]
    NotFound {
        /// The lab name.
        name: String,
        /// The missing state file.
        path: PathBuf,
    },

    /// No lab at all, and none was named.
    #[error("no lab exists; create one with `tandem lab up`")]
    NoLab,

    /// Several labs exist and none was named.
    #[error("several labs exist ({0}); choose one with --name")]
    Ambiguous(String),

    /// A node id outside the lab.
    #[error("lab {lab} has no node {id} (its nodes are 1..={nodes})")]
    NoSuchNode {
        /// The lab name.
        lab: String,
        /// The requested node id.
        id: u32,
        /// How many nodes the lab has.
        nodes: usize,
    },

    /// An external command (`ip`, `iptables`, ...) failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its stderr, or how it ended.
        detail: String,
    },

    /// A command's output could not be understood.
    #[error("cannot parse the output of `{command}`: {output:?}")]
    Parse {
        /// The command line.
        command: String,
        /// What it printed.
        output: String,
    },

    /// Reading, writing or locking a state file failed.
    #[error("state file {}: {source}", path.display())]
    StateIo {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },

    /// A state file is not valid JSON of the expected shape.
    #[error("state file {} is corrupt: {source}", path.display())]
    StateParse {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: serde_json::Error,
    },

    /// Sending a signal failed (other than "no such process").
    #[error("cannot send {signal} to process {pid}: {source}")]
    Signal {
        /// The target.
        pid: u32,
        /// The signal's name.
        signal: &'static str,
        /// The error.
        #[source]
        source: nix::errno::Errno,
    },

    /// Starting a process failed.
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },

    /// [`crate::Lab::spawn`] was given a command not built by
    /// [`crate::Lab::command`] for that namespace.
    #[error(
        "the command to spawn must come from Lab::command for namespace {expected} (got `{got}`)"
    )]
    ForeignCommand {
        /// The namespace it should run in.
        expected: String,
        /// What it was.
        got: String,
    },

    /// A link was set up but the kernel did not report it operational in time.
    #[error("link {device} in namespace {netns} is not up {secs} s after being set up")]
    LinkNotUp {
        /// Its namespace.
        netns: String,
        /// The device.
        device: String,
        /// How long the lab waited.
        secs: u64,
    },

    /// Entering a namespace failed.
    #[error(transparent)]
    Netns(#[from] tandem_sys::netns::NetnsError),

    /// `down` removed what it could but some pieces failed.
    #[error("lab {name} is only partly removed: {}", errors.join("; "))]
    PartialDown {
        /// The lab name.
        name: String,
        /// What failed.
        errors: Vec<String>,
    },
}
