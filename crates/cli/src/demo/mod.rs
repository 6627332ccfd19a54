//! `tandem demo`: the main job, on one machine. A lab of node namespaces
//! runs the replicated kv service; a load generator keeps many client
//! connections busy with checked updates (see [`tandem_bench::workload`]); every
//! few seconds the primary is power-cut or crashed, a clone takes over with
//! every connection, and the old primary comes back as a clone. A live
//! status line shows what happens; at the end a summary (operations,
//! errors, lost or duplicated updates, the pause clients saw at each
//! failover) and a latency chart (SVG) with every failover marked.

mod display;
mod schedule;
mod summary;
mod svg;

use anyhow::{bail, Context, Result};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tandem_lab::{Lab, LabGuard, LabSpec, ServiceKind, MAX_NODES};
use tandem_node::admin::{request, AdminReply, AdminRequest};
use tandem_node::report::NodeReport;

use display::{Display, Stream};
use schedule::{Schedule, LAST_FAULT_MARGIN};
use summary::{FailoverRow, Summary};
use tandem_bench::workload::{Report, Workload, WorkloadConfig, BUCKET};

/// The old primary is restarted this long after the new one serves.
const RESTART_AFTER: Duration = Duration::from_secs(2);
/// The longest wait for a new primary before the run is called failed.
const ELECTION_WAIT: Duration = Duration::from_secs(20);
/// A reply later than this is an error.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// What `tandem demo` (the failover demo) was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    pub nodes: usize,
    /// `--kill-interval`; `None`: the default, scaled down to fit a short
    /// run (see [`schedule`]).
    pub kill_interval: Option<Duration>,
    pub connections: usize,
    pub keep: bool,
    pub json: bool,
    pub svg: Option<PathBuf>,
    pub name: Option<String>,
}

/// The two faults the demo alternates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Crash,
}

impl Fault {
    fn as_str(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Crash => "crash",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Fault::Kill => "power cut: daemon killed, link down",
            Fault::Crash => "process crash: daemon killed, its kernel lives on",
        }
    }
}

/// One failover as the controller saw it.
struct Failover {
    fault: Fault,
    from: u32,
    to: Option<u32>,
    at: Duration,
    elected: Option<Duration>,
    event: usize,
}

