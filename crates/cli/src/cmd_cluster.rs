//! `tandem migrate`, `tandem drain`, `tandem undrain`: planned moves of the
//! primary, through the nodes' admin sockets; and `tandem fault`, which
//! arms a rehearsed failure of a node's takeover the same way.

use crate::cmd_status::{ask, lab_sockets, Target};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tandem_node::admin::{self, AdminReply, AdminRequest};
use tandem_node::faults::TakeoverStep;

const TIMEOUT: Duration = Duration::from_secs(3);
/// How long `migrate` waits for the new primary to serve.
const MOVE_WAIT: Duration = Duration::from_secs(10);

/// Move SERVICE's primary to node NODE, with every live connection: a Raft
/// leadership transfer to a caught-up clone, which rebuilds the connections
/// from its replicated TCP state, takes the VIP and announces it. Clients
/// see a pause of milliseconds, never an error.
///
/// Examples:
///   sudo tandem migrate kv --to 2 --lab tandem
///   sudo tandem migrate kv --to 3 --admin /run/tandem/kv.sock
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct MigrateArgs {
    /// The service (its name in the config; with --lab, the lab's service).
    service: String,
    /// The node (slot) to move the primary to.
    #[arg(long, value_name = "NODE")]
    to: u16,
    #[command(flatten)]
    target: Target,
}

/// Drain NODE for maintenance: if it is the primary, the role (with every
/// connection) moves to the most caught-up clone; while drained the node
/// never keeps the primary role. `tandem undrain NODE` allows it back.
///
/// Examples:
///   sudo tandem drain 1 --lab tandem
///   sudo tandem drain 1 --config /etc/tandem/kv.toml   (on node 1)
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct DrainArgs {
    /// The node (slot) this is for: the one to drain, undrain or reload.
    /// With --config or --admin it must be the local node.
    node: u16,
    #[command(flatten)]
    target: Target,
}

