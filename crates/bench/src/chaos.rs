//! `tandem bench chaos`: a seeded random schedule of faults — power cuts,
//! crashes, freezes, partitions, reboots and planned migrations — on a 3-
//! or 5-node lab under a checked load, for as long as asked; then whether
//! anything was lost, duplicated or broken, and what clients saw.
//!
//! The load is [`crate::workload`]: long-lived connections looping INCR on
//! a counter of their own (and SET/GET on kv, GET on counter), every reply
//! checked, each counter read back at the end against what its connection
//! saw acknowledged ([`workload::final_check`]).
//!
//! The schedule is a sequence of *episodes*. Each one starts from a healthy
//! cluster (one primary serving, every node a caught-up voter), injects one
//! fault (on 5 nodes, sometimes two, on different nodes, so a majority
//! always remains), holds it for a random time, restores (restart after a
//! kill or crash, SIGCONT after a freeze, heal after a partition; a reboot
//! and a migration need nothing), and waits for the cluster to be healthy
//! again: a cluster that does not recover within `recover_within` is a
//! *wedge*, reported as a failure, and the run stops there. A quiet window
//! of random length follows, the baseline of the next fault's pause.
//!
//! The fault's target is drawn as a role (the primary, or a clone by rank)
//! and mapped to a node at run time, so one seed gives the same sequence
//! of actions, roles and times; which node holds which role can still
//! differ between two runs (elections are timed by the machine).
//!
//! Recorded: failovers (changes of the node serving the VIP, polled), per
//! fault the pause clients saw (each connection's largest gap between two
//! replies across the window from the fault to recovery; the episode's
//! max and p99 over connections) against the same in the quiet window
//! before it, errors (resets, closed connections, error replies, timeouts),
//! lost and duplicated updates (in-line and read back), resets counted at
//! the client, the replicas' state hashes once settled (all must be equal)
//! and the daemons alive at the end. Progress goes to stderr, one line per
//! episode; the report to stdout (text, or JSON); the node logs and the
//! schedule are kept in a directory. The exit status is non-zero if
//! anything of the above went wrong.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::workload::{self, Protocol, Workload, WorkloadConfig};
use tandem_lab::{Lab, LabGuard, LabSpec, ServiceKind};
use tandem_node::admin::{request, AdminReply, AdminRequest};
use tandem_node::report::NodeReport;

/// The lab name when none is given.
pub const DEFAULT_LAB: &str = "chs";

/// The service under load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// The replicated kv (Redis protocol): INCR, SET, GET.
    Kv,
    /// The counter service (lines): INCR, GET.
    Counter,
}

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Power cut (SIGKILL, link down); restored by a restart.
    Kill,
    /// Daemon SIGKILLed, kernel alive; restored by a restart.
    Crash,
    /// SIGSTOP; restored by SIGCONT.
    Freeze,
    /// Replication traffic dropped both ways; restored by heal.
    Partition,
    /// Reboot: SIGKILL and a fresh daemon at once (a new incarnation).
    Restart,
    /// Planned migration of the primary to a caught-up clone (always the
    /// primary; never the second fault of an episode).
    Migrate,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Kill => "kill",
            Action::Crash => "crash",
            Action::Freeze => "freeze",
            Action::Partition => "partition",
            Action::Restart => "restart",
            Action::Migrate => "migrate",
        }
    }

    /// Every action, in a fixed order (the seed draws from this list).
    pub const ALL: [Action; 6] = [
        Action::Kill,
        Action::Crash,
        Action::Freeze,
        Action::Partition,
        Action::Restart,
        Action::Migrate,
    ];
}

/// Options of `tandem bench chaos`.
#[derive(Debug, Clone)]
pub struct Options {
    /// The lab's name (at most [`tandem_lab::MAX_NAME_LEN`] characters).
    pub name: String,
    /// How long to inject faults, in minutes.
    pub minutes: f64,
    /// Nodes in the lab: 3 (one fault at a time) or 5 (up to two).
    pub nodes: usize,
    /// The schedule's seed.
    pub seed: u64,
    pub service: Service,
    /// Connections of the load. Default 16.
    pub connections: usize,
    /// Actions to draw from (default: all).
    pub actions: Vec<Action>,
    /// How long a fault is held: drawn uniformly from this range, ms.
    /// Default 500–6,000.
    pub hold_ms: (u64, u64),
    /// The quiet time between recovery and the next fault: drawn uniformly
    /// from this range, ms. Default 1,000–4,000.
    pub quiet_ms: (u64, u64),
    /// How long the cluster may take to be healthy again after a restore
    /// before the run calls it a wedge and stops. Default 60 s.
    pub recover_within: Duration,
    /// A reply later than this is an error for the load. Default 10 s.
    pub reply_timeout: Duration,
    /// Where the node logs, the schedule and the JSON report are kept.
    pub logs: PathBuf,
    /// Print the report as JSON (progress still goes to stderr).
    pub json: bool,
}

