//! The per-lab state file (`/run/tandem/labs/NAME.json`) and its lock.
//!
//! The file is the lab's memory across processes: `tandem lab up` builds a
//! lab and exits, later commands act on it, and `down` must remove exactly
//! what `up` created even when `up` died half-way. So it is rewritten after
//! every step (atomically: write a temporary file, then rename), and every
//! read-modify-write holds an exclusive `flock` on `NAME.lock`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::procs::ProcRecord;
use crate::LabError;

/// Version of the state file format.
pub(crate) const STATE_VERSION: u32 = 1;

/// What the lab's nodes serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// Topology only: no daemon, nothing listens (tests and scenarios that
    /// drive the VIP themselves).
    None,
    /// The replicated key-value store (RESP), port 6379.
    Kv,
    /// A TCP echo service, port 7000.
    Echo,
    /// A per-connection counter service, port 7001.
    Counter,
    /// A WebAssembly service, port 7002: the module comes from the spec's
    /// service options (`module = "/path/to/service.wasm"`).
    Wasm,
}

impl ServiceKind {
    /// The service's TCP port on the VIP: kv 6379 (as Redis), echo 7000,
    /// counter 7001; `none` reserves 7000 so the lab has a port to report
    /// and tests have a conventional client port.
    pub fn port(self) -> u16 {
        match self {
            ServiceKind::Kv => 6379,
            ServiceKind::Echo | ServiceKind::None => 7000,
            ServiceKind::Counter => 7001,
            ServiceKind::Wasm => 7002,
        }
    }

    /// Whether the lab runs a `tandem node` daemon per node for it (every
    /// kind but [`ServiceKind::None`]).
    pub fn has_daemon(self) -> bool {
        self != ServiceKind::None
    }

    /// The lowercase name used on the command line and in JSON (and, for
    /// the daemon kinds, the service's `name` and `kind` in node configs).
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKind::None => "none",
            ServiceKind::Kv => "kv",
            ServiceKind::Echo => "echo",
            ServiceKind::Counter => "counter",
            ServiceKind::Wasm => "wasm",
        }
    }
}

impl std::fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ServiceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(ServiceKind::None),
            "kv" => Ok(ServiceKind::Kv),
            "echo" => Ok(ServiceKind::Echo),
            "counter" => Ok(ServiceKind::Counter),
            "wasm" => Ok(ServiceKind::Wasm),
            _ => Err(format!(
                "unknown service {s:?} (expected kv, echo, counter, wasm or none)"
            )),
        }
    }
}

/// The fault a node is under (set by `kill`, `crash`, `stop`; cleared by
/// `cont` and `restart`). A partition is tracked separately: it combines
/// with any of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    /// Running normally.
    #[default]
    None,
    /// Power cut: processes SIGKILLed, link down.
    Killed,
    /// Process crash: processes SIGKILLed, link up.
    Crashed,
    /// Hang: processes SIGSTOPped.
    Stopped,
}

impl Fault {
    /// The lowercase name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::Killed => "killed",
            Fault::Crashed => "crashed",
            Fault::Stopped => "stopped",
        }
    }
}

/// One namespace with an address: the client or a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct EndpointState {
    /// Node id (1-based); 0 for the client.
    pub id: u32,
    /// Its namespace.
    pub netns: String,
    /// Its address on `eth0`.
    pub addr: Ipv4Addr,
    /// Its veth's name inside the bridge namespace.
    pub bridge_port: String,
    /// Processes the lab spawned there, oldest first.
    #[serde(default)]
    pub procs: Vec<ProcRecord>,
    /// Current fault (always `None` for the client).
    #[serde(default)]
    pub fault: Fault,
    /// Whether replication traffic is being dropped.
    #[serde(default)]
    pub partitioned: bool,
}

/// Everything the lab records about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct LabState {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// The lab name.
    pub name: String,
    /// The service the nodes run.
    pub service: ServiceKind,
    /// The virtual IP.
    pub vip: Ipv4Addr,
    /// Prefix length of the VIP and of every lab address.
    pub prefix_len: u8,
    /// The service port.
    pub port: u16,
    /// The bridge's namespace.
    pub bridge_netns: String,
    /// The client.
    pub client: EndpointState,
    /// The nodes, by id order (node `i` at index `i - 1`).
    pub nodes: Vec<EndpointState>,
    /// Namespaces this lab created, in creation order: the only ones `down`
    /// deletes.
    pub created_netns: Vec<String>,
    /// Whether `up` finished building.
    pub complete: bool,
    /// The process that ran `up`.
    pub creator_pid: u32,
    /// The `tandem` binary the node daemons run (`DAEMON node --config
    /// FILE`), resolved once by `up` so `restart` starts the same one.
    /// `None` for service none.
    #[serde(default)]
    pub daemon: Option<PathBuf>,
    /// The lab's own directory (`STATE_DIR/NAME/`: cluster key, node
    /// configs, data directories, admin sockets, logs), once `up` created
    /// it: `down` removes it.
    #[serde(default)]
    pub files_dir: Option<PathBuf>,
    /// Raft timeouts written into every node's config.
    #[serde(default)]
    pub raft: RaftTimings,
    /// Written into every node's config (benchmarks only).
    #[serde(default)]
    pub unencrypted_replication_for_benchmarks: bool,
    /// Extra `[[service]]` settings written into every node's config, as
    /// (name, TOML value) pairs (e.g. the bounds: `max_memory`).
    #[serde(default)]
    pub service_options: Vec<(String, String)>,
}

