//! End-to-end: live TCP connections moved between lab nodes, with real
//! kernels in network namespaces and a real server process. Needs root; in
//! CI these run and must pass — they fail, never skip, if the lab cannot be
//! built.
//!
//! Every case asserts the same three things: the client sees no error, the
//! streams are byte-exact, and no RST reaches the client namespace.

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_moves::scenario::{pattern_byte, MoveLab, PingPong};

fn tandem() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tandem"))
}

/// A two-node lab with a name unique to this test and process.
fn lab(case: &str) -> MoveLab {
    lab_of(case, 2)
}

fn lab_of(case: &str, nodes: usize) -> MoveLab {
    let name = format!("m{}{case}", std::process::id() % 100_000);
    MoveLab::up(&name, nodes, tandem()).unwrap_or_else(|err| panic!("building lab {name}: {err:#}"))
}

/// Client neighbour entries younger than Linux's 1 s lock time ignore the
/// first gratuitous ARP; real connections are older than that, so let them be.
fn settle() {
    std::thread::sleep(Duration::from_millis(1200));
}

fn assert_no_rst(lab: &MoveLab) {
    assert_eq!(
        lab.client_rst_count().unwrap(),
        0,
        "the client namespace received RST segments"
    );
}

/// Runs iptables in the client namespace (a namespace the lab created).
fn client_iptables(lab: &MoveLab, args: &[&str]) {
    let status = Command::new("ip")
        .args(["netns", "exec", lab.lab().client_netns(), "iptables", "-w"])
        .args(args)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "iptables {args:?} failed in the client namespace"
    );
}

fn write_pattern(stream: &mut TcpStream, seed: u64, from: u64, len: u64) {
    let bytes: Vec<u8> = (from..from + len).map(|i| pattern_byte(seed, i)).collect();
    stream.write_all(&bytes).unwrap();
}

fn read_pattern(stream: &mut TcpStream, seed: u64, from: u64, len: u64) {
    let mut got = vec![0u8; len as usize];
    stream.read_exact(&mut got).unwrap();
    for (k, byte) in got.iter().enumerate() {
        let i = from + k as u64;
        assert_eq!(*byte, pattern_byte(seed, i), "stream differs at byte {i}");
    }
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// (a) A line-by-line exchange carries on through a move there and back, and
/// the moved server still accepts new connections.
#[test]
fn line_by_line_exchange_survives_moves() {
    let mut lab = lab("a");
    let workload = PingPong::start(vec![lab.connect(None).unwrap()], Duration::from_millis(2));
    settle();
    let there = lab.move_to(2).unwrap();
    assert_eq!(there.connections.len(), 1);
    settle();
    lab.move_to(1).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let stats = workload.finish().expect("the client saw an error");
    assert!(stats.replies > 100, "only {} replies", stats.replies);

    // The server on node 1 is a new process now, and serves new clients.
    let mut fresh = lab.connect(None).unwrap();
    fresh
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    fresh.write_all(b"new client\n").unwrap();
    let mut buf = [0u8; 11];
    fresh.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"new client\n");
    assert_no_rst(&lab);
}

/// (b) Bytes the server had received (and ACKed) but not read move with the
/// connection, and the new server reads them.
#[test]
fn unread_bytes_in_the_receive_queue_move() {
    let mut lab = lab("b");
    let mut client = lab.connect(None).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(b"hello\n").unwrap();
    let mut buf = [0u8; 6];
    client.read_exact(&mut buf).unwrap();
    settle();

    lab.freeze_server().unwrap();
    const LEN: u64 = 32 * 1024;
    write_pattern(&mut client, 1, 0, LEN);
    // Once the client's queue is empty, the server's kernel has ACKed it all.
    wait_until(
        "the server ACKed every byte",
        Duration::from_secs(5),
        || {
            tandem_sys::sockinfo::queue_sizes(client.as_fd())
                .unwrap()
                .unacknowledged
                == 0
        },
    );
    let report = lab.move_to(2).unwrap();
    assert_eq!(report.connections[0].recv_queue as u64, LEN, "{report:?}");

    read_pattern(&mut client, 1, 0, LEN);
    client.write_all(b"after\n").unwrap();
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"after\n");
    assert_no_rst(&lab);
}