impl Options {
    /// The defaults: 3 nodes, kv, 16 connections, all actions.
    pub fn new(minutes: f64, seed: u64) -> Options {
        Options {
            name: DEFAULT_LAB.to_string(),
            minutes,
            nodes: 3,
            seed,
            service: Service::Kv,
            connections: 16,
            actions: Action::ALL.to_vec(),
            hold_ms: (500, 6_000),
            quiet_ms: (1_000, 4_000),
            recover_within: Duration::from_secs(60),
            reply_timeout: Duration::from_secs(10),
            logs: PathBuf::from("/tmp/tandem-chaos"),
            json: false,
        }
    }

    fn validate(&self) -> Result<()> {
        tandem_lab::validate_name(&self.name)?;
        if self.nodes != 3 && self.nodes != 5 {
            bail!("--nodes must be 3 or 5, not {}", self.nodes);
        }
        if !(self.minutes > 0.0 && self.minutes.is_finite()) {
            bail!("--minutes must be a positive number");
        }
        if self.connections == 0 {
            bail!("--connections must be at least 1");
        }
        if self.actions.is_empty() {
            bail!("give at least one action");
        }
        if self.hold_ms.0 > self.hold_ms.1 || self.quiet_ms.0 > self.quiet_ms.1 {
            bail!("a range's low end is above its high end");
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The seeded schedule.

/// SplitMix64: a small, well-mixed generator, so a seed means the same
/// schedule on every machine and version of the dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Who a fault hits, as a role: mapped to a node when it is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Role {
    Primary,
    /// The clone of this rank among the healthy clones (by node id).
    Clone(usize),
}

/// One planned fault.
#[derive(Debug, Clone, Copy, Serialize)]
struct Planned {
    action: Action,
    role: Role,
    /// From the episode's first fault, ms (0 for the first).
    offset_ms: u64,
}

/// One planned episode.
#[derive(Debug, Clone, Serialize)]
struct Plan {
    faults: Vec<Planned>,
    hold_ms: u64,
    quiet_ms: u64,
}

/// Draws the next episode.
fn plan(rng: &mut Rng, opts: &Options) -> Plan {
    let pick =
        |rng: &mut Rng, actions: &[Action]| actions[rng.below(actions.len() as u64) as usize];
    let first_action = pick(rng, &opts.actions);
    let clones = opts.nodes - 1;
    let role = |rng: &mut Rng| {
        if rng.chance(50) {
            Role::Primary
        } else {
            Role::Clone(rng.below(clones as u64) as usize)
        }
    };
    let first_role = if first_action == Action::Migrate {
        Role::Primary
    } else {
        role(rng)
    };
    let hold_ms = rng.between(opts.hold_ms.0, opts.hold_ms.1);
    let quiet_ms = rng.between(opts.quiet_ms.0, opts.quiet_ms.1);
    let mut faults = vec![Planned {
        action: first_action,
        role: first_role,
        offset_ms: 0,
    }];
    let others: Vec<Action> = opts
        .actions
        .iter()
        .copied()
        .filter(|a| *a != Action::Migrate)
        .collect();
    // A second fault only where a majority survives two (5 nodes).
    if opts.nodes >= 5 && !others.is_empty() && rng.chance(33) {
        let action = pick(rng, &others);
        let mut second = role(rng);
        if second == first_role {
            second = match first_role {
                Role::Primary => Role::Clone(0),
                Role::Clone(_) => Role::Primary,
            };
        }
        faults.push(Planned {
            action,
            role: second,
            offset_ms: rng.below(hold_ms / 2 + 1),
        });
    }
    Plan {
        faults,
        hold_ms,
        quiet_ms,
    }
}

// ---------------------------------------------------------------------------
// Results.

/// One fault as applied.
#[derive(Debug, Clone, Serialize)]
struct Applied {
    action: Action,
    role: Role,
    node: u32,
    /// Since the start of the run, s.
    at_s: f64,
    /// What restored it (`None`: nothing needed).
    restored_by: Option<&'static str>,
    /// A migration the primary refused (not counted as a failure: the
    /// target may have fallen behind in the meantime).
    refused: Option<String>,
}

/// One episode as it happened.
#[derive(Debug, Clone, Serialize)]
struct Episode {
    index: usize,
    at_s: f64,
    primary_before: u32,
    primary_after: Option<u32>,
    faults: Vec<Applied>,
    hold_ms: u64,
    /// From the restore to a healthy cluster, ms (`None`: never: a wedge).
    recovered_ms: Option<f64>,
    /// From the first fault to a healthy cluster, ms.
    fault_to_healthy_ms: Option<f64>,
    /// Primary changes seen during the episode.
    failovers: u64,
    /// The largest gap between two replies of one connection across the
    /// fault (ms; `None` until every connection has replied after it),
    /// and the p99 over connections.
    pause_max_ms: Option<f64>,
    pause_p99_ms: Option<f64>,
    /// The same in the quiet window before the fault (the baseline).
    quiet_max_ms: Option<f64>,
    /// Load errors (any kind) counted during the episode.
    errors: u64,
    #[serde(skip)]
    event: usize,
    #[serde(skip)]
    quiet_event: Option<usize>,
}

/// min/median/p99/max.
#[derive(Debug, Clone, Copy, Serialize)]
struct Stats {
    count: usize,
    min: f64,
    median: f64,
    p99: f64,
    max: f64,
}

impl Stats {
    fn of(values: impl IntoIterator<Item = f64>) -> Option<Stats> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        Some(Stats {
            count: n,
            min: v[0],
            median: v[n / 2],
            p99: v[nearest_rank(n, 0.99)],
            max: v[n - 1],
        })
    }
}

/// The index of the `q` quantile of `n` sorted values (nearest rank).
fn nearest_rank(n: usize, q: f64) -> usize {
    ((q * n as f64).ceil() as usize).clamp(1, n) - 1
}

/// One replica at the end.
#[derive(Debug, Clone, Serialize)]
struct Replica {
    node: u32,
    applied_index: u64,
    state_hash: String,
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    lab: String,
    nodes: usize,
    service: Service,
    seed: u64,
    connections: usize,
    minutes: f64,
    cpus: usize,
    elapsed_s: f64,
    episodes: usize,
    actions: Vec<(Action, usize)>,
    migrations_refused: usize,
    failovers: u64,
    /// Ms from restore to healthy.
    recovery_ms: Option<Stats>,
    /// Per episode: the largest gap of any connection across the fault.
    pause_max_ms: Option<Stats>,
    /// Per episode: the p99 over connections of each one's largest gap.
    pause_p99_ms: Option<Stats>,
    /// Per quiet window: the largest gap (the baseline).
    quiet_max_ms: Option<Stats>,
    /// Every connection's largest gap across every fault (connections ×
    /// episodes values), and the same over the quiet windows.
    pause_conn_ms: Option<Stats>,
    quiet_conn_ms: Option<Stats>,
    /// Replies per second during faults and in quiet windows.
    rate_faults: f64,
    rate_quiet: f64,
    ops: u64,
    errors: u64,
    lost: u64,
    duplicated: u64,
    /// What the read-back found.
    final_checked: u64,
    final_lost: u64,
    final_duplicated: u64,
    final_errors: u64,
    in_flight_applied: u64,
    untallied: u64,
    client_rsts: u64,
    /// `None` if the replicas never settled on one applied index.
    hashes_equal: Option<bool>,
    replicas: Vec<Replica>,
    daemons_alive: usize,
    wedge: Option<String>,
    error_samples: Vec<String>,
    logs: String,
    passed: bool,
    episode_log: Vec<Episode>,
}

// ---------------------------------------------------------------------------
// The run.

/// Runs the chaos benchmark; the exit status says whether it passed.
pub fn run(opts: Options) -> Result<ExitCode> {
    crate::require_root("tandem bench chaos")?;
    opts.validate()?;
    std::fs::create_dir_all(&opts.logs)
        .with_context(|| format!("creating {}", opts.logs.display()))?;
    let spec = LabSpec::named(opts.name.clone())
        .with_nodes(opts.nodes)
        .with_service(match opts.service {
            Service::Kv => ServiceKind::Kv,
            Service::Counter => ServiceKind::Counter,
        });
    let what = format!(
        "{} nodes, {:?}, seed {}",
        opts.nodes, opts.service, opts.seed
    );
    let report = crate::in_lab(
        "chaos",
        &spec,
        &what,
        |lab| chaos(lab, &opts),
        Some(opts.logs.as_path()),
    )?;
    let json = serde_json::to_string_pretty(&report)?;
    let _ = std::fs::write(opts.logs.join("report.json"), &json);
    if opts.json {
        println!("{json}");
    } else {
        print_report(&report);
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn progress(line: &str) {
    eprintln!("bench chaos: {line}");
}

/// What the run keeps while it goes.
struct Run<'a> {
    opts: &'a Options,
    start: Instant,
    /// The node last seen serving the VIP, and primary changes seen.
    last_primary: Option<u32>,
    failovers: u64,
    schedule: std::fs::File,
}

impl Run<'_> {
    fn secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Notes the node serving the VIP now (a change is a failover).
    fn poll_primary(&mut self, lab: &Lab) {
        if let Some(now) = lab.status().leader {
            if self.last_primary.is_some_and(|p| p != now) {
                self.failovers += 1;
            }
            self.last_primary = Some(now);
        }
    }

    /// Sleeps `d`, polling the primary every 200 ms.
    fn watch(&mut self, lab: &Lab, d: Duration) {
        let until = Instant::now() + d;
        loop {
            self.poll_primary(lab);
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(200)));
        }
    }

    fn log(&mut self, line: &str) {
        use std::io::Write;
        let _ = writeln!(self.schedule, "{:9.3} {line}", self.secs());
        progress(line);
    }
}

