//! The node's configuration file (`tandem node --config FILE`), read and
//! checked before the node touches anything.
//!
//! TOML. Every field is validated and unknown fields are refused, because a
//! typo in a cluster's config (a misspelt `election_ticks`, a VIP without a
//! prefix) must stop the node at start-up with a message that names the
//! field and says how to fix it — not surface as a split brain later.
//!
//! ```toml
//! [node]
//! slot = 1                                # this node's place, one of the members
//! data_dir = "/var/lib/tandem/node1"      # holds the incarnation counter
//! admin_socket = "/run/tandem/node1.sock" # `tandem status` talks to it (mode 0600)
//! metrics = "127.0.0.1:9100"              # optional: Prometheus endpoint (off by default)
//!
//! [cluster]
//! key_file = "/etc/tandem/cluster.key"    # the shared secret, ≥ 32 bytes, not world-readable
//! # rotation_key_file = "/etc/tandem/cluster.key.rotation"  # optional: a second key accepted
//! #                                       # while it exists (key rotation, see ClusterSection)
//! members = [
//!   { slot = 1, addr = "198.18.0.11:7100" },
//!   { slot = 2, addr = "198.18.0.12:7100" },
//!   { slot = 3, addr = "198.18.0.13:7100" },
//! ]
//!
//! [supervision]                            # optional; these are the defaults
//! link = true                             # VIP interface link down = unhealthy
//! # check_command = "redis-cli PING"      # sh -c; exit 0 = healthy (none by default)
//! check_interval_ms = 1000
//! check_timeout_ms = 1000
//! failures = 3                            # consecutive results before health changes
//! takeover_retries = 2                    # retries of a failed takeover before handing it on
//! takeover_backoff_ms = 100               # first retry's wait, doubling each time
//! takeover_refuse_ms = 10000              # after giving up, refuse the primary role this long
//!
//! [raft]                                   # optional; these are the defaults
//! tick_ms = 10
//! heartbeat_ticks = 2
//! election_ticks = 10
//!
//! [snapshot]                               # optional; these are the defaults
//! chunk_bytes = 1048576                   # snapshot data per message to a catching-up node
//! window_chunks = 8                       # chunks in flight before an acknowledgement
//! max_bytes = 4294967296                  # largest snapshot this node accepts
//!
//! [[service]]
//! name = "kv"
//! kind = "kv"                             # kv | echo | counter | wasm
//! # module = "pubsub.wasm"                # kind = "wasm" only: the module (relative: to this file)
//! # wasm_fuel_per_event = 10000000        # wasm: work per event; past it: rolled back + RST
//! # wasm_max_memory = 67108864            # wasm: linear memory bound
//! # wasm_max_stack = 524288               # wasm: stack bound
//! # requirepass = "..."                  # kv only: clients must AUTH with it (default: none)
//! vip = "198.18.0.100/24"
//! interface = "eth0"
//! port = 6379
//! window_clamp = 262144                   # optional: W, the receive window bound
//! queue = 0                               # optional: the NFQUEUE number
//! # SYN-flood defence (optional; these are the defaults; see tandem_core::cookie)
//! syn_rate = 20000                        # new SYNs admitted per second (token bucket)
//! syn_burst = 2000                        # ... in bursts of up to this many
//! max_half_open = 4096                    # pending handshakes in the replicated table
//! syn_cookie_above = 256                  # cookie mode once this many are pending
//! syn_cookie_table = 16384                # cookie handshakes the primary remembers
//! unknown_rst_rate = 1000                 # RSTs per second to packets of no connection
//! # Bounds (optional; these are the defaults). Every replica must use the
//! # same values: they decide what clients see.
//! output_cap = 33554432                   # queued output per connection; past it: RST
//! max_memory = 2147483648                 # accounted bytes; past it: -OOM on writes
//! max_request = 33554432                  # unparsed input per connection; past it: error + close
//! max_value = 16777216                    # largest argument; past it: error + close
//! max_connections = 65536                 # shadow TCP entries; past it: SYN dropped
//! ```

use serde::Deserialize;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use tandem_core::sdk::{
    Limits, DEFAULT_MAX_MEMORY, DEFAULT_MAX_REQUEST, DEFAULT_MAX_VALUE, DEFAULT_OUTPUT_CAP,
};
use tandem_core::shadow::ShadowConfig;
use tandem_replica::envelope::{ClusterKey, Keyring};

/// Why a configuration was refused: which field, what is wrong, how to fix it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Syntax { path: PathBuf, reason: String },
    #[error("{field}: {problem}; {fix}")]
    Invalid {
        field: String,
        problem: String,
        fix: String,
    },
}

fn invalid(
    field: impl Into<String>,
    problem: impl Into<String>,
    fix: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// A whole node configuration, validated.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeSection,
    pub cluster: ClusterSection,
    #[serde(default)]
    pub raft: RaftSection,
    #[serde(default)]
    pub supervision: SupervisionSection,
    #[serde(default)]
    pub snapshot: SnapshotSection,
    #[serde(rename = "service")]
    pub services: Vec<ServiceSection>,
}

/// `[node]`: this node.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// This node's slot: one of `cluster.members`.
    pub slot: u16,
    /// Where the node keeps its incarnation counter.
    pub data_dir: PathBuf,
    /// The admin socket `tandem status` and friends talk to.
    pub admin_socket: PathBuf,
    /// Where to serve Prometheus metrics (`GET /metrics`); off when absent.
    /// Prefer loopback or a management network: the figures are not secret
    /// but nothing authenticates the scraper.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
}