/// (c) The server's send queue — bytes in flight and bytes never sent —
/// moves with the connection: the client gets every byte once, in order.
#[test]
fn unacked_and_unsent_bytes_in_the_send_queue_move() {
    let mut lab = lab("c");
    let mut client = lab.connect(Some(16 * 1024)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    client.write_all(b"hello\n").unwrap();
    let mut buf = [0u8; 6];
    client.read_exact(&mut buf).unwrap();
    settle();

    // Nothing from the server reaches the client for now: what the server
    // sends stays unacknowledged (in flight), and what its congestion window
    // does not allow stays unsent. Appended, so the RST counter still counts.
    let vip = lab.service_addr();
    let drop_rule = [
        "INPUT",
        "-p",
        "tcp",
        "-s",
        &vip.ip().to_string(),
        "--sport",
        &vip.port().to_string(),
        "-j",
        "DROP",
    ];
    client_iptables(&lab, &[&["-A"][..], &drop_rule[..]].concat());
    const LEN: u64 = 200 * 1024;
    let mut writer = client.try_clone().unwrap();
    let sender = std::thread::spawn(move || write_pattern(&mut writer, 2, 0, LEN));
    std::thread::sleep(Duration::from_millis(400));
    lab.freeze_server().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let report = lab.move_to(2).unwrap();
    client_iptables(&lab, &[&["-D"][..], &drop_rule[..]].concat());
    let moved = &report.connections[0];
    assert!(
        moved.unacked > 0,
        "no bytes in flight at the move: {moved:?}"
    );
    assert!(moved.unsent > 0, "no unsent bytes at the move: {moved:?}");

    read_pattern(&mut client, 2, 0, LEN);
    sender.join().unwrap();
    assert_no_rst(&lab);
}

/// (d) Tens of MB each way, moved twice mid-transfer, checked with SHA-256.
#[test]
fn bulk_transfer_both_ways_survives_moves() {
    let mut lab = lab("d");
    let client = lab.connect(None).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    settle();
    const LEN: u64 = 32 * 1024 * 1024;
    const CHUNK: u64 = 64 * 1024;
    let received = Arc::new(AtomicU64::new(0));

    let mut writer = client.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut hash = Sha256::new();
        let mut sent = 0;
        while sent < LEN {
            let chunk: Vec<u8> = (sent..sent + CHUNK).map(|i| pattern_byte(3, i)).collect();
            writer.write_all(&chunk).unwrap();
            hash.update(&chunk);
            sent += CHUNK;
            // About 25 MB/s: the transfer spans both moves.
            std::thread::sleep(Duration::from_micros(2500));
        }
        writer.shutdown(Shutdown::Write).unwrap();
        hash.finalize()
    });
    let mut reader = client.try_clone().unwrap();
    let progress = received.clone();
    let receiver = std::thread::spawn(move || {
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut buf).expect("the client's read failed");
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            total += n as u64;
            progress.store(total, Ordering::Relaxed);
        }
        (total, hash.finalize())
    });

    wait_until("8 MB came back", Duration::from_secs(30), || {
        received.load(Ordering::Relaxed) > 8 << 20
    });
    let first = lab.move_to(2).unwrap();
    settle();
    let second = lab.move_to(1).unwrap();
    let at_second = received.load(Ordering::Relaxed);
    assert!(at_second < LEN, "the transfer ended before the second move");

    let sent_hash = sender.join().unwrap();
    let (total, received_hash) = receiver.join().unwrap();
    assert_eq!(total, LEN, "the echo stream has the wrong length");
    assert_eq!(
        sent_hash, received_hash,
        "the echo stream differs from what was sent"
    );
    let queued = |r: &tandem_moves::migration::MoveReport| {
        r.connections[0].recv_queue + r.connections[0].unacked + r.connections[0].unsent
    };
    assert!(
        queued(&first) + queued(&second) > 0,
        "the moves carried no queued bytes"
    );
    assert_no_rst(&lab);
}

/// (e) The client keeps sending while the connection is frozen: the lock
/// holds those segments and the move re-injects their bytes into the
/// restored socket.
#[test]
fn client_sending_while_frozen_loses_nothing() {
    client_sending_while_frozen(lab("e"), true);
}

/// (e') The same with a lock that drops: the client retransmits to the new
/// node, and still nothing is lost.
#[test]
fn client_sending_while_frozen_through_a_dropping_lock_loses_nothing() {
    let name = format!("m{}g", std::process::id() % 100_000);
    let lab = MoveLab::up_with(&name, 2, tandem(), None).unwrap();
    client_sending_while_frozen(lab, false);
}

fn client_sending_while_frozen(mut lab: MoveLab, holding: bool) {
    let client = lab.connect(None).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    settle();
    const LINES: u64 = 3000;
    let mut writer = client.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut sent_at = Vec::new();
        for n in 0..LINES {
            writer
                .write_all(format!("line {n:06}\n").as_bytes())
                .unwrap();
            sent_at.push(Instant::now());
            std::thread::sleep(Duration::from_micros(500));
        }
        sent_at
    });
    let mut reader = client.try_clone().unwrap();
    let receiver = std::thread::spawn(move || {
        for n in 0..LINES {
            let mut line = [0u8; 12];
            reader
                .read_exact(&mut line)
                .expect("the client's read failed");
            assert_eq!(
                line,
                format!("line {n:06}\n").as_bytes()[..],
                "line {n} is wrong"
            );
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let report = lab.move_to(2).unwrap();
    let sent_at = sender.join().unwrap();
    receiver.join().unwrap();
    let while_frozen = sent_at
        .iter()
        .filter(|t| **t >= report.frozen_at && **t <= report.live_at)
        .count();
    assert!(
        while_frozen > 0,
        "the client sent nothing while the connection was frozen"
    );
    let reinjected = report.connections[0].reinjected;
    if holding {
        assert!(reinjected > 0, "nothing held was re-injected: {report:?}");
    } else {
        assert_eq!(reinjected, 0);
    }
    assert_no_rst(&lab);
}

/// A target that cannot rebuild the connections (no route back to the
/// client) makes the move roll back: the connection carries on at the source
/// as if nothing happened, and a later move to a healthy node works.
#[test]
fn a_failed_restore_rolls_back_to_the_source() {
    let mut lab = lab_of("f", 3);
    let workload = PingPong::start(vec![lab.connect(None).unwrap()], Duration::from_millis(2));
    settle();
    let node3 = lab.lab().node_netns(3).unwrap().to_string();
    let status = Command::new("ip")
        .args(["-n", &node3, "addr", "flush", "dev", "eth0"])
        .status()
        .unwrap();
    assert!(status.success());
    let err = lab
        .move_to(3)
        .expect_err("a move to a node with no route must fail");
    assert!(format!("{err:#}").contains("rolled back"), "{err:#}");
    assert_eq!(lab.server_node(), 1);
    std::thread::sleep(Duration::from_millis(300));
    lab.move_to(2).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let stats = workload.finish().expect("the client saw an error");
    assert!(stats.replies > 100, "only {} replies", stats.replies);
    assert_no_rst(&lab);
}
