//! `tandem bench failover`: the pause clients see when the primary of a
//! 3-node kv lab is killed (power cut), crashed (daemon SIGKILLed, kernel
//! alive) or migrated (Raft leadership transfer to a caught-up clone), with
//! 1, 100 and 1,000 live connections.
//!
//! The load runs in the lab's client namespace on one thread (mio): every
//! connection loops INCR on its own key, one request outstanding, checking
//! that each reply is the previous value + 1, and records when each request
//! left and its reply came back. A connection sends its next request as soon
//! as its reply arrives, but no sooner than C × 50 µs after its previous
//! request (C = connections): one connection runs back to back, 100 send
//! every 5 ms each and 1,000 every 50 ms each, about 20,000 requests/s
//! offered in every case, so two shared cores are not saturated by the load
//! itself.
//!
//! Per event, each connection's *gap* is the largest gap between two
//! consecutive replies that overlaps the window from the event to 1 s after
//! the new primary serves; the event's *pause* is the largest gap over the
//! connections (the median over connections is kept too). Because of the
//! pacing, a connection's gap includes its own sending interval; the longest
//! single request (sent to replied) in the window is kept as *wait*, and the
//! largest gap in the second before the event as *baseline*. After a kill or
//! a crash the old primary is restarted and the cluster waited for (3
//! voters, no learners, caught up) before the next event.
//!
//! The node logs give the takeover's own cost: when the new primary was
//! elected (its "raft role" line), and its "primary: serving" line's
//! prepare/announce/total times.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::workload::command;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use tandem_lab::{Lab, LabGuard, LabSpec, RaftTimings, ServiceKind};
use tandem_node::admin::{request, AdminReply, AdminRequest};
use tandem_node::report::NodeReport;

/// The lab name when none is given.
pub const DEFAULT_LAB: &str = "bench-fo";

/// Offered load per connection: one request every C × this.
const PACE_PER_CONNECTION: Duration = Duration::from_micros(50);
/// How long after the new primary serves the window stays open (late
/// retransmissions land in it).
const SETTLE: Duration = Duration::from_secs(1);
/// The quiet window before each event whose largest gap is the baseline.
const BASELINE: Duration = Duration::from_secs(1);
/// How long a connection may go without a reply before it counts as stuck.
const STUCK: Duration = Duration::from_secs(15);

/// What happens to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Power cut: SIGKILL and link down (`tandem lab kill`).
    Kill,
    /// Process crash: daemon SIGKILLed, kernel alive (`tandem lab crash`).
    Crash,
    /// Planned migration to a caught-up clone (`tandem migrate kv --to N`).
    Migrate,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Crash => "crash",
            Kind::Migrate => "migrate",
        }
    }
}

/// Options of `tandem bench failover`.
pub struct Options {
    pub name: String,
    pub events: usize,
    pub kinds: Vec<Kind>,
    pub connections: Vec<usize>,
    pub json: bool,
    /// The daemons' Raft timeouts (unset fields: the defaults).
    pub raft: RaftTimings,
}

// ---------------------------------------------------------------------------
// Results.

/// One event as measured.
#[derive(Debug, Clone, Serialize)]
struct EventResult {
    kind: Kind,
    connections: usize,
    round: usize,
    from: u16,
    to: u16,
    /// Largest gap between consecutive replies over all connections.
    pause_ms: f64,
    /// Median over connections of each one's largest gap.
    pause_median_conn_ms: f64,
    /// Longest single request (sent → replied) in the window.
    wait_ms: f64,
    /// Largest gap in the quiet second before the event.
    baseline_ms: f64,
    /// From the event to the new primary's "raft role … Leader" log line.
    elected_ms: Option<f64>,
    /// From the event to its "primary: serving" log line.
    serving_ms: Option<f64>,
    /// The takeover's own times, from that line.
    prepare_ms: Option<f64>,
    announced_ms: Option<f64>,
    takeover_ms: Option<f64>,
    restored: Option<u64>,
    /// Client-side failures (error, EOF, reset, wrong reply, stuck) from
    /// this event until the next one.
    failures: usize,
    #[serde(skip)]
    at: Option<Instant>,
}

/// min/median/p99/max of one figure.
#[derive(Debug, Clone, Copy, Serialize)]
struct Stats {
    min: f64,
    median: f64,
    p99: f64,
    max: f64,
}