/// `[cluster]`: who the members are and how they authenticate.
///
/// # Rotating the cluster key without an outage
/// Replication is encrypted and authenticated with keys derived from the
/// cluster key. A node sends with `key_file`'s key and accepts it and, while
/// the file exists, `rotation_key_file`'s. `tandem reload-keys NODE` makes a
/// running node read both files again (nothing restarts; established
/// connections stay up). With `rotation_key_file` set in every config:
/// 1. on every node: write the new key to `rotation_key_file`, then
///    `tandem reload-keys N` — every node now accepts old and new;
/// 2. on every node: put the new key in `key_file` and the old one in
///    `rotation_key_file`, then reload — nodes send with the new key, and
///    still accept the old from nodes not yet switched;
/// 3. on every node: remove `rotation_key_file`, then reload — only the new
///    key is accepted.
///
/// Finish each step on all nodes before the next. A reload that fails (file
/// unreadable, too short, readable by others) changes nothing and says why.
///
/// A group re-created by removing the incarnation files needs a new key:
/// per-incarnation keys are what keeps nonces from repeating.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// The file holding the cluster key.
    pub key_file: PathBuf,
    /// A second key file, accepted (never sent with) while it exists: the
    /// other key during a rotation. Optional; absent by default. A missing
    /// file means no second key; a present one is checked like `key_file`.
    #[serde(default)]
    pub rotation_key_file: Option<PathBuf>,
    /// **Benchmarks only.** Sends replication bodies unencrypted (still
    /// authenticated) and accepts such bodies, so that `tandem bench kv`
    /// can measure what encryption costs. Every client byte then crosses the
    /// node network in clear; the node logs a warning at start-up. Default
    /// false; every member must agree.
    #[serde(default)]
    pub unencrypted_replication_for_benchmarks: bool,
    /// Every voting member, this node included.
    pub members: Vec<Member>,
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub slot: u16,
    /// Its replication address.
    pub addr: SocketAddr,
}

/// `[raft]`: timing, in ticks of `tick_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSection {
    pub tick_ms: u64,
    pub heartbeat_ticks: u32,
    pub election_ticks: u32,
}

impl Default for RaftSection {
    /// 20 ms heartbeats, election timeout drawn from [100, 200) ms. The
    /// bound is the client, not the network: a request that died with the
    /// primary is resent by the client's own timers about 0.2 s, then 0.4 s
    /// and 0.8 s after it left, so a primary serving again within ~0.2 s
    /// catches the first resend and one that serves later waits for the
    /// next (BENCHMARKS.md: 300–600 ms timeouts gave pauses of 0.42–0.63 s,
    /// these 0.15–0.22 s). Five heartbeats fit in the shortest timeout, so
    /// a daemon descheduled for a few tens of ms on a loaded 2-core host
    /// does not look dead, and a takeover that rebuilds thousands of
    /// sockets keeps heartbeating meanwhile. A LAN round trip is well under
    /// a millisecond; raise both on a slower network.
    fn default() -> Self {
        RaftSection {
            tick_ms: 10,
            heartbeat_ticks: 2,
            election_ticks: 10,
        }
    }
}

/// `[snapshot]`: how the state is streamed to a node that catches up by
/// snapshot (a restarted node, or one too far behind the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotSection {
    /// Snapshot bytes per chunk message (default 1 MiB, at most 16 MiB):
    /// far below the transport's frame limit, and quick to seal.
    pub chunk_bytes: usize,
    /// Chunks sent ahead of the receiver's acknowledgement (default 8).
    pub window_chunks: usize,
    /// The largest snapshot this node accepts from a leader (default
    /// 4 GiB). A larger one is refused before anything is allocated, and
    /// the node stays a learner: raise it on every node for a larger state.
    pub max_bytes: u64,
}

impl Default for SnapshotSection {
    fn default() -> Self {
        let d = tandem_replica::StreamConfig::default();
        SnapshotSection {
            chunk_bytes: d.chunk_bytes,
            window_chunks: d.window_chunks,
            max_bytes: d.max_snapshot_bytes,
        }
    }
}

impl SnapshotSection {
    /// The replica's stream settings (ticks as the replica's defaults).
    pub fn stream_config(&self) -> tandem_replica::StreamConfig {
        tandem_replica::StreamConfig {
            chunk_bytes: self.chunk_bytes,
            window_chunks: self.window_chunks,
            max_snapshot_bytes: self.max_bytes,
            ..tandem_replica::StreamConfig::default()
        }
    }
}

/// `[supervision]`: how the node judges its own health (claim 13). An
/// unhealthy primary hands its role to a clone; an unhealthy clone refuses
/// to keep the role if elected.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionSection {
    /// Watch the VIP interface's link state (down = unhealthy).
    pub link: bool,
    /// A command run with `sh -c`: exit status 0 means healthy. None: no
    /// check.
    pub check_command: Option<String>,
    /// How often the command runs, and how long it may take.
    pub check_interval_ms: u64,
    pub check_timeout_ms: u64,
    /// Consecutive failures before the node counts as unhealthy (and
    /// successes before it is healthy again).
    pub failures: u32,
    /// A takeover that fails at a step (lease, listen, VIP, ARP) releases
    /// what it took and is retried this many times, while the node still
    /// has a quorum's contact within one lease (default 2, 0 to 10);
    /// then the node hands the role to a peer.
    pub takeover_retries: u32,
    /// The first retry waits this long, each next one twice as long
    /// (default 100 ms, 10 to 10000).
    pub takeover_backoff_ms: u64,
    /// After giving up, the node refuses the primary role this long, then
    /// may be elected again (default 10000 ms, 1000 to 600000).
    pub takeover_refuse_ms: u64,
}

impl SupervisionSection {
    /// The takeover retry policy of the leadership machine; `lease` is the
    /// kernel lease (a retry needs a quorum heard within it).
    pub fn takeover_policy(
        &self,
        lease: std::time::Duration,
    ) -> crate::machine::leadership::TakeoverPolicy {
        crate::machine::leadership::TakeoverPolicy {
            retries: self.takeover_retries,
            backoff_ms: self.takeover_backoff_ms,
            refuse_ms: self.takeover_refuse_ms,
            lease_ms: lease.as_millis() as u64,
        }
    }
}

impl Default for SupervisionSection {
    fn default() -> Self {
        SupervisionSection {
            link: true,
            check_command: None,
            check_interval_ms: 1000,
            check_timeout_ms: 1000,
            failures: 3,
            takeover_retries: 2,
            takeover_backoff_ms: 100,
            takeover_refuse_ms: 10_000,
        }
    }
}

/// What a service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ServiceKind {
    Kv,
    Echo,
    Counter,
    /// A WebAssembly module (`module = "..."`), by the identity it was
    /// registered under when [`Config::load`] read and compiled it
    /// (`ModuleId([0; 32])` until then: [`Config::parse`] reads no files).
    Wasm(tandem_wasm::registry::ModuleId),
}

