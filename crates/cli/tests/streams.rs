//! Streams through failover and planned moves, in a 3-node lab:
//!
//! - a bulk stream (~20 MB) through `echo` survives a kill and a crash of
//!   the leader mid-transfer: byte-exact both ways, no error, no RST;
//! - `tandem migrate` with 1,000 open kv connections (20 of them busy with
//!   the consistency checker): every one survives; then `tandem drain` moves
//!   the primary off a node that stays a clone even when migrated to, and
//!   `undrain` lets it back;
//! - half-closed connections survive a kill of the leader: the client's FIN
//!   sent (echo still sending), the server's FIN sent (kv after `QUIT`, the
//!   client still sending), and handshakes in progress at the kill.
//!
//! Needs root; runs in CI; fails, never skips.

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
mod common;

use common::*;
use tandem_lab::{Lab, LabGuard, ServiceKind};
use tandem_moves::scenario::pattern_byte;
use tandem_node::admin::{request, AdminReply, AdminRequest};
use tandem_node::report::NodeReport;

fn cluster(case: &str, kind: ServiceKind) -> LabGuard {
    // Many sockets in the client namespace; the daemons inherit the limit.
    tandem_sys::limits::raise_nofile(20_000).expect("raising RLIMIT_NOFILE");
    cluster_of("st", case, kind)
}

fn node_report(lab: &Lab, id: u32) -> Option<NodeReport> {
    let path = lab.node_admin_socket(id).ok()??;
    match request(&path, &AdminRequest::Status, Duration::from_secs(2)) {
        Ok(AdminReply::Status(report)) => Some(*report),
        _ => None,
    }
}

/// Prints the notable lines of every node's log (evidence for a failure;
/// the lab and its logs go away when the guard drops).
fn dump_logs(lab: &Lab) {
    // The sockets of the service's port, as the client's kernel and each
    // node's see them now.
    let port = lab.port().to_string();
    let nodes = lab.node_ids();
    for node in std::iter::once(None).chain(nodes.iter().map(|id| Some(*id))) {
        let filter = format!("( sport = :{port} or dport = :{port} )");
        if let Ok(out) = lab.exec_output(node, &["ss", "-tnoieH", &filter]) {
            let text = String::from_utf8_lossy(&out.stdout);
            for line in text.lines().take(12) {
                eprintln!(
                    "ss in {:?}: {line}",
                    node.map_or("client".to_string(), |n| format!("node {n}"))
                );
            }
        }
    }
    for id in lab.node_ids() {
        if let Ok(Some(path)) = lab.node_log_path(id) {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            let keep = Path::new("/tmp/tandem-streams-logs");
            let _ = std::fs::create_dir_all(keep);
            let copy = keep.join(format!("{}-node{id}.log", lab.name()));
            if std::fs::write(&copy, &log).is_ok() {
                eprintln!("node {id}'s whole log: {}", copy.display());
            }
            for line in log.lines().filter(|l| {
                l.contains("WARN")
                    || l.contains("ERROR")
                    || l.contains("serving")
                    || l.contains("stepped")
                    || l.contains("raft role")
                    || l.contains("rebuil")
                    || l.contains("restor")
                    || l.contains("migration")
                    || l.contains("drain")
                    || l.contains("handing")
            }) {
                eprintln!("node {id}: {line}");
            }
        }
    }
}

/// Asserts `cond`, printing the nodes' logs first when it fails.
macro_rules! check {
    ($lab:expr, $cond:expr, $($msg:tt)+) => {
        if !$cond {
            dump_logs(&$lab);
            panic!($($msg)+);
        }
    };
}

fn addr_of(lab: &Lab) -> SocketAddr {
    SocketAddr::new(lab.vip().into(), lab.port())
}

