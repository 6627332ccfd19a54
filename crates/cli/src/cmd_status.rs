//! `tandem status`: asks a node (or every node of a lab) for its report over
//! the local admin socket and prints a table, or JSON.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tandem_node::admin::{self, AdminReply, AdminRequest};
use tandem_node::report::NodeReport;

/// The admin socket when neither `--admin` nor `--config` says.
const DEFAULT_ADMIN_SOCKET: &str = "/run/tandem/node.sock";

/// How long one node may take to answer.
const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(clap::Args)]
#[command(after_help = STATUS_HELP)]
pub struct StatusArgs {
    /// Print JSON instead of a table: the node's report as one object (the
    /// fields of the table and more, full state hash included), or with
    /// --lab an array with one object per node.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

/// Which node(s) to ask: one admin socket, or every node of a lab.
#[derive(clap::Args, Debug)]
pub struct Target {
    /// The node's admin socket. Default: `admin_socket` in the [node]
    /// section of --config FILE, else /run/tandem/node.sock.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["config", "lab"])]
    pub admin: Option<PathBuf>,
    /// The node's configuration file, read only to find its admin socket.
    #[arg(long, value_name = "FILE", conflicts_with = "lab")]
    pub config: Option<PathBuf>,
    /// Ask every node of the lab NAME instead (their sockets are
    /// /run/tandem/labs/NAME/node<ID>.sock), from the root namespace.
    #[arg(long, value_name = "NAME")]
    pub lab: Option<String>,
}

impl Target {
    /// The one admin socket this names (not for --lab).
    pub fn socket(&self) -> Result<PathBuf> {
        Ok(match (&self.admin, &self.config) {
            (Some(path), _) => path.clone(),
            (None, Some(config)) => {
                tandem_node::config::Config::load(config)
                    .with_context(|| format!("finding the admin socket in {}", config.display()))?
                    .node
                    .admin_socket
            }
            (None, None) => PathBuf::from(DEFAULT_ADMIN_SOCKET),
        })
    }
}

const STATUS_HELP: &str = "\
The columns:
  NODE        the node's slot: its id in the cluster, from 1.
  ROLE        primary (Raft leader: holds the virtual IP and serves clients), clone
              (follower: applies the same log), candidate (an election is under way)
              or learner (a restarted node catching up before it votes again).
  TERM        the Raft term; it goes up by one at every election.
  LEADER      the slot this node takes for the primary, `-` while it does not know.
  COMMIT      the highest log index a quorum of nodes has stored.
  APPLIED     the highest index this node has applied to its copy of the service
              (it trails COMMIT by a few entries at most).
  LOG         entries held in the in-memory log (snapshots trim it).
  SNAP AGE    age of the latest snapshot, `-` before the first one.
  CONNS       client connections the replicated TCP state tracks: the same on every
              node at the same APPLIED index.
  STATE HASH  the first 12 hex digits of the state hash at APPLIED (service, TCP
              state, output): nodes at the same APPLIED must show the same hash.
  PEERS LAG   on the primary only: each peer as SLOT:LAG, the entries it is behind
              COMMIT (0: caught up), marked `(down)` when there is no live link to it.
For a single node, status also prints the node's incarnation (bumped at every
start), pid and uptime, the Raft voters and learners (as SLOT.INCARNATION), the
service line (name, kind, VIP:port, whether this node holds the VIP, kernel
sockets served, entries and packets applied, connections opened and closed,
panics of the service caught) and every counter that is not zero.