pub fn run(opts: Options) -> Result<ExitCode> {
    // Before anything else (root included): a run that cannot show a
    // failover is refused, not run.
    let schedule = Schedule::plan(opts.duration, opts.kill_interval).map_err(anyhow::Error::msg)?;
    crate::require_root("tandem demo")?;
    if opts.nodes < 3 || opts.nodes.is_multiple_of(2) || opts.nodes > MAX_NODES {
        bail!(
            "--nodes must be odd, at least 3 and at most {MAX_NODES} (a majority must survive a failed primary), not {}",
            opts.nodes
        );
    }
    let name = opts
        .name
        .clone()
        .unwrap_or_else(|| format!("demo{}", std::process::id()));
    tandem_lab::validate_name(&name)?;
    let svg_path = match &opts.svg {
        Some(p) => p.clone(),
        None => PathBuf::from(format!("tandem-demo-{}.svg", timestamp())),
    };
    let svg_path = if svg_path.is_absolute() {
        svg_path
    } else {
        std::env::current_dir()
            .context("the current directory")?
            .join(svg_path)
    };
    check_svg_dir(&svg_path)?;

    // Ctrl-C or SIGTERM: stop the load, report, take the lab down. A
    // second one exits at once.
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 130, interrupted.clone())
            .context("installing signal handlers")?;
        signal_hook::flag::register(signal, interrupted.clone())
            .context("installing signal handlers")?;
    }

    let tandem = std::env::current_exe().context("locating the tandem binary")?;
    let spec = LabSpec::named(&name)
        .with_nodes(opts.nodes)
        .with_service(ServiceKind::Kv);
    let up_started = Instant::now();
    eprintln!(
        "building lab {name}: {} nodes running the replicated kv service, 1 client namespace, on a bridge ...",
        opts.nodes
    );
    let mut lab = LabGuard::new(
        Lab::up_with_daemon(&spec, Some(&tandem))
            .with_context(|| format!("building lab {name}"))?,
    );
    let first = wait_healthy(&lab, opts.nodes, ELECTION_WAIT, &interrupted);
    let Some(first) = first else {
        if interrupted.load(Ordering::Relaxed) {
            eprintln!("interrupted: taking lab {name} down");
            lab.down()?;
            return Ok(ExitCode::from(130));
        }
        bail!("lab {name}: the cluster did not become healthy (logs: /run/tandem/labs/{name}/)");
    };
    eprintln!(
        "lab {name} up in {:.1} s: primary node {first}, kv at {}:{}",
        up_started.elapsed().as_secs_f64(),
        lab.vip(),
        lab.port()
    );

    let addr = SocketAddr::new(lab.vip().into(), lab.port());
    let config = WorkloadConfig {
        connections: opts.connections,
        reply_timeout: REPLY_TIMEOUT,
        ..WorkloadConfig::new(addr)
    };
    let workload = lab
        .run_in(None, move || Workload::start(config))
        .context("starting the load in the client namespace")?;
    let stream = if opts.json {
        Stream::Stderr
    } else {
        Stream::Stdout
    };
    let display = Display::new(stream, workload.monitor(), opts.duration, first);
    let planned = schedule.nominal_faults(opts.duration).len();
    display.event(&format!(
        "{} connections running INCR, SET and GET through the VIP; a fault every {} s, alternating kill and crash (up to {planned} in {} s)",
        opts.connections,
        schedule.interval.as_secs_f64(),
        opts.duration.as_secs()
    ));
    let refresher = display.spawn();

    let mut controller = Controller {
        lab: &mut lab,
        workload: &workload,
        display: &display,
        interrupted: &interrupted,
        nodes: opts.nodes,
        failovers: Vec::new(),
        problems: Vec::new(),
        pending_restart: None,
    };
    controller.run(opts.duration, schedule.interval);
    let Controller {
        failovers,
        problems,
        pending_restart,
        ..
    } = controller;

    let was_interrupted = interrupted.load(Ordering::Relaxed);
    if was_interrupted {
        display.event("interrupted: stopping the load");
    }
    display.finish(refresher);
    let report = workload.stop(Duration::from_secs(1));

    let chart = chart(&report, &failovers, opts.nodes, opts.connections);
    let svg = match std::fs::write(&svg_path, chart.render()) {
        Ok(()) => Some(svg_path.display().to_string()),
        Err(err) => {
            eprintln!("cannot write {}: {err}", svg_path.display());
            None
        }
    };
    let summary = summarize(
        &name,
        &opts,
        &report,
        &failovers,
        &problems,
        svg,
        was_interrupted,
    );
    if opts.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", summary.table());
    }

    if opts.keep && !was_interrupted {
        if let Some(victim) = pending_restart.map(|(v, _)| v) {
            if let Err(err) = lab.restart(victim) {
                eprintln!("cannot restart node {victim}: {err}");
            }
        }
        let lab = lab.into_inner();
        eprintln!(
            "\nlab {name} left running (--keep); the data is still there:\n  \
             tandem lab exec --name {name} -- redis-cli -h {vip} -p {port} GET demo:0:0:counter\n  \
             tandem status --lab {name}\n  \
             tandem lab kill --name {name} NODE_ID   (then: tandem lab restart --name {name} NODE_ID)\n  \
             node logs: /run/tandem/labs/{name}/node*.log\n\
             remove it with: tandem lab down --name {name}",
            vip = lab.vip(),
            port = lab.port()
        );
    } else {
        eprintln!("taking lab {name} down ...");
        lab.down()
            .with_context(|| format!("taking lab {name} down"))?;
        eprintln!("lab {name} removed");
    }
    if was_interrupted {
        return Ok(ExitCode::from(130));
    }
    Ok(if summary.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

struct Controller<'a> {
    lab: &'a mut Lab,
    workload: &'a Workload,
    display: &'a Display,
    interrupted: &'a AtomicBool,
    nodes: usize,
    failovers: Vec<Failover>,
    /// What went wrong on the controller's side (a fault that could not be
    /// applied, no new primary in time): errors of the run.
    problems: Vec<String>,
    /// The old primary to restart, and when.
    pending_restart: Option<(u32, Instant)>,
}