/// One connection from the client namespace.
fn connect(lab: &Lab, recv_buffer: Option<usize>) -> TcpStream {
    let addr = addr_of(lab);
    lab.run_in(None, move || -> std::io::Result<TcpStream> {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        if let Some(bytes) = recv_buffer {
            socket.set_recv_buffer_size(bytes)?;
        }
        socket.connect_timeout(&addr.into(), Duration::from_secs(5))?;
        Ok(socket.into())
    })
    .expect("client namespace")
    .expect("connect to the service")
}

/// Client neighbour entries younger than Linux's 1 s lock time ignore the
/// first gratuitous ARP; real connections are older than that.
fn settle() {
    std::thread::sleep(Duration::from_millis(1200));
}

/// Waits until a primary other than `old` serves; returns it and how long
/// that took.
fn new_leader(lab: &Lab, old: u32) -> (u32, Duration) {
    let started = Instant::now();
    loop {
        if let Some(l) = leader(lab).filter(|l| *l != old) {
            return (l, started.elapsed());
        }
        check!(
            lab,
            started.elapsed() < Duration::from_secs(15),
            "no new primary within 15 s of losing node {old}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for(lab: &Lab, what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        check!(
            lab,
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_no_rst(lab: &Lab, before: u64) {
    let now = lab.client_rst_count().unwrap();
    check!(
        lab,
        now == before,
        "the client namespace received {} RST segment(s)",
        now - before
    );
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill,
    Crash,
}

fn fail(lab: &mut Lab, fault: Fault, id: u32) {
    match fault {
        Fault::Kill => lab.kill(id).expect("kill the leader"),
        Fault::Crash => lab.crash(id).expect("crash the leader"),
    };
}

// ---------------------------------------------------------------------------
// 5. A bulk stream through echo across a failure of the leader.

const BULK: u64 = 20 * 1024 * 1024;
const CHUNK: u64 = 64 * 1024;

fn bulk_stream_survives(case: &str, fault: Fault) {
    let mut lab = cluster(case, ServiceKind::Echo);
    let first = wait_healthy(&lab, "start");
    let rst_before = lab.client_rst_count().unwrap();
    let stream = connect(&lab, None);
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    settle();

    let sent = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut writer = stream.try_clone().unwrap();
    let progress = sent.clone();
    let sender = std::thread::spawn(move || -> Result<_, String> {
        let mut hash = Sha256::new();
        let mut at = 0;
        while at < BULK {
            let chunk: Vec<u8> = (at..at + CHUNK).map(|i| pattern_byte(5, i)).collect();
            writer
                .write_all(&chunk)
                .map_err(|e| format!("write at byte {at}: {e}"))?;
            hash.update(&chunk);
            at += CHUNK;
            progress.store(at, Ordering::Relaxed);
        }
        writer
            .shutdown(Shutdown::Write)
            .map_err(|e| format!("shutdown: {e}"))?;
        Ok(hash.finalize())
    });
    let mut reader = stream.try_clone().unwrap();
    let progress = received.clone();
    let receiver = std::thread::spawn(move || -> Result<_, String> {
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| format!("read after {total} bytes: {e}"))?;
            if n == 0 {
                break;
            }
            for (k, byte) in buf[..n].iter().enumerate() {
                let i = total + k as u64;
                if *byte != pattern_byte(5, i) {
                    return Err(format!("the echo differs at byte {i}"));
                }
            }
            hash.update(&buf[..n]);
            total += n as u64;
            progress.store(total, Ordering::Relaxed);
        }
        Ok((total, hash.finalize()))
    });

    wait_for(&lab, "30% was sent", Duration::from_secs(30), || {
        sent.load(Ordering::Relaxed) >= BULK * 3 / 10
    });
    let sent_at_fault = sent.load(Ordering::Relaxed);
    let received_at_fault = received.load(Ordering::Relaxed);
    fail(&mut lab, fault, first);
    let (second, pause) = new_leader(&lab, first);

    let sent_hash = sender.join().unwrap();
    let received_result = receiver.join().unwrap();
    let elapsed = started.elapsed();
    eprintln!(
        "{fault:?} of node {first} at {sent_at_fault} bytes sent, {received_at_fault} echoed; \
         node {second} primary after {pause:?}; {BULK} bytes each way in {elapsed:?}"
    );
    check!(
        lab,
        sent_at_fault < BULK && received_at_fault < BULK,
        "the transfer was over before the {fault:?}"
    );
    let sent_hash = match sent_hash {
        Ok(h) => h,
        Err(e) => {
            dump_logs(&lab);
            panic!("the sender failed: {e}");
        }
    };
    let (total, received_hash) = match received_result {
        Ok(r) => r,
        Err(e) => {
            dump_logs(&lab);
            panic!("the receiver failed: {e}");
        }
    };
    check!(
        lab,
        total == BULK,
        "the echo stream has {total} bytes, not {BULK}"
    );
    check!(
        lab,
        sent_hash == received_hash,
        "the echo stream's SHA-256 differs from what was sent"
    );
    assert_no_rst(&lab, rst_before);
}

#[test]
fn bulk_echo_stream_survives_a_kill_of_the_leader() {
    bulk_stream_survives("a", Fault::Kill);
}

#[test]
fn bulk_echo_stream_survives_a_crash_of_the_leader() {
    bulk_stream_survives("b", Fault::Crash);
}

// ---------------------------------------------------------------------------
// 6. migrate with 1,000 open connections; drain and undrain.

const OPEN: usize = 1000;
const BUSY: usize = 20;

fn tandem(args: &[&str]) -> std::process::Output {
    std::process::Command::new(Path::new(env!("CARGO_BIN_EXE_tandem")))
        .args(args)
        .output()
        .expect("run tandem")
}

fn tandem_ok(lab: &Lab, args: &[&str]) -> String {
    let out = tandem(args);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    check!(
        lab,
        out.status.success(),
        "tandem {args:?} failed ({}): {stdout}{stderr}",
        out.status
    );
    eprintln!(
        "tandem {}: {}{}",
        args.join(" "),
        stderr.trim(),
        stdout.trim()
    );
    stdout
}

/// A PING on every idle connection (pipelined: all written, then all read),
/// each answered +PONG on the same socket.
fn ping_all(lab: &Lab, conns: &mut [TcpStream], when: &str) {
    let mut failures = Vec::new();
    for (k, c) in conns.iter_mut().enumerate() {
        if let Err(e) = c.write_all(b"*1\r\n$4\r\nPING\r\n") {
            failures.push(format!("connection {k}: write: {e}"));
        }
    }
    for (k, c) in conns.iter_mut().enumerate() {
        let mut reply = [0u8; 7];
        match c.read_exact(&mut reply) {
            Ok(()) if &reply == b"+PONG\r\n" => {}
            Ok(()) => failures.push(format!(
                "connection {k}: {:?}",
                String::from_utf8_lossy(&reply)
            )),
            Err(e) => failures.push(format!("connection {k}: read: {e}")),
        }
    }
    check!(
        lab,
        failures.is_empty(),
        "{when}: {} of {} idle connections failed: {:?}",
        failures.len(),
        conns.len(),
        &failures[..failures.len().min(10)]
    );
}

fn role_of(lab: &Lab, id: u32) -> Option<(String, bool)> {
    node_report(lab, id).map(|r| (r.role, r.draining))
}

#[test]
fn migrate_with_a_thousand_connections_then_drain_and_undrain() {
    let lab = cluster("c", ServiceKind::Kv);
    let first = wait_healthy(&lab, "start");
    let name = lab.name().to_string();
    let rst_before = lab.client_rst_count().unwrap();
    let addr = addr_of(&lab);

    let idle_count = OPEN - BUSY;
    let opened = Instant::now();
    let mut idle: Vec<TcpStream> = lab
        .run_in(None, move || {
            (0..idle_count)
                .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(10)))
                .collect::<std::io::Result<Vec<_>>>()
        })
        .expect("client namespace")
        .expect("open the idle connections");
    for c in &idle {
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    }
    ping_all(&lab, &mut idle, "before the move");
    eprintln!(
        "{idle_count} idle connections open in {:?}",
        opened.elapsed()
    );

    let checkers = Checkers::start(&lab, BUSY);
    settle();

    // The move, with every connection.
    let target = lab.node_ids().into_iter().find(|id| *id != first).unwrap();
    let to = target.to_string();
    let out = tandem_ok(&lab, &["migrate", "kv", "--to", &to, "--lab", &name]);
    check!(
        lab,
        out.contains(&format!("moved from node {first} to node {target} in")),
        "migrate reported {out:?}"
    );
    println!("migration of {OPEN} connections: {}", out.trim());
    // `migrate` returns once the target serves; for a moment after, the old
    // primary still holds the VIP (silent, its lease revoked) and the lab's
    // single-primary view may name no one: wait for it to settle.
    wait_for(
        &lab,
        &format!("node {target} the only primary after the migration"),
        Duration::from_secs(3),
        || leader(&lab) == Some(target),
    );
    std::thread::sleep(Duration::from_millis(300));
    ping_all(&lab, &mut idle, "after the migration");

    // Drain the primary: the role moves off it and it stays a clone.
    let drain_started = Instant::now();
    tandem_ok(&lab, &["drain", &to, "--lab", &name]);
    wait_for(
        &lab,
        "the drained node's primary role moved",
        Duration::from_secs(10),
        || leader(&lab).is_some_and(|l| l != target),
    );
    eprintln!("drain moved the primary in {:?}", drain_started.elapsed());
    let third = leader(&lab).unwrap();
    let state = role_of(&lab, target);
    check!(
        lab,
        state == Some(("clone".to_string(), true)),
        "the drained node reports {state:?}"
    );

    // A migration back to the drained node does not leave it primary.
    let out = tandem(&["migrate", "kv", "--to", &to, "--lab", &name]);
    eprintln!(
        "migrate to the drained node: {} {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    // It must be off the primary role within a second and stay off.
    let after = Instant::now();
    let mut primary_seen_for = Duration::ZERO;
    let mut last_primary_at = None;
    while after.elapsed() < Duration::from_secs(3) {
        if let Some((role, draining)) = role_of(&lab, target) {
            check!(
                lab,
                draining,
                "node {target} forgot it is drained (role {role})"
            );
            if role == "primary" || role == "primary-elect" {
                last_primary_at = Some(after.elapsed());
                primary_seen_for = after.elapsed();
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    check!(
        lab,
        primary_seen_for < Duration::from_secs(1),
        "the drained node was still primary {primary_seen_for:?} after the migration to it \
         (last seen {last_primary_at:?})"
    );
    let state = role_of(&lab, target);
    check!(
        lab,
        state == Some(("clone".to_string(), true)),
        "the drained node reports {state:?} after a migration to it"
    );
    let now = leader(&lab);
    check!(
        lab,
        now.is_some_and(|l| l != target),
        "no primary other than the drained node: {now:?} (was {third})"
    );
    ping_all(&lab, &mut idle, "after the migration to the drained node");

    // Undrain, then the migration to it works.
    tandem_ok(&lab, &["undrain", &to, "--lab", &name]);
    let state = role_of(&lab, target);
    check!(
        lab,
        state.as_ref().is_some_and(|s| !s.1),
        "the undrained node reports {state:?}"
    );
    let out = tandem_ok(&lab, &["migrate", "kv", "--to", &to, "--lab", &name]);
    check!(
        lab,
        out.contains(&format!("to node {target} in")),
        "migrate after undrain: {out:?}"
    );
    wait_for(
        &lab,
        &format!("node {target} the only primary after undrain and migration"),
        Duration::from_secs(3),
        || leader(&lab) == Some(target),
    );
    std::thread::sleep(Duration::from_millis(300));
    ping_all(&lab, &mut idle, "after undrain and the migration back");

    std::thread::sleep(Duration::from_millis(500));
    let tallies = checkers.stop();
    let failed: Vec<String> = tallies
        .iter()
        .enumerate()
        .filter(|(_, t)| !t.errors.is_empty() || t.incrs < 10)
        .map(|(id, t)| format!("checker {id} after {} INCRs: {:?}", t.incrs, t.errors))
        .collect();
    check!(lab, failed.is_empty(), "{failed:#?}");
    eprintln!(
        "{} INCRs checked",
        tallies.iter().map(|t| t.incrs).sum::<u64>()
    );
    assert_no_rst(&lab, rst_before);
    let hashes = settled_hashes(&lab);
    check!(
        lab,
        hashes.iter().all(|h| h.2 == hashes[0].2),
        "replicas diverged: {hashes:?}"
    );
}

// ---------------------------------------------------------------------------
// 7. Half-closed connections and handshakes across a kill of the leader.

/// (a) The client has sent its FIN; the echo still owes it bytes (the
/// client's small receive buffer holds them back at the server) when the
/// leader dies: every byte comes back, then end-of-file.
#[test]
fn client_half_close_survives_a_kill_of_the_leader() {
    const LEN: u64 = 1024 * 1024;
    let mut lab = cluster("d", ServiceKind::Echo);
    let first = wait_healthy(&lab, "start");
    let rst_before = lab.client_rst_count().unwrap();
    let stream = connect(&lab, Some(16 * 1024));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    settle();

    let mut writer = stream.try_clone().unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let bytes: Vec<u8> = (0..LEN).map(|i| pattern_byte(7, i)).collect();
        let result = writer
            .write_all(&bytes)
            .and_then(|()| writer.shutdown(Shutdown::Write));
        let _ = done_tx.send(result);
    });
    // The client's FIN must be out before the kill.
    match done_rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("sending {LEN} bytes and the FIN failed: {e}"),
        Err(_) => {
            dump_logs(&lab);
            panic!("sending {LEN} bytes without reading did not finish in 20 s");
        }
    }
    wait_for(
        &lab,
        "the client's bytes and FIN were acknowledged",
        Duration::from_secs(10),
        || {
            tandem_sys::sockinfo::queue_sizes(stream.as_fd())
                .unwrap()
                .unacknowledged
                == 0
        },
    );
    std::thread::sleep(Duration::from_millis(200));
    let unread = tandem_sys::sockinfo::queue_sizes(stream.as_fd())
        .unwrap()
        .unread as u64;
    check!(
        lab,
        unread < LEN,
        "the whole echo arrived before the kill ({unread} bytes unread)"
    );
    lab.kill(first).expect("kill the leader");
    let (second, pause) = new_leader(&lab, first);
    eprintln!(
        "kill of node {first} with {unread} of {LEN} echoed bytes at the client; \
         node {second} primary after {pause:?}"
    );

    let mut reader = stream;
    let mut got = vec![0u8; LEN as usize];
    if let Err(e) = reader.read_exact(&mut got) {
        dump_logs(&lab);
        panic!("reading the echo failed: {e}");
    }
    if let Some(i) = (0..LEN).find(|i| got[*i as usize] != pattern_byte(7, *i)) {
        panic!("the echo differs at byte {i}");
    }
    let mut more = [0u8; 16];
    match reader.read(&mut more) {
        Ok(0) => {}
        Ok(n) => panic!("{n} bytes after the whole echo"),
        Err(e) => {
            dump_logs(&lab);
            panic!("no end-of-file after the echo: {e}");
        }
    }
    assert!(
        matches!(reader.read(&mut more), Ok(0)),
        "a second read after end-of-file did not see end-of-file again"
    );
    // The client's side is done too: its socket leaves the connection
    // without a reset (TIME_WAIT once the service's FIN came).
    let state = tandem_sys::sockinfo::tcp_counters(reader.as_fd())
        .unwrap()
        .state;
    check!(
        lab,
        state == TCP_TIME_WAIT || state == TCP_CLOSE,
        "the client's socket is in state {state} after both FINs"
    );
    assert_no_rst(&lab, rst_before);
}

