//! End-to-end tests of the lab on the real kernel. They need root, `ip` and
//! `iptables`, and fail (never skip) without them: a lab that cannot be
//! built is a broken test machine, not a reason to pass.
//!
//! Tests run in parallel threads of one process, so every test uses its own
//! lab name (test name + pid) and checks only its own namespaces.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tandem_lab::{Fault, Lab, LabError, LabGuard, LabSpec, Probe, ServiceKind, REPLICATION_PORTS};

/// A lab name unique to this test and this test process.
fn unique(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Names of the namespaces on the machine (`ip netns list`).
fn netns_list() -> BTreeSet<String> {
    run("ip", &["netns", "list"])
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Namespaces belonging to lab `name`.
fn lab_netns(name: &str) -> BTreeSet<String> {
    let prefix = format!("tdm-{name}-");
    netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// Interface names in the root namespace (`ip -o link`).
fn root_links() -> BTreeSet<String> {
    run("ip", &["-o", "link"])
        .lines()
        .filter_map(|l| Some(l.split(':').nth(1)?.trim().to_string()))
        .collect()
}

fn state_file(name: &str) -> String {
    format!("{}/{name}.json", tandem_lab::STATE_DIR)
}

/// `State:` of /proc/PID/status, e.g. 'T' for stopped.
fn proc_state(pid: u32) -> Option<char> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("State:"))?;
    line.split_whitespace().nth(1)?.chars().next()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn spawn_sleep(lab: &mut Lab, node: u32) -> std::process::Child {
    let mut command = lab.command(Some(node), "sleep").unwrap();
    command.arg("1000");
    let child = lab.spawn(Some(node), command).unwrap();
    let pid = child.id();
    // `ip netns exec` execs `sleep`: wait until the pid is sleep, in the node.
    wait_for("sleep to start in its namespace", || {
        lab.pids(Some(node)).unwrap().contains(&pid)
    });
    child
}

/// Binds a TCP listener inside `node` (it stays in that namespace after
/// the thread that made it returns); connections complete in its backlog.
fn listen(lab: &Lab, node: u32, port: u16) -> TcpListener {
    let addr = SocketAddrV4::new(lab.node_addr(node).unwrap(), port);
    lab.run_in(Some(node), move || TcpListener::bind(addr))
        .unwrap()
        .unwrap()
}

/// How long to wait for an answer that must not come.
const SHORT: Duration = Duration::from_millis(700);
/// How long to wait for an answer that must come (only a failure waits
/// this long: a loaded shared machine can be slow).
const LONG: Duration = Duration::from_secs(3);

#[test]
fn up_status_down_leaves_nothing_behind() {
    let name = unique("basic");
    let links_before = root_links();
    let lab = Lab::up(&LabSpec::named(&name)).unwrap();
    let guard = LabGuard::new(lab);

    let expected: BTreeSet<String> = ["br", "c", "n1", "n2", "n3"]
        .iter()
        .map(|s| format!("tdm-{name}-{s}"))
        .collect();
    assert_eq!(lab_netns(&name), expected);
    assert!(Path::new(&state_file(&name)).exists());
    assert_eq!(guard.node_ids(), [1, 2, 3]);
    assert_eq!(guard.client_addr(), Ipv4Addr::new(198, 18, 0, 2));
    assert_eq!(guard.node_interface(), "eth0");
    assert_eq!(guard.vip(), Ipv4Addr::new(198, 18, 0, 100));
    assert_eq!(guard.vip_prefix_len(), 24);
    assert_eq!(guard.port(), 7000);

    for id in guard.node_ids() {
        let addr = guard.node_addr(id).unwrap();
        assert_eq!(addr, Ipv4Addr::new(198, 18, 0, 10 + id as u8));
        assert!(guard.reachable(None, addr).unwrap(), "client -> node {id}");
        // The node's address is on eth0 in its own namespace.
        let out = guard
            .exec_output(Some(id), &["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{addr}/24")));
    }
    // Nodes reach each other too.
    assert!(guard
        .reachable(Some(1), guard.node_addr(3).unwrap())
        .unwrap());
    // The VIP is not assigned with service none.
    assert!(!guard.reachable(None, guard.vip()).unwrap());

    let status = serde_json::to_value(guard.status()).unwrap();
    let keys: BTreeSet<&str> = status
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["name", "vip", "port", "client_netns", "leader", "nodes"])
    );
    assert_eq!(status["name"], name.as_str());
    assert_eq!(status["vip"], "198.18.0.100");
    assert_eq!(status["port"], 7000);
    assert_eq!(status["client_netns"], format!("tdm-{name}-c"));
    assert!(status["leader"].is_null());
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for (i, node) in nodes.iter().enumerate() {
        let keys: BTreeSet<&str> = node
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["id", "netns", "addr", "pid", "role", "alive"])
        );
        assert_eq!(node["id"], i as u64 + 1);
        assert_eq!(node["netns"], format!("tdm-{name}-n{}", i + 1));
        assert_eq!(node["addr"], format!("198.18.0.{}", 11 + i));
        assert!(node["pid"].is_null());
        assert_eq!(node["role"], "none");
        assert_eq!(node["alive"], true);
    }

    // Nothing appeared in the root namespace while the lab was up.
    assert_eq!(root_links(), links_before);
    guard.down().unwrap();
    assert!(lab_netns(&name).is_empty());
    assert!(!Path::new(&state_file(&name)).exists());
    assert_eq!(root_links(), links_before);
    // It is gone for good: opening it again says so.
    assert!(matches!(Lab::open(&name), Err(LabError::NotFound { .. })));
}

