//! `tandem lab ...`: build, inspect, break and remove a lab (a cluster of
//! network namespaces on this machine) from the shell. All the work is in
//! the `tandem-lab` crate; this module parses arguments and prints.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use tandem_lab::{Fault, FaultAction, Lab, LabSpec, LabStatus, NodeCondition, ServiceKind};

/// `tandem lab`'s arguments. The overview is in `after_help` because the
/// doc comment of the `Lab` variant in main.rs sets the about text.
#[derive(Args)]
#[command(after_help = LAB_HELP)]
pub struct LabArgs {
    #[command(subcommand)]
    command: LabCommand,
}

const LAB_HELP: &str = "\
A lab is one network namespace per node and one for the client, joined by a
bridge in a namespace of its own; nothing is added to the root namespace.
  namespaces  tdm-NAME-c (client), tdm-NAME-nI (node I), tdm-NAME-br (bridge)
  addresses   client 198.18.0.2, node I 198.18.0.(10+I), VIP 198.18.0.100, all /24,
              on interface eth0 in every namespace
  ports       kv 6379, echo 7000, counter 7001 (none: 7000);
              replication 7100-7199 (TCP and UDP, what `partition` drops),
              the daemons listen on 7100
  daemons     one `tandem node --config FILE` per node namespace (kv, echo, counter;
              none runs no daemon). The binary is $TANDEM_BIN if set, else this
              `tandem`; `restart` uses the same one. The primary is the node whose
              namespace holds the VIP; `tandem status --lab NAME` asks the daemons.
  state       /run/tandem/labs/NAME.json, and the directory /run/tandem/labs/NAME/:
              cluster.key, nodeI.toml (config), nodeI.d/ (data), nodeI.sock (admin
              socket), nodeI.log (the daemon's output)
Every command but `up` and `list` takes --name; without it, the only lab on
the machine is used (an error if there are none or several).
Needs root and the Debian packages iproute2 and iptables (and redis-tools for
redis-cli against the kv service).";

#[derive(Subcommand)]
enum LabCommand {
    /// Build a lab: namespaces, bridge, veths and addresses, then one
    /// `tandem node` daemon per node; waits (up to 30 s) until a primary
    /// holds the VIP and the client reaches the service through it. On
    /// failure the lab is removed and the end of each node's log printed.
    /// `--service none` builds the topology only: no daemon, no VIP.
    Up {
        /// Lab name: 1-24 characters of [a-z0-9-]. Default: "tandem".
        #[arg(long, default_value = tandem_lab::DEFAULT_NAME)]
        name: String,
        /// Number of nodes (1-9).
        #[arg(long, default_value_t = tandem_lab::DEFAULT_NODES)]
        nodes: usize,
        /// What the nodes serve: kv (port 6379), echo (7000), counter
        /// (7001), or none (topology only, port 7000 reserved).
        #[arg(long, value_enum, default_value_t = ServiceArg::Kv)]
        service: ServiceArg,
        /// Print the lab as one JSON object (same as `lab status --json`).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        raft: RaftArgs,
    },
    /// Show a lab: its nodes, addresses, processes and faults.
    Status {
        /// The lab (default: the only one).
        #[arg(long)]
        name: Option<String>,
        /// One JSON object: {"name", "vip", "port", "client_netns",
        /// "leader", "nodes": [{"id", "netns", "addr", "pid", "role",
        /// "alive"}]}.
        #[arg(long)]
        json: bool,
    },
    /// List the labs on this machine.
    List {
        /// A JSON array of names.
        #[arg(long)]
        json: bool,
    },
    /// Power cut: SIGKILL every process of the node and set its link down.
    /// Peers and clients hear nothing more from it, not even a reset.
    Kill(NodeArgs),
    /// Process crash on a live machine: SIGKILL the node's daemon (with
    /// service none: its processes), link left up. Its kernel lives on and
    /// answers with resets for sockets that died.
    Crash(NodeArgs),
    /// Hang: SIGSTOP the node's processes. The kernel still ACKs TCP data
    /// but nobody reads it; timers stop.
    Stop(NodeArgs),
    /// End a hang: SIGCONT the node's processes.
    Cont(NodeArgs),
    /// Reboot after kill/crash: SIGKILL what is left, drop the VIP if the
    /// node still has it, link up, and a fresh daemon with the same config
    /// that rejoins as a clone (with service none: no daemon to start).
    Restart(NodeArgs),
    /// Network partition: drop the node's replication traffic (TCP and UDP
    /// ports 7100-7199, both directions) while clients can still reach it.
    Partition(NodeArgs),
    /// End a partition.
    Heal(NodeArgs),
    /// Run a command in the client namespace (or a node's, with --node)
    /// and exit with its status, e.g. `tandem lab exec -- ip addr`.
    Exec {
        /// The lab (default: the only one).
        #[arg(long)]
        name: Option<String>,
        /// Run in this node's namespace instead of the client's.
        #[arg(long, value_name = "NODE_ID")]
        node: Option<u32>,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Remove a lab: kill its processes, delete its namespaces (with their
    /// links and firewall rules) and its state file. Touches nothing it did
    /// not create.
    Down {
        /// The lab (default: the only one).
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Args)]
struct NodeArgs {
    /// The lab (default: the only one).
    #[arg(long)]
    name: Option<String>,
    /// The node, from 1.
    #[arg(value_name = "NODE_ID")]
    node: u32,
}

#[derive(Clone, Copy, ValueEnum)]
enum ServiceArg {
    Kv,
    Echo,
    Counter,
    None,
}

impl From<ServiceArg> for ServiceKind {
    fn from(arg: ServiceArg) -> ServiceKind {
        match arg {
            ServiceArg::Kv => ServiceKind::Kv,
            ServiceArg::Echo => ServiceKind::Echo,
            ServiceArg::Counter => ServiceKind::Counter,
            ServiceArg::None => ServiceKind::None,
        }
    }
}

/// Raft timeouts for a lab's daemons, written into `[raft]` of every
/// node's config. Shared by `lab up` and the benchmarks that build labs.
#[derive(Args, Clone, Copy, Debug, Default)]
pub struct RaftArgs {
    /// Raft tick for the daemons, ms (default: the daemon's, 10).
    #[arg(long, value_name = "MS")]
    pub tick_ms: Option<u64>,
    /// Heartbeat interval in ticks (default: the daemon's, 2).
    #[arg(long, value_name = "TICKS")]
    pub heartbeat_ticks: Option<u32>,
    /// Election timeout in ticks; each follower draws its own from
    /// [this, 2 × this) (default: the daemon's, 10). At least 3 heartbeats.
    #[arg(long, value_name = "TICKS")]
    pub election_ticks: Option<u32>,
}

impl From<RaftArgs> for tandem_lab::RaftTimings {
    fn from(args: RaftArgs) -> Self {
        tandem_lab::RaftTimings {
            tick_ms: args.tick_ms,
            heartbeat_ticks: args.heartbeat_ticks,
            election_ticks: args.election_ticks,
        }
    }
}

/// Runs one `tandem lab` subcommand.
pub fn run(args: LabArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        LabCommand::Up {
            name,
            nodes,
            service,
            json,
            raft,
        } => {
            let spec = LabSpec {
                name: Some(name),
                nodes,
                service: service.into(),
                raft: raft.into(),
                service_options: Vec::new(),
            };
            let lab = Lab::up(&spec)?;
            if json {
                print_json(&lab.status())?;
            } else {
                println!("built lab {}", lab.name());
                print_table(&lab);
                println!();
                match lab.service() {
                    ServiceKind::None => println!(
                        "service none: no daemon runs and nothing serves {}:{}.",
                        lab.vip(),
                        lab.port()
                    ),
                    service => println!(
                        "try: tandem lab exec --name {} -- {}",
                        lab.name(),
                        client_example(service, &lab)
                    ),
                }
                println!(
                    "inspect: tandem lab exec --name {0} -- ip addr; remove with: tandem lab down --name {0}",
                    lab.name()
                );
            }
        }
        LabCommand::Status { name, json } => {
            let lab = open(name.as_deref())?;
            if json {
                print_json(&lab.status())?;
            } else {
                print_table(&lab);
            }
        }
        LabCommand::List { json } => {
            let labs = Lab::list()?;
            if json {
                print_json(&labs)?;
            } else if labs.is_empty() {
                println!("no labs (create one with `tandem lab up`)");
            } else {
                for name in labs {
                    println!("{name}");
                }
            }
        }
        LabCommand::Kill(a) => fault(FaultAction::Kill, a)?,
        LabCommand::Crash(a) => fault(FaultAction::Crash, a)?,
        LabCommand::Stop(a) => fault(FaultAction::Stop, a)?,
        LabCommand::Cont(a) => fault(FaultAction::Cont, a)?,
        LabCommand::Restart(a) => fault(FaultAction::Restart, a)?,
        LabCommand::Partition(a) => fault(FaultAction::Partition, a)?,
        LabCommand::Heal(a) => fault(FaultAction::Heal, a)?,
        LabCommand::Exec {
            name,
            node,
            command,
        } => {
            let lab = open(name.as_deref())?;
            let status = lab.exec(node, &command)?;
            return Ok(exit_code(status));
        }
        LabCommand::Down { name } => {
            let name = Lab::resolve_name(name.as_deref())?;
            Lab::down_by_name(&name)?;
            println!("lab {name} removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A client command line that talks to `service` through the VIP.
fn client_example(service: ServiceKind, lab: &Lab) -> String {
    match service {
        ServiceKind::Kv => format!("redis-cli -h {} -p {} ping", lab.vip(), lab.port()),
        _ => format!("socat - TCP:{}:{}", lab.vip(), lab.port()),
    }
}

fn open(name: Option<&str>) -> anyhow::Result<Lab> {
    let name = Lab::resolve_name(name)?;
    Ok(Lab::open(&name)?)
}

fn fault(action: FaultAction, args: NodeArgs) -> anyhow::Result<()> {
    let mut lab = open(args.name.as_deref())?;
    let report = lab
        .apply(action, args.node)
        .with_context(|| format!("lab {}: {} node {}", lab.name(), action.as_str(), args.node))?;
    println!("lab {}: {report}", lab.name());
    Ok(())
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// The process's exit status for a child's: its code, or 128 + the signal
/// that killed it (as shells do).
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1);
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn print_table(lab: &Lab) {
    let status = lab.status();
    let conditions = lab.conditions();
    print!("{}", render(lab, &status, &conditions));
}

/// The human view of a lab: a header, then one row per node.
fn render(lab: &Lab, status: &LabStatus, conditions: &[NodeCondition]) -> String {
    let mut out = String::new();
    let service = lab.service();
    out.push_str(&format!(
        "lab {}: {} nodes, service {}{}\n",
        status.name,
        status.nodes.len(),
        service,
        match lab.daemon() {
            _ if service == ServiceKind::None => " (topology only, no daemon)".to_string(),
            Some(daemon) => format!(" (daemon {})", daemon.display()),
            None => String::new(),
        }
    ));
    out.push_str(&format!(
        "  client  {} in {} (run clients with `tandem lab exec --name {} -- CMD`)\n",
        lab.client_addr(),
        status.client_netns,
        status.name
    ));
    out.push_str(&format!(
        "  VIP     {}/{} port {}{}\n",
        status.vip,
        lab.vip_prefix_len(),
        status.port,
        match status.leader {
            _ if service == ServiceKind::None => " (not assigned: the daemons add it)",
            Some(_) => " (held by the leader)",
            None => " (no single live node holds it)",
        }
    ));
    if let Some(dir) = lab.files_dir() {
        out.push_str(&format!(
            "  files   {}/ (nodeI.toml, nodeI.log, nodeI.sock)\n",
            dir.display()
        ));
    }
    out.push_str(&format!(
        "  leader  {}\n\n",
        status
            .leader
            .map_or_else(|| "-".to_string(), |l| l.to_string())
    ));
    let rows: Vec<[String; 7]> = status
        .nodes
        .iter()
        .map(|node| {
            let cond = conditions.iter().find(|c| c.id == node.id);
            [
                node.id.to_string(),
                node.netns.clone(),
                node.addr.to_string(),
                node.pid.map_or_else(|| "-".to_string(), |p| p.to_string()),
                node.role.clone(),
                if node.alive { "yes" } else { "no" }.to_string(),
                cond.map_or_else(|| "?".to_string(), describe),
            ]
        })
        .collect();
    let header = ["ID", "NETNS", "ADDR", "PID", "ROLE", "ALIVE", "CONDITION"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    for row in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A node's condition in a few words: "ok", or what is wrong with it.
fn describe(cond: &NodeCondition) -> String {
    if !cond.netns_exists {
        return "namespace missing".to_string();
    }
    let mut parts = Vec::new();
    if cond.fault != Fault::None {
        parts.push(cond.fault.as_str().to_string());
    }
    if !cond.link_up {
        parts.push("link down".to_string());
    }
    if cond.partitioned {
        parts.push("partitioned".to_string());
    }
    if !cond.pids.is_empty() {
        parts.push(format!("{} process(es)", cond.pids.len()));
    }
    if parts.is_empty() {
        "ok".to_string()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Top,
    }

    #[derive(Subcommand)]
    enum Top {
        Lab(LabArgs),
    }

    fn parse(args: &[&str]) -> Result<LabCommand, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("tandem").chain(args.iter().copied()))?;
        let Top::Lab(lab) = cli.command;
        Ok(lab.command)
    }

    #[test]
    fn up_defaults() {
        let LabCommand::Up {
            name,
            nodes,
            service,
            json,
            raft,
        } = parse(&["lab", "up"]).unwrap()
        else {
            panic!("not up");
        };
        assert_eq!(name, "tandem");
        assert_eq!(nodes, 3);
        assert!(matches!(service, ServiceArg::Kv));
        assert!(!json);
        assert!(tandem_lab::RaftTimings::from(raft).is_default());
    }

    #[test]
    fn up_takes_raft_timings() {
        let LabCommand::Up { raft, .. } = parse(&[
            "lab",
            "up",
            "--heartbeat-ticks",
            "3",
            "--election-ticks",
            "30",
        ])
        .unwrap() else {
            panic!("not up");
        };
        let timings = tandem_lab::RaftTimings::from(raft);
        assert_eq!(timings.heartbeat_ticks, Some(3));
        assert_eq!(timings.election_ticks, Some(30));
        assert_eq!(timings.tick_ms, None);
        assert!(parse(&["lab", "up", "--election-ticks", "many"]).is_err());
    }

    #[test]
    fn exec_takes_everything_after_the_double_dash() {
        let LabCommand::Exec {
            name,
            node,
            command,
        } = parse(&["lab", "exec", "--node", "2", "--", "ls", "-l", "--all"]).unwrap()
        else {
            panic!("not exec");
        };
        assert_eq!(name, None);
        assert_eq!(node, Some(2));
        assert_eq!(command, ["ls", "-l", "--all"]);
        assert!(parse(&["lab", "exec"]).is_err());
    }

    #[test]
    fn faults_take_a_node_id() {
        let LabCommand::Partition(args) = parse(&["lab", "partition", "--name", "x", "3"]).unwrap()
        else {
            panic!("not partition");
        };
        assert_eq!(args.name.as_deref(), Some("x"));
        assert_eq!(args.node, 3);
        assert!(parse(&["lab", "kill"]).is_err());
        assert!(parse(&["lab", "kill", "two"]).is_err());
    }

    #[test]
    fn service_must_be_known() {
        assert!(parse(&["lab", "up", "--service", "redis"]).is_err());
        assert!(parse(&["lab", "up", "--service", "none"]).is_ok());
    }

    #[test]
    fn conditions_read_well() {
        let cond = NodeCondition {
            id: 2,
            netns_exists: true,
            link_up: false,
            fault: Fault::Killed,
            partitioned: true,
            pids: vec![],
        };
        assert_eq!(describe(&cond), "killed, link down, partitioned");
        let ok = NodeCondition {
            link_up: true,
            fault: Fault::None,
            partitioned: false,
            ..cond
        };
        assert_eq!(describe(&ok), "ok");
    }

    /// Takes a lab down by name when dropped, so a failing test leaks nothing.
    struct DownOnDrop(String);

    impl Drop for DownOnDrop {
        fn drop(&mut self) {
            let _ = Lab::down_by_name(&self.0);
        }
    }

    fn run_cli(args: &[&str]) -> anyhow::Result<ExitCode> {
        let cli = Cli::try_parse_from(std::iter::once("tandem").chain(args.iter().copied()))?;
        let Top::Lab(lab) = cli.command;
        run(lab)
    }

    /// The CLI end to end on a real lab (needs root, like the lab's own
    /// tests; fails without it).
    #[test]
    fn cli_drives_a_lab() {
        let name = format!("cli-{}", std::process::id());
        let _down = DownOnDrop(name.clone());
        let n = name.as_str();
        let ok = format!("{:?}", ExitCode::SUCCESS);
        let code = run_cli(&[
            "lab",
            "up",
            "--name",
            n,
            "--service",
            "none",
            "--nodes",
            "2",
        ]);
        assert_eq!(format!("{:?}", code.unwrap()), ok);
        let lab = Lab::open(n).unwrap();
        assert_eq!(lab.node_ids(), [1, 2]);
        for args in [
            &["lab", "status", "--name", n, "--json"][..],
            &["lab", "status", "--name", n],
            &["lab", "kill", "--name", n, "2"],
            &["lab", "partition", "--name", n, "1"],
            &["lab", "restart", "--name", n, "2"],
            &["lab", "heal", "--name", n, "1"],
        ] {
            assert_eq!(format!("{:?}", run_cli(args).unwrap()), ok, "{args:?}");
        }
        assert!(lab.status().nodes.iter().all(|node| node.alive));
        let code = run_cli(&[
            "lab", "exec", "--name", n, "--node", "1", "--", "sh", "-c", "exit 4",
        ]);
        assert_eq!(
            format!("{:?}", code.unwrap()),
            format!("{:?}", ExitCode::from(4))
        );
        assert!(run_cli(&["lab", "kill", "--name", n, "3"]).is_err());
        assert_eq!(
            format!("{:?}", run_cli(&["lab", "down", "--name", n]).unwrap()),
            ok
        );
        assert!(matches!(
            Lab::open(n),
            Err(tandem_lab::LabError::NotFound { .. })
        ));
        assert!(!std::path::Path::new(&format!("/run/netns/tdm-{n}-n1")).exists());
    }
}
