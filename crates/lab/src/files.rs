//! The files of a lab whose nodes run `tandem node` daemons, all in the
//! lab's own directory `STATE_DIR/NAME/` (next to the state file
//! `STATE_DIR/NAME.json`), removed by `down`:
//!
//! | path | contents |
//! |---|---|
//! | `cluster.key` | the cluster key: 32 random bytes, mode 0600 |
//! | `nodeI.toml` | node `I`'s configuration (mode 0600), see [`node_config`] |
//! | `nodeI.d/` | node `I`'s data directory (mode 0700; its incarnation counter) |
//! | `nodeI.sock` | node `I`'s admin socket (created by the daemon) |
//! | `nodeI.log` | node `I`'s daemon output (stdout and stderr), appended |

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::state::LabState;
use crate::{LabError, NODE_INTERFACE, REPLICATION_PORT};

/// Lines of each node's log quoted when `up` fails.
pub(crate) const LOG_TAIL_LINES: usize = 20;

/// Size of the generated cluster key.
const KEY_LEN: usize = 32;

/// The cluster key file.
pub(crate) fn key_path(dir: &Path) -> PathBuf {
    dir.join("cluster.key")
}

/// Where a second cluster key goes during a key rotation (absent otherwise;
/// `tandem reload-keys` reads it).
pub(crate) fn rotation_key_path(dir: &Path) -> PathBuf {
    dir.join("cluster.key.rotation")
}

/// Node `id`'s configuration file.
pub(crate) fn config_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("node{id}.toml"))
}

/// Node `id`'s data directory.
pub(crate) fn data_dir(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("node{id}.d"))
}

/// Node `id`'s admin socket.
pub(crate) fn admin_socket(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("node{id}.sock"))
}

/// Node `id`'s daemon log.
pub(crate) fn log_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("node{id}.log"))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LabError + '_ {
    move |source| LabError::StateIo {
        path: path.to_path_buf(),
        source,
    }
}

/// A TOML basic string.
fn toml_str(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_path(path: &Path) -> String {
    toml_str(&path.to_string_lossy())
}

/// Node `id`'s configuration (the format of `crates/node/src/config.rs`):
/// its slot is its id, every lab node is a member at its lab address and
/// [`REPLICATION_PORT`], and one `[[service]]` serves the lab's service on
/// the VIP, on [`NODE_INTERFACE`]. `[raft]` holds only what the lab's
/// [`crate::RaftTimings`] set (the daemon's defaults otherwise).
pub(crate) fn node_config(state: &LabState, dir: &Path, id: u32) -> String {
    let service = state.service.as_str();
    let mut text = format!(
        "# node {id} of lab {lab}, written by `tandem lab up` (removed by `tandem lab down`)\n\
         \n\
         [node]\n\
         slot = {id}\n\
         data_dir = {data_dir}\n\
         admin_socket = {admin_socket}\n\
         metrics = {metrics}\n\
         \n\
         [cluster]\n\
         key_file = {key_file}\n\
         rotation_key_file = {rotation_key_file}\n\
         members = [\n",
        lab = state.name,
        data_dir = toml_path(&data_dir(dir, id)),
        admin_socket = toml_path(&admin_socket(dir, id)),
        metrics = toml_str(&format!("{}:{METRICS_PORT}", node_addr(state, id))),
        key_file = toml_path(&key_path(dir)),
        rotation_key_file = toml_path(&rotation_key_path(dir)),
    );
    for node in &state.nodes {
        text.push_str(&format!(
            "  {{ slot = {}, addr = {} }},\n",
            node.id,
            toml_str(&format!("{}:{REPLICATION_PORT}", node.addr)),
        ));
    }
    text.push_str(&format!(
        "]\n\
         \n\
         [[service]]\n\
         name = {name}\n\
         kind = {name}\n\
         vip = {vip}\n\
         interface = {interface}\n\
         port = {port}\n\
         queue = 0\n\
         {options}\
         \n\
         # `touch {flag}` makes this node unhealthy: as primary it hands\n\
         # its role over, as a clone it refuses it.\n\
         [supervision]\n\
         check_command = {check}\n\
         check_interval_ms = 200\n\
         failures = 2\n",
        name = toml_str(service),
        vip = toml_str(&format!("{}/{}", state.vip, state.prefix_len)),
        interface = toml_str(NODE_INTERFACE),
        port = state.port,
        options = state
            .service_options
            .iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect::<String>(),
        flag = unhealthy_flag(dir, id).display(),
        check = toml_str(&format!("test ! -e {}", unhealthy_flag(dir, id).display())),
    ));
    if state.unencrypted_replication_for_benchmarks {
        // Into [cluster], which the text above opened and closed: the
        // members list ends it, so insert before it.
        text = text.replacen(
            "members = [\n",
            "unencrypted_replication_for_benchmarks = true  # benchmarks only\nmembers = [\n",
            1,
        );
    }
    let raft = &state.raft;
    if !raft.is_default() {
        text.push_str("\n[raft]\n");
        if let Some(v) = raft.tick_ms {
            text.push_str(&format!("tick_ms = {v}\n"));
        }
        if let Some(v) = raft.heartbeat_ticks {
            text.push_str(&format!("heartbeat_ticks = {v}\n"));
        }
        if let Some(v) = raft.election_ticks {
            text.push_str(&format!("election_ticks = {v}\n"));
        }
    }
    text
}

/// The port of each node's Prometheus endpoint (on its lab address).
pub const METRICS_PORT: u16 = 9100;

fn node_addr(state: &LabState, id: u32) -> String {
    state
        .nodes
        .iter()
        .find(|n| n.id == id)
        .map(|n| n.addr.to_string())
        .unwrap_or_default()
}

/// The file whose presence makes node `id` fail its health check.
pub(crate) fn unhealthy_flag(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("node{id}.unhealthy"))
}