const TCP_TIME_WAIT: u8 = 6;
const TCP_CLOSE: u8 = 7;
const TCP_CLOSE_WAIT: u8 = 8;

/// (b) kv answers QUIT and closes its side; the client keeps its socket and
/// goes on sending across a kill of the leader: every byte is acknowledged
/// (by the new primary too), no reset, end-of-file seen once and nothing
/// after it; the client's own close then ends the connection cleanly.
#[test]
fn server_half_close_survives_a_kill_of_the_leader() {
    let mut lab = cluster("e", ServiceKind::Kv);
    let first = wait_healthy(&lab, "start");
    let rst_before = lab.client_rst_count().unwrap();
    let mut stream = connect(&lab, None);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    settle();

    stream.write_all(&command(&["QUIT"])).unwrap();
    let mut reply = [0u8; 5];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"+OK\r\n");
    let mut buf = [0u8; 64];
    assert_eq!(
        stream.read(&mut buf).unwrap(),
        0,
        "no end-of-file after QUIT"
    );
    let state = tandem_sys::sockinfo::tcp_counters(stream.as_fd())
        .unwrap()
        .state;
    assert_eq!(state, TCP_CLOSE_WAIT, "the client's socket after the FIN");

    let acked = |stream: &TcpStream| {
        tandem_sys::sockinfo::queue_sizes(stream.as_fd())
            .unwrap()
            .unacknowledged
            == 0
    };
    // The client still sends after the server's FIN.
    let ping = command(&["PING"]);
    for _ in 0..3 {
        stream.write_all(&ping).unwrap();
    }
    wait_for(
        &lab,
        "the old primary acknowledged the bytes sent after its FIN",
        Duration::from_secs(10),
        || acked(&stream),
    );
    lab.kill(first).expect("kill the leader");
    // Sent while no primary serves: retransmitted to the new one.
    for _ in 0..3 {
        stream.write_all(&ping).unwrap();
    }
    let (second, pause) = new_leader(&lab, first);
    eprintln!("kill of node {first}; node {second} primary after {pause:?}");
    for _ in 0..3 {
        stream.write_all(&ping).unwrap();
    }
    wait_for(
        &lab,
        "the new primary acknowledged the bytes sent after the server's FIN",
        Duration::from_secs(15),
        || acked(&stream),
    );
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!(
            "{n} bytes after end-of-file: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => {
            dump_logs(&lab);
            panic!("the read after end-of-file failed: {e}");
        }
    }
    let state = tandem_sys::sockinfo::tcp_counters(stream.as_fd())
        .unwrap()
        .state;
    check!(
        lab,
        state == TCP_CLOSE_WAIT,
        "the client's socket is in state {state}, not CLOSE_WAIT, after the kill"
    );
    assert_no_rst(&lab, rst_before);

    // The client closes its side: LAST_ACK, then closed once the new
    // primary acknowledges the FIN.
    stream.shutdown(Shutdown::Write).unwrap();
    wait_for(
        &lab,
        "the client's FIN was acknowledged",
        Duration::from_secs(10),
        || {
            tandem_sys::sockinfo::tcp_counters(stream.as_fd())
                .unwrap()
                .state
                == TCP_CLOSE
        },
    );
    assert_no_rst(&lab, rst_before);
    // And the service still serves new clients.
    let mut fresh = connect(&lab, None);
    fresh
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    fresh.write_all(&ping).unwrap();
    let mut pong = [0u8; 7];
    fresh.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"+PONG\r\n");
    assert_no_rst(&lab, rst_before);
}

