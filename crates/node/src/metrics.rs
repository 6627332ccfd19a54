//! The node's Prometheus endpoint: what the daemon tracks, as metric
//! families of the `prometheus-client` crate, and a tiny HTTP server that
//! answers `GET /metrics` with them.
//!
//! Every family is named `tandem_*`, with its unit in the name (`_seconds`,
//! `_bytes`, `_entries`) and `_total` on counters, as Prometheus conventions
//! want. Per-service families carry a `service` label (the daemon runs one
//! service today; the label keeps the names stable when it runs more), per-
//! peer ones a `peer` label (the peer's slot).
//!
//! Counters the daemon already keeps as running totals (authentication
//! failures, shadow/kernel mismatches, capture overflows) are real
//! Prometheus counters: a `set_*` call raises the counter to the total it is
//! given (an atomic `fetch_max`), so it never goes down and `rate()` works.
//! Counters of events the daemon reports one at a time (entries committed,
//! failovers, migrations) are incremented by the calls that report them.
//!
//! All methods take `&self`: the metrics are atomics behind the families'
//! locks, so a `Arc<Metrics>` is shared by the daemon (which updates it)
//! and the server thread (which encodes it on each scrape).
//!
//! [`serve`] runs the endpoint on its own thread with a std `TcpListener`:
//! `GET /metrics` (or `HEAD`) answers 200 in the Prometheus text format
//! 0.0.4, or in OpenMetrics text when the scraper asks for it in `Accept`;
//! any other path answers 404, any other method 405, a malformed request
//! 400. One request per connection, 2 s to send it. Dropping the
//! [`MetricsServer`] stops the thread.

use crate::report::NodeReport;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// The roles a node reports (see [`NodeReport::role`]); `tandem_role` has
/// one series per role, 1 for the current one and 0 for the others.
pub const ROLES: [&str; 5] = ["primary", "primary-elect", "candidate", "clone", "learner"];

/// Commit latency buckets: 100 µs to 1 s, 1-2.5-5 per decade.
pub const COMMIT_LATENCY_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Failover and migration duration buckets: 10 ms to 30 s.
pub const HANDOVER_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    service: String,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    service: String,
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    service: String,
    step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    slot: String,
    incarnation: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn commit_latency_histogram() -> Histogram {
    Histogram::new(COMMIT_LATENCY_BUCKETS)
}

fn handover_histogram() -> Histogram {
    Histogram::new(HANDOVER_BUCKETS)
}

fn service_labels(name: &str) -> ServiceLabels {
    ServiceLabels {
        service: name.to_string(),
    }
}

fn peer(service: &str, slot: u16) -> PeerLabels {
    PeerLabels {
        service: service.to_string(),
        peer: slot.to_string(),
    }
}

/// Raises a counter to a running total kept elsewhere (never lowers it).
fn raise(counter: &Counter, total: u64) {
    counter.inner().fetch_max(total, Ordering::Relaxed);
}

fn gauge_u64(gauge: &Gauge, value: u64) {
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
}

