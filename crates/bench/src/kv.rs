//! `tandem bench kv`: requests/s and p50/p99 latency of SET and GET through
//! (a) the replicated kv of a 3-node lab, behind the VIP; (b) the same kv
//! service on one node with no capture and no replication (`tandem tool
//! kv-server`, below); (c) a real `redis-server` in a node namespace. All
//! three live in one lab and are measured with `redis-benchmark` from the
//! lab's client namespace, interleaved (a, b, c, a, b, c, ...) so the noise
//! of a shared machine spreads evenly over them. The single-node server is
//! [`crate::kv_host`].

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::{Child, ExitCode, Stdio};
use std::time::{Duration, Instant};

use tandem_lab::{Lab, LabGuard, LabSpec, Probe, ServiceKind};

/// The port of the single-node kv server, on node 1's lab address.
pub const KV_SERVER_PORT: u16 = 6380;
/// The port of the reference redis-server, on node 2's lab address.
pub const REDIS_PORT: u16 = 6381;
/// The lab name when none is given.
pub const DEFAULT_LAB: &str = "bench-kv";

/// Target: replicated p50 at most this much above the unreplicated kv's.
const TARGET_P50_DELTA_US: f64 = 200.0;
/// Target: replicated throughput at least this fraction of redis-server's.
const TARGET_RPS_RATIO: f64 = 0.5;

// ---------------------------------------------------------------------------
// redis-benchmark's CSV.

/// One row of `redis-benchmark --csv`: one test (`SET`, `GET`, ...).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CsvRow {
    pub test: String,
    pub rps: f64,
    pub avg_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Parses `redis-benchmark --csv` output. redis-benchmark 7.0 prints a
/// header line, `"test","rps","avg_latency_ms","min_latency_ms",
/// "p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"`,
/// then one line per test, every field quoted. Columns are found by name;
/// lines that are not rows of the header's shape (warnings) are skipped.
pub fn parse_csv(text: &str) -> Result<Vec<CsvRow>> {
    let split = |line: &str| -> Vec<String> {
        line.trim()
            .split(',')
            .map(|f| f.trim().trim_matches('"').to_string())
            .collect()
    };
    let mut lines = text.lines();
    let header = lines
        .by_ref()
        .map(split)
        .find(|fields| fields.first().is_some_and(|f| f == "test"))
        .context("no CSV header (a line starting with \"test\") in redis-benchmark's output")?;
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("redis-benchmark's CSV has no column {name:?}"))
    };
    let (test, rps, avg, p50, p99) = (
        column("test")?,
        column("rps")?,
        column("avg_latency_ms")?,
        column("p50_latency_ms")?,
        column("p99_latency_ms")?,
    );
    let mut rows = Vec::new();
    for line in lines {
        let fields = split(line);
        if fields.len() != header.len() {
            continue;
        }
        let number = |i: usize| -> Result<f64> {
            fields[i]
                .parse::<f64>()
                .with_context(|| format!("bad number {:?} in CSV line {line:?}", fields[i]))
        };
        rows.push(CsvRow {
            test: fields[test].clone(),
            rps: number(rps)?,
            avg_ms: number(avg)?,
            p50_ms: number(p50)?,
            p99_ms: number(p99)?,
        });
    }
    if rows.is_empty() {
        bail!("redis-benchmark's CSV has a header but no rows");
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------
// The benchmark.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
enum Target {
    /// (a) the 3-node replicated kv, through the VIP.
    Replicated,
    /// (b) the same kv on one node, plain sockets.
    Single,
    /// (c) redis-server on one node.
    Redis,
    /// (a') as (a), in a second lab whose daemons replicate without
    /// encryption (the benchmark-only switch): what encryption costs.
    Unencrypted,
}

impl Target {
    const ALL: [Target; 3] = [Target::Replicated, Target::Single, Target::Redis];

    fn label(self) -> &'static str {
        match self {
            Target::Replicated => "(a) replicated kv, 3 nodes",
            Target::Single => "(b) kv, 1 node, no capture/replication",
            Target::Redis => "(c) redis-server",
            Target::Unencrypted => "(a') replicated kv, replication NOT encrypted",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Target::Replicated => "a",
            Target::Single => "b",
            Target::Redis => "c",
            Target::Unencrypted => "a'",
        }
    }
}