/// One connect attempt of the handshake storm.
struct Attempt {
    started: Instant,
    finished: Instant,
    result: Result<TcpStream, String>,
}

/// (c) Connections being opened in a tight loop while the leader dies:
/// every connect completes (some after a retransmitted SYN), none is
/// refused or reset, and every one of them then answers PING with PONG.
#[test]
fn handshakes_in_progress_survive_a_kill_of_the_leader() {
    const WORKERS: usize = 16;
    const PER_WORKER: usize = 400;
    let mut lab = cluster("f", ServiceKind::Kv);
    let first = wait_healthy(&lab, "start");
    let rst_before = lab.client_rst_count().unwrap();
    let addr = addr_of(&lab);
    let mut warm = connect(&lab, None);
    warm.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    ping_all(&lab, std::slice::from_mut(&mut warm), "warm-up");
    settle();

    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(Mutex::new(Vec::<Attempt>::new()));
    let client_ns = lab.client_netns().to_string();
    let storm = {
        let stop = stop.clone();
        let attempts = attempts.clone();
        std::thread::spawn(move || {
            tandem_sys::netns::run_in(&client_ns, move || {
                let handles: Vec<_> = (0..WORKERS)
                    .map(|w| {
                        let stop = stop.clone();
                        let attempts = attempts.clone();
                        std::thread::spawn(move || {
                            let mut n = 0;
                            // Bounded, for the file descriptors.
                            while !stop.load(Ordering::Relaxed) && n < PER_WORKER {
                                let started = Instant::now();
                                let mut result =
                                    TcpStream::connect_timeout(&addr, Duration::from_secs(20))
                                        .map_err(|e| format!("connect: {e}"));
                                // Half the workers ask at once, half later.
                                if w % 2 == 0 {
                                    result = result.and_then(|mut s| {
                                        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                                        let mut r = [0u8; 7];
                                        s.write_all(b"*1\r\n$4\r\nPING\r\n")
                                            .and_then(|()| s.read_exact(&mut r))
                                            .map_err(|e| format!("first PING: {e}"))?;
                                        if &r != b"+PONG\r\n" {
                                            return Err(format!("first PING: {r:?}"));
                                        }
                                        Ok(s)
                                    });
                                }
                                let failed = result.is_err();
                                attempts.lock().unwrap().push(Attempt {
                                    started,
                                    finished: Instant::now(),
                                    result,
                                });
                                n += 1;
                                if failed {
                                    break;
                                }
                            }
                        })
                    })
                    .collect();
                for h in handles {
                    h.join().unwrap();
                }
            })
            .expect("client namespace")
        })
    };
    // The storm runs a little before the kill, then through it.
    wait_for(&lab, "the storm started", Duration::from_secs(10), || {
        attempts.lock().unwrap().len() >= WORKERS * 4
    });
    let before_kill = attempts.lock().unwrap().len();
    let killed_at = Instant::now();
    lab.kill(first).expect("kill the leader");
    let (second, pause) = new_leader(&lab, first);
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    storm.join().unwrap();
    let attempts = std::mem::take(&mut *attempts.lock().unwrap());

    let spanning = attempts
        .iter()
        .filter(|a| a.started < killed_at && a.finished > killed_at)
        .count();
    let after = attempts.iter().filter(|a| a.started > killed_at).count();
    let slowest = attempts
        .iter()
        .map(|a| a.finished - a.started)
        .max()
        .unwrap_or_default();
    eprintln!(
        "{} connects ({before_kill} before the kill of node {first}, {spanning} spanning it, \
         {after} after); node {second} primary after {pause:?}; slowest connect {slowest:?}",
        attempts.len()
    );
    let errors: Vec<String> = attempts
        .iter()
        .filter_map(|a| a.result.as_ref().err().cloned())
        .collect();
    check!(
        lab,
        errors.is_empty(),
        "{} of {} connects failed: {:?}",
        errors.len(),
        attempts.len(),
        &errors[..errors.len().min(10)]
    );
    check!(
        lab,
        spanning >= 1,
        "no connect was in progress at the kill ({} attempts)",
        attempts.len()
    );
    check!(lab, after >= 1, "no connect was started after the kill");
    let mut conns: Vec<TcpStream> = attempts.into_iter().filter_map(|a| a.result.ok()).collect();
    for c in &conns {
        c.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    }
    conns.push(warm);
    ping_all(&lab, &mut conns, "after the kill");
    assert_no_rst(&lab, rst_before);
}
