//! A real 3-node cluster serving the replicated kv service, used by real
//! Redis clients through the VIP (issue: replicated runtime, "how it is
//! proven"):
//! - redis-benchmark's default run completes with no error line;
//! - redis-cli's SET/GET/INCR/EXPIRE/SMEMBERS behave like Redis;
//! - after the load every replica reports the same state hash at the same
//!   applied index (service, shadow TCP and every connection's output);
//! - a forged hello and a replayed replication message sent from the client
//!   namespace are rejected before authentication and counted, and the
//!   cluster carries on (replays after authentication: the envelope unit
//!   tests; strangers at scale: replication_security.rs);
//! - a malformed RESP frame gets an error and closes only its connection.
//!
//! Needs root and redis-tools (scripts/install-deps.sh); runs in CI; fails,
//! never skips.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};
use tandem_lab::{Lab, LabGuard, LabSpec, ServiceKind};
use tandem_node::admin::{request, AdminReply, AdminRequest};
use tandem_node::report::NodeReport;
use tandem_replica::envelope::{seal_hello, ClusterKey, Keyring};
use tandem_replica::NodeId;

fn cluster(case: &str) -> LabGuard {
    let spec = LabSpec::named(format!("kv{case}{}", std::process::id() % 10_000))
        .with_nodes(3)
        .with_service(ServiceKind::Kv);
    let daemon = Path::new(env!("CARGO_BIN_EXE_tandem"));
    LabGuard::new(Lab::up_with_daemon(&spec, Some(daemon)).expect("lab up with 3 kv daemons"))
}

fn report(lab: &Lab, id: u32) -> NodeReport {
    let path = lab
        .node_admin_socket(id)
        .expect("node exists")
        .expect("a daemon lab has admin sockets");
    match request(&path, &AdminRequest::Status, Duration::from_secs(5)) {
        Ok(AdminReply::Status(report)) => *report,
        other => panic!("node {id}: unexpected status reply {other:?}"),
    }
}

fn reports(lab: &Lab) -> Vec<NodeReport> {
    lab.node_ids()
        .into_iter()
        .map(|id| report(lab, id))
        .collect()
}