/// One test of one redis-benchmark run.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    target: Target,
    round: usize,
    clients: u32,
    test: String,
    rps: f64,
    avg_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Where the CPU went during one redis-benchmark run (both of its tests).
#[derive(Debug, Clone, Serialize)]
struct CpuUse {
    target: Target,
    round: usize,
    clients: u32,
    seconds: f64,
    /// Busy time of the whole machine, in % of all its CPUs.
    machine_busy_pct: f64,
    /// Time the hypervisor gave our vCPUs to someone else, in % of all CPUs.
    steal_pct: f64,
    /// CPU time of every process in the node namespaces (daemons, kv-server,
    /// redis-server) per request.
    servers_us_per_request: f64,
    /// CPU time of redis-benchmark per request.
    client_us_per_request: f64,
    /// Busy time not charged to the servers or redis-benchmark, in % of all
    /// CPUs: softirq not charged to a process, and other programs on the
    /// machine (a high figure means the run was disturbed).
    other_pct: f64,
}

/// The median of one (target, test, clients) over the rounds.
#[derive(Debug, Clone, Serialize)]
struct Summary {
    target: Target,
    test: String,
    clients: u32,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
struct Ratio {
    test: String,
    /// (a) requests/s ÷ (c) requests/s, at the throughput client count.
    replicated_over_redis_rps: f64,
    /// (a) p50 − (b) p50 in µs, one client.
    replicated_minus_single_p50_us: f64,
    /// (a) requests/s ÷ (b) requests/s, at the throughput client count.
    replicated_over_single_rps: f64,
    /// (a) p50 − (c) p50 in µs, one client (for reference).
    replicated_minus_redis_p50_us: f64,
    rps_target_met: bool,
    p50_target_met: bool,
}

/// What encrypting replication costs: (a) against (a').
#[derive(Debug, Clone, Serialize)]
struct EncryptionCost {
    test: String,
    clients: u32,
    /// (a) requests/s ÷ (a') requests/s: 1.0 = free, 0.95 = 5 % cost.
    encrypted_over_unencrypted_rps: f64,
    /// (a) p50 − (a') p50 in µs.
    encrypted_minus_unencrypted_p50_us: f64,
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    lab: String,
    requests: u64,
    rounds: usize,
    latency_clients: u32,
    throughput_clients: u32,
    cpus: usize,
    redis_benchmark: String,
    redis_server: String,
    summary: Vec<Summary>,
    ratios: Vec<Ratio>,
    encryption: Vec<EncryptionCost>,
    cpu: Vec<CpuUse>,
    samples: Vec<Sample>,
}

/// Options of `tandem bench kv`.
pub struct Options {
    pub name: String,
    pub requests: u64,
    pub rounds: usize,
    pub clients: u32,
    pub json: bool,
    /// Also measure (a') in a second lab without encryption.
    pub encryption_cost: bool,
}

pub fn run(opts: Options) -> Result<ExitCode> {
    crate::require_root("tandem bench kv")?;
    let missing: Vec<&str> = ["redis-server", "redis-benchmark"]
        .into_iter()
        .filter(|p| find_program(p).is_none())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} not found: run `sudo scripts/install-bench-deps.sh` (installs redis-server and redis-tools)",
            missing.join(" and ")
        );
    }
    let redis_benchmark = version_of("redis-benchmark");
    let redis_server = version_of("redis-server");
    let tandem = std::env::current_exe().context("finding the tandem binary")?;

    let spec = LabSpec::named(opts.name.clone())
        .with_nodes(3)
        .with_service(ServiceKind::Kv);
    let (mut samples, mut cpu) = crate::in_lab(
        "kv",
        &spec,
        "3 nodes, replicated kv",
        |lab| measure(lab, &tandem, &opts),
        None,
    )?;
    if opts.encryption_cost {
        // The second lab's name: the first's with "-u", within the limit.
        let stem: String = opts
            .name
            .chars()
            .take(tandem_lab::MAX_NAME_LEN - 2)
            .collect();
        let spec = LabSpec::named(format!("{stem}-u"))
            .with_nodes(3)
            .with_service(ServiceKind::Kv)
            .with_unencrypted_replication_for_benchmarks();
        let (more, more_cpu) = crate::in_lab(
            "kv",
            &spec,
            "3 nodes, replicated kv, replication NOT encrypted (benchmark switch)",
            |lab| {
                let vip = SocketAddrV4::new(lab.vip(), lab.port());
                let mut samples = Vec::new();
                let mut cpu = Vec::new();
                for round in 1..=opts.rounds {
                    for clients in [1, opts.clients] {
                        run_target(
                            lab,
                            Target::Unencrypted,
                            vip,
                            round,
                            clients,
                            &opts,
                            &mut samples,
                            &mut cpu,
                        )?;
                    }
                }
                Ok((samples, cpu))
            },
            None,
        )?;
        samples.extend(more);
        cpu.extend(more_cpu);
    }

    let report = summarize(&opts, samples, cpu, redis_benchmark, redis_server);
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// Starts (b) and (c), runs every redis-benchmark and stops (b) and (c).
fn measure(
    lab: &mut LabGuard,
    tandem: &std::path::Path,
    opts: &Options,
) -> Result<(Vec<Sample>, Vec<CpuUse>)> {
    let single = SocketAddrV4::new(lab.node_addr(1)?, KV_SERVER_PORT);
    let redis = SocketAddrV4::new(lab.node_addr(2)?, REDIS_PORT);
    let vip = SocketAddrV4::new(lab.vip(), lab.port());
    let log_dir = lab.files_dir().map(|d| d.to_path_buf());
    let log = |name: &str| -> Result<Stdio> {
        Ok(match &log_dir {
            Some(dir) => std::fs::File::create(dir.join(name))?.into(),
            None => Stdio::null(),
        })
    };

    progress(format!(
        "starting tandem tool kv-server on node 1 ({single})"
    ));
    let mut command = lab.command(Some(1), tandem)?;
    command
        .args(["tool", "kv-server", "--listen", &single.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log("bench-kv-server.log")?);
    let mut servers = Servers(vec![lab.spawn(Some(1), command)?]);

    progress(format!("starting redis-server on node 2 ({redis})"));
    let mut command = lab.command(Some(2), "redis-server")?;
    command
        .args(["--bind", &redis.ip().to_string()])
        .args(["--port", &redis.port().to_string()])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .stdin(Stdio::null())
        .stdout(log("bench-redis-server.log")?)
        .stderr(Stdio::null());
    servers.0.push(lab.spawn(Some(2), command)?);

    for (what, addr) in [("kv-server", single), ("redis-server", redis)] {
        wait_open(lab, addr).with_context(|| format!("{what} on {addr} does not answer"))?;
    }

    let addr_of = |t: Target| match t {
        Target::Replicated | Target::Unencrypted => vip,
        Target::Single => single,
        Target::Redis => redis,
    };
    let mut samples = Vec::new();
    let mut cpu = Vec::new();
    for round in 1..=opts.rounds {
        for target in Target::ALL {
            for clients in [1, opts.clients] {
                run_target(
                    lab,
                    target,
                    addr_of(target),
                    round,
                    clients,
                    opts,
                    &mut samples,
                    &mut cpu,
                )?;
            }
        }
    }
    servers.stop();
    Ok((samples, cpu))
}

/// One redis-benchmark run against `target` at `addr`, its samples and CPU
/// use appended.
#[allow(clippy::too_many_arguments)]
fn run_target(
    lab: &Lab,
    target: Target,
    addr: SocketAddrV4,
    round: usize,
    clients: u32,
    opts: &Options,
    samples: &mut Vec<Sample>,
    cpu: &mut Vec<CpuUse>,
) -> Result<()> {
    progress(format!(
        "round {round}/{}: {} at {addr}, {} requests × SET,GET, -c {clients}",
        opts.rounds,
        target.label(),
        opts.requests
    ));
    let (rows, usage) = bench_once(lab, addr, opts.requests, clients)?;
    for row in &rows {
        progress(format!(
            "  {}: {:.0} requests/s, p50 {:.3} ms, p99 {:.3} ms",
            row.test, row.rps, row.p50_ms, row.p99_ms
        ));
    }
    progress(format!(
            "  machine busy {:.0}% (steal {:.0}%, other {:.0}%), servers {:.1} µs CPU/request, redis-benchmark {:.1} µs CPU/request",
            usage.machine_busy_pct,
            usage.steal_pct,
            usage.other_pct,
            usage.servers_us_per_request,
            usage.client_us_per_request
        ));
    samples.extend(rows.into_iter().map(|r| Sample {
        target,
        round,
        clients,
        test: r.test,
        rps: r.rps,
        avg_ms: r.avg_ms,
        p50_ms: r.p50_ms,
        p99_ms: r.p99_ms,
    }));
    cpu.push(CpuUse {
        target,
        round,
        clients,
        ..usage
    });
    Ok(())
}

/// The servers this bench started; killed when dropped (the lab's `down`
/// would kill them too, this only reaps them).
struct Servers(Vec<Child>);

impl Servers {
    fn stop(&mut self) {
        for mut child in self.0.drain(..) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_open(lab: &Lab, addr: SocketAddrV4) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let probe = lab.probe(None, addr, Duration::from_millis(500))?;
        if probe == Probe::Open {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("last probe: {probe:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One `redis-benchmark -t set,get --csv` from the client namespace, and
/// where the CPU went meanwhile.
fn bench_once(
    lab: &Lab,
    addr: SocketAddrV4,
    requests: u64,
    clients: u32,
) -> Result<(Vec<CsvRow>, CpuUse)> {
    let server_pids: Vec<u32> = lab
        .node_ids()
        .into_iter()
        .filter_map(|id| lab.pids(Some(id)).ok())
        .flatten()
        .collect();
    let argv = [
        "redis-benchmark".to_string(),
        "-h".into(),
        addr.ip().to_string(),
        "-p".into(),
        addr.port().to_string(),
        "-t".into(),
        "set,get".into(),
        "-n".into(),
        requests.to_string(),
        "-c".into(),
        clients.to_string(),
        "--csv".into(),
    ];
    let machine0 = machine_ticks()?;
    let servers0 = process_ticks(&server_pids);
    let children0 = children_cpu();
    let started = Instant::now();
    let out = lab.exec_output(None, &argv)?;
    let seconds = started.elapsed().as_secs_f64();
    let children1 = children_cpu();
    let servers1 = process_ticks(&server_pids);
    let machine1 = machine_ticks()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}{}",
            argv.join(" "),
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let rows = parse_csv(&stdout).with_context(|| {
        format!(
            "parsing the output of {}: {:?} (stderr: {:?})",
            argv.join(" "),
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    let total = (machine1.total - machine0.total).max(1) as f64;
    let tick = tandem_sys::limits::clock_tick_seconds();
    let all_requests = requests as f64 * rows.len() as f64;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let busy_pct = 100.0 * (machine1.busy - machine0.busy) as f64 / total;
    let servers_s = servers1.saturating_sub(servers0) as f64 * tick;
    let client_s = (children1 - children0).max(0.0);
    let usage = CpuUse {
        target: Target::Replicated,
        round: 0,
        clients,
        seconds,
        machine_busy_pct: busy_pct,
        steal_pct: 100.0 * (machine1.steal - machine0.steal) as f64 / total,
        servers_us_per_request: servers_s * 1e6 / all_requests,
        client_us_per_request: client_s * 1e6 / all_requests,
        other_pct: (busy_pct - 100.0 * (servers_s + client_s) / (seconds * cpus)).max(0.0),
    };
    Ok((rows, usage))
}

struct MachineTicks {
    total: u64,
    busy: u64,
    steal: u64,
}

/// The aggregate `cpu` line of /proc/stat.
fn machine_ticks() -> Result<MachineTicks> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let total: u64 = (0..8).map(at).sum();
    Ok(MachineTicks {
        total,
        busy: total - at(3) - at(4) - at(7),
        steal: at(7),
    })
}

/// utime + stime of `pids`, in clock ticks (processes that are gone count 0).
fn process_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces).
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 (1-based), 12 and 13 here.
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// CPU seconds of this process's children that have been waited for (0
/// if the kernel will not say).
fn children_cpu() -> f64 {
    tandem_sys::limits::children_cpu_seconds().unwrap_or(0.0)
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain(["/usr/bin".into(), "/usr/local/bin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn version_of(program: &str) -> String {
    std::process::Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn progress(line: String) {
    eprintln!("bench kv: {line}");
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn summarize(
    opts: &Options,
    samples: Vec<Sample>,
    cpu: Vec<CpuUse>,
    redis_benchmark: String,
    redis_server: String,
) -> Report {
    // (target, clients, test) → samples, in the order first seen.
    let mut keys: Vec<(Target, u32, String)> = Vec::new();
    for s in &samples {
        let key = (s.target, s.clients, s.test.clone());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.sort_by_key(|x| (x.0, x.1));
    let summary: Vec<Summary> = keys
        .into_iter()
        .map(|(target, clients, test)| {
            let of = |f: fn(&Sample) -> f64| {
                median(
                    samples
                        .iter()
                        .filter(|s| s.target == target && s.clients == clients && s.test == test)
                        .map(f)
                        .collect(),
                )
            };
            Summary {
                target,
                clients,
                rps: of(|s| s.rps),
                p50_ms: of(|s| s.p50_ms),
                p99_ms: of(|s| s.p99_ms),
                test,
            }
        })
        .collect();
    let find = |target: Target, clients: u32, test: &str| {
        summary
            .iter()
            .find(|s| s.target == target && s.clients == clients && s.test == test)
    };
    let mut tests: Vec<String> = Vec::new();
    for s in &summary {
        if !tests.contains(&s.test) {
            tests.push(s.test.clone());
        }
    }
    let ratios = tests
        .iter()
        .filter_map(|test| {
            let a1 = find(Target::Replicated, 1, test)?;
            let b1 = find(Target::Single, 1, test)?;
            let c1 = find(Target::Redis, 1, test)?;
            let an = find(Target::Replicated, opts.clients, test)?;
            let bn = find(Target::Single, opts.clients, test)?;
            let cn = find(Target::Redis, opts.clients, test)?;
            let over_redis = an.rps / cn.rps;
            let delta = (a1.p50_ms - b1.p50_ms) * 1000.0;
            Some(Ratio {
                test: test.clone(),
                replicated_over_redis_rps: over_redis,
                replicated_minus_single_p50_us: delta,
                replicated_over_single_rps: an.rps / bn.rps,
                replicated_minus_redis_p50_us: (a1.p50_ms - c1.p50_ms) * 1000.0,
                rps_target_met: over_redis >= TARGET_RPS_RATIO,
                p50_target_met: delta <= TARGET_P50_DELTA_US,
            })
        })
        .collect();
    let encryption = summary
        .iter()
        .filter(|a| a.target == Target::Replicated)
        .filter_map(|a| {
            let u = find(Target::Unencrypted, a.clients, &a.test)?;
            Some(EncryptionCost {
                test: a.test.clone(),
                clients: a.clients,
                encrypted_over_unencrypted_rps: a.rps / u.rps,
                encrypted_minus_unencrypted_p50_us: (a.p50_ms - u.p50_ms) * 1000.0,
            })
        })
        .collect();
    Report {
        lab: opts.name.clone(),
        requests: opts.requests,
        rounds: opts.rounds,
        latency_clients: 1,
        throughput_clients: opts.clients,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        redis_benchmark,
        redis_server,
        summary,
        ratios,
        encryption,
        cpu,
        samples,
    }
}

fn print_report(r: &Report) {
    println!(
        "## SET/GET through redis-benchmark, {} requests per test, {} round(s), {} CPUs\n",
        r.requests, r.rounds, r.cpus
    );
    println!("(a) the replicated kv of a 3-node lab, behind the VIP; (b) the same kv service");
    println!("on node 1 with no capture and no replication (`tandem tool kv-server`);");
    println!("(c) redis-server on node 2. Clients: redis-benchmark in the client namespace.");
    if r.rounds > 1 {
        println!("Medians over the rounds.");
    }
    println!();
    println!("| target | test | clients | requests/s | p50 | p99 |");
    println!("|---|---|---|---|---|---|");
    for s in &r.summary {
        println!(
            "| {} | {} | {} | {:.0} | {:.3} ms | {:.3} ms |",
            s.target.label(),
            s.test,
            s.clients,
            s.rps,
            s.p50_ms,
            s.p99_ms
        );
    }
    println!("\n## Ratios\n");
    println!(
        "| test | a/c requests/s (-c {n}) | target ≥ {TARGET_RPS_RATIO} | a−b p50 (-c 1) | target ≤ +{TARGET_P50_DELTA_US:.0} µs | a/b requests/s (-c {n}) | a−c p50 (-c 1) |",
        n = r.throughput_clients
    );
    println!("|---|---|---|---|---|---|---|");
    for x in &r.ratios {
        println!(
            "| {} | {:.2} | {} | {:+.0} µs | {} | {:.2} | {:+.0} µs |",
            x.test,
            x.replicated_over_redis_rps,
            met(x.rps_target_met),
            x.replicated_minus_single_p50_us,
            met(x.p50_target_met),
            x.replicated_over_single_rps,
            x.replicated_minus_redis_p50_us
        );
    }
    if !r.encryption.is_empty() {
        println!("\n## What encrypting replication costs\n");
        println!("(a) as above; (a') the same in a second lab whose daemons replicate without");
        println!(
            "encryption (`cluster.unencrypted_replication_for_benchmarks`, still authenticated).\n"
        );
        println!("| test | clients | a/a' requests/s | a−a' p50 |");
        println!("|---|---|---|---|");
        for e in &r.encryption {
            println!(
                "| {} | {} | {:.3} | {:+.0} µs |",
                e.test,
                e.clients,
                e.encrypted_over_unencrypted_rps,
                e.encrypted_minus_unencrypted_p50_us
            );
        }
    }
    println!("\n## Where the CPU went (per redis-benchmark run: SET then GET)\n");
    println!("Machine busy, steal and other are in % of all CPUs; servers = every process");
    println!("in the node namespaces (3 daemons, kv-server, redis-server); other = busy time");
    println!("charged to neither the servers nor redis-benchmark (softirq, other programs).\n");
    println!(
        "| target | clients | round | seconds | machine busy | steal | other | servers CPU/request | redis-benchmark CPU/request |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for c in &r.cpu {
        println!(
            "| {} | {} | {} | {:.1} | {:.0}% | {:.0}% | {:.0}% | {:.1} µs | {:.1} µs |",
            c.target.short(),
            c.clients,
            c.round,
            c.seconds,
            c.machine_busy_pct,
            c.steal_pct,
            c.other_pct,
            c.servers_us_per_request,
            c.client_us_per_request
        );
    }
    println!("\n{} / {}", r.redis_benchmark, r.redis_server);
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "missed"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What redis-benchmark 7.0.15 (Debian 12) printed for
    /// `-t set,get -n 20000 -c 1 --csv` (against `tandem tool kv-server`).
    const DEBIAN12: &str = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
\"SET\",\"21715.53\",\"0.043\",\"0.016\",\"0.047\",\"0.055\",\"0.087\",\"1.695\"\n\
\"GET\",\"19607.84\",\"0.048\",\"0.016\",\"0.047\",\"0.063\",\"0.095\",\"3.127\"\n";

    #[test]
    fn debian12_csv_is_parsed() {
        let rows = parse_csv(DEBIAN12).unwrap();
        assert_eq!(
            rows,
            vec![
                CsvRow {
                    test: "SET".into(),
                    rps: 21715.53,
                    avg_ms: 0.043,
                    p50_ms: 0.047,
                    p99_ms: 0.087,
                },
                CsvRow {
                    test: "GET".into(),
                    rps: 19607.84,
                    avg_ms: 0.048,
                    p50_ms: 0.047,
                    p99_ms: 0.095,
                },
            ]
        );
    }

    #[test]
    fn columns_are_found_by_name_and_noise_is_skipped() {
        let text = "WARNING: Could not fetch server CONFIG\n\
\"test\",\"p99_latency_ms\",\"rps\",\"p50_latency_ms\",\"avg_latency_ms\"\n\
\"GET\",\"2.000\",\"100.00\",\"1.000\",\"1.500\"\n\
trailing junk\n";
        let rows = parse_csv(text).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].test, "GET");
        assert_eq!(
            (rows[0].rps, rows[0].p50_ms, rows[0].p99_ms),
            (100.0, 1.0, 2.0)
        );
    }

    #[test]
    fn missing_header_or_column_or_rows_is_an_error() {
        assert!(parse_csv("").is_err());
        assert!(parse_csv("\"SET\",\"1\"\n").is_err());
        assert!(parse_csv(
            "\"test\",\"rps\",\"avg_latency_ms\",\"p50_latency_ms\"\n\"SET\",\"1\",\"1\",\"1\"\n"
        )
        .is_err());
        let header_only = DEBIAN12.lines().next().unwrap();
        assert!(parse_csv(header_only).is_err());
        let bad = DEBIAN12.replace("21715.53", "fast");
        assert!(parse_csv(&bad).is_err());
    }
}
