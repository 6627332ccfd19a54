//! `tandem demo`: the main job, on one machine. Today it shows the first
//! brick of tandem — live TCP connections moving, with the virtual IP, from
//! one node to another while their clients carry on.

use anyhow::{ensure, Context, Result};
use std::process::ExitCode;
use std::time::Duration;
use tandem_cli::scenario::{MoveLab, PingPong};
use tandem_node::migration::MoveReport;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Client connections kept busy through the moves.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1000))]
    connections: u16,
    /// Round trips between moves, per connection (one every 5 ms).
    #[arg(long, default_value_t = 300)]
    exchanges: u32,
}

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    crate::require_root("tandem demo")?;
    let tandem = std::env::current_exe().context("locating the tandem binary")?;
    let name = format!("demo{}", std::process::id());
    println!("building lab {name}: 2 node namespaces + 1 client namespace on a bridge ...");
    let mut lab = MoveLab::up(&name, 2, tandem)?;
    println!(
        "echo server running on node 1 behind the virtual IP {}",
        lab.service_addr()
    );
    let streams = (0..args.connections)
        .map(|_| lab.connect(None))
        .collect::<Result<Vec<_>>>()?;
    let interval = Duration::from_millis(5);
    let workload = PingPong::start(streams, interval);
    println!(
        "{} clients exchanging numbered lines with it, one round trip every 5 ms each",
        args.connections
    );
    // Clients' neighbour entries must be older than Linux's 1 s lock time
    // for the first gratuitous ARP to be taken at once; the demo shows the
    // common case of a connection that has been up for a while.
    let dwell = (interval * args.exchanges).max(Duration::from_millis(1200));
    std::thread::sleep(dwell);
    for to in [2, 1] {
        let from = lab.server_node();
        let report = lab.move_to(to)?;
        print_move(from, to, &report);
        std::thread::sleep(dwell);
    }
    let stats = workload.finish().context("a client saw an error")?;
    let resets = lab.client_rst_count()?;
    println!();
    println!(
        "{} round trips on {} connections, every echo byte-exact, no client error",
        stats.replies, stats.connections
    );
    println!(
        "largest pause a client saw: {:.1} ms; RST segments received by clients: {resets}",
        stats.max_gap.as_secs_f64() * 1e3
    );
    ensure!(resets == 0, "clients received {resets} RST segments");
    lab.down()?;
    println!("lab {name} removed");
    Ok(ExitCode::SUCCESS)
}

fn print_move(from: u32, to: u32, report: &MoveReport) {
    let phases: Vec<String> = report
        .phases
        .iter()
        .map(|(name, d)| format!("{name} {:.2}", d.as_secs_f64() * 1e3))
        .collect();
    println!(
        "moved {} connections node {from} -> node {to}: frozen {:.1} ms [{} ms]",
        report.connections.len(),
        report.frozen_for().as_secs_f64() * 1e3,
        phases.join(", ")
    );
}
