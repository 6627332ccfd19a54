//! Failover with real clients: the primary of a 3-node kv cluster dies
//! (power cut: `lab kill`; process crash on a live machine: `lab crash`)
//! while clients are mid-stream, and the clients never notice beyond a
//! pause — no error, no reset, no end-of-file, no lost or repeated update.
//!
//! - redis-benchmark across a kill of the leader exits 0 with no error line;
//! - a consistency checker (connections each doing INCR on its own key and
//!   SET/GET of unique values) runs through repeated kills and crashes of
//!   the leader, each followed by a restart of the old leader as a clone:
//!   every INCR answers exactly the previous value + 1, every GET the last
//!   SET, and at the end every replica has the same state hash.
//!
//! Needs root and redis-tools; runs in CI; fails, never skips.

use std::time::{Duration, Instant};
mod common;

use common::*;
use tandem_lab::{LabGuard, ServiceKind};

fn cluster(case: &str) -> LabGuard {
    cluster_of("fo", case, ServiceKind::Kv)
}

#[test]
fn redis_benchmark_survives_a_kill_of_the_leader() {
    let mut lab = cluster("a");
    let first = wait_healthy(&lab, "start");
    let rst_before = lab.client_rst_count().unwrap();
    let vip = lab.vip().to_string();
    let mut bench = lab.command(None, "redis-benchmark").unwrap();
    bench
        .args([
            "-h",
            &vip,
            "-q",
            "-n",
            "60000",
            "-c",
            "20",
            "-t",
            "set,get,incr,lpush,rpop",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = bench.spawn().expect("redis-benchmark starts");
    std::thread::sleep(Duration::from_secs(3));
    lab.kill(first).expect("kill the leader");
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "redis-benchmark failed: {stderr}");
    for line in stdout.lines().chain(stderr.lines()) {
        let lower = line.to_lowercase();
        assert!(
            !lower.contains("error") && !lower.contains("reset") && !lower.contains("refused"),
            "redis-benchmark reported: {line}"
        );
    }
    let finals: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("requests per second"))
        .collect();
    assert_eq!(finals.len(), 5, "{stdout}");
    eprintln!("{}", finals.join("\n"));
    let second = leader(&lab).expect("a new primary");
    assert_ne!(second, first);
    assert_eq!(
        lab.client_rst_count().unwrap(),
        rst_before,
        "a client saw a reset"
    );
}

#[test]
fn consistency_checker_survives_repeated_leader_failures() {
    const CONNECTIONS: usize = 12;
    const ROUNDS: usize = 20;
    let mut lab = cluster("b");
    wait_healthy(&lab, "start");
    let rst_before = lab.client_rst_count().unwrap();
    let checkers = Checkers::start(&lab, CONNECTIONS);
    let mut pauses = Vec::new();
    for round in 0..ROUNDS {
        std::thread::sleep(Duration::from_millis(1500));
        let victim = wait_healthy(&lab, &format!("before round {round}"));
        let started = Instant::now();
        if round % 2 == 0 {
            lab.kill(victim).expect("kill");
        } else {
            lab.crash(victim).expect("crash");
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while leader(&lab).is_none_or(|l| l == victim) {
            assert!(Instant::now() < deadline, "round {round}: no new primary");
            std::thread::sleep(Duration::from_millis(20));
        }
        pauses.push(started.elapsed());
        std::thread::sleep(Duration::from_millis(500));
        lab.restart(victim).expect("restart the old primary");
        wait_healthy(&lab, &format!("after round {round}"));
    }
    std::thread::sleep(Duration::from_secs(1));
    let tallies = checkers.stop();
    eprintln!("new primary serving after: {pauses:?}");
    let failed: Vec<String> = tallies
        .iter()
        .enumerate()
        .filter(|(_, t)| !t.errors.is_empty())
        .map(|(id, t)| format!("connection {id} after {} INCRs: {:?}", t.incrs, t.errors))
        .collect();
    if !failed.is_empty() {
        for id in lab.node_ids() {
            if let Ok(Some(path)) = lab.node_log_path(id) {
                let log = std::fs::read_to_string(path).unwrap_or_default();
                for line in log.lines().filter(|l| {
                    l.contains("WARN")
                        || l.contains("ERROR")
                        || l.contains("serving")
                        || l.contains("stepped")
                }) {
                    eprintln!("node {id}: {line}");
                }
            }
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
    let mut total = 0;
    for (id, t) in tallies.iter().enumerate() {
        assert!(
            t.errors.is_empty(),
            "connection {id}: {:?} after {} INCRs",
            t.errors,
            t.incrs
        );
        assert!(
            t.incrs > 20,
            "connection {id} made too little progress: {t:?}"
        );
        total += t.incrs;
    }
    eprintln!("{total} INCRs checked across {ROUNDS} failovers");
    assert_eq!(
        lab.client_rst_count().unwrap(),
        rst_before,
        "a client saw a reset"
    );
    let hashes = settled_hashes(&lab);
    assert!(
        hashes.iter().all(|h| h.2 == hashes[0].2),
        "replicas diverged: {hashes:?}"
    );
}

#[test]
fn an_unhealthy_primary_hands_over_and_an_unhealthy_clone_refuses() {
    let lab = cluster("c");
    let first = wait_healthy(&lab, "start");
    let checkers = Checkers::start(&lab, 4);
    std::thread::sleep(Duration::from_millis(500));
    // The primary's check command starts failing: it hands over.
    lab.set_unhealthy(first, true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let second = loop {
        if let Some(l) = leader(&lab).filter(|l| *l != first) {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "the unhealthy primary kept its role"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let r = report(&lab, first).expect("node answers");
    assert!(r.health.starts_with("unhealthy"), "{}", r.health);
    // Now the new primary fails too: the only healthy node takes over, and
    // the unhealthy first one never keeps the role.
    lab.set_unhealthy(second, true).unwrap();
    let third = loop {
        if let Some(l) = leader(&lab).filter(|l| *l != second) {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "the second unhealthy primary kept its role"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_ne!(third, first, "an unhealthy clone took the primary role");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(leader(&lab), Some(third), "the healthy primary stays");
    lab.set_unhealthy(first, false).unwrap();
    lab.set_unhealthy(second, false).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for (id, t) in checkers.stop().iter().enumerate() {
        assert!(t.errors.is_empty(), "connection {id}: {:?}", t.errors);
        assert!(t.incrs > 10, "connection {id} made too little progress");
    }
    let hashes = settled_hashes(&lab);
    assert!(hashes.iter().all(|h| h.2 == hashes[0].2), "{hashes:?}");
}
