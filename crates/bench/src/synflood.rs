//! `tandem bench synflood`: real clients' connects during a spoofed SYN
//! flood, through tandem's replicated kv (3 nodes, VIP) against a plain
//! redis-server (kernel SYN cookies only) in the same lab, flooded the same
//! way. For each: connects that got their PONG, and connect + PING + PONG
//! latency (p50, p99, max), with and without the flood; the table shows
//! tandem's figures as ratios of redis-server's.

use crate::flood::{probe, Flood, ProbeStats};
use anyhow::{bail, Context, Result};
use std::net::{SocketAddr, SocketAddrV4};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};
use tandem_lab::{LabGuard, LabSpec, Probe, ServiceKind};

/// The plain redis-server's port, on a clone's lab address.
const REDIS_PORT: u16 = 6390;

pub struct Options {
    pub rate: u64,
    pub seconds: f64,
    pub name: String,
}

struct Run {
    target: &'static str,
    flood: bool,
    sent: u64,
    /// How long the flood ran.
    flood_secs: f64,
    stats: ProbeStats,
}

pub fn run(opts: Options) -> Result<ExitCode> {
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!("redis-server not found: run `sudo scripts/install-bench-deps.sh`");
    }
    let spec = LabSpec::named(opts.name.clone())
        .with_nodes(3)
        .with_service(ServiceKind::Kv);
    let runs = crate::in_lab(
        "synflood",
        &spec,
        "3 nodes, replicated kv, and a plain redis-server",
        |lab| measure(lab, &opts),
        None,
    )?;
    print_report(&opts, &runs);
    Ok(ExitCode::SUCCESS)
}

fn wait_open(lab: &LabGuard, addr: SocketAddrV4, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let probe = lab.probe(None, addr, Duration::from_millis(500))?;
        if probe == Probe::Open {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{addr} does not answer: last probe {probe:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn measure(lab: &mut LabGuard, opts: &Options) -> Result<Vec<Run>> {
    let vip = SocketAddrV4::new(lab.vip(), lab.port());
    wait_open(lab, vip, Duration::from_secs(30)).context("the replicated kv")?;
    // The plain server goes on a clone, so it does not share the primary's
    // CPU.
    let primary = lab.status().leader.unwrap_or(1);
    let node = lab
        .node_ids()
        .into_iter()
        .find(|id| *id != primary)
        .unwrap_or(1);
    let redis = SocketAddrV4::new(lab.node_addr(node)?, REDIS_PORT);
    eprintln!(
        "bench synflood: redis-server on node {node} ({redis}); tandem's primary is node {primary}"
    );
    let mut command = lab.command(Some(node), "redis-server")?;
    command
        .args(["--bind", &redis.ip().to_string()])
        .args(["--port", &REDIS_PORT.to_string()])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut server = lab.spawn(Some(node), command)?;
    let result = (|| -> Result<Vec<Run>> {
        wait_open(lab, redis, Duration::from_secs(10)).context("redis-server")?;
        let duration = Duration::from_secs_f64(opts.seconds.max(1.0));
        let mut runs = Vec::new();
        for (target, addr) in [("tandem", vip), ("redis-server", redis)] {
            for flood in [false, true] {
                eprintln!(
                    "bench synflood: {target}, {}",
                    if flood { "flooded" } else { "quiet" }
                );
                let flood_started = Instant::now();
                let running =
                    flood.then(|| Flood::start(lab.client_netns(), addr, opts.rate, 0x5eed));
                if running.is_some() {
                    std::thread::sleep(Duration::from_secs(1));
                }
                let stats = probe(
                    lab.client_netns(),
                    SocketAddr::V4(addr),
                    duration,
                    Duration::from_millis(10),
                    Duration::from_secs(1),
                )?;
                let sent = match running {
                    Some(f) => f.stop()?,
                    None => 0,
                };
                runs.push(Run {
                    target,
                    flood,
                    sent,
                    flood_secs: flood_started.elapsed().as_secs_f64(),
                    stats,
                });
                // Let the flood's half-open requests drain a little.
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Ok(runs)
    })();
    let _ = server.kill();
    let _ = server.wait();
    result
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print_report(opts: &Options, runs: &[Run]) {
    println!(
        "SYN flood: {} spoofed SYN/s from 100 unused addresses on the client subnet; \
         real client: connect + PING + PONG + close, 10 ms apart, 1 s bound per step",
        opts.rate
    );
    println!(
        "{:<14} {:<8} {:>9} {:>10} {:>9} {:>9} {:>9}",
        "target", "flood", "SYNs/s", "ok", "p50 ms", "p99 ms", "max ms"
    );
    for r in runs {
        println!(
            "{:<14} {:<8} {:>9.0} {:>5}/{:<4} {:>9.2} {:>9.2} {:>9.2}",
            r.target,
            if r.flood { "yes" } else { "no" },
            r.sent as f64 / r.flood_secs.max(1e-3),
            r.stats.ok,
            r.stats.attempts,
            ms(r.stats.quantile(0.5)),
            ms(r.stats.quantile(0.99)),
            ms(r.stats.quantile(1.0)),
        );
    }
    let find =
        |target: &str, flood: bool| runs.iter().find(|r| r.target == target && r.flood == flood);
    if let (Some(t), Some(r)) = (find("tandem", true), find("redis-server", true)) {
        let success = |s: &ProbeStats| s.ok as f64 / s.attempts.max(1) as f64;
        println!(
            "under the flood, tandem / redis-server: success {:.3}, p50 {:.2}x, p99 {:.2}x, max {:.2}x",
            success(&t.stats) / success(&r.stats).max(f64::MIN_POSITIVE),
            ms(t.stats.quantile(0.5)) / ms(r.stats.quantile(0.5)).max(1e-6),
            ms(t.stats.quantile(0.99)) / ms(r.stats.quantile(0.99)).max(1e-6),
            ms(t.stats.quantile(1.0)) / ms(r.stats.quantile(1.0)).max(1e-6),
        );
    }
    for r in runs.iter().filter(|r| !r.stats.failures.is_empty()) {
        println!(
            "{} ({}): {} failed, first: {:?}",
            r.target,
            if r.flood { "flooded" } else { "quiet" },
            r.stats.failures.len(),
            r.stats.failures.first()
        );
    }
}
