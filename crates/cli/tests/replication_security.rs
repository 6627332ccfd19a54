//! The replication port is safe to expose, and what crosses it is
//! unreadable (issue 10, items 4 and 5), on a real 3-node kv cluster under a
//! steady, checked client load:
//! - strangers flooding every node's replication port (connect floods,
//!   garbage, huge length headers, truncated and forged hellos, a replayed
//!   real frame) move nothing: same primary and term, no client error,
//!   peers connected and caught up, and every kind of junk counted;
//! - a capture of the node network holds replication traffic but never a
//!   value (or key) a client wrote, though the client side of the same
//!   capture does;
//! - the cluster key is rotated on the running cluster with
//!   `reload-keys` (old+new accepted, then the switch, then old dropped)
//!   with no client error and the primary in place; afterwards the old key
//!   is refused and a restarted node joins with the new one.
//!
//! Needs root, redis-tools and tcpdump (scripts/install-deps.sh); runs in
//! CI; fails, never skips.

mod common;

use common::{report, wait_healthy, Checkers, Tally};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_lab::{Lab, ServiceKind};
use tandem_node::admin::{request, AdminReply, AdminRequest};
use tandem_node::report::NodeReport;
use tandem_replica::envelope::{seal_hello, ClusterKey, Keyring};
use tandem_replica::NodeId;

const REPLICATION_PORT: u16 = 7100;

fn must_report(lab: &Lab, id: u32) -> NodeReport {
    report(lab, id).unwrap_or_else(|| panic!("node {id} answers its admin socket"))
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom");
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn replication_addr(lab: &Lab, id: u32) -> SocketAddr {
    SocketAddr::new(lab.node_addr(id).unwrap().into(), REPLICATION_PORT)
}

/// A hello frame (length prefix included).
fn hello_frame(keys: &Keyring, from: NodeId, to_slot: u16, counter: u64) -> Vec<u8> {
    let hello = seal_hello(keys, from, to_slot, counter);
    let mut frame = (hello.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&hello);
    frame
}

/// TCP payloads of a pcap file (Ethernet, IPv4): (source port, destination
/// port, payload).
fn tcp_payloads(pcap: &[u8]) -> Vec<(u16, u16, Vec<u8>)> {
    let mut out = Vec::new();
    // 24-byte file header, then (16-byte record header, frame)*.
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let len = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let Some(frame) = pcap.get(at + 16..at + 16 + len) else {
            break;
        };
        at += 16 + len;
        // Ethernet (14) + IPv4 (ihl) + TCP (data offset) + payload.
        if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
        if ip[9] != 6 || total < ihl + 20 {
            continue;
        }
        let tcp = &ip[ihl..total];
        let doff = usize::from(tcp[12] >> 4) * 4;
        if tcp.len() < doff {
            continue;
        }
        let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
        let dport = u16::from_be_bytes([tcp[2], tcp[3]]);
        out.push((sport, dport, tcp[doff..].to_vec()));
    }
    out
}

/// Runs tcpdump on node `id`'s interface for `seconds`, in the background;
/// returns the child and the file it writes.
fn start_capture(
    lab: &mut Lab,
    id: u32,
    seconds: u32,
    filter: &str,
    tag: &str,
) -> (std::process::Child, std::path::PathBuf) {
    let pcap = std::env::temp_dir().join(format!("tandem-sec-{tag}-{}.pcap", std::process::id()));
    let _ = std::fs::remove_file(&pcap);
    let iface = lab.node_interface().to_string();
    let mut command = lab.command(Some(id), "timeout").expect("command in a node");
    command
        .args([
            &seconds.to_string(),
            "tcpdump",
            "-i",
            &iface,
            "-U",
            "-s",
            "0",
        ])
        .args(["-w", pcap.to_str().unwrap(), filter])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let child = lab.spawn(Some(id), command).expect("tcpdump starts");
    // tcpdump needs a moment to open the interface.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pcap.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    (child, pcap)
}

fn finish_capture(mut child: std::process::Child, pcap: &Path) -> Vec<u8> {
    let _ = child.wait();
    let bytes = std::fs::read(pcap).expect("tcpdump wrote its capture");
    let _ = std::fs::remove_file(pcap);
    bytes
}