#[test]
fn two_labs_side_by_side() {
    let (a_name, b_name) = (unique("side-a"), unique("side-b"));
    let a = LabGuard::up(&LabSpec::named(&a_name).with_nodes(2)).unwrap();
    let b = LabGuard::up(&LabSpec::named(&b_name).with_nodes(1)).unwrap();
    // Same addresses, different bridges: each client reaches its own nodes.
    assert!(a.reachable(None, a.node_addr(2).unwrap()).unwrap());
    assert!(b.reachable(None, b.node_addr(1).unwrap()).unwrap());
    // b has no node 2: its client's 198.18.0.12 is nobody.
    assert!(!b.reachable(None, a.node_addr(2).unwrap()).unwrap());
    assert!(matches!(
        b.node_netns(2),
        Err(LabError::NoSuchNode { id: 2, .. })
    ));

    a.down().unwrap();
    assert!(lab_netns(&a_name).is_empty());
    assert_eq!(lab_netns(&b_name).len(), 3);
    assert!(b.reachable(None, b.node_addr(1).unwrap()).unwrap());
    b.down().unwrap();
    assert!(lab_netns(&b_name).is_empty());
}

#[test]
fn a_name_in_use_is_refused_without_harm() {
    let name = unique("dup");
    let lab = LabGuard::up(&LabSpec::named(&name).with_nodes(1)).unwrap();
    let err = Lab::up(&LabSpec::named(&name)).unwrap_err();
    assert!(matches!(err, LabError::AlreadyExists(_)), "{err}");
    assert!(err
        .to_string()
        .contains(&format!("run `tandem lab down --name {name}`")));
    // The first lab is intact.
    assert_eq!(lab_netns(&name).len(), 3);
    assert!(lab.reachable(None, lab.node_addr(1).unwrap()).unwrap());
    lab.down().unwrap();
}

#[test]
fn a_foreign_namespace_is_never_touched() {
    let name = unique("foreign");
    let foreign = format!("tdm-{name}-n2");
    run("ip", &["netns", "add", &foreign]);
    let err = Lab::up(&LabSpec::named(&name)).unwrap_err();
    assert!(
        matches!(err, LabError::NamespaceTaken(ref n) if *n == foreign),
        "{err}"
    );
    // Nothing of the failed lab is left, and the foreign namespace is.
    assert_eq!(lab_netns(&name), BTreeSet::from([foreign.clone()]));
    assert!(!Path::new(&state_file(&name)).exists());
    run("ip", &["netns", "del", &foreign]);
}