/// The node's metrics (see the module documentation).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    node_info: Family<NodeLabels, Gauge>,
    role: Family<RoleLabels, Gauge>,
    term: Family<ServiceLabels, Gauge>,
    leader: Family<ServiceLabels, Gauge>,
    commit_index: Family<ServiceLabels, Gauge>,
    applied_index: Family<ServiceLabels, Gauge>,
    commit_latency: HistogramFamily<ServiceLabels>,
    committed_entries: Family<ServiceLabels, Counter>,
    committed_bytes: Family<ServiceLabels, Counter>,
    log_entries: Family<ServiceLabels, Gauge>,
    snapshot_age: Family<ServiceLabels, FloatGauge>,
    peer_lag: Family<PeerLabels, Gauge>,
    peer_connected: Family<PeerLabels, Gauge>,
    capture_queue_depth: Family<ServiceLabels, Gauge>,
    capture_overflows: Family<ServiceLabels, Counter>,
    connections_open: Family<ServiceLabels, Gauge>,
    failovers: Family<ServiceLabels, Counter>,
    failover_duration: HistogramFamily<ServiceLabels>,
    migrations: Family<ServiceLabels, Counter>,
    migration_duration: HistogramFamily<ServiceLabels>,
    auth_failures: Counter,
    replication_rejected: Family<ReasonLabels, Counter>,
    shadow_mismatches: Family<ServiceLabels, Counter>,
    healthy: Family<ServiceLabels, Gauge>,
    draining: Family<ServiceLabels, Gauge>,
    memory_used: Family<ServiceLabels, Gauge>,
    memory_limit: Family<ServiceLabels, Gauge>,
    output_overflows: Family<ServiceLabels, Counter>,
    takeovers_failed: Family<ServiceLabels, Counter>,
    takeover_faults_armed: Family<StepLabels, Gauge>,
    /// Roles seen beyond [`ROLES`], so that setting one zeroes them too.
    extra_roles: Mutex<BTreeSet<String>>,
    /// Peers with a series now, per service, so that peers that left (or
    /// all of them, on a clone) lose theirs.
    peers: Mutex<BTreeMap<String, BTreeSet<u16>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every family registered, none with a series yet.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let node_info = Family::<NodeLabels, Gauge>::default();
        registry.register(
            "tandem_node_info",
            "Always 1; its labels tell which node answers: slot (its id in the cluster) and \
             incarnation (bumped at every start of the daemon)",
            node_info.clone(),
        );
        let role = Family::<RoleLabels, Gauge>::default();
        registry.register(
            "tandem_role",
            "1 for this node's current role in the service's replica group, 0 for the others: \
             primary (Raft leader, holds the VIP and serves), primary-elect (leader, not serving \
             yet), candidate (election under way), clone (follower), learner (restarted, \
             catching up). Exactly one primary per service means a healthy cluster",
            role.clone(),
        );
        let term = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "tandem_term",
            "Raft term this node is in; it grows by one (or more) at every election, so its \
             increase counts elections",
            term.clone(),
        );
        let leader = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "tandem_leader_slot",
            "Slot of the primary as this node knows it, 0 when it knows none (during an \
             election). Nodes that disagree for long point at a partition",
            leader.clone(),
        );
        let commit_index = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "tandem_commit_index",
            "Highest log index known to be stored on a majority (committed); whatever the \
             primary's kernel acknowledged to a client is at or below it",
            commit_index.clone(),
        );
        let applied_index = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "tandem_applied_index",
            "Highest log index applied to the service on this node; commit_index minus \
             applied_index is the apply backlog",
            applied_index.clone(),
        );
        let commit_latency =
            HistogramFamily::<ServiceLabels>::new_with_constructor(commit_latency_histogram);
        registry.register_with_unit(
            "tandem_commit_latency",
            "Time on the primary from proposing a log entry to its commit (one replication round \
             trip plus the disk, if any): clients' packets wait this long before the kernel sees \
             them",
            Unit::Seconds,
            commit_latency.clone(),
        );
        let committed_entries = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "tandem_committed_entries",
            "Log entries this node has seen committed (and applied); rate() is the write \
             throughput of the replica group in entries per second",
            committed_entries.clone(),
        );
        let committed_bytes = Family::<ServiceLabels, Counter>::default();
        registry.register_with_unit(
            "tandem_committed",
            "Bytes of log entries this node has seen committed: captured client packets and \
             control entries, encoded",
            Unit::Bytes,
            committed_bytes.clone(),
        );
        let log_entries = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "tandem_log_entries",
            "Entries held in the in-memory log (since the latest snapshot); snapshots keep it \
             bounded",
            log_entries.clone(),
        );
        let snapshot_age = Family::<ServiceLabels, FloatGauge>::default();
        registry.register_with_unit(
            "tandem_snapshot_age",
            "Time since this node took or installed its latest snapshot; absent before the \
             first one. A growing age with a growing log means snapshots are failing",
            Unit::Seconds,
            snapshot_age.clone(),
        );
        let peer_lag = Family::<PeerLabels, Gauge>::default();
        registry.register(
            "tandem_peer_lag_entries",
            "On the primary, per peer: commit index minus the highest index known to be in the \
             peer's log; 0 when caught up. A peer that lags far cannot take over at once, nor \
             be migrated to",
            peer_lag.clone(),
        );
        let peer_connected = Family::<PeerLabels, Gauge>::default();
        registry.register(
            "tandem_peer_connected",
            "On the primary, per peer: 1 when the replication transport has a live connection \
             to it",
            peer_connected.clone(),
        );
        let capture_queue_depth = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "tandem_capture_queue_depth",
            "Client packets captured (NFQUEUE) and held back from the kernel until their log \
             entry commits; it grows when commits are slow",
            capture_queue_depth.clone(),
        );
        let capture_overflows = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "tandem_capture_overflows",
            "Times the capture queue overflowed (the daemon fell behind reading it and the \
             kernel dropped a batch of packets: fail closed, clients retransmit)",
            capture_overflows.clone(),
        );
        let connections_open = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "tandem_connections_open",
            "Client connections shadow TCP tracks now; equal on every replica at equal applied \
             index",
            connections_open.clone(),
        );
        let failovers = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "tandem_failovers",
            "Times this node took the service over as its primary (the first election and the \
             target of a planned migration included)",
            failovers.clone(),
        );
        let failover_duration =
            HistogramFamily::<ServiceLabels>::new_with_constructor(handover_histogram);
        registry.register_with_unit(
            "tandem_failover_duration",
            "How long each take-over of this node lasted, from the start of the election it won \
             to serving on the VIP (clients see at most this pause plus the detection time)",
            Unit::Seconds,
            failover_duration.clone(),
        );
        let migrations = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "tandem_migrations",
            "Planned migrations (tandem migrate, drain, unhealthy hand-over) this node \
             completed as the primary handing the service over",
            migrations.clone(),
        );
        let migration_duration =
            HistogramFamily::<ServiceLabels>::new_with_constructor(handover_histogram);
        registry.register_with_unit(
            "tandem_migration_duration",
            "How long each planned migration away from this node lasted, from the leadership \
             transfer request to the new primary being known",
            Unit::Seconds,
            migration_duration.clone(),
        );
        let auth_failures = Counter::default();
        registry.register(
            "tandem_auth_failures",
            "Replication messages rejected by authentication: bad MAC, replayed, stale sender, \
             wrong destination, malformed. Any steady rate means a misconfigured key or an \
             attack",
            auth_failures.clone(),
        );
        let replication_rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "tandem_replication_rejected",
            "What the replication port refused, by reason: envelopes (forged, replayed, \
             wrong_incarnation, malformed), frames (bad_frame), and connections that never \
             authenticated (hello_malformed, hello_forged, hello_replayed, hello_timeout, \
             stranger_evicted)",
            replication_rejected.clone(),
        );
        let shadow_mismatches = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "tandem_shadow_mismatches",
            "Bytes the primary's kernel received that differ from what shadow TCP delivered \
             from the log. Must stay 0: any mismatch is a bug that would break failover",
            shadow_mismatches.clone(),
        );
        let healthy = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "tandem_healthy",
            "1 when supervision (link and check command) finds this node healthy; an unhealthy \
             node hands the primary role over and refuses it",
            healthy.clone(),
        );
        let draining = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "tandem_draining",
            "1 while this node is drained for maintenance (tandem drain): it never keeps the \
             primary role",
            draining.clone(),
        );
        let memory_used = Family::<ServiceLabels, Gauge>::default();
        registry.register_with_unit(
            "tandem_memory_used",
            "Accounted memory of the service group: service data + 4 KiB per connection + \
             queued output, computed from data sizes (equal on every replica)",
            Unit::Bytes,
            memory_used.clone(),
        );
        let memory_limit = Family::<ServiceLabels, Gauge>::default();
        registry.register_with_unit(
            "tandem_memory_limit",
            "The service group's memory budget (max_memory); over it kv refuses writes with -OOM",
            Unit::Bytes,
            memory_limit.clone(),
        );
        let output_overflows = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "tandem_output_overflows",
            "Client connections reset because their queued output would have passed output_cap",
            output_overflows.clone(),
        );
        let takeovers_failed = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "tandem_takeovers_failed",
            "Takeovers that failed at one of their steps (released, then retried or handed on), \
             injected failures (tandem fault) included",
            takeovers_failed.clone(),
        );
        let takeover_faults_armed = Family::<StepLabels, Gauge>::default();
        registry.register(
            "tandem_takeover_faults_armed",
            "Takeovers still to fail at this step (tandem fault --node N takeover-step STEP); 0 \
             unless someone is rehearsing a failed takeover",
            takeover_faults_armed.clone(),
        );
        Metrics {
            registry,
            node_info,
            role,
            term,
            leader,
            commit_index,
            applied_index,
            commit_latency,
            committed_entries,
            committed_bytes,
            log_entries,
            snapshot_age,
            peer_lag,
            peer_connected,
            capture_queue_depth,
            capture_overflows,
            connections_open,
            failovers,
            failover_duration,
            migrations,
            migration_duration,
            auth_failures,
            replication_rejected,
            shadow_mismatches,
            healthy,
            draining,
            memory_used,
            memory_limit,
            output_overflows,
            takeovers_failed,
            takeover_faults_armed,
            extra_roles: Mutex::new(BTreeSet::new()),
            peers: Mutex::new(BTreeMap::new()),
        }
    }

    /// Which node this is (`tandem_node_info`); call once at start.
    pub fn set_node(&self, slot: u16, incarnation: u64) {
        self.node_info.clear();
        self.node_info
            .get_or_create(&NodeLabels {
                slot: slot.to_string(),
                incarnation: incarnation.to_string(),
            })
            .set(1);
    }

    /// The node's role in `service`'s group: one of [`ROLES`] (another
    /// string gets its own series).
    pub fn set_role(&self, service: &str, role: &str) {
        let mut extra = self
            .extra_roles
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !ROLES.contains(&role) {
            extra.insert(role.to_string());
        }
        for r in ROLES
            .iter()
            .copied()
            .chain(extra.iter().map(String::as_str))
        {
            self.role
                .get_or_create(&RoleLabels {
                    service: service.to_string(),
                    role: r.to_string(),
                })
                .set(i64::from(r == role));
        }
    }

    /// The Raft term, and the primary's slot as this node knows it.
    pub fn set_term(&self, service: &str, term: u64, leader: Option<u16>) {
        gauge_u64(&self.term.get_or_create(&service_labels(service)), term);
        self.leader
            .get_or_create(&service_labels(service))
            .set(i64::from(leader.unwrap_or(0)));
    }

    /// Commit and applied indexes.
    pub fn set_indexes(&self, service: &str, commit: u64, applied: u64) {
        let labels = service_labels(service);
        gauge_u64(&self.commit_index.get_or_create(&labels), commit);
        gauge_u64(&self.applied_index.get_or_create(&labels), applied);
    }

    /// One proposal's time from propose to commit, on the primary.
    pub fn observe_commit_latency(&self, service: &str, seconds: f64) {
        self.commit_latency
            .get_or_create(&service_labels(service))
            .observe(seconds);
    }

    /// Entries newly committed and their size (add, not a total).
    pub fn add_committed(&self, service: &str, entries: u64, bytes: u64) {
        let labels = service_labels(service);
        self.committed_entries
            .get_or_create(&labels)
            .inc_by(entries);
        self.committed_bytes.get_or_create(&labels).inc_by(bytes);
    }

    /// The in-memory log's length, and the latest snapshot's age (`None`
    /// before the first: the series is removed).
    pub fn set_log(&self, service: &str, entries: u64, snapshot_age_seconds: Option<f64>) {
        let labels = service_labels(service);
        gauge_u64(&self.log_entries.get_or_create(&labels), entries);
        match snapshot_age_seconds {
            Some(age) => {
                self.snapshot_age.get_or_create(&labels).set(age);
            }
            None => {
                self.snapshot_age.remove(&labels);
            }
        }
    }

    /// One peer's replication lag (entries) and connection, on the
    /// primary. Prefer [`Metrics::set_peers`], which also forgets peers.
    pub fn set_peer_lag(&self, service: &str, peer_slot: u16, entries: u64, connected: bool) {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(service.to_string())
            .or_default()
            .insert(peer_slot);
        let labels = peer(service, peer_slot);
        gauge_u64(&self.peer_lag.get_or_create(&labels), entries);
        self.peer_connected
            .get_or_create(&labels)
            .set(i64::from(connected));
    }

    /// Every peer's `(slot, lag in entries, connected)`, replacing the
    /// previous set: on a clone pass none, and the series disappear.
    pub fn set_peers(&self, service: &str, peers: &[(u16, u64, bool)]) {
        let mut known = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let now: BTreeSet<u16> = peers.iter().map(|p| p.0).collect();
        let before = known.insert(service.to_string(), now).unwrap_or_default();
        drop(known);
        for gone in before.iter().filter(|s| !peers.iter().any(|p| p.0 == **s)) {
            let labels = peer(service, *gone);
            self.peer_lag.remove(&labels);
            self.peer_connected.remove(&labels);
        }
        for &(slot, lag, connected) in peers {
            let labels = peer(service, slot);
            gauge_u64(&self.peer_lag.get_or_create(&labels), lag);
            self.peer_connected
                .get_or_create(&labels)
                .set(i64::from(connected));
        }
    }

    /// Packets held awaiting commit now, and the capture queue's overflows
    /// so far (a running total: the counter is raised to it).
    pub fn set_capture(&self, service: &str, queue_depth: u64, overflows_total: u64) {
        let labels = service_labels(service);
        gauge_u64(
            &self.capture_queue_depth.get_or_create(&labels),
            queue_depth,
        );
        raise(
            &self.capture_overflows.get_or_create(&labels),
            overflows_total,
        );
    }

    /// Client connections open (shadow TCP's count).
    pub fn set_connections(&self, service: &str, open: u64) {
        gauge_u64(
            &self
                .connections_open
                .get_or_create(&service_labels(service)),
            open,
        );
    }

    /// This node took the service over (it serves now), `seconds` after
    /// the election it won began: counts it and records the duration.
    pub fn observe_failover(&self, service: &str, seconds: f64) {
        let labels = service_labels(service);
        self.failovers.get_or_create(&labels).inc();
        self.failover_duration
            .get_or_create(&labels)
            .observe(seconds);
    }

    /// A planned migration away from this node completed after `seconds`.
    pub fn observe_migration(&self, service: &str, seconds: f64) {
        let labels = service_labels(service);
        self.migrations.get_or_create(&labels).inc();
        self.migration_duration
            .get_or_create(&labels)
            .observe(seconds);
    }

    /// Replication messages rejected so far (a running total).
    pub fn set_auth_failures(&self, total: u64) {
        raise(&self.auth_failures, total);
    }

    /// What the replication port refused so far, by reason (running totals).
    pub fn set_replication_rejected(&self, counters: &crate::report::Counters) {
        let c = counters;
        for (reason, total) in [
            ("forged", c.forged),
            ("replayed", c.replayed),
            ("wrong_incarnation", c.wrong_incarnation),
            ("malformed", c.malformed),
            ("bad_frame", c.bad_frames),
            ("hello_malformed", c.hellos_malformed),
            ("hello_forged", c.hellos_forged),
            ("hello_replayed", c.hellos_replayed),
            ("hello_timeout", c.hello_timeouts),
            ("stranger_evicted", c.strangers_evicted),
        ] {
            let labels = ReasonLabels {
                reason: reason.into(),
            };
            raise(&self.replication_rejected.get_or_create(&labels), total);
        }
    }

    /// Shadow/kernel mismatches so far (a running total).
    pub fn set_shadow_mismatches(&self, service: &str, total: u64) {
        raise(
            &self
                .shadow_mismatches
                .get_or_create(&service_labels(service)),
            total,
        );
    }

    /// The group's accounted memory, its budget, and the output-cap resets
    /// so far (a running total).
    pub fn set_memory(&self, service: &str, used: u64, limit: u64, overflows: u64) {
        let labels = service_labels(service);
        gauge_u64(&self.memory_used.get_or_create(&labels), used);
        gauge_u64(&self.memory_limit.get_or_create(&labels), limit);
        raise(&self.output_overflows.get_or_create(&labels), overflows);
    }

    /// Failed takeovers so far (a running total), and the takeover faults
    /// armed now (`step` name to failures left; steps absent are 0).
    pub fn set_takeover_faults(&self, service: &str, failed: u64, armed: &BTreeMap<String, u32>) {
        raise(
            &self
                .takeovers_failed
                .get_or_create(&service_labels(service)),
            failed,
        );
        for step in crate::faults::TakeoverStep::ALL {
            let labels = StepLabels {
                service: service.to_string(),
                step: step.as_str().to_string(),
            };
            let left = armed.get(step.as_str()).copied().unwrap_or(0);
            self.takeover_faults_armed
                .get_or_create(&labels)
                .set(i64::from(left));
        }
    }

    /// Supervision's verdict and the drain flag.
    pub fn set_health(&self, service: &str, healthy: bool, draining: bool) {
        let labels = service_labels(service);
        self.healthy.get_or_create(&labels).set(i64::from(healthy));
        self.draining
            .get_or_create(&labels)
            .set(i64::from(draining));
    }

    /// Everything a [`NodeReport`] tells: node, role, term and leader,
    /// indexes, log and snapshot age, peers, connections, health,
    /// authentication failures and shadow mismatches. The event metrics
    /// (commit latency, entries and bytes committed, failovers, migrations,
    /// capture) are not in a report: the daemon reports them as they
    /// happen.
    pub fn observe_report(&self, report: &NodeReport) {
        let name = report.service.name.as_str();
        self.set_node(report.slot, report.incarnation);
        self.set_role(name, &report.role);
        self.set_term(name, report.term, report.leader);
        self.set_indexes(name, report.commit_index, report.applied_index);
        self.set_log(
            name,
            report.log_entries,
            report.snapshot_age_s.map(|s| s as f64),
        );
        let peers: Vec<(u16, u64, bool)> = report
            .peers
            .iter()
            .map(|p| (p.slot, p.lag, p.connected))
            .collect();
        self.set_peers(name, &peers);
        self.set_connections(name, report.service.connections);
        self.set_health(name, report.health == "healthy", report.draining);
        self.set_auth_failures(report.counters.auth_rejected);
        self.set_replication_rejected(&report.counters);
        self.set_shadow_mismatches(name, report.counters.shadow_mismatches);
        self.set_takeover_faults(
            name,
            report.counters.takeovers_failed,
            &report.takeover_faults,
        );
        self.set_memory(
            name,
            report.service.memory_used,
            report.service.memory_limit,
            report.service.output_overflows,
        );
    }

    /// The Prometheus text format (0.0.4).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The OpenMetrics text format (ends with `# EOF`).
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// `Content-Type` of [`Metrics::encode`].
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// `Content-Type` of [`Metrics::encode_openmetrics`].
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a client has to send its request (and to take the answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests longer than this are refused (400).
const MAX_REQUEST: usize = 8 * 1024;
/// How often the idle accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(50);

/// The running endpoint; dropping it stops the server thread.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// The address it listens on (the port chosen, for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Listens on `addr` and answers scrapes of `metrics` on a thread of its
/// own (see the module documentation) until the returned server is
/// dropped. Errors are those of binding the listener.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> io::Result<MetricsServer> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || accept_loop(&listener, &metrics, &stop))?
    };
    tracing::info!(%addr, "metrics: serving /metrics");
    Ok(MetricsServer {
        addr,
        stop,
        thread: Some(thread),
    })
}

