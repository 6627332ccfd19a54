//! `tandem bench compare`: what clients see when the primary dies, for
//! tandem and for the two usual ways of making a Redis-like service highly
//! available, in the same lab, on the same machine, with the same client
//! workload, in one run:
//!
//! 1. **tandem**: the replicated kv of a 3-node lab, behind the VIP; the
//!    leader is killed.
//! 2. **keepalived**: two `redis-server`s (node 2 replicating node 1) and a
//!    keepalived on each moving the VIP (VRRPv3); a `notify_master` script
//!    promotes the replica (`REPLICAOF NO ONE`); node 1 is killed.
//! 3. **Sentinel**: two `redis-server`s (node 2 replicating node 1) and a
//!    `redis-sentinel` on each of 3 nodes (quorum 2); clients find the
//!    primary through Sentinel (redis-py's `Sentinel.master_for`); node 1 is
//!    killed.
//!
//! The workload is one Python program (scripts/compare/client.py, built into
//! this binary and run from a venv holding redis-py, which the bench creates
//! if it is missing): K connections each doing a paced INCR on its own key,
//! reconnecting after any failure. A kill is the lab's power cut (link down,
//! then SIGKILL of everything in the node's namespace). From what the client
//! logs, the bench counts failed requests by kind, connections that broke,
//! resets the client namespace received (an iptables counter), acknowledged
//! INCRs whose effect was lost, the time from the kill to each connection's
//! first successful reply, and the latency outside the fault.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tandem_lab::{Lab, LabGuard, LabSpec, Probe, ServiceKind};

/// The venv holding redis-py when none is given (also the default of
/// scripts/install-bench-deps.sh).
pub const DEFAULT_VENV: &str = "/var/tmp/tandem-bench-compare-venv";
/// Where configs, logs and the client's results go (emptied at every run).
pub const WORK_DIR: &str = "/var/tmp/tandem-bench-compare";

const CLIENT_PY: &str = include_str!("../../../scripts/compare/client.py");
const KEEPALIVED_CONF: &str = include_str!("../../../scripts/compare/keepalived.conf");
const NOTIFY_MASTER: &str = include_str!("../../../scripts/compare/notify-master.sh");
const SENTINEL_CONF: &str = include_str!("../../../scripts/compare/sentinel.conf");

const REDIS_PORT: u16 = 6379;
const SENTINEL_PORT: u16 = 26379;
/// What the client is told to install in the venv.
const REDIS_PY: &str = "redis>=5,<9";
/// The client starts this long after it is spawned (Python and redis-py
/// load meanwhile), so the kill lands at a known point of its clock.
const START_DELAY: Duration = Duration::from_millis(2500);
/// Successes this close to the start of the run are not latency samples
/// (connections being opened).
const WARMUP_S: f64 = 0.5;
/// The fault window for latency: from this long before the kill ...
const WINDOW_BEFORE_S: f64 = 0.2;
/// ... to this long after the last connection's first success after it.
const WINDOW_AFTER_S: f64 = 1.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Tandem,
    Keepalived,
    Sentinel,
}

impl System {
    fn label(self) -> &'static str {
        match self {
            System::Tandem => "(1) tandem kv, 3 nodes",
            System::Keepalived => "(2) keepalived + 2 redis-server",
            System::Sentinel => "(3) Redis Sentinel, 2 redis-server + 3 sentinels",
        }
    }

    fn lab_name(self) -> &'static str {
        match self {
            System::Tandem => "cmp-tandem",
            System::Keepalived => "cmp-keepalived",
            System::Sentinel => "cmp-sentinel",
        }
    }
}

/// Options of `tandem bench compare`.
pub struct Options {
    pub systems: Vec<System>,
    pub connections: u32,
    pub duration_s: f64,
    pub kill_after_s: f64,
    pub period_ms: f64,
    pub timeout_s: f64,
    pub connect_timeout_s: f64,
    pub sentinel_timeout_s: f64,
    pub advert_int_s: f64,
    pub down_after_ms: u64,
    pub failover_timeout_ms: u64,
    pub venv: PathBuf,
    pub json: bool,
}

// ---------------------------------------------------------------------------
// What the client writes.

#[derive(Debug, Clone, Deserialize)]
struct ClientRun {
    redis_py: String,
    python: String,
    start: f64,
    end: f64,
    connections: Vec<ConnRecord>,
}

#[derive(Debug, Clone, Deserialize)]
struct ConnRecord {
    key: String,
    /// [sent, answered, value]
    ok: Vec<(f64, f64, i64)>,
    /// [sent, failed, kind, message]
    err: Vec<(f64, f64, String, String)>,
    #[serde(default)]
    final_value: Option<i64>,
    #[serde(default)]
    final_error: Option<String>,
}

/// The client's JSON names the final GET `final` (a Rust keyword).
fn parse_client_run(text: &str) -> Result<ClientRun> {
    let mut value: serde_json::Value = serde_json::from_str(text)?;
    if let Some(conns) = value.get_mut("connections").and_then(|c| c.as_array_mut()) {
        for conn in conns {
            if let Some(obj) = conn.as_object_mut() {
                if let Some(v) = obj.remove("final") {
                    obj.insert("final_value".into(), v);
                }
            }
        }
    }
    Ok(serde_json::from_value(value)?)
}