impl TryFrom<String> for ServiceKind {
    type Error = String;

    fn try_from(name: String) -> Result<ServiceKind, String> {
        match name.as_str() {
            "kv" => Ok(ServiceKind::Kv),
            "echo" => Ok(ServiceKind::Echo),
            "counter" => Ok(ServiceKind::Counter),
            "wasm" => Ok(ServiceKind::Wasm(tandem_wasm::registry::ModuleId([0; 32]))),
            other => Err(format!(
                "unknown service kind {other:?}: use kv, echo, counter or wasm"
            )),
        }
    }
}

/// `[[service]]`: one replicated service and its VIP.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    pub name: String,
    pub kind: ServiceKind,
    /// The virtual IP with its prefix length, e.g. `198.18.0.100/24`.
    pub vip: String,
    /// The interface that carries the VIP.
    pub interface: String,
    pub port: u16,
    /// W: the bound on the receive window (and shadow TCP's).
    #[serde(default = "default_window_clamp")]
    pub window_clamp: u32,
    /// The NFQUEUE number of this service's capture.
    #[serde(default)]
    pub queue: u16,
    /// New connections (SYNs on unknown tuples) admitted per second on
    /// average; more are dropped before anything else looks at them (the
    /// client retransmits). Default 20,000; 1 to 10,000,000. A CPU guard
    /// only: under a flood, handshakes cost the replicated state nothing
    /// (cookie mode), so this need not be low.
    #[serde(default = "default_syn_rate")]
    pub syn_rate: u64,
    /// The burst the SYN rate allows. Default 2,000; 1 to 10,000,000.
    #[serde(default = "default_syn_burst")]
    pub syn_burst: u64,
    /// Most pending handshakes in shadow TCP's replicated table (a SYN over
    /// it is refused, and its SYN-ACK never leaves). Must be the same on
    /// every node. Default 4,096; 16 to 1,048,576.
    #[serde(default = "default_max_half_open")]
    pub max_half_open: usize,
    /// Cookie mode once this many handshakes are pending (logged half-open
    /// ones plus logged-mode SYNs of the last 0.2 s): new handshakes are then
    /// logged only at the client's third ACK, so spoofed SYNs cannot fill
    /// the table. A handshake in cookie mode that is in flight at a
    /// failover is refused (RST). Spoofed SYNs admitted before cookie mode
    /// stay in the table until `half_open_timeout` (75 s), and a takeover
    /// rebuilds them, so this is kept low. Default 256; 0 (always cookie
    /// mode) to `max_half_open / 2`.
    #[serde(default = "default_syn_cookie_above")]
    pub syn_cookie_above: usize,
    /// Cookie-mode handshakes the primary remembers between SYN and third
    /// ACK (local memory, about 300 bytes each; the oldest is evicted, and
    /// its ACK, if it ever comes, gets a RST). Default 16,384; 16 to
    /// 1,048,576.
    #[serde(default = "default_syn_cookie_table")]
    pub syn_cookie_table: usize,
    /// RSTs sent per second (bursts of the same size) to client packets
    /// that match no connection, as the kernel would answer them. Default
    /// 1,000; 1 to 1,000,000.
    #[serde(default = "default_unknown_rst_rate")]
    pub unknown_rst_rate: u64,
    /// Hard cap on one connection's queued output (sent or not, not yet
    /// acknowledged), in bytes; a connection whose replies would pass it is
    /// reset (the client sees a RST) and the rest of its input in that log
    /// entry is discarded. Default 32 MiB ([`DEFAULT_OUTPUT_CAP`]); at
    /// least 64 KiB.
    #[serde(default = "default_output_cap")]
    pub output_cap: u64,
    /// Memory budget of the service group, in accounted bytes (service
    /// data + 4 KiB per connection + queued output, computed from data
    /// sizes). Over it, kv answers writes with `-OOM command not allowed
    /// when used memory > 'maxmemory'.`; reads and deletes still work.
    /// Default 2 GiB ([`DEFAULT_MAX_MEMORY`]); at least 1 MiB.
    #[serde(default = "default_max_memory")]
    pub max_memory: u64,
    /// Most input bytes one connection may have buffered unparsed (an
    /// unfinished request or a pipeline not yet processed); past it kv
    /// replies `-ERR Protocol error: request too large` and closes the
    /// connection. Default 32 MiB ([`DEFAULT_MAX_REQUEST`]); at least
    /// `max_value`.
    #[serde(default = "default_max_request")]
    pub max_request: u64,
    /// Largest single argument of a request (a Redis bulk string); past it
    /// kv replies `-ERR Protocol error: invalid bulk length` and closes the
    /// connection. Default 16 MiB ([`DEFAULT_MAX_VALUE`]); at least 1 KiB.
    #[serde(default = "default_max_value")]
    pub max_value: u64,
    /// Most connections shadow TCP tracks (half-open, open and TIME_WAIT);
    /// a SYN beyond it is dropped (the client's connect times out or is
    /// retried). Default 65,536; 16 to 1,048,576.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// `kind = "wasm"` only: the WebAssembly module to run (a core module
    /// built for the `tandem:service` world, e.g. with the tandem-guest
    /// SDK; docs/writing-a-service.md). A relative path is taken from the
    /// config file's directory. Every replica must run the same bytes: the
    /// module's SHA-256 shows in `tandem status` as the kind
    /// (`wasm:<first 8 bytes>`) and a snapshot of another module is refused.
    #[serde(default)]
    pub module: Option<PathBuf>,
    /// `kind = "wasm"`: fuel (instructions, roughly) one event may use; an
    /// event that needs more is rolled back and its connection reset.
    /// Default 10,000,000; 10,000 to 10^12. Must be the same on every node.
    #[serde(default = "default_wasm_fuel_per_event")]
    pub wasm_fuel_per_event: u64,
    /// `kind = "wasm"`: most linear memory of the instance, in bytes; an
    /// event whose allocation would pass it is rolled back and its
    /// connection reset. Default 64 MiB; 1 MiB to 4 GiB. Same on every node.
    #[serde(default = "default_wasm_max_memory")]
    pub wasm_max_memory: u64,
    /// `kind = "wasm"`: the wasm stack, in bytes (deeper recursion traps).
    /// Default 512 KiB; 64 KiB to 8 MiB. Same on every node.
    #[serde(default = "default_wasm_max_stack")]
    pub wasm_max_stack: usize,
    /// `kind = "kv"` only: Redis' `requirepass` — a client must `AUTH`
    /// with it before any other command (`-NOAUTH` otherwise; compared in
    /// constant time). Must be the same on every node: it is the service's
    /// initial state, and travels in snapshots; `CONFIG SET requirepass`
    /// changes it later, through the log. Keep the config file private
    /// (mode 0600), as redis.conf. Default: none.
    #[serde(default)]
    pub requirepass: Option<String>,
}

