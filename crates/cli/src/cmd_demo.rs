//! `tandem demo`: the main job, on one machine. By default the failover
//! demo (see [`crate::demo`]): a replicated kv cluster keeps serving many
//! checked client connections while its primary is killed again and again.
//! `--moves` runs the first demo instead: live TCP connections of an echo
//! server process (not replicated) moving, with the virtual IP, from one
//! node to another and back while their clients carry on. That server,
//! `tandem tool echo-server`, is written to cooperate with such moves (it
//! holds no byte in memory that is not also in a socket).

use anyhow::{ensure, Context, Result};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tandem_moves::migration::MoveReport;
use tandem_moves::scenario::{MoveLab, PingPong};

#[derive(clap::Args)]
#[command(after_help = "\
By default: builds a lab of NODES network namespaces running the replicated kv \
service (root needed), keeps CONNECTIONS clients busy with INCR on a key of \
their own and SET/GET of unique values (every reply checked: a wrong one is a \
lost or duplicated update), and every KILL_INTERVAL seconds (8 by default, less \
in a run too short for that) fails the primary \
(`lab kill`, a power cut, alternating with `lab crash`, a process crash), waits \
for a clone to take over with every connection, and restarts the old primary \
2 s later as a clone. A status line shows the progress; at the end a summary \
(operations, errors, lost and duplicated updates, the pause clients saw at \
each failover) and an SVG chart of request latency with each failover marked. \
Ctrl-C stops early, prints the summary so far and removes the lab. Exit \
status: 0 if no client saw any error, 1 otherwise, 130 when interrupted.

With --moves: the connection-move demo. Builds a two-node lab, runs clients \
against an echo server process behind the virtual IP (`tandem tool echo-server`, \
which cooperates with moves: it holds no byte that is not also in a socket, and \
a standby copy receives the moved sockets), moves every connection to node 2 \
and back (the process's sockets dumped and restored with TCP_REPAIR; nothing is \
replicated), and reports what the clients saw.")]
pub struct DemoArgs {
    /// Run the connection-move demo instead (an echo server process's live
    /// sockets moved to node 2 and back).
    #[arg(long)]
    moves: bool,
    /// How long the load runs, in seconds (building and removing the lab
    /// add a few seconds). At least 7: a shorter run has no room for a
    /// failover and is refused.
    #[arg(long, value_name = "SECONDS", default_value_t = 45,
          value_parser = clap::value_parser!(u64).range(1..=3600), conflicts_with = "moves")]
    duration: u64,
    /// Nodes in the lab (odd, at least 3).
    #[arg(long, default_value_t = 3, conflicts_with = "moves")]
    nodes: usize,
    /// Seconds between two faults of the primary (default: 8, or less
    /// when --duration is too short for a fault at 8 s: the first fault
    /// comes at most DURATION - 4 s into the run). An interval that leaves
    /// no room for a failover is refused.
    #[arg(long, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(3..=3600), conflicts_with = "moves")]
    kill_interval: Option<u64>,
    /// Client connections (default: 32; 4 with --moves).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1000))]
    connections: Option<u16>,
    /// Leave the lab running at the end (it says how to use and remove it).
    #[arg(long, conflicts_with = "moves")]
    keep: bool,
    /// Print the summary as one JSON object (the live display goes to
    /// stderr).
    #[arg(long, conflicts_with = "moves")]
    json: bool,
    /// Where to write the latency chart (default:
    /// ./tandem-demo-YYYYMMDD-HHMMSS.svg).
    #[arg(long, value_name = "PATH", conflicts_with = "moves")]
    svg: Option<PathBuf>,
    /// The lab's name (default: demo<pid>).
    #[arg(long, conflicts_with = "moves")]
    name: Option<String>,
    /// With --moves: round trips between moves, per connection (one every
    /// 5 ms).
    #[arg(long, default_value_t = 300, requires = "moves")]
    exchanges: u32,
}

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    if args.moves {
        return run_moves(args);
    }
    crate::demo::run(crate::demo::Options {
        duration: Duration::from_secs(args.duration),
        nodes: args.nodes,
        kill_interval: args.kill_interval.map(Duration::from_secs),
        connections: usize::from(args.connections.unwrap_or(32)),
        keep: args.keep,
        json: args.json,
        svg: args.svg,
        name: args.name,
    })
}

/// The connection-move demo (`tandem demo --moves`).
fn run_moves(args: DemoArgs) -> Result<ExitCode> {
    crate::require_root("tandem demo")?;
    let tandem = std::env::current_exe().context("locating the tandem binary")?;
    let name = format!("demo{}", std::process::id());
    println!("building lab {name}: 2 node namespaces + 1 client namespace on a bridge ...");
    let mut lab = MoveLab::up(&name, 2, tandem)?;
    println!(
        "echo server running on node 1 behind the virtual IP {}",
        lab.service_addr()
    );
    let connections = args.connections.unwrap_or(4);
    let streams = (0..connections)
        .map(|_| lab.connect(None))
        .collect::<Result<Vec<_>>>()?;
    let interval = Duration::from_millis(5);
    let workload = PingPong::start(streams, interval);
    println!(
        "{} clients exchanging numbered lines with it, one round trip every 5 ms each",
        connections
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
