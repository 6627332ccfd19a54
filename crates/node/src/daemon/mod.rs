//! The node daemon (`tandem node --config FILE`): one process, one service,
//! one single-threaded event loop.
//!
//! The loop drives everything from readiness events and a 10 ms tick:
//! - the replica (raft-rs behind [`tandem_replica::Replica`]) — ticks,
//!   messages from the transport, proposals, and its `ready` output:
//!   messages out, snapshots in, committed entries to apply;
//! - on every node, committed entries go through the [`ServiceGroup`]
//!   (shadow TCP + the service) in log order;
//! - on the primary only: the capture queue (client packets and SYN-ACKs,
//!   classified, proposed, and released once committed), the listener and
//!   the accepted sockets that carry the service's effects, the VIP, the
//!   lease;
//! - the admin socket (`tandem status`).
//!
//! Becoming primary waits until everything committed before this term is
//! applied (the leader's first entry of its term is the barrier), then
//! listens, captures, takes the lease, adds the VIP and announces it.
//! Stepping down undoes it in the order that keeps clients' connections
//! intact for the next primary: verdicts stop, held packets are dropped
//! (their clients retransmit), the lease and the VIP go, sockets close in
//! repair mode.

mod fence;
/// The kernel lease a primary holds (see `fence`): how long a dead or cut-off
/// primary's kernel may still answer for the VIP.
pub use fence::LEASE;
mod sockets;
mod supervise;
mod takeover;

use crate::admin::{AdminReply, AdminRequest, AdminServer};
use crate::capture::{direction_of, CaptureLoop, Decision};
use crate::config::{Config, ServiceSection};
use crate::group::{Effect, Item, LogEntry, ServiceGroup};
use crate::proposer::{Proposal, Proposer};
use crate::report::{Counters, NodeReport, PeerReport, ServiceReport};
use crate::services;
use crate::transport::{Transport, TransportConfig};
use fence::Fence;
use mio::{Events, Interest, Poll, Token};
use sockets::KernelSockets;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use supervise::Supervisor;
use takeover::{for_restore, handed_over_packet, replay_head, synack_for_replay, Rebuilt, TS_JUMP};
use tandem_core::classify::{Admit, Class, JunkReason, Seen, SynGuard, SynLimiter};
use tandem_core::packet::{facts_of, reset_for, segment_of};
use tandem_core::shadow::{ConnKey, ShadowConfig};
use tandem_replica::{NodeId, Output, ProposalId, Replica, StateRole};
use tandem_sys::capture::{detect_backend, CaptureRules};
use tandem_sys::nfqueue::{NfQueue, QueueConfig, Verdict};

const NFQUEUE_TOKEN: Token = Token(0);
const LISTENER_TOKEN: Token = Token(1);
const TRANSPORT_TOKENS: usize = 1 << 20;
const ADMIN_TOKENS: usize = 2 << 20;
const SOCKET_TOKENS: usize = 1 << 24;

/// Largest entry the proposer builds (a packet bigger than this, a GSO
/// super-packet, travels alone).
const MAX_ENTRY_BYTES: usize = 256 * 1024;
/// Pure ACKs and SYNs (released at once) wait at most this long to be logged.
const LAZY_LOG_MS: u64 = 5;
/// A snapshot every this many applied payloads, or this often if anything
/// was applied since the last one.
const SNAPSHOT_EVERY_PAYLOADS: u64 = 20_000;
const SNAPSHOT_EVERY: Duration = Duration::from_secs(30);
/// How often the metrics are brought up to date.
const METRICS_EVERY: Duration = Duration::from_secs(1);
/// How long a deposed primary keeps the (silent) VIP, capturing what
/// clients still send it for the next primary.
const VIP_LINGER: Duration = Duration::from_millis(1500);
/// How long a deposed primary keeps uncommitted packets for the next one.
const HANDOVER_WAIT: Duration = Duration::from_secs(2);
/// Up to this many connections are rebuilt on the loop's own thread at a
/// takeover (a millisecond or two); more go to two builder threads while
/// the loop keeps sending heartbeats.
const REBUILD_INLINE: usize = 64;

/// At most this many ticks are given at once after the loop was held up.
const MAX_CATCH_UP_TICKS: u32 = 3;
/// A planned migration goes only to a clone at most this many entries
/// behind (raft-rs would make it catch up first anyway; this keeps the
/// pause short and the answer honest).
const MAX_TRANSFER_LAG: u64 = 1_000;

/// A proposed cookie-mode handshake is forgotten by the capture path once
/// shadow TCP knows it, or after this long (its entry was lost).
const COOKIE_PROPOSED_TTL_MS: u64 = 5_000;