/// Rehearse a failed takeover: the next TIMES takeovers of node NODE fail
/// at STEP (after the step's real call succeeded), so the real release
/// path runs — VIP removed, lease revoked, listener and rebuilt sockets
/// closed — and the node retries with backoff or hands the primary role on
/// (`[supervision]` takeover_retries, takeover_backoff_ms,
/// takeover_refuse_ms). Off unless armed; `--times 0` disarms; armed
/// faults show in `tandem status` and the tandem_takeover_faults_armed
/// metric. Nothing else on the host is touched.
///
/// Examples:
///   sudo tandem fault --node 2 takeover-step vip --times 1 --lab tandem
///   sudo tandem fault --node 3 takeover-step lease --times 3 --admin /run/tandem/kv.sock
///   sudo tandem fault --node 2 takeover-step vip --times 0 --lab tandem   (disarm)
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct FaultArgs {
    /// The node (slot) to arm. With --config or --admin it must be the
    /// local node.
    #[arg(long, value_name = "NODE")]
    node: u16,
    /// What fails (only takeover steps so far).
    kind: FaultKind,
    /// The step: lease, listen, vip, arp or sockets.
    #[arg(value_parser = parse_step)]
    step: TakeoverStep,
    /// How many of the node's next takeovers fail (0 disarms).
    #[arg(long, default_value_t = 1)]
    times: u32,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum FaultKind {
    /// A step of becoming primary.
    TakeoverStep,
}

fn parse_step(s: &str) -> Result<TakeoverStep, String> {
    s.parse()
}

pub fn fault(args: FaultArgs) -> Result<ExitCode> {
    let FaultKind::TakeoverStep = args.kind;
    let path = node_socket(args.node, &args.target)?;
    let request = AdminRequest::Fault {
        step: args.step,
        times: args.times,
    };
    println!("{}", send(&path, &request)?);
    Ok(ExitCode::SUCCESS)
}

fn lab_node_sockets(name: &str) -> Result<Vec<(u16, PathBuf)>> {
    tandem_lab::validate_name(name)?;
    let dir = Path::new(tandem_lab::STATE_DIR).join(name);
    let sockets = lab_sockets(name, &dir)?;
    if sockets.is_empty() {
        bail!("lab {name} has no running nodes (see `tandem lab status --name {name}`)");
    }
    Ok(sockets)
}

fn send(path: &Path, request: &AdminRequest) -> Result<String> {
    match admin::request(path, request, TIMEOUT)? {
        AdminReply::Done { message } => Ok(message),
        AdminReply::Error { message } => bail!("{message}"),
        AdminReply::Status(_) => bail!("the node answered with its status instead"),
    }
}

pub fn migrate(args: MigrateArgs) -> Result<ExitCode> {
    let sockets: Vec<(u16, PathBuf)> = match &args.target.lab {
        Some(name) => lab_node_sockets(name)?,
        None => vec![(0, args.target.socket()?)],
    };
    // The primary is the one to ask.
    let mut primary = None;
    for (_, path) in &sockets {
        if let Ok(report) = ask(path) {
            if report.service.name != args.service {
                bail!(
                    "this cluster serves {:?}, not {:?}",
                    report.service.name,
                    args.service
                );
            }
            if report.role == "primary" {
                primary = Some((report.slot, path.clone()));
                break;
            }
        }
    }
    let Some((from, path)) = primary else {
        bail!("no primary answers (ask the primary's admin socket, or use --lab)");
    };
    if from == args.to {
        println!("node {from} is already the primary of {}", args.service);
        return Ok(ExitCode::SUCCESS);
    }
    let started = Instant::now();
    let message = send(&path, &AdminRequest::Migrate { to: args.to })?;
    eprintln!("{message}");
    // Wait until the target serves: ask it when we can reach it, else the
    // old primary (which learns the new leader).
    let target_socket = sockets
        .iter()
        .find(|(id, _)| *id == args.to)
        .map(|(_, p)| p.clone());
    while started.elapsed() < MOVE_WAIT {
        let probe = target_socket.as_ref().unwrap_or(&path);
        if let Ok(report) = ask(probe) {
            let serving = if target_socket.is_some() {
                report.role == "primary"
            } else {
                report.leader == Some(args.to) && report.role != "primary"
            };
            if serving {
                println!(
                    "{} moved from node {from} to node {} in {:.0} ms",
                    args.service,
                    args.to,
                    started.elapsed().as_secs_f64() * 1e3
                );
                return Ok(ExitCode::SUCCESS);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "node {} did not become the primary within {} s (see `tandem status`)",
        args.to,
        MOVE_WAIT.as_secs()
    )
}

/// `tandem reload-keys NODE`: the node reads its cluster key files again
/// (a step of a key rotation; see the `[cluster]` docs of the node config).
pub fn reload_keys(args: DrainArgs) -> Result<ExitCode> {
    let path = node_socket(args.node, &args.target)?;
    println!("{}", send(&path, &AdminRequest::ReloadKeys)?);
    Ok(ExitCode::SUCCESS)
}

/// The admin socket of node `node` itself.
fn node_socket(node: u16, target: &Target) -> Result<PathBuf> {
    Ok(match &target.lab {
        Some(name) => lab_node_sockets(name)?
            .into_iter()
            .find(|(id, _)| *id == node)
            .map(|(_, p)| p)
            .with_context(|| format!("lab {name} has no running node {node}"))?,
        None => {
            let path = target.socket()?;
            let report = ask(&path)?;
            if report.slot != node {
                bail!(
                    "{} is node {}'s admin socket, not node {}'s: this command talks to the node itself",
                    path.display(),
                    report.slot,
                    node
                );
            }
            path
        }
    })
}

pub fn drain(args: DrainArgs, undrain: bool) -> Result<ExitCode> {
    let path = node_socket(args.node, &args.target)?;
    let request = if undrain {
        AdminRequest::Undrain
    } else {
        AdminRequest::Drain
    };
    println!("{}", send(&path, &request)?);
    if !undrain {
        // Wait until the node no longer holds the primary role.
        let started = Instant::now();
        while started.elapsed() < MOVE_WAIT {
            if ask(&path).is_ok_and(|r| r.role != "primary" && r.leader.is_some()) {
                return Ok(ExitCode::SUCCESS);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "node {} is still the primary after {} s",
            args.node,
            MOVE_WAIT.as_secs()
        );
    }
    Ok(ExitCode::SUCCESS)
}