// ---------------------------------------------------------------------------
// The arithmetic.

/// What one system did under the fault.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
struct Metrics {
    connections: usize,
    requests_ok: usize,
    /// Failed requests (one per tick at which a request failed).
    requests_failed: usize,
    failed_by_kind: BTreeMap<String, usize>,
    /// Connections that saw at least one failure.
    connections_broken: usize,
    /// Acknowledged INCRs whose effect is gone: a later acknowledged value
    /// or the final GET shows the counter below them.
    acked_writes_lost: u64,
    keys_with_loss: usize,
    /// Keys whose final GET failed (their losses are counted from the
    /// acknowledged values alone).
    keys_unread: usize,
    /// Per connection, seconds from the kill to the first successful reply
    /// received after the kill was done.
    first_success_s: Vec<f64>,
    first_success_median_s: Option<f64>,
    first_success_max_s: Option<f64>,
    /// Connections with no success after the kill.
    not_recovered: usize,
    /// Latency of successful requests sent outside the fault window.
    latency_samples: usize,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    latency_max_ms: f64,
    /// The fault window excluded from the latency figures, in seconds
    /// relative to the kill.
    window_s: (f64, f64),
}

/// Counts acknowledged writes whose effect was lost, for one key: the
/// write acknowledged with value v survived iff every later acknowledged
/// value exceeds v (it includes v's increment plus its own) and the final
/// GET, if any, is at least v.
fn lost_writes(acked: &[i64], final_value: Option<i64>) -> u64 {
    let mut floor = final_value.unwrap_or(i64::MAX);
    let mut lost = 0;
    for &v in acked.iter().rev() {
        if v > floor {
            lost += 1;
        }
        floor = floor.min(v - 1);
    }
    lost
}

/// Nearest-rank percentile of sorted `v` (NaN if empty).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// The metrics of one run whose kill started at `kill_at` and was done at
/// `killed_at` (Unix seconds).
fn analyse(run: &ClientRun, kill_at: f64, killed_at: f64) -> Metrics {
    let mut m = Metrics {
        connections: run.connections.len(),
        ..Metrics::default()
    };
    let mut last_recovery = kill_at;
    for conn in &run.connections {
        m.requests_ok += conn.ok.len();
        m.requests_failed += conn.err.len();
        if !conn.err.is_empty() {
            m.connections_broken += 1;
        }
        for (_, _, kind, _) in &conn.err {
            *m.failed_by_kind.entry(kind.clone()).or_default() += 1;
        }
        let acked: Vec<i64> = conn.ok.iter().map(|o| o.2).collect();
        let lost = lost_writes(&acked, conn.final_value);
        m.acked_writes_lost += lost;
        if lost > 0 {
            m.keys_with_loss += 1;
        }
        if conn.final_value.is_none() {
            m.keys_unread += 1;
        }
        match conn.ok.iter().find(|o| o.1 >= killed_at) {
            Some(o) => {
                m.first_success_s.push(o.1 - kill_at);
                last_recovery = last_recovery.max(o.1);
            }
            None => {
                m.not_recovered += 1;
                last_recovery = last_recovery.max(run.end);
            }
        }
    }
    m.first_success_median_s = median(&m.first_success_s);
    m.first_success_max_s = m.first_success_s.iter().copied().reduce(f64::max);
    let (from, to) = (kill_at - WINDOW_BEFORE_S, last_recovery + WINDOW_AFTER_S);
    m.window_s = (from - kill_at, to - kill_at);
    let mut lat: Vec<f64> = run
        .connections
        .iter()
        .flat_map(|c| c.ok.iter())
        .filter(|o| o.0 >= run.start + WARMUP_S && (o.0 < from || o.0 > to))
        .map(|o| (o.1 - o.0) * 1000.0)
        .collect();
    lat.sort_by(f64::total_cmp);
    m.latency_samples = lat.len();
    m.latency_p50_ms = percentile(&lat, 50.0);
    m.latency_p99_ms = percentile(&lat, 99.0);
    m.latency_max_ms = lat.last().copied().unwrap_or(f64::NAN);
    m
}

// ---------------------------------------------------------------------------
// The report.

#[derive(Debug, Clone, Serialize)]
struct Outcome {
    system: System,
    label: String,
    /// The exact configuration, as written to BENCHMARKS.md.
    config: Vec<String>,
    killed_node: u32,
    /// Who serves after the fault.
    after: String,
    /// RST segments received in the client namespace during the run.
    client_rsts: u64,
    kill_took_ms: f64,
    metrics: Metrics,
    /// A few failure messages, one per kind.
    examples: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    connections: u32,
    duration_s: f64,
    kill_after_s: f64,
    period_ms: f64,
    timeout_s: f64,
    connect_timeout_s: f64,
    sentinel_timeout_s: f64,
    versions: BTreeMap<String, String>,
    load_before: String,
    outcomes: Vec<Outcome>,
}

fn progress(line: impl AsRef<str>) {
    eprintln!("bench compare: {}", line.as_ref());
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("{{{{{name}}}}}"), value);
    }
    out
}

/// Lines of a config file that say something (no comments, no blanks).
fn effective_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