/// Creates `path` with `mode` (whatever the umask) and writes `data`.
fn write_private(path: &Path, data: &[u8], mode: u32) -> Result<(), LabError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io_err(path))?;
    file.write_all(data).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

fn make_dir(path: &Path, mode: u32) -> Result<(), LabError> {
    std::fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(io_err(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))
}

/// Creates `dir` (which must not exist) and everything the daemons need in
/// it: the cluster key, each node's configuration and data directory.
pub(crate) fn write_all(state: &LabState, dir: &Path) -> Result<(), LabError> {
    make_dir(dir, 0o755)?;
    let mut key = [0u8; KEY_LEN];
    let urandom = Path::new("/dev/urandom");
    File::open(urandom)
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(io_err(urandom))?;
    write_private(&key_path(dir), &key, 0o600)?;
    for node in &state.nodes {
        make_dir(&data_dir(dir, node.id), 0o700)?;
        write_private(
            &config_path(dir, node.id),
            node_config(state, dir, node.id).as_bytes(),
            0o600,
        )?;
    }
    Ok(())
}

/// Opens node `id`'s log for appending (creating it).
pub(crate) fn open_log(dir: &Path, id: u32) -> Result<File, LabError> {
    let path = log_path(dir, id);
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(&path)
        .map_err(io_err(&path))
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> Vec<&str> {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].to_vec()
}