fn chaos(lab: &mut LabGuard, opts: &Options) -> Result<Report> {
    let schedule_path = opts.logs.join("schedule.txt");
    let schedule = std::fs::File::create(&schedule_path)
        .with_context(|| format!("creating {}", schedule_path.display()))?;
    let mut run = Run {
        opts,
        start: Instant::now(),
        last_primary: None,
        failovers: 0,
        schedule,
    };
    run.log(&format!(
        "lab {} up: {} nodes, {:?}, seed {}, {} connections, {:.1} min of faults",
        opts.name, opts.nodes, opts.service, opts.seed, opts.connections, opts.minutes
    ));
    let first = wait_healthy(lab, opts.nodes, Duration::from_secs(60))
        .map_err(|e| anyhow::anyhow!("the new lab never became healthy: {e}"))?;
    run.last_primary = Some(first);
    let rst_before = lab.client_rst_count()?;
    let config = WorkloadConfig {
        connections: opts.connections,
        reply_timeout: opts.reply_timeout,
        key_prefix: format!("chaos{}", opts.seed),
        protocol: match opts.service {
            Service::Kv => Protocol::Resp,
            Service::Counter => Protocol::CounterLines,
        },
        ..WorkloadConfig::new(SocketAddr::new(lab.vip().into(), lab.port()))
    };
    let start_config = config.clone();
    let load = lab.run_in(None, move || Workload::start(start_config))?;
    let monitor = load.monitor();
    run.start = monitor.started();

    let mut rng = Rng(opts.seed);
    let mut episodes: Vec<Episode> = Vec::new();
    let mut wedge = None;
    let (mut fault_gaps, mut quiet_gaps) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs_f64(opts.minutes * 60.0);
    // The first baseline window.
    let mut quiet_event = Some(load.mark_event());
    run.watch(lab, Duration::from_millis(opts.quiet_ms.0));
    while Instant::now() < deadline {
        let plan = plan(&mut rng, opts);
        if let Some(q) = quiet_event {
            load.end_event(q);
        }
        let errors_before = monitor.counters().errors;
        let result = episode(lab, &mut run, &load, &plan, episodes.len() + 1);
        let mut ep = match result {
            Ok(ep) => ep,
            Err(err) => {
                // The harness failed to act (a lab command failed): stop.
                wedge = Some(format!("episode {}: {err:#}", episodes.len() + 1));
                run.log(&format!("stopping: {err:#}"));
                break;
            }
        };
        ep.quiet_event = quiet_event;
        ep.errors = monitor.counters().errors - errors_before;
        let wedged = ep.recovered_ms.is_none();
        // The next quiet window starts now; its end is the next fault.
        quiet_event = Some(load.mark_event());
        run.watch(lab, Duration::from_millis(plan.quiet_ms));
        let gaps = monitor.event_gaps(ep.event);
        let (max, p99) = gap_stats(&gaps);
        ep.pause_max_ms = max;
        ep.pause_p99_ms = p99;
        let quiet = ep
            .quiet_event
            .map(|q| monitor.event_gaps(q))
            .unwrap_or_default();
        ep.quiet_max_ms = gap_stats(&quiet).0;
        fault_gaps.extend(gaps.iter().flatten().map(|d| ms(*d)));
        quiet_gaps.extend(quiet.iter().flatten().map(|d| ms(*d)));
        let c = monitor.counters();
        run.log(&format!(
            "episode {} done: {}; primary {} → {}; recovered {} after restore; pause max {} p99 {} (quiet {}); failovers {} total; ops {} ({:.0}/s), errors {}, lost {}, dup {}",
            ep.index,
            ep.faults
                .iter()
                .map(|f| format!("{} node {} ({})", f.action.as_str(), f.node, role_name(f.role)))
                .collect::<Vec<_>>()
                .join(" + "),
            ep.primary_before,
            ep.primary_after.map_or("?".into(), |p| p.to_string()),
            opt_ms(ep.recovered_ms),
            opt_ms(ep.pause_max_ms),
            opt_ms(ep.pause_p99_ms),
            opt_ms(ep.quiet_max_ms),
            run.failovers,
            c.ops,
            monitor.recent_rate(Duration::from_secs(2)),
            c.errors,
            c.lost,
            c.duplicated,
        ));
        episodes.push(ep);
        if wedged {
            wedge = Some(format!(
                "the cluster did not recover within {:?} after episode {}",
                opts.recover_within,
                episodes.len()
            ));
            break;
        }
    }
    if let Some(q) = quiet_event {
        load.end_event(q);
    }
    run.log("faults over; stopping the load");
    let elapsed = run.secs();
    let report = load.stop(Duration::from_secs(2));
    let final_check = {
        let tallies = report.tallies.clone();
        let config = config.clone();
        lab.run_in(None, move || workload::final_check(&config, &tallies))?
    };
    run.log(&format!(
        "read back {} counters: lost {}, duplicated {}, errors {}",
        final_check.checked, final_check.lost, final_check.duplicated, final_check.error_count
    ));
    let rsts = lab.client_rst_count()?.saturating_sub(rst_before);
    let (replicas, hashes_equal) = settled_hashes(lab, opts.nodes);
    let daemons_alive = lab.status().nodes.iter().filter(|n| n.alive).count();

    // Replies per second in fault windows and in quiet windows, from the
    // latency buckets (by send time).
    let bucket_s = workload::BUCKET.as_secs_f64();
    let rate_in = |windows: &[(f64, f64)]| {
        let (mut count, mut span) = (0u64, 0.0);
        for (from, to) in windows {
            let (a, b) = ((from / bucket_s) as usize, (to / bucket_s) as usize);
            if b <= a {
                continue;
            }
            count += report
                .buckets
                .iter()
                .skip(a)
                .take(b - a)
                .map(|b| u64::from(b.count))
                .sum::<u64>();
            span += (b - a) as f64 * bucket_s;
        }
        if span > 0.0 {
            count as f64 / span
        } else {
            0.0
        }
    };
    let event_at = |i: usize| report.events.get(i).map(|e| e.0.as_secs_f64());
    let mut fault_windows = Vec::new();
    let mut quiet_windows = Vec::new();
    for ep in &episodes {
        let start = event_at(ep.event).unwrap_or(ep.at_s);
        let end = start + ep.fault_to_healthy_ms.unwrap_or(0.0) / 1e3;
        fault_windows.push((start, end));
        if let Some(q) = ep.quiet_event.and_then(event_at) {
            quiet_windows.push((q, start));
        }
    }

    let mut actions: Vec<(Action, usize)> = Vec::new();
    for f in episodes.iter().flat_map(|e| &e.faults) {
        match actions.iter_mut().find(|(a, _)| *a == f.action) {
            Some((_, n)) => *n += 1,
            None => actions.push((f.action, 1)),
        }
    }
    actions.sort();
    let counters = report.counters;
    let mut error_samples: Vec<String> = report
        .errors
        .iter()
        .take(50)
        .map(|e| {
            format!(
                "{:.3}s connection {}: {}",
                e.at.as_secs_f64(),
                e.connection,
                e.what
            )
        })
        .collect();
    error_samples.extend(final_check.errors.iter().take(50).cloned());
    let passed = counters.errors == 0
        && counters.lost == 0
        && counters.duplicated == 0
        && final_check.error_count == 0
        && rsts == 0
        && hashes_equal == Some(true)
        && daemons_alive == opts.nodes
        && wedge.is_none()
        && report.untallied == 0;
    Ok(Report {
        lab: opts.name.clone(),
        nodes: opts.nodes,
        service: opts.service,
        seed: opts.seed,
        connections: opts.connections,
        minutes: opts.minutes,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        elapsed_s: elapsed,
        episodes: episodes.len(),
        actions,
        migrations_refused: episodes
            .iter()
            .flat_map(|e| &e.faults)
            .filter(|f| f.refused.is_some())
            .count(),
        failovers: run.failovers,
        recovery_ms: Stats::of(episodes.iter().filter_map(|e| e.recovered_ms)),
        pause_max_ms: Stats::of(episodes.iter().filter_map(|e| e.pause_max_ms)),
        pause_p99_ms: Stats::of(episodes.iter().filter_map(|e| e.pause_p99_ms)),
        quiet_max_ms: Stats::of(episodes.iter().filter_map(|e| e.quiet_max_ms)),
        pause_conn_ms: Stats::of(fault_gaps),
        quiet_conn_ms: Stats::of(quiet_gaps),
        rate_faults: rate_in(&fault_windows),
        rate_quiet: rate_in(&quiet_windows),
        ops: counters.ops,
        errors: counters.errors,
        lost: counters.lost,
        duplicated: counters.duplicated,
        final_checked: final_check.checked,
        final_lost: final_check.lost,
        final_duplicated: final_check.duplicated,
        final_errors: final_check.error_count,
        in_flight_applied: final_check.in_flight_applied,
        untallied: report.untallied,
        client_rsts: rsts,
        hashes_equal,
        replicas,
        daemons_alive,
        wedge,
        error_samples,
        logs: opts.logs.display().to_string(),
        passed,
        episode_log: episodes,
    })
}

