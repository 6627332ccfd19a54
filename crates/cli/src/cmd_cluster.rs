//! `tandem migrate`, `tandem drain`, `tandem undrain`: planned moves of the
//! primary, through the nodes' admin sockets.

use crate::cmd_status::{ask, lab_sockets, Target};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tandem_node::admin::{self, AdminReply, AdminRequest};

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
    let path = node_socket(&args)?;
    println!("{}", send(&path, &AdminRequest::ReloadKeys)?);
    Ok(ExitCode::SUCCESS)
}

/// The admin socket of node `args.node` itself.
fn node_socket(args: &DrainArgs) -> Result<PathBuf> {
    Ok(match &args.target.lab {
        Some(name) => lab_node_sockets(name)?
            .into_iter()
            .find(|(id, _)| *id == args.node)
            .map(|(_, p)| p)
            .with_context(|| format!("lab {name} has no running node {}", args.node))?,
        None => {
            let path = args.target.socket()?;
            let report = ask(&path)?;
            if report.slot != args.node {
                bail!(
                    "{} is node {}'s admin socket, not node {}'s: this command talks to the node itself",
                    path.display(),
                    report.slot,
                    args.node
                );
            }
            path
        }
    })
}

pub fn drain(args: DrainArgs, undrain: bool) -> Result<ExitCode> {
    let path = node_socket(&args)?;
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