#[test]
fn down_after_the_creator_vanished_cleans_everything() {
    let name = unique("crashed");
    let links_before = root_links();
    let mut lab = Lab::up(&LabSpec::named(&name).with_nodes(2)).unwrap();
    let mut child = spawn_sleep(&mut lab, 1);
    let pid = child.id();
    // The handle disappears without `down`, as if its process had died.
    std::mem::forget(lab);
    assert_eq!(lab_netns(&name).len(), 4);

    let lab = Lab::open(&name).unwrap();
    assert_eq!(lab.status().nodes[0].pid, Some(pid));
    lab.down().unwrap();
    assert!(lab_netns(&name).is_empty());
    assert!(!Path::new(&state_file(&name)).exists());
    assert_eq!(root_links(), links_before);
    // The spawned process was killed by `down`.
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9));
    // A second down finds nothing to do and says so.
    assert!(matches!(
        Lab::down_by_name(&name),
        Err(LabError::NotFound { .. })
    ));
}

#[test]
fn stop_cont_kill_restart() {
    let name = unique("faults");
    let mut lab = LabGuard::up(&LabSpec::named(&name)).unwrap();
    let node2 = lab.node_addr(2).unwrap();
    let mut child = spawn_sleep(&mut lab, 2);
    let pid = child.id();
    assert_eq!(lab.status().nodes[1].pid, Some(pid));

    let report = lab.stop(2).unwrap();
    assert_eq!(report.signalled, [pid]);
    wait_for("sleep to be stopped", || proc_state(pid) == Some('T'));
    assert!(!lab.status().nodes[1].alive);
    assert_eq!(lab.conditions()[1].fault, Fault::Stopped);
    // Other nodes are untouched.
    assert!(lab.status().nodes[0].alive);

    lab.cont(2).unwrap();
    wait_for("sleep to run again", || proc_state(pid) == Some('S'));
    assert!(lab.status().nodes[1].alive);

    let report = lab.kill(2).unwrap();
    assert_eq!(report.signalled, [pid]);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(child.wait().unwrap().signal(), Some(9));
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    let cond = &lab.conditions()[1];
    assert!(!cond.link_up);
    assert_eq!(cond.fault, Fault::Killed);
    assert!(!lab.status().nodes[1].alive);
    assert!(lab.status().nodes[1].pid.is_none());
    assert!(
        !lab.reachable(None, node2).unwrap(),
        "a killed node answers"
    );
    assert!(lab.reachable(None, lab.node_addr(1).unwrap()).unwrap());

    let report = lab.restart(2).unwrap();
    assert!(report.note.unwrap().contains("no daemon"));
    assert!(lab.conditions()[1].link_up);
    assert!(lab.status().nodes[1].alive);
    // The probe of the killed node left the client's ARP entry for it
    // unresolved, and the kernel retries that only once a second: the first
    // probe after the restart may time out before the next ARP request
    // goes, so the node gets a few seconds to answer.
    wait_for("the restarted node to answer", || {
        lab.reachable(None, node2).unwrap()
    });
    lab.down().unwrap();
}

#[test]
fn crash_kills_but_leaves_the_link_up() {
    let name = unique("crash");
    let mut lab = LabGuard::up(&LabSpec::named(&name).with_nodes(2)).unwrap();
    let mut child = spawn_sleep(&mut lab, 1);
    let report = lab.crash(1).unwrap();
    assert_eq!(report.signalled, [child.id()]);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(child.wait().unwrap().signal(), Some(9));
    let cond = &lab.conditions()[0];
    assert!(cond.link_up);
    assert_eq!(cond.fault, Fault::Crashed);
    assert!(!lab.status().nodes[0].alive);
    // Its kernel still answers.
    assert!(lab.reachable(None, lab.node_addr(1).unwrap()).unwrap());
    lab.restart(1).unwrap();
    assert!(lab.status().nodes[0].alive);
    lab.down().unwrap();
}