impl Controller<'_> {
    fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }

    /// Faults every `interval` until `duration` has passed since the load
    /// started (or an interruption).
    fn run(&mut self, duration: Duration, interval: Duration) {
        let start = self.workload.monitor().started();
        let end = start + duration;
        let mut next_fault = start + interval;
        let mut waiting_since: Option<Instant> = None;
        while !self.interrupted() && Instant::now() < end {
            let now = Instant::now();
            if let Some((victim, at)) = self.pending_restart {
                if now >= at {
                    self.pending_restart = None;
                    match self.lab.restart(victim) {
                        Ok(_) => self
                            .display
                            .event(&format!("node {victim} restarted: it rejoins as a clone")),
                        Err(err) => {
                            self.problem(format!("restarting node {victim}: {err}"));
                            return;
                        }
                    }
                }
            }
            if self.pending_restart.is_none()
                && now >= next_fault
                && end.saturating_duration_since(now) >= LAST_FAULT_MARGIN
            {
                // Fault only a healthy cluster (the restarted node caught
                // up and a voter again): otherwise a majority may be gone.
                match healthy(self.lab, self.nodes) {
                    Some(primary) => {
                        waiting_since = None;
                        let fault_at = Instant::now();
                        if !self.failover(primary) {
                            return;
                        }
                        next_fault = fault_at + interval;
                    }
                    None => {
                        let since = *waiting_since.get_or_insert(now);
                        if now - since > Duration::from_secs(5) {
                            self.display.event(
                                "waiting for the cluster to be healthy before the next fault",
                            );
                            waiting_since = Some(now + Duration::from_secs(5));
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn problem(&mut self, what: String) {
        self.display.event(&format!("ERROR: {what}"));
        self.problems.push(what);
    }

    /// Fails `victim` (the primary), waits for the new primary; false if
    /// the run cannot go on.
    fn failover(&mut self, victim: u32) -> bool {
        let fault = if self.failovers.len().is_multiple_of(2) {
            Fault::Kill
        } else {
            Fault::Crash
        };
        self.display.update(|live| {
            live.primary = None;
            live.failovers += 1;
        });
        let event = self.workload.mark_event();
        self.display.update(|live| live.last_event = Some(event));
        let at = self.workload.monitor().started().elapsed();
        let started = Instant::now();
        let applied = match fault {
            Fault::Kill => self.lab.kill(victim),
            Fault::Crash => self.lab.crash(victim),
        };
        if let Err(err) = applied {
            self.problem(format!("{} node {victim}: {err}", fault.as_str()));
            return false;
        }
        self.display.event(&format!(
            "{} node {victim}, the primary ({})",
            fault.as_str(),
            fault.describe()
        ));
        let mut record = Failover {
            fault,
            from: victim,
            to: None,
            at,
            elected: None,
            event,
        };
        let deadline = started + ELECTION_WAIT;
        loop {
            if let Some(new) = self.lab.status().leader.filter(|l| *l != victim) {
                let elected = started.elapsed();
                self.workload.end_event(event);
                record.to = Some(new);
                record.elected = Some(elected);
                self.display.update(|live| live.primary = Some(new));
                self.display.event(&format!(
                    "node {new} is the primary, serving every connection, {} ms after the fault; node {victim} restarts in {} s",
                    elected.as_millis(),
                    RESTART_AFTER.as_secs()
                ));
                self.pending_restart = Some((victim, Instant::now() + RESTART_AFTER));
                self.failovers.push(record);
                return true;
            }
            if self.interrupted() {
                self.failovers.push(record);
                return false;
            }
            if Instant::now() >= deadline {
                self.failovers.push(record);
                self.problem(format!(
                    "no new primary {} s after the {} of node {victim}",
                    ELECTION_WAIT.as_secs(),
                    fault.as_str()
                ));
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Node `id`'s own report, over its admin socket.
fn report(lab: &Lab, id: u32) -> Option<NodeReport> {
    let path = lab.node_admin_socket(id).ok()??;
    match request(&path, &AdminRequest::Status, Duration::from_secs(2)) {
        Ok(AdminReply::Status(report)) => Some(*report),
        _ => None,
    }
}

/// The primary, if the cluster is healthy: one primary serving the VIP and
/// every node a caught-up voter.
fn healthy(lab: &Lab, nodes: usize) -> Option<u32> {
    let reports: Vec<NodeReport> = lab
        .node_ids()
        .iter()
        .filter_map(|id| report(lab, *id))
        .collect();
    let primary = reports.iter().find(|r| r.role == "primary")?;
    let ok = reports.len() == nodes
        && reports.iter().all(|r| {
            r.voters.len() == nodes
                && r.learners.is_empty()
                && primary.commit_index.saturating_sub(r.applied_index) < 1000
        });
    let slot = u32::from(primary.slot);
    (ok && lab.status().leader == Some(slot)).then_some(slot)
}

fn wait_healthy(lab: &Lab, nodes: usize, wait: Duration, interrupted: &AtomicBool) -> Option<u32> {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline && !interrupted.load(Ordering::Relaxed) {
        if let Some(p) = healthy(lab, nodes) {
            return Some(p);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn pause_of(report: &Report, event: usize) -> Option<Duration> {
    report.events.get(event).and_then(|e| e.1)
}

fn chart(report: &Report, failovers: &[Failover], nodes: usize, connections: usize) -> svg::Chart {
    let max_pause = failovers
        .iter()
        .filter_map(|f| pause_of(report, f.event))
        .max();
    let c = &report.counters;
    svg::Chart {
        title: format!(
            "tandem: request latency through {} failover{} of the primary",
            failovers.len(),
            if failovers.len() == 1 { "" } else { "s" }
        ),
        subtitle: format!(
            "{nodes} nodes, replicated kv, {connections} connections; {} operations, {} errors, {} lost, {} duplicated{}",
            display::thousands(c.ops),
            c.errors,
            c.lost,
            c.duplicated,
            max_pause
                .map(|p| format!("; largest client pause {} ms", p.as_millis()))
                .unwrap_or_default()
        ),
        bucket_s: BUCKET.as_secs_f64(),
        max_latency_s: report
            .buckets
            .iter()
            .map(|b| (b.count > 0).then(|| b.max_us as f64 / 1e6))
            .collect(),
        duration_s: report.elapsed.as_secs_f64(),
        markers: failovers
            .iter()
            .map(|f| {
                let pause = pause_of(report, f.event);
                svg::Marker {
                    at_s: f.at.as_secs_f64(),
                    label: format!(
                        "{} {}→{} · pause {}",
                        f.fault.as_str(),
                        f.from,
                        f.to.map(|t| t.to_string()).unwrap_or_else(|| "?".into()),
                        pause
                            .map(|p| format!("{} ms", p.as_millis()))
                            .unwrap_or_else(|| "?".into())
                    ),
                    pause_s: pause.map(|p| p.as_secs_f64()),
                }
            })
            .collect(),
    }
}

fn summarize(
    name: &str,
    opts: &Options,
    report: &Report,
    failovers: &[Failover],
    problems: &[String],
    svg: Option<String>,
    interrupted: bool,
) -> Summary {
    let c = &report.counters;
    let secs = report.elapsed.as_secs_f64();
    let mut error_samples: Vec<String> = problems.to_vec();
    error_samples.extend(report.errors.iter().take(10).map(|e| {
        format!(
            "[{:.1}s] connection {}: {}",
            e.at.as_secs_f64(),
            e.connection,
            e.what
        )
    }));
    Summary {
        name: name.to_string(),
        nodes: opts.nodes,
        connections: opts.connections,
        duration_s: (secs * 10.0).round() / 10.0,
        operations: c.ops,
        ops_per_s: if secs > 0.0 { c.ops as f64 / secs } else { 0.0 },
        errors: c.errors + problems.len() as u64,
        lost: c.lost,
        duplicated: c.duplicated,
        failovers: failovers
            .iter()
            .map(|f| FailoverRow {
                kind: f.fault.as_str().to_string(),
                from: f.from,
                to: f.to,
                at_s: (f.at.as_secs_f64() * 10.0).round() / 10.0,
                elected_ms: f.elected.map(|d| d.as_millis() as u64),
                pause_ms: pause_of(report, f.event).map(|d| d.as_millis() as u64),
            })
            .collect(),
        svg,
        interrupted,
        kept: opts.keep && !interrupted,
        error_samples,
    }
}

/// `YYYYMMDD-HHMMSS`, UTC.
fn timestamp() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Fails if `path`'s directory does not exist (said before the run, not
/// after it).
fn check_svg_dir(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!("--svg {}: no directory {}", path.display(), dir.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::civil_from_days;

    #[test]
    fn days_become_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_419), (2025, 11, 27));
    }
}
