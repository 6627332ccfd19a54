//! Parameters agreed through the log (docs/architecture.md §3.9), in a real
//! cluster: a clone restarted with a config that differs from the group's
//! (here `window_clamp`, which shapes shadow TCP's window and reassembly)
//! finds out from the log, never applies or serves, and its daemon stops
//! with an error naming the parameter and both values; the primary and its
//! clients carry on; with the config put back, the node rejoins and catches
//! up. Needs root; runs in CI; fails, never skips.

use std::time::{Duration, Instant};
mod common;

use common::*;
use tandem_lab::{Lab, ServiceKind};

fn print_logs(lab: &Lab) {
    for id in lab.node_ids() {
        let Ok(Some(path)) = lab.node_log_path(id) else {
            continue;
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            println!("node {id}: {line}");
        }
    }
}

#[test]
fn a_node_configured_unlike_its_group_stops_naming_the_difference() {
    let guard = cluster_of("prm", "clamp", ServiceKind::Kv);
    let mut lab = guard.into_inner();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&mut lab)));
    if result.is_err() {
        print_logs(&lab);
    }
    let _ = lab.down();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn run(lab: &mut Lab) {
    let primary = wait_healthy(lab, "start");
    let term = report(lab, primary).expect("primary status").term;
    let odd = lab
        .node_ids()
        .into_iter()
        .find(|id| *id != primary)
        .unwrap();
    // Clients throughout.
    let checkers = Checkers::start(lab, 2);
    std::thread::sleep(Duration::from_millis(500));

    // The operator edits one node's config (the lab's default clamp is
    // 256 KiB) and restarts it.
    let config_path = lab.node_config_path(odd).unwrap().unwrap();
    let original = std::fs::read_to_string(&config_path).unwrap();
    let edited = original.replacen("queue = 0\n", "queue = 0\nwindow_clamp = 131072\n", 1);
    assert_ne!(
        edited, original,
        "the config has no `queue = 0` line to edit after"
    );
    std::fs::write(&config_path, &edited).unwrap();
    lab.kill(odd).expect("kill the clone");
    lab.restart(odd).expect("restart it with the edited config");

    // It stops by itself, saying why.
    let log_path = lab.node_log_path(odd).unwrap().unwrap();
    let expected = "window_clamp: this node has 131072, the group has 262144";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let exited =
            lab.pids(Some(odd)).map(|p| p.is_empty()).unwrap_or(true) || report(lab, odd).is_none();
        if log.contains(expected) && exited {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {odd} did not stop naming the window clamp (exited: {exited})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(&log_path).unwrap();
    if let Some(line) = log.lines().find(|l| l.contains(expected)) {
        eprintln!("node {odd} stopped: {line}");
    }
    assert!(
        log.contains("disagrees with the group's"),
        "the error says what is wrong"
    );
    // The rest did not notice.
    std::thread::sleep(Duration::from_millis(500));
    for tally in checkers.stop() {
        assert!(tally.errors.is_empty(), "client errors: {:?}", tally.errors);
        assert!(tally.incrs > 0, "the checker made no progress");
    }
    let after = report(lab, primary).expect("primary status");
    assert_eq!(after.role, "primary");
    assert_eq!(after.term, term, "no election happened");

    // Config put back: the node rejoins as a clone and catches up.
    std::fs::write(&config_path, &original).unwrap();
    lab.restart(odd).expect("restart with the group's config");
    assert_eq!(wait_healthy(lab, "the node rejoined"), primary);
    let reports = settled_reports(lab);
    assert!(
        reports
            .iter()
            .all(|r| r.service.state_hash == reports[0].service.state_hash),
        "replicas differ after the node rejoined"
    );
    let rejoined = reports.iter().find(|r| u32::from(r.slot) == odd).unwrap();
    assert_eq!(rejoined.counters.parameter_disagreements, 0);
}