#[test]
fn partition_cuts_replication_but_not_clients() {
    let name = unique("part");
    let mut lab = LabGuard::up(&LabSpec::named(&name).with_nodes(2)).unwrap();
    let repl = *REPLICATION_PORTS.start();
    let (n1, n2) = (lab.node_addr(1).unwrap(), lab.node_addr(2).unwrap());
    let _repl_on_2 = listen(&lab, 2, repl);
    let _repl_on_1 = listen(&lab, 1, *REPLICATION_PORTS.end());
    let _service_on_2 = listen(&lab, 2, lab.port());
    let udp_on_2 = lab
        .run_in(Some(2), move || {
            UdpSocket::bind(SocketAddrV4::new(n2, repl + 1))
        })
        .unwrap()
        .unwrap();
    let udp_from_1 = move || {
        let socket = UdpSocket::bind(SocketAddrV4::new(n1, 0)).unwrap();
        socket
            .send_to(b"beat", SocketAddrV4::new(n2, repl + 1))
            .unwrap();
    };
    let udp_arrives = |lab: &Lab, expected: bool| {
        let wait = if expected { LONG } else { SHORT };
        udp_on_2.set_read_timeout(Some(wait)).unwrap();
        lab.run_in(Some(1), udp_from_1).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(udp_on_2.recv_from(&mut buf).is_ok(), expected, "UDP 1 -> 2");
    };
    let probe = |lab: &Lab, from: Option<u32>, to: Ipv4Addr, port: u16, expected: Probe| {
        let wait = if expected == Probe::Unreachable {
            SHORT
        } else {
            LONG
        };
        let got = lab.probe(from, SocketAddrV4::new(to, port), wait).unwrap();
        assert_eq!(got, expected, "{from:?} -> {to}:{port}");
    };
    let repl_1 = *REPLICATION_PORTS.end();

    probe(&lab, Some(1), n2, repl, Probe::Open);
    udp_arrives(&lab, true);

    lab.partition(2).unwrap();
    assert!(lab.conditions()[1].partitioned);
    assert!(lab.status().nodes[1].alive, "a partitioned node is alive");
    // Node 1 -> node 2 replication, TCP and UDP: dropped.
    probe(&lab, Some(1), n2, repl, Probe::Unreachable);
    udp_arrives(&lab, false);
    // Node 2 -> node 1 replication: dropped on the way out.
    probe(&lab, Some(2), n1, repl_1, Probe::Unreachable);
    // The client path is untouched.
    probe(&lab, None, n2, lab.port(), Probe::Open);
    // Partitioning twice is the same as once.
    lab.partition(2).unwrap();
    probe(&lab, None, n2, lab.port(), Probe::Open);
    probe(&lab, Some(1), n2, repl, Probe::Unreachable);

    lab.heal(2).unwrap();
    assert!(!lab.conditions()[1].partitioned);
    probe(&lab, Some(1), n2, repl, Probe::Open);
    probe(&lab, Some(2), n1, repl_1, Probe::Open);
    udp_arrives(&lab, true);
    lab.down().unwrap();
}

#[test]
fn client_resets_are_counted() {
    let name = unique("rst");
    let lab = LabGuard::up(&LabSpec::named(&name).with_nodes(1)).unwrap();
    assert_eq!(lab.client_rst_count().unwrap(), 0);
    let target = SocketAddrV4::new(lab.node_addr(1).unwrap(), lab.port());
    assert_eq!(lab.probe(None, target, LONG).unwrap(), Probe::Refused);
    assert_eq!(lab.client_rst_count().unwrap(), 1);
    assert_eq!(lab.probe(None, target, LONG).unwrap(), Probe::Refused);
    assert_eq!(lab.client_rst_count().unwrap(), 2);
    // A connection that is accepted brings no reset.
    let _listener = listen(&lab, 1, lab.port());
    assert_eq!(lab.probe(None, target, LONG).unwrap(), Probe::Open);
    assert_eq!(lab.client_rst_count().unwrap(), 2);
    lab.down().unwrap();
}

