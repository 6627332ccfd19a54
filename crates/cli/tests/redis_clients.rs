//! redis-py, a client nobody here wrote, with its default settings (RESP3:
//! `HELLO 3` on connect) and with `protocol=2`, against a 3-node kv
//! cluster through the VIP, across a kill of the primary (issue 17):
//!
//! - phase A (tests/redis_clients.py): set/get, a pipeline, a transaction
//!   (MULTI/EXEC), a WATCH conflict and a WATCH without one, scan_iter,
//!   keys, type, incrbyfloat, setex + ttl, blpop served at once and blpop
//!   timing out on the log's clock, SELECT 1 on connect, client
//!   setname/getname/id/info (which also shows the protocol in use),
//!   subscribe + publish + get_message, and AUTH: `CONFIG SET requirepass`
//!   through the log, a client without the password refused, one with it
//!   served, a wrong one refused;
//! - the primary is killed (power cut);
//! - phase B on the very same client objects and connections: what phase A
//!   left is there, the subscriber is still subscribed and gets a message
//!   published after the failover, and every feature works again;
//! - no connection was reset, and once the old primary is back as a clone
//!   every replica has the same state hash.
//!
//! Beside them node-redis (npm `redis` 4, default settings,
//! tests/redis_clients.js), a client from another ecosystem, does the same
//! across the same kill: set/get, a pipeline, WATCH transactions (one
//! committed, one aborted by another client's write), SCAN iteration and
//! pub/sub, with no client error event.
//!
//! Needs root, redis-py in the venv scripts/install-deps.sh makes
//! (`$TANDEM_COMPARE_VENV`, by default /var/tmp/tandem-bench-compare-venv)
//! and node-redis where it installs it (`$TANDEM_NODE_CLIENTS`, by default
//! /var/tmp/tandem-node-clients); runs in CI; fails with a clear message
//! when either is missing, never skips.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::*;
use tandem_lab::{Lab, ServiceKind};

/// The venv's python, checked to import redis.
fn python() -> PathBuf {
    let venv = std::env::var("TANDEM_COMPARE_VENV")
        .unwrap_or_else(|_| "/var/tmp/tandem-bench-compare-venv".to_string());
    let python = Path::new(&venv).join("bin/python3");
    let ok = std::process::Command::new(&python)
        .args(["-c", "import redis"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "redis-py is missing: {} cannot import redis — run scripts/install-deps.sh (as root)",
        python.display()
    );
    python
}

/// node, checked to load node-redis from where install-deps.sh puts it.
fn node() -> PathBuf {
    let modules = std::env::var("TANDEM_NODE_CLIENTS")
        .unwrap_or_else(|_| "/var/tmp/tandem-node-clients".to_string());
    let node = PathBuf::from("/usr/bin/node");
    let ok = std::process::Command::new(&node)
        .arg("-e")
        .arg(format!("require('{modules}/node_modules/redis')"))
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "node-redis is not installed in {modules} (or node is missing): run scripts/install-deps.sh as root"
    );
    node
}

/// A running client script and its output lines as they come.
struct Client {
    /// Which client, for messages.
    name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Client {
    /// redis-py with `protocol` ("default" or "2").
    fn python(lab: &mut Lab, python: &Path, go: &Path, protocol: &'static str) -> Client {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/redis_clients.py");
        let mut command = lab.command(None, python).expect("client command");
        command
            .args(["-W", "ignore"])
            .arg(&script)
            .arg(lab.vip().to_string())
            .arg(lab.port().to_string())
            .arg(go)
            .arg(protocol);
        Client::start(lab, command, format!("redis-py (protocol {protocol})"))
    }

    /// node-redis with its default settings.
    fn node(lab: &mut Lab, node: &Path, go: &Path) -> Client {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/redis_clients.js");
        let mut command = lab.command(None, node).expect("client command");
        command
            .arg(&script)
            .arg(lab.vip().to_string())
            .arg(lab.port().to_string())
            .arg(go);
        Client::start(lab, command, "node-redis".to_string())
    }

    fn start(lab: &mut Lab, mut command: std::process::Command, name: String) -> Client {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = lab.spawn(None, command).expect("the client starts");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        for stream in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        Client {
            name,
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line equal to `want`; panics with the whole output if
    /// the script ends or takes too long first.
    fn wait_for(&mut self, want: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line == want;
                    self.seen.push(line);
                    if done {
                        return;
                    }
                }
                Err(_) => panic!(
                    "{} never printed {want}:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn finish(mut self) {
        self.wait_for("DONE", Duration::from_secs(60));
        let status = self.child.wait().expect("the client exits");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(line);
        }
        assert!(
            status.success(),
            "{} failed:\n{}",
            self.name,
            self.seen.join("\n")
        );
        let checks = self.seen.iter().filter(|l| l.starts_with("ok ")).count();
        assert!(checks > 0, "{} checked nothing", self.name);
        eprintln!("{}: {checks} checks passed", self.name);
    }
}

#[test]
fn redis_py_with_default_settings_works_across_a_failover() {
    let python = python();
    let node = node();
    let mut lab = cluster_of("rcl", "a", ServiceKind::Kv);
    let first = wait_healthy(&lab, "start");
    let rst_before = lab.client_rst_count().unwrap();
    let go = std::env::temp_dir().join(format!("rcl-go-{}", std::process::id()));
    let _ = std::fs::remove_file(&go);

    // Phase A of each client, one after the other (the AUTH part changes
    // the password for everyone).
    let mut clients = Vec::new();
    for protocol in ["default", "2"] {
        let mut c = Client::python(&mut lab, &python, &go, protocol);
        c.wait_for("READY", Duration::from_secs(60));
        clients.push(c);
    }
    // node-redis after them: redis-py's phase A ends with no password.
    let mut c = Client::node(&mut lab, &node, &go);
    c.wait_for("READY", Duration::from_secs(60));
    clients.push(c);

    lab.kill(first).expect("kill the primary");
    let deadline = Instant::now() + Duration::from_secs(20);
    while leader(&lab).is_none_or(|l| l == first) {
        assert!(Instant::now() < deadline, "no new primary");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(&go, b"go").expect("write the go file");
    for c in clients {
        c.finish();
    }
    let _ = std::fs::remove_file(&go);
    assert_eq!(
        lab.client_rst_count().unwrap(),
        rst_before,
        "a client saw a reset"
    );

    // The old primary comes back as a clone; every replica agrees.
    lab.restart(first).expect("restart the old primary");
    wait_healthy(&lab, "after the restart");
    let hashes = settled_hashes(&lab);
    assert!(
        hashes.iter().all(|h| h.2 == hashes[0].2),
        "replicas disagree: {hashes:?}"
    );
}