fn default_wasm_fuel_per_event() -> u64 {
    tandem_wasm::DEFAULT_FUEL_PER_EVENT
}

fn default_wasm_max_memory() -> u64 {
    tandem_wasm::DEFAULT_MAX_MEMORY
}

fn default_wasm_max_stack() -> usize {
    tandem_wasm::DEFAULT_MAX_STACK
}

fn default_syn_rate() -> u64 {
    20_000
}

fn default_syn_burst() -> u64 {
    2_000
}

fn default_max_half_open() -> usize {
    4_096
}

fn default_syn_cookie_above() -> usize {
    256
}

fn default_syn_cookie_table() -> usize {
    16_384
}

fn default_unknown_rst_rate() -> u64 {
    1_000
}

fn default_output_cap() -> u64 {
    DEFAULT_OUTPUT_CAP
}

fn default_max_memory() -> u64 {
    DEFAULT_MAX_MEMORY
}

fn default_max_request() -> u64 {
    DEFAULT_MAX_REQUEST
}

fn default_max_value() -> u64 {
    DEFAULT_MAX_VALUE
}

fn default_max_connections() -> usize {
    ShadowConfig::default().max_connections
}

fn default_window_clamp() -> u32 {
    256 * 1024
}

impl ServiceSection {
    /// The bounds the service group applies (valid after [`Config::parse`]).
    /// What the service takes at construction (see
    /// [`crate::services::ServiceOptions`]).
    pub fn service_options(&self) -> crate::services::ServiceOptions {
        crate::services::ServiceOptions {
            requirepass: self.requirepass.clone(),
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            output_cap: self.output_cap,
            max_memory: self.max_memory,
            max_request: self.max_request,
            max_value: self.max_value,
        }
    }

    /// Shadow TCP's parameters: the window clamp and the connection bound.
    pub fn shadow_config(&self) -> ShadowConfig {
        ShadowConfig {
            max_connections: self.max_connections,
            max_half_open: self.max_half_open,
            ..ShadowConfig::new(self.window_clamp)
        }
    }

    /// The wasm bounds (`wasm_*` fields).
    pub fn wasm_config(&self) -> tandem_wasm::WasmConfig {
        tandem_wasm::WasmConfig {
            fuel_per_event: self.wasm_fuel_per_event,
            max_memory: self.wasm_max_memory,
            max_stack: self.wasm_max_stack,
        }
    }

    /// The VIP and its prefix length (valid after [`Config::parse`]).
    pub fn vip(&self) -> (Ipv4Addr, u8) {
        parse_cidr(&self.vip).unwrap_or((Ipv4Addr::UNSPECIFIED, 0))
    }
}

fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = text.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    (prefix <= 32).then_some((addr, prefix))
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
            path: path.to_path_buf(),
            reason: err.to_string(),
        })?;
        let mut config = Config::parse(&text).map_err(|err| match err {
            ConfigError::Syntax { reason, .. } => ConfigError::Syntax {
                path: path.to_path_buf(),
                reason,
            },
            other => other,
        })?;
        config.load_wasm_modules(path.parent().unwrap_or(Path::new(".")))?;
        Ok(config)
    }

    /// Reads and compiles each `kind = "wasm"` service's module (relative
    /// paths from `base`), registers it with tandem_wasm's registry and
    /// records its identity in the kind.
    pub fn load_wasm_modules(&mut self, base: &Path) -> Result<(), ConfigError> {
        for (i, service) in self.services.iter_mut().enumerate() {
            if !matches!(service.kind, ServiceKind::Wasm(_)) {
                continue;
            }
            let Some(module) = &service.module else {
                continue; // refused by validate
            };
            let path = base.join(module);
            let bytes = std::fs::read(&path).map_err(|err| ConfigError::Read {
                path: path.clone(),
                reason: err.to_string(),
            })?;
            let loaded =
                tandem_wasm::LoadedModule::load(&bytes, service.wasm_config()).map_err(|err| {
                    invalid(
                        format!("service[{i}].module"),
                        format!("{}: {err}", path.display()),
                        "build it for the tandem:service world (docs/writing-a-service.md)",
                    )
                })?;
            tracing::info!(
                module = %path.display(),
                sha256 = %tandem_wasm::registry::hex(&loaded.hash()),
                bytes = loaded.size(),
                "wasm module loaded"
            );
            service.kind = ServiceKind::Wasm(tandem_wasm::registry::register(loaded));
        }
        Ok(())
    }

    /// Parses and validates configuration text (files are not checked:
    /// see [`Config::check_files`]).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|err| ConfigError::Syntax {
            path: PathBuf::from("<config>"),
            reason: err.to_string().trim().to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        // Members: unique slots and addresses, this node among them.
        if self.cluster.members.is_empty() {
            return Err(invalid(
                "cluster.members",
                "no members",
                "list every voting member, this node included (3 is the usual size)",
            ));
        }
        let mut slots = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for (i, member) in self.cluster.members.iter().enumerate() {
            if member.slot == 0 {
                return Err(invalid(
                    format!("cluster.members[{i}].slot"),
                    "slot 0 is reserved",
                    "number members from 1",
                ));
            }
            if !slots.insert(member.slot) {
                return Err(invalid(
                    format!("cluster.members[{i}].slot"),
                    format!("slot {} appears twice", member.slot),
                    "give every member its own slot",
                ));
            }
            if !addrs.insert(member.addr) {
                return Err(invalid(
                    format!("cluster.members[{i}].addr"),
                    format!("{} appears twice", member.addr),
                    "give every member its own replication address",
                ));
            }
        }
        if !slots.contains(&self.node.slot) {
            return Err(invalid(
                "node.slot",
                format!("slot {} is not among cluster.members", self.node.slot),
                format!(
                    "use one of {:?}, or add this node to cluster.members",
                    slots
                ),
            ));
        }
        if self.cluster.members.len().is_multiple_of(2) {
            return Err(invalid(
                "cluster.members",
                format!(
                    "{} voters cannot tolerate more failures than {}",
                    self.cluster.members.len(),
                    self.cluster.members.len() - 1
                ),
                "use an odd number of members (3 or 5)",
            ));
        }

        // Raft timing.
        let raft = &self.raft;
        if !(1..=1000).contains(&raft.tick_ms) {
            return Err(invalid(
                "raft.tick_ms",
                format!("{} ms is out of range", raft.tick_ms),
                "use 1 to 1000 (10 is the default)",
            ));
        }
        if raft.heartbeat_ticks == 0 {
            return Err(invalid(
                "raft.heartbeat_ticks",
                "0 ticks",
                "use at least 1 (3 is the default)",
            ));
        }
        if raft.election_ticks < raft.heartbeat_ticks * 3 {
            return Err(invalid(
                "raft.election_ticks",
                format!(
                    "{} ticks is less than three heartbeats ({})",
                    raft.election_ticks,
                    raft.heartbeat_ticks * 3
                ),
                "make the election timeout at least 3 heartbeats, or followers start elections while the leader is healthy",
            ));
        }

        let snap = &self.snapshot;
        if !(1..=16 << 20).contains(&snap.chunk_bytes) {
            return Err(invalid(
                "snapshot.chunk_bytes",
                format!("{} bytes is out of range", snap.chunk_bytes),
                "use 1 to 16777216 (1048576 is the default)",
            ));
        }
        if !(1..=1024).contains(&snap.window_chunks) {
            return Err(invalid(
                "snapshot.window_chunks",
                format!("{} is out of range", snap.window_chunks),
                "use 1 to 1024 (8 is the default)",
            ));
        }
        if snap.max_bytes < 1 << 20 {
            return Err(invalid(
                "snapshot.max_bytes",
                format!("{} bytes is less than 1 MiB", snap.max_bytes),
                "use at least 1048576 (4294967296 is the default); a node refuses larger snapshots",
            ));
        }

        let sup = &self.supervision;
        if sup
            .check_command
            .as_deref()
            .is_some_and(|c| c.trim().is_empty())
        {
            return Err(invalid(
                "supervision.check_command",
                "empty command",
                "give a shell command whose exit status 0 means healthy, or leave it out",
            ));
        }
        if !(100..=60_000).contains(&sup.check_interval_ms) {
            return Err(invalid(
                "supervision.check_interval_ms",
                format!("{} ms is out of range", sup.check_interval_ms),
                "use 100 to 60000 (1000 is the default)",
            ));
        }
        if !(50..=60_000).contains(&sup.check_timeout_ms) {
            return Err(invalid(
                "supervision.check_timeout_ms",
                format!("{} ms is out of range", sup.check_timeout_ms),
                "use 50 to 60000 (1000 is the default)",
            ));
        }
        if !(1..=100).contains(&sup.failures) {
            return Err(invalid(
                "supervision.failures",
                format!("{} is out of range", sup.failures),
                "use 1 to 100 (3 is the default)",
            ));
        }
        if sup.takeover_retries > 10 {
            return Err(invalid(
                "supervision.takeover_retries",
                format!("{} is out of range", sup.takeover_retries),
                "use 0 to 10 (2 is the default)",
            ));
        }
        if !(10..=10_000).contains(&sup.takeover_backoff_ms) {
            return Err(invalid(
                "supervision.takeover_backoff_ms",
                format!("{} ms is out of range", sup.takeover_backoff_ms),
                "use 10 to 10000 (100 is the default)",
            ));
        }
        if !(1_000..=600_000).contains(&sup.takeover_refuse_ms) {
            return Err(invalid(
                "supervision.takeover_refuse_ms",
                format!("{} ms is out of range", sup.takeover_refuse_ms),
                "use 1000 to 600000 (10000 is the default)",
            ));
        }

        // Services.
        if self.services.is_empty() {
            return Err(invalid(
                "service",
                "no service",
                "add a [[service]] section",
            ));
        }
        let mut names = BTreeSet::new();
        let mut vips = BTreeSet::new();
        let mut queues = BTreeSet::new();
        for (i, service) in self.services.iter().enumerate() {
            let field = |name: &str| format!("service[{i}].{name}");
            if service.name.is_empty()
                || !service
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(
                    field("name"),
                    format!("{:?} is not a usable name", service.name),
                    "use letters, digits, '-' and '_'",
                ));
            }
            if !names.insert(service.name.clone()) {
                return Err(invalid(
                    field("name"),
                    format!("service {:?} is defined twice", service.name),
                    "give every service its own name",
                ));
            }
            let Some((vip, _)) = parse_cidr(&service.vip) else {
                return Err(invalid(
                    field("vip"),
                    format!(
                        "{:?} is not an IPv4 address with a prefix length",
                        service.vip
                    ),
                    "write it as ADDRESS/PREFIX, e.g. \"198.18.0.100/24\"",
                ));
            };
            if vip.is_unspecified() || vip.is_broadcast() || vip.is_multicast() || vip.is_loopback()
            {
                return Err(invalid(
                    field("vip"),
                    format!("{vip} cannot be a service address"),
                    "use a unicast address of the LAN the members share",
                ));
            }
            if !vips.insert(vip) {
                return Err(invalid(
                    field("vip"),
                    format!("{vip} is used by another service"),
                    "every service has its own VIP (each is its own replica group)",
                ));
            }
            if service.interface.is_empty() || service.interface.len() > 15 {
                return Err(invalid(
                    field("interface"),
                    format!("{:?} is not an interface name", service.interface),
                    "name the interface that carries the VIP, e.g. \"eth0\"",
                ));
            }
            if service.port == 0 {
                return Err(invalid(
                    field("port"),
                    "port 0",
                    "use the service's TCP port, 1-65535",
                ));
            }
            if !(64 * 1024..=64 * 1024 * 1024).contains(&service.window_clamp) {
                return Err(invalid(
                    field("window_clamp"),
                    format!("{} bytes is out of range", service.window_clamp),
                    "use 65536 to 67108864 (262144 is the default)",
                ));
            }
            let ranges: [(&str, u64, u64, u64, &str); 5] = [
                ("syn_rate", service.syn_rate, 1, 10_000_000, "20000"),
                ("syn_burst", service.syn_burst, 1, 10_000_000, "2000"),
                (
                    "max_half_open",
                    service.max_half_open as u64,
                    16,
                    1_048_576,
                    "4096",
                ),
                (
                    "syn_cookie_table",
                    service.syn_cookie_table as u64,
                    16,
                    1_048_576,
                    "16384",
                ),
                (
                    "unknown_rst_rate",
                    service.unknown_rst_rate,
                    1,
                    1_000_000,
                    "1000",
                ),
            ];
            for (name, value, low, high, default) in ranges {
                if !(low..=high).contains(&value) {
                    return Err(invalid(
                        field(name),
                        format!("{value} is out of range"),
                        format!("use {low} to {high} ({default} is the default)"),
                    ));
                }
            }
            if service.syn_cookie_above > service.max_half_open / 2 {
                return Err(invalid(
                    field("syn_cookie_above"),
                    format!(
                        "{} is above half of max_half_open ({})",
                        service.syn_cookie_above, service.max_half_open
                    ),
                    "use at most max_half_open / 2 (256 is the default), so that handshakes in flight never fill the table",
                ));
            }
            if let Err(problem) = service.limits().validate() {
                let name = problem.split(':').next().unwrap_or("limits").to_string();
                let name = name.split(' ').next().unwrap_or("limits").to_string();
                return Err(invalid(
                    field(&name),
                    problem,
                    "see the defaults in the documentation of [[service]]",
                ));
            }
            if !(16..=1 << 20).contains(&service.max_connections) {
                return Err(invalid(
                    field("max_connections"),
                    format!("{} is out of range", service.max_connections),
                    "use 16 to 1048576 (65536 is the default)",
                ));
            }
            let wasm = matches!(service.kind, ServiceKind::Wasm(_));
            if wasm != service.module.is_some() {
                return Err(invalid(
                    field("module"),
                    if wasm {
                        "kind = \"wasm\" needs a module"
                    } else {
                        "only kind = \"wasm\" takes a module"
                    },
                    "give the path of the .wasm file with kind = \"wasm\", and only then",
                ));
            }
            if let Some(pass) = &service.requirepass {
                if service.kind != ServiceKind::Kv {
                    return Err(invalid(
                        field("requirepass"),
                        "only kind = \"kv\" takes a password",
                        "remove requirepass from this service",
                    ));
                }
                if pass.is_empty() {
                    return Err(invalid(
                        field("requirepass"),
                        "the password is empty",
                        "leave requirepass out for no password",
                    ));
                }
            }
            if wasm {
                service.wasm_config().validate().map_err(|problem| {
                    invalid(
                        field("wasm"),
                        problem,
                        "see the defaults in docs/writing-a-service.md",
                    )
                })?;
            }
            if !queues.insert(service.queue) {
                return Err(invalid(
                    field("queue"),
                    format!("NFQUEUE {} is used by another service", service.queue),
                    "give every service its own queue number",
                ));
            }
        }
        if self.services.len() > 1 {
            // Each service is its own replica group with its own Raft log;
            // one daemon runs one of them.
            return Err(invalid(
                "service",
                format!("{} services in one config", self.services.len()),
                "run one `tandem node` per service, each with its own config, \
                 replication addresses and admin socket",
            ));
        }
        Ok(())
    }

    /// Checks the files the configuration names: the cluster key exists,
    /// holds at least 32 bytes and is not readable by other users.
    pub fn check_files(&self) -> Result<Vec<u8>, ConfigError> {
        check_key_file(&self.cluster.key_file, "cluster.key_file")
    }

    /// Reads and checks the key files: the key to send with and, if
    /// `rotation_key_file` exists, the second key to accept.
    pub fn load_keys(&self) -> Result<Keyring, ConfigError> {
        let to_key = |secret: Vec<u8>, field: &'static str| {
            ClusterKey::from_secret(&secret)
                .map_err(|err| invalid(field, err.to_string(), "use at least 32 random bytes"))
        };
        let current = to_key(self.check_files()?, "cluster.key_file")?;
        let other = match &self.cluster.rotation_key_file {
            Some(path) if path.exists() => Some(to_key(
                check_key_file(path, "cluster.rotation_key_file")?,
                "cluster.rotation_key_file",
            )?),
            _ => None,
        };
        let keys = Keyring::new(current, other);
        Ok(if self.cluster.unencrypted_replication_for_benchmarks {
            keys.unencrypted_for_benchmarks()
        } else {
            keys
        })
    }

    /// This node's own member entry.
    pub fn me(&self) -> &Member {
        self.cluster
            .members
            .iter()
            .find(|m| m.slot == self.node.slot)
            .expect("validated: node.slot is a member")
    }
}