/// Waits until every replica has applied the same index, and returns the
/// reports taken then.
fn settled(lab: &Lab) -> Vec<NodeReport> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let all = reports(lab);
        let first = &all[0];
        if all
            .iter()
            .all(|r| r.applied_index == first.applied_index && r.commit_index == first.commit_index)
        {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "replicas never reached the same applied index: {:?}",
            all.iter()
                .map(|r| (r.slot, r.applied_index, r.commit_index))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn redis_cli(lab: &Lab, args: &[&str]) -> String {
    let vip = lab.vip().to_string();
    let mut argv = vec!["redis-cli", "-h", vip.as_str(), "-p", "6379"];
    argv.extend_from_slice(args);
    let out = lab.exec_output(None, &argv).expect("redis-cli runs");
    assert!(
        out.status.success(),
        "redis-cli {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim_end()
        .to_string()
}

fn vip_addr(lab: &Lab) -> SocketAddr {
    SocketAddr::new(lab.vip().into(), lab.port())
}

#[test]
fn redis_clients_work_and_replicas_agree() {
    let lab = cluster("a");
    let primary = reports(&lab)
        .into_iter()
        .find(|r| r.role == "primary")
        .expect("one node is primary after lab up");
    assert!(primary.service.holds_vip);

    // redis-cli behaviours.
    assert_eq!(redis_cli(&lab, &["PING"]), "PONG");
    assert_eq!(redis_cli(&lab, &["SET", "greeting", "hello"]), "OK");
    assert_eq!(redis_cli(&lab, &["GET", "greeting"]), "hello");
    assert_eq!(redis_cli(&lab, &["GET", "missing"]), "");
    for expect in ["1", "2", "3"] {
        assert_eq!(redis_cli(&lab, &["INCR", "hits"]), expect);
    }
    assert!(redis_cli(&lab, &["INCR", "greeting"]).contains("not an integer"));
    assert_eq!(redis_cli(&lab, &["SET", "short", "x", "PX", "300"]), "OK");
    assert_eq!(redis_cli(&lab, &["EXPIRE", "greeting", "100"]), "1");
    let ttl: i64 = redis_cli(&lab, &["TTL", "greeting"]).parse().unwrap();
    assert!((99..=100).contains(&ttl), "TTL {ttl}");
    assert_eq!(redis_cli(&lab, &["TTL", "hits"]), "-1");
    assert_eq!(redis_cli(&lab, &["TTL", "missing"]), "-2");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(redis_cli(&lab, &["GET", "short"]), "", "expired key");
    assert_eq!(
        redis_cli(&lab, &["SADD", "fruit", "pear", "apple", "fig"]),
        "3"
    );
    assert_eq!(redis_cli(&lab, &["SADD", "fruit", "fig"]), "0");
    let mut members: Vec<String> = redis_cli(&lab, &["SMEMBERS", "fruit"])
        .lines()
        .map(str::to_string)
        .collect();
    members.sort();
    assert_eq!(members, ["apple", "fig", "pear"]);
    assert!(redis_cli(&lab, &["NOSUCHCOMMAND"]).contains("unknown command"));

    // The default run of redis-benchmark.
    let rst_before = lab.client_rst_count().unwrap();
    let vip = lab.vip().to_string();
    let out = lab
        .exec_output(None, &["redis-benchmark", "-h", &vip, "-q", "-n", "20000"])
        .expect("redis-benchmark runs");
    let stdout = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "redis-benchmark failed: {stderr}");
    let finals: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("requests per second"))
        .collect();
    for line in stdout.lines().chain(stderr.lines()) {
        let lower = line.to_lowercase();
        assert!(
            !lower.contains("error") && !lower.contains("reset") && !lower.contains("refused"),
            "redis-benchmark reported: {line}"
        );
    }
    for test in [
        "PING_INLINE",
        "PING_MBULK",
        "SET",
        "GET",
        "INCR",
        "LPUSH",
        "RPUSH",
        "LPOP",
        "RPOP",
        "SADD",
        "HSET",
        "SPOP",
        "ZADD",
        "ZPOPMIN",
        "LRANGE_100",
        "LRANGE_300",
        "LRANGE_500",
        "LRANGE_600",
        "MSET",
    ] {
        assert!(
            finals.iter().any(|l| l.trim_start().starts_with(test)),
            "no result for {test} in:\n{}",
            finals.join("\n")
        );
    }
    eprintln!("{}", finals.join("\n"));
    assert_eq!(
        lab.client_rst_count().unwrap(),
        rst_before,
        "a client saw a reset"
    );

    // Every replica: same index, same state hash, nothing mismatched.
    let all = settled(&lab);
    for r in &all {
        eprintln!(
            "node {} {}: applied {} hash {} conns {} packets {}",
            r.slot,
            r.role,
            r.applied_index,
            r.service.state_hash,
            r.service.connections,
            r.service.packets_applied
        );
        assert_eq!(
            r.service.state_hash, all[0].service.state_hash,
            "replicas diverged"
        );
        assert_eq!(
            r.counters.shadow_mismatches, 0,
            "kernel and shadow TCP disagree"
        );
        assert_eq!(r.service.service_panics, 0);
    }
    assert!(
        all[0].service.packets_applied > 100_000,
        "the load went through the log"
    );
}