/// Raft timeouts for the lab's daemons, written as `[raft]` into every
/// node's config (the fields of `crates/node/src/config.rs`); a field left
/// `None` keeps the daemon's default. The daemon validates them: a bad
/// combination fails `up` with the daemon's own error in its log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftTimings {
    /// Length of one Raft tick, ms.
    pub tick_ms: Option<u64>,
    /// Heartbeat interval, in ticks.
    pub heartbeat_ticks: Option<u32>,
    /// Election timeout, in ticks (raft-rs draws each follower's from
    /// [this, 2 × this)).
    pub election_ticks: Option<u32>,
}

impl RaftTimings {
    /// Whether every field is left to the daemon.
    pub fn is_default(&self) -> bool {
        *self == RaftTimings::default()
    }
}

impl LabState {
    /// Every endpoint: the client, then the nodes.
    pub fn endpoints(&self) -> impl Iterator<Item = &EndpointState> {
        std::iter::once(&self.client).chain(self.nodes.iter())
    }
}

/// The state directory ([`crate::STATE_DIR`]).
pub(crate) fn state_dir() -> PathBuf {
    PathBuf::from(crate::STATE_DIR)
}

/// `STATE_DIR/NAME.json`.
pub(crate) fn state_path(name: &str) -> PathBuf {
    state_dir().join(format!("{name}.json"))
}

/// `STATE_DIR/NAME/`: the lab's files (see [`crate::files`]).
pub(crate) fn files_dir(name: &str) -> PathBuf {
    state_dir().join(name)
}

fn lock_path(name: &str) -> PathBuf {
    state_dir().join(format!("{name}.lock"))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LabError + '_ {
    move |source| LabError::StateIo {
        path: path.to_path_buf(),
        source,
    }
}

/// An exclusive hold on a lab's state, released on drop.
pub(crate) struct StateLock {
    _lock: Flock<File>,
    name: String,
}

impl StateLock {
    /// Blocks until this process holds the lab's lock (creating the state
    /// directory and lock file if needed).
    pub fn acquire(name: &str) -> Result<StateLock, LabError> {
        use std::os::unix::fs::MetadataExt;
        let dir = state_dir();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = lock_path(name);
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| {
                LabError::StateIo {
                    path: path.clone(),
                    source: errno.into(),
                }
            })?;
            // The holder we waited for may have unlinked the lock file on
            // its way out (see Drop): then our lock is on a dead inode and
            // someone else may hold the new file's. Retry on the new file.
            let held = lock.metadata().map_err(io_err(&path))?.ino();
            match std::fs::metadata(&path) {
                Ok(current) if current.ino() == held => {
                    return Ok(StateLock {
                        _lock: lock,
                        name: name.to_string(),
                    })
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
    }

    /// Whether the state file exists.
    pub fn exists(&self) -> bool {
        state_path(&self.name).exists()
    }

    /// Reads the state file.
    pub fn load(&self) -> Result<LabState, LabError> {
        load(&self.name)
    }

    /// Replaces the state file atomically.
    pub fn save(&self, state: &LabState) -> Result<(), LabError> {
        let path = state_path(&self.name);
        let tmp = state_dir().join(format!(".{}.json.tmp", self.name));
        let mut text = to_json(state);
        text.push('\n');
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// Deletes the state file (the lock file goes when this value drops).
    pub fn remove(&self) -> Result<(), LabError> {
        let path = state_path(&self.name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }
}

impl Drop for StateLock {
    /// A lab without a state file needs no lock file either: remove it
    /// while still holding it ([`StateLock::acquire`] copes with that).
    fn drop(&mut self) {
        if !state_path(&self.name).exists() {
            let _ = std::fs::remove_file(lock_path(&self.name));
        }
    }
}

/// Reads `NAME.json`.
pub(crate) fn load(name: &str) -> Result<LabState, LabError> {
    let path = state_path(name);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LabError::NotFound {
                name: name.to_string(),
                path,
            })
        }
        Err(e) => return Err(io_err(&path)(e)),
    };
    from_json(&text).map_err(|source| LabError::StateParse { path, source })
}