#[test]
fn exec_passes_the_exit_status_and_spawn_checks_its_command() {
    let name = unique("exec");
    let mut lab = LabGuard::up(&LabSpec::named(&name).with_nodes(2)).unwrap();
    let status = lab.exec(Some(1), &["sh", "-c", "exit 3"]).unwrap();
    assert_eq!(status.code(), Some(3));
    let status = lab.exec(None, &["true"]).unwrap();
    assert!(status.success());
    let out = lab.exec_output(None, &["ip", "-o", "-4", "addr"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("198.18.0.2/24"));

    // spawn accepts only commands made by `command` for the same namespace.
    let err = lab.spawn(Some(1), Command::new("sleep")).unwrap_err();
    assert!(matches!(err, LabError::ForeignCommand { .. }), "{err}");
    let for_node_2 = lab.command(Some(2), "sleep").unwrap();
    let err = lab.spawn(Some(1), for_node_2).unwrap_err();
    assert!(matches!(err, LabError::ForeignCommand { .. }), "{err}");
    assert!(matches!(
        lab.kill(7),
        Err(LabError::NoSuchNode { id: 7, .. })
    ));

    // A process spawned in the client namespace dies with the lab.
    let mut command = lab.command(None, "sleep").unwrap();
    command.arg("1000");
    let mut child = lab.spawn(None, command).unwrap();
    lab.down().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(child.wait().unwrap().signal(), Some(9));
}

#[test]
fn generated_names_are_unique() {
    let a = LabGuard::up(&LabSpec::default().with_nodes(1)).unwrap();
    let b = LabGuard::up(&LabSpec::default().with_nodes(1)).unwrap();
    assert_ne!(a.name(), b.name());
    assert!(Lab::list().unwrap().contains(&a.name().to_string()));
    let (a_name, b_name) = (a.name().to_string(), b.name().to_string());
    drop(a);
    drop(b);
    // The guards took both labs down.
    assert!(lab_netns(&a_name).is_empty());
    assert!(lab_netns(&b_name).is_empty());
}

/// A stand-in for `tandem node --config FILE` (the real daemon is tested by
/// its own crate): it checks its arguments, reads its slot, VIP, interface
/// and port from the config the lab wrote, and node 1 takes the VIP and
/// serves the port (socat echo); the others idle as clones.
const FAKE_DAEMON: &str = r#"#!/bin/sh
[ "$1" = node ] && [ "$2" = --config ] && [ -f "$3" ] || { echo "usage: $0 node --config FILE" >&2; exit 2; }
slot=$(sed -n 's/^slot = //p' "$3" | head -n 1)
vip=$(sed -n 's/^vip = "\(.*\)"$/\1/p' "$3")
iface=$(sed -n 's/^interface = "\(.*\)"$/\1/p' "$3")
port=$(sed -n 's/^port = //p' "$3")
echo "fake daemon: slot $slot vip $vip on $iface port $port"
if [ "$slot" = 1 ]; then
    ip addr add "$vip" dev "$iface" || exit 1
    exec socat "TCP-LISTEN:$port,bind=${vip%/*},reuseaddr,fork" EXEC:cat
fi
exec sleep 100000
"#;

/// A daemon that refuses its config, as the real one does on a bad file.
const FAILING_DAEMON: &str =
    "#!/bin/sh\necho \"config: this daemon refuses to start\" >&2\nexit 3\n";

/// Writes an executable script into a fresh temporary file.
fn script(test: &str, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join(format!("tandem-lab-{test}-{}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn role(lab: &Lab, id: u32) -> String {
    lab.status().nodes[id as usize - 1].role.clone()
}

fn wait_for_long(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn daemons_start_serve_fail_and_go() {
    use std::os::unix::fs::PermissionsExt;
    let name = unique("daemons");
    let fake = script("fake-daemon", FAKE_DAEMON);
    let spec = LabSpec::named(&name).with_service(ServiceKind::Kv);
    let lab = Lab::up_with_daemon(&spec, Some(&fake)).unwrap();
    let mut lab = LabGuard::new(lab);
    let dir = Path::new(tandem_lab::STATE_DIR).join(&name);
    assert_eq!(lab.files_dir(), Some(dir.as_path()));
    assert_eq!(lab.daemon(), Some(fake.as_path()));

    // `up` returned once node 1 served the VIP.
    let status = lab.status();
    assert_eq!(status.leader, Some(1));
    assert_eq!(status.port, 6379);
    let roles: Vec<&str> = status.nodes.iter().map(|n| n.role.as_str()).collect();
    assert_eq!(roles, ["primary", "clone", "clone"]);
    assert!(status.nodes.iter().all(|n| n.alive && n.pid.is_some()));
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["leader"], 1);
    assert_eq!(json["nodes"][0]["role"], "primary");

    // The files the daemons were given.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join("cluster.key")), 0o600);
    assert_eq!(std::fs::read(dir.join("cluster.key")).unwrap().len(), 32);
    for id in 1..=3u32 {
        let config = dir.join(format!("node{id}.toml"));
        assert_eq!(lab.node_config_path(id).unwrap(), Some(config.clone()));
        assert_eq!(mode(&config), 0o600);
        assert_eq!(mode(&dir.join(format!("node{id}.d"))), 0o700);
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(text.contains(&format!("slot = {id}\n")), "{text}");
        let log = std::fs::read_to_string(dir.join(format!("node{id}.log"))).unwrap();
        assert!(
            log.contains(&format!(
                "fake daemon: slot {id} vip 198.18.0.100/24 on eth0 port 6379"
            )),
            "{log}"
        );
    }

    // stop / cont: the daemon hangs, then resumes.
    lab.stop(2).unwrap();
    wait_for("node 2 to be stopped", || role(&lab, 2) == "stopped");
    assert!(!lab.status().nodes[1].alive);
    lab.cont(2).unwrap();
    wait_for("node 2 to run again", || role(&lab, 2) == "clone");

    // crash: the daemon dies, the machine (link, other processes) lives on.
    let mut bystander = spawn_sleep(&mut lab, 3);
    let old = lab.status().nodes[2].pid.unwrap();
    let report = lab.crash(3).unwrap();
    assert_eq!(report.signalled, [old]);
    assert_eq!(role(&lab, 3), "down");
    assert!(!lab.status().nodes[2].alive);
    assert!(lab.conditions()[2].link_up);
    assert!(lab.pids(Some(3)).unwrap().contains(&bystander.id()));
    let report = lab.restart(3).unwrap();
    assert!(
        report.note.unwrap().contains("started daemon pid"),
        "restart"
    );
    assert!(
        bystander.try_wait().unwrap().is_some(),
        "a reboot kills all"
    );
    let new = lab.status().nodes[2].pid.unwrap();
    assert_ne!(new, old);
    wait_for("node 3 to rejoin", || role(&lab, 3) == "clone");

    // kill the primary: no leader; restart: it drops the stale VIP, and
    // (this fake being node 1) takes it again.
    lab.kill(1).unwrap();
    let status = lab.status();
    assert_eq!(status.leader, None);
    assert_eq!(status.nodes[0].role, "down");
    let report = lab.restart(1).unwrap();
    assert!(report.note.unwrap().contains("dropped the VIP"));
    wait_for_long("node 1 to serve again", || lab.status().leader == Some(1));
    let to = SocketAddrV4::new(lab.vip(), lab.port());
    wait_for_long("the client to reach the VIP", || {
        lab.probe(None, to, SHORT).unwrap() == Probe::Open
    });

    // down kills every daemon and removes the files.
    let pids: Vec<u32> = lab.status().nodes.iter().filter_map(|n| n.pid).collect();
    assert_eq!(pids.len(), 3);
    lab.down().unwrap();
    for pid in pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists() || proc_state(pid) == Some('Z'));
    }
    assert!(!dir.exists());
    assert!(lab_netns(&name).is_empty());
    assert!(!Path::new(&state_file(&name)).exists());
    std::fs::remove_file(fake).unwrap();
}

#[test]
fn a_daemon_that_exits_fails_up_with_its_log() {
    let name = unique("baddaemon");
    let failing = script("failing-daemon", FAILING_DAEMON);
    let spec = LabSpec::named(&name)
        .with_nodes(1)
        .with_service(ServiceKind::Echo);
    let started = Instant::now();
    let err = Lab::up_with_daemon(&spec, Some(&failing)).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(15), "it waited");
    assert!(
        matches!(err, LabError::DaemonExited { node: 1, .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("exit status: 3"), "{msg}");
    assert!(msg.contains("this daemon refuses to start"), "{msg}");
    assert!(msg.contains("node1.log"), "{msg}");
    // Nothing is left.
    assert!(lab_netns(&name).is_empty());
    assert!(!Path::new(&state_file(&name)).exists());
    assert!(!Path::new(tandem_lab::STATE_DIR).join(&name).exists());
    std::fs::remove_file(failing).unwrap();
}