/// The last [`LOG_TAIL_LINES`] lines of every node's log, each under a
/// heading naming the node and the file (for error messages: `up` removes
/// the files when it fails).
pub(crate) fn log_tails(state: &LabState) -> String {
    let Some(dir) = &state.files_dir else {
        return String::new();
    };
    let mut out = String::new();
    for node in &state.nodes {
        let path = log_path(dir, node.id);
        out.push_str(&format!(
            "--- node {} ({}, last {LOG_TAIL_LINES} lines) ---\n",
            node.id,
            path.display()
        ));
        match std::fs::read(&path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let lines = tail(&text, LOG_TAIL_LINES);
                if lines.is_empty() {
                    out.push_str("(empty)\n");
                }
                for line in lines {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            Err(e) => out.push_str(&format!("(cannot read it: {e})\n")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::plan_for_tests;
    use crate::ServiceKind;

    #[test]
    fn three_node_kv_config() {
        let state = plan_for_tests("kv3", 3, ServiceKind::Kv);
        let dir = Path::new("/run/tandem/labs/kv3");
        let expected = r#"# node 2 of lab kv3, written by `tandem lab up` (removed by `tandem lab down`)

[node]
slot = 2
data_dir = "/run/tandem/labs/kv3/node2.d"
admin_socket = "/run/tandem/labs/kv3/node2.sock"
metrics = "198.18.0.12:9100"

[cluster]
key_file = "/run/tandem/labs/kv3/cluster.key"
rotation_key_file = "/run/tandem/labs/kv3/cluster.key.rotation"
members = [
  { slot = 1, addr = "198.18.0.11:7100" },
  { slot = 2, addr = "198.18.0.12:7100" },
  { slot = 3, addr = "198.18.0.13:7100" },
]

[[service]]
name = "kv"
kind = "kv"
vip = "198.18.0.100/24"
interface = "eth0"
port = 6379
queue = 0

# `touch /run/tandem/labs/kv3/node2.unhealthy` makes this node unhealthy: as primary it hands
# its role over, as a clone it refuses it.
[supervision]
check_command = "test ! -e /run/tandem/labs/kv3/node2.unhealthy"
check_interval_ms = 200
failures = 2
"#;
        assert_eq!(node_config(&state, dir, 2), expected);
        // Only [node] differs between nodes.
        let one = node_config(&state, dir, 1);
        assert!(one.contains("slot = 1\ndata_dir = \"/run/tandem/labs/kv3/node1.d\"\n"));
        assert!(one.contains("admin_socket = \"/run/tandem/labs/kv3/node1.sock\"\n"));
        let shared = |text: &str| -> Vec<String> {
            text.lines()
                .skip(8)
                .filter(|l| !l.contains(".unhealthy"))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(shared(&one), shared(expected));
        assert!(!one.contains("[raft]"));
    }

    #[test]
    fn raft_timings_are_written_only_when_set() {
        let mut state = plan_for_tests("r", 3, ServiceKind::Kv);
        state.raft = crate::RaftTimings {
            tick_ms: None,
            heartbeat_ticks: Some(3),
            election_ticks: Some(30),
        };
        let text = node_config(&state, Path::new("/d"), 1);
        assert!(
            text.ends_with("\n[raft]\nheartbeat_ticks = 3\nelection_ticks = 30\n"),
            "{text}"
        );
        // It is valid TOML with the values in the right table.
        let config: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(config["raft"]["election_ticks"].as_integer(), Some(30));
        assert!(config["raft"].get("tick_ms").is_none());
    }

    #[test]
    fn the_benchmark_switch_goes_into_cluster_only_when_set() {
        let mut state = plan_for_tests("u", 3, ServiceKind::Kv);
        let plain = node_config(&state, Path::new("/d"), 1);
        assert!(!plain.contains("unencrypted"), "{plain}");
        state.unencrypted_replication_for_benchmarks = true;
        let text = node_config(&state, Path::new("/d"), 1);
        let config: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(
            config["cluster"]["unencrypted_replication_for_benchmarks"].as_bool(),
            Some(true)
        );
        assert_eq!(config["cluster"]["members"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn every_service_names_its_kind_and_port() {
        for (kind, port) in [
            (ServiceKind::Echo, 7000),
            (ServiceKind::Counter, 7001),
            (ServiceKind::Kv, 6379),
        ] {
            let state = plan_for_tests("s", 1, kind);
            let text = node_config(&state, Path::new("/d"), 1);
            let name = kind.as_str();
            assert!(
                text.contains(&format!(
                    "name = \"{name}\"\nkind = \"{name}\"\n\
                     vip = \"198.18.0.100/24\"\ninterface = \"eth0\"\nport = {port}\n"
                )),
                "{text}"
            );
            assert!(text.contains("members = [\n  { slot = 1, addr = \"198.18.0.11:7100\" },\n]\n"));
        }
    }

    #[test]
    fn paths_follow_the_layout() {
        let dir = Path::new("/run/tandem/labs/x");
        assert_eq!(key_path(dir), Path::new("/run/tandem/labs/x/cluster.key"));
        assert_eq!(
            config_path(dir, 3),
            Path::new("/run/tandem/labs/x/node3.toml")
        );
        assert_eq!(data_dir(dir, 3), Path::new("/run/tandem/labs/x/node3.d"));
        assert_eq!(
            admin_socket(dir, 3),
            Path::new("/run/tandem/labs/x/node3.sock")
        );
        assert_eq!(log_path(dir, 3), Path::new("/run/tandem/labs/x/node3.log"));
        assert_eq!(
            crate::state::files_dir("x"),
            Path::new("/run/tandem/labs/x")
        );
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(toml_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
        assert_eq!(toml_str("\u{1}"), "\"\\u0001\"");
    }

    #[test]
    fn files_are_written_with_their_modes() {
        let base = std::env::temp_dir().join(format!("tandem-lab-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let dir = base.join("lab");
        let state = plan_for_tests("w", 3, ServiceKind::Echo);
        write_all(&state, &dir).unwrap();
        let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(key_path(&dir)), 0o600);
        assert_eq!(std::fs::read(key_path(&dir)).unwrap().len(), 32);
        for id in 1..=3 {
            assert_eq!(mode(config_path(&dir, id)), 0o600);
            assert_eq!(mode(data_dir(&dir, id)), 0o700);
            assert_eq!(
                std::fs::read_to_string(config_path(&dir, id)).unwrap(),
                node_config(&state, &dir, id)
            );
        }
        // A second lab in the same place is refused, not merged.
        assert!(write_all(&state, &dir).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn log_tails_quote_the_last_lines() {
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let lines = tail(&text, LOG_TAIL_LINES);
        assert_eq!(lines.len(), 20);
        assert_eq!(lines[0], "line 11");
        assert_eq!(tail("one\n", 20), ["one"]);
        assert!(tail("", 20).is_empty());
    }
}