fn redis_cli(lab: &Lab, args: &[&str]) -> String {
    let vip = lab.vip().to_string();
    let mut argv = vec!["redis-cli", "-h", vip.as_str(), "-p", "6379"];
    argv.extend_from_slice(args);
    let out = lab.exec_output(None, &argv).expect("redis-cli runs");
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

fn assert_clean(tallies: &[Tally]) {
    for (i, t) in tallies.iter().enumerate() {
        assert!(t.errors.is_empty(), "client {i} saw errors: {:?}", t.errors);
        assert!(
            t.sets > 0 && t.incrs > 0,
            "client {i} made no progress: {t:?}"
        );
    }
}

/// A real replication frame the leader sent to `to`, from a capture on
/// `to` (it carries the length prefix and starts "TDM2").
fn capture_real_frame(lab: &mut Lab, leader: u32, to: u32) -> Vec<u8> {
    let filter = format!(
        "tcp and src host {} and dst port {REPLICATION_PORT}",
        lab.node_addr(leader).unwrap()
    );
    let (child, pcap) = start_capture(lab, to, 2, &filter, "replay");
    let bytes = finish_capture(child, &pcap);
    tcp_payloads(&bytes)
        .into_iter()
        .map(|(_, _, p)| p)
        .find(|p| {
            p.len() > 8
                && &p[4..8] == b"TDM2"
                && u32::from_be_bytes(p[..4].try_into().unwrap()) as usize == p.len() - 4
        })
        .expect("a whole replication frame in one segment")
}

/// The end of every node's log, for a failure's diagnosis.
fn dump_logs(lab: &Lab) {
    for id in lab.node_ids() {
        if let Ok(Some(path)) = lab.node_log_path(id) {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- node {id} log (last 40 lines) ---");
            for line in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{line}");
            }
        }
    }
}