/// Serialises a state (pretty, for humans reading `/run/tandem/labs`).
pub(crate) fn to_json(state: &LabState) -> String {
    serde_json::to_string_pretty(state).expect("lab state always serialises")
}

/// Parses a state file's text.
pub(crate) fn from_json(text: &str) -> Result<LabState, serde_json::Error> {
    serde_json::from_str(text)
}

/// Names of the labs that have a state file, sorted.
pub(crate) fn list() -> Result<Vec<String>, LabError> {
    let dir = state_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let lab = name.strip_suffix(".json")?;
            crate::validate_name(lab).ok()?;
            Some(lab.to_string())
        })
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LabState {
        let endpoint = |id: u32| EndpointState {
            id,
            netns: format!("tdm-x-n{id}"),
            addr: Ipv4Addr::new(198, 18, 0, 10 + id as u8),
            bridge_port: format!("n{id}"),
            procs: vec![],
            fault: Fault::None,
            partitioned: false,
        };
        LabState {
            version: STATE_VERSION,
            name: "x".into(),
            service: ServiceKind::None,
            vip: crate::VIP,
            prefix_len: 24,
            port: 7000,
            bridge_netns: "tdm-x-br".into(),
            client: EndpointState {
                id: 0,
                netns: "tdm-x-c".into(),
                addr: crate::CLIENT_ADDR,
                bridge_port: "c".into(),
                ..endpoint(0)
            },
            nodes: vec![
                endpoint(1),
                EndpointState {
                    procs: vec![ProcRecord {
                        pid: 42,
                        start_time: 1234,
                        command: "sleep 1000".into(),
                        daemon: true,
                    }],
                    fault: Fault::Stopped,
                    partitioned: true,
                    ..endpoint(2)
                },
            ],
            created_netns: vec!["tdm-x-br".into(), "tdm-x-c".into()],
            complete: false,
            creator_pid: 7,
            daemon: Some("/usr/bin/tandem".into()),
            files_dir: Some("/run/tandem/labs/x".into()),
            raft: RaftTimings::default(),
            unencrypted_replication_for_benchmarks: false,
            service_options: Vec::new(),
        }
    }

    #[test]
    fn state_round_trips_through_json() {
        let state = sample();
        let text = to_json(&state);
        assert_eq!(from_json(&text).unwrap(), state);
    }

    #[test]
    fn state_json_is_readable() {
        let value: serde_json::Value = serde_json::from_str(&to_json(&sample())).unwrap();
        assert_eq!(value["service"], "none");
        assert_eq!(value["vip"], "198.18.0.100");
        assert_eq!(value["nodes"][1]["fault"], "stopped");
        assert_eq!(value["nodes"][1]["procs"][0]["pid"], 42);
        assert_eq!(value["created_netns"][0], "tdm-x-br");
    }

    #[test]
    fn missing_optional_fields_default() {
        // A state written before a node had processes or faults.
        let mut value: serde_json::Value = serde_json::from_str(&to_json(&sample())).unwrap();
        for key in ["procs", "fault", "partitioned"] {
            value["nodes"][0].as_object_mut().unwrap().remove(key);
        }
        value["nodes"][1]["procs"][0]
            .as_object_mut()
            .unwrap()
            .remove("daemon");
        for key in ["daemon", "files_dir"] {
            value.as_object_mut().unwrap().remove(key);
        }
        let state = from_json(&value.to_string()).unwrap();
        assert_eq!(state.nodes[0].fault, Fault::None);
        assert!(state.nodes[0].procs.is_empty());
        assert!(!state.nodes[1].procs[0].daemon);
        assert_eq!(state.daemon, None);
        assert_eq!(state.files_dir, None);
    }

    #[test]
    fn corrupt_state_is_an_error() {
        assert!(from_json("{\"version\": 1").is_err());
        assert!(from_json("{}").is_err());
    }

    #[test]
    fn service_names_parse_and_print() {
        for kind in [
            ServiceKind::None,
            ServiceKind::Kv,
            ServiceKind::Echo,
            ServiceKind::Counter,
            ServiceKind::Wasm,
        ] {
            assert_eq!(kind.as_str().parse::<ServiceKind>().unwrap(), kind);
        }
        assert!("redis".parse::<ServiceKind>().is_err());
        assert_eq!(ServiceKind::Kv.port(), 6379);
    }
}