fn accept_loop(listener: &TcpListener, metrics: &Metrics, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                // A panic here would be a bug; it must not end the endpoint.
                let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    handle(stream, metrics)
                }));
                match handled {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => tracing::debug!(%err, "metrics: a scrape failed"),
                    Err(_) => tracing::error!("metrics: answering a scrape panicked"),
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(ACCEPT_POLL);
            }
            Err(err) => {
                // EMFILE and the like: wait, then try again.
                tracing::warn!(%err, "metrics: accept");
                std::thread::sleep(ACCEPT_POLL);
            }
        }
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics { head: bool, openmetrics: bool },
    NotFound,
    MethodNotAllowed,
    Bad,
}

/// Parses a request head (request line and headers, without the blank
/// line that ends them).
fn parse_request(head: &[u8]) -> Request {
    let Ok(text) = std::str::from_utf8(head) else {
        return Request::Bad;
    };
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let Some(line) = lines.next() else {
        return Request::Bad;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad;
    };
    if method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
        || !matches!(version, "HTTP/1.0" | "HTTP/1.1")
    {
        return Request::Bad;
    }
    let mut openmetrics = false;
    for header in lines {
        let Some((name, value)) = header.split_once(':') else {
            return Request::Bad;
        };
        if name.is_empty() || name.contains(' ') {
            return Request::Bad;
        }
        if name.eq_ignore_ascii_case("accept") && value.contains("application/openmetrics-text") {
            openmetrics = true;
        }
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    if path != "/metrics" {
        return Request::NotFound;
    }
    match method {
        "GET" => Request::Metrics {
            head: false,
            openmetrics,
        },
        "HEAD" => Request::Metrics {
            head: true,
            openmetrics,
        },
        _ => Request::MethodNotAllowed,
    }
}

/// Reads the request head: up to the blank line, at most [`MAX_REQUEST`]
/// bytes. `None` when it never came complete.
fn read_head(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return Ok(Some(buf));
        }
        if buf.len() > MAX_REQUEST {
            return Ok(None);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None)
            }
            Err(err) => return Err(err),
        }
    }
}