impl Stats {
    fn of(values: &[f64]) -> Option<Stats> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        // Nearest rank.
        let p99 = v[((0.99 * n as f64).ceil() as usize).clamp(1, n) - 1];
        Some(Stats {
            min: v[0],
            median,
            p99,
            max: v[n - 1],
        })
    }
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    kind: Kind,
    connections: usize,
    events: usize,
    pace_ms: f64,
    pause_ms: Option<Stats>,
    pause_median_conn_ms: Option<Stats>,
    wait_ms: Option<Stats>,
    baseline_ms: Option<Stats>,
    elected_ms: Option<Stats>,
    serving_ms: Option<Stats>,
    takeover_ms: Option<Stats>,
    failures: usize,
    target: Option<Target>,
}

#[derive(Debug, Clone, Serialize)]
struct Target {
    what: String,
    met: bool,
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    lab: String,
    cpus: usize,
    timeouts: Timeouts,
    rows: Vec<Row>,
    /// Failures before the first event of each connection count (warm-up).
    warmup_failures: usize,
    /// Resets counted at the client during the whole run.
    client_rsts: u64,
    events: Vec<EventResult>,
}

#[derive(Debug, Clone, Serialize)]
struct Timeouts {
    tick_ms: u64,
    heartbeat_ms: u64,
    election_ms_min: u64,
    election_ms_max: u64,
    lease_ms: u64,
}

// ---------------------------------------------------------------------------
// The benchmark.