Where it asks: --admin PATH, else the admin_socket of --config FILE, else
/run/tandem/node.sock. The socket is mode 0600: run status as root (or as the
daemon's user). With --lab NAME it asks every node of that lab and prints one
row per node; a node that does not answer gets a row with the reason (with
--json: {\"slot\": ID, \"error\": \"...\"}). The exit status is 0 when at least one
node answered.

Examples:
  sudo tandem status
  sudo tandem status --config /etc/tandem/node1.toml
  sudo tandem status --admin /run/tandem/node1.sock --json
  sudo tandem status --lab tandem
  sudo tandem status --lab tandem --json | jq '.[] | {slot, role, applied_index}'";

pub fn run(args: StatusArgs) -> Result<ExitCode> {
    if let Some(name) = &args.target.lab {
        return run_lab(name, args.json);
    }
    let path = args.target.socket()?;
    let report = ask(&path)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", render_table(&[(report.slot, Ok(&report))]));
        print!("{}", render_details(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// One node's report, or why there is none.
pub(crate) fn ask(path: &Path) -> Result<NodeReport> {
    match admin::request(path, &AdminRequest::Status, TIMEOUT)? {
        AdminReply::Status(report) => Ok(*report),
        AdminReply::Error { message } => bail!("the node on {} refused: {message}", path.display()),
        AdminReply::Done { message } => bail!(
            "the node on {} answered `{message}` instead of its status",
            path.display()
        ),
    }
}

fn run_lab(name: &str, json: bool) -> Result<ExitCode> {
    tandem_lab::validate_name(name)?;
    let dir = Path::new(tandem_lab::STATE_DIR).join(name);
    let sockets = lab_sockets(name, &dir)?;
    if sockets.is_empty() {
        bail!(
            "lab {name} has no node admin sockets in {} (are its nodes running? see `tandem lab status --name {name}`)",
            dir.display()
        );
    }
    let results: Vec<(u16, Result<NodeReport, String>)> = sockets
        .iter()
        .map(|(id, path)| (*id, ask(path).map_err(|err| err.to_string())))
        .collect();
    if json {
        /// One element of the array: the report, or the slot and the reason.
        #[derive(serde::Serialize)]
        #[serde(untagged)]
        enum Entry<'a> {
            Report(&'a NodeReport),
            Error { slot: u16, error: &'a str },
        }
        let entries: Vec<Entry> = results
            .iter()
            .map(|(slot, result)| match result {
                Ok(report) => Entry::Report(report),
                Err(error) => Entry::Error { slot: *slot, error },
            })
            .collect();
        println!("{}", serde_json::to_string(&entries)?);
    } else {
        let rows: Vec<(u16, Result<&NodeReport, String>)> = results
            .iter()
            .map(|(id, result)| (*id, result.as_ref().map_err(Clone::clone)))
            .collect();
        print!("{}", render_table(&rows));
    }
    Ok(if results.iter().any(|(_, r)| r.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The `node<ID>.sock` files in `dir`, by ID.
pub(crate) fn lab_sockets(name: &str, dir: &Path) -> Result<Vec<(u16, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => bail!(
            "no lab {name}: {} does not exist (is it up? `tandem lab list` shows the labs, \
             `tandem lab up --name {name}` builds one)",
            dir.display()
        ),
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "permission denied reading {}: run as root (sudo)",
            dir.display()
        ),
        Err(err) => return Err(err).with_context(|| format!("reading {}", dir.display())),
    };
    let mut sockets = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        if let Some(id) = entry.file_name().to_str().and_then(node_id_of) {
            sockets.push((id, entry.path()));
        }
    }
    sockets.sort();
    Ok(sockets)
}

/// `node12.sock` -> 12.
fn node_id_of(file_name: &str) -> Option<u16> {
    let digits = file_name.strip_prefix("node")?.strip_suffix(".sock")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&id| id >= 1)
}

const HEADERS: [&str; 11] = [
    "NODE",
    "ROLE",
    "TERM",
    "LEADER",
    "COMMIT",
    "APPLIED",
    "LOG",
    "SNAP AGE",
    "CONNS",
    "STATE HASH",
    "PEERS LAG",
];

/// The table: a header and one row per node; a node without a report gets
/// its slot and the reason.
pub(crate) fn render_table(rows: &[(u16, Result<&NodeReport, String>)]) -> String {
    let cells: Vec<Result<Vec<String>, (u16, String)>> = rows
        .iter()
        .map(|(id, row)| match row {
            Ok(report) => Ok(report_cells(report)),
            Err(error) => Err((*id, error.clone())),
        })
        .collect();
    let mut widths: Vec<usize> = HEADERS.iter().map(|h| h.len()).collect();
    for row in cells.iter().flatten() {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: &[String], out: &mut String| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(&format!("{cell:<width$}"));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    let headers: Vec<String> = HEADERS.iter().map(|h| h.to_string()).collect();
    line(&headers, &mut out);
    for row in &cells {
        match row {
            Ok(cells) => line(cells, &mut out),
            Err((id, error)) => {
                let width = widths[0];
                out.push_str(&format!("{id:<width$}  error: {error}\n"));
            }
        }
    }
    out
}

fn report_cells(r: &NodeReport) -> Vec<String> {
    let peers = if r.peers.is_empty() {
        "-".to_string()
    } else {
        r.peers
            .iter()
            .map(|p| {
                let down = if p.connected { "" } else { "(down)" };
                format!("{}:{}{down}", p.slot, p.lag)
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    // Armed takeover faults (`tandem fault`) show beside the role: a node
    // rehearsing a failure must not be mistaken for a healthy one.
    let role = if r.takeover_faults.is_empty() {
        r.role.clone()
    } else {
        let armed: Vec<String> = r
            .takeover_faults
            .iter()
            .map(|(step, left)| format!("{step}x{left}"))
            .collect();
        format!("{} (fault {})", r.role, armed.join(","))
    };
    vec![
        r.slot.to_string(),
        role,
        r.term.to_string(),
        r.leader.map_or("-".into(), |l| l.to_string()),
        r.commit_index.to_string(),
        r.applied_index.to_string(),
        r.log_entries.to_string(),
        r.snapshot_age_s.map_or("-".into(), duration),
        r.service.connections.to_string(),
        r.service.state_hash.chars().take(12).collect(),
        peers,
    ]
}

/// `75` -> `1m15s`.
fn duration(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// What a single node's status adds under the table.
pub(crate) fn render_details(r: &NodeReport) -> String {
    let s = &r.service;
    let list = |items: &[String]| {
        if items.is_empty() {
            "-".to_string()
        } else {
            items.join(" ")
        }
    };
    let mut out = String::new();
    out.push_str(&format!(
        "\nnode     {}.{} (slot.incarnation), pid {}, up {}\n",
        r.slot,
        r.incarnation,
        r.pid,
        duration(r.uptime_s)
    ));
    out.push_str(&format!(
        "group    voters {}; learners {}\n",
        list(&r.voters),
        list(&r.learners)
    ));
    out.push_str(&format!(
        "service  {} ({}) on {}:{}, {}; {} kernel sockets; applied {} entries, {} packets; \
         connections opened {}, closed {}; {} service panics\n",
        s.name,
        s.kind,
        s.vip,
        s.port,
        if s.holds_vip {
            "holds the VIP"
        } else {
            "does not hold the VIP"
        },
        s.sockets,
        s.entries_applied,
        s.packets_applied,
        s.opened,
        s.closed,
        s.service_panics
    ));
    out.push_str(&format!(
        "memory   {} of {} accounted ({}); {} connections reset at the output cap\n",
        mib(s.memory_used),
        mib(s.memory_limit),
        if s.memory_limit > 0 && s.memory_used > s.memory_limit {
            "over the budget: writes refused"
        } else {
            "within the budget"
        },
        s.output_overflows
    ));
    let nonzero: Vec<String> = match serde_json::to_value(&r.counters) {
        Ok(serde_json::Value::Object(map)) => map
            .iter()
            .filter(|(_, v)| v.as_u64() != Some(0))
            .map(|(k, v)| format!("{k} {v}"))
            .collect(),
        _ => Vec::new(),
    };
    out.push_str(&format!(
        "counters {}\n",
        if nonzero.is_empty() {
            "all zero".to_string()
        } else {
            nonzero.join(", ")
        }
    ));
    out
}

/// Bytes as MiB with one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_node::report::{Counters, PeerReport, ServiceReport};

    fn report(slot: u16, role: &str) -> NodeReport {
        NodeReport {
            slot,
            incarnation: 2,
            pid: 777,
            uptime_s: 3725,
            role: role.into(),
            draining: false,
            health: "healthy".into(),
            term: 5,
            leader: Some(1),
            commit_index: 1042,
            applied_index: 1041,
            log_first: 1000,
            log_last: 1042,
            log_entries: 43,
            snapshot_index: 999,
            snapshot_age_s: Some(75),
            voters: vec!["1.2".into(), "2.1".into(), "3.1".into()],
            learners: vec![],
            peers: if role == "primary" {
                vec![
                    PeerReport {
                        slot: 2,
                        incarnation: 1,
                        matched: 1042,
                        lag: 0,
                        connected: true,
                    },
                    PeerReport {
                        slot: 3,
                        incarnation: 1,
                        matched: 1030,
                        lag: 12,
                        connected: false,
                    },
                ]
            } else {
                vec![]
            },
            service: ServiceReport {
                name: "kv".into(),
                kind: "kv".into(),
                vip: "198.18.0.100".into(),
                port: 6379,
                holds_vip: role == "primary",
                connections: 4,
                sockets: 4,
                state_hash: "0123456789abcdef0123456789abcdef".into(),
                entries_applied: 1041,
                packets_applied: 2080,
                opened: 6,
                closed: 2,
                service_panics: 0,
                memory_used: 0,
                memory_limit: 0,
                output_overflows: 0,
            },
            counters: Counters {
                captured: 2080,
                proposals: 1041,
                became_primary: 1,
                ..Counters::default()
            },
            takeover_faults: Default::default(),
        }
    }

    #[test]
    fn status_table_renders() {
        let primary = report(1, "primary");
        let clone = report(2, "clone");
        let table = render_table(&[
            (1, Ok(&primary)),
            (2, Ok(&clone)),
            (3, Err("no tandem node answers on /x".into())),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("NODE  ROLE     TERM  LEADER  COMMIT  APPLIED"));
        assert!(lines[0].ends_with("PEERS LAG"));
        for cell in [
            "1",
            "primary",
            "5",
            "1042",
            "1041",
            "43",
            "1m15s",
            "0123456789ab",
            "2:0 3:12(down)",
        ] {
            assert!(lines[1].contains(cell), "{cell} missing from {}", lines[1]);
        }
        assert!(!lines[1].contains("0123456789abc"), "hash shortened");
        assert!(lines[2].starts_with("2     clone"), "{}", lines[2]);
        assert!(lines[2].trim_end().ends_with('-'), "no peers on a clone");
        assert_eq!(lines[3], "3     error: no tandem node answers on /x");
        // Columns line up: every cell starts where its header does.
        let col = lines[0].find("APPLIED").unwrap();
        assert_eq!(&lines[1][col..col + 4], "1041");
        assert_eq!(&lines[2][col..col + 4], "1041");
    }

    #[test]
    fn armed_takeover_faults_show_beside_the_role() {
        let mut clone = report(2, "clone");
        clone.takeover_faults = [("arp".to_string(), 1), ("vip".to_string(), 3)]
            .into_iter()
            .collect();
        let table = render_table(&[(2, Ok(&clone))]);
        assert!(
            table
                .lines()
                .nth(1)
                .unwrap()
                .contains("clone (fault arpx1,vipx3)"),
            "{table}"
        );
    }

    #[test]
    fn status_details_render() {
        let details = render_details(&report(1, "primary"));
        assert!(details.contains("node     1.2 (slot.incarnation), pid 777, up 1h02m"));
        assert!(details.contains("voters 1.2 2.1 3.1; learners -"));
        assert!(details.contains("kv (kv) on 198.18.0.100:6379, holds the VIP"));
        assert!(details.contains("captured 2080"));
        assert!(details.contains("became_primary 1"));
        assert!(!details.contains("replayed"), "zero counters are left out");
    }

    #[test]
    fn status_lab_socket_names() {
        assert_eq!(node_id_of("node1.sock"), Some(1));
        assert_eq!(node_id_of("node12.sock"), Some(12));
        assert_eq!(node_id_of("node0.sock"), None);
        assert_eq!(node_id_of("node.sock"), None);
        assert_eq!(node_id_of("node1.sock.tmp"), None);
        assert_eq!(node_id_of(".node1.sock.12.tmp"), None);
        assert_eq!(node_id_of("node+1.sock"), None);
    }

    #[test]
    fn status_help_teaches() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: StatusArgs,
        }
        let help = Wrapper::command().render_long_help().to_string();
        for text in ["STATE HASH", "PEERS LAG", "--lab", "Examples:", "sudo"] {
            assert!(help.contains(text), "{text} missing from the help");
        }
    }
}
