//! `tandem`: the command-line tool. Parses arguments, sets up logging, and
//! hands each subcommand to the library that does the work.

mod cmd_lab;

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

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build and drive a test cluster of network namespaces on this machine.
    Lab(cmd_lab::LabArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log.as_deref());
    let result = match cli.command {
        Command::Lab(args) => cmd_lab::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tandem: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = filter
        .map(str::to_string)
        .or_else(|| std::env::var("TANDEM_LOG").ok())
        .unwrap_or_else(|| "warn".to_string());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
}