/// The largest of `gaps` and their p99 (nearest rank), in ms.
fn gap_stats(gaps: &[Option<Duration>]) -> (Option<f64>, Option<f64>) {
    let mut v: Vec<f64> = gaps.iter().flatten().map(|d| ms(*d)).collect();
    if v.is_empty() {
        return (None, None);
    }
    v.sort_by(f64::total_cmp);
    (v.last().copied(), Some(v[nearest_rank(v.len(), 0.99)]))
}

/// Runs one episode: faults, hold, restore, recovery.
fn episode(
    lab: &mut LabGuard,
    run: &mut Run,
    load: &Workload,
    plan: &Plan,
    index: usize,
) -> Result<Episode> {
    let opts = run.opts;
    // Every episode starts from a healthy cluster (the previous one ended
    // so); ask again for the primary and the clones' order.
    let primary = wait_healthy(lab, opts.nodes, opts.recover_within)
        .map_err(|e| anyhow::anyhow!("not healthy before the fault: {e}"))?;
    let clones: Vec<u32> = lab
        .node_ids()
        .into_iter()
        .filter(|id| *id != primary)
        .collect();
    let node_of = |role: Role| match role {
        Role::Primary => primary,
        Role::Clone(rank) => clones[rank % clones.len()],
    };
    let at_s = run.secs();
    let event = load.mark_event();
    let failovers_before = run.failovers;
    let t0 = Instant::now();
    let mut applied: Vec<Applied> = Vec::new();
    for planned in &plan.faults {
        let wait = Duration::from_millis(planned.offset_ms).saturating_sub(t0.elapsed());
        run.watch(lab, wait);
        let node = node_of(planned.role);
        let (restored_by, refused) = apply(lab, planned.action, node)?;
        run.log(&format!(
            "episode {index}: {} node {node} ({}), hold {} ms",
            planned.action.as_str(),
            role_name(planned.role),
            plan.hold_ms
        ));
        applied.push(Applied {
            action: planned.action,
            role: planned.role,
            node,
            at_s: run.secs(),
            restored_by,
            refused,
        });
    }
    let held = t0.elapsed();
    run.watch(
        lab,
        Duration::from_millis(plan.hold_ms).saturating_sub(held),
    );
    for f in &applied {
        match f.action {
            Action::Kill | Action::Crash => {
                lab.restart(f.node)?;
            }
            Action::Freeze => {
                lab.cont(f.node)?;
            }
            Action::Partition => {
                lab.heal(f.node)?;
            }
            Action::Restart | Action::Migrate => {}
        }
    }
    let restored = Instant::now();
    let healthy = wait_healthy_watching(lab, run, opts.nodes, opts.recover_within);
    let recovered_ms = healthy.as_ref().ok().map(|_| ms(restored.elapsed()));
    let fault_to_healthy_ms = healthy.as_ref().ok().map(|_| ms(t0.elapsed()));
    if let Err(why) = &healthy {
        run.log(&format!("episode {index}: NO RECOVERY: {why}"));
    }
    load.end_event(event);
    Ok(Episode {
        index,
        at_s,
        primary_before: primary,
        primary_after: healthy.ok(),
        faults: applied,
        hold_ms: plan.hold_ms,
        recovered_ms,
        fault_to_healthy_ms,
        failovers: run.failovers - failovers_before,
        pause_max_ms: None,
        pause_p99_ms: None,
        quiet_max_ms: None,
        errors: 0,
        event,
        quiet_event: None,
    })
}