pub fn run(opts: Options) -> Result<ExitCode> {
    crate::require_root("tandem bench failover")?;
    if opts.kinds.is_empty() || opts.connections.is_empty() || opts.events == 0 {
        bail!("nothing to do: give at least one kind, one connection count and one event");
    }
    let most = opts.connections.iter().copied().max().unwrap_or(1);
    raise_nofile(most as u64 * 2 + 256)?;

    let spec = LabSpec::named(opts.name.clone())
        .with_nodes(3)
        .with_service(ServiceKind::Kv)
        .with_raft(opts.raft);
    let (events, warmup_failures, client_rsts) = crate::in_lab(
        "failover",
        &spec,
        "3 nodes, replicated kv",
        |lab| measure(lab, &opts),
        None,
    )?;

    let defaults = tandem_node::config::RaftSection::default();
    let tick_ms = opts.raft.tick_ms.unwrap_or(defaults.tick_ms);
    let heartbeat_ticks = opts
        .raft
        .heartbeat_ticks
        .unwrap_or(defaults.heartbeat_ticks);
    let election_ticks = opts.raft.election_ticks.unwrap_or(defaults.election_ticks);
    let timeouts = Timeouts {
        tick_ms,
        heartbeat_ms: tick_ms * u64::from(heartbeat_ticks),
        election_ms_min: tick_ms * u64::from(election_ticks),
        election_ms_max: tick_ms * u64::from(election_ticks) * 2,
        lease_ms: tandem_node::daemon::LEASE.as_millis() as u64,
    };
    let rows = summarize(&opts, &events);
    let report = Report {
        lab: opts.name.clone(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        timeouts,
        rows,
        warmup_failures,
        client_rsts,
        events,
    };
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn measure(lab: &mut LabGuard, opts: &Options) -> Result<(Vec<EventResult>, usize, u64)> {
    let first = wait_healthy(lab).context("the new lab")?;
    progress(format!("lab up, node {first} is the primary"));
    let rst_before = lab.client_rst_count()?;
    let addr = SocketAddr::new(lab.vip().into(), lab.port());
    let mut events = Vec::new();
    let mut warmup = 0;
    for (run, &c) in opts.connections.iter().enumerate() {
        let pace = if c <= 1 {
            Duration::ZERO
        } else {
            PACE_PER_CONNECTION * c as u32
        };
        progress(format!(
            "{c} connection(s), one request each every {:.1} ms at most",
            pace.as_secs_f64() * 1e3
        ));
        let mut load = Load::start(lab.client_netns(), addr, c, pace, run)?;
        std::thread::sleep(BASELINE + Duration::from_millis(500));
        let mut these: Vec<EventResult> = Vec::new();
        let total = opts.events * opts.kinds.len();
        for round in 0..opts.events {
            for &kind in &opts.kinds {
                let result = one_event(lab, &load, kind, c, round).with_context(|| {
                    format!("{} #{} with {c} connection(s)", kind.as_str(), round + 1)
                })?;
                progress(format!(
                    "C={c} {} {}/{total}: node {} → {}: pause {:.1} ms (median connection {:.1} ms, longest request {:.1} ms, baseline {:.1} ms); elected +{}, serving +{}, takeover {} ({} sockets)",
                    kind.as_str(),
                    these.len() + 1,
                    result.from,
                    result.to,
                    result.pause_ms,
                    result.pause_median_conn_ms,
                    result.wait_ms,
                    result.baseline_ms,
                    opt_ms(result.elected_ms),
                    opt_ms(result.serving_ms),
                    opt_ms(result.takeover_ms),
                    result.restored.map_or("?".into(), |r| r.to_string()),
                ));
                these.push(result);
            }
        }
        // Let the last event's aftermath land in its failure count.
        std::thread::sleep(Duration::from_millis(500));
        let failures = load.stop()?;
        for f in &failures {
            progress(format!("C={c} failure: {}", f.1));
        }
        // Failures belong to the last event that started before them.
        for f in failures {
            match these
                .iter_mut()
                .rev()
                .find(|e| e.at.is_some_and(|at| at <= f.0))
            {
                Some(e) => e.failures += 1,
                None => warmup += 1,
            }
        }
        events.extend(these);
    }
    let rsts = lab.client_rst_count()?.saturating_sub(rst_before);
    Ok((events, warmup, rsts))
}

fn one_event(
    lab: &mut LabGuard,
    load: &Load,
    kind: Kind,
    connections: usize,
    round: usize,
) -> Result<EventResult> {
    let from = wait_healthy(lab)?;
    let to = match kind {
        Kind::Migrate => Some(caught_up_clone(lab, from)?),
        _ => None,
    };
    let offsets: Vec<(u32, u64)> = lab
        .node_ids()
        .into_iter()
        .map(|id| (id, log_len(lab, id)))
        .collect();
    let wall0 = SystemTime::now();
    let t0 = Instant::now();
    match kind {
        Kind::Kill => {
            lab.kill(u32::from(from))?;
        }
        Kind::Crash => {
            lab.crash(u32::from(from))?;
        }
        Kind::Migrate => {
            let to = to.unwrap_or_default();
            let socket = admin_socket(lab, u32::from(from))?;
            match request(
                &socket,
                &AdminRequest::Migrate { to },
                Duration::from_secs(3),
            )? {
                AdminReply::Error { message } => bail!("migrate to {to}: {message}"),
                AdminReply::Done { .. } | AdminReply::Status(_) => {}
            }
        }
    }
    // The new primary: another node saying so (for a migration, the target).
    let deadline = t0 + Duration::from_secs(20);
    let new = loop {
        let found = lab
            .node_ids()
            .into_iter()
            .filter(|id| *id != u32::from(from) && to.is_none_or(|t| u32::from(t) == *id))
            .find(|id| report(lab, *id).is_some_and(|r| r.role == "primary"));
        if let Some(id) = found {
            break id;
        }
        if Instant::now() > deadline {
            bail!("no new primary within 20 s of the event");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(SETTLE);
    let t1 = Instant::now();
    let window = load.measure(t0, t1)?;
    let offset = offsets
        .iter()
        .find(|(id, _)| *id == new)
        .map_or(0, |(_, o)| *o);
    let takeover = takeover_from_log(lab, new, offset, wall0);
    if kind != Kind::Migrate {
        lab.restart(u32::from(from))?;
        wait_healthy(lab).context("after restarting the old primary")?;
    }
    // The next event's baseline window.
    std::thread::sleep(BASELINE);
    Ok(EventResult {
        kind,
        connections,
        round,
        from,
        to: new as u16,
        pause_ms: ms(window.pause),
        pause_median_conn_ms: ms(window.pause_median),
        wait_ms: ms(window.wait),
        baseline_ms: ms(window.baseline),
        elected_ms: takeover.elected_ms,
        serving_ms: takeover.serving_ms,
        prepare_ms: takeover.prepare_ms,
        announced_ms: takeover.announced_ms,
        takeover_ms: takeover.total_ms,
        restored: takeover.restored,
        failures: 0,
        at: Some(t0),
    })
}

// ---------------------------------------------------------------------------
// The cluster.

fn admin_socket(lab: &Lab, id: u32) -> Result<std::path::PathBuf> {
    lab.node_admin_socket(id)?
        .with_context(|| format!("node {id} has no admin socket"))
}

fn report(lab: &Lab, id: u32) -> Option<NodeReport> {
    crate::node_report(lab, id)
}

/// Waits until one node serves as the primary, every node is one of three
/// voters with no learners, and all have applied nearly what is committed
/// (after a restart: the new incarnation swapped in). Returns the primary.
fn wait_healthy(lab: &Lab) -> Result<u16> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let reports: Vec<NodeReport> = crate::node_reports(lab);
        if let Some(p) = reports.iter().find(|r| r.role == "primary") {
            let healthy = reports.len() == 3
                && reports.iter().all(|r| {
                    r.voters.len() == 3
                        && r.learners.is_empty()
                        && p.commit_index.saturating_sub(r.applied_index) < 1000
                });
            if healthy && lab.status().leader == Some(u32::from(p.slot)) {
                return Ok(p.slot);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the cluster did not become healthy within 60 s: {:?}",
                reports
                    .iter()
                    .map(|r| (r.slot, r.role.clone(), r.voters.clone(), r.learners.clone()))
                    .collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A clone the primary sees connected and not behind.
fn caught_up_clone(lab: &Lab, primary: u16) -> Result<u16> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(r) = report(lab, u32::from(primary)) {
            let mut peers: Vec<_> = r
                .peers
                .iter()
                .filter(|p| p.slot != primary && p.connected && p.lag == 0)
                .map(|p| p.slot)
                .collect();
            peers.sort_unstable();
            if let Some(first) = peers.first() {
                return Ok(*first);
            }
        }
        if Instant::now() > deadline {
            bail!("no caught-up clone of node {primary} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_len(lab: &Lab, id: u32) -> u64 {
    lab.node_log_path(id)
        .ok()
        .flatten()
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len())
}

#[derive(Default)]
struct Takeover {
    elected_ms: Option<f64>,
    serving_ms: Option<f64>,
    prepare_ms: Option<f64>,
    announced_ms: Option<f64>,
    total_ms: Option<f64>,
    restored: Option<u64>,
}

/// What node `id`'s log says from byte `offset` on about its takeover.
fn takeover_from_log(lab: &Lab, id: u32, offset: u64, wall0: SystemTime) -> Takeover {
    let mut out = Takeover::default();
    let Some(path) = lab.node_log_path(id).ok().flatten() else {
        return out;
    };
    let Ok(bytes) = std::fs::read(&path) else {
        return out;
    };
    let start = if (offset as usize) <= bytes.len() {
        offset as usize
    } else {
        0
    };
    let text = strip_ansi(&String::from_utf8_lossy(&bytes[start..]));
    let t0 = wall0
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let since = |line: &str| log_time(line).map(|t| (t - t0) * 1e3);
    for line in text.lines() {
        if out.elected_ms.is_none() && line.contains("raft role") && line.contains("role=Leader") {
            out.elected_ms = since(line);
        }
        if out.serving_ms.is_none() && line.contains("primary: serving") {
            out.serving_ms = since(line);
            out.prepare_ms = field(line, "prepare_ms");
            out.announced_ms = field(line, "announced_ms");
            out.total_ms = field(line, "total_ms");
            out.restored = field(line, "restored").map(|r| r as u64);
        }
    }
    out
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte.
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `key=number` in a log line.
fn field(line: &str, key: &str) -> Option<f64> {
    let pattern = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&pattern))
        .and_then(|v| v.parse().ok())
}

/// A tracing line's leading RFC 3339 UTC timestamp, in seconds since the
/// epoch (`2025-06-10T11:51:27.123456Z  INFO ...`).
fn log_time(line: &str) -> Option<f64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let s = t.next()?.parse::<f64>().ok()?;
    let days = days_from_civil(y, m, day) as f64;
    Some(days * 86_400.0 + h * 3600.0 + min * 60.0 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// ---------------------------------------------------------------------------
// The load.

/// One reply: when its request left and when it came back.
type Reply = (Instant, Instant);

#[derive(Default)]
struct Shared {
    /// Per connection, the replies since the last measurement (the last one
    /// before it kept).
    replies: Vec<Vec<Reply>>,
    /// (when, what) of every client-side failure.
    failures: Vec<(Instant, String)>,
}

/// The largest gaps of one window.
struct Window {
    pause: Duration,
    pause_median: Duration,
    wait: Duration,
    baseline: Duration,
}

struct Load {
    stop: Arc<AtomicBool>,
    shared: Arc<Mutex<Shared>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Load {
    /// Opens `connections` connections to `addr` from namespace `netns`
    /// and starts their request loops; returns once all are connected.
    fn start(
        netns: &str,
        addr: SocketAddr,
        connections: usize,
        pace: Duration,
        run: usize,
    ) -> Result<Load> {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Mutex::new(Shared {
            replies: vec![Vec::new(); connections],
            failures: Vec::new(),
        }));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let thread = {
            let (stop, shared, netns) = (stop.clone(), shared.clone(), netns.to_string());
            std::thread::spawn(move || -> Result<()> {
                tandem_sys::netns::run_in(&netns, move || {
                    let mut gen = match Generator::new(addr, connections, pace, run, shared, stop) {
                        Ok(gen) => gen,
                        Err(err) => {
                            let _ = ready_tx.send(Err(format!("{err:#}")));
                            return Err(err);
                        }
                    };
                    if let Err(err) = gen.connect_all() {
                        let _ = ready_tx.send(Err(format!("{err:#}")));
                        return Err(err);
                    }
                    let _ = ready_tx.send(Ok(()));
                    gen.run()
                })?
            })
        };
        let mut load = Load {
            stop,
            shared,
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(load),
            Ok(Err(err)) => {
                let _ = load.stop();
                bail!("connecting: {err}")
            }
            Err(_) => {
                let err = load.stop().err();
                bail!("the load generator ended before connecting: {err:?}")
            }
        }
    }

    /// Waits until every connection has a reply after `t1` (or counts it as
    /// stuck), then measures the window [`t0`, `t1`] and forgets what is
    /// older than each connection's last reply.
    fn measure(&self, t0: Instant, t1: Instant) -> Result<Window> {
        let deadline = t1 + STUCK;
        loop {
            {
                let s = self.shared.lock().expect("load lock");
                let waiting = s
                    .replies
                    .iter()
                    .filter(|r| r.last().is_none_or(|x| x.1 <= t1))
                    .count();
                if waiting == 0 || Instant::now() > deadline {
                    break;
                }
            }
            if self.thread.as_ref().is_none_or(|t| t.is_finished()) {
                bail!("the load generator stopped");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let now = Instant::now();
        let mut s = self.shared.lock().expect("load lock");
        let mut gaps = Vec::new();
        let mut wait = Duration::ZERO;
        let mut baseline = Duration::ZERO;
        let mut stuck = Vec::new();
        for (i, replies) in s.replies.iter_mut().enumerate() {
            let mut gap = Duration::ZERO;
            for pair in replies.windows(2) {
                let (a, b) = (pair[0].1, pair[1].1);
                if b > t0 && a < t1 {
                    gap = gap.max(b - a);
                }
                if a + BASELINE >= t0 && b <= t0 {
                    baseline = baseline.max(b - a);
                }
            }
            for &(sent, at) in replies.iter() {
                if at > t0 && sent < t1 {
                    wait = wait.max(at - sent);
                }
            }
            if replies.last().is_none_or(|x| x.1 <= t1) {
                let since = replies.last().map_or(t0, |x| x.1);
                gap = gap.max(now - since);
                stuck.push(format!(
                    "connection {i}: no reply for {:.1} s",
                    (now - since).as_secs_f64()
                ));
            }
            gaps.push(gap);
            if let Some(last) = replies.last().copied() {
                replies.clear();
                replies.push(last);
            }
        }
        s.failures.extend(stuck.into_iter().map(|why| (t1, why)));
        gaps.sort();
        Ok(Window {
            pause: gaps.last().copied().unwrap_or_default(),
            pause_median: gaps.get(gaps.len() / 2).copied().unwrap_or_default(),
            wait,
            baseline,
        })
    }

    /// Stops the load; returns every failure it saw.
    fn stop(&mut self) -> Result<Vec<(Instant, String)>> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            match thread.join() {
                Ok(result) => result?,
                Err(_) => bail!("the load generator panicked"),
            }
        }
        Ok(std::mem::take(
            &mut self.shared.lock().expect("load lock").failures,
        ))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One connection of the generator.
struct Conn {
    stream: Option<TcpStream>,
    key: String,
    /// The value the next INCR must answer.
    next: u64,
    /// Bytes not written yet.
    out: Vec<u8>,
    /// Bytes read and not parsed yet.
    inbuf: Vec<u8>,
    /// When the outstanding request left (None: none outstanding).
    sent: Option<Instant>,
    /// When the previous request left.
    last_sent: Option<Instant>,
    /// Reconnections so far.
    generation: u32,
}

struct Generator {
    addr: SocketAddr,
    pace: Duration,
    run: usize,
    conns: Vec<Conn>,
    /// (when, connection) of the next request of each idle connection.
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    poll: Poll,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    /// Replies and failures since the last hand-over to `shared`.
    replies: Vec<(usize, Reply)>,
    failures: Vec<(Instant, String)>,
}

impl Generator {
    fn new(
        addr: SocketAddr,
        connections: usize,
        pace: Duration,
        run: usize,
        shared: Arc<Mutex<Shared>>,
        stop: Arc<AtomicBool>,
    ) -> Result<Generator> {
        let conns = (0..connections)
            .map(|i| Conn {
                stream: None,
                key: key(run, i, 0),
                next: 1,
                out: Vec::new(),
                inbuf: Vec::new(),
                sent: None,
                last_sent: None,
                generation: 0,
            })
            .collect();
        Ok(Generator {
            addr,
            pace,
            run,
            conns,
            due: BinaryHeap::new(),
            poll: Poll::new()?,
            shared,
            stop,
            replies: Vec::new(),
            failures: Vec::new(),
        })
    }

    fn connect_all(&mut self) -> Result<()> {
        let n = self.conns.len();
        let start = Instant::now();
        for i in 0..n {
            self.connect(i)
                .with_context(|| format!("connection {i} of {n} to {}", self.addr))?;
            // Spread the first requests over one pacing interval.
            let offset = self.pace.mul_f64(i as f64 / n as f64);
            self.due.push(Reverse((start + offset, i)));
        }
        Ok(())
    }

    fn connect(&mut self, i: usize) -> Result<()> {
        let mut last = None;
        for _ in 0..3 {
            match std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    s.set_nonblocking(true)?;
                    let mut stream = TcpStream::from_std(s);
                    self.poll.registry().register(
                        &mut stream,
                        Token(i),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    self.conns[i].stream = Some(stream);
                    return Ok(());
                }
                Err(err) => last = Some(err),
            }
        }
        Err(last.map_or_else(|| anyhow::anyhow!("connect failed"), Into::into))
    }

    fn run(&mut self) -> Result<()> {
        let mut events = Events::with_capacity(4096);
        let mut buf = vec![0u8; 16 * 1024];
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            let timeout = self
                .due
                .peek()
                .map_or(Duration::from_millis(50), |Reverse((at, _))| {
                    at.saturating_duration_since(now)
                })
                .min(Duration::from_millis(50));
            if let Err(err) = self.poll.poll(&mut events, Some(timeout)) {
                if err.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(err.into());
            }
            for event in events.iter() {
                let i = event.token().0;
                if event.is_writable() && !self.conns[i].out.is_empty() {
                    self.flush(i);
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.read(i, &mut buf);
                }
            }
            let now = Instant::now();
            while let Some(&Reverse((at, i))) = self.due.peek() {
                if at > now {
                    break;
                }
                self.due.pop();
                self.send(i, now);
            }
            if !self.replies.is_empty() || !self.failures.is_empty() {
                let mut s = self.shared.lock().expect("load lock");
                for (i, r) in self.replies.drain(..) {
                    s.replies[i].push(r);
                }
                s.failures.append(&mut self.failures);
            }
        }
        Ok(())
    }

    fn send(&mut self, i: usize, now: Instant) {
        let c = &mut self.conns[i];
        if c.stream.is_none() || c.sent.is_some() {
            return;
        }
        c.out.extend_from_slice(&command(&["INCR", &c.key]));
        c.sent = Some(now);
        c.last_sent = Some(now);
        self.flush(i);
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.conns[i];
        let Some(stream) = c.stream.as_mut() else {
            return;
        };
        while !c.out.is_empty() {
            match stream.write(&c.out) {
                Ok(0) => return self.fail(i, "write returned 0".into()),
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return self.fail(i, format!("write: {e}")),
            }
        }
    }

    fn read(&mut self, i: usize, buf: &mut [u8]) {
        loop {
            let c = &mut self.conns[i];
            let Some(stream) = c.stream.as_mut() else {
                return;
            };
            match stream.read(buf) {
                Ok(0) => return self.fail(i, "end of stream".into()),
                Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return self.fail(i, format!("read: {e}")),
            }
        }
        let now = Instant::now();
        loop {
            let c = &mut self.conns[i];
            let Some(end) = c.inbuf.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let line: Vec<u8> = c.inbuf.drain(..end + 2).collect();
            let expected = format!(":{}\r\n", c.next);
            let Some(sent) = c.sent.take() else {
                let why = format!("unsolicited reply {:?}", String::from_utf8_lossy(&line));
                return self.fail(i, why);
            };
            if line != expected.as_bytes() {
                let why = format!(
                    "INCR #{} answered {:?}",
                    c.next,
                    String::from_utf8_lossy(&line)
                );
                return self.fail(i, why);
            }
            c.next += 1;
            self.replies.push((i, (sent, now)));
            let at = c.last_sent.map_or(now, |l| (l + self.pace).max(now));
            self.due.push(Reverse((at, i)));
        }
    }

    /// Counts a failure and carries on with a fresh connection and key.
    fn fail(&mut self, i: usize, why: String) {
        let now = Instant::now();
        self.failures.push((now, format!("connection {i}: {why}")));
        let c = &mut self.conns[i];
        if let Some(mut stream) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        c.generation += 1;
        c.key = key(self.run, i, c.generation);
        c.next = 1;
        c.out.clear();
        c.inbuf.clear();
        c.sent = None;
        if let Err(err) = self.connect(i) {
            self.failures
                .push((now, format!("connection {i}: reconnecting: {err:#}")));
            // Try again later.
            self.due
                .push(Reverse((now + Duration::from_millis(500), i)));
            return;
        }
        self.due.push(Reverse((Instant::now(), i)));
    }
}

fn key(run: usize, i: usize, generation: u32) -> String {
    format!("fo:{}:{run}:{i}:{generation}", std::process::id())
}

/// Raises the soft limit on open files to at least `want`, or fails.
fn raise_nofile(want: u64) -> Result<()> {
    let got = tandem_sys::limits::raise_nofile(want).context("raising RLIMIT_NOFILE")?;
    if got < want {
        bail!("{want} open files are needed but the limit stays at {got}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The report.

fn summarize(opts: &Options, events: &[EventResult]) -> Vec<Row> {
    let mut rows = Vec::new();
    for &kind in &opts.kinds {
        for &c in &opts.connections {
            let these: Vec<&EventResult> = events
                .iter()
                .filter(|e| e.kind == kind && e.connections == c)
                .collect();
            if these.is_empty() {
                continue;
            }
            let of = |f: fn(&EventResult) -> Option<f64>| {
                Stats::of(&these.iter().filter_map(|e| f(e)).collect::<Vec<_>>())
            };
            let pause = of(|e| Some(e.pause_ms));
            let target = pause.and_then(|p| match (kind, c) {
                (Kind::Kill | Kind::Crash, _) => Some(Target {
                    what: "median ≤ 300 ms, worst ≤ 1 s".into(),
                    met: p.median <= 300.0 && p.max <= 1000.0,
                }),
                (Kind::Migrate, 1) => Some(Target {
                    what: "median ≤ 10 ms".into(),
                    met: p.median <= 10.0,
                }),
                (Kind::Migrate, 1000) => Some(Target {
                    what: "median ≤ 100 ms".into(),
                    met: p.median <= 100.0,
                }),
                _ => None,
            });
            let pace = if c <= 1 {
                0.0
            } else {
                ms(PACE_PER_CONNECTION * c as u32)
            };
            rows.push(Row {
                kind,
                connections: c,
                events: these.len(),
                pace_ms: pace,
                pause_ms: pause,
                pause_median_conn_ms: of(|e| Some(e.pause_median_conn_ms)),
                wait_ms: of(|e| Some(e.wait_ms)),
                baseline_ms: of(|e| Some(e.baseline_ms)),
                elected_ms: of(|e| e.elected_ms),
                serving_ms: of(|e| e.serving_ms),
                takeover_ms: of(|e| e.takeover_ms),
                failures: these.iter().map(|e| e.failures).sum(),
                target,
            });
        }
    }
    rows
}

fn print_report(r: &Report) {
    let t = &r.timeouts;
    println!(
        "## Client-visible pause across a kill, a crash or a migration of the primary ({} CPUs)\n",
        r.cpus
    );
    println!(
        "3-node replicated kv; heartbeat {} ms, election timeout {}–{} ms (randomized), lease {} ms.",
        t.heartbeat_ms, t.election_ms_min, t.election_ms_max, t.lease_ms
    );
    println!("Each connection loops INCR on its own key (one request outstanding, every reply");
    println!("checked), sending at most one request per C × 50 µs. Pause: the largest gap");
    println!("between consecutive replies on any connection across the event (ms).\n");
    println!("| kind | connections | events | min | median | p99 | max | median connection's gap (median) | failures | target |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in &r.rows {
        let Some(p) = row.pause_ms else { continue };
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
            row.kind.as_str(),
            row.connections,
            row.events,
            p.min,
            p.median,
            p.p99,
            p.max,
            row.pause_median_conn_ms
                .map_or("-".into(), |s| format!("{:.1}", s.median)),
            row.failures,
            row.target.as_ref().map_or("-".into(), |t| format!(
                "{}: {}",
                t.what,
                if t.met { "met" } else { "missed" }
            )),
        );
    }
    println!("\n## Where the pause goes (ms, median / max over the events)\n");
    println!("Pacing: each connection's own interval between requests (part of every gap).");
    println!("Longest request: the longest single request, sent to replied, in the window.");
    println!("Baseline: the largest gap in the quiet second before the event.");
    println!("Elected / serving: from the event to the new primary's \"raft role … Leader\"");
    println!("and \"primary: serving\" log lines; takeover: that line's total_ms (rebuild");
    println!("sockets, listener, rules, lease, VIP, first gratuitous ARP, go live).\n");
    println!("| kind | connections | pacing | longest request | baseline gap | elected | serving | takeover |");
    println!("|---|---|---|---|---|---|---|---|");
    let mm = |s: Option<Stats>| s.map_or("-".into(), |s| format!("{:.1} / {:.1}", s.median, s.max));
    for row in &r.rows {
        println!(
            "| {} | {} | {:.1} | {} | {} | {} | {} | {} |",
            row.kind.as_str(),
            row.connections,
            row.pace_ms,
            mm(row.wait_ms),
            mm(row.baseline_ms),
            mm(row.elected_ms),
            mm(row.serving_ms),
            mm(row.takeover_ms),
        );
    }
    println!(
        "\nClient resets seen: {}; failures before the first event: {}.",
        r.client_rsts, r.warmup_failures
    );
}

fn progress(line: String) {
    eprintln!("bench failover: {line}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("?".into(), |v| format!("{v:.1} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_use_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        let s = Stats::of(&v).unwrap();
        assert_eq!((s.min, s.median, s.p99, s.max), (1.0, 10.5, 20.0, 20.0));
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn log_lines_are_parsed() {
        let line = "\u{1b}[2m2025-06-10T11:51:27.500000Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[2mtandem_node::daemon\u{1b}[0m\u{1b}[2m:\u{1b}[0m primary: serving \u{1b}[3mterm\u{1b}[0m\u{1b}[2m=\u{1b}[0m7 \u{1b}[3mprepare_ms\u{1b}[0m\u{1b}[2m=\u{1b}[0m0.25 total_ms=3.5";
        let line = strip_ansi(line);
        assert_eq!(field(&line, "prepare_ms"), Some(0.25));
        assert_eq!(field(&line, "total_ms"), Some(3.5));
        assert_eq!(field(&line, "term"), Some(7.0));
        let t = log_time(&line).unwrap();
        // 2025-06-10 is day 20249 since the epoch.
        assert!((t - (20249.0 * 86400.0 + 11.0 * 3600.0 + 51.0 * 60.0 + 27.5)).abs() < 1e-6);
    }

    #[test]
    fn requests_are_resp() {
        assert_eq!(
            command(&["INCR", "k1"]),
            b"*2\r\n$4\r\nINCR\r\n$2\r\nk1\r\n"
        );
    }
}