/// Captures one replication frame node `from_id` sends to node `to_id`, as
/// it crossed the wire (tcpdump in the receiver's namespace), so that it
/// can be replayed byte for byte.
fn capture_one_frame(lab: &Lab, from_id: u32, to_id: u32) -> Vec<u8> {
    let pcap = std::env::temp_dir().join(format!("tandem-replay-{}.pcap", std::process::id()));
    let filter = format!(
        "tcp and src host {} and dst host {} and dst port 7100 and tcp[tcpflags] & tcp-push != 0",
        lab.node_addr(from_id).unwrap(),
        lab.node_addr(to_id).unwrap()
    );
    let out = lab
        .exec_output(
            Some(to_id),
            &[
                "timeout",
                "10",
                "tcpdump",
                "-i",
                "eth0",
                "-c",
                "20",
                "-U",
                "-w",
                pcap.to_str().unwrap(),
                &filter,
            ],
        )
        .expect("tcpdump runs");
    assert!(
        out.status.success(),
        "tcpdump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&pcap).unwrap();
    let _ = std::fs::remove_file(&pcap);
    // pcap: 24-byte file header, then (16-byte record header, frame)*.
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &bytes[at + 16..at + 16 + len];
        at += 16 + len;
        // Ethernet (14) + IPv4 (ihl) + TCP (data offset) + payload.
        let ip = &frame[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let tcp = &ip[ihl..total];
        let doff = usize::from(tcp[12] >> 4) * 4;
        let payload = &tcp[doff..];
        // One whole frame per segment: length prefix, then "TDM2...".
        if payload.len() > 8
            && &payload[4..8] == b"TDM2"
            && u32::from_be_bytes(payload[..4].try_into().unwrap()) as usize == payload.len() - 4
        {
            return payload.to_vec();
        }
    }
    panic!("no whole replication frame captured from node {from_id} to node {to_id}");
}

fn send_raw(lab: &Lab, to: SocketAddr, bytes: Vec<u8>) {
    lab.run_in(None, move || {
        let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .expect("the replication port answers from the client namespace");
        stream.write_all(&bytes).unwrap();
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
        let _ = stream.read_to_end(&mut rest);
    })
    .unwrap();
}

fn wait_for_counters(
    lab: &Lab,
    id: u32,
    what: &str,
    done: impl Fn(&NodeReport) -> bool,
) -> NodeReport {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = report(lab, id);
        if done(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: counters {:?}",
            now.counters
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn forged_and_replayed_replication_messages_are_rejected() {
    let lab = cluster("b");
    // Followers only talk to the leader: the leader is the sender whose
    // traffic to the target (a follower) can be captured and replayed.
    let leader = lab.status().leader.expect("a primary after lab up");
    let target = lab.node_ids().into_iter().find(|id| *id != leader).unwrap();
    let addr: SocketAddr = SocketAddr::new(lab.node_addr(target).unwrap().into(), 7100);
    let before = report(&lab, target);
    let sender = report(&lab, leader);
    let to = NodeId::new(before.slot, before.incarnation);
    let from = NodeId::new(sender.slot, sender.incarnation);

    // Forged: a well-formed hello, in the leader's name, under the wrong key.
    let wrong: Keyring = ClusterKey::from_secret(&[0x5a; 32]).unwrap().into();
    let forged = seal_hello(&wrong, from, to.slot, 1 << 40);
    let mut frame = (forged.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&forged);
    send_raw(&lab, addr, frame);
    let after_forged = wait_for_counters(&lab, target, "forged hello", |r| {
        r.counters.hellos_forged > before.counters.hellos_forged
    });
    assert_eq!(
        after_forged.counters.hellos_malformed,
        before.counters.hellos_malformed
    );

    // Replayed: a real frame the leader sent to the target, sent again
    // verbatim on a new connection: not a hello, so nothing is opened.
    let real = capture_one_frame(&lab, leader, target);
    send_raw(&lab, addr, real);
    let after_replay = wait_for_counters(&lab, target, "replayed message", |r| {
        r.counters.hellos_malformed > after_forged.counters.hellos_malformed
    });
    assert_eq!(
        after_replay.counters.hellos_malformed,
        after_forged.counters.hellos_malformed + 1
    );

    // Garbage that is not even a frame: counted, connection closed.
    send_raw(&lab, addr, b"GET / HTTP/1.0\r\n\r\n".to_vec());
    wait_for_counters(&lab, target, "malformed frame", |r| {
        r.counters.hellos_malformed > after_replay.counters.hellos_malformed
    });
    // None of it reached the envelope layer.
    assert_eq!(
        report(&lab, target).counters.auth_rejected,
        before.counters.auth_rejected
    );

    let end = report(&lab, target);
    assert_eq!(end.incarnation, before.incarnation, "the node kept running");
    assert_eq!(redis_cli(&lab, &["SET", "after", "forgery"]), "OK");
    assert_eq!(redis_cli(&lab, &["GET", "after"]), "forgery");
    let all = settled(&lab);
    assert!(all
        .iter()
        .all(|r| r.service.state_hash == all[0].service.state_hash));
}

#[test]
fn a_malformed_resp_frame_closes_only_its_connection() {
    let lab = cluster("c");
    let addr = vip_addr(&lab);
    lab.run_in(None, move || {
        let mut good = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap();
        good.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut good_reader = BufReader::new(good.try_clone().unwrap());
        good.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n")
            .unwrap();
        let mut line = String::new();
        good_reader.read_line(&mut line).unwrap();
        assert_eq!(line, "+OK\r\n");

        let mut bad = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap();
        bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        bad.write_all(b"*2\r\n$3\r\nGET\r\n$x\r\n").unwrap();
        let mut reply = Vec::new();
        bad.read_to_end(&mut reply)
            .expect("the server closes the bad connection (FIN, not RST)");
        let reply = String::from_utf8_lossy(&reply);
        assert!(
            reply.starts_with("-ERR Protocol error"),
            "reply to a malformed frame: {reply:?}"
        );

        good.write_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").unwrap();
        let mut lines = String::new();
        for _ in 0..2 {
            good_reader.read_line(&mut lines).unwrap();
        }
        assert_eq!(lines, "$1\r\nv\r\n", "the other connection carries on");
    })
    .unwrap();
    let all = settled(&lab);
    assert!(all
        .iter()
        .all(|r| r.service.state_hash == all[0].service.state_hash));
}
