//! `tandem`: the command-line tool. Parses arguments, sets up logging, and
//! hands each subcommand to the library that does the work.

#![forbid(unsafe_code)]

mod cmd_bench;
mod cmd_cluster;
mod cmd_demo;
mod cmd_lab;
mod cmd_node;
mod cmd_status;
mod cmd_tool;
mod demo;

use clap::{Parser, Subcommand};

/// tandem keeps TCP services running through node crashes, maintenance and
/// rebalancing without their clients noticing: no reset, no reconnect, no
/// lost or duplicated byte.
#[derive(Parser)]
#[command(name = "tandem", version, propagate_version = true)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `tandem_sys=debug`.
    /// Also read from TANDEM_LOG.
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,

    /// Log format: `human` (default) or `json` (one object per line, for log
    /// collectors).
    #[arg(long, global = true, value_name = "FORMAT", default_value = "human")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node daemon in the foreground: `tandem node --config FILE`.
    Node(cmd_node::NodeArgs),
    /// Move a service's primary, with every live connection, to another node.
    Migrate(cmd_cluster::MigrateArgs),
    /// Move every primary off a node for maintenance, and keep it off.
    Drain(cmd_cluster::DrainArgs),
    /// Allow a drained node to be primary again.
    Undrain(cmd_cluster::DrainArgs),
    /// Make a running node read its cluster key files again, for a key
    /// rotation without a restart (the steps are in the node config's
    /// `[cluster]` docs: `rotation_key_file`).
    ReloadKeys(cmd_cluster::DrainArgs),
    /// Rehearse a failed takeover: make a node's next takeovers fail at a
    /// named step (lease, listen, vip, arp, sockets), to watch it release
    /// what it took and retry or hand the primary role on.
    Fault(cmd_cluster::FaultArgs),
    /// Show a node as it sees itself and its cluster (role, term, log,
    /// snapshot, connections, state hash, peers), asked over its local admin
    /// socket; `--lab NAME` asks every node of a lab.
    Status(cmd_status::StatusArgs),
    /// Build and drive a test cluster of network namespaces on this machine.
    Lab(cmd_lab::LabArgs),
    /// The main job: a 3-node replicated kv lab under a checked load while
    /// its primary is killed or crashed every few seconds; a live status
    /// line, a summary (errors, lost or duplicated updates, every pause) and
    /// a latency chart. `--moves`: the connection-move demo. Needs root;
    /// leaves nothing behind.
    Demo(cmd_demo::DemoArgs),
    /// Measure: `tandem bench migrate` (socket dump/restore, and the pause
    /// clients see during a planned move of 1, 100 and 1,000 connections) and
    /// `tandem bench capture` (packets/s and added latency of the capture path).
    Bench(cmd_bench::BenchArgs),
    /// Helper programs the lab runs inside node namespaces.
    #[command(hide = true)]
    Tool(cmd_tool::ToolArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // A daemon tells what it does (roles, takeovers and their phases); the
    // interactive commands stay quiet unless asked.
    let default_filter = match cli.command {
        Command::Node(_) => "info",
        _ => "warn",
    };
    init_logging(cli.log.as_deref(), default_filter, cli.log_format);
    let result = match cli.command {
        Command::Status(args) => cmd_status::run(args),
        Command::Node(args) => cmd_node::run(args),
        Command::Migrate(args) => cmd_cluster::migrate(args),
        Command::Drain(args) => cmd_cluster::drain(args, false),
        Command::Undrain(args) => cmd_cluster::drain(args, true),
        Command::ReloadKeys(args) => cmd_cluster::reload_keys(args),
        Command::Fault(args) => cmd_cluster::fault(args),
        Command::Lab(args) => cmd_lab::run(args),
        Command::Demo(args) => cmd_demo::run(args),
        Command::Bench(args) => cmd_bench::run(args),
        Command::Tool(args) => cmd_tool::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tandem: error: {}", describe(&err));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, leaving out a cause whose text the
/// message before it already quotes (library errors often do).
fn describe(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn init_logging(filter: Option<&str>, default_filter: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = filter
        .map(str::to_string)
        .or_else(|| std::env::var("TANDEM_LOG").ok())
        .unwrap_or_else(|| default_filter.to_string());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub(crate) use tandem_bench::require_root;
