//! The node daemon (`tandem node --config FILE`): one process, one service,
//! one single-threaded event loop — the driver of a
//! [`NodeMachine`](crate::machine::NodeMachine).
//!
//! Every decision is the machine's (classification and proposals, commit
//! before verdict, apply, serving and stepping down, the barrier before
//! serving, the takeover plan and what a failed step leads to, the lease
//! entitlement, handovers, snapshot policy, migrations). The daemon owns
//! the file descriptors and threads and performs what the machine asks, in
//! the order it asks:
//! - readiness events and a 10 ms tick feed it replication frames, raft
//!   ticks and captured packets (NFQUEUE), and it sends the replication
//!   messages, verdicts, socket effects and raw packets it returns;
//! - a takeover is carried out here step by step (the lease, connections
//!   rebuilt in repair mode on two threads while heartbeats go out, the
//!   listener, the VIP, the gratuitous ARP, the sockets going live), and
//!   its outcome goes back to the machine, which decides what follows a
//!   failed step (release, retry, hand on);
//! - a step-down revokes the lease, removes the VIP (now, or after a
//!   planned handover a little later) and closes the sockets in repair
//!   mode;
//! - snapshots are copied and encoded off the loop's thread, the status
//!   hash too; the admin socket (`tandem status`, `migrate`, `drain`,
//!   `reload-keys`) and the metrics are served here.

mod fence;
/// The kernel lease a primary holds (see `fence`): how long a dead or cut-off
/// primary's kernel may still answer for the VIP.
pub use fence::LEASE;
mod sockets;
mod supervise;

use crate::admin::{AdminReply, AdminRequest, AdminServer};
use crate::capture::{direction_of, CaptureLoop, Decision};
use crate::config::{Config, ServiceSection};
use crate::faults::TakeoverStep;
use crate::group::ServiceGroup;
use crate::machine::intake::{Captured, NodeEffect, RawPacket};
use crate::machine::leadership::{Action as LeadershipAction, VipRelease};
use crate::machine::takeover::RestorePlan;
use crate::machine::{NodeMachine, NodeSetup, ReadyReport, Request, SnapshotPolicy, Time};
use crate::proposer::Proposer;
use crate::report::{NodeReport, PeerReport, ServiceReport};
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
use tandem_core::classify::{SynGuard, SynLimiter};
use tandem_core::shadow::{ConnKey, ShadowConfig};
use tandem_replica::{NodeId, Replica, StateRole};
use tandem_sys::capture::{detect_backend, CaptureRules};
use tandem_sys::nfqueue::{NfQueue, QueueConfig};

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