/// Applies one fault; returns what will restore it, and why a migration
/// was refused.
fn apply(
    lab: &mut LabGuard,
    action: Action,
    node: u32,
) -> Result<(Option<&'static str>, Option<String>)> {
    Ok(match action {
        Action::Kill => {
            lab.kill(node)?;
            (Some("restart"), None)
        }
        Action::Crash => {
            lab.crash(node)?;
            (Some("restart"), None)
        }
        Action::Freeze => {
            lab.stop(node)?;
            (Some("cont"), None)
        }
        Action::Partition => {
            lab.partition(node)?;
            (Some("heal"), None)
        }
        Action::Restart => {
            lab.restart(node)?;
            (None, None)
        }
        Action::Migrate => (None, migrate(lab, node).err().map(|e| format!("{e:#}"))),
    })
}

/// Moves the primary role from `primary` to a caught-up clone.
fn migrate(lab: &Lab, primary: u32) -> Result<()> {
    let to = caught_up_clone(lab, primary)?;
    let socket = lab
        .node_admin_socket(primary)?
        .context("the primary has no admin socket")?;
    match request(
        &socket,
        &AdminRequest::Migrate { to },
        Duration::from_secs(5),
    )? {
        AdminReply::Error { message } => bail!("migrate to {to}: {message}"),
        AdminReply::Done { .. } | AdminReply::Status(_) => Ok(()),
    }
}

