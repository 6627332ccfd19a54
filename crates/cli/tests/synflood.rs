//! A spoofed SYN flood does not stop real clients (issue 10, item 2).
//!
//! A 3-node kv lab; from the client namespace, 1,000 spoofed SYNs per
//! second from addresses on the client's subnet that nobody answers for,
//! for 10 s, while a real client connects again and again (connect, PING,
//! PONG, close; each step within `STEP_BOUND`). Every real connect must
//! succeed, the primary must stay the same node, every daemon must keep
//! running, the primary must have switched to cookie mode, the flood's
//! handshakes must not be in the replicated table (each replica holds far
//! fewer entries than the flood sent SYNs), and replicas must agree.
//!
//! Needs root; runs in CI; fails, never skips.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;
mod common;

use common::*;
use std::path::Path;
use tandem_bench::flood::{probe, Flood};
use tandem_lab::{Lab, LabGuard, LabSpec, RaftTimings, ServiceKind};

const FLOOD_RATE: u64 = 1_000;
const FLOOD_FOR: Duration = Duration::from_secs(10);
/// Each step of a real client's attempt (connect; PING answered) must take
/// less than this. Not a timing target: a bound that tells "connects" from
/// "hangs" (before the fix, real clients hung for good). 3 s covers a SYN
/// the client retransmits after 1 s because the first one's SYN-ACK was
/// held for a commit while a loaded machine had the primary descheduled
/// (seen without any flood at load 15 on 2 cores).
const STEP_BOUND: Duration = Duration::from_secs(3);

#[test]
fn real_clients_connect_through_a_spoofed_syn_flood() {
    // An election timeout of 1-2 s (the default is 0.1-0.2 s): this test
    // checks what the flood does, and the CI machine runs other lab tests
    // and builds beside it, whose scheduling stalls alone (seen: up to 2 s
    // on a 2-core machine at load 15) would otherwise move the primary.
    let spec = LabSpec::named(format!("syna{}", std::process::id() % 10_000))
        .with_nodes(3)
        .with_service(ServiceKind::Kv)
        .with_raft(RaftTimings {
            election_ticks: Some(100),
            ..RaftTimings::default()
        });
    let daemon = Path::new(env!("CARGO_BIN_EXE_tandem"));
    let lab =
        LabGuard::new(Lab::up_with_daemon(&spec, Some(daemon)).expect("lab up with 3 daemons"));
    let primary = wait_healthy(&lab, "start");
    let target = SocketAddrV4::new(lab.vip(), lab.port());
    let flood = Flood::start(lab.client_netns(), target, FLOOD_RATE, 0x5eed);
    // Let the flood build up before the first real connect.
    std::thread::sleep(Duration::from_millis(1500));
    let stats = probe(
        lab.client_netns(),
        SocketAddr::V4(target),
        FLOOD_FOR - Duration::from_millis(1500),
        Duration::from_millis(20),
        STEP_BOUND,
    )
    .expect("probe from the client namespace");
    let sent = flood.stop().expect("the flood ran");
    eprintln!(
        "flood: {sent} SYNs; real connects: {} of {} ok, p50 {:?}, p99 {:?}, max {:?}",
        stats.ok,
        stats.attempts,
        stats.quantile(0.5),
        stats.quantile(0.99),
        stats.quantile(1.0)
    );
    if !stats.failures.is_empty() {
        // What the nodes saw, to tell a lost SYN from a stalled loop.
        for id in lab.node_ids() {
            if let Some(r) = report(&lab, id) {
                eprintln!("node {id} ({}): {:?}", r.role, r.counters);
            }
            if let Ok(out) = lab.exec_output(Some(id), &["nstat", "-az"]) {
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                for line in text.lines().filter(|l| {
                    (l.contains("Listen")
                        || l.contains("Syncookies")
                        || l.contains("ReqQ")
                        || l.contains("Drop"))
                        && !l.contains(" 0 ")
                }) {
                    eprintln!("node {id}: {line}");
                }
            }
            if let Ok(Some(path)) = lab.node_log_path(id) {
                let log = std::fs::read_to_string(path).unwrap_or_default();
                for line in log
                    .lines()
                    .filter(|l| {
                        l.contains("WARN")
                            || l.contains("ERROR")
                            || l.contains("held up")
                            || l.contains("long raft")
                    })
                    .take(30)
                {
                    eprintln!("node {id}: {line}");
                }
            }
        }
    }
    assert!(
        sent >= FLOOD_RATE * 9,
        "the flood sent only {sent} SYNs in {FLOOD_FOR:?}"
    );
    assert!(stats.attempts >= 100, "only {} attempts", stats.attempts);
    assert!(
        stats.failures.is_empty(),
        "{} of {} real connects failed: {:?}",
        stats.failures.len(),
        stats.attempts,
        &stats.failures[..stats.failures.len().min(10)]
    );
    assert_eq!(stats.ok, stats.attempts);
    // The primary never moved, and every daemon still answers.
    assert_eq!(leader(&lab), Some(primary), "the primary changed");
    let reports: Vec<_> = lab
        .node_ids()
        .iter()
        .map(|id| (*id, report(&lab, *id)))
        .collect();
    for (id, r) in &reports {
        let r = r
            .as_ref()
            .unwrap_or_else(|| panic!("node {id} does not answer"));
        if u32::from(r.slot) == primary {
            assert_eq!(r.role, "primary");
            assert!(
                r.counters.cookie_passed > 0 && r.counters.cookie_handshakes > 0,
                "the primary never used cookie mode: {:?}",
                r.counters
            );
            assert_eq!(r.counters.shadow_mismatches, 0);
        }
        // The flood's handshakes are not in the replicated table.
        assert!(
            r.service.connections < 4_096 && r.service.connections < sent / 2,
            "node {id} holds {} connections",
            r.service.connections
        );
    }
    // Replicas agree.
    let hashes = settled_hashes(&lab);
    assert!(
        hashes.iter().all(|h| h.2 == hashes[0].2),
        "replicas differ: {hashes:?}"
    );
}