/// What to check about a held handshake packet once its entry is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HandshakeGuard {
    /// A SYN-ACK: shadow TCP must hold a handshake with this server ISN.
    SynAck { key: ConnKey, isn: u32 },
    /// The third ACK of a cookie-mode handshake: shadow TCP must have
    /// opened the connection; if not, `reset` goes to the client.
    ThirdAck {
        key: ConnKey,
        reset: Option<Vec<u8>>,
    },
    /// A later packet of such a handshake, captured before it was applied:
    /// shadow TCP must know the connection.
    Follows {
        key: ConnKey,
        reset: Option<Vec<u8>>,
    },
}

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("incarnation file {path}: {source}")]
    Incarnation {
        path: String,
        source: std::io::Error,
    },
    #[error("replica: {0}")]
    Replica(#[from] tandem_replica::InitError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("fence (guard rules and lease): {0}")]
    Guard(#[from] tandem_sys::guard::GuardError),
    #[error("capture rules: {0}")]
    Capture(#[from] tandem_sys::capture::CaptureError),
    #[error("capture queue: {0}")]
    Queue(#[from] tandem_sys::nfqueue::NfQueueError),
    #[error("addresses: {0}")]
    Addr(#[from] tandem_sys::addr::AddrError),
    #[error("gratuitous ARP: {0}")]
    Arp(#[from] tandem_sys::arp::ArpError),
    #[error("admin socket: {0}")]
    Admin(#[from] crate::admin::AdminError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// A snapshot being encoded off the event loop.
struct SnapshotJob {
    index: u64,
    payloads: u64,
    copied_at: Instant,
    encoded: std::sync::mpsc::Receiver<Vec<u8>>,
}

/// Where this node stands as a primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Serving {
    /// A clone: applies, serves nothing.
    No,
    /// Elected; waiting until the log up to `barrier` is applied.
    Awaiting { barrier: u64 },
    /// Holds the VIP and serves.
    Yes,
}

/// The whole daemon state, owned by the loop.
struct Daemon {
    config: Config,
    service: ServiceSection,
    vip: Ipv4Addr,
    prefix_len: u8,
    me: NodeId,
    started: Instant,
    /// Where Raft's hard state is saved (`Output::hard_state`).
    hard_state_path: std::path::PathBuf,
    /// An error that must stop the daemon, found where no error can be
    /// returned (saving the hard state inside `handle_ready`).
    fatal: Option<DaemonError>,
    poll: Poll,
    replica: Replica,
    transport: Transport,
    admin: AdminServer,
    group: ServiceGroup,
    shadow_config: ShadowConfig,
    capture: CaptureLoop,
    rules: CaptureRules,
    proposer: Proposer,
    /// The SYN rate limit, the logged/cookie mode choice and the cookie
    /// table (`tandem_core::cookie`): the SYN-flood defence.
    syn_guard: SynGuard,
    /// Held packets checked against shadow TCP once their entry is applied
    /// (never let a SYN-ACK out, or a third ACK in, for a handshake the log
    /// does not know), by NFQUEUE id.
    guarded: BTreeMap<u32, HandshakeGuard>,
    /// RSTs for client packets no connection matches (the kernel's answer),
    /// at most `unknown_rst_rate` per second.
    rst_limiter: SynLimiter,
    /// NFQUEUE ids held until each of our proposals commits.
    held: BTreeMap<ProposalId, Vec<u32>>,
    sockets: KernelSockets,
    fence: Fence,
    netlink: tandem_sys::addr::Netlink,
    interface: tandem_sys::addr::Interface,
    garp: tandem_sys::arp::GarpSender,
    /// Timers the service set, by id: (generation, due at log ms). Tracked
    /// on every replica so that a new primary knows them.
    timers: BTreeMap<u64, (u64, u64)>,
    serving: Serving,
    /// Drained: never stays primary (`tandem drain`).
    draining: bool,
    /// Replication bodies go in clear (benchmarks only; fixed at start).
    unencrypted: bool,
    supervisor: Supervisor,
    was_healthy: bool,
    last_handover: Option<Instant>,
    last_handover_to: Option<u16>,
    /// The logged SYN-ACK of each handshake still in progress, and the
    /// handshakes this node rebuilt as ESTABLISHED at takeover: a client
    /// that never got the SYN-ACK retransmits its SYN, and the logged
    /// SYN-ACK is replayed to it from a raw socket (docs/architecture.md §3.5).
    synacks: BTreeMap<ConnKey, Vec<u8>>,
    restored_handshakes: std::collections::BTreeSet<ConnKey>,
    raw: Option<tandem_sys::rawsock::RawIpv4Sender>,
    metrics: Arc<crate::metrics::Metrics>,
    _metrics_server: Option<crate::metrics::MetricsServer>,
    last_metrics: Instant,
    /// Our proposals not yet committed, as encoded entries: if leadership
    /// goes, they are handed to the next primary with [`Replica::forward`]
    /// (with what could not be proposed during a handover), so that their
    /// clients need not retransmit.
    uncommitted: BTreeMap<ProposalId, Vec<u8>>,
    handover: Vec<Vec<u8>>,
    handover_since: Option<Instant>,
    /// A deposed primary removes the VIP at this instant.
    vip_remove_at: Option<Instant>,
    /// When this node last started handing its role over on purpose.
    planned_handover_at: Option<Instant>,
    /// When each of our pending proposals was made (commit latency).
    proposed_at: BTreeMap<ProposalId, Instant>,
    /// When this node last became leader (a takeover's duration counts
    /// from there), and a planned migration it started: (target, when).
    elected_at: Option<Instant>,
    migrating: Option<(u16, Instant)>,
    counters: Counters,
    /// The unique, increasing index under which each payload is applied.
    payloads_applied: u64,
    payloads_at_snapshot: u64,
    last_snapshot: Option<Instant>,
    snapshot_index: u64,
    want_snapshot_now: bool,
    /// A snapshot copied from the state and being encoded on another
    /// thread (`maybe_snapshot`).
    snapshot_job: Option<SnapshotJob>,
    /// Set when a snapshot from the leader could not be installed: raft has
    /// already replaced the log with it, so this node's state no longer
    /// matches the log. It stops applying, refuses leadership and reports
    /// itself unhealthy until restarted (as a new incarnation it is sent
    /// the state again).
    state_lost: Option<String>,
    last_sweep: Instant,
    verdicts: Vec<(u32, Verdict)>,
    /// A turn of the loop longer than this (half the shortest election
    /// timeout) is logged: it risks a needless election.
    held_up_warning: Duration,
}

/// Runs the node until `stop` is set (SIGTERM/SIGINT): reads and checks the
/// config, fences, joins the group, and serves.
pub fn run(config: Config, stop: Arc<AtomicBool>) -> Result<(), DaemonError> {
    let mut daemon = Daemon::start(config)?;
    let result = daemon.run_loop(&stop);
    daemon.shutdown();
    result
}

impl Daemon {
    fn start(config: Config) -> Result<Daemon, DaemonError> {
        let keys = config.load_keys()?;
        let unencrypted = keys.is_unencrypted();
        let service = config.services[0].clone();
        let (vip, prefix_len) = service.vip();

        // Fence first (docs/architecture.md §3.8): guard on, no lease, no VIP, no capture.
        let fence = Fence::install(vip, service.port)?;
        let netlink = tandem_sys::addr::Netlink::open()?;
        let interface = netlink.interface(&service.interface)?;
        if netlink.has_address(&interface, IpAddr::V4(vip))? {
            tracing::warn!(%vip, "the VIP was on this node at start-up; removed");
            netlink.remove_address(&interface, IpAddr::V4(vip), prefix_len)?;
        }
        // Orphans of an earlier daemon on this node (it crashed: the guard
        // kept their FINs in) hold the 4-tuples a takeover must rebuild.
        clear_leftovers(vip, service.port);
        // Capture is installed once, on every node: packets to the VIP only
        // arrive where the VIP is, and a takeover saves an iptables run.
        let garp = tandem_sys::arp::GarpSender::open(&service.interface)?;

        // Identity: a new incarnation at every start, on disk before anything
        // is sent.
        std::fs::create_dir_all(&config.node.data_dir).map_err(io_err(format!(
            "creating {}",
            config.node.data_dir.display()
        )))?;
        let incarnation_path = config.node.data_dir.join("incarnation");
        let incarnation =
            tandem_replica::bump_incarnation(&incarnation_path).map_err(|source| {
                DaemonError::Incarnation {
                    path: incarnation_path.display().to_string(),
                    source,
                }
            })?;
        let me = NodeId::new(config.node.slot, incarnation);
        let slots: Vec<u16> = config.cluster.members.iter().map(|m| m.slot).collect();
        let mut replica_config = tandem_replica::Config::new(me, slots);
        // Raft's term and vote survive restarts (docs/membership.md).
        let hard_state_path = config.node.data_dir.join("raft-state");
        replica_config.hard_state = tandem_replica::load_hard_state(&hard_state_path)
            .map_err(io_err(format!("reading {}", hard_state_path.display())))?
            .unwrap_or_default();
        replica_config.election_tick = config.raft.election_ticks as usize;
        replica_config.heartbeat_tick = config.raft.heartbeat_ticks as usize;
        replica_config.join_retry_ticks = config.raft.election_ticks as usize;
        replica_config.snapshot_stream = config.snapshot.stream_config();
        // Seeded per process so that two nodes never time out in lockstep.
        replica_config.seed = me.raft_id() ^ u64::from(std::process::id()).rotate_left(32);
        let replica = Replica::new(replica_config, keys.clone())?;

        let poll = Poll::new().map_err(io_err("creating the event loop"))?;
        let registry = poll.registry();
        let peers: BTreeMap<u16, SocketAddr> = config
            .cluster
            .members
            .iter()
            .filter(|m| m.slot != config.node.slot)
            .map(|m| (m.slot, m.addr))
            .collect();
        let listen = config.me().addr;
        if keys.is_unencrypted() {
            tracing::warn!(
                "!!! cluster.unencrypted_replication_for_benchmarks is on: replication is NOT \
                 encrypted; every client byte crosses the node network in clear. For \
                 benchmarks only: never on a network anyone else can see. !!!"
            );
        }
        tracing::info!(
            keys = %fingerprints(&keys),
            "replication keys loaded (fingerprints; the first is sent with)"
        );
        let transport = Transport::bind(
            TransportConfig::new(listen, peers),
            me,
            keys,
            registry,
            TRANSPORT_TOKENS,
        )
        .map_err(io_err(format!("replication address {listen}")))?;
        let admin = AdminServer::bind(&config.node.admin_socket, registry, ADMIN_TOKENS)?;

        let queue = NfQueue::bind(service.queue, QueueConfig::default())?;
        let rules = CaptureRules::new(None, vip, &[service.port], service.queue)?;
        rules.install(detect_backend())?;
        queue
            .set_nonblocking(true)
            .map_err(io_err("capture queue"))?;
        registry
            .register(
                &mut mio::unix::SourceFd(&queue.as_fd().as_raw_fd()),
                NFQUEUE_TOKEN,
                Interest::READABLE,
            )
            .map_err(io_err("watching the capture queue"))?;

        let shadow_config: ShadowConfig = service.shadow_config();
        let group = ServiceGroup::new(
            services::fresh(service.kind),
            shadow_config,
            group_seed(&service.name),
        )
        .with_limits(service.limits());
        tracing::info!(
            slot = me.slot,
            incarnation,
            service = %service.name,
            kind = services::kind_name(service.kind),
            %vip,
            port = service.port,
            replication = %listen,
            "node started"
        );
        let supervisor = Supervisor::start(config.supervision.clone(), service.interface.clone());
        let metrics = Arc::new(crate::metrics::Metrics::new());
        metrics.set_node(me.slot, incarnation);
        let metrics_server = match config.node.metrics {
            Some(addr) => Some(
                crate::metrics::serve(addr, metrics.clone())
                    .map_err(io_err(format!("metrics endpoint {addr}")))?,
            ),
            None => None,
        };
        let held_up_warning =
            Duration::from_millis(config.raft.tick_ms * u64::from(config.raft.election_ticks) / 2);
        let syn_guard = SynGuard::new(
            SynLimiter::new(service.syn_rate, service.syn_burst),
            service.syn_cookie_above,
            service.syn_cookie_table,
        );
        let rst_limiter = SynLimiter::new(service.unknown_rst_rate, service.unknown_rst_rate);
        Ok(Daemon {
            sockets: KernelSockets::new(LISTENER_TOKEN, SOCKET_TOKENS, service.window_clamp),
            config,
            service,
            vip,
            prefix_len,
            me,
            started: Instant::now(),
            hard_state_path,
            fatal: None,
            poll,
            replica,
            transport,
            admin,
            group,
            shadow_config,
            capture: CaptureLoop::new(queue),
            rules,
            proposer: Proposer::new(MAX_ENTRY_BYTES, LAZY_LOG_MS),
            syn_guard,
            guarded: BTreeMap::new(),
            rst_limiter,
            held: BTreeMap::new(),
            fence,
            netlink,
            interface,
            garp,
            timers: BTreeMap::new(),
            serving: Serving::No,
            metrics,
            _metrics_server: metrics_server,
            last_metrics: Instant::now(),
            proposed_at: BTreeMap::new(),
            uncommitted: BTreeMap::new(),
            handover: Vec::new(),
            handover_since: None,
            vip_remove_at: None,
            planned_handover_at: None,
            elected_at: None,
            migrating: None,
            synacks: BTreeMap::new(),
            restored_handshakes: std::collections::BTreeSet::new(),
            raw: tandem_sys::rawsock::RawIpv4Sender::open()
                .map_err(
                    |err| tracing::warn!(%err, "no raw socket: logged SYN-ACKs cannot be replayed"),
                )
                .ok(),
            draining: false,
            unencrypted,
            supervisor,
            was_healthy: true,
            last_handover: None,
            last_handover_to: None,
            counters: Counters::default(),
            payloads_applied: 0,
            payloads_at_snapshot: 0,
            last_snapshot: None,
            snapshot_index: 0,
            want_snapshot_now: false,
            snapshot_job: None,
            state_lost: None,
            last_sweep: Instant::now(),
            verdicts: Vec::new(),
            held_up_warning,
        })
    }

    fn run_loop(&mut self, stop: &AtomicBool) -> Result<(), DaemonError> {
        let tick = Duration::from_millis(self.config.raft.tick_ms);
        let mut next_tick = Instant::now() + tick;
        let mut events = Events::with_capacity(1024);
        let mut frames = Vec::new();
        let mut requests = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let timeout = if self.transport.has_pending_reads() {
                Duration::ZERO
            } else {
                next_tick
                    .saturating_duration_since(now)
                    .min(Duration::from_millis(if self.proposer_waiting() {
                        LAZY_LOG_MS
                    } else {
                        100
                    }))
            };
            if let Err(err) = self.poll.poll(&mut events, Some(timeout)) {
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(DaemonError::Io {
                        what: "waiting for events".into(),
                        source: err,
                    });
                }
            }
            for event in events.iter() {
                let token = event.token();
                if token == NFQUEUE_TOKEN {
                    self.on_capture();
                } else if self.transport.owns(token) {
                    self.transport
                        .on_event(self.poll.registry(), event, &mut frames);
                } else if self.admin.owns(token) {
                    self.admin
                        .on_event(self.poll.registry(), event, &mut requests);
                } else if self.sockets.owns(token) {
                    self.sockets.on_event(self.poll.registry(), token);
                }
            }
            if self.transport.has_pending_reads() {
                self.transport
                    .read_pending(self.poll.registry(), &mut frames);
            }
            let received_at = Instant::now();
            // Acknowledgements are dated by this clock (the lease).
            self.replica
                .set_clock(received_at.duration_since(self.started).as_millis() as u64);
            for frame in frames.drain(..) {
                // Rejections are counted by the replica's inbox.
                let _ = self.replica.receive(&frame);
            }
            let now = Instant::now();
            // Ticks missed while the process was not running (a hang, a
            // stall) are not replayed in a burst: that would time out an
            // election at once, though a leader's message may have just
            // arrived in this very turn.
            let mut ticked = 0;
            while now >= next_tick && ticked < MAX_CATCH_UP_TICKS {
                self.replica.tick();
                next_tick += tick;
                ticked += 1;
            }
            if now >= next_tick {
                next_tick = now + tick;
            }
            self.transport.poll_timers(self.poll.registry(), now);
            self.admin.poll_timers(self.poll.registry(), now);
            let phase = Instant::now();
            self.primary_duties(now);
            let duties = phase.elapsed();
            self.drive_replica();
            if let Some(err) = self.fatal.take() {
                return Err(err);
            }
            let replica = phase.elapsed() - duties;
            for (client, request) in requests.drain(..) {
                let reply = self.answer(request);
                self.admin.respond(self.poll.registry(), client, &reply);
            }
            self.maybe_snapshot(now);
            let turn = phase.elapsed();
            if turn >= self.held_up_warning {
                // Followers start an election after the shortest election
                // timeout without a heartbeat: a turn this long risks one.
                tracing::warn!(
                    turn_ms = turn.as_secs_f64() * 1e3,
                    duties_ms = duties.as_secs_f64() * 1e3,
                    replica_ms = replica.as_secs_f64() * 1e3,
                    "event loop held up"
                );
            }
            if now.duration_since(self.last_metrics) >= METRICS_EVERY {
                self.last_metrics = now;
                self.update_metrics();
            }
        }
        Ok(())
    }

    /// The latest instant by which a majority of the voters (this node
    /// included) had acknowledged this term's leadership (append or
    /// heartbeat responses of this term only).
    fn quorum_acked(&self) -> Option<Instant> {
        let ms = self.replica.quorum_acked_at()?;
        Some(self.started + Duration::from_millis(ms))
    }

    fn proposer_waiting(&self) -> bool {
        self.serving == Serving::Yes
    }

    /// Reads the capture queue until it is empty.
    fn on_capture(&mut self) {
        let serving = self.serving == Serving::Yes;
        let mut errors = 0u32;
        loop {
            let now_ms = wall_ms();
            let group = &self.group;
            let synacks = &self.synacks;
            let restored_handshakes = &self.restored_handshakes;
            let mut replays: Vec<(Ipv4Addr, Vec<u8>)> = Vec::new();
            let handing_over = self.vip_remove_at.is_some();
            let mut late: Vec<Item> = Vec::new();
            let proposer = &mut self.proposer;
            let syn_guard = &mut self.syn_guard;
            let guarded = &mut self.guarded;
            let rst_limiter = &mut self.rst_limiter;
            let mut resets: Vec<(Ipv4Addr, Vec<u8>)> = Vec::new();
            let half_open = group.shadow().half_open();
            let counters = &mut self.counters;
            let mut full: Vec<Proposal> = Vec::new();
            let result = self.capture.poll(|packet, parsed| {
                counters.captured += 1;
                let Ok(repr) = parsed else {
                    counters.dropped_junk += 1;
                    return Decision::Verdict(Verdict::Drop);
                };
                let direction = direction_of(packet);
                if !serving {
                    // Not (yet, or no longer) the primary: nothing may pass
                    // unlogged. Just deposed, the VIP still here while the
                    // clients' ARP caches catch up: the client's packet goes
                    // to the next primary instead of waiting for the
                    // client's retransmission timer.
                    if handing_over && direction == tandem_core::classify::Direction::FromClient {
                        late.push(Item::Packet {
                            from_server: false,
                            bytes: packet.payload.to_vec(),
                        });
                    }
                    counters.dropped_uncommitted += 1;
                    return Decision::Verdict(Verdict::Drop);
                }
                let segment = segment_of(&repr);
                let key = ConnKey::of(direction, &segment);
                let facts = facts_of(&repr);
                if facts.syn && !facts.ack && restored_handshakes.contains(&key) {
                    // The kernel holds an ESTABLISHED socket for this
                    // handshake, which cannot answer a SYN: replay the
                    // logged SYN-ACK instead.
                    if let (Some(synack), IpAddr::V4(client)) = (synacks.get(&key), key.client.ip())
                    {
                        replays.push((client, synack.clone()));
                    }
                    return Decision::Verdict(Verdict::Drop);
                }
                let seen = Seen {
                    direction,
                    facts,
                    key,
                    seq: segment.seq.0,
                    ack: segment.ack.0,
                    bytes: &packet.payload,
                };
                let from_server = matches!(direction, tandem_core::classify::Direction::FromServer);
                let class = match syn_guard.admit(seen, group.knows(&key), half_open, now_ms) {
                    Admit::Handshake { syn, synack } => {
                        // The third ACK of a cookie-mode handshake: logged
                        // whole, the ACK released once committed (and only
                        // if shadow TCP then has the connection).
                        counters.cookie_handshakes += 1;
                        full.extend(proposer.on_handshake(
                            now_ms,
                            packet.id,
                            syn,
                            synack,
                            packet.payload.to_vec(),
                        ));
                        guarded.insert(
                            packet.id,
                            HandshakeGuard::ThirdAck {
                                key,
                                reset: reset_for(&repr),
                            },
                        );
                        return Decision::Hold;
                    }
                    Admit::Class(class) => class,
                };
                match class {
                    Class::Pass => {
                        // Cookie mode: nothing to log, nothing to copy.
                        counters.cookie_passed += 1;
                        counters.released_at_once += 1;
                        return Decision::Verdict(Verdict::Accept);
                    }
                    Class::Junk(JunkReason::SynRateLimited) => counters.syn_rate_limited += 1,
                    Class::Junk(JunkReason::NoConnection) => {
                        // No connection, no cookie: the kernel would answer
                        // with a RST, and so do we, so that a client whose
                        // cookie handshake was lost (evicted, or in flight
                        // at a failover) is refused instead of hanging.
                        if let (Some(reset), IpAddr::V4(client)) =
                            (reset_for(&repr), key.client.ip())
                        {
                            if rst_limiter.admit(now_ms) {
                                resets.push((client, reset));
                            }
                        }
                    }
                    Class::Commit if from_server => {
                        guarded.insert(
                            packet.id,
                            HandshakeGuard::SynAck {
                                key,
                                isn: segment.seq.0,
                            },
                        );
                    }
                    Class::Commit if !group.knows(&key) => {
                        // After a cookie handshake proposed, not yet applied.
                        guarded.insert(
                            packet.id,
                            HandshakeGuard::Follows {
                                key,
                                reset: reset_for(&repr),
                            },
                        );
                    }
                    _ => {}
                }
                let (verdict, proposal) = proposer.on_packet(
                    now_ms,
                    packet.id,
                    class,
                    from_server,
                    packet.payload.to_vec(),
                );
                if let Some(p) = proposal {
                    full.push(p);
                }
                match verdict {
                    Some(Verdict::Drop) => {
                        counters.dropped_junk += 1;
                        Decision::Verdict(Verdict::Drop)
                    }
                    Some(Verdict::Accept) => {
                        counters.released_at_once += 1;
                        Decision::Verdict(Verdict::Accept)
                    }
                    None => Decision::Hold,
                }
            });
            for proposal in full {
                self.propose(proposal);
            }
            if !late.is_empty() {
                let entry = LogEntry {
                    timestamp_ms: now_ms,
                    items: late,
                };
                if let Ok(bytes) = postcard::to_stdvec(&entry) {
                    self.keep_for_handover(bytes);
                }
            }
            for (client, synack) in replays {
                if let Some(raw) = &self.raw {
                    match raw.send(&synack, client) {
                        Ok(()) => self.counters.synacks_replayed += 1,
                        Err(err) => tracing::warn!(%err, "replaying a logged SYN-ACK"),
                    }
                }
            }
            self.send_resets(resets);
            match result {
                Ok(_) => {}
                Err(tandem_sys::nfqueue::NfQueueError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::WouldBlock =>
                {
                    break
                }
                Err(err) => {
                    // An error report from the kernel (a refused verdict):
                    // keep reading, or packets queued behind it would wait
                    // for the next edge of readiness.
                    tracing::debug!(%err, "capture queue");
                    errors += 1;
                    if errors > 64 {
                        tracing::warn!(%err, "capture queue keeps failing");
                        break;
                    }
                }
            }
        }
        if let Some(p) = self.proposer.poll(wall_ms()) {
            self.propose(p);
        }
    }

    fn propose(&mut self, proposal: Proposal) {
        let bytes = match postcard::to_stdvec(&proposal.entry) {
            Ok(bytes) => bytes,
            Err(err) => {
                tracing::error!(%err, "cannot encode an entry");
                self.drop_held(proposal.held);
                return;
            }
        };
        match self.replica.propose(bytes.clone()) {
            Ok(id) => {
                self.counters.proposals += 1;
                self.proposed_at.insert(id, Instant::now());
                self.uncommitted.insert(id, bytes);
                if !proposal.held.is_empty() {
                    self.held.insert(id, proposal.held);
                }
            }
            Err(err) => {
                // A handover under way: the packets never reach this
                // kernel, their bytes go to the next primary.
                tracing::debug!(%err, "proposal refused; kept for the next primary");
                self.keep_for_handover(bytes);
                self.drop_held(proposal.held);
            }
        }
    }

    fn remove_vip(&mut self) {
        self.vip_remove_at = None;
        if let Err(err) =
            self.netlink
                .remove_address(&self.interface, IpAddr::V4(self.vip), self.prefix_len)
        {
            tracing::warn!(%err, "removing the VIP");
        }
    }

    /// Keeps an uncommitted entry for the next primary, without our own
    /// SYN-ACKs: those never left this node, and the next primary's kernel
    /// answers the client's retransmitted SYN with its own.
    fn keep_for_handover(&mut self, bytes: Vec<u8>) {
        let Ok(mut entry) = postcard::from_bytes::<LogEntry>(&bytes) else {
            return;
        };
        entry.items.retain(|item| {
            !matches!(
                item,
                Item::Packet {
                    from_server: true,
                    ..
                }
            )
        });
        if entry.items.is_empty() {
            return;
        }
        let Ok(bytes) = postcard::to_stdvec(&entry) else {
            return;
        };
        self.handover_since.get_or_insert_with(Instant::now);
        self.handover.push(bytes);
    }

    /// Hands what this node captured but did not commit to the primary
    /// once one is known; after a while without one, gives up (the clients
    /// retransmit).
    fn forward_handover(&mut self) {
        if self.handover.is_empty() {
            return;
        }
        if self.replica.role() == StateRole::Leader {
            if self.serving == Serving::Yes {
                // Still (or again) the leader: propose them ourselves, unless
                // a transfer refuses proposals — then they wait for the
                // next primary.
                let mut waiting = std::mem::take(&mut self.handover).into_iter();
                for bytes in waiting.by_ref() {
                    match self.replica.propose(bytes.clone()) {
                        Ok(id) => {
                            self.uncommitted.insert(id, bytes);
                        }
                        Err(_) => {
                            self.handover.push(bytes);
                            break;
                        }
                    }
                }
                self.handover.extend(waiting);
                if self.handover.is_empty() {
                    self.handover_since = None;
                }
            }
            return;
        }
        let payloads = std::mem::take(&mut self.handover);
        let count = payloads.len();
        match self.replica.forward(payloads.clone()) {
            Ok(_) => {
                self.counters.entries_forwarded += count as u64;
                self.handover_since = None;
                tracing::info!(
                    entries = count,
                    "uncommitted client packets handed to the new primary"
                );
            }
            Err(_)
                if self
                    .handover_since
                    .is_some_and(|at| at.elapsed() < HANDOVER_WAIT) =>
            {
                self.handover = payloads;
            }
            Err(_) => {
                tracing::info!(
                    entries = count,
                    "no primary to hand uncommitted packets to; their clients will retransmit"
                );
                self.handover_since = None;
            }
        }
    }

    /// The verdict of a held packet whose entry was just applied: ACCEPT,
    /// unless it is a handshake packet shadow TCP refused (a full half-open
    /// table, a mismatch): then the kernel must not see it, and a client
    /// whose third ACK it was gets a RST instead of a hang.
    fn guarded_verdict(&mut self, id: u32) -> Verdict {
        let Some(guard) = self.guarded.remove(&id) else {
            return Verdict::Accept;
        };
        let third = matches!(guard, HandshakeGuard::ThirdAck { .. });
        let shadow = self.group.shadow();
        match guard {
            HandshakeGuard::SynAck { key, isn } => {
                if shadow.info(&key).and_then(|i| i.server_isn) == Some(isn) {
                    Verdict::Accept
                } else {
                    self.counters.synacks_refused += 1;
                    Verdict::Drop
                }
            }
            HandshakeGuard::ThirdAck { key, reset } | HandshakeGuard::Follows { key, reset } => {
                let open = shadow.info(&key).is_some_and(|i| {
                    !third
                        || !matches!(
                            i.state,
                            tandem_core::shadow::ShadowState::SynSeen
                                | tandem_core::shadow::ShadowState::SynAckSeen
                        )
                });
                if open {
                    Verdict::Accept
                } else {
                    // Later packets of it are refused too.
                    self.syn_guard.forget(&key);
                    self.counters.handshakes_refused += u64::from(third);
                    if let (Some(reset), IpAddr::V4(client)) = (reset, key.client.ip()) {
                        self.send_resets(vec![(client, reset)]);
                    }
                    Verdict::Drop
                }
            }
        }
    }

    /// Sends RSTs built by [`reset_for`] from the raw socket.
    fn send_resets(&mut self, resets: Vec<(Ipv4Addr, Vec<u8>)>) {
        let Some(raw) = &self.raw else {
            return;
        };
        for (client, reset) in resets {
            match raw.send(&reset, client) {
                Ok(()) => self.counters.resets_sent += 1,
                Err(err) => tracing::debug!(%err, "sending a RST"),
            }
        }
    }

    fn drop_held(&mut self, ids: Vec<u32>) {
        if ids.is_empty() {
            return;
        }
        self.counters.dropped_uncommitted += ids.len() as u64;
        for id in &ids {
            self.guarded.remove(id);
        }
        let verdicts: Vec<(u32, Verdict)> = ids.into_iter().map(|id| (id, Verdict::Drop)).collect();
        if let Err(err) = self.capture.release(&verdicts) {
            tracing::warn!(%err, "dropping held packets");
        }
    }

    /// What only the primary does each turn: flush lazy log items, fire due
    /// timers, report clients the kernel gave up on, keep the lease.
    fn primary_duties(&mut self, now: Instant) {
        if self.serving != Serving::Yes {
            return;
        }
        let now_ms = wall_ms();
        // Timers are due in log time, which is the primaries' clock made
        // monotonic; the primary's own clock is the right comparison.
        let log_now = now_ms;
        let due: Vec<(u64, u64)> = self
            .timers
            .iter()
            .filter(|(_, (_, at))| *at <= log_now)
            .map(|(id, (generation, _))| (*id, *generation))
            .collect();
        for (id, generation) in due {
            self.timers.remove(&id);
            self.proposer.push(now_ms, Item::Timer { id, generation });
        }
        for key in self.sockets.take_gave_up() {
            self.proposer.push(
                now_ms,
                Item::Abort {
                    client: key.client,
                    server: key.server,
                },
            );
        }
        if let Some(p) = self.proposer.poll(now_ms) {
            self.propose(p);
        }
        if self.replica.role() == StateRole::Leader {
            // Entitled to the lease only as long as a quorum has
            // acknowledged this term's leadership within it (docs/architecture.md §3.8,
            // docs/membership.md): a primary cut off, or frozen and then
            // woken up, never re-grants itself the VIP.
            if let Some(acked) = self.quorum_acked() {
                self.fence.entitle(acked);
            }
        }
        if now.duration_since(self.last_sweep) > Duration::from_secs(1) {
            self.last_sweep = now;
            let group = &self.group;
            self.sockets.sweep_pending(|key| group.knows(key));
            let in_handshake = |key: &ConnKey| {
                group
                    .shadow()
                    .info(key)
                    .is_some_and(|i| i.state == tandem_core::shadow::ShadowState::SynAckSeen)
            };
            self.synacks.retain(|key, _| in_handshake(key));
            self.restored_handshakes.retain(|key| in_handshake(key));
            self.syn_guard
                .sweep(wall_ms(), COOKIE_PROPOSED_TTL_MS, |key| group.knows(key));
        }
    }

    /// Hands the replica's output to the world until it has nothing more.
    fn drive_replica(&mut self) {
        for _ in 0..64 {
            if !self.replica.has_ready() {
                break;
            }
            let started = Instant::now();
            let out = self.replica.ready();
            let made = started.elapsed();
            let (messages, bytes, committed) = (
                out.messages.len(),
                out.messages.iter().map(|(_, b)| b.len()).sum::<usize>(),
                out.committed.len(),
            );
            self.handle_ready(out);
            if self.fatal.is_some() {
                break;
            }
            self.replica.advance();
            if started.elapsed() >= self.held_up_warning / 2 {
                tracing::info!(
                    ready_ms = made.as_secs_f64() * 1e3,
                    handled_ms = (started.elapsed() - made).as_secs_f64() * 1e3,
                    messages,
                    bytes,
                    committed,
                    "long raft ready"
                );
            }
        }
        self.after_ready();
    }

    fn handle_ready(&mut self, out: Output) {
        // The term and vote are on disk before any message that depends on
        // them leaves; a node that cannot save them must stop.
        if let Some(hs) = out.hard_state {
            if let Err(source) = tandem_replica::save_hard_state(&self.hard_state_path, &hs) {
                self.fatal = Some(DaemonError::Io {
                    what: format!("saving {}", self.hard_state_path.display()),
                    source,
                });
                return;
            }
        }
        for (to, bytes) in &out.messages {
            self.transport.send(self.poll.registry(), to.slot, bytes);
        }
        if let Some(snapshot) = out.install_snapshot {
            self.install_snapshot(snapshot.index, &snapshot.data);
        }
        let primary = self.serving == Serving::Yes;
        // Socket effects wait until the committed packets are released: the
        // kernel must hold a client's request before the reply leaves, so
        // the reply carries the ACK (else the client, under Nagle, waits for
        // a delayed ACK: 40 ms per request).
        let mut socket_effects = Vec::new();
        let mut inject: Vec<Vec<u8>> = Vec::new();
        for committed in out.committed {
            self.counters.committed_entries += 1;
            self.metrics
                .add_committed(&self.service.name, 1, committed.data.len() as u64);
            self.uncommitted.remove(&committed.proposal);
            if let Some(at) = self.proposed_at.remove(&committed.proposal) {
                self.metrics
                    .observe_commit_latency(&self.service.name, at.elapsed().as_secs_f64());
            }
            self.payloads_applied += 1;
            if self.state_lost.is_some() {
                // Applying to a state that is not the log's would only
                // make it diverge further (and look healthy).
                continue;
            }
            let index = (committed.index << 16) | u64::from(committed.sub);
            match postcard::from_bytes::<LogEntry>(&committed.data) {
                Ok(entry) => {
                    if primary && committed.proposal.proposer != self.me {
                        // Committed while we serve but not proposed by us:
                        // packets a deposed primary handed over. Our kernel
                        // must receive them too (it ACKs them, the client
                        // stops resending, and Nagle does not hold its next
                        // request back); they come through the capture again
                        // and are logged as duplicates, which shadow TCP
                        // drops like any retransmission.
                        inject.extend(entry.items.iter().filter_map(handed_over_packet));
                    }
                    for item in &entry.items {
                        if let Item::Packet {
                            from_server: true,
                            bytes,
                        } = item
                        {
                            if let Some((key, packet)) = synack_for_replay(bytes) {
                                self.synacks.insert(key, packet);
                            }
                        }
                    }
                    let effects = self.group.apply(index, &entry);
                    for effect in effects {
                        match effect {
                            Effect::Timer {
                                id,
                                generation,
                                at_ms,
                            } => {
                                self.timers.insert(id, (generation, at_ms));
                            }
                            Effect::CancelTimer { id } => {
                                self.timers.remove(&id);
                            }
                            other if primary => socket_effects.push(other),
                            _ => {}
                        }
                    }
                }
                Err(err) => {
                    // Authenticated and committed, so every replica skips
                    // it alike; still, it means a bug in a proposer.
                    tracing::error!(index = committed.index, %err, "undecodable log entry skipped");
                }
            }
            if committed.proposal.proposer == self.me {
                if let Some(ids) = self.held.remove(&committed.proposal) {
                    self.counters.committed_released += ids.len() as u64;
                    for id in ids {
                        let verdict = self.guarded_verdict(id);
                        self.verdicts.push((id, verdict));
                    }
                }
            }
        }
        if !self.verdicts.is_empty() {
            let verdicts = std::mem::take(&mut self.verdicts);
            if let Err(err) = self.capture.release(&verdicts) {
                tracing::warn!(%err, "releasing committed packets");
            }
        }
        for effect in socket_effects {
            self.sockets.apply(self.poll.registry(), effect);
        }
        if let Some(raw) = &self.raw {
            for packet in &inject {
                if let Err(err) = raw.send(packet, self.vip) {
                    tracing::debug!(%err, "re-injecting a handed-over packet");
                }
            }
        }
        for dropped in out.dropped {
            self.proposed_at.remove(&dropped);
            if let Some(bytes) = self.uncommitted.remove(&dropped) {
                self.keep_for_handover(bytes);
            }
            if let Some(ids) = self.held.remove(&dropped) {
                self.drop_held(ids);
            }
        }
        if out.snapshot_wanted {
            self.want_snapshot_now = true;
        }
        if let (Some((to, at)), Some(leader)) = (self.migrating, out.leader) {
            if out.leader_changed && leader.slot == to {
                self.metrics
                    .observe_migration(&self.service.name, at.elapsed().as_secs_f64());
                self.migrating = None;
            }
        }
        if out.role_changed || out.leader_changed {
            tracing::info!(
                role = ?out.role,
                term = out.term,
                leader = ?out.leader.map(|l| l.slot),
                "raft role"
            );
        }
        if out.role_changed {
            if out.role == StateRole::Leader {
                self.elected_at = Some(Instant::now());
                let barrier = self.replica.status().log.1;
                self.serving = Serving::Awaiting { barrier };
            } else if self.serving != Serving::No {
                self.step_down("lost leadership");
            }
        }
    }

    fn after_ready(&mut self) {
        if self.vip_remove_at.is_some_and(|at| Instant::now() >= at) {
            self.remove_vip();
        }
        self.forward_handover();
        let health = self.supervisor.health();
        if health.healthy != self.was_healthy {
            self.was_healthy = health.healthy;
            self.last_handover = None;
        }
        let unfit = self.draining || !health.healthy || self.state_lost.is_some();
        self.replica.set_refuse_leadership(unfit);
        if unfit
            && self.replica.role() == StateRole::Leader
            && self
                .last_handover
                .is_none_or(|at| at.elapsed() > Duration::from_millis(500))
        {
            // Elected anyway (it is the only candidate able to win, or the
            // transfer timed out): pass the role on again.
            self.last_handover = Some(Instant::now());
            let why = if self.draining {
                "drained"
            } else if self.state_lost.is_some() {
                "state lost"
            } else {
                "unhealthy"
            };
            if let Err(err) = self.hand_over(why) {
                tracing::warn!(%err, "drained node cannot hand over yet");
            }
        }
        if let Serving::Awaiting { barrier } = self.serving {
            if self.replica.role() != StateRole::Leader {
                self.serving = Serving::No;
            } else if self.replica.applied() >= barrier {
                if let Err(err) = self.take_over() {
                    tracing::error!(%err, "taking over failed; stepping down");
                    self.step_down("take-over failed");
                }
            }
        }
    }

    /// The new primary takes up the service (docs/architecture.md §3.5 in the order that
    /// never lets a packet through unlogged; capture has been on since
    /// start-up): connections rebuilt in repair mode while the lease is
    /// granted, listener, VIP, gratuitous ARP, then the connections go live.
    fn take_over(&mut self) -> Result<(), DaemonError> {
        let started = Instant::now();
        // The barrier committed, so a quorum has acknowledged this term.
        let acked = self.quorum_acked().unwrap_or(self.started);
        let lease = self.fence.grant_in_background(acked);
        // Rebuild every connection the log knows, silent until announced.
        let prepared = self.prepare_connections(wall_ms());
        let prepare_ms = started.elapsed().as_secs_f64() * 1e3;
        let addr = SocketAddr::new(IpAddr::V4(self.vip), self.service.port);
        self.sockets
            .listen(self.poll.registry(), addr, self.service.window_clamp)
            .map_err(io_err(format!("listening on {addr}")))?;
        lease.join().unwrap_or_else(|_| {
            Err(tandem_sys::guard::GuardError::Refused {
                what: "lease",
                stderr: "the lease thread panicked".into(),
            })
        })?;
        let lease_ms = started.elapsed().as_secs_f64() * 1e3;
        if self.vip_remove_at.take().is_none()
            || !self
                .netlink
                .has_address(&self.interface, IpAddr::V4(self.vip))?
        {
            self.netlink
                .add_address(&self.interface, IpAddr::V4(self.vip), self.prefix_len)?;
        }
        self.garp
            .announce(self.vip, tandem_sys::arp::GarpSchedule::default())?;
        let announced_ms = started.elapsed().as_secs_f64() * 1e3;
        let (mut restored, mut failed) = (0u64, 0u64);
        let mut replays = Vec::new();
        for rebuilt in prepared {
            let Rebuilt {
                key,
                socket,
                fin,
                peer_closed,
                replay,
            } = rebuilt;
            let Ok(prepared) = socket else { continue };
            match prepared.go_live() {
                Ok(fd) => match self
                    .sockets
                    .adopt(self.poll.registry(), key, fd, fin, peer_closed)
                {
                    Ok(()) => {
                        restored += 1;
                        if let IpAddr::V4(client) = key.client.ip() {
                            replays.extend(replay.into_iter().map(|p| (client, p)));
                        }
                    }
                    Err(err) => {
                        failed += 1;
                        tracing::warn!(client = %key.client, %err, "cannot watch a restored socket");
                    }
                },
                Err(err) => {
                    failed += 1;
                    tracing::warn!(client = %key.client, %err, "a restored socket could not go live");
                }
            }
        }
        if let Some(raw) = &self.raw {
            for (client, packet) in &replays {
                if let Err(err) = raw.send(packet, *client) {
                    tracing::debug!(%err, "replaying output at takeover");
                }
            }
        }
        self.counters.connections_restored += restored;
        self.counters.restore_failures += failed;
        self.serving = Serving::Yes;
        self.counters.became_primary += 1;
        let since_elected = self.elected_at.map_or(started.elapsed(), |at| at.elapsed());
        self.metrics
            .observe_failover(&self.service.name, since_elected.as_secs_f64());
        tracing::info!(
            term = self.replica.term(),
            restored,
            failed,
            prepare_ms,
            lease_ms,
            announced_ms,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            %addr,
            "primary: serving"
        );
        Ok(())
    }

    /// Every connection of the log as a socket in repair mode (docs/architecture.md §3.5
    /// step 4), busiest first, built on two threads; nothing is sent until
    /// each goes live after the VIP is announced.
    fn prepare_connections(&mut self, now_ms: u64) -> Vec<Rebuilt> {
        let shadow = self.group.shadow();
        let mut handshakes = Vec::new();
        let mut images: Vec<(ConnKey, tandem_core::SocketImage, bool)> = shadow
            .keys()
            .filter_map(|key| {
                let image = shadow.image(key, tandem_core::shadow::Millis(now_ms), TS_JUMP)?;
                if image.state == tandem_core::TcpState::SynRecv {
                    handshakes.push(*key);
                }
                let peer_closed = matches!(
                    image.state,
                    tandem_core::TcpState::CloseWait
                        | tandem_core::TcpState::LastAck
                        | tandem_core::TcpState::Closing
                );
                Some((*key, for_restore(image), peer_closed))
            })
            .collect();
        self.restored_handshakes.extend(handshakes);
        images.sort_by_key(|(_, image, _)| std::cmp::Reverse(image.send_queue.len()));
        if images.is_empty() {
            return Vec::new();
        }
        let options = tandem_sys::tcp_repair::RestoreOptions::default();
        let build = |part: &[(ConnKey, tandem_core::SocketImage, bool)]| {
            part.iter()
                .map(|(key, image, peer_closed)| Rebuilt {
                    key: *key,
                    socket: tandem_sys::tcp_repair::prepare(image, &options),
                    fin: image.state != tandem_core::TcpState::Established,
                    peer_closed: *peer_closed,
                    replay: replay_head(image),
                })
                .collect::<Vec<_>>()
        };
        let (a, b) = if images.len() <= REBUILD_INLINE {
            (build(&images), Vec::new())
        } else {
            // Two builders; this thread keeps the followers' election
            // timers from running out meanwhile (thousands of sockets can
            // take longer than the shortest election timeout).
            let (first, second) = images.split_at(images.len().div_ceil(2));
            let beat = Duration::from_millis(
                self.config.raft.tick_ms * u64::from(self.config.raft.heartbeat_ticks),
            );
            std::thread::scope(|scope| {
                let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
                let spawn = |part| {
                    let done = done_tx.clone();
                    scope.spawn(move || {
                        let built = build(part);
                        let _ = done.send(());
                        built
                    })
                };
                let one = spawn(first);
                let two = spawn(second);
                // Only the builders hold senders now: if one panics, the
                // channel disconnects instead of leaving this loop waiting.
                drop(done_tx);
                let mut finished = 0;
                while finished < 2 {
                    match done_rx.recv_timeout(beat) {
                        Ok(()) => finished += 1,
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                            self.send_heartbeats();
                        }
                        // A builder panicked (its join says so below).
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                (
                    one.join().unwrap_or_default(),
                    two.join().unwrap_or_default(),
                )
            })
        };
        let mut prepared = Vec::with_capacity(images.len());
        for rebuilt in a.into_iter().chain(b) {
            match &rebuilt.socket {
                Ok(_) => prepared.push(rebuilt),
                Err(err) => {
                    self.counters.restore_failures += 1;
                    tracing::warn!(client = %rebuilt.key.client, %err, "cannot rebuild a connection");
                }
            }
        }
        prepared
    }

    /// Sends heartbeats at once, outside the tick: for the leader's loop
    /// while it is held up by a takeover (see `Replica::heartbeats_now`).
    fn send_heartbeats(&mut self) {
        for (to, bytes) in self.replica.heartbeats_now() {
            self.transport.send(self.poll.registry(), to.slot, &bytes);
        }
    }

    /// Stops serving; the next primary takes the clients over.
    fn step_down(&mut self, why: &str) {
        if self.serving == Serving::No {
            return;
        }
        let was_serving = self.serving == Serving::Yes;
        self.serving = Serving::No;
        self.proposed_at.clear();
        self.restored_handshakes.clear();
        // Cookie-mode handshakes not yet logged are lost, as with kernel
        // cookies: the next primary answers their ACKs with a RST.
        self.syn_guard.clear();
        // Nothing uncommitted reaches this kernel (DROP); its bytes go to
        // the next primary. An entry may also be in the log already: a
        // duplicate is dropped by shadow TCP like any retransmission.
        if let Some(pending) = self.proposer.take(wall_ms()) {
            if let Ok(bytes) = postcard::to_stdvec(&pending.entry) {
                self.keep_for_handover(bytes);
            }
            self.drop_held(pending.held);
        }
        let uncommitted: Vec<Vec<u8>> = std::mem::take(&mut self.uncommitted)
            .into_values()
            .collect();
        for bytes in uncommitted {
            self.keep_for_handover(bytes);
        }
        let held: Vec<u32> = std::mem::take(&mut self.held)
            .into_values()
            .flatten()
            .collect();
        self.drop_held(held);
        if let Err(err) = self.fence.revoke() {
            tracing::warn!(%err, "revoking the lease");
        }
        let planned = self
            .planned_handover_at
            .is_some_and(|at| at.elapsed() < Duration::from_secs(5));
        if planned {
            // A planned handover to a reachable peer: the VIP goes a moment
            // later. The lease is revoked, so this kernel is already silent
            // on it; until the clients' ARP caches follow the next primary's
            // announcement their packets still arrive here, where they are
            // captured and handed over instead of waiting for the clients'
            // retransmission timers.
            self.vip_remove_at = Some(Instant::now() + VIP_LINGER);
        } else {
            self.remove_vip();
        }
        self.sockets.close_all_silently(self.poll.registry());
        if was_serving {
            self.counters.stepped_down += 1;
        }
        tracing::info!(why, "primary: stepped down");
    }

    fn install_snapshot(&mut self, index: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let started = Instant::now();
        match ServiceGroup::restore(services::fresh(self.service.kind), self.shadow_config, data) {
            Ok(group) => {
                self.group = group.with_limits(self.service.limits());
                self.snapshot_index = index;
                self.counters.snapshots_installed += 1;
                if self.state_lost.take().is_some() {
                    tracing::warn!(index, "a later snapshot installed: state recovered");
                }
                tracing::info!(
                    index,
                    bytes = data.len(),
                    restore_ms = started.elapsed().as_secs_f64() * 1e3,
                    "snapshot installed"
                );
            }
            Err(err) => {
                // raft has already replaced the log with this snapshot:
                // the state here is no longer the log's. Serving or
                // applying from it would answer clients from a state no
                // other replica has.
                tracing::error!(
                    index,
                    %err,
                    "cannot install a snapshot: this node's state is lost; it stops applying, \
                     refuses leadership and reports unhealthy until restarted"
                );
                self.state_lost = Some(format!(
                    "state lost: snapshot at {index} not installed: {err}"
                ));
                if self.serving != Serving::No {
                    self.step_down("state lost");
                }
            }
        }
    }

    /// Takes a snapshot when one is due: the state is copied on the loop
    /// (`ServiceGroup::snapshot_taken`), then hashed, encoded and sealed on
    /// another thread; a later turn hands the bytes to the replica, which
    /// compacts the log up to the index copied.
    fn maybe_snapshot(&mut self, now: Instant) {
        if let Some(job) = &self.snapshot_job {
            let data = match job.encoded.try_recv() {
                Ok(data) => data,
                Err(std::sync::mpsc::TryRecvError::Empty) => return,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    tracing::error!(index = job.index, "snapshot encoder thread died");
                    self.snapshot_job = None;
                    return;
                }
            };
            let Some(job) = self.snapshot_job.take() else {
                return;
            };
            let (index, bytes) = (job.index, data.len());
            match self.replica.compact(index, data) {
                Ok(()) => {
                    self.snapshot_index = index;
                    self.payloads_at_snapshot = job.payloads;
                    self.counters.snapshots_taken += 1;
                    tracing::debug!(
                        index,
                        bytes,
                        encode_ms = job.copied_at.elapsed().as_secs_f64() * 1e3,
                        "snapshot taken, log compacted"
                    );
                }
                // A snapshot installed meanwhile, or an older index.
                Err(err) => tracing::debug!(%err, index, "snapshot not taken"),
            }
            return;
        }
        if self.state_lost.is_some() {
            return;
        }
        let since = self.payloads_applied - self.payloads_at_snapshot;
        let due = self.want_snapshot_now
            || since >= SNAPSHOT_EVERY_PAYLOADS
            || (since > 0
                && self
                    .last_snapshot
                    .is_none_or(|at| now.duration_since(at) >= SNAPSHOT_EVERY));
        if !due {
            return;
        }
        let applied = self.replica.applied();
        if applied == 0 || applied <= self.snapshot_index && !self.want_snapshot_now {
            return;
        }
        self.want_snapshot_now = false;
        self.last_snapshot = Some(now);
        let started = Instant::now();
        let Some(taken) = self.copy_state() else {
            return;
        };
        let copy = started.elapsed();
        let copied = taken.len();
        let (tx, encoded) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("snapshot-encoder".into())
            .spawn(move || {
                // The receiver is gone only if the daemon is stopping.
                let _ = tx.send(taken.encode());
            });
        if let Err(err) = spawned {
            tracing::warn!(%err, "no thread to encode a snapshot; trying again later");
            return;
        }
        let copy_ms = copy.as_secs_f64() * 1e3;
        if copy >= self.held_up_warning / 4 {
            tracing::info!(
                index = applied,
                copied,
                copy_ms,
                "snapshot copied on the event loop"
            );
        } else {
            tracing::debug!(
                index = applied,
                copied,
                copy_ms,
                "snapshot copied on the event loop"
            );
        }
        self.snapshot_job = Some(SnapshotJob {
            index: applied,
            payloads: self.payloads_applied,
            copied_at: started,
            encoded,
        });
    }

    /// Copies the state for a snapshot (`ServiceGroup::snapshot_taken`)
    /// without holding the followers' election timers up: see
    /// [`Daemon::with_group_off_loop`]. Copying a large state (~0.15 s for
    /// 100 MiB, mostly the kernel handing out fresh pages) takes longer
    /// than the shortest election timeout.
    fn copy_state(&mut self) -> Option<crate::group::TakenGroupSnapshot> {
        let taken = self.with_group_off_loop(|g| g.snapshot_taken());
        if taken.is_none() {
            tracing::error!(
                "no snapshot taken: no thread to copy the state, or the service panicked"
            );
        }
        taken
    }

    /// Runs `work` on the group on a helper thread that has the group to
    /// itself meanwhile, while this thread sends the followers heartbeats
    /// (it does nothing else: entries are applied after). For work that
    /// walks the whole state (a snapshot's copy, the state hash): on a
    /// large state it takes longer than the shortest election timeout.
    /// `None` if no thread could be started or `work` panicked; the group
    /// is back in place either way.
    fn with_group_off_loop<T: Send>(
        &mut self,
        work: impl FnOnce(&ServiceGroup) -> T + Send,
    ) -> Option<T> {
        let beat = Duration::from_millis(
            self.config.raft.tick_ms * u64::from(self.config.raft.heartbeat_ticks),
        );
        let stand_in = ServiceGroup::new(services::fresh(self.service.kind), self.shadow_config, 0);
        // In a mutex (the group is Send, not Sync): whatever happens to the
        // helper thread, the group comes back.
        let group = std::sync::Mutex::new(std::mem::replace(&mut self.group, stand_in));
        let out = std::thread::scope(|scope| {
            let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
            let group = &group;
            let helper = std::thread::Builder::new()
                .name("group-walk".into())
                .spawn_scoped(scope, move || {
                    let out = group.lock().ok().and_then(|g| {
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&g))).ok()
                    });
                    let _ = done_tx.send(());
                    out
                });
            let Ok(helper) = helper else {
                return None;
            };
            loop {
                match done_rx.recv_timeout(beat) {
                    Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => self.send_heartbeats(),
                }
            }
            helper.join().ok().flatten()
        });
        self.group = group
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        out
    }

    fn answer(&mut self, request: AdminRequest) -> AdminReply {
        match request {
            AdminRequest::Status => {
                // The hash walks the whole state: off the loop's thread.
                let hash = self.with_group_off_loop(|g| g.state_hash());
                let mut report = self.report_with(false);
                report.service.state_hash = match hash {
                    Some(hash) => format!("{hash:016x}"),
                    None => "unavailable".into(),
                };
                AdminReply::Status(Box::new(report))
            }
            AdminRequest::Migrate { to } => match self.migrate_to(to) {
                Ok(message) => AdminReply::Done { message },
                Err(message) => AdminReply::Error { message },
            },
            AdminRequest::Drain => {
                self.draining = true;
                tracing::info!("drained: this node gives up and refuses the primary role");
                let message = if self.replica.role() == StateRole::Leader {
                    match self.hand_over("drain") {
                        Ok(to) => format!("node {} drained; the primary moves to node {to}", self.me.slot),
                        Err(err) => format!("node {} drained, but the primary cannot move yet: {err}; it will keep trying", self.me.slot),
                    }
                } else {
                    format!("node {} drained (it is not the primary)", self.me.slot)
                };
                AdminReply::Done { message }
            }
            AdminRequest::ReloadKeys => match self.reload_keys() {
                Ok(message) => AdminReply::Done { message },
                Err(message) => AdminReply::Error { message },
            },
            AdminRequest::Undrain => {
                self.draining = false;
                tracing::info!("undrained: this node may be primary again");
                AdminReply::Done {
                    message: format!("node {} undrained: it may be primary again", self.me.slot),
                }
            }
        }
    }

    /// `tandem reload-keys`: reads the key files again (a step of a key
    /// rotation, see `config::ClusterSection`). On any error nothing changes.
    fn reload_keys(&mut self) -> Result<String, String> {
        let keys = self.config.load_keys().map_err(|e| {
            tracing::warn!(error = %e, "key reload refused; keys unchanged");
            format!("keys unchanged: {e}")
        })?;
        if keys.is_unencrypted() != self.unencrypted {
            return Err(
                "keys unchanged: unencrypted_replication_for_benchmarks cannot change while running"
                    .into(),
            );
        }
        let names = fingerprints(&keys);
        self.replica.set_keys(keys.clone());
        self.transport.set_keys(keys);
        tracing::info!(keys = %names, "replication keys reloaded (fingerprints; the first is sent with)");
        Ok(format!(
            "node {}: sending with key {names} (fingerprints; the first is sent with, all are accepted)",
            self.me.slot
        ))
    }

    /// `tandem migrate SERVICE --to NODE` on the primary: a Raft leadership
    /// transfer to a caught-up clone (docs/architecture.md §3.6).
    fn migrate_to(&mut self, slot: u16) -> Result<String, String> {
        let status = self.replica.status();
        if status.role != StateRole::Leader {
            return Err(match status.leader {
                Some(l) => format!(
                    "node {} is not the primary; node {} is: ask it (or use --lab)",
                    self.me.slot, l.slot
                ),
                None => format!(
                    "node {} is not the primary and no primary is known now",
                    self.me.slot
                ),
            });
        }
        if slot == self.me.slot {
            return Ok(format!("node {slot} is already the primary"));
        }
        let Some(target) = status.voters.iter().copied().find(|v| v.slot == slot) else {
            return Err(format!(
                "node {slot} is not a voter of this group (voters: {:?})",
                status.voters.iter().map(|v| v.slot).collect::<Vec<_>>()
            ));
        };
        let matched = status.matched.get(&target).copied().unwrap_or(0);
        let lag = status.commit.saturating_sub(matched);
        if lag > MAX_TRANSFER_LAG {
            return Err(format!(
                "node {slot} lags {lag} entries behind; try again when it has caught up"
            ));
        }
        self.replica.transfer_leader(target);
        self.migrating = Some((slot, Instant::now()));
        self.planned_handover_at = Some(Instant::now());
        tracing::info!(to = slot, "planned migration: leadership transfer started");
        Ok(format!(
            "primary moving from node {} to node {slot}",
            self.me.slot
        ))
    }

    /// Hands leadership to the most caught-up reachable peer (drain, or
    /// unhealthy). A peer that refuses (drained or unhealthy itself) lets
    /// the transfer time out; the next attempt then tries another one.
    fn hand_over(&mut self, why: &str) -> Result<u16, String> {
        let status = self.replica.status();
        let mut peers: Vec<NodeId> = status
            .voters
            .iter()
            .copied()
            .filter(|v| *v != self.me && self.transport.connected(v.slot))
            .collect();
        peers.sort_by_key(|v| std::cmp::Reverse(status.matched.get(v).copied().unwrap_or(0)));
        if peers.len() > 1 {
            if let Some(last) = self.last_handover_to {
                peers.retain(|v| v.slot != last);
            }
        }
        let best = *peers
            .first()
            .ok_or_else(|| "no reachable peer to hand over to".to_string())?;
        self.last_handover_to = Some(best.slot);
        self.replica.transfer_leader(best);
        self.migrating = Some((best.slot, Instant::now()));
        self.planned_handover_at = Some(Instant::now());
        tracing::info!(to = best.slot, why, "handing the primary role over");
        Ok(best.slot)
    }

    fn update_metrics(&self) {
        let report = self.report_with(false);
        self.metrics.observe_report(&report);
        let depth: usize = self.held.values().map(Vec::len).sum();
        self.metrics.set_capture(
            &self.service.name,
            depth as u64,
            self.capture.stats().overruns,
        );
    }

    /// The status report; the state hash (which walks the whole service
    /// state) only when asked.
    fn report_with(&self, with_hash: bool) -> NodeReport {
        let status = self.replica.status();
        let role = match (status.role, self.serving) {
            (StateRole::Leader, Serving::Yes) => "primary",
            (StateRole::Leader, _) => "primary-elect",
            (StateRole::Candidate | StateRole::PreCandidate, _) => "candidate",
            (StateRole::Follower, _) if !status.voters.contains(&self.me) => "learner",
            (StateRole::Follower, _) => "clone",
        };
        let peers = status
            .matched
            .iter()
            .filter(|(id, _)| **id != self.me)
            .map(|(id, matched)| PeerReport {
                slot: id.slot,
                incarnation: id.incarnation,
                matched: *matched,
                lag: status.commit.saturating_sub(*matched),
                connected: self.transport.connected(id.slot),
            })
            .collect();
        let stats = self.group.stats();
        let memory = self.group.memory();
        let envelopes = status.envelopes;
        let mut counters = self.counters.clone();
        let transport = self.transport.stats();
        counters.auth_rejected = envelopes.rejected();
        counters.replayed = envelopes.replayed;
        counters.forged = envelopes.bad_mac;
        counters.wrong_incarnation =
            envelopes.stale_incarnation + envelopes.stale_sender + envelopes.wrong_recipient;
        counters.malformed = envelopes.malformed;
        counters.bad_frames = transport.bad_frames;
        counters.hellos_malformed = transport.hellos_malformed;
        counters.hellos_forged = transport.hellos_forged;
        counters.hellos_replayed = transport.hellos_replayed;
        counters.hello_timeouts = transport.hello_timeouts;
        counters.strangers_evicted = transport.strangers_evicted;
        counters.shadow_mismatches = self.sockets.stats().mismatches;
        counters.lease_refresh_errors = self.fence.refresh_errors();
        NodeReport {
            slot: self.me.slot,
            incarnation: self.me.incarnation,
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            role: role.into(),
            draining: self.draining,
            health: {
                let h = self.supervisor.health();
                if let Some(lost) = &self.state_lost {
                    format!("unhealthy: {lost}")
                } else if h.healthy {
                    "healthy".into()
                } else {
                    format!("unhealthy: {}", h.reason)
                }
            },
            term: status.term,
            leader: status.leader.map(|l| l.slot),
            commit_index: status.commit,
            applied_index: status.applied,
            log_first: status.log.0,
            log_last: status.log.1,
            log_entries: status.log.1.saturating_sub(status.log.0) + 1,
            snapshot_index: status.snapshot_index,
            snapshot_age_s: self.last_snapshot.map(|at| at.elapsed().as_secs()),
            voters: status
                .voters
                .iter()
                .map(|v| format!("{}.{}", v.slot, v.incarnation))
                .collect(),
            learners: status
                .learners
                .iter()
                .map(|v| format!("{}.{}", v.slot, v.incarnation))
                .collect(),
            peers,
            service: ServiceReport {
                name: self.service.name.clone(),
                kind: services::kind_name(self.service.kind).into(),
                vip: self.service.vip.clone(),
                port: self.service.port,
                holds_vip: self.serving == Serving::Yes,
                connections: self.group.shadow().len() as u64,
                sockets: self.sockets.len() as u64,
                state_hash: if with_hash {
                    format!("{:016x}", self.group.state_hash())
                } else {
                    String::new()
                },
                entries_applied: stats.entries,
                packets_applied: stats.packets,
                opened: stats.opened,
                closed: stats.closed,
                service_panics: self.group.panics(),
                memory_used: memory.used,
                memory_limit: memory.limit,
                output_overflows: self.group.output_overflows(),
            },
            counters,
        }
    }

    /// Leaving: a primary steps down first so its clients are kept for the
    /// next one (no FIN, no RST).
    fn shutdown(&mut self) {
        self.step_down("shutting down");
        if self.vip_remove_at.is_some() {
            self.remove_vip();
        }
        if let Err(err) = self.rules.remove() {
            tracing::warn!(%err, "removing the capture rules");
        }
        tracing::info!("node stopped");
    }
}

/// Destroys sockets left on VIP:port by an earlier daemon on this node.
fn clear_leftovers(vip: Ipv4Addr, port: u16) {
    match tandem_sys::sockdestroy::destroy_connections(vip, port) {
        Ok(0) => {}
        Ok(n) => tracing::info!(sockets = n, "destroyed leftover sockets on the VIP"),
        Err(err) => tracing::warn!(%err, "cannot destroy leftover sockets on the VIP"),
    }
}

/// The SDK's seed: the same on every replica of a service.
fn group_seed(name: &str) -> u64 {
    let mut h = tandem_core::shadow::hash::Fnv64::new();
    h.bytes(name.as_bytes());
    h.finish()
}

/// The primary's clock for entry timestamps (ms since the epoch); the SDK
/// makes time monotonic across primaries.
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The public fingerprints of a keyring's keys, the one sent with first.
fn fingerprints(keys: &tandem_replica::Keyring) -> String {
    keys.accepted()
        .iter()
        .map(|k| k.fingerprint())
        .collect::<Vec<_>>()
        .join(", accepting ")
}