/// Where the head ends (the start of its blank line), if it does.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn handle(mut stream: TcpStream, metrics: &Metrics) -> io::Result<()> {
    // The listener is non-blocking; the accepted socket must not be.
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let request = match read_head(&mut stream)? {
        Some(head) => parse_request(&head),
        None => Request::Bad,
    };
    let (status, content_type, body, head) = match request {
        Request::Metrics { head, openmetrics } => {
            if openmetrics {
                (
                    "200 OK",
                    OPENMETRICS_CONTENT_TYPE,
                    metrics.encode_openmetrics(),
                    head,
                )
            } else {
                ("200 OK", PROMETHEUS_CONTENT_TYPE, metrics.encode(), head)
            }
        }
        Request::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".to_string(),
            false,
        ),
        Request::MethodNotAllowed => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "method not allowed: use GET\n".to_string(),
            false,
        ),
        Request::Bad => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n".to_string(),
            false,
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        response.push_str("Allow: GET, HEAD\r\n");
    }
    response.push_str("\r\n");
    if !head {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes())?;
    stream.flush()?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // Closing with unread input would reset the connection, and the
    // client could lose the answer: read what is left, briefly.
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    while left > 0 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Counters, PeerReport, ServiceReport};

    fn get(addr: SocketAddr, request: &[u8]) -> (String, String) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(request).unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").expect("a complete response");
        (head.to_string(), body.to_string())
    }

    fn status_line(head: &str) -> &str {
        head.lines().next().unwrap()
    }

    fn report() -> NodeReport {
        NodeReport {
            slot: 2,
            incarnation: 7,
            pid: 1,
            uptime_s: 10,
            role: "primary".into(),
            draining: false,
            health: "healthy".into(),
            term: 5,
            leader: Some(2),
            commit_index: 120,
            applied_index: 118,
            log_first: 100,
            log_last: 120,
            log_entries: 21,
            snapshot_index: 99,
            snapshot_age_s: Some(30),
            voters: vec!["1.1".into(), "2.7".into(), "3.1".into()],
            learners: vec![],
            peers: vec![
                PeerReport {
                    slot: 1,
                    incarnation: 1,
                    matched: 120,
                    lag: 0,
                    connected: true,
                },
                PeerReport {
                    slot: 3,
                    incarnation: 1,
                    matched: 100,
                    lag: 20,
                    connected: false,
                },
            ],
            service: ServiceReport {
                name: "kv".into(),
                kind: "kv".into(),
                vip: "198.18.0.100/24".into(),
                port: 6379,
                holds_vip: true,
                connections: 4,
                sockets: 4,
                state_hash: "0".into(),
                entries_applied: 118,
                packets_applied: 300,
                opened: 5,
                closed: 1,
                service_panics: 0,
                memory_used: 0,
                memory_limit: 0,
                output_overflows: 0,
            },
            counters: Counters {
                auth_rejected: 3,
                shadow_mismatches: 0,
                takeovers_failed: 4,
                ..Counters::default()
            },
            takeover_faults: [("vip".to_string(), 2)].into_iter().collect(),
        }
    }

    #[test]
    fn encodes_what_was_set() {
        let m = Metrics::new();
        m.observe_report(&report());
        m.observe_commit_latency("kv", 0.0003);
        m.observe_commit_latency("kv", 0.002);
        m.add_committed("kv", 3, 450);
        m.add_committed("kv", 1, 50);
        m.set_capture("kv", 6, 2);
        m.observe_failover("kv", 0.8);
        m.observe_migration("kv", 0.2);
        let text = m.encode();
        for line in [
            "tandem_node_info{slot=\"2\",incarnation=\"7\"} 1",
            "tandem_role{service=\"kv\",role=\"primary\"} 1",
            "tandem_role{service=\"kv\",role=\"clone\"} 0",
            "tandem_term{service=\"kv\"} 5",
            "tandem_leader_slot{service=\"kv\"} 2",
            "tandem_commit_index{service=\"kv\"} 120",
            "tandem_applied_index{service=\"kv\"} 118",
            "tandem_commit_latency_seconds_count{service=\"kv\"} 2",
            "tandem_commit_latency_seconds_bucket{service=\"kv\",le=\"0.0005\"} 1",
            "tandem_commit_latency_seconds_bucket{service=\"kv\",le=\"0.0025\"} 2",
            "tandem_committed_entries_total{service=\"kv\"} 4",
            "tandem_committed_bytes_total{service=\"kv\"} 500",
            "tandem_log_entries{service=\"kv\"} 21",
            "tandem_snapshot_age_seconds{service=\"kv\"} 30",
            "tandem_peer_lag_entries{service=\"kv\",peer=\"3\"} 20",
            "tandem_peer_lag_entries{service=\"kv\",peer=\"1\"} 0",
            "tandem_peer_connected{service=\"kv\",peer=\"3\"} 0",
            "tandem_capture_queue_depth{service=\"kv\"} 6",
            "tandem_capture_overflows_total{service=\"kv\"} 2",
            "tandem_takeovers_failed_total{service=\"kv\"} 4",
            "tandem_takeover_faults_armed{service=\"kv\",step=\"vip\"} 2",
            "tandem_takeover_faults_armed{service=\"kv\",step=\"lease\"} 0",
            "tandem_connections_open{service=\"kv\"} 4",
            "tandem_failovers_total{service=\"kv\"} 1",
            "tandem_failover_duration_seconds_count{service=\"kv\"} 1",
            "tandem_migrations_total{service=\"kv\"} 1",
            "tandem_migration_duration_seconds_sum{service=\"kv\"} 0.2",
            "tandem_auth_failures_total 3",
            "tandem_shadow_mismatches_total{service=\"kv\"} 0",
            "tandem_healthy{service=\"kv\"} 1",
            "tandem_draining{service=\"kv\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(line)),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(text.contains("# TYPE tandem_commit_latency_seconds histogram"));
        assert!(text.contains("# HELP tandem_shadow_mismatches_total Bytes the primary"));
        assert!(m.encode_openmetrics().ends_with("# EOF\n"));
    }

    #[test]
    fn totals_only_rise_and_roles_and_peers_are_replaced() {
        let m = Metrics::new();
        m.set_auth_failures(5);
        m.set_auth_failures(2);
        let junk = Counters {
            hellos_forged: 4,
            strangers_evicted: 9,
            ..Counters::default()
        };
        m.set_replication_rejected(&junk);
        m.set_replication_rejected(&Counters::default());
        m.set_shadow_mismatches("kv", 1);
        m.set_role("kv", "primary");
        m.set_role("kv", "clone");
        m.set_role("kv", "odd");
        m.set_role("kv", "clone");
        m.set_peers("kv", &[(1, 4, true), (3, 0, true)]);
        m.set_peers("kv", &[(1, 0, true)]);
        m.set_log("kv", 3, Some(1.5));
        m.set_log("kv", 3, None);
        let text = m.encode();
        assert!(text.contains("tandem_auth_failures_total 5\n"), "{text}");
        assert!(
            text.contains("tandem_replication_rejected_total{reason=\"hello_forged\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("tandem_replication_rejected_total{reason=\"stranger_evicted\"} 9\n"));
        assert!(text.contains("tandem_replication_rejected_total{reason=\"replayed\"} 0\n"));
        assert!(text.contains("tandem_role{service=\"kv\",role=\"primary\"} 0\n"));
        assert!(text.contains("tandem_role{service=\"kv\",role=\"clone\"} 1\n"));
        assert!(text.contains("tandem_role{service=\"kv\",role=\"odd\"} 0\n"));
        assert!(text.contains("peer=\"1\"} 0\n"));
        assert!(!text.contains("peer=\"3\""), "{text}");
        assert!(!text.contains("tandem_snapshot_age_seconds{"), "{text}");
    }

    #[test]
    fn parses_requests() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*"),
            Request::Metrics {
                head: false,
                openmetrics: false
            }
        );
        assert_eq!(
            parse_request(b"HEAD /metrics?x=1 HTTP/1.0\nAccept: application/openmetrics-text"),
            Request::Metrics {
                head: true,
                openmetrics: true
            }
        );
        assert_eq!(parse_request(b"GET / HTTP/1.1"), Request::NotFound);
        assert_eq!(
            parse_request(b"POST /metrics HTTP/1.1"),
            Request::MethodNotAllowed
        );
        for bad in [
            &b""[..],
            b"GET",
            b"GET /metrics",
            b"GET /metrics HTTP/2.0",
            b"GET metrics HTTP/1.1",
            b"get /metrics HTTP/1.1",
            b"GET /metrics HTTP/1.1 extra",
            b"GET /metrics HTTP/1.1\r\nno colon here",
            b"\xff\xfe /metrics HTTP/1.1",
        ] {
            assert_eq!(parse_request(bad), Request::Bad, "{bad:?}");
        }
    }

    #[test]
    fn serves_metrics_404_405_and_400() {
        let metrics = Arc::new(Metrics::new());
        metrics.set_role("kv", "primary");
        metrics.add_committed("kv", 2, 10);
        let server = serve("127.0.0.1:0".parse().unwrap(), metrics.clone()).unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);

        let (head, body) = get(addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(status_line(&head), "HTTP/1.1 200 OK");
        assert!(head.contains("Content-Type: text/plain; version=0.0.4"));
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(length, body.len());
        assert!(body.contains("tandem_role{service=\"kv\",role=\"primary\"} 1\n"));
        assert!(body.contains("tandem_committed_entries_total{service=\"kv\"} 2\n"));

        // Updates show in the next scrape.
        metrics.add_committed("kv", 3, 10);
        let (_, body) = get(addr, b"GET /metrics HTTP/1.0\n\n");
        assert!(body.contains("tandem_committed_entries_total{service=\"kv\"} 5\n"));

        let (head, body) = get(
            addr,
            b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
        );
        assert!(head.contains("application/openmetrics-text"));
        assert!(body.ends_with("# EOF\n"));

        let (head, body) = get(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status_line(&head), "HTTP/1.1 200 OK");
        assert!(body.is_empty());

        let (head, _) = get(addr, b"GET /other HTTP/1.1\r\n\r\n");
        assert_eq!(status_line(&head), "HTTP/1.1 404 Not Found");
        let (head, _) = get(addr, b"DELETE /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status_line(&head), "HTTP/1.1 405 Method Not Allowed");
        let (head, _) = get(addr, b"garbage\r\n\r\n");
        assert_eq!(status_line(&head), "HTTP/1.1 400 Bad Request");
        let (head, _) = get(addr, &[b'x'; MAX_REQUEST + 2048]);
        assert_eq!(status_line(&head), "HTTP/1.1 400 Bad Request");

        // A client that sends half a request and hangs up gets a 400 and
        // does not stop the server.
        {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /met").unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut out = String::new();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.read_to_string(&mut out).unwrap();
            assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        }
        let (head, _) = get(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status_line(&head), "HTTP/1.1 200 OK");

        drop(server);
        // Stopped: the port no longer answers.
        assert!(TcpStream::connect(addr).is_err());
    }
}