#[test]
fn sec_strangers_on_the_replication_port_move_nothing() {
    let mut lab = common::cluster_of("sec", "s", ServiceKind::Kv);
    let leader = wait_healthy(&lab, "lab up");
    let ids = lab.node_ids();
    let follower = *ids.iter().find(|id| **id != leader).unwrap();
    let replayed = capture_real_frame(&mut lab, leader, follower);
    let before: Vec<NodeReport> = ids.iter().map(|id| must_report(&lab, *id)).collect();
    let targets: Vec<(u16, SocketAddr)> = ids
        .iter()
        .map(|id| (*id as u16, replication_addr(&lab, *id)))
        .collect();
    let wrong: Keyring = ClusterKey::from_secret(&random_bytes(32))
        .expect("32 random bytes")
        .into();

    // A baseline of the same load without the flood, for the log.
    let checkers = Checkers::start(&lab, 4);
    std::thread::sleep(Duration::from_secs(4));
    let baseline = checkers.stop();
    assert_clean(&baseline);
    let baseline: u64 = baseline.iter().map(|t| t.sets).sum();
    // The checkers count INCRs from 1 on their keys: start them afresh.
    assert_eq!(
        redis_cli(
            &lab,
            &["DEL", "counter:0", "counter:1", "counter:2", "counter:3"]
        ),
        "4"
    );

    let checkers = Checkers::start(&lab, 4);
    let flood_started = Instant::now();
    std::thread::sleep(Duration::from_secs(1));

    // The flood, from the client namespace, for 8 s: a new connection about
    // every millisecond (thousands in all, spread over the three nodes),
    // each one of six kinds of junk, the most recent 300 held open. Paced so
    // that it measures the nodes, not a 2-CPU machine starved by the
    // flooder itself.
    let garbage = random_bytes(1024);
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let client_ns = lab.client_netns().to_string();
        let stop = stop.clone();
        std::thread::spawn(move || {
            tandem_sys::netns::run_in(&client_ns, move || {
                let mut held: VecDeque<TcpStream> = VecDeque::new();
                let mut sent = [0u64; 6];
                let started = Instant::now();
                let mut i = 0u64;
                while started.elapsed() < Duration::from_secs(8) && !stop.load(Ordering::Relaxed) {
                    let (slot, addr) = targets[(i as usize) % targets.len()];
                    let kind = ((i / targets.len() as u64) % 6) as usize;
                    i += 1;
                    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                    else {
                        continue;
                    };
                    let junk: Vec<u8> = match kind {
                        // Connect and say nothing.
                        0 => Vec::new(),
                        // Garbage.
                        1 => garbage.clone(),
                        // A huge length header, then a little of it.
                        2 => {
                            let mut b = 0xffff_fff0u32.to_be_bytes().to_vec();
                            b.extend_from_slice(&[0x55; 100]);
                            b
                        }
                        // A hello cut short.
                        3 => hello_frame(&wrong, NodeId::new(1, 1), slot, i)[..20].to_vec(),
                        // A well-formed hello under another key, claiming a member.
                        4 => hello_frame(
                            &wrong,
                            NodeId::new(if slot == 1 { 2 } else { 1 }, 1 << 20),
                            slot,
                            i,
                        ),
                        // A real frame, replayed as the first frame.
                        _ => replayed.clone(),
                    };
                    if s.write_all(&junk).is_ok() {
                        sent[kind] += 1;
                    }
                    held.push_back(s);
                    if held.len() > 300 {
                        held.pop_front();
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                sent
            })
            .expect("client namespace")
        })
    };
    let sent = flood.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    // Let the hello timeouts (2 s) fire for the last held strangers.
    std::thread::sleep(Duration::from_secs(3));
    let tallies = checkers.stop();
    let loaded = flood_started.elapsed();
    eprintln!("flood sent {sent:?} (silent, garbage, huge, truncated, forged, replayed)");
    assert!(sent.iter().all(|n| *n >= 20), "the flood ran: {sent:?}");

    assert_clean(&tallies);
    let sets: u64 = tallies.iter().map(|t| t.sets).sum();
    eprintln!(
        "clients: {:.0} SET/GET pairs/s without the flood, {:.0}/s with it (ratio {:.2})",
        baseline as f64 / 4.0,
        sets as f64 / loaded.as_secs_f64(),
        (sets as f64 / loaded.as_secs_f64()) / (baseline as f64 / 4.0)
    );
    let after_leader = wait_healthy(&lab, "after the flood");
    if after_leader != leader {
        dump_logs(&lab);
    }
    assert_eq!(after_leader, leader, "the primary moved");
    for (b, id) in before.iter().zip(&ids) {
        let r = must_report(&lab, *id);
        assert_eq!(r.incarnation, b.incarnation, "node {id} restarted");
        if r.term != b.term {
            dump_logs(&lab);
        }
        assert_eq!(r.term, b.term, "node {id}: an election happened");
        assert!(
            r.peers.iter().all(|p| p.connected),
            "node {id}: a peer link is down: {:?}",
            r.peers
        );
        let c = &r.counters;
        eprintln!("node {id}: {c:?}");
        assert!(
            c.hellos_malformed > b.counters.hellos_malformed,
            "node {id}: {c:?}"
        );
        assert!(
            c.hellos_forged > b.counters.hellos_forged,
            "node {id}: {c:?}"
        );
        assert!(
            c.hello_timeouts + c.strangers_evicted
                > b.counters.hello_timeouts + b.counters.strangers_evicted,
            "node {id}: {c:?}"
        );
        // Nothing from a stranger reached the envelope layer.
        assert_eq!(
            c.auth_rejected, b.counters.auth_rejected,
            "node {id}: {c:?}"
        );
    }
    let hashes = common::settled_hashes(&lab);
    assert!(
        hashes.iter().all(|h| h.2 == hashes[0].2),
        "replicas diverged: {hashes:?}"
    );
}

#[test]
fn sec_no_client_byte_in_clear_on_the_node_network() {
    let mut lab = common::cluster_of("sec", "c", ServiceKind::Kv);
    let leader = wait_healthy(&lab, "lab up");
    let key = format!("sec-key-{}", hex(&random_bytes(6)));
    let value = format!("sec-value-{}", hex(&random_bytes(24)));
    // The primary's interface carries both the client traffic (to the VIP)
    // and all of its replication traffic.
    let (child, pcap) = start_capture(
        &mut lab,
        leader,
        5,
        &format!("tcp port {REPLICATION_PORT} or tcp port 6379"),
        "clear",
    );
    assert_eq!(redis_cli(&lab, &["SET", &key, &value]), "OK");
    assert_eq!(redis_cli(&lab, &["GET", &key]), value);
    for i in 0..20 {
        let k = format!("{key}-{i}");
        assert_eq!(redis_cli(&lab, &["SET", &k, &value]), "OK");
    }
    let bytes = finish_capture(child, &pcap);
    let payloads = tcp_payloads(&bytes);
    let of_port = |port: u16| -> Vec<u8> {
        payloads
            .iter()
            .filter(|(s, d, _)| *s == port || *d == port)
            .flat_map(|(_, _, p)| p.iter().copied())
            .collect()
    };
    let client = of_port(6379);
    let replication = of_port(REPLICATION_PORT);
    eprintln!(
        "captured {} packets: {} client bytes, {} replication bytes",
        payloads.len(),
        client.len(),
        replication.len()
    );
    // The capture works: the client side holds the value in clear.
    assert!(
        contains(&client, value.as_bytes()),
        "the capture missed the client's SET"
    );
    assert!(
        replication.len() > 4096 && contains(&replication, b"TDM2"),
        "the capture holds replication traffic ({} bytes)",
        replication.len()
    );
    assert!(
        !contains(&replication, value.as_bytes()),
        "a client's value crossed the node network in clear"
    );
    assert!(
        !contains(&replication, key.as_bytes()),
        "a client's key crossed the node network in clear"
    );
    assert!(!contains(&replication, b"sec-value-"));
}

/// Asks every node to reload its keys, one after the other with a pause
/// (so the cluster runs mixed for a while), checking each reply names
/// `expect`.
fn reload_all(lab: &Lab, expect: &str) {
    for id in lab.node_ids() {
        let path = lab.node_admin_socket(id).unwrap().unwrap();
        match request(&path, &AdminRequest::ReloadKeys, Duration::from_secs(5)) {
            Ok(AdminReply::Done { message }) => {
                assert!(
                    message.contains(expect),
                    "node {id}: {message} (expected {expect})"
                )
            }
            other => panic!("node {id}: reload-keys answered {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(700));
    }
}

fn write_private(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("key file");
    f.write_all(bytes).unwrap();
}

#[test]
fn sec_key_rotation_without_an_outage() {
    let mut lab = common::cluster_of("sec", "r", ServiceKind::Kv);
    let leader = wait_healthy(&lab, "lab up");
    let ids = lab.node_ids();
    let follower = *ids.iter().find(|id| **id != leader).unwrap();
    let term = must_report(&lab, leader).term;
    let dir = lab
        .files_dir()
        .expect("a daemon lab has files")
        .to_path_buf();
    let key_file = dir.join("cluster.key");
    let rotation_file = dir.join("cluster.key.rotation");
    let old = std::fs::read(&key_file).unwrap();
    let new = random_bytes(32);
    let old_key = ClusterKey::from_secret(&old).unwrap();
    let new_key = ClusterKey::from_secret(&new).unwrap();
    let (old_fp, new_fp) = (old_key.fingerprint(), new_key.fingerprint());
    assert_ne!(old_fp, new_fp);

    let checkers = Checkers::start(&lab, 4);
    std::thread::sleep(Duration::from_secs(1));
    // 1. Every node accepts the new key too (still sends with the old).
    write_private(&rotation_file, &new);
    reload_all(&lab, &format!("{old_fp}, accepting {new_fp}"));
    // 2. The switch: send with the new key, still accept the old one from
    //    nodes not switched yet.
    write_private(&key_file, &new);
    write_private(&rotation_file, &old);
    reload_all(&lab, &format!("{new_fp}, accepting {old_fp}"));
    // 3. The old key is dropped.
    std::fs::remove_file(&rotation_file).unwrap();
    reload_all(&lab, &format!("sending with key {new_fp} ("));
    std::thread::sleep(Duration::from_secs(1));
    // No election during the rotation: the same primary, in the same term.
    let during = must_report(&lab, leader);
    if during.term != term || during.role != "primary" {
        dump_logs(&lab);
    }
    assert_eq!(
        (during.role.as_str(), during.term),
        ("primary", term),
        "the rotation caused an election"
    );
    for id in &ids {
        let c = must_report(&lab, *id).counters;
        assert_eq!(
            (c.auth_rejected, c.hellos_forged),
            (0, 0),
            "node {id} refused a peer's message during the rotation: {c:?}"
        );
    }

    // The old key is refused now.
    let sender = must_report(&lab, leader);
    let before = must_report(&lab, follower).counters.hellos_forged;
    let stale = hello_frame(
        &old_key.into(),
        NodeId::new(sender.slot, sender.incarnation),
        follower as u16,
        1 << 40,
    );
    let to = replication_addr(&lab, follower);
    lab.run_in(None, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).unwrap();
        s.write_all(&stale).unwrap();
        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
        let _ = s.read_to_end(&mut Vec::new());
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while must_report(&lab, follower).counters.hellos_forged == before {
        assert!(
            Instant::now() < deadline,
            "a hello under the old key was not refused"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A restarted follower, which only knows the new key, connects and joins.
    lab.restart(follower).expect("restart a follower");
    let after_leader = wait_healthy(&lab, "after restarting a follower with the new key");
    let tallies = checkers.stop();
    assert_clean(&tallies);
    assert_eq!(after_leader, leader, "the primary moved");
    let hashes = common::settled_hashes(&lab);
    assert!(
        hashes.iter().all(|h| h.2 == hashes[0].2),
        "replicas diverged: {hashes:?}"
    );
}
