//! `tandem node --config FILE`: one node daemon, in the foreground.

use anyhow::Context as _;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Run one node of a tandem cluster in the foreground.
///
/// The node reads its config (TOML; see the example below), installs its
/// fence (a guard that keeps the kernel from closing clients' connections
/// if this process dies, and a lease that silences the VIP unless the
/// primary keeps renewing it), joins its replica group, and serves: as the
/// primary it holds the VIP, captures every client packet, commits it to
/// the replicated log before the kernel sees it and serves the clients; as
/// a clone it applies the same log to the same state. Needs root
/// (CAP_NET_ADMIN: netfilter, addresses, TCP_REPAIR).
///
/// Stop it with SIGTERM or Ctrl-C: a primary steps down first, leaving its
/// clients' connections to the next primary.
///
/// Example config (one service per node process):
///
///   [node]
///   slot = 1
///   data_dir = "/var/lib/tandem/kv"
///   admin_socket = "/run/tandem/kv.sock"
///
///   [cluster]
///   key_file = "/etc/tandem/cluster.key"   # ≥ 32 random bytes, mode 0600
///   members = [
///     { slot = 1, addr = "10.0.0.11:7100" },
///     { slot = 2, addr = "10.0.0.12:7100" },
///     { slot = 3, addr = "10.0.0.13:7100" },
///   ]
///
///   [[service]]
///   name = "kv"
///   kind = "kv"            # kv | echo | counter
///   vip = "10.0.0.100/24"
///   interface = "eth0"
///   port = 6379
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct NodeArgs {
    /// The node's config file (TOML).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Check the config and the key file, print what would run, and exit.
    #[arg(long)]
    check: bool,
}

pub fn run(args: NodeArgs) -> anyhow::Result<ExitCode> {
    let config = tandem_node::config::Config::load(&args.config)?;
    config
        .check_files()
        .with_context(|| format!("checking the files {} names", args.config.display()))?;
    if args.check {
        let service = &config.services[0];
        println!(
            "config ok: node {} of {} members; service {} ({:?}) on {}:{} via {}",
            config.node.slot,
            config.cluster.members.len(),
            service.name,
            service.kind,
            service.vip,
            service.port,
            service.interface
        );
        return Ok(ExitCode::SUCCESS);
    }
    if !tandem_sys::process::is_root() {
        anyhow::bail!(
            "tandem node needs root (CAP_NET_ADMIN for netfilter, addresses and TCP_REPAIR)"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }
    tandem_node::daemon::run(config, stop)?;
    Ok(ExitCode::SUCCESS)
}