pub fn run(opts: Options) -> Result<ExitCode> {
    crate::require_root("tandem bench compare")?;
    let mut needed = vec!["redis-cli"];
    if opts.systems.contains(&System::Keepalived) || opts.systems.contains(&System::Sentinel) {
        needed.push("redis-server");
    }
    if opts.systems.contains(&System::Keepalived) {
        needed.push("keepalived");
    }
    if opts.systems.contains(&System::Sentinel) {
        needed.push("redis-sentinel");
    }
    let missing: Vec<&str> = needed
        .into_iter()
        .filter(|p| find_program(p).is_none())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} not found: run `sudo scripts/install-bench-deps.sh` (installs redis-server, redis-tools, keepalived, redis-sentinel, python3-venv and the client's venv)",
            missing.join(", ")
        );
    }
    let python = ensure_venv(&opts.venv)?;
    let work = PathBuf::from(WORK_DIR);
    if work.exists() {
        std::fs::remove_dir_all(&work).with_context(|| format!("emptying {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)?;
    let client = work.join("client.py");
    std::fs::write(&client, CLIENT_PY)?;

    let mut versions = BTreeMap::new();
    versions.insert(
        "tandem".to_string(),
        format!("tandem {}", env!("CARGO_PKG_VERSION")),
    );
    versions.insert(
        "redis-server".into(),
        version_of("redis-server", "--version"),
    );
    if opts.systems.contains(&System::Keepalived) {
        versions.insert("keepalived".into(), version_of("keepalived", "--version"));
    }
    if opts.systems.contains(&System::Sentinel) {
        versions.insert(
            "redis-sentinel".into(),
            version_of("redis-sentinel", "--version"),
        );
    }
    let load_before = std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    progress(format!("load average before: {load_before}"));

    let mut outcomes = Vec::new();
    for &system in &opts.systems {
        let dir = work.join(system.lab_name());
        std::fs::create_dir_all(&dir)?;
        let ctx = Ctx {
            opts: &opts,
            python: &python,
            client: &client,
            dir: &dir,
        };
        progress(format!("=== {} ===", system.label()));
        let outcome = match system {
            System::Tandem => run_tandem(&ctx),
            System::Keepalived => run_keepalived(&ctx),
            System::Sentinel => run_sentinel(&ctx),
        }
        .with_context(|| format!("{} (files in {})", system.label(), dir.display()))?;
        let (redis_py, py) = outcome.1.clone();
        versions.insert("redis-py".into(), format!("redis-py {redis_py}"));
        versions.insert("python".into(), format!("Python {py}"));
        print_progress_summary(&outcome.0);
        outcomes.push(outcome.0);
    }
    let report = Report {
        connections: opts.connections,
        duration_s: opts.duration_s,
        kill_after_s: opts.kill_after_s,
        period_ms: opts.period_ms,
        timeout_s: opts.timeout_s,
        connect_timeout_s: opts.connect_timeout_s,
        sentinel_timeout_s: opts.sentinel_timeout_s,
        versions,
        load_before,
        outcomes,
    };
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// The venv's python, after creating the venv with redis-py if needed.
fn ensure_venv(venv: &Path) -> Result<PathBuf> {
    let python = venv.join("bin/python3");
    let has_redis = |python: &Path| {
        std::process::Command::new(python)
            .args(["-c", "import redis"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if has_redis(&python) {
        return Ok(python);
    }
    let base = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| {
            std::process::Command::new(p)
                .args(["-c", "import venv, ensurepip"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .context("no python3 with the venv module: run `sudo scripts/install-bench-deps.sh` (installs python3-venv)")?;
    progress(format!(
        "creating {} with {REDIS_PY:?} from PyPI",
        venv.display()
    ));
    let status = std::process::Command::new(base)
        .arg("-m")
        .arg("venv")
        .arg(venv)
        .status()?;
    if !status.success() {
        bail!("{base} -m venv {} failed ({status})", venv.display());
    }
    let status = std::process::Command::new(venv.join("bin/pip"))
        .args(["install", "-q", "--disable-pip-version-check", REDIS_PY])
        .status()?;
    if !status.success() || !has_redis(&python) {
        bail!(
            "installing {REDIS_PY} into {} failed ({status}): is PyPI reachable?",
            venv.display()
        );
    }
    Ok(python)
}

struct Ctx<'a> {
    opts: &'a Options,
    python: &'a Path,
    client: &'a Path,
    dir: &'a Path,
}

impl Ctx<'_> {
    fn log(&self, name: &str) -> Result<Stdio> {
        Ok(std::fs::File::create(self.dir.join(name))?.into())
    }

    fn client_config(&self) -> String {
        let o = self.opts;
        format!(
            "client: {} connections × INCR on its own key every {} ms; socket timeout {} s, connect timeout {} s; after a failure the next tick reconnects",
            o.connections, o.period_ms, o.timeout_s, o.connect_timeout_s
        )
    }
}

/// Processes this bench started; killed and reaped when dropped (the lab's
/// `down` kills them too, this only reaps them).
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_open(lab: &Lab, from: Option<u32>, addr: SocketAddrV4, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let probe = lab.probe(from, addr, Duration::from_millis(500))?;
        if probe == Probe::Open {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{addr} does not answer (last probe: {probe:?})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `redis-cli -h ADDR -p PORT ARGS...` run in `node`'s namespace: its output.
fn redis_cli(lab: &Lab, node: u32, addr: SocketAddrV4, args: &[&str]) -> Result<String> {
    let mut argv = vec![
        "redis-cli".to_string(),
        "-h".into(),
        addr.ip().to_string(),
        "-p".into(),
        addr.port().to_string(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    let out = lab.exec_output(Some(node), &argv)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if ok().unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts redis-server on nodes 1 and 2, node 2 replicating node 1, and
/// waits until the replication link is up. Returns the config lines.
fn start_redis_pair(lab: &mut LabGuard, ctx: &Ctx, children: &mut Children) -> Result<Vec<String>> {
    let primary = SocketAddrV4::new(lab.node_addr(1)?, REDIS_PORT);
    let mut config = Vec::new();
    for node in [1u32, 2] {
        let mut args: Vec<String> = [
            "--bind",
            "0.0.0.0",
            "--port",
            &REDIS_PORT.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Its own working directory (a replica's sync writes an RDB there).
        let dir = ctx.dir.join(format!("redis-n{node}"));
        std::fs::create_dir_all(&dir)?;
        args.extend(["--dir".to_string(), dir.display().to_string()]);
        if node == 2 {
            args.extend([
                "--replicaof".to_string(),
                primary.ip().to_string(),
                REDIS_PORT.to_string(),
            ]);
        }
        let shown: Vec<String> = args
            .iter()
            .map(|a| {
                if a.is_empty() {
                    "''".to_string()
                } else if a.starts_with(WORK_DIR) {
                    "DIR".to_string()
                } else {
                    a.clone()
                }
            })
            .collect();
        config.push(format!("node {node}: redis-server {}", shown.join(" ")));
        let mut command = lab.command(Some(node), "redis-server")?;
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(ctx.log(&format!("redis-n{node}.log"))?)
            .stderr(Stdio::null());
        children.0.push(lab.spawn(Some(node), command)?);
    }
    for node in [1u32, 2] {
        let addr = SocketAddrV4::new(lab.node_addr(node)?, REDIS_PORT);
        wait_open(lab, None, addr, Duration::from_secs(10))?;
    }
    let replica = SocketAddrV4::new(lab.node_addr(2)?, REDIS_PORT);
    wait_for("node 2's replication link", Duration::from_secs(20), || {
        Ok(redis_cli(lab, 2, replica, &["INFO", "replication"])?.contains("master_link_status:up"))
    })?;
    Ok(config)
}

/// Runs the client against the system, kills `node` `kill_after` into the
/// run, and analyses what the client saw.
fn drive(
    lab: &mut LabGuard,
    ctx: &Ctx,
    client_args: &[String],
    node: u32,
) -> Result<(ClientRun, Metrics, u64, f64)> {
    let o = ctx.opts;
    let out = ctx.dir.join("client.json");
    let start_at = unix_now() + START_DELAY.as_secs_f64();
    let rst0 = lab.client_rst_count()?;
    let mut command = lab.command(None, ctx.python)?;
    command
        .arg(ctx.client)
        .args(client_args)
        .args(["--connections", &o.connections.to_string()])
        .args(["--duration", &o.duration_s.to_string()])
        .args(["--period-ms", &o.period_ms.to_string()])
        .args(["--timeout", &o.timeout_s.to_string()])
        .args(["--connect-timeout", &o.connect_timeout_s.to_string()])
        .args(["--sentinel-timeout", &o.sentinel_timeout_s.to_string()])
        .args(["--start-at", &format!("{start_at:.6}")])
        .arg("--out")
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(ctx.log("client.log")?)
        .stderr(ctx.log("client.err")?);
    let mut children = Children(vec![lab.spawn(None, command)?]);
    progress(format!(
        "client: {} connections for {} s, kill of node {node} after {} s",
        o.connections, o.duration_s, o.kill_after_s
    ));
    let kill_time = start_at + o.kill_after_s;
    let wait = kill_time - unix_now();
    if wait > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(wait));
    }
    if let Ok(Some(status)) = children.0[0].try_wait() {
        bail!(
            "the client exited before the kill ({status}): see {}",
            ctx.dir.join("client.err").display()
        );
    }
    let kill_at = unix_now();
    let report = lab.kill(node)?;
    let killed_at = unix_now();
    progress(format!(
        "{report} ({:.1} ms)",
        (killed_at - kill_at) * 1000.0
    ));
    let deadline = Instant::now() + Duration::from_secs_f64(o.duration_s + 60.0);
    let status = loop {
        if let Some(status) = children.0[0].try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            bail!("the client did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !status.success() {
        bail!(
            "the client failed ({status}): see {}",
            ctx.dir.join("client.err").display()
        );
    }
    let rsts = lab.client_rst_count()?.saturating_sub(rst0);
    let text =
        std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    let run = parse_client_run(&text).context("parsing the client's results")?;
    let metrics = analyse(&run, kill_at, killed_at);
    Ok((run, metrics, rsts, (killed_at - kill_at) * 1000.0))
}

fn examples(run: &ClientRun) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for conn in &run.connections {
        for (_, _, kind, message) in &conn.err {
            out.entry(kind.clone()).or_insert_with(|| message.clone());
        }
        if let Some(e) = &conn.final_error {
            out.entry("final GET".to_string())
                .or_insert_with(|| format!("{}: {e}", conn.key));
        }
    }
    out
}

type Done = (Outcome, (String, String));

/// One system's outcome from what [`drive`] measured, with the client's
/// library versions.
fn finish(
    system: System,
    config: Vec<String>,
    killed_node: u32,
    after: String,
    (run, metrics, client_rsts, kill_took_ms): (ClientRun, Metrics, u64, f64),
) -> Done {
    let outcome = Outcome {
        system,
        label: system.label().into(),
        config,
        killed_node,
        after,
        client_rsts,
        kill_took_ms,
        examples: examples(&run),
        metrics,
    };
    (outcome, (run.redis_py, run.python))
}

fn run_tandem(ctx: &Ctx) -> Result<Done> {
    let name = System::Tandem.lab_name();
    let spec = LabSpec::named(name)
        .with_nodes(3)
        .with_service(ServiceKind::Kv);
    crate::in_lab(
        "compare",
        &spec,
        "3 nodes, replicated kv",
        |lab| {
            let vip = SocketAddrV4::new(lab.vip(), lab.port());
            wait_open(lab, None, vip, Duration::from_secs(10))?;
            let leader = lab
                .status()
                .leader
                .context("the lab has no single primary")?;
            let raft = tandem_node::config::RaftSection::default();
            let mut config = vec![
            format!(
                "3 `tandem node` daemons (lab defaults), service kv on {vip}; Raft tick {} ms, heartbeat every {} ticks ({} ms), election timeout {} ticks ({}–{} ms, randomized)",
                raft.tick_ms,
                raft.heartbeat_ticks,
                raft.tick_ms * u64::from(raft.heartbeat_ticks),
                raft.election_ticks,
                raft.tick_ms * u64::from(raft.election_ticks),
                2 * raft.tick_ms * u64::from(raft.election_ticks),
            ),
            "commit on 2 of 3 before the primary's kernel sees a client byte".to_string(),
        ];
            config.push(ctx.client_config() + &format!(", to the VIP {vip}"));
            let args = vec![
                "--mode".to_string(),
                "plain".into(),
                "--host".into(),
                vip.ip().to_string(),
                "--port".into(),
                vip.port().to_string(),
            ];
            let driven = drive(lab, ctx, &args, leader)?;
            let after = match lab.status().leader {
                Some(id) => format!("node {id} is the primary"),
                None => "no single primary".to_string(),
            };
            Ok(finish(System::Tandem, config, leader, after, driven))
        },
        Some(ctx.dir),
    )
}

fn run_keepalived(ctx: &Ctx) -> Result<Done> {
    let spec = LabSpec::named(System::Keepalived.lab_name()).with_nodes(2);
    crate::in_lab(
        "compare",
        &spec,
        "2 nodes, service none",
        |lab| {
            let mut children = Children(Vec::new());
            let mut config = start_redis_pair(lab, ctx, &mut children)?;
            let vip: Ipv4Addr = tandem_lab::VIP;
            let advert = format_advert(ctx.opts.advert_int_s);
            for node in [1u32, 2] {
                let addr = lab.node_addr(node)?;
                let notify = ctx.dir.join(format!("notify-master-n{node}.sh"));
                std::fs::write(
                    &notify,
                    fill(
                        NOTIFY_MASTER,
                        &[("ADDR", addr.to_string()), ("PORT", REDIS_PORT.to_string())],
                    ),
                )?;
                set_mode(&notify, 0o755)?;
                let conf_text = fill(
                    KEEPALIVED_CONF,
                    &[
                        ("NODE", node.to_string()),
                        ("ADDR", addr.to_string()),
                        (
                            "STATE",
                            if node == 1 { "MASTER" } else { "BACKUP" }.to_string(),
                        ),
                        (
                            "PRIORITY",
                            if node == 1 { "150" } else { "100" }.to_string(),
                        ),
                        ("ADVERT_INT", advert.clone()),
                        ("VIP", vip.to_string()),
                        ("NOTIFY_MASTER", notify.display().to_string()),
                    ],
                );
                let conf = ctx.dir.join(format!("keepalived-n{node}.conf"));
                std::fs::write(&conf, &conf_text)?;
                if node == 1 {
                    config.push(format!(
                        "keepalived.conf (node 1; node 2: state BACKUP, priority 100): {}",
                        effective_lines(&conf_text).join(" ")
                    ));
                    config.push(format!(
                        "notify_master: {}",
                        effective_lines(&fill(
                            NOTIFY_MASTER,
                            &[
                                ("ADDR", "<own address>".into()),
                                ("PORT", REDIS_PORT.to_string())
                            ],
                        ))
                        .join(" ")
                    ));
                }
                let mut command = lab.command(Some(node), "keepalived")?;
                command
                    .args(["--dont-fork", "--log-console", "--log-detail", "--vrrp"])
                    .arg("--use-file")
                    .arg(&conf)
                    .arg("--pid")
                    .arg(ctx.dir.join(format!("keepalived-n{node}.pid")))
                    .arg("--vrrp_pid")
                    .arg(ctx.dir.join(format!("keepalived-vrrp-n{node}.pid")))
                    .stdin(Stdio::null())
                    .stdout(ctx.log(&format!("keepalived-n{node}.log"))?)
                    .stderr(ctx.log(&format!("keepalived-n{node}.err"))?);
                children.0.push(lab.spawn(Some(node), command)?);
                if node == 1 {
                    // Node 2's keepalived starts once node 1 holds the VIP: a
                    // BACKUP that hears no MASTER takes over at once, and its
                    // notify script would promote the replica for good.
                    wait_for("node 1 to hold the VIP", Duration::from_secs(20), || {
                        holds(lab, 1, vip)
                    })?;
                }
            }
            config.push(
            "keepalived --dont-fork --log-console --log-detail --vrrp -f CONF -p PID -r VRRP_PID"
                .to_string(),
        );
            let target = SocketAddrV4::new(vip, REDIS_PORT);
            wait_for("node 1 to hold the VIP", Duration::from_secs(20), || {
                Ok(holds(lab, 1, vip)? && !holds(lab, 2, vip)?)
            })?;
            wait_open(lab, None, target, Duration::from_secs(10))?;
            // Let node 2 hear a few adverts and settle as BACKUP; its
            // redis-server must still be a replica.
            std::thread::sleep(Duration::from_secs(1));
            let replica = SocketAddrV4::new(lab.node_addr(2)?, REDIS_PORT);
            let info = redis_cli(lab, 2, replica, &["INFO", "replication"])?;
            if !(info.contains("role:slave") && info.contains("master_link_status:up")) {
                bail!("node 2's redis-server is no longer a working replica after keepalived started: {info}");
            }
            if holds(lab, 2, vip)? {
                bail!("node 2 holds the VIP too after keepalived started");
            }
            config.push(ctx.client_config() + &format!(", to the VIP {target}"));
            let args = vec![
                "--mode".to_string(),
                "plain".into(),
                "--host".into(),
                vip.to_string(),
                "--port".into(),
                REDIS_PORT.to_string(),
            ];
            let driven = drive(lab, ctx, &args, 1)?;
            let role = redis_cli(
                lab,
                2,
                SocketAddrV4::new(lab.node_addr(2)?, REDIS_PORT),
                &["ROLE"],
            )?;
            let after = format!(
                "node 2 {} the VIP; its redis-server's role: {}",
                if holds(lab, 2, vip)? {
                    "holds"
                } else {
                    "does not hold"
                },
                role.lines().next().unwrap_or("?")
            );
            drop(children);
            Ok(finish(System::Keepalived, config, 1, after, driven))
        },
        None,
    )
}

fn run_sentinel(ctx: &Ctx) -> Result<Done> {
    let spec = LabSpec::named(System::Sentinel.lab_name()).with_nodes(3);
    crate::in_lab(
        "compare",
        &spec,
        "3 nodes, service none",
        |lab| {
            let mut children = Children(Vec::new());
            let mut config = start_redis_pair(lab, ctx, &mut children)?;
            let primary = lab.node_addr(1)?;
            let mut sentinels = Vec::new();
            for node in [1u32, 2, 3] {
                let addr = lab.node_addr(node)?;
                let dir = ctx.dir.join(format!("sentinel-n{node}"));
                std::fs::create_dir_all(&dir)?;
                let conf_text = fill(
                    SENTINEL_CONF,
                    &[
                        ("NODE", node.to_string()),
                        ("ADDR", addr.to_string()),
                        ("DIR", dir.display().to_string()),
                        ("PRIMARY", primary.to_string()),
                        ("PORT", REDIS_PORT.to_string()),
                        ("DOWN_AFTER_MS", ctx.opts.down_after_ms.to_string()),
                        (
                            "FAILOVER_TIMEOUT_MS",
                            ctx.opts.failover_timeout_ms.to_string(),
                        ),
                    ],
                );
                let conf = dir.join("sentinel.conf");
                std::fs::write(&conf, &conf_text)?;
                if node == 1 {
                    config.push(format!(
                        "sentinel.conf (one per node 1, 2, 3; `bind` is the node's address): {}",
                        effective_lines(&conf_text)
                            .into_iter()
                            .filter(|l| !l.starts_with("dir "))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ));
                }
                let mut command = lab.command(Some(node), "redis-sentinel")?;
                command
                    .arg(&conf)
                    .stdin(Stdio::null())
                    .stdout(ctx.log(&format!("sentinel-n{node}.log"))?)
                    .stderr(Stdio::null());
                children.0.push(lab.spawn(Some(node), command)?);
                sentinels.push(SocketAddrV4::new(addr, SENTINEL_PORT));
            }
            for (i, s) in sentinels.iter().enumerate() {
                let node = i as u32 + 1;
                wait_for(
                    &format!("sentinel {s} to know its 2 peers and the replica"),
                    Duration::from_secs(30),
                    || {
                        let out = redis_cli(lab, node, *s, &["SENTINEL", "MASTER", "mymaster"])?;
                        let lines: Vec<&str> = out.lines().collect();
                        let field = |name: &str| {
                            lines
                                .iter()
                                .position(|l| *l == name)
                                .and_then(|i| lines.get(i + 1))
                                .map(|v| v.to_string())
                        };
                        Ok(field("num-other-sentinels").as_deref() == Some("2")
                            && field("num-slaves").as_deref() == Some("1"))
                    },
                )?;
            }
            config.push(format!(
            "{}, through redis-py's Sentinel([{}]).master_for(\"mymaster\"), sentinel socket and connect timeouts {} s, no redis-py retries",
            ctx.client_config(),
            sentinels
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            ctx.opts.sentinel_timeout_s
        ));
            let args = vec![
                "--mode".to_string(),
                "sentinel".into(),
                "--sentinels".into(),
                sentinels
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ];
            let driven = drive(lab, ctx, &args, 1)?;
            let master = redis_cli(
                lab,
                2,
                sentinels[1],
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"],
            )?;
            let after = format!(
                "the sentinels name {} as the primary",
                master.lines().collect::<Vec<_>>().join(":")
            );
            drop(children);
            Ok(finish(System::Sentinel, config, 1, after, driven))
        },
        None,
    )
}

/// keepalived's advert_int: seconds, at most two decimals.
fn format_advert(seconds: f64) -> String {
    let s = format!("{:.2}", seconds.clamp(0.01, 255.0));
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Whether node `id` has `addr` on its interface.
fn holds(lab: &Lab, id: u32, addr: Ipv4Addr) -> Result<bool> {
    let out = lab.exec_output(Some(id), &["ip", "-4", "-o", "addr", "show"])?;
    let needle = format!(" {addr}/");
    Ok(String::from_utf8_lossy(&out.stdout).contains(&needle))
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([
            "/usr/bin".into(),
            "/usr/sbin".into(),
            "/usr/local/bin".into(),
        ])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn version_of(program: &str, flag: &str) -> String {
    std::process::Command::new(program)
        .arg(flag)
        .stdin(Stdio::null())
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn secs(v: Option<f64>) -> String {
    v.map_or("—".to_string(), |s| format!("{s:.3} s"))
}

fn kinds(m: &Metrics) -> String {
    if m.failed_by_kind.is_empty() {
        return "none".to_string();
    }
    m.failed_by_kind
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_progress_summary(o: &Outcome) {
    let m = &o.metrics;
    progress(format!(
        "{}: {} ok, {} failed ({}), {}/{} connections broken, {} RSTs, {} acked writes lost, first success after kill median {} max {}, latency p50 {:.3} ms p99 {:.3} ms; after: {}",
        o.label,
        m.requests_ok,
        m.requests_failed,
        kinds(m),
        m.connections_broken,
        m.connections,
        o.client_rsts,
        m.acked_writes_lost,
        secs(m.first_success_median_s),
        secs(m.first_success_max_s),
        m.latency_p50_ms,
        m.latency_p99_ms,
        o.after
    ));
}

fn print_report(r: &Report) {
    println!(
        "## The primary killed under load: {} connections × INCR every {} ms, kill after {} s of {} s\n",
        r.connections, r.period_ms, r.kill_after_s, r.duration_s
    );
    println!(
        "| system | failed requests | connections broken | RSTs at the client | acked writes lost | first success after the kill, median / max | latency outside the fault, p50 / p99 (max) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for o in &r.outcomes {
        let m = &o.metrics;
        let lost = if m.keys_unread > 0 {
            format!(
                "{} ({} keys unread at the end)",
                m.acked_writes_lost, m.keys_unread
            )
        } else {
            m.acked_writes_lost.to_string()
        };
        let recovered = if m.not_recovered > 0 {
            format!(
                "{} / {} ({} never)",
                secs(m.first_success_median_s),
                secs(m.first_success_max_s),
                m.not_recovered
            )
        } else {
            format!(
                "{} / {}",
                secs(m.first_success_median_s),
                secs(m.first_success_max_s)
            )
        };
        println!(
            "| {} | {} ({}) | {} of {} | {} | {} | {} | {:.3} / {:.3} ms ({:.1} ms) |",
            o.label,
            m.requests_failed,
            kinds(m),
            m.connections_broken,
            m.connections,
            o.client_rsts,
            lost,
            recovered,
            m.latency_p50_ms,
            m.latency_p99_ms,
            m.latency_max_ms
        );
    }
    println!("\n## Details\n");
    for o in &r.outcomes {
        let m = &o.metrics;
        println!("### {}\n", o.label);
        for line in &o.config {
            println!("- {line}");
        }
        println!(
            "- killed node {} (link down, SIGKILL; {:.1} ms); after: {}",
            o.killed_node, o.kill_took_ms, o.after
        );
        println!(
            "- {} requests acknowledged; latency from {} samples outside [{:+.2} s, {:+.2} s] around the kill",
            m.requests_ok, m.latency_samples, m.window_s.0, m.window_s.1
        );
        println!(
            "- first success after the kill, per connection: {}",
            m.first_success_s
                .iter()
                .map(|s| format!("{s:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (kind, message) in &o.examples {
            println!("- e.g. {kind}: {message}");
        }
        println!();
    }
    println!(
        "{}; load average before: {}",
        {
            let mut seen: Vec<String> = Vec::new();
            for v in r.versions.values() {
                if !seen.contains(v) {
                    seen.push(v.clone());
                }
            }
            seen.join(" / ")
        },
        r.load_before
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_writes_are_found_from_later_values_and_the_final_read() {
        // Nothing lost: strictly increasing, final read at least the last.
        assert_eq!(lost_writes(&[1, 2, 3], Some(3)), 0);
        // Gaps (unacknowledged INCRs that were applied) lose nothing.
        assert_eq!(lost_writes(&[1, 2, 5, 6], Some(7)), 0);
        // The new primary lacked 4 and 5: the next INCR answered 4.
        assert_eq!(lost_writes(&[1, 2, 3, 4, 5, 4, 5, 6], Some(6)), 2);
        // The final read shows the last two gone.
        assert_eq!(lost_writes(&[1, 2, 3, 4], Some(2)), 2);
        // No final read: only the acknowledged values count. The last
        // reply, 1, says the counter was back at 0: all three are gone.
        assert_eq!(lost_writes(&[1, 2, 3, 1], None), 3);
        assert_eq!(lost_writes(&[], Some(0)), 0);
    }

    fn conn(ok: Vec<(f64, f64, i64)>, err: Vec<(f64, f64, &str)>, fin: Option<i64>) -> ConnRecord {
        ConnRecord {
            key: "k".into(),
            ok,
            err: err
                .into_iter()
                .map(|(a, b, k)| (a, b, k.to_string(), String::new()))
                .collect(),
            final_value: fin,
            final_error: None,
        }
    }

    #[test]
    fn analysis_counts_failures_recovery_and_latency_outside_the_fault() {
        let run = ClientRun {
            redis_py: "8".into(),
            python: "3".into(),
            start: 0.0,
            end: 20.0,
            connections: vec![
                conn(
                    vec![
                        (1.0, 1.001, 1),
                        (2.0, 2.002, 2),
                        (5.0, 5.5, 3), // in flight across the kill
                        (12.0, 12.001, 4),
                    ],
                    vec![],
                    Some(4),
                ),
                conn(
                    vec![(1.0, 1.001, 1), (4.9, 4.901, 2), (6.0, 6.001, 2)],
                    vec![(5.0, 5.3, "reset"), (5.4, 5.5, "refused")],
                    Some(2),
                ),
            ],
        };
        let m = analyse(&run, 5.1, 5.2);
        assert_eq!(m.requests_ok, 7);
        assert_eq!(m.requests_failed, 2);
        assert_eq!(m.connections_broken, 1);
        assert_eq!(m.failed_by_kind.get("reset"), Some(&1));
        assert_eq!(m.acked_writes_lost, 1);
        assert_eq!(m.keys_with_loss, 1);
        let first: Vec<String> = m
            .first_success_s
            .iter()
            .map(|s| format!("{s:.3}"))
            .collect();
        assert_eq!(first, ["0.400", "0.901"]);
        assert_eq!(m.not_recovered, 0);
        // Window: 4.9 .. 6.001 + 1: the samples sent at 5.0, 6.0 and 4.9
        // are out, 1.0 (×2), 2.0 and 12.0 are in.
        assert_eq!(m.latency_samples, 4);
        assert!((m.latency_max_ms - 2.0).abs() < 1e-6);
    }

    #[test]
    fn client_json_is_read() {
        let text = r#"{"mode":"plain","redis_py":"8.1.0","python":"3.11.2","start":1.5,"end":2.5,
            "period_ms":5,"timeout_s":1,"connect_timeout_s":0.5,"sentinel_timeout_s":0.25,
            "connections":[{"key":"cmp:0","ok":[[1.6,1.7,1]],"err":[[1.8,1.9,"reset","Error 104"]],"final":1},
                           {"key":"cmp:1","ok":[],"err":[],"final":null,"final_error":"timeout: x"}]}"#;
        let run = parse_client_run(text).unwrap();
        assert_eq!(run.connections[0].final_value, Some(1));
        assert_eq!(run.connections[0].err[0].2, "reset");
        assert_eq!(run.connections[1].final_value, None);
        assert_eq!(
            run.connections[1].final_error.as_deref(),
            Some("timeout: x")
        );
    }

    #[test]
    fn templates_are_filled_and_advert_int_is_formatted() {
        assert_eq!(format_advert(0.1), "0.1");
        assert_eq!(format_advert(1.0), "1");
        assert_eq!(format_advert(0.01), "0.01");
        assert_eq!(format_advert(0.001), "0.01");
        let conf = fill(KEEPALIVED_CONF, &[("ADVERT_INT", "0.1".into())]);
        assert!(conf.contains("advert_int 0.1"));
        assert!(!fill(
            SENTINEL_CONF,
            &[
                ("NODE", "1".into()),
                ("ADDR", "a".into()),
                ("DIR", "d".into()),
                ("PRIMARY", "p".into()),
                ("PORT", "1".into()),
                ("DOWN_AFTER_MS", "1".into()),
                ("FAILOVER_TIMEOUT_MS", "1".into()),
            ]
        )
        .contains("{{"));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 99.0), 4.0);
    }
}