/// A clone the primary sees connected and not behind (the lowest slot).
fn caught_up_clone(lab: &Lab, primary: u32) -> Result<u16> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(r) = report(lab, primary) {
            let best = r
                .peers
                .iter()
                .filter(|p| u32::from(p.slot) != primary && p.connected && p.lag == 0)
                .map(|p| p.slot)
                .min();
            if let Some(slot) = best {
                return Ok(slot);
            }
        }
        if Instant::now() > deadline {
            bail!("no caught-up clone of node {primary} within 5 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn report(lab: &Lab, id: u32) -> Option<NodeReport> {
    crate::node_report(lab, id)
}

/// Whether the cluster is healthy now: one primary serving the VIP, every
/// node answering as one of `nodes` voters with no learners, all applied
/// close to what is committed. Returns the primary, or what is missing.
fn healthy(lab: &Lab, nodes: usize) -> std::result::Result<u32, String> {
    let reports: Vec<NodeReport> = crate::node_reports(lab);
    let Some(p) = reports.iter().find(|r| r.role == "primary") else {
        return Err(format!("no primary; {}", describe(&reports)));
    };
    let ok = reports.len() == nodes
        && reports.iter().all(|r| {
            r.voters.len() == nodes
                && r.learners.is_empty()
                && p.commit_index.saturating_sub(r.applied_index) < 1000
        });
    if !ok {
        return Err(format!("primary {}; {}", p.slot, describe(&reports)));
    }
    match lab.status().leader {
        Some(l) if l == u32::from(p.slot) => Ok(l),
        other => Err(format!(
            "node {} reports primary but the VIP holder is {other:?}",
            p.slot
        )),
    }
}

fn describe(reports: &[NodeReport]) -> String {
    reports
        .iter()
        .map(|r| {
            format!(
                "node {} {} term {} applied {}/{} voters {:?} learners {:?}",
                r.slot, r.role, r.term, r.applied_index, r.commit_index, r.voters, r.learners
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn wait_healthy(lab: &Lab, nodes: usize, limit: Duration) -> std::result::Result<u32, String> {
    let deadline = Instant::now() + limit;
    loop {
        match healthy(lab, nodes) {
            Ok(p) => return Ok(p),
            Err(why) if Instant::now() >= deadline => return Err(why),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// [`wait_healthy`], noting primary changes meanwhile.
fn wait_healthy_watching(
    lab: &Lab,
    run: &mut Run,
    nodes: usize,
    limit: Duration,
) -> std::result::Result<u32, String> {
    let deadline = Instant::now() + limit;
    loop {
        run.poll_primary(lab);
        match healthy(lab, nodes) {
            Ok(p) => {
                run.poll_primary(lab);
                return Ok(p);
            }
            Err(why) if Instant::now() >= deadline => return Err(why),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Waits (up to 30 s) until every replica answers at one applied index,
/// and returns their hashes then, and whether they are equal (`None`: they
/// never settled).
fn settled_hashes(lab: &Lab, nodes: usize) -> (Vec<Replica>, Option<bool>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reports: Vec<NodeReport> = crate::node_reports(lab);
        let replicas: Vec<Replica> = reports
            .iter()
            .map(|r| Replica {
                node: u32::from(r.slot),
                applied_index: r.applied_index,
                state_hash: r.service.state_hash.clone(),
            })
            .collect();
        let settled = reports.len() == nodes
            && reports
                .iter()
                .all(|r| r.applied_index == reports[0].applied_index);
        if settled {
            let equal = replicas
                .iter()
                .all(|r| r.state_hash == replicas[0].state_hash);
            return (replicas, Some(equal));
        }
        if Instant::now() > deadline {
            return (replicas, None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn role_name(role: Role) -> String {
    match role {
        Role::Primary => "primary".into(),
        Role::Clone(rank) => format!("clone #{rank}"),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("?".into(), |v| format!("{v:.0} ms"))
}

fn print_report(r: &Report) {
    println!(
        "## Chaos run: {} nodes, {:?}, seed {}, {} connections, {:.1} min ({} CPUs)\n",
        r.nodes,
        r.service,
        r.seed,
        r.connections,
        r.elapsed_s / 60.0,
        r.cpus
    );
    println!("Verdict: {}\n", if r.passed { "PASS" } else { "FAIL" });
    let actions: Vec<String> = r
        .actions
        .iter()
        .map(|(a, n)| format!("{} {n}", a.as_str()))
        .collect();
    println!(
        "- episodes: {} (faults: {}); migrations refused: {}",
        r.episodes,
        actions.join(", "),
        r.migrations_refused
    );
    println!(
        "- failovers (changes of the node serving the VIP): {}",
        r.failovers
    );
    let line = |what: &str, s: Option<Stats>| match s {
        Some(s) => println!(
            "- {what}: median {:.0} ms, p99 {:.0} ms, max {:.0} ms (min {:.0} ms, {} values)",
            s.median, s.p99, s.max, s.min, s.count
        ),
        None => println!("- {what}: -"),
    };
    line("recovery (restore → healthy)", r.recovery_ms);
    line(
        "pause across a fault (largest gap of any connection)",
        r.pause_max_ms,
    );
    line(
        "pause across a fault (p99 over connections)",
        r.pause_p99_ms,
    );
    line(
        "baseline: largest gap in the quiet window before",
        r.quiet_max_ms,
    );
    line(
        "each connection's largest gap across each fault",
        r.pause_conn_ms,
    );
    line(
        "baseline: each connection's largest gap in each quiet window",
        r.quiet_conn_ms,
    );
    if let (Some(p), Some(q)) = (r.pause_max_ms, r.quiet_max_ms) {
        println!(
            "- pause ÷ baseline (medians): {:.1}",
            p.median / q.median.max(1e-3)
        );
    }
    println!(
        "- replies/s: {:.0} during faults (fault → healthy), {:.0} in quiet windows (ratio {:.2})",
        r.rate_faults,
        r.rate_quiet,
        r.rate_faults / r.rate_quiet.max(1e-9)
    );
    println!(
        "- checked replies: {}; errors {}; lost {}; duplicated {}; client resets {}",
        r.ops, r.errors, r.lost, r.duplicated, r.client_rsts
    );
    println!(
        "- read back: {} counters; lost {}; duplicated {}; errors {}; in-flight INCRs applied {}; untallied {}",
        r.final_checked,
        r.final_lost,
        r.final_duplicated,
        r.final_errors,
        r.in_flight_applied,
        r.untallied
    );
    let hashes: Vec<String> = r
        .replicas
        .iter()
        .map(|x| {
            format!(
                "node {} @{} {}",
                x.node,
                x.applied_index,
                &x.state_hash[..x.state_hash.len().min(16)]
            )
        })
        .collect();
    println!(
        "- state hashes: {} ({})",
        match r.hashes_equal {
            Some(true) => "equal",
            Some(false) => "DIFFER",
            None => "never settled on one index",
        },
        hashes.join(", ")
    );
    println!(
        "- daemons alive at the end: {}/{}",
        r.daemons_alive, r.nodes
    );
    if let Some(w) = &r.wedge {
        println!("- STOPPED EARLY: {w}");
    }
    for e in &r.error_samples {
        println!("  - {e}");
    }
    println!("- logs, schedule and JSON report: {}", r.logs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_gives_one_schedule_and_another_seed_another() {
        let opts = Options {
            nodes: 5,
            ..Options::new(1.0, 7)
        };
        let draw = |seed| {
            let mut rng = Rng(seed);
            (0..50)
                .map(|_| format!("{:?}", plan(&mut rng, &opts)))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn plans_keep_a_majority_and_stay_in_range() {
        for nodes in [3, 5] {
            let opts = Options {
                nodes,
                ..Options::new(1.0, 1)
            };
            let mut rng = Rng(99);
            let mut seen = std::collections::BTreeSet::new();
            let mut doubles = 0;
            for _ in 0..2_000 {
                let p = plan(&mut rng, &opts);
                assert!(p.faults.len() <= (nodes - 1) / 2, "{p:?}");
                assert!((500..=6_000).contains(&p.hold_ms));
                assert!((1_000..=4_000).contains(&p.quiet_ms));
                if let [a, b] = p.faults.as_slice() {
                    doubles += 1;
                    assert_ne!(a.role, b.role, "two faults on one node: {p:?}");
                    assert_ne!(b.action, Action::Migrate);
                    assert!(b.offset_ms <= p.hold_ms / 2);
                }
                for f in &p.faults {
                    if f.action == Action::Migrate {
                        assert_eq!(f.role, Role::Primary);
                    }
                    if let Role::Clone(rank) = f.role {
                        assert!(rank < nodes - 1);
                    }
                    seen.insert(f.action);
                }
            }
            assert_eq!(seen.len(), Action::ALL.len(), "every action drawn");
            assert_eq!(doubles > 0, nodes == 5);
        }
    }

    #[test]
    fn only_the_asked_actions_are_drawn() {
        let opts = Options {
            actions: vec![Action::Freeze, Action::Partition],
            ..Options::new(1.0, 3)
        };
        let mut rng = Rng(3);
        for _ in 0..500 {
            for f in plan(&mut rng, &opts).faults {
                assert!(matches!(f.action, Action::Freeze | Action::Partition));
            }
        }
    }

    #[test]
    fn gap_stats_take_the_max_and_the_nearest_rank_p99() {
        let gaps: Vec<Option<Duration>> = (1..=200)
            .map(|i| Some(Duration::from_millis(i)))
            .chain([None])
            .collect();
        let (max, p99) = gap_stats(&gaps);
        assert_eq!(max, Some(200.0));
        assert_eq!(p99, Some(198.0));
        assert_eq!(gap_stats(&[None, None]), (None, None));
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(Options::new(1.0, 1).validate().is_ok());
        for bad in [
            Options {
                nodes: 4,
                ..Options::new(1.0, 1)
            },
            Options::new(0.0, 1),
            Options {
                connections: 0,
                ..Options::new(1.0, 1)
            },
            Options {
                actions: vec![],
                ..Options::new(1.0, 1)
            },
            Options {
                name: "a-name-far-too-long-for-a-lab".into(),
                ..Options::new(1.0, 1)
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