/// A connection rebuilt in repair mode at takeover, waiting to go live.
struct Rebuilt {
    key: ConnKey,
    socket: Result<tandem_sys::tcp_repair::Prepared, tandem_sys::tcp_repair::RepairError>,
    /// Our FIN is part of it (the service had closed).
    fin: bool,
    /// The client's FIN was received (the service was told).
    peer_closed: bool,
    /// Segments to send from a raw socket once it is live.
    replay: Vec<Vec<u8>>,
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
    #[error("{0}")]
    Disagrees(String),
    #[error(transparent)]
    Injected(#[from] crate::faults::InjectedFault),
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

/// The whole daemon state, owned by the loop.
struct Daemon {
    config: Config,
    service: ServiceSection,
    vip: Ipv4Addr,
    prefix_len: u8,
    me: NodeId,
    started: Instant,
    /// Where Raft's hard state is saved (`Request::SaveHardState`).
    hard_state_path: std::path::PathBuf,
    /// An error that must stop the daemon, found while performing the
    /// machine's requests (saving the hard state): nothing after it is
    /// performed, and the loop returns it.
    fatal: Option<DaemonError>,
    poll: Poll,
    /// Every decision: the replica, the group, the packet path, who serves.
    machine: NodeMachine,
    transport: Transport,
    admin: AdminServer,
    shadow_config: ShadowConfig,
    capture: CaptureLoop,
    rules: CaptureRules,
    sockets: KernelSockets,
    fence: Fence,
    netlink: tandem_sys::addr::Netlink,
    interface: tandem_sys::addr::Interface,
    garp: tandem_sys::arp::GarpSender,
    /// Replication bodies go in clear (benchmarks only; fixed at start).
    unencrypted: bool,
    supervisor: Supervisor,
    last_handover_to: Option<u16>,
    raw: Option<tandem_sys::rawsock::RawIpv4Sender>,
    metrics: Arc<crate::metrics::Metrics>,
    _metrics_server: Option<crate::metrics::MetricsServer>,
    last_metrics: Instant,
    /// When this node last became leader (a takeover's duration counts
    /// from there), and a planned migration it started: (target, when).
    elected_at: Option<Instant>,
    migrating: Option<(u16, Instant)>,
    /// Takeover steps an operator or a test armed to fail (`tandem
    /// fault`); consulted after each step of `take_over`.
    faults: crate::faults::TakeoverFaults,
    last_snapshot: Option<Instant>,
    /// A snapshot copied from the state and being encoded on another
    /// thread (`maybe_snapshot`).
    snapshot_job: Option<SnapshotJob>,
    last_sweep: Instant,
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
        let machine = NodeMachine::new(
            NodeSetup {
                me,
                vip,
                kind: service.kind,
                service_options: service.service_options(),
                shadow: shadow_config,
                limits: service.limits(),
                group_seed: group_seed(&service.name),
                takeover: config.supervision.takeover_policy(LEASE),
                snapshot: SnapshotPolicy {
                    every_payloads: SNAPSHOT_EVERY_PAYLOADS,
                    every_ms: SNAPSHOT_EVERY.as_millis() as u64,
                },
                proposer: Proposer::new(MAX_ENTRY_BYTES, LAZY_LOG_MS),
                syn_guard,
                rst_limiter,
            },
            replica,
        );
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
            machine,
            transport,
            admin,
            shadow_config,
            capture: CaptureLoop::new(queue),
            rules,
            fence,
            netlink,
            interface,
            garp,
            metrics,
            _metrics_server: metrics_server,
            last_metrics: Instant::now(),
            elected_at: None,
            faults: crate::faults::TakeoverFaults::default(),
            migrating: None,
            raw: tandem_sys::rawsock::RawIpv4Sender::open()
                .map_err(
                    |err| tracing::warn!(%err, "no raw socket: logged SYN-ACKs cannot be replayed"),
                )
                .ok(),
            unencrypted,
            supervisor,
            last_handover_to: None,
            last_snapshot: None,
            snapshot_job: None,
            last_sweep: Instant::now(),
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
            let received_at = self.time();
            for frame in frames.drain(..) {
                // Rejections are counted by the replica's inbox.
                let _ = self.machine.handle_frame(received_at, &frame);
            }
            let now = Instant::now();
            // Ticks missed while the process was not running (a hang, a
            // stall) are not replayed in a burst: that would time out an
            // election at once, though a leader's message may have just
            // arrived in this very turn.
            let mut ticked = 0;
            while now >= next_tick && ticked < MAX_CATCH_UP_TICKS {
                self.machine.handle_tick();
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

    /// The machine's clocks now: monotonic (ms since start) and wall.
    fn time(&self) -> Time {
        let instant = Instant::now();
        Time {
            instant,
            mono_ms: instant.saturating_duration_since(self.started).as_millis() as u64,
            wall_ms: wall_ms(),
        }
    }

    fn proposer_waiting(&self) -> bool {
        self.machine.is_serving()
    }

    /// Reads the capture queue until it is empty; the machine decides each
    /// packet's fate.
    fn on_capture(&mut self) {
        let mut errors = 0u32;
        loop {
            let t = self.time();
            let machine = &mut self.machine;
            let result = self.capture.poll(|packet, parsed| {
                let captured = Captured {
                    id: packet.id,
                    direction: direction_of(packet),
                    bytes: &packet.payload,
                };
                match machine.handle_packet(t, captured, parsed.as_ref().ok()) {
                    Some(verdict) => Decision::Verdict(kernel_verdict(verdict)),
                    None => Decision::Hold,
                }
            });
            self.machine.finish_capture(t);
            self.perform_requests();
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
    }

    /// Performs every request the machine has already decided, in order.
    fn perform_requests(&mut self) {
        while self.fatal.is_none() {
            let Some(request) = self.machine.poll_request() else {
                break;
            };
            self.perform(request);
        }
    }

    /// Carries out one request of the machine; a takeover's outcome goes
    /// back to it at once.
    fn perform(&mut self, request: Request) {
        match request {
            Request::SaveHardState(hard_state) => {
                if let Err(source) =
                    tandem_replica::save_hard_state(&self.hard_state_path, &hard_state)
                {
                    self.fatal = Some(DaemonError::Io {
                        what: format!("saving {}", self.hard_state_path.display()),
                        source,
                    });
                }
            }
            Request::Send { to, bytes } => {
                self.transport.send(self.poll.registry(), to.slot, &bytes)
            }
            Request::Effect(NodeEffect::Verdicts(verdicts)) => {
                let verdicts: Vec<(u32, tandem_sys::nfqueue::Verdict)> = verdicts
                    .into_iter()
                    .map(|(id, v)| (id, kernel_verdict(v)))
                    .collect();
                if let Err(err) = self.capture.release(&verdicts) {
                    tracing::warn!(%err, "giving held packets their verdicts");
                }
            }
            Request::Effect(NodeEffect::Socket(effect)) => {
                self.sockets.apply(self.poll.registry(), effect)
            }
            Request::Effect(NodeEffect::Raw { to, bytes, what }) => {
                let Some(raw) = &self.raw else { return };
                let counters = self.machine.counters_mut();
                match (raw.send(&bytes, to), what) {
                    (Ok(()), RawPacket::Reset) => counters.resets_sent += 1,
                    (Ok(()), RawPacket::SynAckReplay) => counters.synacks_replayed += 1,
                    (Ok(()), RawPacket::HandedOver) => {}
                    (Err(err), RawPacket::SynAckReplay) => {
                        tracing::warn!(%err, "replaying a logged SYN-ACK")
                    }
                    (Err(err), RawPacket::Reset) => tracing::debug!(%err, "sending a RST"),
                    (Err(err), RawPacket::HandedOver) => {
                        tracing::debug!(%err, "re-injecting a handed-over packet")
                    }
                }
            }
            Request::Leadership(LeadershipAction::TakeOver { attempt, vip_kept }) => {
                match self.take_over(vip_kept) {
                    Ok(()) => self.machine.handle_takeover_done(),
                    Err(err) => {
                        tracing::error!(%err, attempt, "taking over failed; releasing what was taken");
                        let t = self.time();
                        self.machine.handle_takeover_failed(t, &err.to_string());
                    }
                }
            }
            Request::Leadership(LeadershipAction::StepDown { why, vip, .. }) => {
                self.step_down(why.as_str(), vip)
            }
            Request::Leadership(LeadershipAction::RemoveVip) => self.remove_vip(),
            Request::Leadership(LeadershipAction::HandOver { why }) => {
                if let Err(err) = self.hand_over(why) {
                    tracing::warn!(%err, why, "cannot hand the primary role over yet");
                }
            }
            // The machine told the replica itself.
            Request::Leadership(LeadershipAction::RefuseLeadership(_)) => {}
        }
    }

    fn remove_vip(&mut self) {
        if let Err(err) =
            self.netlink
                .remove_address(&self.interface, IpAddr::V4(self.vip), self.prefix_len)
        {
            tracing::warn!(%err, "removing the VIP");
        }
    }

    /// What only the primary does each turn: flush lazy log items, fire due
    /// timers, report clients the kernel gave up on, keep the lease.
    fn primary_duties(&mut self, now: Instant) {
        if !self.machine.is_serving() {
            return;
        }
        let sweep = now.duration_since(self.last_sweep) > Duration::from_secs(1);
        if sweep {
            self.last_sweep = now;
            let group = self.machine.group();
            self.sockets.sweep_pending(|key| group.knows(key));
        }
        let gave_up = self.sockets.take_gave_up();
        let t = self.time();
        self.machine.primary_duties(t, gave_up, sweep);
        self.perform_requests();
        // Entitled to the lease only as long as a quorum has acknowledged
        // this term's leadership within it (docs/architecture.md §3.8,
        // docs/membership.md): a primary cut off, or frozen and then woken
        // up, never re-grants itself the VIP.
        if let Some(acked) = self.machine.lease_entitled() {
            self.fence
                .entitle(self.started + Duration::from_millis(acked));
        }
    }

    /// Hands the replica's output to the world until it has nothing more,
    /// then lets the machine decide what follows.
    fn drive_replica(&mut self) {
        for _ in 0..64 {
            if !self.machine.has_ready() {
                break;
            }
            let started = Instant::now();
            let report = self.machine.handle_ready(self.time());
            let made = started.elapsed();
            self.perform_requests();
            if self.fatal.is_some() {
                return;
            }
            self.machine.advance();
            self.after_one_ready(&report);
            if started.elapsed() >= self.held_up_warning / 2 {
                tracing::info!(
                    ready_ms = made.as_secs_f64() * 1e3,
                    handled_ms = (started.elapsed() - made).as_secs_f64() * 1e3,
                    messages = report.messages,
                    bytes = report.message_bytes,
                    committed = report.applied.entries,
                    "long raft ready"
                );
            }
        }
        let t = self.time();
        self.machine
            .after_ready(t, self.supervisor.health().healthy);
        loop {
            self.perform_requests();
            if self.fatal.is_some() {
                return;
            }
            let Some(decided) = self.machine.poll_decision(self.time()) else {
                break;
            };
            self.perform(decided);
        }
    }

    /// Logs and metrics of one ready.
    fn after_one_ready(&mut self, report: &ReadyReport) {
        let name = &self.service.name;
        self.metrics
            .add_committed(name, report.applied.entries, report.applied.bytes);
        for latency in &report.applied.latencies {
            self.metrics
                .observe_commit_latency(name, latency.as_secs_f64());
        }
        match &report.installed {
            Some(Ok(index)) => tracing::info!(index, "snapshot installed"),
            Some(Err(why)) => tracing::error!(
                %why,
                "cannot install a snapshot: this node's state is lost; it stops applying, \
                 refuses leadership, reports unhealthy and asks the leader for a snapshot again \
                 every second until one installs"
            ),
            None => {}
        }
        if let Some(why) = self.machine.disagreement() {
            // Nothing more can be applied here: stop, naming what differs,
            // so the operator (or a supervisor's failed unit) sees why.
            self.fatal = Some(DaemonError::Disagrees(why.to_string()));
        }
        if let (Some((to, at)), Some(leader)) = (self.migrating, report.leader) {
            if report.leader_changed && leader.slot == to {
                self.metrics
                    .observe_migration(name, at.elapsed().as_secs_f64());
                self.migrating = None;
            }
        }
        if report.role_changed || report.leader_changed {
            tracing::info!(
                role = ?report.role,
                term = report.term,
                leader = ?report.leader.map(|l| l.slot),
                "raft role"
            );
        }
        if report.role_changed && report.role == Some(StateRole::Leader) {
            self.elected_at = Some(Instant::now());
        }
    }

    /// The new primary takes up the service (docs/architecture.md §3.5 in the order that
    /// never lets a packet through unlogged; capture has been on since
    /// start-up): connections rebuilt in repair mode while the lease is
    /// granted, listener, VIP, gratuitous ARP, then the connections go live.
    fn take_over(&mut self, vip_kept: bool) -> Result<(), DaemonError> {
        let started = Instant::now();
        // The barrier committed, so a quorum has acknowledged this term.
        let acked = self
            .machine
            .quorum_acked()
            .map_or(self.started, |ms| self.started + Duration::from_millis(ms));
        let lease = self.fence.grant_in_background(acked);
        // Rebuild every connection the log knows, silent until announced.
        let prepared = self.prepare_connections();
        let prepare_ms = started.elapsed().as_secs_f64() * 1e3;
        let addr = SocketAddr::new(IpAddr::V4(self.vip), self.service.port);
        let listening = self
            .sockets
            .listen(self.poll.registry(), addr, self.service.window_clamp)
            .map_err(io_err(format!("listening on {addr}")));
        // Joined whatever happened: a grant finishing after the step-down
        // that releases a failed takeover would leave the lease on.
        let leased = lease.join().unwrap_or_else(|_| {
            Err(tandem_sys::guard::GuardError::Refused {
                what: "lease",
                stderr: "the lease thread panicked".into(),
            })
        });
        // Each step's injected fault (`crate::faults`) comes after the real
        // call succeeded, so the release has what it took to release.
        listening?;
        leased?;
        self.faults.check(TakeoverStep::Lease)?;
        self.faults.check(TakeoverStep::Listen)?;
        let lease_ms = started.elapsed().as_secs_f64() * 1e3;
        if !vip_kept
            || !self
                .netlink
                .has_address(&self.interface, IpAddr::V4(self.vip))?
        {
            self.netlink
                .add_address(&self.interface, IpAddr::V4(self.vip), self.prefix_len)?;
        }
        self.faults.check(TakeoverStep::Vip)?;
        self.garp
            .announce(self.vip, tandem_sys::arp::GarpSchedule::default())?;
        self.faults.check(TakeoverStep::Arp)?;
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
        let counters = self.machine.counters_mut();
        counters.connections_restored += restored;
        counters.restore_failures += failed;
        // The rebuilt sockets are live and adopted: a failure here leaves
        // the step-down to close them in repair mode.
        self.faults.check(TakeoverStep::Sockets)?;
        if let Some(raw) = &self.raw {
            for (client, packet) in &replays {
                if let Err(err) = raw.send(packet, *client) {
                    tracing::debug!(%err, "replaying output at takeover");
                }
            }
        }
        let since_elected = self.elected_at.map_or(started.elapsed(), |at| at.elapsed());
        self.metrics
            .observe_failover(&self.service.name, since_elected.as_secs_f64());
        tracing::info!(
            term = self.machine.replica().term(),
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
    /// step 4), in the order of the machine's plan, built on two threads;
    /// nothing is sent until each goes live after the VIP is announced.
    fn prepare_connections(&mut self) -> Vec<Rebuilt> {
        let plan = self.machine.takeover_plan(self.time());
        let images = plan.connections;
        if images.is_empty() {
            return Vec::new();
        }
        let options = tandem_sys::tcp_repair::RestoreOptions::default();
        let build = |part: &[RestorePlan]| {
            part.iter()
                .map(|planned| Rebuilt {
                    key: planned.key,
                    socket: tandem_sys::tcp_repair::prepare(&planned.image, &options),
                    fin: planned.fin,
                    peer_closed: planned.peer_closed,
                    replay: planned.replay.clone(),
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
                    self.machine.counters_mut().restore_failures += 1;
                    tracing::warn!(client = %rebuilt.key.client, %err, "cannot rebuild a connection");
                }
            }
        }
        prepared
    }

    /// Sends heartbeats at once, outside the tick: for the leader's loop
    /// while it is held up by a takeover (see `Replica::heartbeats_now`).
    fn send_heartbeats(&mut self) {
        for (to, bytes) in self.machine.replica_mut().heartbeats_now() {
            self.transport.send(self.poll.registry(), to.slot, &bytes);
        }
    }

    /// Stops serving (the machine has already dropped what it held); the
    /// next primary takes the clients over.
    fn step_down(&mut self, why: &str, vip: VipRelease) {
        if let Err(err) = self.fence.revoke() {
            tracing::warn!(%err, "revoking the lease");
        }
        // The takeover's repeated announcement must not pull the clients
        // back here after another node took the VIP.
        self.garp.cancel();
        match vip {
            // A planned handover to a reachable peer: the VIP goes a moment
            // later. The lease is revoked, so this kernel is already silent
            // on it; until the clients' ARP caches follow the next primary's
            // announcement their packets still arrive here, where they are
            // captured and handed over instead of waiting for the clients'
            // retransmission timers.
            VipRelease::Later => {}
            VipRelease::Now => self.remove_vip(),
        }
        self.sockets.close_all_silently(self.poll.registry());
        tracing::info!(why, "primary: stepped down");
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
            match self.machine.compact(index, job.payloads, data) {
                Ok(()) => {
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
        let Some(applied) = self.machine.snapshot_due(self.time()) else {
            return;
        };
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
            payloads: self.machine.payloads_applied(),
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
        let group = std::sync::Mutex::new(std::mem::replace(self.machine.group_mut(), stand_in));
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
        *self.machine.group_mut() = group
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
                self.machine.leadership_mut().set_draining(true);
                tracing::info!("drained: this node gives up and refuses the primary role");
                let message = if self.machine.replica().role() == StateRole::Leader {
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
            AdminRequest::Fault { step, times } => {
                self.faults.arm(step, times);
                tracing::warn!(%step, times, "fault injection: takeovers will fail at this step");
                let message = if times == 0 {
                    format!(
                        "node {}: the takeover step {step} no longer fails",
                        self.me.slot
                    )
                } else {
                    format!(
                        "node {}: its next {times} takeover(s) fail at the step {step}",
                        self.me.slot
                    )
                };
                AdminReply::Done { message }
            }
            AdminRequest::Undrain => {
                self.machine.leadership_mut().set_draining(false);
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
        self.machine.replica_mut().set_keys(keys.clone());
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
        let t = self.time();
        match self.machine.migrate_to(t, slot, MAX_TRANSFER_LAG)? {
            None => Ok(format!("node {slot} is already the primary")),
            Some(_) => {
                self.migrating = Some((slot, Instant::now()));
                tracing::info!(to = slot, "planned migration: leadership transfer started");
                Ok(format!(
                    "primary moving from node {} to node {slot}",
                    self.me.slot
                ))
            }
        }
    }

    /// Hands leadership to the most caught-up reachable peer (drain, or
    /// unhealthy). A peer that refuses (drained or unhealthy itself) lets
    /// the transfer time out; the next attempt then tries another one.
    fn hand_over(&mut self, why: &str) -> Result<u16, String> {
        let transport = &self.transport;
        let t = self.time();
        let best =
            self.machine
                .hand_over(t, |slot| transport.connected(slot), self.last_handover_to)?;
        self.last_handover_to = Some(best.slot);
        self.migrating = Some((best.slot, Instant::now()));
        tracing::info!(to = best.slot, why, "handing the primary role over");
        Ok(best.slot)
    }

    fn update_metrics(&self) {
        let report = self.report_with(false);
        self.metrics.observe_report(&report);
        let depth = self.machine.intake().held_count();
        self.metrics.set_capture(
            &self.service.name,
            depth as u64,
            self.capture.stats().overruns,
        );
    }

    /// The status report; the state hash (which walks the whole service
    /// state) only when asked.
    fn report_with(&self, with_hash: bool) -> NodeReport {
        let status = self.machine.replica().status();
        let role = match (status.role, self.machine.is_serving()) {
            (StateRole::Leader, true) => "primary",
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
        let stats = self.machine.group().stats();
        let memory = self.machine.group().memory();
        let envelopes = status.envelopes;
        let mut counters = self.machine.counters().clone();
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
        counters.faults_injected = self.faults.injected();
        NodeReport {
            slot: self.me.slot,
            incarnation: self.me.incarnation,
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            role: role.into(),
            draining: self.machine.leadership().draining(),
            health: {
                let h = self.supervisor.health();
                if let Some(why) = self.machine.leadership().unfit_reason(self.time().mono_ms) {
                    format!("unhealthy: {why}")
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
                holds_vip: self.machine.is_serving(),
                connections: self.machine.group().shadow().len() as u64,
                sockets: self.sockets.len() as u64,
                state_hash: if with_hash {
                    format!("{:016x}", self.machine.group().state_hash())
                } else {
                    String::new()
                },
                entries_applied: stats.entries,
                packets_applied: stats.packets,
                opened: stats.opened,
                closed: stats.closed,
                service_panics: self.machine.group().panics(),
                memory_used: memory.used,
                memory_limit: memory.limit,
                output_overflows: self.machine.group().output_overflows(),
            },
            counters,
            takeover_faults: self.faults.armed(),
        }
    }

    /// Leaving: a primary steps down first so its clients are kept for the
    /// next one (no FIN, no RST).
    fn shutdown(&mut self) {
        let t = self.time();
        self.machine.handle_shutdown(t);
        self.perform_requests();
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

/// The machine's verdict as NFQUEUE's.
fn kernel_verdict(verdict: crate::machine::Verdict) -> tandem_sys::nfqueue::Verdict {
    match verdict {
        crate::machine::Verdict::Accept => tandem_sys::nfqueue::Verdict::Accept,
        crate::machine::Verdict::Drop => tandem_sys::nfqueue::Verdict::Drop,
    }
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