/// Reads a key file, checking it exists, is not readable by other users and
/// holds at least 32 bytes; `field` names it in errors.
fn check_key_file(path: &Path, field: &'static str) -> Result<Vec<u8>, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|err| {
        invalid(
            field,
            format!("cannot read {}: {err}", path.display()),
            "create it, e.g. `head -c 32 /dev/urandom > FILE && chmod 600 FILE`, and copy it to every member",
        )
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(invalid(
            field,
            format!(
                "{} is readable by others (mode {:o})",
                path.display(),
                meta.permissions().mode() & 0o777
            ),
            "`chmod 600` it: whoever reads the key can forge replication messages",
        ));
    }
    let key = std::fs::read(path).map_err(|err| {
        invalid(
            field,
            format!("cannot read {}: {err}", path.display()),
            "check the file and its permissions",
        )
    })?;
    if key.len() < 32 {
        return Err(invalid(
            field,
            format!("{} holds only {} bytes", path.display(), key.len()),
            "use at least 32 random bytes",
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[node]
slot = 1
data_dir = "/var/lib/tandem/node1"
admin_socket = "/run/tandem/node1.sock"

[cluster]
key_file = "/etc/tandem/cluster.key"
members = [
  { slot = 1, addr = "198.18.0.11:7100" },
  { slot = 2, addr = "198.18.0.12:7100" },
  { slot = 3, addr = "198.18.0.13:7100" },
]

[[service]]
name = "kv"
kind = "kv"
vip = "198.18.0.100/24"
interface = "eth0"
port = 6379
"#;

    #[test]
    fn a_good_config_parses_with_defaults() {
        let config = Config::parse(GOOD).unwrap();
        assert_eq!(config.raft, RaftSection::default());
        assert_eq!(
            config.services[0].vip(),
            (Ipv4Addr::new(198, 18, 0, 100), 24)
        );
        assert_eq!(config.services[0].window_clamp, 256 * 1024);
        let service = &config.services[0];
        assert_eq!(
            (
                service.syn_rate,
                service.syn_burst,
                service.max_half_open,
                service.syn_cookie_above,
                service.syn_cookie_table,
                service.unknown_rst_rate
            ),
            (20_000, 2_000, 4_096, 256, 16_384, 1_000)
        );
        assert_eq!(config.services[0].limits(), Limits::default());
        assert_eq!(config.services[0].output_cap, 32 << 20);
        assert_eq!(config.services[0].max_memory, 2 << 30);
        assert_eq!(config.services[0].shadow_config().max_connections, 65_536);
        assert_eq!(config.me().addr, "198.18.0.11:7100".parse().unwrap());
    }

    /// Each broken config is refused with a message naming the field.
    #[test]
    fn bad_configs_name_the_field_and_the_fix() {
        let cases: &[(&str, &str, &str)] = &[
            ("slot = 1", "slot = 4", "node.slot"),
            ("port = 6379", "port = 0", "service[0].port"),
            (
                "[[service]]",
                "[supervision]\ncheck_interval_ms = 5\n[[service]]",
                "supervision.check_interval_ms",
            ),
            (
                "[[service]]",
                "[supervision]\ncheck_command = \" \"\n[[service]]",
                "supervision.check_command",
            ),
            (
                "[[service]]",
                "[supervision]\ntakeover_backoff_ms = 0\n[[service]]",
                "supervision.takeover_backoff_ms",
            ),
            (
                "[[service]]",
                "[supervision]\ntakeover_retries = 11\n[[service]]",
                "supervision.takeover_retries",
            ),
            ("port = 6379", "port = 70000", "port"),
            ("198.18.0.100/24", "198.18.0.100", "service[0].vip"),
            ("198.18.0.100/24", "127.0.0.1/8", "service[0].vip"),
            ("198.18.0.100/24", "198.18.0.100/33", "service[0].vip"),
            ("kind = \"kv\"", "kind = \"memcached\"", "kind"),
            ("name = \"kv\"", "name = \"k v\"", "service[0].name"),
            (
                "interface = \"eth0\"",
                "interface = \"\"",
                "service[0].interface",
            ),
            (
                "{ slot = 3, addr = \"198.18.0.13:7100\" },",
                "",
                "cluster.members",
            ),
            (
                "{ slot = 3, addr = \"198.18.0.13:7100\" }",
                "{ slot = 2, addr = \"198.18.0.13:7100\" }",
                "cluster.members[2].slot",
            ),
            (
                "198.18.0.13:7100",
                "198.18.0.12:7100",
                "cluster.members[2].addr",
            ),
            (
                "port = 6379",
                "port = 6379\nwindow_clamp = 10",
                "service[0].window_clamp",
            ),
            (
                "port = 6379",
                "port = 6379\noutput_cap = 1000",
                "service[0].output_cap",
            ),
            (
                "port = 6379",
                "port = 6379\nmax_value = 100",
                "service[0].max_value",
            ),
            (
                "port = 6379",
                "port = 6379\nmax_memory = 1000",
                "service[0].max_memory",
            ),
            (
                "port = 6379",
                "port = 6379\nmax_connections = 1",
                "service[0].max_connections",
            ),
            (
                "port = 6379",
                "port = 6379\ncolour = \"blue\"",
                "unknown field `colour`",
            ),
            (
                "port = 6379",
                "port = 6379\nsyn_rate = 0",
                "service[0].syn_rate",
            ),
            (
                "port = 6379",
                "port = 6379\nmax_half_open = 8",
                "service[0].max_half_open",
            ),
            (
                "port = 6379",
                "port = 6379\nmax_half_open = 1000\nsyn_cookie_above = 501",
                "service[0].syn_cookie_above",
            ),
            (
                "port = 6379",
                "port = 6379\nsyn_cookie_table = 2000000",
                "service[0].syn_cookie_table",
            ),
            (
                "port = 6379",
                "port = 6379\nunknown_rst_rate = 0",
                "service[0].unknown_rst_rate",
            ),
            (
                "[cluster]",
                "[raft]\nelection_ticks = 2\n[cluster]",
                "raft.election_ticks",
            ),
            (
                "[cluster]",
                "[raft]\ntick_ms = 0\n[cluster]",
                "raft.tick_ms",
            ),
            (
                "[cluster]",
                "[raft]\nelecton_ticks = 40\n[cluster]",
                "unknown field `electon_ticks`",
            ),
        ];
        for (from, to, expect) in cases {
            assert!(GOOD.contains(from), "case {from:?} does not apply");
            let text = GOOD.replacen(from, to, 1);
            let err = Config::parse(&text).expect_err(&format!("accepted with {to:?}"));
            let message = err.to_string();
            assert!(
                message.contains(expect),
                "{to:?}: {message:?} does not mention {expect:?}"
            );
        }
        let doubled = format!("{GOOD}\n[[service]]\nname = \"kv\"\nkind = \"echo\"\nvip = \"198.18.0.101/24\"\ninterface = \"eth0\"\nport = 7000\nqueue = 1\n");
        assert!(Config::parse(&doubled)
            .unwrap_err()
            .to_string()
            .contains("defined twice"));
        let same_queue = doubled
            .replace(
                "name = \"kv\"\nkind = \"echo\"",
                "name = \"echo\"\nkind = \"echo\"",
            )
            .replace("queue = 1", "queue = 0");
        assert!(Config::parse(&same_queue)
            .unwrap_err()
            .to_string()
            .contains("service[1].queue"));
        let two = doubled.replace(
            "name = \"kv\"\nkind = \"echo\"",
            "name = \"echo\"\nkind = \"echo\"",
        );
        assert!(Config::parse(&two)
            .unwrap_err()
            .to_string()
            .contains("one `tandem node` per service"));
    }

    #[test]
    fn the_key_file_must_be_private_and_long_enough() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tandem-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("cluster.key");
        let mut config = Config::parse(GOOD).unwrap();
        config.cluster.key_file = key.clone();
        assert!(config
            .check_files()
            .unwrap_err()
            .to_string()
            .contains("cannot read"));
        std::fs::write(&key, [7u8; 32]).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(config
            .check_files()
            .unwrap_err()
            .to_string()
            .contains("chmod 600"));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(config.check_files().unwrap(), vec![7u8; 32]);
        std::fs::write(&key, [7u8; 8]).unwrap();
        assert!(config
            .check_files()
            .unwrap_err()
            .to_string()
            .contains("only 8 bytes"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_rotation_key_is_accepted_while_its_file_exists() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tandem-rotation-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (key, rotation) = (dir.join("cluster.key"), dir.join("cluster.key.next"));
        let private = |path: &Path, byte: u8| {
            std::fs::write(path, [byte; 32]).unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        };
        private(&key, 1);
        let text = GOOD.replace(
            "key_file = \"/etc/tandem/cluster.key\"",
            &format!(
                "key_file = {:?}\nrotation_key_file = {:?}",
                key.display().to_string(),
                rotation.display().to_string()
            ),
        );
        let config = Config::parse(&text).unwrap();
        assert_eq!(
            config.cluster.rotation_key_file.as_deref(),
            Some(&*rotation)
        );
        let fp = |b: u8| ClusterKey::from_secret(&[b; 32]).unwrap().fingerprint();
        let names = |k: &Keyring| {
            k.accepted()
                .iter()
                .map(|k| k.fingerprint())
                .collect::<Vec<_>>()
        };
        // No rotation file: one key.
        assert_eq!(names(&config.load_keys().unwrap()), vec![fp(1)]);
        // With it: sends with key_file's, accepts both.
        private(&rotation, 2);
        let keys = config.load_keys().unwrap();
        assert_eq!(keys.current().fingerprint(), fp(1));
        assert_eq!(names(&keys), vec![fp(1), fp(2)]);
        assert!(!keys.is_unencrypted());
        // A rotation file readable by others is refused, naming the field.
        std::fs::set_permissions(&rotation, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = config.load_keys().unwrap_err().to_string();
        assert!(
            err.contains("rotation_key_file") && err.contains("chmod 600"),
            "{err}"
        );
        // The benchmark switch is off unless set.
        let text = text.replace(
            "members = [",
            "unencrypted_replication_for_benchmarks = true\nmembers = [",
        );
        std::fs::remove_file(&rotation).unwrap();
        let config = Config::parse(&text).unwrap();
        assert!(config.load_keys().unwrap().is_unencrypted());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_file_and_bad_syntax_are_reported_with_the_path() {
        let err = Config::load(Path::new("/nonexistent/tandem.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/tandem.toml"));
        let err = Config::parse("[node\nslot = 1").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }));
    }
    #[test]
    fn a_wasm_service_needs_a_module_and_valid_bounds() {
        let wasm = GOOD.replace("kind = \"kv\"", "kind = \"wasm\"");
        let err = Config::parse(&wasm).unwrap_err().to_string();
        assert!(err.contains("service[0].module"), "{err}");
        let with_module = wasm.replace("port = 6379", "port = 6379\nmodule = \"broker.wasm\"");
        let config = Config::parse(&with_module).unwrap();
        assert_eq!(
            config.services[0].wasm_config(),
            tandem_wasm::WasmConfig::default()
        );
        assert!(matches!(config.services[0].kind, ServiceKind::Wasm(_)));
        let err = Config::parse(&with_module.replace(
            "module = \"broker.wasm\"",
            "module = \"broker.wasm\"\nwasm_max_memory = 1000",
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("wasm_max_memory"), "{err}");
        // A password: kv only, never empty.
        let with_pass =
            Config::parse(&GOOD.replace("port = 6379", "port = 6379\nrequirepass = \"s3cret\""))
                .unwrap();
        assert_eq!(
            with_pass.services[0]
                .service_options()
                .requirepass
                .as_deref(),
            Some("s3cret")
        );
        let err = Config::parse(&GOOD.replace("port = 6379", "port = 6379\nrequirepass = \"\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("service[0].requirepass"), "{err}");
        let err = Config::parse(
            &GOOD
                .replace("kind = \"kv\"", "kind = \"echo\"")
                .replace("port = 6379", "port = 6379\nrequirepass = \"x\""),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("only kind = \"kv\""), "{err}");
        // A module on a service of another kind is a mistake too.
        let err = Config::parse(&GOOD.replace("port = 6379", "port = 6379\nmodule = \"x.wasm\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("service[0].module"), "{err}");
    }

    #[test]
    fn loading_a_wasm_config_reads_and_checks_the_module() {
        let dir = std::env::temp_dir().join(format!("tandem-wasm-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = GOOD
            .replace("kind = \"kv\"", "kind = \"wasm\"")
            .replace("port = 6379", "port = 6379\nmodule = \"broker.wasm\"");
        let path = dir.join("node.toml");
        std::fs::write(&path, &text).unwrap();
        // Missing (relative to the config file's directory), then not wasm.
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains("broker.wasm"), "{err}");
        std::fs::write(dir.join("broker.wasm"), b"not wasm").unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("service[0].module") && err.contains("does not compile"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
